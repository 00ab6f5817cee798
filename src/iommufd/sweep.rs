//! The object model's share of an allocation-failure sweep over a real unit (feature
//! `host-hal`), for the back-ends' host tests on their simulated units and for embedders':
//! allocate a paging domain, map a page and attach a device, each with the N-th frame
//! allocation failing until it succeeds ([`HostHal::sweep`]). Each refusal must be out of
//! memory, free what it took, and change nothing the model shows (no half mapping, the device
//! still blocked).

use super::{DeviceHandle, DomainId, Error, Iommu, Layout, OwnerId, Target, UnitId};
use crate::addr::{Iova, PhysAddr};
use crate::hal::host::HostHal;
use crate::pagetable::Prot;
use crate::unit::{Stage, TranslationUnit, UnitError};

/// Whether the model refused for want of frames.
pub fn out_of_memory(e: &Error) -> bool {
    matches!(
        e,
        Error::Unit(
            UnitError::OutOfMemory | UnitError::PageTable(crate::pagetable::Error::OutOfMemory)
        )
    )
}

/// The sweep: a domain of `owner` on `unit` (`stage`, `ia_bits`, `layout`), `phys` mapped at
/// `iova` for a page, then `device` (owned by `owner`, blocked) attached to it. Returns the
/// domain.
#[allow(clippy::too_many_arguments)]
pub fn domain_map_attach<U: TranslationUnit>(
    io: &mut Iommu<U>,
    hal: &HostHal,
    owner: OwnerId,
    unit: UnitId,
    device: DeviceHandle,
    (stage, ia_bits, layout): (Stage, u32, &Layout<'_>),
    iova: Iova,
    phys: PhysAddr,
) -> DomainId {
    let d = hal.sweep("alloc_domain", false, out_of_memory, || {
        io.alloc_domain(owner, unit, stage, ia_bits, layout)
    });
    // A map may keep the tables it linked (its retry uses them).
    hal.sweep("map", true, out_of_memory, || {
        let r = io.map(owner, d, iova, phys, 4096, Prot::READ_WRITE);
        if r.is_err() {
            assert!(io.iova_to_phys(owner, d, iova).is_err(), "map: half mapped");
        }
        r
    });
    hal.sweep("attach", true, out_of_memory, || {
        let r = io.attach(device, owner, Target::Domain(d));
        if r.is_err() {
            let target = io.device(device).map(|s| s.target);
            assert_eq!(target, Ok(Target::Blocked), "attach: the device moved");
        }
        r
    });
    assert_eq!(io.iova_to_phys(owner, d, iova), Ok(phys));
    d
}
