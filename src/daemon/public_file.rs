//! `public_file` writes the files the daemon publishes for others to read
//! (the JWKS file of `key_manager`, the metrics file of `background`):
//! whole or not at all, mode 0644, durable once written.

use std::path::Path;

use crate::error::{Error, Result};

/// Write a public file atomically: temp name in the same directory, mode
/// 0644, fsync, rename over the old one, fsync the directory. A newline is
/// added (the JWKS).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut line = Vec::with_capacity(bytes.len() + 1);
    line.extend_from_slice(bytes);
    line.push(b'\n');
    write_exact(path, &line)
}

/// [`write`], with the bytes as they are.
pub fn write_exact(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = crate::config::dir_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("jwks_file {} has no file name", path.display())))?;
    let tmp = crate::store::temp_path(dir, &name.to_string_lossy())?;
    let io = Error::io("writing JWKS file", path);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        // The daemon's umask is 0077; the JWKS is public by design.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
