//! The records of one IOVA space, split by address into stripes under separate locks, so that
//! maps and unmaps of distant ranges of one domain never wait for each other. The protocol that
//! uses them, and why it is correct, is at [`IovaSpace`](super::IovaSpace).

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

use super::{Mapping, Region, Unmapping};
use crate::pagetable::Prot;
use crate::sync::{Mutex, MutexGuard};

/// log2 of the IOVA bytes one stripe covers: 2 MiB, the smallest superpage, so that a
/// superpage mapping takes one lock and CPUs working a few megabytes apart take different ones.
const STRIPE_SHIFT: u32 = 21;

/// How many locks the stripes share: a power of two, at most 64 (one bit each in a lock mask).
/// Under loom two, so that a model reaches both cases with small ranges.
#[cfg(not(loom))]
const LOCKS: usize = 64;
#[cfg(loom)]
const LOCKS: usize = 2;

const ALL: u64 = if LOCKS == 64 {
    u64::MAX
} else {
    (1 << LOCKS) - 1
};

/// Where a recorded range is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Claimed by a map whose unit call has not returned: others wait for it.
    Mapping,
    /// Made: in the unit's table.
    Mapped,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    last: u64,
    phys: u64,
    /// Kept for subscribers that ask for the current mappings (notifier replay).
    prot: Prot,
    state: State,
}

/// What one lock guards: every record whose range touches one of its stripes.
#[derive(Default)]
pub(super) struct Shard {
    /// Mappings and claims, keyed by first IOVA; disjoint.
    entries: BTreeMap<u64, Entry>,
    /// Unmaps under way: nothing may be mapped or unmapped in their `owned` regions until they
    /// end.
    unmapping: Vec<Unmapping>,
}

impl Shard {
    /// The entries sharing an address with `r`, by increasing IOVA. Entries are disjoint, so
    /// at most one starts before `r` and reaches into it.
    fn overlapping(&self, r: Region) -> impl Iterator<Item = (u64, &Entry)> {
        let before = self
            .entries
            .range(..r.start)
            .next_back()
            .filter(|(_, e)| e.last >= r.start);
        before
            .into_iter()
            .chain(self.entries.range(r.start..=r.last))
            .map(|(start, e)| (*start, e))
    }
}

/// One lock on its own cache lines (two, for CPUs that fetch lines in pairs), so that CPUs
/// holding neighbouring locks do not slow each other down.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The locks of one IOVA space.
pub(super) struct Stripes {
    locks: Box<[Padded]>,
}

impl fmt::Debug for Stripes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stripes").field("locks", &LOCKS).finish()
    }
}

/// The lock of stripe `s`: a multiplicative (Fibonacci) hash, so that stripes spaced by a power
/// of two (per-CPU or per-guest regions at 1 GiB boundaries) spread over the locks instead of
/// sharing one; neighbouring stripes take different locks too.
fn lock_of_stripe(s: u64) -> usize {
    (s.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - LOCKS.trailing_zeros())) as usize
}

/// The stripes `r` touches, whole: a region whose locks are those of `r`.
pub(super) fn stripe_hull(r: Region) -> Region {
    let mask = (1u64 << STRIPE_SHIFT) - 1;
    Region {
        start: r.start & !mask,
        last: r.last | mask,
    }
}

/// The lock of the stripe holding `addr`.
fn lock_of(addr: u64) -> usize {
    lock_of_stripe(addr >> STRIPE_SHIFT)
}

/// The locks of every stripe `r` touches, one bit each.
fn mask_of(r: Region) -> u64 {
    let first = r.start >> STRIPE_SHIFT;
    let last = r.last >> STRIPE_SHIFT;
    if last - first >= LOCKS as u64 - 1 {
        return ALL;
    }
    (first..=last).fold(0, |m, s| m | 1 << lock_of_stripe(s))
}

impl Stripes {
    pub(super) fn new() -> Self {
        Self {
            locks: (0..LOCKS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
        }
    }

    /// Holds the locks of every stripe `r` touches.
    pub(super) fn lock(&self, r: Region) -> Held<'_> {
        self.lock_mask(mask_of(r))
    }

    /// Holds every lock (a whole-space search or snapshot).
    pub(super) fn lock_all(&self) -> Held<'_> {
        self.lock_mask(ALL)
    }

    fn lock_mask(&self, mask: u64) -> Held<'_> {
        if mask.count_ones() == 1 {
            let i = mask.trailing_zeros() as usize;
            return Held::One(i, self.locks[i].0.lock());
        }
        // `from_fn` visits indices in increasing order: every caller takes its locks in one
        // global order, so two callers never wait for each other in a cycle.
        Held::Many(Box::new(core::array::from_fn(|i| {
            (mask >> i & 1 == 1).then(|| self.locks[i].0.lock())
        })))
    }
}

