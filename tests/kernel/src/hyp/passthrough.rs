//! edu passed through to the real guest: one stage-2 table for the guest's RAM, shared by the
//! CPU (VTTBR_EL2) and the SMMU (a VM-table domain: the STE's S2TTB, the same VMID), edu's BAR
//! mapped into it as Device memory, edu's stream attached to it through the object model. The
//! guest's own edu driver (tests/guest) programs DMA with guest-physical addresses.

use alloc::vec::Vec;

use super::vgic;
use super::vsmmu::{Guest, VSmmu, VSMMU_SIZE};
use super::{
    ipa_bits, Exit, Exits, GuestArgs, Vm, GUEST_RAM_IPA, GUEST_RAM_SIZE, HVC_GIVE_BACK, PATTERN,
};
use crate::smmu::cmdq_watch::CommandWatch;
use crate::smmu::dma::{announce_faults, first_edu, unit, Unit};
use crate::smmu::msi::GuestMsi;
use crate::Machine;
use alloc::boxed::Box;
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{DeviceHandle, DomainId, GroupId, Iommu, OwnerId, Target, UnitId};
use iommu::irq::{InterruptRemapper, InterruptTarget};
use iommu::unit::{DeviceId, FaultKind, FaultRecord, TranslationUnit, UnitError, VmTable};
use iommu_boot::aarch64::gicv3::{self, FIRST_LPI};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_smmuv3::command::opcode;

/// Where the guest finds edu's BAR0 (1 MiB) in its physical address space.
const EDU_BAR_IPA: u64 = 0x1000_0000;
const EDU_BAR_SIZE: u64 = 1 << 20;
/// Where the guest aims one DMA: outside its RAM and unmapped, with a page offset.
const OUTSIDE_IPA: u64 = 0x6000_0040;
/// edu's identification register for version 1.0.
const EDU_ID: u64 = 0x0100_00ed;
/// The hypervisor, owner of the device in the object model.
const HYPERVISOR: OwnerId = OwnerId(1);
/// Where the guest finds its own SMMU, and the stream id edu has behind it.
const VSMMU_IPA: u64 = 0x0905_0000;
const VSID: u32 = 0x21;
/// The IOVA the guest maps in its own stage 1 (tests/guest/src/vsmmu.rs).
const GUEST_IOVA: u64 = 0x10_0000;
/// F_TRANSLATION.
const EVENT_TRANSLATION: u64 = 0x10;
/// The LPI the hypervisor asks for edu's MSI, and the interrupt id the guest sees it as.
const EDU_LPI: u32 = FIRST_LPI + 23;
const GUEST_EDU_INTID: u32 = 48;

/// Byte `i` of what the guest's edu copies (tests/guest: `dma_pattern`).
fn dma_pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add(3)
}

/// Prints what the guest printed, line by line.
fn show_console(console: &str) {
    for line in console.lines() {
        println!("  {line}");
    }
}

/// A guest with edu passed through: the VM, edu's BAR in its stage 2, and the object model
/// with edu owned by the hypervisor and attached to a VM-table domain over the guest's stage 2.
struct Passthrough {
    vm: Vm,
    io: Iommu<&'static Unit>,
    unit: &'static Unit,
    unit_id: UnitId,
    device: DeviceHandle,
    stream: DeviceId,
    s2: DomainId,
}

impl Passthrough {
    /// With `remapper` as the unit's interrupt remapper; without one, owning edu needs the
    /// explicit (insecure) opt-in, which these DMA-only tests take.
    fn new(
        m: &Machine,
        remapper: Option<Box<dyn InterruptRemapper + Send + Sync>>,
    ) -> Result<Self, Failure> {
        let vm = Vm::new(m)?;
        let unit = unit(m)?;
        if !unit.features().stages.stage2() {
            skip!("passing a device through to a guest needs SMMU stage 2");
        }
        announce_faults();
        let (edu, stream) = first_edu(m)?;
        vm.map_mmio(EDU_BAR_IPA, PhysAddr::new(edu.edu.bar0()), EDU_BAR_SIZE)?;
        let mut io = Iommu::new();
        let unit_id = io.add_unit(unit);
        match remapper {
            Some(r) => io.set_interrupt_remapper(unit_id, r).map_err(fail)?,
            None => io.allow_unsafe_interrupts(true),
        }
        let device = io
            .add_device(unit_id, stream, GroupId(stream.0))
            .map_err(fail)?;
        io.claim(device, HYPERVISOR).map_err(fail)?;
        let s2 = io
            .alloc_vm_domain(HYPERVISOR, unit_id, &vm.vm_table())
            .map_err(fail)?;
        io.attach(device, HYPERVISOR, Target::Domain(s2))
            .map_err(fail)?;
        unit.drain_faults(&mut |_| {}).map_err(fail)?;
        Ok(Self {
            vm,
            io,
            unit,
            unit_id,
            device,
            stream,
            s2,
        })
    }
}

