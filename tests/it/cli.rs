//! The command line keeps its promises: `verify` exits 3 for every answer
//! that the token is not valid and takes `--fingerprint`; bad flag values
//! are usage errors naming the flag; run where there are no stores, the
//! CLI says where it looked and suggests `init` only for a new deployment;
//! a JWKS or metrics file in a missing directory is refused before any key
//! is made; log fields are plain values, and counts are named as counts.

use std::process::Output;

use serde_json::{Value, json};

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

#[test]
fn verify_exits_3_for_every_answer_that_the_token_is_not_valid_and_takes_a_fingerprint() {
    let dir = Dir::new();
    // No leeway: a 1-second token is expired 2 seconds later.
    dir.write_config(&format!("{LOCAL}leeway = \"0s\"\n"));
    let d = Daemon::start_with(&dir, &["--config", "config.toml"]).unwrap();
    let run = |args: &[&str]| dir.run(&[&["--config", "config.toml"], args].concat());
    let token = |args: &[&str]| {
        let out = run(&[
            &["sign", "--claim", "sub=alice", "--claim", "aud=api"],
            args,
        ]
        .concat());
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };

    // A token bound to a fingerprint: 0 with it, 3 without it or with another.
    let bound = token(&["--fingerprint", "cookie-1"]);
    let out = run(&["verify", &bound, "--fingerprint", "cookie-1"]);
    assert_ok(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"]["sub"], "alice");
    assert!(v["claims"]["fph"].is_string(), "{v}");
    exits(&run(&["verify", &bound]), 3, &["fingerprint_mismatch"]);
    exits(
        &run(&["verify", &bound, "--fingerprint", "cookie-2"]),
        3,
        &["fingerprint_mismatch"],
    );
    // The same token sent over the protocol with the fingerprint: the CLI
    // passed it as the daemon takes it.
    ok(d.conn()
        .request(json!({"op":"verify","token":bound,"fingerprint":"cookie-1"})));

    let plain = token(&[]);
    assert_ok(&run(&["verify", &plain]));
    // A fingerprint for a token bound to none.
    exits(
        &run(&["verify", &plain, "--fingerprint", "cookie-1"]),
        3,
        &["fingerprint_mismatch"],
    );
    exits(
        &run(&["verify", &plain, "--aud", "admin"]),
        3,
        &["audience_mismatch"],
    );
    // Revoked.
    assert_ok(&run(&["revoke", "--token", &plain]));
    exits(&run(&["verify", &plain]), 3, &["revoked"]);
    // Malformed, and a bad signature.
    exits(&run(&["verify", "not-a-token"]), 3, &["invalid_token"]);
    exits(&run(&["verify", ""]), 2, &["the token is empty"]);
    let other = token(&[]);
    let mut forged = other.clone();
    forged.pop();
    forged.push(if other.ends_with('A') { 'B' } else { 'A' });
    exits(&run(&["verify", &forged]), 3, &["invalid_token"]);
    // Longer than any token the daemon issues (past its frame limit).
    exits(
        &run(&["verify", &"a".repeat(70_000)]),
        3,
        &["frame_too_long"],
    );
    // Expired.
    let short = token(&["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    exits(&run(&["verify", &short]), 3, &["token_expired"]);
    // Signed by another deployment's key.
    let elsewhere = Dir::new();
    let e = Daemon::start(&elsewhere);
    let out = elsewhere.run(&["sign", "--claim", "sub=eve"]);
    assert_ok(&out);
    drop(e);
    let foreign = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    exits(&run(&["verify", &foreign]), 3, &["unknown_key"]);

    // The daemon gone is not an answer about the token: 69.
    d.stop();
    exits(&run(&["verify", &other]), 69, &["cannot connect"]);
}

#[test]
fn bad_flag_values_are_usage_errors_naming_the_flag() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let cases: &[(&[&str], &str)] = &[
        (&["sign", "--claim", "=x"], "--claim"),
        (&["sign", "--claim", "sub"], "--claim"),
        (&["sign", "--claim", "sub=a", "--claim", "sub=b"], "--claim"),
        (&["sign", "--claim", " =x"], "--claim"),
        (&["sign", "--claim", "a b=x"], "--claim"),
        (&["sign", "--claim", "\u{1}=x"], "--claim"),
        (
            &[
                "sign",
                "--claims-json",
                r#"{"sub":"a"}"#,
                "--claim",
                "sub=b",
            ],
            "--claim",
        ),
        (
            &["sign", "--claims-json", r#"{"a":1,"a":2}"#],
            "--claims-json",
        ),
        (&["sign", "--ttl", "0s"], "--ttl"),
        (&["sign", "--ttl", "1500ms"], "--ttl"),
        (&["sign", "--ttl", "soon"], "--ttl"),
        (&["sign", "--fingerprint", ""], "--fingerprint"),
        (&["--timeout", "0s", "jwks"], "--timeout"),
        (&["--timeout", "2d", "jwks"], "--timeout"),
        (&["verify", "x", "--aud", ""], "--aud"),
        (&["verify", "x", "--fingerprint", ""], "--fingerprint"),
        (&["revoke", "--sub", ""], "--sub"),
        (&["revoke", "--jti", "", "--exp", "1"], "--jti"),
        (&["revoke", "--token", ""], "--token"),
        (&["audit", "--limit", "0"], "--limit"),
        (&["audit", "--limit", "100001"], "--limit"),
        (&["audit", "--from", "0"], "--from"),
        (
            &["node", "bounds", "--max-token-ttl", "0s"],
            "--max-token-ttl",
        ),
        (
            &["node", "bounds", "--max-key-lifetime", "59s"],
            "--max-key-lifetime",
        ),
    ];
    for (args, flag) in cases {
        let out = dir.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // --ttl has no upper bound of its own (the daemon's max_ttl is it).
    let out = dir.run(&["sign", "--ttl", "0"]);
    assert!(stderr(&out).contains("at least 1s"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("years"), "{}", stderr(&out));
    // An empty token on stdin is a usage error, not a token found invalid.
    let out = dir
        .cmd()
        .args(["verify", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
    // Nothing was signed or revoked; the smallest good values work.
    assert_eq!(
        crate::util::wait_for_count(&dir, "sign", "ok", 0),
        0,
        "a refused command signed"
    );
    let out = dir.run(&["--timeout", "1d", "sign", "--claim", "sub=a", "--ttl", "1s"]);
    assert_ok(&out);
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let v = ok(d.conn().request(json!({"op":"verify","token":t})));
    let c = &v["claims"];
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 1);
    assert_ok(&dir.run(&["audit", "--limit", "1", "--from", "1"]));
}

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

    // A deployment whose config has relative paths, asked from another
    // directory: the paths name empty places here, but the config's own
    // directory may hold the stores: say so, never `init`.
    let deployed = Dir::new();
    let cfg_there = deployed.write_config(LOCAL);
    let _there = Daemon::start_with(&deployed, &["--config", "config.toml"]).unwrap();
    let elsewhere = Dir::new();
    for args in [
        &["status"][..],
        &["rotate"],
        &["check"],
        &["audit", "--verify"],
    ] {
        let out = elsewhere.run(&[&["--config", cfg_there.to_str().unwrap()], args].concat());
        exits(
            &out,
            65,
            &["relative", &deployed.path().display().to_string()],
        );
        assert!(!stderr(&out).contains("init"), "{args:?}: {}", stderr(&out));
    }
    assert!(
        !elsewhere.path().join("var").exists(),
        "nothing was created"
    );

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
