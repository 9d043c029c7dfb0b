//! splitsign as the work grows, side by side in one run: each state is
//! built directly through the project's own store code (a bulk load), then
//! the daemon runs on it and is measured against the same daemon on a
//! fresh state.
//!
//! - sign at 16 connections × 32 in flight, audit log of 0 and N records;
//! - verify at 16×32, with no revocations and with 1 M jti + 10 k sub;
//! - verify at 16×32, with 2 and with 200 published keys;
//! - start-to-ready and RSS when ready, with 1 M revocations and 200 keys;
//! - `splitsign audit --verify` over the long log (wall time);
//! - pipelined `revoke` with 0, 10 k and 100 k revocations already there;
//! - database bytes per issued token (100 k tokens, after a checkpoint).
//!
//! `cargo bench --bench scale` (10 M audit records; the build takes a few
//! minutes), `-- --quick` for a smoke run with small states.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use splitsign::config::{AlgLabel, Config, Overrides};
use splitsign::store::audit_log::Record;
use splitsign::store::{Database, KeyStore, Revocation, Stores};
use splitsign_testkit::daemon::Served;
use splitsign_testkit::load::{line_load, median, sign_line, verify_line};
use splitsign_testkit::procfs::rss_kib;

const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

/// The settings every daemon of this bench runs with.
const LIMITS: &str = "max_connections = 8192\nmax_connections_per_peer = 8192\n";

struct Sizes {
    audit: usize,
    jti: usize,
    sub: usize,
    keys: usize,
    revokes: usize,
    existing: [usize; 3],
    tokens: usize,
    secs: f64,
    rounds: usize,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A new deployment (its first key made by `init`), not running.
fn deployment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/s.sock\"\n{LIMITS}"
        ),
    )
    .unwrap();
    splitsign(dir.path(), "init");
    dir
}

/// `splitsign --config config.toml COMMAND…` in `dir`, which must succeed.
fn splitsign(dir: &Path, command: &str) {
    let out = std::process::Command::new(BIN)
        .args(["--config", "config.toml"])
        .args(command.split(' '))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn db(dir: &Path) -> Database {
    Database::open(&dir.join("var/splitsign.db"), AlgLabel::EdDSA).unwrap()
}

fn random_jti() -> String {
    use base64::Engine;
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `n` audit records of issued tokens, in transactions of 100 k.
fn load_audit(dir: &Path, n: usize) {
    let mut db = db(dir);
    let kid = "Q3n1W1mX3mEJv8fTq0FJvG2xbqg2w1sR4s9ZtwJ5dUQ".to_owned();
    let at = now() - 3600;
    let mut left = n;
    while left > 0 {
        let chunk: Vec<Record> = (0..left.min(100_000))
            .map(|i| Record {
                at: at + (i as i64 % 3600),
                uid: Some(1000),
                pid: Some(4242),
                op: "sign",
                kid: Some(kid.clone()),
                sub: Some(format!("user-{}", i % 50_000)),
                jti: Some(random_jti()),
                result: "ok",
                count: 1,
            })
            .collect();
        db.audit(&chunk).unwrap();
        left -= chunk.len();
    }
}

/// `jti` token revocations and `sub` subject revocations.
fn load_revocations(dir: &Path, jti: usize, sub: usize) {
    let db = db(dir);
    let t = now();
    let rows: Vec<Revocation> = (0..jti)
        .map(|_| Revocation::Jti {
            jti: random_jti(),
            expires_at: t + 7200,
        })
        .chain((0..sub).map(|i| Revocation::Sub {
            sub: format!("gone-{i}"),
            before: t,
            expires_at: t + 7200,
        }))
        .collect();
    for chunk in rows.chunks(100_000) {
        db.add_revocations(chunk, t).unwrap();
    }
}

/// Rotate until `n` keys are published (each earlier key retiring, its
/// public key kept until its tokens could expire).
fn make_keys(dir: &Path, n: usize) {
    // The config's paths are relative to the deployment.
    let cwd = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir).unwrap();
    let cfg = Config::load(
        &Overrides {
            config: Some(dir.join("config.toml")),
            ..Overrides::default()
        },
        &splitsign::config::Env::default(),
    )
    .unwrap();
    let mut stores = Stores::open(&cfg, false).unwrap();
    for _ in 1..n {
        let t = now();
        let s = &mut stores;
        splitsign::lifecycle::rotate_now(&mut *s.keys, &s.shares, &cfg, t, t + 3600, false, 0)
            .unwrap();
        splitsign::lifecycle::reconcile_stores(&stores, t).unwrap();
    }
    drop(stores);
    std::env::set_current_dir(cwd).unwrap();
}

fn start(dir: tempfile::TempDir) -> Served {
    Served::start(BIN, dir, LIMITS)
}

/// `op` at 16×32 on daemons on `a` and `b`, alternating for the rounds;
/// the medians.
fn side_by_side(
    a: tempfile::TempDir,
    b: tempfile::TempDir,
    verify: bool,
    z: &Sizes,
) -> (f64, f64, tempfile::TempDir, tempfile::TempDir) {
    let mut dirs = [Some(a), Some(b)];
    let mut rates: [Vec<f64>; 2] = Default::default();
    for round in 0..z.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let d = start(dirs[i].take().unwrap());
            let line = if verify {
                verify_line(d.sock())
            } else {
                sign_line()
            };
            rates[i].push(line_load(d.sock(), &line, 16, 32, z.secs).rate);
            dirs[i] = Some(d.stop());
        }
    }
    let [a, b] = dirs;
    (
        median(rates[0].clone()),
        median(rates[1].clone()),
        a.unwrap(),
        b.unwrap(),
    )
}

