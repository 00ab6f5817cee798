//! The ACPI MADT ("APIC", ACPI 6.5 5.2.12): which local APICs the firmware lists, so the x86_64
//! boot code knows whom to send INIT-SIPI-SIPI. Test-kernel support only, hence here and not in
//! the driver crates.
//!
//! The table is untrusted input: every entry length is checked, fields are read byte by byte, a
//! malformed entry ends the walk with an error instead of a panic.

use iommu::acpi::{le, Signature, SDT_HEADER_LEN};

/// The MADT's signature.
pub const SIGNATURE: Signature = Signature(*b"APIC");

/// Interrupt controller structure types used here (ACPI 6.5, table 5.21).
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_LOCAL_X2APIC: u8 = 9;
/// Local APIC flags (table 5.23): bit 0 enabled, bit 1 online capable.
const FLAG_ENABLED: u32 = 1 << 0;
const FLAG_ONLINE_CAPABLE: u32 = 1 << 1;
/// The body starts with the local APIC address and flags (8 bytes), then the structures.
const FIRST_ENTRY: usize = SDT_HEADER_LEN + 8;

/// One processor the MADT lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalApic {
    /// The APIC id (x2APIC id for a type-9 entry), what the ICR's destination names.
    pub apic_id: u32,
    /// The ACPI processor UID.
    pub uid: u32,
    /// Usable now (flag bit 0). A disabled but online-capable CPU could be hot-added.
    pub enabled: bool,
    pub online_capable: bool,
}

/// Why the MADT could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadtError {
    /// The bytes are not an MADT (signature) or shorter than its fixed part.
    NotAnMadt,
    /// An interrupt controller structure at `offset` has a length below 2 or past the table's end.
    BadEntry { offset: usize },
}

impl core::fmt::Display for MadtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotAnMadt => f.write_str("MADT: not an APIC table"),
            Self::BadEntry { offset } => {
                write!(
                    f,
                    "MADT: malformed interrupt controller entry at offset {offset:#x}"
                )
            }
        }
    }
}

impl core::error::Error for MadtError {}

/// Calls `found` for each processor local APIC / x2APIC entry of `table` (the whole table,
/// header included, as [`iommu::acpi::Table::bytes`] gives it), in table order.
pub fn for_each_local_apic(
    table: &[u8],
    mut found: impl FnMut(LocalApic),
) -> Result<(), MadtError> {
    if le::array::<4>(table, 0) != Some(SIGNATURE.0) || table.len() < FIRST_ENTRY {
        return Err(MadtError::NotAnMadt);
    }
    let mut offset = FIRST_ENTRY;
    while offset < table.len() {
        let kind = le::u8_at(table, offset).ok_or(MadtError::BadEntry { offset })?;
        let len = usize::from(le::u8_at(table, offset + 1).ok_or(MadtError::BadEntry { offset })?);
        let entry = table
            .get(offset..offset + len)
            .filter(|_| len >= 2)
            .ok_or(MadtError::BadEntry { offset })?;
        let apic = match kind {
            TYPE_LOCAL_APIC => Some((
                le::u8_at(entry, 3).map(u32::from),
                le::u8_at(entry, 2).map(u32::from),
                le::u32_at(entry, 4),
            )),
            TYPE_LOCAL_X2APIC => Some((
                le::u32_at(entry, 4),
                le::u32_at(entry, 12),
                le::u32_at(entry, 8),
            )),
            _ => None,
        };
        if let Some((id, uid, flags)) = apic {
            let (Some(apic_id), Some(uid), Some(flags)) = (id, uid, flags) else {
                return Err(MadtError::BadEntry { offset });
            };
            found(LocalApic {
                apic_id,
                uid,
                enabled: flags & FLAG_ENABLED != 0,
                online_capable: flags & FLAG_ONLINE_CAPABLE != 0,
            });
        }
        offset += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A MADT as QEMU's q35 builds it for `-smp 2,maxcpus=3`: two enabled local APICs, one
    /// hot-pluggable, an I/O APIC (type 1) and a local APIC NMI (type 4) in between.
    fn q35_like() -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(b"APIC");
        t.extend_from_slice(&[0; SDT_HEADER_LEN - 4]);
        t.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        for (uid, id, flags) in [(0u8, 0u8, 1u32), (1, 1, 1), (2, 2, 0)] {
            t.extend_from_slice(&[0, 8, uid, id]);
            t.extend_from_slice(&flags.to_le_bytes());
        }
        t.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        t.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
        t.extend_from_slice(&[9, 16, 0, 0]);
        t.extend_from_slice(&300u32.to_le_bytes());
        t.extend_from_slice(&3u32.to_le_bytes());
        t.extend_from_slice(&7u32.to_le_bytes());
        t
    }

    #[test]
    fn lists_local_apics_and_x2apics_with_their_flags() {
        let mut found = Vec::new();
        for_each_local_apic(&q35_like(), |a| found.push(a)).unwrap();
        let ids: Vec<(u32, bool)> = found.iter().map(|a| (a.apic_id, a.enabled)).collect();
        assert_eq!(ids, [(0, true), (1, true), (2, false), (300, true)]);
        assert_eq!(found[3].uid, 7);
        assert!(found[3].online_capable);
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        assert_eq!(
            for_each_local_apic(b"DMAR", |_| {}),
            Err(MadtError::NotAnMadt)
        );
        let mut t = q35_like();
        t[FIRST_ENTRY + 1] = 0;
        assert_eq!(
            for_each_local_apic(&t, |_| {}),
            Err(MadtError::BadEntry {
                offset: FIRST_ENTRY
            })
        );
        let good = q35_like();
        for len in 0..good.len() {
            let _ = for_each_local_apic(&good[..len], |_| {});
        }
    }
}
