//! `share_dir` keeps the file shares: one file per key and share generation
//! in the share directory. It writes them durably and refuses to read any
//! file that another user could have read or replaced. It never sees a
//! whole key.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{OFlags, RenameFlags};

use crate::error::{Error, Result};
use crate::keys::shamir::{KeyShare, Slot};
use crate::keys::share_format;
use crate::store::tpm::Tpm;

const SUFFIX: &str = ".share";

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn nofollow() -> i32 {
    (OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32
}

/// Which file a path names: device and inode. A store replaced under a
/// running daemon (a restored database, a re-created share directory) is a
/// different file at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The file `path` names now (following no symlink at the end).
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether `path` still names this file; the reason if not.
    pub fn still_at(&self, path: &Path) -> Result<(), String> {
        match FileId::of(path) {
            Ok(now) if now == *self => Ok(()),
            Ok(_) => Err(format!("{} was replaced by another file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(format!("{} was removed", path.display()))
            }
            Err(e) => Err(format!("{} cannot be examined: {e}", path.display())),
        }
    }
}

/// The share directory, checked to be private to this uid.
#[derive(Debug, Clone)]
pub struct ShareDir {
    path: PathBuf,
    identity: FileId,
    /// The TPM that unseals sealed file shares (and seals new ones).
    tpm: Tpm,
    /// Whether new file shares are sealed (`share_seal = "tpm2"`).
    seal_new: bool,
}

/// A file share written durably under a temp name, not yet visible under
/// its final name (see [`ShareDir::stage`]).
#[derive(Debug)]
#[must_use = "a staged share is published or discarded"]
pub struct Staged {
    tmp: PathBuf,
    pub final_path: PathBuf,
}

/// A file found in the share directory.
#[derive(Debug)]
pub enum Entry {
    Share {
        kid: String,
        generation: u32,
        path: PathBuf,
    },
    /// A temp file left by an interrupted write.
    Temp(PathBuf),
    /// The directory's own README and .gitignore; ignored.
    Known(PathBuf),
    /// Anything else; left alone and reported.
    Foreign(PathBuf),
}

impl ShareDir {
    /// Open the share directory, creating it (mode 0700) if it is missing.
    /// A directory of ours that holds no share yet but has loose
    /// permissions (a fresh `git clone` makes `keys/` 0755) is made 0700:
    /// nothing in it can have leaked. One that already holds shares is
    /// refused by [`ShareDir::open`].
    pub fn open_or_create(path: &Path) -> Result<ShareDir> {
        use std::os::unix::fs::PermissionsExt;
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(Error::io("creating share directory", path))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.is_dir()
            && meta.uid() == euid()
            && meta.mode() & 0o077 != 0
        {
            let unchecked = ShareDir {
                path: path.to_owned(),
                identity: FileId::of(path).map_err(Error::io("examining", path))?,
                tpm: Tpm::new(crate::config::DEFAULT_TCTI),
                seal_new: false,
            };
            let holds_shares = unchecked
                .list()?
                .iter()
                .any(|e| !matches!(e, Entry::Known(_)));
            if !holds_shares {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                    .map_err(Error::io("making the share directory private", path))?;
                tracing::info!(path = %path.display(), "made the new share directory private (0700)");
            }
        }
        ShareDir::open(path)
    }

    /// Open an existing share directory and check it: a directory owned by
    /// this uid with no group or other permission bits.
    pub fn open(path: &Path) -> Result<ShareDir> {
        let bad = |reason: String| Error::ShareDir {
            path: path.to_owned(),
            reason,
        };
        let meta = std::fs::symlink_metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("is not a directory".into()));
        }
        if meta.uid() != euid() {
            return Err(bad(format!(
                "is owned by uid {}, not by this process (uid {})",
                meta.uid(),
                euid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "has mode {:04o}; it must be private (0700)",
                meta.mode() & 0o7777
            )));
        }
        Ok(ShareDir {
            path: path.to_owned(),
            identity: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            tpm: Tpm::new(crate::config::DEFAULT_TCTI),
            seal_new: false,
        })
    }

    /// Seal new file shares as `sealing` says, and unseal with its TPM.
    pub fn with_sealing(mut self, sealing: &crate::config::Sealing) -> ShareDir {
        self.tpm = Tpm::new(&sealing.tcti);
        self.seal_new = sealing.seal == crate::config::ShareSeal::Tpm2;
        self
    }

    /// Whether new file shares are sealed to the TPM.
    pub fn seals(&self) -> bool {
        self.seal_new
    }

    /// The TPM this directory seals to and unseals with.
    pub fn tpm(&self) -> &Tpm {
        &self.tpm
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the share path named when it was opened.
    pub fn identity(&self) -> FileId {
        self.identity
    }

    /// Where the share of `kid` at `generation` lives.
    pub fn share_path(&self, kid: &str, generation: u32) -> PathBuf {
        self.path.join(share_file_name(kid, generation))
    }

    /// Write a new share file durably: [`ShareDir::stage`], then
    /// [`ShareDir::publish`]. A crash leaves either no file under the final
    /// name or the complete one.
    pub fn write_new(&self, share: &KeyShare) -> Result<PathBuf> {
        let staged = self.stage(share)?;
        self.publish(staged)
    }

    /// Write a share file durably under a unique temp name (created with
    /// O_EXCL and mode 0600, fsync'ed), without giving it its final name.
    /// A key's creation stages its file share first, records the key in
    /// the database, and only then publishes the file: so a share file
    /// under a final name whose key the database does not know never comes
    /// from an interrupted write of ours, and means a wrong or old store.
    pub fn stage(&self, share: &KeyShare) -> Result<Staged> {
        debug_assert_eq!(share.slot, Slot::File);
        let final_path = self.share_path(&share.kid, share.generation);
        let bytes = if self.seal_new {
            let sealed = self
                .tpm
                .seal(share.y.as_bytes())
                .map_err(|e| Error::WriteShare {
                    path: final_path.clone(),
                    source: std::io::Error::other(format!("sealing it to the TPM: {e}")),
                })?;
            let sealed = share_format::SealedY {
                to: sealed.srk_name,
                blob: sealed.blob,
            };
            share_format::encode_sealed_file(share, &sealed)
        } else {
            share_format::encode_file(share)
        };
        let tmp = self.temp_path(&share.kid, share.generation)?;
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nofollow())
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::WriteShare {
                path: final_path,
                source,
            });
        }
        Ok(Staged { tmp, final_path })
    }

    /// Give a staged share its final name: rename without replacing
    /// anything, then fsync the directory.
    pub fn publish(&self, staged: Staged) -> Result<PathBuf> {
        let renamed = rustix::fs::renameat_with(
            rustix::fs::CWD,
            &staged.tmp,
            rustix::fs::CWD,
            &staged.final_path,
            RenameFlags::NOREPLACE,
        );
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&staged.tmp);
            return Err(Error::WriteShare {
                path: staged.final_path,
                source: e.into(),
            });
        }
        self.sync().map_err(|source| Error::WriteShare {
            path: staged.final_path.clone(),
            source,
        })?;
        Ok(staged.final_path)
    }

    /// Remove a staged share that will not be published.
    pub fn discard(&self, staged: Staged) {
        let _ = self.destroy(&staged.tmp);
    }

    /// Replace an existing share file with `share` (the same share, in the
    /// current format, or sealed now): temp file, fsync, rename over the
    /// old one, fsync of the directory. A crash leaves the old file or the
    /// new one, which hold the same share. Then the old file's bytes are
    /// overwritten through a descriptor opened before the rename, so that
    /// a y once in clear does not stay in the disk's free blocks (on a
    /// filesystem that writes in place).
    pub fn rewrite(&self, share: &KeyShare) -> Result<PathBuf> {
        let staged = self.stage(share)?;
        let wrap = |source| Error::WriteShare {
            path: staged.final_path.clone(),
            source,
        };
        let old = OpenOptions::new()
            .write(true)
            .custom_flags(nofollow())
            .open(&staged.final_path)
            .ok();
        if let Err(e) = std::fs::rename(&staged.tmp, &staged.final_path) {
            let _ = std::fs::remove_file(&staged.tmp);
            return Err(wrap(e));
        }
        self.sync().map_err(wrap)?;
        if let Some(f) = old {
            wipe(f);
        }
        Ok(staged.final_path)
    }

    /// Give a staged share the final name of a file share that cannot be
    /// read (lost, damaged, or sealed to another TPM), replacing it: a
    /// sealed one is kept beside, as `NAME.replaced-TIME` (left alone at
    /// start, and useless without its TPM: a wrong `tpm_tcti` must not
    /// cost the only copy), any other is overwritten and removed. The new
    /// share is staged (and sealed) before anything is touched.
    pub fn replace_unreadable(&self, staged: Staged) -> Result<PathBuf> {
        let path = staged.final_path.clone();
        if read_share_header(&path).is_ok_and(|h| h.sealed.is_some()) {
            let aside = path.with_file_name(format!(
                "{}.replaced-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("share"),
                crate::clock::wall_now()
            ));
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &path,
                rustix::fs::CWD,
                &aside,
                RenameFlags::NOREPLACE,
            )
            .map_err(|e| Error::io("setting aside", &path)(e.into()))?;
            tracing::warn!(
                file = %path.display(),
                kept_as = %aside.display(),
                "a file share sealed to another TPM was set aside, not destroyed"
            );
        } else {
            self.destroy(&path)?;
        }
        self.publish(staged)
    }

    fn temp_path(&self, kid: &str, generation: u32) -> Result<PathBuf> {
        temp_path(&self.path, &format!("{kid}.{generation}"))
    }

    /// Read and parse the file share of `kid` at `generation`. The contents
    /// must name the same kid and generation and x = 1.
    pub fn read(&self, kid: &str, generation: u32) -> Result<KeyShare> {
        self.read_sealed(kid, generation).map(|(share, _)| share)
    }

    /// [`ShareDir::read`], and what the file was sealed to, if it was.
    pub fn read_sealed(
        &self,
        kid: &str,
        generation: u32,
    ) -> Result<(KeyShare, Option<share_format::SealedY>)> {
        let path = self.share_path(kid, generation);
        let bytes = read_private_file(&path)?;
        let (share, sealed) =
            share_format::decode_file_with(&bytes, &|s| unseal_with(&self.tpm, s)).map_err(
                |reason| Error::FileShare {
                    path: path.clone(),
                    reason,
                },
            )?;
        check_slot(&path, &share, Slot::File)?;
        if share.kid != kid || share.generation != generation {
            return Err(Error::FileShare {
                path,
                reason: format!(
                    "holds the share of key {} generation {}, not of key {kid} generation {generation}",
                    share.kid, share.generation
                ),
            });
        }
        Ok((share, sealed))
    }

    /// What the file share of `kid` at `generation` is sealed to (`None`:
    /// it is in clear), from its header alone: the TPM is not asked.
    pub fn sealed_to(&self, kid: &str, generation: u32) -> Result<Option<share_format::SealedY>> {
        let path = self.share_path(kid, generation);
        read_share_header(&path).map(|h| h.sealed)
    }

    /// Everything in the directory, classified.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.path).map_err(Error::io("listing", &self.path))?;
        for ent in rd {
            let ent = ent.map_err(Error::io("listing", &self.path))?;
            let path = ent.path();
            let name = ent.file_name();
            let Some(name) = name.to_str() else {
                out.push(Entry::Foreign(path));
                continue;
            };
            if name == "README.md" || name == ".gitignore" {
                out.push(Entry::Known(path));
            } else if name.starts_with('.') && name.contains(".tmp-") {
                out.push(Entry::Temp(path));
            } else if let Some((kid, generation)) = parse_share_name(name) {
                out.push(Entry::Share {
                    kid,
                    generation,
                    path,
                });
            } else {
                out.push(Entry::Foreign(path));
            }
        }
        Ok(out)
    }

    /// Destroy a share file: overwrite its bytes, fsync, unlink, fsync the
    /// directory. (Overwriting is best effort on journaling or copy-on-write
    /// file systems; the unlink is what counts.)
    pub fn destroy(&self, path: &Path) -> Result<()> {
        if let Ok(f) = OpenOptions::new()
            .write(true)
            .custom_flags(nofollow())
            .open(path)
        {
            wipe(f);
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", path)(e)),
        }
        self.sync()
            .map_err(Error::io("syncing directory", &self.path))
    }

    fn sync(&self) -> std::io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

