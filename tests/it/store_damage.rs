//! The two stores under attack or decay: the daemon must refuse to start,
//! name the store, and never invent a new key. And neither store, nor
//! anything else the daemon writes, may hold the whole key.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD as B64};
use serde_json::json;

use crate::util::{Daemon, Dir, initialised, ok};

/// Start must fail with exit 65, a message containing `needle`, and the
/// same single key row and share files as before.
pub(crate) fn assert_refused(dir: &Dir, needle: &str) {
    let files_before = dir.share_files();
    let keys_before = dir.key_count();
    let e = Daemon::start_with(dir, &[])
        .err()
        .expect("daemon must refuse to start");
    assert_eq!(
        e.status.code(),
        Some(65),
        "exit code; stderr:\n{}",
        e.stderr
    );
    assert!(
        e.stderr.contains(needle),
        "stderr should name {needle:?}:\n{}",
        e.stderr
    );
    assert_eq!(dir.key_count(), keys_before, "no key may be created");
    assert_eq!(
        dir.share_files(),
        files_before,
        "share files must be left alone"
    );
    assert!(!dir.socket().exists(), "no socket when sealed");
}

fn y_line(text: &str) -> String {
    text.lines()
        .find(|l| l.starts_with("y "))
        .unwrap()
        .to_owned()
}

#[test]
fn a_flipped_byte_in_the_file_share_is_refused() {
    let (dir, _) = initialised();
    let p = dir.share_file();
    let mut bytes = std::fs::read(&p).unwrap();
    let at = String::from_utf8(bytes.clone())
        .unwrap()
        .find("\ny ")
        .unwrap()
        + 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&p, &bytes).unwrap();
    assert_refused(&dir, p.to_str().unwrap());
}

#[test]
fn a_file_share_altered_with_a_fixed_checksum_is_refused() {
    // An attacker who recomputes the checksum still cannot pass the
    // public-key check.
    let (dir, kid) = initialised();
    let p = dir.share_file();
    let text = std::fs::read_to_string(&p).unwrap();
    let y = y_line(&text);
    let mut yb = B64.decode(&y[2..]).unwrap();
    yb[0] ^= 1;
    let body_end = text.find("sha256 ").unwrap();
    let body = text[..body_end].replace(&y, &format!("y {}", B64.encode(&yb)));
    let sum = B64.encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    std::fs::write(&p, format!("{body}sha256 {sum}\n")).unwrap();
    assert_refused(&dir, &kid);
    let e = Daemon::start_with(&dir, &[]).err().unwrap();
    assert!(
        e.stderr.contains("do not rebuild") && e.stderr.contains("splitsign.db"),
        "{}",
        e.stderr
    );
}

#[test]
fn a_truncated_file_share_is_refused() {
    let (dir, _) = initialised();
    let p = dir.share_file();
    let bytes = std::fs::read(&p).unwrap();
    for n in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..n]).unwrap();
        assert_refused(&dir, p.to_str().unwrap());
    }
}

#[test]
fn another_keys_share_is_refused() {
    let (dir, kid) = initialised();
    let (other, _) = initialised();
    let p = dir.share_file();
    std::fs::write(&p, std::fs::read(other.share_file()).unwrap()).unwrap();
    assert_refused(&dir, &kid);
    assert_refused(&dir, p.to_str().unwrap());
}

