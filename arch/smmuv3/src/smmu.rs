//! One live SMMUv3: the reset sequence of IHI 0070 (GBPA abort, queues, stream table, global
//! invalidation, SMMUEN) and the core's [`TranslationUnit`] over it.
//!
//! Paging domains hold an Arm VMSAv8-64 table from the core's engine: a stage-1 domain owns a
//! single-CD table (ASID-tagged), a stage-2 domain its VMID. Attach writes STEs in the safe order
//! of [`StreamTable::install`]; unmap invalidates with range commands where IDR3.RIL allows, one
//! CMD_SYNC per batch, before the gathered tables are freed.

use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, Gather, Granule as PtGranule, PageTable, Prot, VmsaConfig, VmsaStage1, VmsaStage2,
};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultKind, FaultRecord, Forwarded, GuestEntry,
    HardwareInfo, RawRegisters, Stage, TranslationUnit, UnitError,
};

use crate::attributes::Granule;
use crate::cmdq::{
    queue_base_register, CmdqError, CommandQueue, DmaQueueMemory, MmioCmdqRegisters, ENTRY_BYTES,
};
use crate::command::{
    plan_invalidation, Command, InvalidationPolicy, InvalidationScope, RawCommand,
};
use crate::context_descriptor::{CdTable, CdTableError, CdTableGeometry, ContextDescriptor};
use crate::eventq::{EventQueue, EventType, MmioEventqRegisters, EVENT_BYTES};
use crate::idr::{Features, OutputAddressSize};
use crate::registers::{
    ReadWriteable, Readable, SmmuRegisters, Writeable, CR0, CR1, CR2, GBPA, GERROR, IRQ_CTRL,
};
use crate::stream_table::{
    Stage2, SteError, StreamTable, StreamTableEntry, StreamTableError, StreamTableGeometry,
};

/// How to bring an SMMU up; [`SmmuConfig::default`] is what a driver wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuConfig {
    /// The stream table layout; `None` picks [`StreamTableGeometry::for_features`].
    pub stream_table: Option<StreamTableGeometry>,
    /// log2 of the command queue entries (capped by IDR1.CMDQS).
    pub cmdq_log2: u8,
    /// log2 of the event queue entries (capped by IDR1.EVENTQS). QEMU records one event per
    /// 4 bytes of a faulting DMA: 128 entries hold eight faulting 64-byte transfers whole.
    pub eventq_log2: u8,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            stream_table: None,
            cmdq_log2: 8,
            eventq_log2: 7,
        }
    }
}

/// Why bring-up or an operation failed, before it is folded into [`UnitError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuError {
    /// A handshake (GBPA.UPDATE, CR0ACK) did not complete.
    Timeout(iommu::poll::Timeout),
    /// The HAL had no frame for a queue or table.
    OutOfMemory,
    /// The stream table could not be built or updated.
    StreamTable(StreamTableError),
    /// A context descriptor table could not be built or updated.
    CdTable(CdTableError),
    /// An STE or CD field was out of range.
    Entry(SteError),
    /// A command failed.
    Command(CmdqError),
    /// The SMMU lacks something the driver needs (named).
    Unsupported(&'static str),
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "{t}"),
            Self::OutOfMemory => f.write_str("out of memory for SMMU queues or tables"),
            Self::StreamTable(e) => write!(f, "stream table: {e}"),
            Self::CdTable(e) => write!(f, "context descriptor table: {e}"),
            Self::Entry(e) => write!(f, "STE/CD: {e}"),
            Self::Command(e) => write!(f, "command queue: {e}"),
            Self::Unsupported(what) => write!(f, "SMMU lacks {what}"),
        }
    }
}

impl core::error::Error for SmmuError {}

impl From<SmmuError> for UnitError {
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::Timeout(t) => UnitError::Timeout(t),
            SmmuError::OutOfMemory
            | SmmuError::StreamTable(StreamTableError::OutOfMemory)
            | SmmuError::CdTable(CdTableError::OutOfMemory) => UnitError::OutOfMemory,
            SmmuError::StreamTable(StreamTableError::StreamIdOutOfRange { sid, .. }) => {
                UnitError::UnknownDevice(DeviceId(sid))
            }
            SmmuError::Command(CmdqError::Timeout(t)) => UnitError::Timeout(t),
            SmmuError::Command(_) => UnitError::Hardware("command queue error"),
            SmmuError::StreamTable(_) | SmmuError::CdTable(_) | SmmuError::Entry(_) => {
                UnitError::Hardware("invalid stream table or context descriptor")
            }
            SmmuError::Unsupported(what) => UnitError::Unsupported(what),
        }
    }
}

impl From<iommu::poll::Timeout> for SmmuError {
    fn from(t: iommu::poll::Timeout) -> Self {
        Self::Timeout(t)
    }
}

impl From<CmdqError> for SmmuError {
    fn from(e: CmdqError) -> Self {
        Self::Command(e)
    }
}

