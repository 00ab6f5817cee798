//! VT-d interrupt remapping in QEMU: edu's MSIs written in the remappable format name an IRTE
//! the unit checks (present, source id) before delivering the vector the entry names to the
//! local APIC; blocked MSIs are recorded as faults and drained like DMA faults.
//!
//! Only on machines started with `intremap=on` (the runner says `vtd.ir=1`); remapping is
//! turned on once per boot on the shared unit, after the DMA tests brought it up. QEMU reads
//! every IRTE from memory on each MSI (it caches none), so these tests prove the entries and
//! the MSI format; that `retarget` and `free` wait for the interrupt entry cache invalidation
//! is proven on the host (`sim.rs`).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use super::dma::{device_id, unit};
use super::{dmar, registers, the_drhd};
use crate::platform::{bridged_edus, edu_devices, pci_config, EduDevice};
use crate::Machine;
use iommu::iommufd::{Error, GroupId, Iommu, OwnerId};
use iommu::irq::{InterruptRemapper, InterruptTarget, MsiMessage, RemappedInterrupt};
use iommu::pci::{Bdf, Bridge};
use iommu::poll::poll_until;
use iommu::unit::{DeviceId, FaultKind, FaultRecord, TranslationUnit};
use iommu_boot::pci::MsiCapability;
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::x86_64::interrupts::{self, SECOND_TEST_VECTOR, TEST_VECTOR};
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_vtd::interrupt_remapping::{message, ApicMode};
use iommu_vtd::registers::{Readable, GSTS};
use iommu_vtd::FaultEventMsi;

type Unit = super::dma::Unit;

/// Entries of the boot's interrupt-remapping table.
const ENTRIES: u32 = 256;

/// Interrupt remapping turned on once per boot.
static ENABLED: spin::Once<Result<(), String>> = spin::Once::new();

/// What every test here needs.
struct IrRig {
    unit: &'static Unit,
    edus: Vec<EduDevice>,
    cfg: crate::platform::PciConfig,
    apic: u8,
}

fn ir_rig(m: &Machine) -> Result<IrRig, Failure> {
    if m.cmdline.get_bool("vtd.ir") != Some(true) {
        skip!("interrupt remapping is off on this machine (intremap=off, no vtd.ir=1)");
    }
    let unit = unit(m)?;
    ensure!(
        unit.unit_info().ecap.ir(),
        "the command line says vtd.ir=1 but ECAP.IR is clear"
    );
    ENABLED
        .call_once(|| {
            unit.enable_interrupt_remapping(ENTRIES, ApicMode::Xapic)
                .map_err(|e| alloc::format!("{e}"))
        })
        .as_ref()
        .map_err(|e| fail(alloc::format!("enabling interrupt remapping: {e}")))?;
    ensure!(unit.interrupt_remapping_enabled(), "GSTS.IRES is clear");
    Ok(IrRig {
        unit,
        edus: edu_devices(m)?,
        cfg: pci_config(m)?,
        apic: interrupts::enable_local_apic(),
    })
}

impl IrRig {
    fn edu(&self, i: usize) -> Result<&EduDevice, Failure> {
        self.edus
            .get(i)
            .ok_or_else(|| fail(alloc::format!("no edu #{i}")))
    }

    fn target(&self, vector: u8) -> InterruptTarget {
        InterruptTarget {
            vector: u32::from(vector),
            cpu: u32::from(self.apic),
        }
    }

    /// Programs `edu`'s MSI capability with `msg` and enables MSI.
    fn program(&self, edu: &EduDevice, msg: MsiMessage) -> Result<MsiCapability, Failure> {
        let cap = MsiCapability::find(&self.cfg, edu.bdf).map_err(fail)?;
        cap.set_enabled(&self.cfg, false);
        cap.set_message(&self.cfg, msg).map_err(fail)?;
        cap.set_enabled(&self.cfg, true);
        Ok(cap)
    }

