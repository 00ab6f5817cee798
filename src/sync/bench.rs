//! The harness of the queue benchmarks (feature `host-hal`; the SMMUv3 command queue and the
//! VT-d invalidation queue run it over their simulators): one submission (a small batch and a
//! wait for its completion) from 1 and 2 producer threads, through the lock-free queue and
//! through the same queue behind a `spin::Mutex` held across submission and wait (the classic
//! locked design), timed for criterion and summarised as submissions per second.
//!
//! The simulated hardware must be stepped by the waiting submitters (see the back-ends'
//! `self_draining` simulators), not by a thread of its own: then `n` producers want `n` cores,
//! and on a 2-core machine the 2-producer figures measure the queue, not the scheduler.

extern crate std;

use core::fmt::Debug;
use std::println;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// How the producers reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// Straight into the lock-free queue.
    LockFree,
    /// Through one `spin::Mutex`, held from before the submission until its wait returns.
    Mutex,
}

impl Design {
    /// Both, in the order the summary prints them.
    pub const ALL: [Self; 2] = [Self::LockFree, Self::Mutex];

    /// Its name in criterion's report and in the summary.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LockFree => "lock_free",
            Self::Mutex => "spin_mutex",
        }
    }
}

/// A queue's submission, and the lock of the locked design around it.
pub struct Rig<F> {
    submit: F,
    lock: spin::Mutex<()>,
}

impl<F, E> Rig<F>
where
    F: Fn() -> Result<(), E> + Sync,
    E: Debug + Send,
{
    /// `submit` is one submission and its wait, as a driver's caller makes it.
    pub fn new(submit: F) -> Self {
        Self {
            submit,
            lock: spin::Mutex::new(()),
        }
    }

    /// One submission through `design`.
    #[inline(always)]
    fn once(&self, design: Design) -> Result<(), E> {
        match design {
            Design::LockFree => (self.submit)(),
            Design::Mutex => {
                let _held = self.lock.lock();
                (self.submit)()
            }
        }
    }

    /// `ops` submissions split over `producers` threads started together; the wall time until
    /// the last one is done (criterion's `iter_custom`), or the first error a producer met.
    pub fn run(&self, design: Design, producers: usize, ops: u64) -> Result<Duration, E> {
        let n = producers.max(1);
        let start = Barrier::new(n + 1);
        std::thread::scope(|s| {
            let threads: Vec<_> = (0..n)
                .map(|t| {
                    let share = ops / n as u64 + u64::from((t as u64) < ops % n as u64);
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        (0..share).try_for_each(|_| self.once(design))
                    })
                })
                .collect();
            start.wait();
            let began = Instant::now();
            let mut result = Ok(());
            for t in threads {
                match t.join() {
                    Ok(r) => result = result.and(r),
                    // A producer's panic is the bench's.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            result.map(|()| began.elapsed())
        })
    }

    /// Submissions per second over about `secs` seconds.
    pub fn rate(&self, design: Design, producers: usize, secs: f64) -> Result<f64, E> {
        let mut ops = 1000u64;
        loop {
            let t = self.run(design, producers, ops)?.as_secs_f64();
            if t >= secs || ops >= 1 << 32 {
                return Ok(ops as f64 / t);
            }
            // Aim past `secs`, but grow at most tenfold: one slow run must not make the next
            // huge.
            let aim = (ops as f64 * (secs / t.max(1e-6)) * 1.1).ceil() as u64;
            ops = aim.min(ops * 10);
        }
    }
}

/// Submissions per second of one design at 1 and 2 producers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// With one producer.
    pub one: f64,
    /// With two.
    pub two: f64,
}

/// What [`summary`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// The lock-free queue.
    pub lock_free: Rates,
    /// The queue behind the mutex.
    pub mutex: Rates,
    /// Pure arithmetic in the same rounds: what the machine gave two threads meanwhile.
    pub machine: Rates,
}

impl Summary {
    /// Lock-free over mutex with two producers: the claim the benchmark is for.
    pub fn ratio(&self) -> f64 {
        self.lock_free.two / self.mutex.two
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// [`summary`] as the benchmark's command line asks: five rounds of 0.5 s, or, under `--test`
/// (and when run without `--bench`, as `cargo test --benches` does) or `--profile-time`, one
/// round of 10 ms that only runs the code (labelled as not a measurement). `what` names one
/// submission for the heading.
pub fn summary_from_args<F, E>(rig: &Rig<F>, what: &str) -> Result<Summary, E>
where
    F: Fn() -> Result<(), E> + Sync,
    E: Debug + Send,
{
    let args: Vec<std::string::String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--test" || a == "--profile-time")
        || !args.iter().any(|a| a == "--bench");
    let (rounds, secs) = if smoke { (1, 0.01) } else { (5, 0.5) };
    let label = if smoke {
        " [smoke run: not a measurement]"
    } else {
        ""
    };
    summary(rig, &std::format!("{what}{label}"), rounds, secs)
}

/// Measures both designs at 1 and 2 producers, each the median of `rounds` rounds of about
/// `secs` seconds taken in turn (so that every case sees the same noise), and prints them under
/// `heading` with the load average and the 2-producer ratio.
pub fn summary<F, E>(rig: &Rig<F>, heading: &str, rounds: usize, secs: f64) -> Result<Summary, E>
where
    F: Fn() -> Result<(), E> + Sync,
    E: Debug + Send,
{
    let cases = [
        (Design::LockFree, 1),
        (Design::Mutex, 1),
        (Design::LockFree, 2),
        (Design::Mutex, 2),
    ];
    // The reference: work that needs nothing but a core, on 1 and 2 threads in the same rounds,
    // so that a 2-producer figure can be told from a moment when the machine gave two threads
    // less than two cores (which a virtual machine's load average and steal time may not show).
    let machine = Rig::new(|| -> Result<(), E> {
        crate::iommufd::bench::arithmetic(0x9e37_79b9);
        Ok(())
    });
    let mut rates = [const { Vec::new() }; 6];
    let steal = crate::iommufd::bench::Steal::now();
    for _ in 0..rounds.max(1) {
        for ((design, producers), r) in cases.iter().zip(&mut rates) {
            r.push(rig.rate(*design, *producers, secs)?);
        }
        rates[4].push(machine.rate(Design::LockFree, 1, secs / 4.0)?);
        rates[5].push(machine.rate(Design::LockFree, 2, secs / 4.0)?);
    }
    let [lf1, mx1, lf2, mx2, m1, m2] = rates.map(median);
    let s = Summary {
        lock_free: Rates { one: lf1, two: lf2 },
        mutex: Rates { one: mx1, two: mx2 },
        machine: Rates { one: m1, two: m2 },
    };
    println!(
        "\n{heading} (median of {} rounds of {secs} s; load average {}; CPU time stolen by \
         the host meanwhile {}):",
        rounds.max(1),
        crate::iommufd::bench::load(),
        steal.since()
    );
    println!("  {:<12} {:>16} {:>16}", "", "1 producer", "2 producers");
    for (name, r) in [("lock-free", s.lock_free), ("spin::Mutex", s.mutex)] {
        println!("  {name:<12} {:>12.0} op/s {:>12.0} op/s", r.one, r.two);
    }
    println!(
        "  lock-free / spin::Mutex with 2 producers: {:.2}x (1 producer: {:.2}x); the machine \
         gave 2 threads {:.2}x one's arithmetic meanwhile",
        s.ratio(),
        s.lock_free.one / s.mutex.one,
        s.machine.two / s.machine.one
    );
    Ok(s)
}
