//! A minimal GICv3 driver (Arm IHI 0069H): the distributor with affinity routing, the boot
//! CPU's redistributor with LPIs on, and the CPU interface through its system registers; enough
//! to take wired SPIs and LPIs (made by the ITS, [`super::its`]) as IRQs at EL1 or EL2.
//!
//! The IRQ handler acknowledges through ICC_IAR1_EL1, records the INTID with the GICv2 path's
//! bookkeeping ([`super::gic::irqs_taken`], [`super::gic::last_irq`]) and ends it through
//! ICC_EOIR1_EL1. Every interrupt is Group 1 (non-secure: the IRQ exception at EL1 and EL2).
//! The frames' addresses come from the devicetree; nothing here knows the board.

use alloc::alloc::{alloc_zeroed, Layout};
use core::arch::asm;
use core::ops::Range;

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::MPIDR_EL1;
use iommu::poll::{poll_until, Timeout, DEFAULT_POLL_BUDGET};
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

use super::gic::GicError;
use super::ExceptionLevel;

register_bitfields! {u32,
    /// IHI 0069H, GICD_CTLR, as non-secure software (or with DS = 1) sees it.
    pub GICD_CTLR [
        EnableGrp1 OFFSET(1) NUMBITS(1) [],
        /// Affinity routing: SPIs are routed by GICD_IROUTER, the CPU interface is system
        /// registers only.
        ARE OFFSET(4) NUMBITS(1) [],
        /// Register write pending: a write to GICD_CTLR or GICD_ICENABLER has not taken effect.
        RWP OFFSET(31) NUMBITS(1) [],
    ],
    /// IHI 0069H, GICD_TYPER.
    pub GICD_TYPER [
        /// Number of 32-interrupt lines, minus one.
        ITLinesNumber OFFSET(0) NUMBITS(5) [],
        /// The GIC supports LPIs.
        LPIS OFFSET(17) NUMBITS(1) [],
        /// INTID bits the GIC supports, minus one.
        IDbits OFFSET(19) NUMBITS(5) [],
    ],
    /// IHI 0069H, GICR_CTLR.
    pub GICR_CTLR [
        EnableLPIs OFFSET(0) NUMBITS(1) [],
        RWP OFFSET(3) NUMBITS(1) [],
    ],
    /// IHI 0069H, GICR_WAKER.
    pub GICR_WAKER [
        /// Set: the CPU is asleep and the redistributor does not forward to it.
        ProcessorSleep OFFSET(1) NUMBITS(1) [],
        /// Set while the interface to the CPU is quiescent (not yet awake).
        ChildrenAsleep OFFSET(2) NUMBITS(1) [],
    ],
}

register_bitfields! {u64,
    /// IHI 0069H, GICR_TYPER.
    pub GICR_TYPER [
        /// Physical LPIs supported.
        PLPIS OFFSET(0) NUMBITS(1) [],
        /// Virtual LPIs (GICv4): the redistributor has four 64 KiB frames instead of two.
        VLPIS OFFSET(1) NUMBITS(1) [],
        /// The last redistributor of its region.
        Last OFFSET(4) NUMBITS(1) [],
        /// What the ITS names this redistributor by when GITS_TYPER.PTA = 0.
        ProcessorNumber OFFSET(8) NUMBITS(16) [],
        /// Aff3.Aff2.Aff1.Aff0 of the CPU this redistributor serves.
        AffinityValue OFFSET(32) NUMBITS(32) [],
    ],
    /// IHI 0069H, GICR_PROPBASER: the LPI configuration table.
    pub GICR_PROPBASER [
        /// INTID bits the table covers, minus one.
        IDbits OFFSET(0) NUMBITS(5) [],
        InnerCache OFFSET(7) NUMBITS(3) [WriteBackReadWriteAllocate = 0b111],
        Shareability OFFSET(10) NUMBITS(2) [InnerShareable = 0b01],
        /// Bits [51:12] of the table's address.
        PhysicalAddress OFFSET(12) NUMBITS(40) [],
    ],
    /// IHI 0069H, GICR_PENDBASER: the LPI pending table.
    pub GICR_PENDBASER [
        InnerCache OFFSET(7) NUMBITS(3) [WriteBackReadWriteAllocate = 0b111],
        Shareability OFFSET(10) NUMBITS(2) [InnerShareable = 0b01],
        /// Bits [51:16] of the table's address (64 KiB aligned).
        PhysicalAddress OFFSET(16) NUMBITS(36) [],
        /// Pending table zero: the table is known to be all zeros.
        PTZ OFFSET(62) NUMBITS(1) [],
    ],
    /// IHI 0069H, GICD_IROUTER<n>: which CPU an SPI goes to under affinity routing.
    pub GICD_IROUTER [
        Aff0 OFFSET(0) NUMBITS(8) [],
        Aff1 OFFSET(8) NUMBITS(8) [],
        Aff2 OFFSET(16) NUMBITS(8) [],
        /// 0: to the CPU the affinity fields name; 1: to any participating CPU.
        InterruptRoutingMode OFFSET(31) NUMBITS(1) [],
        Aff3 OFFSET(32) NUMBITS(8) [],
    ],
}

