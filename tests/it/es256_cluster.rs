//! ES256 (P-256) keys in a cluster and through a crash, on the real
//! binary: nodes of different algorithms publish and verify each other's
//! keys, an ES256 key row a node cannot prove it holds is not published,
//! a re-split of an ES256 key, a single ES256 host moved from SQLite to
//! PostgreSQL, and kill -9 at every store step of an ES256 rotation.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use splitsign::keys::{KeyType, SecretKey};

use crate::cluster::{kids, node_dir, sign, start, status, until, verify};
use crate::es256::{jwk, order_minus, verify_es256_with_jwks};
use crate::pg::{PgServer, show, write_node_config};
use crate::util::{Daemon, Dir, assert_ok, code, have_strace, now, ok};

/// The config line that makes a node's new keys ES256.
const ES256: &str = "alg = \"ES256\"\n";

/// A zero-config deployment's paths, with its new keys ES256.
fn es256_single_host(dir: &Dir) {
    dir.write_config(&format!(
        "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\n{ES256}"
    ));
}

const CFG: [&str; 2] = ["--config", "config.toml"];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A token's header, decoded.
fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&B64.decode(h).unwrap()).unwrap()
}

fn jwks(d: &Daemon) -> Value {
    ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone()
}

/// Require `jwk` to be an ES256 key as RFC 7518 §6.2 publishes one, and
/// nothing private.
fn assert_es256_jwk(jwk: &Value) {
    assert_eq!(jwk["kty"], "EC", "{jwk}");
    assert_eq!(jwk["crv"], "P-256", "{jwk}");
    assert_eq!(jwk["alg"], "ES256", "{jwk}");
    assert_eq!(jwk["use"], "sig", "{jwk}");
    for c in ["x", "y"] {
        let v = B64.decode(jwk[c].as_str().unwrap()).unwrap();
        assert_eq!(v.len(), 32, "{c} of {jwk}");
    }
    assert!(jwk.get("d").is_none(), "{jwk}");
}

fn assert_ed25519_jwk(jwk: &Value) {
    assert_eq!(jwk["kty"], "OKP", "{jwk}");
    assert_eq!(jwk["crv"], "Ed25519", "{jwk}");
    assert_eq!(jwk["alg"], "EdDSA", "{jwk}");
    assert!(jwk.get("y").is_none() && jwk.get("d").is_none(), "{jwk}");
}

/// Verify `token` as a relying party would, against the key `jwks`
/// publishes under its kid, in the algorithm of that key (the header's
/// alg must be the key's); the claims.
fn rp_verify(token: &str, jwks: &Value) -> Value {
    let kid = header(token)["kid"].as_str().unwrap().to_owned();
    match jwk(jwks, &kid)["kty"].as_str().unwrap() {
        "EC" => verify_es256_with_jwks(token, jwks),
        "OKP" => crate::util::verify_with_jwks_at(token, jwks, None),
        other => panic!("kty {other}"),
    }
}

/// `token` with its ES256 signature r‖s replaced by r‖(n - s): as valid
/// a signature for ECDSA in general, but high-S, which splitsign refuses.
fn high_s(token: &str) -> String {
    let (body, sig) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    assert_eq!(sig.len(), 64, "ES256 signatures are raw r||s");
    let s: [u8; 32] = sig[32..].try_into().unwrap();
    // splitsign signs low-S: s <= n/2, so n - s > n/2 (and != s).
    let flipped = order_minus(&s);
    assert!(flipped > s, "the daemon signed low-S");
    let mut out = sig[..32].to_vec();
    out.extend_from_slice(&flipped);
    format!("{body}.{}", B64.encode(out))
}

/// A P-256 key of the attacker's, its kid and its public key (hex).
fn p256_attacker(seed: u8) -> (SecretKey, String, String) {
    let key = SecretKey::from_secret(KeyType::P256, &[seed; 32]).unwrap();
    let pk = key.public_key();
    let kid = splitsign::keys::share_format::thumbprint(&pk);
    (key, kid, hex(pk.bytes()))
}

/// SQL that inserts a verified ES256 key row for `node`, active for an
/// hour, with `pop` as its proof of possession, or none.
fn es256_row(node: &str, kid: &str, pk_hex: &str, pop: Option<&[u8]>) -> String {
    let t = now();
    let pop = match pop {
        Some(p) => format!("decode('{}', 'hex')", hex(p)),
        None => "NULL".to_owned(),
    };
    format!(
        "INSERT INTO splitsign_keys (node, kid, public_key, origin, created_at, activate_at, \
         deactivate_at, retire_at, share_generation, verified, alg, pop) VALUES ('{node}', \
         '{kid}', decode('{pk_hex}', 'hex'), 'generated', {c}, {c}, {d}, {r}, 1, true, 'ES256', \
         {pop});",
        c = t - 5,
        d = t + 3600,
        r = t + 7200,
    )
}

