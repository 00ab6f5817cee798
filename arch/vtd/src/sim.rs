//! A simulated remapping unit for host tests and benchmarks (feature `sim`, and tests): a
//! register page in host memory and a responder thread that plays the hardware's side of every
//! handshake, so that a real [`VtdUnit`](crate::VtdUnit) runs against it unchanged.
//!
//! What the responder does: GCMD → GSTS for TE, QIE, IRE, CFI (states), SRTP (latched root
//! pointer, RTPS) and SIRTP (IRTPS); CCMD.ICC and IOTLB.IVT cleared with the actual granularity
//! set to the requested one (register-based invalidation, ECAP.QI = 0); the invalidation queue
//! consumed from IQH to IQT, wait descriptors with SW writing their status (ECAP.QI = 1). Every
//! invalidation is logged for tests to check, unless the unit was made
//! [`without_log`](SimulatedUnit::without_log). It does not translate DMA or record faults.
//!
//! The responder polls the registers on a thread of its own: it needs a CPU, as real hardware
//! does not, which a benchmark on few cores must account for. It keeps its core while requests
//! keep coming (a `yield` per round would hand the core to any other runnable thread for a whole
//! time slice, milliseconds, and a driver waiting on the queue would measure the scheduler), and
//! yields between rounds once it has been idle for [`IDLE_ROUNDS`] rounds.
//!
//! Table and queue addresses are host pointers: the driver must allocate from
//! [`HostHal`](iommu::hal::host::HostHal).

extern crate std;

use std::boxed::Box;
use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::vec::Vec;

use core::ptr::NonNull;

use crate::registers::UnitRegisters;

#[cfg(test)]
mod tests;

/// QEMU's default CAP (ND = 6, SAGAW 3/4-level, MGAW 48, FRO 0x220, NFR 0, PSI, SLLPS 2M/1G).
pub const CAP: u64 = 0x00d2_008c_222f_0606;
/// ECAP of a legacy unit without an invalidation queue: PT, IRO = 0xf (ECAP.QI = 0).
pub const ECAP_NO_QI: u64 = 0x0000_0000_00f0_0f40;
/// ECAP of a scalable unit with a queue, first and second stage, PASIDs of PSS + 1 = 5 bits.
pub const ECAP_SCALABLE: u64 = 0x0000_c900_00f0_0f4a | (4 << 35);

/// Rounds without a request after which the responder yields its core between rounds: some
/// tens of microseconds, far longer than the gap between a driver's map and its unmap.
pub const IDLE_ROUNDS: u32 = 1024;

#[repr(C, align(4096))]
struct Page([u64; 512]);

/// What the simulated hardware was asked to invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// CCMD written with ICC (the whole register).
    Context(u64),
    /// IOTLB register written with IVT, and IVA at that time.
    Iotlb {
        /// The IOTLB register.
        iotlb: u64,
        /// The IVA register.
        iva: u64,
    },
    /// A queue descriptor's first two words.
    Queued([u64; 2]),
}

/// The invalidations seen so far, when the unit keeps them.
type Log = Arc<Mutex<Vec<Event>>>;

/// One simulated remapping unit; its responder thread runs until it is dropped.
pub struct SimulatedUnit {
    base: NonNull<u8>,
    stop: Arc<AtomicBool>,
    log: Option<Log>,
    thread: Option<JoinHandle<()>>,
}

/// The register page as seen from the responder thread: volatile accesses at byte offsets.
#[derive(Clone, Copy)]
struct Regs(usize);

impl Regs {
    fn r32(self, off: usize) -> u32 {
        // SAFETY: `off` < 4096 and 4-byte aligned at every caller; the page outlives the
        // thread (joined in `SimulatedUnit::drop`).
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u32) }
    }
    fn w32(self, off: usize, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u32, v) }
    }
    fn r64(self, off: usize) -> u64 {
        // SAFETY: as in `r32`, 8-byte aligned.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u64) }
    }
    fn w64(self, off: usize, v: u64) {
        // SAFETY: as in `r64`.
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u64, v) }
    }
}

impl SimulatedUnit {
    /// A unit reporting `cap` and `ecap` (VER 1.0) that logs every invalidation.
    pub fn new(cap: u64, ecap: u64) -> Self {
        Self::start(cap, ecap, Some(Log::default()))
    }

    /// The same unit keeping no log: for benchmarks, whose millions of invalidations would
    /// fill memory and take a lock each.
    pub fn without_log(cap: u64, ecap: u64) -> Self {
        Self::start(cap, ecap, None)
    }