register_structs! {
    /// The GICv3 distributor registers used here (IHI 0069H, "The GIC Distributor register
    /// map").
    pub GicdRegisters {
        /// GICD_CTLR.
        (0x0000 => ctlr: ReadWrite<u32, GICD_CTLR::Register>),
        /// GICD_TYPER.
        (0x0004 => typer: ReadOnly<u32, GICD_TYPER::Register>),
        (0x0008 => _reserved0),
        /// GICD_IGROUPR<n>: one bit per interrupt, 1 = Group 1.
        (0x0080 => igroupr: [ReadWrite<u32>; 32]),
        /// GICD_ISENABLER<n>: write 1 to enable forwarding.
        (0x0100 => isenabler: [ReadWrite<u32>; 32]),
        /// GICD_ICENABLER<n>: write 1 to disable forwarding.
        (0x0180 => icenabler: [ReadWrite<u32>; 32]),
        /// GICD_ISPENDR<n>: pending state, read or write 1 to set.
        (0x0200 => ispendr: [ReadWrite<u32>; 32]),
        /// GICD_ICPENDR<n>: write 1 to clear the pending state.
        (0x0280 => icpendr: [ReadWrite<u32>; 32]),
        (0x0300 => _reserved1),
        /// GICD_IPRIORITYR<n>: one byte per interrupt, lower is more urgent.
        (0x0400 => ipriorityr: [ReadWrite<u8>; 1020]),
        (0x07fc => _reserved2),
        /// GICD_ICFGR<n>: two bits per interrupt, bit 1 set = edge-triggered.
        (0x0c00 => icfgr: [ReadWrite<u32>; 64]),
        (0x0d00 => _reserved3),
        /// GICD_IROUTER<n> for the SPIs, n = 32..1020.
        (0x6100 => irouter: [ReadWrite<u64, GICD_IROUTER::Register>; 988]),
        (0x7fe0 => @END),
    }
}

register_structs! {
    /// A redistributor's RD_base frame, the registers used here (IHI 0069H, "The GIC
    /// Redistributor register map").
    pub GicrRegisters {
        /// GICR_CTLR.
        (0x0000 => ctlr: ReadWrite<u32, GICR_CTLR::Register>),
        /// GICR_IIDR.
        (0x0004 => iidr: ReadOnly<u32>),
        /// GICR_TYPER.
        (0x0008 => typer: ReadOnly<u64, GICR_TYPER::Register>),
        (0x0010 => _reserved0),
        /// GICR_WAKER.
        (0x0014 => waker: ReadWrite<u32, GICR_WAKER::Register>),
        (0x0018 => _reserved1),
        /// GICR_PROPBASER.
        (0x0070 => propbaser: ReadWrite<u64, GICR_PROPBASER::Register>),
        /// GICR_PENDBASER.
        (0x0078 => pendbaser: ReadWrite<u64, GICR_PENDBASER::Register>),
        (0x0080 => _reserved2),
        /// GICR_INVALLR (GICv3.3 direct LPI invalidation; unused where the ITS is).
        (0x00b0 => _invallr: WriteOnly<u64>),
        (0x00b8 => @END),
    }
}

