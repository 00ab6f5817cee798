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
use core::ops::Range;

use crate::addr::{Iova, PhysAddr};
use crate::pagetable::{Gather, Prot};

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

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::First => "first-stage",
            Self::Second => "second-stage",
        })
    }
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
        write!(
            f,
            "{} by device {:#x}",
            if self.write { "write" } else { "read" },
            self.device.0
        )?;
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
    /// The hardware reported an error, or refused what the driver gave it.
    Hardware(HardwareError),
    /// The domain (or vIOMMU) is still in use: attached to a device, or the parent of nested
    /// domains. Nothing was changed.
    Busy,
    /// Guest data for a nested domain (a vSTE, a guest PASID entry) was refused: the named field
    /// holds a value the hardware would misinterpret or that would reach beyond the guest.
    GuestEntry(&'static str),
    /// A guest command was refused (named reason): it names a device, tag or operation that is
    /// not the guest's, or is malformed.
    GuestCommand(&'static str),
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
            Self::Hardware(e) => write!(f, "hardware error: {e}"),
            Self::Busy => write!(f, "still in use"),
            Self::GuestEntry(what) => write!(f, "guest entry refused: {what}"),
            Self::GuestCommand(what) => write!(f, "guest command refused: {what}"),
        }
    }
}

impl core::error::Error for UnitError {}

/// What the hardware reported in a [`UnitError::Hardware`]: the same causes on both back-ends,
/// each naming the registers or event that report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareError {
    /// The unit rejected an invalidation descriptor or command as malformed (VT-d FSTS.IQE,
    /// SMMU `CERROR_ILL`).
    CommandRejected,
    /// A device-TLB (ATS) invalidation did not complete (VT-d FSTS.ITE, SMMU
    /// `CERROR_ATC_INV_SYNC`).
    DeviceTlbTimeout,
    /// The command or invalidation queue reported an error of another kind (SMMU `CERROR_ABT`,
    /// a queue whose indices the hardware no longer agrees with).
    Queue,
    /// Queue memory the HAL handed out does not suit the hardware (alignment, address width).
    QueueMemory,
    /// A register-based invalidation (VT-d CCMD / IOTLB registers) reported a failure.
    RegisterInvalidation,
    /// A table entry cannot be encoded for this unit (an address or field beyond what it
    /// supports); nothing was written.
    EntryEncoding,
    /// The driver's records of which tables a device uses no longer match (a driver bug,
    /// reported rather than acted on).
    RecordsOutOfStep,
}

impl fmt::Display for HardwareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CommandRejected => "the unit rejected a command or invalidation descriptor",
            Self::DeviceTlbTimeout => "a device-TLB invalidation timed out",
            Self::Queue => "the command or invalidation queue reported an error",
            Self::QueueMemory => "queue memory unusable by the unit",
            Self::RegisterInvalidation => "a register-based invalidation failed",
            Self::EntryEncoding => "a table entry cannot be encoded for this unit",
            Self::RecordsOutOfStep => "the driver's device records are out of step",
        })
    }
}

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

/// Guest data in the hardware's own 512-bit layout, from which a nested domain is built: the
/// guest's stream-table entry (vSTE) on SMMUv3 (IHI 0070 5.2), the guest's scalable-mode
/// PASID-table entry on VT-d (spec 9.6). Word 0 holds bits 63:0.
pub type GuestEntry = [u64; 8];

/// A CPU page table the embedder owns and lets devices share (shared virtual addressing): x86-64
/// paging for a VT-d first-stage PASID entry, the VMSAv8-64 stage-1 table of `TTBR0_EL1` for an
/// SMMU context descriptor. The unit only points at it; the embedder keeps changing it and calls
/// [`TranslationUnit::flush`] after removing or narrowing a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTable {
    /// Physical address of the top-level table (CR3's page frame; TTBR0_EL1's BADDR).
    pub root: PhysAddr,
    /// Input address bits the table translates: 48 or 57 on x86-64 (4- or 5-level paging);
    /// 64 - T0SZ on Arm.
    pub ia_bits: u32,
    /// The address-space id the CPU uses for this table (SMMU: the CD's ASID, so that broadcast
    /// TLB invalidations reach the SMMU too). Ignored on VT-d.
    pub asid: u16,
    /// The CPU's MAIR_EL1, which the table's attribute indices refer to. Ignored on VT-d.
    pub mair: u64,
}

