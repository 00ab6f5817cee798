//! The command queue (IHI 0070 3.5, 6.3.26-28): a ring of 16-byte commands the SMMU consumes,
//! fed by several CPUs at once without a lock (each marks its written batch ready; whoever
//! holds a try-lock writes PROD once for every ready batch, and nobody waits for it), with
//! CMD_SYNC completion polled on CONS, bounded waits, and recovery from command errors
//! (CERROR_ILL, CERROR_ABT, CERROR_ATC_INV_SYNC).
//!
//! The hardware is reached through [`CmdqRegisters`] (CONS, PROD, GERROR, GERRORN) and the ring
//! through [`QueueMemory`], so the whole protocol runs on the host against a simulated consumer
//! (`crate::sim`, feature `sim`) and under loom. [`MmioCmdqRegisters`] and [`DmaQueueMemory`] are the real
//! ones.

extern crate alloc;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use iommu::addr::PhysAddr;
use iommu::poll::{Timeout, DEFAULT_POLL_BUDGET};
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::LocalRegisterCopy;

use crate::command::{Command, EncodeError, RawCommand};
use crate::registers::{SmmuRegisters, GERROR, QUEUE_BASE, QUEUE_CONS, QUEUE_PROD};
use iommu::sync::{AtomicBool, AtomicU64, Backoff, CachePadded as Padded, CombiningLock, Ordering};

/// Bytes of one command.
pub const ENTRY_BYTES: usize = 16;

/// The largest queue the PROD/CONS index fields can address (20 bits: index and wrap bit).
pub const MAX_LOG2_ENTRIES: u8 = 19;

/// The four registers the queue protocol uses.
///
/// Implementations give the semantics of the device accessors a driver uses for MMIO:
/// [`write_prod`](Self::write_prod) and [`acknowledge_gerror`](Self::acknowledge_gerror) order every
/// earlier memory access of this CPU before the register write as the SMMU observes it (Linux's
/// `writel`: a `DMB OSHST` before the store on AArch64), and the reads order the register read
/// before every later memory access (`readl`: a `DMB OSHLD` after it).
pub trait CmdqRegisters: Sync {
    /// SMMU_CMDQ_CONS: the consumer index and wrap bit, and CERROR in ERR \[30:24\].
    fn read_cons(&self) -> u32;
    /// SMMU_CMDQ_PROD: hands every command before this index to the SMMU.
    fn write_prod(&self, prod: u32);
    /// SMMU_GERROR: global errors; CMDQ_ERR (bit 0) is active while it differs from GERRORN.
    fn read_gerror(&self) -> u32;
    /// SMMU_GERRORN.
    fn read_gerrorn(&self) -> u32;
    /// Acknowledges the global errors of `mask`: makes those bits of SMMU_GERRORN equal to
    /// GERROR's and leaves the others, in one read-modify-write that the implementation
    /// serialises against every other acknowledgement of the same SMMU (the command queue
    /// acknowledges CMDQ_ERR, the event-queue drain EVENTQ_ABT_ERR, from any CPU). Returns the
    /// bits of `mask` that were active.
    fn acknowledge_gerror(&self, mask: u32) -> u32;
}

impl<T: CmdqRegisters + ?Sized> CmdqRegisters for &T {
    fn read_cons(&self) -> u32 {
        (**self).read_cons()
    }
    fn write_prod(&self, prod: u32) {
        (**self).write_prod(prod)
    }
    fn read_gerror(&self) -> u32 {
        (**self).read_gerror()
    }
    fn read_gerrorn(&self) -> u32 {
        (**self).read_gerrorn()
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        (**self).acknowledge_gerror(mask)
    }
}

/// The ring of a queue: `2^log2_entries` entries of `W` 64-bit words (2 for commands, 4 for
/// events).
pub trait QueueMemory<const W: usize>: Sync {
    /// log2 of the number of entries.
    fn log2_entries(&self) -> u8;

    /// Stores entry `index` (below `2^log2_entries`).
    ///
    /// # Safety
    /// The caller owns the slot: no other access to it is concurrent (the queue protocol's
    /// reservation for producers, the SMMU's error stop for recovery).
    unsafe fn write(&self, index: u32, entry: [u64; W]);

    /// Loads entry `index`.
    ///
    /// # Safety
    /// No write to the slot is concurrent.
    unsafe fn read(&self, index: u32) -> [u64; W];
}

impl<const W: usize, T: QueueMemory<W> + ?Sized> QueueMemory<W> for &T {
    fn log2_entries(&self) -> u8 {
        (**self).log2_entries()
    }
    unsafe fn write(&self, index: u32, entry: [u64; W]) {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { (**self).write(index, entry) }
    }
    unsafe fn read(&self, index: u32) -> [u64; W] {
        // SAFETY: the caller's guarantee, passed on.
        unsafe { (**self).read(index) }
    }
}

/// A queue ring in DMA memory the SMMU reads (commands) or writes (events).
#[derive(Debug)]
pub struct DmaQueueMemory<const W: usize> {
    base: NonNull<[u64; W]>,
    log2: u8,
}

