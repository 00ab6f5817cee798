//! The invalidation queue (VT-d spec 6.5.2): a ring of descriptors in memory that the unit
//! consumes from its head register (IQH) up to the tail register (IQT) software writes.
//!
//! Several CPUs submit without a lock: each reserves consecutive slots with an atomic counter,
//! writes its descriptors and a wait descriptor that writes a status word when the unit reaches
//! it, and the tail is published in reservation order by whichever producer holds a try-lock,
//! on behalf of everyone whose slots are ready. Completion is a poll of the batch's status word.
//! Queue errors (FSTS.IQE/ITE/ICE) are detected while polling, turned into typed errors for the
//! batches they hit, and the queue is restarted. The registers are reached through the small
//! [`QiRegisters`] trait, so the protocol runs on the host against a simulated unit and under
//! loom (`RUSTFLAGS="--cfg loom"`).

use core::fmt;

use iommu::addr::PhysAddr;

use crate::caps::ExtendedCapability;
use crate::descriptor::{Descriptor, DescriptorError, Wait};
use crate::registers::{RegisterBlock, FSTS, IQERCD, IQH};
use crate::root_table::SourceId;
use iommu::sync::{
    fence, spin_loop, AtomicBool, AtomicU32, AtomicU64, CachePadded, CombiningLock, Ordering,
};

mod memory;

#[cfg(not(loom))]
pub use memory::QueueFrames;
pub use memory::QueueMemory;

/// FSTS bits the queue handles (11.4.9.1), all RW1C.
const FSTS_IQE: u32 = FSTS::IQE::SET.value;
const FSTS_ICE: u32 = FSTS::ICE::SET.value;
const FSTS_ITE: u32 = FSTS::ITE::SET.value;
/// IQH/IQT bits 18:4 hold the head/tail as a byte offset into the queue.
const QUEUE_OFFSET_MASK: u64 = IQH::QH::SET.mask();

/// The width of every descriptor in a queue (IQA.DW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorWidth {
    /// 128-bit descriptors: legacy units.
    Bits128,
    /// 256-bit descriptors: needed in scalable mode and for the PASID-granular types.
    Bits256,
}

impl DescriptorWidth {
    /// 256-bit whenever the unit can do scalable mode (IQA.DW is honoured only with ECAP.SMTS,
    /// and scalable-mode descriptors need it); 128-bit otherwise.
    pub const fn for_unit(ecap: ExtendedCapability) -> Self {
        if ecap.smts() {
            Self::Bits256
        } else {
            Self::Bits128
        }
    }

    /// Quadwords per descriptor.
    pub const fn words(self) -> usize {
        match self {
            Self::Bits128 => 2,
            Self::Bits256 => 4,
        }
    }

    /// log2 of the descriptor size in bytes: how far IQH/IQT values are shifted.
    const fn shift(self) -> u32 {
        match self {
            Self::Bits128 => 4,
            Self::Bits256 => 5,
        }
    }
}

/// The queue size: 2^QS pages (IQA.QS, 0..=7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSize(u8);

impl QueueSize {
    /// One page: 256 descriptors of 128 bits or 128 of 256 bits.
    pub const ONE_PAGE: Self = Self(0);

    pub const fn new(qs: u8) -> Option<Self> {
        if qs <= 7 {
            Some(Self(qs))
        } else {
            None
        }
    }

    pub const fn qs(self) -> u8 {
        self.0
    }

    pub const fn bytes(self) -> usize {
        4096 << self.0
    }

    /// Descriptors the queue holds at this width.
    pub const fn entries(self, width: DescriptorWidth) -> usize {
        self.bytes() >> width.shift()
    }
}

/// The registers the queue uses, as raw values, so the protocol can run against a simulation.
///
/// Implementations do each call as one access in program order. [`write_tail`] is called after
/// a `SeqCst` fence that makes the descriptors visible, and must not be reordered before it
/// (volatile MMIO writes to uncached memory are not, on x86). [`read_head`] must not let later
/// writes of queue memory move before it (an uncached x86 load does not).
///
/// [`write_tail`]: QiRegisters::write_tail
/// [`read_head`]: QiRegisters::read_head
pub trait QiRegisters {
    /// IQH as read: bits 18:4 are the byte offset of the next descriptor the unit processes.
    fn read_head(&self) -> u64;
    /// Writes IQT: bits 18:4 are the byte offset one past the last valid descriptor.
    fn write_tail(&self, value: u64);
    /// FSTS as read.
    fn read_fault_status(&self) -> u32;
    /// Writes `bits` to FSTS: each set bit clears that RW1C status bit, nothing else changes.
    fn clear_fault_status(&self, bits: u32);
    /// IQERCD as read.
    fn read_error_record(&self) -> u64;
}

