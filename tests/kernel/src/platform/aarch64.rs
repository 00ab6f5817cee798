//! `virt`: PCI configuration through the ECAM window the devicetree names; nothing assigns BARs,
//! so they come from the host bridge's 32-bit MMIO window.

use crate::Machine;
use iommu_boot::pci::{Ecam, MmioWindow};
use iommu_boot::testing::{fail, Failure};

pub fn pci_config(_m: &Machine) -> Result<Ecam, Failure> {
    Err(fail("devicetree discovery of the PCIe host is not wired yet"))
}

pub fn mmio_window(_m: &Machine) -> Result<MmioWindow, Failure> {
    Err(fail("devicetree discovery of the PCIe host is not wired yet"))
}
