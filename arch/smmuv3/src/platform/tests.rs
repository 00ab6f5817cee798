//! The devicetree and the IORT QEMU 10 builds for the same `virt` machine describe the same
//! SMMU and route the PCI requester ids they both cover to the same stream ids.

use super::*;
use crate::devicetree::Devicetree;
use crate::iort::{Iort, IortError};
use std::vec::Vec;

const VIRT_DTB: &[u8] = include_bytes!("../../tests/data/qemu10-virt-smmuv3-edu.dtb");
const VIRT_IORT: &[u8] = include_bytes!("../../tests/data/qemu10-virt-smmuv3-edu.iort");

#[test]
fn iort_and_devicetree_give_the_same_smmu() {
    let dt = Devicetree::new(VIRT_DTB).expect("QEMU's devicetree parses");
    let iort = Iort::parse(VIRT_IORT).expect("QEMU's IORT parses, checksum included");
    let from_dt: Vec<_> = dt
        .smmus()
        .map(|s| SmmuDescription::from_devicetree(&s.expect("SMMU node")))
        .collect();
    let from_iort: Vec<_> = iort
        .smmu_v3s()
        .map(|(_, s)| SmmuDescription::from_iort(&s))
        .collect();
    assert_eq!(from_dt.len(), 1);
    assert_eq!(from_dt, from_iort);
    // What hw/arm/virt.c wires: the frame at VIRT_SMMU, SPIs 74-77 = INTIDs 106-109.
    assert_eq!(
        from_dt[0],
        SmmuDescription {
            base: 0x905_0000,
            coherent: true,
            eventq_irq: Some(106),
            priq_irq: Some(107),
            cmdq_sync_irq: Some(108),
            gerror_irq: Some(109),
        }
    );
    assert_eq!(
        from_dt[0]
            .identity_mapped_registers()
            .map(|p| p.as_ptr() as usize),
        Some(0x905_0000)
    );
}

#[test]
fn iort_and_devicetree_route_bus_0_alike() {
    let dt = Devicetree::new(VIRT_DTB).expect("QEMU's devicetree parses");
    let iort = Iort::parse(VIRT_IORT).expect("QEMU's IORT parses");
    let host = dt
        .pci_hosts()
        .next()
        .expect("a PCIe host")
        .expect("host parses");
    for rid in 0..=0xffu16 {
        let (smmu, sid) = dt.stream_id(&host, rid).expect("iommu-map covers bus 0");
        let target = iort.map_rid(0, rid).expect("IORT maps bus 0 to the SMMU");
        assert_eq!(sid, target.stream_id, "rid {rid:#x}");
        assert_eq!(smmu.regs.base, target.smmu.base, "rid {rid:#x}");
    }
    // The first edu (00:01.0) is stream 8 either way.
    assert_eq!(iort.map_rid(0, 8).map(|t| t.stream_id), Ok(8));
    // QEMU's IORT sends the other buses straight to the ITS; its devicetree does not.
    assert!(matches!(
        iort.map_rid(0, 0x100),
        Err(IortError::NotBehindSmmuV3 { .. })
    ));
    assert!(dt.stream_id(&host, 0x100).is_ok());
}
