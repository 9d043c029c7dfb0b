//! `postgres` is the key store of a cluster: every node's key rows,
//! database shares (x = 2) and revocations in PostgreSQL, each node
//! changing only its own (row-level security keyed on its login role; see
//! `migrations/postgres/`). A host's file shares (x = 1) never go there.
//!
//! The lifecycle code is synchronous (it runs on blocking threads, as with
//! SQLite), so this store drives `tokio-postgres` on a small runtime of its
//! own and blocks on it. Calls reconnect when the connection was lost; a
//! server that cannot be reached is [`Error::PostgresUnreachable`]. A
//! second connection listens for the `NOTIFY`s of other nodes' changes
//! (see [`Postgres::listen`]).
//!
//! Another node's rows are never trusted as a whole: `membership` reads
//! the owner's list of members and bounds, and judges each key row of
//! another node on its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use crate::config::{PostgresSettings, is_local_host};
use crate::error::{Error, Result};
use crate::keys::KeyInfo;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;

use super::FileId;
use super::keystore::{KeyStore, NodeKey, RawKey, RawShare, Revocation, Supersede, check_share};

/// The schema, in order; `splitsign_schema` records how far it is applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_trust.sql"),
];

/// How long a statement may wait for a lock, and run, before it fails
/// (and is retried) rather than hang: no session of another node can hold
/// this node's work up for longer.
const LOCK_TIMEOUT_MS: u32 = 5_000;
const STATEMENT_TIMEOUT_MS: u32 = 60_000;

/// The PostgreSQL client's runtime (a cluster node): one worker, and at
/// most this many threads for blocking work (name lookups). The daemon
/// counts them in its thread budget (`daemon::limits::MAX_THREADS`).
pub const PG_BLOCKING: usize = 2;

/// The advisory lock that serializes schema changes between nodes.
const SCHEMA_LOCK: i64 = 0x7370_6c69_7473_6731; // "splitsg1"

/// What the other nodes changed, as their `NOTIFY`s say (hints only: the
/// node re-reads), gathered until the follower takes them. A flood of
/// notifications sets a flag; it never grows a queue.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    pub keys: bool,
    pub revocations: bool,
    /// The listening connection was (re)established: anything may have
    /// been missed; re-read everything.
    pub connected: bool,
    /// The listening connection was lost (the latest reason); the node
    /// works on what it knows.
    pub lost: Option<String>,
    /// The server refuses this node's login (the latest reason).
    pub refused: Option<String>,
    /// Notifications received since the last take.
    pub notifications: u64,
}

impl Changed {
    /// What `later` adds to what changed before it.
    pub fn merge(&mut self, later: Changed) {
        self.keys |= later.keys;
        self.revocations |= later.revocations;
        self.connected |= later.connected;
        if later.connected {
            self.lost = None;
            self.refused = None;
        }
        if later.lost.is_some() {
            self.lost = later.lost;
        }
        if later.refused.is_some() {
            self.refused = later.refused;
        }
        self.notifications += later.notifications;
    }

    fn any(&self) -> bool {
        self.keys
            || self.revocations
            || self.connected
            || self.lost.is_some()
            || self.refused.is_some()
    }
}

/// Where the listening connection leaves what it heard.
#[derive(Default)]
pub struct Listener {
    state: Mutex<Changed>,
    ready: tokio::sync::Notify,
}

impl Listener {
    fn update(&self, f: impl FnOnce(&mut Changed)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.ready.notify_one();
    }

    /// Wait until something changed, and take it all.
    pub async fn changed(&self) -> Changed {
        loop {
            let wait = self.ready.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.any() {
                    return std::mem::take(&mut *s);
                }
            }
            wait.await;
        }
    }

    /// Take what changed meanwhile, without waiting.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

pub struct Postgres {
    /// `Option` so that drop can shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    connector: Connector,
    client: Mutex<Option<Client>>,
    /// A second connection, for reading every revocation (long, with many):
    /// the statements of the first never wait for it.
    bulk: Mutex<Option<Client>>,
    node: String,
    deployment: String,
}

/// How to reach the server: parsed settings, password, TLS.
#[derive(Clone)]
struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Host and database, for messages (never the password).
    describe: String,
}

