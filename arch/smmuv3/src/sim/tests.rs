//! A real [`SmmuUnit`] on the register-level simulated SMMU: bring-up, and every allocation
//! of bring-up, domain creation, map and attach failing in turn without a leak.

extern crate std;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};
use std::vec::Vec;

use super::{SimConfig, SimulatedUnit};
use crate::{SmmuConfig, SmmuUnit};

fn bring_up<'h>(
    sim: &SimulatedUnit,
    hal: &'h HostHal,
) -> Result<SmmuUnit<&'h HostHal>, crate::Error> {
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
    let sim = SimulatedUnit::new(SimConfig::host());
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    assert!(sim.enabled());
    assert_eq!(
        sim.gbpa() & super::unit::GBPA_ABORT,
        super::unit::GBPA_ABORT
    );
    let log = sim.take_log();
    assert!(log.len() >= 3, "{log:?}");
    assert_eq!(sim.refused_commands(), 0);
    drop(unit);
}

/// `HostHal::sweep` for the unit's errors, each of which must name the exhausted memory.
fn sweep<T, E: core::fmt::Debug>(hal: &HostHal, what: &str, op: impl FnMut() -> Result<T, E>) -> T {
    sweep_keeping(hal, what, false, op)
}

/// [`sweep`], where a failed operation may keep the tables it linked for its retry.
fn sweep_keeping<T, E: core::fmt::Debug>(
    hal: &HostHal,
    what: &str,
    keeps_tables: bool,
    op: impl FnMut() -> Result<T, E>,
) -> T {
    hal.sweep(
        what,
        keeps_tables,
        |e| std::format!("{e:?}").contains("OutOfMemory"),
        op,
    )
}

#[test]
fn bring_up_without_memory_leaks_nothing() {
    let sim = SimulatedUnit::new(SimConfig::host());
    let hal = HostHal::new();
    let unit = sweep(&hal, "bring-up", || bring_up(&sim, &hal));
    assert!(sim.enabled());
    drop(unit);
}

