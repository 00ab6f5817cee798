//! The guest as the hypervisor holds it: its RAM (host memory, loaded with the guest image),
//! its stage-2 table built with the crate's VMSA stage-2 engine (the same table the SMMU can
//! point at, [`Vm::vm_table`]), entering it with its time budget armed, and taking its pages
//! back with the CPU's and the devices' invalidations.

use core::alloc::Layout;
use core::arch::asm;
use core::cell::Cell;
use core::mem::ManuallyDrop;

use super::exits::{run_loop, Exits};
use super::vcpu::Vcpu;
use super::{elf, GuestArgs, Outcome, GUEST_RAM_IPA, GUEST_RAM_SIZE, SCRATCH_OFFSET, VMID};
use crate::hal::{KernelHal, HAL};
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::{
    Coherency, Gather, Granule, MemType, PageTable, Prot, VmsaConfig, VmsaStage2,
};
use iommu::unit::VmTable;
use iommu_boot::aarch64::gic::Controller;
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};

/// HCR_EL2 (Arm ARM D24.2.48): VM enables stage 2; RW makes EL1 AArch64.
const HCR_VM: u64 = 1 << 0;
const HCR_RW: u64 = 1 << 31;
/// SCTLR_EL1's RES1 bits (ARMv8.0) with M, C and I clear: the guest starts with its MMU off.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// SPSR_EL2 for the guest's entry: EL1h (M = 0b0101) with D, A, I and F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// HCR_EL2.IMO: physical IRQs go to EL2 while the guest runs.
const HCR_IMO: u64 = 1 << 4;
/// The EL2 physical timer's PPI (the devicetree's timer node lists it as PPI 10; INTID 26 on
/// every Arm Base System Architecture machine, QEMU's `virt` included).
const CNTHP_PPI: u32 = 26;
/// How long a guest may run by default; every guest of the tests exits well within it.
const TIME_BUDGET_MS: u64 = 2000;

/// The guest kernel's ELF (tests/guest), built and passed in by `cargo xtask`; empty when the
/// test kernel was built otherwise.
static GUEST_ELF: &[u8] = include_bytes!(env!("IOMMU_TEST_GUEST_IMAGE"));

/// Host-physical memory that backs the guest's RAM (identity-mapped in the host).
pub(super) struct GuestRam {
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

    /// Copies `bytes` to `offset` in the RAM (the host writing the guest's image).
    pub(super) fn copy_in(&self, offset: u64, bytes: &[u8]) -> Result<(), Failure> {
        let end = offset.checked_add(bytes.len() as u64);
        if end.is_none_or(|end| end > self.size()) {
            return Err(fail("a copy beyond the guest's RAM"));
        }
        // SAFETY: the range lies inside the allocation (checked above); `bytes` is host memory
        // that cannot overlap the guest's RAM, which nothing else refers to.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.add(offset as usize),
                bytes.len(),
            )
        };
        Ok(())
    }

    pub(super) fn size(&self) -> u64 {
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

/// CNTHP_CTL_EL2 (Arm ARM D24.12.11): ENABLE, and ISTATUS (the condition is met).
const CNTHP_ENABLE: u64 = 1 << 0;
const CNTHP_ISTATUS: u64 = 1 << 2;

/// Whether the EL2 physical timer's condition is met (the budget ran out).
pub(super) fn timer_fired() -> bool {
    let ctl: u64;
    // SAFETY: reading the timer's control register has no side effect.
    unsafe { asm!("mrs {}, cnthp_ctl_el2", out(reg) ctl, options(nomem, nostack)) };
    ctl & CNTHP_ISTATUS != 0
}

/// CNTFRQ_EL0: the system counter's ticks per second.
fn counter_frequency() -> u64 {
    let f: u64;
    // SAFETY: reading the counter frequency has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
    f
}

/// Input (IPA) bits of the guest's stage 2: what the CPU and the SMMU both translate.
pub(crate) fn ipa_bits() -> u32 {
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