impl Connector {
    fn new(settings: &PostgresSettings) -> Result<Connector> {
        let bad = |message: String| Error::Setting {
            key: "postgres",
            message,
        };
        let mut config = crate::config::parse_conninfo(&settings.conninfo).map_err(bad)?;
        if config.get_application_name().is_none() {
            config.application_name("splitsign");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A half-open connection stays silent: keepalives notice.
        config.keepalives(true);
        // No lock another session holds, and no statement, may stall this
        // node for long: it fails, and is retried.
        let options = format!(
            "{} -c lock_timeout={LOCK_TIMEOUT_MS} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim_start());
        config.keepalives_idle(Duration::from_secs(30));
        if let Some(pw) = password(settings, &config)? {
            config.password(pw);
        }
        let local = config.get_hosts().iter().all(is_local_host);
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            // Over a Unix socket or to this host, TLS only when asked for.
            tokio_postgres::config::SslMode::Prefer if local && settings.ca_file.is_none() => None,
            _ => Some(tls_connector(settings.ca_file.as_deref())?),
        };
        if tls.is_some() {
            // "prefer" would fall back to clear text: TLS is required.
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(n) => n.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let describe = format!(
            "host={} dbname={}{}",
            hosts.join(","),
            config.get_dbname().unwrap_or("-"),
            if tls.is_some() { " tls" } else { "" }
        );
        Ok(Connector {
            config,
            tls,
            describe,
        })
    }

    /// A connection; its driver runs on the current runtime and reports
    /// notifications to `notes`.
    async fn connect(
        &self,
        notes: Option<Arc<Listener>>,
    ) -> std::result::Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                Ok((client, tokio::spawn(drive(conn, notes))))
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(drive(conn, notes))))
            }
        }
    }
}

