//! A single-host ES256 (P-256) deployment end to end, on the real binary
//! (SQLite, share dir): `alg = "ES256"` in the config; the share file
//! format 3; the EC JWK and its RFC 7638 kid; tokens checked by
//! independent verifiers (p256, jsonwebtoken) and refused by the daemon
//! when tampered, high-S, DER or relabelled; rotation to and from EdDSA
//! (admin and scheduled); reshare, recover, damaged stores, import, check
//! and backup; stores upgraded from schema 5 taking an ES256 key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store_damage::assert_refused;
use crate::util::{Daemon, Dir, assert_ok, code, ok, verify_with_jwks_at};

/// The config of a test's stores, keys created with `alg`; its path.
fn config(dir: &Dir, alg: &str) -> String {
    dir.store_config(&format!("alg = \"{alg}\"\n"))
}

/// `splitsign --config CFG ARGS...` in `dir`.
fn run(dir: &Dir, cfg: &str, args: &[&str]) -> Output {
    dir.run_config(cfg, args)
}

fn start(dir: &Dir, cfg: &str) -> Daemon {
    Daemon::start_with(dir, &["--config", cfg])
        .unwrap_or_else(|e| panic!("daemon did not start: {e:?}"))
}

/// A deployment initialised with `alg = "ES256"` (and `init ARGS`): the
/// dir, its config and the kid `init` printed.
fn es256_init(args: &[&str]) -> (Dir, String, String) {
    let dir = Dir::new();
    let cfg = config(&dir, "ES256");
    let out = run(&dir, &cfg, &[&["init"], args].concat());
    assert_ok(&out);
    let kid = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    (dir, cfg, kid)
}

/// RFC 7638 thumbprint of an EC P-256 key, computed here: the required
/// members in lexicographic order, no whitespace.
fn ec_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// The JWK of `kid` in `jwks`.
pub(crate) fn jwk<'a>(jwks: &'a Value, kid: &str) -> &'a Value {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("{kid} is not published: {jwks}"))
}

/// The SEC1 uncompressed point (`04‖x‖y`) of an EC JWK.
fn sec1_of(jwk: &Value) -> Vec<u8> {
    let x = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
    let y = B64.decode(jwk["y"].as_str().unwrap()).unwrap();
    assert_eq!((x.len(), y.len()), (32, 32), "{jwk}");
    [&[4u8][..], &x, &y].concat()
}

/// The header (parsed), signing input and signature bytes of a token.
fn parts(token: &str) -> (Value, String, Vec<u8>) {
    let p: Vec<&str> = token.split('.').collect();
    assert_eq!(p.len(), 3, "{token}");
    let header = serde_json::from_slice(&B64.decode(p[0]).unwrap()).unwrap();
    (
        header,
        format!("{}.{}", p[0], p[1]),
        B64.decode(p[2]).unwrap(),
    )
}

/// Check an ES256 token with p256 alone, against the SEC1 point `sec1`:
/// the signature is 64 bytes of raw `r‖s`, its s is the low one, and it
/// verifies over the signing input.
fn p256_verifies(token: &str, sec1: &[u8]) {
    use p256::ecdsa::signature::Verifier;
    let (header, input, sig) = parts(token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(sig.len(), 64, "raw r||s, not DER");
    let sig = p256::ecdsa::Signature::from_slice(&sig).expect("r and s in range");
    assert_eq!(sig.normalize_s(), sig, "the daemon signs with low s");
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).unwrap();
    key.verify(input.as_bytes(), &sig)
        .expect("the signature verifies with p256");
}

/// Check an ES256 token as a relying party would, with jsonwebtoken and
/// the key's x and y: signature, `iss`, `exp`, `nbf`, no leeway. Its claims.
fn jsonwebtoken_verifies(token: &str, x: &str, y: &str) -> Value {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let key = DecodingKey::from_ec_components(x, y).unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&["splitsign"]);
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss"]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("token verifies with jsonwebtoken")
        .claims
}

/// [`jsonwebtoken_verifies`] with the key `jwks` publishes under the
/// token's kid (which must be an EC P-256 key).
pub(crate) fn verify_es256_with_jwks(token: &str, jwks: &Value) -> Value {
    let (header, _, _) = parts(token);
    let k = jwk(jwks, header["kid"].as_str().unwrap());
    assert_eq!((&k["kty"], &k["crv"]), (&json!("EC"), &json!("P-256")));
    p256_verifies(token, &sec1_of(k));
    jsonwebtoken_verifies(token, k["x"].as_str().unwrap(), k["y"].as_str().unwrap())
}

/// The y bytes of a share file's text.
fn y_of(text: &str) -> Vec<u8> {
    let y = text.lines().find_map(|l| l.strip_prefix("y ")).unwrap();
    B64.decode(y).unwrap()
}

/// The file share of `kid` (any generation).
fn share_of(dir: &Dir, kid: &str) -> PathBuf {
    let v: Vec<PathBuf> = dir
        .share_files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{kid}."))
        })
        .collect();
    assert_eq!(v.len(), 1, "one share file of {kid}: {v:?}");
    v.into_iter().next().unwrap()
}

/// A share file as the format 3 says it must be for an ES256 key: its
/// fields, in order, with `alg ES256` after `x`, and a 65-byte SEC1 public
/// key whose thumbprint is the kid. Returns the public key.
fn assert_es256_share_file(path: &Path, kid: &str, generation: u32, x: u8) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let names: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "splitsign-share",
            "deployment",
            "kid",
            "generation",
            "x",
            "alg",
            "public-key",
            "y",
            "sha256"
        ],
        "{text}"
    );
    assert_eq!(lines[0], "splitsign-share 3");
    assert_eq!(lines[2], format!("kid {kid}"));
    assert_eq!(lines[3], format!("generation {generation}"));
    assert_eq!(lines[4], format!("x {x}"));
    assert_eq!(lines[5], "alg ES256");
    let pk = B64.decode(&lines[6]["public-key ".len()..]).unwrap();
    assert_eq!(pk.len(), 65, "SEC1 uncompressed");
    assert_eq!(pk[0], 4);
    assert_eq!(
        ec_thumbprint(&B64.encode(&pk[1..33]), &B64.encode(&pk[33..])),
        kid
    );
    assert_eq!(y_of(&text).len(), 32);
    pk
}

