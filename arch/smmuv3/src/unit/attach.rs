//! Attach: STE programming for a stream (blocking, identity, paging, nested), CD programming for
//! PASID attach in a stream's own CD table, and the records of what each stream then uses.

extern crate alloc;

use alloc::collections::BTreeMap;
use core::sync::atomic::Ordering;

use iommu::hal::Hal;
use iommu::unit::{Attachment, DeviceId, HardwareError, UnitError};

use super::domain::{DomainKind, DomainSerial, SmmuDomain};
use super::streams::{release, retain, StreamUse, Streams};
use super::SmmuUnit;
use crate::cmdq::CmdqError;
use crate::command::Command;
use crate::context_descriptor::ContextDescriptor;
use crate::entry::UpdateKind;
use crate::idr::Features;
use crate::stream_table::{StreamTable, StreamTableEntry};
use crate::substream::SubstreamTable;
use crate::Error;

/// What the attachment records drive on the hardware: STE writes (each with its CMD_CFGI_STE +
/// CMD_SYNC) and CD invalidations (CMD_CFGI_CD + CMD_SYNC), completed before returning. The unit
/// issues them through its command queue; host tests through a simulated SMMU.
pub(crate) trait StreamHardware<H: Hal> {
    fn install_ste(
        &self,
        table: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), Error>;
    fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError>;
}

impl<H: Hal + Clone> StreamHardware<H> for SmmuUnit<H> {
    fn install_ste(
        &self,
        table: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), Error> {
        self.install_on(table, sid, ste)
    }

    fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError> {
        self.cmdq
            .submit_and_sync(&[Command::CfgiCd { sid, ssid, leaf }.encode()?])?;
        if self.stream_ats(sid) {
            // The device's ATC entries for that SubstreamID came from the CD just replaced.
            let atc = Command::AtcInv {
                sid,
                ssid: (ssid != 0).then_some(ssid),
                addr: 0,
                size: 52,
                global: false,
            };
            self.cmdq.submit_and_sync(&[atc.encode()?])?;
        }
        Ok(())
    }
}

impl<H: Hal + Clone> Streams<H> {
    /// Points SubstreamID `pasid` (≥ 1, checked by the caller against IDR1.SSIDSIZE) of `sid`
    /// at `target`'s CD, or invalidates it with `None`. A stream without a CD table of its own
    /// gets one first, whose CD 0 keeps what untagged requests used (`blocking` for a stream
    /// never attached). Returns the stream's previous use for the caller to free once the lock
    /// is dropped.
    #[allow(clippy::too_many_arguments)]
    fn attach_pasid(
        &mut self,
        hw: &impl StreamHardware<H>,
        hal: &H,
        features: &Features,
        blocking: Option<(DomainSerial, ContextDescriptor)>,
        sid: u32,
        pasid: u32,
        target: Option<(DomainSerial, ContextDescriptor)>,
    ) -> Result<Option<StreamUse<H>>, UnitError> {
        let Self {
            table: strtab,
            uses,
            users,
        } = self;
        if let Some(StreamUse::Substreams { table, pasids, .. }) = uses.get_mut(&sid) {
            table
                .set(pasid, target.as_ref().map(|(_, cd)| cd), |ssid, leaf| {
                    hw.invalidate_cd(sid, ssid, leaf)
                })
                .map_err(Error::CdTable)?;
            let old = match target {
                Some((id, _)) => {
                    retain(users, id);
                    pasids.insert(pasid, id)
                }
                None => pasids.remove(&pasid),
            };
            if let Some(id) = old {
                release(users, id);
            }
            return Ok(None);
        }
        let Some((id, cd)) = target else {
            // Without substreams a request with a SubstreamID is already refused (and
            // reported as C_BAD_SUBSTREAMID).
            return Ok(None);
        };
        let default = match uses.get(&sid) {
            None => Some(blocking.ok_or(UnitError::Unsupported("a blocking domain"))?),
            Some(StreamUse::Bypass) => None,
            Some(StreamUse::Domains {
                ids: [Some(d), None],
                cd: Some(cd),
            }) => Some((*d, *cd)),
            Some(_) => {
                return Err(UnitError::Unsupported(
                    "PASIDs on a stream attached to a stage-2 or nested domain",
                ))
            }
        };
        let mut table = SubstreamTable::new(hal.clone(), features, default.as_ref().map(|d| &d.1))
            .map_err(Error::CdTable)?;
        // No STE points at the new table yet: nothing to invalidate.
        if let Err(e) = table.set(pasid, Some(&cd), |_, _| Ok(())) {
            // SAFETY: no STE points at the table.
            unsafe { table.free() };
            return Err(Error::CdTable(e).into());
        }
        let before = strtab.entry(sid).ok();
        let ste = StreamTableEntry::stage1(table.stage1());
        if let Err(e) = hw.install_ste(strtab, sid, &ste) {
            // An STE left as it was never pointed at the table (a refused entry, or no frame
            // for a level-2 table): it goes back. One that changed may point at it if the
            // failure came late (its invalidation): leak it rather than free memory the SMMU
            // may read.
            if strtab.entry(sid).ok() == before {
                // SAFETY: the STE never named the table, and nothing else does.
                unsafe { table.free() };
            }
            return Err(e.into());
        }
        let mut pasids = BTreeMap::new();
        pasids.insert(pasid, id);
        let new = StreamUse::Substreams {
            table,
            default: default.map(|d| d.0),
            pasids,
        };
        Ok(self.set_use(sid, Some(new)))
    }

