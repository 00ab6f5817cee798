//! One live SMMUv3: the unit type [`SmmuUnit`], its reset sequence of IHI 0070 (GBPA abort,
//! queues, stream table, global invalidation, SMMUEN) and the core's [`TranslationUnit`] over it.
//!
//! The rooms of the unit, named like the VT-d back-end's so the two read side by side:
//! - `domain`: the domain type and the ASID/VMID pools; paging domains hold an Arm VMSAv8-64
//!   table from the core's engine (a stage-1 domain owns a single-CD table, a stage-2 domain its
//!   VMID; a shared domain's CD points at the embedder's CPU table under the CPU's ASID); a
//!   destroyed domain's ASID/VMID is handed out again only after a TLBI of everything tagged
//!   with it has completed.
//! - `attach`: STE and CD programming for attach and PASID attach, in the safe order of
//!   [`StreamTable::install`].
//! - `streams`: the records of what every configured stream uses (under the stream-table lock),
//!   so a domain still pointed at by an STE or a CD cannot be destroyed.
//! - [`invalidate`]: unmap and its TLB invalidation: range commands where IDR3.RIL allows, one
//!   CMD_SYNC per batch, before the gathered tables are freed.
//! - `fault`: the event queue drained into the core's fault records, wired interrupts.
//! - `info`: what the hardware can do, in the core's terms.

extern crate alloc;

mod ats;
mod attach;
pub(crate) mod domain;
mod fault;
mod info;
pub mod invalidate;
mod streams;

use alloc::collections::BTreeMap;
use core::fmt;
use core::mem::ManuallyDrop;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{Gather, Prot};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultRecord, Forwarded, GuestEntry, GuestFlush,
    HardwareInfo, Stage, TranslationUnit, UnitError, VmTable,
};

use crate::attributes::Granule;
use crate::cmdq::{
    queue_base_register, CmdqError, CommandQueue, DmaQueueMemory, MmioCmdqRegisters, ENTRY_BYTES,
};
use crate::command::{Command, RawCommand};
use crate::eventq::{EventQueue, MmioEventqRegisters, EVENT_BYTES};
use crate::idr::{Features, IdRegisters};
use crate::registers::{ReadWriteable, Readable, SmmuRegisters, Writeable, CR0, CR1, CR2, GBPA};
use crate::stream_table::{StreamTable, StreamTableGeometry};
use crate::Error;

pub use domain::SmmuDomain;
use domain::{TagPool, Tags};
pub use fault::{fault_kind, fault_record};
pub use info::hardware_info;
use invalidate::InvalidationPolicy;
use streams::{StreamUse, Streams};

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
    /// Hands out at most this many ASIDs and VMIDs (1..=n) instead of all the hardware has:
    /// makes tag reuse happen after a few domains, for tests. `None`: every tag.
    pub tag_window: Option<u16>,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            stream_table: None,
            cmdq_log2: 8,
            eventq_log2: 7,
            tag_window: None,
        }
    }
}

/// The command queue type of a live SMMU.
pub type MmioCommandQueue = CommandQueue<MmioCmdqRegisters, DmaQueueMemory<2>>;
type MmioEventQueue = EventQueue<MmioEventqRegisters, DmaQueueMemory<4>>;

/// One SMMUv3, enabled, with its queues and stream table.
pub struct SmmuUnit<H: Hal + Clone> {
    regs: NonNull<SmmuRegisters>,
    pub(crate) hal: H,
    features: Features,
    cmdq: MmioCommandQueue,
    /// Single consumer: a poller holds the lock while draining.
    eventq: spin::Mutex<MmioEventQueue>,
    /// Attach and detach of any stream are serialised here (the STE update protocol needs one
    /// writer per STE, and level-2 tables are created under it), with the records of which
    /// domains each stream uses.
    strtab: spin::Mutex<Streams<H>>,
    /// ASIDs and VMIDs. A tag goes back only after its domain's TLB entries were invalidated.
    tags: spin::Mutex<Tags>,
    /// The next domain serial (relaxed: uniqueness comes from the atomic increment alone).
    next_domain_serial: AtomicU64,
    /// The identification registers as read at bring-up.
    id_regs: IdRegisters,
    policy: InvalidationPolicy,
    oas_bits: u32,
    /// The command and event queue rings, freed once the SMMU is disabled (`Drop`).
    rings: [(PhysAddr, FrameSize); 2],
    /// An empty domain of the preferred stage: what [`Attachment::Blocking`] and every stream of
    /// a level-2 table created by the unit point at, so a blocked DMA is refused *and* reported
    /// (a translation fault) where an aborting STE would drop it silently. `None` only while
    /// the unit is being built.
    blocking: Option<SmmuDomain<H>>,
    /// Streams whose devices have ATS on (`ats`); taken after `strtab` when both are held.
    ats: spin::Mutex<BTreeMap<u32, iommu::unit::Ats>>,
    /// How many: an unmap looks for ATCs to invalidate only while it is not 0 (see `ats`).
    ats_streams: core::sync::atomic::AtomicUsize,
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
) -> Result<(PhysAddr, FrameSize), Error> {
    let bytes_log2 = u32::from(log2) + entry_bytes.trailing_zeros();
    let size = FrameSize::from_log2(bytes_log2.max(12)).ok_or(Error::Unsupported("queue size"))?;
    let phys = hal.alloc_frame(size).ok_or(Error::OutOfMemory)?;
    Ok((phys, size))
}

