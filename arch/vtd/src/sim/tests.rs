//! Host tests of [`VtdUnit`] against the simulated unit: bring-up, attach, map and unmap with
//! their invalidations (register-based and queued), PASIDs, RMRRs, nesting and interrupt
//! remapping, checked through the invalidation log and by reading the unit's tables back.

use std::vec::Vec;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{Error as PtError, Gather, Prot};
use iommu::unit::{
    Attachment, CpuTable, DeviceId, RawRegisters, Stage, TranslationUnit, UnitError,
};

use super::*;
use crate::dmar::Dmar;
use crate::pasid::{Pasid, PasidDirEntry, PasidEntry, Pgtt};
use crate::qi::QueueSize;
use crate::root_table::{
    scalable_context_slot, ContextEntry, ContextHalf, Did, RootEntry, ScalableContextEntry,
    ScalableRootEntry, SourceId,
};
use crate::unit::{Mode, VtdUnit};

/// CAP.FS1GP.
const FS1GP: u64 = 1 << 56;

/// IOTLB register fields: granularity (IIRG) and domain id.
fn iotlb_request(e: &Event) -> Option<(u64, u16)> {
    match e {
        Event::Iotlb { iotlb, .. } => Some(((iotlb >> 60) & 3, (iotlb >> 32) as u16)),
        _ => None,
    }
}

/// Queue descriptor type (6.5.2) and domain id (bits 31:16 of every type that has one).
fn queued(e: &Event) -> Option<(u64, u16)> {
    match e {
        Event::Queued([w0, _]) => Some(((w0 & 0xf) | ((w0 >> 9) & 7) << 4, (w0 >> 16) as u16)),
        _ => None,
    }
}

fn word(hal: &HostHal, table: PhysAddr, index: usize) -> u64 {
    let p = hal.phys_to_virt(PhysAddr::new(table.as_u64() + 8 * index as u64));
    // SAFETY: `table` is a live 4 KiB table frame of the unit and `index` < 512.
    unsafe { p.cast::<u64>().as_ptr().read_volatile() }
}

/// The legacy context entry of `sid` under the unit's root table.
fn legacy_context(hal: &HostHal, root: PhysAddr, sid: SourceId) -> ContextEntry {
    let bus = sid.bus() as usize;
    let re = RootEntry::decode([word(hal, root, 2 * bus), word(hal, root, 2 * bus + 1)]);
    let Some(ct) = re.context_table() else {
        return ContextEntry::NOT_PRESENT;
    };
    let slot = 2 * sid.devfn() as usize;
    ContextEntry::decode([word(hal, ct, slot), word(hal, ct, slot + 1)])
}

/// The scalable-mode PASID entry of (`sid`, `pasid`), if its tables exist.
fn pasid_entry(hal: &HostHal, root: PhysAddr, sid: SourceId, pasid: Pasid) -> Option<PasidEntry> {
    let bus = sid.bus() as usize;
    let re = ScalableRootEntry::decode([word(hal, root, 2 * bus), word(hal, root, 2 * bus + 1)]);
    let (half, slot) = scalable_context_slot(sid.devfn());
    let ct = match half {
        ContextHalf::Lower => re.lower(),
        ContextHalf::Upper => re.upper(),
    }?;
    let ce = ScalableContextEntry::decode(core::array::from_fn(|i| word(hal, ct, 4 * slot + i)));
    let dir = ce.fields()?.pasid_directory;
    let table = PasidDirEntry::decode(word(hal, dir, pasid.directory_index())).table()?;
    let first = 8 * pasid.table_index();
    Some(PasidEntry::decode(core::array::from_fn(|i| {
        word(hal, table, first + i)
    })))
}

const EDU: DeviceId = DeviceId(0x0008); // 00:01.0
const EDU2: DeviceId = DeviceId(0x0010); // 00:02.0

