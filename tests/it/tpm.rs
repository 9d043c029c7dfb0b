//! File shares sealed to a TPM 2.0 (`share_seal = "tpm2"`, feature
//! `tpm2`), on the real binary against a real TPM: one `swtpm` simulator
//! per test (`util::Swtpm`), never a mock. What a sealed deployment
//! writes, that a copy of its stores on another TPM is refused and brought
//! back by the recovery share, that no file holds the file share's y, a
//! non-root daemon, `reseal` both ways, a tampered blob, an unreachable
//! TPM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::{
    Daemon, Dir, NOBODY, Swtpm, assert_ok, have_swtpm, is_root, ok, verify_with_jwks_at,
};

/// The config of a test's stores with `extra` lines; its path.
fn config(dir: &Dir, extra: &str) -> String {
    dir.store_config(extra)
}

/// `splitsign --config CFG ARGS...` in `dir`.
fn run(dir: &Dir, cfg: &str, args: &[&str]) -> Output {
    dir.run_config(cfg, args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn start(dir: &Dir, cfg: &str) -> Daemon {
    Daemon::start_with(dir, &["--config", cfg])
        .unwrap_or_else(|e| panic!("daemon did not start: {e:?}"))
}

/// A swtpm, and a deployment sealed to it made by `init ARGS`: the TPM,
/// the directory, the config's path and the kid. `None` without swtpm
/// (the test then skips, or fails under `SPLITSIGN_REQUIRE_ALL=1`).
fn sealed_deployment(args: &[&str]) -> Option<(Swtpm, Dir, String, String)> {
    if !have_swtpm() {
        return None;
    }
    let tpm = Swtpm::start();
    let dir = Dir::new();
    let cfg = config(&dir, &tpm.config());
    let kid = init(&dir, &cfg, args);
    Some((tpm, dir, cfg, kid))
}

/// A swtpm, and a deployment in clear (`share_seal = "none"`, the TPM
/// named by `tpm_tcti`) made by `init`: the TPM, the directory, the
/// config's path and the kid. `None` without swtpm.
fn clear_deployment() -> Option<(Swtpm, Dir, String, String)> {
    if !have_swtpm() {
        return None;
    }
    let tpm = Swtpm::start();
    let dir = Dir::new();
    let clear = config(&dir, &format!("tpm_tcti = \"{}\"\n", tpm.tcti()));
    let kid = init(&dir, &clear, &[]);
    Some((tpm, dir, clear, kid))
}

/// `init ARGS` with `cfg`; the kid it printed.
fn init(dir: &Dir, cfg: &str, args: &[&str]) -> String {
    let out = run(dir, cfg, &[&["init"], args].concat());
    assert_ok(&out);
    stdout(&out).split_whitespace().nth(2).unwrap().to_owned()
}

/// The share files of `kid` (every generation).
fn shares_of(dir: &Dir, kid: &str) -> Vec<PathBuf> {
    dir.share_files()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with(&format!("{kid}.")) && name.ends_with(".share")
        })
        .collect()
}

/// The one share file of `kid`.
fn share_of(dir: &Dir, kid: &str) -> PathBuf {
    let v = shares_of(dir, kid);
    assert_eq!(v.len(), 1, "one share file of {kid}: {v:?}");
    v.into_iter().next().unwrap()
}

/// A file share as format 3 says a sealed one is: `seal tpm2 <name>` and
/// `sealed-y <blob>` in place of `y`, x = 1, a checksum over the rest.
/// Returns what it is sealed to, as `check` and `status` print it
/// (`tpm2 <name>`).
fn assert_sealed(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let names: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
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
            "seal",
            "sealed-y",
            "sha256"
        ],
        "{}: {text}",
        path.display()
    );
    assert_eq!(text.lines().next(), Some("splitsign-share 3"));
    assert!(text.contains("\nx 1\n"), "{text}");
    assert!(!text.contains("\ny "), "no y line: {text}");
    let seal = field(&text, "seal");
    let name = seal.strip_prefix("tpm2 ").expect("seal tpm2");
    assert!(!B64.decode(name).unwrap().is_empty());
    assert!(B64.decode(field(&text, "sealed-y")).unwrap().len() > 32);
    let body = &text[..text.find("sha256 ").unwrap()];
    assert_eq!(
        field(&text, "sha256"),
        B64.encode(Sha256::digest(body.as_bytes()))
    );
    seal.to_owned()
}

