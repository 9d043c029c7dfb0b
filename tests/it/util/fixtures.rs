//! Ready-made deployments: stores made by older versions
//! (`tests/fixtures/`), a deployment initialised with one key.

use std::path::Path;

use super::{Dir, assert_ok, copy_dir};

/// A copy of the stores in tests/fixtures/NAME (made by an older
/// version), with the modes a checkout does not keep, and its expect.json.
pub fn fixture_stores(name: &str) -> (Dir, serde_json::Value) {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let expect =
        serde_json::from_slice(&std::fs::read(fixture.join("expect.json")).unwrap()).unwrap();
    let dir = Dir::new();
    copy_dir(&fixture, dir.path());
    for (p, mode) in [(dir.keys(), 0o700), (dir.path().join("var"), 0o700)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for f in dir.share_files().into_iter().chain([dir.db()]) {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    (dir, expect)
}

/// A deployment that has run `init` once and has one key; returns its kid.
pub fn initialised() -> (Dir, String) {
    let dir = Dir::new();
    let out = dir.run(&["init"]);
    assert_ok(&out);
    let kid = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    (dir, kid)
}