#[test]
fn legacy_unit_with_register_invalidation_attaches_maps_destroys_and_reuses_ids() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    assert!(unit.queue().is_none());
    assert_eq!(
        sim.gsts() & (1 << 31 | 1 << 30),
        1 << 31 | 1 << 30,
        "TE and RTPS"
    );
    let bringup = sim.take_log();
    assert!(
        bringup.contains(&Event::Context((1 << 63) | (1 << 61))),
        "global context-cache invalidation at bring-up: {bringup:?}"
    );
    assert!(bringup
        .iter()
        .any(|e| iotlb_request(e).is_some_and(|(g, _)| g == 1)));

    let info = TranslationUnit::info(&unit);
    assert!(info.second_stage && !info.first_stage && !info.nesting && info.identity);
    assert_eq!(info.pasid_bits, 0);
    assert_eq!(info.second_stage_ia_bits, 48);
    assert_eq!(info.first_stage_ia_bits, 0);
    assert_eq!(info.output_bits, 48);
    assert_eq!(info.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));
    assert_eq!(info.tags, 65536);
    assert!(!info.coherent_walks && !info.ats);
    assert_eq!(
        info.raw,
        RawRegisters::Vtd {
            version: 0x10,
            cap: CAP,
            ecap: ECAP_NO_QI
        }
    );

    let frames_before = hal.live_frames();
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    let buf = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    unit.map(&d, Iova::new(0x10_0000), buf, 4096, Prot::READ_WRITE)
        .unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();
    let ce = legacy_context(&hal, unit_root(&unit), SourceId::from_raw(EDU.0 as u16));
    assert!(ce.is_present());
    assert_eq!(ce.domain_id(), d.id());
    assert_eq!(ce.second_stage_root(), d.root());
    assert_eq!(unit.domain_users(&d), 1);

    // In use: refused, handed back unchanged.
    let (d, err) = unit.destroy_domain(d).unwrap_err();
    assert_eq!(err, UnitError::Busy);
    let id = d.id();
    sim.take_log();

    // Unmap: one page-selective IOTLB invalidation through the registers, for this domain.
    assert_eq!(unit.unmap(&d, Iova::new(0x10_0000), 4096), Ok(4096));
    let log = sim.take_log();
    assert!(
        log.iter().any(|e| matches!(e, Event::Iotlb { iotlb, iva }
            if (iotlb >> 60) & 3 == 3 && (iotlb >> 32) as u16 == id.raw()
                && iva & !0xfff == 0x10_0000)),
        "page-selective IOTLB invalidation: {log:?}"
    );
    // Flush: the same, for a table the embedder changed.
    unit.flush(&d, Iova::new(0x20_0123), 1).unwrap();
    assert!(sim
        .take_log()
        .iter()
        .any(|e| matches!(e, Event::Iotlb { iotlb, iva }
        if (iotlb >> 60) & 3 == 3 && iva & !0xfff == 0x20_0000)));
    assert_eq!(
        unit.flush(&d, Iova::new(0), 0),
        Err(UnitError::PageTable(PtError::ZeroLength))
    );
    assert!(matches!(
        unit.attach_pasid(EDU, 1, Attachment::Paging(&d)),
        Err(UnitError::Unsupported(_))
    ));

    // Blocked: the context entry goes, with a device-selective context invalidation.
    unit.attach(EDU, Attachment::Blocking).unwrap();
    assert!(!legacy_context(&hal, unit_root(&unit), SourceId::from_raw(EDU.0 as u16)).is_present());
    assert!(sim
        .take_log()
        .iter()
        .any(|e| matches!(e, Event::Context(v) if (v >> 61) & 3 == 3)));
    assert_eq!(unit.domain_users(&d), 0);

    // Destroyed: the id's IOTLB entries are invalidated, the table frames go back.
    unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    let log = sim.take_log();
    assert!(
        log.iter().any(|e| iotlb_request(e) == Some((2, id.raw()))),
        "domain-selective IOTLB invalidation of the destroyed id: {log:?}"
    );
    // SAFETY: `buf` was allocated above and nothing maps it any more.
    unsafe { hal.free_frame(buf, FrameSize::SIZE_4K) };
    // Only the context table of bus 0 (created by the first attach) stays.
    assert_eq!(
        hal.live_frames(),
        frames_before + 1,
        "the domain's frames leaked"
    );

    // The id is reused, and the reused domain works.
    let again = unit.new_domain(Stage::Second, 39).unwrap();
    assert_eq!(again.id(), id);
    unit.attach(EDU, Attachment::Paging(&again)).unwrap();
    unit.attach(EDU, Attachment::Identity).unwrap();
    assert_eq!(unit.domain_users(&again), 0);
    unit.destroy_domain(again).map_err(|(_, e)| e).unwrap();

    // A window of ids: fresh ids stop at the limit, given-back ones keep coming.
    let hw = unit.domain_id_high_water();
    unit.set_domain_id_limit(hw + 2);
    let a = unit.new_domain(Stage::Second, 48).unwrap(); // the reused id
    let b = unit.new_domain(Stage::Second, 48).unwrap();
    let c = unit.new_domain(Stage::Second, 48).unwrap();
    assert!(matches!(
        unit.new_domain(Stage::Second, 48),
        Err(UnitError::OutOfIds)
    ));
    assert_eq!(
        (a.id(), b.id().raw(), c.id().raw()),
        (id, hw as u16, hw as u16 + 1)
    );
    for d in [a, b, c] {
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    }
    for _ in 0..100 {
        let d = unit.new_domain(Stage::Second, 48).unwrap();
        assert!(u32::from(d.id().raw()) < hw + 2);
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    }
    unit.set_domain_id_limit(u32::MAX);
}

fn unit_root<H: Hal + Clone>(unit: &VtdUnit<'_, H>) -> PhysAddr {
    unit.root_table()
}

