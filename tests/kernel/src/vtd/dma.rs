//! VT-d DMA tests: the unit brought up once per boot, the generic DMA tests of [`crate::dma`] run
//! through it (second stage on legacy and scalable machines, first stage through PASID entries
//! on `vtd.mode=flts`), then what only VT-d has: superpages, the top of the address width,
//! pass-through and blocking, a fault storm, a rejected queue descriptor, invalidation counts.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;

use super::{dmar, expected, registers, the_drhd, Mode as MachineMode};
use crate::dma::{self, DmaBuffer, Rig, IOVA_A, IOVA_B};
use crate::hal::{KernelHal, HAL};
use crate::platform::{edu_devices, EduDevice};
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::{Error as PtError, Prot};
use iommu::unit::{Attachment, DeviceId, FaultKind, Stage, TranslationUnit, UnitError};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println};
use iommu_vtd::descriptor::{Descriptor, IotlbScope};
use iommu_vtd::qi::{QiError, QueueSize};
use iommu_vtd::registers::{Readable, GSTS};
use iommu_vtd::unit::{
    plan_flush, FlushLimits, FlushPlan, IovaRange, Mode, VtdUnit, FLUSH_THRESHOLD,
};

pub(super) type Unit = VtdUnit<'static, &'static KernelHal>;

/// The unit, brought up by the first test that needs it.
static UNIT: spin::Once<Result<Unit, String>> = spin::Once::new();

/// The unit of this machine, brought up on first use (legacy or scalable per `vtd.mode`).
pub(super) fn unit(m: &Machine) -> Result<&'static Unit, Failure> {
    let mode = match m.cmdline.get("vtd.mode") {
        Some("scalable" | "flts") => Mode::Scalable,
        _ => Mode::Legacy,
    };
    UNIT.call_once(|| {
        bring_up(m, mode).map_err(|e| match e {
            Failure::Failed(s) | Failure::Skipped(s) => s,
        })
    })
    .as_ref()
    .map_err(|e| fail(alloc::format!("VT-d bring-up failed: {e}")))
}

/// The unit, if a test brought it up already (for the interrupt handler, which cannot bring
/// it up itself).
pub(super) fn the_unit() -> Option<&'static Unit> {
    UNIT.get().and_then(|r| r.as_ref().ok())
}

fn bring_up(m: &Machine, mode: Mode) -> Result<Unit, Failure> {
    let dmar = dmar(m)?;
    let drhd = the_drhd(&dmar)?;
    // The unit lives for the whole boot: its registers are leaked on purpose.
    let regs: &'static _ = Box::leak(Box::new(registers(&drhd)?));
    let hal: &'static KernelHal = &HAL;
    Unit::new(
        regs,
        hal,
        mode,
        u32::from(dmar.host_address_width()),
        QueueSize::ONE_PAGE,
    )
    .map_err(fail)
}

pub(super) fn device_id(e: &EduDevice) -> DeviceId {
    DeviceId(u32::from(e.bdf.requester_id()))
}

/// The stage the machine's paging domains use: first stage where second-stage PASID entries
/// do not exist (`x-flts=on` clears SLTS).
pub(super) fn stage(m: &Machine) -> Stage {
    match m.cmdline.get("vtd.mode") {
        Some("flts") => Stage::First,
        _ => Stage::Second,
    }
}

pub(crate) fn rig(m: &Machine) -> Result<Rig<'static, Unit>, Failure> {
    Ok(Rig {
        unit: unit(m)?,
        edus: edu_devices(m)?,
        device_id,
        stage: stage(m),
    })
}

pub(super) fn vtd_unit_comes_up_translating(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    let regs = registers(&the_drhd(&dmar(m)?)?)?;
    let gsts = &regs.block().gsts;
    ensure!(gsts.is_set(GSTS::TES), "translation not enabled");
    ensure!(gsts.is_set(GSTS::RTPS), "root table pointer not latched");
    ensure_eq!(
        gsts.is_set(GSTS::QIES),
        unit.queue().is_some(),
        "queued invalidation"
    );
    ensure_eq!(
        unit.mode() == Mode::Scalable,
        expected(m)?.mode != MachineMode::Legacy
    );
    ensure!(
        unit.drain_faults(&mut |_| {}).map_err(fail)?.records == 0,
        "faults after bring-up"
    );
    Ok(())
}

