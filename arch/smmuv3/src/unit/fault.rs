//! Faults: the event queue drained into the core's [`FaultRecord`]s, event types classified,
//! event-queue overflow reported either way the SMMU signals it, and the wired interrupts.

use iommu::hal::Hal;
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{DeviceId, Drained, FaultKind, FaultRecord};

use super::SmmuUnit;
use crate::cmdq::CmdqRegisters;
use crate::eventq::EventType;
use crate::registers::{Readable, Writeable, GERROR, IRQ_CTRL};
use crate::Error;

/// Records one [`SmmuUnit::drain_events`] hands out at most (a full queue of the largest size
/// QEMU allows is 2^19; ours is far smaller).
const MAX_EVENTS_PER_DRAIN: usize = 1 << 16;

/// The core's class of an SMMU event type.
pub fn fault_kind(event: EventType) -> FaultKind {
    match event {
        EventType::Translation => FaultKind::Translation,
        EventType::Permission | EventType::Access => FaultKind::Permission,
        EventType::AddressSize => FaultKind::AddressSize,
        EventType::BadStreamId
        | EventType::BadSte
        | EventType::SteFetch
        | EventType::StreamDisabled
        | EventType::TranslationForbidden
        | EventType::BadSubstreamId
        | EventType::CdFetch
        | EventType::BadCd => FaultKind::Configuration,
        _ => FaultKind::Other,
    }
}

/// An SMMU event record in the core's terms.
pub fn fault_record(e: &crate::eventq::Event) -> FaultRecord {
    FaultRecord {
        device: DeviceId(e.stream_id),
        pasid: e.substream_id,
        address: e.input_address.or(e.fetch_address).unwrap_or(0),
        write: e.access.is_some_and(|a| a.write),
        kind: fault_kind(e.event),
        code: u16::from(e.event.code()),
        reason: e.event.meaning(),
    }
}

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Drains the event queue, handing every record decoded by the SMMU back-end to `sink`.
    ///
    /// Lost records are reported as overflow whichever way the SMMU signals them: EVENTQ_PROD.OVFLG
    /// (IHI 0070 7.4) or, as QEMU does, GERROR.EVENTQ_ABT_ERR when it finds the queue full; the
    /// latter is acknowledged here, through the same serialised GERRORN update as the command
    /// queue's CMDQ_ERR recovery ([`CmdqRegisters::acknowledge_gerror`]), so a drain and a
    /// recovery on two CPUs cannot undo each other's acknowledgement.
    ///
    /// [`CmdqRegisters::acknowledge_gerror`]: crate::cmdq::CmdqRegisters::acknowledge_gerror
    pub fn drain_events(&self, sink: &mut dyn FnMut(&crate::eventq::Event)) -> Drained {
        let mut q = self.eventq.lock();
        // `drain` pops until the queue is empty (re-reading PROD), bounded so that a device
        // faulting without pause cannot keep the caller here forever.
        // One warning per drain with its first event: a faulting device can make thousands, and
        // the fault path formats in place (no allocation).
        let mut first = true;
        let report = q.drain(MAX_EVENTS_PER_DRAIN, |e| {
            if first {
                log::warn!("SMMU event: {e}");
                first = false;
            }
            sink(&e)
        });
        let mut drained = Drained {
            records: report.events,
            overflow: report.overflowed,
        };
        // SAFETY: mapped for our life per `new`'s contract; interior-mutable MMIO cells.
        let r = unsafe { self.regs.as_ref() };
        let abt = GERROR::EVENTQ_ABT_ERR::SET.value;
        // A cheap check first; the acknowledgement itself is the one serialised
        // read-modify-write of GERRORN, shared with the command queue's recovery.
        if (r.gerror.get() ^ r.gerrorn.get()) & abt != 0
            && self.cmdq.registers().acknowledge_gerror(abt) != 0
        {
            log::warn!("SMMU GERROR.EVENTQ_ABT_ERR: the event queue was full, events lost");
            drained.overflow = true;
        }
        if drained.records > 1 || drained.overflow {
            log::warn!(
                "SMMU: {} events drained{}",
                drained.records,
                if drained.overflow {
                    " (overflow: some were lost)"
                } else {
                    ""
                }
            );
        }
        drained
    }

    /// Enables (or disables) the wired interrupts of the event queue and of global errors
    /// (IHI 0070 6.3.16), with the SMMU_IRQ_CTRLACK handshake. The embedder routes the SPIs the
    /// devicetree names and calls [`drain_faults`](iommu::unit::TranslationUnit::drain_faults) from the
    /// handler.
    pub fn set_wired_interrupts(&self, eventq: bool, gerror: bool) -> Result<(), Error> {
        // SAFETY: mapped for our life per `new`'s contract; interior-mutable MMIO cells.
        let r = unsafe { self.regs.as_ref() };
        // Wired SPIs only: the unit programs no MSI (IRQ_CFG0..2 stay at reset).
        log::debug!("SMMU wired interrupts: event queue {eventq}, GERROR {gerror}");
        let want = IRQ_CTRL::EVENTQ_IRQEN.val(u32::from(eventq))
            + IRQ_CTRL::GERROR_IRQEN.val(u32::from(gerror));
        r.irq_ctrl.write(want);
        poll_until("IRQ_CTRLACK", DEFAULT_POLL_BUDGET, || {
            r.irq_ctrlack.get() == want.value
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An F_TRANSLATION record as IHI 0070 7.3.12 lays it out: stream 8, write (RnW = 0),
    /// stage 1, CLASS = IN, address 0xcd00040.
    #[test]
    fn translation_event_becomes_a_core_fault_record() {
        let raw = [0x10 | 8 << 32, 2 << 40, 0xcd0_0040, 0];
        let f = fault_record(&crate::eventq::Event::decode(raw));
        assert_eq!(f.device, DeviceId(8));
        assert_eq!(f.pasid, None);
        assert_eq!(f.address, 0xcd0_0040);
        assert!(f.write);
        assert_eq!(f.kind, FaultKind::Translation);
        assert_eq!(f.code, 0x10);
    }

    #[test]
    fn read_permission_fault_and_configuration_errors_are_classified() {
        let raw = [0x13 | 16 << 32, 1 << 35 | 2 << 40, 0x1000, 0];
        let f = fault_record(&crate::eventq::Event::decode(raw));
        assert_eq!(
            (f.device, f.write, f.kind),
            (DeviceId(16), false, FaultKind::Permission)
        );
        assert_eq!(fault_kind(EventType::AddressSize), FaultKind::AddressSize);
        for e in [
            EventType::BadSte,
            EventType::SteFetch,
            EventType::StreamDisabled,
            EventType::TranslationForbidden,
            EventType::BadCd,
            EventType::BadStreamId,
        ] {
            assert_eq!(fault_kind(e), FaultKind::Configuration, "{e:?}");
        }
        assert_eq!(fault_kind(EventType::TlbConflict), FaultKind::Other);
    }
}