#[test]
fn scalable_unit_with_queue_attaches_pasids_and_shares_cpu_tables() {
    let sim = SimulatedUnit::new(CAP | FS1GP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    assert!(unit.queue().is_some());
    let info = TranslationUnit::info(&unit);
    assert!(info.first_stage && info.second_stage && !info.nesting);
    assert_eq!(info.pasid_bits, 5);
    assert_eq!(info.first_stage_ia_bits, 48);
    assert_eq!(info.page_sizes, (1 << 12) | (1 << 21) | (1 << 30));
    sim.take_log();

    // A CPU table (any zeroed frame will do: the unit only points at it).
    let cpu_root = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    let cpu = CpuTable {
        root: cpu_root,
        ia_bits: 48,
        asid: 0,
        mair: 0,
    };
    for (bad, why) in [(39, "depth"), (57, "FS5LP")] {
        let r = unit.new_shared_domain(&CpuTable {
            ia_bits: bad,
            ..cpu
        });
        assert!(
            matches!(r, Err(UnitError::Unsupported(s)) if s.contains(why)),
            "ia_bits {bad}"
        );
    }
    let misaligned = CpuTable {
        root: PhysAddr::new(cpu_root.as_u64() + 8),
        ..cpu
    };
    assert!(matches!(
        unit.new_shared_domain(&misaligned),
        Err(UnitError::PageTable(PtError::UnalignedPhys))
    ));
    let shared = unit.new_shared_domain(&cpu).unwrap();
    assert_eq!(shared.root(), cpu_root);
    // A VM's VMSA stage-2 table is not a format VT-d walks: refused by name.
    assert!(matches!(
        unit.new_vm_domain(&iommu::unit::VmTable {
            root: cpu_root,
            ia_bits: 40,
            vmid: 1,
        }),
        Err(UnitError::Unsupported(s)) if s.contains("stage-2")
    ));
    assert!(matches!(
        unit.map(&shared, Iova::new(0), cpu_root, 4096, Prot::READ),
        Err(UnitError::Unsupported(_))
    ));
    assert!(matches!(
        unit.unmap(&shared, Iova::new(0), 4096),
        Err(UnitError::Unsupported(_))
    ));

    // PASID 3 of edu through the CPU table; PASID 32 is beyond 5 bits.
    unit.attach_pasid(EDU, 3, Attachment::Paging(&shared))
        .unwrap();
    let sid = SourceId::from_raw(EDU.0 as u16);
    let e = pasid_entry(&hal, unit_root(&unit), sid, Pasid::new(3).unwrap()).unwrap();
    assert!(e.is_present());
    assert_eq!(e.pgtt(), Some(Pgtt::FirstStage));
    assert_eq!(e.first_stage_root(), cpu_root);
    assert_eq!(e.domain_id(), shared.id());
    // RID_PASID untouched: the device is still blocked for requests without a PASID.
    assert!(pasid_entry(&hal, unit_root(&unit), sid, Pasid::ZERO).is_none_or(|e| !e.is_present()));
    let log = sim.take_log();
    assert!(
        log.iter()
            .any(|e| queued(e) == Some((7, shared.id().raw()))),
        "PASID-cache invalidation after the entry was written: {log:?}"
    );
    assert!(matches!(
        unit.attach_pasid(EDU, 32, Attachment::Paging(&shared)),
        Err(UnitError::Unsupported(_))
    ));
    // A second, different PASID for the same first-stage domain is refused, changing nothing.
    assert!(matches!(
        unit.attach_pasid(EDU2, 4, Attachment::Paging(&shared)),
        Err(UnitError::Unsupported(_))
    ));
    assert!(pasid_entry(
        &hal,
        unit_root(&unit),
        SourceId::from_raw(EDU2.0 as u16),
        Pasid::new(4).unwrap()
    )
    .is_none_or(|e| !e.is_present()));
    // The same PASID on another device is fine.
    unit.attach_pasid(EDU2, 3, Attachment::Paging(&shared))
        .unwrap();
    assert_eq!(unit.domain_users(&shared), 2);
    sim.take_log();

    // Flush: PASID-based IOTLB invalidations (type 6) for RID_PASID and PASID 3, one wait.
    unit.flush(&shared, Iova::new(0x40_0000), 0x2000).unwrap();
    let log = sim.take_log();
    let piotlb: Vec<u64> = log
        .iter()
        .filter_map(|e| match e {
            Event::Queued([w0, _]) if w0 & 0xf == 6 => Some((w0 >> 32) & 0xf_ffff),
            _ => None,
        })
        .collect();
    assert_eq!(piotlb, [0, 3], "PASIDs flushed: {log:?}");
    assert_eq!(
        log.iter()
            .filter(|e| queued(e).is_some_and(|(t, _)| t == 5))
            .count(),
        1
    );

    // Busy until both PASID entries are gone; then destroyed without freeing the CPU table.
    let (shared, err) = unit.destroy_domain(shared).unwrap_err();
    assert_eq!(err, UnitError::Busy);
    unit.attach_pasid(EDU, 3, Attachment::Blocking).unwrap();
    unit.attach_pasid(EDU2, 3, Attachment::Blocking).unwrap();
    assert!(
        !pasid_entry(&hal, unit_root(&unit), sid, Pasid::new(3).unwrap())
            .unwrap()
            .is_present()
    );
    let id = shared.id();
    unit.destroy_domain(shared).map_err(|(_, e)| e).unwrap();
    let log = sim.take_log();
    assert!(
        log.iter().any(|e| queued(e) == Some((2, id.raw()))),
        "{log:?}"
    );
    assert_eq!(
        word(&hal, cpu_root, 0),
        0,
        "the CPU table is the embedder's"
    );

    // A second-stage domain at RID_PASID and its reuse of the id.
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    assert_eq!(d.id(), id);
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();
    let e = pasid_entry(&hal, unit_root(&unit), sid, Pasid::ZERO).unwrap();
    assert_eq!(e.pgtt(), Some(Pgtt::SecondStage));
    unit.attach(EDU, Attachment::Blocking).unwrap();
    unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    // SAFETY: allocated above; the unit no longer points at it.
    unsafe { hal.free_frame(cpu_root, FrameSize::SIZE_4K) };
}

/// A DMAR with one RMRR whose scopes are `paths` (each a bus-0 path of (device, function)).
fn dmar_with_rmrr(base: u64, limit: u64, paths: &[&[(u8, u8)]]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"DMAR");
    t.extend_from_slice(&[0; 4]);
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"OEMID OEMTABLE");
    t.extend_from_slice(&[0; 12]);
    t.extend_from_slice(&[47, 0]);
    t.extend_from_slice(&[0; 10]);
    let mut rmrr = Vec::new();
    rmrr.extend_from_slice(&1u16.to_le_bytes());
    rmrr.extend_from_slice(&[0; 2]); // length, below
    rmrr.extend_from_slice(&[0, 0, 0, 0]); // reserved, segment 0
    rmrr.extend_from_slice(&base.to_le_bytes());
    rmrr.extend_from_slice(&limit.to_le_bytes());
    for path in paths {
        rmrr.extend_from_slice(&[1, (6 + 2 * path.len()) as u8, 0, 0, 0, 0]);
        for &(d, f) in *path {
            rmrr.extend_from_slice(&[d, f]);
        }
    }
    let len = rmrr.len() as u16;
    rmrr[2..4].copy_from_slice(&len.to_le_bytes());
    t.extend_from_slice(&rmrr);
    let len = t.len() as u32;
    t[4..8].copy_from_slice(&len.to_le_bytes());
    let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    t[9] = sum.wrapping_neg();
    t
}

