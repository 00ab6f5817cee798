//! Arm SMMUv3 back-end (Arm IHI 0070): an SMMU found in firmware, brought up, and driven
//! through the core's [`TranslationUnit`](iommu::unit::TranslationUnit) by [`SmmuUnit`].
//!
//! Entry points: [`SmmuDescription`] (an SMMU from the devicetree or the IORT), [`SmmuUnit`]
//! (bring-up with [`SmmuConfig`], then the core's trait), [`SmmuDomain`], and the one error type
//! [`Error`].
//!
//! The modules, from firmware to the live unit:
//! - [`devicetree`]: the SMMUs and PCIe hosts a flattened devicetree describes (`arm,smmu-v3`
//!   nodes, `pci-host-ecam-generic` with its `iommu-map`), and requester id → stream id.
//! - [`iort`]: the same from ACPI's IO Remapping Table, for machines booted with ACPI.
//! - [`platform`]: one description of an SMMU, from either the devicetree or the IORT.
//! - [`registers`]: the SMMUv3 register frame, declared once with tock-registers.
//! - [`idr`]: the identification registers, read from a mapped SMMU and decoded into typed
//!   [`idr::Features`].
//! - [`attributes`]: granule, cacheability and shareability spellings shared by STEs, CDs and
//!   commands.
//! - [`entry`]: the 64-byte entries (STE and CD) as words in HAL frames, and the one safe
//!   entry-update plan (hitless where possible) both are written with.
//! - [`stream_table`]: STEs and the stream table; [`context_descriptor`]: CDs and CD tables;
//!   both are linear or 2-level tables of `two_level` (the shared table machinery).
//! - [`substream`]: a stream's own CD table when PASIDs are attached.
//! - [`command`]: command encodings; [`cmdq`]: the lock-free command queue;
//!   [`eventq`]: the event queue and its typed [`eventq::Event`]s.
//! - [`unit`](mod@unit): the live SMMU: bring-up (`mod.rs`), domains and ASID/VMID pools (`domain.rs`),
//!   STE/CD programming on attach (`attach.rs`), the per-stream records (`streams.rs`), unmap
//!   and its invalidation planning (`invalidate.rs`), events and interrupts (`fault.rs`),
//!   hardware info (`info.rs`).
//! - [`guest`]: validation of a guest's vSTE and of its command-queue entries (pure).
//! - [`viommu`]: the unit side of a vIOMMU: nested domains from vSTEs, forwarded commands.
//! - `sim` (feature `sim`, and tests): a simulated SMMU: the command-queue consumer for queue
//!   tests and benchmarks, and a register-level SMMU with DMA translation a real [`SmmuUnit`]
//!   runs on.
//!
//! Everything that parses input (devicetree blobs, ACPI tables, register values) returns typed
//! errors and never panics; it all builds and is unit-tested on the host.
//!
//! # Bring-up, attach, map
//!
//! A PCI device behind the SMMU gets DMA access to one buffer and nothing else; every stream
//! starts aborting. (A hypervisor usually goes through the object model, `iommu::iommufd`.)
//!
//! ```no_run
//! use iommu::addr::{Iova, PhysAddr};
//! use iommu::hal::Hal;
//! use iommu::pagetable::Prot;
//! use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};
//! use iommu_smmuv3::devicetree::Devicetree;
//! use iommu_smmuv3::{SmmuConfig, SmmuDescription, SmmuUnit};
//!
//! /// `dtb`: the flattened devicetree; the SMMU's registers are identity-mapped as Device memory.
//! fn give_device_one_buffer<H: Hal + Clone>(
//!     hal: H,
//!     dtb: &[u8],
//!     buffer: PhysAddr,
//! ) -> Result<(), Box<dyn core::error::Error>> {
//!     let dt = Devicetree::new(dtb)?;
//!     let host = dt.pci_hosts().next().ok_or("no PCIe host")??;
//!     // 00:01.0 through the host's iommu-map: which SMMU, which stream id.
//!     let (smmu, sid) = dt.stream_id(&host, 0x0008)?;
//!     let smmu = SmmuDescription::from_devicetree(&smmu);
//!     let regs = smmu.identity_mapped_registers().ok_or("registers not addressable")?;
//!     // SAFETY: the register frame is mapped as Device memory for the program's life and
//!     // nothing else drives this SMMU.
//!     let unit = unsafe { SmmuUnit::new(regs, hal, SmmuConfig::default())? };
//!
//!     let domain = unit.new_domain(Stage::First, 48)?;
//!     unit.map(&domain, Iova::new(0x10_0000), buffer, 0x1000, Prot::READ_WRITE)?;
//!     unit.attach(DeviceId(sid), Attachment::Paging(&domain))?;
//!     // The device's DMA to IOVA 0x10_0000 now reaches `buffer`; anything else is an event:
//!     unit.drain_faults(&mut |fault| log::warn!("{fault}"))?;
//!
//!     unit.attach(DeviceId(sid), Attachment::Blocking)?;
//!     unit.destroy_domain(domain).map_err(|(_, e)| e)?;
//!     Ok(())
//! }
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

pub mod attributes;
pub mod cmdq;
pub mod command;
pub mod context_descriptor;
pub mod devicetree;
pub mod entry;
mod error;
pub mod eventq;
pub mod guest;
pub mod idr;
pub mod iort;
pub mod platform;
pub mod registers;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod stream_table;
pub mod substream;
mod two_level;
pub mod unit;
pub mod viommu;

pub use error::Error;
pub use platform::SmmuDescription;
pub use unit::{SmmuConfig, SmmuDomain, SmmuUnit};
