//! Multi-threaded stress of one page table: several threads map, unmap and translate at once,
//! each in its own IOVA chunks, interleaved so that neighbours share leaf tables (fine chunks)
//! or sit in sibling leaf tables under one parent that they install concurrently (table-sized
//! chunks, whose unmaps free the leaf table while the neighbours keep working). Each thread
//! checks every result against its own model; at the end the table must hold exactly the union
//! of the models, and unmap-all plus destroy must return every frame.
#![cfg(not(loom))]

mod model;

use std::sync::Barrier;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::pagetable::*;
use model::Model;

const THREADS: u64 = 4;
const OPS_PER_THREAD: usize = 20_000;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One thread's chunks: `(base, size)`, each owned by this thread alone.
fn chunks<F: Format>(f: &F, thread: u64) -> Vec<(u64, u64)> {
    let g = f.granule_shift();
    let granule = 1u64 << g;
    let leaf_table_span = 1u64 << (g + (g - 3));
    let mut v = Vec::new();
    // Fine chunks of 16 granules, interleaved across threads inside 4 shared leaf tables.
    let fine = 16 * granule;
    for c in 0..(4 * leaf_table_span / fine) {
        if c % THREADS == thread {
            v.push((c * fine, fine));
        }
    }
    // Whole-leaf-table chunks, interleaved: siblings under one parent table.
    let base = 8 * leaf_table_span;
    for c in 0..(4 * THREADS) {
        if c % THREADS == thread {
            v.push((base + c * leaf_table_span, leaf_table_span));
        }
    }
    v
}

fn worker<F: Format + Copy, H: iommu::hal::Hal>(
    t: &PageTable<F, H>,
    thread: u64,
    seed: u64,
    start: &Barrier,
) -> Model<F> {
    let f = *t.format();
    let granule = 1u64 << f.granule_shift();
    let mine = chunks(&f, thread);
    let mut m = Model::new(&f);
    let mut rng = Rng(seed ^ (thread + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    start.wait();
    for i in 0..OPS_PER_THREAD {
        let (cbase, csize) = mine[rng.below(mine.len() as u64) as usize];
        let pages = csize / granule;
        match rng.below(20) {
            0..=7 => {
                let (va, len) = if rng.below(3) == 0 {
                    (cbase, csize)
                } else {
                    let first = rng.below(pages);
                    let n = 1 + rng.below((pages - first).min(8));
                    (cbase + first * granule, n * granule)
                };
                // Same alignment as the IOVA (superpages possible) or one granule off.
                let pa = (va + (1 << 40) + rng.below(2) * granule) & ((1 << 44) - 1);
                let prot = Prot::READ_WRITE;
                let got = t.map(Iova::new(va), PhysAddr::new(pa), len, prot);
                assert_eq!(
                    got,
                    m.map(va, pa, len, prot),
                    "thread {thread} op {i}: map {va:#x}+{len:#x}"
                );
                if got.is_ok() {
                    mapped.push((va, len));
                }
            }
            8..=14 => {
                let (va, len) = if !mapped.is_empty() && rng.below(4) != 0 {
                    mapped.swap_remove(rng.below(mapped.len() as u64) as usize)
                } else {
                    (cbase, csize)
                };
                let mut g = Gather::new();
                let got = t.unmap(Iova::new(va), len, &mut g);
                let want = m.unmap(va, len);
                assert_eq!(
                    got,
                    want.map(|r| r.bytes),
                    "thread {thread} op {i}: unmap {va:#x}+{len:#x}"
                );
                if let Ok(r) = want {
                    // Only this thread's own tables may go.
                    assert_eq!(g.freed_frames(), r.tables, "thread {thread} op {i}");
                }
                // SAFETY: host memory; no hardware walker, and no other thread works in this
                // thread's chunks, which contain every range this gather covers.
                unsafe { g.complete(t.hal()) };
            }
            _ => {
                let va = cbase + rng.below(pages) * granule + 8;
                assert_eq!(
                    t.iova_to_phys(Iova::new(va)),
                    m.translate(va).map(PhysAddr::new),
                    "thread {thread} op {i}: translate {va:#x}"
                );
            }
        }
    }
    m
}

fn stress<F: Format + Copy>(f: F, seed: u64) {
    let hal = HostHal::new();
    let t = PageTable::new(f, &hal, Coherency::Coherent).unwrap();
    let start = Barrier::new(THREADS as usize);
    let models: Vec<Model<F>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|th| {
                let (t, start) = (&t, &start);
                s.spawn(move || worker(t, th, seed, start))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The table is the union of the threads' models.
    let granule = 1u64 << f.granule_shift();
    for (th, m) in models.iter().enumerate() {
        for (base, size) in chunks(&f, th as u64) {
            for va in (base..base + size).step_by(granule as usize) {
                assert_eq!(
                    t.iova_to_phys(Iova::new(va)),
                    m.translate(va).map(PhysAddr::new),
                    "after the run: {va:#x}"
                );
                let leaf = t.walk(Iova::new(va)).unwrap().leaf().map(|s| match s.kind {
                    EntryKind::Leaf { size, .. } => size,
                    _ => 0,
                });
                assert_eq!(leaf, m.leaf_size(va), "leaf size at {va:#x}");
            }
        }
    }
    let mut g = Gather::new();
    let _ = t.unmap(Iova::new(0), t.aperture_end(), &mut g);
    // SAFETY: host memory, all threads joined.
    unsafe { g.complete(&hal) };
    assert_eq!(hal.live_frames(), 1, "every table but the root came back");
    let mut g = Gather::new();
    let h = t.destroy(&mut g);
    // SAFETY: as above.
    unsafe { g.complete(h) };
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn disjoint_threads_on_vtd_second_stage_match_their_models() {
    let f = VtdSecondStage::new(VtdSecondStageConfig {
        sagaw: 0b0100,
        sllps: 0b11,
        address_width: 48,
        output_width: 46,
        snoop_control: true,
    })
    .unwrap();
    for seed in 1..=3 {
        stress(f, seed);
    }
}

#[test]
fn disjoint_threads_on_vmsa_stage2_16k_match_their_models() {
    let f = VmsaStage2::new(VmsaConfig {
        granule: Granule::Size16K,
        input_bits: 48,
        output_bits: 48,
    })
    .unwrap();
    for seed in 1..=2 {
        stress(f, seed);
    }
}

#[test]
fn racing_installers_leave_one_table_and_free_the_rest() {
    // Every thread maps its own page in the same, still empty, leaf table at the same moment:
    // one installer wins each level, the others free their fresh tables.
    let f = X86FirstStage::new(X86FirstStageConfig::four_level(46)).unwrap();
    for round in 0..200u64 {
        let hal = HostHal::new();
        let t = PageTable::new(f, &hal, Coherency::NonCoherent).unwrap();
        let start = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for th in 0..THREADS {
                let (t, start) = (&t, &start);
                s.spawn(move || {
                    let va = (round << 30) + th * 0x1000;
                    start.wait();
                    t.map(Iova::new(va), PhysAddr::new(va), 0x1000, Prot::READ)
                        .unwrap();
                });
            }
        });
        // Root + one table per level below it; the losers' fresh tables wait in the cache.
        assert_eq!(hal.live_frames() - t.cached_frames(), 4, "round {round}");
        for th in 0..THREADS {
            let va = (round << 30) + th * 0x1000;
            assert_eq!(t.iova_to_phys(Iova::new(va)), Ok(PhysAddr::new(va)));
        }
    }
}
