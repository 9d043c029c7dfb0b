//! The command line keeps its promises: `verify` exits 3 for every answer
//! that the token is not valid and takes `--fingerprint`; bad flag values
//! are usage errors naming the flag; run where there are no stores, the
//! CLI says where it looked and suggests `init` only for a new deployment;
//! a JWKS or metrics file in a missing directory is refused before any key
//! is made; log fields are plain values, and counts are named as counts.

use std::process::Output;

use serde_json::json;

use crate::util::{Daemon, Dir, assert_ok, ok};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const LOCAL: &str =
    "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n";

#[test]
fn a_jwks_or_metrics_file_in_a_missing_directory_is_refused_before_any_key_is_made() {
    for key in ["jwks_file", "metrics_file"] {
        let dir = Dir::new();
        let file = dir.path().join("missing/dir/out.json");
        dir.write_config(&format!("{LOCAL}{key} = \"{}\"\n", file.display()));
        let e = Daemon::start_with(&dir, &["--config", "config.toml"])
            .err()
            .expect("refused");
        assert_eq!(e.status.code(), Some(2), "{key}: {}", e.stderr);
        assert!(
            e.stderr.contains(key) && e.stderr.contains(&file.display().to_string()),
            "{key}: {}",
            e.stderr
        );
        assert!(dir.share_files().is_empty(), "{key}: a share was written");
        assert!(!dir.db().exists(), "{key}: a database was made");
        assert!(!dir.keys().exists(), "{key}: the share directory was made");
    }
    // A file that names a directory is refused too.
    let dir = Dir::new();
    dir.write_config(&format!(
        "{LOCAL}jwks_file = \"{}\"\n",
        dir.path().display()
    ));
    let e = Daemon::start_with(&dir, &["--config", "config.toml"])
        .err()
        .expect("refused");
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(!dir.db().exists());

    // A reload that moves the file into a missing directory is refused
    // whole, naming the path; the daemon keeps signing.
    let dir = Dir::new();
    let cfg = dir.write_config(LOCAL);
    let d = Daemon::start_with(&dir, &["--config", "config.toml"]).unwrap();
    let file = dir.path().join("gone/metrics.prom");
    dir.write_config(&format!("{LOCAL}metrics_file = \"{}\"\n", file.display()));
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&file.display().to_string()),
        "{}",
        stderr(&out)
    );
    ok(d.conn().sign(json!({"sub":"a"})));
}

#[test]
fn log_fields_are_plain_values_and_counts_are_named_as_counts() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    // Admin ops from the CLI (a pid in their log lines), a rotation (a
    // previous key), revocations one by one and pipelined.
    assert_ok(&dir.run(&["revoke", "--sub", "bob"]));
    assert_ok(&dir.run(&["rotate"]));
    std::fs::write(dir.path().join("jtis"), "a\nb\nc\n").unwrap();
    assert_ok(&dir.run(&["revoke", "--jti-file", "jtis"]));
    // A refused admin op and a verify refusal.
    let mut c = d.conn();
    let r = c.request(json!({"op":"revoke","token":"not-a-token"}));
    assert_eq!(r["ok"], false);
    let log = d.stop();
    for debug_form in ["Some(", "None", "Invalid("] {
        assert!(!log.contains(debug_form), "{debug_form} in the log:\n{log}");
    }
    let line = |what: &str| -> String {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{log}"))
            .to_owned()
    };
    // One line per batch of revokes, with a count of each kind.
    let revoked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("revoked by an admin"))
        .collect();
    assert!(
        revoked
            .iter()
            .any(|l| l.contains(" jti_count=0 sub_count=1")),
        "{log}"
    );
    assert!(
        revoked
            .iter()
            .any(|l| l.contains(" sub_count=0") && !l.contains(" jti_count=0")),
        "{log}"
    );
    let rotated = line("rotated by an admin");
    let previous = rotated
        .split_whitespace()
        .find_map(|w| w.strip_prefix("previous="))
        .unwrap_or_else(|| panic!("{rotated}"));
    assert!(
        previous.len() == 43 && !previous.contains('"'),
        "a plain kid: {rotated}"
    );
    let admin = line("admin op");
    let pid = admin
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .unwrap_or_else(|| panic!("{admin}"));
    assert!(pid.parse::<u32>().is_ok(), "{admin}");
    assert!(
        log.lines()
            .any(|l| l.contains("op=\"revoke\"") && l.contains("request_count=")),
        "{log}"
    );
}