register_structs! {
    /// A redistributor's SGI_base frame (64 KiB after RD_base), the registers used here:
    /// this CPU's SGIs and PPIs (IHI 0069H, "The GIC Redistributor register map").
    pub GicrSgiRegisters {
        (0x0000 => _reserved0),
        /// GICR_IGROUPR0: one bit per SGI/PPI, set = Group 1.
        (0x0080 => igroupr0: ReadWrite<u32>),
        (0x0084 => _reserved1),
        /// GICR_ISENABLER0.
        (0x0100 => isenabler0: ReadWrite<u32>),
        (0x0104 => _reserved2),
        /// GICR_ICENABLER0.
        (0x0180 => icenabler0: ReadWrite<u32>),
        (0x0184 => _reserved3),
        /// GICR_IPRIORITYR0..7: one byte per SGI/PPI.
        (0x0400 => ipriorityr: [ReadWrite<u8>; 32]),
        (0x0420 => @END),
    }
}

/// Where SGI_base follows RD_base.
const SGI_FRAME_OFFSET: usize = 1 << 16;

/// A redistributor's frames: RD_base and SGI_base (64 KiB each), plus VLPI_base and a reserved
/// frame when GICR_TYPER.VLPIS says GICv4.
const REDISTRIBUTOR_STRIDE: usize = 2 << 16;
const REDISTRIBUTOR_STRIDE_V4: usize = 4 << 16;

/// The first interrupt id that is not a real interrupt (1020..=1023 are special, 1023 spurious).
const FIRST_SPECIAL_INTID: u32 = 1020;
/// SPIs start at 32.
const FIRST_SPI: u32 = 32;
/// LPIs start at 8192.
pub const FIRST_LPI: u32 = 8192;
/// The priority given to SPIs and LPIs: in the middle, more urgent than the mask (0xff).
const PRIORITY: u8 = 0xa0;
/// INTID bits the LPI tables cover: 2^14 INTIDs, so LPIs 8192..16384, an 8 KiB configuration
/// table and a 2 KiB pending table. Fewer if the GIC has fewer.
const LPI_ID_BITS: u32 = 14;
/// LPI configuration table entry (IHI 0069H, "LPI Configuration tables"): priority in [7:2],
/// bit 1 RES1, enable bit 0.
const LPI_CONFIG_RES1: u8 = 1 << 1;
const LPI_CONFIG_ENABLE: u8 = 1 << 0;

/// Why the GICv3 could not be brought up or an LPI not configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicV3Error {
    /// No redistributor in the region serves the CPU with this affinity (Aff3.Aff2.Aff1.Aff0).
    NoRedistributor { affinity: u32 },
    /// The distributor or this CPU's redistributor does not support physical LPIs.
    NoLpis,
    /// Not an LPI of the configuration table.
    NotAnLpi(u32),
    /// The LPI tables could not be allocated.
    OutOfMemory,
    /// A register write or the redistributor's wake-up did not complete.
    Timeout(Timeout),
}

impl core::fmt::Display for GicV3Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRedistributor { affinity } => {
                write!(
                    f,
                    "no redistributor serves the CPU of affinity {affinity:#x}"
                )
            }
            Self::NoLpis => f.write_str("the GIC does not support physical LPIs"),
            Self::NotAnLpi(id) => write!(f, "interrupt {id} is not an LPI of the GIC's tables"),
            Self::OutOfMemory => f.write_str("no memory for the LPI tables"),
            Self::Timeout(t) => write!(f, "GICv3: {t}"),
        }
    }
}

impl core::error::Error for GicV3Error {}

impl From<Timeout> for GicV3Error {
    fn from(t: Timeout) -> Self {
        Self::Timeout(t)
    }
}

/// The GICv3 as brought up by [`GicV3::init`]: distributor, the boot CPU's redistributor and
/// its LPI configuration table.
pub struct GicV3 {
    dist: &'static GicdRegisters,
    redist: &'static GicrRegisters,
    /// The same redistributor's SGI_base frame.
    sgi: &'static GicrSgiRegisters,
    /// Physical address of the redistributor's RD_base frame (for an ITS with PTA = 1).
    redist_base: u64,
    /// This CPU's affinity, Aff3.Aff2.Aff1.Aff0, as GICR_TYPER and GICD_IROUTER name it.
    affinity: u32,
    /// The LPI configuration table: one byte per LPI from [`FIRST_LPI`]. Written by the CPU
    /// (volatile), read by the redistributor.
    lpi_config: *mut u8,
    lpis: Range<u32>,
}

