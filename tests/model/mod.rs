//! The reference model of an I/O page table the engine is checked against: an interval map of
//! leaf runs plus the set of intermediate tables, with the documented rules written the
//! simplest way (largest page that alignment, length, format and existing tables allow; refuse
//! overlap; never split; free tables whose span an unmap covers).
// Each test binary that includes the model uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use iommu::pagetable::{Error, Format, Prot};

/// Consecutive leaves of one size with contiguous output addresses.
#[derive(Clone, Copy, Debug)]
struct Run {
    end: u64,
    shift: u32,
    phys: u64,
    prot: Prot,
}

/// What an unmap removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    pub bytes: u64,
    pub page_sizes: u64,
    pub tables: usize,
}

pub struct Model<F: Format> {
    f: F,
    runs: BTreeMap<u64, Run>,
    /// `(level, base)`: the entry at `level` covering `base` points to a table.
    tables: BTreeSet<(u32, u64)>,
}

impl<F: Format + Copy> Model<F> {
    pub fn new(f: &F) -> Self {
        Self {
            f: *f,
            runs: BTreeMap::new(),
            tables: BTreeSet::new(),
        }
    }

    fn shift(&self, level: u32) -> u32 {
        let g = self.f.granule_shift();
        g + level * (g - 3)
    }

    fn gmask(&self) -> u64 {
        (1 << self.f.granule_shift()) - 1
    }

    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    /// The run containing `a`, with its start.
    fn run_at(&self, a: u64) -> Option<(u64, Run)> {
        let (&s, &r) = self.runs.range(..=a).next_back()?;
        (a < r.end).then_some((s, r))
    }

    fn check_range(&self, va: u64, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        if va & self.gmask() != 0 {
            return Err(Error::UnalignedIova);
        }
        if len & self.gmask() != 0 {
            return Err(Error::UnalignedLength);
        }
        let end = va.checked_add(len).ok_or(Error::WrapAround)?;
        if end > 1 << self.f.ia_bits() {
            return Err(Error::BeyondAperture);
        }
        Ok(end)
    }

    pub fn map(&mut self, va: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        if va & self.gmask() != 0 {
            return Err(Error::UnalignedIova);
        }
        if pa & self.gmask() != 0 {
            return Err(Error::UnalignedPhys);
        }
        if len & self.gmask() != 0 {
            return Err(Error::UnalignedLength);
        }
        let end = va.checked_add(len).ok_or(Error::WrapAround)?;
        let pend = pa.checked_add(len).ok_or(Error::WrapAround)?;
        if end > 1 << self.f.ia_bits() {
            return Err(Error::BeyondAperture);
        }
        if pend > 1 << self.f.oa_bits() {
            return Err(Error::PhysBeyondOas);
        }
        self.f.check_prot(prot)?;
        // Any run intersecting [va, end)?
        if let Some((_, r)) = self.runs.range(..end).next_back() {
            if r.end > va {
                return Err(Error::AlreadyMapped);
            }
        }
        self.place(self.f.levels() - 1, va, end, pa, prot);
        Ok(())
    }

    fn place(&mut self, level: u32, va: u64, end: u64, pa: u64, prot: Prot) {
        let shift = self.shift(level);
        let span = 1u64 << shift;
        let mut a = va;
        while a < end {
            let next = end.min((a | (span - 1)) + 1);
            let base = a & !(span - 1);
            let p = pa + (a - va);
            let leaf = self.f.leaf_ok(level)
                && (a | p) & (span - 1) == 0
                && end - a >= span
                && !self.tables.contains(&(level, base));
            if leaf {
                self.push_leaf(a, shift, p, prot);
            } else {
                assert!(level > 0, "a granule-aligned page always fits");
                self.tables.insert((level, base));
                self.place(level - 1, a, next, p, prot);
            }
            a = next;
        }
    }

