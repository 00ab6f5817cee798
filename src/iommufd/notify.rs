//! Notifiers: an embedder (a VMM emulating an IOMMU for its guest) subscribes to a unit's or a
//! domain's events ([`Iommu::subscribe`]) and is told synchronously what the object model did.
//!
//! # Delivery
//!
//! - *Synchronous.* [`Notifier::event`] runs on the CPU that made the call, inside it, before it
//!   returns: a subscriber has seen the event when the caller sees the result. A notifier must
//!   not block and must not call back into the [`Iommu`]: it runs inside the model's calls, with
//!   a range of the domain claimed (map, unmap) or with `&mut self` borrowed (attach), and from
//!   [`Iommu::route_faults`], possibly in the unit's fault interrupt.
//! - *Only what happened.* A refused call delivers nothing. [`Event::Map`] comes after the unit
//!   mapped; [`Event::Unmap`] after the unit unmapped *and* its invalidation completed, so no
//!   DMA through the range can succeed once a subscriber hears of it. Deferred unmaps
//!   ([`Iommu::unmap_deferred`]) are not announced when they are made but at their
//!   [`Iommu::flush_deferred`], as one [`Event::Flushed`] over the hull of the gathered ranges.
//! - *Who hears what.* A [`Subject::Unit`] subscriber gets every event of that unit: the maps,
//!   unmaps and attachments of all its domains, whoever owns them, its faults and its vIOMMUs'
//!   guest invalidations. A [`Subject::Domain`] subscriber gets that domain's maps, unmaps,
//!   flushes, attachments and detachments, the faults of devices attached to it, and the guest
//!   invalidations of the vIOMMUs it is the nest parent of. Several subscribers of one event are
//!   called in the order they subscribed.
//!
//! # Ordering
//!
//! - Every event carries a number (`seq` of [`Notifier::event`]) drawn from one counter of the
//!   [`Iommu`] as it is told. Operations on overlapping ranges of one domain are told in the
//!   order they took effect, and numbered in it: each is told while the operation's claim on
//!   its range is still held (see [`IovaSpace`](super::IovaSpace)), and the next overlapping
//!   operation cannot begin before that claim ends.
//! - Operations on disjoint ranges of one domain run on several CPUs at once, and so do their
//!   deliveries: a notifier may be called on several CPUs at once (hence `Sync`) and out of
//!   number order; sorted by number, a domain's events are one order consistent with every
//!   range's.
//! - Control-path events (attach, detach, and replay) run under `&mut self`: no data-path call
//!   runs at the same time, so they are ordered against everything.
//! - Faults are queued per subscriber (at most [`FAULT_QUEUE`]; more are counted and told as
//!   [`Event::FaultsLost`]) while the unit's records are drained, and told after the drain: a
//!   slow notifier delays [`Iommu::route_faults`]'s return, never the drain of the hardware.
//!
//! # Cost
//!
//! With no subscription, each hook is one length check of an empty vector.

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::error::{Error, Result};
use super::faults::{take, FaultQueue};
use super::iova::Region;
use super::{
    DeviceHandle, DomainId, DomainKind, Iommu, OwnerId, RoutedFault, Target, UnitId, ViommuId,
};
use crate::addr::{Iova, PhysAddr};
use crate::pagetable::Prot;
// The core's atomic (not `crate::sync`'s, which loom swaps): `Iommu::new` is `const`, and the
// counter's one property, coherence of a single atomic, needs no model.
use crate::unit::{Forwarded, TranslationUnit};
use core::sync::atomic::{AtomicU64, Ordering};

