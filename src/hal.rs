//! The services an embedder provides to the driver: placeholder, filled in by the page-table work.
