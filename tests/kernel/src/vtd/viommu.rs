//! VT-d vIOMMU tests: the kernel plays a tiny hypervisor whose "guest" owns one edu
//! under a virtual requester id. The guest's memory is a second-stage nest parent; its PASID
//! entries become nested domains; its invalidation descriptors are checked, translated and
//! issued. QEMU 10's VT-d has no nesting (ECAP.NEST), so a guest first stage is checked and then
//! refused; a guest pass-through entry gives a domain translated by the parent alone, which
//! QEMU runs.

use alloc::vec::Vec;

use super::dma::unit;
use crate::dma::{DmaBuffer, IA_BITS, IOVA_A};
use crate::platform::{edu_devices, EduDevice};
use crate::shadow::GuestIommu;
use crate::Machine;
use iommu::addr::Iova;
use iommu::iommufd::GuestFormat;
use iommu::pagetable::{Prot, VtdSecondStage};
use iommu::unit::{Attachment, DeviceId, FaultKind, Forwarded, Stage, TranslationUnit, UnitError};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};
use iommu_vtd::unit::Mode;

fn device_id(e: &EduDevice) -> DeviceId {
    DeviceId(u32::from(e.bdf.requester_id()))
}

/// The guest's name for its edu: 00:01.0.
pub(super) const GUEST_SID: u32 = 0x0008;
/// The guest's domain id in its PASID entries and invalidations.
pub(super) const GUEST_DID: u64 = 0x42;

/// A guest's pass-through PASID entry (9.6): P | AW 2 << 2 | PGTT 100 << 6; DID.
pub(super) const GUEST_PASS_THROUGH: [u64; 8] = [0x109, GUEST_DID, 0, 0, 0, 0, 0, 0];
/// A guest's first-stage PASID entry: P | AW 2 << 2 | PGTT 001 << 6; DID; FSPTPTR 0x20_0000,
/// 4-level, WPE (bit 132).
pub(super) const GUEST_FIRST_STAGE: [u64; 8] = [0x49, GUEST_DID, 0x20_0010, 0, 0, 0, 0, 0];

/// PASID-based IOTLB invalidation (6.5.2.4), PASID-selective (G 10) for PASID 0.
pub(super) const fn piotlb(did: u64) -> [u64; 4] {
    [0x6 | 2 << 4 | did << 16, 0, 0, 0]
}

/// Invalidation wait (6.5.2.8) with a status write to a guest address the host must not write.
pub(super) const GUEST_WAIT: [u64; 4] = [0x5 | 1 << 5 | 0x1234 << 32, 0x10_0000, 0, 0];

/// Device-TLB invalidation (6.5.2.5) of one page at 0 for source id `sid`.
/// [`crate::shadow`] with a guest that writes VT-d second-stage tables (AW 1) and invalidates
/// their pages with page-selective IOTLB descriptors (6.5.2.3) under its domain id.
pub(super) fn shadowing(m: &mut Machine) -> TestResult {
    let guest = GuestIommu {
        format: GuestFormat::VtdSecondStage { aw: 1 },
        encoder: VtdSecondStage::for_aw(1, 48).map_err(fail)?,
        tag: GUEST_DID as u32,
        virtual_id: GUEST_SID,
        page: |did, giova| [0x2 | 3 << 4 | u64::from(did) << 16, giova, 0, 0],
        wait: GUEST_WAIT,
    };
    crate::shadow::a_guest_drives_its_own_tables_through_shadowing(&super::dma::rig(m)?, &guest)
}

pub(super) const fn device_tlb(sid: u64) -> [u64; 4] {
    [0x3 | sid << 32, 0, 0, 0]
}

/// A vIOMMU needs a scalable-mode unit and a second-stage parent: refused elsewhere by name.
pub(super) fn viommu_needs_scalable_mode_and_a_second_stage_parent(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    let flts = m.cmdline.get("vtd.mode") == Some("flts");
    let stage = if flts { Stage::First } else { Stage::Second };
    let parent = unit.new_domain(stage, IA_BITS).map_err(fail)?;
    let r = unit.new_viommu(&parent);
    match (unit.mode(), flts) {
        (Mode::Legacy, _) => ensure_eq!(
            r.err(),
            Some(UnitError::Unsupported(
                "vIOMMU on a legacy-mode unit (nesting needs scalable-mode PASID entries)"
            ))
        ),
        (Mode::Scalable, true) => ensure_eq!(
            r.err(),
            Some(UnitError::Unsupported(
                "nest parent that is not a second-stage paging domain"
            ))
        ),
        (Mode::Scalable, false) => {
            let v = r.map_err(fail)?;
            ensure_eq!(v.parent().domain, parent.id());
            ensure_eq!(v.parent().root, parent.root());
            ensure_eq!(v.parent().ia_bits, IA_BITS);
            ensure_eq!(v.nested_domains(), 0);
            unit.destroy_viommu(v).map_err(|(_, e)| fail(e))?;
        }
    }
    Ok(())
}

