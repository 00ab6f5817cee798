//! The device-centric object model: translation units, devices, isolation groups, owners and
//! domains, with the rules of Linux iommufd, in-process. The user's guide of the crate.
//!
//! # The objects
//!
//! - An [`Iommu`] is the system: one or more *translation units* of one back-end type (VT-d
//!   DRHDs, SMMUv3s), each registered with [`Iommu::add_unit`].
//! - A *device* is registered with [`Iommu::add_device`]: its unit, its hardware [`DeviceId`]
//!   (requester id / stream id, from the firmware's DMAR scopes or `iommu-map`) and its isolation
//!   [`GroupId`]. Registration blocks the device: until an owner attaches it, none of its DMA
//!   reaches memory.
//! - A *group* is the set of devices the hardware cannot tell apart: same requester id, or DMA
//!   aliases (a conventional PCI bridge issues its children's requests with its own id). The
//!   embedder knows this from the bus topology ([`crate::pci::alias_groups`] computes it) and
//!   says so by giving those devices the same [`GroupId`], and registers each alias id with
//!   [`Iommu::add_alias`] so that attaching a device programs every id its DMA arrives with;
//!   devices that alias nothing get a group of their own. Isolation is a property of groups,
//!   not devices.
//! - An *owner* ([`OwnerId`]) is whoever drives a device's DMA: a guest of a hypervisor, a driver
//!   of a unikernel. Ownership is explicit: [`Iommu::claim`] and [`Iommu::release`]. A group has
//!   at most one owner. Only the owner attaches a device; releasing a device blocks it again.
//! - A *domain* says what a device's DMA reaches. [`Target::Blocked`] (nothing),
//!   [`Target::Identity`] (DMA address = physical address; only once the embedder's policy
//!   allows it with [`Iommu::allow_identity`], and only where the unit can, else the unit's
//!   `Unsupported` error comes back as [`Error::Unit`]) and [`Target::Domain`], a
//!   *paging domain* allocated by an owner with [`Iommu::alloc_domain`]: an I/O page table of the
//!   unit plus an [`IovaSpace`] (usable windows, reserved regions such as MSI doorbells and
//!   RMRRs, and the mappings).
//!
//! # Example
//!
//! A hypervisor gives device `00:03.0` to a guest whose RAM is one contiguous host range, then
//! takes it back. Written over any back-end:
//!
//! ```
//! use iommu::addr::{Iova, PhysAddr};
//! use iommu::iommufd::{
//!     GroupId, Iommu, Layout, OwnerId, Region, Reserved, ReservedKind, Result, Target, UnitId,
//! };
//! use iommu::pagetable::Prot;
//! use iommu::unit::{DeviceId, Stage, TranslationUnit};
//!
//! fn give_to_guest<U: TranslationUnit>(
//!     io: &mut Iommu<U>,
//!     unit: UnitId,
//!     ram: PhysAddr,
//!     size: u64,
//! ) -> Result<()> {
//!     let guest = OwnerId(1);
//!     // The unit's interrupt remapper is registered (see "Interrupts" below), so the device
//!     // can be owned. From the PCI topology: 00:03.0 aliases no other device, so it is a
//!     // group of its own.
//!     let dev = io.add_device(unit, DeviceId(0x18), GroupId(0x18))?;
//!     io.claim(dev, guest)?;
//!     let windows = [Region { start: 0, last: (1 << 39) - 1 }];
//!     let msi = [Reserved {
//!         region: Region { start: 0xfee0_0000, last: 0xfeef_ffff },
//!         kind: ReservedKind::MsiDoorbell,
//!     }];
//!     let layout = Layout { windows: &windows, reserved: &msi };
//!     let dom = io.alloc_domain(guest, unit, Stage::Second, 39, &layout)?;
//!     // Guest physical 0 is host `ram`.
//!     io.map(guest, dom, Iova::new(0), ram, size, Prot::READ_WRITE)?;
//!     io.attach(dev, guest, Target::Domain(dom))?;
//!     // ... the guest runs ...
//!     io.release(dev, guest)?; // blocks the device: the domain is no longer in use
//!     io.unmap_all(guest, dom)?;
//!     io.destroy_domain(guest, dom)
//! }
//! ```
//!
//! # Group viability
//!
//! Attaching a device to anything but [`Target::Blocked`] is refused
//! ([`Error::GroupNotViable`]) unless every other device of its group is either unowned (and
//! therefore blocked) or owned by the same owner and attached to the same target or blocked.
//! "Or blocked" lets an owner move a group device by device; a blocked member cannot reach the
//! target's memory through its own id, and its aliased DMA already reaches only what the owner
//! mapped. A device cannot join a group that has an owned member ([`Error::GroupInUse`]).
//!
//! # Map and unmap (the iommufd rules)
//!
//! - [`Iommu::map`] refuses a range outside every window ([`Error::OutsideAperture`]), touching
//!   a reserved region ([`Error::ReservedRegion`]) or overlapping a mapping
//!   ([`Error::AlreadyMapped`]).
//! - [`Iommu::unmap`] removes every mapping inside the range and returns the total bytes; it
//!   refuses a range that would cut a mapping ([`Error::WouldCut`]) and a range with nothing
//!   mapped ([`Error::NothingMapped`]). [`Iommu::unmap_all`] empties a domain and returns 0 on
//!   an empty one, and so does an unmap of the whole space (`0`, `u64::MAX`: iommufd's
//!   unmap-all idiom). When an unmap returns, the unit has invalidated its caches: no DMA
//!   through the removed range can succeed any more.
//! - A domain wider than the unit's tables at its stage is refused
//!   ([`Error::InputBitsBeyondUnit`]), never narrowed behind the caller's back; so every window
//!   ends inside the table and [`Iommu::map_anywhere`] only picks addresses the unit can map.
//! - A vIOMMU that still names devices by virtual id cannot be destroyed
//!   ([`Error::ViommuHasDevices`]), as an iommufd vDEVICE holds its vIOMMU.
//! - [`Iommu::map_anywhere`] picks the lowest free IOVA aligned to the length (rounded up to a
//!   power of two, at least 4 KiB) in any window, avoiding reserved regions and mappings.
//!
//! # Lifetimes and errors
//!
//! A domain attached to any device cannot be destroyed ([`Error::Busy`]). Every call returns one
//! [`Error`] on refusal and then has changed nothing, neither here nor in the hardware: all
//! checks run before the unit is asked, and the unit itself changes nothing when it refuses.
//!
//! # Concurrency
//!
//! The *data path* takes `&self` and runs on every CPU at once: [`Iommu::map`],
//! [`Iommu::map_anywhere`], [`Iommu::unmap`], [`Iommu::unmap_all`], [`Iommu::iova_to_phys`],
//! [`Iommu::flush`], [`Iommu::invalidate`] (a guest's invalidations) and the queries. Different
//! domains share nothing on it but the read-only object tables; within a domain, ranges in
//! different 2 MiB stripes take different locks, held only around the bookkeeping, never across
//! the unit's table writes and invalidations (those are lock-free in the back-ends); overlapping
//! requests are decided as if one came after the other: exactly one map of an IOVA wins, and the
//! no-cut unmap rule holds. The protocol and why it is correct: [`IovaSpace`].
//!
//! The *control path* takes `&mut self`: devices, aliases, claim, release, attach, domains,
//! vIOMMUs, interrupts. Those calls check rules across objects (group viability, owners,
//! users of a domain) that must not change while they run, and are rare next to maps. An
//! embedder on several CPUs holds the `Iommu` in a reader-writer lock: data-path calls under
//! the read side run in parallel, a control-path call takes the write side (waiting for the
//! data-path calls under way, which are bounded). A domain's destruction therefore never races
//! a map into it.
//!
//! # Status and no-IOMMU mode
//!
//! [`Iommu::status`] reports what is confined; its text starts with `INSECURE` while a device is
//! attached to identity. A machine without any unit can still do DMA through
//! [`InsecureNoIommu`] (DMA address = physical address, nothing confined): it is refused when a
//! unit is present ([`Error::IommuPresent`]) unless enabled by
//! [`InsecureNoIommu::enable_despite_iommu`], and every status it gives says `INSECURE`.
//!
//! # Nesting and vIOMMUs
//!
//! A hypervisor whose guest drives its own (virtual) IOMMU allocates a nest parent
//! ([`Iommu::alloc_nest_parent`]: guest physical → host physical), a vIOMMU on it
//! ([`Iommu::alloc_viommu`]), gives it the guest's virtual device ids
//! ([`Iommu::set_virtual_device`]), builds nested domains from the guest's own configuration
//! words ([`Iommu::alloc_nested_domain`]) and forwards the guest's invalidation commands
//! ([`Iommu::invalidate`]). The units validate guest data and commands; the model checks that
//! only the guest's own devices are named. A parent in use by a vIOMMU, a vIOMMU with nested
//! domains, a virtual id whose device is attached to a nested domain, and a device with a
//! virtual id are all kept (busy) until what depends on them is gone. See the `viommu` module.
//!
//! A hypervisor that shares one stage-2 table between its CPU and the IOMMU (the table of
//! VTTBR_EL2, built with the core's VMSA stage-2 format) allocates its domain with
//! [`Iommu::alloc_vm_domain`] instead of a nest parent: the embedder changes that table itself
//! and calls [`Iommu::flush`]; it is a nest parent too.
//!
//! Where the unit cannot nest, a *shadowing* vIOMMU ([`Iommu::alloc_shadow_viommu`]) gives the
//! guest the same: its tables stay in its RAM, and each invalidation it forwards through
//! [`Iommu::invalidate`] brings a shadow domain ([`Iommu::alloc_shadow_domain`]) in step with
//! them. See [`shadow`].
//!
//! # PASIDs and shared CPU tables
//!
//! [`Iommu::attach_pasid`] attaches one PASID of a device (alone in its group) to a domain,
//! e.g. one from [`Iommu::alloc_shared_domain`], which translates through a CPU page table the
//! embedder owns; after changing that table the embedder calls [`Iommu::flush`].
//!
//! # Interrupts
//!
//! A device given to an owner must not be able to raise other owners' interrupts, so a unit's
//! devices can only be claimed once the embedder has registered the unit's interrupt remapper
//! ([`Iommu::set_interrupt_remapper`]: the VT-d unit with interrupt remapping on, or the GICv3
//! ITS its devices' MSIs go to), or has said by name that interrupts may be unsafe
//! ([`Iommu::allow_unsafe_interrupts`]; every [`Status`] then says `INSECURE` while such a device
//! is owned) — the rule Linux VFIO applies. The owner allocates a device's interrupts
//! ([`Iommu::alloc_interrupt`]: pinned to the id the unit sees the device with, its alias behind
//! a bridge), retargets and frees them; nobody else can name them, and releasing the device
//! frees them.
//!
//! # Notifiers
//!
//! An embedder that emulates an IOMMU for a guest subscribes to a unit's or a domain's events
//! ([`Iommu::subscribe`]): maps, unmaps, attachments, faults and guest invalidations, told
//! synchronously once they happened. The contract (who hears what, in which order): [`notify`].
//!
//! # ATS
//!
//! A device with PCIe ATS caches translations in its own device-TLB. The embedder says which
//! devices the firmware lets use it ([`Iommu::allow_ats`]) and the owner turns it on with
//! [`Iommu::enable_ats`], handing over an [`AtsControl`] for the device's capability; the model
//! keeps the order the hardware needs (the unit accepts translation requests before the device
//! makes any; the device stops before the unit does) and switches ATS off on release. See the
//! `ats` module.
//!
//! # Hardware info
//!
//! [`Iommu::hardware_info`] reports what a unit can do and its raw identification registers,
//! for a VMM that builds a matching virtual IOMMU.

