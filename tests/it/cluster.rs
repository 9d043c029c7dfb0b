//! The PostgreSQL store and clusters, against a real server started for
//! each test (`pg`): three nodes sharing keys and revocations, PostgreSQL
//! going away and coming back, row-level security between nodes, what a
//! dump holds, kill -9 during a rotation, and moving a host from SQLite.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::pg::{self, PgServer, show, write_node_config};
use crate::util::{Daemon, Dir, FakeSystemd, assert_ok, code, ok};

/// A node of a cluster: a temp dir whose `config.toml` points at `pg` as
/// `node`'s role (made here).
pub fn node_dir(pg: &PgServer, node: &str, extra: &str) -> Dir {
    let dir = Dir::new();
    let pw = pg.add_node_role(node, dir.path());
    write_node_config(pg, dir.path(), node, &pw, extra);
    dir
}

pub fn start(dir: &Dir) -> Daemon {
    Daemon::start_with(dir, &["--config", "config.toml"])
        .unwrap_or_else(|e| panic!("node did not start: {e:?}"))
}

pub fn refused_start(dir: &Dir, args: &[&str]) -> crate::util::Exited {
    match Daemon::start_with(dir, args) {
        Ok(d) => panic!("the daemon started: {}", d.stop()),
        Err(e) => e,
    }
}

