//! Shared body of the test and demo kernels.
//!
//! The runner (`cargo xtask test`) starts QEMU with a machine of its matrix and tells the kernel,
//! on the command line, what that machine is (`vtd.mode=scalable vtd.aw=39 ...`); each test checks
//! what the driver finds against it.
#![no_std]

extern crate alloc;

#[cfg(target_os = "none")]
mod alias;
#[cfg(target_os = "none")]
mod ats;
#[cfg(target_os = "none")]
pub mod dma;
#[cfg(target_os = "none")]
mod dma_api;
#[cfg(target_os = "none")]
pub mod hal;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod hyp;
#[cfg(target_os = "none")]
mod logging;
#[cfg(target_os = "none")]
mod memory;
#[cfg(target_os = "none")]
pub mod platform;
#[cfg(target_os = "none")]
mod selftest;
#[cfg(target_os = "none")]
mod shadow;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod smmu;
#[cfg(target_os = "none")]
mod smp;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod vtd;

#[cfg(target_os = "none")]
use iommu_boot::{cmdline::Cmdline, println, testing::Test, BootInfo, ExitStatus};

/// What every test gets: the boot information and the command line the runner passed.
#[cfg(target_os = "none")]
pub struct Machine {
    pub info: BootInfo,
    pub cmdline: Cmdline<'static>,
}

/// The tests of this architecture, in order: the back-end's, the real guest's (aarch64), where
/// their frames came from (`memory`, after everything that allocated them), then the multi-CPU
/// ones (see `smp`), which must come last.
#[cfg(target_os = "none")]
fn tests(m: &Machine) -> alloc::vec::Vec<Test<Machine>> {
    if m.cmdline.get("selftest").is_some() {
        return selftest::TESTS.to_vec();
    }
    // A machine without an IOMMU: the DMA API's no-IOMMU path only.
    if m.cmdline.get("iommu") == Some("none") {
        return dma_api::NO_IOMMU_TESTS.to_vec();
    }
    #[cfg(target_arch = "x86_64")]
    return [vtd::TESTS, ats::TESTS, memory::TESTS, &vtd::smp_tests()].concat();
    #[cfg(target_arch = "aarch64")]
    return [
        smmu::TESTS,
        hyp::TESTS,
        ats::TESTS,
        memory::TESTS,
        &smmu::smp_tests(),
    ]
    .concat();
}

#[cfg(target_os = "none")]
pub fn run_test_kernel(info: &BootInfo) -> ! {
    let mut machine = Machine {
        info: *info,
        cmdline: Cmdline::new(info.cmdline),
    };
    println!("iommu test kernel: cmdline '{}'", info.cmdline);
    iommu_boot::logger::init(&machine.cmdline);
    hal::HAL.prefer_high(machine.cmdline.get_bool("mem.high") == Some(true));
    // `tests=a,b` runs only the named tests.
    let only = machine.cmdline.get("tests");
    let tests = tests(&machine);
    let summary = iommu_boot::testing::run(&mut machine, &tests, |name| {
        only.is_none_or(|list| list.split(',').any(|n| n == name))
    });
    let status = if summary.failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    };
    iommu_boot::exit(status)
}

#[cfg(target_os = "none")]
pub fn run_demo(info: &BootInfo) -> ! {
    let mut machine = Machine {
        info: *info,
        cmdline: Cmdline::new(info.cmdline),
    };
    iommu_boot::logger::init(&machine.cmdline);
    #[cfg(target_arch = "x86_64")]
    vtd::demo(&mut machine);
    #[cfg(target_arch = "aarch64")]
    smmu::demo(&mut machine);
    iommu_boot::exit(ExitStatus::Success)
}
