//! STE encodings worked out by hand from IHI 0070 5.2, the update planner (no valid mixed entry
//! is ever visible), the table geometry and the tables themselves in host memory.

extern crate std;

use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::entry::WordWrite;
use crate::idr::{Granules, IdRegisters};

fn words(ste: StreamTableEntry) -> EntryWords {
    match ste.encode() {
        Ok(w) => w,
        Err(e) => panic!("{ste:?} did not encode: {e}"),
    }
}

fn s2_4k() -> Stage2 {
    match Stage2::new(
        7,
        PhysAddr::new(0x4010_0000),
        40,
        Granule::Size4K,
        1,
        OutputAddressSize::Bits44,
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn abort_and_bypass() {
    // V = 1, Config = 0b000.
    assert_eq!(words(StreamTableEntry::abort()), [1, 0, 0, 0, 0, 0, 0, 0]);
    // V = 1, Config = 0b100 at [3:1] = 0x8.
    assert_eq!(
        words(StreamTableEntry::bypass()),
        [0x9, 0, 0, 0, 0, 0, 0, 0]
    );
    // SHCFG = 0b01 (use incoming) at word 1 [45:44].
    assert_eq!(
        words(StreamTableEntry::bypass().with_incoming_shareability(true)),
        [0x9, 0x1000_0000_0000, 0, 0, 0, 0, 0, 0]
    );
    // Abort ignores every optional field: nothing but V and Config.
    assert_eq!(
        words(
            StreamTableEntry::abort()
                .with_incoming_shareability(true)
                .with_ats(Eats::Translate)
        ),
        [1, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn stage1_single_cd() {
    // Word 0: V | Config 0b101 << 1 (0xa) | S1ContextPtr 0x4000_1000 | S1Fmt 0 | S1CDMax 0.
    // Word 1: S1DSS SSID0 = 0b10 | S1CIR WBRA 1 << 2 | S1COR 1 << 4 | S1CSH inner 3 << 6 = 0xd6.
    assert_eq!(
        words(StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(
            0x4000_1000
        )))),
        [0x4000_100b, 0xd6, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn stage1_with_substreams() {
    let s1 = Stage1 {
        cd_table: PhysAddr::new(0x8000_0000),
        format: CdTableFormat::TwoLevel64K,
        cd_max: 10,
        default_substream: DefaultSubstream::Bypass,
        cd_fetch: WalkAttributes::WRITE_BACK,
        stall_disable: false,
        vmid: 5,
    };
    // Word 0: S1CDMax 10 << 59 | ptr | S1Fmt 0b10 << 4 (0x20) | Config 0xa | V.
    // Word 1: EATS translate 1 << 28 | STRW EL2 0b10 << 30 | 0xc0 | 0x10 | 0x4 | S1DSS bypass 1.
    // Word 2: S2VMID 5 (tags stage-1 TLB entries).
    let ste = StreamTableEntry::stage1(s1)
        .with_ats(Eats::Translate)
        .with_stream_world(StreamWorld::El2);
    assert_eq!(
        words(ste),
        [0x5000_0000_8000_002b, 0x9000_00d5, 5, 0, 0, 0, 0, 0]
    );
}

#[test]
fn stage2() {
    // Word 0: V | Config 0b110 << 1 = 0xd.
    // Word 2: VMID 7 | S2T0SZ 24 << 32 | S2SL0 1 << 38 | S2IR0 1 << 40 | S2OR0 1 << 42 |
    //   S2SH0 3 << 44 | S2TG 4K 0 | S2PS 44-bit 4 << 48 | S2AA64 1 << 51 | S2R 1 << 58.
    // Word 3: S2TTB.
    let s2 = s2_4k();
    assert_eq!((s2.t0sz, s2.sl0), (24, 1));
    assert_eq!(
        words(StreamTableEntry::stage2(s2)),
        [0xd, 0, 0x040c_3558_0000_0007, 0x4010_0000, 0, 0, 0, 0]
    );
}

#[test]
fn nested() {
    let mut s2 = match Stage2::new(
        0x22,
        PhysAddr::new(0x9_0000),
        48,
        Granule::Size64K,
        1,
        OutputAddressSize::Bits48,
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    s2.access_flag_fault_disable = true;
    s2.protected_table_walk = true;
    let mut s1 = Stage1::single_cd(PhysAddr::new(0x1_0040));
    s1.vmid = 0x99; // ignored: nested uses stage 2's VMID
                    // Word 0: Config 0b111 << 1 = 0xe | V | ptr. Word 1: the stage-1 fetch attributes 0xd6.
                    // Word 2: VMID 0x22 | T0SZ 16 << 32 | SL0 (64K, level 1) 0b10 << 38 | IR0/OR0 WBRA |
                    //   SH0 inner | S2TG 64K 0b01 << 46 | S2PS 48-bit 5 << 48 | AA64 | AFFD 1 << 53 |
                    //   PTW 1 << 54 | R 1 << 58.
    assert_eq!(
        words(StreamTableEntry::nested(s1, s2)),
        [0x1_004f, 0xd6, 0x046d_7590_0000_0022, 0x9_0000, 0, 0, 0, 0]
    );
}

#[test]
fn sl0_encodings() {
    assert_eq!(s2_sl0(Granule::Size4K, 0), Some(2));
    assert_eq!(s2_sl0(Granule::Size4K, 2), Some(0));
    assert_eq!(s2_sl0(Granule::Size4K, 3), None);
    assert_eq!(s2_sl0(Granule::Size16K, 3), Some(0));
    assert_eq!(s2_sl0(Granule::Size64K, 1), Some(2));
    assert_eq!(s2_sl0(Granule::Size64K, 0), None);
}

#[test]
fn encode_refuses_bad_fields() {
    let mut s1 = Stage1::single_cd(PhysAddr::new(0x1020));
    assert!(matches!(
        StreamTableEntry::stage1(s1).encode(),
        Err(EntryError::Misaligned {
            field: "S1ContextPtr",
            ..
        })
    ));
    s1.cd_table = PhysAddr::new(1 << 52);
    assert!(StreamTableEntry::stage1(s1).encode().is_err());
    s1.cd_table = PhysAddr::new(0x1000);
    s1.cd_max = 21;
    assert!(StreamTableEntry::stage1(s1).encode().is_err());
    let mut s2 = s2_4k();
    s2.table = PhysAddr::new(0x1008);
    assert!(StreamTableEntry::stage2(s2).encode().is_err());
    s2.table = PhysAddr::new(0x1000);
    s2.sl0 = 3;
    assert!(StreamTableEntry::stage2(s2).encode().is_err());
    assert!(Stage2::new(
        1,
        PhysAddr::new(0),
        60,
        Granule::Size4K,
        0,
        OutputAddressSize::Bits48
    )
    .is_err());
    assert!(Stage2::new(
        1,
        PhysAddr::new(0),
        48,
        Granule::Size16K,
        0,
        OutputAddressSize::Bits48
    )
    .is_err());
}

fn qemu_features(idr0: u32) -> Features {
    Features::decode(&IdRegisters {
        idr: [idr0, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    })
}

#[test]
fn feature_checks() {
    let nested = qemu_features(0x0d44_101b);
    let s1_only = qemu_features(0x0d44_101a);
    let s2_only = qemu_features(0x0d44_1019);
    let s1 = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x1000)));
    let s2 = StreamTableEntry::stage2(s2_4k());
    assert_eq!(s1.check_features(&nested), Ok(()));
    assert_eq!(s1.check_features(&s1_only), Ok(()));
    assert_eq!(
        s1.check_features(&s2_only),
        Err(EntryError::Unsupported("stage 1"))
    );
    assert_eq!(
        s2.check_features(&s1_only),
        Err(EntryError::Unsupported("stage 2"))
    );
    assert_eq!(s2.check_features(&s2_only), Ok(()));
    // QEMU: no substreams (SSIDSIZE 0), no ATS, terminate-only stalls.
    let mut many = Stage1::single_cd(PhysAddr::new(0x1000));
    many.cd_max = 1;
    assert!(StreamTableEntry::stage1(many)
        .check_features(&nested)
        .is_err());
    assert!(s1
        .with_ats(Eats::Translate)
        .check_features(&nested)
        .is_err());
    let mut stalld = Stage1::single_cd(PhysAddr::new(0x1000));
    stalld.stall_disable = true;
    assert!(StreamTableEntry::stage1(stalld)
        .check_features(&nested)
        .is_err());
    // S2PS above the OAS (44 bits on QEMU).
    let mut big = s2_4k();
    big.output_size = OutputAddressSize::Bits48;
    assert!(StreamTableEntry::stage2(big)
        .check_features(&nested)
        .is_err());
    let mut no16k = nested;
    no16k.granules = Granules {
        size_4k: true,
        size_16k: false,
        size_64k: true,
    };
    let mut s2_16k = s2_4k();
    s2_16k.granule = Granule::Size16K;
    assert!(StreamTableEntry::stage2(s2_16k)
        .check_features(&no16k)
        .is_err());
}

/// A generator of every kind of entry with varied fields.
fn arb_entry() -> impl Strategy<Value = StreamTableEntry> {
    let addr = (1u64..1 << 20).prop_map(|a| PhysAddr::new(a << 12));
    let s1 = (addr.clone(), 0u16..4, any::<bool>()).prop_map(|(cd, vmid, two_level)| {
        let mut s = Stage1::single_cd(cd);
        s.vmid = vmid;
        if two_level {
            s.format = CdTableFormat::TwoLevel4K;
            s.cd_max = 7;
        }
        s
    });
    let s2 = (addr, 0u16..4, 0usize..3, 1u8..3).prop_map(|(ttb, vmid, g, level)| {
        let granule = [Granule::Size4K, Granule::Size16K, Granule::Size64K][g];
        match Stage2::new(vmid, ttb, 40, granule, level, OutputAddressSize::Bits44) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    });
    let config = prop_oneof![
        Just(SteConfig::Abort),
        Just(SteConfig::Bypass),
        s1.clone().prop_map(SteConfig::Stage1),
        s2.clone().prop_map(SteConfig::Stage2),
        (s1, s2).prop_map(|(a, b)| SteConfig::Nested(a, b)),
    ];
    (config, any::<bool>(), any::<bool>()).prop_map(|(config, ats, sh)| StreamTableEntry {
        config,
        ats: if ats { Eats::Translate } else { Eats::Abort },
        stream_world: StreamWorld::NsEl1,
        incoming_shareability: sh,
    })
}

/// What the SMMU acts on when it reads `e`: `None` for an invalid entry, else the used bits and
/// their values.
fn meaning(
    e: &EntryWords,
    used: fn(&EntryWords) -> EntryWords,
) -> Option<(EntryWords, EntryWords)> {
    if e[0] & 1 == 0 && used(e)[0] == 1 {
        return None;
    }
    let u = used(e);
    let mut v = *e;
    for i in 0..ENTRY_WORDS {
        v[i] &= u[i];
    }
    Some((u, v))
}

/// Applies `plan` to `current` and checks, for every stretch between two invalidations, every
/// entry the SMMU could assemble by reading each word at a different moment of the stretch:
/// each is invalid, the old entry or the new one. Also checks the plan ends on `target` with a
/// sync, and returns the number of syncs.
pub(crate) fn check_plan(
    current: &EntryWords,
    target: &EntryWords,
    plan: &UpdatePlan,
    used: fn(&EntryWords) -> EntryWords,
    valid: fn(&EntryWords) -> bool,
) -> usize {
    let old = if valid(current) {
        meaning(current, used)
    } else {
        None
    };
    let new = if valid(target) {
        meaning(target, used)
    } else {
        None
    };
    let mut state = *current;
    let mut stretch: Vec<EntryWords> = std::vec![state];
    let mut syncs = 0;
    let check = |stretch: &[EntryWords]| {
        // Values each word takes during the stretch.
        let mut choices: Vec<Vec<u64>> = std::vec![Vec::new(); ENTRY_WORDS];
        for s in stretch {
            for i in 0..ENTRY_WORDS {
                if !choices[i].contains(&s[i]) {
                    choices[i].push(s[i]);
                }
            }
        }
        let combos: usize = choices.iter().map(Vec::len).product();
        for mut n in 0..combos {
            let mut e = [0u64; ENTRY_WORDS];
            for i in 0..ENTRY_WORDS {
                e[i] = choices[i][n % choices[i].len()];
                n /= choices[i].len();
            }
            if !valid(&e) {
                continue;
            }
            let seen = meaning(&e, used);
            assert!(
                seen == old || seen == new,
                "the SMMU could see a mixed valid entry {e:x?}\n old {current:x?}\n new {target:x?}\n plan {plan:x?}"
            );
        }
    };
    for w in plan.writes() {
        state[w.word] = w.value;
        stretch.push(state);
        if w.sync_after {
            check(&stretch);
            stretch = std::vec![state];
            syncs += 1;
        }
    }
    assert_eq!(&state, target, "the plan does not end on the target");
    if let Some(last) = plan.writes().last() {
        assert!(last.sync_after, "the last store is not followed by a sync");
    }
    syncs
}

fn ste_valid(e: &EntryWords) -> bool {
    e[0] & 1 != 0
}

#[test]
fn encoded_entries_set_only_used_bits() {
    let mut runner = proptest::test_runner::TestRunner::default();
    let result = runner.run(&arb_entry(), |ste| {
        let w = ste
            .encode()
            .map_err(|e| TestCaseError::fail(std::format!("{e}")))?;
        let u = ste_used_bits(&w);
        for i in 0..ENTRY_WORDS {
            prop_assert_eq!(w[i] & !u[i], 0, "word {} of {:?}", i, ste);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

proptest! {
    #[test]
    fn ste_updates_never_expose_a_mixed_entry(a in arb_entry(), b in arb_entry()) {
        let (Ok(old), Ok(new)) = (a.encode(), b.encode()) else {
            return Err(TestCaseError::fail("encode"));
        };
        let plan = plan_ste_update(&old, &new);
        check_plan(&old, &new, &plan, ste_used_bits, ste_valid);
        // From an invalid (all-zero) entry too.
        let plan = plan_ste_update(&[0; 8], &new);
        check_plan(&[0; 8], &new, &plan, ste_used_bits, ste_valid);
    }
}

#[test]
fn update_kinds() {
    let abort = words(StreamTableEntry::abort());
    let bypass = words(StreamTableEntry::bypass());
    let s1a = words(StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(
        0x1000,
    ))));
    let s1b = words(StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(
        0x2000,
    ))));
    let s2a = words(StreamTableEntry::stage2(s2_4k()));
    let mut other = s2_4k();
    other.vmid = 8;
    other.table = PhysAddr::new(0x5000);
    let s2b = words(StreamTableEntry::stage2(other));

    let plan = plan_ste_update(&abort, &abort);
    assert_eq!(plan.kind(), UpdateKind::Unchanged);
    assert!(plan.writes().is_empty());

    // Abort -> stage 1: words 1.. are unused by abort, so one store of word 0 switches.
    let plan = plan_ste_update(&abort, &s1a);
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 0 });
    assert_eq!(
        plan.writes(),
        [
            WordWrite {
                word: 1,
                value: 0xd6,
                sync_after: true
            },
            WordWrite {
                word: 0,
                value: 0x100b,
                sync_after: true
            },
        ]
    );
    // Stage 1 -> stage 1 with another CD: only word 0 changes.
    let plan = plan_ste_update(&s1a, &s1b);
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 0 });
    assert_eq!(
        plan.writes(),
        [WordWrite {
            word: 0,
            value: 0x200b,
            sync_after: true
        }]
    );
    // Stage 1 -> abort: switch word 0, then clear the now unused word 1.
    let plan = plan_ste_update(&s1a, &abort);
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 0 });
    assert_eq!(
        plan.writes(),
        [
            WordWrite {
                word: 0,
                value: 1,
                sync_after: true
            },
            WordWrite {
                word: 1,
                value: 0,
                sync_after: true
            }
        ]
    );
    // Stage 2 -> stage 2 with another VMID and table: words 2 and 3 both change: breaking.
    let plan = plan_ste_update(&s2a, &s2b);
    assert_eq!(plan.kind(), UpdateKind::Breaking);
    assert_eq!(
        plan.writes()[0],
        WordWrite {
            word: 0,
            value: 0,
            sync_after: true
        }
    );
    assert_eq!(plan.writes().last().map(|w| w.word), Some(0));
    assert_eq!(check_plan(&s2a, &s2b, &plan, ste_used_bits, ste_valid), 3);
    // Bypass -> stage 2: stage 2 words are unused by bypass.
    let plan = plan_ste_update(&bypass, &s2a);
    assert_eq!(plan.kind(), UpdateKind::Hitless { critical: 0 });
    // Stage 1 -> stage 2: word 0 changes (config, CD pointer) and word 2 (VMID 0 -> 7)...
    let plan = plan_ste_update(&s1a, &s2a);
    assert_eq!(plan.kind(), UpdateKind::Breaking);
}

