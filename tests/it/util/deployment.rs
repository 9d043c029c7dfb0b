//! The deployment of a test: a fresh temp dir that is the working
//! directory of a zero-config daemon (`Dir`), `splitsign` commands run in
//! it, its stores read directly, a copy of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::BIN;

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
            .env_remove("SPLITSIGN_SOCKET")
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
    /// Write `config.toml` naming this directory's stores and socket
    /// (`keys`, `var/`) and then `extra`; its path, for `--config`.
    pub fn store_config(&self, extra: &str) -> String {
        self.write_config(&format!(
            "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
             {extra}"
        ))
        .to_str()
        .unwrap()
        .to_owned()
    }
    /// `splitsign --config CFG ARGS...` here.
    pub fn run_config(&self, cfg: &str, args: &[&str]) -> Output {
        self.cmd()
            .args(["--config", cfg])
            .args(args)
            .output()
            .expect("run splitsign")
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

/// Require a command to have succeeded; its stderr otherwise.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Copy a deployment directory (keys/ and var/, modes kept).
pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .unwrap();
    assert_ok(&out);
}

/// The number of events of `op` with `result` in the audit log (aggregated
/// records count as many), once it reaches `at_least` or after 3 s.
pub fn wait_for_count(dir: &Dir, op: &str, result: &str, at_least: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let n: i64 = dir
            .sql()
            .query_row(
                "SELECT coalesce(sum(count), 0) FROM audit WHERE op = ?1 AND result = ?2",
                [op, result],
                |r| r.get(0),
            )
            .unwrap();
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