/// The 32 secret bytes (Ed25519 seed or P-256 scalar) that the file
/// share (x = 1) and the database share (x = 2) of `kid` rebuild,
/// recombined with `sharks` directly, as an attacker holding both stores
/// would.
fn recombine_secret(dir: &Dir, kid: &str) -> [u8; 32] {
    let file = y_of(&std::fs::read_to_string(share_of(dir, kid)).unwrap());
    let db: Vec<u8> = dir
        .sql()
        .query_row("SELECT y FROM db_shares WHERE kid = ?1", [kid], |r| {
            r.get(0)
        })
        .unwrap();
    let a = sharks::Share::try_from(&[&[1u8][..], &file].concat()[..]).unwrap();
    let b = sharks::Share::try_from(&[&[2u8][..], &db].concat()[..]).unwrap();
    sharks::Sharks(2)
        .recover([&a, &b])
        .unwrap()
        .try_into()
        .unwrap()
}

/// The P-256 key of `kid`, from its two shares ([`recombine_secret`]).
fn recombine(dir: &Dir, kid: &str) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_bytes(&recombine_secret(dir, kid).into()).expect("a P-256 scalar")
}

/// The SEC1 point of a P-256 key.
fn sec1_of_key(k: &p256::ecdsa::VerifyingKey) -> Vec<u8> {
    k.to_sec1_point(false).as_bytes().to_vec()
}

