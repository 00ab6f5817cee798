//! A simulated SMMU for host tests, loom models and benchmarks (feature `sim`), in two layers
//! over one set of queue logic.
//!
//! [`SimulatedSmmu`] is the command queue consumer and event queue producer sides of the
//! registers, behaving as IHI 0070 3.5 and QEMU's `smmuv3_cmdq_consume` do, over queue rings in
//! host memory. It is driven one step at a time by the test's own threads, so a test decides how
//! fast the "hardware" goes and can stop it; or, through [`SimulatedSmmu::self_draining`], by
//! the submitters themselves while they poll CONS, so a benchmark needs no consumer thread (one
//! that would take a core real hardware does not). [`SimulatedSmmu::self_draining_with_latency`]
//! adds a simulated CMD_SYNC latency: a CMD_SYNC completes only once that much host time
//! (`std::time::Instant`) has passed since the PROD write that published it.
//!
//! [`SimulatedUnit`] is a whole SMMU a real [`SmmuUnit`](crate::SmmuUnit) runs on unchanged,
//! for an embedder's host tests:
//!
//! ```
//! # use iommu::hal::host::HostHal;
//! # use iommu::unit::{Attachment, DeviceId, Stage, TranslationUnit};
//! # use iommu::{addr::{Iova, PhysAddr}, pagetable::Prot};
//! use iommu_smmuv3::sim::{Access, SimConfig, SimulatedUnit};
//! use iommu_smmuv3::{SmmuConfig, SmmuUnit};
//!
//! let hal = HostHal::new();
//! let sim = SimulatedUnit::new(SimConfig::host());
//! // SAFETY: the frame lives as long as `sim`, dropped after the unit.
//! let unit = unsafe { SmmuUnit::new(sim.registers(), &hal, SmmuConfig::default()) }.unwrap();
//! let d = unit.new_domain(Stage::First, 48).unwrap();
//! unit.map(&d, Iova::new(0x1000), PhysAddr::new(0x8000), 0x1000, Prot::READ).unwrap();
//! unit.attach(DeviceId(7), Attachment::Paging(&d)).unwrap();
//! assert_eq!(sim.translate(7, None, 0x1010, Access::READ), Ok(0x8010));
//! // A write faults (F_PERMISSION); `dma` records it for the driver's event reader.
//! assert!(sim.dma(7, None, 0x1010, Access::WRITE).is_err());
//! ```
//!
//! What it simulates:
//! - a register frame laid out as [`SmmuRegisters`](crate::registers::SmmuRegisters) (both
//!   64 KiB pages) in host memory, ID registers from [`SimConfig`] (stages, 2-level stream and
//!   CD tables, StreamID/SubstreamID/ASID/VMID sizes, OAS, COHACC, queue sizes, RIL);
//! - a responder thread playing the handshakes: GBPA.UPDATE, CR0 → CR0ACK (queue geometry
//!   latched from CMDQ_BASE/EVENTQ_BASE when a queue is enabled), IRQ_CTRL → IRQ_CTRLACK,
//!   GERROR/GERRORN; the command queue consumed with [`SimulatedSmmu::step`]: commands the
//!   decoder refuses stop the queue with CERROR_ILL until acknowledged, the others are logged
//!   ([`SimulatedUnit::take_log`]) and CMD_SYNC completes by CONS passing it;
//! - [`SimulatedUnit::translate`]: what a device's transaction reaches or which fault it gets,
//!   from STRTAB_BASE (linear or 2-level) through the STE (abort, bypass, stage 1, stage 2,
//!   nested), the CD table (linear or 2-level, S1CDMax, S1DSS) and the CD to the VMSAv8-64
//!   stage-1 and stage-2 walks (4K/16K/64K granules, blocks, concatenated stage-2 first level,
//!   AP/S2AP/XN permissions, the access flag, output sizes), with the spec's event types;
//!   SMMUEN = 0 follows GBPA. [`SimulatedUnit::dma`] also records the event in the event queue
//!   (EVENTQ_PROD.OVFLG when full), where the driver's own event reader finds it.
//!
//! What it does not: no TLB or configuration cache (a missing invalidation goes unnoticed:
//! every walk reads the tables as they are now); no MSIs, wired interrupts or SEV (CMD_SYNC
//! completion is seen by polling CONS only); no PRI queue, ATS, stalls, ATOS, HTTU, TTB1,
//! AArch32 tables, big-endian tables, attribute or privilege overrides (STE.PRIVCFG and
//! friends), Secure or Realm state, or stage-1 hierarchical permissions (APTable). Addresses
//! are host pointers (physical == virtual, as with [`HostHal`](iommu::hal::host::HostHal)):
//! a table address the driver gets wrong is dereferenced, not faulted, unless it is null or
//! misaligned (then an F_STE_FETCH / F_CD_FETCH / F_TRANSLATION). The responder needs a core
//! of its own while the driver waits on it (it yields after [`IDLE_ROUNDS`] idle rounds).

