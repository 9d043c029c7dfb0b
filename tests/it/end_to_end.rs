//! End to end: init → serve → sign → verify against the JWKS, restarts,
//! import, CLI, pipelining.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{Daemon, Dir, assert_ok, code, copy_dir, is_root, ok, verify_with_jwks};

/// RFC 7638 thumbprint computed independently of the daemon's code.
fn thumbprint(x_b64: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_b64}"}}"#);
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

#[test]
fn signed_token_verifies_with_jsonwebtoken_against_the_socket_jwks() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let signed = ok(c.request(
        json!({"id":1,"op":"sign","claims":{"sub":"alice","aud":"api","scope":"read"},"ttl":900}),
    ));
    assert_eq!(signed["id"], 1);
    let jwks = ok(c.request(json!({"id":"j","op":"jwks"})))["jwks"].clone();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    assert_eq!(
        (
            k["kty"].as_str(),
            k["crv"].as_str(),
            k["alg"].as_str(),
            k["use"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
    );
    assert_eq!(k["kid"], thumbprint(k["x"].as_str().unwrap()));
    assert_eq!(signed["kid"], k["kid"]);

    let token = signed["token"].as_str().unwrap();
    let claims = verify_with_jwks(token, &jwks, "api");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["exp"], signed["exp"]);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22, "128-bit jti");

    // The header is exactly alg, typ, kid.
    let header = B64.decode(token.split('.').next().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(header).unwrap(),
        format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":{}}}"#, k["kid"])
    );

    // And the daemon verifies it too.
    let v = ok(c.request(json!({"op":"verify","token":token,"aud":"api"})));
    assert_eq!(v["claims"]["sub"], "alice");
    assert_eq!(v["kid"], k["kid"]);
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":token,"aud":"admin"}))),
        "audience_mismatch"
    );
}

#[test]
fn restart_keeps_the_kid_and_earlier_tokens_verify() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let s = ok(d.conn().sign(json!({"sub":"a","aud":"api"})));
    let jwks1 = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    d.stop();
    let d = Daemon::start(&dir);
    let jwks2 = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwks1, jwks2);
    let token = s["token"].as_str().unwrap();
    ok(d.conn().request(json!({"op":"verify","token":token})));
    verify_with_jwks(token, &jwks2, "api");
    assert_eq!(dir.key_count(), 1);
    let s2 = ok(d.conn().sign(json!({"sub":"b"})));
    assert_eq!(s2["kid"], s["kid"]);
}

#[test]
fn reserved_claims_ttl_and_size_limits() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    for claim in ["iss", "iat", "nbf", "exp", "jti"] {
        let r = c.request(json!({"id":claim,"op":"sign","claims":{"sub":"x", claim: 1}}));
        assert_eq!(code(&r), "reserved_claim", "{claim}");
        assert!(r["error"]["message"].as_str().unwrap().contains(claim));
        assert_eq!(r["id"], claim);
    }
    // Default ttl is 15 minutes; max_ttl 1h by default.
    let s = ok(c.sign(json!({"sub":"x"})));
    let claims = ok(c.request(json!({"op":"verify","token":s["token"]})))["claims"].clone();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
    assert_eq!(
        code(&c.request(json!({"op":"sign","claims":{},"ttl":3601}))),
        "ttl_too_long"
    );
    ok(c.request(json!({"op":"sign","claims":{},"ttl":3600})));
    // max_token_bytes is 8192 by default: a big claim is refused, a
    // slightly smaller one passes.
    let big = "x".repeat(6000);
    assert_eq!(
        code(&c.request(json!({"op":"sign","claims":{"blob":big}}))),
        "token_too_large"
    );
    let fits = "x".repeat(5500);
    let t = ok(c.request(json!({"op":"sign","claims":{"blob":fits}})));
    assert!(t["token"].as_str().unwrap().len() <= 8192);
}

