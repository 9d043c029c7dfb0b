//! `config` turns a TOML file, the environment and command-line flags into
//! one validated [`Config`]. Nothing else reads raw settings.
//!
//! Precedence: built-in defaults < TOML file < environment
//! (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`) < flags. The file is
//! `--config PATH` or, when it exists, `/etc/splitsign/config.toml`. With no
//! file and no systemd environment, the daemon runs from the current
//! directory: shares in `./keys`, database and socket in `./var`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::{OpName, RESERVED_CLAIMS};

pub const SYSTEM_CONFIG: &str = "/etc/splitsign/config.toml";
/// A config file larger than this is refused before it is parsed.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// The JWS `alg` label the daemon writes and accepts. Both name the same
/// algorithm (Ed25519, RFC 8037); `Ed25519` is the fully-specified name of
/// RFC 9864, `EdDSA` the label most verifiers know today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AlgLabel {
    EdDSA,
    Ed25519,
}

impl AlgLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgLabel::EdDSA => "EdDSA",
            AlgLabel::Ed25519 => "Ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<AlgLabel> {
        [AlgLabel::EdDSA, AlgLabel::Ed25519]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// How hard an audit commit waits for the disk (`audit_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSync {
    /// `synchronous=FULL`: the WAL is fsync'ed at every commit; a committed
    /// record survives power loss. One fsync per batch.
    Full,
    /// `synchronous=NORMAL` (WAL): a committed record survives a crash of
    /// the daemon (it is in the OS before the reply leaves), but the last
    /// batches may be lost on power loss. No fsync per batch.
    Normal,
}

/// How much of the audit log's filesystem stays free for the admins
/// (`audit_keep_free`): below it, only admins may sign, so that legitimate
/// traffic never fills the disk to the last byte. A size (`"256MiB"`, or
/// bytes as an integer) or a share of the filesystem (`"5%"`); `0` turns
/// the reserve off. The default is 5% of the filesystem, at most 1 GiB
/// (journald's `SystemKeepFree=` has the same shape).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeepFree {
    Bytes(u64),
    /// A share of the filesystem's size, in percent, at most `cap` bytes.
    Percent {
        percent: f64,
        cap: Option<u64>,
    },
}

impl Default for KeepFree {
    fn default() -> Self {
        KeepFree::Percent {
            percent: 5.0,
            cap: Some(1 << 30),
        }
    }
}

impl KeepFree {
    /// The reserve in bytes, on a filesystem of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            KeepFree::Bytes(n) => n,
            KeepFree::Percent { percent, cap } => {
                let n = (total as f64 * percent / 100.0) as u64;
                cap.map_or(n, |c| n.min(c))
            }
        }
    }

    /// Parse `"5%"`, `"256MiB"`, `"1G"`, `"0"`: units K, M, G, T (powers
    /// of 1024, with or without `iB`/`B`). A percentage is at most 50.
    pub fn parse(text: &str) -> std::result::Result<KeepFree, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let percent: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a percentage like \"5%\""))?;
            if !(0.0..=50.0).contains(&percent) {
                return Err(format!("{text:?}: a percentage must be between 0% and 50%"));
            }
            return Ok(KeepFree::Percent { percent, cap: None });
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("{text:?} is not a size like \"256MiB\" or a percentage like \"5%\"")
        })?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" | "KB" => 10,
            "M" | "MiB" | "MB" => 20,
            "G" | "GiB" | "GB" => 30,
            "T" | "TiB" | "TB" => 40,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use K, M, G or T, powers of 1024, or %)"
                ));
            }
        };
        n.checked_mul(1u64 << shift)
            .ok_or_else(|| format!("{text:?} is too large"))
            .and_then(KeepFree::bounded)
    }

    /// A size, at most [`KeepFree::MAX`].
    fn bounded(n: u64) -> std::result::Result<KeepFree, String> {
        if n > KeepFree::MAX {
            return Err(format!(
                "{} is more than any filesystem this is for (at most {})",
                human_bytes(n),
                human_bytes(KeepFree::MAX)
            ));
        }
        Ok(KeepFree::Bytes(n))
    }

    /// The largest size taken: 1 PiB.
    pub const MAX: u64 = 1 << 50;
}

/// The directory a file is in: its parent, or `.` for a bare name.
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` appended to its last component (`x.db` →
/// `x.db-wal`, `x.db.lock`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// A size for people: `812 KiB`, `12.3 MiB`, `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{} KiB", n >> 10),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        1_073_741_824..1_099_511_627_776 => format!("{:.1} GiB", n as f64 / 1_073_741_824.0),
        _ => format!("{:.1} TiB", n as f64 / 1_099_511_627_776.0),
    }
}

impl std::fmt::Display for KeepFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepFree::Bytes(n) => write!(f, "{}", human_bytes(*n)),
            KeepFree::Percent {
                percent,
                cap: Some(c),
            } => write!(
                f,
                "{percent}% of the filesystem, at most {}",
                human_bytes(*c)
            ),
            KeepFree::Percent { percent, cap: None } => write!(f, "{percent}% of the filesystem"),
        }
    }
}

