//! Small filesystems for the full-disk tests: a tmpfs mounted for a
//! test, and a file that fills a filesystem to the last byte.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use super::assert_ok;

/// A tmpfs of `size` mounted at `at`, unmounted on drop.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert_ok(&out);
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fill the filesystem of `dir` with a file; returns its path.
pub fn fill(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // And the last few bytes.
    while f.write_all(&[0u8; 512]).is_ok() {}
    p
}
