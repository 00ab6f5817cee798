//! A real guest under the test kernel at EL2: a tiny guest image runs at EL1 with its MMU off
//! (its addresses are IPAs), behind a stage-2 table built with the crate's own VMSA stage-2
//! engine ([`Vm`]), and talks to the hypervisor through HVC. The guest is `tests/guest`, an ELF
//! `cargo xtask` builds and this kernel embeds and loads.
//!
//! Guest entry: x0..x7 as [`GuestArgs`] says. Files: `vm.rs` the guest's RAM, stage 2 and entry
//! ([`Vm`]), `exits.rs` the run loop and what it hands the hypervisor ([`Exits`]), `vcpu.rs`
//! the world switch, `elf.rs` the image loader, `passthrough.rs` edu given to the guest,
//! `vsmmu.rs` its emulated SMMU, `vgic.rs` its virtual interrupts.
//!
//! Every run has a time budget: the EL2 physical timer (CNTHP, PPI 26) is armed before the
//! guest is entered, with physical IRQs routed to EL2 (HCR_EL2.IMO), so a guest that neither
//! exits nor traps is stopped and reported ([`Exit::OutOfTime`]) instead of hanging the boot.
//!
//! Hypercall ABI (`hvc #0`): x0 = function, x1 = argument. [`HVC_PRINT`] prints the byte in x1,
//! [`HVC_REPORT`] records x1 as a result for the test to check, [`HVC_EXIT`] ends the run with
//! status x1, [`HVC_GIVE_BACK`] hands the guest page at IPA x1 back to the hypervisor. A stage-2
//! data abort is recorded with the IPA the hypervisor computes from HPFAR_EL2 and FAR_EL2, and
//! the guest resumes after the faulting instruction.

mod elf;
mod exits;
pub(crate) mod passthrough;
mod vcpu;
mod vgic;
mod vm;
mod vsmmu;

pub(crate) use exits::{Exits, Mmio, NoDevices};
pub(crate) use vm::{ipa_bits, Vm};

use alloc::string::String;
use alloc::vec::Vec;

use crate::Machine;
use iommu_boot::testing::{Failure, Test, TestResult};
use iommu_boot::{ensure, ensure_eq, println};

/// The real guest's tests, EL2 boots only (they skip at EL1).
pub static TESTS: &[Test<Machine>] = &[
    Test {
        name: "a_guest_runs_at_el1_and_reports_through_hvc",
        run: a_guest_runs_at_el1_and_reports_through_hvc,
    },
    Test {
        name: "a_guest_access_outside_its_ram_is_a_stage2_abort_with_its_ipa",
        run: a_guest_access_outside_its_ram_is_a_stage2_abort_with_its_ipa,
    },
    Test {
        name: "a_guest_that_never_exits_is_stopped_by_its_time_budget",
        run: a_guest_that_never_exits_is_stopped_by_its_time_budget,
    },
    Test {
        name: "a_guest_drives_its_passed_through_edu_with_guest_physical_dma",
        run: passthrough::a_guest_drives_its_passed_through_edu_with_guest_physical_dma,
    },
    Test {
        name: "a_guest_takes_edus_msi_as_a_virtual_interrupt",
        run: passthrough::a_guest_takes_edus_msi_as_a_virtual_interrupt,
    },
    Test {
        name: "a_guest_drives_edu_through_its_own_vsmmu",
        run: passthrough::a_guest_drives_edu_through_its_own_vsmmu,
    },
];

/// Hypercall: print the byte in x1 on the console.
pub const HVC_PRINT: u64 = 0;
/// Hypercall: record x1 as a result.
pub const HVC_REPORT: u64 = 1;
/// Hypercall: end the guest with status x1 (0 = its tests passed).
pub const HVC_EXIT: u64 = 2;
/// Hypercall: the guest gives its RAM page at IPA x1 back (the hypervisor unmaps it).
pub const HVC_GIVE_BACK: u64 = 3;

/// Where the guest's RAM starts in its physical (IPA) space, as on QEMU `virt`.
const GUEST_RAM_IPA: u64 = 0x4000_0000;
/// The guest's RAM: the image (code, data, stack) at its start, its scratch word at the end.
const GUEST_RAM_SIZE: u64 = 512 * 1024;
/// Where in its RAM the guest writes and reads back [`PATTERN`].
const SCRATCH_OFFSET: u64 = GUEST_RAM_SIZE - 0x1000;
/// An IPA outside the guest's RAM, with a page offset so the IPA computation is checked too.
const UNMAPPED_IPA: u64 = 0x5000_0128;
/// What the guest writes.
const PATTERN: u64 = 0xbeef_cafe_1234_5a5a;
/// The guest's VMID (VTTBR_EL2.VMID, 8 bits as VTCR_EL2.VS = 0), also its S2VMID in the SMMU:
/// far above the VMIDs the SMMU unit hands out to its own domains (from 1 up).
const VMID: u16 = 0xf0;
/// What the guest finds in its registers at entry.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GuestArgs {
    /// x0: IPA of a scratch word in its RAM.
    pub scratch: u64,
    /// x1: an IPA to read once (0 = none).
    pub probe: u64,
    /// x2: IPA of a passed-through edu's BAR0 (0 = none).
    pub edu_bar: u64,
    /// x3: an IPA outside its RAM to aim one of edu's DMAs at.
    pub outside: u64,
    /// x4: spin forever after its RAM test (to check the time budget).
    pub hang: bool,
    /// x5: IPA of its own (virtual) SMMU's registers (0 = none).
    pub vsmmu: u64,
    /// x6: the stream id edu has behind that SMMU.
    pub vsid: u32,
    /// x7: raise edu's interrupt and take it from its virtual GICv3 CPU interface.
    pub virq: bool,
}

