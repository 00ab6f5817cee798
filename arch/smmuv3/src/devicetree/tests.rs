//! Devicetree parsing against real QEMU blobs, hand-built malformed blobs, and random damage.

use super::validate::{FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_MAGIC, FDT_PROP, MAX_DEPTH};
use super::*;
use proptest::prelude::*;
use std::vec::Vec;

const VIRT: &[u8] = include_bytes!("../../tests/data/qemu10-virt-smmuv3-edu.dtb");
const VIRT_9_0: &[u8] = include_bytes!("../../tests/data/qemu10-virt-9.0-smmuv3-stage2-edu.dtb");
const HIGHMEM_OFF: &[u8] =
    include_bytes!("../../tests/data/qemu10-virt-highmem-off-smmuv3-edu.dtb");
const NO_IOMMU: &[u8] = include_bytes!("../../tests/data/qemu10-virt-no-iommu-edu.dtb");

fn spi(number: u32) -> Option<Interrupt> {
    Some(Interrupt::Gic {
        kind: GicKind::Spi,
        number,
        trigger: Trigger::EdgeRising,
    })
}

fn the_smmu<'a>(dt: &Devicetree<'a>) -> Smmu<'a> {
    let smmus: Vec<_> = dt.smmus().collect();
    assert_eq!(smmus.len(), 1);
    smmus[0].expect("SMMU node parses")
}

fn assert_qemu_smmu(dt: &Devicetree<'_>) {
    let smmu = the_smmu(dt);
    assert_eq!(smmu.name, "smmuv3@9050000");
    assert_eq!(
        smmu.regs,
        Region {
            base: 0x905_0000,
            size: 0x2_0000
        }
    );
    assert_eq!(smmu.iommu_cells, Some(1));
    assert_eq!(smmu.phandle, Some(0x8004));
    assert!(smmu.dma_coherent);
    assert_eq!(
        smmu.interrupts,
        SmmuInterrupts {
            eventq: spi(74),
            priq: spi(75),
            cmdq_sync: spi(76),
            gerror: spi(77),
            combined: None,
        }
    );
    assert_eq!(
        smmu.interrupts.eventq.and_then(|i| i.gic_intid()),
        Some(106)
    );
    assert_eq!(
        smmu.interrupts.gerror.and_then(|i| i.gic_intid()),
        Some(109)
    );
}

fn the_host<'a>(dt: &Devicetree<'a>) -> PciHost<'a> {
    let hosts: Vec<_> = dt.pci_hosts().collect();
    assert_eq!(hosts.len(), 1);
    hosts[0].expect("PCIe host parses")
}

#[test]
fn qemu_virt_names_smmuv3_and_pcie_iommu_map() {
    let dt = Devicetree::new(VIRT).expect("QEMU's blob is valid");
    assert_qemu_smmu(&dt);

    let host = the_host(&dt);
    assert_eq!(host.name, "pcie@10000000");
    // highmem (the default) moves the ECAM above 4 GiB.
    assert_eq!(
        host.ecam,
        Region {
            base: 0x40_1000_0000,
            size: 0x1000_0000
        }
    );
    assert_eq!(host.bus_range, BusRange { start: 0, end: 255 });
    assert_eq!(host.domain, Some(0));
    assert!(host.dma_coherent);
    // QEMU 10's virt PCI host says nothing of ATS (nor does its SMMU offer it).
    assert!(!host.ats_supported);
    assert_eq!(host.iommu_map_mask, None);
    let windows: Vec<_> = host.windows().collect();
    assert_eq!(
        windows,
        [
            PciWindow {
                space: PciSpace::Io,
                prefetchable: false,
                pci_addr: 0,
                cpu_addr: 0x3eff_0000,
                size: 0x1_0000
            },
            PciWindow {
                space: PciSpace::Mmio32,
                prefetchable: false,
                pci_addr: 0x1000_0000,
                cpu_addr: 0x1000_0000,
                size: 0x2eff_0000
            },
            PciWindow {
                space: PciSpace::Mmio64,
                prefetchable: false,
                pci_addr: 0x80_0000_0000,
                cpu_addr: 0x80_0000_0000,
                size: 0x80_0000_0000
            },
        ]
    );
    assert_eq!(
        host.window(PciSpace::Mmio32).map(|w| w.cpu_addr),
        Some(0x1000_0000)
    );
    assert_eq!(
        host.iommu_map(),
        [IommuMapEntry {
            rid_base: 0,
            iommu: 0x8004,
            sid_base: 0,
            length: 0x1_0000
        }]
    );

    // edu is 00:01.0 with -nodefaults: requester id 8, stream id 8.
    let rid = requester_id(0, 1, 0);
    assert_eq!(rid, 8);
    assert_eq!(host.map_rid(rid), Ok((0x8004, 8)));
    let (smmu, sid) = dt.stream_id(&host, rid).expect("edu is behind the SMMU");
    assert_eq!((smmu.regs.base, sid), (0x905_0000, 8));
    assert_eq!(dt.stream_id(&host, 0xffff).map(|(_, s)| s), Ok(0xffff));
    assert_eq!(host.config_address(0, 1, 0), Some(0x40_1000_8000));
    assert_eq!(host.config_address(0, 32, 0), None);
}