extern crate alloc;
extern crate std;

use alloc::vec::Vec;
use std::time::Duration;

use crate::cmdq::{CmdqRegisters, CommandErrorCode, QueueMemory};
use crate::command::{Command, RawCommand};
use crate::eventq::EventqRegisters;
use crate::registers::GERROR;
use iommu::sync::latency::Latency;
use iommu::sync::{AtomicBool, AtomicU32, CachePadded, Ordering, RacyCell};

#[cfg(not(loom))]
mod unit;
#[cfg(not(loom))]
pub use unit::{SimConfig, SimulatedUnit, IDLE_ROUNDS};
#[cfg(not(loom))]
mod walk;
#[cfg(not(loom))]
pub use walk::{Access, DmaFault};
#[cfg(all(test, not(loom)))]
mod tests;

/// A queue ring in host memory whose slot accesses loom checks for races.
#[derive(Debug)]
pub struct HeapQueueMemory<const W: usize> {
    slots: Vec<RacyCell<[u64; W]>>,
    log2: u8,
}

impl<const W: usize> HeapQueueMemory<W> {
    /// A zeroed ring of `2^log2_entries` entries.
    pub fn new(log2_entries: u8) -> Self {
        Self {
            slots: (0..1usize << log2_entries)
                .map(|_| RacyCell::new([0; W]))
                .collect(),
            log2: log2_entries,
        }
    }

    fn cell(&self, index: u32) -> Option<&RacyCell<[u64; W]>> {
        self.slots.get((index & ((1 << self.log2) - 1)) as usize)
    }
}

impl<const W: usize> QueueMemory<W> for HeapQueueMemory<W> {
    fn log2_entries(&self) -> u8 {
        self.log2
    }

    unsafe fn write(&self, index: u32, entry: [u64; W]) {
        if let Some(cell) = self.cell(index) {
            // SAFETY: the caller owns the slot.
            unsafe { cell.set(entry) }
        }
    }

    unsafe fn read(&self, index: u32) -> [u64; W] {
        match self.cell(index) {
            // SAFETY: no concurrent writer, per the caller.
            Some(cell) => unsafe { cell.get() },
            None => [0; W],
        }
    }
}

/// What one step of the simulated consumer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimStep {
    /// The queue was empty.
    Idle,
    /// Stopped on a command error until software acknowledges it.
    Halted,
    /// Executed and consumed this command.
    Consumed(RawCommand),
    /// Refused this command: CONS stays on it with ERR set, GERROR.CMDQ_ERR raised.
    Refused(RawCommand, CommandErrorCode),
}

/// The registers of a simulated SMMU.
///
/// Register accesses are atomics with acquire loads and release stores, the ordering the real
/// accessors give ([`CmdqRegisters`]): software's stores before a PROD or GERRORN write are
/// visible to the consumer that reads it, and the consumer's slot reads happen before the CONS
/// store that frees the slots.
///
/// PROD (written by the CPUs) and CONS (written by the consumer) are on cache lines of their
/// own, apart from each other and from the registers every stalled poll reads (GERROR,
/// GERRORN): on hardware a register write invalidates no CPU's cache line.
#[derive(Debug)]
pub struct SimulatedSmmu {
    log2: u8,
    cmdq_prod: CachePadded<AtomicU32>,
    cmdq_cons: CachePadded<AtomicU32>,
    gerror: AtomicU32,
    gerrorn: AtomicU32,
    eventq_log2: u8,
    eventq_prod: AtomicU32,
    eventq_cons: AtomicU32,
}

