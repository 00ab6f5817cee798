//! A real [`SmmuUnit`] on the register-level simulated SMMU: bring-up, and every allocation
//! of bring-up, domain creation, map and attach failing in turn without a leak.

extern crate std;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};

use super::{SimConfig, SimulatedUnit};
use crate::{SmmuConfig, SmmuUnit};

fn bring_up<'h>(sim: &SimulatedUnit, hal: &'h HostHal) -> Result<SmmuUnit<&'h HostHal>, crate::Error> {
    let config = SmmuConfig {
        cmdq_log2: 6,
        eventq_log2: 5,
        ..SmmuConfig::default()
    };
    // SAFETY: the frame lives as long as `sim`, which every test drops after the unit.
    unsafe { SmmuUnit::new(sim.registers(), hal, config) }
}

#[test]
fn bring_up_enables_the_smmu_and_invalidates_everything() {
    let sim = SimulatedUnit::new(SimConfig::qemu());
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    assert!(sim.enabled());
    assert_eq!(sim.gbpa() & super::unit::GBPA_ABORT, super::unit::GBPA_ABORT);
    let log = sim.take_log();
    assert!(log.len() >= 3, "{log:?}");
    assert_eq!(sim.refused_commands(), 0);
    drop(unit);
}

/// Runs `op` with the N-th allocation failing, N = 0, 1, 2, ..., until it succeeds; every
/// failure must leave the live frames as they were and the state usable (`op` is retried).
fn sweep<T, E: core::fmt::Debug>(
    hal: &HostHal,
    what: &str,
    op: impl FnMut() -> Result<T, E>,
) -> T {
    sweep_keeping(hal, what, false, op)
}

/// [`sweep`], where a failed map may keep the intermediate tables it linked in (the core's
/// page-table engine keeps them, reachable, for the retry; the domain's destruction frees
/// them): live frames may grow, never shrink.
fn sweep_keeping<T, E: core::fmt::Debug>(
    hal: &HostHal,
    what: &str,
    keeps_tables: bool,
    mut op: impl FnMut() -> Result<T, E>,
) -> T {
    for n in 0.. {
        let before = hal.live_frames();
        hal.set_budget(n);
        let r = op();
        hal.set_budget(usize::MAX);
        match r {
            Ok(t) => return t,
            Err(e) if keeps_tables => assert!(
                hal.live_frames() >= before,
                "{what}: allocation {n} failing ({e:?}) freed frames in use"
            ),
            Err(e) => assert_eq!(
                hal.live_frames(),
                before,
                "{what}: allocation {n} failing ({e:?}) leaked frames"
            ),
        }
        assert!(n < 64, "{what}: never succeeds");
    }
    unreachable!()
}

#[test]
fn bring_up_without_memory_leaks_nothing() {
    let sim = SimulatedUnit::new(SimConfig::qemu());
    let hal = HostHal::new();
    let unit = sweep(&hal, "bring-up", || bring_up(&sim, &hal));
    assert!(sim.enabled());
    drop(unit);
}

#[test]
fn domain_map_attach_without_memory_leak_nothing() {
    let sim = SimulatedUnit::new(SimConfig::qemu());
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    let buf = PhysAddr::new(0x4000_0000);
    let baseline = hal.live_frames();
    for stage in [Stage::First, Stage::Second] {
        let domain = sweep(&hal, "new_domain", || unit.new_domain(stage, 48));
        sweep_keeping(&hal, "map", true, || {
            unit.map(&domain, Iova::new(0x10_0000), buf, 0x1000, Prot::READ_WRITE)
        });
        sweep_keeping(&hal, "map 2", true, || {
            unit.map(&domain, Iova::new(0x7f_0000_0000), buf, 0x20_0000, Prot::READ)
        });
        // Streams in level-2 tables not yet created: a table, and for stage 1 nothing else.
        let sid = if stage == Stage::First { 0x1234 } else { 0x5678 };
        sweep(&hal, "attach", || unit.attach(DeviceId(sid), Attachment::Paging(&domain)));
        sweep(&hal, "attach blocking", || {
            unit.attach(DeviceId(sid + 0x300), Attachment::Blocking)
        });
        unit.attach(DeviceId(sid), Attachment::Blocking).unwrap();
        unit.destroy_domain(domain).map_err(|(_, e)| e).unwrap();
    }
    // What is left: the level-2 stream tables the attaches created (they stay with the table).
    assert!(hal.live_frames() >= baseline);
}

#[test]
fn pasid_attach_and_nesting_without_memory_leak_nothing() {
    let sim = SimulatedUnit::new(SimConfig::qemu().with_substreams(8));
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    let s1 = unit.new_domain(Stage::First, 48).unwrap();
    let s1b = unit.new_domain(Stage::First, 48).unwrap();
    unit.map(&s1, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), 0x1000, Prot::READ_WRITE)
        .unwrap();
    // PASID 5 of a stream in a level-2 table not yet created: the table and the stream's
    // own CD table (level 1 and a level-2 leaf) are allocated.
    sweep(&hal, "attach_pasid", || {
        unit.attach_pasid(DeviceId(0x4321), 5, Attachment::Paging(&s1b))
    });
    sweep(&hal, "attach_pasid 2", || {
        unit.attach_pasid(DeviceId(0x4321), 200, Attachment::Paging(&s1))
    });
    sweep(&hal, "attach with pasids", || {
        unit.attach(DeviceId(0x4321), Attachment::Paging(&s1))
    });

    let s2 = unit.new_domain(Stage::Second, 40).unwrap();
    let viommu = sweep(&hal, "new_viommu", || unit.new_viommu(&s2));
    // The guest's vSTE: V, Config = stage 1 (0b101), its CD table at IPA 0x8000_0000.
    let vste = [1 | 0b101 << 1 | 0x8000_0000, 0, 0, 0, 0, 0, 0, 0];
    let nested = sweep(&hal, "new_nested", || unit.new_nested(&viommu, &vste));
    sweep(&hal, "attach nested", || {
        unit.attach(DeviceId(0x9000), Attachment::Paging(&nested))
    });
    unit.attach(DeviceId(0x9000), Attachment::Blocking).unwrap();
    drop(nested);
    unit.destroy_viommu(viommu).map_err(|(_, e)| e).unwrap();
    unit.destroy_domain(s2).map_err(|(_, e)| e).unwrap();
}