/// Why a nested domain refuses map/unmap: the guest maps in its own stage-1 table and the host
/// in the nest parent.
const NESTED_MAP: &str =
    "map/unmap on a nested domain (the guest owns its stage 1, the host the parent)";

/// Records one [`SmmuUnit::drain_events`] hands out at most (a full queue of the largest size
/// QEMU allows is 2^19; ours is far smaller).
const MAX_EVENTS_PER_DRAIN: usize = 1 << 16;

/// The command queue type of a live SMMU.
pub type MmioCommandQueue = CommandQueue<MmioCmdqRegisters, DmaQueueMemory<2>>;
type MmioEventQueue = EventQueue<MmioEventqRegisters, DmaQueueMemory<4>>;

/// A paging domain of an [`SmmuUnit`].
pub struct SmmuDomain<H: Hal> {
    pub(crate) kind: DomainKind<H>,
}

pub(crate) enum DomainKind<H: Hal> {
    Stage1 {
        table: PageTable<VmsaStage1, H>,
        /// The one CD (SSID 0): written whole before any STE points at it, never changed.
        cds: CdTable<H>,
        asid: u16,
        /// The VMID tagging this domain's TLB entries: 0 for plain stage-1 streams (their STE's
        /// S2VMID), the parent's once a stream nests the domain in a stage-2 domain. Relaxed:
        /// it is written under the stream-table lock before the STE that makes it true, and
        /// read by unmaps, which the caller orders after the attach.
        vmid: AtomicU16,
    },
    Stage2 {
        table: PageTable<VmsaStage2, H>,
        s2: Stage2,
        /// The vIOMMUs and nested domains using this domain as their nest parent
        /// (`crate::viommu`): teardown must refuse while there are any.
        nest_users: crate::viommu::NestUsers,
    },
    /// Built by a vIOMMU from a guest's vSTE (`crate::viommu`): the STE `attach` installs
    /// (abort, the parent's stage 2 alone, or the guest's CD table nested in it). It has no
    /// table of its own: the guest maps in its stage 1, the host in the parent.
    Nested {
        ste: StreamTableEntry,
        /// The parent's VMID.
        vmid: u16,
        /// Counted in its vIOMMU and in the parent until dropped.
        _links: [crate::viommu::CountLink; 2],
    },
}

impl<H: Hal> fmt::Debug for SmmuDomain<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DomainKind::Stage1 { table, asid, .. } => {
                write!(
                    f,
                    "SmmuDomain(stage 1, ASID {asid}, root {:?})",
                    table.root()
                )
            }
            DomainKind::Stage2 { table, s2, .. } => {
                write!(
                    f,
                    "SmmuDomain(stage 2, VMID {}, root {:?})",
                    s2.vmid,
                    table.root()
                )
            }
            DomainKind::Nested { ste, vmid, .. } => {
                write!(f, "SmmuDomain(nested, VMID {vmid}, {:?})", ste.config)
            }
        }
    }
}

impl<H: Hal> SmmuDomain<H> {
    /// The ASID (stage 1) or VMID (stage 2) tagging this domain's TLB entries.
    pub fn tag(&self) -> u16 {
        match &self.kind {
            DomainKind::Stage1 { asid, .. } => *asid,
            DomainKind::Stage2 { s2, .. } => s2.vmid,
            DomainKind::Nested { vmid, .. } => *vmid,
        }
    }

    /// The size of the page or block mapping `iova`, if mapped (to see which leaf size the
    /// engine chose).
    pub fn leaf_size(&self, iova: Iova) -> Option<u64> {
        let walk = match &self.kind {
            DomainKind::Stage1 { table, .. } => table.walk(iova),
            DomainKind::Stage2 { table, .. } => table.walk(iova),
            DomainKind::Nested { .. } => return None,
        };
        match walk.ok()?.leaf()?.kind {
            iommu::pagetable::EntryKind::Leaf { size, .. } => Some(size),
            _ => None,
        }
    }

    /// The walk of `iova` through this domain's table: the tables read, root first (a nested
    /// stream's stage 2 must map them).
    pub fn walk(&self, iova: Iova) -> Option<iommu::pagetable::Walk> {
        match &self.kind {
            DomainKind::Stage1 { table, .. } => table.walk(iova).ok(),
            DomainKind::Stage2 { table, .. } => table.walk(iova).ok(),
            DomainKind::Nested { .. } => None,
        }
    }

    /// The context descriptor table of a stage-1 domain (an IPA under nesting).
    pub fn context_descriptor_table(&self) -> Option<PhysAddr> {
        match &self.kind {
            DomainKind::Stage1 { cds, .. } => Some(cds.stage1().cd_table),
            DomainKind::Stage2 { .. } | DomainKind::Nested { .. } => None,
        }
    }

