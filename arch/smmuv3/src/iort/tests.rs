//! IORT tables built byte by byte per DEN 0049 E.x, then damaged every way we can think of.

use super::*;
use proptest::prelude::*;
use std::vec::Vec;

/// Appends little-endian fields and patches the header at the end.
#[derive(Default)]
struct Table {
    b: Vec<u8>,
}

impl Table {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.b.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.b.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn pos(&self) -> u32 {
        self.b.len() as u32
    }
    /// Node header; returns where the node starts so its length can be patched.
    fn node(&mut self, ty: u8, rev: u8, id: u32, mappings: u32, mapping_offset: u32) -> usize {
        let start = self.b.len();
        self.u8(ty)
            .u16(0)
            .u8(rev)
            .u32(id)
            .u32(mappings)
            .u32(mapping_offset);
        start
    }
    fn end_node(&mut self, start: usize) {
        let len = (self.b.len() - start) as u16;
        self.b[start + 1..start + 3].copy_from_slice(&len.to_le_bytes());
    }
    fn mapping(&mut self, input: u32, count: u32, output: u32, reference: u32, flags: u32) {
        self.u32(input)
            .u32(count)
            .u32(output)
            .u32(reference)
            .u32(flags);
    }
    fn finish(mut self, nodes: u32) -> Vec<u8> {
        let len = self.b.len() as u32;
        self.b[4..8].copy_from_slice(&len.to_le_bytes());
        self.b[36..40].copy_from_slice(&nodes.to_le_bytes());
        fix_checksum(&mut self.b);
        self.b
    }
}

fn fix_checksum(b: &mut [u8]) {
    b[9] = 0;
    let sum = b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    b[9] = 0u8.wrapping_sub(sum);
}

const ITS_AT: u32 = 48;
const SMMU_AT: u32 = ITS_AT + 24;
const RC_AT: u32 = SMMU_AT + 68 + 20;

/// A server-like IORT: ITS group; SMMUv3 whose MSIs go to the ITS; a root complex (segment 0)
/// whose RIDs 0..=0xffff go to the SMMU as stream ids 0x10000..; a named component behind the
/// SMMU with stream id 0x42; an SMMUv2 with interrupts; a PMCG; an RMR.
fn server_iort() -> Vec<u8> {
    let mut t = Table::default();
    // ACPI header (36): signature, length (patched), revision 5, checksum (patched), OEM ids.
    t.b.extend_from_slice(b"IORT");
    t.u32(0).u8(5).u8(0);
    t.b.extend_from_slice(b"QEMUAA");
    t.b.extend_from_slice(b"IOMMUTBL");
    t.u32(1).u32(0x4c4e_5852).u32(1);
    // IORT: node count (patched), node offset, reserved.
    t.u32(0).u32(ITS_AT).u32(0);
    assert_eq!(t.pos(), ITS_AT);

    let its = t.node(node_type::ITS_GROUP, 1, 0, 0, 0);
    t.u32(1).u32(7);
    t.end_node(its);
    assert_eq!(t.pos(), SMMU_AT);

    let smmu = t.node(node_type::SMMU_V3, 5, 1, 1, 68);
    t.u64(0x905_0000); // base
    t.u32(1 | (2 << 1) | (1 << 3) | (1 << 4)); // COHACC override, HTTU A+D, PXM, DeviceID valid
    t.u32(0); // reserved
    t.u64(0); // VATOS
    t.u32(0); // model: generic
    t.u32(106).u32(107).u32(109).u32(108); // event, PRI, GERR, sync GSIVs
    t.u32(3); // proximity domain
    t.u32(0); // DeviceID mapping index
    t.mapping(0, 0, 0x8_0000, ITS_AT, 1); // single: the SMMU's own MSI DeviceID
    t.end_node(smmu);
    assert_eq!(t.pos(), RC_AT);

    let rc = t.node(node_type::ROOT_COMPLEX, 4, 2, 1, 40);
    t.u32(1).u8(0b0110).u16(0).u8(0b11); // CCA, hints RA|WA, MAF CPM|DACS
    t.u32(1); // ATS supported
    t.u32(0); // segment
    t.u8(48).u16(0x14).u8(0); // address limit, PASID caps, reserved
    t.u32(0); // flags
    t.mapping(0, 0xffff, 0x1_0000, SMMU_AT, 0);
    t.end_node(rc);

    let nc = t.node(node_type::NAMED_COMPONENT, 4, 3, 1, 44);
    t.u32(0).u32(1).u8(0).u16(0).u8(0).u8(40);
    t.b.extend_from_slice(b"\\_SB.DMA0\0\0\0\0\0\0");
    t.mapping(0, 0, 0x42, SMMU_AT, 0);
    t.end_node(nc);

    let smmu2_at = t.pos();
    let smmu2 = t.node(node_type::SMMU_V1_V2, 3, 4, 0, 0);
    t.u64(0x2b40_0000).u64(0x1_0000).u32(3).u32(1);
    t.u32(60).u32(2).u32(76).u32(1).u32(92); // global, context count/offset, PMU count/offset
    t.u32(200).u32(1).u32(201).u32(0); // global interrupts
    t.u32(210).u32(1).u32(211).u32(1); // context interrupts
    t.u32(220).u32(0); // PMU interrupt
    t.end_node(smmu2);

    let pmcg = t.node(node_type::PMCG, 2, 5, 0, 0);
    t.u64(0x905_2000).u32(120).u32(smmu2_at).u64(0x915_2000);
    t.end_node(pmcg);

    let rmr = t.node(node_type::RMR, 3, 6, 0, 0);
    t.u32(1).u32(2).u32(28);
    t.u64(0x8000_0000).u64(0x10_0000).u32(0);
    t.u64(0x9000_0000).u64(0x1000).u32(0);
    t.end_node(rmr);

    t.finish(7)
}

