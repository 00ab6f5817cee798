//! A minimal GICv2 driver (Arm IHI 0048B): the distributor and the memory-mapped CPU interface,
//! enough to take one wired SPI as an IRQ, and the IRQ handler the exception vectors call, which
//! dispatches to the GIC brought up: this GICv2, or the GICv3 of [`super::gicv3`].
//!
//! The handler acknowledges the interrupt (GICC_IAR), records its id where a test reads it, and
//! ends it (GICC_EOIR). Interrupts stay masked (PSTATE.I) except inside [`with_irqs_unmasked`].
//! The frames' addresses come from the devicetree; nothing here knows the board.

use core::sync::atomic::{compiler_fence, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use aarch64_cpu::registers::{ReadWriteable, Readable, Writeable, HCR_EL2};
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

use super::ExceptionLevel;

register_structs! {
    /// The GICv2 distributor registers used here (IHI 0048B 4.1.2, table 4-1).
    pub GicdRegisters {
        /// 4.3.1 GICD_CTLR: bit 0 forwards pending interrupts to the CPU interfaces.
        (0x000 => ctlr: ReadWrite<u32>),
        /// 4.3.2 GICD_TYPER: ITLinesNumber [4:0] = number of 32-interrupt lines, minus one.
        (0x004 => typer: ReadOnly<u32>),
        (0x008 => _reserved0),
        /// 4.3.4 GICD_IGROUPRn: one bit per interrupt, 0 = Group 0.
        (0x080 => igroupr: [ReadWrite<u32>; 32]),
        /// 4.3.5 GICD_ISENABLERn: write 1 to enable forwarding.
        (0x100 => isenabler: [ReadWrite<u32>; 32]),
        /// 4.3.6 GICD_ICENABLERn: write 1 to disable forwarding.
        (0x180 => icenabler: [ReadWrite<u32>; 32]),
        /// 4.3.7 GICD_ISPENDRn: pending state, read or write 1 to set.
        (0x200 => ispendr: [ReadWrite<u32>; 32]),
        /// 4.3.8 GICD_ICPENDRn: write 1 to clear the pending state.
        (0x280 => icpendr: [ReadWrite<u32>; 32]),
        (0x300 => _reserved1),
        /// 4.3.11 GICD_IPRIORITYRn: one byte per interrupt, lower is more urgent.
        (0x400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x7fc => _reserved2),
        /// 4.3.12 GICD_ITARGETSRn: one byte per interrupt, bit n = CPU interface n.
        (0x800 => itargetsr: [ReadWrite<u8>; 1020]),
        (0xbfc => _reserved3),
        /// 4.3.13 GICD_ICFGRn: two bits per interrupt, bit 1 set = edge-triggered.
        (0xc00 => icfgr: [ReadWrite<u32>; 64]),
        (0xd00 => @END),
    }
}

register_structs! {
    /// The GICv2 CPU interface registers used here (IHI 0048B 4.1.3, table 4-2).
    pub GiccRegisters {
        /// 4.4.1 GICC_CTLR: bit 0 signals Group 0 interrupts to the processor (as IRQ while
        /// FIQEn is 0).
        (0x00 => ctlr: ReadWrite<u32>),
        /// 4.4.2 GICC_PMR: only interrupts more urgent than this priority are signalled.
        (0x04 => pmr: ReadWrite<u32>),
        /// 4.4.3 GICC_BPR: priority grouping for preemption.
        (0x08 => bpr: ReadWrite<u32>),
        /// 4.4.4 GICC_IAR: acknowledges the highest-priority pending interrupt; its id in [9:0]
        /// (1023: spurious, nothing to acknowledge).
        (0x0c => iar: ReadOnly<u32>),
        /// 4.4.5 GICC_EOIR: ends the interrupt whose IAR value is written.
        (0x10 => eoir: WriteOnly<u32>),
        (0x14 => @END),
    }
}

/// The first interrupt id that is not a real interrupt (1020..=1023 are special, 1023 spurious).
const FIRST_SPECIAL_INTID: u32 = 1020;
/// SPIs start at 32 (0..16 are SGIs, 16..32 PPIs).
const FIRST_SPI: u32 = 32;
/// The priority given to SPIs: in the middle, more urgent than the mask (GICC_PMR = 0xff).
const SPI_PRIORITY: u8 = 0x80;

/// The CPU interface the IRQ handler acknowledges through; 0 until [`Gic::init`]. Written once
/// before interrupts are unmasked on the same (only) CPU, so relaxed ordering is enough: the
/// handler runs after the store in program order.
static GICC_BASE: AtomicUsize = AtomicUsize::new(0);
/// How many interrupts the handler acknowledged, and the id of the last one. Release stores in
/// the handler, acquire loads in the test: the handler's effects before the count (its EOI, the
/// id) are visible to whoever sees the new count.
static TAKEN: AtomicU32 = AtomicU32::new(0);
static LAST_INTID: AtomicU32 = AtomicU32::new(u32::MAX);

/// Which GIC the IRQ handler acknowledges through: set by [`Gic::init`] or `GicV3::init`
/// (from the version the devicetree names) before interrupts are unmasked on the same CPU, so
/// relaxed ordering is enough, as for [`GICC_BASE`].
static IN_USE: AtomicU8 = AtomicU8::new(NO_GIC);
const NO_GIC: u8 = 0;
const GICV2: u8 = 2;
const GICV3: u8 = 3;

/// Why an interrupt cannot be configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicError {
    /// Not an SPI of this distributor (below 32 or beyond GICD_TYPER.ITLinesNumber).
    NotAnSpi(u32),
    /// Not a PPI (16..32).
    NotAPpi(u32),
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotAnSpi(id) => write!(f, "interrupt {id} is not an SPI of this GIC"),
            Self::NotAPpi(id) => write!(f, "interrupt {id} is not a PPI (16..32)"),
        }
    }
}

