//! Exception vectors for the boot kernel: nothing is expected to trap, so every vector reports
//! the exception (class, ESR, FAR, ELR) on the console and fails the run through `exit`.
//!
//! The same table serves EL1 and EL2 (`_start` installs it in VBAR of the level it runs at).
//! A test that expects exceptions (a hypervisor taking guest exits) installs its own table.

use super::ExceptionLevel;
use crate::ExitStatus;
use aarch64_cpu::registers::{
    Readable, ELR_EL1, ELR_EL2, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, SPSR_EL1, SPSR_EL2,
};
use core::sync::atomic::{AtomicBool, Ordering};

// 16 entries of 0x80 bytes, 2 KiB aligned (VBAR_ELx.VBA). Each passes its index to one common
// path that switches to the exception stack: the faulting code's stack may be what failed
// (overflow, bad SP). Nothing returns, so clobbering x0, x1 and SP loses nothing needed.
core::arch::global_asm!(
    ".pushsection .text.vectors, \"ax\"",
    ".balign 2048",
    ".global __exception_vectors",
    "__exception_vectors:",
    ".irp index, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
    "    .balign 0x80",
    "    mov     x0, #\\index",
    "    b       1f",
    ".endr",
    "1:  adrp    x1, __exception_stack_top",
    "    add     x1, x1, :lo12:__exception_stack_top",
    "    mov     sp, x1",
    "    bl      {handler}",
    "2:  wfe",
    "    b       2b",
    ".popsection",
    handler = sym handle_exception,
);

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
        "\nEXCEPTION at EL{level}: {kind} from {source}, ELR {elr:#x}, SPSR {spsr:#x}"
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