    /// Makes `edu` send one MSI and reports the deliveries of each test vector it caused.
    /// QEMU delivers the MSI inside the register write; the CPU takes it at the next
    /// instruction boundary with interrupts on, so a short bounded wait suffices either way.
    fn raise(&self, edu: &EduDevice, expect: Option<u8>) -> (u64, u64) {
        let before = (
            interrupts::count_of(TEST_VECTOR),
            interrupts::count_of(SECOND_TEST_VECTOR),
        );
        let seen = || {
            (
                interrupts::count_of(TEST_VECTOR) - before.0,
                interrupts::count_of(SECOND_TEST_VECTOR) - before.1,
            )
        };
        interrupts::with_interrupts(|| {
            edu.edu.raise_interrupt(1);
            let budget = if expect.is_some() { 1_000_000 } else { 100_000 };
            let _ = poll_until("the MSI", budget, || {
                let (a, b) = seen();
                match expect {
                    Some(v) if v == TEST_VECTOR => a > 0,
                    Some(_) => b > 0,
                    None => false,
                }
            });
        });
        edu.edu.acknowledge_interrupt(1);
        seen()
    }

    /// The faults recorded since the last drain.
    fn faults(&self) -> Result<Vec<FaultRecord>, Failure> {
        let mut v = Vec::new();
        self.unit.drain_faults(&mut |f| v.push(f)).map_err(fail)?;
        Ok(v)
    }
}

/// Disables MSI again at the end of a test, whatever happened.
fn quiet(r: &IrRig, cap: &MsiCapability) {
    cap.set_enabled(&r.cfg, false);
}

pub(super) fn remapped_msi_arrives_at_the_vector_its_irte_names(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    r.faults()?;
    let irq = r
        .unit
        .allocate(device_id(edu), r.target(TEST_VECTOR))
        .map_err(fail)?;
    let cap = r.program(edu, irq.message)?;
    let seen = r.raise(edu, Some(TEST_VECTOR));
    quiet(&r, &cap);
    let faults = r.faults()?;
    r.unit.free(irq).map_err(fail)?;
    println!("{irq}: delivered {seen:?} (vector {TEST_VECTOR:#x}, {SECOND_TEST_VECTOR:#x})");
    ensure_eq!(irq.message, message::remappable(irq.handle as u16));
    ensure!(irq.message.address & (1 << 4) != 0, "not remappable format");
    ensure_eq!(seen, (1, 0), "deliveries (first, second vector)");
    ensure_eq!(interrupts::last_vector(), TEST_VECTOR);
    ensure!(faults.is_empty(), "faults: {faults:?}");
    Ok(())
}

pub(super) fn retargeted_entry_moves_the_next_msi(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    let mut irq = r
        .unit
        .allocate(device_id(edu), r.target(TEST_VECTOR))
        .map_err(fail)?;
    let cap = r.program(edu, irq.message)?;
    let first = r.raise(edu, Some(TEST_VECTOR));
    let moved = r.unit.retarget(&mut irq, r.target(SECOND_TEST_VECTOR));
    // The device keeps its message: only the entry changed.
    let second = r.raise(edu, Some(SECOND_TEST_VECTOR));
    quiet(&r, &cap);
    let faults = r.faults()?;
    r.unit.free(irq).map_err(fail)?;
    moved.map_err(fail)?;
    ensure_eq!(first, (1, 0), "before the retarget");
    ensure_eq!(second, (0, 1), "after the retarget");
    ensure_eq!(irq.target.vector, u32::from(SECOND_TEST_VECTOR));
    ensure!(faults.is_empty(), "faults: {faults:?}");
    Ok(())
}

/// The fault QEMU records for a blocked MSI: `device`'s request naming `index`, `code`.
fn expect_ir_fault(
    faults: &[FaultRecord],
    device: iommu::unit::DeviceId,
    index: u32,
    code: u16,
) -> TestResult {
    ensure!(
        faults.iter().any(|f| f.device == device
            && f.code == code
            && f.address == u64::from(index)
            && f.write),
        "no fault {code:#x} for interrupt index {index} from {device:?}: {faults:?}"
    );
    Ok(())
}

