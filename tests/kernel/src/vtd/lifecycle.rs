//! VT-d tests of the unit's life cycle beyond plain DMA: what the unit reports about itself,
//! fault events delivered as an interrupt, domain ids reused without stale translations, PASID
//! attach, and domains that share a CPU table.

use alloc::vec::Vec;

use super::dma::{device_id, rig, the_unit};
use super::{expected, Mode as MachineMode};
use crate::dma::{DmaBuffer, IOVA_A, IOVA_B};
use crate::hal::HAL;
use crate::Machine;
use iommu::addr::Iova;
use iommu::pagetable::{Coherency, Gather, PageTable, Prot, X86FirstStage, X86FirstStageConfig};
use iommu::poll::poll_until;
use iommu::unit::{
    Attachment, CpuTable, FaultKind, FaultRecord, RawRegisters, TranslationUnit, UnitError,
};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::x86_64::interrupts;
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_vtd::unit::FaultEventMsi;

/// What the unit reports ([`TranslationUnit::info`]) matches the machine QEMU was asked for.
pub(super) fn hardware_info_matches_machine(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let r = rig(m)?;
    let info = TranslationUnit::info(r.unit);
    let raw = r.unit.unit_info();
    let (first, second) = match want.mode {
        MachineMode::Legacy => (false, true),
        MachineMode::Scalable => (false, true),
        // x-flts=on clears SLTS: first stage only.
        MachineMode::Flts => (true, false),
    };
    ensure_eq!((info.first_stage, info.second_stage), (first, second));
    ensure!(!info.nesting, "QEMU's VT-d has no nesting (ECAP.NEST)");
    ensure!(
        info.identity,
        "ECAP.PT is set on every machine of the matrix"
    );
    ensure_eq!(info.pasid_bits, 0, "no x-pasid-mode in the matrix");
    ensure_eq!(info.tags, 65536, "CAP.ND = 6");
    ensure_eq!(u32::from(info.output_bits), u32::from(want.aw));
    ensure_eq!(
        info.second_stage_ia_bits,
        if second { want.aw } else { 0 },
        "second-stage input width"
    );
    ensure_eq!(info.first_stage_ia_bits, if first { 48 } else { 0 });
    ensure_eq!(info.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));
    ensure!(!info.coherent_walks, "ECAP.C is clear");
    ensure_eq!(
        info.ats,
        want.device_tlb,
        "ECAP.DT follows device-iotlb= (vtd.devtlb)"
    );
    ensure_eq!(
        info.interrupt_remapping,
        m.cmdline.get_bool("vtd.ir").unwrap_or(false),
        "ECAP.IR follows intremap= (vtd.ir on the command line)"
    );
    ensure_eq!(
        info.raw,
        RawRegisters::Vtd {
            version: 0x10,
            cap: raw.cap.raw(),
            ecap: raw.ecap.raw(),
        }
    );
    // No PASIDs on these machines: PASID attach is refused, by name.
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let pasid = r.unit.attach_pasid(device_id(edu), 1, Attachment::Blocking);
    ensure!(
        matches!(pasid, Err(UnitError::Unsupported(_))),
        "PASID attach without ECAP.PASID: {pasid:?}"
    );
    Ok(())
}

/// Faults seen by the interrupt handler (fixed storage: the handler must not allocate, the
/// interrupted code may hold the heap lock).
static IRQ_FAULTS: spin::Mutex<([Option<FaultRecord>; 4], usize)> =
    spin::Mutex::new(([None; 4], 0));

/// The fault interrupt's hook: drains the unit's records, as an embedder's handler would. The
/// interrupted code is the test's wait loop, which holds none of the unit's locks.
fn on_fault_interrupt() {
    let Some(unit) = the_unit() else { return };
    let Some(mut seen) = IRQ_FAULTS.try_lock() else {
        return;
    };
    let _ = unit.drain_faults(&mut |f| {
        let (records, n) = &mut *seen;
        if let Some(slot) = records.get_mut(*n) {
            *slot = Some(f);
            *n += 1;
        }
    });
}