pub fn kids(d: &Daemon) -> BTreeSet<String> {
    ok(d.conn().request(json!({"op":"jwks"})))["jwks"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

pub fn status(d: &Daemon) -> Value {
    ok(d.conn().request(json!({"op":"status"})))["status"].clone()
}

pub fn sign(d: &Daemon, sub: &str) -> (String, String) {
    let r = ok(d
        .conn()
        .request(json!({"op":"sign","claims":{"sub":sub},"ttl":600})));
    (
        r["token"].as_str().unwrap().to_owned(),
        r["kid"].as_str().unwrap().to_owned(),
    )
}

pub fn verify(d: &Daemon, token: &str) -> Value {
    d.conn().request(json!({"op":"verify","token":token}))
}

/// Whether `d` answers `revoked` for `token` (an answer may also be ok).
pub fn revoked(d: &Daemon, token: &str) -> bool {
    verify(d, token)["error"]["code"] == "revoked"
}

/// Poll until `f` holds, at most `within`; returns how long it took.
pub fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if f() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A server with the schema applied, and three nodes started.
pub fn three_nodes() -> (PgServer, Vec<(Dir, Daemon)>) {
    let pg = PgServer::start();
    let names = ["node_a", "node_b", "node_c"];
    let dirs: Vec<Dir> = names.iter().map(|n| node_dir(&pg, n, "")).collect();
    pg.apply_schema(&names);
    let nodes = dirs
        .into_iter()
        .map(|dir| {
            let d = start(&dir);
            (dir, d)
        })
        .collect();
    (pg, nodes)
}

#[test]
fn three_nodes_verify_each_others_tokens_and_share_revocations() {
    let (mut pg, nodes) = three_nodes();
    let [(a_dir, a), (b_dir, b), (_c_dir, c)] = &nodes[..] else {
        unreachable!()
    };
    // Every node's JWKS is the union of the three nodes' keys (B and C
    // started after A: A learns of theirs by NOTIFY).
    let active: Vec<String> = [a, b, c]
        .iter()
        .map(|d| status(d)["active_kid"].as_str().unwrap().to_owned())
        .collect();
    for d in [a, b, c] {
        until(Duration::from_secs(2), "JWKS union", || {
            active.iter().all(|k| kids(d).contains(k))
        });
    }
    let st = status(a);
    assert_eq!(st["cluster"]["node"], "node_a", "{st}");
    assert_eq!(st["cluster"]["database"], "ok", "{st}");
    assert_eq!(st["cluster"]["nodes"], 3, "{st}");
    let nodes_of: BTreeSet<&str> = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes_of, ["node_a", "node_b", "node_c"].into());

    // A token from A verifies on B and C (and on A).
    let (token, kid) = sign(a, "alice");
    assert_eq!(kid, active[0]);
    for d in [a, b, c] {
        let r = verify(d, &token);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["claims"]["sub"], "alice");
    }

    // `revoke --sub` on A: B and C answer `revoked` within a second.
    let out = a_dir.run(&["--config", "config.toml", "revoke", "--sub", "alice"]);
    assert_ok(&out);
    let took = until(Duration::from_secs(1), "revocation reaches B and C", || {
        [b, c].iter().all(|d| revoked(d, &token))
    });
    eprintln!("revocation propagated to B and C in {took:?}");

    // A rotation on A is published on B and C before A signs with it.
    // While it happens, A is asked to sign and B and C for their JWKS in a
    // tight loop each; the first token with the new kid must be asked for
    // after B and C had answered with it in their JWKS.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let (first_signed, first_listed, new_kid) = std::thread::scope(|s| {
        let stop = &stop;
        let lister = |socket: std::path::PathBuf| {
            s.spawn(move || {
                let mut conn = crate::util::Conn::open(&socket).unwrap();
                let mut first = std::collections::BTreeMap::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = ok(conn.request(json!({"op":"jwks"})));
                    let at = t0.elapsed();
                    for k in r["jwks"]["keys"].as_array().unwrap() {
                        first
                            .entry(k["kid"].as_str().unwrap().to_owned())
                            .or_insert(at);
                    }
                }
                first
            })
        };
        let (lb, lc) = (lister(b.socket.clone()), lister(c.socket.clone()));
        let signer = s.spawn(|| {
            let mut conn = crate::util::Conn::open(&a.socket).unwrap();
            let mut first = std::collections::BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = t0.elapsed();
                let r = ok(conn.sign(json!({})));
                first
                    .entry(r["kid"].as_str().unwrap().to_owned())
                    .or_insert((asked, r["token"].as_str().unwrap().to_owned()));
            }
            first
        });
        std::thread::sleep(Duration::from_millis(200));
        let out = a_dir.run(&["--config", "config.toml", "rotate"]);
        assert_ok(&out);
        // "rotated: key <kid> signs from <time>; …"
        let new_kid = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_owned();
        assert_ne!(new_kid, kid);
        until(Duration::from_secs(5), "A signs with the new key", || {
            sign(a, "carol").1 == new_kid
        });
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (sb, sc) = (lb.join().unwrap(), lc.join().unwrap());
        let listed = [&sb, &sc].map(|m| *m.get(&new_kid).expect("B and C list the new key"));
        (signer.join().unwrap(), listed, new_kid)
    });
    let (asked, token_new) = first_signed
        .get(&new_kid)
        .cloned()
        .expect("the loop saw the new key sign");
    for listed in first_listed {
        assert!(
            listed < asked,
            "A was asked to sign with {new_kid} at {asked:?}, before B or C listed it ({listed:?})"
        );
    }
    let t_new = token_new;
    for d in [b, c] {
        assert_eq!(verify(d, &t_new)["ok"], true);
    }

    // PostgreSQL stops: A goes on signing and verifying (its own tokens and
    // B's), says it is degraded, and refuses what it cannot store.
    let (t_b, _) = sign(b, "dave");
    pg.stop();
    until(Duration::from_secs(3), "A notices", || {
        status(a)["cluster"]["database"] == "unreachable"
    });
    let (t_a, _) = sign(a, "erin");
    assert_eq!(verify(a, &t_a)["ok"], true);
    assert_eq!(verify(a, &t_b)["ok"], true);
    assert_eq!(
        code(&verify(a, &token)),
        "revoked",
        "revocations last read stay"
    );
    let out = a_dir.run(&["--config", "config.toml", "revoke", "--sub", "erin"]);
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        show(&out)
    );
    let text = String::from_utf8_lossy(
        &a_dir
            .run(&["--config", "config.toml", "status"])
            .stdout
            .clone(),
    )
    .into_owned();
    assert!(text.contains("database unreachable"), "{text}");

    // PostgreSQL returns: A catches up within a second or two, and a
    // revocation made on B reaches it.
    pg.start_again();
    until(Duration::from_secs(3), "A catches up", || {
        status(a)["cluster"]["database"] == "ok"
    });
    assert_ok(&b_dir.run(&["--config", "config.toml", "revoke", "--sub", "erin"]));
    until(Duration::from_secs(1), "B's revocation reaches A", || {
        revoked(a, &t_a)
    });

    // A notification A misses (its connections cut while B revokes) is
    // caught by the re-read that follows its reconnection.
    pg.super_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'node_a';",
    );
    assert_ok(&b_dir.run(&["--config", "config.toml", "revoke", "--sub", "dave"]));
    until(
        Duration::from_secs(3),
        "the missed revocation reaches A",
        || revoked(a, &t_b),
    );

    // Removing a node (docs/CLUSTER.md): the owner retires its keys now and
    // destroys its database shares; the other nodes drop its keys.
    let (t_c, _) = sign(c, "frank");
    pg.super_sql(
        "BEGIN;
         UPDATE splitsign_keys
            SET activate_at = LEAST(activate_at, t), deactivate_at = LEAST(deactivate_at, t),
                retire_at = t
           FROM (SELECT floor(extract(epoch FROM now()))::bigint AS t) AS now_
          WHERE node = 'node_c' AND retire_at > t;
         DELETE FROM splitsign_db_shares WHERE node = 'node_c';
         COMMIT;",
    );
    until(Duration::from_secs(2), "C's keys leave A's JWKS", || {
        !kids(a).contains(&active[2])
    });
    assert_eq!(code(&verify(a, &t_c)), "unknown_key");
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn start_waits_for_postgresql_and_creates_nothing_meanwhile() {
    let mut pg = PgServer::start();
    let dir = node_dir(&pg, "node_a", "");
    pg.apply_schema(&["node_a"]);
    pg.stop();
    let sd = FakeSystemd::new(&dir);
    let mut child = sd.spawn(&dir, &["--config", "config.toml"], &[]);
    let line = sd.expect(
        "STATUS=not ready: PostgreSQL is unreachable",
        Duration::from_secs(10),
    );
    assert!(line.contains("EXTEND_TIMEOUT_USEC="), "{line}");
    // Still waiting, with nothing created: no share file.
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "it keeps trying");
    assert!(dir.share_files().is_empty(), "{:?}", dir.share_files());
    pg.start_again();
    sd.expect("READY=1", Duration::from_secs(40));
    let socket = sd.socket.to_str().unwrap();
    let out = dir.run(&["--config", "config.toml", "--socket", socket, "sign"]);
    assert_ok(&out);
    assert_eq!(dir.share_files().len(), 1);
    crate::util::signal(&child, rustix::process::Signal::TERM);
    assert!(crate::util::wait_exit(&mut child, Duration::from_secs(20)).success());
}

