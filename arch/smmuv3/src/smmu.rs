//! One live SMMUv3: the reset sequence of IHI 0070 (GBPA abort, queues, stream table, global
//! invalidation, SMMUEN) and the core's [`TranslationUnit`] over it.
//!
//! Paging domains hold an Arm VMSAv8-64 table from the core's engine: a stage-1 domain owns a
//! single-CD table (ASID-tagged), a stage-2 domain its VMID; a shared domain's CD points at the
//! embedder's CPU table under the CPU's ASID. Attach writes STEs in the safe order of
//! [`StreamTable::install`]; unmap invalidates with range commands where IDR3.RIL allows, one
//! CMD_SYNC per batch, before the gathered tables are freed.
//!
//! The unit records what every configured stream uses (under the stream-table lock), so a domain
//! still pointed at by an STE or a CD cannot be destroyed, and a destroyed domain's ASID/VMID is
//! handed out again only after a TLBI of everything tagged with it has completed.

extern crate alloc;

use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt;
use core::ops::Range;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, FlushRange, Gather, Granule as PtGranule, PageTable, Prot, VmsaConfig, VmsaStage1,
    VmsaStage2,
};
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, Drained, FaultKind, FaultRecord, Forwarded, GuestEntry,
    HardwareError, HardwareInfo, RawRegisters, Stage, TranslationUnit, UnitError,
};

