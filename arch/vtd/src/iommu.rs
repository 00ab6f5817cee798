//! One VT-d remapping unit brought up and driven: [`VtdUnit`] takes the unit over, owns its root,
//! context and PASID tables and its invalidation queue, and implements the core's
//! [`TranslationUnit`] with domains whose tables come from the core's page-table engine.
//!
//! Bring-up order (VT-d spec 10.4.4, 6.5, 7.3): translation off, root table set (SRTP), queued
//! invalidation on (or register-based invalidation when ECAP.QI is clear), global context-cache
//! and IOTLB invalidation, faults cleared and masked (polled through [`TranslationUnit::drain_faults`]),
//! translation on. Every handshake is a bounded poll with a typed timeout.
//!
//! Structure changes (root/context/PASID entries) are serialised by one lock: they happen at
//! attach time only. Map and unmap take no lock (the engine is lock-free and so is the queue).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, Gather, PageTable, Prot, VtdSecondStage, VtdSecondStageConfig, X86FirstStage,
    X86FirstStageConfig,
};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultRecord, Forwarded, GuestEntry, HardwareInfo,
    RawRegisters, Stage, TranslationUnit, UnitError,
};

use crate::caps::Agaw;
use crate::descriptor::{
    plan_flush, ContextCacheScope, Descriptor, Drain, FlushLimits, FunctionMask, IotlbScope,
    IovaRange, PasidCacheScope, PasidIotlbScope,
};
use crate::fault::{Classify, RawFault};
use crate::pasid::{
    FirstStage, FirstStagePaging, Pasid, PasidDirEntry, PasidDirectorySize, PasidEntry,
    PassThrough, SecondStage,
};
use crate::qi::{InvalidationQueue, QiError, QiMmio, QueueConfig, QueueMemory, QueueSize};
use crate::register_invalidation::{invalidate_context_cache, invalidate_iotlb};
use crate::registers::{Readable, Writeable, FSTS, GCMD, GSTS, RTADDR};
use crate::root_table::{
    scalable_context_slot, ContextEntry, ContextHalf, DomainId, EntryError, RootEntry,
    ScalableContext, ScalableContextEntry, ScalableRootEntry, SourceId,
};
use crate::unit::{UnitInfo, UnitRegisters};

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

/// A paging domain: its tag on this unit and its table.
pub struct VtdDomain<H: Hal> {
    id: DomainId,
    pub(crate) table: DomainTable<H>,
}

pub(crate) enum DomainTable<H: Hal> {
    Second(PageTable<VtdSecondStage, H>),
    First(PageTable<X86FirstStage, H>),
    /// Built from a guest's PASID entry over a vIOMMU's nest parent (`crate::viommu`).
    Nested(crate::viommu::NestedTable),
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
            DomainTable::First(_) => Stage::First,
        }
    }

    /// The table root the context or PASID entry points at.
    pub fn root(&self) -> PhysAddr {
        match &self.table {
            DomainTable::Second(t) => t.root(),
            DomainTable::First(t) => t.root(),
            DomainTable::Nested(n) => n.root(),
        }
    }
}

/// A brought-up remapping unit.
pub struct VtdUnit<'u, H: Hal + Clone> {
    regs: &'u UnitRegisters,
    pub(crate) hal: H,
    info: UnitInfo,
    mode: Mode,
    /// Host address width (DMAR HAW + 1): the output size of every table.
    output_width: u32,
    /// The deepest second-stage table the unit supports: the AW of pass-through entries.
    max_agaw: Agaw,
    coherency: Coherency,
    root: PhysAddr,
    qi: Option<InvalidationQueue<'u, QiMmio<'u>>>,
    /// Serialises changes of root, context and PASID entries and their invalidations.
    tables: spin::Mutex<()>,
    /// Next domain id to hand out; ids are not reused (a plain counter, orders nothing).
    next_domain: AtomicU32,
    /// The id pass-through entries are tagged with, taken at bring-up.
    identity_id: DomainId,
    /// Invalidation descriptors issued through registers (no queue), for statistics.
    register_invalidations: AtomicU64,
    /// Faults read from the hardware and not yet handed to a drain; one reader at a time, so
    /// a record is reported once. Taken after `tables` when both are held.
    faults: spin::Mutex<Pending>,
    /// Nest parents in use by vIOMMUs (`crate::viommu`).
    pub(crate) nest_parents: crate::viommu::NestParents,
}

/// Faults collected from the recording registers before a drain asked for them: at attach
/// time, a device's faults are read while its table is still attached, the only time a
/// second-stage fault (same code for not present and read-only) can be classified.
struct Pending {
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
                    .map_err(|_| UnitError::Hardware("invalidation queue memory unusable"))?;
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