#[test]
fn a_rotation_that_cannot_be_stored_never_outlives_the_active_key() {
    // Keys sign for 4 s; the successor is due 2 s before. PostgreSQL goes
    // away before it is made: the node signs until the active key's
    // deactivate_at, then refuses, and signs again once it can store one.
    let mut pg = PgServer::start();
    let dir = node_dir(
        &pg,
        "node_a",
        "rotation_interval = \"6s\"\nprepublish = \"2s\"\njwks_max_age = \"1s\"\n\
         max_ttl = \"3s\"\ndefault_ttl = \"2s\"\nleeway = \"0s\"\n",
    );
    pg.apply_schema(&["node_a"]);
    let d = start(&dir);
    let st = status(&d);
    let active = st["active_kid"].as_str().unwrap().to_owned();
    let key = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == active.as_str())
        .unwrap()
        .clone();
    let deactivate_at = key["deactivate_at"].as_i64().unwrap();
    // A successor pre-published at start would hide the case: drop it by
    // stopping PostgreSQL before it is due (at deactivate_at - 2 s).
    let pending = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["state"] == "pending");
    assert!(!pending, "no successor yet: {st}");
    pg.stop();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // Signing goes on with the active key until its deactivate_at.
    while now() < deactivate_at as f64 - 0.3 {
        let r = d.conn().sign(json!({}));
        assert_eq!(r["kid"], active.as_str(), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs_f64(
        (deactivate_at as f64 + 0.2 - now()).max(0.0),
    ));
    let r = d.conn().sign(json!({}));
    assert_eq!(
        code(&r),
        "unavailable",
        "never signs past deactivate_at: {r}"
    );
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("PostgreSQL is unreachable"), "{msg}");
    // Back: the node stores a key and signs again within a second or two.
    pg.start_again();
    until(Duration::from_secs(4), "signing resumes", || {
        d.conn().sign(json!({}))["ok"] == true
    });
    assert_ne!(d.conn().sign(json!({}))["kid"], active.as_str());
    d.stop();
}

