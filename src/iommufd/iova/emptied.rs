//! Places where unmaps may have left empty tables they could not free themselves, kept until a
//! sweep frees them (by default the unmap that notes the [`PENDING_PRUNES`]th sweeps). The
//! object model's IOVA space ([`IovaSpace`](super::IovaSpace)) and the DMA API's allocator
//! ([`IovaAllocator`](crate::dma::iova::IovaAllocator)) note them alike.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroUsize;

use crate::sync::{AtomicBool, Mutex, Ordering};

/// How many places a domain's unmaps may leave tables empty (larger than their stripes, or any
/// after a deferred unmap) before one of them sweeps (see
/// [`Iommu::unmap`](crate::iommufd::Iommu::unmap)), unless the embedder chose another number
/// ([`Iommu::set_sweep_threshold`](crate::iommufd::Iommu::set_sweep_threshold)): each place
/// keeps at most the tables on one path, so a domain holds at most this many paths' worth of
/// empty tables beyond what its mappings need.
pub const PENDING_PRUNES: usize = 8;

/// log2 of the span one noted place stands for: 2 MiB, the smallest table's (a 4 KiB granule's
/// leaf table) and the object model's stripe. A second place in the same block adds nothing.
const BLOCK_SHIFT: u32 = 21;

/// The noted places, at most one per 2 MiB block.
pub(crate) struct Emptied {
    places: Mutex<Vec<u64>>,
    /// How many places make a sweep due: [`PENDING_PRUNES`] unless the embedder chose.
    threshold: usize,
    /// Whether `threshold` places are noted: a hint, so that the common unmap asks without the
    /// lock. Set and cleared under the lock, which orders the places themselves; read
    /// `Relaxed`: a stale `false` delays the sweep to a later unmap, a stale `true` makes the
    /// sweep find fewer places (or none). A CPU reads its own store or a later one, so the
    /// unmap that notes the threshold-th place sees the sweep due, unless another CPU's sweep
    /// took the places meanwhile.
    due: AtomicBool,
}

impl fmt::Debug for Emptied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emptied")
            .field("due", &self.due())
            .finish_non_exhaustive()
    }
}

impl Emptied {
    /// None noted.
    pub(crate) fn new() -> Self {
        Self {
            places: Mutex::new(Vec::new()),
            threshold: PENDING_PRUNES,
            due: AtomicBool::new(false),
        }
    }

    /// Makes a sweep due once `places` places are noted (1: at every note).
    pub(crate) fn set_threshold(&mut self, places: NonZeroUsize) {
        self.threshold = places.get();
        let noted = self.places.lock();
        self.due
            .store(noted.len() >= self.threshold, Ordering::Relaxed);
    }

    /// Notes `at`, unless a place in its 2 MiB block already is.
    pub(crate) fn note(&self, at: u64) {
        let mut places = self.places.lock();
        if !places
            .iter()
            .any(|&p| p >> BLOCK_SHIFT == at >> BLOCK_SHIFT)
        {
            places.push(at);
        }
        if places.len() >= self.threshold {
            self.due.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `threshold` places wait for a sweep (a hint: see the field `due`).
    pub(crate) fn due(&self) -> bool {
        self.due.load(Ordering::Relaxed)
    }

    /// Takes every noted place.
    pub(crate) fn take(&self) -> Vec<u64> {
        let mut places = self.places.lock();
        self.due.store(false, Ordering::Relaxed);
        core::mem::take(&mut *places)
    }

    /// The noted places, in the order noted.
    #[cfg(test)]
    pub(crate) fn noted(&self) -> Vec<u64> {
        self.places.lock().clone()
    }
}
