//! Host tests of deferred unmaps through the object model over a [`TableUnit`] whose
//! invalidation hook counts: many `unmap_deferred` calls and one `flush_deferred` leave nothing
//! mapped, invalidate once and give every table frame back; refusals change nothing.

extern crate std;

use std::sync::{Arc, Mutex};
use std::vec::Vec;

use super::*;
use crate::pagetable::{Error as TableError, Gather, VtdSecondStage};
use crate::unit::host::TableUnit;
use crate::unit::UnitError;

const PAGE: u64 = 4096;
/// What one entry of a 4-level VT-d root table spans: unmapping all of it frees its subtree.
const SPAN: u64 = 1 << 39;
const GROUPS: u64 = 8;
const OWNER: OwnerId = OwnerId(3);
const WHOLE: [Region; 1] = [Region {
    start: 0,
    last: (1 << 48) - 1,
}];

/// The invalidations the unit was asked for, in order.
type Asked = Arc<Mutex<Vec<(u64, u64)>>>;

fn setup() -> (Iommu<TableUnit<VtdSecondStage>>, UnitId, Asked) {
    let asked: Asked = Arc::default();
    let log = asked.clone();
    let unit = TableUnit::vtd_second_stage().with_invalidation(move |iova, len| {
        log.lock()
            .map_err(|_| UnitError::OutOfMemory)?
            .push((iova.as_u64(), len));
        Ok(())
    });
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    (io, u, asked)
}

fn new_domain(io: &mut Iommu<TableUnit<VtdSecondStage>>, u: UnitId) -> DomainId {
    let layout = Layout {
        windows: &WHOLE,
        reserved: &[],
    };
    io.alloc_domain(OWNER, u, Stage::Second, 48, &layout)
        .expect("a paging domain")
}

/// Maps a page at each end of root entry `i`'s span (so unmapping the span frees 5 tables).
fn map_group(io: &Iommu<TableUnit<VtdSecondStage>>, dom: DomainId, i: u64) {
    for a in [i * SPAN, (i + 1) * SPAN - PAGE] {
        io.map(
            OWNER,
            dom,
            Iova::new(a),
            PhysAddr::new(a),
            PAGE,
            Prot::READ_WRITE,
        )
        .expect("map");
    }
}

/// Frames in the domain's tables (the HAL's live frames less the table's cached free ones).
fn frames(io: &Iommu<TableUnit<VtdSecondStage>>, dom: DomainId) -> usize {
    let table = &io.domains[&dom].hw;
    table.hal().live_frames() - table.cached_frames()
}

/// The frames a domain holding only the page at the top of root entry 0's span needs (a fresh
/// domain mapped so).
fn needed_for_top_page(io: &mut Iommu<TableUnit<VtdSecondStage>>, u: UnitId) -> usize {
    let fresh = new_domain(io, u);
    io.map(
        OWNER,
        fresh,
        Iova::new(SPAN - PAGE),
        PhysAddr::new(SPAN - PAGE),
        PAGE,
        Prot::READ_WRITE,
    )
    .expect("map");
    frames(io, fresh)
}

fn count(asked: &Asked) -> usize {
    asked.lock().map(|a| a.len()).unwrap_or(usize::MAX)
}

#[test]
fn deferred_unmaps_and_one_flush_leave_nothing_mapped_and_return_every_frame() {
    let (mut io, u, asked) = setup();
    let dom = new_domain(&mut io, u);
    let root_only = frames(&io, dom);
    for i in 0..GROUPS {
        map_group(&io, dom, i);
    }
    let mapped = frames(&io, dom);
    assert_eq!(mapped, root_only + 5 * GROUPS as usize);

    let mut gather = Gather::new();
    for i in 0..GROUPS {
        assert_eq!(
            io.unmap_deferred(OWNER, dom, Iova::new(i * SPAN), SPAN, &mut gather),
            Ok(2 * PAGE)
        );
    }
    assert_eq!(count(&asked), 0, "a deferred unmap invalidates nothing");
    assert_eq!(
        frames(&io, dom),
        mapped,
        "nor frees anything before the flush"
    );
    assert_eq!(gather.freed_frames(), 5 * GROUPS as usize);
    let table = &io.domains[&dom].hw;
    for i in 0..GROUPS {
        for a in [i * SPAN, (i + 1) * SPAN - PAGE] {
            assert_eq!(
                io.iova_to_phys(OWNER, dom, Iova::new(a)),
                Err(Error::NothingMapped)
            );
            assert_eq!(
                table.iova_to_phys(Iova::new(a)),
                Err(TableError::NothingMapped)
            );
        }
    }
    assert!(io
        .iova_space(OWNER, dom)
        .expect("paging")
        .mappings()
        .is_empty());

    assert_eq!(io.flush_deferred(OWNER, dom, gather), Ok(()));
    assert_eq!(
        asked.lock().expect("log").as_slice(),
        &[(0, GROUPS * SPAN)],
        "one invalidation of the hull"
    );
    assert_eq!(frames(&io, dom), root_only, "every table frame went back");

    // The same unmaps, strict: one invalidation each, the same frames back.
    for i in 0..GROUPS {
        map_group(&io, dom, i);
    }
    for i in 0..GROUPS {
        assert_eq!(
            io.unmap(OWNER, dom, Iova::new(i * SPAN), SPAN),
            Ok(2 * PAGE)
        );
    }
    assert_eq!(count(&asked), 1 + GROUPS as usize);
    assert_eq!(frames(&io, dom), root_only);

    // An empty gather asks nothing of the hardware.
    assert_eq!(io.flush_deferred(OWNER, dom, Gather::new()), Ok(()));
    assert_eq!(count(&asked), 1 + GROUPS as usize);
}

