//! What an unmap leaves for the back-end: the IOVA range and page sizes to invalidate, whether
//! intermediate tables went away, and the table frames to free once the invalidation is done.
//!
//! A gather lives on the caller's stack and allocates nothing: the freed frames are chained
//! through their own first entry.

use core::fmt;
use core::ptr::NonNull;

use crate::addr::{Iova, PhysAddr};
use crate::hal::{FrameSize, Hal};
use crate::sync::{AtomicU64, Ordering};

/// Bits of a chain link that hold the next frame's size (log2, 12..=30) — bits 6:2. Bits 1:0 stay
/// zero, and so does bit 0, which is what makes a link read as *not present* to every walker we
/// support: VT-d second stage needs R = W = 0 (bits 1:0), x86 paging P = 0 (bit 0) and VMSAv8-64
/// "valid" = 0 (bit 0). The address part is the next frame's physical address, a multiple of
/// 4 KiB, so it never reaches these bits.
const LINK_SIZE_SHIFT: u32 = 2;
const LINK_SIZE_MASK: u64 = 0x1f << LINK_SIZE_SHIFT;
/// Bit 7 of a frame's link says that every other entry of the frame is zero (a table unlinked
/// because it was empty), so that whoever reuses it for a table need only clear the link.
const LINK_CLEAN: u64 = 1 << 7;
const LINK_ADDR_MASK: u64 = !0xfff;

/// The invalidation work and deferred frees of one or more unmaps (pass the same gather to
/// several [`PageTable::unmap`](super::PageTable::unmap) calls to batch them).
///
/// The back-end turns it into commands:
/// - [`range`](Gather::range): the IOVA range to invalidate (the hull of the unmapped ranges).
///   VT-d: page-selective IOTLB invalidation with an address mask covering it, or domain-selective
///   past a threshold; SMMU: `TLBI_NH_VA`/`TLBI_S2_IPA` per page, or a range command with `RIL`.
/// - [`page_sizes`](Gather::page_sizes): the sizes of the leaves removed, as a bit mask of sizes
///   (`1 << 12 | 1 << 21` for 4 KiB and 2 MiB). The smallest one is the stride of per-page
///   invalidation and the SMMU `TTL`/`TG` hint when only one size is present.
/// - [`tables_removed`](Gather::tables_removed): intermediate tables were unlinked, so cached
///   non-leaf entries must go too: VT-d invalidation hint `IH` = 0, SMMU `Leaf` = 0.
/// - then, once the hardware reports the invalidation complete (VT-d wait descriptor, SMMU
///   `CMD_SYNC`), [`complete`](Gather::complete) returns the freed frames to the HAL.
///
/// A gather dropped without [`complete`](Gather::complete) **leaks** its frames: without the
/// caller's word that the invalidation finished, a walker may still hold a cached pointer to them,
/// and leaking is the only safe choice. [`freed_frames`](Gather::freed_frames) tells how many.
#[must_use = "a gather holds the invalidation to issue and frames that leak unless completed"]
pub struct Gather {
    start: u64,
    end: u64,
    page_sizes: u64,
    tables_removed: bool,
    head: u64,
    head_size: FrameSize,
    count: usize,
    /// The root of the table that filled this gather (0 while empty): a gather serves one table.
    table: u64,
}

impl Gather {
    /// An empty gather.
    pub const fn new() -> Self {
        Self {
            start: u64::MAX,
            end: 0,
            page_sizes: 0,
            tables_removed: false,
            head: 0,
            head_size: FrameSize::SIZE_4K,
            count: 0,
            table: 0,
        }
    }