impl SimulatedSmmu {
    /// An SMMU whose command queue has `2^log2_entries` entries (event queue: 8 entries).
    pub fn new(log2_entries: u8) -> Self {
        Self::with_event_queue(log2_entries, 3)
    }

    /// An SMMU with queues of `2^cmdq_log2` commands and `2^eventq_log2` events.
    pub fn with_event_queue(cmdq_log2: u8, eventq_log2: u8) -> Self {
        Self {
            log2: cmdq_log2,
            cmdq_prod: CachePadded(AtomicU32::new(0)),
            cmdq_cons: CachePadded(AtomicU32::new(0)),
            gerror: AtomicU32::new(0),
            gerrorn: AtomicU32::new(0),
            eventq_log2,
            eventq_prod: AtomicU32::new(0),
            eventq_cons: AtomicU32::new(0),
        }
    }

    fn wrap_mask(log2: u8) -> u32 {
        (2u32 << log2) - 1
    }

    /// Consumes at most one command of `mem`: `execute` decides whether the SMMU accepts it.
    pub fn step<M: QueueMemory<2>>(
        &self,
        mem: &M,
        mut execute: impl FnMut(RawCommand) -> Result<(), CommandErrorCode>,
    ) -> SimStep {
        let err = GERROR::CMDQ_ERR::SET.value;
        let mask = Self::wrap_mask(self.log2);
        // Only the consumer writes CONS.
        let cons = self.cmdq_cons.load(Ordering::Relaxed) & mask;
        // Acquire: the producers' entry stores happen before our slot read.
        let prod = self.cmdq_prod.load(Ordering::Acquire) & mask;
        if cons == prod {
            return SimStep::Idle;
        }
        // Acquire: software's rewrite of the failed slot happens before our re-read.
        if (self.gerror.load(Ordering::Acquire) ^ self.gerrorn.load(Ordering::Acquire)) & err != 0 {
            return SimStep::Halted;
        }
        // SAFETY: the slot is between CONS and PROD: producers do not touch it until CONS
        // passes it; recovery only writes it while we are halted.
        let cmd = unsafe { mem.read(cons) };
        match execute(cmd) {
            Ok(()) => {
                // Release: our slot read happens before a producer's reuse.
                self.cmdq_cons.store((cons + 1) & mask, Ordering::Release);
                SimStep::Consumed(cmd)
            }
            Err(code) => {
                self.cmdq_cons
                    .store(cons | code.encoding() << 24, Ordering::Release);
                // Release: CONS.ERR is visible to whoever sees the error.
                self.gerror.fetch_xor(err, Ordering::Release);
                SimStep::Refused(cmd, code)
            }
        }
    }

