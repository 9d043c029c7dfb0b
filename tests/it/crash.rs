//! Crash safety: kill -9 the real process at every step of a rotation, a
//! re-split, and the daemon's own pre-publication, then restart and check
//! that exactly one key is active with both shares rebuilding it, that
//! every token issued before verifies, and that no orphan is left.
//!
//! "Every step" is every system call that changes a store: strace's
//! `inject=SYSCALL:signal=SIGKILL:when=N` kills the process on entry to the
//! N-th call of that syscall, so everything before it happened and nothing
//! after. The counts come from a clean traced run of the same command.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{BIN, Daemon, Dir, Started, copy_dir, have_strace, ok};

/// The syscalls through which a command changes the stores.
pub(crate) const STEPS: &str =
    "openat,pwrite64,fsync,fdatasync,rename,renameat2,unlink,unlinkat,ftruncate";
/// With PostgreSQL, also every message sent to the server.
const PG_STEPS: &str =
    "openat,pwrite64,fsync,fdatasync,rename,renameat2,unlink,unlinkat,ftruncate,sendto";

/// strace; each test asks [`have_strace`] first.
fn strace() -> &'static str {
    "strace"
}

/// Per-syscall counts of a clean traced run of `args` in `dir`, and, with
/// `store_opens_only`, the numbers of the `openat` calls that open a path
/// in `dir` (the stores), of all the calls to `openat`.
fn count_steps(
    dir: &Dir,
    args: &[&str],
    until_ready: bool,
    steps: &str,
    store_opens_only: bool,
) -> (BTreeMap<String, usize>, Option<Vec<usize>>) {
    let trace = dir.path().join("trace.txt");
    let mut cmd = dir.cmd();
    cmd.current_dir(dir.path());
    let mut child = Started::spawn(
        Command::new(strace())
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .args(["-e", &format!("trace={steps}"), "--", BIN])
            .args(args)
            .current_dir(dir.path())
            .env_remove("STATE_DIRECTORY")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("clean.log")).unwrap()),
    );
    if until_ready {
        wait_ready_then_term(&mut child, &dir.path().join("clean.log"));
    }
    assert!(
        child.wait().unwrap().success(),
        "clean run of {args:?} failed"
    );
    let mut counts = BTreeMap::new();
    let mut store_opens = Vec::new();
    let store = format!("\"{}/", dir.path().display());
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        let rest = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        if let Some((name, args)) = rest.split_once('(')
            && !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            let n: &mut usize = counts.entry(name.to_owned()).or_default();
            *n += 1;
            if name == "openat" && args.contains(&store) {
                store_opens.push(*n);
            }
        }
    }
    let _ = std::fs::remove_file(trace);
    (counts, store_opens_only.then_some(store_opens))
}

