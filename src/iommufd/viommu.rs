//! vIOMMUs and nested domains: what a hypervisor uses to let a guest drive its own stage 1 (its
//! own IOMMU page tables, in guest-physical memory) over a stage-2 nest parent it controls.
//!
//! The flow, as in iommufd:
//! 1. [`Iommu::alloc_nest_parent`]: guest physical → host physical, mapped by the hypervisor.
//! 2. [`Iommu::alloc_viommu`] on it: the guest's slice of the unit (its VMID / domain ids).
//! 3. [`Iommu::set_virtual_device`]: device `D` appears to the guest as virtual id `v` (the
//!    stream id / requester id the guest's virtual IOMMU sees).
//! 4. When the guest writes its vSTE / PASID entry for `v`: [`Iommu::alloc_nested_domain`] with
//!    those words (validated field by field by the unit) and [`Iommu::attach`] of `D` to it.
//! 5. When the guest queues invalidations: [`Iommu::invalidate`] with its commands as written;
//!    each is checked (only the guest's own devices and tags), translated and issued.

extern crate alloc;

use alloc::collections::BTreeMap;

use super::shadow::Shadowing;
use super::{DeviceHandle, DomainId, DomainKind, Error, Iommu, OwnerId, Result, Target, UnitId};
use crate::unit::{Forwarded, GuestEntry, TranslationUnit};

/// A vIOMMU allocated with [`Iommu::alloc_viommu`]; never reused after destruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViommuId(u64);

pub(super) struct Viommu<V> {
    pub(super) unit: UnitId,
    pub(super) owner: OwnerId,
    pub(super) parent: DomainId,
    pub(super) backing: Backing<V>,
    /// The guest's virtual device ids and the devices behind them.
    pub(super) devices: BTreeMap<u32, DeviceHandle>,
    /// Nested (or shadow) domains built on it; destruction waits for zero.
    pub(super) nested: usize,
}

/// What stands behind a vIOMMU's guest translations.
pub(super) enum Backing<V> {
    /// The unit nests them in hardware (or translates them by the parent alone).
    Hardware(V),
    /// The model shadows them in paging domains of its own ([`super::shadow`]).
    Shadow(Shadowing),
}

impl<U: TranslationUnit> Iommu<U> {
    /// Allocates a vIOMMU for `owner` over its nest parent `parent` (see
    /// [`Iommu::alloc_nest_parent`]), on the parent's unit.
    pub fn alloc_viommu(&mut self, owner: OwnerId, parent: DomainId) -> Result<ViommuId> {
        let dom = self.domain(parent, owner)?;
        if !matches!(
            dom.kind,
            DomainKind::Paging {
                nest_parent: true,
                ..
            } | DomainKind::Vm { .. }
        ) {
            return Err(Error::NotNestParent(parent));
        }
        let unit = dom.unit;
        let hw = self.unit(unit)?.new_viommu(&dom.hw)?;
        if let Some(viommus) = self
            .domains
            .get_mut(&parent)
            .and_then(|d| d.kind.nest_parent_users())
        {
            *viommus += 1;
        }
        Ok(self.insert_viommu(unit, owner, parent, Backing::Hardware(hw)))
    }

    pub(super) fn insert_viommu(
        &mut self,
        unit: UnitId,
        owner: OwnerId,
        parent: DomainId,
        backing: Backing<U::VIommu>,
    ) -> ViommuId {
        let id = ViommuId(self.next_viommu);
        self.next_viommu += 1;
        self.viommus.insert(
            id,
            Viommu {
                unit,
                owner,
                parent,
                backing,
                devices: BTreeMap::new(),
                nested: 0,
            },
        );
        id
    }

    /// Destroys `owner`'s vIOMMU `id` and its virtual-id table. Refused while nested domains
    /// built on it exist.
    pub fn destroy_viommu(&mut self, owner: OwnerId, id: ViommuId) -> Result<()> {
        let v = self.viommu(id, owner)?;
        if v.nested > 0 {
            return Err(Error::ViommuBusy {
                viommu: id,
                nested: v.nested,
            });
        }
        if !v.devices.is_empty() {
            return Err(Error::ViommuHasDevices {
                viommu: id,
                devices: v.devices.len(),
            });
        }
        let mut v = self.viommus.remove(&id).ok_or(Error::UnknownViommu(id))?;
        let unit = self.unit(v.unit)?;
        let parent = v.parent;
        if let Backing::Hardware(hw) = v.backing {
            if let Err((hw, e)) = unit.destroy_viommu(hw) {
                v.backing = Backing::Hardware(hw);
                self.viommus.insert(id, v);
                return Err(e.into());
            }
        }
        if let Some(viommus) = self
            .domains
            .get_mut(&parent)
            .and_then(|d| d.kind.nest_parent_users())
        {
            *viommus = viommus.saturating_sub(1);
        }
        Ok(())
    }

    /// Makes `device` (owned by `owner`, on the vIOMMU's unit) known to the guest of vIOMMU
    /// `id` as `virtual_id`. A device has at most one virtual id in all vIOMMUs, and a virtual id
    /// names at most one device.
    pub fn set_virtual_device(
        &mut self,
        owner: OwnerId,
        id: ViommuId,
        device: DeviceHandle,
        virtual_id: u32,
    ) -> Result<()> {
        let d = self.device(device)?;
        if d.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        let v = self.viommu(id, owner)?;
        if v.unit != d.unit {
            return Err(Error::ViommuWrongUnit { viommu: id, device });
        }
        if v.devices.contains_key(&virtual_id) {
            return Err(Error::VirtualIdInUse {
                viommu: id,
                virtual_id,
            });
        }
        if let Some(viommu) = self.viommu_of(device) {
            return Err(Error::DeviceInViommu { device, viommu });
        }
        if let Some(v) = self.viommus.get_mut(&id) {
            v.devices.insert(virtual_id, device);
        }
        Ok(())
    }