    /// The stage of this domain's table (a nested domain's guest table is stage 1).
    pub fn stage(&self) -> Stage {
        match self.kind {
            DomainKind::Stage1 { .. } | DomainKind::Nested { .. } => Stage::First,
            DomainKind::Stage2 { .. } => Stage::Second,
        }
    }
}

/// One SMMUv3, enabled, with its queues and stream table.
pub struct SmmuUnit<H: Hal + Clone> {
    regs: NonNull<SmmuRegisters>,
    pub(crate) hal: H,
    features: Features,
    cmdq: MmioCommandQueue,
    /// Single consumer: a poller holds the lock while draining.
    eventq: spin::Mutex<MmioEventQueue>,
    /// Attach and detach of any stream are serialised here (the STE update protocol needs one
    /// writer per STE, and level-2 tables are created under it).
    strtab: spin::Mutex<StreamTable<H>>,
    /// Tags handed out so far; never reused, so no TLB entry of a dropped domain can match a
    /// new one (relaxed: uniqueness comes from the atomic increment alone).
    next_asid: AtomicU16,
    next_vmid: AtomicU16,
    policy: InvalidationPolicy,
    oas_bits: u32,
    /// An empty domain of the preferred stage: what [`Attachment::Blocking`] and every stream of
    /// a level-2 table created by the unit point at, so a blocked DMA is refused *and* reported
    /// (a translation fault) where an aborting STE would drop it silently. `None` only while
    /// the unit is being built.
    blocking: Option<SmmuDomain<H>>,
}

// SAFETY: the register frame is MMIO reached through volatile cells; every mutable state is
// behind a lock or an atomic, and the queues are designed for concurrent use.
unsafe impl<H: Hal + Clone + Send> Send for SmmuUnit<H> {}
// SAFETY: as above.
unsafe impl<H: Hal + Clone + Sync> Sync for SmmuUnit<H> {}

impl<H: Hal + Clone> fmt::Debug for SmmuUnit<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmmuUnit")
            .field("regs", &self.regs)
            .field("stages", &self.features.stages)
            .finish_non_exhaustive()
    }
}

/// A queue ring of `2^log2` entries of `entry_bytes` in one HAL frame.
fn alloc_ring<H: Hal>(
    hal: &H,
    log2: u8,
    entry_bytes: usize,
) -> Result<(PhysAddr, FrameSize), SmmuError> {
    let bytes_log2 = u32::from(log2) + entry_bytes.trailing_zeros();
    let size =
        FrameSize::from_log2(bytes_log2.max(12)).ok_or(SmmuError::Unsupported("queue size"))?;
    let phys = hal.alloc_frame(size).ok_or(SmmuError::OutOfMemory)?;
    Ok((phys, size))
}

