//! Host tests of the DMAR parser: QEMU's tables, every structure type, and typed errors for malformed input.

use super::*;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// The DMAR QEMU 10.0.2 builds for `-machine q35 -device intel-iommu,aw-bits=39,
/// caching-mode=on -device edu` (captured from guest memory after SeaBIOS ran): host address
/// width 39, INTR_REMAP, one DRHD at 0xfed90000 (flags 0) whose scopes are the IOAPIC and
/// each PCI device of bus 0 (00:00.0, 00:01.0 = edu, 00:1f.0, 00:1f.2, 00:1f.3).
const QEMU_DMAR: &str = "444d4152700000000128424f43485320425850432020202001000000425850430100\
    000026010000000000000000000000004000000000000000d9fe000000000308000000ff00000108000000000\
    00001080000000001000108000000001f000108000000001f020108000000001f03";

/// The same with `intremap=off,device-iotlb=on` (48-bit): no INTR_REMAP, and an ATSR with
/// ALL_PORTS.
const QEMU_DMAR_ATS: &str = "444d415278000000010d424f4348532042585043202020200100000042585043\
    010000002f000000000000000000000000004000000000000000d9fe000000000308000000ff0000010800000\
    000000001080000000001000108000000001f000108000000001f020108000000001f030200080001000000";

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|c| c.is_ascii_hexdigit()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = sum.wrapping_neg();
}

/// A DMAR built field by field from the layouts of VT-d chapter 8.
fn build(structures: &[Vec<u8>]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"DMAR");
    t.extend_from_slice(&0u32.to_le_bytes()); // length, set below
    t.extend_from_slice(&[1, 0]); // revision, checksum
    t.extend_from_slice(b"OEMID OEMTABLE");
    t.extend_from_slice(&[0; 12]); // OEM revision, creator id, creator revision
    t.push(45); // host address width 46
    t.push(0b101); // INTR_REMAP | DMA_CTRL_PLATFORM_OPT_IN
    t.extend_from_slice(&[0; 10]);
    for s in structures {
        t.extend_from_slice(s);
    }
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    fix_checksum(&mut t);
    t
}

fn structure(kind: u16, fixed: &[u8], scopes: &[Vec<u8>]) -> Vec<u8> {
    let len = 4 + fixed.len() + scopes.iter().map(Vec::len).sum::<usize>();
    let mut s = Vec::new();
    s.extend_from_slice(&kind.to_le_bytes());
    s.extend_from_slice(&(len as u16).to_le_bytes());
    s.extend_from_slice(fixed);
    for sc in scopes {
        s.extend_from_slice(sc);
    }
    s
}

fn scope(kind: u8, enum_id: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
    let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, enum_id, bus];
    for &(d, f) in path {
        s.extend_from_slice(&[d, f]);
    }
    s
}

fn drhd(flags: u8, size: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![flags, size];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    structure(0, &fixed, scopes)
}

fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![0, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    fixed.extend_from_slice(&base.to_le_bytes());
    fixed.extend_from_slice(&limit.to_le_bytes());
    structure(1, &fixed, scopes)
}

fn atsr(flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut fixed = vec![flags, 0];
    fixed.extend_from_slice(&segment.to_le_bytes());
    structure(2, &fixed, scopes)
}

/// A platform with two units (one covering everything else), an RMRR for a USB controller
/// behind a bridge, an ATSR, an RHSA, an ANDD, a SATC, a SIDP and an unknown type 9.
fn sample() -> Vec<u8> {
    let mut andd = vec![0, 0, 0, 7];
    andd.extend_from_slice(b"\\_SB.PCI0.UAR1\0");
    let mut rhsa = vec![0; 4];
    rhsa.extend_from_slice(&0xfed9_1000u64.to_le_bytes());
    rhsa.extend_from_slice(&1u32.to_le_bytes());
    build(&[
        drhd(0, 0, 0, 0xfed9_0000, &[scope(1, 0, 0, &[(2, 0)])]),
        drhd(
            1,
            1,
            0,
            0xfed9_1000,
            &[
                scope(3, 8, 0xf0, &[(0x1f, 0)]),
                scope(4, 0, 0, &[(0x1f, 7)]),
            ],
        ),
        rmrr(
            0,
            0x7d00_0000,
            0x7d0f_ffff,
            &[scope(1, 0, 0, &[(0x1c, 0), (0, 0)])],
        ),
        atsr(0, 0, &[scope(2, 0, 0, &[(0x1c, 0)])]),
        structure(3, &rhsa, &[]),
        structure(4, &andd, &[]),
        structure(5, &[1, 0, 0, 0], &[scope(1, 0, 0, &[(2, 0)])]),
        structure(
            6,
            &[0, 0, 0, 0],
            &[{
                let mut s = scope(1, 0, 0, &[(3, 0)]);
                s[2] = 0x10; // ATC_REQUIRED in an SIDP scope
                s
            }],
        ),
        structure(9, &[0xaa; 8], &[]),
    ])
}

