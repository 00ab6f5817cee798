//! A minimal interrupt path for the tests that need one (an IOMMU's fault-event MSI, device
//! MSIs through interrupt remapping): the local APIC enabled in xAPIC mode, two vectors
//! ([`TEST_VECTOR`], [`SECOND_TEST_VECTOR`], so a test can see an interrupt move) whose
//! handler counts deliveries per vector, records the last one, calls the hook a test set,
//! signals end of interrupt and returns. Interrupts stay disabled
//! except inside [`with_interrupts`]; the legacy 8259 PICs are masked first, so the only
//! interrupts that can arrive are MSIs a test asked a device for (and spurious ones).
//!
//! Like the exception stubs, the entry is assembly (stable Rust has no `x86-interrupt` ABI): it
//! saves the registers the C ABI lets a call clobber, calls [`handle_test_vector`], restores
//! them and returns with `iretq`. The target is soft-float and has no red zone, so there is no
//! FPU/SSE state to save and nothing below RSP to protect.

use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use x86_64::instructions::interrupts;
use x86_64::instructions::port::PortWriteOnly;
use x86_64::structures::idt::{Entry, HandlerFunc};
use x86_64::VirtAddr;

/// The vector of the test interrupt (above the 32 exception vectors and the 8259's usual
/// 0x08..0x0f / 0x70..0x77 ranges).
pub const TEST_VECTOR: u8 = 0x40;
/// A second test vector, for tests that move an interrupt from one vector to another.
pub const SECOND_TEST_VECTOR: u8 = 0x41;
/// The local APIC's spurious-interrupt vector (its low 4 bits must be 1s on old APICs).
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// xAPIC registers (Intel SDM vol. 3, table 11-1), at the architectural default base, which
/// the boot code maps cache-disabled.
const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
/// SVR bit 8: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;

/// Deliveries of [`TEST_VECTOR`] and [`SECOND_TEST_VECTOR`] so far. Written by the handler,
/// read by tests; single CPU, and the counts themselves are the only data, so Relaxed
/// suffices.
static COUNTS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// The vector delivered last (0: none yet); Relaxed as the counts.
static LAST: AtomicU8 = AtomicU8::new(0);
/// The hook the handler calls (a `fn()` as usize), 0 for none. Set with interrupts disabled.
static HOOK: AtomicUsize = AtomicUsize::new(0);

core::arch::global_asm!(
    r#"
    .pushsection .text.iommu_boot_interrupts, "ax", @progbits
    .balign 16
    .global iommu_boot_test_vector_stub
iommu_boot_test_vector_stub:
    push %rdi
    mov ${first}, %edi
    jmp 1f

    .balign 16
    .global iommu_boot_second_vector_stub
iommu_boot_second_vector_stub:
    push %rdi
    mov ${second}, %edi
1:
    /* The CPU pushed 5 quadwords onto a 16-byte-aligned stack; 9 more (%rdi above, 8 here)
       keep the call below 16-byte aligned, as the ABI wants. %edi carries the vector. */
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %r8
    push %r9
    push %r10
    push %r11
    cld
    call {handler}
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    pop %rdi
    iretq

    .balign 16
    .global iommu_boot_spurious_stub
iommu_boot_spurious_stub:
    /* A spurious interrupt needs no EOI (SDM vol. 3, 11.9). */
    iretq
    .popsection
"#,
    handler = sym handle_test_vector,
    first = const TEST_VECTOR,
    second = const SECOND_TEST_VECTOR,
    options(att_syntax),
);

unsafe extern "C" {
    static iommu_boot_test_vector_stub: u8;
    static iommu_boot_second_vector_stub: u8;
    static iommu_boot_spurious_stub: u8;
}