impl<T: QiRegisters + ?Sized> QiRegisters for &T {
    fn read_head(&self) -> u64 {
        (**self).read_head()
    }
    fn write_tail(&self, value: u64) {
        (**self).write_tail(value)
    }
    fn read_fault_status(&self) -> u32 {
        (**self).read_fault_status()
    }
    fn clear_fault_status(&self, bits: u32) {
        (**self).clear_fault_status(bits)
    }
    fn read_error_record(&self) -> u64 {
        (**self).read_error_record()
    }
}

/// The queue registers of a real unit: IQH, IQT, FSTS and IQERCD of its register block, which
/// several CPUs may use at once.
pub struct QiMmio<'a> {
    block: &'a RegisterBlock,
}

impl<'a> QiMmio<'a> {
    pub fn new(block: &'a RegisterBlock) -> Self {
        Self { block }
    }
}

// SAFETY: every access is one volatile read or write of a 32- or 64-bit register, which the
// hardware serialises; the queue never does read-modify-write on these registers: IQT writes
// are serialised by the queue's publisher lock and FSTS writes are write-1-to-clear of the
// queue's own bits, which cannot undo another CPU's write of other bits.
unsafe impl Sync for QiMmio<'_> {}
// SAFETY: as above; the reference may be used from any CPU.
unsafe impl Send for QiMmio<'_> {}

impl QiRegisters for QiMmio<'_> {
    fn read_head(&self) -> u64 {
        use tock_registers::interfaces::Readable;
        self.block.iqh.get()
    }
    fn write_tail(&self, value: u64) {
        use tock_registers::interfaces::Writeable;
        self.block.iqt.set(value)
    }
    fn read_fault_status(&self) -> u32 {
        use tock_registers::interfaces::Readable;
        self.block.fsts.get()
    }
    fn clear_fault_status(&self, bits: u32) {
        use tock_registers::interfaces::Writeable;
        self.block.fsts.set(bits)
    }
    fn read_error_record(&self) -> u64 {
        use tock_registers::interfaces::Readable;
        self.block.iqercd.get()
    }
}

/// Why the unit stopped the queue with IQE (IQERCD.IQEI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueErrorInfo {
    /// 0: no detail recorded (QEMU 10.0 does not implement IQERCD).
    NotAvailable,
    /// 1: the tail pointer was beyond the queue.
    InvalidTail,
    /// 2: fetching the descriptor at the head failed.
    FetchFailed,
    /// 3: the descriptor type is invalid or not supported.
    InvalidType,
    /// 4: a reserved field of the descriptor is set.
    ReservedField,
    /// 5: the descriptor does not fit the queue's width.
    InvalidWidth,
    /// 6: the tail is not 256-bit aligned in a 256-bit queue.
    TailNotAligned,
    /// 7: the descriptor is not valid in the current translation mode (RTADDR.TTM).
    InvalidForMode,
    /// Any other value.
    Other(u8),
}

impl QueueErrorInfo {
    pub const fn from_iqei(iqei: u8) -> Self {
        match iqei {
            0 => Self::NotAvailable,
            1 => Self::InvalidTail,
            2 => Self::FetchFailed,
            3 => Self::InvalidType,
            4 => Self::ReservedField,
            5 => Self::InvalidWidth,
            6 => Self::TailNotAligned,
            7 => Self::InvalidForMode,
            n => Self::Other(n),
        }
    }

    const fn iqei(self) -> u8 {
        match self {
            Self::NotAvailable => 0,
            Self::InvalidTail => 1,
            Self::FetchFailed => 2,
            Self::InvalidType => 3,
            Self::ReservedField => 4,
            Self::InvalidWidth => 5,
            Self::TailNotAligned => 6,
            Self::InvalidForMode => 7,
            Self::Other(n) => n,
        }
    }

    /// Whether the error is about the descriptor at the head (rather than the tail register).
    const fn blames_head(self) -> bool {
        !matches!(self, Self::InvalidTail | Self::TailNotAligned)
    }
}