#[test]
fn ed25519_alg_label_from_config() {
    let dir = Dir::new();
    let cfg = dir.write_config(
        "issuer = \"https://auth.example\"\nalg = \"Ed25519\"\nshares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n",
    );
    let d = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap();
    let mut c = d.conn();
    let s = ok(c.sign(json!({"sub":"x"})));
    let token = s["token"].as_str().unwrap();
    let header: Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "Ed25519");
    let v = ok(c.request(json!({"op":"verify","token":token})));
    assert_eq!(v["claims"]["iss"], "https://auth.example");
    let jwks = ok(c.request(json!({"op":"jwks"})));
    assert_eq!(jwks["jwks"]["keys"][0]["alg"], "Ed25519");
}

#[test]
fn pipelined_requests_come_back_in_order() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(
            format!("{{\"id\":{i},\"op\":\"sign\",\"claims\":{{\"sub\":\"u{i}\"}}}}\n").as_bytes(),
        );
    }
    // Write from another thread: the daemon answers while we still write.
    let mut w = c.writer.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(&batch).unwrap();
    });
    for i in 0..1000 {
        let r = ok(c.recv().expect("response"));
        assert_eq!(r["id"], i);
        let payload = r["token"].as_str().unwrap().split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["sub"], format!("u{i}"));
    }
    writer.join().unwrap();
}

#[test]
fn cli_sign_verify_jwks_status() {
    let dir = Dir::new();
    let _d = Daemon::start(&dir);
    let out = dir.run(&[
        "sign",
        "--claim",
        "sub=alice",
        "--claim",
        "aud=api",
        "--ttl",
        "5m",
    ]);
    assert_ok(&out);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = dir.run(&["verify", &token]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"]["sub"], "alice");
    let claims = &v["claims"];
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );

    // A tampered token: exit code 3, and a reason on stderr.
    let mut bad = token.clone();
    bad.pop();
    bad.push(if token.ends_with('A') { 'B' } else { 'A' });
    let out = dir.run(&["verify", &bad]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_token"));

    let out = dir.run(&["jwks"]);
    let jwks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();

    let out = dir.run(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&kid) && text.contains("active"), "{text}");
    let out = dir.run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["active_kid"], kid.as_str());

    // A reserved claim from the CLI gets the daemon's code.
    let out = dir.run(&["sign", "--claim", "exp=1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved_claim"));
}

#[test]
fn cli_without_a_daemon_says_so() {
    let dir = Dir::new();
    let out = dir.run(&["sign", "--claim", "sub=a"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("splitsign.sock"));
}

#[test]
fn init_with_recovery_share_then_serve() {
    let dir = Dir::new();
    let out = dir.run(&["init", "--recovery-share", "recovery.share"]);
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let kid = text.split_whitespace().nth(2).unwrap().to_owned();
    let rec = dir.path().join("recovery.share");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&rec).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&rec).unwrap().contains("\nx 3\n"));

    // A second init changes nothing.
    let out = dir.run(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialised"));

    let d = Daemon::start(&dir);
    let s = ok(d.conn().sign(json!({"sub":"a"})));
    assert_eq!(s["kid"], kid.as_str());
    assert_eq!(dir.key_count(), 1);

    // While the daemon runs, offline commands are refused (store lock).
    let out = dir.run(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

#[test]
fn import_keeps_an_existing_pem_key() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let dir = Dir::new();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(dir.path().join("key.pem"), pem.as_bytes()).unwrap();
    let out = dir.run(&["import", "--pem", "key.pem"]);
    assert_ok(&out);

    let d = Daemon::start(&dir);
    let jwks = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(
        jwks["keys"][0]["x"],
        B64.encode(key.verifying_key().to_bytes())
    );
    let s = ok(d.conn().sign(json!({"sub":"a","aud":"api"})));
    verify_with_jwks(s["token"].as_str().unwrap(), &jwks, "api");

    // Garbage is refused with the file named, and nothing is created.
    let dir2 = Dir::new();
    std::fs::write(dir2.path().join("bad.pem"), "not a key").unwrap();
    let out = dir2.run(&["import", "--pem", "bad.pem"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.pem"));
    assert!(!dir2.db().exists());
}

#[test]
fn bad_config_is_refused_with_file_and_key() {
    let dir = Dir::new();
    let cfg = dir.write_config("issuer = \"x\"\nmax_tll = \"1h\"\n");
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "serve"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("max_tll"),
        "{err}"
    );
    let cfg = dir.write_config("default_ttl = \"2h\"\n");
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "serve"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("default_ttl"));
    assert!(!dir.db().exists(), "nothing is created on a bad config");
}

#[test]
fn after_kill_9_the_stale_socket_is_replaced_and_the_key_kept() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let kid = ok(d.conn().sign(json!({})))["kid"].clone();
    d.kill();
    assert!(
        dir.socket().exists(),
        "a killed daemon leaves its socket behind"
    );
    let d = Daemon::start(&dir);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid);
    assert_eq!(dir.key_count(), 1);
}