/// A token signed with `key` (ES256) under `kid`.
fn forge_es256(key: &SecretKey, kid: &str, iss: &Value) -> String {
    let t = now();
    let h = json!({"alg":"ES256","typ":"JWT","kid":kid});
    let c = json!({"iss":iss,"sub":"mallory","iat":t,"nbf":t,"exp":t + 300,"jti":"f"});
    let mut tok = format!(
        "{}.{}",
        B64.encode(h.to_string()),
        B64.encode(c.to_string())
    );
    let sig = key.sign(tok.as_bytes());
    tok.push('.');
    tok.push_str(&B64.encode(sig));
    tok
}

/// The share file of `dir` (one key): its text.
fn share_text(dir: &Dir) -> String {
    String::from_utf8(std::fs::read(dir.share_file()).unwrap()).unwrap()
}

/// Node A makes ES256 keys, node B EdDSA ones: each publishes both (the
/// JWKS a relying party reads from either holds an EC and an OKP key),
/// each verifies the other's tokens and refuses a high-S copy of an ES256
/// one; a re-split of A's ES256 key keeps its kid and B verifying; and an
/// ES256 row in A's name that A cannot prove it holds (no proof, an
/// Ed25519 key's proof, or a proof made for another node) is not
/// published by B, while one A proves is.
#[test]
fn nodes_of_es256_and_eddsa_publish_and_verify_each_others_keys() {
    let pg = PgServer::start();
    let a_dir = node_dir(&pg, "node_a", ES256);
    let b_dir = node_dir(&pg, "node_b", "");
    pg.apply_schema(&["node_a", "node_b"]);
    assert_eq!(
        pg.super_sql("SELECT version FROM splitsign_schema;").trim(),
        "3",
        "pg-schema applies the ES256 schema"
    );
    let a = start(&a_dir);
    let b = start(&b_dir);
    let kid_a = status(&a)["active_kid"].as_str().unwrap().to_owned();
    let kid_b = status(&b)["active_kid"].as_str().unwrap().to_owned();
    // A's key row is ES256 with a 65-byte point; B's EdDSA with 32 bytes.
    let rows = pg.super_sql("SELECT node, alg, length(public_key) FROM splitsign_keys;");
    assert!(rows.contains("node_a|ES256|65"), "{rows}");
    assert!(!rows.contains("node_a|EdDSA"), "{rows}");
    assert!(rows.contains("node_b|EdDSA|32"), "{rows}");
    for d in [&a, &b] {
        until(Duration::from_secs(2), "both kids in each JWKS", || {
            let k = kids(d);
            k.contains(&kid_a) && k.contains(&kid_b)
        });
        let set = jwks(d);
        assert_es256_jwk(jwk(&set, &kid_a));
        assert_ed25519_jwk(jwk(&set, &kid_b));
    }

    // Each signs in its own algorithm; each verifies the other's tokens,
    // and so does a relying party from either node's JWKS.
    let (t_a, k) = sign(&a, "alice");
    assert_eq!(k, kid_a);
    assert_eq!(header(&t_a)["alg"], "ES256");
    let (t_b, k) = sign(&b, "bob");
    assert_eq!(k, kid_b);
    assert_eq!(header(&t_b)["alg"], "EdDSA");
    for d in [&a, &b] {
        for (t, sub) in [(&t_a, "alice"), (&t_b, "bob")] {
            let r = verify(d, t);
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["claims"]["sub"], sub);
        }
        let set = jwks(d);
        assert_eq!(rp_verify(&t_a, &set)["sub"], "alice");
        assert_eq!(rp_verify(&t_b, &set)["sub"], "bob");
    }
    // The high-S twin of A's token, and A's token under B's EdDSA header:
    // refused by both nodes.
    let twin = high_s(&t_a);
    let (_, rest) = t_a.split_once('.').unwrap();
    let as_eddsa = format!(
        "{}.{rest}",
        B64.encode(json!({"alg":"EdDSA","typ":"JWT","kid":kid_a}).to_string())
    );
    for d in [&a, &b] {
        for bad in [&twin, &as_eddsa] {
            let r = verify(d, bad);
            assert_eq!(r["ok"], false, "{r}");
        }
    }

    // A re-splits its ES256 key: a new generation in both stores, the same
    // kid; both shares rebuild it (check, and A restarted signs with it),
    // and B verifies A's tokens from before and after.
    let out = a_dir.run(&[&CFG[..], &["reshare"]].concat());
    assert_ok(&out);
    assert_eq!(
        pg.super_sql("SELECT share_generation FROM splitsign_keys WHERE node = 'node_a';")
            .trim(),
        "2"
    );
    let text = share_text(&a_dir);
    assert!(text.starts_with("splitsign-share 3\n"), "format 3");
    assert!(text.contains("\nalg ES256\n"), "the share names its alg");
    assert!(
        a_dir.share_file().to_str().unwrap().ends_with(".2.share"),
        "{:?}",
        a_dir.share_files()
    );
    assert_ok(&a_dir.run(&[&CFG[..], &["check"]].concat()));
    a.stop();
    let a = start(&a_dir);
    let (t_a2, k) = sign(&a, "carol");
    assert_eq!(k, kid_a, "a re-split keeps the key");
    for t in [&t_a, &t_a2] {
        let r = verify(&b, t);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(rp_verify(t, &jwks(&b))["iss"], status(&a)["issuer"]);
    }

    // With A's login: ES256 rows in A's name without a valid proof that A
    // holds the key. Then one it proves, last: once B publishes that one,
    // it has read the others.
    let (_, kid_none, pk_none) = p256_attacker(0x11);
    let (_, kid_ed, pk_ed) = p256_attacker(0x12);
    let ed = SecretKey::from_secret(KeyType::Ed25519, &[0x12; 32]).unwrap();
    let ed_proof = splitsign::keys::prove_possession(&ed, "node_a", &kid_ed);
    let (other_key, kid_other, pk_other) = p256_attacker(0x13);
    let for_b = splitsign::keys::prove_possession(&other_key, "node_b", &kid_other);
    let (good, kid_good, pk_good) = p256_attacker(0x14);
    let good_proof = splitsign::keys::prove_possession(&good, "node_a", &kid_good);
    let a_pw = pg.node_password("node_a");
    let out = pg.sql_as(
        "node_a",
        &a_pw,
        &format!(
            "{}{}{}",
            es256_row("node_a", &kid_none, &pk_none, None),
            es256_row("node_a", &kid_ed, &pk_ed, Some(&ed_proof)),
            es256_row("node_a", &kid_other, &pk_other, Some(&for_b)),
        ),
    );
    assert_ok(&out);
    let out = pg.sql_as(
        "node_a",
        &a_pw,
        &es256_row("node_a", &kid_good, &pk_good, Some(&good_proof)),
    );
    assert!(out.status.success(), "{}", show(&out));
    until(Duration::from_secs(3), "B publishes A's proven key", || {
        kids(&b).contains(&kid_good)
    });
    let set = jwks(&b);
    assert_es256_jwk(jwk(&set, &kid_good));
    let iss = status(&b)["issuer"].clone();
    let forged = forge_es256(&good, &kid_good, &iss);
    let r = verify(&b, &forged);
    assert_eq!(
        r["ok"], true,
        "a proven ES256 key of A's verifies on B: {r}"
    );
    let st = status(&b);
    let skipped = st["cluster"]["skipped_keys"].as_array().unwrap().clone();
    assert_eq!(skipped.len(), 3, "{st}");
    for (seed, kid) in [(0x11, &kid_none), (0x12, &kid_ed), (0x13, &kid_other)] {
        assert!(!kids(&b).contains(kid), "B publishes {kid}");
        let s = skipped
            .iter()
            .find(|s| s["kid"] == kid.as_str())
            .unwrap_or_else(|| panic!("{kid} is not among B's skipped keys: {st}"));
        assert_eq!(s["node"], "node_a", "{s}");
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .contains("no proof that node node_a holds this key"),
            "{s}"
        );
        let (k, _, _) = p256_attacker(seed);
        assert_eq!(
            code(&verify(&b, &forge_es256(&k, kid, &iss))),
            "unknown_key"
        );
    }
    // B still verifies A's own key, and A B's.
    assert_eq!(verify(&b, &sign(&a, "dave").0)["ok"], true);
    assert_eq!(verify(&a, &sign(&b, "erin").0)["ok"], true);
    a.stop();
    b.stop();
}

