//! splitsign throughput, side by side in one run:
//!
//! - the in-process limit (token building and verification, no socket) on one
//!   thread and on all cores;
//! - the daemon over its socket (sign and verify; 1, 4, 16, 64 connections,
//!   each sequential and with 32 requests in flight), p50/p99 latency;
//! - OpenSSH ssh-agent signing with an Ed25519 key over its socket, speaking
//!   the agent protocol (the closest peer);
//! - a bare Unix-socket JSON-lines echo (the transport floor);
//! - fairness: p99 against p50 at 16 and 64 connections x 32 in flight,
//!   and a polite client's verify beside 15 pipelining connections;
//! - the daemon's memory, its start-to-ready time with 10 live keys, and the
//!   audit log's cost;
//! - the two algorithms side by side, EdDSA (Ed25519) and ES256 (P-256):
//!   in process (sign and verify, 1 thread and all cores) and over the
//!   socket (a daemon whose config says `alg = "ES256"`: sign and verify at
//!   16 connections x 32 in flight, the daemon's CPU time per operation),
//!   with ES256's socket sign against its in-process sign on all cores
//!   (target >= 0.6, printed PASS or FAIL; a measurement, not a test).
//!   `--rounds N` rounds, the two alternating, medians (default 3, 1 with
//!   `--quick`). The sections above it are EdDSA's.
//!
//! `cargo bench --bench throughput` (add `-- --quick` for a short smoke run).
//!
//! `cargo bench --bench throughput -- --algs [--rounds N] [--quick]` prints
//! only the algorithms side by side (default 5 rounds).
//!
//! `cargo bench --bench throughput -- --versus PATH [--rounds N]` instead
//! compares this build's daemon with another `splitsign` binary (an older
//! release, say; EdDSA keys, which every version has) side by side: sign and verify at 16 connections × 32 in
//! flight and the p50 of sequential signs on one connection, the two
//! daemons alternating, N rounds (default 6), and prints the medians and
//! their ratio. `--config TEXT` adds settings to both daemons' config (for
//! example `--config 'audit = false'`; only settings both versions know).
//!
//! `cargo bench --bench throughput -- --fair [PATH] [--rounds N]` prints
//! only the fairness rows, of this build and, given, of another binary.
//!
//! `cargo bench --bench throughput -- --postgres [--rounds N]` compares the
//! SQLite store with the PostgreSQL store (a private server started for the
//! run, as in the tests; needs the `postgresql` package) the same way, then
//! measures how fast a revocation and a new key propagate from one node to
//! another (p50/p99/max).
//!
//! `cargo bench --bench throughput -- --load SOCKET SECS` only signs at 16
//! connections × 32 in flight against a daemon started by hand, for a
//! profiler attached to it (`perf record -p PID`).
//!
//! The client threads and the daemon share this machine: compare ratios
//! within one run; the client's CPU share is printed.

use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use splitsign::config::{AlgLabel, Config};
use splitsign::keys::jws::{self as token, TokenRules};
use splitsign::keys::keyring::{KeySet, Published, Signer};
use splitsign::keys::locked::LockedKey;
use splitsign::keys::{KeyInfo, Origin};

use splitsign_testkit::daemon::Served;
use splitsign_testkit::load::{
    Load, collect, cores, line_load, median, percentile, polite_load, sign_line, verify_line,
};
use splitsign_testkit::pg::PgServer;
use splitsign_testkit::procfs::{cpu_of, cpu_self, rss_kib};
use splitsign_testkit::wire::Conn;

const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

const CONNS: [usize; 4] = [1, 4, 16, 64];
const DEPTHS: [usize; 2] = [1, 32];

struct Opts {
    secs: f64,
}

// ---------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------

/// Tokens per second signed (or verified) in process by `threads` threads
/// for `secs`, with a key of the type `alg` labels (set as the config's
/// `alg`, as the daemon reads it).
fn in_process(alg: AlgLabel, threads: usize, secs: f64, verify: bool) -> f64 {
    in_process_cpu(alg, threads, secs, verify).0
}

