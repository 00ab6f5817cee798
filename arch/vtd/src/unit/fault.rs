//! Faults: collecting the primary fault records (classifying the ambiguous second-stage
//! codes against the attached table), draining them, and the fault-event interrupt.

use iommu::addr::Iova;
use iommu::hal::Hal;
use iommu::pagetable::{PageTable, VtdSecondStage};
use iommu::unit::{Drained, FaultRecord, UnitError};

use super::{Mode, VtdUnit};
use crate::fault_record::{Classify, RawFault};
use crate::pasid::{Pasid, PasidEntry};
use crate::registers::{Readable, Writeable, EVENT_ADDRESS, EVENT_CONTROL, EVENT_DATA, FSTS};
use crate::root_table::{ContextEntry, SourceId};

/// A fault-event interrupt message (VT-d 5.1.6 / 11.4.7.3-5): the MSI address and data the
/// unit writes when it records a fault. With interrupt remapping off this is a
/// compatibility-format MSI: address 0xfee0_0000 | destination APIC id << 12, data = vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEventMsi {
    /// MSI address (dword aligned).
    pub address: u64,
    /// MSI data (the low 16 bits; the upper 16 only with ECAP.EIM).
    pub data: u32,
}

impl FaultEventMsi {
    /// A fixed, edge-triggered xAPIC interrupt `vector` to the CPU with APIC id `apic_id`
    /// (physical destination mode; Intel SDM vol. 3, 11.11).
    pub const fn xapic(apic_id: u8, vector: u8) -> Self {
        Self {
            address: 0xfee0_0000 | ((apic_id as u64) << 12),
            data: vector as u32,
        }
    }
}

/// Faults collected from the recording registers before a drain asked for them: at attach
/// time, a device's faults are read while its table is still attached, the only time a
/// second-stage fault (same code for not present and read-only) can be classified.
pub(crate) struct Pending {
    pub(super) records: [Option<FaultRecord>; PENDING],
    pub(super) len: usize,
    pub(super) overflow: bool,
}

