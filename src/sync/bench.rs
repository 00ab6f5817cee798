//! The harness of the queue benchmarks (feature `host-hal`; the SMMUv3 command queue and the
//! VT-d invalidation queue run it over their simulators): one submission (a small batch and a
//! wait for its completion) from 1 and 2 producer threads, through the lock-free queue and
//! through the same queue behind a lock held across submission and wait (the classic locked
//! design), timed for criterion and summarised as submissions per second.
//!
//! The locked design comes with two locks, because they share the queue differently:
//! `spin::Mutex`, a test-and-set lock, lets the holder take it again at once, so one producer
//! runs a long streak of submissions while the other spins, and the queue's memory stays in one
//! core's cache; `spin::mutex::TicketMutex` serves the producers in arrival order, as the
//! kernels' spinlocks do (Linux's VT-d queue, and its SMMUv3 queue before the 2019 lock-free
//! rework, take a spinlock that queues its waiters), so the queue changes hands on every
//! submission, as it does with the lock-free queue. The summary shows both, and how often two
//! producers take turns in each ([`Rig::turns`]). The ratio a benchmark claims
//! ([`Summary::ratio`]) is against the fair lock: it compares designs that share the queue
//! alike, while `spin::Mutex`'s 2-producer figure is one producer's at a time, the other's
//! submissions waiting out its streak.
//!
//! The simulated hardware must be stepped by the waiting submitters (see the back-ends'
//! `self_draining` simulators), not by a thread of its own: then `n` producers want `n` cores,
//! and on a 2-core machine the 2-producer figures measure the queue, not the scheduler.

extern crate std;

use core::fmt::Debug;
use std::println;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// How the producers reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// Straight into the lock-free queue.
    LockFree,
    /// Through one `spin::Mutex` (test-and-set), held from before the submission until its
    /// wait returns.
    Mutex,
    /// As `Mutex`, through a `spin::mutex::TicketMutex`: a fair lock, taken in arrival order.
    TicketMutex,
}

impl Design {
    /// All, in the order the summary prints them.
    pub const ALL: [Self; 3] = [Self::LockFree, Self::Mutex, Self::TicketMutex];

    /// Its name in criterion's report and in the summary.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LockFree => "lock_free",
            Self::Mutex => "spin_mutex",
            Self::TicketMutex => "ticket_mutex",
        }
    }

    /// Its name in the summary's table.
    const fn label(self) -> &'static str {
        match self {
            Self::LockFree => "lock-free",
            Self::Mutex => "spin::Mutex",
            Self::TicketMutex => "TicketMutex",
        }
    }
}

/// The lock a locked design's submission holds, released when this is dropped.
enum Held<'a> {
    Nothing,
    Spin {
        _guard: spin::MutexGuard<'a, ()>,
    },
    Ticket {
        _guard: spin::mutex::TicketMutexGuard<'a, ()>,
    },
}

