//! One VT-d remapping unit brought up and driven: [`VtdUnit`] takes the unit over, owns its root,
//! context and PASID tables and its invalidation queue, and implements the core's
//! [`TranslationUnit`] with domains whose tables come from the core's page-table engine.
//!
//! Bring-up order (VT-d spec 10.4.4, 6.5, 7.3): translation off, root table set (SRTP), queued
//! invalidation on (or register-based invalidation when ECAP.QI is clear), global context-cache
//! and IOTLB invalidation, faults cleared and masked (polled through [`TranslationUnit::drain_faults`],
//! or signalled by a fault-event MSI once [`VtdUnit::enable_fault_interrupt`] is called),
//! translation on. Every handshake is a bounded poll with a typed timeout.
//!
//! Structure changes (root/context/PASID entries, domain ids) are serialised by one lock: they
//! happen at attach, create and destroy time only. Map and unmap take no lock over the tables
//! (the engine is lock-free and so is the queue); their flush reads a nest parent's nested
//! domain ids under a short spin lock of its own (see [`crate::viommu::NestParents`]).
//!
//! Domain ids are reused: [`TranslationUnit::destroy_domain`] refuses a domain any context or
//! PASID entry still points at (counted per id in [`crate::domain_ids`]), invalidates every
//! cache entry tagged with its id, frees its table and gives the id back.
//!
//! RMRRs (DMAR reserved memory regions, given with [`VtdUnit::add_rmrrs`]) stay identity-mapped
//! for the devices they name: attaching such a device to a paging domain maps them into the
//! domain first; blocking such a device is refused (see [`VtdUnit::add_rmrr`]).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, FlushRange, Gather, PageTable, Prot, VtdSecondStage, VtdSecondStageConfig,
    X86FirstStage, X86FirstStageConfig,
};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultRecord, Forwarded, GuestEntry, HardwareError,
    HardwareInfo, RawRegisters, Stage, TranslationUnit, UnitError,
};

use crate::caps::Agaw;
use crate::descriptor::{
    plan_flush, ContextCacheScope, Descriptor, Drain, FlushLimits, FlushPlan, FunctionMask,
    IotlbScope, IovaRange, PasidCacheScope, PasidIotlbScope,
};
use crate::dmar::Dmar;
use crate::domain_ids::DomainIds;
use crate::fault::{Classify, RawFault};
use crate::pasid::{
    FirstStage, FirstStagePaging, Pasid, PasidDirEntry, PasidDirectorySize, PasidEntry,
    PassThrough, SecondStage,
};
use crate::qi::{InvalidationQueue, QiError, QiMmio, QueueConfig, QueueMemory, QueueSize};
use crate::register_invalidation::{invalidate_context_cache, invalidate_iotlb};
use crate::registers::{
    Readable, Writeable, EVENT_ADDRESS, EVENT_CONTROL, EVENT_DATA, FSTS, GCMD, GSTS, RTADDR,
};
use crate::registers::{UnitInfo, UnitRegisters};
use crate::root_table::{
    scalable_context_slot, ContextEntry, ContextHalf, DomainId, EntryError, RootEntry,
    ScalableContext, ScalableContextEntry, ScalableRootEntry, SourceId,
};

/// Which table format the root table uses (RTADDR.TTM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Legacy root and context entries; second-stage tables only.
    Legacy,
    /// Scalable-mode entries and PASID tables (needs ECAP.SMTS).
    Scalable,
}

/// Past this many page-selective IOTLB descriptors, one domain-selective one is used.
pub const FLUSH_THRESHOLD: usize = 16;

/// The GSTS bits that are states (not one-shot commands): what a GCMD write must repeat.
const PERSISTENT: u32 = (GSTS::TES.mask << GSTS::TES.shift)
    | (GSTS::QIES.mask << GSTS::QIES.shift)
    | (GSTS::IRES.mask << GSTS::IRES.shift)
    | (GSTS::CFIS.mask << GSTS::CFIS.shift);

/// A domain: its tag on this unit and its table (one of the unit's paging formats, or a CPU
/// table the embedder owns). Give it back with [`TranslationUnit::destroy_domain`]; a domain
/// merely dropped keeps its id and table frames for the unit's life.
pub struct VtdDomain<H: Hal> {
    pub(crate) id: DomainId,
    pub(crate) table: DomainTable<H>,
}

pub(crate) enum DomainTable<H: Hal> {
    Second(PageTable<VtdSecondStage, H>),
    First(PageTable<X86FirstStage, H>),
    /// The embedder's x86-64 CPU table (shared virtual addressing): first-stage format, changed
    /// only by the embedder.
    Shared {
        root: PhysAddr,
        paging: FirstStagePaging,
    },
    /// Built from a guest's PASID entry over a vIOMMU's nest parent (`crate::viommu`).
    Nested(crate::viommu::NestedTable),
}

impl<H: Hal> DomainTable<H> {
    /// Whether the unit walks the table as first stage (x86-64 paging): its translations are
    /// tagged with (domain id, PASID) and need PASID-based invalidations.
    pub(crate) fn first_stage(&self) -> bool {
        !matches!(self, Self::Second(_) | Self::Nested(_))
    }
}

impl<H: Hal> VtdDomain<H> {
    pub(crate) fn from_parts(id: DomainId, table: DomainTable<H>) -> Self {
        Self { id, table }
    }

    /// The domain id the unit's caches tag this domain's translations with.
    pub fn id(&self) -> DomainId {
        self.id
    }

    pub fn stage(&self) -> Stage {
        match self.table {
            DomainTable::Second(_) | DomainTable::Nested(_) => Stage::Second,
            DomainTable::First(_) | DomainTable::Shared { .. } => Stage::First,
        }
    }

    /// The table root the context or PASID entry points at.
    pub fn root(&self) -> PhysAddr {
        match &self.table {
            DomainTable::Second(t) => t.root(),
            DomainTable::First(t) => t.root(),
            DomainTable::Shared { root, .. } => *root,
            DomainTable::Nested(n) => n.root(),
        }
    }

    /// Whether the domain translates through a CPU table the embedder owns.
    pub fn is_shared(&self) -> bool {
        matches!(self.table, DomainTable::Shared { .. })
    }

    /// The physical address `iova` translates to in this domain's own table (not for shared
    /// domains).
    pub fn translate(&self, iova: Iova) -> Result<PhysAddr, UnitError> {
        Ok(match &self.table {
            DomainTable::Second(t) => t.iova_to_phys(iova)?,
            DomainTable::First(t) => t.iova_to_phys(iova)?,
            DomainTable::Shared { .. } => return Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        })
    }
}

const SHARED_TABLE: &str =
    "map/unmap of a domain sharing a CPU table (the embedder changes it, then calls flush)";

/// A fault-event interrupt message (VT-d 5.1.6 / 11.4.7.3-5): the MSI address and data the
/// unit writes when it records a fault. With interrupt remapping off this is a
/// compatibility-format MSI: address 0xfee0_0000 | destination APIC id << 12, data = vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEventMsi {
    /// MSI address (dword aligned).
    pub address: u64,
    /// MSI data (the low 16 bits; the upper 16 only with ECAP.EIM).
    pub data: u32,
}

impl FaultEventMsi {
    /// A fixed, edge-triggered xAPIC interrupt `vector` to the CPU with APIC id `apic_id`
    /// (physical destination mode; Intel SDM vol. 3, 11.11).
    pub const fn xapic(apic_id: u8, vector: u8) -> Self {
        Self {
            address: 0xfee0_0000 | ((apic_id as u64) << 12),
            data: vector as u32,
        }
    }
}

/// One RMRR range kept identity-mapped for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedRegion {
    pub device: DeviceId,
    /// First byte, 4 KiB aligned.
    pub base: u64,
    /// Last byte, inclusive (one below a 4 KiB boundary).
    pub limit: u64,
}

