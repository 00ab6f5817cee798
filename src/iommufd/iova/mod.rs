//! The IOVA space of one paging domain: its usable windows (the aperture), its reserved regions
//! and the mappings made through the object model, with the iommufd rules for map, unmap and
//! automatic allocation. Bookkeeping only: the hardware table is changed by the unit, inside a
//! range this space has handed out.
//!
//! Every method takes `&self`: see [`IovaSpace`] for how CPUs share one space.

extern crate alloc;

mod emptied;
mod stripes;

use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroUsize;

use super::error::{Error, Result};
use crate::pagetable::Prot;
use crate::sync::spin_loop;
pub(crate) use emptied::Emptied;
pub use emptied::PENDING_PRUNES;
use stripes::{stripe_hull, Held, Stripes};

/// Every IOVA.
const EVERYTHING: Region = Region {
    start: 0,
    last: u64::MAX,
};

/// The smallest alignment of an automatically allocated IOVA: the 4 KiB granule every back-end
/// supports.
pub const MIN_ALIGN: u64 = 4096;

/// An unmap under way: the span of the mappings it removes (holes between them included), and
/// the region it holds meanwhile, which no other map or unmap enters: the span itself, or, for
/// an unmap that frees the tables it empties, the free space around the span as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unmapping {
    /// From the first mapping's start to the last one's end: what the unit is asked to unmap.
    pub(crate) span: Region,
    /// Contains `span`; what the unit may treat as its own (`TranslationUnit::unmap_pruning`).
    pub(crate) owned: Region,
}

/// How far an unmap looks for free space to hold around its span.
#[derive(Clone, Copy)]
enum Prune {
    /// Nowhere: it holds its span (a deferred unmap, whose claim ends before its flush), and
    /// notes the place for a sweep when the span's stripes hold nothing else.
    Note,
    /// In the span's own stripes, noting the place when they hold nothing else.
    Near,
    /// Everywhere: an unmap of every mapping, which holds every lock anyway.
    Everywhere,
}

/// A range of IOVAs, `start..=last` (inclusive, so a window may end at `2^64 - 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub last: u64,
}

impl Region {
    /// `[start, start + len)`, or `None` if `len` is zero or the range wraps past `2^64`.
    pub const fn new(start: u64, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        match start.checked_add(len - 1) {
            Some(last) => Some(Self { start, last }),
            None => None,
        }
    }

    /// Every address below `2^bits` (the whole space from 64 bits on): the usual single window
    /// of a domain whose table translates `bits` input bits.
    pub const fn below_bits(bits: u32) -> Self {
        let last = if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits).wrapping_sub(1)
        };
        Self { start: 0, last }
    }

    /// The length in bytes, or `None` for the whole 64-bit space (`2^64` does not fit).
    pub const fn size(self) -> Option<u64> {
        (self.last - self.start).checked_add(1)
    }

    /// Whether the two ranges share an address.
    pub const fn overlaps(self, other: Region) -> bool {
        self.start <= other.last && other.start <= self.last
    }

    /// Whether `other` lies wholly inside `self`.
    pub const fn contains(self, other: Region) -> bool {
        self.start <= other.start && other.last <= self.last
    }

    fn checked(start: u64, len: u64) -> Result<Self> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        Self::new(start, len).ok_or(Error::WrapAround)
    }
}

/// Why a region is kept out of the IOVA space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReservedKind {
    /// An MSI doorbell the unit translates specially (x86 `0xfee0_0000..=0xfeef_ffff`, an ITS
    /// doorbell mapped by the platform): a DMA mapping there would never reach memory.
    MsiDoorbell,
    /// Firmware-declared memory a device keeps using (VT-d RMRR, Arm RMR). Not direct-mapped by
    /// this version: it is only kept free.
    Rmrr,
    /// Anything else the embedder wants kept free (its own reasons).
    Other,
}

/// A reserved region of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reserved {
    /// The addresses.
    pub region: Region,
    /// Why they are reserved.
    pub kind: ReservedKind,
}

impl Reserved {
    /// x86's interrupt address range, `0xfee0_0000..=0xfeef_ffff` (a DMA write there is an
    /// interrupt request): the MSI window of an x86 domain.
    pub const X86_MSI: Self = Self {
        region: Region {
            start: 0xfee0_0000,
            last: 0xfeef_ffff,
        },
        kind: ReservedKind::MsiDoorbell,
    };
}

/// The layout of a new paging domain's IOVA space.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// Usable windows: disjoint, 4 KiB aligned at both ends, below `2^ia_bits`. Several are
    /// allowed (e.g. a low 32-bit window for legacy devices and a high one).
    pub windows: &'a [Region],
    /// Regions never mapped and never allocated, wherever they lie.
    pub reserved: &'a [Reserved],
}

/// One mapping made through the object model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The IOVAs.
    pub iova: Region,
    /// The physical address `iova.start` maps to.
    pub phys: u64,
}