impl<'de> Deserialize<'de> for KeepFree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = KeepFree;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size like \"256MiB\", a percentage like \"5%\", or bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<KeepFree, E> {
                KeepFree::bounded(n).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<KeepFree, E> {
                u64::try_from(n)
                    .map_err(|_| E::custom(format!("{n} is negative")))
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> std::result::Result<KeepFree, E> {
                KeepFree::parse(t).map_err(E::custom)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// What to do when key pages cannot be locked in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlockMode {
    /// Log a warning and go on (the key may be swapped out).
    Warn,
    /// Refuse to start.
    Require,
}

/// One `[[policy]]` table: which peers it matches and what they may do.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub name: String,
    #[serde(default)]
    pub uids: Vec<u32>,
    #[serde(default)]
    pub users: Vec<String>,
    /// Matched against the peer's primary gid (SO_PEERCRED carries no
    /// supplementary groups).
    #[serde(default)]
    pub gids: Vec<u32>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Allowed ops; default: ping, sign, verify, jwks, status.
    pub ops: Option<Vec<String>>,
    /// Allowed values of `aud`; default: any.
    pub audiences: Option<Vec<String>>,
    /// Claims the daemon sets for this client, replacing what it sends.
    #[serde(default)]
    pub forced_claims: toml::Table,
    /// Set `sub` to the peer's user name.
    #[serde(default)]
    pub sub_from_peer: bool,
    /// Claim names the client may send; default: any (but reserved ones).
    pub claims: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    pub max_ttl: Option<Duration>,
    /// May use the admin ops (rotate, reshare, revoke, audit_prune), in
    /// addition to `ops`.
    #[serde(default)]
    pub admin: bool,
    /// Tokens per second each peer uid of this policy may get (a token
    /// bucket); default: no limit.
    pub sign_rate: Option<f64>,
    /// How many tokens a peer may get at once before `sign_rate` applies;
    /// default: one second's worth (at least 1).
    pub sign_burst: Option<u32>,
}

/// The settings file, as written by an operator. Every field is optional;
/// unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    issuer: Option<String>,
    alg: Option<AlgLabel>,
    shares_dir: Option<PathBuf>,
    db: Option<PathBuf>,
    socket: Option<PathBuf>,
    socket_mode: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    default_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    max_ttl: Option<Duration>,
    max_token_bytes: Option<usize>,
    max_frame_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    admin_connections: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    write_timeout: Option<Duration>,
    mlock: Option<MlockMode>,
    audit: Option<bool>,
    audit_sync: Option<AuditSync>,
    #[serde(default, with = "humantime_serde::option")]
    audit_retention: Option<Duration>,
    audit_keep_free: Option<KeepFree>,
    admin_uids: Option<Vec<u32>>,
    #[serde(default)]
    policy: Vec<PolicyFile>,
    #[serde(default, with = "humantime_serde::option")]
    rotation_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    prepublish: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    jwks_max_age: Option<Duration>,
    jwks_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
    postgres: Option<String>,
    postgres_password_file: Option<PathBuf>,
    postgres_ca_file: Option<PathBuf>,
    node: Option<String>,
}

/// Path overrides given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub shares_dir: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub socket: Option<PathBuf>,
}

/// Where the settings came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// No file: zero-config local run, or systemd directories.
    Defaults,
}

/// Where a cluster keeps its key rows, database shares and revocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    /// A libpq connection string or URL, without a password.
    pub conninfo: String,
    /// The password, on the first line of this file (mode 0600); else
    /// `PGPASSFILE` (or `~/.pgpass`) is read, as libpq does.
    pub password_file: Option<PathBuf>,
    /// The CA certificates (PEM) a server's certificate must chain to; the
    /// system's roots when unset.
    pub ca_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: Origin,
    pub issuer: String,
    pub alg: AlgLabel,
    pub shares_dir: PathBuf,
    pub db: PathBuf,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_token_bytes: usize,
    pub max_frame_bytes: usize,
    /// Open connections, all peers together (admin uids included).
    pub max_connections: usize,
    /// Open connections of one peer uid.
    pub max_connections_per_peer: usize,
    /// Connections of `max_connections` that only admin uids may take.
    pub admin_connections: usize,
    /// Close a connection with no request for this long.
    pub idle_timeout: Duration,
    /// Close a connection whose started request line is not finished within
    /// this long (slow clients).
    pub read_timeout: Duration,
    /// Close a connection that does not take its responses within this long.
    pub write_timeout: Duration,
    pub mlock: MlockMode,
    /// Keep the audit log (default on; off only to measure its cost).
    pub audit: bool,
    /// `full` (default): each audit batch is fsync'ed before its replies;
    /// `normal`: it is in the OS (survives a daemon crash, not power loss).
    pub audit_sync: AuditSync,
    /// Audit records older than this are pruned in the background (an
    /// anchor keeps the rest of the chain verifiable).
    pub audit_retention: Duration,
    /// Free space kept on the audit log's filesystem for the admins.
    pub audit_keep_free: KeepFree,
    /// The stores or the socket were given as relative paths (taken from
    /// the working directory; they are absolute here).
    pub relative_stores: bool,
    /// Peers with these uids may use admin ops. Default: root and the
    /// daemon's own uid.
    pub admin_uids: Option<Vec<u32>>,
    /// Per-client policies, first match wins. Empty: every peer that can
    /// connect may use the non-admin ops under the global limits.
    pub policies: Vec<PolicyFile>,
    pub rotation_interval: Duration,
    pub leeway: Duration,
    /// How long before its activation the next key is created and published.
    pub prepublish: Duration,
    /// The longest time verifiers cache the JWKS (the Cache-Control max-age
    /// the operator serves it with). The prepublish lead must cover it.
    pub jwks_max_age: Duration,
    /// Where to write the JWKS for a web server to serve, if anywhere.
    pub jwks_file: Option<PathBuf>,
    /// Where to write the metrics (Prometheus text) every 15 s, for
    /// node_exporter's textfile collector, if anywhere.
    pub metrics_file: Option<PathBuf>,
    /// With it, key rows, database shares and revocations live in
    /// PostgreSQL, shared by the nodes of a cluster; the local SQLite `db`
    /// keeps the audit log.
    pub postgres: Option<PostgresSettings>,
    /// This daemon's name among the nodes of a cluster (default: the host
    /// name). It creates and rotates only its own keys.
    pub node: String,
    /// The stores are where splitsign 0.1 put them under systemd (swapped:
    /// the database in `…/shares`, the file shares in `…/db`), and are used
    /// there.
    pub legacy_layout: bool,
}

