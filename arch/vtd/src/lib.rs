//! Intel VT-d back-end (Intel Virtualization Technology for Directed I/O, rev. 4.x/5.x).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
