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
//! A path to the database that does not go through its directory would
//! meet neither the lock file nor the database's own WAL (SQLite keeps
//! `<path>-wal` beside the path it was given): a hard link, or the file
//! bind-mounted alone. So a database with more than one link, or that is a
//! mount point, is refused (exit 2) before anything is opened: then every
//! path to the file goes through its one directory, and so to one lock.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{dir_of, with_suffix};
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
        let real = canonical_db(db)?;
        one_path_only(db, &real)?;
        let path = with_suffix(&real, ".lock");
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

/// `<db>.lock`, from the database's canonical path.
pub fn lock_path(db: &Path) -> Result<PathBuf> {
    canonical_db(db).map(|real| with_suffix(&real, ".lock"))
}

/// The database's canonical path: the file itself when it exists (a
/// symlink to it is followed), else its directory's, joined with its name.
pub fn canonical_db(db: &Path) -> Result<PathBuf> {
    Ok(match std::fs::canonicalize(db) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = dir_of(db);
            let name = db
                .file_name()
                .ok_or_else(|| Error::Usage(format!("db {} does not name a file", db.display())))?;
            std::fs::canonicalize(dir)
                .map_err(Error::io("resolving the database directory", dir))?
                .join(name)
        }
        Err(e) => return Err(Error::io("resolving the database path", db)(e)),
    })
}

/// Refuse a database that another path reaches without its directory: a
/// second hard link, or a bind mount of the file itself (`real`: its
/// canonical path).
fn one_path_only(db: &Path, real: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(db) else {
        return Ok(()); // not created yet: nothing else can reach it
    };
    if meta.nlink() > 1 {
        return Err(Error::Usage(format!(
            "the database {} has {} hard links: another path to the same file would bypass its \
             lock and its WAL. Remove the other links (find them with `find / -xdev -samefile \
             {}`)",
            db.display(),
            meta.nlink(),
            db.display()
        )));
    }
    if is_mount_point(real) {
        return Err(Error::Usage(format!(
            "the database {} is a mount point (the file bind-mounted alone): its lock and WAL \
             would not be the original's. Bind-mount its directory instead",
            db.display()
        )));
    }
    Ok(())
}

/// Whether `path` (canonical) is where something is mounted, by
/// `/proc/self/mountinfo` (field 5, octal escapes undone).
fn is_mount_point(path: &Path) -> bool {
    let mut text = String::new();
    if File::open("/proc/self/mountinfo")
        .and_then(|f| f.take(16 << 20).read_to_string(&mut text))
        .is_err()
    {
        return false;
    }
    let want = path.as_os_str().as_encoded_bytes();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

/// Undo mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
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
    // The uid too: a lock file in a directory others may write to could be
    // held by anyone, under any command line.
    let uid = std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| format!(", uid {}", m.uid()))
        .unwrap_or_default();
    Some(match command {
        Some(c) => format!("pid {pid}{uid} ({c})"),
        None => format!("pid {pid}{uid}"),
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
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape(r"/plain\04"), b"/plain\\04");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/no/such/mount/point")));
    }

    #[test]
    fn a_database_with_a_second_hard_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (db, shares) = (dir.path().join("s.db"), dir.path().join("keys"));
        std::fs::create_dir(&shares).unwrap();
        std::fs::write(&db, b"").unwrap();
        drop(StoreLock::take(&db, &shares).unwrap());
        std::fs::hard_link(&db, dir.path().join("other.db")).unwrap();
        let e = StoreLock::take(&db, &shares).unwrap_err().to_string();
        assert!(e.contains("2 hard links"), "{e}");
    }

    #[test]
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (db, shares) = (dir.path().join("s.db"), dir.path().join("keys"));
        std::fs::create_dir(&shares).unwrap();
        let _held = StoreLock::take(&db, &shares).unwrap();
        let e = StoreLock::take(&db, &shares).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}, uid ", std::process::id())),
            "{e}"
        );
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
