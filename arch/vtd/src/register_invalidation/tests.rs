//! Host tests of the CCMD and IOTLB register command encodings.

use super::*;
use crate::descriptor::{FunctionMask, PageBlock};
use crate::root_table::{Did, SourceId};
use core::cell::UnsafeCell;
use iommu::addr::Iova;

/// A page of ordinary memory standing in for the registers: nothing clears ICC/IVT, so the
/// calls time out, and the values written can be checked.
#[repr(C, align(4096))]
struct FakeRegisters(UnsafeCell<[u64; 512]>);

impl FakeRegisters {
    fn new() -> Self {
        Self(UnsafeCell::new([0; 512]))
    }
    fn word(&self, offset: usize) -> u64 {
        // SAFETY: in bounds, aligned; the register accessors' volatile writes are finished.
        unsafe { core::ptr::read_volatile(self.0.get().cast::<u64>().add(offset / 8)) }
    }
    fn block(&self) -> &RegisterBlock {
        // SAFETY: 4 KiB of zeroed, aligned memory behind an UnsafeCell covers the 0xf0-byte
        // block; tock-registers types are UnsafeCell-based, so writes through `&` are fine.
        unsafe { &*self.0.get().cast::<RegisterBlock>() }
    }
    fn iotlb(&self) -> &IotlbRegisters {
        // SAFETY: as above; 16 bytes at offset 0.
        unsafe { &*self.0.get().cast::<IotlbRegisters>() }
    }
}

#[test]
fn context_command_encoding() {
    let fake = FakeRegisters::new();
    let scope = ContextCacheScope::Device {
        domain: Did::new(5),
        source: SourceId::from_raw(0x18),
        mask: FunctionMask::AllFunctions,
    };
    let r = invalidate_context_cache(fake.block(), scope, 3);
    assert!(matches!(r, Err(RegisterInvalidationError::Timeout(_))));
    // ICC (63) | CIRG 3 (62:61) | FM 3 (33:32) | SID 0x18 (31:16) | DID 5 (15:0).
    assert_eq!(fake.word(0x28), 0xe000_0003_0018_0005);
}

#[test]
fn iotlb_command_encoding() {
    let fake = FakeRegisters::new();
    let scope = IotlbScope::Pages {
        domain: Did::new(7),
        block: PageBlock::new(Iova::new(0x1_2340_0000), 4).unwrap(),
        leaf_only: true,
    };
    let drain = Drain {
        reads: true,
        writes: true,
    };
    let r = invalidate_iotlb(fake.iotlb(), scope, drain, 3);
    assert!(matches!(r, Err(RegisterInvalidationError::Timeout(_))));
    // IVA: ADDR | IH (6) | AM 4.
    assert_eq!(fake.word(0), 0x1_2340_0044);
    // IVT (63) | IIRG 3 (61:60) | DR (49) | DW (48) | DID 7 (47:32).
    assert_eq!(fake.word(8), 0xb003_0007_0000_0000);
    assert_eq!(Granularity::from_bits(0), None);
}
