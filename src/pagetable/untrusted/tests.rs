//! The untrusted walker over hand-built tables (exact findings) and random memory (never a
//! panic, findings inside the range and in order).

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::pagetable::vmsa::{Granule, VmsaConfig, VmsaStage1};
use crate::pagetable::vtd_second_stage::{VtdSecondStage, PS, R, W};

const ROOT: u64 = 0x10_0000;
const L3: u64 = 0x10_1000;
const L2: u64 = 0x10_2000;
const L1: u64 = 0x10_3000;

fn vtd() -> VtdSecondStage {
    // AW 2: four levels, 48 bits.
    VtdSecondStage::for_aw(2, 48).expect("a valid geometry")
}

fn walk(
    format: &impl Format,
    mem: &BTreeMap<u64, u64>,
    start: u64,
    end: u64,
    budget: usize,
) -> (Vec<Found>, Result<(), WalkError>, usize) {
    let mut found = Vec::new();
    let mut budget = budget;
    let mut read = |a: u64| {
        if a < 0x100_0000 {
            Some(mem.get(&a).copied().unwrap_or(0))
        } else {
            None
        }
    };
    let r = walk_untrusted(format, ROOT, start, end, &mut budget, &mut read, &mut |f| {
        found.push(f)
    });
    (found, r, budget)
}

/// A four-level VT-d table: a 4 KiB page at 0x1000 (read-only), a 2 MiB page at 2 MiB, a
/// table entry without W over the 4 KiB page at 0x2000.
fn vtd_tables() -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    m.insert(ROOT, L3 | R | W);
    m.insert(L3, L2 | R | W);
    m.insert(L2, L1 | R); // covers 0..2 MiB: no write below
    m.insert(L2 + 8, 0x4020_0000 | PS | R | W); // 2 MiB page at 2 MiB
    m.insert(L1 + 8, 0x5000 | R | W); // 0x1000 → 0x5000
    m.insert(L1 + 16, 0x6000 | R); // 0x2000 → 0x6000
    m
}

#[test]
fn a_guest_table_gives_its_whole_leaves_with_the_limits_above_them() {
    let (found, r, _) = walk(&vtd(), &vtd_tables(), 0x1000, 0x30_0000, 10_000);
    assert_eq!(r, Ok(()));
    assert_eq!(
        found,
        [
            Found::Leaf(ForeignLeaf {
                iova: 0x1000,
                len: 0x1000,
                phys: 0x5000,
                prot: Prot::READ, // the table entry above has no W
            }),
            Found::Leaf(ForeignLeaf {
                iova: 0x2000,
                len: 0x1000,
                phys: 0x6000,
                prot: Prot::READ,
            }),
            // Whole, though the range ends in its middle.
            Found::Leaf(ForeignLeaf {
                iova: 0x20_0000,
                len: 0x20_0000,
                phys: 0x4020_0000,
                prot: Prot::READ_WRITE,
            }),
        ]
    );
}

#[test]
fn malformed_and_unreadable_entries_are_reported_and_not_followed() {
    let mut m = vtd_tables();
    m.insert(L2 + 16, 0x4030_0000 | PS | R | W); // 2 MiB page at an address not 2 MiB aligned
    m.insert(L2 + 24, 0x200_0000 | R | W); // a table the reader refuses
    let (found, r, _) = walk(&vtd(), &m, 0x40_0000, 0x80_0000, 10_000);
    assert_eq!(r, Ok(()));
    assert_eq!(
        found,
        [
            Found::Bad {
                iova: 0x40_0000,
                len: 0x20_0000,
                reason: "leaf address not aligned to its size"
            },
            Found::Bad {
                iova: 0x60_0000,
                len: 0x20_0000,
                reason: "table outside the memory the walk may read"
            },
        ]
    );
}

#[test]
fn a_table_that_points_at_itself_ends_within_the_depth_and_the_budget() {
    let mut m = BTreeMap::new();
    // Every entry of the root points back at the root, at every level.
    for i in 0..512 {
        m.insert(ROOT + i * 8, ROOT | R | W);
    }
    let (_, r, left) = walk(&vtd(), &m, 0, 1 << 48, 10_000);
    assert_eq!(r, Err(WalkError::Budget));
    assert_eq!(left, 0);
    // A small range reads one entry per level and finds the root read as a 4 KiB leaf.
    let (found, r, left) = walk(&vtd(), &m, 0, 0x1000, 10);
    assert_eq!(r, Ok(()));
    assert_eq!(left, 6);
    assert_eq!(
        found,
        [Found::Leaf(ForeignLeaf {
            iova: 0,
            len: 0x1000,
            phys: ROOT,
            prot: Prot::READ_WRITE
        })]
    );
}

#[test]
fn ranges_beyond_the_input_are_refused() {
    let m = vtd_tables();
    assert_eq!(
        walk(&vtd(), &m, 0, (1 << 48) + 1, 10).1,
        Err(WalkError::OutsideInput)
    );
    assert_eq!(walk(&vtd(), &m, 5, 5, 10).1, Err(WalkError::OutsideInput));
}

fn formats() -> [(&'static str, VmsaStage1); 2] {
    let cfg = |granule| VmsaConfig {
        granule,
        input_bits: 48,
        output_bits: 48,
    };
    [
        (
            "vmsa 4K",
            VmsaStage1::new(cfg(Granule::Size4K)).expect("valid"),
        ),
        (
            "vmsa 64K",
            VmsaStage1::new(cfg(Granule::Size64K)).expect("valid"),
        ),
    ]
}

fn check(found: &[Found], r: Result<(), WalkError>, start: u64, end: u64) {
    assert_ne!(r, Err(WalkError::OutsideInput));
    let mut at = 0;
    for f in found {
        let (iova, len) = match *f {
            Found::Leaf(l) => (l.iova, l.len),
            Found::Bad { iova, len, .. } => (iova, len),
        };
        assert!(
            len > 0 && iova >= at && iova < end && iova + len > start,
            "{f:?} outside [{start:#x}, {end:#x}) or before {at:#x}"
        );
        at = iova + len;
    }
}

proptest! {
    /// Random words at addresses that link tables to each other (and to themselves): the walk
    /// ends, never panics, and what it finds lies in the range, in order, without overlap.
    #[test]
    fn random_guest_memory_never_makes_the_walk_misbehave(
        words in proptest::collection::vec((0u64..64, any::<u64>(), 0u64..4), 1..200),
        start in 0u64..(1 << 40),
        len in 1u64..(1 << 40),
    ) {
        let mut m = BTreeMap::new();
        for (slot, word, table) in words {
            // Point most words at one of a few tables so walks go deep.
            let w = (word & !0x000f_ffff_ffff_f000) | ((ROOT + table * 0x1_0000) & 0x000f_ffff_ffff_f000);
            m.insert(ROOT + table * 0x1_0000 + slot * 8, if word & 1 == 0 { w } else { word });
        }
        let end = start.saturating_add(len).min(1 << 48);
        let (found, r, _) = walk(&vtd(), &m, start, end, 4096);
        check(&found, r, start, end);
        for (_, f) in formats() {
            let (found, r, _) = walk(&f, &m, start, end, 4096);
            check(&found, r, start, end);
        }
    }
}
