//! Uids and limits: root or not, a peer of another uid (`nobody`) and the
//! deployment it can reach, the descriptor limit.

use std::os::unix::fs::PermissionsExt;

use super::{Daemon, Dir};

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