/// Told what happens on the units and domains it subscribed to. See the [module docs](self).
pub trait Notifier: Send + Sync {
    /// One event, delivered synchronously inside the call that caused it (faults: once the
    /// unit's records are drained). Must not block (it may run with a range of a domain
    /// claimed) and must not call into the [`Iommu`].
    ///
    /// `seq` numbers every event the [`Iommu`] tells, in the order it told them: sorted by it,
    /// a domain's events form one order, which is the order of the operations on any range they
    /// share (concurrent operations on disjoint ranges may call a notifier out of that order,
    /// from several CPUs).
    fn event(&self, seq: u64, event: &Event);
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The unit mapped `[iova, iova + len)` of `domain` to `[phys, phys + len)`.
    Map {
        /// The domain.
        domain: DomainId,
        /// First IOVA.
        iova: Iova,
        /// The physical address `iova` maps to.
        phys: PhysAddr,
        /// Bytes mapped.
        len: u64,
        /// Its permissions.
        prot: Prot,
    },
    /// Nothing is mapped in `[iova, iova + len)` of `domain` any more and the unit's caches of
    /// it are invalidated: the span of the mappings one unmap removed (holes between them held
    /// nothing).
    Unmap {
        /// The domain.
        domain: DomainId,
        /// First IOVA.
        iova: Iova,
        /// Bytes of the span.
        len: u64,
    },
    /// The deferred unmaps of one gather are invalidated ([`Iommu::flush_deferred`] returned
    /// `Ok`): every mapping they removed lies in `[iova, iova + len)`, the hull of their ranges.
    /// Mappings inside the hull that they did not remove are still mapped.
    Flushed {
        /// The domain.
        domain: DomainId,
        /// First IOVA of the hull.
        iova: Iova,
        /// Bytes of the hull.
        len: u64,
    },
    /// `device` (its requests with `pasid`, if any) now translates through `target`
    /// (never [`Target::Blocked`]: being blocked is [`Event::Detach`]).
    Attach {
        /// The device.
        device: DeviceHandle,
        /// The PASID, for a PASID attach.
        pasid: Option<u32>,
        /// What it is attached to.
        target: Target,
        /// Its virtual id, if its owner gave it one in a vIOMMU.
        virtual_id: Option<(ViommuId, u32)>,
    },
    /// `device` (its requests with `pasid`, if any) no longer translates through `from`: it was
    /// blocked or moved elsewhere (an [`Event::Attach`] follows then).
    Detach {
        /// The device.
        device: DeviceHandle,
        /// The PASID, for a PASID detach.
        pasid: Option<u32>,
        /// What it was attached to (never [`Target::Blocked`]).
        from: Target,
        /// Its virtual id, if its owner gave it one in a vIOMMU.
        virtual_id: Option<(ViommuId, u32)>,
    },
    /// A fault drained and routed by [`Iommu::route_faults`] (or a guest mapping a shadowing
    /// vIOMMU refused), told once the unit's fault records are drained.
    Fault(RoutedFault),
    /// `count` faults for this subscriber found its queue ([`FAULT_QUEUE`] faults) full or
    /// busy since it was last told: they are lost to it.
    FaultsLost {
        /// How many.
        count: u64,
    },
    /// The guest's invalidation commands went through [`Iommu::invalidate`].
    GuestInvalidation {
        /// The vIOMMU.
        viommu: ViommuId,
        /// Commands the guest gave.
        commands: usize,
        /// Commands issued and completed, from the first.
        done: usize,
        /// Whether command number `done` was refused.
        refused: bool,
    },
}

/// What a subscription listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Everything of one unit, whoever owns its domains and devices.
    Unit(UnitId),
    /// One domain of the subscriber's owner.
    Domain(DomainId),
}

impl Subject {
    fn covers(self, unit: UnitId, domain: Option<DomainId>) -> bool {
        match self {
            Self::Unit(u) => u == unit,
            Self::Domain(d) => domain == Some(d),
        }
    }
}

/// What a new subscriber is told of the state it starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replay {
    /// Nothing: only events from now on.
    None,
    /// Before [`Iommu::subscribe`] returns, the new notifier (and only it) gets an
    /// [`Event::Map`] for every current mapping of the subject's paging domains, in IOVA order,
    /// then an [`Event::Attach`] for every device and PASID attached to them (for a unit, also
    /// its devices in identity).
    Current,
}

/// A subscription made with [`Iommu::subscribe`]; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NotifierId(u64);

struct Subscription {
    id: NotifierId,
    owner: OwnerId,
    subject: Subject,
    notifier: Arc<dyn Notifier>,
    /// Its faults between the drain that routed them and the notifier's call: a slow
    /// notifier delays that call, never the drain of the unit's records.
    faults: FaultQueue,
}

/// Faults one subscriber can be owed between the drain that routed them and its call; more are
/// counted and told as [`Event::FaultsLost`].
pub const FAULT_QUEUE: usize = 64;

/// The subscriptions of one [`Iommu`].
///
/// Changed only by `&mut self` calls (subscribe, unsubscribe, domain destruction) and read by
/// `&self` calls: the borrow rules (and the embedder's reader-writer lock around the `Iommu`)
/// keep every reader off while it changes, so it needs no lock of its own.
pub(super) struct Notifiers {
    subs: Vec<Subscription>,
    next: u64,
    /// The next event's number. Relaxed is enough: read-modify-writes of one atomic are totally
    /// ordered, consistently with happens-before, so an operation that follows another on an
    /// overlapping range (through that range's claim) draws a larger number.
    seq: AtomicU64,
}

