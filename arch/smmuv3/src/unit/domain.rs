//! The domains of an [`SmmuUnit`]: stage-1 (a single-CD table under an ASID), stage-2 (a VMID),
//! nested (a vSTE over a stage-2 parent) and shared (the embedder's CPU table under its ASID);
//! their creation, map and teardown, and the ASID/VMID pools that tag them.

extern crate alloc;

use alloc::collections::BTreeSet;
use core::fmt;
use core::sync::atomic::{AtomicU16, Ordering};

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::{Coherency, Gather, PageTable, Prot, VmsaConfig, VmsaStage1, VmsaStage2};
use iommu::unit::{CpuTable, Stage, UnitError, VmTable};

use super::info::output_size;
use super::SmmuUnit;
use crate::attributes::Granule;
use crate::command::Command;
use crate::context_descriptor::{CdTable, CdTableGeometry, ContextDescriptor};
use crate::stream_table::{Stage2, StreamTableEntry};
use crate::Error;

/// Names a domain in the unit's attachment records: unique for the unit's life (a 64-bit
/// counter does not wrap).
pub(crate) type DomainSerial = u64;

/// A domain of an [`SmmuUnit`].
pub struct SmmuDomain<H: Hal> {
    pub(crate) serial: DomainSerial,
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
        /// The unit's own table, or none for a VM's table the embedder owns and shares with
        /// its CPU (`new_vm_domain`): then the VMID is the embedder's, borrowed from the pool.
        table: Option<PageTable<VmsaStage2, H>>,
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
                let whose = if table.is_some() { "" } else { "VM table, " };
                write!(
                    f,
                    "SmmuDomain(stage 2, {whose}VMID {}, root {:?})",
                    s2.vmid, s2.table
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
            DomainKind::Stage2 { table, .. } => table.as_ref()?.walk(iova),
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
            DomainKind::Stage2 { table, .. } => table.as_ref()?.walk(iova).ok(),
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
    pub(super) fn substream_cd(&self) -> Result<ContextDescriptor, UnitError> {
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
pub(super) struct TagPool {
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
    pub(super) fn new(bits: u8, window: Option<u16>) -> Self {
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
pub(super) struct Tags {
    pub(super) asids: TagPool,
    pub(super) vmids: TagPool,
}

/// Why a nested domain refuses map/unmap: the guest maps in its own stage-1 table and the host
/// in the nest parent.
pub(super) const NESTED_MAP: &str =
    "map/unmap on a nested domain (the guest owns its stage 1, the host the parent)";

/// What `map` and `unmap` of a shared domain say: the table is the embedder's.
pub(super) const SHARED_MAP: UnitError = UnitError::Unsupported(
    "map/unmap of a shared CPU table (the embedder changes it and calls flush)",
);

/// What `map` and `unmap` of a VM-table domain say: the table is the embedder's.
pub(super) const VM_TABLE_MAP: UnitError = UnitError::Unsupported(
    "map/unmap of a VM's shared stage-2 table (the embedder changes it and calls flush)",
);

impl<H: Hal + Clone> SmmuUnit<H> {
    pub(crate) fn new_domain_serial(&self) -> DomainSerial {
        self.next_domain_serial.fetch_add(1, Ordering::Relaxed)
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
            log::debug!("SMMU: a {granule:?} domain refused: IDR5 lacks the granule");
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
                    granule,
                    input_bits: ia,
                    output_bits: self.oas_bits,
                };
                let format = VmsaStage1::new(cfg)?;
                let mair = format.mair();
                let table = PageTable::new(format, self.hal.clone(), coherency)?;
                let Some(asid) = self.tags.lock().asids.alloc() else {
                    discard_unused(table, &self.hal);
                    return Err(UnitError::OutOfIds);
                };
                let cds = ContextDescriptor::new(asid, table.root(), ia as u8, granule, ips, mair)
                    .and_then(|cd| cd.check_features(&self.features).map(|()| cd))
                    .map_err(Error::Entry)
                    .and_then(|cd| Ok((cd, self.single_cd_table(&cd)?)));
                let (cd, cds) = match cds {
                    Ok(c) => c,
                    Err(e) => {
                        // Never used: no TLB entry can carry it.
                        self.tags.lock().asids.release(asid);
                        discard_unused(table, &self.hal);
                        return Err(e.into());
                    }
                };
                Ok(SmmuDomain {
                    serial: self.new_domain_serial(),
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
                    granule,
                    input_bits: ia,
                    output_bits: self.oas_bits,
                };
                let format = VmsaStage2::new(cfg)?;
                let start_level = format.start_level() as u8;
                let ias = 64 - format.t0sz();
                let table = PageTable::new(format, self.hal.clone(), coherency)?;
                let Some(vmid) = self.tags.lock().vmids.alloc() else {
                    discard_unused(table, &self.hal);
                    return Err(UnitError::OutOfIds);
                };
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
                        discard_unused(table, &self.hal);
                        return Err(Error::Entry(e).into());
                    }
                };
                Ok(SmmuDomain {
                    serial: self.new_domain_serial(),
                    kind: DomainKind::Stage2 {
                        table: Some(table),
                        s2,
                        nest_users: crate::viommu::NestUsers::new(),
                    },
                })
            }
        }
    }

    /// A one-CD table holding `cd`, not yet pointed at by any STE.
    pub(super) fn single_cd_table(&self, cd: &ContextDescriptor) -> Result<CdTable<H>, Error> {
        let mut cds = CdTable::new(
            self.hal.clone(),
            CdTableGeometry::SINGLE,
            self.features.coherent,
        )
        .map_err(Error::CdTable)?;
        // No STE points at the table yet: nothing to invalidate.
        if let Err(e) = cds.install(0, Some(cd), |_, _| Ok(())) {
            // SAFETY: nothing points at the table.
            unsafe { cds.free() };
            return Err(Error::CdTable(e));
        }
        Ok(cds)
    }

    pub(super) fn domain_granule(domain: &SmmuDomain<H>) -> Granule {
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.format().granule(),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => table.format().granule(),
            DomainKind::Stage2 { table: None, .. }
            | DomainKind::Shared { .. }
            | DomainKind::Nested { .. } => Granule::Size4K,
        }
    }

