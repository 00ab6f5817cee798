//! Guest vSTEs and guest commands against words worked out by hand from IHI 0070 5.2 (STE) and
//! chapter 4 (commands), on the features of QEMU 10's nested-capable SMMU and variants of it.

use super::*;
use crate::idr::IdRegisters;
use iommu::addr::PhysAddr;

use crate::stream_table::{DefaultSubstream, WalkAttributes};

/// QEMU 10 `virt`: S1P + S2P, 16-bit ASID/VMID, SSIDSIZE 0, no ATS, RIL, terminate-only stalls.
fn qemu() -> Features {
    Features::decode(&IdRegisters {
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    })
}

/// An SMMU with what QEMU lacks: ATS, 8 SubstreamID bits, 2-level CD tables, stalls.
fn rich() -> Features {
    let mut f = qemu();
    f.ats = true;
    f.ssid_bits = 8;
    f.cd_two_level = true;
    f.stall_model = StallModel::StallAndTerminate;
    f
}

const PARENT_IAS: u8 = 40;

fn vste(w0: u64, w1: u64) -> GuestEntry {
    [w0, w1, 0, 0, 0, 0, 0, 0]
}

fn refused(e: GuestEntry, f: &Features) -> &'static str {
    match validate_vste(&e, f, PARENT_IAS) {
        Err(UnitError::GuestEntry(field)) => field,
        other => panic!("{e:x?} gave {other:?}"),
    }
}

/// Word 0 of a valid stage-1 vSTE: V, Config = 0b101 ([3:1] = 0xa), S1ContextPtr.
const S1: u64 = 0xb;

#[test]
fn invalid_abort_and_bypass_vstes() {
    let f = qemu();
    // V = 0: abort, whatever the rest says (the SMMU reads nothing else).
    let junk = [0xffff_fffe, u64::MAX, 1, 2, 3, 4, 5, 6];
    assert_eq!(validate_vste(&junk, &f, PARENT_IAS), Ok(GuestSte::Abort));
    assert_eq!(validate_vste(&[0; 8], &f, PARENT_IAS), Ok(GuestSte::Abort));
    // V = 1, Config = 0b000.
    assert_eq!(
        validate_vste(&vste(1, 0), &f, PARENT_IAS),
        Ok(GuestSte::Abort)
    );
    // V = 1, Config = 0b100 ([3:1] = 0x8).
    assert_eq!(
        validate_vste(&vste(9, 0), &f, PARENT_IAS),
        Ok(GuestSte::Bypass)
    );
    // An abort entry may not carry stage-1 fields; a bypass entry no EATS.
    assert_eq!(refused(vste(1 | 0x8000_1000, 0), &f), "S1ContextPtr");
    assert_eq!(refused(vste(9, 1 << 28), &f), "EATS");
}

#[test]
fn stage1_vste_is_decoded() {
    let f = qemu();
    // S1ContextPtr 0x8000_1040; word 1: S1DSS = 0b10, S1CIR = S1COR = 0b01, S1CSH = 0b11.
    let e = vste(S1 | 0x8000_1040, 0b11_01_01_10);
    let Ok(GuestSte::Stage1 { s1, ats }) = validate_vste(&e, &f, PARENT_IAS) else {
        panic!("refused")
    };
    assert_eq!(ats, Eats::Abort);
    assert_eq!(s1.cd_table, PhysAddr::new(0x8000_1040));
    assert_eq!((s1.cd_max, s1.format), (0, CdTableFormat::Linear));
    assert_eq!(s1.default_substream, DefaultSubstream::Substream0);
    assert_eq!(s1.cd_fetch, WalkAttributes::WRITE_BACK);
    assert!(!s1.stall_disable);
    assert_eq!(s1.vmid, 0);
}

