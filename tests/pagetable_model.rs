//! Property test of the page-table engine against a model: random map / unmap / translate
//! sequences over every format and page-size mix. Every result and every error must match the
//! model, the leaf sizes must be the ones the placement rule gives, the HAL must hold exactly one
//! frame per table the model says exists, and unmap-all followed by destroy must return every
//! frame.
#![cfg(not(loom))]

mod model;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::hal::Hal;
use iommu::pagetable::*;
use model::Model;
use proptest::prelude::*;

/// One generated operation, interpreted against a format's geometry by `Space::concretize`.
#[derive(Clone, Debug)]
struct RawOp {
    kind: u8,
    unit: u8,
    start: u32,
    len: u8,
    phys_mode: u8,
    prot: u8,
    misalign: u8,
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(
            |(kind, unit, start, len, phys_mode, prot, misalign)| RawOp {
                kind,
                unit,
                start,
                len,
                phys_mode,
                prot,
                misalign,
            },
        )
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Map(u64, u64, u64, Prot),
    Unmap(u64, u64),
    Translate(u64),
    /// `PageTable::reclaim`: the tables left empty go.
    Reclaim,
}

/// Where and how big the generated ranges are for one format.
struct Space {
    base: u64,
    size: u64,
    units: Vec<u64>,
    granule: u64,
    oa_end: u64,
    aperture_end: u64,
    prots: Vec<Prot>,
}

impl Space {
    fn new<F: Format>(f: &F, base: u64, size: u64, prots: Vec<Prot>) -> Self {
        let g = f.granule_shift();
        let mut units = vec![1u64 << g];
        for level in 1..f.levels() {
            if f.leaf_ok(level) {
                units.push(1 << (g + level * (g - 3)));
            }
        }
        Self {
            base,
            size,
            units,
            granule: 1 << g,
            oa_end: 1 << f.oa_bits(),
            aperture_end: 1 << f.ia_bits(),
            prots,
        }
    }

    fn concretize(&self, r: &RawOp) -> Op {
        // Small pages most of the time, superpage-sized units less often.
        let pick = match r.unit % 16 {
            0..=8 => 0,
            9..=13 => 1,
            _ => 2,
        };
        let unit = self.units[pick.min(self.units.len() - 1)].min(self.size / 4);
        let g = self.granule;
        // 16 clusters across the window, 8 units in each, so that operations meet each other.
        let cluster = self.base + u64::from(r.start % 16) * (self.size / 16);
        let mut start = (cluster & !(unit - 1)) + u64::from((r.start >> 4) % 8) * unit;
        if r.misalign & 1 != 0 {
            start += g * u64::from(1 + r.misalign % 3);
        }
        let mut len = unit * u64::from(1 + r.len % 3);
        if r.misalign & 2 != 0 {
            len += g;
        }
        let prot = self.prots[r.prot as usize % self.prots.len()];
        let phys = match r.phys_mode % 4 {
            // Same alignment as the IOVA: superpages possible.
            0 | 1 => start % (self.oa_end / 2),
            // Off by one granule: only the smallest pages fit.
            2 => (start + g) % (self.oa_end / 2),
            // Elsewhere, still unit-aligned.
            _ => (start + unit * 7) % (self.oa_end / 2),
        };
        match r.kind % 16 {
            0..=6 => Op::Map(start, phys, len, prot),
            7..=11 => Op::Unmap(start, len),
            12 if r.len.is_multiple_of(2) => Op::Translate(start + u64::from(r.len) * g / 2),
            12 => Op::Reclaim,
            // Bad arguments of every kind; the model decides which error comes first.
            _ => match r.misalign % 8 {
                0 => Op::Map(start, phys, 0, prot),
                1 => Op::Map(start + 8, phys, len, prot),
                2 => Op::Map(start, phys + 8, len, prot),
                3 => Op::Unmap(start, len + 8),
                4 => Op::Map(u64::MAX - g + 1, phys, 2 * g, prot),
                5 => Op::Unmap(self.aperture_end - g, 2 * g),
                6 => Op::Map(start, self.oa_end - g, 2 * g, prot),
                _ => Op::Map(
                    start,
                    phys,
                    len,
                    Prot {
                        read: false,
                        write: false,
                        ..prot
                    },
                ),
            },
        }
    }
}