    pub(super) fn shared_domain(&self, cpu: &CpuTable) -> Result<SmmuDomain<H>, UnitError> {
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
        .map_err(Error::Entry)?;
        // The ASID is the CPU's: the common set (ASET = 0), where broadcast TLB maintenance
        // would apply if CR2.PTM allowed it. With PTM set the embedder calls `flush`.
        cd.private_asid_set = false;
        cd.check_features(&self.features).map_err(Error::Entry)?;
        // The CPU's ASID must not tag any other domain of this unit.
        if !self.tags.lock().asids.borrow(cpu.asid) {
            return Err(UnitError::OutOfIds);
        }
        match self.single_cd_table(&cd) {
            Ok(cds) => Ok(SmmuDomain {
                serial: self.new_domain_serial(),
                kind: DomainKind::Shared { cds, cd },
            }),
            Err(e) => {
                self.tags.lock().asids.release(cpu.asid);
                Err(e.into())
            }
        }
    }

    pub(super) fn vm_domain(&self, vm: &VmTable) -> Result<SmmuDomain<H>, UnitError> {
        if !self.features.stages.stage2() {
            return Err(UnitError::Unsupported("stage 2 translation"));
        }
        if !self.features.granules.size_4k {
            return Err(UnitError::Unsupported("the 4 KiB granule of VM tables"));
        }
        if !(25..=self.oas_bits.min(48)).contains(&vm.ia_bits) {
            return Err(UnitError::Unsupported(
                "VM table input width outside 25 bits..the output address size",
            ));
        }
        let root = vm.root.as_u64();
        if root & 0xfff != 0 || root >> self.oas_bits != 0 {
            return Err(UnitError::Unsupported(
                "VM table root not 4 KiB aligned or beyond the output address size",
            ));
        }
        // The starting level the CPU's walk uses for this width: the format's, as the
        // embedder built the table with it (VTCR_EL2.SL0 from the same format).
        let format = VmsaStage2::new(VmsaConfig {
            granule: Granule::Size4K,
            input_bits: vm.ia_bits,
            output_bits: self.oas_bits,
        })?;
        let s2 = Stage2::new(
            vm.vmid,
            vm.root,
            64 - format.t0sz(),
            Granule::Size4K,
            format.start_level() as u8,
            output_size(self.features.oas),
        )
        .map_err(Error::Entry)?;
        if u32::from(vm.vmid) >> self.features.vmid_bits != 0 {
            return Err(UnitError::Unsupported(
                "VMID wider than the SMMU's (IDR0.VMID16)",
            ));
        }
        // The VM's VMID must tag no other domain of this unit (0 is stage-1-only streams').
        if vm.vmid == 0 || !self.tags.lock().vmids.borrow(vm.vmid) {
            return Err(UnitError::OutOfIds);
        }
        Ok(SmmuDomain {
            serial: self.new_domain_serial(),
            kind: DomainKind::Stage2 {
                table: None,
                s2,
                nest_users: crate::viommu::NestUsers::new(),
            },
        })
    }

