//! Interrupt remapping (VT-d spec 5.1, 9.10): the unit checks every MSI a device sends
//! against an interrupt-remapping table entry (IRTE) pinned to that device's requester id, so
//! a device given to a guest can only raise the interrupts set up for it.
//!
//! The rooms: [`irte`] (the entry, typed and encoded once), [`table`] (the table's memory and
//! which entries are handed out), [`message`] (the remappable-format MSI naming an entry). This
//! file turns remapping on for a [`VtdUnit`] ([`VtdUnit::enable_interrupt_remapping`], after
//! bring-up) and implements the core's [`InterruptRemapper`] with it: `allocate` writes an
//! entry with source validation SVT = 01 / SQ = 0 / SID = the requester id, `retarget` and
//! `free` rewrite or clear it and wait for an index-selective interrupt entry cache
//! invalidation (6.5.2.7) through the unit's invalidation queue, so the old entry is gone
//! when they return.
//!
//! Compatibility-format MSIs (address bit 4 = 0) are left blocked: GCMD.CFI stays clear
//! (spec 5.1.4.1: with IR on and CFIS clear they fault with reason 0x25). Interrupts the unit
//! itself sends (fault events) are not remapped. Blocked interrupts are recorded in the fault
//! recording registers (reasons 0x20..=0x27) and reach the embedder through the same drain as
//! DMA faults, with the interrupt index in the record's address (see
//! [`crate::fault_record`]).

pub mod irte;
pub mod message;
pub mod table;

use iommu::addr::PhysAddr;
use iommu::hal::Hal;
use iommu::irq::{InterruptRemapper, InterruptTarget, RemappedInterrupt};
use iommu::unit::{DeviceId, UnitError};

use crate::descriptor::{Descriptor, IecScope, IrteBlock};
use crate::registers::{Readable, Writeable, GCMD, GSTS, IRTA};
use crate::unit::VtdUnit;
use irte::{Destination, Irte, SourceValidation};
use table::{InterruptRemappingTable, TableSize};

/// The APIC mode the CPUs run in, which decides the IRTE destination format (IRTA.EIME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    /// xAPIC: 8-bit destination ids (EIME = 0).
    Xapic,
    /// x2APIC: 32-bit destination ids (EIME = 1; needs ECAP.EIM).
    X2apic,
}

/// A unit's remapping state once enabled.
pub(crate) struct Remapping {
    table: InterruptRemappingTable,
    apic: ApicMode,
}

