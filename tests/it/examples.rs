//! Every client example in examples/ runs against the real daemon and
//! prints the subject it signed, verified locally against the JWKS. The
//! tools they need (python3 + a venv with PyJWT, node + jose, a JDK 17) are
//! set up here if missing where a package registry allows (pip, npm);
//! .ci/run installs the interpreters. A missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Daemon, Dir};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_example(mut cmd: Command, lang: &str) {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let subject = format!("carol-{lang}");
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

fn must(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
    run_example(Command::new(bin), "rust");
}

#[test]
fn python_example() {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("examples-venv");
    let python = venv.join("bin/python");
    let has_jwt = |p: &Path| {
        Command::new(p)
            .args(["-c", "import jwt, cryptography"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_jwt(&python) {
        must(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        );
        must(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(repo().join("examples/python/requirements.txt")),
            "pip install PyJWT",
        );
    }
    let mut cmd = Command::new(&python);
    cmd.arg(repo().join("examples/python/client.py"));
    run_example(cmd, "python");
}

#[test]
fn node_example() {
    let dir = repo().join("examples/node");
    if !dir.join("node_modules/jose/package.json").exists() {
        must(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            "npm ci (jose)",
        );
    }
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("client.mjs"));
    run_example(cmd, "node");
}

#[test]
fn java_example() {
    // JDK 11+ runs a single source file directly; the example uses JDK 17 APIs.
    let mut cmd = Command::new("java");
    cmd.arg(repo().join("examples/java/Client.java"));
    run_example(cmd, "java");
}
