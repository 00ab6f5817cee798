//! Runtime glue shared by both architectures: heap, panic handler, and the hand-over from the
//! architecture entry code to `kernel_main`.

use crate::{BootInfo, ExitStatus};
use linked_list_allocator::LockedHeap;

/// Heap for the test kernels' own data (IOMMU tables, queues and DMA buffers come from
/// `memory`, all of RAM); identity-mapped like the rest of RAM (physical == virtual).
const HEAP_SIZE: usize = 32 << 20;

#[repr(C, align(4096))]
struct HeapArea([u8; HEAP_SIZE]);

static mut HEAP_AREA: HeapArea = HeapArea([0; HEAP_SIZE]);

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

unsafe extern "Rust" {
    fn kernel_main(info: &BootInfo) -> !;
}

/// Called once by the architecture entry code, on the boot stack, with translation set up
/// (identity map) and `.bss` zeroed.
pub(crate) fn start(info: &BootInfo) -> ! {
    // SAFETY: `start` runs once, before anything allocates, so nobody else refers to HEAP_AREA.
    unsafe {
        let area = &raw mut HEAP_AREA;
        ALLOCATOR.lock().init(area.cast::<u8>(), HEAP_SIZE);
    }
    crate::memory::init(info.ram.iter(), &crate::arch::not_for_frames());
    // SAFETY: `kernel_main` is defined by the kernel binary with exactly this signature.
    unsafe { kernel_main(info) }
}

/// On a secondary CPU a panic is that CPU's verdict in the current multi-CPU run
/// (`smp::secondary_panicked`); on the boot CPU it ends the run.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let cpu = crate::smp::this_cpu();
    if cpu.0 != 0 {
        crate::smp::secondary_panicked(cpu, info)
    }
    match crate::smp::cpus().first() {
        Some(boot) => crate::console::_print_panic(format_args!("\nPANIC: {boot}: {info}\n")),
        None => crate::console::_print_panic(format_args!("\nPANIC: {info}\n")),
    }
    crate::exit(ExitStatus::Failure)
}
