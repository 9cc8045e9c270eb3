//! The process's memory as the memory-pressure watch sees it: resident bytes (read with the
//! kernel's page size, which is 64 KiB on some arm64 kernels, not always 4 KiB), and giving
//! freed memory back to the system.
//!
//! glibc's allocator keeps what the program frees for reuse, so after a spike ends (a burst
//! of large messages, a flood of connections that closed) resident memory stays at the
//! peak. A watch that compares that to a threshold would refuse upgrades for as long as the
//! process lives. [`give_back`] asks the allocator to return its free pages
//! (`malloc_trim(0)`: every arena, not only the top of the heap), so that resident memory
//! is again what the process uses. It walks the allocator's free lists holding each arena's
//! lock in turn, so it is called only when resident memory is at the threshold, not on
//! every tick.
//!
//! The only `unsafe` in the crate is here: a call into glibc that takes no pointers.
//!
//! Must not depend on anything else in the crate.

/// The process's resident memory, in bytes; `None` where `/proc` cannot be read.
#[must_use]
pub fn resident_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
        Some(statm.resident * procfs::page_size())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Returns the allocator's free pages to the system; whether any were returned. Does
/// nothing off glibc (musl and the other systems' allocators return memory themselves).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "malloc_trim is a glibc call with no safe wrapper in libc"
)]
pub fn give_back() -> bool {
    // SAFETY: `malloc_trim` takes no pointers and no caller-side invariants; glibc
    // serializes it with every other allocator call (it is MT-Safe).
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the allocator's free pages to the system: nothing to do here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[must_use]
pub fn give_back() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a spike of freed allocations leaves resident goes back to the system.
    #[test]
    fn freed_memory_is_given_back() {
        let before = resident_bytes().expect("Linux reports resident memory");
        // 4,096 blocks of 64 KiB, below glibc's mmap threshold: they come from an arena,
        // which keeps them when freed.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|n| vec![n as u8; 64 * 1024]).collect();
        let during = resident_bytes().unwrap();
        assert!(during > before + 200 * 1024 * 1024, "{before} -> {during}");
        drop(blocks);
        give_back();
        let after = resident_bytes().unwrap();
        assert!(
            after < during - 200 * 1024 * 1024,
            "resident memory stayed at {after} after {during}"
        );
    }
}
