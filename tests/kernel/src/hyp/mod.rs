//! A real guest under the test kernel at EL2: a tiny guest image runs at EL1 with its MMU off
//! (its addresses are IPAs), behind a stage-2 table built with the crate's own VMSA stage-2
//! engine ([`Vm`]), and talks to the hypervisor through HVC. The guest is `tests/guest`, an ELF
//! `cargo xtask` builds and this kernel embeds and loads; [`passthrough`] gives it edu.
//!
//! Guest entry: x0..x4 as [`GuestArgs`] says.
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
pub(crate) mod passthrough;
mod vcpu;
mod vgic;
mod vsmmu;

use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::arch::asm;
use core::cell::Cell;
use core::mem::ManuallyDrop;

use crate::hal::{KernelHal, HAL};
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::{
    Coherency, Gather, Granule, MemType, PageTable, Prot, VmsaConfig, VmsaStage2,
};
use iommu::unit::VmTable;
use iommu_boot::aarch64::gic::Controller;
use iommu_boot::testing::{fail, Failure, Test, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};
use vcpu::Vcpu;

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
/// More exits than the guest image makes (one per byte it prints): a guest looping on
/// hypercalls fails the test.
const MAX_EXITS: usize = 4096;

/// HCR_EL2 (Arm ARM D24.2.48): VM enables stage 2; RW makes EL1 AArch64.
const HCR_VM: u64 = 1 << 0;
const HCR_RW: u64 = 1 << 31;
/// SCTLR_EL1's RES1 bits (ARMv8.0) with M, C and I clear: the guest starts with its MMU off.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// SPSR_EL2 for the guest's entry: EL1h (M = 0b0101) with D, A, I and F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// HCR_EL2.IMO: physical IRQs go to EL2 while the guest runs.
const HCR_IMO: u64 = 1 << 4;
/// Vector indexes of a synchronous exception and an IRQ from a lower EL in AArch64.
const VECTOR_LOWER_SYNC: u64 = 8;
const VECTOR_LOWER_IRQ: u64 = 9;
/// The EL2 physical timer's PPI (the devicetree's timer node lists it as PPI 10; INTID 26 on
/// every Arm Base System Architecture machine, QEMU's `virt` included).
const CNTHP_PPI: u32 = 26;
/// CNTHP_CTL_EL2 (Arm ARM D24.12.11): ENABLE, and ISTATUS (the condition is met).
const CNTHP_ENABLE: u64 = 1 << 0;
const CNTHP_ISTATUS: u64 = 1 << 2;
/// How long a guest may run by default; every guest of the tests exits well within it.
const TIME_BUDGET_MS: u64 = 2000;
/// ESR_EL2.EC values (Arm ARM D24.2.40).
const EC_HVC64: u64 = 0x16;
const EC_DABT_LOWER: u64 = 0x24;

/// The guest kernel's ELF (tests/guest), built and passed in by `cargo xtask`; empty when the
/// test kernel was built otherwise.
static GUEST_ELF: &[u8] = include_bytes!(env!("IOMMU_TEST_GUEST_IMAGE"));

/// Host-physical memory that backs the guest's RAM (identity-mapped in the host).
struct GuestRam {
    ptr: *mut u8,
    layout: Layout,
}

