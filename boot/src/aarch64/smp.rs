//! Starting the secondary CPUs of QEMU's `virt` board: their MPIDR affinities from the
//! devicetree (`reg` of `/cpus/cpu@N`), PSCI CPU_ON through the conduit `/psci` names (HVC for a
//! kernel at EL1, SMC at EL2), and the secondary's first instructions, which copy the boot CPU's
//! translation registers so every CPU runs with the same identity map, caches on.
//!
//! QEMU starts a secondary at the boot CPU's level (EL2 with `virtualization=on`, else EL1), MMU
//! off, x0 = the context id, which is the CPU index here. A secondary runs one job of
//! `crate::smp` and powers itself off (PSCI CPU_OFF); the next run powers it on again.
//!
//! Not done on secondaries (yet): their GIC CPU interface (GICv2 GICC bank, GICv3 redistributor
//! and ICC registers) is not set up, so they run with IRQs masked and take no interrupts.

use super::{fdt, psci, ExceptionLevel};
use crate::smp::{Cpu, MAX_CPUS};
use aarch64_cpu::asm::barrier;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

/// MPIDR_EL1's affinity fields: Aff3 (39:32), Aff2, Aff1, Aff0 (23:0); what CPU_ON and the
/// devicetree's `reg` name a CPU by.
const MPIDR_AFFINITY: u64 = 0xff_00ff_ffff;

/// The boot CPU's translation registers, which a secondary loads before turning its MMU on
/// (field order shared with the assembly below).
#[repr(C, align(64))]
struct Translation {
    mair: u64,
    tcr: u64,
    ttbr0: u64,
    sctlr: u64,
}

struct TranslationCell(UnsafeCell<Translation>);

// SAFETY: written once by the boot CPU in `discover`, before any secondary starts (CPU_ON comes
// after a DSB); secondaries only read it.
unsafe impl Sync for TranslationCell {}

static TRANSLATION: TranslationCell = TranslationCell(UnsafeCell::new(Translation {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    sctlr: 0,
}));

/// Each secondary's stack top, indexed by CPU index; read by the CPU itself once its MMU is on
/// (coherent, cacheable). Relaxed store by the boot CPU, followed by a DSB before CPU_ON.
static STACK_TOPS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

// x0 = CPU index (the CPU_ON context id). The registers are programmed as `_start` and
// `mmu::enable_identity_map` do on the boot CPU, with the boot CPU's own values; TRANSLATION is
// read with the MMU and caches off, which is why `discover` cleans it to the point of coherency.
core::arch::global_asm!(
    ".pushsection .text.iommu_boot_secondary, \"ax\"",
    ".global iommu_boot_secondary_start",
    ".type iommu_boot_secondary_start, %function",
    "iommu_boot_secondary_start:",
    "    msr     daifset, #0xf",
    "    msr     spsel, #1",
    "    mov     x19, x0",
    "    cmp     x19, #{max_cpus}",
    "    b.hs    9f",
    "    adrp    x20, {translation}",
    "    add     x20, x20, :lo12:{translation}",
    "    ldp     x1, x2, [x20, #0]",
    "    ldp     x3, x4, [x20, #16]",
    "    adrp    x5, __exception_vectors",
    "    add     x5, x5, :lo12:__exception_vectors",
    "    mrs     x0, currentel",
    "    ubfx    x0, x0, #2, #2",
    "    cmp     x0, #2",
    "    b.eq    2f",
    "    cmp     x0, #1",
    "    b.ne    9f",
    // EL1
    "    mov     x0, #(3 << 20)",
    "    msr     cpacr_el1, x0",
    "    msr     vbar_el1, x5",
    "    msr     tpidr_el1, x19",
    "    msr     mair_el1, x1",
    "    msr     tcr_el1, x2",
    "    msr     ttbr0_el1, x3",
    "    isb",
    "    tlbi    vmalle1",
    "    dsb     nsh",
    "    isb",
    "    msr     sctlr_el1, x4",
    "    b       3f",
    // EL2: HCR_EL2 first (E2H = 0 selects the layouts below), as in `_start`.
    "2:  mov     x0, #(1 << 31)",
    "    msr     hcr_el2, x0",
    "    isb",
    "    mov     x0, #0x33ff",
    "    msr     cptr_el2, x0",
    "    msr     vbar_el2, x5",
    "    msr     tpidr_el2, x19",
    "    msr     mair_el2, x1",
    "    msr     tcr_el2, x2",
    "    msr     ttbr0_el2, x3",
    "    isb",
    "    tlbi    alle2",
    "    dsb     nsh",
    "    isb",
    "    msr     sctlr_el2, x4",
    "3:  isb",
    "    ic      iallu",
    "    dsb     nsh",
    "    isb",
    "    adrp    x0, {stacks}",
    "    add     x0, x0, :lo12:{stacks}",
    "    ldr     x0, [x0, x19, lsl #3]",
    "    cbz     x0, 9f",
    "    mov     sp, x0",
    "    mov     x0, x19",
    "    bl      {rust_entry}",
    "9:  wfe",
    "    b       9b",
    ".size iommu_boot_secondary_start, . - iommu_boot_secondary_start",
    ".popsection",
    max_cpus = const MAX_CPUS,
    translation = sym TRANSLATION,
    stacks = sym STACK_TOPS,
    rust_entry = sym secondary_rust_entry,
);