/// [`in_process`], and the CPU time (µs) this process spent per token
/// while the threads ran: the work per token, which other load on the
/// machine disturbs much less than the rate.
fn in_process_cpu(alg: AlgLabel, threads: usize, secs: f64, verify: bool) -> (f64, f64) {
    let cfg = Config::from_toml(&alg_config(alg)).unwrap();
    assert_eq!(cfg.tokens.alg, alg, "the config's alg");
    let policy = Arc::new(TokenRules::new(&cfg.tokens));
    let key = splitsign::keys::SecretKey::from_secret(cfg.tokens.alg.key_type(), &[3u8; 32])
        .expect("a valid secret");
    let pk = key.public_key();
    let row = KeyInfo {
        kid: splitsign::keys::share_format::thumbprint(&pk),
        public_key: pk,
        origin: Origin::Generated,
        created_at: 0,
        activate_at: 0,
        deactivate_at: i64::MAX / 4,
        retire_at: i64::MAX / 2,
        share_generation: 1,
        pending_generation: None,
        verified: true,
        alg: cfg.tokens.alg,
    };
    let signer = Arc::new(Signer::new(&row, LockedKey::new(key).0, i64::MIN));
    let set = Arc::new(KeySet::new(
        vec![Arc::clone(&signer)],
        vec![Published {
            row,
            key: pk.verifier().expect("a valid key"),
            node: None,
        }],
    ));
    let now = splitsign::clock::wall_now();
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(r#"{"sub":"bench","aud":"api"}"#).unwrap();
    let sample = token::sign(&signer, &policy, &claims, None, now, None)
        .unwrap()
        .token;
    // What is measured is the algorithm named: the token says so.
    assert_eq!(header_alg(&sample), alg.as_str(), "in-process token");
    let cpu0 = cpu_self();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (signer, set, policy, claims, sample) = (
                Arc::clone(&signer),
                Arc::clone(&set),
                Arc::clone(&policy),
                claims.clone(),
                sample.clone(),
            );
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    for _ in 0..64 {
                        if verify {
                            token::verify(&set, &policy, &sample, None, now, now).unwrap();
                        } else {
                            token::sign(&signer, &policy, &claims, None, now, None).unwrap();
                        }
                    }
                    n += 64;
                }
                (n, start.elapsed().as_secs_f64())
            })
        })
        .collect();
    let (mut rate, mut ops) = (0.0, 0);
    for h in handles {
        let (n, t) = h.join().unwrap();
        rate += n as f64 / t;
        ops += n;
    }
    (rate, (cpu_self() - cpu0) * 1e6 / ops.max(1) as f64)
}

// ---------------------------------------------------------------------------
// Line-protocol load (daemon and echo floor)
// ---------------------------------------------------------------------------

/// A JSON-lines echo server: reads a line, answers a fixed small line.
fn echo_server(path: &Path) {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = Vec::new();
                let mut out = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    out.extend_from_slice(b"{\"ok\":true,\"pong\":true}\n");
                    if r.buffer().is_empty() {
                        if w.write_all(&out).is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// This build's daemon on a new temp dir; `audit`: "full", "normal"
/// (audit_sync) or "off".
fn start(audit: &str) -> Served {
    start_in(tempfile::tempdir().unwrap(), audit)
}

/// This build's daemon on `dir`, with the `audit` setting of [`start`].
fn start_in(dir: tempfile::TempDir, audit: &str) -> Served {
    let audit_cfg = match audit {
        "off" => "audit = false".to_owned(),
        sync => format!("audit_sync = \"{sync}\""),
    };
    Served::start(
        BIN,
        dir,
        &format!("{audit_cfg}\nmax_connections = 8192\nmax_connections_per_peer = 8192\n"),
    )
}

// ---------------------------------------------------------------------------
// ssh-agent
// ---------------------------------------------------------------------------

struct Agent {
    child: Child,
    sock: PathBuf,
    blob: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn agent() -> Option<Agent> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let sock = dir.path().join("agent.sock");
    let child = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    if !added {
        return None;
    }
    let pubtext = std::fs::read_to_string(key.with_extension("pub")).ok()?;
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(pubtext.split_whitespace().nth(1)?)
        .ok()?;
    Some(Agent {
        child,
        sock,
        blob,
        _dir: dir,
    })
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// SSH2_AGENTC_SIGN_REQUEST (13): string key blob, string data, uint32 flags.
fn agent_request(blob: &[u8]) -> Vec<u8> {
    let mut body = vec![13u8];
    put_string(&mut body, blob);
    put_string(
        &mut body,
        b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJiZW5jaCIsImF1ZCI6ImFwaSJ9",
    );
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

fn agent_load(a: &Agent, conns: usize, depth: usize, secs: f64) -> Load {
    let cpu0 = cpu_self();
    let req = agent_request(&a.blob);
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let sock = a.sock.clone();
            let batch = req.repeat(depth);
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&sock).unwrap();
                let mut lat = Vec::new();
                let start = Instant::now();
                let mut n = 0u64;
                let mut len = [0u8; 4];
                let mut body = vec![0u8; 1024];
                while start.elapsed().as_secs_f64() < secs {
                    let t = Instant::now();
                    s.write_all(&batch).unwrap();
                    for _ in 0..depth {
                        s.read_exact(&mut len).unwrap();
                        let l = u32::from_be_bytes(len) as usize;
                        body.resize(l, 0);
                        s.read_exact(&mut body).unwrap();
                        assert_eq!(body[0], 14, "SSH2_AGENT_SIGN_RESPONSE");
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    n += depth as u64;
                }
                (n as f64 / start.elapsed().as_secs_f64(), lat)
            })
        })
        .collect();
    collect(handles, cpu0)
}