impl GuestRam {
    fn new(size: u64) -> Result<Self, Failure> {
        let layout = Layout::from_size_align(size as usize, size as usize).map_err(fail)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(fail("no memory for the guest's RAM"));
        }
        Ok(Self { ptr, layout })
    }

    fn size(&self) -> u64 {
        self.layout.size() as u64
    }

    fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.ptr as u64)
    }

    /// The byte at `offset`, if inside the RAM (volatile: the guest and devices write it
    /// behind the compiler's back).
    fn byte(&self, offset: u64) -> Option<u8> {
        // SAFETY: offset is inside the allocation (checked).
        (offset < self.size()).then(|| unsafe { self.ptr.add(offset as usize).read_volatile() })
    }

    /// Sets the byte at `offset`; nothing outside the RAM.
    fn set_byte(&self, offset: u64, v: u8) {
        if offset < self.size() {
            // SAFETY: offset is inside the allocation (checked).
            unsafe { self.ptr.add(offset as usize).write_volatile(v) }
        }
    }

    fn read_u64(&self, offset: u64) -> u64 {
        // SAFETY: offset is inside the allocation and 8-aligned; the guest no longer runs.
        unsafe { self.ptr.add(offset as usize).cast::<u64>().read_volatile() }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the guest's stage 2 is gone by now.
        unsafe { alloc::alloc::dealloc(self.ptr, self.layout) }
    }
}

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

fn read_sysreg_id_aa64mmfr0() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register has no side effect.
    unsafe { asm!("mrs {}, id_aa64mmfr0_el1", out(reg) v, options(nomem, nostack)) };
    v
}

/// Physical address bits of ID_AA64MMFR0_EL1.PARange.
fn pa_bits() -> u32 {
    match read_sysreg_id_aa64mmfr0() & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

/// CNTFRQ_EL0: the system counter's ticks per second.
fn counter_frequency() -> u64 {
    let f: u64;
    // SAFETY: reading the counter frequency has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

/// Whether the EL2 physical timer's condition is met (the budget ran out).
fn timer_fired() -> bool {
    let ctl: u64;
    // SAFETY: reading the timer's control register has no side effect.
    unsafe { asm!("mrs {}, cnthp_ctl_el2", out(reg) ctl, options(nomem, nostack)) };
    ctl & CNTHP_ISTATUS != 0
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

/// The IPA of a stage-2 abort: HPFAR_EL2.FIPA (IPA[51:12] in bits [43:4]) and the page offset
/// from FAR_EL2 (Arm ARM D24.2.49).
fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) & ((1 << 40) - 1)) << 12 | (far & 0xfff)
}

/// Input (IPA) bits of the guest's stage 2: what the CPU and the SMMU both translate.
fn ipa_bits() -> u32 {
    pa_bits().min(40)
}

/// A guest: its RAM, loaded with the guest image, behind a stage-2 table built with the
/// crate's VMSA stage-2 engine. The same table can be handed to the SMMU as a VM table
/// ([`Vm::vm_table`]): then CPU and devices see guest RAM through one set of mappings, and
/// [`Vm::unmap`] invalidates both.
pub(crate) struct Vm {
    ram: GuestRam,
    /// Taken apart in `drop`, never used after.
    table: ManuallyDrop<PageTable<VmsaStage2, &'static KernelHal>>,
    vtcr: u64,
    entry: u64,
    /// Arms the time budget's timer interrupt.
    gic: Controller,
    /// How long a run may take.
    pub budget_ms: Cell<u64>,
    /// CPU TLB invalidations by IPA this VM's unmaps issued (TLBI IPAS2E1IS).
    pub cpu_tlbis: Cell<u32>,
}