/// Windows, reserved regions and mappings of one paging domain, shared by every CPU that maps
/// into it.
///
/// # Several CPUs
///
/// Every method takes `&self`; CPUs map and unmap one domain at once. The records live in
/// *stripes* (2 MiB of IOVA space each) hashed over 64 spin locks, so CPUs working
/// in different stripes take different locks and never wait for each other; each lock is held
/// only to check and update records, never across a unit call (but by a sweep, below). An
/// operation is three steps:
///
/// 1. **Begin** (the locks of every stripe its range touches, taken in increasing lock order):
///    check the range against the records, then *claim* it: a map records its range as
///    `Mapping`, an unmap records the span it will remove (holes included) as being unmapped,
///    with the free space around it in its stripes, where the unit may free emptied tables.
///    If an overlapping operation is under way, release everything, spin, and begin again.
/// 2. **Unit call**, with no lock held: the unit writes its table and invalidates.
/// 3. **End** (the same locks again): a made map becomes `Mapped`, an unmap's mappings are
///    forgotten; a refused unit call drops the claim, leaving the records as before.
///
/// Why it is correct:
/// - *Exactly one of two overlapping requests wins.* Overlapping ranges share an address, hence
///   a stripe, hence a lock: their begins are serialised by it, and the second one sees the
///   first one's claim (waits while it is under way, then sees its outcome: `AlreadyMapped`
///   after a made map, nothing after an unmap).
/// - *The page table's rule holds.* The engine lets operations run at once only on disjoint
///   ranges ([`crate::pagetable`]): unit calls happen only inside claims, and claims are
///   disjoint. The shared lock also orders one operation's table writes before the next one's
///   on the same range: the first releases the lock in its end step, the second acquires it in
///   its begin step, so the release/acquire pair carries every write of the first.
/// - *No deadlock.* A call takes its locks in one global order and never waits for a claim while
///   holding a lock; a claim is released once its unit call returns, and the back-ends bound
///   every hardware wait, so every wait for a claim ends.
/// - *Each call takes effect at one instant* (at its end step; a refusal at its begin step):
///   [`IovaSpace::iova_to_phys`] and [`IovaSpace::mappings`] see a map once it returned and an
///   unmapped range until its unmap returns.
///
/// *Sweeps.* Tables larger than a stripe that unmaps emptied are freed by a sweep, which takes
/// every lock and keeps it across its unit call: no operation can begin meanwhile, and those
/// under way are inside claims, which the free space it hands the unit excludes. It waits only
/// for the unit, whose waits are bounded, so every wait for a lock still ends.
///
/// [`IovaSpace::find_free`] and the `map_anywhere` that uses it take every lock for the search:
/// automatic allocation is serialised per domain (per-CPU IOVA caches would lift that). The
/// protocol is checked by a loom model (`loom_tests` in this module's source).
pub struct IovaSpace {
    windows: Vec<Region>,
    reserved: Vec<Reserved>,
    stripes: Stripes,
    /// Where unmaps emptied every stripe they touched, so that tables larger than those
    /// stripes (or, after an unmap that frees no table, the stripes' own) may have emptied
    /// too, left for the next [`sweep`](Self::sweep) (at most [`PENDING_PRUNES`], or the
    /// threshold the embedder chose, before one is due). Its lock is taken after stripe locks,
    /// never before.
    emptied: Emptied,
}

impl fmt::Debug for IovaSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaSpace")
            .field("windows", &self.windows)
            .field("reserved", &self.reserved)
            .field("stripes", &self.stripes)
            .finish_non_exhaustive()
    }
}

impl IovaSpace {
    /// Checks `layout` against an input address size of `ia_bits` and builds the empty space.
    pub fn new(ia_bits: u32, layout: &Layout<'_>) -> Result<Self> {
        if layout.windows.is_empty() {
            return Err(Error::BadLayout("no usable window"));
        }
        if ia_bits == 0 || ia_bits > 64 {
            return Err(Error::BadLayout("input address size out of 1..=64 bits"));
        }
        let top = if ia_bits == 64 {
            u64::MAX
        } else {
            (1u64 << ia_bits) - 1
        };
        let mut windows: Vec<Region> = layout.windows.to_vec();
        windows.sort();
        for (i, w) in windows.iter().enumerate() {
            if w.start > w.last {
                return Err(Error::BadLayout("window ends before it starts"));
            }
            if w.last > top {
                return Err(Error::BadLayout("window beyond the input address size"));
            }
            // `last + 1` aligned, written so that a window ending at 2^64 - 1 passes.
            if !w.start.is_multiple_of(MIN_ALIGN) || w.last % MIN_ALIGN != MIN_ALIGN - 1 {
                return Err(Error::BadLayout("window not 4 KiB aligned"));
            }
            if i > 0 && windows[i - 1].overlaps(*w) {
                return Err(Error::BadLayout("windows overlap"));
            }
        }
        if layout
            .reserved
            .iter()
            .any(|r| r.region.start > r.region.last)
        {
            return Err(Error::BadLayout("reserved region ends before it starts"));
        }
        Ok(Self {
            windows,
            reserved: layout.reserved.to_vec(),
            stripes: Stripes::new(),
            emptied: Emptied::new(),
        })
    }

    /// The usable windows, sorted.
    pub fn windows(&self) -> &[Region] {
        &self.windows
    }

    /// The reserved regions.
    pub fn reserved(&self) -> &[Reserved] {
        &self.reserved
    }

