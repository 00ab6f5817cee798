//! The world switch between the test kernel at EL2 and a guest at EL1: `guest_enter` saves the
//! host's callee-saved registers, loads the guest's and ERETs; any exception from the guest
//! comes back through this module's vector table, which saves the guest's registers, puts the
//! host's back and returns from `guest_enter` with the vector index, like a function call.
//!
//! The general and FP/SIMD registers are switched (the guest is Rust, which uses NEON
//! anywhere); EL1 system registers are not: only one guest runs, and [`super`] programs the
//! few it needs before the first entry.

/// A guest's general registers and return state, as the world switch saves and loads them.
/// Offsets are fixed (`#[repr(C)]`): the assembly below addresses the fields by number.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Vcpu {
    /// x0..x30 (offsets 0..248).
    pub x: [u64; 31],
    /// The host's SP while the guest runs (offset 248).
    host_sp: u64,
    /// ELR_EL2: where the guest resumes (offset 256).
    pub pc: u64,
    /// SPSR_EL2: the guest's PSTATE on resume (offset 264).
    pub pstate: u64,
    /// q0..q31 (offsets 272..784).
    fp: [u128; 32],
    /// FPSR and FPCR (offsets 784 and 792).
    fpsr: u64,
    fpcr: u64,
}

/// The vCPU running now, for the exit path (which has no free register to find it otherwise).
/// Written by `guest_enter` before the ERET and read by the exit vector, on the same CPU, with
/// the exception in between ordering them.
#[no_mangle]
static mut HYP_CURRENT_VCPU: *mut Vcpu = core::ptr::null_mut();