#[test]
fn a_group_readable_or_foreign_or_linked_share_is_refused() {
    let (dir, _) = initialised();
    let p = dir.share_file();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_refused(&dir, "0640");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A second hard link (someone kept a copy reachable elsewhere).
    let link = dir.path().join("copy");
    std::fs::hard_link(&p, &link).unwrap();
    assert_refused(&dir, "hard links");
    std::fs::remove_file(&link).unwrap();

    // A symlink in place of the file.
    let moved = dir.path().join("moved.share");
    std::fs::rename(&p, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &p).unwrap();
    assert_refused(&dir, "symbolic link");
    std::fs::remove_file(&p).unwrap();
    std::fs::rename(&moved, &p).unwrap();

    // Owned by another uid (the tests run as root, so chown works).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        assert_refused(&dir, "owned by uid 65534");
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
    }

    // A share directory others can read.
    std::fs::set_permissions(dir.keys(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_refused(&dir, "0755");
    std::fs::set_permissions(dir.keys(), std::fs::Permissions::from_mode(0o700)).unwrap();

    // Back to normal, it starts.
    Daemon::start(&dir);
}

#[test]
fn a_missing_file_share_is_refused() {
    let (dir, _) = initialised();
    let p = dir.share_file();
    std::fs::rename(&p, dir.path().join("elsewhere")).unwrap();
    let e = Daemon::start_with(&dir, &[]).err().expect("refused");
    assert_eq!(e.status.code(), Some(65));
    assert!(
        e.stderr.contains("is missing") && e.stderr.contains(p.to_str().unwrap()),
        "{}",
        e.stderr
    );
    assert_eq!(dir.key_count(), 1);
}

#[test]
fn a_deleted_db_share_row_is_refused() {
    let (dir, kid) = initialised();
    dir.sql().execute("DELETE FROM db_shares", []).unwrap();
    assert_refused(&dir, "splitsign.db");
    let e = Daemon::start_with(&dir, &[]).err().unwrap();
    assert!(
        e.stderr.contains(&kid) && e.stderr.contains("missing"),
        "{}",
        e.stderr
    );
}

#[test]
fn an_altered_db_share_row_is_refused() {
    let (dir, kid) = initialised();
    // Accidental damage: the checksum catches it.
    dir.sql()
        .execute("UPDATE db_shares SET y = zeroblob(32)", [])
        .unwrap();
    assert_refused(&dir, "splitsign.db");
    let e = Daemon::start_with(&dir, &[]).err().unwrap();
    assert!(
        e.stderr.contains(&kid) && e.stderr.contains("checksum"),
        "{}",
        e.stderr
    );
}

#[test]
fn a_db_share_forged_with_x0_cannot_choose_the_key() {
    // sharks returns a share's own y when its x is 0. The schema refuses x != 2,
    // and the loader does too; either way the attacker gets no key.
    let (dir, _) = initialised();
    let r = dir.sql().execute("UPDATE db_shares SET x = 0", []);
    assert!(r.is_err(), "the schema refuses x = 0");
}

#[test]
fn a_swapped_public_key_row_is_refused() {
    // Someone replaces the stored public key (and kid) with their own.
    let (dir, _) = initialised();
    let other = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
    dir.sql().execute("PRAGMA foreign_keys = OFF", []).unwrap();
    dir.sql()
        .execute("UPDATE keys SET public_key = ?1", [&other.to_bytes()[..]])
        .unwrap();
    assert_refused(&dir, "splitsign.db");
}

#[test]
fn a_fresh_database_beside_existing_shares_deletes_nothing() {
    // A wrong --db must not make the real shares look like orphans.
    let (dir, _) = initialised();
    std::fs::remove_dir_all(dir.path().join("var")).unwrap();
    let before = dir.share_files();
    let e = Daemon::start_with(&dir, &[]).err().expect("refused");
    assert_eq!(e.status.code(), Some(65));
    assert!(
        e.stderr.contains("does not exist") && e.stderr.contains("is the database path right"),
        "{}",
        e.stderr
    );
    assert!(
        e.stderr.contains("Nothing was deleted or changed"),
        "{}",
        e.stderr
    );
    assert_eq!(dir.share_files(), before);
    assert!(
        !dir.db().exists(),
        "no database may be created beside shares"
    );
}

/// Recombine the two stores' shares the way an attacker holding both would,
/// with `sharks` directly, to learn the seed.
fn recombine(dir: &Dir) -> [u8; 32] {
    let text = std::fs::read_to_string(dir.share_file()).unwrap();
    let mut file = vec![1u8];
    file.extend(B64.decode(&y_line(&text)[2..]).unwrap());
    let y: Vec<u8> = dir
        .sql()
        .query_row("SELECT y FROM db_shares", [], |r| r.get(0))
        .unwrap();
    let mut db = vec![2u8];
    db.extend(y);
    let a = sharks::Share::try_from(&file[..]).unwrap();
    let b = sharks::Share::try_from(&db[..]).unwrap();
    sharks::Sharks(2)
        .recover([&a, &b])
        .unwrap()
        .try_into()
        .unwrap()
}

fn all_files(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(root).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            all_files(&p, out);
        } else if m.is_file() {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_file_holds_the_whole_key() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    for i in 0..20 {
        ok(d.conn().sign(json!({"sub": format!("u{i}")})));
    }
    let jwks = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    let seed = recombine(&dir);
    // The recombined seed is the real key: it derives the published key.
    let pk = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    assert_eq!(jwks["keys"][0]["x"], B64.encode(pk.to_bytes()));

    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let mut seed_pk = seed.to_vec();
    seed_pk.extend(pk.to_bytes());
    let needles: Vec<Vec<u8>> = vec![
        seed.to_vec(),
        seed_pk,
        B64.encode(seed).into_bytes(), // the JWK `d`
        URL_SAFE.encode(seed).into_bytes(),
        STANDARD.encode(seed).into_bytes(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ];
    let check = |label: &str| {
        let mut files = Vec::new();
        all_files(dir.path(), &mut files);
        assert!(files.iter().any(|f| f.ends_with("splitsign.db-wal")) || label == "stopped");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            for n in &needles {
                assert!(
                    !contains(&bytes, n),
                    "{label}: {} holds the key",
                    f.display()
                );
            }
        }
        // Each share lives in one store only.
        let file_y = B64
            .decode(&y_line(&std::fs::read_to_string(dir.share_file()).unwrap())[2..])
            .unwrap();
        let db_y: Vec<u8> = dir
            .sql()
            .query_row("SELECT y FROM db_shares", [], |r| r.get(0))
            .unwrap();
        // Closing the test's own connection may remove the WAL: list again.
        let mut files = Vec::new();
        all_files(dir.path(), &mut files);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            if f.starts_with(dir.path().join("var")) {
                assert!(
                    !contains(&bytes, &file_y),
                    "{label}: file share found in {}",
                    f.display()
                );
            }
            if f.starts_with(dir.keys()) {
                assert!(
                    !contains(&bytes, &db_y),
                    "{label}: db share found in {}",
                    f.display()
                );
                assert!(!contains(&bytes, B64.encode(&db_y).as_bytes()));
            }
        }
    };
    check("running");
    let log = d.stop();
    for n in &needles {
        assert!(!contains(log.as_bytes(), n), "the log holds the key");
    }
    check("stopped");
}