extern crate alloc;

mod ats;
#[cfg(all(feature = "host-hal", not(loom)))]
pub mod bench;
#[cfg(all(test, feature = "host-hal", not(loom)))]
mod deferred_tests;
mod error;
mod faults;
mod interrupts;
mod iova;
#[cfg(all(test, feature = "host-hal", not(loom)))]
mod model_tests;
pub mod notify;
mod pasid;
pub mod shadow;
mod status;
#[cfg(all(feature = "host-hal", not(loom)))]
pub mod sweep;
#[cfg(test)]
pub(crate) mod tests;
mod viommu;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::num::NonZeroUsize;

pub use ats::AtsControl;
pub use error::{Error, Result};
pub use faults::{Routed, RoutedFault, Taken};
pub use interrupts::InterruptId;
pub use iova::{
    IovaSpace, Layout, Mapping, Region, Reserved, ReservedKind, MIN_ALIGN, PENDING_PRUNES,
};
pub use notify::{Event, Notifier, NotifierId, Replay, Subject};
pub use shadow::{GuestFormat, GuestMemory, GuestTable, ShadowStats};
pub use status::{InsecureNoIommu, Protection, Status};
pub use viommu::ViommuId;

use interrupts::Interrupts;
pub(crate) use iova::Emptied;
use iova::Unmapping;
use viommu::Viommu;

use crate::addr::{Iova, PhysAddr};
use crate::pagetable::{Gather, Prot};
use crate::unit::{Attachment, CpuTable, DeviceId, HardwareInfo, Stage, TranslationUnit, VmTable};

/// A unit registered with [`Iommu::add_unit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(usize);

/// A device registered with [`Iommu::add_device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceHandle(usize);

/// A paging domain allocated with [`Iommu::alloc_domain`]; never reused after destruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(u64);

/// An isolation group, named by the embedder: devices that alias each other's DMA share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

/// Whoever drives a device's DMA (a guest, a driver), named by the embedder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerId(pub u64);

/// What a device is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every DMA is refused: the state of an unowned device.
    Blocked,
    /// DMA addresses are physical addresses (where the unit allows it).
    Identity,
    /// DMA addresses are translated by this paging domain.
    Domain(DomainId),
}

/// What the object model knows of one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceState {
    /// Its unit.
    pub unit: UnitId,
    /// Its hardware id on that unit.
    pub id: DeviceId,
    /// Its isolation group.
    pub group: GroupId,
    /// Its owner, if claimed.
    pub owner: Option<OwnerId>,
    /// What it is attached to.
    pub target: Target,
}

struct Domain<D> {
    unit: UnitId,
    owner: OwnerId,
    hw: D,
    kind: DomainKind,
    /// Devices and (device, PASID) pairs attached to it; destruction waits for zero.
    users: usize,
    /// The interrupt remapper's doorbell page is mapped (IOVA = its physical address) for the
    /// MSIs of the devices attached to it.
    doorbell_mapped: bool,
}

