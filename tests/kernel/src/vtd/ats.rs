//! ATS through the object model on VT-d (`vtd.devtlb=1` machines: `device-iotlb=on` and a
//! virtio function with an ATS capability): the firmware's ATSR allows it, the owner turns it
//! on (the unit first, then the function's capability), each unmap of the function's domain
//! carries one device-TLB descriptor more than the same unmap in a domain of a device without
//! ATS (edu), which QEMU's own trace of the descriptors confirms (`@expect-trace`), and
//! releasing the function turns ATS off again.

extern crate alloc;

use alloc::boxed::Box;

use super::dma::{device_id, unit};
use crate::dma::{DmaBuffer, IA_BITS, IOVA_A};
use crate::platform::{edu_devices, pci_config, PciConfig};
use crate::Machine;
use iommu::addr::Iova;
use iommu::iommufd::{AtsControl, GroupId, Iommu, Layout, OwnerId, Region, Target};
use iommu::pagetable::Prot;
use iommu::unit::{DeviceId, Stage};
use iommu_boot::pci::{enumerate, AtsCapability};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};

/// The function's ATS capability through configuration space: what the object model is given.
struct Capability {
    cfg: PciConfig,
    ats: AtsCapability,
}

impl AtsControl for Capability {
    fn enable(&mut self, unit_log2: u32) -> Result<(), &'static str> {
        self.ats
            .enable(&self.cfg, unit_log2)
            .map_err(|_| "the ATS capability did not take Enable")
    }

    fn disable(&mut self) {
        self.ats.disable(&self.cfg);
    }
}

pub(super) fn device_tlbs_follow_the_unmaps_of_an_ats_function(m: &mut Machine) -> TestResult {
    if !super::expected(m)?.device_tlb {
        skip!("the unit offers no device-TLBs (vtd.devtlb=0)");
    }
    let cfg = pci_config(m)?;
    let Some(cap) = (0..=255u8)
        .flat_map(|bus| enumerate(&cfg, bus).collect::<alloc::vec::Vec<_>>())
        .find_map(|f| AtsCapability::find(&cfg, f.bdf))
    else {
        return Err(fail("vtd.devtlb=1 but no function has an ATS capability"));
    };
    // The ATSR the firmware lists must cover the function's root port (QEMU: ALL_PORTS).
    let dmar = super::dmar(m)?;
    ensure!(
        dmar.atsrs().any(|a| a.segment() == 0 && a.all_ports()),
        "no ATSR covers segment 0's root ports"
    );
    let edus = edu_devices(m)?;
    let edu = edus.first().ok_or_else(|| fail("needs an edu"))?;
    let unit = unit(m)?;

    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    io.allow_unsafe_interrupts(true);
    let owner = OwnerId(7);
    let ats_id = DeviceId(u32::from(cap.bdf.requester_id()));
    let ats_dev = io.add_device(u, ats_id, GroupId(ats_id.0)).map_err(fail)?;
    let edu_id = device_id(edu);
    let edu_dev = io.add_device(u, edu_id, GroupId(edu_id.0)).map_err(fail)?;
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let buf = DmaBuffer::new(0)?;
    let mut domains = [None; 2];
    for (i, dev) in [ats_dev, edu_dev].into_iter().enumerate() {
        io.claim(dev, owner).map_err(fail)?;
        let d = io
            .alloc_domain(owner, u, Stage::Second, IA_BITS, &layout)
            .map_err(fail)?;
        io.attach(dev, owner, Target::Domain(d)).map_err(fail)?;
        domains[i] = Some(d);
    }
    let [Some(ats_domain), Some(edu_domain)] = domains else {
        return Err(fail("two domains"));
    };

    io.allow_ats(ats_dev, true).map_err(fail)?;
    let control = Box::new(Capability {
        cfg: pci_config(m)?,
        ats: cap,
    });
    io.enable_ats(ats_dev, owner, cap.queue_depth, control)
        .map_err(fail)?;
    ensure!(cap.is_enabled(&cfg), "{}: ATS not enabled", cap.bdf);
    ensure_eq!(
        cap.unit_log2(&cfg),
        12,
        "smallest translation unit: the unit's 4 KiB"
    );

    // One 4 KiB unmap in each domain: the descriptors each costs.
    let mut cost = [0u64; 2];
    for (i, d) in [ats_domain, edu_domain].into_iter().enumerate() {
        io.map(
            owner,
            d,
            Iova::new(IOVA_A),
            buf.phys(),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
        let (before, _) = unit.invalidations();
        io.unmap(owner, d, Iova::new(IOVA_A), 4096).map_err(fail)?;
        cost[i] = unit.invalidations().0 - before;
    }
    println!(
        "  ATS on {}: a 4 KiB unmap costs {} descriptors in its domain, {} in edu's",
        cap.bdf, cost[0], cost[1]
    );
    ensure_eq!(
        cost[0],
        cost[1] + 1,
        "one device-TLB descriptor, for the ATS function only"
    );
    // QEMU's trace of that descriptor (type 3, S = 0: one page at IOVA_A; SID in 47:32, MIP 0
    // for a queue depth of 32, else the depth).
    let low = u64::from(cap.bdf.requester_id()) << 32 | u64::from(cap.queue_depth % 32) << 16 | 3;
    println!("@expect-trace invalidate desc type device high {IOVA_A:#x} low {low:#x}");

    // Release turns ATS off (the function first), then blocks the function.
    io.release(ats_dev, owner).map_err(fail)?;
    ensure!(
        !cap.is_enabled(&cfg),
        "{}: ATS still enabled after release",
        cap.bdf
    );
    ensure_eq!(io.ats_enabled(ats_dev), Ok(false));
    io.release(edu_dev, owner).map_err(fail)?;
    for d in [ats_domain, edu_domain] {
        io.destroy_domain(owner, d).map_err(fail)?;
    }
    Ok(())
}
