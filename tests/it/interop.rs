//! Third-party verifiers accept the daemon's ES256 tokens, by `kid`, from
//! the JWKS file it publishes while it holds both kinds of keys (an EdDSA
//! key and two ES256 keys after `alg = "ES256"`, reload, rotate), and
//! refuse a tampered one: npm `jsonwebtoken` with `jwks-rsa` (the Express
//! setup), npm `jose`, PyJWT, and the JDK's own
//! `SHA256withECDSAinP1363Format`. The verifiers are the scripts in
//! tests/interop/ (pinned versions: package-lock.json, requirements.txt);
//! each prints one JSON line per token, with the RFC 7638 thumbprint of the
//! key it verified with, computed by the verifier's own library. Their
//! tools are set up as for the client examples (`examples::venv_python`,
//! `examples::npm_ci`); a missing tool fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::examples::{npm_ci, venv_python};
use crate::util::{Daemon, Dir, assert_ok, ok};

fn interop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

const CONFIG: &str = "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/splitsign.sock\"\njwks_file = \"public/jwks.json\"\n";

/// A token and the kid the daemon signed it with.
struct Signed {
    token: String,
    kid: String,
    sub: String,
}

/// A daemon that signed with EdDSA, then (`alg = "ES256"`, reload, rotate,
/// rotate) with two ES256 keys, all three keys published.
struct Mixed {
    dir: Dir,
    daemon: Daemon,
    /// The EdDSA token.
    a: Signed,
    /// ES256, the first ES256 key (retired, still published).
    b1: Signed,
    /// ES256, the signing key.
    b: Signed,
}

fn sign(d: &Daemon, sub: &str) -> Signed {
    let r = ok(d
        .conn()
        .request(json!({"op":"sign","claims":{"sub":sub,"aud":"api"},"ttl":300})));
    Signed {
        token: r["token"].as_str().unwrap().to_owned(),
        kid: r["kid"].as_str().unwrap().to_owned(),
        sub: sub.to_owned(),
    }
}

fn header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

/// `token` with one part replaced by `f` of its JSON; the other parts
/// (and the signature) kept.
fn edit(token: &str, part: usize, f: impl FnOnce(&mut Value)) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut v: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[part]).unwrap()).unwrap();
    f(&mut v);
    parts[part] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    parts.join(".")
}

impl Mixed {
    fn start() -> Mixed {
        let dir = Dir::new();
        let cfg = dir.write_config(CONFIG);
        std::fs::create_dir(dir.path().join("public")).unwrap();
        let cfg = cfg.to_str().unwrap().to_owned();
        let d = Daemon::start_with(&dir, &["--config", &cfg]).unwrap();
        let a = sign(&d, "alice-eddsa");
        assert_eq!(header(&a.token)["alg"], "EdDSA");

        dir.write_config(&format!("{CONFIG}alg = \"ES256\"\n"));
        assert_ok(&dir.run(&["--config", &cfg, "reload"]));
        assert_ok(&dir.run(&["--config", &cfg, "rotate"]));
        let b1 = sign(&d, "bob-es256-first");
        assert_ok(&dir.run(&["--config", &cfg, "rotate"]));
        let b = sign(&d, "bob-es256");
        for t in [&b1, &b] {
            let h = header(&t.token);
            assert_eq!(h["alg"], "ES256", "{h}");
            assert_eq!(h["kid"], t.kid.as_str());
        }
        assert!(a.kid != b1.kid && b1.kid != b.kid && a.kid != b.kid);

        let m = Mixed {
            dir,
            daemon: d,
            a,
            b1,
            b,
        };
        // The published file is the JWKS: one OKP and two EC keys.
        let jwks = m.jwks();
        assert_eq!(
            jwks,
            ok(m.daemon.conn().request(json!({"op":"jwks"})))["jwks"]
        );
        let kty = |kid: &str| {
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == kid)
                .unwrap_or_else(|| panic!("{kid} is not published: {jwks}"))["kty"]
                .clone()
        };
        assert_eq!(kty(&m.a.kid), "OKP");
        assert_eq!(kty(&m.b1.kid), "EC");
        assert_eq!(kty(&m.b.kid), "EC");
        m
    }

    fn jwks_file(&self) -> PathBuf {
        self.dir.path().join("public/jwks.json")
    }

    fn jwks(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.jwks_file()).unwrap()).unwrap()
    }

    /// B with another subject, its signature kept.
    fn tampered(&self) -> String {
        edit(&self.b.token, 1, |c| c["sub"] = json!("mallory"))
    }

    /// B's header naming the other ES256 key, its signature kept.
    fn other_kid(&self) -> String {
        edit(&self.b.token, 0, |h| h["kid"] = json!(self.b1.kid))
    }
}

