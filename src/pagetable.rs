//! Per-domain I/O page tables: placeholder, filled in by the page-table work.