#[test]
fn parses_qemus_dmar() {
    let bytes = hex(QEMU_DMAR);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 39);
    assert!(dmar.flags().intr_remap());
    assert!(!dmar.flags().x2apic_opt_out());
    let drhds: Vec<_> = dmar.drhds().collect();
    assert_eq!(drhds.len(), 1);
    let d = drhds[0];
    assert_eq!(d.register_base(), 0xfed9_0000);
    assert_eq!(d.register_size(), 4096);
    assert_eq!(d.segment(), 0);
    assert!(!d.include_pci_all());
    let scopes: Vec<_> = d.scopes().collect();
    assert_eq!(scopes.len(), 6);
    assert_eq!(scopes[0].kind(), DeviceScopeType::IoApic);
    assert_eq!(scopes[0].enumeration_id(), 0);
    assert_eq!(scopes[0].start_bus(), 0xff);
    let pci: Vec<_> = scopes[1..]
        .iter()
        .map(|s| (s.kind(), s.direct_bdf()))
        .collect();
    let bdf = |device, function| {
        Some(Bdf {
            bus: 0,
            device,
            function,
        })
    };
    assert_eq!(
        pci,
        [
            (DeviceScopeType::PciEndpoint, bdf(0, 0)),
            (DeviceScopeType::PciEndpoint, bdf(1, 0)),
            (DeviceScopeType::PciEndpoint, bdf(0x1f, 0)),
            (DeviceScopeType::PciEndpoint, bdf(0x1f, 2)),
            (DeviceScopeType::PciEndpoint, bdf(0x1f, 3)),
        ]
    );
    assert_eq!(dmar.rmrrs().count(), 0);
    assert_eq!(dmar.atsrs().count(), 0);
}

#[test]
fn parses_qemus_dmar_with_atsr() {
    let bytes = hex(QEMU_DMAR_ATS);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 48);
    assert!(!dmar.flags().intr_remap());
    let atsrs: Vec<_> = dmar.atsrs().collect();
    assert_eq!(atsrs.len(), 1);
    assert!(atsrs[0].all_ports());
    assert_eq!(atsrs[0].segment(), 0);
    assert_eq!(atsrs[0].scopes().count(), 0);
}

#[test]
fn parses_every_structure_type() {
    let bytes = sample();
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(dmar.host_address_width(), 46);
    assert!(dmar.flags().intr_remap() && dmar.flags().dma_ctrl_platform_opt_in());
    let s: Vec<_> = dmar.structures().collect();
    assert_eq!(s.len(), 9);

    let drhds: Vec<_> = dmar.drhds().collect();
    assert_eq!(drhds.len(), 2);
    assert!(!drhds[0].include_pci_all());
    assert_eq!(
        drhds[0].scopes().next().unwrap().direct_bdf(),
        Some(Bdf {
            bus: 0,
            device: 2,
            function: 0
        })
    );
    assert!(drhds[1].include_pci_all());
    assert_eq!(drhds[1].register_size(), 8192);
    let scopes: Vec<_> = drhds[1].scopes().collect();
    assert_eq!(scopes[0].kind(), DeviceScopeType::IoApic);
    assert_eq!(scopes[0].enumeration_id(), 8);
    assert_eq!(scopes[0].start_bus(), 0xf0);
    assert_eq!(scopes[1].kind(), DeviceScopeType::MsiCapableHpet);
    assert_eq!(
        scopes[1].path().collect::<Vec<_>>(),
        [PathEntry {
            device: 0x1f,
            function: 7
        }]
    );

    let rmrr = dmar.rmrrs().next().unwrap();
    assert_eq!((rmrr.base(), rmrr.limit()), (0x7d00_0000, 0x7d0f_ffff));
    let usb = rmrr.scopes().next().unwrap();
    assert_eq!(usb.path().len(), 2);
    assert_eq!(
        usb.direct_bdf(),
        None,
        "a device behind a bridge has no direct BDF"
    );

    let atsr = dmar.atsrs().next().unwrap();
    assert!(!atsr.all_ports());
    assert_eq!(
        atsr.scopes().next().unwrap().kind(),
        DeviceScopeType::PciSubHierarchy
    );

    assert!(matches!(
        s[4],
        RemappingStructure::Rhsa(Rhsa {
            register_base: 0xfed9_1000,
            proximity_domain: 1
        })
    ));
    let RemappingStructure::Andd(andd) = s[5] else {
        panic!("{:?}", s[5])
    };
    assert_eq!(andd.device_number(), 7);
    assert_eq!(andd.object_name(), b"\\_SB.PCI0.UAR1");
    let RemappingStructure::Satc(satc) = s[6] else {
        panic!("{:?}", s[6])
    };
    assert!(satc.atc_required());
    assert_eq!(satc.scopes().count(), 1);
    let RemappingStructure::Sidp(sidp) = s[7] else {
        panic!("{:?}", s[7])
    };
    assert_eq!(sidp.scopes().next().unwrap().flags(), 0x10);
    assert!(matches!(s[8], RemappingStructure::Unknown { kind: 9, bytes } if bytes.len() == 12));
}

