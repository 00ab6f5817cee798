//! The submission protocol under the loom model checker.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p iommu-vtd --release --lib qi::loom_tests`.

extern crate std;
use std::boxed::Box;
use std::vec::Vec;

use loom::sync::Arc;

use super::sim::*;
use super::*;
use crate::descriptor::{Drain, IotlbScope};
use crate::root_table::Did;

const WIDTH: DescriptorWidth = DescriptorWidth::Bits128;

fn iotlb(domain: u16) -> Descriptor {
    Descriptor::Iotlb {
        scope: IotlbScope::Domain(Did::new(domain)),
        drain: Drain::default(),
    }
}

/// A queue on leaked memory: loom threads need `'static`.
fn leaked_queue(
    entries: u64,
) -> (
    &'static SimUnit,
    &'static SimMemory,
    Arc<InvalidationQueue<'static, &'static SimUnit>>,
) {
    let unit: &'static SimUnit = Box::leak(Box::new(SimUnit::new(WIDTH, entries, STATUS_PHYS)));
    let mem: &'static SimMemory = Box::leak(Box::new(SimMemory::new(entries as usize, WIDTH)));
    let q = Arc::new(queue(unit, mem, config(WIDTH, u32::MAX, 1_000_000)));
    (unit, mem, q)
}

fn builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.max_branches = 10_000;
    b
}

/// Two producers submit at once: whatever the interleaving, once both `submit`s returned
/// the unit's tail covers both batches (no publication is lost in the try-lock hand-off),
/// the tail never moved backwards, and the ring holds each batch exactly once.
#[test]
fn concurrent_submissions_are_all_published() {
    builder().check(|| {
        let (unit, mem, q) = leaked_queue(8);
        let producers: Vec<_> = (1..=2u16)
            .map(|p| {
                let q = q.clone();
                loom::thread::spawn(move || q.submit([iotlb(p)]).map(|_| ()))
            })
            .collect();
        for p in producers {
            assert_eq!(p.join().unwrap(), Ok(()));
        }
        // Both batches (2 slots each) are published: tail at slot 4.
        assert_eq!(unit.tail.value.load(Ordering::Acquire), 4 << 4);
        assert!(unit.tail.writes.load(Ordering::Relaxed) <= 2);
        let memory = mem.memory();
        let mut executed = Vec::new();
        while let Step::Executed(w) = unit.step(&memory) {
            executed.push(w);
        }
        let domains: Vec<u64> = executed
            .iter()
            .filter(|w| w[0] & 0xf == 2)
            .map(|w| w[0] >> 16)
            .collect();
        assert_eq!(domains.len(), 2);
        assert!(domains.contains(&1) && domains.contains(&2));
        // Each batch is followed by its own wait, in reservation order.
        assert_eq!(executed[1][0] & 0xf, 5);
        assert_eq!(executed[3][0] & 0xf, 5);
    });
}

/// Two producers submit and wait on a 4-slot ring (3 usable) while the simulated unit
/// runs, so the second reservation needs the unit to free slots. Waits are bounded (loom
/// may starve any thread, and an unbounded spin would be an endless model), so a producer
/// may also see `QueueFull` (nothing queued) or `Timeout` (queued, not yet done). Whatever
/// the interleaving: the unit never executes a slot that was not a whole, valid
/// descriptor, every queued batch executes exactly once with its own wait, and `Ok` means
/// the unit wrote that batch's status.
#[test]
fn full_ring_and_completion() {
    builder().check(|| {
        let unit: &'static SimUnit = Box::leak(Box::new(SimUnit::new(WIDTH, 4, STATUS_PHYS)));
        let mem: &'static SimMemory = Box::leak(Box::new(SimMemory::new(4, WIDTH)));
        let q = Arc::new(queue(unit, mem, config(WIDTH, 2, 1)));
        let producers: Vec<_> = (1..=2u16)
            .map(|p| {
                let q = q.clone();
                loom::thread::spawn(move || q.submit_and_wait([iotlb(p)]))
            })
            .collect();
        let memory = mem.memory();
        let mut executed = Vec::new();
        let run = |executed: &mut Vec<[u64; 4]>, idle_budget: usize| {
            let mut idle = 0;
            while idle < idle_budget {
                match unit.step(&memory) {
                    Step::Executed(w) => executed.push(w),
                    Step::Idle => {
                        idle += 1;
                        loom::thread::yield_now();
                    }
                    other => panic!("the unit stopped: {other:?}"),
                }
            }
        };
        run(&mut executed, 3);
        let results: Vec<_> = producers.into_iter().map(|p| p.join().unwrap()).collect();
        run(&mut executed, 1);
        let mut queued = 0;
        for (p, r) in (1..=2u64).zip(&results) {
            let runs = executed
                .iter()
                .filter(|w| w[0] & 0xf == 2 && w[0] >> 16 == p)
                .count();
            match r {
                Ok(()) | Err(QiError::Timeout { .. }) => {
                    assert_eq!(runs, 1);
                    queued += 1;
                }
                Err(QiError::QueueFull) => assert_eq!(runs, 0),
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(executed.iter().filter(|w| w[0] & 0xf == 5).count(), queued);
        assert_eq!(executed.len(), 2 * queued);
    });
}