// SAFETY: the register blocks are MMIO cells accessed volatilely; `lpi_config` points at a table
// this value owns for the kernel's life and only writes with volatile byte stores, which cannot
// tear. One CPU runs the kernel.
unsafe impl Send for GicV3 {}
// SAFETY: as for `Send`.
unsafe impl Sync for GicV3 {}

/// The GIC brought up once per boot: LPI tables cannot be moved once LPIs are on, and QEMU
/// (like most GICs) keeps GICR_CTLR.EnableLPIs set until reset.
static GICV3: spin::Once<Result<GicV3, GicV3Error>> = spin::Once::new();

impl GicV3 {
    /// Brings the GICv3 up (once per boot; later calls return the first call's outcome):
    /// distributor with affinity routing and Group 1 on, every SPI disabled and routed to this
    /// CPU; this CPU's redistributor awake with LPIs on; the CPU interface taking Group 1 at
    /// every priority. Makes the IRQ handler use this GIC. No interrupt is enabled yet.
    ///
    /// # Safety
    /// `distributor` must be a GICv3's GICD frame and `redistributors` its redistributor region
    /// (from the devicetree), mapped as Device memory for the kernel's life, and nothing else
    /// may program the GIC meanwhile.
    pub unsafe fn init(
        distributor: usize,
        redistributors: Range<usize>,
    ) -> Result<&'static GicV3, GicV3Error> {
        let gic = GICV3.call_once(|| {
            // SAFETY: per this function's contract.
            unsafe { Self::bring_up(distributor, redistributors) }
        });
        gic.as_ref().map_err(|e| *e)
    }

    /// The GIC [`GicV3::init`] brought up, if it did.
    pub fn get() -> Option<&'static GicV3> {
        GICV3.get().and_then(|r| r.as_ref().ok())
    }

    /// # Safety
    /// As for [`GicV3::init`].
    unsafe fn bring_up(
        distributor: usize,
        redistributors: Range<usize>,
    ) -> Result<GicV3, GicV3Error> {
        // SAFETY: per the contract; the register cells are interior-mutable and accessed
        // volatilely, so shared references are sound.
        let dist = unsafe { &*(distributor as *const GicdRegisters) };
        let affinity = this_cpu_affinity();
        // SAFETY: per the contract, the region holds redistributor frames.
        let (redist, redist_base) = unsafe { find_redistributor(redistributors, affinity) }?;

        // Distributor: groups off while the SPIs are set up, affinity routing on.
        dist.ctlr.write(GICD_CTLR::ARE::SET);
        wait_distributor(dist)?;
        let lines = dist.typer.read(GICD_TYPER::ITLinesNumber) as usize + 1;
        for word in 1..lines.min(32) {
            dist.icenabler[word].set(u32::MAX);
            dist.icpendr[word].set(u32::MAX);
            dist.igroupr[word].set(u32::MAX);
        }
        wait_distributor(dist)?;
        dist.ctlr
            .write(GICD_CTLR::ARE::SET + GICD_CTLR::EnableGrp1::SET);
        wait_distributor(dist)?;

        // Redistributor: awake, then LPIs.
        redist.waker.modify(GICR_WAKER::ProcessorSleep::CLEAR);
        poll_until("the redistributor to wake", DEFAULT_POLL_BUDGET, || {
            !redist.waker.is_set(GICR_WAKER::ChildrenAsleep)
        })?;
        if !dist.typer.is_set(GICD_TYPER::LPIS) || !redist.typer.is_set(GICR_TYPER::PLPIS) {
            return Err(GicV3Error::NoLpis);
        }
        let id_bits = (dist.typer.read(GICD_TYPER::IDbits) + 1).min(LPI_ID_BITS);
        if id_bits < 14 {
            return Err(GicV3Error::NoLpis);
        }
        let intids = 1usize << id_bits;
        let config_len = intids - FIRST_LPI as usize;
        let lpi_config = leak_zeroed(config_len, 4096)?;
        // A bit per INTID, the first 1 KiB (INTIDs below 8192) included.
        let pending = leak_zeroed(intids / 8, 1 << 16)?;
        redist.propbaser.write(
            GICR_PROPBASER::IDbits.val(u64::from(id_bits - 1))
                + GICR_PROPBASER::InnerCache::WriteBackReadWriteAllocate
                + GICR_PROPBASER::Shareability::InnerShareable
                + GICR_PROPBASER::PhysicalAddress.val(lpi_config as u64 >> 12),
        );
        redist.pendbaser.write(
            GICR_PENDBASER::InnerCache::WriteBackReadWriteAllocate
                + GICR_PENDBASER::Shareability::InnerShareable
                + GICR_PENDBASER::PhysicalAddress.val(pending as u64 >> 16)
                + GICR_PENDBASER::PTZ::SET,
        );
        // The zeroed tables must be visible to the redistributor before it may read them.
        barrier::dsb(barrier::SY);
        redist.ctlr.modify(GICR_CTLR::EnableLPIs::SET);
        poll_until("GICR_CTLR.RWP to clear", DEFAULT_POLL_BUDGET, || {
            !redist.ctlr.is_set(GICR_CTLR::RWP)
        })?;

        init_cpu_interface(ExceptionLevel::current());
        super::gic::use_gicv3();
        Ok(GicV3 {
            dist,
            redist,
            // SAFETY: SGI_base is the 64 KiB frame after RD_base in every redistributor
            // (GICv3 and v4 strides alike), inside the region per `init`'s contract.
            sgi: unsafe { &*((redist_base + SGI_FRAME_OFFSET) as *const GicrSgiRegisters) },
            redist_base: redist_base as u64,
            affinity,
            lpi_config,
            lpis: FIRST_LPI..intids as u32,
        })
    }

    /// The LPIs the configuration table covers.
    pub fn lpis(&self) -> Range<u32> {
        self.lpis.clone()
    }

    /// This CPU's redistributor: its GICR_TYPER.Processor_Number and its RD_base address, the
    /// two ways an ITS may name it.
    pub fn redistributor(&self) -> (u16, u64) {
        (
            self.redist.typer.read(GICR_TYPER::ProcessorNumber) as u16,
            self.redist_base,
        )
    }

    /// Enables or disables LPI `lpi` in the configuration table, at the middle priority, and
    /// makes the write visible to the GIC. The redistributor may cache the entry: an ITS INV
    /// (or INVALL) for the event makes it re-read it.
    pub fn configure_lpi(&self, lpi: u32, enabled: bool) -> Result<(), GicV3Error> {
        if !self.lpis.contains(&lpi) {
            return Err(GicV3Error::NotAnLpi(lpi));
        }
        let entry = PRIORITY | LPI_CONFIG_RES1 | if enabled { LPI_CONFIG_ENABLE } else { 0 };
        // SAFETY: `lpi - FIRST_LPI` is inside the table (checked above), which lives forever.
        unsafe {
            self.lpi_config
                .add((lpi - FIRST_LPI) as usize)
                .write_volatile(entry)
        };
        barrier::dsb(barrier::SY);
        Ok(())
    }

    pub(super) fn spi_banks(&self) -> super::gic::SpiBanks<'_> {
        let d = self.dist;
        super::gic::SpiBanks {
            isenabler: &d.isenabler,
            icenabler: &d.icenabler,
            ispendr: &d.ispendr,
            icpendr: &d.icpendr,
        }
    }

    pub(super) fn check_spi(&self, intid: u32) -> Result<(usize, u32), GicError> {
        let lines = self.dist.typer.read(GICD_TYPER::ITLinesNumber) + 1;
        if intid < FIRST_SPI || intid >= (lines * 32).min(FIRST_SPECIAL_INTID) {
            return Err(GicError::NotAnSpi(intid));
        }
        Ok(((intid / 32) as usize, 1 << (intid % 32)))
    }

    /// Enables or disables PPI `intid` of this CPU in its redistributor: Group 1, middle
    /// priority (a PPI's trigger is fixed by its source).
    pub fn set_ppi(&self, intid: u32, enabled: bool) -> Result<(), GicError> {
        let bit = super::gic::ppi_bit(intid)?;
        if enabled {
            self.sgi.igroupr0.set(self.sgi.igroupr0.get() | bit);
            self.sgi.ipriorityr[intid as usize].set(PRIORITY);
            self.sgi.isenabler0.set(bit);
        } else {
            self.sgi.icenabler0.set(bit);
        }
        Ok(())
    }

    /// Configures SPI `intid` (disabled while it changes): Group 1, edge- or level-triggered,
    /// middle priority, routed to this CPU. Leaves it disabled.
    pub fn configure_spi(&self, intid: u32, edge: bool) -> Result<(), GicError> {
        let (word, bit) = self.check_spi(intid)?;
        let i = intid as usize;
        self.dist.icenabler[word].set(bit);
        self.dist.igroupr[word].set(self.dist.igroupr[word].get() | bit);
        let cfg = &self.dist.icfgr[i / 16];
        let edge_bit = 2 << (2 * (intid % 16));
        cfg.set(if edge {
            cfg.get() | edge_bit
        } else {
            cfg.get() & !edge_bit
        });
        self.dist.ipriorityr[i].set(PRIORITY);
        let a = self.affinity;
        self.dist.irouter[i - FIRST_SPI as usize].write(
            GICD_IROUTER::Aff0.val(u64::from(a & 0xff))
                + GICD_IROUTER::Aff1.val(u64::from(a >> 8 & 0xff))
                + GICD_IROUTER::Aff2.val(u64::from(a >> 16 & 0xff))
                + GICD_IROUTER::Aff3.val(u64::from(a >> 24)),
        );
        Ok(())
    }
}

