//! Page-table engine benchmarks, side by side with two peers in the same run:
//! - the `x86_64` crate's `OffsetPageTable` (a plain 4-level radix table: no atomics, no
//!   invalidation gather, frames from a pre-allocated pool, flushes ignored) on the same work,
//!   its frames from the same host allocator as ours so neither wins on memory layout;
//! - our engine behind a `spin::Mutex` (the naive concurrent design) for the 2-thread case.
//!
//! Our engine uses the VT-d first-stage format, which is the same 4-level x86-64 radix tree.
//!
//! ```text
//! cargo bench -p iommu --bench pagetable                       # everything
//! cargo bench -p iommu --bench pagetable -- --warm-up-time 1 --measurement-time 2   # quick
//! ```
//!
//! Every measurement is ns per operation (one map, one unmap, ...); for the 256-page range
//! benches one iteration is 256 pages (criterion's throughput line gives pages per second).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{Coherency, Gather, PageTable, Prot, X86FirstStage, X86FirstStageConfig};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as X86Level4, PageTableFlags,
    PhysFrame, Size2MiB, Size4KiB, Translate,
};
use x86_64::VirtAddr;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Pages in the window of the sequential benches (256 MiB).
const WINDOW: u64 = 65_536;
/// Where 4K work happens; 2M work uses the next gigabytes so no leaf table is in its way.
const BASE_4K: u64 = 16 * G1;
const BASE_2M: u64 = 32 * G1;

/// Our engine over the host HAL (zeroed, 4 KiB-aligned host allocations).
type Engine = PageTable<X86FirstStage, &'static HostHal>;

fn engine() -> Engine {
    let hal: &'static HostHal = Box::leak(Box::new(HostHal::new()));
    let f = X86FirstStage::new(X86FirstStageConfig::four_level(46)).unwrap();
    PageTable::new(f, hal, Coherency::Coherent).unwrap()
}

/// The peer's frames: a pool pre-allocated from the same host HAL our engine uses.
struct Pool(Vec<u64>);

impl Pool {
    fn new(frames: usize) -> Self {
        let hal: &'static HostHal = Box::leak(Box::new(HostHal::new()));
        let mut v: Vec<u64> = (0..frames)
            .map(|_| hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64())
            .collect();
        // Hand them out in allocation order.
        v.reverse();
        Self(v)
    }
}

// SAFETY: every frame is a distinct, zeroed, 4K-aligned block that the HAL handed out once.
unsafe impl FrameAllocator<Size4KiB> for Pool {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = self.0.pop()?;
        Some(PhysFrame::containing_address(x86_64::PhysAddr::new(f)))
    }
}

#[inline(always)]
fn emap(t: &Engine, va: u64, len: u64) {
    t.map(Iova::new(va), PhysAddr::new(va), len, Prot::READ_WRITE)
        .unwrap();
}

#[inline(always)]
fn eunmap(t: &Engine, va: u64, len: u64) {
    let mut g = Gather::new();
    t.unmap(Iova::new(va), len, &mut g).unwrap();
    // SAFETY: host memory; nothing walks it. (Empty for page unmaps: tables stay.)
    unsafe { g.complete(t.hal()) };
}

/// The `x86_64` crate's table over host memory (physical offset 0: phys == virt).
struct Peer {
    mapper: OffsetPageTable<'static>,
    pool: Pool,
}

fn peer() -> Peer {
    let l4: &'static mut X86Level4 = Box::leak(Box::new(X86Level4::new()));
    // SAFETY: with offset 0 every "physical" frame is a host pointer we own.
    let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(0)) };
    Peer {
        mapper,
        pool: Pool::new(1200),
    }
}

