//! The IORT parser on arbitrary bytes (the checksum is not asked for, so mutations reach the
//! nodes): the node walk, every node's arrays, and the requester-id → stream-id mapping.
#![no_main]

use iommu_smmuv3::iort::Iort;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The checked parse must agree with the unchecked one where the sum is right.
    let checked = Iort::parse(data).is_ok();
    let Ok(iort) = Iort::parse_unchecked_sum(data) else {
        assert!(!checked);
        return;
    };
    assert_eq!(iort.bytes().as_ptr(), data.as_ptr());
    assert!(iort.bytes().len() <= data.len());
    let _ = (iort.revision(), iort.oem_id());
    for node in iort.nodes().flatten() {
        assert!(u64::from(node.offset) + u64::from(node.length) <= iort.bytes().len() as u64);
        // Debug decodes every field of the node kind.
        let _ = format!("{node:?}");
        for m in node.id_mappings() {
            let _ = m.map(m.input_base);
        }
        let _ = iort.map_id(&node, 0);
        let _ = iort.node_at(node.offset);
    }
    for (node, smmu) in iort.smmu_v3s() {
        let _ = format!("{node:?} {smmu:?}");
    }
    // A few requester ids taken from the input itself, plus the edges.
    for rid in [0u16, 0x08, 0xffff].into_iter().chain(
        data.chunks_exact(2)
            .take(8)
            .map(|c| u16::from_le_bytes([c[0], c[1]])),
    ) {
        if let Ok(t) = iort.map_rid(0, rid) {
            let _ = format!("{t:?}");
        }
    }
});