/// Drive a connection until it ends, noting which table each `NOTIFY`
/// names (its payload is not read: any role may send any).
async fn drive<S, T>(mut conn: Connection<S, T>, notes: Option<Arc<Listener>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(l) = &notes {
                    let keys = n.channel() == "splitsign_keys";
                    l.update(|c| {
                        c.notifications += 1;
                        if keys {
                            c.keys = true;
                        } else {
                            c.revocations = true;
                        }
                    });
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    if let Some(l) = &notes {
        l.update(|c| c.lost = Some("the listening connection closed".into()));
    }
}

/// The TLS connector: the server's certificate must chain to `ca_file`'s
/// certificates, or to the system's roots, and name the host.
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |key: &'static str, message: String| Error::Setting { key, message };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| bad("postgres_ca_file", format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(bad(
            "postgres_ca_file",
            "no CA certificate to check the server with: set postgres_ca_file".into(),
        ));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("postgres", format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The password: `postgres_password_file`, else the `PGPASSFILE` (or
/// `~/.pgpass`) line that matches, as libpq reads it. Never argv, never
/// the config file.
fn password(
    settings: &PostgresSettings,
    config: &tokio_postgres::Config,
) -> Result<Option<Vec<u8>>> {
    if let Some(path) = &settings.password_file {
        let text = read_secret_file(path, "postgres_password_file")?;
        let pw = text.lines().next().unwrap_or("").to_owned();
        if pw.is_empty() {
            return Err(Error::Setting {
                key: "postgres_password_file",
                message: format!("{} is empty", path.display()),
            });
        }
        return Ok(Some(pw.into_bytes()));
    }
    let pgpass = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
    let Some(path) = pgpass.filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text = read_secret_file(&path, "PGPASSFILE")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(_)) | None => "localhost".into(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or("").to_owned();
    let db = config.get_dbname().unwrap_or(&user).to_owned();
    Ok(pgpass_lookup(&text, [&host, &port, &db, &user]).map(String::into_bytes))
}

/// The password of the first `host:port:database:user:password` line whose
/// fields match (`*` matches anything; `\\:` and `\\\\` are escapes).
fn pgpass_lookup(text: &str, want: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(want)
                .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

/// A file holding a secret: a regular file that others cannot read.
fn read_secret_file(path: &Path, key: &'static str) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let bad = |message: String| Error::Setting { key, message };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() || meta.mode() & 0o007 != 0 {
        return Err(bad(format!(
            "{} must be a regular file that other users cannot read (mode 0600 or 0640)",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    Ok(text)
}

/// An error, for a message: the server's own words without their DETAIL
/// (which may quote a row, a share's bytes included), or the chain of
/// causes of a client-side error.
pub(super) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => crate::error::chain(e),
    }
}

/// Whether an error means the server could not be reached (and trying
/// again later may work), rather than that it refused something or that
/// the settings are wrong (a password, a certificate).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        // 57P01-57P03: shutting down, starting up; 08: connection errors.
        let code = db.code().code();
        return code.starts_with("57P") || code.starts_with("08");
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return !matches!(io.kind(), InvalidData | InvalidInput | PermissionDenied);
        }
        source = s.source();
    }
    false
}

impl Postgres {
    /// Connect as `node` and bring the schema up to date (if this role
    /// may). The node need not be registered yet ([`Postgres::register`]).
    /// A server that cannot be reached is `PostgresUnreachable`.
    pub fn open(settings: &PostgresSettings, node: &str) -> Result<Postgres> {
        let opened = (|| {
            let mut pg = Postgres::connect(settings, node)?;
            pg.ensure_schema()?;
            pg.check_role()?;
            pg.check_member()?;
            pg.deployment = pg.read_deployment()?.unwrap_or_default();
            Ok(pg)
        })();
        opened.map_err(|e| match e {
            Error::Postgres { reason, .. } if e.is_refusal() => Error::NodeRefused {
                node: node.to_owned(),
                reason: format!(
                    "{reason}. The owner may have removed this node (`splitsign node list`), or \
                     not added it (`splitsign node add {node}`)"
                ),
            },
            e => e,
        })
    }

    /// Connect only (for `pg-schema`, which applies the schema itself).
    pub fn connect(settings: &PostgresSettings, node: &str) -> Result<Postgres> {
        let connector = Connector::new(settings)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(PG_BLOCKING)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(Error::io("starting the PostgreSQL runtime", "tokio"))?;
        Ok(Postgres {
            rt: Some(rt),
            connector,
            client: Mutex::new(None),
            bulk: Mutex::new(None),
            node: node.to_owned(),
            deployment: String::new(),
        })
    }

    /// Whether this node has a row (and so a deployment id).
    pub fn registered(&self) -> bool {
        !self.deployment.is_empty()
    }

    /// Register this node with `deployment` (a new id when `None`). A node
    /// registered meanwhile (another process) keeps its id.
    pub fn register(&mut self, deployment: Option<&str>) -> Result<()> {
        let id = match deployment {
            Some(d) => d.to_owned(),
            None => share_format::new_deployment()?,
        };
        let node = self.node.clone();
        self.with("registering the node", async |c| {
            c.execute(
                "INSERT INTO splitsign_nodes (node, deployment, created_at)
                 VALUES ($1, $2, extract(epoch FROM now())::bigint)
                 ON CONFLICT (node) DO NOTHING",
                &[&node, &id],
            )
            .await
        })?;
        self.deployment = self.read_deployment()?.unwrap_or_default();
        if !self.registered() {
            return Err(Error::KeyStore(format!(
                "PostgreSQL ({}): node {} could not be registered",
                self.connector.describe, self.node
            )));
        }
        Ok(())
    }

    /// Refuse a node name that row-level security would not let this role
    /// write: a role bound by it changes only the rows of the node of its
    /// own name.
    fn check_role(&self) -> Result<()> {
        let (role, exempt) = self.with("reading the role", async |c| {
            let r = c
                .query_one(
                    "SELECT current_user::text,
                            coalesce((SELECT rolsuper OR rolbypassrls FROM pg_roles
                                      WHERE rolname = current_user), false)
                            OR pg_has_role(current_user, c.relowner, 'USAGE')
                     FROM pg_class c WHERE c.oid = 'splitsign_keys'::regclass",
                    &[],
                )
                .await?;
            Ok((r.get::<_, String>(0), r.get::<_, bool>(1)))
        })?;
        if exempt {
            tracing::warn!(
                %role,
                node = %self.node,
                "this role owns the splitsign tables (or bypasses row-level security): it could \
                 change every node's keys; give each node a role of its own (docs/CLUSTER.md)"
            );
            return Ok(());
        }
        if role != self.node {
            return Err(Error::Setting {
                key: "node",
                message: format!(
                    "node {:?} logs in to PostgreSQL as role {role:?}, and row-level security \
                     lets a role change only the rows of the node of the same name: set \
                     `node = \"{role}\"`, or log in as role {:?}",
                    self.node, self.node
                ),
            });
        }
        Ok(())
    }

    /// This node's deployment id, if it is registered.
    fn read_deployment(&self) -> Result<Option<String>> {
        let node = self.node.clone();
        let found = self.with("reading the node", async |c| {
            let row = c
                .query_opt(
                    "SELECT deployment FROM splitsign_nodes WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(row.map(|r| r.get::<_, String>(0)))
        })?;
        match found {
            Some(d) if share_format::is_valid_deployment(&d) => Ok(Some(d)),
            Some(_) => Err(Error::KeyStore(format!(
                "PostgreSQL ({}): node {} has a malformed deployment id",
                self.connector.describe, self.node
            ))),
            None => Ok(None),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    /// Run `f` on the connection (reconnecting first if it was lost).
    pub(super) fn with<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        self.with_on(&self.client, what, f)
    }

    /// [`Postgres::with`], on the connection in `slot`.
    fn with_on<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        what: &'static str,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self
                .rt()
                .block_on(self.connector.connect(None))
                .map_err(|e| self.error("connecting", e))?
                .0;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        let result = self.rt().block_on(f(client));
        if client.is_closed() {
            *guard = None;
        }
        result.map_err(|e| self.error(what, e))
    }

    pub(super) fn error(&self, what: &'static str, e: tokio_postgres::Error) -> Error {
        if unreachable(&e) {
            Error::PostgresUnreachable {
                node: self.node.clone(),
                reason: format!("{what}: {}", error_text(&e)),
            }
        } else {
            Error::Postgres {
                node: self.node.clone(),
                what,
                reason: error_text(&e),
                code: e.code().map(|c| c.code().to_owned()),
            }
        }
    }

    /// The schema version applied, 0 if none.
    pub fn schema_version(&self) -> Result<usize> {
        self.with("reading the schema version", async |c| {
            let row = c
                .query_one("SELECT to_regclass('splitsign_schema') IS NOT NULL", &[])
                .await?;
            if !row.get::<_, bool>(0) {
                return Ok(0);
            }
            let row = c
                .query_one("SELECT version FROM splitsign_schema", &[])
                .await?;
            Ok(row.get::<_, i32>(0) as usize)
        })
    }

    /// Apply the migrations this schema lacks, in one transaction (nodes
    /// or owners starting together apply them once): under the version
    /// row's lock, which only the owner may take, or, before the schema
    /// exists, an advisory lock. Returns the version now applied.
    pub fn migrate(&self) -> Result<usize> {
        self.with("applying the schema", async |c| {
            let tx = c.transaction().await?;
            let exists: bool = tx
                .query_one("SELECT to_regclass('splitsign_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS splitsign_schema (version INTEGER NOT NULL)",
                )
                .await?;
            }
            let version: i32 = match tx
                .query_opt("SELECT version FROM splitsign_schema FOR UPDATE", &[])
                .await?
            {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO splitsign_schema (version) VALUES (0)", &[])
                        .await?;
                    0
                }
            };
            if version as usize >= MIGRATIONS.len() {
                tx.commit().await?;
                return Ok(version as usize);
            }
            // A schema change waits for the tables' locks a while longer.
            tx.batch_execute("SET LOCAL lock_timeout = '30s'").await?;
            for sql in &MIGRATIONS[version as usize..] {
                tx.batch_execute(sql).await?;
            }
            tx.execute(
                "UPDATE splitsign_schema SET version = $1",
                &[&(MIGRATIONS.len() as i32)],
            )
            .await?;
            tx.commit().await?;
            Ok(MIGRATIONS.len())
        })
    }

    fn ensure_schema(&self) -> Result<()> {
        let version = self.schema_version()?;
        if version == MIGRATIONS.len() {
            return Ok(());
        }
        if version > MIGRATIONS.len() {
            return Err(Error::KeyStore(format!(
                "PostgreSQL ({}) has schema version {version}; this splitsign knows {}",
                self.connector.describe,
                MIGRATIONS.len()
            )));
        }
        self.migrate().map(|_| ()).map_err(|e| match e {
            Error::Postgres { .. } => Error::KeyStore(format!(
                "PostgreSQL ({}) has schema version {version}, this splitsign needs {}, and \
                 node {} may not apply it ({}). Apply it as the tables' owner: \
                 `splitsign --config OWNER.toml pg-schema`",
                self.connector.describe,
                MIGRATIONS.len(),
                self.node,
                crate::error::chain(&e)
            )),
            e => e,
        })
    }

    /// "PostgreSQL node web-1 (host=db.internal dbname=splitsign tls)".
    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL node {} ({})",
            self.node, self.connector.describe
        )
    }

    /// "host=db.internal dbname=splitsign tls".
    pub fn describe_server(&self) -> &str {
        &self.connector.describe
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The role this node logs in as (row-level security keys on it).
    pub fn role(&self) -> Result<String> {
        self.with("reading the role", async |c| {
            Ok(c.query_one("SELECT current_user::text", &[]).await?.get(0))
        })
    }

    /// Move a node's key store here (`migrate-store`), in one
    /// transaction: register the node with `deployment` (kept, so that its
    /// file shares stay valid), and replace whatever rows it has (a copy an
    /// interrupted move left) with `keys` (verified), their database
    /// `shares` and the `revocations`.
    pub fn import_node(
        &mut self,
        deployment: &str,
        keys: &[KeyInfo],
        shares: &[KeyShare],
        revocations: &[Revocation],
        now: i64,
    ) -> Result<()> {
        let node = self.node.clone();
        let found = self.with("moving the node's keys", async |c| {
            let tx = c.transaction().await?;
            let found = tx
                .query_opt(
                    "SELECT deployment FROM splitsign_nodes WHERE node = $1",
                    &[&node],
                )
                .await?
                .map(|r| r.get::<_, String>(0));
            if found.as_deref().is_some_and(|d| d != deployment) {
                return Ok(found);
            }
            if found.is_none() {
                tx.execute(
                    "INSERT INTO splitsign_nodes (node, deployment, created_at)
                     VALUES ($1, $2, $3)",
                    &[&node, &deployment, &now],
                )
                .await?;
            }
            tx.execute("SELECT splitsign_clear_own_rows()", &[]).await?;
            for row in keys {
                insert_key_row(&tx, &node, row, true).await?;
            }
            for share in shares {
                insert_share(&tx, &node, share, false).await?;
            }
            for r in revocations {
                insert_revocation(&tx, &node, r, now).await?;
            }
            tx.commit().await?;
            Ok(found)
        })?;
        match found {
            Some(d) if d != deployment => Err(Error::KeyStore(format!(
                "{} already holds node {} of another deployment ({d}): choose another `node` \
                 name for this host",
                self.describe(),
                self.node
            ))),
            _ => {
                self.deployment = deployment.to_owned();
                Ok(())
            }
        }
    }

    /// Stream the revocations changed since `after` (an id), in order, to
    /// `f`: those this node trusts (of active members, and those a removed
    /// member recorded before its removal), kept until `kept_from` or later.
    /// Returns the revocation sequence's high mark and this node's beat,
    /// read first: a mark or a beat below what the node has seen means the
    /// database went back (a restored dump).
    pub fn read_revocations(
        &self,
        after: i64,
        kept_from: i64,
        f: &mut dyn FnMut(RevocationRow),
    ) -> Result<Marks> {
        use futures_util::StreamExt;
        let node = self.node.clone();
        // Every revocation (from id 0) on the second connection: the
        // incremental reads and the node's other statements go on beside.
        let slot = if after == 0 { &self.bulk } else { &self.client };
        self.with_on(slot, "reading revocations", async |c| {
            let marks = read_marks(c, &node).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&after, &kept_from];
            let rows = c
                .query_raw(
                    "SELECT r.id, r.kind, r.value, r.before, r.expires_at, r.node
                     FROM splitsign_revocations r JOIN splitsign_members m ON m.node = r.node
                     WHERE r.id > $1 AND r.expires_at >= $2
                       AND (m.active OR pg_visible_in_snapshot(r.recorded_xid, m.removed_snapshot))
                     ORDER BY r.id",
                    params,
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            // One row at a time: a full read of a million holds no list.
            while let Some(r) = rows.next().await {
                let r = r?;
                if let Some(rev) = revocation(r.get(1), r.get(2), r.get(3), r.get(4)) {
                    f(RevocationRow {
                        id: r.get(0),
                        node: r.get(5),
                        rev,
                    });
                }
            }
            Ok(marks)
        })
    }

    /// The database's marks (see [`Marks`]), alone: a cheap check that it
    /// did not go back.
    pub fn marks(&self) -> Result<Marks> {
        let node = self.node.clone();
        self.with("reading the revocation marks", async |c| {
            read_marks(c, &node).await
        })
    }

    /// Raise this node's beat to `beat` (see [`Marks`]).
    pub fn set_beat(&self, beat: i64) -> Result<()> {
        let node = self.node.clone();
        self.with("raising the node's beat", async |c| {
            c.execute(
                "UPDATE splitsign_nodes SET beat = $2 WHERE node = $1 AND beat < $2",
                &[&node, &beat],
            )
            .await
            .map(|_| ())
        })
    }

    /// Delete the revocations kept until before `before`: this node's,
    /// and those of nodes no longer active (never a row another session
    /// holds: none of them can hold this node up).
    pub fn purge_revocations(&self, before: i64) -> Result<u64> {
        self.with("purging revocations", async |c| {
            let n: i64 = c
                .query_one("SELECT splitsign_purge_revocations($1)", &[&before])
                .await?
                .get(0);
            Ok(n.max(0) as u64)
        })
    }

    /// Listen for other nodes' changes on a connection of its own, kept up
    /// with backoff (50 ms, doubling, at most 1 s), for as long as the
    /// listener lives. `Changed::connected` follows each (re)connection.
    pub fn listen(&self) -> Arc<Listener> {
        let listener = Arc::new(Listener::default());
        let weak = Arc::downgrade(&listener);
        let connector = self.connector.clone();
        self.rt().spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let Some(l) = weak.upgrade() else {
                    return;
                };
                let listening = async {
                    let (client, driver) = connector.connect(Some(Arc::clone(&l))).await?;
                    client
                        .batch_execute("LISTEN splitsign_keys; LISTEN splitsign_revocations")
                        .await?;
                    Ok::<_, tokio_postgres::Error>((client, driver))
                };
                match listening.await {
                    Ok((client, driver)) => {
                        backoff = Duration::from_millis(50);
                        l.update(|c| {
                            c.connected = true;
                            c.lost = None;
                            c.refused = None;
                        });
                        drop(l);
                        // Until the connection ends (the driver says so).
                        let _ = driver.await;
                        drop(client);
                    }
                    Err(e) => {
                        let why = error_text(&e);
                        let refused = e
                            .code()
                            .is_some_and(|c| crate::error::is_refusal_code(c.code()));
                        l.update(|c| {
                            if refused {
                                c.refused = Some(why);
                            } else {
                                c.lost = Some(why);
                            }
                        });
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
        listener
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The store may be dropped on an async thread, where blocking on
        // the runtime's shutdown is not allowed.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a node compares to notice that the database went back: the
/// revocation sequence's mark (ids are never handed out twice), and this
/// node's beat, which only this node raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub high: i64,
    pub beat: i64,
}

impl Marks {
    /// Whether these (the database's) are below what a node has `seen`:
    /// the database went back.
    pub fn below(&self, seen: &Marks) -> bool {
        self.high < seen.high || self.beat < seen.beat
    }
}

async fn read_marks(c: &Client, node: &str) -> std::result::Result<Marks, tokio_postgres::Error> {
    let r = c
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END,
                    coalesce((SELECT beat FROM splitsign_nodes WHERE node = $1), 0)
             FROM splitsign_revocations_id_seq",
            &[&node],
        )
        .await?;
    Ok(Marks {
        high: r.get(0),
        beat: r.get(1),
    })
}

/// A revocation as another node (or this one) stored it.
#[derive(Debug, Clone)]
pub struct RevocationRow {
    pub id: i64,
    pub node: String,
    pub rev: Revocation,
}

/// A revocation row (see [`Revocation::from_columns`]).
fn revocation(
    kind: String,
    value: String,
    before: Option<i64>,
    expires_at: i64,
) -> Option<Revocation> {
    Revocation::from_columns(&kind, value, before, expires_at)
}

pub(super) const KEY_COLUMNS: &str = "kid, public_key, origin, created_at, activate_at, \
                                      deactivate_at, retire_at, share_generation, verified, alg, \
                                      pending_generation";

pub(super) fn raw_key(r: &tokio_postgres::Row) -> RawKey {
    RawKey {
        kid: r.get(0),
        public_key: r.get(1),
        origin: r.get(2),
        times: [r.get(3), r.get(4), r.get(5), r.get(6)],
        share_generation: i64::from(r.get::<_, i32>(7)),
        verified: r.get(8),
        alg: Some(r.get(9)),
        pending_generation: r.get::<_, Option<i32>>(10).map(i64::from),
    }
}

/// Run one statement in a transaction, requiring it to change one row.
fn one_row(n: u64, what: &str, kid: &str, node: &str) -> Result<()> {
    if n == 1 {
        Ok(())
    } else {
        Err(Error::KeyStore(format!(
            "PostgreSQL: {what} of key {kid} of node {node} changed {n} rows, not one"
        )))
    }
}

impl KeyStore for Arc<Postgres> {
    fn describe(&self) -> String {
        Postgres::describe(self)
    }

    fn cluster_node(&self) -> Option<&str> {
        Some(&self.node)
    }

    fn record_possession(&self, kid: &str, proof: &[u8; 64]) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("recording the proof of a key", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pop = $3 WHERE kid = $1 AND node = $2",
                &[&kid, &node, &&proof[..]],
            )
            .await
        })?;
        one_row(n, "the proof", kid, &self.node)
    }

    fn deployment(&self) -> &str {
        &self.deployment
    }

    fn local_file(&self) -> Option<(&Path, FileId)> {
        None
    }

    fn keys(&self) -> Result<Vec<KeyInfo>> {
        let node = self.node.clone();
        let rows = self.with("reading keys", async |c| {
            c.query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM splitsign_keys WHERE node = $1
                     ORDER BY activate_at, created_at, kid"
                ),
                &[&node],
            )
            .await
        })?;
        let db = self.describe();
        rows.iter()
            .map(|r| raw_key(r).check(&db, crate::config::AlgLabel::EdDSA))
            .collect()
    }

    fn other_nodes_keys(&self) -> Result<Vec<NodeKey>> {
        Ok(self.view(crate::lifecycle::wall_now())?.keys)
    }

    fn is_empty(&self) -> Result<bool> {
        let node = self.node.clone();
        self.with("counting keys", async |c| {
            let row = c
                .query_one(
                    "SELECT count(*) FROM splitsign_keys WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(row.get::<_, i64>(0) == 0)
        })
    }

    fn insert_key(&mut self, row: &KeyInfo, share: &KeyShare) -> Result<()> {
        debug_assert_eq!(share.slot, Slot::Database);
        let node = self.node.clone();
        self.with("recording a key", async |c| {
            let tx = c.transaction().await?;
            insert_key_row(&tx, &node, row, false).await?;
            insert_share(&tx, &node, share, false).await?;
            tx.commit().await
        })
    }

    fn commit_key(&mut self, kid: &str, supersede: &[Supersede]) -> Result<()> {
        let node = self.node.clone();
        let n =
            self.with("committing a key", async |c| {
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "UPDATE splitsign_keys SET verified = true WHERE kid = $1 AND node = $2",
                        &[&kid, &node],
                    )
                    .await?;
                if n != 1 {
                    return Ok(n);
                }
                for s in supersede {
                    tx.execute(
                    "UPDATE splitsign_keys SET activate_at = $3, deactivate_at = $4, retire_at = $5
                     WHERE kid = $1 AND node = $2",
                    &[&s.kid, &node, &s.activate_at, &s.deactivate_at, &s.retire_at],
                )
                .await?;
                }
                tx.commit().await?;
                Ok(1)
            })?;
        one_row(n, "the commit", kid, &self.node)
    }

    fn begin_reshare(&self, kid: &str, generation: u32) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("recording a re-split", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pending_generation = $3
                 WHERE kid = $1 AND node = $2 AND share_generation + 1 = $3 AND verified",
                &[&kid, &node, &(generation as i32)],
            )
            .await
        })?;
        one_row(n, "the re-split", kid, &self.node)
    }

    fn clear_pending_generation(&self, kid: &str) -> Result<()> {
        let node = self.node.clone();
        self.with("clearing a re-split", async |c| {
            c.execute(
                "UPDATE splitsign_keys SET pending_generation = NULL WHERE kid = $1 AND node = $2",
                &[&kid, &node],
            )
            .await
        })
        .map(|_| ())
    }

    fn commit_reshare(&mut self, share: &KeyShare, old_generation: u32) -> Result<()> {
        let node = self.node.clone();
        let n = self.with("committing a re-split", async |c| {
            let tx = c.transaction().await?;
            insert_share(&tx, &node, share, false).await?;
            let n = tx
                .execute(
                    "UPDATE splitsign_keys SET share_generation = $3, pending_generation = NULL
                     WHERE kid = $1 AND node = $2 AND share_generation = $4",
                    &[
                        &share.kid,
                        &node,
                        &(share.generation as i32),
                        &(old_generation as i32),
                    ],
                )
                .await?;
            if n != 1 {
                return Ok(n);
            }
            tx.execute(
                "SELECT splitsign_delete_shares($1, $2)",
                &[&share.kid, &(share.generation as i32)],
            )
            .await?;
            tx.commit().await?;
            Ok(1)
        })?;
        one_row(n, "the re-split", &share.kid, &self.node)
    }

    fn restore_db_share(&mut self, share: &KeyShare) -> Result<()> {
        let node = self.node.clone();
        self.with("restoring a database share", async |c| {
            // In place of a damaged one at the same generation, if any.
            insert_share(&*c, &node, share, true).await.map(|_| ())
        })
    }

    fn discard_key(&self, kid: &str) -> Result<()> {
        self.with("discarding a key", async |c| {
            c.execute("SELECT splitsign_discard_key($1)", &[&kid]).await
        })
        .map(|_| ())
    }

    fn delete_db_shares(&self, kid: &str) -> Result<bool> {
        self.with("destroying database shares", async |c| {
            let n: i64 = c
                .query_one("SELECT splitsign_delete_shares($1, NULL::integer)", &[&kid])
                .await?
                .get(0);
            Ok(n > 0)
        })
    }

    fn kids_with_db_shares(&self) -> Result<Vec<String>> {
        let node = self.node.clone();
        self.with("listing database shares", async |c| {
            let rows = c
                .query(
                    "SELECT DISTINCT kid FROM splitsign_db_shares WHERE node = $1",
                    &[&node],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn has_legacy_rows(&self) -> Result<bool> {
        Ok(false)
    }

    fn record_legacy_alg(&self) -> Result<usize> {
        Ok(0)
    }

    fn db_share(&self, row: &KeyInfo) -> Result<KeyShare> {
        let node = self.node.clone();
        let found = self.with("reading a database share", async |c| {
            let r = c
                .query_opt(
                    "SELECT x, y, checksum FROM splitsign_db_shares
                     WHERE kid = $1 AND generation = $2 AND node = $3",
                    &[&row.kid, &(row.share_generation as i32), &node],
                )
                .await?;
            Ok(r.map(|r| RawShare {
                x: i64::from(r.get::<_, i16>(0)),
                y: zeroize::Zeroizing::new(r.get(1)),
                checksum: r.get(2),
            }))
        })?;
        check_share(found, row, &self.describe(), &self.deployment)
    }

    fn add_revocations(&self, rows: &[Revocation], now: i64) -> Result<()> {
        let node = self.node.clone();
        self.with("recording revocations", async |c| {
            let tx = c.transaction().await?;
            for r in rows {
                insert_revocation(&tx, &node, r, now).await?;
            }
            tx.commit().await
        })
    }

    fn purge_revocations(&self, before: i64) -> Result<u64> {
        Postgres::purge_revocations(self, before)
    }

    fn for_each_revocation(&self, before: i64, f: &mut dyn FnMut(Revocation)) -> Result<()> {
        Postgres::purge_revocations(self, before)?;
        self.read_revocations(0, before, &mut |r| f(r.rev))?;
        Ok(())
    }
}

async fn insert_key_row(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    row: &KeyInfo,
    verified: bool,
) -> std::result::Result<u64, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at,
             deactivate_at, retire_at, share_generation, verified, alg, pending_generation)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL)",
        &[
            &node,
            &row.kid,
            &&row.public_key[..],
            &row.origin.as_str(),
            &row.created_at,
            &row.activate_at,
            &row.deactivate_at,
            &row.retire_at,
            &(row.share_generation as i32),
            &verified,
            &row.alg.as_str(),
        ],
    )
    .await
}