/// VM tables the SMMU cannot or must not point at are refused with a typed error:
/// the VM's VMID again (it tags the VM's domain already), VMID 0 (stage-1-only
/// streams'), a root that is not 4 KiB aligned, an IPA width below 25 bits.
fn vm_tables_the_unit_refuses(io: &mut Iommu<&'static Unit>, unit: UnitId, vm: &Vm) -> TestResult {
    let good = vm.vm_table();
    let bad = [
        (good, UnitError::OutOfIds),
        (VmTable { vmid: 0, ..good }, UnitError::OutOfIds),
        (
            VmTable {
                root: PhysAddr::new(good.root.as_u64() + 8),
                ..good
            },
            UnitError::Unsupported(
                "VM table root not 4 KiB aligned or beyond the output address size",
            ),
        ),
        (
            VmTable {
                ia_bits: 20,
                ..good
            },
            UnitError::Unsupported("VM table input width outside 25 bits..the output address size"),
        ),
    ];
    for (table, why) in bad {
        ensure_eq!(
            io.alloc_vm_domain(HYPERVISOR, unit, &table),
            Err(iommu::iommufd::Error::Unit(why)),
            "VM table {table:x?}"
        );
    }
    Ok(())
}

/// The hypervisor's side of [`HVC_GIVE_BACK`]: unmaps the page from the guest's stage 2 for
/// the CPU and the SMMU alike, and records what it saw.
struct GiveBack<'a> {
    m: &'a Machine,
    io: &'a Iommu<&'static Unit>,
    s2: DomainId,
    /// (IPA given back, whether the host saw the round trip's bytes there, the SMMU commands
    /// of its unmap).
    given: Vec<(u64, bool, Vec<u8>)>,
}

impl Exits for GiveBack<'_> {
    fn hypercall(&mut self, vm: &Vm, f: u64, ipa: u64) -> TestResult {
        ensure_eq!(f, HVC_GIVE_BACK, "the guest's hypercall");
        ensure!(
            ipa.is_multiple_of(4096)
                && (GUEST_RAM_IPA..GUEST_RAM_IPA + GUEST_RAM_SIZE).contains(&ipa),
            "the guest gives back {ipa:#x}, not a page of its RAM"
        );
        let landed = (0..4096).all(|i| vm.ram_byte(ipa + i as u64) == dma_pattern(i));
        let watch = CommandWatch::start(self.m)?;
        vm.unmap(ipa, 4096, || {
            self.io
                .flush(HYPERVISOR, self.s2, Iova::new(ipa), 4096)
                .map_err(fail)
        })?;
        self.given.push((ipa, landed, watch.opcodes()));
        // Whatever reaches this host page from now on came through a stale translation.
        vm.fill_ram(ipa, 4096, 0);
        Ok(())
    }
}

