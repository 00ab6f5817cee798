//! DMA aliases and isolation groups, proven on QEMU's PCIe-to-PCI bridge: two `edu` devices
//! behind `pcie-pci-bridge` reach the IOMMU with the bridge's alias (secondary bus, 00.0), so
//! the IOMMU cannot tell them apart. The object model, told so by `iommu::pci`, keeps them in one
//! group and programs the alias with them.

use alloc::vec::Vec;

use crate::dma::{DmaBuffer, IA_BITS, IOVA_A};
use crate::platform::bridged_edus;
use crate::Machine;
use iommu::addr::Iova;
use iommu::iommufd::{Error, GroupId, Iommu, Layout, OwnerId, Region, Target};
use iommu::pagetable::Prot;
use iommu::pci::{alias_groups, dma_aliases, Bdf, Bridge};
use iommu::unit::{DeviceId, FaultKind, Stage, TranslationUnit};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};

/// Two edus behind one PCIe-to-PCI bridge: one group by their shared alias; attaching one
/// programs the alias, so its DMA lands; the alias keeps serving the group's attached member
/// (which is why a group has one owner and one target); once the group is released, DMA is
/// blocked and the fault names the alias, not the device.
///
/// Written over any unit: `device_id` names a requester id as `unit` sees it (VT-d: the
/// requester id itself; SMMUv3: the stream id the firmware's map gives it).
pub fn bridged_devices_share_an_alias_and_a_group<U: TranslationUnit + Copy>(
    m: &Machine,
    unit: U,
    stage: Stage,
    device_id: &dyn Fn(Bdf) -> Result<DeviceId, Failure>,
) -> TestResult {
    let edus = bridged_edus(m)?;
    if edus.len() < 2 {
        skip!("needs two edu devices behind a PCIe-to-PCI bridge");
    }
    let (a, b) = (&edus[0], &edus[1]);
    let alias = match a.upstream.first() {
        Some(Bridge::PcieToPci { secondary }) => Bdf::new(*secondary, 0, 0),
        other => {
            return Err(fail(alloc::format!(
                "edu not behind a PCIe-to-PCI bridge: {other:?}"
            )))
        }
    };
    let ids_a = dma_aliases(a.bdf, &a.upstream);
    ensure_eq!(ids_a, [a.bdf.requester_id(), alias.requester_id()]);
    let groups = alias_groups(&[(a.bdf, &a.upstream), (b.bdf, &b.upstream)]);
    ensure_eq!(groups[0], groups[1]);
    let group = GroupId(groups[0]);

    let (id_a, id_b, id_alias) = (device_id(a.bdf)?, device_id(b.bdf)?, device_id(alias)?);
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    // This test is about DMA; no interrupt remapper is registered, so owning a device needs
    // the explicit (insecure) opt-in.
    io.allow_unsafe_interrupts(true);
    let da = io.add_device(u, id_a, group).map_err(fail)?;
    let db = io.add_device(u, id_b, group).map_err(fail)?;
    io.add_alias(da, id_alias).map_err(fail)?;
    io.add_alias(db, id_alias).map_err(fail)?;

    let (guest, other) = (OwnerId(1), OwnerId(2));
    io.claim(da, guest).map_err(fail)?;
    ensure_eq!(
        io.claim(db, other),
        Err(Error::GroupOwnedByOther {
            group,
            owner: guest
        })
    );
    io.claim(db, guest).map_err(fail)?;
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = io
        .alloc_domain(guest, u, stage, IA_BITS, &layout)
        .map_err(fail)?;
    let buf = DmaBuffer::new(0)?;
    io.map(
        guest,
        dom,
        Iova::new(IOVA_A),
        buf.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    unit.drain_faults(&mut |_| ()).map_err(fail)?;

    // Only `a` is attached, but QEMU sees its DMA as the bridge's: it lands because the alias
    // was programmed with it.
    io.attach(da, guest, Target::Domain(dom)).map_err(fail)?;
    buf.fill(0);
    a.edu.dma_to_ram(0, IOVA_A, 64).map_err(fail)?;
    a.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    ensure!(
        faults.is_empty(),
        "DMA through the alias faulted: {faults:?}"
    );

    // `b` is blocked by the API, yet its DMA arrives as the alias, which serves `a`: the two
    // cannot be isolated from each other, only from everyone else.
    buf.set(100, 0x5a);
    b.edu.dma_from_ram(IOVA_A + 100, 0, 1).map_err(fail)?;
    b.edu.dma_to_ram(0, IOVA_A + 200, 1).map_err(fail)?;
    ensure_eq!(buf.get(200), 0x5a);

    // `a` leaves while `b` is attached: the alias stays on the domain for `b`.
    io.attach(db, guest, Target::Domain(dom)).map_err(fail)?;
    io.attach(da, guest, Target::Blocked).map_err(fail)?;
    b.edu.dma_to_ram(0, IOVA_A + 300, 1).map_err(fail)?;
    ensure_eq!(buf.get(300), 0x5a);

    // Released, the whole group is blocked and the fault names the alias.
    io.release(da, guest).map_err(fail)?;
    io.release(db, guest).map_err(fail)?;
    buf.fill(0x11);
    a.edu.dma_to_ram(0, IOVA_A, 64).map_err(fail)?;
    ensure!(
        buf.all(0..4096, 0x11),
        "a released group's DMA reached memory"
    );
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    ensure!(
        faults
            .iter()
            .any(|f| f.device == id_alias && f.write && f.kind != FaultKind::Permission),
        "expected a write fault by the alias {alias}, got {faults:?}"
    );
    io.destroy_domain(guest, dom).map_err(fail)?;
    Ok(())
}
