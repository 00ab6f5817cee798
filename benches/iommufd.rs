//! The object model's data path on two CPUs: map + unmap pairs through [`Iommu::map`] and
//! [`Iommu::unmap`] (IOVA bookkeeping under the stripe locks, then the unit's page table written
//! without a lock), with a unit whose domains are real I/O page tables in host memory (VT-d
//! second-stage format; no invalidation: `arch/vtd/benches/iommufd.rs` adds the simulated unit's
//! queue). In one run:
//! - 1 thread;
//! - 2 threads, each on its own domain (they share only the read-only object tables);
//! - 2 threads on one domain: in stripes under different locks (1 GiB + 2 MiB apart), in stripes
//!   under one lock (exactly 1 GiB apart: 512 stripes, a multiple of the 64 locks), and in one
//!   stripe (same lock and same records);
//! - the foil: the same object model behind a `spin::Mutex` held around each call, 1 and 2
//!   threads, one domain, ranges 1 GiB + 2 MiB apart;
//! - pure arithmetic on 1 and 2 threads: what the machine gives two threads at that moment, to
//!   read the scaling against.
//!
//! 4 KiB pairs for every case, 2 MiB pairs for the main ones.
//!
//! ```text
//! cargo bench -p iommu --bench iommufd
//! ```
//!
//! Criterion reports the time per pair, all threads together (throughput: pairs per second).
//! After its report, the bench prints pairs per second of every case, each the median of five
//! rounds taken in turn so that every case sees the same noise, with the ratio to one thread.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{DomainId, Iommu, Layout, OwnerId, Region, Reserved, ReservedKind};
use iommu::pagetable::{Prot, VtdSecondStage};
use iommu::unit::host::TableUnit;
use iommu::unit::Stage;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Slots (pages or 2 MiB blocks) a thread cycles through: each pair maps and unmaps the next.
const SLOTS: u64 = 64;
/// Where 4 KiB work happens; 2 MiB work uses other gigabytes, so no leaf table is in its way.
const BASE_4K: u64 = 16 * G1;
const BASE_2M: u64 = 32 * G1;
/// Input address bits of every domain.
const IA_BITS: u32 = 48;
const OWNER: OwnerId = OwnerId(1);

/// A unit whose domains are VT-d second-stage tables in host memory and nothing else: no device
/// is attached, so unmap has nothing to invalidate and completes its gather at once.
type Model = Iommu<TableUnit<VtdSecondStage>>;

/// An object model with one table unit and `domains` domains of [`OWNER`], laid out as a
/// hypervisor would: the whole input range, less the x86 MSI doorbell.
fn model(domains: usize) -> (Model, Vec<DomainId>) {
    let mut io = Iommu::new();
    let unit = io.add_unit(TableUnit::vtd_second_stage());
    let windows = [Region::below_bits(IA_BITS)];
    let msi = [Reserved {
        region: Region {
            start: 0xfee0_0000,
            last: 0xfeef_ffff,
        },
        kind: ReservedKind::MsiDoorbell,
    }];
    let layout = Layout {
        windows: &windows,
        reserved: &msi,
    };
    let ids = (0..domains)
        .map(
            |_| match io.alloc_domain(OWNER, unit, Stage::Second, IA_BITS, &layout) {
                Ok(id) => id,
                Err(e) => panic!("alloc_domain: {e}"),
            },
        )
        .collect();
    (io, ids)
}

/// One map + unmap pair of `size` bytes at `iova`, identity-mapped.
#[inline(always)]
fn pair(io: &Model, dom: DomainId, iova: u64, size: u64) {
    let at = Iova::new(iova);
    if let Err(e) = io.map(OWNER, dom, at, PhysAddr::new(iova), size, Prot::READ_WRITE) {
        panic!("map {iova:#x}: {e}");
    }
    match io.unmap(OWNER, dom, at, size) {
        Ok(n) if n == size => {}
        other => panic!("unmap {iova:#x}: {other:?}"),
    }
}

/// The same pair through the foil: the lock is taken around each call.
#[inline(always)]
fn pair_locked(io: &spin::Mutex<Model>, dom: DomainId, iova: u64, size: u64) {
    let at = Iova::new(iova);
    if let Err(e) = io
        .lock()
        .map(OWNER, dom, at, PhysAddr::new(iova), size, Prot::READ_WRITE)
    {
        panic!("map {iova:#x}: {e}");
    }
    match io.lock().unmap(OWNER, dom, at, size) {
        Ok(n) if n == size => {}
        other => panic!("unmap {iova:#x}: {other:?}"),
    }
}

/// A dependent xorshift-multiply chain the compiler cannot fold, about as long as a 4 KiB pair:
/// work that needs nothing but a core.
#[inline(always)]
fn arithmetic(seed: u64) {
    let mut x = black_box(seed) | 1;
    for _ in 0..64 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    black_box(x);
}

/// Where one thread works: its domain and the first IOVA of its slots.
#[derive(Clone, Copy)]
struct Lane {
    dom: DomainId,
    base: u64,
}

/// What the threads of a case call.
#[derive(Clone, Copy)]
enum Path<'a> {
    Machine,
    Direct(&'a Model),
    Locked(&'a spin::Mutex<Model>),
}

struct Case<'a> {
    name: &'static str,
    /// The 1-thread case whose rate this one is compared with.
    baseline: &'static str,
    size: u64,
    path: Path<'a>,
    /// One per thread.
    lanes: Vec<Lane>,
}

