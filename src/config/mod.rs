//! `config` turns a TOML file, the environment and command-line flags into
//! one validated [`Config`], in sections (paths, outputs, tokens, limits,
//! audit, schedule, clients, cluster): each consumer takes the section it
//! needs. Nothing else reads raw settings. The parts: `file` (the TOML
//! file as written, read bounded), `values` (the setting types: `alg`,
//! sizes, `[[policy]]`, PostgreSQL), `places` (the default store paths and
//! socket, and path helpers), `check` (the shape checks, and the output
//! files' directories), `restart` (what a reload cannot apply),
//! `conninfo` (libpq connection strings: config refuses a bad one when it
//! loads, and the PostgreSQL store connects with it).
//!
//! Precedence: built-in defaults < TOML file < environment
//! (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`) < flags. The file is
//! `--config PATH` or, when it exists, `/etc/splitsign/config.toml`. With no
//! file and no systemd environment, the daemon runs from the current
//! directory: shares in `./keys`, database and socket in `./var`.

mod check;
mod conninfo;
mod file;
mod places;
mod restart;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

pub use conninfo::{is_local_host, parse_conninfo};
pub use places::{dir_of, valid_node, with_suffix};
pub use values::{
    AlgLabel, AuditSync, KeepFree, MlockMode, PolicyFile, PostgresSettings, ShareSeal, human_bytes,
};

use file::{FileConfig, parse_mode, read_file};
use places::{default_places, host_name, legacy_swapped_layout};

pub const SYSTEM_CONFIG: &str = "/etc/splitsign/config.toml";

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
pub enum Source {
    File(PathBuf),
    /// No file: zero-config local run, or systemd directories.
    Defaults,
}

/// The validated configuration, in sections: each consumer takes the
/// section it needs, and [`Config::needs_restart`] compares the sections
/// a reload cannot apply.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the settings came from.
    pub source: Source,
    pub paths: Paths,
    pub outputs: Outputs,
    pub tokens: Tokens,
    pub limits: Limits,
    pub audit: Audit,
    pub schedule: Schedule,
    pub clients: Clients,
    pub cluster: Cluster,
    pub mlock: MlockMode,
    pub sealing: Sealing,
}

/// How file shares are sealed (fixed while running: the share directory
/// is opened with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealing {
    /// How new file shares are written (`share_seal`). Sealed files are
    /// read whatever it says, as long as the TPM is there.
    pub seal: ShareSeal,
    /// Where the TPM is, as a TSS2 TCTI string (`tpm_tcti`):
    /// `device:/dev/tpmrm0` (the kernel's resource manager) by default.
    pub tcti: String,
}

/// The TPM of a host: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The stores and the socket (fixed while running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub shares_dir: PathBuf,
    pub db: PathBuf,
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// The stores or the socket were given as relative paths (taken from
    /// the working directory; they are absolute here).
    pub relative_stores: bool,
    /// The stores are where splitsign 0.1 put them under systemd (swapped:
    /// the database in `…/shares`, the file shares in `…/db`), and are used
    /// there.
    pub legacy_layout: bool,
}

/// Files the daemon writes for others to read (applied by a reload).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outputs {
    /// Where to write the JWKS for a web server to serve, if anywhere.
    pub jwks_file: Option<PathBuf>,
    /// Where to write the metrics (Prometheus text) every 15 s, for
    /// node_exporter's textfile collector, if anywhere.
    pub metrics_file: Option<PathBuf>,
}

/// What tokens carry and how long they live (applied by a reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub issuer: String,
    pub alg: AlgLabel,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_token_bytes: usize,
    /// Clock skew allowed when verifying `exp`, `nbf` and `iat`; keys also
    /// stay published this long past their last token's expiry.
    pub leeway: Duration,
}

/// What bounds the accept loop and each connection. `max_frame_bytes` and
/// `max_connections` are fixed while running; the rest follow a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
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
}

/// The audit log. `enabled` and `sync` are fixed while running; retention
/// and the reserve follow a reload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// Keep the audit log (`audit`, default on; off only to measure its
    /// cost).
    pub enabled: bool,
    /// `full` (default): each audit batch is fsync'ed before its replies;
    /// `normal`: it is in the OS (survives a daemon crash, not power loss).
    pub sync: AuditSync,
    /// Audit records older than this are pruned in the background (an
    /// anchor keeps the rest of the chain verifiable).
    pub retention: Duration,
    /// Free space kept on the audit log's filesystem for the admins.
    pub keep_free: KeepFree,
}

/// When keys are created, published and activated (applied by a reload;
/// stored key timestamps never change with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub rotation_interval: Duration,
    /// How long before its activation the next key is created and published.
    pub prepublish: Duration,
    /// The longest time verifiers cache the JWKS (the Cache-Control max-age
    /// the operator serves it with). The prepublish lead must cover it.
    pub jwks_max_age: Duration,
}

/// Who may do what (applied by a reload).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Clients {
    /// Peers with these uids may use admin ops. Default: root and the
    /// daemon's own uid.
    pub admin_uids: Option<Vec<u32>>,
    /// Per-client policies, first match wins. Empty: every peer that can
    /// connect may use the non-admin ops under the global limits.
    pub policies: Vec<PolicyFile>,
}