/// What the process environment contributes (read once, passed in so that
/// tests need not mutate the environment).
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub state_directory: Option<String>,
    pub runtime_directory: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            state_directory: std::env::var("STATE_DIRECTORY").ok(),
            runtime_directory: std::env::var("RUNTIME_DIRECTORY").ok(),
        }
    }
}

impl Config {
    /// Load the file (if any), apply the environment and flags, validate.
    pub fn load(overrides: &Overrides, env: &Env) -> Result<Config> {
        let path = match &overrides.config {
            Some(p) => Some(p.clone()),
            None if Path::new(SYSTEM_CONFIG).exists() => Some(PathBuf::from(SYSTEM_CONFIG)),
            None => None,
        };
        let (file, origin) = match path {
            Some(path) => (read_file(&path)?, Origin::File(path)),
            None => (FileConfig::default(), Origin::Defaults),
        };
        Config::build(file, origin, overrides, env)
    }

    /// Parse settings from TOML text (no file, no environment); for tests
    /// and tools.
    pub fn from_toml(text: &str) -> Result<Config> {
        let file: FileConfig = toml::from_str(text).map_err(|e| Error::Config {
            path: "<inline>".into(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        Config::build(
            file,
            Origin::File("<inline>".into()),
            &Overrides::default(),
            &Env::default(),
        )
    }

    fn build(file: FileConfig, origin: Origin, ov: &Overrides, env: &Env) -> Result<Config> {
        let (def_shares, def_db, def_socket) = default_places(env, &origin)?;
        let from_state = file.shares_dir.is_none()
            && file.db.is_none()
            && ov.shares_dir.is_none()
            && ov.db.is_none()
            && env.state_directory.is_some();
        let socket_mode = match &file.socket_mode {
            None => 0o660,
            Some(s) => parse_mode(s)?,
        };
        let cfg = Config {
            origin,
            issuer: file
                .issuer
                .clone()
                .unwrap_or_else(|| "splitsign".to_owned()),
            alg: file.alg.unwrap_or(AlgLabel::EdDSA),
            shares_dir: ov
                .shares_dir
                .clone()
                .or(file.shares_dir.clone())
                .unwrap_or(def_shares),
            db: ov.db.clone().or(file.db.clone()).unwrap_or(def_db),
            socket: ov
                .socket
                .clone()
                .or(file.socket.clone())
                .unwrap_or(def_socket),
            socket_mode,
            ..Config::settings(&file)
        }
        .absolute();
        let cfg = if from_state && legacy_swapped_layout(&cfg.shares_dir, &cfg.db) {
            // Keep working where 0.1 put the stores (said in the log).
            let db_name = cfg.db.file_name().map(PathBuf::from).unwrap_or_default();
            let db_dir = cfg.db.parent().map(Path::to_path_buf).unwrap_or_default();
            Config {
                db: cfg.shares_dir.join(db_name),
                shares_dir: db_dir,
                legacy_layout: true,
                ..cfg
            }
        } else {
            cfg
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every setting but the places, from the file or the defaults.
    fn settings(file: &FileConfig) -> Config {
        let conns = file.max_connections.unwrap_or(1024);
        Config {
            origin: Origin::Defaults,
            issuer: String::new(),
            alg: AlgLabel::EdDSA,
            shares_dir: PathBuf::new(),
            db: PathBuf::new(),
            legacy_layout: false,
            socket: PathBuf::new(),
            socket_mode: 0o660,
            default_ttl: file.default_ttl.unwrap_or(Duration::from_secs(15 * 60)),
            max_ttl: file.max_ttl.unwrap_or(Duration::from_secs(60 * 60)),
            max_token_bytes: file.max_token_bytes.unwrap_or(8 * 1024),
            max_frame_bytes: file.max_frame_bytes.unwrap_or(64 * 1024),
            max_connections: conns,
            // Unset, these follow a smaller max_connections.
            max_connections_per_peer: file
                .max_connections_per_peer
                .unwrap_or_else(|| conns.clamp(1, 64)),
            admin_connections: file
                .admin_connections
                .unwrap_or_else(|| (conns / 2).clamp(1, 4)),
            idle_timeout: file.idle_timeout.unwrap_or(Duration::from_secs(300)),
            read_timeout: file.read_timeout.unwrap_or(Duration::from_secs(10)),
            write_timeout: file.write_timeout.unwrap_or(Duration::from_secs(10)),
            mlock: file.mlock.unwrap_or(MlockMode::Warn),
            audit: file.audit.unwrap_or(true),
            audit_sync: file.audit_sync.unwrap_or(AuditSync::Full),
            audit_retention: file
                .audit_retention
                .unwrap_or(Duration::from_secs(90 * 86400)),
            audit_keep_free: file.audit_keep_free.unwrap_or_default(),
            relative_stores: false,
            admin_uids: file.admin_uids.clone(),
            policies: file.policy.clone(),
            rotation_interval: file
                .rotation_interval
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            leeway: file.leeway.unwrap_or(Duration::from_secs(60)),
            prepublish: file.prepublish.unwrap_or(Duration::from_secs(3600)),
            jwks_max_age: file.jwks_max_age.unwrap_or(Duration::from_secs(900)),
            jwks_file: file.jwks_file.clone(),
            metrics_file: file.metrics_file.clone(),
            postgres: file.postgres.clone().map(|conninfo| PostgresSettings {
                conninfo,
                password_file: file.postgres_password_file.clone(),
                ca_file: file.postgres_ca_file.clone(),
            }),
            node: file.node.clone().unwrap_or_else(host_name),
        }
    }

    /// Relative paths are relative to the working directory; made absolute
    /// once, so that logs and errors name exactly one file.
    fn absolute(self) -> Config {
        let abs = |p: PathBuf| {
            if p.as_os_str().is_empty() {
                p
            } else {
                std::path::absolute(&p).unwrap_or(p)
            }
        };
        let relative_stores = [&self.shares_dir, &self.db, &self.socket]
            .iter()
            .any(|p| p.is_relative());
        Config {
            relative_stores,
            shares_dir: abs(self.shares_dir),
            db: abs(self.db),
            socket: abs(self.socket),
            jwks_file: self.jwks_file.map(abs),
            metrics_file: self.metrics_file.map(abs),
            postgres: self.postgres.map(|p| PostgresSettings {
                password_file: p.password_file.map(abs),
                ca_file: p.ca_file.map(abs),
                ..p
            }),
            ..self
        }
    }

    /// Shape checks, one section at a time; the first problem is the
    /// error, naming the setting.
    fn validate(&self) -> Result<()> {
        self.check_tokens()?;
        self.check_limits()?;
        self.check_schedule()?;
        for p in &self.policies {
            self.check_policy(p)?;
        }
        self.check_paths()?;
        self.check_cluster()
    }

    /// The node name, and the PostgreSQL connection: parseable, no
    /// password in it, and TLS for any host that is not this one.
    fn check_cluster(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        // Without a cluster the node name is not used.
        let Some(pg) = &self.postgres else {
            return Ok(());
        };
        if !valid_node(&self.node) {
            return bad(
                "node",
                format!(
                    "{:?} is not a node name: 1 to 63 letters, digits, '_', '.' or '-' (set \
                     `node` if the host name is not one)",
                    self.node
                ),
            );
        }
        let parsed = parse_conninfo(&pg.conninfo).map_err(|message| Error::Setting {
            key: "postgres",
            message,
        })?;
        if parsed.get_password().is_some() {
            return bad(
                "postgres",
                "holds a password; put it in postgres_password_file (mode 0600) or PGPASSFILE \
                 instead"
                    .into(),
            );
        }
        if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Disable
            && parsed.get_hosts().iter().any(|h| !is_local_host(h))
        {
            return bad(
                "postgres",
                "sslmode=disable for a host that is not this one: the database shares would \
                 cross the network in clear; use TLS (the default)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The issuer and token lifetimes.
    fn check_tokens(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if self.issuer.is_empty() || self.issuer.len() > 256 {
            return bad("issuer", "must be 1 to 256 bytes long".into());
        }
        if self.issuer.chars().any(char::is_control) {
            return bad("issuer", "must not contain control characters".into());
        }
        if self.max_ttl < Duration::from_secs(1) || self.max_ttl > Duration::from_secs(366 * 86400)
        {
            return bad("max_ttl", "must be between 1s and 366d".into());
        }
        if self.default_ttl < Duration::from_secs(1) || self.default_ttl > self.max_ttl {
            return bad(
                "default_ttl",
                format!(
                    "must be between 1s and max_ttl ({})",
                    humantime::format_duration(self.max_ttl)
                ),
            );
        }
        Ok(())
    }

    /// Frames, tokens, connections, timeouts and the audit log's retention.
    fn check_limits(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if !(1024..=16 * 1024 * 1024).contains(&self.max_frame_bytes) {
            return bad(
                "max_frame_bytes",
                "must be between 1024 and 16777216".into(),
            );
        }
        if self.max_token_bytes < 256 || self.max_token_bytes + 256 > self.max_frame_bytes {
            return bad(
                "max_token_bytes",
                "must be at least 256 and leave 256 bytes of a response frame (max_frame_bytes)"
                    .into(),
            );
        }
        if !(2..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections", "must be between 2 and 1000000".into());
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_peer) {
            return bad(
                "max_connections_per_peer",
                "must be between 1 and max_connections".into(),
            );
        }
        if self.admin_connections >= self.max_connections {
            return bad(
                "admin_connections",
                "must be less than max_connections (the rest is for other peers)".into(),
            );
        }
        if self.audit_retention < Duration::from_secs(3600)
            || self.audit_retention > Duration::from_secs(100 * 366 * 86400)
        {
            return bad("audit_retention", "must be between 1h and 100 years".into());
        }
        for (key, d) in [
            ("idle_timeout", self.idle_timeout),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(86400) {
                return bad(key, "must be between 100ms and 1d".into());
            }
        }
        Ok(())
    }

    /// Rotation, leeway, pre-publication and the JWKS cache.
    fn check_schedule(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if self.rotation_interval < Duration::from_secs(1)
            || self.rotation_interval > Duration::from_secs(3650 * 86400)
        {
            return bad("rotation_interval", "must be between 1s and 3650d".into());
        }
        if self.leeway > Duration::from_secs(600) {
            return bad("leeway", "must be at most 10m".into());
        }
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if self.prepublish >= self.rotation_interval {
            return bad(
                "prepublish",
                format!(
                    "must be shorter than rotation_interval ({})",
                    fmt(self.rotation_interval)
                ),
            );
        }
        if self.prepublish < self.jwks_max_age {
            return bad(
                "prepublish",
                format!(
                    "must be at least jwks_max_age ({}): verifiers that cache the JWKS must \
                     learn a key before it signs",
                    fmt(self.jwks_max_age)
                ),
            );
        }
        Ok(())
    }

    /// One `[[policy]]`: whom it matches, its ops, claims, rate and TTL.
    fn check_policy(&self, p: &PolicyFile) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        if p.name.is_empty() {
            return bad("policy.name", "every [[policy]] needs a name".into());
        }
        if p.uids.is_empty() && p.users.is_empty() && p.gids.is_empty() && p.groups.is_empty() {
            return bad(
                "policy",
                format!(
                    "policy {:?} matches nobody: give uids, users, gids or groups",
                    p.name
                ),
            );
        }
        for op in p.ops.iter().flatten() {
            let Some(name) = OpName::parse(op) else {
                return bad(
                    "policy.ops",
                    format!("policy {:?}: unknown op {op:?}", p.name),
                );
            };
            if name.is_admin() && !p.admin {
                return bad(
                    "policy.ops",
                    format!(
                        "policy {:?}: {op:?} is an admin op; it needs admin = true (which \
                         grants every admin op)",
                        p.name
                    ),
                );
            }
        }
        for name in p.forced_claims.keys().chain(p.claims.iter().flatten()) {
            if RESERVED_CLAIMS.contains(&name.as_str()) {
                return bad(
                    "policy",
                    format!("policy {:?}: claim {name:?} is set by the daemon", p.name),
                );
            }
        }
        if p.sign_rate
            .is_some_and(|r| !r.is_finite() || !(0.001..=1_000_000.0).contains(&r))
        {
            return bad(
                "policy.sign_rate",
                format!(
                    "policy {:?}: must be between 0.001 and 1000000 tokens per second",
                    p.name
                ),
            );
        }
        if p.sign_burst.is_some_and(|b| b == 0 || b > 1_000_000) {
            return bad(
                "policy.sign_burst",
                format!("policy {:?}: must be between 1 and 1000000", p.name),
            );
        }
        if p.sign_burst.is_some() && p.sign_rate.is_none() {
            return bad(
                "policy.sign_burst",
                format!("policy {:?}: sign_burst needs sign_rate", p.name),
            );
        }
        if p.max_ttl
            .is_some_and(|t| t < Duration::from_secs(1) || t > self.max_ttl)
        {
            return bad(
                "policy.max_ttl",
                format!("policy {:?}: must be between 1s and max_ttl", p.name),
            );
        }
        Ok(())
    }

    /// Store, socket and JWKS paths.
    fn check_paths(&self) -> Result<()> {
        let bad = |key: &'static str, message: String| Err(Error::Setting { key, message });
        for (key, file) in [
            ("jwks_file", &self.jwks_file),
            ("metrics_file", &self.metrics_file),
        ] {
            if file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return bad(key, "must not be empty".into());
            }
        }
        for (key, p) in [
            ("shares_dir", &self.shares_dir),
            ("db", &self.db),
            ("socket", &self.socket),
        ] {
            if p.as_os_str().is_empty() {
                return bad(key, "must not be empty".into());
            }
        }
        // sockaddr_un.sun_path holds 108 bytes including the NUL.
        if self.socket.as_os_str().len() > 107 {
            return bad(
                "socket",
                "path is longer than 107 bytes (a Unix socket limit)".into(),
            );
        }
        if self.shares_dir == self.db.parent().unwrap_or(Path::new("")) {
            return bad(
                "shares_dir",
                "must differ from the database directory: the two shares must live in two stores"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// The files the daemon writes beside its stores (`jwks_file`,
    /// `metrics_file`) need a directory that exists and that it may
    /// write in: checked by `serve` before it opens the stores (so before
    /// a first key is made), and by a reload. Not part of the shape checks
    /// of [`Config::load`]: every command loads the config, and only the
    /// daemon writes these files.
    pub fn check_output_files(&self) -> Result<()> {
        for (key, file) in [
            ("jwks_file", &self.jwks_file),
            ("metrics_file", &self.metrics_file),
        ] {
            let Some(path) = file else { continue };
            let bad = |message: String| Err(Error::Setting { key, message });
            if path.file_name().is_none() {
                return bad(format!("{} names no file", path.display()));
            }
            let dir = dir_of(path);
            match std::fs::metadata(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return bad(format!(
                        "the directory of {}, {}, does not exist: create it, or set another path",
                        path.display(),
                        dir.display()
                    ));
                }
                Err(e) => {
                    return bad(format!(
                        "the directory of {}, {}: {e}",
                        path.display(),
                        dir.display()
                    ));
                }
                Ok(m) if !m.is_dir() => {
                    return bad(format!(
                        "the directory of {}, {}, is not a directory",
                        path.display(),
                        dir.display()
                    ));
                }
                Ok(_) => {}
            }
            if path.is_dir() {
                return bad(format!("{} is a directory", path.display()));
            }
            // The file is replaced by a rename from a temp file beside it.
            if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
                return bad(format!(
                    "the directory of {}, {}, is not writable by this process: {e}",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// The first setting that differs between `self` (running) and `new`
    /// and that a reload cannot apply: it needs a restart. Every setting is
    /// listed (the destructuring has no `..`), so a new setting must be
    /// classified here before the crate compiles.
    pub fn needs_restart(&self, new: &Config) -> Option<&'static str> {
        let Config {
            origin: _,
            // Applied by a reload: token settings, policies (and their rate
            // limits), the schedule, the JWKS file, connection timeouts and
            // per-peer limits, audit retention and reserve, mlock for keys unsealed from
            // then on.
            issuer: _,
            alg: _,
            default_ttl: _,
            max_ttl: _,
            max_token_bytes: _,
            idle_timeout: _,
            read_timeout: _,
            write_timeout: _,
            max_connections_per_peer: _,
            admin_connections: _,
            audit_retention: _,
            audit_keep_free: _,
            relative_stores: _,
            mlock: _,
            admin_uids: _,
            policies: _,
            rotation_interval: _,
            leeway: _,
            prepublish: _,
            jwks_max_age: _,
            jwks_file: _,
            metrics_file: _,
            // Fixed while running: the stores, the socket, the connection
            // table, the audit writer, and the cluster.
            shares_dir,
            db,
            socket,
            socket_mode,
            max_frame_bytes,
            max_connections,
            audit,
            audit_sync,
            postgres,
            node,
            legacy_layout: _,
        } = self;
        [
            ("shares_dir", *shares_dir != new.shares_dir),
            ("db", *db != new.db),
            ("socket", *socket != new.socket),
            ("socket_mode", *socket_mode != new.socket_mode),
            ("max_frame_bytes", *max_frame_bytes != new.max_frame_bytes),
            ("max_connections", *max_connections != new.max_connections),
            ("audit", *audit != new.audit),
            ("audit_sync", *audit_sync != new.audit_sync),
            ("postgres", *postgres != new.postgres),
            ("node", *node != new.node),
        ]
        .into_iter()
        .find_map(|(key, changed)| changed.then_some(key))
    }
}

/// The store paths and the socket when the config gives none: a config
/// file means a system install; with no file the daemon runs from the
/// current directory. systemd's `StateDirectory=` lists "shares" then "db"
/// (colon-separated).
/// The default store paths and socket. From `STATE_DIRECTORY`, the
/// directories are told apart by name (`…/shares`, `…/db`), never by their
/// order: systemd sorts the list (`StateDirectory=splitsign/shares
/// splitsign/db` arrives as `…/db:…/shares`).
fn default_places(env: &Env, origin: &Origin) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let state_dirs: Vec<PathBuf> = env
        .state_directory
        .as_deref()
        .map(|s| {
            s.split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let named = |name: &str| {
        state_dirs
            .iter()
            .find(|d| d.file_name().is_some_and(|n| n == name))
            .cloned()
    };
    let (def_shares, def_db) = match (state_dirs.as_slice(), &origin) {
        ([_, _, ..], _) => match (named("shares"), named("db")) {
            (Some(shares), Some(db)) => (shares, db.join("splitsign.db")),
            _ => {
                return Err(Error::Usage(format!(
                    "STATE_DIRECTORY lists {}: expected a directory named `shares` and one \
                     named `db` (StateDirectory=splitsign/shares splitsign/db), or set \
                     shares_dir and db in the config",
                    env.state_directory.as_deref().unwrap_or_default()
                )));
            }
        },
        ([one], _) => (one.join("shares"), one.join("db").join("splitsign.db")),
        ([], Origin::File(_)) => (
            PathBuf::from("/var/lib/splitsign/shares"),
            PathBuf::from("/var/lib/splitsign/db/splitsign.db"),
        ),
        ([], Origin::Defaults) => (PathBuf::from("keys"), PathBuf::from("var/splitsign.db")),
    };
    let def_socket = match (env.runtime_directory.as_deref(), &origin) {
        (Some(rt), _) if !rt.is_empty() => {
            PathBuf::from(rt.split(':').next().unwrap_or(rt)).join("sign.sock")
        }
        // A config file, or systemd's StateDirectory=: a system install.
        (_, Origin::File(_)) => PathBuf::from("/run/splitsign/sign.sock"),
        _ if !state_dirs.is_empty() => PathBuf::from("/run/splitsign/sign.sock"),
        (_, Origin::Defaults) => PathBuf::from("var/splitsign.sock"),
    };
    Ok((def_shares, def_db, def_socket))
}

/// splitsign 0.1 took `STATE_DIRECTORY` by position, and systemd sorts it:
/// its database went into `…/shares` and its file shares into `…/db`.
/// Whether that layout is found here (a database in the share directory,
/// none in the database directory).
fn legacy_swapped_layout(shares_dir: &Path, db: &Path) -> bool {
    let (Some(db_dir), Some(name)) = (db.parent(), db.file_name()) else {
        return false;
    };
    shares_dir.join(name).is_file() && !db.exists() && db_dir.is_dir()
}

/// Parse a libpq connection string or URL. `sslmode=verify-full` and
/// `verify-ca` (which the driver does not name) are read as TLS with the
/// certificate checked against the CA and the host name: splitsign always
/// checks both, so `verify-ca` is as strict as `verify-full`.
pub fn parse_conninfo(conninfo: &str) -> std::result::Result<tokio_postgres::Config, String> {
    let mut text = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(at) = rest.find("sslmode") {
        let (before, after) = rest.split_at(at + "sslmode".len());
        text.push_str(before);
        let trimmed = after.trim_start();
        let Some(value) = trimmed.strip_prefix('=') else {
            rest = after;
            continue;
        };
        let value = value.trim_start();
        let end = value
            .find(|c: char| c.is_whitespace() || c == '&')
            .unwrap_or(value.len());
        let mode = &value[..end];
        let mode = match mode {
            "verify-full" | "verify-ca" => "require",
            m => m,
        };
        text.push('=');
        text.push_str(mode);
        rest = &value[end..];
    }
    text.push_str(rest);
    text.parse()
        .map_err(|e| format!("not a connection string or URL: {e}"))
}

/// Whether `host` is this machine: a Unix socket directory, or loopback.
pub fn is_local_host(host: &tokio_postgres::config::Host) -> bool {
    match host {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
    }
}

/// A node name (also its PostgreSQL role's name).
pub fn valid_node(node: &str) -> bool {
    (1..=63).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The host name: the default node name.
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn read_file(path: &Path) -> Result<FileConfig> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| Error::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::Config {
            path: path.to_owned(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Parse an octal file mode such as `"0660"`. Bits for "other" users are
/// refused: they would let every local account ask for tokens.
fn parse_mode(s: &str) -> Result<u32> {
    let bad = |message: String| Error::Setting {
        key: "socket_mode",
        message,
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| bad(format!("{s:?} is not an octal mode such as \"0660\"")))?;
    if mode > 0o777 {
        return Err(bad(format!("{s:?} is larger than 0777")));
    }
    if mode & 0o007 != 0 {
        return Err(bad(format!(
            "{s:?} grants access to other users; use a group (0660)"
        )));
    }
    if mode & 0o600 != 0o600 {
        return Err(bad(format!(
            "{s:?} must let the owner read and write (0600)"
        )));
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config> {
        let file: FileConfig = toml::from_str(text).map_err(|e| Error::Config {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        Config::build(
            file,
            Origin::File("t.toml".into()),
            &Overrides::default(),
            &Env::default(),
        )
    }

    #[test]
    fn cluster_settings_are_checked() {
        let bad = |text: &str, key: &str, says: &str| match from_toml(text) {
            Err(Error::Setting { key: k, message }) => {
                assert_eq!(k, key, "{text}: {message}");
                assert!(message.contains(says), "{text}: {message}");
            }
            other => panic!("{text}: expected a refusal, got {other:?}"),
        };
        bad(
            "postgres = \"host=db.internal dbname=s user=u password=hunter2\"",
            "postgres",
            "password",
        );
        bad(
            "postgres = \"postgresql://u:hunter2@db.internal/s\"",
            "postgres",
            "password",
        );
        bad(
            "postgres = \"host=db.internal dbname=s user=u sslmode=disable\"",
            "postgres",
            "in clear",
        );
        bad(
            "postgres = \"host=db.internal port=x\"",
            "postgres",
            "connection string",
        );
        let pg = "postgres = \"host=/run/postgresql dbname=s user=u\"\n";
        bad(&format!("{pg}node = \"web 1\""), "node", "node name");
        bad(&format!("{pg}node = \"\""), "node", "node name");
        // This host (a Unix socket, loopback) may go without TLS.
        for ok in [
            "postgres = \"host=/run/postgresql dbname=s user=u sslmode=disable\"",
            "postgres = \"host=localhost dbname=s user=u sslmode=disable\"",
            "postgres = \"host=db.internal dbname=s user=u sslmode=verify-full\"\nnode = \"web-1.a_b\"",
            "postgres = \"host=db.internal dbname=s user=u sslmode = verify-ca\"",
            "postgres = \"postgresql://u@db.internal/s?sslmode=verify-full&application_name=x\"",
        ] {
            let c = from_toml(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(c.postgres.is_some());
        }
        let c = from_toml("node = \"not checked without postgres\"").unwrap();
        assert!(c.postgres.is_none());
    }

    #[test]
    fn zero_config_uses_the_current_directory() {
        let c = Config::build(
            FileConfig::default(),
            Origin::Defaults,
            &Overrides::default(),
            &Env::default(),
        )
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(c.shares_dir, cwd.join("keys"));
        assert_eq!(c.db, cwd.join("var/splitsign.db"));
        assert_eq!(c.socket, cwd.join("var/splitsign.sock"));
        assert_eq!(c.default_ttl, Duration::from_secs(900));
        assert_eq!(c.socket_mode, 0o660);
    }

    #[test]
    fn state_directories_are_told_apart_by_name_not_order() {
        // systemd sorts StateDirectory=: both orders must map the same way.
        for list in [
            "/var/lib/splitsign/shares:/var/lib/splitsign/db",
            "/var/lib/splitsign/db:/var/lib/splitsign/shares",
        ] {
            let env = Env {
                state_directory: Some(list.into()),
                runtime_directory: None,
            };
            let c = Config::build(
                FileConfig::default(),
                Origin::Defaults,
                &Overrides::default(),
                &env,
            )
            .unwrap();
            assert_eq!(
                c.shares_dir,
                PathBuf::from("/var/lib/splitsign/shares"),
                "{list}"
            );
            assert_eq!(
                c.db,
                PathBuf::from("/var/lib/splitsign/db/splitsign.db"),
                "{list}"
            );
            assert!(!c.legacy_layout);
        }
        let env = Env {
            state_directory: Some("/x/a:/x/b".into()),
            runtime_directory: None,
        };
        let e = Config::build(
            FileConfig::default(),
            Origin::Defaults,
            &Overrides::default(),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("named `shares`"), "{e}");
    }

    #[test]
    fn durations_and_values_parse() {
        let c = from_toml("issuer = \"https://a.example\"\ndefault_ttl = \"5m\"\nmax_ttl = \"2h\"\nalg = \"Ed25519\"\nsocket_mode = \"0600\"").unwrap();
        assert_eq!(c.default_ttl, Duration::from_secs(300));
        assert_eq!(c.max_ttl, Duration::from_secs(7200));
        assert_eq!(c.alg, AlgLabel::Ed25519);
        assert_eq!(c.socket_mode, 0o600);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_key() {
        let e = from_toml("isuer = \"x\"").unwrap_err().to_string();
        assert!(e.contains("isuer"), "{e}");
        let e = from_toml("default_ttl = \"2h\"").unwrap_err().to_string();
        assert!(e.contains("default_ttl"), "{e}");
        let e = from_toml("max_ttl = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("max_ttl"), "{e}");
        let e = from_toml("socket_mode = \"0666\"").unwrap_err().to_string();
        assert!(e.contains("socket_mode") && e.contains("other"), "{e}");
        let e = from_toml("alg = \"HS256\"").unwrap_err().to_string();
        assert!(e.contains("alg"), "{e}");
        let e = from_toml("shares_dir = \"/d\"\ndb = \"/d/x.db\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shares_dir"), "{e}");
    }

    #[test]
    fn the_audit_reserve_is_a_size_or_a_share() {
        let gib = 1u64 << 30;
        // The default: 5%, at most 1 GiB.
        let d = from_toml("").unwrap().audit_keep_free;
        assert_eq!(d.bytes(100 << 20), 5 << 20);
        assert_eq!(d.bytes(100 * gib), gib);
        for (text, total, want) in [
            ("audit_keep_free = \"256MiB\"", 0, 256 << 20),
            ("audit_keep_free = \"1G\"", 0, gib),
            ("audit_keep_free = \"512K\"", 0, 512 << 10),
            ("audit_keep_free = 4096", 0, 4096),
            ("audit_keep_free = \"0\"", 1 << 40, 0),
            ("audit_keep_free = \"10%\"", 100 * gib, 10 * gib),
            ("audit_keep_free = \"2.5%\"", 1000, 25),
        ] {
            assert_eq!(
                from_toml(text).unwrap().audit_keep_free.bytes(total),
                want,
                "{text}"
            );
        }
        for bad in [
            "\"5 %%\"",
            "\"60%\"",
            "\"-1%\"",
            "\"12 parsecs\"",
            "\"MiB\"",
            "\"99999999T\"",
            "\"99999T\"",
            "18446744073709551615",
            "-5",
            "5.0",
        ] {
            let e = from_toml(&format!("audit_keep_free = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("audit_keep_free"), "{bad}: {e}");
            assert!(!e.contains("enum") && !e.contains("Raw"), "{bad}: {e}");
        }
    }
}