/// Run a verifier (`cmd` then the JWKS file and the tokens): one JSON line
/// per token.
fn run(mut cmd: Command, what: &str, jwks: &Path, tokens: &[&str]) -> Vec<Value> {
    let out = cmd
        .arg(jwks)
        .args(tokens)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
        .collect();
    assert_eq!(lines.len(), tokens.len(), "{what}: {stdout}");
    lines
}

/// The verifier (pinned to ES256) accepts both ES256 tokens with the key
/// their kid names, and refuses the EdDSA token (not ES256), B tampered
/// and B naming the other key, a bad signature saying `bad_signature`.
fn accepts_es256_by_kid(cmd: impl Fn() -> Command, what: &str, bad_signature: &str) {
    let m = Mixed::start();
    let tampered = m.tampered();
    let other_kid = m.other_kid();
    let tokens = [
        m.b.token.as_str(),
        m.b1.token.as_str(),
        tampered.as_str(),
        other_kid.as_str(),
        m.a.token.as_str(),
    ];
    let got = run(cmd(), what, &m.jwks_file(), &tokens);
    for (line, t) in got.iter().zip([&m.b, &m.b1]) {
        assert_eq!(
            line,
            &json!({"ok": true, "kid": t.kid, "sub": t.sub}),
            "{what}: the ES256 token of {} verifies with its key",
            t.kid
        );
    }
    for (line, which) in
        got[2..]
            .iter()
            .zip(["B tampered", "B naming the other key", "the EdDSA token"])
    {
        assert_eq!(line["ok"], false, "{what} accepted {which}: {line}");
    }
    for (line, which) in got[2..4]
        .iter()
        .zip(["B tampered", "B naming the other key"])
    {
        let error = line["error"].as_str().unwrap();
        assert!(
            error.contains(bad_signature),
            "{what} refused {which} for another reason: {error}"
        );
    }
}

fn node(script: &str, algs: &str) -> Command {
    let dir = interop();
    npm_ci(&dir);
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script)).arg(algs);
    cmd
}

#[test]
fn npm_jsonwebtoken_with_jwks_rsa_verifies_es256_by_kid() {
    // jwks-rsa reads the mixed JWKS whole (the OKP key does not stop it).
    accepts_es256_by_kid(
        || node("jsonwebtoken.mjs", "ES256"),
        "jsonwebtoken + jwks-rsa",
        "JsonWebTokenError: invalid signature",
    );
}

#[test]
fn npm_jsonwebtoken_cannot_verify_eddsa_even_when_allowed() {
    // What docs/clients.md says: jsonwebtoken 9 refuses an Ed25519 key
    // whatever `algorithms` allows (jwks-rsa hands it over fine); jose,
    // given the same JWKS and token, verifies it.
    let m = Mixed::start();
    let a = [m.a.token.as_str()];
    let got = run(
        node("jsonwebtoken.mjs", "EdDSA"),
        "jsonwebtoken",
        &m.jwks_file(),
        &a,
    );
    assert_eq!(
        got[0],
        json!({"ok": false, "error": "Error: Unknown key type \"ed25519\"."})
    );
    let got = run(node("jose.mjs", "EdDSA"), "jose", &m.jwks_file(), &a);
    assert_eq!(
        got[0],
        json!({"ok": true, "kid": m.a.kid, "sub": m.a.sub}),
        "the EdDSA token is valid"
    );
}

#[test]
fn npm_jose_verifies_es256_by_kid() {
    accepts_es256_by_kid(
        || node("jose.mjs", "ES256"),
        "jose",
        "ERR_JWS_SIGNATURE_VERIFICATION_FAILED",
    );
}

#[test]
fn pyjwt_verifies_es256_by_kid() {
    let python = venv_python("interop-venv", &interop().join("requirements.txt"));
    accepts_es256_by_kid(
        || {
            let mut cmd = Command::new(&python);
            cmd.arg(interop().join("pyjwt.py")).arg("ES256");
            cmd
        },
        "PyJWT",
        "InvalidSignatureError: Signature verification failed",
    );
}

#[test]
fn the_jdk_p1363_ecdsa_verifies_es256_by_kid() {
    accepts_es256_by_kid(
        || {
            let mut cmd = Command::new("java");
            cmd.arg(interop().join("Verify.java"));
            cmd
        },
        "JDK SHA256withECDSAinP1363Format",
        "SecurityException: bad signature",
    );
}