impl ReservedRegion {
    fn len(&self) -> u64 {
        self.limit - self.base + 1
    }
}

/// RMRR regions a unit keeps (no allocator in this crate).
pub const MAX_RMRRS: usize = 16;

pub(crate) struct Rmrrs {
    regions: [Option<ReservedRegion>; MAX_RMRRS],
}

impl Rmrrs {
    fn of(&self, device: DeviceId) -> impl Iterator<Item = ReservedRegion> + '_ {
        self.regions
            .iter()
            .flatten()
            .copied()
            .filter(move |r| r.device == device)
    }
}

/// A brought-up remapping unit.
pub struct VtdUnit<'u, H: Hal + Clone> {
    pub(crate) regs: &'u UnitRegisters,
    pub(crate) hal: H,
    pub(crate) info: UnitInfo,
    pub(crate) mode: Mode,
    /// Host address width (DMAR HAW + 1): the output size of every table.
    pub(crate) output_width: u32,
    /// The deepest second-stage table the unit supports: the AW of pass-through entries.
    pub(crate) max_agaw: Agaw,
    pub(crate) coherency: Coherency,
    pub(crate) root: PhysAddr,
    pub(crate) qi: Option<InvalidationQueue<'u, QiMmio<'u>>>,
    /// Serialises changes of root, context and PASID entries and their invalidations.
    pub(crate) tables: spin::Mutex<()>,
    /// Domain ids in use, free for reuse, and how many entries point at each; changed under
    /// `tables`.
    pub(crate) ids: DomainIds,
    /// RMRR regions of the devices this unit serves; taken under `tables` when both are held.
    pub(crate) rmrrs: spin::Mutex<Rmrrs>,
    /// The id pass-through entries are tagged with, taken at bring-up.
    pub(crate) identity_id: DomainId,
    /// Invalidation descriptors issued through registers (no queue), for statistics.
    pub(crate) register_invalidations: AtomicU64,
    /// Faults read from the hardware and not yet handed to a drain; one reader at a time, so
    /// a record is reported once. Taken after `tables` when both are held.
    pub(crate) faults: spin::Mutex<Pending>,
    /// Nest parents in use by vIOMMUs (`crate::viommu`).
    pub(crate) nest_parents: crate::viommu::NestParents,
}

/// Faults collected from the recording registers before a drain asked for them: at attach
/// time, a device's faults are read while its table is still attached, the only time a
/// second-stage fault (same code for not present and read-only) can be classified.
pub(crate) struct Pending {
    records: [Option<FaultRecord>; PENDING],
    len: usize,
    overflow: bool,
}

/// Faults kept between drains; more are counted as an overflow.
const PENDING: usize = 32;

// SAFETY: the only non-thread-safe part is `&UnitRegisters` (a pointer to MMIO). Registers are
// reached by single volatile accesses; the read-modify-write sequences are serialised: GCMD
// commands happen in `new` (exclusive) and in the write-buffer flush (which writes the same
// value from any CPU), FSTS and fault-record writes are RW1C of bits the writer owns under the
// `faults` lock, context/root registers under the `tables` lock, and the queue registers follow
// the queue's own protocol. Table memory is reached through atomics. `H` must itself be
// shareable for the domains' tables.
unsafe impl<H: Hal + Clone + Sync> Sync for VtdUnit<'_, H> {}
// SAFETY: as above; nothing in the unit is tied to the CPU that created it.
unsafe impl<H: Hal + Clone + Send> Send for VtdUnit<'_, H> {}

/// Why bring-up failed.
pub type BringupError = UnitError;

impl<'u, H: Hal + Clone> VtdUnit<'u, H> {
    /// The descriptor width the queue memory given to [`VtdUnit::new`] must be laid out for.
    pub fn queue_width(info: UnitInfo) -> crate::qi::DescriptorWidth {
        crate::qi::DescriptorWidth::for_unit(info.ecap)
    }

    /// Takes the unit over and turns translation on with every device blocked.
    ///
    /// `queue` is the memory of a one-page invalidation queue laid out for
    /// [`queue_width`](Self::queue_width) (ignored when ECAP.QI is clear); `output_width` is the
    /// DMAR host address width + 1.
    pub fn new(
        regs: &'u UnitRegisters,
        hal: H,
        mode: Mode,
        output_width: u32,
        queue: Option<QueueMemory<'u>>,
    ) -> Result<Self, BringupError> {
        let info = regs.info();
        let (cap, ecap) = (info.cap, info.ecap);
        if mode == Mode::Scalable && !(ecap.smts() && ecap.qi()) {
            return Err(UnitError::Unsupported(
                "scalable mode needs ECAP.SMTS and ECAP.QI",
            ));
        }
        let max_agaw = cap
            .max_agaw()
            .map_err(|_| UnitError::Unsupported("no usable SAGAW"))?;
        let coherency = if ecap.coherent() {
            Coherency::Coherent
        } else {
            Coherency::NonCoherent
        };
        let block = regs.block();

        // Firmware may have left translation or the queue on: turn them off before the root
        // table and queue registers change under a running unit.
        if block.gsts.is_set(GSTS::TES) {
            Self::command(
                regs,
                GCMD::TE.mask << GCMD::TE.shift,
                false,
                GSTS::TES,
                "GSTS.TES clear",
            )?;
        }
        if block.gsts.is_set(GSTS::QIES) {
            Self::command(
                regs,
                GCMD::QIE.mask << GCMD::QIE.shift,
                false,
                GSTS::QIES,
                "GSTS.QIES clear",
            )?;
        }

        let root = hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        clean(&hal, coherency, root, 4096);
        let ttm = match mode {
            Mode::Legacy => RTADDR::TTM::Legacy,
            Mode::Scalable => RTADDR::TTM::Scalable,
        };
        block
            .rtaddr
            .write(ttm + RTADDR::RTA.val(root.as_u64() >> 12));
        Self::command(
            regs,
            GCMD::SRTP.mask << GCMD::SRTP.shift,
            true,
            GSTS::RTPS,
            "GSTS.RTPS",
        )?;

        let qi = match (ecap.qi(), queue) {
            (true, Some(memory)) => {
                let config = QueueConfig::for_unit(ecap, QueueSize::ONE_PAGE);
                let q = InvalidationQueue::new(QiMmio::new(block), memory, config)
                    .map_err(|_| UnitError::Hardware(HardwareError::QueueMemory))?;
                block.iqt.set(0);
                block.iqa.set(q.iqa_value());
                Self::command(
                    regs,
                    GCMD::QIE.mask << GCMD::QIE.shift,
                    true,
                    GSTS::QIES,
                    "GSTS.QIES",
                )?;
                Some(q)
            }
            (true, None) if mode == Mode::Scalable => {
                return Err(UnitError::Unsupported("scalable mode needs queue memory"))
            }
            _ => None,
        };

        // Caching mode reserves domain id 0 (tags of cached not-present entries).
        let ids = DomainIds::new(&hal, cap.domain_ids(), u32::from(cap.caching_mode()))?;
        let identity_id = ids.allocate(&hal)?;
        let unit = Self {
            regs,
            hal,
            info,
            mode,
            output_width,
            max_agaw,
            coherency,
            root,
            qi,
            tables: spin::Mutex::new(()),
            ids,
            rmrrs: spin::Mutex::new(Rmrrs {
                regions: [None; MAX_RMRRS],
            }),
            identity_id,
            register_invalidations: AtomicU64::new(0),
            faults: spin::Mutex::new(Pending {
                records: [None; PENDING],
                len: 0,
                overflow: false,
            }),
            nest_parents: crate::viommu::NestParents::new(),
        };
        let mut global = Batch::new();
        global.push(Descriptor::ContextCache(ContextCacheScope::Global));
        if mode == Mode::Scalable {
            global.push(Descriptor::PasidCache(PasidCacheScope::Global));
        }
        global.push(Descriptor::Iotlb {
            scope: IotlbScope::Global,
            drain: unit.drain(),
        });
        unit.invalidate(global.iter())?;

        // Stale records from before us: cleared; events masked (faults are polled).
        unit.drain_faults(&mut |_| {})?;
        block.fectl.write(crate::registers::EVENT_CONTROL::IM::SET);
        unit.flush_write_buffer()?;
        Self::command(
            regs,
            GCMD::TE.mask << GCMD::TE.shift,
            true,
            GSTS::TES,
            "GSTS.TES",
        )?;
        Ok(unit)
    }

