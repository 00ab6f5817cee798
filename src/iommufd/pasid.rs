//! PASID attach: a device's requests that carry a PASID (VT-d) / substream id (SMMUv3) can be
//! translated by another domain than its requests without one, e.g. a process's address space
//! shared with the device ([`Iommu::alloc_shared_domain`]).

use super::{DeviceHandle, Error, Iommu, OwnerId, Result, Target};
use crate::unit::{Attachment, TranslationUnit};

impl<U: TranslationUnit> Iommu<U> {
    /// Attaches `device`'s requests with `pasid` to `target` ([`Target::Domain`], or
    /// [`Target::Blocked`] to detach), leaving its other requests as they are.
    ///
    /// Refused unless `owner` owns the device and the domain, and the device is alone in its
    /// group: a PASID is carried by the requests of one function, and an alias (another member
    /// of the group) would reach the domain without its own attach. [`Target::Identity`] is
    /// refused per PASID. The unit refuses PASIDs it does not have.
    pub fn attach_pasid(
        &mut self,
        device: DeviceHandle,
        owner: OwnerId,
        pasid: u32,
        target: Target,
    ) -> Result<()> {
        let d = self.device(device)?;
        if d.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        if self.group_members(d.group).count() > 1 {
            return Err(Error::GroupNotSingleton(d.group));
        }
        if self.aliases.iter().any(|(h, _)| *h == device) {
            // PASIDs travel in PCIe TLP prefixes, which a bridge to conventional PCI drops.
            return Err(Error::Unsupported("PASID for a device with DMA aliases"));
        }
        let old = self
            .pasids
            .get(&(device, pasid))
            .map_or(Target::Blocked, |id| Target::Domain(*id));
        if let Target::Domain(id) = target {
            self.check_domain_for(device, &d, id, owner)?;
        }
        if old == target {
            return Ok(());
        }
        let unit = self.unit(d.unit)?;
        let to = match target {
            Target::Blocked => Attachment::Blocking,
            Target::Identity => return Err(Error::Unsupported("identity for one PASID")),
            Target::Domain(id) => Attachment::Paging(&self.domain(id, owner)?.hw),
        };
        unit.attach_pasid(d.id, pasid, to)?;
        self.count_users(old, target);
        match target {
            Target::Domain(id) => self.pasids.insert((device, pasid), id),
            _ => self.pasids.remove(&(device, pasid)),
        };
        self.notify_attach(device, Some(pasid), d.unit, old, target);
        Ok(())
    }

    /// The PASIDs of `device` attached to a domain.
    pub fn pasids_of(&self, device: DeviceHandle) -> impl Iterator<Item = u32> + '_ {
        self.pasids
            .keys()
            .filter(move |(d, _)| *d == device)
            .map(|(_, p)| *p)
    }
}
