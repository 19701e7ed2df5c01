//! The process heap: handing freed memory back to the operating system.
//!
//! A store that shrank (expiry, a tombstone purge, keys handed to new owners) leaves its freed
//! pages in the allocator; without a trim the process keeps its peak RSS.

/// Asks glibc's allocator to return its free pages to the OS (`malloc_trim`). Without it, a
/// process keeps its peak RSS after a sweep or purge freed much memory (it reuses it, but
/// other processes cannot).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and has no preconditions: it only walks the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
