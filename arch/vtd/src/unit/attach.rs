//! Attach: the root, context and PASID entries that point a device (or one of its PASIDs) at
//! a domain, written in the order the spec's invalidation rules ask (6.5.3.3).

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::unit::{Attachment, DeviceId, TranslationUnit, UnitError};

use super::{agaw_of, clean, entry_error, DomainTable, Mode, VtdDomain, VtdUnit};
use crate::descriptor::{
    ContextCacheScope, Descriptor, FunctionMask, IotlbScope, PasidCacheScope, PasidIotlbScope,
};
use crate::pasid::{
    FirstStage, FirstStagePaging, Pasid, PasidDirEntry, PasidDirectorySize, PasidEntry,
    PassThrough, SecondStage,
};
use crate::root_table::{
    scalable_context_slot, ContextEntry, ContextHalf, Did, RootEntry, ScalableContext,
    ScalableContextEntry, ScalableRootEntry, SourceId,
};

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// The legacy context table of `bus`, created on first use.
    pub(super) fn legacy_context_table(
        &self,
        bus: u8,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        let raw = self.read_words::<2>(self.root, 2 * bus as usize);
        if let Some(t) = RootEntry::decode(raw).context_table() {
            return Ok(Some(t));
        }
        if !create {
            return Ok(None);
        }
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let entry = RootEntry::present(table).map_err(entry_error)?;
        self.write_words(self.root, 2 * bus as usize, &entry.encode());
        Ok(Some(table))
    }

    /// The scalable-mode context table half serving `devfn` on `bus`, created on first use.
    pub(super) fn scalable_context_table(
        &self,
        bus: u8,
        devfn: u8,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        let raw = self.read_words::<2>(self.root, 2 * bus as usize);
        let entry = ScalableRootEntry::decode(raw);
        let (half, _) = scalable_context_slot(devfn);
        let current = match half {
            ContextHalf::Lower => entry.lower(),
            ContextHalf::Upper => entry.upper(),
        };
        if current.is_some() || !create {
            return Ok(current);
        }
        let table = self.alloc_table()?;
        clean(&self.hal, self.coherency, table, 4096);
        let new = match half {
            ContextHalf::Lower => ScalableRootEntry::new(Some(table), entry.upper()),
            ContextHalf::Upper => ScalableRootEntry::new(entry.lower(), Some(table)),
        }
        .map_err(entry_error)?;
        // The other half's pointer is rewritten unchanged; each 64-bit store is atomic.
        self.write_words(self.root, 2 * bus as usize, &new.encode());
        Ok(Some(table))
    }

    /// The PASID table holding `device`'s RID_PASID entry, creating the context entry, PASID
    /// directory and table on first use.
    pub(super) fn rid_pasid_table(
        &self,
        sid: SourceId,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        self.pasid_table(sid, Pasid::ZERO, create)
    }

    /// The PASID table holding `device`'s entry for `pasid` (below 2^15: the directory is one
    /// page), creating the context entry, PASID directory and table on first use.
    pub(crate) fn pasid_table(
        &self,
        sid: SourceId,
        pasid: Pasid,
        create: bool,
    ) -> Result<Option<PhysAddr>, UnitError> {
        if !PasidDirectorySize::ONE_PAGE.covers(pasid) {
            return Err(UnitError::Unsupported(
                "PASIDs from 2^15 (the PASID directory is one page)",
            ));
        }
        let Some(ctx_table) = self.scalable_context_table(sid.bus(), sid.devfn(), create)? else {
            return Ok(None);
        };
        let (_, slot) = scalable_context_slot(sid.devfn());
        let ctx = ScalableContextEntry::decode(self.read_words::<4>(ctx_table, 4 * slot));
        if let Some(fields) = ctx.fields() {
            let dir = fields.pasid_directory;
            let raw = self.read_words::<1>(dir, pasid.directory_index())[0];
            if let Some(table) = PasidDirEntry::decode(raw).table() {
                return Ok(Some(table));
            }
            if !create {
                return Ok(None);
            }
            // A new PASID table under an existing directory; the PASID-cache invalidation
            // after the PASID entry is written covers the directory entry too.
            let table = self.alloc_table()?;
            clean(&self.hal, self.coherency, table, 4096);
            let dir_entry = PasidDirEntry::present(table).map_err(entry_error)?;
            self.write_words(dir, pasid.directory_index(), &[dir_entry.encode()]);
            return Ok(Some(table));
        }
        if !create {
            return Ok(None);
        }
        let dir = self.alloc_table()?;
        let table = match self.alloc_table() {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: allocated just above and not yet linked anywhere the unit reaches.
                unsafe { self.free_table(dir) };
                return Err(e);
            }
        };
        clean(&self.hal, self.coherency, table, 4096);
        let dir_entry = PasidDirEntry::present(table).map_err(entry_error)?;
        self.write_words(dir, pasid.directory_index(), &[dir_entry.encode()]);
        clean(&self.hal, self.coherency, dir, 4096);
        let size = PasidDirectorySize::ONE_PAGE;
        let entry = ScalableContextEntry::new(ScalableContext::new(dir, size, Pasid::ZERO))
            .map_err(entry_error)?;
        self.write_words(ctx_table, 4 * slot, &entry.encode());
        // Not-present → present: needed in caching mode (cached not-present entries are tagged
        // with domain 0), harmless otherwise.
        self.invalidate(&[Descriptor::ContextCache(ContextCacheScope::Device {
            domain: Did::new(0),
            source: sid,
            mask: FunctionMask::None,
        })])?;
        Ok(Some(table))
    }

    fn attach_legacy(
        &self,
        sid: SourceId,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        let new = match to {
            Attachment::Blocking => ContextEntry::NOT_PRESENT,
            Attachment::Identity => {
                if !self.info.ecap.pt() {
                    return Err(UnitError::Unsupported("pass-through (ECAP.PT)"));
                }
                ContextEntry::pass_through(self.identity_id, self.max_agaw)
            }
            Attachment::Paging(d) => match &d.table {
                DomainTable::Second(t) => {
                    let agaw = agaw_of(t.format().aw())?;
                    ContextEntry::second_stage(d.id, agaw, t.root()).map_err(entry_error)?
                }
                DomainTable::First(_) | DomainTable::Shared { .. } | DomainTable::Nested(_) => {
                    return Err(UnitError::Unsupported(
                        "first-stage and nested domains need scalable mode",
                    ))
                }
            },
        };
        // A device with ATS on gets TT 01 wherever it is translated (`ats`).
        let new = new.with_device_tlb(self.device_ats(sid).is_some());
        let Some(table) = self.legacy_context_table(sid.bus(), new.is_present())? else {
            return Ok(()); // Blocking a device whose bus has no context table: already blocked.
        };
        let slot = 2 * sid.devfn() as usize;
        let old = ContextEntry::decode(self.read_words::<2>(table, slot));
        if old.is_present() {
            // A 128-bit entry cannot be replaced atomically: make it not present and flush
            // every cache that holds it before the new one goes in (6.5.3.3).
            self.clear_present(table, slot);
            self.ids.detach(&self.hal, old.domain_id(), 0);
            self.flush_write_buffer()?;
            self.invalidate(&[
                Descriptor::ContextCache(ContextCacheScope::Device {
                    domain: old.domain_id(),
                    source: sid,
                    mask: FunctionMask::None,
                }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(old.domain_id()),
                    drain: self.drain(),
                },
            ])?;
        }
        if !new.is_present() {
            return Ok(());
        }
        self.write_words(table, slot, &new.encode());
        self.ids.attach(&self.hal, new.domain_id(), 0);
        self.flush_write_buffer()?;
        if self.info.cap.caching_mode() {
            // Not-present → present in caching mode (6.1): cached not-present entries are
            // tagged with domain 0.
            self.invalidate(&[
                Descriptor::ContextCache(ContextCacheScope::Device {
                    domain: Did::new(0),
                    source: sid,
                    mask: FunctionMask::None,
                }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(new.domain_id()),
                    drain: self.drain(),
                },
            ])?;
        }
        Ok(())
    }

    fn attach_scalable(
        &self,
        sid: SourceId,
        pasid: Pasid,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let new = match to {
            Attachment::Blocking => PasidEntry::NOT_PRESENT,
            Attachment::Identity => {
                if !ecap.pt() {
                    return Err(UnitError::Unsupported("pass-through (ECAP.PT)"));
                }
                PassThrough::new(self.identity_id, self.max_agaw)
                    .build(cap, ecap)
                    .map_err(entry_error)?
            }
            Attachment::Paging(d) => match &d.table {
                DomainTable::Second(t) => {
                    let agaw = agaw_of(t.format().aw())?;
                    SecondStage::new(d.id, agaw, t.root())
                        .build(cap, ecap)
                        .map_err(entry_error)?
                }
                DomainTable::First(t) => {
                    FirstStage::new(d.id, t.root(), FirstStagePaging::FourLevel)
                        .build(cap, ecap)
                        .map_err(entry_error)?
                }
                DomainTable::Shared { root, paging } => FirstStage::new(d.id, *root, *paging)
                    .build(cap, ecap)
                    .map_err(entry_error)?,
                DomainTable::Nested(n) => n.pasid_entry(d.id, cap, ecap).map_err(entry_error)?,
            },
        };
        let Some(table) = self.pasid_table(sid, pasid, new.is_present())? else {
            return Ok(());
        };
        let slot = 8 * pasid.table_index();
        let old = PasidEntry::decode(self.read_words::<8>(table, slot));
        if old.is_present() {
            // 512-bit entries are replaced through not-present (6.5.3.3 / 9.6).
            self.clear_present(table, slot);
            let did = old.domain_id();
            self.ids.detach(&self.hal, did, pasid.raw());
            self.invalidate(&[
                Descriptor::PasidCache(PasidCacheScope::Pasid { domain: did, pasid }),
                Descriptor::PasidIotlb(PasidIotlbScope::Pasid { domain: did, pasid }),
                Descriptor::Iotlb {
                    scope: IotlbScope::Domain(did),
                    drain: self.drain(),
                },
                // QEMU decides whether a device bypasses translation (pass-through) only on
                // context-cache invalidation; the spec allows it for any PASID-entry change.
                device_context(did, sid),
            ])?;
        }
        if !new.is_present() {
            return Ok(());
        }
        self.write_words(table, slot, &new.encode());
        self.ids.attach(&self.hal, new.domain_id(), pasid.raw());
        // Not-present → present: the PASID cache may hold the not-present entry (CM) — flush
        // it for this PASID so the unit reads the new one; and the context cache, as above.
        self.invalidate(&[
            Descriptor::PasidCache(PasidCacheScope::Pasid {
                domain: new.domain_id(),
                pasid,
            }),
            device_context(new.domain_id(), sid),
        ])?;
        Ok(())
    }

    /// [`TranslationUnit::attach`]: the device's RMRRs first, then its context or RID_PASID entry.
    pub(super) fn attach_device(
        &self,
        device: DeviceId,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let sid = SourceId::from_raw(raw);
        let _guard = self.tables.lock();
        let mapped = self.prepare_rmrrs(device, &to)?;
        let paging = match &to {
            Attachment::Paging(d) => Some(*d),
            _ => None,
        };
        // Faults the device caused so far are classified against the table they happened in.
        self.collect_faults(&mut self.faults.lock());
        let r = match self.mode {
            Mode::Legacy => self.attach_legacy(sid, to),
            Mode::Scalable => self.attach_scalable(sid, Pasid::ZERO, to),
        };
        if r.is_err() {
            // Leave the domain as it was: the RMRR ranges this call mapped go again.
            if let Some(d) = paging {
                for region in mapped.iter().flatten() {
                    let _ = self.unmap(d, Iova::new(region.base), region.len());
                }
            }
            return r;
        }
        if let Some(ats) = self.device_ats(sid) {
            // What the device cached came from the attachment just replaced.
            self.ats_attached(sid, paging.map(|d| d.id));
            let all = super::ats::AtsDevice {
                source: sid,
                ats,
                domain: None,
            };
            self.invalidate(&[super::ats::device_tlb(
                &all,
                crate::descriptor::DeviceTlbRange::All,
            )?])?;
        }
        Ok(())
    }

    /// [`TranslationUnit::attach_pasid`]: the device's PASID entry for `pasid` (scalable mode).
    pub(super) fn attach_at_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, VtdDomain<H>>,
    ) -> Result<(), UnitError> {
        if self.mode != Mode::Scalable {
            return Err(UnitError::Unsupported("PASID attach needs scalable mode"));
        }
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        if self.device_ats(SourceId::from_raw(raw)).is_some() {
            return Err(UnitError::Unsupported(
                "PASID attach of a device with ATS on (its PASID device-TLB is not followed)",
            ));
        }
        let bits = TranslationUnit::info(self).pasid_bits;
        if bits == 0 {
            return Err(UnitError::Unsupported("PASIDs (ECAP.PASID)"));
        }
        let pasid = Pasid::for_width(pasid, bits)
            .map_err(|_| UnitError::Unsupported("PASID wider than ECAP.PSS allows"))?;
        if pasid == Pasid::ZERO {
            // PASID 0 is the RID_PASID: requests without a PASID.
            return self.attach(device, to);
        }
        let raw = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let sid = SourceId::from_raw(raw);
        let _guard = self.tables.lock();
        if let Attachment::Paging(d) = &to {
            // First-stage translations are tagged with their PASID, so a flush must name each
            // PASID the domain is attached at: one besides RID_PASID is tracked.
            let other = self.ids.pasid_users(&self.hal, d.id);
            if d.table.first_stage() && other.is_some_and(|p| p != pasid.raw()) {
                return Err(UnitError::Unsupported(
                    "a first-stage domain at a second PASID besides RID_PASID",
                ));
            }
        }
        self.collect_faults(&mut self.faults.lock());
        self.attach_scalable(sid, pasid, to)
    }
}

/// A device-selective context-cache invalidation of `source`.
pub(super) fn device_context(domain: Did, source: SourceId) -> Descriptor {
    Descriptor::ContextCache(ContextCacheScope::Device {
        domain,
        source,
        mask: FunctionMask::None,
    })
}
