//! A private PostgreSQL server for one test or bench run: `initdb` and
//! `pg_ctl` from the Debian `postgresql` package, in a temp dir, listening
//! on a Unix socket only, run as the `postgres` user (PostgreSQL refuses
//! root). Passwords (SCRAM) are required for every role, as on a real
//! server. Stopped (immediate mode) when dropped.
//!
//! The caller passes the `splitsign` binary, which runs the owner's
//! commands ([`PgServer::owner`], [`PgServer::apply_schema`]).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct PgServer {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    /// The `splitsign` binary of the owner's commands.
    splitsign: PathBuf,
    /// The uid/gid the server runs as (`postgres` when the tests run as
    /// root; else the current user).
    owner: Option<(u32, u32)>,
    running: bool,
    /// Server options beyond the Unix socket (TLS on a TCP port).
    options: String,
    /// The port (also in the Unix socket's name).
    pub port: u16,
}

/// The superuser's password (the role `postgres`).
const SUPER_PW: &str = "super-secret-pw";
/// The role that owns the splitsign tables and applies the schema.
pub const OWNER: &str = "splitsign_owner";
const OWNER_PW: &str = "owner-pw";

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().expect(
        "these tests need a PostgreSQL server (apt-get install postgresql; .ci/run installs it)",
    )
}

fn postgres_user() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("the postgresql package creates the postgres user");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