    // The shape of `TranslationUnit::destroy_domain`, which hands a refused domain back.
    #[allow(clippy::result_large_err)]
    pub(super) fn destroy(&self, domain: SmmuDomain<H>) -> Result<(), (SmmuDomain<H>, UnitError)> {
        let is_blocking = self
            .blocking
            .as_ref()
            .is_some_and(|b| b.serial == domain.serial);
        // Attaches are serialised by this lock; none can start for `domain` after the check,
        // since every attach needs a reference to it and we own it.
        if is_blocking || self.strtab.lock().users.contains_key(&domain.serial) {
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
            return Err((domain, Error::Command(e).into()));
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
                // A VM's table is the embedder's and stays.
                if let Some(table) = table {
                    table.destroy(&mut gather);
                }
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

    pub(super) fn map_range(
        &self,
        domain: &SmmuDomain<H>,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        // The SMMU caches no invalid entries, so a new mapping needs no invalidation.
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.map(iova, phys, len, prot)?,
            DomainKind::Stage2 {
                table: Some(table), ..
            } => table.map(iova, phys, len, prot)?,
            DomainKind::Stage2 { table: None, .. } => return Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => return Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => return Err(SHARED_MAP),
        }
        Ok(())
    }
}

impl<H: Hal> SmmuDomain<H> {
    /// Gives every frame of the domain back without invalidating anything: for the unit's own
    /// blocking domain when the unit goes.
    ///
    /// # Safety
    /// The SMMU can no longer walk the domain's tables (SMMU_CR0.SMMUEN is 0 and acknowledged;
    /// a later bring-up invalidates every cached entry before enabling it), no vIOMMU or nested
    /// domain uses it, and `hal` is the HAL its tables came from (or a clone).
    pub(super) unsafe fn free_unreachable(self, hal: &H) {
        let mut gather = Gather::new();
        match self.kind {
            DomainKind::Stage1 { table, cds, .. } => {
                table.destroy(&mut gather);
                // SAFETY: per this function's contract.
                unsafe { cds.free() };
            }
            // SAFETY: per this function's contract.
            DomainKind::Shared { cds, .. } => unsafe { cds.free() },
            DomainKind::Stage2 {
                table, nest_users, ..
            } => {
                if let Some(table) = table {
                    table.destroy(&mut gather);
                }
                // SAFETY: no vIOMMU or nested domain uses it, per the contract.
                unsafe { nest_users.release(hal) };
            }
            DomainKind::Nested { .. } => {}
        }
        // SAFETY: the SMMU cannot reach the frames, per the contract.
        unsafe { gather.complete(hal) };
    }
}

/// Frees a table no STE or CD ever pointed at (a domain whose construction failed).
fn discard_unused<F: iommu::pagetable::Format, H: Hal>(table: PageTable<F, H>, hal: &H) {
    let mut gather = Gather::new();
    table.destroy(&mut gather);
    // SAFETY: the SMMU never saw the table (no CD or STE names it), so no walk or TLB entry
    // can use its frames; they belong to the table's HAL, a clone of `hal`.
    unsafe { gather.complete(hal) };
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
