//! Test harness: a fresh temp dir per test, the real `splitsign` binary,
//! and a raw wire-protocol connection. Tests speak bytes, as any client.
//! The daemon's start-up and stop, the connection and `/proc` are the
//! `splitsign-testkit` crate's, shared with the benches.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use splitsign_testkit::daemon::{Exited, signal};
pub use splitsign_testkit::procfs::vm;
pub use splitsign_testkit::wire::Conn;

pub const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

/// A temp directory that is the working directory of a zero-config daemon:
/// shares in `keys/`, database and socket in `var/`.
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("splitsign-test")
                .tempdir()
                .expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }
    pub fn db(&self) -> PathBuf {
        self.path().join("var/splitsign.db")
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("var/splitsign.sock")
    }
    /// A `splitsign` command run in this dir, with no systemd environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.path())
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("SPLITSIGN_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }
    /// Run a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run splitsign")
    }
    /// Write `config.toml` and return its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
    /// The file share paths present now.
    pub fn share_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.keys())
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    /// The one share file (panics if there is not exactly one).
    pub fn share_file(&self) -> PathBuf {
        let v = self.share_files();
        assert_eq!(v.len(), 1, "expected one share file, found {v:?}");
        v.into_iter().next().unwrap()
    }
    /// Direct database access, as an attacker or a broken disk would have.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }
    pub fn key_count(&self) -> i64 {
        self.sql()
            .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
            .unwrap()
    }
}

/// A child process this test started, killed (by its handle: this child
/// and no other) and reaped when dropped, so that a failing test leaves no
/// process behind.
pub struct Started(Child);

impl Started {
    pub fn spawn(cmd: &mut Command) -> Started {
        Started(cmd.spawn().expect("spawn"))
    }
}

impl std::ops::Deref for Started {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Started {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A running daemon (the testkit's, started in a test's [`Dir`]).
/// Dropping it sends SIGTERM and checks a clean exit.
pub struct Daemon(splitsign_testkit::daemon::Daemon);

impl Daemon {
    /// Start `serve` in `dir` (zero config) and wait until it answers ping.
    pub fn start(dir: &Dir) -> Daemon {
        Daemon::start_with(dir, &[]).unwrap_or_else(|e| panic!("daemon did not start: {e:?}"))
    }

    pub fn start_with(dir: &Dir, extra: &[&str]) -> Result<Daemon, Exited> {
        Daemon::start_with_env(dir, extra, &[])
    }

