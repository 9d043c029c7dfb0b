//! `locked` keeps private keys out of swap, core dumps and other processes:
//! the process is made non-dumpable with RLIMIT_CORE = 0, and each signing
//! key lives alone in a page-aligned heap page that is mlock'ed and marked
//! MADV_DONTDUMP. The one `unsafe` block of the crate that touches memory
//! is here.
#![allow(unsafe_code)]

use crate::keys::SecretKey;

/// Make the process non-dumpable (no ptrace from the same uid, no
/// /proc/PID/mem) and forbid core files. Fails closed.
pub fn harden_process() -> crate::error::Result<()> {
    harden().map_err(|e| {
        crate::error::Error::KeyStore(format!("cannot make the process non-dumpable: {e}"))
    })
}

fn harden() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    // Under systemd LimitCORE=0 has already done it, and a seccomp filter
    // may refuse the call: only set what is not set.
    let core = rustix::process::getrlimit(Resource::Core);
    if core.current == Some(0) && core.maximum == Some(0) {
        return Ok(());
    }
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    Ok(())
}

const PAGE: usize = 4096;

/// One page that holds nothing but a signing key.
#[repr(C, align(4096))]
struct KeyPage {
    key: SecretKey,
}

const _: () = assert!(std::mem::size_of::<KeyPage>() == PAGE);

/// A signing key in its own locked, undumpable page. Dropping it wipes the
/// key (both key types are `ZeroizeOnDrop`, see `algorithm`) and then
/// unlocks the page.
pub struct LockedKey {
    page: Box<KeyPage>,
    locked: bool,
}

impl LockedKey {
    /// Move `key` into a fresh page and lock it. Returns the key and, when
    /// the page could not be locked (RLIMIT_MEMLOCK), the OS error.
    ///
    /// The `SecretKey` value passed in is moved (a memcpy); the stack slot
    /// it came from is not ours to wipe, which is why callers build keys
    /// right before this call and nowhere else.
    pub fn new(key: SecretKey) -> (LockedKey, Option<std::io::Error>) {
        let mut page = Box::new(KeyPage { key });
        let ptr = (&mut *page as *mut KeyPage).cast::<std::ffi::c_void>();
        // SAFETY: `ptr` is the start of a live, page-aligned allocation of
        // exactly PAGE bytes owned by `page`; mlock and madvise only change
        // how the kernel treats those pages, not their contents.
        let lock = unsafe { rustix::mm::mlock(ptr, PAGE) };
        // SAFETY: as above; MADV_DONTDUMP is advisory and touches no data.
        let _ = unsafe { rustix::mm::madvise(ptr, PAGE, rustix::mm::Advice::LinuxDontDump) };
        let locked = lock.is_ok();
        (LockedKey { page, locked }, lock.err().map(Into::into))
    }

    pub fn key(&self) -> &SecretKey {
        &self.page.key
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        // Wipe before unlocking, so the bytes never reach swap: the
        // assignment drops the key in place (its own wipe), and what takes
        // its place is the all-zero Ed25519 seed.
        self.page.key = SecretKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[0u8; 32]));
        if self.locked {
            let ptr = (&mut *self.page as *mut KeyPage).cast::<std::ffi::c_void>();
            // SAFETY: the page is still owned by `self.page` and was locked
            // by `new`.
            let _ = unsafe { rustix::mm::munlock(ptr, PAGE) };
        }
    }
}

impl std::fmt::Debug for LockedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_page_is_page_aligned_and_usable() {
        for kt in [crate::keys::KeyType::Ed25519, crate::keys::KeyType::P256] {
            let key = SecretKey::from_secret(kt, &[9u8; 32]).unwrap();
            let pk = key.public_key();
            let (locked, _err) = LockedKey::new(key);
            assert_eq!((&*locked.page as *const KeyPage as usize) % PAGE, 0);
            assert_eq!(locked.key().public_key(), pk);
        }
        let key = SecretKey::from_secret(crate::keys::KeyType::Ed25519, &[9u8; 32]).unwrap();
        let (locked, _err) = LockedKey::new(key);
        assert_eq!(format!("{locked:?}"), "LockedKey([redacted])");
    }
}
