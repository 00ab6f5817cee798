//! The engine: map, unmap, translate and walk, written once for every [`Format`].
//!
//! The concurrency rules are in the module documentation of [`crate::pagetable`]. Each atomic
//! access here follows one of three conventions, named at the access:
//! - **descend**: a load whose value may be followed into a table is `Acquire`; it pairs with
//!   the `Release` compare-and-swap that installed the table (and with the `Release` stores of
//!   entries written since), so the table below is seen initialised.
//! - **publish**: every store to a live entry is `Release`: whatever this CPU wrote before
//!   (tables installed on the way, earlier entries) is visible to anyone who acquires it. The
//!   hardware walker sees a clear before the invalidation that follows because the back-end's
//!   command submission is itself ordered after it (its own release store or MMIO barrier).
//! - **own**: a slot whose whole span lies inside the caller's range is written by no
//!   concurrent operation (ranges are disjoint), so checking it for emptiness is `Relaxed`.

use core::cmp::{max, min};
use core::fmt;
use core::mem::size_of_val;
use core::ops::Range;
use core::ptr::NonNull;

use super::{Error, FlushRange, Format, Gather, Prot, Result};
use crate::addr::{Iova, PhysAddr};
use crate::hal::{FrameSize, Hal};
use crate::sync::{AtomicU64, Ordering};

/// The most levels any supported format has (VT-d and x86 5-level paging).
pub const MAX_LEVELS: usize = 5;

/// Table frames a [`PageTable`] keeps for its next tables instead of giving them back to the HAL
/// (see [`PageTable::cached_frames`]): enough that a buffer mapped and unmapped over and over
/// reuses its tables, small enough not to matter beside the tables in use.
pub const CACHED_FRAMES: usize = 8;

/// Bit 0 of a cache slot: the frame in it is clean (every entry but the first is zero). Frames
/// are granule-aligned, so the bit is free.
const CACHED_CLEAN: u64 = 1;

/// Whether the IOMMU's table walks snoop the CPU caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coherency {
    /// Walks are cache-coherent (VT-d `ECAP.C` = 1, SMMU `IDR0.COHACC` = 1): plain stores suffice.
    Coherent,
    /// Walks read memory only: every table write is cleaned with [`Hal::clean_to_poc`].
    NonCoherent,
}

/// One domain's I/O page table in format `F`, with table memory from `H`.
///
/// All operations take `&self` and may run concurrently on disjoint IOVA ranges; see the module
/// documentation for the rules. Dropping a `PageTable` leaks its frames (hardware may still
/// point at them); give them back with [`destroy`](PageTable::destroy).
pub struct PageTable<F: Format, H: Hal> {
    format: F,
    hal: H,
    root: u64,
    coherent: bool,
    /// Entries of the root table: `2^(ia_bits - shift(top))`, more than a granule's worth when
    /// the root is made of concatenated tables.
    top_entries: usize,
    /// `2^ia_bits` and `2^oa_bits`, kept for the argument checks on every call.
    aperture_end: u64,
    oa_end: u64,
    /// Free granule frames kept for the next tables, 0 = an empty slot. Each slot is handed over
    /// whole (a frame goes in by compare-and-swap from 0 and out by swap to 0), so two CPUs can
    /// never take the same frame and no ABA can arise.
    cache: [AtomicU64; CACHED_FRAMES],
}

/// What one unmap pass found, folded into the gather at the end.
#[derive(Default)]
struct Removed {
    bytes: u64,
    page_sizes: u64,
    tables: bool,
}

impl Removed {
    #[inline(always)]
    fn leaf(&mut self, span: u64) {
        self.bytes += span;
        self.page_sizes |= span;
    }
}

/// A failed map: the error and the first IOVA not written (everything from the start of the
/// call up to it was written by this call and must be rolled back).
type MapFail = (Error, u64);

impl<F: Format, H: Hal> PageTable<F, H> {
    /// Creates an empty table: allocates the root (zero-filled, so nothing is mapped).
    ///
    /// Fails with [`Error::UnsupportedConfig`] if the format's geometry is inconsistent and
    /// [`Error::OutOfMemory`] if the HAL has no frame for the root.
    pub fn new(format: F, hal: H, coherency: Coherency) -> Result<Self> {
        let top_entries = Self::root_entries(&format)?;
        let ia = format.ia_bits();
        let root = hal
            .alloc_frame(format.root_frame())
            .ok_or(Error::OutOfMemory)?
            .as_u64();
        let oa = format.oa_bits();
        let table = Self {
            format,
            hal,
            root,
            coherent: coherency == Coherency::Coherent,
            top_entries,
            aperture_end: 1 << ia,
            oa_end: 1 << oa,
            cache: core::array::from_fn(|_| AtomicU64::new(0)),
        };
        // The zeroes of the whole frame (a walker given a stray address may read past the
        // entries we use) must be in memory before the back-end points the hardware at it.
        if !table.coherent {
            let root = table.hal.phys_to_virt(table.root());
            table
                .hal
                .clean_to_poc(root, table.format.root_frame().bytes());
        }
        Ok(table)
    }

    /// The entries of the root table of `format`, once its geometry is checked.
    fn root_entries(format: &F) -> Result<usize> {
        let g = format.granule_shift();
        let levels = format.levels();
        let ia = format.ia_bits();
        if !matches!(g, 12 | 14 | 16)
            || levels == 0
            || levels as usize > MAX_LEVELS
            || format.oa_bits() > 52
            || format.oa_bits() < g
        {
            return Err(Error::UnsupportedConfig);
        }
        let top_shift = g + (levels - 1) * (g - 3);
        if ia > 57 || ia <= top_shift || ia - top_shift > (g - 3) + 4 {
            return Err(Error::UnsupportedConfig);
        }
        let top_entries = 1usize << (ia - top_shift);
        // The root frame must hold every root entry (8 bytes each).
        if format.root_frame().bytes() / 8 < top_entries {
            return Err(Error::UnsupportedConfig);
        }
        Ok(top_entries)
    }

    /// [`walk`](Self::walk) in a table this caller holds no `PageTable` for, found by its root:
    /// a back-end reading the table a hardware context points at (VT-d settles whether a
    /// second-stage fault hit a mapping by walking the table the device's context entry names).
    ///
    /// # Safety
    ///
    /// `root` must be the root of a table of `format` built by this engine with frames of `hal`,
    /// and its frames must stay allocated during the call (no destroy, and no unmap that frees
    /// tables on the way to `iova`, may run meanwhile).
    pub unsafe fn walk_root(format: F, hal: H, root: PhysAddr, iova: Iova) -> Result<Walk> {
        let top_entries = Self::root_entries(&format)?;
        let (ia, oa) = (format.ia_bits(), format.oa_bits());
        // A view of the table, only walked and then dropped (which frees nothing): the caller
        // vouches for the frames as `new` would have allocated them.
        let view = Self {
            format,
            hal,
            root: root.as_u64(),
            coherent: true,
            top_entries,
            aperture_end: 1 << ia,
            oa_end: 1 << oa,
            cache: core::array::from_fn(|_| AtomicU64::new(0)),
        };
        view.walk(iova)
    }