    pub fn start_with_env(
        dir: &Dir,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, Exited> {
        let mut cmd = dir.cmd();
        cmd.envs(env.iter().copied());
        Daemon::start_cmd(dir, cmd, extra)
    }

    /// Start `serve` on one CPU: its runtime has one worker thread, so the
    /// order in which it serves connections is its own, not the kernel's.
    pub fn start_on_one_cpu(dir: &Dir, extra: &[&str]) -> Daemon {
        let mut cmd = dir.cmd();
        // SAFETY: sched_setaffinity is async-signal-safe; the set is local.
        unsafe {
            cmd.pre_exec(|| {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Daemon::start_cmd(dir, cmd, extra).unwrap_or_else(|e| panic!("daemon did not start: {e:?}"))
    }

    fn start_cmd(dir: &Dir, mut cmd: Command, extra: &[&str]) -> Result<Daemon, Exited> {
        let socket = socket_of(dir, extra);
        let stderr = dir.path().join(format!("daemon-{}.log", unique()));
        cmd.args(extra);
        splitsign_testkit::daemon::Daemon::spawn(
            cmd,
            socket,
            stderr,
            Duration::from_secs(20),
            Duration::from_millis(20),
        )
        .map(Daemon)
    }

    /// SIGTERM, wait, and require exit 0.
    pub fn stop(self) -> String {
        self.0.stop()
    }

    /// kill -9, as a crash would.
    pub fn kill(self) {
        self.0.kill()
    }
}

impl std::ops::Deref for Daemon {
    type Target = splitsign_testkit::daemon::Daemon;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn socket_of(dir: &Dir, extra: &[&str]) -> PathBuf {
    // A test that moves the socket passes `--socket PATH`.
    extra
        .windows(2)
        .find(|w| w[0] == "--socket")
        .map(|w| PathBuf::from(w[1]))
        .unwrap_or_else(|| dir.socket())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The error code of a response (panics on success).
pub fn code(resp: &Value) -> &str {
    assert_eq!(resp["ok"], false, "expected an error, got {resp}");
    resp["error"]["code"].as_str().expect("error code")
}

/// Assert success and return the response.
pub fn ok(resp: Value) -> Value {
    assert_eq!(resp["ok"], true, "expected success, got {resp}");
    resp
}

/// What systemd gives the daemon: the listener and a notify socket.
pub struct FakeSystemd {
    pub log: PathBuf,
    pub listener: UnixListener,
    pub socket: PathBuf,
    pub notify: UnixDatagram,
    pub notify_path: PathBuf,
}

impl FakeSystemd {
    pub fn new(dir: &Dir) -> FakeSystemd {
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        let socket = run.join("sign.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let notify_path = run.join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        FakeSystemd {
            log: dir.path().join("daemon.log"),
            listener,
            socket,
            notify,
            notify_path,
        }
    }

    /// A config for the test's stores that names this listener's socket,
    /// followed by `extra` lines.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"{}\"\n{extra}",
            self.socket.display()
        )
    }

    /// Start `serve` as systemd would, with the listener and notify socket.
    pub fn spawn(&self, dir: &Dir, args: &[&str], env: &[(&str, &str)]) -> Started {
        Started::spawn(
            activated(dir, args, self.listener.as_raw_fd(), None)
                .env("LISTEN_FDNAMES", "splitsign")
                .env("NOTIFY_SOCKET", &self.notify_path)
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap()),
        )
    }

    /// The next notify message, waiting up to `t`.
    pub fn next(&self, t: Duration) -> Option<String> {
        let deadline = Instant::now() + t;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    }

    /// Wait for a message containing `what`; returns it.
    pub fn expect(&self, what: &str, t: Duration) -> String {
        let deadline = Instant::now() + t;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(m) = self.next(Duration::from_millis(200)) {
                if m.lines().any(|l| l == what || l.starts_with(what)) {
                    return m;
                }
                seen.push(m);
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("no {what:?} from the daemon; got {seen:?}; log:\n{log}");
    }
}

/// `splitsign [args] serve` started the way systemd does it: `fd` becomes
/// fd 3, LISTEN_FDS=1, and LISTEN_PID is the daemon's own pid (set by `sh`
/// right before it `exec`s). With `nofile`, RLIMIT_NOFILE is set first.
pub fn activated(dir: &Dir, args: &[&str], fd: i32, nofile: Option<u64>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("STATE_DIRECTORY")
        .env_remove("JOURNAL_STREAM")
        .env("LISTEN_FDS", "1");
    // SAFETY (test): only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(n) = nofile {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            as_fd3(fd)
        });
    }
    cmd
}

/// Make `fd` the child's fd 3 without close-on-exec (between fork and exec).
fn as_fd3(fd: i32) -> std::io::Result<()> {
    // SAFETY (test): dup2 and fcntl are async-signal-safe. dup2(3, 3) would
    // keep FD_CLOEXEC, so that case clears it instead.
    let r = unsafe {
        if fd == 3 {
            libc::fcntl(3, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, 3)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn wait_exit(child: &mut Child, t: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Verify `token` with jsonwebtoken against the key of `jwks` named by its
/// kid: signature, `iss`, `exp`, `nbf` (jsonwebtoken skips it by default),
/// no leeway, and `aud` when given (with `sub` then required too).
pub fn verify_with_jwks_at(token: &str, jwks: &Value, aud: Option<&str>) -> Value {
    use base64::Engine;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid is published");
    let x = jwk["x"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .unwrap()
            .len(),
        32
    );
    let key = DecodingKey::from_ed_components(x).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&["splitsign"]);
    v.validate_nbf = true;
    match aud {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub"]);
        }
        None => {
            v.validate_aud = false;
            v.set_required_spec_claims(&["exp", "iat", "nbf", "iss"]);
        }
    }
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("token verifies with jsonwebtoken")
        .claims
}

/// [`verify_with_jwks_at`] for a token that must carry `aud` and `sub`.
pub fn verify_with_jwks(token: &str, jwks: &Value, aud: &str) -> Value {
    verify_with_jwks_at(token, jwks, Some(aud))
}

/// Require a command to have succeeded; its stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client signing in a loop on its own connection, until stopped:
/// signing must go on (every reply a token) while something else happens.
pub struct SignLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl SignLoop {
    /// Sign on `socket`, pausing `pause` between requests.
    pub fn start(socket: &Path, pause: Duration) -> SignLoop {
        let socket = socket.to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = Conn::open(&socket).unwrap();
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                ok(c.sign(json!({"sub":"busy"})));
                n += 1;
                std::thread::sleep(pause);
            }
            n
        });
        SignLoop { stop, thread }
    }

