//! The invalidation queue's side of the simulated unit: the descriptor executor both
//! simulators use, and [`SimUnit`], the queue registers alone, for the queue's host and loom
//! tests and its benchmark (feature `sim`).
//!
//! [`execute`] checks one descriptor the way QEMU 10.0 does (same type and reserved-bit checks;
//! a bad one is an IQE with the head left on it) and says what it asks of the unit (a wait's
//! status write or interrupt); the whole unit ([`crate::sim::SimulatedUnit`]) runs it on the
//! ring in host memory, [`SimUnit::step`] on a [`QueueMemory`]. Neither makes progress while IQE
//! or ITE is set.
//!
//! [`SimUnit`]: registers as atomics. Tests step it from a thread of their own;
//! [`SimUnit::self_draining`] has the queue's own register reads step it instead, and
//! [`SimUnit::self_draining_with_latency`] adds a simulated wait-descriptor latency (a wait
//! completes only once that much host time, `std::time::Instant`, has passed since the IQT
//! write that published it).
//!
//! (This file is the module `qi::sim`, declared there so that loom builds, which leave the
//! whole unit out, have it; `crate::sim::queue` is the same module.)

extern crate std;
use std::time::Duration;
use std::vec::Vec;

use super::*;
use iommu::sync::latency::Latency;
use iommu::sync::CachePadded;

/// The queue registers of a simulated unit and what it needs to execute descriptors. The
/// register the queue's CPUs write (IQT, with the count of its writes) and those the unit
/// writes (IQH, FSTS) are on lines of their own, so that they do not invalidate each other or
/// the read-only fields every poll reads: a CPU's register read is no cache miss on hardware.
pub struct SimUnit {
    /// IQH.
    pub head: CachePadded<AtomicU64>,
    /// IQT.
    pub tail: CachePadded<TailRegister>,
    /// FSTS.
    pub fsts: CachePadded<AtomicU32>,
    /// IQERCD.
    pub iqercd: AtomicU64,
    /// IQA.DW.
    pub width: DescriptorWidth,
    /// Slots in the ring.
    pub entries: u64,
    /// The address wait descriptors' status writes are relative to: the first status word.
    pub status_phys: u64,
}

/// IQT of a [`SimUnit`] and the count of its writes, on one line: a tail write moves one line
/// to the writing CPU, not two.
#[derive(Debug)]
pub struct TailRegister {
    /// IQT as written.
    pub value: AtomicU64,
    /// IQT writes so far.
    pub writes: AtomicU64,
}

impl QiRegisters for SimUnit {
    fn read_head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }
    fn write_tail(&self, value: u64) {
        self.tail.writes.fetch_add(1, Ordering::Relaxed);
        self.tail.value.store(value, Ordering::Release);
    }
    fn read_fault_status(&self) -> u32 {
        self.fsts.load(Ordering::Acquire)
    }
    fn clear_fault_status(&self, bits: u32) {
        self.fsts.fetch_and(!bits, Ordering::AcqRel);
    }
    fn read_error_record(&self) -> u64 {
        self.iqercd.load(Ordering::Acquire)
    }
}

/// What one step of the simulated unit did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The queue was empty.
    Idle,
    /// Stopped on IQE or ITE until software clears it.
    Stopped,
    /// Executed this descriptor.
    Executed([u64; 4]),
    /// Rejected the descriptor at the head: IQE set, the head left on it.
    Rejected,
}

/// QEMU 10.0's reserved-bit masks per type, for (quadword 0, quadword 1).
fn reserved(ty: u64) -> Option<(u64, u64, bool)> {
    // (mask 0, mask 1, 256-bit only)
    match ty {
        1 => Some((0xfffc_0000_0000_f1c0, !0, false)),
        2 => Some((0xffff_ffff_0000_f100, 0xf80, false)),
        3 => Some((0xffff_0000_ffe0_f1f0, 0xffe, false)),
        // Interrupt entry cache: G, IM, IIDX; quadword 1 reserved.
        4 => Some((0xffff_0000_07ff_f1e0, !0, false)),
        5 => Some((0xffff_f180, 3, false)),
        6 => Some((0xfff0_0000_0000_f1c0, 0xf80, true)),
        7 => Some((0, 0, true)),
        8 => Some((0xfff0_0000_0000_f000, 0x7fe, true)),
        _ => None,
    }
}

