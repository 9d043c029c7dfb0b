//! `memory` tunes the allocator for a long-running daemon whose
//! connections come and go: large buffers from `mmap`, freed memory given
//! back to the OS. The `unsafe` here is two libc calls.
#![allow(unsafe_code)]

/// Give memory that the allocator holds free back to the OS (glibc keeps
/// freed blocks in its per-thread arenas; after a burst of large
/// connections the process would keep their peak size for good). A no-op
/// where the allocator is not glibc's.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists and
    // advises the kernel about free pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Have the allocator take blocks of 64 KiB and more (a connection's
/// buffers after a large request or a burst of replies) from `mmap`, so that
/// freeing them returns them to the OS at once instead of leaving holes in
/// the heap that long-lived small allocations pin. (glibc's default
/// threshold is 128 KiB and rises with use.) Fixing it also fixes glibc's
/// trim threshold, at 128 KiB, which would shrink and regrow the heap on
/// the request path; it is raised instead, since [`release_free_memory`]
/// runs every few seconds. A no-op where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
    }
}
