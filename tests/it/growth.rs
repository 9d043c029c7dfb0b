//! The daemon as its work grows: pipelined admin sessions and mass
//! revocations (one transaction per batch, replies in request order, never
//! cut off, no answered one lost to a kill -9, none in force that a full
//! disk refused, within the thread budget), and the schema 6
//! representation changes upgrading a database made by schema 5 without
//! losing anything.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{
    Daemon, Dir, FakeSystemd, assert_ok, faketime, fixture_stores, jti_revocations, ok,
};

fn jti(i: usize) -> String {
    use base64::Engine;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    b[15] = 0x5a;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn a_long_pipelined_admin_session_is_answered_in_order_and_never_cut_off() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let token = ok(c.sign(json!({"sub":"x"})))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let exp = crate::util::now() + 3600;
    // 40,000 revokes written in one go by one thread, with a verify, a
    // sign, a bad line and a status among them; the replies read here.
    let n = 40_000;
    let mut lines = Vec::new();
    for i in 0..n {
        let line = match i {
            1000 => json!({"id": i, "op": "verify", "token": token}),
            2000 => json!({"id": i, "op": "sign", "claims": {"sub": "y"}}),
            3000 => json!({"id": i, "op": "revoke", "jti": 7}),
            4000 => json!({"id": i, "op": "status"}),
            _ => json!({"id": i, "op": "revoke", "jti": jti(i), "exp": exp}),
        };
        lines.extend_from_slice(line.to_string().as_bytes());
        lines.push(b'\n');
    }
    let s = UnixStream::connect(&d.socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&lines).unwrap());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        let got = r.read_line(&mut line).unwrap();
        assert!(got > 0, "the session was cut off after {i} of {n} replies");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], i, "replies in request order: {line}");
        match i {
            1000 => assert_eq!(v["ok"], true, "{v}"),
            2000 => assert!(v["token"].is_string(), "{v}"),
            3000 => assert_eq!(v["error"]["code"], "invalid_request", "{v}"),
            4000 => assert!(v["status"].is_object(), "{v}"),
            _ => assert_eq!(v["revoked"], "jti", "{v}"),
        }
    }
    writer.join().unwrap();
    // Every one took effect, and every one has its audit record.
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert_eq!(jti_revocations(&mut c), n - 4);
    assert_eq!(st["store_fault"], Value::Null);
    let records = crate::util::wait_for_count(&dir, "revoke", "ok", (n - 4) as i64);
    assert_eq!(records, (n - 4) as i64);
    d.stop();
    // They are durable: a restart knows them.
    let d = Daemon::start(&dir);
    assert_eq!(jti_revocations(&mut d.conn()), n - 4);
}

