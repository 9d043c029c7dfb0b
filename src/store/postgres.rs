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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use crate::config::{PostgresSettings, is_local_host};
use crate::error::{Error, Result};
use crate::keys::KeyInfo;
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;

use super::FileId;
use super::keystore::{KeyStore, NodeKey, RawKey, RawShare, check_share};
use super::sqlite::{Revocation, Supersede};

/// The schema, in order; `splitsign_schema` records how far it is applied.
const MIGRATIONS: &[&str] = &[include_str!("../../migrations/postgres/0001_init.sql")];

/// The advisory lock that serializes schema changes between nodes.
const SCHEMA_LOCK: i64 = 0x7370_6c69_7473_6731; // "splitsg1"

/// What the other nodes changed, as `NOTIFY` says (a hint: re-read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Keys,
    Revocations,
    /// The listening connection is (re)established: anything may have been
    /// missed, re-read everything.
    Connected,
    /// The listening connection is lost; the node works on what it knows.
    Lost(String),
}

pub struct Postgres {
    /// `Option` so that drop can shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    connector: Connector,
    client: Mutex<Option<Client>>,
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

    /// A connection; its driver runs on the current runtime and forwards
    /// notifications to `notes`.
    async fn connect(
        &self,
        notes: Option<mpsc::UnboundedSender<String>>,
    ) -> std::result::Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = self.config.connect(NoTls).await?;
                tokio::spawn(drive(conn, notes));
                Ok(client)
            }
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await?;
                tokio::spawn(drive(conn, notes));
                Ok(client)
            }
        }
    }
}

