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

/// `out` exited with `code`, and its stderr has each of `has`.
fn exits(out: &Output, code: i32, has: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    for h in has {
        assert!(err.contains(h), "no {h:?} in: {err}");
    }
}

const LOCAL: &str =
    "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n";

/// The commands that find nothing where they looked, and what they must
/// say: where they looked (the config, the socket, the database), and how
/// to point elsewhere.
#[test]
fn from_a_directory_without_stores_the_cli_says_where_it_looked_and_never_suggests_init() {
    let dir = Dir::new();
    let socket = dir.socket().display().to_string();
    let db = dir.db().display().to_string();
    let daemon_cmds: &[&[&str]] = &[
        &["sign", "--claim", "sub=a"],
        &["verify", "x"],
        &["jwks"],
        &["metrics"],
        &["reload"],
    ];
    for args in daemon_cmds {
        let out = dir.run(args);
        exits(
            &out,
            69,
            &[
                &socket,
                "/etc/splitsign/config.toml",
                "--socket",
                "SPLITSIGN_SOCKET",
                "--config",
            ],
        );
        assert!(!stderr(&out).contains("init"), "{args:?}: {}", stderr(&out));
    }
    let store_cmds: &[&[&str]] = &[
        &["status"],
        &["rotate"],
        &["reshare"],
        &["revoke", "--sub", "a"],
        &["check"],
        &["audit"],
        &["audit", "--prune-before", "90d"],
        &["backup", "copy.db"],
        &["recover", "--recovery-share", "r.share"],
    ];
    for args in store_cmds {
        let out = dir.run(args);
        exits(
            &out,
            65,
            &[
                &db,
                &dir.keys().display().to_string(),
                "/etc/splitsign/config.toml",
                "--config",
                "--db",
            ],
        );
        assert!(!stderr(&out).contains("init"), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    }
    // `status` asks the daemon first: it names the socket too.
    exits(&dir.run(&["status"]), 65, &[&socket, "SPLITSIGN_SOCKET"]);
    // A repository checkout has keys/ with a README: still no store.
    std::fs::create_dir(dir.keys()).unwrap();
    std::fs::write(dir.keys().join("README.md"), "shares live here\n").unwrap();
    let out = dir.run(&["status"]);
    exits(&out, 65, &["holds no share file"]);
    assert!(!stderr(&out).contains("init"), "{}", stderr(&out));
    assert!(!dir.path().join("var").exists(), "nothing was created");

    // A config that was found and names empty places, with no daemon at
    // its socket: a new deployment, where `init` is the answer.
    let fresh = Dir::new();
    let cfg = fresh.write_config(LOCAL);
    let out = fresh.run(&["--config", cfg.to_str().unwrap(), "status"]);
    exits(&out, 65, &[cfg.to_str().unwrap(), "splitsign init"]);

    // The same config, but its socket reaches a daemon running elsewhere:
    // never `init` (it would make a second, unrelated key store).
    let running = Dir::new();
    let _d = Daemon::start(&running);
    let cfg = fresh.write_config(&format!(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"{}\"\n",
        running.socket().display()
    ));
    for args in [&["check"][..], &["backup", "copy.db"], &["audit"]] {
        let out = fresh.run(&[&["--config", cfg.to_str().unwrap()], args].concat());
        exits(&out, 65, &["daemon answers", "--config"]);
        assert!(!stderr(&out).contains("init"), "{args:?}: {}", stderr(&out));
    }
    assert!(!fresh.path().join("var").exists(), "nothing was created");

    // Half a deployment (the database gone, the share there) is damage,
    // not a new deployment: the message names the database, and no `init`.
    let (half, _) = crate::util::initialised();
    std::fs::remove_file(half.db()).unwrap();
    for args in [&["status"][..], &["rotate"], &["check"]] {
        let out = half.run(args);
        exits(
            &out,
            65,
            &[&half.db().display().to_string(), "does not exist"],
        );
        assert!(!stderr(&out).contains("init"), "{args:?}: {}", stderr(&out));
    }
}

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
