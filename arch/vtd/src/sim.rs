//! A simulated VT-d remapping unit for host tests and benchmarks (feature `sim`, and tests): a
//! register page in host memory and a responder thread that plays the hardware's side of every
//! handshake, so that a real [`VtdUnit`](crate::VtdUnit) (or an embedder's own driver) runs
//! against it unchanged, and DMA requests the test makes up are translated through the tables
//! the driver built, with the faults they would raise recorded where the driver reads them.
//!
//! # What is simulated
//! - **Register handshakes** (responder thread): GCMD → GSTS for TE, QIE, IRE, CFI (states),
//!   SRTP (RTADDR latched, RTPS) and SIRTP (IRTPS).
//! - **Register-based invalidation** (ECAP.QI = 0): CCMD.ICC and IOTLB.IVT cleared, the actual
//!   granularity set to the requested one.
//! - **The invalidation queue** (ECAP.QI = 1): consumed from IQH to IQT by the executor the
//!   queue's own tests use ([`queue::execute`]: QEMU 10's type and reserved-bit checks, IQE
//!   with IQH left on a bad descriptor and no progress until it is cleared, IQERCD; wait
//!   descriptors write their status, or set ICS.IWC).
//! - **Invalidation log**: every invalidation, register or queued, for tests to check, unless
//!   the unit was made [`without_log`](SimulatedUnit::without_log).
//! - **DMA translation** ([`SimulatedUnit::translate`]): what a request from a source id (with
//!   a PASID or not) to an address would reach, or which fault it would raise: legacy root and
//!   context entries and second-stage tables; scalable-mode root, context, PASID directory and
//!   PASID entries, then first-stage, second-stage, nested or pass-through; large pages, R/W
//!   and U/S permissions, reserved bits, FPD, the interrupt range, first-stage A/D updates.
//!   The checks, their order and the reason codes ([`reason`]) are QEMU 10's, with these
//!   exceptions: the walk follows each PASID entry's PGTT (QEMU 10 walks one stage for the
//!   whole unit, chosen by its configuration); a PASID entry's presence is checked before its
//!   type (QEMU reports a cleared
//!   entry as invalid, 0x5b, never as not present, 0x59); nested translation (PGTT 3: each
//!   first-stage table address and the output go through the second stage) and five-level
//!   first-stage tables (with CAP.FL5LP), which QEMU does not model, follow the spec; the
//!   first stage's canonical check uses the table's width (48 or 57 bits). As in QEMU, a
//!   context entry needs a valid RID_PASID entry for any request, with a PASID or not;
//!   requests are untranslated user requests (first-stage entries need U/S); legacy mode does
//!   not look at a PASID. Translation disabled (GSTS.TES clear) is pass-through.
//! - **Fault recording** ([`SimulatedUnit::dma`]): a fault is recorded in the fault recording
//!   registers (at CAP.FRO, CAP.NFR + 1 of them; one with [`CAP`]) with FSTS.PPF/PFO/FRI, as
//!   QEMU 10 records them (dropped while PFO is set or while the same source has one pending;
//!   PFO when the next record is full), unless FPD suppresses it, and the driver's RW1C writes
//!   free them.
//!
//! The registers are memory the driver writes directly, so the unit sees a write afterwards,
//! as a change from what it last showed (RW1C bits cleared, read-only fields restored). FSTS
//! shows its reserved bit 31 set, so that writing just the bits to clear is always a change;
//! writing back exactly the value read is not, and is lost. Until the responder has taken a
//! write in, the page shows what the driver wrote: a record freed by writing F reads as F with
//! reason 0 and source 0 for that long (the responder polls without yielding while a record is
//! full, but a driver re-reading a record right after freeing it can see this). Hardware never
//! records reason 0: a driver should skip such records.
//!
//! # What is not
//! No caches: no IOTLB, context, PASID or interrupt-entry cache, so every request sees the
//! tables as they are now and a missing invalidation goes unnoticed (the log shows which were
//! made). No interrupts: no fault event or completion MSI is sent (FECTL/IECTL are left as
//! written). No interrupt remapping of requests, no device TLBs (ATS), page requests,
//! execute or privileged requests, no advanced fault logging, no performance monitoring.
//! Device-TLB invalidation timeouts (ITE) are injected only through [`queue::SimUnit`].
//!
//! # Timing
//! The responder polls the registers on a thread of its own: it needs a CPU, as real hardware
//! does not, which a benchmark on few cores must account for. It keeps its core while requests
//! keep coming (a `yield` per round would hand the core to any other runnable thread for a whole
//! time slice, milliseconds, and a driver waiting on the queue would measure the scheduler), and
//! yields between rounds once it has been idle for [`IDLE_ROUNDS`] rounds.
//!
//! # Memory
//! Table and queue addresses are host pointers: the driver must allocate from
//! [`HostHal`](iommu::hal::host::HostHal) (physical == virtual), and the tables must stay
//! allocated while the unit may read them (the contract of [`SimulatedUnit::translate`]).
//!
//! # Example
//! An embedder's test: what its device could reach after its own code attached it.
//! ```
//! use iommu::addr::{Iova, PhysAddr};
//! use iommu::hal::host::HostHal;
//! use iommu::pagetable::Prot;
//! use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};
//! use iommu_vtd::sim::{reason, Access, SimulatedUnit, CAP, ECAP_SCALABLE};
//! use iommu_vtd::{Mode, QueueSize, VtdUnit};
//!
//! let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
//! let regs = sim.registers();
//! let hal = HostHal::new();
//! let unit = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE).unwrap();
//! let domain = unit.new_domain(Stage::Second, 48).unwrap();
//! let buffer = PhysAddr::new(0x7000_0000); // never dereferenced: the unit only translates
//! unit.map(&domain, Iova::new(0x10_0000), buffer, 0x1000, Prot::READ).unwrap();
//! let nic = DeviceId(0x18); // 00:03.0
//! unit.attach(nic, Attachment::Paging(&domain)).unwrap();
//!
//! // SAFETY: the unit and its domain, whose tables the walk reads, are alive.
//! let read = unsafe { sim.translate(0x18, None, 0x10_0010, Access::Read) };
//! assert_eq!(read, Ok(0x7000_0010));
//! // SAFETY: as above.
//! let write = unsafe { sim.dma(0x18, None, 0x10_0010, Access::Write) }.unwrap_err();
//! assert_eq!(write.reason, reason::WRITE);
//! let mut faults = Vec::new();
//! unit.drain_faults(&mut |f| faults.push(f)).unwrap();
//! assert!(faults.iter().any(|f| f.device == nic && f.write && f.address == 0x10_0000));
//! ```

