//! systemd integration without systemd: the units pass `systemd-analyze`,
//! and the real binary is started the way systemd starts it, with a
//! listening socket as fd 3 (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) and a
//! datagram NOTIFY_SOCKET owned by the test.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use std::process::{Command, Stdio};

use crate::util::{BIN, Conn, Dir, FakeSystemd, Started, activated, ok, signal, wait_exit};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// The units with ExecStart pointing at the binary under test (verify
/// checks that the command exists).
fn units_for_test(dir: &Dir) -> PathBuf {
    let out = dir.path().join("units");
    std::fs::create_dir_all(&out).unwrap();
    for name in ["splitsign.socket", "splitsign.service"] {
        let text = std::fs::read_to_string(units_dir().join(name)).unwrap();
        std::fs::write(
            out.join(name),
            text.replace("/usr/local/bin/splitsign", BIN),
        )
        .unwrap();
    }
    out
}

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "these tests need systemd-analyze (apt-get install systemd; .ci/run installs it)"
    );
    "systemd-analyze"
}

#[test]
fn units_verify_without_a_word() {
    let dir = Dir::new();
    let units = units_for_test(&dir);
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(units.join("splitsign.socket"))
        .arg(units.join("splitsign.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn service_sandbox_scores_at_most_1_0() {
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true"])
        .arg(units_dir().join("splitsign.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for splitsign.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    println!("systemd-analyze security score: {score}");
    assert!(score <= 1.0, "exposure {score} > 1.0:\n{text}");
}

#[test]
fn socket_activation_ready_watchdog_reload_stop() {
    let dir = Dir::new();
    let m = FakeSystemd::new(&dir);
    let mut child = m.spawn(&dir, &[], &[("WATCHDOG_USEC", "1000000")]);
    let ready = m.expect("READY=1", Duration::from_secs(20));
    let status = ready
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .expect("STATUS with READY");
    assert!(status.contains("active key"), "{status}");

    // It serves on the socket systemd passed, not on one of its own.
    let mut c = Conn::open(&m.socket).unwrap();
    let kid = ok(c.sign(json!({"sub":"a"})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        status.contains(&kid),
        "STATUS names the active kid: {status}"
    );
    assert!(
        !dir.socket().exists(),
        "no self-bound socket under socket activation"
    );

    // WATCHDOG=1 every half interval (0.5 s): count them over 2.5 s.
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        if m.next(Duration::from_millis(100))
            .is_some_and(|msg| msg.contains("WATCHDOG=1"))
        {
            pings += 1;
        }
    }
    assert!(
        (3..=7).contains(&pings),
        "{pings} watchdog pings in 2.5 s at a 0.5 s period"
    );

    // SIGHUP: RELOADING=1, then READY=1 again.
    signal(&child, rustix::process::Signal::HUP);
    m.expect("RELOADING=1", Duration::from_secs(5));
    m.expect("READY=1", Duration::from_secs(5));
    ok(c.sign(json!({})));

    // SIGTERM: STOPPING=1, then exit 0; the socket (systemd's) stays.
    signal(&child, rustix::process::Signal::TERM);
    m.expect("STOPPING=1", Duration::from_secs(5));
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
    assert!(
        m.socket.exists(),
        "the daemon leaves systemd's socket alone"
    );
}

#[test]
fn a_client_connecting_during_a_restart_is_served_by_the_next_instance() {
    let dir = Dir::new();
    let m = FakeSystemd::new(&dir);
    let mut first = m.spawn(&dir, &[], &[]);
    m.expect("READY=1", Duration::from_secs(20));
    let kid = ok(Conn::open(&m.socket).unwrap().sign(json!({})))["kid"].clone();
    signal(&first, rustix::process::Signal::TERM);
    m.expect("STOPPING=1", Duration::from_secs(5));
    assert!(wait_exit(&mut first, Duration::from_secs(15)).success());

    // No daemon runs now. The connection waits in the listener's backlog.
    let mut c = Conn::open(&m.socket).expect("connect while no daemon runs");
    c.send_raw(b"{\"id\":1,\"op\":\"sign\",\"claims\":{\"sub\":\"between\"}}\n");
    let mut second = m.spawn(&dir, &[], &[]);
    let r = ok(c.recv().expect("served by the next instance"));
    assert_eq!(r["id"], 1);
    assert_eq!(r["kid"], kid, "same key after the restart");
    signal(&second, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut second, Duration::from_secs(15)).success());
}

#[test]
fn reload_applies_a_valid_config_and_refuses_a_bad_one() {
    let dir = Dir::new();
    let m = FakeSystemd::new(&dir);
    let cfg = |ttl: &str| m.config(&format!("default_ttl = \"{ttl}\"\n"));
    let path = dir.write_config(&cfg("5m"));
    let mut child = m.spawn(&dir, &["--config", path.to_str().unwrap()], &[]);
    m.expect("READY=1", Duration::from_secs(20));
    let mut c = Conn::open(&m.socket).unwrap();
    let lifetime = |c: &mut Conn| {
        let t = ok(c.sign(json!({})));
        let v = ok(c.request(json!({"op":"verify","token":t["token"]})));
        v["claims"]["exp"].as_i64().unwrap() - v["claims"]["iat"].as_i64().unwrap()
    };
    assert_eq!(lifetime(&mut c), 300);

    // A config that fails validation: refused, the old one stays.
    dir.write_config(&format!("{}max_ttl = \"1m\"\n", cfg("2m")));
    signal(&child, rustix::process::Signal::HUP);
    m.expect("RELOADING=1", Duration::from_secs(5));
    m.expect("READY=1", Duration::from_secs(5));
    assert_eq!(lifetime(&mut c), 300);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("reload refused") && log.contains("default_ttl"),
        "{log}"
    );

    // A path change needs a restart: refused too.
    dir.write_config(&cfg("2m").replace("var/splitsign.db", "var/other.db"));
    signal(&child, rustix::process::Signal::HUP);
    m.expect("READY=1", Duration::from_secs(5));
    assert_eq!(lifetime(&mut c), 300);

    // A valid change applies, on the same connection.
    dir.write_config(&cfg("2m"));
    signal(&child, rustix::process::Signal::HUP);
    m.expect("READY=1", Duration::from_secs(5));
    assert_eq!(lifetime(&mut c), 120);
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn splitsign_reload_asks_the_daemon_over_its_socket() {
    let dir = Dir::new();
    let m = FakeSystemd::new(&dir);
    let cfg = |ttl: &str| m.config(&format!("default_ttl = \"{ttl}\"\n"));
    let path = dir.write_config(&cfg("5m"));
    let config = path.to_str().unwrap();
    let mut child = m.spawn(&dir, &["--config", config], &[]);
    m.expect("READY=1", Duration::from_secs(20));
    let lifetime = || {
        let mut c = Conn::open(&m.socket).unwrap();
        let t = ok(c.sign(json!({})));
        let v = ok(c.request(json!({"op":"verify","token":t["token"]})));
        v["claims"]["exp"].as_i64().unwrap() - v["claims"]["iat"].as_i64().unwrap()
    };
    assert_eq!(lifetime(), 300);
    // A change that needs a restart: `reload` fails and says why; the
    // running config stays.
    dir.write_config(&cfg("2m").replace("var/splitsign.db", "var/other.db"));
    let out = dir.run(&["--config", config, "reload"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`db`") && err.contains("restart"), "{err}");
    assert_eq!(lifetime(), 300);
    // A valid change applies, and systemd hears RELOADING=1 then READY=1.
    dir.write_config(&cfg("2m"));
    let out = dir.run(&["--config", config, "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.expect("RELOADING=1", Duration::from_secs(5));
    m.expect("READY=1", Duration::from_secs(5));
    assert_eq!(lifetime(), 120);
    assert!(child.try_wait().unwrap().is_none(), "no restart");
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn a_stalled_accept_loop_stops_the_watchdog() {
    // With RLIMIT_NOFILE at 48, enough idle clients make accept() fail with
    // EMFILE: the daemon stops pinging until they go away.
    let dir = Dir::new();
    let m = FakeSystemd::new(&dir);
    // Unnamed fd (no LISTEN_FDNAMES), as older systemd or socket-activate pass it.
    let mut cmd = activated(&dir, &[], m.listener.as_raw_fd(), Some(48));
    cmd.env("NOTIFY_SOCKET", &m.notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap());
    let mut child = Started::spawn(&mut cmd);
    m.expect("READY=1", Duration::from_secs(20));
    m.expect("WATCHDOG=1", Duration::from_secs(3));

    let mut clients: Vec<Conn> = (0..60).map(|_| Conn::open(&m.socket).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(1500));
    // Drain what was sent before the stall was noticed, then count.
    while m.next(Duration::from_millis(50)).is_some() {}
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if m.next(Duration::from_millis(100))
            .is_some_and(|s| s.contains("WATCHDOG=1"))
        {
            pings += 1;
        }
    }
    assert_eq!(pings, 0, "no pings while accept() fails");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("withholding watchdog pings"), "{log}");

    clients.clear();
    m.expect("WATCHDOG=1", Duration::from_secs(5));
    ok(Conn::open(&m.socket).unwrap().sign(json!({})));
    signal(&child, rustix::process::Signal::TERM);
    assert!(wait_exit(&mut child, Duration::from_secs(15)).success());
}

#[test]
fn an_fd_that_is_not_a_listening_unix_socket_is_refused() {
    let dir = Dir::new();
    let file = std::fs::File::create(dir.path().join("not-a-socket")).unwrap();
    let mut cmd = activated(&dir, &[], file.as_raw_fd(), None);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a listening Unix stream socket"));
}

/// What systemd 252 passes for `StateDirectory=splitsign/shares
/// splitsign/db`: the list sorted, `db` first.
fn sorted_state_directory(dir: &Dir) -> String {
    let state = dir.path().join("state");
    format!(
        "{}:{}",
        state.join("db").display(),
        state.join("shares").display()
    )
}

fn start_with_state(dir: &Dir) -> Result<crate::util::Daemon, crate::util::Exited> {
    let sock = dir.path().join("s.sock");
    let env = sorted_state_directory(dir);
    crate::util::Daemon::start_with_env(
        dir,
        &["--socket", sock.to_str().unwrap()],
        &[("STATE_DIRECTORY", env.as_str())],
    )
}

#[test]
fn state_directories_are_mapped_by_name_whatever_their_order() {
    let dir = Dir::new();
    let state = dir.path().join("state");
    for d in ["db", "shares"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
        std::fs::set_permissions(
            state.join(d),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
    }
    let d = start_with_state(&dir).unwrap();
    let kid = ok(d.conn().sign(json!({})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    d.stop();
    // Each directory holds what its name says.
    let names = |sub: &str| -> Vec<String> {
        std::fs::read_dir(state.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        names("shares").iter().any(|n| n.ends_with(".share")),
        "{:?}",
        names("shares")
    );
    assert!(!names("shares").iter().any(|n| n.contains("splitsign.db")));
    assert!(
        names("db").iter().any(|n| n == "splitsign.db"),
        "{:?}",
        names("db")
    );
    assert!(!names("db").iter().any(|n| n.ends_with(".share")));
    // A share file moved into the database's directory: refused, not used.
    let share = state.join("shares").join(format!("{kid}.1.share"));
    let stray = state.join("db").join(format!("{kid}.1.share"));
    std::fs::copy(&share, &stray).unwrap();
    let e = match start_with_state(&dir) {
        Ok(d) => panic!("started: {}", d.stop()),
        Err(e) => e,
    };
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    assert!(e.stderr.contains("holds a share file"), "{}", e.stderr);
    std::fs::remove_file(&stray).unwrap();
    // A SQLite database in the share directory: refused too.
    std::fs::copy(state.join("db/splitsign.db"), state.join("shares/old.db")).unwrap();
    let e = match start_with_state(&dir) {
        Ok(d) => panic!("started: {}", d.stop()),
        Err(e) => e,
    };
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    assert!(e.stderr.contains("holds a SQLite database"), "{}", e.stderr);
}

#[test]
fn the_swapped_layout_of_0_1_keeps_working_and_says_so() {
    // What 0.1 left under systemd: the database in …/shares, the file
    // shares in …/db.
    let dir = Dir::new();
    let state = dir.path().join("state");
    let legacy = dir.write_config(&format!(
        "shares_dir = \"{}\"\ndb = \"{}\"\nsocket = \"s.sock\"\n",
        state.join("db").display(),
        state.join("shares/splitsign.db").display()
    ));
    let sock = dir.path().join("s.sock");
    let d = crate::util::Daemon::start_with(
        &dir,
        &[
            "--config",
            legacy.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
    )
    .unwrap();
    let (token, kid) = {
        let r = ok(d.conn().sign(json!({"sub":"a"})));
        (
            r["token"].as_str().unwrap().to_owned(),
            r["kid"].as_str().unwrap().to_owned(),
        )
    };
    d.stop();
    std::fs::remove_file(&legacy).unwrap();
    let d = start_with_state(&dir).unwrap();
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());
    assert_eq!(
        d.conn().request(json!({"op":"verify","token":token}))["ok"],
        true
    );
    let log = d.stop();
    assert!(log.contains("where splitsign 0.1 put them"), "{log}");
}

/// systemd may send SIGTERM the moment READY=1 arrives (a `restart` right
/// after a start). The daemon must stop then, even when installing its
/// signal handlers is slow: strace holds every `rt_sigaction` 200 ms, and
/// SIGTERM goes out as soon as the log says ready.
#[test]
fn sigterm_right_after_ready_stops_the_daemon() {
    if !crate::util::have_strace() {
        return;
    }
    let dir = Dir::new();
    let log = dir.path().join("daemon.log");
    let mut strace = Started::spawn(
        Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=rt_sigaction"])
            .args([
                "-e",
                "inject=rt_sigaction:delay_exit=200000",
                "--",
                BIN,
                "serve",
            ])
            .current_dir(dir.path())
            .env_remove("STATE_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" ready ")
    {
        assert!(Instant::now() < deadline, "never ready");
        assert!(strace.try_wait().unwrap().is_none(), "exited before ready");
        std::thread::sleep(Duration::from_millis(2));
    }
    let children = format!("/proc/{0}/task/{0}/children", strace.id());
    let daemon: i32 = std::fs::read_to_string(children)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the traced daemon")
        .parse()
        .unwrap();
    let pid = rustix::process::Pid::from_raw(daemon).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let stop = Instant::now() + Duration::from_secs(20);
    while strace.try_wait().unwrap().is_none() && Instant::now() < stop {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = strace.try_wait().unwrap();
    if stopped.is_none() {
        // Leave nothing behind: the daemon this test started, by pid.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let status = stopped.unwrap_or_else(|| {
        panic!(
            "a SIGTERM right after ready was lost: the daemon still runs\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert!(status.success(), "{status:?}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("SIGTERM: shutting down")
    );
}
