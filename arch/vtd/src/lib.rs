//! Intel VT-d back-end (Intel Virtualization Technology for Directed I/O, spec rev. 4.x/5.x).
//!
//! Discovery and identification so far: [`dmar`] parses the ACPI DMAR table that names the
//! remapping units (find it with `iommu::acpi`), [`registers`] declares each unit's register set
//! once, [`unit`] reaches a unit's registers from its DRHD base, and [`caps`] decodes what the
//! unit reports (VER, CAP, ECAP). Everything but the register access itself is plain data
//! decoding, unit-tested on the host.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

pub mod caps;
pub mod dmar;
pub mod registers;

pub use caps::{Agaw, AgawError, Capability, ExtendedCapability, Version};
pub use dmar::{Dmar, DmarError};
pub use registers::{read_unit_info, RegisterMapError, UnitInfo, UnitRegisters};

// In-memory structures and the invalidation queue (issue 4, part 1).
pub mod descriptor;
pub mod pasid;
pub mod qi;
pub mod register_invalidation;
pub mod root_table;

// The unit brought up and driven (issue 4, part 2); domain ids counted and reused.
pub mod fault_record;
pub mod unit;

// Host tests against a simulated unit.
#[cfg(all(test, not(loom)))]
mod sim;

// Nesting and the unit side of a vIOMMU (issue 6).
pub mod guest;
pub mod viommu;
