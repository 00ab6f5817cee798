//! IOVA allocation for the DMA API: size-aligned ranges inside a domain's windows and outside
//! its reserved regions, below a device's DMA limit.
//!
//! Two layers, as in Linux's IOVA caches:
//! - the *range allocator* beneath: the free ranges in order, one lock. An allocation takes the
//!   highest size-aligned range below the limit (top-down, which keeps the low addresses for
//!   devices with narrow masks); a free gives the range back and merges it with its neighbours.
//! - *per-CPU magazines* above, for the sizes drivers use most (4 KiB to 128 KiB, powers of
//!   two): a CPU frees into its own magazine and allocates from it, so the common map/unmap
//!   touches only its own lock. A full magazine goes to a shared depot, an empty one is refilled
//!   from it, and a miss in both takes a whole magazine's worth from the range allocator in one
//!   aligned block (so two CPUs' mappings lie in blocks of their own, apart in the page table).
//!
//! An IOVA in a magazine is still allocated as far as the range allocator knows: it can only be
//! handed out again from a magazine, never twice at once. [`IovaAllocator::drain`] gives every
//! cached IOVA back (teardown, or before asking for a large range the caches may be holding).
//!
//! *Pruning.* Where IOVAs come back into the ranges, the tables that mapped them may have
//! emptied: the places are noted (once per 2 MiB block), and once
//! [`PENDING_PRUNES`](crate::iommufd::PENDING_PRUNES) are, [`IovaAllocator::prune`] hands each
//! still free with its free range to the caller, which frees
//! the empty tables inside ([`TranslationUnit::prune_tables`](crate::unit::TranslationUnit::prune_tables)).
//! Every IOVA the handle maps comes out of the ranges under their lock, so while `prune` holds
//! it nothing is mapped inside a free range, and nothing there is unmapped (nothing is mapped):
//! the caller may treat the free ranges as its own. IOVAs in magazines are allocated as far as
//! the ranges know, so the tables of cached IOVAs stay, ready for their reuse.
//!
//! Locks are taken in the order CPU magazine → depot → ranges, never the other way, and none is
//! held across anything but this module's bookkeeping, except the ranges' across `prune`'s
//! unit call (which waits only for the unit, whose waits are bounded).
//!
//! The allocator trusts its caller on frees (the address and size of a live allocation): the
//! DMA API above only frees what the object model's `unmap` confirmed was mapped.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::iommufd::{Emptied, Layout};
use crate::ranges::FreeRanges;
use crate::sync::Mutex;

/// The page size allocations are made of.
pub const PAGE: u64 = 4096;
/// Size classes the magazines cache: 4 KiB << 0..CLASSES (4 KiB to 128 KiB).
const CLASSES: usize = 6;
/// IOVAs a magazine holds.
const MAGAZINE: usize = 32;
/// Full magazines the depot keeps per class before giving IOVAs back to the ranges.
const DEPOT: usize = 8;

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaError {
    /// `size` is zero, or too large to align (beyond 2^63).
    BadSize,
    /// No free, aligned range of that size below the limit.
    Exhausted,
    /// The CPU index is not below the number of CPUs the allocator was made for.
    UnknownCpu(usize),
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSize => f.write_str("IOVA size zero or too large"),
            Self::Exhausted => f.write_str("no free IOVA range of that size below the limit"),
            Self::UnknownCpu(c) => write!(f, "CPU {c} beyond the allocator's CPUs"),
        }
    }
}

impl core::error::Error for IovaError {}

/// Up to [`MAGAZINE`] IOVAs of one size class.
#[derive(Debug, Default)]
struct Magazine {
    iovas: Vec<u64>,
}

impl Magazine {
    fn is_full(&self) -> bool {
        self.iovas.len() >= MAGAZINE
    }

    /// One IOVA below `limit`, if the magazine holds one.
    fn pop_below(&mut self, limit: u64, size: u64) -> Option<u64> {
        let i = self.iovas.iter().rposition(|&v| v + size <= limit)?;
        Some(self.iovas.swap_remove(i))
    }
}

/// One CPU's magazines, one per size class.
#[derive(Debug, Default)]
struct CpuCache {
    loaded: [Magazine; CLASSES],
}

/// One CPU's magazines on a cache line (pair) of their own: CPUs never share the line they
/// lock on the fast path.
#[repr(align(128))]
struct PerCpu(Mutex<CpuCache>);