/// A queue's submission, and the locks of the locked design around it.
pub struct Rig<F> {
    submit: F,
    lock: spin::Mutex<()>,
    ticket: spin::mutex::TicketMutex<()>,
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
            ticket: spin::mutex::TicketMutex::new(()),
        }
    }

    /// One submission through `design`.
    #[inline(always)]
    fn once(&self, design: Design) -> Result<(), E> {
        self.once_then(design, || ())
    }

    /// One submission through `design`, then `after`, still inside the lock of a locked design
    /// (so that it does not widen the gap in which the other producer can take the lock).
    #[inline(always)]
    fn once_then(&self, design: Design, after: impl FnOnce()) -> Result<(), E> {
        // Dropped at the end, after `after`.
        let _held = match design {
            Design::LockFree => Held::Nothing,
            Design::Mutex => Held::Spin {
                _guard: self.lock.lock(),
            },
            Design::TicketMutex => Held::Ticket {
                _guard: self.ticket.lock(),
            },
        };
        let result = (self.submit)();
        after();
        result
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

    /// How two producers share the queue through `design`: of the submissions they make in
    /// about `secs` seconds, the share that came right after one of the other producer's (about
    /// 1 when they take turns, near 0 when one runs long streaks while the other waits). Each
    /// submission records which producer made it (in the lock, for the locked designs), with a
    /// swap on one shared line: a round of its own, apart from [`rate`]'s, whose lock-free
    /// figure that swap would slow.
    ///
    /// [`rate`]: Rig::rate
    pub fn turns(&self, design: Design, secs: f64) -> Result<f64, E> {
        let start = Barrier::new(2);
        let last = AtomicUsize::new(usize::MAX);
        let turns = AtomicU64::new(0);
        let total = AtomicU64::new(0);
        let period = Duration::from_secs_f64(secs);
        std::thread::scope(|s| {
            let producers: Vec<_> = (0..2)
                .map(|me| {
                    let (start, last, turns, total) = (&start, &last, &turns, &total);
                    s.spawn(move || -> Result<(), E> {
                        start.wait();
                        let began = Instant::now();
                        let (mut n, mut handed) = (0u64, 0u64);
                        while began.elapsed() < period {
                            // 64 between clock reads, which would widen that gap too.
                            for _ in 0..64 {
                                self.once_then(design, || {
                                    // Relaxed: a tally, read after the threads are joined.
                                    handed += u64::from(last.swap(me, Ordering::Relaxed) != me);
                                })?;
                            }
                            n += 64;
                        }
                        turns.fetch_add(handed, Ordering::Relaxed);
                        total.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    })
                })
                .collect();
            let mut result = Ok(());
            for p in producers {
                match p.join() {
                    Ok(r) => result = result.and(r),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            result
        })?;
        let total = total.load(Ordering::Relaxed).max(1);
        Ok(turns.load(Ordering::Relaxed) as f64 / total as f64)
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
    /// The queue behind `spin::Mutex`.
    pub mutex: Rates,
    /// The queue behind `spin::mutex::TicketMutex`.
    pub ticket: Rates,
    /// With two producers, the share of submissions that followed the other producer's, per
    /// design in [`Design::ALL`]'s order (see [`Rig::turns`]).
    pub turns: [f64; 3],
    /// Pure arithmetic in the same rounds: what the machine gave two threads meanwhile.
    pub machine: Rates,
}

impl Summary {
    /// Lock-free over the fair lock with two producers: the claim the benchmark is for, against
    /// the locked design that shares the queue as the lock-free one does (turn by turn).
    pub fn ratio(&self) -> f64 {
        self.lock_free.two / self.ticket.two
    }

    /// Lock-free over `spin::Mutex` with two producers.
    pub fn ratio_to_spin_mutex(&self) -> f64 {
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

/// Measures every design at 1 and 2 producers, each the median of `rounds` rounds of about
/// `secs` seconds taken in turn (so that every case sees the same noise), and how two
/// producers share the queue in each (a round of `secs` / 2 per design, apart from the rates);
/// prints them under `heading` with the load average and the 2-producer ratios.
pub fn summary<F, E>(rig: &Rig<F>, heading: &str, rounds: usize, secs: f64) -> Result<Summary, E>
where
    F: Fn() -> Result<(), E> + Sync,
    E: Debug + Send,
{
    // The reference: work that needs nothing but a core, on 1 and 2 threads in the same rounds,
    // so that a 2-producer figure can be told from a moment when the machine gave two threads
    // less than two cores (which a virtual machine's load average and steal time may not show).
    let machine = Rig::new(|| -> Result<(), E> {
        crate::iommufd::bench::arithmetic(0x9e37_79b9);
        Ok(())
    });
    // Per design: rates at 1 and 2 producers, turns taken.
    let mut measured = [const { [const { Vec::new() }; 3] }; 3];
    let mut arithmetic = [const { Vec::new() }; 2];
    let steal = crate::iommufd::bench::Steal::now();
    for _ in 0..rounds.max(1) {
        for producers in [1, 2] {
            for (design, m) in Design::ALL.iter().zip(&mut measured) {
                m[producers - 1].push(rig.rate(*design, producers, secs)?);
            }
        }
        for (design, m) in Design::ALL.iter().zip(&mut measured) {
            m[2].push(rig.turns(*design, secs / 2.0)?);
        }
        arithmetic[0].push(machine.rate(Design::LockFree, 1, secs / 4.0)?);
        arithmetic[1].push(machine.rate(Design::LockFree, 2, secs / 4.0)?);
    }
    let [lock_free, mutex, ticket] = measured.map(|m| m.map(median));
    let rates = |m: [f64; 3]| Rates {
        one: m[0],
        two: m[1],
    };
    let [m1, m2] = arithmetic.map(median);
    let s = Summary {
        lock_free: rates(lock_free),
        mutex: rates(mutex),
        ticket: rates(ticket),
        turns: [lock_free[2], mutex[2], ticket[2]],
        machine: Rates { one: m1, two: m2 },
    };
    println!(
        "\n{heading} (median of {} rounds of {secs} s; load average {}; CPU time stolen by \
         the host meanwhile {}):",
        rounds.max(1),
        crate::iommufd::bench::load(),
        steal.since()
    );
    println!(
        "  {:<12} {:>16} {:>16} {:>14}",
        "", "1 producer", "2 producers", "turns taken"
    );
    for ((design, r), turns) in Design::ALL
        .iter()
        .zip([s.lock_free, s.mutex, s.ticket])
        .zip(s.turns)
    {
        println!(
            "  {:<12} {:>12.0} op/s {:>12.0} op/s {:>14.3}",
            design.label(),
            r.one,
            r.two,
            turns
        );
    }
    println!(
        "  (turns taken: of the 2 producers' submissions, the share that followed the other's)"
    );
    println!(
        "  lock-free / TicketMutex with 2 producers: {:.2}x; lock-free / spin::Mutex: {:.2}x \
         (1 producer: {:.2}x); the machine gave 2 threads {:.2}x one's arithmetic meanwhile",
        s.ratio(),
        s.ratio_to_spin_mutex(),
        s.lock_free.one / s.mutex.one,
        s.machine.two / s.machine.one
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each submission holds the lock long enough (a sleep) that the other producer is always
    /// queued behind it: the fair lock must then hand over on (nearly) every submission.
    #[test]
    fn a_fair_lock_takes_turns_when_both_producers_wait() {
        let rig = Rig::new(|| -> Result<(), ()> {
            std::thread::sleep(Duration::from_micros(200));
            Ok(())
        });
        let turns = rig.turns(Design::TicketMutex, 0.05).unwrap();
        assert!(turns > 0.8, "turns taken {turns}");
    }

    #[test]
    fn turns_passes_a_submission_error_on() {
        let rig = Rig::new(|| Err::<(), _>("refused"));
        for design in Design::ALL {
            assert_eq!(rig.turns(design, 0.01), Err("refused"));
        }
    }
}