#[test]
fn stage2_and_host_fields_are_refused() {
    let f = qemu();
    // Config 0b110 (stage 2) and 0b111 (nested) are the host's; 0b001..0b011 are reserved.
    assert_eq!(refused(vste(0xd, 0), &f), "Config");
    assert_eq!(refused(vste(0xf, 0), &f), "Config");
    assert_eq!(refused(vste(0x3, 0), &f), "Config");
    // S2VMID (word 2 [15:0]) in a stage-1 entry.
    let mut e = vste(S1 | 0x1000, 0);
    e[2] = 5;
    assert_eq!(refused(e, &f), "S2VMID");
    // S2TTB (word 3 [51:4]), word 4 and word 7.
    for (w, field) in [
        (3, "S2TTB"),
        (4, "STE word 4 (PARTID, PMG, ...)"),
        (7, "STE word 7"),
    ] {
        let mut e = vste(S1 | 0x1000, 0);
        e[w] = 0x1000;
        assert_eq!(refused(e, &f), field);
    }
    // STRW = 0b10 (EL2) [31:30]; SHCFG = 0b01 [45:44]; MemAttr [35:32]; S2FWB [25]; MEV [19].
    assert_eq!(refused(vste(S1 | 0x1000, 2 << 30), &f), "STRW");
    assert_eq!(refused(vste(S1 | 0x1000, 1 << 44), &f), "SHCFG");
    assert_eq!(refused(vste(S1 | 0x1000, 0xf << 32), &f), "MemAttr");
    assert_eq!(refused(vste(S1 | 0x1000, 1 << 25), &f), "S2FWB");
    assert_eq!(
        refused(vste(S1 | 0x1000, 1 << 19), &f),
        "DRE/CONT/DCP/PPAR/MEV"
    );
    // Word 0 [58:52] are reserved.
    assert_eq!(
        refused(vste(S1 | 0x1000 | 1 << 52, 0), &f),
        "STE word 0 reserved bits [58:52]"
    );
}

#[test]
fn stage1_fields_are_checked_against_the_smmu() {
    let (q, r) = (qemu(), rich());
    // S1CDMax = 1 ([63:59]): QEMU has no SubstreamIDs (SSIDSIZE 0).
    let two_cds = vste(S1 | 0x1000 | 1 << 59, 0);
    assert_eq!(refused(two_cds, &q), "S1CDMax");
    assert!(validate_vste(&two_cds, &r, PARENT_IAS).is_ok());
    // S1CDMax = 9 > SSIDSIZE 8.
    assert_eq!(refused(vste(S1 | 0x1000 | 9 << 59, 0), &r), "S1CDMax");
    // S1Fmt = 0b01 (2-level, 4K leaves) needs CD2L; 0b11 is reserved.
    let two_level = vste(S1 | 0x1000 | 0x10 | 7 << 59, 0);
    let mut no_cd2l = r;
    no_cd2l.cd_two_level = false;
    assert_eq!(refused(two_level, &no_cd2l), "S1Fmt");
    assert!(validate_vste(&two_level, &r, PARENT_IAS).is_ok());
    assert_eq!(refused(vste(S1 | 0x1000 | 0x30, 0), &r), "S1Fmt");
    // S1DSS = 0b11 is reserved; S1CSH = 0b01 is reserved.
    assert_eq!(refused(vste(S1 | 0x1000, 0b11), &r), "S1DSS");
    assert_eq!(refused(vste(S1 | 0x1000, 0b01 << 6), &r), "S1CSH");
    // S1STALLD [27] is reserved with QEMU's terminate-only stall model.
    assert_eq!(refused(vste(S1 | 0x1000, 1 << 27), &q), "S1STALLD");
    assert!(validate_vste(&vste(S1 | 0x1000, 1 << 27), &r, PARENT_IAS).is_ok());
    // EATS [29:28] = 0b01 (full ATS) only with IDR0.ATS; 0b10 (split stage) never.
    assert_eq!(refused(vste(S1 | 0x1000, 1 << 28), &q), "EATS");
    assert_eq!(
        validate_vste(&vste(S1 | 0x1000, 1 << 28), &r, PARENT_IAS).map(|g| match g {
            GuestSte::Stage1 { ats, .. } => ats,
            _ => Eats::SplitStage,
        }),
        Ok(Eats::Translate)
    );
    assert_eq!(refused(vste(S1 | 0x1000, 2 << 28), &r), "EATS");
}

