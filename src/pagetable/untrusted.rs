//! Walking a table someone else wrote (a guest's I/O page table, for a shadowing vIOMMU): every
//! entry is untrusted input, read through the caller's reader, which may refuse an address.
//!
//! The walk is bounded by the format's depth (a table entry at the last level is a leaf, so no
//! guest entry can make it deeper) and by a budget of entry reads (so no guest table, however
//! it loops back on itself, makes it longer). Malformed entries are reported, never followed.

use super::{Format, Prot};

/// One mapping found, whole (a large page may reach beyond the walked range: an invalidation
/// of any address in it concerns all of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignLeaf {
    pub iova: u64,
    pub len: u64,
    /// The output address of `iova`.
    pub phys: u64,
    /// What the leaf grants, limited by the table entries above it.
    pub prot: Prot,
}

/// What the walk found under one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Leaf(ForeignLeaf),
    /// `[iova, iova + len)` (all that the entry covers) is under an entry that cannot be used:
    /// `reason` says why. Nothing below it was read.
    Bad {
        iova: u64,
        len: u64,
        reason: &'static str,
    },
}

/// Why a walk stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The range is empty or reaches beyond the format's input addresses.
    OutsideInput,
    /// The format's geometry is not one the engine walks.
    Geometry,
    /// The read budget ran out (a table too large or looping); what was visited stands.
    Budget,
}

/// Walks the table at `root` (an address the reader understands) over `[start, end)`, calling
/// `visit` for each leaf and each unusable entry that meets the range, in address order. `read(addr)` gives the
/// 8-byte entry at `addr`, or `None` where the caller refuses to read (outside guest RAM);
/// every call spends one of `*budget`.
pub fn walk_untrusted<F: Format>(
    format: &F,
    root: u64,
    start: u64,
    end: u64,
    budget: &mut usize,
    read: &mut dyn FnMut(u64) -> Option<u64>,
    visit: &mut dyn FnMut(Found),
) -> Result<(), WalkError> {
    let (g, levels, ia) = (format.granule_shift(), format.levels(), format.ia_bits());
    if !matches!(g, 12 | 14 | 16)
        || levels == 0
        || levels > super::MAX_LEVELS as u32
        || ia > 63
        || g + levels * (g - 3) >= 64
    {
        return Err(WalkError::Geometry);
    }
    if start >= end || end > 1 << ia {
        return Err(WalkError::OutsideInput);
    }
    let walk = Walker {
        format,
        g,
        range: (start, end),
    };
    let top = levels - 1;
    walk.table(root, top, 0, (true, true), budget, read, visit)
}

struct Walker<'f, F> {
    format: &'f F,
    g: u32,
    range: (u64, u64),
}

impl<F: Format> Walker<'_, F> {
    /// log2 of the span of one entry at `level`.
    fn shift(&self, level: u32) -> u32 {
        self.g + level * (self.g - 3)
    }

    /// The table at `table` for level `level`, which covers IOVAs from `base`.
    #[allow(clippy::too_many_arguments)]
    fn table(
        &self,
        table: u64,
        level: u32,
        base: u64,
        limits: (bool, bool),
        budget: &mut usize,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        visit: &mut dyn FnMut(Found),
    ) -> Result<(), WalkError> {
        let shift = self.shift(level);
        let (start, end) = self.range;
        // Entries of this table that meet [start, end): the root may hold more index bits
        // than a lower table, which the range (below 2^ia) already bounds.
        let first = start.max(base).saturating_sub(base) >> shift;
        let last = (end - 1).saturating_sub(base) >> shift;
        let top = level + 1 == self.format.levels();
        let per_table = if top {
            u64::MAX
        } else {
            (1u64 << (self.g - 3)) - 1
        };
        // Where this table's coverage ends (the root's: the range's end).
        let table_end = if top {
            end
        } else {
            base.saturating_add(1 << (shift + self.g - 3))
        };
        for index in first..=last.min(per_table) {
            let span_start = base + (index << shift);
            let span_len = 1u64 << shift;
            let bad = |reason| Found::Bad {
                iova: span_start,
                len: span_len,
                reason,
            };
            if *budget == 0 {
                return Err(WalkError::Budget);
            }
            *budget -= 1;
            let Some(entry) = read(table + index * 8) else {
                // The table lies where the walk may not read: all it covers is unusable.
                let iova = if top { span_start } else { base };
                visit(Found::Bad {
                    iova,
                    len: table_end - iova,
                    reason: "table outside the memory the walk may read",
                });
                return Ok(());
            };
            if !self.format.is_present(entry, level) {
                continue;
            }
            if self.format.is_table(entry, level) {
                let next = self.format.decode_addr(entry);
                let (r, w) = self.format.table_limits(entry);
                let limits = (limits.0 && r, limits.1 && w);
                self.table(next, level - 1, span_start, limits, budget, read, visit)?;
                continue;
            }
            if !self.format.leaf_ok(level) {
                visit(bad("large page the format does not allow at this level"));
                continue;
            }
            let phys = self.format.decode_addr(entry);
            if phys & (span_len - 1) != 0 {
                visit(bad("leaf address not aligned to its size"));
                continue;
            }
            let mut prot = self.format.decode_prot(entry, level);
            prot.read &= limits.0;
            prot.write &= limits.1;
            if !prot.read && !prot.write {
                continue;
            }
            visit(Found::Leaf(ForeignLeaf {
                iova: span_start,
                len: span_len,
                phys,
                prot,
            }));
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
