//! Giving the memory of a processing run back to the system.
//!
//! A run over everyone holds a profile's accounts and identities at once,
//! hundreds of MiB in millions of small blocks. glibc's allocator keeps what
//! is freed in its arenas for the process to reuse, so without help the
//! operator's resident memory stays at the run's peak until it exits:
//! `benches/identities.rs` prints the memory after each run with this.

/// Returns the allocator's free memory to the system, where the allocator
/// is glibc's (elsewhere, nothing to do: musl returns large blocks itself).
pub fn release_freed() {
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