#[test]
fn tokens_forged_without_the_key_are_refused() {
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let mut c = d.conn();
    let s = ok(c.sign(json!({"sub":"alice"})));
    let token = s["token"].as_str().unwrap();
    let kid = s["kid"].as_str().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let payload: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();

    let enc = |v: &serde_json::Value| B64.encode(serde_json::to_vec(v).unwrap());
    let cases = vec![
        // alg none, no signature
        format!(
            "{}.{}.",
            enc(&json!({"alg":"none","typ":"JWT","kid":kid})),
            parts[1]
        ),
        // HS256 keyed with the public key
        jsonwebtoken::encode(
            &jsonwebtoken::Header {
                kid: Some(kid.to_owned()),
                ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
            },
            &payload,
            &jsonwebtoken::EncodingKey::from_secret(x.as_bytes()).unwrap(),
        )
        .unwrap(),
        // a changed payload under the real signature
        format!(
            "{}.{}.{}",
            parts[0],
            enc(&json!({"sub":"mallory","iss":"splitsign","exp":9999999999i64,"iat":1})),
            parts[2]
        ),
        // an extra header field (jku) with the real signature
        format!(
            "{}.{}.{}",
            enc(&json!({"alg":"EdDSA","typ":"JWT","kid":kid,"jku":"https://evil"})),
            parts[1],
            parts[2]
        ),
        // four parts
        format!("{token}.x"),
    ];
    for t in cases {
        let r = c.request(json!({"op":"verify","token":t}));
        assert_eq!(r["ok"], false, "forged token accepted: {t}");
        assert_eq!(r["error"]["code"], "invalid_token", "{r}");
    }
    // An unknown kid.
    let other = format!(
        "{}.{}.{}",
        enc(&json!({"alg":"EdDSA","typ":"JWT","kid":"A".repeat(43)})),
        parts[1],
        parts[2]
    );
    assert_eq!(
        c.request(json!({"op":"verify","token":other}))["error"]["code"],
        "unknown_key"
    );
}

#[test]
fn a_token_built_by_jsonwebtoken_with_the_real_key_verifies() {
    // Differential check of the daemon's hand-written verifier: a token made
    // by jsonwebtoken::encode with the (recombined) key is accepted, and an
    // expired one is refused as expired.
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let dir = Dir::new();
    let d = Daemon::start(&dir);
    let kid = ok(d.conn().sign(json!({})))["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let seed = recombine(&dir);
    let der = ed25519_dalek::SigningKey::from_bytes(&seed)
        .to_pkcs8_der()
        .unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid);
    let mk = |exp: i64| {
        jsonwebtoken::encode(
            &header,
            &json!({"sub":"x","iss":"splitsign","iat":now,"exp":exp}),
            &key,
        )
        .unwrap()
    };
    let mut c = d.conn();
    ok(c.request(json!({"op":"verify","token":mk(now + 60)})));
    let r = c.request(json!({"op":"verify","token":mk(now - 3600)}));
    assert_eq!(r["error"]["code"], "token_expired", "{r}");
}

#[test]
fn a_fresh_checkouts_loose_share_directory_is_made_private() {
    // `git clone` creates keys/ as 0755 with its README: no share can have
    // leaked, so the daemon tightens it instead of refusing.
    let dir = Dir::new();
    std::fs::create_dir(dir.keys()).unwrap();
    std::fs::set_permissions(dir.keys(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.keys().join("README.md"), "shares live here").unwrap();
    let d = Daemon::start(&dir);
    let mode = std::fs::metadata(dir.keys()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(!d.log().contains("unexpected file"), "README is expected");
}