    /// Stop; how many tokens it got (a refused sign fails the test).
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .expect("the signing loop got every token")
    }
}

/// Copy a deployment directory (keys/ and var/, modes kept).
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert_ok(&out);
}

/// A copy of the stores in tests/fixtures/NAME (made by an older
/// version), with the modes a checkout does not keep, and its expect.json.
pub fn fixture_stores(name: &str) -> (Dir, serde_json::Value) {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let expect =
        serde_json::from_slice(&std::fs::read(fixture.join("expect.json")).unwrap()).unwrap();
    let dir = Dir::new();
    copy_dir(&fixture, dir.path());
    for (p, mode) in [(dir.keys(), 0o700), (dir.path().join("var"), 0o700)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for f in dir.share_files().into_iter().chain([dir.db()]) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (dir, expect)
}

/// A deployment that has run `init` once and has one key; returns its kid.
pub fn initialised() -> (Dir, String) {
    let dir = Dir::new();
    let out = dir.run(&["init"]);
    assert_ok(&out);
    let kid = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    (dir, kid)
}

/// Whether a test may run, given whether an optional tool it needs was
/// found (`have`); `needs` names the tool and how to get it. When it is
/// missing, the test is skipped: this says "skipped: needs …" on stderr
/// (past the test harness's capture, so that `cargo test` shows it) and
/// returns false, and the caller returns. With `SPLITSIGN_REQUIRE_ALL=1`
/// (`.ci/run` sets it: CI installs every tool) a missing tool fails the
/// test instead.
pub fn optional_tool(have: bool, needs: &str) -> bool {
    let require_all = std::env::var_os("SPLITSIGN_REQUIRE_ALL").is_some_and(|v| v == "1");
    // Straight to fd 2: `eprintln!` would be captured, and shown only for
    // a failing test.
    tool_or_skip(have, needs, require_all, &mut std::io::stderr())
}

fn tool_or_skip(have: bool, needs: &str, require_all: bool, say: &mut dyn Write) -> bool {
    if have {
        return true;
    }
    assert!(
        !require_all,
        "needs {needs} (SPLITSIGN_REQUIRE_ALL=1: no test may be skipped)"
    );
    let _ = writeln!(say, "skipped: needs {needs}");
    false
}

#[test]
fn a_missing_tool_skips_the_test_unless_every_test_must_run() {
    let mut said = Vec::new();
    assert!(tool_or_skip(true, "x", true, &mut said));
    assert!(tool_or_skip(true, "x", false, &mut said));
    assert!(said.is_empty());
    assert!(!tool_or_skip(false, "x (get it)", false, &mut said));
    assert_eq!(
        String::from_utf8(said).unwrap(),
        "skipped: needs x (get it)\n"
    );
    let failed = std::panic::catch_unwind(|| {
        tool_or_skip(
            false,
            "a-tool (apt-get install a-tool)",
            true,
            &mut Vec::new(),
        )
    });
    let message = failed.expect_err("with SPLITSIGN_REQUIRE_ALL=1 a missing tool fails");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("needs a-tool (apt-get install a-tool)"),
        "{message}"
    );
}

/// Whether `program args` runs and succeeds (a tool's `--version`).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// cargo-deb, for the tests that build the Debian package.
pub const CARGO_DEB: &str = "cargo-deb (cargo install cargo-deb --locked --version 3.8.0)";

