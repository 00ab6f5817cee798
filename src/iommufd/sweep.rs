//! The object model's share of an allocation-failure sweep over a real unit (feature
//! `host-hal`), for the back-ends' host tests on their simulated units and for embedders':
//! register and claim a device, allocate a paging domain, map a page and attach the device,
//! each with the N-th frame allocation failing until it succeeds ([`HostHal::sweep`]). Each
//! refusal must be out of memory, free what it took, and change nothing the model shows (no
//! half mapping, the device still blocked).

use super::{Error, GroupId, Iommu, Layout, OwnerId, Region, Target};
use crate::addr::{Iova, PhysAddr};
use crate::hal::host::HostHal;
use crate::pagetable::Prot;
use crate::unit::{DeviceId, Stage, TranslationUnit, UnitError};

/// Whether the model refused for want of frames.
pub fn out_of_memory(e: &Error) -> bool {
    matches!(
        e,
        Error::Unit(
            UnitError::OutOfMemory | UnitError::PageTable(crate::pagetable::Error::OutOfMemory)
        )
    )
}

/// The sweep on a fresh object model over `unit`: `device` registered and claimed, then a
/// paging domain of `stage` (39 input bits) allocated, a page mapped at [`IOVA`] and the
/// device attached, each with the N-th allocation failing until it succeeds; then
/// `reaches(address)`, the hardware's answer to the device's DMA at `address` (a simulated
/// unit's walk), must land in that page, and everything is torn down again. Panics (it is a
/// test's helper) at the first thing that does not hold.
pub fn domain_map_attach<U: TranslationUnit>(
    unit: U,
    hal: &HostHal,
    device: DeviceId,
    stage: Stage,
    reaches: impl Fn(u64) -> Option<u64>,
) {
    let owner = OwnerId(1);
    let phys = PhysAddr::new(0x4000_0000);
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    io.allow_unsafe_interrupts(true);
    let dev = io
        .add_device(u, device, GroupId(1))
        .expect("a fresh model takes the device");
    io.claim(dev, owner).expect("and its owner");
    let windows = [Region::below_bits(39)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let d = hal.sweep("alloc_domain", false, out_of_memory, || {
        io.alloc_domain(owner, u, stage, 39, &layout)
    });
    // A map may keep the tables it linked (its retry uses them).
    hal.sweep("map", true, out_of_memory, || {
        let r = io.map(owner, d, IOVA, phys, 4096, Prot::READ_WRITE);
        if r.is_err() {
            assert!(io.iova_to_phys(owner, d, IOVA).is_err(), "map: half mapped");
        }
        r
    });
    hal.sweep("attach", true, out_of_memory, || {
        let r = io.attach(dev, owner, Target::Domain(d));
        if r.is_err() {
            let target = io.device(dev).map(|s| s.target);
            assert_eq!(target, Ok(Target::Blocked), "attach: the device moved");
        }
        r
    });
    assert_eq!(io.iova_to_phys(owner, d, IOVA), Ok(phys));
    assert_eq!(
        reaches(IOVA.as_u64() + 0x10),
        Some(phys.as_u64() + 0x10),
        "DMA through the domain"
    );
    io.release(dev, owner).expect("release");
    io.unmap_all(owner, d).expect("unmap_all");
    io.destroy_domain(owner, d).expect("destroy");
}

/// Where [`domain_map_attach`] maps its page.
pub const IOVA: Iova = Iova::new(0x10_0000);