#[test]
fn row_level_security_keeps_each_node_to_its_own_rows() {
    let pg = PgServer::start();
    let a_dir = node_dir(&pg, "node_a", "");
    let b_dir = node_dir(&pg, "node_b", "");
    pg.apply_schema(&["node_a", "node_b"]);
    assert_ok(&a_dir.run(&["--config", "config.toml", "init"]));
    assert_ok(&b_dir.run(&["--config", "config.toml", "init"]));
    let before = pg.super_sql(
        "SELECT kid, retire_at, verified FROM splitsign_keys WHERE node = 'node_b';
         SELECT kid, generation, encode(y, 'hex') FROM splitsign_db_shares WHERE node = 'node_b';",
    );
    assert!(before.lines().count() == 2, "{before}");
    let a_pw = pg.node_password("node_a");
    let as_a = |sql: &str| pg.sql_as("node_a", &a_pw, sql);
    // Reading: every node's keys, never another node's shares.
    let out = as_a("SELECT count(*) FROM splitsign_keys WHERE node = 'node_b'");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        show(&out)
    );
    let out = as_a("SELECT count(*) FROM splitsign_db_shares WHERE node = 'node_b'");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        show(&out)
    );
    // Changing B's rows: nothing happens, or an error.
    for sql in [
        "DELETE FROM splitsign_keys WHERE node = 'node_b'",
        "UPDATE splitsign_keys SET retire_at = 0, deactivate_at = 0, activate_at = 0, \
         created_at = 0 WHERE node = 'node_b'",
        "UPDATE splitsign_keys SET node = 'node_a' WHERE node = 'node_b'",
        "DELETE FROM splitsign_db_shares WHERE node = 'node_b'",
        "UPDATE splitsign_db_shares SET y = y WHERE node = 'node_b'",
        "DELETE FROM splitsign_nodes WHERE node = 'node_b'",
        "UPDATE splitsign_nodes SET deployment = '00000000000000000000000000000000'",
    ] {
        let out = as_a(sql);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || text.contains("permission denied") || text.contains("policy"),
            "{sql}: {}",
            show(&out)
        );
    }
    // Inserting rows as B: refused by the policy.
    for sql in [
        "INSERT INTO splitsign_revocations (kind, value, expires_at, created_at, node) \
         VALUES ('sub', 'x', extract(epoch FROM now())::bigint + 60, 0, 'node_b')",
        "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum) \
         SELECT 'node_b', kid, 9, 2, y, checksum FROM splitsign_db_shares WHERE node = 'node_a'",
        "INSERT INTO splitsign_nodes (node, deployment, created_at) \
         VALUES ('node_c', '00000000000000000000000000000000', 0)",
    ] {
        let out = as_a(sql);
        assert!(
            !out.status.success(),
            "{sql} must be refused: {}",
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("row-level security"),
            "{sql}: {}",
            show(&out)
        );
    }
    let after = pg.super_sql(
        "SELECT kid, retire_at, verified FROM splitsign_keys WHERE node = 'node_b';
         SELECT kid, generation, encode(y, 'hex') FROM splitsign_db_shares WHERE node = 'node_b';",
    );
    assert_eq!(before, after, "node_a changed node_b's rows");
    assert_ok(&b_dir.run(&["--config", "config.toml", "check"]));
    // A node name that is not its role's is refused before anything is
    // written (row-level security would refuse the writes).
    write_node_config(
        &pg,
        a_dir.path(),
        "node_b",
        &a_dir.path().join("pg-password"),
        "",
    );
    let cfg = std::fs::read_to_string(a_dir.path().join("config.toml"))
        .unwrap()
        .replace("user=node_b", "user=node_a");
    std::fs::write(a_dir.path().join("config.toml"), cfg).unwrap();
    let out = a_dir.run(&["--config", "config.toml", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("logs in to PostgreSQL as role \"node_a\""),
        "{}",
        show(&out)
    );
}

