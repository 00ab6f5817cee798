//! The memory an invalidation queue works in ([`QueueMemory`]): the descriptor ring and status
//! words the unit reaches by DMA and the CPU-side bookkeeping, and [`QueueFrames`], that memory
//! in frames from the embedder's HAL.

use iommu::addr::PhysAddr;
use iommu::sync::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
use super::QueueSize;
use super::{DescriptorWidth, QiError};

/// The memory a queue works in: the descriptor ring and status words the unit reads and
/// writes, and two per-slot arrays only the CPUs use.
pub struct QueueMemory<'m> {
    pub(super) descriptors: &'m [AtomicU64],
    pub(super) descriptors_phys: PhysAddr,
    pub(super) status: &'m [AtomicU32],
    pub(super) status_phys: PhysAddr,
    pub(super) marks: &'m [AtomicU64],
    pub(super) ready: &'m [AtomicU64],
}

impl<'m> QueueMemory<'m> {
    /// Bundles the queue's memory for `entries` descriptors of `width`: `descriptors` needs
    /// `entries × width.words()` quadwords, `status` `entries + 1` words, `marks` and `ready`
    /// `entries` quadwords each, all zero.
    ///
    /// # Safety
    ///
    /// `descriptors_phys` and `status_phys` must be the addresses at which the unit reaches
    /// `descriptors` and `status` (it reads the former and writes the latter by DMA, coherently
    /// with the CPU caches, as the spec requires for the queue and wait status writes), and
    /// that memory must not be used by anything else while the unit may access it.
    pub unsafe fn new(
        descriptors: &'m [AtomicU64],
        descriptors_phys: PhysAddr,
        status: &'m [AtomicU32],
        status_phys: PhysAddr,
        marks: &'m [AtomicU64],
        ready: &'m [AtomicU64],
    ) -> Self {
        Self {
            descriptors,
            descriptors_phys,
            status,
            status_phys,
            marks,
            ready,
        }
    }

    pub(super) fn check(&self, entries: usize, width: DescriptorWidth) -> Result<(), QiError> {
        let bad = |what| Err(QiError::BadMemory { what });
        if self.descriptors.len() < entries * width.words() {
            return bad("descriptor ring too small");
        }
        if self.status.len() < entries + 1 {
            return bad("status words too few");
        }
        if self.marks.len() < entries || self.ready.len() < entries {
            return bad("bookkeeping arrays too small");
        }
        if !self.descriptors_phys.is_aligned(4096) {
            return bad("descriptor ring not 4 KiB aligned");
        }
        if !self.status_phys.is_aligned(4) {
            return bad("status words not 4-byte aligned");
        }
        Ok(())
    }
}

/// Frames for a queue from the embedder's HAL: the ring, and one frame for the status words
/// and the CPU-side arrays.
#[cfg(not(loom))]
pub struct QueueFrames<'h, H: iommu::hal::Hal> {
    hal: &'h H,
    ring: PhysAddr,
    ring_size: iommu::hal::FrameSize,
    book: PhysAddr,
    book_size: iommu::hal::FrameSize,
    entries: usize,
    width: DescriptorWidth,
}

#[cfg(not(loom))]
impl<'h, H: iommu::hal::Hal> QueueFrames<'h, H> {
    /// Allocates zeroed frames for a queue of `size` at `width`.
    pub fn allocate(hal: &'h H, size: QueueSize, width: DescriptorWidth) -> Result<Self, QiError> {
        use iommu::hal::FrameSize;
        let entries = size.entries(width);
        let ring_size =
            FrameSize::from_log2(12 + u32::from(size.qs())).ok_or(QiError::OutOfMemory)?;
        let book_bytes = Self::status_bytes(entries) + 16 * entries;
        let book_log2 = book_bytes.next_power_of_two().trailing_zeros().max(12);
        let book_size = FrameSize::from_log2(book_log2).ok_or(QiError::OutOfMemory)?;
        let ring = hal.alloc_frame(ring_size).ok_or(QiError::OutOfMemory)?;
        let Some(book) = hal.alloc_frame(book_size) else {
            // SAFETY: just allocated with this size and not shared with anyone yet.
            unsafe { hal.free_frame(ring, ring_size) };
            return Err(QiError::OutOfMemory);
        };
        Ok(Self {
            hal,
            ring,
            ring_size,
            book,
            book_size,
            entries,
            width,
        })
    }