#[test]
fn cd_table_must_lie_in_the_parents_ipa_space() {
    let f = rich();
    let top = 1u64 << PARENT_IAS;
    // One CD in the last 64 bytes: inside. One byte further: outside.
    assert!(validate_vste(&vste(S1 | (top - 64), 0), &f, PARENT_IAS).is_ok());
    assert_eq!(refused(vste(S1 | top, 0), &f), "S1ContextPtr");
    // Two linear CDs (S1CDMax = 1) starting 64 bytes below the top: the second is outside.
    assert_eq!(
        refused(vste(S1 | (top - 64) | 1 << 59, 0), &f),
        "S1ContextPtr"
    );
    // A 2-level table (S1Fmt 0b01) of 2^8 CDs has a 4-entry (32-byte) level-1 table.
    assert!(validate_vste(&vste(S1 | (top - 64) | 0x10 | 8 << 59, 0), &f, PARENT_IAS).is_ok());
}

// --- Commands -------------------------------------------------------------------------------

const HOST_VMID: u16 = 9;
/// The guest's devices: virtual stream id 0x10 is physical stream 8, with ATS on; 0x14 is
/// physical 0xa, without.
fn devices(vsid: u32) -> Option<DeviceId> {
    match vsid {
        0x10 => Some(DeviceId(8)),
        0x14 => Some(DeviceId(0xa)),
        _ => None,
    }
}

fn ats_enabled(d: DeviceId) -> bool {
    d == DeviceId(8)
}

fn check(raw: RawCommand, f: &Features) -> Result<Option<RawCommand>, UnitError> {
    match check_command(raw, HOST_VMID, f, &devices, &ats_enabled)? {
        HostCommand::Consumed => Ok(None),
        HostCommand::Issue(c) => match c.encode() {
            Ok(w) => Ok(Some(w)),
            Err(e) => panic!("{c:?}: {e}"),
        },
    }
}

fn refusal(raw: RawCommand, f: &Features) -> &'static str {
    match check(raw, f) {
        Err(UnitError::GuestCommand(why)) => why,
        other => panic!("{raw:x?} gave {other:?}"),
    }
}

#[test]
fn stage1_tlbis_get_the_vmid_of_the_viommu() {
    let f = qemu();
    let vmid = |v: u16| u64::from(v) << 32;
    // CMD_TLBI_NH_ALL (0x10), VMID [47:32]: the guest's 7 becomes 9.
    assert_eq!(
        check([0x10 | vmid(7), 0], &f),
        Ok(Some([0x10 | vmid(9), 0]))
    );
    // CMD_TLBI_NH_ASID (0x11), ASID [63:48] = 3 kept.
    assert_eq!(
        check([0x11 | vmid(0) | 3 << 48, 0], &f),
        Ok(Some([0x11 | vmid(9) | 3 << 48, 0]))
    );
    // CMD_TLBI_NH_VA (0x12): address 0x1234_5000 with Leaf (dword 1 bit 0).
    assert_eq!(
        check([0x12 | vmid(1) | 3 << 48, 0x1234_5001], &f),
        Ok(Some([0x12 | vmid(9) | 3 << 48, 0x1234_5001]))
    );
    // CMD_TLBI_NH_VA as a range: NUM = 3 [16:12], SCALE = 0, TG = 4K (0b01 at [11:10]).
    assert_eq!(
        check([0x12 | 3 << 12 | 3 << 48, 0x8000_0000 | 1 << 10], &f),
        Ok(Some([
            0x12 | 3 << 12 | vmid(9) | 3 << 48,
            0x8000_0000 | 1 << 10
        ]))
    );
    // CMD_TLBI_NH_VAA (0x13).
    assert_eq!(
        check([0x13 | vmid(0xffff), 0x4000_0000], &f),
        Ok(Some([0x13 | vmid(9), 0x4000_0000]))
    );
    // CMD_TLBI_NSNH_ALL (0x30) is the guest's whole VM: CMD_TLBI_NH_ALL with its VMID.
    assert_eq!(check([0x30, 0], &f), Ok(Some([0x10 | vmid(9), 0])));
    // CMD_SYNC (0x46) is consumed, with or without an MSI (CS = SIG_IRQ [13:12], MSIAddress).
    assert_eq!(check([0x46, 0], &f), Ok(None));
    assert_eq!(check([0x46 | 1 << 12, 0x900_0040], &f), Ok(None));
}

