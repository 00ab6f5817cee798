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
//! PASID entry still points at (counted per id in `domain_ids`), invalidates every
//! cache entry tagged with its id, frees its table and gives the id back.
//!
//! RMRRs (DMAR reserved memory regions, given with [`VtdUnit::add_rmrrs`]) stay identity-mapped
//! for the devices they name: attaching such a device to a paging domain maps them into the
//! domain first; blocking such a device is refused (see [`VtdUnit::add_rmrr`]).
//!
//! The rooms, as on the SMMUv3 side: this file holds the unit, its bring-up, table memory and
//! the [`TranslationUnit`] impl, which hands each operation to the file of its role: `domain`
//! (the domain type, creation and destruction) with `domain_ids` (the id pool), `attach`
//! (root, context and PASID entries), `invalidate` (the batch, the range-flush plan, nested
//! ids), `fault` (collect, classify, drain, the fault-event interrupt), `info` (hardware info);
//! VT-d's own `rmrr` (reserved memory regions). Interrupt remapping, turned on after bring-up,
//! has its own room: `crate::interrupt_remapping`.

#[cfg(all(test, not(loom)))]
mod alloc_failure;
mod ats;
mod attach;
mod bringup;
mod domain;
mod domain_ids;
mod fault;
mod info;
mod invalidate;
mod rmrr;

pub use ats::MAX_ATS_DEVICES;
use bringup::BringupFrames;
pub use domain::VtdDomain;
pub(crate) use domain::{agaw_of, DomainTable};
use domain::{NESTED_MAP, SHARED_TABLE};
pub use fault::FaultEventMsi;
use fault::{Pending, PENDING};
use invalidate::Batch;
use invalidate::DomainFlush;
pub use invalidate::{plan_flush, FlushLimits, FlushPlan, IovaRange, PlanBlocks, FLUSH_THRESHOLD};
use rmrr::Rmrrs;
pub use rmrr::{ReservedRegion, MAX_RMRRS};

use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{Coherency, Gather, Prot};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultRecord, Forwarded, GuestEntry, GuestFlush,
    HardwareError, HardwareInfo, Stage, TranslationUnit, UnitError,
};

use crate::caps::Agaw;
use crate::descriptor::{ContextCacheScope, Descriptor, IotlbScope, PasidCacheScope};
#[cfg(not(loom))]
use crate::qi::QueueFrames;
use crate::qi::{DescriptorWidth, InvalidationQueue, QiMmio, QueueConfig, QueueMemory, QueueSize};
use crate::registers::{Readable, Writeable, GCMD, GSTS, RTADDR};
use crate::registers::{UnitInfo, UnitRegisters};
use crate::root_table::{Did, EntryError};
use domain_ids::DomainIds;
use tock_registers::fields::FieldValue;

/// Which table format the root table uses (RTADDR.TTM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Legacy root and context entries; second-stage tables only.
    Legacy,
    /// Scalable-mode entries and PASID tables (needs ECAP.SMTS).
    Scalable,
}

