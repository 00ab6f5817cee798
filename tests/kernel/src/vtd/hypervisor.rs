//! The tiny-hypervisor flow through the object model (`iommu::iommufd`) on VT-d, as
//! far as QEMU's VT-d emulates it: guest memory as a nest parent, a vIOMMU, edu given to the
//! guest under a virtual requester id, the guest's PASID entry turned into a nested domain (its
//! first stage refused without ECAP.NEST, its pass-through entry translated by the parent), the
//! guest's invalidations forwarded with its virtual ids checked, and the host's unmap of guest
//! memory making the guest's DMA fault. Then everything is torn down in the only order the
//! model allows.

use alloc::vec::Vec;

use super::dma::{device_id, unit};
use super::viommu::{
    device_tlb, piotlb, GUEST_DID, GUEST_FIRST_STAGE, GUEST_PASS_THROUGH, GUEST_SID, GUEST_WAIT,
};
use crate::dma::{DmaBuffer, IA_BITS, IOVA_A};
use crate::platform::edu_devices;
use crate::Machine;
use iommu::addr::Iova;
use iommu::iommufd::{Error, GroupId, Iommu, Layout, OwnerId, Region, Target};
use iommu::pagetable::Prot;
use iommu::unit::{FaultKind, Forwarded, TranslationUnit, UnitError};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};