/// Wait until a traced daemon logs "ready" (then SIGTERM it) or exits.
fn wait_ready_then_term(child: &mut std::process::Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(" ready ")
        {
            // SIGTERM the daemon itself (strace's child), as systemd would.
            let children = format!("/proc/{0}/task/{0}/children", child.id());
            for pid in std::fs::read_to_string(children)
                .unwrap_or_default()
                .split_whitespace()
            {
                let pid = rustix::process::Pid::from_raw(pid.parse().unwrap()).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("traced daemon neither exited nor became ready");
}

/// Run `args` under strace in `dir`, killing it at the `n`-th `syscall`.
/// Returns whether the kill happened.
fn run_killed_at(
    dir: &Dir,
    args: &[&str],
    (syscall, n): (&str, usize),
    daemon: bool,
    steps: &str,
) -> bool {
    let log = dir.path().join("killed.log");
    let mut child = Started::spawn(
        Command::new(strace())
            .args(["-f", "-qq", "-o", "/dev/null"])
            .args(["-e", &format!("trace={steps}")])
            .args(["-e", &format!("inject={syscall}:signal=SIGKILL:when={n}")])
            .args(["--", BIN])
            .args(args)
            .current_dir(dir.path())
            .env_remove("STATE_DIRECTORY")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    if daemon {
        wait_ready_then_term(&mut child, &log);
    }
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(9)
}

/// The invariants after a crash and a restart with `start` (the
/// arguments of `serve`). Tokens issued before verify,
/// except after a committed emergency rotation (`revoked_if_switched`),
/// whose whole point is that they stop verifying.
pub(crate) fn check_after_crash(
    dir: &Dir,
    start: &[&str],
    tokens: &[String],
    old_kid: &str,
    revoked_if_switched: bool,
    what: &str,
) -> String {
    let d = Daemon::start_with(dir, start)
        .unwrap_or_else(|e| panic!("{what}: the daemon must restart after the crash: {e:?}"));
    let mut c = d.conn();
    let status = ok(c.request(json!({"op":"status"})))["status"].clone();
    let keys = status["keys"].as_array().unwrap();
    let active: Vec<&Value> = keys.iter().filter(|k| k["state"] == "active").collect();
    assert_eq!(active.len(), 1, "{what}: exactly one active key: {status}");
    let active_kid = active[0]["kid"].as_str().unwrap().to_owned();
    let revoked = revoked_if_switched && active_kid != old_kid;
    for t in tokens {
        let r = c.request(json!({"op":"verify","token":t}));
        if revoked {
            assert_eq!(r["error"]["code"], "unknown_key", "{what}: {r}");
        } else {
            assert_eq!(
                r["ok"], true,
                "{what}: a token issued before the crash fails: {r}"
            );
        }
    }
    assert_eq!(ok(c.sign(json!({})))["kid"], active_kid.as_str());
    // No unverified rows, no orphan or temp files: every file share is the
    // current generation of a key that may sign.
    let sql = dir.sql();
    let unverified: i64 = sql
        .query_row("SELECT count(*) FROM keys WHERE verified = 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(unverified, 0, "{what}: an interrupted creation survived");
    for f in dir.share_files() {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        let (kid, generation) = name
            .strip_suffix(".share")
            .and_then(|s| s.rsplit_once('.'))
            .unwrap_or_else(|| panic!("{what}: stray file {name}"));
        let state = keys
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].clone());
        assert!(
            state == Some(json!("active")) || state == Some(json!("pending")),
            "{what}: orphan share file {name} (state {state:?})"
        );
        let current: i64 = sql
            .query_row(
                "SELECT share_generation FROM keys WHERE kid = ?1",
                [kid],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            generation.parse::<i64>().unwrap(),
            current,
            "{what}: old generation {name} left"
        );
    }
    // Every key that may sign has exactly one db share at its generation.
    let bad: i64 = sql
        .query_row(
            "SELECT count(*) FROM db_shares s JOIN keys k ON k.kid = s.kid WHERE s.generation <> k.share_generation",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bad, 0, "{what}: a db share of an old generation survived");
    d.stop();
    active_kid
}

/// A stopped deployment with one key and three tokens issued.
fn template() -> (Dir, Vec<String>, String) {
    let dir = Dir::new();
    let (tokens, kid) = issue_tokens(&dir, &[]);
    (dir, tokens, kid)
}

/// Start the daemon of `dir` (with `args`), issue three tokens of an hour
/// and stop it: the tokens, and the kid that signs.
pub(crate) fn issue_tokens(dir: &Dir, args: &[&str]) -> (Vec<String>, String) {
    let d = Daemon::start_with(dir, args).unwrap();
    let mut c = d.conn();
    let tokens: Vec<String> = (0..3)
        .map(|i| {
            ok(c.request(json!({"op":"sign","claims":{"sub":format!("u{i}")},"ttl":3600})))["token"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let kid = ok(c.sign(json!({})))["kid"].as_str().unwrap().to_owned();
    drop(c);
    d.stop();
    (tokens, kid)
}

/// How a crash loop runs: the command, the syscalls it is killed at,
/// whether it is a daemon (killed on its way to ready), and what to put
/// back in the shared PostgreSQL before each run.
pub(crate) struct Loop<'a> {
    pub args: &'a [&'a str],
    pub steps: &'a str,
    pub daemon: bool,
    pub reset: &'a dyn Fn(),
}

/// Kill `l.args` at every step of a clean traced run, each time in a fresh
/// copy of `tpl`, then call `check(dir, what)`. Returns the per-syscall
/// counts of the clean run and how many runs were killed.
pub(crate) fn at_every_step(
    tpl: &Dir,
    l: &Loop,
    check: impl FnMut(&Dir, &str),
) -> (BTreeMap<String, usize>, usize) {
    at_steps(tpl, l, false, check)
}

/// [`at_every_step`], but of the `openat` calls only those that open a
/// store's path: the others (the dynamic loader's, a TSS library looking
/// for its TCTI module in a dozen directories) change no store, so a kill
/// there leaves the stores as a kill at the next store step does.
#[cfg(feature = "tpm2")]
fn at_every_store_step(
    tpl: &Dir,
    l: &Loop,
    check: impl FnMut(&Dir, &str),
) -> (BTreeMap<String, usize>, usize) {
    at_steps(tpl, l, true, check)
}

fn at_steps(
    tpl: &Dir,
    l: &Loop,
    store_opens_only: bool,
    mut check: impl FnMut(&Dir, &str),
) -> (BTreeMap<String, usize>, usize) {
    let probe = Dir::new();
    copy_dir(tpl.path(), probe.path());
    (l.reset)();
    let (counts, store_opens) = count_steps(&probe, l.args, l.daemon, l.steps, store_opens_only);
    assert!(
        counts.values().sum::<usize>() > 10,
        "the trace saw the steps: {counts:?}"
    );
    let mut killed = 0;
    for (syscall, &count) in &counts {
        let at: Vec<usize> = match &store_opens {
            Some(opens) if syscall == "openat" => opens.clone(),
            _ => (1..=count).collect(),
        };
        for n in at {
            let dir = Dir::new();
            copy_dir(tpl.path(), dir.path());
            (l.reset)();
            if run_killed_at(&dir, l.args, (syscall, n), l.daemon, l.steps) {
                killed += 1;
            }
            check(&dir, &format!("{:?} killed at {syscall} #{n}", l.args));
        }
    }
    (counts, killed)
}

/// Kill `args` at every step; after each, restart and check. Returns how
/// many runs were killed and, of those, how many ended with a new key.
fn every_step(args: &[&str]) -> (usize, usize) {
    let (tpl, tokens, kid) = template();
    let emergency = args.contains(&"--emergency");
    let mut switched = 0;
    let l = Loop {
        args,
        steps: STEPS,
        daemon: false,
        reset: &|| {},
    };
    let (_, killed) = at_every_step(&tpl, &l, |dir, what| {
        if check_after_crash(dir, &[], &tokens, &kid, emergency, what) != kid {
            switched += 1;
        }
    });
    (killed, switched)
}

#[test]
fn kill_9_at_every_step_of_a_rotation() {
    if !have_strace() {
        return;
    }
    let (killed, switched) = every_step(&["rotate"]);
    assert!(killed > 40, "most steps were interrupted ({killed})");
    // Early kills leave the old key active, late ones the new key.
    assert!(
        switched > 0 && switched < killed,
        "switched {switched} of {killed}"
    );
}

#[test]
fn kill_9_at_every_step_of_an_emergency_rotation() {
    if !have_strace() {
        return;
    }
    let (killed, switched) = every_step(&["rotate", "--emergency"]);
    assert!(
        killed > 40 && switched > 0 && switched < killed,
        "{switched} of {killed}"
    );
}

#[test]
fn kill_9_at_every_step_of_a_reshare() {
    if !have_strace() {
        return;
    }
    let (killed, switched) = every_step(&["reshare"]);
    assert!(killed > 30, "{killed}");
    assert_eq!(switched, 0, "a reshare keeps the key");
}

#[test]
fn kill_9_at_every_step_of_the_daemons_prepublication() {
    if !have_strace() {
        return;
    }
    // A key whose successor is due one second after it is created: the
    // daemon pre-publishes the next key while it starts.
    let tpl = {
        let dir = Dir::new();
        crate::lifecycle::fast_config(&dir, "1h", "3599s", "");
        let d = Daemon::start_with(&dir, &["--config", "config.toml"]).unwrap();
        ok(d.conn().sign(json!({})));
        d.stop();
        // The template's key was created with a pending successor; drop
        // the successor so that the next start must create it again.
        let sql = dir.sql();
        sql.execute("DELETE FROM keys WHERE activate_at > created_at", [])
            .unwrap();
        for f in dir.share_files() {
            let kid = f
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_owned();
            let n: i64 = sql
                .query_row("SELECT count(*) FROM keys WHERE kid = ?1", [&kid], |r| {
                    r.get(0)
                })
                .unwrap();
            if n == 0 {
                std::fs::remove_file(f).unwrap();
            }
        }
        // Let the successor fall due: from now on it is created while the
        // daemon starts, before it reports ready.
        std::thread::sleep(Duration::from_millis(1500));
        dir
    };
    let args = ["--config", "config.toml", "serve"];
    let l = Loop {
        args: &args,
        steps: STEPS,
        daemon: true,
        reset: &|| {},
    };
    let (_, killed) = at_every_step(&tpl, &l, |dir, what| {
        let d = Daemon::start_with(dir, &["--config", "config.toml"])
            .unwrap_or_else(|e| panic!("{what}: restart failed: {e:?}"));
        let st = ok(d.conn().request(json!({"op":"status"})))["status"].clone();
        let states: Vec<&str> = st["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["state"].as_str().unwrap())
            .collect();
        assert_eq!(
            states.iter().filter(|s| **s == "active").count(),
            1,
            "{what}: {st}"
        );
        assert_eq!(
            states.iter().filter(|s| **s == "pending").count(),
            1,
            "{what}: the successor is published: {st}"
        );
        assert_eq!(
            dir.share_files().len(),
            2,
            "{what}: two keys' file shares, no orphans"
        );
        d.stop();
    });
    assert!(killed > 20, "{killed}");
}

/// kill -9 at every step of a rotation (and of an emergency rotation)
/// against PostgreSQL, including every message sent to the server. After
/// each: exactly one active key for the node, both shares rebuild it
/// (`check`), tokens issued before verify, no unverified row, no share
/// of an old generation, no orphan file.
#[test]
fn kill_9_at_every_step_of_a_rotation_against_postgresql() {
    if !have_strace() {
        return;
    }
    let pg = crate::pg::PgServer::start();
    let tpl = crate::cluster::node_dir(&pg, "node_a", "");
    pg.apply_schema(&["node_a"]);
    let cfg = ["--config", "config.toml"];
    let (tokens, kid) = issue_tokens(&tpl, &cfg);
    // The node's rows as the template left them, to put back before each run.
    let restore = snapshot_node_a(&pg);
    let mut totals = Vec::new();
    for emergency in [false, true] {
        let mut args = vec!["--config", "config.toml", "rotate"];
        if emergency {
            args.push("--emergency");
        }
        let mut switched = 0;
        let l = Loop {
            args: &args,
            steps: PG_STEPS,
            daemon: false,
            reset: &restore,
        };
        let (counts, killed) = at_every_step(&tpl, &l, |dir, what| {
            if check_after_crash_pg(&pg, dir, &tokens, &kid, emergency, what) {
                switched += 1;
            }
        });
        assert!(
            counts.get("sendto").copied().unwrap_or(0) > 5,
            "the trace saw the messages to the server: {counts:?}"
        );
        // Early kills leave the old key active, late ones the new key.
        assert!(
            killed > 40 && switched > 0 && switched < killed,
            "emergency {emergency}: switched {switched} of {killed}"
        );
        totals.push((killed, switched));
    }
    eprintln!("killed/switched (rotate, rotate --emergency): {totals:?}");
}

/// Take a copy of node_a's key rows and database shares; the closure puts
/// them back (before each run of a crash loop against PostgreSQL).
pub(crate) fn snapshot_node_a(pg: &crate::pg::PgServer) -> impl Fn() + '_ {
    pg.super_sql(
        "CREATE TABLE snap_keys AS SELECT * FROM splitsign_keys WHERE node = 'node_a';
         CREATE TABLE snap_shares AS SELECT * FROM splitsign_db_shares WHERE node = 'node_a';",
    );
    move || {
        pg.super_sql(
            "BEGIN;
             DELETE FROM splitsign_keys WHERE node = 'node_a';
             INSERT INTO splitsign_keys SELECT * FROM snap_keys;
             INSERT INTO splitsign_db_shares SELECT * FROM snap_shares;
             COMMIT;",
        );
    }
}

/// The invariants after a crash, for a node whose key store is PostgreSQL.
/// Returns whether the rotation happened (a new key is active, or, in a
/// cluster's rotation, published to sign in a moment).
pub(crate) fn check_after_crash_pg(
    pg: &crate::pg::PgServer,
    dir: &Dir,
    tokens: &[String],
    old_kid: &str,
    revoked_if_switched: bool,
    what: &str,
) -> bool {
    let d = Daemon::start_with(dir, &["--config", "config.toml"])
        .unwrap_or_else(|e| panic!("{what}: the node must restart after the crash: {e:?}"));
    let mut c = d.conn();
    let status = ok(c.request(json!({"op":"status"})))["status"].clone();
    let keys: Vec<&Value> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["node"] == "node_a")
        .collect();
    let active: Vec<&&Value> = keys.iter().filter(|k| k["state"] == "active").collect();
    assert_eq!(active.len(), 1, "{what}: exactly one active key: {status}");
    let active_kid = active[0]["kid"].as_str().unwrap().to_owned();
    let revoked = revoked_if_switched && active_kid != old_kid;
    for t in tokens {
        let r = c.request(json!({"op":"verify","token":t}));
        if revoked {
            assert_eq!(r["error"]["code"], "unknown_key", "{what}: {r}");
        } else {
            assert_eq!(r["ok"], true, "{what}: a token issued before fails: {r}");
        }
    }
    // A cluster's rotation activates its key a moment after it is made: a
    // kill in that moment leaves it pending, and under load it may take
    // over between the status above and this sign. The key that signs is
    // the one active at one of the two instants.
    let signed = ok(c.sign(json!({})))["kid"].clone();
    if signed != active_kid.as_str() {
        let later = ok(c.request(json!({"op":"status"})))["status"].clone();
        assert_eq!(
            signed, later["active_kid"],
            "{what}: the key that signs is the active one: {status} then {later}"
        );
        assert!(
            keys.iter()
                .any(|k| k["kid"] == signed && k["state"] == "pending"),
            "{what}: a key that takes over was pending: {status}"
        );
    }
    drop(c);
    d.stop();
    // Both shares of every key that may sign rebuild it.
    let out = dir.run(&["--config", "config.toml", "check"]);
    assert!(
        out.status.success(),
        "{what}: check: {}",
        crate::pg::show(&out)
    );
    let rows = pg.super_sql(
        "SELECT 'unverified', count(*) FROM splitsign_keys WHERE node = 'node_a' AND NOT verified
         UNION ALL
         SELECT 'old generation', count(*) FROM splitsign_db_shares s JOIN splitsign_keys k
             USING (kid) WHERE s.generation <> k.share_generation
         UNION ALL
         SELECT 'pending re-split', count(*) FROM splitsign_keys WHERE pending_generation IS NOT NULL;",
    );
    for line in rows.lines() {
        assert!(line.ends_with("|0"), "{what}: {line}");
    }
    let current = pg.super_sql(
        "SELECT kid || '.' || share_generation || '.share' FROM splitsign_keys
         WHERE node = 'node_a' AND verified;",
    );
    for f in dir.share_files() {
        let name = f.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(
            current.lines().any(|l| l == name),
            "{what}: orphan share file {name}"
        );
        let kid = name.split('.').next().unwrap();
        let state = keys
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].clone());
        assert!(
            state == Some(json!("active")) || state == Some(json!("pending")),
            "{what}: share file {name} of a key that does not sign (state {state:?})"
        );
    }
    active_kid != old_kid || keys.iter().any(|k| k["state"] == "pending")
}