fn pt_granule(g: Granule) -> PtGranule {
    match g {
        Granule::Size4K => PtGranule::Size4K,
        Granule::Size16K => PtGranule::Size16K,
        Granule::Size64K => PtGranule::Size64K,
    }
}

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Resets and enables the SMMU whose register frame is at `regs`, following IHI 0070
    /// 3.3/6.3: GBPA abort, SMMU disabled, CR1/CR2, stream table (every stream aborting), both
    /// queues enabled, CFGI_ALL + TLBI_NSNH_ALL + CMD_SYNC, GERROR acknowledged, SMMUEN.
    ///
    /// # Safety
    /// `regs` must point to the SMMU's whole register frame (both 64 KiB pages) mapped as Device
    /// memory for the life of the value, and nothing else may program this SMMU meanwhile.
    pub unsafe fn new(
        regs: NonNull<SmmuRegisters>,
        hal: H,
        config: SmmuConfig,
    ) -> Result<Self, SmmuError> {
        // SAFETY: per this function's contract.
        let features = unsafe { crate::unit::read_features(regs) };
        // SAFETY: per this function's contract; tock-registers cells are interior-mutable.
        let r = unsafe { regs.as_ref() };
        let budget = DEFAULT_POLL_BUDGET;

        // Nothing may bypass while the tables are being built: QEMU resets GBPA to bypass.
        poll_until("GBPA.UPDATE idle", budget, || !r.gbpa.is_set(GBPA::UPDATE))?;
        r.gbpa.write(GBPA::ABORT::SET + GBPA::UPDATE::SET);
        poll_until("GBPA.UPDATE after abort", budget, || {
            !r.gbpa.is_set(GBPA::UPDATE)
        })?;

        // Queue and table bases may only change with the SMMU and the queues disabled.
        if r.cr0.get() != 0 {
            r.cr0.set(0);
            poll_until("CR0ACK disable", budget, || r.cr0ack.get() == 0)?;
        }

        // Table and queue accesses as coherent as the SMMU is (COHACC): write-back and inner
        // shareable, else non-cacheable (the HAL then cleans every table store).
        let (cache, share) = if features.coherent { (1, 3) } else { (0, 2) };
        r.cr1.write(
            CR1::QUEUE_IC.val(cache)
                + CR1::QUEUE_OC.val(cache)
                + CR1::QUEUE_SH.val(share)
                + CR1::TABLE_IC.val(cache)
                + CR1::TABLE_OC.val(cache)
                + CR1::TABLE_SH.val(share),
        );
        // PTM: the CPUs' broadcast TLB maintenance is not for our ASIDs; RECINVSID: record
        // out-of-range StreamIDs as C_BAD_STREAMID.
        r.cr2.write(CR2::PTM::SET + CR2::RECINVSID::SET);

        let geometry = match config.stream_table {
            Some(g) => g,
            None => StreamTableGeometry::for_features(&features).map_err(SmmuError::StreamTable)?,
        };
        geometry
            .check_features(&features)
            .map_err(SmmuError::StreamTable)?;
        let strtab = StreamTable::new(hal.clone(), geometry, features.coherent)
            .map_err(SmmuError::StreamTable)?;
        r.strtab_base.set(strtab.base_register());
        r.strtab_base_cfg.set(strtab.base_cfg_register());

        let cmdq_log2 = config.cmdq_log2.clamp(1, features.cmdq_max_log2.max(1));
        let (cmdq_phys, _) = alloc_ring(&hal, cmdq_log2, ENTRY_BYTES)?;
        r.cmdq_base
            .set(queue_base_register(cmdq_phys, cmdq_log2, true));
        r.cmdq_prod.set(0);
        r.cmdq_cons.set(0);

        let eventq_log2 = config.eventq_log2.clamp(1, features.eventq_max_log2.max(1));
        let (eventq_phys, _) = alloc_ring(&hal, eventq_log2, EVENT_BYTES)?;
        r.eventq_base
            .set(queue_base_register(eventq_phys, eventq_log2, true));
        r.eventq_prod.set(0);
        r.eventq_cons.set(0);

        r.cr0.write(CR0::CMDQEN::SET + CR0::EVENTQEN::SET);
        poll_until("CR0ACK queues", budget, || {
            r.cr0ack.is_set(CR0::CMDQEN) && r.cr0ack.is_set(CR0::EVENTQEN)
        })?;

        // SAFETY: the frames were just allocated for these rings, of the size asked, and only
        // the SMMU and these values use them.
        let cmd_mem = unsafe { DmaQueueMemory::<2>::new(hal.phys_to_virt(cmdq_phys), cmdq_log2) };
        // SAFETY: as above.
        let evt_mem =
            unsafe { DmaQueueMemory::<4>::new(hal.phys_to_virt(eventq_phys), eventq_log2) };
        // SAFETY: the register frame is mapped for our life per this function's contract.
        let cmdq =
            CommandQueue::with_default_budget(unsafe { MmioCmdqRegisters::new(regs) }, cmd_mem)?;
        // SAFETY: as above.
        let eventq = EventQueue::new(unsafe { MmioEventqRegisters::new(regs) }, evt_mem)
            .map_err(|_| SmmuError::Unsupported("event queue size"))?;

        // Whatever an earlier user left in the SMMU's caches goes. No EL2 stream world is ever
        // configured, so no EL2 TLB entry can exist to need TLBI_EL2_ALL.
        cmdq.submit_and_sync(&[
            Command::cfgi_all().encode().map_err(CmdqError::Encode)?,
            Command::TlbiNsnhAll.encode().map_err(CmdqError::Encode)?,
        ])?;

        // Errors an earlier user left active are acknowledged: GERRORN := GERROR.
        r.gerrorn.set(r.gerror.get());

        r.cr0.modify(CR0::SMMUEN::SET);
        poll_until("CR0ACK SMMUEN", budget, || r.cr0ack.is_set(CR0::SMMUEN))?;

        let oas_bits = u32::from(features.oas.bits().unwrap_or(48)).min(48);
        let mut unit = Self {
            regs,
            hal,
            policy: InvalidationPolicy::for_features(&features),
            features,
            cmdq,
            eventq: spin::Mutex::new(eventq),
            strtab: spin::Mutex::new(strtab),
            next_asid: AtomicU16::new(1),
            next_vmid: AtomicU16::new(1),
            oas_bits,
            blocking: None,
        };
        let stage = if features.stages.stage1() {
            Stage::First
        } else {
            Stage::Second
        };
        unit.blocking = Some(
            unit.new_domain_with_granule(stage, 48, Granule::Size4K)
                .map_err(|_| SmmuError::Unsupported("a blocking domain"))?,
        );
        Ok(unit)
    }

    /// What the SMMU can do.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The command queue (for tests and for commands the unit does not issue itself).
    pub fn command_queue(&self) -> &MmioCommandQueue {
        &self.cmdq
    }

    /// Enables (or disables) the wired interrupts of the event queue and of global errors
    /// (IHI 0070 6.3.16), with the SMMU_IRQ_CTRLACK handshake. The embedder routes the SPIs the
    /// devicetree names and calls [`drain_faults`](TranslationUnit::drain_faults) from the
    /// handler.
    pub fn set_wired_interrupts(&self, eventq: bool, gerror: bool) -> Result<(), SmmuError> {
        // SAFETY: mapped for our life per `new`'s contract; interior-mutable MMIO cells.
        let r = unsafe { self.regs.as_ref() };
        let want = IRQ_CTRL::EVENTQ_IRQEN.val(u32::from(eventq))
            + IRQ_CTRL::GERROR_IRQEN.val(u32::from(gerror));
        r.irq_ctrl.write(want);
        poll_until("IRQ_CTRLACK", DEFAULT_POLL_BUDGET, || {
            r.irq_ctrlack.get() == want.value
        })?;
        Ok(())
    }

    /// The stream table's layout.
    pub fn stream_table_geometry(&self) -> StreamTableGeometry {
        self.strtab.lock().geometry()
    }

    /// The eight words of `sid`'s STE as the SMMU reads them.
    pub fn stream_table_entry(&self, sid: u32) -> Result<[u64; 8], SmmuError> {
        self.strtab
            .lock()
            .entry(sid)
            .map_err(SmmuError::StreamTable)
    }

    fn install(&self, sid: u32, ste: &StreamTableEntry) -> Result<(), SmmuError> {
        ste.check_features(&self.features)
            .map_err(SmmuError::Entry)?;
        let invalidate = |cmd: Command| self.cmdq.submit_and_sync(&[cmd.encode()?]);
        let mut strtab = self.strtab.lock();
        if strtab.ensure_level2(sid).map_err(SmmuError::StreamTable)? {
            invalidate(Command::CfgiSte { sid, leaf: false })?;
            // A new level-2 table starts with aborting STEs, which record nothing: its other
            // streams are blocked in the reporting way before anything can use them.
            if let Some(blocking) = &self.blocking {
                let blocking = self.ste_for(blocking);
                let n = strtab.geometry().level2_entries();
                let first = u64::from(sid) & !(n - 1);
                for other in (first..first + n).filter_map(|s| u32::try_from(s).ok()) {
                    if other != sid {
                        strtab
                            .install(other, &blocking, invalidate)
                            .map_err(SmmuError::StreamTable)?;
                    }
                }
            }
        }
        strtab
            .install(sid, ste, invalidate)
            .map_err(SmmuError::StreamTable)?;
        Ok(())
    }

    /// Aborts every transaction of `sid` silently (STE.Config = abort: no event is recorded).
    pub fn abort_stream(&self, sid: u32) -> Result<(), UnitError> {
        Ok(self.install(sid, &StreamTableEntry::abort())?)
    }

    fn alloc_tag(counter: &AtomicU16, bits: u8) -> Result<u16, UnitError> {
        let limit = if bits >= 16 {
            u32::from(u16::MAX)
        } else {
            (1u32 << bits) - 1
        };
        let tag = counter.fetch_add(1, Ordering::Relaxed);
        if tag == 0 || u32::from(tag) > limit {
            // Undo so the counter does not wrap back onto live tags.
            counter.fetch_sub(1, Ordering::Relaxed);
            return Err(UnitError::OutOfIds);
        }
        Ok(tag)
    }

    /// A paging domain of `stage` with pages of `granule`, translating `ia_bits` of input
    /// address (raised to the 25 bits the smallest Arm table needs).
    pub fn new_domain_with_granule(
        &self,
        stage: Stage,
        ia_bits: u32,
        granule: Granule,
    ) -> Result<SmmuDomain<H>, UnitError> {
        let g = &self.features.granules;
        let supported = match granule {
            Granule::Size4K => g.size_4k,
            Granule::Size16K => g.size_16k,
            Granule::Size64K => g.size_64k,
        };
        if !supported {
            return Err(UnitError::Unsupported("granule"));
        }
        let coherency = if self.features.coherent {
            Coherency::Coherent
        } else {
            Coherency::NonCoherent
        };
        let ips = self.features.oas;
        match stage {
            Stage::First => {
                if !self.features.stages.stage1() {
                    return Err(UnitError::Unsupported("stage 1 translation"));
                }
                // QEMU accepts T0SZ 16..=39 only: at least 25 input bits.
                let ia = ia_bits.clamp(25, 48);
                let cfg = VmsaConfig {
                    granule: pt_granule(granule),
                    input_bits: ia,
                    output_bits: self.oas_bits,
                };
                let format = VmsaStage1::new(cfg)?;
                let mair = format.mair();
                let table = PageTable::new(format, self.hal.clone(), coherency)?;
                let asid = Self::alloc_tag(&self.next_asid, self.features.asid_bits)?;
                let cd = ContextDescriptor::new(asid, table.root(), ia as u8, granule, ips, mair)
                    .map_err(SmmuError::Entry)?;
                cd.check_features(&self.features)
                    .map_err(SmmuError::Entry)?;
                let mut cds = CdTable::new(
                    self.hal.clone(),
                    CdTableGeometry::SINGLE,
                    self.features.coherent,
                )
                .map_err(SmmuError::CdTable)?;
                // No STE points at the table yet: nothing to invalidate.
                cds.install(0, Some(&cd), |_, _| Ok(()))
                    .map_err(SmmuError::CdTable)?;
                Ok(SmmuDomain {
                    kind: DomainKind::Stage1 {
                        table,
                        cds,
                        asid,
                        vmid: AtomicU16::new(0),
                    },
                })
            }
            Stage::Second => {
                if !self.features.stages.stage2() {
                    return Err(UnitError::Unsupported("stage 2 translation"));
                }
                let ia = ia_bits.clamp(25, self.oas_bits);
                let cfg = VmsaConfig {
                    granule: pt_granule(granule),
                    input_bits: ia,
                    output_bits: self.oas_bits,
                };
                let format = VmsaStage2::new(cfg)?;
                let start_level = format.start_level() as u8;
                let ias = 64 - format.t0sz();
                let table = PageTable::new(format, self.hal.clone(), coherency)?;
                let vmid = Self::alloc_tag(&self.next_vmid, self.features.vmid_bits)?;
                let s2 = Stage2::new(
                    vmid,
                    table.root(),
                    ias,
                    granule,
                    start_level,
                    output_size(ips),
                )
                .map_err(SmmuError::Entry)?;
                Ok(SmmuDomain {
                    kind: DomainKind::Stage2 {
                        table,
                        s2,
                        nest_users: crate::viommu::NestUsers::new(),
                    },
                })
            }
        }
    }

    /// Points `sid` at a nested configuration: `s1`'s context descriptor and table, whose
    /// addresses (the CD table, every table pointer and every output address) are IPAs that
    /// `s2` translates. `s1` must be a stage-1 domain and `s2` a stage-2 one.
    pub fn attach_nested(
        &self,
        device: DeviceId,
        s1: &SmmuDomain<H>,
        s2: &SmmuDomain<H>,
    ) -> Result<(), UnitError> {
        if !(self.features.stages.stage1() && self.features.stages.stage2()) {
            return Err(UnitError::Unsupported("nested translation"));
        }
        let ste = match (&s1.kind, &s2.kind) {
            (DomainKind::Stage1 { cds, vmid, .. }, DomainKind::Stage2 { s2, .. }) => {
                // One domain nested in two parents would need both VMIDs invalidated.
                let old = vmid.load(Ordering::Relaxed);
                if old != 0 && old != s2.vmid {
                    return Err(UnitError::Unsupported("one stage-1 domain in two parents"));
                }
                vmid.store(s2.vmid, Ordering::Relaxed);
                StreamTableEntry::nested(cds.stage1(), *s2)
            }
            _ => {
                return Err(UnitError::Unsupported(
                    "nesting other than stage 1 in stage 2",
                ))
            }
        };
        Ok(self.install(device.0, &ste)?)
    }

    fn ste_for(&self, domain: &SmmuDomain<H>) -> StreamTableEntry {
        match &domain.kind {
            DomainKind::Stage1 { cds, .. } => StreamTableEntry::stage1(cds.stage1()),
            DomainKind::Stage2 { s2, .. } => StreamTableEntry::stage2(*s2),
            DomainKind::Nested { ste, .. } => *ste,
        }
    }

    fn domain_granule(domain: &SmmuDomain<H>) -> Granule {
        let g = match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.format().granule(),
            DomainKind::Stage2 { table, .. } => table.format().granule(),
            DomainKind::Nested { .. } => PtGranule::Size4K,
        };
        match g {
            PtGranule::Size4K => Granule::Size4K,
            PtGranule::Size16K => Granule::Size16K,
            PtGranule::Size64K => Granule::Size64K,
        }
    }

    /// Invalidates the TLB entries of `domain` for `range` (one CMD_SYNC per batch) and waits.
    fn invalidate(
        &self,
        domain: &SmmuDomain<H>,
        range: Range<u64>,
        leaf: bool,
    ) -> Result<(), SmmuError> {
        let scope = match &domain.kind {
            DomainKind::Stage1 { asid, vmid, .. } => InvalidationScope::Stage1 {
                vmid: vmid.load(Ordering::Relaxed),
                asid: *asid,
            },
            DomainKind::Stage2 { s2, .. } => InvalidationScope::Stage2 { vmid: s2.vmid },
            DomainKind::Nested { .. } => return Err(SmmuError::Unsupported(NESTED_MAP)),
        };
        let ranges = [range];
        let mut batch = self.cmdq.batch();
        for cmd in plan_invalidation(
            scope,
            &ranges,
            Self::domain_granule(domain),
            leaf,
            &self.policy,
        ) {
            batch.push(cmd)?;
        }
        // A stage-2 domain may be the parent of nested streams, whose combined stage-1+2 TLB
        // entries are tagged with its VMID but indexed by the stage-1 address: the IPA
        // invalidation above does not reach them.
        // Only where stage 1 exists: a stage-2-only SMMU has no nested streams and refuses
        // TLBI_NH_* as illegal.
        if let DomainKind::Stage2 { s2, .. } = &domain.kind {
            if self.features.stages.stage1() {
                batch.push(Command::TlbiNhAll { vmid: s2.vmid })?;
            }
        }
        batch.finish()?;
        Ok(())
    }

    /// Submits raw commands and a CMD_SYNC, for tests of the queue's error handling.
    pub fn submit_raw(&self, cmds: &[RawCommand]) -> Result<(), CmdqError> {
        self.cmdq.submit_and_sync(cmds)
    }
}

