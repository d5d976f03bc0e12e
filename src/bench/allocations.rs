//! Counting allocations, for a bench binary that installs [`CountingAllocator`].

use std::sync::atomic::{AtomicU64, Ordering};

/// A global allocator that counts allocations and the bytes they ask for, then
/// lets the system allocator do the work. A library cannot install one itself:
/// a bench binary does, with
///
/// ```
/// #[global_allocator]
/// static ALLOCATOR: swarmexec::bench::CountingAllocator = swarmexec::bench::CountingAllocator;
/// ```
///
/// Without it, the bench reports allocations as "not counted", never as 0.
/// Counts are of every thread (the executor's, the pool's): what a step costs
/// the process, not only its caller.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Counts one allocation of `bytes` (called by the allocator).
pub(super) fn record(bytes: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// The counts so far, or `None` when [`CountingAllocator`] is not the global
/// allocator of this program (found by allocating once and looking).
pub(crate) fn snapshot() -> Option<Allocations> {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    std::hint::black_box(Box::new(0u64));
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    (after > before).then(|| Allocations {
        count: after,
        bytes: BYTES.load(Ordering::Relaxed),
    })
}

/// Allocation counts: at a moment, or between two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Allocations {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

impl Allocations {
    /// What was counted from `earlier` to `self` (the probe allocation of a
    /// snapshot left out).
    pub(crate) fn since(self, earlier: Allocations) -> Allocations {
        Allocations {
            count: self.count.saturating_sub(earlier.count).saturating_sub(1),
            bytes: self.bytes.saturating_sub(earlier.bytes).saturating_sub(8),
        }
    }
}