/// A token over `header` and `payload`, signed with `key` (raw `r‖s`,
/// low s).
fn es256_token(key: &p256::ecdsa::SigningKey, header: &Value, payload: &str) -> String {
    use p256::ecdsa::signature::Signer;
    let input = format!(
        "{}.{payload}",
        B64.encode(serde_json::to_vec(header).unwrap())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    // p256 does not normalize s; JWS ES256 as the daemon takes it is low-S.
    format!("{input}.{}", B64.encode(sig.normalize_s().to_bytes()))
}

#[test]
fn es256_init_publishes_an_ec_jwk_and_signs_tokens_independent_verifiers_accept() {
    let (dir, cfg, kid) = es256_init(&[]);
    let pk = assert_es256_share_file(&dir.share_file(), &kid, 1, 1);
    let (alg, stored): (String, Vec<u8>) = dir
        .sql()
        .query_row("SELECT alg, public_key FROM keys", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((alg.as_str(), &stored), ("ES256", &pk));

    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let k = &keys[0];
    let members: BTreeSet<&str> = k.as_object().unwrap().keys().map(|s| s.as_str()).collect();
    assert_eq!(
        members,
        BTreeSet::from(["alg", "crv", "kid", "kty", "use", "x", "y"])
    );
    assert_eq!(
        (&k["kty"], &k["crv"], &k["alg"], &k["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    assert_eq!(sec1_of(k), pk, "the JWK is the share's public key");
    let (x, y) = (k["x"].as_str().unwrap(), k["y"].as_str().unwrap());
    assert_eq!(k["kid"], ec_thumbprint(x, y));
    assert_eq!(k["kid"], kid.as_str());
    // The CLI prints the same set.
    let out = run(&dir, &cfg, &["jwks"]);
    assert_ok(&out);
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap(), jwks);

    let s = ok(c.request(json!({"op":"sign","claims":{"sub":"alice","aud":"api"},"ttl":600})));
    assert_eq!(s["kid"], kid.as_str());
    let token = s["token"].as_str().unwrap();
    let header = B64.decode(token.split('.').next().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(header).unwrap(),
        format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#)
    );
    p256_verifies(token, &pk);
    let claims = jsonwebtoken_verifies(token, x, y);
    assert_eq!(
        (&claims["sub"], &claims["aud"]),
        (&json!("alice"), &json!("api"))
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    verify_es256_with_jwks(token, &jwks);
    // Every signature is in low-S form (a signer that did not normalize
    // would give a high s half of the time).
    for i in 0..32 {
        let t = ok(c.sign(json!({"sub":format!("u{i}")})));
        p256_verifies(t["token"].as_str().unwrap(), &pk);
    }

    // The daemon verifies it, over the socket and through the CLI.
    let v = ok(c.request(json!({"op":"verify","token":token,"aud":"api"})));
    assert_eq!(v["kid"], kid.as_str());
    assert_eq!(v["claims"]["sub"], "alice");
    assert_eq!(
        code(&c.request(json!({"op":"verify","token":token,"aud":"admin"}))),
        "audience_mismatch"
    );
    let out = run(&dir, &cfg, &["verify", token]);
    assert_ok(&out);
    let out = run(&dir, &cfg, &["sign", "--claim", "sub=bob"]);
    assert_ok(&out);
    let cli_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    p256_verifies(&cli_token, &pk);
    assert_eq!(jsonwebtoken_verifies(&cli_token, x, y)["sub"], "bob");
}

/// n − s for a P-256 signature's s (both 32 bytes big-endian), computed
/// here with schoolbook subtraction: the curve order n is from SEC 2.
pub(crate) fn order_minus(s: &[u8]) -> [u8; 32] {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = N[i] as i16 - s[i] as i16 - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    assert_eq!(borrow, 0, "s < n");
    out
}

#[test]
fn the_daemon_refuses_tampered_high_s_der_and_relabelled_es256_tokens() {
    use p256::ecdsa::signature::Verifier;
    let (dir, cfg, kid) = es256_init(&[]);
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let s = ok(c.sign(json!({"sub":"alice"})));
    let token = s["token"].as_str().unwrap().to_owned();
    let p: Vec<&str> = token.split('.').collect();
    let (_, input, sig) = parts(&token);
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1_of(jwk(&jwks, &kid))).unwrap();
    let refused = |c: &mut crate::util::Conn, t: &str, why: &str| {
        let r = c.request(json!({"op":"verify","token":t}));
        assert_eq!(r["ok"], false, "{why}: accepted");
        assert_eq!(r["error"]["code"], "invalid_token", "{why}: {r}");
    };
    ok(c.request(json!({"op":"verify","token":token})));

    // The payload changed under the real signature.
    let forged = B64.encode(
        serde_json::to_vec(&json!({"sub":"mallory","iss":"splitsign","iat":1,"exp":9999999999i64}))
            .unwrap(),
    );
    refused(
        &mut c,
        &format!("{}.{forged}.{}", p[0], p[2]),
        "tampered payload",
    );

    // The high-S twin: the same r with n − s is a valid ECDSA signature
    // (p256 without the low-S rule accepts it), and the daemon refuses it.
    let high = [&sig[..32], &order_minus(&sig[32..])[..]].concat();
    let twin = p256::ecdsa::Signature::from_slice(&high).unwrap();
    assert_ne!(twin.normalize_s(), twin, "the twin's s is high");
    vk.verify(input.as_bytes(), &twin)
        .expect("the high-S twin is a valid ECDSA signature");
    refused(
        &mut c,
        &format!("{input}.{}", B64.encode(&high)),
        "high-S twin",
    );

    // The same signature DER-encoded (as OpenSSL would write it).
    let der = p256::ecdsa::Signature::from_slice(&sig).unwrap().to_der();
    vk.verify(
        input.as_bytes(),
        &p256::ecdsa::Signature::from_der(der.as_bytes()).unwrap(),
    )
    .unwrap();
    refused(
        &mut c,
        &format!("{input}.{}", B64.encode(der.as_bytes())),
        "DER signature",
    );

    // Signatures whose r or s is out of [1, n−1].
    let n = order_minus(&[0u8; 32]);
    for (why, bad) in [
        ("r = s = 0", [[0u8; 32], [0u8; 32]].concat()),
        ("s = 0", [&sig[..32], &[0u8; 32][..]].concat()),
        ("r = 0", [&[0u8; 32][..], &sig[32..]].concat()),
        ("s = n", [&sig[..32], &n[..]].concat()),
        ("r = n", [&n[..], &sig[32..]].concat()),
    ] {
        refused(&mut c, &format!("{input}.{}", B64.encode(&bad)), why);
    }
    // And a signature one byte short or long.
    refused(
        &mut c,
        &format!("{input}.{}", B64.encode(&sig[..63])),
        "63 bytes",
    );
    refused(
        &mut c,
        &format!("{input}.{}", B64.encode([&sig[..], &[0u8]].concat())),
        "65 bytes",
    );

    // With the key itself (the two stores recombined): a token it signs
    // under an ES256 header verifies (the check below is not of the
    // signature), and the same key's signature under a header that says
    // EdDSA is refused: a key verifies with its own alg only.
    let key = recombine(&dir, &kid);
    assert_eq!(sec1_of_key(key.verifying_key()), sec1_of(jwk(&jwks, &kid)));
    let own = es256_token(&key, &json!({"alg":"ES256","typ":"JWT","kid":kid}), p[1]);
    ok(c.request(json!({"op":"verify","token":own})));
    for alg in ["EdDSA", "Ed25519", "es256", "ES384"] {
        let t = es256_token(&key, &json!({"alg":alg,"typ":"JWT","kid":kid}), p[1]);
        refused(&mut c, &t, &format!("header alg {alg}"));
    }
}

/// Each key's alg label in a status, by kid (sorted).
fn algs_of(status: &Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["alg"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The daemon's status over the socket, and each key's alg by kid.
fn algs(c: &mut crate::util::Conn) -> (Value, Vec<(String, String)>) {
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    let v = algs_of(&st);
    (st, v)
}

/// The CLI's status table names the alg of new keys, and each key's own
/// in its ALG column.
fn assert_status_table(dir: &Dir, cfg: &str, new_keys: &str, want: &[(String, String)]) {
    let out = run(dir, cfg, &["status"]);
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("alg of new keys {new_keys} ")),
        "{text}"
    );
    let header: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("KID "))
        .unwrap_or_else(|| panic!("no table: {text}"))
        .split_whitespace()
        .collect();
    assert_eq!(header[..3], ["KID", "STATE", "ALG"], "{text}");
    for (kid, alg) in want {
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with(kid.as_str()))
            .unwrap_or_else(|| panic!("no row of {kid}: {text}"))
            .split_whitespace()
            .collect();
        assert_eq!(row[2], alg, "{text}");
    }
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// Switch the running daemon to keys of `alg` (the config rewritten, then
/// `reload`) and rotate; the new kid.
fn reload_and_rotate(dir: &Dir, alg: &str) -> String {
    let cfg = config(dir, alg);
    assert_ok(&run(dir, &cfg, &["reload"]));
    let out = run(dir, &cfg, &["rotate"]);
    assert_ok(&out);
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned()
}

#[test]
fn rotating_from_eddsa_to_es256_and_back_keeps_every_token_verifying() {
    let dir = Dir::new();
    let cfg = config(&dir, "EdDSA");
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let a = ok(c.sign(json!({"sub":"a","aud":"api"})));
    let kid_a = a["kid"].as_str().unwrap().to_owned();
    let token_a = a["token"].as_str().unwrap().to_owned();
    // The Ed25519 key itself, while it still has its shares.
    let seed_a = ed25519_dalek::SigningKey::from_bytes(&recombine_secret(&dir, &kid_a));

    // To ES256: the new key is P-256 and signs; the JWKS is mixed.
    let kid_b = reload_and_rotate(&dir, "ES256");
    assert_ne!(kid_b, kid_a);
    let b = ok(c.sign(json!({"sub":"b","aud":"api"})));
    assert_eq!(b["kid"], kid_b.as_str());
    let token_b = b["token"].as_str().unwrap().to_owned();
    assert_eq!(parts(&token_b).0["alg"], "ES256");
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(
        (&jwk(&jwks, &kid_a)["kty"], &jwk(&jwks, &kid_a)["alg"]),
        (&json!("OKP"), &json!("EdDSA"))
    );
    assert_eq!(
        (&jwk(&jwks, &kid_b)["kty"], &jwk(&jwks, &kid_b)["alg"]),
        (&json!("EC"), &json!("ES256"))
    );
    for t in [&token_a, &token_b] {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    verify_with_jwks_at(&token_a, &jwks, Some("api"));
    verify_es256_with_jwks(&token_b, &jwks);
    // In the mixed set, the Ed25519 key verifies under its own label only:
    // its own signature under a header that says ES256 is refused.
    let payload_a = token_a.split('.').nth(1).unwrap();
    let ed_token = |alg: &str| {
        use ed25519_dalek::Signer;
        let header = json!({"alg":alg,"typ":"JWT","kid":kid_a});
        let input = format!(
            "{}.{payload_a}",
            B64.encode(serde_json::to_vec(&header).unwrap())
        );
        let sig = seed_a.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    };
    ok(c.request(json!({"op":"verify","token":ed_token("EdDSA")})));
    let r = c.request(json!({"op":"verify","token":ed_token("ES256")}));
    assert_eq!(code(&r), "invalid_token", "{r}");
    let (st, by_kid) = algs(&mut c);
    assert_eq!(st["alg"], "ES256", "keys are created with ES256 now");
    assert_eq!(st["active_kid"], kid_b.as_str());
    assert_eq!(
        by_kid,
        sorted(vec![
            (kid_a.clone(), "EdDSA".into()),
            (kid_b.clone(), "ES256".into())
        ])
    );
    assert_status_table(&dir, &cfg, "ES256", &by_kid);
    // Only the signing key keeps shares; the ES256 one is format 3.
    assert_eq!(dir.share_files().len(), 1);
    assert_es256_share_file(&share_of(&dir, &kid_b), &kid_b, 1, 1);

    // Back to EdDSA: the ES256 key stops signing, its tokens verify.
    let kid_c = reload_and_rotate(&dir, "EdDSA");
    let t = ok(c.sign(json!({"sub":"c","aud":"api"})));
    assert_eq!(t["kid"], kid_c.as_str());
    let token_c = t["token"].as_str().unwrap().to_owned();
    assert_eq!(parts(&token_c).0["alg"], "EdDSA");
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 3, "{jwks}");
    assert_eq!(jwk(&jwks, &kid_c)["kty"], "OKP");
    for t in [&token_a, &token_b, &token_c] {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    verify_es256_with_jwks(&token_b, &jwks);
    verify_with_jwks_at(&token_c, &jwks, Some("api"));
    let (st, by_kid) = algs(&mut c);
    assert_eq!(
        (&st["alg"], &st["active_kid"]),
        (&json!("EdDSA"), &json!(kid_c))
    );
    let want = sorted(vec![
        (kid_a.clone(), "EdDSA".into()),
        (kid_b.clone(), "ES256".into()),
        (kid_c.clone(), "EdDSA".into()),
    ]);
    assert_eq!(by_kid, want);
    // The CLI's status (through the daemon) says the same.
    let out = run(&dir, &cfg, &["status", "--json"]);
    assert_ok(&out);
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(cli["uptime_s"].is_u64(), "from the daemon: {cli}");
    assert_eq!(algs_of(&cli), want);
    assert_status_table(&dir, &cfg, "EdDSA", &want);
    assert!(
        dir.share_files()
            .iter()
            .all(|p| { p.file_name().unwrap().to_str().unwrap().starts_with(&kid_c) })
    );

    // A restart reads each key with its own label: the ES256 key's tokens
    // still verify, the EdDSA key signs. Stopped, the status read from the
    // database says the same.
    drop(c);
    d.stop();
    let out = run(&dir, &cfg, &["status", "--json"]);
    assert_ok(&out);
    let offline: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(offline["daemon"], "not running");
    assert_eq!(algs_of(&offline), want);
    assert_status_table(&dir, &cfg, "EdDSA", &want);
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    for t in [&token_a, &token_b, &token_c] {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    assert_eq!(algs(&mut c).1, want);
    assert_eq!(ok(c.sign(json!({})))["kid"], kid_c.as_str());
    assert_ok(&run(&dir, &cfg, &["check"]));
}

#[test]
fn reshare_an_es256_key_through_the_daemon_and_offline_keeps_the_kid() {
    let (dir, cfg, kid) = es256_init(&[]);
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let t = ok(c.sign(json!({"sub":"a"})));
    let token = t["token"].as_str().unwrap().to_owned();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let pk = sec1_of(jwk(&jwks, &kid));
    let old_file = std::fs::read(dir.share_file()).unwrap();

    // Through the daemon.
    let out = run(&dir, &cfg, &["reshare"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2"));
    let p = dir.keys().join(format!("{kid}.2.share"));
    assert_eq!(
        dir.share_files(),
        vec![p.clone()],
        "the old file share is gone"
    );
    assert_eq!(assert_es256_share_file(&p, &kid, 2, 1), pk);
    assert_ne!(
        y_of(&std::fs::read_to_string(&p).unwrap()),
        y_of(&String::from_utf8(old_file).unwrap())
    );
    assert_eq!(
        sec1_of_key(recombine(&dir, &kid).verifying_key()),
        pk,
        "the same key"
    );
    assert_eq!(ok(c.sign(json!({})))["kid"], kid.as_str());
    ok(c.request(json!({"op":"verify","token":token})));
    assert_eq!(ok(c.request(json!({"op":"jwks"})))["jwks"], jwks);
    drop(c);
    d.stop();

    // Offline, with a new recovery share.
    let out = run(&dir, &cfg, &["reshare", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 3"));
    let p = dir.keys().join(format!("{kid}.3.share"));
    assert_eq!(dir.share_files(), vec![p.clone()]);
    assert_eq!(assert_es256_share_file(&p, &kid, 3, 1), pk);
    let rec = dir.path().join("rec.share");
    assert_eq!(assert_es256_share_file(&rec, &kid, 3, 3), pk);
    assert_eq!(sec1_of_key(recombine(&dir, &kid).verifying_key()), pk);
    assert_ok(&run(&dir, &cfg, &["check"]));
    // The new recovery share rebuilds the file share.
    let file = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_ok(&run(
        &dir,
        &cfg,
        &["recover", "--recovery-share", "rec.share"],
    ));
    assert_eq!(std::fs::read(&p).unwrap(), file);

    // The daemon restarts on generation 3 with the same key.
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let s = ok(c.sign(json!({"sub":"b"})));
    assert_eq!(s["kid"], kid.as_str());
    p256_verifies(s["token"].as_str().unwrap(), &pk);
    ok(c.request(json!({"op":"verify","token":token})));
    assert_eq!(ok(c.request(json!({"op":"jwks"})))["jwks"], jwks);
}

#[test]
fn recover_a_lost_es256_file_share_or_db_share_from_the_recovery_share() {
    let (dir, cfg, kid) = es256_init(&["--recovery-share", "rec.share"]);
    let rec = dir.path().join("rec.share");
    let pk = assert_es256_share_file(&rec, &kid, 1, 3);
    let d = start(&dir, &cfg);
    let t = ok(d.conn().sign(json!({"sub":"a"})));
    let token = t["token"].as_str().unwrap().to_owned();
    d.stop();
    let share = dir.share_file();
    let original = std::fs::read(&share).unwrap();

    // The file share lost: start refuses, naming it.
    std::fs::remove_file(&share).unwrap();
    let e = Daemon::start_with(&dir, &["--config", &cfg])
        .err()
        .expect("refused without the file share");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    assert!(
        e.stderr.contains(share.to_str().unwrap()) && e.stderr.contains("splitsign recover"),
        "{}",
        e.stderr
    );
    assert_eq!(dir.key_count(), 1, "no key was invented");
    let out = run(&dir, &cfg, &["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the file share"));
    assert_eq!(
        std::fs::read(&share).unwrap(),
        original,
        "the very same share"
    );
    assert_eq!(assert_es256_share_file(&share, &kid, 1, 1), pk);
    assert_ok(&run(&dir, &cfg, &["check"]));
    let d = start(&dir, &cfg);
    let s = ok(d.conn().sign(json!({})));
    assert_eq!(s["kid"], kid.as_str());
    p256_verifies(s["token"].as_str().unwrap(), &pk);
    ok(d.conn().request(json!({"op":"verify","token":token})));
    d.stop();

    // The database share lost.
    dir.sql().execute("DELETE FROM db_shares", []).unwrap();
    let e = Daemon::start_with(&dir, &["--config", &cfg])
        .err()
        .expect("refused");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    let out = run(&dir, &cfg, &["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt the database share"));
    assert_ok(&run(&dir, &cfg, &["check"]));
    assert_eq!(sec1_of_key(recombine(&dir, &kid).verifying_key()), pk);
    let d = start(&dir, &cfg);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());
    ok(d.conn().request(json!({"op":"verify","token":token})));
}

/// Everything of the two stores a refused start must leave as it was: the
/// share files' bytes, and the key and database share rows.
type Snapshot = (
    Vec<(PathBuf, Vec<u8>)>,
    Vec<(String, String, Vec<u8>)>,
    Vec<(String, i64, i64, Vec<u8>, Vec<u8>)>,
);

fn snapshot(dir: &Dir) -> Snapshot {
    let files = dir
        .share_files()
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let sql = dir.sql();
    let keys = sql
        .prepare("SELECT kid, alg, public_key FROM keys ORDER BY kid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let shares = sql
        .prepare("SELECT kid, generation, x, y, checksum FROM db_shares ORDER BY kid")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (files, keys, shares)
}

/// Start must be refused (exit 65, `needles` in the message) and the
/// stores left exactly as they are.
fn refused_unchanged(dir: &Dir, needles: &[&str]) {
    let before = snapshot(dir);
    for n in needles {
        assert_refused(dir, n);
    }
    assert_eq!(snapshot(dir), before, "the stores are unchanged");
}

/// Rewrite the file share at `p` with `edit` applied to its body, and a
/// checksum that matches (as an attacker would).
fn rewrite_share(p: &Path, edit: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(p).unwrap();
    let body = edit(&text[..text.find("sha256 ").unwrap()]);
    let sum = B64.encode(Sha256::digest(body.as_bytes()));
    std::fs::write(p, format!("{body}sha256 {sum}\n")).unwrap();
}

/// The checksum of a database share row of an ES256 key, computed here
/// from the format the lead described: a row of an ES256 key names its
/// label.
fn es256_row_checksum(kid: &str, generation: u32, y: &[u8]) -> Vec<u8> {
    row_checksum(b"splitsign-db-share 2\0ES256\0", kid, generation, y)
}

/// The same for an Ed25519 key's row (the checksum from before ES256).
fn ed25519_row_checksum(kid: &str, generation: u32, y: &[u8]) -> Vec<u8> {
    row_checksum(b"splitsign-db-share 1\0", kid, generation, y)
}

/// SHA-256 of `prefix`, the kid, a NUL, the generation, x = 2 and y.
fn row_checksum(prefix: &[u8], kid: &str, generation: u32, y: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prefix);
    h.update(kid.as_bytes());
    h.update(b"\0");
    h.update(generation.to_be_bytes());
    h.update([2u8]);
    h.update(y);
    h.finalize().to_vec()
}

#[test]
fn damaged_or_swapped_es256_shares_are_refused_and_left_alone() {
    let (dir, cfg, kid) = es256_init(&[]);
    let p = dir.share_file();
    let path = p.to_str().unwrap().to_owned();
    let original = std::fs::read(&p).unwrap();
    let restore = || std::fs::write(&p, &original).unwrap();

    // A flipped byte of y, the checksum recomputed: the file parses, but
    // the two shares do not rebuild the key.
    rewrite_share(&p, |body| {
        let y = body.lines().find(|l| l.starts_with("y ")).unwrap();
        let mut yb = B64.decode(&y[2..]).unwrap();
        yb[7] ^= 0x40;
        body.replace(y, &format!("y {}", B64.encode(&yb)))
    });
    refused_unchanged(&dir, &[&kid, "do not rebuild", "splitsign.db"]);
    restore();

    // A flipped byte without a fixed checksum: the file is named.
    let mut bytes = original.clone();
    let at = String::from_utf8(original.clone())
        .unwrap()
        .find("\ny ")
        .unwrap()
        + 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&p, &bytes).unwrap();
    refused_unchanged(&dir, &[&path, "checksum"]);
    restore();

    // Relabelled `alg EdDSA` (and Ed25519), the checksum recomputed: an
    // ES256 share is never read as an Ed25519 key's.
    for label in ["EdDSA", "Ed25519"] {
        rewrite_share(&p, |body| {
            body.replace("\nalg ES256\n", &format!("\nalg {label}\n"))
        });
        refused_unchanged(&dir, &[&path, "public-key"]);
        restore();
    }

    // The database share's y altered: its checksum catches it.
    let (y, sum): (Vec<u8>, Vec<u8>) = dir
        .sql()
        .query_row("SELECT y, checksum FROM db_shares", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        es256_row_checksum(&kid, 1, &y),
        sum,
        "the row checksum as described"
    );
    let mut bad = y.clone();
    bad[3] ^= 1;
    dir.sql()
        .execute("UPDATE db_shares SET y = ?1", [&bad])
        .unwrap();
    refused_unchanged(&dir, &[&kid, "checksum", "splitsign.db"]);
    // And with the checksum recomputed: the shares do not rebuild the key.
    dir.sql()
        .execute(
            "UPDATE db_shares SET checksum = ?1",
            [es256_row_checksum(&kid, 1, &bad)],
        )
        .unwrap();
    refused_unchanged(&dir, &[&kid, "do not rebuild", "splitsign.db"]);
    // The row's own y under an Ed25519 row's checksum: not this key's row.
    dir.sql()
        .execute(
            "UPDATE db_shares SET y = ?1, checksum = ?2",
            rusqlite::params![y, ed25519_row_checksum(&kid, 1, &y)],
        )
        .unwrap();
    refused_unchanged(&dir, &[&kid, "checksum", "splitsign.db"]);
    dir.sql()
        .execute("UPDATE db_shares SET checksum = ?1", [&sum])
        .unwrap();

    // The key row's public key replaced by another P-256 point.
    let other_point = sec1_of_key(
        p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into())
            .unwrap()
            .verifying_key(),
    );
    let sql = dir.sql();
    sql.execute("PRAGMA foreign_keys = OFF", []).unwrap();
    let stored: Vec<u8> = sql
        .query_row("SELECT public_key FROM keys", [], |r| r.get(0))
        .unwrap();
    sql.execute("UPDATE keys SET public_key = ?1", [&other_point])
        .unwrap();
    // Relabelling the row as an Ed25519 key's is refused by the schema.
    assert!(
        sql.execute("UPDATE keys SET alg = 'EdDSA'", []).is_err(),
        "a 65-byte public key cannot be labelled EdDSA"
    );
    drop(sql);
    refused_unchanged(&dir, &[&kid, "thumbprint", "splitsign.db"]);
    dir.sql()
        .execute("UPDATE keys SET public_key = ?1", [&stored])
        .unwrap();

    // Another ES256 deployment's share in place of this one's.
    let (other, _, _) = es256_init(&[]);
    std::fs::write(&p, std::fs::read(other.share_file()).unwrap()).unwrap();
    refused_unchanged(&dir, &[&path, "another deployment"]);
    // And relabelled with this deployment's id (checksum recomputed).
    let ours = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("deployment "))
            .unwrap()
            .to_owned()
    };
    let our_line = ours(&String::from_utf8(original.clone()).unwrap());
    rewrite_share(&p, |body| body.replace(&ours(body), &our_line));
    assert_ne!(std::fs::read(&p).unwrap(), original);
    refused_unchanged(&dir, &[&path, &kid, "holds the share of key"]);
    restore();

    // Put back, the stores work.
    assert_ok(&run(&dir, &cfg, &["check"]));
    let d = start(&dir, &cfg);
    assert_eq!(ok(d.conn().sign(json!({})))["kid"], kid.as_str());
}

/// A P-256 private key as PKCS#8 PEM, from `openssl genpkey` when it is
/// here (a PEM written by another implementation), else from p256.
fn p256_pem(dir: &Dir) -> PathBuf {
    use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    let path = dir.path().join("p256.pem");
    let by_openssl = crate::util::runs("openssl", &["version"])
        && std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
    if !by_openssl {
        let key = p256::SecretKey::from_slice(&[0x5a; 32]).unwrap();
        let pem = key.to_pkcs8_pem(Default::default()).unwrap();
        std::fs::write(&path, pem.as_bytes()).unwrap();
    }
    // It reads back as a P-256 key either way.
    p256::SecretKey::from_pkcs8_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
    path
}

#[test]
fn import_takes_a_p256_pem_only_when_alg_is_es256() {
    use p256::pkcs8::DecodePrivateKey;
    let dir = Dir::new();
    let cfg = config(&dir, "ES256");
    let pem = p256_pem(&dir);
    let secret = p256::SecretKey::from_pkcs8_pem(&std::fs::read_to_string(&pem).unwrap()).unwrap();
    let point = sec1_of_key(&p256::ecdsa::VerifyingKey::from(secret.public_key()));
    let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..]));
    let kid = ec_thumbprint(&x, &y);

    // The same PEM with the default alg (EdDSA): refused, naming both
    // types, nothing created.
    let plain = Dir::new();
    std::fs::copy(&pem, plain.path().join("p256.pem")).unwrap();
    let out = plain.run(&["import", "--pem", "p256.pem"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p256.pem")
            && err.contains("P-256")
            && err.contains("Ed25519")
            && err.contains("ES256"),
        "{err}"
    );
    assert!(!plain.db().exists() && plain.share_files().is_empty());

    // An Ed25519 PEM with alg = "ES256": refused.
    {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let ed = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
        let text = ed.to_pkcs8_pem(Default::default()).unwrap();
        std::fs::write(dir.path().join("ed.pem"), text.as_bytes()).unwrap();
    }
    let out = run(&dir, &cfg, &["import", "--pem", "ed.pem"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ed.pem") && err.contains("Ed25519") && err.contains("P-256"),
        "{err}"
    );
    assert!(!dir.db().exists() && dir.share_files().is_empty());

    // Keys OpenSSL writes that are not a PKCS#8 P-256 key (a P-384 key;
    // a P-256 key in SEC1 "EC PRIVATE KEY" form): refused, nothing created.
    if crate::util::runs("openssl", &["version"]) {
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert_ok(&out);
        };
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            "p384.pem",
        ]);
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ]);
        for f in ["p384.pem", "sec1.pem"] {
            let out = run(&dir, &cfg, &["import", "--pem", f]);
            assert_eq!(out.status.code(), Some(2), "{f}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(f) && err.contains("PKCS#8"), "{err}");
            assert!(!dir.db().exists() && dir.share_files().is_empty());
        }
    }

    // With alg = "ES256": imported; the kid is the key's thumbprint.
    let out = run(&dir, &cfg, &["import", "--pem", "p256.pem"]);
    assert_ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2),
        Some(kid.as_str())
    );
    assert_eq!(
        assert_es256_share_file(&dir.share_file(), &kid, 1, 1),
        point
    );
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(
        (&jwk(&jwks, &kid)["x"], &jwk(&jwks, &kid)["y"]),
        (&json!(x), &json!(y))
    );
    let s = ok(c.sign(json!({"sub":"imported"})));
    assert_eq!(s["kid"], kid.as_str());
    let token = s["token"].as_str().unwrap();
    // Verified with the key from the PEM, not the one the daemon publishes.
    p256_verifies(token, &point);
    assert_eq!(jsonwebtoken_verifies(token, &x, &y)["sub"], "imported");
    let st = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert_eq!(
        (&st["keys"][0]["alg"], &st["keys"][0]["origin"]),
        (&json!("ES256"), &json!("imported"))
    );
}

