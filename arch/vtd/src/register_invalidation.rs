//! Register-based invalidation (VT-d spec 6.5.1): the context-command and IOTLB registers, for
//! units without queued invalidation (ECAP.QI = 0).
//!
//! One invalidation at a time per unit: the caller serialises calls (the registers hold one
//! command each). Only usable while queued invalidation is disabled; QEMU ignores these
//! registers once GSTS.QIES is set.

use core::fmt;

use iommu::poll::{poll_until, Timeout};
use tock_registers::interfaces::{Readable, Writeable};

use crate::descriptor::{ContextCacheScope, Drain, IotlbScope};
use crate::registers::{IotlbRegisters, RegisterBlock, CCMD, IOTLB, IVA};

/// The granularity the unit actually used (CCMD.CAIG, IOTLB.IAIG): it may invalidate more than
/// asked, never less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Global,
    Domain,
    /// Device-selective (context cache) or page-selective (IOTLB).
    Selective,
}

impl Granularity {
    const fn from_bits(bits: u64) -> Option<Self> {
        match bits {
            1 => Some(Self::Global),
            2 => Some(Self::Domain),
            3 => Some(Self::Selective),
            _ => None,
        }
    }
}

/// Why a register-based invalidation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterInvalidationError {
    /// The unit did not clear ICC / IVT within the poll budget.
    Timeout(Timeout),
    /// The unit reported granularity 0: it did not perform the request (e.g. page-selective
    /// without CAP.PSI, or an address mask above CAP.MAMV).
    Refused,
}

impl From<Timeout> for RegisterInvalidationError {
    fn from(t: Timeout) -> Self {
        Self::Timeout(t)
    }
}

impl fmt::Display for RegisterInvalidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "VT-d register invalidation: {t}"),
            Self::Refused => write!(f, "VT-d register invalidation: refused by the unit"),
        }
    }
}

impl core::error::Error for RegisterInvalidationError {}

/// Invalidates the context cache through CCMD (11.4.7) and waits (bounded) for completion.
pub fn invalidate_context_cache(
    regs: &RegisterBlock,
    scope: ContextCacheScope,
    poll_budget: u32,
) -> Result<Granularity, RegisterInvalidationError> {
    let (cirg, did, sid, fm) = match scope {
        ContextCacheScope::Global => (1, 0, 0, 0),
        ContextCacheScope::Domain(d) => (2, d.raw(), 0, 0),
        ContextCacheScope::Device {
            domain,
            source,
            mask,
        } => (3, domain.raw(), source.raw(), mask.bits()),
    };
    regs.ccmd.write(
        CCMD::ICC::SET
            + CCMD::CIRG.val(cirg)
            + CCMD::FM.val(fm)
            + CCMD::SID.val(u64::from(sid))
            + CCMD::DID.val(u64::from(did)),
    );
    poll_until("CCMD.ICC to clear", poll_budget, || {
        !regs.ccmd.is_set(CCMD::ICC)
    })?;
    Granularity::from_bits(regs.ccmd.read(CCMD::CAIG)).ok_or(RegisterInvalidationError::Refused)
}

/// Invalidates the IOTLB through IVA and IOTLB_REG (11.4.8) and waits (bounded) for completion.
pub fn invalidate_iotlb(
    regs: &IotlbRegisters,
    scope: IotlbScope,
    drain: Drain,
    poll_budget: u32,
) -> Result<Granularity, RegisterInvalidationError> {
    let (iirg, did) = match scope {
        IotlbScope::Global => (1, 0),
        IotlbScope::Domain(d) => (2, d.raw()),
        IotlbScope::Pages {
            domain,
            block,
            leaf_only,
        } => {
            // IVA first: the unit reads it when IVT is set.
            regs.iva.write(
                IVA::ADDR.val(block.addr().as_u64() >> 12)
                    + IVA::IH.val(u64::from(leaf_only))
                    + IVA::AM.val(u64::from(block.am())),
            );
            (3, domain.raw())
        }
    };
    regs.iotlb.write(
        IOTLB::IVT::SET
            + IOTLB::IIRG.val(iirg)
            + IOTLB::DR.val(u64::from(drain.reads))
            + IOTLB::DW.val(u64::from(drain.writes))
            + IOTLB::DID.val(u64::from(did)),
    );
    poll_until("IOTLB.IVT to clear", poll_budget, || {
        !regs.iotlb.is_set(IOTLB::IVT)
    })?;
    Granularity::from_bits(regs.iotlb.read(IOTLB::IAIG)).ok_or(RegisterInvalidationError::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::{FunctionMask, PageBlock};
    use crate::root_table::{DomainId, SourceId};
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
            domain: DomainId::new(5),
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
            domain: DomainId::new(7),
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
}
