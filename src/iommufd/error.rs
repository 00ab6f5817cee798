//! The one error type of the object model: every refusal of [`Iommu`](super::Iommu), each case
//! naming what was wrong. A call that returns an error has changed nothing.

use core::fmt;

use super::iova::ReservedKind;
use super::{DeviceHandle, DomainId, GroupId, InterruptId, NotifierId, OwnerId, UnitId, ViommuId};
use crate::unit::{DeviceId, UnitError};

/// Why the object model refused a call. Whatever the case, the call changed nothing: no record
/// of this layer and no hardware state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The translation unit refused or failed (unknown device, identity not supported, no free
    /// tag, page-table refusal such as an unaligned address, hardware timeout).
    Unit(UnitError),
    /// No unit was registered under this id.
    UnknownUnit(UnitId),
    /// No device was registered under this handle.
    UnknownDevice(DeviceHandle),
    /// No domain has this id (never allocated, or destroyed).
    UnknownDomain(DomainId),
    /// This unit already has a device with this id.
    DuplicateDevice {
        /// The unit.
        unit: UnitId,
        /// The id registered twice.
        id: DeviceId,
    },
    /// A group's devices alias each other's DMA, so they sit behind one unit; this device is on
    /// another unit than the group's other members.
    GroupSpansUnits(GroupId),
    /// A device cannot join a group while a member of that group is owned: the newcomer would be
    /// reachable through the owner's domain without having been claimed.
    GroupInUse(GroupId),
    /// The device is already owned (by `owner`, which may be the caller).
    AlreadyOwned {
        /// The device.
        device: DeviceHandle,
        /// Its current owner.
        owner: OwnerId,
    },
    /// Another device of the group has a different owner; a group has at most one owner, since
    /// its devices cannot be isolated from each other.
    GroupOwnedByOther {
        /// The group.
        group: GroupId,
        /// The owner of the other members.
        owner: OwnerId,
    },
    /// The caller does not own this device (it is unowned or owned by someone else).
    NotOwner(DeviceHandle),
    /// The caller did not allocate this domain.
    NotDomainOwner(DomainId),
    /// Attaching would break group viability: `blocker`, a member of the same group, is owned
    /// and attached to something other than the target (or blocked). See the module docs.
    GroupNotViable {
        /// The group.
        group: GroupId,
        /// The member in the way.
        blocker: DeviceHandle,
    },
    /// The domain belongs to another unit than the device; sharing a domain across units is not
    /// supported yet.
    WrongUnit {
        /// The domain.
        domain: DomainId,
        /// The device.
        device: DeviceHandle,
    },
    /// The domain is still attached to `users` devices and cannot be destroyed.
    Busy {
        /// The domain.
        domain: DomainId,
        /// How many devices are attached to it.
        users: usize,
    },
    /// Identity was asked for but the embedder's policy forbids it (see
    /// [`Iommu::allow_identity`](super::Iommu::allow_identity)).
    IdentityForbidden,
    /// The domain's windows or reserved regions are not a valid layout (named).
    BadLayout(&'static str),
    /// A map, unmap or allocation of zero bytes.
    ZeroLength,
    /// `iova + len` does not fit in 64 bits.
    WrapAround,
    /// The range is not wholly inside one usable window of the domain.
    OutsideAperture,
    /// The range touches a reserved region (an MSI doorbell, an RMRR, ...).
    ReservedRegion(ReservedKind),
    /// Part of the range is already mapped.
    AlreadyMapped,
    /// Nothing is mapped in the range.
    NothingMapped,
    /// The range starts or ends inside a mapping; mappings are only removed whole.
    WouldCut,
    /// No free, suitably aligned range of this length is left in any window.
    NoSpace,
    /// No-IOMMU mode was asked for on a machine with `units` translation units; only
    /// [`InsecureNoIommu::enable_despite_iommu`](super::InsecureNoIommu::enable_despite_iommu)
    /// enables it there.
    IommuPresent {
        /// Units the firmware reported.
        units: usize,
    },
    /// The domain is not a paging domain (it is shared with the CPU or nested), so it has no
    /// IOVA space here to map into or unmap from.
    NotPaging(DomainId),
    /// The domain's IOVAs belong to the DMA API ([`Iommu::alloc_dma_domain`](super::Iommu::alloc_dma_domain)):
    /// its mappings are made through `dma::DmaDevice`, not mapped or unmapped here; or the
    /// DMA API was handed a domain that is not such a domain.
    DmaDomain(DomainId),
    /// No fault queue to take from: the owner (or, for `None`, the default queue) never
    /// subscribed.
    NotSubscribed(Option<OwnerId>),
    /// A vIOMMU needs a nest parent ([`Iommu::alloc_nest_parent`](super::Iommu::alloc_nest_parent)).
    NotNestParent(DomainId),
    /// The nest parent is still used by `viommus` vIOMMUs and cannot be destroyed.
    ParentInUse {
        /// The parent.
        domain: DomainId,
        /// vIOMMUs built on it.
        viommus: usize,
    },
    /// No vIOMMU has this id (never allocated, or destroyed).
    UnknownViommu(ViommuId),
    /// The caller did not allocate this vIOMMU.
    NotViommuOwner(ViommuId),
    /// The device is on another unit than the vIOMMU.
    ViommuWrongUnit {
        /// The vIOMMU.
        viommu: ViommuId,
        /// The device.
        device: DeviceHandle,
    },
    /// The vIOMMU already has a device under this virtual id.
    VirtualIdInUse {
        /// The vIOMMU.
        viommu: ViommuId,
        /// The virtual id.
        virtual_id: u32,
    },
    /// The vIOMMU has no device under this virtual id.
    UnknownVirtualId {
        /// The vIOMMU.
        viommu: ViommuId,
        /// The virtual id.
        virtual_id: u32,
    },
    /// The device has a virtual id in `viommu`: it cannot get a second one, nor be released
    /// before it is unset.
    DeviceInViommu {
        /// The device.
        device: DeviceHandle,
        /// The vIOMMU that names it.
        viommu: ViommuId,
    },
    /// A nested domain of `viommu` can only be attached to a device with a virtual id there.
    NotInViommu {
        /// The device.
        device: DeviceHandle,
        /// The nested domain's vIOMMU.
        viommu: ViommuId,
    },
    /// The vIOMMU shadows its guest's tables ([`Iommu::alloc_shadow_viommu`](super::Iommu::alloc_shadow_viommu)):
    /// it has no hardware part, no nested domains, no hardware-forwarded invalidations.
    Shadowing(ViommuId),
    /// The call needs a shadowing vIOMMU; this one nests in hardware.
    NotShadowing(ViommuId),
    /// The vIOMMU already shadows a guest table with this tag.
    ShadowTagInUse {
        /// The vIOMMU.
        viommu: ViommuId,
        /// The guest's tag.
        tag: u32,
    },
    /// The domain shadows a guest table: only the guest's invalidations change it.
    ShadowDomain(DomainId),
    /// The vIOMMU still has `nested` nested domains and cannot be destroyed.
    ViommuBusy {
        /// The vIOMMU.
        viommu: ViommuId,
        /// Nested domains built on it.
        nested: usize,
    },
    /// The vIOMMU still names `devices` devices by virtual id and cannot be destroyed: unset
    /// them first (as an iommufd vDEVICE holds its vIOMMU).
    ViommuHasDevices {
        /// The vIOMMU.
        viommu: ViommuId,
        /// Virtual ids still set.
        devices: usize,
    },
    /// A domain of `asked` input bits was asked of a unit whose tables at that stage translate
    /// at most `max` (0: the unit has no such stage).
    InputBitsBeyondUnit {
        /// Input address bits asked for.
        asked: u32,
        /// The unit's limit at the stage.
        max: u32,
    },
    /// `id` is already the id or an alias of a device of `group`: devices sharing an id are one
    /// group.
    AliasCrossesGroups {
        /// The shared id.
        id: DeviceId,
        /// The other device's group.
        group: GroupId,
    },
    /// PASID attach needs a device alone in its group.
    GroupNotSingleton(GroupId),
    /// The unit's devices cannot get an owner: nothing remaps their interrupts (no remapper
    /// registered) and the embedder has not allowed unsafe interrupts.
    InterruptsNotIsolated(UnitId),
    /// The unit has no interrupt remapper to allocate from.
    NoInterruptRemapper(UnitId),
    /// The unit has an interrupt remapper already.
    RemapperPresent(UnitId),
    /// The device's MSIs are DMA writes to its remapper's doorbell, but the paging domain has
    /// no [`ReservedKind::MsiDoorbell`] region covering the doorbell page to map it in.
    NoMsiWindow {
        /// The domain.
        domain: DomainId,
        /// The doorbell page's physical address (= its IOVA).
        doorbell: u64,
    },
    /// No interrupt has this id (never allocated, or freed).
    UnknownInterrupt(InterruptId),
    /// The caller did not allocate this interrupt.
    NotInterruptOwner(InterruptId),
    /// The caller has no subscription with this id (never made, ended, another owner's, or on
    /// a domain since destroyed).
    UnknownNotifier(NotifierId),
    /// The embedder has not said that the firmware lets this device use ATS
    /// ([`Iommu::allow_ats`](super::Iommu::allow_ats): a VT-d ATSR covering its root port, the
    /// root complex's ATS attribute in IORT or `ats-supported` in the devicetree).
    AtsNotAllowed(DeviceHandle),
    /// ATS is already enabled for this device.
    AtsEnabled(DeviceHandle),
    /// ATS is not enabled for this device.
    AtsNotEnabled(DeviceHandle),
    /// An ATS invalidate queue depth outside 1..=32.
    BadQueueDepth(u8),
    /// The device's ATS capability did not take the setting (the embedder's reason); the unit
    /// was set back.
    AtsRefusedByDevice {
        /// The device.
        device: DeviceHandle,
        /// Why, as the embedder's [`AtsControl`](super::AtsControl) said.
        reason: &'static str,
    },
    /// The operation is not supported by the object model (named).
    Unsupported(&'static str),
}

/// Result of the object model.
pub type Result<T> = core::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unit(e) => write!(f, "unit: {e}"),
            Self::UnknownUnit(u) => write!(f, "no unit {u:?}"),
            Self::UnknownDevice(d) => write!(f, "no device {d:?}"),
            Self::UnknownDomain(d) => write!(f, "no domain {d:?}"),
            Self::DuplicateDevice { unit, id } => write!(f, "{unit:?} already has device {id:?}"),
            Self::GroupSpansUnits(g) => write!(f, "{g:?} has members on another unit"),
            Self::GroupInUse(g) => write!(f, "{g:?} has an owned member; no device may join it"),
            Self::AlreadyOwned { device, owner } => {
                write!(f, "{device:?} is already owned by {owner:?}")
            }
            Self::GroupOwnedByOther { group, owner } => {
                write!(f, "{group:?} is owned by {owner:?}")
            }
            Self::NotOwner(d) => write!(f, "caller does not own {d:?}"),
            Self::NotDomainOwner(d) => write!(f, "caller does not own {d:?}"),
            Self::GroupNotViable { group, blocker } => {
                write!(f, "{group:?} not viable: {blocker:?} is attached elsewhere")
            }
            Self::WrongUnit { domain, device } => {
                write!(f, "{domain:?} is not on the unit of {device:?}")
            }
            Self::Busy { domain, users } => {
                write!(f, "{domain:?} is attached to {users} device(s)")
            }
            Self::IdentityForbidden => write!(f, "identity is forbidden by policy"),
            Self::BadLayout(what) => write!(f, "bad IOVA layout: {what}"),
            Self::ZeroLength => write!(f, "zero length"),
            Self::WrapAround => write!(f, "range wraps past 2^64"),
            Self::OutsideAperture => write!(f, "range not inside one usable window"),
            Self::ReservedRegion(k) => write!(f, "range touches a reserved region ({k:?})"),
            Self::AlreadyMapped => write!(f, "range overlaps a mapping"),
            Self::NothingMapped => write!(f, "nothing mapped in range"),
            Self::WouldCut => write!(f, "range would cut a mapping"),
            Self::NoSpace => write!(f, "no free IOVA range of that size"),
            Self::IommuPresent { units } => {
                write!(
                    f,
                    "{units} IOMMU(s) present: no-IOMMU mode only if forced by name"
                )
            }
            Self::NotPaging(d) => write!(f, "{d:?} is not a paging domain"),
            Self::NotSubscribed(Some(o)) => write!(f, "{o:?} has no fault queue"),
            Self::NotSubscribed(None) => f.write_str("no default fault queue"),
            Self::DmaDomain(d) => {
                write!(f, "{d:?}: a DMA API domain or not one, as the call needs")
            }
            Self::NotNestParent(d) => write!(f, "{d:?} is not a nest parent"),
            Self::ParentInUse { domain, viommus } => {
                write!(f, "{domain:?} is the nest parent of {viommus} vIOMMU(s)")
            }
            Self::UnknownViommu(v) => write!(f, "no vIOMMU {v:?}"),
            Self::NotViommuOwner(v) => write!(f, "caller does not own {v:?}"),
            Self::ViommuWrongUnit { viommu, device } => {
                write!(f, "{device:?} is not on the unit of {viommu:?}")
            }
            Self::VirtualIdInUse { viommu, virtual_id } => {
                write!(f, "{viommu:?} already has virtual id {virtual_id:#x}")
            }
            Self::UnknownVirtualId { viommu, virtual_id } => {
                write!(f, "{viommu:?} has no virtual id {virtual_id:#x}")
            }
            Self::DeviceInViommu { device, viommu } => {
                write!(f, "{device:?} has a virtual id in {viommu:?}")
            }
            Self::NotInViommu { device, viommu } => {
                write!(f, "{device:?} has no virtual id in {viommu:?}")
            }
            Self::Shadowing(v) => {
                write!(f, "{v:?} shadows its guest's tables (no hardware nesting)")
            }
            Self::NotShadowing(v) => write!(f, "{v:?} nests in hardware, it does not shadow"),
            Self::ShadowTagInUse { viommu, tag } => {
                write!(f, "{viommu:?} already shadows guest tag {tag:#x}")
            }
            Self::ShadowDomain(d) => {
                write!(
                    f,
                    "{d:?} shadows a guest table: changed by its invalidations only"
                )
            }
            Self::ViommuBusy { viommu, nested } => {
                write!(f, "{viommu:?} has {nested} nested domain(s)")
            }
            Self::ViommuHasDevices { viommu, devices } => {
                write!(
                    f,
                    "{viommu:?} still names {devices} device(s) by virtual id"
                )
            }
            Self::InputBitsBeyondUnit { asked, max } => {
                write!(
                    f,
                    "{asked} input address bits asked, the unit translates {max}"
                )
            }
            Self::AliasCrossesGroups { id, group } => {
                write!(f, "{id:?} is already used by a device of {group:?}")
            }
            Self::GroupNotSingleton(g) => {
                write!(f, "{g:?} has several devices: no PASID attach")
            }
            Self::InterruptsNotIsolated(u) => write!(
                f,
                "{u:?} does not isolate interrupts: no remapper, and unsafe interrupts not allowed"
            ),
            Self::NoInterruptRemapper(u) => write!(f, "{u:?} has no interrupt remapper"),
            Self::RemapperPresent(u) => write!(f, "{u:?} has an interrupt remapper already"),
            Self::NoMsiWindow { domain, doorbell } => write!(
                f,
                "{domain:?} reserves no MSI window over the doorbell page {doorbell:#x}"
            ),
            Self::UnknownInterrupt(i) => write!(f, "no interrupt {i:?}"),
            Self::NotInterruptOwner(i) => write!(f, "caller does not own {i:?}"),
            Self::UnknownNotifier(n) => write!(f, "caller has no subscription {n:?}"),
            Self::AtsNotAllowed(d) => write!(f, "the firmware does not allow ATS for {d:?}"),
            Self::AtsEnabled(d) => write!(f, "ATS is already enabled for {d:?}"),
            Self::AtsNotEnabled(d) => write!(f, "ATS is not enabled for {d:?}"),
            Self::BadQueueDepth(q) => write!(f, "ATS invalidate queue depth {q} is not 1..=32"),
            Self::AtsRefusedByDevice { device, reason } => {
                write!(f, "{device:?} did not take its ATS setting: {reason}")
            }
            Self::Unsupported(what) => write!(f, "not supported: {what}"),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Unit(e) => Some(e),
            _ => None,
        }
    }
}

impl From<UnitError> for Error {
    fn from(e: UnitError) -> Self {
        Self::Unit(e)
    }
}