    /// One GCMD command with its GSTS handshake (10.4.4): the persistent state bits are
    /// written back with `bit` set or cleared, then GSTS must follow.
    fn command(
        regs: &UnitRegisters,
        bit: u32,
        on: bool,
        status: tock_registers::fields::Field<u32, GSTS::Register>,
        waiting_for: &'static str,
    ) -> Result<(), UnitError> {
        let block = regs.block();
        let current = block.gsts.get() & PERSISTENT;
        let value = if on { current | bit } else { current & !bit };
        block.gcmd.set(value);
        poll_until(waiting_for, DEFAULT_POLL_BUDGET, || {
            block.gsts.is_set(status) == on
        })?;
        Ok(())
    }

    /// CAP.RWBF: flush the unit's write buffer so table writes reach memory before it looks.
    pub(crate) fn flush_write_buffer(&self) -> Result<(), UnitError> {
        if !self.info.cap.rwbf() {
            return Ok(());
        }
        let block = self.regs.block();
        let current = block.gsts.get() & PERSISTENT;
        block
            .gcmd
            .set(current | (GCMD::WBF.mask << GCMD::WBF.shift));
        poll_until("GSTS.WBFS clear", DEFAULT_POLL_BUDGET, || {
            !block.gsts.is_set(GSTS::WBFS)
        })?;
        Ok(())
    }

