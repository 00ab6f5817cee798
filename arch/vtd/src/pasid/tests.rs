//! Host tests of the PASID directory and PASID entry encodings against the spec's layouts.

use super::*;

fn pa(a: u64) -> PhysAddr {
    PhysAddr::new(a)
}

/// CAP: ND 6, SAGAW 3+4 levels, MGAW 48, FS5LP (bit 60).
const CAP: Capability = Capability(6 | 0b0110 << 8 | 47 << 16 | 1 << 60);
/// ECAP with everything the builders may ask for: PT(6), SC(7), MTS(25), NEST(26),
/// SRS(31), SMTS(43), SLADS(45), SLTS(46), FLTS(47), SMPWC(48).
const ECAP_ALL: ExtendedCapability = ExtendedCapability(
    1 << 6 | 1 << 7 | 1 << 25 | 1 << 26 | 1 << 31 | 1 << 43 | 1 << 45 | 1 << 46 | 1 << 47 | 1 << 48,
);
/// QEMU 10.0 with x-scalable-mode=on: SMTS, SLTS, PT (no FLTS, no SC, no SMPWC).
const ECAP_QEMU_SM: ExtendedCapability = ExtendedCapability(1 << 6 | 1 << 43 | 1 << 46);

#[test]
fn pasid_indices_and_directory_sizes() {
    let p = Pasid::new(0x1_2345).unwrap();
    // Bits 19:6 = 0x1_2345 >> 6 = 0x48d, bits 5:0 = 0x05.
    assert_eq!((p.directory_index(), p.table_index()), (0x48d, 0x05));
    assert_eq!(Pasid::new(1 << 20), None);
    assert_eq!(
        Pasid::for_width(0x100, 8),
        Err(EntryError::PasidOutOfRange {
            pasid: 0x100,
            bits: 8
        })
    );
    assert_eq!(Pasid::for_width(0xff, 8), Ok(Pasid::new(0xff).unwrap()));
    // 20-bit PASIDs: 2^14 directory entries = 2^(7 + 7): PDTS 7, 128 KiB.
    assert_eq!(PasidDirectorySize::covering(20).pdts(), 7);
    assert_eq!(PasidDirectorySize::covering(20).bytes(), 128 << 10);
    // 15 bits: 512 entries, one page.
    assert_eq!(
        PasidDirectorySize::covering(15),
        PasidDirectorySize::ONE_PAGE
    );
    assert_eq!(PasidDirectorySize::ONE_PAGE.bytes(), 4096);
    // Small widths still get the minimum 128-entry directory.
    assert_eq!(PasidDirectorySize::covering(1).entries(), 128);
    assert!(PasidDirectorySize::ONE_PAGE.covers(Pasid::new(0x7fff).unwrap()));
    assert!(!PasidDirectorySize::ONE_PAGE.covers(Pasid::new(0x8000).unwrap()));
    assert_eq!(PasidDirectorySize::from_pdts(8), None);
}

#[test]
fn directory_entry_encoding() {
    // P = bit 0, FPD = bit 1, SMPTBLPTR = bits 63:12.
    let e = PasidDirEntry::present(pa(0x9_8000)).unwrap();
    assert_eq!(e.encode(), 0x9_8001);
    assert_eq!(e.with_fault_processing_disabled().encode(), 0x9_8003);
    assert_eq!(e.table(), Some(pa(0x9_8000)));
    assert_eq!(PasidDirEntry::NOT_PRESENT.table(), None);
    assert!(PasidDirEntry::present(pa(0x9_8010)).is_err());
}

