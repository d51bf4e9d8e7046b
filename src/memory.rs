//! How the long-running servers (`run-operator`, `serve-grpc`) use glibc's allocator.
//!
//! Measured with `benches/operator.rs` (BENCHMARKS.md): with glibc's defaults most of the
//! operator's resident memory was free heap the allocator kept, not live objects. Two defaults
//! cause it: every thread that allocates gets its own arena (tokio's workers and the blocking
//! pool that builds the inventory), each keeping its own free holes, and after a large block is
//! freed (a page of the initial list) glibc raises its mmap and trim thresholds, so later large
//! blocks come from the heap and are never given back. Fixing the thresholds and using one arena
//! keeps the heap close to what is live; what the initial lists leave behind is given back once
//! ([`release_free_memory`]).
//!
//! A `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment
//! wins: the settings here are applied only when none of them is set.

/// One arena: the process mostly waits, so contention on it is rare, while every further arena
/// holds its own free holes (2,000 machines: 22 MiB anonymous with one, 28 MiB with two; the
/// IncreaseSize latency was no worse; BENCHMARKS.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;
/// Blocks at least this big are mmapped and unmapped when freed (glibc's initial default, kept
/// fixed instead of growing after the first large free).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
/// Free memory at the top of the heap beyond this goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 256 * 1024;

/// Applies the settings above. Call before any thread is started (first thing in `main`).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_env = [
            "MALLOC_ARENA_MAX",
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
        if set_by_env {
            return;
        }
        // SAFETY: mallopt only changes the allocator's parameters; it is called before other
        // threads exist, and a refused value (return 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

/// Gives free heap pages back to the system (glibc's `malloc_trim`). For after a burst of
/// short-lived allocations that left holes in the heap, such as reading the initial lists of
/// thousands of objects: glibc only gives back free memory at the top of the heap by itself.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns whole free pages of the allocator's own arenas to the
    // kernel (madvise); it is thread-safe and never touches memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