/// Waits for the distributor to apply writes to GICD_CTLR and GICD_ICENABLER.
fn wait_distributor(dist: &GicdRegisters) -> Result<(), Timeout> {
    poll_until("GICD_CTLR.RWP to clear", DEFAULT_POLL_BUDGET, || {
        !dist.ctlr.is_set(GICD_CTLR::RWP)
    })
}

/// MPIDR_EL1's affinity fields packed as GICR_TYPER.Affinity_Value: Aff3 [39:32] moved down
/// to [31:24] above Aff2.Aff1.Aff0.
fn this_cpu_affinity() -> u32 {
    let mpidr = MPIDR_EL1.get();
    ((mpidr >> 32 & 0xff) << 24 | (mpidr & 0xff_ffff)) as u32
}

/// The redistributor serving the CPU of `affinity` in the region, and its address.
///
/// # Safety
/// `region` must hold a GICv3's redistributor frames, mapped as Device memory for the
/// kernel's life.
unsafe fn find_redistributor(
    region: Range<usize>,
    affinity: u32,
) -> Result<(&'static GicrRegisters, usize), GicV3Error> {
    let mut at = region.start;
    while at
        .checked_add(REDISTRIBUTOR_STRIDE)
        .is_some_and(|end| end <= region.end)
    {
        // SAFETY: `at` starts a redistributor frame inside the region (per the contract: the
        // region is a sequence of frames, each stride as its GICR_TYPER says).
        let redist = unsafe { &*(at as *const GicrRegisters) };
        let typer = redist.typer.extract();
        if typer.read(GICR_TYPER::AffinityValue) as u32 == affinity {
            return Ok((redist, at));
        }
        if typer.is_set(GICR_TYPER::Last) {
            break;
        }
        at += if typer.is_set(GICR_TYPER::VLPIS) {
            REDISTRIBUTOR_STRIDE_V4
        } else {
            REDISTRIBUTOR_STRIDE
        };
    }
    Err(GicV3Error::NoRedistributor { affinity })
}