    /// What untagged requests of `sid`, a stream with its own CD table, use: `target`'s CD as
    /// CD 0, or bypass with `None`. The PASIDs stay.
    fn set_default_substream(
        &mut self,
        hw: &impl StreamHardware<H>,
        sid: u32,
        target: Option<(DomainSerial, ContextDescriptor)>,
    ) -> Result<(), UnitError> {
        let Self {
            table: strtab,
            uses,
            users,
        } = self;
        let Some(StreamUse::Substreams { table, default, .. }) = uses.get_mut(&sid) else {
            return Err(UnitError::Hardware(HardwareError::RecordsOutOfStep));
        };
        let invalidate = |ssid: u32, leaf: bool| hw.invalidate_cd(sid, ssid, leaf);
        let changed = table
            .set_default(target.as_ref().map(|(_, cd)| cd), invalidate)
            .map_err(Error::CdTable)?;
        if changed {
            hw.install_ste(strtab, sid, &StreamTableEntry::stage1(table.stage1()))?;
            table
                .retire_default_cd(invalidate)
                .map_err(Error::CdTable)?;
        }
        let new = target.map(|(id, _)| id);
        if let Some(id) = new {
            retain(users, id);
        }
        if let Some(id) = core::mem::replace(default, new) {
            release(users, id);
        }
        Ok(())
    }
}

/// Writes `ste` for `sid`, `issue` sending each CMD_CFGI_STE followed by a CMD_SYNC and waiting
/// for it. A level-2 table created for `sid` has its other streams at `neighbours` (the
/// blocking domain's STE: an aborting STE records nothing, and their DMA must be refused in the
/// reporting way) and is written whole before the SMMU can reach it: one CMD_CFGI_STE (Leaf =
/// 0) and one CMD_SYNC in all ([`StreamTable::install_with_neighbours`]).
pub(crate) fn write_ste<H: Hal>(
    strtab: &mut StreamTable<H>,
    sid: u32,
    ste: &StreamTableEntry,
    neighbours: Option<&StreamTableEntry>,
    issue: impl FnMut(Command) -> Result<(), CmdqError>,
) -> Result<UpdateKind, Error> {
    let kind = match neighbours {
        Some(n) => strtab.install_with_neighbours(sid, ste, n, issue),
        None => strtab.install(sid, ste, issue),
    };
    kind.map_err(Error::StreamTable)
}