/// What a domain is, beyond its unit's hardware object.
enum DomainKind {
    /// An I/O page table the owner maps into; a nest parent when `viommus` may build on it.
    Paging {
        space: IovaSpace,
        nest_parent: bool,
        /// vIOMMUs using it as their nest parent; destruction waits for zero.
        viommus: usize,
    },
    /// An I/O page table whose IOVAs the DMA API owns (`dma::DmaDevice` maps into it through
    /// the unit); the space keeps only its windows and reserved regions.
    Dma { space: IovaSpace },
    /// Translates through a CPU table the embedder owns; mapped by changing that table.
    Shared,
    /// Translates through a VM's stage-2 table the embedder owns and shares with the CPU
    /// (`VTTBR_EL2`); mapped by changing that table. Always a nest parent.
    Vm {
        /// vIOMMUs using it as their nest parent; destruction waits for zero.
        viommus: usize,
    },
    /// Guest stage 1 (from guest data) over the nest parent of `viommu`.
    Nested { viommu: ViommuId },
    /// The shadow of a guest's table in shadowing vIOMMU `viommu`: an I/O page table of ours
    /// that only the guest's invalidations change (see [`shadow`]).
    Shadow {
        space: IovaSpace,
        viommu: ViommuId,
        table: GuestTable,
    },
}

/// The kind of a paging domain the owner maps into, a nest parent or not.
fn paging(nest_parent: bool) -> impl FnOnce(IovaSpace) -> DomainKind {
    move |space| DomainKind::Paging {
        space,
        nest_parent,
        viommus: 0,
    }
}

impl DomainKind {
    /// The count of vIOMMUs building on a domain that may be a nest parent.
    /// (A shadowing vIOMMU may build on any paging domain.)
    fn nest_parent_users(&mut self) -> Option<&mut usize> {
        match self {
            DomainKind::Paging { viommus, .. } | DomainKind::Vm { viommus } => Some(viommus),
            _ => None,
        }
    }
}

/// The system's IOMMUs and the objects over them. See the [module docs](self).
pub struct Iommu<U: TranslationUnit> {
    units: Vec<U>,
    /// Devices are never unregistered, so a handle is an index.
    devices: Vec<DeviceState>,
    domains: BTreeMap<DomainId, Domain<U::Domain>>,
    next_domain: u64,
    viommus: BTreeMap<ViommuId, Viommu<U::VIommu>>,
    next_viommu: u64,
    /// Alias ids of devices (device, alias), see [`Iommu::add_alias`].
    aliases: Vec<(DeviceHandle, DeviceId)>,
    /// (device, PASID) pairs attached to a domain; a pair not here is blocked.
    pasids: BTreeMap<(DeviceHandle, u32), DomainId>,
    /// Whether owners may attach devices to identity; off until the embedder allows it.
    identity_allowed: bool,
    /// Interrupt remappers of the units, and the interrupts owners allocated.
    interrupts: Interrupts,
    /// Where drained faults go.
    faults: faults::FaultRouting,
    /// Who is told of maps, unmaps, attachments, faults and guest invalidations.
    notifiers: notify::Notifiers,
    /// Devices the firmware lets use ATS ([`Iommu::allow_ats`]).
    ats_allowed: BTreeSet<DeviceHandle>,
    /// Devices with ATS on, and the embedder's switch for each (see [`ats`]).
    ats: BTreeMap<DeviceHandle, ats::Switch>,
}

impl<U: TranslationUnit> Default for Iommu<U> {
    fn default() -> Self {
        Self::new()
    }
}

impl<U: TranslationUnit> Iommu<U> {
    /// A system with no unit yet.
    pub const fn new() -> Self {
        Self {
            units: Vec::new(),
            devices: Vec::new(),
            domains: BTreeMap::new(),
            next_domain: 0,
            viommus: BTreeMap::new(),
            next_viommu: 0,
            aliases: Vec::new(),
            pasids: BTreeMap::new(),
            identity_allowed: false,
            interrupts: Interrupts::new(),
            faults: faults::FaultRouting::new(),
            notifiers: notify::Notifiers::new(),
            ats_allowed: BTreeSet::new(),
            ats: BTreeMap::new(),
        }
    }

    /// Allows or forbids [`Target::Identity`] (forbidden at first): identity gives a device all
    /// of memory, which a hypervisor must never grant a guest's device but a unikernel may grant
    /// its own trusted drivers. Devices already in identity stay there.
    pub fn allow_identity(&mut self, allowed: bool) {
        self.identity_allowed = allowed;
    }

    /// Registers a translation unit (already initialised by its back-end).
    pub fn add_unit(&mut self, unit: U) -> UnitId {
        self.units.push(unit);
        UnitId(self.units.len() - 1)
    }

    /// The unit registered as `id`, for back-end specific calls (fault draining, ...).
    pub fn unit(&self, id: UnitId) -> Result<&U> {
        self.units.get(id.0).ok_or(Error::UnknownUnit(id))
    }

    /// Registers device `id` of `unit` in `group`, and blocks it.
    ///
    /// Refused if the unit already has this id, if the group's other members are on another
    /// unit, or if a member of the group is owned.
    pub fn add_device(
        &mut self,
        unit: UnitId,
        id: DeviceId,
        group: GroupId,
    ) -> Result<DeviceHandle> {
        let u = self.unit(unit)?;
        if self.devices.iter().any(|d| d.unit == unit && d.id == id) {
            return Err(Error::DuplicateDevice { unit, id });
        }
        if let Some(other) = self
            .users_of_id(unit, id)
            .find(|h| self.devices[h.0].group != group)
        {
            return Err(Error::AliasCrossesGroups {
                id,
                group: self.devices[other.0].group,
            });
        }
        for d in self.devices.iter().filter(|d| d.group == group) {
            if d.unit != unit {
                return Err(Error::GroupSpansUnits(group));
            }
            if d.owner.is_some() {
                return Err(Error::GroupInUse(group));
            }
        }
        // Establishes "unowned means blocked" whatever firmware left in the unit's tables.
        u.attach(id, Attachment::Blocking)?;
        self.devices.push(DeviceState {
            unit,
            id,
            group,
            owner: None,
            target: Target::Blocked,
        });
        Ok(DeviceHandle(self.devices.len() - 1))
    }

    /// Adds `alias`, another id `device`'s DMA reaches its unit with (a bridge's requester id:
    /// see [`crate::pci::dma_aliases`]), and blocks it. From then on, attaching the device
    /// programs the alias too; devices of one group may share an alias, which then follows
    /// whichever of them is attached (group viability makes that one target).
    ///
    /// Refused while a member of the group is owned, for an id the device already has, and for
    /// an id that belongs to a device of another group (they would be one group).
    pub fn add_alias(&mut self, device: DeviceHandle, alias: DeviceId) -> Result<()> {
        let d = self.device(device)?;
        if self
            .devices
            .iter()
            .any(|m| m.group == d.group && m.owner.is_some())
        {
            return Err(Error::GroupInUse(d.group));
        }
        if self.ids_of(device, &d).any(|id| id == alias) {
            return Err(Error::DuplicateDevice {
                unit: d.unit,
                id: alias,
            });
        }
        if let Some(other) = self
            .users_of_id(d.unit, alias)
            .find(|h| self.devices[h.0].group != d.group)
        {
            return Err(Error::AliasCrossesGroups {
                id: alias,
                group: self.devices[other.0].group,
            });
        }
        self.unit(d.unit)?.attach(alias, Attachment::Blocking)?;
        self.aliases.push((device, alias));
        Ok(())
    }

