//! A real TPM 2.0 for a test: one `swtpm` simulator with its own state
//! directory and free loopback ports, stopped by its pid (the child this
//! kit started, nothing else) when dropped. A bare swtpm serves one TCTI
//! connection at a time; splitsign opens the TPM per call.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm: a TPM of its own (its own primary seeds, so its own
/// storage root key), reachable by any uid on loopback.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    /// Start a new simulator and wait until it listens. Panics if swtpm
    /// cannot be run (Debian's `swtpm` package).
    pub fn start() -> Swtpm {
        let state = tempfile::Builder::new()
            .prefix("splitsign-swtpm")
            .tempdir()
            .expect("temp dir");
        // Two free neighbouring ports: the swtpm TCTI finds the control
        // channel at port + 1 (the listeners close before swtpm binds).
        let port = loop {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = a.local_addr().unwrap().port();
            if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        let ctrl = port + 1;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("swtpm (apt-get install swtpm swtpm-tools)");
        let mut swtpm = Swtpm {
            child,
            port,
            _state: state,
        };
        // Ready when the control port answers (the data port is left alone:
        // it serves one connection at a time).
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", ctrl)).is_err() {
            if let Ok(Some(status)) = swtpm.child.try_wait() {
                panic!("swtpm exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "swtpm did not start in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        swtpm
    }

    /// The TCTI of this TPM (`tpm_tcti` in the config).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Config lines that seal file shares to this TPM.
    pub fn config(&self) -> String {
        format!("share_seal = \"tpm2\"\ntpm_tcti = \"{}\"\n", self.tcti())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        // By its pid: the child this kit started, nothing else.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
