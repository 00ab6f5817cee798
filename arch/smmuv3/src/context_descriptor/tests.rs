//! CD encodings worked out by hand from IHI 0070 5.4, CD update plans, CD table geometry and
//! tables in host memory.

extern crate std;

use proptest::prelude::*;

use super::*;
use crate::attributes::Cacheability;
use crate::idr::IdRegisters;
use crate::stream_table::tests::check_plan;

const MAIR: u64 = 0x0000_0000_0044_ff04;

fn cd(asid: u16, ttb0: u64) -> ContextDescriptor {
    ContextDescriptor::new(
        asid,
        PhysAddr::new(ttb0),
        48,
        Granule::Size4K,
        OutputAddressSize::Bits44,
        MAIR,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn words(cd: &ContextDescriptor) -> EntryWords {
    cd.encode().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn default_cd_encoding() {
    // Word 0: T0SZ 16 | TG0 4K 0 | IR0 WBWA 1 << 8 | OR0 1 << 10 | SH0 inner 3 << 12 |
    //   EPD1 1 << 30 | V 1 << 31 | IPS 44-bit 4 << 32 | AA64 1 << 41 | R 1 << 45 | A 1 << 46 |
    //   ASET 1 << 47 | ASID 1 << 48.
    // Word 1: TTB0. Word 3: MAIR.
    assert_eq!(
        words(&cd(1, 0x4020_0000)),
        [0x0001_e204_c000_3510, 0x4020_0000, 0, MAIR, 0, 0, 0, 0]
    );
}

#[test]
fn cd_fields() {
    let mut c = ContextDescriptor::new(
        0xffff,
        PhysAddr::new(0xf_ffff_ffff_fff0),
        39,
        Granule::Size64K,
        OutputAddressSize::Bits48,
        0,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    c.walk = WalkAttributes::NON_CACHEABLE;
    c.epd0 = true;
    c.access_flag_fault_disable = true;
    c.wxn = true;
    c.uwxn = true;
    c.top_byte_ignore = true;
    c.hw_access_flag = true;
    c.hw_dirty = true;
    c.stall = true;
    c.record_faults = false;
    c.abort = false;
    c.private_asid_set = false;
    c.hierarchical_attributes_disabled = true;
    c.nscfg0 = true;
    // Word 0: T0SZ 25 (0x19) | TG0 64K 0b01 << 6 (0x40) | IR0/OR0 NC 0 | SH0 outer 2 << 12
    //   (0x2000) | EPD0 1 << 14 (0x4000) | EPD1 | V (0xc000_0000) | IPS 48-bit 5 << 32 |
    //   AFFD 1 << 35 | WXN 1 << 36 | UWXN 1 << 37 | TBI0 1 << 38 | AA64 1 << 41 | HD 1 << 42 |
    //   HA 1 << 43 | S 1 << 44 | ASID 0xffff << 48.
    // Word 1: TTB0 [51:4] | HAD0 1 << 1 | NSCFG0 1 << 0.
    assert_eq!(
        words(&c),
        [0xffff_1e7d_c000_6059, 0xf_ffff_ffff_fff3, 0, 0, 0, 0, 0, 0]
    );
    c.walk.inner = Cacheability::WriteThrough;
    assert_eq!(words(&c)[0] & 0x300, 0x200);
}

#[test]
fn cd_refuses_bad_fields() {
    assert!(ContextDescriptor::new(
        1,
        PhysAddr::new(0),
        15,
        Granule::Size4K,
        OutputAddressSize::Bits44,
        0
    )
    .is_err());
    let mut c = cd(1, 0x1008);
    assert!(matches!(
        c.encode(),
        Err(EntryError::Misaligned { field: "TTB0", .. })
    ));
    c.ttb0 = PhysAddr::new(1 << 52);
    assert!(c.encode().is_err());
    c.ttb0 = PhysAddr::new(0x1000);
    c.t0sz = 49;
    assert!(c.encode().is_err());
}

fn qemu() -> Features {
    Features::decode(&IdRegisters {
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    })
}

#[test]
fn qemu_checks() {
    let f = qemu();
    assert_eq!(cd(1, 0x1000).check_features(&f), Ok(()));
    let mut c = cd(1, 0x1000);
    c.hw_access_flag = true;
    assert!(c.check_features(&f).is_err(), "QEMU has no HTTU");
    let mut c = cd(1, 0x1000);
    c.t0sz = 40;
    assert!(c.check_features(&f).is_err(), "QEMU requires T0SZ <= 39");
    let mut c = cd(1, 0x1000);
    c.abort = false;
    assert!(
        c.check_features(&f).is_err(),
        "TERM_MODEL = 1 requires A = 1"
    );
    let mut c = cd(1, 0x1000);
    c.stall = true;
    assert!(c.check_features(&f).is_err(), "terminate-only stall model");
    let mut c = cd(1, 0x1000);
    c.ips = OutputAddressSize::Bits48;
    assert!(c.check_features(&f).is_err(), "IPS above the 44-bit OAS");
    let mut s2_only = f;
    s2_only.stages = crate::idr::Stages::Stage2;
    assert!(cd(1, 0x1000).check_features(&s2_only).is_err());
}

fn cd_valid(e: &EntryWords) -> bool {
    e[0] & 1 << 31 != 0
}

#[test]
fn cd_update_kinds() {
    let a = words(&cd(1, 0x1000));
    let plan = plan_cd_update(&INVALID_CD, &a);
    // Invalid -> valid: TTB0 and MAIR first, then word 0 with V.
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 0 });
    assert_eq!(
        plan.writes().last().map(|w| (w.word, w.value)),
        Some((0, a[0]))
    );
    check_plan(&INVALID_CD, &a, &plan, cd_used_bits, cd_valid);
    // Only the MAIR changes: one store.
    let mut c = cd(1, 0x1000);
    c.mair = 0xff;
    let b = words(&c);
    let plan = plan_cd_update(&a, &b);
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 3 });
    assert_eq!(plan.writes().len(), 1);
    // New ASID and table: words 0 and 1: breaking.
    let d = words(&cd(2, 0x2000));
    let plan = plan_cd_update(&a, &d);
    assert_eq!(plan.kind(), UpdateKind::Breaking);
    check_plan(&a, &d, &plan, cd_used_bits, cd_valid);
    // Valid -> invalid: clear V first.
    let plan = plan_cd_update(&a, &INVALID_CD);
    assert_eq!(
        plan.writes()[0],
        crate::entry::WordWrite {
            word: 0,
            value: 0,
            sync_after: true
        }
    );
    check_plan(&a, &INVALID_CD, &plan, cd_used_bits, cd_valid);
}

