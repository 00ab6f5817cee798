//! The atomics the lock-free parts of the crate use, swapped for loom's model-checked ones when
//! built with `RUSTFLAGS="--cfg loom"`, so the same code runs on hardware and under the checker.
//!
//! Only what the crate uses is re-exported; code elsewhere must take its atomics from here, never
//! from `core::sync::atomic` directly, or loom would not see those accesses.

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicU64, Ordering};

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU64, Ordering};