#[test]
fn parses_every_node_of_a_server_table() {
    let bytes = server_iort();
    let iort = Iort::parse(&bytes).expect("valid");
    assert_eq!(iort.revision(), 5);
    assert_eq!(iort.oem_id(), b"QEMUAA");
    let nodes: Vec<_> = iort
        .nodes()
        .collect::<Result<_>>()
        .expect("all nodes parse");
    assert_eq!(nodes.len(), 7);
    assert_eq!(
        nodes.iter().map(|n| n.node_type).collect::<Vec<_>>(),
        [0, 4, 2, 1, 3, 5, 6]
    );
    assert_eq!(
        nodes.iter().map(|n| n.identifier).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5, 6]
    );

    let NodeKind::ItsGroup(its) = nodes[0].kind else {
        panic!("ITS group")
    };
    assert_eq!(its.its_ids().collect::<Vec<_>>(), [7]);

    let NodeKind::SmmuV3(smmu) = nodes[1].kind else {
        panic!("SMMUv3")
    };
    assert_eq!(nodes[1].offset, SMMU_AT);
    assert_eq!(smmu.base, 0x905_0000);
    assert!(smmu.coherent_override);
    assert_eq!(smmu.httu_override, HttuOverride::AccessFlagAndDirty);
    assert_eq!(
        (
            smmu.event_gsiv,
            smmu.pri_gsiv,
            smmu.gerr_gsiv,
            smmu.sync_gsiv
        ),
        (106, 107, 109, 108)
    );
    assert_eq!(smmu.proximity_domain, Some(3));
    assert_eq!(smmu.device_id_mapping_index, Some(0));
    let msi: Vec<_> = nodes[1].id_mappings().collect();
    assert_eq!(
        msi,
        [IdMapping {
            input_base: 0,
            id_count: 0,
            output_base: 0x8_0000,
            output_reference: ITS_AT,
            single: true
        }]
    );

    let NodeKind::RootComplex(rc) = nodes[2].kind else {
        panic!("root complex")
    };
    assert_eq!(rc.segment, 0);
    assert!(rc.memory.coherent);
    assert_eq!(
        (rc.memory.allocation_hints, rc.memory.flags),
        (0b0110, 0b11)
    );
    assert!(rc.ats_supported);
    assert_eq!(rc.address_size_limit, Some(48));
    assert_eq!(rc.pasid_capabilities, Some(0x14));
    assert_eq!(rc.flags, Some(0));

    let NodeKind::NamedComponent(nc) = nodes[3].kind else {
        panic!("named component")
    };
    assert_eq!(nc.name, b"\\_SB.DMA0");
    assert!(nc.memory.coherent);
    assert_eq!(nc.address_size_limit, 40);

    let NodeKind::Smmu(smmu2) = nodes[4].kind else {
        panic!("SMMUv2")
    };
    assert_eq!(
        (smmu2.base, smmu2.span, smmu2.model),
        (0x2b40_0000, 0x1_0000, SmmuModel::Mmu500)
    );
    let gsiv = |g: u32, f: u32| Gsiv { gsiv: g, flags: f };
    assert_eq!(
        smmu2.global_interrupts().collect::<Vec<_>>(),
        [gsiv(200, 1), gsiv(201, 0)]
    );
    assert_eq!(
        smmu2.context_interrupts().collect::<Vec<_>>(),
        [gsiv(210, 1), gsiv(211, 1)]
    );
    assert_eq!(smmu2.pmu_interrupts().collect::<Vec<_>>(), [gsiv(220, 0)]);

    let NodeKind::Pmcg(pmcg) = nodes[5].kind else {
        panic!("PMCG")
    };
    assert_eq!(pmcg.page0_base, 0x905_2000);
    assert_eq!(pmcg.overflow_gsiv, 120);
    assert_eq!(pmcg.node_reference, nodes[4].offset);
    assert_eq!(pmcg.page1_base, Some(0x915_2000));

    let NodeKind::Rmr(rmr) = nodes[6].kind else {
        panic!("RMR")
    };
    assert_eq!(rmr.flags, 1);
    assert_eq!(
        rmr.ranges().collect::<Vec<_>>(),
        [
            RmrRange {
                base: 0x8000_0000,
                length: 0x10_0000
            },
            RmrRange {
                base: 0x9000_0000,
                length: 0x1000
            }
        ]
    );

    assert_eq!(iort.smmu_v3s().count(), 1);
}