#[test]
fn a_database_dump_holds_no_file_share_and_no_key() {
    let (pg, nodes) = three_nodes();
    // More keys and generations: a rotation on A, a re-split on B.
    assert_ok(&nodes[0].0.run(&["--config", "config.toml", "rotate"]));
    assert_ok(&nodes[1].0.run(&["--config", "config.toml", "reshare"]));
    for (_, d) in &nodes {
        ok(d.conn().sign(json!({})));
    }
    let dump = pg.dump();
    let text = String::from_utf8_lossy(&dump).into_owned();
    assert!(
        text.contains("splitsign_db_shares"),
        "a dump of the right database"
    );
    let shares_in_db: Vec<(String, i64, Vec<u8>)> = pg
        .super_sql("SELECT kid, generation, encode(y, 'hex') FROM splitsign_db_shares;")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0].to_owned(), f[1].parse().unwrap(), hex(f[2]))
        })
        .collect();
    let mut scanned = 0;
    for (dir, _) in &nodes {
        for f in dir.share_files() {
            let share =
                splitsign::keys::share_format::decode_file(&std::fs::read(&f).unwrap()).unwrap();
            let y = share.y.as_bytes().to_vec();
            assert_absent(&dump, &y, &format!("file share {}", f.display()));
            // The key itself, rebuilt here from the file share and the
            // database share: not in the dump either.
            let db = shares_in_db
                .iter()
                .find(|(k, g, _)| *k == share.kid && *g == i64::from(share.generation))
                .unwrap_or_else(|| panic!("db share of {}", share.kid));
            let db_share = splitsign::keys::shamir::KeyShare {
                deployment: share.deployment.clone(),
                kid: share.kid.clone(),
                generation: share.generation,
                slot: splitsign::keys::shamir::Slot::Database,
                alg: share.alg,
                public_key: share.public_key,
                y: splitsign::keys::shamir::ShareY::from_slice(&db.2).unwrap(),
            };
            let key = splitsign::keys::shamir::recover(&share, &db_share).unwrap();
            assert_eq!(key.public_key(), share.public_key);
            assert_absent(
                &dump,
                &key.secret()[..],
                &format!("the seed of {}", share.kid),
            );
            scanned += 1;
        }
    }
    assert!(scanned >= 4, "{scanned} keys scanned");
    for (_, d) in nodes {
        d.stop();
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `secret` in none of the encodings a dump could hold it in.
fn assert_absent(dump: &[u8], secret: &[u8], what: &str) {
    use base64::Engine;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let forms: Vec<Vec<u8>> = vec![
        secret.to_vec(),
        hex.as_bytes().to_vec(),
        hex.to_uppercase().into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .trim_end_matches('=')
            .as_bytes()
            .to_vec(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(secret)
            .into_bytes(),
    ];
    for f in forms {
        assert!(
            !dump.windows(f.len()).any(|w| w == f.as_slice()),
            "{what} is in the dump"
        );
    }
}

#[test]
fn moving_a_host_from_sqlite_to_postgresql_keeps_its_tokens_verifying() {
    let pg = PgServer::start();
    // A single-host deployment with a token and a revocation.
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let (token, kid) = sign(&d, "alice");
    let (revoked, _) = sign(&d, "mallory");
    assert_ok(&dir.run(&["revoke", "--sub", "mallory"]));
    let jwk = ok(d.conn().request(json!({"op":"jwks"})))["jwks"]["keys"][0].clone();
    d.stop();
    // The same paths, now with PostgreSQL.
    let pw = pg.add_node_role("web1", dir.path());
    let squatter = Dir::new();
    let squatter_pw = pg.add_node_role("squatter", squatter.path());
    pg.apply_schema(&["web1", "squatter"]);
    // A member that saw the host's JWKS takes its kid first (with its
    // public key): it holds nothing up.
    let pk: String = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["x"].as_str().unwrap())
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let t = crate::util::now();
    let out = pg.sql_as(
        "squatter",
        std::fs::read_to_string(&squatter_pw).unwrap().trim(),
        &format!(
            "INSERT INTO splitsign_nodes (node, deployment, created_at) \
             VALUES ('squatter', '0123456789abcdef0123456789abcdef', 0);
             INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at,
             deactivate_at, retire_at, share_generation, verified, alg) VALUES ('squatter', '{kid}',
             decode('{pk}', 'hex'), 'generated', {t}, {t}, {}, {}, 1, true, 'EdDSA');",
            t + 60,
            t + 120
        ),
    );
    assert_ok(&out);
    write_node_config(&pg, dir.path(), "web1", &pw, "");
    let refused = refused_start(&dir, &["--config", "config.toml"]);
    assert_eq!(refused.status.code(), Some(65), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("migrate-store"),
        "{}",
        refused.stderr
    );
    let out = dir.run(&["--config", "config.toml", "migrate-store", "--to-postgres"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("moved 1 key(s)"),
        "{}",
        show(&out)
    );
    // Nothing of the keys is left in SQLite.
    let left: i64 = dir
        .sql()
        .query_row(
            "SELECT (SELECT count(*) FROM keys) + (SELECT count(*) FROM db_shares) + \
             (SELECT count(*) FROM revocations)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
    let d = start(&dir);
    assert_eq!(
        status(&d)["active_kid"],
        kid.as_str(),
        "the kid is unchanged"
    );
    assert_eq!(verify(&d, &token)["ok"], true);
    assert_eq!(code(&verify(&d, &revoked)), "revoked");
    assert_eq!(sign(&d, "bob").1, kid);
    d.stop();
    // Again: nothing to do.
    let out = dir.run(&["--config", "config.toml", "migrate-store", "--to-postgres"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already moved"));
    // Without `postgres`, the old store is refused, not used.
    std::fs::remove_file(dir.path().join("config.toml")).unwrap();
    let refused = refused_start(&dir, &[]);
    assert_eq!(refused.status.code(), Some(65), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("moved to PostgreSQL"),
        "{}",
        refused.stderr
    );
    let _ = pg::OWNER;
}

#[test]
fn admin_commands_work_against_postgresql() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pg = PgServer::start();
    let dir = node_dir(&pg, "node_a", "");
    pg.apply_schema(&["node_a"]);
    let cfg = ["--config", "config.toml"];
    let run = |args: &[&str]| dir.run(&[&cfg[..], args].concat());
    // import (a new node's first key), with an offline recovery share.
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let pem = key.to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(dir.path().join("key.pem"), pem.as_bytes()).unwrap();
    assert_ok(&run(&[
        "import",
        "--pem",
        "key.pem",
        "--recovery-share",
        "rec.share",
    ]));
    let out = run(&["import", "--pem", "key.pem"]);
    assert_eq!(out.status.code(), Some(2), "once only: {}", show(&out));
    // Offline status and check read PostgreSQL.
    let out = run(&["status", "--json"]);
    assert_ok(&out);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["keys"][0]["node"], "node_a", "{st}");
    assert_eq!(st["cluster"]["node"], "node_a", "{st}");
    assert_ok(&run(&["check"]));
    // Offline reshare writes a new generation to both stores.
    assert_ok(&run(&["reshare", "--recovery-share", "rec2.share"]));
    let generation = pg.super_sql("SELECT share_generation FROM splitsign_keys;");
    assert_eq!(generation.trim(), "2");
    // The database share is lost: serve refuses (65), recover rebuilds it
    // from the file share and the recovery share, serve starts again with
    // the imported key.
    pg.super_sql("DELETE FROM splitsign_db_shares;");
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(65), "{}", show(&out));
    let refused = refused_start(&dir, &cfg);
    assert_eq!(refused.status.code(), Some(65), "{}", refused.stderr);
    let out = run(&["recover", "--recovery-share", "rec.share"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the old recovery share no longer works"
    );
    let out = run(&["recover", "--recovery-share", "rec2.share"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("database share in PostgreSQL node node_a"),
        "{}",
        show(&out)
    );
    let d = start(&dir);
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes());
    assert_eq!(
        ok(d.conn().request(json!({"op":"jwks"})))["jwks"]["keys"][0]["x"],
        x.as_str()
    );
    d.stop();
    // Offline revoke goes to PostgreSQL.
    let out = run(&["revoke", "--sub", "zed"]);
    assert_ok(&out);
    let n = pg.super_sql("SELECT count(*) FROM splitsign_revocations WHERE value = 'zed';");
    assert_eq!(n.trim(), "1");
    // Offline rotate, in a cluster: the new key signs 2 s later.
    let out = run(&["rotate"]);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("signs from"),
        "{}",
        show(&out)
    );
}

#[test]
fn tls_to_postgresql_checks_the_certificate_and_the_host_name() {
    let mut pg = PgServer::start();
    let dir = node_dir(&pg, "node_a", "");
    pg.apply_schema(&["node_a"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ca, other_ca) = pg.enable_tls(port);
    let configure = |host: &str, ca: &std::path::Path| {
        dir.write_config(&format!(
            "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n\
             postgres = \"host={host} port={port} dbname=splitsign user=node_a sslmode=verify-full\"\n\
             postgres_password_file = \"{}\"\npostgres_ca_file = \"{}\"\nnode = \"node_a\"\n",
            dir.path().join("pg-password").display(),
            ca.display()
        ));
    };
    // The right CA and name: the node's connections are TLS.
    configure("localhost", &ca);
    let d = start(&dir);
    sign(&d, "alice");
    let conns = pg.super_sql(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.usename = 'node_a';",
    );
    assert!(
        !conns.trim().is_empty() && conns.lines().all(|l| l == "t"),
        "every connection of the node is TLS: {conns:?}"
    );
    d.stop();
    // A certificate of another CA, or one that does not name the host:
    // refused at once (exit 1), not retried as an unreachable server.
    for (host, ca, why) in [
        ("localhost", &other_ca, "another CA"),
        ("127.0.0.1", &ca, "a name the certificate does not hold"),
    ] {
        configure(host, ca);
        let t0 = Instant::now();
        let e = refused_start(&dir, &["--config", "config.toml"]);
        assert_eq!(e.status.code(), Some(1), "{why}: {}", e.stderr);
        assert!(
            e.stderr.to_lowercase().contains("certificate"),
            "{why}: {}",
            e.stderr
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{why}: not retried");
    }
}