/// The GSTS bits that are states (not one-shot commands): what a GCMD write must repeat.
const PERSISTENT: u32 =
    GSTS::TES::SET.value | GSTS::QIES::SET.value | GSTS::IRES::SET.value | GSTS::CFIS::SET.value;

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
    pub(crate) identity_id: Did,
    /// Invalidation descriptors issued through registers (no queue), for statistics.
    pub(crate) register_invalidations: AtomicU64,
    /// Faults read from the hardware and not yet handed to a drain; one reader at a time, so
    /// a record is reported once. Taken after `tables` when both are held.
    pub(crate) faults: spin::Mutex<Pending>,
    /// Nest parents in use by vIOMMUs (`crate::viommu`).
    pub(crate) nest_parents: crate::viommu::NestParents,
    /// The interrupt-remapping table, once remapping is on (`crate::interrupt_remapping`).
    pub(crate) interrupts: spin::Once<crate::interrupt_remapping::Remapping>,
    /// Devices with ATS on (`ats`); taken after `tables` when both are held.
    pub(crate) ats: spin::Mutex<ats::AtsDevices>,
    /// How many: a flush looks for device-TLBs to invalidate only while it is not 0.
    pub(crate) ats_devices: core::sync::atomic::AtomicUsize,
}

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
    /// The descriptor width of the queue [`VtdUnit::new`] allocates for a unit reporting `info`.
    pub fn queue_width(info: UnitInfo) -> DescriptorWidth {
        DescriptorWidth::for_unit(info.ecap)
    }

    /// Takes the unit over and turns translation on with every device blocked.
    ///
    /// A unit with queued invalidation (ECAP.QI) gets its queue of `queue_size` (2^QS pages of
    /// descriptors as wide as [`queue_width`](Self::queue_width)) from `hal`, kept for the
    /// unit's life like its root table; without one, invalidations go through the registers.
    /// `output_width` is the DMAR host address width + 1.
    pub fn new(
        regs: &'u UnitRegisters,
        hal: H,
        mode: Mode,
        output_width: u32,
        queue_size: QueueSize,
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
            Self::command(regs, GCMD::TE::SET, false, GSTS::TES, "GSTS.TES clear")?;
        }
        // Interrupt remapping through a table we do not own: off, until
        // `enable_interrupt_remapping` sets up ours.
        if block.gsts.is_set(GSTS::IRES) {
            Self::command(regs, GCMD::IRE::SET, false, GSTS::IRES, "GSTS.IRES clear")?;
        }
        if block.gsts.is_set(GSTS::QIES) {
            Self::command(regs, GCMD::QIE::SET, false, GSTS::QIES, "GSTS.QIES clear")?;
        }

        // Every frame first, before the hardware sees any: a failure here gives them back
        // with nothing to undo in the unit.
        let mut frames = BringupFrames::new(&hal);
        let root = frames.root()?;
        clean(&hal, coherency, root, 4096);
        let queue = if ecap.qi() {
            let (parts, memory) = queue_memory(&hal, queue_size, Self::queue_width(info))?;
            frames.queue(parts);
            Some(memory)
        } else {
            None
        };
        // Caching mode reserves domain id 0 (tags of cached not-present entries).
        let ids = frames.ids(cap.domain_ids(), u32::from(cap.caching_mode()))?;
        let identity_id = ids.allocate(&hal)?;

        let ttm = match mode {
            Mode::Legacy => RTADDR::TTM::Legacy,
            Mode::Scalable => RTADDR::TTM::Scalable,
        };
        block
            .rtaddr
            .write(ttm + RTADDR::RTA.val(root.as_u64() >> 12));
        // From SRTP on the unit holds the root's address: a failure turns queued invalidation
        // and translation off (bounded) before the frames go back (`BringupFrames::drop`).
        frames.regs = Some(regs);
        Self::command(regs, GCMD::SRTP::SET, true, GSTS::RTPS, "GSTS.RTPS")?;

        let qi = match queue {
            Some(memory) => {
                let config = QueueConfig::for_unit(ecap, queue_size);
                let q = InvalidationQueue::new(QiMmio::new(block), memory, config)
                    .map_err(|_| UnitError::Hardware(HardwareError::QueueMemory))?;
                block.iqt.set(0);
                block.iqa.set(q.iqa_value());
                Self::command(regs, GCMD::QIE::SET, true, GSTS::QIES, "GSTS.QIES")?;
                Some(q)
            }
            None => None,
        };

        log::debug!(
            "VT-d: {mode:?} mode, {} second-stage tables at most, {}, caching mode {}, {} domain \
             ids, {} table walks",
            max_agaw,
            if qi.is_some() {
                "queued invalidation"
            } else {
                "register-based invalidation (no ECAP.QI)"
            },
            if cap.caching_mode() { "on" } else { "off" },
            cap.domain_ids(),
            if ecap.coherent() {
                "coherent"
            } else {
                "non-coherent"
            },
        );
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
            interrupts: spin::Once::new(),
            ats: spin::Mutex::new([None; ats::MAX_ATS_DEVICES]),
            ats_devices: core::sync::atomic::AtomicUsize::new(0),
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
        Self::command(regs, GCMD::TE::SET, true, GSTS::TES, "GSTS.TES")?;
        frames.keep();
        Ok(unit)
    }

    /// One GCMD command with its GSTS handshake (10.4.4): the persistent state bits are
    /// written back with `bit` set or cleared, then GSTS must follow.
    pub(crate) fn command(
        regs: &UnitRegisters,
        bit: FieldValue<u32, GCMD::Register>,
        on: bool,
        status: tock_registers::fields::Field<u32, GSTS::Register>,
        waiting_for: &'static str,
    ) -> Result<(), UnitError> {
        let block = regs.block();
        let current = block.gsts.get() & PERSISTENT;
        let value = if on {
            current | bit.value
        } else {
            current & !bit.mask()
        };
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
        block.gcmd.set(current | GCMD::WBF::SET.value);
        poll_until("GSTS.WBFS clear", DEFAULT_POLL_BUDGET, || {
            !block.gsts.is_set(GSTS::WBFS)
        })?;
        Ok(())
    }

    /// [`TranslationUnit::map`]: the engine maps, then the unit is made to see it (an IOTLB
    /// flush in caching mode, else the write-buffer flush where CAP.RWBF asks for one).
    fn map_and_sync(
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

    // ---- table memory -------------------------------------------------------------------

    pub(crate) fn alloc_table(&self) -> Result<PhysAddr, UnitError> {
        self.hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)
    }

    /// Gives back a table frame from [`alloc_table`](Self::alloc_table).
    ///
    /// # Safety
    /// No entry the unit can reach points at it, and nothing else uses it.
    pub(crate) unsafe fn free_table(&self, table: PhysAddr) {
        // SAFETY: per this function's contract.
        unsafe { self.hal.free_frame(table, FrameSize::SIZE_4K) }
    }

    /// The 64-bit word `index` of the 4 KiB table at `table`.
    pub(crate) fn word(&self, table: PhysAddr, index: usize) -> &AtomicU64 {
        let p: NonNull<u8> = self.hal.phys_to_virt(table);
        // SAFETY: every table this unit reads or writes through here is a 4 KiB HAL frame it
        // allocated and never frees while the unit lives (root, context, PASID tables);
        // `index` < 512 at every caller, so the word is inside the frame, 8-byte aligned; the
        // HAL allows 64-bit atomic access.
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
}