#[test]
fn qemu_virt_9_0_describes_the_same_smmu() {
    let dt = Devicetree::new(VIRT_9_0).expect("valid");
    assert_qemu_smmu(&dt);
    assert_eq!(the_host(&dt).ecam.base, 0x40_1000_0000);
}

#[test]
fn highmem_off_keeps_ecam_low_and_drops_the_64_bit_window() {
    let dt = Devicetree::new(HIGHMEM_OFF).expect("valid");
    assert_qemu_smmu(&dt);
    let host = the_host(&dt);
    assert_eq!(
        host.ecam,
        Region {
            base: 0x3f00_0000,
            size: 0x100_0000
        }
    );
    assert_eq!(host.bus_range, BusRange { start: 0, end: 15 });
    assert_eq!(host.window(PciSpace::Mmio64), None);
    assert_eq!(host.windows().count(), 2);
    assert_eq!(
        host.config_address(15, 0, 0),
        Some(0x3f00_0000 + (15 << 20))
    );
    assert_eq!(host.config_address(16, 0, 0), None);
}

#[test]
fn without_iommu_there_is_no_smmu_and_no_map() {
    let dt = Devicetree::new(NO_IOMMU).expect("valid");
    assert_eq!(dt.smmus().count(), 0);
    let host = the_host(&dt);
    assert!(host.iommu_map().is_empty());
    assert_eq!(host.map_rid(8), Err(DtError::NoIommuMap));
    assert_eq!(
        dt.stream_id(&host, 8).map(|(_, s)| s),
        Err(DtError::NoIommuMap)
    );
}

#[test]
fn from_addr_reads_only_the_declared_size() {
    let mut padded = VIRT.to_vec();
    padded.resize(VIRT.len() + 4096, 0xa5);
    // SAFETY: `padded` is live and unchanged for the whole test.
    let dt = unsafe { Devicetree::from_addr(padded.as_ptr() as usize, padded.len()) };
    assert_eq!(dt.map(|d| d.total_size()), Ok(VIRT.len()));
    // SAFETY: as above; a too-small window is refused before reading past it.
    let short = unsafe { Devicetree::from_addr(padded.as_ptr() as usize, 100) };
    assert!(matches!(short, Err(DtError::Truncated { .. })));
}

// ---- Hand-built blobs -------------------------------------------------------------------

/// Builds a flattened devicetree (version 17) token by token.
#[derive(Default)]
struct Builder {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn token(&mut self, t: u32) -> &mut Self {
        self.structs.extend_from_slice(&t.to_be_bytes());
        self
    }
    fn begin(&mut self, name: &str) -> &mut Self {
        self.token(FDT_BEGIN_NODE);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad()
    }
    fn end(&mut self) -> &mut Self {
        self.token(FDT_END_NODE)
    }
    fn pad(&mut self) -> &mut Self {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
        self
    }
    fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.token(FDT_PROP).token(value.len() as u32).token(off);
        self.structs.extend_from_slice(value);
        self.pad()
    }
    fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }
    fn finish(&mut self) -> Vec<u8> {
        self.token(FDT_END);
        let off_rsv = HEADER_LEN as u32;
        let off_struct = off_rsv + 16;
        let off_strings = off_struct + self.structs.len() as u32;
        let total = off_strings + self.strings.len() as u32;
        let mut b = Vec::new();
        for v in [
            FDT_MAGIC,
            total,
            off_struct,
            off_strings,
            off_rsv,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structs.len() as u32,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&self.structs);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// A minimal machine: GIC, one SMMU, one PCIe host mapping RIDs to it; `tweak` edits the SMMU
/// and host nodes.
fn machine(smmu_extra: impl Fn(&mut Builder), host_extra: impl Fn(&mut Builder)) -> Vec<u8> {
    let mut b = Builder::default();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.cells("interrupt-parent", &[1]);
    b.begin("intc@8000000")
        .prop("compatible", b"arm,gic-v3\0")
        .cells("#interrupt-cells", &[3])
        .cells("phandle", &[1])
        .end();
    b.begin("smmu@2b400000")
        .prop("compatible", b"arm,smmu-v3\0")
        .cells("reg", &[0, 0x2b40_0000, 0, 0x2_0000])
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[2]);
    smmu_extra(&mut b);
    b.end();
    b.begin("pcie@40000000")
        .prop("compatible", b"pci-host-ecam-generic\0")
        .cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000]);
    host_extra(&mut b);
    b.end();
    b.end();
    b.finish()
}