pub(super) fn msi_naming_a_not_present_entry_is_blocked_and_reported(
    m: &mut Machine,
) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    r.faults()?;
    // The last entry: never handed out by the lowest-first allocator in these tests.
    let handle = ENTRIES - 1;
    ensure!(
        r.unit.irte(handle).is_some_and(|w| w[0] & 1 == 0),
        "entry {handle} is present"
    );
    let cap = r.program(edu, message::remappable(handle as u16))?;
    let seen = r.raise(edu, None);
    quiet(&r, &cap);
    let faults = r.faults()?;
    println!("MSI naming entry {handle}: delivered {seen:?}, faults {faults:?}");
    ensure_eq!(seen, (0, 0), "deliveries of a blocked MSI");
    expect_ir_fault(&faults, device_id(edu), handle, 0x22)?;
    ensure!(
        faults.iter().any(|f| f.kind == FaultKind::Translation
            && f.reason == "interrupt remapping entry not present"),
        "decoded: {faults:?}"
    );
    Ok(())
}

pub(super) fn source_id_validation_blocks_another_device_using_the_handle(
    m: &mut Machine,
) -> TestResult {
    let r = ir_rig(m)?;
    let (a, b) = (r.edu(0)?, r.edu(1)?);
    r.faults()?;
    let irq = r
        .unit
        .allocate(device_id(a), r.target(TEST_VECTOR))
        .map_err(fail)?;
    // B learns A's message: the entry names A's requester id only.
    let cap_b = r.program(b, irq.message)?;
    let stolen = r.raise(b, None);
    quiet(&r, &cap_b);
    let faults = r.faults()?;
    // A itself still gets through.
    let cap_a = r.program(a, irq.message)?;
    let own = r.raise(a, Some(TEST_VECTOR));
    quiet(&r, &cap_a);
    let after = r.faults()?;
    r.unit.free(irq).map_err(fail)?;
    println!(
        "{irq} raised by {}: delivered {stolen:?}, faults {faults:?}; by {}: {own:?}",
        b.bdf, a.bdf
    );
    ensure_eq!(stolen, (0, 0), "deliveries of the other device's MSI");
    expect_ir_fault(&faults, device_id(b), irq.handle, 0x26)?;
    ensure!(
        faults.iter().all(|f| f.kind == FaultKind::Permission),
        "decoded: {faults:?}"
    );
    ensure_eq!(own, (1, 0), "the owner's MSI");
    ensure!(after.is_empty(), "faults of the owner's MSI: {after:?}");
    Ok(())
}

pub(super) fn entry_freed_at_release_blocks_a_later_msi(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    r.faults()?;
    let irq: RemappedInterrupt = r
        .unit
        .allocate(device_id(edu), r.target(TEST_VECTOR))
        .map_err(fail)?;
    let cap = r.program(edu, irq.message)?;
    let live = r.raise(edu, Some(TEST_VECTOR));
    let freed = r.unit.free(irq);
    // The device was not told: it sends the old message again.
    let late = r.raise(edu, None);
    quiet(&r, &cap);
    let faults = r.faults()?;
    freed.map_err(fail)?;
    ensure_eq!(live, (1, 0), "before free");
    ensure_eq!(late, (0, 0), "after free");
    ensure!(
        r.unit.irte(irq.handle).is_some_and(|w| w[0] & 1 == 0),
        "entry still present"
    );
    expect_ir_fault(&faults, device_id(edu), irq.handle, 0x22)?;
    Ok(())
}

/// What QEMU 10 enforces for compatibility-format MSIs with remapping on: GCMD.CFI is left
/// clear, so the spec says such an MSI is blocked (reason 0x25). QEMU never sets GSTS.CFIS
/// and never checks it: it delivers a compatibility-format MSI as written and records nothing.
/// This test pins that down, so a QEMU that starts enforcing CFIS is noticed.
pub(super) fn compatibility_format_msi_follows_cfis(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    r.faults()?;
    let regs = registers(&the_drhd(&dmar(m)?)?)?;
    let gsts = &regs.block().gsts;
    ensure!(gsts.is_set(GSTS::IRES), "GSTS.IRES");
    ensure!(
        !gsts.is_set(GSTS::CFIS),
        "GSTS.CFIS set: compatibility-format interrupts would bypass remapping"
    );
    let compat = message::compatibility(r.apic, SECOND_TEST_VECTOR);
    ensure_eq!(message::handle_of(compat), None);
    let cap = r.program(edu, compat)?;
    let seen = r.raise(edu, Some(SECOND_TEST_VECTOR));
    quiet(&r, &cap);
    let faults = r.faults()?;
    println!(
        "compatibility-format MSI {:#x}/{:#x} with CFIS clear: delivered {seen:?}, faults {faults:?} \
         (QEMU 10 does not enforce CFIS)",
        compat.address, compat.data
    );
    ensure_eq!(
        seen,
        (0, 1),
        "QEMU 10 delivers compatibility-format MSIs whatever CFIS says"
    );
    ensure!(faults.is_empty(), "faults: {faults:?}");
    Ok(())
}

