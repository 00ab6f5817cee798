//! A real guest under the test kernel at EL2: a tiny guest image runs at EL1 with its MMU off
//! (its addresses are IPAs), behind a stage-2 table built with the crate's own VMSA stage-2
//! engine, and talks to the hypervisor through HVC. The first slice of issue 14.
//!
//! Hypercall ABI (`hvc #0`): x0 = function, x1 = argument. [`HVC_PRINT`] prints the byte in x1,
//! [`HVC_REPORT`] records x1 as a result for the test to check, [`HVC_EXIT`] ends the run with
//! status x1. A stage-2 data abort is recorded with the IPA the hypervisor computes from
//! HPFAR_EL2 and FAR_EL2, and the guest resumes after the faulting instruction.

mod vcpu;

use alloc::string::String;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::arch::asm;

use crate::hal::HAL;
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::{Coherency, Gather, Granule, PageTable, Prot, VmsaConfig, VmsaStage2};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};
use vcpu::Vcpu;

/// Hypercall: print the byte in x1 on the console.
pub const HVC_PRINT: u64 = 0;
/// Hypercall: record x1 as a result.
pub const HVC_REPORT: u64 = 1;
/// Hypercall: end the guest with status x1 (0 = its tests passed).
pub const HVC_EXIT: u64 = 2;

/// Where the guest's RAM starts in its physical (IPA) space, as on QEMU `virt`.
const GUEST_RAM_IPA: u64 = 0x4000_0000;
/// The guest's RAM: the image at its start, the rest free for it to write.
const GUEST_RAM_SIZE: u64 = 64 * 1024;
/// Where in its RAM the guest writes and reads back [`PATTERN`].
const SCRATCH_OFFSET: u64 = 0x8000;
/// An IPA outside the guest's RAM, with a page offset so the IPA computation is checked too.
const UNMAPPED_IPA: u64 = 0x5000_0128;
/// What the guest writes.
const PATTERN: u64 = 0xbeef_cafe_1234_5a5a;
/// The guest's VMID (VTTBR_EL2.VMID, 8 bits as VTCR_EL2.VS = 0).
const VMID: u64 = 1;
/// More exits than the guest image makes: a guest looping on hypercalls fails the test.
const MAX_EXITS: usize = 64;

/// HCR_EL2 (Arm ARM D24.2.48): VM enables stage 2; RW makes EL1 AArch64.
const HCR_VM: u64 = 1 << 0;
const HCR_RW: u64 = 1 << 31;
/// SCTLR_EL1's RES1 bits (ARMv8.0) with M, C and I clear: the guest starts with its MMU off.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// SPSR_EL2 for the guest's entry: EL1h (M = 0b0101) with D, A, I and F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// Vector index of a synchronous exception from a lower EL in AArch64.
const VECTOR_LOWER_SYNC: u64 = 8;
/// ESR_EL2.EC values (Arm ARM D24.2.40).
const EC_HVC64: u64 = 0x16;
const EC_DABT_LOWER: u64 = 0x24;

// The guest image: position-independent assembly the host copies to the start of guest RAM.
// Entry: x0 = IPA of a scratch word, x1 = IPA to read after the scratch test (0 = none).
// It writes PATTERN, reads it back, prints 'g', reports what it read, then (if asked) reads x1
// and reports x1 once it resumes after the stage-2 abort, and exits with status 0. Each access
// is 8-byte aligned: with the MMU off, data accesses are Device memory and must be aligned.
core::arch::global_asm!(
    ".pushsection .rodata.hyp_guest, \"a\"",
    ".balign 8",
    ".global hyp_guest_image_start",
    "hyp_guest_image_start:",
    "    mov     x19, x0",
    "    mov     x20, x1",
    "    movz    x21, #0x5a5a",
    "    movk    x21, #0x1234, lsl #16",
    "    movk    x21, #0xcafe, lsl #32",
    "    movk    x21, #0xbeef, lsl #48",
    "    str     x21, [x19]",
    "    ldr     x22, [x19]",
    "    mov     x0, #0",
    "    mov     x1, #0x67",
    "    hvc     #0",
    "    mov     x0, #1",
    "    mov     x1, x22",
    "    hvc     #0",
    "    cbz     x20, 1f",
    "    ldr     x23, [x20]",
    "    mov     x0, #1",
    "    mov     x1, x20",
    "    hvc     #0",
    "1:  mov     x0, #2",
    "    mov     x1, #0",
    "    hvc     #0",
    "2:  b       2b",
    ".global hyp_guest_image_end",
    "hyp_guest_image_end:",
    ".popsection",
);

