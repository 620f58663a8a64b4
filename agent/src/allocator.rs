//! Gives the memory a burst of callers used back to the system. glibc's allocator returns
//! freed memory only from the top of each arena, so after a hostile caller's thousand streams
//! are gone their pages stay resident (tens of MB) below memory still in use. `malloc_trim`
//! releases every free page of every arena; the endpoints call [`release_free_memory`] when
//! a burst of connections has ended.

/// Asks glibc to return its free pages to the system; `false` where there is no glibc
/// (musl and the rest return memory themselves) or nothing was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own free lists, under
    // the arenas' locks; it is safe to call from any thread at any time. No safe wrapper of
    // it exists in a well-kept crate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks glibc to return its free pages to the system; `false` where there is no glibc
/// (musl and the rest return memory themselves) or nothing was released.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}
