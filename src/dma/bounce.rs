//! Bounce buffers: memory a device can reach, cut into page-sized slots. A buffer the device
//! must not (or cannot) use where it is gets a run of slots; [`DmaDevice`](super::DmaDevice)
//! copies it in and out around the transfer.
//!
//! Slots are whole pages so that two bounced buffers never share a page: through an IOMMU a
//! device reaches whole pages, and a slot page holds nothing but its one buffer's copy. The
//! allocator is first fit over a bitmap under one lock, starting at the slot freed last (still
//! in the CPU's caches) or else where the last search ended.

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{DmaError, PAGE};
use crate::addr::PhysAddr;
use crate::sync::Mutex;

/// Which slots are taken: one bit per page.
struct Slots {
    taken: Vec<u64>,
    free: usize,
    /// Where the next search starts: the slot freed last, or just past the last allocation.
    next: usize,
}

impl Slots {
    fn is_taken(&self, i: usize) -> bool {
        self.taken[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, first: usize, n: usize, taken: bool) {
        for i in first..first + n {
            let bit = 1u64 << (i % 64);
            if taken {
                self.taken[i / 64] |= bit;
            } else {
                self.taken[i / 64] &= !bit;
            }
        }
    }

    /// The first free run of `n` slots at or after `from`, below `end`.
    fn find(&self, n: usize, from: usize, end: usize) -> Option<usize> {
        let mut run = 0;
        let mut i = from;
        while i < end {
            // A whole word of taken slots is skipped at once.
            if i.is_multiple_of(64) && self.taken[i / 64] == u64::MAX {
                run = 0;
                i += 64;
                continue;
            }
            if self.is_taken(i) {
                run = 0;
            } else {
                run += 1;
                if run == n {
                    return Some(i + 1 - n);
                }
            }
            i += 1;
        }
        None
    }
}

/// A pool of bounce slots over memory the embedder gives, which the devices using it can reach.
pub struct BouncePool {
    base: u64,
    slots: usize,
    state: Mutex<Slots>,
}

impl fmt::Debug for BouncePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BouncePool")
            .field("base", &format_args!("{:#x}", self.base))
            .field("slots", &self.slots)
            .field("free", &self.free_slots())
            .finish()
    }
}

impl BouncePool {
    /// A pool over the whole pages inside `[base, base + len)`; refused when that holds none.
    ///
    /// # Safety
    ///
    /// That memory is RAM that nothing but this pool uses while the pool lives (the pool copies
    /// buffers into it and hands it to devices), and the [`DmaHal`](super::DmaHal) of every
    /// device using the pool maps it as that trait requires.
    pub unsafe fn new(base: PhysAddr, len: u64) -> Result<Self, DmaError> {
        let start = base
            .as_u64()
            .checked_next_multiple_of(PAGE)
            .ok_or(DmaError::WrapAround)?;
        let end = base.as_u64().checked_add(len).ok_or(DmaError::WrapAround)? & !(PAGE - 1);
        if end <= start {
            return Err(DmaError::ZeroLength);
        }
        let slots = usize::try_from((end - start) / PAGE).map_err(|_| DmaError::TooLarge)?;
        Ok(Self {
            base: start,
            slots,
            state: Mutex::new(Slots {
                taken: vec![0; slots.div_ceil(64)],
                free: slots,
                next: 0,
            }),
        })
    }

    /// The first byte of the pool.
    pub fn base(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// The first byte past the pool.
    pub fn end(&self) -> u64 {
        self.base + self.slots as u64 * PAGE
    }

    /// Slots (pages) in the pool.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.state.lock().free
    }

    /// A run of `n` free slots, taken; its physical address.
    pub(super) fn take(&self, n: usize) -> Result<u64, DmaError> {
        if n > self.slots {
            return Err(DmaError::TooLarge);
        }
        let mut s = self.state.lock();
        if n > s.free {
            return Err(DmaError::PoolExhausted);
        }
        let from = s.next;
        let first = s
            .find(n, from, self.slots)
            .or_else(|| s.find(n, 0, (from + n - 1).min(self.slots)))
            .ok_or(DmaError::PoolExhausted)?;
        s.set(first, n, true);
        s.free -= n;
        s.next = (first + n) % self.slots;
        Ok(self.base + first as u64 * PAGE)
    }

    /// Gives back the run of `n` slots at `phys` that [`take`](Self::take) returned.
    pub(super) fn give(&self, phys: u64, n: usize) {
        let first = ((phys - self.base) / PAGE) as usize;
        let mut s = self.state.lock();
        s.set(first, n, false);
        s.free += n;
        // The next search starts here: a slot just used is still in the CPU's caches.
        s.next = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(pages: u64) -> BouncePool {
        // SAFETY: only the slot bookkeeping is used; nothing reads or writes the memory.
        unsafe { BouncePool::new(PhysAddr::new(0x10_0000), pages * PAGE) }.unwrap()
    }

    #[test]
    fn runs_are_first_fit_and_come_back() {
        let p = pool(130);
        let a = p.take(3).unwrap();
        let b = p.take(64).unwrap();
        let c = p.take(63).unwrap();
        assert_eq!((a, b, c), (0x10_0000, 0x10_3000, 0x14_3000));
        assert_eq!(p.free_slots(), 0);
        assert_eq!(p.take(1), Err(DmaError::PoolExhausted));
        p.give(b, 64);
        // The search wraps round to the hole.
        assert_eq!(p.take(64), Ok(b));
        p.give(a, 3);
        assert_eq!(p.take(4), Err(DmaError::PoolExhausted), "3 free, not 4");
        assert_eq!(p.take(131), Err(DmaError::TooLarge));
        assert_eq!(p.take(2), Ok(a));
    }

    #[test]
    fn a_pool_is_made_of_the_whole_pages_inside_its_memory() {
        // SAFETY: bookkeeping only.
        let p = unsafe { BouncePool::new(PhysAddr::new(0x1001), 3 * PAGE) }.unwrap();
        assert_eq!((p.base().as_u64(), p.slots()), (0x2000, 2));
        // SAFETY: bookkeeping only.
        let none = unsafe { BouncePool::new(PhysAddr::new(0x1001), PAGE) };
        assert_eq!(none.err(), Some(DmaError::ZeroLength));
        // SAFETY: bookkeeping only.
        let wraps = unsafe { BouncePool::new(PhysAddr::new(u64::MAX - 10), PAGE) };
        assert_eq!(wraps.err(), Some(DmaError::WrapAround));
    }
}