extern "C" {
    static hyp_guest_image_start: u8;
    static hyp_guest_image_end: u8;
}

/// The guest image's bytes.
fn guest_image() -> &'static [u8] {
    // SAFETY: both symbols are labels of the one read-only section above, start before end;
    // the bytes between them are the assembled image and never change.
    unsafe {
        let start = core::ptr::addr_of!(hyp_guest_image_start);
        let end = core::ptr::addr_of!(hyp_guest_image_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

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

    fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.ptr as u64)
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

/// What a guest run produced.
#[derive(Debug, Default)]
struct Outcome {
    /// The guest's HVC_EXIT status.
    status: u64,
    /// What it printed.
    console: String,
    /// What it reported, in order.
    reports: Vec<u64>,
    /// IPAs of its stage-2 data aborts, in order.
    aborts: Vec<u64>,
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

/// The IPA of a stage-2 abort: HPFAR_EL2.FIPA (IPA[51:12] in bits [43:4]) and the page offset
/// from FAR_EL2 (Arm ARM D24.2.49).
fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) & ((1 << 40) - 1)) << 12 | (far & 0xfff)
}

/// Builds the guest's stage 2, runs the guest to its exit and tears everything down.
/// `probe`: an IPA the guest reads after its RAM test (0 = none).
fn run_guest(m: &Machine, probe: u64) -> Result<(Outcome, u64), Failure> {
    if m.info.exception_level != 2 {
        skip!("a guest needs the kernel at EL2 (-machine virt,virtualization=on)");
    }
    let image = guest_image();
    ensure!(
        (image.len() as u64) < SCRATCH_OFFSET,
        "the guest image overlaps its scratch word"
    );
    let ram = GuestRam::new(GUEST_RAM_SIZE)?;
    // SAFETY: `ram` is GUEST_RAM_SIZE bytes, larger than the image (checked above).
    unsafe { core::ptr::copy_nonoverlapping(image.as_ptr(), ram.ptr, image.len()) };
    if let Some(p) = core::ptr::NonNull::new(ram.ptr) {
        HAL.clean_to_poc(p, image.len());
    }

    let bits = pa_bits().min(40);
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
    let vttbr = table.root().as_u64() | VMID << 48;

    let mut vcpu = Vcpu::new(GUEST_RAM_IPA, SPSR_EL1H_MASKED);
    vcpu.x[0] = GUEST_RAM_IPA + SCRATCH_OFFSET;
    vcpu.x[1] = probe;

    let hcr: u64;
    let daif: u64;
    // SAFETY: the stage-2 table maps only `ram` (which outlives the guest) for VMID 1; the
    // guest's EL1 starts with its MMU off and its vectors at IPA 0, which is unmapped, so any
    // exception it takes comes back here as a stage-2 abort. The instruction cache is
    // invalidated after the image was written. Interrupts are masked for the whole run.
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
            vtcr = in(reg) vtcr,
            vttbr = in(reg) vttbr,
            sctlr = in(reg) SCTLR_EL1_MMU_OFF,
            hcr = in(reg) hcr | HCR_VM | HCR_RW,
            options(nostack),
        );
    }
    let result = run_loop(&mut vcpu);
    // SAFETY: stage 2 off again and the guest's TLB entries gone before its table is freed;
    // HCR_EL2 and DAIF as they were.
    unsafe {
        asm!(
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
    let scratch = ram.read_u64(SCRATCH_OFFSET);
    table.destroy(&mut Gather::new());
    drop(ram);
    Ok((result?, scratch))
}

/// Enters the guest until it exits (HVC_EXIT), handling its hypercalls and stage-2 aborts.
fn run_loop(vcpu: &mut Vcpu) -> Result<Outcome, Failure> {
    let mut out = Outcome::default();
    for _ in 0..MAX_EXITS {
        // SAFETY: `run_guest` set up stage 2 over the guest's RAM only and masked interrupts;
        // the syndrome registers are read right below, before anything can trap to EL2.
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
                    out.status = vcpu.x[1];
                    return Ok(out);
                }
                f => return Err(fail(format_args!("guest called unknown hypercall {f}"))),
            },
            EC_DABT_LOWER => {
                out.aborts.push(fault_ipa(hpfar, far));
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
        "the guest did not exit within {MAX_EXITS} exits"
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
    ensure_eq!(out.status, 0);
    ensure_eq!(out.console.as_str(), "g");
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
    ensure_eq!(out.status, 0);
    Ok(())
}
