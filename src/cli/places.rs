//! `places`: where the CLI looked, for the errors that find nothing there
//! (no daemon at the socket, no stores at their paths): the config file
//! or that none was found, each path and what chose it, and how to point
//! the CLI elsewhere. `splitsign init` is suggested only for a place that
//! was chosen (a config file, `--db`/`--shares-dir`, systemd's
//! `STATE_DIRECTORY`) and is empty, with no daemon answering at its
//! socket: a new deployment. With no config found, the CLI cannot know
//! that there is no deployment elsewhere, so it says where it looked
//! instead (an `init` there would make a second, unrelated key store).

use std::path::Path;

use super::output::CommandError;
use crate::client::ClientError;
use crate::config::{Config, SYSTEM_CONFIG, Source};
use crate::error::exit;

/// What chose the places besides the config file: flags, and the
/// environment the CLI reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Given {
    /// `--socket` or `SPLITSIGN_SOCKET`.
    pub socket: bool,
    pub db: bool,
    pub shares_dir: bool,
    /// systemd's `STATE_DIRECTORY` (the stores) or `RUNTIME_DIRECTORY`
    /// (the socket).
    pub state_directory: bool,
    pub runtime_directory: bool,
}

/// The daemon could not be reached: the client's error and, when no
/// daemon listens at all, where the CLI looked.
#[derive(Debug)]
pub struct Unreached {
    pub error: ClientError,
    looked: String,
}

impl Unreached {
    pub fn new(error: ClientError, cfg: &Config, given: Given) -> Unreached {
        let looked = if error.no_daemon() {
            no_daemon(cfg, given)
        } else {
            String::new()
        };
        Unreached { error, looked }
    }

    /// No daemon listens at the socket (see [`ClientError::no_daemon`]).
    pub fn no_daemon(&self) -> bool {
        self.error.no_daemon()
    }
}

impl From<Unreached> for CommandError {
    fn from(u: Unreached) -> CommandError {
        let mut f = CommandError::from(u.error);
        if !u.looked.is_empty() {
            f.message = format!("{}; {}", f.message, u.looked);
        }
        f
    }
}

/// Where the config came from.
fn config_clause(cfg: &Config) -> String {
    match &cfg.source {
        Source::File(p) => format!("config file {}", p.display()),
        Source::Defaults => {
            format!("no config file was found (no --config, and {SYSTEM_CONFIG} does not exist)")
        }
    }
}

/// The socket and what chose it.
fn socket_clause(cfg: &Config, given: Given) -> String {
    let from = if given.socket {
        "given by --socket or SPLITSIGN_SOCKET"
    } else if given.runtime_directory {
        "in RUNTIME_DIRECTORY"
    } else {
        match cfg.source {
            Source::File(_) => "the config file's",
            Source::Defaults if given.state_directory => "the systemd default",
            Source::Defaults => "the zero-config socket, under the current directory",
        }
    };
    format!("socket {} ({from})", cfg.paths.socket.display())
}

/// How to point the CLI at a daemon elsewhere.
const POINT_AT_DAEMON: &str = "point splitsign at the daemon with --socket PATH (or \
     SPLITSIGN_SOCKET=PATH), or at its config file with --config FILE";

/// What to add to "cannot connect to the daemon".
fn no_daemon(cfg: &Config, given: Given) -> String {
    let socket = socket_clause(cfg, given);
    match cfg.source {
        Source::Defaults if !given.socket => format!(
            "{}, so splitsign looked for the daemon at the {socket}. Run splitsign from the \
             directory the daemon runs in, or {POINT_AT_DAEMON}",
            config_clause(cfg)
        ),
        _ => format!(
            "{}; looked for the daemon at the {socket}. Is the daemon running? Or \
             {POINT_AT_DAEMON}",
            config_clause(cfg)
        ),
    }
}

/// Whether these places hold no store at all: no database file, and no
/// share file in the share directory (a missing directory, or one with
/// only a README, is empty). Stores half there are damage, not a wrong
/// place: the store code names what is missing then.
pub fn no_stores(cfg: &Config) -> bool {
    !cfg.paths.db.exists() && !crate::store::share_dir::holds_share_files(&cfg.paths.shares_dir)
}

/// The failure of an offline command that finds no store where it
/// looked (see [`no_stores`]), or `None` when there is something there.
pub fn nothing_here(cfg: &Config, given: Given) -> Option<CommandError> {
    if !no_stores(cfg) {
        return None;
    }
    let shares = if cfg.paths.shares_dir.exists() {
        "holds no share file"
    } else {
        "does not exist"
    };
    let mut m = format!(
        "no key stores here: database {} does not exist, share directory {} {shares}; {}",
        cfg.paths.db.display(),
        cfg.paths.shares_dir.display(),
        config_clause(cfg)
    );
    let chosen = matches!(cfg.source, Source::File(_))
        || given.db
        || given.shares_dir
        || given.state_directory;
    if daemon_answers(&cfg.paths.socket) {
        // A daemon runs with other stores: never start a second deployment.
        m.push_str(&format!(
            ". A daemon answers at {}: give this command the same --config (or --db and \
             --shares-dir) it runs with",
            cfg.paths.socket.display()
        ));
    } else if let Some(elsewhere) = relative_elsewhere(cfg) {
        // The config's relative paths name other places from its own
        // directory: the deployment may well be there.
        m.push_str(&format!(
            ". The config's paths are relative: they are taken from the current directory ({}), \
             not the config file's ({}); run splitsign from there, or give the config absolute \
             paths",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into()),
            elsewhere.display()
        ));
    } else if chosen {
        m.push_str(&format!(
            ", and no daemon answers at the {}. If this is a new deployment, `splitsign init` \
             creates the first key there (the daemon does too, at its first start); else point \
             splitsign at the deployment with --config FILE, or --db FILE and --shares-dir DIR",
            socket_clause(cfg, given)
        ));
    } else {
        m.push_str(&format!(
            ", so these are the zero-config places under the current directory, and no daemon \
             answers at the {}. Run splitsign from the directory the daemon runs in, or point \
             it at the deployment with --config FILE, or --db FILE and --shares-dir DIR (and \
             --socket PATH or SPLITSIGN_SOCKET for its daemon)",
            socket_clause(cfg, given)
        ));
    }
    Some(CommandError {
        code: exit::KEY_STORE,
        message: m,
    })
}

/// The config file's directory, when the config names a store or the
/// socket by a relative path and the current directory is another one.
fn relative_elsewhere(cfg: &Config) -> Option<std::path::PathBuf> {
    let Source::File(file) = &cfg.source else {
        return None;
    };
    let relative = cfg.paths.relative_stores;
    let dir = std::fs::canonicalize(file).ok()?.parent()?.to_owned();
    let cwd = std::env::current_dir().ok()?.canonicalize().ok()?;
    (relative && dir != cwd).then_some(dir)
}

/// Whether something accepts connections at `socket` (a daemon, or a
/// socket unit that starts one).
fn daemon_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}
