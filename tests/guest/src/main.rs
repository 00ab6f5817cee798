//! The guest kernel: runs at EL1 under the test kernel's EL2 hypervisor with its MMU off (its
//! addresses are IPAs), reports to it through the hypercalls of `tests/kernel/src/hyp` and
//! exits. Entry: x0 = IPA of a scratch word in its RAM, x1 = an IPA to read once (0 = none).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod guest {
    use core::arch::asm;

    /// Hypercall numbers (x0 of `hvc #0`); the hypervisor's `hyp::HVC_*`.
    const HVC_PRINT: u64 = 0;
    const HVC_REPORT: u64 = 1;
    const HVC_EXIT: u64 = 2;

    /// What the guest writes to its scratch word and reads back.
    const PATTERN: u64 = 0xbeef_cafe_1234_5a5a;
    /// The exit status of a guest that panicked.
    const PANICKED: u64 = 0xdead;

    // FP/NEON untrapped at EL1 first (rustc's target uses them anywhere), then a stack and a
    // zeroed .bss; x0 and x1 (the hypervisor's arguments) pass through to `guest_main`.
    core::arch::global_asm!(
        ".pushsection .text.entry, \"ax\"",
        ".global _start",
        "_start:",
        "    mov     x2, #(3 << 20)",
        "    msr     cpacr_el1, x2",
        "    isb",
        "    adrp    x2, __stack_top",
        "    add     x2, x2, :lo12:__stack_top",
        "    mov     sp, x2",
        "    adrp    x2, __bss_start",
        "    add     x2, x2, :lo12:__bss_start",
        "    adrp    x3, __bss_end",
        "    add     x3, x3, :lo12:__bss_end",
        "1:  cmp     x2, x3",
        "    b.hs    2f",
        "    stp     xzr, xzr, [x2], #16",
        "    b       1b",
        "2:  bl      {main}",
        "3:  b       3b",
        ".popsection",
        main = sym guest_main,
    );

    /// One hypercall (x0 = function, x1 = argument); it returns with every register kept.
    fn hvc(function: u64, arg: u64) {
        // SAFETY: HVC traps to the hypervisor, which returns to the next instruction with
        // every register as it was.
        unsafe { asm!("hvc #0", in("x0") function, in("x1") arg, options(nostack)) };
    }

    fn print(s: &str) {
        for b in s.bytes() {
            hvc(HVC_PRINT, u64::from(b));
        }
    }

    fn exit(status: u64) -> ! {
        hvc(HVC_EXIT, status);
        loop {
            core::hint::spin_loop();
        }
    }

    extern "C" fn guest_main(scratch: u64, probe: u64) -> ! {
        let word = scratch as *mut u64;
        // SAFETY: the hypervisor passes the IPA of an 8-aligned word of this guest's RAM
        // that nothing else uses; volatile, so the access really reaches memory.
        let back = unsafe {
            word.write_volatile(PATTERN);
            word.read_volatile()
        };
        print("guest: hello from EL1\n");
        hvc(HVC_REPORT, back);
        if probe != 0 {
            let _value: u64;
            // SAFETY: a load from an IPA the hypervisor chose; outside this guest's RAM it is
            // a stage-2 abort, after which the hypervisor resumes at the next instruction.
            // One instruction of inline asm, so that is where the abort is.
            unsafe { asm!("ldr {}, [{}]", out(reg) _value, in(reg) probe, options(nostack)) };
            hvc(HVC_REPORT, probe);
        }
        exit(0)
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        print("guest: panic\n");
        exit(PANICKED)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "this is the test kernel's guest: `cargo xtask test` builds it and the test kernel runs it"
    );
}
