//! `virt`: PCI configuration through the ECAM window the devicetree names; nothing assigns BARs,
//! so they come from the host bridge's 32-bit MMIO window.

use crate::Machine;
use iommu_boot::pci::{Ecam, MmioWindow};
use iommu_boot::testing::{fail, Failure};
use iommu_smmuv3::devicetree::{Devicetree, PciHost, PciSpace};

/// How much of RAM the devicetree may span: QEMU declares 1 MiB; the kernel starts 2 MiB in.
const DTB_MAX_LEN: usize = 2 << 20;

/// The devicetree QEMU placed at the start of RAM.
pub fn devicetree(m: &Machine) -> Result<Devicetree<'static>, Failure> {
    let addr = m
        .info
        .dtb
        .ok_or_else(|| fail("the boot code found no devicetree"))?;
    // SAFETY: the boot code identity-maps RAM, where QEMU placed the blob at `addr`; the first
    // 2 MiB of RAM below the kernel hold only the blob, which nothing writes.
    unsafe { Devicetree::from_addr(addr as usize, DTB_MAX_LEN) }.map_err(fail)
}

/// The machine's one PCIe host bridge.
pub fn pci_host(m: &Machine) -> Result<PciHost<'static>, Failure> {
    let dt = devicetree(m)?;
    let host = dt
        .pci_hosts()
        .next()
        .ok_or_else(|| fail("no pci-host-ecam-generic node"))?;
    host.map_err(fail)
}

pub fn pci_config(m: &Machine) -> Result<Ecam, Failure> {
    let host = pci_host(m)?;
    let buses = u16::from(host.bus_range.end - host.bus_range.start) + 1;
    // SAFETY: the ECAM window comes from the devicetree and lies in the first TiB, which the
    // boot code identity-maps as Device memory; `buses` is what `bus-range` declares.
    Ok(unsafe { Ecam::new(host.ecam.base as usize, host.bus_range.start, buses) })
}

/// The host bridge's whole 32-bit MMIO window.
pub fn mmio_window(m: &Machine) -> Result<MmioWindow, Failure> {
    let host = pci_host(m)?;
    let w = host
        .window(PciSpace::Mmio32)
        .ok_or_else(|| fail("PCIe host has no 32-bit MMIO window"))?;
    // BARs hold PCI addresses and the CPU reaches them at CPU addresses; `virt` makes the two
    // equal in this window, and the tests rely on it.
    if w.pci_addr != w.cpu_addr {
        return Err(fail(
            "32-bit MMIO window is not identity-mapped between CPU and PCI",
        ));
    }
    Ok(MmioWindow {
        next: w.cpu_addr,
        end: w.cpu_addr + w.size,
    })
}
