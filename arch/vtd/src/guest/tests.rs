//! Host tests of the guest checks: accepted guest PASID entries, refusals by field name, and guest descriptors translated or refused.

use super::*;

/// QEMU 10.0's CAP (aw-bits 48: MAMV 18, DRD, DWD, no FS5LP) and scalable-mode ECAP (SRS,
/// no DT, no EAFS, no MTS, no NEST).
const CAP: Capability = Capability(0x00d2_008c_222f_0606);
const ECAP: ExtendedCapability = ExtendedCapability(0x4800_80f0_0f4a);

fn limits() -> NestLimits {
    NestLimits {
        cap: CAP,
        ecap: ECAP,
        guest_address_bits: 39,
    }
}

/// A guest's first-stage entry: w0 = P | AW 2 << 2 | PGTT 001 << 6 = 0x49; w1 = DID 0x42;
/// w2 = FSPTPTR 0x1234_5000 | WPE (bit 132 = w2 bit 4).
const GOOD: [u64; 8] = [0x49, 0x42, 0x1234_5010, 0, 0, 0, 0, 0];

fn with(word: usize, value: u64) -> [u64; 8] {
    let mut e = GOOD;
    e[word] = value;
    e
}

#[test]
fn a_guest_first_stage_entry_is_accepted_with_its_fields() {
    assert_eq!(
        validate_guest_pasid_entry(&GOOD, &limits()),
        Ok(GuestConfig::FirstStage(GuestFirstStage {
            guest_domain: Did::new(0x42),
            root: PhysAddr::new(0x1234_5000),
            paging: FirstStagePaging::FourLevel,
            supervisor_requests: false,
            write_protect: true,
            extended_accessed: false,
            memory_type: None,
        }))
    );
    // SRE (w2 bit 0) with ECAP.SRS (bit 31, set in QEMU's scalable ECAP).
    let sre = validate_guest_pasid_entry(&with(2, 0x1234_5011), &limits());
    assert!(matches!(sre, Ok(GuestConfig::FirstStage(f)) if f.supervisor_requests));
    // 5-level (FSPM 01, w2 bits 3:2) where CAP.FS5LP (bit 60) is set.
    let l = NestLimits {
        cap: Capability(CAP.0 | 1 << 60),
        ..limits()
    };
    let five = validate_guest_pasid_entry(&with(2, 0x1234_5004), &l);
    assert!(
        matches!(five, Ok(GuestConfig::FirstStage(f)) if f.paging == FirstStagePaging::FiveLevel)
    );
    // The last page below 2^39.
    assert!(validate_guest_pasid_entry(&with(2, 0x7f_ffff_f000), &limits()).is_ok());
    // Guest pass-through (PGTT 100 = 0x100): the parent alone.
    assert_eq!(
        validate_guest_pasid_entry(&[0x109, 0x7, 0, 0, 0, 0, 0, 0], &limits()),
        Ok(GuestConfig::ParentOnly {
            guest_domain: Did::new(7)
        })
    );
}

