//! `places`: where the stores and the socket go when the config names
//! none, the node name's shape, and two path helpers every store uses.

use std::path::{Path, PathBuf};

use super::{Env, Source};
use crate::error::{Error, Result};

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

/// The store paths and the socket when the config gives none: a config
/// file means a system install; with no file the daemon runs from the
/// current directory. From `STATE_DIRECTORY` (colon-separated), the
/// directories are told apart by name (`…/shares`, `…/db`), never by their
/// order: systemd sorts the list (`StateDirectory=splitsign/shares
/// splitsign/db` arrives as `…/db:…/shares`).
pub(super) fn default_places(env: &Env, source: &Source) -> Result<(PathBuf, PathBuf, PathBuf)> {
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
    let (def_shares, def_db) = match (state_dirs.as_slice(), source) {
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
        ([], Source::File(_)) => (
            PathBuf::from("/var/lib/splitsign/shares"),
            PathBuf::from("/var/lib/splitsign/db/splitsign.db"),
        ),
        ([], Source::Defaults) => (PathBuf::from("keys"), PathBuf::from("var/splitsign.db")),
    };
    let def_socket = match (env.runtime_directory.as_deref(), source) {
        (Some(rt), _) if !rt.is_empty() => {
            PathBuf::from(rt.split(':').next().unwrap_or(rt)).join("sign.sock")
        }
        // A config file, or systemd's StateDirectory=: a system install.
        (_, Source::File(_)) => PathBuf::from("/run/splitsign/sign.sock"),
        _ if !state_dirs.is_empty() => PathBuf::from("/run/splitsign/sign.sock"),
        (_, Source::Defaults) => PathBuf::from("var/splitsign.sock"),
    };
    Ok((def_shares, def_db, def_socket))
}

/// splitsign 0.1 took `STATE_DIRECTORY` by position, and systemd sorts it:
/// its database went into `…/shares` and its file shares into `…/db`.
/// Whether that layout is found here (a database in the share directory,
/// none in the database directory).
pub(super) fn legacy_swapped_layout(shares_dir: &Path, db: &Path) -> bool {
    let (Some(db_dir), Some(name)) = (db.parent(), db.file_name()) else {
        return false;
    };
    shares_dir.join(name).is_file() && !db.exists() && db_dir.is_dir()
}

/// A node name (also its PostgreSQL role's name).
pub fn valid_node(node: &str) -> bool {
    (1..=63).contains(&node.len())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The host name: the default node name.
pub(super) fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
