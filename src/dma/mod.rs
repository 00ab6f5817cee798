//! The DMA API for drivers: what a unikernel's driver asks for instead of domains and page
//! tables, "an address this device can use for this buffer" and "I am done with it", over an
//! IOMMU's domain, an identity domain or no IOMMU at all, with bounce buffers where the device
//! cannot reach a buffer or must not see the rest of its page.
//!
//! The embedder makes one [`DmaDevice`] per device (over a DMA API domain,
//! [`Iommu::alloc_dma_domain`](crate::iommufd::Iommu::alloc_dma_domain), whose IOVAs are the
//! handle's; over an identity attach; or with no IOMMU), and a driver uses it:
//!
//! ```
//! # use iommu::addr::PhysAddr;
//! # use iommu::dma::{Config, Direction, DmaDevice};
//! # let hal = iommu::hal::host::HostHal::new();
//! # let insecure = iommu::iommufd::InsecureNoIommu::enable(0)?;
//! # let dma = DmaDevice::no_iommu(&insecure, &hal, Config::new(u64::MAX))?;
//! # let buf = PhysAddr::new(0x10_0000);
//! let addr = dma.map(buf, 512, Direction::ToDevice)?; // the device reads the buffer at `addr`
//! // ... the device's transfer ...
//! dma.unmap(addr, 512)?;                              // it no longer reaches the buffer
//!
//! let ring = dma.alloc_coherent(4096)?;               // memory CPU and device share for long
//! // ... `ring.virt()` for the CPU, `ring.dma()` for the device ...
//! dma.free_coherent(ring).map_err(|(_, e)| e)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The pieces:
//! - [`DmaDevice`] (in [`device`]): one device's handle. Its [`Path`] says how its addresses are
//!   made: IOVAs of a DMA API domain (allocated by [`iova`], mapped straight through the unit,
//!   which frees the tables emptied where IOVAs come back to the allocator's free ranges),
//!   physical addresses under an identity domain, or physical addresses with no IOMMU at all.
//!   Its [`Config`] gives the device's DMA mask, whether its accesses are cache-coherent, when
//!   to bounce ([`BouncePolicy`]) and how to unmap ([`UnmapPolicy`]).
//! - [`BouncePool`] (in [`bounce`]): memory the device can reach, cut into page slots; a buffer is
//!   copied in on map and out on unmap or sync, per direction.
//!
//! What bouncing protects, and what not: through an IOMMU, a bounced buffer is alone in pages of
//! its own, so the device cannot reach the rest of the page the original lives in (the isolation
//! an IOMMU cannot give below page size, [`BouncePolicy::SubPage`]). **Without an IOMMU nothing
//! confines the device**: it can still read and write all of physical memory. Bounce-only mode
//! ([`BouncePolicy::Always`]) then only keeps *our driver's* addresses inside the pool, which
//! stops a driver bug from handing the device an address of kernel memory, not a device that is
//! faulty or hostile.

pub mod bounce;
pub mod device;
pub mod iova;

pub use bounce::BouncePool;
pub use device::{Coherent, DmaDevice, Path, SgEntry};
pub use iova::{IovaAllocator, IovaError};

use core::fmt;
use core::ptr::NonNull;

use crate::hal::Hal;
use crate::iommufd;

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
    /// Whether the device reads what the CPU wrote (copy in, clean caches before the device).
    pub const fn device_reads(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }

    /// Whether the CPU reads what the device wrote (invalidate caches, copy out after it).
    pub const fn device_writes(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
    }
}

/// The address a device uses for a mapped buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DmaAddr(pub u64);

/// When a buffer goes through the [`BouncePool`] instead of being handed to the device where it
/// is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BouncePolicy {
    /// Never: a buffer the device cannot reach is refused ([`DmaError::BeyondMask`]).
    Never,
    /// Only a buffer the device cannot reach where it is: beyond its mask with no IOMMU to bring
    /// it within (identity and no-IOMMU paths; a paging domain always can).
    IfNeeded,
    /// As `IfNeeded`, and also every buffer that does not fill whole pages, so that the device
    /// never reaches the rest of the page that holds it (strict sub-page isolation; it protects
    /// something only through a paging domain).
    SubPage,
    /// Every buffer (bounce-only mode). Without an IOMMU, see the [module docs](self) for the
    /// little this protects.
    Always,
}

/// What an unmap waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapPolicy {
    /// The unit's cached translations are invalidated before [`DmaDevice::unmap`] returns: from
    /// then on the device cannot reach the buffer.
    Strict,
    /// The mapping is removed at once, but the invalidation waits in the calling CPU's flush
    /// queue until `batch` unmaps are pending there (or [`DmaDevice::flush`]): one invalidation
    /// for many unmaps. **Until that flush the device may still reach the unmapped buffers
    /// through stale translations**; their IOVAs and bounce slots are reused only after it. Only
    /// for paging domains (the other paths have nothing to invalidate).
    Deferred {
        /// Unmaps a CPU queues before it flushes (at least 1).
        batch: usize,
    },
}

/// How a device does DMA; see [`DmaDevice`]'s constructors.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The highest address the device can put on the bus (`(1 << 28) - 1` for a 28-bit mask).
    pub mask: u64,
    /// Whether the device's accesses snoop CPU caches. A non-coherent device gets cache
    /// maintenance through [`DmaHal`] on map, unmap and sync, and no coherent allocations.
    pub coherent: bool,
    /// When to bounce.
    pub bounce: BouncePolicy,
    /// What an unmap waits for.
    pub unmap: UnmapPolicy,
    /// The CPUs that call the handle (per-CPU IOVA caches and flush queues).
    pub cpus: usize,
    /// The index of the calling CPU, below `cpus`.
    pub cpu: fn() -> usize,
}

