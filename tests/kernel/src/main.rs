//! The test kernel: boots on QEMU, finds the IOMMU and runs the named tests for this
//! architecture. `cargo xtask test` boots it once per machine of the QEMU matrix.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "Rust" fn kernel_main(info: &iommu_boot::BootInfo) -> ! {
    iommu_test_kernel::run_test_kernel(info)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("this is a bare-metal kernel: run it with `cargo xtask test`");
}
