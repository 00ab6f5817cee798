//! The harness of the object model's map + unmap benchmarks (feature `host-hal`; the benches of
//! `iommu` and `iommu-vtd` run it over different units, the DMA API's bench over its own
//! calls): cases of one or two threads, each cycling map + unmap pairs through [`Iommu`]
//! directly, through a `spin::Mutex` foil, through whatever a bench passes as
//! [`Path::Custom`], or doing plain arithmetic (what the machine gives two threads), timed for
//! criterion and summarised as pairs per second with the ratio to one thread.

extern crate std;

use std::hint::black_box;
use std::println;
use std::string::String;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::{DomainId, Iommu, Layout, OwnerId, Region, Reserved, Result, UnitId};
use crate::addr::{Iova, PhysAddr};
use crate::pagetable::Prot;
use crate::unit::{Stage, TranslationUnit};

/// The owner of every benchmark domain.
pub const OWNER: OwnerId = OwnerId(1);
/// Slots (pages or blocks) a thread cycles through: each pair maps and unmaps the next.
pub const SLOTS: u64 = 64;

/// An object model over `unit` with `domains` second-stage domains of [`OWNER`], laid out as a
/// hypervisor would: the whole `ia_bits` input range, less the x86 MSI doorbell.
pub fn model<U: TranslationUnit>(
    unit: U,
    domains: usize,
    ia_bits: u32,
) -> (Iommu<U>, Vec<DomainId>) {
    model_of(unit, domains, ia_bits, Iommu::alloc_domain)
}

/// [`model`] with DMA API domains ([`Iommu::alloc_dma_domain`]) instead.
pub fn dma_model<U: TranslationUnit>(
    unit: U,
    domains: usize,
    ia_bits: u32,
) -> (Iommu<U>, Vec<DomainId>) {
    model_of(unit, domains, ia_bits, Iommu::alloc_dma_domain)
}

