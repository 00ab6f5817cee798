//! Host tests of the engine's rules on host memory: page-size choice, refusals with state
//! unchanged, gathers and deferred frees, rollback, non-coherent cleaning.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::addr::{Iova, PhysAddr};
use crate::hal::host::HostHal;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

fn vtd(hal: &HostHal) -> PageTable<VtdSecondStage, &HostHal> {
    let f = VtdSecondStage::new(VtdSecondStageConfig {
        sagaw: 0b0100,
        sllps: 0b11,
        address_width: 48,
        output_width: 46,
        snoop_control: true,
    })
    .unwrap();
    PageTable::new(f, hal, Coherency::Coherent).unwrap()
}

fn iova(a: u64) -> Iova {
    Iova::new(a)
}

fn pa(a: u64) -> PhysAddr {
    PhysAddr::new(a)
}

fn leaf_size<F: Format, H: crate::hal::Hal>(t: &PageTable<F, H>, a: u64) -> Option<u64> {
    match t.walk(iova(a)).unwrap().leaf()?.kind {
        EntryKind::Leaf { size, .. } => Some(size),
        _ => None,
    }
}

/// Frames the table's tree holds: the HAL's live frames less those in the table's cache.
fn in_tables<F: Format>(t: &PageTable<F, &HostHal>, hal: &HostHal) -> usize {
    hal.live_frames() - t.cached_frames()
}

/// Unmaps everything, completes the gather, and checks that only the root is left.
fn unmap_all_frees_everything<F: Format>(t: &PageTable<F, &HostHal>, hal: &HostHal) {
    let mut g = Gather::new();
    let _ = t.unmap(iova(0), t.aperture_end(), &mut g);
    // SAFETY: host memory, no walker but this thread.
    unsafe { g.complete(hal) };
    assert_eq!(hal.live_frames(), 1, "only the root may be left");
}

#[test]
fn map_translate_unmap_4k() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(0x1000), pa(0x5000_0000), K4, Prot::READ_WRITE)
        .unwrap();
    assert_eq!(t.iova_to_phys(iova(0x1abc)), Ok(pa(0x5000_0abc)));
    assert_eq!(t.iova_to_phys(iova(0x2000)), Err(Error::NothingMapped));
    let w = t.walk(iova(0x1000)).unwrap();
    assert_eq!(w.steps().len(), 4);
    assert_eq!(
        w.leaf().unwrap().kind,
        EntryKind::Leaf {
            phys: pa(0x5000_0000),
            size: K4,
            prot: Prot::READ_WRITE
        }
    );
    // Root + 3 intermediate tables.
    assert_eq!(hal.live_frames(), 4);

    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(0x1000), K4, &mut g), Ok(K4));
    assert_eq!(g.range(), Some((iova(0x1000), K4)));
    assert_eq!(g.page_sizes(), K4);
    assert!(!g.tables_removed());
    assert_eq!(g.freed_frames(), 0);
    assert_eq!(t.iova_to_phys(iova(0x1000)), Err(Error::NothingMapped));
    // Tables stay until an unmap covers them.
    assert_eq!(hal.live_frames(), 4);
    unmap_all_frees_everything(&t, &hal);
}

#[test]
fn largest_pages_alignment_and_length_allow() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    // 4K + 2M + 1G + 2M + 4K, with iova and phys equally aligned.
    let start = G1 - M2 - K4;
    let len = K4 + M2 + G1 + M2 + K4;
    t.map(iova(start), pa(start + 8 * G1), len, Prot::READ)
        .unwrap();
    assert_eq!(leaf_size(&t, start), Some(K4));
    assert_eq!(leaf_size(&t, start + K4), Some(M2));
    assert_eq!(leaf_size(&t, G1), Some(G1));
    assert_eq!(leaf_size(&t, 2 * G1), Some(M2));
    assert_eq!(leaf_size(&t, 2 * G1 + M2), Some(K4));
    assert_eq!(t.iova_to_phys(iova(G1 + 0x1234)), Ok(pa(9 * G1 + 0x1234)));

    // Phys misaligned against iova: 4K pages only.
    t.map(iova(4 * G1), pa(0x1000), M2, Prot::READ).unwrap();
    assert_eq!(leaf_size(&t, 4 * G1), Some(K4));

    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(start), len, &mut g), Ok(len));
    assert_eq!(g.page_sizes(), K4 | M2 | G1);
    assert_eq!(g.min_page_size(), Some(K4));
    // SAFETY: host memory, no walker.
    unsafe { g.complete(&hal) };
    unmap_all_frees_everything(&t, &hal);
}

