//! Figures, not a proof: per-CPU operation counts of the unit's data path on 1, 2 and 4 CPUs
//! (up to the boot's count), lock-free against the same unit behind one lock, printed as
//! `figure:` lines. Nothing here asserts a speed-up: TCG timing is not hardware timing.

use super::{bring_up, SharedUnit};
use crate::dma::{DmaBuffer, Rig};
use crate::hal::HAL;
use crate::Machine;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, TranslationUnit, UnitError};
use iommu_boot::smp::{self, CpuId};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println};

/// How long each CPU repeats its operation per run, on its own counter: a fixed time rather than
/// a fixed count, so that a configuration that is slow under emulation (an in-order queue whose
/// producers wait for each other while their vCPUs share fewer host cores) shows as a low figure
/// instead of holding the boot past its timeout.
const WINDOW_US: u64 = 300_000;
/// Untimed operations each CPU does first: QEMU translates guest code on its first run, and
/// that should not count.
const WARM_UP_OPS: u64 = 16;
/// The measured IOVAs lie in this 1 GiB region: CPU `c` uses the 2 MiB slot `c`, cycling through
/// its first [`PAGES_PER_SLOT`] pages (disjoint for up to 512 CPUs).
const FIGURES_BASE: u64 = 1 << 30;
const SLOT: u64 = 0x20_0000;
const PAGES_PER_SLOT: u64 = 8;

/// What each CPU repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Map a 4 KiB page, unmap it (the IOTLB invalidation queued and waited for).
    MapUnmap,
    /// `flush` of one 4 KiB page: one queue submission and its wait.
    Flush,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Self::MapUnmap => "map+unmap",
            Self::Flush => "flush",
        }
    }
}

/// How the CPUs reach the unit.
enum Driver<U: 'static> {
    /// Straight through: the unit's lock-free table and queue.
    LockFree(&'static U),
    /// The classic locked driver: the same unit behind one lock, held around each call (a map;
    /// an unmap with its invalidation and wait; a flush and its wait).
    Locked(spin::Mutex<&'static U>),
}

impl<U> Driver<U> {
    fn call<R>(&self, f: impl FnOnce(&U) -> R) -> R {
        match self {
            Self::LockFree(unit) => f(unit),
            Self::Locked(locked) => {
                let unit = locked.lock();
                f(*unit)
            }
        }
    }
}

/// One CPU's part of a run. Relaxed: written by that CPU before it leaves the closure and read
/// by the boot CPU after the runner collected its verdict (the runner's Release/Acquire).
struct Tally {
    done: AtomicU64,
    elapsed_us: AtomicU64,
}

impl Tally {
    const fn new() -> Self {
        Self {
            done: AtomicU64::new(0),
            elapsed_us: AtomicU64::new(0),
        }
    }
}

/// The figures of one run: operations per second of each CPU by its own counter, and of all of
/// them together over the run's span: on the boot CPU's counter from its start, right after the
/// runner's barrier, until every measured CPU had finished (or the longest CPU's own time, if
/// longer: a CPU may leave the barrier a little before the boot CPU).
struct Rates {
    per_cpu: Vec<u64>,
    total: u64,
}

impl Rates {
    fn new(done: &[u64], elapsed_us: &[u64], span_us: u64) -> Self {
        let rate = |ops: u64, us: u64| ops.saturating_mul(1_000_000) / us.max(1);
        Self {
            per_cpu: done
                .iter()
                .zip(elapsed_us)
                .map(|(&d, &us)| rate(d, us))
                .collect(),
            total: rate(done.iter().sum(), span_us),
        }
    }

    /// `total ops/s (per cpu: mean, min..max)`.
    fn show(&self) -> String {
        let min = self.per_cpu.iter().copied().min().unwrap_or(0);
        let max = self.per_cpu.iter().copied().max().unwrap_or(0);
        let mean = self.per_cpu.iter().sum::<u64>() / (self.per_cpu.len() as u64).max(1);
        format!("{} ops/s (per cpu {mean}, {min}..{max})", self.total)
    }
}

fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        return String::from("n/a");
    }
    format!("{:.2}", a as f64 / b as f64)
}

/// 1, 2, 4, ... CPUs below `n`, then `n` itself.
fn cpu_counts(n: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = core::iter::successors(Some(1), |k| Some(k * 2))
        .take_while(|&k| k < n)
        .collect();
    counts.push(n);
    counts
}