use crate::attributes::Granule;
use crate::cmdq::{
    queue_base_register, CmdqError, CmdqRegisters, CommandErrorCode, CommandQueue, DmaQueueMemory,
    MmioCmdqRegisters, ENTRY_BYTES,
};
use crate::command::{
    plan_invalidation, Command, InvalidationPolicy, InvalidationScope, RawCommand,
};
use crate::context_descriptor::{CdTable, CdTableError, CdTableGeometry, ContextDescriptor};
use crate::eventq::{EventQueue, EventType, MmioEventqRegisters, EVENT_BYTES};
use crate::idr::{Features, IdRegisters, OutputAddressSize, Stages};
use crate::registers::{
    ReadWriteable, Readable, SmmuRegisters, Writeable, CR0, CR1, CR2, GBPA, GERROR, IRQ_CTRL,
};
use crate::stream_table::{
    Stage2, SteError, StreamTable, StreamTableEntry, StreamTableError, StreamTableGeometry,
};
use crate::substream::SubstreamTable;

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
            SmmuError::Command(c) => UnitError::Hardware(match c {
                CmdqError::Command(f) if f.code == CommandErrorCode::Illegal => {
                    HardwareError::CommandRejected
                }
                CmdqError::Command(f) if f.code == CommandErrorCode::AtcInvalidationSync => {
                    HardwareError::DeviceTlbTimeout
                }
                _ => HardwareError::Queue,
            }),
            SmmuError::StreamTable(_) | SmmuError::CdTable(_) | SmmuError::Entry(_) => {
                UnitError::Hardware(HardwareError::EntryEncoding)
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

/// Names a domain in the unit's attachment records: unique for the unit's life (a 64-bit
/// counter does not wrap).
pub(crate) type DomainId = u64;

/// A domain of an [`SmmuUnit`].
pub struct SmmuDomain<H: Hal> {
    pub(crate) id: DomainId,
    pub(crate) kind: DomainKind<H>,
}

pub(crate) enum DomainKind<H: Hal> {
    Stage1 {
        table: PageTable<VmsaStage1, H>,
        /// The one CD (SSID 0): written whole before any STE points at it, never changed.
        cds: CdTable<H>,
        /// What `cds` holds, copied into a stream's own CD table when the domain is attached
        /// to a PASID.
        cd: ContextDescriptor,
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
    /// A CD pointing at the embedder's CPU table (shared virtual addressing): the unit owns the
    /// CD table only; the ASID is the CPU's, reserved in the unit's ASID pool while the domain
    /// lives.
    Shared {
        cds: CdTable<H>,
        cd: ContextDescriptor,
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
            DomainKind::Shared { cd, .. } => {
                write!(
                    f,
                    "SmmuDomain(shared CPU table, ASID {}, root {:?})",
                    cd.asid, cd.ttb0
                )
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
            DomainKind::Shared { cd, .. } => cd.asid,
        }
    }

    /// The size of the page or block mapping `iova`, if mapped (to see which leaf size the
    /// engine chose).
    pub fn leaf_size(&self, iova: Iova) -> Option<u64> {
        let walk = match &self.kind {
            DomainKind::Stage1 { table, .. } => table.walk(iova),
            DomainKind::Stage2 { table, .. } => table.walk(iova),
            DomainKind::Nested { .. } => return None,
            DomainKind::Shared { .. } => return None,
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
            DomainKind::Shared { .. } => None,
        }
    }

    /// The context descriptor table of a stage-1 domain (an IPA under nesting).
    pub fn context_descriptor_table(&self) -> Option<PhysAddr> {
        match &self.kind {
            DomainKind::Stage1 { cds, .. } | DomainKind::Shared { cds, .. } => {
                Some(cds.stage1().cd_table)
            }
            DomainKind::Stage2 { .. } | DomainKind::Nested { .. } => None,
        }
    }

    /// The stage of this domain's table (a nested domain's guest table is stage 1).
    pub fn stage(&self) -> Stage {
        match self.kind {
            DomainKind::Stage1 { .. } | DomainKind::Shared { .. } | DomainKind::Nested { .. } => {
                Stage::First
            }
            DomainKind::Stage2 { .. } => Stage::Second,
        }
    }

    /// The stage-1 CD of a stage-1 or shared domain that may be copied into a stream's own CD
    /// table: not one nested in a stage-2 parent (its TLB entries carry the parent's VMID).
    fn substream_cd(&self) -> Result<ContextDescriptor, UnitError> {
        match &self.kind {
            DomainKind::Stage1 { cd, vmid, .. } => {
                if vmid.load(Ordering::Relaxed) != 0 {
                    return Err(UnitError::Unsupported(
                        "PASID attach of a domain nested in a stage-2 parent",
                    ));
                }
                Ok(*cd)
            }
            DomainKind::Shared { cd, .. } => Ok(*cd),
            DomainKind::Stage2 { .. } | DomainKind::Nested { .. } => Err(UnitError::Unsupported(
                "substreams translate with stage-1 domains only",
            )),
        }
    }
}

/// A pool of ASIDs or VMIDs `1..limit`: tags given back are handed out again (lowest first)
/// once the caller has invalidated everything tagged with them. 0 is never handed out: VMID 0
/// is the S2VMID of stage-1-only streams.
#[derive(Debug)]
struct TagPool {
    /// Tags below `fresh` have been handed out at least once.
    fresh: u32,
    limit: u32,
    /// Handed out once and given back since.
    free: BTreeSet<u16>,
    /// In use without the pool having handed them out (the ASIDs of shared CPU tables).
    borrowed: BTreeSet<u16>,
}

impl TagPool {
    /// Tags `1..2^bits`, or `1..=window` if smaller.
    fn new(bits: u8, window: Option<u16>) -> Self {
        let hw = 1u32 << bits.min(16);
        let limit = window.map_or(hw, |w| hw.min(u32::from(w) + 1));
        Self {
            fresh: 1,
            limit,
            free: BTreeSet::new(),
            borrowed: BTreeSet::new(),
        }
    }

    fn alloc(&mut self) -> Option<u16> {
        if let Some(tag) = self.free.pop_first() {
            return Some(tag);
        }
        while self.fresh < self.limit {
            let tag = u16::try_from(self.fresh).ok()?;
            self.fresh += 1;
            if !self.borrowed.contains(&tag) {
                return Some(tag);
            }
        }
        None
    }

    fn in_use(&self, tag: u16) -> bool {
        self.borrowed.contains(&tag)
            || (tag != 0 && u32::from(tag) < self.fresh && !self.free.contains(&tag))
    }

    /// Takes `tag` out of circulation (a CPU table's ASID); false if it is in use.
    fn borrow(&mut self, tag: u16) -> bool {
        if self.in_use(tag) {
            return false;
        }
        self.free.remove(&tag);
        self.borrowed.insert(tag);
        true
    }

    /// Gives back a tag from [`alloc`](Self::alloc) or [`borrow`](Self::borrow); every TLB
    /// entry tagged with it must have been invalidated.
    fn release(&mut self, tag: u16) {
        self.borrowed.remove(&tag);
        // A borrowed tag beyond `fresh` is simply handed out later by `alloc`.
        if tag != 0 && u32::from(tag) < self.fresh {
            self.free.insert(tag);
        }
    }
}

#[derive(Debug)]
struct Tags {
    asids: TagPool,
    vmids: TagPool,
}

/// What a stream's STE uses, as far as domain lifetimes are concerned.
enum StreamUse<H: Hal> {
    /// STE.Config = bypass.
    Bypass,
    /// The STE points at these domains' tables: one, or a stage-1 domain and its stage-2
    /// parent. `cd` is the CD of a single stage-1 or shared domain (what a conversion to
    /// substreams keeps as the default).
    Domains {
        ids: [Option<DomainId>; 2],
        cd: Option<ContextDescriptor>,
    },
    /// The stream has its own CD table: `default` is CD 0's domain (`None`: untagged requests
    /// bypass stage 1), `pasids` the domain of every other valid CD.
    Substreams {
        table: SubstreamTable<H>,
        default: Option<DomainId>,
        pasids: BTreeMap<u32, DomainId>,
    },
}

impl<H: Hal> StreamUse<H> {
    fn for_each_domain(&self, mut f: impl FnMut(DomainId)) {
        match self {
            Self::Bypass => {}
            Self::Domains { ids, .. } => ids.iter().flatten().for_each(|&id| f(id)),
            Self::Substreams {
                default, pasids, ..
            } => {
                default.iter().for_each(|&id| f(id));
                pasids.values().for_each(|&id| f(id));
            }
        }
    }
}

/// The stream table and the records of what uses which domain, under one lock.
struct Streams<H: Hal> {
    table: StreamTable<H>,
    /// Streams whose STE the unit configured; any other stream is blocked or aborted.
    uses: BTreeMap<u32, StreamUse<H>>,
    /// How many STEs and CDs point at each domain (absent: none).
    users: BTreeMap<DomainId, u32>,
}

fn retain(users: &mut BTreeMap<DomainId, u32>, id: DomainId) {
    *users.entry(id).or_insert(0) += 1;
}

fn release(users: &mut BTreeMap<DomainId, u32>, id: DomainId) {
    if let Some(n) = users.get_mut(&id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            users.remove(&id);
        }
    }
}

impl<H: Hal> Streams<H> {
    /// Records that `sid` now uses `new`; returns what it used before, whose tables the caller
    /// frees once the STE no longer points at them.
    fn set_use(&mut self, sid: u32, new: Option<StreamUse<H>>) -> Option<StreamUse<H>> {
        if let Some(u) = &new {
            u.for_each_domain(|id| retain(&mut self.users, id));
        }
        let old = match new {
            Some(u) => self.uses.insert(sid, u),
            None => self.uses.remove(&sid),
        };
        if let Some(u) = &old {
            u.for_each_domain(|id| release(&mut self.users, id));
        }
        old
    }
}

/// What the attachment records drive on the hardware: STE writes (each with its CMD_CFGI_STE +
/// CMD_SYNC) and CD invalidations (CMD_CFGI_CD + CMD_SYNC), completed before returning. The unit
/// issues them through its command queue; host tests through a simulated SMMU.
pub(crate) trait StreamHardware<H: Hal> {
    fn install_ste(
        &self,
        table: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), SmmuError>;
    fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError>;
}

impl<H: Hal + Clone> StreamHardware<H> for SmmuUnit<H> {
    fn install_ste(
        &self,
        table: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), SmmuError> {
        self.install_on(table, sid, ste)
    }

    fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError> {
        self.cmdq
            .submit_and_sync(&[Command::CfgiCd { sid, ssid, leaf }.encode()?])
    }
}

impl<H: Hal + Clone> Streams<H> {
    /// Points SubstreamID `pasid` (≥ 1, checked by the caller against IDR1.SSIDSIZE) of `sid`
    /// at `target`'s CD, or invalidates it with `None`. A stream without a CD table of its own
    /// gets one first, whose CD 0 keeps what untagged requests used (`blocking` for a stream
    /// never attached). Returns the stream's previous use for the caller to free once the lock
    /// is dropped.
    #[allow(clippy::too_many_arguments)]
    fn attach_pasid(
        &mut self,
        hw: &impl StreamHardware<H>,
        hal: &H,
        features: &Features,
        blocking: Option<(DomainId, ContextDescriptor)>,
        sid: u32,
        pasid: u32,
        target: Option<(DomainId, ContextDescriptor)>,
    ) -> Result<Option<StreamUse<H>>, UnitError> {
        let Self {
            table: strtab,
            uses,
            users,
        } = self;
        if let Some(StreamUse::Substreams { table, pasids, .. }) = uses.get_mut(&sid) {
            table
                .set(pasid, target.as_ref().map(|(_, cd)| cd), |ssid, leaf| {
                    hw.invalidate_cd(sid, ssid, leaf)
                })
                .map_err(SmmuError::CdTable)?;
            let old = match target {
                Some((id, _)) => {
                    retain(users, id);
                    pasids.insert(pasid, id)
                }
                None => pasids.remove(&pasid),
            };
            if let Some(id) = old {
                release(users, id);
            }
            return Ok(None);
        }
        let Some((id, cd)) = target else {
            // Without substreams a request with a SubstreamID is already refused (and
            // reported as C_BAD_SUBSTREAMID).
            return Ok(None);
        };
        let default = match uses.get(&sid) {
            None => Some(blocking.ok_or(UnitError::Unsupported("a blocking domain"))?),
            Some(StreamUse::Bypass) => None,
            Some(StreamUse::Domains {
                ids: [Some(d), None],
                cd: Some(cd),
            }) => Some((*d, *cd)),
            Some(_) => {
                return Err(UnitError::Unsupported(
                    "PASIDs on a stream attached to a stage-2 or nested domain",
                ))
            }
        };
        let mut table = SubstreamTable::new(hal.clone(), features, default.as_ref().map(|d| &d.1))
            .map_err(SmmuError::CdTable)?;
        // No STE points at the new table yet: nothing to invalidate.
        let ste = table
            .set(pasid, Some(&cd), |_, _| Ok(()))
            .map_err(SmmuError::CdTable)
            .map(|_| StreamTableEntry::stage1(table.stage1()));
        if let Err(e) = ste.and_then(|ste| hw.install_ste(strtab, sid, &ste)) {
            // The STE may point at the table if the failure came late: leak it rather than
            // free memory the SMMU may read.
            return Err(e.into());
        }
        let mut pasids = BTreeMap::new();
        pasids.insert(pasid, id);
        let new = StreamUse::Substreams {
            table,
            default: default.map(|d| d.0),
            pasids,
        };
        Ok(self.set_use(sid, Some(new)))
    }

    /// What untagged requests of `sid`, a stream with its own CD table, use: `target`'s CD as
    /// CD 0, or bypass with `None`. The PASIDs stay.
    fn set_default_substream(
        &mut self,
        hw: &impl StreamHardware<H>,
        sid: u32,
        target: Option<(DomainId, ContextDescriptor)>,
    ) -> Result<(), UnitError> {
        let Self {
            table: strtab,
            uses,
            users,
        } = self;
        let Some(StreamUse::Substreams { table, default, .. }) = uses.get_mut(&sid) else {
            return Err(UnitError::Hardware(HardwareError::RecordsOutOfStep));
        };
        let invalidate = |ssid: u32, leaf: bool| hw.invalidate_cd(sid, ssid, leaf);
        let changed = table
            .set_default(target.as_ref().map(|(_, cd)| cd), invalidate)
            .map_err(SmmuError::CdTable)?;
        if changed {
            hw.install_ste(strtab, sid, &StreamTableEntry::stage1(table.stage1()))?;
            table
                .retire_default_cd(invalidate)
                .map_err(SmmuError::CdTable)?;
        }
        let new = target.map(|(id, _)| id);
        if let Some(id) = new {
            retain(users, id);
        }
        if let Some(id) = core::mem::replace(default, new) {
            release(users, id);
        }
        Ok(())
    }
}

/// Frees what a stream used before, once its STE points elsewhere.
///
/// # Safety
/// The STE of the stream that used `old` was rewritten and its CMD_CFGI_STE + CMD_SYNC completed.
unsafe fn free_old_use<H: Hal>(old: Option<StreamUse<H>>) {
    if let Some(StreamUse::Substreams { table, .. }) = old {
        // SAFETY: per this function's contract, no STE points at the table.
        unsafe { table.free() }
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
    /// writer per STE, and level-2 tables are created under it), with the records of which
    /// domains each stream uses.
    strtab: spin::Mutex<Streams<H>>,
    /// ASIDs and VMIDs. A tag goes back only after its domain's TLB entries were invalidated.
    tags: spin::Mutex<Tags>,
    /// The next [`DomainId`] (relaxed: uniqueness comes from the atomic increment alone).
    next_domain_id: AtomicU64,
    /// The identification registers as read at bring-up.
    id_regs: IdRegisters,
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
        let id_regs = unsafe { crate::unit::read_id_registers(regs) };
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
            strtab: spin::Mutex::new(Streams {
                table: strtab,
                uses: BTreeMap::new(),
                users: BTreeMap::new(),
            }),
            tags: spin::Mutex::new(Tags {
                asids: TagPool::new(features.asid_bits, config.tag_window),
                vmids: TagPool::new(features.vmid_bits, config.tag_window),
            }),
            next_domain_id: AtomicU64::new(1),
            id_regs,
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
        self.strtab.lock().table.geometry()
    }

    /// The eight words of `sid`'s STE as the SMMU reads them.
    pub fn stream_table_entry(&self, sid: u32) -> Result<[u64; 8], SmmuError> {
        self.strtab
            .lock()
            .table
            .entry(sid)
            .map_err(SmmuError::StreamTable)
    }

    /// How many STEs and CDs point at `domain` (for tests of the attachment records).
    pub fn domain_users(&self, domain: &SmmuDomain<H>) -> u32 {
        self.strtab
            .lock()
            .users
            .get(&domain.id)
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

    /// Installs `ste` for `sid` with no domain recorded for it (raw STEs of tests and of
    /// callers that track their own configuration); the domains it used before are released.
    pub(crate) fn install(&self, sid: u32, ste: &StreamTableEntry) -> Result<(), SmmuError> {
        self.install_use(sid, ste, None)
    }

    /// Installs `ste` for `sid` and records that it uses `new`.
    fn install_use(
        &self,
        sid: u32,
        ste: &StreamTableEntry,
        new: Option<StreamUse<H>>,
    ) -> Result<(), SmmuError> {
        let mut streams = self.strtab.lock();
        self.install_on(&mut streams.table, sid, ste)?;
        let old = streams.set_use(sid, new);
        drop(streams);
        // SAFETY: `install_on` rewrote the STE and completed its CMD_CFGI_STE + CMD_SYNC.
        unsafe { free_old_use(old) };
        Ok(())
    }

    /// Writes `ste` for `sid` in the stream table (held locked by the caller).
    fn install_on(
        &self,
        strtab: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), SmmuError> {
        ste.check_features(&self.features)
            .map_err(SmmuError::Entry)?;
        let invalidate = |cmd: Command| self.cmdq.submit_and_sync(&[cmd.encode()?]);
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

    pub(crate) fn new_domain_id(&self) -> DomainId {
        self.next_domain_id.fetch_add(1, Ordering::Relaxed)
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
                let asid = self.tags.lock().asids.alloc().ok_or(UnitError::OutOfIds)?;
                let cds = ContextDescriptor::new(asid, table.root(), ia as u8, granule, ips, mair)
                    .and_then(|cd| cd.check_features(&self.features).map(|()| cd))
                    .map_err(SmmuError::Entry)
                    .and_then(|cd| Ok((cd, self.single_cd_table(&cd)?)));
                let (cd, cds) = match cds {
                    Ok(c) => c,
                    Err(e) => {
                        // Never used: no TLB entry can carry it.
                        self.tags.lock().asids.release(asid);
                        return Err(e.into());
                    }
                };
                Ok(SmmuDomain {
                    id: self.new_domain_id(),
                    kind: DomainKind::Stage1 {
                        table,
                        cds,
                        cd,
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
                let vmid = self.tags.lock().vmids.alloc().ok_or(UnitError::OutOfIds)?;
                let s2 = match Stage2::new(
                    vmid,
                    table.root(),
                    ias,
                    granule,
                    start_level,
                    output_size(ips),
                ) {
                    Ok(s2) => s2,
                    Err(e) => {
                        // Never used: no TLB entry can carry it.
                        self.tags.lock().vmids.release(vmid);
                        return Err(SmmuError::Entry(e).into());
                    }
                };
                Ok(SmmuDomain {
                    id: self.new_domain_id(),
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
            (DomainKind::Stage1 { cds, vmid, .. }, DomainKind::Stage2 { s2: s2_cfg, .. }) => {
                let s2 = s2_cfg;
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
        let uses = StreamUse::Domains {
            ids: [Some(s1.id), Some(s2.id)],
            cd: None,
        };
        Ok(self.install_use(device.0, &ste, Some(uses))?)
    }

    /// A one-CD table holding `cd`, not yet pointed at by any STE.
    fn single_cd_table(&self, cd: &ContextDescriptor) -> Result<CdTable<H>, SmmuError> {
        let mut cds = CdTable::new(
            self.hal.clone(),
            CdTableGeometry::SINGLE,
            self.features.coherent,
        )
        .map_err(SmmuError::CdTable)?;
        // No STE points at the table yet: nothing to invalidate.
        if let Err(e) = cds.install(0, Some(cd), |_, _| Ok(())) {
            // SAFETY: nothing points at the table.
            unsafe { cds.free() };
            return Err(SmmuError::CdTable(e));
        }
        Ok(cds)
    }

    fn ste_for(&self, domain: &SmmuDomain<H>) -> StreamTableEntry {
        match &domain.kind {
            DomainKind::Stage1 { cds, .. } | DomainKind::Shared { cds, .. } => {
                StreamTableEntry::stage1(cds.stage1())
            }
            DomainKind::Stage2 { s2, .. } => StreamTableEntry::stage2(*s2),
            DomainKind::Nested { ste, .. } => *ste,
        }
    }

    /// What a stream attached to `domain` alone uses.
    fn use_of(domain: &SmmuDomain<H>) -> StreamUse<H> {
        let cd = match &domain.kind {
            DomainKind::Stage1 { cd, .. } | DomainKind::Shared { cd, .. } => Some(*cd),
            DomainKind::Stage2 { .. } | DomainKind::Nested { .. } => None,
        };
        StreamUse::Domains {
            ids: [Some(domain.id), None],
            cd,
        }
    }

    /// The domain and CD that untagged requests of a stream with substreams use for `to`
    /// (`None`: bypass stage 1).
    fn default_substream(
        &self,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<Option<(DomainId, ContextDescriptor)>, UnitError> {
        match to {
            Attachment::Identity => Ok(None),
            Attachment::Blocking => match &self.blocking {
                Some(d) => Ok(Some((d.id, d.substream_cd()?))),
                None => Err(UnitError::Unsupported("a blocking domain")),
            },
            Attachment::Paging(d) => Ok(Some((d.id, d.substream_cd()?))),
        }
    }

    /// [`TranslationUnit::attach`] for a stream with its own CD table: changes what untagged
    /// requests use and keeps the PASIDs.
    fn attach_default_substream(
        &self,
        streams: &mut Streams<H>,
        sid: u32,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<(), UnitError> {
        let target = self.default_substream(to).map_err(|e| match e {
            UnitError::Unsupported("substreams translate with stage-1 domains only") => {
                UnitError::Unsupported(
                    "a stage-2 domain for a stream with PASIDs attached (detach them first)",
                )
            }
            e => e,
        })?;
        streams.set_default_substream(self, sid, target)
    }

    fn domain_granule(domain: &SmmuDomain<H>) -> Granule {
        let g = match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.format().granule(),
            DomainKind::Stage2 { table, .. } => table.format().granule(),
            DomainKind::Shared { .. } | DomainKind::Nested { .. } => return Granule::Size4K,
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
            // A shared domain's streams are stage-1-only: their S2VMID is 0.
            DomainKind::Shared { cd, .. } => InvalidationScope::Stage1 {
                vmid: 0,
                asid: cd.asid,
            },
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

/// What `map` and `unmap` of a shared domain say: the table is the embedder's.
const SHARED_MAP: UnitError = UnitError::Unsupported(
    "map/unmap of a shared CPU table (the embedder changes it and calls flush)",
);

/// What an SMMU with `f` (decoded from `raw`) can do, in the core's terms.
///
/// Input sizes are what [`SmmuUnit::new_domain`](TranslationUnit::new_domain) builds: stage 1
/// up to 48 bits (no 52-bit VAs), stage 2 up to the output size (IPA ≤ OAS, at most 48 bits).
/// Page sizes are each supported granule's page and its level-2 and (4K only) level-1 blocks.
pub fn hardware_info(f: &Features, raw: &IdRegisters) -> HardwareInfo {
    let oas = u32::from(f.oas.bits().unwrap_or(48));
    let g = f.granules;
    let mut page_sizes = 0u64;
    if g.size_4k {
        page_sizes |= 1 << 12 | 1 << 21 | 1 << 30;
    }
    if g.size_16k {
        page_sizes |= 1 << 14 | 1 << 25;
    }
    if g.size_64k {
        page_sizes |= 1 << 16 | 1 << 29;
    }
    let (s1, s2) = (f.stages.stage1(), f.stages.stage2());
    HardwareInfo {
        first_stage: s1,
        second_stage: s2,
        nesting: f.stages == Stages::Nested,
        // A bypass STE exists on every SMMUv3.
        identity: true,
        pasid_bits: f.ssid_bits,
        first_stage_ia_bits: if s1 { 48 } else { 0 },
        second_stage_ia_bits: if s2 { oas.min(48) as u8 } else { 0 },
        output_bits: oas as u8,
        page_sizes,
        coherent_walks: f.coherent,
        ats: f.ats,
        tags: if s2 {
            1 << f.vmid_bits.min(16)
        } else {
            1 << f.asid_bits.min(16)
        },
        raw: RawRegisters::Smmuv3 {
            idr: raw.idr,
            iidr: raw.iidr,
            aidr: raw.aidr,
        },
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
    /// latter is acknowledged here, through the same serialised GERRORN update as the command
    /// queue's CMDQ_ERR recovery ([`CmdqRegisters::acknowledge_gerror`]), so a drain and a
    /// recovery on two CPUs cannot undo each other's acknowledgement.
    ///
    /// [`CmdqRegisters::acknowledge_gerror`]: crate::cmdq::CmdqRegisters::acknowledge_gerror
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
        let abt = GERROR::EVENTQ_ABT_ERR::SET.value;
        // A cheap check first; the acknowledgement itself is the one serialised
        // read-modify-write of GERRORN, shared with the command queue's recovery.
        if (r.gerror.get() ^ r.gerrorn.get()) & abt != 0
            && self.cmdq.registers().acknowledge_gerror(abt) != 0
        {
            drained.overflow = true;
        }
        drained
    }
}

/// One domain's TLB invalidation on this SMMU, for the page-table engine's unmap.
struct DomainFlush<'a, H: Hal + Clone> {
    unit: &'a SmmuUnit<H>,
    domain: &'a SmmuDomain<H>,
}

// SAFETY: `invalidate` returns `Ok` only after the batch's CMD_SYNC completed, the TLBIs carrying
// `Leaf` = 0 (walk caches too) unless `leaf_only`; this SMMU is the only walker of the domain's
// table (domains are not shared across units).
unsafe impl<H: Hal + Clone> FlushRange for DomainFlush<'_, H> {
    type Error = UnitError;

    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> Result<(), UnitError> {
        let start = iova.as_u64();
        self.unit
            .invalidate(self.domain, start..start.saturating_add(len), leaf_only)
            .map_err(UnitError::from)
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
        if !self.features.stages.stage1() {
            return Err(UnitError::Unsupported("stage 1 translation"));
        }
        if !self.features.granules.size_4k {
            return Err(UnitError::Unsupported("the 4 KiB granule of CPU tables"));
        }
        // QEMU (and an SMMU without IDR3.STT) accepts T0SZ 16..=39 only.
        let ia_bits = u8::try_from(cpu.ia_bits)
            .ok()
            .filter(|b| (25..=48).contains(b))
            .ok_or(UnitError::Unsupported(
                "CPU table input width outside 25..=48 bits (T0SZ 16..=39)",
            ))?;
        let root = cpu.root.as_u64();
        if root & 0xfff != 0 || root >> self.oas_bits != 0 {
            return Err(UnitError::Unsupported(
                "CPU table root not 4 KiB aligned or beyond the output address size",
            ));
        }
        let mut cd = ContextDescriptor::new(
            cpu.asid,
            cpu.root,
            ia_bits,
            Granule::Size4K,
            self.features.oas,
            cpu.mair,
        )
        .map_err(SmmuError::Entry)?;
        // The ASID is the CPU's: the common set (ASET = 0), where broadcast TLB maintenance
        // would apply if CR2.PTM allowed it. With PTM set the embedder calls `flush`.
        cd.private_asid_set = false;
        cd.check_features(&self.features)
            .map_err(SmmuError::Entry)?;
        // The CPU's ASID must not tag any other domain of this unit.
        if !self.tags.lock().asids.borrow(cpu.asid) {
            return Err(UnitError::OutOfIds);
        }
        match self.single_cd_table(&cd) {
            Ok(cds) => Ok(SmmuDomain {
                id: self.new_domain_id(),
                kind: DomainKind::Shared { cds, cd },
            }),
            Err(e) => {
                self.tags.lock().asids.release(cpu.asid);
                Err(e.into())
            }
        }
    }

    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        let is_blocking = self.blocking.as_ref().is_some_and(|b| b.id == domain.id);
        // Attaches are serialised by this lock; none can start for `domain` after the check,
        // since every attach needs a reference to it and we own it.
        if is_blocking || self.strtab.lock().users.contains_key(&domain.id) {
            return Err((domain, UnitError::Busy));
        }
        // A nest parent stays while a vIOMMU or a nested domain builds on it.
        if crate::viommu::parent_in_use(self, &domain) {
            return Err((domain, UnitError::Busy));
        }
        // A nested domain owns no table and no tag: its STE is gone from every stream (no
        // users), its guest's TLB entries are the guest's to invalidate under the vIOMMU's
        // VMID, and dropping it gives its count back to the vIOMMU and the parent.
        if let DomainKind::Nested { .. } = domain.kind {
            return Ok(());
        }
        // Every TLB and walk-cache entry tagged with the domain's tag goes before the tag is
        // handed out again and before the tables are freed.
        // A stage-1 domain nested in a parent may also have been attached on its own before
        // (entries under VMID 0): both VMIDs are invalidated.
        let cmds = match &domain.kind {
            DomainKind::Stage1 { asid, vmid, .. } => [
                Some(Command::TlbiNhAsid {
                    vmid: 0,
                    asid: *asid,
                }),
                match vmid.load(Ordering::Relaxed) {
                    0 => None,
                    vmid => Some(Command::TlbiNhAsid { vmid, asid: *asid }),
                },
            ],
            DomainKind::Shared { cd, .. } => [
                Some(Command::TlbiNhAsid {
                    vmid: 0,
                    asid: cd.asid,
                }),
                None,
            ],
            DomainKind::Stage2 { s2, .. } => [Some(Command::TlbiS12Vmall { vmid: s2.vmid }), None],
            DomainKind::Nested { .. } => [None, None],
        };
        let done = (|| {
            let mut batch = self.cmdq.batch();
            for cmd in cmds.into_iter().flatten() {
                batch.push(cmd)?;
            }
            batch.finish()
        })();
        if let Err(e) = done {
            return Err((domain, SmmuError::Command(e).into()));
        }
        let mut gather = Gather::new();
        match domain.kind {
            DomainKind::Stage1 {
                table, cds, asid, ..
            } => {
                table.destroy(&mut gather);
                // SAFETY: no STE points at the CD table (no users) and the STEs that did were
                // rewritten with CMD_CFGI_STE + CMD_SYNC.
                unsafe { cds.free() };
                self.tags.lock().asids.release(asid);
            }
            DomainKind::Shared { cds, cd } => {
                // SAFETY: as above. The CPU table is the embedder's and stays.
                unsafe { cds.free() };
                self.tags.lock().asids.release(cd.asid);
            }
            DomainKind::Stage2 {
                table,
                s2,
                nest_users,
            } => {
                table.destroy(&mut gather);
                // SAFETY: `parent_in_use` was false above and we own the domain, so no vIOMMU
                // or nested domain holds the counter any more.
                unsafe { nest_users.release(&self.hal) };
                self.tags.lock().vmids.release(s2.vmid);
            }
            DomainKind::Nested { .. } => {}
        }
        // SAFETY: no STE or CD points at the table any more and the TLBI of the domain's tag
        // (walk caches included) completed with its CMD_SYNC above; the frames belong to the
        // table's HAL, a clone of ours.
        unsafe { gather.complete(&self.hal) };
        Ok(())
    }

    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        if pasid == 0 {
            return Err(UnitError::Unsupported(
                "SubstreamID 0: requests without a PASID are attached with `attach`",
            ));
        }
        let ssid_bits = self.features.ssid_bits;
        if ssid_bits == 0 {
            return Err(UnitError::Unsupported(
                "PASIDs: the SMMU has no substreams (IDR1.SSIDSIZE = 0)",
            ));
        }
        if pasid >> ssid_bits != 0 {
            return Err(UnitError::Unsupported("a PASID wider than IDR1.SSIDSIZE"));
        }
        let target = match to {
            Attachment::Blocking => None,
            Attachment::Identity => {
                return Err(UnitError::Unsupported("identity for one PASID"));
            }
            Attachment::Paging(d) => Some((d.id, d.substream_cd()?)),
        };
        // Only a stage-1 blocking domain can serve as CD 0 (substreams need stage 1 anyway).
        let blocking = self
            .blocking
            .as_ref()
            .and_then(|b| b.substream_cd().ok().map(|cd| (b.id, cd)));
        let mut streams = self.strtab.lock();
        let old = streams.attach_pasid(
            self,
            &self.hal,
            &self.features,
            blocking,
            device.0,
            pasid,
            target,
        )?;
        drop(streams);
        // SAFETY: `attach_pasid` rewrote the STE (CMD_CFGI_STE + CMD_SYNC) before handing the
        // old use back.
        unsafe { free_old_use(old) };
        Ok(())
    }

    fn flush(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<(), UnitError> {
        if len == 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::ZeroLength));
        }
        let start = iova.as_u64();
        let end = start
            .checked_add(len)
            .ok_or(UnitError::PageTable(iommu::pagetable::Error::WrapAround))?;
        // Not leaf-only: the embedder may have removed tables as well as pages.
        self.invalidate(domain, start..end, false)?;
        Ok(())
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
        let sid = device.0;
        let mut streams = self.strtab.lock();
        if let Some(StreamUse::Substreams { .. }) = streams.uses.get(&sid) {
            // The PASIDs stay; untagged requests change.
            return self.attach_default_substream(&mut streams, sid, to);
        }
        let (ste, new) = match to {
            // The empty domain, not an aborting STE: the SMMU records no event for those
            // (IHI 0070 5.2) and a blocked device's DMA must be reported. Not recorded as a
            // use: the blocking domain lives as long as the unit.
            Attachment::Blocking => match &self.blocking {
                Some(d) => (self.ste_for(d), None),
                None => (StreamTableEntry::abort(), None),
            },
            Attachment::Identity => (StreamTableEntry::bypass(), Some(StreamUse::Bypass)),
            Attachment::Paging(d) => (self.ste_for(d), Some(Self::use_of(d))),
        };
        self.install_on(&mut streams.table, sid, &ste)?;
        let old = streams.set_use(sid, new);
        drop(streams);
        // SAFETY: `install_on` rewrote the STE and completed its CMD_CFGI_STE + CMD_SYNC.
        unsafe { free_old_use(old) };
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
            DomainKind::Shared { .. } => return Err(SHARED_MAP),
        }
        Ok(())
    }

    fn unmap(&self, domain: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError> {
        let flush = DomainFlush { unit: self, domain };
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.unmap_flushed(iova, len, &flush),
            DomainKind::Stage2 { table, .. } => table.unmap_flushed(iova, len, &flush),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
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

    /// The attachment records and PASID attach on an SMMU with substreams (IDR1.SSIDSIZE = 5;
    /// QEMU has none), over a stream table in host memory, with every STE and CD invalidation
    /// going through a command queue that the simulated SMMU consumes.
    #[cfg(not(loom))]
    mod pasid {
        use super::*;
        use crate::attributes::Granule;
        use crate::context_descriptor::INVALID_CD;
        use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};
        use crate::stream_table::{DefaultSubstream, Stage1};
        use iommu::hal::host::HostHal;
        use std::cell::RefCell;
        use std::vec::Vec;

        type TestHal<'h> = &'h HostHal;

        struct SimHardware<'a> {
            smmu: &'a SimulatedSmmu,
            mem: &'a HeapQueueMemory<2>,
            queue: CommandQueue<&'a SimulatedSmmu, &'a HeapQueueMemory<2>>,
            features: Features,
            seen: RefCell<Vec<Command>>,
        }

        impl SimHardware<'_> {
            fn issue(&self, cmd: Command) -> Result<(), CmdqError> {
                self.queue.submit(&[cmd.encode()?])?;
                while let SimStep::Consumed(raw) = self.smmu.step(self.mem, |c| {
                    SimulatedSmmu::decode_or_illegal(c).map(|_| ())
                }) {
                    if let Ok(c) = Command::decode(raw) {
                        self.seen.borrow_mut().push(c);
                    }
                }
                Ok(())
            }

            fn take(&self) -> Vec<Command> {
                core::mem::take(&mut *self.seen.borrow_mut())
            }
        }

        impl<'h> StreamHardware<TestHal<'h>> for SimHardware<'_> {
            fn install_ste(
                &self,
                table: &mut StreamTable<TestHal<'h>>,
                sid: u32,
                ste: &StreamTableEntry,
            ) -> Result<(), SmmuError> {
                ste.check_features(&self.features)
                    .map_err(SmmuError::Entry)?;
                table
                    .install(sid, ste, |cmd| self.issue(cmd))
                    .map_err(SmmuError::StreamTable)?;
                Ok(())
            }
            fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError> {
                self.issue(Command::CfgiCd { sid, ssid, leaf })
            }
        }

        fn features(ssid_bits: u32) -> Features {
            Features::decode(&IdRegisters {
                idr: [
                    0x0d44_101b,
                    0x0273_0010 | ssid_bits << 6,
                    0,
                    0x1414,
                    0,
                    0x74,
                ],
                iidr: 0,
                aidr: 1,
            })
        }

        fn cd(asid: u16) -> ContextDescriptor {
            ContextDescriptor::new(
                asid,
                PhysAddr::new(u64::from(asid) << 12),
                39,
                Granule::Size4K,
                OutputAddressSize::Bits44,
                0xff,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        }

        fn words(c: &ContextDescriptor) -> [u64; 8] {
            c.encode().unwrap_or_else(|e| panic!("{e}"))
        }

        fn users(s: &Streams<TestHal<'_>>) -> Vec<(DomainId, u32)> {
            s.users.iter().map(|(&k, &v)| (k, v)).collect()
        }

        /// The stream's own CD table's STE half, its CD at `ssid`.
        fn substreams(s: &Streams<TestHal<'_>>, sid: u32) -> Stage1 {
            match s.uses.get(&sid) {
                Some(StreamUse::Substreams { table, .. }) => table.stage1(),
                _ => panic!("stream {sid} has no CD table of its own"),
            }
        }

        fn cd_at(s: &Streams<TestHal<'_>>, sid: u32, ssid: u32) -> [u64; 8] {
            match s.uses.get(&sid) {
                Some(StreamUse::Substreams { table, .. }) => {
                    table.entry(ssid).unwrap_or_else(|e| panic!("{e}"))
                }
                _ => panic!("stream {sid} has no CD table of its own"),
            }
        }

        fn ste(s: &Streams<TestHal<'_>>, sid: u32) -> [u64; 8] {
            s.table.entry(sid).unwrap_or_else(|e| panic!("{e}"))
        }

        fn encode(e: StreamTableEntry) -> [u64; 8] {
            e.encode().unwrap_or_else(|e| panic!("{e}"))
        }

        #[test]
        fn pasid_attach_builds_a_cd_table_per_stream_and_tracks_domains() {
            let hal = HostHal::new();
            let f = features(5);
            let smmu = SimulatedSmmu::new(6);
            let mem = HeapQueueMemory::<2>::new(6);
            let hw = SimHardware {
                smmu: &smmu,
                mem: &mem,
                queue: CommandQueue::new(&smmu, &mem, 100_000).unwrap_or_else(|e| panic!("{e}")),
                features: f,
                seen: RefCell::new(Vec::new()),
            };
            let geometry = StreamTableGeometry::linear(8).unwrap_or_else(|e| panic!("{e}"));
            let mut s = Streams {
                table: StreamTable::new(&hal, geometry, true).unwrap_or_else(|e| panic!("{e}")),
                uses: BTreeMap::new(),
                users: BTreeMap::new(),
            };
            let blocking = Some((99, cd(99)));

            // Stream 8 attached to stage-1 domain 1 as `attach` does: its single-CD table.
            let mut single =
                CdTable::new(&hal, CdTableGeometry::SINGLE, true).unwrap_or_else(|e| panic!("{e}"));
            single
                .install(0, Some(&cd(1)), |_, _| Ok(()))
                .unwrap_or_else(|e| panic!("{e}"));
            let plain = StreamTableEntry::stage1(single.stage1());
            hw.install_ste(&mut s.table, 8, &plain)
                .unwrap_or_else(|e| panic!("{e}"));
            let uses = StreamUse::Domains {
                ids: [Some(1), None],
                cd: Some(cd(1)),
            };
            assert!(s.set_use(8, Some(uses)).is_none());
            assert_eq!(users(&s), [(1, 1)]);
            hw.take();

            // PASID 3 -> domain 2: a CD table of its own, CD 0 = domain 1's CD (S1DSS =
            // Substream0), CD 3 = domain 2's; the STE switches to it with CFGI_STE.
            let old = s
                .attach_pasid(&hw, &&hal, &f, blocking, 8, 3, Some((2, cd(2))))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(old, Some(StreamUse::Domains { .. })));
            let s1 = substreams(&s, 8);
            assert_eq!(s1.cd_max, 5);
            assert_eq!(s1.default_substream, DefaultSubstream::Substream0);
            assert_eq!(ste(&s, 8), encode(StreamTableEntry::stage1(s1)));
            assert_eq!(cd_at(&s, 8, 0), words(&cd(1)));
            assert_eq!(cd_at(&s, 8, 3), words(&cd(2)));
            assert_eq!(users(&s), [(1, 1), (2, 1)]);
            let cmds = hw.take();
            assert!(
                cmds.contains(&Command::CfgiSte { sid: 8, leaf: true }),
                "{cmds:?}"
            );
            assert!(
                cmds.iter()
                    .all(|c| matches!(c, Command::CfgiSte { sid: 8, .. } | Command::Sync { .. })),
                "{cmds:?}"
            );

            // PASID 4 -> domain 2 as well: only CD 4 changes, invalidated by SSID.
            let before = ste(&s, 8);
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 8, 4, Some((2, cd(2))))
                .is_ok_and(|old| old.is_none()));
            assert_eq!(ste(&s, 8), before);
            assert_eq!(cd_at(&s, 8, 4), words(&cd(2)));
            assert_eq!(users(&s), [(1, 1), (2, 2)]);
            let cmds = hw.take();
            assert!(
                cmds.contains(&Command::CfgiCd {
                    sid: 8,
                    ssid: 4,
                    leaf: true
                }),
                "{cmds:?}"
            );

            // PASID 3 detached: CD 3 invalid, domain 2 has one user left.
            assert!(s.attach_pasid(&hw, &&hal, &f, blocking, 8, 3, None).is_ok());
            assert_eq!(cd_at(&s, 8, 3), INVALID_CD);
            assert_eq!(users(&s), [(1, 1), (2, 1)]);
            assert!(hw.take().contains(&Command::CfgiCd {
                sid: 8,
                ssid: 3,
                leaf: true
            }));

            // Untagged requests bypass stage 1 (attach Identity): S1DSS first, then CD 0 goes.
            assert!(s.set_default_substream(&hw, 8, None).is_ok());
            let s1 = substreams(&s, 8);
            assert_eq!(s1.default_substream, DefaultSubstream::Bypass);
            assert_eq!(ste(&s, 8), encode(StreamTableEntry::stage1(s1)));
            assert_eq!(cd_at(&s, 8, 0), INVALID_CD);
            assert_eq!(cd_at(&s, 8, 4), words(&cd(2)), "PASIDs stay");
            assert_eq!(users(&s), [(2, 1)]);
            // And back to a domain for them.
            assert!(s.set_default_substream(&hw, 8, Some((5, cd(5)))).is_ok());
            assert_eq!(
                substreams(&s, 8).default_substream,
                DefaultSubstream::Substream0
            );
            assert_eq!(cd_at(&s, 8, 0), words(&cd(5)));
            assert_eq!(users(&s), [(2, 1), (5, 1)]);

            // A stream attached to a stage-2 domain: refused, nothing changes.
            let s2 = StreamUse::Domains {
                ids: [Some(7), None],
                cd: None,
            };
            assert!(s.set_use(9, Some(s2)).is_none());
            let before = ste(&s, 9);
            assert!(matches!(
                s.attach_pasid(&hw, &&hal, &f, blocking, 9, 1, Some((2, cd(2)))),
                Err(UnitError::Unsupported(_))
            ));
            assert_eq!(ste(&s, 9), before);
            assert_eq!(users(&s), [(2, 1), (5, 1), (7, 1)]);

            // A stream never attached: CD 0 is the blocking domain's.
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 10, 1, Some((2, cd(2))))
                .is_ok());
            assert_eq!(cd_at(&s, 10, 0), words(&cd(99)));
            assert_eq!(users(&s), [(2, 2), (5, 1), (7, 1), (99, 1)]);
            // Detaching a PASID of a stream without substreams changes nothing.
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 11, 1, None)
                .is_ok_and(|o| o.is_none()));
            assert!(!s.uses.contains_key(&11));

            // Everything released: no users left, every frame back.
            for sid in [8, 9, 10] {
                // SAFETY: no SMMU reads these tables.
                unsafe { free_old_use(s.set_use(sid, None)) };
            }
            assert!(s.users.is_empty());
            // SAFETY: as above.
            unsafe {
                single.free();
                s.table.free();
            }
            assert_eq!(hal.live_frames(), 0);
        }
    }

    /// QEMU 10's `virt` SMMU as read there (docs/qemu-facts.md): both stages, COHACC, 16-bit
    /// ASIDs and VMIDs, no substreams, OAS 44 bits, 4K/16K/64K granules.
    #[test]
    fn hardware_info_of_qemu_virt() {
        let raw = IdRegisters {
            idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
            iidr: 0,
            aidr: 1,
        };
        let info = hardware_info(&Features::decode(&raw), &raw);
        assert!(info.first_stage && info.second_stage && info.nesting && info.identity);
        assert_eq!(info.pasid_bits, 0);
        assert_eq!(
            (
                info.first_stage_ia_bits,
                info.second_stage_ia_bits,
                info.output_bits
            ),
            (48, 44, 44)
        );
        let sizes = [12, 21, 30, 14, 25, 16, 29]
            .iter()
            .fold(0u64, |a, s| a | 1 << s);
        assert_eq!(info.page_sizes, sizes);
        assert!(info.coherent_walks && !info.ats);
        assert_eq!(info.tags, 1 << 16, "VMIDs (IDR0.VMID16) with stage 2");
        assert_eq!(
            info.raw,
            RawRegisters::Smmuv3 {
                idr: raw.idr,
                iidr: 0,
                aidr: 1
            }
        );
    }

    /// A stage-1-only SMMU with 8-bit ASIDs (ASID16 clear), 64K granule only, substreams and
    /// ATS: tags are ASIDs, the stage-2 fields are 0.
    #[test]
    fn hardware_info_of_a_stage1_smmu_with_substreams() {
        // IDR0: S1P [1], TTF AArch64 [3:2], ATS [10], COHACC [4]; IDR1: SSIDSIZE 20 [10:6];
        // IDR5: OAS 48 bits (5), GRAN64K [6].
        let raw = IdRegisters {
            idr: [
                1 << 1 | 2 << 2 | 1 << 4 | 1 << 10,
                20 << 6,
                0,
                0,
                0,
                5 | 1 << 6,
            ],
            iidr: 0,
            aidr: 0,
        };
        let f = Features::decode(&raw);
        let info = hardware_info(&f, &raw);
        assert!(info.first_stage && !info.second_stage && !info.nesting);
        assert_eq!(info.pasid_bits, 20);
        assert_eq!(
            (
                info.first_stage_ia_bits,
                info.second_stage_ia_bits,
                info.output_bits
            ),
            (48, 0, 48)
        );
        assert_eq!(info.page_sizes, 1 << 16 | 1 << 29);
        assert!(info.ats && info.coherent_walks);
        assert_eq!(info.tags, 1 << 8);
    }

    #[test]
    fn tag_pool_reuses_tags_and_keeps_borrowed_ones_out() {
        let mut p = TagPool::new(16, Some(3));
        assert_eq!(
            (p.alloc(), p.alloc(), p.alloc(), p.alloc()),
            (Some(1), Some(2), Some(3), None)
        );
        p.release(2);
        assert_eq!(p.alloc(), Some(2), "a released tag comes back");
        // Borrowing a live tag fails; a free or never-used one works and is skipped by alloc.
        assert!(!p.borrow(1));
        p.release(1);
        assert!(p.borrow(1));
        assert_eq!(p.alloc(), None);
        p.release(1);
        assert_eq!(p.alloc(), Some(1));
        let mut q = TagPool::new(16, None);
        assert!(q.borrow(2));
        assert!(!q.borrow(2), "one shared table per CPU ASID");
        assert_eq!((q.alloc(), q.alloc()), (Some(1), Some(3)));
        q.release(2);
        assert_eq!(q.alloc(), Some(2));
        // Tag 0 is never handed out but can be borrowed.
        assert!(q.borrow(0));
        q.release(0);
        assert_eq!(TagPool::new(8, None).limit, 256);
        assert_eq!(TagPool::new(16, Some(u16::MAX)).limit, 1 << 16);
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