#[test]
fn geometry() {
    let linear = StreamTableGeometry::linear(8).unwrap_or_else(|e| panic!("{e}"));
    // LOG2SIZE 8, FMT linear.
    assert_eq!(linear.base_cfg(), 0x8);
    assert_eq!(linear.locate(255), Ok(SteLocation::Linear { index: 255 }));
    assert_eq!(
        linear.locate(256),
        Err(StreamTableError::StreamIdOutOfRange {
            sid: 256,
            limit: 256
        })
    );
    // LOG2SIZE 16 | SPLIT 8 << 6 | FMT 2-level 1 << 16.
    let two = StreamTableGeometry::two_level(16, 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(two.base_cfg(), 0x1_0210);
    assert_eq!(
        two.locate(0x0108),
        Ok(SteLocation::TwoLevel {
            l1_index: 1,
            l2_index: 8
        })
    );
    assert_eq!(two.level2_entries(), 256);
    assert!(StreamTableGeometry::two_level(16, 7).is_err());
    assert!(StreamTableGeometry::two_level(5, 6).is_err());
    assert!(StreamTableGeometry::linear(25).is_err());
    // QEMU: 16 SID bits, 2-level supported -> 2-level, split 8.
    let f = qemu_features(0x0d44_101b);
    assert_eq!(
        StreamTableGeometry::for_features(&f),
        Ok(StreamTableGeometry::TwoLevel {
            sid_bits: 16,
            split: 8
        })
    );
    assert_eq!(
        StreamTableGeometry::linear(17).map(|g| g.check_features(&f)),
        Ok(Err(StreamTableError::Geometry(
            "more StreamID bits than IDR1.SIDSIZE"
        )))
    );
    let mut linear_only = f;
    linear_only.stream_table = StreamTableLevels::Linear;
    assert!(two.check_features(&linear_only).is_err());
    assert_eq!(
        StreamTableGeometry::for_features(&linear_only),
        Ok(StreamTableGeometry::Linear { log2_entries: 16 })
    );
}

#[test]
fn l1_descriptor() {
    // Span = SPLIT + 1 = 9 at [4:0], L2Ptr at [51:6].
    let d = L1Descriptor::new(PhysAddr::new(0x8_0000), 8).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.encode(), 0x8_0009);
    assert_eq!(L1Descriptor::decode(0x8_0009), Some(d));
    assert_eq!(L1Descriptor::decode(0x8_0000), None);
    // A 256-STE level-2 table is 16 KiB and must be aligned to it.
    assert!(L1Descriptor::new(PhysAddr::new(0x1000), 8).is_err());
}