#[test]
fn overlap_is_refused_and_changes_nothing() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(M2 + 5 * K4), pa(0x9000), K4, Prot::READ)
        .unwrap();
    let frames = hal.live_frames();
    // Superpage-capable range over a table holding one page: refused, nothing written.
    assert_eq!(
        t.map(iova(M2), pa(G1), M2, Prot::READ),
        Err(Error::AlreadyMapped)
    );
    // A range crossing tables, whose conflict is in the second table.
    assert_eq!(
        t.map(iova(0), pa(G1), 2 * M2, Prot::READ),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(t.iova_to_phys(iova(M2)), Err(Error::NothingMapped));
    assert_eq!(t.iova_to_phys(iova(0)), Err(Error::NothingMapped));
    assert_eq!(hal.live_frames(), frames);
    assert_eq!(t.iova_to_phys(iova(M2 + 5 * K4)), Ok(pa(0x9000)));
}

#[test]
fn an_existing_table_takes_smaller_pages() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(M2), pa(0), K4, Prot::READ).unwrap();
    let mut g = Gather::new();
    t.unmap(iova(M2), K4, &mut g).unwrap();
    // The empty table stays; a 2M map there uses 512 pages in it instead of replacing it.
    t.map(iova(M2), pa(G1), M2, Prot::READ).unwrap();
    assert_eq!(leaf_size(&t, M2), Some(K4));
    assert_eq!(leaf_size(&t, 2 * M2 - K4), Some(K4));
    // Unmapping the 2M range covers the whole table: it goes into the gather.
    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(M2), M2, &mut g), Ok(M2));
    assert!(g.tables_removed());
    assert_eq!(g.freed_frames(), 1);
    // SAFETY: host memory, no walker.
    unsafe { g.complete(&hal) };
    // Now the slot is free and the same map gets a superpage.
    t.map(iova(M2), pa(G1), M2, Prot::READ).unwrap();
    assert_eq!(leaf_size(&t, M2), Some(M2));
}

#[test]
fn unmap_never_splits() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(M2), pa(M2), M2, Prot::READ_WRITE).unwrap();
    t.map(iova(2 * M2), pa(0), K4, Prot::READ_WRITE).unwrap();
    let mut g = Gather::new();
    for (a, l) in [
        (M2, K4),
        (M2 + K4, K4),
        (2 * M2 - K4, 2 * K4),
        (0, M2 + K4),
        (M2 + K4, M2),
    ] {
        assert_eq!(
            t.unmap(iova(a), l, &mut g),
            Err(Error::SplitsSuperpage),
            "{a:#x}+{l:#x}"
        );
    }
    assert!(g.is_empty());
    assert_eq!(t.iova_to_phys(iova(M2 + K4)), Ok(pa(M2 + K4)));
    // Nothing in range.
    assert_eq!(t.unmap(iova(4 * M2), K4, &mut g), Err(Error::NothingMapped));
    assert_eq!(
        t.unmap(iova(2 * M2 + K4), K4, &mut g),
        Err(Error::NothingMapped)
    );
    // A range covering both mappings removes both.
    assert_eq!(t.unmap(iova(0), 4 * M2, &mut g), Ok(M2 + K4));
    assert_eq!(g.range(), Some((iova(0), 4 * M2)));
    // SAFETY: host memory, no walker.
    unsafe { g.complete(&hal) };
}