    /// This SMMU's registers as a command queue sees them, consuming the ring `mem` whenever
    /// CONS is read, with `execute` deciding what the SMMU accepts.
    pub fn self_draining<'a, M: QueueMemory<2>>(
        &'a self,
        mem: &'a M,
        execute: fn(RawCommand) -> Result<(), CommandErrorCode>,
    ) -> SelfDraining<'a, M> {
        SelfDraining {
            smmu: self,
            mem,
            execute,
            stepping: CachePadded(AtomicBool::new(false)),
            latency: None,
        }
    }

    /// As [`self_draining`](Self::self_draining), with a simulated CMD_SYNC latency: a
    /// CMD_SYNC is completed (CONS moved past it) only once `latency` has passed since the PROD
    /// write that first covered it, and the commands after it wait behind it, as in the SMMU's
    /// in-order consumption. Other commands take no time, and CMD_SYNCs published together
    /// complete together (the latency is a delay, not a service time).
    pub fn self_draining_with_latency<'a, M: QueueMemory<2>>(
        &'a self,
        mem: &'a M,
        execute: fn(RawCommand) -> Result<(), CommandErrorCode>,
        latency: Duration,
    ) -> SelfDraining<'a, M> {
        SelfDraining {
            latency: Some(Latency::new(latency, 1 << self.log2)),
            ..self.self_draining(mem, execute)
        }
    }

    /// QEMU's rule for what it accepts: a command the decoder accepts (QEMU refuses unknown
    /// opcodes and SSec; this is stricter about reserved bits).
    pub fn decode_or_illegal(cmd: RawCommand) -> Result<Command, CommandErrorCode> {
        Command::decode(cmd).map_err(|_| CommandErrorCode::Illegal)
    }

    /// Writes event `record` into the event queue `mem` as the SMMU would, or, when the queue is
    /// full, drops it and toggles EVENTQ_PROD.OVFLG. Returns whether it was written.
    pub fn record_event<M: QueueMemory<4>>(&self, mem: &M, record: [u64; 4]) -> bool {
        let mask = Self::wrap_mask(self.eventq_log2);
        let prod_reg = self.eventq_prod.load(Ordering::Relaxed);
        let prod = prod_reg & mask;
        // Acquire: software finished reading the slots below CONS.
        let cons = self.eventq_cons.load(Ordering::Acquire) & mask;
        if prod ^ cons == 1 << self.eventq_log2 {
            // Full: the event is lost; say so once per overflow episode, as the SMMU does when
            // OVFLG equals the acknowledged OVACKFLG.
            let acked = self.eventq_cons.load(Ordering::Acquire) >> 31;
            if prod_reg >> 31 == acked {
                self.eventq_prod
                    .store(prod_reg ^ 1 << 31, Ordering::Release);
            }
            return false;
        }
        // SAFETY: the slot is between PROD and CONS + N: software does not read it until PROD
        // covers it.
        unsafe { mem.write(prod, record) };
        // Release: the record is visible to whoever sees the new PROD.
        self.eventq_prod
            .store((prod_reg & !mask) | ((prod + 1) & mask), Ordering::Release);
        true
    }
}

impl CmdqRegisters for SimulatedSmmu {
    fn read_cons(&self) -> u32 {
        self.cmdq_cons.load(Ordering::Acquire)
    }
    fn write_prod(&self, prod: u32) {
        self.cmdq_prod.store(prod, Ordering::Release);
    }
    fn read_gerror(&self) -> u32 {
        self.gerror.load(Ordering::Acquire)
    }
    fn read_gerrorn(&self) -> u32 {
        self.gerrorn.load(Ordering::Acquire)
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        let gerror = self.gerror.load(Ordering::Acquire);
        // One atomic read-modify-write: concurrent acknowledgements of other bits are kept.
        // Release: software's rewrite of a failed slot is visible to the consumer that sees
        // the acknowledgement.
        let old = match self
            .gerrorn
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some((n & !mask) | (gerror & mask))
            }) {
            Ok(n) | Err(n) => n,
        };
        (gerror ^ old) & mask
    }
}

/// The registers of a [`SimulatedSmmu`] whose command queue is consumed by whoever reads CONS:
/// before answering, a read executes every command published so far (up to a queue's worth),
/// as hardware would have while the CPU was getting round to polling. The CPU time the SMMU
/// takes is charged to the waiting submitter, so two submitters use two cores and no more.
#[derive(Debug)]
pub struct SelfDraining<'a, M> {
    smmu: &'a SimulatedSmmu,
    mem: &'a M,
    execute: fn(RawCommand) -> Result<(), CommandErrorCode>,
    /// One consumer at a time, as in the SMMU: [`SimulatedSmmu::step`] reads and writes CONS
    /// without a read-modify-write, so two concurrent steps could move it backwards. A reader
    /// that finds it taken answers with CONS as it is (the holder is draining). Acquire on
    /// taking, release on leaving: one drain's CONS store happens before the next one's load.
    /// On a line of its own: every poll reads the fields around it.
    stepping: CachePadded<AtomicBool>,
    /// The simulated CMD_SYNC latency, if any.
    latency: Option<Latency>,
}

