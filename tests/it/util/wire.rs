//! The wire as the tests use it: the testkit's raw connection, what a
//! response says (`ok`, `code`), a client that keeps signing, and the
//! daemon's metrics.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

pub use splitsign_testkit::wire::Conn;

/// The error code of a response (panics on success).
pub fn code(resp: &Value) -> &str {
    assert_eq!(resp["ok"], false, "expected an error, got {resp}");
    resp["error"]["code"].as_str().expect("error code")
}

/// Assert success and return the response.
pub fn ok(resp: Value) -> Value {
    assert_eq!(resp["ok"], true, "expected success, got {resp}");
    resp
}

/// A client signing in a loop on its own connection, until stopped:
/// signing must go on (every reply a token) while something else happens.
pub struct SignLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl SignLoop {
    /// Sign on `socket`, pausing `pause` between requests.
    pub fn start(socket: &Path, pause: Duration) -> SignLoop {
        let socket = socket.to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut c = Conn::open(&socket).unwrap();
            let mut n = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                ok(c.sign(json!({"sub":"busy"})));
                n += 1;
                std::thread::sleep(pause);
            }
            n
        });
        SignLoop { stop, thread }
    }

    /// Stop; how many tokens it got (a refused sign fails the test).
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .expect("the signing loop got every token")
    }
}

/// The jti revocations the daemon at `c` holds, from its metrics.
pub fn jti_revocations(c: &mut Conn) -> usize {
    let metrics = ok(c.request(json!({"op":"metrics"})))["metrics"]
        .as_str()
        .unwrap()
        .to_owned();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("splitsign_revocations{kind=\"jti\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no jti revocation count in the metrics:\n{metrics}"))
}
