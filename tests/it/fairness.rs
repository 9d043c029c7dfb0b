//! Fair and bounded, on the real binary, with the hostile peers run as
//! other uids in the socket's group (the tests run as root): one peer
//! cannot starve the others, exhaust the daemon's memory, or fill the disk
//! through the audit log. Plus the smaller defects found the same way.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{
    BIN, Conn, Daemon, Dir, FakeSystemd, NOBODY, Started, Tmpfs, assert_ok, code, fill, is_root,
    now, ok, open_deployment, raise_nofile, signal, vm, wait_exit, wait_for_count,
};

/// A peer (`tests/it/peer.py`) running as `uid`, group nogroup (the
/// socket's group). Killed when dropped (a failing test leaves none).
struct Peer {
    child: Started,
    out: BufReader<std::process::ChildStdout>,
}

const PEER_PY: &str = include_str!("peer.py");

impl Peer {
    fn start(uid: u32, mode: &str, sock: &str, args: &[&str]) -> Peer {
        let mut child = Started::spawn(
            Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(PEER_PY)
                .args([mode, sock])
                .args(args)
                .current_dir("/")
                .uid(uid)
                .gid(NOBODY)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        );
        let out = BufReader::new(child.stdout.take().unwrap());
        Peer { child, out }
    }

    /// The peer's next milestone.
    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("peer said {line:?}"))
    }

    fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }

    /// Close its stdin (it ends) and wait for it.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// One request as `uid` (through the peer helper).
fn request_as(uid: u32, sock: &str, req: Value) -> Value {
    let mut p = Peer::start(uid, "request", sock, &[&req.to_string()]);
    let r = p.next()["reply"].clone();
    p.finish();
    r
}

/// The CLI as `uid` (group nogroup) against `sock`, timed.
fn cli_as(uid: u32, sock: &str, args: &[&str]) -> (std::process::Output, Duration) {
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .current_dir("/")
        .uid(uid)
        .gid(NOBODY)
        .output()
        .unwrap();
    (out, t.elapsed())
}

const OTHER: u32 = 4242;