#[test]
fn rmrr_ranges_are_identity_mapped_for_their_device_in_every_domain() {
    let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    let (base, limit) = (0xe_0000, 0xe_ffff);

    // A scope behind a bridge cannot be resolved without PCI enumeration: refused whole.
    let bridged = dmar_with_rmrr(base, limit, &[&[(1, 0)], &[(0x1e, 0), (0, 0)]]);
    let dmar = Dmar::parse(&bridged).unwrap();
    assert!(matches!(
        unit.add_rmrrs(&dmar, 0),
        Err(UnitError::Unsupported(_))
    ));
    assert_eq!(unit.rmrrs_of(EDU).count(), 0);
    let bytes = dmar_with_rmrr(base, limit, &[&[(1, 0)]]);
    let dmar = Dmar::parse(&bytes).unwrap();
    assert_eq!(unit.add_rmrrs(&dmar, 0), Ok(1));
    assert_eq!(unit.add_rmrrs(&dmar, 1), Ok(0), "another segment");
    assert_eq!(unit.rmrrs_of(EDU).count(), 1);
    assert_eq!(
        unit.add_rmrr(EDU, 0x1001, 0x1fff),
        Err(UnitError::PageTable(PtError::UnalignedIova))
    );

    // Blocking an RMRR device is refused (as Linux does); other devices are unaffected.
    assert!(matches!(
        unit.attach(EDU, Attachment::Blocking),
        Err(UnitError::Unsupported(_))
    ));
    unit.attach(EDU2, Attachment::Blocking).unwrap();

    // Attach to a paging domain: the range is identity-mapped there first.
    let d = unit.new_domain(Stage::Second, 48).unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();
    for iova in [base, base + 0x8000, limit & !0xfff] {
        assert_eq!(d.translate(Iova::new(iova)), Ok(PhysAddr::new(iova)));
    }
    // Another device in the same domain, and a re-attach: the mapping is already there.
    unit.attach(EDU2, Attachment::Paging(&d)).unwrap();
    unit.attach(EDU, Attachment::Paging(&d)).unwrap();

    // A domain mapping something else inside the range is refused; nothing changes.
    let other = unit.new_domain(Stage::Second, 48).unwrap();
    let frame = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    unit.map(&other, Iova::new(base + 0x3000), frame, 4096, Prot::READ)
        .unwrap();
    assert_eq!(
        unit.attach(EDU, Attachment::Paging(&other)),
        Err(UnitError::PageTable(PtError::AlreadyMapped))
    );
    assert_eq!(
        other.translate(Iova::new(base)),
        Err(UnitError::PageTable(PtError::NothingMapped))
    );
    let ce = legacy_context(&hal, unit_root(&unit), SourceId::from_raw(EDU.0 as u16));
    assert_eq!(ce.domain_id(), d.id(), "still in its old domain");

    // Identity is fine (the range stays reachable); then the domain can go.
    unit.attach(EDU, Attachment::Identity).unwrap();
    unit.attach(EDU2, Attachment::Blocking).unwrap();
    unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
    unit.unmap(&other, Iova::new(base + 0x3000), 4096).unwrap();
    unit.destroy_domain(other).map_err(|(_, e)| e).unwrap();
    // SAFETY: allocated above, unmapped.
    unsafe { hal.free_frame(frame, FrameSize::SIZE_4K) };
}