/// A single host with an ES256 key moves from SQLite to PostgreSQL: the
/// kid is unchanged, its tokens from before verify on it and on another
/// (EdDSA) node, both shares rebuild it there, and it goes on signing
/// ES256, a new key after a rotation too.
#[test]
fn an_es256_host_moved_from_sqlite_to_postgresql_keeps_its_kid_and_tokens() {
    let pg = PgServer::start();
    let dir = Dir::new();
    es256_single_host(&dir);
    let d = Daemon::start_with(&dir, &CFG).unwrap();
    let (token, kid) = sign(&d, "alice");
    assert_eq!(header(&token)["alg"], "ES256");
    let before = jwks(&d);
    assert_es256_jwk(jwk(&before, &kid));
    d.stop();
    let alg: String = dir
        .sql()
        .query_row("SELECT alg FROM keys WHERE kid = ?1", [&kid], |r| r.get(0))
        .unwrap();
    assert_eq!(alg, "ES256");

    let pw = pg.add_node_role("web1", dir.path());
    let b_dir = node_dir(&pg, "node_b", "");
    pg.apply_schema(&["web1", "node_b"]);
    write_node_config(&pg, dir.path(), "web1", &pw, ES256);
    let out = dir.run(&[&CFG[..], &["migrate-store", "--to-postgres"]].concat());
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("moved 1 key(s)"),
        "{}",
        show(&out)
    );
    // The row in PostgreSQL: ES256, the same 65-byte point, proven.
    let row = pg.super_sql(&format!(
        "SELECT alg, encode(public_key, 'hex'), pop IS NOT NULL FROM splitsign_keys \
         WHERE node = 'web1' AND kid = '{kid}';"
    ));
    let f: Vec<&str> = row.trim().split('|').collect();
    assert_eq!(f.len(), 3, "{row}");
    assert_eq!(f[0], "ES256");
    let point = [
        vec![4u8],
        B64.decode(jwk(&before, &kid)["x"].as_str().unwrap())
            .unwrap(),
        B64.decode(jwk(&before, &kid)["y"].as_str().unwrap())
            .unwrap(),
    ]
    .concat();
    assert_eq!(f[1], hex(&point), "the public key is unchanged");
    assert_eq!(f[2], "t", "the move proves the key to the other nodes");
    assert_ok(&dir.run(&[&CFG[..], &["check"]].concat()));

    let d = start(&dir);
    assert_eq!(
        status(&d)["active_kid"],
        kid.as_str(),
        "the kid is unchanged"
    );
    assert_eq!(verify(&d, &token)["ok"], true);
    assert_eq!(jwk(&jwks(&d), &kid), jwk(&before, &kid), "the same JWK");
    let (t2, k2) = sign(&d, "bob");
    assert_eq!(k2, kid);
    assert_eq!(header(&t2)["alg"], "ES256");
    // Another node publishes the moved key and verifies its tokens.
    let b = start(&b_dir);
    until(Duration::from_secs(2), "B publishes web1's key", || {
        kids(&b).contains(&kid)
    });
    for t in [&token, &t2] {
        let r = verify(&b, t);
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(rp_verify(t, &jwks(&b))["sub"], r["claims"]["sub"]);
    }
    // A rotation after the move makes an ES256 key, which signs (in a
    // cluster, a moment after the others could learn it).
    let out = dir.run(&[&CFG[..], &["rotate"]].concat());
    assert_ok(&out);
    let new_kid = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    assert_ne!(new_kid, kid);
    until(
        Duration::from_secs(10),
        "web1 signs with its new key",
        || sign(&d, "carol").1 == new_kid,
    );
    let (t3, _) = sign(&d, "carol");
    assert_eq!(header(&t3)["alg"], "ES256");
    assert_es256_jwk(jwk(&jwks(&d), &new_kid));
    until(
        Duration::from_secs(2),
        "B verifies the new key's tokens",
        || verify(&b, &t3)["ok"] == true,
    );
    assert_eq!(verify(&b, &token)["ok"], true, "the old key still verifies");
    d.stop();
    b.stop();
}