    /// The decoded VER/CAP/ECAP the unit runs with (named apart from
    /// [`TranslationUnit::info`], which reports them in the core's common terms).
    pub fn unit_info(&self) -> UnitInfo {
        self.info
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The root table the unit walks (RTADDR), for inspection.
    pub fn root_table(&self) -> PhysAddr {
        self.root
    }

    /// Sends a fault-event MSI (`msi`) whenever the unit records a fault while no earlier one
    /// is pending (VT-d 7.3.1: FSTS.PPF, PFO and IQE clear), and unmasks it (FECTL.IM = 0). The
    /// handler drains with [`TranslationUnit::drain_faults`], which clears the records so the
    /// next fault interrupts again. A fault pending when this is called (FECTL.IP) is signalled
    /// at once. With interrupt remapping off the message is delivered as written.
    pub fn enable_fault_interrupt(&self, msi: FaultEventMsi) -> Result<(), UnitError> {
        if !msi.address.is_multiple_of(4) {
            return Err(UnitError::Unsupported(
                "fault-event MSI address not dword aligned",
            ));
        }
        if msi.data >> 16 != 0 && !self.info.ecap.eim() {
            return Err(UnitError::Unsupported(
                "extended MSI data needs ECAP.EIM (32-bit data)",
            ));
        }
        // The fault lock orders this against drains touching FSTS on other CPUs.
        let _faults = self.faults.lock();
        let block = self.regs.block();
        block.fectl.write(EVENT_CONTROL::IM::SET);
        block
            .fedata
            .write(EVENT_DATA::IMD.val(msi.data & 0xffff) + EVENT_DATA::EIMD.val(msi.data >> 16));
        block
            .feaddr
            .write(EVENT_ADDRESS::MA.val((msi.address as u32) >> 2));
        block.feuaddr.set((msi.address >> 32) as u32);
        // Unmasked last, once the message is whole.
        block.fectl.set(0);
        Ok(())
    }

    /// Masks the fault-event interrupt again (faults are still recorded; poll them).
    pub fn disable_fault_interrupt(&self) {
        let _faults = self.faults.lock();
        self.regs.block().fectl.write(EVENT_CONTROL::IM::SET);
    }

    /// Keeps `[base, limit]` identity-mapped (read-write) for `device`, as an RMRR asks (VT-d
    /// 8.4): attaching the device to a paging domain maps the range into the domain first
    /// (refused with [`iommu::pagetable::Error::AlreadyMapped`] if the domain maps anything
    /// else there); identity attach keeps it reachable anyway.
    ///
    /// Blocking such a device is refused ([`UnitError::Unsupported`]): firmware keeps using the
    /// range (USB legacy emulation, graphics), and Linux's IOMMU core also refuses a blocking
    /// domain for a device whose firmware asked for a 1:1 region ("rejecting configuring the
    /// device without a 1:1 mapping"). The device stays blocked from bring-up to its first
    /// attach, so an embedder attaches such devices early.
    pub fn add_rmrr(&self, device: DeviceId, base: u64, limit: u64) -> Result<(), UnitError> {
        use iommu::pagetable::Error as PtError;
        if !base.is_multiple_of(4096) || limit < base || !limit.wrapping_add(1).is_multiple_of(4096)
        {
            return Err(UnitError::PageTable(PtError::UnalignedIova));
        }
        let region = ReservedRegion {
            device,
            base,
            limit,
        };
        let _tables = self.tables.lock();
        let mut rmrrs = self.rmrrs.lock();
        if rmrrs.regions.iter().flatten().any(|r| *r == region) {
            return Ok(());
        }
        let slot = rmrrs
            .regions
            .iter_mut()
            .find(|r| r.is_none())
            .ok_or(UnitError::Unsupported("more RMRR regions than MAX_RMRRS"))?;
        *slot = Some(region);
        Ok(())
    }

    /// [`add_rmrr`](Self::add_rmrr) for every device every RMRR of `dmar` in PCI `segment`
    /// names. Returns the (device, region) pairs added. Scopes behind a bridge (a path longer
    /// than one step) need PCI enumeration to resolve and are refused, before any is added.
    pub fn add_rmrrs(&self, dmar: &Dmar<'_>, segment: u16) -> Result<usize, UnitError> {
        let rmrrs = || dmar.rmrrs().filter(|r| r.segment() == segment);
        if rmrrs().any(|r| r.scopes().any(|s| s.direct_bdf().is_none())) {
            return Err(UnitError::Unsupported(
                "RMRR device scope behind a bridge (needs PCI enumeration)",
            ));
        }
        let mut added = 0;
        for r in rmrrs() {
            for scope in r.scopes() {
                if let Some(bdf) = scope.direct_bdf() {
                    let device = DeviceId(u32::from(bdf.requester_id()));
                    self.add_rmrr(device, r.base(), r.limit())?;
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    /// The RMRR regions kept for `device`.
    pub fn rmrrs_of(&self, device: DeviceId) -> impl Iterator<Item = ReservedRegion> {
        let rmrrs = self.rmrrs.lock();
        let mut out = [None; MAX_RMRRS];
        for (slot, r) in out.iter_mut().zip(rmrrs.of(device)) {
            *slot = Some(r);
        }
        out.into_iter().flatten()
    }

    /// For an attach of `device` to `to`: refuses blocking an RMRR device and maps the
    /// device's RMRR ranges into a paging domain (those it mapped are returned, for rollback).
    /// The caller holds `tables`.
    fn prepare_rmrrs(
        &self,
        device: DeviceId,
        to: &Attachment<'_, VtdDomain<H>>,
    ) -> Result<[Option<ReservedRegion>; MAX_RMRRS], UnitError> {
        use iommu::pagetable::Error as PtError;
        let mut mapped = [None; MAX_RMRRS];
        let rmrrs = self.rmrrs.lock();
        if rmrrs.of(device).next().is_none() {
            return Ok(mapped);
        }
        let d = match to {
            Attachment::Identity => return Ok(mapped),
            Attachment::Blocking => {
                return Err(UnitError::Unsupported(
                    "blocking a device with an RMRR (firmware needs its identity mapping)",
                ))
            }
            Attachment::Paging(d) => *d,
        };
        if d.is_shared() {
            return Err(UnitError::Unsupported(
                "an RMRR device in a domain sharing a CPU table",
            ));
        }
        // Check every region first, so a refusal changes nothing.
        let mut todo = [None; MAX_RMRRS];
        for (slot, r) in todo.iter_mut().zip(rmrrs.of(device)) {
            let pages = r.len() / 4096;
            let mut identity = 0;
            for page in 0..pages {
                let iova = r.base + page * 4096;
                match d.translate(Iova::new(iova)) {
                    Ok(p) if p.as_u64() == iova => identity += 1,
                    Ok(_) => return Err(UnitError::PageTable(PtError::AlreadyMapped)),
                    Err(UnitError::PageTable(PtError::NothingMapped)) => {}
                    Err(e) => return Err(e),
                }
            }
            match identity {
                0 => *slot = Some(r),
                n if n == pages => {} // already there (another RMRR device, a re-attach)
                _ => return Err(UnitError::PageTable(PtError::AlreadyMapped)),
            }
        }
        for (i, r) in todo.iter().flatten().enumerate() {
            let result = self.map(
                d,
                Iova::new(r.base),
                PhysAddr::new(r.base),
                r.len(),
                Prot::READ_WRITE,
            );
            if let Err(e) = result {
                for done in mapped.iter().flatten() {
                    let _ = self.unmap(d, Iova::new(done.base), done.len());
                }
                return Err(e);
            }
            if let Some(slot) = mapped.get_mut(i) {
                *slot = Some(*r);
            }
        }
        Ok(mapped)
    }

    /// Limits fresh domain ids to those below `limit` (at most CAP.ND's count; pass
    /// `u32::MAX` to lift it). Ids given back by [`TranslationUnit::destroy_domain`] are
    /// reused first whatever the limit; an embedder sharing the id space, or a test showing
    /// reuse, narrows the window.
    pub fn set_domain_id_limit(&self, limit: u32) {
        let _guard = self.tables.lock();
        self.ids.set_limit(limit);
    }

    /// The next fresh domain id: every id below it has been handed out at least once.
    pub fn domain_id_high_water(&self) -> u32 {
        let _guard = self.tables.lock();
        self.ids.high_water()
    }

    /// How many context and PASID entries point at `domain` now.
    pub fn domain_users(&self, domain: &VtdDomain<H>) -> u32 {
        let _guard = self.tables.lock();
        self.ids.users(&self.hal, domain.id)
    }

    /// The invalidation queue, when the unit uses one (for statistics and error tests).
    pub fn queue(&self) -> Option<&InvalidationQueue<'u, QiMmio<'u>>> {
        self.qi.as_ref()
    }

    /// Invalidation descriptors issued so far (waits included) and batches: through the queue,
    /// or one "batch" per descriptor written to the registers.
    pub fn invalidations(&self) -> (u64, u64) {
        match &self.qi {
            Some(q) => q.submitted(),
            None => {
                let n = self.register_invalidations.load(Ordering::Relaxed);
                (n, n)
            }
        }
    }

    pub(crate) fn drain(&self) -> Drain {
        Drain::for_unit(self.info.cap)
    }

    /// Issues `descriptors` as one batch and waits for them: through the queue (one wait
    /// descriptor for the batch), or one register command each.
    pub(crate) fn invalidate<'d, I>(&self, descriptors: I) -> Result<(), UnitError>
    where
        I: IntoIterator<Item = &'d Descriptor>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let iter = descriptors.into_iter().copied();
        if let Some(q) = &self.qi {
            return q.submit_and_wait(iter).map_err(qi_error);
        }
        let block = self.regs.block();
        for d in iter {
            let r = match d {
                Descriptor::ContextCache(scope) => {
                    invalidate_context_cache(block, scope, DEFAULT_POLL_BUDGET).map(|_| ())
                }
                Descriptor::Iotlb { scope, drain } => {
                    invalidate_iotlb(self.regs.iotlb(), scope, drain, DEFAULT_POLL_BUDGET)
                        .map(|_| ())
                }
                Descriptor::Wait(_) => Ok(()),
                _ => {
                    return Err(UnitError::Unsupported(
                        "descriptor needs the invalidation queue",
                    ))
                }
            };
            self.register_invalidations.fetch_add(1, Ordering::Relaxed);
            r.map_err(|e| match e {
                crate::register_invalidation::RegisterInvalidationError::Timeout(t) => {
                    UnitError::Timeout(t)
                }
                _ => UnitError::Hardware(HardwareError::RegisterInvalidation),
            })?;
        }
        Ok(())
    }

    /// Invalidates the translations of `domain` for `range` (page-selective with address masks,
    /// or domain-selective past [`FLUSH_THRESHOLD`]), waiting for completion.
    pub(crate) fn flush_range(
        &self,
        domain: &VtdDomain<H>,
        start: Iova,
        len: u64,
        leaf_only: bool,
    ) -> Result<(), UnitError> {
        let ranges = [IovaRange::new(start, len)];
        let plan = plan_flush(
            &ranges,
            FlushLimits::for_unit(self.info.cap, FLUSH_THRESHOLD),
        );
        let mut batch = Batch::new();
        // First-stage translations are tagged with the PASID too: RID_PASID, and the one other
        // PASID the domain may be attached at (see `attach_pasid`).
        let other = self
            .ids
            .pasid_users(&self.hal, domain.id)
            .map(Pasid::from_bits_truncated);
        if domain.table.first_stage() {
            for pasid in core::iter::once(Pasid::ZERO).chain(other) {
                for d in plan.pasid_iotlb_descriptors(domain.id, pasid, leaf_only) {
                    batch.push(d);
                }
            }
        } else {
            for d in plan.iotlb_descriptors(domain.id, self.drain(), leaf_only) {
                batch.push(d);
            }
        }
        if batch.overflowed {
            // More blocks than fit in one batch: invalidate the domain (or its PASIDs) whole.
            batch = Batch::new();
            if domain.table.first_stage() {
                for pasid in core::iter::once(Pasid::ZERO).chain(other) {
                    batch.push(Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                        domain: domain.id,
                        pasid,
                    }));
                }
            } else {
                batch.push(Descriptor::Iotlb {
                    scope: IotlbScope::Domain(domain.id),
                    drain: self.drain(),
                });
            }
        }
        self.invalidate(batch.iter())?;
        self.flush_nested(domain.id, &plan)
    }

    /// The rest of a nest parent's flush: the nested domains built on it (`crate::viommu`)
    /// cache combined translations through its table under ids of their own, so each such id
    /// gets the parent's IOTLB invalidation too (6.5.2.3, as for the parent: page-selective
    /// on the parent's guest-physical addresses, which also drops the nested translations that
    /// went through them, or domain-selective). Never with IH: a parent leaf may map a page of
    /// a guest's first-stage table, which nested paging-structure caches point into.
    ///
    /// The ids are read under the nest-parents lock after the parent's table changed; why one
    /// added meanwhile needs nothing is at [`crate::viommu::NestParents`].
    fn flush_nested(&self, parent: DomainId, plan: &FlushPlan<'_>) -> Result<(), UnitError> {
        let (ids, len) = self.nest_parents.nested_of(parent);
        let mut batch = Batch::new();
        for &id in ids.iter().take(len) {
            let per_id = plan.iotlb_descriptors(id, self.drain(), false);
            if batch.len + per_id.len() > batch.items.len() && batch.len > 0 {
                self.invalidate(batch.iter())?;
                batch = Batch::new();
            }
            if per_id.len() > batch.items.len() {
                batch.push(Descriptor::Iotlb {
                    scope: IotlbScope::Domain(id),
                    drain: self.drain(),
                });
            } else {
                for d in per_id {
                    batch.push(d);
                }
            }
        }
        if batch.len > 0 {
            self.invalidate(batch.iter())?;
        }
        Ok(())
    }

    // ---- table memory -------------------------------------------------------------------

    pub(crate) fn alloc_table(&self) -> Result<PhysAddr, UnitError> {
        self.hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)
    }

    /// The 64-bit word `index` of the 4 KiB table at `table`.
    pub(crate) fn word(&self, table: PhysAddr, index: usize) -> &AtomicU64 {
        let p: NonNull<u8> = self.hal.phys_to_virt(table);
        // SAFETY: every table this unit reads or writes through here is a 4 KiB HAL frame it
        // allocated and never frees while the unit lives (root, context, PASID tables), or a
        // domain's table frame read by `mapped` (see there); `index` < 512 at every caller, so
        // the word is inside the frame, 8-byte aligned; the HAL allows 64-bit atomic access.
        unsafe { &*p.as_ptr().cast::<AtomicU64>().add(index % 512) }
    }

    pub(crate) fn write_words(&self, table: PhysAddr, first: usize, words: &[u64]) {
        // Word 0 (with the present bit) is written last, with release, so the unit never sees
        // a present entry with stale upper words.
        for (i, w) in words.iter().enumerate().skip(1).rev() {
            self.word(table, first + i).store(*w, Ordering::Relaxed);
        }
        if let Some(w0) = words.first() {
            self.word(table, first).store(*w0, Ordering::Release);
        }
        let virt = self
            .hal
            .phys_to_virt(PhysAddr::new(table.as_u64() + 8 * first as u64));
        if self.coherency == Coherency::NonCoherent {
            self.hal.clean_to_poc(virt, 8 * words.len());
        }
    }

    pub(crate) fn read_words<const N: usize>(&self, table: PhysAddr, first: usize) -> [u64; N] {
        core::array::from_fn(|i| self.word(table, first + i).load(Ordering::Acquire))
    }

    /// Clears the present bit of an entry (word `first`) and makes that visible.
    pub(crate) fn clear_present(&self, table: PhysAddr, first: usize) {
        let w = self.word(table, first);
        w.store(w.load(Ordering::Relaxed) & !1, Ordering::Release);
        if self.coherency == Coherency::NonCoherent {
            let virt = self
                .hal
                .phys_to_virt(PhysAddr::new(table.as_u64() + 8 * first as u64));
            self.hal.clean_to_poc(virt, 8);
        }
    }

    /// The legacy context table of `bus`, created on first use.
    fn legacy_context_table(&self, bus: u8, create: bool) -> Result<Option<PhysAddr>, UnitError> {
        let raw = self.read_words::<2>(self.root, 2 * bus as usize);
        if let Some(t) = RootEntry::decode(raw).context_table() {
            return Ok(Some(t));
        }
        if !create {
            return Ok(None);
        }
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let entry = RootEntry::present(table).map_err(entry_error)?;
        self.write_words(self.root, 2 * bus as usize, &entry.encode());
        Ok(Some(table))
    }

    /// The scalable-mode context table half serving `devfn` on `bus`, created on first use.
    fn scalable_context_table(
        &self,
        bus: u8,
        devfn: u8,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        let raw = self.read_words::<2>(self.root, 2 * bus as usize);
        let entry = ScalableRootEntry::decode(raw);
        let (half, _) = scalable_context_slot(devfn);
        let current = match half {
            ContextHalf::Lower => entry.lower(),
            ContextHalf::Upper => entry.upper(),
        };
        if current.is_some() || !create {
            return Ok(current);
        }
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let new = match half {
            ContextHalf::Lower => ScalableRootEntry::new(Some(table), entry.upper()),
            ContextHalf::Upper => ScalableRootEntry::new(entry.lower(), Some(table)),
        }
        .map_err(entry_error)?;
        // The other half's pointer is rewritten unchanged; each 64-bit store is atomic.
        self.write_words(self.root, 2 * bus as usize, &new.encode());
        Ok(Some(table))
    }

    /// The PASID table holding `device`'s RID_PASID entry, creating the context entry, PASID
    /// directory and table on first use.
    fn rid_pasid_table(&self, sid: SourceId, create: bool) -> Result<Option<PhysAddr>, UnitError> {
        self.pasid_table(sid, Pasid::ZERO, create)
    }

    /// The PASID table holding `device`'s entry for `pasid` (below 2^15: the directory is one
    /// page), creating the context entry, PASID directory and table on first use.
    pub(crate) fn pasid_table(
        &self,
        sid: SourceId,
        pasid: Pasid,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        if !PasidDirectorySize::ONE_PAGE.covers(pasid) {
            return Err(UnitError::Unsupported(
                "PASIDs from 2^15 (the PASID directory is one page)",
            ));
        }
        let Some(ctx_table) = self.scalable_context_table(sid.bus(), sid.devfn(), create)? else {
            return Ok(None);
        };
        let (_, slot) = scalable_context_slot(sid.devfn());
        let ctx = ScalableContextEntry::decode(self.read_words::<4>(ctx_table, 4 * slot));
        if let Some(fields) = ctx.fields() {
            let dir = fields.pasid_directory;
            let raw = self.read_words::<1>(dir, pasid.directory_index())[0];
            if let Some(table) = PasidDirEntry::decode(raw).table() {
                return Ok(Some(table));
            }
            if !create {
                return Ok(None);
            }
            // A new PASID table under an existing directory; the PASID-cache invalidation
            // after the PASID entry is written covers the directory entry too.
            let table = self.alloc_table()?;
            clean(&self.hal, self.coherency, table, 4096);
            let dir_entry = PasidDirEntry::present(table).map_err(entry_error)?;
            self.write_words(dir, pasid.directory_index(), &[dir_entry.encode()]);
            return Ok(Some(table));
        }
        if !create {
            return Ok(None);
        }
        let dir = self.alloc_table()?;
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let dir_entry = PasidDirEntry::present(table).map_err(entry_error)?;
        self.write_words(dir, pasid.directory_index(), &[dir_entry.encode()]);
        clean(&self.hal, self.coherency, dir, 4096);
        let size = PasidDirectorySize::ONE_PAGE;
        let entry = ScalableContextEntry::new(ScalableContext::new(dir, size, Pasid::ZERO))
            .map_err(entry_error)?;
        self.write_words(ctx_table, 4 * slot, &entry.encode());
        // Not-present → present: needed in caching mode (cached not-present entries are tagged
        // with domain 0), harmless otherwise.
        self.invalidate(&[Descriptor::ContextCache(ContextCacheScope::Device {
            domain: DomainId::new(0),
            source: sid,
            mask: FunctionMask::None,
        })])?;
        Ok(Some(table))
    }

    pub(crate) fn allocate_domain_id(&self) -> Result<DomainId, UnitError> {
        let _guard = self.tables.lock();
        self.ids.allocate(&self.hal)
    }

    fn attach_legacy(
        &self,
        sid: SourceId,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        let new = match to {
            Attachment::Blocking => ContextEntry::NOT_PRESENT,
            Attachment::Identity => {
                if !self.info.ecap.pt() {
                    return Err(UnitError::Unsupported("pass-through (ECAP.PT)"));
                }
                ContextEntry::pass_through(self.identity_id, self.max_agaw)
            }
            Attachment::Paging(d) => match &d.table {
                DomainTable::Second(t) => {
                    let agaw = agaw_of(t.format().aw())?;
                    ContextEntry::second_stage(d.id, agaw, t.root()).map_err(entry_error)?
                }
                DomainTable::First(_) | DomainTable::Shared { .. } | DomainTable::Nested(_) => {
                    return Err(UnitError::Unsupported(
                        "first-stage and nested domains need scalable mode",
                    ))
                }
            },
        };
        let Some(table) = self.legacy_context_table(sid.bus(), new.is_present())? else {
            return Ok(()); // Blocking a device whose bus has no context table: already blocked.
        };
        let slot = 2 * sid.devfn() as usize;
        let old = ContextEntry::decode(self.read_words::<2>(table, slot));
        if old.is_present() {
            // A 128-bit entry cannot be replaced atomically: make it not present and flush
            // every cache that holds it before the new one goes in (6.5.3.3).
            self.clear_present(table, slot);
            self.ids.detach(&self.hal, old.domain_id(), 0);
            self.flush_write_buffer()?;
            self.invalidate(&[
                Descriptor::ContextCache(ContextCacheScope::Device {
                    domain: old.domain_id(),
                    source: sid,
                    mask: FunctionMask::None,
                }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(old.domain_id()),
                    drain: self.drain(),
                },
            ])?;
        }
        if !new.is_present() {
            return Ok(());
        }
        self.write_words(table, slot, &new.encode());
        self.ids.attach(&self.hal, new.domain_id(), 0);
        self.flush_write_buffer()?;
        if self.info.cap.caching_mode() {
            // Not-present → present in caching mode (6.1): cached not-present entries are
            // tagged with domain 0.
            self.invalidate(&[
                Descriptor::ContextCache(ContextCacheScope::Device {
                    domain: DomainId::new(0),
                    source: sid,
                    mask: FunctionMask::None,
                }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(new.domain_id()),
                    drain: self.drain(),
                },
            ])?;
        }
        Ok(())
    }

    fn attach_scalable(
        &self,
        sid: SourceId,
        pasid: Pasid,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let new = match to {
            Attachment::Blocking => PasidEntry::NOT_PRESENT,
            Attachment::Identity => {
                if !ecap.pt() {
                    return Err(UnitError::Unsupported("pass-through (ECAP.PT)"));
                }
                PassThrough::new(self.identity_id, self.max_agaw)
                    .build(cap, ecap)
                    .map_err(entry_error)?
            }
            Attachment::Paging(d) => match &d.table {
                DomainTable::Second(t) => {
                    let agaw = agaw_of(t.format().aw())?;
                    SecondStage::new(d.id, agaw, t.root())
                        .build(cap, ecap)
                        .map_err(entry_error)?
                }
                DomainTable::First(t) => {
                    FirstStage::new(d.id, t.root(), FirstStagePaging::FourLevel)
                        .build(cap, ecap)
                        .map_err(entry_error)?
                }
                DomainTable::Shared { root, paging } => FirstStage::new(d.id, *root, *paging)
                    .build(cap, ecap)
                    .map_err(entry_error)?,
                DomainTable::Nested(n) => n.pasid_entry(d.id, cap, ecap).map_err(entry_error)?,
            },
        };
        let Some(table) = self.pasid_table(sid, pasid, new.is_present())? else {
            return Ok(());
        };
        let slot = 8 * pasid.table_index();
        let old = PasidEntry::decode(self.read_words::<8>(table, slot));
        if old.is_present() {
            // 512-bit entries are replaced through not-present (6.5.3.3 / 9.6).
            self.clear_present(table, slot);
            let did = old.domain_id();
            self.ids.detach(&self.hal, did, pasid.raw());
            self.invalidate(&[
                Descriptor::PasidCache(PasidCacheScope::Pasid { domain: did, pasid }),
                Descriptor::PasidIotlb(PasidIotlbScope::Pasid { domain: did, pasid }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(did),
                    drain: self.drain(),
                },
                // QEMU decides whether a device bypasses translation (pass-through) only on
                // context-cache invalidation; the spec allows it for any PASID-entry change.
                device_context(did, sid),
            ])?;
        }
        if !new.is_present() {
            return Ok(());
        }
        self.write_words(table, slot, &new.encode());
        self.ids.attach(&self.hal, new.domain_id(), pasid.raw());
        // Not-present → present: the PASID cache may hold the not-present entry (CM) — flush
        // it for this PASID so the unit reads the new one; and the context cache, as above.
        self.invalidate(&[
            Descriptor::PasidCache(PasidCacheScope::Pasid {
                domain: new.domain_id(),
                pasid,
            }),
            device_context(new.domain_id(), sid),
        ])?;
        Ok(())
    }

    /// Moves every fault in the recording registers into `pending` (clearing F, RW1C, per
    /// record) and the overflow flag (FSTS.PFO, RW1C) with them. The caller holds `tables`.
    fn collect_faults(&self, pending: &mut Pending) {
        let block = self.regs.block();
        let count = self.info.cap.fault_recording_count();
        // QEMU records one fault per 4-byte piece of a DMA while a record is free: keep going
        // until a whole pass finds nothing, within a bound.
        for _ in 0..1024 {
            let fsts = block.fsts.get();
            if fsts & (FSTS::PFO.mask << FSTS::PFO.shift) != 0 {
                pending.overflow = true;
                block.fsts.write(FSTS::PFO::SET);
            }
            let first = ((fsts >> FSTS::FRI.shift) & FSTS::FRI.mask) as u16 % count;
            let mut found = false;
            for i in 0..count {
                let Some(frcd) = self.regs.fault_recording((first + i) % count) else {
                    continue;
                };
                let raw = RawFault {
                    lo: frcd.lo.get(),
                    hi: frcd.hi.get(),
                };
                if !raw.is_valid() {
                    continue;
                }
                found = true;
                // F is RW1C and the other fields are read-only: writing only F frees the record.
                frcd.hi.write(crate::registers::FRCD_HI::F::SET);
                let classify = match raw.code() {
                    0x05 | 0x06 => self.classify(raw.source(), raw.address()),
                    _ => Classify::Unknown,
                };
                match pending.records.get_mut(pending.len) {
                    Some(slot) => {
                        *slot = Some(raw.decode(classify));
                        pending.len += 1;
                    }
                    None => pending.overflow = true,
                }
            }
            if !found && block.fsts.read(FSTS::PPF) == 0 {
                return;
            }
        }
    }

    /// Whether `address` has a leaf in the table `source` is currently attached to: settles
    /// whether a second-stage fault (codes 5/6, the same for not present and read-only) is a
    /// translation or a permission fault.
    ///
    /// The caller holds the `tables` lock, so the device cannot be detached meanwhile.
    fn classify(&self, source: u16, address: u64) -> Classify {
        let sid = SourceId::from_raw(source);
        let (root, levels) = match self.mode {
            Mode::Legacy => {
                let Ok(Some(table)) = self.legacy_context_table(sid.bus(), false) else {
                    return Classify::Unknown;
                };
                let e = ContextEntry::decode(self.read_words::<2>(table, 2 * sid.devfn() as usize));
                if !e.is_present() {
                    return Classify::Unknown;
                }
                (e.second_stage_root(), u32::from(e.address_width()) + 2)
            }
            Mode::Scalable => {
                let Ok(Some(table)) = self.rid_pasid_table(sid, false) else {
                    return Classify::Unknown;
                };
                let e =
                    PasidEntry::decode(self.read_words::<8>(table, 8 * Pasid::ZERO.table_index()));
                if e.pgtt() != Some(crate::pasid::Pgtt::SecondStage) {
                    return Classify::Unknown;
                }
                let aw = ((e.encode()[0] >> 2) & 7) as u32;
                (e.second_stage_root(), aw + 2)
            }
        };
        let mut table = root;
        for level in (1..=levels).rev() {
            let index = ((address >> (12 + 9 * (level - 1))) & 511) as usize;
            // The table is the attached domain's, which outlives its attachment (trait
            // contract), and the attach lock is held, so it cannot be detached meanwhile.
            let entry = self.word(table, index).load(Ordering::Acquire);
            if entry & 3 == 0 {
                return Classify::Unmapped;
            }
            if level == 1 || entry & (1 << 7) != 0 {
                return Classify::Mapped;
            }
            table = PhysAddr::new(entry & 0x000f_ffff_ffff_f000);
        }
        Classify::Unknown
    }
}

impl<H: Hal + Clone> TranslationUnit for VtdUnit<'_, H> {
    type Domain = VtdDomain<H>;
    type VIommu = crate::viommu::VtdViommu;
    type GuestCommand = [u64; 4];

