//! PCIe ATS on an SMMUv3 (IHI 0070 3.9): the streams whose devices may cache translations in
//! their ATCs, their STEs' EATS, and the CMD_ATC_INV that follow every TLB invalidation of their
//! domains and every change of their STEs or CDs.
//!
//! Order (3.9.1): an ATC is invalidated after the TLB invalidation it follows has completed (a
//! CMD_SYNC between them), so a device refilling its ATC cannot pick up what the TLB still
//! held; and after an STE or CD change has completed, so the refill sees the new configuration.

extern crate alloc;

use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::Ordering;

use iommu::hal::Hal;
use iommu::unit::{Ats, DeviceId, UnitError};

use super::domain::SmmuDomain;
use super::streams::StreamUse;
use super::SmmuUnit;
use crate::command::Command;
use crate::stream_table::{Eats, SteConfig, StreamTableEntry};
use crate::Error;

/// CMD_ATC_INV's Size for "every address": the span is `4 KiB << 52`.
const ALL: u8 = 52;

/// The smallest naturally aligned span `(address, Size)` of CMD_ATC_INV covering `range`
/// (4.5.1: the span is `4 KiB << Size`, the address aligned to it).
pub(super) fn atc_span(range: &Range<u64>) -> (u64, u8) {
    let first = range.start >> 12;
    let last = range.end.saturating_sub(1).max(range.start) >> 12;
    // The highest bit in which the first and last page differ: the span must cover it.
    let size = (u64::BITS - (first ^ last).leading_zeros()) as u8;
    if size >= ALL {
        return (0, ALL);
    }
    ((first >> size) << size << 12, size)
}