/// Fault interrupt: a DMA to an unmapped IOVA makes the unit send its fault-event MSI to the
/// CPU's local APIC; the handler runs (counted), drains the unit and finds the decoded fault.
/// With the interrupt masked again, the polled path still reports faults.
pub(super) fn fault_event_interrupt_is_delivered_and_drained(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let dev = device_id(edu);
    let buf = DmaBuffer::new(0x31)?;
    let domain = r.domain_with(&[(IOVA_A, &buf, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    // Nothing pending: QEMU raises the event only when no earlier fault is (FSTS.PPF clear).
    r.faults()?;
    *IRQ_FAULTS.lock() = ([None; 4], 0);
    let apic = interrupts::enable_local_apic();
    interrupts::set_hook(Some(on_fault_interrupt));
    let msi = FaultEventMsi::xapic(apic, interrupts::TEST_VECTOR);
    r.unit.enable_fault_interrupt(msi).map_err(fail)?;
    let before = interrupts::count();
    let bad = IOVA_A + 0x10_0000;
    let waited = interrupts::with_interrupts(|| {
        edu.edu.dma_to_ram(0, bad, 4).map_err(fail)?;
        // Bounded: the MSI is sent while QEMU records the fault, before the DMA completes.
        poll_until("the fault-event interrupt", 1_000_000, || {
            interrupts::count() > before
        })
        .map_err(fail)
    });
    r.unit.disable_fault_interrupt();
    interrupts::set_hook(None);
    let delivered = interrupts::count() - before;
    let (records, n) = *IRQ_FAULTS.lock();
    // The polled path, interrupt masked: a second fault is found by an ordinary drain.
    edu.edu.dma_to_ram(0, bad + 0x1000, 4).map_err(fail)?;
    let polled = r.faults()?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    r.unit
        .destroy_domain(domain)
        .map_err(|(_, e)| fail(alloc::format!("destroy: {e}")))?;
    waited?;
    println!(
        "fault-event MSI {:#x}/{:#x}: {delivered} interrupt(s), {n} record(s) drained by the handler",
        msi.address, msi.data
    );
    ensure!(delivered >= 1, "no fault-event interrupt");
    let seen: Vec<FaultRecord> = records.iter().flatten().copied().collect();
    ensure!(
        seen.iter().any(|f| f.device == dev
            && f.address == bad
            && f.write
            && f.kind == FaultKind::Translation),
        "the handler's drain did not report the DMA to {bad:#x}: {seen:?}"
    );
    ensure!(
        polled
            .iter()
            .any(|f| f.device == dev && f.address == bad + 0x1000),
        "polled drain after masking: {polled:?}"
    );
    ensure!(buf.all(0..4096, 0x31), "a faulting DMA reached memory");
    Ok(())
}

/// Domain ids: with fresh ids limited to a window of 4, 24 domains are created,
/// attached, used for DMA and destroyed one after the other, so ids are reused; each round maps
/// the same IOVA to a different buffer than the round before, and its DMA must land in its own
/// buffer: a translation cached under the reused id by its previous owner would send it to the
/// old one.
pub(super) fn destroyed_domain_ids_are_reused_without_stale_iotlb(m: &mut Machine) -> TestResult {
    const WINDOW: u32 = 4;
    const ROUNDS: usize = 24;
    let r = rig(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let dev = device_id(edu);
    let limit = r.unit.domain_id_high_water() + WINDOW;
    r.unit.set_domain_id_limit(limit);
    let bufs = [DmaBuffer::new(0)?, DmaBuffer::new(0)?];
    let src = DmaBuffer::new(0)?;
    let mut ids = Vec::new();
    let mut result = Ok(());
    for round in 0..ROUNDS {
        let (this, other) = (&bufs[round % 2], &bufs[(round + 1) % 2]);
        this.fill(0);
        other.fill(0);
        let pattern = 0x80 + round as u8;
        src.fill(pattern);
        let step = (|| -> TestResult {
            let domain =
                r.domain_with(&[(IOVA_A, this, Prot::READ_WRITE), (IOVA_B, &src, Prot::READ)])?;
            ids.push(domain.id().raw());
            r.unit
                .attach(dev, Attachment::Paging(&domain))
                .map_err(fail)?;
            let dma = edu
                .edu
                .dma_from_ram(IOVA_B, 0, 64)
                .and_then(|()| edu.edu.dma_to_ram(0, IOVA_A, 64));
            r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
            r.unit
                .destroy_domain(domain)
                .map_err(|(_, e)| fail(alloc::format!("destroy: {e}")))?;
            dma.map_err(fail)?;
            ensure!(
                this.all(0..64, pattern),
                "round {round}: DMA through domain id {} did not land in its buffer",
                ids.last().copied().unwrap_or(0)
            );
            ensure!(
                other.all(0..4096, 0),
                "round {round}: DMA landed in the previous owner's buffer (stale IOTLB)"
            );
            Ok(())
        })();
        if step.is_err() {
            result = step;
            break;
        }
    }
    r.unit.set_domain_id_limit(u32::MAX);
    result?;
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    println!("{ROUNDS} domains created and destroyed with domain ids {distinct:?} (fresh ids below {limit})");
    ensure!(
        ids.iter().all(|&id| u32::from(id) < limit),
        "an id beyond the window: {ids:?}"
    );
    ensure!(distinct.len() < ROUNDS, "no id was reused: {ids:?}");
    Ok(())
}

/// Shared CPU tables: a domain sharing a CPU table (x86-64 paging, built here with the core's
/// engine as the embedder's stand-in): DMA translates through it; map/unmap through the unit are
/// refused; after the embedder removes a page from its table and calls `flush`, the unit no
/// longer translates it (QEMU caches translations, so a missing flush would let the DMA land).
pub(super) fn shared_cpu_table_domain_translates_and_flushes(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let r = rig(m)?;
    let buf = DmaBuffer::new(0x5c)?;
    let cpu_table = PageTable::new(
        X86FirstStage::new(X86FirstStageConfig::four_level(u32::from(want.aw))).map_err(fail)?,
        &HAL,
        Coherency::NonCoherent,
    )
    .map_err(fail)?;
    let cpu = CpuTable {
        root: cpu_table.root(),
        ia_bits: 48,
        asid: 0,
        mair: 0,
    };
    if want.mode != MachineMode::Flts {
        let refused = r.unit.new_shared_domain(&cpu);
        ensure!(
            matches!(refused, Err(UnitError::Unsupported(_))),
            "a shared domain without ECAP.FLTS: {:?}",
            refused.as_ref().map(|d| d.id())
        );
        skip!("shared CPU tables need first-stage translation (vtd.mode=flts)");
    }
    let edu = r.edus.first().ok_or_else(|| fail("no edu"))?;
    let dev = device_id(edu);
    cpu_table
        .map(Iova::new(IOVA_A), buf.phys(), 4096, Prot::READ_WRITE)
        .map_err(fail)?;
    let shared = r.unit.new_shared_domain(&cpu).map_err(fail)?;
    let refused = r
        .unit
        .map(&shared, Iova::new(IOVA_B), buf.phys(), 4096, Prot::READ);
    r.unit
        .attach(dev, Attachment::Paging(&shared))
        .map_err(fail)?;
    // Through the CPU table: edu reads the buffer and writes it back further on.
    edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 1024, 64).map_err(fail)?;
    let landed = buf.all(1024..1088, 0x5c);
    // The embedder unmaps from its own table, then flushes the unit.
    let mut gather = Gather::new();
    cpu_table
        .unmap(Iova::new(IOVA_A), 4096, &mut gather)
        .map_err(fail)?;
    r.unit
        .flush(&shared, Iova::new(IOVA_A), 4096)
        .map_err(fail)?;
    buf.fill(0x5d);
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    let faults = r.faults()?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    let busy_then_gone = r.unit.destroy_domain(shared).map_err(|(_, e)| e);
    // SAFETY: the unit's caches for the range were invalidated (flush returned) and the device
    // is blocked; the frames are the CPU table's, from HAL.
    unsafe { gather.complete(&&HAL) };
    ensure!(landed, "DMA through the shared CPU table did not land");
    ensure!(
        matches!(refused, Err(UnitError::Unsupported(_))),
        "map through the unit on a shared domain: {refused:?}"
    );
    ensure!(
        buf.all(0..4096, 0x5d),
        "DMA after unmap + flush still reached memory (stale translation)"
    );
    ensure!(
        faults
            .iter()
            .any(|f| f.device == dev && f.address & !0xfff == IOVA_A),
        "no fault for the flushed page: {faults:?}"
    );
    ensure_eq!(busy_then_gone, Ok(()));
    Ok(())
}

/// RMRR: q35's DMAR has none, so one is given by hand for the third edu over a DMA
/// buffer: attached to a paging domain that maps nothing there, the device reaches the buffer at
/// its physical address; a domain mapping something else over it is refused; blocking the
/// device is refused. Runs last: the device keeps its RMRR for the rest of the boot.
pub(super) fn rmrr_range_stays_identity_mapped_for_its_device(m: &mut Machine) -> TestResult {
    let r = rig(m)?;
    let dmar = super::dmar(m)?;
    ensure_eq!(r.unit.add_rmrrs(&dmar, 0), Ok(0), "q35 reports no RMRR");
    let edu = r
        .edus
        .get(2)
        .ok_or_else(|| fail("needs three edu devices"))?;
    let dev = device_id(edu);
    let reserved = DmaBuffer::new(0)?;
    let src = DmaBuffer::new(0x77)?;
    let base = reserved.phys().as_u64();
    r.unit.add_rmrr(dev, base, base + 4095).map_err(fail)?;
    let clash = r.domain_with(&[(base, &src, Prot::READ)])?;
    let refused = r.unit.attach(dev, Attachment::Paging(&clash));
    let blocked = r.unit.attach(dev, Attachment::Blocking);
    let domain = r.domain_with(&[(IOVA_B, &src, Prot::READ)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    edu.edu.dma_from_ram(IOVA_B, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, base + 512, 64).map_err(fail)?;
    let identity = domain.translate(Iova::new(base));
    // Identity keeps the range reachable; then both domains can go.
    r.unit.attach(dev, Attachment::Identity).map_err(fail)?;
    for d in [clash, domain] {
        r.unit
            .destroy_domain(d)
            .map_err(|(_, e)| fail(alloc::format!("destroy: {e}")))?;
    }
    ensure!(
        reserved.all(512..576, 0x77),
        "DMA to the RMRR range at its physical address did not land"
    );
    ensure_eq!(identity.map(|p| p.as_u64()), Ok(base));
    ensure_eq!(
        refused,
        Err(UnitError::PageTable(iommu::pagetable::Error::AlreadyMapped))
    );
    ensure!(
        matches!(blocked, Err(UnitError::Unsupported(_))),
        "blocking an RMRR device: {blocked:?}"
    );
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    Ok(())
}