    /// The ids the unit sees `device` with: its own first, then its aliases.
    pub fn device_ids(&self, device: DeviceHandle) -> Result<Vec<DeviceId>> {
        let d = self.device(device)?;
        Ok(self.ids_of(device, &d).collect())
    }

    fn ids_of<'a>(
        &'a self,
        device: DeviceHandle,
        d: &DeviceState,
    ) -> impl Iterator<Item = DeviceId> + 'a {
        core::iter::once(d.id).chain(
            self.aliases
                .iter()
                .filter(move |(h, _)| *h == device)
                .map(|(_, a)| *a),
        )
    }

    /// The devices on `unit` whose own id or an alias is `id`.
    fn users_of_id(&self, unit: UnitId, id: DeviceId) -> impl Iterator<Item = DeviceHandle> + '_ {
        let own = self
            .devices
            .iter()
            .enumerate()
            .filter(move |(_, d)| d.unit == unit && d.id == id)
            .map(|(i, _)| DeviceHandle(i));
        let aliased = self
            .aliases
            .iter()
            .filter(move |(h, a)| *a == id && self.devices[h.0].unit == unit)
            .map(|(h, _)| *h);
        own.chain(aliased)
    }

    /// What `id` on `unit` must translate through if `device` moves to `target`: `target`
    /// itself, unless that is blocked and another device sharing the id is attached elsewhere
    /// (its group's viability makes that the only other target).
    fn target_of_id(
        &self,
        unit: UnitId,
        id: DeviceId,
        device: DeviceHandle,
        target: Target,
    ) -> Target {
        if target != Target::Blocked {
            return target;
        }
        self.users_of_id(unit, id)
            .filter(|h| *h != device)
            .map(|h| self.devices[h.0].target)
            .find(|t| *t != Target::Blocked)
            .unwrap_or(Target::Blocked)
    }

    fn attachment(&self, target: Target) -> Result<Attachment<'_, U::Domain>> {
        Ok(match target {
            Target::Blocked => Attachment::Blocking,
            Target::Identity => Attachment::Identity,
            Target::Domain(id) => {
                Attachment::Paging(&self.domains.get(&id).ok_or(Error::UnknownDomain(id))?.hw)
            }
        })
    }

    /// Points every id of `device` (own and aliases) at what it must translate through once the
    /// device is on `target`. If the unit refuses one, the ids already switched are pointed back
    /// at what they had, so the hardware is as before.
    fn program(&self, device: DeviceHandle, d: &DeviceState, target: Target) -> Result<()> {
        let unit = self.unit(d.unit)?;
        let ids: Vec<DeviceId> = self.ids_of(device, d).collect();
        for (done, id) in ids.iter().enumerate() {
            let to = self.target_of_id(d.unit, *id, device, target);
            if let Err(e) = unit.attach(*id, self.attachment(to)?) {
                for back in &ids[..done] {
                    let was = self.target_of_id(d.unit, *back, device, d.target);
                    // Best effort: these ids held `was` a moment ago, so the unit accepts it
                    // again unless the hardware itself failed, which `e` reports.
                    let _ = self.attachment(was).map(|a| unit.attach(*back, a));
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The device registered as `id` on `unit`.
    pub fn find_device(&self, unit: UnitId, id: DeviceId) -> Option<DeviceHandle> {
        self.devices
            .iter()
            .position(|d| d.unit == unit && d.id == id)
            .map(DeviceHandle)
    }

    /// What is known of `device`.
    pub fn device(&self, device: DeviceHandle) -> Result<DeviceState> {
        self.devices
            .get(device.0)
            .copied()
            .ok_or(Error::UnknownDevice(device))
    }

    /// The devices of `group`.
    pub fn group_members(&self, group: GroupId) -> impl Iterator<Item = DeviceHandle> + '_ {
        self.devices
            .iter()
            .enumerate()
            .filter(move |(_, d)| d.group == group)
            .map(|(i, _)| DeviceHandle(i))
    }

    /// Makes `owner` the owner of `device` (still blocked).
    ///
    /// Refused if the device is owned (even by `owner`) or another member of its group has a
    /// different owner.
    pub fn claim(&mut self, device: DeviceHandle, owner: OwnerId) -> Result<()> {
        let claimed = self.try_claim(device, owner);
        logged("claim", device, owner, &claimed);
        claimed
    }

    fn try_claim(&mut self, device: DeviceHandle, owner: OwnerId) -> Result<()> {
        let d = self.device(device)?;
        if !self.interrupts.may_own(d.unit) {
            return Err(Error::InterruptsNotIsolated(d.unit));
        }
        if let Some(current) = d.owner {
            return Err(Error::AlreadyOwned {
                device,
                owner: current,
            });
        }
        if let Some(other) = self
            .devices
            .iter()
            .filter(|m| m.group == d.group)
            .find_map(|m| m.owner.filter(|o| *o != owner))
        {
            return Err(Error::GroupOwnedByOther {
                group: d.group,
                owner: other,
            });
        }
        self.device_mut(device)?.owner = Some(owner);
        Ok(())
    }

    /// Gives up `owner`'s ownership of `device`, blocking it first (and each of its PASIDs).
    ///
    /// Refused while the device has a virtual id in one of `owner`'s vIOMMUs: its guest could
    /// still name it; [`Iommu::unset_virtual_device`] first. Blocking takes one unit call per
    /// PASID and one for the device: if the hardware fails part-way, what was blocked stays
    /// blocked and the device stays owned (it only ever loses access).
    pub fn release(&mut self, device: DeviceHandle, owner: OwnerId) -> Result<()> {
        let released = self.try_release(device, owner);
        logged("release", device, owner, &released);
        released
    }

    fn try_release(&mut self, device: DeviceHandle, owner: OwnerId) -> Result<()> {
        if self.device(device)?.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        if let Some(viommu) = self.viommu_of(device) {
            return Err(Error::DeviceInViommu { device, viommu });
        }
        if self.ats.contains_key(&device) {
            self.switch_ats_off(device)?;
        }
        self.free_interrupts_of(device, owner)?;
        let pasids: Vec<u32> = self.pasids_of(device).collect();
        for pasid in pasids {
            self.attach_pasid(device, owner, pasid, Target::Blocked)?;
        }
        self.attach(device, owner, Target::Blocked)?;
        self.device_mut(device)?.owner = None;
        Ok(())
    }

    /// Attaches `device`, owned by `owner`, to `target`, replacing what it was attached to.
    ///
    /// Refused unless `owner` owns the device (and the domain, for a paging domain of the same
    /// unit) and the group stays viable (see the [module docs](self)). Re-attaching to the
    /// current target does nothing.
    pub fn attach(&mut self, device: DeviceHandle, owner: OwnerId, target: Target) -> Result<()> {
        let attached = self.try_attach(device, owner, target);
        match &attached {
            Ok(()) => log::debug!("attach: {device:?} of {owner:?} now on {target:?}"),
            Err(e) => log::debug!("attach: {device:?} of {owner:?} to {target:?} refused: {e}"),
        }
        attached
    }

    fn try_attach(&mut self, device: DeviceHandle, owner: OwnerId, target: Target) -> Result<()> {
        let d = self.device(device)?;
        if d.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        if let Target::Domain(id) = target {
            self.check_domain_for(device, &d, id, owner)?;
        }
        if d.target == target {
            return Ok(());
        }
        if target == Target::Identity && !self.identity_allowed {
            return Err(Error::IdentityForbidden);
        }
        if target != Target::Blocked {
            self.check_viable(device, &d, owner, target)?;
        }
        let doorbell = match target {
            Target::Domain(id) if self.interrupts_of(device).next().is_some() => {
                self.map_doorbell(d.unit, id)?
            }
            _ => None,
        };
        if let Err(e) = self.program(device, &d, target) {
            self.unmap_doorbell(d.unit, doorbell);
            return Err(e);
        }
        // The hardware has switched; only bookkeeping follows, which cannot fail.
        self.count_users(d.target, target);
        self.device_mut(device)?.target = target;
        self.notify_attach(device, None, d.unit, d.target, target);
        Ok(())
    }

    /// Whether `device` may be attached to domain `id` of `owner`: same unit, and for a nested
    /// domain, the device has a virtual id in the domain's vIOMMU (so its guest's
    /// invalidations can name it).
    fn check_domain_for(
        &self,
        device: DeviceHandle,
        d: &DeviceState,
        id: DomainId,
        owner: OwnerId,
    ) -> Result<()> {
        let dom = self.domain(id, owner)?;
        if dom.unit != d.unit {
            return Err(Error::WrongUnit { domain: id, device });
        }
        if let DomainKind::Nested { viommu } | DomainKind::Shadow { viommu, .. } = dom.kind {
            let v = self
                .viommus
                .get(&viommu)
                .ok_or(Error::UnknownViommu(viommu))?;
            if !v.devices.values().any(|h| *h == device) {
                return Err(Error::NotInViommu { device, viommu });
            }
        }
        Ok(())
    }

    /// Moves one attachment's count from the domain of `old` to the domain of `new`.
    fn count_users(&mut self, old: Target, new: Target) {
        if let Target::Domain(old) = old {
            if let Some(dom) = self.domains.get_mut(&old) {
                dom.users = dom.users.saturating_sub(1);
            }
        }
        if let Target::Domain(new) = new {
            if let Some(dom) = self.domains.get_mut(&new) {
                dom.users += 1;
            }
        }
    }

    fn check_viable(
        &self,
        device: DeviceHandle,
        d: &DeviceState,
        owner: OwnerId,
        target: Target,
    ) -> Result<()> {
        for (i, m) in self.devices.iter().enumerate() {
            if i == device.0 || m.group != d.group {
                continue;
            }
            let fine = match m.owner {
                // Unowned devices are always blocked: release and add_device block them.
                None => true,
                Some(o) => o == owner && (m.target == Target::Blocked || m.target == target),
            };
            if !fine {
                return Err(Error::GroupNotViable {
                    group: d.group,
                    blocker: DeviceHandle(i),
                });
            }
        }
        Ok(())
    }

    /// Allocates a paging domain for `owner` on `unit`: a table in `stage`'s format for inputs
    /// below `2^ia_bits`, with the usable windows and reserved regions of `layout`.
    pub fn alloc_domain(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        stage: Stage,
        ia_bits: u32,
        layout: &Layout<'_>,
    ) -> Result<DomainId> {
        self.alloc_paging(owner, unit, stage, ia_bits, layout, paging(false))
    }

    /// Allocates a *nest parent*: a [`Stage::Second`] paging domain (guest physical → host
    /// physical, mapped by the hypervisor like any paging domain) that vIOMMUs can build nested
    /// domains on ([`Iommu::alloc_viommu`]). It can also be attached directly, giving a guest
    /// DMA in guest-physical addresses.
    pub fn alloc_nest_parent(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        ia_bits: u32,
        layout: &Layout<'_>,
    ) -> Result<DomainId> {
        self.alloc_paging(owner, unit, Stage::Second, ia_bits, layout, paging(true))
    }

    /// A domain with an I/O page table of ours over `layout`, of the kind `kind` makes of its
    /// IOVA space.
    fn alloc_paging(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        stage: Stage,
        ia_bits: u32,
        layout: &Layout<'_>,
        kind: impl FnOnce(IovaSpace) -> DomainKind,
    ) -> Result<DomainId> {
        let u = self.unit(unit)?;
        // Checked before the unit allocates anything, so a bad layout costs nothing to undo.
        // A unit would make a narrower table than asked (its widest), under windows that
        // reach beyond it: refused instead.
        let info = u.info();
        let max = u32::from(match stage {
            Stage::First => info.first_stage_ia_bits,
            Stage::Second => info.second_stage_ia_bits,
        });
        if ia_bits > max {
            return Err(Error::InputBitsBeyondUnit {
                asked: ia_bits,
                max,
            });
        }
        let space = IovaSpace::new(ia_bits, layout)?;
        let hw = u.new_domain(stage, ia_bits)?;
        Ok(self.insert_domain(unit, owner, hw, kind(space)))
    }

    /// Allocates a paging domain of `stage` on `unit` for `owner` whose IOVAs belong to the DMA
    /// API: [`dma::DmaDevice::paging`](crate::dma::DmaDevice::paging) allocates them in
    /// `layout`'s windows minus its reserved regions and maps straight through the unit, with
    /// no per-mapping record here (the handle keeps its own). [`Iommu::map`] and the other
    /// calls of the data path refuse it ([`Error::DmaDomain`]); devices attach to it like to
    /// any paging domain (as Linux's DMA domains, it is a kernel driver's, not a user's).
    pub fn alloc_dma_domain(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        stage: Stage,
        ia_bits: u32,
        layout: &Layout<'_>,
    ) -> Result<DomainId> {
        self.alloc_paging(owner, unit, stage, ia_bits, layout, |space| {
            DomainKind::Dma { space }
        })
    }

    /// `owner`'s DMA API domain `id`, for [`dma::DmaDevice::paging`](crate::dma::DmaDevice::paging):
    /// its unit, its hardware domain and its layout.
    pub fn dma_domain(&self, owner: OwnerId, id: DomainId) -> Result<DmaDomain<'_, U>> {
        let dom = self.domain(id, owner)?;
        let DomainKind::Dma { space } = &dom.kind else {
            return Err(Error::DmaDomain(id));
        };
        Ok(DmaDomain {
            unit: self.unit(dom.unit)?,
            hw: &dom.hw,
            space,
        })
    }

    /// Allocates a domain for `owner` on `unit` that translates through the CPU page table
    /// `cpu` (shared virtual addressing, for an embedder that owns its CPU tables). It has no
    /// IOVA space here: [`Iommu::map`] and [`Iommu::unmap`] are refused; the embedder changes
    /// its table and calls [`Iommu::flush`].
    pub fn alloc_shared_domain(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        cpu: &CpuTable,
    ) -> Result<DomainId> {
        let hw = self.unit(unit)?.new_shared_domain(cpu)?;
        Ok(self.insert_domain(unit, owner, hw, DomainKind::Shared))
    }

    /// Allocates a stage-2 domain for `owner` on `unit` that translates through the VM table
    /// `vm`, which the embedder shares with its CPU (see [`VmTable`]). It has no IOVA space
    /// here: [`Iommu::map`] and [`Iommu::unmap`] are refused; the embedder changes its table,
    /// invalidates its CPU's TLBs and calls [`Iommu::flush`]. It may be the nest parent of a
    /// vIOMMU.
    ///
    /// # Example
    ///
    /// A hypervisor gives a guest a device: one stage-2 table for the guest's RAM, which its CPU
    /// (VTTBR_EL2) and the IOMMU both walk; taking a page back is one table change and both
    /// invalidations, and the table's emptied frames go back only after both.
    ///
    /// ```
    /// use iommu::addr::{Iova, PhysAddr};
    /// use iommu::hal::Hal;
    /// use iommu::iommufd::{DeviceHandle, DomainId, Iommu, OwnerId, Result, Target, UnitId};
    /// use iommu::pagetable::{Coherency, Gather, Granule, PageTable, Prot, VmsaConfig, VmsaStage2};
    /// use iommu::unit::{TranslationUnit, UnitError, VmTable};
    ///
    /// const VMID: u16 = 0xf0;
    ///
    /// /// Guest RAM at IPA `ipa` behind a table the CPU and `unit` share; `device` (owned by
    /// /// `owner`) then DMAs with guest-physical addresses.
    /// fn give_device<U: TranslationUnit, H: Hal>(
    ///     io: &mut Iommu<U>, unit: UnitId, owner: OwnerId, device: DeviceHandle,
    ///     hal: H, ipa: u64, ram: PhysAddr, len: u64,
    /// ) -> Result<(PageTable<VmsaStage2, H>, DomainId)> {
    ///     let config = VmsaConfig { granule: Granule::Size4K, input_bits: 40, output_bits: 40 };
    ///     let format = VmsaStage2::new(config).map_err(UnitError::PageTable)?;
    ///     let table = PageTable::new(format, hal, Coherency::Coherent).map_err(UnitError::PageTable)?;
    ///     table
    ///         .map(Iova::new(ipa), ram, len, Prot::READ_WRITE.with_exec())
    ///         .map_err(UnitError::PageTable)?;
    ///     // VTTBR_EL2 = table.root() | VMID << 48, VTCR_EL2 from the format (t0sz, sl0, ps).
    ///     let vm = VmTable { root: table.root(), ia_bits: 40, vmid: VMID };
    ///     let domain = io.alloc_vm_domain(owner, unit, &vm)?;
    ///     io.attach(device, owner, Target::Domain(domain))?;
    ///     Ok((table, domain))
    /// }
    ///
    /// /// Takes the guest page at `ipa` back.
    /// fn take_back<U: TranslationUnit, H: Hal>(
    ///     io: &Iommu<U>, owner: OwnerId, domain: DomainId,
    ///     table: &PageTable<VmsaStage2, H>, hal: &H, ipa: u64,
    /// ) -> Result<()> {
    ///     let mut gather = Gather::new();
    ///     table
    ///         .unmap(Iova::new(ipa), 4096, &mut gather)
    ///         .map_err(UnitError::PageTable)?;
    ///     // The CPU: TLBI IPAS2E1IS for the page, DSB, TLBI VMALLE1IS, DSB (the embedder's).
    ///     io.flush(owner, domain, Iova::new(ipa), 4096)?; // the devices: TLBI + SYNC
    ///     // SAFETY: neither the CPU nor the IOMMU can walk the emptied tables any more.
    ///     unsafe { gather.complete(hal) };
    ///     Ok(())
    /// }
    /// ```
    pub fn alloc_vm_domain(
        &mut self,
        owner: OwnerId,
        unit: UnitId,
        vm: &VmTable,
    ) -> Result<DomainId> {
        let hw = self.unit(unit)?.new_vm_domain(vm)?;
        Ok(self.insert_domain(unit, owner, hw, DomainKind::Vm { viommus: 0 }))
    }

    fn insert_domain(
        &mut self,
        unit: UnitId,
        owner: OwnerId,
        hw: U::Domain,
        kind: DomainKind,
    ) -> DomainId {
        let id = DomainId(self.next_domain);
        self.next_domain += 1;
        self.domains.insert(
            id,
            Domain {
                unit,
                owner,
                hw,
                kind,
                users: 0,
                doorbell_mapped: false,
            },
        );
        id
    }

    /// Destroys `owner`'s domain `id`, with whatever is still mapped in it. Refused while a
    /// device or PASID is attached to it, or, for a nest parent, while a vIOMMU builds on it.
    pub fn destroy_domain(&mut self, owner: OwnerId, id: DomainId) -> Result<()> {
        let dom = self.domain(id, owner)?;
        if dom.users > 0 {
            return Err(Error::Busy {
                domain: id,
                users: dom.users,
            });
        }
        if let DomainKind::Paging { viommus, .. } | DomainKind::Vm { viommus } = dom.kind {
            if viommus > 0 {
                return Err(Error::ParentInUse {
                    domain: id,
                    viommus,
                });
            }
        }
        let dom = self.domains.remove(&id).ok_or(Error::UnknownDomain(id))?;
        let Domain {
            unit,
            owner,
            hw,
            kind,
            users,
            doorbell_mapped,
        } = dom;
        if let Err((hw, e)) = self.unit(unit)?.destroy_domain(hw) {
            // Put back exactly as it was: the unit refused and kept everything.
            let back = Domain {
                unit,
                owner,
                hw,
                kind,
                users,
                doorbell_mapped,
            };
            self.domains.insert(id, back);
            return Err(e.into());
        }
        if let DomainKind::Nested { viommu } | DomainKind::Shadow { viommu, .. } = kind {
            if let Some(v) = self.viommus.get_mut(&viommu) {
                v.nested = v.nested.saturating_sub(1);
            }
        }
        if let DomainKind::Shadow { viommu, table, .. } = kind {
            self.forget_shadow(viommu, id, table.tag);
        }
        self.notifiers.forget_domain(id);
        Ok(())
    }

    /// The IOVA space of `owner`'s domain `id` (windows, reserved regions, mappings).
    pub fn iova_space(&self, owner: OwnerId, id: DomainId) -> Result<&IovaSpace> {
        self.domain(id, owner)?.space(id)
    }

    /// After how many noted places the unmaps of `owner`'s domain `id` sweep the tables they
    /// emptied (see [`unmap`](Self::unmap)): [`PENDING_PRUNES`] unless set here. With 1, each
    /// unmap that may have emptied a table larger than its stripes sweeps before it returns,
    /// so once the domain's calls have returned its table holds exactly the tables its
    /// mappings need (as a fresh table of them would), at the price of every lock of the
    /// domain on each such unmap (the `iommufd` benchmark's `swept every unmap` case). A
    /// paging or shadow domain; others have no IOVA space of ours.
    pub fn set_sweep_threshold(
        &mut self,
        owner: OwnerId,
        id: DomainId,
        places: NonZeroUsize,
    ) -> Result<()> {
        self.domain(id, owner)?;
        let dom = self.domains.get_mut(&id).ok_or(Error::UnknownDomain(id))?;
        match &mut dom.kind {
            DomainKind::Paging { space, .. } | DomainKind::Shadow { space, .. } => {
                space.set_sweep_threshold(places);
                Ok(())
            }
            DomainKind::Dma { .. } => Err(Error::DmaDomain(id)),
            _ => Err(Error::NotPaging(id)),
        }
    }

    /// The unit's own object behind `owner`'s domain `id`, for back-end specific queries (its
    /// hardware tag, a table walk). Changing it behind the model's back is not possible: it is
    /// shared.
    pub fn domain_hw(&self, owner: OwnerId, id: DomainId) -> Result<&U::Domain> {
        Ok(&self.domain(id, owner)?.hw)
    }

    /// How many devices are attached to domain `id`.
    pub fn domain_users(&self, owner: OwnerId, id: DomainId) -> Result<usize> {
        Ok(self.domain(id, owner)?.users)
    }

    /// Maps `[iova, iova + len)` of `owner`'s domain `id` to `[phys, phys + len)`.
    pub fn map(
        &self,
        owner: OwnerId,
        id: DomainId,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<()> {
        let dom = self.domain(id, owner)?;
        let range = dom
            .space(id)?
            .begin_map(iova.as_u64(), len, phys.as_u64(), prot)?;
        self.map_claimed(dom, id, range, phys, prot)
    }

    /// Maps `len` bytes at `phys` at the lowest free IOVA aligned to the length, and returns it.
    pub fn map_anywhere(
        &self,
        owner: OwnerId,
        id: DomainId,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<Iova> {
        let dom = self.domain(id, owner)?;
        let range = dom
            .space(id)?
            .begin_map_anywhere(len, phys.as_u64(), prot)?;
        self.map_claimed(dom, id, range, phys, prot)?;
        Ok(Iova::new(range.start))
    }

    /// The unit call of a map whose range `begin_map*` claimed, and the end of the claim.
    fn map_claimed(
        &self,
        dom: &Domain<U::Domain>,
        id: DomainId,
        range: Region,
        phys: PhysAddr,
        prot: Prot,
    ) -> Result<()> {
        let space = dom.space(id)?;
        // A claimed range is at most 2^64 - 4 KiB long: `len` was a `u64`.
        let len = range.size().unwrap_or(u64::MAX);
        let made = self
            .unit(dom.unit)
            .and_then(|u| Ok(u.map(&dom.hw, Iova::new(range.start), phys, len, prot)?));
        if made.is_ok() {
            // Inside the claim: the next operation on this range is announced after this one.
            self.notify_map(dom.unit, id, range, phys, prot);
        }
        space.end_map(range, made.is_ok());
        made
    }

    /// Unmaps every mapping inside `[iova, iova + len)` of `owner`'s domain `id` and returns
    /// the bytes unmapped. The whole space (`iova` 0, `len` `u64::MAX`) is iommufd's unmap-all
    /// idiom: it is [`unmap_all`](Self::unmap_all), 0 on an empty domain.
    ///
    /// The tables the unmap empties are freed too: while it runs it holds the free space in its
    /// span's 2 MiB stripes (maps there wait), so the unit frees the emptied tables no larger
    /// than those stripes with the same one invalidation. Where the stripes are left empty,
    /// larger tables may have emptied: the place is noted, and the unmap that notes the
    /// [`PENDING_PRUNES`]th sweeps them all (one more invalidation; a failure there is logged,
    /// the unmap itself has succeeded). A domain thus never holds more than that many paths of
    /// empty tables beyond what its mappings need; [`set_sweep_threshold`](Self::set_sweep_threshold)
    /// chooses another number (1: none).
    pub fn unmap(&self, owner: OwnerId, id: DomainId, iova: Iova, len: u64) -> Result<u64> {
        if iova.as_u64() == 0 && len == u64::MAX {
            return self.unmap_all(owner, id);
        }
        let dom = self.domain(id, owner)?;
        let space = dom.space(id)?;
        let (u, total) = space.begin_unmap_pruning(iova.as_u64(), len)?;
        self.unmap_claimed(dom, id, u)?;
        self.sweep_if_due(dom, space);
        Ok(total)
    }

    /// Unmaps everything in `owner`'s domain `id`; returns the bytes unmapped (0 if empty).
    pub fn unmap_all(&self, owner: OwnerId, id: DomainId) -> Result<u64> {
        let dom = self.domain(id, owner)?;
        let space = dom.space(id)?;
        let total = match space.begin_unmap_all()? {
            None => 0,
            Some((u, total)) => {
                self.unmap_claimed(dom, id, u)?;
                total
            }
        };
        // Also on a domain already empty: earlier unmaps may have left places to sweep.
        self.sweep(dom, space);
        Ok(total)
    }

    /// One unit call over the claimed span of whole mappings (the unit's table refuses a cut
    /// itself, and either removes everything or nothing), and the end of the claim.
    ///
    /// The claim holds the free space around the span too, so the unit also frees the tables
    /// the unmap leaves empty there ([`TranslationUnit::unmap_pruning`]): a domain's table
    /// memory follows its mappings. (Its end is exclusive; a claim reaching `2^64 - 1` gives up
    /// the last byte, beyond every table's aperture.)
    fn unmap_claimed(&self, dom: &Domain<U::Domain>, id: DomainId, u: Unmapping) -> Result<()> {
        let space = dom.space(id)?;
        let span = u.span;
        let owned = u.owned.start..u.owned.last.saturating_add(1);
        let removed = span.size().ok_or(Error::WrapAround).and_then(|len| {
            let unit = self.unit(dom.unit)?;
            Ok(unit.unmap_pruning(&dom.hw, Iova::new(span.start), len, owned)?)
        });
        if removed.is_ok() {
            // Invalidated, and still inside the claim (ordered like `map_claimed`).
            self.notify_unmap(dom.unit, id, span);
        }
        space.end_unmap_pruning(u, removed.is_ok());
        removed.map(|_| ())
    }

    /// [`sweep`](Self::sweep) once [`PENDING_PRUNES`] places wait for one.
    fn sweep_if_due(&self, dom: &Domain<U::Domain>, space: &IovaSpace) {
        if space.sweep_due() {
            self.sweep(dom, space);
        }
    }

    /// Frees the tables that unmaps of `dom` left empty at the places they noted
    /// ([`IovaSpace::sweep`], [`TranslationUnit::prune_tables`]): one invalidation for all. The
    /// unmaps that left them have succeeded, so a failure here is logged, not returned (the
    /// tables stay linked, or, if the invalidation failed, their frames are leaked).
    fn sweep(&self, dom: &Domain<U::Domain>, space: &IovaSpace) {
        let Ok(unit) = self.unit(dom.unit) else {
            return;
        };
        let swept = space.sweep(|points| {
            let points: Vec<_> = points
                .iter()
                .map(|(at, free)| (Iova::new(*at), free.start..free.last.saturating_add(1)))
                .collect();
            unit.prune_tables(&dom.hw, &points)
        });
        if let Some(Err(e)) = swept {
            log::warn!("iommufd: freeing emptied tables failed: {e}");
        }
    }

    /// Unmaps every mapping inside `[iova, iova + len)` of `owner`'s domain `id` like
    /// [`unmap`](Self::unmap), but leaves the invalidation to [`flush_deferred`](Self::flush_deferred):
    /// what must be invalidated and the table frames to free go into `gather`. Returns the bytes
    /// unmapped. Refusals (unknown domain, not the owner, nothing mapped, a cut mapping, a unit
    /// without deferred unmaps) change nothing, `gather` included.
    ///
    /// The tables the unmap empties stay linked until the flush could free them, so, where the
    /// span's stripes are left empty, the place is noted, and the unmap that notes the
    /// [`PENDING_PRUNES`]th sweeps them, as [`unmap`](Self::unmap) does (the sweep's own
    /// invalidation covers what it frees; the gather keeps its own range for the flush).
    ///
    /// The contract, until `flush_deferred` of this gather has returned `Ok`:
    /// - the device may still reach the unmapped range through translations the unit cached:
    ///   the caller must not map those IOVAs again (this model already counts them as free), nor
    ///   free or reuse the physical memory they pointed at in a way a stale DMA could harm;
    /// - `gather` belongs to domain `id`: pass it to more `unmap_deferred` calls on `id` only,
    ///   and flush it on `id` only.
    pub fn unmap_deferred(
        &self,
        owner: OwnerId,
        id: DomainId,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64> {
        let dom = self.domain(id, owner)?;
        let space = dom.space(id)?;
        let (span, total) = space.begin_unmap(iova.as_u64(), len)?;
        let removed = span.size().ok_or(Error::WrapAround).and_then(|len| {
            let unit = self.unit(dom.unit)?;
            Ok(unit.unmap_deferred(&dom.hw, Iova::new(span.start), len, gather)?)
        });
        space.end_unmap(span, removed.is_ok());
        removed?;
        self.sweep_if_due(dom, space);
        Ok(total)
    }

    /// One invalidation on `owner`'s domain `id` of everything [`unmap_deferred`](Self::unmap_deferred)
    /// gathered in `gather`, waited for; then the gathered table frames are freed. After `Ok`,
    /// the unmapped IOVAs and memory may be reused.
    ///
    /// `gather` must have been filled from domain `id` (a gather of another domain's table is
    /// refused by the engine). On any error (unknown domain, not the owner, refused gather,
    /// failed invalidation) the gather is consumed and its frames are leaked; the invalidation
    /// may not have happened, so the unmapped ranges must stay unused.
    pub fn flush_deferred(&self, owner: OwnerId, id: DomainId, gather: Gather) -> Result<()> {
        let dom = self.domain(id, owner)?;
        let hull = gather.range();
        self.unit(dom.unit)?.flush_deferred(&dom.hw, gather)?;
        self.notify_flushed(dom.unit, id, hull);
        Ok(())
    }

    /// Frees the tables of `owner`'s domain `id` that unmaps left empty, after one invalidation
    /// of their range, and returns how many ([`TranslationUnit::reclaim_tables`]). Mappings are
    /// unchanged; afterwards the domain holds exactly the tables its mappings need.
    ///
    /// [`unmap`](Self::unmap) frees the tables it empties itself (at once in its own stripes,
    /// the larger ones in a sweep every [`PENDING_PRUNES`] emptied stripes), deferred unmaps and
    /// shadows leave theirs to those sweeps, and a DMA API handle prunes where its IOVAs come
    /// back to its free ranges; what stays empty is at most that many paths, and, in a DMA API
    /// domain, the tables of IOVAs its handle caches and tables that span a reserved region or
    /// a window's edge.
    /// This takes `&mut self`, when no map or unmap can run, so call it at a quiet moment of the
    /// control path (after a guest or a driver released many mappings).
    /// Refused for domains without a table of ours (identity, blocking, shared, nested, VM
    /// tables: [`Error::NotPaging`]).
    pub fn reclaim_tables(&mut self, owner: OwnerId, id: DomainId) -> Result<usize> {
        let dom = self.domains.get_mut(&id).ok_or(Error::UnknownDomain(id))?;
        if dom.owner != owner {
            return Err(Error::NotDomainOwner(id));
        }
        if !matches!(
            dom.kind,
            DomainKind::Paging { .. } | DomainKind::Dma { .. } | DomainKind::Shadow { .. }
        ) {
            return Err(Error::NotPaging(id));
        }
        let unit = self
            .units
            .get(dom.unit.0)
            .ok_or(Error::UnknownUnit(dom.unit))?;
        Ok(unit.reclaim_tables(&mut dom.hw)?)
    }

    /// The physical address `iova` of `owner`'s paging domain `id` translates to, from the
    /// mappings made through this model (a map counts once it returned, an unmapped range until
    /// its unmap returned).
    pub fn iova_to_phys(&self, owner: OwnerId, id: DomainId, iova: Iova) -> Result<PhysAddr> {
        let space = self.domain(id, owner)?.space(id)?;
        space
            .iova_to_phys(iova.as_u64())
            .map(PhysAddr::new)
            .ok_or(Error::NothingMapped)
    }

    /// Invalidates the unit's cached translations of `[iova, iova + len)` in `owner`'s domain
    /// `id`, after the embedder changed a table it owns (a shared CPU table).
    pub fn flush(&self, owner: OwnerId, id: DomainId, iova: Iova, len: u64) -> Result<()> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        iova.as_u64().checked_add(len).ok_or(Error::WrapAround)?;
        let dom = self.domain(id, owner)?;
        self.unit(dom.unit)?.flush(&dom.hw, iova, len)?;
        Ok(())
    }

    /// What unit `id` can do, with its raw identification registers, for a VMM building a
    /// virtual IOMMU that matches it.
    pub fn hardware_info(&self, id: UnitId) -> Result<HardwareInfo> {
        Ok(self.unit(id)?.info())
    }

    fn domain(&self, id: DomainId, owner: OwnerId) -> Result<&Domain<U::Domain>> {
        let dom = self.domains.get(&id).ok_or(Error::UnknownDomain(id))?;
        if dom.owner != owner {
            return Err(Error::NotDomainOwner(id));
        }
        Ok(dom)
    }

    fn device_mut(&mut self, device: DeviceHandle) -> Result<&mut DeviceState> {
        self.devices
            .get_mut(device.0)
            .ok_or(Error::UnknownDevice(device))
    }
}

impl<D> Domain<D> {
    /// The IOVA space of a paging domain; other kinds have none.
    fn space(&self, id: DomainId) -> Result<&IovaSpace> {
        match &self.kind {
            DomainKind::Paging { space, .. } => Ok(space),
            DomainKind::Dma { .. } => Err(Error::DmaDomain(id)),
            DomainKind::Shadow { .. } => Err(Error::ShadowDomain(id)),
            _ => Err(Error::NotPaging(id)),
        }
    }

    /// The windows and reserved regions of a domain with an I/O page table of ours (paging or
    /// DMA API), for mappings the model makes itself (the MSI doorbell).
    fn layout(&self) -> Option<&IovaSpace> {
        match &self.kind {
            DomainKind::Paging { space, .. } | DomainKind::Dma { space } => Some(space),
            _ => None,
        }
    }
}

/// A DMA API domain as [`Iommu::dma_domain`] lends it: the unit's calls on its hardware
/// domain, and its layout. The DMA API guarantees its own mappings never overlap (its IOVA
/// allocator hands each range out once), which the object model checks for other domains.
pub struct DmaDomain<'a, U: TranslationUnit> {
    /// The domain's unit.
    pub unit: &'a U,
    /// The unit's domain.
    pub hw: &'a U::Domain,
    space: &'a IovaSpace,
}

impl<U: TranslationUnit> DmaDomain<'_, U> {
    /// Its IOVA windows.
    pub fn windows(&self) -> &[Region] {
        self.space.windows()
    }

    /// Its reserved regions.
    pub fn reserved(&self) -> &[Reserved] {
        self.space.reserved()
    }
}

/// Says at `debug` level what a control-path call on a device did or why it was refused: the
/// embedder sees the object model's decisions without printing every error itself.
fn logged(op: &str, device: DeviceHandle, owner: OwnerId, result: &Result<()>) {
    match result {
        Ok(()) => log::debug!("{op}: {device:?} by {owner:?}"),
        Err(e) => log::debug!("{op}: {device:?} by {owner:?} refused: {e}"),
    }
}