// SAFETY: the ring is plain memory; every access goes through `QueueMemory`, whose callers
// exclude concurrent access to a slot, so sharing the pointer between CPUs is sound.
unsafe impl<const W: usize> Send for DmaQueueMemory<W> {}
// SAFETY: as above.
unsafe impl<const W: usize> Sync for DmaQueueMemory<W> {}

impl<const W: usize> DmaQueueMemory<W> {
    /// The ring of `2^log2_entries` entries at `base` (the CPU's pointer to the frame whose
    /// physical address goes into SMMU_CMDQ_BASE / SMMU_EVENTQ_BASE).
    ///
    /// # Safety
    /// `base` must point to `(8 * W) << log2_entries` bytes, 8-byte aligned, readable and
    /// writable for as long as the value lives, used by nothing but this value and the SMMU.
    pub unsafe fn new(base: NonNull<u8>, log2_entries: u8) -> Self {
        Self {
            base: base.cast(),
            log2: log2_entries,
        }
    }

    fn word(&self, index: u32, w: usize) -> *mut u64 {
        let slot = (index & ((1 << self.log2) - 1)) as usize;
        self.base
            .as_ptr()
            .wrapping_add(slot)
            .cast::<u64>()
            .wrapping_add(w)
    }
}

impl<const W: usize> QueueMemory<W> for DmaQueueMemory<W> {
    fn log2_entries(&self) -> u8 {
        self.log2
    }

    unsafe fn write(&self, index: u32, entry: [u64; W]) {
        for (w, value) in entry.into_iter().enumerate() {
            // SAFETY: the index is masked into the ring, which `new`'s caller guarantees is
            // valid; the caller owns the slot. 64-bit volatile stores: single-copy atomic per
            // word, as the SMMU reads them.
            unsafe { self.word(index, w).write_volatile(value) }
        }
    }

    unsafe fn read(&self, index: u32) -> [u64; W] {
        let mut entry = [0u64; W];
        for (w, value) in entry.iter_mut().enumerate() {
            // SAFETY: as for `write`; no concurrent writer per the caller.
            *value = unsafe { self.word(index, w).read_volatile() };
        }
        entry
    }
}

/// The real registers, in a mapped SMMU register frame.
#[derive(Debug)]
pub struct MmioCmdqRegisters {
    regs: NonNull<SmmuRegisters>,
    /// Serialises the read-modify-write of GERRORN ([`acknowledge_gerror`]): GERRORN is one
    /// register whose bits different users acknowledge, so two unserialised writers could each
    /// write back the other's stale bit and undo (or repeat) an acknowledgement. Every write of
    /// GERRORN after bring-up goes through this one lock.
    ///
    /// [`acknowledge_gerror`]: CmdqRegisters::acknowledge_gerror
    gerrorn: spin::Mutex<()>,
}

// SAFETY: the registers are MMIO cells accessed with volatile reads and writes; the SMMU
// arbitrates concurrent accesses from several CPUs.
unsafe impl Send for MmioCmdqRegisters {}
// SAFETY: as above.
unsafe impl Sync for MmioCmdqRegisters {}

impl MmioCmdqRegisters {
    /// The command queue registers of the SMMU at `regs`.
    ///
    /// # Safety
    /// `regs` must point to the SMMU's register frame mapped as Device memory for as long as
    /// the value lives.
    pub unsafe fn new(regs: NonNull<SmmuRegisters>) -> Self {
        Self {
            regs,
            gerrorn: spin::Mutex::new(()),
        }
    }

    fn regs(&self) -> &SmmuRegisters {
        // SAFETY: mapped for our lifetime per `new`'s contract; tock-registers cells are
        // interior-mutable and accessed volatilely, so a shared reference is sound.
        unsafe { self.regs.as_ref() }
    }
}