/// kill -9 at every store step of a rotation of an ES256 key (SQLite):
/// after each, the next start serves with one active key, every token
/// issued before verifies, every key and share file is ES256 (none lost,
/// none orphaned), and `check` rebuilds every key from its two shares.
#[test]
fn kill_9_at_every_step_of_an_es256_rotation() {
    if !have_strace() {
        return;
    }
    let tpl = Dir::new();
    es256_single_host(&tpl);
    let (tokens, kid) = crate::crash::issue_tokens(&tpl, &CFG);
    assert!(tokens.iter().all(|t| header(t)["alg"] == "ES256"));
    let args = [CFG[0], CFG[1], "rotate"];
    let l = crate::crash::Loop {
        args: &args,
        steps: crate::crash::STEPS,
        daemon: false,
        reset: &|| {},
    };
    let mut switched = 0;
    let (_, killed) = crate::crash::at_every_step(&tpl, &l, |dir, what| {
        let active = crate::crash::check_after_crash(dir, &CFG, &tokens, &kid, false, what);
        if active != kid {
            switched += 1;
        }
        let rows: Vec<(String, String, i64)> = {
            let sql = dir.sql();
            let mut q = sql
                .prepare("SELECT kid, alg, length(public_key) FROM keys")
                .unwrap();
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        for (k, alg, len) in &rows {
            assert_eq!((alg.as_str(), *len), ("ES256", 65), "{what}: key {k}");
        }
        assert!(
            rows.iter().any(|r| r.0 == kid),
            "{what}: the old key is lost"
        );
        for f in dir.share_files() {
            let text = String::from_utf8(std::fs::read(&f).unwrap()).unwrap();
            assert!(
                text.starts_with("splitsign-share 3\n") && text.contains("\nalg ES256\n"),
                "{what}: {} is not an ES256 share file",
                f.display()
            );
        }
        let out = dir.run(&[&CFG[..], &["check"]].concat());
        assert!(out.status.success(), "{what}: check: {}", show(&out));
    });
    eprintln!("ES256 rotation: killed {killed}, switched {switched}");
    assert!(killed > 40, "most steps were interrupted ({killed})");
    assert!(
        switched > 0 && switched < killed,
        "switched {switched} of {killed}"
    );
}

/// The steps of an ES256 rotation against PostgreSQL a kill interrupts:
/// every message to the server, and the file share's publication and
/// removal. (The SQLite test above kills at every file step, openat and
/// fsync too; the file share is written alike whatever the database.)
const PG_ES256_STEPS: &str = "sendto,rename,renameat2,unlink,unlinkat";

/// kill -9 at every step of an ES256 rotation against PostgreSQL
/// ([`PG_ES256_STEPS`]): after each, the node restarts
/// with one active key, tokens issued before verify, both shares rebuild
/// every key (`check`), no share or row is left half made, and every
/// verified key row of the node is ES256 with a valid ES256 proof that
/// the node holds it (what the other nodes need to publish it).
#[test]
fn kill_9_at_every_step_of_an_es256_rotation_against_postgresql() {
    if !have_strace() {
        return;
    }
    let pg = PgServer::start();
    let tpl = node_dir(&pg, "node_a", ES256);
    pg.apply_schema(&["node_a"]);
    let (tokens, kid) = {
        let d = start(&tpl);
        let tokens: Vec<String> = (0..3).map(|i| sign(&d, &format!("u{i}")).0).collect();
        let kid = status(&d)["active_kid"].as_str().unwrap().to_owned();
        d.stop();
        (tokens, kid)
    };
    assert!(tokens.iter().all(|t| header(t)["alg"] == "ES256"));
    let restore = crate::crash::snapshot_node_a(&pg);
    let args = [CFG[0], CFG[1], "rotate"];
    let l = crate::crash::Loop {
        args: &args,
        steps: PG_ES256_STEPS,
        daemon: false,
        reset: &restore,
    };
    let mut switched = 0;
    let (counts, killed) = crate::crash::at_every_step(&tpl, &l, |dir, what| {
        if crate::crash::check_after_crash_pg(&pg, dir, &tokens, &kid, false, what) {
            switched += 1;
        }
        let rows = pg.super_sql(
            "SELECT kid, alg, encode(public_key, 'hex'), coalesce(encode(pop, 'hex'), '')
               FROM splitsign_keys WHERE node = 'node_a' AND verified;",
        );
        assert!(rows.contains(&kid), "{what}: the old key is lost: {rows}");
        for line in rows.lines() {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f[1], "ES256", "{what}: {line}");
            let pk = splitsign::keys::PublicKey::parse(KeyType::P256, &unhex(f[2]))
                .unwrap_or_else(|e| panic!("{what}: {e}: {line}"));
            assert!(
                splitsign::keys::check_possession(&pk, "node_a", f[0], &unhex(f[3])),
                "{what}: no valid proof of possession: {line}"
            );
        }
        for f in dir.share_files() {
            let text = String::from_utf8(std::fs::read(&f).unwrap()).unwrap();
            assert!(
                text.starts_with("splitsign-share 3\n") && text.contains("\nalg ES256\n"),
                "{what}: {} is not an ES256 share file",
                f.display()
            );
        }
    });
    eprintln!(
        "ES256 rotation against PostgreSQL: {counts:?}: killed {killed}, switched {switched}"
    );
    assert!(
        counts.get("sendto").copied().unwrap_or(0) > 20,
        "the trace saw the messages to the server: {counts:?}"
    );
    // Early kills leave the old key active, late ones the new key.
    assert!(
        killed > 30 && switched > 0 && switched < killed,
        "switched {switched} of {killed}"
    );
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
