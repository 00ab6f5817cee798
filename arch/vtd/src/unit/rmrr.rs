//! RMRRs (DMAR reserved memory regions, VT-d 8.4): the ranges kept identity-mapped for the
//! devices they name, and their mapping into a domain at attach.

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, TranslationUnit, UnitError};

use super::{VtdDomain, VtdUnit};
use crate::dmar::Dmar;

/// One RMRR range kept identity-mapped for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedRegion {
    pub device: DeviceId,
    /// First byte, 4 KiB aligned.
    pub base: u64,
    /// Last byte, inclusive (one below a 4 KiB boundary).
    pub limit: u64,
}

impl ReservedRegion {
    pub(super) fn len(&self) -> u64 {
        self.limit - self.base + 1
    }
}

/// RMRR regions a unit keeps (no allocator in this crate).
pub const MAX_RMRRS: usize = 16;

pub(crate) struct Rmrrs {
    pub(super) regions: [Option<ReservedRegion>; MAX_RMRRS],
}

impl Rmrrs {
    pub(super) fn of(&self, device: DeviceId) -> impl Iterator<Item = ReservedRegion> + '_ {
        self.regions
            .iter()
            .flatten()
            .copied()
            .filter(move |r| r.device == device)
    }
}

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// Keeps `[base, limit]` identity-mapped (read-write) for `device`, as an RMRR asks (VT-d
    /// 8.4): attaching the device to a paging domain maps the range into the domain first
    /// (refused with [`iommu::pagetable::Error::AlreadyMapped`] if the domain maps anything
    /// else there); identity attach keeps it reachable anyway.
    ///
    /// Blocking such a device is refused ([`UnitError::Unsupported`]): firmware keeps using the
    /// range (USB legacy emulation, graphics), and Linux's IOMMU core also refuses a blocking
    /// domain for a device whose firmware asked for a 1:1 region ("rejecting configuring the
    /// device without a 1:1 mapping"). The device stays blocked from bring-up to its first
    /// attach, so an embedder attaches such devices early.
    pub fn add_rmrr(&self, device: DeviceId, base: u64, limit: u64) -> Result<(), UnitError> {
        use iommu::pagetable::Error as PtError;
        if !base.is_multiple_of(4096) || limit < base || !limit.wrapping_add(1).is_multiple_of(4096)
        {
            return Err(UnitError::PageTable(PtError::UnalignedIova));
        }
        let region = ReservedRegion {
            device,
            base,
            limit,
        };
        let _tables = self.tables.lock();
        let mut rmrrs = self.rmrrs.lock();
        if rmrrs.regions.iter().flatten().any(|r| *r == region) {
            return Ok(());
        }
        let slot = rmrrs
            .regions
            .iter_mut()
            .find(|r| r.is_none())
            .ok_or(UnitError::Unsupported("more RMRR regions than MAX_RMRRS"))?;
        *slot = Some(region);
        Ok(())
    }

    /// [`add_rmrr`](Self::add_rmrr) for every device every RMRR of `dmar` in PCI `segment`
    /// names. Returns the (device, region) pairs added. Scopes behind a bridge (a path longer
    /// than one step) need PCI enumeration to resolve and are refused, before any is added.
    pub fn add_rmrrs(&self, dmar: &Dmar<'_>, segment: u16) -> Result<usize, UnitError> {
        let rmrrs = || dmar.rmrrs().filter(|r| r.segment() == segment);
        if rmrrs().any(|r| r.scopes().any(|s| s.direct_bdf().is_none())) {
            return Err(UnitError::Unsupported(
                "RMRR device scope behind a bridge (needs PCI enumeration)",
            ));
        }
        let mut added = 0;
        for r in rmrrs() {
            for scope in r.scopes() {
                if let Some(bdf) = scope.direct_bdf() {
                    let device = DeviceId(u32::from(bdf.requester_id()));
                    self.add_rmrr(device, r.base(), r.limit())?;
                    added += 1;
                }
            }
        }
        Ok(added)
    }

    /// The RMRR regions kept for `device`.
    pub fn rmrrs_of(&self, device: DeviceId) -> impl Iterator<Item = ReservedRegion> {
        let rmrrs = self.rmrrs.lock();
        let mut out = [None; MAX_RMRRS];
        for (slot, r) in out.iter_mut().zip(rmrrs.of(device)) {
            *slot = Some(r);
        }
        out.into_iter().flatten()
    }

    /// For an attach of `device` to `to`: refuses blocking an RMRR device and maps the
    /// device's RMRR ranges into a paging domain (those it mapped are returned, for rollback).
    /// The caller holds `tables`.
    pub(super) fn prepare_rmrrs(
        &self,
        device: DeviceId,
        to: &Attachment<'_, VtdDomain<H>>,
    ) -> Result<[Option<ReservedRegion>; MAX_RMRRS], UnitError> {
        use iommu::pagetable::Error as PtError;
        let mut mapped = [None; MAX_RMRRS];
        let rmrrs = self.rmrrs.lock();
        if rmrrs.of(device).next().is_none() {
            return Ok(mapped);
        }
        let d = match to {
            Attachment::Identity => return Ok(mapped),
            Attachment::Blocking => {
                return Err(UnitError::Unsupported(
                    "blocking a device with an RMRR (firmware needs its identity mapping)",
                ))
            }
            Attachment::Paging(d) => *d,
        };
        if d.is_shared() {
            return Err(UnitError::Unsupported(
                "an RMRR device in a domain sharing a CPU table",
            ));
        }
        // Check every region first, so a refusal changes nothing.
        let mut todo = [None; MAX_RMRRS];
        for (slot, r) in todo.iter_mut().zip(rmrrs.of(device)) {
            let pages = r.len() / 4096;
            let mut identity = 0;
            for page in 0..pages {
                let iova = r.base + page * 4096;
                match d.translate(Iova::new(iova)) {
                    Ok(p) if p.as_u64() == iova => identity += 1,
                    Ok(_) => return Err(UnitError::PageTable(PtError::AlreadyMapped)),
                    Err(UnitError::PageTable(PtError::NothingMapped)) => {}
                    Err(e) => return Err(e),
                }
            }
            match identity {
                0 => *slot = Some(r),
                n if n == pages => {} // already there (another RMRR device, a re-attach)
                _ => return Err(UnitError::PageTable(PtError::AlreadyMapped)),
            }
        }
        for (i, r) in todo.iter().flatten().enumerate() {
            let result = self.map(
                d,
                Iova::new(r.base),
                PhysAddr::new(r.base),
                r.len(),
                Prot::READ_WRITE,
            );
            if let Err(e) = result {
                for done in mapped.iter().flatten() {
                    let _ = self.unmap(d, Iova::new(done.base), done.len());
                }
                return Err(e);
            }
            if let Some(slot) = mapped.get_mut(i) {
                *slot = Some(*r);
            }
        }
        Ok(mapped)
    }
}
