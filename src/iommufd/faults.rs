//! Faults routed to owners: a unit's drained fault records go to the owner of the device they
//! name (through the id or alias the device has), with the device's virtual id where its owner
//! gave it one in a vIOMMU; faults of devices nobody owns go to the default queue.
//!
//! Each owner that wants its faults subscribes with a bounded queue, allocated once
//! ([`Iommu::subscribe_faults`]); routing allocates nothing and never waits: a fault that finds
//! its queue full, or locked by its owner's reader at that moment, is counted as lost in that
//! queue (never dropped silently), and the owner reads the count with its faults.

extern crate alloc;

use alloc::collections::{BTreeMap, VecDeque};

use super::error::{Error, Result};
use super::{DeviceHandle, Iommu, OwnerId, UnitId, ViommuId};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::unit::{Drained, FaultRecord, TranslationUnit};

/// A fault as its owner receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedFault {
    /// What the unit recorded.
    pub record: FaultRecord,
    /// The registered device whose id (or alias) the record names, if any.
    pub device: Option<DeviceHandle>,
    /// That device's owner, if it has one.
    pub owner: Option<OwnerId>,
    /// The device's virtual id in its owner's vIOMMU, if the owner gave it one.
    pub virtual_id: Option<(ViommuId, u32)>,
}

/// One subscriber's bounded queue.
pub(super) struct FaultQueue {
    ring: Mutex<VecDeque<RoutedFault>>,
    capacity: usize,
    /// Faults that found the ring full or busy (a statistic, relaxed: read with the faults).
    lost: AtomicU64,
}

impl FaultQueue {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
            lost: AtomicU64::new(0),
        }
    }

    /// Queues `f` unless the ring is full or its reader holds it: then `f` is counted lost.
    /// Never allocates (the ring has its capacity from the start) and never waits.
    pub(super) fn offer(&self, f: RoutedFault) {
        match self.ring.try_lock() {
            Some(mut ring) if ring.len() < self.capacity => ring.push_back(f),
            _ => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The subscribers: one queue per owner that asked, and the default queue.
pub(super) struct FaultRouting {
    owners: BTreeMap<OwnerId, FaultQueue>,
    default: Option<FaultQueue>,
}

impl FaultRouting {
    pub(super) const fn new() -> Self {
        Self {
            owners: BTreeMap::new(),
            default: None,
        }
    }
}

/// What one [`Iommu::route_faults`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// The unit's drain: records and hardware overflow.
    pub drained: Drained,
    /// Records that went to an owner's queue (or were lost there).
    pub to_owners: usize,
    /// Records that went to the default queue (or were lost there, or had none to go to).
    pub to_default: usize,
}

/// Faults taken out of a queue, and how many were lost since the last take.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// The faults, oldest first.
    pub faults: alloc::vec::Vec<RoutedFault>,
    /// Faults lost since the last take (the queue was full or busy).
    pub lost: u64,
}

impl<U: TranslationUnit> Iommu<U> {
    /// Gives `owner` a queue of `capacity` faults (at least 1): from now on
    /// [`route_faults`](Self::route_faults) puts there the faults of the devices it owns.
    /// Subscribing again replaces the queue (its faults and lost count are dropped).
    pub fn subscribe_faults(&mut self, owner: OwnerId, capacity: usize) {
        self.faults
            .owners
            .insert(owner, FaultQueue::new(capacity.max(1)));
    }

    /// Stops routing `owner`'s faults to a queue of its own: they go to the default queue.
    pub fn unsubscribe_faults(&mut self, owner: OwnerId) {
        self.faults.owners.remove(&owner);
    }

    /// Gives the default queue `capacity` faults (at least 1): the faults of devices nobody
    /// owns, of ids no device has, and of owners without a queue of their own.
    pub fn subscribe_default_faults(&mut self, capacity: usize) {
        self.faults.default = Some(FaultQueue::new(capacity.max(1)));
    }

    /// Drains `unit`'s faults and routes each to its owner's queue or the default queue.
    /// Allocates nothing and waits for nobody: callable from the unit's fault interrupt.
    pub fn route_faults(&self, unit: UnitId) -> Result<Routed> {
        let mut routed = Routed::default();
        let drained = self.unit(unit)?.drain_faults(&mut |record| {
            if self.deliver_fault(unit, self.route(unit, record)) {
                routed.to_owners += 1;
            } else {
                routed.to_default += 1;
            }
        })?;
        routed.drained = drained;
        // The unit's records are free again: now the notifiers, however slow.
        self.notify_queued_faults();
        Ok(routed)
    }

    /// Queues `f` for `unit`'s and the domain's notifiers (told by
    /// [`notify_queued_faults`](Self::notify_queued_faults)), and puts it in its owner's queue
    /// (true) or else in the default queue (false). Allocates nothing, waits for nobody.
    pub(super) fn deliver_fault(&self, unit: UnitId, f: RoutedFault) -> bool {
        self.notify_fault(unit, &f);
        if let Some(queue) = f.owner.and_then(|o| self.faults.owners.get(&o)) {
            queue.offer(f);
            return true;
        }
        match &self.faults.default {
            Some(queue) => queue.offer(f),
            None => log::warn!("unrouted fault (no default queue): {}", f.record),
        }
        false
    }

    /// Who `record` belongs to: the device with that id on `unit`, or a device with that alias.
    /// Devices sharing an alias are one group, hence one owner: the first owned one is named.
    fn route(&self, unit: UnitId, record: FaultRecord) -> RoutedFault {
        let id = record.device;
        let device = self
            .users_of_id(unit, id)
            .find(|h| self.devices[h.0].owner.is_some())
            .or_else(|| self.users_of_id(unit, id).next());
        let owner = device.and_then(|h| self.devices[h.0].owner);
        let virtual_id = device.and_then(|h| self.virtual_id_of(h));
        RoutedFault {
            record,
            device,
            owner,
            virtual_id,
        }
    }

    /// Takes `owner`'s queued faults and its lost count (both start again from empty).
    pub fn take_faults(&self, owner: OwnerId) -> Result<Taken> {
        let queue = self
            .faults
            .owners
            .get(&owner)
            .ok_or(Error::NotSubscribed(Some(owner)))?;
        Ok(take(queue))
    }

    /// Takes the default queue's faults and lost count.
    pub fn take_default_faults(&self) -> Result<Taken> {
        let queue = self
            .faults
            .default
            .as_ref()
            .ok_or(Error::NotSubscribed(None))?;
        Ok(take(queue))
    }
}

pub(super) fn take(queue: &FaultQueue) -> Taken {
    let faults = queue.ring.lock().drain(..).collect();
    Taken {
        faults,
        lost: queue.lost.swap(0, Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests;