impl Peer {
    #[inline(always)]
    fn map(&mut self, va: u64) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(va));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        // SAFETY: the frame is never accessed through the mapping.
        unsafe { self.mapper.map_to(page, frame, flags, &mut self.pool) }
            .unwrap()
            .ignore();
    }

    #[inline(always)]
    fn unmap(&mut self, va: u64) {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
        self.mapper.unmap(page).unwrap().1.ignore();
    }

    #[inline(always)]
    fn map_2m(&mut self, va: u64) {
        let page = Page::<Size2MiB>::containing_address(VirtAddr::new(va));
        let frame = PhysFrame::<Size2MiB>::containing_address(x86_64::PhysAddr::new(va));
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        // SAFETY: as above.
        unsafe { self.mapper.map_to(page, frame, flags, &mut self.pool) }
            .unwrap()
            .ignore();
    }

    #[inline(always)]
    fn unmap_2m(&mut self, va: u64) {
        let page = Page::<Size2MiB>::containing_address(VirtAddr::new(va));
        self.mapper.unmap(page).unwrap().1.ignore();
    }
}

/// Every operation under test is `#[inline(always)]` into this loop, ours and the peer's alike.
/// Runs `op(state, i)` for `iters` values of `i`, timing only `op`: before each batch of at
/// most `batch` operations `prepare(state, n)` runs untimed, after it `cleanup(state, n)`.
fn batched<S>(
    iters: u64,
    batch: u64,
    state: &mut S,
    mut prepare: impl FnMut(&mut S, u64),
    mut op: impl FnMut(&mut S, u64),
    mut cleanup: impl FnMut(&mut S, u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let n = batch.min(iters - done);
        prepare(state, n);
        let t0 = Instant::now();
        for i in 0..n {
            op(state, i);
        }
        total += t0.elapsed();
        cleanup(state, n);
        done += n;
    }
    total
}

fn seq_4k(c: &mut Criterion) {
    let t = engine();
    let mut p = peer();
    // Warm up: every table of the window exists in both (page unmaps keep tables).
    for i in 0..WINDOW {
        emap(&t, BASE_4K + i * K4, K4);
        p.map(BASE_4K + i * K4);
    }
    for i in 0..WINDOW {
        eunmap(&t, BASE_4K + i * K4, K4);
        p.unmap(BASE_4K + i * K4);
    }
    let at = |i: u64| BASE_4K + i * K4;
    let e = &mut &t;

    let mut g = c.benchmark_group("map_4k");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                WINDOW,
                e,
                |_, _| {},
                |t, i| emap(t, black_box(at(i)), K4),
                |t, k| (0..k).for_each(|i| eunmap(t, at(i), K4)),
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                WINDOW,
                &mut p,
                |_, _| {},
                |q, i| q.map(black_box(at(i))),
                |q, k| (0..k).for_each(|i| q.unmap(at(i))),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("unmap_4k");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                WINDOW,
                e,
                |t, k| (0..k).for_each(|i| emap(t, at(i), K4)),
                |t, i| eunmap(t, black_box(at(i)), K4),
                |_, _| {},
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                WINDOW,
                &mut p,
                |q, k| (0..k).for_each(|i| q.map(at(i))),
                |q, i| q.unmap(black_box(at(i))),
                |_, _| {},
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("iova_to_phys");
    for i in 0..WINDOW {
        emap(&t, at(i), K4);
        p.map(at(i));
    }
    g.bench_function("engine", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 1) % WINDOW;
            t.iova_to_phys(Iova::new(black_box(at(i) + 8))).unwrap()
        })
    });
    g.bench_function("x86_64", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 1) % WINDOW;
            p.mapper
                .translate_addr(VirtAddr::new(black_box(at(i) + 8)))
                .unwrap()
        })
    });
    g.finish();
    for i in 0..WINDOW {
        eunmap(&t, at(i), K4);
        p.unmap(at(i));
    }

    // One page mapped and unmapped again and again (a short-lived DMA buffer).
    let mut g = c.benchmark_group("map_unmap_pair");
    g.bench_function("engine", |b| {
        b.iter(|| {
            emap(&t, black_box(BASE_4K), K4);
            eunmap(&t, black_box(BASE_4K), K4);
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter(|| {
            p.map(black_box(BASE_4K));
            p.unmap(black_box(BASE_4K));
        })
    });
    g.finish();

    // 256 pages (1 MiB) as one call, against the peer's page-by-page loop.
    let ranges = WINDOW / 256;
    let rat = |i: u64| BASE_4K + i * 256 * K4;
    let mut g = c.benchmark_group("map_256x4k");
    g.throughput(Throughput::Elements(256));
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                ranges,
                e,
                |_, _| {},
                |t, i| emap(t, black_box(rat(i)), 256 * K4),
                |t, k| (0..k).for_each(|i| eunmap(t, rat(i), 256 * K4)),
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                ranges,
                &mut p,
                |_, _| {},
                |q, i| (0..256).for_each(|j| q.map(black_box(rat(i) + j * K4))),
                |q, k| (0..k * 256).for_each(|j| q.unmap(rat(0) + j * K4)),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("unmap_256x4k");
    g.throughput(Throughput::Elements(256));
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                ranges,
                e,
                |t, k| (0..k).for_each(|i| emap(t, rat(i), 256 * K4)),
                |t, i| eunmap(t, black_box(rat(i)), 256 * K4),
                |_, _| {},
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                ranges,
                &mut p,
                |q, k| (0..k * 256).for_each(|j| q.map(rat(0) + j * K4)),
                |q, i| (0..256).for_each(|j| q.unmap(black_box(rat(i) + j * K4))),
                |_, _| {},
            )
        })
    });
    g.finish();
}

