//! Arm SMMUv3 back-end (Arm IHI 0070).
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