#[test]
fn requester_ids_map_to_smmu_stream_ids() {
    let bytes = server_iort();
    let iort = Iort::parse(&bytes).expect("valid");
    let edu = iort.map_rid(0, 8).expect("behind the SMMU");
    assert_eq!(edu.stream_id, 0x1_0008);
    assert_eq!(edu.node.offset, SMMU_AT);
    assert_eq!(edu.smmu.base, 0x905_0000);
    // "Number of IDs" is the count minus one: 0xffff is the last id covered.
    assert_eq!(iort.map_rid(0, 0xffff).map(|t| t.stream_id), Ok(0x1_ffff));
    assert_eq!(
        iort.map_rid(1, 8),
        Err(IortError::NoRootComplex { segment: 1 })
    );

    let nc = iort
        .nodes()
        .flatten()
        .find(|n| n.node_type == node_type::NAMED_COMPONENT);
    let nc = nc.expect("named component");
    assert_eq!(iort.map_to_smmu(&nc, 0).map(|t| t.stream_id), Ok(0x42));
    assert_eq!(
        iort.map_to_smmu(&nc, 1),
        Err(IortError::IdNotMapped {
            node: nc.offset,
            id: 1
        })
    );
}

#[test]
fn a_root_complex_straight_to_the_its_is_not_translated() {
    let mut bytes = server_iort();
    // Point the root complex's mapping at the ITS group instead of the SMMU.
    let reference_at = RC_AT as usize + 40 + 12;
    bytes[reference_at..reference_at + 4].copy_from_slice(&ITS_AT.to_le_bytes());
    fix_checksum(&mut bytes);
    let iort = Iort::parse(&bytes).expect("valid");
    assert_eq!(
        iort.map_rid(0, 8),
        Err(IortError::NotBehindSmmuV3 {
            node: RC_AT,
            target_type: node_type::ITS_GROUP
        })
    );
}

#[test]
fn header_damage_is_a_typed_error() {
    let good = server_iort();
    assert_eq!(
        Iort::parse(&good[..47]).err(),
        Some(IortError::TooShort { length: 47 })
    );

    let mut sig = good.clone();
    sig[0] = b'X';
    assert_eq!(
        Iort::parse(&sig).err(),
        Some(IortError::BadSignature(*b"XORT"))
    );

    let mut sum = good.clone();
    sum[100] ^= 0x10;
    assert!(matches!(
        Iort::parse(&sum),
        Err(IortError::BadChecksum { .. })
    ));
    assert!(Iort::parse_unchecked_sum(&sum).is_ok());

    let cut = &good[..good.len() - 1];
    assert_eq!(
        Iort::parse(cut).err(),
        Some(IortError::BadLength {
            declared: good.len() as u32,
            available: good.len() - 1
        })
    );

    let mut short_len = good.clone();
    short_len[4..8].copy_from_slice(&20u32.to_le_bytes());
    assert!(matches!(
        Iort::parse_unchecked_sum(&short_len),
        Err(IortError::BadLength { .. })
    ));
}

