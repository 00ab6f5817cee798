//! Portable core of the IOMMU driver: what every hardware back-end shares.
//!
//! `no_std`, arch-neutral and host-testable. The hardware back-ends live in `arch/` (crates
//! `iommu-vtd` and `iommu-smmuv3`) and build on the pieces here.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod addr;
pub mod dma;
pub mod hal;
pub mod iommufd;
pub mod irq;
pub mod pagetable;
pub mod pci;
pub mod poll;
pub mod ranges;
pub mod sync;
pub mod unit;
