//! Test harness: a fresh temp dir per test, the real `splitsign` binary,
//! and a raw wire-protocol connection. Tests speak bytes, as any client.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

/// A temp directory that is the working directory of a zero-config daemon:
/// shares in `keys/`, database and socket in `var/`.
pub struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("splitsign-test")
                .tempdir()
                .expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn keys(&self) -> PathBuf {
        self.path().join("keys")
    }
    pub fn db(&self) -> PathBuf {
        self.path().join("var/splitsign.db")
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("var/splitsign.sock")
    }
    /// A `splitsign` command run in this dir, with no systemd environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.path())
            .env_remove("STATE_DIRECTORY")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("LISTEN_FDS")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        c
    }
    /// Run a command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run splitsign")
    }
    /// Write `config.toml` and return its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
    /// The file share paths present now.
    pub fn share_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.keys())
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    /// The one share file (panics if there is not exactly one).
    pub fn share_file(&self) -> PathBuf {
        let v = self.share_files();
        assert_eq!(v.len(), 1, "expected one share file, found {v:?}");
        v.into_iter().next().unwrap()
    }
    /// Direct database access, as an attacker or a broken disk would have.
    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db()).unwrap()
    }
    pub fn key_count(&self) -> i64 {
        self.sql()
            .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
            .unwrap()
    }
}

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
        let socket = socket_of(dir, extra);
        let stderr = dir.path().join(format!("daemon-{}.log", unique()));
        let child = dir
            .cmd()
            .envs(env.iter().copied())
            .args(extra)
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
        let deadline = Instant::now() + Duration::from_secs(20);
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
                "daemon not ready in 20s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn conn(&self) -> Conn {
        Conn::open(&self.socket).expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
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

fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
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

/// A raw protocol connection.
pub struct Conn {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Conn {
    pub fn open(path: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }
    /// The next response line, parsed; `None` at EOF.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("response is JSON")),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("reading a response: {e}"),
        }
    }
    pub fn request(&mut self, req: Value) -> Value {
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
        self.recv().expect("a response")
    }
    /// Whether the daemon closed the connection (EOF on read).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
    pub fn sign(&mut self, claims: Value) -> Value {
        self.request(json!({"op":"sign","claims":claims}))
    }
}

/// The error code of a response (panics on success).
pub fn code(resp: &Value) -> &str {
    assert_eq!(resp["ok"], false, "expected an error, got {resp}");
    resp["error"]["code"].as_str().expect("error code")
}

/// Assert success and return the response.
pub fn ok(resp: Value) -> Value {
    assert_eq!(resp["ok"], true, "expected success, got {resp}");
    resp
}
