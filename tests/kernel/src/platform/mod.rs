//! The machine's devices as the tests need them: PCI configuration access and the `edu` DMA
//! devices, found and enabled per architecture.

use crate::Machine;
use alloc::vec::Vec;
use iommu_boot::edu::{self, Edu};
use iommu_boot::pci::{self, Bdf, ConfigAccess};
use iommu_boot::testing::{fail, TestResult};

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
pub use aarch64::{devicetree, pci_config};
#[cfg(target_arch = "x86_64")]
pub use x86_64::pci_config;

/// One `edu` device with its PCI address (the requester id the IOMMU sees).
pub struct EduDevice {
    pub bdf: Bdf,
    pub edu: Edu,
}

/// Every `edu` on bus 0, with bus mastering on, in slot order.
pub fn edu_devices(m: &Machine) -> Result<Vec<EduDevice>, iommu_boot::testing::Failure> {
    let cfg = pci_config(m)?;
    let mut found = Vec::new();
    let mut window = None;
    for bdf in pci::find(&cfg, 0, edu::VENDOR_ID, edu::DEVICE_ID) {
        let bar = bar0(m, &cfg, bdf, &mut window)?;
        pci::enable_dma(&cfg, bdf);
        // SAFETY: BAR0 was just read from (or assigned in) the device's configuration space and
        // lies in MMIO space the boot code maps as device memory, identity-mapped.
        let edu = unsafe { Edu::new(bar as usize) }.map_err(fail)?;
        found.push(EduDevice { bdf, edu });
    }
    Ok(found)
}

/// BAR0 as firmware assigned it or, where no firmware did (aarch64 `virt`), as we assign it from
/// the host bridge window (`window` carries the cursor from one device to the next). Assigned
/// BARs stay assigned, so a later call finds them in place.
fn bar0(
    m: &Machine,
    cfg: &impl ConfigAccess,
    bdf: Bdf,
    window: &mut Option<pci::MmioWindow>,
) -> Result<u64, iommu_boot::testing::Failure> {
    match pci::memory_bar(cfg, bdf, 0) {
        Some(bar) if bar.address != 0 => Ok(bar.address),
        _ => {
            let window = match window {
                Some(w) => w,
                None => window.insert(mmio_window(m)?),
            };
            pci::assign_memory_bars(cfg, bdf, window)
                .get(0)
                .map(|b| b.address)
                .ok_or_else(|| fail("edu BAR0 does not fit the MMIO window"))
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn mmio_window(_m: &Machine) -> Result<pci::MmioWindow, iommu_boot::testing::Failure> {
    Err(fail("firmware left a BAR unassigned on x86_64"))
}

#[cfg(target_arch = "aarch64")]
fn mmio_window(m: &Machine) -> Result<pci::MmioWindow, iommu_boot::testing::Failure> {
    aarch64::mmio_window(m)
}

/// Makes QEMU log a guest error on purpose (for the runner's self-test): a DMA by the last edu,
/// which the runner starts with the default 28-bit DMA mask, to an address beyond it; QEMU clamps
/// and logs it.
pub fn provoke_guest_error(m: &mut Machine) -> TestResult {
    let devices = edu_devices(m)?;
    let Some(d) = devices.last() else {
        iommu_boot::skip!("no edu device")
    };
    let buf = alloc::vec![0u8; 64];
    let beyond_mask = buf.as_ptr() as u64 | 1 << 40;
    d.edu.dma_from_ram(beyond_mask, 0, 8).map_err(fail)
}