/// The guest's PASID entry is checked field by field before anything else: a bad one is
/// refused naming the field; a good first-stage one then meets QEMU's missing ECAP.NEST.
/// Nothing changes on a refusal.
pub(super) fn guest_pasid_entry_is_checked_before_nesting_is_refused(
    m: &mut Machine,
) -> TestResult {
    let unit = unit(m)?;
    if m.cmdline.get("vtd.mode") != Some("scalable") {
        skip!("a vIOMMU needs a scalable-mode unit with second-stage tables");
    }
    let parent = unit.new_domain(Stage::Second, IA_BITS).map_err(fail)?;
    let v = unit.new_viommu(&parent).map_err(fail)?;
    let good = unit.new_nested(&v, &GUEST_FIRST_STAGE).err();
    let mut beyond = GUEST_FIRST_STAGE;
    beyond[2] = 1 << IA_BITS;
    let beyond = unit.new_nested(&v, &beyond).err();
    let mut nested_pgtt = GUEST_FIRST_STAGE;
    nested_pgtt[0] = 0xc9;
    let nested_pgtt = unit.new_nested(&v, &nested_pgtt).err();
    let mut fpd = GUEST_FIRST_STAGE;
    fpd[0] |= 2;
    let fpd = unit.new_nested(&v, &fpd).err();
    let left = v.nested_domains();
    let destroyed = unit.destroy_viommu(v).map_err(|(_, e)| e);
    ensure_eq!(
        good,
        Some(UnitError::Unsupported("nested translation (ECAP.NEST)"))
    );
    ensure_eq!(
        beyond,
        Some(UnitError::GuestEntry(
            "FSPTPTR (beyond the nest parent's guest-physical width)"
        ))
    );
    ensure_eq!(
        nested_pgtt,
        Some(UnitError::GuestEntry(
            "PGTT (nested translation is the host's)"
        ))
    );
    ensure_eq!(
        fpd,
        Some(UnitError::GuestEntry("FPD (fault reporting is the host's)"))
    );
    ensure_eq!(left, 0, "nested domains after refusals");
    ensure_eq!(destroyed, Ok(()));
    Ok(())
}