#[test]
fn bad_arguments() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    let rw = Prot::READ_WRITE;
    let top = t.aperture_end();
    assert_eq!(t.map(iova(0), pa(0), 0, rw), Err(Error::ZeroLength));
    assert_eq!(t.map(iova(1), pa(0), K4, rw), Err(Error::UnalignedIova));
    assert_eq!(t.map(iova(0), pa(8), K4, rw), Err(Error::UnalignedPhys));
    assert_eq!(t.map(iova(0), pa(0), 10, rw), Err(Error::UnalignedLength));
    assert_eq!(
        t.map(iova(u64::MAX - 0xfff), pa(0), 2 * K4, rw),
        Err(Error::WrapAround)
    );
    assert_eq!(
        t.map(iova(top - K4), pa(0), 2 * K4, rw),
        Err(Error::BeyondAperture)
    );
    assert_eq!(
        t.map(iova(0), pa(1 << 46), K4, rw),
        Err(Error::PhysBeyondOas)
    );
    let none = Prot {
        read: false,
        write: false,
        exec: false,
        mem: MemType::Cacheable,
    };
    assert_eq!(t.map(iova(0), pa(0), K4, none), Err(Error::NoAccess));
    assert_eq!(t.iova_to_phys(iova(top)), Err(Error::BeyondAperture));
    assert_eq!(t.walk(iova(top)).unwrap_err(), Error::BeyondAperture);
    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(0), 0, &mut g), Err(Error::ZeroLength));
    assert_eq!(t.unmap(iova(top), K4, &mut g), Err(Error::BeyondAperture));
    assert_eq!(hal.live_frames(), 1);
}

#[test]
fn out_of_memory_rolls_back_leaves() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    // Root exists; allow 3 more tables: enough for the first 2 MiB of a 4 MiB map of 4K pages
    // (levels 2 and 1 and one leaf table), not for the second leaf table.
    hal.set_budget(3);
    assert_eq!(
        t.map(iova(K4), pa(K4), 2 * M2, Prot::READ),
        Err(Error::OutOfMemory)
    );
    for a in (K4..2 * M2 + K4).step_by(K4 as usize) {
        assert_eq!(t.iova_to_phys(iova(a)), Err(Error::NothingMapped), "{a:#x}");
    }
    hal.set_budget(usize::MAX);
    // The tables left behind are reclaimed by an unmap covering them.
    t.map(iova(K4), pa(K4), 2 * M2, Prot::READ).unwrap();
    unmap_all_frees_everything(&t, &hal);
}

#[test]
fn dropped_gather_leaks_instead_of_freeing() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(0), pa(0), K4, Prot::READ).unwrap();
    let live = hal.live_frames();
    {
        let mut g = Gather::new();
        t.unmap(iova(0), G1, &mut g).unwrap();
        assert_eq!(g.freed_frames(), 2);
    }
    assert_eq!(hal.live_frames(), live);
}

#[test]
fn destroy_returns_every_frame() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    for i in 0..8 {
        t.map(iova(i * G1 + M2), pa(i * K4), K4, Prot::READ)
            .unwrap();
    }
    let mut g = Gather::new();
    let h = t.destroy(&mut g);
    assert!(g.tables_removed());
    assert_eq!(g.page_sizes(), K4);
    assert_eq!(g.freed_frames(), hal.live_frames());
    // SAFETY: host memory, no walker.
    unsafe { g.complete(h) };
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn non_coherent_walkers_get_every_write_cleaned() {
    let hal = HostHal::new();
    let f = X86FirstStage::new(X86FirstStageConfig::four_level(46)).unwrap();
    let t = PageTable::new(f, &hal, Coherency::NonCoherent).unwrap();
    let root_clean = hal.cleans();
    assert_eq!(root_clean, 1);
    t.map(iova(0), pa(0), K4, Prot::READ).unwrap();
    // 3 new tables (frame + parent entry each) and one leaf run.
    assert_eq!(hal.cleans() - root_clean, 3 * 2 + 1);
    // The installer marked its entries as cleaned, so the next map cleans only its leaf.
    let w = t.walk(iova(0)).unwrap();
    let synced: Vec<bool> = w.steps()[..3]
        .iter()
        .map(|s| s.raw & <X86FirstStage as Format>::SW_SYNCED != 0)
        .collect();
    assert_eq!(synced, [true, true, true]);
    let before = hal.cleans();
    t.map(iova(K4), pa(K4), K4, Prot::READ).unwrap();
    assert_eq!(hal.cleans() - before, 1);
    let mut g = Gather::new();
    t.unmap(iova(0), 2 * K4, &mut g).unwrap();
    assert_eq!(hal.cleans() - before, 2);
}

