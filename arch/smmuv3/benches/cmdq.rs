//! Command queue throughput: submit (4 commands) + CMD_SYNC from 1 and 2 producer threads, for
//! the lock-free queue and for the same queue behind a lock held across submission and sync (the
//! classic locked design), with a test-and-set `spin::Mutex` and with a fair
//! `spin::mutex::TicketMutex`.
//!
//! The simulated SMMU is consumed by the producers themselves while they wait for their
//! CMD_SYNC ([`SimulatedSmmu::self_draining`]: every CONS poll first executes what is
//! published), as hardware drains the queue while the CPU polls. No consumer thread: 2
//! producers use exactly 2 cores.
//!
//! `cargo bench -p iommu-smmuv3 --bench cmdq` prints, after criterion's report, operations per
//! second of every design at 1 and 2 producers, how often 2 producers take turns, and the
//! lock-free/lock ratios at 2 (harness: `iommu::sync::bench`, whose notes say why the fair lock
//! is the one the claim is against), twice: with the simulated SMMU as above, whose CMD_SYNC
//! takes no time, and with a *simulated* CMD_SYNC latency of [`SYNC_LATENCY`]
//! ([`SimulatedSmmu::self_draining_with_latency`]: a CMD_SYNC completes only once that much
//! host time has passed since the PROD write that published it; CMD_SYNCs published together
//! complete together). Without latency the locked design loses nothing by holding its lock
//! while the SMMU works; with it, that is what it pays. `-- --test` runs every case once, and
//! the summaries briefly.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use iommu::sync::bench::{summary_from_args, Design, Rig};
use iommu_smmuv3::cmdq::{CmdqError, CommandQueue};
use iommu_smmuv3::command::{Command, RawCommand};
use iommu_smmuv3::sim::{HeapQueueMemory, SimulatedSmmu};

/// log2 of the queue entries: 256 commands.
const LOG2_ENTRIES: u8 = 8;
/// Commands per submission (before its CMD_SYNC): a typical small invalidation.
const BATCH: usize = 4;
/// The simulated CMD_SYNC latency of the second summary: the order of a CMD_SYNC on real
/// hardware, where it waits for the SMMU's TLBs (and its TBUs') to finish the invalidations
/// ahead of it, a round trip over the interconnect of about a microsecond.
const SYNC_LATENCY: Duration = Duration::from_micros(1);

fn main() {
    bench(None);
    bench(Some(SYNC_LATENCY));
}

/// Criterion's cases (without latency only) and the summary, over a fresh SMMU whose CMD_SYNC
/// takes `latency`.
fn bench(latency: Option<Duration>) {
    let smmu = SimulatedSmmu::new(LOG2_ENTRIES);
    let mem = HeapQueueMemory::<2>::new(LOG2_ENTRIES);
    // The SMMU accepts everything: the benchmark measures the queue, not the decoder.
    let regs = match latency {
        None => smmu.self_draining(&mem, |_| Ok(())),
        Some(l) => smmu.self_draining_with_latency(&mem, |_| Ok(()), l),
    };
    let queue = match CommandQueue::new(regs, &mem, u32::MAX) {
        Ok(q) => q,
        Err(e) => panic!("{e}"),
    };
    let cmds: [RawCommand; BATCH] = match (Command::CfgiSte { sid: 8, leaf: true }).encode() {
        Ok(raw) => [raw; BATCH],
        Err(e) => panic!("{e}"),
    };
    let rig = Rig::new(|| queue.submit_and_sync(std::hint::black_box(&cmds)));
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
        None => "no CMD_SYNC latency".to_string(),
        Some(l) => format!("SIMULATED CMD_SYNC latency {l:?}"),
    };
    let what = format!(
        "submit({BATCH} commands) + CMD_SYNC, SMMU drained by the waiters, {} entries, {simulated}",
        1 << LOG2_ENTRIES
    );
    if let Err(e) = summary_from_args::<_, CmdqError>(&rig, &what) {
        panic!("{e}");
    }
}

/// Criterion's report of every case.
fn criterion_cases(run: &impl Fn(Design, usize, u64) -> Duration) {
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("cmdq_submit4_sync");
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