unsafe extern "C" {
    static iommu_boot_secondary_start: u8;
}

/// A secondary's Rust code, with the MMU on, on its own stack.
extern "C" fn secondary_rust_entry(index: u64) -> ! {
    crate::smp::secondary_main(index as usize);
    stop_this_cpu()
}

/// The CPUs of the devicetree, boot CPU first, and the boot CPU's translation registers saved
/// for the secondaries. Called once, on the boot CPU.
pub(crate) fn discover(_info: &crate::BootInfo) -> Result<Vec<u64>, String> {
    let dtb = fdt::dtb_at_start_of_ram().ok_or("no devicetree at the start of RAM")?;
    let me = hw_id();
    let mut ids = alloc::vec![me];
    dtb.for_each_cpu_reg(|reg| {
        if reg & MPIDR_AFFINITY != me {
            ids.push(reg & MPIDR_AFFINITY);
        }
    })
    .ok_or("the devicetree has no readable /cpus")?;
    save_translation();
    Ok(ids)
}

fn save_translation() {
    let (mair, tcr, ttbr0, sctlr): (u64, u64, u64, u64);
    // SAFETY: reading the current level's translation registers has no side effect.
    unsafe {
        match ExceptionLevel::current() {
            ExceptionLevel::El1 => asm!(
                "mrs {0}, mair_el1", "mrs {1}, tcr_el1", "mrs {2}, ttbr0_el1", "mrs {3}, sctlr_el1",
                out(reg) mair, out(reg) tcr, out(reg) ttbr0, out(reg) sctlr,
                options(nomem, nostack, preserves_flags)
            ),
            ExceptionLevel::El2 => asm!(
                "mrs {0}, mair_el2", "mrs {1}, tcr_el2", "mrs {2}, ttbr0_el2", "mrs {3}, sctlr_el2",
                out(reg) mair, out(reg) tcr, out(reg) ttbr0, out(reg) sctlr,
                options(nomem, nostack, preserves_flags)
            ),
        }
    }
    let cell = TRANSLATION.0.get();
    // SAFETY: no secondary runs yet (this is discovery), so nothing reads TRANSLATION; the
    // boot CPU writes it once.
    unsafe {
        cell.write(Translation {
            mair,
            tcr,
            ttbr0,
            sctlr,
        })
    };
    // Secondaries read it with their MMU off, from memory: clean the line (the struct is one
    // 64-byte-aligned line or less of a 64-byte-or-larger line) to the point of coherency.
    barrier::dsb(barrier::SY);
    // SAFETY: cleaning a data cache line only writes its data back to memory.
    unsafe { asm!("dc cvac, {}", in(reg) cell as u64, options(nostack, preserves_flags)) };
    barrier::dsb(barrier::SY);
}