        let next_domain = if cap.caching_mode() { 1 } else { 0 };
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
            next_domain: AtomicU32::new(next_domain + 1),
            identity_id: DomainId::new(next_domain as u16),
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
    fn flush_write_buffer(&self) -> Result<(), UnitError> {
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

    pub fn info(&self) -> UnitInfo {
        self.info
    }

    pub fn mode(&self) -> Mode {
        self.mode
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

    fn drain(&self) -> Drain {
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
                _ => UnitError::Hardware("register invalidation refused"),
            })?;
        }
        Ok(())
    }

    /// Invalidates the translations of `domain` for `range` (page-selective with address masks,
    /// or domain-selective past [`FLUSH_THRESHOLD`]), waiting for completion.
    fn flush_range(
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
        match domain.table {
            // A nested domain on the parent alone shares the parent's table and tag.
            DomainTable::Second(_) | DomainTable::Nested(_) => {
                for d in plan.iotlb_descriptors(domain.id, self.drain(), leaf_only) {
                    batch.push(d);
                }
            }
            DomainTable::First(_) => {
                for d in plan.pasid_iotlb_descriptors(domain.id, Pasid::ZERO, leaf_only) {
                    batch.push(d);
                }
            }
        }
        if batch.overflowed {
            // More blocks than fit in one batch cannot happen below the threshold; be safe.
            batch = Batch::new();
            batch.push(match domain.table {
                DomainTable::Second(_) | DomainTable::Nested(_) => Descriptor::Iotlb {
                    scope: IotlbScope::Domain(domain.id),
                    drain: self.drain(),
                },
                DomainTable::First(_) => Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                    domain: domain.id,
                    pasid: Pasid::ZERO,
                }),
            });
        }
        self.invalidate(batch.iter())
    }

    // ---- table memory -------------------------------------------------------------------

    fn alloc_table(&self) -> Result<PhysAddr, UnitError> {
        self.hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)
    }

    /// The 64-bit word `index` of the 4 KiB table at `table`.
    fn word(&self, table: PhysAddr, index: usize) -> &AtomicU64 {
        let p: NonNull<u8> = self.hal.phys_to_virt(table);
        // SAFETY: every table this unit reads or writes through here is a 4 KiB HAL frame it
        // allocated and never frees while the unit lives (root, context, PASID tables), or a
        // domain's table frame read by `mapped` (see there); `index` < 512 at every caller, so
        // the word is inside the frame, 8-byte aligned; the HAL allows 64-bit atomic access.
        unsafe { &*p.as_ptr().cast::<AtomicU64>().add(index % 512) }
    }

    fn write_words(&self, table: PhysAddr, first: usize, words: &[u64]) {
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

    fn read_words<const N: usize>(&self, table: PhysAddr, first: usize) -> [u64; N] {
        core::array::from_fn(|i| self.word(table, first + i).load(Ordering::Acquire))
    }

    /// Clears the present bit of an entry (word `first`) and makes that visible.
    fn clear_present(&self, table: PhysAddr, first: usize) {
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
        let Some(ctx_table) = self.scalable_context_table(sid.bus(), sid.devfn(), create)? else {
            return Ok(None);
        };
        let (_, slot) = scalable_context_slot(sid.devfn());
        let ctx = ScalableContextEntry::decode(self.read_words::<4>(ctx_table, 4 * slot));
        if let Some(fields) = ctx.fields() {
            let dir = self.read_words::<1>(fields.pasid_directory, 0)[0];
            return Ok(PasidDirEntry::decode(dir).table());
        }
        if !create {
            return Ok(None);
        }
        let dir = self.alloc_table()?;
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let dir_entry = PasidDirEntry::present(table).map_err(entry_error)?;
        self.write_words(dir, Pasid::ZERO.directory_index(), &[dir_entry.encode()]);
        clean(&self.hal, self.coherency, dir, 4096);
        let size = PasidDirectorySize::from_pdts(0).unwrap_or(PasidDirectorySize::ONE_PAGE);
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

    fn allocate_domain_id(&self) -> Result<DomainId, UnitError> {
        let id = self.next_domain.fetch_add(1, Ordering::Relaxed);
        if id >= self.info.cap.domain_ids() || id > u32::from(u16::MAX) {
            return Err(UnitError::OutOfIds);
        }
        Ok(DomainId::new(id as u16))
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
                DomainTable::First(_) | DomainTable::Nested(_) => {
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
                DomainTable::Nested(n) => n.pasid_entry(d.id, cap, ecap).map_err(entry_error)?,
            },
        };
        let Some(table) = self.rid_pasid_table(sid, new.is_present())? else {
            return Ok(());
        };
        let slot = 8 * Pasid::ZERO.table_index();
        let old = PasidEntry::decode(self.read_words::<8>(table, slot));
        if old.is_present() {
            // 512-bit entries are replaced through not-present (6.5.3.3 / 9.6).
            self.clear_present(table, slot);
            let did = old.domain_id();
            self.invalidate(&[
                Descriptor::PasidCache(PasidCacheScope::Pasid {
                    domain: did,
                    pasid: Pasid::ZERO,
                }),
                Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                    domain: did,
                    pasid: Pasid::ZERO,
                }),
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
        // Not-present → present: the PASID cache may hold the not-present entry (CM) — flush
        // it for this PASID so the unit reads the new one; and the context cache, as above.
        self.invalidate(&[
            Descriptor::PasidCache(PasidCacheScope::Pasid {
                domain: new.domain_id(),
                pasid: Pasid::ZERO,
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
            raw: RawRegisters::Vtd {
                version: 0,
                cap: 0,
                ecap: 0,
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
        // Faults the device caused so far are classified against the table they happened in.
        self.collect_faults(&mut self.faults.lock());
        match self.mode {
            Mode::Legacy => self.attach_legacy(sid, to),
            Mode::Scalable => self.attach_scalable(sid, to),
        }
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
        let mut gather = Gather::new();
        let bytes = match &domain.table {
            DomainTable::Second(t) => t.unmap(iova, len, &mut gather)?,
            DomainTable::First(t) => t.unmap(iova, len, &mut gather)?,
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        };
        if let Some((start, len)) = gather.range() {
            // On failure the gather is dropped: its frames leak rather than be freed while the
            // unit may still hold cached pointers to them.
            self.flush_range(domain, start, len, !gather.tables_removed())?;
        }
        // SAFETY: the IOTLB and paging-structure caches for the gathered range were invalidated
        // and the unit reported completion (the batch's wait descriptor, or the register
        // handshakes); the caller's contract (no overlapping operation running) is the
        // `TranslationUnit::unmap` one; the frames are from this domain's table, whose HAL is
        // a clone of `self.hal` handing out from the same allocator.
        unsafe { gather.complete(&self.hal) };
        Ok(bytes)
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

fn entry_error(e: EntryError) -> UnitError {
    match e {
        EntryError::Unsupported { feature } => UnitError::Unsupported(feature),
        EntryError::DomainIdOutOfRange { .. } | EntryError::DomainIdZeroInCachingMode => {
            UnitError::OutOfIds
        }
        _ => UnitError::Hardware("table entry cannot be encoded"),
    }
}

fn qi_error(e: QiError) -> UnitError {
    match e {
        QiError::Timeout { .. } | QiError::QueueFull => UnitError::Timeout(iommu::poll::Timeout {
            waiting_for: "invalidation queue",
        }),
        QiError::InvalidDescriptor { .. } => {
            UnitError::Hardware("invalidation descriptor rejected (IQE)")
        }
        QiError::DeviceTlbTimeout { .. } => {
            UnitError::Hardware("device-TLB invalidation timed out")
        }
        QiError::OutOfMemory => UnitError::OutOfMemory,
        _ => UnitError::Hardware("invalidation queue error"),
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
mod tests {
    use super::*;
    use iommu::hal::host::HostHal;
    use std::boxed::Box;

    /// A register page in host memory with QEMU's VER/CAP/ECAP: nothing answers a command.
    #[repr(C, align(4096))]
    struct Page([u64; 512]);

    #[test]
    fn a_unit_that_does_not_answer_gives_a_typed_timeout() {
        let mut page = Box::new(Page([0; 512]));
        page.0[0] = 0x10;
        page.0[1] = 0x00d2_008c_222f_0606;
        page.0[2] = 0x0000_0000_00f0_0f4a;
        let base = NonNull::from(Box::leak(page)).cast::<u8>();
        // SAFETY: `base` is a live, aligned 4 KiB page, freed below after the last use.
        let regs = unsafe { UnitRegisters::new(base, 4096) }.unwrap();
        let hal = HostHal::new();
        let r = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, None);
        assert_eq!(
            r.err(),
            Some(UnitError::Timeout(iommu::poll::Timeout {
                waiting_for: "GSTS.RTPS"
            }))
        );
        // Scalable mode without a queue is refused before any register is touched.
        let r = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, None);
        assert!(matches!(r.err(), Some(UnitError::Unsupported(_))));
        // SAFETY: `base` came from `Box::leak` of a `Page` and is freed once.
        drop(unsafe { Box::from_raw(base.cast::<Page>().as_ptr()) });
    }

    #[test]
    fn a_batch_keeps_what_fits() {
        let mut b = Batch::new();
        for _ in 0..FLUSH_THRESHOLD + 3 {
            b.push(Descriptor::ContextCache(ContextCacheScope::Global));
        }
        assert_eq!(b.iter().len(), FLUSH_THRESHOLD + 2);
        assert!(b.overflowed);
        assert_eq!(agaw_of(2), Ok(Agaw::Level4));
        assert!(agaw_of(7).is_err());
    }
}