/// A share file in clear: a `y` line, no seal.
fn assert_clear(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        !text.contains("\nseal ") && !text.contains("\nsealed-y "),
        "{text}"
    );
    B64.decode(field(&text, "y")).unwrap()
}

/// The value of the line `name value` of a share file's text.
fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line in {text}"))
}

/// `tpm2 <name>` of the storage root key of the TPM at `tcti`, asked of
/// the TPM.
fn srk_of(tcti: &str) -> String {
    let name = splitsign::store::tpm::Tpm::new(tcti).srk_name().unwrap();
    format!("tpm2 {}", B64.encode(name))
}

/// Every regular file under `root`, with its SHA-256.
fn hashes(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let b = std::fs::read(e.path()).unwrap();
                // SQLite's shared-memory index, and an empty write-ahead
                // log, are left by any reader of the database; the
                // database's own bytes are what must not change.
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with("-shm") || (name.ends_with("-wal") && b.is_empty()) {
                    continue;
                }
                out.insert(e.path(), Sha256::digest(&b).to_vec());
            }
        }
    }
    out
}

/// The stores of a deployment, hashed: every file of keys/ and var/.
fn stores_hashed(dir: &Dir) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut h = hashes(&dir.keys());
    h.extend(hashes(&dir.path().join("var")));
    h
}

/// The daemon's metric `splitsign_file_shares{seal="SEAL"}`.
fn file_shares_metric(c: &mut crate::util::Conn, seal: &str) -> u64 {
    let metrics = ok(c.request(json!({"op":"metrics"})))["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    let prefix = format!("splitsign_file_shares{{seal=\"{seal}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{metrics}"))
}

/// `file_share` of each key of the daemon's status that has one (the
/// keys that still need shares), by kid.
fn file_share_of(status: &Value) -> BTreeMap<String, Value> {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| !k["file_share"].is_null())
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["file_share"].clone(),
            )
        })
        .collect()
}

/// Sign, and check the token with the JWKS.
fn sign_checked(c: &mut crate::util::Conn) -> (String, String) {
    let t = ok(c.sign(json!({"sub":"tpm"})));
    let token = t["token"].as_str().unwrap().to_owned();
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    verify_with_jwks_at(&token, &jwks, None);
    (token, t["kid"].as_str().unwrap().to_owned())
}

#[test]
fn the_daemon_refuses_to_start_when_the_tpm_cannot_be_reached() {
    // A port nobody listens on (the listener is closed before the start).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let dir = Dir::new();
    let cfg = config(
        &dir,
        &format!("share_seal = \"tpm2\"\ntpm_tcti = \"{tcti}\"\n"),
    );
    let e = Daemon::start_with(&dir, &["--config", &cfg])
        .err()
        .expect("refused without its TPM");
    // Exit 2: a bad configuration (README, Exit codes).
    assert_eq!(e.status.code(), Some(2), "{}", e.stderr);
    assert!(
        e.stderr.contains("tpm_tcti") && e.stderr.contains(&tcti),
        "{}",
        e.stderr
    );
    assert!(dir.share_files().is_empty(), "no key made");
    assert!(!dir.socket().exists());
}