// Host frame on the host stack: x29/x30 and x19..x28 (96 bytes), then d8..d15 and FPCR
// (80 bytes), what AAPCS64 says a callee keeps. A vector entry is 32 instructions: each saves
// x0/x1 below the host's SP and branches to the common save with its index in x1. VBAR_EL2 points at `hyp_vectors` only between the
// ERET and the exit; the exit path puts the boot kernel's table back before any Rust runs.
// Exceptions taken at EL2 itself (vectors 0..7) go on to the boot kernel's table entry, which
// reports them as it would have.
core::arch::global_asm!(
    ".pushsection .text.hyp, \"ax\"",
    ".global hyp_guest_enter",
    ".type hyp_guest_enter, %function",
    "hyp_guest_enter:",
    "    stp     x29, x30, [sp, #-96]!",
    "    stp     x19, x20, [sp, #16]",
    "    stp     x21, x22, [sp, #32]",
    "    stp     x23, x24, [sp, #48]",
    "    stp     x25, x26, [sp, #64]",
    "    stp     x27, x28, [sp, #80]",
    "    sub     sp, sp, #80",
    "    stp     d8, d9, [sp, #0]",
    "    stp     d10, d11, [sp, #16]",
    "    stp     d12, d13, [sp, #32]",
    "    stp     d14, d15, [sp, #48]",
    "    mrs     x1, fpcr",
    "    str     x1, [sp, #64]",
    "    add     x1, x0, #272",
    "    ldp     q0, q1, [x1, #0]",
    "    ldp     q2, q3, [x1, #32]",
    "    ldp     q4, q5, [x1, #64]",
    "    ldp     q6, q7, [x1, #96]",
    "    ldp     q8, q9, [x1, #128]",
    "    ldp     q10, q11, [x1, #160]",
    "    ldp     q12, q13, [x1, #192]",
    "    ldp     q14, q15, [x1, #224]",
    "    ldp     q16, q17, [x1, #256]",
    "    ldp     q18, q19, [x1, #288]",
    "    ldp     q20, q21, [x1, #320]",
    "    ldp     q22, q23, [x1, #352]",
    "    ldp     q24, q25, [x1, #384]",
    "    ldp     q26, q27, [x1, #416]",
    "    ldp     q28, q29, [x1, #448]",
    "    ldp     q30, q31, [x1, #480]",
    "    add     x1, x0, #784",
    "    ldp     x2, x3, [x1]",
    "    msr     fpsr, x2",
    "    msr     fpcr, x3",
    "    mov     x1, sp",
    "    str     x1, [x0, #248]",
    "    adrp    x1, HYP_CURRENT_VCPU",
    "    str     x0, [x1, :lo12:HYP_CURRENT_VCPU]",
    "    ldr     x1, [x0, #256]",
    "    msr     elr_el2, x1",
    "    ldr     x1, [x0, #264]",
    "    msr     spsr_el2, x1",
    "    adrp    x1, hyp_vectors",
    "    add     x1, x1, :lo12:hyp_vectors",
    "    msr     vbar_el2, x1",
    "    isb",
    "    ldp     x2, x3, [x0, #16]",
    "    ldp     x4, x5, [x0, #32]",
    "    ldp     x6, x7, [x0, #48]",
    "    ldp     x8, x9, [x0, #64]",
    "    ldp     x10, x11, [x0, #80]",
    "    ldp     x12, x13, [x0, #96]",
    "    ldp     x14, x15, [x0, #112]",
    "    ldp     x16, x17, [x0, #128]",
    "    ldp     x18, x19, [x0, #144]",
    "    ldp     x20, x21, [x0, #160]",
    "    ldp     x22, x23, [x0, #176]",
    "    ldp     x24, x25, [x0, #192]",
    "    ldp     x26, x27, [x0, #208]",
    "    ldp     x28, x29, [x0, #224]",
    "    ldr     x30, [x0, #240]",
    "    ldp     x0, x1, [x0, #0]",
    "    eret",
    ".size hyp_guest_enter, . - hyp_guest_enter",
    // The exit: the guest's x0/x1 are below SP, x1 = the vector index (8..11 from AArch64).
    "hyp_guest_exit:",
    "    adrp    x0, HYP_CURRENT_VCPU",
    "    ldr     x0, [x0, :lo12:HYP_CURRENT_VCPU]",
    "    stp     x2, x3, [x0, #16]",
    "    stp     x4, x5, [x0, #32]",
    "    stp     x6, x7, [x0, #48]",
    "    stp     x8, x9, [x0, #64]",
    "    stp     x10, x11, [x0, #80]",
    "    stp     x12, x13, [x0, #96]",
    "    stp     x14, x15, [x0, #112]",
    "    stp     x16, x17, [x0, #128]",
    "    stp     x18, x19, [x0, #144]",
    "    stp     x20, x21, [x0, #160]",
    "    stp     x22, x23, [x0, #176]",
    "    stp     x24, x25, [x0, #192]",
    "    stp     x26, x27, [x0, #208]",
    "    stp     x28, x29, [x0, #224]",
    "    str     x30, [x0, #240]",
    "    mov     x2, x1",
    "    ldp     x3, x4, [sp], #16",
    "    stp     x3, x4, [x0, #0]",
    "    add     x1, x0, #272",
    "    stp     q0, q1, [x1, #0]",
    "    stp     q2, q3, [x1, #32]",
    "    stp     q4, q5, [x1, #64]",
    "    stp     q6, q7, [x1, #96]",
    "    stp     q8, q9, [x1, #128]",
    "    stp     q10, q11, [x1, #160]",
    "    stp     q12, q13, [x1, #192]",
    "    stp     q14, q15, [x1, #224]",
    "    stp     q16, q17, [x1, #256]",
    "    stp     q18, q19, [x1, #288]",
    "    stp     q20, q21, [x1, #320]",
    "    stp     q22, q23, [x1, #352]",
    "    stp     q24, q25, [x1, #384]",
    "    stp     q26, q27, [x1, #416]",
    "    stp     q28, q29, [x1, #448]",
    "    stp     q30, q31, [x1, #480]",
    "    mrs     x3, fpsr",
    "    mrs     x4, fpcr",
    "    add     x1, x0, #784",
    "    stp     x3, x4, [x1]",
    "    mrs     x1, elr_el2",
    "    str     x1, [x0, #256]",
    "    mrs     x1, spsr_el2",
    "    str     x1, [x0, #264]",
    "    adrp    x1, __exception_vectors",
    "    add     x1, x1, :lo12:__exception_vectors",
    "    msr     vbar_el2, x1",
    "    isb",
    "    ldr     x1, [x0, #248]",
    "    mov     sp, x1",
    "    mov     x0, x2",
    "    ldp     d8, d9, [sp, #0]",
    "    ldp     d10, d11, [sp, #16]",
    "    ldp     d12, d13, [sp, #32]",
    "    ldp     d14, d15, [sp, #48]",
    "    ldr     x1, [sp, #64]",
    "    msr     fpcr, x1",
    "    add     sp, sp, #80",
    "    ldp     x19, x20, [sp, #16]",
    "    ldp     x21, x22, [sp, #32]",
    "    ldp     x23, x24, [sp, #48]",
    "    ldp     x25, x26, [sp, #64]",
    "    ldp     x27, x28, [sp, #80]",
    "    ldp     x29, x30, [sp], #96",
    "    ret",
    ".balign 2048",
    "hyp_vectors:",
    ".irp index, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15",
    "    .balign 0x80",
    "    .if \\index < 8",
    "    b       __exception_vectors + \\index * 0x80",
    "    .else",
    // SP_EL2 is the host's SP at the ERET: the two words below it are free.
    "    stp     x0, x1, [sp, #-16]!",
    "    mov     x1, #\\index",
    "    b       hyp_guest_exit",
    "    .endif",
    ".endr",
    ".popsection",
);

extern "C" {
    fn hyp_guest_enter(vcpu: *mut Vcpu) -> u64;
}

impl Vcpu {
    /// A vCPU that starts at `pc` with PSTATE `pstate` and all registers zero.
    pub fn new(pc: u64, pstate: u64) -> Self {
        Self {
            pc,
            pstate,
            ..Self::default()
        }
    }

    /// Runs the guest until its next exception to EL2; returns the vector index it came
    /// through (8 = synchronous from AArch64 EL1, 9 = IRQ, ...). ESR/FAR/HPFAR_EL2 describe it.
    ///
    /// # Safety
    /// HCR_EL2, VTCR_EL2 and VTTBR_EL2 must confine the guest (stage 2 on, mapping only memory
    /// the guest may own), interrupts must be masked, and the caller must read the syndrome
    /// registers before anything else can take an exception to EL2.
    pub unsafe fn run(&mut self) -> u64 {
        // SAFETY: the caller confines the guest; `hyp_guest_enter` keeps the AAPCS64
        // callee-saved registers and returns on the host stack it was called on.
        unsafe { hyp_guest_enter(self) }
    }
}

// The assembly's offsets.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(Vcpu, host_sp) == 248);
    assert!(offset_of!(Vcpu, pc) == 256);
    assert!(offset_of!(Vcpu, pstate) == 264);
    assert!(offset_of!(Vcpu, fp) == 272);
    assert!(offset_of!(Vcpu, fpsr) == 784);
    assert!(offset_of!(Vcpu, fpcr) == 792);
};