    /// True when there is nothing to invalidate and nothing to free.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end && self.count == 0
    }

    /// The IOVA range to invalidate, as start and length; `None` if nothing was unmapped.
    pub fn range(&self) -> Option<(Iova, u64)> {
        if self.start < self.end {
            Some((Iova::new(self.start), self.end - self.start))
        } else {
            None
        }
    }

    /// Sizes of the removed leaves, one bit per size (bit `n` set = leaves of `2^n` bytes).
    pub fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    /// The smallest removed leaf size in bytes, if any leaf was removed.
    pub fn min_page_size(&self) -> Option<u64> {
        if self.page_sizes == 0 {
            None
        } else {
            Some(1 << self.page_sizes.trailing_zeros())
        }
    }

    /// Whether intermediate tables were unlinked (non-leaf caches must be invalidated too).
    pub fn tables_removed(&self) -> bool {
        self.tables_removed
    }

    /// How many table frames wait for [`complete`](Gather::complete).
    pub fn freed_frames(&self) -> usize {
        self.count
    }

    /// Whether this gather may take (or be flushed for) the unmaps of the table rooted at `root`:
    /// it is empty or was filled by that table.
    pub(super) fn serves(&self, root: u64) -> bool {
        self.table == 0 || self.table == root
    }

    /// Ties this gather to the table rooted at `root` (checked with [`serves`](Self::serves)
    /// before anything is unmapped).
    pub(super) fn bind(&mut self, root: u64) {
        self.table = root;
    }

    /// Records an unmapped range `[start, end)`.
    #[inline]
    pub(super) fn record(&mut self, start: u64, end: u64, page_sizes: u64, tables: bool) {
        self.start = self.start.min(start);
        self.end = self.end.max(end);
        self.page_sizes |= page_sizes;
        self.tables_removed |= tables;
    }

    /// Takes an unlinked table frame into the chain by writing the link into its first entry.
    ///
    /// The frame may still be read by a walker that cached the pointer to it; the link reads as
    /// not present (see `LINK_SIZE_SHIFT`), the same answer the unmap gives for the whole range.
    pub(super) fn push<H: Hal>(&mut self, hal: &H, frame: u64, size: FrameSize) {
        self.push_marked(hal, frame, size, false);
    }

    /// [`push`](Self::push) of a table frame whose entries are all zero (but the link this
    /// writes), as `release` will tell.
    pub(super) fn push_clean<H: Hal>(&mut self, hal: &H, frame: u64, size: FrameSize) {
        self.push_marked(hal, frame, size, true);
    }

    fn push_marked<H: Hal>(&mut self, hal: &H, frame: u64, size: FrameSize, clean: bool) {
        let next = if self.count == 0 {
            0
        } else {
            self.head | (u64::from(self.head_size.log2()) << LINK_SIZE_SHIFT)
        };
        let link = if clean { next | LINK_CLEAN } else { next };
        // Relaxed: the frame is unlinked, so no CPU operation reads it (a walker may, and needs
        // no ordering: any value it can see there is not-present or a stale entry of the range
        // being invalidated); `complete` reads the link on a thread the caller has synchronized
        // with this one.
        // SAFETY: `frame` is a table frame of at least 4 KiB that this gather now owns; its first
        // 8 bytes are an entry that only atomic accesses touch.
        unsafe { first_entry(hal, frame) }.store(link, Ordering::Relaxed);
        self.head = frame;
        self.head_size = size;
        self.count += 1;
    }

    /// Ends a gather that holds no table frames: the common unmap of pages inside tables that
    /// stay, which has nothing to free and so needs no [`complete`](Gather::complete) and no
    /// proof. A gather with frames comes back as `Err` for `complete` after the invalidation.
    ///
    /// The invalidation of [`range`](Gather::range) is still the caller's to issue before the
    /// unmapped IOVAs or memory are reused; only the freeing is skipped.
    pub fn finish(self) -> Result<(), Gather> {
        if self.count == 0 {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Returns every gathered frame to the HAL.
    ///
    /// # Safety
    ///
    /// The caller has issued the invalidation this gather describes (IOTLB and, if
    /// [`tables_removed`](Gather::tables_removed), paging-structure / walk caches) on every
    /// IOMMU that may walk the table, and the hardware has reported it complete; and no CPU
    /// operation on the table whose range overlapped an unmapped range is still running. The
    /// frames must belong to `hal` (the HAL of the table that filled this gather).
    pub unsafe fn complete<H: Hal>(self, hal: &H) {
        let free = |frame, size, _clean| {
            // SAFETY: an unlinked table frame of `size` from `hal`; the caller guarantees that no
            // walker or CPU can reach it any more.
            unsafe { hal.free_frame(PhysAddr::new(frame), size) }
        };
        // SAFETY: the caller's guarantees, passed on.
        unsafe { self.release(hal, free) }
    }

    /// Hands every gathered frame, with its size and whether all its entries but the first are
    /// zero ([`push_clean`](Self::push_clean)), to `free` (the HAL, or a table's cache).
    ///
    /// # Safety
    ///
    /// As for [`complete`](Gather::complete): no walker or CPU can reach the frames any more,
    /// and they are `hal`'s.
    pub(super) unsafe fn release<H: Hal>(
        self,
        hal: &H,
        mut free: impl FnMut(u64, FrameSize, bool),
    ) {
        let mut frame = self.head;
        let mut size = self.head_size;
        for _ in 0..self.count {
            // Read the link before the frame is handed on. Relaxed: see `push`.
            // SAFETY: the frame is still ours: it is handed on only below.
            let link = unsafe { first_entry(hal, frame) }.load(Ordering::Relaxed);
            free(frame, size, link & LINK_CLEAN != 0);
            let next_size = ((link & LINK_SIZE_MASK) >> LINK_SIZE_SHIFT) as u32;
            match FrameSize::from_log2(next_size) {
                Some(s) => size = s,
                // Only the last frame has no successor; a damaged link leaks the rest.
                None => return,
            }
            frame = link & LINK_ADDR_MASK;
        }
    }
}

/// The hardware side of an unmap: invalidates the IOTLB entries (and, unless `leaf_only`, the
/// paging-structure / walk-cache entries) of one table's range on every unit that walks it.
///
/// Each back-end implements it once for its domains (VT-d: page- or domain-selective IOTLB
/// descriptors and a wait descriptor; SMMUv3: `TLBI_NH_VA` / `TLBI_S2_IPA` and a `CMD_SYNC`), and
/// [`PageTable::unmap_flushed`](super::PageTable::unmap_flushed) uses it to free the unlinked
/// tables of an unmap without an `unsafe` call at every unmap site.
///
/// # Safety
///
/// `flush` returns `Ok` only once the hardware has reported complete the invalidation of
/// `[iova, iova + len)` for every unit that may walk the table whose unmap is being flushed
/// (with walk caches too when `leaf_only` is false). On `Err` it may have done anything short of
/// that: the frames are then leaked, never freed.
pub unsafe trait FlushRange {
    /// What a failed invalidation returns.
    type Error;

    /// Invalidates `[iova, iova + len)` and waits for the hardware to report it complete.
    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> Result<(), Self::Error>;
}

impl Default for Gather {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Gather {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather")
            .field("range", &self.range())
            .field("page_sizes", &format_args!("{:#x}", self.page_sizes))
            .field("tables_removed", &self.tables_removed)
            .field("freed_frames", &self.count)
            .field("table", &format_args!("{:#x}", self.table))
            .finish()
    }
}

/// The first entry of a table frame.
///
/// # Safety
///
/// `frame` is a table frame from `hal` that stays allocated for the returned lifetime.
unsafe fn first_entry<'a, H: Hal>(hal: &H, frame: u64) -> &'a AtomicU64 {
    let p: NonNull<u8> = hal.phys_to_virt(PhysAddr::new(frame));
    // SAFETY: the HAL contract makes `p` valid for atomic 64-bit accesses to the frame, which is
    // at least 4 KiB and 4 KiB-aligned; the caller keeps it allocated.
    unsafe { &*(p.as_ptr() as *const AtomicU64) }
}