/// Errors of the invalidation queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QiError {
    /// A batch (with its wait descriptor) must leave one slot free: at most `capacity`
    /// descriptors fit.
    BatchTooLarge { descriptors: usize, capacity: usize },
    /// A PASID-granular descriptor was submitted to a 128-bit queue.
    NeedsWideDescriptors { kind: &'static str },
    /// A descriptor could not be encoded.
    Descriptor(DescriptorError),
    /// The unit did not free slots within the poll budget.
    QueueFull,
    /// The batch whose wait descriptor is at `position` did not complete within the poll budget
    /// (it stays queued; a later completion is harmless).
    Timeout { position: u64 },
    /// The unit rejected descriptor `index` of the batch (the wait descriptor is index
    /// `descriptors.len()`): it was skipped and the rest of the batch ran.
    InvalidDescriptor { index: usize, info: QueueErrorInfo },
    /// A device-TLB invalidation of `source` timed out (FSTS.ITE): the unit dropped the batch's
    /// wait descriptor; resubmit.
    DeviceTlbTimeout { source: SourceId },
    /// The memory given to the queue is too small or misaligned (`what` says which part).
    BadMemory { what: &'static str },
    /// The frame allocator had no memory for the queue.
    OutOfMemory,
}

impl From<DescriptorError> for QiError {
    fn from(e: DescriptorError) -> Self {
        Self::Descriptor(e)
    }
}

impl fmt::Display for QiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BatchTooLarge {
                descriptors,
                capacity,
            } => write!(
                f,
                "VT-d QI: batch of {descriptors} descriptors, at most {capacity} fit"
            ),
            Self::NeedsWideDescriptors { kind } => {
                write!(f, "VT-d QI: {kind} descriptors need a 256-bit queue")
            }
            Self::Descriptor(e) => write!(f, "VT-d QI: {e}"),
            Self::QueueFull => write!(f, "VT-d QI: queue full, the unit did not advance its head"),
            Self::Timeout { position } => {
                write!(
                    f,
                    "VT-d QI: batch ending at {position} not completed in time"
                )
            }
            Self::InvalidDescriptor { index, info } => write!(
                f,
                "VT-d QI: the unit rejected descriptor {index} of the batch ({info:?})"
            ),
            Self::DeviceTlbTimeout { source } => {
                write!(f, "VT-d QI: device-TLB invalidation of {source} timed out")
            }
            Self::BadMemory { what } => write!(f, "VT-d QI: unusable queue memory: {what}"),
            Self::OutOfMemory => write!(f, "VT-d QI: no memory for the queue"),
        }
    }
}

impl core::error::Error for QiError {}

/// How a queue is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub width: DescriptorWidth,
    pub size: QueueSize,
    /// Polls before a wait for completion or for free slots gives up.
    pub poll_budget: u32,
    /// Every this many polls, FSTS is read to catch queue errors (each read is an MMIO access,
    /// the status-word polls in between are plain memory reads).
    pub fault_check_interval: u32,
}

impl QueueConfig {
    /// The width the unit needs, `size`, the core's default poll budget, FSTS every 64 polls.
    pub const fn for_unit(ecap: ExtendedCapability, size: QueueSize) -> Self {
        Self {
            width: DescriptorWidth::for_unit(ecap),
            size,
            poll_budget: iommu::poll::DEFAULT_POLL_BUDGET,
            fault_check_interval: 64,
        }
    }
}

/// Descriptors of one batch encoded once, while it is checked, and written from that copy
/// (typical batches are a few descriptors; larger ones encode the rest again when writing).
const ENCODED: usize = 16;

/// A submitted batch, to wait for with [`InvalidationQueue::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a batch is only known complete once waited for"]
pub struct Ticket {
    /// Position of the batch's first descriptor.
    start: u64,
    /// Position of its wait descriptor.
    wait: u64,
    /// The error epoch when it was submitted: no change, no error to look for.
    epoch: u64,
}

/// What [`InvalidationQueue::recover`] found and handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovered {
    /// IQE: the descriptor at `position` was rejected and replaced by a harmless wait.
    pub invalid_descriptor: Option<(u64, QueueErrorInfo)>,
    /// ITE: a device-TLB invalidation of this device timed out; waits in flight were dropped.
    pub device_tlb_timeout: Option<SourceId>,
    /// ICE: this device answered a device-TLB invalidation wrongly. Not attributed to a batch:
    /// the invalidation itself completed.
    pub completion_error: Option<SourceId>,
}

/// Mark kinds in the per-slot `marks` array (bits 23:16 of a mark).
const MARK_INVALID: u64 = 1;

