//! Primary fault records (VT-d spec 7.1.3, 11.4.7.6): the reason codes and what they mean, and
//! the decoding of one fault recording register into the core's [`FaultRecord`]. DMA faults
//! carry the faulting page; interrupt-remapping faults (0x20..=0x27) the interrupt index.
//!
//! Second-stage walks report a not-present entry and a missing permission with the same codes
//! (5: write, 6: read), so whether such a fault is a translation or a permission fault is
//! decided by the caller, which can look at the table ([`Classify`]).

use iommu::unit::{DeviceId, FaultKind, FaultRecord};

use crate::registers::{FRCD_HI, FRCD_LO};

/// How the caller settles the ambiguous second-stage codes 5 and 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classify {
    /// The address has a leaf in the device's table: the access lacked permission.
    Mapped,
    /// No leaf covers the address.
    Unmapped,
    /// The table could not be looked at (the device is no longer attached to it).
    Unknown,
}

/// The meaning of a fault reason code, in the words of the spec (7.1.3, tables 30 and 31),
/// and its broad class; `None` for the codes 5/6 whose class depends on the table.
pub const fn reason(code: u8) -> (&'static str, Option<FaultKind>) {
    use FaultKind::*;
    match code {
        0x01 => ("root entry not present", Some(Configuration)),
        0x02 => ("context entry not present", Some(Configuration)),
        0x03 => ("invalid context entry programming", Some(Configuration)),
        0x04 => ("address beyond the address width", Some(AddressSize)),
        0x05 => ("write without write permission", None),
        0x06 => ("read without read permission", None),
        0x07 => ("second-stage entry address invalid", Some(Other)),
        0x08 => ("root table address invalid", Some(Configuration)),
        0x09 => ("context table pointer invalid", Some(Configuration)),
        0x0a => ("reserved field set in root entry", Some(Configuration)),
        0x0b => ("reserved field set in context entry", Some(Configuration)),
        0x0c => (
            "reserved field set in second-stage entry",
            Some(Translation),
        ),
        0x0d => (
            "translation type blocked by context entry",
            Some(Configuration),
        ),
        // Interrupt remapping (7.1.3, table 31); the record's address holds the interrupt
        // index instead of a page.
        0x20 => (
            "interrupt request with a reserved field set",
            Some(Configuration),
        ),
        0x21 => (
            "interrupt index beyond the remapping table",
            Some(Translation),
        ),
        0x22 => ("interrupt remapping entry not present", Some(Translation)),
        0x23 => (
            "interrupt remapping table not accessible",
            Some(Configuration),
        ),
        0x24 => (
            "reserved field set in a present interrupt remapping entry",
            Some(Configuration),
        ),
        0x25 => ("compatibility-format interrupt blocked", Some(Permission)),
        0x26 => ("interrupt source-id validation failed", Some(Permission)),
        0x27 => (
            "posted-interrupt descriptor not accessible",
            Some(Configuration),
        ),
        0x30..=0x3b => (
            "scalable-mode root or context entry invalid",
            Some(Configuration),
        ),
        0x50 | 0x58 => (
            "PASID directory or table not accessible",
            Some(Configuration),
        ),
        0x51 => ("PASID directory entry not present", Some(Configuration)),
        0x59 => ("PASID entry not present", Some(Configuration)),
        0x5a..=0x5f => ("PASID entry invalid", Some(Configuration)),
        0x70 => ("first-stage entry not accessible", Some(Other)),
        0x71 => ("first-stage entry not present", Some(Translation)),
        0x72 => ("reserved field set in first-stage entry", Some(Translation)),
        0x73 => ("first-stage table pointer invalid", Some(Configuration)),
        0x80 => ("address not canonical", Some(AddressSize)),
        0x81 => ("user request to a supervisor page", Some(Permission)),
        0x84 => (
            "read without read permission (scalable mode)",
            Some(Permission),
        ),
        0x85 => (
            "write without write permission (scalable mode)",
            Some(Permission),
        ),
        0x86 => ("execute without execute permission", Some(Permission)),
        0x87 => ("address in the interrupt range", Some(Other)),
        _ => ("reason not decoded", Some(Other)),
    }
}

/// One fault recording register as read: the low and high quadwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFault {
    pub lo: u64,
    pub hi: u64,
}

impl RawFault {
    fn field(&self, f: tock_registers::fields::Field<u64, FRCD_HI::Register>) -> u64 {
        f.read(self.hi)
    }

    /// F: the register holds a fault.
    pub fn is_valid(&self) -> bool {
        self.field(FRCD_HI::F) != 0
    }

    /// The requester id (bus << 8 | devfn).
    pub fn source(&self) -> u16 {
        self.field(FRCD_HI::SID) as u16
    }

    /// The faulting page address.
    pub fn address(&self) -> u64 {
        self.lo & FRCD_LO::FI::SET.mask()
    }

    /// An interrupt-remapping fault (reasons 0x20..=0x27): a blocked interrupt request, not
    /// a DMA.
    pub fn is_interrupt_fault(&self) -> bool {
        matches!(self.code(), 0x20..=0x27)
    }

    /// For an interrupt-remapping fault, the interrupt index of the request (11.4.14: FI bits
    /// 63:48, bits 47:12 clear).
    pub fn interrupt_index(&self) -> Option<u16> {
        self.is_interrupt_fault().then_some((self.lo >> 48) as u16)
    }

    /// T1 = 0 is a write (for requests other than page requests).
    pub fn is_write(&self) -> bool {
        self.field(FRCD_HI::T1) == 0
    }

    pub fn code(&self) -> u8 {
        self.field(FRCD_HI::FR) as u8
    }

    pub fn pasid(&self) -> Option<u32> {
        (self.field(FRCD_HI::PP) != 0).then(|| self.field(FRCD_HI::PV) as u32)
    }

    /// The core's record; `classify` settles codes 5 and 6.
    pub fn decode(&self, classify: Classify) -> FaultRecord {
        let code = self.code();
        let (meaning, kind) = reason(code);
        let kind = kind.unwrap_or(match classify {
            Classify::Mapped => FaultKind::Permission,
            Classify::Unmapped => FaultKind::Translation,
            Classify::Unknown => FaultKind::Other,
        });
        let reason = match (code, classify) {
            (0x05 | 0x06, Classify::Unmapped) => "second-stage entry not present",
            _ => meaning,
        };
        // An interrupt request is a write; its T bit means nothing and its address is the
        // interrupt index.
        let (address, write) = match self.interrupt_index() {
            Some(index) => (u64::from(index), true),
            None => (self.address(), self.is_write()),
        };
        FaultRecord {
            device: DeviceId(u32::from(self.source())),
            pasid: self.pasid(),
            address,
            write,
            kind,
            code: u16::from(code),
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