#[test]
fn every_format_maps_its_page_sizes() {
    let hal = HostHal::new();
    let s1 = VmsaStage1::new(VmsaConfig {
        granule: Granule::Size16K,
        input_bits: 48,
        output_bits: 48,
    })
    .unwrap();
    let t = PageTable::new(s1, &hal, Coherency::Coherent).unwrap();
    let m32 = 32 << 20;
    t.map(
        iova(m32 - 0x4000),
        pa(m32 - 0x4000),
        m32 + 0x4000,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(leaf_size(&t, m32 - 0x4000), Some(0x4000));
    assert_eq!(leaf_size(&t, m32), Some(m32));
    unmap_all_frees_everything(&t, &hal);

    let s2 = VmsaStage2::new(VmsaConfig {
        granule: Granule::Size4K,
        input_bits: 40,
        output_bits: 40,
    })
    .unwrap();
    let hal = HostHal::new();
    let t = PageTable::new(s2, &hal, Coherency::Coherent).unwrap();
    // The concatenated root: the top 2 entries of 512 GiB each live in two 4K tables.
    t.map(iova((1 << 39) + G1), pa(G1), G1, Prot::WRITE)
        .unwrap();
    assert_eq!(leaf_size(&t, (1 << 39) + G1), Some(G1));
    let w = t.walk(iova((1 << 39) + G1)).unwrap();
    assert_eq!(w.steps()[0].index, 512 + 1);
    assert_eq!(t.iova_to_phys(iova((1 << 39) + G1 + 8)), Ok(pa(G1 + 8)));
    unmap_all_frees_everything(&t, &hal);
}

/// A flush that records what it was asked and succeeds or fails as told.
struct RecordingFlush {
    fail: bool,
    asked: core::cell::RefCell<Vec<(u64, u64, bool)>>,
}

// SAFETY: host memory and no hardware walker: there is no cache to invalidate, so "complete"
// holds at once; a failing flush returns `Err`.
unsafe impl FlushRange for RecordingFlush {
    type Error = Error;

    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> core::result::Result<(), Error> {
        self.asked
            .borrow_mut()
            .push((iova.as_u64(), len, leaf_only));
        if self.fail {
            Err(Error::OutOfMemory)
        } else {
            Ok(())
        }
    }
}

#[test]
fn unmap_flushed_frees_tables_only_after_a_successful_flush() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    // A 4K page alone in its tables: unmapping its 2M span removes the leaf and the last table.
    t.map(iova(M2), pa(0x5000_0000), K4, Prot::READ_WRITE)
        .unwrap();
    let before = hal.live_frames();
    assert_eq!(t.unmap_flushed(iova(M2), K4, &ok), Ok(K4));
    assert_eq!(ok.asked.borrow().as_slice(), &[(M2, K4, true)]);
    assert_eq!(
        hal.live_frames(),
        before,
        "a leaf-only unmap frees no table"
    );
    assert_eq!(t.unmap_flushed(iova(0), G1, &ok), Ok(0));
    assert_eq!(
        ok.asked.borrow()[1],
        (0, G1, false),
        "tables removed: walk caches too"
    );
    assert!(
        in_tables(&t, &hal) < before,
        "the emptied table left the tree"
    );

    // A failed flush: its error is returned and the unlinked frames are leaked, never freed.
    let bad = RecordingFlush {
        fail: true,
        asked: Default::default(),
    };
    t.map(iova(M2), pa(0x5000_0000), K4, Prot::READ_WRITE)
        .unwrap();
    let mapped = hal.live_frames();
    assert_eq!(t.unmap_flushed(iova(0), G1, &bad), Err(Error::OutOfMemory));
    assert_eq!(t.iova_to_phys(iova(M2)), Err(Error::NothingMapped));
    assert_eq!(
        hal.live_frames(),
        mapped,
        "frames of a failed flush stay allocated"
    );
    // Nothing is asked of the hardware when nothing was mapped.
    assert_eq!(
        t.unmap_flushed(iova(M2), K4, &bad),
        Err(Error::NothingMapped)
    );
    assert_eq!(bad.asked.borrow().len(), 1);
}