/// The name of the file share of `kid` at `generation`:
/// `<kid>.<generation>.share`.
pub fn share_file_name(kid: &str, generation: u32) -> String {
    format!("{kid}.{generation}{SUFFIX}")
}

/// Whether the directory at `path` holds a share file, by name (nothing
/// is opened or checked); false when it does not exist or cannot be read.
/// For messages that must tell a fresh place from a deployment.
pub fn holds_share_files(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_str().and_then(parse_share_name).is_some())
    })
}

/// `<kid>.<generation>.share`
fn parse_share_name(name: &str) -> Option<(String, u32)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (kid, generation) = stem.rsplit_once('.')?;
    if !share_format::is_valid_kid(kid) {
        return None;
    }
    let generation: u32 = generation.parse().ok()?;
    Some((kid.to_owned(), generation))
}

/// Read a share file (a file share, or an offline recovery share) that must
/// hold a share of `slot`. The open file is checked (fstat, not the path):
/// a regular file, owned by this uid, no group or other bits, one link; a
/// symlink is refused.
pub fn read_share_file(path: &Path, slot: Slot) -> Result<KeyShare> {
    let bytes = read_private_file(path)?;
    let share = share_format::decode_file(&bytes).map_err(|reason| Error::FileShare {
        path: path.to_owned(),
        reason,
    })?;
    check_slot(path, &share, slot)?;
    Ok(share)
}

