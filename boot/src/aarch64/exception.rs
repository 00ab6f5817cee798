//! Exception vectors for the boot kernel. An IRQ taken at the kernel's own level (vector 5,
//! "current EL, SP_ELx") goes to the GIC driver's handler ([`super::gic`]) with the interrupted
//! context saved, and returns to it; every other exception, and an IRQ before a GIC is set up,
//! is reported (class, ESR, FAR, ELR) on the console and fails the run through `exit`.
//!
//! The same table serves EL1 and EL2 (`_start` installs it in VBAR of the level it runs at).
//! A test that expects other exceptions (a hypervisor taking guest exits) installs its own table.

use super::ExceptionLevel;
use crate::ExitStatus;
use aarch64_cpu::registers::{
    Readable, ELR_EL1, ELR_EL2, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, SPSR_EL1, SPSR_EL2,
};
use core::sync::atomic::{AtomicBool, Ordering};

/// Vector of an IRQ taken from the current level with SP_ELx (the kernel always uses SP_ELx).
const IRQ_CURRENT_EL: u64 = 5;

// 16 entries of 0x80 bytes, 2 KiB aligned (VBAR_ELx.VBA). Each but the IRQ one passes its index
// to one common path that switches to the exception stack: the faulting code's stack may be
// what failed (overflow, bad SP). Nothing returns, so clobbering x0, x1 and SP loses nothing
// needed.
//
// The IRQ entry returns to the interrupted code, so it saves everything a Rust function may
// change: the caller-saved general registers (x0-x18, x29 kept anyway, x30), all of q0-q31
// (rustc uses NEON anywhere, and callees keep only the low halves of q8-q15), FPSR and FPCR.
// ELR/SPSR need no saving: IRQs stay masked in the handler and any other exception there is
// fatal. Frame: x0-x30 pairs at 0..176, FPSR/FPCR at 176, q0-q31 at 192..704.
core::arch::global_asm!(
    ".pushsection .text.vectors, \"ax\"",
    ".balign 2048",
    ".global __exception_vectors",
    "__exception_vectors:",
    ".irp index, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
    "    .balign 0x80",
    "    .if \\index == 5",
    "    b       3f",
    "    .else",
    "    mov     x0, #\\index",
    "    b       1f",
    "    .endif",
    ".endr",
    "1:  adrp    x1, __exception_stack_top",
    "    add     x1, x1, :lo12:__exception_stack_top",
    "    mov     sp, x1",
    "    bl      {handler}",
    "2:  wfe",
    "    b       2b",
    "3:  sub     sp, sp, #704",
    "    stp     x0, x1, [sp, #0]",
    "    stp     x2, x3, [sp, #16]",
    "    stp     x4, x5, [sp, #32]",
    "    stp     x6, x7, [sp, #48]",
    "    stp     x8, x9, [sp, #64]",
    "    stp     x10, x11, [sp, #80]",
    "    stp     x12, x13, [sp, #96]",
    "    stp     x14, x15, [sp, #112]",
    "    stp     x16, x17, [sp, #128]",
    "    stp     x18, x29, [sp, #144]",
    "    str     x30, [sp, #160]",
    "    mrs     x0, fpsr",
    "    mrs     x1, fpcr",
    "    stp     x0, x1, [sp, #176]",
    "    stp     q0, q1, [sp, #192]",
    "    stp     q2, q3, [sp, #224]",
    "    stp     q4, q5, [sp, #256]",
    "    stp     q6, q7, [sp, #288]",
    "    stp     q8, q9, [sp, #320]",
    "    stp     q10, q11, [sp, #352]",
    "    stp     q12, q13, [sp, #384]",
    "    stp     q14, q15, [sp, #416]",
    "    stp     q16, q17, [sp, #448]",
    "    stp     q18, q19, [sp, #480]",
    "    stp     q20, q21, [sp, #512]",
    "    stp     q22, q23, [sp, #544]",
    "    stp     q24, q25, [sp, #576]",
    "    stp     q26, q27, [sp, #608]",
    "    stp     q28, q29, [sp, #640]",
    "    stp     q30, q31, [sp, #672]",
    "    bl      {irq}",
    "    ldp     q30, q31, [sp, #672]",
    "    ldp     q28, q29, [sp, #640]",
    "    ldp     q26, q27, [sp, #608]",
    "    ldp     q24, q25, [sp, #576]",
    "    ldp     q22, q23, [sp, #544]",
    "    ldp     q20, q21, [sp, #512]",
    "    ldp     q18, q19, [sp, #480]",
    "    ldp     q16, q17, [sp, #448]",
    "    ldp     q14, q15, [sp, #416]",
    "    ldp     q12, q13, [sp, #384]",
    "    ldp     q10, q11, [sp, #352]",
    "    ldp     q8, q9, [sp, #320]",
    "    ldp     q6, q7, [sp, #288]",
    "    ldp     q4, q5, [sp, #256]",
    "    ldp     q2, q3, [sp, #224]",
    "    ldp     q0, q1, [sp, #192]",
    "    ldp     x0, x1, [sp, #176]",
    "    msr     fpsr, x0",
    "    msr     fpcr, x1",
    "    ldr     x30, [sp, #160]",
    "    ldp     x18, x29, [sp, #144]",
    "    ldp     x16, x17, [sp, #128]",
    "    ldp     x14, x15, [sp, #112]",
    "    ldp     x12, x13, [sp, #96]",
    "    ldp     x10, x11, [sp, #80]",
    "    ldp     x8, x9, [sp, #64]",
    "    ldp     x6, x7, [sp, #48]",
    "    ldp     x4, x5, [sp, #32]",
    "    ldp     x2, x3, [sp, #16]",
    "    ldp     x0, x1, [sp, #0]",
    "    add     sp, sp, #704",
    "    eret",
    ".popsection",
    handler = sym handle_exception,
    irq = sym handle_irq,
);

