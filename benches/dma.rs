//! The DMA API's streaming path on the host, each figure against a foil in the same run:
//! - map + unmap of a 4 KiB buffer through a DMA API domain ([`DmaDevice::map`] /
//!   [`DmaDevice::unmap`]: per-CPU IOVA caches, the sharded record of live mappings, the unit's
//!   lock-free page table, the invalidation gather; the unit invalidates nothing) on 1 and 2
//!   threads, against a naive DMA layer over a paging domain of the object model
//!   ([`Iommu::map`] / [`Iommu::unmap`]) with a first-fit IOVA allocator and a record of live
//!   buffers, each behind a `spin::Mutex`;
//!   pure arithmetic on 1 and 2 threads says what the machine gives two threads at that moment;
//! - strict against deferred unmaps (`Deferred { batch: 32 }`, a flush after every 1000 pairs):
//!   time, and invalidations per 1000 pairs counted by the unit's invalidation hook;
//! - bounce-only mode without an IOMMU: map + unmap of 4 KiB and 64 KiB buffers to the device
//!   (one copy in) and both ways (copy in and out), against one and two plain
//!   `copy_nonoverlapping`s of the same size.
//!
//! ```text
//! cargo bench -p iommu --bench dma
//! cargo bench -p iommu --bench dma -- --test     # smoke test: every case once
//! ```
//!
//! Instructions per operation, free of the machine's noise: run the bench binary under
//! `valgrind --tool=callgrind` with `DMA_BENCH_ONLY=<case> DMA_BENCH_OPS=<n>` for two `n`.
//!
//! Criterion reports the time per operation (a pair, or a copy). After its report, the bench
//! prints the operations per second of every case, each the median of five rounds taken in
//! turn so that every case sees the same noise, then one line per figure for the README.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use iommu::addr::{Iova, PhysAddr};
use iommu::dma::{
    BouncePolicy, BouncePool, Config, Direction, DmaAddr, DmaDevice, IovaAllocator, UnmapPolicy,
};
use iommu::hal::host::HostHal;
use iommu::hal::{FrameSize, Hal};
use iommu::iommufd::bench::{
    dma_model, lane, load, medians, model, rate_of, table, Case, Path, OWNER, SLOTS,
};
use iommu::iommufd::{DomainId, InsecureNoIommu, Iommu, Layout, Region};
use iommu::pagetable::{Prot, VtdSecondStage};
use iommu::unit::host::TableUnit;

const K4: u64 = 0x1000;
const K64: u64 = 0x1_0000;
/// Input address bits of every domain.
const IA_BITS: u32 = 48;
/// Buffers a thread cycles through: pair `i` maps buffer `i % BUFFERS`.
const BUFFERS: u64 = 64;
/// Map + unmap pairs per deferred-unmap round, each round ended by a flush.
const ROUND: u64 = 1000;
/// Deferred unmaps a CPU queues before it flushes.
const BATCH: usize = 32;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Where the diagnostic object-model pairs work, far above the foil's IOVAs.
const G16: u64 = 16 * G1;
/// The copy cases of one size: memcpy, memcpy over a pool-sized region, bounce to the device,
/// two memcpys, bounce both ways.
const COPY_4K: [&str; 5] = [
    "copy/4k/memcpy",
    "copy/4k/memcpy_spread",
    "copy/4k/bounce",
    "copy/4k/memcpy_x2",
    "copy/4k/bounce_bidir",
];
const COPY_64K: [&str; 5] = [
    "copy/64k/memcpy",
    "copy/64k/memcpy_spread",
    "copy/64k/bounce",
    "copy/64k/memcpy_x2",
    "copy/64k/bounce_bidir",
];
/// Rounds of the summary, and seconds each case runs in a round.
const ROUNDS: usize = 5;
const SECS: f64 = 0.3;

type Unit = TableUnit<VtdSecondStage>;

std::thread_local! {
    /// The CPU index [`Config::cpu`] reports for the calling thread.
    static THREAD_CPU: Cell<usize> = const { Cell::new(0) };
}

fn thread_cpu() -> usize {
    THREAD_CPU.with(Cell::get)
}

