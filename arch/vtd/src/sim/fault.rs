//! The simulated unit's fault status and primary fault recording registers (7.2.1, 11.4.7):
//! FSTS with its RW1C bits, and the `CAP.NFR + 1` fault recording registers at `CAP.FRO × 16`,
//! filled as QEMU 10's `vtd_report_dmar_fault` does.
//!
//! The registers are plain memory the driver writes directly, so a write is seen afterwards,
//! as a difference from what the unit last showed: a 1 written to an RW1C bit clears it, and
//! the read-only fields are restored. FSTS shows its reserved bit 31 set, so that writing just
//! the bits to clear (IQE alone while only IQE is set) still changes it; a write that leaves a
//! register exactly as it was shown (writing back the FSTS value read, bit 31 included) cannot
//! be told from no write, and is lost. The unit's own updates are compare-and-swaps, so a
//! driver write landing between the unit's read and its update is never overwritten.
//!
//! Until the responder has taken a write in, the page shows what the driver wrote: a record
//! the driver freed by writing F reads as F set with reason 0 and source 0 (a record no
//! hardware makes) for as long as that takes. The responder polls without yielding while a
//! record is full, so the window is short, but a driver that reads a record again right after
//! freeing it can see one; it should skip records whose reason is 0 (reserved).

extern crate std;

use std::vec::Vec;

use super::translate::{Access, Fault};
use super::Regs;

/// FSTS (11.4.7.1) and its bits.
pub(super) const FSTS: usize = 0x34;
const PFO: u32 = 1 << 0;
const PPF: u32 = 1 << 1;
pub(super) const IQE: u32 = 1 << 4;
pub(super) const ITE: u32 = 1 << 6;
/// The RW1C bits of FSTS (PFO, AFO, APF, IQE, ICE, ITE).
const RW1C: u32 = 0x7d;
/// A reserved FSTS bit the page shows set, so that a driver writing the RW1C bits it means to
/// clear (and nothing else, as software does) changes the register even when those are all
/// that is set, and the write is seen.
const MARK: u32 = 1 << 31;
/// FRCD bit 127 (in the high quadword): F, RW1C.
const F: u64 = 1 << 63;

/// What the unit holds of its fault registers; the page shows it.
pub(super) struct Faults {
    /// FSTS's RW1C bits as the unit holds them.
    rw1c: u32,
    /// FSTS.FRI.
    fri: u32,
    /// FSTS as last shown on the page.
    shown: u32,
    /// Offset of the first fault recording register.
    fro: usize,
    /// Each record's high quadword as last shown (F set: the record holds a fault).
    records: Vec<u64>,
    /// The record the next fault goes to (QEMU's `next_frcd_reg`).
    next: usize,
}

impl Faults {
    /// The fault registers of a unit reporting `cap`, all clear.
    pub(super) fn new(cap: u64) -> Self {
        let fro = (((cap >> 24) & 0x3ff) * 16) as usize;
        let count = ((cap >> 40) & 0xff) as usize + 1;
        Self {
            rw1c: 0,
            fri: 0,
            shown: 0,
            fro,
            records: std::vec![0; count],
            next: 0,
        }
    }

    /// Whether FSTS has any of `bits` (RW1C ones) set, as the unit holds it.
    pub(super) fn has(&self, bits: u32) -> bool {
        self.rw1c & bits != 0
    }

    /// Sets RW1C bits of FSTS (IQE, ITE) and shows them.
    pub(super) fn set(&mut self, regs: Regs, bits: u32) {
        self.rw1c |= bits & RW1C;
        self.show(regs);
    }

    /// Whether a record holds a fault: the responder then keeps polling without yielding, to
    /// take in the driver's clearing write as soon as it lands (module docs).
    pub(super) fn pending(&self) -> bool {
        self.records.iter().any(|r| r & F != 0)
    }

    /// Takes in what the driver wrote since the last look, and shows the result.
    pub(super) fn sync(&mut self, regs: Regs) {
        let fsts = regs.r32(FSTS);
        if fsts != self.shown {
            self.rw1c &= !(fsts & RW1C);
            // Accounted for: `show` replaces exactly this value.
            self.shown = fsts;
        }
        for (i, shown) in self.records.iter_mut().enumerate() {
            let at = self.fro + 16 * i + 8;
            let page = regs.r64(at);
            if page != *shown {
                // Only F is writable (RW1C); the rest is restored.
                let restored = if page & F != 0 { *shown & !F } else { *shown };
                if regs.cas64(at, page, restored) {
                    *shown = restored;
                }
            }
        }
        self.show(regs);
    }

    /// Shows FSTS as the unit holds it (PPF from the records).
    fn show(&mut self, regs: Regs) {
        let ppf = if self.records.iter().any(|r| r & F != 0) {
            PPF
        } else {
            0
        };
        let value = MARK | self.rw1c | ppf | (self.fri << 8);
        // Fails if the driver wrote since the value last accounted for: the next `sync`
        // takes its write in.
        if value != self.shown && regs.cas32(FSTS, self.shown, value) {
            self.shown = value;
        }
    }

    /// Records `fault` as QEMU 10 does: dropped while PFO is set or while a record from the
    /// same source is pending; PFO if the next record is still full; otherwise the next record,
    /// FRI pointing at it if no fault was pending before. Whether it was recorded.
    pub(super) fn record(&mut self, regs: Regs, fault: &Fault) -> bool {
        self.sync(regs);
        if fault.reason == 0 || self.rw1c & PFO != 0 {
            return false;
        }
        let source = u64::from(fault.source_id);
        if self
            .records
            .iter()
            .any(|r| r & F != 0 && r & 0xffff == source)
        {
            return false;
        }
        let next = self.next;
        if self.records[next] & F != 0 {
            self.rw1c |= PFO;
            self.show(regs);
            return false;
        }
        let pending_before = self.records.iter().any(|r| r & F != 0);
        let mut hi = source | u64::from(fault.reason) << 32;
        if fault.access == Access::Read {
            hi |= 1 << 62; // T1: a read
        }
        if let Some(pasid) = fault.pasid {
            hi |= 1 << 31 | u64::from(pasid & 0xf_ffff) << 40; // PP, PV
        }
        let at = self.fro + 16 * next;
        // The record is free (F clear), so the driver does not write it: plain writes, the
        // high quadword (with F) last.
        regs.w64(at, fault.address & !0xfff);
        regs.w64(at + 8, hi | F);
        self.records[next] = hi | F;
        if !pending_before {
            self.fri = next as u32;
        }
        self.next = (next + 1) % self.records.len();
        self.show(regs);
        true
    }
}

#[cfg(test)]
mod tests;