    /// Forgets `virtual_id` of vIOMMU `id`. Refused while its device is attached to a nested
    /// domain of this vIOMMU (the guest's configuration for it would outlive its name).
    pub fn unset_virtual_device(
        &mut self,
        owner: OwnerId,
        id: ViommuId,
        virtual_id: u32,
    ) -> Result<()> {
        let v = self.viommu(id, owner)?;
        let device = *v.devices.get(&virtual_id).ok_or(Error::UnknownVirtualId {
            viommu: id,
            virtual_id,
        })?;
        if let Target::Domain(dom) = self.device(device)?.target {
            if self
                .domains
                .get(&dom)
                .is_some_and(|d| matches!(d.kind, DomainKind::Nested { viommu } if viommu == id))
            {
                return Err(Error::Busy {
                    domain: dom,
                    users: 1,
                });
            }
        }
        if let Some(v) = self.viommus.get_mut(&id) {
            v.devices.remove(&virtual_id);
        }
        Ok(())
    }

    /// The device behind `virtual_id` in vIOMMU `id`.
    pub fn virtual_device(
        &self,
        owner: OwnerId,
        id: ViommuId,
        virtual_id: u32,
    ) -> Result<DeviceHandle> {
        self.viommu(id, owner)?
            .devices
            .get(&virtual_id)
            .copied()
            .ok_or(Error::UnknownVirtualId {
                viommu: id,
                virtual_id,
            })
    }

    /// A nested domain for `owner` from the guest's configuration words `guest` (its vSTE on
    /// SMMUv3, its PASID-table entry on VT-d) over vIOMMU `id`'s nest parent. The unit
    /// validates every field and refuses ([`UnitError::GuestEntry`](crate::unit::UnitError))
    /// what its hardware would misinterpret. Attach a device that has a virtual id in this
    /// vIOMMU to it with [`Iommu::attach`].
    pub fn alloc_nested_domain(
        &mut self,
        owner: OwnerId,
        id: ViommuId,
        guest: &GuestEntry,
    ) -> Result<DomainId> {
        let v = self.viommu(id, owner)?;
        let Backing::Hardware(vhw) = &v.backing else {
            return Err(Error::Shadowing(id));
        };
        let unit = v.unit;
        let hw = self.unit(unit)?.new_nested(vhw, guest)?;
        if let Some(v) = self.viommus.get_mut(&id) {
            v.nested += 1;
        }
        Ok(self.insert_domain(unit, owner, hw, DomainKind::Nested { viommu: id }))
    }

    /// Forwards the guest's invalidation commands `cmds` (in the hardware's format) through
    /// vIOMMU `id`: each is checked to name only the guest's own devices (virtual ids of this
    /// vIOMMU) and tags, translated, and issued; the first refused one stops the call and
    /// neither it nor those after it are issued. Errors only for a bad vIOMMU; the guest's
    /// mistakes are in [`Forwarded::refused`].
    pub fn invalidate(
        &self,
        owner: OwnerId,
        id: ViommuId,
        cmds: &[U::GuestCommand],
    ) -> Result<Forwarded> {
        let v = self.viommu(id, owner)?;
        let forwarded = match &v.backing {
            Backing::Shadow(s) => self.invalidate_shadow(v, s, cmds)?,
            Backing::Hardware(hw) => {
                let lookup = |virtual_id: u32| {
                    let handle = v.devices.get(&virtual_id)?;
                    self.devices.get(handle.0).map(|d| d.id)
                };
                self.unit(v.unit)?.forward_invalidations(hw, &lookup, cmds)
            }
        };
        self.notify_guest_invalidation(id, cmds.len(), &forwarded);
        Ok(forwarded)
    }

    /// The unit's own object behind `owner`'s vIOMMU `id`, for back-end specific queries (its
    /// VMID / domain ids).
    pub fn viommu_hw(&self, owner: OwnerId, id: ViommuId) -> Result<&U::VIommu> {
        match &self.viommu(id, owner)?.backing {
            Backing::Hardware(hw) => Ok(hw),
            Backing::Shadow(_) => Err(Error::Shadowing(id)),
        }
    }

    /// The nest parent of vIOMMU `id`.
    pub fn viommu_parent(&self, owner: OwnerId, id: ViommuId) -> Result<DomainId> {
        Ok(self.viommu(id, owner)?.parent)
    }

    /// The vIOMMU in which `device` has a virtual id, if any.
    pub(super) fn viommu_of(&self, device: DeviceHandle) -> Option<ViommuId> {
        self.virtual_id_of(device).map(|(id, _)| id)
    }

    /// The vIOMMU in which `device` has a virtual id, and that id.
    pub(super) fn virtual_id_of(&self, device: DeviceHandle) -> Option<(ViommuId, u32)> {
        self.viommus.iter().find_map(|(id, v)| {
            let (&vid, _) = v.devices.iter().find(|(_, h)| **h == device)?;
            Some((*id, vid))
        })
    }

    pub(super) fn viommu(&self, id: ViommuId, owner: OwnerId) -> Result<&Viommu<U::VIommu>> {
        let v = self.viommus.get(&id).ok_or(Error::UnknownViommu(id))?;
        if v.owner != owner {
            return Err(Error::NotViommuOwner(id));
        }
        Ok(v)
    }
}