#[test]
fn builder_machine_parses_with_mask_and_offsets() {
    let blob = machine(
        |b| {
            b.cells("interrupts", &[0, 100, 4, 1, 7, 8])
                .prop("interrupt-names", b"combined\0gerror\0");
        },
        |b| {
            b.cells("iommu-map", &[0, 2, 0x1000, 0x100, 0x100, 2, 0x8000, 0x100])
                .cells("iommu-map-mask", &[0x1ff])
                .prop("ats-supported", b"");
        },
    );
    let dt = Devicetree::new(&blob).expect("valid");
    let smmu = dt.smmus().next().expect("one").expect("parses");
    assert_eq!(
        smmu.interrupts.combined,
        Some(Interrupt::Gic {
            kind: GicKind::Spi,
            number: 100,
            trigger: Trigger::LevelHigh
        })
    );
    assert_eq!(
        smmu.interrupts.gerror,
        Some(Interrupt::Gic {
            kind: GicKind::Ppi,
            number: 7,
            trigger: Trigger::LevelLow
        })
    );
    assert!(!smmu.dma_coherent);
    let host = dt.pci_hosts().next().expect("one").expect("parses");
    assert!(host.ats_supported);
    assert_eq!(host.bus_range, BusRange { start: 0, end: 255 });
    assert_eq!(host.map_rid(0x0005), Ok((2, 0x1005)));
    assert_eq!(host.map_rid(0x0105), Ok((2, 0x8005)));
    // The mask folds 0x0305 onto 0x0105.
    assert_eq!(host.map_rid(0x0305), Ok((2, 0x8005)));
    assert_eq!(
        dt.stream_id(&host, 0x0105).map(|(s, id)| (s.regs.base, id)),
        Ok((0x2b40_0000, 0x8005))
    );
}

#[test]
fn rid_outside_every_entry_is_reported() {
    let blob = machine(
        |_| {},
        |b| {
            b.cells("iommu-map", &[0x10, 2, 0, 0x10]);
        },
    );
    let dt = Devicetree::new(&blob).expect("valid");
    let host = dt.pci_hosts().next().expect("one").expect("parses");
    assert_eq!(host.map_rid(0x0f), Err(DtError::RidNotMapped { rid: 0x0f }));
    assert_eq!(host.map_rid(0x20), Err(DtError::RidNotMapped { rid: 0x20 }));
    assert_eq!(host.map_rid(0x1f), Ok((2, 0x0f)));
}

#[test]
fn iommu_map_to_a_non_smmu_or_nowhere_is_an_error() {
    let blob = machine(
        |_| {},
        |b| {
            b.cells("iommu-map", &[0, 1, 0, 0x10, 0x10, 9, 0, 0x10]);
        },
    );
    let dt = Devicetree::new(&blob).expect("valid");
    let host = dt.pci_hosts().next().expect("one").expect("parses");
    assert_eq!(
        dt.stream_id(&host, 0).map(|(_, s)| s),
        Err(DtError::NotAnSmmu { phandle: 1 })
    );
    assert_eq!(
        dt.stream_id(&host, 0x10).map(|(_, s)| s),
        Err(DtError::DanglingPhandle {
            property: "iommu-map",
            phandle: 9
        })
    );
}

#[test]
fn a_phandle_carried_twice_is_an_error() {
    // The PCIe host claims the SMMU's phandle: `iommu-map` could not say which node it means.
    let blob = machine(
        |_| {},
        |b| {
            b.cells("phandle", &[2]);
        },
    );
    assert_eq!(
        Devicetree::new(&blob).map(|_| ()),
        Err(DtError::DuplicatePhandle { phandle: 2 })
    );
}