/// A virtual machine's stage-2 table that the embedder (a hypervisor) owns and shares between
/// the CPU (`VTTBR_EL2`) and the IOMMU: one table, so guest RAM is translated the same way for
/// the guest's CPUs and for the devices given to it. Built with the core's
/// [`VmsaStage2`](crate::pagetable::VmsaStage2) format, 4 KiB granule and `input_bits = ia_bits`
/// (the unit derives the starting level from that, as the format does). The unit points at it
/// under `vmid`; the embedder changes the table, invalidates the CPU's TLBs itself and calls
/// [`TranslationUnit::flush`] for the device side before freeing anything the table dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmTable {
    /// Physical address of the stage-2 root (VTTBR_EL2.BADDR; the STE's S2TTB).
    pub root: PhysAddr,
    /// IPA bits the table translates: 64 - VTCR_EL2.T0SZ.
    pub ia_bits: u32,
    /// The VMID the CPU uses for this table (VTTBR_EL2.VMID), also the STE's S2VMID, so a
    /// VMID names one guest on both sides.
    pub vmid: u16,
}

/// The raw identification registers of a unit, as read, for a VMM to decode with the back-end's
/// own decoders (`iommu_vtd::caps`, `iommu_smmuv3::idr`) and to mirror in a virtual IOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawRegisters {
    /// VT-d VER_REG, CAP_REG and ECAP_REG (spec 11.4.1-11.4.3).
    Vtd { version: u32, cap: u64, ecap: u64 },
    /// SMMUv3 IDR0-IDR5, IIDR and AIDR (IHI 0070 6.3.1-6.3.8).
    Smmuv3 { idr: [u32; 6], iidr: u32, aidr: u32 },
}

/// A device's PCIe Address Translation Services as its unit must know them to serve its
/// device-TLB (PCIe Base 6.0, 10.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ats {
    /// Invalidation requests the device takes at once (its ATS Invalidate Queue Depth, 1..=32):
    /// what a device-TLB invalidation's "max invalidations pending" says.
    pub queue_depth: u8,
}

/// What a unit can do, decoded in terms common to both architectures, plus its raw registers:
/// what a VMM needs to build a virtual IOMMU its guest can drive on this hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardwareInfo {
    /// [`Stage::First`] domains can be created (VT-d FLTS in scalable mode; SMMU S1P).
    pub first_stage: bool,
    /// [`Stage::Second`] domains can be created (VT-d legacy or SLTS; SMMU S2P).
    pub second_stage: bool,
    /// Nested domains (guest stage 1 over a stage-2 parent) can be created.
    pub nesting: bool,
    /// [`Attachment::Identity`] is possible (VT-d ECAP.PT; SMMU bypass STEs always).
    pub identity: bool,
    /// Width of the PASID / substream id the unit accepts on attach; 0 when only the default
    /// (no-PASID) attach exists.
    pub pasid_bits: u8,
    /// Widest input address of a first-stage / second-stage domain (0 when that stage is absent).
    pub first_stage_ia_bits: u8,
    pub second_stage_ia_bits: u8,
    /// Widest output (physical) address.
    pub output_bits: u8,
    /// Leaf sizes the unit's tables can map: bit `n` set means `2^n` bytes.
    pub page_sizes: u64,
    /// The unit's table walks snoop CPU caches (VT-d ECAP.C; SMMU IDR0.COHACC).
    pub coherent_walks: bool,
    /// Device-TLB / ATS invalidation is available (VT-d ECAP.DT; SMMU IDR0.ATS).
    pub ats: bool,
    /// The unit remaps its devices' interrupts (VT-d ECAP.IR). An SMMU does not: an ITS does,
    /// which the embedder registers with the object model (see `iommufd` "Interrupts").
    pub interrupt_remapping: bool,
    /// How many domain tags the hardware has (VT-d domain ids from CAP.ND; SMMU VMIDs when it
    /// has stage 2, else ASIDs).
    pub tags: u32,
    /// The registers the above was decoded from.
    pub raw: RawRegisters,
}