fn superpages(c: &mut Criterion) {
    let t = engine();
    let mut p = peer();
    let n2m = 512; // one gigabyte of 2 MiB pages
    let at = |i: u64| BASE_2M + i * M2;
    // Warm up: the tables above the 2 MiB level exist in both.
    emap(&t, at(0), M2);
    eunmap(&t, at(0), M2);
    p.map_2m(at(0));
    p.unmap_2m(at(0));
    let e = &mut &t;

    let mut g = c.benchmark_group("map_2m");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                n2m,
                e,
                |_, _| {},
                |t, i| emap(t, black_box(at(i)), M2),
                |t, k| (0..k).for_each(|i| eunmap(t, at(i), M2)),
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                n2m,
                &mut p,
                |_, _| {},
                |q, i| q.map_2m(black_box(at(i))),
                |q, k| (0..k).for_each(|i| q.unmap_2m(at(i))),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("unmap_2m");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                n2m,
                e,
                |t, k| (0..k).for_each(|i| emap(t, at(i), M2)),
                |t, i| eunmap(t, black_box(at(i)), M2),
                |_, _| {},
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                n2m,
                &mut p,
                |q, k| (0..k).for_each(|i| q.map_2m(at(i))),
                |q, i| q.unmap_2m(black_box(at(i))),
                |_, _| {},
            )
        })
    });
    g.finish();
}

/// 4K maps and unmaps at shuffled IOVAs over 1 GiB.
fn random_1g(c: &mut Criterion) {
    let pages = G1 / K4;
    let shuffled = |seed: u64| {
        let mut v: Vec<u64> = (0..pages).collect();
        let mut x = seed;
        for i in (1..v.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.swap(i, (x % (i as u64 + 1)) as usize);
        }
        v
    };
    let (om, ou) = (shuffled(0x1234_5678), shuffled(0x8765_4321));
    let at = |i: u64| BASE_4K + i * K4;
    let t = engine();
    let mut p = peer();
    for &i in &om {
        emap(&t, at(i), K4);
        p.map(at(i));
    }
    for &i in &om {
        eunmap(&t, at(i), K4);
        p.unmap(at(i));
    }
    let e = &mut &t;

    let mut g = c.benchmark_group("random_map_4k_1g");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                pages,
                e,
                |_, _| {},
                |t, i| emap(t, black_box(at(om[i as usize])), K4),
                |t, k| (0..k).for_each(|i| eunmap(t, at(om[i as usize]), K4)),
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                pages,
                &mut p,
                |_, _| {},
                |q, i| q.map(black_box(at(om[i as usize]))),
                |q, k| (0..k).for_each(|i| q.unmap(at(om[i as usize]))),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("random_unmap_4k_1g");
    g.bench_function("engine", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                pages,
                e,
                |t, k| (0..k).for_each(|i| emap(t, at(ou[i as usize]), K4)),
                |t, i| eunmap(t, black_box(at(ou[i as usize])), K4),
                |_, _| {},
            )
        })
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            batched(
                n,
                pages,
                &mut p,
                |q, k| (0..k).for_each(|i| q.map(at(ou[i as usize]))),
                |q, i| q.unmap(black_box(at(ou[i as usize]))),
                |_, _| {},
            )
        })
    });
    g.finish();
}