/// Pipeline `n` revokes of new token ids on one connection (a writer
/// thread, the replies read here); revokes a second.
fn pipelined_revokes(sock: &Path, n: usize) -> f64 {
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let exp = now() + 3600;
    let lines: Vec<u8> = (0..n)
        .flat_map(|i| {
            format!(
                "{{\"id\":{i},\"op\":\"revoke\",\"jti\":\"{}\",\"exp\":{exp}}}\n",
                random_jti()
            )
            .into_bytes()
        })
        .collect();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&lines).unwrap());
    let mut r = BufReader::new(s);
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        let got = r.read_line(&mut line).unwrap();
        assert!(
            got > 0,
            "the daemon closed the session after {i} of {n} revokes"
        );
        assert!(
            line.starts_with(&format!("{{\"id\":{i},\"ok\":true")),
            "{line}"
        );
    }
    writer.join().unwrap();
    n as f64 / t0.elapsed().as_secs_f64()
}

fn db_bytes(dir: &Path) -> u64 {
    ["var/splitsign.db", "var/splitsign.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Sign `n` tokens pipelined on one connection.
fn sign_many(sock: &Path, n: usize) {
    let s = UnixStream::connect(sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let batch = sign_line().repeat(1000);
        for _ in 0..n / 1000 {
            w.write_all(&batch).unwrap();
        }
    });
    let mut r = BufReader::new(s);
    let mut line = String::new();
    for _ in 0..(n / 1000) * 1000 {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"ok\":true"), "{line}");
    }
    writer.join().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--load SOCKET SECONDS`: only sign at 16x32 against a daemon started
    // elsewhere (for a profiler attached to it).
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let sock = Path::new(&args[i + 1]);
        let secs: f64 = args[i + 2].parse().unwrap();
        println!(
            "{:.0} signs/s",
            line_load(sock, &sign_line(), 16, 32, secs).rate
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let z = if quick {
        Sizes {
            audit: 200_000,
            jti: 100_000,
            sub: 1_000,
            keys: 50,
            revokes: 2_000,
            existing: [0, 1_000, 10_000],
            tokens: 10_000,
            secs: 0.3,
            rounds: 2,
        }
    } else {
        Sizes {
            audit: 10_000_000,
            jti: 1_000_000,
            sub: 10_000,
            keys: 200,
            revokes: 20_000,
            existing: [0, 10_000, 100_000],
            tokens: 100_000,
            secs: 1.5,
            rounds: 4,
        }
    };
    println!(
        "splitsign at scale ({} run; ratios within this run)\n",
        if quick { "quick smoke" } else { "full" }
    );
    println!("{:<58} {:>12} {:>12} {:>8}", "", "fresh", "grown", "ratio");

    // Sign with a long audit log.
    let t = Instant::now();
    let long_log = deployment();
    load_audit(long_log.path(), z.audit);
    eprintln!("built {} audit records in {:.1?}", z.audit, t.elapsed());
    let (fresh, grown, _, long_log) = side_by_side(deployment(), long_log, false, &z);
    println!(
        "{:<58} {fresh:>12.0} {grown:>12.0} {:>8.3}",
        format!("sign 16x32 ops/s, audit log 0 vs {} records", z.audit),
        grown / fresh
    );

    // audit --verify over it.
    let t0 = Instant::now();
    splitsign(long_log.path(), "audit --verify");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{:<58} {:>12} {:>12.0} {:>8}",
        format!("audit --verify over {} records: records/s", z.audit),
        "",
        z.audit as f64 / secs,
        ""
    );
    drop(long_log);

    // Verify with many revocations.
    let t = Instant::now();
    let revoked = deployment();
    load_revocations(revoked.path(), z.jti, z.sub);
    eprintln!(
        "built {} + {} revocations in {:.1?}",
        z.jti,
        z.sub,
        t.elapsed()
    );
    let (fresh, grown, _, _) = side_by_side(deployment(), revoked, true, &z);
    println!(
        "{:<58} {fresh:>12.0} {grown:>12.0} {:>8.3}",
        format!(
            "verify 16x32 ops/s, revocations 0 vs {} jti + {} sub",
            z.jti, z.sub
        ),
        grown / fresh
    );

    // Verify with many published keys.
    let two = deployment();
    make_keys(two.path(), 2);
    let many = deployment();
    let t = Instant::now();
    make_keys(many.path(), z.keys);
    eprintln!("made {} keys in {:.1?}", z.keys, t.elapsed());
    let (fresh, grown, _, many) = side_by_side(two, many, true, &z);
    println!(
        "{:<58} {fresh:>12.0} {grown:>12.0} {:>8.3}",
        format!("verify 16x32 ops/s, 2 vs {} published keys", z.keys),
        grown / fresh
    );

    // Ready and RSS with both.
    load_revocations(many.path(), z.jti, z.sub);
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    let mut dir = many;
    for _ in 0..3 {
        let t0 = Instant::now();
        let d = start(dir);
        ready.push(t0.elapsed().as_secs_f64() * 1e3);
        rss.push(rss_kib(d.pid()) as f64 / 1024.0);
        dir = d.stop();
    }
    drop(dir);
    println!(
        "{:<58} {:>12} {:>12.0} {:>8}",
        format!(
            "start to ready, ms ({} revocations, {} keys)",
            z.jti + z.sub,
            z.keys
        ),
        "",
        median(ready),
        ""
    );
    println!(
        "{:<58} {:>12} {:>12.1} {:>8}",
        format!(
            "RSS when ready, MiB ({} revocations, {} keys)",
            z.jti + z.sub,
            z.keys
        ),
        "",
        median(rss),
        ""
    );

    // Pipelined revokes.
    let mut rates = Vec::new();
    for existing in z.existing {
        let dir = deployment();
        load_revocations(dir.path(), existing, 0);
        let d = start(dir);
        rates.push(pipelined_revokes(d.sock(), z.revokes));
        d.stop();
    }
    for (i, existing) in z.existing.iter().enumerate() {
        println!(
            "{:<58} {:>12.0} {:>12.0} {:>8.3}",
            format!(
                "pipelined revokes/s ({} in a row), {existing} existing",
                z.revokes
            ),
            rates[0],
            rates[i],
            rates[i] / rates[0]
        );
    }

    // Database bytes per issued token.
    let d = start(deployment());
    let dir = d.stop();
    let before = db_bytes(dir.path());
    let d = start(dir);
    sign_many(d.sock(), z.tokens);
    let dir = d.stop();
    let grew = db_bytes(dir.path()) - before;
    println!(
        "{:<58} {:>12} {:>12.0} {:>8}",
        format!("database bytes per issued token ({} tokens)", z.tokens),
        "",
        grew as f64 / z.tokens as f64,
        ""
    );
    let _ = Duration::ZERO;
}
