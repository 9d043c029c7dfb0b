//! `lock`: one process at a time on a deployment's stores, by identity.
//!
//! Two locks, both `flock(2)`, both held for as long as the stores are
//! open: one on `<db>.lock` beside the database, named from the database's
//! canonical path (symlinks and `..` resolved, so a symlink to the database
//! or to its directory, or a relative path, names the same lock file), and
//! one on the share directory itself (its inode: any path to it, a bind
//! mount included, meets the same lock). The lock file's directory is the
//! database's, so a bind mount of that directory meets the same lock file
//! too. A refusal names the holder (its pid and command line, from
//! `/proc/locks`).
//!
//! Not covered: a bind mount of the database *file* alone, used with
//! another share directory; that pairing has no shares of the database's
//! keys, so it does not start (the stores disagree).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The two locks; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _db: File,
    _shares: File,
}

impl StoreLock {
    /// Take both locks, or say who holds them (a usage error: exit 2).
    /// `db`'s directory and `shares` must exist.
    pub fn take(db: &Path, shares: &Path) -> Result<StoreLock> {
        let path = lock_path(db)?;
        let db_lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(Error::io("opening lock file", &path))?;
        exclusive(&db_lock, || {
            format!(
                "the database {} (lock file {})",
                db.display(),
                path.display()
            )
        })?;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(shares)
            .map_err(Error::io("opening the share directory", shares))?;
        exclusive(&dir, || format!("the share directory {}", shares.display()))?;
        Ok(StoreLock {
            _db: db_lock,
            _shares: dir,
        })
    }
}

/// `<db>.lock`, from the database's canonical path: the file itself when
/// it exists (a symlink to it is followed), else its directory's.
pub fn lock_path(db: &Path) -> Result<PathBuf> {
    let real = match std::fs::canonicalize(db) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match db.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let name = db
                .file_name()
                .ok_or_else(|| Error::Usage(format!("db {} does not name a file", db.display())))?;
            std::fs::canonicalize(dir)
                .map_err(Error::io("resolving the database directory", dir))?
                .join(name)
        }
        Err(e) => return Err(Error::io("resolving the database path", db)(e)),
    };
    let mut p = real.into_os_string();
    p.push(".lock");
    Ok(PathBuf::from(p))
}

/// An exclusive `flock` without waiting; when it is held, a usage error
/// naming `what` and the holder.
fn exclusive(file: &File, what: impl Fn() -> String) -> Result<()> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let holder = file
                .metadata()
                .ok()
                .and_then(|m| holder(m.dev(), m.ino()))
                .unwrap_or_else(|| "another process".into());
            Err(Error::Usage(format!(
                "the key stores are in use: {holder} holds {}. One process at a time works on a \
                 deployment's stores, whatever path reaches them (a symlink, a bind mount, a \
                 relative path): stop it, or use `splitsign --socket …` to ask the running \
                 daemon",
                what()
            )))
        }
        Err(e) => Err(Error::io("locking the key stores", what())(e.into())),
    }
}

/// Who holds a `flock` on the file (device, inode): "pid N (command
/// line)", from `/proc/locks` and `/proc/N/cmdline`, bounded and printable.
fn holder(dev: u64, ino: u64) -> Option<String> {
    let mut text = String::new();
    File::open("/proc/locks")
        .ok()?
        .take(4 << 20)
        .read_to_string(&mut text)
        .ok()?;
    let id = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    let pid: u32 = text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a waiter's
        // line has "->" after the number).
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&id.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })?;
    let mut cmd = Vec::new();
    let command = File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(4096).read_to_end(&mut cmd))
        .ok()
        .map(|_| {
            let line: String = String::from_utf8_lossy(&cmd)
                .trim_end_matches('\0')
                .chars()
                .map(|c| {
                    if c == '\0' {
                        ' '
                    } else if c.is_control() {
                        '?'
                    } else {
                        c
                    }
                })
                .take(200)
                .collect();
            line
        })
        .filter(|l| !l.is_empty());
    Some(match command {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_and_a_relative_path_name_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("var");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("s.db"), b"").unwrap();
        std::os::unix::fs::symlink(real.join("s.db"), dir.path().join("link.db")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("linkdir")).unwrap();
        let want = lock_path(&real.join("s.db")).unwrap();
        assert_eq!(lock_path(&dir.path().join("link.db")).unwrap(), want);
        assert_eq!(lock_path(&dir.path().join("linkdir/s.db")).unwrap(), want);
        assert_eq!(lock_path(&real.join("../var/./s.db")).unwrap(), want);
        // Not created yet: by its directory.
        assert_eq!(
            lock_path(&dir.path().join("linkdir/new.db")).unwrap(),
            std::fs::canonicalize(&real).unwrap().join("new.db.lock")
        );
    }

    #[test]
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (db, shares) = (dir.path().join("s.db"), dir.path().join("keys"));
        std::fs::create_dir(&shares).unwrap();
        let _held = StoreLock::take(&db, &shares).unwrap();
        let e = StoreLock::take(&db, &shares).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("the database"), "{e}");
        // The share directory alone, reached through a symlink.
        let other = dir.path().join("other.db");
        let link = dir.path().join("keys-link");
        std::os::unix::fs::symlink(&shares, &link).unwrap();
        let e = StoreLock::take(&other, &std::fs::canonicalize(&link).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("the share directory"), "{e}");
    }
}