/// The vectors a fixed interrupt may use: 0..=15 are illegal for fixed delivery and 16..=31
/// are the CPU's exceptions.
const VECTORS: core::ops::RangeInclusive<u32> = 32..=255;

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// Turns interrupt remapping on with a table of `entries` IRTEs (a power of two, 2 to
    /// [`table::MAX_ENTRIES`]) from the unit's HAL, destinations in the `apic` format: IRTA,
    /// then SIRTP, a global interrupt entry cache invalidation, then IRE, each with its GSTS
    /// handshake. From then on every MSI must name a present entry it is allowed to use.
    ///
    /// Refused with [`UnitError::Unsupported`] without ECAP.IR, without queued invalidation
    /// (the cache invalidation has no register form), for x2APIC without ECAP.EIM or a bad
    /// size; with [`UnitError::Busy`] when remapping is already on.
    pub fn enable_interrupt_remapping(
        &self,
        entries: u32,
        apic: ApicMode,
    ) -> Result<(), UnitError> {
        let ecap = self.info.ecap;
        if !ecap.ir() {
            return Err(UnitError::Unsupported(
                "interrupt remapping needs ECAP.IR (QEMU: intremap=on)",
            ));
        }
        if self.qi.is_none() {
            return Err(UnitError::Unsupported(
                "interrupt remapping needs queued invalidation (ECAP.QI)",
            ));
        }
        if apic == ApicMode::X2apic && !ecap.eim() {
            return Err(UnitError::Unsupported("x2APIC destinations need ECAP.EIM"));
        }
        let size = TableSize::new(entries).map_err(|_| {
            UnitError::Unsupported("interrupt-remapping table: a power of two, 2..=4096 entries")
        })?;
        // The tables lock serialises this against attach and teardown, the other users of
        // GCMD state changes.
        let _tables = self.tables.lock();
        if self.interrupts.get().is_some() {
            return Err(UnitError::Busy);
        }
        let table = InterruptRemappingTable::allocate(&self.hal, size, self.coherency)
            .ok_or(UnitError::OutOfMemory)?;
        let block = self.regs.block();
        let eime = match apic {
            ApicMode::Xapic => IRTA::EIME::CLEAR,
            ApicMode::X2apic => IRTA::EIME::SET,
        };
        block.irta.write(
            IRTA::IRTA.val(table.base().as_u64() >> 12) + IRTA::S.val(size.s_field()) + eime,
        );
        Self::command(self.regs, GCMD::SIRTP::SET, true, GSTS::IRTPS, "GSTS.IRTPS")?;
        // Entries of an earlier table may still be cached (10.4.4: global IEC after SIRTP).
        self.invalidate([Descriptor::InterruptEntryCache(IecScope::Global)].iter())?;
        self.interrupts.call_once(|| Remapping { table, apic });
        Self::command(self.regs, GCMD::IRE::SET, true, GSTS::IRES, "GSTS.IRES")?;
        log::debug!(
            "VT-d: interrupt remapping on, {} entries at {}, {apic:?} destinations, \
             compatibility-format interrupts blocked",
            size.entries(),
            table_base(self)
        );
        Ok(())
    }

    /// Whether [`enable_interrupt_remapping`](Self::enable_interrupt_remapping) succeeded
    /// and the unit reports remapping on (GSTS.IRES).
    pub fn interrupt_remapping_enabled(&self) -> bool {
        self.interrupts.get().is_some() && self.regs.block().gsts.is_set(GSTS::IRES)
    }

    /// The entry `handle` as the unit would read it now (`None` past the table or before
    /// remapping is on), for inspection.
    pub fn irte(&self, handle: u32) -> Option<[u64; 2]> {
        let r = self.interrupts.get()?;
        r.table.read(&self.hal, u16::try_from(handle).ok()?)
    }

    /// The number of entries of the table (0 before remapping is on).
    pub fn irte_count(&self) -> u32 {
        self.interrupts
            .get()
            .map_or(0, |r| r.table.size().entries())
    }

    fn remapping(&self) -> Result<&Remapping, UnitError> {
        self.interrupts.get().ok_or(UnitError::Unsupported(
            "interrupt remapping is not enabled on this unit",
        ))
    }

    /// Waits until the unit has dropped any cached copy of entry `index`.
    fn invalidate_irte(&self, index: u16) -> Result<(), UnitError> {
        let d = Descriptor::InterruptEntryCache(IecScope::Entries(IrteBlock::entry(index)));
        self.invalidate([d].iter())
    }

    /// The entry `irq` names, checked to be one this unit handed out to `irq.device`.
    fn owned(&self, r: &Remapping, irq: &RemappedInterrupt) -> Result<(u16, [u64; 2]), UnitError> {
        let not_ours = UnitError::Unsupported("interrupt handle not allocated by this unit");
        let index = u16::try_from(irq.handle).map_err(|_| not_ours)?;
        if !r.table.is_claimed(index) {
            return Err(not_ours);
        }
        let words = r.table.read(&self.hal, index).ok_or(not_ours)?;
        match Irte::decode(words, r.apic == ApicMode::X2apic) {
            Ok(Irte {
                present: true,
                source: SourceValidation::Requester { sid, .. },
                ..
            }) if u32::from(sid) == irq.device.0 => Ok((index, words)),
            _ => Err(UnitError::UnknownDevice(irq.device)),
        }
    }

    /// The entry for `target` raised by `sid`.
    fn entry_for(r: &Remapping, sid: u16, target: InterruptTarget) -> Result<Irte, UnitError> {
        if !VECTORS.contains(&target.vector) {
            return Err(UnitError::Unsupported(
                "x86 interrupt vector outside 32..=255",
            ));
        }
        let destination = match r.apic {
            ApicMode::Xapic => Destination::Xapic(u8::try_from(target.cpu).map_err(|_| {
                UnitError::Unsupported("xAPIC destination id above 255 (x2APIC needs ECAP.EIM)")
            })?),
            ApicMode::X2apic => Destination::X2apic(target.cpu),
        };
        Ok(Irte::fixed(target.vector as u8, destination, sid))
    }

    /// Puts `words` back into entry `index` after a failed change, so an error leaves the
    /// entry as it was (best effort: the invalidation that failed may fail again).
    fn restore(&self, r: &Remapping, index: u16, words: [u64; 2]) {
        match Irte::decode(words, r.apic == ApicMode::X2apic) {
            Ok(old) if old.present => {
                r.table.write(&self.hal, self.coherency, index, &old);
            }
            _ => {
                r.table.clear(&self.hal, self.coherency, index);
            }
        }
        let _ = self.invalidate_irte(index);
    }
}