/// IOVAs for one domain's DMA mappings. See the [module docs](self).
pub struct IovaAllocator {
    ranges: Mutex<FreeRanges>,
    /// Where IOVAs came back into the ranges since the last prune: the ends of each range
    /// given back (the tables between them the range covers, which its unmap freed). Noted
    /// and taken under the ranges' lock.
    emptied: Emptied,
    cpus: Vec<PerCpu>,
    depot: Mutex<[Vec<Magazine>; CLASSES]>,
}

impl fmt::Debug for IovaAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaAllocator")
            .field("cpus", &self.cpus.len())
            .finish_non_exhaustive()
    }
}

/// The size class of `size` (a page-multiple power of two up to 128 KiB), if cached.
fn class(size: u64) -> Option<usize> {
    if !size.is_power_of_two() || size < PAGE {
        return None;
    }
    let c = (size / PAGE).trailing_zeros() as usize;
    (c < CLASSES).then_some(c)
}

/// The size an allocation of `len` bytes takes: whole pages, rounded up to a power of two (its
/// alignment too, so a buffer never straddles a boundary of its own size).
pub fn allocation_size(len: u64) -> Result<u64, IovaError> {
    if len == 0 {
        return Err(IovaError::BadSize);
    }
    len.checked_next_power_of_two()
        .map(|s| s.max(PAGE))
        .ok_or(IovaError::BadSize)
}

impl IovaAllocator {
    /// An allocator over `layout`'s windows minus its reserved regions (each clipped to whole
    /// pages inward), for `cpus` CPUs (at least one).
    pub fn new(layout: &Layout<'_>, cpus: usize) -> Self {
        let mut ranges = FreeRanges::new();
        for w in layout.windows {
            let start = w.start.next_multiple_of(PAGE);
            let end = w.last.saturating_add(1) & !(PAGE - 1);
            if start < end {
                ranges.give(start, end - start);
            }
        }
        for r in layout.reserved {
            // Widened to whole pages.
            let end = r.region.last.saturating_add(1).next_multiple_of(PAGE);
            ranges.carve(r.region.start & !(PAGE - 1), end);
        }
        Self {
            ranges: Mutex::new(ranges),
            emptied: Emptied::new(),
            cpus: (0..cpus.max(1))
                .map(|_| PerCpu(Mutex::new(CpuCache::default())))
                .collect(),
            depot: Mutex::new(Default::default()),
        }
    }

    /// An IOVA for `len` bytes ([`allocation_size`] of them, aligned to that size) ending at
    /// or below `limit` (a device's DMA mask plus one; `u64::MAX` for none), for CPU `cpu`.
    pub fn alloc(&self, cpu: usize, len: u64, limit: u64) -> Result<u64, IovaError> {
        let size = allocation_size(len)?;
        let cache = self.cpus.get(cpu).ok_or(IovaError::UnknownCpu(cpu))?;
        if let Some(c) = class(size) {
            if let Some(iova) = cache.0.lock().loaded[c].pop_below(limit, size) {
                return Ok(iova);
            }
            // Refill from the depot: a full magazine, if one has an IOVA below the limit.
            let mut depot = self.depot.lock();
            if let Some(i) = depot[c]
                .iter()
                .position(|m| m.iovas.iter().any(|&v| v + size <= limit))
            {
                let mut full = depot[c].swap_remove(i);
                drop(depot);
                let iova = full.pop_below(limit, size);
                let mut mine = cache.0.lock();
                let old = core::mem::replace(&mut mine.loaded[c], full);
                drop(mine);
                self.stash(c, old);
                if let Some(iova) = iova {
                    return Ok(iova);
                }
            }
        }
        if let Some(iova) = self.refill(cache, size, limit) {
            return Ok(iova);
        }
        if let Some(iova) = self.ranges.lock().take_below(size, size, limit) {
            return Ok(iova);
        }
        // The caches may hold what the ranges lack (other sizes, other CPUs): give them back
        // and try once more.
        self.drain();
        self.ranges
            .lock()
            .take_below(size, size, limit)
            .ok_or(IovaError::Exhausted)
    }

    /// For a cached size: a whole magazine's worth of IOVAs in one aligned block from the
    /// ranges, one returned and the rest loaded into this CPU's (empty) magazine. CPUs then
    /// work in blocks of their own, so their mappings do not share leaf-table cache lines.
    fn refill(&self, cache: &PerCpu, size: u64, limit: u64) -> Option<u64> {
        let c = class(size)?;
        let block = size * MAGAZINE as u64;
        let base = self.ranges.lock().take_below(block, block, limit)?;
        let mut mine = cache.0.lock();
        let magazine = &mut mine.loaded[c];
        if !magazine.iovas.is_empty() {
            // Another call on this CPU refilled it meanwhile (an interrupt handler): give the
            // block back rather than lose the IOVAs already there (never mapped: no note).
            drop(mine);
            self.ranges.lock().give(base, block);
            return None;
        }
        // The top one now, the rest in order (the highest popped first): top-down, as the
        // ranges would have handed them out.
        let top = MAGAZINE as u64 - 1;
        magazine.iovas.extend((0..top).map(|i| base + i * size));
        Some(base + top * size)
    }

