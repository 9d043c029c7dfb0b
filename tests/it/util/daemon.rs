//! The daemon of a test: `Daemon::start(&dir)` runs `serve` in a
//! deployment (the start-up, the wait for ready and the clean stop are the
//! testkit's), and `Started`, any other child a test starts, killed when
//! dropped.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use splitsign_testkit::daemon::Exited;

use super::Dir;

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

/// The exit status of `child`, which must exit within `t` (killed if not).
pub fn wait_exit(child: &mut Child, t: Duration) -> std::process::ExitStatus {
    splitsign_testkit::daemon::wait_timeout(child, t).expect("the daemon did not exit")
}
