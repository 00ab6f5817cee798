//! The SMMUv3 brought up for real and judged by edu DMA: the generic tests of [`crate::dma`] on
//! stage 1 and stage 2 (whichever the machine's SMMU has), then what only the SMMU has: stream
//! table formats, granules, block mappings, bypass and abort STEs, event-queue overflow and a
//! command error.
//!
//! QEMU logs every faulting translation (and an illegal command) as a guest error; each test
//! that provokes one announces it first.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use crate::dma::{self, DmaBuffer, Rig, IA_BITS, IOVA_A};
use crate::hal::{KernelHal, HAL};
use crate::platform::{devicetree, edu_devices, EduDevice};
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::Prot;
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{Attachment, DeviceId, FaultKind, Stage, TranslationUnit};
use iommu_boot::aarch64::gic;
use iommu_boot::testing::{allow_guest_error, fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};
use iommu_smmuv3::attributes::Granule;
use iommu_smmuv3::cmdq::{CmdqError, CommandErrorCode};
use iommu_smmuv3::command::Command;
use iommu_smmuv3::devicetree::{Interrupt, Trigger};
use iommu_smmuv3::platform::SmmuDescription;
use iommu_smmuv3::registers::{Readable, SmmuRegisters, CR0, GBPA};
use iommu_smmuv3::stream_table::StreamTableGeometry;
use iommu_smmuv3::unit::{SmmuConfig, SmmuUnit};

pub(crate) type Unit = SmmuUnit<&'static KernelHal>;

/// Where QEMU logs a faulting translation (smmuv3_translate) and a command it refuses.
pub(super) const TRANSLATION_FAILED: &str = "translation failed for iova";

/// The SMMU as the tests share it: brought up once per boot, or again after a test that brought
/// it up differently (the old unit's tables are then leaked, which a test kernel can afford).
pub(super) static UNIT: spin::Mutex<Option<&'static Unit>> = spin::Mutex::new(None);

pub(super) fn smmu_regs(m: &Machine) -> Result<NonNull<SmmuRegisters>, Failure> {
    let dt = devicetree(m)?;
    let smmu = dt
        .smmus()
        .next()
        .ok_or_else(|| fail("no arm,smmu-v3 node"))?
        .map_err(fail)?;
    // The same description an ACPI machine gets from its IORT (platform.rs, host-tested).
    SmmuDescription::from_devicetree(&smmu)
        .identity_mapped_registers()
        .ok_or_else(|| fail("SMMU at address 0"))
}

/// Brings the SMMU up with `config`, replacing whatever unit the tests used before.
pub(super) fn bring_up(m: &Machine, config: SmmuConfig) -> Result<&'static Unit, Failure> {
    // The bridges must be numbered before the SMMU sees its first invalidation
    // (`platform::aarch64::BRIDGES` says why); the first configuration access does it.
    crate::platform::pci_config(m)?;
    let regs = smmu_regs(m)?;
    // SAFETY: the frame comes from the devicetree and lies in the first TiB, which the boot code
    // identity-maps as Device memory; the tests run on one CPU and only the unit they share
    // programs the SMMU (the previous one is dropped from `UNIT` below and never used again).
    let unit = unsafe { SmmuUnit::new(regs, &HAL, config) }.map_err(fail)?;
    let unit: &'static Unit = Box::leak(Box::new(unit));
    *UNIT.lock() = Some(unit);
    Ok(unit)
}

/// The driver's default layout (2-level where the SMMU allows).
fn default_config(_m: &Machine) -> Result<SmmuConfig, Failure> {
    Ok(SmmuConfig::default())
}

pub(crate) fn unit(m: &Machine) -> Result<&'static Unit, Failure> {
    if let Some(u) = *UNIT.lock() {
        return Ok(u);
    }
    bring_up(m, default_config(m)?)
}

/// The stream id of an edu, through the PCIe host's `iommu-map`.
fn stream_id(m: &Machine, edu: &EduDevice) -> Result<DeviceId, Failure> {
    let dt = devicetree(m)?;
    let host = dt
        .pci_hosts()
        .next()
        .ok_or_else(|| fail("no PCIe host"))?
        .map_err(fail)?;
    let (_, sid) = dt.stream_id(&host, edu.bdf.requester_id()).map_err(fail)?;
    Ok(DeviceId(sid))
}

/// `virt` maps requester ids 1:1 to stream ids (checked by `edu_stream_id_follows_iommu_map`),
/// which lets the rig's plain function pointer name devices.
fn rid_stream_id(edu: &EduDevice) -> DeviceId {
    DeviceId(u32::from(edu.bdf.requester_id()))
}

/// The rig of the stage this SMMU's domains use by default.
pub(super) fn default_rig(m: &Machine) -> Result<Rig<'static, Unit>, Failure> {
    rig(m, preferred_stage(unit(m)?))
}

