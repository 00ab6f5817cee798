//! Shared body of the test and demo kernels.
#![no_std]

extern crate alloc;

#[cfg(target_os = "none")]
use iommu_boot::{println, BootInfo, ExitStatus};

#[cfg(target_os = "none")]
pub fn run_test_kernel(info: &BootInfo) -> ! {
    println!("iommu test kernel: cmdline '{}'", info.cmdline);
    iommu_boot::exit(ExitStatus::Success)
}

#[cfg(target_os = "none")]
pub fn run_demo(info: &BootInfo) -> ! {
    println!("iommu demo: cmdline '{}'", info.cmdline);
    iommu_boot::exit(ExitStatus::Success)
}
