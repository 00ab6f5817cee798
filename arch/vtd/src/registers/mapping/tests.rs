//! Host tests of the register mapping: info read, register groups located and bounds-checked, the summary.

use super::*;
use crate::caps::Agaw;
use crate::registers::FRCD_HI;
use std::boxed::Box;
use tock_registers::interfaces::Writeable;

/// A fake register page in host memory, laid out as QEMU's unit (VER/CAP/ECAP of the default
/// machine, IOTLB registers at 0xf0, one fault recording register at 0x220).
#[repr(C, align(4096))]
struct Page([u64; 512]);

fn qemu_page(cap: u64, ecap: u64) -> NonNull<u8> {
    let mut p = Box::new(Page([0; 512]));
    p.0[0] = 0x10;
    p.0[1] = cap;
    p.0[2] = ecap;
    // A recorded fault: F set, reason 6 (read not allowed), source 00:01.0.
    p.0[0x220 / 8] = 0x4_0000;
    p.0[0x228 / 8] = (1 << 63) | (1 << 62) | (6 << 32) | 0x0008;
    NonNull::from(Box::leak(p)).cast()
}

fn free(base: NonNull<u8>) {
    // SAFETY: `base` came from `Box::leak` of a `Page` in `qemu_page` and is freed once.
    drop(unsafe { Box::from_raw(base.cast::<Page>().as_ptr()) });
}

const CAP: u64 = 0x00d2_008c_222f_0606;
const ECAP: u64 = 0x0000_0000_00f0_0f4a;

#[test]
fn reads_info_and_locates_register_groups() {
    let base = qemu_page(CAP, ECAP);
    // SAFETY: `base` is a live, aligned 4 KiB page until `free` below.
    let unit = unsafe { UnitRegisters::new(base, 4096) }.unwrap();
    let info = unit.info();
    assert_eq!(info.version, Version { major: 1, minor: 0 });
    assert_eq!(info.cap.max_agaw(), Ok(Agaw::Level4));
    // SAFETY: as above.
    assert_eq!(unsafe { read_unit_info(base.cast()) }, info);
    let frcd = unit.fault_recording(0).unwrap();
    assert_eq!(frcd.hi.read(FRCD_HI::F), 1);
    assert_eq!(frcd.hi.read(FRCD_HI::FR), 6);
    assert_eq!(frcd.hi.read(FRCD_HI::SID), 8);
    assert_eq!(frcd.lo.get(), 0x4_0000);
    assert!(unit.fault_recording(1).is_none());
    // The IOTLB register is where ECAP.IRO says: a write through it lands at 0xf8.
    unit.iotlb().iotlb.set(0x1234);
    // SAFETY: reading the page directly, within its 4096 bytes.
    assert_eq!(unsafe { base.add(0xf8).cast::<u64>().read() }, 0x1234);
    free(base);
}

#[test]
fn offsets_beyond_the_mapping_are_refused() {
    // FRO = 0x3ff0: the fault recording registers would start past a 4 KiB mapping.
    let base = qemu_page(CAP | (0x3ff << 24), ECAP);
    // SAFETY: `base` is a live, aligned 4 KiB page; `new` only reads VER/CAP/ECAP.
    let err = unsafe { UnitRegisters::new(base, 4096) }.err();
    assert_eq!(
        err,
        Some(RegisterMapError::OutsideMapping {
            what: "the fault recording registers",
            end: 0x4000,
            mapped: 4096
        })
    );
    // IRO = 0x3ff0 likewise.
    free(base);
    let base = qemu_page(CAP, ECAP | (0x3ff << 8));
    // SAFETY: as above.
    let err = unsafe { UnitRegisters::new(base, 4096) }.err();
    assert!(matches!(
        err,
        Some(RegisterMapError::OutsideMapping {
            what: "the IOTLB registers",
            ..
        })
    ));
    // SAFETY: as above; a mapping smaller than the fixed block is refused before any read.
    let err = unsafe { UnitRegisters::new(base, 0x80) }.err();
    assert!(matches!(err, Some(RegisterMapError::OutsideMapping { .. })));
    // SAFETY: the pointer is misaligned, which `new` rejects before reading.
    let err = unsafe { UnitRegisters::new(base.add(8), 4096) }.err();
    assert!(matches!(err, Some(RegisterMapError::MisalignedBase { .. })));
    free(base);
}

#[test]
fn summary_reads_well() {
    let info = UnitInfo {
        version: Version { major: 1, minor: 0 },
        cap: Capability(0x01d2_008c_222f_0686),
        ecap: ExtendedCapability(0x0000_8800_00f0_0f4a),
    };
    let s = std::format!("{info}");
    assert!(
        s.starts_with("VT-d 1.0, legacy and scalable mode, first-stage"),
        "{s}"
    );
    assert!(
        s.contains("tables: 39-bit (3-level) or 48-bit (4-level), MGAW 48 bits, 2M/1G superpages"),
        "{s}"
    );
    assert!(s.contains("65536 domain ids, queued invalidation"), "{s}");
    assert!(s.contains("caching mode on"), "{s}");
    assert!(s.contains("page walks not coherent"), "{s}");
    assert!(s.contains("1 fault recording register at 0x220"), "{s}");
    assert_eq!(s.lines().count(), 5, "{s}");
}