#[test]
fn bad_properties_are_typed_errors() {
    let cases: [(Vec<u8>, DtError); 6] = [
        (
            machine(
                |_| {},
                |b| {
                    b.cells("iommu-map", &[0, 2, 0]);
                },
            ),
            DtError::BadProperty {
                property: "iommu-map",
                problem: "length is not a whole number of (rid-base, iommu, sid-base, length)",
            },
        ),
        (
            machine(
                |_| {},
                |b| {
                    b.cells("bus-range", &[5, 2]);
                },
            ),
            DtError::BadProperty {
                property: "bus-range",
                problem: "expected two cells, start <= end <= 255",
            },
        ),
        (
            machine(
                |_| {},
                |b| {
                    b.cells("ranges", &[0x0200_0000, 0, 0, 0, 0, 0]);
                },
            ),
            DtError::BadProperty {
                property: "ranges",
                problem: "length is not a whole number of entries",
            },
        ),
        (
            machine(
                |_| {},
                |b| {
                    let many: Vec<u32> = (0..17).flat_map(|i| [i, 2, i, 1]).collect();
                    b.cells("iommu-map", &many);
                },
            ),
            DtError::TooManyEntries {
                property: "iommu-map",
                max: MAX_IOMMU_MAP_ENTRIES,
            },
        ),
        (
            machine(
                |b| {
                    b.cells("interrupts", &[0, 1, 1, 0, 2, 1])
                        .prop("interrupt-names", b"eventq\0");
                },
                |_| {},
            ),
            DtError::BadProperty {
                property: "interrupt-names",
                problem: "fewer names than interrupts",
            },
        ),
        (
            machine(
                |b| {
                    b.cells("interrupts", &[0, 1]);
                },
                |_| {},
            ),
            DtError::BadProperty {
                property: "interrupts",
                problem: "length is not a whole number of specifiers",
            },
        ),
    ];
    for (blob, expected) in cases {
        let dt = Devicetree::new(&blob).expect("structurally valid");
        let smmu = dt.smmus().next().expect("one SMMU").err();
        let host = dt.pci_hosts().next().expect("one host").err();
        assert_eq!(smmu.or(host), Some(expected));
    }
}

#[test]
fn structural_damage_is_a_typed_error() {
    let good = machine(|_| {}, |_| {});
    assert!(Devicetree::new(&good).is_ok());

    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    assert_eq!(
        Devicetree::new(&bad_magic).err(),
        Some(DtError::BadMagic(0x000d_feed))
    );

    assert!(matches!(
        Devicetree::new(&good[..good.len() - 1]),
        Err(DtError::Truncated { .. })
    ));
    assert!(matches!(
        Devicetree::new(&good[..10]),
        Err(DtError::Truncated { .. })
    ));
    assert!(matches!(
        Devicetree::new(&[]),
        Err(DtError::Truncated { .. })
    ));

    let mut old = good.clone();
    old[20..24].copy_from_slice(&16u32.to_be_bytes());
    assert_eq!(
        Devicetree::new(&old).err(),
        Some(DtError::UnsupportedVersion(16))
    );

    let mut struct_oob = good.clone();
    struct_oob[36..40].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    assert_eq!(
        Devicetree::new(&struct_oob).err(),
        Some(DtError::BlockOutOfBounds { block: "structure" })
    );

    // Unbalanced: an extra FDT_END_NODE before FDT_END.
    let mut b = Builder::default();
    b.begin("").end().end();
    assert!(matches!(
        Devicetree::new(&b.finish()),
        Err(DtError::Malformed { .. })
    ));

    // A property whose name offset points outside the strings block.
    let mut b = Builder::default();
    b.begin("").token(FDT_PROP).token(0).token(0x1000).end();
    assert!(matches!(
        Devicetree::new(&b.finish()),
        Err(DtError::Malformed { .. })
    ));

    // A property longer than the structure block.
    let mut b = Builder::default();
    b.begin("").prop("x", b"").end();
    let mut blob = b.finish();
    let len_at = 40 + 16 + 8 + 4; // header, reservation map, BEGIN_NODE "" (8 bytes), FDT_PROP
    blob[len_at..len_at + 4].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert!(matches!(
        Devicetree::new(&blob),
        Err(DtError::Malformed { .. })
    ));

    // #address-cells must be one cell: `fdt` would panic on a short one.
    let mut b = Builder::default();
    b.begin("").prop("#address-cells", &[0, 2]).end();
    assert!(matches!(
        Devicetree::new(&b.finish()),
        Err(DtError::Malformed { .. })
    ));

    // A node name that is not UTF-8.
    let mut b = Builder::default();
    b.begin("");
    b.token(FDT_BEGIN_NODE);
    b.structs.extend_from_slice(&[0xff, 0xfe, 0, 0]);
    b.end().end();
    assert!(matches!(
        Devicetree::new(&b.finish()),
        Err(DtError::Malformed { .. })
    ));

    // Nesting deeper than `fdt` can track.
    let mut b = Builder::default();
    for _ in 0..64 {
        b.begin("n");
    }
    for _ in 0..64 {
        b.end();
    }
    assert!(matches!(
        Devicetree::new(&b.finish()),
        Err(DtError::TooDeep { .. })
    ));
    let mut b = Builder::default();
    for _ in 0..MAX_DEPTH {
        b.begin("n");
    }
    for _ in 0..MAX_DEPTH {
        b.end();
    }
    assert!(Devicetree::new(&b.finish()).is_ok());
}

