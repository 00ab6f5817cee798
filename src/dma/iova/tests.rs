//! The allocator against a model: random allocations and frees from several CPUs, sizes and
//! limits; every live allocation aligned, inside a window, outside reserved regions, below its
//! limit and disjoint from every other; after freeing everything and draining the caches the
//! free ranges are the layout again.

extern crate std;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::iommufd::{Region, Reserved, ReservedKind, PENDING_PRUNES};

const WINDOW: Region = Region {
    start: 0x10_0000,
    last: 0x4fff_ffff,
};
const HOLE: Region = Region {
    start: 0xfee0_0000,
    last: 0xfeef_ffff,
};

fn layout_ranges(windows: &[Region], reserved: &[Region]) -> Vec<(u64, u64)> {
    let mut r = FreeRanges::new();
    for w in windows {
        r.give(w.start, w.last + 1 - w.start);
    }
    for h in reserved {
        r.carve(h.start & !(PAGE - 1), (h.last + 1).next_multiple_of(PAGE));
    }
    r.iter().collect()
}

#[test]
fn sizes_round_to_pages_and_powers_of_two() {
    assert_eq!(allocation_size(1), Ok(4096));
    assert_eq!(allocation_size(4096), Ok(4096));
    assert_eq!(allocation_size(4097), Ok(8192));
    assert_eq!(allocation_size(3 << 20), Ok(4 << 20));
    assert_eq!(allocation_size(0), Err(IovaError::BadSize));
    assert_eq!(allocation_size(u64::MAX), Err(IovaError::BadSize));
}

#[test]
fn allocations_are_top_down_aligned_and_below_the_limit() {
    let a = IovaAllocator::new(
        &Layout {
            windows: &[WINDOW],
            reserved: &[],
        },
        1,
    );
    // The top page, out of a 128 KiB block whose other 31 pages fill the CPU's magazine.
    assert_eq!(a.alloc(0, 4096, u64::MAX), Ok(0x4fff_f000));
    assert_eq!(a.alloc(0, 4096, u64::MAX), Ok(0x4fff_e000));
    // 16 KiB, aligned to 16 KiB: the top of a 512 KiB block below that one.
    assert_eq!(a.alloc(0, 0x3000, u64::MAX), Ok(0x4ff7_c000));
    // A 28-bit device: below 256 MiB.
    assert_eq!(a.alloc(0, 4096, 1 << 28), Ok(0x0fff_f000));
    assert_eq!(a.alloc(0, 4096, 0x10_0000), Err(IovaError::Exhausted));
    assert_eq!(a.alloc(1, 4096, u64::MAX), Err(IovaError::UnknownCpu(1)));
}

#[test]
fn reserved_regions_are_never_handed_out() {
    let window = Region {
        start: 0xfe00_0000,
        last: 0xffff_ffff,
    };
    let a = IovaAllocator::new(
        &Layout {
            windows: &[window],
            reserved: &[Reserved {
                region: Region {
                    start: 0xfee0_0123,
                    last: 0xfeef_fabc,
                },
                kind: ReservedKind::MsiDoorbell,
            }],
        },
        1,
    );
    assert_eq!(
        a.free_ranges(),
        [(0xfe00_0000, 0xfee0_0000), (0xfef0_0000, 0x1_0000_0000)]
    );
    // 32 MiB would have to straddle the hole: no. The top 16 MiB is clear of it.
    assert_eq!(a.alloc(0, 32 << 20, u64::MAX), Err(IovaError::Exhausted));
    assert_eq!(a.alloc(0, 16 << 20, u64::MAX), Ok(0xff00_0000));
    assert_eq!(a.alloc(0, 8 << 20, 0xfef0_0000), Ok(0xfe00_0000));
}

#[test]
fn exhaustion_is_an_error_and_frees_make_room_again() {
    let a = IovaAllocator::new(
        &Layout {
            windows: &[Region {
                start: 0,
                last: 0x3_ffff,
            }],
            reserved: &[],
        },
        2,
    );
    let got: Vec<u64> = (0..64)
        .map(|i| a.alloc(i % 2, 4096, u64::MAX).unwrap())
        .collect();
    assert_eq!(a.alloc(0, 4096, u64::MAX), Err(IovaError::Exhausted));
    // Freed on CPU 1, cached there: CPU 1 gets it back from its cache; CPU 0 finds the ranges
    // empty, drains the caches and gets it from the ranges.
    a.free(1, got[5], 4096).unwrap();
    assert_eq!(a.alloc(1, 4096, u64::MAX), Ok(got[5]));
    a.free(1, got[5], 4096).unwrap();
    assert_eq!(a.alloc(0, 4096, u64::MAX), Ok(got[5]));
    assert_eq!(a.alloc(1, 4096, u64::MAX), Err(IovaError::Exhausted));
    // A large allocation the cached pages make room for: the same drain.
    for &g in &got {
        a.free(g as usize % 2, g, 4096).unwrap();
    }
    assert_eq!(a.alloc(0, 0x4_0000, u64::MAX), Ok(0));
    assert_eq!(a.alloc(0, 4096, u64::MAX), Err(IovaError::Exhausted));
}