#[test]
fn second_stage_entry() {
    // w0: P(1) | AW 2 << 2 (8) | PGTT 010 << 6 (0x80) | SLPTPTR 0x1_2345_6000
    //   = 0x1_2345_6089. w1: DID 5. Rest 0.
    let e = SecondStage::new(Did::new(5), Agaw::Level4, pa(0x1_2345_6000))
        .build(CAP, ECAP_QEMU_SM)
        .unwrap();
    assert_eq!(e.encode(), [0x1_2345_6089, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(e.pgtt(), Some(Pgtt::SecondStage));
    assert_eq!(e.domain_id(), Did::new(5));
    assert_eq!(e.second_stage_root(), pa(0x1_2345_6000));

    // SLEE bit 5, SLADE bit 9, PGSNP bit 88 (w1 bit 24), PWSNP bit 87 (w1 bit 23), FPD bit 1.
    let mut s = SecondStage::new(Did::new(5), Agaw::Level3, pa(0x2000));
    s.access_dirty = true;
    s.execute = true;
    s.page_snoop = true;
    s.common = Common {
        fault_processing_disabled: true,
        page_walk_snoop: true,
    };
    // w0: 1 | 2 | AW 1 << 2 (4) | 0x20 | 0x80 | 0x200 | 0x2000 = 0x22a7.
    let e = s.build(CAP, ECAP_ALL).unwrap();
    assert_eq!(e.encode()[..3], [0x22a7, 0x180_0005, 0]);
    // QEMU's unit has neither SLADS, SC nor SMPWC.
    assert_eq!(
        s.build(CAP, ECAP_QEMU_SM),
        Err(EntryError::Unsupported {
            feature: "ECAP.SLADS"
        })
    );
}

#[test]
fn first_stage_entry() {
    // w0: P | AW 2 << 2 (48-bit for 4-level, see FirstStagePaging::agaw) | PGTT 001 << 6
    //   = 1 + 8 + 0x40 = 0x49; SLPTPTR 0.
    // w1: DID 9 | PWSNP (bit 23) | PGSNP (bit 24) = 0x180_0009.
    // w2: SRE (bit 0) | FLPM 0 | WPE (bit 4) | FLPTPTR 0x7000 = 0x7011.
    let mut f = FirstStage::new(Did::new(9), pa(0x7000), FirstStagePaging::FourLevel);
    f.supervisor_requests = true;
    f.write_protect = true;
    f.page_snoop = true;
    f.common.page_walk_snoop = true;
    let e = f.build(CAP, ECAP_ALL).unwrap();
    assert_eq!(e.encode(), [0x49, 0x180_0009, 0x7011, 0, 0, 0, 0, 0]);
    assert_eq!(e.first_stage_root(), pa(0x7000));

    // 5-level: FLPM 01 in bits 3:2 (0x4), AW 3 (0xc in w0).
    let five = FirstStage::new(Did::new(9), pa(0x7000), FirstStagePaging::FiveLevel);
    let e = five.build(CAP, ECAP_ALL).unwrap();
    assert_eq!(e.encode()[..3], [0x4d, 9, 0x7004]);
    assert_eq!(
        five.build(Capability(CAP.0 & !(1 << 60)), ECAP_ALL),
        Err(EntryError::Unsupported {
            feature: "CAP.FS5LP"
        })
    );
    // QEMU without x-flts has no first stage.
    assert_eq!(
        FirstStage::new(Did::new(9), pa(0x7000), FirstStagePaging::FourLevel)
            .build(CAP, ECAP_QEMU_SM),
        Err(EntryError::Unsupported {
            feature: "ECAP.FLTS"
        })
    );
    // SRE needs ECAP.SRS.
    assert_eq!(
        f.build(CAP, ExtendedCapability(ECAP_ALL.0 & !(1 << 31))),
        Err(EntryError::Unsupported {
            feature: "ECAP.SRS"
        })
    );
}

#[test]
fn first_stage_memory_type() {
    // CD bit 25, EMTE bit 26, EMT 6 in 29:27 (0x3000_0000), PWT bit 30, PCD bit 31,
    // PAT 0x0007_0406 in 63:32. w1 = 0x0007_0406_0000_0000 | 0x7600_0000 | DID 1.
    let mut f = FirstStage::new(Did::new(1), pa(0x3000), FirstStagePaging::FourLevel);
    f.memory_type = Some(MemoryType {
        cache_disable: true,
        extended: Some(6),
        write_through: true,
        cache_disable_root: false,
        pat: 0x0007_0406,
    });
    let e = f.build(CAP, ECAP_ALL).unwrap();
    assert_eq!(e.encode()[1], 0x0007_0406_7600_0001);
    assert_eq!(
        f.build(CAP, ExtendedCapability(ECAP_ALL.0 & !(1 << 25))),
        Err(EntryError::Unsupported {
            feature: "ECAP.MTS"
        })
    );
}

#[test]
fn pass_through_entry() {
    // w0: P | AW 2 << 2 | PGTT 100 << 6 (0x100) = 0x109; w1: DID 1.
    let e = PassThrough::new(Did::new(1), Agaw::Level4)
        .build(CAP, ECAP_QEMU_SM)
        .unwrap();
    assert_eq!(e.encode(), [0x109, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(e.pgtt(), Some(Pgtt::PassThrough));
    assert_eq!(
        PassThrough::new(Did::new(1), Agaw::Level5).build(CAP, ECAP_QEMU_SM),
        Err(EntryError::AddressWidthUnsupported { agaw: Agaw::Level5 })
    );
    assert_eq!(
        PassThrough::new(Did::new(1), Agaw::Level4).build(CAP, ExtendedCapability(1 << 43)),
        Err(EntryError::Unsupported { feature: "ECAP.PT" })
    );
    // Caching mode reserves domain id 0.
    assert_eq!(
        PassThrough::new(Did::new(0), Agaw::Level4).build(Capability(CAP.0 | 1 << 7), ECAP_QEMU_SM),
        Err(EntryError::DomainIdZeroInCachingMode)
    );
}

#[test]
fn nested_entry() {
    // w0: P | AW 2 << 2 | PGTT 011 << 6 (0xc0) | SLADE (0x200) | SLPTPTR 0xb000 = 0xb2c9.
    // w1: DID 3. w2: FLPTPTR 0xa000, FLPM 0.
    let mut n = Nested::new(
        Did::new(3),
        pa(0xa000),
        FirstStagePaging::FourLevel,
        Agaw::Level4,
        pa(0xb000),
    );
    n.access_dirty = true;
    let e = n.build(CAP, ECAP_ALL).unwrap();
    assert_eq!(e.encode(), [0xb2c9, 3, 0xa000, 0, 0, 0, 0, 0]);
    assert_eq!(e.pgtt(), Some(Pgtt::Nested));
    // QEMU 10.0 has no nested translation.
    assert_eq!(
        n.build(CAP, ECAP_QEMU_SM),
        Err(EntryError::Unsupported {
            feature: "ECAP.NEST"
        })
    );
    let misaligned = Nested {
        second_stage_root: pa(0xb008),
        ..n
    };
    assert!(matches!(
        misaligned.build(CAP, ECAP_ALL),
        Err(EntryError::MisalignedTable { .. })
    ));
}

#[test]
fn fields_decode_what_the_builders_encode() {
    // The nested entry of `nested_entry` with EAFE (bit 135 = quadword 2 bit 7), SRE and
    // WPE: w2 = 0xa000 | 0x80 | 0x10 | 0x1 = 0xa091.
    let mut n = Nested::new(
        Did::new(3),
        pa(0xa000),
        FirstStagePaging::FiveLevel,
        Agaw::Level4,
        pa(0xb000),
    );
    n.extended_accessed = true;
    n.supervisor_requests = true;
    n.write_protect = true;
    let ecap = ExtendedCapability(ECAP_ALL.0 | 1 << 34);
    let e = n.build(CAP, ecap).unwrap();
    assert_eq!(e.encode()[2], 0xa000 | 0x80 | 0x10 | 0x4 | 0x1);
    assert_eq!(
        n.build(CAP, ECAP_ALL),
        Err(EntryError::Unsupported {
            feature: "ECAP.EAFS"
        })
    );
    let f = e.fields();
    assert!(f.present && !f.fault_processing_disabled);
    assert_eq!(f.pgtt, Ok(Pgtt::Nested));
    assert_eq!((f.aw, f.domain), (2, Did::new(3)));
    assert_eq!(f.second_stage_root, pa(0xb000));
    assert_eq!(f.first_stage_root, pa(0xa000));
    assert_eq!(
        FirstStagePaging::from_fspm(f.first_stage_paging),
        Some(FirstStagePaging::FiveLevel)
    );
    assert!(f.supervisor_requests && f.write_protect && f.extended_accessed);
    assert_eq!((f.memory_type, f.reserved), (None, None));
    // Memory type round trip (see `first_stage_memory_type`).
    let mt = MemoryType {
        cache_disable: true,
        extended: Some(6),
        write_through: true,
        cache_disable_root: false,
        pat: 0x0007_0406,
    };
    let mut fs = FirstStage::new(Did::new(1), pa(0x3000), FirstStagePaging::FourLevel);
    fs.memory_type = Some(mt);
    assert_eq!(
        fs.build(CAP, ECAP_ALL).unwrap().fields().memory_type,
        Some(mt)
    );
    // Reserved bits and encodings, each named.
    let raw = |w: [u64; 3]| PasidEntry::decode([w[0], w[1], w[2], 0, 0, 0, 0, 0]).fields();
    assert_eq!(raw([0x401, 0, 0]).reserved, Some("reserved bits 11:10"));
    assert_eq!(raw([1, 1 << 16, 0]).reserved, Some("reserved bits 86:80"));
    assert_eq!(raw([1, 0, 0x100]).reserved, Some("reserved bits 139:136"));
    let mut high = [0u64; 8];
    high[7] = 1 << 63;
    assert_eq!(
        PasidEntry::decode(high).fields().reserved,
        Some("reserved bits 511:192")
    );
    assert_eq!(raw([0x1c1, 0, 0]).pgtt, Err(7));
    assert!(raw([1, 3 << 27, 0]).emt_without_emte);
    assert_eq!(raw([1, 0, 0x60]).execute_controls, 3);
    assert!(raw([1, 0, 2]).execute_requests);
    assert_eq!(FirstStagePaging::from_fspm(2), None);
}

#[test]
fn blocked_entries() {
    assert!(!PasidEntry::NOT_PRESENT.is_present());
    assert_eq!(PasidEntry::BLOCKED_SILENT.encode()[0], 2);
    assert_eq!(PasidEntry::NOT_PRESENT.pgtt(), None);
}