/// Record a revocation; one only grows (the later `before` and
/// `expires_at` win). Its new id (drawn by the table's trigger) tells the
/// other nodes.
async fn insert_revocation(
    tx: &impl tokio_postgres::GenericClient,
    node: &str,
    r: &Revocation,
    now: i64,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let (kind, value, before, expires_at) = r.columns();
    tx.execute(
        "INSERT INTO splitsign_revocations (kind, value, before, expires_at, created_at, node)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (kind, value, node) DO UPDATE SET
             before = GREATEST(splitsign_revocations.before, EXCLUDED.before),
             expires_at = GREATEST(splitsign_revocations.expires_at, EXCLUDED.expires_at),
             created_at = EXCLUDED.created_at",
        &[&kind, &value, &before, &expires_at, &now, &node],
    )
    .await
}

/// Store a database share; with `replace`, in place of one at the same
/// generation (a damaged one being repaired).
async fn insert_share(
    tx: &impl tokio_postgres::GenericClient,
    node: &str,
    share: &KeyShare,
    replace: bool,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sum = share_format::db_checksum(&share.kid, share.generation, 2, &share.y);
    let sql = if replace {
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum)
         VALUES ($1, $2, $3, 2, $4, $5)
         ON CONFLICT (node, kid, generation) DO UPDATE SET
             y = EXCLUDED.y, checksum = EXCLUDED.checksum"
    } else {
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum)
         VALUES ($1, $2, $3, 2, $4, $5)"
    };
    tx.execute(
        sql,
        &[
            &node,
            &share.kid,
            &(share.generation as i32),
            &&share.y.as_bytes()[..],
            &&sum[..],
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_with_wildcards_and_escapes() {
        let text = "# comment\ndb.internal:5432:splitsign:node_a:s3cr\\:et\n*:*:*:node_b:pw-b\n";
        assert_eq!(
            pgpass_lookup(text, ["db.internal", "5432", "splitsign", "node_a"]).as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(text, ["x", "1", "y", "node_b"]).as_deref(),
            Some("pw-b")
        );
        assert_eq!(pgpass_lookup(text, ["x", "1", "y", "node_c"]), None);
    }
}