/// Faults kept between drains; more are counted as an overflow.
pub(super) const PENDING: usize = 32;

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// Sends a fault-event MSI (`msi`) whenever the unit records a fault while no earlier one
    /// is pending (VT-d 7.3.1: FSTS.PPF, PFO and IQE clear), and unmasks it (FECTL.IM = 0). The
    /// handler drains with [`TranslationUnit::drain_faults`](iommu::unit::TranslationUnit::drain_faults), which clears the records so the
    /// next fault interrupts again. A fault pending when this is called (FECTL.IP) is signalled
    /// at once. With interrupt remapping off the message is delivered as written.
    pub fn enable_fault_interrupt(&self, msi: FaultEventMsi) -> Result<(), UnitError> {
        if !msi.address.is_multiple_of(4) {
            return Err(UnitError::Unsupported(
                "fault-event MSI address not dword aligned",
            ));
        }
        if msi.data >> 16 != 0 && !self.info.ecap.eim() {
            return Err(UnitError::Unsupported(
                "extended MSI data needs ECAP.EIM (32-bit data)",
            ));
        }
        // The fault lock orders this against drains touching FSTS on other CPUs.
        let _faults = self.faults.lock();
        let block = self.regs.block();
        block.fectl.write(EVENT_CONTROL::IM::SET);
        block
            .fedata
            .write(EVENT_DATA::IMD.val(msi.data & 0xffff) + EVENT_DATA::EIMD.val(msi.data >> 16));
        block
            .feaddr
            .write(EVENT_ADDRESS::MA.val((msi.address as u32) >> 2));
        block.feuaddr.set((msi.address >> 32) as u32);
        // Unmasked last, once the message is whole.
        block.fectl.set(0);
        Ok(())
    }

    /// Masks the fault-event interrupt again (faults are still recorded; poll them).
    pub fn disable_fault_interrupt(&self) {
        let _faults = self.faults.lock();
        self.regs.block().fectl.write(EVENT_CONTROL::IM::SET);
    }

    /// Moves every fault in the recording registers into `pending` (clearing F, RW1C, per
    /// record) and the overflow flag (FSTS.PFO, RW1C) with them. The caller holds `tables`.
    pub(super) fn collect_faults(&self, pending: &mut Pending) {
        let block = self.regs.block();
        let count = self.info.cap.fault_recording_count();
        // QEMU records one fault per 4-byte piece of a DMA while a record is free: keep going
        // until a whole pass finds nothing, within a bound.
        for _ in 0..1024 {
            let fsts = block.fsts.get();
            if FSTS::PFO.is_set(fsts) {
                log::warn!("VT-d: fault records overflowed (FSTS.PFO): later faults were lost");
                pending.overflow = true;
                block.fsts.write(FSTS::PFO::SET);
            }
            let first = FSTS::FRI.read(fsts) as u16 % count;
            let mut found = false;
            for i in 0..count {
                let Some(frcd) = self.regs.fault_recording((first + i) % count) else {
                    continue;
                };
                let raw = RawFault {
                    lo: frcd.lo.get(),
                    hi: frcd.hi.get(),
                };
                if !raw.is_valid() {
                    continue;
                }
                found = true;
                // F is RW1C and the other fields are read-only: writing only F frees the record.
                frcd.hi.write(crate::registers::FRCD_HI::F::SET);
                let classify = match raw.code() {
                    0x05 | 0x06 => self.classify(raw.source(), raw.address()),
                    _ => Classify::Unknown,
                };
                match pending.records.get_mut(pending.len) {
                    Some(slot) => {
                        *slot = Some(raw.decode(classify));
                        pending.len += 1;
                    }
                    None => {
                        log::warn!("VT-d: more than {PENDING} faults between drains: dropped");
                        pending.overflow = true;
                    }
                }
            }
            if !found && block.fsts.read(FSTS::PPF) == 0 {
                return;
            }
        }
    }

    /// Whether `address` has a leaf in the table `source` is currently attached to: settles
    /// whether a second-stage fault (codes 5/6, the same for not present and read-only) is a
    /// translation or a permission fault.
    ///
    /// The caller holds the `tables` lock, so the device cannot be detached meanwhile.
    fn classify(&self, source: u16, address: u64) -> Classify {
        let sid = SourceId::from_raw(source);
        let (root, aw) = match self.mode {
            Mode::Legacy => {
                let Ok(Some(table)) = self.legacy_context_table(sid.bus(), false) else {
                    return Classify::Unknown;
                };
                let e = ContextEntry::decode(self.read_words::<2>(table, 2 * sid.devfn() as usize));
                if !e.is_present() {
                    return Classify::Unknown;
                }
                (e.second_stage_root(), e.address_width())
            }
            Mode::Scalable => {
                let Ok(Some(table)) = self.rid_pasid_table(sid, false) else {
                    return Classify::Unknown;
                };
                let e =
                    PasidEntry::decode(self.read_words::<8>(table, 8 * Pasid::ZERO.table_index()));
                if e.pgtt() != Some(crate::pasid::Pgtt::SecondStage) {
                    return Classify::Unknown;
                }
                (e.second_stage_root(), e.fields().aw)
            }
        };
        let Ok(format) = VtdSecondStage::for_aw(aw, self.output_width) else {
            return Classify::Unknown;
        };
        // SAFETY: the table is the attached domain's, built by the engine with frames of this
        // unit's HAL; the domain outlives its attachment (trait contract), and the attach lock
        // is held, so it cannot be detached and destroyed meanwhile.
        let walk = unsafe { PageTable::walk_root(format, &self.hal, root, Iova::new(address)) };
        match walk {
            Ok(w) if w.leaf().is_some() => Classify::Mapped,
            Ok(_) => Classify::Unmapped,
            Err(_) => Classify::Unknown,
        }
    }

    /// [`TranslationUnit::drain_faults`]: what is recorded now and what was collected before.
    pub(super) fn drain_pending(
        &self,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> Result<Drained, UnitError> {
        let _tables = self.tables.lock();
        let mut pending = self.faults.lock();
        self.collect_faults(&mut pending);
        let mut drained = Drained {
            records: 0,
            overflow: pending.overflow,
        };
        let len = pending.len;
        for slot in pending.records.iter_mut().take(len) {
            if let Some(record) = slot.take() {
                log::warn!("VT-d: fault: {record}");
                sink(record);
                drained.records += 1;
            }
        }
        pending.len = 0;
        pending.overflow = false;
        Ok(drained)
    }
}
