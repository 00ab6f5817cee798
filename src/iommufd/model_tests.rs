//! Property test: random sequences of map, unmap (strict and deferred), unmap-all and automatic
//! allocation on an [`Iommu`] whose unit holds a real VT-d second-stage [`PageTable`] (so
//! superpages appear), each answer compared with a naive model of the iommufd rules, and the
//! page table compared with the model after every step, its memory too (the tables a fresh
//! table of the same mappings needs, and at most the paths that wait for a sweep; exactly
//! those tables when every unmap sweeps).

extern crate std;

use core::num::NonZeroUsize;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::hal::host::HostHal;
use crate::pagetable::{Coherency, PageTable};
use crate::unit::host::TableUnit;

const PAGE: u64 = 4096;
/// The first page of the far window, at 1 GiB: a table of its own below the root's.
const FAR: u64 = 1 << 18;
/// Windows and reserved region in pages: `[0, 1024)`, `[1536, 2048)` and `[FAR, FAR + 512)`,
/// a doorbell at `[1000, 1008)`, so 2 MiB (512-page) mappings fit in each window, and the far
/// one lies in a 1 GiB table that empties while the near ones hold mappings.
const WINDOWS: [Region; 3] = [
    Region {
        start: 0,
        last: 1024 * PAGE - 1,
    },
    Region {
        start: 1536 * PAGE,
        last: 2048 * PAGE - 1,
    },
    Region {
        start: FAR * PAGE,
        last: (FAR + 512) * PAGE - 1,
    },
];
const DOORBELL: Reserved = Reserved {
    region: Region {
        start: 1000 * PAGE,
        last: 1008 * PAGE - 1,
    },
    kind: ReservedKind::MsiDoorbell,
};
/// Where IOVA `a` is mapped to, so translations can be checked.
const PHYS_OFFSET: u64 = 1 << 32;

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        pages: u64,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
    /// A deferred unmap, flushed at once.
    UnmapDeferred {
        page: u64,
        pages: u64,
    },
    UnmapAll,
    MapAnywhere {
        pages: u64,
    },
}

fn pages() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 1u64..=16, 1 => Just(512u64), 1 => 1u64..=600]
}

fn page() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..2100,
        1 => (0u64..5).prop_map(|i| i * 512),
        1 => FAR - 8..FAR + 520,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (page(), pages()).prop_map(|(page, pages)| Op::Map { page, pages }),
        3 => (page(), pages()).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        2 => (page(), pages()).prop_map(|(page, pages)| Op::UnmapDeferred { page, pages }),
        1 => Just(Op::UnmapAll),
        3 => pages().prop_map(|pages| Op::MapAnywhere { pages }),
    ]
}

/// `pages` pages from page `page`.
fn pages_at(page: u64, pages: u64) -> Region {
    Region {
        start: page * PAGE,
        last: (page + pages) * PAGE - 1,
    }
}

/// The rules, written the obvious way over a list of mappings.
#[derive(Default)]
struct Model {
    maps: Vec<Region>,
}

impl Model {
    fn map(&mut self, r: Region) -> Result<()> {
        if !WINDOWS.iter().any(|w| w.contains(r)) {
            return Err(Error::OutsideAperture);
        }
        if DOORBELL.region.overlaps(r) {
            return Err(Error::ReservedRegion(ReservedKind::MsiDoorbell));
        }
        if self.maps.iter().any(|m| m.overlaps(r)) {
            return Err(Error::AlreadyMapped);
        }
        self.maps.push(r);
        Ok(())
    }

    fn unmap(&mut self, r: Region) -> Result<u64> {
        let hit: Vec<Region> = self
            .maps
            .iter()
            .copied()
            .filter(|m| m.overlaps(r))
            .collect();
        if hit.is_empty() {
            return Err(Error::NothingMapped);
        }
        if hit.iter().any(|m| !r.contains(*m)) {
            return Err(Error::WouldCut);
        }
        self.maps.retain(|m| !r.contains(*m));
        Ok(hit.iter().map(|m| m.last - m.start + 1).sum())
    }

    /// Tries every aligned candidate from the bottom of each window.
    fn find(&self, len: u64) -> Result<u64> {
        let align = len.next_power_of_two().max(PAGE);
        for w in WINDOWS {
            let mut c = w.start.div_ceil(align) * align;
            while c + len - 1 <= w.last {
                let r = Region {
                    start: c,
                    last: c + len - 1,
                };
                if !DOORBELL.region.overlaps(r) && !self.maps.iter().any(|m| m.overlaps(r)) {
                    return Ok(c);
                }
                c += align;
            }
        }
        Err(Error::NoSpace)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn map_unmap_alloc_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        follow_the_model(&ops, None)?;
    }

    #[test]
    fn with_a_sweep_at_every_place_the_tables_are_a_fresh_tables(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        follow_the_model(&ops, NonZeroUsize::new(1))?;
    }
}