/// The guest's edu, attached through its pass-through PASID entry (so translated by the nest
/// parent alone): its DMA lands; its PASID-based IOTLB invalidation with its own domain id is
/// translated and issued in one batch with one wait (the guest's wait consumed); a descriptor
/// naming a device that is not the guest's is refused with `done` counting the ones before;
/// the vIOMMU is busy while the nested domain exists; after the parent unmaps the page, the
/// guest's DMA to it faults.
pub(super) fn guest_invalidations_are_checked_translated_and_issued(m: &mut Machine) -> TestResult {
    let unit = unit(m)?;
    if m.cmdline.get("vtd.mode") != Some("scalable") {
        skip!("a vIOMMU needs a scalable-mode unit with second-stage tables");
    }
    let edus = edu_devices(m)?;
    let (Some(edu), Some(other)) = (edus.first(), edus.get(1)) else {
        return Err(fail("needs two edu devices"));
    };
    let dev = device_id(edu);
    let buf = DmaBuffer::new(0)?;
    (0..64).for_each(|i| buf.set(i, 0xa0 + i as u8));
    // Guest memory: guest-physical IOVA_A is the buffer.
    let parent = unit.new_domain(Stage::Second, IA_BITS).map_err(fail)?;
    unit.map(
        &parent,
        Iova::new(IOVA_A),
        buf.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    let v = unit.new_viommu(&parent).map_err(fail)?;
    let nested = unit.new_nested(&v, &GUEST_PASS_THROUGH).map_err(fail)?;
    unit.attach(dev, Attachment::Paging(&nested))
        .map_err(fail)?;
    edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    let landed = (0..64).all(|i| buf.get(2048 + i) == 0xa0 + i as u8);

    let devices = |virt: u32| (virt == GUEST_SID).then_some(dev);
    let before = unit.invalidations();
    let own = unit.forward_invalidations(&v, &devices, &[piotlb(GUEST_DID), GUEST_WAIT]);
    let after_own = unit.invalidations();
    // The other edu's physical id means nothing to the guest; nor does a host domain id.
    let foreign_sid = u64::from(device_id(other).0);
    let foreign = unit.forward_invalidations(
        &v,
        &devices,
        &[
            piotlb(GUEST_DID),
            GUEST_WAIT,
            device_tlb(foreign_sid),
            piotlb(GUEST_DID),
        ],
    );
    let after_foreign = unit.invalidations();
    let host_did =
        unit.forward_invalidations(&v, &devices, &[piotlb(u64::from(parent.id().raw()))]);
    let context = unit.forward_invalidations(&v, &devices, &[[0x11, 0, 0, 0]]);
    let no_dt = unit.forward_invalidations(&v, &devices, &[device_tlb(u64::from(GUEST_SID))]);
    let (v, busy) = match unit.destroy_viommu(v) {
        Err((v, e)) => (v, Some(e)),
        Ok(()) => return Err(fail("a vIOMMU with a nested domain was destroyed")),
    };

    // The parent unmaps the page: the guest's DMA to it must fault now.
    unit.drain_faults(&mut |_| {}).map_err(fail)?;
    let unmapped = unit.unmap(&parent, Iova::new(IOVA_A), 4096).map_err(fail)?;
    buf.fill(0x55);
    edu.edu.dma_to_ram(0, IOVA_A, 4).map_err(fail)?;
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    // The vIOMMU stays busy (nested domains are given back by `destroy_domain`); a second one
    // on the same parent, without nested domains, goes.
    let second = unit.new_viommu(&parent).map_err(fail)?;
    let second = unit.destroy_viommu(second).map_err(|(_, e)| e);
    let nested_left = v.nested_domains();

    ensure!(
        landed,
        "DMA through the guest's parent-only domain did not land"
    );
    ensure_eq!(
        own,
        Forwarded {
            done: 2,
            refused: None
        }
    );
    ensure_eq!(
        (after_own.0 - before.0, after_own.1 - before.1),
        (2, 1),
        "descriptors / batches for the guest's PASID-IOTLB and wait"
    );
    ensure_eq!(
        foreign,
        Forwarded {
            done: 2,
            refused: Some(UnitError::GuestCommand(
                "SID (not one of the guest's devices)"
            ))
        }
    );
    ensure_eq!(
        (after_foreign.0 - after_own.0, after_foreign.1 - after_own.1),
        (2, 1),
        "only the descriptors before the refused one were issued"
    );
    ensure_eq!(
        host_did,
        Forwarded {
            done: 0,
            refused: Some(UnitError::GuestCommand(
                "DID (not one of the guest's domain ids)"
            ))
        }
    );
    ensure_eq!(
        context.refused,
        Some(UnitError::GuestCommand(
            "context-cache invalidation (context entries are the host's)"
        ))
    );
    // edu has no ATS capability: with device-iotlb=on the unit has ECAP.DT, and the
    // invalidation is refused for the device instead.
    ensure_eq!(
        no_dt.refused,
        Some(UnitError::GuestCommand(if super::expected(m)?.device_tlb {
            "device-TLB invalidation (the device does not have ATS enabled)"
        } else {
            "device-TLB invalidation (the unit has no ECAP.DT)"
        }))
    );
    ensure_eq!(busy, Some(UnitError::Busy));
    ensure_eq!(nested_left, 1, "nested domains of the busy vIOMMU");
    ensure_eq!(second, Ok(()));
    ensure_eq!(unmapped, 4096);
    ensure!(buf.all(0..4096, 0x55), "DMA reached an unmapped guest page");
    ensure!(
        faults.iter().any(|f| f.device == dev
            && f.address & !0xfff == IOVA_A
            && f.write
            && f.kind == FaultKind::Translation),
        "expected a translation fault by {dev:?} at {IOVA_A:#x}, got {faults:?}"
    );
    Ok(())
}