/// The machine in a few words, for the figure lines.
fn label<U: TranslationUnit>(m: &Machine, r: &Rig<'_, U>) -> String {
    match (m.cmdline.get("vtd.mode"), m.cmdline.get("smmu.stage")) {
        (Some(mode), _) => format!("vtd-{mode} {}", r.stage),
        (_, Some(stage)) => format!("smmuv3-stage={stage} {}", r.stage),
        _ => format!("{}", r.stage),
    }
}

/// Per-CPU operation counts on 1, 2 and 4 CPUs (up to the boot's count) of map+unmap pairs of
/// a 4 KiB page (each unmap invalidating through the unit's queue and waiting) and of queue
/// flushes, every CPU on its own range of ONE domain, each against the same work behind one
/// `spin::Mutex`; printed as `figure:` lines. Fails on any refused operation, a CPU that did
/// not do all its operations or whose counter did not advance, or a table frame not returned;
/// never on a figure.
pub fn per_cpu_figures_one_two_four_cpus<U>(m: &Machine, r: &Rig<'static, U>) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    let started_us = smp::now_us();
    let edu = r.edus.first().ok_or_else(|| fail("needs an edu device"))?;
    let dev = (r.device_id)(edu);
    let page = DmaBuffer::new(0x5a)?;
    // The device's own configuration (an SMMU's level-2 stream table) stays for the boot;
    // counted from here, every frame is the domain's.
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    let frames_before = HAL.live_frames();
    let domain = Arc::new(r.domain_with(&[])?);
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    let measured = measure_all(m, r, n, &domain, &page);
    let torn_down = (|| {
        r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
        let domain = Arc::try_unwrap(domain).map_err(|_| fail("a CPU still holds the domain"))?;
        r.unit.destroy_domain(domain).map_err(|(_, e)| fail(e))
    })();
    match (measured, torn_down) {
        (Err(Failure::Failed(why)), Err(then)) => {
            return Err(fail(format!("{why}; then tearing down: {then}")))
        }
        (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(())) => {}
    }
    ensure_eq!(
        HAL.live_frames(),
        frames_before,
        "table frames after teardown"
    );
    println!(
        "figure: {} took {} ms (counter time, both works, every CPU count, both drivers)",
        label(m, r),
        smp::now_us().saturating_sub(started_us) / 1000
    );
    Ok(())
}

/// Every run of both works on each CPU count, both drivers, and their figure lines.
fn measure_all<U>(
    m: &Machine,
    r: &Rig<'static, U>,
    n: usize,
    domain: &Arc<U::Domain>,
    page: &DmaBuffer,
) -> TestResult
where
    U: SharedUnit,
{
    // Every CPU's tables exist before the clocks start: a 4 KiB unmap never frees a table, so
    // the runs time entries and invalidations, not table allocation.
    for c in 0..n as u64 {
        let iova = FIGURES_BASE + c * SLOT;
        r.unit
            .map(
                domain,
                Iova::new(iova),
                page.phys(),
                0x1000,
                Prot::READ_WRITE,
            )
            .map_err(fail)?;
        r.unit
            .unmap(domain, Iova::new(iova), 0x1000)
            .map_err(fail)?;
    }
    let label = label(m, r);
    println!();
    println!(
        "figure: {label} cpus={n} each run {WINDOW_US} us per CPU; \
         timed by each CPU's own counter; emulated (QEMU TCG), not hardware timing"
    );
    for work in [Work::MapUnmap, Work::Flush] {
        let mut single: Option<(u64, u64)> = None;
        for k in cpu_counts(n) {
            let lock_free = run(domain, page.phys(), work, Driver::LockFree(r.unit), k)?;
            let locked = run(
                domain,
                page.phys(),
                work,
                Driver::Locked(spin::Mutex::new(r.unit)),
                k,
            )?;
            let (one_lf, one_mx) = *single.get_or_insert((lock_free.total, locked.total));
            println!(
                "figure: {label} {} cpus={k} lockfree={} mutex={} lockfree/mutex={} \
                 vs-1-cpu: lockfree={} mutex={}",
                work.name(),
                lock_free.show(),
                locked.show(),
                ratio(lock_free.total, locked.total),
                ratio(lock_free.total, one_lf),
                ratio(locked.total, one_mx),
            );
        }
    }
    Ok(())
}