    /// Status words (one per slot and the sink), rounded up to keep the arrays after them
    /// 8-byte aligned.
    fn status_bytes(entries: usize) -> usize {
        (4 * (entries + 1)).next_multiple_of(8)
    }

    /// The physical address of the ring, for IQA.
    pub fn ring(&self) -> PhysAddr {
        self.ring
    }

    /// The memory a queue needs, borrowed from these frames.
    pub fn memory(&self) -> QueueMemory<'_> {
        // SAFETY: the frames stay allocated as long as `self`, which the result borrows.
        unsafe { self.memory_for() }
    }

    /// The memory a queue needs, for a queue that keeps these frames for good (they are never
    /// given back, like a unit's root table).
    ///
    /// # Safety
    ///
    /// The HAL must keep the frames allocated and reachable for `'m`: a HAL frees a frame only
    /// when asked, so it is enough that the HAL itself outlives every use of the result.
    pub unsafe fn into_memory<'m>(self) -> QueueMemory<'m> {
        // SAFETY: per this function's contract; `self` is consumed without freeing the frames.
        unsafe { self.memory_for() }
    }

    /// The memory of these frames for `'m`.
    ///
    /// # Safety
    ///
    /// The frames must stay allocated for `'m`.
    unsafe fn memory_for<'m>(&self) -> QueueMemory<'m> {
        let n = self.entries;
        let ring = self.hal.phys_to_virt(self.ring).cast::<AtomicU64>();
        let book = self.hal.phys_to_virt(self.book);
        let status = book.cast::<AtomicU32>();
        let arrays_offset = Self::status_bytes(n);
        // SAFETY: `allocate` sized the bookkeeping frame for the status words plus two arrays
        // of `n` quadwords, so the offset stays inside it.
        let marks = unsafe { book.add(arrays_offset) }.cast::<AtomicU64>();
        // SAFETY: as above, `n` quadwords further is still inside the frame.
        let ready = unsafe { book.add(arrays_offset + 8 * n) }.cast::<AtomicU64>();
        // SAFETY: the HAL contract gives zeroed frames of the requested size, aligned to it,
        // used by nothing else until freed, reachable through `phys_to_virt` with 64-bit atomic
        // accesses; atomics have the size and alignment of the integers they wrap, all-zero is
        // a valid value, and the frames stay allocated for `'m` (this function's contract).
        let (descriptors, status, marks, ready) = unsafe {
            (
                core::slice::from_raw_parts(ring.as_ptr(), n * self.width.words()),
                core::slice::from_raw_parts(status.as_ptr(), n + 1),
                core::slice::from_raw_parts(marks.as_ptr(), n),
                core::slice::from_raw_parts(ready.as_ptr(), n),
            )
        };
        // SAFETY: the physical addresses are those of the frames the slices point into.
        unsafe { QueueMemory::new(descriptors, self.ring, status, self.book, marks, ready) }
    }

    /// The ring's and the bookkeeping's frames, with their sizes (for a caller that gives
    /// them back itself after [`into_memory`](Self::into_memory)).
    pub fn frames(&self) -> [(PhysAddr, iommu::hal::FrameSize); 2] {
        [(self.ring, self.ring_size), (self.book, self.book_size)]
    }

    /// Returns the frames to the HAL.
    ///
    /// # Safety
    ///
    /// The unit must no longer use the queue (queued invalidation disabled, GSTS.QIES clear)
    /// and no [`InvalidationQueue`](super::InvalidationQueue) built on [`memory`](Self::memory) may be used again.
    pub unsafe fn free(self) {
        // SAFETY: allocated in `allocate` with these sizes; the caller guarantees neither the
        // CPU nor the unit touches them any more.
        unsafe {
            self.hal.free_frame(self.ring, self.ring_size);
            self.hal.free_frame(self.book, self.book_size);
        }
    }
}
