//! Arm SMMUv3 back-end (Arm IHI 0070).
//!
//! Discovery and identification so far:
//! - [`devicetree`]: the SMMUs and PCIe hosts a flattened devicetree describes (`arm,smmu-v3`
//!   nodes, `pci-host-ecam-generic` with its `iommu-map`), and requester id → stream id.
//! - [`iort`]: the same from ACPI's IO Remapping Table, for machines booted with ACPI.
//! - [`registers`]: the SMMUv3 register frame, declared once with tock-registers.
//! - [`idr`]: the identification registers, read from a mapped SMMU and decoded into typed
//!   [`idr::Features`].
//! - [`platform`]: one description of an SMMU, from either the devicetree or the IORT.
//! - [`smmu`]: bring-up of a live SMMU and the core's `TranslationUnit` over it, with the
//!   records of which domains each stream uses.
//! - [`substream`]: a stream's own CD table when PASIDs are attached.
//! - [`two_level`]: the linear/2-level index arithmetic of stream and CD tables.
//! - [`guest`]: validation of a guest's vSTE and of its command-queue entries (pure).
//! - [`viommu`]: the unit side of a vIOMMU: nested domains from vSTEs, forwarded commands.
//!
//! Everything that parses input (devicetree blobs, ACPI tables, register values) returns typed
//! errors and never panics; it all builds and is unit-tested on the host.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

pub mod attributes;
pub mod cmdq;
pub mod command;
pub mod context_descriptor;
pub mod devicetree;
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
pub mod two_level;
pub mod unit;
pub mod viommu;