#[test]
fn a_sealed_deployment_signs_rotates_reshares_and_restarts() {
    let Some((tpm, dir, cfg, kid)) = sealed_deployment(&["--recovery-share", "rec.share"]) else {
        return;
    };
    let srk = srk_of(&tpm.tcti());
    assert_eq!(assert_sealed(&share_of(&dir, &kid)), srk);
    // Recovery shares are always in clear.
    assert_eq!(assert_clear(&dir.path().join("rec.share")).len(), 32);

    let d = start(&dir, &cfg);
    let mut c = d.conn();
    let (t1, k1) = sign_checked(&mut c);
    assert_eq!(k1, kid);

    // Rotate and reshare through the daemon: every file share written is
    // sealed.
    assert_ok(&run(&dir, &cfg, &["rotate"]));
    let (_, kid2) = sign_checked(&mut c);
    assert_ne!(kid2, kid, "rotated");
    assert_eq!(assert_sealed(&share_of(&dir, &kid2)), srk);
    assert_ok(&run(&dir, &cfg, &["reshare"]));
    let files = dir.share_files();
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(assert_sealed(f), srk, "{}", f.display());
    }
    assert_eq!(
        generation_of(&share_of(&dir, &kid2)),
        2,
        "reshared to generation 2"
    );

    let status = ok(c.request(json!({"op":"status"})))["status"].clone();
    let seals = file_share_of(&status);
    let sealed = seals.values().filter(|v| **v == srk.as_str()).count();
    assert_eq!(sealed, files.len(), "{status}");
    assert!(seals.values().all(|v| *v == srk.as_str()), "{status}");
    assert_eq!(file_shares_metric(&mut c, "tpm2"), files.len() as u64);
    assert_eq!(file_shares_metric(&mut c, "none"), 0);
    let table = stdout(&run(&dir, &cfg, &["status"]));
    let share_col = table
        .lines()
        .find(|l| l.starts_with("KID"))
        .and_then(|l| l.find("SHARE"))
        .expect("a SHARE column");
    for kid in seals.keys() {
        let line = table.lines().find(|l| l.starts_with(kid.as_str())).unwrap();
        assert_eq!(&line[share_col..share_col + 6], "sealed", "{table}");
    }
    let (t2, _) = sign_checked(&mut c);
    drop(c);
    d.stop();

    let out = run(&dir, &cfg, &["check"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains(&format!("the file share is sealed to {srk}")),
        "{}",
        stdout(&out)
    );
    let offline = stdout(&run(&dir, &cfg, &["status", "--json"]));
    assert!(offline.contains(&srk), "{offline}");

    // The restart unseals.
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    sign_checked(&mut c);
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    for t in [&t1, &t2] {
        ok(c.request(json!({"op":"verify","token":t})));
        verify_with_jwks_at(t, &jwks, None);
    }
    for f in dir.share_files() {
        assert_eq!(assert_sealed(&f), srk);
    }
}

