//! aarch64 support for QEMU's `virt` board: entry at EL1 or EL2, identity map with caches on,
//! exception reporting, PL011 console, and leaving QEMU with a status.
//!
//! Boot order (see `entry`): assembly parks secondary CPUs, enables FP/NEON, installs the
//! exception vectors, sets the stack and zeroes `.bss`; Rust then turns the MMU on, reads the
//! command line from the devicetree QEMU placed at the start of RAM, and calls `rt::start`.
//! Secondary CPUs run only when `crate::smp` powers them on (`smp`, PSCI CPU_ON), with the boot
//! CPU's translation tables, and power themselves off after their job.

mod entry;
mod exception;
mod fdt;
pub mod gic;
pub mod gicv3;
pub mod its;
mod mmu;
mod psci;
mod semihosting;
pub mod serial;
pub(crate) mod smp;

use crate::ExitStatus;
use aarch64_cpu::registers::{CurrentEL, Readable};
use core::sync::atomic::{AtomicI32, AtomicU8, Ordering};

/// QEMU's exit status when the kernel exits with [`ExitStatus::Success`] (semihosting
/// `SYS_EXIT` passes it through unchanged; QEMU must be started with `-semihosting`).
pub const QEMU_EXIT_SUCCESS: i32 = 0;
/// QEMU's exit status when the kernel exits with [`ExitStatus::Failure`].
pub const QEMU_EXIT_FAILURE: i32 = 1;

/// Where the board puts the flattened devicetree: QEMU loads it at the base of RAM when the
/// ELF leaves room below itself (the linker script links the kernel 2 MiB above).
const DTB_BASE: u64 = 0x4000_0000;

/// Physical ranges the frame allocator ([`crate::memory`]) must not hand out: everything below
/// the end of the kernel image (the devicetree at the start of RAM, the image and its stacks)
/// and everything past the RAM the boot map maps as normal memory.
pub(crate) fn not_for_frames() -> [core::ops::Range<u64>; 2] {
    unsafe extern "C" {
        /// The end of the kernel image, stacks included (boot/aarch64.ld).
        static __image_end: u8;
    }
    let image_end = (&raw const __image_end) as u64;
    [0..image_end, mmu::RAM_WINDOW.end..u64::MAX]
}

/// The exception level the kernel runs at. The boot code stays at the level QEMU started it
/// in: EL2 (with `virtualization=on`) is where the later tests act as a hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExceptionLevel {
    El1,
    El2,
}

impl ExceptionLevel {
    /// The level this code runs at. The entry code refuses anything but EL1 and EL2, so
    /// another value cannot be seen here; it is mapped to EL1 rather than panicking.
    fn current() -> Self {
        match CurrentEL.read(CurrentEL::EL) {
            2 => Self::El2,
            _ => Self::El1,
        }
    }

    fn number(self) -> u8 {
        match self {
            Self::El1 => 1,
            Self::El2 => 2,
        }
    }
}

/// How far [`exit`] got. An exception taken while exiting (semihosting disabled makes
/// `hlt #0xf000` UNDEFINED; a wrong PSCI conduit traps too) continues with the next way out
/// instead of reporting and calling `exit` again forever. Only plain loads and stores are used
/// (no read-modify-write): before the MMU is on every access is to Device memory, where
/// exclusives are not guaranteed to work. One CPU runs, so there is nothing to order.
static EXIT_STAGE: AtomicU8 = AtomicU8::new(STAGE_RUNNING);
const STAGE_RUNNING: u8 = 0;
const STAGE_SEMIHOSTING: u8 = 1;
const STAGE_PSCI: u8 = 2;

/// The status given to [`exit`], for the PSCI fallback's warning.
static EXIT_CODE: AtomicI32 = AtomicI32::new(QEMU_EXIT_SUCCESS);

/// Leaves QEMU with `status`: semihosting `SYS_EXIT` (QEMU exits with [`QEMU_EXIT_SUCCESS`] or
/// [`QEMU_EXIT_FAILURE`]); without `-semihosting`, PSCI `SYSTEM_OFF` (QEMU exits 0 whatever the
/// status, so a warning is printed first); if that fails too, the CPU waits forever.
pub fn exit(status: ExitStatus) -> ! {
    let code = match status {
        ExitStatus::Success => QEMU_EXIT_SUCCESS,
        ExitStatus::Failure => QEMU_EXIT_FAILURE,
    };
    EXIT_CODE.store(code, Ordering::Relaxed);
    EXIT_STAGE.store(STAGE_SEMIHOSTING, Ordering::Relaxed);
    semihosting::sys_exit(code);
    power_off()
}

/// Called first by the exception handler: if the exception was taken on the way out, takes the
/// next way out and does not return.
fn continue_exit_after_exception() {
    match EXIT_STAGE.load(Ordering::Relaxed) {
        STAGE_SEMIHOSTING => power_off(),
        STAGE_PSCI => park(),
        _ => {}
    }
}

fn power_off() -> ! {
    EXIT_STAGE.store(STAGE_PSCI, Ordering::Relaxed);
    let code = EXIT_CODE.load(Ordering::Relaxed);
    crate::console::_print_unlocked(format_args!(
        "\nexit: semihosting unavailable (start QEMU with -semihosting); \
         powering off with PSCI, which loses exit status {code}\n"
    ));
    psci::system_off(psci::conduit(ExceptionLevel::current()));
    park()
}

/// Where a CPU goes when there is nothing left to do: wait for events forever, with
/// interrupts masked since boot.
fn park() -> ! {
    loop {
        aarch64_cpu::asm::wfe();
    }
}
