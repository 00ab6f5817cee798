//! The allocation-failure sweep of a VT-d unit on the simulated unit: every operation that
//! allocates is run with the N-th frame allocation failing, N = 0, 1, 2, ... until it succeeds;
//! each failure must be `OutOfMemory`, leave the HAL's live frames as they were, and leave the
//! unit usable (the retry succeeds, earlier mappings still translate).

extern crate std;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit, UnitError};

use super::{Mode, VtdUnit};
use crate::qi::QueueSize;
use crate::sim::{Access, SimulatedUnit, CAP, ECAP_SCALABLE};

/// `HostHal::sweep` for the unit's out-of-memory errors.
fn sweep<T>(
    hal: &HostHal,
    what: &str,
    keeps_tables: bool,
    op: impl FnMut() -> Result<T, UnitError>,
) -> T {
    hal.sweep(what, keeps_tables, out_of_memory, op)
}

fn out_of_memory(e: &UnitError) -> bool {
    matches!(
        e,
        UnitError::OutOfMemory | UnitError::PageTable(iommu::pagetable::Error::OutOfMemory)
    )
}

/// The frames attaching `dev` to a domain takes, without failures, on a fresh unit where the
/// devices `before` it were attached first.
fn clean_attach_frames(mode: Mode, earlier: &[DeviceId], dev: DeviceId) -> usize {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, mode, 48, QueueSize::ONE_PAGE).unwrap();
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    for &e in earlier {
        unit.attach(e, Attachment::Paging(&d)).unwrap();
    }
    let before = hal.live_frames();
    unit.attach(dev, Attachment::Paging(&d)).unwrap();
    hal.live_frames() - before
}

const EDU: DeviceId = DeviceId(0x0008);
/// On bus 0 after `EDU`: its context table exists, so the first allocation of its attach is
/// (in scalable mode) the PASID directory.
const EDU_SAME_BUS: DeviceId = DeviceId(0x0018);
const EDU2: DeviceId = DeviceId(0x0210); // 02:02.0: a bus without a context table yet

#[test]
fn bring_up_without_memory_leaks_nothing() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
        let regs = sim.registers();
        let hal = HostHal::new();
        let unit = sweep(&hal, "bring-up", false, || {
            VtdUnit::new(&regs, &hal, mode, 48, QueueSize::ONE_PAGE)
        });
        drop(unit);
    }
}

#[test]
fn domains_maps_and_attaches_without_memory_leak_nothing() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
        let regs = sim.registers();
        let hal = HostHal::new();
        let unit = VtdUnit::new(&regs, &hal, mode, 48, QueueSize::ONE_PAGE).unwrap();
        let buf = PhysAddr::new(0x4000_0000);
        let d = sweep(&hal, "new_domain", false, || {
            unit.new_domain(Stage::Second, 48)
        });
        // What the map takes without failures, on a domain of its own.
        let clean = unit.new_domain(Stage::Second, 48).unwrap();
        let before = hal.live_frames();
        unit.map(&clean, Iova::new(0x10_0000), buf, 0x1000, Prot::READ_WRITE)
            .unwrap();
        let clean_frames = hal.live_frames() - before;
        unit.destroy_domain(clean).map_err(|(_, e)| e).unwrap();
        let before = hal.live_frames();
        sweep(&hal, "map", true, || {
            unit.map(&d, Iova::new(0x10_0000), buf, 0x1000, Prot::READ_WRITE)
        });
        assert_eq!(
            hal.live_frames() - before,
            clean_frames,
            "{mode:?}: map kept more than it needs"
        );
        let devices = [EDU, EDU_SAME_BUS, EDU2];
        for (i, &dev) in devices.iter().enumerate() {
            // A failed attach may keep the context table (and in scalable mode the PASID
            // directory and table) it linked in: what its retry uses, no more.
            let before = hal.live_frames();
            sweep(&hal, "attach", true, || {
                unit.attach(dev, Attachment::Paging(&d))
            });
            assert_eq!(
                hal.live_frames() - before,
                clean_attach_frames(mode, &devices[..i], dev),
                "{mode:?}: attach of {dev:?} kept more than it needs"
            );
            // SAFETY: the unit and its domain (their tables) live until the end of the test.
            let reached = unsafe { sim.translate(dev.0 as u16, None, 0x10_0010, Access::Write) };
            assert_eq!(reached, Ok(buf.as_u64() + 0x10), "{mode:?}: mapping intact");
        }
        for dev in devices {
            unit.attach(dev, Attachment::Blocking).unwrap();
        }
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    }
}

