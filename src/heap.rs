//! The process heap: how many bytes it holds, and handing freed memory back to the OS.
//!
//! The allocator is jemalloc (the `jemalloc` feature, on by default; set in `lib.rs`), whose
//! statistics are what the memory ceiling measures ([`crate::memory`]). Built without it, the
//! system allocator runs, nothing is measured, and freed memory goes back by glibc's
//! `malloc_trim`.
//!
//! A store that shrank (expiry, a tombstone purge, keys handed to new owners) leaves its freed
//! pages in the allocator; without a purge the process keeps its peak RSS.

/// Bytes the process's live allocations hold, as the allocator counts them (jemalloc's
/// `stats.allocated`, refreshed by advancing its statistics epoch); `None` without jemalloc.
pub fn allocated() -> Option<u64> {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        stats::allocated::read().ok().map(|b| b as u64)
    }
    #[cfg(not(feature = "jemalloc"))]
    {
        None
    }
}

/// Returns the allocator's free pages to the OS: jemalloc purges every arena's dirty pages
/// (`arena.<all>.purge`), glibc trims (`malloc_trim`). Without it a process keeps its peak RSS
/// after a sweep or purge freed much memory (it reuses it, but other processes cannot).
pub fn release_free_memory() {
    #[cfg(feature = "jemalloc")]
    {
        // MALLCTL_ARENAS_ALL (4096) names every arena at once. The control takes and gives
        // nothing, and jemalloc refuses it (EPERM) if given a buffer, so it is called raw.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: the name is NUL-terminated, and null pointers with length 0 are how a
        // control of type void is called: jemalloc reads and writes no buffer.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            tracing::debug!(rc, "jemalloc purge failed");
        }
    }
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions: it only walks the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