/// strace, for the tests that stop the daemon at system calls.
pub const STRACE: &str = "strace (apt-get install strace; .ci/run installs it)";

/// Whether strace is here (see [`optional_tool`]).
pub fn have_strace() -> bool {
    optional_tool(runs("strace", &["-V"]), STRACE)
}

/// libfaketime (Debian package `faketime`) shifts the daemon's wall clock.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Whether libfaketime is here (see [`optional_tool`]); the tests that
/// shift the clock ask first.
pub fn have_faketime() -> bool {
    optional_tool(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime (apt-get install faketime; .ci/run installs it)",
    )
}

/// The environment that runs a process under libfaketime with `vars`
/// (`FAKETIME`, or `FAKETIME_TIMESTAMP_FILE` with `FAKETIME_NO_CACHE`), the
/// monotonic clock left alone (timers keep working).
pub fn faketime<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "this test needs libfaketime (apt-get install faketime; .ci/run installs it)"
    );
    let mut env = vec![
        ("LD_PRELOAD", FAKETIME_LIB),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    env.extend_from_slice(vars);
    env
}

/// A wall-clock offset for libfaketime in a file, which a test changes
/// while the daemon runs (libfaketime re-reads it at every call).
pub struct FakeClock {
    file: String,
}

impl FakeClock {
    /// The file in `dir`, at `offset` ("+0", "+3d").
    pub fn new(dir: &Dir, offset: &str) -> FakeClock {
        let c = FakeClock {
            file: dir.path().join("faketime").to_str().unwrap().to_owned(),
        };
        c.set(offset);
        c
    }

    /// Move the clock to `offset` (atomically: a reader never sees a
    /// partial file).
    pub fn set(&self, offset: &str) {
        let tmp = format!("{}.tmp", self.file);
        std::fs::write(&tmp, offset).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// The environment of a process on this clock.
    pub fn env(&self) -> Vec<(&str, &str)> {
        faketime(&[
            ("FAKETIME_TIMESTAMP_FILE", self.file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
        ])
    }
}

/// uid and gid of `nobody`/`nogroup`: a peer that is not root.
pub const NOBODY: u32 = 65534;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A deployment whose socket another uid can reach: the socket in an open
/// directory, its group changed to nogroup (mode 0660).
pub fn open_deployment(extra_config: &str) -> (Dir, Daemon, String) {
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = run.join("s.sock").to_str().unwrap().to_owned();
    let cfg = dir.write_config(&format!(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"{sock}\"\n{extra_config}"
    ));
    let d = Daemon::start_with(
        &dir,
        &["--config", cfg.to_str().unwrap(), "--socket", &sock],
    )
    .unwrap();
    std::os::unix::fs::chown(&sock, None, Some(NOBODY)).unwrap();
    (dir, d, sock)
}

/// Raise our descriptor limit to the hard limit (at most 20000); daemons
/// and peers started from here inherit it.
pub fn raise_nofile() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = lim.maximum.unwrap_or(20000).min(20000);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        },
    )
    .unwrap();
}

/// The number of events of `op` with `result` in the audit log (aggregated
/// records count as many), once it reaches `at_least` or after 3 s.
pub fn wait_for_count(dir: &Dir, op: &str, result: &str, at_least: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n: i64 = dir
            .sql()
            .query_row(
                "SELECT coalesce(sum(count), 0) FROM audit WHERE op = ?1 AND result = ?2",
                [op, result],
                |r| r.get(0),
            )
            .unwrap();
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The jti revocations the daemon at `c` holds, from its metrics.
pub fn jti_revocations(c: &mut Conn) -> usize {
    let metrics = ok(c.request(json!({"op":"metrics"})))["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("splitsign_revocations{kind=\"jti\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no jti revocation count in the metrics:\n{metrics}"))
}

/// The wall clock, Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert_ok(&out);
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fill the filesystem of `dir` with a file; returns its path.
pub fn fill(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // And the last few bytes.
    while f.write_all(&[0u8; 512]).is_ok() {}
    p
}