#[test]
fn domain_map_attach_without_memory_leak_nothing() {
    let sim = SimulatedUnit::new(SimConfig::host());
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    let buf = PhysAddr::new(0x4000_0000);
    let baseline = hal.live_frames();
    for stage in [Stage::First, Stage::Second] {
        let maps: [(u64, u64, Prot); 2] = [
            (0x10_0000, 0x1000, Prot::READ_WRITE),
            (0x7f_0000_0000, 0x20_0000, Prot::READ),
        ];
        // What the maps take in a run without failure, map by map.
        let clean = unit.new_domain(stage, 48).unwrap();
        let clean_frames: Vec<usize> = maps
            .iter()
            .map(|&(iova, len, prot)| {
                let before = hal.live_frames();
                unit.map(&clean, Iova::new(iova), buf, len, prot).unwrap();
                hal.live_frames() - before
            })
            .collect();
        unit.destroy_domain(clean).map_err(|(_, e)| e).unwrap();

        let domain = sweep(&hal, "new_domain", || unit.new_domain(stage, 48));
        for (&(iova, len, prot), clean) in maps.iter().zip(clean_frames) {
            let before = hal.live_frames();
            sweep_keeping(&hal, "map", true, || {
                unit.map(&domain, Iova::new(iova), buf, len, prot)
            });
            // The tables a failed map kept are the ones its retry needed: nothing more.
            assert_eq!(
                hal.live_frames() - before,
                clean,
                "map of {len:#x} at {iova:#x}"
            );
        }
        // Streams in level-2 tables not yet created: a table, and for stage 1 nothing else.
        let sid = if stage == Stage::First {
            0x1234
        } else {
            0x5678
        };
        sweep(&hal, "attach", || {
            unit.attach(DeviceId(sid), Attachment::Paging(&domain))
        });
        // The mappings made before the failures are intact and reached.
        let (read, write) = (crate::sim::Access::READ, crate::sim::Access::WRITE);
        assert_eq!(
            sim.translate(sid, None, 0x10_0010, write),
            Ok(buf.as_u64() + 0x10)
        );
        assert_eq!(
            sim.translate(sid, None, 0x7f_0012_3000, read),
            Ok(buf.as_u64() + 0x12_3000)
        );
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
    let sim = SimulatedUnit::new(SimConfig::host().with_substreams(8));
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    let s1 = unit.new_domain(Stage::First, 48).unwrap();
    let s1b = unit.new_domain(Stage::First, 48).unwrap();
    unit.map(
        &s1,
        Iova::new(0x10_0000),
        PhysAddr::new(0x4000_0000),
        0x1000,
        Prot::READ_WRITE,
    )
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
    let read = crate::sim::Access::READ;
    assert_eq!(
        sim.translate(0x4321, Some(200), 0x10_0008, read),
        Ok(0x4000_0008)
    );
    assert_eq!(
        sim.translate(0x4321, None, 0x10_0008, read),
        Ok(0x4000_0008)
    );
    assert!(sim.translate(0x4321, Some(5), 0x10_0008, read).is_err());

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

mod dma {
    use super::*;
    use crate::command::Command;
    use crate::eventq::EventType;
    use crate::sim::{Access, DmaFault};
    use std::vec::Vec;

    /// A buffer the mappings point at: host memory, as the simulator reads tables.
    const BUF: u64 = 0x4000_0000;

    fn event(r: Result<u64, DmaFault>) -> EventType {
        match r {
            Ok(pa) => panic!("reached {pa:#x}"),
            Err(DmaFault::Event(e)) => e.event,
            Err(f) => panic!("terminated without a record: {f:?}"),
        }
    }

    #[test]
    fn before_bring_up_gbpa_decides_and_after_it_every_stream_is_blocked() {
        let sim = SimulatedUnit::new(SimConfig::host());
        // Out of reset: SMMUEN = 0 and GBPA bypass, as QEMU resets it.
        assert_eq!(sim.translate(3, None, 0x1234, Access::READ), Ok(0x1234));
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        // An unconfigured stream of the 2-level table: no level-2 array → C_BAD_STREAMID.
        assert_eq!(
            event(sim.translate(3, None, 0x1234, Access::READ)),
            EventType::BadStreamId
        );
        // Beyond SIDSIZE.
        assert_eq!(
            event(sim.translate(1 << 16, None, 0, Access::READ)),
            EventType::BadStreamId
        );
        drop(unit);
    }

    #[test]
    fn stage1_mapping_is_reached_and_faults_are_typed_and_reported() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        let d = unit.new_domain(Stage::First, 48).unwrap();
        unit.map(
            &d,
            Iova::new(0x10_0000),
            PhysAddr::new(BUF),
            0x2000,
            Prot::READ_WRITE,
        )
        .unwrap();
        unit.map(
            &d,
            Iova::new(0x20_0000),
            PhysAddr::new(BUF + 0x20_0000),
            0x1000,
            Prot::READ,
        )
        .unwrap();
        sim.take_log();
        unit.attach(DeviceId(0x10), Attachment::Paging(&d)).unwrap();
        // A stream in a new level-2 table: the table is written whole before its descriptor,
        // so one CFGI_STE (leaf = 0) and a CMD_SYNC are all it takes.
        let log = sim.take_log();
        assert!(log.len() <= 3, "{log:?}");
        assert!(matches!(log.last(), Some(Command::Sync { .. })), "{log:?}");

        assert_eq!(
            sim.translate(0x10, None, 0x10_1234, Access::WRITE),
            Ok(BUF + 0x1234)
        );
        assert_eq!(
            sim.translate(0x10, None, 0x20_0008, Access::READ),
            Ok(BUF + 0x20_0008)
        );
        assert_eq!(
            event(sim.translate(0x10, None, 0x20_0008, Access::WRITE)),
            EventType::Permission
        );
        assert_eq!(
            event(sim.translate(0x10, None, 0x30_0000, Access::READ)),
            EventType::Translation
        );
        // A neighbour in the same level-2 table points at the blocking domain: a translation
        // fault, reported (not a silent abort).
        assert_eq!(
            event(sim.translate(0x11, None, 0x10_0000, Access::READ)),
            EventType::Translation
        );
        // Without substreams, a PASID is refused.
        assert_eq!(
            event(sim.translate(0x10, Some(1), 0x10_0000, Access::READ)),
            EventType::BadSubstreamId
        );

        // The driver's own event reader reports what the SMMU records.
        assert!(sim.dma(0x10, None, 0x30_0040, Access::WRITE).is_err());
        let mut seen = Vec::new();
        unit.drain_events(&mut |e| seen.push(*e));
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].event, EventType::Translation);
        assert_eq!(seen[0].stream_id, 0x10);
        assert_eq!(seen[0].input_address, Some(0x30_0040));
        assert!(seen[0].access.is_some_and(|a| a.write));

        // Unmapped again: gone.
        unit.unmap(&d, Iova::new(0x10_0000), 0x2000).unwrap();
        assert_eq!(
            event(sim.translate(0x10, None, 0x10_1234, Access::READ)),
            EventType::Translation
        );
        // Blocked: reported as a translation fault of the blocking domain.
        unit.map(
            &d,
            Iova::new(0x10_0000),
            PhysAddr::new(BUF),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
        unit.attach(DeviceId(0x10), Attachment::Blocking).unwrap();
        assert_eq!(
            event(sim.translate(0x10, None, 0x10_0000, Access::READ)),
            EventType::Translation
        );
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    }

    #[test]
    fn stage2_mapping_is_reached_and_read_only_refuses_writes() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        let d = unit.new_domain(Stage::Second, 40).unwrap();
        unit.map(
            &d,
            Iova::new(0x8000_0000),
            PhysAddr::new(BUF),
            0x20_0000,
            Prot::READ,
        )
        .unwrap();
        unit.attach(DeviceId(0x200), Attachment::Paging(&d))
            .unwrap();
        assert_eq!(
            sim.translate(0x200, None, 0x8012_3450, Access::READ),
            Ok(BUF + 0x12_3450)
        );
        let f = sim.translate(0x200, None, 0x8000_0000, Access::WRITE);
        assert_eq!(event(f), EventType::Permission);
        let ipa = f.err().and_then(|f| f.event().and_then(|e| e.ipa));
        assert_eq!(ipa, Some(0x8000_0000));
        assert_eq!(
            event(sim.translate(0x200, None, 0x1000, Access::READ)),
            EventType::Translation
        );
        unit.attach(DeviceId(0x200), Attachment::Blocking).unwrap();
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    }

    #[test]
    fn pasids_reach_their_own_domains() {
        let sim = SimulatedUnit::new(SimConfig::host().with_substreams(8));
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        let a = unit.new_domain(Stage::First, 48).unwrap();
        let b = unit.new_domain(Stage::First, 48).unwrap();
        unit.map(
            &a,
            Iova::new(0x1000),
            PhysAddr::new(BUF),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
        unit.map(
            &b,
            Iova::new(0x1000),
            PhysAddr::new(BUF + 0x8000),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
        unit.attach(DeviceId(0x30), Attachment::Paging(&a)).unwrap();
        unit.attach_pasid(DeviceId(0x30), 7, Attachment::Paging(&b))
            .unwrap();
        assert_eq!(
            sim.translate(0x30, None, 0x1010, Access::READ),
            Ok(BUF + 0x10)
        );
        assert_eq!(
            sim.translate(0x30, Some(7), 0x1010, Access::READ),
            Ok(BUF + 0x8010)
        );
        // A PASID nobody attached: its CD is invalid.
        let f = sim.translate(0x30, Some(9), 0x1010, Access::READ);
        assert!(
            matches!(
                f.map_err(|f| f.event_type()),
                Err(Some(EventType::BadCd | EventType::BadSubstreamId))
            ),
            "{f:?}"
        );
        // Reported with its PASID.
        assert!(sim.dma(0x30, Some(7), 0x5000, Access::READ).is_err());
        let mut seen = Vec::new();
        unit.drain_events(&mut |e| seen.push(*e));
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].event, seen[0].stream_id, seen[0].substream_id),
            (EventType::Translation, 0x30, Some(7))
        );
        unit.attach_pasid(DeviceId(0x30), 7, Attachment::Blocking)
            .unwrap();
        unit.attach(DeviceId(0x30), Attachment::Blocking).unwrap();
        unit.destroy_domain(b).map_err(|(_, e)| e).unwrap();
        unit.destroy_domain(a).map_err(|(_, e)| e).unwrap();
    }

    /// A zeroed, 4 KiB-aligned host page standing for guest memory (IPA == host address,
    /// mapped so in the nest parent).
    struct GuestPage(*mut u64);

    impl GuestPage {
        fn new() -> Self {
            let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<u64>();
            assert!(!p.is_null());
            Self(p)
        }
        fn addr(&self) -> u64 {
            self.0 as u64
        }
        fn set(&self, word: usize, v: u64) {
            assert!(word < 512);
            // SAFETY: inside the page, which lives as long as `self`.
            unsafe { self.0.add(word).write_volatile(v) }
        }
    }

    impl Drop for GuestPage {
        fn drop(&mut self) {
            let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.0.cast(), layout) }
        }
    }

    #[test]
    fn a_nested_guest_stage1_goes_through_the_parents_stage2() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        let s2 = unit.new_domain(Stage::Second, 48).unwrap();
        // The guest's CD (one, S1CDMax = 0) and its 2-level stage-1 table (4K granule,
        // T0SZ = 39: levels 2 and 3), in pages the parent maps at IPA == host address.
        let (cd, l2, l3) = (GuestPage::new(), GuestPage::new(), GuestPage::new());
        for page in [&cd, &l2, &l3] {
            unit.map(
                &s2,
                Iova::new(page.addr()),
                PhysAddr::new(page.addr()),
                0x1000,
                Prot::READ,
            )
            .unwrap();
        }
        // Guest memory at IPA 0x2000_0000 is host memory BUF.
        unit.map(
            &s2,
            Iova::new(0x2000_0000),
            PhysAddr::new(BUF),
            0x1000,
            Prot::READ_WRITE,
        )
        .unwrap();
        // CD: T0SZ 39, TG0 4K, EPD1, V, IPS 48 bits, AFFD, AA64, R, ASID 5; TTB0.
        cd.set(
            0,
            39 | 1 << 30 | 1 << 31 | 5 << 32 | 1 << 35 | 1 << 41 | 1 << 45 | 5 << 48,
        );
        cd.set(1, l2.addr());
        l2.set(0, l3.addr() | 3);
        // IOVA 0x1000 → IPA 0x2000_0000: page, AP[1] (unprivileged), AF.
        l3.set(1, 0x2000_0000 | 3 | 1 << 6 | 1 << 10);

        let viommu = unit.new_viommu(&s2).unwrap();
        let vste = [1 | 0b101 << 1 | cd.addr(), 0, 0, 0, 0, 0, 0, 0];
        let nested = unit.new_nested(&viommu, &vste).unwrap();
        unit.attach(DeviceId(0x77), Attachment::Paging(&nested))
            .unwrap();
        assert_eq!(
            sim.translate(0x77, None, 0x1234, Access::WRITE),
            Ok(BUF + 0x234)
        );
        // Unmapped in the guest's stage 1: a stage-1 fault.
        let f = sim.translate(0x77, None, 0x5000, Access::READ).unwrap_err();
        assert_eq!(f.event_type(), Some(EventType::Translation));
        assert_eq!(
            f.event().and_then(|e| e.stage),
            Some(crate::eventq::FaultStage::Stage1)
        );
        // Mapped by the guest to an IPA the parent does not map: a stage-2 fault, its IPA.
        l3.set(2, 0x3000_0000 | 3 | 1 << 6 | 1 << 10);
        let f = sim.translate(0x77, None, 0x2010, Access::READ).unwrap_err();
        assert_eq!(f.event_type(), Some(EventType::Translation));
        let e = f.event().copied().unwrap();
        assert_eq!(
            (e.stage, e.ipa),
            (Some(crate::eventq::FaultStage::Stage2), Some(0x3000_0000))
        );

        unit.attach(DeviceId(0x77), Attachment::Blocking).unwrap();
        drop(nested);
        unit.destroy_viommu(viommu).map_err(|(_, e)| e).unwrap();
        unit.destroy_domain(s2).map_err(|(_, e)| e).unwrap();
    }

    #[test]
    fn every_granule_walks_pages_and_blocks_at_both_stages() {
        use crate::attributes::Granule;
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        let mut sid = 0x100;
        for (granule, block) in [
            (Granule::Size4K, 1u64 << 21),
            (Granule::Size16K, 1 << 25),
            (Granule::Size64K, 1 << 29),
        ] {
            for stage in [Stage::First, Stage::Second] {
                let d = unit.new_domain_with_granule(stage, 48, granule).unwrap();
                let page = 1u64 << granule.shift();
                // One page, and one block-aligned block-sized range (mapped as a block).
                unit.map(
                    &d,
                    Iova::new(0x1_0000_0000),
                    PhysAddr::new(BUF),
                    page,
                    Prot::READ_WRITE,
                )
                .unwrap();
                unit.map(
                    &d,
                    Iova::new(0x2_0000_0000),
                    PhysAddr::new(block * 4),
                    block,
                    Prot::READ,
                )
                .unwrap();
                unit.attach(DeviceId(sid), Attachment::Paging(&d)).unwrap();
                let what = (granule, stage);
                assert_eq!(
                    sim.translate(sid, None, 0x1_0000_0000 + page - 8, Access::WRITE),
                    Ok(BUF + page - 8),
                    "{what:?}"
                );
                assert_eq!(
                    sim.translate(sid, None, 0x2_0000_0000 + block - 8, Access::READ),
                    Ok(block * 5 - 8),
                    "{what:?}"
                );
                assert_eq!(
                    event(sim.translate(sid, None, 0x2_0000_0000, Access::WRITE)),
                    EventType::Permission,
                    "{what:?}"
                );
                assert_eq!(
                    event(sim.translate(sid, None, 0x1_0000_0000 + page, Access::READ)),
                    EventType::Translation,
                    "{what:?}"
                );
                unit.attach(DeviceId(sid), Attachment::Blocking).unwrap();
                unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
                sid += 1;
            }
        }
    }

    #[test]
    fn a_full_event_queue_drops_events_and_the_driver_sees_the_overflow() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        unit.attach(DeviceId(0x40), Attachment::Blocking).unwrap();
        // 2^5 entries (see `bring_up`): a queue is full with 32 unread records.
        for i in 0..40u64 {
            assert!(sim.dma(0x40, None, i << 12, Access::READ).is_err());
        }
        let mut seen = Vec::new();
        let drained = unit.drain_faults(&mut |f| seen.push(f)).unwrap();
        assert_eq!((drained.records, drained.overflow), (32, true));
        assert_eq!(seen[31].address, 31 << 12);
        assert_eq!(seen[0].device, DeviceId(0x40));
        // Acknowledged: the next fault is recorded and no overflow is reported again.
        assert!(sim.dma(0x40, None, 0x9000, Access::WRITE).is_err());
        let drained = unit.drain_faults(&mut |_| {}).unwrap();
        assert_eq!((drained.records, drained.overflow), (1, false));
    }

    /// The configuration errors a driver never makes, from tables written by hand: a linear
    /// stream table of 16 STEs and one page of CDs, SMMUEN set directly.
    #[test]
    fn configuration_errors_have_their_event_types() {
        use crate::registers::{Readable, Writeable};
        let sim = SimulatedUnit::new(SimConfig::host().with_substreams(4));
        let (strtab, cds) = (GuestPage::new(), GuestPage::new());
        // SAFETY: the frame lives as long as `sim`.
        let r = unsafe { sim.registers().as_ref() };
        r.strtab_base.set(strtab.addr());
        r.strtab_base_cfg.set(4); // linear, LOG2SIZE 4
        r.cr2.set(2); // RECINVSID
        r.cr0.set(1);
        while r.cr0ack.get() & 1 == 0 {
            std::thread::yield_now();
        }
        let ste = |sid: usize, w0: u64, w1: u64| {
            strtab.set(sid * 8, w0);
            strtab.set(sid * 8 + 1, w1);
        };
        let t = |sid: u32, ssid: Option<u32>| {
            sim.translate(sid, ssid, 0x1000, Access::READ)
                .map_err(|f| f.event_type())
        };
        // SID 0: V = 0. SID 1: Config 0b001 (reserved). SID 2: abort, silently. SID 3: bypass.
        ste(1, 1 | 0b001 << 1, 0);
        ste(2, 1, 0);
        ste(3, 1 | 0b100 << 1, 0);
        assert_eq!(t(0, None), Err(Some(EventType::BadSte)));
        assert_eq!(t(1, None), Err(Some(EventType::BadSte)));
        assert_eq!(t(2, None), Err(None));
        assert_eq!(t(3, None), Ok(0x1000));
        assert_eq!(t(3, Some(1)), Err(Some(EventType::BadSubstreamId)));
        assert_eq!(t(16, None), Err(Some(EventType::BadStreamId)));
        // SID 4: stage 1, 16 linear CDs (S1CDMax 4), S1DSS terminate; CD 0 valid, CD 1 not.
        ste(4, 1 | 0b101 << 1 | cds.addr() | 4 << 59, 0b00);
        cds.set(0, 1 << 31 | 1 << 41 | 39);
        assert_eq!(t(4, None), Err(Some(EventType::StreamDisabled)));
        assert_eq!(t(4, Some(1)), Err(Some(EventType::BadCd)));
        assert_eq!(t(4, Some(16)), Err(Some(EventType::BadSubstreamId)));
        // S1DSS bypass: untagged requests skip stage 1; S1DSS substream 0: they use CD 0,
        // whose TTB0 is null here (a walk fault), and SubstreamID 0 is refused.
        ste(4, 1 | 0b101 << 1 | cds.addr() | 4 << 59, 0b01);
        assert_eq!(t(4, None), Ok(0x1000));
        ste(4, 1 | 0b101 << 1 | cds.addr() | 4 << 59, 0b10);
        assert_eq!(t(4, Some(0)), Err(Some(EventType::BadSubstreamId)));
        assert_eq!(t(4, None), Err(Some(EventType::Translation)));
        // SID 5: stage 1 with a null CD pointer: F_CD_FETCH.
        ste(5, 1 | 0b101 << 1, 0);
        assert_eq!(t(5, None), Err(Some(EventType::CdFetch)));
        // CR2.RECINVSID clear: an invalid StreamID is dropped without a record.
        r.cr2.set(0);
        assert!(matches!(
            sim.translate(16, None, 0, Access::READ),
            Err(DmaFault::Silent(Some(_)))
        ));
        // SMMUEN clear: GBPA (bypass out of reset).
        r.cr0.set(0);
        while r.cr0ack.get() & 1 != 0 {
            std::thread::yield_now();
        }
        assert_eq!(t(0, None), Ok(0x1000));
    }

    #[test]
    fn a_refused_command_is_reported_and_the_queue_recovers() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal).unwrap();
        // Opcode 0xff does not exist: CERROR_ILL.
        assert!(unit.submit_raw(&[[0xff, 0]]).is_err());
        assert_eq!(sim.refused_commands(), 1);
        // The queue goes on.
        sim.take_log();
        unit.submit_raw(&[]).unwrap();
        assert!(matches!(sim.take_log().last(), Some(Command::Sync { .. })));
    }
}