/// `ste` as it must be for a stream whose ATS is `on`: a translating STE of the unit's gets
/// EATS = full ATS; a nested one keeps its guest's choice; without ATS, EATS is always 0 (a
/// guest cannot turn on what the host did not).
pub(super) fn with_eats(ste: &StreamTableEntry, on: bool) -> StreamTableEntry {
    match (on, &ste.config) {
        (false, _) => ste.with_ats(Eats::Abort),
        (true, SteConfig::Stage1(_) | SteConfig::Stage2(_)) => ste.with_ats(Eats::Translate),
        (true, _) => *ste,
    }
}

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Whether `sid`'s device has ATS on (the STE it gets then has EATS set).
    pub(crate) fn stream_ats(&self, sid: u32) -> bool {
        self.ats.lock().contains_key(&sid)
    }

    /// [`TranslationUnit::set_ats`](iommu::unit::TranslationUnit::set_ats): the stream's STE
    /// is rewritten with EATS to match (its CMD_CFGI_STE + CMD_SYNC), and, when ATS goes off,
    /// its whole ATC invalidated after that.
    pub(super) fn set_stream_ats(
        &self,
        device: DeviceId,
        ats: Option<Ats>,
    ) -> Result<(), UnitError> {
        if !self.features.ats {
            return Err(UnitError::Unsupported("ATS (IDR0.ATS is clear)"));
        }
        let sid = device.0;
        let mut streams = self.strtab.lock();
        let current = streams
            .table
            .entry(sid)
            .map_err(|e| UnitError::from(Error::StreamTable(e)))?;
        let ste = StreamTableEntry::decode(&current)
            .map_err(|e| UnitError::from(Error::Entry(e)))?
            .unwrap_or_else(StreamTableEntry::abort);
        let was = {
            let mut map = self.ats.lock();
            match ats {
                Some(a) => map.insert(sid, a),
                None => map.remove(&sid),
            }
        };
        let turned_on = ats.is_some() && was.is_none();
        if turned_on {
            // SeqCst, before the STE has EATS: an unmap's flush loads the count after the
            // tables were cleared, and a device can only hold a translation of the cleared
            // range if its STE had EATS before the clear, so that load sees this increment.
            self.ats_streams.fetch_add(1, Ordering::SeqCst);
        }
        // `install_on` gives the STE the EATS the map now says (and, with ATS on, invalidates
        // the stream's ATC once the STE is in place).
        let installed = self.install_on(&mut streams.table, sid, &ste);
        drop(streams);
        if let Err(e) = installed {
            // Back as it was: the STE write failed before or at its CMD_SYNC.
            let mut map = self.ats.lock();
            match was {
                Some(old) => map.insert(sid, old),
                None => map.remove(&sid),
            };
            if turned_on {
                self.ats_streams.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(e.into());
        }
        if ats.is_none() && was.is_some() {
            // The STE no longer lets translation requests through: what the ATC holds goes.
            self.invalidate_atc(sid, None, 0..u64::MAX)?;
            self.ats_streams.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Invalidates `sid`'s ATC (SubstreamID `ssid`, or the untagged entries) over `range`, with
    /// its own CMD_SYNC.
    pub(super) fn invalidate_atc(
        &self,
        sid: u32,
        ssid: Option<u32>,
        range: Range<u64>,
    ) -> Result<(), Error> {
        let (addr, size) = atc_span(&range);
        let cmd = Command::AtcInv {
            sid,
            ssid,
            addr,
            size,
            global: false,
        };
        self.cmdq.submit_and_sync(&[cmd.encode()?])?;
        Ok(())
    }

    /// After the TLB invalidation of `range` in `domain` completed: the ATCs of the streams with
    /// ATS that use the domain (untagged, or at a SubstreamID), in one batch and CMD_SYNC.
    /// Nothing, and no lock, while no stream has ATS.
    pub(super) fn invalidate_atcs(
        &self,
        domain: &SmmuDomain<H>,
        range: Range<u64>,
    ) -> Result<(), Error> {
        // SeqCst: see `set_stream_ats`.
        if self.ats_streams.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let targets: Vec<(u32, Option<u32>)> = {
            let streams = self.strtab.lock();
            let ats = self.ats.lock();
            let mut t = Vec::new();
            for (&sid, used) in &streams.uses {
                if !ats.contains_key(&sid) {
                    continue;
                }
                match used {
                    StreamUse::Bypass => {}
                    StreamUse::Domains { ids, .. } => {
                        if ids.contains(&Some(domain.serial)) {
                            t.push((sid, None));
                        }
                    }
                    StreamUse::Substreams {
                        default, pasids, ..
                    } => {
                        if *default == Some(domain.serial) {
                            t.push((sid, None));
                        }
                        for (&pasid, &id) in pasids {
                            if id == domain.serial {
                                t.push((sid, Some(pasid)));
                            }
                        }
                    }
                }
            }
            t
        };
        if targets.is_empty() {
            return Ok(());
        }
        let (addr, size) = atc_span(&range);
        let mut batch = self.cmdq.batch();
        for (sid, ssid) in targets {
            batch.push(Command::AtcInv {
                sid,
                ssid,
                addr,
                size,
                global: false,
            })?;
        }
        batch.finish()?;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use crate::sim::{SimConfig, SimulatedUnit};
    use crate::SmmuConfig;
    use iommu::addr::{Iova, PhysAddr};
    use iommu::hal::host::HostHal;
    use iommu::pagetable::Prot;
    use iommu::unit::{Attachment, Stage, TranslationUnit};

    fn bring_up<'h>(sim: &SimulatedUnit, hal: &'h HostHal) -> SmmuUnit<&'h HostHal> {
        let config = SmmuConfig {
            cmdq_log2: 6,
            eventq_log2: 5,
            ..SmmuConfig::default()
        };
        // SAFETY: the frame lives as long as `sim`, which the test drops after the unit.
        unsafe { SmmuUnit::new(sim.registers(), hal, config) }.expect("bring-up")
    }

    fn eats(unit: &SmmuUnit<&HostHal>, sid: u32) -> Eats {
        let words = unit.strtab.lock().table.entry(sid).expect("STE");
        StreamTableEntry::decode(&words)
            .expect("decodes")
            .expect("valid")
            .ats
    }

    fn atc_invalidations(log: &[Command]) -> Vec<(u32, Option<u32>, u64, u8)> {
        log.iter()
            .filter_map(|c| match *c {
                Command::AtcInv {
                    sid,
                    ssid,
                    addr,
                    size,
                    ..
                } => Some((sid, ssid, addr, size)),
                _ => None,
            })
            .collect()
    }

    const A: u32 = 0x10;
    const B: u32 = 0x18;

    #[test]
    fn atcs_of_ats_streams_follow_unmaps_and_ste_changes_and_nothing_else() {
        let sim = SimulatedUnit::new(SimConfig::host().with_ats());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal);
        let dom = unit.new_domain(Stage::First, 48).unwrap();
        let other = unit.new_domain(Stage::First, 48).unwrap();
        let buf = PhysAddr::new(0x4000_0000);
        unit.map(&dom, Iova::new(0x10_0000), buf, 0x8000, Prot::READ_WRITE)
            .unwrap();
        for sid in [A, B] {
            unit.attach(DeviceId(sid), Attachment::Paging(&dom))
                .unwrap();
        }
        // Nothing is asked of an ATC while no stream has ATS.
        sim.take_log();
        unit.unmap(&dom, Iova::new(0x10_0000), 0x1000).unwrap();
        assert!(atc_invalidations(&sim.take_log()).is_empty());
        assert_eq!(eats(&unit, A), Eats::Abort);

        // On: the STE gets EATS (its CMD_CFGI_STE), then the ATC is emptied.
        unit.set_ats(DeviceId(A), Some(Ats { queue_depth: 32 }))
            .unwrap();
        assert_eq!(
            (eats(&unit, A), eats(&unit, B)),
            (Eats::Translate, Eats::Abort)
        );
        let log = sim.take_log();
        let cfgi = log
            .iter()
            .position(|c| matches!(c, Command::CfgiSte { sid: A, .. }));
        let atc = log
            .iter()
            .position(|c| matches!(c, Command::AtcInv { sid: A, .. }));
        assert!(cfgi < atc && cfgi.is_some(), "{log:?}");
        assert_eq!(atc_invalidations(&log), [(A, None, 0, ALL)]);

        // An unmap: the TLB first (its own CMD_SYNC), then A's ATC for the page, B's never.
        unit.unmap(&dom, Iova::new(0x10_1000), 0x1000).unwrap();
        let log = sim.take_log();
        assert_eq!(atc_invalidations(&log), [(A, None, 0x10_1000, 0)]);
        let tlbi = log
            .iter()
            .position(|c| matches!(c, Command::TlbiNhVa { .. } | Command::TlbiNhAsid { .. }));
        let sync = log.iter().position(|c| matches!(c, Command::Sync { .. }));
        let atc = log.iter().position(|c| matches!(c, Command::AtcInv { .. }));
        assert!(tlbi < sync && sync < atc, "{log:?}");
        // Two pages: one command of 8 KiB; two across an 8 KiB boundary: one of 16 KiB.
        unit.unmap(&dom, Iova::new(0x10_2000), 0x2000).unwrap();
        assert_eq!(
            atc_invalidations(&sim.take_log()),
            [(A, None, 0x10_2000, 1)]
        );
        unit.unmap(&dom, Iova::new(0x10_5000), 0x2000).unwrap();
        assert_eq!(
            atc_invalidations(&sim.take_log()),
            [(A, None, 0x10_4000, 2)]
        );

        // A moves to another domain: its ATC is emptied after the new STE; unmaps of the old
        // domain no longer reach it.
        unit.attach(DeviceId(A), Attachment::Paging(&other))
            .unwrap();
        assert_eq!(atc_invalidations(&sim.take_log()), [(A, None, 0, ALL)]);
        unit.map(&dom, Iova::new(0x20_0000), buf, 0x1000, Prot::READ)
            .unwrap();
        unit.unmap(&dom, Iova::new(0x20_0000), 0x1000).unwrap();
        assert!(atc_invalidations(&sim.take_log()).is_empty());

        // Off: EATS cleared, then the ATC emptied; later unmaps ask nothing.
        unit.set_ats(DeviceId(A), None).unwrap();
        assert_eq!(eats(&unit, A), Eats::Abort);
        assert_eq!(atc_invalidations(&sim.take_log()), [(A, None, 0, ALL)]);
        unit.attach(DeviceId(A), Attachment::Paging(&dom)).unwrap();
        unit.map(&dom, Iova::new(0x20_0000), buf, 0x1000, Prot::READ)
            .unwrap();
        unit.unmap(&dom, Iova::new(0x20_0000), 0x1000).unwrap();
        assert!(atc_invalidations(&sim.take_log()).is_empty());
        assert_eq!(sim.refused_commands(), 0);
        drop(unit);
    }

    #[test]
    fn an_smmu_without_ats_refuses_by_name_and_changes_nothing() {
        let sim = SimulatedUnit::new(SimConfig::host());
        let hal = HostHal::new();
        let unit = bring_up(&sim, &hal);
        sim.take_log();
        assert_eq!(
            unit.set_ats(DeviceId(A), Some(Ats { queue_depth: 8 })),
            Err(UnitError::Unsupported("ATS (IDR0.ATS is clear)"))
        );
        assert!(sim.take_log().is_empty());
        assert!(!unit.stream_ats(A));
        drop(unit);
    }

    #[test]
    fn atc_spans_are_the_smallest_aligned_cover() {
        assert_eq!(atc_span(&(0x5000..0x6000)), (0x5000, 0));
        // Two pages across an 8 KiB boundary need 16 KiB.
        assert_eq!(atc_span(&(0x5000..0x7000)), (0x4000, 2));
        assert_eq!(atc_span(&(0x4000..0x6000)), (0x4000, 1));
        assert_eq!(atc_span(&(0x20_0000..0x40_0000)), (0x20_0000, 9));
        assert_eq!(atc_span(&(0..u64::MAX)), (0, ALL));
        // An empty range still names its page.
        assert_eq!(atc_span(&(0x9000..0x9000)), (0x9000, 0));
    }
}