/// The set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    core::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// A set of held locks; dropping it releases them. Each method looks only at the locks of the
/// stripes its region touches, which the caller holds (it locked that region or everything).
pub(super) enum Held<'a> {
    /// One lock (a range within one stripe, or stripes sharing a lock): the common case, kept
    /// small and off the heap.
    One(usize, MutexGuard<'a, Shard>),
    /// Several locks, by index.
    Many(Box<[Option<MutexGuard<'a, Shard>>; LOCKS]>),
}

impl<'a> Held<'a> {
    /// The held shards of the stripes `r` touches, with their lock index.
    fn of(&self, r: Region) -> impl Iterator<Item = (usize, &Shard)> {
        self.held(mask_of(r))
    }

    /// The held shards among the locks of `mask`.
    fn held(&self, mask: u64) -> impl Iterator<Item = (usize, &Shard)> {
        let (one, many) = match self {
            Self::One(i, g) => (Some((*i, &**g)).filter(|(i, _)| mask >> i & 1 == 1), None),
            Self::Many(all) => (None, Some(all)),
        };
        let many = many
            .into_iter()
            .flat_map(move |all| bits(mask).filter_map(move |i| all[i].as_deref().map(|s| (i, s))));
        one.into_iter().chain(many)
    }

    fn of_mut(&mut self, r: Region) -> impl Iterator<Item = &mut Shard> + use<'_, 'a> {
        let mask = mask_of(r);
        let (one, many) = match self {
            Self::One(i, g) => (Some(&mut **g).filter(|_| mask >> *i & 1 == 1), None),
            Self::Many(all) => (None, Some(all.iter_mut())),
        };
        let many = many
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(move |(i, g)| g.as_deref_mut().filter(|_| mask >> i & 1 == 1));
        one.into_iter().chain(many)
    }

    /// Whether a map or unmap overlapping `r` is under way.
    pub(super) fn busy(&self, r: Region) -> bool {
        self.of(r).any(|(_, s)| {
            s.unmapping.iter().any(|u| u.owned.overlaps(r))
                || s.overlapping(r).any(|(_, e)| e.state == State::Mapping)
        })
    }

    /// Whether anything is recorded over `r`.
    pub(super) fn any_mapped(&self, r: Region) -> bool {
        self.of(r).any(|(_, s)| s.overlapping(r).next().is_some())
    }

    /// The end of the farthest record, or span of mappings being unmapped, that overlaps `r`,
    /// if any. (The free space an unmap holds around its span is not an obstacle: it is free
    /// once the unmap ends.)
    pub(super) fn obstacle_end(&self, r: Region) -> Option<u64> {
        self.of(r)
            .flat_map(|(_, s)| {
                let entries = s.overlapping(r).map(|(_, e)| e.last);
                let unmaps = s.unmapping.iter().filter(|u| u.span.overlaps(r));
                entries.chain(unmaps.map(|u| u.span.last))
            })
            .max()
    }

    /// Whether a made mapping outside `span` touches `within` (whose stripes are held).
    pub(super) fn mapped_outside(&self, span: Region, within: Region) -> bool {
        self.of(within).any(|(_, s)| {
            s.overlapping(within).any(|(start, e)| {
                e.state == State::Mapped && !(span.start <= start && e.last <= span.last)
            })
        })
    }

    /// The largest region inside `within` around `span` that no record outside `span` and no
    /// other unmap's region touches: the free space an unmap of `span` may hold. `within`'s
    /// stripes are held; `span` holds every record that overlaps it and no unmap is under way
    /// there (`span_inside` and `busy` said so).
    pub(super) fn free_around(&self, span: Region, within: Region) -> Region {
        let (mut lo, mut hi) = (within.start, within.last);
        for (_, s) in self.of(within) {
            // Records are disjoint: the one starting last before `span` ends last too.
            if let Some((_, e)) = s.entries.range(..span.start).next_back() {
                if e.last >= lo {
                    lo = e.last + 1;
                }
            }
            if let Some(after) = span.last.checked_add(1) {
                if let Some((&start, _)) = s.entries.range(after..).next() {
                    if start <= hi {
                        hi = start - 1;
                    }
                }
            }
            for u in &s.unmapping {
                if u.owned.last < span.start && u.owned.last >= lo {
                    lo = u.owned.last + 1;
                }
                if u.owned.start > span.last && u.owned.start <= hi {
                    hi = u.owned.start - 1;
                }
            }
        }
        Region {
            start: lo,
            last: hi,
        }
    }

    /// Records a claim of `r` (mapping to `phys` with `prot`) in every stripe it touches.
    pub(super) fn claim(&mut self, r: Region, phys: u64, prot: Prot) {
        let entry = Entry {
            last: r.last,
            phys,
            prot,
            state: State::Mapping,
        };
        for s in self.of_mut(r) {
            s.entries.insert(r.start, entry);
        }
    }

    /// Turns the claim of `r` into a mapping if it was `made`, else drops it.
    pub(super) fn settle(&mut self, r: Region, made: bool) {
        for s in self.of_mut(r) {
            if made {
                if let Some(e) = s.entries.get_mut(&r.start) {
                    e.state = State::Mapped;
                }
            } else {
                s.entries.remove(&r.start);
            }
        }
    }

    /// The span from the first to the last mapping inside `r`, and their total bytes; refuses a
    /// mapping that `r` would cut and a range with nothing mapped.
    pub(super) fn span_inside(&self, r: Region) -> super::Result<(Region, u64)> {
        let mut span: Option<Region> = None;
        let mut total: u64 = 0;
        for (lock, shard) in self.of(r) {
            for (start, e) in shard.overlapping(r) {
                let m = Region {
                    start,
                    last: e.last,
                };
                if !r.contains(m) {
                    return Err(super::Error::WouldCut);
                }
                // Each mapping counted once: by the lock of its first stripe, which `r` touches
                // because the mapping lies inside it. Its length fits: maps take a 64-bit `len`.
                if lock_of(start) == lock {
                    total = total.saturating_add(m.size().unwrap_or(u64::MAX));
                }
                span = Some(match span {
                    None => m,
                    Some(s) => Region {
                        start: s.start.min(m.start),
                        last: s.last.max(m.last),
                    },
                });
            }
        }
        span.map(|s| (s, total)).ok_or(super::Error::NothingMapped)
    }

    /// Records the unmap `u` in every stripe its region touches.
    pub(super) fn guard(&mut self, u: Unmapping) {
        for s in self.of_mut(u.owned) {
            s.unmapping.push(u);
        }
    }

    /// Ends the unmap `u`: forgets the mappings inside its span if the unit `removed` them.
    pub(super) fn unguard(&mut self, u: Unmapping, removed: bool) {
        let span = u.span;
        for s in self.of_mut(u.owned) {
            if let Some(i) = s.unmapping.iter().position(|x| *x == u) {
                s.unmapping.swap_remove(i);
            }
            if removed {
                // Every entry starting inside the span lies inside it (the unmap cut none).
                while let Some(start) = s.entries.range(span.start..=span.last).next().map(|e| *e.0)
                {
                    s.entries.remove(&start);
                }
            }
        }
    }

    /// The mappings made, by increasing IOVA (each once, from the lock of its first stripe).
    pub(super) fn mappings(&self) -> Vec<Mapping> {
        self.mappings_with_prot()
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    /// [`mappings`](Self::mappings) with the permissions each was made with.
    pub(super) fn mappings_with_prot(&self) -> Vec<(Mapping, Prot)> {
        let mut all: Vec<(Mapping, Prot)> = self
            .held(ALL)
            .flat_map(|(i, s)| {
                s.entries
                    .iter()
                    .filter(move |(start, e)| e.state == State::Mapped && lock_of(**start) == i)
                    .map(|(start, e)| {
                        let iova = Region {
                            start: *start,
                            last: e.last,
                        };
                        (Mapping { iova, phys: e.phys }, e.prot)
                    })
            })
            .collect();
        all.sort_unstable_by_key(|(m, _)| m.iova.start);
        all
    }

    /// Whether no lock held records anything.
    pub(super) fn is_empty(&self) -> bool {
        self.held(ALL)
            .all(|(_, s)| s.entries.is_empty() && s.unmapping.is_empty())
    }

    /// The physical address of `iova` through a mapping made.
    pub(super) fn phys_of(&self, iova: u64) -> Option<u64> {
        let at = Region {
            start: iova,
            last: iova,
        };
        self.of(at)
            .flat_map(|(_, s)| s.overlapping(at).map(|(start, e)| (start, *e)))
            .find(|(_, e)| e.state == State::Mapped)
            .map(|(start, e)| e.phys.wrapping_add(iova - start))
    }
}