#[test]
fn flush_gather_flushes_many_unmaps_once_and_frees_tables_only_after_success() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    // Eight 4K pages in the 2M span at M2, and one alone in the span at 4 * M2.
    for i in 0..8 {
        t.map(
            iova(M2 + i * K4),
            pa(0x5000_0000 + i * K4),
            K4,
            Prot::READ_WRITE,
        )
        .unwrap();
    }
    t.map(iova(4 * M2), pa(0x6000_0000), K4, Prot::READ)
        .unwrap();
    let mapped = hal.live_frames();

    let mut g = Gather::new();
    for i in 0..8 {
        assert_eq!(t.unmap(iova(M2 + i * K4), K4, &mut g), Ok(K4));
    }
    // The whole 2M span: the last 4K page and its table.
    assert_eq!(t.unmap(iova(4 * M2), M2, &mut g), Ok(K4));
    assert!(g.tables_removed());
    assert_eq!(g.freed_frames(), 1);
    assert!(
        ok.asked.borrow().is_empty(),
        "unmap asks nothing of the hardware"
    );
    assert_eq!(
        hal.live_frames(),
        mapped,
        "nothing is freed before the flush"
    );

    assert_eq!(t.flush_gather(g, &ok), Ok(()));
    assert_eq!(
        ok.asked.borrow().as_slice(),
        &[(M2, 4 * M2, false)],
        "one flush of the hull, walk caches included"
    );
    assert_eq!(
        in_tables(&t, &hal),
        mapped - 1,
        "the unlinked table is freed"
    );
    assert_eq!(t.cached_frames(), 1, "and kept for the next table");
    for i in 0..8 {
        assert_eq!(t.iova_to_phys(iova(M2 + i * K4)), Err(Error::NothingMapped));
    }

    // An empty gather asks nothing.
    assert_eq!(t.flush_gather(Gather::new(), &ok), Ok(()));
    assert_eq!(ok.asked.borrow().len(), 1);

    // A failed flush of a batch: its error is returned and the frames stay allocated (leaked).
    let bad = RecordingFlush {
        fail: true,
        asked: Default::default(),
    };
    t.map(iova(4 * M2), pa(0x6000_0000), K4, Prot::READ)
        .unwrap();
    t.map(iova(M2), pa(0x5000_0000), K4, Prot::READ).unwrap();
    let mapped = hal.live_frames();
    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(M2), K4, &mut g), Ok(K4));
    assert_eq!(t.unmap(iova(4 * M2), M2, &mut g), Ok(K4));
    assert_eq!(t.flush_gather(g, &bad), Err(Error::OutOfMemory));
    assert_eq!(bad.asked.borrow().len(), 1);
    assert_eq!(
        hal.live_frames(),
        mapped,
        "frames of a failed flush are never freed"
    );
}

#[test]
fn a_gather_serves_only_the_table_that_filled_it() {
    let hal = HostHal::new();
    let a = vtd(&hal);
    let b = vtd(&hal);
    let flush = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    a.map(iova(M2), pa(0x5000_0000), K4, Prot::READ).unwrap();
    b.map(iova(M2), pa(0x5000_0000), K4, Prot::READ).unwrap();
    let mut g = Gather::new();
    // A refused unmap leaves the gather free for another table.
    assert_eq!(a.unmap(iova(0), K4, &mut g), Err(Error::NothingMapped));
    assert_eq!(b.unmap(iova(M2), K4, &mut g), Ok(K4));
    // Now it is b's: a's unmap and a's flush refuse it and change nothing.
    assert_eq!(a.unmap(iova(M2), K4, &mut g), Err(Error::ForeignGather));
    assert_eq!(a.iova_to_phys(iova(M2)), Ok(pa(0x5000_0000)));
    let live = hal.live_frames();
    assert_eq!(a.flush_gather(g, &flush), Err(Error::ForeignGather));
    assert!(flush.asked.borrow().is_empty());
    assert_eq!(hal.live_frames(), live);
}