#[test]
fn guest_entry_refusals_name_the_field() {
    let l = limits();
    let refused = |e: [u64; 8]| validate_guest_pasid_entry(&e, &l).unwrap_err();
    assert_eq!(refused(with(0, 0x449)), "reserved bits 11:10");
    assert_eq!(refused(with(1, 0x42 | 1 << 16)), "reserved bits 86:80");
    assert_eq!(refused(with(2, 0x1234_5110)), "reserved bits 139:136");
    assert_eq!(refused(with(5, 1)), "reserved bits 511:192");
    assert!(refused(with(0, 0x48)).starts_with("P "));
    // PGTT 010, 011, 101 (reserved).
    assert_eq!(
        refused(with(0, 0x89)),
        "PGTT (second-stage translation is the host's)"
    );
    assert_eq!(
        refused(with(0, 0xc9)),
        "PGTT (nested translation is the host's)"
    );
    assert_eq!(refused(with(0, 0x149)), "PGTT (reserved encoding)");
    // AW 4 (bits 4:2 = 100).
    assert_eq!(refused(with(0, 0x51)), "AW (reserved encoding)");
    assert_eq!(
        refused(with(0, 0x4b)),
        "FPD (fault reporting is the host's)"
    );
    assert_eq!(
        refused(with(0, 0x69)),
        "SSEE (second-stage controls are the host's)"
    );
    assert_eq!(
        refused(with(0, 0x249)),
        "SSADE (second-stage controls are the host's)"
    );
    assert_eq!(
        refused(with(0, 0x5000 | 0x49)),
        "SSPTPTR (the second stage is the nest parent)"
    );
    assert_eq!(
        refused(with(1, 0x42 | 1 << 23)),
        "PWSNP (page-walk snooping is the host's)"
    );
    assert_eq!(
        refused(with(1, 0x42 | 1 << 24)),
        "PGSNP (snoop control is the host's)"
    );
    assert_eq!(
        refused(with(2, 0x1234_5004)),
        "FSPM (5-level paging needs CAP.FS5LP)"
    );
    assert_eq!(refused(with(2, 0x1234_5008)), "FSPM (reserved encoding)");
    assert_eq!(
        refused(with(2, 0x80_0000_0000)),
        "FSPTPTR (beyond the nest parent's guest-physical width)"
    );
    let no_srs = NestLimits {
        ecap: ExtendedCapability(ECAP.0 & !(1 << 31)),
        ..l
    };
    assert_eq!(
        validate_guest_pasid_entry(&with(2, 0x1234_5001), &no_srs),
        Err("SRE (supervisor requests need ECAP.SRS)")
    );
    assert_eq!(
        refused(with(2, 0x1234_5002)),
        "ERE (execute requests are not offered)"
    );
    assert_eq!(
        refused(with(2, 0x1234_5020)),
        "bits 134:133 (NXE/SMEP are not offered)"
    );
    assert_eq!(
        refused(with(2, 0x1234_5080)),
        "EAFE (extended-accessed flags need ECAP.EAFS)"
    );
    // EMT (93:91 = w1 bits 29:27) without EMTE; PAT (w1 bits 63:32) without ECAP.MTS.
    assert_eq!(refused(with(1, 0x42 | 3 << 27)), "EMT (set without EMTE)");
    assert_eq!(
        refused(with(1, 0x42 | 0x0007_0406 << 32)),
        "CD/EMTE/EMT/PWT/PCD/PAT (memory types need ECAP.MTS)"
    );
    let mts = NestLimits {
        ecap: ExtendedCapability(ECAP.0 | 1 << 25),
        ..l
    };
    assert!(validate_guest_pasid_entry(&with(1, 0x42 | 0x0007_0406 << 32), &mts).is_ok());
    // A pass-through entry with a first-stage pointer.
    assert_eq!(
        refused([0x109, 7, 0x5000, 0, 0, 0, 0, 0]),
        "first-stage fields (set in a pass-through entry)"
    );
}

/// The guest's domain id 0x42 is host domain id 0x107; its device 00:02.0 (0x10) is the
/// host's 00:03.0 (0x18), 00:02.1 (0x11) is 00:03.1 (0x19), both with ATS enabled, and
/// 00:02.2 (0x12) is 00:03.2 (0x1a), without.
struct Names;

impl GuestNames for Names {
    fn host_domain(&self, guest: Did) -> Option<Did> {
        (guest.raw() == 0x42).then_some(Did::new(0x107))
    }

    fn device(&self, guest: SourceId) -> Option<SourceId> {
        match guest.raw() {
            0x10 => Some(SourceId::from_raw(0x18)),
            0x11 => Some(SourceId::from_raw(0x19)),
            0x12 => Some(SourceId::from_raw(0x1a)),
            _ => None,
        }
    }

    fn ats_enabled(&self, host: SourceId) -> bool {
        matches!(host.raw(), 0x18 | 0x19)
    }
}

fn host(dt: bool, dit: bool) -> HostLimits {
    let mut ecap = ECAP.0;
    if dt {
        ecap |= 1 << 2;
    }
    if dit {
        ecap |= 1 << 41;
    }
    HostLimits::for_unit(CAP, ExtendedCapability(ecap))
}

fn issued(raw: [u64; 4], limits: &HostLimits) -> Result<[u64; 4], &'static str> {
    match translate_guest_descriptor(&raw, limits, &Names)? {
        GuestAction::Issue(d) => d.encode().map_err(|_| "encode"),
        GuestAction::Consumed => Err("consumed"),
    }
}

