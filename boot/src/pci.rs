//! PCI configuration access and BAR assignment: placeholder.