/// What a bring-up has allocated so far, given back to the HAL if the bring-up fails: the
/// stream table and the queue rings. Once the SMMU may have been given one of them (a base
/// register written), it is disabled (CR0 := 0, acknowledged) before anything is freed; if it
/// does not acknowledge, the frames are leaked rather than freed under a live walker.
struct Bringup<'r, H: Hal> {
    regs: &'r SmmuRegisters,
    hal: H,
    strtab: Option<StreamTable<H>>,
    rings: [Option<(PhysAddr, FrameSize)>; 2],
    /// A base register names one of our frames.
    given: bool,
}

impl<H: Hal> Bringup<'_, H> {
    /// The bring-up succeeded: the unit keeps everything.
    fn keep(mut self) {
        self.strtab = None;
        self.rings = [None, None];
    }
}

impl<H: Hal> Drop for Bringup<'_, H> {
    fn drop(&mut self) {
        if self.strtab.is_none() && self.rings.iter().all(Option::is_none) {
            return;
        }
        if self.given {
            self.regs.cr0.set(0);
            if poll_until(
                "CR0ACK disable after a failed bring-up",
                DEFAULT_POLL_BUDGET,
                || self.regs.cr0ack.get() == 0,
            )
            .is_err()
            {
                log::error!("SMMU: not disabled after a failed bring-up; its tables are leaked");
                return;
            }
        }
        if let Some(strtab) = self.strtab.take() {
            // SAFETY: SMMUEN is 0 and acknowledged (or the SMMU was never given the table).
            unsafe { strtab.free() };
        }
        for (phys, size) in self.rings.iter_mut().filter_map(Option::take) {
            // SAFETY: allocated by `alloc_ring` with this size; the queues are disabled and
            // acknowledged (or were never given the ring); the queue values using it are gone.
            unsafe { self.hal.free_frame(phys, size) };
        }
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
    ) -> Result<Self, Error> {
        // SAFETY: per this function's contract.
        let id_regs = unsafe { crate::idr::read_id_registers(regs) };
        let features = Features::decode(&id_regs);
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
        r.cr1.write(if features.coherent {
            CR1::QUEUE_IC::WriteBack
                + CR1::QUEUE_OC::WriteBack
                + CR1::QUEUE_SH::InnerShareable
                + CR1::TABLE_IC::WriteBack
                + CR1::TABLE_OC::WriteBack
                + CR1::TABLE_SH::InnerShareable
        } else {
            CR1::QUEUE_IC::NonCacheable
                + CR1::QUEUE_OC::NonCacheable
                + CR1::QUEUE_SH::OuterShareable
                + CR1::TABLE_IC::NonCacheable
                + CR1::TABLE_OC::NonCacheable
                + CR1::TABLE_SH::OuterShareable
        });
        // PTM: the CPUs' broadcast TLB maintenance is not for our ASIDs; RECINVSID: record
        // out-of-range StreamIDs as C_BAD_STREAMID.
        r.cr2.write(CR2::PTM::SET + CR2::RECINVSID::SET);

        let geometry = match config.stream_table {
            Some(g) => g,
            None => StreamTableGeometry::for_features(&features).map_err(Error::StreamTable)?,
        };
        geometry
            .check_features(&features)
            .map_err(Error::StreamTable)?;
        let mut owned = Bringup {
            regs: r,
            hal: hal.clone(),
            strtab: None,
            rings: [None, None],
            given: false,
        };
        let strtab = StreamTable::new(hal.clone(), geometry, features.coherent)
            .map_err(Error::StreamTable)?;
        owned.given = true;
        r.strtab_base.set(strtab.base_register());
        r.strtab_base_cfg.set(strtab.base_cfg_register());
        owned.strtab = Some(strtab);

        log::debug!("SMMU at {regs:p}: {features}");
        log::debug!("SMMU stream table: {geometry:?}");
        let cmdq_log2 = config.cmdq_log2.clamp(1, features.cmdq_max_log2.max(1));
        let (cmdq_phys, cmdq_size) = alloc_ring(&hal, cmdq_log2, ENTRY_BYTES)?;
        owned.rings[0] = Some((cmdq_phys, cmdq_size));
        r.cmdq_base
            .set(queue_base_register(cmdq_phys, cmdq_log2, true));
        r.cmdq_prod.set(0);
        r.cmdq_cons.set(0);

        let eventq_log2 = config.eventq_log2.clamp(1, features.eventq_max_log2.max(1));
        let (eventq_phys, eventq_size) = alloc_ring(&hal, eventq_log2, EVENT_BYTES)?;
        owned.rings[1] = Some((eventq_phys, eventq_size));
        r.eventq_base
            .set(queue_base_register(eventq_phys, eventq_log2, true));
        r.eventq_prod.set(0);
        r.eventq_cons.set(0);

        log::debug!("SMMU queues: 2^{cmdq_log2} commands, 2^{eventq_log2} events");
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
            .map_err(|_| Error::Unsupported("event queue size"))?;

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
        let Some(table_taken) = owned.strtab.take() else {
            unreachable!("the stream table was stored above")
        };
        let mut unit = Self {
            regs,
            hal,
            policy: InvalidationPolicy::for_features(&features),
            features,
            cmdq,
            eventq: spin::Mutex::new(eventq),
            strtab: spin::Mutex::new(Streams {
                table: ManuallyDrop::new(table_taken),
                uses: BTreeMap::new(),
                users: BTreeMap::new(),
            }),
            tags: spin::Mutex::new(Tags {
                asids: TagPool::new(features.asid_bits, config.tag_window),
                vmids: TagPool::new(features.vmid_bits, config.tag_window),
            }),
            next_domain_serial: AtomicU64::new(1),
            id_regs,
            oas_bits,
            rings: [(cmdq_phys, cmdq_size), (eventq_phys, eventq_size)],
            blocking: None,
            ats: spin::Mutex::new(BTreeMap::new()),
            ats_streams: core::sync::atomic::AtomicUsize::new(0),
        };
        // From here the unit owns the stream table and the rings (its `Drop` frees them).
        owned.keep();
        let stage = if features.stages.stage1() {
            Stage::First
        } else {
            Stage::Second
        };
        log::debug!(
            "SMMU blocking domain at {stage:?}; accesses {}",
            if features.coherent {
                "coherent (write-back, inner shareable)"
            } else {
                "non-coherent (non-cacheable, stores cleaned)"
            }
        );
        unit.blocking = Some(
            unit.new_domain_with_granule(stage, 48, Granule::Size4K)
                .map_err(|e| match e {
                    // Dropping the unit disables the SMMU and frees what it had.
                    UnitError::OutOfMemory
                    | UnitError::PageTable(iommu::pagetable::Error::OutOfMemory) => {
                        Error::OutOfMemory
                    }
                    _ => Error::Unsupported("a blocking domain"),
                })?,
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

    /// The stream table's layout.
    pub fn stream_table_geometry(&self) -> StreamTableGeometry {
        self.strtab.lock().table.geometry()
    }

    /// The eight words of `sid`'s STE as the SMMU reads them.
    pub fn stream_table_entry(&self, sid: u32) -> Result<[u64; 8], Error> {
        self.strtab
            .lock()
            .table
            .entry(sid)
            .map_err(Error::StreamTable)
    }

    /// How many STEs and CDs point at `domain` (for tests of the attachment records).
    pub fn domain_users(&self, domain: &SmmuDomain<H>) -> u32 {
        self.strtab
            .lock()
            .users
            .get(&domain.serial)
            .copied()
            .unwrap_or(0)
    }

    /// The eight words of the CD of `ssid` in the stream's own CD table, if it has one (a
    /// PASID was attached).
    pub fn substream_entry(&self, sid: u32, ssid: u32) -> Option<[u64; 8]> {
        match self.strtab.lock().uses.get(&sid) {
            Some(StreamUse::Substreams { table, .. }) => table.entry(ssid).ok(),
            _ => None,
        }
    }

    /// Submits raw commands and a CMD_SYNC, for tests of the queue's error handling.
    pub fn submit_raw(&self, cmds: &[RawCommand]) -> Result<(), CmdqError> {
        self.cmdq.submit_and_sync(cmds)
    }
}

/// The unit goes: the SMMU is disabled (CR0 := 0, acknowledged; transactions then follow
/// GBPA, abort since bring-up), then the stream table with its level-2 arrays, the streams' own
/// CD tables, the blocking domain and the queue rings go back to the HAL. The embedder's
/// domains are its own to destroy before. If the SMMU does not acknowledge, everything is
/// leaked rather than freed under a live walker.
impl<H: Hal + Clone> Drop for SmmuUnit<H> {
    fn drop(&mut self) {
        // SAFETY: mapped for our life per `new`'s contract.
        let r = unsafe { self.regs.as_ref() };
        r.cr0.set(0);
        if poll_until("CR0ACK disable on drop", DEFAULT_POLL_BUDGET, || {
            r.cr0ack.get() == 0
        })
        .is_err()
        {
            log::error!(
                "SMMU at {:p}: not disabled on drop; its tables are leaked",
                self.regs
            );
            return;
        }
        let streams = self.strtab.get_mut();
        for (_, used) in core::mem::take(&mut streams.uses) {
            if let StreamUse::Substreams { table, .. } = used {
                // SAFETY: SMMUEN is 0 and acknowledged.
                unsafe { table.free() };
            }
        }
        // SAFETY: SMMUEN is 0 and acknowledged; the table is not used after this (`Drop`).
        unsafe { ManuallyDrop::take(&mut streams.table).free() };
        if let Some(blocking) = self.blocking.take() {
            // SAFETY: SMMUEN is 0 and acknowledged; the embedder never holds the blocking
            // domain, so no vIOMMU or nested domain has it as a parent; its tables came from
            // our HAL.
            unsafe { blocking.free_unreachable(&self.hal) };
        }
        for (phys, size) in self.rings {
            // SAFETY: allocated by `alloc_ring` with this size; the queues are disabled and
            // acknowledged, and the queue values using them are dropped with us without
            // touching the rings.
            unsafe { self.hal.free_frame(phys, size) };
        }
    }
}

impl<H: Hal + Clone> TranslationUnit for SmmuUnit<H> {
    type Domain = SmmuDomain<H>;
    type VIommu = crate::viommu::SmmuViommu<H>;
    type GuestCommand = [u64; 2];

    fn info(&self) -> HardwareInfo {
        hardware_info(&self.features, &self.id_regs)
    }

    fn new_shared_domain(&self, cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        self.shared_domain(cpu)
    }

    fn new_vm_domain(&self, vm: &VmTable) -> Result<Self::Domain, UnitError> {
        self.vm_domain(vm)
    }

    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        self.destroy(domain)
    }

    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        self.attach_substream(device, pasid, to).inspect_err(|e| {
            log::debug!(
                "SMMU: PASID {pasid} attach of stream {:#x} refused: {e}",
                device.0
            )
        })
    }

    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError> {
        self.flush_range(domain, iova, len)
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

    fn guest_flush(&self, cmd: &RawCommand) -> Result<GuestFlush, UnitError> {
        crate::guest::guest_flush(*cmd).map_err(UnitError::GuestCommand)
    }

    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError> {
        self.new_domain_with_granule(stage, ia_bits, Granule::Size4K)
            .inspect_err(|e| log::debug!("SMMU: {stage:?} domain of {ia_bits} bits refused: {e}"))
    }

    fn attach(&self, device: DeviceId, to: Attachment<'_, Self::Domain>) -> Result<(), UnitError> {
        self.attach_stream(device, to)
            .inspect_err(|e| log::debug!("SMMU: attach of stream {:#x} refused: {e}", device.0))
    }

    fn map(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        self.map_range(domain, iova, phys, len, prot)
            .inspect_err(|e| log::debug!("SMMU: map of {len:#x} bytes at {iova:?} refused: {e}"))
    }

    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError> {
        self.unmap_range(domain, iova, len, None)
    }

    fn unmap_pruning(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
    ) -> Result<u64, UnitError> {
        self.unmap_range(domain, iova, len, Some(owned))
    }

    fn prune_tables(
        &self,
        domain: &Self::Domain,
        points: &[(Iova, Range<u64>)],
    ) -> Result<usize, UnitError> {
        let mut gather = Gather::new();
        let freed = self.prune_gathered(domain, points, &mut gather)?;
        self.flush_gathered(domain, gather)?;
        Ok(freed)
    }

    fn unmap_deferred(
        &self,
        domain: &Self::Domain,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        self.unmap_gathered(domain, iova, len, gather)
    }

    fn flush_deferred(&self, domain: &Self::Domain, gather: Gather) -> Result<(), UnitError> {
        self.flush_gathered(domain, gather)
    }

    fn set_ats(&self, device: DeviceId, ats: Option<iommu::unit::Ats>) -> Result<(), UnitError> {
        self.set_stream_ats(device, ats)
    }

    fn reclaim_tables(&self, domain: &mut Self::Domain) -> Result<usize, UnitError> {
        let mut gather = Gather::new();
        let freed = self.reclaim_gathered(domain, &mut gather)?;
        self.flush_gathered(domain, gather)?;
        Ok(freed)
    }

    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        Ok(self.drain_events(&mut |e| sink(fault_record(e))))
    }
}