#[test]
fn a_page_unmap_inside_tables_that_stay_finishes_without_complete() {
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(0x1000), pa(0x5000), 0x1000, Prot::READ_WRITE)
        .unwrap();
    t.map(iova(0x2000), pa(0x6000), 0x1000, Prot::READ_WRITE)
        .unwrap();
    let mut g = Gather::new();
    t.unmap(iova(0x1000), 0x1000, &mut g).unwrap();
    assert_eq!(g.range(), Some((iova(0x1000), 0x1000)));
    assert!(g.finish().is_ok());
    // A whole table's span unlinks it: that gather has a frame to free and comes back.
    t.map(iova(0x20_0000), pa(0x20_0000), 0x1000, Prot::READ_WRITE)
        .unwrap();
    let mut g = Gather::new();
    t.unmap(iova(0x20_0000), 0x20_0000, &mut g).unwrap();
    let g = g.finish().expect_err("a table frame to free");
    assert_eq!(g.freed_frames(), 1);
    // SAFETY: host memory that nothing walks.
    unsafe { g.complete(&&hal) };
}

#[test]
#[cfg_attr(
    miri,
    ignore = "512 leaf tables made and scanned: minutes under Miri; the other tests walk the same code"
)]
fn reclaim_frees_the_tables_unmaps_left_empty_and_nothing_else() {
    // The churn: a 4K page mapped and unmapped at 512 distinct 2M-aligned IOVAs pins a
    // leaf table per round until a reclaim.
    let hal = HostHal::new();
    let mut t = vtd(&hal);
    t.map(iova(8 * G1), pa(0x7000_0000), K4, Prot::READ)
        .unwrap();
    let kept = hal.live_frames();
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    for round in 0..512 {
        t.map(iova(round * M2), pa(0x5000_0000), K4, Prot::READ_WRITE)
            .unwrap();
        assert_eq!(t.unmap_flushed(iova(round * M2), K4, &ok), Ok(K4));
    }
    // The kept page at 8G shares the top-level table; the churn added a 1G table and 512 leaf
    // tables below it.
    assert_eq!(in_tables(&t, &hal), kept + 1 + 512);

    let asked = ok.asked.borrow().len();
    assert_eq!(t.reclaim_flushed(&ok), Ok(513));
    assert_eq!(
        ok.asked.borrow()[asked..],
        [(0, G1, false)],
        "one flush over the emptied span, walk caches included"
    );
    assert_eq!(
        in_tables(&t, &hal),
        kept,
        "what a fresh table mapping the one page needs"
    );
    assert_eq!(t.iova_to_phys(iova(8 * G1)), Ok(pa(0x7000_0000)));

    // Nothing more to free: no flush asked, no frame moved.
    let asked = ok.asked.borrow().len();
    assert_eq!(t.reclaim_flushed(&ok), Ok(0));
    assert_eq!(ok.asked.borrow().len(), asked);

    // A gather of another table is refused before anything changes.
    let hal_b = HostHal::new();
    let other = vtd(&hal_b);
    other.map(iova(M2), pa(M2), K4, Prot::READ).unwrap();
    let mut g = Gather::new();
    assert_eq!(other.unmap(iova(0), G1, &mut g), Ok(K4));
    t.map(iova(M2), pa(M2), K4, Prot::READ).unwrap();
    t.unmap_flushed(iova(M2), K4, &ok).unwrap();
    assert_eq!(t.reclaim(&mut g), Err(Error::ForeignGather));
    assert_eq!(
        in_tables(&t, &hal),
        kept + 2,
        "a refused reclaim changes nothing"
    );
    // SAFETY: host memory, no walker.
    unsafe { g.complete(&hal_b) };
}

