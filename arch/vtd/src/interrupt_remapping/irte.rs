//! The interrupt-remapping table entry (IRTE, VT-d spec 9.10, remapped format): a typed value
//! and its one encoding into the two 64-bit words the unit reads.
//!
//! Layout (low word): P(0), FPD(1), DM(2), RH(3), TM(4), DLM(7:5), AVAIL(11:8), reserved(14:12),
//! IM(15) = 0 for remapped (1 would be posted), V(23:16), reserved(31:24), DST(63:32).
//! High word: SID(15:0), SQ(17:16), SVT(19:18), reserved(63:20). A unit checks the reserved
//! bits of a present entry (fault 0x24), so nothing here can set them.

/// Physical or logical destination (IRTE.DM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationMode {
    Physical,
    Logical,
}

/// Edge or level triggered (IRTE.TM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// How the local APIC handles the interrupt (IRTE.DLM, the x86 delivery modes; 3 and 6 are
/// reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    ExtInt,
}

impl DeliveryMode {
    const fn bits(self) -> u64 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::ExtInt => 7,
        }
    }

    const fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            _ => return None,
        })
    }
}

/// The destination APIC id, in the format IRTA.EIME selects for the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// xAPIC (IRTA.EIME = 0): an 8-bit APIC id, held in bits 15:8 of the DST field.
    Xapic(u8),
    /// x2APIC (IRTA.EIME = 1, needs ECAP.EIM): the 32-bit APIC id, the whole DST field.
    X2apic(u32),
}

impl Destination {
    const fn dst_field(self) -> u64 {
        match self {
            Self::Xapic(id) => (id as u64) << 8,
            Self::X2apic(id) => id as u64,
        }
    }

    /// The APIC id.
    pub const fn apic_id(self) -> u32 {
        match self {
            Self::Xapic(id) => id as u32,
            Self::X2apic(id) => id,
        }
    }
}

/// Which bits of the requester id IRTE.SQ tells the unit to ignore when SVT = 01 (table 9-26):
/// for a multi-function device whose functions share one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceQualifier {
    /// Compare all 16 bits.
    All,
    /// Ignore function bit 2.
    IgnoreBit2,
    /// Ignore function bits 2:1.
    IgnoreBits2To1,
    /// Ignore function bits 2:0 (any function of the device).
    IgnoreFunction,
}

impl SourceQualifier {
    const fn bits(self) -> u64 {
        match self {
            Self::All => 0,
            Self::IgnoreBit2 => 1,
            Self::IgnoreBits2To1 => 2,
            Self::IgnoreFunction => 3,
        }
    }

    const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => Self::All,
            1 => Self::IgnoreBit2,
            2 => Self::IgnoreBits2To1,
            _ => Self::IgnoreFunction,
        }
    }
}

/// How the unit checks who sent an interrupt naming the entry (IRTE.SVT with SID and SQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT = 00: anyone may raise it. Never used by the driver for device interrupts: it would
    /// let any device that learns the handle raise the vector.
    None,
    /// SVT = 01: only the requester id `sid` (bus << 8 | devfn), compared as `qualifier` says.
    Requester {
        sid: u16,
        qualifier: SourceQualifier,
    },
    /// SVT = 10: any requester whose bus number is in `first..=last` (a bridge's buses).
    Buses { first: u8, last: u8 },
}

/// One remapped-format IRTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irte {
    pub present: bool,
    /// Fault Processing Disable: blocked interrupts naming the entry are not recorded.
    pub fault_processing_disabled: bool,
    pub destination_mode: DestinationMode,
    /// Redirection Hint: with lowest-priority delivery, the unit may pick any CPU of the
    /// logical destination.
    pub redirection_hint: bool,
    pub trigger_mode: TriggerMode,
    pub delivery_mode: DeliveryMode,
    pub vector: u8,
    pub destination: Destination,
    pub source: SourceValidation,
}

/// Why two words do not decode into a remapped-format [`Irte`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrteDecodeError {
    /// IM = 1: a posted-interrupt entry, which this driver does not write.
    Posted,
    /// A reserved delivery mode (3 or 6).
    DeliveryMode(u8),
    /// SVT = 11 (reserved).
    SourceValidationType,
    /// A reserved bit is set (low word 14:12 or 31:24, high word 63:20).
    Reserved,
}

/// Reserved bits of the low word: 14:12 and 31:24 (IM, bit 15, is decoded on its own).
const LO_RESERVED: u64 = 0x7 << 12 | 0xff << 24;
/// Reserved bits of the high word: 63:20.
const HI_RESERVED: u64 = !0 << 20;
const IM: u64 = 1 << 15;

impl Irte {
    /// A fixed, edge-triggered interrupt `vector` to the CPU `destination` (physical mode),
    /// raisable only by the requester `sid` (all 16 bits compared): what
    /// [`crate::VtdUnit`]'s `allocate` writes.
    pub const fn fixed(vector: u8, destination: Destination, sid: u16) -> Self {
        Self {
            present: true,
            fault_processing_disabled: false,
            destination_mode: DestinationMode::Physical,
            redirection_hint: false,
            trigger_mode: TriggerMode::Edge,
            delivery_mode: DeliveryMode::Fixed,
            vector,
            destination,
            source: SourceValidation::Requester {
                sid,
                qualifier: SourceQualifier::All,
            },
        }
    }