#[test]
fn deferred_refusals_are_typed_and_change_nothing() {
    let (mut io, u, asked) = setup();
    let a = new_domain(&mut io, u);
    let b = new_domain(&mut io, u);
    map_group(&io, a, 0);
    map_group(&io, b, 0);
    let (frames_a, frames_b) = (frames(&io, a), frames(&io, b));
    let unknown = DomainId(u64::MAX);
    let stranger = OwnerId(OWNER.0 + 1);

    let mut g = Gather::new();
    assert_eq!(
        io.unmap_deferred(OWNER, unknown, Iova::new(0), SPAN, &mut g),
        Err(Error::UnknownDomain(unknown))
    );
    assert_eq!(
        io.unmap_deferred(stranger, a, Iova::new(0), SPAN, &mut g),
        Err(Error::NotDomainOwner(a))
    );
    assert_eq!(
        io.unmap_deferred(OWNER, a, Iova::new(SPAN), SPAN, &mut g),
        Err(Error::NothingMapped)
    );
    assert_eq!(
        io.unmap_deferred(OWNER, a, Iova::new(0), 0, &mut g),
        Err(Error::ZeroLength)
    );
    assert!(g.is_empty(), "a refused unmap gathers nothing");
    assert_eq!(
        io.iova_to_phys(OWNER, a, Iova::new(0)),
        Ok(PhysAddr::new(0))
    );
    assert_eq!(frames(&io, a), frames_a);

    // Fill the gather from a; b refuses it, and b's mapping and records stay.
    assert_eq!(
        io.unmap_deferred(OWNER, a, Iova::new(0), SPAN, &mut g),
        Ok(2 * PAGE)
    );
    let foreign = Error::Unit(UnitError::PageTable(TableError::ForeignGather));
    assert_eq!(
        io.unmap_deferred(OWNER, b, Iova::new(0), SPAN, &mut g),
        Err(foreign)
    );
    assert_eq!(
        io.iova_to_phys(OWNER, b, Iova::new(0)),
        Ok(PhysAddr::new(0))
    );
    assert_eq!(
        io.domains[&b].hw.iova_to_phys(Iova::new(0)),
        Ok(PhysAddr::new(0))
    );
    assert_eq!(g.freed_frames(), 5);

    // Flushes refused: nothing invalidated, nothing freed (a refused gather leaks its frames).
    assert_eq!(
        io.flush_deferred(OWNER, unknown, Gather::new()),
        Err(Error::UnknownDomain(unknown))
    );
    assert_eq!(
        io.flush_deferred(stranger, a, Gather::new()),
        Err(Error::NotDomainOwner(a))
    );
    assert_eq!(io.flush_deferred(OWNER, b, g), Err(foreign));
    assert_eq!(count(&asked), 0);
    assert_eq!((frames(&io, a), frames(&io, b)), (frames_a, frames_b));
}

#[test]
fn reclaim_tables_frees_what_unmaps_emptied_with_one_invalidation_and_refuses_strangers() {
    let (mut io, u, asked) = setup();
    let dom = new_domain(&mut io, u);
    map_group(&io, dom, 0);
    let needed = needed_for_top_page(&mut io, u);

    // A deferred unmap of the page at 0 leaves its 1 GiB and 2 MiB tables empty, in place
    // (its claim ends before the flush, so it cannot hold the space around it).
    let mut g = Gather::new();
    assert_eq!(
        io.unmap_deferred(OWNER, dom, Iova::new(0), PAGE, &mut g),
        Ok(PAGE)
    );
    io.flush_deferred(OWNER, dom, g).expect("flush");
    assert_eq!(frames(&io, dom), needed + 2);
    let before = count(&asked);

    let stranger = OwnerId(99);
    let unknown = DomainId(12345);
    assert_eq!(
        io.reclaim_tables(stranger, dom),
        Err(Error::NotDomainOwner(dom))
    );
    assert_eq!(
        io.reclaim_tables(OWNER, unknown),
        Err(Error::UnknownDomain(unknown))
    );
    assert_eq!(count(&asked), before, "refusals invalidate nothing");

    assert_eq!(io.reclaim_tables(OWNER, dom), Ok(2));
    assert_eq!(frames(&io, dom), needed, "the tables a fresh domain needs");
    assert_eq!(
        asked.lock().expect("log")[before..],
        [(0, 1 << 30)],
        "one invalidation over the freed tables' span"
    );
    assert_eq!(
        io.iova_to_phys(OWNER, dom, Iova::new(SPAN - PAGE)),
        Ok(PhysAddr::new(SPAN - PAGE))
    );
    assert_eq!(io.reclaim_tables(OWNER, dom), Ok(0));
    assert_eq!(count(&asked), before + 1, "nothing to free: nothing asked");
}