/// What [`TranslationUnit::forward_invalidations`] did with a guest's commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// Commands checked, translated and issued, from the first; all of them completed on the
    /// hardware before the call returned.
    pub done: usize,
    /// Why command number `done` was refused; it and the ones after it were not issued.
    /// `None` when all were.
    pub refused: Option<UnitError>,
}

/// One hardware IOMMU. Implemented by `iommu_vtd::VtdUnit` and `iommu_smmuv3::SmmuUnit`.
///
/// All methods take `&self`: a unit is shared by the CPUs that map and unmap, and serialises
/// internally only where the hardware needs it (its invalidation queue is lock-free). A method
/// that refuses changes nothing.
pub trait TranslationUnit {
    /// A domain of this unit: a paging domain (an I/O page table plus the unit's tag for it), a
    /// domain sharing a CPU table, or a nested domain (guest data over a nest parent).
    type Domain;
    /// The unit's part of one guest's vIOMMU: the tags its guest's translations are cached under
    /// (SMMU VMID; VT-d domain ids) and its nest parent's table.
    type VIommu;
    /// One guest invalidation command, in the hardware's format: a 128-bit SMMUv3 command
    /// (`[u64; 2]`), a 256-bit VT-d descriptor (`[u64; 4]`, 128-bit ones in the low half).
    type GuestCommand: Copy + fmt::Debug;

    /// What the unit can do, with its raw identification registers.
    fn info(&self) -> HardwareInfo;

    /// A paging domain whose table uses `stage`'s format and translates IOVAs below
    /// `2^ia_bits` (rounded up to what the hardware supports).
    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError>;

    /// A domain that translates through the CPU table `cpu` (shared virtual addressing; see
    /// [`CpuTable`]). Its `map` and `unmap` are refused: the embedder changes the table itself
    /// and calls [`flush`](Self::flush).
    fn new_shared_domain(&self, cpu: &CpuTable) -> Result<Self::Domain, UnitError>;

    /// A stage-2 domain that translates through the VM table `vm` (see [`VmTable`]): a nest
    /// parent like any stage-2 domain, but its `map` and `unmap` are refused; the embedder
    /// changes the table and calls [`flush`](Self::flush). Units that cannot point at a table
    /// of that format refuse with [`UnitError::Unsupported`].
    fn new_vm_domain(&self, vm: &VmTable) -> Result<Self::Domain, UnitError> {
        let _ = vm;
        Err(UnitError::Unsupported(
            "sharing a VM's VMSAv8-64 stage-2 table (SMMUv3 only)",
        ))
    }

