//! The benches' request load: `conns` connections on the daemon's socket,
//! each keeping `depth` request lines in flight, for a while; the rate,
//! the latency percentiles and the client's own CPU time.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::procfs::cpu_self;

/// The CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

pub struct Load {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub client_cpu: f64,
}

/// `conns` connections, each writing `depth` lines then reading `depth`
/// responses, for `secs`. Latency is per batch round trip (per request when
/// depth is 1).
pub fn line_load(sock: &Path, line: &[u8], conns: usize, depth: usize, secs: f64) -> Load {
    let cpu0 = cpu_self();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let sock = sock.to_owned();
            let batch = line.repeat(depth);
            std::thread::spawn(move || {
                let s = UnixStream::connect(&sock).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::with_capacity(64 * 1024, s);
                let mut buf = Vec::with_capacity(1024);
                let mut lat = Vec::new();
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed().as_secs_f64() < secs {
                    let t = Instant::now();
                    w.write_all(&batch).unwrap();
                    for _ in 0..depth {
                        buf.clear();
                        r.read_until(b'\n', &mut buf).unwrap();
                        assert!(
                            buf.starts_with(b"{\"ok\":true"),
                            "{}",
                            String::from_utf8_lossy(&buf)
                        );
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

/// A polite client (one `polite` line at a time, on its own connection)
/// beside `busy` connections that each keep `depth` `busy` lines in
/// flight, for `secs`: the polite client's load (its latency per request).
pub fn polite_load(
    sock: &Path,
    polite: &[u8],
    busy: &[u8],
    busy_conns: usize,
    depth: usize,
    secs: f64,
) -> Load {
    // The busy connections start 200 ms before the polite client (to
    // reach their pace) and end about as long after it.
    let others = {
        let (sock, busy) = (sock.to_owned(), busy.to_vec());
        std::thread::spawn(move || line_load(&sock, &busy, busy_conns, depth, secs + 0.4))
    };
    std::thread::sleep(Duration::from_millis(200));
    let l = line_load(sock, polite, 1, 1, secs);
    others.join().unwrap();
    l
}

/// Join the client threads (each: its rate, its latencies in µs) into one
/// `Load`: summed rate, p50/p99 over all latencies, the client's CPU time.
pub fn collect(handles: Vec<std::thread::JoinHandle<(f64, Vec<f64>)>>, cpu0: f64) -> Load {
    let mut rate = 0.0;
    let mut lat = Vec::new();
    for h in handles {
        let (r, l) = h.join().unwrap();
        rate += r;
        lat.extend(l);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Load {
        rate,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        client_cpu: cpu_self() - cpu0,
    }
}

/// The sign and verify lines of the bench (a verify line needs a token of
/// the daemon at `sock`).
pub fn sign_line() -> Vec<u8> {
    b"{\"op\":\"sign\",\"claims\":{\"sub\":\"bench\",\"aud\":\"api\"}}\n".to_vec()
}

pub fn verify_line(sock: &Path) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(&sign_line()).unwrap();
    let mut r = BufReader::new(s);
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
    format!(
        "{{\"op\":\"verify\",\"token\":\"{}\"}}\n",
        v["token"].as_str().unwrap()
    )
    .into_bytes()
}

/// The median (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The `p` quantile (0 to 1) of `v`, nearest rank; sorts `v`.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}