/// The buffer of pair `i` on thread `t`: a page of its own (never touched: the page table only
/// records it), each thread in its own 4 GiB.
fn buffer(t: usize, i: u64) -> PhysAddr {
    PhysAddr::new(((t as u64 + 1) << 32) | ((i % BUFFERS) * K4))
}

/// Calls to the unit's invalidation hook of the deferred-unmap model. A statistic read after
/// the threads that count joined (the join orders it): relaxed.
static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);

/// What a naive DMA layer does over the same object model: the lowest free IOVA range that
/// fits (first fit over a sorted free list) and a record of live buffers, each behind one
/// `spin::Mutex` that every CPU takes.
struct NaiveDma<'a> {
    io: &'a Iommu<Unit>,
    dom: DomainId,
    /// Free IOVA ranges, start → end (exclusive), disjoint and not adjacent.
    free: spin::Mutex<BTreeMap<u64, u64>>,
    /// Live buffers by first IOVA page: (buffer, length).
    live: spin::Mutex<BTreeMap<u64, (u64, u64)>>,
}

impl<'a> NaiveDma<'a> {
    /// Over `[start, end)` of `dom`, which nothing else maps.
    fn new(io: &'a Iommu<Unit>, dom: DomainId, start: u64, end: u64) -> Self {
        Self {
            io,
            dom,
            free: spin::Mutex::new(BTreeMap::from([(start, end)])),
            live: spin::Mutex::new(BTreeMap::new()),
        }
    }

    fn map(&self, phys: PhysAddr, len: u64) -> DmaAddr {
        let phys = phys.as_u64();
        let first = phys & !(K4 - 1);
        let span = (phys + len).next_multiple_of(K4) - first;
        let iova = {
            let mut free = self.free.lock();
            let Some((s, e)) = free
                .iter()
                .find(|(&s, &e)| e - s >= span)
                .map(|(&s, &e)| (s, e))
            else {
                panic!("foil: IOVA space exhausted");
            };
            free.remove(&s);
            if s + span < e {
                free.insert(s + span, e);
            }
            s
        };
        let at = (Iova::new(iova), PhysAddr::new(first));
        if let Err(e) = self.io.map(OWNER, self.dom, at.0, at.1, span, Prot::READ) {
            panic!("foil map {iova:#x}: {e}");
        }
        self.live.lock().insert(iova, (phys, len));
        DmaAddr(iova + phys % K4)
    }

    fn unmap(&self, addr: DmaAddr, len: u64) {
        let iova = addr.0 & !(K4 - 1);
        let Some((phys, l)) = self.live.lock().remove(&iova) else {
            panic!("foil unmap {iova:#x}: not mapped");
        };
        assert_eq!(l, len, "foil unmap {iova:#x}: wrong length");
        let span = (phys + len).next_multiple_of(K4) - (phys & !(K4 - 1));
        match self.io.unmap(OWNER, self.dom, Iova::new(iova), span) {
            Ok(n) if n == span => {}
            other => panic!("foil unmap {iova:#x}: {other:?}"),
        }
        let mut free = self.free.lock();
        let (mut start, mut end) = (iova, iova + span);
        if let Some((&s, &e)) = free.range(..iova).next_back() {
            if e == iova {
                free.remove(&s);
                start = s;
            }
        }
        if let Some(e) = free.remove(&end) {
            end = e;
        }
        free.insert(start, end);
    }
}

/// Map + unmap of the 4 KiB buffer of pair `i` on thread `t` (as CPU `t`).
fn pair(dma: &DmaDevice<'_, HostHal>, t: usize, i: u64) {
    THREAD_CPU.with(|c| c.set(t));
    let addr = dma
        .map(buffer(t, i), K4, Direction::ToDevice)
        .unwrap_or_else(|e| panic!("map: {e}"));
    dma.unmap(addr, K4)
        .unwrap_or_else(|e| panic!("unmap {addr:?}: {e}"));
}

/// One deferred-unmap round's pair: a flush after every [`ROUND`] of them.
fn round_pair(dma: &DmaDevice<'_, HostHal>, i: u64) {
    pair(dma, 0, i);
    if i % ROUND == ROUND - 1 {
        dma.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    }
}

