//! The devicetree reader on arbitrary blobs: SMMUs, the GIC and its ITSes, PCIe hosts with
//! their windows, `iommu-map` and `msi-map`, and the requester-id lookups through them.
#![no_main]

use iommu_smmuv3::devicetree::Devicetree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dt) = Devicetree::new(data) else {
        return;
    };
    assert!(
        dt.total_size() <= data.len(),
        "the blob is inside the input"
    );
    for smmu in dt.smmus().flatten() {
        let _ = format!("{smmu:?}");
        if let Some(phandle) = smmu.phandle {
            assert!(dt.smmu_by_phandle(phandle).is_ok());
        }
    }
    let _ = dt.gic().map(|g| format!("{g:?}"));
    for its in dt.its_nodes().flatten() {
        let _ = its.translater();
    }
    for host in dt.pci_hosts().flatten() {
        let _ = host.windows().count();
        let _ = dt.msi_map(&host).map(|m| m.entries().len());
        for rid in [0u16, 0x08, 0x100, 0xffff] {
            if let Ok((smmu, sid)) = dt.stream_id(&host, rid) {
                // The SMMU a lookup names is one the tree has.
                assert!(
                    dt.smmus().flatten().any(|s| s == smmu),
                    "{smmu:?} for {sid:#x}"
                );
            }
            let _ = host.map_rid(rid);
            let _ = dt.msi_device_id(&host, rid);
        }
        for e in host.iommu_map() {
            let _ = e.map(0);
        }
        let _ = host.config_address(host.bus_range.start, 0, 0);
        let _ = host.config_address(host.bus_range.end, 31, 7);
    }
});