impl Case<'_> {
    fn threads(&self) -> usize {
        self.lanes.len()
    }

    /// Pair `i` of thread `t`.
    #[inline(always)]
    fn step(&self, t: usize, i: u64) {
        let lane = self.lanes[t];
        let iova = lane.base + (i % SLOTS) * self.size;
        match self.path {
            Path::Machine => arithmetic(i ^ t as u64),
            Path::Direct(io) => pair(io, lane.dom, iova, self.size),
            Path::Locked(io) => pair_locked(io, lane.dom, iova, self.size),
        }
    }

    /// Every slot once, so that each thread's tables exist before the clock starts (page
    /// unmaps keep tables).
    fn warm_up(&self) {
        for t in 0..self.threads() {
            for i in 0..SLOTS {
                self.step(t, i);
            }
        }
    }

    /// `ops` pairs split over the threads, started together; the wall time until the last
    /// thread is done.
    fn run(&self, ops: u64) -> Duration {
        let n = self.threads() as u64;
        let start = Barrier::new(self.threads() + 1);
        std::thread::scope(|s| {
            for t in 0..self.threads() {
                let share = ops / n + u64::from((t as u64) < ops % n);
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    for i in 0..share {
                        self.step(t, i);
                    }
                });
            }
            start.wait();
            // Leaving the scope joins every thread.
            Instant::now()
        })
        .elapsed()
    }

    /// Pairs per second over about `secs` seconds.
    fn rate(&self, secs: f64) -> f64 {
        let mut ops = 1000u64;
        loop {
            let t = self.run(ops).as_secs_f64();
            if t >= secs || ops >= 1 << 32 {
                return ops as f64 / t;
            }
            // Aim past `secs`, but grow at most tenfold: one slow run must not make the next
            // huge.
            let aim = (ops as f64 * (secs / t.max(1e-6)) * 1.1).ceil() as u64;
            ops = aim.min(ops * 10);
        }
    }
}

fn lane(dom: DomainId, base: u64) -> Lane {
    Lane { dom, base }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let (io, doms) = model(2);
    let (a, b) = (doms[0], doms[1]);
    let (foil, foil_doms) = model(1);
    let foil = spin::Mutex::new(foil);
    let f = foil_doms[0];
    let lanes_4k = |second: u64| vec![lane(a, BASE_4K), lane(a, BASE_4K + second)];
    // Thread 1's 2 MiB slots start past thread 0's (SLOTS stripes), so no lock is shared.
    let far_2m = G1 + SLOTS * M2;
    let cases = [
        Case {
            name: "machine/1",
            baseline: "machine/1",
            size: K4,
            path: Path::Machine,
            lanes: vec![lane(a, 0)],
        },
        Case {
            name: "machine/2",
            baseline: "machine/1",
            size: K4,
            path: Path::Machine,
            lanes: vec![lane(a, 0); 2],
        },
        Case {
            name: "4k/one_thread",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE_4K)],
        },
        Case {
            name: "4k/two_domains",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE_4K), lane(b, BASE_4K + G1 + M2)],
        },
        Case {
            name: "4k/one_domain_other_locks",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Direct(&io),
            lanes: lanes_4k(G1 + M2),
        },
        Case {
            name: "4k/one_domain_one_lock",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Direct(&io),
            lanes: lanes_4k(G1),
        },
        Case {
            name: "4k/one_domain_one_stripe",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Direct(&io),
            lanes: lanes_4k(SLOTS * K4),
        },
        Case {
            name: "4k/spin_mutex/1",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Locked(&foil),
            lanes: vec![lane(f, BASE_4K)],
        },
        Case {
            name: "4k/spin_mutex/2",
            baseline: "4k/one_thread",
            size: K4,
            path: Path::Locked(&foil),
            lanes: vec![lane(f, BASE_4K), lane(f, BASE_4K + G1 + M2)],
        },
        Case {
            name: "2m/one_thread",
            baseline: "2m/one_thread",
            size: M2,
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE_2M)],
        },
        Case {
            name: "2m/two_domains",
            baseline: "2m/one_thread",
            size: M2,
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE_2M), lane(b, BASE_2M + far_2m)],
        },
        Case {
            name: "2m/one_domain_other_locks",
            baseline: "2m/one_thread",
            size: M2,
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE_2M), lane(a, BASE_2M + far_2m)],
        },
        Case {
            name: "2m/spin_mutex/2",
            baseline: "2m/one_thread",
            size: M2,
            path: Path::Locked(&foil),
            lanes: vec![lane(f, BASE_2M), lane(f, BASE_2M + far_2m)],
        },
    ];
    for case in &cases {
        case.warm_up();
    }

    let load_before = load();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("iommufd_map_unmap_pair");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    for case in &cases {
        group.bench_function(case.name, |b| b.iter_custom(|n| case.run(n)));
    }
    group.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let mut rates = vec![Vec::new(); cases.len()];
        for _ in 0..5 {
            for (case, r) in cases.iter().zip(&mut rates) {
                r.push(case.rate(0.3));
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        let rate_of = |name: &str| {
            cases
                .iter()
                .position(|c| c.name == name)
                .map_or(f64::NAN, |i| rates[i])
        };
        println!(
            "\nmap + unmap pairs through Iommu (median of 5 rounds; load average {load_before} \
             before criterion, {} now):",
            load()
        );
        println!(
            "  {:<28} {:>7} {:>14} {:>9}",
            "case", "threads", "pairs/s", "vs 1 thr"
        );
        for (case, rate) in cases.iter().zip(&rates) {
            println!(
                "  {:<28} {:>7} {:>14.0} {:>8.2}x",
                case.name,
                case.threads(),
                rate,
                rate / rate_of(case.baseline)
            );
        }
        let mutex = rate_of("4k/spin_mutex/2") / rate_of("4k/spin_mutex/1");
        println!("  4k/spin_mutex/2 vs spin_mutex/1: {mutex:.2}x");
    }
}