pub(super) fn tiny_hypervisor_through_the_object_model(m: &mut Machine) -> TestResult {
    if m.cmdline.get("vtd.mode") != Some("scalable") {
        skip!("a vIOMMU needs a scalable-mode unit with second-stage tables");
    }
    let unit = unit(m)?;
    let edus = edu_devices(m)?;
    let (Some(edu), Some(other)) = (edus.first(), edus.get(1)) else {
        return Err(fail("needs two edu devices"));
    };
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    // This test is about DMA; no interrupt remapper is registered, so owning a device needs
    // the explicit (insecure) opt-in.
    io.allow_unsafe_interrupts(true);
    let guest = OwnerId(1);
    let id = device_id(edu);
    let dev = io.add_device(u, id, GroupId(id.0)).map_err(fail)?;
    let id2 = device_id(other);
    let dev2 = io.add_device(u, id2, GroupId(id2.0)).map_err(fail)?;
    io.claim(dev, guest).map_err(fail)?;
    io.claim(dev2, OwnerId(2)).map_err(fail)?;
    println!(
        "  hypervisor: edu {} claimed by the guest, edu {} by someone else",
        edu.bdf, other.bdf
    );

    // Guest RAM: one page at guest-physical IOVA_A.
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let parent = io
        .alloc_nest_parent(guest, u, IA_BITS, &layout)
        .map_err(fail)?;
    let ram = DmaBuffer::new(0)?;
    io.map(
        guest,
        parent,
        Iova::new(IOVA_A),
        ram.phys(),
        4096,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    let v = io.alloc_viommu(guest, parent).map_err(fail)?;
    // Another owner's device cannot be given to this guest.
    ensure_eq!(
        io.set_virtual_device(guest, v, dev2, GUEST_SID + 8),
        Err(Error::NotOwner(dev2))
    );
    io.set_virtual_device(guest, v, dev, GUEST_SID)
        .map_err(fail)?;
    println!(
        "  hypervisor: guest RAM page at guest-physical {IOVA_A:#x} in a nest parent; vIOMMU \
         gives the guest edu {} as virtual id {GUEST_SID:#x}",
        edu.bdf
    );

    // The guest's first-stage PASID entry: valid, but QEMU has no nesting.
    ensure_eq!(
        io.alloc_nested_domain(guest, v, &GUEST_FIRST_STAGE),
        Err(Error::Unit(UnitError::Unsupported(
            "nested translation (ECAP.NEST)"
        )))
    );
    // Its pass-through entry: the device's DMA is guest-physical, translated by the parent.
    println!(
        "  hypervisor: guest first-stage PASID entry checked, then refused for nesting (no \
         ECAP.NEST); such a guest gets a shadowing vIOMMU instead (below)"
    );
    let nested = io
        .alloc_nested_domain(guest, v, &GUEST_PASS_THROUGH)
        .map_err(fail)?;
    io.attach(dev, guest, Target::Domain(nested))
        .map_err(fail)?;
    unit.drain_faults(&mut |_| ()).map_err(fail)?;
    (0..64).for_each(|i| ram.set(i, 0xa0 + i as u8));
    edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    ensure!(
        (0..64).all(|i| ram.get(2048 + i) == 0xa0 + i as u8),
        "the guest's DMA did not land in its RAM"
    );
    println!("  hypervisor: guest pass-through entry installed; edu DMA to guest-physical {IOVA_A:#x} lands");

    // Guest invalidations: its own domain id and device pass; the other edu (which the guest
    // could only name by a virtual id it was never given) stops the batch.
    ensure_eq!(
        io.invalidate(guest, v, &[piotlb(GUEST_DID), GUEST_WAIT]),
        Ok(Forwarded {
            done: 2,
            refused: None
        })
    );
    let refused = io
        .invalidate(
            guest,
            v,
            &[piotlb(GUEST_DID), device_tlb(u64::from(GUEST_SID + 8))],
        )
        .map_err(fail)?;
    ensure_eq!(refused.done, 1);
    ensure!(
        matches!(refused.refused, Some(UnitError::GuestCommand(_))),
        "a descriptor for a device that is not the guest's was not refused: {refused:?}"
    );
    ensure_eq!(
        io.invalidate(OwnerId(2), v, &[piotlb(GUEST_DID)]),
        Err(Error::NotViommuOwner(v))
    );
    println!(
        "  hypervisor: guest PASID-IOTLB + wait forwarded; a device-TLB for a device not the \
         guest's refused after {} issued",
        refused.done
    );

    // The host takes the page back: the guest's DMA to it faults.
    ensure_eq!(io.unmap(guest, parent, Iova::new(IOVA_A), 4096), Ok(4096));
    ram.fill(0x55);
    edu.edu.dma_to_ram(0, IOVA_A, 4).map_err(fail)?;
    ensure!(
        ram.all(0..4096, 0x55),
        "DMA reached guest memory after the host's unmap"
    );
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    ensure!(
        faults.iter().any(|f| f.device == id
            && f.address & !0xfff == IOVA_A
            && f.kind == FaultKind::Translation),
        "expected a translation fault by {id:?} at {IOVA_A:#x}, got {faults:?}"
    );

    if let Some(f) = faults.first() {
        println!("  hypervisor: host unmapped the guest page; the guest's DMA faulted: {f}");
    }

    // Teardown: each object waits for what depends on it.
    ensure_eq!(
        io.destroy_viommu(guest, v),
        Err(Error::ViommuBusy {
            viommu: v,
            nested: 1
        })
    );
    ensure_eq!(
        io.release(dev, guest),
        Err(Error::DeviceInViommu {
            device: dev,
            viommu: v
        })
    );
    io.attach(dev, guest, Target::Blocked).map_err(fail)?;
    io.destroy_domain(guest, nested).map_err(fail)?;
    io.unset_virtual_device(guest, v, GUEST_SID).map_err(fail)?;
    io.release(dev, guest).map_err(fail)?;
    io.release(dev2, OwnerId(2)).map_err(fail)?;
    ensure_eq!(
        io.destroy_domain(guest, parent),
        Err(Error::ParentInUse {
            domain: parent,
            viommus: 1
        })
    );
    io.destroy_viommu(guest, v).map_err(fail)?;
    io.destroy_domain(guest, parent).map_err(fail)?;
    println!("  hypervisor: torn down: device, nested domain, virtual id, vIOMMU, parent");
    Ok(())
}