/// kill -9 at every step of `migrate-store --to-postgres`: afterwards the
/// old store (SQLite) or the new one (PostgreSQL) serves the same key, and
/// running the move again finishes it.
#[test]
fn kill_9_at_every_step_of_a_move_to_postgresql() {
    if !have_strace() {
        return;
    }
    let pg = crate::pg::PgServer::start();
    let (tpl, tokens, kid) = template();
    let pw = pg.add_node_role("web1", tpl.path());
    pg.apply_schema(&["web1"]);
    crate::pg::write_node_config(&pg, tpl.path(), "web1", &pw, "");
    std::fs::rename(tpl.path().join("config.toml"), tpl.path().join("pg.toml")).unwrap();
    let args = ["--config", "pg.toml", "migrate-store", "--to-postgres"];
    let reset = || {
        pg.super_sql(
            "DELETE FROM splitsign_keys WHERE node = 'web1';
             DELETE FROM splitsign_revocations WHERE node = 'web1';
             DELETE FROM splitsign_nodes WHERE node = 'web1';",
        );
    };
    let mut moved = 0;
    let l = Loop {
        args: &args,
        steps: PG_STEPS,
        daemon: false,
        reset: &reset,
    };
    let (_, killed) = at_every_step(&tpl, &l, |dir, what| {
        // The new store, or else the old one, serves the same key.
        let serves = |extra: &[&str]| match Daemon::start_with(dir, extra) {
            Ok(d) => {
                let mut c = d.conn();
                let st = ok(c.request(json!({"op":"status"})))["status"].clone();
                assert_eq!(st["active_kid"], kid.as_str(), "{what}: {st}");
                for t in &tokens {
                    let r = c.request(json!({"op":"verify","token":t}));
                    assert_eq!(r["ok"], true, "{what}: {r}");
                }
                drop(c);
                d.stop();
                true
            }
            Err(e) => {
                assert_eq!(e.status.code(), Some(65), "{what}: {}", e.stderr);
                false
            }
        };
        if serves(&["--config", "pg.toml"]) {
            moved += 1;
        } else {
            assert!(serves(&[]), "{what}: neither store serves");
        }
        // Running it again finishes the move.
        let out = dir.run(&args);
        assert!(out.status.success(), "{what}: {}", crate::pg::show(&out));
        assert!(serves(&["--config", "pg.toml"]), "{what}: after the move");
    });
    assert!(
        killed > 20 && moved > 0 && moved < killed,
        "moved {moved} of {killed}"
    );
    eprintln!("migrate-store: killed {killed}, already moved {moved}");
}