/// IDR5.OAS as the STE's S2PS (the same encoding), never the reserved value.
fn output_size(oas: OutputAddressSize) -> OutputAddressSize {
    if oas == OutputAddressSize::Reserved {
        OutputAddressSize::Bits48
    } else {
        oas
    }
}

/// The core's class of an SMMU event type.
pub fn fault_kind(event: EventType) -> FaultKind {
    match event {
        EventType::Translation => FaultKind::Translation,
        EventType::Permission | EventType::Access => FaultKind::Permission,
        EventType::AddressSize => FaultKind::AddressSize,
        EventType::BadStreamId
        | EventType::BadSte
        | EventType::SteFetch
        | EventType::StreamDisabled
        | EventType::TranslationForbidden
        | EventType::BadSubstreamId
        | EventType::CdFetch
        | EventType::BadCd => FaultKind::Configuration,
        _ => FaultKind::Other,
    }
}

/// An SMMU event record in the core's terms.
pub fn fault_record(e: &crate::eventq::FaultRecord) -> FaultRecord {
    FaultRecord {
        device: DeviceId(e.stream_id),
        pasid: e.substream_id,
        address: e.input_address.or(e.fetch_address).unwrap_or(0),
        write: e.access.is_some_and(|a| a.write),
        kind: fault_kind(e.event),
        code: u16::from(e.event.code()),
        reason: e.event.meaning(),
    }
}

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Drains the event queue, handing every record decoded by the SMMU back-end to `sink`.
    ///
    /// Lost records are reported as overflow whichever way the SMMU signals them: EVENTQ_PROD.OVFLG
    /// (IHI 0070 7.4) or, as QEMU does, GERROR.EVENTQ_ABT_ERR when it finds the queue full; the
    /// latter is acknowledged here. The GERRORN write is a read-modify-write that the command
    /// queue's CMDQ_ERR recovery also does: callers serialise the two (one CPU drains and
    /// submits at a time in the test kernels).
    pub fn drain_events(&self, sink: &mut dyn FnMut(&crate::eventq::FaultRecord)) -> Drained {
        let mut q = self.eventq.lock();
        // `drain` pops until the queue is empty (re-reading PROD), bounded so that a device
        // faulting without pause cannot keep the caller here forever.
        let report = q.drain(MAX_EVENTS_PER_DRAIN, |e| sink(&e));
        let mut drained = Drained {
            records: report.events,
            overflow: report.overflowed,
        };
        // SAFETY: mapped for our life per `new`'s contract; interior-mutable MMIO cells.
        let r = unsafe { self.regs.as_ref() };
        let active = r.gerror.get() ^ r.gerrorn.get();
        let abt = GERROR::EVENTQ_ABT_ERR::SET.value;
        if active & abt != 0 {
            drained.overflow = true;
            r.gerrorn.set(r.gerrorn.get() ^ abt);
        }
        drained
    }
}

