//! The atomics, the spin hint and the racy cell of every lock-free structure in the crate family
//! (page tables here; the VT-d invalidation queue and the SMMUv3 command and event queues in the
//! back-ends), swapped for loom's model-checked ones when built with `RUSTFLAGS="--cfg loom"`, so
//! the same protocol code runs on hardware and under the checker.
//!
//! Code that is part of a loom model takes all of these from here, never from
//! `core::sync::atomic` directly, or loom would not see those accesses.

#[cfg(not(loom))]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One iteration of a busy wait. Under loom a spinning thread must yield, or the model checker
/// would explore the same spin forever (it learns this thread cannot progress until another does).
#[inline(always)]
pub fn spin_loop() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A cell whose accesses the caller synchronises by other means (the queue protocols). Under loom
/// every access is checked: two unsynchronised accesses, one of them a write, fail the model.
#[derive(Debug, Default)]
pub struct RacyCell<T> {
    #[cfg(not(loom))]
    inner: core::cell::UnsafeCell<T>,
    #[cfg(loom)]
    inner: loom::cell::UnsafeCell<T>,
}

// SAFETY: every access goes through the `unsafe` `get`/`set`, whose callers guarantee that no
// write is concurrent with another access (the happens-before edges of the queue protocols).
unsafe impl<T: Send> Sync for RacyCell<T> {}

impl<T: Copy> RacyCell<T> {
    /// A cell holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: core::cell::UnsafeCell::new(value),
            #[cfg(loom)]
            inner: loom::cell::UnsafeCell::new(value),
        }
    }

    /// Reads the value.
    ///
    /// # Safety
    /// No write to this cell may happen concurrently (without a happens-before edge either way).
    #[inline(always)]
    pub unsafe fn get(&self) -> T {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller excludes concurrent writes, so reading through the pointer is
            // not a data race.
            unsafe { *self.inner.get() }
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom checks the claim.
            self.inner.with(|p| unsafe { *p })
        }
    }

    /// Replaces the value.
    ///
    /// # Safety
    /// No other access to this cell may happen concurrently.
    #[inline(always)]
    pub unsafe fn set(&self, value: T) {
        #[cfg(not(loom))]
        {
            // SAFETY: the caller excludes concurrent accesses.
            unsafe { *self.inner.get() = value }
        }
        #[cfg(loom)]
        {
            // SAFETY: as above; loom checks the claim.
            self.inner.with_mut(|p| unsafe { *p = value })
        }
    }
}
