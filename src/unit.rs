//! The interface between the portable core and a hardware back-end: one *translation unit* (a
//! VT-d DRHD, an SMMUv3) that serves many devices.
//!
//! A unit owns its hardware tables (root/context/PASID tables, stream table/CDs), its queues and
//! its tags (VT-d domain ids, SMMU ASIDs/VMIDs). Domains hold an I/O page table from the core's
//! engine in the format the unit chose; attach is per device (and per PASID where the hardware
//! has PASIDs). The object model above (devices, groups, owners, vIOMMUs) is written once over
//! this trait.
//!
//! Every method that changes what a device can reach completes the hardware invalidations it
//! needs before it returns: after `unmap` returns, no DMA through the removed range can succeed;
//! after `attach` returns, the device translates through the new domain only.

use core::fmt;

use crate::addr::{Iova, PhysAddr};
use crate::pagetable::Prot;

/// How a unit names the device that issued a request: the PCI requester id (bus, device,
/// function) on VT-d, the stream id on SMMUv3. Always the *physical* id; a vIOMMU translates its
/// guest's virtual ids into these.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:#x})", self.0)
    }
}

/// What a device is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment<'d, D> {
    /// Every DMA is refused (and reported as a fault where the hardware reports it). The state of
    /// every device the unit serves until it is attached to something else.
    Blocking,
    /// DMA addresses are physical addresses (VT-d pass-through, SMMU bypass STE). Only where the
    /// hardware supports it; otherwise [`UnitError::Unsupported`].
    Identity,
    /// DMA addresses are translated by the domain's page table.
    Paging(&'d D),
}

/// Which of the unit's page-table formats a paging domain uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The unit's stage-1 / first-stage format (VT-d first stage = x86-64 paging, SMMU stage 1).
    First,
    /// The unit's stage-2 / second-stage format (VT-d second stage, SMMU stage 2); the format of a
    /// nest parent.
    Second,
}

/// Broad class of a fault, common to both architectures; the back-end's own decoded record
/// gives the exact reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// No translation for the address (not-present entry, address beyond the table).
    Translation,
    /// A translation exists but does not allow the access (write to a read-only page).
    Permission,
    /// The address is wider than the table's input or the hardware's output size.
    AddressSize,
    /// The device's configuration (context/PASID entry, STE/CD) is absent or invalid; includes
    /// a blocked device.
    Configuration,
    /// Anything else the hardware reports.
    Other,
}

/// One fault, as the core reports it to the embedder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The device that issued the request.
    pub device: DeviceId,
    /// The PASID / substream id of the request, when it carried one.
    pub pasid: Option<u32>,
    /// The address the device used (an IOVA, or a guest physical address for stage 2).
    pub address: u64,
    /// Whether the request was a write.
    pub write: bool,
    pub kind: FaultKind,
    /// The hardware's reason code (VT-d fault reason, SMMU event type).
    pub code: u16,
    /// What the code means, in the words of the specification.
    pub reason: &'static str,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by device {:#x}", if self.write { "write" } else { "read" }, self.device.0)?;
        if let Some(pasid) = self.pasid {
            write!(f, " with PASID {pasid:#x}")?;
        }
        write!(
            f,
            " at {:#x}: {:?} fault, code {:#x} ({})",
            self.address, self.kind, self.code, self.reason
        )
    }
}

/// What one [`TranslationUnit::drain_faults`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Faults handed to the sink.
    pub records: usize,
    /// The hardware had more faults than it could record (VT-d FSTS.PFO, SMMU event-queue
    /// overflow): some were lost before this call.
    pub overflow: bool,
}

/// Why a unit refused an operation. Each back-end's own error type converts into this one at the
/// trait boundary so the object model has one error type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitError {
    /// The page-table engine refused the map/unmap; nothing changed.
    PageTable(crate::pagetable::Error),
    /// The unit does not serve this device.
    UnknownDevice(DeviceId),
    /// The hardware cannot do this (named), e.g. identity on a unit without pass-through.
    Unsupported(&'static str),
    /// No free tag (domain id, ASID, VMID) is left.
    OutOfIds,
    /// The embedder's HAL had no memory for a table or queue.
    OutOfMemory,
    /// The hardware did not complete a handshake or an invalidation in time.
    Timeout(crate::poll::Timeout),
    /// The hardware reported an error for a command or descriptor (named).
    Hardware(&'static str),
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PageTable(e) => write!(f, "page table: {e}"),
            Self::UnknownDevice(d) => write!(f, "device {d:?} is not served by this unit"),
            Self::Unsupported(what) => write!(f, "not supported by this unit: {what}"),
            Self::OutOfIds => write!(f, "no free domain id / ASID / VMID"),
            Self::OutOfMemory => write!(f, "out of memory for IOMMU structures"),
            Self::Timeout(t) => write!(f, "{t}"),
            Self::Hardware(what) => write!(f, "hardware error: {what}"),
        }
    }
}

impl core::error::Error for UnitError {}

impl From<crate::pagetable::Error> for UnitError {
    fn from(e: crate::pagetable::Error) -> Self {
        Self::PageTable(e)
    }
}

impl From<crate::poll::Timeout> for UnitError {
    fn from(e: crate::poll::Timeout) -> Self {
        Self::Timeout(e)
    }
}

/// One hardware IOMMU. Implemented by `iommu_vtd::VtdUnit` and `iommu_smmuv3::SmmuUnit`.
///
/// All methods take `&self`: a unit is shared by the CPUs that map and unmap, and serialises
/// internally only where the hardware needs it (its invalidation queue is lock-free).
pub trait TranslationUnit {
    /// A paging domain of this unit: an I/O page table plus the unit's tag for it.
    type Domain;

    /// A paging domain whose table uses `stage`'s format and translates IOVAs below
    /// `2^ia_bits` (rounded up to what the hardware supports).
    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError>;

    /// Points `device` at `to`, replacing what it was attached to, and invalidates the caches
    /// that held its old configuration.
    fn attach(&self, device: DeviceId, to: Attachment<'_, Self::Domain>) -> Result<(), UnitError>;

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` in `domain` (see
    /// [`PageTable::map`](crate::pagetable::PageTable::map)); invalidates where the hardware
    /// caches not-present entries (VT-d caching mode).
    fn map(&self, domain: &Self::Domain, iova: Iova, phys: PhysAddr, len: u64, prot: Prot) -> Result<(), UnitError>;

    /// Unmaps `[iova, iova + len)` from `domain`, invalidates the IOTLB (and paging-structure
    /// caches where tables were freed) and waits for it, then frees the tables. Returns the bytes
    /// unmapped.
    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError>;

    /// Hands every fault recorded since the last call to `sink`, clears the hardware's records
    /// and its overflow flag, and says how many there were and whether some were lost.
    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError>;
}
