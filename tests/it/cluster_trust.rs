//! What one node's database login can do to the others, tried as an
//! attacker would: each node has a role of its own, and the attacks are
//! plain SQL as node A's role (psql), against a real server per test. The
//! promise (docs/CLUSTER.md): a node's login affects its own tokens, never
//! another node's ability to start, sign, rotate, learn keys or revoke, nor
//! the validity of another node's tokens; a removed node publishes nothing.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use splitsign::keys::{KeyType, SecretKey};

use crate::cluster::{
    kids, node_dir, refused_start, revoked, sign, start, status, three_nodes, until, verify,
};
use crate::pg::{PgServer, show};
use crate::util::{Daemon, Dir, assert_ok, code, now, ok, vm};

/// A key pair of the attacker's: the signing key, its kid (the RFC 7638
/// thumbprint) and its public key in hex.
fn attacker(seed: u8) -> (SecretKey, String, String) {
    let key = SecretKey::from_secret(KeyType::Ed25519, &[seed; 32]).unwrap();
    let pk = key.public_key();
    let kid = splitsign::keys::share_format::thumbprint(&pk);
    (key, kid, hex(pk.bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SQL that inserts a verified key row for `node`.
fn key_row(node: &str, kid: &str, pk_hex: &str, times: [i64; 4]) -> String {
    let [c, a, d, r] = times;
    format!(
        "INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at, \
         deactivate_at, retire_at, share_generation, verified, alg) VALUES ('{node}', '{kid}', \
         decode('{pk_hex}', 'hex'), 'generated', {c}, {a}, {d}, {r}, 1, true, 'EdDSA');"
    )
}

/// A key row of the attacker's in `node`'s name, active for an hour,
/// inserted by a path other than the node's login (the superuser: the
/// owner's own tooling, a session that outlived a removal).
fn key_in_the_name_of(pg: &PgServer, node: &str, seed: u8) -> (SecretKey, String) {
    let (key, kid, pk) = attacker(seed);
    let t = now();
    pg.super_sql(&key_row(
        node,
        &kid,
        &pk,
        [t - 5, t - 5, t + 3600, t + 7200],
    ));
    (key, kid)
}

/// SQL that inserts a verified key row of `key` for `node`, with the proof
/// that `node` holds it (a node publishing a key of its own).
fn proven_key_row(node: &str, key: &SecretKey, times: [i64; 4]) -> String {
    let pk = key.public_key();
    let kid = splitsign::keys::share_format::thumbprint(&pk);
    let proof = splitsign::keys::prove_possession(key, node, &kid);
    let [c, a, d, r] = times;
    format!(
        "INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at, \
         deactivate_at, retire_at, share_generation, verified, alg, pop) VALUES ('{node}', \
         '{kid}', decode('{}', 'hex'), 'generated', {c}, {a}, {d}, {r}, 1, true, 'EdDSA', \
         decode('{}', 'hex'));",
        hex(pk.bytes()),
        hex(&proof)
    )
}

/// A token signed with `key` under `kid`, with these claims.
fn forge(key: &SecretKey, kid: &str, claims: Value) -> String {
    let header = json!({"alg":"EdDSA","typ":"JWT","kid":kid});
    let mut t = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = key.sign(t.as_bytes());
    t.push('.');
    t.push_str(&B64.encode(sig));
    t
}

/// The value of metric `name` (with its labels) on `d`.
fn metric(d: &Daemon, name: &str) -> f64 {
    let text = ok(d.conn().request(json!({"op":"metrics"})))["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
}

/// Run SQL as `node`'s role; the output.
fn as_node(pg: &PgServer, node: &str, sql: &str) -> std::process::Output {
    pg.sql_as(node, &pg.node_password(node), sql)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_malformed_key_row_of_one_node_stops_no_other_node() {
    let pg = PgServer::start();
    let a_dir = node_dir(&pg, "node_a", "");
    let b_dir = node_dir(&pg, "node_b", "");
    // C rotates on its schedule every 6 s.
    let c_dir = node_dir(
        &pg,
        "node_c",
        "rotation_interval = \"6s\"\nprepublish = \"2s\"\njwks_max_age = \"1s\"\n\
         max_ttl = \"2s\"\ndefault_ttl = \"2s\"\nleeway = \"0s\"\n",
    );
    pg.apply_schema(&["node_a", "node_b", "node_c"]);
    let a = start(&a_dir);
    let b = start(&b_dir);
    let c = start(&c_dir);
    // A's bad rows: a kid that is not the thumbprint of its public key, and
    // a point of small order (the identity) under its own thumbprint.
    let t = now();
    let (_, _, good_hex) = attacker(1);
    let (_, other_kid, _) = attacker(2);
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let identity_kid =
        splitsign::keys::share_format::thumbprint(&splitsign::keys::PublicKey::Ed25519(identity));
    let times = [t - 5, t - 5, t + 3600, t + 7200];
    let out = as_node(
        &pg,
        "node_a",
        &format!(
            "{}{}",
            key_row("node_a", &other_kid, &good_hex, times),
            key_row("node_a", &identity_kid, &hex(&identity), times)
        ),
    );
    assert_ok(&out);
    // And B's own key (kid and public key, from B's JWKS) under A's name:
    // A cannot prove that it holds it.
    let b_key = ok(b.conn().request(json!({"op":"jwks"})))["jwks"]["keys"][0].clone();
    let b_kid = b_key["kid"].as_str().unwrap().to_owned();
    let b_pk = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b_key["x"].as_str().unwrap())
        .unwrap();
    assert_ok(&as_node(
        &pg,
        "node_a",
        &key_row("node_a", &b_kid, &hex(&b_pk), times),
    ));
    // A row over the owner's lifetime bound is refused by the database.
    let (_, long_kid, long_hex) = attacker(3);
    let out = as_node(
        &pg,
        "node_a",
        &key_row(
            "node_a",
            &long_kid,
            &long_hex,
            [t, t, t + 10, t + 400 * 86400],
        ),
    );
    assert!(!out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("max_key_lifetime"), "{}", show(&out));

    // B restarts (it read every node's keys at start).
    b.stop();
    let b = start(&b_dir);
    // C's schedule rotates past its key's deactivate_at; B learns each new
    // key and verifies C's tokens, and C verifies B's.
    let sign_c = || ok(c.conn().sign(json!({"sub":"carol"})));
    let first = sign_c()["kid"].clone();
    until(Duration::from_secs(15), "C's schedule rotates", || {
        sign_c()["kid"] != first
    });
    let t_c = sign_c()["token"].as_str().unwrap().to_owned();
    until(Duration::from_secs(2), "B verifies C's new key", || {
        verify(&b, &t_c)["ok"] == true
    });
    let (t_b, _) = sign(&b, "bob");
    assert_eq!(verify(&c, &t_b)["ok"], true);
    assert_eq!(verify(&a, &t_b)["ok"], true);

    // B skipped A's three rows, says which and why, counts them, and
    // logged each once (though it read the keys again at each of C's
    // rotations).
    let st = status(&b);
    let skipped = st["cluster"]["skipped_keys"].as_array().unwrap().clone();
    assert_eq!(skipped.len(), 3, "{st}");
    assert!(skipped.iter().all(|s| s["node"] == "node_a"), "{st}");
    let reasons: Vec<&str> = skipped
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    for why in [
        "thumbprint",
        "not a valid Ed25519 point",
        "no proof that node node_a holds this key",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "{why}: {reasons:?}"
        );
    }
    assert_eq!(metric(&b, "splitsign_cluster_skipped_keys"), 3.0);
    assert!(metric(&b, "splitsign_cluster_reads_total{what=\"keys\"}") >= 2.0);
    let log = b.log();
    assert_eq!(
        log.matches("skipped a key row of another node").count(),
        3,
        "{log}"
    );
    assert!(!kids(&b).contains(&other_kid));
    let text = stdout(&b_dir.run(&["--config", "config.toml", "status"]));
    assert_eq!(text.matches("skipped key ").count(), 3, "{text}");
    // C publishes B's key once, as B's.
    let jwks = ok(c.conn().request(json!({"op":"jwks"})))["jwks"]["keys"].clone();
    let copies = jwks
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == b_kid.as_str())
        .count();
    assert_eq!(copies, 1, "{jwks}");
    let of_b = status(&c)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == b_kid.as_str())
        .unwrap()["node"]
        .clone();
    assert_eq!(of_b, "node_b");
    for d in [a, b, c] {
        d.stop();
    }
}

#[test]
fn a_node_removed_at_once_publishes_nothing_and_its_tokens_are_refused_within_a_second() {
    let (pg, mut nodes) = three_nodes();
    pg.owner_manages_roles();
    let (a_dir, a) = nodes.remove(0);
    let [(_, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    let (t_a, _) = sign(&a, "alice");
    for d in [b, c] {
        until(Duration::from_secs(2), "B and C verify A's token", || {
            verify(d, &t_a)["ok"] == true
        });
    }
    // A holds a lock on its own database shares (which `--at-once`
    // destroys) and on its own role (a password change, which holds up
    // `ALTER ROLE … NOLOGIN`), in a transaction it keeps open.
    let mut holding = pg.session_as(
        "node_a",
        &pg.node_password("node_a"),
        "BEGIN; ALTER ROLE node_a PASSWORD 'changed'; \
         UPDATE splitsign_db_shares SET y = y WHERE node = 'node_a'; SELECT pg_sleep(60);",
    );
    until(Duration::from_secs(5), "A holds its shares' rows", || {
        pg.super_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'node_a' \
             AND query LIKE '%pg_sleep(60)%';",
        )
        .trim()
            == "1"
    });
    let rows_of_a =
        || pg.super_sql("SELECT kid FROM splitsign_keys WHERE node = 'node_a' ORDER BY kid;");
    let before = rows_of_a();

    let out = pg.owner(&["node", "remove", "node_a", "--at-once"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(text.contains("removed node node_a at once"), "{text}");
    assert!(!text.contains("NOT DONE"), "{text}");
    let _ = holding.wait();
    let took = until(Duration::from_secs(1), "B and C refuse A's token", || {
        [b, c]
            .iter()
            .all(|d| verify(d, &t_a)["error"]["code"] == "unknown_key")
    });
    eprintln!("A's token refused on B and C {took:?} after `node remove --at-once`");

    // A's role can no longer connect (its lock on its own role held up
    // NOLOGIN: its right to connect to the database was taken instead).
    let out = as_node(&pg, "node_a", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("permission denied for database"),
        "{}",
        show(&out)
    );
    assert!(
        text.contains("note: could not disable the role's login"),
        "{text}"
    );
    // A key row in A's name by any other path (the owner's own tooling, a
    // session that outlived the removal): not trusted.
    let (key, kid) = key_in_the_name_of(&pg, "node_a", 9);
    let t = now();
    let forged = forge(
        &key,
        &kid,
        json!({"iss": status(b)["issuer"], "sub": "admin", "iat": t, "nbf": t, "exp": t + 600}),
    );
    std::thread::sleep(Duration::from_millis(1500));
    for d in [b, c] {
        assert!(!kids(d).contains(&kid));
        assert_eq!(code(&verify(d, &forged)), "unknown_key");
    }

    // The removed daemon says why, signs nothing, and mints no key.
    until(Duration::from_secs(3), "A knows it was removed", || {
        status(&a)["store_fault"]
            .as_str()
            .is_some_and(|f| f.contains("removed"))
    });
    let r = a.conn().sign(json!({}));
    assert_eq!(code(&r), "unavailable", "{r}");
    std::thread::sleep(Duration::from_secs(2));
    let after = pg.super_sql(&format!(
        "SELECT kid FROM splitsign_keys WHERE node = 'node_a' AND kid <> '{kid}' ORDER BY kid;"
    ));
    assert_eq!(before, after, "the removed node made a key");
    assert!(a.log().contains("refuses this node"), "{}", a.log());
    assert_eq!(status(b)["cluster"]["nodes"], 2);
    // Its database shares are gone.
    let shares = pg.super_sql("SELECT count(*) FROM splitsign_db_shares WHERE node = 'node_a';");
    assert_eq!(shares.trim(), "0");

    // The owner's list says so; a removed node does not come back.
    let out = pg.owner(&["node", "list"]);
    assert_ok(&out);
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with("node_a "))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("removed at once") && line.ends_with("no"),
        "{line}"
    );
    let out = pg.owner(&["node", "add", "node_a"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        stderr(&out).contains("does not come back"),
        "{}",
        show(&out)
    );
    // Restarted, it refuses to start (65: restarting cannot fix it).
    let log = a.log();
    a.stop();
    assert!(log.contains("removed"), "{log}");
    let e = refused_start(&a_dir, &["--config", "config.toml"]);
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    assert!(
        e.stderr.contains("permission denied for database"),
        "{}",
        e.stderr
    );
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn a_removal_the_owner_cannot_finish_is_reported_and_nothing_new_of_the_node_is_trusted() {
    let pg = PgServer::start();
    let a_dir = node_dir(&pg, "node_a", "");
    let b_dir = node_dir(&pg, "node_b", "");
    pg.apply_schema(&["node_a", "node_b"]);
    let a = start(&a_dir);
    let b = start(&b_dir);
    let (t_a, _) = sign(&a, "alice");
    until(Duration::from_secs(2), "B verifies A's token", || {
        verify(&b, &t_a)["ok"] == true
    });
    // A opens a transaction that writes a key of the attacker's and holds
    // it open across its removal, then commits.
    let (_, late_kid, late_pk) = attacker(8);
    let t = now();
    let late = pg.session_as(
        "node_a",
        &pg.node_password("node_a"),
        &format!(
            "BEGIN;\n{}\nSELECT pg_sleep(4);\nCOMMIT;\n",
            key_row(
                "node_a",
                &late_kid,
                &late_pk,
                [t - 5, t - 5, t + 3600, t + 7200]
            )
        ),
    );
    until(Duration::from_secs(5), "A's transaction is open", || {
        pg.super_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'node_a' \
             AND state = 'active' AND query LIKE '%pg_sleep%';",
        )
        .trim()
            == "1"
    });
    // Its transaction began well before the removal (a clock cannot tell
    // them apart).
    std::thread::sleep(Duration::from_millis(1500));
    // The owner may not alter roles or end sessions (its own tooling
    // manages them): `remove` says what it could not do, and removes.
    let out = pg.owner(&["node", "remove", "node_a"]);
    assert_ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("note: could not disable the role's login")
            && text.contains("it may no longer connect"),
        "{text}"
    );
    assert!(
        text.contains("NOT DONE: could not end the sessions"),
        "{text}"
    );
    assert!(text.contains("marked removed"), "{text}");
    // Without --at-once, A's keys retire by their timestamps: its token
    // still verifies.
    assert_eq!(verify(&b, &t_a)["ok"], true);
    // A still logs in, but may do nothing but read the members.
    for sql in [
        "SELECT count(*) FROM splitsign_keys",
        "INSERT INTO splitsign_revocations (kind, value, expires_at, created_at, node) \
         VALUES ('sub', 'bob', extract(epoch FROM now())::bigint + 60, 0, 'node_a')",
        "SELECT splitsign_purge_revocations(0)",
    ] {
        let out = as_node(&pg, "node_a", sql);
        assert!(!out.status.success(), "{sql}: {}", show(&out));
        assert!(
            stderr(&out).contains("permission denied"),
            "{sql}: {}",
            show(&out)
        );
    }
    // A key row recorded in A's name after its removal is not trusted,
    // nor the one A's open transaction committed after it.
    let (_, kid) = key_in_the_name_of(&pg, "node_a", 7);
    let out = late.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let committed = pg.super_sql(&format!(
        "SELECT count(*) FROM splitsign_keys WHERE kid = '{late_kid}';"
    ));
    assert_eq!(committed.trim(), "1", "A's late row was committed");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!kids(&b).contains(&kid));
    assert!(!kids(&b).contains(&late_kid));
    // A's daemon learns it was removed (its sessions live on), says so and
    // signs nothing.
    until(Duration::from_secs(3), "A knows it was removed", || {
        status(&a)["store_fault"]
            .as_str()
            .is_some_and(|f| f.contains("removed"))
    });
    assert_eq!(code(&a.conn().sign(json!({}))), "unavailable");
    let text = stdout(&a_dir.run(&["--config", "config.toml", "status"]));
    assert!(
        text.contains("NOT SIGNING") && text.contains("removed"),
        "{text}"
    );
    let out = pg.owner(&["node", "list"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.starts_with("node_a "))
        .unwrap()
        .to_owned();
    assert!(line.contains("removed") && line.ends_with("no"), "{line}");
    a.stop();
    b.stop();
}

#[test]
fn tokens_past_their_keys_retirement_or_the_clusters_ttl_are_refused() {
    let pg = PgServer::start();
    let a_dir = node_dir(&pg, "node_a", "");
    let b_dir = node_dir(&pg, "node_b", "");
    pg.apply_schema(&["node_a", "node_b"]);
    let out = pg.owner(&["node", "bounds", "--max-token-ttl", "1h"]);
    assert_ok(&out);
    // A node whose config would issue longer tokens is refused at start.
    let long = node_dir(&pg, "node_long", "max_ttl = \"2h\"\n");
    pg.apply_schema(&["node_long"]);
    let e = refused_start(&long, &["--config", "config.toml"]);
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(e.stderr.contains("max_token_ttl"), "{}", e.stderr);

    let a = start(&a_dir);
    let b = start(&b_dir);
    // With A's login, a key of the attacker's (proven: A holds it), within
    // the bounds.
    let (key, kid, _) = attacker(5);
    let t = now();
    let retire = t + 2 * 86400;
    let out = as_node(
        &pg,
        "node_a",
        &proven_key_row("node_a", &key, [t - 5, t - 5, t + 86400, retire]),
    );
    assert_ok(&out);
    until(Duration::from_secs(2), "B publishes A's new key", || {
        kids(&b).contains(&kid)
    });
    let iss = status(&b)["issuer"].clone();
    let claims = |iat: i64, exp: i64| json!({"iss": iss, "sub": "admin", "iat": iat, "nbf": t, "exp": exp, "jti": "x"});
    // Within the bounds: valid (A's own tokens are A's business).
    let fine = forge(&key, &kid, claims(t, t + 600));
    assert_eq!(verify(&b, &fine)["ok"], true, "{}", verify(&b, &fine));
    // An exp 300 days out, past the key's retire_at.
    let far = forge(&key, &kid, claims(t, t + 300 * 86400));
    let r = verify(&b, &far);
    assert_eq!(code(&r), "invalid_token", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retire_at"),
        "{r}"
    );
    // A lifetime over the cluster's max_token_ttl (iat backdated), though
    // exp is before retire_at.
    let long_lived = forge(&key, &kid, claims(t - 3 * 3600, t + 600));
    let r = verify(&b, &long_lived);
    assert_eq!(code(&r), "invalid_token", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_token_ttl"),
        "{r}"
    );
    // The CLI says "not valid" too.
    let out = b_dir.run(&["--config", "config.toml", "verify", &far]);
    assert!(!out.status.success());
    a.stop();
    b.stop();
}

#[test]
fn a_forged_revocation_id_and_a_notify_flood_leave_propagation_under_a_second() {
    let (pg, nodes) = three_nodes();
    let [(_, _a), (_, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    // A's row at the top of the id range: the id comes from the sequence,
    // whatever A sends, and A may not move the sequence.
    let out = as_node(
        &pg,
        "node_a",
        "INSERT INTO splitsign_revocations (id, kind, value, expires_at, created_at, node) \
         OVERRIDING SYSTEM VALUE VALUES (9223372036854775807, 'jti', 'forged', \
         extract(epoch FROM now())::bigint + 60, 0, 'node_a')",
    );
    assert_ok(&out);
    let id: i64 = pg
        .super_sql("SELECT id FROM splitsign_revocations WHERE value = 'forged';")
        .trim()
        .parse()
        .unwrap();
    assert!(id < 1000, "id {id}");
    for sql in [
        "SELECT setval('splitsign_revocations_id_seq', 9223372036854775000)",
        "SELECT nextval('splitsign_revocations_id_seq')",
        "UPDATE splitsign_revocations SET id = 9223372036854775807 WHERE node = 'node_a'",
    ] {
        let out = as_node(&pg, "node_a", sql);
        assert!(
            stderr(&out).contains("permission denied"),
            "{sql}: {}",
            show(&out)
        );
    }

    // A floods both channels with NOTIFYs, each in a transaction of its
    // own, for 8 s: 600 every 0.1 s, the rate measured against the build
    // before (5,876 a second).
    let mut flood = pg.session_as(
        "node_a",
        &pg.node_password("node_a"),
        "DO $$ DECLARE stop timestamptz := clock_timestamp() + interval '8 seconds'; \
         i bigint := 0; BEGIN WHILE clock_timestamp() < stop LOOP i := i + 1; \
         PERFORM pg_notify(CASE WHEN i % 2 = 0 THEN 'splitsign_revocations' \
         ELSE 'splitsign_keys' END, i::text); COMMIT; \
         IF i % 600 = 0 THEN PERFORM pg_sleep(0.1); END IF; END LOOP; END $$;",
    );
    std::thread::sleep(Duration::from_millis(500));
    let reads = |d: &Daemon| {
        (
            metric(d, "splitsign_cluster_reads_total{what=\"revocations\"}"),
            metric(d, "splitsign_cluster_reads_total{what=\"keys\"}"),
        )
    };
    let (n0, r0, t0, cpu0) = (
        metric(b, "splitsign_cluster_notifications_total"),
        reads(b),
        Instant::now(),
        cpu_seconds(b.pid()),
    );
    // Revocations made on C reach B within a second, each time.
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let (t, _) = sign(b, &format!("user{i}"));
        ok(c.conn()
            .request(json!({"op":"revoke","sub":format!("user{i}")})));
        let took = until(Duration::from_secs(1), "C's revocation reaches B", || {
            revoked(b, &t)
        });
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (n1, r1, elapsed) = (
        metric(b, "splitsign_cluster_notifications_total"),
        reads(b),
        t0.elapsed(),
    );
    eprintln!(
        "flood: {} notifications, {} revocation and {} key reads in {elapsed:?}; worst \
         propagation {worst:?}",
        n1 - n0,
        r1.0 - r0.0,
        r1.1 - r0.1
    );
    assert!(n1 - n0 > 1000.0, "the flood reached B: {}", n1 - n0);
    // At most one read of each kind per 100 ms (and the few the revokes
    // asked for).
    let bound = elapsed.as_secs_f64() / 0.1 + 6.0;
    for (what, n) in [("revocations", r1.0 - r0.0), ("keys", r1.1 - r0.1)] {
        assert!(n <= bound, "{n} reads of {what} in {elapsed:?}");
    }
    eprintln!(
        "B's CPU during the flood: {:.2} s over {elapsed:?}",
        cpu_seconds(b.pid()) - cpu0
    );
    let _ = flood.kill();
    let _ = flood.wait();

    // Real changes without end: A grows its own revocation by a second,
    // 2,000 times, each in a transaction of its own. Each is news to B
    // (kept locally), but not a new one: one read per 100 ms still.
    std::thread::sleep(Duration::from_millis(300));
    let (r0, t0) = (reads(b), Instant::now());
    let out = as_node(
        &pg,
        "node_a",
        "DO $$ BEGIN FOR i IN 1..2000 LOOP UPDATE splitsign_revocations \
         SET expires_at = expires_at + 1 WHERE node = 'node_a' AND value = 'forged'; \
         COMMIT; END LOOP; END $$;",
    );
    assert_ok(&out);
    std::thread::sleep(Duration::from_millis(300));
    let (r1, elapsed) = (reads(b), t0.elapsed());
    eprintln!(
        "2,000 grown revocations: {} revocation reads in {elapsed:?}",
        r1.0 - r0.0
    );
    assert!(
        r1.0 - r0.0 <= elapsed.as_secs_f64() / 0.1 + 6.0,
        "{} reads in {elapsed:?}",
        r1.0 - r0.0
    );
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn one_nodes_mass_of_revocations_is_capped_and_no_nodes_memory_reaches_64_mib() {
    let (pg, nodes) = three_nodes();
    // 200,000 revocations of 1,000 bytes from A, 1,000 a statement, in
    // two rounds; between them A deletes what it can of its own (to take
    // its cap back while the other nodes keep what they saw).
    let round = |r: usize| {
        let mut script = String::new();
        for s in 0..100 {
            script.push_str(&format!(
                "INSERT INTO splitsign_revocations (kind, value, expires_at, created_at, node) \
                 SELECT 'jti', lpad('{r}-' || i::text, 1000, 'x'), \
                 extract(epoch FROM now())::bigint + 3600, 0, 'node_a' \
                 FROM generate_series({}, {}) i;\n",
                s * 1000,
                s * 1000 + 999
            ));
        }
        pg.session_as("node_a", &pg.node_password("node_a"), &script)
            .wait_with_output()
            .unwrap()
    };
    let first = round(1);
    // Shrinking them (so that a purge takes them) is refused; deleting
    // them takes nothing.
    for sql in [
        "UPDATE splitsign_revocations SET expires_at = 0 WHERE node = 'node_a'",
        "UPDATE splitsign_revocations SET before = 0 WHERE node = 'node_a' AND kind = 'sub'",
    ] {
        let out = as_node(&pg, "node_a", sql);
        assert!(
            out.status.success() == sql.contains("kind = 'sub'")
                && (out.status.success() || stderr(&out).contains("only grows")),
            "{sql}: {}",
            show(&out)
        );
    }
    let out = as_node(
        &pg,
        "node_a",
        "SELECT splitsign_clear_own_rows(); SELECT splitsign_purge_revocations(9999999999);",
    );
    assert_ok(&out);
    let second = round(2);
    let refused = stderr(&first).matches("revocation cap").count()
        + stderr(&second).matches("revocation cap").count();
    let out = first;
    let held: i64 = pg
        .super_sql("SELECT count(*) FROM splitsign_revocations WHERE node = 'node_a';")
        .trim()
        .parse()
        .unwrap();
    eprintln!("A's revocations: {held} stored, {refused} statements refused at the cap");
    assert!(held > 0 && held <= 16 * 1024, "{held} held");
    assert!(refused >= 180, "{refused} refused: {}", show(&out));
    assert_eq!(
        stderr(&second).matches("revocation cap").count(),
        100,
        "the second round is refused whole: A took nothing of its cap back"
    );
    // Every node holds what was stored, within 64 MiB, peak included.
    let check = |d: &Daemon, what: &str| {
        until(
            Duration::from_secs(30),
            "the node holds A's revocations",
            || status(d)["cluster"]["revoked_jti"].as_i64().unwrap() >= held,
        );
        let (rss, peak) = (vm(d.pid(), "VmRSS"), vm(d.pid(), "VmHWM"));
        eprintln!("{what}: RSS {rss} kB, peak {peak} kB");
        assert!(peak < 64 * 1024, "{what}: peak RSS {peak} kB");
    };
    for (i, (_, d)) in nodes.iter().enumerate() {
        check(d, &format!("node {i}"));
    }
    // And at the next start, which reads them all again.
    let mut nodes = nodes;
    let (b_dir, b) = nodes.remove(1);
    b.stop();
    let b = start(&b_dir);
    check(&b, "node B restarted");
    b.stop();
    for (_, d) in nodes {
        d.stop();
    }
}

/// Three nodes' setup for a restore: a token of C's, a dump of the
/// database, then A revokes its subject and every node has it. Returns
/// the token and the dump (which predates the revoke).
fn revoked_after_a_dump(pg: &PgServer, nodes: &[(Dir, Daemon)]) -> (String, std::path::PathBuf) {
    let [(a_dir, a), (_, b), (_, c)] = nodes else {
        unreachable!()
    };
    let (t, _) = sign(c, "mallory");
    let dump = pg.path().join("before-the-revoke.dump");
    pg.dump_to(&dump);
    assert_ok(&a_dir.run(&["--config", "config.toml", "revoke", "--sub", "mallory"]));
    for d in [a, b, c] {
        until(
            Duration::from_secs(1),
            "the revocation reaches every node",
            || revoked(d, &t),
        );
    }
    (t, dump)
}

#[test]
fn a_restored_dump_never_un_revokes_a_token_and_every_node_says_the_database_went_back() {
    let (pg, nodes) = three_nodes();
    let [(a_dir, a), (_, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    let (t, dump) = revoked_after_a_dump(&pg, &nodes);
    // The database is restored from the dump under the running nodes.
    pg.restore_from(&dump, "");
    let back = pg.super_sql("SELECT count(*) FROM splitsign_revocations WHERE value = 'mallory';");
    assert_eq!(back.trim(), "0", "the dump predates the revoke");
    for d in [a, b, c] {
        until(Duration::from_secs(10), "the node notices", || {
            status(d)["cluster"]["database_went_back"].is_object()
        });
        assert!(revoked(d, &t), "un-revoked by the restored database");
        assert!(metric(d, "splitsign_cluster_database_went_back_total") >= 1.0);
        assert!(d.log().contains("database went back"), "{}", d.log());
    }
    let text = stdout(&a_dir.run(&["--config", "config.toml", "status"]));
    assert!(text.contains("WENT BACK"), "{text}");
    // A, whose revocation it was, wrote it back.
    until(
        Duration::from_secs(3),
        "A writes its revocation back",
        || {
            pg.super_sql("SELECT count(*) FROM splitsign_revocations WHERE value = 'mallory';")
                .trim()
                == "1"
        },
    );
    // For as long as the check runs, the token stays revoked everywhere,
    // and a node restarted now holds it too.
    for _ in 0..10 {
        for d in [a, b, c] {
            assert!(revoked(d, &t));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn a_node_can_lock_nothing_that_holds_another_up_and_learns_nothing_of_its_shares() {
    let (pg, nodes) = three_nodes();
    let [(_, _a), (b_dir, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    let tables = [
        "splitsign_nodes",
        "splitsign_keys",
        "splitsign_db_shares",
        "splitsign_revocations",
        "splitsign_members",
        "splitsign_settings",
        "splitsign_revocation_usage",
    ];
    for table in tables {
        for mode in [
            "SHARE",
            "SHARE ROW EXCLUSIVE",
            "EXCLUSIVE",
            "ACCESS EXCLUSIVE",
        ] {
            let sql = format!("BEGIN; LOCK TABLE {table} IN {mode} MODE; COMMIT;");
            let out = as_node(&pg, "node_a", &sql);
            assert!(
                stderr(&out).contains("permission denied"),
                "{sql}: {}",
                show(&out)
            );
        }
    }
    for lock in [
        "FOR UPDATE",
        "FOR NO KEY UPDATE",
        "FOR SHARE",
        "FOR KEY SHARE",
    ] {
        for table in ["splitsign_keys", "splitsign_revocations", "splitsign_nodes"] {
            let sql = format!(
                "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE node = 'node_b' {lock}) x"
            );
            let out = as_node(&pg, "node_a", &sql);
            assert!(
                stdout(&out).trim() == "0" || stderr(&out).contains("permission denied"),
                "{sql}: {}",
                show(&out)
            );
        }
    }
    // A share naming B's kid tells nothing of B's shares.
    let b_kid = status(b)["active_kid"].as_str().unwrap().to_owned();
    let b_rows = || {
        pg.super_sql(
            "SELECT kid, generation, encode(y, 'hex') FROM splitsign_db_shares
             WHERE node = 'node_b' ORDER BY 1, 2;
             SELECT kid, retire_at FROM splitsign_keys WHERE node = 'node_b' ORDER BY 1;
             SELECT value FROM splitsign_revocations WHERE node = 'node_b' ORDER BY 1;",
        )
    };
    let before = b_rows();
    for node in ["node_a", "node_b"] {
        let out = as_node(
            &pg,
            "node_a",
            &format!(
                "INSERT INTO splitsign_db_shares (node, kid, generation, x, y, checksum) VALUES \
                 ('{node}', '{b_kid}', 1, 2, decode(repeat('00', 32), 'hex'), \
                 decode(repeat('00', 32), 'hex'))"
            ),
        );
        assert!(!out.status.success(), "{}", show(&out));
        let e = stderr(&out);
        assert!(
            !e.contains("already exists") && !e.contains("generation"),
            "{e}"
        );
    }
    // The functions that delete delete none of B's rows.
    let out = as_node(
        &pg,
        "node_a",
        &format!(
            "SELECT splitsign_delete_shares('{b_kid}', NULL), splitsign_discard_key('{b_kid}'), \
             splitsign_purge_revocations(9999999999)"
        ),
    );
    assert_ok(&out);
    assert_eq!(before, b_rows());

    // A holds, in an open transaction, every lock it may take; B rotates,
    // revokes and restarts meanwhile, and C learns of it at once.
    let mut hold = pg.session_as(
        "node_a",
        &pg.node_password("node_a"),
        "BEGIN;
         LOCK TABLE splitsign_keys, splitsign_db_shares, splitsign_revocations, splitsign_nodes
             IN ROW EXCLUSIVE MODE;
         SELECT count(*) FROM (SELECT 1 FROM splitsign_keys WHERE node = 'node_a' FOR UPDATE) x;
         INSERT INTO splitsign_revocations (kind, value, expires_at, created_at, node)
             VALUES ('sub', 'held', extract(epoch FROM now())::bigint + 60, 0, 'node_a');
         SELECT pg_advisory_lock(8318267711934392113);
         SELECT pg_sleep(60);",
    );
    until(Duration::from_secs(5), "A holds its locks", || {
        pg.super_sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'node_a' AND l.mode = 'RowExclusiveLock';",
        )
        .trim()
        .parse::<i64>()
        .unwrap()
            >= 4
    });
    let t0 = Instant::now();
    // The owner's commands are not held up either (the advisory lock
    // pg-schema took once is A's now).
    assert_ok(&pg.owner(&["pg-schema"]));
    pg.add_node_role("node_d", tempfile::tempdir().unwrap().path());
    assert_ok(&pg.owner(&["node", "add", "node_d"]));
    assert_ok(&b_dir.run(&["--config", "config.toml", "rotate"]));
    let (t, _) = sign(c, "held");
    assert_ok(&b_dir.run(&["--config", "config.toml", "revoke", "--sub", "held"]));
    until(Duration::from_secs(1), "C learns B's revocation", || {
        revoked(c, &t)
    });
    let mut nodes = nodes;
    let (b_dir, b) = nodes.remove(1);
    b.stop();
    let b = start(&b_dir);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(15), "held up for {took:?}");
    let _ = hold.kill();
    let _ = hold.wait();
    b.stop();
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn a_database_restored_in_place_is_noticed_at_the_next_schedule_step() {
    let (pg, nodes) = three_nodes();
    let [(_, a), (_, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    let (t, dump) = revoked_after_a_dump(&pg, &nodes);
    // Restored under the nodes' sessions: none ends, and the restore
    // announces nothing.
    pg.restore_in_place(&dump);
    std::thread::sleep(Duration::from_secs(1));
    // The next schedule step checks the database's marks (a reload runs
    // it now; it runs at least every 30 s).
    for d in [a, b, c] {
        assert!(revoked(d, &t), "un-revoked by the restored database");
        d.hup_and_wait("reloaded the config");
        until(Duration::from_secs(3), "the node notices", || {
            status(d)["cluster"]["database_went_back"].is_object()
        });
    }
    until(
        Duration::from_secs(3),
        "A writes its revocation back",
        || {
            pg.super_sql("SELECT count(*) FROM splitsign_revocations WHERE value = 'mallory';")
                .trim()
                == "1"
        },
    );
    for (_, d) in nodes {
        d.stop();
    }
}

#[test]
fn a_write_back_the_restored_database_refuses_stops_no_node_from_reading() {
    let (pg, nodes) = three_nodes();
    let [(_, a), (_, b), (_, c)] = &nodes[..] else {
        unreachable!()
    };
    let (t, dump) = revoked_after_a_dump(&pg, &nodes);
    // The restored database refuses every revocation (a cap of 0): A
    // cannot write its own back.
    pg.restore_from(&dump, "UPDATE splitsign_settings SET max_revocations = 0");
    until(Duration::from_secs(10), "A notices", || {
        status(a)["cluster"]["database_went_back"].is_object()
    });
    until(
        Duration::from_secs(3),
        "A says it could not write back",
        || {
            a.log()
                .contains("could not write this node's own revocations back")
        },
    );
    assert!(revoked(a, &t));
    // Once revocations are allowed again, A keeps learning of them.
    pg.super_sql("UPDATE splitsign_settings SET max_revocations = 200000;");
    let (t2, _) = sign(b, "eve");
    std::thread::sleep(Duration::from_millis(500));
    ok(c.conn().request(json!({"op":"revoke","sub":"eve"})));
    until(Duration::from_secs(1), "C's revocation reaches A", || {
        revoked(a, &t2)
    });
    for (_, d) in nodes {
        d.stop();
    }
}
