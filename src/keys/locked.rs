//! `locked` keeps private keys out of swap, core dumps and other processes:
//! the process is made non-dumpable with RLIMIT_CORE = 0, and each signing
//! key lives alone in a page-aligned heap page that is mlock'ed and marked
//! MADV_DONTDUMP. The one `unsafe` block of the crate that touches memory
//! is here.
#![allow(unsafe_code)]

use ed25519_dalek::SigningKey;

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
    key: SigningKey,
}

const _: () = assert!(std::mem::size_of::<KeyPage>() == PAGE);

/// A signing key in its own locked, undumpable page. Dropping it wipes the
/// key (dalek's `ZeroizeOnDrop`) and then unlocks the page.
pub struct LockedKey {
    page: Box<KeyPage>,
    locked: bool,
}

/// Compile-time check that the key type wipes itself.
fn _assert_zeroize_on_drop<T: zeroize::ZeroizeOnDrop>() {}
const _: fn() = _assert_zeroize_on_drop::<SigningKey>;

impl LockedKey {
    /// Move `key` into a fresh page and lock it. Returns the key and, when
    /// the page could not be locked (RLIMIT_MEMLOCK), the OS error.
    ///
    /// The `SigningKey` value passed in is moved (a memcpy); the stack slot
    /// it came from is not ours to wipe, which is why callers build keys
    /// right before this call and nowhere else.
    pub fn new(key: SigningKey) -> (LockedKey, Option<std::io::Error>) {
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

    pub fn key(&self) -> &SigningKey {
        &self.page.key
    }

    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        // Wipe before unlocking, so the bytes never reach swap.
        use zeroize::Zeroize;
        let mut wipe = [0u8; 32];
        self.page.key = SigningKey::from_bytes(&wipe);
        wipe.zeroize();
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
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let pk = key.verifying_key();
        let (locked, _err) = LockedKey::new(key);
        assert_eq!((&*locked.page as *const KeyPage as usize) % PAGE, 0);
        assert_eq!(locked.key().verifying_key(), pk);
        assert_eq!(format!("{locked:?}"), "LockedKey([redacted])");
    }
}