#[test]
fn node_damage_is_a_typed_error() {
    let good = server_iort();
    let reparse = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        edit(&mut b);
        fix_checksum(&mut b);
        let iort = Iort::parse(&b).expect("header still valid");
        iort.nodes().find_map(|n| n.err())
    };

    // Node offset pointing into the header.
    assert_eq!(
        reparse(&|b| b[40..44].copy_from_slice(&8u32.to_le_bytes())),
        Some(IortError::BadNode { offset: 8 })
    );
    // SMMUv3 node length shorter than its fixed fields.
    let len_at = SMMU_AT as usize + 1;
    assert_eq!(
        reparse(&|b| b[len_at..len_at + 2].copy_from_slice(&40u16.to_le_bytes())),
        Some(IortError::ArrayOutOfBounds {
            offset: SMMU_AT,
            array: "ID mappings"
        })
    );
    // Node length below the header size.
    assert_eq!(
        reparse(&|b| b[len_at..len_at + 2].copy_from_slice(&8u16.to_le_bytes())),
        Some(IortError::BadNode { offset: SMMU_AT })
    );
    // Node length past the end of the table.
    assert_eq!(
        reparse(&|b| b[len_at..len_at + 2].copy_from_slice(&0xfff0u16.to_le_bytes())),
        Some(IortError::BadNode { offset: SMMU_AT })
    );
    // Mapping count too large for the node.
    let count_at = RC_AT as usize + 8;
    assert_eq!(
        reparse(&|b| b[count_at..count_at + 4].copy_from_slice(&0x1000_0000u32.to_le_bytes())),
        Some(IortError::ArrayOutOfBounds {
            offset: RC_AT,
            array: "ID mappings"
        })
    );
    // An SMMUv3 node without mappings, cut below its fixed part.
    let smmu_count_at = SMMU_AT as usize + 8;
    assert_eq!(
        reparse(&|b| {
            b[smmu_count_at..smmu_count_at + 4].copy_from_slice(&0u32.to_le_bytes());
            b[len_at..len_at + 2].copy_from_slice(&40u16.to_le_bytes());
        }),
        Some(IortError::NodeTooShort {
            offset: SMMU_AT,
            node_type: 4,
            length: 40,
            needed: 60
        })
    );
    // A mapping referencing a node outside the table.
    let mut bad_ref = good.clone();
    let reference_at = RC_AT as usize + 40 + 12;
    bad_ref[reference_at..reference_at + 4].copy_from_slice(&0xffff_0000u32.to_le_bytes());
    fix_checksum(&mut bad_ref);
    let iort = Iort::parse(&bad_ref).expect("valid header");
    assert_eq!(
        iort.map_rid(0, 8),
        Err(IortError::BadReference {
            offset: 0xffff_0000
        })
    );
}

/// Everything a user can ask of an IORT, so a panic or out-of-bounds read anywhere shows up.
fn exercise(bytes: &[u8]) {
    if let Err(e) = Iort::parse(bytes) {
        let _ = std::format!("{e}");
    }
    for iort in [Iort::parse(bytes), Iort::parse_unchecked_sum(bytes)]
        .into_iter()
        .flatten()
    {
        let _ = std::format!("{iort:?} {:?}", iort.oem_id());
        for node in iort.nodes().flatten() {
            for m in node.id_mappings() {
                let _ = m.map(8);
                let _ = iort.node_at(m.output_reference);
            }
            match node.kind {
                NodeKind::ItsGroup(g) => assert!(g.its_ids().count() <= bytes.len()),
                NodeKind::Smmu(s) => {
                    let n = s.global_interrupts().count()
                        + s.context_interrupts().count()
                        + s.pmu_interrupts().count();
                    assert!(n <= bytes.len());
                }
                NodeKind::Rmr(r) => assert!(r.ranges().count() <= bytes.len()),
                _ => {}
            }
            let _ = iort.map_to_smmu(&node, 8);
        }
        for segment in [0, 1] {
            for rid in [0u16, 8, 0xffff] {
                let _ = iort.map_rid(segment, rid);
            }
        }
        assert!(iort.nodes().count() <= bytes.len() / 16 + 1);
    }
}

#[test]
fn every_truncation_is_handled() {
    let good = server_iort();
    for len in 0..good.len() {
        exercise(&good[..len]);
        let mut cut = good[..len].to_vec();
        if cut.len() >= 8 {
            cut[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        }
        exercise(&cut);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_tables_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        exercise(&body);
        let mut t = b"IORT".to_vec();
        t.extend_from_slice(&body);
        if t.len() >= 8 {
            let len = t.len() as u32;
            t[4..8].copy_from_slice(&len.to_le_bytes());
        }
        exercise(&t);
    }

    #[test]
    fn mutated_tables_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..10),
        cut in any::<usize>(),
        fix in any::<bool>(),
    ) {
        let mut t = server_iort();
        for (at, value) in flips {
            let i = at % t.len();
            t[i] = value;
        }
        if fix {
            fix_checksum(&mut t);
        }
        exercise(&t);
        let keep = cut % (t.len() + 1);
        t.truncate(keep);
        exercise(&t);
    }

    #[test]
    fn corrupted_lengths_and_counts_never_panic(
        field in 0usize..6,
        value in any::<u32>(),
    ) {
        // Header length, node count/offset; SMMU node length; RC mapping count/offset.
        let spots = [4, 36, 40, SMMU_AT as usize + 1, RC_AT as usize + 8, RC_AT as usize + 12];
        let mut t = server_iort();
        let at = spots[field];
        let width = if field == 3 { 2 } else { 4 };
        t[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        fix_checksum(&mut t);
        exercise(&t);
    }
}