#[test]
fn a_second_daemon_on_the_same_stores_is_refused() {
    let dir = Dir::new();
    let _d = Daemon::start(&dir);
    let e = Daemon::start_with(&dir, &[]).err().expect("refused");
    assert_eq!(e.status.code(), Some(2));
    assert!(
        e.stderr.contains("the key stores are in use: pid"),
        "{}",
        e.stderr
    );
}

/// One daemon per store by identity, not by path: a second daemon (or an
/// offline admin command) reaching the running daemon's database through a
/// symlink, a bind mount of its directory or a relative path, or its share
/// directory through a bind mount, is refused with exit 2 naming the
/// holder's pid; a path that would bypass the database's directory (a hard
/// link, the file bind-mounted alone) is refused too; and the first keeps
/// signing with its key. (Before, the
/// lock was `<db path>.lock` by the path string: through a symlink, a
/// second daemon started, and its `rotate` made the first fail closed.)
#[test]
fn a_second_daemon_through_a_symlink_a_bind_mount_or_a_relative_path_is_refused() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let kid = ok(d.conn().sign(json!({})))["kid"].clone();
    let holder = format!("pid {}", d.pid());
    let other = Dir::new();
    let o = other.path();
    // Copies: a second daemon with them alone would start; each attempt
    // below shares exactly one store with the running daemon.
    copy_dir(&dir.path().join("keys"), &o.join("keys-copy"));
    std::fs::create_dir(o.join("var-copy")).unwrap();
    std::fs::copy(dir.db(), o.join("var-copy/splitsign.db")).unwrap();
    std::os::unix::fs::symlink(dir.db(), o.join("link.db")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("var"), o.join("var-link")).unwrap();
    let s = |p: &str| o.join(p).to_str().unwrap().to_owned();
    let rel = format!(
        "../{}/var/splitsign.db",
        dir.path().file_name().unwrap().to_str().unwrap()
    );
    // (how, db, shares, what the refusal says)
    let in_use = "the key stores are in use";
    let mut attempts: Vec<(&str, String, String, &str)> = vec![
        (
            "a symlink to the database",
            s("link.db"),
            s("keys-copy"),
            in_use,
        ),
        (
            "a symlink to its directory",
            s("var-link/splitsign.db"),
            s("keys-copy"),
            in_use,
        ),
        ("a relative path", rel, s("keys-copy"), in_use),
    ];
    let _mounts: Vec<BindMount> = if is_root() {
        std::fs::write(o.join("file-bind.db"), b"").unwrap();
        let m = vec![
            BindMount::new(&dir.path().join("var"), &o.join("var-bind")),
            BindMount::new(&dir.path().join("keys"), &o.join("keys-bind")),
            BindMount::new(&dir.db(), &o.join("file-bind.db")),
        ];
        attempts.push((
            "a bind mount of its directory",
            s("var-bind/splitsign.db"),
            s("keys-copy"),
            in_use,
        ));
        attempts.push((
            "a bind mount of the share directory",
            s("var-copy/splitsign.db"),
            s("keys-bind"),
            in_use,
        ));
        attempts.push((
            "a bind mount of the database file alone",
            s("file-bind.db"),
            s("keys-copy"),
            "is a mount point",
        ));
        m
    } else {
        Vec::new()
    };
    for (how, db, shares, says) in &attempts {
        let flags = [
            "--db",
            db,
            "--shares-dir",
            shares,
            "--socket",
            &s("other.sock"),
        ];
        let e = Daemon::start_with(&other, &flags)
            .err()
            .unwrap_or_else(|| panic!("{how}: a second daemon started"));
        assert_eq!(e.status.code(), Some(2), "{how}: {}", e.stderr);
        assert!(e.stderr.contains(says), "{how}: {}", e.stderr);
        if *says == in_use {
            assert!(e.stderr.contains(&holder), "{how}: {}", e.stderr);
        }
        // An offline admin command the same way.
        let out = other.cmd().args(flags).arg("rotate").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{how}: {out:?}");
    }
    // A hard link to the live database (its WAL and lock are not the
    // link's): refused, and the daemon's own restart says why too.
    std::fs::hard_link(dir.db(), o.join("hard.db")).unwrap();
    let flags = [
        "--db",
        &s("hard.db"),
        "--shares-dir",
        &s("keys-copy"),
        "--socket",
        &s("other.sock"),
    ];
    let out = other.cmd().args(flags).arg("rotate").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 hard links"),
        "{out:?}"
    );
    let e = Daemon::start_with(&other, &flags).err().expect("refused");
    assert!(e.stderr.contains("2 hard links"), "{}", e.stderr);
    std::fs::remove_file(o.join("hard.db")).unwrap();
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid);
    assert!(
        !d.log().contains("ERROR") && !d.log().contains("WARN"),
        "the running daemon saw a change:\n{}",
        d.log()
    );
}