#[test]
fn pasid_attach_and_viommu_without_memory_leak_nothing() {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let d = unit.new_domain(Stage::First, 48).unwrap();
    // PASID 3 of a device never attached: its context entry, PASID directory and table.
    let before = hal.live_frames();
    sweep(&hal, "attach_pasid", true, || {
        unit.attach_pasid(EDU, 3, Attachment::Paging(&d))
    });
    assert_eq!(
        hal.live_frames() - before,
        3,
        "context table, PASID directory and table"
    );
    // Another device on the same bus: its PASID directory and table, nothing kept on failure
    // (the directory goes back when the table cannot be had).
    sweep(&hal, "attach_pasid 2", false, || {
        unit.attach_pasid(EDU_SAME_BUS, 3, Attachment::Paging(&d))
    });
    let parent = unit.new_domain(Stage::Second, 48).unwrap();
    let v = sweep(&hal, "new_viommu", false, || unit.new_viommu(&parent));
    unit.destroy_viommu(v).map_err(|(_, e)| e).unwrap();
}

#[test]
fn the_object_model_over_the_unit_without_memory_changes_nothing() {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    iommu::iommufd::sweep::domain_map_attach(&unit, &hal, EDU, Stage::Second, |iova| {
        // SAFETY: the unit and the domain (their tables) live while the sweep asks.
        unsafe { sim.translate(EDU.0 as u16, None, iova, Access::Write) }.ok()
    });
}

#[test]
fn attaching_a_device_with_rmrrs_without_memory_changes_nothing() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let mut taken = [0usize; 2];
        for (failing, taken) in [false, true].into_iter().zip(&mut taken) {
            let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
            let regs = sim.registers();
            let hal = HostHal::new();
            let unit = VtdUnit::new(&regs, &hal, mode, 48, QueueSize::ONE_PAGE).unwrap();
            // Two reserved ranges of EDU, far apart (tables of their own).
            unit.add_rmrr(EDU, 0x000e_0000, 0x000f_ffff).unwrap();
            unit.add_rmrr(EDU, 0x7f_0000_0000, 0x7f_0000_ffff).unwrap();
            let d = unit.new_domain(Stage::Second, 48).unwrap();
            let before = hal.live_frames();
            // The RMRRs' identity maps go into the domain first: a failure takes back what it
            // mapped, and may keep only tables its retry reuses.
            if failing {
                sweep(&hal, "attach with RMRRs", true, || {
                    unit.attach(EDU, Attachment::Paging(&d))
                });
            } else {
                unit.attach(EDU, Attachment::Paging(&d)).unwrap();
            }
            *taken = hal.live_frames() - before;
            check_rmrrs(&sim, mode);
        }
        assert_eq!(
            taken[1], taken[0],
            "{mode:?}: frames after failures vs a clean attach"
        );
    }
}

/// EDU's reserved ranges are identity-mapped for it (the unit and domain still live).
fn check_rmrrs(sim: &SimulatedUnit, mode: Mode) {
    for addr in [0x000e_1000u64, 0x7f_0000_8000] {
        // SAFETY: the caller keeps the unit and the domain alive.
        let reached = unsafe { sim.translate(EDU.0 as u16, None, addr, Access::Read) };
        assert_eq!(
            reached,
            Ok(addr),
            "{mode:?}: RMRR {addr:#x} identity-mapped"
        );
    }
}

#[test]
fn nested_domains_and_their_attach_without_memory_leak_nothing() {
    /// ECAP.NEST.
    const NEST: u64 = 1 << 26;
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE | NEST);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let parent = unit.new_domain(Stage::Second, 48).unwrap();
    let viommu = sweep(&hal, "new_viommu", false, || unit.new_viommu(&parent));
    // A guest's first-stage PASID entry: P | AW 2 | PGTT 001, DID 0x42, FSPTPTR 0x1234_5000.
    let guest = [0x49, 0x42, 0x1234_5010, 0, 0, 0, 0, 0];
    let nested = sweep(&hal, "new_nested", false, || {
        unit.new_nested(&viommu, &guest)
    });
    let before = hal.live_frames();
    sweep(&hal, "attach nested", true, || {
        unit.attach(EDU, Attachment::Paging(&nested))
    });
    assert_eq!(
        hal.live_frames() - before,
        3,
        "context table, PASID directory and table: nothing more"
    );
    unit.attach(EDU, Attachment::Blocking).unwrap();
    unit.destroy_domain(nested).map_err(|(_, e)| e).unwrap();
    unit.destroy_viommu(viommu).map_err(|(_, e)| e).unwrap();
}