#[cfg(not(loom))]
mod in_memory {
    use super::*;
    use iommu::hal::host::HostHal;

    #[test]
    fn linear_table_starts_all_abort_and_installs() {
        let hal = HostHal::new();
        let geometry = StreamTableGeometry::linear(6).unwrap_or_else(|e| panic!("{e}"));
        let mut table = StreamTable::new(&hal, geometry, true).unwrap_or_else(|e| panic!("{e}"));
        for sid in 0..64 {
            assert_eq!(table.entry(sid), Ok([1, 0, 0, 0, 0, 0, 0, 0]));
        }
        assert!(matches!(
            table.entry(64),
            Err(StreamTableError::StreamIdOutOfRange { .. })
        ));
        // STRTAB_BASE: address | RA (bit 62).
        assert_eq!(
            table.base_register() & !(1 << 62),
            table.table.base().as_u64()
        );
        assert_eq!(table.base_register() >> 62, 1);
        let mut issued = Vec::new();
        let ste = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x4000)));
        let kind = table.install(8, &ste, |c| {
            issued.push(c);
            Ok(())
        });
        assert_eq!(kind, Ok(UpdateKind::Hitless { critical: 0 }));
        assert_eq!(table.entry(8).ok(), ste.encode().ok());
        assert_eq!(
            issued,
            [
                Command::CfgiSte { sid: 8, leaf: true },
                Command::CfgiSte { sid: 8, leaf: true }
            ]
        );
        assert_eq!(table.entry(9), Ok([1, 0, 0, 0, 0, 0, 0, 0]));
        // SAFETY: no SMMU ever saw this table.
        unsafe { table.free() };
        assert_eq!(hal.live_frames(), 0);
    }

    #[test]
    fn two_level_table_creates_level2_on_demand() {
        let hal = HostHal::new();
        let geometry = StreamTableGeometry::two_level(16, 8).unwrap_or_else(|e| panic!("{e}"));
        let mut table = StreamTable::new(&hal, geometry, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.base_cfg_register(), 0x1_0210);
        assert_eq!(table.entry(8), Err(StreamTableError::NoLevel2(8)));
        assert_eq!(table.ensure_level2(8), Ok(true));
        assert_eq!(table.ensure_level2(200), Ok(false), "same level-2 table");
        assert_eq!(hal.live_frames(), 2);
        // The level-1 descriptor points at a 16 KiB table with Span 9.
        let desc = L1Descriptor::decode(table.table.load(table.table.base(), 0))
            .unwrap_or_else(|| panic!("no L1"));
        assert_eq!(desc.span, 9);
        assert_eq!(desc.l2.as_u64() % 0x4000, 0);
        assert_eq!(table.entry(255), Ok([1, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(table.entry(256), Err(StreamTableError::NoLevel2(256)));

        // Installing in an absent level-2 table creates it with the STE in place: only the
        // descriptor is invalidated.
        let mut issued = Vec::new();
        let ste = StreamTableEntry::stage2(s2_4k());
        let kind = table.install(0x0301, &ste, |c| {
            issued.push(c);
            Ok(())
        });
        assert_eq!(kind, Ok(UpdateKind::NewLevel2));
        assert_eq!(
            issued,
            [Command::CfgiSte {
                sid: 0x301,
                leaf: false
            }]
        );
        assert_eq!(table.entry(0x301).ok(), ste.encode().ok());
        assert_eq!(table.entry(0x300), Ok([1, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(hal.live_frames(), 3);
        // Non-coherent: every store was cleaned.
        assert!(hal.cleans() > 0);
        // Invalidation failures are reported.
        let err = table.install(0x0302, &StreamTableEntry::bypass(), |_| {
            Err(CmdqError::Timeout(iommu::poll::Timeout {
                waiting_for: "CMD_SYNC completion",
            }))
        });
        assert!(matches!(
            err,
            Err(StreamTableError::Invalidation(CmdqError::Timeout(_)))
        ));
        assert!(matches!(
            table.install(0x1_0000, &ste, |_| Ok(())),
            Err(StreamTableError::StreamIdOutOfRange { .. })
        ));
        // SAFETY: no SMMU ever saw this table.
        unsafe { table.free() };
        assert_eq!(hal.live_frames(), 0);
    }

    /// A stream in a new level-2 table costs one CMD_CFGI_STE (Leaf = 0), whatever its
    /// neighbours hold: the table is complete before the SMMU can reach it. A later stream of
    /// the same table goes through the update plan (its STE may be cached by then).
    #[test]
    fn new_level2_table_costs_one_invalidation() {
        let hal = HostHal::new();
        let geometry = StreamTableGeometry::two_level(16, 8).unwrap_or_else(|e| panic!("{e}"));
        for coherent in [true, false] {
            let mut table =
                StreamTable::new(&hal, geometry, coherent).unwrap_or_else(|e| panic!("{e}"));
            let blocking = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x4000)));
            let targets = [
                StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x8000))),
                StreamTableEntry::stage2(s2_4k()),
                StreamTableEntry::nested(Stage1::single_cd(PhysAddr::new(0x8000)), s2_4k()),
                StreamTableEntry::bypass(),
                StreamTableEntry::abort(),
            ];
            for (i, ste) in targets.iter().enumerate() {
                let sid = 0x308 + ((i as u32) << 8);
                let mut issued = Vec::new();
                let kind = table.install_with_neighbours(sid, ste, &blocking, |c| {
                    issued.push(c);
                    Ok(())
                });
                assert_eq!(kind, Ok(UpdateKind::NewLevel2), "{ste:?}");
                assert_eq!(issued, [Command::CfgiSte { sid, leaf: false }], "{ste:?}");
                let first = sid & !0xff;
                for other in first..first + 256 {
                    let want = if other == sid { ste } else { &blocking };
                    assert_eq!(table.entry(other).ok(), want.encode().ok(), "{other:#x}");
                }
            }
            // The same table again: an ordinary live update, blocking -> another CD (hitless).
            let mut issued = Vec::new();
            let kind = table.install_with_neighbours(0x309, &targets[0], &blocking, |c| {
                issued.push(c);
                Ok(())
            });
            assert_eq!(kind, Ok(UpdateKind::Hitless { critical: 0 }));
            assert!(issued.iter().all(|c| *c
                == Command::CfgiSte {
                    sid: 0x309,
                    leaf: true
                }));
            assert!(!issued.is_empty());
            // SAFETY: no SMMU ever saw this table.
            unsafe { table.free() };
        }
        assert_eq!(hal.live_frames(), 0);
    }

    #[test]
    fn out_of_memory_is_an_error() {
        let hal = HostHal::with_budget(1);
        let geometry = StreamTableGeometry::two_level(16, 8).unwrap_or_else(|e| panic!("{e}"));
        let mut table = StreamTable::new(&hal, geometry, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(table.ensure_level2(0), Err(StreamTableError::OutOfMemory));
        // SAFETY: no SMMU ever saw this table.
        unsafe { table.free() };
        let none = HostHal::with_budget(0);
        assert!(matches!(
            StreamTable::new(&none, geometry, true),
            Err(StreamTableError::OutOfMemory)
        ));
    }
}