    fn push_leaf(&mut self, a: u64, shift: u32, phys: u64, prot: Prot) {
        let end = a + (1 << shift);
        if let Some((&s, r)) = self.runs.range_mut(..a).next_back() {
            if r.end == a && r.shift == shift && r.phys + (a - s) == phys && r.prot == prot {
                r.end = end;
                return;
            }
        }
        self.runs.insert(
            a,
            Run {
                end,
                shift,
                phys,
                prot,
            },
        );
    }

    pub fn unmap(&mut self, va: u64, len: u64) -> Result<Unmapped, Error> {
        let end = self.check_range(va, len)?;
        // Never cut a leaf.
        if let Some((s, r)) = self.run_at(va) {
            if (va - s) & ((1 << r.shift) - 1) != 0 {
                return Err(Error::SplitsSuperpage);
            }
        }
        if let Some((s, r)) = self.run_at(end - 1) {
            if (end - s) & ((1 << r.shift) - 1) != 0 {
                return Err(Error::SplitsSuperpage);
            }
        }
        let mut out = Unmapped {
            bytes: 0,
            page_sizes: 0,
            tables: 0,
        };
        let hit: Vec<(u64, Run)> = self
            .runs
            .range(..end)
            .filter(|(_, r)| r.end > va)
            .map(|(&s, &r)| (s, r))
            .collect();
        for (s, r) in hit {
            self.runs.remove(&s);
            let lo = s.max(va);
            let hi = r.end.min(end);
            out.bytes += hi - lo;
            out.page_sizes |= 1 << r.shift;
            if s < lo {
                self.runs.insert(s, Run { end: lo, ..r });
            }
            if hi < r.end {
                self.runs.insert(
                    hi,
                    Run {
                        phys: r.phys + (hi - s),
                        ..r
                    },
                );
            }
        }
        let covered: Vec<(u32, u64)> = self
            .tables
            .iter()
            .filter(|&&(level, base)| base >= va && base + (1u64 << self.shift(level)) <= end)
            .copied()
            .collect();
        for t in &covered {
            self.tables.remove(t);
        }
        out.tables = covered.len();
        if out.bytes == 0 && out.tables == 0 {
            return Err(Error::NothingMapped);
        }
        Ok(out)
    }

    /// Drops the tables under which nothing is mapped, as `PageTable::reclaim` does; returns
    /// how many.
    pub fn reclaim(&mut self) -> usize {
        let empty: Vec<(u32, u64)> = self
            .tables
            .iter()
            .filter(|&&(level, base)| !self.maps_in(base, base + (1u64 << self.shift(level))))
            .copied()
            .collect();
        for t in &empty {
            self.tables.remove(t);
        }
        empty.len()
    }

    /// Whether anything is mapped in `[lo, hi)`: runs do not overlap, so only the last one
    /// starting below `hi` can reach into the range.
    fn maps_in(&self, lo: u64, hi: u64) -> bool {
        self.runs
            .range(..hi)
            .next_back()
            .is_some_and(|(_, r)| r.end > lo)
    }

    /// Every leaf: IOVA, physical address, size and permissions.
    pub fn leaves(&self) -> Vec<(u64, u64, u64, Prot)> {
        let mut out = Vec::new();
        for (&s, r) in &self.runs {
            let size = 1u64 << r.shift;
            let mut va = s;
            while va < r.end {
                out.push((va, r.phys + (va - s), size, r.prot));
                va += size;
            }
        }
        out
    }

    pub fn translate(&self, va: u64) -> Result<u64, Error> {
        if va >> self.f.ia_bits() != 0 {
            return Err(Error::BeyondAperture);
        }
        let (s, r) = self.run_at(va).ok_or(Error::NothingMapped)?;
        Ok(r.phys + (va - s))
    }

    /// The size of the leaf mapping `va`, if any.
    pub fn leaf_size(&self, va: u64) -> Option<u64> {
        self.run_at(va).map(|(_, r)| 1 << r.shift)
    }

    /// The permissions of the mapping at `va`, if any.
    pub fn prot(&self, va: u64) -> Option<Prot> {
        self.run_at(va).map(|(_, r)| r.prot)
    }
}