/// Zeroed memory from the heap that is never freed, at a physical address (the heap is
/// identity-mapped).
fn leak_zeroed(size: usize, align: usize) -> Result<*mut u8, GicV3Error> {
    let layout = Layout::from_size_align(size, align).map_err(|_| GicV3Error::OutOfMemory)?;
    // SAFETY: `layout` has a non-zero size (every caller asks for at least 1 KiB).
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        Err(GicV3Error::OutOfMemory)
    } else {
        Ok(p)
    }
}

// The CPU interface's system registers (IHI 0069H, the ICC_* register descriptions), named by
// encoding so that any assembler accepts them.
/// ICC_SRE_EL1 / ICC_SRE_EL2 bit 0: system-register interface enabled; EL2's bit 3 (Enable)
/// lets EL1 use it too.
const ICC_SRE_SRE: u64 = 1 << 0;
const ICC_SRE_EL2_ENABLE: u64 = 1 << 3;

/// Enables the system-register CPU interface at `el` and lets Group 1 interrupts of every
/// priority through. At EL2 the virtual CPU interface stays off (ICH_HCR_EL2.En = 0): the
/// kernel takes physical interrupts itself, routed to EL2 by HCR_EL2.IMO around the code that
/// unmasks them (`gic::with_irqs_unmasked`).
fn init_cpu_interface(el: ExceptionLevel) {
    // SAFETY: these writes configure this CPU's own GIC CPU interface; none touches memory.
    unsafe {
        if el == ExceptionLevel::El2 {
            asm!("msr S3_4_C12_C9_5, {}", in(reg) ICC_SRE_SRE | ICC_SRE_EL2_ENABLE, options(nomem, nostack)); // ICC_SRE_EL2
            asm!("isb", options(nomem, nostack));
            asm!("msr S3_4_C12_C11_0, xzr", options(nomem, nostack)); // ICH_HCR_EL2
        }
        asm!("msr S3_0_C12_C12_5, {}", in(reg) ICC_SRE_SRE, options(nomem, nostack)); // ICC_SRE_EL1
        asm!("isb", options(nomem, nostack));
        asm!("msr S3_0_C4_C6_0, {}", in(reg) 0xffu64, options(nomem, nostack)); // ICC_PMR_EL1
        asm!("msr S3_0_C12_C12_3, xzr", options(nomem, nostack)); // ICC_BPR1_EL1
                                                                  // ICC_CTLR_EL1.EOImode = 0: the EOIR write both drops priority and deactivates.
        asm!("msr S3_0_C12_C12_4, xzr", options(nomem, nostack)); // ICC_CTLR_EL1
        asm!("msr S3_0_C12_C12_7, {}", in(reg) 1u64, options(nomem, nostack)); // ICC_IGRPEN1_EL1
        asm!("isb", options(nomem, nostack));
    }
}