/// The guest's DMA through its passed-through edu, with guest-physical addresses:
/// - a round trip (its RAM page A → edu → its page B) lands, as the guest and the host both
///   see (the host reads B's host-physical page);
/// - a DMA aimed outside its RAM faults, and the SMMU reports it with that guest-physical
///   address and edu's stream;
/// - when the guest gives page B back, the hypervisor's unmap is one table change followed by
///   exactly one CPU TLBI IPAS2E1IS and, read from the SMMU's command queue, exactly one
///   CMD_TLBI_S2_IPA and one CMD_SYNC; afterwards edu's DMA to B faults (nothing lands in the
///   host page) and the guest's own read of B is a stage-2 abort: no stale translation
///   survives on either side.
pub fn a_guest_drives_its_passed_through_edu_with_guest_physical_dma(
    m: &mut Machine,
) -> TestResult {
    let Passthrough {
        vm,
        mut io,
        unit,
        device: d,
        stream: dev,
        s2,
        unit_id,
    } = Passthrough::new(m, None)?;
    vm_tables_the_unit_refuses(&mut io, unit_id, &vm)?;
    let mut giving = GiveBack {
        m,
        io: &io,
        s2,
        given: Vec::new(),
    };
    let out = vm.run(
        GuestArgs {
            edu_bar: EDU_BAR_IPA,
            outside: OUTSIDE_IPA,
            ..GuestArgs::with_scratch()
        },
        &mut giving,
    );
    let given = giving.given;
    let mut faults: Vec<FaultRecord> = Vec::new();
    let drained = unit.drain_faults(&mut |f| faults.push(f));
    let released = io.release(d, HYPERVISOR);
    let destroyed = io.destroy_domain(HYPERVISOR, s2);
    let out = out?;
    drained.map_err(fail)?;
    released.map_err(fail)?;
    destroyed.map_err(fail)?;

    println!(
        "  hypervisor: guest RAM ({} KiB at IPA {GUEST_RAM_IPA:#x}) behind one stage-2 table that \
         the CPU (VTTBR_EL2) and the SMMU (a VM-table domain) share under VMID {}; edu's BAR at \
         IPA {EDU_BAR_IPA:#x}",
        GUEST_RAM_SIZE / 1024,
        vm.vm_table().vmid
    );
    show_console(&out.console);
    println!("  hypervisor: the guest reported {:x?}", out.reports);
    ensure_eq!(out.exit, Exit::Status(0), "how the guest's run ended");
    let [PATTERN, id, b, mismatched, outside, after] = out.reports[..] else {
        return Err(fail(format_args!(
            "the guest's reports {:x?}: expected its RAM test, edu's id, its DMA page, \
             mismatched bytes, the outside IPA and the page after give-back",
            out.reports
        )));
    };
    ensure_eq!(
        id,
        EDU_ID,
        "edu's id as the guest read it through its BAR mapping"
    );
    ensure_eq!(
        mismatched,
        0,
        "bytes of the round trip the guest found wrong"
    );
    ensure_eq!(outside, OUTSIDE_IPA);
    ensure_eq!(after, b);
    let [(given_ipa, landed, ref commands)] = given[..] else {
        return Err(fail(format_args!(
            "{} pages given back, not one",
            given.len()
        )));
    };
    ensure_eq!(given_ipa, b, "the page given back");
    ensure!(landed, "the round trip's bytes in B's host-physical page");
    println!(
        "  hypervisor: page {b:#x} given back: one table change, {} CPU TLBI IPAS2E1IS, SMMU \
         commands {commands:02x?} (TLBI_S2_IPA, SYNC); then the guest's read of it was a \
         stage-2 abort at {:x?}",
        vm.cpu_tlbis.get(),
        out.aborts
    );
    ensure_eq!(vm.cpu_tlbis.get(), 1, "CPU TLB invalidations by IPA");
    ensure_eq!(
        commands.as_slice(),
        &[opcode::TLBI_S2_IPA, opcode::SYNC][..],
        "SMMU commands of one unmapped page"
    );
    ensure!(
        vm.ram_all(b, 4096, 0),
        "edu's DMA after the give-back reached the page: stale SMMU translation"
    );
    ensure_eq!(
        out.aborts.as_slice(),
        &[b][..],
        "the guest's read of B after give-back (a stale CPU translation would not abort)"
    );
    // QEMU's edu moves 4 bytes per access and the SMMU records each refused access.
    let page = |ipa: u64| ipa & !0xfff;
    let at = |ipa: u64| {
        faults
            .iter()
            .filter(|f| page(f.address) == page(ipa))
            .count()
    };
    println!(
        "  hypervisor: edu's faults, by guest-physical address: {} at {OUTSIDE_IPA:#x}.. \
         (outside its RAM), {} at {b:#x}.. (given back)",
        at(OUTSIDE_IPA),
        at(b)
    );
    ensure!(
        at(OUTSIDE_IPA) > 0,
        "a fault by edu at guest-physical {OUTSIDE_IPA:#x}"
    );
    ensure!(
        at(b) > 0,
        "a fault by edu at guest-physical {b:#x} after give-back"
    );
    let first = faults.first().map(|f| f.address);
    ensure_eq!(
        first,
        Some(OUTSIDE_IPA),
        "the first fault's guest-physical address"
    );
    let stray = faults.iter().find(|f| {
        f.device != dev
            || !f.write
            || f.kind != FaultKind::Translation
            || (page(f.address) != page(OUTSIDE_IPA) && page(f.address) != page(b))
    });
    ensure!(stray.is_none(), "a fault beyond the two DMAs: {stray:x?}");
    Ok(())
}

