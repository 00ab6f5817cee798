//! Everything a test kernel needs to start on QEMU and talk to the outside: the architecture entry
//! points (x86_64 PVH, aarch64 `virt`), serial console, heap, PCI configuration access, a driver
//! for QEMU's `edu` DMA device, a test runner, running a closure on every CPU at once (`smp`),
//! and exit with a status.
//!
//! The architecture-specific parts only exist when building for a bare-metal target
//! (`target_os = "none"`); on the host this crate is the portable rest, so it can be unit-tested.
//!
//! A kernel links this crate and defines
//! `#[no_mangle] extern "Rust" fn kernel_main(info: &iommu_boot::BootInfo) -> !`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cmdline;
pub mod console;
pub mod edu;
pub mod fdt;
pub mod logger;
pub mod madt;
pub mod memory;
pub mod pci;
pub mod smp;
pub mod testing;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub mod aarch64;
/// The GICv3 ITS command encodings, pure and host-tested; the ITS driver is `aarch64::its`.
#[path = "aarch64/its_command.rs"]
pub mod its_command;
#[cfg(target_os = "none")]
mod rt;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
pub mod x86_64;

/// What the architecture entry code found out about the machine before calling `kernel_main`.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The kernel command line (QEMU `-append`), empty if none was given.
    pub cmdline: &'static str,
    /// x86_64: physical address of the ACPI RSDP, from the PVH start info.
    pub rsdp: Option<u64>,
    /// aarch64: physical address of the flattened devicetree QEMU placed in RAM.
    pub dtb: Option<u64>,
    /// aarch64: the exception level the kernel runs at (1, or 2 with `virtualization=on`);
    /// 0 on x86_64.
    pub exception_level: u8,
    /// The RAM the firmware reported (PVH memory map, devicetree `memory` node).
    pub ram: memory::RamMap,
}

/// How the kernel leaves QEMU. The runner (`cargo xtask`) maps QEMU's exit status back to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    Failure,
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
use aarch64 as arch;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
use x86_64 as arch;

/// Leaves QEMU with `status`. Never returns.
#[cfg(target_os = "none")]
pub fn exit(status: ExitStatus) -> ! {
    arch::exit(status)
}