/// Powers on `cpu` at `iommu_boot_secondary_start` with its index as context id.
pub(crate) fn start(cpu: Cpu, stack_top: usize) -> Result<(), String> {
    let slot = STACK_TOPS.get(cpu.id.0).ok_or("CPU index out of range")?;
    slot.store(stack_top as u64, Ordering::Relaxed);
    // The stack top (and everything `crate::smp` published) must be observable before the
    // CPU can run.
    barrier::dsb(barrier::ISH);
    let entry = (&raw const iommu_boot_secondary_start) as u64;
    let conduit = psci::conduit(ExceptionLevel::current());
    // A CPU that just recorded its verdict may still be on its way to CPU_OFF. Ask until it is
    // off (AFFINITY_INFO is a plain query), so that CPU_ON is not refused: QEMU logs each
    // refused CPU_ON as a guest error. Without AFFINITY_INFO, CPU_ON's ALREADY_ON / ON_PENDING
    // is retried instead. Both within the check-in bound.
    let started = now_us();
    let in_time = || now_us().saturating_sub(started) < crate::smp::CHECK_IN_TIMEOUT_US;
    loop {
        match psci::affinity_info(conduit, cpu.hw_id) {
            psci::AFFINITY_OFF => break,
            0 | 2 if in_time() => core::hint::spin_loop(),
            0 | 2 => return Err(format!("{} did not power off", cpu.id)),
            // NOT_SUPPORTED and other errors: leave it to CPU_ON.
            _ => break,
        }
    }
    loop {
        match psci::cpu_on(conduit, cpu.hw_id, entry, cpu.id.0 as u64) {
            0 => return Ok(()),
            psci::ALREADY_ON | psci::ON_PENDING if in_time() => core::hint::spin_loop(),
            code => {
                return Err(format!(
                    "PSCI CPU_ON returned {code} ({})",
                    psci::error_name(code)
                ))
            }
        }
    }
}

/// The CPU index the secondary entry (or [`set_this_cpu`]) left in TPIDR_ELx.
pub(crate) fn this_cpu() -> usize {
    let value: u64;
    // SAFETY: reading the software thread id register of the current level has no side effect.
    unsafe {
        match ExceptionLevel::current() {
            ExceptionLevel::El1 => asm!("mrs {}, tpidr_el1", out(reg) value,
                options(nomem, nostack, preserves_flags)),
            ExceptionLevel::El2 => asm!("mrs {}, tpidr_el2", out(reg) value,
                options(nomem, nostack, preserves_flags)),
        }
    }
    value as usize
}

/// Stores this CPU's index in TPIDR_ELx (the boot CPU's, 0, at bring-up).
pub(crate) fn set_this_cpu(index: usize) {
    // SAFETY: TPIDR_ELx is a scratch register for software; nothing else in the kernel uses it.
    unsafe {
        match ExceptionLevel::current() {
            ExceptionLevel::El1 => asm!("msr tpidr_el1, {}", in(reg) index as u64,
                options(nomem, nostack, preserves_flags)),
            ExceptionLevel::El2 => asm!("msr tpidr_el2, {}", in(reg) index as u64,
                options(nomem, nostack, preserves_flags)),
        }
    }
}

/// This CPU's MPIDR affinity fields.
pub(crate) fn hw_id() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect (not trapped at EL1 or EL2).
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    mpidr & MPIDR_AFFINITY
}

/// Microseconds of the generic timer's physical count.
pub(crate) fn now_us() -> u64 {
    let (count, frequency): (u64, u64);
    // SAFETY: reading the counter and its frequency has no side effect; EL1 access to the
    // physical counter is enabled on QEMU `virt` (CNTHCTL_EL2 at reset, or no EL2).
    unsafe {
        asm!("isb", "mrs {0}, cntpct_el0", "mrs {1}, cntfrq_el0",
            out(reg) count, out(reg) frequency, options(nomem, nostack, preserves_flags))
    };
    (u128::from(count) * 1_000_000 / u128::from(frequency.max(1))) as u64
}

/// Powers this CPU off (PSCI CPU_OFF); if the call fails, waits for events forever.
pub(crate) fn stop_this_cpu() -> ! {
    psci::cpu_off(psci::conduit(ExceptionLevel::current()));
    super::park()
}