/// Everything a user can ask of a devicetree, so a panic anywhere shows up.
fn exercise(blob: &[u8]) {
    let Ok(dt) = Devicetree::new(blob) else {
        return;
    };
    for smmu in dt.smmus().flatten() {
        let _ = std::format!(
            "{smmu:?} {:?}",
            smmu.interrupts.eventq.map(|i| i.gic_intid())
        );
        if let Some(p) = smmu.phandle {
            let _ = dt.smmu_by_phandle(p);
        }
    }
    for host in dt.pci_hosts().flatten() {
        for w in host.windows() {
            let _ = std::format!("{w}");
        }
        for rid in [0u16, 8, 0x100, 0xffff] {
            let _ = dt.stream_id(&host, rid);
        }
        let _ = host.config_address(0, 1, 0);
        let _ = host.config_address(255, 31, 7);
    }
}

#[test]
fn every_truncation_of_a_real_blob_is_handled() {
    for len in 0..VIRT.len() {
        exercise(&VIRT[..len]);
        // Also claim the shorter length in the header, so the structure itself is cut.
        let mut cut = VIRT[..len].to_vec();
        if cut.len() >= 8 {
            cut[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        }
        exercise(&cut);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
        let mut with_magic = FDT_MAGIC.to_be_bytes().to_vec();
        with_magic.extend_from_slice(&bytes);
        exercise(&with_magic);
    }

    #[test]
    fn damaged_real_blobs_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let source = [VIRT, VIRT_9_0, HIGHMEM_OFF, NO_IOMMU][which];
        let mut blob = source.to_vec();
        for (at, value) in flips {
            let i = at % blob.len();
            blob[i] = value;
        }
        exercise(&blob);
        blob.truncate(cut % (source.len() + 1));
        exercise(&blob);
    }

    #[test]
    fn damaged_properties_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        // Flip bytes only inside the structure block of a real blob: property values and tokens.
        let mut blob = VIRT.to_vec();
        let off = be32(&blob, 8).unwrap_or(0) as usize;
        let size = be32(&blob, 36).unwrap_or(0) as usize;
        for (at, value) in flips {
            let i = off + at % size.max(1);
            if let Some(b) = blob.get_mut(i) {
                *b = value;
            }
        }
        exercise(&blob);
    }
}

/// The GIC of `virt` (hw/arm/virt.c VIRT_GIC_DIST / VIRT_GIC_CPU), GICv2 by default, with the
/// two frames the test kernels' GIC driver uses; the same on every machine the matrix starts.
#[test]
fn virt_gic_from_the_devicetree() {
    for blob in [VIRT, VIRT_9_0, HIGHMEM_OFF, NO_IOMMU] {
        let dt = Devicetree::new(blob).expect("QEMU blob parses");
        let gic = dt.gic().expect("a GIC node");
        assert_eq!(gic.name, "intc@8000000");
        assert_eq!(gic.version, GicVersion::V2);
        assert_eq!(
            gic.distributor,
            Region {
                base: 0x800_0000,
                size: 0x1_0000
            }
        );
        assert_eq!(
            gic.cpu_interface,
            Region {
                base: 0x801_0000,
                size: 0x1_0000
            }
        );
    }
}

const VIRT_GICV3: &[u8] = include_bytes!("../../tests/data/qemu10-virt-gicv3-smmuv3-edu.dtb");