/// The cluster (fixed while running).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// With it, key rows, database shares and revocations live in
    /// PostgreSQL, shared by the nodes of a cluster; the local SQLite `db`
    /// keeps the audit log.
    pub postgres: Option<PostgresSettings>,
    /// This daemon's name among the nodes of a cluster (default: the host
    /// name). It creates and rotates only its own keys.
    pub node: String,
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
        let (file, source) = match path {
            Some(path) => (read_file(&path)?, Source::File(path)),
            None => (FileConfig::default(), Source::Defaults),
        };
        Config::build(file, source, overrides, env)
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
            Source::File("<inline>".into()),
            &Overrides::default(),
            &Env::default(),
        )
    }

    fn build(file: FileConfig, source: Source, ov: &Overrides, env: &Env) -> Result<Config> {
        let (def_shares, def_db, def_socket) = default_places(env, &source)?;
        let from_state = file.shares_dir.is_none()
            && file.db.is_none()
            && ov.shares_dir.is_none()
            && ov.db.is_none()
            && env.state_directory.is_some();
        let socket_mode = match &file.socket_mode {
            None => 0o660,
            Some(s) => parse_mode(s)?,
        };
        let paths = Paths {
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
            relative_stores: false,
            legacy_layout: false,
        };
        let mut cfg = Config::settings(&file, source, paths).absolute();
        if from_state && legacy_swapped_layout(&cfg.paths.shares_dir, &cfg.paths.db) {
            // Keep working where 0.1 put the stores (said in the log).
            let p = &mut cfg.paths;
            let db_name = p.db.file_name().map(PathBuf::from).unwrap_or_default();
            let db_dir = p.db.parent().map(Path::to_path_buf).unwrap_or_default();
            p.db = p.shares_dir.join(db_name);
            p.shares_dir = db_dir;
            p.legacy_layout = true;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every setting but the places, from the file or the defaults.
    fn settings(file: &FileConfig, source: Source, paths: Paths) -> Config {
        let conns = file.max_connections.unwrap_or(1024);
        Config {
            source,
            paths,
            outputs: Outputs {
                jwks_file: file.jwks_file.clone(),
                metrics_file: file.metrics_file.clone(),
            },
            tokens: Tokens {
                issuer: file
                    .issuer
                    .clone()
                    .unwrap_or_else(|| "splitsign".to_owned()),
                alg: file.alg.unwrap_or(AlgLabel::EdDSA),
                default_ttl: file.default_ttl.unwrap_or(Duration::from_secs(15 * 60)),
                max_ttl: file.max_ttl.unwrap_or(Duration::from_secs(60 * 60)),
                max_token_bytes: file.max_token_bytes.unwrap_or(8 * 1024),
                leeway: file.leeway.unwrap_or(Duration::from_secs(60)),
            },
            limits: Limits {
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
            },
            audit: Audit {
                enabled: file.audit.unwrap_or(true),
                sync: file.audit_sync.unwrap_or(AuditSync::Full),
                retention: file
                    .audit_retention
                    .unwrap_or(Duration::from_secs(90 * 86400)),
                keep_free: file.audit_keep_free.unwrap_or_default(),
            },
            schedule: Schedule {
                rotation_interval: file
                    .rotation_interval
                    .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
                prepublish: file.prepublish.unwrap_or(Duration::from_secs(3600)),
                jwks_max_age: file.jwks_max_age.unwrap_or(Duration::from_secs(900)),
            },
            clients: Clients {
                admin_uids: file.admin_uids.clone(),
                policies: file.policy.clone(),
            },
            cluster: Cluster {
                postgres: file.postgres.clone().map(|conninfo| PostgresSettings {
                    conninfo,
                    password_file: file.postgres_password_file.clone(),
                    ca_file: file.postgres_ca_file.clone(),
                }),
                node: file.node.clone().unwrap_or_else(host_name),
            },
            mlock: file.mlock.unwrap_or(MlockMode::Warn),
            sealing: Sealing {
                seal: file.share_seal.unwrap_or(ShareSeal::None),
                tcti: file
                    .tpm_tcti
                    .clone()
                    .unwrap_or_else(|| DEFAULT_TCTI.to_owned()),
            },
        }
    }

    /// Relative paths are relative to the working directory; made absolute
    /// once, so that logs and errors name exactly one file.
    fn absolute(mut self) -> Config {
        fn abs(p: &mut PathBuf) {
            if !p.as_os_str().is_empty()
                && let Ok(a) = std::path::absolute(&*p)
            {
                *p = a;
            }
        }
        let p = &mut self.paths;
        p.relative_stores = [&p.shares_dir, &p.db, &p.socket]
            .iter()
            .any(|p| p.is_relative());
        for path in [&mut p.shares_dir, &mut p.db, &mut p.socket] {
            abs(path);
        }
        let o = &mut self.outputs;
        for path in [&mut o.jwks_file, &mut o.metrics_file]
            .into_iter()
            .flatten()
        {
            abs(path);
        }
        if let Some(pg) = &mut self.cluster.postgres {
            for path in [&mut pg.password_file, &mut pg.ca_file]
                .into_iter()
                .flatten()
            {
                abs(path);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests;