/// Drive a connection until it ends, forwarding `NOTIFY` channel names.
async fn drive<S, T>(mut conn: Connection<S, T>, notes: Option<mpsc::UnboundedSender<String>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(tx) = &notes {
                    let _ = tx.send(n.channel().to_owned());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
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
        let pg = Postgres::connect(settings, node)?;
        pg.ensure_schema()?;
        let mut pg = pg;
        pg.check_role()?;
        pg.deployment = pg.read_deployment()?.unwrap_or_default();
        Ok(pg)
    }

    /// Connect only (for `pg-schema`, which applies the schema itself).
    pub fn connect(settings: &PostgresSettings, node: &str) -> Result<Postgres> {
        let connector = Connector::new(settings)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(crate::daemon::limits::PG_BLOCKING)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(Error::io("starting the PostgreSQL runtime", "tokio"))?;
        Ok(Postgres {
            rt: Some(rt),
            connector,
            client: Mutex::new(None),
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
    fn with<T>(
        &self,
        what: &'static str,
        f: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let client = self
                .rt()
                .block_on(self.connector.connect(None))
                .map_err(|e| self.error("connecting", e))?;
            *guard = Some(client);
        }
        let client = guard.as_mut().expect("connected above");
        let result = self.rt().block_on(f(client));
        if client.is_closed() {
            *guard = None;
        }
        result.map_err(|e| self.error(what, e))
    }

    fn error(&self, what: &'static str, e: tokio_postgres::Error) -> Error {
        if unreachable(&e) {
            Error::PostgresUnreachable {
                node: self.node.clone(),
                reason: format!("{what}: {}", crate::error::chain(&e)),
            }
        } else {
            Error::Postgres {
                node: self.node.clone(),
                what,
                source: e,
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

    /// Apply the migrations this schema lacks, in one transaction, under an
    /// advisory lock (nodes starting together apply them once). Returns the
    /// version now applied.
    pub fn migrate(&self) -> Result<usize> {
        self.with("applying the schema", async |c| {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS splitsign_schema (version INTEGER NOT NULL)",
            )
            .await?;
            let version: i32 = match tx
                .query_opt("SELECT version FROM splitsign_schema", &[])
                .await?
            {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO splitsign_schema (version) VALUES (0)", &[])
                        .await?;
                    0
                }
            };
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

    /// Let `role` (a node's login role) use the tables; row-level security
    /// confines it to the rows of the node of its name.
    pub fn grant(&self, role: &str) -> Result<()> {
        if !crate::config::valid_node(role) {
            return Err(Error::Usage(format!(
                "{role:?} is not a node role name: 1 to 63 letters, digits, '_', '.' or '-'"
            )));
        }
        let quoted = format!("\"{role}\"");
        let sql = format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON splitsign_nodes, splitsign_keys, \
             splitsign_db_shares, splitsign_revocations TO {quoted};
             GRANT USAGE ON SEQUENCE splitsign_revocations_id_seq TO {quoted};
             GRANT SELECT ON splitsign_schema TO {quoted};"
        );
        self.with("granting a role", async |c| c.batch_execute(&sql).await)
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
            tx.execute("DELETE FROM splitsign_keys WHERE node = $1", &[&node])
                .await?;
            tx.execute(
                "DELETE FROM splitsign_revocations WHERE node = $1",
                &[&node],
            )
            .await?;
            for row in keys {
                insert_key_row(&tx, &node, row, true).await?;
            }
            for share in shares {
                insert_share(&tx, &node, share).await?;
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

    /// Revocations changed since `after` (an id): every node's, in order,
    /// and the highest id seen.
    pub fn revocations_after(&self, after: i64) -> Result<(Vec<Revocation>, i64)> {
        self.with("reading revocations", async |c| {
            let rows = c
                .query(
                    "SELECT id, kind, value, before, expires_at FROM splitsign_revocations
                     WHERE id > $1 ORDER BY id",
                    &[&after],
                )
                .await?;
            let mut last = after;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                last = last.max(r.get::<_, i64>(0));
                if let Some(rev) = revocation(r.get(1), r.get(2), r.get(3), r.get(4)) {
                    out.push(rev);
                }
            }
            Ok((out, last))
        })
    }

    /// Delete the revocations kept until before `before` (any node's:
    /// row-level security lets every node purge expired rows).
    pub fn purge_revocations(&self, before: i64) -> Result<u64> {
        self.with("purging revocations", async |c| {
            c.execute(
                "DELETE FROM splitsign_revocations WHERE expires_at < $1",
                &[&before],
            )
            .await
        })
    }

    /// Listen for other nodes' changes on a connection of its own, kept up
    /// with backoff (50 ms, doubling, at most 1 s), for as long as the
    /// receiver lives. `Change::Connected` follows each (re)connection.
    pub fn listen(&self) -> mpsc::UnboundedReceiver<Change> {
        let (tx, rx) = mpsc::unbounded_channel();
        let connector = self.connector.clone();
        self.rt().spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let (notes_tx, mut notes) = mpsc::unbounded_channel();
                let listening = async {
                    let client = connector.connect(Some(notes_tx)).await?;
                    client
                        .batch_execute("LISTEN splitsign_keys; LISTEN splitsign_revocations")
                        .await?;
                    Ok::<_, tokio_postgres::Error>(client)
                };
                match listening.await {
                    Ok(client) => {
                        backoff = Duration::from_millis(50);
                        if tx.send(Change::Connected).is_err() {
                            return;
                        }
                        while let Some(channel) = notes.recv().await {
                            let change = match channel.as_str() {
                                "splitsign_keys" => Change::Keys,
                                _ => Change::Revocations,
                            };
                            if tx.send(change).is_err() {
                                return;
                            }
                        }
                        drop(client);
                        if tx
                            .send(Change::Lost("the listening connection closed".into()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        if tx.send(Change::Lost(crate::error::chain(&e))).is_err() {
                            return;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        });
        rx
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

/// A revocation row (see [`Revocation::from_columns`]).
fn revocation(
    kind: String,
    value: String,
    before: Option<i64>,
    expires_at: i64,
) -> Option<Revocation> {
    Revocation::from_columns(&kind, value, before, expires_at)
}

const KEY_COLUMNS: &str = "kid, public_key, origin, created_at, activate_at, deactivate_at, \
                           retire_at, share_generation, verified, alg, pending_generation";

fn raw_key(r: &tokio_postgres::Row) -> RawKey {
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
        let node = self.node.clone();
        let rows = self.with("reading other nodes' keys", async |c| {
            c.query(
                &format!(
                    "SELECT {KEY_COLUMNS}, node FROM splitsign_keys
                     WHERE node <> $1 AND verified ORDER BY activate_at, created_at, kid"
                ),
                &[&node],
            )
            .await
        })?;
        let db = self.describe();
        rows.iter()
            .map(|r| {
                Ok(NodeKey {
                    node: r.get(11),
                    key: raw_key(r).check(&db, crate::config::AlgLabel::EdDSA)?,
                })
            })
            .collect()
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
            insert_share(&tx, &node, share).await?;
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
            insert_share(&tx, &node, share).await?;
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
                "DELETE FROM splitsign_db_shares WHERE kid = $1 AND node = $2 AND generation <> $3",
                &[&share.kid, &node, &(share.generation as i32)],
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
            let tx = c.transaction().await?;
            tx.execute(
                "DELETE FROM splitsign_db_shares WHERE kid = $1 AND node = $2 AND generation = $3",
                &[&share.kid, &node, &(share.generation as i32)],
            )
            .await?;
            insert_share(&tx, &node, share).await?;
            tx.commit().await
        })
    }

    fn discard_key(&self, kid: &str) -> Result<()> {
        let node = self.node.clone();
        self.with("discarding a key", async |c| {
            c.execute(
                "DELETE FROM splitsign_keys WHERE kid = $1 AND node = $2",
                &[&kid, &node],
            )
            .await
        })
        .map(|_| ())
    }

    fn delete_db_shares(&self, kid: &str) -> Result<bool> {
        let node = self.node.clone();
        self.with("destroying database shares", async |c| {
            c.execute(
                "DELETE FROM splitsign_db_shares WHERE kid = $1 AND node = $2",
                &[&kid, &node],
            )
            .await
        })
        .map(|n| n > 0)
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
        let (rows, _) = self.revocations_after(0)?;
        rows.into_iter().for_each(f);
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
/// `expires_at` win). Its new id tells the other nodes.
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
             created_at = EXCLUDED.created_at,
             id = nextval('splitsign_revocations_id_seq')",
        &[&kind, &value, &before, &expires_at, &now, &node],
    )
    .await
}

async fn insert_share(
    tx: &tokio_postgres::Transaction<'_>,
    node: &str,
    share: &KeyShare,
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sum = share_format::db_checksum(&share.kid, share.generation, 2, &share.y);
    tx.execute(
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum)
         VALUES ($1, $2, $3, 2, $4, $5)",
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