#[test]
fn tlbi_limits_of_the_smmu() {
    let mut f = qemu();
    f.range_invalidation = false;
    assert_eq!(
        refusal([0x12, 0x8000_0000 | 1 << 10], &f),
        "range invalidation without IDR3.RIL"
    );
    f.range_invalidation = true;
    f.granules.size_16k = false;
    // TG = 0b10 (16K) at dword 1 [11:10] on an SMMU without 16K pages.
    assert_eq!(
        refusal([0x13, 0x8000_0000 | 2 << 10], &f),
        "range TG is not a granule of the SMMU"
    );
    f.asid_bits = 8;
    assert_eq!(
        refusal([0x11 | 0x100 << 48, 0], &f),
        "ASID wider than IDR0.ASID16 allows"
    );
    assert!(check([0x11 | 0xff << 48, 0], &f).is_ok());
}

#[test]
fn cd_and_atc_invalidations_name_physical_streams() {
    let (q, r) = (qemu(), rich());
    let sid = |s: u64| s << 32;
    // CMD_CFGI_CD (0x05): SID [63:32], SSID [31:12], Leaf dword 1 bit 0.
    assert_eq!(
        check([0x05 | sid(0x10), 1], &q),
        Ok(Some([0x05 | sid(8), 1]))
    );
    // CMD_CFGI_CD_ALL (0x06).
    assert_eq!(
        check([0x06 | sid(0x10), 0], &q),
        Ok(Some([0x06 | sid(8), 0]))
    );
    // A stream that is not the guest's.
    assert_eq!(refusal([0x05 | sid(8), 1], &q), "stream id not the guest's");
    assert_eq!(
        refusal([0x06 | sid(0x11), 0], &q),
        "stream id not the guest's"
    );
    // SSID 1 where SSIDSIZE is 0; fine with 8 bits.
    assert_eq!(
        refusal([0x05 | sid(0x10) | 1 << 12, 1], &q),
        "SubstreamID beyond IDR1.SSIDSIZE"
    );
    assert_eq!(
        check([0x05 | sid(0x10) | 1 << 12, 1], &r),
        Ok(Some([0x05 | sid(8) | 1 << 12, 1]))
    );
    // CMD_ATC_INV (0x40): Size [5:0] = 0 (4 KiB) at 0x10_0000; only where the SMMU has ATS.
    assert_eq!(
        refusal([0x40 | sid(0x10), 0x10_0000], &q),
        "CMD_ATC_INV without ATS"
    );
    assert_eq!(
        check([0x40 | sid(0x10), 0x10_0000], &r),
        Ok(Some([0x40 | sid(8), 0x10_0000]))
    );
    assert_eq!(
        refusal([0x40 | sid(0x12), 0x10_0000], &r),
        "stream id not the guest's"
    );
    assert_eq!(
        refusal([0x40 | sid(0x14), 0x10_0000], &r),
        "CMD_ATC_INV for a device without ATS enabled"
    );
}