/// A bind mount, unmounted when dropped.
struct BindMount(std::path::PathBuf);

impl BindMount {
    /// `at` is made for a directory; a file's must exist.
    fn new(from: &std::path::Path, at: &std::path::Path) -> BindMount {
        if from.is_dir() {
            std::fs::create_dir_all(at).unwrap();
        }
        let out = std::process::Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(at)
            .output()
            .unwrap();
        assert_ok(&out);
        BindMount(at.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn the_rust_client_pool_serves_many_threads_and_types_errors() {
    use splitsign::client::{ClientError, Pool};
    use splitsign::protocol::Code;
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let pool = std::sync::Arc::new(Pool::new(&d.socket));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let mut claims = serde_json::Map::new();
                    claims.insert("sub".into(), format!("t{t}-{i}").into());
                    let s = pool.sign(&claims, Some(60)).unwrap();
                    assert_eq!(
                        pool.verify(&s.token, None).unwrap().claims["sub"],
                        format!("t{t}-{i}")
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut bad = serde_json::Map::new();
    bad.insert("exp".into(), 1.into());
    let e: ClientError = pool.sign(&bad, None).unwrap_err();
    assert_eq!(e.kind(), Some(Code::ReservedClaim));
    assert_eq!(e.code(), Some("reserved_claim"));
}

#[test]
fn a_failing_command_prints_its_error_once() {
    let dir = Dir::new();
    let cfg = dir.write_config("isuer = \"typo\"\n");
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("splitsign: config file"), "{err}");
    assert_eq!(
        err.matches("isuer").count(),
        2,
        "once, with its TOML snippet: {err}"
    );
    assert_eq!(err.matches("splitsign:").count(), 1, "{err}");
    // No stores here: one line that says where it looked.
    let out = dir.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("splitsign:").count(), 1, "{err}");
    assert_eq!(
        err.matches(&dir.db().display().to_string()).count(),
        1,
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn splitsign_socket_in_the_environment_picks_the_socket_and_the_flag_wins() {
    let dir = Dir::new();
    let sock = dir.path().join("elsewhere.sock");
    let _d = Daemon::start_with(&dir, &["--socket", sock.to_str().unwrap()]).unwrap();
    // From another directory, where the zero-config socket does not exist.
    let other = Dir::new();
    let out = other
        .cmd()
        .env("SPLITSIGN_SOCKET", &sock)
        .args(["sign", "--claim", "sub=a"])
        .output()
        .unwrap();
    assert_ok(&out);
    // --socket wins over the environment.
    let out = other
        .cmd()
        .env("SPLITSIGN_SOCKET", &sock)
        .args(["--socket", "/nonexistent/s.sock", "jwks"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/s.sock"));
}