    /// Gives back an IOVA `alloc` returned for `len` bytes, from CPU `cpu` (any CPU may free
    /// what another allocated).
    pub fn free(&self, cpu: usize, iova: u64, len: u64) -> Result<(), IovaError> {
        let size = allocation_size(len)?;
        let cache = self.cpus.get(cpu).ok_or(IovaError::UnknownCpu(cpu))?;
        if let Some(c) = class(size) {
            let mut mine = cache.0.lock();
            if !mine.loaded[c].is_full() {
                mine.loaded[c].iovas.push(iova);
                return Ok(());
            }
            // Full: it goes to the depot and this CPU starts a new one.
            let full = core::mem::take(&mut mine.loaded[c]);
            mine.loaded[c].iovas.push(iova);
            drop(mine);
            self.stash(c, full);
            return Ok(());
        }
        self.give_back(&mut self.ranges.lock(), iova, size);
        Ok(())
    }

    /// Puts magazine `m` of class `c` in the depot, or its IOVAs back in the ranges when the
    /// depot is full.
    fn stash(&self, c: usize, m: Magazine) {
        if m.iovas.is_empty() {
            return;
        }
        let mut depot = self.depot.lock();
        if depot[c].len() < DEPOT {
            depot[c].push(m);
            return;
        }
        drop(depot);
        let size = PAGE << c;
        let mut ranges = self.ranges.lock();
        for iova in m.iovas {
            self.give_back(&mut ranges, iova, size);
        }
    }

    /// Gives every cached IOVA back to the ranges.
    pub fn drain(&self) {
        let mut back: Vec<(u64, u64)> = Vec::new();
        for cache in &self.cpus {
            let mut mine = cache.0.lock();
            for (c, m) in mine.loaded.iter_mut().enumerate() {
                back.extend(m.iovas.drain(..).map(|v| (v, PAGE << c)));
            }
        }
        {
            let mut depot = self.depot.lock();
            for (c, mags) in depot.iter_mut().enumerate() {
                for m in mags.drain(..) {
                    back.extend(m.iovas.into_iter().map(|v| (v, PAGE << c)));
                }
            }
        }
        let mut ranges = self.ranges.lock();
        for (iova, size) in back {
            self.give_back(&mut ranges, iova, size);
        }
    }

    /// Gives `[at, at + size)` back to `ranges` (the locked ranges) and notes its ends.
    fn give_back(&self, ranges: &mut FreeRanges, at: u64, size: u64) {
        ranges.give(at, size);
        self.emptied.note(at);
        self.emptied.note(at + (size - 1));
    }

    /// Whether [`PENDING_PRUNES`](crate::iommufd::PENDING_PRUNES) places where IOVAs came back
    /// wait for a [`prune`](Self::prune): a hint, read without a lock, for the common unmap to
    /// ask.
    pub fn prune_due(&self) -> bool {
        self.emptied.due()
    }

    /// Takes the noted places and hands `prune` each one still free with its free range
    /// (`(place, [start, end))`), holding the ranges' lock meanwhile: nothing is allocated, so
    /// nothing mapped or unmapped, inside those ranges until `prune` returns (see the
    /// [module docs](self)). Returns what `prune` returned, or `None` if no place was.
    pub fn prune<R>(&self, prune: impl FnOnce(&[(u64, Range<u64>)]) -> R) -> Option<R> {
        let ranges = self.ranges.lock();
        let places = self.emptied.take();
        let mut points: Vec<(u64, Range<u64>)> = Vec::new();
        for at in places {
            // Allocated again meanwhile: its tables are in use.
            if let Some((start, end)) = ranges.containing(at) {
                points.push((at, start..end));
            }
        }
        (!points.is_empty()).then(|| prune(&points))
    }

    /// The free ranges, `[start, end)` in order (after [`drain`](Self::drain), every range
    /// not allocated).
    pub fn free_ranges(&self) -> Vec<(u64, u64)> {
        self.ranges.lock().iter().collect()
    }
}

#[cfg(test)]
mod tests;