pub(super) fn mapped_dma_lands(m: &mut Machine) -> TestResult {
    dma::mapped_dma_lands(&rig(m)?)
}

/// [`dma::deferred_unmaps_fault_after_one_flush`], counted at the invalidation queue.
pub(super) fn deferred_unmaps_fault_after_one_flush(m: &mut Machine) -> TestResult {
    counted(m, dma::deferred_unmaps_fault_after_one_flush)
}

/// [`dma::emptied_tables_are_reclaimed`], counted at the invalidation queue.
pub(super) fn emptied_tables_are_reclaimed(m: &mut Machine) -> TestResult {
    counted(m, dma::emptied_tables_are_reclaimed)
}

/// [`dma::pruning_unmaps_free_the_tables_they_empty`], counted at the invalidation queue.
pub(super) fn pruning_unmaps_free_the_tables_they_empty(m: &mut Machine) -> TestResult {
    counted(m, dma::pruning_unmaps_free_the_tables_they_empty)
}

/// [`dma::object_model_unmaps_free_their_tables`] unmapping `how`, counted at the
/// invalidation queue.
pub(super) fn object_model_unmaps(m: &mut Machine, how: dma::ModelUnmap) -> TestResult {
    counted(m, |r, count| {
        dma::object_model_unmaps_free_their_tables(r, count, how)
    })
}

/// [`dma::dma_api_frees_the_tables_its_freed_iovas_emptied`], counted at the invalidation queue.
pub(super) fn dma_api_frees_the_tables_its_freed_iovas_emptied(m: &mut Machine) -> TestResult {
    counted(m, dma::dma_api_frees_the_tables_its_freed_iovas_emptied)
}

/// Runs `test` with its invalidations counted at the invalidation queue: IOTLB (or PASID-based
/// IOTLB) descriptors and wait descriptors, one wait per batch.
fn counted(
    m: &mut Machine,
    test: impl FnOnce(&Rig<'static, Unit>, dma::InvalidationCounter<'_>) -> TestResult,
) -> TestResult {
    let r = rig(m)?;
    if r.unit.queue().is_none() {
        iommu_boot::skip!("register-based invalidation: nothing to count");
    }
    let count = |f: &mut dyn FnMut() -> TestResult| -> Result<(u64, u64), Failure> {
        let (d0, b0) = r.unit.invalidations();
        f()?;
        let (d1, b1) = r.unit.invalidations();
        let (descriptors, waits) = (d1 - d0, b1 - b0);
        Ok((descriptors.saturating_sub(waits), waits))
    };
    test(&r, &count)
}

pub(super) fn unmapped_dma_is_blocked_and_reported(m: &mut Machine) -> TestResult {
    dma::unmapped_dma_is_blocked_and_reported(&rig(m)?)
}

pub(super) fn read_only_mapping_blocks_writes(m: &mut Machine) -> TestResult {
    dma::read_only_mapping_blocks_writes(&rig(m)?)
}

pub(super) fn no_stale_translation_after_unmap(m: &mut Machine) -> TestResult {
    dma::no_stale_translation_after_unmap(&rig(m)?)
}

pub(super) fn devices_in_different_domains_are_isolated(m: &mut Machine) -> TestResult {
    dma::devices_in_different_domains_are_isolated(&rig(m)?)
}

/// A 2 MiB, 2 MiB-aligned buffer (for a superpage), freed on drop.
struct BigBuffer(*mut u8);

const SUPERPAGE: usize = 2 << 20;

impl BigBuffer {
    fn new() -> Result<Self, Failure> {
        let layout = Layout::from_size_align(SUPERPAGE, SUPERPAGE).map_err(fail)?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(fail("no 2 MiB of heap for a superpage"));
        }
        Ok(Self(p))
    }

    fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.0 as u64)
    }

    fn get(&self, i: usize) -> u8 {
        // SAFETY: `i` is reduced into the 2 MiB the buffer owns; volatile: DMA writes it.
        unsafe { self.0.add(i % SUPERPAGE).read_volatile() }
    }
}

impl Drop for BigBuffer {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(SUPERPAGE, SUPERPAGE) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { alloc::alloc::dealloc(self.0, layout) }
        }
    }
}