#[test]
fn fragmentation_refuses_what_no_hole_fits_until_the_neighbours_come_back() {
    let a = IovaAllocator::new(
        &Layout {
            windows: &[Region {
                start: 0,
                last: 0x3_ffff,
            }],
            reserved: &[],
        },
        1,
    );
    let pages: Vec<u64> = (0..64)
        .map(|_| a.alloc(0, 4096, u64::MAX).unwrap())
        .collect();
    // Every other page back: half the space free, no two free pages side by side.
    for p in pages.iter().filter(|&&p| p & 0x1000 == 0) {
        a.free(0, *p, 4096).unwrap();
    }
    a.drain();
    assert_eq!(a.free_ranges().len(), 32);
    assert_eq!(a.alloc(0, 8192, u64::MAX), Err(IovaError::Exhausted));
    // A neighbour back: the two pages merge into one aligned 8 KiB hole.
    a.free(0, 0x3_f000, 4096).unwrap();
    assert_eq!(a.alloc(0, 8192, u64::MAX), Ok(0x3_e000));
    for p in pages.iter().filter(|&&p| p & 0x1000 != 0 && p < 0x3_e000) {
        a.free(0, *p, 4096).unwrap();
    }
    a.free(0, 0x3_e000, 8192).unwrap();
    a.drain();
    assert_eq!(a.free_ranges(), [(0, 0x4_0000)]);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        cpu: usize,
        len: u64,
        limit_bits: u32,
    },
    Free {
        cpu: usize,
        pick: usize,
    },
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..300_000u64, 28..33u32)
            .prop_map(|(cpu, len, limit_bits)| Op::Alloc { cpu, len, limit_bits }),
        3 => (0..3usize, any::<usize>()).prop_map(|(cpu, pick)| Op::Free { cpu, pick }),
        1 => Just(Op::Drain),
    ]
}

proptest! {
    #[test]
    fn live_allocations_are_disjoint_aligned_and_inside_the_layout(
        ops in proptest::collection::vec(op(), 1..300)
    ) {
        let reserved = [Reserved { region: HOLE, kind: ReservedKind::MsiDoorbell }];
        let windows = [WINDOW, Region { start: 0xf000_0000, last: 0xffff_ffff }];
        let a = IovaAllocator::new(&Layout { windows: &windows, reserved: &reserved }, 3);
        // The model: live allocations, start -> (size, len).
        let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Alloc { cpu, len, limit_bits } => {
                    let limit = 1u64 << limit_bits;
                    let Ok(iova) = a.alloc(cpu, len, limit) else { continue };
                    let size = allocation_size(len).unwrap();
                    prop_assert_eq!(iova % size, 0, "aligned to its size");
                    prop_assert!(iova + size <= limit, "below the limit");
                    prop_assert!(
                        windows.iter().any(|w| w.start <= iova && iova + size - 1 <= w.last),
                        "inside a window"
                    );
                    prop_assert!(iova + size <= HOLE.start || iova > HOLE.last, "outside the hole");
                    let before = live.range(..iova + size).next_back();
                    prop_assert!(
                        before.is_none_or(|(&s, &(sz, _))| s + sz <= iova),
                        "disjoint from the live allocations"
                    );
                    live.insert(iova, (size, len));
                }
                Op::Free { cpu, pick } => {
                    if live.is_empty() { continue }
                    let (&iova, &(_, len)) = live.iter().nth(pick % live.len()).unwrap();
                    live.remove(&iova);
                    a.free(cpu, iova, len).unwrap();
                }
                Op::Drain => a.drain(),
            }
        }
        for (iova, (_, len)) in live {
            a.free(0, iova, len).unwrap();
        }
        a.drain();
        prop_assert_eq!(a.free_ranges(), layout_ranges(&windows, &[HOLE]));
    }
}