/// The guest's own SMMU, emulated over the vIOMMU: the guest reads ID registers that say stage
/// 1 only, builds its stream table, CD, stage-1 table and queues in its RAM and turns its SMMU
/// on; its CMD_CFGI_STE becomes a nested domain (its stage 1 over the VM's stage 2) and edu's
/// DMA to its IOVA lands; it unmaps, sends TLBI_NH_VA + SYNC (forwarded, VMID forced) and the
/// next DMA faults; the fault arrives in its event queue under its virtual stream id; a
/// command naming a stream that is not its own stops its queue with CERROR_ILL, and the queue
/// runs on once the guest replaced it and acknowledged GERROR; a stage-1 mapping to a
/// guest-physical address outside its RAM faults at stage 2, which the hypervisor keeps.
pub fn a_guest_drives_edu_through_its_own_vsmmu(m: &mut Machine) -> TestResult {
    let Passthrough {
        vm,
        mut io,
        unit,
        unit_id,
        device,
        stream,
        s2,
    } = Passthrough::new(m, None)?;
    if !unit.features().stages.stage1() {
        skip!("a guest's stage 1 over its stage 2 needs an SMMU with both stages");
    }
    let viommu = io.alloc_viommu(HYPERVISOR, s2).map_err(fail)?;
    io.set_virtual_device(HYPERVISOR, viommu, device, VSID)
        .map_err(fail)?;
    let guest = Guest {
        owner: HYPERVISOR,
        viommu,
        device,
        stream: stream.0,
        vsid: VSID,
    };
    let mut vsmmu = VSmmu::new(VSMMU_IPA, &mut io, (unit_id, unit), guest, ipa_bits())?;
    let out = vm.run(
        GuestArgs {
            edu_bar: EDU_BAR_IPA,
            outside: OUTSIDE_IPA & !0xfff,
            vsmmu: VSMMU_IPA,
            vsid: VSID,
            ..GuestArgs::with_scratch()
        },
        &mut vsmmu,
    );
    let nested = vsmmu.nested();
    let activity = core::mem::take(&mut vsmmu.activity);
    // Tear down whatever happened: device blocked, nested domain, virtual id, vIOMMU, the
    // VM-table domain.
    let torn_down = io
        .attach(device, HYPERVISOR, Target::Blocked)
        .and_then(|()| nested.map_or(Ok(()), |n| io.destroy_domain(HYPERVISOR, n)))
        .and_then(|()| io.unset_virtual_device(HYPERVISOR, viommu, VSID))
        .and_then(|()| io.release(device, HYPERVISOR))
        .and_then(|()| io.destroy_viommu(HYPERVISOR, viommu))
        .and_then(|()| io.destroy_domain(HYPERVISOR, s2));
    let out = out?;
    torn_down.map_err(fail)?;

    show_console(&out.console);
    println!(
        "  hypervisor: the guest's SMMU at IPA {VSMMU_IPA:#x}..{:#x} (edu as stream {VSID:#x}): \
         {} STE installed as a nested domain, {} commands forwarded, refused {:?}, {} events \
         written into the guest's queue, {} stage-2 faults kept; the guest reported {:x?}",
        VSMMU_IPA + VSMMU_SIZE,
        activity.stes,
        activity.forwarded,
        activity.refused,
        activity.events,
        activity.stage2_faults,
        out.reports
    );
    ensure_eq!(out.exit, Exit::Status(0), "how the guest's run ended");
    ensure!(out.aborts.is_empty(), "stage-2 aborts {:x?}", out.aborts);
    let [PATTERN, stage1_only, wrong, untouched, event, event_sid, event_iova, illegal, ran_on, s2_events] =
        out.reports[..]
    else {
        return Err(fail(format_args!(
            "the guest's reports {:x?}: expected its RAM test and 9 vSMMU results",
            out.reports
        )));
    };
    ensure_eq!(stage1_only, 1, "the guest's ID registers say stage 1 only");
    ensure_eq!(
        wrong,
        0,
        "bytes of the DMA through the guest's stage 1 that came back wrong"
    );
    ensure_eq!(
        untouched,
        1,
        "the guest's page after its unmap + TLBI + SYNC and a DMA"
    );
    ensure_eq!(event, EVENT_TRANSLATION, "the event type the guest read");
    ensure_eq!(
        event_sid,
        u64::from(VSID),
        "the stream id in the guest's event"
    );
    ensure_eq!(
        event_iova,
        GUEST_IOVA,
        "the input address in the guest's event"
    );
    ensure_eq!(
        illegal,
        1,
        "CMDQ_CONS.ERR = CERROR_ILL after the foreign stream id"
    );
    ensure_eq!(
        ran_on,
        1,
        "the guest's queue after it replaced the command and acknowledged"
    );
    ensure_eq!(activity.stes, 1, "guest STEs installed");
    ensure_eq!(
        activity.refused.as_slice(),
        &[UnitError::GuestCommand("stream id not the guest's")][..],
        "guest commands refused"
    );
    ensure!(activity.events >= 1, "no event reached the guest");
    ensure_eq!(s2_events, 0, "events the guest saw for a stage-2 fault");
    ensure!(
        activity.stage2_faults > 0,
        "the stage-2 fault of the DMA outside the guest's RAM reached the hypervisor"
    );
    Ok(())
}