/// The invalidation queue of one unit.
///
/// # Protocol and why it is correct
///
/// Positions count descriptors since the queue started (u64, never wrapping in practice); slot
/// = position mod N. Four pieces of shared state:
///
/// - `reserved`: next free position. A producer claims `[r, r + k)` with a compare-exchange
///   only if `r + k ≤ head + N − 1`, where `head` is a lower bound of the unit's head (see
///   `head_position`; kept in `head_seen` and refreshed from IQH only when the ring looks
///   full by it, see `head_bound`); so a slot is rewritten only after the unit has
///   consumed its previous use, and the ring never looks empty when full. The counter only
///   partitions slots, so it is `Relaxed`; what orders slot reuse after the unit's read is the
///   head register read, which no later write may pass (trait contract).
/// - `ready[slot]`: a producer that filled `[r, r + k)` stores `r + k` into `ready[r mod N]`
///   with `Release`, publishing its descriptor writes to whoever loads it with `Acquire`.
///   A value `v` at the slot of `t` means "the batch starting at `t` is ready" iff
///   `t < v < t + N`; values left from earlier laps are ≤ `t`.
/// - `published`: the tail given to the unit. Only the holder of the publisher lock changes
///   it: it follows the ready marks from `published` as far as they go, issues a `SeqCst`
///   fence (the descriptors, acquired through the marks, become visible before the doorbell),
///   writes IQT and stores `published` (`Release`, for the head estimate of producers). IQT
///   only ever moves forward, in reservation order, because only the holder writes it and each
///   holder starts from its predecessor's `published` (lock `Release` → `Acquire`).
/// - `publisher`: a [`CombiningLock`]. A producer that finds it free runs a pass (the scan
///   and IQT write above); one that finds it held hands the holder a request and leaves (no
///   one waits for another CPU), and the holder runs another pass for it, which sees the
///   requester's ready mark (stored before its request; see the lock's notes). Passes are
///   ordered one after another and every request is followed by one. So every ready batch
///   whose predecessors are ready is published without waiting; a batch behind one not yet
///   ready is published by that one's producer. Error recovery asks for a tail write the same
///   way, with the lock's flag (write IQT even if the tail did not move), so it never waits
///   either.
///
/// Completion: the batch's last descriptor is a wait that writes a token (lap number + 1) into
/// the status word of its slot; the waiter polls that word with `Acquire` (the unit's write
/// comes after it executed every earlier descriptor). Tokens grow by one per lap, so a stale
/// earlier-lap value never passes for completion, while a later lap's token (the slot reused
/// after our wait ran, before a slow waiter looked) does.
///
/// Errors: a waiter that sees FSTS.IQE takes the `recovering` flag, marks the position at the
/// head as invalid (`marks`, then `error_epoch` bumped, both `Release`, before clearing IQE, so
/// any waiter that sees a later completion sees the mark), replaces the descriptor by a wait
/// writing a sink word, clears IQE and has the tail re-written through the publisher lock (QEMU
/// resumes only on a tail write). ITE records a window of dropped waits the same way.
pub struct InvalidationQueue<'m, R> {
    regs: R,
    mem: QueueMemory<'m>,
    width: DescriptorWidth,
    size: QueueSize,
    /// N, the number of slots.
    entries: u64,
    poll_budget: u32,
    fault_check_interval: u32,
    /// A wait writing to the sink word: what a rejected descriptor is replaced with.
    sink: [u64; 4],
    /// Next unreserved position; orders nothing (see the protocol above). On lines of its own,
    /// as are the publisher's and the head bound: every submission writes them, and their
    /// stores must not invalidate the read-mostly fields above, which every poll reads.
    reserved: CachePadded<AtomicU64>,
    /// The publisher lock and the tail it writes (see [`Publisher`]).
    publisher: CachePadded<Publisher>,
    /// A lower bound of the unit's head as a position, from the last IQH read (see
    /// `head_bound`): reservations compare against it and read IQH only when it says full.
    /// `AcqRel` max / `Acquire` loads: it carries the head read's "the unit has read these
    /// slots" to the producer that reuses them.
    head_seen: CachePadded<AtomicU64>,
    /// One error recoverer at a time: `Acquire`/`Release` as a lock around recovery.
    recovering: AtomicBool,
    /// Bumped (`Release`) after marks or the ITE window are written, loaded (`Acquire`) by
    /// waiters before they read them.
    error_epoch: AtomicU64,
    /// Wait positions in `[from, to)` dropped by an ITE, and the device; written before the
    /// epoch bump that publishes them, so `Relaxed`.
    ite_from: AtomicU64,
    ite_to: AtomicU64,
    ite_source: AtomicU32,
}

/// The publisher lock and what only its holder writes, on one line: a pass takes the lock,
/// reads and writes `published` and `batches` and leaves, moving one line between CPUs.
struct Publisher {
    /// The lock; its flag is the kick (write IQT even if the tail did not move). See the
    /// protocol at [`InvalidationQueue`] for what it orders.
    lock: CombiningLock,
    /// Tail written to the unit; `Release` store by the holder, `Acquire` loads by producers
    /// estimating the head, so the estimate never runs ahead of what the unit was given.
    published: AtomicU64,
    /// Statistics: batches published (`Relaxed`, read after the fact). Counted by the pass
    /// that follows their ready marks, on the line it holds anyway, rather than by every
    /// submission on a line of its own that both producers would write.
    batches: AtomicU64,
}

