//! The register-level simulated SMMU: a register frame laid out as [`SmmuRegisters`] in host
//! memory and a responder thread playing the hardware's side of its handshakes, so that a real
//! [`SmmuUnit`](crate::SmmuUnit) runs on it unchanged.

extern crate alloc;
extern crate std;

use alloc::vec::Vec;
use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering as StdOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::SimulatedSmmu;
use crate::cmdq::{CommandErrorCode, DmaQueueMemory};
use crate::command::Command;
use crate::registers::{SmmuRegisters, REGISTER_FRAME_SIZE};
use iommu::sync::Ordering;

/// Rounds without a request after which the responder yields its core between rounds.
pub const IDLE_ROUNDS: u32 = 1024;

/// What the simulated SMMU reports in its ID registers (IHI 0070 6.3.1-6.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// IDR0.S1P.
    pub stage1: bool,
    /// IDR0.S2P.
    pub stage2: bool,
    /// IDR0.ST_LEVEL = 0b01: 2-level stream tables.
    pub two_level_stream_table: bool,
    /// IDR0.CD2L: 2-level CD tables.
    pub two_level_cd: bool,
    /// IDR1.SIDSIZE.
    pub sid_bits: u8,
    /// IDR1.SSIDSIZE (0: no substreams).
    pub ssid_bits: u8,
    /// IDR0.ASID16 (else 8-bit ASIDs).
    pub asid16: bool,
    /// IDR0.VMID16 (else 8-bit VMIDs).
    pub vmid16: bool,
    /// IDR5.OAS encoding: 0 = 32 bits, 1 = 36, 2 = 40, 3 = 42, 4 = 44, 5 = 48, 6 = 52.
    pub oas: u8,
    /// IDR0.COHACC: table and queue accesses are coherent.
    pub coherent: bool,
    /// IDR1.CMDQS: log2 of the largest command queue.
    pub cmdq_log2: u8,
    /// IDR1.EVENTQS: log2 of the largest event queue.
    pub eventq_log2: u8,
    /// IDR3.RIL: range invalidation.
    pub range_invalidation: bool,
    /// IDR0.ATS: PCIe ATS (STE.EATS, CMD_ATC_INV). The simulator keeps no ATC: it only
    /// consumes and logs the invalidations.
    pub ats: bool,
}

impl SimConfig {
    /// What QEMU 10's `smmuv3_init_regs` reports with `stage=nested`: both stages, 2-level
    /// stream table, 16-bit StreamIDs, 16-bit ASIDs and VMIDs, 44-bit OAS, coherent, queues of
    /// 2^19 entries, no substreams (QEMU's SSIDSIZE is 0; see [`with_substreams`]).
    ///
    /// [`with_substreams`]: Self::with_substreams
    pub const fn qemu() -> Self {
        Self {
            stage1: true,
            stage2: true,
            two_level_stream_table: true,
            two_level_cd: false,
            sid_bits: 16,
            ssid_bits: 0,
            asid16: true,
            vmid16: true,
            oas: 4,
            coherent: true,
            cmdq_log2: 19,
            eventq_log2: 19,
            range_invalidation: true,
            ats: false,
        }
    }

    /// [`qemu`](Self::qemu) with a 48-bit OAS (QEMU's `oas=48`): what host tests want, since
    /// the tables the driver builds live at host pointers, which reach 2^47 on x86-64 and
    /// AArch64 hosts (a 44-bit SMMU would rightly fault on them with F_ADDR_SIZE).
    pub const fn host() -> Self {
        let mut c = Self::qemu();
        c.oas = 5;
        c
    }

    /// This configuration with `bits` of SubstreamID and 2-level CD tables.
    pub const fn with_substreams(mut self, bits: u8) -> Self {
        self.ssid_bits = bits;
        self.two_level_cd = true;
        self
    }

    /// This configuration offering PCIe ATS (QEMU's SMMU does not).
    pub const fn with_ats(mut self) -> Self {
        self.ats = true;
        self
    }