/// How `run` unmaps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unmaps {
    /// `PageTable::unmap`: tables an unmap empties stay until a reclaim.
    Plain,
    /// `PageTable::unmap_pruning` with the whole aperture as the caller's own: after every
    /// operation the table holds exactly the tables a fresh map of its leaves would build.
    Pruning,
}

fn run<F: Format + Copy>(f: F, space: &Space, ops: &[RawOp]) {
    run_with(f, space, ops, Unmaps::Plain)
}

fn run_with<F: Format + Copy>(f: F, space: &Space, ops: &[RawOp], unmaps: Unmaps) {
    let hal = HostHal::new();
    let mut t = PageTable::new(f, &hal, Coherency::Coherent).unwrap();
    let mut m = Model::new(&f);
    // Ranges mapped so far, so that many unmaps aim at real mappings.
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    for (i, r) in ops.iter().enumerate() {
        let mut op = space.concretize(r);
        if let (Op::Unmap(..), false) = (op, mapped.is_empty()) {
            if r.kind % 16 <= 9 {
                let (va, len) = mapped[r.start as usize % mapped.len()];
                let g = space.granule;
                op = match r.len % 4 {
                    // Exactly what was mapped, or a granule less (which may cut a superpage).
                    0 | 1 => Op::Unmap(va, len),
                    2 => Op::Unmap(va, len.max(2 * g) - g),
                    // With its neighbourhood, often covering whole tables.
                    _ => {
                        let unit = space.units[r.unit as usize % space.units.len()];
                        let lo = (va & !(unit - 1)).saturating_sub(unit);
                        Op::Unmap(lo, (va + len - lo + 2 * unit) & !(g - 1))
                    }
                };
            }
        }
        match op {
            Op::Map(va, pa, len, prot) => {
                let got = t.map(Iova::new(va), PhysAddr::new(pa), len, prot);
                let want = m.map(va, pa, len, prot);
                assert_eq!(got, want, "op {i}: {op:x?}");
                if got.is_ok() {
                    mapped.push((va, len));
                    check_range(&t, &m, va, len);
                }
            }
            Op::Unmap(va, len) => {
                let mut g = Gather::new();
                let got = match unmaps {
                    Unmaps::Plain => t.unmap(Iova::new(va), len, &mut g),
                    Unmaps::Pruning => {
                        t.unmap_pruning(Iova::new(va), len, 0..t.aperture_end(), &mut g)
                    }
                };
                let want = m.unmap(va, len);
                assert_eq!(got, want.map(|r| r.bytes), "op {i}: {op:x?}");
                match want {
                    Ok(r) => {
                        let tables = match unmaps {
                            Unmaps::Plain => r.tables,
                            Unmaps::Pruning => r.tables + m.reclaim(),
                        };
                        assert_eq!(g.range(), Some((Iova::new(va), len)));
                        assert_eq!(g.page_sizes(), r.page_sizes, "op {i}: {op:x?}");
                        assert_eq!(g.tables_removed(), tables > 0, "op {i}: {op:x?}");
                        assert_eq!(g.freed_frames(), tables, "op {i}: {op:x?}");
                    }
                    Err(_) => assert!(g.is_empty()),
                }
                // SAFETY: host memory, no walker.
                unsafe { g.complete(&hal) };
                if got.is_ok() {
                    check_range(&t, &m, va, len);
                }
            }
            Op::Translate(va) => {
                assert_eq!(
                    t.iova_to_phys(Iova::new(va)),
                    m.translate(va).map(PhysAddr::new),
                    "op {i}: {op:x?}"
                );
            }
            Op::Reclaim => {
                let mut g = Gather::new();
                assert_eq!(
                    t.reclaim(&mut g),
                    Ok(m.reclaim()),
                    "op {i}: tables reclaimed"
                );
                // SAFETY: host memory, no walker.
                unsafe { g.complete(&hal) };
                assert_eq!(
                    hal.live_frames(),
                    fresh_frames(f, &m),
                    "op {i}: after reclaim, the frames a fresh table needs for these leaves"
                );
            }
        }
        assert_eq!(
            hal.live_frames(),
            1 + m.table_count(),
            "op {i}: {op:x?}: one frame per table"
        );
        if unmaps == Unmaps::Pruning {
            assert_eq!(
                hal.live_frames(),
                fresh_frames(f, &m),
                "op {i}: {op:x?}: pruning unmaps keep only the tables a fresh map needs"
            );
        }
    }
    // Unmap-all returns every table but the root, whatever was mapped.
    let mut g = Gather::new();
    let got = t.unmap(Iova::new(0), t.aperture_end(), &mut g);
    assert_eq!(got, m.unmap(0, t.aperture_end()).map(|r| r.bytes));
    // SAFETY: host memory, no walker.
    unsafe { g.complete(&hal) };
    assert_eq!(hal.live_frames(), 1);
    let mut g = Gather::new();
    let hal_back = t.destroy(&mut g);
    // SAFETY: as above.
    unsafe { g.complete(hal_back) };
    assert_eq!(hal.live_frames(), 0);
}