impl<'m, R: QiRegisters> InvalidationQueue<'m, R> {
    /// A queue in `memory`, used through `regs`.
    ///
    /// The unit's queue must be off with IQT = 0 (so IQH = 0): program IQA with
    /// [`iqa_value`](Self::iqa_value), then set GCMD.QIE and wait for GSTS.QIES.
    pub fn new(regs: R, memory: QueueMemory<'m>, config: QueueConfig) -> Result<Self, QiError> {
        let entries = config.size.entries(config.width);
        Self::with_entries(regs, memory, config, entries)
    }

    /// As `new` with an arbitrary slot count: model tests use tiny rings.
    fn with_entries(
        regs: R,
        memory: QueueMemory<'m>,
        config: QueueConfig,
        entries: usize,
    ) -> Result<Self, QiError> {
        memory.check(entries, config.width)?;
        if entries < 2 {
            return Err(QiError::BadMemory {
                what: "a queue needs two slots",
            });
        }
        let sink_addr = PhysAddr::new(memory.status_phys.as_u64() + 4 * entries as u64);
        let sink = Wait::status_write(sink_addr, 0)
            .and_then(|w| Descriptor::Wait(w).encode())
            .map_err(QiError::Descriptor)?;
        Ok(Self {
            regs,
            mem: memory,
            width: config.width,
            size: config.size,
            entries: entries as u64,
            poll_budget: config.poll_budget,
            fault_check_interval: config.fault_check_interval.max(1),
            sink,
            reserved: CachePadded(AtomicU64::new(0)),
            publisher: CachePadded(Publisher {
                lock: CombiningLock::new(),
                published: AtomicU64::new(0),
                batches: AtomicU64::new(0),
            }),
            head_seen: CachePadded(AtomicU64::new(0)),
            recovering: AtomicBool::new(false),
            error_epoch: AtomicU64::new(0),
            ite_from: AtomicU64::new(0),
            ite_to: AtomicU64::new(0),
            ite_source: AtomicU32::new(0),
        })
    }

    /// The value for IQA: ring base, DW and QS (11.4.11.3).
    pub fn iqa_value(&self) -> u64 {
        let dw = match self.width {
            DescriptorWidth::Bits128 => 0,
            DescriptorWidth::Bits256 => 1 << 11,
        };
        self.mem.descriptors_phys.as_u64() | dw | u64::from(self.size.qs())
    }

    pub fn width(&self) -> DescriptorWidth {
        self.width
    }

    /// The most descriptors one batch may hold (its wait descriptor and one free slot aside).
    pub fn batch_capacity(&self) -> usize {
        (self.entries - 2) as usize
    }

    /// Descriptors (waits included) and batches submitted so far. Descriptors are counted when
    /// reserved, so those of submissions in progress count too; batches when published, so a
    /// batch counts once its submission returned, or, if another CPU's pass publishes it for
    /// it, once that pass ran.
    pub fn submitted(&self) -> (u64, u64) {
        (
            self.reserved.load(Ordering::Relaxed),
            self.publisher.batches.load(Ordering::Relaxed),
        )
    }

