//! The ACPI MCFG table (PCI Firmware Specification 3.2, 4.1.2): where each PCI segment's ECAM
//! window is, so x86 test kernels reach the 4 KiB configuration space (and its extended
//! capabilities) that port I/O cannot.

use iommu::acpi::le;

/// One ECAM window: segment group, bus range and the physical address of its first bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamWindow {
    /// Physical address of bus `start_bus`'s configuration space.
    pub base: u64,
    pub segment: u16,
    pub start_bus: u8,
    pub end_bus: u8,
}

impl EcamWindow {
    /// Bytes the window covers: 1 MiB per bus.
    pub fn len(&self) -> u64 {
        (u64::from(self.end_bus) - u64::from(self.start_bus) + 1) << 20
    }

    /// Never: a window covers at least one bus.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of buses the window covers.
    pub fn buses(&self) -> u16 {
        u16::from(self.end_bus) - u16::from(self.start_bus) + 1
    }
}

/// The MCFG body starts after the 36-byte header and 8 reserved bytes; each allocation
/// structure is 16 bytes: base u64, segment u16, start bus u8, end bus u8, 4 reserved.
const FIRST_ENTRY: usize = 44;
const ENTRY_LEN: usize = 16;

/// The windows an MCFG table (`bytes`, header included, as `iommu::acpi::Table::bytes` gives
/// it) lists; entries with an end bus before the start bus or a base not 1 MiB aligned are
/// skipped, a trailing partial entry is ignored.
pub fn ecam_windows(bytes: &[u8]) -> impl Iterator<Item = EcamWindow> + '_ {
    let entries = bytes.len().saturating_sub(FIRST_ENTRY) / ENTRY_LEN;
    (0..entries).filter_map(move |i| {
        let at = FIRST_ENTRY + i * ENTRY_LEN;
        let w = EcamWindow {
            base: le::u64_at(bytes, at)?,
            segment: le::u16_at(bytes, at + 8)?,
            start_bus: le::u8_at(bytes, at + 10)?,
            end_bus: le::u8_at(bytes, at + 11)?,
        };
        (w.end_bus >= w.start_bus && w.base & 0xf_ffff == 0).then_some(w)
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    fn table(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut t = std::vec![0u8; FIRST_ENTRY];
        t[..4].copy_from_slice(b"MCFG");
        for &(base, seg, start, end) in entries {
            t.extend_from_slice(&base.to_le_bytes());
            t.extend_from_slice(&seg.to_le_bytes());
            t.extend_from_slice(&[start, end, 0, 0, 0, 0]);
        }
        t
    }

    #[test]
    fn q35_window_decodes() {
        // QEMU 10 q35: one window at 0xb000_0000 for buses 0..=255 of segment 0.
        let t = table(&[(0xb000_0000, 0, 0, 0xff)]);
        let w: Vec<_> = ecam_windows(&t).collect();
        assert_eq!(
            w,
            [EcamWindow {
                base: 0xb000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 0xff
            }]
        );
        assert_eq!((w[0].len(), w[0].buses()), (256 << 20, 256));
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let mut t = table(&[
            (0xb000_0000, 0, 5, 4),
            (0xb000_1000, 0, 0, 0),
            (0xc000_0000, 1, 2, 3),
        ]);
        t.extend_from_slice(&[1, 2, 3]);
        let w: Vec<_> = ecam_windows(&t).map(|w| (w.base, w.segment)).collect();
        assert_eq!(w, [(0xc000_0000, 1)]);
        assert_eq!(ecam_windows(&t[..10]).count(), 0);
    }
}
