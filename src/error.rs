//! `error` names every step that can fail and maps failures to exit codes.
//!
//! Messages name a path, a kid or a config key, never secret bytes or the
//! content of a request. The protocol has its own, stable error codes
//! (`protocol::Code`); this type is for the daemon's and the CLI's own steps.

use std::io;
use std::path::PathBuf;

/// Exit codes of the `splitsign` binary (documented in the README).
pub mod exit {
    /// Runtime failure: I/O, the database, the socket.
    pub const FAILURE: u8 = 1;
    /// Bad command line or bad configuration.
    pub const USAGE: u8 = 2;
    /// `verify`: the token is not valid (bad signature, expired, unknown key…).
    pub const INVALID_TOKEN: u8 = 3;
    /// The daemon could not be reached.
    pub const UNAVAILABLE: u8 = 69;
    /// A key store is unusable: a share is missing, corrupt, unsafe or does
    /// not rebuild the stored public key. Restarting cannot fix it, so the
    /// systemd unit lists it in `RestartPreventExitStatus=`.
    pub const KEY_STORE: u8 = 65;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config file {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Setting { key: &'static str, message: String },

    #[error("file share {path}: {reason}")]
    FileShare { path: PathBuf, reason: String },
    #[error("share directory {path}: {reason}")]
    ShareDir { path: PathBuf, reason: String },
    #[error("writing file share {path}")]
    WriteShare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("database share of key {kid} in {db}: {reason}")]
    DbShare {
        kid: String,
        db: String,
        reason: String,
    },
    #[error("key row {kid} in {db}: {reason}")]
    KeyRow {
        kid: String,
        db: String,
        reason: String,
    },
    #[error(
        "shares of key {kid} do not rebuild its public key (file share {file}, database {db}); \
         one of the two stores was altered or mixed with another deployment's"
    )]
    SharesMismatch {
        kid: String,
        file: PathBuf,
        db: String,
    },
    #[error("key store: {0}")]
    KeyStore(String),
    /// The share directory and the database do not belong together (an old
    /// backup, a wrong path, another deployment's file). Nothing is deleted
    /// or changed when this is found.
    #[error(
        "share directory {shares} and database {db} do not belong together: {}. Nothing was \
         deleted or changed",
        problems.join("; ")
    )]
    StoresDisagree {
        db: String,
        shares: PathBuf,
        problems: Vec<String>,
    },

    #[error("database {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// A statement or connection failed. `reason` is the server's message
    /// without its DETAIL, which may quote a row's values (a share's bytes).
    #[error("PostgreSQL ({node}): {what}: {reason}")]
    Postgres {
        node: String,
        what: &'static str,
        reason: String,
        /// The SQLSTATE, when the server answered with an error.
        code: Option<String>,
    },
    /// PostgreSQL refuses this node its login or its rights: the owner
    /// removed it from the cluster, or never added it. Restarting cannot
    /// fix it.
    #[error("PostgreSQL refuses node {node}: {reason}")]
    NodeRefused { node: String, reason: String },
    /// PostgreSQL is not reachable (yet): the node keeps trying.
    #[error("PostgreSQL ({node}) is unreachable: {reason}")]
    PostgresUnreachable { node: String, reason: String },
    #[error("database {path}: migrating the schema")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("generating randomness: {0}")]
    Random(String),
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ReadConfig { .. }
            | Error::Config { .. }
            | Error::Setting { .. }
            | Error::Usage(_) => exit::USAGE,
            Error::FileShare { .. }
            | Error::ShareDir { .. }
            | Error::DbShare { .. }
            | Error::KeyRow { .. }
            | Error::SharesMismatch { .. }
            | Error::StoresDisagree { .. }
            | Error::KeyStore(_)
            | Error::NodeRefused { .. } => exit::KEY_STORE,
            Error::WriteShare { .. }
            | Error::Database { .. }
            | Error::Postgres { .. }
            | Error::Migrate { .. }
            | Error::Io { .. }
            | Error::Random(_) => exit::FAILURE,
            Error::PostgresUnreachable { .. } => exit::UNAVAILABLE,
        }
    }

    /// Whether PostgreSQL refused this node its login or a right (see
    /// [`is_refusal_code`]).
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::NodeRefused { .. } => true,
            Error::Postgres { code: Some(c), .. } => is_refusal_code(c),
            _ => false,
        }
    }

    /// A database error at `path`, for `map_err` (usable many times).
    pub fn database(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> Error + Copy + '_ {
        move |source| Error::Database {
            path: path.to_owned(),
            source,
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a PostgreSQL SQLSTATE refuses this node its login or a right:
/// 28000 (the role may not log in, or pg_hba rejects it) or 42501 (no
/// right, or a row-level security policy refused the row).
pub fn is_refusal_code(sqlstate: &str) -> bool {
    sqlstate == "28000" || sqlstate == "42501"
}

/// An error with all its causes, as one line: "writing file share X: No
/// space left on device (os error 28)". The OS's reason is often the only
/// useful part.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    message
}