fn rig(m: &Machine, stage: Stage) -> Result<Rig<'static, Unit>, Failure> {
    let unit = unit(m)?;
    let supported = match stage {
        Stage::First => unit.features().stages.stage1(),
        Stage::Second => unit.features().stages.stage2(),
    };
    if !supported {
        skip!("this SMMU has no {stage:?} stage");
    }
    let edus = edu_devices(m)?;
    for e in &edus {
        ensure_eq!(
            stream_id(m, e)?,
            rid_stream_id(e),
            "iommu-map is 1:1 on virt"
        );
    }
    // Faults of an earlier test are not this test's.
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    Ok(Rig {
        unit,
        edus,
        device_id: rid_stream_id,
        stage,
    })
}

pub fn generic(
    m: &mut Machine,
    stage: Stage,
    test: fn(&Rig<'static, Unit>) -> TestResult,
) -> TestResult {
    let r = rig(m, stage)?;
    allow_guest_error(TRANSLATION_FAILED);
    test(&r)
}

/// [`generic`] for a test that also reads the machine (its command line), at the unit's
/// preferred stage.
pub fn with_machine(
    m: &mut Machine,
    test: fn(&Machine, &Rig<'static, Unit>) -> TestResult,
) -> TestResult {
    let r = rig(m, preferred_stage(unit(m)?))?;
    allow_guest_error(TRANSLATION_FAILED);
    test(m, &r)
}

/// [`dma::deferred_unmaps_fault_after_one_flush`] on `stage`, counted from the SMMU's command
/// queue memory: TLBI commands (opcodes 0x10 to 0x30) and `CMD_SYNC`s.
pub fn deferred_unmaps_fault_after_one_flush(m: &mut Machine, stage: Stage) -> TestResult {
    counted(m, stage, dma::deferred_unmaps_fault_after_one_flush)
}

/// [`dma::emptied_tables_are_reclaimed`] at `stage`, counted like the deferred unmaps.
pub fn emptied_tables_are_reclaimed(m: &mut Machine, stage: Stage) -> TestResult {
    counted(m, stage, dma::emptied_tables_are_reclaimed)
}

/// [`dma::pruning_unmaps_free_the_tables_they_empty`] at `stage`, counted likewise.
pub fn pruning_unmaps_free_the_tables_they_empty(m: &mut Machine, stage: Stage) -> TestResult {
    counted(m, stage, dma::pruning_unmaps_free_the_tables_they_empty)
}

/// [`dma::object_model_unmaps_free_their_tables`] at `stage` unmapping `how`, counted
/// likewise.
pub fn object_model_unmaps(m: &mut Machine, stage: Stage, how: dma::ModelUnmap) -> TestResult {
    counted(m, stage, |r, count| {
        dma::object_model_unmaps_free_their_tables(r, count, how)
    })
}

/// [`dma::dma_api_frees_the_tables_its_freed_iovas_emptied`] at `stage`, counted likewise.
pub fn dma_api_frees_the_tables_its_freed_iovas_emptied(
    m: &mut Machine,
    stage: Stage,
) -> TestResult {
    counted(
        m,
        stage,
        dma::dma_api_frees_the_tables_its_freed_iovas_emptied,
    )
}

/// Runs `test` at `stage` with its invalidations counted from the command queue: TLBI commands
/// and CMD_SYNCs.
fn counted(
    m: &mut Machine,
    stage: Stage,
    test: impl FnOnce(&Rig<'static, Unit>, dma::InvalidationCounter<'_>) -> TestResult,
) -> TestResult {
    use super::cmdq_watch::CommandWatch;
    use iommu_smmuv3::command::opcode;
    let r = rig(m, stage)?;
    allow_guest_error(TRANSLATION_FAILED);
    let m = &*m;
    let count = |f: &mut dyn FnMut() -> TestResult| -> Result<(u64, u64), Failure> {
        let watch = CommandWatch::start(m)?;
        f()?;
        let ops = watch.opcodes();
        let tlbi = ops
            .iter()
            .filter(|&&o| (opcode::TLBI_NH_ALL..=opcode::TLBI_NSNH_ALL).contains(&o))
            .count();
        let syncs = ops.iter().filter(|&&o| o == opcode::SYNC).count();
        Ok((tlbi as u64, syncs as u64))
    };
    test(&r, &count)
}

pub fn smmu_brings_up(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    let regs = smmu_regs(m)?;
    // SAFETY: as in `bring_up`; these reads have no side effect.
    let r = unsafe { regs.as_ref() };
    ensure!(r.cr0ack.is_set(CR0::SMMUEN), "SMMUEN acknowledged");
    ensure!(
        r.cr0ack.is_set(CR0::CMDQEN) && r.cr0ack.is_set(CR0::EVENTQEN),
        "queues enabled"
    );
    ensure!(r.gbpa.is_set(GBPA::ABORT), "GBPA left at abort");
    ensure_eq!(r.gerror.get(), r.gerrorn.get(), "no global error active");
    ensure!(
        matches!(
            unit.stream_table_geometry(),
            StreamTableGeometry::TwoLevel { .. }
        ),
        "2-level stream table where IDR0.ST_LEVEL allows"
    );
    // A command round trip through the live queue.
    unit.command_queue()
        .issue(&Command::TlbiNsnhAll)
        .map_err(fail)?;
    Ok(())
}

/// A buffer of `size` bytes aligned to `size` (granules and blocks larger than a page).
pub struct Aligned {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Aligned {
    pub fn new(size: usize, fill: u8) -> Result<Self, Failure> {
        let layout = Layout::from_size_align(size, size).map_err(fail)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc(layout) };
        let ptr = NonNull::new(p).ok_or_else(|| fail("out of heap for an aligned buffer"))?;
        // SAFETY: `size` bytes were just allocated at `ptr`.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), fill, size) };
        Ok(Self { ptr, layout })
    }
    pub fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.ptr.as_ptr() as u64)
    }
    pub fn get(&self, i: usize) -> u8 {
        // SAFETY: reduced into the allocation; volatile because DMA writes it.
        unsafe {
            self.ptr
                .as_ptr()
                .add(i % self.layout.size())
                .read_volatile()
        }
    }
    pub fn set(&self, i: usize, v: u8) {
        // SAFETY: as in `get`.
        unsafe {
            self.ptr
                .as_ptr()
                .add(i % self.layout.size())
                .write_volatile(v)
        }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// edu reads 64 bytes at `iova + src` and writes them back at `iova + dst`; checks they landed at
/// `buf + dst`.
pub(super) fn copy_through(
    edu: &EduDevice,
    buf: &Aligned,
    iova: u64,
    src: usize,
    dst: usize,
) -> TestResult {
    (0..64).for_each(|i| buf.set(src + i, 0x40 + i as u8));
    edu.edu
        .dma_from_ram(iova + src as u64, 0, 64)
        .map_err(fail)?;
    edu.edu.dma_to_ram(0, iova + dst as u64, 64).map_err(fail)?;
    let landed = (0..64).all(|i| buf.get(dst + i) == 0x40 + i as u8);
    ensure!(
        landed,
        "DMA through {iova:#x}+{dst:#x} did not land at {:#x}",
        buf.phys().as_u64() + dst as u64
    );
    Ok(())
}

/// An empty domain of the preferred stage attached to `dev` (so every DMA of it faults), with
/// the faults recorded so far drained.
fn faulting_domain(
    unit: &Unit,
    dev: DeviceId,
) -> Result<<Unit as TranslationUnit>::Domain, Failure> {
    let domain = unit
        .new_domain(preferred_stage(unit), IA_BITS)
        .map_err(fail)?;
    unit.attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    Ok(domain)
}

/// The first edu on bus 0 and the stream id the SMMU sees it with.
pub(crate) fn first_edu(m: &Machine) -> Result<(EduDevice, DeviceId), Failure> {
    let edu = edu_devices(m)?
        .into_iter()
        .next()
        .ok_or_else(|| fail("needs an edu device"))?;
    let dev = rid_stream_id(&edu);
    Ok((edu, dev))
}

/// Stage 1 where the SMMU has it, else stage 2.
pub(super) fn preferred_stage(unit: &Unit) -> Stage {
    if unit.features().stages.stage1() {
        Stage::First
    } else {
        Stage::Second
    }
}

/// The stages the SMMU has.
pub(super) fn stages(unit: &Unit) -> Vec<Stage> {
    let s = unit.features().stages;
    [(s.stage1(), Stage::First), (s.stage2(), Stage::Second)]
        .into_iter()
        .filter_map(|(has, stage)| has.then_some(stage))
        .collect()
}

/// Fails unless a fault of `kind` by `dev` in the page of `iova` was recorded since the last
/// drain; returns whether the queue overflowed.
pub(crate) fn expect_fault(unit: &Unit, dev: DeviceId, iova: u64, kind: FaultKind) -> TestResult {
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    let hit = faults
        .iter()
        .any(|f| f.device == dev && f.address & !0xfff == iova & !0xfff && f.kind == kind);
    ensure!(
        hit,
        "expected a {kind:?} fault by {dev:?} at {iova:#x}, got {faults:?}"
    );
    Ok(())
}

/// One domain of `stage` and `granule` mapping one granule at `iova`: DMA through it lands in
/// the right place; after unmap, the same DMA is blocked and reported.
fn granule_round_trip(
    unit: &Unit,
    edu: &EduDevice,
    stage: Stage,
    granule: Granule,
    iova: u64,
) -> TestResult {
    let dev = rid_stream_id(edu);
    let size = 1usize << granule.shift();
    let buf = Aligned::new(size, 0)?;
    let domain = unit
        .new_domain_with_granule(stage, IA_BITS, granule)
        .map_err(fail)?;
    unit.map(
        &domain,
        Iova::new(iova),
        buf.phys(),
        size as u64,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    unit.attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    // Source in the first page of the granule, destination in its last: a wrong granule
    // size in the STE/CD would put one of them elsewhere.
    let landed = copy_through(edu, &buf, iova, 0, size - 128);
    let unmapped = unit
        .unmap(&domain, Iova::new(iova), size as u64)
        .map_err(fail);
    let blocked = edu.edu.dma_to_ram(0, iova + 64, 64).map_err(fail);
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    landed?;
    ensure_eq!(unmapped?, size as u64);
    blocked?;
    ensure!(
        (64..128).all(|i| buf.get(i) == 0),
        "a DMA after unmap reached the page: stale TLB entry"
    );
    expect_fault(unit, dev, iova + 64, FaultKind::Translation)
}

pub(crate) fn announce_faults() {
    allow_guest_error(TRANSLATION_FAILED);
}

/// A linear stream table (a bring-up with that format) translates like the 2-level one.
/// Must run before any 2-level bring-up of the boot: QEMU 10 sets its 2-level flag when
/// STRTAB_BASE_CFG.FMT = 2-level is written and never clears it.
pub fn linear_stream_table_translates(m: &mut Machine) -> TestResult {
    announce_faults();
    let geometry = StreamTableGeometry::linear(8).map_err(fail)?;
    let unit = bring_up(
        m,
        SmmuConfig {
            stream_table: Some(geometry),
            ..SmmuConfig::default()
        },
    );
    // The next test gets the default unit again, whatever happens here.
    *UNIT.lock() = None;
    let unit = unit?;
    ensure_eq!(unit.stream_table_geometry(), geometry);
    let (ref edu, _) = first_edu(m)?;
    granule_round_trip(unit, edu, preferred_stage(unit), Granule::Size4K, IOVA_A)
}

/// The 2-level stream table gets the level-2 table of a stream when the stream is attached.
pub fn two_level_stream_table_grows_on_attach(m: &mut Machine) -> TestResult {
    announce_faults();
    let unit = bring_up(m, default_config(m)?)?;
    if !matches!(
        unit.stream_table_geometry(),
        StreamTableGeometry::TwoLevel { .. }
    ) {
        skip!("the SMMU has no 2-level stream tables");
    }
    let (ref edu, dev) = first_edu(m)?;
    ensure!(
        unit.stream_table_entry(dev.0).is_err(),
        "a level-2 table before any attach"
    );
    granule_round_trip(unit, edu, preferred_stage(unit), Granule::Size4K, IOVA_A)?;
    ensure!(
        unit.stream_table_entry(dev.0).is_ok(),
        "no level-2 table after attach"
    );
    Ok(())
}

/// 4K, 16K and 64K granules, on every stage the SMMU has.
pub fn granules_4k_16k_64k_translate(m: &mut Machine) -> TestResult {
    announce_faults();
    let unit = unit(m)?;
    let (ref edu, _) = first_edu(m)?;
    let g = unit.features().granules;
    for stage in stages(unit) {
        for (has, granule) in [
            (g.size_4k, Granule::Size4K),
            (g.size_16k, Granule::Size16K),
            (g.size_64k, Granule::Size64K),
        ] {
            if has {
                granule_round_trip(unit, edu, stage, granule, IOVA_A)
                    .map_err(|e| fail(alloc::format!("{stage:?} {granule:?}: {e:?}")))?;
            }
        }
    }
    Ok(())
}

/// A 2 MiB block mapping (4K granule, level 2) translates at an offset inside the block.
pub fn block_mapping_translates(m: &mut Machine) -> TestResult {
    announce_faults();
    const BLOCK: usize = 2 << 20;
    const IOVA: u64 = 0x4000_0000;
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    for stage in stages(unit) {
        let buf = Aligned::new(BLOCK, 0)?;
        let domain = unit
            .new_domain_with_granule(stage, IA_BITS, Granule::Size4K)
            .map_err(fail)?;
        unit.map(
            &domain,
            Iova::new(IOVA),
            buf.phys(),
            BLOCK as u64,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
        ensure_eq!(
            domain.leaf_size(Iova::new(IOVA + 0x12_3000)),
            Some(BLOCK as u64),
            "{stage:?}: one block"
        );
        unit.attach(dev, Attachment::Paging(&domain))
            .map_err(fail)?;
        let landed = copy_through(edu, &buf, IOVA, 0x10_0000, 0x1f_f000);
        let unmapped = unit
            .unmap(&domain, Iova::new(IOVA), BLOCK as u64)
            .map_err(fail);
        unit.attach(dev, Attachment::Blocking).map_err(fail)?;
        landed.map_err(|e| fail(alloc::format!("{stage:?}: {e:?}")))?;
        ensure_eq!(unmapped?, BLOCK as u64);
    }
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    Ok(())
}

/// A bypass STE (Attachment::Identity): DMA addresses are physical addresses.
pub fn bypass_ste_passes_physical_addresses(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    let buf = DmaBuffer::new(0)?;
    (0..64).for_each(|i| buf.set(i, 0x70 + i as u8));
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    unit.attach(dev, Attachment::Identity).map_err(fail)?;
    let phys = buf.phys().as_u64();
    let dma = edu
        .edu
        .dma_from_ram(phys, 0, 64)
        .and_then(|()| edu.edu.dma_to_ram(0, phys + 1024, 64));
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    dma.map_err(fail)?;
    ensure!(
        (0..64).all(|i| buf.get(1024 + i) == 0x70 + i as u8),
        "bypassed DMA did not land"
    );
    let mut n = 0;
    unit.drain_faults(&mut |_| n += 1).map_err(fail)?;
    ensure_eq!(n, 0, "faults under bypass");
    Ok(())
}

/// An aborting STE: DMA refused and, as the architecture says, nothing recorded.
pub fn abort_ste_refuses_silently(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    let victim = DmaBuffer::new(0x99)?;
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    unit.abort_stream(dev.0).map_err(fail)?;
    let dma = edu.edu.dma_to_ram(0, victim.phys().as_u64(), 64);
    let mut n = 0;
    let drained = unit.drain_faults(&mut |_| n += 1).map_err(fail);
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    dma.map_err(fail)?;
    drained?;
    ensure!(
        victim.all(0..4096, 0x99),
        "a DMA through an aborting STE reached memory"
    );
    ensure_eq!(n, 0, "an aborting STE records no event");
    Ok(())
}

/// An event storm: a 4 KiB faulting DMA makes 1024 events for a 128-entry queue; the loss
/// is reported, and the events of a later fault are reported whole.
pub fn event_storm_overflows_and_recovers(m: &mut Machine) -> TestResult {
    announce_faults();
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    // Kept alive (not `_`) while the device is attached to it.
    let _domain = faulting_domain(unit, dev)?;
    let storm = edu.edu.dma_to_ram(0, IOVA_A, 4096);
    let mut first = Vec::new();
    let flood = unit.drain_faults(&mut |f| first.push(f)).map_err(fail);
    let later = edu.edu.dma_to_ram(0, dma::IOVA_B, 64);
    let mut second = Vec::new();
    let after = unit.drain_faults(&mut |f| second.push(f)).map_err(fail);
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    storm.map_err(fail)?;
    later.map_err(fail)?;
    let (flood, after) = (flood?, after?);
    ensure!(
        flood.overflow,
        "1024 events into a 128-entry queue: overflow not reported ({} records)",
        flood.records
    );
    ensure!(
        flood.records > 0 && flood.records <= 128,
        "{} records from a full 128-entry queue",
        flood.records
    );
    ensure!(
        first
            .iter()
            .all(|f| f.device == dev && f.kind == FaultKind::Translation),
        "storm records: {first:?}"
    );
    ensure!(!after.overflow, "overflow reported again after recovery");
    ensure_eq!(
        after.records,
        16,
        "one event per 4 bytes of the later 64-byte DMA"
    );
    ensure!(
        second
            .iter()
            .all(|f| f.device == dev && f.address & !0xfff == dma::IOVA_B && f.write),
        "later events: {second:?}"
    );
    Ok(())
}

/// An illegal command: CERROR_ILL reported as a typed error, the queue recovers, later
/// commands (and the invalidations of an unmap) complete.
pub fn illegal_command_is_reported_and_queue_recovers(m: &mut Machine) -> TestResult {
    allow_guest_error("Illegal command type");
    allow_guest_error(TRANSLATION_FAILED);
    let unit = unit(m)?;
    // Opcode 0x7f is not a command (IHI 0070 4.1).
    let bad = [0x7f_u64, 0];
    let ok = Command::TlbiNsnhAll.encode().map_err(fail)?;
    match unit.submit_raw(&[ok, bad, ok]) {
        Err(CmdqError::Command(f)) => {
            ensure_eq!(f.code, CommandErrorCode::Illegal);
            ensure_eq!(
                f.position,
                1,
                "the failed command's position in the submission"
            );
            ensure_eq!(f.command, bad);
        }
        other => return Err(fail(alloc::format!("expected CERROR_ILL, got {other:?}"))),
    }
    unit.command_queue()
        .issue(&Command::TlbiNsnhAll)
        .map_err(fail)?;
    let regs = smmu_regs(m)?;
    // SAFETY: as in `bring_up`; reads without side effects.
    let r = unsafe { regs.as_ref() };
    ensure_eq!(
        r.gerror.get() & 1,
        r.gerrorn.get() & 1,
        "CMDQ_ERR acknowledged"
    );
    let (ref edu, _) = first_edu(m)?;
    granule_round_trip(unit, edu, preferred_stage(unit), Granule::Size4K, IOVA_A)
}

/// Issue 13: every CPU submits commands with its own CMD_SYNC to the one command queue while
/// one CPU submits an illegal command: only that CPU gets CERROR_ILL.
pub fn an_illegal_command_is_reported_to_its_cpu_only(m: &mut Machine) -> TestResult {
    allow_guest_error("Illegal command type");
    let unit = unit(m)?;
    let ok = Command::TlbiNsnhAll.encode().map_err(fail)?;
    let bad = [0x7f_u64, 0];
    crate::smp::an_illegal_command_is_reported_to_its_cpu_only(
        m,
        move || unit.submit_raw(&[ok]).map_err(|e| alloc::format!("{e}")),
        move || match unit.submit_raw(&[ok, bad]) {
            Err(CmdqError::Command(f))
                if f.code == CommandErrorCode::Illegal && f.command == bad =>
            {
                Ok(())
            }
            other => Err(alloc::format!(
                "expected CERROR_ILL for its command, got {other:?}"
            )),
        },
    )?;
    let (ref edu, _) = first_edu(m)?;
    granule_round_trip(unit, edu, preferred_stage(unit), Granule::Size4K, IOVA_A)
}

/// The demo: the SMMU brought up, an edu attached, a DMA landing, a bad DMA blocked with
/// its decoded event.
pub fn demo(m: &mut Machine) -> TestResult {
    use iommu_boot::println;
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    let stage = preferred_stage(unit);
    println!(
        "SMMUv3 enabled: {}, every stream aborting until attached",
        match unit.stream_table_geometry() {
            StreamTableGeometry::Linear { log2_entries } => {
                alloc::format!("linear stream table of 2^{log2_entries} entries")
            }
            StreamTableGeometry::TwoLevel { sid_bits, split } => alloc::format!(
                "2-level stream table ({sid_bits} stream id bits, level-2 tables of 2^{split})"
            ),
        }
    );
    let buf = DmaBuffer::new(0)?;
    (0..64).for_each(|i| buf.set(i, i as u8));
    let domain = unit.new_domain(stage, IA_BITS).map_err(fail)?;
    unit.map(
        &domain,
        Iova::new(IOVA_A),
        buf.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    unit.attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    println!(
        "edu {} (stream {:#x}) attached to a {stage} domain ({} {}): IOVA {IOVA_A:#x} -> {}",
        edu.bdf,
        dev.0,
        if stage == Stage::First {
            "ASID"
        } else {
            "VMID"
        },
        domain.tag(),
        buf.phys()
    );
    edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    let landed = (0..64).all(|i| buf.get(2048 + i) == i as u8);
    println!(
        "DMA round trip through IOVA {IOVA_A:#x}: 64 bytes {} at {:#x}",
        if landed { "landed" } else { "did NOT land" },
        buf.phys().as_u64() + 2048
    );
    edu.edu.dma_to_ram(0, dma::IOVA_B, 4).map_err(fail)?;
    println!(
        "DMA to unmapped IOVA {:#x} blocked; the SMMU reported:",
        dma::IOVA_B
    );
    unit.drain_events(&mut |e| println!("  {e}"));
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    Ok(())
}

/// nested translation. A stage-1 domain whose CD table, table walks and output
/// addresses are IPAs of a stage-2 domain that maps exactly those pages (IPA = PA): the DMA
/// lands; once stage 2 stops mapping the stage-1 leaf table, the same DMA faults at stage 2
/// while walking stage 1, and the event says so.
pub fn nested_stage1_walks_go_through_stage2(m: &mut Machine) -> TestResult {
    use iommu::pagetable::EntryKind;
    use iommu_smmuv3::eventq::FaultClass;
    announce_faults();
    let unit = unit(m)?;
    let s = unit.features().stages;
    if !(s.stage1() && s.stage2()) {
        skip!("nesting needs both stages");
    }
    let (ref edu, dev) = first_edu(m)?;
    let buf = Aligned::new(4096, 0)?;
    let s1 = unit.new_domain(Stage::First, IA_BITS).map_err(fail)?;
    let s2 = unit.new_domain(Stage::Second, IA_BITS).map_err(fail)?;
    unit.map(&s1, Iova::new(IOVA_A), buf.phys(), 4096, Prot::READ_WRITE)
        .map_err(fail)?;
    // What stage 2 must map: the CD, every stage-1 table on the way to IOVA_A, the buffer.
    let walk = s1
        .walk(Iova::new(IOVA_A))
        .ok_or_else(|| fail("stage-1 walk failed"))?;
    let tables: Vec<u64> = walk.steps().iter().map(|st| st.table.as_u64()).collect();
    ensure!(
        matches!(walk.leaf().map(|l| l.kind), Some(EntryKind::Leaf { .. })),
        "IOVA_A mapped"
    );
    let cd = s1
        .context_descriptor_table()
        .ok_or_else(|| fail("no CD table"))?;
    let mut pages: Vec<u64> = tables.clone();
    pages.push(cd.as_u64() & !0xfff);
    pages.push(buf.phys().as_u64());
    pages.sort_unstable();
    pages.dedup();
    for &p in &pages {
        unit.map(&s2, Iova::new(p), PhysAddr::new(p), 4096, Prot::READ_WRITE)
            .map_err(fail)?;
    }
    unit.attach_nested(dev, &s1, &s2).map_err(fail)?;
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    let landed = copy_through(edu, &buf, IOVA_A, 0, 2048);
    // A second stage-1 page, unmapped again after a DMA cached it: TLBI_NH_VA must name the
    // parent's VMID, or the nested stream keeps reaching the page.
    let second = Aligned::new(4096, 0x33)?;
    let second_iova = IOVA_A + 0x1_0000;
    unit.map(
        &s1,
        Iova::new(second_iova),
        second.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    unit.map(
        &s2,
        Iova::new(second.phys().as_u64()),
        second.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    let cached = edu.edu.dma_to_ram(0, second_iova, 64);
    let s1_unmapped = unit.unmap(&s1, Iova::new(second_iova), 4096).map_err(fail);
    (0..4096).for_each(|i| second.set(i, 0x33));
    let stale = edu.edu.dma_to_ram(0, second_iova, 64);
    // Stage 2 stops mapping the stage-1 leaf table (unless the CD or the buffer shares it).
    let leaf_table = tables.last().copied().ok_or_else(|| fail("empty walk"))?;
    let unmapped = unit.unmap(&s2, Iova::new(leaf_table), 4096).map_err(fail);
    buf.set(1024, 0x5a);
    let after = edu.edu.dma_to_ram(0, IOVA_A + 1024, 4);
    let mut events = Vec::new();
    unit.drain_events(&mut |e| events.push(*e));
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    landed?;
    cached.map_err(fail)?;
    ensure_eq!(s1_unmapped?, 4096);
    stale.map_err(fail)?;
    ensure!(
        (0..4096).all(|i| second.get(i) == 0x33),
        "a nested DMA reached a page after its stage-1 unmap: stale TLB entry"
    );
    ensure_eq!(unmapped?, 4096);
    after.map_err(fail)?;
    ensure_eq!(
        buf.get(1024),
        0x5a,
        "DMA landed although its stage-1 walk lost its stage-2 mapping"
    );
    // The record names the stage-1 table walk (CLASS = TT) and the IPA that stage 2 could not
    // translate (word 3). QEMU 10 leaves the record's S2 bit clear for it, so the decoded
    // `stage`/`ipa` are not relied on; the raw IPA field is.
    let hit = events.iter().any(|e| {
        e.stream_id == dev.0
            && e.class == Some(FaultClass::TranslationTable)
            && e.raw[3] & 0x000f_ffff_ffff_f000 == leaf_table
    });
    ensure!(
        hit,
        "expected a stage-2 fault walking stage-1 table {leaf_table:#x}, got {events:?}"
    );
    Ok(())
}

/// The machine's GIC from the devicetree, initialised (distributor and CPU interface on, no
/// interrupt enabled; GICv2 or GICv3 with affinity routing), and the event queue's SPI with
/// whether it is edge-triggered.
fn gic_and_eventq_spi(m: &Machine) -> Result<(gic::Controller, u32, bool), Failure> {
    let dt = devicetree(m)?;
    let smmu = dt
        .smmus()
        .next()
        .ok_or_else(|| fail("no arm,smmu-v3 node"))?
        .map_err(fail)?;
    let irq = smmu
        .interrupts
        .eventq
        .ok_or_else(|| fail("no eventq interrupt in the devicetree"))?;
    let intid = irq
        .gic_intid()
        .ok_or_else(|| fail(alloc::format!("eventq interrupt {irq} is not a GIC SPI")))?;
    let edge = matches!(
        irq,
        Interrupt::Gic {
            trigger: Trigger::EdgeRising | Trigger::EdgeFalling,
            ..
        }
    );
    let gic = crate::platform::gic(m)?;
    gic.configure_spi(intid, edge).map_err(fail)?;
    Ok((gic, intid, edge))
}

/// The event queue's wired interrupt: with SMMU_IRQ_CTRL.EVENTQ_IRQEN a recorded fault makes
/// the SPI the devicetree names pending at the GIC; without it, none. The SPI stays disabled
/// and IRQs masked, so the CPU takes no exception: the test watches the pending bit.
pub fn eventq_interrupt_raises_its_spi(m: &mut Machine) -> TestResult {
    announce_faults();
    let (gic, intid, edge) = gic_and_eventq_spi(m)?;
    ensure!(edge, "virt wires the SMMU's SPIs edge-triggered");
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    // Kept alive (not `_`) while the device is attached to it.
    let _domain = faulting_domain(unit, dev)?;
    gic.clear_pending(intid).map_err(fail)?;
    // Without the enable: a fault, no interrupt.
    let quiet = edu.edu.dma_to_ram(0, IOVA_A, 4);
    let pending_without = gic.is_pending(intid).map_err(fail)?;
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    // With it: the same fault pulses the SPI.
    let enabled = unit.set_wired_interrupts(true, false).map_err(fail);
    let loud = edu.edu.dma_to_ram(0, IOVA_A, 4);
    let pending_with = gic.is_pending(intid).map_err(fail)?;
    let off = unit.set_wired_interrupts(false, false).map_err(fail);
    gic.clear_pending(intid).map_err(fail)?;
    let mut n = 0;
    unit.drain_faults(&mut |_| n += 1).map_err(fail)?;
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    quiet.map_err(fail)?;
    enabled?;
    loud.map_err(fail)?;
    off?;
    ensure!(
        !pending_without,
        "SPI {intid} pending with EVENTQ_IRQEN off"
    );
    ensure!(
        pending_with,
        "SPI {intid} not pending after an event with EVENTQ_IRQEN on"
    );
    ensure_eq!(n, 1, "the one 4-byte faulting DMA's event");
    Ok(())
}

/// Interrupt-driven events: a faulting DMA raises the event queue's SPI (from the
/// devicetree), the CPU takes it as an IRQ, the boot code's handler acknowledges it at the GIC,
/// records its id and ends it, and the drain then reports the decoded event. IRQs are unmasked
/// only around the DMA.
pub fn eventq_irq_is_taken_and_the_event_drained(m: &mut Machine) -> TestResult {
    announce_faults();
    let (gic, intid, _) = gic_and_eventq_spi(m)?;
    let unit = unit(m)?;
    let (ref edu, dev) = first_edu(m)?;
    // Kept alive (not `_`) while the device is attached to it.
    let _domain = faulting_domain(unit, dev)?;
    gic.clear_pending(intid).map_err(fail)?;
    let before = gic::irqs_taken();
    gic.enable(intid).map_err(fail)?;
    let enabled = unit.set_wired_interrupts(true, false).map_err(fail);
    let (dma, taken) = gic::with_irqs_unmasked(|| {
        let dma = edu.edu.dma_to_ram(0, dma::IOVA_B, 4);
        // The event is recorded when the DMA runs, inside the wait above; give a late
        // interrupt a bounded moment more.
        let taken = poll_until("the eventq IRQ", DEFAULT_POLL_BUDGET, || {
            gic::irqs_taken() != before
        });
        (dma, taken)
    });
    let after = gic::irqs_taken();
    let off = unit.set_wired_interrupts(false, false).map_err(fail);
    let disabled = gic.disable(intid).map_err(fail);
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    enabled?;
    dma.map_err(fail)?;
    off?;
    disabled?;
    taken.map_err(|e| fail(alloc::format!("SPI {intid}: no IRQ taken: {e}")))?;
    ensure_eq!(
        gic::last_irq(),
        Some(intid),
        "the handler recorded the eventq SPI"
    );
    ensure!(
        after.wrapping_sub(before) >= 1,
        "IRQ count did not move ({before} -> {after})"
    );
    ensure!(
        faults.len() == 1
            && faults.iter().all(|f| f.device == dev
                && f.address == dma::IOVA_B
                && f.write
                && f.kind == FaultKind::Translation),
        "the drain after the IRQ: {faults:?}"
    );
    Ok(())
}

/// The alias test of [`crate::alias`] on a freshly brought-up SMMU (earlier tests may leave one
/// with a small event queue or a linear stream table that does not reach bus 2), naming devices
/// by the stream id the devicetree's `iommu-map` gives their requester id and the alias's.
pub(super) fn bridged_devices_share_an_alias_and_a_group(m: &mut Machine) -> TestResult {
    let unit = bring_up(m, default_config(m)?)?;
    let dt = devicetree(m)?;
    let host = dt
        .pci_hosts()
        .next()
        .ok_or_else(|| fail("no PCIe host"))?
        .map_err(fail)?;
    let sid = |bdf: iommu::pci::Bdf| -> Result<DeviceId, Failure> {
        let (_, sid) = dt.stream_id(&host, bdf.requester_id()).map_err(fail)?;
        Ok(DeviceId(sid))
    };
    allow_guest_error(TRANSLATION_FAILED);
    crate::alias::bridged_devices_share_an_alias_and_a_group(m, unit, preferred_stage(unit), &sid)
}