/// How a guest run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The guest exited with this status (HVC_EXIT; 0 = its tests passed).
    Status(u64),
    /// The time budget ran out with the guest at this PC.
    OutOfTime { pc: u64 },
}

impl Default for Exit {
    fn default() -> Self {
        Self::Status(0)
    }
}

/// What a guest run produced.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub exit: Exit,
    /// What it printed.
    pub console: String,
    /// What it reported, in order.
    pub reports: Vec<u64>,
    /// IPAs of its stage-2 data aborts, in order.
    pub aborts: Vec<u64>,
}

impl GuestArgs {
    /// The scratch word at [`SCRATCH_OFFSET`], nothing else.
    pub fn with_scratch() -> Self {
        Self {
            scratch: GUEST_RAM_IPA + SCRATCH_OFFSET,
            ..Self::default()
        }
    }
}

/// Builds a guest, runs it to its exit and tears it down.
/// `probe`: an IPA the guest reads after its RAM test (0 = none).
fn run_guest(m: &Machine, probe: u64) -> Result<(Outcome, u64), Failure> {
    let vm = Vm::new(m)?;
    let out = vm.run(
        GuestArgs {
            probe,
            ..GuestArgs::with_scratch()
        },
        &mut NoDevices,
    )?;
    Ok((out, vm.read_u64(SCRATCH_OFFSET)))
}

/// The guest runs at EL1 behind stage 2: it writes and reads back its RAM, prints and reports
/// through HVC, and exits; its write landed in the host-physical page stage 2 maps there.
pub fn a_guest_runs_at_el1_and_reports_through_hvc(m: &mut Machine) -> TestResult {
    let (out, scratch) = run_guest(m, 0)?;
    println!(
        "  guest printed {:?}, reported {:x?}",
        out.console, out.reports
    );
    ensure_eq!(out.exit, Exit::Status(0));
    ensure_eq!(out.console.as_str(), "guest: hello from EL1\n");
    ensure_eq!(out.reports.as_slice(), &[PATTERN][..]);
    ensure!(out.aborts.is_empty(), "stage-2 aborts {:x?}", out.aborts);
    ensure_eq!(
        scratch,
        PATTERN,
        "the guest's write in host-physical memory"
    );
    Ok(())
}

/// The guest reads an IPA its stage 2 does not map: the hypervisor takes a stage-2 data abort,
/// computes the IPA from HPFAR_EL2 and FAR_EL2, and it is the one the guest touched; the guest
/// resumes after the access and exits normally.
pub fn a_guest_access_outside_its_ram_is_a_stage2_abort_with_its_ipa(
    m: &mut Machine,
) -> TestResult {
    let (out, _) = run_guest(m, UNMAPPED_IPA)?;
    println!("  stage-2 aborts at {:x?}", out.aborts);
    ensure_eq!(out.aborts.as_slice(), &[UNMAPPED_IPA][..]);
    ensure_eq!(out.reports.as_slice(), &[PATTERN, UNMAPPED_IPA][..]);
    ensure_eq!(out.exit, Exit::Status(0));
    Ok(())
}

/// A guest that never exits is stopped when its time budget runs out: the EL2 timer's
/// interrupt, routed to EL2, takes the CPU back from it, and the run reports where it was
/// instead of hanging the boot. A normal run afterwards is unaffected (the timer is off again).
pub fn a_guest_that_never_exits_is_stopped_by_its_time_budget(m: &mut Machine) -> TestResult {
    let vm = Vm::new(m)?;
    vm.budget_ms.set(100);
    let out = vm.run(
        GuestArgs {
            hang: true,
            ..GuestArgs::with_scratch()
        },
        &mut NoDevices,
    )?;
    println!("  guest printed {:?}, then {:x?}", out.console, out.exit);
    ensure!(
        matches!(out.exit, Exit::OutOfTime { pc } if (GUEST_RAM_IPA..GUEST_RAM_IPA + GUEST_RAM_SIZE).contains(&pc)),
        "the spinning guest stopped by its budget inside its image, not {:x?}",
        out.exit
    );
    ensure_eq!(
        out.reports.as_slice(),
        &[PATTERN][..],
        "it ran until the spin"
    );
    let again = vm.run(GuestArgs::with_scratch(), &mut NoDevices)?;
    ensure_eq!(again.exit, Exit::Status(0), "the next run of the same VM");
    Ok(())
}