#[test]
fn gicv3_its_and_msi_map_from_the_devicetree() {
    let dt = Devicetree::new(VIRT_GICV3).expect("valid blob");
    let gic = dt.gic().expect("a GIC node");
    assert_eq!(gic.version, GicVersion::V3);
    assert_eq!(
        gic.distributor,
        Region {
            base: 0x800_0000,
            size: 0x1_0000
        }
    );
    assert_eq!(
        gic.cpu_interface,
        Region {
            base: 0x80a_0000,
            size: 0xf6_0000
        },
        "the redistributor region"
    );
    let its: Vec<_> = dt.its_nodes().collect();
    assert_eq!(its.len(), 1);
    let its = its[0].expect("ITS node parses");
    assert_eq!(its.name, "its@8080000");
    assert_eq!(
        its.regs,
        Region {
            base: 0x808_0000,
            size: 0x2_0000
        }
    );
    assert_eq!(its.phandle, Some(0x8003));
    assert_eq!(its.translater(), 0x809_0040);

    let host = the_host(&dt);
    let map = dt.msi_map(&host).expect("msi-map");
    assert_eq!(map.mask, None);
    assert_eq!(
        map.entries(),
        [MsiMapEntry {
            rid_base: 0,
            controller: 0x8003,
            device_id_base: 0,
            length: 0x1_0000
        }]
    );
    // The SMMU's iommu-map is there too: MSIs go to the ITS, DMA to the SMMU.
    assert_eq!(host.iommu_map().len(), 1);
    for rid in [0x0008u16, 0x0010, 0x0200, 0xffff] {
        let (target, device_id) = dt.msi_device_id(&host, rid).expect("mapped");
        assert_eq!(target, its);
        assert_eq!(device_id, u32::from(rid), "virt's msi-map is the identity");
    }
}

#[test]
fn gicv2_machines_have_no_its_and_their_msi_map_names_a_v2m_frame() {
    let dt = Devicetree::new(VIRT).expect("valid blob");
    assert_eq!(dt.its_nodes().count(), 0);
    let host = the_host(&dt);
    let map = dt.msi_map(&host).expect("msi-map to the GICv2m frame");
    assert_eq!(map.map_rid(8), Ok((0x8003, 8)));
    assert_eq!(
        dt.msi_device_id(&host, 8),
        Err(DtError::BadProperty {
            property: "msi-map",
            problem: "the MSI controller is not an arm,gic-v3-its node",
        })
    );
}

#[test]
fn msi_map_mask_offsets_and_misses() {
    let mut map = MsiMap {
        mask: Some(0xff),
        entries: [MsiMapEntry::default(); MAX_MSI_MAP_ENTRIES],
        len: 2,
    };
    map.entries[0] = MsiMapEntry {
        rid_base: 0x10,
        controller: 7,
        device_id_base: 0x1000,
        length: 0x10,
    };
    map.entries[1] = MsiMapEntry {
        rid_base: 0x40,
        controller: 9,
        device_id_base: 0,
        length: 1,
    };
    assert_eq!(map.map_rid(0x0010), Ok((7, 0x1000)));
    // The mask drops the bus number before lookup.
    assert_eq!(map.map_rid(0x031f), Ok((7, 0x100f)));
    assert_eq!(map.map_rid(0x0040), Ok((9, 0)));
    assert_eq!(
        map.map_rid(0x0020),
        Err(DtError::RidNotMapped { rid: 0x20 })
    );
    assert_eq!(
        map.map_rid(0x0041),
        Err(DtError::RidNotMapped { rid: 0x41 })
    );
}

#[test]
fn msi_parent_is_an_identity_map_and_its_absence_an_error() {
    let with_parent = machine(
        |_| {},
        |b| {
            b.cells("msi-parent", &[0x8002]);
        },
    );
    let dt = Devicetree::new(&with_parent).expect("builder blob");
    let host = the_host(&dt);
    let map = dt.msi_map(&host).expect("msi-parent");
    assert_eq!(map.map_rid(0x1234), Ok((0x8002, 0x1234)));
    let without = machine(|_| {}, |_| {});
    let dt = Devicetree::new(&without).expect("builder blob");
    let host = the_host(&dt);
    assert_eq!(
        dt.msi_map(&host),
        Err(DtError::MissingProperty {
            node: NODE_PCI,
            property: "msi-map or msi-parent",
        })
    );
}
