//! Every client example in examples/ runs against the real daemon and
//! prints the subject it signed, verified locally against the JWKS; the
//! Python, Node.js and Java ones also against a daemon whose keys are ES256. The
//! tools they need (python3 + a venv with PyJWT, node + jose, a JDK 17) are
//! set up here if missing where a package registry allows (pip, npm);
//! .ci/run installs the interpreters. A missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::util::{Daemon, Dir};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run an example (`cmd()`, then the subject) against a zero-config daemon
/// (EdDSA keys); with `es256`, again against a daemon whose keys are
/// ES256 (`alg = "ES256"`), the example pinning that alg.
fn run_example(cmd: impl Fn() -> Command, lang: &str, es256: bool) {
    run_example_once(cmd(), lang, None);
    if es256 {
        run_example_once(cmd(), lang, Some("ES256"));
    }
}

fn run_example_once(mut cmd: Command, lang: &str, alg: Option<&str>) {
    let dir = Dir::new();
    let d = match alg {
        None => Daemon::start(&dir),
        Some(alg) => {
            let cfg = dir.write_config(&format!(
                "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\nalg = \"{alg}\"\n"
            ));
            cmd.env("SPLITSIGN_ALG", alg);
            Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap()
        }
    };
    let lang = format!("{lang} ({})", alg.unwrap_or("EdDSA"));
    let subject = format!("carol-{}", lang.split(' ').next().unwrap());
    let out = cmd
        .arg(&subject)
        .env("SPLITSIGN_SOCKET", &d.socket)
        .output()
        .unwrap_or_else(|e| panic!("{lang} example: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{lang} example failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        subject,
        "{lang} example output"
    );
}

pub(crate) fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One set-up at a time: tests sharing a venv or a node_modules would
/// otherwise install into it together.
static SETUP: Mutex<()> = Mutex::new(());

/// The python of a venv (`name`, in the target's tmp dir) with
/// `requirements` installed by pip: made once, and again when the
/// requirements change. A missing python3 or pip failure fails the test.
pub(crate) fn venv_python(name: &str, requirements: &Path) -> PathBuf {
    let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let wanted = std::fs::read(requirements).unwrap();
    let stamp = venv.join("splitsign-requirements.txt");
    if !python.exists() || std::fs::read(&stamp).ok().as_ref() != Some(&wanted) {
        must(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
            "python3 -m venv",
        );
        must(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(requirements),
            &format!("pip install -r {}", requirements.display()),
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
    python
}

/// `npm ci` in `dir` (its package-lock.json): once, and again when the
/// lock changes. A missing npm or an install failure fails the test.
pub(crate) fn npm_ci(dir: &Path) {
    let _one = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let wanted = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules/.splitsign-lock.json");
    if std::fs::read(&stamp).ok().as_ref() != Some(&wanted) {
        must(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir),
            &format!("npm ci in {}", dir.display()),
        );
        std::fs::write(&stamp, &wanted).unwrap();
    }
}

#[test]
fn rust_example() {
    // Built by `cargo test` next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/rust_client");
    assert!(
        bin.exists(),
        "{} is missing (cargo test builds it)",
        bin.display()
    );
    run_example(|| Command::new(&bin), "rust", false);
}

#[test]
fn python_example() {
    let python = venv_python(
        "examples-venv",
        &repo().join("examples/python/requirements.txt"),
    );
    let cmd = || {
        let mut cmd = Command::new(&python);
        cmd.arg(repo().join("examples/python/client.py"));
        cmd
    };
    run_example(cmd, "python", true);
}

#[test]
fn node_example() {
    let dir = repo().join("examples/node");
    npm_ci(&dir);
    let cmd = || {
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("client.mjs"));
        cmd
    };
    run_example(cmd, "node", true);
}

#[test]
fn java_example() {
    // JDK 11+ runs a single source file directly; the example uses JDK 17 APIs.
    let cmd = || {
        let mut cmd = Command::new("java");
        cmd.arg(repo().join("examples/java/Client.java"));
        cmd
    };
    run_example(cmd, "java", true);
}
