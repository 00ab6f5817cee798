//! Loom model checks of the page-table engine's lock-free paths: every interleaving (within the
//! preemption bound) of two operations on disjoint ranges that share tables.
//!
//! Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p iommu --release --test loom_pagetable
//! ```
//!
//! Table frames here hold loom's atomics, so loom sees every entry access, including the zeroes
//! of a fresh table, and reports a reader that could see a table before its initialisation.
#![cfg(loom)]

use std::alloc::{alloc, dealloc, Layout};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::sync::Mutex;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::*;
use loom::sync::atomic::AtomicU64;

/// Frames of loom atomics; physical address == virtual address. Bookkeeping uses std types,
/// held only around plain memory operations, so loom never switches threads inside them.
#[derive(Default)]
struct LoomHal {
    frames: Mutex<HashMap<u64, FrameSize>>,
    live: AtomicUsize,
}

impl LoomHal {
    fn layout(size: FrameSize) -> (usize, Layout) {
        let entries = size.bytes() / 8;
        let bytes = entries * std::mem::size_of::<AtomicU64>();
        // Aligned to the frame size, as the HAL contract asks (the low bits of a table address
        // must be free for the entry's flag bits).
        (
            entries,
            Layout::from_size_align(bytes, size.bytes()).unwrap(),
        )
    }

    fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: frames are fresh allocations of `entries` initialised loom atomics (the "zero fill"),
// aligned to the frame size, owned by the map until freed; identity phys/virt.
unsafe impl Hal for LoomHal {
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        let (entries, layout) = Self::layout(size);
        // SAFETY: non-zero size.
        let p = unsafe { alloc(layout) } as *mut AtomicU64;
        assert!(!p.is_null());
        for i in 0..entries {
            // SAFETY: within the allocation, properly aligned for AtomicU64.
            unsafe { p.add(i).write(AtomicU64::new(0)) };
        }
        self.frames.lock().unwrap().insert(p as u64, size);
        self.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(PhysAddr::new(p as u64))
    }

    unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize) {
        assert_eq!(
            self.frames.lock().unwrap().remove(&frame.as_u64()),
            Some(size),
            "double free or size mismatch"
        );
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let (entries, layout) = Self::layout(size);
        let p = frame.as_u64() as *mut AtomicU64;
        for i in 0..entries {
            // SAFETY: initialised in `alloc_frame`, dropped once.
            unsafe { p.add(i).drop_in_place() };
        }
        // SAFETY: allocated with this layout.
        unsafe { dealloc(p as *mut u8, layout) };
    }

    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        NonNull::new(phys.as_u64() as *mut u8).unwrap()
    }

    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        PhysAddr::new(virt.as_ptr() as u64)
    }
}

type Table = PageTable<VtdSecondStage, LoomHalRef>;

/// The table's handle on the shared HAL, which the test keeps too for counting.
struct LoomHalRef(Arc<LoomHal>);

// SAFETY: forwards to `LoomHal`.
unsafe impl Hal for LoomHalRef {
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        self.0.alloc_frame(size)
    }
    unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize) {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { self.0.free_frame(frame, size) }
    }
    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        self.0.phys_to_virt(phys)
    }
    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        self.0.virt_to_phys(virt)
    }
}

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;

/// A 3-level VT-d table (39-bit), the shallowest real format: fewer accesses per operation keep
/// the model small without changing the protocol.
fn new_table() -> (Arc<LoomHal>, Arc<Table>) {
    let f = VtdSecondStage::new(VtdSecondStageConfig {
        sagaw: 0b0010,
        sllps: 0b01,
        address_width: 39,
        output_width: 39,
        snoop_control: false,
    })
    .unwrap();
    let hal = Arc::new(LoomHal::default());
    let t = PageTable::new(f, LoomHalRef(hal.clone()), Coherency::Coherent).unwrap();
    (hal, Arc::new(t))
}