/// Frees what a stream used before, once its STE points elsewhere.
///
/// # Safety
/// The STE of the stream that used `old` was rewritten and its CMD_CFGI_STE + CMD_SYNC completed.
pub(super) unsafe fn free_old_use<H: Hal>(old: Option<StreamUse<H>>) {
    if let Some(StreamUse::Substreams { table, .. }) = old {
        // SAFETY: per this function's contract, no STE points at the table.
        unsafe { table.free() }
    }
}

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Installs `ste` for `sid` with no domain recorded for it (raw STEs of tests and of
    /// callers that track their own configuration); the domains it used before are released.
    pub(crate) fn install(&self, sid: u32, ste: &StreamTableEntry) -> Result<(), Error> {
        self.install_use(sid, ste, None)
    }

    /// Installs `ste` for `sid` and records that it uses `new`.
    pub(super) fn install_use(
        &self,
        sid: u32,
        ste: &StreamTableEntry,
        new: Option<StreamUse<H>>,
    ) -> Result<(), Error> {
        let mut streams = self.strtab.lock();
        self.install_on(&mut streams.table, sid, ste)?;
        let old = streams.set_use(sid, new);
        drop(streams);
        // SAFETY: `install_on` rewrote the STE and completed its CMD_CFGI_STE + CMD_SYNC.
        unsafe { free_old_use(old) };
        Ok(())
    }

    /// Writes `ste` for `sid` in the stream table (held locked by the caller).
    pub(super) fn install_on(
        &self,
        strtab: &mut StreamTable<H>,
        sid: u32,
        ste: &StreamTableEntry,
    ) -> Result<(), Error> {
        let ats = self.stream_ats(sid);
        let ste = super::ats::with_eats(ste, ats);
        ste.check_features(&self.features).map_err(Error::Entry)?;
        let blocking = self.blocking.as_ref().map(|b| self.ste_for(b));
        write_ste(strtab, sid, &ste, blocking.as_ref(), |cmd| {
            self.cmdq.submit_and_sync(&[cmd.encode()?])
        })?;
        if ats {
            // What the device cached came from the configuration just replaced.
            self.invalidate_atc(sid, None, 0..u64::MAX)?;
        }
        Ok(())
    }

    /// Aborts every transaction of `sid` silently (STE.Config = abort: no event is recorded).
    pub fn abort_stream(&self, sid: u32) -> Result<(), UnitError> {
        Ok(self.install(sid, &StreamTableEntry::abort())?)
    }

    /// Points `sid` at a nested configuration: `s1`'s context descriptor and table, whose
    /// addresses (the CD table, every table pointer and every output address) are IPAs that
    /// `s2` translates. `s1` must be a stage-1 domain and `s2` a stage-2 one.
    pub fn attach_nested(
        &self,
        device: DeviceId,
        s1: &SmmuDomain<H>,
        s2: &SmmuDomain<H>,
    ) -> Result<(), UnitError> {
        if !(self.features.stages.stage1() && self.features.stages.stage2()) {
            return Err(UnitError::Unsupported("nested translation"));
        }
        let ste = match (&s1.kind, &s2.kind) {
            (
                DomainKind::Stage1 { cds, vmid, .. },
                DomainKind::Stage2 {
                    s2: s2_cfg,
                    nest_users,
                    ..
                },
            ) => {
                let s2 = s2_cfg;
                // One domain nested in two parents would need both VMIDs invalidated.
                let old = vmid.load(Ordering::Relaxed);
                if old != 0 && old != s2.vmid {
                    return Err(UnitError::Unsupported("one stage-1 domain in two parents"));
                }
                vmid.store(s2.vmid, Ordering::Relaxed);
                nest_users.note_nested();
                StreamTableEntry::nested(cds.stage1(), *s2)
            }
            _ => {
                return Err(UnitError::Unsupported(
                    "nesting other than stage 1 in stage 2",
                ))
            }
        };
        let uses = StreamUse::Domains {
            ids: [Some(s1.serial), Some(s2.serial)],
            cd: None,
        };
        Ok(self.install_use(device.0, &ste, Some(uses))?)
    }

    pub(super) fn ste_for(&self, domain: &SmmuDomain<H>) -> StreamTableEntry {
        match &domain.kind {
            DomainKind::Stage1 { cds, .. } | DomainKind::Shared { cds, .. } => {
                StreamTableEntry::stage1(cds.stage1())
            }
            DomainKind::Stage2 { s2, .. } => StreamTableEntry::stage2(*s2),
            DomainKind::Nested { ste, .. } => *ste,
        }
    }

    /// What a stream attached to `domain` alone uses.
    fn use_of(domain: &SmmuDomain<H>) -> StreamUse<H> {
        let cd = match &domain.kind {
            DomainKind::Stage1 { cd, .. } | DomainKind::Shared { cd, .. } => Some(*cd),
            DomainKind::Stage2 { .. } | DomainKind::Nested { .. } => None,
        };
        StreamUse::Domains {
            ids: [Some(domain.serial), None],
            cd,
        }
    }

    /// The domain and CD that untagged requests of a stream with substreams use for `to`
    /// (`None`: bypass stage 1).
    fn default_substream(
        &self,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<Option<(DomainSerial, ContextDescriptor)>, UnitError> {
        match to {
            Attachment::Identity => Ok(None),
            Attachment::Blocking => match &self.blocking {
                Some(d) => Ok(Some((d.serial, d.substream_cd()?))),
                None => Err(UnitError::Unsupported("a blocking domain")),
            },
            Attachment::Paging(d) => Ok(Some((d.serial, d.substream_cd()?))),
        }
    }

    /// [`TranslationUnit::attach`] for a stream with its own CD table: changes what untagged
    /// requests use and keeps the PASIDs.
    fn attach_default_substream(
        &self,
        streams: &mut Streams<H>,
        sid: u32,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<(), UnitError> {
        let target = self.default_substream(to).map_err(|e| match e {
            UnitError::Unsupported("substreams translate with stage-1 domains only") => {
                UnitError::Unsupported(
                    "a stage-2 domain for a stream with PASIDs attached (detach them first)",
                )
            }
            e => e,
        })?;
        streams.set_default_substream(self, sid, target)
    }

    pub(super) fn attach_stream(
        &self,
        device: DeviceId,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<(), UnitError> {
        let sid = device.0;
        let mut streams = self.strtab.lock();
        if let Some(StreamUse::Substreams { .. }) = streams.uses.get(&sid) {
            // The PASIDs stay; untagged requests change.
            return self.attach_default_substream(&mut streams, sid, to);
        }
        let (ste, new) = match to {
            // The empty domain, not an aborting STE: the SMMU records no event for those
            // (IHI 0070 5.2) and a blocked device's DMA must be reported. Not recorded as a
            // use: the blocking domain lives as long as the unit.
            Attachment::Blocking => match &self.blocking {
                Some(d) => (self.ste_for(d), None),
                None => (StreamTableEntry::abort(), None),
            },
            Attachment::Identity => (StreamTableEntry::bypass(), Some(StreamUse::Bypass)),
            Attachment::Paging(d) => (self.ste_for(d), Some(Self::use_of(d))),
        };
        self.install_on(&mut streams.table, sid, &ste)?;
        let old = streams.set_use(sid, new);
        drop(streams);
        // SAFETY: `install_on` rewrote the STE and completed its CMD_CFGI_STE + CMD_SYNC.
        unsafe { free_old_use(old) };
        Ok(())
    }

    pub(super) fn attach_substream(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, SmmuDomain<H>>,
    ) -> Result<(), UnitError> {
        if pasid == 0 {
            return Err(UnitError::Unsupported(
                "SubstreamID 0: requests without a PASID are attached with `attach`",
            ));
        }
        let ssid_bits = self.features.ssid_bits;
        if ssid_bits == 0 {
            return Err(UnitError::Unsupported(
                "PASIDs: the SMMU has no substreams (IDR1.SSIDSIZE = 0)",
            ));
        }
        if pasid >> ssid_bits != 0 {
            return Err(UnitError::Unsupported("a PASID wider than IDR1.SSIDSIZE"));
        }
        let target = match to {
            Attachment::Blocking => None,
            Attachment::Identity => {
                return Err(UnitError::Unsupported("identity for one PASID"));
            }
            Attachment::Paging(d) => Some((d.serial, d.substream_cd()?)),
        };
        // Only a stage-1 blocking domain can serve as CD 0 (substreams need stage 1 anyway).
        let blocking = self
            .blocking
            .as_ref()
            .and_then(|b| b.substream_cd().ok().map(|cd| (b.serial, cd)));
        let mut streams = self.strtab.lock();
        let old = streams.attach_pasid(
            self,
            &self.hal,
            &self.features,
            blocking,
            device.0,
            pasid,
            target,
        )?;
        drop(streams);
        // SAFETY: `attach_pasid` rewrote the STE (CMD_CFGI_STE + CMD_SYNC) before handing the
        // old use back.
        unsafe { free_old_use(old) };
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::cmdq::CommandQueue;
    use crate::context_descriptor::{CdTable, CdTableGeometry};
    use crate::idr::{IdRegisters, OutputAddressSize};
    use crate::stream_table::StreamTableGeometry;
    use iommu::addr::PhysAddr;

    /// The attachment records and PASID attach on an SMMU with substreams (IDR1.SSIDSIZE = 5;
    /// QEMU has none), over a stream table in host memory, with every STE and CD invalidation
    /// going through a command queue that the simulated SMMU consumes.
    mod pasid {
        use super::*;
        use crate::attributes::Granule;
        use crate::context_descriptor::INVALID_CD;
        use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};
        use crate::stream_table::{DefaultSubstream, Stage1};
        use iommu::hal::host::HostHal;
        use std::cell::RefCell;
        use std::vec::Vec;

        type TestHal<'h> = &'h HostHal;

        struct SimHardware<'a> {
            smmu: &'a SimulatedSmmu,
            mem: &'a HeapQueueMemory<2>,
            queue: CommandQueue<&'a SimulatedSmmu, &'a HeapQueueMemory<2>>,
            features: Features,
            seen: RefCell<Vec<Command>>,
        }

        impl SimHardware<'_> {
            fn issue(&self, cmd: Command) -> Result<(), CmdqError> {
                self.queue.submit(&[cmd.encode()?])?;
                while let SimStep::Consumed(raw) = self.smmu.step(self.mem, |c| {
                    SimulatedSmmu::decode_or_illegal(c).map(|_| ())
                }) {
                    if let Ok(c) = Command::decode(raw) {
                        self.seen.borrow_mut().push(c);
                    }
                }
                Ok(())
            }

            fn take(&self) -> Vec<Command> {
                core::mem::take(&mut *self.seen.borrow_mut())
            }
        }

        impl<'h> StreamHardware<TestHal<'h>> for SimHardware<'_> {
            fn install_ste(
                &self,
                table: &mut StreamTable<TestHal<'h>>,
                sid: u32,
                ste: &StreamTableEntry,
            ) -> Result<(), Error> {
                ste.check_features(&self.features).map_err(Error::Entry)?;
                table
                    .install(sid, ste, |cmd| self.issue(cmd))
                    .map_err(Error::StreamTable)?;
                Ok(())
            }
            fn invalidate_cd(&self, sid: u32, ssid: u32, leaf: bool) -> Result<(), CmdqError> {
                self.issue(Command::CfgiCd { sid, ssid, leaf })
            }
        }

        fn features(ssid_bits: u32) -> Features {
            Features::decode(&IdRegisters {
                idr: [
                    0x0d44_101b,
                    0x0273_0010 | ssid_bits << 6,
                    0,
                    0x1414,
                    0,
                    0x74,
                ],
                iidr: 0,
                aidr: 1,
            })
        }

        fn cd(asid: u16) -> ContextDescriptor {
            ContextDescriptor::new(
                asid,
                PhysAddr::new(u64::from(asid) << 12),
                39,
                Granule::Size4K,
                OutputAddressSize::Bits44,
                0xff,
            )
            .unwrap_or_else(|e| panic!("{e}"))
        }

        fn words(c: &ContextDescriptor) -> [u64; 8] {
            c.encode().unwrap_or_else(|e| panic!("{e}"))
        }

        fn users(s: &Streams<TestHal<'_>>) -> Vec<(DomainSerial, u32)> {
            s.users.iter().map(|(&k, &v)| (k, v)).collect()
        }

        /// The stream's own CD table's STE half, its CD at `ssid`.
        fn substreams(s: &Streams<TestHal<'_>>, sid: u32) -> Stage1 {
            match s.uses.get(&sid) {
                Some(StreamUse::Substreams { table, .. }) => table.stage1(),
                _ => panic!("stream {sid} has no CD table of its own"),
            }
        }

        fn cd_at(s: &Streams<TestHal<'_>>, sid: u32, ssid: u32) -> [u64; 8] {
            match s.uses.get(&sid) {
                Some(StreamUse::Substreams { table, .. }) => {
                    table.entry(ssid).unwrap_or_else(|e| panic!("{e}"))
                }
                _ => panic!("stream {sid} has no CD table of its own"),
            }
        }

        fn ste(s: &Streams<TestHal<'_>>, sid: u32) -> [u64; 8] {
            s.table.entry(sid).unwrap_or_else(|e| panic!("{e}"))
        }

        fn encode(e: StreamTableEntry) -> [u64; 8] {
            e.encode().unwrap_or_else(|e| panic!("{e}"))
        }

        #[test]
        fn pasid_attach_builds_a_cd_table_per_stream_and_tracks_domains() {
            let hal = HostHal::new();
            let f = features(5);
            let smmu = SimulatedSmmu::new(6);
            let mem = HeapQueueMemory::<2>::new(6);
            let hw = SimHardware {
                smmu: &smmu,
                mem: &mem,
                queue: CommandQueue::new(&smmu, &mem, 100_000).unwrap_or_else(|e| panic!("{e}")),
                features: f,
                seen: RefCell::new(Vec::new()),
            };
            let geometry = StreamTableGeometry::linear(8).unwrap_or_else(|e| panic!("{e}"));
            let mut s = Streams {
                table: core::mem::ManuallyDrop::new(
                    StreamTable::new(&hal, geometry, true).unwrap_or_else(|e| panic!("{e}")),
                ),
                uses: BTreeMap::new(),
                users: BTreeMap::new(),
            };
            let blocking = Some((99, cd(99)));

            // Stream 8 attached to stage-1 domain 1 as `attach` does: its single-CD table.
            let mut single =
                CdTable::new(&hal, CdTableGeometry::SINGLE, true).unwrap_or_else(|e| panic!("{e}"));
            single
                .install(0, Some(&cd(1)), |_, _| Ok(()))
                .unwrap_or_else(|e| panic!("{e}"));
            let plain = StreamTableEntry::stage1(single.stage1());
            hw.install_ste(&mut s.table, 8, &plain)
                .unwrap_or_else(|e| panic!("{e}"));
            let uses = StreamUse::Domains {
                ids: [Some(1), None],
                cd: Some(cd(1)),
            };
            assert!(s.set_use(8, Some(uses)).is_none());
            assert_eq!(users(&s), [(1, 1)]);
            hw.take();

            // PASID 3 -> domain 2: a CD table of its own, CD 0 = domain 1's CD (S1DSS =
            // Substream0), CD 3 = domain 2's; the STE switches to it with CFGI_STE.
            let old = s
                .attach_pasid(&hw, &&hal, &f, blocking, 8, 3, Some((2, cd(2))))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(old, Some(StreamUse::Domains { .. })));
            let s1 = substreams(&s, 8);
            assert_eq!(s1.cd_max, 5);
            assert_eq!(s1.default_substream, DefaultSubstream::Substream0);
            assert_eq!(ste(&s, 8), encode(StreamTableEntry::stage1(s1)));
            assert_eq!(cd_at(&s, 8, 0), words(&cd(1)));
            assert_eq!(cd_at(&s, 8, 3), words(&cd(2)));
            assert_eq!(users(&s), [(1, 1), (2, 1)]);
            let cmds = hw.take();
            assert!(
                cmds.contains(&Command::CfgiSte { sid: 8, leaf: true }),
                "{cmds:?}"
            );
            assert!(
                cmds.iter()
                    .all(|c| matches!(c, Command::CfgiSte { sid: 8, .. } | Command::Sync { .. })),
                "{cmds:?}"
            );

            // PASID 4 -> domain 2 as well: only CD 4 changes, invalidated by SSID.
            let before = ste(&s, 8);
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 8, 4, Some((2, cd(2))))
                .is_ok_and(|old| old.is_none()));
            assert_eq!(ste(&s, 8), before);
            assert_eq!(cd_at(&s, 8, 4), words(&cd(2)));
            assert_eq!(users(&s), [(1, 1), (2, 2)]);
            let cmds = hw.take();
            assert!(
                cmds.contains(&Command::CfgiCd {
                    sid: 8,
                    ssid: 4,
                    leaf: true
                }),
                "{cmds:?}"
            );

            // PASID 3 detached: CD 3 invalid, domain 2 has one user left.
            assert!(s.attach_pasid(&hw, &&hal, &f, blocking, 8, 3, None).is_ok());
            assert_eq!(cd_at(&s, 8, 3), INVALID_CD);
            assert_eq!(users(&s), [(1, 1), (2, 1)]);
            assert!(hw.take().contains(&Command::CfgiCd {
                sid: 8,
                ssid: 3,
                leaf: true
            }));

            // Untagged requests bypass stage 1 (attach Identity): S1DSS first, then CD 0 goes.
            assert!(s.set_default_substream(&hw, 8, None).is_ok());
            let s1 = substreams(&s, 8);
            assert_eq!(s1.default_substream, DefaultSubstream::Bypass);
            assert_eq!(ste(&s, 8), encode(StreamTableEntry::stage1(s1)));
            assert_eq!(cd_at(&s, 8, 0), INVALID_CD);
            assert_eq!(cd_at(&s, 8, 4), words(&cd(2)), "PASIDs stay");
            assert_eq!(users(&s), [(2, 1)]);
            // And back to a domain for them.
            assert!(s.set_default_substream(&hw, 8, Some((5, cd(5)))).is_ok());
            assert_eq!(
                substreams(&s, 8).default_substream,
                DefaultSubstream::Substream0
            );
            assert_eq!(cd_at(&s, 8, 0), words(&cd(5)));
            assert_eq!(users(&s), [(2, 1), (5, 1)]);

            // A stream attached to a stage-2 domain: refused, nothing changes.
            let s2 = StreamUse::Domains {
                ids: [Some(7), None],
                cd: None,
            };
            assert!(s.set_use(9, Some(s2)).is_none());
            let before = ste(&s, 9);
            assert!(matches!(
                s.attach_pasid(&hw, &&hal, &f, blocking, 9, 1, Some((2, cd(2)))),
                Err(UnitError::Unsupported(_))
            ));
            assert_eq!(ste(&s, 9), before);
            assert_eq!(users(&s), [(2, 1), (5, 1), (7, 1)]);

            // A stream never attached: CD 0 is the blocking domain's.
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 10, 1, Some((2, cd(2))))
                .is_ok());
            assert_eq!(cd_at(&s, 10, 0), words(&cd(99)));
            assert_eq!(users(&s), [(2, 2), (5, 1), (7, 1), (99, 1)]);
            // Detaching a PASID of a stream without substreams changes nothing.
            assert!(s
                .attach_pasid(&hw, &&hal, &f, blocking, 11, 1, None)
                .is_ok_and(|o| o.is_none()));
            assert!(!s.uses.contains_key(&11));

            // Everything released: no users left, every frame back.
            for sid in [8, 9, 10] {
                // SAFETY: no SMMU reads these tables.
                unsafe { free_old_use(s.set_use(sid, None)) };
            }
            assert!(s.users.is_empty());
            // SAFETY: as above.
            unsafe {
                single.free();
                core::mem::ManuallyDrop::into_inner(s.table).free();
            }
            assert_eq!(hal.live_frames(), 0);
        }
    }
}
