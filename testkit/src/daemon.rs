//! A running `splitsign serve`. The caller builds the command (the binary,
//! its directory, environment and global options); [`Daemon::spawn`] adds
//! `serve`, waits until this process logged "ready" and answers ping, and
//! the daemon is stopped with SIGTERM and must exit 0. [`Served`] is a
//! daemon on a temp dir of its own, the benches' deployment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::wire::Conn;

/// A running daemon. Dropping it sends SIGTERM and checks a clean exit.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    stderr: PathBuf,
}

/// A daemon that exited instead of becoming ready.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Daemon {
    /// Run `cmd serve`, its stderr into the file `stderr`, and wait (up to
    /// `within`, looking `every` so often) until it is ready on `socket`.
    pub fn spawn(
        mut cmd: Command,
        socket: PathBuf,
        stderr: PathBuf,
        within: Duration,
        every: Duration,
    ) -> Result<Daemon, Exited> {
        let child = cmd
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn splitsign serve");
        let mut d = Daemon {
            child: Some(child),
            socket,
            stderr,
        };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                let stderr = d.log();
                d.child = None;
                return Err(Exited { status, stderr });
            }
            // Ready means this process logged "ready" (another daemon may
            // answer on the same socket path) and then answers ping.
            if d.log().contains(" ready ")
                && let Ok(mut c) = Conn::open(&d.socket)
                && c.request(json!({"op":"ping"}))["ok"] == true
            {
                return Ok(d);
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready in {}s:\n{}",
                within.as_secs(),
                d.log()
            );
            std::thread::sleep(every);
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::open(&self.socket).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send `sig` to the daemon.
    pub fn signal(&self, sig: rustix::process::Signal) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    /// SIGHUP, then wait (10 s at most) until the log has one more line
    /// with `expect` ("reloaded the config", "reload refused").
    pub fn hup_and_wait(&self, expect: &str) {
        let n = self.log().matches(expect).count();
        self.signal(rustix::process::Signal::HUP);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(expect).count() == n {
            assert!(Instant::now() < deadline, "no {expect:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, wait, and require exit 0.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.log()
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let status = wait_timeout(&mut child, Duration::from_secs(20));
            if !std::thread::panicking() {
                assert!(
                    status.is_some_and(|s| s.success()),
                    "daemon did not exit cleanly on SIGTERM: {status:?}\n{}",
                    self.log()
                );
            }
        }
    }

    /// kill -9, as a crash would.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Wait up to `t` for `child` to exit; past it, kill and reap it, and
/// return `None`.
pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `sig` to `child` (by its handle: this child and no other).
pub fn signal(child: &Child, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), sig).unwrap();
}

/// A daemon serving from a temp dir it holds: `config.toml` there names
/// the stores (`keys/`, `var/splitsign.db`) and the socket (`var/s.sock`);
/// its log is the file `log`. [`Served::stop`] hands the dir back, for the
/// next start on the same stores.
pub struct Served {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Served {
    /// Start `bin` (this build or another `splitsign`) in `dir`, with the
    /// store paths and `extra` settings, and wait (30 s at most) until it
    /// is ready.
    pub fn start(bin: &str, dir: tempfile::TempDir, extra: &str) -> Served {
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/s.sock\"\n{extra}"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["--config", "config.toml"])
            .current_dir(dir.path());
        let daemon = Daemon::spawn(
            cmd,
            dir.path().join("var/s.sock"),
            dir.path().join("log"),
            Duration::from_secs(30),
            Duration::from_millis(5),
        )
        .unwrap_or_else(|e| panic!("daemon did not start: {e:?}"));
        Served { daemon, dir }
    }

    pub fn sock(&self) -> &Path {
        &self.daemon.socket
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// SIGTERM, wait for a clean exit; the dir, for another start.
    pub fn stop(self) -> tempfile::TempDir {
        self.daemon.stop();
        self.dir
    }
}
