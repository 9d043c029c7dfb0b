//! What the integration tests (`tests/it`) and the benches (`benches/`)
//! share. Both drive the real `splitsign` binary, whose path the caller
//! passes in (`env!("CARGO_BIN_EXE_splitsign")` exists only in the main
//! package's tests and benches); this crate does not link the `splitsign`
//! library: it speaks to the daemon over its socket and reads its files,
//! as any client would.
//!
//! - [`daemon`]: start `serve`, wait until it answers; stop it cleanly.
//! - [`wire`]: a raw protocol connection (JSON lines on the Unix socket).
//! - [`pg`]: a private PostgreSQL server for one test or bench run.
//! - [`procfs`]: a process's numbers from `/proc`.
//! - [`swtpm`]: a TPM 2.0 simulator for one test.
//! - [`load`]: the benches' request load (connections, lines in flight,
//!   latency percentiles).

pub mod daemon;
pub mod load;
pub mod pg;
pub mod procfs;
pub mod swtpm;
pub mod wire;