/// The hypervisor's side of the guest's interrupt: the physical LPI of edu's MSI, taken at EL2
/// while the guest runs, becomes the guest's virtual interrupt [`GUEST_EDU_INTID`].
struct ForwardIrq {
    /// Physical interrupts taken, in order.
    taken: Vec<u32>,
}

impl Exits for ForwardIrq {
    fn interrupt(&mut self, _vm: &Vm) -> Result<bool, Failure> {
        let Some(intid) = gicv3::acknowledge() else {
            // Spurious: already gone.
            return Ok(true);
        };
        gicv3::end_of_interrupt(intid);
        self.taken.push(intid);
        if intid == EDU_LPI {
            vgic::inject(GUEST_EDU_INTID);
        }
        Ok(intid == EDU_LPI)
    }
}

/// edu's MSI reaches the guest: the hypervisor gets edu's interrupt from the object model (the
/// GICv3 ITS as the unit's remapper, an LPI for edu's DeviceID) and maps the ITS doorbell into
/// the guest's stage 2, through which edu's MSI write is translated like any DMA; the guest
/// raises the interrupt at edu and takes it from its virtual CPU interface as interrupt
/// [`GUEST_EDU_INTID`], which the hypervisor injected after taking the physical LPI at EL2.
pub fn a_guest_takes_edus_msi_as_a_virtual_interrupt(m: &mut Machine) -> TestResult {
    let msi = GuestMsi::new(m)?;
    let result = (|| {
        let Passthrough {
            vm,
            mut io,
            device,
            s2,
            ..
        } = Passthrough::new(m, Some(msi.remapper()))?;
        let doorbell = msi.doorbell_page();
        vm.map_mmio(doorbell.as_u64(), doorbell, 4096)?;
        let (_, irq) = io
            .alloc_interrupt(
                device,
                HYPERVISOR,
                InterruptTarget {
                    vector: EDU_LPI,
                    cpu: 0,
                },
            )
            .map_err(fail)?;
        msi.program(m, &irq)?;
        let mut forward = ForwardIrq { taken: Vec::new() };
        vgic::on();
        let out = vm.run(
            GuestArgs {
                edu_bar: EDU_BAR_IPA,
                virq: true,
                ..GuestArgs::with_scratch()
            },
            &mut forward,
        );
        vgic::off();
        let released = io.release(device, HYPERVISOR);
        let destroyed = io.destroy_domain(HYPERVISOR, s2);
        let out = out?;
        released.map_err(fail)?;
        destroyed.map_err(fail)?;
        show_console(&out.console);
        println!(
            "  hypervisor: edu's MSI through the guest's stage 2 to the ITS doorbell at {:#x}: \
             LPI {} taken at EL2 ({:?}), given to the guest as interrupt {GUEST_EDU_INTID}; \
             the guest reported {:x?}",
            doorbell.as_u64(),
            EDU_LPI,
            forward.taken,
            out.reports
        );
        ensure_eq!(out.exit, Exit::Status(0), "how the guest's run ended");
        ensure_eq!(
            forward.taken.as_slice(),
            &[EDU_LPI][..],
            "physical interrupts taken"
        );
        ensure_eq!(
            out.reports.as_slice(),
            &[PATTERN, u64::from(GUEST_EDU_INTID)][..],
            "the interrupt the guest took from its virtual CPU interface"
        );
        Ok(())
    })();
    msi.tear_down(m)?;
    result
}
