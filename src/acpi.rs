//! ACPI table discovery (RSDP, RSDT/XSDT): placeholder, filled in by the discovery work.