impl<H: Hal + Clone> TranslationUnit for SmmuUnit<H> {
    type Domain = SmmuDomain<H>;
    type VIommu = crate::viommu::SmmuViommu<H>;
    type GuestCommand = [u64; 2];

    // --- Placeholders while the back-end's implementations are written (issue 4/5/6 work in
    // progress): each refuses with a named Unsupported error, never pretends to succeed.
    fn info(&self) -> HardwareInfo {
        HardwareInfo {
            first_stage: false,
            second_stage: false,
            nesting: false,
            identity: false,
            pasid_bits: 0,
            first_stage_ia_bits: 0,
            second_stage_ia_bits: 0,
            output_bits: 0,
            page_sizes: 0,
            coherent_walks: false,
            ats: false,
            tags: 0,
            raw: RawRegisters::Smmuv3 {
                idr: [0; 6],
                iidr: 0,
                aidr: 0,
            },
        }
    }

    fn new_shared_domain(&self, _cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        Err(UnitError::Unsupported("shared CPU tables (not yet)"))
    }

    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        Err((domain, UnitError::Unsupported("domain teardown (not yet)")))
    }

    fn attach_pasid(
        &self,
        _device: DeviceId,
        _pasid: u32,
        _to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        Err(UnitError::Unsupported("PASID attach (not yet)"))
    }

    fn flush(&self, _domain: &Self::Domain, _iova: Iova, _len: u64) -> Result<(), UnitError> {
        Err(UnitError::Unsupported("flush (not yet)"))
    }

    fn new_viommu(&self, parent: &Self::Domain) -> Result<Self::VIommu, UnitError> {
        crate::viommu::new_viommu(self, parent)
    }

    fn destroy_viommu(&self, viommu: Self::VIommu) -> Result<(), (Self::VIommu, UnitError)> {
        crate::viommu::destroy_viommu(viommu)
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

    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError> {
        self.new_domain_with_granule(stage, ia_bits, Granule::Size4K)
    }

    fn attach(&self, device: DeviceId, to: Attachment<'_, Self::Domain>) -> Result<(), UnitError> {
        let ste = match to {
            // The empty domain, not an aborting STE: the SMMU records no event for those
            // (IHI 0070 5.2) and a blocked device's DMA must be reported.
            Attachment::Blocking => match &self.blocking {
                Some(d) => self.ste_for(d),
                None => StreamTableEntry::abort(),
            },
            Attachment::Identity => StreamTableEntry::bypass(),
            Attachment::Paging(d) => self.ste_for(d),
        };
        self.install(device.0, &ste)?;
        Ok(())
    }

    fn map(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        // The SMMU caches no invalid entries, so a new mapping needs no invalidation.
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.map(iova, phys, len, prot)?,
            DomainKind::Stage2 { table, .. } => table.map(iova, phys, len, prot)?,
            DomainKind::Nested { .. } => return Err(UnitError::Unsupported(NESTED_MAP)),
        }
        Ok(())
    }

    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError> {
        let mut gather = Gather::new();
        let bytes = match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.unmap(iova, len, &mut gather)?,
            DomainKind::Stage2 { table, .. } => table.unmap(iova, len, &mut gather)?,
            DomainKind::Nested { .. } => return Err(UnitError::Unsupported(NESTED_MAP)),
        };
        if let Some((start, len)) = gather.range() {
            let start = start.as_u64();
            self.invalidate(
                domain,
                start..start.saturating_add(len),
                !gather.tables_removed(),
            )?;
        }
        // SAFETY: the invalidation of the gathered range (walk caches too when tables were
        // removed: `leaf` false) completed with its CMD_SYNC above; this SMMU is the only
        // walker of the domain's table; the frames belong to the table's HAL, a clone of ours.
        unsafe { gather.complete(&self.hal) };
        Ok(bytes)
    }

    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        Ok(self.drain_events(&mut |e| sink(fault_record(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An F_TRANSLATION record as IHI 0070 7.3.12 lays it out: stream 8, write (RnW = 0),
    /// stage 1, CLASS = IN, address 0xcd00040.
    #[test]
    fn translation_event_becomes_a_core_fault_record() {
        let raw = [0x10 | 8 << 32, 2 << 40, 0xcd0_0040, 0];
        let f = fault_record(&crate::eventq::FaultRecord::decode(raw));
        assert_eq!(f.device, DeviceId(8));
        assert_eq!(f.pasid, None);
        assert_eq!(f.address, 0xcd0_0040);
        assert!(f.write);
        assert_eq!(f.kind, FaultKind::Translation);
        assert_eq!(f.code, 0x10);
    }

    #[test]
    fn read_permission_fault_and_configuration_errors_are_classified() {
        let raw = [0x13 | 16 << 32, 1 << 35 | 2 << 40, 0x1000, 0];
        let f = fault_record(&crate::eventq::FaultRecord::decode(raw));
        assert_eq!(
            (f.device, f.write, f.kind),
            (DeviceId(16), false, FaultKind::Permission)
        );
        assert_eq!(fault_kind(EventType::AddressSize), FaultKind::AddressSize);
        for e in [
            EventType::BadSte,
            EventType::SteFetch,
            EventType::StreamDisabled,
            EventType::TranslationForbidden,
            EventType::BadCd,
            EventType::BadStreamId,
        ] {
            assert_eq!(fault_kind(e), FaultKind::Configuration, "{e:?}");
        }
        assert_eq!(fault_kind(EventType::TlbConflict), FaultKind::Other);
    }

    #[test]
    fn smmu_errors_fold_into_unit_errors() {
        assert_eq!(
            UnitError::from(SmmuError::OutOfMemory),
            UnitError::OutOfMemory
        );
        let t = iommu::poll::Timeout { waiting_for: "x" };
        assert_eq!(
            UnitError::from(SmmuError::Timeout(t)),
            UnitError::Timeout(t)
        );
        assert_eq!(
            UnitError::from(SmmuError::Command(CmdqError::Timeout(t))),
            UnitError::Timeout(t)
        );
        assert_eq!(
            UnitError::from(SmmuError::Unsupported("stage 1")),
            UnitError::Unsupported("stage 1")
        );
    }
}