// ---------------------------------------------------------------------------

fn row(label: &str, l: &Load, extra: &str) {
    println!(
        "{label:<44} {:>10.0} {:>10.1} {:>10.1} {extra}",
        l.rate, l.p50_us, l.p99_us
    );
}

/// The fairness rows: sign and verify at 16 and 64 connections x 32 in
/// flight (p99 against p50 per batch), and a polite client's verify, one at
/// a time, beside 15 connections pipelining verifies.
fn fairness(d: &Served, secs: f64) -> Vec<(String, Load)> {
    let (sign, verify) = (sign_line(), verify_line(d.sock()));
    let mut rows = Vec::new();
    for (op, line) in [("sign", &sign), ("verify", &verify)] {
        for conns in [16, 64] {
            let l = line_load(d.sock(), line, conns, 32, secs);
            rows.push((format!("{op}, {conns} conn x 32"), l));
        }
    }
    let l = polite_load(d.sock(), &verify, &verify, 15, 32, secs);
    rows.push(("polite verify beside 15 x 32 verify".to_owned(), l));
    rows
}

fn print_fairness(title: &str, rows: &[(String, Load)]) {
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>9}",
        title, "ops/s", "p50 us", "p99 us", "p99/p50"
    );
    for (label, l) in rows {
        println!(
            "  {label:<42} {:>10.0} {:>10.1} {:>10.1} {:>9.1}",
            l.rate,
            l.p50_us,
            l.p99_us,
            l.p99_us / l.p50_us.max(1e-9)
        );
    }
}

/// `--fair [PATH]`: only the fairness rows, of this build and, given, of
/// another binary, each `rounds` times.
fn fair_only(other: Option<&str>, rounds: usize, secs: f64) {
    for round in 0..rounds {
        for bin in std::iter::once(BIN).chain(other) {
            let d = Served::start(
                bin,
                tempfile::tempdir().unwrap(),
                "max_connections = 8192\nmax_connections_per_peer = 8192\n",
            );
            let rows = fairness(&d, secs);
            d.stop();
            let who = if bin == BIN { "this build" } else { bin };
            print_fairness(&format!("fairness, {who}, round {}", round + 1), &rows);
        }
    }
}

// ---------------------------------------------------------------------------
// Algorithms side by side
// ---------------------------------------------------------------------------

/// The algorithms measured side by side: the default (Ed25519) and ES256.
const ALGS: [AlgLabel; 2] = [AlgLabel::EdDSA, AlgLabel::ES256];

/// The config line that makes new keys of `alg`.
fn alg_config(alg: AlgLabel) -> String {
    format!("alg = \"{}\"\n", alg.as_str())
}

/// The `alg` of a compact JWS's protected header.
fn header_alg(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().expect("a JWS");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("a base64url header");
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON header");
    v["alg"].as_str().expect("an alg").to_owned()
}

/// One round's numbers of one algorithm.
#[derive(Default, Clone)]
struct AlgRound {
    sign1: f64,
    signn: f64,
    ver1: f64,
    vern: f64,
    sock_sign: f64,
    sock_verify: f64,
    /// In process, all cores: CPU µs per token.
    signn_cpu_us: f64,
    vern_cpu_us: f64,
    /// Over the socket, 16 x 32: the daemon's and the client's CPU µs per
    /// request.
    sign_cpu_us: f64,
    verify_cpu_us: f64,
    sign_client_us: f64,
    verify_client_us: f64,
    seq_p50: f64,
}

/// One algorithm, one round: in process (1 thread and all cores), then a
/// daemon of this build whose config's `alg` is `alg` (audit on, the
/// default), sign and verify at 16 connections x 32 in flight (with the
/// daemon's CPU time per operation) and sequential signs on one connection.
fn alg_round(alg: AlgLabel, secs: f64) -> AlgRound {
    let n = cores();
    let (signn, signn_cpu_us) = in_process_cpu(alg, n, secs, false);
    let (vern, vern_cpu_us) = in_process_cpu(alg, n, secs, true);
    let mut r = AlgRound {
        sign1: in_process(alg, 1, secs, false),
        signn,
        ver1: in_process(alg, 1, secs, true),
        vern,
        signn_cpu_us,
        vern_cpu_us,
        ..AlgRound::default()
    };
    let d = Served::start(
        BIN,
        tempfile::tempdir().unwrap(),
        &format!(
            "{}max_connections = 8192\nmax_connections_per_peer = 8192\n",
            alg_config(alg)
        ),
    );
    // The daemon signs with the algorithm named, else this measures the
    // other one: its tokens say which.
    let t = Conn::open(d.sock())
        .unwrap()
        .request(json!({"op":"sign","claims":{"sub":"bench"}}));
    let token = t["token"].as_str().unwrap_or_else(|| panic!("sign: {t}"));
    assert_eq!(header_alg(token), alg.as_str(), "the daemon's token");
    let verify = verify_line(d.sock());
    for (k, line) in [sign_line(), verify].iter().enumerate() {
        let cpu0 = cpu_of(d.pid());
        let l = line_load(d.sock(), line, 16, 32, secs);
        let ops = (l.rate * secs).max(1.0);
        let cpu_us = (cpu_of(d.pid()) - cpu0) * 1e6 / ops;
        let client_us = l.client_cpu * 1e6 / ops;
        if k == 0 {
            (r.sock_sign, r.sign_cpu_us, r.sign_client_us) = (l.rate, cpu_us, client_us);
        } else {
            (r.sock_verify, r.verify_cpu_us, r.verify_client_us) = (l.rate, cpu_us, client_us);
        }
    }
    r.seq_p50 = line_load(d.sock(), &sign_line(), 1, 1, secs).p50_us;
    d.stop();
    r
}