impl<M: QueueMemory<2>> SelfDraining<'_, M> {
    /// Whether the command at CONS is a CMD_SYNC still inside its latency. Only the consumer
    /// (the holder of `stepping`) calls it.
    fn sync_pending(&self, latency: &Latency, now: &mut Option<u64>) -> bool {
        let mask = SimulatedSmmu::wrap_mask(self.smmu.log2);
        let cons = self.smmu.cmdq_cons.load(Ordering::Relaxed) & mask;
        // Acquire: the entry and its stamp, stored before PROD covered them, are visible.
        let prod = self.smmu.cmdq_prod.load(Ordering::Acquire) & mask;
        if cons == prod {
            return false;
        }
        // SAFETY: the slot is between CONS and PROD and we are the only consumer: producers
        // do not write it until CONS passes it (as in `SimulatedSmmu::step`).
        let cmd = unsafe { self.mem.read(cons) };
        if cmd[0] & 0xff != u64::from(crate::command::opcode::SYNC) {
            return false;
        }
        let slot = (cons & ((1 << self.smmu.log2) - 1)) as usize;
        latency.pending(slot, now)
    }

    /// Executes what is published, unless another CPU is doing so.
    fn drain(&self) {
        // A CMD_SYNC at the head not yet due: nothing can move (one line, written once per
        // latency, instead of the registers').
        if let Some(latency) = &self.latency {
            if latency.head_not_due() {
                return;
            }
        }
        // Plain loads first: a poll with nothing to do, or while another CPU drains, leaves
        // the lines shared (hardware answers a CONS read without writing anything; a
        // read-modify-write here would make every poll of every waiter bounce a line).
        let mask = SimulatedSmmu::wrap_mask(self.smmu.log2);
        let prod = self.smmu.cmdq_prod.load(Ordering::Relaxed) & mask;
        if self.stepping.load(Ordering::Relaxed)
            || self.smmu.cmdq_cons.load(Ordering::Relaxed) & mask == prod
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
        // Bounded: a queue's worth, so a reader never drains producers that outrun it forever.
        let mut now = None;
        for _ in 0..1u32 << self.smmu.log2 {
            if let Some(latency) = &self.latency {
                if self.sync_pending(latency, &mut now) {
                    break;
                }
            }
            match self.smmu.step(self.mem, self.execute) {
                SimStep::Consumed(_) => {}
                SimStep::Idle | SimStep::Halted | SimStep::Refused(..) => break,
            }
        }
        self.stepping.store(false, Ordering::Release);
    }
}

impl<M: QueueMemory<2>> CmdqRegisters for SelfDraining<'_, M> {
    fn read_cons(&self) -> u32 {
        self.drain();
        CmdqRegisters::read_cons(self.smmu)
    }
    fn write_prod(&self, prod: u32) {
        if let Some(latency) = &self.latency {
            // Stamps the newly published slots. Only one CPU writes PROD at a time (the
            // queue's publisher lock), and it was the last to write it: relaxed.
            let mask = SimulatedSmmu::wrap_mask(self.smmu.log2);
            let old = self.smmu.cmdq_prod.load(Ordering::Relaxed);
            let first = (old & ((1 << self.smmu.log2) - 1)) as usize;
            latency.publish(first, (prod.wrapping_sub(old) & mask) as usize);
        }
        // Release (in `SimulatedSmmu::write_prod`): the stamps go with PROD.
        self.smmu.write_prod(prod)
    }
    fn read_gerror(&self) -> u32 {
        self.smmu.read_gerror()
    }
    fn read_gerrorn(&self) -> u32 {
        self.smmu.read_gerrorn()
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        self.smmu.acknowledge_gerror(mask)
    }
}

impl EventqRegisters for SimulatedSmmu {
    fn read_prod(&self) -> u32 {
        self.eventq_prod.load(Ordering::Acquire)
    }
    fn write_cons(&self, cons: u32) {
        self.eventq_cons.store(cons, Ordering::Release);
    }
    fn read_cons(&self) -> u32 {
        self.eventq_cons.load(Ordering::Acquire)
    }
}