    /// The mappings made (their map returned), by increasing IOVA: a snapshot.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.stripes.lock_all().mappings()
    }

    /// [`mappings`](Self::mappings) with the permissions each was made with.
    pub(super) fn mappings_with_prot(&self) -> Vec<(Mapping, Prot)> {
        self.stripes.lock_all().mappings_with_prot()
    }

    /// Whether nothing is mapped (nor being mapped or unmapped).
    pub fn is_empty(&self) -> bool {
        self.stripes.lock_all().is_empty()
    }

    /// The physical address `iova` translates to through a mapping made, if any.
    pub fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        self.stripes
            .lock(Region {
                start: iova,
                last: iova,
            })
            .phys_of(iova)
    }

    /// Checks that `[iova, iova + len)` lies in a window and clear of reserved regions: the
    /// parts of a map's checks that never change.
    fn check_aperture(&self, iova: u64, len: u64) -> Result<Region> {
        let r = Region::checked(iova, len)?;
        if !self.windows.iter().any(|w| w.contains(r)) {
            return Err(Error::OutsideAperture);
        }
        if let Some(res) = self.reserved.iter().find(|res| res.region.overlaps(r)) {
            return Err(Error::ReservedRegion(res.kind));
        }
        Ok(r)
    }

    /// Starts a map of `[iova, iova + len)` to `phys` with `prot`: checks it and claims the range, so that
    /// no other map or unmap touches it until [`end_map`](Self::end_map). Waits while an
    /// overlapping map or unmap is under way (see the module docs).
    pub(super) fn begin_map(&self, iova: u64, len: u64, phys: u64, prot: Prot) -> Result<Region> {
        let r = self.check_aperture(iova, len)?;
        loop {
            let mut held = self.stripes.lock(r);
            if held.busy(r) {
                drop(held);
                spin_loop();
                continue;
            }
            if held.any_mapped(r) {
                return Err(Error::AlreadyMapped);
            }
            held.claim(r, phys, prot);
            return Ok(r);
        }
    }

    /// Starts a map of `len` bytes to `phys` at the lowest free IOVA aligned to the length
    /// (rounded up to a power of two, at least [`MIN_ALIGN`]) inside one window, touching no
    /// reserved region, no mapping and nothing under way; claims it like
    /// [`begin_map`](Self::begin_map).
    pub(super) fn begin_map_anywhere(&self, len: u64, phys: u64, prot: Prot) -> Result<Region> {
        loop {
            let mut held = self.stripes.lock_all();
            let Some(start) = self.find_free_in(&held, len)? else {
                drop(held);
                spin_loop();
                continue;
            };
            let r = Region::checked(start, len)?;
            held.claim(r, phys, prot);
            return Ok(r);
        }
    }

    /// Ends a map started by [`begin_map`](Self::begin_map): the mapping is recorded if the
    /// unit `made` it, else the range is free again.
    pub(super) fn end_map(&self, r: Region, made: bool) {
        self.stripes.lock(r).settle(r, made);
    }

    /// Starts an unmap of `[iova, iova + len)`: it must hold at least one mapping and cut none.
    /// Returns the span from the first mapping's start to the last one's end (what the unit is
    /// asked to unmap, claimed until [`end_unmap`](Self::end_unmap)) and the bytes mapped
    /// inside. Waits while an overlapping map or unmap is under way.
    ///
    /// The unit frees no table here (the claim may end before the invalidation, as a deferred
    /// unmap's does), so when the span's stripes hold nothing else the place is noted for a
    /// [`sweep`](Self::sweep), as [`begin_unmap_pruning`](Self::begin_unmap_pruning) notes it.
    pub(super) fn begin_unmap(&self, iova: u64, len: u64) -> Result<(Region, u64)> {
        let r = Region::checked(iova, len)?;
        let (u, total) = self.begin_unmap_of(r, Prune::Note)?;
        Ok((u.span, total))
    }

    /// [`begin_unmap`](Self::begin_unmap) for an unmap that frees the tables it empties: it
    /// also holds the free space around the span (`Unmapping::owned`), so that no other map or
    /// unmap runs inside a table the unit may free. Ended by
    /// [`end_unmap_pruning`](Self::end_unmap_pruning).
    ///
    /// The free space is looked for in the span's own stripes (their locks are the ones the
    /// range takes), so the unit frees the tables no larger than those stripes (the leaf tables
    /// of 4 KiB pages span one stripe). When the stripes hold nothing else, tables above them
    /// may have emptied as well: looking further would take every lock, so the place is noted
    /// instead, and once [`PENDING_PRUNES`] are noted the caller sweeps them
    /// ([`sweep_due`](Self::sweep_due), [`sweep`](Self::sweep)).
    pub(super) fn begin_unmap_pruning(&self, iova: u64, len: u64) -> Result<(Unmapping, u64)> {
        let r = Region::checked(iova, len)?;
        self.begin_unmap_of(r, Prune::Near)
    }

    /// [`begin_unmap_pruning`](Self::begin_unmap_pruning) of every mapping, holding all the
    /// free space around them at once (the domain is left empty: every table may go); `None`
    /// when there are none.
    pub(super) fn begin_unmap_all(&self) -> Result<Option<(Unmapping, u64)>> {
        match self.begin_unmap_of(EVERYTHING, Prune::Everywhere) {
            Ok(found) => Ok(Some(found)),
            Err(Error::NothingMapped) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn begin_unmap_of(&self, r: Region, prune: Prune) -> Result<(Unmapping, u64)> {
        loop {
            // (An unmap of everything takes every lock.)
            let mut held = self.stripes.lock(r);
            if held.busy(r) {
                drop(held);
                spin_loop();
                continue;
            }
            let (span, total) = held.span_inside(r)?;
            if !matches!(prune, Prune::Everywhere) {
                self.note_emptied_ends(&held, span);
            }
            let owned = match prune {
                Prune::Note => span,
                Prune::Near => held.free_around(span, stripe_hull(span)),
                Prune::Everywhere => held.free_around(span, EVERYTHING),
            };
            let u = Unmapping { span, owned };
            held.guard(u);
            return Ok((u, total));
        }
    }

    /// Notes each end of `span` whose stripe holds no other mapping: a table the unmap of
    /// `span` empties without covering it contains an end, and where the end's stripe is left
    /// empty, so may the tables above it (and, after an unmap that frees no table, the
    /// stripe's own). Once per stripe: a place in it stands for the whole stripe. `held` holds
    /// the span's stripes.
    fn note_emptied_ends(&self, held: &Held<'_>, span: Region) {
        for end in [span.start, span.last] {
            let stripe = stripe_hull(Region {
                start: end,
                last: end,
            });
            if !held.mapped_outside(span, stripe) {
                self.emptied.note(end);
            }
        }
    }

    /// Whether enough places wait for a [`sweep`](Self::sweep) ([`PENDING_PRUNES`], or what
    /// [`set_sweep_threshold`](Self::set_sweep_threshold) chose): a hint read without a lock
    /// (a stale answer moves the sweep to a later unmap).
    pub(super) fn sweep_due(&self) -> bool {
        self.emptied.due()
    }

    /// Makes a sweep due once `places` places are noted instead of [`PENDING_PRUNES`].
    pub(super) fn set_sweep_threshold(&mut self, places: NonZeroUsize) {
        self.emptied.set_threshold(places);
    }

    /// Takes the places unmaps noted and hands `prune` each one that still lies in free
    /// space, with the free space around it (`(place, free space)`), while
    /// holding every lock: no map or unmap can begin until `prune` returns, and those under way
    /// are inside their own claims, which the free space excludes. So `prune` may free any
    /// empty table inside the regions it is given (`TranslationUnit::prune_tables`). Returns
    /// what `prune` returned, or `None` if no place was noted.
    ///
    /// The one call that holds locks across a unit call: it waits for nothing but the unit,
    /// whose waits are bounded, so the others' wait for the locks ends.
    pub(super) fn sweep<R>(&self, prune: impl FnOnce(&[(u64, Region)]) -> R) -> Option<R> {
        let held = self.stripes.lock_all();
        let places = self.emptied.take();
        let mut points: Vec<(u64, Region)> = Vec::new();
        for at in places {
            let here = Region {
                start: at,
                last: at,
            };
            if held.busy(here) {
                // An operation under way there: the next sweep looks again.
                self.emptied.note(at);
                continue;
            }
            if held.any_mapped(here) {
                // Mapped again: its tables are in use.
                continue;
            }
            // Free regions are maximal: a place inside one already found has the same.
            let free = match points.iter().find(|(_, f)| f.contains(here)) {
                Some(&(_, f)) => f,
                None => held.free_around(here, EVERYTHING),
            };
            points.push((at, free));
        }
        (!points.is_empty()).then(|| prune(&points))
    }

    /// Ends an unmap started by [`begin_unmap`](Self::begin_unmap): the mappings inside `span`
    /// are forgotten if the unit `removed` them, else kept; the span is free for others again.
    pub(super) fn end_unmap(&self, span: Region, removed: bool) {
        self.end_unmap_pruning(Unmapping { span, owned: span }, removed);
    }

    /// Ends an unmap started by [`begin_unmap_pruning`](Self::begin_unmap_pruning), as
    /// [`end_unmap`](Self::end_unmap) does; its whole region is free for others again.
    pub(super) fn end_unmap_pruning(&self, u: Unmapping, removed: bool) {
        self.stripes.lock(u.owned).unguard(u, removed);
    }

    /// The IOVA `map_anywhere` would pick for `len` bytes now: the lowest free one aligned to
    /// the length (rounded up to a power of two, at least [`MIN_ALIGN`]). Only looks (and
    /// waits, as `map_anywhere` does, while an unmap holds the free space it would pick).
    pub fn find_free(&self, len: u64) -> Result<u64> {
        loop {
            if let Some(at) = self.find_free_in(&self.stripes.lock_all(), len)? {
                return Ok(at);
            }
            spin_loop();
        }
    }

    /// The lowest free IOVA for `len` bytes, or `None` if it lies in free space that an unmap
    /// holds while it frees tables (free again, and the lowest, once that unmap ends: wait).
    fn find_free_in(&self, held: &Held<'_>, len: u64) -> Result<Option<u64>> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let align = len
            .checked_next_power_of_two()
            .ok_or(Error::NoSpace)?
            .max(MIN_ALIGN);
        for w in &self.windows {
            let mut cand = align_up(w.start, align);
            while let Some(c) = cand {
                let Some(r) = Region::new(c, len) else { break };
                if r.last > w.last {
                    break;
                }
                // Jump past the farthest obstacle in the way; every jump passes at least one
                // obstacle, so the loop ends.
                let blocked = self
                    .reserved
                    .iter()
                    .map(|res| res.region)
                    .filter(|o| o.overlaps(r))
                    .map(|o| o.last)
                    .chain(held.obstacle_end(r))
                    .max();
                match blocked {
                    None if held.busy(r) => return Ok(None),
                    None => return Ok(Some(c)),
                    Some(last) => cand = last.checked_add(1).and_then(|n| align_up(n, align)),
                }
            }
        }
        Err(Error::NoSpace)
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` past `2^64`.
fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn below_bits() {
        assert_eq!(
            Region::below_bits(12),
            Region {
                start: 0,
                last: 0xfff
            }
        );
        assert_eq!(Region::below_bits(64).last, u64::MAX);
        assert_eq!(Region::below_bits(0), Region { start: 0, last: 0 });
    }

    fn r(start: u64, len: u64) -> Region {
        Region {
            start,
            last: start + len - 1,
        }
    }

    fn space(windows: &[Region], reserved: &[Reserved]) -> IovaSpace {
        match IovaSpace::new(48, &Layout { windows, reserved }) {
            Ok(s) => s,
            Err(e) => panic!("layout: {e}"),
        }
    }

    /// A made mapping of `r`, as if the unit had accepted it.
    fn mapped(s: &IovaSpace, r: Region) {
        let size = r.last - r.start + 1;
        assert_eq!(s.begin_map(r.start, size, 0x1000_0000, Prot::READ), Ok(r));
        s.end_map(r, true);
    }

    #[test]
    fn layout_is_checked() {
        let bad = |w: &[Region]| {
            IovaSpace::new(
                32,
                &Layout {
                    windows: w,
                    reserved: &[],
                },
            )
            .err()
        };
        assert_eq!(bad(&[]), Some(Error::BadLayout("no usable window")));
        assert!(matches!(bad(&[r(0, 1 << 33)]), Some(Error::BadLayout(_))));
        assert!(matches!(
            bad(&[r(0x1000, 0x800)]),
            Some(Error::BadLayout(_))
        ));
        assert!(matches!(
            bad(&[r(0, 0x4000), r(0x2000, 0x4000)]),
            Some(Error::BadLayout(_))
        ));
        let full = Region {
            start: 0,
            last: u64::MAX,
        };
        assert!(IovaSpace::new(
            64,
            &Layout {
                windows: &[full],
                reserved: &[]
            }
        )
        .is_ok());
    }

    #[test]
    fn alloc_skips_reserved_and_mappings_and_aligns_to_length() {
        let msi = Reserved {
            region: r(0x10_0000, 0x1000),
            kind: ReservedKind::MsiDoorbell,
        };
        let s = space(&[r(0x1000, 0x7f_f000), r(0x100_0000, 0x10_0000)], &[msi]);
        // The first window starts at 4 KiB: a 64 KiB request goes to the first 64 KiB boundary.
        assert_eq!(s.find_free(0x1_0000), Ok(0x1_0000));
        assert_eq!(s.find_free(0x3000), Ok(0x4000));
        mapped(&s, r(0x1000, 0xf_f000));
        // The rest of the low 1 MiB is mapped and the next page is the doorbell.
        assert_eq!(s.find_free(0x1000), Ok(0x10_1000));
        // 8 MiB fits in neither window.
        assert_eq!(s.find_free(0x80_0000), Err(Error::NoSpace));
        // 1 MiB: the first 1 MiB boundary past the mapping and the doorbell.
        assert_eq!(s.find_free(0x10_0000), Ok(0x20_0000));
        mapped(&s, r(0x20_0000, 0x60_0000));
        // The low window is full up to its end: the high one.
        assert_eq!(s.find_free(0x10_0000), Ok(0x100_0000));
        assert_eq!(s.find_free(0), Err(Error::ZeroLength));
    }

    #[test]
    fn unmap_span_and_cut() {
        let s = space(&[r(0, 1 << 30)], &[]);
        mapped(&s, r(0x1000, 0x1000));
        mapped(&s, r(0x4000, 0x2000));
        assert_eq!(s.begin_unmap(0x5000, 0x1000), Err(Error::WouldCut));
        assert_eq!(s.begin_unmap(0x2000, 0x2000), Err(Error::NothingMapped));
        assert_eq!(s.begin_unmap(u64::MAX, 2), Err(Error::WrapAround));
        // A refused unit call keeps everything.
        let (span, total) = s.begin_unmap(0, 0x10000).unwrap_or((r(0, 1), 0));
        assert_eq!((span, total), (r(0x1000, 0x5000), 0x3000));
        s.end_unmap(span, false);
        assert_eq!(s.mappings().len(), 2);
        let all = Unmapping {
            span,
            owned: EVERYTHING,
        };
        assert_eq!(s.begin_unmap_all(), Ok(Some((all, 0x3000))));
        s.end_unmap_pruning(all, true);
        assert!(s.is_empty());
        assert_eq!(s.begin_unmap_all(), Ok(None));
    }

    #[test]
    fn a_pruning_unmap_holds_the_free_space_in_its_stripes_and_notes_emptied_ones() {
        const M2: u64 = 0x20_0000;
        let s = space(&[r(0, 1 << 30)], &[]);
        mapped(&s, r(0x1000, 0x1000));
        mapped(&s, r(0x10_0000, 0x1000));
        mapped(&s, r(2 * M2, 0x1000));
        let begin = |iova, len| match s.begin_unmap_pruning(iova, len) {
            Ok(found) => found,
            Err(e) => panic!("unmap of {iova:#x}: {e}"),
        };
        let noted = |s: &IovaSpace| s.emptied.noted();

        // Its stripe holds another mapping: the free space up to it, from the stripe's start;
        // nothing above the stripe can have emptied, so nothing is noted.
        let (u, total) = begin(0x1000, 0x1000);
        assert_eq!(total, 0x1000);
        assert_eq!((u.span, u.owned), (r(0x1000, 0x1000), r(0, 0x10_0000)));
        assert!(noted(&s).is_empty());
        // Meanwhile nothing is mapped or unmapped there, and a search for free space waits
        // rather than skip it.
        assert!(s.stripes.lock(r(0, 0x1000)).busy(r(0, 0x1000)));
        assert_eq!(s.find_free_in(&s.stripes.lock_all(), 0x1000), Ok(None));
        s.end_unmap_pruning(u, true);
        assert_eq!(s.find_free(0x1000), Ok(0));

        // A map under way bounds the free space like a mapping, but it is not one yet: the
        // place is noted.
        assert_eq!(
            s.begin_map(0x8000, 0x1000, 0, Prot::READ),
            Ok(r(0x8000, 0x1000))
        );
        let (u, _) = begin(0x10_0000, 0x1000);
        assert_eq!(u.owned, r(0x9000, M2 - 0x9000));
        assert_eq!(noted(&s), [0x10_0000]);
        s.end_unmap_pruning(u, false);
        s.end_map(r(0x8000, 0x1000), false);

        // The last mapping of its stripe: its whole stripe, and the place noted again.
        let (u, _) = begin(0x10_0000, 0x1000);
        assert_eq!(u.owned, r(0, M2));
        assert!(!s.sweep_due());
        s.end_unmap_pruning(u, true);

        // A sweep hands over each noted place still free with the free space around it, up to
        // the next mapping; a place mapped again meanwhile is left alone.
        assert_eq!(
            s.sweep(|points| points.to_vec()),
            Some(std::vec![(0x10_0000, r(0, 2 * M2))])
        );
        assert_eq!(
            s.sweep(|points| points.len()),
            None,
            "nothing noted any more"
        );
        let (u, _) = begin(2 * M2, 0x1000);
        s.end_unmap_pruning(u, true);
        mapped(&s, r(2 * M2, 0x1000));
        assert_eq!(s.sweep(|points| points.len()), None);
        assert!(s.emptied.noted().is_empty());

        // A stripe is noted once, however often it empties; PENDING_PRUNES stripes make a
        // sweep due.
        let churn = |at: u64| {
            mapped(&s, r(at, 0x1000));
            let (u, _) = begin(at, 0x1000);
            s.end_unmap_pruning(u, true);
        };
        for k in 1..PENDING_PRUNES as u64 {
            churn(8 * M2 + k * M2);
            churn(8 * M2 + k * M2 + 0x1000);
        }
        assert_eq!(s.emptied.noted().len(), PENDING_PRUNES - 1);
        assert!(!s.sweep_due());
        churn(8 * M2);
        assert!(s.sweep_due());

        // An unmap of everything holds everything.
        let (u, _) = match s.begin_unmap_all() {
            Ok(Some(found)) => found,
            other => panic!("unmap all: {other:?}"),
        };
        assert_eq!(u.owned, EVERYTHING);
        s.end_unmap_pruning(u, true);
        assert!(s.is_empty());
    }

    #[test]
    fn a_plain_unmap_holds_its_span_only_and_notes_an_emptied_stripe() {
        let s = space(&[r(0, 1 << 30)], &[]);
        mapped(&s, r(0x1000, 0x1000));
        mapped(&s, r(0x10_0000, 0x1000));
        let begin = |iova, len| match s.begin_unmap(iova, len) {
            Ok((span, _)) => span,
            Err(e) => panic!("unmap of {iova:#x}: {e}"),
        };

        // Its stripe holds another mapping: nothing noted, and a map beside it goes ahead.
        let span = begin(0x1000, 0x1000);
        assert_eq!(span, r(0x1000, 0x1000));
        assert_eq!(
            s.begin_map(0x2000, 0x1000, 0, Prot::READ),
            Ok(r(0x2000, 0x1000))
        );
        s.end_map(r(0x2000, 0x1000), false);
        s.end_unmap(span, true);
        assert!(s.emptied.noted().is_empty());

        // The last mapping of its stripe: noted, and swept with the free space around it.
        let span = begin(0x10_0000, 0x1000);
        s.end_unmap(span, true);
        assert_eq!(s.emptied.noted(), [0x10_0000]);
        assert_eq!(
            s.sweep(|points| points.to_vec()),
            Some(std::vec![(0x10_0000, EVERYTHING)])
        );

        // A span across two stripes left empty: each end is noted, as each end's tables may
        // have emptied.
        let crossing = r(0x1f_f000, 0x2000);
        mapped(&s, crossing);
        let span = begin(crossing.start, 0x2000);
        s.end_unmap(span, true);
        assert_eq!(s.emptied.noted(), [0x1f_f000, 0x20_0fff]);
    }

    #[test]
    fn records_span_stripes_and_locks() {
        // 2 MiB stripes: a mapping crossing stripes, and one 128 MiB further, stay apart.
        let s = space(&[r(0, 1 << 40)], &[]);
        let crossing = r(0x1f_f000, 0x2000);
        let far = r(0x1f_f000 + (128 << 20), 0x1000);
        mapped(&s, crossing);
        mapped(&s, far);
        assert_eq!(
            s.begin_map(0x20_0000, 0x1000, 0, Prot::READ),
            Err(Error::AlreadyMapped)
        );
        assert_eq!(s.iova_to_phys(0x20_0800), Some(0x1000_1800));
        assert_eq!(s.iova_to_phys(0x20_1000), None);
        // A range over every lock, and one of the whole space.
        let big = r(1 << 32, 1 << 30);
        mapped(&s, big);
        let all: Vec<Region> = s.mappings().iter().map(|m| m.iova).collect();
        assert_eq!(all, [crossing, far, big]);
        assert_eq!(s.begin_unmap(0, 0x20_0000), Err(Error::WouldCut));
        let (span, total) = s.begin_unmap(0, 1 << 40).unwrap_or((r(0, 1), 0));
        assert_eq!(total, 0x3000 + (1 << 30));
        s.end_unmap(span, true);
        assert!(s.is_empty());
    }

    #[test]
    fn a_failed_map_leaves_the_range_free() {
        let s = space(&[r(0, 1 << 30)], &[]);
        let claimed = s.begin_map(0x3000, 0x1000, 0, Prot::READ);
        assert_eq!(claimed, Ok(r(0x3000, 0x1000)));
        // While claimed, automatic allocation goes around it.
        assert_eq!(s.find_free(0x1000), Ok(0));
        assert_eq!(
            s.begin_map_anywhere(0x4000, 0, Prot::READ),
            Ok(r(0x4000, 0x4000))
        );
        s.end_map(r(0x4000, 0x4000), true);
        s.end_map(r(0x3000, 0x1000), false);
        assert_eq!(s.iova_to_phys(0x3000), None);
        assert_eq!(
            s.begin_map(0x3000, 0x1000, 0, Prot::READ),
            Ok(r(0x3000, 0x1000))
        );
    }
}

/// Loom model of the claim protocol: every interleaving of CPUs mapping and unmapping one space,
/// with a table page per 4 KiB written only inside claims. loom fails the model if two CPUs
/// touch one page without a happens-before edge (the page table's rule broken), and the
/// assertions check that exactly one of two overlapping maps wins.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::RacyCell;
    use loom::sync::Arc;

    const PAGE: u64 = 0x1000;
    /// Pages on both sides of the first stripe boundary (2 MiB), so ranges take one or two locks.
    const BASE: u64 = 0x20_0000 - 2 * PAGE;

    struct World {
        space: IovaSpace,
        /// The "table": which owner wrote each page last.
        pages: [RacyCell<u64>; 4],
    }

    impl World {
        fn new() -> Arc<Self> {
            let windows = [Region::below_bits(32)];
            let space = match IovaSpace::new(
                32,
                &Layout {
                    windows: &windows,
                    reserved: &[],
                },
            ) {
                Ok(s) => s,
                Err(e) => panic!("layout: {e}"),
            };
            Arc::new(Self {
                space,
                pages: core::array::from_fn(|_| RacyCell::new(0)),
            })
        }

        fn pages(&self, r: Region) -> impl Iterator<Item = &RacyCell<u64>> {
            let first = ((r.start - BASE) / PAGE) as usize;
            let last = ((r.last - BASE) / PAGE) as usize;
            self.pages[first..=last].iter()
        }

        /// A map through the protocol; the unit call writes the pages.
        fn map(&self, first: u64, pages: u64, who: u64) -> bool {
            let Ok(r) = self
                .space
                .begin_map(BASE + first * PAGE, pages * PAGE, who, Prot::READ)
            else {
                return false;
            };
            for p in self.pages(r) {
                // SAFETY: the claim excludes every other access to these pages (the property
                // under test; loom reports a race if it does not hold).
                unsafe { p.set(who) };
            }
            self.space.end_map(r, true);
            true
        }

        fn unmap(&self, first: u64, pages: u64) -> Option<u64> {
            let (span, total) = self
                .space
                .begin_unmap(BASE + first * PAGE, pages * PAGE)
                .ok()?;
            for p in self.pages(span) {
                // SAFETY: as in `map`: the span is claimed.
                unsafe { p.set(0) };
            }
            self.space.end_unmap(span, true);
            Some(total)
        }

        /// A pruning unmap: the unit may write anywhere in the region it holds (tables it
        /// frees), so every page there is written. Returns that region.
        fn unmap_pruning(&self, first: u64, pages: u64) -> Option<Region> {
            let (u, _) = self
                .space
                .begin_unmap_pruning(BASE + first * PAGE, pages * PAGE)
                .ok()?;
            for (i, p) in self.pages.iter().enumerate() {
                let at = BASE + i as u64 * PAGE;
                if u.owned.start <= at && at <= u.owned.last {
                    // SAFETY: as in `map`: the region is claimed.
                    unsafe { p.set(0) };
                }
            }
            self.space.end_unmap_pruning(u, true);
            Some(u.owned)
        }

        /// A sweep: the unit may write anywhere in the free space around each noted place.
        fn sweep(&self) -> bool {
            self.space
                .sweep(|points| {
                    for (i, p) in self.pages.iter().enumerate() {
                        let at = BASE + i as u64 * PAGE;
                        if points.iter().any(|(_, f)| f.start <= at && at <= f.last) {
                            // SAFETY: the sweep holds every lock and the free space excludes
                            // every claim.
                            unsafe { p.set(0) };
                        }
                    }
                })
                .is_some()
        }

        fn owner_of(&self, page: usize) -> u64 {
            // SAFETY: called after every thread was joined.
            unsafe { self.pages[page].get() }
        }
    }

    /// One model: a fresh world prepared by `before`, then `other` on a second CPU while this
    /// one runs `this`; `check` gets the world and both answers (this, other) after the join.
    fn race<A: Send + 'static, B: 'static>(
        before: fn(&World),
        other: fn(&World) -> A,
        this: fn(&World) -> B,
        check: fn(&World, B, A),
    ) {
        loom::model(move || {
            let w = World::new();
            before(&w);
            let w2 = w.clone();
            let t = loom::thread::spawn(move || other(&w2));
            let b = this(&w);
            let a = match t.join() {
                Ok(v) => v,
                Err(_) => panic!("thread panicked"),
            };
            check(&w, b, a);
        });
    }

    #[test]
    fn overlapping_maps_one_wins() {
        // Pages 0..3 (two locks) against pages 1..4 (two locks): pages 1 and 2 contested.
        race(
            |_| {},
            |w| w.map(1, 3, 2),
            |w| w.map(0, 3, 1),
            |w, a, b| {
                assert!(a ^ b, "exactly one map wins: {a} {b}");
                let winner = if a { 1 } else { 2 };
                assert_eq!(w.owner_of(1), winner);
                assert_eq!(w.owner_of(2), winner);
            },
        );
    }

    #[test]
    fn a_map_into_a_hole_waits_for_the_unmap_around_it() {
        // The unmap's span covers the hole at page 1, which the other CPU maps: either before
        // the unmap began (and is unmapped with it) or after it ended.
        race(
            |w| {
                assert!(w.map(0, 1, 1));
                assert!(w.map(2, 1, 1));
            },
            |w| w.map(1, 1, 2),
            |w| w.unmap(0, 3),
            |w, removed, mapped| {
                assert!(mapped, "the hole is free");
                match removed {
                    Some(n) if n == 3 * PAGE => assert_eq!(w.owner_of(1), 0),
                    Some(n) if n == 2 * PAGE => assert_eq!(w.owner_of(1), 2),
                    other => panic!("unmap removed {other:?}"),
                }
                assert_eq!((w.owner_of(0), w.owner_of(2)), (0, 0));
            },
        );
    }

    #[test]
    fn a_map_into_the_free_space_a_pruning_unmap_holds_waits_for_it() {
        // Page 0's stripe holds pages 0 and 1: the unmap holds page 1 too, unless the other
        // CPU's map claimed it first.
        race(
            |w| {
                assert!(w.map(0, 1, 1));
                assert!(w.map(3, 1, 1));
            },
            |w| w.map(1, 1, 2),
            |w| w.unmap_pruning(0, 1),
            |w, owned, mapped| {
                assert!(mapped, "page 1 is free, once the unmap ends if not before");
                let owned = owned.expect("page 0 was mapped");
                assert_eq!(owned.start, 0);
                assert!(owned.last == BASE + PAGE - 1 || owned.last == BASE + 2 * PAGE - 1);
                assert_eq!((w.owner_of(0), w.owner_of(1), w.owner_of(3)), (0, 2, 1));
            },
        );
    }

    #[test]
    fn a_map_waits_for_a_sweep_of_the_free_space_around_it() {
        // Page 0 was the last mapping of its stripe, so its place was noted; the sweep writes
        // every page of the free space around it, which holds page 1 unless the other CPU's
        // map got there first.
        race(
            |w| {
                assert!(w.map(0, 1, 1));
                assert!(w.unmap_pruning(0, 1).is_some());
            },
            |w| w.map(1, 1, 2),
            |w| w.sweep(),
            |w, swept, mapped| {
                assert!(mapped);
                assert!(swept, "page 0 is free either way");
                assert_eq!((w.owner_of(0), w.owner_of(1)), (0, 2));
            },
        );
    }

    #[test]
    fn an_unmap_waits_for_a_map_under_way() {
        // Pages 1..3 cross the stripe boundary: the map takes both locks.
        race(
            |_| {},
            |w| w.map(1, 2, 1),
            |w| w.unmap(0, 4),
            |w, removed, mapped| {
                assert!(mapped);
                match removed {
                    None => assert_eq!((w.owner_of(1), w.owner_of(2)), (1, 1)),
                    Some(n) => {
                        assert_eq!(n, 2 * PAGE);
                        assert_eq!((w.owner_of(1), w.owner_of(2)), (0, 0));
                    }
                }
            },
        );
    }
}