/// EdDSA and ES256 side by side, `rounds` rounds (the two alternating),
/// medians; and the ratio issue 23 names: ES256 over the socket (sign, 16
/// conn x 32) against ES256 in process (sign, all cores), target >= 0.6.
/// A measurement: it prints PASS or FAIL, never panics on it.
fn algorithms(rounds: usize, secs: f64) {
    let n = cores();
    let mut runs: [Vec<AlgRound>; 2] = Default::default();
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            runs[i].push(alg_round(ALGS[i], secs));
        }
    }
    let med = |i: usize, f: &dyn Fn(&AlgRound) -> f64| median(runs[i].iter().map(f).collect());
    println!(
        "{:<46} {:>10} {:>10} {:>12}",
        format!("algorithms side by side (medians of {})", runs[0].len()),
        "EdDSA",
        "ES256",
        "ES256/EdDSA"
    );
    // (label, the number of a round, decimals); no number: a heading.
    type Get = fn(&AlgRound) -> f64;
    let h = |label: &str| (label.to_owned(), None, 0);
    let r = |label: &str, get: Get, prec: usize| (format!("  {label}"), Some(get), prec);
    let rows: Vec<(String, Option<Get>, usize)> = vec![
        h("in process (no socket), ops/s"),
        r("sign, 1 thread", |r| r.sign1, 0),
        r(&format!("sign, {n} threads"), |r| r.signn, 0),
        r("verify, 1 thread", |r| r.ver1, 0),
        r(&format!("verify, {n} threads"), |r| r.vern, 0),
        r(
            &format!("sign, CPU us per op ({n} threads)"),
            |r| r.signn_cpu_us,
            1,
        ),
        r(
            &format!("verify, CPU us per op ({n} threads)"),
            |r| r.vern_cpu_us,
            1,
        ),
        h("the daemon over its socket (audit on)"),
        r("sign, 16 conn x 32 in flight, ops/s", |r| r.sock_sign, 0),
        r(
            "verify, 16 conn x 32 in flight, ops/s",
            |r| r.sock_verify,
            0,
        ),
        r("sign, daemon CPU us per op (16 x 32)", |r| r.sign_cpu_us, 1),
        r(
            "verify, daemon CPU us per op (16 x 32)",
            |r| r.verify_cpu_us,
            1,
        ),
        r(
            "sign, client CPU us per op (16 x 32)",
            |r| r.sign_client_us,
            1,
        ),
        r(
            "verify, client CPU us per op (16 x 32)",
            |r| r.verify_client_us,
            1,
        ),
        r("sign p50 us, 1 conn sequential", |r| r.seq_p50, 1),
        h(&format!("socket (16 x 32) / in process ({n} threads)")),
        r("sign", |r| r.sock_sign / r.signn, 3),
        r("verify", |r| r.sock_verify / r.vern, 3),
        // The same from CPU time per operation, in process against the
        // daemon's plus the client's (which share the cores): what the
        // rates' ratio would be with nothing else running. Other load on
        // the machine favours the side with more threads (the daemon),
        // which the rates' ratio cannot tell apart.
        h("the same from CPU per op: in process / (daemon + client)"),
        r(
            "sign",
            |r| r.signn_cpu_us / (r.sign_cpu_us + r.sign_client_us),
            3,
        ),
        r(
            "verify",
            |r| r.vern_cpu_us / (r.verify_cpu_us + r.verify_client_us),
            3,
        ),
    ];
    for (label, get, prec) in rows {
        match get {
            None => println!("{label}"),
            Some(f) => {
                let (e, p) = (med(0, &f), med(1, &f));
                // A CPU time below the clock's tick reads 0: no ratio.
                let ratio = if e > 1e-6 {
                    format!("{:.3}", p / e)
                } else {
                    "-".to_owned()
                };
                println!("{label:<46} {e:>10.prec$} {p:>10.prec$} {ratio:>12}");
            }
        }
    }
    // The issue's ratio: per round (the two halves measured together),
    // then their median.
    let ratios: Vec<f64> = runs[1].iter().map(|r| r.sock_sign / r.signn).collect();
    let ratio = median(ratios.clone());
    println!(
        "ES256 socket sign (16 conn x 32) / ES256 in-process sign, {n} threads: {ratio:.3} \
         (target >= 0.6) {}",
        if ratio >= 0.6 { "PASS" } else { "FAIL" }
    );
    println!(
        "  per round: {:?}",
        ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>()
    );
}

