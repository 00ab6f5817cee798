//! The atomics the invalidation queue uses, swapped for loom's model-checked ones when built with
//! `RUSTFLAGS="--cfg loom"`, so the same protocol code runs on hardware and under the checker.
//!
//! Code in this crate takes its atomics from here, never from `core::sync::atomic` directly, or
//! loom would not see those accesses. (The core crate's `iommu::sync` re-exports only `AtomicU64`;
//! the queue also needs 32-bit status words and flags.)

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One step of a busy-wait. Under loom it yields, which tells the model checker this thread
/// cannot progress until another one does (otherwise every spin would be a new branch to explore).
#[inline(always)]
pub fn spin_wait() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
