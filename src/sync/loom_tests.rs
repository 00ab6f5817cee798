//! Loom model of [`CombiningLock`](super::CombiningLock), used as the queues use it: producers
//! write a batch, mark it ready (`Release`) and run the lock; a pass follows the ready marks
//! from `published` and "writes the tail". The batches, `published` and the tail are loom cells,
//! so two passes that are not ordered, or a pass that reads a batch its producer's mark did not
//! hand over, fail the model; the assertions after the joins check that no request was lost.
//!
//! Run with `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//! cargo test --release -p iommu --lib sync::loom_tests` (a few seconds once built).
//! Checked to fail if the holder leaves with a plain store (a request handed to it is lost) or
//! takes a request with a `Relaxed` swap (the requester's batch is not ordered before the pass).

extern crate std;

use loom::sync::Arc;
use loom::thread;

use super::{AtomicBool, CombiningLock, Ordering, RacyCell};

const BATCHES: usize = 3;

struct World {
    lock: CombiningLock,
    /// Per batch: its data, written by its producer before the mark.
    batches: [RacyCell<u64>; BATCHES],
    /// Per batch: "written" (`Release` by the producer / `Acquire` by the pass).
    ready: [AtomicBool; BATCHES],
    /// Batches the tail covers; only passes touch it.
    published: RacyCell<usize>,
    /// The "tail register": the sum of the data of the batches it covers, and how often it
    /// was written with the flag; only passes touch it.
    tail: RacyCell<u64>,
    flagged: RacyCell<u32>,
    /// Written before a flagged request (VT-d: error recovery before its kick); every flagged
    /// pass reads it, which fails the model unless the request's write happens before.
    recovered: RacyCell<bool>,
}

impl World {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            lock: CombiningLock::new(),
            batches: core::array::from_fn(|_| RacyCell::new(0)),
            ready: core::array::from_fn(|_| AtomicBool::new(false)),
            published: RacyCell::new(0),
            tail: RacyCell::new(0),
            flagged: RacyCell::new(0),
            recovered: RacyCell::new(false),
        })
    }

    /// Writes batch `i`, marks it ready and publishes (or hands that to the holder).
    fn submit(&self, i: usize) {
        // SAFETY: batch `i` is this thread's until its mark (loom checks the claim).
        unsafe { self.batches[i].set(1 << i) };
        self.ready[i].store(true, Ordering::Release);
        self.lock.run(false, |flag| self.pass(flag));
    }

    /// Recovery: a write, then a flagged request.
    fn kick(&self) {
        // SAFETY: only flagged passes read it, after this request (loom checks the claim).
        unsafe { self.recovered.set(true) };
        self.lock.run(true, |flag| self.pass(flag));
    }

    /// What a queue's publisher does under the lock.
    fn pass(&self, flag: bool) {
        // SAFETY: passes are mutually exclusive and ordered (the claim under test).
        unsafe {
            let mut published = self.published.get();
            let mut tail = self.tail.get();
            while published < BATCHES && self.ready[published].load(Ordering::Acquire) {
                tail += self.batches[published].get();
                published += 1;
            }
            self.published.set(published);
            self.tail.set(tail);
            if flag {
                assert!(self.recovered.get(), "a flagged pass before its request");
                self.flagged.set(self.flagged.get() + 1);
            }
        }
    }

    /// (batches published, tail, flagged passes), once every thread is joined.
    fn result(&self) -> (usize, u64, u32) {
        // SAFETY: every thread was joined.
        unsafe { (self.published.get(), self.tail.get(), self.flagged.get()) }
    }
}

fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

fn join(t: thread::JoinHandle<()>) {
    if t.join().is_err() {
        panic!("thread panicked");
    }
}

/// Two producers, either order of marks: whoever publishes last covers both, and the batch
/// marked while the other held the lock is published by the holder's second pass.
#[test]
fn two_producers_are_both_published() {
    producers_are_all_published(2, 3);
}

/// Three producers: requests handed to a holder that is already passing for an earlier one
/// (PENDING set again while held) are all served.
#[test]
fn three_producers_are_all_published() {
    producers_are_all_published(3, 2);
}

/// `count` producers (this thread submits batch 0, one spawned thread each of the others), with
/// up to `preemptions` preemptions: every batch is published, once each.
fn producers_are_all_published(count: usize, preemptions: usize) {
    model(preemptions, move || {
        let w = World::new();
        let others: std::vec::Vec<_> = (1..count)
            .map(|i| {
                let w = w.clone();
                thread::spawn(move || w.submit(i))
            })
            .collect();
        w.submit(0);
        others.into_iter().for_each(join);
        assert_eq!(w.result(), (count, (1 << count) - 1, 0));
    });
}

/// A flagged request is served by a pass with the flag that starts after it, whether it took
/// the lock or handed the request to a producer's pass.
#[test]
fn a_flagged_request_gets_a_flagged_pass_after_it() {
    model(3, || {
        let w = World::new();
        let w1 = w.clone();
        let t = thread::spawn(move || w1.kick());
        w.submit(0);
        join(t);
        let (published, tail, flagged) = w.result();
        assert_eq!((published, tail), (1, 1));
        assert!(flagged >= 1, "the flag was lost");
    });
}
