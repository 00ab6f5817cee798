//! Invalidation queue throughput: submit (4 page-selective IOTLB descriptors + a wait) and wait
//! for the wait's status write, from 1 and 2 producer threads, for the lock-free queue and for
//! the same queue behind a lock held across submission and wait (the classic locked design),
//! with a test-and-set `spin::Mutex` and with a fair `spin::mutex::TicketMutex`.
//!
//! The simulated unit (`iommu_vtd::sim::queue`) is consumed by the producers themselves
//! ([`SimUnit::self_draining`]: every IQH or FSTS read first executes what is published), as
//! hardware drains the queue while the CPU polls. No responder thread: 2 producers use exactly
//! 2 cores. The queue reads FSTS on every poll of a wait (`fault_check_interval` 1, not the
//! driver's 64): here the unit only moves when a register is read, and with 64 it would move
//! once per 64 polls, a latency hardware does not add.
//!
//! `cargo bench -p iommu-vtd --features sim --bench qi` prints, after criterion's report,
//! operations per second of every design at 1 and 2 producers, how often 2 producers take turns,
//! and the lock-free/lock ratios at 2 (harness: `iommu::sync::bench`, whose notes say why the
//! fair lock is the one the claim is against), twice: with the simulated unit as above, whose
//! wait descriptor takes no time, and with a *simulated* wait latency of [`WAIT_LATENCY`]
//! ([`SimUnit::self_draining_with_latency`]: a wait descriptor completes only once that much
//! host time has passed since the IQT write that published it; waits published together
//! complete together). Without latency the locked design loses nothing by holding its lock
//! while the unit works; with it, that is what it pays. `-- --test` runs every case once, and
//! the summaries briefly.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use iommu::addr::Iova;
use iommu::sync::bench::{summary_from_args, Design, Rig};
use iommu_vtd::descriptor::{Descriptor, Drain, IotlbScope, PageBlock};
use iommu_vtd::qi::{DescriptorWidth, InvalidationQueue, QueueConfig};
use iommu_vtd::sim::queue::{SimMemory, SimUnit, STATUS_PHYS};
use iommu_vtd::{Did, QiError, QueueSize};

/// Descriptors per submission (before its wait): a typical small invalidation.
const BATCH: u64 = 4;
/// The simulated wait latency of the second summary: the order of an invalidation wait on a
/// real unit, which completes after the IOTLB invalidations ahead of it, about a microsecond.
const WAIT_LATENCY: Duration = Duration::from_micros(1);

fn main() {
    bench(None);
    bench(Some(WAIT_LATENCY));
}

/// Criterion's cases (without latency only) and the summary, over a fresh unit whose wait
/// descriptor takes `latency`.
fn bench(latency: Option<Duration>) {
    // Scalable mode's 256-bit descriptors: one page holds 128.
    let width = DescriptorWidth::Bits256;
    let size = QueueSize::ONE_PAGE;
    let entries = size.entries(width);
    let unit = SimUnit::new(width, entries as u64, STATUS_PHYS);
    let mem = SimMemory::new(entries, width);
    let config = QueueConfig {
        width,
        size,
        poll_budget: iommu::poll::DEFAULT_POLL_BUDGET,
        fault_check_interval: 1,
    };
    let regs = match latency {
        None => unit.self_draining(&mem),
        Some(l) => unit.self_draining_with_latency(&mem, l),
    };
    let queue = match InvalidationQueue::new(regs, mem.memory(), config) {
        Ok(q) => q,
        Err(e) => panic!("{e}"),
    };
    let batch: Vec<Descriptor> = (0..BATCH)
        .map(|i| Descriptor::Iotlb {
            scope: IotlbScope::Pages {
                domain: Did::new(1),
                block: PageBlock::page(Iova::new(0x10_0000 + (i << 12))),
                leaf_only: true,
            },
            drain: Drain::default(),
        })
        .collect();
    let rig = Rig::new(|| queue.submit_and_wait(std::hint::black_box(&batch).iter().copied()));
    let run = |design, producers, iters| -> Duration {
        match rig.run(design, producers, iters) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    };

    if latency.is_none() {
        criterion_cases(&run);
    }

    let simulated = match latency {
        None => "no wait latency".to_string(),
        Some(l) => format!("SIMULATED wait latency {l:?}"),
    };
    let what = format!(
        "submit({BATCH} IOTLB descriptors) + wait, unit drained by the waiters, {entries} entries, \
         {simulated}"
    );
    if let Err(e) = summary_from_args::<_, QiError>(&rig, &what) {
        panic!("{e}");
    }
}

/// Criterion's report of every case.
fn criterion_cases(run: &impl Fn(Design, usize, u64) -> Duration) {
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("qi_submit4_wait");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for producers in [1usize, 2] {
        for design in Design::ALL {
            group.bench_function(format!("{}/{producers}_producers", design.name()), |b| {
                b.iter_custom(|iters| run(design, producers, iters))
            });
        }
    }
    group.finish();
    c.final_summary();
}
