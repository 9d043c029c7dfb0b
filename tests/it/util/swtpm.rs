//! A real TPM 2.0 for a test: the testkit's `Swtpm` (one simulator per
//! test, stopped by its pid), and whether swtpm is here at all.

pub use splitsign_testkit::swtpm::Swtpm;

use super::{optional_tool, runs};

/// swtpm, for the tests of file shares sealed to a TPM.
pub const SWTPM: &str = "swtpm (apt-get install swtpm swtpm-tools)";

/// Whether swtpm is here (see [`optional_tool`]: skipped, or a failure
/// with `SPLITSIGN_REQUIRE_ALL=1`).
pub fn have_swtpm() -> bool {
    optional_tool(runs("swtpm", &["--version"]), SWTPM)
}