    /// Gives a domain's tag and tables back. Refused with [`UnitError::Busy`] (and the domain
    /// handed back unchanged) while a device or PASID is attached to it or, for a nest parent,
    /// while a vIOMMU uses it. Mappings still in the table are dropped with it.
    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)>;

    /// Points `device` at `to`, replacing what it was attached to, and invalidates the caches
    /// that held its old configuration.
    fn attach(&self, device: DeviceId, to: Attachment<'_, Self::Domain>) -> Result<(), UnitError>;

    /// Points the requests of `device` that carry `pasid` (VT-d PASID, SMMU substream id) at
    /// `to`. Refused when the unit has no PASIDs or `pasid` is beyond
    /// [`HardwareInfo::pasid_bits`].
    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError>;

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` in `domain` (see
    /// [`PageTable::map`](crate::pagetable::PageTable::map)); invalidates where the hardware
    /// caches not-present entries (VT-d caching mode).
    fn map(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError>;

    /// Unmaps `[iova, iova + len)` from `domain`, invalidates the IOTLB (and paging-structure
    /// caches where tables were freed) and waits for it, then frees the tables. Returns the bytes
    /// unmapped.
    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError>;

    /// [`unmap`](Self::unmap), and the tables it leaves with nothing mapped are freed as well,
    /// after the same one invalidation, wherever their whole span lies in `owned`
    /// ([`PageTable::unmap_pruning`](crate::pagetable::PageTable::unmap_pruning)). `owned`
    /// contains the range and is the caller's word that no other operation on `domain` touches
    /// it until this returns: the object model passes the free space around the range, which it
    /// keeps other maps and unmaps out of meanwhile. Refused like `unmap` where `unmap` is.
    fn unmap_pruning(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
    ) -> Result<u64, UnitError>;

    /// Frees the tables of `domain` on the way to each `(iova, owned)` point that map nothing
    /// and whose whole span lies in its `owned` region
    /// ([`PageTable::prune`](crate::pagetable::PageTable::prune)), with one invalidation (walk
    /// caches included) and its wait; returns how many. Each `owned` is the caller's word, as for
    /// [`unmap_pruning`](Self::unmap_pruning): the object model passes the free space around
    /// the places where pruning unmaps left tables it could not free then. Refused like
    /// `unmap`, and with nothing changed for a point outside its region.
    fn prune_tables(
        &self,
        domain: &Self::Domain,
        points: &[(Iova, Range<u64>)],
    ) -> Result<usize, UnitError>;

    /// Unmaps `[iova, iova + len)` from `domain` like [`unmap`](Self::unmap) but issues no
    /// invalidation: what must be invalidated, and the table frames to free once it is, go into
    /// `gather` (pass the same gather to many calls on the same domain to batch them). Returns
    /// the bytes unmapped; a refused unmap leaves the table and `gather` as they were.
    ///
    /// Until [`flush_deferred`](Self::flush_deferred) of that gather returns, the device may
    /// still use cached translations of the range: its IOVAs must not be mapped again and its
    /// memory must not be reused in a way that matters. Units without it (and domains whose
    /// `unmap` is refused: shared, nested, VM tables) refuse with [`UnitError::Unsupported`].
    fn unmap_deferred(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        let _ = (domain, iova, len, gather);
        Err(UnitError::Unsupported("deferred unmaps"))
    }

    /// The invalidation [`unmap`](Self::unmap) would have issued, once, for everything
    /// [`unmap_deferred`](Self::unmap_deferred) gathered in `gather` on `domain` (the IOTLB for
    /// the gathered range, and the paging-structure / walk caches where tables were removed);
    /// waits for it, then frees the gathered table frames. An empty gather issues nothing.
    ///
    /// `gather` must have been filled from `domain` only (a gather another table filled is
    /// refused with [`PageTable`](UnitError::PageTable)`(`[`ForeignGather`](crate::pagetable::Error::ForeignGather)`)`).
    /// If the invalidation fails its error is returned and the gathered frames are leaked, never
    /// freed (a walker may still hold a cached pointer to them).
    fn flush_deferred(&self, domain: &Self::Domain, gather: Gather) -> Result<(), UnitError> {
        let _ = (domain, gather);
        Err(UnitError::Unsupported("deferred unmaps"))
    }

    /// Invalidates the unit's cached translations of `[iova, iova + len)` in `domain` and waits
    /// for it: for a table the embedder changed itself (a shared CPU table).
    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError>;

    /// Frees the tables of `domain` that unmaps left empty
    /// ([`PageTable::reclaim`](crate::pagetable::PageTable::reclaim)): unlinks them, invalidates
    /// their range once (walk caches included) and waits for it, then frees their frames (or
    /// keeps a few for the domain's next tables). Returns how many tables it freed; with none,
    /// nothing is asked of the hardware. `&mut` proves no map or unmap of the domain runs.
    ///
    /// If the invalidation fails its error is returned and the unlinked frames are leaked. Units
    /// without it, and domains whose tables are not the unit's (shared, nested, VM tables),
    /// refuse with [`UnitError::Unsupported`].
    fn reclaim_tables(&self, domain: &mut Self::Domain) -> Result<usize, UnitError> {
        let _ = domain;
        Err(UnitError::Unsupported("table reclaim"))
    }

    /// Lets `device`'s translation requests through (`Some`), so that it may cache
    /// translations in its device-TLB, on what it is attached to now and later, and from then
    /// on follows every invalidation of its domain, and every change of what it is attached to,
    /// with a device-TLB invalidation for it; or (`None`) stops accepting its translation
    /// requests and invalidates its whole device-TLB.
    ///
    /// The device's own ATS is enabled only after `Some` returned and disabled before `None`
    /// is asked ([`Iommu::enable_ats`](crate::iommufd::Iommu::enable_ats) keeps that order).
    /// Units without device-TLBs, and those that do not implement them yet, refuse with
    /// [`UnitError::Unsupported`].
    fn set_ats(&self, device: DeviceId, ats: Option<Ats>) -> Result<(), UnitError> {
        let _ = (device, ats);
        Err(UnitError::Unsupported("ATS (device-TLBs)"))
    }

    /// Hands every fault recorded since the last call to `sink`, clears the hardware's records
    /// and its overflow flag, and says how many there were and whether some were lost.
    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError>;

    /// The unit's part of a vIOMMU whose guest's DMA is translated by the nest parent `parent`
    /// (a [`Stage::Second`] paging domain: guest physical to host physical).
    fn new_viommu(&self, parent: &Self::Domain) -> Result<Self::VIommu, UnitError>;

    /// Gives a vIOMMU's tags back; refused with [`UnitError::Busy`] while nested domains built
    /// on it exist.
    fn destroy_viommu(&self, viommu: Self::VIommu) -> Result<(), (Self::VIommu, UnitError)>;

    /// A nested domain: the guest's stage-1 configuration `guest` (validated field by field;
    /// see [`GuestEntry`]) over `viommu`'s nest parent. A guest abort / bypass entry gives a
    /// blocking domain / the parent's translation alone (SMMUv3: V=0 or Config abort / bypass;
    /// VT-d: PGTT pass-through; a not-present VT-d entry is refused: attach the device
    /// [`Attachment::Blocking`] instead).
    fn new_nested(
        &self,
        viommu: &Self::VIommu,
        guest: &GuestEntry,
    ) -> Result<Self::Domain, UnitError>;

    /// Checks, translates and issues a guest's invalidation commands, in order: each may name
    /// only the guest's own devices (virtual ids, translated by `devices`) and the guest's own
    /// tags; the unit's tags replace the guest's. Stops at the first refused command. The
    /// commands issued have completed on the hardware when this returns.
    fn forward_invalidations(
        &self,
        viommu: &Self::VIommu,
        devices: &dyn Fn(u32) -> Option<DeviceId>,
        cmds: &[Self::GuestCommand],
    ) -> Forwarded;

    /// What a guest's invalidation command asks a shadowing vIOMMU to follow (see
    /// `iommufd::shadow`): which of the guest's translations may have changed. Commands a
    /// shadow has nothing to do with (configuration caches, device-TLBs) are refused by name.
    fn guest_flush(&self, cmd: &Self::GuestCommand) -> Result<GuestFlush, UnitError> {
        let _ = cmd;
        Err(UnitError::Unsupported(
            "shadowing: this unit does not decode guest invalidations",
        ))
    }
}

/// A guest invalidation as a shadowing vIOMMU follows it ([`TranslationUnit::guest_flush`]).
/// Tags are the guest's own (VT-d domain id, SMMU ASID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFlush {
    /// The translations of `tag` in `[iova, iova + len)`.
    Range { tag: u32, iova: u64, len: u64 },
    /// Every translation of `tag`.
    Tag(u32),
    /// Every translation of the guest.
    All,
    /// A completion barrier (VT-d wait descriptor, SMMU `CMD_SYNC`): the shadow is in step
    /// before the call returns, so there is nothing left to wait for.
    Wait,
}

/// A borrowed unit is a unit: an embedder that keeps its units elsewhere (in a static, next to
/// their register mappings) can still register them with the object model
/// ([`Iommu::add_unit`](crate::iommufd::Iommu::add_unit)`(&unit)`).
impl<T: TranslationUnit + ?Sized> TranslationUnit for &T {
    type Domain = T::Domain;
    type VIommu = T::VIommu;
    type GuestCommand = T::GuestCommand;

    fn info(&self) -> HardwareInfo {
        (**self).info()
    }
    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError> {
        (**self).new_domain(stage, ia_bits)
    }
    fn new_shared_domain(&self, cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        (**self).new_shared_domain(cpu)
    }
    fn new_vm_domain(&self, vm: &VmTable) -> Result<Self::Domain, UnitError> {
        (**self).new_vm_domain(vm)
    }
    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        (**self).destroy_domain(domain)
    }
    fn attach(&self, device: DeviceId, to: Attachment<'_, Self::Domain>) -> Result<(), UnitError> {
        (**self).attach(device, to)
    }
    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        (**self).attach_pasid(device, pasid, to)
    }
    fn map(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        (**self).map(domain, iova, phys, len, prot)
    }
    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError> {
        (**self).unmap(domain, iova, len)
    }
    fn unmap_pruning(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
    ) -> Result<u64, UnitError> {
        (**self).unmap_pruning(domain, iova, len, owned)
    }
    fn prune_tables(
        &self,
        domain: &Self::Domain,
        points: &[(Iova, Range<u64>)],
    ) -> Result<usize, UnitError> {
        (**self).prune_tables(domain, points)
    }
    fn unmap_deferred(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        (**self).unmap_deferred(domain, iova, len, gather)
    }
    fn flush_deferred(&self, domain: &Self::Domain, gather: Gather) -> Result<(), UnitError> {
        (**self).flush_deferred(domain, gather)
    }
    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError> {
        (**self).flush(domain, iova, len)
    }
    fn set_ats(&self, device: DeviceId, ats: Option<Ats>) -> Result<(), UnitError> {
        (**self).set_ats(device, ats)
    }
    fn reclaim_tables(&self, domain: &mut Self::Domain) -> Result<usize, UnitError> {
        (**self).reclaim_tables(domain)
    }
    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        (**self).drain_faults(sink)
    }
    fn new_viommu(&self, parent: &Self::Domain) -> Result<Self::VIommu, UnitError> {
        (**self).new_viommu(parent)
    }
    fn destroy_viommu(&self, viommu: Self::VIommu) -> Result<(), (Self::VIommu, UnitError)> {
        (**self).destroy_viommu(viommu)
    }
    fn new_nested(
        &self,
        viommu: &Self::VIommu,
        guest: &GuestEntry,
    ) -> Result<Self::Domain, UnitError> {
        (**self).new_nested(viommu, guest)
    }
    fn forward_invalidations(
        &self,
        viommu: &Self::VIommu,
        devices: &dyn Fn(u32) -> Option<DeviceId>,
        cmds: &[Self::GuestCommand],
    ) -> Forwarded {
        (**self).forward_invalidations(viommu, devices, cmds)
    }
    fn guest_flush(&self, cmd: &Self::GuestCommand) -> Result<GuestFlush, UnitError> {
        (**self).guest_flush(cmd)
    }
}

/// A table-only unit over the host HAL, for host tests and benchmarks.
#[cfg(all(feature = "host-hal", not(loom)))]
pub mod host;
