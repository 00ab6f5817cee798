//! q35: PCI configuration through I/O ports; SeaBIOS has assigned the BARs.

use crate::Machine;
use iommu_boot::pci::PortIo;

pub fn pci_config(_m: &Machine) -> Result<PortIo, iommu_boot::testing::Failure> {
    Ok(PortIo)
}
