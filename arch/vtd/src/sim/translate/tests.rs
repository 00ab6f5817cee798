//! The simulated unit's DMA side against a real [`VtdUnit`]: requests reach what the driver
//! mapped with its permissions, everything else raises the reason code QEMU would, and a
//! recorded fault comes back through the driver's own fault reading.

use std::vec::Vec;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, FaultKind, FaultRecord, Stage, TranslationUnit};

use super::reason::*;
use super::Access::{Read, Write};
use crate::qi::QueueSize;
use crate::sim::{Access, Fault, SimulatedUnit, CAP, ECAP_NO_QI, ECAP_SCALABLE};
use crate::unit::{Mode, VtdUnit};

/// CAP.FS1GP.
const FS1GP: u64 = 1 << 56;
const EDU: DeviceId = DeviceId(0x0008); // 00:01.0
const EDU2: DeviceId = DeviceId(0x0010); // 00:02.0
const ELSEWHERE: DeviceId = DeviceId(0x0500); // 05:00.0, a bus with no context table

fn sid(d: DeviceId) -> u16 {
    d.0 as u16
}

/// `sim.translate`, for a unit whose tables are a live `VtdUnit`'s.
fn translate(
    sim: &SimulatedUnit,
    d: DeviceId,
    pasid: Option<u32>,
    iova: u64,
    access: Access,
) -> Result<u64, Fault> {
    // SAFETY: every test keeps its `VtdUnit` and domains (and so their tables) alive while it
    // translates.
    unsafe { sim.translate(sid(d), pasid, iova, access) }
}

/// The reason of the fault `translate` gives.
fn reason(sim: &SimulatedUnit, d: DeviceId, pasid: Option<u32>, iova: u64, a: Access) -> u8 {
    match translate(sim, d, pasid, iova, a) {
        Ok(out) => panic!("{iova:#x} from {d:?} reached {out:#x}"),
        Err(f) => {
            assert_eq!(
                (f.source_id, f.pasid, f.address, f.access),
                (sid(d), pasid, iova, a)
            );
            f.reason
        }
    }
}

/// Every fault the driver reads back, and whether it saw an overflow. Records with reason 0
/// are the driver's own clearing write read back before the unit took it in (`sim::fault`
/// docs), not faults: left out; enough of them (the driver keeps 32) can make it report an
/// overflow, so the tests check FSTS.PFO on the unit's side instead.
fn drain<H: Hal + Clone>(unit: &VtdUnit<'_, H>) -> (Vec<FaultRecord>, bool) {
    let mut records = Vec::new();
    let drained = unit
        .drain_faults(&mut |r| {
            if r.code != 0 {
                records.push(r)
            }
        })
        .unwrap();
    (records, drained.overflow)
}

#[test]
fn before_translation_is_enabled_dma_passes_through() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    assert_eq!(
        translate(&sim, EDU, None, 0x1234_5678, Write),
        Ok(0x1234_5678)
    );
}

#[test]
fn legacy_dma_reaches_what_is_mapped_with_its_permissions_and_faults_otherwise() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    // Enabled, with an empty root table: every device is blocked.
    assert_eq!(
        reason(&sim, EDU, None, 0x10_0000, Read),
        ROOT_ENTRY_NOT_PRESENT
    );

    let d = unit.new_domain(Stage::Second, 48).unwrap();
    let rw = hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64();
    let ro = hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64();
    unit.map(
        &d,
        Iova::new(0x10_0000),
        PhysAddr::new(rw),
        4096,
        Prot::READ_WRITE,
    )
    .unwrap();
    unit.map(
        &d,
        Iova::new(0x20_0000),
        PhysAddr::new(ro),
        4096,
        Prot::READ,
    )
    .unwrap();
    // A 2 MiB range (never dereferenced: the unit only computes where it goes).
    unit.map(
        &d,
        Iova::new(0x4000_0000),
        PhysAddr::new(0x8000_0000),
        2 << 20,
        Prot::READ,
    )
    .unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();

    assert_eq!(translate(&sim, EDU, None, 0x10_0123, Read), Ok(rw + 0x123));
    assert_eq!(translate(&sim, EDU, None, 0x10_0ff8, Write), Ok(rw + 0xff8));
    assert_eq!(translate(&sim, EDU, None, 0x20_0010, Read), Ok(ro + 0x10));
    assert_eq!(
        translate(&sim, EDU, None, 0x401f_fff0, Read),
        Ok(0x801f_fff0)
    );
    // Second-stage faults: the same code for "no entry" and "no permission".
    assert_eq!(reason(&sim, EDU, None, 0x20_0010, Write), WRITE);
    assert_eq!(reason(&sim, EDU, None, 0x30_0000, Read), READ);
    assert_eq!(reason(&sim, EDU, None, 0x30_0000, Write), WRITE);
    assert_eq!(reason(&sim, EDU, None, 1 << 48, Read), ADDRESS_BEYOND_WIDTH);
    // Never attached: its bus has a context table, without its entry; or no table at all.
    assert_eq!(
        reason(&sim, EDU2, None, 0x10_0000, Read),
        CONTEXT_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(&sim, ELSEWHERE, None, 0x10_0000, Read),
        ROOT_ENTRY_NOT_PRESENT
    );

    // Unmapped: gone at once (no IOTLB in the simulator).
    assert_eq!(unit.unmap(&d, Iova::new(0x10_0000), 4096), Ok(4096));
    assert_eq!(reason(&sim, EDU, None, 0x10_0123, Read), READ);
    // Blocked: its context entry is cleared.
    unit.attach(EDU, Attachment::Blocking).unwrap();
    assert_eq!(
        reason(&sim, EDU, None, 0x20_0010, Read),
        CONTEXT_ENTRY_NOT_PRESENT
    );
    // Identity: a pass-through context entry.
    unit.attach(EDU, Attachment::Identity).unwrap();
    assert_eq!(
        translate(&sim, EDU, None, 0x7654_3000, Write),
        Ok(0x7654_3000)
    );
}

