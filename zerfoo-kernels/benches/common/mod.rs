//! What the benchmarks share.

/// Keeps freed memory in the heap (glibc), as `zerfoo::retain_freed_memory`
/// does for training: each product's result is then not fresh pages to
/// fault in, which would dominate the large shapes' times.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only changes allocator settings (M_MMAP_THRESHOLD,
        // M_TRIM_THRESHOLD), with values in glibc's documented ranges.
        unsafe {
            mallopt(-3, 32 << 20);
            mallopt(-1, i32::MAX);
        }
    }
}
