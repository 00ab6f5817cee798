//! Deliberate faults for the runner's self-test (`selftest=fail|panic|hang|guest-error|cpu-panic`
//! on the command line; `cpu-panic` on an `-smp` boot): `cargo xtask test` boots each and
//! requires the run to be judged failed, so a runner that stopped noticing failures would
//! itself fail.

use crate::Machine;
use iommu_boot::testing::{Test, TestResult};

pub static TESTS: &[Test<Machine>] = &[Test {
    name: "selftest_deliberate_fault",
    run: deliberate_fault,
}];

fn deliberate_fault(m: &mut Machine) -> TestResult {
    match m.cmdline.get("selftest") {
        Some("fail") => iommu_boot::ensure!(1 + 1 == 3, "deliberately failing assertion"),
        Some("panic") => panic!("deliberate panic"),
        Some("hang") => loop {
            core::hint::spin_loop();
        },
        Some("guest-error") => crate::platform::provoke_guest_error(m)?,
        Some("cpu-panic") => crate::smp::last_cpu_panics(m)?,
        other => iommu_boot::skip!("unknown selftest {other:?}"),
    }
    Ok(())
}