/// Unmaps everything, completes, destroys: every frame must come back.
fn teardown(hal: &LoomHal, t: Arc<Table>) {
    let t = Arc::try_unwrap(t).expect("threads joined");
    let mut g = Gather::new();
    let _ = t.unmap(Iova::new(0), t.aperture_end(), &mut g);
    let h = t.destroy(&mut g);
    // SAFETY: no walker; all threads joined.
    unsafe { g.complete(&h) };
    assert_eq!(hal.live(), 0);
}

/// Two threads: every interleaving (unbounded preemptions; a fraction of a second).
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(None, f)
}

fn model_bounded(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = preemptions;
    // The single-threaded teardown reads every entry of every table (512 each): each read is a
    // loom step, though not a point where threads interleave.
    b.max_branches = 50_000;
    b.check(f);
}

#[test]
fn two_maps_race_to_install_the_same_tables() {
    model(|| {
        let (hal, t) = new_table();
        let t2 = t.clone();
        let other = loom::thread::spawn(move || {
            t2.map(Iova::new(2 * K4), PhysAddr::new(0x7000), K4, Prot::READ)
                .unwrap();
            // Its own page must be visible to itself whatever the other thread did.
            assert_eq!(
                t2.iova_to_phys(Iova::new(2 * K4)),
                Ok(PhysAddr::new(0x7000))
            );
        });
        t.map(Iova::new(K4), PhysAddr::new(0x5000), K4, Prot::READ_WRITE)
            .unwrap();
        other.join().unwrap();
        assert_eq!(t.iova_to_phys(Iova::new(K4)), Ok(PhysAddr::new(0x5000)));
        assert_eq!(t.iova_to_phys(Iova::new(2 * K4)), Ok(PhysAddr::new(0x7000)));
        // Root, one level-1 table, one leaf table: the losers' went to the cache.
        assert_eq!(hal.live() - t.cached_frames(), 3);
        teardown(&hal, t);
    });
}

#[test]
fn map_and_unmap_on_neighbouring_ranges_share_a_table() {
    model(|| {
        let (hal, t) = new_table();
        t.map(Iova::new(2 * K4), PhysAddr::new(0x9000), K4, Prot::READ)
            .unwrap();
        let t2 = t.clone();
        let unmapper = loom::thread::spawn(move || {
            let mut g = Gather::new();
            assert_eq!(t2.unmap(Iova::new(2 * K4), K4, &mut g), Ok(K4));
            // The shared leaf table is not covered, so it stays.
            assert_eq!(g.freed_frames(), 0);
            assert!(!g.tables_removed());
        });
        t.map(Iova::new(K4), PhysAddr::new(0x5000), K4, Prot::READ)
            .unwrap();
        // A neighbour being unmapped never disturbs a translation of our own page.
        assert_eq!(t.iova_to_phys(Iova::new(K4)), Ok(PhysAddr::new(0x5000)));
        unmapper.join().unwrap();
        assert_eq!(t.iova_to_phys(Iova::new(2 * K4)), Err(Error::NothingMapped));
        assert_eq!(hal.live(), 3);
        teardown(&hal, t);
    });
}

#[test]
fn unmap_freeing_a_table_beside_a_map_in_its_sibling() {
    model(|| {
        let (hal, t) = new_table();
        // A leaf table for [2M, 4M) under the level-1 table that also covers [0, 2M).
        t.map(Iova::new(M2 + K4), PhysAddr::new(0x9000), K4, Prot::READ)
            .unwrap();
        let t2 = t.clone();
        let unmapper = loom::thread::spawn(move || {
            let mut g = Gather::new();
            assert_eq!(t2.unmap(Iova::new(M2), M2, &mut g), Ok(K4));
            assert_eq!(g.freed_frames(), 1);
            assert!(g.tables_removed());
            g
        });
        // Meanwhile a map in [0, 2M) installs a sibling leaf table in the same parent.
        t.map(Iova::new(K4), PhysAddr::new(0x5000), K4, Prot::READ)
            .unwrap();
        let g = unmapper.join().unwrap();
        // SAFETY: no walker; the unmapping thread is joined and nothing else used [2M, 4M).
        unsafe { g.complete(t.hal()) };
        assert_eq!(t.iova_to_phys(Iova::new(K4)), Ok(PhysAddr::new(0x5000)));
        assert_eq!(
            t.iova_to_phys(Iova::new(M2 + K4)),
            Err(Error::NothingMapped)
        );
        // Root, level-1 table, the new leaf table.
        assert_eq!(hal.live() - t.cached_frames(), 3);
        teardown(&hal, t);
    });
}

