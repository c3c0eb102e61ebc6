//! Keeping what different cores write apart.
//!
//! Two workers checking connections out of one pool write the pool's lock,
//! its histograms and the `Arc`'s reference count. When any of those share a
//! cache line with each other or with the read-only settings every checkout
//! reads, each write by one core evicts that line from the other's cache,
//! and the pool runs at the speed of the interconnect instead of the core.

use std::ops::Deref;

/// `T` alone on its cache line(s). 128 bytes: Intel's adjacent-line
/// prefetcher pulls lines in pairs, so 64 is not enough there.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A small number fixed per thread, for picking a shard of a striped
/// counter: threads get consecutive numbers, so a runtime's few workers land
/// on different shards.
#[inline]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const UNSET: usize = usize::MAX;
    // Const-initialised: reading it needs no lazy-init check.
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(UNSET) };
    }
    INDEX.with(|index| {
        let mut i = index.get();
        if i == UNSET {
            i = NEXT.fetch_add(1, Ordering::Relaxed) & (UNSET >> 1);
            index.set(i);
        }
        i
    })
}

/// How many shards a striped counter gets: one per core, as a power of two
/// so a mask picks one, and at most 8 to bound the memory.
pub(crate) fn shard_count() -> usize {
    use std::sync::OnceLock;
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(8)
            .next_power_of_two()
    })
}