impl Vm {
    /// Guest RAM with the guest image loaded and mapped read-write-execute at
    /// [`GUEST_RAM_IPA`]. Skips unless the kernel runs at EL2 with a guest image.
    pub fn new(m: &Machine) -> Result<Self, Failure> {
        if m.info.exception_level != 2 {
            skip!("a guest needs the kernel at EL2 (-machine virt,virtualization=on)");
        }
        if GUEST_ELF.is_empty() {
            skip!("no guest image: the test kernel was not built by `cargo xtask`");
        }
        let ram = GuestRam::new(GUEST_RAM_SIZE)?;
        let (entry, end) = elf::load_elf(GUEST_ELF, &ram)?;
        ensure!(
            end <= GUEST_RAM_IPA + SCRATCH_OFFSET,
            "the guest image ({end:#x}) overlaps its scratch word"
        );
        if let Some(p) = core::ptr::NonNull::new(ram.ptr) {
            HAL.clean_to_poc(p, (end - GUEST_RAM_IPA) as usize);
        }
        let bits = ipa_bits();
        let format = VmsaStage2::new(VmsaConfig {
            granule: Granule::Size4K,
            input_bits: bits,
            output_bits: bits,
        })
        .map_err(fail)?;
        let vtcr = u64::from(format.t0sz())
            | u64::from(format.sl0()) << 6
            | 1 << 8 // IRGN0: write-back, write-allocate
            | 1 << 10 // ORGN0: write-back, write-allocate
            | 3 << 12 // SH0: inner shareable
            | u64::from(format.granule().tg0()) << 14
            | u64::from(format.ps()) << 16
            | 1 << 31; // RES1
        let table = PageTable::new(format, &HAL, Coherency::Coherent).map_err(fail)?;
        table
            .map(
                Iova::new(GUEST_RAM_IPA),
                ram.phys(),
                GUEST_RAM_SIZE,
                Prot::READ_WRITE.with_exec(),
            )
            .map_err(fail)?;
        Ok(Self {
            ram,
            table: ManuallyDrop::new(table),
            vtcr,
            entry,
            gic: crate::platform::gic(m)?,
            budget_ms: Cell::new(TIME_BUDGET_MS),
            cpu_tlbis: Cell::new(0),
        })
    }

    /// The guest's stage 2 as a VM table the SMMU can point at (same root, same VMID).
    pub fn vm_table(&self) -> VmTable {
        VmTable {
            root: self.table.root(),
            ia_bits: ipa_bits(),
            vmid: VMID,
        }
    }

    /// Maps the host-physical MMIO range `phys..phys + len` at `ipa` as Device memory (a
    /// passed-through device's BAR).
    pub fn map_mmio(&self, ipa: u64, phys: PhysAddr, len: u64) -> TestResult {
        let prot = Prot::READ_WRITE.with_mem(MemType::Device);
        self.table
            .map(Iova::new(ipa), phys, len, prot)
            .map_err(fail)?;
        Ok(())
    }

