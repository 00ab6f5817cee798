//! CPU exceptions: a test kernel expects none, so every one of the 32 exception vectors prints
//! what happened and fails the run at once, instead of hanging or triple-faulting into a reboot.
//!
//! Handlers are assembly stubs (stable Rust has no `x86-interrupt` ABI) that push the vector and
//! a uniform error code and call one Rust function. Double faults switch to their own stack
//! (IST), so a kernel stack overflow, which faults on the guard page and then again when the CPU
//! tries to push the exception frame there, is reported too.

use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::registers::control::Cr2;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::{Entry, HandlerFunc};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

const EXCEPTION_VECTORS: usize = 32;
/// The IDT covers every vector: the exceptions, plus the few interrupt vectors of
/// `super::interrupts`; the others stay not present (#NP, reported like any exception).
const IDT_ENTRIES: usize = 256;
const VECTOR_DOUBLE_FAULT: u64 = 8;
const VECTOR_GENERAL_PROTECTION: u64 = 13;
const VECTOR_PAGE_FAULT: u64 = 14;

/// Vectors for which the CPU pushes an error code (Intel SDM vol. 3, table 6-1): #DF, #TS, #NP,
/// #SS, #GP, #PF, #AC, #CP, #VC, #SX. The stubs push a zero for the others so that all frames
/// look alike.
const ERROR_CODE_VECTORS: u32 = (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 17)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

/// Distance between stubs. Each is at most 9 bytes (two short pushes and a near jump), so
/// `.balign` makes the stride exact and stub `v` sits at `iommu_boot_exception_stubs + v * 16`.
const STUB_STRIDE: usize = 16;

/// The TSS interrupt-stack-table slot (0-based, as `x86_64` counts) used by double faults.
const DOUBLE_FAULT_IST_INDEX: u16 = 0;
const DOUBLE_FAULT_STACK_SIZE: usize = 32 * 1024;

const NAMES: [&str; EXCEPTION_VECTORS] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 floating-point error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating-point error",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security exception",
    "reserved",
];

/// The stack as the stubs leave it: the vector and error code they push, then the frame the
/// CPU pushed (64-bit mode always pushes SS:RSP).
#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

core::arch::global_asm!(
    r#"
    .pushsection .text.iommu_boot_exceptions, "ax", @progbits
    .balign {stride}
    .global iommu_boot_exception_stubs
iommu_boot_exception_stubs:
    .set .Lvector, 0
    .rept {count}
    .balign {stride}
    .if (({error_code_vectors} >> .Lvector) & 1) == 0
    push $0
    .endif
    push $.Lvector
    jmp .Lexception_common
    .set .Lvector, .Lvector + 1
    .endr

.Lexception_common:
    mov %rsp, %rdi
    and $-16, %rsp              /* the ABI's call alignment; the handler never returns */
    call {handler}
    ud2
    .popsection
"#,
    stride = const STUB_STRIDE,
    count = const EXCEPTION_VECTORS,
    error_code_vectors = const ERROR_CODE_VECTORS,
    handler = sym handle_exception,
    options(att_syntax),
);

unsafe extern "C" {
    /// The first of the [`EXCEPTION_VECTORS`] stubs above; only its address is used.
    static iommu_boot_exception_stubs: u8;
    /// The unmapped page below the boot stack (boot/x86_64.ld).
    static __boot_stack_guard: u8;
}

#[repr(C, align(16))]
struct Idt([Entry<HandlerFunc>; IDT_ENTRIES]);

#[repr(C, align(16))]
struct Stack([u8; DOUBLE_FAULT_STACK_SIZE]);

/// Written only by the CPU, when it delivers a double fault.
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();
static IDT: Once<Idt> = Once::new();

/// Set by the first exception, so that one raised while reporting it exits without printing
/// instead of recursing until the stack overflows. Nothing is published with it (a second CPU
/// faulting meanwhile just exits), so Relaxed.
static HANDLING: AtomicBool = AtomicBool::new(false);

struct Selectors {
    code: SegmentSelector,
    data: SegmentSelector,
    tss: SegmentSelector,
}

/// Loads a GDT with a TSS (for the double-fault stack) and the exception IDT. Called once by the
/// boot code, before anything that could fault.
pub(super) fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        let stack = &raw const DOUBLE_FAULT_STACK;
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
            VirtAddr::from_ptr(stack) + DOUBLE_FAULT_STACK_SIZE as u64;
        tss
    });
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let selectors = Selectors {
            code: gdt.append(Descriptor::kernel_code_segment()),
            data: gdt.append(Descriptor::kernel_data_segment()),
            tss: gdt.append(Descriptor::tss_segment(tss)),
        };
        (gdt, selectors)
    });
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which lives forever; the code and data
    // descriptors are flat 64-bit kernel segments like the boot GDT's, so the running code and
    // stack keep their meaning, and the TSS descriptor points at a TSS that lives forever.
    unsafe {
        CS::set_reg(selectors.code);
        SS::set_reg(selectors.data);
        DS::set_reg(selectors.data);
        ES::set_reg(selectors.data);
        load_tss(selectors.tss);
    }

    load_idt();
}