/// Orders this CPU's earlier memory writes before a following register write, as the SMMU
/// observes them.
#[inline(always)]
pub(crate) fn io_write_barrier() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction: no memory or register effects beyond ordering.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Orders a register read before this CPU's later memory accesses.
#[inline(always)]
pub(crate) fn io_read_barrier() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction: no memory or register effects beyond ordering.
    unsafe {
        core::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

impl CmdqRegisters for MmioCmdqRegisters {
    fn read_cons(&self) -> u32 {
        let v = self.regs().cmdq_cons.get();
        io_read_barrier();
        v
    }
    fn write_prod(&self, prod: u32) {
        io_write_barrier();
        self.regs().cmdq_prod.set(prod);
    }
    fn read_gerror(&self) -> u32 {
        let v = self.regs().gerror.get();
        io_read_barrier();
        v
    }
    fn read_gerrorn(&self) -> u32 {
        let v = self.regs().gerrorn.get();
        io_read_barrier();
        v
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        let _serialised = self.gerrorn.lock();
        let gerror = self.read_gerror();
        let gerrorn = self.read_gerrorn();
        // The barrier orders this CPU's earlier stores (a rewritten command slot) before the
        // acknowledgement that lets the SMMU resume.
        io_write_barrier();
        self.regs().gerrorn.set((gerrorn & !mask) | (gerror & mask));
        (gerror ^ gerrorn) & mask
    }
}

/// The SMMU_CMDQ_BASE / SMMU_EVENTQ_BASE value for a ring at `phys` of `2^log2_entries`
/// entries, with the read-allocate (commands) or write-allocate (events) hint if `allocate`.
pub fn queue_base_register(phys: PhysAddr, log2_entries: u8, allocate: bool) -> u64 {
    let mut v = QUEUE_BASE::ADDR.val(phys.as_u64() >> 5)
        + QUEUE_BASE::LOG2SIZE.val(u64::from(log2_entries));
    if allocate {
        v += QUEUE_BASE::ALLOCATE::SET;
    }
    v.value
}

/// What the SMMU said about the command at CONS (SMMU_CMDQ_CONS.ERR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorCode {
    /// CERROR_NONE.
    None,
    /// CERROR_ILL: an unknown opcode, a reserved field set, or a command the SMMU cannot
    /// perform (e.g. a stage it does not have).
    Illegal,
    /// CERROR_ABT: fetching the command aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: a CMD_SYNC found an ATC invalidation that failed or timed out.
    AtcInvalidationSync,
    /// A reserved code.
    Reserved(u8),
}

impl CommandErrorCode {
    /// The code in a CONS value.
    pub fn from_cons(cons: u32) -> Self {
        Self::from_encoding(
            LocalRegisterCopy::<u32, QUEUE_CONS::Register>::new(cons).read(QUEUE_CONS::ERR),
        )
    }

    /// The code of ERR field value `v`.
    pub const fn from_encoding(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvalidationSync,
            other => Self::Reserved(other as u8),
        }
    }

    /// The ERR field encoding.
    pub const fn encoding(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Illegal => 1,
            Self::Abort => 2,
            Self::AtcInvalidationSync => 3,
            Self::Reserved(v) => v as u32,
        }
    }
}

impl fmt::Display for CommandErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("CERROR_NONE"),
            Self::Illegal => f.write_str("CERROR_ILL (illegal command)"),
            Self::Abort => f.write_str("CERROR_ABT (command fetch aborted)"),
            Self::AtcInvalidationSync => {
                f.write_str("CERROR_ATC_INV_SYNC (ATC invalidation failed)")
            }
            Self::Reserved(v) => write!(f, "reserved CERROR {v:#x}"),
        }
    }
}

/// A command of a submission that the SMMU refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFailure {
    /// Its position in the submitted slice (the slice's length for the appended CMD_SYNC).
    pub position: usize,
    /// Its index in the queue (without the wrap bit).
    pub queue_index: u32,
    /// What the SMMU reported.
    pub code: CommandErrorCode,
    /// The command as submitted.
    pub command: RawCommand,
}

/// Why a submission failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdqError {
    /// The ring's size is not one the PROD/CONS fields can address (1..=19 as log2).
    BadQueueSize(u8),
    /// The commands plus their CMD_SYNC do not fit in the queue at once.
    BatchTooLarge {
        /// Entries asked for.
        entries: usize,
        /// Entries in the queue.
        capacity: usize,
    },
    /// A command could not be encoded.
    Encode(EncodeError),
    /// The SMMU did not consume commands within the poll budget (the queue stays usable; the
    /// commands may still complete later).
    Timeout(Timeout),
    /// The SMMU refused a command of this submission. It was replaced by a CMD_SYNC (for
    /// CERROR_ILL and CERROR_ABT) and the commands after it were executed.
    Command(CommandFailure),
    /// SMMU_CMDQ_CONS points past every command ever submitted: the registers are not an SMMU
    /// command queue in the state this queue was created for.
    ConsOutOfRange {
        /// The CONS value read.
        cons: u32,
    },
    /// No memory for the queue's ready marks (one word per entry, in the CPUs' heap).
    OutOfMemory,
}

impl fmt::Display for CmdqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadQueueSize(l) => write!(f, "command queue of 2^{l} entries is not addressable"),
            Self::BatchTooLarge { entries, capacity } => {
                write!(f, "{entries} commands do not fit a queue of {capacity}")
            }
            Self::Encode(e) => write!(f, "command not encodable: {e}"),
            Self::Timeout(t) => write!(f, "{t}"),
            Self::Command(c) => write!(
                f,
                "command {:#018x}_{:016x} (position {}, queue index {}) failed: {}",
                c.command[1], c.command[0], c.position, c.queue_index, c.code
            ),
            Self::ConsOutOfRange { cons } => write!(f, "SMMU_CMDQ_CONS {cons:#x} is past PROD"),
            Self::OutOfMemory => f.write_str("no memory for the command queue's ready marks"),
        }
    }
}

impl core::error::Error for CmdqError {}

impl From<EncodeError> for CmdqError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