    /// SMMU_IDR0..SMMU_IDR5 as this configuration spells them.
    pub const fn id_registers(&self) -> [u32; 6] {
        const fn b(v: bool, shift: u32) -> u32 {
            (v as u32) << shift
        }
        let idr0 = b(self.stage2, 0)
            | b(self.stage1, 1)
            // TTF = AArch64 tables only.
            | 2 << 2
            | b(self.coherent, 4)
            | b(self.ats, 10)
            | b(self.asid16, 12)
            | b(self.vmid16, 18)
            | b(self.two_level_cd, 19)
            // TTENDIAN = little endian.
            | 2 << 21
            // TERM_MODEL: a terminated transaction may abort (no RAZ/WI).
            | 1 << 26
            | b(self.two_level_stream_table, 27);
        let idr1 = (self.sid_bits as u32 & 0x3f)
            | (self.ssid_bits as u32 & 0x1f) << 6
            | (self.eventq_log2 as u32 & 0x1f) << 16
            | (self.cmdq_log2 as u32 & 0x1f) << 21;
        let idr3 = b(self.range_invalidation, 10);
        // 4K, 16K and 64K granules.
        let idr5 = (self.oas as u32 & 7) | 0x70;
        [idr0, idr1, 0, idr3, 0, idr5]
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::host()
    }
}

// Register offsets, from the one declaration in `registers.rs`.
pub(super) mod off {
    use crate::registers::SmmuRegisters;
    use core::mem::offset_of;
    pub const IDR0: usize = offset_of!(SmmuRegisters, idr0);
    pub const AIDR: usize = offset_of!(SmmuRegisters, aidr);
    pub const CR0: usize = offset_of!(SmmuRegisters, cr0);
    pub const CR0ACK: usize = offset_of!(SmmuRegisters, cr0ack);
    pub const CR2: usize = offset_of!(SmmuRegisters, cr2);
    pub const GBPA: usize = offset_of!(SmmuRegisters, gbpa);
    pub const IRQ_CTRL: usize = offset_of!(SmmuRegisters, irq_ctrl);
    pub const IRQ_CTRLACK: usize = offset_of!(SmmuRegisters, irq_ctrlack);
    pub const GERROR: usize = offset_of!(SmmuRegisters, gerror);
    pub const GERRORN: usize = offset_of!(SmmuRegisters, gerrorn);
    pub const STRTAB_BASE: usize = offset_of!(SmmuRegisters, strtab_base);
    pub const STRTAB_BASE_CFG: usize = offset_of!(SmmuRegisters, strtab_base_cfg);
    pub const CMDQ_BASE: usize = offset_of!(SmmuRegisters, cmdq_base);
    pub const CMDQ_PROD: usize = offset_of!(SmmuRegisters, cmdq_prod);
    pub const CMDQ_CONS: usize = offset_of!(SmmuRegisters, cmdq_cons);
    pub const EVENTQ_BASE: usize = offset_of!(SmmuRegisters, eventq_base);
    pub const EVENTQ_PROD: usize = offset_of!(SmmuRegisters, eventq_prod);
    pub const EVENTQ_CONS: usize = offset_of!(SmmuRegisters, eventq_cons);
}

// Register fields the responder reads (IHI 0070 6.3).
const CR0_SMMUEN: u32 = 1 << 0;
const CR0_EVENTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;
const GBPA_UPDATE: u32 = 1 << 31;
pub(super) const GBPA_ABORT: u32 = 1 << 20;
/// QUEUE_BASE.ADDR, bits [51:5].
const QUEUE_BASE_ADDR: u64 = ((1 << 52) - 1) & !0x1f;
const QUEUE_BASE_LOG2SIZE: u64 = 0x1f;

/// The register frame as the responder sees it: volatile accesses at byte offsets.
#[derive(Clone, Copy)]
pub(super) struct Regs(usize);

impl Regs {
    pub(super) fn r32(self, off: usize) -> u32 {
        // SAFETY: `off` is a 4-byte aligned offset inside the frame (the `off` constants); the
        // frame outlives every user (freed in `SimulatedUnit::drop` after the thread is joined).
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u32) }
    }
    pub(super) fn w32(self, off: usize, v: u32) {
        // SAFETY: as in `r32`.
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u32, v) }
    }
    pub(super) fn r64(self, off: usize) -> u64 {
        // SAFETY: as in `r32`, 8-byte aligned.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u64) }
    }
}

/// The hardware state behind the frame, under one lock: the responder's rounds and
/// [`SimulatedUnit::dma`] take turns, as one SMMU serialises its own accesses.
pub(super) struct State {
    /// The queue consumer/producer logic; its PROD/CONS/GERROR(N) mirror the frame's, copied
    /// in before and out after each use.
    pub(super) queues: SimulatedSmmu,
    cmdq: Option<DmaQueueMemory<2>>,
    pub(super) eventq: Option<DmaQueueMemory<4>>,
    log: Vec<Command>,
    /// Commands refused with CERROR_ILL, in order.
    refused: u32,
}