    fn start(cap: u64, ecap: u64, log: Option<Log>) -> Self {
        let mut page = Box::new(Page([0; 512]));
        page.0[0] = 0x10;
        page.0[1] = cap;
        page.0[2] = ecap;
        let base = NonNull::from(Box::leak(page)).cast::<u8>();
        let stop = Arc::new(AtomicBool::new(false));
        let regs = Regs(base.as_ptr() as usize);
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || respond(regs, &s, l.as_deref()));
        Self {
            base,
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// The register page, for [`VtdUnit::new`](crate::VtdUnit::new).
    pub fn registers(&self) -> UnitRegisters {
        // SAFETY: the page is a live, 4 KiB-aligned allocation until `drop`, after every user.
        match unsafe { UnitRegisters::new(self.base, 4096) } {
            Ok(regs) => regs,
            Err(_) => unreachable!("a whole aligned page is a valid register page"),
        }
    }

    /// The invalidations since the last call, oldest first (none without a log).
    pub fn take_log(&self) -> Vec<Event> {
        self.log
            .as_deref()
            .map(|l| core::mem::take(&mut *lock(l)))
            .unwrap_or_default()
    }

    #[cfg(test)]
    fn gsts(&self) -> u32 {
        Regs(self.base.as_ptr() as usize).r32(0x1c)
    }
}

impl Drop for SimulatedUnit {
    fn drop(&mut self) {
        self.stop.store(true, StdOrdering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: leaked from a `Box<Page>` in `start`; the thread is gone, freed once.
        drop(unsafe { Box::from_raw(self.base.cast::<Page>().as_ptr()) });
    }
}

/// The log, even if a test panicked while holding it (its entries are still worth reporting).
fn lock(log: &Mutex<Vec<Event>>) -> MutexGuard<'_, Vec<Event>> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hardware's side, until `stop`.
fn respond(regs: Regs, stop: &AtomicBool, log: Option<&Mutex<Vec<Event>>>) {
    let record = |e: Event| {
        if let Some(l) = log {
            lock(l).push(e);
        }
    };
    let mut latched = Latched::default();
    let mut idle = 0u32;
    while !stop.load(StdOrdering::Relaxed) {
        let worked = answer(regs, &mut latched, &record);
        idle = if worked { 0 } else { idle.saturating_add(1) };
        if idle >= IDLE_ROUNDS {
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// One-shot GCMD commands whose GSTS status stays set once done.
#[derive(Default)]
struct Latched {
    rtps: bool,
    irtps: bool,
}

/// One round of the hardware's side: mirrors GCMD into GSTS, completes a register-based
/// invalidation, consumes the queue. Says whether anything was asked (a GSTS change, an
/// invalidation, a descriptor).
fn answer(regs: Regs, latched: &mut Latched, record: &impl Fn(Event)) -> bool {
    const STATES: u32 = (1 << 31) | (1 << 26) | (1 << 25) | (1 << 23);
    let gcmd = regs.r32(0x18);
    latched.rtps |= gcmd & (1 << 30) != 0;
    latched.irtps |= gcmd & (1 << 24) != 0;
    let gsts = (gcmd & STATES) | (u32::from(latched.rtps) << 30) | (u32::from(latched.irtps) << 24);
    let mut worked = regs.r32(0x1c) != gsts;
    regs.w32(0x1c, gsts);

    let ccmd = regs.r64(0x28);
    if ccmd >> 63 != 0 {
        record(Event::Context(ccmd));
        let caig = ((ccmd >> 61) & 3) << 59;
        regs.w64(0x28, (ccmd & !(1 << 63)) | caig);
        worked = true;
    }
    let iotlb = regs.r64(0xf8);
    if iotlb >> 63 != 0 {
        let iva = regs.r64(0xf0);
        record(Event::Iotlb { iotlb, iva });
        let iaig = ((iotlb >> 60) & 3) << 57;
        regs.w64(0xf8, (iotlb & !(1 << 63)) | iaig);
        worked = true;
    }

    if gsts & (1 << 26) != 0 {
        let iqa = regs.r64(0x90);
        let ring = iqa & !0xfff;
        let width = 16u64 << ((iqa >> 11) & 1);
        let size = 4096u64 << (iqa & 7);
        let tail = regs.r64(0x88) & 0x7fff0;
        let mut head = regs.r64(0x80) & 0x7fff0;
        while head != tail {
            // HostHal frames: physical address == host pointer.
            let d = (ring + head) as *const u64;
            // SAFETY: `d` is inside the queue ring the driver allocated and keeps live while
            // the queue is enabled; descriptors between IQH and IQT are published.
            let (w0, w1) = unsafe { (d.read_volatile(), d.add(1).read_volatile()) };
            record(Event::Queued([w0, w1]));
            let kind = (w0 & 0xf) | ((w0 >> 9) & 7) << 4;
            if kind == 5 && w0 & (1 << 5) != 0 {
                let status = (w1 & !3) as *mut u32;
                // SAFETY: the status address of a wait descriptor is a dword in the driver's
                // queue bookkeeping frame (host memory, identity-mapped).
                unsafe { status.write_volatile((w0 >> 32) as u32) };
            }
            head = (head + width) % size;
            regs.w64(0x80, head);
            worked = true;
        }
    }
    worked
}