/// The CMD_SYNC (SIG_NONE) appended to submissions and substituted for failed commands.
const CMD_SYNC: RawCommand = [crate::command::opcode::SYNC as u64, 0];

/// Error records kept for waiting submitters; see [`CommandQueue`]. A record is lost only if
/// this many more commands fail while its submitter waits to look (a submitter descheduled
/// between its CMD_SYNC completing and its look, under a storm of failures).
const ERROR_SLOTS: usize = 256;

/// A waiter whose CONS does not move looks for a stopped queue (GERROR.CMDQ_ERR) on its first
/// stalled poll and then every this many: a stop is seen a few polls late at worst, and the
/// polls in between read CONS alone. Every poll under loom, whose models stay small.
#[cfg(not(loom))]
const ERROR_CHECK_INTERVAL: u32 = 16;
#[cfg(loom)]
const ERROR_CHECK_INTERVAL: u32 = 1;

/// The publisher lock and what only its holder touches, on one line of their own: a pass
/// takes the lock, reads and writes `published`, and leaves, moving one line, and its stores
/// do not invalidate the read-mostly fields every submission reads (`regs`, `mem`, `ready`).
#[derive(Debug, Default)]
struct Publisher {
    /// The lock: a producer's ready mark, stored before its request, reaches the pass that
    /// serves it, and one pass's `published` and PROD write the next pass.
    lock: CombiningLock,
    /// Hardware PROD as last written. Only the lock holder reads or writes it; the lock orders
    /// one holder's store before the next holder's load, so relaxed suffices.
    published: AtomicU64,
}

/// The command queue of one SMMU, shared by every CPU (`&self` everywhere).
///
/// # Protocol and why it is correct
///
/// Positions are 64-bit sequence numbers that never wrap (2^64 commands outlast any machine);
/// slot = seq mod N, and the hardware PROD/CONS value is seq mod 2N (index plus wrap bit).
/// A submission goes through four steps, none of which waits for another producer:
///
/// - **Reserve** (`reserved`): a producer needing `n` entries loads `consumed` and `reserved`
///   and moves `reserved` from `r` to `r + n` with a compare-and-swap, only if
///   `r + n <= consumed + N`. The CAS makes ranges disjoint; the check keeps the invariant
///   **I1: reserved ≤ consumed + N** (consumed only grows), so a reserved slot's previous
///   command has been consumed. The CAS can be relaxed: it orders nothing, it only arbitrates.
/// - **Write** its entries: slots nobody else touches (the SMMU has consumed the old ones, other
///   producers have other ranges).
/// - **Mark ready** (`ready[r mod N]`): store `r + n` there with `Release`, which publishes the
///   entry stores to whoever loads the mark with `Acquire`. A value `v` in the slot of `t`
///   means "the batch starting at `t` is written" iff `t < v ≤ t + N`: a mark left by an
///   earlier lap's batch in that slot ended at or before `t`, and a later lap's batch there
///   cannot be reserved while `t` is unpublished (it needs `consumed > t`, by I1).
/// - **Publish** (`publisher`, `published`): a pass of the publisher lock (a
///   [`CombiningLock`]: whoever finds it free passes, whoever finds it held hands the holder a
///   request and returns at once, and the holder passes again for it) follows the marks from
///   `published` over the contiguous ready prefix, writes PROD once for all of it and stores
///   `published`. Every entry PROD then covers happens before the PROD write: the holder's own
///   by program order, the others' through the acquire of their marks (a mark stored before a
///   request is visible to the pass that serves it: see the lock's notes); the register write
///   orders what happens before it ahead of it as the SMMU observes it (see
///   [`CmdqRegisters`]; the same edge the in-order hand-off used to make through a release and
///   acquire of `published`). Passes are ordered one after another, each starting from its
///   predecessor's `published`, and every mark is followed by a pass that sees it. So no
///   ready mark is missed, PROD only moves forward, in reservation order, and never past an
///   entry not yet written. A producer preempted before its mark delays only the batches
///   after it, and its own publish then writes PROD once for all of them. The holder scans
///   once more per request handed to it and never waits; a holder preempted inside its few
///   instructions delays the requests handed to it until it runs again (the only remaining
///   dependence on another CPU's scheduling). The marks are one word per entry in the CPUs' heap (2 KiB for 256
///   entries), allocated fallibly by [`CommandQueue::new`].
///
/// `consumed` is a lower bound of hardware CONS. Whoever needs it fresher reads CONS and
/// rebuilds the sequence number as `seen + ((cons - seen) mod 2N)`, then stores it with a
/// compare-and-swap from `seen`. If the CAS succeeds, `consumed` was `seen` throughout (it only
/// grows), so at the moment CONS was read, by I1, `seen ≤ CONS ≤ seen + N < seen + 2N` and the
/// rebuilt value is exact. If it fails, someone else stored a verified newer value, which is
/// used instead. The CAS is acquire-release: `consumed` carries the SMMU's "finished reading
/// these slots" from the CPU that read CONS to the producer that reuses them (producers load it
/// with acquire).
///
/// CMD_SYNC completion: a submission's CMD_SYNC at position `s` has completed when CONS has
/// passed it, i.e. `consumed > s`. The two waits (space, sync) are bounded by the poll budget,
/// counted in polls without progress with an exponential backoff between them, and return
/// [`CmdqError::Timeout`]. Publication itself never waits: a batch behind one that is not yet
/// ready is published by that one's producer, so a submitter's CMD_SYNC can wait for an earlier
/// producer to mark ready (it cannot complete before the commands ahead of it anyway), and the
/// sync wait's budget covers that as it covers a slow SMMU. Between reservation and mark there
/// is nothing that can fail, so a reservation is always marked and no hole can stop the queue.
///
/// Command errors: while polling, any waiter that sees GERROR.CMDQ_ERR active takes the
/// `recovering` flag (one recoverer at a time; acquire/release so one recovery's stores happen
/// before the next's reads), re-checks the error, reads the failed command's position from CONS
/// (exact: the SMMU is stopped there, so `consumed ≤ CONS ≤ reserved ≤ consumed + N`), replaces
/// it with a CMD_SYNC (CERROR_ILL, CERROR_ABT; a failed CMD_SYNC of CERROR_ATC_INV_SYNC is
/// retried as is), records (position, code) in a small ring with a release store, and
/// acknowledges through GERRORN, after which the SMMU resumes (no PROD write needed). The
/// submitter whose range holds that position finds the record once its CMD_SYNC completes: the
/// record was stored before the acknowledgement that let CONS move on, so it is visible then.
/// Records are claimed with a CAS; the ring holds the last 256 errors (`ERROR_SLOTS`), enough unless
/// that many more fail before a waiter looks.
pub struct CommandQueue<R, M> {
    regs: R,
    mem: M,
    log2: u8,
    budget: u32,
    /// Next free position. Orders nothing (relaxed CAS): arbitration only.
    reserved: Padded<AtomicU64>,
    /// The publisher lock and `published` (see [`Publisher`]).
    publisher: Padded<Publisher>,
    /// Lower bound of hardware CONS. Acquire-release CAS / acquire loads: orders the SMMU's
    /// reads of consumed slots (observed by reading CONS) before their reuse.
    consumed: Padded<AtomicU64>,
    /// Per slot, the end of the batch that starts there once it is written. Release store by
    /// its producer after the entry stores / acquire load by the publisher before PROD.
    ready: Box<[AtomicU64]>,
    /// One recovery at a time; acquire on taking, release on leaving.
    recovering: AtomicBool,
    /// (position << 8 | code) of recent command errors, 0 when empty or claimed. Release
    /// store by the recoverer before its GERRORN write / acquire load by submitters.
    errors: [AtomicU64; ERROR_SLOTS],
    /// Errors recorded so far (picks the ring slot); relaxed, only the recoverer writes it.
    error_count: AtomicU64,
    /// Records stored and not yet claimed (more if one was overwritten): a submitter scans the
    /// ring only when it is not 0. Incremented before the acknowledgement that lets the SMMU
    /// run on, so a submitter that sees its CMD_SYNC complete sees the increment too.
    unclaimed: AtomicU64,
}

