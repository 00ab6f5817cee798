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
pub(crate) enum Granularity {
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
pub(crate) fn invalidate_context_cache(
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
pub(crate) fn invalidate_iotlb(
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
mod tests;
