//! The key lifecycle on the real daemon: scheduled rotations with
//! pre-publication, share destruction and retirement; admin rotate,
//! emergency rotate, reshare, recover, check; the JWKS file.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::util::{Daemon, Dir, assert_ok, code, faketime, ok};

/// A config with a fast schedule: rotate every `interval`, pre-publish
/// `lead` before, tokens of at most 3s.
pub fn fast_config(dir: &Dir, interval: &str, lead: &str, extra: &str) -> String {
    let p = dir.write_config(&format!(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
         rotation_interval = \"{interval}\"\nprepublish = \"{lead}\"\njwks_max_age = \"1s\"\n\
         max_ttl = \"3s\"\ndefault_ttl = \"2s\"\nleeway = \"0s\"\n{extra}"
    ));
    p.to_str().unwrap().to_owned()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn db_share_rows(dir: &Dir, kid: &str) -> i64 {
    dir.sql()
        .query_row(
            "SELECT count(*) FROM db_shares WHERE kid = ?1",
            [kid],
            |r| r.get(0),
        )
        .unwrap()
}

fn file_shares_of(dir: &Dir, kid: &str) -> usize {
    dir.share_files()
        .iter()
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(kid))
        .count()
}

#[test]
fn three_scheduled_rotations_prepublish_destroy_and_retire() {
    let dir = Dir::new();
    let cfg = fast_config(&dir, "4s", "2s", "");
    let d = Daemon::start_with(&dir, &["--config", &cfg]).unwrap();
    let mut c = d.conn();

    struct Key {
        activate_at: i64,
        deactivate_at: i64,
        retire_at: i64,
        seen_pending: bool,
        first_seen: f64,
    }
    let mut keys: HashMap<String, Key> = HashMap::new();
    let mut tokens: Vec<(String, String, i64)> = Vec::new();
    let mut signed_by: Vec<String> = Vec::new();
    let mut checked_destroyed: HashSet<String> = HashSet::new();
    let mut checked_retired: HashSet<String> = HashSet::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(17) {
        let now = unix_now();
        let status = ok(c.request(json!({"op":"status"})))["status"].clone();
        let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
        let published: HashSet<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        for k in status["keys"].as_array().unwrap() {
            let kid = k["kid"].as_str().unwrap().to_owned();
            let e = keys.entry(kid.clone()).or_insert(Key {
                activate_at: k["activate_at"].as_i64().unwrap(),
                deactivate_at: k["deactivate_at"].as_i64().unwrap(),
                retire_at: k["retire_at"].as_i64().unwrap(),
                seen_pending: false,
                first_seen: now,
            });
            if k["state"] == "pending" {
                e.seen_pending = true;
                assert!(published.contains(&kid), "a pending key is in the JWKS");
            }
        }
        // Exactly one key signs, and it is the status's active key.
        let s = ok(c.sign(json!({"sub":"u"})));
        let kid = s["kid"].as_str().unwrap().to_owned();
        if signed_by.last() != Some(&kid) {
            signed_by.push(kid.clone());
        }
        tokens.push((
            s["token"].as_str().unwrap().to_owned(),
            kid,
            s["exp"].as_i64().unwrap(),
        ));

        // Every token verifies until its exp (1s margin for second edges).
        for (t, kid, exp) in &tokens {
            if (*exp as f64) > now + 1.0 {
                let r = c.request(json!({"op":"verify","token":t}));
                assert_eq!(
                    r["ok"], true,
                    "token of {kid} (exp {exp}) fails at {now}: {r}"
                );
            }
        }
        for (kid, k) in keys.iter_mut() {
            // Shares are gone once the key stops signing (1s for the timer).
            if now > k.deactivate_at as f64 + 1.0 && checked_destroyed.insert(kid.clone()) {
                assert_eq!(
                    file_shares_of(&dir, kid),
                    0,
                    "file share of {kid} survives deactivation"
                );
                assert_eq!(
                    db_share_rows(&dir, kid),
                    0,
                    "db share of {kid} survives deactivation"
                );
            }
            // And the key leaves the JWKS at retire_at.
            if now > k.retire_at as f64 + 1.0 {
                assert!(
                    !published.contains(kid),
                    "{kid} still published after retire_at"
                );
                checked_retired.insert(kid.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        signed_by.len() >= 3,
        "at least three keys signed in turn: {signed_by:?}"
    );
    for kid in &signed_by[1..] {
        assert!(
            keys[kid].seen_pending,
            "{kid} was published as pending before it signed"
        );
        assert!(
            keys[kid].first_seen < keys[kid].activate_at as f64,
            "{kid} was published before its activation"
        );
    }
    assert!(checked_destroyed.len() >= 2, "{checked_destroyed:?}");
    assert!(!checked_retired.is_empty(), "a key was seen retired");
    // Only keys that may sign hold shares now.
    let files = dir.share_files().len();
    assert!(
        files <= 2,
        "at most the active and one pending key hold shares: {files}"
    );
}

#[test]
fn admin_rotate_keeps_old_tokens_and_emergency_kills_them() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t1 = ok(c.sign(json!({"sub":"a"})));
    let k1 = t1["kid"].as_str().unwrap().to_owned();

    // A normal rotation: new key signs, old tokens keep verifying.
    let out = dir.run(&["rotate"]);
    assert_ok(&out);
    let t2 = ok(c.sign(json!({"sub":"b"})));
    let k2 = t2["kid"].as_str().unwrap().to_owned();
    assert_ne!(k1, k2);
    ok(c.request(json!({"op":"verify","token":t1["token"]})));
    assert_eq!(
        file_shares_of(&dir, &k1),
        0,
        "the old key's shares are destroyed"
    );
    assert_eq!(db_share_rows(&dir, &k1), 0);

    // An emergency rotation: the current key's tokens stop verifying at once.
    let out = dir.run(&["rotate", "--emergency"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer verify"));
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":t2["token"]}))),
        "unknown_key"
    );
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        !kids.contains(&k2.as_str()),
        "the compromised key left the JWKS"
    );
    let t3 = ok(c.sign(json!({"sub":"c"})));
    assert!(t3["kid"] != k2.as_str() && t3["kid"] != k1.as_str());
    ok(c.request(json!({"op":"verify","token":t3["token"]})));
    // The emergency did not touch the earlier, normally rotated key.
    ok(c.request(json!({"op":"verify","token":t1["token"]})));

    // After a restart the state holds.
    drop(c);
    d.stop();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":t2["token"]}))),
        "unknown_key"
    );
    ok(c.request(json!({"op":"verify","token":t3["token"]})));
    assert_eq!(ok(c.sign(json!({})))["kid"], t3["kid"]);
}

/// The y bytes of the file share of `kid`.
#[test]
fn rotate_while_a_key_is_pending_retires_it_and_keeps_the_stores_whole() {
    // Keys sign for 10 s and the next one is pre-published 8 s ahead: a
    // successor is pending from the first seconds on.
    let dir = Dir::new();
    let cfg = fast_config(&dir, "10s", "8s", "");
    let d = Daemon::start_with(&dir, &["--config", &cfg]).unwrap();
    let pending_kid = |st: &serde_json::Value| {
        st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["state"] == "pending")
            .map(|k| k["kid"].as_str().unwrap().to_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let pending = loop {
        let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
        if let Some(k) = pending_kid(&st) {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "no successor pre-published: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Twice: the second rotation finds the first one's key still active.
    for _ in 0..2 {
        let out = dir.run(&["--config", &cfg, "rotate"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
    let state_of = |kid: &str| {
        st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].clone())
    };
    assert_eq!(
        state_of(&pending),
        None,
        "the pending key is withdrawn: {st}"
    );
    assert_eq!(file_shares_of(&dir, &pending), 0);
    assert_eq!(db_share_rows(&dir, &pending), 0);
    let active = st["active_kid"].as_str().unwrap().to_owned();
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], active.as_str());
    d.stop();
    // And the stores still belong together.
    let out = dir.run(&["--config", &cfg, "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start_with(&dir, &["--config", &cfg]).unwrap();
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], active.as_str());
    d.stop();
}

fn file_y(dir: &Dir, kid: &str) -> Vec<u8> {
    let p = dir
        .share_files()
        .into_iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(kid))
        .unwrap();
    let text = std::fs::read_to_string(p).unwrap();
    let y = text.lines().find(|l| l.starts_with("y ")).unwrap();
    B64.decode(&y[2..]).unwrap()
}

fn db_y(dir: &Dir, kid: &str) -> Vec<u8> {
    dir.sql()
        .query_row("SELECT y FROM db_shares WHERE kid = ?1", [kid], |r| {
            r.get(0)
        })
        .unwrap()
}

/// The public key that two shares (x = 1 file, x = 2 db) rebuild.
fn rebuilt_pk(file: &[u8], db: &[u8]) -> [u8; 32] {
    let a = sharks::Share::try_from(&[&[1u8][..], file].concat()[..]).unwrap();
    let b = sharks::Share::try_from(&[&[2u8][..], db].concat()[..]).unwrap();
    let seed: [u8; 32] = sharks::Sharks(2)
        .recover([&a, &b])
        .unwrap()
        .try_into()
        .unwrap();
    ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes()
}

#[test]
fn reshare_makes_old_shares_useless_keeps_the_kid_and_is_capped() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t = ok(c.sign(json!({"sub":"a"})));
    let kid = t["kid"].as_str().unwrap().to_owned();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let pk = B64.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let (old_file, old_db) = (file_y(&dir, &kid), db_y(&dir, &kid));
    assert_eq!(rebuilt_pk(&old_file, &old_db)[..], pk[..]);

    let out = dir.run(&["reshare"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2"));
    let (new_file, new_db) = (file_y(&dir, &kid), db_y(&dir, &kid));
    assert_eq!(
        rebuilt_pk(&new_file, &new_db)[..],
        pk[..],
        "the new pair is the same key"
    );
    assert_ne!(
        rebuilt_pk(&old_file, &new_db)[..],
        pk[..],
        "an old file share is useless"
    );
    assert_ne!(
        rebuilt_pk(&new_file, &old_db)[..],
        pk[..],
        "an old db share is useless"
    );
    assert_eq!(file_shares_of(&dir, &kid), 1, "the old file share is gone");
    assert!(dir.keys().join(format!("{kid}.2.share")).exists());
    assert_eq!(db_share_rows(&dir, &kid), 1);
    // Same key, same kid; earlier tokens verify.
    assert_eq!(ok(c.sign(json!({})))["kid"], kid.as_str());
    ok(c.request(json!({"op":"verify","token":t["token"]})));

    // Up to the cap of 16 generations, then refused with advice to rotate.
    for g in 3..=16 {
        let r = ok(c.request(json!({"op":"reshare"})));
        assert_eq!(r["keys"][0]["generation"], g);
    }
    let r = c.request(json!({"op":"reshare"}));
    assert_eq!(code(&r), "refused");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("rotate"),
        "{r}"
    );
    assert!(dir.keys().join(format!("{kid}.16.share")).exists());

    // And the daemon restarts on the last generation.
    drop(c);
    d.stop();
    let d = Daemon::start(&dir);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());
}

#[test]
fn recover_a_lost_file_share_or_db_share_from_the_recovery_share() {
    let dir = Dir::new();
    let out = dir.run(&["init", "--recovery-share", "rec.share"]);
    assert!(out.status.success());
    let d = Daemon::start(&dir);
    let t = ok(d.conn().sign(json!({"sub":"a"})));
    let kid = t["kid"].as_str().unwrap().to_owned();
    d.stop();
    let original_file = std::fs::read(dir.share_file()).unwrap();

    // Lose the file share.
    std::fs::remove_file(dir.share_file()).unwrap();
    let e = Daemon::start_with(&dir, &[])
        .err()
        .expect("refuses without the file share");
    assert_eq!(e.status.code(), Some(65));
    assert!(
        e.stderr.contains("splitsign recover"),
        "the error says the way back:\n{}",
        e.stderr
    );
    let out = dir.run(&["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the file share"));
    // The very same share comes back, so the recovery share stays valid.
    assert_eq!(std::fs::read(dir.share_file()).unwrap(), original_file);
    let d = Daemon::start(&dir);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());
    ok(d.conn().request(json!({"op":"verify","token":t["token"]})));
    d.stop();

    // Lose the database share.
    dir.sql().execute("DELETE FROM db_shares", []).unwrap();
    assert!(Daemon::start_with(&dir, &[]).is_err());
    let out = dir.run(&["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the database share"));
    let d = Daemon::start(&dir);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());

    // While a daemon runs, recover refuses and points at reshare.
    let out = dir.run(&["recover", "--recovery-share", "rec.share"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reshare"));
    d.stop();

    // Another deployment's recovery share is refused, nothing changes.
    let other = Dir::new();
    assert!(
        other
            .run(&["init", "--recovery-share", "rec.share"])
            .status
            .success()
    );
    std::fs::copy(
        other.path().join("rec.share"),
        dir.path().join("foreign.share"),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("foreign.share"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = dir.run(&["recover", "--recovery-share", "foreign.share"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to deployment"), "{err}");
}

#[test]
fn offline_rotate_is_the_way_back_when_a_store_is_lost() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let t = ok(d.conn().sign(json!({"sub":"a","aud":"api"})));
    let old = t["kid"].as_str().unwrap().to_owned();
    d.stop();
    // The database share is lost and there is no recovery share.
    dir.sql().execute("DELETE FROM db_shares", []).unwrap();
    let e = Daemon::start_with(&dir, &[]).err().expect("refused");
    assert_eq!(e.status.code(), Some(65));
    assert!(e.stderr.contains("splitsign rotate"), "{}", e.stderr);
    assert_eq!(dir.key_count(), 1, "no key was invented");

    let out = dir.run(&["rotate"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("offline"));
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let new = ok(c.sign(json!({})))["kid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    // The old public key stays published, so its tokens verify until exp.
    ok(c.request(json!({"op":"verify","token":t["token"]})));
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    crate::util::verify_with_jwks(t["token"].as_str().unwrap(), &jwks, "api");
    assert_eq!(
        file_shares_of(&dir, &old),
        0,
        "the old key's remaining share is destroyed"
    );
}

#[test]
fn check_and_offline_status() {
    let dir = Dir::new();
    assert!(dir.run(&["init"]).status.success());
    let out = dir.run(&["check"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuild its public key"));

    let out = dir.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("daemon not running") && text.contains("active"),
        "{text}"
    );
    let out = dir.run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    let k = &s["keys"][0];
    assert_eq!(
        s["next_transition"],
        k["deactivate_at"].as_i64().unwrap() - 3600
    );

    // check runs beside a daemon, read-only.
    let d = Daemon::start(&dir);
    assert!(dir.run(&["check"]).status.success());
    let out = dir.run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        s["uptime_s"].is_u64() && s["next_transition"].is_i64(),
        "{s}"
    );
    d.stop();

    // A damaged store: exit 65 and the reason.
    let p = dir.share_file();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0644"));
}

#[test]
fn the_jwks_file_follows_every_change() {
    let dir = Dir::new();
    let cfg = fast_config(&dir, "1h", "10m", "jwks_file = \"public/jwks.json\"\n");
    std::fs::create_dir(dir.path().join("public")).unwrap();
    let d = Daemon::start_with(&dir, &["--config", &cfg]).unwrap();
    let path = dir.path().join("public/jwks.json");
    let read = || serde_json::from_slice::<Value>(&std::fs::read(&path).unwrap()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the JWKS is public");
    let mut c = d.conn();
    assert_eq!(read(), ok(c.request(json!({"op":"jwks"})))["jwks"]);
    // A token keeps the old key published after the rotation, until it expires.
    ok(c.request(json!({"op":"sign","claims":{},"ttl":3})));
    let out = dir
        .cmd()
        .args(["--config", &cfg, "rotate"])
        .output()
        .unwrap();
    assert_ok(&out);
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    assert_eq!(read(), jwks);
}

#[test]
fn admin_ops_need_an_admin_uid() {
    if !rustix::process::geteuid().is_root() {
        return; // needs to switch to another uid
    }
    let dir = Dir::new();
    // The socket in a directory others may enter, group-owned by nogroup.
    let sockdir = dir.path().join("run");
    std::fs::create_dir(&sockdir).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sockdir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = sockdir.join("s.sock");
    let sock = sock.to_str().unwrap();
    let d = Daemon::start_with(&dir, &["--socket", sock]).unwrap();
    std::os::unix::fs::chown(sock, None, Some(65534)).unwrap();
    use std::os::unix::process::CommandExt;
    for op in ["rotate", "reload"] {
        let out = std::process::Command::new(crate::util::BIN)
            .args(["--socket", sock, op])
            .current_dir("/")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forbidden"),
            "{op}"
        );
    }
    // Nothing rotated; non-admin ops work for that uid.
    let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
    assert_eq!(st["keys"].as_array().unwrap().len(), 1);
    let out = std::process::Command::new(crate::util::BIN)
        .args(["--socket", sock, "sign", "--claim", "sub=x"])
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_ok(&out);
}

fn start_shifted(dir: &Dir, offset: &str) -> Daemon {
    let env = faketime(&[("FAKETIME", offset)]);
    Daemon::start_with_env(dir, &[], &env).unwrap()
}

#[test]
fn clock_jumps_rotate_once_forward_and_keep_the_key_backward() {
    if !crate::util::have_faketime() {
        return;
    }
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let k1 = ok(d.conn().sign(json!({})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    d.stop();

    // Backwards by a day: the active key stays active, with a warning.
    let d = start_shifted(&dir, "-1d");
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], k1.as_str());
    assert!(d.log().contains("clock went backwards"), "{}", d.log());
    assert_eq!(dir.key_count(), 1);
    d.stop();

    // Forwards by a year (52 rotation intervals): exactly one new key, no
    // catch-up storm.
    let d = start_shifted(&dir, "+365d");
    let k2 = ok(d.conn().sign(json!({})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(k2, k1);
    assert_eq!(
        dir.key_count(),
        2,
        "one rotation, not one per missed interval"
    );
    assert!(d.log().contains("rotation overdue"), "{}", d.log());
    let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
    assert_eq!(
        st["keys"].as_array().unwrap().len(),
        1,
        "the year-old key is retired: {st}"
    );
    d.stop();

    // Back to the real clock: a year behind the newest key. Keep it.
    let d = Daemon::start(&dir);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], k2.as_str());
    assert!(d.log().contains("clock went backwards"));
    assert_eq!(dir.key_count(), 2);
}
