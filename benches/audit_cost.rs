//! Audit log cost: sign throughput of the real daemon (release build) with
//! the audit log on and off, side by side in one run, over its socket.
//!
//! `cargo bench --bench audit_cost` prints a table. The client threads and
//! the daemon share the machine; numbers are ratios within one run.

use splitsign_testkit::daemon::Served;
use splitsign_testkit::load::{line_load, sign_line};

const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

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
            let d = Served::start(
                BIN,
                tempfile::tempdir().unwrap(),
                &format!("audit = {audit}\n"),
            );
            line_load(d.sock(), &sign_line(), conns, depth, secs / 5.0); // warm up
            rates.push(line_load(d.sock(), &sign_line(), conns, depth, secs).rate);
            d.stop();
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
