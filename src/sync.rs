//! The atomics, the spin hint and the racy cell of every lock-free structure in the crate family
//! (page tables here; the VT-d invalidation queue and the SMMUv3 command and event queues in the
//! back-ends), swapped for loom's model-checked ones when built with `RUSTFLAGS="--cfg loom"`, so
//! the same protocol code runs on hardware and under the checker.
//!
//! Code that is part of a loom model takes all of these (and [`Mutex`]) from here, never from
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

/// Exponential backoff between the polls of a wait: 1, 2, 4, ... up to 256 spins. A waiter that
/// polls a register or a line other CPUs write backs off, so the CPU it waits for gets the
/// interconnect (or, under emulation, the device lock that every register access takes).
#[derive(Debug)]
pub struct Backoff {
    spins: u32,
}

impl Backoff {
    /// Longest pause, in spins (one under loom, where every spin is a yield the checker explores).
    #[cfg(not(loom))]
    const MAX: u32 = 256;
    #[cfg(loom)]
    const MAX: u32 = 1;

    /// The shortest pause first.
    pub const fn new() -> Self {
        Self { spins: 1 }
    }

    /// Pauses, then doubles the next pause (up to the maximum).
    pub fn pause(&mut self) {
        for _ in 0..self.spins {
            spin_loop();
        }
        self.spins = (self.spins * 2).min(Self::MAX);
    }

    /// Back to the shortest pause, after progress.
    pub fn reset(&mut self) {
        self.spins = 1;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
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

/// A spin lock (loom's mutex under loom), for the few structures that take short locks rather
/// than being lock-free: the stripes of a domain's IOVA space.
pub struct Mutex<T> {
    #[cfg(not(loom))]
    inner: spin::Mutex<T>,
    #[cfg(loom)]
    inner: loom::sync::Mutex<T>,
}

/// The guard of a held [`Mutex`]; dropping it releases the lock.
#[cfg(not(loom))]
pub type MutexGuard<'a, T> = spin::MutexGuard<'a, T>;
/// The guard of a held [`Mutex`]; dropping it releases the lock.
#[cfg(loom)]
pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    /// An unlocked mutex holding `value`.
    pub fn new(value: T) -> Self {
        Self {
            #[cfg(not(loom))]
            inner: spin::Mutex::new(value),
            #[cfg(loom)]
            inner: loom::sync::Mutex::new(value),
        }
    }

    /// Spins until the lock is free, then holds it (acquire; the release is the guard's drop).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(loom))]
        return self.inner.lock();
        #[cfg(loom)]
        // A thread that panicked while holding it fails the model anyway.
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}
