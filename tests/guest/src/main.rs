//! The guest kernel: runs at EL1 under the test kernel's EL2 hypervisor with its MMU off (its
//! addresses are IPAs), reports to it through the hypercalls of `tests/kernel/src/hyp` and
//! exits. Entry: x0 = IPA of a scratch word in its RAM, x1 = an IPA to read once (0 = none),
//! x2 = IPA of a passed-through edu's BAR0 (0 = none), x3 = an IPA outside its RAM to aim one
//! of edu's DMAs at (0 = none), x4 = 1 to spin forever after its RAM test (the hypervisor's
//! time budget must stop it), x5 = IPA of its own (virtual) SMMU (0 = none), x6 = the stream id
//! edu has behind it, x7 = 1 to raise edu's interrupt and take it from its virtual GIC.
#![cfg_attr(target_os = "none", no_std, no_main)]

/// The test kernel's own edu driver, compiled into the guest as its driver for the
/// passed-through device (the file has no dependencies beyond `core`).
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
#[path = "../../../boot/src/edu.rs"]
#[allow(dead_code)]
mod edu;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod page;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod vsmmu;

/// A small heap for the crate's page-table engine and encoders (the `iommu` crate links
/// `alloc`); a static area in the guest's .bss.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod heap {
    const SIZE: usize = 32 * 1024;
    static mut AREA: [u8; SIZE] = [0; SIZE];

    #[global_allocator]
    static ALLOCATOR: linked_list_allocator::LockedHeap =
        linked_list_allocator::LockedHeap::empty();

    /// Hands the area to the allocator; called once, first thing.
    pub fn init() {
        // SAFETY: called once before anything allocates; nothing else refers to AREA.
        unsafe { ALLOCATOR.lock().init((&raw mut AREA).cast(), SIZE) };
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod guest {
    use core::arch::asm;

    use crate::edu::Edu;
    use crate::page::{byte, ipa, set_byte, Page};

    /// Hypercall numbers (x0 of `hvc #0`); the hypervisor's `hyp::HVC_*`.
    const HVC_PRINT: u64 = 0;
    const HVC_REPORT: u64 = 1;
    const HVC_EXIT: u64 = 2;
    const HVC_GIVE_BACK: u64 = 3;

    /// What the guest writes to its scratch word and reads back.
    const PATTERN: u64 = 0xbeef_cafe_1234_5a5a;
    /// The exit status of a guest that panicked.
    const PANICKED: u64 = 0xdead;
    /// The exit status of a guest whose edu did not answer or finish a DMA.
    const EDU_FAILED: u64 = 0xed;
    /// The exit status of a guest whose vSMMU tests could not run to their end.
    const VSMMU_FAILED: u64 = 0x5e;

    /// What the guest hands edu to copy (A) and where edu copies it back (B).
    static mut PAGE_A: Page = Page::ZERO;
    static mut PAGE_B: Page = Page::ZERO;

    /// Byte `i` of what the guest copies (the hypervisor's `passthrough::dma_pattern`).
    pub fn dma_pattern(i: usize) -> u8 {
        (i as u8).wrapping_mul(7).wrapping_add(3)
    }

    // FP/NEON untrapped at EL1 first (rustc's target uses them anywhere), then a stack and a
    // zeroed .bss; x0..x7 (the hypervisor's arguments) pass through to `guest_main`.
    core::arch::global_asm!(
        ".pushsection .text.entry, \"ax\"",
        ".global _start",
        "_start:",
        "    mov     x9, #(3 << 20)",
        "    msr     cpacr_el1, x9",
        "    isb",
        "    adrp    x9, __stack_top",
        "    add     x9, x9, :lo12:__stack_top",
        "    mov     sp, x9",
        "    adrp    x9, __bss_start",
        "    add     x9, x9, :lo12:__bss_start",
        "    adrp    x10, __bss_end",
        "    add     x10, x10, :lo12:__bss_end",
        "1:  cmp     x9, x10",
        "    b.hs    2f",
        "    stp     xzr, xzr, [x9], #16",
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

    /// The guest's tests of its passed-through edu, reported in order: edu's id, the IPA of
    /// page B, the bytes of the A → edu → B round trip that came back wrong, the outside IPA
    /// once the DMA aimed there finished, and B again after reading it once it was given back
    /// (a stage-2 abort the hypervisor records).
    fn edu_tests(bar: u64, outside: u64) -> Result<(), ()> {
        // SAFETY: the hypervisor maps edu's BAR0 (1 MiB) at `bar` as Device memory for the
        // whole run and enabled bus mastering.
        let edu = unsafe { Edu::new(bar as usize) }.map_err(|_| ())?;
        hvc(HVC_REPORT, u64::from(edu.id()));
        let a = &raw mut PAGE_A;
        let b = &raw mut PAGE_B;
        for i in 0..4096 {
            set_byte(a, i, dma_pattern(i));
            set_byte(b, i, 0);
        }
        hvc(HVC_REPORT, ipa(b));
        print("guest: edu DMA A -> edu -> B with guest-physical addresses\n");
        edu.dma_from_ram(ipa(a), 0, 4096).map_err(|_| ())?;
        edu.dma_to_ram(0, ipa(b), 4096).map_err(|_| ())?;
        let wrong = (0..4096).filter(|&i| byte(b, i) != dma_pattern(i)).count();
        hvc(HVC_REPORT, wrong as u64);
        print("guest: edu DMA outside my RAM\n");
        edu.dma_to_ram(0, outside, 64).map_err(|_| ())?;
        hvc(HVC_REPORT, outside);
        print("guest: giving page B back, then DMA to it and a read of it\n");
        hvc(HVC_GIVE_BACK, ipa(b));
        edu.dma_to_ram(0, ipa(b), 64).map_err(|_| ())?;
        let _value: u8;
        // SAFETY: a load from the page just given back: a stage-2 abort, after which the
        // hypervisor resumes at the next instruction. One instruction, so that is where the
        // abort is.
        unsafe { asm!("ldrb {:w}, [{}]", out(reg) _value, in(reg) ipa(b), options(nostack)) };
        hvc(HVC_REPORT, ipa(b));
        Ok(())
    }

    /// Entry: the registers of the hypervisor's `GuestArgs`, in order.
    /// Raises edu's interrupt and takes it from the (virtual) GICv3 CPU interface: polls
    /// ICC_IAR1_EL1 with interrupts masked, ends it with ICC_EOIR1_EL1, acknowledges it at edu.
    fn take_edu_interrupt(bar: u64) -> Option<u32> {
        // SAFETY: as in `edu_tests`.
        let edu = unsafe { Edu::new(bar as usize) }.ok()?;
        // SAFETY: ICC_SRE_EL1.SRE: the system-register interface (the hypervisor allows it).
        unsafe {
            asm!(
                "mrs {t}, S3_0_C12_C12_5",
                "orr {t}, {t}, #1",
                "msr S3_0_C12_C12_5, {t}",
                "isb",
                t = out(reg) _,
                options(nostack)
            )
        };
        print("guest: raising edu's interrupt\n");
        edu.raise_interrupt(1);
        for _ in 0..100_000 {
            let iar: u64;
            // SAFETY: reading ICC_IAR1_EL1 acknowledges the interrupt it returns, which is
            // ended right below.
            unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nostack)) };
            let intid = iar as u32 & 0xff_ffff;
            if intid < 1020 {
                // SAFETY: ends the interrupt just acknowledged.
                unsafe { asm!("msr S3_0_C12_C12_1, {}", in(reg) iar, options(nostack)) };
                edu.acknowledge_interrupt(1);
                return Some(intid);
            }
        }
        None
    }

    extern "C" fn guest_main(
        scratch: u64,
        probe: u64,
        edu_bar: u64,
        outside: u64,
        hang: u64,
        vsmmu: u64,
        vsid: u64,
        virq: u64,
    ) -> ! {
        crate::heap::init();
        let word = scratch as *mut u64;
        // SAFETY: the hypervisor passes the IPA of an 8-aligned word of this guest's RAM
        // that nothing else uses; volatile, so the access really reaches memory.
        let back = unsafe {
            word.write_volatile(PATTERN);
            word.read_volatile()
        };
        print("guest: hello from EL1\n");
        hvc(HVC_REPORT, back);
        if hang != 0 {
            loop {
                core::hint::spin_loop();
            }
        }
        if probe != 0 {
            let _value: u64;
            // SAFETY: a load from an IPA the hypervisor chose; outside this guest's RAM it is
            // a stage-2 abort, after which the hypervisor resumes at the next instruction.
            // One instruction of inline asm, so that is where the abort is.
            unsafe { asm!("ldr {}, [{}]", out(reg) _value, in(reg) probe, options(nostack)) };
            hvc(HVC_REPORT, probe);
        }
        if edu_bar != 0 && vsmmu == 0 && outside != 0 && edu_tests(edu_bar, outside).is_err() {
            print("guest: edu failed\n");
            exit(EDU_FAILED)
        }
        if edu_bar != 0 && virq != 0 {
            match take_edu_interrupt(edu_bar) {
                Some(intid) => hvc(HVC_REPORT, u64::from(intid)),
                None => {
                    print("guest: no interrupt from edu\n");
                    exit(EDU_FAILED)
                }
            }
        }
        if edu_bar != 0 && vsmmu != 0 {
            print("guest: edu through my own SMMU\n");
            // SAFETY: as in `edu_tests`.
            let edu = unsafe { Edu::new(edu_bar as usize) };
            let done = edu.map_err(|_| ()).and_then(|edu| {
                crate::vsmmu::tests(&edu, vsmmu, vsid as u32, outside, &|v| hvc(HVC_REPORT, v))
            });
            if done.is_err() {
                print("guest: vSMMU failed\n");
                exit(VSMMU_FAILED)
            }
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
