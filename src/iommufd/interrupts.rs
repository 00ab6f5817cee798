//! A device's interrupts belong to whoever owns the device: the owner allocates remapped
//! interrupts for it, only the owner can retarget or free them, and releasing the device tears
//! them down. A unit whose devices' MSIs nobody remaps cannot give devices to owners unless the
//! embedder says, by name, that such interrupts may be unsafe.
//!
//! Without interrupt isolation a device can write any MSI and raise any vector of the host or of
//! another guest (see [`crate::irq`]). The remapper of a unit is registered by the embedder:
//! the VT-d unit itself once its interrupt remapping is on, or the platform's GICv3 ITS.
//!
//! Where MSIs are DMA writes to a doorbell (an ITS), a device in a paging domain reaches the
//! doorbell only if the domain maps it. The model maps the doorbell page at IOVA = its physical
//! address, so the message the remapper hands out is the same whatever the device is attached
//! to, inside a region the domain's layout reserves as [`ReservedKind::MsiDoorbell`] (so no
//! owner mapping can take its place): when an interrupt is allocated for a device in the
//! domain, or a device with interrupts is attached to it. A domain without such a region is
//! refused then ([`Error::NoMsiWindow`]).

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::{DeviceHandle, DomainId, Error, Iommu, OwnerId, ReservedKind, Result, Target, UnitId};
use crate::addr::Iova;
use crate::irq::{InterruptRemapper, InterruptTarget, RemappedInterrupt};
use crate::pagetable::Prot;
use crate::unit::{DeviceId, TranslationUnit};

/// A remapped interrupt allocated with [`Iommu::alloc_interrupt`]; never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InterruptId(u64);

/// One live interrupt and who may touch it.
#[derive(Debug)]
struct Live {
    device: DeviceHandle,
    owner: OwnerId,
    irq: RemappedInterrupt,
}

/// The object model's interrupt records.
pub(super) struct Interrupts {
    remappers: BTreeMap<UnitId, Box<dyn InterruptRemapper + Send + Sync>>,
    /// The embedder's explicit opt-in to owners on units without a remapper.
    unsafe_allowed: bool,
    live: BTreeMap<InterruptId, Live>,
    next: u64,
}

impl Interrupts {
    /// The live interrupts, for tests that prove a refusal changed nothing.
    #[cfg(test)]
    pub(super) fn snapshot(&self) -> alloc::string::String {
        alloc::format!("{:?}/{}", self.live, self.unsafe_allowed)
    }

    pub(super) const fn new() -> Self {
        Self {
            remappers: BTreeMap::new(),
            unsafe_allowed: false,
            live: BTreeMap::new(),
            next: 0,
        }
    }

    /// Whether a device of `unit` may be given an owner.
    pub(super) fn may_own(&self, unit: UnitId) -> bool {
        self.unsafe_allowed || self.remappers.contains_key(&unit)
    }

    pub(super) fn isolated(&self, unit: UnitId) -> bool {
        self.remappers.contains_key(&unit)
    }
}

impl<U: TranslationUnit> Iommu<U> {
    /// Registers the interrupt remapper of `unit`'s devices. From then on their owners can
    /// allocate interrupts that only those devices can raise.
    ///
    /// Refused for an unknown unit and for a unit that has one already.
    pub fn set_interrupt_remapper(
        &mut self,
        unit: UnitId,
        remapper: Box<dyn InterruptRemapper + Send + Sync>,
    ) -> Result<()> {
        self.unit(unit)?;
        if self.interrupts.remappers.contains_key(&unit) {
            return Err(Error::RemapperPresent(unit));
        }
        self.interrupts.remappers.insert(unit, remapper);
        log::debug!("interrupts of {unit:?} are isolated by its remapper");
        Ok(())
    }

    /// Allows (or forbids again) giving devices to owners on units without an interrupt
    /// remapper. **Insecure**: such a device can raise any interrupt of the machine; every
    /// [`Status`](super::Status) says so while one is owned. Forbidding again does not take
    /// devices back.
    pub fn allow_unsafe_interrupts(&mut self, allowed: bool) {
        if allowed {
            log::warn!("devices may be owned without interrupt isolation (INSECURE)");
        }
        self.interrupts.unsafe_allowed = allowed;
    }

    /// Whether `unit`'s devices' interrupts are isolated (a remapper is registered).
    pub fn interrupts_isolated(&self, unit: UnitId) -> Result<bool> {
        self.unit(unit)?;
        Ok(self.interrupts.isolated(unit))
    }

    /// Sets up an interrupt that only `device`, owned by `owner`, can raise, delivered to
    /// `target`; returns its id and what to program into the device (the MSI address and data).
    ///
    /// The interrupt is pinned to the id the unit sees the device's requests with: its last
    /// registered alias (the bridge nearest the root, see [`Iommu::add_alias`]), or its own id.
    /// Refused unless `owner` owns the device and its unit has a remapper.
    pub fn alloc_interrupt(
        &mut self,
        device: DeviceHandle,
        owner: OwnerId,
        target: InterruptTarget,
    ) -> Result<(InterruptId, RemappedInterrupt)> {
        let d = self.device(device)?;
        if d.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        self.remapper(d.unit)?;
        let doorbell = match d.target {
            Target::Domain(domain) => self.map_doorbell(d.unit, domain)?,
            _ => None,
        };
        let seen_as = self.requester_seen(device, d.id);
        let irq = match self.remapper(d.unit)?.allocate(seen_as, target) {
            Ok(irq) => irq,
            Err(e) => {
                self.unmap_doorbell(d.unit, doorbell);
                return Err(e.into());
            }
        };
        let id = InterruptId(self.interrupts.next);
        self.interrupts.next += 1;
        self.interrupts.live.insert(id, Live { device, owner, irq });
        log::debug!("interrupt {id:?} of {device:?} for {owner:?}: {irq}");
        Ok((id, irq))
    }