#[test]
fn host_commands_are_refused() {
    let f = rich();
    let sid = 0x10u64 << 32;
    for (raw, why) in [
        // CMD_TLBI_S2_IPA (0x2a), CMD_TLBI_S12_VMALL (0x28).
        ([0x2a, 0x1000], "stage-2 TLB maintenance is the host's"),
        ([0x28 | 9 << 32, 0], "stage-2 TLB maintenance is the host's"),
        // CMD_TLBI_EL2_ALL/ASID/VA/VAA (0x20..0x23).
        ([0x20, 0], "EL2 TLB maintenance is the host's"),
        ([0x21, 0], "EL2 TLB maintenance is the host's"),
        ([0x22, 0x1000], "EL2 TLB maintenance is the host's"),
        ([0x23, 0x1000], "EL2 TLB maintenance is the host's"),
        // CMD_TLBI_EL3_ALL (0x18) / EL3_VA (0x1a).
        ([0x18, 0], "EL3 TLB maintenance is the host's"),
        ([0x1a, 0], "EL3 TLB maintenance is the host's"),
        // CMD_CFGI_STE (0x03), CMD_CFGI_STE_RANGE / CFGI_ALL (0x04, Range 31).
        (
            [0x03 | sid, 1],
            "STE invalidation is the host's (vSTEs change through new_nested)",
        ),
        (
            [0x04, 31],
            "STE invalidation is the host's (vSTEs change through new_nested)",
        ),
        // CMD_PREFETCH_CONFIG (0x01), CMD_PREFETCH_ADDR (0x02).
        ([0x01 | sid, 0], "prefetch is the host's"),
        ([0x02 | sid, 0], "prefetch is the host's"),
        // CMD_PRI_RESP (0x41), CMD_RESUME (0x44), CMD_STALL_TERM (0x45).
        ([0x41 | sid, 0], "PRI and stall answers are the host's"),
        ([0x44 | sid, 0], "PRI and stall answers are the host's"),
        ([0x45 | sid, 0], "stall answers are the host's"),
        // CMD_CFGI_VMS_PIDM (0x07): not for guests.
        ([0x07, 0], "command not supported for guests"),
        // Not an opcode.
        ([0x7f, 0], "unknown opcode"),
        // SSec (dword 0 bit 10) in a CMD_CFGI_CD: reserved on the Non-secure queue.
        ([0x05 | sid | 1 << 10, 0], "reserved bits set"),
        // Dword 1 bit 1 of CMD_TLBI_NH_ALL.
        ([0x10, 2], "reserved bits set"),
    ] {
        assert_eq!(refusal(raw, &f), why, "{raw:x?}");
    }
}

/// Guest commands as a shadowing vIOMMU follows them, from hand-encoded dwords (4.4, 4.7).
#[test]
fn guest_commands_name_what_a_shadow_follows() {
    // CMD_TLBI_NH_VA (0x12), ASID 7 at [63:48], address 0x1234_5000, Leaf.
    let va = [0x12 | 7 << 48, 0x1234_5000 | 1];
    assert_eq!(
        guest_flush(va),
        Ok(GuestFlush::Range {
            tag: 7,
            iova: 0x1234_5000,
            len: 4096
        })
    );
    // The range form: NUM 3 [16:12], SCALE 1 [24:20], TG 4K (0b01) [11:10]: (3+1) << 1 pages.
    let range = [0x12 | 7 << 48 | 3 << 12 | 1 << 20, 0x1234_0000 | 1 << 10];
    assert_eq!(
        guest_flush(range),
        Ok(GuestFlush::Range {
            tag: 7,
            iova: 0x1234_0000,
            len: 8 * 4096
        })
    );
    assert_eq!(guest_flush([0x11 | 9 << 48, 0]), Ok(GuestFlush::Tag(9))); // NH_ASID
    assert_eq!(guest_flush([0x10, 0]), Ok(GuestFlush::All)); // NH_ALL
    assert_eq!(guest_flush([0x46, 0]), Ok(GuestFlush::Wait)); // SYNC
    assert_eq!(
        guest_flush([0x03 | 5 << 32, 1]), // CFGI_STE
        Err("configuration invalidation (the VMM follows STE and CD changes itself)")
    );
    assert_eq!(
        guest_flush([0x2a, 0]),
        Err("command a shadow does not follow")
    ); // TLBI_S12_VMALL
    assert_eq!(guest_flush([0xff, 0]), Err("unknown opcode"));
}