/// The object model gives a device's interrupts to its owner, with the unit itself registered
/// as the remapper: claiming needs it; the owner's interrupt arrives, moves when retargeted,
/// cannot be freed by another owner nor raised by another owner's device (source-id
/// validation), and its entry is gone once the device is released.
pub(super) fn owned_msis_through_the_object_model(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let (a, b) = (r.edu(0)?, r.edu(1)?);
    let (owner_a, owner_b) = (OwnerId(1), OwnerId(2));
    r.faults()?;
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    let da = io
        .add_device(u, device_id(a), GroupId(device_id(a).0))
        .map_err(fail)?;
    let db = io
        .add_device(u, device_id(b), GroupId(device_id(b).0))
        .map_err(fail)?;
    ensure_eq!(
        io.claim(da, owner_a),
        Err(Error::InterruptsNotIsolated(u)),
        "claimed before the unit was registered as interrupt remapper"
    );
    io.set_interrupt_remapper(u, Box::new(r.unit))
        .map_err(fail)?;
    io.claim(da, owner_a).map_err(fail)?;
    io.claim(db, owner_b).map_err(fail)?;

    let (irq, msg) = io
        .alloc_interrupt(da, owner_a, r.target(TEST_VECTOR))
        .map_err(fail)?;
    let cap_a = r.program(a, msg.message)?;
    let own = r.raise(a, Some(TEST_VECTOR));
    let not_b = io.free_interrupt(owner_b, irq);
    let cap_b = r.program(b, msg.message)?;
    let stolen = r.raise(b, None);
    quiet(&r, &cap_b);
    let stolen_faults = r.faults()?;
    io.retarget_interrupt(owner_a, irq, r.target(SECOND_TEST_VECTOR))
        .map_err(fail)?;
    let moved = r.raise(a, Some(SECOND_TEST_VECTOR));
    io.release(da, owner_a).map_err(fail)?;
    let late = r.raise(a, None);
    quiet(&r, &cap_a);
    let late_faults = r.faults()?;
    io.release(db, owner_b).map_err(fail)?;
    println!(
        "  interrupts: claiming edu {} refused until the unit is registered as the interrupt \
         remapper",
        a.bdf
    );
    println!(
        "  interrupts: edu {}'s owner got {msg}; its MSI arrived {}",
        a.bdf,
        arrivals(own)
    );
    for f in stolen_faults.iter().take(1) {
        println!(
            "  interrupts: edu {} (another owner) sending the same message: blocked, {f}",
            b.bdf
        );
    }
    println!(
        "  interrupts: retargeted to {SECOND_TEST_VECTOR:#x}: the next MSI arrived {}",
        arrivals(moved)
    );
    for f in late_faults.iter().take(1) {
        println!("  interrupts: after release the old message is blocked: {f}");
    }

    ensure_eq!(own, (1, 0), "the owner's MSI");
    ensure_eq!(not_b, Err(Error::NotInterruptOwner(irq)));
    ensure_eq!(stolen, (0, 0), "another owner's device raised it");
    expect_ir_fault(&stolen_faults, device_id(b), msg.handle, 0x26)?;
    ensure_eq!(moved, (0, 1), "after the retarget");
    ensure_eq!(late, (0, 0), "after the release");
    expect_ir_fault(&late_faults, device_id(a), msg.handle, 0x22)?;
    ensure_eq!(io.interrupts_of(da).count(), 0);
    Ok(())
}