/// The IRQ vector's Rust half: the GIC driver acknowledges, records and ends the interrupt. An
/// IRQ nobody set up for is reported like any other unexpected exception.
extern "C" fn handle_irq() {
    if !super::gic::handle_irq() {
        handle_exception(IRQ_CURRENT_EL)
    }
}

/// Set while the handler reports, so an exception inside the report (a fault while printing)
/// exits at once instead of recursing. Plain loads and stores only, as for `EXIT_STAGE`: this
/// may run with the MMU off, and only one CPU runs.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Reports the exception taken through vector `index` (0..16, in VBAR order) and exits.
extern "C" fn handle_exception(index: u64) -> ! {
    super::continue_exit_after_exception();
    if REPORTING.load(Ordering::Relaxed) {
        super::exit(ExitStatus::Failure);
    }
    REPORTING.store(true, Ordering::Relaxed);

    let el = ExceptionLevel::current();
    let (esr, ec, far, elr, spsr) = match el {
        ExceptionLevel::El1 => (
            ESR_EL1.get(),
            ESR_EL1.read(ESR_EL1::EC),
            FAR_EL1.get(),
            ELR_EL1.get(),
            SPSR_EL1.get(),
        ),
        ExceptionLevel::El2 => (
            ESR_EL2.get(),
            ESR_EL2.read(ESR_EL2::EC),
            FAR_EL2.get(),
            ELR_EL2.get(),
            SPSR_EL2.get(),
        ),
    };
    let kind = ["synchronous", "IRQ", "FIQ", "SError"][(index % 4) as usize];
    let source = [
        "current EL, SP_EL0",
        "current EL, SP_ELx",
        "lower EL, AArch64",
        "lower EL, AArch32",
    ][(index / 4 % 4) as usize];
    let level = el.number();
    let print = crate::console::_print_unlocked;
    print(format_args!(
        "\nEXCEPTION at EL{level} on {}: {kind} from {source}, ELR {elr:#x}, SPSR {spsr:#x}",
        crate::smp::this_cpu()
    ));
    // ESR and FAR are only written for synchronous exceptions and SErrors; for an interrupt
    // they would be left over from an earlier exception.
    if kind == "synchronous" || kind == "SError" {
        print(format_args!(
            ": EC {ec:#04x} ({}), ESR {esr:#x}, FAR {far:#x}",
            class_name(ec)
        ));
        if super::mmu::stack_guard().contains(&far) {
            print(format_args!(
                " (stack overflow: FAR is in the unmapped stack guard)"
            ));
        }
    }
    print(format_args!("\n"));
    super::exit(ExitStatus::Failure)
}

/// What an exception class (ESR_ELx.EC, Arm ARM D24.2 "ESR_EL1") means, for the report.
fn class_name(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason, e.g. an undefined instruction",
        0x01 => "trapped WFI/WFE",
        0x07 => "trapped SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "trapped MSR/MRS/system instruction",
        0x19 => "trapped SVE access",
        0x20 => "instruction abort from a lower EL",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from a lower EL",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "see ESR_ELx.EC in the Arm ARM",
    }
}