    /// Queues `descriptors` followed by one wait descriptor that completes the batch, and
    /// publishes them to the unit. Returns without waiting for completion.
    pub fn submit<I>(&self, descriptors: I) -> Result<Ticket, QiError>
    where
        I: IntoIterator<Item = Descriptor>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let iter = descriptors.into_iter();
        let count = iter.len();
        if count > self.batch_capacity() {
            return Err(QiError::BatchTooLarge {
                descriptors: count,
                capacity: self.batch_capacity(),
            });
        }
        // Checked (and, for the first `ENCODED`, kept encoded) before any slot is taken, so a
        // bad descriptor changes nothing.
        let mut encoded = [[0u64; 4]; ENCODED];
        for (i, d) in iter.clone().enumerate() {
            if d.needs_256_bit() && self.width == DescriptorWidth::Bits128 {
                return Err(QiError::NeedsWideDescriptors { kind: d.kind() });
            }
            let words = d.encode()?;
            if let Some(slot) = encoded.get_mut(i) {
                *slot = words;
            }
        }
        let epoch = self.error_epoch.load(Ordering::Acquire);
        let total = count as u64 + 1;
        let start = self.reserve(total)?;
        let wait = start + count as u64;
        // The slots are ours now and must all be filled, whatever the iterator does: anything
        // missing or unencodable beyond the kept ones becomes a harmless sink wait.
        let mut rest = iter.skip(ENCODED);
        for (i, pos) in (start..wait).enumerate() {
            let words = match encoded.get(i) {
                Some(words) => *words,
                None => match rest.next().map(|d| d.encode()) {
                    Some(Ok(w)) => w,
                    _ => self.sink,
                },
            };
            self.write_slot(pos, words);
        }
        let status_addr = PhysAddr::new(self.mem.status_phys.as_u64() + 4 * (wait % self.entries));
        let words = Wait::status_write(status_addr, self.token(wait))
            .and_then(|w| Descriptor::Wait(w).encode())
            .unwrap_or(self.sink);
        self.write_slot(wait, words);
        // Publishes the slot writes above to the publisher that acquires this mark.
        self.ready_mark(start)
            .store(start + total, Ordering::Release);
        self.publish(false);
        Ok(Ticket { start, wait, epoch })
    }

    /// Waits (bounded) until the batch completed, and reports what happened to it.
    pub fn wait(&self, ticket: Ticket) -> Result<(), QiError> {
        let token = self.token(ticket.wait);
        let status = self.status_word(ticket.wait);
        let mut seen_epoch = ticket.epoch;
        let mut polls = 0u32;
        let mut until_check = 0u32;
        loop {
            // Pairs with the unit's status write, which follows the batch's execution.
            if Self::reached(status.load(Ordering::Acquire), token) {
                return self.batch_result(ticket);
            }
            // Every `fault_check_interval` polls, from the first (a countdown: no division
            // in the loop).
            if until_check == 0 {
                self.recover();
                until_check = self.fault_check_interval;
            }
            until_check -= 1;
            let epoch = self.error_epoch.load(Ordering::Acquire);
            if epoch != seen_epoch {
                seen_epoch = epoch;
                if let Some(e) = self.wait_dropped(ticket) {
                    return Err(e);
                }
            }
            if polls >= self.poll_budget {
                return Err(QiError::Timeout {
                    position: ticket.wait,
                });
            }
            polls += 1;
            spin_loop();
        }
    }

    /// [`submit`](Self::submit) then [`wait`](Self::wait).
    pub fn submit_and_wait<I>(&self, descriptors: I) -> Result<(), QiError>
    where
        I: IntoIterator<Item = Descriptor>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let ticket = self.submit(descriptors)?;
        self.wait(ticket)
    }

    /// Handles queue errors the unit reports in FSTS (also the body of the fault interrupt's
    /// queue part): IQE (the rejected descriptor is marked for its batch, replaced by a
    /// harmless wait, and the queue restarted), ITE (waits in flight are reported dropped),
    /// ICE (cleared). Safe to call from several CPUs: one recovers, the others return at once.
    pub fn recover(&self) -> Recovered {
        let mut done = Recovered::default();
        if self.regs.read_fault_status() & (FSTS_IQE | FSTS_ITE | FSTS_ICE) == 0 {
            return done;
        }
        if self.recovering.swap(true, Ordering::Acquire) {
            return done;
        }
        let fsts = self.regs.read_fault_status();
        let record = self.regs.read_error_record();
        if fsts & FSTS_IQE != 0 {
            let info = QueueErrorInfo::from_iqei(IQERCD::IQEI.read(record) as u8);
            let head = self.stopped_head_position();
            log::warn!("VT-d QI: invalidation queue error (IQE) at position {head}: {info:?}");
            if info.blames_head() {
                let mark = self.mark_value(head, MARK_INVALID, u64::from(info.iqei()));
                self.mem.marks[self.slot(head)].store(mark, Ordering::Release);
                self.write_slot(head, self.sink);
                done.invalid_descriptor = Some((head, info));
            }
            self.error_epoch.fetch_add(1, Ordering::Release);
            // The replacement and the marks are visible before the unit resumes.
            fence(Ordering::SeqCst);
            self.regs.clear_fault_status(FSTS_IQE);
        }
        if fsts & FSTS_ITE != 0 {
            let source = SourceId::from_raw(IQERCD::ITESID.read(record) as u16);
            log::warn!("VT-d QI: device-TLB invalidation timeout (ITE) for {source:?}");
            // Waits the unit fetched (positions before its head) but had not completed were
            // dropped; those whose status is written are not affected.
            let head = self.stopped_head_position();
            self.ite_from
                .store(head.saturating_sub(self.entries - 1), Ordering::Relaxed);
            self.ite_to.store(head, Ordering::Relaxed);
            self.ite_source
                .store(u32::from(source.raw()), Ordering::Relaxed);
            self.error_epoch.fetch_add(1, Ordering::Release);
            fence(Ordering::SeqCst);
            self.regs.clear_fault_status(FSTS_ITE);
            done.device_tlb_timeout = Some(source);
        }
        if fsts & FSTS_ICE != 0 {
            let source = SourceId::from_raw(IQERCD::ICESID.read(record) as u16);
            log::warn!("VT-d QI: invalidation completion error (ICE) for {source:?}");
            done.completion_error = Some(source);
            self.regs.clear_fault_status(FSTS_ICE);
        }
        self.recovering.store(false, Ordering::Release);
        // Restart the unit: QEMU fetches again only when the tail is written.
        self.publish(true);
        done
    }

    /// Claims `total` consecutive slots, waiting (bounded) for the unit to free them.
    fn reserve(&self, total: u64) -> Result<u64, QiError> {
        let mut polls = 0u32;
        let mut until_check = 0u32;
        let mut r = self.reserved.load(Ordering::Relaxed);
        loop {
            if r + total < self.head_bound(r + total) + self.entries {
                // A failed exchange returns the counter as it found it: the next attempt starts
                // from that value rather than loading it again.
                match self.reserved.compare_exchange(
                    r,
                    r + total,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(r),
                    Err(now) => r = now,
                }
                continue;
            }
            if polls >= self.poll_budget {
                return Err(QiError::QueueFull);
            }
            // Every `fault_check_interval` polls, from the first (a countdown: no division
            // in the loop).
            if until_check == 0 {
                self.recover();
                until_check = self.fault_check_interval;
            }
            until_check -= 1;
            polls += 1;
            spin_loop();
            r = self.reserved.load(Ordering::Relaxed);
        }
    }

    /// Publishes every ready batch from `published` on (see the protocol at the type), or
    /// leaves that to the current publisher. With `kick`, IQT is written even if nothing new is
    /// ready (to restart the unit after an error).
    fn publish(&self, kick: bool) {
        // Our ready mark (or recovery's writes), made before, reaches the pass that serves this
        // request; a pass starts after the previous one's `published` and IQT write.
        self.publisher.lock.run(kick, |kick| {
            let start = self.publisher.published.load(Ordering::Relaxed);
            let mut tail = start;
            let mut batches = 0;
            while let Some(end) = self.ready_end(tail) {
                tail = end;
                batches += 1;
            }
            if batches != 0 {
                self.publisher.batches.fetch_add(batches, Ordering::Relaxed);
            }
            if tail != start || kick {
                // Descriptor writes (ours, and other producers' acquired through their marks)
                // are visible before the unit is told about them.
                fence(Ordering::SeqCst);
                self.regs
                    .write_tail((tail % self.entries) << self.width.shift());
                self.publisher.published.store(tail, Ordering::Release);
            }
        });
    }

    /// The end of the batch that starts at position `t`, if it is ready.
    fn ready_end(&self, t: u64) -> Option<u64> {
        // Acquire: the batch's descriptor writes happen before our use of them.
        let v = self.ready_mark(t).load(Ordering::Acquire);
        (v > t && v - t < self.entries).then_some(v)
    }

    /// The head of a unit stopped by an error (IQE, ITE), as a position: exact. The stopped
    /// head `h` is at most `reserved` (a rejected descriptor was reserved, an ITE head is a
    /// published tail; those reservations happen before the unit got the tail, which happens
    /// before the error status we read), and more than `reserved` − N (no reservation reaches
    /// N past a head, `reserve`, and it has not moved since it stopped): `h` is the last
    /// position up to `reserved` in its slot. ([`head_position`](Self::head_position) does
    /// only as a lower bound: its `published` may be older than the head, a lap off, which
    /// made recovery mark a rejected descriptor under the wrong position.)
    fn stopped_head_position(&self) -> u64 {
        let head =
            ((self.regs.read_head() & QUEUE_OFFSET_MASK) >> self.width.shift()) % self.entries;
        // Relaxed: the reservations up to the head happen before this load through the ready
        // marks, the tail write and the error status we read (`Acquire`).
        let top = self.reserved.load(Ordering::Relaxed);
        top.saturating_sub((top % self.entries + self.entries - head) % self.entries)
    }

    /// A lower bound of the unit's head as a position: exact while the unit's head is at or
    /// behind the `published` we read (it always is, since reservations keep the head within
    /// N − 1 of every published tail); if the head has already passed it, the estimate falls
    /// below `published`, which only makes reservations more careful.
    fn head_position(&self) -> u64 {
        let published = self.publisher.published.load(Ordering::Acquire);
        let head =
            ((self.regs.read_head() & QUEUE_OFFSET_MASK) >> self.width.shift()) % self.entries;
        let behind = (published % self.entries + self.entries - head) % self.entries;
        // Early on, a head already past a stale `published` can put the estimate below 0.
        published.saturating_sub(behind)
    }

    /// A lower bound of the unit's head good enough for a reservation ending at `end`: the
    /// bound kept from an earlier IQH read if `end` fits below it plus N − 1, otherwise a
    /// fresh [`head_position`](Self::head_position), kept for the next reservations. The
    /// head only grows, so a bound once read stays one; a submission reads IQH (an MMIO access)
    /// only when the ring looks full by what any CPU last read, not every time.
    fn head_bound(&self, end: u64) -> u64 {
        // Acquire: pairs with the max below, after the IQH read that saw the unit's progress;
        // the unit's reads of the slots below it happen before our writes to them.
        let seen = self.head_seen.load(Ordering::Acquire);
        if end < seen + self.entries {
            return seen;
        }
        let head = self.head_position();
        if head <= seen {
            // No progress (the ring is full): no store, so polling CPUs keep the line shared.
            return seen;
        }
        // AcqRel: release for the IQH read above (its "the unit has read these slots" goes to
        // whoever loads the bound); acquire for a larger bound another CPU stored meanwhile.
        self.head_seen.fetch_max(head, Ordering::AcqRel).max(head)
    }

    /// Reports an error that hit the batch: a mark on one of its descriptors (IQE).
    fn batch_result(&self, ticket: Ticket) -> Result<(), QiError> {
        if self.error_epoch.load(Ordering::Acquire) == ticket.epoch {
            return Ok(());
        }
        for pos in ticket.start..=ticket.wait {
            if let Some(info) = self.invalid_mark(pos) {
                return Err(QiError::InvalidDescriptor {
                    index: (pos - ticket.start) as usize,
                    info,
                });
            }
        }
        Ok(())
    }

    /// An error that means the batch's wait will never write its status: the wait itself was
    /// rejected (IQE) or dropped (ITE).
    fn wait_dropped(&self, ticket: Ticket) -> Option<QiError> {
        if let Some(info) = self.invalid_mark(ticket.wait) {
            return Some(QiError::InvalidDescriptor {
                index: (ticket.wait - ticket.start) as usize,
                info,
            });
        }
        let from = self.ite_from.load(Ordering::Relaxed);
        let to = self.ite_to.load(Ordering::Relaxed);
        if (from..to).contains(&ticket.wait) {
            let source = SourceId::from_raw(self.ite_source.load(Ordering::Relaxed) as u16);
            // The status may still have been written just before the timeout.
            let status = self.status_word(ticket.wait).load(Ordering::Acquire);
            if !Self::reached(status, self.token(ticket.wait)) {
                return Some(QiError::DeviceTlbTimeout { source });
            }
        }
        None
    }

    fn invalid_mark(&self, pos: u64) -> Option<QueueErrorInfo> {
        let mark = self.mem.marks[self.slot(pos)].load(Ordering::Acquire);
        let expected = self.mark_value(pos, MARK_INVALID, 0);
        if mark & !0xffff == expected {
            Some(QueueErrorInfo::from_iqei(mark as u8))
        } else {
            None
        }
    }

    /// Marks hold the position + 1 in bits 63:24 (0 = no mark), the kind in 23:16 and a detail
    /// in 15:0. Positions alias only 2^40 descriptors apart. A mark lives in its slot until
    /// another rejected descriptor lands in the same slot: a waiter that looks more than a lap
    /// after its batch ran and another IQE hit that slot meanwhile misses its error.
    fn mark_value(&self, pos: u64, kind: u64, detail: u64) -> u64 {
        (pos + 1) << 24 | kind << 16 | (detail & 0xffff)
    }

    /// The status token of the wait at `pos`: its lap + 1, never the initial 0 of the words
    /// (until 2^32 laps).
    fn token(&self, pos: u64) -> u32 {
        ((pos / self.entries) as u32).wrapping_add(1)
    }

    /// Whether a status word shows the wait with `token` done: its own token, or that of a
    /// later lap's wait in the same slot (which the unit reached after ours, since it runs
    /// waits in order, and which may overwrite ours before a slow waiter looks). Earlier laps'
    /// tokens and the initial 0 are behind.
    fn reached(status: u32, token: u32) -> bool {
        (status.wrapping_sub(token) as i32) >= 0
    }

    fn slot(&self, pos: u64) -> usize {
        (pos % self.entries) as usize
    }

    fn status_word(&self, pos: u64) -> &AtomicU32 {
        &self.mem.status[self.slot(pos)]
    }

    fn ready_mark(&self, pos: u64) -> &AtomicU64 {
        &self.mem.ready[self.slot(pos)]
    }

    /// Writes the descriptor at `pos`; ordered for the unit by the publisher's fence.
    fn write_slot(&self, pos: u64, words: [u64; 4]) {
        let n = self.width.words();
        let base = self.slot(pos) * n;
        for (cell, w) in self.mem.descriptors[base..base + n].iter().zip(words) {
            cell.store(w, Ordering::Relaxed);
        }
    }
}

// The queue's side of the simulated unit (its file is in `sim/`, with the whole unit's; also
// `crate::sim::queue`): tests, loom models, the queue benchmark. Declared here so that loom
// builds, which leave the whole unit out, still have it.
#[cfg(any(test, feature = "sim"))]
#[path = "sim/queue.rs"]
pub mod sim;

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;