extern crate std;

use std::boxed::Box;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::vec::Vec;

use core::ptr::NonNull;

use crate::registers::UnitRegisters;

mod fault;
mod translate;

#[cfg(test)]
mod tests;

/// The invalidation queue's side: the descriptor executor, and the queue registers alone for
/// the queue's own tests and benchmark.
pub use crate::qi::sim as queue;
pub use translate::{reason, Access, Fault};

use fault::Faults;

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
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the responder and the DMA side share besides the register page.
struct Shared {
    /// RTADDR as latched by the last SRTP. Release by the responder before it shows RTPS;
    /// acquire by `translate`.
    root: AtomicU64,
    /// The fault registers; one side at a time updates them.
    faults: Mutex<Faults>,
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
    /// Replaces `old` by `new` unless the driver wrote the register meanwhile.
    fn cas32(self, off: usize, old: u32, new: u32) -> bool {
        // SAFETY: as in `r32`; the driver's accesses to the register are whole aligned
        // dwords, so an atomic view of it is sound on the host.
        let reg = unsafe { AtomicU32::from_ptr((self.0 + off) as *mut u32) };
        reg.compare_exchange(old, new, StdOrdering::AcqRel, StdOrdering::Relaxed)
            .is_ok()
    }
    /// As `cas32`, for a quadword.
    fn cas64(self, off: usize, old: u64, new: u64) -> bool {
        // SAFETY: as in `cas32`, 8-byte aligned.
        let reg = unsafe { AtomicU64::from_ptr((self.0 + off) as *mut u64) };
        reg.compare_exchange(old, new, StdOrdering::AcqRel, StdOrdering::Relaxed)
            .is_ok()
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
        let shared = Arc::new(Shared {
            root: AtomicU64::new(0),
            faults: Mutex::new(Faults::new(cap)),
        });
        let regs = Regs(base.as_ptr() as usize);
        let (s, l, sh) = (stop.clone(), log.clone(), shared.clone());
        let thread = std::thread::spawn(move || respond(regs, &s, l.as_deref(), &sh));
        Self {
            base,
            stop,
            log,
            shared,
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
        self.regs().r32(0x1c)
    }

    /// FSTS as the page shows it.
    #[cfg(test)]
    fn fsts(&self) -> u32 {
        self.regs().r32(fault::FSTS)
    }

    fn regs(&self) -> Regs {
        Regs(self.base.as_ptr() as usize)
    }

    /// Where a DMA request from `source_id` (bus << 8 | devfn), with `pasid` or without, to
    /// `iova` would go: the host physical address (== host pointer under `HostHal`), or the
    /// fault the unit would raise. Nothing is recorded ([`dma`](Self::dma) records).
    ///
    /// The walk starts at the root table latched by the last SRTP, in the mode its RTADDR.TTM
    /// says, and reads the tables as they are now (there are no caches). With translation
    /// disabled (GSTS.TES clear) the request passes through untranslated.
    ///
    /// # Safety
    /// Every table the walk can reach from the latched root pointer (root, context, PASID
    /// directory and PASID tables, page tables) is live host memory for the duration of the
    /// call; a zero pointer is reported as the table-not-accessible fault. A driver running on
    /// [`HostHal`](iommu::hal::host::HostHal) frames keeps this while the frames it put in the
    /// tables are not freed.
    pub unsafe fn translate(
        &self,
        source_id: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, Fault> {
        // SAFETY: the caller's contract.
        unsafe { self.walk(source_id, pasid, iova, access) }.map_err(|(fault, _)| fault)
    }

    /// The same request, made: on a fault, the unit records it in its fault recording
    /// registers (FSTS.PPF, FRI; PFO if the next record is still full), unless FPD in the
    /// context, PASID directory or PASID entry suppresses it, where the driver's fault handling
    /// reads it back. Returns what [`translate`](Self::translate) does.
    ///
    /// # Safety
    /// As for [`translate`](Self::translate).
    pub unsafe fn dma(
        &self,
        source_id: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, Fault> {
        // SAFETY: the caller's contract.
        unsafe { self.walk(source_id, pasid, iova, access) }.map_err(|(fault, fpd)| {
            if !(fpd && reason::qualified(fault.reason)) {
                lock(&self.shared.faults).record(self.regs(), &fault);
            }
            fault
        })
    }

    /// The translation, or the fault and whether FPD was set where it arose.
    ///
    /// # Safety
    /// As for [`translate`](Self::translate).
    unsafe fn walk(
        &self,
        source_id: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, (Fault, bool)> {
        let regs = self.regs();
        if regs.r32(0x1c) & (1 << 31) == 0 {
            return Ok(iova);
        }
        let unit = translate::Unit {
            cap: regs.r64(0x08),
            ecap: regs.r64(0x10),
            rtaddr: self.shared.root.load(StdOrdering::Acquire),
        };
        // SAFETY: the caller's contract.
        unsafe { unit.translate(source_id, pasid, iova, access) }.map_err(|failed| {
            let fault = Fault {
                reason: failed.reason,
                source_id,
                pasid,
                address: iova,
                access,
            };
            (fault, failed.fpd)
        })
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

/// A lock, even if a test panicked while holding it (the log's entries are still worth
/// reporting; the fault registers are consistent between any two of their updates).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hardware's side, until `stop`.
fn respond(regs: Regs, stop: &AtomicBool, log: Option<&Mutex<Vec<Event>>>, shared: &Shared) {
    let record = |e: Event| {
        if let Some(l) = log {
            lock(l).push(e);
        }
    };
    let mut latched = Latched::default();
    let mut idle = 0u32;
    while !stop.load(StdOrdering::Relaxed) {
        let worked = answer(regs, &mut latched, &record, shared);
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
/// invalidation, takes in the driver's writes to the fault registers, consumes the queue. Says
/// whether anything was asked (a GSTS change, an invalidation, a descriptor).
fn answer(regs: Regs, latched: &mut Latched, record: &impl Fn(Event), shared: &Shared) -> bool {
    const STATES: u32 = (1 << 31) | (1 << 26) | (1 << 25) | (1 << 23);
    let gcmd = regs.r32(0x18);
    if gcmd & (1 << 30) != 0 {
        // SRTP: the root table pointer is latched (before RTPS shows it done).
        shared.root.store(regs.r64(0x20), StdOrdering::Release);
        latched.rtps = true;
    }
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

    let mut faults = lock(&shared.faults);
    faults.sync(regs);
    worked |= faults.pending();
    if gsts & (1 << 26) != 0 && !faults.has(fault::IQE | fault::ITE) {
        let iqa = regs.r64(0x90);
        let ring = iqa & !0xfff;
        let wide = (iqa >> 11) & 1 != 0;
        let width = 16u64 << u64::from(wide);
        let size = 4096u64 << (iqa & 7);
        let tail = regs.r64(0x88) & 0x7fff0;
        let mut head = regs.r64(0x80) & 0x7fff0;
        while head != tail {
            // HostHal frames: physical address == host pointer.
            let d = (ring + head) as *const u64;
            let mut w = [0u64; 4];
            for (i, word) in w.iter_mut().enumerate().take(width as usize / 8) {
                // SAFETY: `d` is a descriptor inside the queue ring the driver allocated and
                // keeps live while the queue is enabled; descriptors between IQH and IQT are
                // published.
                *word = unsafe { d.add(i).read_volatile() };
            }
            record(Event::Queued([w[0], w[1]]));
            worked = true;
            match queue::execute(&w, wide) {
                None => {
                    // As `queue::SimUnit`: reserved field (4) in IQERCD, IQH left on it.
                    regs.w64(0xb0, 4);
                    faults.set(regs, fault::IQE);
                    break;
                }
                Some(queue::Effect::StatusWrite { address, data }) => {
                    let status = address as *mut u32;
                    // SAFETY: the status address of a wait descriptor is a dword in the
                    // driver's queue bookkeeping frame (host memory, identity-mapped).
                    unsafe { status.write_volatile(data) };
                }
                Some(queue::Effect::Interrupt) => regs.w32(0x9c, regs.r32(0x9c) | 1),
                Some(queue::Effect::None) => {}
            }
            head = (head + width) % size;
            regs.w64(0x80, head);
        }
    }
    worked
}