/// Loads the one IDT shared by every CPU, building it on first use.
fn load_idt() {
    let idt = IDT.call_once(|| {
        let stubs = VirtAddr::from_ptr(&raw const iommu_boot_exception_stubs);
        let mut idt = Idt([Entry::missing(); IDT_ENTRIES]);
        for (vector, entry) in idt.0.iter_mut().take(EXCEPTION_VECTORS).enumerate() {
            let stub = stubs + (vector * STUB_STRIDE) as u64;
            // SAFETY: `stub` is the assembly stub for this vector, which handles the frame the
            // CPU pushes for it (with or without an error code) and never returns.
            let options = unsafe { entry.set_handler_addr(stub) };
            if vector as u64 == VECTOR_DOUBLE_FAULT {
                // SAFETY: the IST slot holds the top of DOUBLE_FAULT_STACK, used by no other
                // vector; a second double fault would reuse it, but handlers never return, so
                // nothing on it is live by then.
                unsafe { options.set_stack_index(DOUBLE_FAULT_IST_INDEX) };
            }
        }
        super::interrupts::install(&mut idt.0);
        idt
    });
    let pointer = DescriptorTablePointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT lives forever in a `Once` and is never written again; every entry points
    // at a valid stub with the current code selector.
    unsafe { lidt(&pointer) };
}

/// A secondary CPU's own GDT and TSS (a TSS is busy while loaded, and its double-fault stack
/// must be the CPU's own), built on the CPU's first start and kept for its restarts.
static AP_TSS: [Once<TaskStateSegment>; crate::smp::MAX_CPUS] =
    [const { Once::new() }; crate::smp::MAX_CPUS];
static AP_GDT: [Once<(GlobalDescriptorTable, Selectors)>; crate::smp::MAX_CPUS] =
    [const { Once::new() }; crate::smp::MAX_CPUS];

/// The TSS descriptor's "busy" type bit (type 0xB busy, 0x9 available; SDM vol. 3, 7.2.2), in
/// the descriptor's access byte (byte 5).
const TSS_BUSY: u8 = 1 << 1;

/// What [`init`] does, on secondary CPU `index` (1..MAX_CPUS): its own GDT with its own TSS
/// and double-fault stack, and the boot CPU's IDT, so its exceptions are reported alike.
pub(super) fn init_ap(index: usize) {
    let (Some(tss_slot), Some(gdt_slot)) = (AP_TSS.get(index), AP_GDT.get(index)) else {
        return;
    };
    let tss = tss_slot.call_once(|| {
        let stack = alloc::vec![0u128; DOUBLE_FAULT_STACK_SIZE / 16].leak();
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] =
            VirtAddr::from_ptr(stack.as_ptr_range().end);
        tss
    });
    let (gdt, selectors) = gdt_slot.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let selectors = Selectors {
            code: gdt.append(Descriptor::kernel_code_segment()),
            data: gdt.append(Descriptor::kernel_data_segment()),
            tss: gdt.append(Descriptor::tss_segment(tss)),
        };
        (gdt, selectors)
    });
    gdt.load();
    let busy = (x86_64::instructions::tables::sgdt().base.as_u64() as usize
        + usize::from(selectors.tss.index()) * 8
        + 5) as *mut u8;
    // SAFETY: the selectors index the GDT just loaded (this CPU's own, living forever), whose
    // code and data descriptors are flat 64-bit kernel segments like the trampoline's. A restarted
    // CPU loaded the TSS before (INIT does not clear the busy bit, and `ltr` of a busy TSS
    // faults), so the bit is cleared first; no other CPU uses this GDT.
    unsafe {
        busy.write_volatile(busy.read_volatile() & !TSS_BUSY);
        CS::set_reg(selectors.code);
        SS::set_reg(selectors.data);
        DS::set_reg(selectors.data);
        ES::set_reg(selectors.data);
        load_tss(selectors.tss);
    }
    load_idt();
}

extern "C" fn handle_exception(frame: &ExceptionFrame) -> ! {
    if HANDLING.swap(true, Ordering::Relaxed) {
        super::exit(crate::ExitStatus::Failure);
    }
    let name = usize::try_from(frame.vector)
        .ok()
        .and_then(|vector| NAMES.get(vector))
        .unwrap_or(&"unknown");
    crate::console::_print_panic(format_args!(
        "\nEXCEPTION on {}: {name} (vector {}), error code {:#x}, RIP {:#x}, RSP {:#x}, \
         RFLAGS {:#x}\n",
        crate::smp::this_cpu(),
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.rsp,
        frame.rflags
    ));
    match frame.vector {
        VECTOR_PAGE_FAULT | VECTOR_DOUBLE_FAULT => {
            // CR2 still holds the faulting address: nothing here touched unmapped memory.
            let cr2 = Cr2::read_raw();
            let guard = &raw const __boot_stack_guard as u64;
            crate::console::_print_unlocked(format_args!("  CR2 {cr2:#x}\n"));
            if (guard..guard + 4096).contains(&cr2) {
                crate::console::_print_unlocked(format_args!(
                    "  (the boot stack's guard page: kernel stack overflow)\n"
                ));
            }
        }
        // Bit 1 of a #GP error code says the selector indexes the IDT: a vector with no handler.
        VECTOR_GENERAL_PROTECTION if frame.error_code & 0b10 != 0 => {
            crate::console::_print_unlocked(format_args!(
                "  (interrupt vector {} has no handler)\n",
                frame.error_code >> 3
            ));
        }
        _ => {}
    }
    super::exit(crate::ExitStatus::Failure)
}