proptest! {
    #[test]
    fn cd_updates_never_expose_a_mixed_entry(
        a in (0u16..3, 1u64..4, any::<bool>(), 0u64..2),
        b in (0u16..3, 1u64..4, any::<bool>(), 0u64..2),
    ) {
        let make = |(asid, ttb, epd0, mair): (u16, u64, bool, u64)| {
            let mut c = cd(asid, ttb << 12);
            c.epd0 = epd0;
            c.mair = mair;
            words(&c)
        };
        let (old, new) = (make(a), make(b));
        check_plan(&old, &new, &plan_cd_update(&old, &new), cd_used_bits, cd_valid);
        check_plan(&INVALID_CD, &new, &plan_cd_update(&INVALID_CD, &new), cd_used_bits, cd_valid);
        check_plan(&old, &INVALID_CD, &plan_cd_update(&old, &INVALID_CD), cd_used_bits, cd_valid);
    }
}

#[test]
fn encoded_cds_set_only_used_bits() {
    let mut c = cd(3, 0x3000);
    for epd0 in [false, true] {
        c.epd0 = epd0;
        let w = words(&c);
        let u = cd_used_bits(&w);
        for i in 0..ENTRY_WORDS {
            // With EPD0 the TTB0 fields are unused but may stay set: the planner clears them
            // only when the target says so, which is harmless.
            if !epd0 {
                assert_eq!(w[i] & !u[i], 0, "word {i}");
            }
        }
    }
}

#[test]
fn geometry() {
    assert_eq!(CdTableGeometry::SINGLE.log2_cds(), 0);
    assert_eq!(CdTableGeometry::SINGLE.format(), CdTableFormat::Linear);
    assert_eq!(CdTableGeometry::SINGLE.ssid_limit(), 1);
    assert!(CdTableGeometry::two_level(5, CdTableFormat::TwoLevel4K).is_err());
    assert!(CdTableGeometry::two_level(12, CdTableFormat::Linear).is_err());
    assert!(CdTableGeometry::linear(21).is_err());
    // 2-level 64K: 16 bits of SSID -> 64 level-1 descriptors; SSID 0x0401 -> L1 1, index 1.
    let g = CdTableGeometry::two_level(16, CdTableFormat::TwoLevel64K)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.locate(0x0401), Ok((Some(1), 1)));
    assert_eq!(g.base_log2_bytes(), 9);
    // 4K leaves: SSID[5:0] indexes the level-2 table.
    let g =
        CdTableGeometry::two_level(8, CdTableFormat::TwoLevel4K).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.locate(0x41), Ok((Some(1), 1)));
    assert!(matches!(
        g.locate(256),
        Err(CdTableError::SsidOutOfRange { .. })
    ));
    // QEMU has no substreams: only the single CD fits.
    let f = qemu();
    assert_eq!(
        CdTableGeometry::for_ssid_bits(0, &f),
        Ok(CdTableGeometry::SINGLE)
    );
    assert!(CdTableGeometry::for_ssid_bits(1, &f).is_err());
    let mut big = f;
    big.ssid_bits = 20;
    big.cd_two_level = true;
    assert_eq!(
        CdTableGeometry::for_ssid_bits(10, &big),
        Ok(CdTableGeometry::Linear { log2_cds: 10 })
    );
    assert_eq!(
        CdTableGeometry::for_ssid_bits(20, &big),
        Ok(CdTableGeometry::TwoLevel {
            log2_cds: 20,
            leaf: CdTableFormat::TwoLevel64K
        })
    );
    big.cd_two_level = false;
    assert_eq!(
        CdTableGeometry::for_ssid_bits(12, &big),
        Ok(CdTableGeometry::Linear { log2_cds: 12 })
    );
}