/// Invalidations of exactly one round of [`ROUND`] pairs and its flush.
fn invalidations_per_round(dma: &DmaDevice<'_, HostHal>) -> u64 {
    dma.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    let before = INVALIDATIONS.load(Ordering::Relaxed);
    for i in 0..ROUND {
        round_pair(dma, i);
    }
    INVALIDATIONS.load(Ordering::Relaxed) - before
}

/// Host memory of `bytes` (a power of two), zeroed and aligned to its size.
fn memory(hal: &HostHal, bytes: u64) -> PhysAddr {
    let Some(size) = FrameSize::from_log2(bytes.trailing_zeros()) else {
        panic!("no frame size of {bytes} bytes");
    };
    hal.alloc_frame(size)
        .unwrap_or_else(|| panic!("host memory: {bytes} bytes"))
}

/// `len` bytes from `from` to `to`, as the bounce path copies them; host memory is
/// identity-mapped.
fn memcpy(from: PhysAddr, to: PhysAddr, len: u64) {
    let (src, dst) = (black_box(from.as_u64()), black_box(to.as_u64()));
    // SAFETY: both are frames of at least `len` bytes that `memory` allocated and nothing else
    // uses while the bench runs.
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len as usize) }
}

/// Map + unmap of `len` bytes at `buf` through the bounce-only handle.
fn bounce(dma: &DmaDevice<'_, HostHal>, buf: PhysAddr, len: u64, dir: Direction) {
    let addr = dma
        .map(buf, len, dir)
        .unwrap_or_else(|e| panic!("bounce map: {e}"));
    dma.unmap(addr, len)
        .unwrap_or_else(|e| panic!("bounce unmap {addr:?}: {e}"));
}