fn write_lines(path: &Path, values: &[String]) {
    let mut text = String::from("# a mass logout\n\n");
    for v in values {
        text.push_str(v);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn mass_revocation_from_files_through_the_daemon_and_offline() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let signed: Vec<Value> = (0..20)
        .map(|i| ok(c.sign(json!({"sub": format!("user-{i}")}))))
        .collect();
    // The ids of the first ten tokens among 30,000 others.
    let mut ids: Vec<String> = (0..30_000).map(jti).collect();
    ids.extend(
        signed[..10]
            .iter()
            .map(|s| s["jti"].as_str().unwrap().to_owned()),
    );
    let file = dir.path().join("jtis.txt");
    write_lines(&file, &ids);
    let out = dir.run(&["revoke", "--jti-file", file.to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("revoked 30010 jti value(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (i, s) in signed.iter().enumerate() {
        let r = c.request(json!({"op":"verify","token":s["token"]}));
        if i < 10 {
            assert_eq!(r["error"]["code"], "revoked", "{r}");
        } else {
            assert_eq!(r["ok"], true, "{r}");
        }
    }
    // A subject file: their tokens issued until now.
    let subs = dir.path().join("subs.txt");
    write_lines(&subs, &["user-15".into(), "user-16".into()]);
    assert_ok(&dir.run(&["revoke", "--sub-file", subs.to_str().unwrap()]));
    for i in [15, 16] {
        let r = c.request(json!({"op":"verify","token":signed[i]["token"]}));
        assert_eq!(r["error"]["code"], "revoked", "{r}");
    }
    // A line that is too long is refused with its place, nothing sent.
    let bad = dir.path().join("bad.txt");
    write_lines(&bad, &["ok".into(), "x".repeat(2000)]);
    let out = dir.run(&["revoke", "--sub-file", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.txt:4"));
    drop(c);
    d.stop();
    // Offline (no daemon): one transaction; the next start applies it.
    write_lines(&subs, &["user-17".into()]);
    let out = dir.run(&["revoke", "--sub-file", subs.to_str().unwrap()]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("offline"));
    let d = Daemon::start(&dir);
    let r = d
        .conn()
        .request(json!({"op":"verify","token":signed[17]["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    assert_eq!(
        d.conn()
            .request(json!({"op":"verify","token":signed[18]["token"]}))["ok"],
        true
    );
}

#[test]
fn a_schema_upgrade_keeps_systemd_waiting_and_a_read_only_command_says_how_to_upgrade() {
    let (dir, _) = fixture_stores("stores-v5");
    // `check` only reads: it refuses an old schema and says what to do.
    let out = dir
        .cmd()
        .args(["--config", "config.toml", "check"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("schema version 5") && err.contains("splitsign serve"),
        "{err}"
    );
    // Under systemd, the upgrade says so in STATUS= and asks for more
    // time (EXTEND_TIMEOUT_USEC) before READY=1.
    let m = FakeSystemd::new(&dir);
    let path = dir.write_config(&m.config(""));
    // Stopped by pid when dropped.
    let _daemon = m.spawn(&dir, &["--config", path.to_str().unwrap()], &[]);
    let upgrading = m.expect("EXTEND_TIMEOUT_USEC=", Duration::from_secs(20));
    assert!(
        upgrading.contains("STATUS=not ready: upgrading the database schema from version 5 to 8"),
        "{upgrading}"
    );
    m.expect("READY=1", Duration::from_secs(20));
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("upgrading the database schema"), "{log}");
}

#[test]
fn schema_5_stores_upgrade_without_losing_a_token_a_revocation_or_a_record() {
    if !crate::util::have_faketime() {
        return;
    }
    let (dir, expect) = fixture_stores("stores-v5");
    let before: Vec<(i64, Option<String>, Option<String>)> = {
        let sql = dir.sql();
        let mut stmt = sql
            .prepare("SELECT seq, kid, jti FROM audit ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(before.len(), 27, "the fixture's chain");
    // At the time the fixture was made: its tokens live an hour.
    let made_at = expect["made_at"].as_i64().unwrap();
    let offset = format!("{:+}s", made_at + 60 - crate::util::now());
    let env = faketime(&[("FAKETIME", offset.as_str())]);
    let args = ["--config", "config.toml"];
    let d = Daemon::start_with_env(&dir, &args, &env).unwrap();
    let mut c = d.conn();
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert_eq!(st["active_kid"], expect["status"]["active_kid"]);
    assert_eq!(st["deployment"], expect["status"]["deployment"]);
    for t in expect["valid"].as_array().unwrap() {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    for t in expect["revoked"].as_array().unwrap() {
        let r = c.request(json!({"op":"verify","token":t}));
        assert_eq!(r["error"]["code"], "revoked", "{r}");
    }
    ok(c.sign(json!({"sub":"after"})));
    drop(c);
    d.stop();
    // The new representation: no prev_hash, kids by number; the same
    // records, read back with their kids, and the chain verifies across
    // the upgrade (old records and the new one).
    let sql = dir.sql();
    let version: i64 = sql
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    // Schema 6, 7 after it (the cluster's seen revocations: empty here),
    // and 8 (the keys table rebuilt for ES256 keys, its rows and shares
    // kept).
    assert_eq!(version, 8);
    let columns: Vec<String> = sql
        .prepare("SELECT name FROM pragma_table_info('audit')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!columns.contains(&"prev_hash".to_owned()), "{columns:?}");
    let after: Vec<(i64, Option<String>, Option<String>)> = {
        let mut stmt = sql
            .prepare(
                "SELECT a.seq, k.kid, a.jti FROM audit a LEFT JOIN audit_kid k ON k.id = a.kid
                 ORDER BY a.seq",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "every record, as it was"
    );
    assert!(after.len() > before.len());
    let revocations: i64 = sql
        .query_row("SELECT count(*) FROM revocations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(revocations, 2);
    let audit_verify = || {
        dir.cmd()
            .args(args)
            .args(["audit", "--verify"])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = audit_verify();
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{} records", after.len())), "{text}");
    // An edit to an old record is still found after the upgrade.
    sql.execute("UPDATE audit SET jti = 'forged' WHERE seq = 5", [])
        .unwrap();
    let out = audit_verify();
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_kill_9_during_the_schema_upgrade_leaves_schema_5_whole_and_the_next_start_finishes_it() {
    if !crate::util::have_faketime() {
        return;
    }
    let (dir, expect) = fixture_stores("stores-v5");
    // A long audit log, so that the rewrite takes a while: the fixture's
    // last record, a million times more (their hashes do not chain; only
    // the rows and the schema are checked here).
    const MORE: i64 = 1_000_000;
    let count = |sql: &rusqlite::Connection| -> i64 {
        sql.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .unwrap()
    };
    let version = |sql: &rusqlite::Connection| -> i64 {
        sql.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    let before = {
        let sql = dir.sql();
        let last: i64 = sql
            .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
            .unwrap();
        sql.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MORE})
             INSERT INTO audit (seq, at, uid, pid, op, kid, sub, jti, result, prev_hash, hash, count)
             SELECT {last} + i, a.at, a.uid, a.pid, a.op, a.kid, a.sub, 'j' || i, a.result,
                    a.prev_hash, a.hash, a.count
             FROM n, (SELECT * FROM audit WHERE seq = {last}) a"
        ))
        .unwrap();
        assert_eq!(version(&sql), 5);
        count(&sql)
    };
    // The upgrade begins (the journal says so first).
    let log = dir.path().join("upgrade.log");
    let mut daemon = crate::util::Started::spawn(
        dir.cmd()
            .args(["--config", "config.toml", "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("upgrading the database schema")
    {
        assert!(std::time::Instant::now() < deadline, "no upgrade began");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Killed in the middle of the rewrite: once its pages reach the WAL,
    // uncommitted.
    let wal = dir.path().join("var/splitsign.db-wal");
    while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rewrite wrote nothing: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    {
        let sql = dir.sql();
        let ok: String = sql
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        assert_eq!(version(&sql), 5, "the interrupted upgrade left schema 5");
        assert_eq!(count(&sql), before, "every record of schema 5 is there");
    }
    // The next start upgrades it whole, and serves the same key.
    let made_at = expect["made_at"].as_i64().unwrap();
    let offset = format!("{:+}s", made_at + 60 - crate::util::now());
    let env = faketime(&[("FAKETIME", offset.as_str())]);
    let d = Daemon::start_with_env(&dir, &["--config", "config.toml"], &env).unwrap();
    let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
    assert_eq!(st["active_kid"], expect["status"]["active_kid"]);
    d.stop();
    let sql = dir.sql();
    // Schema 6, then 7 (which adds the cluster's seen revocations), then 8
    // (the keys table rebuilt for ES256, its rows and shares kept).
    assert_eq!(version(&sql), 8);
    assert!(count(&sql) >= before, "no record lost in the upgrade");
}

/// kill -9 while a pipelined mass revocation is being stored, three times:
/// after a restart every revoke that was answered is in force.
#[test]
fn a_kill_9_during_a_pipelined_mass_revocation_loses_no_answered_revoke() {
    let dir = Dir::new();
    let rounds = 3;
    let real_per_round = 500;
    let synthetic_per_round = 20_000;
    // Real tokens first, so that a revocation's effect is seen by verify.
    let tokens: Vec<(String, String, i64)> = {
        let d = Daemon::start(&dir);
        let mut c = d.conn();
        let t = (0..rounds * real_per_round)
            .map(|i| {
                let s = ok(c.sign(json!({"sub": format!("user-{i}")})));
                (
                    s["token"].as_str().unwrap().to_owned(),
                    s["jti"].as_str().unwrap().to_owned(),
                    s["exp"].as_i64().unwrap(),
                )
            })
            .collect();
        d.stop();
        t
    };
    let exp = crate::util::now() + 3600;
    let mut answered_real = std::collections::BTreeSet::new();
    let mut answered_total = 0;
    for round in 0..rounds {
        let d = Daemon::start(&dir);
        // One connection pipelines 20,500 revokes (a real token's jti every
        // 41st line); the daemon is killed once 2,000 have been answered,
        // in the middle of the stream (usually inside a batch's
        // transaction); replies already sent still count as answered.
        let mut lines = Vec::new();
        let mut real = Vec::new();
        let mut r = 0;
        for i in 0..real_per_round + synthetic_per_round {
            let line = if i % 41 == 0 && r < real_per_round {
                let k = round * real_per_round + r;
                r += 1;
                real.push((lines.len(), k));
                json!({"id": i, "op": "revoke", "jti": tokens[k].1, "exp": tokens[k].2})
            } else {
                json!({"id": i, "op": "revoke", "jti": jti(round * 1_000_000 + i), "exp": exp})
            };
            lines.push(line.to_string());
        }
        let total = lines.len();
        let bytes: Vec<u8> = lines
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        let s = UnixStream::connect(&d.socket).unwrap();
        let mut w = s.try_clone().unwrap();
        // The write fails once the daemon is gone; that is expected.
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
        let mut reader = BufReader::new(s);
        let mut ids = std::collections::BTreeSet::new();
        let mut daemon = Some(d);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A reply cut short by the kill was not answered.
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {}
            }
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["revoked"], "jti", "{v}");
            ids.insert(v["id"].as_u64().unwrap() as usize);
            if ids.len() == 2_000
                && let Some(d) = daemon.take()
            {
                d.kill();
            }
        }
        writer.join().unwrap();
        assert!(
            ids.len() >= 2_000 && ids.len() < total,
            "round {round}: the kill must land in the middle of the stream ({} of {total} answered)",
            ids.len()
        );
        answered_total += ids.len();
        for (i, k) in &real {
            if ids.contains(i) {
                answered_real.insert(*k);
            }
        }
    }
    assert!(!answered_real.is_empty());
    // After a restart: the database is whole, every answered revoke is in
    // force (and maybe some that were stored but not answered), tokens
    // whose revoke was answered are `revoked`, and the audit chain holds.
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let held = jti_revocations(&mut c);
    assert!(
        held >= answered_total,
        "{held} jti revocations after the crashes, {answered_total} were answered"
    );
    for (k, (token, _, _)) in tokens.iter().enumerate() {
        let r = c.request(json!({"op": "verify", "token": token}));
        if answered_real.contains(&k) {
            assert_eq!(r["error"]["code"], "revoked", "token {k}: {r}");
        } else {
            assert!(
                r["ok"] == true || r["error"]["code"] == "revoked",
                "token {k}: {r}"
            );
        }
    }
    d.stop();
    let integrity: String = dir
        .sql()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_ok(&dir.run(&["audit", "--verify"]));
    assert_ok(&dir.run(&["check"]));
}

#[test]
fn many_admin_sessions_revoking_at_once_stay_within_the_thread_budget() {
    use splitsign::daemon::limits::MAX_THREADS;
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let pid = d.pid();
    let exp = crate::util::now() + 3600;
    // 48 admin sessions pipeline 2,000 revokes each, at once: every batch
    // is store work off the async workers, and they queue for the store.
    let sessions: Vec<_> = (0..48)
        .map(|s| {
            let sock = d.socket.clone();
            std::thread::spawn(move || {
                let bytes: Vec<u8> = (0..2_000)
                    .flat_map(|i| {
                        let j = jti(10_000_000 + s * 10_000 + i);
                        format!("{}\n", json!({"op": "revoke", "jti": j, "exp": exp})).into_bytes()
                    })
                    .collect();
                let st = UnixStream::connect(&sock).unwrap();
                let mut w = st.try_clone().unwrap();
                let writer = std::thread::spawn(move || w.write_all(&bytes).unwrap());
                let mut answered = 0;
                for line in BufReader::new(st).lines() {
                    let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                    assert_eq!(v["revoked"], "jti", "{v}");
                    answered += 1;
                    if answered == 2_000 {
                        break;
                    }
                }
                writer.join().unwrap();
                answered
            })
        })
        .collect();
    let mut most = 0;
    while !sessions.iter().all(|s| s.is_finished()) {
        most = most.max(crate::util::vm(pid, "Threads:") as usize);
        std::thread::sleep(Duration::from_millis(1));
    }
    let answered: usize = sessions.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(answered, 48 * 2_000);
    assert_eq!(jti_revocations(&mut d.conn()), 48 * 2_000);
    assert!(
        most <= MAX_THREADS,
        "{most} threads at once, the budget (within the unit's TasksMax) is {MAX_THREADS}"
    );
    // The unit leaves room for them.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/splitsign.service"),
    )
    .unwrap();
    let tasks_max: usize = unit
        .lines()
        .find_map(|l| l.strip_prefix("TasksMax="))
        .and_then(|n| n.trim().parse().ok())
        .expect("TasksMax= in the unit");
    assert!(
        MAX_THREADS < tasks_max,
        "{MAX_THREADS} threads, TasksMax={tasks_max}"
    );
    d.stop();
}

#[test]
fn a_full_disk_refuses_the_revokes_it_cannot_store_and_holds_only_those_it_stored() {
    if !crate::util::is_root() {
        return;
    }
    let dir = Dir::new();
    let mnt = dir.path().join("mnt");
    let _fs = crate::util::Tmpfs::mount(&mnt, "4m");
    let cfg = dir.write_config(
        // The reserve off: this is the disk filled to the last byte (by
        // another process, say), which the reserve's floor would refuse
        // before any write failed.
        "shares_dir = \"mnt/keys\"\ndb = \"mnt/var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
         audit_keep_free = 0\n",
    );
    let args = ["--config", cfg.to_str().unwrap()];
    let d = Daemon::start_with(&dir, &args).unwrap();
    let mut c = d.conn();
    let t = ok(c.sign(json!({"sub":"kept"})));
    // The disk fills up during the session: 1 MiB is left.
    let filler = crate::util::fill(&mnt);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - (1 << 20)).unwrap();
    drop(f);

    // One session pipelines 4,000 revokes of 1,000-byte ids (more than the
    // whole filesystem holds), then the token's.
    let exp = crate::util::now() + 3600;
    let n = 4_000;
    let mut bytes = Vec::new();
    for i in 0..n {
        let line = json!({"id": i, "op": "revoke", "jti": format!("{i:0>1000}"), "exp": exp});
        bytes.extend(format!("{line}\n").into_bytes());
    }
    let line = json!({"id": n, "op": "revoke", "jti": t["jti"], "exp": t["exp"]});
    bytes.extend(format!("{line}\n").into_bytes());
    let s = UnixStream::connect(&d.socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&bytes).unwrap());
    let mut stored = 0;
    let mut refused = 0;
    let mut token_stored = false;
    for (i, line) in BufReader::new(s).lines().take(n + 1).enumerate() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(v["id"], i, "{v}");
        if v["ok"] == true {
            assert_eq!(v["revoked"], "jti", "{v}");
            stored += 1;
            token_stored |= i == n;
        } else {
            // It says why, with the OS's or SQLite's cause.
            let why = v["error"]["message"].as_str().unwrap();
            assert!(
                why.contains("disk is full") || why.contains("No space left on device"),
                "{v}"
            );
            refused += 1;
        }
    }
    writer.join().unwrap();
    assert_eq!(stored + refused, n + 1);
    assert!(stored > 0, "no revoke was stored with 1 MiB free");
    assert!(refused > 0, "every revoke was stored on a full disk");
    // In force: exactly what was stored, nothing that was refused.
    assert_eq!(jti_revocations(&mut c), stored);
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    if token_stored {
        assert_eq!(r["error"]["code"], "revoked", "{r}");
    } else {
        assert_eq!(r["ok"], true, "a refused revoke is in force: {r}");
    }

    // Space again: the refused revoke goes through when it is sent again.
    std::fs::remove_file(filler).unwrap();
    let mut held = stored;
    if !token_stored {
        ok(c.request(json!({"op":"revoke","jti":t["jti"],"exp":t["exp"]})));
        held += 1;
    }
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    drop(c);
    d.stop();

    // After a restart: the same revocations, from the database.
    let d = Daemon::start_with(&dir, &args).unwrap();
    let mut c = d.conn();
    assert_eq!(jti_revocations(&mut c), held);
    let r = c.request(json!({"op":"verify","token":t["token"]}));
    assert_eq!(r["error"]["code"], "revoked", "{r}");
    drop(c);
    d.stop();
    let db = rusqlite::Connection::open(mnt.join("var/splitsign.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM revocations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, held);
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_ok(&dir.run(&["--config", cfg.to_str().unwrap(), "check"]));
    assert_ok(&dir.run(&["--config", cfg.to_str().unwrap(), "audit", "--verify"]));
}