#[test]
fn one_uid_holding_3000_connections_does_not_lock_out_anyone() {
    if !is_root() {
        return;
    }
    raise_nofile();
    // The default config: max_connections 1024, 64 per peer, 4 for admins.
    let (_dir, d, sock) = open_deployment("");
    let mut attacker = Peer::start(NOBODY, "hold", &sock, &["3000"]);
    let held = attacker.next();
    println!("attacker: {held}");
    assert!(held["opened"].as_u64().unwrap() >= 2900, "{held}");
    // All but 64 were told `busy` and closed at once.
    assert!(
        held["refused"].as_u64().unwrap() >= held["opened"].as_u64().unwrap() - 64,
        "{held}"
    );
    let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
    assert!(st["connections"].as_u64().unwrap() <= 64 + 1, "{st}");

    // Another uid gets a token within 1 s; root's status within 2 s.
    let (out, took) = cli_as(OTHER, &sock, &["sign", "--claim", "sub=other"]);
    assert_ok(&out);
    assert!(
        took < Duration::from_secs(1),
        "the other uid waited {took:?}"
    );
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(["--socket", &sock, "status"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "root waited {:?}",
        t.elapsed()
    );
    println!(
        "other uid signed in {took:?}; root's status took {:?}",
        t.elapsed()
    );
    attacker.finish();
}

#[test]
fn full_slots_evict_the_busiest_uids_idlest_connection() {
    if !is_root() {
        return;
    }
    let (_dir, d, sock) = open_deployment("max_connections = 20\nadmin_connections = 4\n");
    // uid nobody takes all 16 slots that are not reserved.
    let mut hog = Peer::start(NOBODY, "hold", &sock, &["16"]);
    assert_eq!(hog.next()["refused"], 0);
    // Another uid still gets in (one of nobody's idle connections goes).
    let (out, _) = cli_as(OTHER, &sock, &["sign", "--claim", "sub=x"]);
    assert_ok(&out);
    // Root has its reserve on top.
    let admins: Vec<Conn> = (0..4).map(|_| d.conn()).collect();
    for mut c in admins {
        ok(c.request(json!({"op":"status"})));
    }
    hog.finish();
}

#[test]
fn pipelining_without_reading_is_bounded_in_memory() {
    if !is_root() {
        return;
    }
    raise_nofile();
    let (_dir, d, sock) = open_deployment("max_connections_per_peer = 1000\n");
    let pid = d.pid();
    let fresh = vm(pid, "VmRSS:");
    // 1,000 connections each send 256 KB of `status` (a request of 16
    // bytes whose reply is ~700) and read nothing.
    let mut flood = Peer::start(
        NOBODY,
        "flood",
        &sock,
        &["1000", "262144", "{\"op\":\"status\"}"],
    );
    let sent = flood.next();
    assert_eq!(sent["opened"], 1000, "{sent}");
    // The daemon keeps serving others meanwhile.
    let mut good = d.conn();
    ok(good.sign(json!({"sub":"good"})));
    let peak = vm(pid, "VmHWM:");
    let loaded = vm(pid, "VmRSS:");
    flood.finish();
    // Its connections close (the daemon notices within its write timeout).
    let deadline = Instant::now() + Duration::from_secs(15);
    while ok(good.request(json!({"op":"status"})))["status"]["connections"]
        .as_u64()
        .unwrap()
        > 1
    {
        assert!(
            Instant::now() < deadline,
            "the flood's connections stay open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // 1,000 connections pipeline 256 KB each in 60 KB requests (each
    // grows the connection's input buffer to its size), read every reply,
    // then sit idle: the buffers go back.
    let big = json!({"op":"verify","token":"x".repeat(60_000)}).to_string();
    let mut busy = Peer::start(NOBODY, "flood", &sock, &["1000", "262144", &big, "30"]);
    let sent = busy.next();
    assert_eq!(sent["opened"], 1000, "{sent}");
    assert_eq!(sent["unsent"], 0, "{sent}");
    busy.tell("read");
    let read = busy.next();
    assert_eq!(read["replies"], read["wanted"], "{read}");
    let idle_deadline = Instant::now() + Duration::from_secs(5);
    let mut idle = vm(pid, "VmRSS:");
    while idle >= 64 * 1024 && Instant::now() < idle_deadline {
        std::thread::sleep(Duration::from_millis(200));
        idle = vm(pid, "VmRSS:");
    }
    let st = ok(good.request(json!({"op":"status"})))["status"].clone();
    let conns = st["connections"].as_u64().unwrap();
    let per_idle = (idle.saturating_sub(fresh)) / 1000;
    println!(
        "daemon RSS: fresh {fresh} KiB; peak {peak} KiB, under the status flood {loaded} KiB; \
         after 1,000 connections read and went idle {idle} KiB ({conns} connections open, \
         {per_idle} KiB each above fresh)"
    );
    assert!(peak < 128 * 1024, "peak RSS {peak} KiB");
    assert!(idle < 64 * 1024, "idle RSS {idle} KiB");
    assert!(per_idle <= 32, "an idle connection costs {per_idle} KiB");
    assert!(
        conns >= 1000,
        "the idle connections are still open ({conns})"
    );
    ok(good.sign(json!({"sub":"still"})));
    busy.finish();
}

fn db_bytes(dir: &Dir) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|s| {
            let mut p = dir.db().into_os_string();
            p.push(s);
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        })
        .sum()
}

#[test]
fn garbage_verifies_and_huge_refused_signs_barely_grow_the_database() {
    if !is_root() {
        return;
    }
    let (dir, d, sock) = open_deployment("");
    ok(d.conn().sign(json!({})));
    let before = db_bytes(&dir);
    let mut g = Peer::start(NOBODY, "garbage", &sock, &["10"]);
    let done = g.next();
    g.finish();
    std::thread::sleep(Duration::from_millis(1500));
    let after = db_bytes(&dir);
    println!("10 s of garbage: {done}; database {before} -> {after} bytes");
    assert!(done["sent"].as_u64().unwrap() > 10_000, "{done}");
    assert!(
        done["codes"]["token_too_large"].as_u64().unwrap() > 10,
        "{done}"
    );
    // (A truncating checkpoint may shrink the WAL meanwhile.)
    let grew = after.saturating_sub(before);
    assert!(grew < 1024 * 1024, "grew {grew} bytes");
    // Every failure is counted; the stored `sub` is bounded.
    let sql = dir.sql();
    let counted: i64 = sql
        .query_row(
            "SELECT sum(count) FROM audit WHERE uid = 65534 AND result <> 'ok'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(counted >= done["replies"].as_i64().unwrap(), "{counted}");
    let longest: i64 = sql
        .query_row("SELECT max(length(sub)) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert!(longest <= 256, "a stored sub of {longest} bytes");
    let out = dir.run(&["audit", "--verify"]);
    assert!(out.status.success());
}

#[test]
fn pruning_keeps_the_chain_verifiable_and_an_edit_after_it_is_caught() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    for i in 0..10 {
        ok(c.sign(json!({"sub":format!("u{i}")})));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let total: i64 = dir
        .sql()
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    // Through the daemon (an admin op): everything up to now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let out = dir.run(&["audit", "--prune-before", &now.to_string()]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pruned {total}")));
    ok(c.sign(json!({"sub":"after"})));
    let out = dir.run(&["audit", "--verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ok(&out);
    assert!(text.contains("pruning anchor"), "{text}");
    // A record edited after pruning is still caught.
    dir.sql()
        .execute(
            "UPDATE audit SET sub = 'mallory' WHERE seq = (SELECT max(seq) FROM audit WHERE op = 'sign')",
            [],
        )
        .unwrap();
    let out = dir.run(&["audit", "--verify"]);
    assert_eq!(out.status.code(), Some(65));
    drop(c);
    d.stop();
    // Offline too (an age), and the anchor moves on.
    dir.sql()
        .execute("UPDATE audit SET sub = 'after' WHERE sub = 'mallory'", [])
        .unwrap();
    let out = dir.run(&["audit", "--prune-before", "0s"]);
    assert_ok(&out);
    let out = dir.run(&["audit", "--verify"]);
    assert_ok(&out);
    let out = dir.run(&["audit", "--prune-before", "next tuesday"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sign_rate_refuses_above_the_rate_and_allows_within() {
    if !is_root() {
        return;
    }
    let (dir, _d, sock) = open_deployment(&format!(
        "[[policy]]\nname = \"limited\"\nuids = [{NOBODY}]\nsign_rate = 2.0\nsign_burst = 3\n\
         [[policy]]\nname = \"free\"\nuids = [{OTHER}]\n"
    ));
    let mut p = Peer::start(NOBODY, "signs", &sock, &["10"]);
    let codes = p.next()["codes"].clone();
    p.finish();
    let codes: Vec<&str> = codes
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&codes[..3], &["ok", "ok", "ok"], "{codes:?}");
    assert!(
        codes[3..].iter().filter(|c| **c == "rate_limited").count() >= 5,
        "{codes:?}"
    );
    // Within the rate: one a second passes.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        let r = request_as(NOBODY, &sock, json!({"op":"sign","claims":{}}));
        assert_eq!(r["ok"], true, "{r}");
    }
    // Another policy has no limit.
    let mut p = Peer::start(OTHER, "signs", &sock, &["10"]);
    assert!(
        p.next()["codes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c == "ok")
    );
    p.finish();
    // The refusals are counted in the audit log.
    assert!(wait_for_count(&dir, "sign", "rate_limited", 5) >= 5);
}

#[test]
fn admin_true_grants_the_admin_ops() {
    if !is_root() {
        return;
    }
    let (_dir, _d, sock) = open_deployment(&format!(
        "[[policy]]\nname = \"ops\"\nuids = [{NOBODY}]\nadmin = true\n"
    ));
    let r = request_as(NOBODY, &sock, json!({"op":"revoke","sub":"mallory"}));
    assert_eq!(r["ok"], true, "{r}");
    // An admin op listed in `ops` without `admin = true` is a config error.
    let dir = Dir::new();
    let cfg =
        dir.write_config("[[policy]]\nname = \"x\"\nuids = [1]\nops = [\"sign\", \"rotate\"]\n");
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin = true"));
}

#[test]
fn a_policy_with_audiences_requires_one_of_them() {
    if !is_root() {
        return;
    }
    let (_dir, _d, sock) = open_deployment(&format!(
        "[[policy]]\nname = \"web\"\nuids = [{NOBODY}]\naudiences = [\"api\"]\n"
    ));
    let sign = |claims: Value| request_as(NOBODY, &sock, json!({"op":"sign","claims":claims}));
    assert_eq!(code(&sign(json!({"sub":"a"}))), "forbidden_claim");
    assert_eq!(code(&sign(json!({"sub":"a","aud":[]}))), "forbidden_claim");
    assert_eq!(
        code(&sign(json!({"sub":"a","aud":"admin"}))),
        "forbidden_claim"
    );
    ok(sign(json!({"sub":"a","aud":"api"})));
    ok(sign(json!({"sub":"a","aud":["api"]})));
}

#[test]
fn request_times_out_of_range_are_refused_not_wrapped() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    for req in [
        json!({"op":"revoke","sub":"s","before":9_223_372_036_854_775_000i64}),
        json!({"op":"revoke","sub":"s","before":-5}),
        json!({"op":"revoke","jti":"j","exp":9_223_372_036_854_775_000i64}),
        json!({"op":"audit_prune","before":1e30}),
    ] {
        assert_eq!(code(&c.request(req.clone())), "invalid_request", "{req}");
    }
    // The CLI refuses it before asking anyone.
    let out = dir.run(&["revoke", "--sub", "S", "--before", "9223372036854775000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("253402300799"));
}

#[test]
fn the_cli_gives_up_after_its_timeout_with_exit_69() {
    let dir = Dir::new();
    // A "daemon" that accepts into its backlog and never answers.
    let path = dir.path().join("stuck.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = Instant::now();
    let out = dir.run(&[
        "--socket",
        path.to_str().unwrap(),
        "--timeout",
        "1s",
        "status",
    ]);
    let took = t.elapsed();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer from the daemon"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A full backlog: connecting itself times out.
    drop(_listener);
    std::fs::remove_file(&path).unwrap();
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::bind(&fd, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&fd, 0).unwrap();
    let fillers: Vec<_> = (0..4)
        .filter_map(|_| {
            let s = rustix::net::socket_with(
                rustix::net::AddressFamily::UNIX,
                rustix::net::SocketType::STREAM,
                rustix::net::SocketFlags::NONBLOCK,
                None,
            )
            .unwrap();
            rustix::net::connect(&s, &rustix::net::SocketAddrUnix::new(&path).unwrap())
                .ok()
                .map(|()| s)
        })
        .collect();
    assert!(!fillers.is_empty());
    let out = dir.run(&[
        "--socket",
        path.to_str().unwrap(),
        "--timeout",
        "1s",
        "jwks",
    ]);
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_disk_fails_signing_closed_and_it_comes_back_by_itself() {
    if !is_root() {
        return;
    }
    let dir = Dir::new();
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "4m");
    let cfg = dir.write_config(
        // The reserve off: this is the disk filled to the last byte (by
        // another process, say), which the reserve's floor would refuse
        // before any write failed.
        "shares_dir = \"mnt/keys\"\ndb = \"mnt/var/splitsign.db\"\nsocket = \"run/sign.sock\"\n\
         audit_keep_free = 0\n",
    );
    let sd = FakeSystemd::new(&dir);
    let mut child = sd.spawn(
        &dir,
        &["--config", cfg.to_str().unwrap()],
        &[("WATCHDOG_USEC", "1000000")],
    );
    sd.expect("READY=1", Duration::from_secs(20));
    sd.expect("WATCHDOG=1", Duration::from_secs(5));
    let mut c = Conn::open(&sd.socket).unwrap();
    let before = ok(c.sign(json!({"sub":"before"})));

    let filler = fill(&mnt);
    // Sign until the log cannot take a record: then no token leaves.
    let mut issued = 0;
    let failed = loop {
        let r = c.sign(json!({"sub":"x".repeat(200)}));
        if r["ok"] == false {
            break r;
        }
        issued += 1;
        assert!(issued < 100_000, "signing never failed on a full disk");
    };
    assert_eq!(failed["error"]["code"], "audit_unavailable", "{failed}");
    for _ in 0..20 {
        let r = c.sign(json!({}));
        assert_eq!(
            r["error"]["code"], "audit_unavailable",
            "a token with a full disk: {r}"
        );
    }
    // Everything that issues no token keeps answering.
    ok(c.request(json!({"op":"verify","token":before["token"]})));
    ok(c.request(json!({"op":"jwks"})));
    ok(c.request(json!({"op":"ping"})));
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert_eq!(st["audit"]["state"], "failing", "{st}");
    assert!(
        st["audit"]["free_bytes"].as_u64().unwrap() < 64 * 1024,
        "{st}"
    );
    // Health tells the truth: STATUS says why, the watchdog stops.
    let status = sd.expect("STATUS=unhealthy", Duration::from_secs(3));
    assert!(status.contains("audit log"), "{status}");
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < Duration::from_secs(2) {
        if let Some(m) = sd.next(Duration::from_millis(200)) {
            assert!(
                !m.lines().any(|l| l == "WATCHDOG=1"),
                "a watchdog ping with a full disk"
            );
        }
    }
    // An admin op that needs the disk says why it failed (errors keep
    // their OS cause).
    let r = c.request(json!({"op":"rotate"}));
    assert_eq!(r["ok"], false);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{r}"
    );

    // Free the space: signing is back within a second, by itself.
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    loop {
        let r = c.sign(json!({"sub":"after"}));
        if r["ok"] == true {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(1),
            "still refusing: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "signing resumed {:?} after the space was freed ({issued} tokens before the disk was full)",
        freed.elapsed()
    );
    sd.expect("WATCHDOG=1", Duration::from_secs(3));
    drop(c);
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "check"]);
    assert_ok(&out);
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "audit", "--verify"]);
    assert_ok(&out);
}

/// A connection pipelining requests without a pause does not keep the
/// daemon from the others: on one worker thread, a ping sent while another
/// connection streams 200,000 pings is answered within a turn or two of the
/// stream (a turn is 200 µs of work). Counted in replies, not time.
///
/// Before, a connection whose client wrote its next lines before the
/// daemon came back to read never waited on its socket, and kept its worker
/// for as long as tokio's cooperative budget lasted (128 socket reads and
/// writes: tens of thousands of lines).
#[test]
fn a_pipelining_connection_takes_turns_with_the_others() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const LINES: u64 = 200_000;
    let dir = Dir::new();
    let d = Daemon::start_on_one_cpu(&dir, &[]);
    let stream = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let mut w = stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all("{\"op\":\"ping\"}\n".repeat(LINES as usize).as_bytes())
            .unwrap()
    });
    let got = Arc::new(AtomicU64::new(0));
    let reader = {
        let got = Arc::clone(&got);
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(64 * 1024, stream);
            let mut buf = Vec::new();
            for _ in 0..LINES {
                buf.clear();
                r.read_until(b'\n', &mut buf).unwrap();
                assert!(
                    buf.starts_with(b"{\"ok\":true"),
                    "reply {:?}",
                    String::from_utf8_lossy(&buf)
                );
                got.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Once the stream is being answered, a polite ping, a few times.
    while got.load(Ordering::Relaxed) < 1000 {
        std::thread::yield_now();
    }
    let mut waits = Vec::new();
    for _ in 0..5 {
        let before = got.load(Ordering::Relaxed);
        let mut c = d.conn();
        ok(c.request(json!({"op":"ping"})));
        let after = got.load(Ordering::Relaxed);
        assert!(
            after < LINES,
            "the stream ended before the polite ping was answered"
        );
        waits.push(after - before);
    }
    writer.join().unwrap();
    reader.join().unwrap();
    println!("the stream's replies while a polite ping waited: {waits:?}");
    let worst = *waits.iter().max().unwrap();
    assert!(
        worst <= 25_000,
        "a polite ping waited while the stream got {worst} replies: {waits:?}"
    );
}

/// `read_timeout` bounds how long one line may take to arrive, not how long
/// a connection may pipeline: a client that streams for longer than it,
/// each write ending inside a line, is answered in full. (Before, the clock
/// started at the first partial line and ran on while lines completed: the
/// connection was closed after `read_timeout`.)
#[test]
fn a_client_streaming_longer_than_read_timeout_is_answered_in_full() {
    let (_dir, _d, sock) = open_deployment("read_timeout = \"1s\"\n");
    let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut w = stream.try_clone().unwrap();
    let line = "{\"op\":\"ping\"}\n";
    let rounds = 250; // 10 ms apart: 2.5 s
    let per = 40;
    let writer = std::thread::spawn(move || {
        let all = line.repeat(per * rounds);
        // Each write but the last ends 5 bytes into a line.
        let mut from = 0;
        for i in 1..=rounds {
            let to = (i * line.len() * per + 5).min(all.len());
            if w.write_all(&all.as_bytes()[from..to]).is_err() {
                break; // closed by the daemon: the count below says so
            }
            from = to;
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut r = BufReader::new(stream);
    let mut n = 0;
    let mut buf = String::new();
    while n < per * rounds {
        buf.clear();
        if r.read_line(&mut buf).unwrap() == 0 {
            break;
        }
        assert!(buf.starts_with("{\"ok\":true"), "{buf}");
        n += 1;
    }
    writer.join().unwrap();
    assert_eq!(
        n,
        per * rounds,
        "the connection was closed after {n} replies"
    );
}

/// Wait (5 s at most) until a non-admin uid signs again after `what`,
/// refused only with `audit_reserve` meanwhile.
fn signs_again(sock: &str, what: &str) {
    let from = Instant::now();
    loop {
        let r = request_as(OTHER, sock, json!({"op":"sign","claims":{}}));
        if r["ok"] == true {
            return;
        }
        assert_eq!(r["error"]["code"], "audit_reserve", "{r}");
        assert!(
            from.elapsed() < Duration::from_secs(5),
            "still refusing after {what}: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit log's reserve: two uids signing legitimately fill a small
/// filesystem down to `audit_keep_free`, then get `audit_reserve`, while
/// root still signs, rotates and reads the status from the reserve; STATUS=,
/// `status` and the metrics say the reserve is in use; the refusals are
/// aggregated; signing resumes by itself once space is freed; nothing
/// answered is lost (`audit --verify`, every issued token's record).
#[test]
fn legitimate_signs_stop_at_the_reserve_and_admins_keep_signing() {
    if !is_root() {
        return;
    }
    let dir = Dir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = dir.path().join("mnt");
    let _fs = Tmpfs::mount(&mnt, "32m");
    // Ballast the operator will remove to make room.
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![1u8; 6 << 20]).unwrap();
    // The database's directory reached through a symlink from the big
    // filesystem: the reserve is measured where the database is.
    std::fs::create_dir(mnt.join("var")).unwrap();
    std::fs::set_permissions(mnt.join("var"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(mnt.join("var"), dir.path().join("db")).unwrap();
    let sd = FakeSystemd::new(&dir);
    let cfg = dir.write_config(&format!(
        "shares_dir = \"mnt/keys\"\ndb = \"db/splitsign.db\"\nsocket = \"{}\"\n\
         audit_keep_free = \"12MiB\"\n",
        sd.socket.display()
    ));
    let mut child = sd.spawn(&dir, &["--config", cfg.to_str().unwrap()], &[]);
    sd.expect("READY=1", Duration::from_secs(20));
    let sock = sd.socket.to_str().unwrap().to_owned();
    for p in [sd.socket.parent().unwrap(), &sd.socket] {
        std::os::unix::fs::chown(p, None, Some(NOBODY)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o770)).unwrap();
    }
    let mut root = Conn::open(&sd.socket).unwrap();
    let st = ok(root.request(json!({"op":"status"})))["status"]["audit"].clone();
    assert_eq!(st["reserve_in_use"], false, "{st}");
    assert_eq!(st["keep_free_bytes"], 12 << 20, "{st}");

    // Two uids sign until refused.
    let mut peers: Vec<Peer> = [NOBODY, OTHER]
        .into_iter()
        .map(|uid| Peer::start(uid, "sign_until", &sock, &[]))
        .collect();
    let mut issued = 0;
    for p in &mut peers {
        let said = p.next();
        println!("peer: {said}");
        assert_eq!(said["refused"]["code"], "audit_reserve", "{said}");
        assert!(
            said["refused"]["message"]
                .as_str()
                .unwrap()
                .contains("only admins may sign"),
            "{said}"
        );
        issued += said["issued"].as_u64().unwrap();
    }
    for p in peers {
        p.finish();
    }
    assert!(issued > 1000, "only {issued} tokens before the reserve");
    // A non-admin's CLI says so, and exits 69 (try again later).
    let (out, _) = cli_as(OTHER, &sock, &["sign", "--claim", "sub=late"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit_reserve"),
        "{out:?}"
    );

    // In the reserve, refusals are aggregated over ten minutes, not one
    // second: they do not eat the admins' room (the count is written when
    // the reserve ends, below).
    std::thread::sleep(Duration::from_millis(2200));
    let db = rusqlite::Connection::open(mnt.join("var/splitsign.db")).unwrap();
    let written: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE result = 'audit_reserve'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(written, 0, "refusal records written in the reserve");
    drop(db);

    // Root signs from the reserve.
    for _ in 0..200 {
        ok(root.sign(json!({"sub":"root"})));
    }
    // The reserve is reported: status (JSON and text), the metrics, STATUS=.
    let st = ok(root.request(json!({"op":"status"})))["status"]["audit"].clone();
    assert_eq!(st["reserve_in_use"], true, "{st}");
    assert_eq!(st["state"], "ok", "{st}");
    // (The reserve starts a batch early.)
    assert!(st["free_bytes"].as_u64().unwrap() < 16 << 20, "{st}");
    let text = dir.run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--socket",
        &sock,
        "status",
    ]);
    assert_ok(&text);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("DOWN TO ITS RESERVE"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let m = ok(root.request(json!({"op":"metrics"})))["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(m.contains("splitsign_audit_reserve_in_use 1"), "{m}");
    assert!(
        m.contains("splitsign_refusals_total{op=\"sign\",code=\"audit_reserve\"}"),
        "{m}"
    );
    let status = sd.expect(
        "STATUS=audit log down to its reserve",
        Duration::from_secs(3),
    );
    assert!(status.contains("only admins sign"), "{status}");
    // An admin op from the reserve (its truncating checkpoint may give
    // the WAL's space back).
    let rotated = ok(root.request(json!({"op":"rotate"})));
    ok(root.sign(json!({"sub":"after-rotate"})));

    // Space comes back (the operator removes the ballast): signing
    // resumes by itself.
    std::fs::remove_file(&ballast).unwrap();
    signs_again(&sock, "the ballast was removed");
    sd.expect("STATUS=active key", Duration::from_secs(3));

    // Nothing answered was lost, and the refusals are aggregated: a few
    // records (one per uid and second), not one per refused sign.
    let db = rusqlite::Connection::open(mnt.join("var/splitsign.db")).unwrap();
    let signed: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE op = 'sign' AND result = 'ok'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        signed as u64 >= issued + 202,
        "{signed} records for {issued} + 202 tokens"
    );
    let tallied = Instant::now();
    let (records, refusals) = loop {
        let (records, refusals): (i64, i64) = db
            .query_row(
                "SELECT count(*), coalesce(sum(count), 0) FROM audit \
                 WHERE result = 'audit_reserve'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if refusals >= 3 || tallied.elapsed() > Duration::from_secs(5) {
            break (records, refusals);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "{issued} tokens before the reserve; {refusals} refusals in {records} records; kid {}",
        rotated["kid"]
    );
    assert!(
        refusals >= 3 && records <= 20,
        "{records} records for {refusals} refusals"
    );
    drop(db);

    // Down to the reserve again; this time an admin prunes the audit log:
    // the pages the database freed count as free, and signing resumes.
    let mut p = Peer::start(NOBODY, "sign_until", &sock, &[]);
    let said = p.next();
    p.finish();
    assert_eq!(said["refused"]["code"], "audit_reserve", "{said}");
    let pruned = ok(root.request(json!({"op":"audit_prune","before": now() + 1})));
    println!("pruned: {pruned}");
    signs_again(&sock, "the prune");
    drop(root);
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    // The chain verifies (from the prune's anchor).
    let out = dir.run(&["--config", cfg.to_str().unwrap(), "audit", "--verify"]);
    assert_ok(&out);
}
