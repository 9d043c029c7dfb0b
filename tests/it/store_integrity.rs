//! Store integrity on the real binary: an operator's mistakes (an old
//! database backup, the wrong `--db`, a share file from another host), a
//! clock that jumps and is corrected, stores removed under a running
//! daemon, reloads and rotations. None of them may destroy a key, and every
//! refusal must change nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::util::{
    Conn, Daemon, Dir, FakeClock, FakeSystemd, SignLoop, assert_ok, copy_dir, faketime,
    fixture_stores, initialised, jti_revocations, ok, signal, verify_with_jwks_at, wait_exit,
};

/// Every byte of the share directory and of the database file.
fn snapshot(dir: &Dir) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files: BTreeMap<PathBuf, Vec<u8>> = dir
        .share_files()
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.insert(dir.db(), std::fs::read(dir.db()).unwrap());
    files
}

/// Put a database file in place, as an operator restoring a backup does:
/// daemon stopped, `-wal` and `-shm` removed first.
fn restore(dir: &Dir, from: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut p = dir.db().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::copy(from, dir.db()).unwrap();
}

/// Start must fail with exit 65 and a message holding every needle, and
/// change no byte of either store.
fn assert_refused_unchanged(dir: &Dir, args: &[&str], needles: &[&str]) -> String {
    let before = snapshot(dir);
    let e = Daemon::start_with(dir, args)
        .err()
        .expect("the daemon must refuse to start");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    for n in needles.iter().chain(&["Nothing was deleted or changed"]) {
        assert!(e.stderr.contains(n), "stderr lacks {n:?}:\n{}", e.stderr);
    }
    assert_eq!(snapshot(dir), before, "a refused start changed a store");
    e.stderr
}

fn field(resp: &Value, k: &str) -> String {
    resp[k].as_str().unwrap().to_owned()
}