/// The descriptor type (6.5.2): bits 3:0 and 11:9 of quadword 0.
pub fn descriptor_type(w0: u64) -> u64 {
    (w0 & 0xf) | ((w0 >> 5) & 0x70)
}

/// What a valid descriptor asks of the unit besides moving the head past it (the caches it
/// names are not simulated: there are none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// A wait with SW: write `data` to the dword at `address`.
    StatusWrite {
        /// The status address (quadword 1, dword aligned).
        address: u64,
        /// The status data (quadword 0, bits 63:32).
        data: u32,
    },
    /// A wait with IF: the invalidation completion event (ICS.IWC).
    Interrupt,
}

/// Checks one descriptor (`w`, quadwords 2 and 3 zero for a 128-bit queue) as QEMU 10.0 does
/// on a queue of 256-bit descriptors if `wide`: `None` if the unit must reject it (IQE, the
/// head left on it), or what it asks.
pub fn execute(w: &[u64; 4], wide: bool) -> Option<Effect> {
    let ty = descriptor_type(w[0]);
    let (m0, m1, wide_only) = reserved(ty)?;
    if (wide_only && !wide) || w[0] & m0 != 0 || w[1] & m1 != 0 || w[2] != 0 || w[3] != 0 {
        return None;
    }
    if ty != 5 {
        return Some(Effect::None);
    }
    // A wait must ask for exactly one of SW and IF (QEMU asserts on both).
    match (w[0] >> 4) & 3 {
        2 => Some(Effect::StatusWrite {
            address: w[1],
            data: (w[0] >> 32) as u32,
        }),
        1 => Some(Effect::Interrupt),
        _ => None,
    }
}

impl SimUnit {
    /// A unit with an empty queue of `entries` descriptors of `width`, its status words at
    /// `status_phys`.
    pub fn new(width: DescriptorWidth, entries: u64, status_phys: u64) -> Self {
        Self {
            head: CachePadded(AtomicU64::new(0)),
            tail: CachePadded(TailRegister {
                value: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            }),
            fsts: CachePadded(AtomicU32::new(0)),
            iqercd: AtomicU64::new(0),
            width,
            entries,
            status_phys,
        }
    }

    fn index(&self, raw: u64) -> u64 {
        ((raw & QUEUE_OFFSET_MASK) >> self.width.shift()) % self.entries
    }

    /// Executes the descriptor at the head, if any.
    pub fn step(&self, mem: &QueueMemory<'_>) -> Step {
        if self.fsts.load(Ordering::Acquire) & (FSTS_IQE | FSTS_ITE) != 0 {
            return Step::Stopped;
        }
        let head = self.index(self.head.load(Ordering::Relaxed));
        let tail = self.index(self.tail.value.load(Ordering::Acquire));
        if head == tail {
            return Step::Idle;
        }
        let n = self.width.words();
        let mut w = [0u64; 4];
        for (i, word) in w.iter_mut().enumerate().take(n) {
            *word = mem.descriptors[head as usize * n + i].load(Ordering::Relaxed);
        }
        let Some(effect) = execute(&w, self.width == DescriptorWidth::Bits256) else {
            // QEMU leaves IQERCD at 0; reserved-field (4) here exercises the decoding.
            self.iqercd.store(4, Ordering::Relaxed);
            self.fsts.fetch_or(FSTS_IQE, Ordering::Release);
            return Step::Rejected;
        };
        if let Effect::StatusWrite { address, data } = effect {
            let idx = ((address - self.status_phys) / 4) as usize;
            mem.status[idx].store(data, Ordering::Release);
        }
        self.head.store(
            ((head + 1) % self.entries) << self.width.shift(),
            Ordering::Release,
        );
        Step::Executed(w)
    }

