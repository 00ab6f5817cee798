//! End to end through the simulated unit (`iommu_vtd::sim`): map + unmap pairs of 4 KiB through
//! the object model, `Iommu<&VtdUnit>`, on a scalable-mode unit with an invalidation queue. Each
//! unmap writes the second-stage table, queues a page-selective IOTLB invalidation and a wait
//! descriptor, and spins until the simulator's responder thread has consumed them and written
//! the wait's status: the whole data path a hypervisor's unmap takes, with a thread playing the
//! hardware. In one run:
//! - 1 thread;
//! - 2 threads, each on its own domain (one unit, so one queue);
//! - 2 threads on one domain, 1 GiB + 2 MiB apart (stripes under different locks);
//! - the foil: the object model behind a `spin::Mutex` held around each call, 1 and 2 threads;
//! - pure arithmetic on 1 and 2 threads, with the responder running: what the machine gives two
//!   threads while the simulated hardware takes its share.
//!
//! The responder polls the registers on a thread of its own: with `n` benchmark threads,
//! `n + 1` threads want a core. On a 2-core machine one benchmark thread already fills it.
//!
//! ```text
//! cargo bench -p iommu-vtd --bench iommufd
//! ```
//!
//! Criterion reports the time per pair, all threads together (throughput: pairs per second).
//! After its report, the bench prints pairs per second of every case, each the median of five
//! rounds taken in turn so that every case sees the same noise, the ratio to one thread, and
//! the invalidation descriptors the queue carried per unmap.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::iommufd::{DomainId, Iommu, Layout, OwnerId, Region, Reserved, ReservedKind};
use iommu::pagetable::Prot;
use iommu::unit::Stage;
use iommu_vtd::sim::{SimulatedUnit, CAP, ECAP_SCALABLE};
use iommu_vtd::{Mode, QueueSize, VtdUnit};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Pages a thread cycles through: each pair maps and unmaps the next.
const SLOTS: u64 = 64;
const BASE: u64 = 16 * G1;
const IA_BITS: u32 = 48;
const OWNER: OwnerId = OwnerId(1);

type Unit<'a> = VtdUnit<'a, &'a HostHal>;
type Model<'a> = Iommu<&'a Unit<'a>>;

/// An object model over `unit` with `domains` second-stage domains of [`OWNER`]: the whole input
/// range, less the x86 MSI doorbell.
fn model<'a>(unit: &'a Unit<'a>, domains: usize) -> (Model<'a>, Vec<DomainId>) {
    let mut io = Iommu::new();
    let id = io.add_unit(unit);
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
            |_| match io.alloc_domain(OWNER, id, Stage::Second, IA_BITS, &layout) {
                Ok(d) => d,
                Err(e) => panic!("alloc_domain: {e}"),
            },
        )
        .collect();
    (io, ids)
}

#[inline(always)]
fn pair(io: &Model<'_>, dom: DomainId, iova: u64) {
    let at = Iova::new(iova);
    if let Err(e) = io.map(OWNER, dom, at, PhysAddr::new(iova), K4, Prot::READ_WRITE) {
        panic!("map {iova:#x}: {e}");
    }
    match io.unmap(OWNER, dom, at, K4) {
        Ok(K4) => {}
        other => panic!("unmap {iova:#x}: {other:?}"),
    }
}

/// The same pair through the foil: the lock is taken around each call.
#[inline(always)]
fn pair_locked(io: &spin::Mutex<Model<'_>>, dom: DomainId, iova: u64) {
    let at = Iova::new(iova);
    if let Err(e) = io
        .lock()
        .map(OWNER, dom, at, PhysAddr::new(iova), K4, Prot::READ_WRITE)
    {
        panic!("map {iova:#x}: {e}");
    }
    match io.lock().unmap(OWNER, dom, at, K4) {
        Ok(K4) => {}
        other => panic!("unmap {iova:#x}: {other:?}"),
    }
}

/// A dependent xorshift-multiply chain the compiler cannot fold: work that needs only a core.
#[inline(always)]
fn arithmetic(seed: u64) {
    let mut x = black_box(seed) | 1;
    for _ in 0..64 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    black_box(x);
}

/// Where one thread works: its domain and the first IOVA of its pages.
#[derive(Clone, Copy)]
struct Lane {
    dom: DomainId,
    base: u64,
}

#[derive(Clone, Copy)]
enum Path<'m, 'a> {
    Machine,
    Direct(&'m Model<'a>),
    Locked(&'m spin::Mutex<Model<'a>>),
}

struct Case<'m, 'a> {
    name: &'static str,
    /// The 1-thread case whose rate this one is compared with.
    baseline: &'static str,
    path: Path<'m, 'a>,
    /// One per thread.
    lanes: Vec<Lane>,
}

impl Case<'_, '_> {
    fn threads(&self) -> usize {
        self.lanes.len()
    }

    #[inline(always)]
    fn step(&self, t: usize, i: u64) {
        let lane = self.lanes[t];
        let iova = lane.base + (i % SLOTS) * K4;
        match self.path {
            Path::Machine => arithmetic(i ^ t as u64),
            Path::Direct(io) => pair(io, lane.dom, iova),
            Path::Locked(io) => pair_locked(io, lane.dom, iova),
        }
    }

    /// Every page once, so that each thread's tables exist before the clock starts.
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
        let mut ops = 100u64;
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
    let sim = SimulatedUnit::without_log(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = match VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE) {
        Ok(u) => u,
        Err(e) => panic!("bring-up: {e}"),
    };
    let (io, doms) = model(&unit, 2);
    let (a, b) = (doms[0], doms[1]);
    let (foil, foil_doms) = model(&unit, 1);
    let foil = spin::Mutex::new(foil);
    let f = foil_doms[0];
    let far = BASE + G1 + M2;
    let cases = [
        Case {
            name: "machine/1",
            baseline: "machine/1",
            path: Path::Machine,
            lanes: vec![lane(a, 0)],
        },
        Case {
            name: "machine/2",
            baseline: "machine/1",
            path: Path::Machine,
            lanes: vec![lane(a, 0); 2],
        },
        Case {
            name: "4k/one_thread",
            baseline: "4k/one_thread",
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE)],
        },
        Case {
            name: "4k/two_domains",
            baseline: "4k/one_thread",
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE), lane(b, far)],
        },
        Case {
            name: "4k/one_domain_other_locks",
            baseline: "4k/one_thread",
            path: Path::Direct(&io),
            lanes: vec![lane(a, BASE), lane(a, far)],
        },
        Case {
            name: "4k/spin_mutex/1",
            baseline: "4k/one_thread",
            path: Path::Locked(&foil),
            lanes: vec![lane(f, BASE)],
        },
        Case {
            name: "4k/spin_mutex/2",
            baseline: "4k/one_thread",
            path: Path::Locked(&foil),
            lanes: vec![lane(f, BASE), lane(f, far)],
        },
    ];
    for case in &cases {
        case.warm_up();
    }

    let load_before = load();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("vtd_sim_map_unmap_invalidate");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in &cases {
        group.bench_function(case.name, |b| b.iter_custom(|n| case.run(n)));
    }
    group.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let (descriptors, batches) = unit.invalidations();
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
        let (d2, b2) = unit.invalidations();
        println!(
            "\nmap + unmap + IOTLB invalidation through the simulated unit's queue (median of 5 \
             rounds; load average {load_before} before criterion, {} now):",
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
        println!(
            "  queue: {:.2} descriptors per batch (waits included) during the summary",
            (d2 - descriptors) as f64 / (b2 - batches).max(1) as f64
        );
    }
}