#[test]
fn check_and_backup_of_an_es256_deployment_keep_the_alg() {
    let (dir, cfg, kid) = es256_init(&[]);
    let out = run(&dir, &cfg, &["check"]);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "key {kid} (active, ES256): file share and database share rebuild its public key"
        )),
        "{text}"
    );
    let d = start(&dir, &cfg);
    let t = ok(d.conn().sign(json!({"sub":"a"})));
    let token = t["token"].as_str().unwrap().to_owned();
    let jwks = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    // Both beside the running daemon.
    assert_ok(&run(&dir, &cfg, &["check"]));
    let out = run(&dir, &cfg, &["backup", "backup.db"]);
    assert_ok(&out);
    d.stop();

    let backup = rusqlite::Connection::open(dir.path().join("backup.db")).unwrap();
    let (bkid, alg, pk): (String, String, Vec<u8>) = backup
        .query_row("SELECT kid, alg, public_key FROM keys", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((bkid.as_str(), alg.as_str()), (kid.as_str(), "ES256"));
    assert_eq!(pk, sec1_of(jwk(&jwks, &kid)));
    drop(backup);

    // Restored beside the share directory, it is the same deployment.
    let restored = Dir::new();
    crate::util::copy_dir(&dir.keys(), &restored.keys());
    std::fs::create_dir(restored.path().join("var")).unwrap();
    std::fs::copy(dir.path().join("backup.db"), restored.db()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for p in [restored.keys(), restored.path().join("var")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        std::fs::set_permissions(restored.db(), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let rcfg = config(&restored, "ES256");
    assert_ok(&run(&restored, &rcfg, &["check"]));
    let d = start(&restored, &rcfg);
    let mut c = d.conn();
    assert_eq!(ok(c.request(json!({"op":"jwks"})))["jwks"], jwks);
    ok(c.request(json!({"op":"verify","token":token})));
    let s = ok(c.sign(json!({})));
    assert_eq!(s["kid"], kid.as_str());
    verify_es256_with_jwks(s["token"].as_str().unwrap(), &jwks);
}

/// Poll `f` every 50 ms until it gives a value, for `secs` seconds at most.
fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no {what} in {secs}s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_daemons_own_keys_follow_the_configured_alg_at_first_start_and_on_schedule() {
    // Keys sign for 4 s, their successor made 2 s ahead.
    let dir = Dir::new();
    let cfg = crate::lifecycle::fast_config(&dir, "4s", "2s", "alg = \"ES256\"\n");
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    // The first start made an ES256 key.
    let (_, by_kid) = algs(&mut c);
    assert_eq!(by_kid.len(), 1, "{by_kid:?}");
    let (first, alg) = by_kid[0].clone();
    assert_eq!(alg, "ES256");
    assert_es256_share_file(&share_of(&dir, &first), &first, 1, 1);
    // Its scheduled successor is ES256 too, published before it signs.
    let (second, alg) = poll("successor", 10, || {
        algs(&mut c).1.into_iter().find(|(k, _)| *k != first)
    });
    assert_eq!(alg, "ES256");
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwk(&jwks, &second)["kty"], "EC");

    // Switched to EdDSA: a later scheduled key is EdDSA, and signs.
    let cfg = crate::lifecycle::fast_config(&dir, "4s", "2s", "alg = \"EdDSA\"\n");
    assert_ok(&run(&dir, &cfg, &["reload"]));
    let (third, _) = poll("EdDSA successor", 20, || {
        algs(&mut c).1.into_iter().find(|(_, a)| a == "EdDSA")
    });
    assert!(third != first && third != second);
    let token = poll("a token of the EdDSA key", 20, || {
        let s = ok(c.sign(json!({"sub":"x"})));
        (s["kid"] == third.as_str()).then(|| s["token"].as_str().unwrap().to_owned())
    });
    assert_eq!(parts(&token).0["alg"], "EdDSA");
    ok(c.request(json!({"op":"verify","token":token})));
}

#[test]
fn stores_upgraded_from_schema_5_take_an_es256_key_beside_their_ed25519_keys() {
    if !crate::util::have_faketime() {
        return;
    }
    let (dir, expect) = crate::util::fixture_stores("stores-v5");
    let cfg = config(&dir, "ES256");
    // At the time the fixture was made: its tokens live an hour.
    let made_at = expect["made_at"].as_i64().unwrap();
    let offset = format!("{:+}s", made_at + 60 - crate::util::now());
    let env = crate::util::faketime(&[("FAKETIME", offset.as_str())]);
    let start_shifted =
        || Daemon::start_with_env(&dir, &["--config", &cfg], &env).expect("daemon starts");
    let old: Vec<(String, String)> = algs_of(&expect["status"]);
    assert!(old.iter().all(|(_, a)| a == "EdDSA"), "{old:?}");

    let d = start_shifted();
    let mut c = d.conn();
    let (st, by_kid) = algs(&mut c);
    assert_eq!(st["alg"], "ES256");
    assert_eq!(st["active_kid"], expect["status"]["active_kid"]);
    assert_eq!(by_kid, old, "the upgrade keeps each key and its label");
    let r = ok(c.request(json!({"op":"rotate"})));
    let new = r["kid"].as_str().unwrap().to_owned();
    let s = ok(c.sign(json!({"sub":"after"})));
    assert_eq!(s["kid"], new.as_str());
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert_eq!(jwk(&jwks, &new)["kty"], "EC");
    p256_verifies(s["token"].as_str().unwrap(), &sec1_of(jwk(&jwks, &new)));
    let mut want = old.clone();
    want.push((new.clone(), "ES256".into()));
    want.sort();
    assert_eq!(algs(&mut c).1, want);
    for t in expect["valid"].as_array().unwrap() {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    drop(c);
    d.stop();

    // Schema 8 holds both kinds of rows.
    let sql = dir.sql();
    let version: i64 = sql
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 8);
    let mut rows: Vec<(String, String, i64)> = sql
        .prepare("SELECT kid, alg, length(public_key) FROM keys")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.sort();
    drop(sql);
    let lens: Vec<(String, String, i64)> = want
        .iter()
        .map(|(k, a)| (k.clone(), a.clone(), if a == "ES256" { 65 } else { 32 }))
        .collect();
    assert_eq!(rows, lens);
    let out = dir
        .cmd()
        .args(["--config", &cfg, "check"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_ok(&out);

    // And after a restart, the same keys, labels and tokens.
    let d = start_shifted();
    let mut c = d.conn();
    assert_eq!(algs(&mut c).1, want);
    for t in expect["valid"].as_array().unwrap() {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    ok(c.request(json!({"op":"verify","token":s["token"]})));
    assert_eq!(ok(c.sign(json!({})))["kid"], new.as_str());
}

#[test]
fn offline_rotate_after_a_lost_store_makes_an_es256_key_and_keeps_the_old_one_published() {
    // An EdDSA deployment whose database share is lost, and no recovery
    // share: the offline rotate is the way back, with the configured alg.
    let dir = Dir::new();
    let cfg = config(&dir, "EdDSA");
    let d = start(&dir, &cfg);
    let t = ok(d.conn().sign(json!({"sub":"a","aud":"api"})));
    let old = t["kid"].as_str().unwrap().to_owned();
    d.stop();
    dir.sql().execute("DELETE FROM db_shares", []).unwrap();
    let cfg = config(&dir, "ES256");
    let out = run(&dir, &cfg, &["rotate"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("offline"));
    let out = run(&dir, &cfg, &["status", "--json"]);
    assert_ok(&out);
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = st["active_kid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        algs_of(&st),
        sorted(vec![
            (old.clone(), "EdDSA".into()),
            (new.clone(), "ES256".into())
        ])
    );
    assert_eq!(dir.share_files(), vec![share_of(&dir, &new)]);
    assert_es256_share_file(&share_of(&dir, &new), &new, 1, 1);

    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let s = ok(c.sign(json!({"sub":"b"})));
    assert_eq!(s["kid"], new.as_str());
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    verify_es256_with_jwks(s["token"].as_str().unwrap(), &jwks);
    ok(c.request(json!({"op":"verify","token":t["token"]})));
    verify_with_jwks_at(t["token"].as_str().unwrap(), &jwks, Some("api"));
}
