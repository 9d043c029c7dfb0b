//! Optional tools (strace, libfaketime, cargo-deb, ...): a test that
//! needs a missing one is skipped, or fails when every test must run
//! (`SPLITSIGN_REQUIRE_ALL=1`, as in CI).

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether a test may run, given whether an optional tool it needs was
/// found (`have`); `needs` names the tool and how to get it. When it is
/// missing, the test is skipped: this says "skipped: needs …" on stderr
/// (past the test harness's capture, so that `cargo test` shows it) and
/// returns false, and the caller returns. With `SPLITSIGN_REQUIRE_ALL=1`
/// (`.ci/run` sets it: CI installs every tool) a missing tool fails the
/// test instead.
pub fn optional_tool(have: bool, needs: &str) -> bool {
    let require_all = std::env::var_os("SPLITSIGN_REQUIRE_ALL").is_some_and(|v| v == "1");
    // Straight to fd 2: `eprintln!` would be captured, and shown only for
    // a failing test.
    tool_or_skip(have, needs, require_all, &mut std::io::stderr())
}

pub(super) fn tool_or_skip(
    have: bool,
    needs: &str,
    require_all: bool,
    say: &mut dyn Write,
) -> bool {
    if have {
        return true;
    }
    assert!(
        !require_all,
        "needs {needs} (SPLITSIGN_REQUIRE_ALL=1: no test may be skipped)"
    );
    let _ = writeln!(say, "skipped: needs {needs}");
    false
}

/// Whether `program args` runs and succeeds (a tool's `--version`).
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// cargo-deb, for the tests that build the Debian package.
pub const CARGO_DEB: &str = "cargo-deb (cargo install cargo-deb --locked --version 3.8.0)";

/// strace, for the tests that stop the daemon at system calls.
pub const STRACE: &str = "strace (apt-get install strace; .ci/run installs it)";

/// Whether strace is here (see [`optional_tool`]).
pub fn have_strace() -> bool {
    optional_tool(runs("strace", &["-V"]), STRACE)
}