    /// The two words, low first. The one place the layout is written.
    pub const fn encode(&self) -> [u64; 2] {
        let lo = self.present as u64
            | (self.fault_processing_disabled as u64) << 1
            | (matches!(self.destination_mode, DestinationMode::Logical) as u64) << 2
            | (self.redirection_hint as u64) << 3
            | (matches!(self.trigger_mode, TriggerMode::Level) as u64) << 4
            | self.delivery_mode.bits() << 5
            | (self.vector as u64) << 16
            | self.destination.dst_field() << 32;
        let hi = match self.source {
            SourceValidation::None => 0,
            SourceValidation::Requester { sid, qualifier } => {
                sid as u64 | qualifier.bits() << 16 | 1 << 18
            }
            // SID holds the bus range: start bus in 15:8, end bus in 7:0 (table 9-26).
            SourceValidation::Buses { first, last } => (first as u64) << 8 | last as u64 | 2 << 18,
        };
        [lo, hi]
    }

    /// Decodes two words as the unit would read them; `x2apic` is the table's IRTA.EIME.
    pub const fn decode(words: [u64; 2], x2apic: bool) -> Result<Self, IrteDecodeError> {
        let [lo, hi] = words;
        if lo & IM != 0 {
            return Err(IrteDecodeError::Posted);
        }
        if lo & LO_RESERVED != 0 || hi & HI_RESERVED != 0 {
            return Err(IrteDecodeError::Reserved);
        }
        let dlm = (lo >> 5) & 7;
        let Some(delivery_mode) = DeliveryMode::from_bits(dlm) else {
            return Err(IrteDecodeError::DeliveryMode(dlm as u8));
        };
        let dst = (lo >> 32) as u32;
        let destination = if x2apic {
            Destination::X2apic(dst)
        } else {
            Destination::Xapic((dst >> 8) as u8)
        };
        let sid = hi as u16;
        let source = match (hi >> 18) & 3 {
            0 => SourceValidation::None,
            1 => SourceValidation::Requester {
                sid,
                qualifier: SourceQualifier::from_bits(hi >> 16),
            },
            2 => SourceValidation::Buses {
                first: (sid >> 8) as u8,
                last: sid as u8,
            },
            _ => return Err(IrteDecodeError::SourceValidationType),
        };
        Ok(Self {
            present: lo & 1 != 0,
            fault_processing_disabled: lo & 2 != 0,
            destination_mode: if lo & 4 != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            redirection_hint: lo & 8 != 0,
            trigger_mode: if lo & 0x10 != 0 {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
            delivery_mode,
            vector: (lo >> 16) as u8,
            destination,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_xapic_entry_matches_hand_derived_words() {
        // P=1, V=0x40 (bits 23:16), DST = APIC 3 in bits 15:8 of the field (bit 40 and 41);
        // SID 00:03.0 = 0x0018, SQ=0, SVT=01 (bit 18).
        let e = Irte::fixed(0x40, Destination::Xapic(3), 0x0018);
        assert_eq!(e.encode(), [0x0000_0300_0040_0001, 0x0000_0000_0004_0018]);
        assert_eq!(Irte::decode(e.encode(), false), Ok(e));
    }

    #[test]
    fn every_field_lands_in_its_bits() {
        let e = Irte {
            present: true,
            fault_processing_disabled: true,
            destination_mode: DestinationMode::Logical,
            redirection_hint: true,
            trigger_mode: TriggerMode::Level,
            delivery_mode: DeliveryMode::LowestPriority,
            vector: 0xfe,
            destination: Destination::X2apic(0x1234_5678),
            source: SourceValidation::Requester {
                sid: 0xabcd,
                qualifier: SourceQualifier::IgnoreFunction,
            },
        };
        // lo: P|FPD|DM|RH|TM = 0x1f, DLM=1 -> 0x20, V=0xfe << 16, DST << 32.
        // hi: SID 0xabcd, SQ=3 -> 0x30000, SVT=1 -> 0x40000.
        assert_eq!(e.encode(), [0x1234_5678_00fe_003f, 0x0007_abcd]);
        assert_eq!(Irte::decode(e.encode(), true), Ok(e));
    }

    #[test]
    fn bus_range_validation_and_no_validation() {
        let mut e = Irte::fixed(0x21, Destination::Xapic(0), 0);
        e.source = SourceValidation::Buses { first: 2, last: 5 };
        assert_eq!(e.encode()[1], 0x0008_0205);
        assert_eq!(Irte::decode(e.encode(), false), Ok(e));
        e.source = SourceValidation::None;
        assert_eq!(e.encode()[1], 0);
    }

    #[test]
    fn delivery_modes_encode_as_the_sdm_numbers() {
        for (mode, bits) in [
            (DeliveryMode::Fixed, 0u64),
            (DeliveryMode::LowestPriority, 1),
            (DeliveryMode::Smi, 2),
            (DeliveryMode::Nmi, 4),
            (DeliveryMode::Init, 5),
            (DeliveryMode::ExtInt, 7),
        ] {
            let mut e = Irte::fixed(0x30, Destination::Xapic(0), 0);
            e.delivery_mode = mode;
            assert_eq!((e.encode()[0] >> 5) & 7, bits);
        }
    }

    #[test]
    fn reserved_and_posted_words_are_refused() {
        let ok = Irte::fixed(0x40, Destination::Xapic(1), 8).encode();
        assert_eq!(
            Irte::decode([ok[0] | 1 << 15, ok[1]], false),
            Err(IrteDecodeError::Posted)
        );
        assert_eq!(
            Irte::decode([ok[0] | 1 << 24, ok[1]], false),
            Err(IrteDecodeError::Reserved)
        );
        assert_eq!(
            Irte::decode([ok[0], ok[1] | 1 << 20], false),
            Err(IrteDecodeError::Reserved)
        );
        assert_eq!(
            Irte::decode([ok[0] | 3 << 5, ok[1]], false),
            Err(IrteDecodeError::DeliveryMode(3))
        );
        assert_eq!(
            Irte::decode([ok[0], ok[1] | 3 << 18], false),
            Err(IrteDecodeError::SourceValidationType)
        );
    }
}