/// Deliveries counted by [`IrRig::raise`], in words.
fn arrivals((first, second): (u64, u64)) -> String {
    alloc::format!("{first}x at {TEST_VECTOR:#x}, {second}x at {SECOND_TEST_VECTOR:#x}")
}

/// An edu behind a PCIe-to-PCI bridge sends its MSI with the bridge's alias requester id: the
/// object model, told the alias, pins the interrupt's entry to it and the MSI arrives; an entry
/// pinned to the device's own id (what a model ignoring aliases would program) blocks it.
pub(super) fn bridged_device_msi_is_pinned_to_its_alias(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let mut bridged = bridged_edus(m)?;
    if bridged.is_empty() {
        skip!("needs an edu behind a PCIe-to-PCI bridge");
    }
    let first = bridged.swap_remove(0);
    let Some(Bridge::PcieToPci { secondary }) = first.upstream.first().copied() else {
        return Err(fail("edu not behind a PCIe-to-PCI bridge"));
    };
    let alias = DeviceId(u32::from(Bdf::new(secondary, 0, 0).requester_id()));
    let own = DeviceId(u32::from(first.bdf.requester_id()));
    let edu = EduDevice {
        bdf: first.bdf,
        edu: first.edu,
    };
    r.faults()?;
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    io.set_interrupt_remapper(u, Box::new(r.unit))
        .map_err(fail)?;
    let dev = io.add_device(u, own, GroupId(alias.0)).map_err(fail)?;
    io.add_alias(dev, alias).map_err(fail)?;
    let owner = OwnerId(1);
    io.claim(dev, owner).map_err(fail)?;
    let (_, irq) = io
        .alloc_interrupt(dev, owner, r.target(TEST_VECTOR))
        .map_err(fail)?;
    let cap = r.program(&edu, irq.message)?;
    let pinned = r.raise(&edu, Some(TEST_VECTOR));
    // The same device with an entry pinned to its own id.
    let wrong = r.unit.allocate(own, r.target(TEST_VECTOR)).map_err(fail)?;
    r.program(&edu, wrong.message)?;
    let blocked = r.raise(&edu, None);
    quiet(&r, &cap);
    let faults = r.faults()?;
    r.unit.free(wrong).map_err(fail)?;
    io.release(dev, owner).map_err(fail)?;
    ensure_eq!(irq.device, alias, "pinned to the alias the unit sees");
    ensure_eq!(
        pinned,
        (1, 0),
        "the bridged device's MSI through its alias entry"
    );
    ensure_eq!(blocked, (0, 0), "an entry pinned to the device's own id");
    expect_ir_fault(&faults, alias, wrong.handle, 0x26)?;
    Ok(())
}

/// An interrupt-remapping fault goes the way a DMA fault goes: recorded in the same fault
/// registers and announced by the same fault-event interrupt (itself never remapped), here on
/// the second test vector while the blocked MSI raises nothing.
pub(super) fn remapping_fault_raises_the_fault_event_interrupt(m: &mut Machine) -> TestResult {
    let r = ir_rig(m)?;
    let edu = r.edu(0)?;
    // Nothing pending: QEMU raises the event only when no earlier fault is (FSTS.PPF clear).
    r.faults()?;
    let handle = ENTRIES - 1;
    let cap = r.program(edu, message::remappable(handle as u16))?;
    let event = FaultEventMsi::xapic(r.apic, SECOND_TEST_VECTOR);
    r.unit.enable_fault_interrupt(event).map_err(fail)?;
    let seen = r.raise(edu, Some(SECOND_TEST_VECTOR));
    r.unit.disable_fault_interrupt();
    quiet(&r, &cap);
    let faults = r.faults()?;
    // QEMU may signal the event more than once per blocked MSI (as for DMA faults).
    ensure_eq!(seen.0, 0, "the blocked MSI was delivered");
    ensure!(seen.1 >= 1, "no fault-event interrupt for the blocked MSI");
    expect_ir_fault(&faults, device_id(edu), handle, 0x22)
}
