//! The MSI a device writes to name an IRTE (VT-d spec 5.1.5.2, remappable format), and the
//! compatibility-format MSI it would write without remapping.
//!
//! Remappable address: 0xFEE in bits 31:20, handle\[14:0\] in 19:5, interrupt format (bit 4) = 1,
//! SHV (bit 3) = 0 (no subhandle: the data is not added to the handle), handle\[15\] in bit 2,
//! bits 1:0 ignored. The data is 0: with SHV = 0 the unit takes everything from the entry.

use iommu::irq::MsiMessage;

/// The 1 MiB the interrupt messages of x86 live in; never translated as DMA.
pub const INTERRUPT_RANGE: core::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

/// Bit 4 of a message address: 1 = remappable format, 0 = compatibility format.
const FORMAT_REMAPPABLE: u64 = 1 << 4;
/// Bit 3: SubHandle Valid.
const SHV: u64 = 1 << 3;

/// The remappable-format message naming IRTE `handle`.
pub const fn remappable(handle: u16) -> MsiMessage {
    let h = handle as u64;
    MsiMessage {
        address: *INTERRUPT_RANGE.start() | (h & 0x7fff) << 5 | FORMAT_REMAPPABLE | (h >> 15) << 2,
        data: 0,
    }
}

/// The IRTE a remappable-format message names (with SHV, plus the data's subhandle); `None`
/// for a compatibility-format message or an address outside the interrupt range.
pub const fn handle_of(message: MsiMessage) -> Option<u32> {
    let a = message.address;
    if a >> 20 != 0xfee || a & FORMAT_REMAPPABLE == 0 {
        return None;
    }
    let base = ((a >> 5) & 0x7fff) | ((a >> 2) & 1) << 15;
    let sub = if a & SHV != 0 {
        message.data & 0xffff
    } else {
        0
    };
    Some(base as u32 + sub)
}

/// A compatibility-format MSI: a fixed, edge-triggered `vector` to the xAPIC `apic_id`
/// (physical destination; Intel SDM vol. 3, 11.11).
pub const fn compatibility(apic_id: u8, vector: u8) -> MsiMessage {
    MsiMessage {
        address: *INTERRUPT_RANGE.start() | (apic_id as u64) << 12,
        data: vector as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_bits_are_split_as_the_spec_says() {
        // handle 0: only the format bit.
        assert_eq!(remappable(0).address, 0xfee0_0010);
        // handle 1 -> bit 5.
        assert_eq!(remappable(1).address, 0xfee0_0030);
        // handle 0x7fff fills 19:5.
        assert_eq!(remappable(0x7fff).address, 0xfeef_fff0);
        // handle 0x8000 -> bit 2 only.
        assert_eq!(remappable(0x8000).address, 0xfee0_0014);
        assert_eq!(remappable(0x8000).data, 0);
        for h in [0u16, 1, 0x1234, 0x7fff, 0x8000, 0xffff] {
            assert_eq!(handle_of(remappable(h)), Some(u32::from(h)));
        }
    }

    #[test]
    fn compatibility_messages_name_no_handle() {
        let m = compatibility(2, 0x41);
        assert_eq!((m.address, m.data), (0xfee0_2000, 0x41));
        assert_eq!(handle_of(m), None);
        // With SHV the data's low 16 bits are added.
        let sub = MsiMessage {
            address: remappable(0x10).address | SHV,
            data: 3,
        };
        assert_eq!(handle_of(sub), Some(0x13));
    }
}
