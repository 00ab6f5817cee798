//! Command queue throughput: submit + CMD_SYNC from 1 and 2 producer threads against a
//! simulated SMMU consumer thread, for the lock-free queue and for the same queue behind a
//! `spin::Mutex` held across submission and sync (the classic locked design).
//!
//! `CARGO_TARGET_DIR=/work/target-smmu2 cargo bench -p iommu-smmuv3 --bench cmdq`
//! After criterion's report it prints operations per second and the lock-free/mutex ratios.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use iommu_smmuv3::command::{Command, RawCommand};
mod common;

use common::{Consumer, Queue};

/// log2 of the queue entries: 256 commands.
const LOG2_ENTRIES: u8 = 8;
/// Commands per submission (before its CMD_SYNC): a typical small invalidation.
const BATCH: usize = 4;

/// A queue with a consumer thread draining it until dropped, and the foil's lock.
struct Rig {
    queue: &'static Queue,
    lock: &'static spin::Mutex<()>,
    _consumer: Consumer,
}

impl Rig {
    fn new() -> Self {
        let consumer = Consumer::start(LOG2_ENTRIES);
        Self {
            queue: consumer.queue,
            lock: Box::leak(Box::new(spin::Mutex::new(()))),
            _consumer: consumer,
        }
    }

    /// Runs `ops` submit+sync operations split over `producers` threads; returns the time.
    fn run(&self, producers: usize, locked: bool, ops: u64) -> Duration {
        let cmds: [RawCommand; BATCH] = match (Command::CfgiSte { sid: 8, leaf: true }).encode() {
            Ok(raw) => [raw; BATCH],
            Err(e) => panic!("{e}"),
        };
        let barrier = Arc::new(Barrier::new(producers + 1));
        let threads: Vec<_> = (0..producers)
            .map(|p| {
                let (queue, lock, barrier) = (self.queue, self.lock, barrier.clone());
                let share = ops / producers as u64 + u64::from((p as u64) < ops % producers as u64);
                thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..share {
                        let r = if locked {
                            let _guard = lock.lock();
                            queue.submit_and_sync(black_box(&cmds))
                        } else {
                            queue.submit_and_sync(black_box(&cmds))
                        };
                        if let Err(e) = r {
                            panic!("{e}");
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for t in threads {
            if t.join().is_err() {
                panic!("producer panicked");
            }
        }
        start.elapsed()
    }
}

fn bench(c: &mut Criterion, rig: &Rig) {
    let mut group = c.benchmark_group("cmdq_submit4_sync");
    group.throughput(Throughput::Elements(1));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for producers in [1usize, 2] {
        for (name, locked) in [("lock_free", false), ("spin_mutex", true)] {
            group.bench_function(format!("{name}/{producers}_producers"), |b| {
                b.iter_custom(|iters| rig.run(producers, locked, iters))
            });
        }
    }
    group.finish();
}

/// Operations per second over about `secs` seconds.
fn rate(rig: &Rig, producers: usize, locked: bool, secs: f64) -> f64 {
    let mut ops = 1000u64;
    loop {
        let t = rig.run(producers, locked, ops).as_secs_f64();
        if t >= secs || ops >= 1 << 30 {
            return ops as f64 / t;
        }
        // Aim past `secs`, but grow at most tenfold: one slow run must not make the next huge.
        let aim = (ops as f64 * (secs / t.max(1e-6)) * 1.1).ceil() as u64;
        ops = aim.min(ops * 10);
    }
}

fn main() {
    let rig = Rig::new();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &rig);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        println!(
            "\nsubmit(4 commands) + CMD_SYNC, simulated consumer thread, {} entries:",
            1 << LOG2_ENTRIES
        );
        for producers in [1usize, 2] {
            // The median of five half-second runs, alternating, so both see the same noise.
            let (mut free, mut locked) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                free.push(rate(&rig, producers, false, 0.5));
                locked.push(rate(&rig, producers, true, 0.5));
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (free, locked) = (median(&mut free), median(&mut locked));
            println!(
                "  {producers} producer(s): lock-free {:>9.0} ops/s, spin::Mutex {:>9.0} ops/s, ratio {:.2}",
                free,
                locked,
                free / locked
            );
        }
    }
}
