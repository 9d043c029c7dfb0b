//! Audit log cost: sign throughput of the real daemon (release build) with
//! the audit log on and off, side by side in one run, over its socket.
//!
//! `cargo bench --bench audit_cost` prints a table. The client threads and
//! the daemon share the machine; numbers are ratios within one run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

fn start(dir: &Path, audit: bool) -> Child {
    std::fs::write(
        dir.join("config.toml"),
        format!("shares_dir = \"keys\"\ndb = \"var/splitsign.db\"\nsocket = \"var/s.sock\"\naudit = {audit}\n"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let child = Command::new(BIN)
        .args(["--config", "config.toml", "serve"])
        .current_dir(dir)
        .env("SPLITSIGN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(dir.join("var/s.sock")).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Signs per second with `conns` connections, `depth` requests in flight each.
fn run(sock: &Path, conns: usize, depth: usize, secs: f64) -> f64 {
    let line = b"{\"op\":\"sign\",\"claims\":{\"sub\":\"bench\",\"aud\":\"api\"}}\n";
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let sock = sock.to_owned();
            std::thread::spawn(move || {
                let s = UnixStream::connect(&sock).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut buf = String::new();
                let start = Instant::now();
                let mut done = 0u64;
                let batch: Vec<u8> = line.repeat(depth);
                while start.elapsed().as_secs_f64() < secs {
                    w.write_all(&batch).unwrap();
                    for _ in 0..depth {
                        buf.clear();
                        r.read_line(&mut buf).unwrap();
                        assert!(buf.starts_with("{\"ok\":true"), "{buf}");
                    }
                    done += depth as u64;
                }
                done as f64 / start.elapsed().as_secs_f64()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).sum()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 0.3 } else { 3.0 };
    println!(
        "splitsign audit cost: sign throughput over the socket (release daemon, {} cores shared by client and daemon)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<24} {:>14} {:>14} {:>8}",
        "load", "audit on /s", "audit off /s", "on/off"
    );
    for (conns, depth) in [(1, 1), (1, 32), (16, 1), (16, 32)] {
        let mut rates = Vec::new();
        for audit in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut d = start(dir.path(), audit);
            let sock = dir.path().join("var/s.sock");
            run(&sock, conns, depth, secs / 5.0); // warm up
            rates.push(run(&sock, conns, depth, secs));
            let _ = d.kill();
            let _ = d.wait();
        }
        println!(
            "{:<24} {:>14.0} {:>14.0} {:>8.2}",
            format!("{conns} conn x {depth} in flight"),
            rates[0],
            rates[1],
            rates[0] / rates[1]
        );
    }
}
