//! Host tests of the root- and context-entry encodings against the spec's layouts.

use super::*;

fn pa(a: u64) -> PhysAddr {
    PhysAddr::new(a)
}

/// CAP with ND = 6 (64 Ki domain ids), SAGAW = 3 and 4 levels (bits 9, 10), no CM: the
/// fields of QEMU's q35 unit that matter here.
const CAP_QEMU: Capability = Capability((6) | (0b0110 << 8) | (47 << 16));
/// ECAP with QI, PT and SMTS; DT absent.
const ECAP_PT_SM: ExtendedCapability = ExtendedCapability((1 << 1) | (1 << 6) | (1 << 43));

#[test]
fn source_id_layout() {
    // 3.4.1: bus 15:8, device 7:3, function 2:0. 00:03.0 (QEMU's first edu on q35 when
    // it is the third device) = 0x0018; 0a:1f.7 = 0x0aff.
    assert_eq!(SourceId::new(0, 3, 0).map(SourceId::raw), Some(0x0018));
    assert_eq!(
        SourceId::new(0x0a, 0x1f, 7).map(SourceId::raw),
        Some(0x0aff)
    );
    assert_eq!(SourceId::new(0, 32, 0), None);
    assert_eq!(SourceId::new(0, 0, 8), None);
    let s = SourceId::from_raw(0x0aff);
    assert_eq!(
        (s.bus(), s.device(), s.function(), s.devfn()),
        (0x0a, 0x1f, 7, 0xff)
    );
    let bdf = Bdf {
        bus: 1,
        device: 2,
        function: 3,
    };
    assert_eq!(SourceId::from(bdf).raw(), 0x0113);
    extern crate std;
    assert_eq!(std::format!("{}", SourceId::from_raw(0x0113)), "01:02.3");
}

#[test]
fn root_entry_encoding() {
    // P = bit 0, CTP = bits 63:12: 0x1234_5000 | 1; upper quadword reserved.
    let e = RootEntry::present(pa(0x1234_5000)).unwrap();
    assert_eq!(e.encode(), [0x1234_5001, 0]);
    assert_eq!(RootEntry::decode([0x1234_5001, 0]), e);
    assert_eq!(RootEntry::NOT_PRESENT.encode(), [0, 0]);
    assert_eq!(
        RootEntry::present(pa(0x1234_5800)),
        Err(EntryError::MisalignedTable {
            what: "context table",
            addr: pa(0x1234_5800)
        })
    );
    assert!(matches!(
        RootEntry::present(pa(1 << 52)),
        Err(EntryError::AddressTooWide { .. })
    ));
}

#[test]
fn scalable_root_entry_encoding() {
    // LP/UP = bit 0 of each quadword, LCTP/UCTP = bits 63:12 of each.
    let e = ScalableRootEntry::new(Some(pa(0x10_0000)), Some(pa(0x20_0000))).unwrap();
    assert_eq!(e.encode(), [0x10_0001, 0x20_0001]);
    let lower_only = ScalableRootEntry::new(Some(pa(0x10_0000)), None).unwrap();
    assert_eq!(lower_only.encode(), [0x10_0001, 0]);
    assert_eq!(ScalableRootEntry::decode([0x10_0001, 0]), lower_only);
    assert_eq!(scalable_context_slot(0x7f), (ContextHalf::Lower, 127));
    assert_eq!(scalable_context_slot(0x80), (ContextHalf::Upper, 0));
    assert_eq!(scalable_context_slot(0xff), (ContextHalf::Upper, 127));
}

#[test]
fn legacy_context_entry_second_stage() {
    // lo: P = 1, FPD = 0, TT = 00, SLPTPTR = 0xabc_d000 → 0xabc_d001.
    // hi: AW = 2 (4-level, 48-bit), DID 0x2a in bits 23:8 → 0x2a << 8 | 2 = 0x2a02.
    let e = ContextEntry::second_stage(Did::new(0x2a), Agaw::Level4, pa(0xabc_d000)).unwrap();
    assert_eq!(e.encode(), [0xabc_d001, 0x2a02]);
    assert!(e.is_present());
    assert_eq!(e.translation_type(), Some(TranslationType::Untranslated));
    assert_eq!(e.domain_id(), Did::new(0x2a));
    assert_eq!(e.second_stage_root(), pa(0xabc_d000));
    assert_eq!(e.address_width(), 2);
    assert_eq!(e.check_against(CAP_QEMU, ECAP_PT_SM), Ok(()));
}