/// Overwrite a share file's bytes with zeros and fsync (a regular file no
/// larger than a share file; best effort: it is about to go anyway).
fn wipe(mut f: File) {
    if let Ok(meta) = f.metadata()
        && meta.is_file()
        && meta.len() <= share_format::MAX_SHARE_FILE as u64
    {
        let _ = f.write_all(&vec![0u8; meta.len() as usize]);
        let _ = f.sync_all();
    }
}

/// A share file's header (see [`share_format::decode_header`]), with the
/// same checks of the open file: no TPM is asked, nothing unsealed.
pub fn read_share_header(path: &Path) -> Result<share_format::ShareHeader> {
    let bytes = read_private_file(path)?;
    share_format::decode_header(&bytes).map_err(|reason| Error::FileShare {
        path: path.to_owned(),
        reason,
    })
}

/// Unseal a file share's y with `tpm`, which must be the TPM it was sealed
/// to, so that the error names the cause.
fn unseal_with(
    tpm: &Tpm,
    sealed: &share_format::SealedY,
) -> std::result::Result<zeroize::Zeroizing<[u8; 32]>, String> {
    use crate::store::tpm::TpmError;
    tpm.unseal_sealed_to(&sealed.blob, &sealed.to)
        .map_err(|e| match e {
            TpmError::SealedElsewhere { here } => format!(
                "is sealed to another TPM (its storage root key is {}; the TPM at {:?} has {}): \
                 the TPM was cleared or replaced, or the share directory was copied from another \
                 host. Nothing was changed. On a new TPM, `splitsign recover --recovery-share \
                 FILE` writes shares sealed to it",
                sealed.describe_to(),
                tpm.tcti(),
                share_format::describe_srk(&here)
            ),
            e @ (TpmError::NotBuilt | TpmError::BadTcti { .. } | TpmError::Unreachable { .. }) => {
                format!("is sealed to a TPM, which cannot be asked: {e}")
            }
            e => format!("cannot be unsealed by the TPM at {:?}: {e}", tpm.tcti()),
        })
}