    /// Physical address of the root table, for the context / PASID entry, STE or CD.
    pub fn root(&self) -> PhysAddr {
        PhysAddr::new(self.root)
    }

    /// The format, for the geometry the back-end programs (levels, widths, granule).
    pub fn format(&self) -> &F {
        &self.format
    }

    /// The HAL, e.g. to [`complete`](Gather::complete) a gather.
    pub fn hal(&self) -> &H {
        &self.hal
    }

    /// Size of the input address space: IOVAs are below this.
    pub fn aperture_end(&self) -> u64 {
        self.aperture_end
    }

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with `prot`, using the largest pages
    /// that alignment, length and the format allow.
    ///
    /// Fails without changing any mapping if the arguments are bad (granule alignment, wrap,
    /// aperture, output size, permissions) or anything in the range is already mapped
    /// ([`Error::AlreadyMapped`]). On [`Error::OutOfMemory`] the leaves written are removed; see
    /// the module documentation.
    ///
    /// May run concurrently with other operations on ranges disjoint from this one.
    #[inline(always)]
    pub fn map(&self, iova: Iova, phys: PhysAddr, len: u64, prot: Prot) -> Result<()> {
        match self.format.granule_shift() {
            12 => self.map_in_granule::<12>(iova, phys, len, prot),
            14 => self.map_in_granule::<14>(iova, phys, len, prot),
            _ => self.map_in_granule::<16>(iova, phys, len, prot),
        }
    }