#[test]
fn a_reader_never_sees_a_half_built_path() {
    model(|| {
        let (hal, t) = new_table();
        let t2 = t.clone();
        let reader = loom::thread::spawn(move || {
            // A neighbour page in the table being built: either no table yet or an empty slot,
            // never garbage.
            assert_eq!(
                t2.iova_to_phys(Iova::new(3 * K4)),
                Err(Error::NothingMapped)
            );
        });
        t.map(Iova::new(K4), PhysAddr::new(0x5000), K4, Prot::READ)
            .unwrap();
        reader.join().unwrap();
        teardown(&hal, t);
    });
}

#[test]
fn three_maps_race_and_a_loser_frees_its_tables() {
    // Three threads explode the state space: bound the preemptions (every interleaving with up
    // to 2 preemptions, which covers each pair of installers racing at every level).
    model_bounded(Some(2), || {
        let (hal, t) = new_table();
        let threads: Vec<_> = [2u64, 3]
            .into_iter()
            .map(|i| {
                let t = t.clone();
                loom::thread::spawn(move || {
                    t.map(Iova::new(i * K4), PhysAddr::new(i * K4), K4, Prot::READ)
                        .unwrap();
                })
            })
            .collect();
        t.map(Iova::new(K4), PhysAddr::new(K4), K4, Prot::READ)
            .unwrap();
        for th in threads {
            th.join().unwrap();
        }
        for i in 1..=3 {
            assert_eq!(t.iova_to_phys(Iova::new(i * K4)), Ok(PhysAddr::new(i * K4)));
        }
        assert_eq!(hal.live() - t.cached_frames(), 3);
        teardown(&hal, t);
    });
}

/// The model has no hardware walking the table: an invalidation has nothing to wait for.
struct NoWalker;

// SAFETY: no unit walks the tables of these models.
unsafe impl FlushRange for NoWalker {
    type Error = Error;
    fn flush(&self, _: Iova, _: u64, _: bool) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_table_freed_into_the_cache_while_maps_take_tables_from_it() {
    model_bounded(Some(3), || {
        let (hal, t) = new_table();
        // A leaf table for [2M, 4M), unlinked whole by the unmap below and cached at its flush.
        t.map(Iova::new(M2 + K4), PhysAddr::new(0x9000), K4, Prot::READ)
            .unwrap();
        let t2 = t.clone();
        let unmapper = loom::thread::spawn(move || {
            assert_eq!(t2.unmap_flushed(Iova::new(M2), M2, &NoWalker), Ok(K4));
        });
        // Meanwhile two maps need new leaf tables: from the cache if the frame is already
        // there (zeroed before it is linked), else from the HAL.
        for at in [0, 2 * M2] {
            t.map(
                Iova::new(at + K4),
                PhysAddr::new(at + 0x5000),
                K4,
                Prot::READ,
            )
            .unwrap();
        }
        unmapper.join().unwrap();
        for at in [0, 2 * M2] {
            assert_eq!(
                t.iova_to_phys(Iova::new(at + K4)),
                Ok(PhysAddr::new(at + 0x5000))
            );
            // The rest of a table taken from the cache reads empty.
            assert_eq!(t.iova_to_phys(Iova::new(at)), Err(Error::NothingMapped));
        }
        assert_eq!(
            t.iova_to_phys(Iova::new(M2 + K4)),
            Err(Error::NothingMapped)
        );
        // Root, level-1 table, two leaf tables; a frame is in the cache or in a table, never
        // both, and none is lost (teardown counts them all back).
        assert_eq!(hal.live() - t.cached_frames(), 4);
        teardown(&hal, t);
    });
}