/// The share in `share` must be of `slot`.
fn check_slot(path: &Path, share: &KeyShare, slot: Slot) -> Result<()> {
    if share.slot != slot {
        return Err(Error::FileShare {
            path: path.to_owned(),
            reason: format!(
                "holds a {} (x = {}), not a {} (x = {})",
                share.slot.name(),
                share.slot.x(),
                slot.name(),
                slot.x()
            ),
        });
    }
    Ok(())
}

/// The bytes of a private share file (checked on the open file, see
/// [`read_share_file`]), bounded, wiped on drop.
fn read_private_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let bad = |reason: String| Error::FileShare {
        path: path.to_owned(),
        reason,
    };
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nofollow() | OFlags::NONBLOCK.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("is missing".into()));
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(bad("is a symbolic link".into()));
        }
        Err(e) => return Err(bad(format!("cannot be opened: {e}"))),
    };
    check_private_file(&file).map_err(bad)?;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(share_format::MAX_SHARE_FILE + 1));
    file.take(share_format::MAX_SHARE_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    Ok(bytes)
}

/// fstat checks on an open share file.
pub fn check_private_file(file: &File) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be examined: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != euid() {
        return Err(format!(
            "is owned by uid {}, not by this process (uid {})",
            meta.uid(),
            euid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "has mode {:04o}; a share must not be readable by group or others (0600)",
            meta.mode() & 0o7777
        ));
    }
    if meta.nlink() != 1 {
        return Err(format!(
            "has {} hard links; a share must have exactly one",
            meta.nlink()
        ));
    }
    Ok(())
}

/// Write an offline recovery share (x = 3) to a new file, mode 0600. Never
/// overwrites an existing file.
pub fn write_recovery(path: &Path, share: &KeyShare) -> Result<()> {
    let wrap = |source| Error::WriteShare {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(path)
        .map_err(wrap)?;
    file.write_all(&share_format::encode_file(share))
        .map_err(wrap)?;
    file.sync_all().map_err(wrap)?;
    File::open(crate::config::dir_of(path))
        .and_then(|d| d.sync_all())
        .map_err(wrap)
}

/// A unique temp name in `dir` for a file that will be renamed to `name`:
/// `.<name>.tmp-<16 random hex digits>` (hidden, and recognised as an
/// interrupted write's leftover in the share directory).
pub fn temp_path(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(dir.join(format!(".{name}.tmp-{hex}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_names_parse_strictly() {
        let kid = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
        assert_eq!(
            parse_share_name(&format!("{kid}.3.share")),
            Some((kid.to_owned(), 3))
        );
        assert_eq!(parse_share_name(&format!("{kid}.share")), None);
        assert_eq!(parse_share_name("x.1.share"), None);
        assert_eq!(parse_share_name(&format!("{kid}.-1.share")), None);
    }
}