/// `--versus PATH`: this build against another binary, alternating. Both
/// the rate and the daemon's CPU time per operation (the work it does,
/// which a shared machine's scheduling disturbs much less than the rate).
fn versus(other: &str, rounds: usize, secs: f64, config: &str) {
    println!("splitsign throughput: this build vs {other} ({rounds} rounds, alternating)");
    println!("config added to both: {config:?}\n");
    let mut rates: [[Vec<f64>; 2]; 2] = Default::default();
    let mut cpu_us: [[Vec<f64>; 2]; 2] = Default::default();
    let mut seq_p50: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let bin = if i == 0 { BIN } else { other };
            // Only settings every version knows; 16 connections fit every
            // version's default limits.
            let d = Served::start(bin, tempfile::tempdir().unwrap(), config);
            let verify = verify_line(d.sock());
            for (k, line) in [sign_line(), verify].iter().enumerate() {
                let cpu0 = cpu_of(d.pid());
                let l = line_load(d.sock(), line, 16, 32, secs);
                let cpu = cpu_of(d.pid()) - cpu0;
                rates[i][k].push(l.rate);
                cpu_us[i][k].push(cpu * 1e6 / (l.rate * secs));
            }
            seq_p50[i].push(line_load(d.sock(), &sign_line(), 1, 1, secs).p50_us);
            d.stop();
        }
    }
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "16 conn x 32 in flight (medians)", "this build", "other", "ratio"
    );
    for (k, op) in ["sign", "verify"].iter().enumerate() {
        let this = median(rates[0][k].clone());
        let that = median(rates[1][k].clone());
        println!(
            "{:<40} {this:>12.0} {that:>12.0} {:>8.3}",
            format!("  {op}, ops/s"),
            this / that
        );
        let this = median(cpu_us[0][k].clone());
        let that = median(cpu_us[1][k].clone());
        println!(
            "{:<40} {this:>12.1} {that:>12.1} {:>8.3}",
            format!("  {op}, daemon CPU us per op"),
            this / that
        );
    }
    let this = median(seq_p50[0].clone());
    let that = median(seq_p50[1].clone());
    println!(
        "{:<40} {this:>12.1} {that:>12.1} {:>8.3}",
        "  sign p50 us, 1 conn sequential",
        this / that
    );
    for (k, label) in ["sign", "verify"].iter().enumerate() {
        println!(
            "  {label} rounds: this {:?}, other {:?}",
            rates[0][k].iter().map(|r| *r as u64).collect::<Vec<_>>(),
            rates[1][k].iter().map(|r| *r as u64).collect::<Vec<_>>()
        );
    }
}

