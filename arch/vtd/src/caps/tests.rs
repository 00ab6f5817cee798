//! Host tests of the capability decoding: QEMU's VER/CAP/ECAP values and every field from its own bits.

use super::*;

// Register values QEMU 10.0.2 reports for `-device intel-iommu,<options>` on q35, read at
// 0xfed90000 (+8, +0x10) through the monitor's `xp`. The decodings asserted below were
// worked out by hand from the spec's bit tables, independently of the getters.
const VER: u32 = 0x10;
/// Default options: aw-bits=48, caching-mode=off.
const CAP_DEFAULT: u64 = 0x00d2_008c_222f_0606;
const CAP_AW39: u64 = 0x00d2_008c_2226_0206;
const CAP_CM: u64 = 0x00d2_008c_222f_0686;
/// x-scalable-mode=on,x-flts=on adds FS1GP.
const CAP_FLTS: u64 = 0x01d2_008c_222f_0606;
/// Default: QI, IR (intremap defaults on under TCG), PT, IRO = 0xf, MHMV = 0xf.
const ECAP_DEFAULT: u64 = 0x0000_0000_00f0_0f4a;
const ECAP_INTREMAP_OFF: u64 = 0x0000_0000_0000_0f42;
const ECAP_SCALABLE: u64 = 0x0000_4800_80f0_0f4a;
const ECAP_FLTS: u64 = 0x0000_8800_00f0_0f4a;
const ECAP_PASID: u64 = 0x0000_4900_80f0_0f4a;
const ECAP_DEVICE_IOTLB: u64 = 0x0000_0000_00f0_0f4e;

#[test]
fn version_is_1_0() {
    let v = Version::from_register(VER);
    assert_eq!(v, Version { major: 1, minor: 0 });
    assert_eq!(std::format!("{v}"), "1.0");
}

fn assert_common_qemu_cap(c: Capability) {
    assert_eq!(c.nd(), 6);
    assert_eq!(c.domain_ids(), 65536);
    assert!(!c.afl() && !c.rwbf() && !c.plmr() && !c.phmr() && !c.zlr());
    assert_eq!(c.fault_recording_offset(), 0x220);
    assert_eq!(
        c.sllps(),
        SuperPages {
            size_2m: true,
            size_1g: true
        }
    );
    assert!(c.psi());
    assert_eq!(c.nfr(), 0);
    assert_eq!(c.fault_recording_count(), 1);
    assert_eq!(c.mamv(), 18);
    assert!(c.dwd() && c.drd());
    assert!(!c.pi() && !c.fs5lp() && !c.ecmds() && !c.esirtps() && !c.esrtps());
}

#[test]
fn qemu_default_cap() {
    let c = Capability(CAP_DEFAULT);
    assert_common_qemu_cap(c);
    assert!(!c.caching_mode());
    assert_eq!(c.sagaw().bits(), 0b0110);
    assert_eq!(
        c.sagaw().iter().collect::<std::vec::Vec<_>>(),
        [Agaw::Level3, Agaw::Level4]
    );
    assert!(!c.sagaw().contains(Agaw::Level5));
    assert_eq!(c.mgaw(), 48);
    assert!(!c.fs1gp());
    assert_eq!(c.max_agaw(), Ok(Agaw::Level4));
    assert_eq!(c.agaw_for(39), Ok(Agaw::Level3));
    assert_eq!(c.agaw_for(40), Ok(Agaw::Level4));
    assert_eq!(c.agaw_for(32), Ok(Agaw::Level3));
    assert_eq!(
        c.agaw_for(57),
        Err(AgawError::WiderThanMgaw {
            wanted: 57,
            mgaw: 48
        })
    );
}