/// kill -9 at every store step of `reseal` (clear → sealed to a real TPM,
/// swtpm): afterwards `check` passes, the next start signs with the same
/// key and verifies the tokens issued before, exactly one file share of the
/// key is left, of the same generation, in clear (the old one) or sealed
/// (the new one), the recovery share still recovers, and running `reseal`
/// again leaves it sealed.
#[cfg(feature = "tpm2")]
#[test]
fn kill_9_during_reseal() {
    if !have_strace() || !crate::util::have_swtpm() {
        return;
    }
    // One simulator for the whole (sequential) loop: every copy of the
    // deployment seals to the same TPM.
    let tpm = crate::util::Swtpm::start();
    let cfg = ["--config", "config.toml"];
    let paths =
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n";
    // A deployment in clear, with an offline recovery share, one key and
    // tokens issued; then switched to share_seal = "tpm2".
    let tpl = Dir::new();
    tpl.write_config(&format!("{paths}share_seal = \"none\"\n"));
    let out = tpl.run(&[
        "--config",
        "config.toml",
        "init",
        "--recovery-share",
        "recovery.share",
    ]);
    crate::util::assert_ok(&out);
    let (tokens, kid) = issue_tokens(&tpl, &cfg);
    let old = tpl.share_file();
    let old_generation = generation_of(&old);
    assert!(!is_sealed(&old), "the template's file share is in clear");
    tpl.write_config(&format!("{paths}{}", tpm.config()));

    let args = ["--config", "config.toml", "reseal"];
    let (mut clear, mut sealed) = (0, 0);
    let l = Loop {
        args: &args,
        steps: STEPS,
        daemon: false,
        reset: &|| {},
    };
    let (counts, killed) = at_every_store_step(&tpl, &l, |dir, what| {
        // Both shares rebuild the key, read as the stores are.
        let out = dir.run(&["--config", "config.toml", "check"]);
        assert!(
            out.status.success(),
            "{what}: check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Starts, signs with the same key, verifies the tokens issued
        // before; no orphan, no old generation left.
        let active = check_after_crash(dir, &cfg, &tokens, &kid, false, what);
        assert_eq!(active, kid, "{what}: the kid is unchanged");
        // Exactly one file share, of the same generation (reseal writes it
        // again in place): the old one in clear, or the new one sealed.
        let file = dir.share_file();
        match (generation_of(&file) - old_generation, is_sealed(&file)) {
            (0, false) => clear += 1,
            (0, true) => sealed += 1,
            other => panic!("{what}: {} is {other:?}", file.display()),
        }
        // Running it again finishes the job.
        let out = dir.run(&args);
        assert!(
            out.status.success(),
            "{what}: reseal again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.share_file();
        assert!(is_sealed(&file), "{what}: sealed after the second reseal");
        let out = dir.run(&["--config", "config.toml", "check"]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sealed to tpm2"),
            "{what}: check after the second reseal: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The recovery share made before still recovers the key (reseal
        // kept the generation and the split): with the file share lost,
        // `recover` writes it again, sealed.
        std::fs::remove_file(&file).unwrap();
        let out = dir.run(&[
            "--config",
            "config.toml",
            "recover",
            "--recovery-share",
            "recovery.share",
        ]);
        assert!(
            out.status.success() && is_sealed(&dir.share_file()),
            "{what}: recover after the reseal: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    eprintln!("reseal: {counts:?}; killed {killed}: {clear} left in clear, {sealed} sealed");
    assert!(killed > 15, "most steps were interrupted ({killed})");
    // Early kills leave the clear share, late ones the sealed one.
    assert!(clear > 0 && sealed > 0, "clear {clear}, sealed {sealed}");
    drop(tpm);
}

/// The generation of a share file `KID.GENERATION.share`.
#[cfg(feature = "tpm2")]
fn generation_of(file: &Path) -> u32 {
    let name = file.file_name().unwrap().to_str().unwrap();
    name.strip_suffix(".share")
        .and_then(|s| s.rsplit_once('.'))
        .and_then(|(_, g)| g.parse().ok())
        .unwrap_or_else(|| panic!("not a share file: {name}"))
}

/// Whether a share file holds its y sealed (`seal tpm2`, `sealed-y`).
#[cfg(feature = "tpm2")]
fn is_sealed(file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap();
    let sealed = text.lines().any(|l| l.starts_with("sealed-y "));
    assert_eq!(
        sealed,
        text.lines().any(|l| l.starts_with("seal tpm2 ")),
        "{}: {text}",
        file.display()
    );
    sealed
}
