//! Domain-id bookkeeping of one unit: which ids are handed out, which were given back and may be
//! reused, and how many context / PASID entries point at each (a domain in use cannot be
//! destroyed).
//!
//! One 16-byte record per id lives in HAL frames allocated on first use, reached through one
//! directory frame: the crate has no allocator, and 65536 ids (CAP.ND = 6) would be 256 frames up
//! front. Records and the free list change only under the unit's `tables` lock; the one reader
//! outside it ([`DomainIds::pasid_users`], for IOTLB flushes) loads with Acquire what the lock
//! holder stored with Release, and a flush racing an attach is covered by the invalidations the
//! attach itself issues.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};
use iommu::unit::UnitError;

use crate::root_table::Did;

/// Records per 4 KiB frame (16 bytes each).
const RECORDS_PER_FRAME: u32 = 256;
/// Directory entries in use: 256 frames × 256 records cover all 65536 16-bit ids.
const DIRECTORY_ENTRIES: u32 = 256;

/// Words of one record.
const USERS: usize = 0;
/// Attachments at a PASID other than RID_PASID (0).
const PASID_USERS: usize = 1;
/// The PASID those attachments use (one at most; see [`DomainIds::pasid_users`]).
const PASID: usize = 2;
/// While the id is free: the next free id + 1 (0 ends the list).
const NEXT_FREE: usize = 3;

/// The unit's domain ids. Every method except [`pasid_users`](Self::pasid_users) and
/// [`users`](Self::users) must be called with the unit's `tables` lock held.
pub(crate) struct DomainIds {
    /// The directory frame: entry `i` is the physical address of the record frame of ids
    /// `i * 256 ..`, 0 until allocated.
    directory: PhysAddr,
    /// Ids below this have been handed out at least once.
    next_fresh: AtomicU32,
    /// Head of the free list: a given-back id + 1, 0 when empty (LIFO: the id freed last is
    /// reused first).
    free_head: AtomicU32,
    /// Fresh ids are handed out below this only (CAP.ND count, or lower by request).
    limit: AtomicU32,
    /// The hardware's id count (CAP.ND).
    supported: u32,
}

impl DomainIds {
    /// Bookkeeping for a unit with `supported` ids whose first free id is `first`.
    pub(crate) fn new<H: Hal>(hal: &H, supported: u32, first: u32) -> Result<Self, UnitError> {
        let directory = hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        let supported = supported.min(u32::from(u16::MAX) + 1);
        Ok(Self {
            directory,
            next_fresh: AtomicU32::new(first),
            free_head: AtomicU32::new(0),
            limit: AtomicU32::new(supported),
            supported,
        })
    }

    /// Hands out an id: the last one given back, else a fresh one below the limit. The id's
    /// record is allocated before the id is taken, so a HAL out of memory changes nothing.
    pub(crate) fn allocate<H: Hal>(&self, hal: &H) -> Result<Did, UnitError> {
        let head = self.free_head.load(Ordering::Relaxed);
        if head != 0 {
            let id = head - 1;
            let r = self.record(hal, id).ok_or(UnitError::OutOfIds)?;
            let next = r[NEXT_FREE].swap(0, Ordering::Relaxed);
            self.free_head.store(next, Ordering::Relaxed);
            return Ok(Did::new(id as u16));
        }
        let id = self.next_fresh.load(Ordering::Relaxed);
        if id >= self.limit.load(Ordering::Relaxed).min(self.supported) {
            return Err(UnitError::OutOfIds);
        }
        self.record_or_create(hal, id)?;
        self.next_fresh.store(id + 1, Ordering::Relaxed);
        Ok(Did::new(id as u16))
    }

    /// Gives `id` back for reuse. The caller has checked it has no users and has invalidated
    /// every cache entry tagged with it.
    pub(crate) fn release<H: Hal>(&self, hal: &H, id: Did) {
        let raw = u32::from(id.raw());
        if let Some(r) = self.record(hal, raw) {
            r[PASID_USERS].store(0, Ordering::Relaxed);
            r[NEXT_FREE].store(self.free_head.load(Ordering::Relaxed), Ordering::Relaxed);
            self.free_head.store(raw + 1, Ordering::Relaxed);
        }
    }

    /// Lowers (or restores, up to CAP.ND) the bound below which fresh ids are handed out;
    /// ids already out and ids on the free list are not affected.
    pub(crate) fn set_limit(&self, limit: u32) {
        self.limit
            .store(limit.min(self.supported), Ordering::Relaxed);
    }

    /// The next fresh id (every id below it was handed out at least once).
    pub(crate) fn high_water(&self) -> u32 {
        self.next_fresh.load(Ordering::Relaxed)
    }

