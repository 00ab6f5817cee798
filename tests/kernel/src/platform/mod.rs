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
pub use aarch64::{devicetree, gic, gicv3, iommus_described, its, pci_config};
#[cfg(target_arch = "x86_64")]
pub use x86_64::{iommus_described, pci_config, PciConfig};

/// One `edu` device with its PCI address (the requester id the IOMMU sees).
pub struct EduDevice {
    pub bdf: Bdf,
    pub edu: Edu,
}

/// Every `edu` on bus 0, with bus mastering on, in slot order; without the one the DMA API's
/// tests use at its own mask (see [`masked_edu`]).
pub fn edu_devices(m: &Machine) -> Result<Vec<EduDevice>, iommu_boot::testing::Failure> {
    let masked = masked_edu_slot(m);
    Ok(all_edus(m)?
        .into_iter()
        .filter(|e| Some(e.bdf) != masked)
        .collect())
}

/// The slot of the `edu` the runner started with a narrow DMA mask for the DMA API's tests
/// (`dma.slot=N` on the command line: bus 0, device N, function 0).
fn masked_edu_slot(m: &Machine) -> Option<Bdf> {
    let slot = m.cmdline.get_u64("dma.slot")?;
    Some(Bdf::new(0, u8::try_from(slot).ok()?, 0))
}

/// The `edu` of `dma.slot=N` with its DMA mask (`dma.mask=B` bits), if the command line names
/// one; an error if it names one that is not there.
pub fn masked_edu(m: &Machine) -> Result<Option<(EduDevice, u64)>, iommu_boot::testing::Failure> {
    let Some(bdf) = masked_edu_slot(m) else {
        return Ok(None);
    };
    let bits = m
        .cmdline
        .get_u64("dma.mask")
        .filter(|b| (12..=64).contains(b))
        .ok_or_else(|| fail("dma.slot without a dma.mask=12..64"))?;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let edu = all_edus(m)?
        .into_iter()
        .find(|e| e.bdf == bdf)
        .ok_or_else(|| fail(alloc::format!("no edu at {bdf:?} (dma.slot)")))?;
    Ok(Some((edu, mask)))
}

fn all_edus(m: &Machine) -> Result<Vec<EduDevice>, iommu_boot::testing::Failure> {
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

/// An `edu` behind bridges, with the bridges between it and the root complex (nearest first).
pub struct BridgedEdu {
    pub bdf: Bdf,
    pub upstream: Vec<iommu::pci::Bridge>,
    pub edu: Edu,
}

/// Every `edu` one or two bridges below bus 0 (the runner puts two behind a root port and a
/// PCIe-to-PCI bridge), with bus mastering on. On q35 firmware numbered the buses and assigned
/// the BARs; on `virt` `pci_config` did.
pub fn bridged_edus(m: &Machine) -> Result<Vec<BridgedEdu>, iommu_boot::testing::Failure> {
    let cfg = pci_config(m)?;
    let mut found = Vec::new();
    let mut walk = |bus: u8, upstream: Vec<iommu::pci::Bridge>| -> TestResult {
        for bdf in pci::find(&cfg, bus, edu::VENDOR_ID, edu::DEVICE_ID) {
            let bar = pci::memory_bar(&cfg, bdf, 0)
                .filter(|b| b.address != 0)
                .ok_or_else(|| fail("nothing assigned a bridged edu's BAR0"))?;
            pci::enable_dma(&cfg, bdf);
            // SAFETY: BAR0 as assigned, in the MMIO range the boot code maps as device memory.
            let edu = unsafe { Edu::new(bar.address as usize) }.map_err(fail)?;
            found.push(BridgedEdu {
                bdf,
                upstream: upstream.clone(),
                edu,
            });
        }
        Ok(())
    };
    for (bus1, kind1) in pci::enumerate(&cfg, 0).filter_map(|f| pci::bridge(&cfg, f.bdf)) {
        // An unnumbered bridge (secondary 0) hides nothing we could reach.
        if bus1 == 0 {
            continue;
        }
        walk(bus1, Vec::from([kind1]))?;
        for (bus2, kind2) in pci::enumerate(&cfg, bus1).filter_map(|f| pci::bridge(&cfg, f.bdf)) {
            if bus2 <= bus1 {
                continue;
            }
            walk(bus2, Vec::from([kind2, kind1]))?;
        }
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
    // The lower half: `aarch64::configure_bridges` takes the upper half for bridged devices.
    let w = aarch64::mmio_window(m)?;
    Ok(pci::MmioWindow {
        next: w.next,
        end: w.next + (w.end - w.next) / 2,
    })
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