/// A GICv2: distributor and CPU interface of the boot CPU.
pub struct Gic {
    dist: &'static GicdRegisters,
    cpu: &'static GiccRegisters,
}

impl Gic {
    /// The GIC whose distributor (GICD) and CPU interface (GICC) frames are at these physical
    /// addresses, which the boot code's identity map covers as Device memory.
    ///
    /// # Safety
    /// `distributor` and `cpu_interface` must be a GICv2's frames (from the devicetree), mapped
    /// as Device memory for the kernel's life, and nothing else may program the GIC meanwhile.
    pub unsafe fn new(distributor: usize, cpu_interface: usize) -> Self {
        // SAFETY: per this function's contract; the register cells are interior-mutable and
        // accessed volatilely, so shared references are sound.
        unsafe {
            Self {
                dist: &*(distributor as *const GicdRegisters),
                cpu: &*(cpu_interface as *const GiccRegisters),
            }
        }
    }

    /// Enables the distributor and the CPU interface with every priority unmasked, and makes
    /// the IRQ handler acknowledge through this CPU interface. No interrupt is enabled yet.
    pub fn init(&self) {
        self.dist.ctlr.set(1);
        self.cpu.pmr.set(0xff);
        self.cpu.bpr.set(0);
        self.cpu.ctlr.set(1);
        GICC_BASE.store(self.cpu as *const GiccRegisters as usize, Ordering::Relaxed);
        IN_USE.store(GICV2, Ordering::Relaxed);
    }

    /// The number of SPI lines plus 32 (GICD_TYPER.ITLinesNumber).
    fn interrupt_limit(&self) -> u32 {
        ((self.dist.typer.get() & 0x1f) + 1) * 32
    }

    pub(super) fn spi_banks(&self) -> SpiBanks<'_> {
        let d = self.dist;
        SpiBanks {
            isenabler: &d.isenabler,
            icenabler: &d.icenabler,
            ispendr: &d.ispendr,
            icpendr: &d.icpendr,
        }
    }

    pub(super) fn check_spi(&self, intid: u32) -> Result<(usize, u32), GicError> {
        if intid < FIRST_SPI || intid >= self.interrupt_limit().min(FIRST_SPECIAL_INTID) {
            return Err(GicError::NotAnSpi(intid));
        }
        Ok(((intid / 32) as usize, 1 << (intid % 32)))
    }

    /// Configures SPI `intid` (disabled while it changes): Group 0, edge- or level-triggered,
    /// middle priority, delivered to CPU interface 0. Leaves it disabled.
    pub fn configure_spi(&self, intid: u32, edge: bool) -> Result<(), GicError> {
        let (word, bit) = self.check_spi(intid)?;
        let i = intid as usize;
        self.dist.icenabler[word].set(bit);
        self.dist.igroupr[word].set(self.dist.igroupr[word].get() & !bit);
        let cfg = &self.dist.icfgr[i / 16];
        let edge_bit = 2 << (2 * (intid % 16));
        cfg.set(if edge {
            cfg.get() | edge_bit
        } else {
            cfg.get() & !edge_bit
        });
        self.dist.ipriorityr[i].set(SPI_PRIORITY);
        self.dist.itargetsr[i].set(1);
        Ok(())
    }
}