fn run_ok(dir: &Dir, args: &[&str]) -> String {
    let out = dir.run(args);
    assert_ok(&out);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_old_database_backup_after_rotate_is_refused_and_the_current_one_still_signs() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t1 = ok(c.sign(json!({"sub":"a"})));
    // A backup beside the running daemon, then a rotation.
    run_ok(&dir, &["backup", "old.db"]);
    let k2 = field(&ok(c.request(json!({"op":"rotate"}))), "kid");
    let t2 = ok(c.sign(json!({"sub":"b"})));
    assert_eq!(t2["kid"], k2.as_str());
    drop(c);
    d.stop();
    // After a clean stop the database file alone is complete.
    std::fs::copy(dir.db(), dir.path().join("current.db")).unwrap();

    restore(&dir, &dir.path().join("old.db"));
    let stderr = assert_refused_unchanged(&dir, &[], &["database looks older", &k2]);
    assert!(!stderr.contains("removed"), "{stderr}");
    // `check` says the same, and changes nothing either.
    let before = snapshot(&dir);
    let out = dir.run(&["check"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("database looks older"));
    assert_eq!(snapshot(&dir), before);

    // The current database back: the rotated key signs, both tokens verify.
    restore(&dir, &dir.path().join("current.db"));
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    assert_eq!(ok(c.sign(json!({})))["kid"], k2.as_str());
    for t in [&t1, &t2] {
        ok(c.request(json!({"op":"verify","token":t["token"]})));
    }
}

#[test]
fn a_database_of_another_deployment_is_refused_and_nothing_changes() {
    let (a, _) = initialised();
    let (b, _) = initialised();
    let b_db = std::fs::read(b.db()).unwrap();
    let b_db_path = b.db();
    let before = a.share_files();
    let e = Daemon::start_with(&a, &["--db", b_db_path.to_str().unwrap()])
        .err()
        .expect("refused");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    assert!(
        e.stderr.contains("another deployment") && e.stderr.contains("Nothing was deleted"),
        "{}",
        e.stderr
    );
    assert_eq!(a.share_files(), before);
    assert_eq!(std::fs::read(b.db()).unwrap(), b_db);
    // And each deployment still starts on its own stores.
    ok(Daemon::start(&a).conn().sign(json!({})));
    ok(Daemon::start(&b).conn().sign(json!({})));
}

#[test]
fn a_share_file_of_another_deployment_is_refused_by_name() {
    let (a, _) = initialised();
    let (b, _) = initialised();
    let foreign = a.keys().join(b.share_file().file_name().unwrap());
    std::fs::copy(b.share_file(), &foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_refused_unchanged(
        &a,
        &[],
        &[foreign.to_str().unwrap(), "belong to another deployment"],
    );
    assert!(foreign.exists(), "the foreign file is left alone");
}

#[test]
fn a_share_generation_mismatch_either_way_is_refused() {
    let (dir, kid) = initialised();
    let keys_gen1 = dir.path().join("keys-gen1");
    std::fs::create_dir(&keys_gen1).unwrap();
    copy_dir(&dir.keys(), &keys_gen1);
    run_ok(&dir, &["backup", "gen1.db"]);
    let out = run_ok(&dir, &["reshare"]);
    assert!(out.contains("generation 2"), "{out}");
    run_ok(&dir, &["backup", "gen2.db"]);

    // The database of before the re-split, the share directory of after.
    restore(&dir, &dir.path().join("gen1.db"));
    assert_refused_unchanged(
        &dir,
        &[],
        &["database looks older", &kid, "generation 1", "generation 2"],
    );
    // The database of after, the share directory of before.
    restore(&dir, &dir.path().join("gen2.db"));
    let keys_gen2 = dir.path().join("keys-gen2");
    std::fs::rename(dir.keys(), &keys_gen2).unwrap();
    std::fs::rename(&keys_gen1, dir.keys()).unwrap();
    assert_refused_unchanged(&dir, &[], &["database looks newer", &kid]);
    // Matching stores again: it starts and signs.
    std::fs::remove_dir_all(dir.keys()).unwrap();
    std::fs::rename(&keys_gen2, dir.keys()).unwrap();
    assert_eq!(
        ok(Daemon::start(&dir).conn().sign(json!({})))["kid"],
        kid.as_str()
    );
}

#[test]
fn a_backup_made_beside_a_running_daemon_restores_and_starts() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let kept = ok(c.sign(json!({"sub":"kept"})));
    let gone = ok(c.sign(json!({"sub":"gone"})));
    ok(c.request(json!({"op":"revoke","token":gone["token"]})));
    // Signing goes on while the backup runs.
    let signer = SignLoop::start(&d.socket, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(100));
    let out = run_ok(&dir, &["backup", "b.db"]);
    assert!(signer.stop() > 0);
    assert!(out.contains("not in it"), "{out}");
    let backup = dir.path().join("b.db");
    let meta = std::fs::metadata(&backup).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    for suffix in ["-wal", "-shm"] {
        let mut p = backup.clone().into_os_string();
        p.push(suffix);
        assert!(!Path::new(&p).exists(), "the backup is one file");
    }
    // The file share is not in it.
    let share = std::fs::read_to_string(dir.share_file()).unwrap();
    let y = share.lines().find_map(|l| l.strip_prefix("y ")).unwrap();
    let y = B64.decode(y).unwrap();
    let bytes = std::fs::read(&backup).unwrap();
    assert!(!bytes.windows(y.len()).any(|w| w == y.as_slice()));
    // It never replaces a file, and never goes into the share directory.
    let out = dir.run(&["backup", "b.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = dir.run(&["backup", "keys/db.backup"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("share directory"));
    assert!(!dir.keys().join("db.backup").exists());
    drop(c);
    d.stop();

    // Lose the database; restore the backup; the same key signs.
    std::fs::remove_dir_all(dir.path().join("var")).unwrap();
    std::fs::create_dir(dir.path().join("var")).unwrap();
    restore(&dir, &backup);
    let out = run_ok(&dir, &["check"]);
    assert!(out.contains("belong together"), "{out}");
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    assert_eq!(ok(c.sign(json!({})))["kid"], kept["kid"]);
    ok(c.request(json!({"op":"verify","token":kept["token"]})));
    let r = c.request(json!({"op":"verify","token":gone["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
}

#[test]
fn after_sigterm_the_database_file_alone_lists_every_key() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    ok(c.sign(json!({})));
    ok(c.request(json!({"op":"rotate"})));
    ok(c.sign(json!({})));
    drop(c);
    d.stop();
    let copy = dir.path().join("copy.db");
    std::fs::copy(dir.db(), &copy).unwrap();
    let sql = rusqlite::Connection::open(&copy).unwrap();
    let keys: i64 = sql
        .query_row("SELECT count(*) FROM keys", [], |r| r.get(0))
        .unwrap();
    let audit: i64 = sql
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(keys, 2, "both keys are in the .db file itself");
    assert!(audit >= 3, "the audit records too ({audit})");
}

#[test]
fn removing_the_database_under_a_running_daemon_stops_tokens_and_the_watchdog() {
    let dir = Dir::new();
    let sd = FakeSystemd::new(&dir);
    let mut child = sd.spawn(&dir, &[], &[("WATCHDOG_USEC", "1000000")]);
    sd.expect("READY=1", Duration::from_secs(20));
    sd.expect("WATCHDOG=1", Duration::from_secs(5));
    let mut c = Conn::open(&sd.socket).unwrap();
    ok(c.sign(json!({})));

    // rm var/splitsign.db*
    for entry in std::fs::read_dir(dir.path().join("var")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("splitsign.db")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let removed = Instant::now();
    // No token leaves after the removal: at first because its audit record
    // would not be in the database at the configured path, then because
    // the daemon noticed and stopped signing.
    let mut noticed = None;
    while removed.elapsed() < Duration::from_secs(3) {
        let r = c.sign(json!({}));
        assert_eq!(r["ok"], false, "a token was issued after the removal: {r}");
        if noticed.is_none() && r["error"]["code"] == "unavailable" {
            noticed = Some(removed.elapsed());
            assert!(
                r["error"]["message"].as_str().unwrap().contains("changed"),
                "{r}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let noticed = noticed.expect("the daemon never said it stopped signing");
    assert!(
        noticed <= Duration::from_secs(1),
        "noticed after {noticed:?}"
    );
    let st = ok(c.request(json!({"op":"status"})));
    assert!(
        st["status"]["store_fault"]
            .as_str()
            .unwrap()
            .contains("removed")
    );

    // The watchdog stops (pings every 0.5 s while healthy) and STATUS says why.
    let mut status = None;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(m) = sd.next(Duration::from_millis(200)) {
            assert!(
                !m.lines().any(|l| l == "WATCHDOG=1") || removed.elapsed() < Duration::from_secs(1),
                "a watchdog ping {:?} after the removal",
                removed.elapsed()
            );
            if let Some(s) = m.lines().find(|l| l.starts_with("STATUS=not signing")) {
                status = Some(s.to_owned());
            }
        }
    }
    let status = status.expect("STATUS= must say why the daemon does not sign");
    assert!(status.contains("removed"), "{status}");
    signal(&child, rustix::process::Signal::TERM);
    wait_exit(&mut child, Duration::from_secs(15));
}

#[test]
fn a_clock_jump_forward_then_corrected_signs_with_real_times_again() {
    if !crate::util::have_faketime() {
        return;
    }
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let k1 = field(&ok(d.conn().sign(json!({}))), "kid");
    d.stop();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let claims = |token: &str| -> Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
    };

    // The clock jumps 30 days ahead (libfaketime re-reads the offset file
    // at every call), the daemon starts and rotates once.
    let clock = FakeClock::new(&dir, "+30d");
    let d = Daemon::start_with_env(&dir, &[], &clock.env()).unwrap();
    let mut c = d.conn();
    let ahead = ok(c.sign(json!({})));
    let k2 = field(&ahead, "kid");
    assert_ne!(k2, k1, "the jump made the first key overdue");
    let iat = claims(ahead["token"].as_str().unwrap())["iat"]
        .as_i64()
        .unwrap();
    assert!((iat - now() - 30 * 86400).abs() <= 2, "iat {iat}");

    // A client signs all through the correction: never refused.
    let steady = SignLoop::start(&d.socket, Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(200));
    clock.set("+0");
    let corrected = Instant::now();
    // Every token signed after the correction carries real times, and
    // verifies with the daemon and with jsonwebtoken checking nbf.
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    while corrected.elapsed() < Duration::from_secs(1) {
        let t = ok(c.sign(json!({})));
        let token = t["token"].as_str().unwrap();
        let iat = claims(token)["iat"].as_i64().unwrap();
        assert!((iat - now()).abs() <= 2, "iat {iat} after the correction");
        assert_eq!(t["kid"], k2.as_str(), "the key made during the jump signs");
        ok(c.request(json!({"op":"verify","token":token})));
        verify_with_jwks_at(token, &jwks, None);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(steady.stop() > 10);
    // The token minted while the clock was ahead no longer verifies.
    let r = c.request(json!({"op":"verify","token":ahead["token"]}));
    assert_eq!(r["error"]["code"], "token_not_yet_valid", "{r}");
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert!(st["clock_behind_s"].as_i64().unwrap() > 29 * 86400, "{st}");
    drop(c);
    d.stop();

    // After a restart on the real clock: the same key, real times.
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t = ok(c.sign(json!({})));
    assert_eq!(t["kid"], k2.as_str(), "no key lost, none invented");
    let token = t["token"].as_str().unwrap();
    assert!((claims(token)["iat"].as_i64().unwrap() - now()).abs() <= 2);
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    verify_with_jwks_at(token, &jwks, None);
    assert_eq!(dir.key_count(), 2);
}

/// What the daemon keeps: its jti revocations, and the audit rows up to
/// `seq` (the log's records are numbered from 1).
fn kept(c: &mut Conn, dir: &Dir, seq: i64) -> (usize, i64) {
    let rows: i64 = dir
        .sql()
        .query_row("SELECT count(*) FROM audit WHERE seq <= ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    (jti_revocations(c), rows)
}

#[test]
fn a_clock_stepped_forward_then_corrected_forgets_no_revocation_and_no_audit_record() {
    if !crate::util::have_faketime() {
        return;
    }
    let dir = Dir::new();
    let cfg = dir.write_config(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\naudit_retention = \"1h\"\n",
    );
    let clock = FakeClock::new(&dir, "+0");
    let d =
        Daemon::start_with_env(&dir, &["--config", cfg.to_str().unwrap()], &clock.env()).unwrap();
    let started = Instant::now();
    let mut c = d.conn();
    let t = ok(c.sign(json!({"sub":"alice"})));
    ok(c.request(json!({"op":"revoke","jti":t["jti"],"exp":t["exp"]})));
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    let (revoked, records) = kept(&mut c, &dir, i64::MAX);
    assert_eq!(revoked, 1);
    assert!(records >= 2, "{records}");

    // The system clock steps 3 days ahead: the token has expired, and so
    // has the revocation (by more than its day of grace), by that clock.
    // A reload runs the schedule, whose purge must not follow the jump;
    // the audit retention (1 hour) runs 10 s after start and must not
    // either. Both say so in the log.
    clock.set("+3d");
    d.signal(rustix::process::Signal::HUP);
    let said = |log: &str| {
        log.contains("revocations of expired tokens are purged by the measured time")
            && log.contains("audit records past the retention are purged by the measured time")
    };
    let deadline = started + Duration::from_secs(40);
    while !said(&d.log()) {
        assert_eq!(
            kept(&mut c, &dir, records),
            (1, records),
            "forgotten at the jumped time:\n{}",
            d.log()
        );
        assert!(
            Instant::now() < deadline,
            "no purge held back after the jump:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "token_expired", "{r}");
    assert_eq!(
        kept(&mut c, &dir, records),
        (1, records),
        "nothing forgotten at the wrong time"
    );

    // The clock is set right: the token is valid by time again, and still
    // revoked.
    clock.set("+0");
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    // Another schedule step on the right clock changes nothing either.
    d.hup_and_wait("reloaded the config");
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    drop(c);
    let log = d.stop();
    assert!(!log.contains("purged the revocations"), "{log}");
    assert!(!log.contains("pruned the audit log"), "{log}");
    assert_ok(&dir.run(&["audit", "--verify"]));
}

#[test]
fn a_revocation_is_kept_a_day_past_its_token_then_purged() {
    if !crate::util::have_faketime() {
        return;
    }
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    // One token of the default 15 minutes, and a revocation kept 10 days.
    let t = ok(c.sign(json!({"sub":"alice"})));
    ok(c.request(json!({"op":"revoke","jti":t["jti"],"exp":t["exp"]})));
    let far = t["exp"].as_i64().unwrap() + 10 * 86_400;
    ok(c.request(json!({"op":"revoke","jti":"long-lived","exp":far})));
    drop(c);
    d.stop();
    let rows = || -> i64 {
        dir.sql()
            .query_row("SELECT count(*) FROM revocations", [], |r| r.get(0))
            .unwrap()
    };
    let revoked_at = |offset: &str| {
        let env = faketime(&[("FAKETIME", offset)]);
        let d = Daemon::start_with_env(&dir, &[], &env).unwrap();
        let n = jti_revocations(&mut d.conn());
        d.stop();
        n
    };
    // Started 20 hours later (a hardware clock kept in local time, before
    // NTP sets it right, looks the same): the expired token's revocation
    // is kept.
    assert_eq!(revoked_at("+20h"), 2);
    assert_eq!(rows(), 2);
    // Two days later: purged, and the other kept.
    assert_eq!(revoked_at("+2d"), 1);
    assert_eq!(rows(), 1);
}

#[test]
fn an_alg_change_by_reload_keeps_every_token_verifying() {
    let dir = Dir::new();
    let base =
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n";
    let cfg = dir.write_config(&format!("{base}alg = \"EdDSA\"\n"));
    let d = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap();
    let mut c = d.conn();
    let before = ok(c.sign(json!({})));
    dir.write_config(&format!("{base}alg = \"Ed25519\"\n"));
    d.hup_and_wait("reloaded the config");
    // The active key keeps its label; the next key takes the new one.
    let after = ok(c.sign(json!({})));
    let k2 = field(&ok(c.request(json!({"op":"rotate"}))), "kid");
    let new = ok(c.sign(json!({})));
    assert_eq!(new["kid"], k2.as_str());
    let header = |t: &Value| -> Value {
        let h = t["token"].as_str().unwrap().split('.').next().unwrap();
        serde_json::from_slice(&B64.decode(h).unwrap()).unwrap()
    };
    assert_eq!(header(&before)["alg"], "EdDSA");
    assert_eq!(header(&after)["alg"], "EdDSA");
    assert_eq!(header(&new)["alg"], "Ed25519");
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    for t in [&before, &after, &new] {
        ok(c.request(json!({"op":"verify","token":t["token"]})));
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == t["kid"])
            .unwrap();
        assert_eq!(jwk["alg"], header(t)["alg"], "each JWK has its key's label");
    }
    // jsonwebtoken knows only `EdDSA`: the tokens of the old key, from
    // before and after the reload, verify with it against the JWKS. The
    // new key's `Ed25519` token is checked with the JWK directly.
    verify_with_jwks_at(before["token"].as_str().unwrap(), &jwks, None);
    verify_with_jwks_at(after["token"].as_str().unwrap(), &jwks, None);
    let token = new["token"].as_str().unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == new["kid"])
        .unwrap();
    let x: [u8; 32] = B64
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sig: [u8; 64] = B64.decode(sig).unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&x)
        .unwrap()
        .verify_strict(
            input.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .expect("the Ed25519-labelled token verifies against its JWK");
    // After a restart the labels are the same (they are stored).
    drop(c);
    d.stop();
    let d = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap();
    let mut c = d.conn();
    for t in [&before, &after, &new] {
        ok(c.request(json!({"op":"verify","token":t["token"]})));
    }
}

#[test]
fn rotate_publishes_the_old_key_only_as_long_as_its_tokens_need() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t = ok(c.request(json!({"op":"sign","claims":{},"ttl":120})));
    let old = field(&t, "kid");
    ok(c.request(json!({"op":"rotate"})));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    let key = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old.as_str())
        .unwrap()
        .clone();
    let retire = key["retire_at"].as_i64().unwrap();
    let exp = t["exp"].as_i64().unwrap();
    // Defaults: max_ttl 1h, leeway 60s. Its one token ends at exp + leeway.
    assert!(retire <= now + 3600 + 60 + 2, "retire_at {retire}");
    assert_eq!(retire, exp + 60, "no later than its latest token needs");
    ok(c.request(json!({"op":"verify","token":t["token"]})));
    drop(c);
    d.stop();
    // Offline, the tokens it issued are unknown: at most now + max_ttl.
    run_ok(&dir, &["rotate"]);
    let st: Value = serde_json::from_str(&run_ok(&dir, &["status", "--json"])).unwrap();
    let now = now + 1;
    for k in st["keys"].as_array().unwrap() {
        assert!(k["retire_at"].as_i64().unwrap() <= now + 3600 + 60 + 2 + 7 * 86400);
        if k["state"] == "retiring" {
            assert!(
                k["retire_at"].as_i64().unwrap() <= now + 3600 + 60 + 2,
                "{k}"
            );
        }
    }
}

#[test]
fn a_reload_applies_timeouts_and_refuses_what_needs_a_restart_by_name() {
    let dir = Dir::new();
    let base =
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n";
    let cfg = dir.write_config(base);
    let d = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap();
    for (setting, line) in [
        ("audit", "audit = false\n"),
        ("audit_sync", "audit_sync = \"normal\"\n"),
        ("max_connections", "max_connections = 100\n"),
    ] {
        dir.write_config(&format!("{base}{line}"));
        d.hup_and_wait("reload refused");
        let log = d.log();
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("reload refused"))
            .unwrap();
        assert!(last.contains(&format!("`{setting}`")), "{last}");
    }
    // A timeout is applied: an idle connection now closes after 1s.
    dir.write_config(&format!("{base}idle_timeout = \"1s\"\n"));
    d.hup_and_wait("reloaded the config");
    let mut c = d.conn();
    ok(c.request(json!({"op":"ping"})));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.is_closed(), "idle_timeout was not applied by the reload");
}

#[test]
fn stores_made_by_0_1_upgrade_in_place_and_keep_every_token() {
    if !crate::util::have_faketime() {
        return;
    }
    let (dir, expect) = fixture_stores("stores-v1");
    // Run at the time the fixture was made (its tokens live an hour).
    let made_at = expect["made_at"].as_i64().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let offset = format!("{:+}s", made_at + 60 - real);
    let env = faketime(&[("FAKETIME", offset.as_str())]);
    let cfg = dir.path().join("config.toml");
    let args = ["--config", cfg.to_str().unwrap()];

    for start in 0..2 {
        let d = Daemon::start_with_env(&dir, &args, &env).unwrap();
        if start == 0 {
            assert!(d.log().contains("added the deployment id"), "{}", d.log());
        }
        let mut c = d.conn();
        let st = ok(c.request(json!({"op":"status"})))["status"].clone();
        assert_eq!(st["active_kid"], expect["status"]["active_kid"]);
        let kids = |s: &Value| -> Vec<Value> {
            s["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].clone())
                .collect()
        };
        assert_eq!(kids(&st), kids(&expect["status"]), "no key lost");
        assert!(
            st["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["alg"] == "EdDSA")
        );
        for t in expect["valid"].as_array().unwrap() {
            ok(c.request(json!({"op":"verify","token":t})));
        }
        for t in expect["revoked"].as_array().unwrap() {
            let r = c.request(json!({"op":"verify","token":t}));
            assert_eq!(r["error"]["code"], "revoked", "{r}");
        }
        assert_eq!(ok(c.sign(json!({})))["kid"], st["active_kid"]);
        // The share file now carries the database's deployment id (and,
        // format 3, its key's alg label).
        let text = std::fs::read_to_string(dir.share_file()).unwrap();
        assert!(text.contains("\nalg EdDSA\n"), "{text}");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("splitsign-share 3"));
        let id = lines
            .next()
            .unwrap()
            .strip_prefix("deployment ")
            .unwrap()
            .to_owned();
        assert_eq!(st["deployment"], id.as_str());
        drop(c);
        d.stop();
    }
    let out = dir
        .cmd()
        .args(args)
        .args(["audit", "--verify"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_ok(&out);
    let out = dir
        .cmd()
        .args(args)
        .arg("check")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_ok(&out);
}