    /// Takes `len` bytes of guest RAM at `ipa` back from the guest: one table change, then
    /// the CPU's TLBs (TLBI IPAS2E1IS per page, then VMALLE1IS for the entries that combine
    /// the guest's stage 1 with this stage 2, which an IPA invalidation does not reach) and the
    /// devices' (`flush_devices`, the SMMU's CMD_TLBI_S2_IPA + CMD_SYNC), and only then the
    /// table frames the unmap emptied go back. Must run while the guest's VMID is in VTTBR_EL2
    /// (from a hypercall handler), since VMALLE1IS acts on the current VMID.
    pub fn unmap(
        &self,
        ipa: u64,
        len: u64,
        flush_devices: impl FnOnce() -> TestResult,
    ) -> TestResult {
        let mut gather = Gather::new();
        let removed = self
            .table
            .unmap(Iova::new(ipa), len, &mut gather)
            .map_err(fail)?;
        ensure_eq!(removed, len, "the guest's pages unmapped");
        for page in (ipa..ipa + len).step_by(4096) {
            // SAFETY: TLB maintenance has no effect on memory; the DSBs order the table write
            // before it and its completion before the device flush and the frames' reuse.
            unsafe {
                asm!(
                    "dsb ishst",
                    "tlbi ipas2e1is, {}",
                    in(reg) page >> 12,
                    options(nostack)
                )
            };
            self.cpu_tlbis.set(self.cpu_tlbis.get() + 1);
        }
        // SAFETY: as above.
        unsafe {
            asm!(
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack)
            )
        };
        flush_devices()?;
        // SAFETY: neither the CPU nor the SMMU can walk the emptied tables any more: both
        // invalidations above completed.
        unsafe { gather.complete(&&HAL) };
        Ok(())
    }

    /// Runs the guest from its entry with `args` until it exits or its time budget runs out,
    /// passing hypercalls other than print, report and exit, and stage-2 data aborts, to
    /// `exits`. The hypervisor's own interrupts are masked for the whole run; only the
    /// budget's timer interrupt, routed to EL2, stops the guest.
    pub fn run(&self, args: GuestArgs, exits: &mut dyn Exits) -> Result<Outcome, Failure> {
        let mut vcpu = Vcpu::new(self.entry, SPSR_EL1H_MASKED);
        vcpu.x[..8].copy_from_slice(&[
            args.scratch,
            args.probe,
            args.edu_bar,
            args.outside,
            u64::from(args.hang),
            args.vsmmu,
            u64::from(args.vsid),
            u64::from(args.virq),
        ]);
        self.gic.set_ppi(CNTHP_PPI, true).map_err(fail)?;
        let ticks = counter_frequency().saturating_mul(self.budget_ms.get()) / 1000;
        let vttbr = self.table.root().as_u64() | u64::from(VMID) << 48;
        let hcr: u64;
        let daif: u64;
        // SAFETY: the stage-2 table maps only the guest's RAM (which outlives the run) and
        // what its caller mapped for VMID [`VMID`]; the guest's EL1 starts with its MMU off and
        // its vectors at IPA 0, which is unmapped, so any exception it takes comes back here
        // as a stage-2 abort. The instruction cache is invalidated after the image was written.
        unsafe {
            asm!("mrs {}, daif", "msr daifset, #0xf", out(reg) daif, options(nostack));
            asm!("mrs {}, hcr_el2", out(reg) hcr, options(nostack));
            asm!(
                "msr vtcr_el2, {vtcr}",
                "msr vttbr_el2, {vttbr}",
                "msr sctlr_el1, {sctlr}",
                "msr vbar_el1, xzr",
                "msr hcr_el2, {hcr}",
                "isb",
                "tlbi vmalls12e1is",
                "ic ialluis",
                "dsb ish",
                "isb",
                vtcr = in(reg) self.vtcr,
                vttbr = in(reg) vttbr,
                sctlr = in(reg) SCTLR_EL1_MMU_OFF,
                hcr = in(reg) hcr | HCR_VM | HCR_RW | HCR_IMO,
                options(nostack),
            );
            // Armed last: the budget counts the guest's time only.
            asm!(
                "msr cnthp_tval_el2, {ticks}",
                "msr cnthp_ctl_el2, {enable}",
                "isb",
                ticks = in(reg) ticks,
                enable = in(reg) CNTHP_ENABLE,
                options(nostack),
            );
        }
        let result = run_loop(self, &mut vcpu, exits);
        // SAFETY: the timer off first (its level interrupt drops with it, so nothing is left
        // pending); stage 2 off again and the guest's TLB entries gone before its table can
        // change or be freed; HCR_EL2 and DAIF as they were.
        unsafe {
            asm!(
                "msr cnthp_ctl_el2, xzr",
                "isb",
                "msr hcr_el2, {hcr}",
                "isb",
                "tlbi vmalls12e1is",
                "dsb ish",
                "msr vttbr_el2, xzr",
                "isb",
                "msr daif, {daif}",
                hcr = in(reg) hcr,
                daif = in(reg) daif,
                options(nostack),
            );
        }
        self.gic.set_ppi(CNTHP_PPI, false).map_err(fail)?;
        result
    }

    /// The 64-bit word at `offset` in the guest's RAM, read by the host.
    pub fn read_u64(&self, offset: u64) -> u64 {
        self.ram.read_u64(offset)
    }

    /// The 64-bit word of guest RAM at `ipa` (8-aligned), read by the host; None outside
    /// the RAM. Guest data structures in its RAM are read this way: the guest's word is
    /// input, the address too.
    pub fn guest_u64(&self, ipa: u64) -> Option<u64> {
        let offset = self.ram_offset(ipa, 8)?;
        Some(self.ram.read_u64(offset))
    }

    /// Writes the 64-bit word of guest RAM at `ipa` (8-aligned) as the host; false outside
    /// the RAM.
    pub fn set_guest_u64(&self, ipa: u64, v: u64) -> bool {
        let Some(offset) = self.ram_offset(ipa, 8) else {
            return false;
        };
        // SAFETY: `ram_offset` checked that the 8 bytes lie inside the RAM, 8-aligned.
        unsafe {
            self.ram
                .ptr
                .add(offset as usize)
                .cast::<u64>()
                .write_volatile(v)
        };
        true
    }

    /// The offset in guest RAM of the `len`-aligned `len` bytes at `ipa`, if inside it.
    fn ram_offset(&self, ipa: u64, len: u64) -> Option<u64> {
        let offset = ipa.checked_sub(GUEST_RAM_IPA)?;
        (offset.is_multiple_of(len) && offset.checked_add(len)? <= self.ram.size())
            .then_some(offset)
    }

    /// The byte of guest RAM at `ipa`, read by the host (0 outside the RAM).
    pub fn ram_byte(&self, ipa: u64) -> u8 {
        self.ram.byte(ipa.wrapping_sub(GUEST_RAM_IPA)).unwrap_or(0)
    }

    /// Sets the guest RAM bytes `ipa..ipa + len` (clipped to the RAM) to `v`, as the host.
    pub fn fill_ram(&self, ipa: u64, len: u64, v: u8) {
        let start = ipa.wrapping_sub(GUEST_RAM_IPA);
        (start..start.saturating_add(len)).for_each(|o| self.ram.set_byte(o, v));
    }

    /// Whether the guest RAM bytes `ipa..ipa + len` all read `v` (false outside the RAM).
    pub fn ram_all(&self, ipa: u64, len: u64, v: u8) -> bool {
        let start = ipa.wrapping_sub(GUEST_RAM_IPA);
        (start..start.saturating_add(len)).all(|o| self.ram.byte(o) == Some(v))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and nothing uses the table after.
        let table = unsafe { ManuallyDrop::take(&mut self.table) };
        let mut gather = Gather::new();
        table.destroy(&mut gather);
        // SAFETY: the guest no longer runs (`run` invalidated its TLB entries on the way out)
        // and the embedder destroyed any IOMMU domain over the table, with its invalidation,
        // before dropping the VM.
        unsafe { gather.complete(&&HAL) };
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

/// What a guest's exits beyond print, report and exit go to: the hypervisor's devices.
pub(crate) trait Exits {
    /// Hypercall `function` with argument `arg`.
    fn hypercall(&mut self, vm: &Vm, function: u64, arg: u64) -> TestResult {
        let _ = (vm, arg);
        Err(fail(format_args!(
            "guest called unknown hypercall {function}"
        )))
    }

    /// A physical interrupt (other than the time budget's) taken while the guest ran: true if
    /// handled.
    fn interrupt(&mut self, vm: &Vm) -> Result<bool, Failure> {
        let _ = vm;
        Ok(false)
    }

    /// A stage-2 data abort at `ipa` that the syndrome describes as `access`: true if an
    /// emulated device did the access (a read's value goes in `access.value`), false to
    /// record it as an abort.
    fn data_abort(&mut self, vm: &Vm, ipa: u64, access: &mut Mmio) -> Result<bool, Failure> {
        let _ = (vm, ipa, access);
        Ok(false)
    }
}

/// A guest without emulated devices or extra hypercalls.
pub(crate) struct NoDevices;
impl Exits for NoDevices {}

/// A load or store to emulated MMIO, decoded from ESR_EL2's data-abort syndrome (Arm ARM
/// D24.2.40, ISS for EC 0x24: ISV, SAS, SRT, WnR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mmio {
    pub write: bool,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The value written, or the value to read (zero-extended to the register).
    pub value: u64,
    /// The guest's register (31 = xzr).
    register: u8,
}

