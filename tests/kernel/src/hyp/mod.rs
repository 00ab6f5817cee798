//! A real guest under the test kernel at EL2: a tiny guest image runs at EL1 with its MMU off
//! (its addresses are IPAs), behind a stage-2 table built with the crate's own VMSA stage-2
//! engine, and talks to the hypervisor through HVC. The first slice of issue 14; the guest is
//! `tests/guest`, an ELF `cargo xtask` builds and this kernel embeds and loads.
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
/// The guest's RAM: the image (code, data, stack) at its start, its scratch word at the end.
const GUEST_RAM_SIZE: u64 = 256 * 1024;
/// Where in its RAM the guest writes and reads back [`PATTERN`].
const SCRATCH_OFFSET: u64 = GUEST_RAM_SIZE - 0x1000;
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

/// The guest kernel's ELF (tests/guest), built and passed in by `cargo xtask`; empty when the
/// test kernel was built otherwise.
static GUEST_ELF: &[u8] = include_bytes!(env!("IOMMU_TEST_GUEST_IMAGE"));

/// ELF64 header and program header fields the loader reads (System V gABI, "ELF Header" and
/// "Program Header"), little-endian.
const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Copies the PT_LOAD segments of `elf` into the guest's RAM (at their physical addresses,
/// which are IPAs) and returns the entry point and the end of the highest segment. Every
/// segment must lie inside the guest's RAM: the image is input, checked like any.
fn load_elf(elf: &[u8], ram: &GuestRam) -> Result<(u64, u64), Failure> {
    let bad = || fail("the guest image is not an AArch64 ELF64 the loader can place");
    if elf.get(0..4) != Some(b"\x7fELF".as_slice())
        || elf.get(4) != Some(&2)
        || elf.get(5) != Some(&1)
        || le_u16(elf, 18) != Some(EM_AARCH64)
    {
        return Err(bad());
    }
    let entry = le_u64(elf, 24).ok_or_else(bad)?;
    let phoff = le_u64(elf, 32).ok_or_else(bad)? as usize;
    let phentsize = usize::from(le_u16(elf, 54).ok_or_else(bad)?);
    let phnum = usize::from(le_u16(elf, 56).ok_or_else(bad)?);
    let mut end = GUEST_RAM_IPA;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if le_u32(elf, ph) != Some(PT_LOAD) {
            continue;
        }
        let offset = le_u64(elf, ph + 8).ok_or_else(bad)? as usize;
        let paddr = le_u64(elf, ph + 24).ok_or_else(bad)?;
        let filesz = le_u64(elf, ph + 32).ok_or_else(bad)?;
        let memsz = le_u64(elf, ph + 40).ok_or_else(bad)?;
        let seg_end = paddr.checked_add(memsz).ok_or_else(bad)?;
        if paddr < GUEST_RAM_IPA || seg_end > GUEST_RAM_IPA + ram.size() || filesz > memsz {
            return Err(fail(format_args!(
                "guest segment {paddr:#x}..{seg_end:#x} is outside its RAM"
            )));
        }
        let bytes = elf.get(offset..offset + filesz as usize).ok_or_else(bad)?;
        // SAFETY: the segment lies inside `ram` (checked above); the rest of it up to memsz
        // is .bss, already zero (the RAM is allocated zeroed).
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                ram.ptr.add((paddr - GUEST_RAM_IPA) as usize),
                bytes.len(),
            )
        };
        end = end.max(seg_end);
    }
    if !(GUEST_RAM_IPA..end).contains(&entry) {
        return Err(fail(format_args!(
            "guest entry {entry:#x} is outside its image"
        )));
    }
    Ok((entry, end))
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

    fn size(&self) -> u64 {
        self.layout.size() as u64
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
    if GUEST_ELF.is_empty() {
        skip!("no guest image: the test kernel was not built by `cargo xtask`");
    }
    let ram = GuestRam::new(GUEST_RAM_SIZE)?;
    let (entry, end) = load_elf(GUEST_ELF, &ram)?;
    ensure!(
        end <= GUEST_RAM_IPA + SCRATCH_OFFSET,
        "the guest image ({end:#x}) overlaps its scratch word"
    );
    if let Some(p) = core::ptr::NonNull::new(ram.ptr) {
        HAL.clean_to_poc(p, (end - GUEST_RAM_IPA) as usize);
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

    let mut vcpu = Vcpu::new(entry, SPSR_EL1H_MASKED);
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
    ensure_eq!(out.status, 0);
    Ok(())
}
