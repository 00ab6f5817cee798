//! Streaming DMA mappings through a paging domain of the object model: a driver hands in a
//! buffer (physical address and length) and a direction, and gets the address its device uses;
//! when the transfer is over it unmaps it. IOVAs come from an [`IovaAllocator`] over the
//! domain's own layout, below the device's DMA mask.
//!
//! Unmaps are strict: [`Streaming::unmap`] returns once the unit's invalidation completed, and
//! only then is the IOVA reusable. Every refusal leaves the mappings and the allocator as they
//! were: the handle keeps its live buffers (IOVA and span), so an unmap with a wrong address or
//! length, or a second one, is refused before it could touch a neighbour's mapping. That record
//! is one lock per device for now; the IOVA caches are per CPU.

extern crate alloc;

use alloc::collections::BTreeMap;
use core::fmt;

use super::iova::{IovaAllocator, IovaError, PAGE};
use crate::addr::{Iova, PhysAddr};
use crate::iommufd::{self, DomainId, Iommu, Layout, OwnerId};
use crate::pagetable::{Error as PtError, Prot};
use crate::sync::Mutex;
use crate::unit::{TranslationUnit, UnitError};

/// Which way a buffer's data moves during a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads the buffer.
    ToDevice,
    /// The device writes the buffer.
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    /// What the device may do. Write-only where the domain's format can say it (VT-d second
    /// stage, Arm stage 2); formats that cannot (x86-64 and Arm stage-1 tables) get
    /// read-write for [`FromDevice`](Self::FromDevice), as Linux does.
    fn prot(self) -> Prot {
        match self {
            Self::ToDevice => Prot::READ,
            Self::FromDevice => Prot::WRITE,
            Self::Bidirectional => Prot::READ_WRITE,
        }
    }
}

/// The address a device uses for a mapped buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(pub u64);

/// Why a DMA mapping was refused; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// A zero-length buffer.
    ZeroLength,
    /// The buffer wraps past `2^64`.
    WrapAround,
    /// No IOVA for it below the device's mask, or the size cannot be allocated.
    Iova(IovaError),
    /// The unmap names no buffer mapped with this address and length (a double unmap).
    NotMapped,
    /// The object model refused (the domain gone, not the owner's, the unit's error).
    Model(iommufd::Error),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroLength => f.write_str("zero-length DMA buffer"),
            Self::WrapAround => f.write_str("DMA buffer wraps past 2^64"),
            Self::Iova(e) => write!(f, "no DMA address: {e}"),
            Self::NotMapped => f.write_str("no buffer mapped at that DMA address and length"),
            Self::Model(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for DmaError {}

impl From<IovaError> for DmaError {
    fn from(e: IovaError) -> Self {
        Self::Iova(e)
    }
}

impl From<iommufd::Error> for DmaError {
    fn from(e: iommufd::Error) -> Self {
        Self::Model(e)
    }
}

/// The pages a buffer touches: their first address and their span.
fn pages(phys: u64, len: u64) -> Result<(u64, u64), DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroLength);
    }
    let end = phys.checked_add(len).ok_or(DmaError::WrapAround)?;
    let first = phys & !(PAGE - 1);
    let last = end
        .checked_next_multiple_of(PAGE)
        .ok_or(DmaError::WrapAround)?;
    Ok((first, last - first))
}

/// One device's streaming mappings through `owner`'s paging domain `domain`.
pub struct Streaming<'a, U: TranslationUnit> {
    io: &'a Iommu<U>,
    owner: OwnerId,
    domain: DomainId,
    iovas: IovaAllocator,
    /// Live buffers: first IOVA page -> span in bytes.
    live: Mutex<BTreeMap<u64, u64>>,
    /// The first address beyond the device's reach (its DMA mask + 1, or `u64::MAX`).
    limit: u64,
    /// The index of the CPU the caller runs on (below the `cpus` given to [`Streaming::new`]).
    cpu: fn() -> usize,
}

impl<U: TranslationUnit> fmt::Debug for Streaming<'_, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("owner", &self.owner)
            .field("domain", &self.domain)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<'a, U: TranslationUnit> Streaming<'a, U> {
    /// Streaming mappings for a device whose DMA reaches addresses up to `mask`, attached to
    /// `owner`'s paging domain `domain` of `io`; IOVAs come from that domain's windows minus
    /// its reserved regions, with per-CPU caches for `cpus` CPUs that `cpu` tells apart.
    /// The domain's other users must keep out of those windows (the DMA API owns them).
    pub fn new(
        io: &'a Iommu<U>,
        owner: OwnerId,
        domain: DomainId,
        mask: u64,
        cpus: usize,
        cpu: fn() -> usize,
    ) -> Result<Self, DmaError> {
        let space = io.iova_space(owner, domain)?;
        let iovas = IovaAllocator::new(
            &Layout {
                windows: space.windows(),
                reserved: space.reserved(),
            },
            cpus,
        );
        Ok(Self {
            io,
            owner,
            domain,
            iovas,
            live: Mutex::new(BTreeMap::new()),
            limit: mask.saturating_add(1),
            cpu,
        })
    }

    /// Maps the `len` bytes at `phys` for a transfer in direction `dir`; returns the address
    /// the device uses for `phys` (the pages around the buffer are reachable too: an IOMMU
    /// maps whole pages).
    pub fn map(&self, phys: PhysAddr, len: u64, dir: Direction) -> Result<DmaAddr, DmaError> {
        let (first, span) = pages(phys.as_u64(), len)?;
        let cpu = (self.cpu)();
        let iova = self.iovas.alloc(cpu, span, self.limit)?;
        let mapped = match self.map_pages(iova, first, span, dir.prot()) {
            // A format without write-only entries: read-write, as documented at `Direction`.
            Err(iommufd::Error::Unit(UnitError::PageTable(PtError::UnsupportedPermissions))) => {
                self.map_pages(iova, first, span, Prot::READ_WRITE)
            }
            other => other,
        };
        if let Err(e) = mapped {
            // Nothing was mapped: the IOVA is free again.
            self.iovas.free(cpu, iova, span)?;
            return Err(e.into());
        }
        self.live.lock().insert(iova, span);
        Ok(DmaAddr(iova + (phys.as_u64() - first)))
    }

    fn map_pages(&self, iova: u64, phys: u64, span: u64, prot: Prot) -> iommufd::Result<()> {
        self.io.map(
            self.owner,
            self.domain,
            Iova::new(iova),
            PhysAddr::new(phys),
            span,
            prot,
        )
    }

    /// Unmaps the buffer `map` returned `addr` for, with the same `len`; returns once the
    /// unit no longer translates it.
    pub fn unmap(&self, addr: DmaAddr, len: u64) -> Result<(), DmaError> {
        let (first, span) = pages(addr.0, len)?;
        // Taken out of the record first: a second unmap of the same buffer, on any CPU, finds
        // nothing from here on.
        {
            let mut live = self.live.lock();
            if live.get(&first) != Some(&span) {
                return Err(DmaError::NotMapped);
            }
            live.remove(&first);
        }
        if let Err(e) = self
            .io
            .unmap(self.owner, self.domain, Iova::new(first), span)
        {
            // Still mapped (the unit refused): the buffer stays live.
            self.live.lock().insert(first, span);
            return Err(e.into());
        }
        self.iovas.free((self.cpu)(), first, span)?;
        Ok(())
    }
}

#[cfg(all(test, feature = "host-hal", not(loom)))]
mod tests;