#[test]
fn a_dropped_unit_disables_the_smmu_and_gives_every_frame_back() {
    let sim = SimulatedUnit::new(SimConfig::host().with_substreams(8));
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    let d = unit.new_domain(Stage::First, 48).unwrap();
    unit.map(
        &d,
        Iova::new(0x1000),
        PhysAddr::new(0x4000_0000),
        0x1000,
        Prot::READ,
    )
    .unwrap();
    unit.attach(DeviceId(0x10), Attachment::Paging(&d)).unwrap();
    unit.attach_pasid(DeviceId(0x2345), 3, Attachment::Paging(&d))
        .unwrap();
    unit.attach(DeviceId(0x10), Attachment::Blocking).unwrap();
    unit.attach_pasid(DeviceId(0x2345), 3, Attachment::Blocking)
        .unwrap();
    unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    assert!(hal.live_frames() > 0);
    drop(unit);
    assert!(!sim.enabled());
    assert_eq!(hal.live_frames(), 0);
    // GBPA (abort since bring-up) decides now.
    assert_eq!(
        sim.translate(0x10, None, 0x1000, crate::sim::Access::READ),
        Err(crate::sim::DmaFault::Silent(None))
    );
}

#[test]
fn the_object_model_over_the_unit_without_memory_changes_nothing() {
    let sim = SimulatedUnit::new(SimConfig::host());
    let hal = HostHal::new();
    let unit = bring_up(&sim, &hal).unwrap();
    // A stream in a level-2 table not yet created.
    iommu::iommufd::sweep::domain_map_attach(&unit, &hal, DeviceId(0x4321), Stage::First, |iova| {
        sim.translate(0x4321, None, iova, crate::sim::Access::WRITE)
            .ok()
    });
    drop(unit);
}