    /// A device-TLB invalidation timed out: the unit drops everything fetched (here:
    /// everything up to the tail) and stops until ITE is cleared.
    #[cfg_attr(loom, allow(dead_code))]
    pub fn inject_ite(&self, source: u16) {
        let tail = self.tail.value.load(Ordering::Acquire);
        self.head.store(tail, Ordering::Release);
        self.iqercd
            .store(u64::from(source) << 32, Ordering::Relaxed);
        self.fsts.fetch_or(FSTS_ITE, Ordering::Release);
    }
}

impl SimUnit {
    /// This unit's registers as a queue sees them, executing the descriptors in `mem` whenever
    /// the queue reads IQH or FSTS.
    pub fn self_draining<'a>(&'a self, mem: &'a SimMemory) -> SelfDraining<'a> {
        SelfDraining {
            unit: self,
            memory: mem.memory(),
            stepping: CachePadded(AtomicBool::new(false)),
            latency: None,
        }
    }

    /// As [`self_draining`](Self::self_draining), with a simulated wait latency: a wait
    /// descriptor is executed (its status written, the head moved past it) only once `latency`
    /// has passed since the IQT write that first covered it, and the descriptors after it wait
    /// behind it (the unit processes the queue in order). Other descriptors take no time, and
    /// waits published together complete together (the latency is a delay, not a service
    /// time).
    pub fn self_draining_with_latency<'a>(
        &'a self,
        mem: &'a SimMemory,
        latency: Duration,
    ) -> SelfDraining<'a> {
        SelfDraining {
            latency: Some(Latency::new(latency, self.entries as usize)),
            ..self.self_draining(mem)
        }
    }
}

/// The registers of a [`SimUnit`] whose queue is consumed by whoever reads IQH (a producer
/// waiting for space) or FSTS (a waiter's fault check, every `fault_check_interval` polls):
/// before answering, a read executes every descriptor published so far (up to a ring's worth),
/// as hardware would have while the CPU was getting round to polling. The unit's CPU time is
/// charged to the waiting submitter, so two submitters use two cores and no more.
pub struct SelfDraining<'a> {
    unit: &'a SimUnit,
    memory: QueueMemory<'a>,
    /// One consumer at a time, as in the unit: [`SimUnit::step`] reads and writes the head
    /// without a read-modify-write, so two concurrent steps could move it backwards. A reader
    /// that finds it taken answers with the registers as they are (the holder is draining).
    /// Acquire on taking, release on leaving: one drain's head store happens before the next
    /// one's load.
    /// On a line of its own: every poll reads the fields around it.
    stepping: CachePadded<AtomicBool>,
    /// The simulated wait latency, if any.
    latency: Option<Latency>,
}

impl SelfDraining<'_> {
    /// Whether the descriptor at the head is a wait still inside its latency. Only the
    /// consumer (the holder of `stepping`) calls it.
    fn wait_pending(&self, latency: &Latency, now: &mut Option<u64>) -> bool {
        let unit = self.unit;
        let head = unit.index(unit.head.load(Ordering::Relaxed));
        // Acquire: the descriptor and its stamp, stored before IQT covered them, are visible.
        if head == unit.index(unit.tail.value.load(Ordering::Acquire)) {
            return false;
        }
        let w0 = self
            .memory
            .descriptors
            .get(head as usize * unit.width.words())
            .map_or(0, |w| w.load(Ordering::Relaxed));
        if descriptor_type(w0) != 5 {
            return false;
        }
        latency.pending(head as usize, now)
    }

    /// Executes what is published, unless another CPU is doing so.
    fn drain(&self) {
        // A wait at the head not yet due: nothing can move (one line, written once per
        // latency, instead of the registers').
        if let Some(latency) = &self.latency {
            if latency.head_not_due() {
                return;
            }
        }
        // Plain loads first: a poll with nothing to do, or while another CPU drains, leaves
        // the lines shared (hardware answers a register read without writing anything; a
        // read-modify-write here would make every poll of every waiter bounce a line).
        let unit = self.unit;
        if self.stepping.load(Ordering::Relaxed)
            || unit.index(unit.head.load(Ordering::Relaxed))
                == unit.index(unit.tail.value.load(Ordering::Relaxed))
        {
            return;
        }
        if self
            .stepping
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // Bounded: a ring's worth, so a reader never drains producers that outrun it forever.
        let mut now = None;
        for _ in 0..self.unit.entries {
            if let Some(latency) = &self.latency {
                if self.wait_pending(latency, &mut now) {
                    break;
                }
            }
            if !matches!(self.unit.step(&self.memory), Step::Executed(_)) {
                break;
            }
        }
        self.stepping.store(false, Ordering::Release);
    }
}

