//! A fake systemd: what systemd gives the daemon (a listening socket
//! passed as fd 3, LISTEN_FDS, a notify socket) and what it reads back
//! (READY=1, STOPPING=1, the watchdog).

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BIN, Dir, Started};

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