#[test]
#[cfg_attr(
    miri,
    ignore = "512 rounds, each scanning a table: minutes under Miri; the reuse test below walks the same code"
)]
fn a_pruning_unmap_frees_the_tables_it_empties_inside_the_owned_region_only() {
    // The churn again, with the unmap told that the free space around it is the
    // caller's: no table is left behind, and each round's tables come back from the cache.
    let hal = HostHal::new();
    let t = vtd(&hal);
    t.map(iova(8 * G1), pa(0x7000_0000), K4, Prot::READ)
        .unwrap();
    let kept = in_tables(&t, &hal);
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    let mut allocated = hal.allocations();
    for round in 0..512 {
        let at = round * M2;
        t.map(iova(at), pa(0x5000_0000), K4, Prot::READ_WRITE)
            .unwrap();
        let asked = ok.asked.borrow().len();
        assert_eq!(
            t.unmap_pruning_flushed(iova(at), K4, 0..8 * G1, &ok),
            Ok(K4)
        );
        assert_eq!(
            ok.asked.borrow()[asked..],
            [(at, K4, false)],
            "one flush of the page, walk caches included"
        );
        assert_eq!(in_tables(&t, &hal), kept, "round {round}");
        if round == 0 {
            allocated = hal.allocations();
        }
    }
    assert_eq!(
        hal.allocations(),
        allocated,
        "later rounds reuse cached frames"
    );
    assert_eq!(t.iova_to_phys(iova(8 * G1)), Ok(pa(0x7000_0000)));

    // Only the tables whose whole span is owned go: owning the page's 2M but not its 1G keeps
    // the 1G table; owning less than the page's own table keeps both.
    t.map(iova(G1), pa(0), K4, Prot::READ).unwrap();
    t.unmap_pruning_flushed(iova(G1), K4, G1..G1 + M2, &ok)
        .unwrap();
    assert_eq!(in_tables(&t, &hal), kept + 1);
    t.map(iova(G1), pa(0), K4, Prot::READ).unwrap();
    t.unmap_pruning_flushed(iova(G1), K4, G1..G1 + K4, &ok)
        .unwrap();
    assert_eq!(in_tables(&t, &hal), kept + 2);
    // A table with another mapping stays, whatever is owned.
    t.map(iova(G1), pa(0), 2 * K4, Prot::READ).unwrap();
    t.unmap_pruning_flushed(iova(G1), K4, 0..8 * G1, &ok)
        .unwrap();
    assert_eq!(in_tables(&t, &hal), kept + 2);

    // An owned region not containing the range is refused before anything changes.
    let mut g = Gather::new();
    assert_eq!(
        t.unmap_pruning(iova(G1 + K4), K4, G1 + 2 * K4..2 * G1, &mut g),
        Err(Error::OwnedTooSmall)
    );
    assert!(g.is_empty());
    assert_eq!(t.iova_to_phys(iova(G1 + K4)), Ok(pa(K4)));
    // The last page goes with both tables above it, the kept page's stay.
    t.unmap_pruning_flushed(iova(G1 + K4), K4, G1..8 * G1, &ok)
        .unwrap();
    assert_eq!(in_tables(&t, &hal), kept);
}

