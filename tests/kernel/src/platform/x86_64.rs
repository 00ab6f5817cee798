//! q35: PCI configuration through I/O ports; SeaBIOS has assigned the BARs.

use crate::Machine;
use iommu::acpi::{Acpi, AcpiError, Signature};
use iommu_boot::pci::PortIo;
use iommu_boot::testing::{fail, Failure};
use iommu_boot::x86_64::LOW_MEMORY;
use iommu_vtd::dmar::Dmar;

pub fn pci_config(_m: &Machine) -> Result<PortIo, iommu_boot::testing::Failure> {
    Ok(PortIo)
}

/// The remapping units the firmware describes: the DMAR table's DRHDs, none without a DMAR.
pub fn iommus_described(m: &Machine) -> Result<usize, Failure> {
    let rsdp = m
        .info
        .rsdp
        .ok_or_else(|| fail("the boot code found no RSDP address in the PVH start info"))?;
    let acpi = Acpi::new(&LOW_MEMORY, rsdp).map_err(fail)?;
    match acpi.find(Signature::DMAR) {
        Err(AcpiError::NotFound { .. }) => Ok(0),
        Err(e) => Err(fail(e)),
        Ok(table) => Ok(Dmar::parse(table.bytes()).map_err(fail)?.drhds().count()),
    }
}