#[test]
fn l1_cd_descriptor() {
    // V [0] | L2Ptr [51:12].
    assert_eq!(l1cd(PhysAddr::new(0x1234_5000)), 0x1234_5001);
    assert_eq!(l1cd_decode(0x1234_5001), Some(PhysAddr::new(0x1234_5000)));
    assert_eq!(l1cd_decode(0x1234_5000), None);
}

#[cfg(not(loom))]
mod in_memory {
    use super::*;
    use iommu::hal::host::HostHal;
    use std::vec::Vec;

    #[test]
    fn single_cd_table() {
        let hal = HostHal::new();
        let mut table =
            CdTable::new(&hal, CdTableGeometry::SINGLE, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.entry(0), Ok(INVALID_CD));
        assert!(matches!(
            table.entry(1),
            Err(CdTableError::SsidOutOfRange { .. })
        ));
        let s1 = table.stage1();
        assert_eq!((s1.cd_max, s1.format), (0, CdTableFormat::Linear));
        assert_eq!(s1.cd_table, table.table.base());
        let mut calls = Vec::new();
        let c = cd(5, 0x4000);
        let kind = table.install(0, Some(&c), |ssid, leaf| {
            calls.push((ssid, leaf));
            Ok(())
        });
        assert_eq!(kind, Ok(UpdateKind::Hitless { critical: 0 }));
        assert_eq!(table.entry(0), Ok(words(&c)));
        assert_eq!(calls, [(0, true), (0, true)]);
        assert_eq!(
            table.install(0, None, |_, _| Ok(())),
            Ok(UpdateKind::Hitless { critical: 0 })
        );
        assert_eq!(table.entry(0), Ok(INVALID_CD));
        // SAFETY: no SMMU saw it.
        unsafe { table.free() };
        assert_eq!(hal.live_frames(), 0);
    }

    #[test]
    fn two_level_cd_table_with_many_substreams() {
        let hal = HostHal::new();
        for leaf in [CdTableFormat::TwoLevel4K, CdTableFormat::TwoLevel64K] {
            let g = CdTableGeometry::two_level(12, leaf).unwrap_or_else(|e| panic!("{e}"));
            let mut table = CdTable::new(&hal, g, false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(table.stage1().cd_max, 12);
            assert_eq!(table.stage1().format, leaf);
            assert_eq!(table.entry(7), Err(CdTableError::NoLevel2(7)));
            // Clearing an absent CD allocates nothing.
            assert_eq!(
                table.install(7, None, |_, _| Ok(())),
                Ok(UpdateKind::Unchanged)
            );
            assert_eq!(hal.live_frames(), 1);
            let mut calls = Vec::new();
            for ssid in [1u32, 63, 64, 1023, 1024, 4095] {
                let c = cd(ssid as u16, u64::from(ssid + 1) << 12);
                table
                    .install(ssid, Some(&c), |s, leaf| {
                        calls.push((s, leaf));
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            for ssid in [1u32, 63, 64, 1023, 1024, 4095] {
                assert_eq!(
                    table.entry(ssid),
                    Ok(words(&cd(ssid as u16, u64::from(ssid + 1) << 12)))
                );
            }
            // One leaf = 64 CDs (4K) or 1024 (64K): new leaves get a non-leaf invalidation.
            let leaves = calls.iter().filter(|(_, leaf)| !leaf).count();
            let expected = if leaf == CdTableFormat::TwoLevel4K {
                5
            } else {
                3
            };
            assert_eq!(leaves, expected);
            // A CD in a new leaf is written before the leaf is reachable: that one non-leaf
            // invalidation is all it costs. The others are live (hitless) updates, two steps.
            assert_eq!(calls.len(), expected + 2 * (6 - expected));
            assert_eq!(hal.live_frames(), 1 + expected);
            // SAFETY: no SMMU saw it.
            unsafe { table.free() };
            assert_eq!(hal.live_frames(), 0);
        }
    }
}