#[test]
fn guest_descriptors_are_translated_to_host_tags_and_devices() {
    let l = host(false, false);
    // PASID-based IOTLB, PASID-selective (G 10): type 6 | 0x20 | DID 0x42 << 16 | PASID 5
    // << 32 → the same with DID 0x107.
    assert_eq!(
        issued([0x0000_0005_0042_0026, 0, 0, 0], &l),
        Ok([0x0000_0005_0107_0026, 0, 0, 0])
    );
    // Page-selective (G 11), 2 MiB (AM 9) at 0x40_0000 with IH: the address word is kept.
    assert_eq!(
        issued([0x0000_0005_0042_0036, 0x40_0049, 0, 0], &l),
        Ok([0x0000_0005_0107_0036, 0x40_0049, 0, 0])
    );
    // IOTLB, domain-selective, guest asks for no drain: the host's DR/DW (QEMU has both,
    // bits 7 and 6) are used: 2 | 0x20 | 0xc0 | 0x107 << 16.
    assert_eq!(
        issued([0x0042_0022, 0, 0, 0], &l),
        Ok([0x0107_00e2, 0, 0, 0])
    );
    // IOTLB page-selective, one page at 0x7000.
    assert_eq!(
        issued([0x0042_0032, 0x7000, 0, 0], &l),
        Ok([0x0107_00f2, 0x7000, 0, 0])
    );
    // PASID-cache, domain-selective (G 00) and PASID-selective (G 01).
    assert_eq!(
        issued([0x0042_0007, 0, 0, 0], &l),
        Ok([0x0107_0007, 0, 0, 0])
    );
    assert_eq!(
        issued([0x0000_0009_0042_0017, 0, 0, 0], &l),
        Ok([0x0000_0009_0107_0017, 0, 0, 0])
    );
    // Device-TLB with ECAP.DT: SID 0x10 (47:32) becomes 0x18; MIP 2 (20:16) kept.
    let dt = host(true, false);
    assert_eq!(
        issued([0x0000_0010_0002_0003, 0x5000, 0, 0], &dt),
        Ok([0x0000_0018_0002_0003, 0x5000, 0, 0])
    );
    // PASID-based device-TLB: SID in 31:16, PASID 7, one page at 0x3000.
    assert_eq!(
        issued([0x0000_0007_0010_0008, 0x3000, 0, 0], &dt),
        Ok([0x0000_0007_0018_0008, 0x3000, 0, 0])
    );
    // PFSID 0x11 (bits 15:12 = 1, 63:52 = 1) → 0x19 (9 in 15:12, 1 in 63:52), with DIT.
    let dit = host(true, true);
    assert_eq!(
        issued([0x0010_0010_0000_1003, 0, 0, 0], &dit),
        Ok([0x0010_0018_0000_9003, 0, 0, 0])
    );
    // Waits are consumed, whatever their action (here SW with an address the host must
    // never write).
    assert_eq!(
        translate_guest_descriptor(&[0x1_0000_0025, 0xfee0_0000, 0, 0], &l, &Names),
        Ok(GuestAction::Consumed)
    );
    assert_eq!(
        translate_guest_descriptor(&[0x15, 0, 0, 0], &l, &Names),
        Ok(GuestAction::Consumed)
    );
}