#[test]
fn debug_output_names_the_unit() {
    let bytes = hex(QEMU_DMAR);
    let s = std::format!("{:?}", Dmar::parse(&bytes).unwrap());
    assert!(s.contains("register_base: 0xfed90000"), "{s}");
    assert!(s.contains("IoApic"), "{s}");
    assert_eq!(
        std::format!(
            "{:?}",
            Bdf {
                bus: 0,
                device: 1,
                function: 0
            }
        ),
        "00:01.0"
    );
    assert_eq!(
        Bdf {
            bus: 0,
            device: 1,
            function: 0
        }
        .requester_id(),
        0x0008
    );
    assert_eq!(
        Bdf {
            bus: 0x12,
            device: 0x1f,
            function: 7
        }
        .requester_id(),
        0x12ff
    );
}

#[test]
fn header_errors_are_typed() {
    let good = sample();
    assert_eq!(
        Dmar::parse(&good[..20]).unwrap_err(),
        DmarError::Truncated {
            length: 36,
            available: 20
        }
    );
    assert_eq!(
        Dmar::parse(&good[..good.len() - 1]).unwrap_err(),
        DmarError::Truncated {
            length: good.len(),
            available: good.len() - 1
        }
    );
    let mut t = good.clone();
    t[0] = b'X';
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::BadSignature(Signature(*b"XMAR"))
    );
    let mut t = good.clone();
    t[4..8].copy_from_slice(&40u32.to_le_bytes());
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::BadLength { length: 40 }
    );
    let mut t = good.clone();
    t[60] ^= 1;
    assert_eq!(Dmar::parse(&t).unwrap_err(), DmarError::BadChecksum);
    // Trailing bytes past the length field are not part of the table.
    let mut t = good.clone();
    t.extend_from_slice(&[0xff; 7]);
    assert_eq!(Dmar::parse(&t).unwrap().bytes().len(), good.len());
}

#[test]
fn structure_errors_are_typed() {
    // Structure length below 4.
    let t = build(&[vec![0, 0, 3, 0]]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::StructureTooShort {
            offset: 48,
            kind: 0,
            length: 3
        }
    );
    // A DRHD shorter than its 16 fixed bytes.
    let t = build(&[structure(0, &[0; 8], &[])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::StructureTooShort {
            offset: 48,
            kind: 0,
            length: 12
        }
    );
    // Structure length running past the table.
    let mut s = drhd(0, 0, 0, 0xfed9_0000, &[]);
    s[2] = 40;
    let t = build(&[s]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::StructureBeyondTable {
            offset: 48,
            length: 40
        }
    );
    // Two stray bytes after the last structure.
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[]), vec![0, 0]]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::StructureBeyondTable {
            offset: 64,
            length: 2
        }
    );
    // An RMRR with base above limit.
    let t = build(&[rmrr(0, 0x2000, 0x1fff, &[])]);
    assert!(matches!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::RmrrInverted { .. }
    ));
}

#[test]
fn scope_errors_are_typed() {
    // Scope length below 6.
    let mut sc = scope(1, 0, 0, &[(1, 0)]);
    sc[1] = 4;
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[sc.clone()])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::ScopeTooShort {
            offset: 64,
            length: 4
        }
    );
    // Scope length past its structure.
    sc[1] = 10;
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[sc.clone()])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::ScopeBeyondStructure {
            offset: 64,
            length: 10
        }
    );
    // Odd path length.
    sc[1] = 7;
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[sc])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::ScopePathOdd {
            offset: 64,
            length: 7
        }
    );
    // A PCI endpoint scope without a path; a reserved-type scope may have none.
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[scope(1, 0, 0, &[])])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::ScopePathEmpty { offset: 64 }
    );
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[scope(0x42, 0, 0, &[])])]);
    let dmar = Dmar::parse(&t).unwrap();
    let scope = dmar.drhds().next().unwrap().scopes().next().unwrap();
    assert_eq!(scope.kind(), DeviceScopeType::Reserved(0x42));
    assert_eq!(scope.direct_bdf(), None);
    // A single stray byte where a scope would start.
    let t = build(&[drhd(0, 0, 0, 0xfed9_0000, &[vec![1]])]);
    assert_eq!(
        Dmar::parse(&t).unwrap_err(),
        DmarError::ScopeTooShort {
            offset: 64,
            length: 1
        }
    );
}