fn table_base<H: Hal + Clone>(unit: &VtdUnit<'_, H>) -> PhysAddr {
    unit.interrupts
        .get()
        .map_or(PhysAddr::new(0), |r| r.table.base())
}

impl<H: Hal + Clone> InterruptRemapper for VtdUnit<'_, H> {
    fn allocate(
        &self,
        device: DeviceId,
        target: InterruptTarget,
    ) -> Result<RemappedInterrupt, UnitError> {
        let r = self.remapping()?;
        let sid = u16::try_from(device.0).map_err(|_| UnitError::UnknownDevice(device))?;
        let entry = Self::entry_for(r, sid, target)?;
        let index = r.table.claim().ok_or(UnitError::OutOfIds)?;
        r.table.write(&self.hal, self.coherency, index, &entry);
        // Not present -> present needs no invalidation outside caching mode, but a unit may
        // have cached the entry as not present (CAP.CM): one descriptor covers both.
        if let Err(e) = self.invalidate_irte(index) {
            r.table.clear(&self.hal, self.coherency, index);
            r.table.release(index);
            return Err(e);
        }
        Ok(RemappedInterrupt {
            device,
            handle: u32::from(index),
            message: message::remappable(index),
            target,
        })
    }

    fn retarget(
        &self,
        irq: &mut RemappedInterrupt,
        target: InterruptTarget,
    ) -> Result<(), UnitError> {
        let r = self.remapping()?;
        let (index, old) = self.owned(r, irq)?;
        let sid = u16::try_from(irq.device.0).map_err(|_| UnitError::UnknownDevice(irq.device))?;
        let entry = Self::entry_for(r, sid, target)?;
        // Same source validation: only the low word changes, in one store.
        r.table.write(&self.hal, self.coherency, index, &entry);
        if let Err(e) = self.invalidate_irte(index) {
            self.restore(r, index, old);
            return Err(e);
        }
        irq.target = target;
        Ok(())
    }

    fn free(&self, irq: RemappedInterrupt) -> Result<(), UnitError> {
        let r = self.remapping()?;
        let (index, old) = self.owned(r, &irq)?;
        r.table.clear(&self.hal, self.coherency, index);
        if let Err(e) = self.invalidate_irte(index) {
            self.restore(r, index, old);
            return Err(e);
        }
        // Only once no cached copy is left may the entry go to another device.
        r.table.release(index);
        Ok(())
    }

    /// VT-d MSIs are not DMA: the interrupt range is never translated.
    fn doorbell(&self) -> Option<PhysAddr> {
        None
    }
}
