//! `virt`: PCI configuration through the ECAM window the devicetree names; nothing assigns BARs,
//! so they come from the host bridge's 32-bit MMIO window.

use crate::Machine;
use iommu_boot::aarch64::gic::{Controller, Gic};
use iommu_boot::aarch64::gicv3::GicV3;
use iommu_boot::aarch64::its::Its;
use iommu_boot::pci::{self, BusNumbers, Ecam, MmioWindow};
use iommu_boot::testing::{fail, Failure};
use iommu_smmuv3::devicetree::{Devicetree, GicVersion, PciHost, PciSpace};

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

/// The SMMUs the devicetree describes.
pub fn iommus_described(m: &Machine) -> Result<usize, Failure> {
    Ok(devicetree(m)?.smmus().count())
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

/// Configuration access, with the bridges numbered on first use (see [`configure_bridges`]).
pub fn pci_config(m: &Machine) -> Result<Ecam, Failure> {
    let cfg = ecam(m)?;
    BRIDGES
        .call_once(|| {
            configure_bridges(m, &cfg).map_err(|e| match e {
                Failure::Failed(s) | Failure::Skipped(s) => s,
            })
        })
        .as_ref()
        .map_err(|e| fail(alloc::format!("configuring the PCI bridges failed: {e}")))?;
    Ok(cfg)
}

/// Whether the bridges were configured, once per boot, before any test touched the SMMU.
///
/// It has to come first: a bridge left unnumbered (secondary bus 0, its reset value) makes
/// its bus claim number 0 as well. QEMU's SMMU finds the bus of a stream id (for CFGI_STE and
/// the like) by searching its buses for the number, in hash order, and keeps the first answer
/// until reset: if that is the bridge's bus, the bus-0 devices' configuration invalidations go
/// nowhere and their DMA runs on stale stream table entries (seen: half the SMMU tests failing,
/// which half varying from boot to boot).
static BRIDGES: spin::Once<Result<(), alloc::string::String>> = spin::Once::new();

fn ecam(m: &Machine) -> Result<Ecam, Failure> {
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

/// Each root port's memory window, and each bridge's below it: room for a few 1 MiB `edu` BARs.
const ROOT_PORT_WINDOW: u64 = 16 << 20;
const BRIDGE_WINDOW: u64 = 4 << 20;

/// What firmware does on q35, for the bridges the runner adds: every bridge on bus 0 (a root
/// port) gets the next free bus number and a memory window, every bridge right below it the next
/// bus and a part of that window, and the memory BARs of the functions below are assigned
/// inside. Two levels, as the matrix builds them. Bridged windows come from the upper half of the
/// host window; bus-0 BARs come from the lower half (`super::bar0`), so the two never meet.
fn configure_bridges(m: &Machine, cfg: &Ecam) -> Result<(), Failure> {
    let host = mmio_window(m)?;
    let mut window = MmioWindow {
        next: host.next + (host.end - host.next) / 2,
        end: host.end,
    };
    let mut next_bus: u8 = 1;
    let ports: alloc::vec::Vec<_> = pci::enumerate(cfg, 0)
        .filter(|f| pci::bridge(cfg, f.bdf).is_some())
        .map(|f| f.bdf)
        .collect();
    for port in ports {
        let secondary = next_bus;
        // Subordinate 255 while we look below; narrowed once we know how many buses are there.
        let open = BusNumbers {
            primary: 0,
            secondary,
            subordinate: u8::MAX,
        };
        let mut below_port =
            pci::configure_bridge(cfg, port, open, &mut window, ROOT_PORT_WINDOW).map_err(fail)?;
        next_bus = next_bus
            .checked_add(1)
            .ok_or_else(|| fail("out of bus numbers"))?;
        let bridges: alloc::vec::Vec<_> = pci::enumerate(cfg, secondary)
            .filter(|f| pci::bridge(cfg, f.bdf).is_some())
            .map(|f| f.bdf)
            .collect();
        for bridge in bridges {
            let bus = next_bus;
            let buses = BusNumbers {
                primary: secondary,
                secondary: bus,
                subordinate: bus,
            };
            let mut below =
                pci::configure_bridge(cfg, bridge, buses, &mut below_port, BRIDGE_WINDOW)
                    .map_err(fail)?;
            assign_endpoints(cfg, bus, &mut below)?;
            next_bus = next_bus
                .checked_add(1)
                .ok_or_else(|| fail("out of bus numbers"))?;
        }
        assign_endpoints(cfg, secondary, &mut below_port)?;
        let closed = BusNumbers {
            subordinate: next_bus - 1,
            ..open
        };
        pci::set_bus_numbers(cfg, port, closed).map_err(fail)?;
    }
    Ok(())
}

/// Assigns the memory BARs of every non-bridge function on `bus` from `window`.
fn assign_endpoints(cfg: &Ecam, bus: u8, window: &mut MmioWindow) -> Result<(), Failure> {
    let endpoints: alloc::vec::Vec<_> = pci::enumerate(cfg, bus)
        .filter(|f| pci::bridge(cfg, f.bdf).is_none())
        .map(|f| f.bdf)
        .collect();
    for bdf in endpoints {
        let bars = pci::assign_memory_bars(cfg, bdf, window);
        if pci::memory_bar(cfg, bdf, 0).is_some() && bars.get(0).is_none() {
            return Err(fail(alloc::format!(
                "{bdf}: BAR0 does not fit its bridge window"
            )));
        }
    }
    Ok(())
}

/// The machine's GIC, initialised (distributor and CPU interface on, no interrupt enabled) as
/// the version the devicetree names: GICv2 again on every call, GICv3 once per boot (its LPI
/// tables cannot move once LPIs are on).
pub fn gic(m: &Machine) -> Result<Controller, Failure> {
    let dt = devicetree(m)?;
    let g = dt.gic().map_err(fail)?;
    let to_usize = |a: u64| usize::try_from(a).map_err(fail);
    let dist = to_usize(g.distributor.base)?;
    let second = to_usize(g.cpu_interface.base)?;
    match g.version {
        GicVersion::V2 => {
            // SAFETY: the frames come from the devicetree's GICv2 node and lie in the low GiB,
            // which the boot code identity-maps as Device memory; the tests run on one CPU and
            // are the GIC's only users.
            let gic = unsafe { Gic::new(dist, second) };
            gic.init();
            Ok(Controller::V2(gic))
        }
        GicVersion::V3 => {
            let end = second
                .checked_add(to_usize(g.cpu_interface.size)?)
                .ok_or_else(|| fail("redistributor region wraps"))?;
            // SAFETY: as for GICv2: the distributor and the redistributor region come from the
            // devicetree's GICv3 node, identity-mapped as Device memory, used only by the tests.
            let gic = unsafe { GicV3::init(dist, second..end) }.map_err(fail)?;
            Ok(Controller::V3(gic))
        }
    }
}

/// The GICv3 (initialised), or a skip on a GICv2 machine.
pub fn gicv3(m: &Machine) -> Result<&'static GicV3, Failure> {
    let g = devicetree(m)?.gic().map_err(fail)?;
    if g.version != GicVersion::V3 {
        iommu_boot::skip!(
            "{} is a GICv2: no LPIs or ITS (start QEMU with -machine ...,gic-version=3)",
            g.name
        );
    }
    match gic(m)? {
        Controller::V3(g) => Ok(g),
        Controller::V2(_) => Err(fail("the devicetree changed its mind about the GIC")),
    }
}

/// The devicetree's ITS, brought up once per boot (GITS_BASER and GITS_CBASER cannot change
/// once it is enabled) with a device table for every 16-bit DeviceID.
pub fn its(m: &Machine) -> Result<&'static Its, Failure> {
    let gic = gicv3(m)?;
    let dt = devicetree(m)?;
    let node = dt
        .its_nodes()
        .next()
        .ok_or_else(|| fail("no arm,gic-v3-its node"))?
        .map_err(fail)?;
    let its = ITS
        .call_once(|| {
            // SAFETY: the frames come from the devicetree's ITS node, in the low GiB the boot
            // code identity-maps as Device memory; only this `Its` programs the ITS.
            unsafe { Its::new(node.regs.base, gic, 1 << 16) }
                .map_err(|e| alloc::format!("bringing up the ITS failed: {e}"))
        })
        .as_ref()
        .map_err(fail)?;
    if its.doorbell() != node.translater() {
        return Err(fail(
            "the ITS driver and the devicetree disagree on GITS_TRANSLATER",
        ));
    }
    Ok(its)
}

static ITS: spin::Once<Result<Its, alloc::string::String>> = spin::Once::new();