    /// Delivers `owner`'s interrupt `id` to `target` from now on; returns it as it now is.
    pub fn retarget_interrupt(
        &mut self,
        owner: OwnerId,
        id: InterruptId,
        target: InterruptTarget,
    ) -> Result<RemappedInterrupt> {
        let (unit, mut irq) = self.owned_interrupt(owner, id)?;
        self.remapper(unit)?.retarget(&mut irq, target)?;
        if let Some(live) = self.interrupts.live.get_mut(&id) {
            live.irq = irq;
        }
        Ok(irq)
    }

    /// Tears `owner`'s interrupt `id` down: an MSI naming it afterwards is blocked.
    pub fn free_interrupt(&mut self, owner: OwnerId, id: InterruptId) -> Result<()> {
        let (unit, irq) = self.owned_interrupt(owner, id)?;
        self.remapper(unit)?.free(irq)?;
        self.interrupts.live.remove(&id);
        Ok(())
    }

    /// The live interrupts of `device`.
    pub fn interrupts_of(&self, device: DeviceHandle) -> impl Iterator<Item = InterruptId> + '_ {
        self.interrupts
            .live
            .iter()
            .filter(move |(_, l)| l.device == device)
            .map(|(id, _)| *id)
    }

    /// Frees every interrupt of `device` (at release). A remapper failure stops it with the
    /// error; what was freed stays freed (the device only ever loses interrupts).
    pub(super) fn free_interrupts_of(
        &mut self,
        device: DeviceHandle,
        owner: OwnerId,
    ) -> Result<()> {
        let ids: Vec<InterruptId> = self.interrupts_of(device).collect();
        for id in ids {
            self.free_interrupt(owner, id)?;
        }
        Ok(())
    }

    /// Owned devices on units without a remapper (only possible after
    /// [`Iommu::allow_unsafe_interrupts`]).
    pub(super) fn unisolated_owned_devices(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.owner.is_some() && !self.interrupts.isolated(d.unit))
            .count()
    }

    fn owned_interrupt(
        &self,
        owner: OwnerId,
        id: InterruptId,
    ) -> Result<(UnitId, RemappedInterrupt)> {
        let live = self
            .interrupts
            .live
            .get(&id)
            .ok_or(Error::UnknownInterrupt(id))?;
        if live.owner != owner {
            return Err(Error::NotInterruptOwner(id));
        }
        Ok((self.device(live.device)?.unit, live.irq))
    }

    fn remapper(&self, unit: UnitId) -> Result<&dyn InterruptRemapper> {
        self.interrupts
            .remappers
            .get(&unit)
            .map(|r| -> &dyn InterruptRemapper { &**r })
            .ok_or(Error::NoInterruptRemapper(unit))
    }

    /// Maps `unit`'s remapper doorbell into paging domain `domain` (once), for the MSIs of its
    /// devices; returns the domain when this call mapped it, for [`Self::unmap_doorbell`] to
    /// undo if what follows is refused. Nothing to do where MSIs are not DMA (no doorbell) or
    /// for a non-paging domain (nested or shared: the guest's or the CPU's tables decide).
    pub(super) fn map_doorbell(
        &mut self,
        unit: UnitId,
        domain: DomainId,
    ) -> Result<Option<DomainId>> {
        let Some(page) = self.remapper(unit)?.doorbell() else {
            return Ok(None);
        };
        let dom = self
            .domains
            .get(&domain)
            .ok_or(Error::UnknownDomain(domain))?;
        let Some(space) = dom.layout() else {
            return Ok(None);
        };
        if dom.doorbell_mapped {
            return Ok(None);
        }
        let page_last = page.as_u64() + 0xfff;
        let inside_window = space.reserved().iter().any(|r| {
            r.kind == ReservedKind::MsiDoorbell
                && r.region.start <= page.as_u64()
                && page_last <= r.region.last
        });
        if !inside_window {
            return Err(Error::NoMsiWindow {
                domain,
                doorbell: page.as_u64(),
            });
        }
        self.unit(unit)?.map(
            &dom.hw,
            Iova::new(page.as_u64()),
            page,
            0x1000,
            Prot::READ_WRITE,
        )?;
        if let Some(dom) = self.domains.get_mut(&domain) {
            dom.doorbell_mapped = true;
        }
        log::debug!("MSI doorbell {page:?} mapped into {domain:?}");
        Ok(Some(domain))
    }

    /// Undoes a [`Self::map_doorbell`] of this call after a later refusal, so that the refused
    /// call changed nothing. The unmap of a page this model mapped cannot be refused by the
    /// page-table rules; a hardware failure of its invalidation leaves the doorbell mapped,
    /// which gives no device anything but the remapper's own checks.
    pub(super) fn unmap_doorbell(&mut self, unit: UnitId, mapped: Option<DomainId>) {
        let Some(domain) = mapped else { return };
        let Ok(Some(page)) = self.remapper(unit).map(|r| r.doorbell()) else {
            return;
        };
        let (Ok(u), Some(dom)) = (self.unit(unit), self.domains.get(&domain)) else {
            return;
        };
        if u.unmap(&dom.hw, Iova::new(page.as_u64()), 0x1000).is_ok() {
            if let Some(dom) = self.domains.get_mut(&domain) {
                dom.doorbell_mapped = false;
            }
        }
    }

    /// The id `device`'s requests reach its unit with: the last alias registered for it, or its
    /// own id.
    fn requester_seen(&self, device: DeviceHandle, own: DeviceId) -> DeviceId {
        self.aliases
            .iter()
            .rev()
            .find(|(d, _)| *d == device)
            .map_or(own, |(_, alias)| *alias)
    }
}