/// Fills the IDT entries of [`TEST_VECTOR`], [`SECOND_TEST_VECTOR`] and [`SPURIOUS_VECTOR`].
pub(super) fn install(idt: &mut [Entry<HandlerFunc>]) {
    let stubs = [
        (
            TEST_VECTOR,
            VirtAddr::from_ptr(&raw const iommu_boot_test_vector_stub),
        ),
        (
            SECOND_TEST_VECTOR,
            VirtAddr::from_ptr(&raw const iommu_boot_second_vector_stub),
        ),
        (
            SPURIOUS_VECTOR,
            VirtAddr::from_ptr(&raw const iommu_boot_spurious_stub),
        ),
    ];
    for (vector, stub) in stubs {
        if let Some(entry) = idt.get_mut(usize::from(vector)) {
            // SAFETY: `stub` is an interrupt entry above: it preserves every register it or
            // its callee uses and returns with `iretq` to the interrupted code.
            let _ = unsafe { entry.set_handler_addr(stub) };
        }
    }
}

fn lapic(offset: u64) -> *mut u32 {
    (LAPIC_BASE + offset) as *mut u32
}

/// Masks the 8259 PICs and enables the local APIC (SVR), accepting every priority (TPR = 0).
/// Returns the CPU's APIC id, the destination of an MSI meant for it. Idempotent.
pub fn enable_local_apic() -> u8 {
    // SAFETY: ports 0x21 and 0xa1 are the 8259 interrupt mask registers on every PC, q35
    // included; masking all lines only stops legacy interrupts, which no test uses.
    unsafe {
        PortWriteOnly::<u8>::new(0x21).write(0xff);
        PortWriteOnly::<u8>::new(0xa1).write(0xff);
    }
    // SAFETY: the xAPIC registers are at LAPIC_BASE (the reset value of IA32_APIC_BASE, which
    // the boot code leaves alone), mapped cache-disabled; 32-bit aligned accesses as the SDM
    // requires.
    unsafe {
        lapic(LAPIC_TPR).write_volatile(0);
        lapic(LAPIC_SVR).write_volatile(SVR_ENABLE | u32::from(SPURIOUS_VECTOR));
        (lapic(LAPIC_ID).read_volatile() >> 24) as u8
    }
}

/// Sets (or with `None` clears) what the handler of [`TEST_VECTOR`] calls before its EOI. It
/// runs with interrupts disabled, on the interrupted code's stack: it must not take a lock the
/// interrupted code may hold.
pub fn set_hook(hook: Option<fn()>) {
    interrupts::without_interrupts(|| {
        HOOK.store(hook.map_or(0, |f| f as usize), Ordering::Relaxed);
    });
}

/// How many times [`TEST_VECTOR`] was delivered.
pub fn count() -> u64 {
    count_of(TEST_VECTOR)
}

/// How many times `vector` (one of the test vectors; 0 for any other) was delivered.
pub fn count_of(vector: u8) -> u64 {
    match vector {
        TEST_VECTOR => COUNTS[0].load(Ordering::Relaxed),
        SECOND_TEST_VECTOR => COUNTS[1].load(Ordering::Relaxed),
        _ => 0,
    }
}

/// The test vector delivered last, 0 before any.
pub fn last_vector() -> u8 {
    LAST.load(Ordering::Relaxed)
}

/// Runs `f` with interrupts enabled, disabling them again afterwards.
pub fn with_interrupts<R>(f: impl FnOnce() -> R) -> R {
    interrupts::enable();
    let r = f();
    interrupts::disable();
    r
}

extern "C" fn handle_test_vector(vector: u32) {
    let vector = vector as u8;
    if let Some(c) = COUNTS.get(usize::from(vector == SECOND_TEST_VECTOR)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    LAST.store(vector, Ordering::Relaxed);
    let hook = HOOK.load(Ordering::Relaxed);
    if hook != 0 {
        // SAFETY: HOOK only ever holds 0 or a `fn()` stored by `set_hook`.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
        f();
    }
    // SAFETY: the EOI register of the enabled local APIC (see `enable_local_apic`); writing 0
    // ends the in-service interrupt.
    unsafe { lapic(LAPIC_EOI).write_volatile(0) };
}