impl Mmio {
    /// Decodes the syndrome; None when it has no valid instruction syndrome (ISV = 0: a load or
    /// store pair, writeback, ...), which cannot be emulated.
    fn decode(esr: u64, vcpu: &Vcpu) -> Option<Self> {
        if esr >> 24 & 1 == 0 {
            return None;
        }
        let register = (esr >> 16 & 0x1f) as u8;
        let write = esr >> 6 & 1 == 1;
        let value = match register {
            31 => 0,
            r => vcpu.x[usize::from(r)],
        };
        Some(Self {
            write,
            size: 1 << (esr >> 22 & 3),
            value: if write { value } else { 0 },
            register,
        })
    }

    /// Completes a read: the value goes to the guest's register, masked to the access size.
    fn complete(&self, vcpu: &mut Vcpu) {
        if !self.write && self.register != 31 {
            let mask = u64::MAX >> (64 - 8 * u32::from(self.size));
            vcpu.x[usize::from(self.register)] = self.value & mask;
        }
    }
}

/// Enters the guest until it exits (HVC_EXIT), handling its hypercalls and stage-2 aborts.
fn run_loop(vm: &Vm, vcpu: &mut Vcpu, exits: &mut dyn Exits) -> Result<Outcome, Failure> {
    let mut out = Outcome::default();
    for _ in 0..MAX_EXITS {
        // SAFETY: `Vm::run` set up stage 2 over the guest's RAM and masked interrupts; the
        // syndrome registers are read right below, before anything can trap to EL2.
        let vector = unsafe { vcpu.run() };
        let (esr, far, hpfar): (u64, u64, u64);
        // SAFETY: reading the syndrome registers has no side effect.
        unsafe {
            asm!(
                "mrs {}, esr_el2",
                "mrs {}, far_el2",
                "mrs {}, hpfar_el2",
                out(reg) esr,
                out(reg) far,
                out(reg) hpfar,
                options(nomem, nostack)
            )
        };
        let ec = esr >> 26 & 0x3f;
        if vector == VECTOR_LOWER_IRQ {
            if timer_fired() {
                out.exit = Exit::OutOfTime { pc: vcpu.pc };
                return Ok(out);
            }
            if exits.interrupt(vm)? {
                continue;
            }
        }
        if vector != VECTOR_LOWER_SYNC {
            return Err(fail(format_args!(
                "guest exit through vector {vector}, ESR {esr:#x}, ELR {:#x}",
                vcpu.pc
            )));
        }
        match ec {
            EC_HVC64 => match vcpu.x[0] {
                HVC_PRINT => out.console.push(char::from(vcpu.x[1] as u8)),
                HVC_REPORT => out.reports.push(vcpu.x[1]),
                HVC_EXIT => {
                    out.exit = Exit::Status(vcpu.x[1]);
                    return Ok(out);
                }
                f => exits.hypercall(vm, f, vcpu.x[1])?,
            },
            EC_DABT_LOWER => {
                let ipa = fault_ipa(hpfar, far);
                if let Some(mut access) = Mmio::decode(esr, vcpu) {
                    if exits.data_abort(vm, ipa, &mut access)? {
                        access.complete(vcpu);
                        vcpu.pc += 4;
                        continue;
                    }
                }
                out.aborts.push(ipa);
                // A data abort returns to the faulting instruction: skip it (A64, 4 bytes).
                vcpu.pc += 4;
            }
            _ => {
                return Err(fail(format_args!(
                    "unexpected guest exit: EC {ec:#x}, ESR {esr:#x}, FAR {far:#x}, \
                     HPFAR {hpfar:#x}, ELR {:#x}",
                    vcpu.pc
                )))
            }
        }
    }
    Err(fail(format_args!(
        "the guest did not exit within {MAX_EXITS} exits; so far {out:x?}"
    )))
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