    fn info(&self) -> HardwareInfo {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let scalable = self.mode == Mode::Scalable;
        let first_stage = scalable && ecap.flts();
        let second_stage = !scalable || ecap.slts();
        let mut page_sizes = 1u64 << 12;
        if second_stage {
            let sp = cap.sllps();
            page_sizes |= u64::from(sp.size_2m) << 21 | u64::from(sp.size_1g) << 30;
        }
        if first_stage {
            // x86-64 paging always has 2 MiB pages; 1 GiB ones where CAP.FS1GP says so.
            page_sizes |= 1 << 21 | u64::from(cap.fs1gp()) << 30;
        }
        HardwareInfo {
            first_stage,
            second_stage,
            nesting: scalable && ecap.nest() && ecap.flts() && ecap.slts(),
            identity: ecap.pt(),
            pasid_bits: if scalable && ecap.pasid() {
                ecap.pasid_width()
            } else {
                0
            },
            first_stage_ia_bits: match (first_stage, cap.fs5lp()) {
                (false, _) => 0,
                (true, false) => 48,
                (true, true) => 57,
            },
            second_stage_ia_bits: if second_stage {
                self.max_agaw.width().min(cap.mgaw())
            } else {
                0
            },
            output_bits: self.output_width.min(64) as u8,
            page_sizes,
            coherent_walks: ecap.coherent(),
            ats: ecap.dt(),
            tags: cap.domain_ids(),
            raw: RawRegisters::Vtd {
                version: self.regs.block().ver.get(),
                cap: cap.raw(),
                ecap: ecap.raw(),
            },
        }
    }

