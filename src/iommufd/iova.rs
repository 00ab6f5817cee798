//! The IOVA space of one paging domain: its usable windows (the aperture), its reserved regions
//! and the mappings made through the object model, with the iommufd rules for map, unmap and
//! automatic allocation. Pure bookkeeping: the hardware table is changed by the unit, only after
//! these checks passed.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::error::{Error, Result};

/// The smallest alignment of an automatically allocated IOVA: the 4 KiB granule every back-end
/// supports.
pub const MIN_ALIGN: u64 = 4096;

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

/// Windows, reserved regions and mappings of one paging domain.
#[derive(Debug)]
pub struct IovaSpace {
    windows: Vec<Region>,
    reserved: Vec<Reserved>,
    /// Keyed by first IOVA; the value's `iova.last` bounds it. Disjoint by construction.
    mappings: BTreeMap<u64, Mapping>,
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
            mappings: BTreeMap::new(),
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

    /// The mappings, by increasing IOVA.
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.values()
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// The mappings that share an address with `r`, by increasing IOVA.
    fn overlapping(&self, r: Region) -> impl Iterator<Item = &Mapping> {
        // Mappings are disjoint and sorted, so those starting at or before `r.last` end in
        // increasing order too: the ones ending before `r.start` form a prefix to skip.
        self.mappings
            .range(..=r.last)
            .map(|(_, m)| m)
            .skip_while(move |m| m.iova.last < r.start)
    }

    /// Checks that `[iova, iova + len)` may be mapped; returns the range.
    pub fn check_map(&self, iova: u64, len: u64) -> Result<Region> {
        let r = Region::checked(iova, len)?;
        if !self.windows.iter().any(|w| w.contains(r)) {
            return Err(Error::OutsideAperture);
        }
        if let Some(res) = self.reserved.iter().find(|res| res.region.overlaps(r)) {
            return Err(Error::ReservedRegion(res.kind));
        }
        if self.overlapping(r).next().is_some() {
            return Err(Error::AlreadyMapped);
        }
        Ok(r)
    }

    /// Records a mapping checked by [`check_map`](Self::check_map) and made in the hardware.
    pub(super) fn insert(&mut self, iova: Region, phys: u64) {
        self.mappings.insert(iova.start, Mapping { iova, phys });
    }

    /// Checks an unmap of `[iova, iova + len)`: it must hold at least one mapping and cut none.
    /// Returns the span from the first mapping's start to the last one's end (what the unit is
    /// asked to unmap) and the total bytes mapped inside.
    pub fn check_unmap(&self, iova: u64, len: u64) -> Result<(Region, u64)> {
        let r = Region::checked(iova, len)?;
        self.span_of(r)
    }

    /// The span and total of every mapping inside `r`, refusing a cut and an empty range.
    fn span_of(&self, r: Region) -> Result<(Region, u64)> {
        let mut span: Option<Region> = None;
        let mut total: u64 = 0;
        for m in self.overlapping(r) {
            if !r.contains(m.iova) {
                return Err(Error::WouldCut);
            }
            // A mapping's length fits: mappings are made from a 64-bit `len`.
            total = total.saturating_add(m.iova.size().unwrap_or(u64::MAX));
            span = Some(match span {
                None => m.iova,
                Some(s) => Region {
                    start: s.start,
                    last: m.iova.last,
                },
            });
        }
        span.map(|s| (s, total)).ok_or(Error::NothingMapped)
    }

    /// The span and total of all mappings, or `None` when there are none.
    pub fn check_unmap_all(&self) -> Option<(Region, u64)> {
        self.span_of(Region {
            start: 0,
            last: u64::MAX,
        })
        .ok()
    }

    /// Forgets every mapping inside `span` (after the unit removed them).
    pub(super) fn remove(&mut self, span: Region) {
        let starts: Vec<u64> = self
            .mappings
            .range(span.start..=span.last)
            .map(|(s, _)| *s)
            .collect();
        for s in starts {
            self.mappings.remove(&s);
        }
    }

    /// The lowest free IOVA for `len` bytes, aligned to `len` rounded up to a power of two (at
    /// least [`MIN_ALIGN`]), wholly inside one window and touching no reserved region and no
    /// mapping. Only looks; [`Iommu::map_anywhere`](super::Iommu::map_anywhere) maps it.
    pub fn find_free(&self, len: u64) -> Result<u64> {
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
                    .chain(self.overlapping(r).map(|m| m.iova))
                    .map(|o| o.last)
                    .max();
                match blocked {
                    None => return Ok(c),
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

#[cfg(test)]
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
        let mut s = space(&[r(0x1000, 0x7f_f000), r(0x100_0000, 0x10_0000)], &[msi]);
        // The first window starts at 4 KiB: a 64 KiB request goes to the first 64 KiB boundary.
        assert_eq!(s.find_free(0x1_0000), Ok(0x1_0000));
        assert_eq!(s.find_free(0x3000), Ok(0x4000));
        s.insert(r(0x1000, 0xf_f000), 0);
        // The rest of the low 1 MiB is mapped and the next page is the doorbell.
        assert_eq!(s.find_free(0x1000), Ok(0x10_1000));
        // 8 MiB fits in neither window.
        assert_eq!(s.find_free(0x80_0000), Err(Error::NoSpace));
        // 1 MiB: the first 1 MiB boundary past the mapping and the doorbell.
        assert_eq!(s.find_free(0x10_0000), Ok(0x20_0000));
        s.insert(r(0x20_0000, 0x60_0000), 0);
        // The low window is full up to its end: the high one.
        assert_eq!(s.find_free(0x10_0000), Ok(0x100_0000));
        assert_eq!(s.find_free(0), Err(Error::ZeroLength));
    }

    #[test]
    fn unmap_span_and_cut() {
        let mut s = space(&[r(0, 1 << 30)], &[]);
        s.insert(r(0x1000, 0x1000), 0);
        s.insert(r(0x4000, 0x2000), 0);
        assert_eq!(s.check_unmap(0, 0x10000), Ok((r(0x1000, 0x5000), 0x3000)));
        assert_eq!(s.check_unmap(0x5000, 0x1000), Err(Error::WouldCut));
        assert_eq!(s.check_unmap(0x2000, 0x2000), Err(Error::NothingMapped));
        assert_eq!(s.check_unmap(u64::MAX, 2), Err(Error::WrapAround));
        assert_eq!(s.check_unmap_all(), Some((r(0x1000, 0x5000), 0x3000)));
        s.remove(r(0x1000, 0x5000));
        assert!(s.is_empty());
        assert_eq!(s.check_unmap_all(), None);
    }
}