impl QiRegisters for SelfDraining<'_> {
    fn read_head(&self) -> u64 {
        self.drain();
        self.unit.read_head()
    }
    fn write_tail(&self, value: u64) {
        if let Some(latency) = &self.latency {
            // Stamps the newly published slots. Only one CPU writes IQT at a time (the queue's
            // publisher lock), and it was the last to write it: relaxed.
            let unit = self.unit;
            let old = unit.index(unit.tail.value.load(Ordering::Relaxed));
            let new = unit.index(value);
            let count = (new + unit.entries - old) % unit.entries.max(1);
            latency.publish(old as usize, count as usize);
        }
        // Release (in `SimUnit::write_tail`): the stamps go with IQT.
        self.unit.write_tail(value)
    }
    fn read_fault_status(&self) -> u32 {
        self.drain();
        self.unit.read_fault_status()
    }
    fn clear_fault_status(&self, bits: u32) {
        self.unit.clear_fault_status(bits)
    }
    fn read_error_record(&self) -> u64 {
        self.unit.read_error_record()
    }
}

/// Memory for a queue in the host's heap (tests leak it for threads that need `'static`).
pub struct SimMemory {
    /// The ring.
    pub descriptors: Vec<AtomicU64>,
    /// The status words, one per slot and the sink.
    pub status: Vec<AtomicU32>,
    /// The queue's per-slot error marks.
    pub marks: Vec<AtomicU64>,
    /// The queue's per-slot ready marks.
    pub ready: Vec<AtomicU64>,
}

/// Where the unit believes the ring is (for IQA; never dereferenced).
pub const RING_PHYS: u64 = 0x10_0000;
/// Where the unit believes the status words are: status writes land at their offset from it.
pub const STATUS_PHYS: u64 = 0x20_0000;

impl SimMemory {
    /// Zeroed memory for a queue of `entries` descriptors of `width`.
    pub fn new(entries: usize, width: DescriptorWidth) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            descriptors: zeros(entries * width.words()),
            status: (0..entries + 1).map(|_| AtomicU32::new(0)).collect(),
            marks: zeros(entries),
            ready: zeros(entries),
        }
    }

    /// The memory as a queue takes it.
    pub fn memory(&self) -> QueueMemory<'_> {
        // SAFETY: the simulated unit reaches the status words by subtracting STATUS_PHYS,
        // and nothing else uses this memory.
        unsafe {
            QueueMemory::new(
                &self.descriptors,
                PhysAddr::new(RING_PHYS),
                &self.status,
                PhysAddr::new(STATUS_PHYS),
                &self.marks,
                &self.ready,
            )
        }
    }
}

#[cfg(test)]
pub fn config(width: DescriptorWidth, poll_budget: u32, fault_check_interval: u32) -> QueueConfig {
    QueueConfig {
        width,
        size: QueueSize::ONE_PAGE,
        poll_budget,
        fault_check_interval,
    }
}

/// A queue of `entries` slots over `mem`, driven through `unit`.
#[cfg(test)]
pub fn queue<'m>(
    unit: &'m SimUnit,
    mem: &'m SimMemory,
    config: QueueConfig,
) -> InvalidationQueue<'m, &'m SimUnit> {
    match InvalidationQueue::with_entries(unit, mem.memory(), config, unit.entries as usize) {
        Ok(q) => q,
        Err(e) => panic!("test queue: {e}"),
    }
}
