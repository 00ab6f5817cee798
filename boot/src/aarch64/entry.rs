//! The kernel's first instructions (`_start`, where QEMU's `-kernel` jumps with the MMU off)
//! and the Rust half of the boot that ends in `rt::start`.
//!
//! The assembly does only what must precede compiled code: rustc's `aarch64-unknown-none`
//! emits FP/NEON instructions anywhere, so their traps must be off before the first Rust
//! function runs, and Rust expects a stack and a zeroed `.bss`.

use super::{fdt, mmu, serial, ExceptionLevel, DTB_BASE};
use crate::BootInfo;

// EL2: HCR_EL2 is written first because E2H selects the layout of CPTR_EL2, TCR_EL2 and the
// descriptors; E2H = 0 is the non-VHE layout the rest of the boot code programs. RW = 1 makes
// EL1 AArch64 for the guests of later tests; every trap bit is 0. CPTR_EL2 = 0x33ff is its RES1
// bits with TFP (bit 10) clear: FP/NEON are not trapped, SVE (TZ) and SME (TSM) stay trapped.
//
// EL1: CPACR_EL1.FPEN = 0b11 stops FP/NEON traps at EL1 and EL0.
//
// Another level (EL3 with `secure=on`) is not supported: the kernel leaves QEMU with status 1
// through semihosting at once, before touching anything, rather than run wrongly.
core::arch::global_asm!(
    ".pushsection .text.boot, \"ax\"",
    ".global _start",
    ".type _start, %function",
    "_start:",
    // Only the boot CPU (affinity 0.0.0.0) runs the kernel; QEMU keeps the others powered off
    // until PSCI CPU_ON (which sends them to `smp.rs`), but a firmware might release them all
    // here.
    "    mrs     x0, mpidr_el1",
    "    mov     x1, #0xffffff",
    "    movk    x1, #0xff, lsl #32",
    "    tst     x0, x1",
    "    b.ne    9f",
    "    msr     daifset, #0xf",
    "    msr     spsel, #1",
    "    mrs     x0, currentel",
    "    ubfx    x0, x0, #2, #2",
    "    cmp     x0, #1",
    "    b.eq    1f",
    "    cmp     x0, #2",
    "    b.eq    2f",
    "    adrp    x1, boot_unsupported_el_exit",
    "    add     x1, x1, :lo12:boot_unsupported_el_exit",
    "    mov     x0, #0x18",
    "    hlt     #0xf000",
    "    b       9f",
    // EL1
    "1:  mov     x0, #(3 << 20)",
    "    msr     cpacr_el1, x0",
    "    adrp    x0, __exception_vectors",
    "    add     x0, x0, :lo12:__exception_vectors",
    "    msr     vbar_el1, x0",
    "    b       3f",
    // EL2
    "2:  mov     x0, #(1 << 31)",
    "    msr     hcr_el2, x0",
    "    isb",
    "    mov     x0, #0x33ff",
    "    msr     cptr_el2, x0",
    "    adrp    x0, __exception_vectors",
    "    add     x0, x0, :lo12:__exception_vectors",
    "    msr     vbar_el2, x0",
    // The trap controls and VBAR must be in effect before the first FP instruction or exception.
    "3:  isb",
    "    adrp    x0, __boot_stack_top",
    "    add     x0, x0, :lo12:__boot_stack_top",
    "    mov     sp, x0",
    // The linker script aligns both ends of .bss to 16 bytes.
    "    adrp    x0, __bss_start",
    "    add     x0, x0, :lo12:__bss_start",
    "    adrp    x1, __bss_end",
    "    add     x1, x1, :lo12:__bss_end",
    "4:  cmp     x0, x1",
    "    b.hs    5f",
    "    stp     xzr, xzr, [x0], #16",
    "    b       4b",
    "5:  bl      {rust_entry}",
    "9:  wfe",
    "    b       9b",
    ".size _start, . - _start",
    ".popsection",
    ".pushsection .rodata.boot, \"a\"",
    ".balign 8",
    // Semihosting SYS_EXIT parameter block: ADP_Stopped_ApplicationExit, status 1.
    "boot_unsupported_el_exit:",
    "    .quad   0x20026, 1",
    ".popsection",
    rust_entry = sym rust_entry,
);

/// The Rust half of the boot, called once by `_start` on the boot stack with the MMU off.
extern "C" fn rust_entry() -> ! {
    let el = ExceptionLevel::current();
    serial::init();
    // SAFETY: this is the boot CPU's only call, made with the MMU off before anything relies
    // on memory attributes; the identity map keeps every address the code uses valid.
    unsafe { mmu::enable_identity_map(el) };

    let dtb = fdt::dtb_at_start_of_ram();
    let cmdline = dtb
        .as_ref()
        .and_then(|fdt| fdt.property("chosen", "bootargs"))
        .and_then(fdt::as_str)
        .unwrap_or("");
    let ram = dtb.as_ref().map(fdt::memory).unwrap_or_default();
    let info = BootInfo {
        cmdline,
        rsdp: None,
        dtb: dtb.is_some().then_some(DTB_BASE),
        exception_level: el.number(),
        ram,
    };
    crate::rt::start(&info)
}
