//! Intel VT-d back-end (Intel Virtualization Technology for Directed I/O, spec rev. 4.x/5.x):
//! finds the remapping units in firmware, brings each up and implements the core's
//! [`TranslationUnit`](iommu::unit::TranslationUnit) with [`VtdUnit`].
//!
//! The modules, from firmware to the unit:
//! - [`dmar`]: the ACPI DMAR table (DRHDs, RMRRs, ATSRs, device scopes); find it with
//!   `iommu::acpi`.
//! - [`registers`]: each unit's register set declared once (tock-registers), and
//!   [`UnitRegisters`], the register page mapped from a DRHD base and bounds-checked.
//! - [`caps`]: VER, CAP and ECAP decoded.
//! - [`root_table`] (root and context entries, the domain id [`Did`]) and
//!   [`pasid`] (PASID directory and PASID entries): the in-memory structures the unit walks.
//! - [`descriptor`]: the invalidation descriptors; [`qi`]: the lock-free invalidation queue that
//!   carries them; `register_invalidation` (internal): the CCMD / IOTLB registers for units
//!   without a queue.
//! - [`fault_record`]: the fault recording registers' contents decoded (reason codes).
//! - [`unit`](mod@unit): [`VtdUnit`], one unit brought up and driven: domains and their ids, attach,
//!   invalidation, faults, RMRRs, hardware info.
//! - [`interrupt_remapping`]: IRTEs, the interrupt-remapping table and the core's
//!   [`InterruptRemapper`](iommu::irq::InterruptRemapper) for [`VtdUnit`].
//! - [`guest`] (a guest's PASID entries and descriptors checked and translated) and [`viommu`]
//!   (nest parents, vIOMMUs, nested domains): the unit side of a virtual IOMMU.
//! - [`error`]: the crate's [`Error`], one variant per layer.
//!
//! Everything but the register and DMA accesses is plain data, unit-tested on the host; `sim`
//! (feature `sim`, and tests) plays a whole unit's side of the register handshakes for
//! [`VtdUnit`]'s host tests and benchmarks.
//!
//! # Bring-up, attach, map
//!
//! A device gets DMA access to one buffer and nothing else; everything the unit serves starts
//! blocked. (A hypervisor usually goes through the object model, `iommu::iommufd`, on top.)
//!
//! ```no_run
//! use core::ptr::NonNull;
//! use iommu::addr::{Iova, PhysAddr};
//! use iommu::hal::Hal;
//! use iommu::pagetable::Prot;
//! use iommu::pci::Bdf;
//! use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};
//! use iommu_vtd::{Dmar, Mode, QueueSize, UnitRegisters, VtdUnit};
//!
//! /// `dmar`: the ACPI DMAR table; `regs`: its first DRHD's register page, mapped uncached.
//! fn give_nic_one_buffer<H: Hal + Clone>(
//!     hal: H,
//!     dmar: &[u8],
//!     regs: NonNull<u8>,
//!     buffer: PhysAddr,
//! ) -> Result<(), Box<dyn core::error::Error>> {
//!     let dmar = Dmar::parse(dmar)?;
//!     // SAFETY: `regs` maps the unit's whole register page and nothing else drives the unit.
//!     let regs = unsafe { UnitRegisters::new(regs, 4096)? };
//!     let aw = u32::from(dmar.host_address_width());
//!     let unit = VtdUnit::new(&regs, hal, Mode::Scalable, aw, QueueSize::ONE_PAGE)?;
//!
//!     let domain = unit.new_domain(Stage::Second, 48)?;
//!     unit.map(&domain, Iova::new(0x10_0000), buffer, 0x1000, Prot::READ_WRITE)?;
//!     let nic = DeviceId(Bdf::new(0, 3, 0).requester_id().into());
//!     unit.attach(nic, Attachment::Paging(&domain))?;
//!     // The NIC's DMA to IOVA 0x10_0000 now reaches `buffer`; anything else faults:
//!     unit.drain_faults(&mut |fault| log::warn!("{fault}"))?;
//!
//!     unit.attach(nic, Attachment::Blocking)?;
//!     unit.unmap(&domain, Iova::new(0x10_0000), 0x1000)?;
//!     unit.destroy_domain(domain).map_err(|(_, e)| e)?;
//!     Ok(())
//! }
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(any(test, feature = "sim"))]
extern crate std;

pub mod caps;
pub mod descriptor;
pub mod dmar;
pub mod error;
pub mod fault_record;
pub mod guest;
pub mod interrupt_remapping;
pub mod pasid;
pub mod qi;
mod register_invalidation;
pub mod registers;
pub mod root_table;
pub mod unit;
pub mod viommu;

// A simulated unit for host tests and benchmarks; its drivers allocate from the core's host HAL,
// which loom builds leave out.
#[cfg(all(any(test, feature = "sim"), not(loom)))]
pub mod sim;

pub use caps::{Agaw, AgawError, Capability, ExtendedCapability, Version};
pub use descriptor::{DecodeError, DescriptorError};
pub use dmar::{Dmar, DmarError};
pub use error::Error;
pub use qi::{QiError, QueueSize};
pub use register_invalidation::RegisterInvalidationError;
pub use registers::{read_unit_info, RegisterMapError, UnitInfo, UnitRegisters};
pub use root_table::{Did, EntryError};
pub use unit::{FaultEventMsi, Mode, VtdDomain, VtdUnit};