/// One timed run: CPUs `0..k` each repeat `work` through `driver` for [`WINDOW_US`] (after
/// [`WARM_UP_OPS`] untimed operations), the others nothing.
fn run<U>(
    domain: &Arc<U::Domain>,
    phys: PhysAddr,
    work: Work,
    driver: Driver<U>,
    k: usize,
) -> Result<Rates, Failure>
where
    U: SharedUnit,
{
    let tallies = Arc::new([const { Tally::new() }; smp::MAX_CPUS]);
    // CPUs of the run that finished (or gave up) their timed operations. Release by each,
    // Acquire by the boot CPU, which waits for all of them before it reads the run's end.
    let finished = Arc::new(AtomicUsize::new(0));
    // The run's span on the boot CPU's counter. Relaxed: read after the runner's verdict.
    let span_us = Arc::new(AtomicU64::new(0));
    let (shared, tallies2, finished2, span_us2) = (
        domain.clone(),
        tallies.clone(),
        finished.clone(),
        span_us.clone(),
    );
    smp::on_every_cpu(move |cpu| {
        let CpuId(c) = cpu;
        if c >= k {
            return Ok(());
        }
        let err = |what: &str, iova: u64, e: UnitError| format!("{cpu}: {what} {iova:#x}: {e}");
        let slot = FIGURES_BASE + c as u64 * SLOT;
        let op = |i: u64| {
            let iova = slot + (i % PAGES_PER_SLOT) * 0x1000;
            match work {
                Work::MapUnmap => {
                    driver
                        .call(|u| u.map(&shared, Iova::new(iova), phys, 0x1000, Prot::READ_WRITE))
                        .map_err(|e| err("map", iova, e))?;
                    match driver.call(|u| u.unmap(&shared, Iova::new(iova), 0x1000)) {
                        Ok(0x1000) => Ok(()),
                        Ok(other) => Err(format!("{cpu}: unmap {iova:#x} removed {other:#x}")),
                        Err(e) => Err(err("unmap", iova, e)),
                    }
                }
                Work::Flush => driver
                    .call(|u| u.flush(&shared, Iova::new(iova), 0x1000))
                    .map_err(|e| err("flush", iova, e)),
            }
        };
        let timed = (|| {
            (0..WARM_UP_OPS).try_for_each(op)?;
            let start = smp::now_us();
            let mut done = 0;
            let mut end = start;
            while end - start < WINDOW_US {
                op(done)?;
                done += 1;
                end = smp::now_us();
            }
            let tally = &tallies2[c];
            tally.done.store(done, Ordering::Relaxed);
            tally
                .elapsed_us
                .store(end.saturating_sub(start), Ordering::Relaxed);
            Ok::<_, String>(start)
        })();
        // Counted out even on failure, so the boot CPU does not wait for a CPU that stopped.
        finished2.fetch_add(1, Ordering::Release);
        let start = timed?;
        if c == 0 {
            smp::wait_until("every measured CPU to finish", smp::RUN_TIMEOUT_US, || {
                finished2.load(Ordering::Acquire) >= k
            })
            .map_err(|e| format!("{cpu}: {e}"))?;
            span_us2.store(smp::now_us().saturating_sub(start), Ordering::Relaxed);
        }
        Ok(())
    })
    .map_err(fail)?;
    let mut elapsed = Vec::with_capacity(k);
    let mut dones = Vec::with_capacity(k);
    for (c, tally) in tallies.iter().enumerate() {
        let done = tally.done.load(Ordering::Relaxed);
        let us = tally.elapsed_us.load(Ordering::Relaxed);
        if c < k {
            ensure!(done > 0, "no {} done by cpu {c}", work.name());
            ensure!(
                us >= WINDOW_US,
                "cpu {c} stopped after {us} us of its {WINDOW_US} us window"
            );
            elapsed.push(us);
            dones.push(done);
        } else {
            ensure_eq!(
                done,
                0,
                "operations done by cpu {c}, outside the {k} measured"
            );
        }
    }
    // The boot CPU's span holds its own time; another CPU may have left the barrier a little
    // earlier, and its own time then counts from there.
    let span = span_us.load(Ordering::Relaxed);
    ensure!(
        elapsed.first().is_some_and(|&us| us <= span),
        "cpu 0's time {elapsed:?} us beyond its span of the run, {span} us"
    );
    let span = elapsed.iter().copied().fold(span, u64::max);
    Ok(Rates::new(&dones, &elapsed, span))
}