    /// One more context / PASID entry points at `id` (through `pasid`; 0 for a context entry or
    /// RID_PASID).
    pub(crate) fn attach<H: Hal>(&self, hal: &H, id: Did, pasid: u32) {
        if let Some(r) = self.record(hal, u32::from(id.raw())) {
            if pasid != 0 {
                r[PASID].store(pasid, Ordering::Relaxed);
                // Release: a flush that sees the count sees the PASID stored before it.
                r[PASID_USERS].fetch_add(1, Ordering::Release);
            }
            r[USERS].fetch_add(1, Ordering::Release);
        }
    }

    /// An entry that pointed at `id` (through `pasid`) was cleared.
    pub(crate) fn detach<H: Hal>(&self, hal: &H, id: Did, pasid: u32) {
        if let Some(r) = self.record(hal, u32::from(id.raw())) {
            if pasid != 0 {
                let _ = r[PASID_USERS]
                    .fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            let _ =
                r[USERS].fetch_update(Ordering::Release, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// How many context / PASID entries point at `id`.
    pub(crate) fn users<H: Hal>(&self, hal: &H, id: Did) -> u32 {
        self.record(hal, u32::from(id.raw()))
            .map_or(0, |r| r[USERS].load(Ordering::Acquire))
    }

    /// The non-zero PASID `id` is attached at, if any: its first-stage translations are tagged
    /// with it and need their own PASID-based invalidations.
    pub(crate) fn pasid_users<H: Hal>(&self, hal: &H, id: Did) -> Option<u32> {
        let r = self.record(hal, u32::from(id.raw()))?;
        // Acquire pairs with the Release in `attach`: the PASID stored before is visible.
        if r[PASID_USERS].load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(r[PASID].load(Ordering::Relaxed))
    }

    fn directory_entry<H: Hal>(&self, hal: &H, id: u32) -> Option<&AtomicU64> {
        let index = id / RECORDS_PER_FRAME;
        if index >= DIRECTORY_ENTRIES {
            return None;
        }
        let p: NonNull<u8> = hal.phys_to_virt(self.directory);
        // SAFETY: the directory is a 4 KiB HAL frame this value owns for its whole life;
        // `index` < 256, so the 8-byte word is inside it and aligned; the HAL allows 64-bit
        // atomic access to its frames.
        Some(unsafe { &*p.as_ptr().cast::<AtomicU64>().add(index as usize) })
    }

    fn record<H: Hal>(&self, hal: &H, id: u32) -> Option<&[AtomicU32; 4]> {
        // Acquire pairs with the Release that published the record frame.
        let frame = self.directory_entry(hal, id)?.load(Ordering::Acquire);
        if frame == 0 {
            return None;
        }
        let p: NonNull<u8> = hal.phys_to_virt(PhysAddr::new(frame));
        let offset = (id % RECORDS_PER_FRAME) as usize * 16;
        // SAFETY: `frame` is a zeroed 4 KiB HAL frame allocated in `record_or_create` and
        // never freed while this value lives; the 16-byte record at `offset` < 4096 is inside
        // it and 4-byte aligned.
        Some(unsafe { &*p.as_ptr().add(offset).cast::<[AtomicU32; 4]>() })
    }

    /// The directory frame (what [`free_from`](Self::free_from) starts from).
    pub(crate) fn directory(&self) -> PhysAddr {
        self.directory
    }

    /// Gives the directory frame at `directory` and every record frame it names back to `hal`.
    ///
    /// # Safety
    /// `directory` is the directory of a `DomainIds` whose ids nothing uses any more (a unit
    /// whose bring-up failed).
    pub(crate) unsafe fn free_from<H: Hal>(hal: &H, directory: PhysAddr) {
        let p: NonNull<u8> = hal.phys_to_virt(directory);
        for index in 0..DIRECTORY_ENTRIES as usize {
            // SAFETY: the directory is a 4 KiB frame of 256 aligned 8-byte words (as in
            // `directory_entry`), alive until freed below.
            let entry = unsafe { &*p.as_ptr().cast::<AtomicU64>().add(index) };
            let frame = entry.load(Ordering::Acquire);
            if frame != 0 {
                // SAFETY: a record frame `record_or_create` allocated, unused per the contract.
                unsafe { hal.free_frame(PhysAddr::new(frame), FrameSize::SIZE_4K) };
            }
        }
        // SAFETY: the directory frame from `new`, unused per the contract.
        unsafe { hal.free_frame(directory, FrameSize::SIZE_4K) };
    }

    fn record_or_create<H: Hal>(&self, hal: &H, id: u32) -> Result<(), UnitError> {
        if self.record(hal, id).is_some() {
            return Ok(());
        }
        let entry = self.directory_entry(hal, id).ok_or(UnitError::OutOfIds)?;
        let frame = hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        // Release: the zeroed frame is visible to whoever loads the pointer.
        entry.store(frame.as_u64(), Ordering::Release);
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