    fn new_shared_domain(&self, cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        if self.mode != Mode::Scalable || !ecap.flts() {
            return Err(UnitError::Unsupported(
                "shared CPU tables need first-stage PASID entries (scalable mode, ECAP.FLTS)",
            ));
        }
        let paging = match cpu.ia_bits {
            48 => FirstStagePaging::FourLevel,
            57 if cap.fs5lp() => FirstStagePaging::FiveLevel,
            57 => {
                return Err(UnitError::Unsupported(
                    "5-level first-stage paging (CAP.FS5LP)",
                ))
            }
            _ => {
                return Err(UnitError::Unsupported(
                    "CPU table depth: ia_bits must be 48 (4-level) or 57 (5-level)",
                ))
            }
        };
        let root = cpu.root.as_u64();
        if !root.is_multiple_of(4096) {
            return Err(UnitError::PageTable(iommu::pagetable::Error::UnalignedPhys));
        }
        if self.output_width < 64 && root >> self.output_width != 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::PhysBeyondOas));
        }
        let id = self.allocate_domain_id()?;
        Ok(VtdDomain {
            id,
            table: DomainTable::Shared {
                root: cpu.root,
                paging,
            },
        })
    }

    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        let _guard = self.tables.lock();
        if self.ids.users(&self.hal, domain.id) != 0 {
            return Err((domain, UnitError::Busy));
        }
        // A nested domain has no table of its own: its vIOMMU forgets one user of the guest's
        // id, and the last one over a guest first stage gives the host id back. (The users
        // count is per id, so this waits until no entry tagged with the id is left: for the
        // parent alone, until the parent itself is attached nowhere either.)
        let domain = match domain.table {
            DomainTable::Nested(n) => {
                let id = domain.id;
                return crate::viommu::destroy_nested(self, id, n).map_err(|(n, e)| {
                    (
                        VtdDomain {
                            id,
                            table: DomainTable::Nested(n),
                        },
                        e,
                    )
                });
            }
            table => VtdDomain { table, ..domain },
        };
        // A nest parent is in use while a vIOMMU holds it.
        if self.nest_parents.is_pinned(domain.id) {
            return Err((domain, UnitError::Busy));
        }
        // No entry points at the domain any more, and each detach invalidated what it cached;
        // the id is invalidated once more as a whole before anyone else gets it, so no cache
        // entry of this owner can serve the next one (6.5.3.3: before a domain id is reused).
        let mut batch = Batch::new();
        if self.mode == Mode::Scalable {
            batch.push(Descriptor::PasidCache(PasidCacheScope::Domain(domain.id)));
        }
        if domain.table.first_stage() {
            batch.push(Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                domain: domain.id,
                pasid: Pasid::ZERO,
            }));
        }
        batch.push(Descriptor::Iotlb {
            scope: IotlbScope::Domain(domain.id),
            drain: self.drain(),
        });
        if let Err(e) = self.invalidate(batch.iter()) {
            return Err((domain, e));
        }
        let VtdDomain { id, table } = domain;
        let mut gather = Gather::new();
        match table {
            DomainTable::Second(t) => drop(t.destroy(&mut gather)),
            DomainTable::First(t) => drop(t.destroy(&mut gather)),
            // The CPU table is the embedder's: nothing of it is freed.
            DomainTable::Shared { .. } | DomainTable::Nested(_) => {}
        }
        // SAFETY: no context or PASID entry of this unit points at the table (the count is 0
        // under the lock, so none can be added meanwhile), every cache entry tagged with its
        // domain id (IOTLB and paging-structure caches) was invalidated above and the unit
        // reported completion; `destroy_domain` owns the domain, so no map or unmap on it can
        // run; the frames came from a clone of `self.hal`.
        unsafe { gather.complete(&self.hal) };
        self.ids.release(&self.hal, id);
        Ok(())
    }

    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        if self.mode != Mode::Scalable {
            return Err(UnitError::Unsupported("PASID attach needs scalable mode"));
        }
        let bits = TranslationUnit::info(self).pasid_bits;
        if bits == 0 {
            return Err(UnitError::Unsupported("PASIDs (ECAP.PASID)"));
        }
        let pasid = Pasid::for_width(pasid, bits)
            .map_err(|_| UnitError::Unsupported("PASID wider than ECAP.PSS allows"))?;
        if pasid == Pasid::ZERO {
            // PASID 0 is the RID_PASID: requests without a PASID.
            return self.attach(device, to);
        }
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let sid = SourceId::from_raw(raw);
        let _guard = self.tables.lock();
        if let Attachment::Paging(d) = &to {
            // First-stage translations are tagged with their PASID, so a flush must name each
            // PASID the domain is attached at: one besides RID_PASID is tracked.
            let other = self.ids.pasid_users(&self.hal, d.id);
            if d.table.first_stage() && other.is_some_and(|p| p != pasid.raw()) {
                return Err(UnitError::Unsupported(
                    "a first-stage domain at a second PASID besides RID_PASID",
                ));
            }
        }
        self.collect_faults(&mut self.faults.lock());
        self.attach_scalable(sid, pasid, to)
    }

    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError> {
        if len == 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::ZeroLength));
        }
        let start = iova.as_u64() & !0xfff;
        let end = iova
            .as_u64()
            .checked_add(len)
            .and_then(|e| e.checked_add(0xfff))
            .ok_or(UnitError::PageTable(iommu::pagetable::Error::WrapAround))?
            & !0xfff;
        // Entries may have been removed or narrowed anywhere in the walk: not leaf-only.
        self.flush_range(domain, Iova::new(start), end - start, false)
    }

    fn new_viommu(&self, parent: &Self::Domain) -> Result<Self::VIommu, UnitError> {
        crate::viommu::new_viommu(self, parent)
    }

    fn destroy_viommu(&self, viommu: Self::VIommu) -> Result<(), (Self::VIommu, UnitError)> {
        crate::viommu::destroy_viommu(self, viommu)
    }

    fn new_nested(
        &self,
        viommu: &Self::VIommu,
        guest: &GuestEntry,
    ) -> Result<Self::Domain, UnitError> {
        crate::viommu::new_nested(self, viommu, guest)
    }

    fn forward_invalidations(
        &self,
        viommu: &Self::VIommu,
        devices: &dyn Fn(u32) -> Option<DeviceId>,
        cmds: &[Self::GuestCommand],
    ) -> Forwarded {
        crate::viommu::forward_invalidations(self, viommu, devices, cmds)
    }

    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<VtdDomain<H>, UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let table = match stage {
            Stage::Second => {
                if self.mode == Mode::Scalable && !ecap.slts() {
                    return Err(UnitError::Unsupported(
                        "second-stage PASID entries (ECAP.SLTS)",
                    ));
                }
                let format = VtdSecondStage::new(VtdSecondStageConfig {
                    sagaw: cap.sagaw().bits(),
                    sllps: u8::from(cap.sllps().size_2m) | u8::from(cap.sllps().size_1g) << 1,
                    address_width: ia_bits.min(u32::from(cap.mgaw())),
                    output_width: self.output_width,
                    snoop_control: ecap.sc(),
                })?;
                DomainTable::Second(PageTable::new(format, self.hal.clone(), self.coherency)?)
            }
            Stage::First => {
                if self.mode != Mode::Scalable || !ecap.flts() {
                    return Err(UnitError::Unsupported(
                        "first-stage tables (scalable mode, ECAP.FLTS)",
                    ));
                }
                let mut cfg = X86FirstStageConfig::four_level(self.output_width);
                cfg.page_1g = cap.fs1gp();
                let format = X86FirstStage::new(cfg)?;
                DomainTable::First(PageTable::new(format, self.hal.clone(), self.coherency)?)
            }
        };
        let id = self.allocate_domain_id()?;
        Ok(VtdDomain { id, table })
    }

    fn attach(&self, device: DeviceId, to: Attachment<'_, VtdDomain<H>>) -> Result<(), UnitError> {
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let sid = SourceId::from_raw(raw);
        let _guard = self.tables.lock();
        let mapped = self.prepare_rmrrs(device, &to)?;
        let paging = match &to {
            Attachment::Paging(d) => Some(*d),
            _ => None,
        };
        // Faults the device caused so far are classified against the table they happened in.
        self.collect_faults(&mut self.faults.lock());
        let r = match self.mode {
            Mode::Legacy => self.attach_legacy(sid, to),
            Mode::Scalable => self.attach_scalable(sid, Pasid::ZERO, to),
        };
        if r.is_err() {
            // Leave the domain as it was: the RMRR ranges this call mapped go again.
            if let Some(d) = paging {
                for region in mapped.iter().flatten() {
                    let _ = self.unmap(d, Iova::new(region.base), region.len());
                }
            }
        }
        r
    }

    fn map(
        &self,
        domain: &VtdDomain<H>,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        match &domain.table {
            DomainTable::Second(t) => t.map(iova, phys, len, prot)?,
            DomainTable::First(t) => t.map(iova, phys, len, prot)?,
            DomainTable::Shared { .. } => return Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        }
        if self.info.cap.caching_mode() {
            // Caching mode: the unit may cache not-present entries, so not-present → present
            // needs an invalidation too (6.1).
            self.flush_range(domain, iova, len, true)?;
        } else {
            self.flush_write_buffer()?;
        }
        Ok(())
    }

    fn unmap(&self, domain: &VtdDomain<H>, iova: Iova, len: u64) -> Result<u64, UnitError> {
        let flush = DomainFlush { unit: self, domain };
        match &domain.table {
            DomainTable::Second(t) => t.unmap_flushed(iova, len, &flush),
            DomainTable::First(t) => t.unmap_flushed(iova, len, &flush),
            DomainTable::Shared { .. } => Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => Err(NESTED_MAP),
        }
    }

    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        let _tables = self.tables.lock();
        let mut pending = self.faults.lock();
        self.collect_faults(&mut pending);
        let mut drained = Drained {
            records: 0,
            overflow: pending.overflow,
        };
        let len = pending.len;
        for slot in pending.records.iter_mut().take(len) {
            if let Some(record) = slot.take() {
                sink(record);
                drained.records += 1;
            }
        }
        pending.len = 0;
        pending.overflow = false;
        Ok(drained)
    }
}