#[test]
fn a_copy_of_the_stores_on_another_tpm_is_refused_untouched_and_recovered_from_the_recovery_share()
{
    if !have_swtpm() {
        return;
    }
    let (tpm_a, tpm_b) = (Swtpm::start(), Swtpm::start());
    let (srk_a, srk_b) = (srk_of(&tpm_a.tcti()), srk_of(&tpm_b.tcti()));
    assert_ne!(srk_a, srk_b, "two simulators are two TPMs");
    let a = Dir::new();
    let cfg_a = config(&a, &tpm_a.config());
    let kid = init(&a, &cfg_a, &["--recovery-share", "rec.share"]);
    let d = start(&a, &cfg_a);
    let mut c = d.conn();
    let (token, _) = sign_checked(&mut c);
    let jwks_a = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    drop(c);
    d.stop();

    // The share directory, the database and the recovery share copied to
    // a second host, whose TPM is another.
    let b = Dir::new();
    crate::util::copy_dir(a.path(), b.path());
    let cfg_b = config(&b, &tpm_b.config());
    let share_b = share_of(&b, &kid);
    let name = share_b.file_name().unwrap().to_str().unwrap().to_owned();
    let before_a = stores_hashed(&a);
    let before_b = stores_hashed(&b);
    assert!(before_b.len() >= 2, "{before_b:?}");

    let e = Daemon::start_with(&b, &["--config", &cfg_b])
        .err()
        .expect("serve refused on another TPM");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    for needle in [
        name.as_str(),
        "sealed to another TPM",
        srk_a.as_str(),
        srk_b.as_str(),
        "recover --recovery-share",
    ] {
        assert!(e.stderr.contains(needle), "{needle}: {}", e.stderr);
    }
    assert!(!b.socket().exists());
    let out = run(&b, &cfg_b, &["check"]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    for needle in [name.as_str(), "sealed to another TPM", srk_a.as_str()] {
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
    }
    assert_eq!(stores_hashed(&a), before_a, "the original is unchanged");
    assert_eq!(stores_hashed(&b), before_b, "the copy is unchanged");

    // `recover` while no TPM answers (a wrong tpm_tcti, a TPM down): it
    // cannot seal the new share, so it fails and the old file stays.
    let dead = config(
        &b,
        "share_seal = \"tpm2\"\ntpm_tcti = \"swtpm:host=127.0.0.1,port=9\"\n",
    );
    let out = run(&b, &dead, &["recover", "--recovery-share", "rec.share"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("TPM not reachable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stores_hashed(&b),
        before_b,
        "nothing lost to a TPM that is down"
    );
    let cfg_b = config(&b, &tpm_b.config());

    // The recovery share brings the copy up, sealed to its own TPM.
    let old_bytes = std::fs::read(share_of(&b, &kid)).unwrap();
    let out = run(&b, &cfg_b, &["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    let share_b = share_of(&b, &kid);
    assert_eq!(assert_sealed(&share_b), srk_b);
    // The file sealed to the other TPM is kept beside it, not destroyed
    // (it is useless without that TPM, and a wrong tpm_tcti must not cost
    // the only copy), and the start leaves it alone.
    let aside: Vec<PathBuf> = std::fs::read_dir(b.keys())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains(".share.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), old_bytes);
    let d = start(&b, &cfg_b);
    let mut c = d.conn();
    let jwks_b = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    assert!(
        jwks_b["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str()),
        "{jwks_b}"
    );
    assert_eq!(jwks_b, jwks_a, "the same published key");
    ok(c.request(json!({"op":"verify","token":token})));
    verify_with_jwks_at(&token, &jwks_b, None);
    let (_, k) = sign_checked(&mut c);
    assert_eq!(k, kid);
    drop(c);
    d.stop();
    let out = run(&b, &cfg_b, &["check"]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&srk_b), "{}", stdout(&out));
    // The original still runs on its own TPM.
    assert_eq!(stores_hashed(&a), before_a);
    assert_ok(&run(&a, &cfg_a, &["check"]));
}

/// Whether `needle` is in `hay`.
fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The encodings of `y` a file could hold it in.
fn encodings(y: &[u8]) -> Vec<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
    let hex: String = y.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        y.to_vec(),
        B64.encode(y).into_bytes(),
        URL_SAFE.encode(y).into_bytes(),
        STANDARD.encode(y).into_bytes(),
        STANDARD_NO_PAD.encode(y).into_bytes(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
    ]
}

#[test]
fn no_file_holds_the_plaintext_file_share() {
    use splitsign::keys::shamir::{KeyShare, ShareY, Slot, derive};
    use splitsign::keys::{KeyType, PublicKey};
    let Some((_tpm, dir, cfg, kid)) = sealed_deployment(&["--recovery-share", "rec.share"]) else {
        return;
    };
    let d = start(&dir, &cfg);
    let jwks = ok(d.conn().request(json!({"op":"jwks"})))["jwks"].clone();
    sign_checked(&mut d.conn());
    d.stop();

    // The file share's y, computed from the two other shares of the split.
    let rec_text = std::fs::read_to_string(dir.path().join("rec.share")).unwrap();
    let rec_y = B64.decode(field(&rec_text, "y")).unwrap();
    let pk = B64.decode(field(&rec_text, "public-key")).unwrap();
    let generation: u32 = field(&rec_text, "generation").parse().unwrap();
    let (db_gen, db_y): (u32, Vec<u8>) = dir
        .sql()
        .query_row(
            "SELECT generation, y FROM db_shares WHERE kid = ?1",
            [&kid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(db_gen, generation);
    let share = |slot, y: &[u8]| KeyShare {
        deployment: None,
        kid: kid.clone(),
        generation,
        slot,
        alg: None,
        public_key: PublicKey::parse(KeyType::Ed25519, &pk).unwrap(),
        y: ShareY::from_slice(y).unwrap(),
    };
    let file_y = derive(
        &share(Slot::Database, &db_y),
        &share(Slot::Recovery, &rec_y),
        Slot::File,
    )
    .unwrap()
    .as_bytes()
    .to_vec();
    // It really is the file share: with the database share it rebuilds the
    // published key (recombined with sharks, not the daemon's code).
    let a = sharks::Share::try_from(&[&[1u8][..], &file_y].concat()[..]).unwrap();
    let b = sharks::Share::try_from(&[&[2u8][..], &db_y].concat()[..]).unwrap();
    let seed: [u8; 32] = sharks::Sharks(2)
        .recover([&a, &b])
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    assert_eq!(B64.encode(public), jwk["x"].as_str().unwrap());
    assert_ne!(file_y, rec_y);

    // The scan finds what is there: the recovery share holds its own y.
    assert!(holds(rec_text.as_bytes(), B64.encode(&rec_y).as_bytes()));
    // Every file of the share directory (and of var/, and the recovery
    // share), and the sealed blob decoded, in none of its encodings.
    let mut scanned: Vec<(PathBuf, Vec<u8>)> = hashes(&dir.keys())
        .into_keys()
        .chain(hashes(&dir.path().join("var")).into_keys())
        .chain([dir.path().join("rec.share")])
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    assert!(scanned.iter().any(|(p, _)| p.starts_with(dir.keys())));
    let blob = B64
        .decode(field(
            &std::fs::read_to_string(share_of(&dir, &kid)).unwrap(),
            "sealed-y",
        ))
        .unwrap();
    scanned.push(("sealed-y, decoded".into(), blob));
    for (p, bytes) in &scanned {
        for (i, enc) in encodings(&file_y).iter().enumerate() {
            assert!(
                !holds(bytes, enc),
                "{} holds the file share's y (encoding {i})",
                p.display()
            );
        }
    }
}

/// `serve` in `dir` as uid and gid `NOBODY`.
fn start_as_nobody(dir: &Dir, cfg: &str, log: &str) -> splitsign_testkit::daemon::Daemon {
    use std::os::unix::process::CommandExt;
    let mut cmd = dir.cmd();
    cmd.uid(NOBODY).gid(NOBODY).args(["--config", cfg]);
    splitsign_testkit::daemon::Daemon::spawn(
        cmd,
        dir.socket(),
        dir.path().join(log),
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(20),
    )
    .unwrap_or_else(|e| panic!("daemon did not start as nobody: {e:?}"))
}

/// `splitsign --config CFG ARGS...` in `dir` as uid and gid `NOBODY`.
fn run_as_nobody(dir: &Dir, cfg: &str, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    dir.cmd()
        .uid(NOBODY)
        .gid(NOBODY)
        .args(["--config", cfg])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_daemon_that_is_not_root_seals_and_unseals() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !is_root() || !have_swtpm() {
        // Running as another uid needs root (CI runs as root).
        return;
    }
    let tpm = Swtpm::start();
    let srk = srk_of(&tpm.tcti());
    let dir = Dir::new();
    let cfg = config(&dir, &tpm.config());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&cfg, Some(NOBODY), Some(NOBODY)).unwrap();

    let out = run_as_nobody(&dir, &cfg, &["init", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    let kid = stdout(&out).split_whitespace().nth(2).unwrap().to_owned();
    let first = share_of(&dir, &kid);
    assert_eq!(assert_sealed(&first), srk);
    assert_eq!(std::fs::metadata(dir.keys()).unwrap().uid(), NOBODY);
    assert_eq!(std::fs::metadata(&first).unwrap().uid(), NOBODY);

    let d = start_as_nobody(&dir, &cfg, "daemon-1.log");
    let mut c = d.conn();
    let (token, _) = sign_checked(&mut c);
    assert_ok(&run_as_nobody(&dir, &cfg, &["rotate"]));
    let (_, kid2) = sign_checked(&mut c);
    assert_ne!(kid2, kid, "rotated");
    let files = dir.share_files();
    assert!(files.contains(&share_of(&dir, &kid2)), "{files:?}");
    for f in &files {
        assert_eq!(assert_sealed(f), srk, "{}", f.display());
        assert_eq!(std::fs::metadata(f).unwrap().uid(), NOBODY);
    }
    let status = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert!(
        file_share_of(&status).values().all(|v| *v == srk.as_str()),
        "{status}"
    );
    drop(c);
    d.stop();

    // The restart, as nobody, unseals every file share.
    let d = start_as_nobody(&dir, &cfg, "daemon-2.log");
    let mut c = d.conn();
    ok(c.request(json!({"op":"verify","token":token})));
    sign_checked(&mut c);
    let status = ok(c.request(json!({"op":"status"})))["status"].clone();
    assert_eq!(
        file_share_of(&status)
            .values()
            .filter(|v| **v == srk.as_str())
            .count(),
        files.len(),
        "{status}"
    );
}

/// The database share rows, by kid: (generation, y).
fn db_shares(dir: &Dir) -> BTreeMap<String, (u32, Vec<u8>)> {
    dir.sql()
        .prepare("SELECT kid, generation, y FROM db_shares")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The generation of a share file, from its name `KID.GEN.share`.
fn generation_of(p: &Path) -> u32 {
    let name = p.file_name().unwrap().to_str().unwrap();
    name.split('.').nth(1).unwrap().parse().unwrap()
}

#[test]
fn reseal_writes_the_same_shares_sealed_in_place_and_back() {
    if !have_swtpm() {
        return;
    }
    let tpm = Swtpm::start();
    let srk = srk_of(&tpm.tcti());
    let dir = Dir::new();
    // `config` rewrites the one config.toml: `cfg` and `clear_cfg` are one
    // path, whose text says how shares are kept at each step.
    let clear_cfg = config(&dir, &format!("tpm_tcti = \"{}\"\n", tpm.tcti()));
    let kid = init(&dir, &clear_cfg, &["--recovery-share", "rec.share"]);
    let d = start(&dir, &clear_cfg);
    let mut c = d.conn();
    let (t1, _) = sign_checked(&mut c);
    let (t2, kid2) = sign_checked(&mut c);
    assert_eq!(kid2, kid);
    let jwks = ok(c.request(json!({"op":"jwks"})))["jwks"].clone();
    drop(c);
    d.stop();
    // Each key's file share y, in clear, by kid.
    let clear: BTreeMap<String, (u32, Vec<u8>)> = dir
        .share_files()
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            (
                field(&text, "kid").to_owned(),
                (generation_of(p), assert_clear(p)),
            )
        })
        .collect();
    assert!(clear.contains_key(&kid2), "{clear:?}");
    let db_before = db_shares(&dir);

    // Sealing on in the config; `--to none` disagrees with it.
    let cfg = config(&dir, &tpm.config());
    let before = stores_hashed(&dir);
    let out = run(&dir, &cfg, &["reseal", "--to", "none"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("share_seal = \"tpm2\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(stores_hashed(&dir), before);
    // Not while a daemon runs.
    let d = start(&dir, &cfg);
    let out = run(&dir, &cfg, &["reseal"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr(&out).contains("a daemon is running"),
        "{}",
        stderr(&out)
    );
    d.stop();
    assert!(
        dir.share_files()
            .iter()
            .all(|p| assert_clear(p).len() == 32),
        "the daemon started with sealing on keeps the shares it has"
    );

    // Offline: each key's file share is written again, sealed, in place of
    // the clear one (the same generation; the database is not touched).
    let out = run(&dir, &cfg, &["reseal"]);
    assert_ok(&out);
    let said = stdout(&out);
    for (k, (g, _)) in &clear {
        assert!(
            said.contains(&format!("key {k}: its file share is now sealed to {srk}")),
            "{said}"
        );
        let p = share_of(&dir, k);
        assert_eq!(generation_of(&p), *g);
        assert_eq!(assert_sealed(&p), srk);
    }
    assert_eq!(
        dir.share_files().len(),
        clear.len(),
        "one file per key: the clear one is gone"
    );
    let db_after = db_shares(&dir);
    assert_eq!(db_after, db_before, "the same database shares");
    assert_ok(&run(&dir, &cfg, &["check"]));

    // Again: already sealed, no new generation.
    let before = stores_hashed(&dir);
    let out = run(&dir, &cfg, &["reseal"]);
    assert_ok(&out);
    for k in clear.keys() {
        assert!(
            stdout(&out).contains(&format!(
                "key {k}: its file share already is sealed to {srk}"
            )),
            "{}",
            stdout(&out)
        );
    }
    assert_eq!(stores_hashed(&dir), before, "nothing written");

    // The recovery share of the first split is still of this split: with
    // the (unchanged) database share it rebuilds the published key
    // (recombined with sharks, not the daemon's code), and `recover` takes
    // it: with the sealed file share lost, it writes it again, sealed.
    let rec_text = std::fs::read_to_string(dir.path().join("rec.share")).unwrap();
    let rec_y = B64.decode(field(&rec_text, "y")).unwrap();
    let a = sharks::Share::try_from(&[&[3u8][..], &rec_y].concat()[..]).unwrap();
    let b = sharks::Share::try_from(&[&[2u8][..], &db_after[&kid].1].concat()[..]).unwrap();
    let seed: [u8; 32] = sharks::Sharks(2)
        .recover([&a, &b])
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str() && k["x"] == B64.encode(public).as_str()),
        "{jwks}"
    );

    let lost = share_of(&dir, &kid);
    std::fs::remove_file(&lost).unwrap();
    let out = run(&dir, &cfg, &["recover", "--recovery-share", "rec.share"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("rebuilt the file share"),
        "{}",
        stdout(&out)
    );
    assert_eq!(assert_sealed(&share_of(&dir, &kid)), srk);

    // Tokens verify after the restart, with the same keys.
    let d = start(&dir, &cfg);
    let mut c = d.conn();
    for t in [&t1, &t2] {
        ok(c.request(json!({"op":"verify","token":t})));
    }
    assert_eq!(ok(c.request(json!({"op":"jwks"})))["jwks"], jwks);
    let (_, k) = sign_checked(&mut c);
    assert_eq!(k, kid2);
    drop(c);
    d.stop();

    // Back in clear (share_seal = "none" again in the config): the very
    // same y as before the sealing.
    let clear_cfg = config(&dir, &format!("tpm_tcti = \"{}\"\n", tpm.tcti()));
    let out = run(&dir, &clear_cfg, &["reseal", "--to", "none"]);
    assert_ok(&out);
    for (k, (_, y)) in &clear {
        let p = share_of(&dir, k);
        assert_eq!(&assert_clear(&p), y, "{k}: the same file share");
        assert!(
            stdout(&out).contains(&format!("key {k}: its file share is now in clear")),
            "{}",
            stdout(&out)
        );
    }
    let d = start(&dir, &clear_cfg);
    ok(d.conn().request(json!({"op":"verify","token":t1})));
    assert_eq!(sign_checked(&mut d.conn()).1, kid2);
}

#[test]
fn a_tampered_sealed_blob_is_refused_and_nothing_is_deleted() {
    let Some((_tpm, dir, cfg, kid)) = sealed_deployment(&[]) else {
        return;
    };
    let p = share_of(&dir, &kid);
    // Flip the last byte of the blob (inside the TPM's encrypted, HMACed
    // private part), and give the file a checksum that matches, as an
    // attacker would: the file parses, the TPM refuses it.
    let text = std::fs::read_to_string(&p).unwrap();
    let mut blob = B64.decode(field(&text, "sealed-y")).unwrap();
    *blob.last_mut().unwrap() ^= 0x01;
    let body =
        text[..text.find("sha256 ").unwrap()].replace(field(&text, "sealed-y"), &B64.encode(&blob));
    std::fs::write(
        &p,
        format!(
            "{body}sha256 {}\n",
            B64.encode(Sha256::digest(body.as_bytes()))
        ),
    )
    .unwrap();
    let before = stores_hashed(&dir);
    let name = p.file_name().unwrap().to_str().unwrap();

    let e = Daemon::start_with(&dir, &["--config", &cfg])
        .err()
        .expect("refused");
    assert_eq!(e.status.code(), Some(65), "{}", e.stderr);
    for needle in [
        name,
        "cannot be unsealed by the TPM",
        "the TPM refused",
        "TPM2_Load",
    ] {
        assert!(e.stderr.contains(needle), "{needle}: {}", e.stderr);
    }
    assert!(
        !e.stderr.contains("sealed to another TPM (its"),
        "{}",
        e.stderr
    );
    let out = run(&dir, &cfg, &["check"]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(stderr(&out).contains(name), "{}", stderr(&out));
    assert_eq!(stores_hashed(&dir), before, "nothing deleted or changed");
    assert_eq!(dir.key_count(), 1);
}

#[test]
fn reseal_overwrites_the_clear_file_it_replaces() {
    // The clear file's inode, held open here across the reseal: the bytes
    // it held are zeros afterwards, so the y in clear is not left in the
    // disk's free blocks when the rename drops it.
    use std::io::{Read, Seek};
    let Some((tpm, dir, _, kid)) = clear_deployment() else {
        return;
    };
    let path = share_of(&dir, &kid);
    let y = assert_clear(&path);
    let mut old = std::fs::File::open(&path).unwrap();
    let cfg = config(&dir, &tpm.config());
    assert_ok(&run(&dir, &cfg, &["reseal"]));
    assert_eq!(assert_sealed(&share_of(&dir, &kid)), srk_of(&tpm.tcti()));
    let mut bytes = Vec::new();
    old.rewind().unwrap();
    old.read_to_end(&mut bytes).unwrap();
    assert!(!bytes.is_empty());
    assert!(
        bytes.iter().all(|b| *b == 0),
        "the old file was overwritten"
    );
    assert!(!holds(&bytes, &y));
    assert_ok(&run(&dir, &cfg, &["check"]));
}

#[test]
fn a_verbose_tss_log_is_refused_rather_than_logging_the_share() {
    // TSS2_LOG at debug makes the C TSS hexdump every command and
    // response, the unsealed share among them.
    let Some((_tpm, dir, cfg, kid)) = sealed_deployment(&[]) else {
        return;
    };
    let before = stores_hashed(&dir);
    let out = dir
        .cmd()
        .args(["--config", &cfg, "check"])
        .env("TSS2_LOG", "all+debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(stderr(&out).contains("TSS2_LOG"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("0x0000"),
        "no TSS hexdump: {}",
        stderr(&out)
    );
    assert_eq!(stores_hashed(&dir), before);
    // At warning level (the library's default) it works.
    let out = dir
        .cmd()
        .args(["--config", &cfg, "check"])
        .env("TSS2_LOG", "all+warning")
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(stdout(&out).contains(&kid));
}

#[test]
fn reseal_takes_a_share_file_of_format_2() {
    // Deployments upgraded from before ES256 keep format-2 files (no alg
    // line) until their key is re-split: reseal writes them as format 3,
    // sealed, with the key row's label.
    let Some((tpm, dir, clear, kid)) = clear_deployment() else {
        return;
    };
    let path = share_of(&dir, &kid);
    let text = std::fs::read_to_string(&path).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("alg ") && !l.starts_with("sha256 "))
        .map(|l| format!("{}\n", l.replace("splitsign-share 3", "splitsign-share 2")))
        .collect();
    std::fs::write(
        &path,
        format!(
            "{body}sha256 {}\n",
            B64.encode(Sha256::digest(body.as_bytes()))
        ),
    )
    .unwrap();
    assert_ok(&run(&dir, &clear, &["check"]));
    let cfg = config(&dir, &tpm.config());
    assert_ok(&run(&dir, &cfg, &["reseal"]));
    let text = std::fs::read_to_string(share_of(&dir, &kid)).unwrap();
    assert!(text.starts_with("splitsign-share 3\n"), "{text}");
    assert!(text.contains("\nalg EdDSA\n"), "{text}");
    assert_eq!(assert_sealed(&share_of(&dir, &kid)), srk_of(&tpm.tcti()));
    assert_ok(&run(&dir, &cfg, &["check"]));
}
