//! Free ranges of an address space: what the DMA API's IOVA allocator and a kernel's frame
//! allocator both keep. Ranges are disjoint and never adjacent (a give merges with its
//! neighbours), kept in order so a search from either end is a walk of an ordered map.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Free `[start, end)` ranges of `u64` addresses.
#[derive(Debug, Default, Clone)]
pub struct FreeRanges {
    /// `start -> end` (exclusive).
    free: BTreeMap<u64, u64>,
}

impl FreeRanges {
    /// Nothing free.
    pub const fn new() -> Self {
        Self {
            free: BTreeMap::new(),
        }
    }

    /// The highest `align`-aligned `[at, at + size)` inside a free range that ends at or below
    /// `limit`, taken out of the free ranges. `align` is a power of two.
    pub fn take_below(&mut self, size: u64, align: u64, limit: u64) -> Option<u64> {
        let (start, end, at) = self.free.range(..limit).rev().find_map(|(&s, &e)| {
            let top = e.min(limit);
            let at = top.checked_sub(size)? & !(align - 1);
            (at >= s).then_some((s, e, at))
        })?;
        self.cut(start, end, at, size);
        Some(at)
    }

    /// The lowest `align`-aligned `[at, at + size)` inside a free range, taken out of the free
    /// ranges. `align` is a power of two.
    pub fn take_low(&mut self, size: u64, align: u64) -> Option<u64> {
        let (start, end, at) = self.free.iter().find_map(|(&s, &e)| {
            let at = s.checked_next_multiple_of(align)?;
            (at.checked_add(size)? <= e).then_some((s, e, at))
        })?;
        self.cut(start, end, at, size);
        Some(at)
    }

    /// Replaces the free range `[start, end)` by what is left of it around `[at, at + size)`.
    fn cut(&mut self, start: u64, end: u64, at: u64, size: u64) {
        self.free.remove(&start);
        if start < at {
            self.free.insert(start, at);
        }
        if at + size < end {
            self.free.insert(at + size, end);
        }
    }

    /// Gives `[at, at + size)` back, merged with free neighbours. The range must not be free
    /// already (the caller's allocations are the proof).
    pub fn give(&mut self, at: u64, size: u64) {
        let mut start = at;
        let mut end = at + size;
        if let Some((&s, &e)) = self.free.range(..at).next_back() {
            if e == at {
                self.free.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.free.remove(&end) {
            end = e;
        }
        self.free.insert(start, end);
    }

    /// Takes `[start, end)` out of the free ranges, wherever they overlap it.
    pub fn carve(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64)> = self
            .free
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in overlapping {
            self.free.remove(&s);
            if s < start {
                self.free.insert(s, start);
            }
            if end < e {
                self.free.insert(end, e);
            }
        }
    }

    /// The free range `[start, end)` holding `at`, if `at` is free.
    pub fn containing(&self, at: u64) -> Option<(u64, u64)> {
        let (&s, &e) = self.free.range(..=at).next_back()?;
        (at < e).then_some((s, e))
    }

    /// The free ranges, `(start, end)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&s, &e)| (s, e))
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.iter().map(|(s, e)| e - s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_from_either_end_gives_back_merged_and_carves() {
        let mut r = FreeRanges::new();
        r.give(0x1000, 0xf000);
        r.give(0x2_0000, 0x1_0000);
        assert_eq!(r.take_low(0x2000, 0x2000), Some(0x2000));
        assert_eq!(r.take_below(0x1000, 0x1000, u64::MAX), Some(0x2_f000));
        assert_eq!(r.take_below(0x1000, 0x1000, 0x1_0000), Some(0xf000));
        assert_eq!(
            r.take_below(0x8000, 0x8000, 0x1_0000),
            None,
            "no aligned 32 KiB left"
        );
        assert_eq!(r.take_below(0x4000, 0x4000, 0x1_0000), Some(0x8000));
        assert_eq!(r.take_low(0x10_0000, 0x1000), None);
        r.carve(0x2_4000, 0x2_6000);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            [
                (0x1000, 0x2000),
                (0x4000, 0x8000),
                (0xc000, 0xf000),
                (0x2_0000, 0x2_4000),
                (0x2_6000, 0x2_f000)
            ]
        );
        r.give(0x2_4000, 0x2000);
        r.give(0x2000, 0x2000);
        assert_eq!(r.iter().next(), Some((0x1000, 0x8000)), "merged both ways");
        assert_eq!(r.free_bytes(), 0x7000 + 0x3000 + 0xf000);
        // The range holding an address: from its first byte to its last, none outside.
        assert_eq!(r.containing(0x1000), Some((0x1000, 0x8000)));
        assert_eq!(r.containing(0x7fff), Some((0x1000, 0x8000)));
        assert_eq!(r.containing(0x8000), None);
        assert_eq!(r.containing(0xfff), None);
    }
}