#[test]
fn qemu_aw39_cap_narrows_sagaw_and_mgaw() {
    let c = Capability(CAP_AW39);
    assert_common_qemu_cap(c);
    assert_eq!(c.sagaw().bits(), 0b0010);
    assert_eq!(
        c.sagaw().iter().collect::<std::vec::Vec<_>>(),
        [Agaw::Level3]
    );
    assert_eq!(c.mgaw(), 39);
    assert_eq!(c.max_agaw(), Ok(Agaw::Level3));
    assert_eq!(
        c.agaw_for(48),
        Err(AgawError::WiderThanMgaw {
            wanted: 48,
            mgaw: 39
        })
    );
}

#[test]
fn qemu_caching_mode_cap() {
    let c = Capability(CAP_CM);
    assert_common_qemu_cap(c);
    assert!(c.caching_mode());
    assert_eq!(c.mgaw(), 48);
    assert_eq!(Capability(CAP_CM ^ (1 << 7)), Capability(CAP_DEFAULT));
}

#[test]
fn qemu_flts_cap_adds_fs1gp() {
    let c = Capability(CAP_FLTS);
    assert_common_qemu_cap(c);
    assert!(c.fs1gp());
    assert!(!c.caching_mode());
}

fn assert_common_qemu_ecap(e: ExtendedCapability) {
    assert!(!e.coherent());
    assert!(e.qi());
    assert!(e.pt());
    assert!(!e.sc() && !e.eim() && !e.nest() && !e.prs() && !e.ers());
    assert_eq!(e.iotlb_register_offset(), 0xf0);
    assert!(!e.mts() && !e.vcs() && !e.slads() && !e.smpwcs() && !e.rps() && !e.pms());
}

#[test]
fn qemu_legacy_ecap() {
    let e = ExtendedCapability(ECAP_DEFAULT);
    assert_common_qemu_ecap(e);
    assert!(e.ir());
    assert_eq!(e.mhmv(), 15);
    assert!(!e.dt() && !e.smts() && !e.slts() && !e.flts() && !e.srs() && !e.pasid());

    let e = ExtendedCapability(ECAP_INTREMAP_OFF);
    assert_common_qemu_ecap(e);
    assert!(!e.ir());
    assert_eq!(e.mhmv(), 0);

    let e = ExtendedCapability(ECAP_DEVICE_IOTLB);
    assert_common_qemu_ecap(e);
    assert!(e.dt());
    assert!(!e.dit() && !e.pds() && !e.nwfs());
}

#[test]
fn qemu_scalable_ecap_has_second_stage() {
    let e = ExtendedCapability(ECAP_SCALABLE);
    assert_common_qemu_ecap(e);
    assert!(e.smts() && e.slts() && e.srs());
    assert!(!e.flts() && !e.pasid());
}

#[test]
fn qemu_flts_ecap_has_first_stage_only() {
    let e = ExtendedCapability(ECAP_FLTS);
    assert_common_qemu_ecap(e);
    assert!(e.smts() && e.flts());
    assert!(!e.slts() && !e.srs() && !e.eafs());
}

#[test]
fn qemu_pasid_ecap_reports_pasid_width() {
    let e = ExtendedCapability(ECAP_PASID);
    assert!(e.smts() && e.slts() && e.pasid());
    assert_eq!(e.pss(), 0);
    assert_eq!(e.pasid_width(), 1);
    // A 20-bit PASID unit reports PSS = 19.
    assert_eq!(ExtendedCapability(19 << 35).pasid_width(), 20);
}

#[test]
fn agaw_encodings_follow_the_spec() {
    assert_eq!(Agaw::Level3.width(), 39);
    assert_eq!(Agaw::Level4.width(), 48);
    assert_eq!(Agaw::Level5.width(), 57);
    assert_eq!(Agaw::Level3.encoding(), 1);
    assert_eq!(Agaw::Level5.encoding(), 3);
    assert_eq!(std::format!("{}", Agaw::Level4), "48-bit (4-level)");
    // A 5-level-only unit with MGAW 57 serves a 39-bit request with 5 levels.
    let c = Capability((0b1000 << 8) | (56 << 16));
    assert_eq!(c.agaw_for(39), Ok(Agaw::Level5));
    // No supported depth at all.
    let c = Capability(47 << 16);
    assert!(c.sagaw().is_empty());
    assert!(matches!(
        c.agaw_for(39),
        Err(AgawError::NoSupportedWidth { wanted: 39, .. })
    ));
}