impl<R, M> fmt::Debug for CommandQueue<R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandQueue")
            .field("log2_entries", &self.log2)
            .field("reserved", &self.reserved.0.load(Ordering::Relaxed))
            .field(
                "published",
                &self.publisher.published.load(Ordering::Relaxed),
            )
            .field("consumed", &self.consumed.0.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Commands [`Batch`] collects before submitting them with one CMD_SYNC.
pub const BATCH_CAPACITY: usize = 31;

impl<R: CmdqRegisters, M: QueueMemory<2>> CommandQueue<R, M> {
    /// A queue over the ring `mem`, driven through `regs`, waiting at most `budget` polls
    /// without progress ([`DEFAULT_POLL_BUDGET`] on hardware).
    ///
    /// The queue must be empty (SMMU_CMDQ_PROD = SMMU_CMDQ_CONS, as bring-up leaves it before
    /// setting CR0.CMDQEN) and no other `CommandQueue` may use it.
    pub fn new(regs: R, mem: M, budget: u32) -> Result<Self, CmdqError> {
        let log2 = mem.log2_entries();
        if log2 == 0 || log2 > MAX_LOG2_ENTRIES {
            return Err(CmdqError::BadQueueSize(log2));
        }
        let entries = 1usize << log2;
        let mut ready = Vec::new();
        ready
            .try_reserve_exact(entries)
            .map_err(|_| CmdqError::OutOfMemory)?;
        // 0 is no batch's end at any position (see the protocol notes).
        ready.extend((0..entries).map(|_| AtomicU64::new(0)));
        let start = u64::from(regs.read_cons() & ((2 << log2) - 1));
        Ok(Self {
            regs,
            mem,
            log2,
            budget: budget.max(1),
            reserved: Padded(AtomicU64::new(start)),
            publisher: Padded(Publisher {
                lock: CombiningLock::new(),
                published: AtomicU64::new(start),
            }),
            consumed: Padded(AtomicU64::new(start)),
            ready: ready.into_boxed_slice(),
            recovering: AtomicBool::new(false),
            errors: core::array::from_fn(|_| AtomicU64::new(0)),
            error_count: AtomicU64::new(0),
            unclaimed: AtomicU64::new(0),
        })
    }

    /// A queue with the default poll budget.
    pub fn with_default_budget(regs: R, mem: M) -> Result<Self, CmdqError> {
        Self::new(regs, mem, DEFAULT_POLL_BUDGET)
    }

    /// Changes how many polls without progress a wait gets.
    pub fn set_poll_budget(&mut self, budget: u32) {
        self.budget = budget.max(1);
    }

    /// Entries in the ring.
    pub fn capacity(&self) -> usize {
        1 << self.log2
    }

    /// log2 of the entries, for SMMU_CMDQ_BASE.LOG2SIZE.
    pub fn log2_entries(&self) -> u8 {
        self.log2
    }

    /// The registers (for bring-up and tests).
    pub fn registers(&self) -> &R {
        &self.regs
    }

    fn wrap_mask(&self) -> u32 {
        (2u32 << self.log2) - 1
    }

    fn slot(&self, seq: u64) -> u32 {
        (seq & ((1 << self.log2) - 1)) as u32
    }

    fn prod_value(&self, seq: u64) -> u32 {
        QUEUE_PROD::WR.val(seq as u32 & self.wrap_mask()).value
    }

    /// Submits `cmds` without waiting for them. Errors they cause are recovered from (by
    /// whoever waits next) but reported to nobody; use [`submit_and_sync`](Self::submit_and_sync)
    /// to learn of them.
    pub fn submit(&self, cmds: &[RawCommand]) -> Result<(), CmdqError> {
        if cmds.is_empty() {
            return Ok(());
        }
        self.enqueue(cmds, false).map(|_| ())
    }

    /// Submits `cmds` followed by a CMD_SYNC and waits until the SMMU has completed them all.
    /// A command the SMMU refused is reported as [`CmdqError::Command`] (the first, if several),
    /// after the rest of the submission has completed.
    pub fn submit_and_sync(&self, cmds: &[RawCommand]) -> Result<(), CmdqError> {
        let (start, end) = self.enqueue(cmds, true)?;
        self.wait_consumed(end, "CMD_SYNC completion")?;
        self.claim_error(start, end, cmds)
    }

    /// A CMD_SYNC on its own: waits for every command submitted before it.
    pub fn sync(&self) -> Result<(), CmdqError> {
        self.submit_and_sync(&[])
    }

    /// Encodes and submits one command, with a CMD_SYNC, and waits for it.
    pub fn issue(&self, cmd: &Command) -> Result<(), CmdqError> {
        self.submit_and_sync(&[cmd.encode()?])
    }

    /// A batch: commands pushed into it are submitted together, each group of up to
    /// [`BATCH_CAPACITY`] with one CMD_SYNC.
    pub fn batch(&self) -> Batch<'_, R, M> {
        let limit = BATCH_CAPACITY.min(self.capacity() - 1);
        Batch {
            queue: self,
            cmds: [[0; 2]; BATCH_CAPACITY],
            len: 0,
            limit,
        }
    }

    /// Reserves, writes, marks ready and publishes `cmds` (+ a CMD_SYNC); returns the positions
    /// used.
    fn enqueue(&self, cmds: &[RawCommand], sync: bool) -> Result<(u64, u64), CmdqError> {
        let n = cmds.len() + usize::from(sync);
        if n > self.capacity() {
            return Err(CmdqError::BatchTooLarge {
                entries: n,
                capacity: self.capacity(),
            });
        }
        let start = self.reserve(n as u64)?;
        // Nothing from here on can fail: every reservation is marked ready (no hole can stop
        // the queue).
        self.fill(start, cmds, sync);
        let end = start + n as u64;
        self.mark_ready(start, end);
        self.publish();
        Ok((start, end))
    }

    /// Writes `cmds` (+ a CMD_SYNC) into the reservation that starts at `start`.
    fn fill(&self, start: u64, cmds: &[RawCommand], sync: bool) {
        for (i, cmd) in cmds.iter().enumerate() {
            // SAFETY: the slot is inside our reservation: no other producer writes it and the
            // SMMU has consumed its previous command (I1); the SMMU does not read it before
            // PROD covers it, which needs our ready mark, stored after this.
            unsafe { self.mem.write(self.slot(start + i as u64), *cmd) };
        }
        if sync {
            // SAFETY: as above.
            unsafe {
                self.mem
                    .write(self.slot(start + cmds.len() as u64), CMD_SYNC)
            };
        }
    }

    /// Says that the batch `start..end` is written.
    fn mark_ready(&self, start: u64, end: u64) {
        // Release: our entry stores happen before the publisher's acquire of the mark.
        self.ready[self.slot(start) as usize].store(end, Ordering::Release);
    }

    /// The end of the batch that starts at `t`, if it is written.
    fn ready_end(&self, t: u64) -> Option<u64> {
        // Acquire: pairs with `mark_ready`; the batch's entries happen before our PROD write.
        let v = self.ready[self.slot(t) as usize].load(Ordering::Acquire);
        (v > t && v - t <= self.capacity() as u64).then_some(v)
    }

    fn reserve(&self, n: u64) -> Result<u64, CmdqError> {
        let capacity = self.capacity() as u64;
        let mut stalled = 0u32;
        let mut backoff = Backoff::new();
        loop {
            let start = self.reserved.0.load(Ordering::Relaxed);
            // Acquire: the SMMU's reads of the slots below `cons` happen before our writes.
            let cons = self.consumed.0.load(Ordering::Acquire);
            if start + n <= cons + capacity {
                // Relaxed: arbitration only (see the protocol notes).
                if self
                    .reserved
                    .0
                    .compare_exchange_weak(start, start + n, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(start);
                }
                continue;
            }
            // Full: wait for the SMMU to consume, recovering it if it stopped on an error.
            // `start` was loaded from `reserved`, which only grows: a lower bound of it.
            if self.refresh_consumed(cons, start)? == cons {
                self.recover_if_stopped()?;
                stalled += 1;
                if stalled >= self.budget {
                    return Err(CmdqError::Timeout(Timeout {
                        waiting_for: "command queue space",
                    }));
                }
                backoff.pause();
            } else {
                stalled = 0;
                backoff.reset();
            }
        }
    }

    /// Publishes every ready batch from `published` on, or hands that to the current holder of
    /// the publisher lock (see the protocol notes). Never waits.
    fn publish(&self) {
        // Our ready mark, stored before, reaches the pass that serves this request; a pass
        // starts after the previous one's `published` and PROD write.
        self.publisher.lock.run(false, |_| {
            let from = self.publisher.published.load(Ordering::Relaxed);
            let mut tail = from;
            while let Some(end) = self.ready_end(tail) {
                tail = end;
            }
            if tail != from {
                // One PROD write for every batch found ready; it orders their entries (ours by
                // program order, the others' through the acquired marks) before it.
                self.regs.write_prod(self.prod_value(tail));
                self.publisher.published.store(tail, Ordering::Relaxed);
            }
        });
    }

    /// Reads CONS and advances `consumed` from `seen`, a value loaded from it (acquire);
    /// returns a lower bound of CONS as a position. `below_reserved` is a position known not
    /// to exceed `reserved` (the caller's own reservation end, or a value loaded from it):
    /// a CONS up to there needs no look at `reserved`, the line every reservation writes.
    fn refresh_consumed(&self, seen: u64, below_reserved: u64) -> Result<u64, CmdqError> {
        let cons = self.regs.read_cons();
        let delta = cons.wrapping_sub(seen as u32) & self.wrap_mask();
        if delta == 0 {
            return Ok(seen);
        }
        let fresh = seen + u64::from(delta);
        if fresh > below_reserved && fresh > self.reserved.0.load(Ordering::Acquire) {
            // Only possible if CONS is not what the protocol says (rebuilt values never exceed
            // the true CONS, which never exceeds PROD).
            return Err(CmdqError::ConsOutOfRange { cons });
        }
        match self
            .consumed
            .0
            .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(fresh),
            // Someone stored a verified newer value meanwhile: use it.
            Err(now) => Ok(now),
        }
    }

    /// Waits until `consumed` reaches `target`, a position this caller reserved up to.
    fn wait_consumed(&self, target: u64, waiting_for: &'static str) -> Result<(), CmdqError> {
        let mut last = self.consumed.0.load(Ordering::Acquire);
        let mut stalled = 0u32;
        let mut until_check = 0u32;
        let mut backoff = Backoff::new();
        loop {
            // Memory first: another waiter that read CONS may have seen ours complete already
            // (its batch came later, or it polled first), and then no register read is needed.
            // Acquire: pairs with the CAS that stored it, which carries the SMMU's progress.
            let seen = self.consumed.0.load(Ordering::Acquire);
            if seen >= target {
                return Ok(());
            }
            let now = self.refresh_consumed(seen, target)?;
            if now >= target {
                return Ok(());
            }
            if now == last {
                // No progress: the SMMU may have stopped on a command error. Looked at on the
                // first stalled poll and every `ERROR_CHECK_INTERVAL`-th after it: GERROR and
                // GERRORN are two more register reads, which would triple a poll's MMIO.
                if until_check == 0 {
                    self.recover_if_stopped()?;
                    until_check = ERROR_CHECK_INTERVAL;
                }
                until_check -= 1;
                stalled += 1;
                if stalled >= self.budget {
                    return Err(CmdqError::Timeout(Timeout { waiting_for }));
                }
                // Backed off: every CPU waiting for a sync reads CONS, and the producer they
                // wait for needs the same path for its PROD write.
                backoff.pause();
            } else {
                last = now;
                stalled = 0;
                backoff.reset();
            }
        }
    }

    fn cmdq_error_active(&self) -> bool {
        let mask = GERROR::CMDQ_ERR::SET.value;
        (self.regs.read_gerror() ^ self.regs.read_gerrorn()) & mask != 0
    }

    /// If the SMMU stopped on a command error, recovers it (unless another CPU is doing so).
    fn recover_if_stopped(&self) -> Result<(), CmdqError> {
        if !self.cmdq_error_active() {
            return Ok(());
        }
        if self
            .recovering
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(());
        }
        let result = self.recover();
        self.recovering.store(false, Ordering::Release);
        result
    }

    fn recover(&self) -> Result<(), CmdqError> {
        let mask = GERROR::CMDQ_ERR::SET.value;
        let gerror = self.regs.read_gerror();
        let gerrorn = self.regs.read_gerrorn();
        if (gerror ^ gerrorn) & mask == 0 {
            // Recovered by the previous holder of the flag.
            return Ok(());
        }
        let cons = self.regs.read_cons();
        let code = CommandErrorCode::from_cons(cons);
        // The SMMU is stopped at the failed command: CONS is exact relative to `consumed`.
        let base = self.consumed.0.load(Ordering::Acquire);
        let seq = base + u64::from(cons.wrapping_sub(base as u32) & self.wrap_mask());
        if seq >= self.reserved.0.load(Ordering::Acquire) {
            return Err(CmdqError::ConsOutOfRange { cons });
        }
        log::warn!("SMMU command queue error: {code} at command {seq}");
        match code {
            CommandErrorCode::None | CommandErrorCode::AtcInvalidationSync => {}
            CommandErrorCode::Illegal | CommandErrorCode::Abort | CommandErrorCode::Reserved(_) => {
                // SAFETY: the slot is between CONS and PROD, owned by the SMMU, which is stopped
                // on it until the acknowledgement below; the spec lets software rewrite it.
                unsafe { self.mem.write(self.slot(seq), CMD_SYNC) };
            }
        }
        if code != CommandErrorCode::None {
            let k = self.error_count.fetch_add(1, Ordering::Relaxed) as usize % ERROR_SLOTS;
            self.unclaimed.fetch_add(1, Ordering::Relaxed);
            // Release: visible to the submitter that sees its CMD_SYNC complete, which can only
            // happen after the acknowledgement below.
            self.errors[k].store(seq << 8 | u64::from(code.encoding()), Ordering::Release);
        }
        // CMDQ_ERR cannot toggle again before this acknowledgement (the SMMU is stopped), so
        // the GERROR bit the acknowledgement copies is the one read above.
        self.regs.acknowledge_gerror(mask);
        Ok(())
    }

    /// Claims the error records of positions `start..end`; reports the first.
    fn claim_error(&self, start: u64, end: u64, cmds: &[RawCommand]) -> Result<(), CmdqError> {
        // The common case, no error anywhere: no scan.
        if self.unclaimed.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut first: Option<(u64, u8)> = None;
        for slot in &self.errors {
            // Acquire: pairs with the recoverer's release store.
            let record = slot.load(Ordering::Acquire);
            let seq = record >> 8;
            if record == 0 || seq < start || seq >= end {
                continue;
            }
            if slot
                .compare_exchange(record, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.unclaimed.fetch_sub(1, Ordering::Relaxed);
                if first.is_none_or(|(s, _)| seq < s) {
                    first = Some((seq, record as u8));
                }
            }
        }
        let Some((seq, code)) = first else {
            return Ok(());
        };
        let position = (seq - start) as usize;
        Err(CmdqError::Command(CommandFailure {
            position,
            queue_index: self.slot(seq),
            code: CommandErrorCode::from_encoding(u32::from(code)),
            command: cmds.get(position).copied().unwrap_or(CMD_SYNC),
        }))
    }
}

/// Commands gathered to share one CMD_SYNC; see [`CommandQueue::batch`].
#[derive(Debug)]
pub struct Batch<'q, R, M> {
    queue: &'q CommandQueue<R, M>,
    cmds: [RawCommand; BATCH_CAPACITY],
    len: usize,
    limit: usize,
}

impl<R: CmdqRegisters, M: QueueMemory<2>> Batch<'_, R, M> {
    /// Adds `cmd`; when the batch is full, submits it with a CMD_SYNC and waits first.
    pub fn push(&mut self, cmd: Command) -> Result<(), CmdqError> {
        let raw = cmd.encode()?;
        if self.len == self.limit {
            self.flush()?;
        }
        self.cmds[self.len] = raw;
        self.len += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), CmdqError> {
        let n = self.len;
        self.len = 0;
        self.queue.submit_and_sync(&self.cmds[..n])
    }

    /// Submits what is left with a CMD_SYNC and waits: every pushed command has completed.
    pub fn finish(mut self) -> Result<(), CmdqError> {
        self.flush()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_model;