#[test]
fn scalable_dma_walks_pasid_entries_to_first_and_second_stage_tables() {
    let sim = SimulatedUnit::new(CAP | FS1GP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    assert_eq!(
        reason(&sim, EDU, None, 0x10_0000, Read),
        ROOT_ENTRY_NOT_PRESENT
    );

    let ss = unit.new_domain(Stage::Second, 48).unwrap();
    let fs = unit.new_domain(Stage::First, 48).unwrap();
    let a = hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64();
    let b = hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64();
    let c = hal.alloc_frame(FrameSize::SIZE_4K).unwrap().as_u64();
    unit.map(
        &ss,
        Iova::new(0x10_0000),
        PhysAddr::new(a),
        4096,
        Prot::READ_WRITE,
    )
    .unwrap();
    unit.map(
        &fs,
        Iova::new(0x50_0000),
        PhysAddr::new(b),
        4096,
        Prot::READ_WRITE,
    )
    .unwrap();
    unit.map(
        &fs,
        Iova::new(0x60_0000),
        PhysAddr::new(c),
        4096,
        Prot::READ,
    )
    .unwrap();

    // Requests without PASID go through RID_PASID's entry: second stage.
    unit.attach(EDU, Attachment::Paging(&ss)).unwrap();
    assert_eq!(translate(&sim, EDU, None, 0x10_0040, Write), Ok(a + 0x40));
    assert_eq!(reason(&sim, EDU, None, 0x20_0000, Read), READ);
    // A PASID not attached: its entry (in the same PASID table) is not present.
    assert_eq!(
        reason(&sim, EDU, Some(3), 0x50_0000, Read),
        PASID_ENTRY_NOT_PRESENT
    );

    // PASID 3: first stage; PASID 5: second stage.
    unit.attach_pasid(EDU, 3, Attachment::Paging(&fs)).unwrap();
    unit.attach_pasid(EDU, 5, Attachment::Paging(&ss)).unwrap();
    assert_eq!(translate(&sim, EDU, Some(3), 0x50_0008, Write), Ok(b + 8));
    assert_eq!(translate(&sim, EDU, Some(3), 0x60_0008, Read), Ok(c + 8));
    assert_eq!(
        reason(&sim, EDU, Some(3), 0x60_0008, Write),
        FIRST_STAGE_WRITE
    );
    assert_eq!(
        reason(&sim, EDU, Some(3), 0x70_0000, Read),
        FIRST_STAGE_ENTRY_NOT_PRESENT
    );
    assert_eq!(reason(&sim, EDU, Some(3), 1 << 47, Read), NOT_CANONICAL);
    assert_eq!(translate(&sim, EDU, Some(5), 0x10_0040, Read), Ok(a + 0x40));
    assert_eq!(reason(&sim, EDU, Some(5), 0x50_0000, Read), READ);
    // Never attached: the context entry of a device on a bus with a table.
    assert_eq!(
        reason(&sim, EDU2, None, 0x10_0000, Read),
        CONTEXT_ENTRY_NOT_PRESENT
    );

    // Detached PASID: its entry is cleared.
    unit.attach_pasid(EDU, 3, Attachment::Blocking).unwrap();
    assert_eq!(
        reason(&sim, EDU, Some(3), 0x50_0008, Read),
        PASID_ENTRY_NOT_PRESENT
    );
    // Blocked device: RID_PASID's entry is cleared, and (as in QEMU) a context entry without
    // a valid RID_PASID entry fails every request, with a PASID or not.
    unit.attach(EDU, Attachment::Blocking).unwrap();
    assert_eq!(
        reason(&sim, EDU, None, 0x10_0040, Read),
        PASID_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(&sim, EDU, Some(5), 0x10_0040, Read),
        PASID_ENTRY_NOT_PRESENT
    );
}

#[test]
fn recorded_faults_are_read_back_by_the_driver_and_cleared() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    let ro = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    unit.map(&d, Iova::new(0x20_0000), ro, 4096, Prot::READ)
        .unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();
    assert_eq!(drain(&unit), (Vec::new(), false));

    // A good request records nothing; a bad one is recorded where the driver looks.
    // SAFETY (every `dma` here): the unit and its domain outlive the calls.
    assert!(unsafe { sim.dma(sid(EDU), None, 0x20_0100, Read) }.is_ok());
    let fault = unsafe { sim.dma(sid(EDU), None, 0x30_0456, Write) }.unwrap_err();
    assert_eq!(fault.reason, WRITE);
    assert_eq!(sim.fsts() & 0xff03, 0x0002, "PPF, FRI 0, no PFO");
    let (records, _) = drain(&unit);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = records[0];
    assert_eq!(
        (r.device, r.pasid, r.address, r.write),
        (EDU, None, 0x30_0000, true)
    );
    assert_eq!((r.code, r.kind), (u16::from(WRITE), FaultKind::Translation));
    assert_eq!(r.reason, "second-stage entry not present");

    // The driver's RW1C write freed the record: the next fault is recorded again. A write to
    // a read-only page is a permission fault once the driver looks at its table.
    let _ = unsafe { sim.dma(sid(EDU), None, 0x20_0000, Write) };
    let (records, _) = drain(&unit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].address, records[0].kind),
        (0x20_0000, FaultKind::Permission)
    );

    // One record (CAP.NFR = 0): a second source's fault while the first is pending overflows
    // (PFO); a second fault of the same source is collapsed. Both show as QEMU's would.
    let never = unsafe { sim.dma(sid(EDU2), None, 0x1000, Read) }.unwrap_err();
    assert_eq!(never.reason, CONTEXT_ENTRY_NOT_PRESENT);
    let _ = unsafe { sim.dma(sid(EDU2), None, 0x2000, Read) };
    let _ = unsafe { sim.dma(sid(EDU), None, 0x3000, Read) };
    assert_eq!(sim.fsts() & 3, 3, "PPF and PFO");
    let (records, overflow) = drain(&unit);
    assert!(overflow, "PFO");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0].device, records[0].address), (EDU2, 0x1000));
    assert_eq!(records[0].kind, FaultKind::Configuration);

    // PFO cleared by the driver: recording resumes.
    let _ = unsafe { sim.dma(sid(ELSEWHERE), None, 0x4000, Write) };
    assert_eq!(sim.fsts() & 3, 2, "PPF, PFO cleared by the driver");
    let (records, _) = drain(&unit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (records[0].device, records[0].code),
        (ELSEWHERE, u16::from(ROOT_ENTRY_NOT_PRESENT))
    );
}