impl PgServer {
    /// initdb, start, and create the `splitsign` database owned by
    /// [`OWNER`]; `splitsign` is the binary of the owner's commands.
    pub fn start(splitsign: &str) -> PgServer {
        let tmp = tempfile::Builder::new()
            .prefix("splitsign-pg")
            .tempdir()
            .unwrap();
        let owner = postgres_user();
        if let Some((uid, gid)) = owner {
            rustix::fs::chown(
                tmp.path(),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .unwrap();
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = PgServer {
            tmp,
            bin: bin_dir(),
            splitsign: PathBuf::from(splitsign),
            owner,
            running: false,
            options: String::new(),
            port: 5432,
        };
        let pwfile = pg.path().join("superpw");
        std::fs::write(&pwfile, SUPER_PW).unwrap();
        pg.chown(&pwfile);
        let out = pg
            .as_owner(&pg.bin.join("initdb"))
            .args(["-D"])
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "--auth-local=scram-sha-256",
                "--auth-host=reject",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", show(&out));
        let mut pg = pg;
        pg.start_again();
        pg.super_sql(&format!(
            "CREATE ROLE {OWNER} LOGIN PASSWORD '{OWNER_PW}';
             CREATE DATABASE splitsign OWNER {OWNER};"
        ));
        pg
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The directory of the server's socket (the `host` to connect to).
    pub fn socket_dir(&self) -> &Path {
        self.path()
    }

    fn chown(&self, p: &Path) {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::chown(
                p,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .unwrap();
        }
    }

    fn as_owner(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.owner {
            // As root, std also drops the supplementary groups.
            c.uid(uid).gid(gid);
        }
        c.stdin(Stdio::null()).env("LC_ALL", "C");
        c
    }

    /// Start (again, after [`PgServer::stop`]); waits until it accepts.
    pub fn start_again(&mut self) {
        let out = self
            .as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-l"])
            .arg(self.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-k {} -p {} -c fsync=off -c max_connections=60 {}",
                self.socket_dir().display(),
                self.port,
                if self.options.is_empty() {
                    "-c listen_addresses=''"
                } else {
                    &self.options
                }
            ))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", show(&out));
        self.running = true;
    }

    /// Serve TLS on 127.0.0.1:`port` too (restarting): a CA and a server
    /// certificate for `localhost` only, made here with openssl; TCP
    /// clients must use TLS. Returns the CA certificate (PEM) and the
    /// certificate of another CA that did not sign the server's.
    pub fn enable_tls(&mut self, port: u16) -> (PathBuf, PathBuf) {
        let dir = self.path().join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", show(&out));
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=splitsign test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        for f in ["server.crt", "server.key"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
            self.chown(&dir.join(f));
        }
        // TLS over TCP only, with a password.
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostssl all all 127.0.0.1/32 scram-sha-256\n{old}"),
        )
        .unwrap();
        self.options = format!(
            "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        );
        self.stop();
        self.port = port;
        self.start_again();
        (dir.join("ca.crt"), dir.join("other-ca.crt"))
    }

    /// Stop (fast: clients are disconnected at once).
    pub fn stop(&mut self) {
        self.ctl_stop("fast");
    }

    fn ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = self
            .as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl stop: {}", show(&out));
        self.running = false;
    }

    /// Run SQL as `user` (password `password`) in the splitsign database;
    /// the output, whether it succeeded or not.
    pub fn sql_as(&self, user: &str, password: &str, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", user, "-d", "splitsign", "-c", sql])
            .env("PGPASSWORD", password)
            .env_remove("PGPASSFILE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run SQL as the superuser in the splitsign database (or `postgres`
    /// before it exists); panics if it fails. Returns the output rows.
    pub fn super_sql(&self, sql: &str) -> String {
        let db = if sql.contains("CREATE DATABASE") {
            "postgres"
        } else {
            "splitsign"
        };
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .env("PGPASSWORD", SUPER_PW)
            .env_remove("PGPASSFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(sql.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", show(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `pg_dump` of the splitsign database (plain SQL), as the superuser.
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "splitsign"])
            .env("PGPASSWORD", SUPER_PW)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {}", show(&out));
        out.stdout
    }

    /// A node's login role, with its password in a file (mode 0600).
    /// Returns the password file.
    pub fn add_node_role(&self, node: &str, dir: &Path) -> PathBuf {
        let pw = format!("pw-{node}-{}", std::process::id());
        self.super_sql(&format!("CREATE ROLE \"{node}\" LOGIN PASSWORD '{pw}';"));
        let file = dir.join("pg-password");
        std::fs::write(&file, format!("{pw}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        file
    }

    /// The password of a node role made by [`PgServer::add_node_role`].
    pub fn node_password(&self, node: &str) -> String {
        format!("pw-{node}-{}", std::process::id())
    }

    /// Apply the schema as the owner (`splitsign pg-schema`) and add
    /// `roles` as nodes (`--grant`, as `node add`).
    pub fn apply_schema(&self, roles: &[&str]) {
        let mut args = vec!["pg-schema"];
        for r in roles {
            args.extend(["--grant", r]);
        }
        let out = self.owner(&args);
        assert!(out.status.success(), "pg-schema: {}", show(&out));
    }

    /// Run `splitsign ARGS` with the owner's config (`postgres` logging in
    /// as [`OWNER`]).
    pub fn owner(&self, args: &[&str]) -> Output {
        let dir = self.path().join("owner");
        let config = dir.join("config.toml");
        if !config.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let pw = dir.join("owner-password");
            std::fs::write(&pw, OWNER_PW).unwrap();
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(
                &config,
                format!(
                    "postgres = \"host={} port={} dbname=splitsign user={OWNER}\"\n\
                     postgres_password_file = \"{}\"\nnode = \"owner\"\n",
                    self.socket_dir().display(),
                    self.port,
                    pw.display()
                ),
            )
            .unwrap();
        }
        Command::new(&self.splitsign)
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Let the owner manage node roles, as a real deployment's owner may:
    /// disable a login (CREATEROLE) and end a session (pg_signal_backend).
    pub fn owner_manages_roles(&self) {
        self.super_sql(&format!(
            "ALTER ROLE {OWNER} CREATEROLE; GRANT pg_signal_backend TO {OWNER};"
        ));
    }

    /// A session of `user` running `sql` (a script, through stdin) that
    /// stays open until the child is killed (end the script with
    /// `SELECT pg_sleep(…)`).
    pub fn session_as(&self, user: &str, password: &str, sql: &str) -> std::process::Child {
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", user, "-d", "splitsign", "-f", "-"])
            .env("PGPASSWORD", password)
            .env_remove("PGPASSFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
        drop(stdin);
        child
    }

    /// `pg_dump` of the splitsign database in the custom format, into
    /// `file`.
    pub fn dump_to(&self, file: &Path) {
        let out = Command::new(self.bin.join("pg_dump"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "splitsign", "-Fc", "-f"])
            .arg(file)
            .env("PGPASSWORD", SUPER_PW)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_dump: {}", show(&out));
    }

    /// Restore a dump of [`PgServer::dump_to`] in place of the splitsign
    /// database, as an operator would: into a new database, then swapped
    /// in (the old one dropped, its sessions ended). `sql` runs in the
    /// restored database before the swap.
    pub fn restore_from(&self, file: &Path, sql: &str) {
        self.super_sql(&format!(
            "CREATE DATABASE splitsign_restored OWNER {OWNER};"
        ));
        self.pg_restore(file, "splitsign_restored", &[]);
        if !sql.is_empty() {
            let out = Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "splitsign_restored", "-c", sql])
                .env("PGPASSWORD", SUPER_PW)
                .output()
                .unwrap();
            assert!(out.status.success(), "{sql}: {}", show(&out));
        }
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "DROP DATABASE splitsign WITH (FORCE)"])
            .args([
                "-c",
                "ALTER DATABASE splitsign_restored RENAME TO splitsign",
            ])
            .env("PGPASSWORD", SUPER_PW)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "swapping the restored database in: {}",
            show(&out)
        );
    }

    /// Restore a dump into the splitsign database itself, under the
    /// sessions connected to it (`pg_restore --clean`): no session ends.
    pub fn restore_in_place(&self, file: &Path) {
        self.pg_restore(file, "splitsign", &["--clean", "--if-exists"]);
    }

    fn pg_restore(&self, file: &Path, db: &str, args: &[&str]) {
        let out = Command::new(self.bin.join("pg_restore"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db])
            .args(args)
            .arg(file)
            .env("PGPASSWORD", SUPER_PW)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_restore: {}", show(&out));
    }

    /// The `postgres` setting for `node`'s role.
    pub fn conninfo(&self, node: &str) -> String {
        format!(
            "host={} port={} dbname=splitsign user={node}",
            self.socket_dir().display(),
            self.port
        )
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.ctl_stop("immediate");
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Write `dir/config.toml` for a node of a cluster: shares in `keys/`, the
/// local database (the audit log) and the socket in `var/`, PostgreSQL at
/// `pg` as `node`'s role, with its password in the file `pw`.
pub fn write_node_config(pg: &PgServer, dir: &Path, node: &str, pw: &Path, extra: &str) {
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
             postgres = \"{}\"\npostgres_password_file = \"{}\"\nnode = \"{node}\"\n{extra}",
            pg.conninfo(node),
            pw.display()
        ),
    )
    .unwrap();
}
