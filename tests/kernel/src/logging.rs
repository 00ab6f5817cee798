//! The driver crates' `log` output in the test kernels: on the console with `log=LEVEL` on the
//! command line, absent without it.

use crate::Machine;
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq};
use log::LevelFilter;

/// Brings the unit up (through `bring_up`, which the architecture's tests provide) and checks
/// what the logger wrote: at `debug`, the bring-up decisions; with no `log=`, nothing at all.
pub fn logging_follows_the_command_line(
    m: &Machine,
    bring_up: impl FnOnce(&Machine) -> TestResult,
) -> TestResult {
    let level =
        iommu_boot::logger::level(&m.cmdline).map_err(|w| fail(alloc::format!("log={w}")))?;
    ensure_eq!(
        log::max_level(),
        level,
        "the logger runs at the level asked for"
    );
    bring_up(m)?;
    let written = iommu_boot::logger::records_written();
    if level >= LevelFilter::Debug {
        ensure!(written > 0, "log={level}: the driver logged nothing");
    } else if level == LevelFilter::Off {
        ensure_eq!(
            written,
            0,
            "no log= on the command line, yet records were written"
        );
    }
    Ok(())
}