/// A device-selective context-cache invalidation of `source`.
fn device_context(domain: DomainId, source: SourceId) -> Descriptor {
    Descriptor::ContextCache(ContextCacheScope::Device {
        domain,
        source,
        mask: FunctionMask::None,
    })
}

/// Map and unmap of a nested domain: its tables are the guest's and the parent's.
const NESTED_MAP: UnitError = UnitError::Unsupported(
    "map/unmap on a nested domain (the guest owns its table; map the nest parent)",
);

pub(crate) fn agaw_of(aw: u8) -> Result<Agaw, UnitError> {
    Agaw::ALL
        .into_iter()
        .find(|a| a.encoding() == aw)
        .ok_or(UnitError::Unsupported("second-stage depth"))
}

fn clean<H: Hal>(hal: &H, coherency: Coherency, frame: PhysAddr, len: usize) {
    if coherency == Coherency::NonCoherent {
        hal.clean_to_poc(hal.phys_to_virt(frame), len);
    }
}

/// One domain's IOTLB flush on this unit, for the page-table engine's unmap.
struct DomainFlush<'a, 'u, H: Hal + Clone> {
    unit: &'a VtdUnit<'u, H>,
    domain: &'a VtdDomain<H>,
}

// SAFETY: `flush_range` returns `Ok` only after the unit reported the invalidation of the range
// complete (the batch's wait descriptor, or the register handshakes), with the paging-structure
// caches too unless `leaf_only`; a domain's table is walked by this unit only (domains are not
// shared across units).
unsafe impl<H: Hal + Clone> FlushRange for DomainFlush<'_, '_, H> {
    type Error = UnitError;

    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> Result<(), UnitError> {
        self.unit.flush_range(self.domain, iova, len, leaf_only)
    }
}

