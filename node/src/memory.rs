//! Process memory: resident-size readout and glibc allocator tuning.
//!
//! Ingest decodes multi-megabyte requests on every worker thread. With
//! glibc's defaults (a dynamic mmap threshold that climbs to 32 MiB and up
//! to 8 arenas per core) those buffers land in per-thread heaps that keep
//! the freed pages, and resident memory after a bulk load measured 1.5x the
//! live data (docs/benchmarks.md). [`tune_allocator`] fixes the mmap
//! threshold (large buffers go back to the OS when freed) and caps arenas;
//! [`release_free_memory`] returns what fragmentation still holds, and the
//! server calls it periodically after writes.

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// Allocations at least this large are served by mmap and unmapped on free.
pub const MMAP_THRESHOLD: usize = 256 << 10;

/// Sets glibc's mmap threshold and arena cap. Call once at startup, before
/// threads are spawned. A no-op on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        // SAFETY: mallopt only changes allocator parameters; both values are
        // in their documented ranges.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
        }
    }
}

/// Returns free heap pages to the OS.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
