//! ATS on a VT-d unit (ECAP.DT): the devices whose translation requests the unit serves, their
//! context entries (legacy TT = 01, scalable DTE), and the device-TLB invalidations that follow
//! every IOTLB invalidation of their domains and every change of what they are attached to.
//!
//! Requests without PASID only: the device-TLB of a device is invalidated for the domain its
//! RID_PASID (legacy: its context entry) points at; a PASID attach of a device with ATS on is
//! refused by name.
//!
//! Order (6.5.2.5): the device-TLB descriptors follow the IOTLB ones in the same batch (one
//! wait for both), which the unit processes in order, so the device cannot refill from an
//! IOTLB entry the batch is removing.

use core::sync::atomic::Ordering;

use iommu::addr::Iova;
use iommu::hal::Hal;
use iommu::unit::{Ats, DeviceId, UnitError};

use super::{entry_error, Mode, VtdUnit};
use crate::descriptor::{
    AtsTarget, ContextCacheScope, Descriptor, DeviceTlbRange, FunctionMask, MAX_ORDER,
};
use crate::pasid::{Pasid, PasidEntry};
use crate::root_table::{scalable_context_slot, ContextEntry, Did, ScalableContextEntry, SourceId};

/// Devices with ATS on one unit can have at once (the records are a fixed array: the crate
/// allocates nothing but table frames).
pub const MAX_ATS_DEVICES: usize = 32;

/// One device with ATS on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtsDevice {
    pub(crate) source: SourceId,
    pub(crate) ats: Ats,
    /// The domain its requests without PASID use now, if a translating one.
    pub(crate) domain: Option<Did>,
}

/// The records, changed under the unit's `tables` lock and read by flushes.
pub(crate) type AtsDevices = [Option<AtsDevice>; MAX_ATS_DEVICES];

/// The smallest naturally aligned device-TLB range covering `len` bytes at `start`.
pub(crate) fn device_tlb_range(start: u64, len: u64) -> DeviceTlbRange {
    let first = start >> 12;
    let last = start.saturating_add(len.max(1) - 1) >> 12;
    let order = (u64::BITS - (first ^ last).leading_zeros()) as u8;
    match order {
        0 => DeviceTlbRange::Page(Iova::new(first << 12)),
        o if o >= MAX_ORDER => DeviceTlbRange::All,
        o => DeviceTlbRange::Block {
            addr: Iova::new((first >> o) << o << 12),
            order: o,
        },
    }
}