/// The PPIs: private to each CPU, INTIDs 16..32.
const PPIS: core::ops::Range<u32> = 16..32;

/// The bit of PPI `intid` in its CPU's banked registers.
pub(super) fn ppi_bit(intid: u32) -> Result<u32, GicError> {
    if PPIS.contains(&intid) {
        Ok(1 << intid)
    } else {
        Err(GicError::NotAPpi(intid))
    }
}

impl Gic {
    /// Enables or disables PPI `intid` of this CPU (Group 0, middle priority; a PPI's trigger
    /// is fixed by its source). GICD_IGROUPR0, GICD_ISENABLER0 and GICD_IPRIORITYR0..7 are
    /// banked per CPU.
    pub fn set_ppi(&self, intid: u32, enabled: bool) -> Result<(), GicError> {
        let bit = ppi_bit(intid)?;
        if enabled {
            self.dist.igroupr[0].set(self.dist.igroupr[0].get() & !bit);
            self.dist.ipriorityr[intid as usize].set(SPI_PRIORITY);
            self.dist.isenabler[0].set(bit);
        } else {
            self.dist.icenabler[0].set(bit);
        }
        Ok(())
    }
}

/// How many interrupts the IRQ handler has acknowledged since boot.
pub fn irqs_taken() -> u32 {
    TAKEN.load(Ordering::Acquire)
}

/// The id of the last interrupt the IRQ handler acknowledged, if any.
pub fn last_irq() -> Option<u32> {
    match LAST_INTID.load(Ordering::Acquire) {
        u32::MAX => None,
        id => Some(id),
    }
}

/// Runs `f` with IRQs unmasked (PSTATE.I clear), then masks them again. At EL2 physical IRQs
/// are routed to EL2 (HCR_EL2.IMO) for the duration: with IMO clear they target EL1 and are
/// never taken while EL2 runs.
pub fn with_irqs_unmasked<R>(f: impl FnOnce() -> R) -> R {
    let el2 = ExceptionLevel::current() == ExceptionLevel::El2;
    let imo_was = el2 && HCR_EL2.is_set(HCR_EL2::IMO);
    if el2 {
        HCR_EL2.modify(HCR_EL2::IMO::SET);
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }
    // The compiler fences keep `f`'s memory accesses between unmask and mask.
    compiler_fence(Ordering::SeqCst);
    // SAFETY: clears PSTATE.I only; the vectors handle IRQs (see `handle_irq`).
    unsafe { core::arch::asm!("msr daifclr, #2", options(nomem, nostack)) };
    let r = f();
    // SAFETY: sets PSTATE.I only.
    unsafe { core::arch::asm!("msr daifset, #2", options(nomem, nostack)) };
    compiler_fence(Ordering::SeqCst);
    if el2 && !imo_was {
        HCR_EL2.modify(HCR_EL2::IMO::CLEAR);
        aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
    }
    r
}

/// Makes the IRQ handler acknowledge through the GICv3 CPU interface (`GicV3::init`).
pub(super) fn use_gicv3() {
    IN_USE.store(GICV3, Ordering::Relaxed);
}

/// Records an acknowledged interrupt for [`irqs_taken`] and [`last_irq`] (either GIC's
/// handler calls it).
pub(super) fn record_irq(intid: u32) {
    LAST_INTID.store(intid, Ordering::Release);
    TAKEN.fetch_add(1, Ordering::Release);
}

