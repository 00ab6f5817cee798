//! Host tests of fault-record decoding against records QEMU writes.

use super::*;

#[test]
fn decodes_a_qemu_write_fault() {
    // F, write (T1 = 0), reason 5, source 00:02.0 (devfn 0x10), page 0x0ab0_0000.
    let raw = RawFault {
        lo: 0x0ab0_0123,
        hi: (1 << 63) | (5 << 32) | 0x0010,
    };
    assert!(raw.is_valid());
    let f = raw.decode(Classify::Unmapped);
    assert_eq!(f.device, DeviceId(0x10));
    assert_eq!(f.address, 0x0ab0_0000);
    assert!(f.write);
    assert_eq!(f.kind, FaultKind::Translation);
    assert_eq!(f.code, 5);
    assert_eq!(f.pasid, None);
    assert_eq!(raw.decode(Classify::Mapped).kind, FaultKind::Permission);
}

#[test]
fn decodes_read_and_pasid_and_configuration() {
    // Read (T1 = 1), PASID present with value 7, reason 0x59.
    let raw = RawFault {
        lo: 0x1000,
        hi: (1 << 63) | (1 << 62) | (7 << 40) | (0x59 << 32) | (1 << 31) | 0x0008,
    };
    let f = raw.decode(Classify::Unknown);
    assert!(!f.write);
    assert_eq!(f.pasid, Some(7));
    assert_eq!(f.kind, FaultKind::Configuration);
    assert_eq!(f.reason, "PASID entry not present");
    assert_eq!(reason(0x71).1, Some(FaultKind::Translation));
    assert_eq!(reason(0x85).1, Some(FaultKind::Permission));
    assert_eq!(reason(0x04).1, Some(FaultKind::AddressSize));
}

#[test]
fn decodes_interrupt_remapping_faults_with_their_index() {
    // As QEMU records a blocked MSI: FI = index << 48, SID 00:03.0, reason 0x22, T clear.
    let raw = RawFault {
        lo: 0x0005 << 48,
        hi: (1 << 63) | (0x22 << 32) | 0x0018,
    };
    assert!(raw.is_interrupt_fault());
    assert_eq!(raw.interrupt_index(), Some(5));
    let f = raw.decode(Classify::Unknown);
    assert_eq!(f.device, DeviceId(0x18));
    assert_eq!(f.address, 5);
    assert!(f.write);
    assert_eq!(f.code, 0x22);
    assert_eq!(f.kind, FaultKind::Translation);
    assert_eq!(f.reason, "interrupt remapping entry not present");
    // Every IR reason is named, none falls through to "not decoded".
    for code in 0x20..=0x27u8 {
        assert_ne!(reason(code).0, "reason not decoded", "{code:#x}");
    }
    assert_eq!(reason(0x26).1, Some(FaultKind::Permission));
    // A DMA fault has no interrupt index.
    let dma = RawFault {
        lo: 0x1000,
        hi: (1 << 63) | (5 << 32),
    };
    assert_eq!(dma.interrupt_index(), None);
}