/// `--postgres`: the same daemon with the SQLite store and with the
/// PostgreSQL store (a private server, as in the tests), alternating:
/// sign and verify at 16 connections x 32 in flight. Then the propagation
/// latency between two nodes: from a `revoke` answered on node A to node B
/// answering `revoked`, and from a `rotate` answered on A to the new key in
/// B's JWKS.
fn versus_postgres(rounds: usize, secs: f64, samples: usize) {
    let server = PgServer::start(BIN);
    let limits = "max_connections = 8192\nmax_connections_per_peer = 8192\n";
    let node_dirs: Vec<(String, tempfile::TempDir)> = (0..rounds + 2)
        .map(|i| {
            let name = format!("bench_{i}");
            let dir = tempfile::tempdir().unwrap();
            let pw = server.add_node_role(&name, dir.path());
            assert!(pw.exists());
            (name, dir)
        })
        .collect();
    let names: Vec<&str> = node_dirs.iter().map(|(n, _)| n.as_str()).collect();
    server.apply_schema(&names);
    let pg_extra = |name: &str, dir: &Path| {
        format!(
            "{limits}postgres = \"{}\"\npostgres_password_file = \"{}\"\nnode = \"{name}\"\n",
            server.conninfo(name),
            dir.join("pg-password").display()
        )
    };
    println!(
        "splitsign throughput: SQLite store vs PostgreSQL store ({rounds} rounds, alternating)\n"
    );
    let mut rates: [[Vec<f64>; 2]; 2] = Default::default();
    let mut node_dirs = node_dirs.into_iter();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let (name, pg_dir) = node_dirs.next().unwrap();
        let mut pg_dir = Some(pg_dir);
        for i in order {
            let d = if i == 0 {
                Served::start(BIN, tempfile::tempdir().unwrap(), limits)
            } else {
                let dir = pg_dir.take().unwrap();
                let extra = pg_extra(&name, dir.path());
                Served::start(BIN, dir, &extra)
            };
            let verify = verify_line(d.sock());
            for (k, line) in [sign_line(), verify].iter().enumerate() {
                rates[i][k].push(line_load(d.sock(), line, 16, 32, secs).rate);
            }
            d.stop();
        }
    }
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "16 conn x 32 in flight (medians)", "SQLite", "PostgreSQL", "ratio"
    );
    for (k, op) in ["sign", "verify"].iter().enumerate() {
        let sqlite = median(rates[0][k].clone());
        let postgres = median(rates[1][k].clone());
        println!(
            "{:<40} {sqlite:>12.0} {postgres:>12.0} {:>8.3}",
            format!("  {op}, ops/s"),
            postgres / sqlite
        );
        println!(
            "  {op} rounds: SQLite {:?}, PostgreSQL {:?}",
            rates[0][k].iter().map(|r| *r as u64).collect::<Vec<_>>(),
            rates[1][k].iter().map(|r| *r as u64).collect::<Vec<_>>()
        );
    }

    // Propagation between two nodes.
    let (na, da) = node_dirs.next().unwrap();
    let (nb, db) = node_dirs.next().unwrap();
    let (ea, eb) = (pg_extra(&na, da.path()), pg_extra(&nb, db.path()));
    let a = Served::start(BIN, da, &ea);
    let b = Served::start(BIN, db, &eb);
    let connect = |d: &Served| Conn::open(d.sock()).unwrap();
    let (mut ca, mut cb) = (connect(&a), connect(&b));
    let (mut revoke_ms, mut revoke_sent_ms) = (Vec::new(), Vec::new());
    for i in 0..samples {
        let sub = format!("user-{i}");
        let t = ca.request(json!({"op":"sign","claims":{"sub":sub}}));
        let token = t["token"].as_str().unwrap().to_owned();
        let sent = Instant::now();
        let r = ca.request(json!({"op":"revoke","sub":sub}));
        assert_eq!(r["ok"], true, "{r}");
        let t0 = Instant::now();
        loop {
            let v = cb.request(json!({"op":"verify","token":token}));
            if v["error"]["code"] == "revoked" {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "never revoked: {v}");
        }
        revoke_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        revoke_sent_ms.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    let (mut key_ms, mut key_sent_ms) = (Vec::new(), Vec::new());
    for _ in 0..samples.min(30) {
        let sent = Instant::now();
        let r = ca.request(json!({"op":"rotate"}));
        assert_eq!(r["ok"], true, "{r}");
        let kid = r["kid"].as_str().unwrap().to_owned();
        let t0 = Instant::now();
        loop {
            let j = cb.request(json!({"op":"jwks"}));
            if j["jwks"]["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str())
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "never published");
        }
        key_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        key_sent_ms.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    a.stop();
    b.stop();
    println!(
        "\n{:<40} {:>8} {:>8} {:>8} {:>8}",
        "propagation, node A -> node B", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for (label, v) in [
        ("  revoke sent to A -> B says revoked", &mut revoke_sent_ms),
        ("  revoke answered -> B says revoked", &mut revoke_ms),
        ("  rotate sent to A -> key in B's JWKS", &mut key_sent_ms),
        ("  rotate answered -> key in B's JWKS", &mut key_ms),
    ] {
        let n = v.len();
        let (p50, p99, max) = (percentile(v, 0.5), percentile(v, 0.99), percentile(v, 1.0));
        println!("{label:<40} {n:>8} {p50:>8.2} {p99:>8.2} {max:>8.2}");
    }
}

/// p50 in µs of appending 100 bytes to a file in `dir` and fdatasync'ing
/// it (`n` times).
fn fsync_floor(dir: &Path, n: usize) -> f64 {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("fsync-floor");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    let line = [b'x'; 100];
    let mut lat: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&line).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat[lat.len() / 2]
}

/// `--rounds N`, or `default`.
fn rounds(args: &[String], default: usize) -> usize {
    args.iter()
        .position(|a| a == "--rounds")
        .and_then(|j| args.get(j + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `--profile-sign N [--alg ES256]`: only N in-process signs, for a
    // profiler.
    let args: Vec<String> = std::env::args().collect();
    // `--load SOCKET SECS`: only sign at 16 connections x 32 in flight
    // against a daemon started by hand, for a profiler attached to it.
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let sock = PathBuf::from(args.get(i + 1).expect("--load SOCKET SECS"));
        let secs: f64 = args
            .get(i + 2)
            .and_then(|s| s.parse().ok())
            .expect("--load SOCKET SECS");
        let l = line_load(&sock, &sign_line(), 16, 32, secs);
        println!("sign 16 conn x 32 in flight: {:.0} ops/s", l.rate);
        return;
    }
    if args.iter().any(|a| a == "--postgres") {
        let quick = args.iter().any(|a| a == "--quick");
        let rounds = rounds(&args, if quick { 2 } else { 6 });
        let (secs, samples) = if quick { (0.2, 20) } else { (1.5, 500) };
        versus_postgres(rounds, secs, samples);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--fair") {
        let other = args.get(i + 1).filter(|a| !a.starts_with("--"));
        let rounds = rounds(&args, 1);
        let secs = if args.iter().any(|a| a == "--quick") {
            0.3
        } else {
            2.0
        };
        fair_only(other.map(|s| s.as_str()), rounds, secs);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--versus") {
        let other = args.get(i + 1).expect("--versus PATH");
        let rounds = rounds(&args, 6);
        let secs = if args.iter().any(|a| a == "--quick") {
            0.2
        } else {
            1.5
        };
        let config = args
            .iter()
            .position(|a| a == "--config")
            .map(|j| args.get(j + 1).expect("--config TEXT").replace("\\n", "\n"))
            .unwrap_or_default();
        versus(other, rounds, secs, &config);
        return;
    }
    if args.iter().any(|a| a == "--algs") {
        let quick = args.iter().any(|a| a == "--quick");
        let rounds = rounds(&args, if quick { 1 } else { 5 });
        algorithms(rounds, if quick { 0.2 } else { 1.5 });
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--profile-sign") {
        let n: u64 = args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000);
        let secs = n as f64 / 40_000.0;
        let alg = args
            .iter()
            .position(|a| a == "--alg")
            .and_then(|j| args.get(j + 1))
            .map(|a| AlgLabel::parse(a).expect("--alg EdDSA|Ed25519|ES256"))
            .unwrap_or(AlgLabel::EdDSA);
        println!("{:.0} signs/s", in_process(alg, 1, secs, false));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let o = Opts {
        secs: if quick { 0.2 } else { 1.5 },
    };
    let n = cores();
    println!(
        "splitsign throughput benchmark ({} run)",
        if quick { "quick smoke" } else { "full" }
    );
    println!(
        "machine: {n} cores, shared by the benchmark's client threads and the daemon (release build)\n"
    );

    // In process.
    let eddsa = AlgLabel::EdDSA;
    let sign1 = in_process(eddsa, 1, o.secs, false);
    let signn = in_process(eddsa, n, o.secs, false);
    let ver1 = in_process(eddsa, 1, o.secs, true);
    let vern = in_process(eddsa, n, o.secs, true);
    println!("{:<44} {:>10}", "in process (no socket), EdDSA", "ops/s");
    println!("{:<44} {:>10.0}", "  sign, 1 thread", sign1);
    println!("{:<44} {:>10.0}", format!("  sign, {n} threads"), signn);
    println!("{:<44} {:>10.0}", "  verify, 1 thread", ver1);
    println!("{:<44} {:>10.0}\n", format!("  verify, {n} threads"), vern);

    // Transport floor.
    let tmp = tempfile::tempdir().unwrap();
    let echo = tmp.path().join("echo.sock");
    echo_server(&echo);
    let floor = line_load(&echo, b"{\"op\":\"ping\"}\n", 1, 1, o.secs);
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "over a Unix socket (the daemon: EdDSA)", "ops/s", "p50 us", "p99 us"
    );
    row("  bare JSON-lines echo, 1 conn, sequential", &floor, "");
    // The fsync floor: what one audit commit must wait for, on the
    // filesystem the daemon's database is on (the temp dir).
    let fsync_p50 = fsync_floor(tmp.path(), if quick { 200 } else { 2000 });
    println!(
        "{:<44} {:>10} {:>10.1} {:>10}",
        "  fsync floor: 100 B append + fdatasync", "", fsync_p50, ""
    );

    // The daemon, audit on (the default).
    let d = start("full");
    let pid = d.pid();
    let rss_idle = rss_kib(pid);
    let sign_line = sign_line();
    let verify_line = verify_line(d.sock());
    let mut sign16p = 0.0;
    let mut verify16p = 0.0;
    let mut sign1_seq_p50 = 0.0;
    let mut client_cpu = 0.0;
    let daemon_cpu0 = cpu_of(pid);
    for (op, line) in [("sign", &sign_line), ("verify", &verify_line)] {
        for conns in CONNS {
            for depth in DEPTHS {
                let l = line_load(d.sock(), line, conns, depth, o.secs);
                client_cpu += l.client_cpu;
                let label = format!("  daemon {op}, {conns} conn x {depth} in flight");
                row(
                    &label,
                    &l,
                    if depth > 1 { "(latency per batch)" } else { "" },
                );
                match (op, conns, depth) {
                    ("sign", 16, 32) => sign16p = l.rate,
                    ("verify", 16, 32) => verify16p = l.rate,
                    ("sign", 1, 1) => sign1_seq_p50 = l.p50_us,
                    _ => {}
                }
            }
        }
    }
    let daemon_cpu = cpu_of(pid) - daemon_cpu0;
    println!();
    print_fairness("fairness (latency per batch)", &fairness(&d, o.secs));
    println!();
    let rss_after = rss_kib(pid);
    let idle: Vec<UnixStream> = (0..2000)
        .filter_map(|_| UnixStream::connect(d.sock()).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss_2000 = rss_kib(pid);
    drop(idle);
    d.stop();

    // ssh-agent.
    let mut agent_best = 0.0;
    match agent() {
        Some(mut a) => {
            for conns in CONNS {
                for depth in DEPTHS {
                    let l = agent_load(&a, conns, depth, o.secs);
                    row(
                        &format!("  ssh-agent sign, {conns} conn x {depth} in flight"),
                        &l,
                        if depth > 1 { "(latency per batch)" } else { "" },
                    );
                    if conns == 16 && depth == 32 {
                        agent_best = l.rate;
                    }
                }
            }
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        None => println!("  ssh-agent: not available (apt-get install openssh-client)"),
    }

    // Audit cost: full (default), normal, off.
    let mut audit_rows = Vec::new();
    for mode in ["normal", "off"] {
        let d = start(mode);
        let p = line_load(d.sock(), &sign_line, 16, 32, o.secs);
        let s1 = line_load(d.sock(), &sign_line, 1, 1, o.secs);
        d.stop();
        audit_rows.push((mode, p, s1));
    }
    let off = &audit_rows[1].1;
    println!();
    println!(
        "{:<44} {:>10} {:>16}",
        "audit log, sign", "16x32 ops/s", "1x1 p50 us"
    );
    println!(
        "{:<44} {:>10.0} {:>16.1}",
        "  audit_sync = full (default)", sign16p, sign1_seq_p50
    );
    for (mode, p, s1) in &audit_rows {
        let label = if *mode == "off" {
            "  audit = false".to_owned()
        } else {
            format!("  audit_sync = {mode}")
        };
        println!("{:<44} {:>10.0} {:>16.1}", label, p.rate, s1.p50_us);
    }

    // Start to ready with 10 live keys.
    let dir = tempfile::tempdir().unwrap();
    let d = start_in(dir, "full");
    let dir = d.stop();
    for _ in 0..9 {
        let ok = Command::new(BIN)
            .args(["--config", "config.toml", "rotate"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "offline rotate");
    }
    let t = Instant::now();
    let d = start_in(dir, "full");
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    let live = {
        let mut s = UnixStream::connect(d.sock()).unwrap();
        s.write_all(b"{\"op\":\"jwks\"}\n").unwrap();
        let mut l = String::new();
        BufReader::new(s).read_line(&mut l).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        v["jwks"]["keys"].as_array().map(|k| k.len()).unwrap_or(0)
    };
    d.stop();

    println!();
    println!("memory and start-up");
    println!("  daemon RSS idle                                {rss_idle:>8} KiB");
    println!("  daemon RSS after the run                       {rss_after:>8} KiB");
    println!("  daemon RSS with 2,000 idle connections         {rss_2000:>8} KiB");
    println!(
        "  start to ready with {live} live keys                {ready_ms:>8.1} ms (spawn to ready)"
    );
    println!();
    println!("ratios");
    println!(
        "  daemon sign (16 conn x 32) / in-process sign, all cores  {:>6.2}",
        sign16p / signn
    );
    println!(
        "  daemon verify (16 conn x 32) / in-process verify, all    {:>6.2}",
        verify16p / vern
    );
    if agent_best > 0.0 {
        println!(
            "  daemon sign / ssh-agent sign (16 conn x 32)              {:>6.1}",
            sign16p / agent_best
        );
    }
    println!(
        "  daemon sign p50, 1 conn sequential, minus echo p50       {:>6.1} us",
        sign1_seq_p50 - floor.p50_us
    );
    println!(
        "  ... minus echo p50 and the fsync floor (target <= 30)    {:>6.1} us",
        sign1_seq_p50 - floor.p50_us - fsync_p50
    );
    println!(
        "  audit full / audit off (16 conn x 32)                    {:>6.2}",
        sign16p / off.rate
    );
    println!(
        "  audit normal / audit off (16 conn x 32)                  {:>6.2}",
        audit_rows[0].1.rate / off.rate
    );
    println!(
        "  sign p50 1 conn sequential, audit normal, minus echo     {:>6.1} us",
        audit_rows[0].2.p50_us - floor.p50_us
    );
    println!(
        "  client CPU share during the daemon runs                  {:>6.0} %",
        100.0 * client_cpu / (client_cpu + daemon_cpu).max(1e-9)
    );

    // EdDSA and ES256 side by side.
    println!();
    algorithms(rounds(&args, if quick { 1 } else { 3 }), o.secs);
}