/// The frames of a new table holding exactly the model's leaves, each mapped on its own.
fn fresh_frames<F: Format + Copy>(f: F, m: &Model<F>) -> usize {
    let hal = HostHal::new();
    let t = PageTable::new(f, &hal, Coherency::Coherent).unwrap();
    for (va, pa, size, prot) in m.leaves() {
        t.map(Iova::new(va), PhysAddr::new(pa), size, prot).unwrap();
    }
    hal.live_frames()
}

/// Translations, leaf sizes and permissions at a few addresses of `[va, va + len)` and around.
fn check_range<F: Format + Copy, H: Hal>(t: &PageTable<F, H>, m: &Model<F>, va: u64, len: u64) {
    let g = 1u64 << t.format().granule_shift();
    let mut probes = vec![
        va,
        va + len - g,
        va + ((len / 2) & !(g - 1)),
        va.wrapping_sub(g),
        va + len,
    ];
    probes.retain(|&a| a < t.aperture_end());
    for a in probes {
        assert_eq!(
            t.iova_to_phys(Iova::new(a + 8)),
            m.translate(a + 8).map(PhysAddr::new),
            "translate {a:#x}"
        );
        let walk = t.walk(Iova::new(a)).unwrap();
        let leaf = walk.leaf().map(|s| match s.kind {
            EntryKind::Leaf { size, prot, .. } => (size, prot),
            _ => unreachable!(),
        });
        assert_eq!(leaf.map(|l| l.0), m.leaf_size(a), "leaf size at {a:#x}");
        if let (Some((_, got)), Some(want)) = (leaf, m.prot(a)) {
            assert_eq!(
                (got.read, got.write),
                (want.read, want.write),
                "prot at {a:#x}"
            );
        }
    }
}

fn prots_all() -> Vec<Prot> {
    vec![
        Prot::READ,
        Prot::WRITE,
        Prot::READ_WRITE,
        Prot::READ_WRITE.with_exec().with_mem(MemType::Device),
    ]
}

fn prots_readable() -> Vec<Prot> {
    vec![
        Prot::READ,
        Prot::READ_WRITE,
        Prot::READ.with_exec().with_mem(MemType::NonCacheable),
        // Refused by these formats: the model must agree.
        Prot::WRITE,
    ]
}

const G1: u64 = 1 << 30;

fn vtd(sagaw: u8, sllps: u8, width: u32) -> VtdSecondStage {
    VtdSecondStage::new(VtdSecondStageConfig {
        sagaw,
        sllps,
        address_width: width,
        output_width: 46,
        snoop_control: true,
    })
    .unwrap()
}

fn vmsa(granule: Granule, input_bits: u32, output_bits: u32) -> VmsaConfig {
    VmsaConfig {
        granule,
        input_bits,
        output_bits,
    }
}