pub(super) struct Shared {
    pub(super) regs: Regs,
    pub(super) state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide later reports.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One register-level simulated SMMU; its responder thread runs until it is dropped.
pub struct SimulatedUnit {
    pub(super) shared: Arc<Shared>,
    config: SimConfig,
    thread: Option<JoinHandle<()>>,
}

// SAFETY: the frame is reached by volatile accesses only, from any thread.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

fn frame_layout() -> Layout {
    match Layout::from_size_align(REGISTER_FRAME_SIZE as usize, 0x1_0000) {
        Ok(l) => l,
        Err(_) => unreachable!("128 KiB aligned to 64 KiB is a valid layout"),
    }
}

impl SimulatedUnit {
    /// An SMMU reporting `config`, out of reset: CR0 = 0, GBPA = 0 (bypass, as QEMU resets
    /// it), queues empty.
    pub fn new(config: SimConfig) -> Self {
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(frame_layout()) };
        if base.is_null() {
            std::alloc::handle_alloc_error(frame_layout());
        }
        let regs = Regs(base as usize);
        for (i, v) in config.id_registers().iter().enumerate() {
            regs.w32(off::IDR0 + 4 * i, *v);
        }
        // AIDR: SMMUv3.1.
        regs.w32(off::AIDR, 1);
        let shared = Arc::new(Shared {
            regs,
            state: Mutex::new(State {
                queues: SimulatedSmmu::with_event_queue(1, 1),
                cmdq: None,
                eventq: None,
                log: Vec::new(),
                refused: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || respond(&s));
        Self {
            shared,
            config,
            thread: Some(thread),
        }
    }

    /// The register frame, for [`SmmuUnit::new`](crate::SmmuUnit::new). It lives until the
    /// simulator is dropped: the unit must be dropped first (its drop disables the SMMU
    /// through the frame).
    pub fn registers(&self) -> NonNull<SmmuRegisters> {
        match NonNull::new(self.shared.regs.0 as *mut SmmuRegisters) {
            Some(p) => p,
            None => unreachable!("allocated non-null in `new`"),
        }
    }

    /// What the SMMU reports.
    pub fn config(&self) -> SimConfig {
        self.config
    }

    /// The commands consumed since the last call (refused ones excluded), oldest first.
    pub fn take_log(&self) -> Vec<Command> {
        core::mem::take(&mut self.shared.lock().log)
    }

    /// How many commands were refused with CERROR_ILL so far.
    pub fn refused_commands(&self) -> u32 {
        self.shared.lock().refused
    }

    /// SMMU_CR0ACK.SMMUEN: whether translation is on.
    pub fn enabled(&self) -> bool {
        self.shared.regs.r32(off::CR0ACK) & CR0_SMMUEN != 0
    }

    /// SMMU_CR0ACK as the SMMU last acknowledged it.
    pub fn cr0ack(&self) -> u32 {
        self.shared.regs.r32(off::CR0ACK)
    }

    /// SMMU_GBPA.
    pub fn gbpa(&self) -> u32 {
        self.shared.regs.r32(off::GBPA)
    }

    /// SMMU_STRTAB_BASE and SMMU_STRTAB_BASE_CFG.
    pub(super) fn stream_table_registers(&self) -> (u64, u32) {
        (
            self.shared.regs.r64(off::STRTAB_BASE),
            self.shared.regs.r32(off::STRTAB_BASE_CFG),
        )
    }
}

impl Drop for SimulatedUnit {
    fn drop(&mut self) {
        self.shared.stop.store(true, StdOrdering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // SAFETY: allocated in `new` with this layout; the thread is gone and the caller's
        // `SmmuUnit` (which borrowed the frame under `SmmuUnit::new`'s contract) must be gone.
        unsafe { dealloc(self.shared.regs.0 as *mut u8, frame_layout()) };
    }
}

impl core::fmt::Debug for SimulatedUnit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SimulatedUnit")
            .field("frame", &(self.shared.regs.0 as *const u8))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The hardware's side, until `stop`.
fn respond(shared: &Shared) {
    let mut idle = 0u32;
    while !shared.stop.load(StdOrdering::Relaxed) {
        let worked = answer(shared.regs, &mut shared.lock());
        idle = if worked { 0 } else { idle.saturating_add(1) };
        if idle >= IDLE_ROUNDS {
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

/// A queue ring named by a QUEUE_BASE value (host pointer == physical address).
fn ring<const W: usize>(base: u64) -> Option<(DmaQueueMemory<W>, u8)> {
    let log2 = (base & QUEUE_BASE_LOG2SIZE) as u8;
    let addr = NonNull::new((base & QUEUE_BASE_ADDR) as usize as *mut u8)?;
    // SAFETY: the driver gave this ring to the SMMU with the queue enable; it stays allocated
    // while the queue is enabled (the driver disables CR0 before freeing it).
    Some((unsafe { DmaQueueMemory::new(addr, log2) }, log2))
}

/// One round of the hardware's side (IHI 0070 6.3.9-6.3.14, QEMU's `smmu_writel`): GBPA
/// updates complete, CR0 and IRQ_CTRL are acknowledged, the command queue is consumed. Says
/// whether anything was asked.
fn answer(regs: Regs, st: &mut State) -> bool {
    let mut worked = false;
    let gbpa = regs.r32(off::GBPA);
    if gbpa & GBPA_UPDATE != 0 {
        regs.w32(off::GBPA, gbpa & !GBPA_UPDATE);
        worked = true;
    }
    let irq = regs.r32(off::IRQ_CTRL);
    if regs.r32(off::IRQ_CTRLACK) != irq {
        regs.w32(off::IRQ_CTRLACK, irq);
        worked = true;
    }
    let cr0 = regs.r32(off::CR0);
    let ack = regs.r32(off::CR0ACK);
    if cr0 != ack {
        let rising = cr0 & !ack;
        let falling = ack & !cr0;
        if (rising | falling) & (CR0_CMDQEN | CR0_EVENTQEN) != 0 {
            let cmdq = if cr0 & CR0_CMDQEN != 0 {
                ring::<2>(regs.r64(off::CMDQ_BASE))
            } else {
                None
            };
            let eventq = if cr0 & CR0_EVENTQEN != 0 {
                ring::<4>(regs.r64(off::EVENTQ_BASE))
            } else {
                None
            };
            st.queues = SimulatedSmmu::with_event_queue(
                cmdq.as_ref().map_or(1, |c| c.1),
                eventq.as_ref().map_or(1, |e| e.1),
            );
            // The pointers software programmed while the queues were disabled, and the errors
            // still active (GERROR survives a queue disable; software acknowledges in GERRORN).
            st.queues
                .gerror
                .store(regs.r32(off::GERROR), Ordering::Relaxed);
            st.queues
                .cmdq_cons
                .store(regs.r32(off::CMDQ_CONS), Ordering::Relaxed);
            st.queues
                .eventq_prod
                .store(regs.r32(off::EVENTQ_PROD), Ordering::Relaxed);
            st.cmdq = cmdq.map(|c| c.0);
            st.eventq = eventq.map(|e| e.0);
        }
        regs.w32(off::CR0ACK, cr0);
        worked = true;
    }
    // GERRORN: software's acknowledgements.
    st.queues
        .gerrorn
        .store(regs.r32(off::GERRORN), Ordering::Relaxed);
    if let Some(mem) = &st.cmdq {
        st.queues
            .cmdq_prod
            .store(regs.r32(off::CMDQ_PROD), Ordering::Relaxed);
        let log = &mut st.log;
        let mut refused = 0;
        // A queue's worth per round at most, so the frame's CONS moves while software waits.
        for _ in 0..1u32 << st.queues.log2 {
            match st.queues.step(mem, |raw| {
                let cmd = SimulatedSmmu::decode_or_illegal(raw)?;
                log.push(cmd);
                Ok::<(), CommandErrorCode>(())
            }) {
                super::SimStep::Consumed(_) => worked = true,
                super::SimStep::Refused(..) => {
                    refused += 1;
                    worked = true;
                    break;
                }
                super::SimStep::Idle | super::SimStep::Halted => break,
            }
        }
        st.refused += refused;
        regs.w32(off::CMDQ_CONS, st.queues.cmdq_cons.load(Ordering::Relaxed));
        regs.w32(off::GERROR, st.queues.gerror.load(Ordering::Relaxed));
    }
    worked
}

impl State {
    /// Writes `record` into the event queue as the SMMU would (nothing when the queue is
    /// disabled), keeping the frame's EVENTQ_PROD in step. Returns whether it was written.
    pub(super) fn record(&mut self, regs: Regs, record: [u64; 4]) -> bool {
        let Some(mem) = &self.eventq else {
            return false;
        };
        self.queues
            .eventq_cons
            .store(regs.r32(off::EVENTQ_CONS), Ordering::Relaxed);
        let written = self.queues.record_event(mem, record);
        regs.w32(
            off::EVENTQ_PROD,
            self.queues.eventq_prod.load(Ordering::Relaxed),
        );
        written
    }
}
