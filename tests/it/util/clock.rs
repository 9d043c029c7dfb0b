//! Time: the wall clock, and libfaketime to shift the daemon's (a fixed
//! offset, or a file a test changes while the daemon runs).

use std::path::Path;

use super::{Dir, optional_tool};

/// libfaketime (Debian package `faketime`) shifts the daemon's wall clock.
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Whether libfaketime is here (see [`optional_tool`]); the tests that
/// shift the clock ask first.
pub fn have_faketime() -> bool {
    optional_tool(
        Path::new(FAKETIME_LIB).exists(),
        "libfaketime (apt-get install faketime; .ci/run installs it)",
    )
}

/// The environment that runs a process under libfaketime with `vars`
/// (`FAKETIME`, or `FAKETIME_TIMESTAMP_FILE` with `FAKETIME_NO_CACHE`), the
/// monotonic clock left alone (timers keep working).
pub fn faketime<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "this test needs libfaketime (apt-get install faketime; .ci/run installs it)"
    );
    let mut env = vec![
        ("LD_PRELOAD", FAKETIME_LIB),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    env.extend_from_slice(vars);
    env
}

/// A wall-clock offset for libfaketime in a file, which a test changes
/// while the daemon runs (libfaketime re-reads it at every call).
pub struct FakeClock {
    file: String,
}

impl FakeClock {
    /// The file in `dir`, at `offset` ("+0", "+3d").
    pub fn new(dir: &Dir, offset: &str) -> FakeClock {
        let c = FakeClock {
            file: dir.path().join("faketime").to_str().unwrap().to_owned(),
        };
        c.set(offset);
        c
    }

    /// Move the clock to `offset` (atomically: a reader never sees a
    /// partial file).
    pub fn set(&self, offset: &str) {
        let tmp = format!("{}.tmp", self.file);
        std::fs::write(&tmp, offset).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// The environment of a process on this clock.
    pub fn env(&self) -> Vec<(&str, &str)> {
        faketime(&[
            ("FAKETIME_TIMESTAMP_FILE", self.file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
        ])
    }
}

/// The wall clock, Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