/// Map+unmap pairs of 4K pages on disjoint ranges (one gigabyte per thread), lock-free versus
/// the same engine behind a `spin::Mutex`. Reported time is wall time per pair summed over all
/// threads (so perfect 2-thread scaling halves it).
fn threads(c: &mut Criterion) {
    const SLOTS: u64 = 64;
    let t = engine();
    let locked = spin::Mutex::new(engine());
    // One table per thread: nothing shared at all, the ceiling for the shared table.
    let separate = [engine(), engine()];
    let at = |th: u64, i: u64| BASE_4K + th * G1 + (i % SLOTS) * K4;
    for th in 0..2 {
        emap(&t, at(th, 0), K4);
        eunmap(&t, at(th, 0), K4);
        emap(&separate[th as usize], at(th, 0), K4);
        eunmap(&separate[th as usize], at(th, 0), K4);
        let l = locked.lock();
        emap(&l, at(th, 0), K4);
        eunmap(&l, at(th, 0), K4);
    }

    fn run(threads: u64, iters: u64, work: &(dyn Fn(u64, u64) + Sync)) -> Duration {
        let per = iters.div_ceil(threads);
        let start = Barrier::new(threads as usize + 1);
        std::thread::scope(|s| {
            for th in 0..threads {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    for i in 0..per {
                        work(th, i);
                    }
                });
            }
            start.wait();
            let t0 = Instant::now();
            // Leaving the scope joins every worker.
            t0
        })
        .elapsed()
    }

    let mut g = c.benchmark_group("threads_map_unmap_pair");
    for n in [1u64, 2] {
        // What the machine gives two threads right now: pure ALU work of about the same
        // length as a pair, no memory traffic. Engine scaling is read against this.
        g.bench_function(format!("machine_{n}"), |b| {
            b.iter_custom(|iters| {
                run(n, iters, &|th, i| {
                    // A dependent xorshift-multiply chain the compiler cannot fold.
                    let mut x = black_box(th ^ i) | 1;
                    for _ in 0..12 {
                        x ^= x >> 29;
                        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    }
                    black_box(x);
                })
            })
        });
        g.bench_function(format!("engine_{n}"), |b| {
            b.iter_custom(|iters| {
                run(n, iters, &|th, i| {
                    emap(&t, at(th, i), K4);
                    eunmap(&t, at(th, i), K4);
                })
            })
        });
        if n == 2 {
            g.bench_function("separate_tables_2", |b| {
                b.iter_custom(|iters| {
                    run(n, iters, &|th, i| {
                        let t = &separate[th as usize];
                        emap(t, at(th, i), K4);
                        eunmap(t, at(th, i), K4);
                    })
                })
            });
        }
        g.bench_function(format!("spin_mutex_{n}"), |b| {
            b.iter_custom(|iters| {
                run(n, iters, &|th, i| {
                    emap(&locked.lock(), at(th, i), K4);
                    eunmap(&locked.lock(), at(th, i), K4);
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seq_4k, superpages, random_1g, threads);
criterion_main!(benches);
