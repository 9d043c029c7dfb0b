//! The docs work as written: every fenced `sh`, `python` and `js` block of
//! README.md, docs/clients.md and docs/PROTOCOL.md, and the command lines
//! in the client examples' headers, run against a live zero-config daemon
//! from a directory laid out like the repository root (the daemon's
//! `var/splitsign.sock`, the repository's files beside it). A block whose
//! info string says `no-run` is illustrative (it starts a daemon, installs
//! a package) and is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::{BIN, Daemon, Dir};

#[derive(Debug)]
struct Snippet {
    place: String,
    lang: &'static str,
    text: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The runnable fenced blocks of a Markdown file.
fn fenced(rel: &str) -> Vec<Snippet> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = match words.next() {
            Some("sh") => "sh",
            Some("python") => "python",
            Some("js") => "js",
            _ => "",
        };
        let run = !lang.is_empty() && !words.any(|w| w == "no-run");
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| !l.starts_with("```"))
            .collect();
        if run {
            out.push(Snippet {
                place: format!("{rel}:{}", n + 1),
                lang,
                text: body.join("\n"),
            });
        }
    }
    out
}

/// The command lines in an example's header comment.
fn header_commands(rel: &str) -> Vec<Snippet> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    text.lines()
        .take(30)
        .enumerate()
        .filter_map(|(n, l)| {
            let l = l
                .trim_start_matches("//!")
                .trim_start_matches("//")
                .trim_start_matches('#')
                .trim();
            (l.starts_with("SPLITSIGN_SOCKET=")
                || l.starts_with("python3 -m venv")
                || l.starts_with("(cd examples/node && npm ci"))
            .then(|| Snippet {
                place: format!("{rel}:{}", n + 1),
                lang: "sh",
                text: l.to_owned(),
            })
        })
        .collect()
}

/// A directory laid out like the repository root: the repository's files
/// (linked) and the daemon's `keys/` and `var/`. At a fixed place, so that
/// `cargo run --example` builds in full once, and incrementally after.
fn repo_root_lookalike() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("docs-root");
    for d in ["keys", "var"] {
        let _ = std::fs::remove_dir_all(root.join(d));
    }
    std::fs::create_dir_all(&root).unwrap();
    for entry in std::fs::read_dir(repo()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if [".git", "target", "keys", "var", ".venv"]
            .iter()
            .any(|n| name == *n)
        {
            continue;
        }
        let link = root.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(entry.path(), &link).unwrap();
        }
    }
    root
}

#[test]
fn every_documented_client_command_works_as_written() {
    let mut snippets = Vec::new();
    for doc in ["README.md", "docs/clients.md", "docs/PROTOCOL.md"] {
        snippets.extend(fenced(doc));
    }
    for example in [
        "examples/rust_client.rs",
        "examples/python/client.py",
        "examples/node/client.mjs",
        "examples/java/Client.java",
    ] {
        let found = header_commands(example);
        assert!(!found.is_empty(), "{example} documents how to run it");
        snippets.extend(found);
    }
    assert!(snippets.len() >= 12, "{snippets:#?}");

    let root = repo_root_lookalike();
    // The zero-config daemon of the README, run from that root.
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    std::fs::create_dir_all(root.join("var")).unwrap();
    std::os::unix::fs::symlink(&d.socket, root.join("var/splitsign.sock")).unwrap();
    // `splitsign` on PATH, as the docs say to put it.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for s in &snippets {
        let (program, args): (&str, &[&str]) = match s.lang {
            "sh" => ("bash", &["-euo", "pipefail", "-s"]),
            "python" => ("python3", &["-"]),
            _ => ("node", &["-"]),
        };
        let mut child = Command::new(program)
            .args(args)
            .current_dir(&root)
            .env("PATH", &path)
            // `cargo run --example` builds in the lookalike's own target
            // (its path differs from the repository's: sharing a target
            // would rebuild both each time).
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("SPLITSIGN_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {program}: {e}", s.place));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(s.text.as_bytes()).unwrap();
            stdin.write_all(b"\n").unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} ({}) fails as written:\n{}\n--- stdout:\n{stdout}--- stderr:\n{}",
            s.place,
            s.lang,
            s.text,
            String::from_utf8_lossy(&out.stderr)
        );
        // The examples print the subject they signed and verified.
        if s.text.contains("client") && s.text.contains(" alice") {
            assert!(
                stdout.lines().any(|l| l.trim() == "alice"),
                "{}: {stdout}",
                s.place
            );
        }
    }
    d.stop();
}