impl<H: Hal + Clone> TranslationUnit for VtdUnit<'_, H> {
    type Domain = VtdDomain<H>;
    type VIommu = crate::viommu::VtdViommu;
    type GuestCommand = [u64; 4];

    fn info(&self) -> HardwareInfo {
        self.hardware_info()
    }

    fn new_shared_domain(&self, cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        self.new_shared(cpu)
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
        self.attach_at_pasid(device, pasid, to).inspect_err(|e| {
            log::debug!("VT-d: attach of {device:?} at PASID {pasid:#x} refused: {e}")
        })
    }

    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError> {
        self.flush_domain(domain, iova, len)
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

    fn guest_flush(&self, cmd: &[u64; 4]) -> Result<GuestFlush, UnitError> {
        crate::guest::guest_flush(cmd).map_err(UnitError::GuestCommand)
    }

    fn new_domain(&self, stage: Stage, ia_bits: u32) -> Result<VtdDomain<H>, UnitError> {
        self.new_paging_domain(stage, ia_bits)
    }

    fn attach(&self, device: DeviceId, to: Attachment<'_, VtdDomain<H>>) -> Result<(), UnitError> {
        self.attach_device(device, to)
            .inspect_err(|e| log::debug!("VT-d: attach of {device:?} refused: {e}"))
    }

    fn map(
        &self,
        domain: &VtdDomain<H>,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        self.map_and_sync(domain, iova, phys, len, prot)
            .inspect_err(|e| {
                log::debug!(
                    "VT-d: map of {len:#x} bytes at {iova} in domain {} refused: {e}",
                    domain.id.raw()
                )
            })
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

    fn unmap_pruning(
        &self,
        domain: &VtdDomain<H>,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
    ) -> Result<u64, UnitError> {
        let flush = DomainFlush { unit: self, domain };
        match &domain.table {
            DomainTable::Second(t) => t.unmap_pruning_flushed(iova, len, owned, &flush),
            DomainTable::First(t) => t.unmap_pruning_flushed(iova, len, owned, &flush),
            DomainTable::Shared { .. } => Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => Err(NESTED_MAP),
        }
    }

    fn prune_tables(
        &self,
        domain: &VtdDomain<H>,
        points: &[(Iova, Range<u64>)],
    ) -> Result<usize, UnitError> {
        let mut gather = Gather::new();
        let freed = match &domain.table {
            DomainTable::Second(t) => t.prune(points, &mut gather)?,
            DomainTable::First(t) => t.prune(points, &mut gather)?,
            DomainTable::Shared { .. } => return Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        };
        self.flush_deferred(domain, gather)?;
        Ok(freed)
    }

    fn unmap_deferred(
        &self,
        domain: &VtdDomain<H>,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        match &domain.table {
            DomainTable::Second(t) => Ok(t.unmap(iova, len, gather)?),
            DomainTable::First(t) => Ok(t.unmap(iova, len, gather)?),
            DomainTable::Shared { .. } => Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => Err(NESTED_MAP),
        }
    }

    fn flush_deferred(&self, domain: &VtdDomain<H>, gather: Gather) -> Result<(), UnitError> {
        let flush = DomainFlush { unit: self, domain };
        match &domain.table {
            DomainTable::Second(t) => t.flush_gather(gather, &flush),
            DomainTable::First(t) => t.flush_gather(gather, &flush),
            DomainTable::Shared { .. } => Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => Err(NESTED_MAP),
        }
    }

    fn reclaim_tables(&self, domain: &mut VtdDomain<H>) -> Result<usize, UnitError> {
        let mut gather = Gather::new();
        let freed = match &mut domain.table {
            DomainTable::Second(t) => t.reclaim(&mut gather)?,
            DomainTable::First(t) => t.reclaim(&mut gather)?,
            DomainTable::Shared { .. } => return Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        };
        self.flush_deferred(domain, gather)?;
        Ok(freed)
    }

    fn set_ats(&self, device: DeviceId, ats: Option<iommu::unit::Ats>) -> Result<(), UnitError> {
        self.set_device_ats(device, ats)
    }

    fn drain_faults(&self, sink: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        self.drain_pending(sink)
    }
}

/// A queue's memory in frames from `hal`, and those frames: the unit keeps its queue for its
/// whole life; a failed bring-up gives the frames back (`bringup`).
#[cfg(not(loom))]
fn queue_memory<'u, H: Hal>(
    hal: &H,
    size: QueueSize,
    width: DescriptorWidth,
) -> Result<([(PhysAddr, FrameSize); 2], QueueMemory<'u>), UnitError> {
    let frames = QueueFrames::allocate(hal, size, width).map_err(|_| UnitError::OutOfMemory)?;
    let parts = frames.frames();
    // SAFETY: the frames are freed only by a failed bring-up, with queued invalidation off and
    // the queue on them dropped first; otherwise the unit keeps `hal` (the HAL itself, or a
    // handle that keeps it alive) for as long as the queue, which is lent out only for a
    // borrow of the unit.
    Ok((parts, unsafe { frames.into_memory() }))
}

/// Under loom only the queue's protocol is modelled (`qi::loom_tests`, on simulated memory):
/// no unit is brought up, and HAL frames cannot hold loom atomics.
#[cfg(loom)]
fn queue_memory<'u, H: Hal>(
    _hal: &H,
    _size: QueueSize,
    _width: DescriptorWidth,
) -> Result<([(PhysAddr, FrameSize); 2], QueueMemory<'u>), UnitError> {
    Err(UnitError::OutOfMemory)
}

pub(super) fn clean<H: Hal>(hal: &H, coherency: Coherency, frame: PhysAddr, len: usize) {
    if coherency == Coherency::NonCoherent {
        hal.clean_to_poc(hal.phys_to_virt(frame), len);
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

#[cfg(all(test, not(loom)))]
mod tests;