/// Item 6: a 2 MiB mapping is one leaf; DMA at its last page lands 2 MiB - 4 KiB into the
/// buffer; a 4 KiB unmap inside it is refused (no splitting), the whole unmap works.
pub(super) fn superpage_2m_mapping_translates(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let big = BigBuffer::new()?;
    let iova = 0x4000_0000u64;
    let domain = r.unit.new_domain(r.stage, dma::IA_BITS).map_err(fail)?;
    r.unit
        .map(
            &domain,
            Iova::new(iova),
            big.phys(),
            SUPERPAGE as u64,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
    r.unit
        .attach(device_id(edu), Attachment::Paging(&domain))
        .map_err(fail)?;
    let last = SUPERPAGE as u64 - 4096;
    let src = DmaBuffer::new(0x5a)?;
    let src_dom_iova = iova - 0x1000_0000;
    r.unit
        .map(
            &domain,
            Iova::new(src_dom_iova),
            src.phys(),
            4096,
            Prot::READ,
        )
        .map_err(fail)?;
    edu.edu.dma_from_ram(src_dom_iova, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, iova + last + 8, 64).map_err(fail)?;
    let split = r.unit.unmap(&domain, Iova::new(iova), 4096);
    let whole = r.unit.unmap(&domain, Iova::new(iova), SUPERPAGE as u64);
    r.unit
        .attach(device_id(edu), Attachment::Blocking)
        .map_err(fail)?;
    let landed = (0..64).all(|i| big.get(last as usize + 8 + i) == 0x5a);
    ensure!(
        landed,
        "DMA through the 2 MiB mapping did not land at offset {last:#x}+8"
    );
    ensure!(big.get(last as usize) == 0, "DMA landed before its offset");
    ensure_eq!(split, Err(UnitError::PageTable(PtError::SplitsSuperpage)));
    ensure_eq!(whole, Ok(SUPERPAGE as u64));
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    Ok(())
}

/// Item 6: the last page below the domain's input width translates (edu uses a 64-bit mask);
/// one page further is refused by the table.
pub(super) fn mapping_at_top_of_address_width(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    // First stage: 4-level paging, the top of the lower canonical half; second stage: the
    // machine's aw-bits.
    let bits = match r.stage {
        Stage::First => 47,
        Stage::Second => u32::from(want.aw),
    };
    let top = (1u64 << bits) - 4096;
    let buf = DmaBuffer::new(0)?;
    let domain = r
        .unit
        .new_domain(r.stage, bits + u32::from(r.stage == Stage::First))
        .map_err(fail)?;
    r.unit
        .map(&domain, Iova::new(top), buf.phys(), 4096, Prot::READ_WRITE)
        .map_err(fail)?;
    let beyond = r.unit.map(
        &domain,
        Iova::new(top + 4096),
        buf.phys(),
        4096,
        Prot::READ_WRITE,
    );
    r.unit
        .attach(device_id(edu), Attachment::Paging(&domain))
        .map_err(fail)?;
    (0..64).for_each(|i| buf.set(i, 0xc0 + i as u8));
    edu.edu.dma_from_ram(top, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, top + 1024, 64).map_err(fail)?;
    r.unit
        .attach(device_id(edu), Attachment::Blocking)
        .map_err(fail)?;
    ensure!(
        (0..64).all(|i| buf.get(1024 + i) == 0xc0 + i as u8),
        "DMA through IOVA {top:#x} did not land"
    );
    ensure!(beyond.is_err(), "a mapping at 2^{bits} was accepted");
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    Ok(())
}

/// Item 6: an identity (pass-through) attachment: the DMA address is the physical address.
pub(super) fn identity_attachment_passes_dma_through(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let buf = DmaBuffer::new(0)?;
    (0..64).for_each(|i| buf.set(i, 0x10 + i as u8));
    r.unit
        .attach(device_id(edu), Attachment::Identity)
        .map_err(fail)?;
    let phys = buf.phys().as_u64();
    edu.edu.dma_from_ram(phys, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, phys + 2048, 64).map_err(fail)?;
    r.unit
        .attach(device_id(edu), Attachment::Blocking)
        .map_err(fail)?;
    ensure!(
        (0..64).all(|i| buf.get(2048 + i) == 0x10 + i as u8),
        "pass-through DMA did not land"
    );
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    Ok(())
}

/// Item 6: a device attached, then blocked: its DMA is refused and reported as a configuration
/// fault (context entry or PASID entry not present) naming the device.
pub(super) fn blocked_device_faults_with_its_reason(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let dev = device_id(edu);
    let buf = DmaBuffer::new(0x66)?;
    r.unit.attach(dev, Attachment::Identity).map_err(fail)?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    r.faults()?;
    edu.edu
        .dma_to_ram(0, buf.phys().as_u64(), 4)
        .map_err(fail)?;
    ensure!(
        buf.all(0..4096, 0x66),
        "a blocked device's DMA reached memory"
    );
    let faults = r.faults()?;
    let want = match r.unit.mode() {
        Mode::Legacy => 0x02,
        Mode::Scalable => 0x59,
    };
    ensure!(
        faults
            .iter()
            .any(|f| f.device == dev && f.kind == FaultKind::Configuration && f.code == want),
        "expected a configuration fault {want:#x} by {dev:?}, got {faults:?}"
    );
    Ok(())
}

/// Item 8: QEMU has one recording register and folds repeated faults of the device already
/// recorded into that record, so a storm from three devices (one blocked, one at an unmapped
/// IOVA, one never attached) overflows it: the overflow is flagged, the drain clears it, and a
/// later single fault is reported alone.
pub(super) fn fault_storm_overflow_is_flagged_and_cleared(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let (Some(e0), Some(e1), Some(e2)) = (r.edus.first(), r.edus.get(1), r.edus.get(2)) else {
        return Err(fail("needs three edu devices"));
    };
    let (d0, d1, d2) = (device_id(e0), device_id(e1), device_id(e2));
    let buf = DmaBuffer::new(0x44)?;
    let domain = r.domain_with(&[(IOVA_A, &buf, Prot::READ_WRITE)])?;
    r.unit
        .attach(d0, Attachment::Paging(&domain))
        .map_err(fail)?;
    r.unit.attach(d1, Attachment::Identity).map_err(fail)?;
    r.unit.attach(d1, Attachment::Blocking).map_err(fail)?;
    r.faults()?;
    let storm_iova = IOVA_A + 0x10_0000;
    for _ in 0..4 {
        e0.edu.dma_to_ram(0, storm_iova, 64).map_err(fail)?;
        e1.edu
            .dma_to_ram(0, buf.phys().as_u64(), 64)
            .map_err(fail)?;
        e2.edu
            .dma_to_ram(0, buf.phys().as_u64(), 64)
            .map_err(fail)?;
    }
    let mut first = Vec::new();
    let storm = r.unit.drain_faults(&mut |f| first.push(f)).map_err(fail)?;
    let mut none = Vec::new();
    let after = r.unit.drain_faults(&mut |f| none.push(f)).map_err(fail)?;
    e0.edu.dma_to_ram(0, storm_iova, 4).map_err(fail)?;
    let mut later = Vec::new();
    let single = r.unit.drain_faults(&mut |f| later.push(f)).map_err(fail)?;
    r.unit.attach(d0, Attachment::Blocking).map_err(fail)?;
    ensure!(
        storm.overflow,
        "a storm from three devices did not flag an overflow: {first:?}"
    );
    ensure!(storm.records >= 1, "the storm left no record");
    ensure!(
        first
            .iter()
            .all(|f| [d0, d1, d2].contains(&f.device) && f.write),
        "storm records: {first:?}"
    );
    ensure!(
        !after.overflow && after.records == 0,
        "overflow not cleared: {after:?} {none:?}"
    );
    ensure!(!single.overflow, "a single fault flagged an overflow");
    ensure_eq!(single.records, 1, "records of one 4-byte faulting DMA");
    ensure!(
        later
            .iter()
            .all(|f| f.device == d0 && f.address == storm_iova && f.kind == FaultKind::Translation),
        "later fault: {later:?}"
    );
    ensure!(buf.all(0..4096, 0x44), "the storm reached memory");
    Ok(())
}

/// Item 9: a descriptor of a reserved type stops the queue (FSTS.IQE); the driver reports it as
/// a typed error naming the descriptor, restarts the queue, and later invalidations work (an
/// unmap must still keep a DMA out).
pub(super) fn invalid_descriptor_is_reported_and_queue_recovers(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let Some(q) = r.unit.queue() else {
        iommu_boot::skip!("the unit has no invalidation queue")
    };
    iommu_boot::testing::allow_guest_error("vtd_process_inv_desc");
    iommu_boot::testing::allow_guest_error("invalid inv desc");
    // Type 0xf does not exist (6.5.2): the unit must refuse it.
    let bad = Descriptor::Raw([0xf, 0, 0, 0]);
    let result = q.submit_and_wait([bad]);
    ensure!(
        matches!(result, Err(QiError::InvalidDescriptor { index: 0, .. })),
        "expected InvalidDescriptor for descriptor 0, got {result:?}"
    );
    let good = Descriptor::Iotlb {
        scope: IotlbScope::Global,
        drain: Default::default(),
    };
    q.submit_and_wait([good]).map_err(fail)?;
    dma::no_stale_translation_after_unmap(&r)
}

/// Issue 13: every CPU submits batches to the one invalidation queue with its own wait while one
/// CPU submits a descriptor of a reserved type: only that CPU gets `InvalidDescriptor`.
pub(super) fn an_invalid_descriptor_is_reported_to_its_cpu_only(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    if unit.queue().is_none() {
        iommu_boot::skip!("the unit has no invalidation queue");
    }
    iommu_boot::testing::allow_guest_error("vtd_process_inv_desc");
    iommu_boot::testing::allow_guest_error("invalid inv desc");
    let q = move || unit.queue().ok_or_else(|| String::from("no queue"));
    let good = Descriptor::Iotlb {
        scope: IotlbScope::Global,
        drain: Default::default(),
    };
    crate::smp::an_illegal_command_is_reported_to_its_cpu_only(
        m,
        move || {
            q()?.submit_and_wait([good])
                .map_err(|e| alloc::format!("{e}"))
        },
        move || match q()?.submit_and_wait([good, Descriptor::Raw([0xf, 0, 0, 0])]) {
            Err(QiError::InvalidDescriptor { index: 1, .. }) => Ok(()),
            other => Err(alloc::format!(
                "expected InvalidDescriptor at 1, got {other:?}"
            )),
        },
    )?;
    dma::no_stale_translation_after_unmap(&rig(m)?)
}

/// Invalidation descriptors per operation, counted at the queue (waits included): one wait per
/// batch, page-selective with an address mask for a range, domain-selective past the threshold.
pub(super) fn invalidation_descriptor_counts(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    if r.unit.queue().is_none() {
        iommu_boot::skip!("register-based invalidation: nothing to count");
    }
    let buf = DmaBuffer::new(0)?;
    let domain = r.unit.new_domain(r.stage, dma::IA_BITS).map_err(fail)?;
    let count = |f: &mut dyn FnMut() -> TestResult| -> Result<(u64, u64), Failure> {
        let (d0, b0) = r.unit.invalidations();
        f()?;
        let (d1, b1) = r.unit.invalidations();
        Ok((d1 - d0, b1 - b1.min(b0)))
    };
    let map = |iova: u64, len: u64| -> TestResult {
        for off in (0..len).step_by(4096) {
            r.unit
                .map(&domain, Iova::new(iova + off), buf.phys(), 4096, Prot::READ)
                .map_err(fail)?;
        }
        Ok(())
    };
    // One page.
    map(IOVA_A, 4096)?;
    let one = count(&mut || {
        r.unit
            .unmap(&domain, Iova::new(IOVA_A), 4096)
            .map(|_| ())
            .map_err(fail)
    })?;
    // 16 pages, 64 KiB aligned: one descriptor with address mask 4.
    map(IOVA_A, 0x1_0000)?;
    let sixteen = count(&mut || {
        r.unit
            .unmap(&domain, Iova::new(IOVA_A), 0x1_0000)
            .map(|_| ())
            .map_err(fail)
    })?;
    // Two pages 20 GiB apart unmapped by one call: the range tiles into 21 blocks of 2^MAMV
    // pages, past the threshold, so one domain-selective descriptor.
    let far = IOVA_A + (20u64 << 30);
    map(IOVA_A, 4096)?;
    map(far, 4096)?;
    let span = far + 4096 - IOVA_A;
    let sparse = count(&mut || {
        r.unit
            .unmap(&domain, Iova::new(IOVA_A), span)
            .map(|_| ())
            .map_err(fail)
    })?;
    // Attach and map, for the record (they depend on the mode and on caching mode).
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let dev = device_id(edu);
    let other = r.unit.new_domain(r.stage, dma::IA_BITS).map_err(fail)?;
    let attach = count(&mut || {
        r.unit
            .attach(dev, Attachment::Paging(&domain))
            .map_err(fail)
    })?;
    let switch = count(&mut || r.unit.attach(dev, Attachment::Paging(&other)).map_err(fail))?;
    let block = count(&mut || r.unit.attach(dev, Attachment::Blocking).map_err(fail))?;
    let map_one = count(&mut || map(IOVA_B, 4096))?;
    println!(
        "invalidation descriptors / batches: attach {attach:?}, switch domain {switch:?}, \
         block {block:?}, map 4 KiB {map_one:?} (caching mode {})",
        r.unit.unit_info().cap.caching_mode()
    );
    ensure!(
        switch.1 >= 1 && block.1 >= 1,
        "switching or blocking a device invalidated nothing"
    );
    // What the unit issues for each, by the mode and caching mode it reports (the README's
    // table of commands per operation). Under caching mode a not-present entry made present
    // needs an invalidation too (6.1): the legacy first attach and the map.
    let caching_mode = r.unit.unit_info().cap.caching_mode();
    let expected = match (r.unit.mode(), caching_mode) {
        (Mode::Legacy, false) => [(0, 0), (3, 1), (3, 1), (0, 0)],
        (Mode::Legacy, true) => [(3, 1), (6, 2), (3, 1), (2, 1)],
        (Mode::Scalable, false) => [(3, 1), (8, 2), (5, 1), (0, 0)],
        (Mode::Scalable, true) => [(3, 1), (8, 2), (5, 1), (2, 1)],
    };
    ensure_eq!(
        [attach, switch, block, map_one],
        expected,
        "descriptors / batches of attach, switch, block, map 4 KiB"
    );
    let ranges = [IovaRange::new(Iova::new(IOVA_A), span)];
    let plan = plan_flush(
        &ranges,
        FlushLimits::for_unit(r.unit.unit_info().cap, FLUSH_THRESHOLD),
    );
    println!(
        "invalidation descriptors (incl. the wait) / batches: unmap 4 KiB {one:?}, 64 KiB {sixteen:?}, \
         sparse 20 GiB {sparse:?} (plan {plan:?})"
    );
    ensure_eq!(
        one,
        (2, 1),
        "one page: one page-selective descriptor and one wait"
    );
    ensure_eq!(
        sixteen,
        (2, 1),
        "16 pages: one descriptor with AM=4 and one wait"
    );
    ensure_eq!(
        sparse,
        (2, 1),
        "past the threshold: one domain-selective descriptor and one wait"
    );
    ensure_eq!(plan, FlushPlan::Domain);
    Ok(())
}

/// The demo's DMA part: a device attached, a DMA landing, a bad DMA blocked and its fault.
pub(super) fn demo(m: &Machine) -> Result<(), Failure> {
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu device"))?;
    let dev = device_id(edu);
    println!(
        "VT-d unit up in {} mode, translation enabled, every device blocked",
        match r.unit.mode() {
            Mode::Legacy => "legacy",
            Mode::Scalable => "scalable",
        }
    );
    let buf = DmaBuffer::new(0)?;
    b"hello, VT-d DMA!"
        .iter()
        .enumerate()
        .for_each(|(i, &c)| buf.set(i, c));
    let domain = r.domain_with(&[(IOVA_A, &buf, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    println!(
        "edu {} attached to domain {} ({} tables): IOVA {IOVA_A:#x} -> {}",
        edu.bdf,
        domain.id().raw(),
        domain.stage(),
        buf.phys()
    );
    edu.edu.dma_from_ram(IOVA_A, 0, 16).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 16).map_err(fail)?;
    let landed: Vec<u8> = (0..16).map(|i| buf.get(2048 + i)).collect();
    println!(
        "DMA round trip through IOVA {IOVA_A:#x}: {:?}",
        core::str::from_utf8(&landed).unwrap_or("?")
    );
    let bad = IOVA_A + 0x10_0000;
    edu.edu.dma_to_ram(0, bad, 4).map_err(fail)?;
    let mut shown = false;
    r.unit
        .drain_faults(&mut |f| {
            if !shown {
                println!("DMA to unmapped IOVA {bad:#x} blocked: {f}");
                shown = true;
            }
        })
        .map_err(fail)?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    Ok(())
}