proptest! {
    /// `decode` is the inverse of `encode`: every encoded entry decodes to one that encodes to
    /// the same words (a nested entry's stage-1 VMID is not in the words and decodes as 0).
    #[test]
    fn decode_inverts_encode(e in arb_entry()) {
        let w = words(e);
        let d = StreamTableEntry::decode(&w);
        prop_assert!(matches!(d, Ok(Some(_))), "{:?} from {:x?}", d, w);
        if let Ok(Some(d)) = d {
            prop_assert_eq!(d.encode(), Ok(w));
        }
    }
}

#[test]
fn decode_of_hand_built_words() {
    // V = 0: no entry, whatever else is set.
    assert_eq!(
        StreamTableEntry::decode(&[0xffff_fff0, 0, 0, 0, 0, 0, 0, 0]),
        Ok(None)
    );
    // Stage 1: V, Config = 0b101 ([3:1] = 0xa), S1ContextPtr 0x8000_1040; word 1: S1DSS =
    // 0b10, S1CIR = S1COR = 0b01 (0x14), S1CSH = 0b11 (0xc0).
    let w = [0x8000_1040 | 0xb, 0xd6, 0, 0, 0, 0, 0, 0];
    let Ok(Some(e)) = StreamTableEntry::decode(&w) else {
        panic!("stage-1 words refused")
    };
    let SteConfig::Stage1(s1) = e.config else {
        panic!("{e:?}")
    };
    assert_eq!(s1.cd_table, PhysAddr::new(0x8000_1040));
    assert_eq!(s1.default_substream, DefaultSubstream::Substream0);
    assert_eq!(s1.cd_fetch, WalkAttributes::WRITE_BACK);
    assert_eq!(
        (s1.cd_max, s1.format, s1.vmid),
        (0, CdTableFormat::Linear, 0)
    );
    // Reserved Config values 0b001..0b011.
    for c in 1u64..4 {
        assert_eq!(
            StreamTableEntry::decode(&[1 | c << 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(EntryError::Field {
                field: "Config",
                value: c
            })
        );
    }
    // Every refusal names the field: MemAttr (word 1 [35:32]) on a bypass entry, S2TTB on a
    // stage-1 entry, stage-1 fields on an abort entry, word 5.
    let named = |w: EntryWords| match StreamTableEntry::decode(&w) {
        Err(EntryError::Field { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(named([0x9, 1 << 32, 0, 0, 0, 0, 0, 0]), "MemAttr");
    assert_eq!(named([0xb, 0, 0, 0x1000, 0, 0, 0, 0]), "S2TTB");
    assert_eq!(named([0x1, 0x2, 0, 0, 0, 0, 0, 0]), "S1DSS");
    assert_eq!(named([0x1 | 0x40, 0, 0, 0, 0, 0, 0, 0]), "S1ContextPtr");
    assert_eq!(named([0xb, 0, 0, 0, 0, 1, 0, 0]), "STE word 5 (VMSPtr)");
    assert_eq!(named([0xb | 0x30, 0, 0, 0, 0, 0, 0, 0]), "S1Fmt");
    assert_eq!(named([0xb, 0x3, 0, 0, 0, 0, 0, 0]), "S1DSS");
    assert_eq!(named([0xb, 0x40, 0, 0, 0, 0, 0, 0]), "S1CSH");
    assert_eq!(named([0xb, 0x3 << 28, 0, 0, 0, 0, 0, 0]), "EATS");
    assert_eq!(named([0xb, 0x1 << 30, 0, 0, 0, 0, 0, 0]), "STRW");
    assert_eq!(named([0xb, 0x2 << 44, 0, 0, 0, 0, 0, 0]), "SHCFG");
    // S2AA64 = 0 in a stage-2 entry (Config 0b110 = 0xc): AArch32 tables.
    assert_eq!(named([0xd, 0, 24 << 32, 0x1000, 0, 0, 0, 0]), "S2AA64");
}
