//! The DMA API for drivers (issue 15, in progress): what a unikernel's driver asks for instead
//! of domains and page tables, "an address this device can use for this buffer" and "I am done
//! with it", over a paging domain, an identity domain or no IOMMU at all.
//!
//! What stands: [`iova`], the IOVA allocator (a range allocator with per-CPU magazines for the
//! common sizes), and [`streaming`], streaming mappings through a paging domain with strict
//! unmaps. Identity and no-IOMMU handles, deferred unmaps, coherent allocations and bounce
//! buffers come next.

pub mod iova;
pub mod streaming;

pub use iova::{IovaAllocator, IovaError};
pub use streaming::{Direction, DmaAddr, DmaError, Streaming};
