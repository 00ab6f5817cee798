//! PCIe ATS capabilities as the machine offers them (`pci.ats=N` on the command line: the
//! runner attached N functions with one; default none), found through configuration space
//! and switched on and off.
//!
//! Config space only: the functions here are attached to no domain and do no DMA, so enabling
//! ATS cannot make them request translations the IOMMU is not set up to answer.

use alloc::vec::Vec;

use crate::platform::pci_config;
use crate::Machine;
use iommu_boot::pci::{enumerate, AtsCapability};
use iommu_boot::testing::{fail, Test, TestResult};
use iommu_boot::{ensure, ensure_eq, println};

pub const TESTS: &[Test<Machine>] = &[Test {
    name: "ats_capabilities_are_found_enabled_and_disabled",
    run: ats_capabilities_are_found_enabled_and_disabled,
}];

fn ats_capabilities_are_found_enabled_and_disabled(m: &mut Machine) -> TestResult {
    let want = m.cmdline.get_u64("pci.ats").unwrap_or(0);
    let cfg = pci_config(m)?;
    let found: Vec<AtsCapability> = (0..=255u8)
        .flat_map(|bus| enumerate(&cfg, bus).collect::<Vec<_>>())
        .filter_map(|f| AtsCapability::find(&cfg, f.bdf))
        .collect();
    ensure_eq!(
        found.len() as u64,
        want,
        "functions with an ATS capability (pci.ats)"
    );
    for ats in &found {
        println!(
            "  ATS at {} offset {:#x}: invalidate queue depth {}, page-aligned requests {}",
            ats.bdf, ats.offset, ats.queue_depth, ats.page_aligned
        );
        ensure!(
            !ats.is_enabled(&cfg),
            "{}: ATS enabled before anyone asked",
            ats.bdf
        );
        ats.enable(&cfg, 12).map_err(fail)?;
        ensure!(
            ats.is_enabled(&cfg),
            "{}: ATS enable did not stick",
            ats.bdf
        );
        ensure_eq!(ats.unit_log2(&cfg), 12, "smallest translation unit");
        ats.disable(&cfg);
        ensure!(!ats.is_enabled(&cfg), "{}: ATS still enabled", ats.bdf);
    }
    Ok(())
}