#[test]
fn legacy_context_entry_device_tlb_and_fpd() {
    // TT = 01 → bit 2; FPD → bit 1; P → bit 0: 0x7 | root. hi: AW 1 (3-level), DID 0xffff.
    let e = ContextEntry::device_tlb(Did::new(0xffff), Agaw::Level3, pa(0x4000))
        .unwrap()
        .with_fault_processing_disabled();
    assert_eq!(e.encode(), [0x4007, 0xff_ff01]);
    assert!(e.fault_processing_disabled());
    // QEMU's unit has no ECAP.DT.
    assert_eq!(
        e.check_against(CAP_QEMU, ECAP_PT_SM),
        Err(EntryError::Unsupported { feature: "ECAP.DT" })
    );
}

#[test]
fn legacy_context_entry_pass_through() {
    // TT = 10 → 0b1000 | P = 0x9, no table pointer. hi: AW 2, DID 7 → 0x702.
    let e = ContextEntry::pass_through(Did::new(7), Agaw::Level4);
    assert_eq!(e.encode(), [0x9, 0x702]);
    assert_eq!(e.translation_type(), Some(TranslationType::PassThrough));
    assert_eq!(e.check_against(CAP_QEMU, ECAP_PT_SM), Ok(()));
    assert_eq!(
        e.check_against(CAP_QEMU, ExtendedCapability(0)),
        Err(EntryError::Unsupported { feature: "ECAP.PT" })
    );
    // 5-level is not in QEMU's SAGAW.
    let deep = ContextEntry::pass_through(Did::new(7), Agaw::Level5);
    assert_eq!(
        deep.check_against(CAP_QEMU, ECAP_PT_SM),
        Err(EntryError::AddressWidthUnsupported { agaw: Agaw::Level5 })
    );
    assert_eq!(ContextEntry::NOT_PRESENT.encode(), [0, 0]);
    assert_eq!(ContextEntry::decode([0xc, 0]).translation_type(), None);
}

#[test]
fn domain_ids_against_the_unit() {
    // ND = 0: 16 domain ids.
    let small = Capability(0);
    assert_eq!(Did::for_unit(15, small), Ok(Did::new(15)));
    assert_eq!(
        Did::for_unit(16, small),
        Err(EntryError::DomainIdOutOfRange {
            id: 16,
            supported: 16
        })
    );
    // CM = bit 7: domain id 0 reserved.
    let cm = Capability(6 | 1 << 7);
    assert_eq!(
        Did::for_unit(0, cm),
        Err(EntryError::DomainIdZeroInCachingMode)
    );
    assert_eq!(Did::for_unit(0, CAP_QEMU), Ok(Did::new(0)));
}

#[test]
fn scalable_context_entry_encoding() {
    // w0: P = 1, PDTS = 2 (512-entry directory, one page) in bits 11:9 → 0x400,
    // PASIDDIRPTR 0x5_6000 → 0x5_6401. w1: RID_PASID 0. w2, w3 reserved.
    let dir = PasidDirectorySize::from_pdts(2).unwrap();
    let ctx = ScalableContext::new(pa(0x5_6000), dir, Pasid::new(0).unwrap());
    let e = ScalableContextEntry::new(ctx).unwrap();
    assert_eq!(e.encode(), [0x5_6401, 0, 0, 0]);
    assert_eq!(e.fields(), Some(ctx));
    assert_eq!(e.check_against(ECAP_PT_SM), Ok(()));

    // FPD, DTE, PASIDE, PRE = bits 1..=4 → 0x1e; RID_PASID 0x7fff (last PASID a 512-entry
    // directory covers: 512 × 64 = 2^15 PASIDs).
    let full = ScalableContext {
        device_tlb: true,
        pasid_enable: true,
        page_requests: true,
        fault_processing_disabled: true,
        rid_pasid: Pasid::new(0x7fff).unwrap(),
        ..ctx
    };
    let e = ScalableContextEntry::new(full).unwrap();
    assert_eq!(e.encode(), [0x5_641f, 0x7fff, 0, 0]);
    assert_eq!(e.fields(), Some(full));
    assert_eq!(
        e.check_against(ECAP_PT_SM),
        Err(EntryError::Unsupported { feature: "ECAP.DT" })
    );
    // DT (bit 2), PRS (29), PASID (40) present, RPS (49) missing.
    let ecap_no_rps = ExtendedCapability(ECAP_PT_SM.0 | 1 << 2 | 1 << 29 | 1 << 40);
    assert_eq!(
        e.check_against(ecap_no_rps),
        Err(EntryError::Unsupported {
            feature: "ECAP.RPS"
        })
    );
    assert_eq!(
        e.check_against(ExtendedCapability(ecap_no_rps.0 | 1 << 49)),
        Ok(())
    );

    let outside = ScalableContext {
        rid_pasid: Pasid::new(0x8000).unwrap(),
        ..ctx
    };
    assert_eq!(
        ScalableContextEntry::new(outside),
        Err(EntryError::RidPasidOutsideDirectory {
            pasid: 0x8000,
            entries: 512
        })
    );
    assert_eq!(ScalableContextEntry::NOT_PRESENT.fields(), None);
}
