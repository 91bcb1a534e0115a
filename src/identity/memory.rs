//! Giving the memory of a processing run back to the system.
//!
//! A run over everyone holds a profile's accounts and identities at once,
//! hundreds of MiB in millions of small blocks. Allocators keep what is
//! freed for the process to reuse, so without help the operator's resident
//! memory stays near the run's peak long after it:
//! `benches/identities.rs` prints the memory after each run with this.

/// Returns the allocator's free memory to the system. The operator's
/// binary allocates with mimalloc (`src/main.rs`), which keeps freed pages
/// in its segments for a while: collect them now. Tests and tools that link
/// this library without it allocate with glibc's malloc, whose arenas keep
/// freed memory until trimmed: trim them too (elsewhere, nothing to do:
/// musl returns large blocks itself). Each call is cheap where its
/// allocator holds nothing.
pub fn release_freed() {
    // SAFETY: mi_collect takes no pointers; it frees mimalloc's own free
    // pages under its own locks and may be called from any thread.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            /// glibc: releases free memory at the top of the heap and, since
            /// 2.8, whole free pages inside every arena.
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and only touches the
        // allocator's own free lists, under the allocator's locks; it is
        // safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}