type Alloc<U> = fn(&mut Iommu<U>, OwnerId, UnitId, Stage, u32, &Layout<'_>) -> Result<DomainId>;

fn model_of<U: TranslationUnit>(
    unit: U,
    domains: usize,
    ia_bits: u32,
    alloc: Alloc<U>,
) -> (Iommu<U>, Vec<DomainId>) {
    let mut io = Iommu::new();
    let id = io.add_unit(unit);
    let windows = [Region::below_bits(ia_bits)];
    let msi = [Reserved::X86_MSI];
    let layout = Layout {
        windows: &windows,
        reserved: &msi,
    };
    let ids = (0..domains)
        .map(
            |_| match alloc(&mut io, OWNER, id, Stage::Second, ia_bits, &layout) {
                Ok(d) => d,
                Err(e) => panic!("domain allocation: {e}"),
            },
        )
        .collect();
    (io, ids)
}

/// One map + unmap pair of `size` bytes at `iova`, identity-mapped.
#[inline(always)]
fn pair<U: TranslationUnit>(io: &Iommu<U>, dom: DomainId, iova: u64, size: u64) {
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
fn pair_locked<U: TranslationUnit>(
    io: &spin::Mutex<Iommu<U>>,
    dom: DomainId,
    iova: u64,
    size: u64,
) {
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
pub(crate) fn arithmetic(seed: u64) {
    let mut x = black_box(seed) | 1;
    for _ in 0..64 {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }
    black_box(x);
}

/// Where one thread works: its domain and the first IOVA of its slots.
#[derive(Clone, Copy, Debug)]
pub struct Lane {
    /// The domain it maps into.
    pub dom: DomainId,
    /// The IOVA of its first slot.
    pub base: u64,
}

/// A [`Lane`].
pub fn lane(dom: DomainId, base: u64) -> Lane {
    Lane { dom, base }
}

/// What the threads of a case call.
pub enum Path<'m, U: TranslationUnit> {
    /// Arithmetic only.
    Machine,
    /// The object model, shared.
    Direct(&'m Iommu<U>),
    /// The object model behind one lock held around each call.
    Locked(&'m spin::Mutex<Iommu<U>>),
    /// Anything else, called with the thread's index and the pair's number in that thread.
    Custom(&'m (dyn Fn(usize, u64) + Sync)),
}

impl<U: TranslationUnit> Clone for Path<'_, U> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<U: TranslationUnit> Copy for Path<'_, U> {}

/// One benchmark case: threads (one per lane) doing pairs of `size` bytes through `path`.
pub struct Case<'m, U: TranslationUnit> {
    /// Its name in criterion's report and in the summary.
    pub name: &'static str,
    /// The 1-thread case whose rate this one is compared with.
    pub baseline: &'static str,
    /// Bytes of each pair.
    pub size: u64,
    /// What the threads call.
    pub path: Path<'m, U>,
    /// One per thread.
    pub lanes: Vec<Lane>,
}

impl<U: TranslationUnit> Case<'_, U>
where
    Iommu<U>: Send + Sync,
{
    /// How many threads the case runs.
    pub fn threads(&self) -> usize {
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
            Path::Custom(f) => f(t, i),
        }
    }

    /// Every slot once, so that each thread's tables (and the table frames its unmaps free into
    /// the domain's cache) exist before the clock starts.
    pub fn warm_up(&self) {
        for t in 0..self.threads() {
            for i in 0..SLOTS {
                self.step(t, i);
            }
        }
    }

    /// `ops` pairs split over the threads, started together; the wall time until the last
    /// thread is done (criterion's `iter_custom`).
    pub fn run(&self, ops: u64) -> Duration {
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
    pub fn rate(&self, secs: f64) -> f64 {
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

/// The load average, to print next to the figures.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU time the host took from this machine's virtual CPUs (steal time, `/proc/stat`) since
/// a [`Steal::now`]: a load that a virtual machine's load average does not show.
#[derive(Debug, Clone, Copy)]
pub struct Steal {
    steal: u64,
    total: u64,
}

impl Steal {
    /// The counters now (zero where `/proc/stat` cannot be read).
    pub fn now() -> Self {
        let line = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = line
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Self {
            // user nice system idle iowait irq softirq steal ...
            steal: ticks.get(7).copied().unwrap_or(0),
            total: ticks.iter().take(8).sum(),
        }
    }

    /// Percent of all CPU time stolen since `self`, as text ("unknown" without counters).
    pub fn since(self) -> String {
        let now = Self::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 {
            return "unknown".into();
        }
        let stolen = now.steal.saturating_sub(self.steal);
        std::format!("{:.1}%", 100.0 * stolen as f64 / total as f64)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The pairs per second of every case, each the median of `rounds` rounds of about `secs`
/// seconds taken in turn, so that every case sees the same noise.
pub fn medians<U: TranslationUnit>(cases: &[Case<'_, U>], rounds: usize, secs: f64) -> Vec<f64>
where
    Iommu<U>: Send + Sync,
{
    let mut rates = std::vec![Vec::new(); cases.len()];
    for _ in 0..rounds {
        for (case, r) in cases.iter().zip(&mut rates) {
            r.push(case.rate(secs));
        }
    }
    rates.into_iter().map(median).collect()
}

/// The rate of the case named `name` in `rates` ([`medians`] of `cases`); NaN if none is.
pub fn rate_of<U: TranslationUnit>(cases: &[Case<'_, U>], rates: &[f64], name: &str) -> f64 {
    cases
        .iter()
        .position(|c| c.name == name)
        .map_or(f64::NAN, |i| rates[i])
}

/// Prints `heading` and `rates` ([`medians`] of `cases`, `rounds` rounds), each with the ratio
/// to its case's baseline. `load_before` is the load average before criterion ran.
pub fn table<U: TranslationUnit>(
    cases: &[Case<'_, U>],
    rates: &[f64],
    rounds: usize,
    heading: &str,
    load_before: &str,
) where
    Iommu<U>: Send + Sync,
{
    println!(
        "\n{heading} (median of {rounds} rounds; load average {load_before} before criterion, {} \
         now):",
        load()
    );
    println!(
        "  {:<28} {:>7} {:>14} {:>9}",
        "case", "threads", "pairs/s", "vs base"
    );
    for (case, rate) in cases.iter().zip(rates) {
        println!(
            "  {:<28} {:>7} {:>14.0} {:>8.2}x",
            case.name,
            case.threads(),
            rate,
            rate / rate_of(cases, rates, case.baseline)
        );
    }
}

/// Prints `heading` and the pairs per second of every case, each the median of five rounds of
/// about 0.3 s taken in turn (so that every case sees the same noise), with the ratio to its
/// baseline and the foil's two-thread ratio. `load_before` is the load average before
/// criterion ran.
pub fn summary<U: TranslationUnit>(cases: &[Case<'_, U>], heading: &str, load_before: &str)
where
    Iommu<U>: Send + Sync,
{
    let rates = medians(cases, 5, 0.3);
    table(cases, &rates, 5, heading, load_before);
    let rate = |name| rate_of(cases, &rates, name);
    let mutex = rate("4k/spin_mutex/2") / rate("4k/spin_mutex/1");
    println!("  4k/spin_mutex/2 vs spin_mutex/1: {mutex:.2}x");
}

/// The 4 KiB cases every iommufd bench runs, in this order: arithmetic on 1 and 2 threads;
/// pairs on 1 thread; 2 threads on domains `doms[0]` and `doms[1]`; 2 threads on one domain,
/// 1 GiB + 2 MiB apart (stripes under different locks); the foil (on `foil_dom`) on 1 and 2
/// threads. Thread 0 works from `base`, thread 1 from `base` + 1 GiB + 2 MiB.
pub fn cases_4k<'m, U: TranslationUnit>(
    io: &'m Iommu<U>,
    foil: &'m spin::Mutex<Iommu<U>>,
    doms: [DomainId; 2],
    foil_dom: DomainId,
    base: u64,
) -> Vec<Case<'m, U>> {
    const K4: u64 = 1 << 12;
    let far = base + (1 << 30) + (2 << 20);
    let [a, b] = doms;
    let case = |name, baseline, path, lanes| Case {
        name,
        baseline,
        size: K4,
        path,
        lanes,
    };
    std::vec![
        case(
            "machine/1",
            "machine/1",
            Path::Machine,
            std::vec![lane(a, 0)]
        ),
        case(
            "machine/2",
            "machine/1",
            Path::Machine,
            std::vec![lane(a, 0); 2]
        ),
        case(
            "4k/one_thread",
            "4k/one_thread",
            Path::Direct(io),
            std::vec![lane(a, base)]
        ),
        case(
            "4k/two_domains",
            "4k/one_thread",
            Path::Direct(io),
            std::vec![lane(a, base), lane(b, far)],
        ),
        case(
            "4k/one_domain_other_locks",
            "4k/one_thread",
            Path::Direct(io),
            std::vec![lane(a, base), lane(a, far)],
        ),
        case(
            "4k/spin_mutex/1",
            "4k/one_thread",
            Path::Locked(foil),
            std::vec![lane(foil_dom, base)],
        ),
        case(
            "4k/spin_mutex/2",
            "4k/one_thread",
            Path::Locked(foil),
            std::vec![lane(foil_dom, base), lane(foil_dom, far)],
        ),
    ]
}
