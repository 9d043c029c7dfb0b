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
/// runs every few seconds. And one arena for every thread: a connection's
/// task runs on whichever thread holds a runtime worker, and a worker moves
/// to another thread whenever a connection commits its own audit record
/// (`block_in_place`), so with an arena per thread the long-lived
/// allocations of idle connections end up spread over many arenas, each
/// with its own partly used pages. 1,000 idle connections cost 19 KiB
/// each above a fresh daemon with one arena, 29-33 KiB with glibc's
/// default of eight per core, 38-45 KiB with two. The price, measured side
/// by side: sign and verify at 16×32 at 0.96-1.0 of the default (most
/// small allocations come from the thread's cache and never take the
/// arena's lock). A no-op where the allocator is not glibc's.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