/// ECAP.NEST.
const NEST: u64 = 1 << 26;

/// The queued IOTLB invalidations (type 2): (granularity, domain id, ADDR | IH | AM).
fn queued_iotlb(log: &[Event]) -> Vec<(u64, u16, u64)> {
    log.iter()
        .filter_map(|e| match e {
            Event::Queued([w0, w1]) if w0 & 0xf == 2 => {
                Some(((w0 >> 4) & 3, (w0 >> 16) as u16, *w1))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn nested_domains_get_host_ids_that_parent_unmaps_and_guest_invalidations_reach() {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE | NEST);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    assert!(TranslationUnit::info(&unit).nesting);

    let parent = unit.new_domain(Stage::Second, 48).unwrap();
    let page = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    unit.map(&parent, Iova::new(0x10_0000), page, 4096, Prot::READ_WRITE)
        .unwrap();
    let viommu = unit.new_viommu(&parent).unwrap();

    // A guest's first-stage entry: P | AW 2 | PGTT 001, DID 0x42, FSPTPTR 0x1234_5000 | WPE.
    let guest = |did: u64| [0x49, did, 0x1234_5010, 0, 0, 0, 0, 0];
    let a = unit.new_nested(&viommu, &guest(0x42)).unwrap();
    let host = a.id();
    assert_ne!(
        host,
        parent.id(),
        "nested translations get a host id of their own"
    );
    assert_eq!(viommu.host_domain(Did::new(0x42)), Some(host));
    // Another nested domain with the same guest id shares the host id; another guest id not.
    let b = unit.new_nested(&viommu, &guest(0x42)).unwrap();
    assert_eq!(b.id(), host);
    let c = unit.new_nested(&viommu, &guest(0x43)).unwrap();
    assert!(c.id() != host && c.id() != parent.id());
    assert_eq!(viommu.nested_domains(), 3);
    // A guest pass-through entry with a guest id that tags nested translations: refused.
    let pass_through = [0x1 | 4 << 6, 0x42, 0, 0, 0, 0, 0, 0];
    assert!(matches!(
        unit.new_nested(&viommu, &pass_through),
        Err(UnitError::GuestEntry(s)) if s.starts_with("DID")
    ));
    assert_eq!(viommu.nested_domains(), 3);
    // Map and unmap belong to the guest's table and the parent.
    assert!(matches!(
        unit.unmap(&a, Iova::new(0), 4096),
        Err(UnitError::Unsupported(_))
    ));

    // Attach: a nested PASID entry, read back from the unit's tables.
    let sid = SourceId::from_raw(EDU.0 as u16);
    unit.attach_pasid(EDU, 3, Attachment::Paging(&a)).unwrap();
    let e = pasid_entry(&hal, unit_root(&unit), sid, Pasid::new(3).unwrap()).unwrap();
    let f = e.fields();
    assert!(f.present && f.reserved.is_none());
    assert_eq!(f.pgtt, Ok(Pgtt::Nested));
    assert_eq!(f.domain, host);
    assert_eq!(f.first_stage_root, PhysAddr::new(0x1234_5000));
    assert_eq!(f.first_stage_paging, 0, "4-level");
    assert!(f.write_protect && !f.supervisor_requests);
    assert_eq!(f.second_stage_root, parent.root());
    assert_eq!(f.aw, 2, "the parent's 4-level depth");
    assert_eq!(unit.domain_users(&a), 1);
    sim.take_log();

    // A parent unmap invalidates the parent's id and both nested ids over the range, with
    // IH clear for the nested ones.
    assert_eq!(unit.unmap(&parent, Iova::new(0x10_0000), 4096), Ok(4096));
    let iotlb = queued_iotlb(&sim.take_log());
    let mut got_nested: Vec<_> = iotlb
        .iter()
        .filter(|i| i.1 != parent.id().raw())
        .copied()
        .collect();
    got_nested.sort();
    let mut want_nested = std::vec![(3, host.raw(), 0x10_0000), (3, c.id().raw(), 0x10_0000)];
    want_nested.sort();
    assert_eq!(got_nested, want_nested, "{iotlb:?}");
    assert!(iotlb
        .iter()
        .any(|i| i.1 == parent.id().raw() && i.0 == 3 && i.2 & !0xfff == 0x10_0000));
    // And so does a flush of the parent (a table the embedder changed).
    unit.flush(&parent, Iova::new(0x20_0000), 0x2000).unwrap();
    let iotlb = queued_iotlb(&sim.take_log());
    assert!(
        iotlb.contains(&(3, host.raw(), 0x20_0001)),
        "two pages (AM 1) for the nested id: {iotlb:?}"
    );
    // Past the threshold (1 TiB: 1024 blocks of 2^MAMV pages): domain-selective for each.
    unit.flush(&parent, Iova::new(0), 1 << 40).unwrap();
    let iotlb = queued_iotlb(&sim.take_log());
    for id in [parent.id(), host, c.id()] {
        assert!(iotlb.contains(&(2, id.raw(), 0)), "{iotlb:?}");
    }
    assert_eq!(iotlb.len(), 3, "{iotlb:?}");

    // A guest's PASID-based IOTLB invalidation with its domain id reaches the host id; one
    // with a pass-through binding still reaches the parent's.
    let piotlb = |did: u64| [0x6 | 2 << 4 | did << 16 | 3 << 32, 0, 0, 0];
    let devices = |v: u32| (v == 0x10).then_some(EDU);
    let f = unit.forward_invalidations(&viommu, &devices, &[piotlb(0x42), piotlb(0x43)]);
    assert_eq!((f.done, f.refused), (2, None));
    let dids: Vec<_> = sim
        .take_log()
        .iter()
        .filter_map(|e| queued(e).filter(|(t, _)| *t == 6).map(|(_, d)| d))
        .collect();
    assert_eq!(dids, [host.raw(), c.id().raw()]);
    let pt = unit
        .new_nested(&viommu, &[0x1 | 4 << 6, 0x50, 0, 0, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(pt.id(), parent.id());
    let f = unit.forward_invalidations(&viommu, &devices, &[piotlb(0x50)]);
    assert_eq!((f.done, f.refused), (1, None));
    assert!(sim
        .take_log()
        .iter()
        .any(|e| queued(e) == Some((6, parent.id().raw()))));
    let f = unit.forward_invalidations(&viommu, &devices, &[piotlb(0x44)]);
    assert_eq!(f.done, 0);

    // The vIOMMU and the parent are busy while nested domains exist; `a` while attached.
    let viommu = match unit.destroy_viommu(viommu) {
        Err((v, UnitError::Busy)) => v,
        _ => panic!("destroy_viommu with nested domains"),
    };
    let (parent, err) = unit.destroy_domain(parent).unwrap_err();
    assert_eq!(err, UnitError::Busy);
    let (a, err) = unit.destroy_domain(a).unwrap_err();
    assert_eq!(err, UnitError::Busy);
    unit.attach_pasid(EDU, 3, Attachment::Blocking).unwrap();
    sim.take_log();

    // The first of two domains with the host id goes: the id stays, still flushed with the
    // parent.
    unit.destroy_domain(a).map_err(|(_, e)| e).unwrap();
    assert_eq!(viommu.host_domain(Did::new(0x42)), Some(host));
    assert!(
        queued_iotlb(&sim.take_log()).is_empty(),
        "nothing to release yet"
    );
    unit.flush(&parent, Iova::new(0x10_0000), 4096).unwrap();
    assert!(queued_iotlb(&sim.take_log())
        .iter()
        .any(|i| i.1 == host.raw()));
    // The last one: a domain-selective PASID-cache and IOTLB invalidation of the host id,
    // which then is no longer flushed with the parent and goes back for reuse.
    unit.destroy_domain(b).map_err(|(_, e)| e).unwrap();
    let log = sim.take_log();
    assert!(
        log.iter().any(|e| queued(e) == Some((7, host.raw()))),
        "{log:?}"
    );
    assert!(
        queued_iotlb(&log)
            .iter()
            .any(|i| i.0 == 2 && i.1 == host.raw()),
        "{log:?}"
    );
    assert_eq!(viommu.host_domain(Did::new(0x42)), None);
    unit.flush(&parent, Iova::new(0x10_0000), 4096).unwrap();
    let iotlb = queued_iotlb(&sim.take_log());
    assert!(!iotlb.iter().any(|i| i.1 == host.raw()), "{iotlb:?}");
    assert!(iotlb.iter().any(|i| i.1 == c.id().raw()));
    let c_id = c.id();
    unit.destroy_domain(c).map_err(|(_, e)| e).unwrap();
    unit.destroy_domain(pt).map_err(|(_, e)| e).unwrap();
    assert_eq!(viommu.nested_domains(), 0);
    unit.destroy_viommu(viommu).map_err(|(_, e)| e).unwrap();
    let again = unit.new_domain(Stage::Second, 48).unwrap();
    assert!(
        again.id() == host || again.id() == c_id,
        "a released id is reused"
    );
    unit.destroy_domain(again).map_err(|(_, e)| e).unwrap();
    unit.destroy_domain(parent).map_err(|(_, e)| e).unwrap();
    // SAFETY: allocated above; unmapped from the parent, which is gone.
    unsafe { hal.free_frame(page, FrameSize::SIZE_4K) };
}

#[test]
fn without_nest_a_guest_first_stage_is_refused_after_its_check() {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let parent = unit.new_domain(Stage::Second, 48).unwrap();
    let viommu = unit.new_viommu(&parent).unwrap();
    let high = unit.domain_id_high_water();
    assert_eq!(
        unit.new_nested(&viommu, &[0x49, 0x42, 0x1234_5010, 0, 0, 0, 0, 0])
            .err(),
        Some(UnitError::Unsupported("nested translation (ECAP.NEST)"))
    );
    // A bad entry is refused by its field first.
    assert!(matches!(
        unit.new_nested(&viommu, &[0x49, 0x42, 0x1234_5010 | 1 << 9, 0, 0, 0, 0, 0]),
        Err(UnitError::GuestEntry(_))
    ));
    assert_eq!(unit.domain_id_high_water(), high, "no id taken");
    assert_eq!(viommu.nested_domains(), 0);
    unit.destroy_viommu(viommu).map_err(|(_, e)| e).unwrap();
    unit.destroy_domain(parent).map_err(|(_, e)| e).unwrap();
}

/// QEMU's legacy ECAP with `intremap=on`: QI, IR, PT, IRO 0xf, MHMV 15 (no EIM).
const ECAP_IR: u64 = 0x0000_0000_00f0_0f4a;

#[test]
fn interrupt_remapping_allocates_retargets_and_frees_with_iec() {
    use crate::interrupt_remapping::{irte::Irte, message, ApicMode};
    use iommu::irq::{InterruptRemapper, InterruptTarget};

    // A unit without ECAP.IR refuses, typed, before touching anything.
    let plain = SimulatedUnit::new(CAP, ECAP_SCALABLE & !(1 << 3));
    let plain_regs = plain.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&plain_regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    assert!(matches!(
        unit.enable_interrupt_remapping(256, ApicMode::Xapic),
        Err(UnitError::Unsupported(_))
    ));
    let target = InterruptTarget {
        vector: 0x40,
        cpu: 0,
    };
    assert!(matches!(
        unit.allocate(EDU, target),
        Err(UnitError::Unsupported(_))
    ));
    drop(unit);

    let sim = SimulatedUnit::new(CAP, ECAP_IR);
    let regs = sim.registers();
    let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
    sim.take_log();
    assert!(matches!(
        unit.enable_interrupt_remapping(100, ApicMode::Xapic),
        Err(UnitError::Unsupported(_))
    ));
    assert!(matches!(
        unit.enable_interrupt_remapping(256, ApicMode::X2apic),
        Err(UnitError::Unsupported(_))
    ));
    unit.enable_interrupt_remapping(256, ApicMode::Xapic)
        .unwrap();
    assert_eq!(
        unit.enable_interrupt_remapping(256, ApicMode::Xapic),
        Err(UnitError::Busy)
    );
    assert!(unit.interrupt_remapping_enabled());
    assert_eq!(
        sim.gsts() & (1 << 25 | 1 << 24 | 1 << 23),
        1 << 25 | 1 << 24,
        "IRES, IRTPS, not CFIS"
    );
    let irta = Regs(sim.base.as_ptr() as usize).r64(0xb8);
    assert_eq!(irta & 0xfff, 7, "S = 7 (256 entries), EIME clear");
    assert_eq!(
        queued_descriptors(&sim.take_log()),
        [[0x4, 0]],
        "one global IEC"
    );

    // Allocate: entry 0, pinned to the device, remappable message.
    let mut irq = unit.allocate(EDU, target).unwrap();
    assert_eq!(irq.handle, 0);
    assert_eq!(irq.message, message::remappable(0));
    assert_eq!(irq.message.address, 0xfee0_0010);
    assert_eq!(
        unit.irte(0),
        Some(
            Irte::fixed(
                0x40,
                crate::interrupt_remapping::irte::Destination::Xapic(0),
                0x8
            )
            .encode()
        )
    );
    assert_eq!(unit.irte(0).map(|w| w[0] & 1), Some(1));
    let second = unit
        .allocate(
            EDU2,
            InterruptTarget {
                vector: 0x41,
                cpu: 1,
            },
        )
        .unwrap();
    assert_eq!(second.handle, 1);
    sim.take_log();

    // Retarget: the low word changes, one index-selective IEC (G = 1, IIDX = 0).
    unit.retarget(
        &mut irq,
        InterruptTarget {
            vector: 0x42,
            cpu: 2,
        },
    )
    .unwrap();
    assert_eq!(irq.target.vector, 0x42);
    let w = unit.irte(0).unwrap();
    assert_eq!((w[0] >> 16) as u8, 0x42);
    assert_eq!((w[0] >> 40) as u8, 2, "xAPIC destination in DST bits 15:8");
    assert_eq!(queued_descriptors(&sim.take_log()), [[0x14, 0]]);

    // Refusals leave everything as it was.
    assert!(unit
        .allocate(
            EDU,
            InterruptTarget {
                vector: 0x10,
                cpu: 0
            }
        )
        .is_err());
    assert!(unit
        .allocate(
            EDU,
            InterruptTarget {
                vector: 0x40,
                cpu: 256
            }
        )
        .is_err());
    let mut forged = irq;
    forged.device = EDU2;
    assert_eq!(
        unit.retarget(&mut forged, target),
        Err(UnitError::UnknownDevice(EDU2))
    );
    assert_eq!(unit.irte(0), Some(w));

    // Free: not present, IEC of index 1, and the handle cannot be freed twice.
    unit.free(second).unwrap();
    assert_eq!(unit.irte(1).map(|w| w[0]), Some(0));
    assert_eq!(queued_descriptors(&sim.take_log()), [[0x1_0000_0014, 0]]);
    assert!(unit.free(second).is_err());
    // The freed entry is handed out again.
    assert_eq!(unit.allocate(EDU2, target).unwrap().handle, 1);
}

/// The queue descriptors in `log`, wait descriptors left out.
fn queued_descriptors(log: &[Event]) -> Vec<[u64; 2]> {
    log.iter()
        .filter_map(|e| match e {
            Event::Queued(w) if w[0] & 0xf != 5 => Some(*w),
            _ => None,
        })
        .collect()
}

/// The queued descriptors' types (6.5.2: 2 IOTLB, 5 wait, 6 PASID-based IOTLB) and domain ids.
fn queued_types(log: &[Event]) -> Vec<(u64, u16)> {
    log.iter().filter_map(queued).collect()
}

#[test]
fn deferred_unmaps_share_one_invalidation_and_one_wait() {
    const PAGES: u64 = 32;
    const BASE: u64 = 0x10_0000;
    let sim = SimulatedUnit::new(CAP | FS1GP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let queue = unit.queue().unwrap();
    // Second stage: IOTLB descriptors (type 2); first stage: PASID-based ones (type 6).
    for (stage, kind) in [(Stage::Second, 2), (Stage::First, 6)] {
        let d = unit.new_domain(stage, 48).unwrap();
        let buf = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
        let map_all = || {
            for i in 0..PAGES {
                unit.map(&d, Iova::new(BASE + i * 4096), buf, 4096, Prot::READ_WRITE)
                    .unwrap();
            }
        };
        map_all();
        sim.take_log();

        let before = queue.submitted();
        let mut gather = Gather::new();
        for i in 0..PAGES {
            assert_eq!(
                unit.unmap_deferred(&d, Iova::new(BASE + i * 4096), 4096, &mut gather),
                Ok(4096)
            );
        }
        assert_eq!(
            queue.submitted(),
            before,
            "{stage:?}: no descriptor before the flush"
        );
        assert_eq!(unit.flush_deferred(&d, gather), Ok(()));
        let after = queue.submitted();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (2, 1),
            "{stage:?}: one invalidation and one wait, in one batch"
        );
        let log = sim.take_log();
        assert_eq!(
            queued_types(&log),
            [(kind, d.id().raw()), (5, 0)],
            "{stage:?}"
        );

        // Strict: one invalidation and one wait per unmap.
        map_all();
        let before = queue.submitted();
        for i in 0..PAGES {
            assert_eq!(unit.unmap(&d, Iova::new(BASE + i * 4096), 4096), Ok(4096));
        }
        let after = queue.submitted();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (2 * PAGES, PAGES),
            "{stage:?}: strict unmaps"
        );
        unit.destroy_domain(d).map_err(|(_, e)| e).unwrap();
        // SAFETY: allocated above; no longer mapped anywhere.
        unsafe { hal.free_frame(buf, FrameSize::SIZE_4K) };
    }
}

#[test]
fn deferred_unmap_refusals_change_nothing() {
    let sim = SimulatedUnit::new(CAP | FS1GP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
    let queue = unit.queue().unwrap();
    let a = unit.new_domain(Stage::Second, 48).unwrap();
    let b = unit.new_domain(Stage::Second, 48).unwrap();
    let buf = hal.alloc_frame(FrameSize::SIZE_4K).unwrap();
    unit.map(&a, Iova::new(0), buf, 4096, Prot::READ).unwrap();
    unit.map(&b, Iova::new(0), buf, 4096, Prot::READ).unwrap();
    let cpu = CpuTable {
        root: hal.alloc_frame(FrameSize::SIZE_4K).unwrap(),
        ia_bits: 48,
        asid: 0,
        mair: 0,
    };
    let shared = unit.new_shared_domain(&cpu).unwrap();
    let before = queue.submitted();

    let mut g = Gather::new();
    assert!(matches!(
        unit.unmap_deferred(&shared, Iova::new(0), 4096, &mut g),
        Err(UnitError::Unsupported(_))
    ));
    assert_eq!(
        unit.unmap_deferred(&a, Iova::new(0x1000), 4096, &mut g),
        Err(UnitError::PageTable(PtError::NothingMapped))
    );
    assert!(g.is_empty());
    assert_eq!(
        unit.unmap_deferred(&a, Iova::new(0), 4096, &mut g),
        Ok(4096)
    );
    // a's gather on b: refused, b untouched, nothing issued.
    assert_eq!(
        unit.unmap_deferred(&b, Iova::new(0), 4096, &mut g),
        Err(UnitError::PageTable(PtError::ForeignGather))
    );
    assert_eq!(
        unit.map(&b, Iova::new(0), buf, 4096, Prot::READ),
        Err(UnitError::PageTable(PtError::AlreadyMapped))
    );
    assert_eq!(
        unit.flush_deferred(&b, g),
        Err(UnitError::PageTable(PtError::ForeignGather))
    );
    assert_eq!(queue.submitted(), before);
    assert!(matches!(
        unit.flush_deferred(&shared, Gather::new()),
        Err(UnitError::Unsupported(_))
    ));
}