#[test]
fn a_first_stage_fault_with_pasid_is_read_back_with_its_pasid() {
    let sim = SimulatedUnit::new(CAP | FS1GP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let ss = unit.new_domain(Stage::Second, 48).unwrap();
    let fs = unit.new_domain(Stage::First, 48).unwrap();
    unit.attach(EDU, Attachment::Paging(&ss)).unwrap();
    unit.attach_pasid(EDU, 7, Attachment::Paging(&fs)).unwrap();
    // SAFETY: the unit and its domains outlive the call.
    let fault = unsafe { sim.dma(sid(EDU), Some(7), 0x8_0000, Read) }.unwrap_err();
    assert_eq!(fault.reason, FIRST_STAGE_ENTRY_NOT_PRESENT);
    let (records, _) = drain(&unit);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = records[0];
    assert_eq!(
        (r.device, r.pasid, r.address, r.write),
        (EDU, Some(7), 0x8_0000, false)
    );
    assert_eq!(
        (r.code, r.kind),
        (
            u16::from(FIRST_STAGE_ENTRY_NOT_PRESENT),
            FaultKind::Translation
        )
    );
}

#[test]
fn nested_dma_walks_the_guest_first_stage_through_the_parent() {
    const NEST: u64 = 1 << 26;
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE | NEST);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let parent = unit.new_domain(Stage::Second, 48).unwrap();

    // The guest's memory: four first-stage tables and two data pages, at guest-physical
    // addresses the parent maps to host frames (the second data page read-only).
    let gpa = |i: u64| 0x100_0000 + 0x1000 * i;
    let frames: Vec<u64> = (0..6)
        .map(|i| {
            let f = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
            let prot = if i == 5 { Prot::READ } else { Prot::READ_WRITE };
            unit.map(&parent, Iova::new(gpa(i)), f, 4096, prot).unwrap();
            f.as_u64()
        })
        .collect();
    let set = |table: usize, index: u64, entry: u64| {
        let at = (frames[table] + 8 * index) as *mut u64;
        // SAFETY: a live frame of `hal`, `index` < 512.
        unsafe { at.write_volatile(entry) };
    };
    const P_RW_US: u64 = 0x7;
    // IOVA 0x40_0000: PML4[0] → PDPT[0] → PD[2] → PT[0] (data 4), PT[1] (data 5).
    set(0, 0, gpa(1) | P_RW_US);
    set(1, 0, gpa(2) | P_RW_US);
    set(2, 2, gpa(3) | P_RW_US);
    set(3, 0, gpa(4) | P_RW_US);
    set(3, 1, gpa(5) | P_RW_US);
    // PD[3]: a table at a guest-physical address the parent does not map.
    set(2, 3, 0x900_0000 | P_RW_US);

    let viommu = unit.new_viommu(&parent).unwrap();
    // P | AW 2 | PGTT 3 is the host's: the guest gives P | AW 2 | PGTT 1, its DID, FSPTPTR.
    let nested = unit
        .new_nested(&viommu, &[0x49, 0x42, gpa(0), 0, 0, 0, 0, 0])
        .unwrap();
    unit.attach_pasid(EDU, 3, Attachment::Paging(&nested))
        .unwrap();
    unit.attach(EDU, Attachment::Paging(&parent)).unwrap();

    assert_eq!(
        translate(&sim, EDU, Some(3), 0x40_0123, Write),
        Ok(frames[4] + 0x123)
    );
    assert_eq!(
        translate(&sim, EDU, Some(3), 0x40_1008, Read),
        Ok(frames[5] + 8)
    );
    // The guest's table allows the write, the parent's mapping does not.
    assert_eq!(reason(&sim, EDU, Some(3), 0x40_1008, Write), WRITE);
    // The guest's own fault, and a guest table outside what the parent maps.
    assert_eq!(
        reason(&sim, EDU, Some(3), 0x40_2000, Read),
        FIRST_STAGE_ENTRY_NOT_PRESENT
    );
    assert_eq!(reason(&sim, EDU, Some(3), 0x60_0000, Read), READ);
    // The unit set the guest's accessed and dirty bits, as hardware does.
    // SAFETY: live frames of `hal`.
    let pte = unsafe { (frames[3] as *const u64).read_volatile() };
    assert_eq!(pte & 0x60, 0x60, "A and D in the PTE written through");
    // Requests without PASID: the parent itself.
    assert_eq!(
        translate(&sim, EDU, None, gpa(4) + 4, Read),
        Ok(frames[4] + 4)
    );
}