#[test]
fn guest_descriptors_outside_the_guest_are_refused_by_name() {
    let l = host(false, false);
    let dt = host(true, false);
    let refused = |raw: [u64; 4], l: &HostLimits| issued(raw, l).unwrap_err();
    assert_eq!(
        refused([0x0043_0022, 0, 0, 0], &l),
        "DID (not one of the guest's domain ids)"
    );
    assert_eq!(
        refused([0x0000_0005_0001_0026, 0, 0, 0], &l),
        "DID (not one of the guest's domain ids)"
    );
    assert_eq!(
        refused([0x0001_0007, 0, 0, 0], &l),
        "DID (not one of the guest's domain ids)"
    );
    assert_eq!(
        refused([0x12, 0, 0, 0], &l),
        "global IOTLB invalidation (host-wide)"
    );
    assert_eq!(
        refused([0x37, 0, 0, 0], &l),
        "global PASID-cache invalidation (host-wide)"
    );
    assert_eq!(
        refused([0x11, 0, 0, 0], &l),
        "context-cache invalidation (context entries are the host's)"
    );
    assert_eq!(
        refused([0x0042_0031, 0, 0, 0], &l),
        "context-cache invalidation (context entries are the host's)"
    );
    assert_eq!(
        refused([0x4, 0, 0, 0], &l),
        "interrupt-entry-cache invalidation (interrupt remapping is the host's)"
    );
    assert_eq!(
        refused([0x9, 0, 0, 0], &l),
        "descriptor type (page-request or reserved)"
    );
    // AM 19 above QEMU's MAMV 18 (a 2 GiB block at 0).
    assert_eq!(
        refused([0x0000_0005_0042_0036, 0x13, 0, 0], &l),
        "AM (above CAP.MAMV)"
    );
    assert_eq!(
        refused([0x0000_0005_0042_0036, 0x8004, 0, 0], &l),
        "ADDR (not aligned to its address mask)"
    );
    // A device that is not the guest's, with and without ECAP.DT: named as foreign first.
    assert_eq!(
        refused([0x0000_0020_0000_0003, 0x5000, 0, 0], &dt),
        "SID (not one of the guest's devices)"
    );
    assert_eq!(
        refused([0x0000_0020_0000_0003, 0x5000, 0, 0], &l),
        "SID (not one of the guest's devices)"
    );
    assert_eq!(
        refused([0x0000_0007_0020_0008, 0x3000, 0, 0], &dt),
        "SID (not one of the guest's devices)"
    );
    assert_eq!(
        refused([0x0000_0010_0000_0003, 0x5000, 0, 0], &l),
        "device-TLB invalidation (the unit has no ECAP.DT)"
    );
    assert_eq!(
        refused([0x0010_0010_0000_1003, 0, 0, 0], &dt),
        "PFSID (needs ECAP.DIT)"
    );
    // The guest's own device, but ATS is not enabled on it: it caches nothing to invalidate,
    // with or without a PASID.
    for ats_off in [
        [0x0000_0012_0000_0003, 0x5000, 0, 0],
        [0x0000_0007_0012_0008, 0x3000, 0, 0],
    ] {
        assert_eq!(
            refused(ats_off, &dt),
            "device-TLB invalidation (the device does not have ATS enabled)"
        );
    }
    assert_eq!(
        refused([0x0020_0010_0000_0003, 0, 0, 0], &host(true, true)),
        "PFSID (not one of the guest's devices)"
    );
    // Reserved: the upper half, wait PD.
    assert_eq!(refused([0x0042_0022, 0, 1, 0], &l), "bits 255:128");
    assert_eq!(
        translate_guest_descriptor(&[0x85, 0, 0, 0], &l, &Names),
        Err("wait PD (page-request drain)")
    );
}

/// Guest descriptors as a shadowing vIOMMU follows them, from hand-encoded words (6.5.2).
#[test]
fn guest_descriptors_name_what_a_shadow_follows() {
    // IOTLB (type 2), page-selective (G = 11 at [5:4]), DID 0x42 at [31:16]; AM 1: two pages.
    let page = [0x2 | 3 << 4 | 0x42 << 16, 0xab0_0000 | 1, 0, 0];
    assert_eq!(
        guest_flush(&page),
        Ok(GuestFlush::Range {
            tag: 0x42,
            iova: 0xab0_0000,
            len: 8192
        })
    );
    assert_eq!(
        guest_flush(&[0x2 | 2 << 4 | 0x42 << 16, 0, 0, 0]),
        Ok(GuestFlush::Tag(0x42))
    );
    // AM 52 at address 0: the whole 64-bit space, the domain's every page (found by the
    // vtd_guest fuzz target: no length says 2^64).
    assert_eq!(
        guest_flush(&[0x2 | 3 << 4 | 0x42 << 16, 52, 0, 0]),
        Ok(GuestFlush::Tag(0x42))
    );
    assert_eq!(guest_flush(&[0x2 | 1 << 4, 0, 0, 0]), Ok(GuestFlush::All));
    // PASID-based IOTLB (type 6), G = 11, DID 0x42, PASID 1 at [51:32], one page.
    let piotlb = [0x6 | 3 << 4 | 0x42 << 16 | 1 << 32, 0x5000, 0, 0];
    assert_eq!(
        guest_flush(&piotlb),
        Ok(GuestFlush::Range {
            tag: 0x42,
            iova: 0x5000,
            len: 4096
        })
    );
    assert_eq!(
        guest_flush(&[0x5 | 1 << 5, 0x1000, 0, 0]),
        Ok(GuestFlush::Wait)
    );
    assert_eq!(
        guest_flush(&[0x1 | 1 << 4, 0, 0, 0]),
        Err("context/PASID-cache invalidation (the VMM follows entry changes itself)")
    );
    assert_eq!(
        guest_flush(&[0x3 | 8 << 32, 0, 0, 0]),
        Err("device-TLB invalidation (a shadowed device has no ATS)")
    );
}
