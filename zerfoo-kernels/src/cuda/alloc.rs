//! The caching allocator's bookkeeping, separate from the driver calls so it
//! is testable anywhere: free lists keyed by rounded size. A freed buffer
//! goes back to its list; an allocation of the same rounded size takes it
//! back instead of calling the driver. [`CudaDevice`](super::CudaDevice)
//! holds one [`Pool`] of raw device allocations.

use std::collections::HashMap;

/// Requests up to this size are rounded up to a multiple of [`SMALL_STEP`].
pub const SMALL_LIMIT: usize = 1 << 20;
/// Granularity of small allocations (bytes).
pub const SMALL_STEP: usize = 512;
/// Granularity of large allocations (bytes).
pub const LARGE_STEP: usize = 2 << 20;

/// The size class of a request of `bytes`: at least [`SMALL_STEP`], a
/// multiple of [`SMALL_STEP`] up to [`SMALL_LIMIT`], of [`LARGE_STEP`] above.
///
/// ```
/// use zerfoo_kernels::cuda::round_size;
/// assert_eq!(round_size(0), 512);
/// assert_eq!(round_size(513), 1024);
/// assert_eq!(round_size(3 << 20), 4 << 20);
/// ```
pub fn round_size(bytes: usize) -> usize {
    if bytes <= SMALL_LIMIT {
        bytes.max(1).next_multiple_of(SMALL_STEP)
    } else {
        bytes.next_multiple_of(LARGE_STEP)
    }
}

/// Counters of a [`Pool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Allocations served from a free list.
    pub hits: u64,
    /// Allocations that needed a new block from the driver.
    pub misses: u64,
    /// Bytes held in free lists.
    pub cached_bytes: usize,
    /// Bytes handed out and not yet returned.
    pub live_bytes: usize,
}

/// Free lists of blocks `B` by size class.
#[derive(Debug)]
pub struct Pool<B> {
    free: HashMap<usize, Vec<B>>,
    stats: PoolStats,
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Pool {
            free: HashMap::new(),
            stats: PoolStats::default(),
        }
    }
}

impl<B> Pool<B> {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cached block of size class `class` (a [`round_size`] result), if
    /// any; counts a hit or a miss. The caller allocates a new block on
    /// `None` and reports it with [`Pool::note_new`].
    pub fn take(&mut self, class: usize) -> Option<B> {
        let b = self.free.get_mut(&class).and_then(Vec::pop);
        if b.is_some() {
            self.stats.hits += 1;
            self.stats.cached_bytes -= class;
            self.stats.live_bytes += class;
        } else {
            self.stats.misses += 1;
        }
        b
    }

    /// Records that a new block of `class` bytes was handed out.
    pub fn note_new(&mut self, class: usize) {
        self.stats.live_bytes += class;
    }

    /// Returns a block of size class `class` to its free list.
    pub fn give(&mut self, class: usize, block: B) {
        self.free.entry(class).or_default().push(block);
        self.stats.cached_bytes += class;
        self.stats.live_bytes = self.stats.live_bytes.saturating_sub(class);
    }

    /// Empties every free list, returning the blocks (to be freed).
    pub fn drain(&mut self) -> Vec<B> {
        self.stats.cached_bytes = 0;
        self.free.drain().flat_map(|(_, v)| v).collect()
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes() {
        assert_eq!(round_size(1), 512);
        assert_eq!(round_size(512), 512);
        assert_eq!(round_size(4 * 1000), 4096);
        assert_eq!(round_size(SMALL_LIMIT), SMALL_LIMIT);
        assert_eq!(round_size(SMALL_LIMIT + 1), LARGE_STEP);
        assert_eq!(round_size(LARGE_STEP + 1), 2 * LARGE_STEP);
        for b in [0, 7, 511, 100_000, 1 << 20, 5 << 20, 123_456_789] {
            let r = round_size(b);
            assert!(r >= b && round_size(r) == r);
        }
    }

    #[test]
    fn same_size_allocations_reuse_blocks() {
        let mut p: Pool<u32> = Pool::new();
        let c = round_size(1000);
        assert_eq!(p.take(c), None);
        p.note_new(c);
        p.give(c, 7);
        assert_eq!(p.stats().cached_bytes, c);
        assert_eq!(p.stats().live_bytes, 0);
        // a request of another size in the same class gets the block back
        assert_eq!(p.take(round_size(700)), Some(7));
        assert_eq!(p.take(round_size(5000)), None);
        let s = p.stats();
        assert_eq!(
            (s.hits, s.misses, s.cached_bytes, s.live_bytes),
            (1, 2, 0, c)
        );
        p.give(c, 7);
        p.give(round_size(5000), 9);
        let mut all = p.drain();
        all.sort();
        assert_eq!(all, vec![7, 9]);
        assert_eq!(p.stats().cached_bytes, 0);
        assert_eq!(p.take(c), None);
    }
}