    /// [`map`](Self::map) with the granule's shift `G` a constant (see [`Self::g`]).
    #[inline(always)]
    fn map_in_granule<const G: u32>(
        &self,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<()> {
        let va = iova.as_u64();
        let pa = phys.as_u64();
        let end = self.check_map(va, pa, len, prot)?;
        // One page first, with the level a constant (as in `unmap_here`); `check_map` has
        // checked its alignment.
        if len == 1 << self.g::<G>() {
            if self.map_one::<G>(va, pa, 0, prot)? {
                return Ok(());
            }
        } else if let Some(level) = self.leaf_level_in::<G>(len) {
            if (va | pa) & (len - 1) == 0 && self.map_one::<G>(va, pa, level, prot)? {
                return Ok(());
            }
        }
        self.map_range(va, pa, len, end, prot)
    }

    /// The general map: any range, any mix of page sizes.
    #[inline(never)]
    fn map_range(&self, va: u64, pa: u64, len: u64, end: u64, prot: Prot) -> Result<()> {
        // Descend while the range lies inside a single entry too small or misaligned for a
        // leaf: that entry must point to a table.
        let mut t = self.root_table();
        let mut level = self.top();
        // Set once this call created a table on the path: below it nothing can overlap.
        let mut fresh = false;
        loop {
            let shift = self.shift(level);
            let span = 1u64 << shift;
            let leaf_here =
                self.format.leaf_ok(level) && (va | pa) & (span - 1) == 0 && len >= span;
            if leaf_here || (va >> shift) != ((end - 1) >> shift) {
                break;
            }
            let (child, created) = self.table_below(&t[self.index(va, level)], level)?;
            fresh |= created;
            t = child;
            level -= 1;
        }

        // At the leaf level the whole range is one run in one table, which `map_in` checks
        // completely before writing. Above it the range may cover several runs and tables, so
        // look first: an overlap must be refused before anything is written.
        if level > 0 && !fresh {
            self.check_free(t, level, va, end)?;
        }
        if let Err((e, done)) = self.map_in(t, level, va, end, pa, prot) {
            if done > va {
                self.clear_leaves(t, level, va, done);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes every mapping inside `[iova, iova + len)`, records what must be invalidated in
    /// `gather`, and returns the number of bytes unmapped.
    ///
    /// Tables whose whole span lies in the range are unlinked and their frames added to
    /// `gather`; they are freed by [`Gather::complete`] after the invalidation. If only such
    /// (empty) tables were found, the result is `Ok(0)` and the gather still needs its flush.
    ///
    /// Fails without changing anything if the range starts or ends inside a mapping
    /// ([`Error::SplitsSuperpage`]: mappings are never split), if it holds no mapping and no
    /// table ([`Error::NothingMapped`]), if `gather` already holds another table's unmaps
    /// ([`Error::ForeignGather`]), or on bad arguments.
    ///
    /// May run concurrently with other operations on ranges disjoint from this one.
    #[inline(always)]
    pub fn unmap(&self, iova: Iova, len: u64, gather: &mut Gather) -> Result<u64> {
        let start = iova.as_u64();
        let end = self.check_range(start, len)?;
        if !gather.serves(self.root) {
            return Err(Error::ForeignGather);
        }
        let bytes = match self.format.granule_shift() {
            12 => self.unmap_here::<12>(start, end, len, gather),
            14 => self.unmap_here::<14>(start, end, len, gather),
            _ => self.unmap_here::<16>(start, end, len, gather),
        }?;
        gather.bind(self.root);
        Ok(bytes)
    }

    /// [`unmap`](Self::unmap) once its arguments are checked: the one-entry fast path (with the
    /// granule's shift `G` a constant), else the general walk.
    #[inline(always)]
    fn unmap_here<const G: u32>(
        &self,
        start: u64,
        end: u64,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64> {
        // One page, the commonest unmap, decided first: with the level a constant the walk is
        // compiled for it (measured: a quarter of a page unmap when `len` is only known at run
        // time, as it is for every caller but a benchmark).
        if len == 1 << self.g::<G>() {
            if let Some(bytes) = self.unmap_one::<G>(start, 0, gather)? {
                return Ok(bytes);
            }
        } else if let Some(level) = self.leaf_level_in::<G>(len) {
            if start & (len - 1) == 0 {
                if let Some(bytes) = self.unmap_one::<G>(start, level, gather)? {
                    return Ok(bytes);
                }
            }
        }
        // The general walk works on a gather of its own, moved in and back: the caller's never
        // has its address taken by a call, so on the fast path above the compiler keeps it in
        // registers (measured: a fifth of a VMSA single-page unmap went to spilling it).
        let mut own = core::mem::take(gather);
        let result = self.unmap_range(start, end, &mut own);
        *gather = own;
        result
    }

    /// The general unmap: any range.
    #[inline(never)]
    fn unmap_range(&self, start: u64, end: u64, gather: &mut Gather) -> Result<u64> {
        let last = end - 1;

        // Descend the path the first and last address share. Nothing is written until every
        // reason to refuse has been ruled out.
        let mut t = self.root_table();
        let mut level = self.top();
        let several = loop {
            let shift = self.shift(level);
            if (start >> shift) != (last >> shift) {
                break true;
            }
            // Descend.
            let e = t[self.index(start, level)].load(Ordering::Acquire);
            if e == 0 {
                return Err(Error::NothingMapped);
            }
            let mask = (1u64 << shift) - 1;
            if start & mask == 0 && end & mask == 0 {
                // Exactly this entry (a leaf or a whole table): removed below.
                break false;
            }
            if !self.format.is_table(e, level) {
                return Err(Error::SplitsSuperpage);
            }
            t = self.child(e, level);
            level -= 1;
        };
        if several {
            // Leaves strictly inside are removed whole; only one straddling an end would be cut.
            self.check_cut(t, level, start, start)?;
            self.check_cut(t, level, last, end)?;
        }

        let mut removed = Removed::default();
        self.unmap_in(t, level, start, end, &mut removed, gather);
        if removed.bytes == 0 && !removed.tables {
            return Err(Error::NothingMapped);
        }
        gather.record(start, end, removed.page_sizes, removed.tables);
        Ok(removed.bytes)
    }

    /// [`unmap`](Self::unmap), and the tables it left with nothing mapped go too: on the way to
    /// the range's first and to its last page, bottom up, each table whose whole span lies in
    /// `owned` and whose entries are all empty is unlinked into `gather`. Returns the bytes
    /// unmapped.
    ///
    /// `owned` (which must contain the range, else [`Error::OwnedTooSmall`] and nothing changes)
    /// is the caller's word that no other operation touches it until the gather is flushed: so
    /// no other CPU is inside a table whose span lies in it, and a slot pointing to such a table
    /// is written by no one else, as for the tables an unmap covers whole. An object model that
    /// records every mapping knows such a region: the free space around the range, which it
    /// keeps others out of while the unmap runs. With it, the table's memory follows the live
    /// mappings without [`reclaim`](Self::reclaim). Every pruned table lies on the path of the
    /// range's first or last page, so the gathered range (walk caches included) covers it.
    pub fn unmap_pruning(
        &self,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
        gather: &mut Gather,
    ) -> Result<u64> {
        let start = iova.as_u64();
        let end = self.check_range(start, len)?;
        if owned.start > start || owned.end < end {
            return Err(Error::OwnedTooSmall);
        }
        let bytes = self.unmap(iova, len, gather)?;
        let pruned =
            self.prune_path(start, &owned, gather) | self.prune_path(end - 1, &owned, gather);
        if pruned {
            gather.record(start, end, 0, true);
        }
        Ok(bytes)
    }

    /// [`unmap_pruning`](Self::unmap_pruning) followed by the flush, as
    /// [`unmap_flushed`](Self::unmap_flushed) is for [`unmap`](Self::unmap).
    pub fn unmap_pruning_flushed<I: FlushRange>(
        &self,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
        flush: &I,
    ) -> core::result::Result<u64, I::Error>
    where
        I::Error: From<Error>,
    {
        let mut gather = Gather::new();
        let bytes = self.unmap_pruning(iova, len, owned, &mut gather)?;
        self.flush_gather(gather, flush)?;
        Ok(bytes)
    }

    /// Unlinks into `gather`, bottom up, the tables on the way to each `(iova, owned)` point
    /// that map nothing and whose whole span lies in its `owned` region, as
    /// [`unmap_pruning`](Self::unmap_pruning) does after its unmap, on the same word from the
    /// caller about each `owned`; returns how many. For tables that earlier unmaps left empty
    /// where they could not prune them. The gathered range covers the page at every point, walk
    /// caches included, which reaches every table on its path.
    ///
    /// Refuses, changing nothing, a point whose `owned` does not contain it
    /// ([`Error::OwnedTooSmall`]) or which lies beyond the aperture, and a gather of another
    /// table.
    pub fn prune(&self, points: &[(Iova, Range<u64>)], gather: &mut Gather) -> Result<usize> {
        let page = 1u64 << self.format.granule_shift();
        for (iova, owned) in points {
            self.check_range(iova.as_u64() & !(page - 1), page)?;
            if !owned.contains(&iova.as_u64()) {
                return Err(Error::OwnedTooSmall);
            }
        }
        if !gather.serves(self.root) {
            return Err(Error::ForeignGather);
        }
        let before = gather.freed_frames();
        for (iova, owned) in points {
            let start = iova.as_u64() & !(page - 1);
            if self.prune_path(start, owned, gather) {
                gather.record(start, start + page, 0, true);
                gather.bind(self.root);
            }
        }
        Ok(gather.freed_frames() - before)
    }

    /// `unmap_pruning`'s second half for the path to `addr`: unlinks, bottom up, the empty
    /// tables on it whose span lies in `owned`; returns whether it unlinked any.
    fn prune_path(&self, addr: u64, owned: &Range<u64>, gather: &mut Gather) -> bool {
        // The slots on the way down that point to a table, by level (the root's own slot at the
        // top; nothing at level 0, whose entries are leaves).
        let mut path: [Option<&AtomicU64>; MAX_LEVELS] = [None; MAX_LEVELS];
        let mut t = self.root_table();
        let mut level = self.top();
        while level > 0 {
            let slot = &t[self.index(addr, level)];
            // Descend.
            let e = slot.load(Ordering::Acquire);
            if e == 0 || !self.format.is_table(e, level) {
                break;
            }
            path[level as usize] = Some(slot);
            t = self.child(e, level);
            level -= 1;
        }
        let mut pruned = false;
        for (level, slot) in path.iter().enumerate().skip(level as usize + 1) {
            let Some(slot) = slot else { break };
            let level = level as u32;
            let span = 1u64 << self.shift(level);
            let base = addr & !(span - 1);
            if base < owned.start || base + span > owned.end {
                break;
            }
            // Own: the table's span lies in `owned`, so no one else reads or writes it or its
            // slot; Acquire only for the descend convention.
            let e = slot.load(Ordering::Acquire);
            // One pass without branches: the table is almost always empty here.
            let any = self
                .child(e, level)
                .iter()
                .fold(0, |any, c| any | c.load(Ordering::Relaxed));
            if any != 0 {
                break;
            }
            // Publish (the clear), then the frame waits in the gather for the flush; all its
            // entries are zero, so its next user need not clear them.
            slot.store(0, Ordering::Release);
            self.sync(core::slice::from_ref(slot));
            gather.push_clean(&self.hal, self.format.decode_addr(e), self.granule_frame());
            pruned = true;
        }
        pruned
    }

    /// [`unmap`](Self::unmap), then the invalidation through `flush`, then the unlinked tables
    /// back to the HAL: the whole of an unmap for a back-end, with the one `unsafe` call of
    /// [`Gather::complete`] and its proof here instead of at every unmap site.
    ///
    /// If the flush fails its error is returned and the unlinked frames are leaked (a walker may
    /// still hold a cached pointer to them). Same concurrency rule as `unmap`.
    pub fn unmap_flushed<I: FlushRange>(
        &self,
        iova: Iova,
        len: u64,
        flush: &I,
    ) -> core::result::Result<u64, I::Error>
    where
        I::Error: From<Error>,
    {
        let mut gather = Gather::new();
        let bytes = self.unmap(iova, len, &mut gather)?;
        self.flush_gather(gather, flush)?;
        Ok(bytes)
    }

    /// The second half of [`unmap_flushed`](Self::unmap_flushed) for a gather filled by one or
    /// more [`unmap`](Self::unmap) calls on this table: one invalidation through `flush` of the
    /// gathered range (walk caches too if tables were removed), then the unlinked tables back to
    /// the HAL. An empty gather asks nothing of `flush`.
    ///
    /// Until this returns, walkers may still use stale translations of the gathered range. If the
    /// flush fails its error is returned and the gathered frames are leaked (a walker may still
    /// hold a cached pointer to them). A gather filled by another table is refused with
    /// [`Error::ForeignGather`] before anything is asked of `flush`, and its frames are leaked
    /// too: only its own table's flush may free them.
    pub fn flush_gather<I: FlushRange>(
        &self,
        gather: Gather,
        flush: &I,
    ) -> core::result::Result<(), I::Error>
    where
        I::Error: From<Error>,
    {
        if !gather.serves(self.root) {
            return Err(Error::ForeignGather.into());
        }
        if let Some((start, len)) = gather.range() {
            flush.flush(start, len, !gather.tables_removed())?;
        }
        // SAFETY: `FlushRange`'s contract: every unit that walks this table has completed the
        // invalidation of the gathered range, walk caches included when tables were removed;
        // the engine's rule that no operation overlapping the range runs meanwhile is the one
        // `unmap` itself relies on; the frames came from this table's own HAL (`serves`: only
        // this table's `unmap` or `reclaim` filled the gather).
        unsafe {
            gather.release(&self.hal, |frame, size, clean| {
                self.keep_or_free(frame, size, clean)
            })
        };
        Ok(())
    }

    /// Frees the tables that unmaps have left empty: unlinks every table below the root that
    /// maps nothing (bottom up, so a table whose last child goes goes too), gathers their
    /// frames and the ranges to invalidate in `gather`, and returns how many it unlinked.
    /// [`flush_gather`](Self::flush_gather) then invalidates (walk caches included) and frees.
    ///
    /// Why not in every unmap: under `&self` another CPU may be on its way through the table
    /// that an unmap just emptied (a map of a neighbouring page, a translation), and freeing it
    /// safely would need every operation to announce itself with an atomic read-modify-write or
    /// a full fence (7 ns measured here, as much as a whole single-page unmap). A caller that
    /// can vouch for the space around an unmap uses [`unmap_pruning`](Self::unmap_pruning)
    /// instead; this is for the others. `&mut self` proves no operation runs, so the sweep
    /// costs the data path nothing. It reads every table (512 entries each with 4 KiB pages):
    /// call it when memory matters, not per unmap.
    ///
    /// Refuses a gather filled by another table ([`Error::ForeignGather`]), changing nothing.
    pub fn reclaim(&mut self, gather: &mut Gather) -> Result<usize> {
        if !gather.serves(self.root) {
            return Err(Error::ForeignGather);
        }
        let before = gather.freed_frames();
        let mut hull = (u64::MAX, 0);
        let top = self.top();
        let span = 1u64 << self.shift(top);
        let root = self.root_table();
        for (i, slot) in root.iter().enumerate() {
            // `&mut self`: nothing else runs; Acquire only for form (the descend convention).
            let e = slot.load(Ordering::Acquire);
            if e != 0
                && self.format.is_table(e, top)
                && self.sweep_below(e, top, i as u64 * span, gather, &mut hull)
            {
                self.unlink(slot, e, i as u64 * span, span, gather, &mut hull);
            }
        }
        let freed = gather.freed_frames() - before;
        if freed > 0 {
            gather.record(hull.0, hull.1, 0, true);
            gather.bind(self.root);
        }
        Ok(freed)
    }

    /// [`reclaim`](Self::reclaim), then the invalidation through `flush` and the frames freed,
    /// as [`unmap_flushed`](Self::unmap_flushed) does for an unmap. Returns the tables freed.
    pub fn reclaim_flushed<I: FlushRange>(
        &mut self,
        flush: &I,
    ) -> core::result::Result<usize, I::Error>
    where
        I::Error: From<Error>,
    {
        let mut gather = Gather::new();
        let freed = self.reclaim(&mut gather)?;
        self.flush_gather(gather, flush)?;
        Ok(freed)
    }

    /// Free table frames kept for the next tables (at most [`CACHED_FRAMES`]).
    pub fn cached_frames(&self) -> usize {
        self.cache
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// `reclaim`'s sweep below the table entry `e` at `level`, whose span starts at `base`:
    /// unlinks the empty tables below it and returns whether its own table is empty after that.
    fn sweep_below(
        &self,
        e: u64,
        level: u32,
        base: u64,
        gather: &mut Gather,
        hull: &mut (u64, u64),
    ) -> bool {
        let child_level = level - 1;
        let span = 1u64 << self.shift(child_level);
        let t = self.child(e, level);
        let mut empty = true;
        for (i, slot) in t.iter().enumerate() {
            let c = slot.load(Ordering::Acquire);
            if c == 0 {
                continue;
            }
            let at = base + i as u64 * span;
            if child_level > 0
                && self.format.is_table(c, child_level)
                && self.sweep_below(c, child_level, at, gather, hull)
            {
                self.unlink(slot, c, at, span, gather, hull);
            } else {
                empty = false;
            }
        }
        empty
    }

    /// Unlinks the empty table that `slot` (holding `e`) points to, whose span is
    /// `[at, at + span)`, into `gather`.
    fn unlink(
        &self,
        slot: &AtomicU64,
        e: u64,
        at: u64,
        span: u64,
        gather: &mut Gather,
        hull: &mut (u64, u64),
    ) {
        // Publish (the clear): a walker sees the table or nothing, and the flush that follows
        // drops any cached pointer to it.
        slot.store(0, Ordering::Release);
        self.sync(core::slice::from_ref(slot));
        gather.push_clean(&self.hal, self.format.decode_addr(e), self.granule_frame());
        hull.0 = hull.0.min(at);
        hull.1 = hull.1.max(at + span);
    }

    /// A freed table frame: kept in the cache if it is a granule and a slot is free, else
    /// given back to the HAL. `clean`: every entry but the first is zero.
    ///
    /// The caller guarantees what [`Gather::complete`] asks: no walker or CPU can reach it.
    fn keep_or_free(&self, frame: u64, size: FrameSize, clean: bool) {
        if size == self.granule_frame() {
            let kept = if clean { frame | CACHED_CLEAN } else { frame };
            for slot in &self.cache {
                // Release: the frame's last contents (the gather's link) are written before it
                // is handed to whoever takes it (with Acquire) and zeroes it.
                if slot
                    .compare_exchange(0, kept, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }
        // SAFETY: an unreachable table frame of `size` from this table's HAL (caller).
        unsafe { self.hal.free_frame(PhysAddr::new(frame), size) };
    }

    /// A frame from the cache, if one is there (not yet zeroed), and whether every entry but
    /// the first is zero already.
    #[inline(always)]
    fn take_cached(&self) -> Option<(u64, bool)> {
        for slot in &self.cache {
            // Relaxed peek: a miss only sends the caller to the HAL.
            if slot.load(Ordering::Relaxed) != 0 {
                // Acquire pairs with `keep_or_free`'s Release: the frame's earlier writes come
                // before the zeroes the taker writes.
                let kept = slot.swap(0, Ordering::Acquire);
                if kept != 0 {
                    return Some((kept & !CACHED_CLEAN, kept & CACHED_CLEAN != 0));
                }
            }
        }
        None
    }

    /// The physical address `iova` translates to.
    ///
    /// Fails with [`Error::NothingMapped`] if nothing is mapped there and
    /// [`Error::BeyondAperture`] if `iova` is outside the input address space.
    #[inline(always)]
    pub fn iova_to_phys(&self, iova: Iova) -> Result<PhysAddr> {
        let va = iova.as_u64();
        if va >= self.aperture_end {
            return Err(Error::BeyondAperture);
        }
        let mut t = self.root_table();
        let mut level = self.top();
        loop {
            // Acquire pairs with the release that published the entry (or the table it points
            // to), so the table below is seen fully initialised.
            let e = t[self.index(va, level)].load(Ordering::Acquire);
            if e == 0 {
                return Err(Error::NothingMapped);
            }
            if self.format.is_table(e, level) {
                t = self.child(e, level);
                level -= 1;
                continue;
            }
            let mask = (1u64 << self.shift(level)) - 1;
            return Ok(PhysAddr::new(
                (self.format.decode_addr(e) & !mask) | (va & mask),
            ));
        }
    }

    /// The entry at each level on the way to `iova`, for debugging and tests.
    pub fn walk(&self, iova: Iova) -> Result<Walk> {
        let va = iova.as_u64();
        if va >= self.aperture_end {
            return Err(Error::BeyondAperture);
        }
        let mut walk = Walk::default();
        let mut table_pa = self.root;
        let mut t = self.root_table();
        let mut level = self.top();
        loop {
            let index = self.index(va, level);
            // Descend.
            let raw = t[index].load(Ordering::Acquire);
            let span = 1u64 << self.shift(level);
            let kind = if raw == 0 {
                EntryKind::Empty
            } else if self.format.is_table(raw, level) {
                EntryKind::Table {
                    next: PhysAddr::new(self.format.decode_addr(raw)),
                }
            } else {
                EntryKind::Leaf {
                    phys: PhysAddr::new(self.format.decode_addr(raw) & !(span - 1)),
                    size: span,
                    prot: self.format.decode_prot(raw, level),
                }
            };
            walk.steps[walk.len] = WalkStep {
                level,
                table: PhysAddr::new(table_pa),
                index,
                raw,
                kind,
            };
            walk.len += 1;
            match kind {
                EntryKind::Table { next } => {
                    table_pa = next.as_u64();
                    t = self.child(raw, level);
                    level -= 1;
                }
                _ => return Ok(walk),
            }
        }
    }

    /// Unlinks every table, including the root, into `gather` and gives the HAL back.
    ///
    /// The gather's range is the whole input address space and `tables_removed` is set: the
    /// back-end detaches the domain from all hardware contexts, invalidates, then completes the
    /// gather to free the frames.
    pub fn destroy(self, gather: &mut Gather) -> H {
        let mut removed = Removed::default();
        let top = self.top();
        let span = 1u64 << self.shift(top);
        for slot in self.root_table() {
            // `self` is owned: no operation can run any more.
            let e = slot.load(Ordering::Acquire);
            if e == 0 {
                continue;
            }
            if self.format.is_table(e, top) {
                self.take_subtree(e, top, &mut removed, gather);
            } else {
                removed.leaf(span);
            }
        }
        gather.push(&self.hal, self.root, self.format.root_frame());
        // Cached frames were never reachable by a walker since their last flush; they go with
        // the rest.
        for slot in &self.cache {
            let kept = slot.load(Ordering::Acquire);
            if kept != 0 {
                gather.push(&self.hal, kept & !CACHED_CLEAN, self.granule_frame());
            }
        }
        gather.record(0, self.aperture_end(), removed.page_sizes, true);
        let Self { hal, .. } = self;
        hal
    }

    // ---- geometry ----

    #[inline(always)]
    fn top(&self) -> u32 {
        self.format.levels() - 1
    }

    /// The granule's shift: `G` where a caller compiled its path for one granule, else (`G` =
    /// 0) the format's.
    ///
    /// Why: a VMSA format's granule is a value of the table, so every shift and mask of a walk
    /// would be computed (and, after each acquire load, reloaded) at run time. The single-page
    /// paths of `map` and `unmap` are instead compiled once per granule (a `match` on it, which
    /// folds away for the fixed-granule formats), so their shifts and masks are constants.
    #[inline(always)]
    fn g<const G: u32>(&self) -> u32 {
        if G == 0 {
            self.format.granule_shift()
        } else {
            debug_assert_eq!(G, self.format.granule_shift());
            G
        }
    }

    /// log2 of the span of one entry at `level`.
    #[inline(always)]
    fn shift(&self, level: u32) -> u32 {
        self.shift_in::<0>(level)
    }

    #[inline(always)]
    fn shift_in<const G: u32>(&self, level: u32) -> u32 {
        let g = self.g::<G>();
        g + level * (g - 3)
    }

    #[inline(always)]
    fn index(&self, va: u64, level: u32) -> usize {
        self.index_in::<0>(va, level)
    }

    #[inline(always)]
    fn index_in<const G: u32>(&self, va: u64, level: u32) -> usize {
        let entries = if level == self.top() {
            self.top_entries
        } else {
            1 << (self.g::<G>() - 3)
        };
        ((va >> self.shift_in::<G>(level)) as usize) & (entries - 1)
    }

    #[inline(always)]
    fn granule_frame(&self) -> FrameSize {
        match FrameSize::from_log2(self.format.granule_shift()) {
            Some(s) => s,
            // `new` accepted only 12, 14 and 16.
            None => FrameSize::SIZE_4K,
        }
    }

    // ---- table access ----

    /// Entries of a non-root table: a granule's worth.
    #[inline(always)]
    fn granule_entries(&self) -> usize {
        1 << (self.g::<0>() - 3)
    }

    /// The entries of the table frame at `pa`.
    ///
    /// # Safety
    ///
    /// `pa` is a table frame of this page table holding `entries` entries (the root, or the
    /// target of a table entry read from one, with a granule's worth), and stays allocated while
    /// `&self` is borrowed.
    #[inline(always)]
    unsafe fn frame(&self, pa: u64, entries: usize) -> &[AtomicU64] {
        let ptr = self.hal.phys_to_virt(PhysAddr::new(pa)).as_ptr() as *const AtomicU64;
        // SAFETY: the HAL contract makes the frame readable and writable through `ptr` with
        // 64-bit atomics; it holds `entries` entries (caller) and stays allocated (caller).
        // Every access to entries is atomic, so shared references are sound.
        unsafe { core::slice::from_raw_parts(ptr, entries) }
    }

    #[inline(always)]
    fn root_table(&self) -> &[AtomicU64] {
        // SAFETY: the root is allocated in `new` with room for `top_entries` (checked there) and
        // freed only through `destroy`, which takes `self` by value.
        unsafe { self.frame(self.root, self.top_entries) }
    }

    /// The table a table entry `e` at `level` points to (always below the root, so a granule).
    #[inline(always)]
    fn child(&self, e: u64, level: u32) -> &[AtomicU64] {
        self.child_in::<0>(e, level)
    }

    #[inline(always)]
    fn child_in<const G: u32>(&self, e: u64, level: u32) -> &[AtomicU64] {
        debug_assert!(level > 0);
        // SAFETY: table entries in live tables are written only by `install_table`, from
        // granule frames the HAL gave this table (the `Format` contract makes `decode_addr`
        // return that frame). A frame leaves the tree only through an unmap covering its span,
        // which no operation reaching it may overlap, and is freed only by `Gather::complete`
        // under the same rule.
        unsafe { self.frame(self.format.decode_addr_in::<G>(e), 1 << (self.g::<G>() - 3)) }
    }

    // ---- non-coherent walkers ----

    /// Cleans `entries` to the point of coherency if the walker does not snoop.
    #[inline(always)]
    fn sync(&self, entries: &[AtomicU64]) {
        if !self.coherent && !entries.is_empty() {
            self.hal
                .clean_to_poc(NonNull::from(&entries[0]).cast(), size_of_val(entries));
        }
    }

    /// Before descending through the table entry `e` stored in `slot`: if its installer has not
    /// yet confirmed the clean (no `SW_SYNCED`), clean it ourselves, so that this operation
    /// cannot return while a non-coherent walker could still miss the table.
    #[inline(always)]
    fn sync_path(&self, slot: &AtomicU64, e: u64) {
        if !self.coherent && e & F::SW_SYNCED == 0 {
            self.sync(core::slice::from_ref(slot));
        }
    }

    // ---- map ----

    /// Checks an unmap range; returns its end.
    #[inline(always)]
    fn check_range(&self, va: u64, len: u64) -> Result<u64> {
        let gmask = (1u64 << self.format.granule_shift()) - 1;
        let (end, wraps) = va.overflowing_add(len);
        // One test for the valid case; the cold path names the first rule broken.
        if len != 0 && (va | len) & gmask == 0 && !wraps && end <= self.aperture_end {
            return Ok(end);
        }
        Err(self.range_error(va, len))
    }

    #[cold]
    fn range_error(&self, va: u64, len: u64) -> Error {
        let gmask = (1u64 << self.format.granule_shift()) - 1;
        if len == 0 {
            Error::ZeroLength
        } else if va & gmask != 0 {
            Error::UnalignedIova
        } else if len & gmask != 0 {
            Error::UnalignedLength
        } else if va.checked_add(len).is_none() {
            Error::WrapAround
        } else {
            Error::BeyondAperture
        }
    }

    /// Checks map arguments; returns the end of the IOVA range.
    #[inline(always)]
    fn check_map(&self, va: u64, pa: u64, len: u64, prot: Prot) -> Result<u64> {
        let gmask = (1u64 << self.format.granule_shift()) - 1;
        let (end, wraps) = va.overflowing_add(len);
        let (pend, pwraps) = pa.overflowing_add(len);
        // One test for the valid case; the cold path names the first rule broken.
        let ok = len != 0
            && (va | pa | len) & gmask == 0
            && !(wraps | pwraps)
            && end <= self.aperture_end
            && pend <= self.oa_end;
        if !ok {
            return Err(self.map_error(va, pa, len));
        }
        self.format.check_prot(prot)?;
        Ok(end)
    }

    #[cold]
    fn map_error(&self, va: u64, pa: u64, len: u64) -> Error {
        let gmask = (1u64 << self.format.granule_shift()) - 1;
        if len == 0 {
            Error::ZeroLength
        } else if va & gmask != 0 {
            Error::UnalignedIova
        } else if pa & gmask != 0 {
            Error::UnalignedPhys
        } else if len & gmask != 0 {
            Error::UnalignedLength
        } else if va.checked_add(len).is_none() || pa.checked_add(len).is_none() {
            Error::WrapAround
        } else if va + len > self.aperture_end {
            Error::BeyondAperture
        } else {
            Error::PhysBeyondOas
        }
    }

    /// The level above the smallest page whose entries span exactly `len` bytes and may be
    /// leaves, if any (a page itself is decided by the callers before they ask).
    #[inline(always)]
    fn leaf_level_in<const G: u32>(&self, len: u64) -> Option<u32> {
        // A short chain of compares against constants: the common sizes are decided in one or
        // two steps.
        for level in 1..self.format.levels() {
            let span = 1u64 << self.shift_in::<G>(level);
            if len <= span {
                return (len == span && self.format.leaf_ok(level)).then_some(level);
            }
        }
        None
    }

    /// `map` of a single page or superpage at `level`: the commonest DMA mapping, with the
    /// least work per level. Returns `Ok(false)` if a table sits where the leaf would go, for
    /// the general path to fill with smaller pages; otherwise decides as the general path would.
    #[inline(always)]
    fn map_one<const G: u32>(&self, va: u64, pa: u64, level: u32, prot: Prot) -> Result<bool> {
        let stride = self.g::<G>() - 3;
        let mask = (1 << stride) - 1;
        let mut l = self.top();
        let mut shift = self.shift_in::<G>(l);
        let mut slot = &self.root_table()[self.index_in::<G>(va, l)];
        while l > level {
            let (t, _) = self.table_below_in::<G>(slot, l)?;
            l -= 1;
            shift -= stride;
            slot = &t[((va >> shift) as usize) & mask];
        }
        // Relaxed: this slot's span is ours alone, so no concurrent operation writes it.
        let e = slot.load(Ordering::Relaxed);
        if e != 0 {
            if self.format.is_table(e, level) {
                return Ok(false);
            }
            return Err(Error::AlreadyMapped);
        }
        // Release: the tables installed on the way are visible before the leaf reaching them.
        slot.store(
            self.format.leaf_bits(level, prot) | self.format.encode_addr(pa),
            Ordering::Release,
        );
        self.sync(core::slice::from_ref(slot));
        Ok(true)
    }

    /// `unmap` of exactly one entry's span at `level`. Returns `Ok(None)` if the entry is a
    /// table (the general path unlinks it whole); otherwise decides as the general path would.
    #[inline(always)]
    fn unmap_one<const G: u32>(
        &self,
        va: u64,
        level: u32,
        gather: &mut Gather,
    ) -> Result<Option<u64>> {
        let stride = self.g::<G>() - 3;
        let mask = (1 << stride) - 1;
        let mut l = self.top();
        let mut shift = self.shift_in::<G>(l);
        let mut slot = &self.root_table()[self.index_in::<G>(va, l)];
        loop {
            // Acquire: follow table pointers into fully visible tables.
            let e = slot.load(Ordering::Acquire);
            if e == 0 {
                return Err(Error::NothingMapped);
            }
            let table = self.format.is_table(e, l);
            if l == level {
                if table {
                    return Ok(None);
                }
                break;
            }
            if !table {
                // A larger leaf covers the range: removing the range alone would cut it.
                return Err(Error::SplitsSuperpage);
            }
            let t = self.child_in::<G>(e, l);
            l -= 1;
            shift -= stride;
            slot = &t[((va >> shift) as usize) & mask];
        }
        // Publish (the clear).
        slot.store(0, Ordering::Release);
        self.sync(core::slice::from_ref(slot));
        let len = 1u64 << shift;
        gather.record(va, va + len, len, false);
        Ok(Some(len))
    }

    /// The table below `slot` (an entry at `level`), installing a new one if the slot is empty.
    /// Returns whether this call created it. Fails if the slot holds a leaf.
    #[inline(always)]
    fn table_below(&self, slot: &AtomicU64, level: u32) -> Result<(&[AtomicU64], bool)> {
        self.table_below_in::<0>(slot, level)
    }

    #[inline(always)]
    fn table_below_in<const G: u32>(
        &self,
        slot: &AtomicU64,
        level: u32,
    ) -> Result<(&[AtomicU64], bool)> {
        // Acquire pairs with the installer's release: the table's zeroes (and any entries
        // published since) are visible before we read them.
        let e = slot.load(Ordering::Acquire);
        if e == 0 {
            return self.install_table(slot, level);
        }
        if !self.format.is_table(e, level) {
            return Err(Error::AlreadyMapped);
        }
        self.sync_path(slot, e);
        Ok((self.child_in::<G>(e, level), false))
    }

    #[cold]
    #[inline(never)]
    fn install_table(&self, slot: &AtomicU64, level: u32) -> Result<(&[AtomicU64], bool)> {
        let size = self.granule_frame();
        let (frame, fresh) = match self.take_cached() {
            Some((frame, clean)) => {
                // SAFETY: a granule frame of this table that the cache handed to this call
                // alone; unreachable since the flush that preceded its caching.
                let t = unsafe { self.frame(frame, self.granule_entries()) };
                // A clean frame (pruned because empty) has only the gather's link to clear.
                let dirty = if clean { &t[..1] } else { t };
                for e in dirty {
                    // Relaxed: the frame is private until the release below publishes it.
                    e.store(0, Ordering::Relaxed);
                }
                (frame, t)
            }
            None => {
                let frame = self
                    .hal
                    .alloc_frame(size)
                    .ok_or(Error::OutOfMemory)?
                    .as_u64();
                // SAFETY: just allocated, a granule, for this table; not yet visible to anyone.
                (frame, unsafe { self.frame(frame, self.granule_entries()) })
            }
        };
        // A non-coherent walker must find zeroes in memory before it can find the pointer.
        self.sync(fresh);
        let entry = self.format.table_entry(frame);
        // Release on success publishes the zero-filled table before the pointer to it (for a
        // CPU that acquires the entry, and for the walker, which observes our stores in release
        // order). Acquire on failure pairs with the winner's release so its table is readable.
        match slot.compare_exchange(0, entry, Ordering::Release, Ordering::Acquire) {
            Ok(_) => {
                if !self.coherent {
                    self.sync(core::slice::from_ref(slot));
                    // Only the installer sets the bit; readers of either value find the same
                    // table. Release keeps it after the clean for those who skip cleaning on it.
                    slot.store(entry | F::SW_SYNCED, Ordering::Release);
                }
                Ok((fresh, true))
            }
            Err(current) => {
                // Lost the race: our table was never published, so nobody can have seen it; it
                // is all zeroes.
                self.keep_or_free(frame, size, true);
                if !self.format.is_table(current, level) {
                    return Err(Error::AlreadyMapped);
                }
                self.sync_path(slot, current);
                Ok((self.child(current, level), false))
            }
        }
    }

    /// Read-only overlap check of `[va, end)` under `t` (at `level`).
    fn check_free(&self, t: &[AtomicU64], level: u32, mut va: u64, end: u64) -> Result<()> {
        let span_mask = (1u64 << self.shift(level)) - 1;
        let mut idx = self.index(va, level);
        while va < end {
            let next = min(end, (va | span_mask) + 1);
            // Descend.
            let e = t[idx].load(Ordering::Acquire);
            if e != 0 {
                if !self.format.is_table(e, level) {
                    return Err(Error::AlreadyMapped);
                }
                self.check_free(self.child(e, level), level - 1, va, next)?;
            }
            va = next;
            idx += 1;
        }
        Ok(())
    }

    /// Maps `[va, end)` under `t` (at `level`). Leaves of one table are written as one run after
    /// the whole run was found empty.
    fn map_in(
        &self,
        t: &[AtomicU64],
        level: u32,
        mut va: u64,
        end: u64,
        mut pa: u64,
        prot: Prot,
    ) -> core::result::Result<(), MapFail> {
        let shift = self.shift(level);
        let span = 1u64 << shift;
        let leaf_ok = self.format.leaf_ok(level);
        let mut idx = self.index(va, level);
        while va < end {
            if leaf_ok && (va | pa) & (span - 1) == 0 && end - va >= span {
                let n = min(((end - va) >> shift) as usize, t.len() - idx);
                let run = &t[idx..idx + n];
                // Relaxed is enough to see that a slot is empty: a slot whose whole span lies in
                // our range is written by no concurrent operation (they are disjoint from us).
                let free = run
                    .iter()
                    .position(|s| s.load(Ordering::Relaxed) != 0)
                    .unwrap_or(n);
                let blocked = if free < n {
                    let e = run[free].load(Ordering::Acquire);
                    if !self.format.is_table(e, level) {
                        return Err((Error::AlreadyMapped, va));
                    }
                    Some(e)
                } else {
                    None
                };
                let bits = self.format.leaf_bits(level, prot);
                // A local copy: its geometry stays in registers across the stores below.
                let format = self.format;
                // Release: whatever this CPU wrote before (tables on the path, earlier
                // entries) is visible before the leaf that makes it reachable.
                if format.linear_addr() {
                    // Consecutive leaves differ by `span` in the address field alone.
                    let mut e = bits | format.encode_addr(pa);
                    for slot in &run[..free] {
                        slot.store(e, Ordering::Release);
                        e += span;
                    }
                } else {
                    let mut p = pa;
                    for slot in &run[..free] {
                        slot.store(bits | format.encode_addr(p), Ordering::Release);
                        p += span;
                    }
                }
                self.sync(&run[..free]);
                let done = (free as u64) << shift;
                va += done;
                pa += done;
                idx += free;
                if let Some(e) = blocked {
                    // A table left by earlier, smaller mappings sits where a leaf could go:
                    // fill this entry's span inside it with smaller pages.
                    self.sync_path(&t[idx], e);
                    self.map_in(self.child(e, level), level - 1, va, va + span, pa, prot)?;
                    va += span;
                    pa += span;
                    idx += 1;
                }
            } else {
                let next = min(end, (va | (span - 1)) + 1);
                let (child, _) = self.table_below(&t[idx], level).map_err(|e| (e, va))?;
                self.map_in(child, level - 1, va, next, pa, prot)?;
                pa += next - va;
                va = next;
                idx += 1;
            }
        }
        Ok(())
    }

    /// Rolls back a failed map: clears the leaves in `[va, end)`, all written by that map.
    /// Tables stay (a concurrent neighbour may already use them).
    fn clear_leaves(&self, t: &[AtomicU64], level: u32, mut va: u64, end: u64) {
        let span_mask = (1u64 << self.shift(level)) - 1;
        let first = self.index(va, level);
        let mut idx = first;
        while va < end {
            let next = min(end, (va | span_mask) + 1);
            // Descend.
            let e = t[idx].load(Ordering::Acquire);
            if e != 0 {
                if self.format.is_table(e, level) {
                    self.clear_leaves(self.child(e, level), level - 1, va, next);
                } else {
                    // Publish (the clear).
                    t[idx].store(0, Ordering::Release);
                }
            }
            va = next;
            idx += 1;
        }
        self.sync(&t[first..idx]);
    }

    // ---- unmap ----

    /// Fails if the leaf containing `addr` under `t` does not start or end at `boundary` (the
    /// unmap's start, or its end with `addr` = end - 1), i.e. if the unmap would cut it.
    fn check_cut<'a>(
        &'a self,
        mut t: &'a [AtomicU64],
        mut level: u32,
        addr: u64,
        boundary: u64,
    ) -> Result<()> {
        loop {
            let mask = (1u64 << self.shift(level)) - 1;
            if boundary & mask == 0 {
                // Every entry at this level lies wholly on one side of the boundary.
                return Ok(());
            }
            // Descend.
            let e = t[self.index(addr, level)].load(Ordering::Acquire);
            if e == 0 {
                return Ok(());
            }
            if !self.format.is_table(e, level) {
                return Err(Error::SplitsSuperpage);
            }
            t = self.child(e, level);
            level -= 1;
        }
    }

    /// Removes everything in `[start, end)` under `t` (at `level`); no leaf straddles the ends.
    fn unmap_in(
        &self,
        t: &[AtomicU64],
        level: u32,
        start: u64,
        end: u64,
        removed: &mut Removed,
        gather: &mut Gather,
    ) {
        let shift = self.shift(level);
        let span = 1u64 << shift;
        let first = self.index(start, level);
        let mut base = start & !(span - 1);
        let n = ((end - 1 - base) >> shift) as usize + 1;
        if level == 0 {
            // Only leaves, each wholly inside the range: the tight loop of a range unmap.
            let mut leaves = 0;
            for slot in &t[first..first + n] {
                // Relaxed: a leaf is not followed, and this span is ours alone.
                if slot.load(Ordering::Relaxed) != 0 {
                    // Publish (the clear).
                    slot.store(0, Ordering::Release);
                    leaves += 1;
                }
            }
            if leaves > 0 {
                removed.bytes += leaves * span;
                removed.page_sizes |= span;
                self.sync(&t[first..first + n]);
            }
            return;
        }
        let mut touched = false;
        for slot in &t[first..first + n] {
            // Acquire: a table entry must be followed into a fully visible table.
            let e = slot.load(Ordering::Acquire);
            if e != 0 {
                let lo = max(start, base);
                let hi = min(end, base + span);
                if !self.format.is_table(e, level) {
                    // Wholly inside the range (checked before): remove it. Publish.
                    slot.store(0, Ordering::Release);
                    removed.leaf(span);
                    touched = true;
                } else if lo == base && hi == base + span {
                    // The whole table goes. Swap so that the table is unlinked exactly once
                    // even if a caller broke the disjointness rule.
                    let e = slot.swap(0, Ordering::AcqRel);
                    if e != 0 {
                        self.take_subtree(e, level, removed, gather);
                        removed.tables = true;
                        touched = true;
                    }
                } else {
                    self.unmap_in(self.child(e, level), level - 1, lo, hi, removed, gather);
                }
            }
            base += span;
        }
        if touched {
            self.sync(&t[first..first + n]);
        }
    }

    /// Counts the leaves under the unlinked table entry `e` (at `level`) and moves its tables
    /// into `gather`. The entries are left as they are: a walker with a cached pointer may read
    /// them until the invalidation, exactly as it may use a cached leaf.
    fn take_subtree(&self, e: u64, level: u32, removed: &mut Removed, gather: &mut Gather) {
        let child_level = level - 1;
        let span = 1u64 << self.shift(child_level);
        let table_pa = self.format.decode_addr(e);
        for slot in self.child(e, level) {
            // Descend.
            let c = slot.load(Ordering::Acquire);
            if c == 0 {
                continue;
            }
            if self.format.is_table(c, child_level) {
                self.take_subtree(c, child_level, removed, gather);
            } else {
                removed.leaf(span);
            }
        }
        // Only now, with every entry read, may the first entry become the chain link.
        gather.push(&self.hal, table_pa, self.granule_frame());
    }
}

impl<F: Format + fmt::Debug, H: Hal> fmt::Debug for PageTable<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageTable")
            .field("format", &self.format)
            .field("root", &self.root())
            .field("coherent", &self.coherent)
            .finish()
    }
}

/// What a walk found in one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Not present: the walk ends here.
    Empty,
    /// A pointer to the next table.
    Table {
        /// Physical address of the next-level table.
        next: PhysAddr,
    },
    /// A page or superpage/block.
    Leaf {
        /// Physical base of the page.
        phys: PhysAddr,
        /// Page size in bytes.
        size: u64,
        /// Permissions as the entry encodes them.
        prot: Prot,
    },
}

/// One level of a [`Walk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkStep {
    /// Engine level (0 = smallest pages; VT-d level = this + 1, Arm level = 3 - this).
    pub level: u32,
    /// Physical address of the table read at this level.
    pub table: PhysAddr,
    /// Index of the entry read.
    pub index: usize,
    /// The raw entry.
    pub raw: u64,
    /// Its meaning.
    pub kind: EntryKind,
}

/// The entries read on the way to one IOVA, root first.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    steps: [WalkStep; MAX_LEVELS],
    len: usize,
}

impl Default for Walk {
    fn default() -> Self {
        Self {
            steps: [WalkStep {
                level: 0,
                table: PhysAddr::new(0),
                index: 0,
                raw: 0,
                kind: EntryKind::Empty,
            }; MAX_LEVELS],
            len: 0,
        }
    }
}

impl Walk {
    /// The steps, root first; the last one is a leaf or an empty entry.
    pub fn steps(&self) -> &[WalkStep] {
        &self.steps[..self.len]
    }

    /// The leaf step, if the walk found a mapping.
    pub fn leaf(&self) -> Option<&WalkStep> {
        self.steps()
            .last()
            .filter(|s| matches!(s.kind, EntryKind::Leaf { .. }))
    }
}

impl fmt::Debug for Walk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps()).finish()
    }
}