/// A case of `threads` threads doing `path`'s work (the lanes only count the threads).
fn case<'m>(
    name: &'static str,
    baseline: &'static str,
    path: Path<'m, Unit>,
    threads: usize,
    dom: DomainId,
) -> Case<'m, Unit> {
    Case {
        name,
        baseline,
        size: K4,
        path,
        lanes: vec![lane(dom, 0); threads],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The summary only in a full run: not in `--test`, `--list` or `--profile-time` (perf on one
    // case), nor under `cargo test --benches` (no `--bench`).
    let quick = !args.iter().any(|a| a == "--bench")
        || args
            .iter()
            .any(|a| ["--test", "--list", "--profile-time"].contains(&a.as_str()));
    let hal = HostHal::new();
    let cpus2 = |unmap| Config {
        cpus: 2,
        cpu: thread_cpu,
        unmap,
        ..Config::new(u64::MAX)
    };

    // 1. The streaming path, and its foil on an object model of its own.
    let (io, doms) = dma_model(TableUnit::vtd_second_stage(), 1, IA_BITS);
    let dma = DmaDevice::paging(&io, OWNER, doms[0], &hal, cpus2(UnmapPolicy::Strict))
        .unwrap_or_else(|e| panic!("paging handle: {e}"));
    let (foil_io, foil_doms) = model(TableUnit::vtd_second_stage(), 1, IA_BITS);
    // Below the x86 MSI doorbell the model reserves: one free range.
    let foil = NaiveDma::new(&foil_io, foil_doms[0], K4, 0xfee0_0000);

    // 2. Strict and deferred unmaps, on a unit that counts its invalidations.
    let counting = TableUnit::vtd_second_stage().with_invalidation(|_, _| {
        INVALIDATIONS.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let (inv_io, inv_doms) = dma_model(counting, 2, IA_BITS);
    let strict = DmaDevice::paging(&inv_io, OWNER, inv_doms[0], &hal, Config::new(u64::MAX))
        .unwrap_or_else(|e| panic!("strict handle: {e}"));
    let deferred_cfg = Config {
        unmap: UnmapPolicy::Deferred { batch: BATCH },
        ..Config::new(u64::MAX)
    };
    let deferred = DmaDevice::paging(&inv_io, OWNER, inv_doms[1], &hal, deferred_cfg)
        .unwrap_or_else(|e| panic!("deferred handle: {e}"));

    // 3. Bounce-only mode without an IOMMU, over a 2 MiB pool; buffers and the memcpy foil's
    // destination in host memory of their own.
    let insecure = InsecureNoIommu::enable(0).unwrap_or_else(|e| panic!("no-IOMMU mode: {e}"));
    let pool_len = 2 << 20;
    // SAFETY: host memory allocated for the pool alone, identity-mapped as `DmaHal` requires.
    let pool = unsafe { BouncePool::new(memory(&hal, pool_len), pool_len) }
        .unwrap_or_else(|e| panic!("pool: {e}"));
    let bounce_cfg = Config {
        bounce: BouncePolicy::Always,
        ..Config::new(u64::MAX)
    };
    let bouncing = DmaDevice::no_iommu(&insecure, &hal, bounce_cfg)
        .and_then(|d| d.with_pool(&pool))
        .unwrap_or_else(|e| panic!("bounce handle: {e}"));
    let (src, dst) = (memory(&hal, K64), memory(&hal, K64));

    let dma_pair = |t, i| pair(&dma, t, i);
    let foil_pair = |t, i| {
        let a = foil.map(buffer(t, i), K4);
        foil.unmap(a, K4);
    };
    // Diagnostics, the DMA layer's parts alone: the IOVA allocator (per-CPU magazines), and a
    // stand-in for the record of live mappings (one shard: a lock around a BTreeMap with the
    // record's key, an insert, the range search of an unmap, a remove).
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let iova_alloc = IovaAllocator::new(&layout, 2);
    let iova_pair = |t: usize, _| {
        let iova = iova_alloc
            .alloc(t, K4, u64::MAX)
            .unwrap_or_else(|e| panic!("IOVA: {e}"));
        iova_alloc
            .free(t, iova, K4)
            .unwrap_or_else(|e| panic!("IOVA free: {e}"));
    };
    type Record = spin::Mutex<BTreeMap<(u64, u64, u64), [u64; 6]>>;
    let records: [Record; 2] = Default::default();
    let record_pair = |t: usize, i: u64| {
        let addr = buffer(t, i).as_u64();
        records[t].lock().insert((addr, K4, i), [i; 6]);
        let mut r = records[t].lock();
        let key = r
            .range((addr, 0, 0)..=(addr, u64::MAX, u64::MAX))
            .find(|((_, l, _), _)| *l == K4)
            .map(|(k, _)| *k);
        black_box(key.and_then(|k| r.remove(&k)));
    };
    let strict_pair = |_: usize, i| round_pair(&strict, i);
    let deferred_pair = |_: usize, i| round_pair(&deferred, i);
    let bouncing = &bouncing;
    // Where the diagnostic memcpy writes: a region the size of the pool, walked through as the
    // pool's next-fit search walks through its slots.
    let spread = memory(&hal, pool_len);
    let copy_work = |len: u64| -> [Box<dyn Fn(usize, u64) + Sync + '_>; 5] {
        [
            Box::new(move |_, _| memcpy(src, dst, len)),
            Box::new(move |_, i| {
                let to = spread.as_u64() + (i * len) % pool_len;
                memcpy(src, PhysAddr::new(to), len);
            }),
            Box::new(move |_, _| bounce(bouncing, src, len, Direction::ToDevice)),
            Box::new(move |_, _| {
                memcpy(src, dst, len);
                memcpy(dst, src, len);
            }),
            Box::new(move |_, _| bounce(bouncing, src, len, Direction::Bidirectional)),
        ]
    };
    let (copy_4k, copy_64k) = (copy_work(K4), copy_work(K64));

    let d = doms[0];
    let f = foil_doms[0];
    // Diagnostics: the object model's map + unmap alone (what the DMA API and the foil share),
    // on the foil's model far above the foil's IOVAs; two threads in one 2 MiB stripe of the
    // domain's IOVA records (as the DMA API's two CPUs are: see the IOVAs printed) or 1 GiB +
    // 2 MiB apart.
    let lanes = |bases: &[u64]| bases.iter().map(|&b| lane(f, b)).collect::<Vec<_>>();
    let direct = |name, baseline, bases: &[u64]| Case {
        name,
        baseline,
        size: K4,
        path: Path::Direct(&foil_io),
        lanes: lanes(bases),
    };
    let mut cases = vec![
        case("machine/1", "machine/1", Path::Machine, 1, d),
        case("machine/2", "machine/1", Path::Machine, 2, d),
        case("4k/dma/1", "4k/dma/1", Path::Custom(&dma_pair), 1, d),
        case("4k/dma/2", "4k/dma/1", Path::Custom(&dma_pair), 2, d),
        case("4k/foil/1", "4k/foil/1", Path::Custom(&foil_pair), 1, d),
        case("4k/foil/2", "4k/foil/1", Path::Custom(&foil_pair), 2, d),
        direct("4k/iommu/1", "4k/iommu/1", &[G16]),
        direct(
            "4k/iommu/2_one_stripe",
            "4k/iommu/1",
            &[G16, G16 + SLOTS * K4],
        ),
        direct("4k/iommu/2_far", "4k/iommu/1", &[G16, G16 + G1 + M2]),
        case("4k/iova/1", "4k/iova/1", Path::Custom(&iova_pair), 1, d),
        case("4k/iova/2", "4k/iova/1", Path::Custom(&iova_pair), 2, d),
        case(
            "4k/record/1",
            "4k/record/1",
            Path::Custom(&record_pair),
            1,
            d,
        ),
        case("4k/strict", "4k/strict", Path::Custom(&strict_pair), 1, d),
        case(
            "4k/deferred32",
            "4k/strict",
            Path::Custom(&deferred_pair),
            1,
            d,
        ),
    ];
    for (names, work) in [(&COPY_4K, &copy_4k), (&COPY_64K, &copy_64k)] {
        for (i, (name, work)) in names.iter().zip(work).enumerate() {
            // memcpy and memcpy_x2 are the baselines.
            let baseline = names[if i < 3 { 0 } else { 3 }];
            cases.push(case(name, baseline, Path::Custom(&**work), 1, d));
        }
    }
    for case in &cases {
        case.warm_up();
    }

    // `DMA_BENCH_ONLY=<case> DMA_BENCH_OPS=<n>`: that case's `n` operations and nothing else,
    // for instruction counts (callgrind: the difference of two `n`, divided).
    if let Ok(name) = std::env::var("DMA_BENCH_ONLY") {
        let ops = std::env::var("DMA_BENCH_OPS").map_or(Ok(1_000_000), |n| n.parse::<u64>());
        let ops = ops.unwrap_or_else(|e| panic!("DMA_BENCH_OPS: {e}"));
        let Some(case) = cases.iter().find(|c| c.name == name) else {
            panic!("no case {name}");
        };
        case.run(ops);
        return;
    }

    let load_before = load();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("dma");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000));
    for case in &cases {
        let bytes = match case.name {
            n if n.starts_with("copy/4k") => Some(K4),
            n if n.starts_with("copy/64k") => Some(K64),
            _ => None,
        };
        group.throughput(bytes.map_or(Throughput::Elements(1), Throughput::Bytes));
        group.bench_function(case.name, |b| b.iter_custom(|n| case.run(n)));
    }
    group.finish();
    c.final_summary();

    // Counted, not timed: cheap enough for the smoke test too.
    let strict_inv = invalidations_per_round(&strict);
    let deferred_inv = invalidations_per_round(&deferred);
    println!(
        "\ninvalidations per {ROUND} map+unmap pairs (unit's invalidation hook): strict \
         {strict_inv}, deferred (batch {BATCH}) {deferred_inv}"
    );
    // Which IOVAs the two CPUs get: per-CPU magazines keep the ones each freed last.
    let iovas = [0, 1].map(|t| {
        THREAD_CPU.with(|c| c.set(t));
        let addr = dma.map(buffer(t, 0), K4, Direction::ToDevice);
        let addr = addr.unwrap_or_else(|e| panic!("map: {e}"));
        dma.unmap(addr, K4)
            .unwrap_or_else(|e| panic!("unmap {addr:?}: {e}"));
        addr.0
    });
    println!(
        "4 KiB IOVAs of the DMA API after warm-up: CPU 0 {:#x}, CPU 1 {:#x}",
        iovas[0], iovas[1]
    );
    if quick {
        return;
    }

    let rates = medians(&cases, ROUNDS, SECS);
    table(
        &cases,
        &rates,
        ROUNDS,
        "the DMA API, operations per second",
        &load_before,
    );
    let r = |name: &str| rate_of(&cases, &rates, name);
    println!("\nsummary (ratios of the medians above):");
    println!(
        "dma 4K map+unmap, 1 thread: {:.2}x the foil's time (goal <= 0.7; {:.0} ns vs {:.0} ns)",
        r("4k/foil/1") / r("4k/dma/1"),
        1e9 / r("4k/dma/1"),
        1e9 / r("4k/foil/1"),
    );
    println!(
        "dma 4K map+unmap, 2 threads: {:.2}x one thread's throughput (goal >= 1.8); foil {:.2}x \
         (goal <= 1.2); arithmetic {:.2}x",
        r("4k/dma/2") / r("4k/dma/1"),
        r("4k/foil/2") / r("4k/foil/1"),
        r("machine/2") / r("machine/1"),
    );
    println!(
        "dma deferred (batch {BATCH}) vs strict unmap, {ROUND} map+unmap pairs: {deferred_inv} vs \
         {strict_inv} invalidations, {:.2}x the time ({:.0} us vs {:.0} us)",
        r("4k/strict") / r("4k/deferred32"),
        ROUND as f64 * 1e6 / r("4k/deferred32"),
        ROUND as f64 * 1e6 / r("4k/strict"),
    );
    for (size, len) in [("4k", K4), ("64k", K64)] {
        let gbs = |name: &str| r(&format!("copy/{size}/{name}")) * len as f64 / 1e9;
        let label = size.to_uppercase();
        println!(
            "dma bounce {label} to-device map+unmap: {:.2}x memcpy's throughput (goal >= 0.8; \
             {:.2} GB/s vs {:.2} GB/s)",
            gbs("bounce") / gbs("memcpy"),
            gbs("bounce"),
            gbs("memcpy"),
        );
        println!(
            "dma bounce {label} bidirectional map+unmap: {:.2}x two memcpys' throughput ({:.2} GB/s \
             vs {:.2} GB/s, buffer bytes)",
            gbs("bounce_bidir") / gbs("memcpy_x2"),
            gbs("bounce_bidir"),
            gbs("memcpy_x2"),
        );
        println!(
            "  (diagnosis) memcpy {label} walking a pool-sized region: {:.2}x memcpy to one place; \
             bounce {:.0} ns more than it per map+unmap",
            gbs("memcpy_spread") / gbs("memcpy"),
            1e9 / r(&format!("copy/{size}/bounce")) - 1e9 / r(&format!("copy/{size}/memcpy_spread")),
        );
    }
    println!(
        "  (diagnosis) the object model's Iommu::map+unmap alone (the foil goes through it, the \
         DMA API's domains do not): {:.0} ns, {:.0}% of the foil's pair; 2 threads in one 2 MiB \
         stripe {:.2}x, 1 GiB apart {:.2}x",
        1e9 / r("4k/iommu/1"),
        100.0 * r("4k/foil/1") / r("4k/iommu/1"),
        r("4k/iommu/2_one_stripe") / r("4k/iommu/1"),
        r("4k/iommu/2_far") / r("4k/iommu/1"),
    );
    let ns = |name: &str| 1e9 / r(name);
    println!(
        "  (diagnosis) the DMA API's pair {:.0} ns = IOVA alloc/free {:.0} + a BTreeMap record \
         insert/find/remove {:.0} + the unit's map/unmap and the rest {:.0}; IOVA allocator on 2 \
         threads {:.2}x",
        ns("4k/dma/1"),
        ns("4k/iova/1"),
        ns("4k/record/1"),
        ns("4k/dma/1") - ns("4k/iova/1") - ns("4k/record/1"),
        r("4k/iova/2") / r("4k/iova/1"),
    );
}
