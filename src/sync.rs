//! The atomics, the spin hint and the racy cell of every lock-free structure in the crate family
//! (page tables here; the VT-d invalidation queue and the SMMUv3 command and event queues in the
//! back-ends), swapped for loom's model-checked ones when built with `RUSTFLAGS="--cfg loom"`, so
//! the same protocol code runs on hardware and under the checker. Also the one lock-free piece
//! both queues share: the [`CombiningLock`] behind their tail-register publishers, and (feature
//! `host-hal`) the harness of their benchmarks, `bench`.
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

/// A value on cache lines of its own, so that stores to it do not invalidate the lines its
/// neighbours are read from (and the other way round). 128 bytes on x86-64 and AArch64, whose
/// prefetchers fetch lines in pairs (as `crossbeam_utils::CachePadded` does), 64 elsewhere.
#[derive(Debug, Default)]
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), repr(align(128)))]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    repr(align(64))
)]
pub struct CachePadded<T>(pub T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
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

impl<T> Mutex<T> {
    /// The lock if it is free now, without waiting.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        #[cfg(not(loom))]
        return self.inner.try_lock();
        #[cfg(loom)]
        return self.inner.try_lock().ok();
    }
}

/// The lock word is held.
const LOCKED: u32 = 1;
/// A request was handed to the holder while it held the lock: it runs another pass.
const PENDING: u32 = 2;
/// The caller-defined bit, set with a request that asked for it (VT-d: "write the tail even if
/// it did not move").
const FLAG: u32 = 4;

/// A combining try-lock: whoever finds it free runs a pass, and whoever finds it held hands its
/// request to the holder, which runs another pass for it, so nobody waits for another CPU. The
/// invalidation queue (VT-d) and the command queue (SMMUv3) use it to write their tail register
/// once for every batch their producers marked ready: a producer stores its ready mark
/// (`Release`), then calls [`run`](Self::run), whose pass follows the marks (`Acquire`) and
/// writes the register.
///
/// # Why it is correct
///
/// One `AtomicU32` holds LOCKED, PENDING and the caller's flag. Only read-modify-writes change
/// it, so its changes are totally ordered (its modification order), and every one of them
/// continues the release sequence of the ones before it:
///
/// - **Enter** (CAS, `AcqRel`): free (0) becomes LOCKED, and the caller runs a pass; held
///   becomes held | PENDING (| FLAG), and the caller returns at once. The release half hands
///   what the caller did before (its ready mark) to the holder that reads this value or a
///   later one; the acquire half, on taking the lock, makes everything the previous holder did
///   before leaving (its `published` and register write) happen before this holder's pass.
/// - **Leave** (CAS LOCKED → 0, `Release`): succeeds only if no request came since the holder
///   took the lock or its last request, and releases the holder's passes to the next holder.
///   If it fails, a request is pending: the holder takes it (swap to LOCKED, `Acquire`: the
///   requesters' releases, which the swapped-out value carries in its release sequence, happen
///   before the next pass) and runs another pass, with the flag if any request taken asked for
///   it. The swap needs no release: the holder's passes reach the next holder through its
///   final leave.
/// - A request's CAS is ordered against the holder's leave: before it, the leave fails and the
///   holder runs a pass after taking it; after it, the requester found the lock free and runs
///   its own pass. So every request is followed by a pass that starts after it and sees what
///   the requester did before it; passes never overlap (each is between a take and a leave),
///   and each starts after the previous one ended. A free word is always 0 (a leave only
///   succeeds from LOCKED alone), so a holder's first pass owes nothing to anyone else.
///
/// The holder runs one pass more per request handed to it and never waits; a holder preempted
/// inside its pass delays the requests handed to it until it runs again. The loom model in
/// `sync/loom_tests.rs` checks these claims (exclusion, no lost request, the flag, the edges).
#[derive(Debug, Default)]
pub struct CombiningLock {
    state: AtomicU32,
}

impl CombiningLock {
    /// A free lock.
    pub fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    /// Runs `pass` now if the lock is free, and again for every request handed in meanwhile;
    /// otherwise hands this request (with `flag`) to the holder and returns at once. `pass` is
    /// given `flag` the first time, and afterwards whether a request it now serves asked for
    /// the flag. Returns whether this caller ran the passes.
    pub fn run(&self, flag: bool, mut pass: impl FnMut(bool)) -> bool {
        let request = if flag { PENDING | FLAG } else { PENDING };
        // Enter. AcqRel: see the type's notes (release for a request, acquire for the lock).
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            let next = if state & LOCKED != 0 {
                state | request
            } else {
                LOCKED
            };
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) if state & LOCKED != 0 => return false,
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        let mut flag = flag;
        loop {
            pass(flag);
            // Leave (release: this holder's passes go to the next one), unless a request came
            // meanwhile: then take it (acquire, for what its requester did) and pass again.
            if self
                .state
                .compare_exchange(LOCKED, 0, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
            flag = self.state.swap(LOCKED, Ordering::Acquire) & FLAG != 0;
        }
    }
}

// The queue benchmarks' harness: host threads and clocks, so never under loom.
#[cfg(all(feature = "host-hal", not(loom)))]
pub mod bench;
// The queue simulators' latency: built under loom too (the simulators are), used outside it.
#[cfg(feature = "host-hal")]
pub mod latency;

#[cfg(all(test, loom))]
mod loom_tests;
