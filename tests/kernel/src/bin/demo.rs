//! The demo kernel: `cargo xtask demo` boots it and it tells what the driver sees and does.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
extern "Rust" fn kernel_main(info: &iommu_boot::BootInfo) -> ! {
    iommu_test_kernel::run_demo(info)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("this is a bare-metal kernel: run it with `cargo xtask demo`");
}
