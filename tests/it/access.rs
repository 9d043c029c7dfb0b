//! The daemon as a security boundary: peer policies by uid, claim rules,
//! revocation, token binding, the audit log, connection limits under
//! hostile clients, and memory hygiene. Tests that switch uid need root.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{
    BIN, Conn, Daemon, Dir, NOBODY, Started, assert_ok, code, is_root, ok, open_deployment,
    raise_nofile, vm, wait_for_count,
};

/// Run the CLI as uid/gid 65534 against `sock`.
fn as_nobody(sock: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir("/")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

#[test]
fn a_peer_matching_no_policy_is_refused_before_it_sends_anything() {
    if !is_root() {
        return;
    }
    let (dir, d, sock) = open_deployment("[[policy]]\nname = \"web\"\nuids = [4242]\n");
    // A raw client as uid 65534 that sends nothing, only reads.
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint(s.makefile().read())";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &sock])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first: Value = serde_json::from_str(text.lines().next().expect("an error line")).unwrap();
    assert_eq!(code(&first), "forbidden", "{text}");
    // Root (an admin uid) still gets in; the refusal is counted in the
    // audit log (aggregated, written within a second).
    ok(d.conn().request(json!({"op":"ping"})));
    let n = wait_for_count(&dir, "connect", "forbidden", 1);
    assert_eq!(n, 1);
}

#[test]
fn a_client_policy_limits_audiences_claims_and_ttl_and_forces_claims() {
    if !is_root() {
        return;
    }
    let (_dir, _d, sock) = open_deployment(
        "[[policy]]\nname = \"web\"\nusers = [\"nobody\"]\naudiences = [\"api\"]\n\
         claims = [\"aud\", \"scope\", \"tenant\"]\nforced_claims = { tenant = \"t1\" }\n\
         sub_from_peer = true\nmax_ttl = \"5m\"\nops = [\"sign\", \"verify\", \"jwks\"]\n",
    );
    let out = as_nobody(&sock, &["sign", "--claim", "aud=admin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden_claim"));
    let out = as_nobody(&sock, &["sign", "--claim", "role=root"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden_claim"));
    let out = as_nobody(&sock, &["sign", "--claim", "aud=api", "--ttl", "10m"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ttl_too_long"));
    // Forced claims win: tenant and sub are the daemon's, not the client's.
    let out = as_nobody(
        &sock,
        &[
            "sign",
            "--claim",
            "aud=api",
            "--claim",
            "tenant=t2",
            "--ttl",
            "5m",
        ],
    );
    assert_ok(&out);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = as_nobody(&sock, &["verify", &token]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["claims"]["tenant"], "t1");
    assert_eq!(v["claims"]["sub"], "nobody");
    assert_eq!(v["claims"]["aud"], "api");
    // Ops outside the policy: refused.
    let out = as_nobody(&sock, &["status"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    let out = as_nobody(&sock, &["revoke", "--sub", "x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

#[test]
fn revoke_by_jti_and_by_sub_survives_a_restart() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let a = ok(c.sign(json!({"sub":"alice"})));
    let a2 = ok(c.sign(json!({"sub":"alice"})));
    let b = ok(c.sign(json!({"sub":"bob"})));
    let b2 = ok(c.sign(json!({"sub":"bob"})));
    let r = ok(c.request(json!({"op":"revoke","jti":a["jti"],"exp":a["exp"]})));
    assert_eq!(r["revoked"], "jti");
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":a["token"]}))),
        "revoked"
    );
    ok(c.request(json!({"op":"verify","token":a2["token"]})));
    // By token value, through the CLI.
    let out = dir.run(&["revoke", "--token", a2["token"].as_str().unwrap()]);
    assert_ok(&out);
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":a2["token"]}))),
        "revoked"
    );
    // By subject: every bob token issued before now (+1s: same-second iat).
    std::thread::sleep(Duration::from_millis(1100));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    ok(c.request(json!({"op":"revoke","sub":"bob","before":now})));
    for t in [&b, &b2] {
        assert_eq!(
            code(&c.request(json!({"op":"verify","token":t["token"]}))),
            "revoked"
        );
    }
    // A token of the same second as the revocation is covered too (iat has
    // one-second resolution); one issued a second later is not.
    let same_second = ok(c.sign(json!({"sub":"bob"})));
    let payload = same_second["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    if claims["iat"].as_i64().unwrap() <= now {
        assert_eq!(
            code(&c.request(json!({"op":"verify","token":same_second["token"]}))),
            "revoked"
        );
    }
    std::thread::sleep(Duration::from_millis(1100));
    let b3 = ok(c.sign(json!({"sub":"bob"})));
    ok(c.request(json!({"op":"verify","token":b3["token"]})));
    drop(c);
    d.stop();

    let d = Daemon::start(&dir);
    let mut c = d.conn();
    for t in [&a, &a2, &b, &b2] {
        assert_eq!(
            code(&c.request(json!({"op":"verify","token":t["token"]}))),
            "revoked"
        );
    }
    ok(c.request(json!({"op":"verify","token":b3["token"]})));
}

#[test]
fn fingerprint_binding() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let t = ok(c.request(json!({"op":"sign","claims":{"sub":"a"},"fingerprint":"cookie-123"})));
    let token = t["token"].clone();
    let payload = token.as_str().unwrap().split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(
        !claims.to_string().contains("cookie-123"),
        "only a hash is stored"
    );
    assert_eq!(claims["fph"].as_str().unwrap().len(), 43);
    ok(c.request(json!({"op":"verify","token":token,"fingerprint":"cookie-123"})));
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":token,"fingerprint":"stolen"}))),
        "fingerprint_mismatch"
    );
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":token}))),
        "fingerprint_mismatch"
    );
    assert_eq!(
        code(&c.request(json!({"op":"sign","claims":{"fph":"x"}}))),
        "reserved_claim"
    );
}

#[test]
fn the_audit_log_records_every_sign_and_detects_tampering() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    for i in 0..25 {
        ok(c.sign(json!({"sub":format!("u{i}")})));
    }
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":"x.y.z"}))),
        "invalid_token"
    );
    let count = |op: &str| -> i64 {
        dir.sql()
            .query_row("SELECT count(*) FROM audit WHERE op = ?1", [op], |r| {
                r.get(0)
            })
            .unwrap()
    };
    assert_eq!(
        count("sign"),
        25,
        "one record per sign, committed before the reply"
    );
    assert_eq!(
        wait_for_count(&dir, "verify", "invalid_token", 1),
        1,
        "verify failures are counted"
    );
    let out = dir.run(&["audit", "--verify"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("26 records"));
    let out = dir.run(&["audit", "--json", "--limit", "3"]);
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["op"], "sign");
    assert_eq!(first["sub"], "u0");
    d.stop();

    // Edit one record: named.
    dir.sql()
        .execute("UPDATE audit SET sub = 'mallory' WHERE seq = 7", [])
        .unwrap();
    let out = dir.run(&["audit", "--verify"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 7"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.sql()
        .execute("UPDATE audit SET sub = 'u6' WHERE seq = 7", [])
        .unwrap();
    assert!(dir.run(&["audit", "--verify"]).status.success());
    // Delete one record: named.
    dir.sql()
        .execute("DELETE FROM audit WHERE seq = 12", [])
        .unwrap();
    let out = dir.run(&["audit", "--verify"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("record 12"));
}

#[test]
fn signing_fails_closed_when_the_audit_log_cannot_be_written() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    ok(c.sign(json!({})));
    // Another writer holds the database lock: audit commits time out.
    let locker = dir.sql();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let r = c.request(json!({"id":9,"op":"sign","claims":{"sub":"x"}}));
    assert_eq!(code(&r), "audit_unavailable");
    assert_eq!(r["id"], 9);
    assert!(r.get("token").is_none());
    ok(c.request(json!({"op":"ping"})));
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);
    ok(c.sign(json!({"sub":"y"})));
}

#[test]
fn hostile_clients_do_not_starve_a_good_one_and_memory_stays_bounded() {
    raise_nofile();
    let dir = Dir::new();
    let cfg = dir.write_config(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
         max_connections = 4096\nmax_connections_per_peer = 4096\nread_timeout = \"2s\"\nwrite_timeout = \"2s\"\nidle_timeout = \"60s\"\n",
    );
    let d = Daemon::start_with(&dir, &["--config", cfg.to_str().unwrap()]).unwrap();
    let pid = d.pid();
    let rss_idle = vm(pid, "VmRSS:");

    let idle: Vec<Conn> = (0..2000).map(|_| d.conn()).collect();
    // Slowloris: one byte a second of a line that never ends.
    let mut slow = d.conn();
    let slow_writer = std::thread::spawn(move || {
        for b in b"{\"op\":\"sign\",\"claims\":{\"sub\":\"slow\"}" {
            if slow.writer.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        false
    });
    // A client that pipelines requests and never reads its replies.
    let mut greedy = d.conn();
    let greedy_writer = std::thread::spawn(move || {
        let line = b"{\"op\":\"sign\",\"claims\":{\"sub\":\"greedy\",\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}\n";
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if greedy.writer.write_all(line).is_err() {
                return true;
            }
        }
        false
    });
    // The well-behaved client is served throughout.
    let mut good = d.conn();
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(5) {
        ok(good.sign(json!({"sub":"good"})));
        served += 1;
    }
    assert!(
        served > 10,
        "the good client was served ({served} signs in 5 s)"
    );
    let rss_loaded = vm(pid, "VmRSS:");
    assert!(
        slow_writer.join().unwrap(),
        "the slow client was disconnected"
    );
    assert!(
        greedy_writer.join().unwrap(),
        "the client that never reads was disconnected"
    );
    ok(good.sign(json!({})));
    drop(idle);
    let rss_after = vm(pid, "VmRSS:");
    println!(
        "daemon RSS: idle {rss_idle} KiB, with 2000 idle + hostile clients {rss_loaded} KiB, after {rss_after} KiB"
    );
    assert!(
        rss_loaded < 128 * 1024,
        "memory stays bounded: {rss_loaded} KiB"
    );
}

#[test]
fn key_pages_are_locked_and_the_process_is_not_dumpable() {
    if !is_root() {
        return;
    }
    // Run the daemon as uid 65534 so that "not dumpable" is visible: its
    // /proc/PID files then belong to root instead of to it.
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let mut child = Started::spawn(
        Command::new(BIN)
            .arg("serve")
            .current_dir(dir.path())
            .uid(NOBODY)
            .gid(NOBODY)
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(dir.path().join("log"))
        .unwrap_or_default()
        .contains(" ready ")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(dir.path().join("log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    assert_eq!(
        owner, 0,
        "a non-dumpable process's /proc files belong to root"
    );
    assert!(vm(pid, "VmLck:") > 0, "the key page is locked");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert!(
        core.split_whitespace().filter(|w| *w == "0").count() >= 2,
        "{core}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(!log.contains("could not mlock"), "{log}");
}

#[test]
fn mlock_require_refuses_to_start_without_lockable_memory() {
    if !is_root() {
        return;
    }
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let cfg = dir.write_config("shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/s.sock\"\nmlock = \"require\"\n");
    std::os::unix::fs::chown(&cfg, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", "config.toml", "serve"])
        .current_dir(dir.path())
        .uid(NOBODY)
        .gid(NOBODY);
    // SAFETY (test): setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &zero) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot lock") && err.contains("RLIMIT_MEMLOCK"),
        "{err}"
    );
}