/// Called by the IRQ vector through `gic::handle_irq` once [`GicV3::init`] ran: acknowledges
/// the highest-priority Group 1 interrupt (ICC_IAR1_EL1), records it and ends it
/// (ICC_EOIR1_EL1).
pub(super) fn handle_irq() -> bool {
    let Some(intid) = acknowledge() else {
        // Spurious: nothing was acknowledged, so nothing is ended.
        return true;
    };
    super::gic::record_irq(intid);
    end_of_interrupt(intid);
    true
}

/// Acknowledges the highest-priority pending Group 1 interrupt of this CPU's interface
/// (ICC_IAR1_EL1; at EL2 the physical one, at EL1 under a hypervisor's HCR_EL2.IMO the
/// virtual one); None when nothing is pending (a special INTID).
pub fn acknowledge() -> Option<u32> {
    let iar: u64;
    // SAFETY: acknowledging changes only the GIC's state for this interrupt, which the caller
    // ends with `end_of_interrupt`. Not `nomem`: it must not move across the caller's records.
    unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nostack)) }; // ICC_IAR1_EL1
    let intid = (iar & 0xff_ffff) as u32;
    (!(FIRST_SPECIAL_INTID..FIRST_SPECIAL_INTID + 4).contains(&intid)).then_some(intid)
}

/// Ends interrupt `intid` that `acknowledge` returned (priority drop and deactivation).
pub fn end_of_interrupt(intid: u32) {
    // SAFETY: ends an interrupt this CPU acknowledged.
    unsafe { asm!("msr S3_0_C12_C12_1, {}", in(reg) u64::from(intid), options(nostack)) };
    // ICC_EOIR1_EL1
}