impl Notifiers {
    pub(super) const fn new() -> Self {
        Self {
            subs: Vec::new(),
            next: 0,
            seq: AtomicU64::new(0),
        }
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Calls every subscriber of `unit` and of `domain` with `event`.
    fn deliver(&self, unit: UnitId, domain: Option<DomainId>, event: &Event) {
        let seq = self.next_seq();
        for s in self.subs.iter().filter(|s| s.subject.covers(unit, domain)) {
            s.notifier.event(seq, event);
        }
    }

    /// Drops the subscriptions of a destroyed domain (its id is never reused).
    pub(super) fn forget_domain(&mut self, domain: DomainId) {
        self.subs.retain(|s| s.subject != Subject::Domain(domain));
    }
}

impl<U: TranslationUnit> Iommu<U> {
    /// Subscribes `notifier` for `owner` to the events of `subject`; with [`Replay::Current`]
    /// it is first told the subject's current mappings and attachments.
    ///
    /// A domain subject must be `owner`'s domain ([`Error::NotDomainOwner`],
    /// [`Error::UnknownDomain`]). Any owner may subscribe to a unit ([`Error::UnknownUnit`]
    /// only): a unit subscriber hears of every owner's domains on it, so the embedder gives unit
    /// subscriptions only to itself (the VMM), never to a guest. A refused call subscribes
    /// nothing and replays nothing.
    pub fn subscribe(
        &mut self,
        owner: OwnerId,
        subject: Subject,
        notifier: Arc<dyn Notifier>,
        replay: Replay,
    ) -> Result<NotifierId> {
        match subject {
            Subject::Unit(u) => self.unit(u).map(|_| ())?,
            Subject::Domain(d) => self.domain(d, owner).map(|_| ())?,
        }
        if replay == Replay::Current {
            // Under `&mut self` no map, unmap or attach runs meanwhile: the replay is the exact
            // state the events that follow start from.
            self.replay(subject, &*notifier);
        }
        let id = NotifierId(self.notifiers.next);
        self.notifiers.next += 1;
        self.notifiers.subs.push(Subscription {
            id,
            owner,
            subject,
            notifier,
            faults: FaultQueue::new(FAULT_QUEUE),
        });
        Ok(id)
    }

    /// Ends `owner`'s subscription `id`: once this returns, its notifier is called no more.
    /// Refused ([`Error::UnknownNotifier`]) for an id `owner` did not subscribe (never made,
    /// ended, another owner's, or on a domain since destroyed).
    pub fn unsubscribe(&mut self, owner: OwnerId, id: NotifierId) -> Result<()> {
        let at = self
            .notifiers
            .subs
            .iter()
            .position(|s| s.id == id && s.owner == owner)
            .ok_or(Error::UnknownNotifier(id))?;
        self.notifiers.subs.remove(at);
        Ok(())
    }

    /// The current mappings and attachments of `subject`, to `to` alone.
    fn replay(&self, subject: Subject, to: &dyn Notifier) {
        let of_subject = |id: &DomainId, unit: UnitId| match subject {
            Subject::Unit(u) => unit == u,
            Subject::Domain(d) => *id == d,
        };
        for (&domain, dom) in self.domains.iter().filter(|(id, d)| of_subject(id, d.unit)) {
            // A shadow's pages too (their changes are announced like any map and unmap).
            if let DomainKind::Paging { space, .. } | DomainKind::Shadow { space, .. } = &dom.kind {
                for (m, prot) in space.mappings_with_prot() {
                    to.event(
                        self.notifiers.next_seq(),
                        &Event::Map {
                            domain,
                            iova: Iova::new(m.iova.start),
                            phys: PhysAddr::new(m.phys),
                            // A mapping is at most 2^64 - 4 KiB long: its map took a `u64`.
                            len: m.iova.size().unwrap_or(u64::MAX),
                            prot,
                        },
                    );
                }
            }
        }
        let attached = |device: DeviceHandle, target: Target| match (target, subject) {
            (Target::Domain(d), _) => self
                .domains
                .get(&d)
                .is_some_and(|dom| of_subject(&d, dom.unit)),
            (Target::Identity, Subject::Unit(u)) => {
                self.devices.get(device.0).is_some_and(|dev| dev.unit == u)
            }
            _ => false,
        };
        for (i, d) in self.devices.iter().enumerate() {
            let device = DeviceHandle(i);
            if attached(device, d.target) {
                to.event(
                    self.notifiers.next_seq(),
                    &Event::Attach {
                        device,
                        pasid: None,
                        target: d.target,
                        virtual_id: self.virtual_id_of(device),
                    },
                );
            }
        }
        for (&(device, pasid), &domain) in &self.pasids {
            if attached(device, Target::Domain(domain)) {
                to.event(
                    self.notifiers.next_seq(),
                    &Event::Attach {
                        device,
                        pasid: Some(pasid),
                        target: Target::Domain(domain),
                        virtual_id: self.virtual_id_of(device),
                    },
                );
            }
        }
    }