/// Called by the IRQ vector (current EL, SP_ELx) with the interrupted context saved: the GIC in
/// use acknowledges the interrupt, records it and ends it. Returns whether it was handled;
/// without a GIC set up by [`Gic::init`] or `GicV3::init` an IRQ is unexpected and the caller
/// reports it.
pub(super) fn handle_irq() -> bool {
    match IN_USE.load(Ordering::Relaxed) {
        GICV2 => handle_gicv2_irq(),
        GICV3 => super::gicv3::handle_irq(),
        _ => false,
    }
}

fn handle_gicv2_irq() -> bool {
    let base = GICC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return false;
    }
    // SAFETY: stored by `Gic::init` from a `GiccRegisters` reference valid for the kernel's life.
    let cpu = unsafe { &*(base as *const GiccRegisters) };
    let iar = cpu.iar.get();
    let intid = iar & 0x3ff;
    if intid >= FIRST_SPECIAL_INTID {
        // Spurious: nothing was acknowledged, so nothing is ended.
        return true;
    }
    record_irq(intid);
    cpu.eoir.set(iar);
    true
}

/// The machine's GIC, whichever version the devicetree names: the SPI operations the tests
/// use, on either.
pub enum Controller {
    V2(Gic),
    V3(&'static super::gicv3::GicV3),
}

impl Controller {
    /// See [`Gic::configure_spi`] and `GicV3::configure_spi`.
    pub fn configure_spi(&self, intid: u32, edge: bool) -> Result<(), GicError> {
        match self {
            Self::V2(g) => g.configure_spi(intid, edge),
            Self::V3(g) => g.configure_spi(intid, edge),
        }
    }

    /// Enables or disables PPI `intid` of this CPU; see [`Gic::set_ppi`] and `GicV3::set_ppi`.
    pub fn set_ppi(&self, intid: u32, enabled: bool) -> Result<(), GicError> {
        match self {
            Self::V2(g) => g.set_ppi(intid, enabled),
            Self::V3(g) => g.set_ppi(intid, enabled),
        }
    }

    /// Lets SPI `intid` be forwarded to the CPU interface.
    pub fn enable(&self, intid: u32) -> Result<(), GicError> {
        let (banks, word, bit) = self.spi(intid)?;
        banks.isenabler[word].set(bit);
        Ok(())
    }

    /// Stops forwarding SPI `intid`.
    pub fn disable(&self, intid: u32) -> Result<(), GicError> {
        let (banks, word, bit) = self.spi(intid)?;
        banks.icenabler[word].set(bit);
        Ok(())
    }

    /// Whether SPI `intid` is pending at the distributor.
    pub fn is_pending(&self, intid: u32) -> Result<bool, GicError> {
        let (banks, word, bit) = self.spi(intid)?;
        Ok(banks.ispendr[word].get() & bit != 0)
    }

    /// Clears the pending state of SPI `intid`.
    pub fn clear_pending(&self, intid: u32) -> Result<(), GicError> {
        let (banks, word, bit) = self.spi(intid)?;
        banks.icpendr[word].set(bit);
        Ok(())
    }

    /// The distributor banks, register index and bit of SPI `intid`.
    fn spi(&self, intid: u32) -> Result<(SpiBanks<'_>, usize, u32), GicError> {
        match self {
            Self::V2(g) => {
                let (word, bit) = g.check_spi(intid)?;
                Ok((g.spi_banks(), word, bit))
            }
            Self::V3(g) => {
                let (word, bit) = g.check_spi(intid)?;
                Ok((g.spi_banks(), word, bit))
            }
        }
    }
}

/// A distributor's SPI enable and pending banks: GICD_ISENABLER<n> (0x100), GICD_ICENABLER<n>
/// (0x180), GICD_ISPENDR<n> (0x200) and GICD_ICPENDR<n> (0x280), one bit per interrupt, at the
/// same offsets and with the same meaning in GICv2 (IHI 0048B 4.3.5-4.3.8) and GICv3.
pub(super) struct SpiBanks<'a> {
    pub(super) isenabler: &'a [ReadWrite<u32>; 32],
    pub(super) icenabler: &'a [ReadWrite<u32>; 32],
    pub(super) ispendr: &'a [ReadWrite<u32>; 32],
    pub(super) icpendr: &'a [ReadWrite<u32>; 32],
}