#[test]
fn fault_processing_disable_suppresses_qualified_faults_only() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();
    // Set FPD in edu's context entry behind the driver's back (bus 0's table, slot devfn).
    let root = sim.shared.root.load(core::sync::atomic::Ordering::Acquire) & !0xfff;
    // SAFETY: the unit's live root and context tables; bus 0 and devfn 8 are in bounds.
    unsafe {
        let table = (root as *const u64).read_volatile() & !0xfff;
        let ce = (table as *mut u64).add(2 * 8);
        ce.write_volatile(ce.read_volatile() | 2);
    }
    // SAFETY (both `dma`): the unit and its domain outlive the calls.
    let f = unsafe { sim.dma(sid(EDU), None, 0x30_0000, Read) }.unwrap_err();
    assert_eq!(f.reason, READ);
    assert_eq!(
        sim.fsts() & 3,
        0,
        "a qualified fault under FPD is not recorded"
    );
    // Not qualified: a bus without a root entry (no context entry, so no FPD, either way).
    let f = unsafe { sim.dma(sid(ELSEWHERE), None, 0x30_0000, Read) }.unwrap_err();
    assert_eq!(f.reason, ROOT_ENTRY_NOT_PRESENT);
    assert_eq!(sim.fsts() & 3, 2, "recorded");
    let (records, _) = drain(&unit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].device, ELSEWHERE);
}