    /// After the unit mapped `range` of `domain` (its claim still held).
    pub(super) fn notify_map(
        &self,
        unit: UnitId,
        domain: DomainId,
        range: Region,
        phys: PhysAddr,
        prot: Prot,
    ) {
        if self.notifiers.subs.is_empty() {
            return;
        }
        let event = Event::Map {
            domain,
            iova: Iova::new(range.start),
            phys,
            len: range.size().unwrap_or(u64::MAX),
            prot,
        };
        self.notifiers.deliver(unit, Some(domain), &event);
    }

    /// After the unit unmapped and invalidated `span` of `domain` (its claim still held).
    pub(super) fn notify_unmap(&self, unit: UnitId, domain: DomainId, span: Region) {
        if self.notifiers.subs.is_empty() {
            return;
        }
        let event = Event::Unmap {
            domain,
            iova: Iova::new(span.start),
            len: span.size().unwrap_or(u64::MAX),
        };
        self.notifiers.deliver(unit, Some(domain), &event);
    }

    /// After the invalidation of a gather whose hull was `range` completed.
    pub(super) fn notify_flushed(
        &self,
        unit: UnitId,
        domain: DomainId,
        range: Option<(Iova, u64)>,
    ) {
        if self.notifiers.subs.is_empty() {
            return;
        }
        if let Some((iova, len)) = range {
            let event = Event::Flushed { domain, iova, len };
            self.notifiers.deliver(unit, Some(domain), &event);
        }
    }

    /// After `device` (with `pasid`) moved from `old` to `new` on `unit`: a detach from `old`,
    /// then an attach to `new`, leaving out the blocked side.
    pub(super) fn notify_attach(
        &self,
        device: DeviceHandle,
        pasid: Option<u32>,
        unit: UnitId,
        old: Target,
        new: Target,
    ) {
        if self.notifiers.subs.is_empty() || old == new {
            return;
        }
        let virtual_id = self.virtual_id_of(device);
        if old != Target::Blocked {
            let event = Event::Detach {
                device,
                pasid,
                from: old,
                virtual_id,
            };
            self.notifiers.deliver(unit, domain_of(old), &event);
        }
        if new != Target::Blocked {
            let event = Event::Attach {
                device,
                pasid,
                target: new,
                virtual_id,
            };
            self.notifiers.deliver(unit, domain_of(new), &event);
        }
    }

    /// A routed fault of `unit`, queued for the unit's subscribers and for those of the domain
    /// its device's request translated through. Allocates nothing and waits for nobody (a full
    /// or busy queue counts it lost): it runs while the unit's records are drained.
    pub(super) fn notify_fault(&self, unit: UnitId, fault: &RoutedFault) {
        if self.notifiers.subs.is_empty() {
            return;
        }
        let domain = fault.device.and_then(|device| {
            let by_pasid = fault
                .record
                .pasid
                .and_then(|p| self.pasids.get(&(device, p)).copied());
            by_pasid.or_else(|| domain_of(self.devices.get(device.0)?.target))
        });
        for s in self.notifiers.subs.iter() {
            if s.subject.covers(unit, domain) {
                s.faults.offer(*fault);
            }
        }
    }

    /// Tells each subscriber the faults queued for it, then how many it lost.
    pub(super) fn notify_queued_faults(&self) {
        for s in self.notifiers.subs.iter() {
            let taken = take(&s.faults);
            for f in &taken.faults {
                s.notifier
                    .event(self.notifiers.next_seq(), &Event::Fault(*f));
            }
            if taken.lost > 0 {
                s.notifier.event(
                    self.notifiers.next_seq(),
                    &Event::FaultsLost { count: taken.lost },
                );
            }
        }
    }

    /// After `commands` guest commands of vIOMMU `id` were forwarded: to the subscribers of its
    /// unit and of its nest parent.
    pub(super) fn notify_guest_invalidation(
        &self,
        id: ViommuId,
        commands: usize,
        forwarded: &Forwarded,
    ) {
        if self.notifiers.subs.is_empty() {
            return;
        }
        if let Some(v) = self.viommus.get(&id) {
            let event = Event::GuestInvalidation {
                viommu: id,
                commands,
                done: forwarded.done,
                refused: forwarded.refused.is_some(),
            };
            self.notifiers.deliver(v.unit, Some(v.parent), &event);
        }
    }
}

fn domain_of(target: Target) -> Option<DomainId> {
    match target {
        Target::Domain(d) => Some(d),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests;