/// Two threads allocate and free on their own CPUs at once; no IOVA is live twice.
#[test]
fn cpus_allocating_at_once_never_share_an_iova() {
    let a = Arc::new(IovaAllocator::new(
        &Layout {
            windows: &[Region {
                start: 0,
                last: 0xff_ffff,
            }],
            reserved: &[],
        },
        2,
    ));
    let live = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let threads: Vec<_> = (0..2)
        .map(|cpu| {
            let a = Arc::clone(&a);
            let live = Arc::clone(&live);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for round in 0..20_000u64 {
                    let len = 4096 << (round % 4);
                    if let Ok(iova) = a.alloc(cpu, len, u64::MAX) {
                        assert!(live.lock().unwrap().insert(iova), "{iova:#x} live twice");
                        mine.push((iova, len));
                    }
                    if mine.len() > 40 || round % 3 == 0 {
                        if let Some((iova, len)) = mine.pop() {
                            live.lock().unwrap().remove(&iova);
                            a.free(cpu, iova, len).unwrap();
                        }
                    }
                }
                for (iova, len) in mine {
                    live.lock().unwrap().remove(&iova);
                    a.free(cpu, iova, len).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    a.drain();
    assert_eq!(a.free_ranges(), [(0, 0x100_0000)]);
}

/// More freed IOVAs than the caches hold: the depot fills, the rest go back to the ranges, and
/// allocating them all again hands each out exactly once.
#[test]
fn a_full_depot_gives_iovas_back_to_the_ranges() {
    let pages = (MAGAZINE * (DEPOT + 3)) as u64;
    let a = IovaAllocator::new(
        &Layout {
            windows: &[Region {
                start: 0,
                last: pages * PAGE - 1,
            }],
            reserved: &[],
        },
        1,
    );
    let all: Vec<u64> = (0..pages)
        .map(|_| a.alloc(0, PAGE, u64::MAX).unwrap())
        .collect();
    assert_eq!(a.alloc(0, PAGE, u64::MAX), Err(IovaError::Exhausted));
    for &iova in &all {
        a.free(0, iova, PAGE).unwrap();
    }
    // One magazine loaded, DEPOT full ones in the depot, the rest in the ranges.
    let in_ranges: u64 = a.free_ranges().iter().map(|(s, e)| (e - s) / PAGE).sum();
    assert_eq!(in_ranges, pages - (MAGAZINE * (DEPOT + 1)) as u64);
    let mut again: Vec<u64> = (0..pages)
        .map(|_| a.alloc(0, PAGE, u64::MAX).unwrap())
        .collect();
    assert_eq!(a.alloc(0, PAGE, u64::MAX), Err(IovaError::Exhausted));
    again.sort_unstable();
    again.dedup();
    assert_eq!(again.len() as u64, pages, "every page once");
}

#[test]
fn iovas_back_in_the_ranges_are_noted_for_a_prune_with_their_free_range() {
    const M2: u64 = 2 << 20;
    let a = IovaAllocator::new(
        &Layout {
            windows: &[WINDOW],
            reserved: &[],
        },
        1,
    );
    let top = WINDOW.last + 1;
    // 256 KiB: beyond the magazines, so its IOVA goes straight back to the ranges.
    let x = a.alloc(0, 0x4_0000, u64::MAX).unwrap();
    let y = a.alloc(0, 0x4_0000, u64::MAX).unwrap();
    assert_eq!((x, y), (top - 0x4_0000, top - 0x8_0000));
    // A cached size: back in the CPU's magazine, not in the ranges, so not noted.
    let small = a.alloc(0, 4096, u64::MAX).unwrap();
    a.free(0, small, 4096).unwrap();
    assert_eq!(a.prune(|points| points.to_vec()), None);

    // Two frees in one 2 MiB block make one place; the free range reaches up to the
    // magazine's block, which the ranges count as allocated.
    a.free(0, x, 0x4_0000).unwrap();
    a.free(0, y, 0x4_0000).unwrap();
    assert!(!a.prune_due());
    let below_magazine = small & !(0x2_0000 - 1);
    assert_eq!(
        a.prune(|points| points.to_vec()),
        Some(std::vec![(x, below_magazine + 0x2_0000..top)])
    );
    assert_eq!(a.prune(|points| points.len()), None, "taken");

    // A place allocated again before the prune is left out; 8 places make a prune due.
    let blocks: Vec<u64> = (0..PENDING_PRUNES)
        .map(|_| a.alloc(0, M2, u64::MAX).unwrap())
        .collect();
    for &b in &blocks {
        a.free(0, b, M2).unwrap();
    }
    assert!(a.prune_due());
    let again = a.alloc(0, M2, u64::MAX).unwrap();
    assert!(blocks.contains(&again));
    assert_eq!(a.prune(|points| points.len()), Some(PENDING_PRUNES - 1));
}