/// The descriptor that invalidates `range` in `dev`'s device-TLB.
pub(super) fn device_tlb(dev: &AtsDevice, range: DeviceTlbRange) -> Result<Descriptor, UnitError> {
    // MIP: the queue depth, with 32 written as 0 (PCIe ATS capability encoding).
    let target = AtsTarget::new(dev.source, None, dev.ats.queue_depth % 32)
        .map_err(|_| UnitError::Unsupported("ATS queue depth above 32"))?;
    Ok(Descriptor::DeviceTlb { target, range })
}

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// What `source`'s device has of ATS, if it is on.
    pub(crate) fn device_ats(&self, source: SourceId) -> Option<Ats> {
        self.ats
            .lock()
            .iter()
            .flatten()
            .find(|d| d.source == source)
            .map(|d| d.ats)
    }

    /// Records the domain `source`'s requests without PASID use now (after an attach).
    pub(super) fn ats_attached(&self, source: SourceId, domain: Option<Did>) {
        if let Some(d) = self
            .ats
            .lock()
            .iter_mut()
            .flatten()
            .find(|d| d.source == source)
        {
            d.domain = domain;
        }
    }

    /// [`TranslationUnit::set_ats`](iommu::unit::TranslationUnit::set_ats): the device's
    /// context entry serves translation requests (legacy TT = 01, scalable DTE) or no longer
    /// does, its context-cache entry is invalidated, and when ATS goes off its whole
    /// device-TLB after that.
    pub(super) fn set_device_ats(
        &self,
        device: DeviceId,
        ats: Option<Ats>,
    ) -> Result<(), UnitError> {
        if !self.info.ecap.dt() {
            return Err(UnitError::Unsupported("ATS (ECAP.DT is clear)"));
        }
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let source = SourceId::from_raw(raw);
        // The records change only under `tables` (here and in `ats_attached`).
        let _guard = self.tables.lock();
        let (slot, was) = {
            let records = self.ats.lock();
            let at = records
                .iter()
                .position(|d| d.is_some_and(|d| d.source == source));
            match (at, ats) {
                (Some(i), _) => (i, records[i]),
                (None, None) => return Ok(()),
                (None, Some(_)) => (
                    records
                        .iter()
                        .position(Option::is_none)
                        .ok_or(UnitError::Unsupported(
                            "more ATS devices than MAX_ATS_DEVICES",
                        ))?,
                    None,
                ),
            }
        };
        // The record first: a flush after the entry serves translation requests must find it.
        self.ats.lock()[slot] = ats.map(|ats| AtsDevice {
            source,
            ats,
            domain: was.and_then(|d| d.domain),
        });
        if was.is_none() {
            // SeqCst, before the context entry serves translation requests: a flush loads the
            // count after its tables were cleared (see `device_tlbs`).
            self.ats_devices.fetch_add(1, Ordering::SeqCst);
        }
        let on = ats.is_some();
        let changed = match self.mode {
            Mode::Legacy => self.set_legacy_device_tlb(source, on),
            Mode::Scalable => self.set_scalable_device_tlb(source, on),
        };
        let domain = match changed {
            Ok(d) => d.or(was.and_then(|d| d.domain)),
            Err(e) => {
                // Back as it was: the entry is unchanged or its invalidation failed.
                self.ats.lock()[slot] = was;
                if was.is_none() {
                    self.ats_devices.fetch_sub(1, Ordering::SeqCst);
                }
                return Err(e);
            }
        };
        match (was, ats) {
            (_, Some(_)) => self.ats_attached(source, domain),
            (Some(old), None) => {
                // The entry no longer serves translation requests: what the device holds goes.
                self.invalidate(&[device_tlb(&old, DeviceTlbRange::All)?])?;
                self.ats_devices.fetch_sub(1, Ordering::SeqCst);
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Legacy mode: TT 00 ↔ 01 in the device's context entry, if it has a translating one.
    /// Returns the entry's domain id.
    fn set_legacy_device_tlb(&self, source: SourceId, on: bool) -> Result<Option<Did>, UnitError> {
        let Some(table) = self.legacy_context_table(source.bus(), false)? else {
            return Ok(None);
        };
        let slot = 2 * source.devfn() as usize;
        let old = ContextEntry::decode(self.read_words::<2>(table, slot));
        let new = old.with_device_tlb(on);
        if new == old {
            return Ok(old.is_present().then(|| old.domain_id()));
        }
        // TT is in the low quadword: one 64-bit store changes it, the unit sees old or new.
        self.write_words(table, slot, &new.encode()[..1]);
        self.flush_write_buffer()?;
        self.invalidate(&[Descriptor::ContextCache(ContextCacheScope::Device {
            domain: old.domain_id(),
            source,
            mask: FunctionMask::None,
        })])?;
        Ok(Some(old.domain_id()))
    }

    /// Scalable mode: DTE in the device's context entry (created now if the device has none,
    /// so that it is there when the device is attached).
    fn set_scalable_device_tlb(
        &self,
        source: SourceId,
        on: bool,
    ) -> Result<Option<Did>, UnitError> {
        let Some(pasid_table) = self.rid_pasid_table(source, on)? else {
            return Ok(None);
        };
        let Some(ctx_table) = self.scalable_context_table(source.bus(), source.devfn(), false)?
        else {
            return Ok(None);
        };
        let (_, slot) = scalable_context_slot(source.devfn());
        let old = ScalableContextEntry::decode(self.read_words::<4>(ctx_table, 4 * slot));
        let Some(mut fields) = old.fields() else {
            return Ok(None);
        };
        if fields.device_tlb != on {
            fields.device_tlb = on;
            let new = ScalableContextEntry::new(fields).map_err(entry_error)?;
            // DTE is in the low quadword: one 64-bit store changes it.
            self.write_words(ctx_table, 4 * slot, &new.encode()[..1]);
            self.invalidate(&[super::attach::device_context(Did::new(0), source)])?;
        }
        let rid_pasid =
            PasidEntry::decode(self.read_words::<8>(pasid_table, 8 * Pasid::ZERO.table_index()));
        Ok(rid_pasid.is_present().then(|| rid_pasid.domain_id()))
    }

    /// Adds to `batch`, after its IOTLB descriptors for `len` bytes at `start` in `domain`,
    /// the device-TLB descriptors of the devices with ATS whose requests without PASID use
    /// it (a full batch is issued first and a new one started). Nothing, and no lock, while
    /// no device has ATS.
    pub(super) fn device_tlbs(
        &self,
        batch: &mut super::invalidate::Batch,
        domain: Did,
        start: u64,
        len: u64,
    ) -> Result<(), UnitError> {
        // SeqCst: a device can hold a translation of the range only if its context entry
        // served translation requests before the tables were cleared, so its record's
        // increment (`set_device_ats`) came before the clear, and this load after it sees it.
        if self.ats_devices.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let range = device_tlb_range(start, len);
        let records = *self.ats.lock();
        for dev in records
            .iter()
            .flatten()
            .filter(|d| d.domain == Some(domain))
        {
            if batch.is_full() {
                self.invalidate(batch.iter())?;
                *batch = super::invalidate::Batch::new();
            }
            batch.push(device_tlb(dev, range)?);
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;
    use crate::qi::QueueSize;
    use crate::root_table::TranslationType;
    use crate::sim::{Event, SimulatedUnit, CAP, ECAP_NO_QI, ECAP_SCALABLE};
    use iommu::addr::PhysAddr;
    use iommu::hal::host::HostHal;
    use iommu::pagetable::Prot;
    use iommu::unit::{Attachment, Stage, TranslationUnit};

    /// ECAP.DT.
    const DT: u64 = 1 << 2;
    const ATS_DEV: DeviceId = DeviceId(0x0300); // 03:00.0, as QEMU's virtio below a root port
    const EDU: DeviceId = DeviceId(0x0008);

    /// The device-TLB descriptors the unit was sent: (source id, MIP, S, address).
    fn device_tlbs(sim: &SimulatedUnit) -> Vec<(u16, u64, bool, u64)> {
        sim.take_log()
            .into_iter()
            .filter_map(|e| match e {
                Event::Queued([w0, w1]) if w0 & 0xf == 3 => Some((
                    (w0 >> 32) as u16,
                    (w0 >> 16) & 0x1f,
                    w1 & 1 != 0,
                    w1 & !0xfff,
                )),
                _ => None,
            })
            .collect()
    }

    fn context_tt(unit: &VtdUnit<'_, &HostHal>, d: DeviceId) -> Option<TranslationType> {
        let source = SourceId::from_raw(d.0 as u16);
        let table = unit.legacy_context_table(source.bus(), false).unwrap()?;
        ContextEntry::decode(unit.read_words::<2>(table, 2 * source.devfn() as usize))
            .translation_type()
    }

    #[test]
    fn device_tlbs_follow_unmaps_and_attaches_of_ats_devices_only() {
        for mode in [Mode::Legacy, Mode::Scalable] {
            let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE | DT);
            let regs = sim.registers();
            let hal = HostHal::new();
            let unit = VtdUnit::new(&regs, &hal, mode, 48, QueueSize::ONE_PAGE).unwrap();
            let dom = unit.new_domain(Stage::Second, 48).unwrap();
            let other = unit.new_domain(Stage::Second, 48).unwrap();
            let buf = PhysAddr::new(0x4000_0000);
            unit.map(&dom, Iova::new(0x10_0000), buf, 0x8000, Prot::READ_WRITE)
                .unwrap();
            for d in [ATS_DEV, EDU] {
                unit.attach(d, Attachment::Paging(&dom)).unwrap();
            }
            sim.take_log();
            unit.unmap(&dom, Iova::new(0x10_0000), 0x1000).unwrap();
            assert!(device_tlbs(&sim).is_empty(), "{mode:?}: none without ATS");

            unit.set_ats(ATS_DEV, Some(Ats { queue_depth: 32 }))
                .unwrap();
            if mode == Mode::Legacy {
                assert_eq!(context_tt(&unit, ATS_DEV), Some(TranslationType::DeviceTlb));
                assert_eq!(context_tt(&unit, EDU), Some(TranslationType::Untranslated));
            }
            sim.take_log();
            // One page: S = 0, MIP 0 (32), source 03:00.0; edu gets nothing.
            unit.unmap(&dom, Iova::new(0x10_1000), 0x1000).unwrap();
            assert_eq!(
                device_tlbs(&sim),
                [(0x0300, 0, false, 0x10_1000)],
                "{mode:?}"
            );
            // Two pages across an 8 KiB boundary: 16 KiB at 0x10_4000, S = 1 (bit 12 set).
            unit.unmap(&dom, Iova::new(0x10_5000), 0x2000).unwrap();
            assert_eq!(
                device_tlbs(&sim),
                [(0x0300, 0, true, 0x10_5000)],
                "{mode:?}"
            );

            // Moved to another domain: its whole device-TLB, then nothing for the old one.
            unit.attach(ATS_DEV, Attachment::Paging(&other)).unwrap();
            let all = device_tlbs(&sim);
            assert_eq!(all.len(), 1, "{mode:?}");
            assert!(all[0].2, "{mode:?}: the whole space (S = 1)");
            if mode == Mode::Legacy {
                // A new entry for a device with ATS is TT 01 again.
                assert_eq!(context_tt(&unit, ATS_DEV), Some(TranslationType::DeviceTlb));
            }
            unit.unmap(&dom, Iova::new(0x10_2000), 0x1000).unwrap();
            assert!(device_tlbs(&sim).is_empty(), "{mode:?}");

            // Off: the entry no longer serves ATS, the device-TLB is emptied, unmaps ask nothing.
            unit.set_ats(ATS_DEV, None).unwrap();
            assert_eq!(device_tlbs(&sim).len(), 1, "{mode:?}");
            if mode == Mode::Legacy {
                assert_eq!(
                    context_tt(&unit, ATS_DEV),
                    Some(TranslationType::Untranslated)
                );
            }
            unit.map(&other, Iova::new(0x20_0000), buf, 0x1000, Prot::READ)
                .unwrap();
            unit.unmap(&other, Iova::new(0x20_0000), 0x1000).unwrap();
            assert!(device_tlbs(&sim).is_empty(), "{mode:?}");
        }
    }

    #[test]
    fn a_unit_without_device_tlbs_refuses_by_name() {
        let sim = SimulatedUnit::new(CAP, ECAP_NO_QI);
        let regs = sim.registers();
        let hal = HostHal::new();
        let unit = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE).unwrap();
        assert_eq!(
            unit.set_ats(ATS_DEV, Some(Ats { queue_depth: 4 })),
            Err(UnitError::Unsupported("ATS (ECAP.DT is clear)"))
        );
        assert!(unit.device_ats(SourceId::from_raw(0x0300)).is_none());
    }

    #[test]
    fn ranges_are_the_smallest_aligned_cover() {
        assert_eq!(
            device_tlb_range(0x5000, 0x1000),
            DeviceTlbRange::Page(Iova::new(0x5000))
        );
        assert_eq!(
            device_tlb_range(0x5000, 0x2000),
            DeviceTlbRange::Block {
                addr: Iova::new(0x4000),
                order: 2
            }
        );
        assert_eq!(
            device_tlb_range(0x20_0000, 0x20_0000),
            DeviceTlbRange::Block {
                addr: Iova::new(0x20_0000),
                order: 9
            }
        );
        assert_eq!(device_tlb_range(0, u64::MAX), DeviceTlbRange::All);
    }
}