pub(crate) fn entry_error(e: EntryError) -> UnitError {
    match e {
        EntryError::Unsupported { feature } => UnitError::Unsupported(feature),
        EntryError::DomainIdOutOfRange { .. } | EntryError::DomainIdZeroInCachingMode => {
            UnitError::OutOfIds
        }
        _ => UnitError::Hardware(HardwareError::EntryEncoding),
    }
}

fn qi_error(e: QiError) -> UnitError {
    match e {
        QiError::Timeout { .. } | QiError::QueueFull => UnitError::Timeout(iommu::poll::Timeout {
            waiting_for: "invalidation queue",
        }),
        QiError::InvalidDescriptor { .. } => UnitError::Hardware(HardwareError::CommandRejected),
        QiError::DeviceTlbTimeout { .. } => UnitError::Hardware(HardwareError::DeviceTlbTimeout),
        QiError::OutOfMemory => UnitError::OutOfMemory,
        _ => UnitError::Hardware(HardwareError::Queue),
    }
}

/// A small fixed-capacity batch of descriptors (no allocator in this crate).
struct Batch {
    items: [Descriptor; FLUSH_THRESHOLD + 2],
    len: usize,
    overflowed: bool,
}

impl Batch {
    fn new() -> Self {
        Self {
            items: [Descriptor::ContextCache(ContextCacheScope::Global); FLUSH_THRESHOLD + 2],
            len: 0,
            overflowed: false,
        }
    }

    fn push(&mut self, d: Descriptor) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = d;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    fn iter(&self) -> core::slice::Iter<'_, Descriptor> {
        self.items[..self.len].iter()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