/// Runs `ops` on a fresh domain whose sweeps wait for `sweep_threshold` places (the default
/// when `None`), checking every answer, the records and the hardware table against the model
/// and the table memory against a fresh table's after each step: equal when every place is
/// swept at once, else at most the paths that wait for a sweep beyond it.
fn follow_the_model(
    ops: &[Op],
    sweep_threshold: Option<NonZeroUsize>,
) -> core::result::Result<(), TestCaseError> {
    let mut io = Iommu::new();
    let u = io.add_unit(TableUnit::vtd_second_stage());
    let owner = OwnerId(7);
    let layout = Layout {
        windows: &WINDOWS,
        reserved: &[DOORBELL],
    };
    let fail = |e: &dyn core::fmt::Display| TestCaseError::fail(std::format!("{e}"));
    let dom = io
        .alloc_domain(owner, u, Stage::Second, 48, &layout)
        .map_err(|e| fail(&e))?;
    if let Some(n) = sweep_threshold {
        io.set_sweep_threshold(owner, dom, n)
            .map_err(|e| fail(&e))?;
    }
    let mut model = Model::default();
    for op in ops.iter().cloned() {
        let swept_all = matches!(op, Op::UnmapAll);
        match op {
            Op::Map { page, pages } => {
                let r = pages_at(page, pages);
                let phys = PhysAddr::new(PHYS_OFFSET + r.start);
                let got = io.map(
                    owner,
                    dom,
                    Iova::new(r.start),
                    phys,
                    pages * PAGE,
                    Prot::READ_WRITE,
                );
                prop_assert_eq!(got, model.map(r));
            }
            Op::Unmap { page, pages } => {
                let r = pages_at(page, pages);
                prop_assert_eq!(
                    io.unmap(owner, dom, Iova::new(r.start), pages * PAGE),
                    model.unmap(r)
                );
            }
            Op::UnmapDeferred { page, pages } => {
                let r = pages_at(page, pages);
                let mut g = crate::pagetable::Gather::new();
                let got = io.unmap_deferred(owner, dom, Iova::new(r.start), pages * PAGE, &mut g);
                prop_assert_eq!(got, model.unmap(r));
                prop_assert_eq!(io.flush_deferred(owner, dom, g), Ok(()));
            }
            Op::UnmapAll => {
                let all = Region {
                    start: 0,
                    last: u64::MAX,
                };
                let want = model.unmap(all).or(Ok(0));
                prop_assert_eq!(io.unmap_all(owner, dom), want);
            }
            Op::MapAnywhere { pages } => {
                let want = model.find(pages * PAGE);
                let got = io
                    .iova_space(owner, dom)
                    .expect("paging domain")
                    .find_free(pages * PAGE);
                prop_assert_eq!(got, want);
                if let Ok(a) = want {
                    let phys = PhysAddr::new(PHYS_OFFSET + a);
                    let got = io.map_anywhere(owner, dom, phys, pages * PAGE, Prot::READ_WRITE);
                    prop_assert_eq!(got, Ok(Iova::new(a)));
                    prop_assert_eq!(model.map(pages_at(a / PAGE, pages)), Ok(()));
                }
            }
        }
        // The records and the hardware table agree with the model, page by page.
        let mut recorded: Vec<Region> = io
            .iova_space(owner, dom)
            .expect("paging domain")
            .mappings()
            .iter()
            .map(|m| m.iova)
            .collect();
        model.maps.sort();
        recorded.sort();
        prop_assert_eq!(&recorded, &model.maps);
        let table = &io.domains[&dom].hw;
        for p in (0..2048u64).chain(FAR..FAR + 512) {
            let a = p * PAGE;
            let mapped = model.maps.iter().any(|m| m.start <= a && a <= m.last);
            let want = if mapped {
                Ok(PhysAddr::new(PHYS_OFFSET + a))
            } else {
                Err(crate::pagetable::Error::NothingMapped)
            };
            prop_assert_eq!(table.iova_to_phys(Iova::new(a)), want, "page {}", p);
        }
        // Its memory follows the mappings: the tables a fresh table of them would need.
        let fresh = HostHal::new();
        let t =
            PageTable::new(*table.format(), &fresh, Coherency::Coherent).map_err(|e| fail(&e))?;
        for m in &model.maps {
            let len = m.last - m.start + 1;
            let phys = PhysAddr::new(PHYS_OFFSET + m.start);
            t.map(Iova::new(m.start), phys, len, Prot::READ_WRITE)
                .map_err(|e| fail(&e))?;
        }
        // Beyond them, at most the tables on the paths that wait for a sweep (3 below the
        // root of a 4-level table); none after an unmap-all, or when every place is swept.
        let live = table.hal().live_frames() - table.cached_frames();
        if swept_all {
            prop_assert_eq!(live, 1, "the root alone");
        }
        if sweep_threshold.is_some_and(|n| n.get() == 1) {
            prop_assert_eq!(live, fresh.live_frames(), "tables beyond a fresh table's");
        }
        prop_assert!(live >= fresh.live_frames());
        prop_assert!(
            live <= fresh.live_frames() + 3 * PENDING_PRUNES,
            "{} tables",
            live
        );
    }
    Ok(())
}