/// A single-bit field: its bit number and its getter.
type Bit<R> = (u32, fn(R) -> bool);

#[test]
fn every_field_decodes_from_its_own_bits() {
    // Each single-bit getter reads exactly its bit: set all bits but one, the getter for
    // that one is false; set only that one, it is true.
    let cap_bits: [Bit<Capability>; 15] = [
        (3, Capability::afl),
        (4, Capability::rwbf),
        (5, Capability::plmr),
        (6, Capability::phmr),
        (7, Capability::caching_mode),
        (22, Capability::zlr),
        (39, Capability::psi),
        (54, Capability::dwd),
        (55, Capability::drd),
        (56, Capability::fs1gp),
        (59, Capability::pi),
        (60, Capability::fs5lp),
        (61, Capability::ecmds),
        (62, Capability::esirtps),
        (63, Capability::esrtps),
    ];
    for (n, get) in cap_bits {
        assert!(get(Capability(1 << n)), "CAP bit {n}");
        assert!(!get(Capability(!(1 << n))), "CAP bit {n}");
    }
    let ecap_bits: [Bit<ExtendedCapability>; 26] = [
        (0, ExtendedCapability::coherent),
        (1, ExtendedCapability::qi),
        (2, ExtendedCapability::dt),
        (3, ExtendedCapability::ir),
        (4, ExtendedCapability::eim),
        (6, ExtendedCapability::pt),
        (7, ExtendedCapability::sc),
        (25, ExtendedCapability::mts),
        (26, ExtendedCapability::nest),
        (29, ExtendedCapability::prs),
        (30, ExtendedCapability::ers),
        (31, ExtendedCapability::srs),
        (33, ExtendedCapability::nwfs),
        (34, ExtendedCapability::eafs),
        (40, ExtendedCapability::pasid),
        (41, ExtendedCapability::dit),
        (42, ExtendedCapability::pds),
        (43, ExtendedCapability::smts),
        (44, ExtendedCapability::vcs),
        (45, ExtendedCapability::slads),
        (46, ExtendedCapability::slts),
        (47, ExtendedCapability::flts),
        (48, ExtendedCapability::smpwcs),
        (49, ExtendedCapability::rps),
        (51, ExtendedCapability::pms),
        (52, ExtendedCapability::adms),
    ];
    for (n, get) in ecap_bits {
        assert!(get(ExtendedCapability(1 << n)), "ECAP bit {n}");
        assert!(!get(ExtendedCapability(!(1 << n))), "ECAP bit {n}");
    }
    assert_eq!(Capability(0x3ff << 24).fault_recording_offset(), 0x3ff0);
    assert_eq!(Capability(0xff << 40).fault_recording_count(), 256);
    assert_eq!(
        ExtendedCapability(0x3ff << 8).iotlb_register_offset(),
        0x3ff0
    );
    assert_eq!(Capability(u64::MAX).mgaw(), 64);
}

#[test]
fn debug_is_readable() {
    let s = std::format!("{:?}", Capability(CAP_DEFAULT));
    assert!(s.contains("domain_ids: 65536"), "{s}");
    assert!(s.contains("sagaw: {3, 4}"), "{s}");
    assert!(s.contains("fault_recording_offset: 0x220"), "{s}");
    let s = std::format!("{:?}", ExtendedCapability(ECAP_FLTS));
    assert!(s.contains("flts: true") && s.contains("slts: false"), "{s}");
    assert!(s.contains("iotlb_register_offset: 0xf0"), "{s}");
}
