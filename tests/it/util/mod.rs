//! Test harness: a fresh temp dir per test, the real `splitsign` binary,
//! and a raw wire-protocol connection. Tests speak bytes, as any client.
//! What the benches need too (the daemon's start-up, the connection,
//! `/proc`, PostgreSQL) is in the `splitsign-testkit` crate (`testkit/`);
//! the helpers here are the tests' own, one concern a file:
//!
//! - `deployment`: the temp dir of a zero-config daemon, commands run in
//!   it, its stores read directly.
//! - `daemon`: the daemon of a test, and other child processes, killed
//!   when dropped.
//! - `wire`: the connection, what a response says, a client that keeps
//!   signing, the metrics.
//! - `fake_systemd`: socket activation (fd passing) and sd_notify, as
//!   systemd does them.
//! - `jwks`: tokens verified with jsonwebtoken against the published keys.
//! - `fixtures`: stores made by older versions, an initialised deployment.
//! - `clock`: the wall clock, and libfaketime to shift the daemon's.
//! - `privileges`: root, the `nobody` peer and what it can reach, limits.
//! - `tmpfs`: small filesystems, filled.
//! - `tools`: optional tools: a test skips, or fails in CI.
//! - `swtpm`: a real TPM 2.0 (a simulator per test) for sealed file shares.

mod clock;
mod daemon;
mod deployment;
mod fake_systemd;
mod fixtures;
mod jwks;
mod privileges;
#[cfg(feature = "tpm2")]
mod swtpm;
mod tmpfs;
mod tools;
mod wire;

pub use clock::{FakeClock, faketime, have_faketime, now};
pub use daemon::{Daemon, Started, wait_exit};
pub use deployment::{Dir, assert_ok, copy_dir, wait_for_count};
pub use fake_systemd::{FakeSystemd, activated};
pub use fixtures::{fixture_stores, initialised};
pub use jwks::{verify_with_jwks, verify_with_jwks_at};
pub use privileges::{NOBODY, is_root, open_deployment, raise_nofile};
pub use splitsign_testkit::daemon::{Exited, signal};
pub use splitsign_testkit::procfs::vm;
#[cfg(feature = "tpm2")]
pub use swtpm::{Swtpm, have_swtpm};
pub use tmpfs::{Tmpfs, fill};
pub use tools::{CARGO_DEB, have_strace, optional_tool, runs};
pub use wire::{Conn, SignLoop, code, jti_revocations, ok};

/// The binary under test, this build's.
pub const BIN: &str = env!("CARGO_BIN_EXE_splitsign");

// The test of `tools::tool_or_skip` stays here, not in `tools`, so that its
// name stays `util::a_missing_tool_skips_the_test_unless_every_test_must_run`.
#[test]
fn a_missing_tool_skips_the_test_unless_every_test_must_run() {
    let mut said = Vec::new();
    assert!(tools::tool_or_skip(true, "x", true, &mut said));
    assert!(tools::tool_or_skip(true, "x", false, &mut said));
    assert!(said.is_empty());
    assert!(!tools::tool_or_skip(false, "x (get it)", false, &mut said));
    assert_eq!(
        String::from_utf8(said).unwrap(),
        "skipped: needs x (get it)\n"
    );
    let failed = std::panic::catch_unwind(|| {
        tools::tool_or_skip(
            false,
            "a-tool (apt-get install a-tool)",
            true,
            &mut Vec::new(),
        )
    });
    let message = failed.expect_err("with SPLITSIGN_REQUIRE_ALL=1 a missing tool fails");
    let message = message
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("needs a-tool (apt-get install a-tool)"),
        "{message}"
    );
}