/// Up to 64 operations per case unless `MODEL_OPS` says otherwise (the Miri run asks for a
/// few: every operation checks the whole model against the table).
fn ops() -> impl Strategy<Value = Vec<RawOp>> {
    let max = std::env::var("MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64usize)
        .max(2);
    prop::collection::vec(raw_op(), 1..max)
}

/// 64 cases per format unless `PROPTEST_CASES` says otherwise (the Miri run of
/// `cargo xtask test` asks for a handful: each case is thousands of times slower there).
fn cfg() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn vtd_second_stage_3_level_all_page_sizes(ops in ops()) {
        let f = vtd(0b0010, 0b11, 39);
        run(f, &Space::new(&f, 0, 4 * G1, prots_all()), &ops);
    }

    #[test]
    fn vtd_second_stage_4_level_2m_only_at_top(ops in ops()) {
        let f = vtd(0b0100, 0b01, 48);
        run(f, &Space::new(&f, (1 << 48) - 4 * G1, 4 * G1, prots_all()), &ops);
    }

    #[test]
    fn vtd_second_stage_5_level_4k_only(ops in ops()) {
        let f = vtd(0b1000, 0, 57);
        run(f, &Space::new(&f, 1 << 50, 64 << 20, prots_all()), &ops);
    }

    #[test]
    fn x86_first_stage_4_level(ops in ops()) {
        let f = X86FirstStage::new(X86FirstStageConfig::four_level(46)).unwrap();
        run(f, &Space::new(&f, 0, 4 * G1, prots_readable()), &ops);
    }

    #[test]
    fn x86_first_stage_5_level_no_1g(ops in ops()) {
        let f = X86FirstStage::new(X86FirstStageConfig {
            five_level: true,
            page_1g: false,
            ..X86FirstStageConfig::four_level(52)
        })
        .unwrap();
        run(f, &Space::new(&f, (1 << 56) - 8 * G1, 8 * G1, prots_readable()), &ops);
    }

    #[test]
    fn vmsa_stage1_4k(ops in ops()) {
        let f = VmsaStage1::new(vmsa(Granule::Size4K, 48, 48)).unwrap();
        run(f, &Space::new(&f, 0, 4 * G1, prots_readable()), &ops);
    }

    #[test]
    fn vmsa_stage1_16k(ops in ops()) {
        let f = VmsaStage1::new(vmsa(Granule::Size16K, 47, 44)).unwrap();
        run(f, &Space::new(&f, 0, 512 << 20, prots_readable()), &ops);
    }

    #[test]
    fn vmsa_stage1_64k(ops in ops()) {
        let f = VmsaStage1::new(vmsa(Granule::Size64K, 48, 48)).unwrap();
        run(f, &Space::new(&f, (1 << 48) - 4 * G1, 4 * G1, prots_readable()), &ops);
    }

    #[test]
    fn vmsa_stage2_4k_concatenated(ops in ops()) {
        let f = VmsaStage2::new(vmsa(Granule::Size4K, 40, 40)).unwrap();
        run(f, &Space::new(&f, (1 << 39) - 2 * G1, 4 * G1, prots_all()), &ops);
    }

    #[test]
    fn vmsa_stage2_16k_concatenated(ops in ops()) {
        let f = VmsaStage2::new(vmsa(Granule::Size16K, 48, 48)).unwrap();
        run(f, &Space::new(&f, (1 << 47) - (256 << 20), 512 << 20, prots_all()), &ops);
    }

    #[test]
    fn vmsa_stage2_64k_52_bit(ops in ops()) {
        let f = VmsaStage2::new(vmsa(Granule::Size64K, 52, 52)).unwrap();
        run(f, &Space::new(&f, 0, 4 * G1, prots_all()), &ops);
    }

    #[test]
    fn pruning_vtd_second_stage_4_level(ops in ops()) {
        let f = vtd(0b0100, 0b11, 48);
        run_with(f, &Space::new(&f, 0, 4 * G1, prots_all()), &ops, Unmaps::Pruning);
    }

    #[test]
    fn pruning_x86_first_stage_5_level(ops in ops()) {
        let f = X86FirstStage::new(X86FirstStageConfig {
            five_level: true,
            ..X86FirstStageConfig::four_level(52)
        })
        .unwrap();
        let space = Space::new(&f, (1 << 56) - 8 * G1, 8 * G1, prots_readable());
        run_with(f, &space, &ops, Unmaps::Pruning);
    }

    #[test]
    fn pruning_vmsa_stage1_16k(ops in ops()) {
        let f = VmsaStage1::new(vmsa(Granule::Size16K, 47, 44)).unwrap();
        let space = Space::new(&f, 0, 512 << 20, prots_readable());
        run_with(f, &space, &ops, Unmaps::Pruning);
    }

    #[test]
    fn pruning_vmsa_stage2_4k_concatenated(ops in ops()) {
        let f = VmsaStage2::new(vmsa(Granule::Size4K, 40, 40)).unwrap();
        let space = Space::new(&f, (1 << 39) - 2 * G1, 4 * G1, prots_all());
        run_with(f, &space, &ops, Unmaps::Pruning);
    }

    #[test]
    fn pruning_vmsa_stage2_64k(ops in ops()) {
        let f = VmsaStage2::new(vmsa(Granule::Size64K, 52, 52)).unwrap();
        run_with(f, &Space::new(&f, 0, 4 * G1, prots_all()), &ops, Unmaps::Pruning);
    }
}