/// Every byte a parsed table's iterators hand out lies inside the table.
fn walk_stays_in_bounds(dmar: &Dmar<'_>) -> Result<(), TestCaseError> {
    let range = dmar.bytes().as_ptr_range();
    let inside = |b: &[u8]| {
        let r = b.as_ptr_range();
        range.start <= r.start && r.end <= range.end
    };
    for s in dmar.structures() {
        let (body, scopes) = match s {
            RemappingStructure::Drhd(d) => (d.b, Some(d.scopes())),
            RemappingStructure::Rmrr(r) => {
                prop_assert!(r.base() <= r.limit());
                (r.b, Some(r.scopes()))
            }
            RemappingStructure::Atsr(a) => (a.b, Some(a.scopes())),
            RemappingStructure::Satc(s) => (s.b, Some(s.scopes())),
            RemappingStructure::Sidp(s) => (s.b, Some(s.scopes())),
            RemappingStructure::Andd(a) => {
                prop_assert!(inside(a.object_name()));
                (a.b, None)
            }
            RemappingStructure::Rhsa(_) => continue,
            RemappingStructure::Unknown { bytes, .. } => (bytes, None),
        };
        prop_assert!(inside(body));
        for sc in scopes.into_iter().flatten() {
            prop_assert!(inside(sc.b));
            prop_assert!(sc.b.len() >= SCOPE_HEADER_LEN);
            prop_assert_eq!(sc.path().count(), (sc.b.len() - SCOPE_HEADER_LEN) / 2);
            let _ = sc.direct_bdf();
        }
    }
    let _ = std::format!("{dmar:?}");
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                fix in any::<bool>()) {
        // Give random bytes a fair chance to reach the structure walk: a right signature,
        // a length that fits, a checksum that holds.
        if fix && bytes.len() >= DMAR_HEADER_LEN {
            bytes[..4].copy_from_slice(b"DMAR");
            let len = bytes.len() as u32;
            bytes[4..8].copy_from_slice(&len.to_le_bytes());
            fix_checksum(&mut bytes);
        }
        if let Ok(dmar) = Dmar::parse(&bytes) {
            walk_stays_in_bounds(&dmar)?;
        }
    }

    #[test]
    fn mutated_tables_parse_or_fail_cleanly(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        fix in any::<bool>(),
    ) {
        let mut t = match which {
            0 => hex(QEMU_DMAR),
            1 => hex(QEMU_DMAR_ATS),
            _ => sample(),
        };
        // Byte flips anywhere, including the length fields of structures and scopes.
        for (at, x) in edits {
            let i = at.index(t.len());
            t[i] ^= x;
        }
        if truncate {
            // Shorten both the buffer and the length field, so the structure walk (not the
            // header check) meets the cut.
            let n = cut.index(t.len()).max(DMAR_HEADER_LEN);
            t.truncate(n);
            t[4..8].copy_from_slice(&(n as u32).to_le_bytes());
        }
        if fix && t.len() >= DMAR_HEADER_LEN {
            fix_checksum(&mut t);
        }
        match Dmar::parse(&t) {
            Ok(dmar) => walk_stays_in_bounds(&dmar)?,
            Err(e) => {
                let text = std::format!("{e}");
                prop_assert!(!text.is_empty());
            }
        }
    }
}

#[test]
fn scopes_read_as_a_person_would_say_them() {
    let table = build(&[drhd(
        0,
        0,
        0,
        0xfed9_0000,
        &[
            scope(1, 0, 0, &[(0x1f, 3)]),
            scope(2, 0, 0, &[(4, 0)]),
            scope(1, 0, 0, &[(0x1c, 0), (0, 1)]),
            scope(3, 2, 0xf0, &[(0x1f, 0)]),
            scope(4, 0, 0, &[(0x1f, 7)]),
            scope(5, 1, 0, &[(0, 0)]),
        ],
    )]);
    let dmar = Dmar::parse(&table).unwrap();
    let drhd = dmar.drhds().next().unwrap();
    let said: Vec<std::string::String> = drhd.scopes().map(|s| std::format!("{s}")).collect();
    assert_eq!(
        said,
        [
            "00:1f.3",
            "bridge 00:04.0 and every device below it",
            "00:1c.0/00.1",
            "IOAPIC 2",
            "HPET 0",
            "ACPI device 1",
        ]
    );
}
