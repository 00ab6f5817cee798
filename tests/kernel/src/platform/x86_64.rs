//! q35: PCI configuration through the ECAM window the MCFG table names (else I/O ports, which
//! reach only the first 256 bytes of each function); SeaBIOS has assigned the BARs.

use crate::Machine;
use iommu::acpi::{Acpi, AcpiError, Signature};
use iommu_boot::pci::{Bdf, ConfigAccess, Ecam, PortIo};
use iommu_boot::testing::{fail, Failure};
use iommu_boot::x86_64::{LOW_MEMORY, UNCACHED_START};
use iommu_vtd::dmar::Dmar;

/// Configuration access as the machine offers it.
pub enum PciConfig {
    /// Segment 0's ECAM window: all 4 KiB of each function.
    Ecam(Ecam),
    /// No usable MCFG window: 256 bytes per function.
    PortIo(PortIo),
}

impl ConfigAccess for PciConfig {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self {
            Self::Ecam(e) => e.read32(bdf, offset),
            Self::PortIo(p) => p.read32(bdf, offset),
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        match self {
            Self::Ecam(e) => e.write32(bdf, offset, value),
            Self::PortIo(p) => p.write32(bdf, offset, value),
        }
    }
}

/// Segment 0's ECAM window from the MCFG table when the boot code maps it as device memory
/// (inside the uncached range below 4 GiB), else port I/O.
pub fn pci_config(m: &Machine) -> Result<PciConfig, Failure> {
    let Some(rsdp) = m.info.rsdp else {
        return Ok(PciConfig::PortIo(PortIo));
    };
    let acpi = Acpi::new(&LOW_MEMORY, rsdp).map_err(fail)?;
    let mcfg = match acpi.find(Signature::MCFG) {
        Err(AcpiError::NotFound { .. }) => return Ok(PciConfig::PortIo(PortIo)),
        Err(e) => return Err(fail(e)),
        Ok(t) => t,
    };
    let window = iommu_boot::pci::ecam_windows(mcfg.bytes())
        .find(|w| w.segment == 0 && w.base >= UNCACHED_START && w.base + w.len() <= 4 << 30);
    Ok(match window {
        // SAFETY: the window lies in [UNCACHED_START, 4 GiB), which the boot code identity-maps
        // cache-disabled for the kernel's life, and the firmware says ECAM is there.
        Some(w) => PciConfig::Ecam(unsafe { Ecam::new(w.base as usize, w.start_bus, w.buses()) }),
        None => PciConfig::PortIo(PortIo),
    })
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
