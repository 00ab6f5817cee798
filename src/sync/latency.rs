//! A simulated completion latency for the self-draining queue simulators of the back-ends
//! (feature `host-hal`): host time, plain `core` atomics (never a loom model's subject: the
//! models run without latency).

extern crate std;

use core::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::CachePadded;

/// A simulated completion latency for the self-draining queue simulators (SMMUv3 CMD_SYNC,
/// VT-d wait descriptor): a completion command executes only `delay` after the tail write that
/// published it. Completions published together complete together: a delay, not a service
/// time. The latency is host time (`Instant`), an assumed order of magnitude, not a measurement
/// of any unit.
#[derive(Debug)]
pub struct Latency {
    /// Nanoseconds from a completion's publication to its execution.
    delay: u64,
    /// Time 0 of the stamps.
    origin: Instant,
    /// Per ring slot, nanoseconds after `origin` of the tail write that first covered it.
    /// Relaxed stores by the tail writer before its release store of the tail; relaxed loads by
    /// the consumer after its acquire load of the tail. A slot is stamped again only after it
    /// was consumed. Dense, in blocks of whole cache lines, so that the stores of a publication
    /// never invalidate a line of another allocation that the waiters poll.
    published_at: Vec<CachePadded<[AtomicU64; STAMPS_PER_BLOCK]>>,
    /// Nanoseconds after `origin` before which the completion at the head cannot execute, as
    /// the last consumer found it: a poll before then returns without taking the simulator's
    /// stepping flag (a read-modify-write every waiter's poll would otherwise make). Stale
    /// values are earlier than any later head's, so harmless; relaxed, a hint only. On a line of
    /// its own, apart from the fields every poll reads.
    not_before: CachePadded<AtomicU64>,
    /// Ring slots stamped.
    slots: usize,
}

/// Stamps per cache-line-aligned block of [`Latency::published_at`].
const STAMPS_PER_BLOCK: usize = 16;

impl Latency {
    /// A latency of `delay` over a ring of `slots` entries.
    pub fn new(delay: Duration, slots: usize) -> Self {
        Self {
            delay: u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            origin: Instant::now(),
            published_at: (0..slots.div_ceil(STAMPS_PER_BLOCK))
                .map(|_| CachePadded([const { AtomicU64::new(0) }; STAMPS_PER_BLOCK]))
                .collect(),
            slots,
            not_before: CachePadded(AtomicU64::new(0)),
        }
    }

    fn stamp(&self, slot: usize) -> Option<&AtomicU64> {
        self.published_at
            .get(slot / STAMPS_PER_BLOCK)?
            .0
            .get(slot % STAMPS_PER_BLOCK)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Stamps the `count` slots from `first` (modulo the ring) as published now. Called by the
    /// one CPU writing the tail, before its release store of it.
    pub fn publish(&self, first: usize, count: usize) {
        let now = self.now();
        let n = self.slots.max(1);
        for i in 0..count.min(n) {
            if let Some(t) = self.stamp((first + i) % n) {
                t.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Whether nothing can execute yet: the head's completion, as last seen, is not due.
    pub fn head_not_due(&self) -> bool {
        self.now() < self.not_before.load(Ordering::Relaxed)
    }

    /// Whether the completion in `slot` (at the head) is still inside its latency; `now` is
    /// read once per drain. Only the consumer calls it.
    pub fn pending(&self, slot: usize, now: &mut Option<u64>) -> bool {
        let published = self.stamp(slot).map_or(0, |t| t.load(Ordering::Relaxed));
        let now = *now.get_or_insert_with(|| self.now());
        let due = published.saturating_add(self.delay);
        if now < due {
            self.not_before.store(due, Ordering::Relaxed);
            return true;
        }
        false
    }
}