impl Config {
    /// A coherent device with DMA mask `mask`, strict unmaps, bouncing only where needed, one
    /// CPU.
    pub fn new(mask: u64) -> Self {
        fn cpu0() -> usize {
            0
        }
        Self {
            mask,
            coherent: true,
            bounce: BouncePolicy::IfNeeded,
            unmap: UnmapPolicy::Strict,
            cpus: 1,
            cpu: cpu0,
        }
    }

    /// The first address beyond the device's reach.
    fn limit(&self) -> u64 {
        self.mask.saturating_add(1)
    }
}

/// The DMA API's part of the HAL: the CPU's view of driver buffers and bounce pools, and cache
/// maintenance for devices that do not snoop CPU caches.
///
/// # Safety
///
/// On top of [`Hal`]'s contract: for every physical range handed to the DMA API (a buffer to
/// map, a [`BouncePool`]'s memory), [`phys_to_virt`](Hal::phys_to_virt) of its first byte
/// returns a pointer through which the CPU may read and write the whole range (physically
/// contiguous memory mapped contiguously, as in the linear map of every unikernel).
pub unsafe trait DmaHal: Hal {
    /// Writes CPU caches back over `len` bytes at `virt` so that a non-coherent device reads
    /// what the CPU wrote, and waits until it is done (Arm `DC CVAC` + `DSB`; x86 `CLFLUSH`).
    fn clean_for_device(&self, virt: NonNull<u8>, len: usize);

    /// Discards the CPU's cached copies of `len` bytes at `virt` so that the CPU reads what a
    /// non-coherent device wrote (Arm `DC CIVAC` + `DSB`; x86 `CLFLUSH`).
    fn invalidate_for_cpu(&self, virt: NonNull<u8>, len: usize);
}

/// Why a DMA call was refused; nothing changed unless the case says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// A zero-length buffer.
    ZeroLength,
    /// The buffer wraps past `2^64`.
    WrapAround,
    /// The device cannot reach the buffer and nothing can bring it within: no IOMMU path, and
    /// no bounce pool (or [`BouncePolicy::Never`]).
    BeyondMask,
    /// The bounce pool lies (partly) beyond the device's mask.
    PoolBeyondMask,
    /// The bounce pool has no free run of slots that large now.
    PoolExhausted,
    /// Larger than the whole bounce pool, or than any IOVA allocation.
    TooLarge,
    /// No IOVA for it below the device's mask.
    Iova(IovaError),
    /// The address and length name no live mapping of this device (also a second unmap).
    NotMapped,
    /// The device is not attached to identity (for [`DmaDevice::identity`]).
    NotIdentity,
    /// Deferred unmaps on a path without an IOMMU, where there is nothing to defer.
    NothingToDefer,
    /// Coherent memory for a device that does not snoop caches (it would need an uncached CPU
    /// mapping, which the HAL does not offer).
    NotCoherent,
    /// The HAL had no memory.
    OutOfMemory,
    /// The CPU index is not below [`Config::cpus`].
    UnknownCpu(usize),
    /// The object model refused (the domain not a DMA API domain, not the owner's), or the
    /// unit did (as `iommufd::Error::Unit`). An invalidation that failed after the mapping was
    /// removed says so in the call's docs.
    Model(iommufd::Error),
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroLength => f.write_str("zero-length DMA buffer"),
            Self::WrapAround => f.write_str("DMA buffer wraps past 2^64"),
            Self::BeyondMask => f.write_str("buffer beyond the device's DMA mask, no way round it"),
            Self::PoolBeyondMask => f.write_str("bounce pool beyond the device's DMA mask"),
            Self::PoolExhausted => f.write_str("bounce pool exhausted"),
            Self::TooLarge => f.write_str("DMA buffer too large"),
            Self::Iova(e) => write!(f, "no DMA address: {e}"),
            Self::NotMapped => f.write_str("no buffer mapped at that DMA address and length"),
            Self::NotIdentity => f.write_str("device not attached to identity"),
            Self::NothingToDefer => f.write_str("deferred unmaps need a paging domain"),
            Self::NotCoherent => f.write_str("coherent memory for a non-coherent device"),
            Self::OutOfMemory => f.write_str("out of memory"),
            Self::UnknownCpu(c) => write!(f, "CPU {c} beyond the handle's CPUs"),
            Self::Model(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for DmaError {}

impl From<IovaError> for DmaError {
    fn from(e: IovaError) -> Self {
        match e {
            IovaError::UnknownCpu(c) => Self::UnknownCpu(c),
            IovaError::BadSize => Self::TooLarge,
            e => Self::Iova(e),
        }
    }
}

impl From<iommufd::Error> for DmaError {
    fn from(e: iommufd::Error) -> Self {
        Self::Model(e)
    }
}

impl From<crate::unit::UnitError> for DmaError {
    fn from(e: crate::unit::UnitError) -> Self {
        Self::Model(iommufd::Error::Unit(e))
    }
}

/// The page size mappings and bounce slots are made of.
pub const PAGE: u64 = iova::PAGE;

/// The pages a buffer touches: their first address and their span in bytes.
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

#[cfg(all(test, feature = "host-hal", not(loom)))]
mod tests;