#[test]
fn strict_unmaps_free_the_tables_they_empty_and_sweep_the_larger_ones() {
    let (mut io, u, asked) = setup();
    let dom = new_domain(&mut io, u);
    let root_only = frames(&io, dom);
    map_group(&io, dom, 0);
    let needed = needed_for_top_page(&mut io, u);

    // The page at 0 shares only the 512 GiB table with the other page. Its 2 MiB leaf table
    // goes with it, invalidated with the page itself (walk caches included); its 1 GiB table,
    // larger than the stripe the unmap holds, waits for a sweep.
    let before = count(&asked);
    assert_eq!(io.unmap(OWNER, dom, Iova::new(0), PAGE), Ok(PAGE));
    assert_eq!(frames(&io, dom), needed + 1);
    assert_eq!(asked.lock().expect("log")[before..], [(0, PAGE)]);

    // The churn through the object model: a page mapped and unmapped at 512 distinct
    // 2 MiB-aligned IOVAs. Every unmap frees its leaf table; every PENDING_PRUNES-th sweeps the
    // 1 GiB table, so the domain never holds more than that one table beyond what it needs.
    let mut most = 0;
    for round in 1..=512 {
        let at = Iova::new(round * (2 << 20));
        io.map(OWNER, dom, at, PhysAddr::new(0), PAGE, Prot::READ)
            .expect("map");
        let before = count(&asked);
        assert_eq!(io.unmap(OWNER, dom, at, PAGE), Ok(PAGE));
        let sweeps = if round % PENDING_PRUNES as u64 == PENDING_PRUNES as u64 - 1 {
            1
        } else {
            0
        };
        assert_eq!(count(&asked) - before, 1 + sweeps, "round {round}");
        most = most.max(frames(&io, dom) - needed);
    }
    assert_eq!(most, 1, "at most the 1 GiB table waits for its sweep");

    // Unmapping everything sweeps at once: only the root is left.
    assert_eq!(io.unmap_all(OWNER, dom), Ok(PAGE));
    assert_eq!(frames(&io, dom), root_only);
}

#[test]
fn deferred_unmaps_leave_the_tables_they_empty_to_a_sweep() {
    // The churn with deferred unmaps, each flushed: a page mapped and unmapped at 512
    // distinct 2 MiB-aligned IOVAs. The leaf table stays until the flush could free it, so each
    // emptied stripe is noted, and every PENDING_PRUNES-th unmap sweeps them all and the 1 GiB
    // table above them.
    let (mut io, u, asked) = setup();
    let dom = new_domain(&mut io, u);
    let top = Iova::new(SPAN - PAGE);
    io.map(OWNER, dom, top, PhysAddr::new(0), PAGE, Prot::READ)
        .expect("map");
    let needed = needed_for_top_page(&mut io, u);
    let mut most = 0;
    for round in 0..512 {
        let at = Iova::new(round * (2 << 20));
        io.map(OWNER, dom, at, PhysAddr::new(0), PAGE, Prot::READ)
            .expect("map");
        let before = count(&asked);
        let mut g = Gather::new();
        assert_eq!(io.unmap_deferred(OWNER, dom, at, PAGE, &mut g), Ok(PAGE));
        let due = round % PENDING_PRUNES as u64 == PENDING_PRUNES as u64 - 1;
        assert_eq!(count(&asked) - before, usize::from(due), "round {round}");
        most = most.max(frames(&io, dom) - needed);
        if due {
            assert_eq!(frames(&io, dom), needed, "round {round}: swept");
        }
        io.flush_deferred(OWNER, dom, g).expect("flush");
    }
    assert_eq!(
        most, PENDING_PRUNES,
        "7 leaf tables and their 1 GiB table, at most"
    );
    assert_eq!(io.iova_to_phys(OWNER, dom, top), Ok(PhysAddr::new(0)));
}

#[test]
fn unmap_all_of_an_emptied_domain_still_sweeps_what_its_unmaps_left() {
    // Found by the model test: the last page's unmap leaves the 1 GiB and 512 GiB tables for a
    // sweep, and an unmap-all of the now empty domain must still run it.
    let (mut io, u, _) = setup();
    let dom = new_domain(&mut io, u);
    let root_only = frames(&io, dom);
    io.map(OWNER, dom, Iova::new(0), PhysAddr::new(0), PAGE, Prot::READ)
        .expect("map");
    assert_eq!(io.unmap(OWNER, dom, Iova::new(0), PAGE), Ok(PAGE));
    assert_eq!(frames(&io, dom), root_only + 2);
    assert_eq!(io.unmap_all(OWNER, dom), Ok(0));
    assert_eq!(frames(&io, dom), root_only);
}