#[test]
fn a_reused_table_frame_maps_nothing_but_what_is_mapped_into_it() {
    // Frames come back from the cache clean (pruned: only the gather's link to clear) or
    // dirty (unlinked whole with their leaves in place): either way the new table maps
    // nothing else.
    let hal = HostHal::new();
    let t = vtd(&hal);
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    t.map(iova(8 * G1), pa(0), K4, Prot::READ).unwrap();
    for (round, whole) in [(1u64, false), (2, true), (3, false), (4, true)] {
        let at = round * M2;
        // A full leaf table of 4K pages (a physical range not 2M-aligned: no superpage).
        t.map(iova(at), pa(0x10_0000), M2, Prot::READ_WRITE)
            .unwrap();
        assert_eq!(leaf_size(&t, at), Some(K4));
        if whole {
            // The whole 2M at once: the full leaf table goes to the cache as it is.
            assert_eq!(
                t.unmap_pruning_flushed(iova(at), M2, 0..8 * G1, &ok),
                Ok(M2)
            );
        } else {
            for p in 0..512 {
                t.unmap_pruning_flushed(iova(at + p * K4), K4, 0..8 * G1, &ok)
                    .unwrap();
            }
        }
        // The next round's table is this one's frame.
        let next = (round + 1) * M2;
        t.map(iova(next + 7 * K4), pa(0x7000), K4, Prot::READ)
            .unwrap();
        for p in 0..512 {
            let want = if p == 7 {
                Ok(pa(0x7000))
            } else {
                Err(Error::NothingMapped)
            };
            assert_eq!(
                t.iova_to_phys(iova(next + p * K4)),
                want,
                "round {round}, page {p}"
            );
        }
        t.unmap_pruning_flushed(iova(next + 7 * K4), K4, 0..8 * G1, &ok)
            .unwrap();
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "8,000 maps and unmaps: minutes under Miri; it counts allocations, not pointers"
)]
fn a_buffer_mapped_and_unmapped_over_and_over_reuses_its_table() {
    // 2M of 4K pages (their physical pages scattered: no superpage), mapped and unmapped whole:
    // the leaf table is unlinked by each unmap and taken from the cache by the next map.
    let hal = HostHal::new();
    let t = vtd(&hal);
    let ok = RecordingFlush {
        fail: false,
        asked: Default::default(),
    };
    let mut allocations = Vec::new();
    for _ in 0..8 {
        for i in 0..512 {
            t.map(
                iova(M2 + i * K4),
                pa(0x5000_0000 + 2 * i * K4),
                K4,
                Prot::READ,
            )
            .unwrap();
        }
        assert_eq!(t.unmap_flushed(iova(M2), M2, &ok), Ok(M2));
        allocations.push(hal.allocations());
    }
    assert!(
        allocations.windows(2).all(|w| w[0] == w[1]),
        "no allocation after the first cycle: {allocations:?}"
    );
    assert_eq!(t.cached_frames(), 1);

    // The same buffer unmapped page by page: its emptied table stays linked and is refilled.
    for _ in 0..4 {
        for i in 0..512 {
            t.map(
                iova(M2 + i * K4),
                pa(0x5000_0000 + 2 * i * K4),
                K4,
                Prot::READ,
            )
            .unwrap();
        }
        for i in 0..512 {
            assert_eq!(t.unmap_flushed(iova(M2 + i * K4), K4, &ok), Ok(K4));
        }
    }
    assert_eq!(hal.allocations(), allocations[0]);

    // Destroy gives back the cached frames with the rest.
    let mut g = Gather::new();
    let h = t.destroy(&mut g);
    // SAFETY: host memory, no walker.
    unsafe { g.complete(h) };
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn x86_style_address_fields_are_linear() {
    // The `Format` contract behind the engine's stepped range maps.
    let v = VtdSecondStage::new(VtdSecondStageConfig {
        sagaw: 0b0100,
        sllps: 0b11,
        address_width: 48,
        output_width: 48,
        snoop_control: true,
    })
    .unwrap();
    let x = X86FirstStage::new(X86FirstStageConfig::four_level(48)).unwrap();
    let first = (1u64 << 48) - 4 * M2;
    for (linear, bits, e0, e3) in [
        (
            v.linear_addr(),
            v.leaf_bits(1, Prot::READ_WRITE),
            v.encode_addr(first),
            v.encode_addr(first + 3 * M2),
        ),
        (
            x.linear_addr(),
            x.leaf_bits(1, Prot::READ_WRITE),
            x.encode_addr(first),
            x.encode_addr(first + 3 * M2),
        ),
    ] {
        assert!(linear);
        assert_eq!(bits | e3, (bits | e0) + 3 * M2);
    }
}
