//! x86_64 support for QEMU `-machine q35`: the PVH boot path into long mode, COM1 serial,
//! exception reporting, and leaving QEMU with a status through `isa-debug-exit`.
//!
//! What a kernel can rely on once `kernel_main` runs:
//! - Physical address == virtual address for `0x1000..IDENTITY_MAP_END` (64 GiB); page 0 and the
//!   boot stack's guard page are unmapped, everything above the map is unmapped.
//! - `UNCACHED_START..IDENTITY_MAP_END` (LAPIC, IOAPIC, VT-d at 0xfed9_0000, the 32-bit PCI BARs)
//!   is mapped cache-disabled and, when the CPU supports it, no-execute.
//! - Interrupts are disabled; every CPU exception prints what happened and fails the run.
//!   [`interrupts`] enables the local APIC and one test vector for tests that need an interrupt.
//! - One CPU runs; `crate::smp` starts the others (`smp`: MADT, INIT-SIPI-SIPI, a trampoline
//!   into long mode) only for the duration of a run on every CPU. An AP's stack is heap memory
//!   without a guard page.

mod exceptions;
pub mod interrupts;
mod pvh;
pub mod serial;
pub(crate) mod smp;
mod start_info;

use crate::ExitStatus;
use x86_64::instructions::port::PortWriteOnly;

/// QEMU's exit status when the kernel exits with [`ExitStatus::Success`] (`isa-debug-exit`
/// exits with `(value << 1) | 1`, so 0 is impossible).
pub const QEMU_EXIT_SUCCESS: i32 = 33;
/// QEMU's exit status when the kernel exits with [`ExitStatus::Failure`] (panic, exception,
/// failed test).
pub const QEMU_EXIT_FAILURE: i32 = 35;

/// End of the identity map set up at boot: 64 GiB, RAM above the PCI hole included (the frame
/// allocator hands out no RAM beyond it).
pub const IDENTITY_MAP_END: u64 = 64 << 30;
/// Start of the range mapped cache-disabled: q35 puts its MMIO (the ECAM window at 2.75 GiB,
/// the PCI hole, LAPIC, IOAPIC, VT-d) in the last 1.25 GiB below 4 GiB, where RAM never is
/// (q35 ends low RAM at 2.75 GiB, or at 2 GiB when there is more than that).
pub const UNCACHED_START: u64 = 0xb000_0000;

/// Physical ranges the frame allocator ([`crate::memory`]) must not hand out: the first MiB
/// (firmware data, the start info) and the kernel image after it, the uncached gigabyte below
/// 4 GiB, and everything past the identity map.
pub(crate) fn not_for_frames() -> [core::ops::Range<u64>; 3] {
    unsafe extern "C" {
        /// The end of the kernel image, `.bss` included (boot/x86_64.ld).
        static __bss_end: u8;
    }
    let image_end = (&raw const __bss_end) as u64;
    [
        0..image_end,
        UNCACHED_START..4 << 30,
        IDENTITY_MAP_END..u64::MAX,
    ]
}

/// I/O port of QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`.
const ISA_DEBUG_EXIT_PORT: u16 = 0xf4;
const DEBUG_EXIT_SUCCESS: u32 = 0x10;
const DEBUG_EXIT_FAILURE: u32 = 0x11;

const _: () = assert!(((DEBUG_EXIT_SUCCESS << 1) | 1) as i32 == QEMU_EXIT_SUCCESS);
const _: () = assert!(((DEBUG_EXIT_FAILURE << 1) | 1) as i32 == QEMU_EXIT_FAILURE);

/// Leaves QEMU with `status` (see [`QEMU_EXIT_SUCCESS`], [`QEMU_EXIT_FAILURE`]).
///
/// Without the `isa-debug-exit` device the write does nothing and the CPU halts for good, so
/// the runner's timeout ends the run.
pub fn exit(status: ExitStatus) -> ! {
    let value = match status {
        ExitStatus::Success => DEBUG_EXIT_SUCCESS,
        ExitStatus::Failure => DEBUG_EXIT_FAILURE,
    };
    let mut port = PortWriteOnly::<u32>::new(ISA_DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is either QEMU's isa-debug-exit (the write ends the VM) or unclaimed on
    // q35 (the write is ignored); no memory is touched.
    unsafe { port.write(value) };
    loop {
        // Halting with interrupts enabled could resume on a stray interrupt; an NMI still can,
        // hence the loop.
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// The CPU's time-stamp counter. Not serialising: bracket it with a fence if the order against
/// surrounding loads matters. Under TCG it follows QEMU's virtual clock, not real time.
#[must_use]
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC only reads a counter; every x86_64 CPU has it and the boot code leaves
    // CR4.TSD clear, so it is allowed at CPL 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The firmware tables in low memory (ACPI), read in place through the boot code's identity
/// map: what the boot code and the test kernels hand `iommu::acpi`.
pub struct LowMemory;

/// The one [`LowMemory`].
pub static LOW_MEMORY: LowMemory = LowMemory;

impl iommu::acpi::PhysMemory for LowMemory {
    fn bytes(&self, phys: u64, len: usize) -> Option<&[u8]> {
        let end = phys.checked_add(u64::try_from(len).ok()?)?;
        // Page 0 is unmapped, and the top gigabyte is MMIO, where a slice must not point.
        if phys < 0x1000 || end > UNCACHED_START {
            return None;
        }
        // SAFETY: [phys, end) lies in 0x1000..UNCACHED_START, which the boot code identity-maps
        // (phys == virt) as ordinary cacheable memory for the kernel's whole life. Firmware
        // tables there are never written once the kernel runs, so a shared slice is sound.
        Some(unsafe { core::slice::from_raw_parts(phys as *const u8, len) })
    }
}
