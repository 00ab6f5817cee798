//! The boot identity map (virtual address == physical address) of the first TiB in 1 GiB
//! blocks: the `virt` board's RAM window as Normal write-back memory, everything else (PL011,
//! GIC, SMMU, PCIe ECAM and MMIO windows, high and low) as Device-nGnRnE. The first GiB of RAM,
//! where the kernel is, is mapped in 2 MiB blocks instead, to leave the stack guard unmapped.
//!
//! One map for the whole run: DMA buffers, IOMMU tables and queues live in RAM, which the
//! SMMU on `virt` reaches coherently (IDR0.COHACC), so no other attribute is needed.

use super::ExceptionLevel;
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL1, MAIR_EL2, SCTLR_EL1, SCTLR_EL2, TCR_EL1,
    TCR_EL2, TTBR0_EL1, TTBR0_EL2,
};
use core::arch::asm;
use core::cell::UnsafeCell;
use core::ops::Range;
use tock_registers::fields::FieldValue;
use tock_registers::{register_bitfields, RegisterLongName};

/// Descriptors per table with the 4 KiB granule.
const ENTRIES: usize = 512;
/// Virtual address bits. 40 reaches the board's high PCIe MMIO window (512 GiB to 1 TiB) and
/// its high ECAM (0x40_1000_0000); with the 4 KiB granule, T0SZ = 64 - 40 = 24 makes level 0
/// the initial lookup level, with two entries, each over one level-1 table of 1 GiB blocks.
const VA_BITS: u64 = 40;
const LEVEL1_TABLES: usize = 2;
/// Level-1 blocks are 1 GiB, level-2 blocks 2 MiB.
const LEVEL1_BLOCK_SHIFT: u32 = 30;
const LEVEL2_BLOCK_SHIFT: u32 = 21;
/// The board's RAM window (QEMU hw/arm/virt.c, VIRT_MEM: 1 GiB up to 256 GiB). QEMU places
/// only RAM there, so mapping all of it Normal, whatever `-m` says, can never let the CPU
/// speculate into a device.
pub(super) const RAM_WINDOW: Range<u64> = 0x4000_0000..0x40_0000_0000;
/// The GiB mapped through the level-2 table: the first of RAM, holding the kernel image and
/// its stacks (boot/aarch64.ld checks that the stack guard is in it).
const LEVEL2_GIB: u64 = 0x4000_0000;

/// RES1 bits of SCTLR_EL1 in the Armv8.0 layout (29, 28, 23, 22, 20, 11). On later CPUs they
/// are feature controls for which 1 keeps the Armv8.0 behaviour.
const SCTLR_EL1_RES1: FieldValue<u64, SCTLR_EL1::Register> = res1(0x30d0_0800);
/// RES1 bits of SCTLR_EL2 with HCR_EL2.E2H = 0 (29, 28, 23, 22, 18, 16, 11, 5, 4).
const SCTLR_EL2_RES1: FieldValue<u64, SCTLR_EL2::Register> = res1(0x30c5_0830);
/// RES1 bits of TCR_EL2 with HCR_EL2.E2H = 0 (31, 23).
const TCR_EL2_RES1: FieldValue<u64, TCR_EL2::Register> = res1(0x8080_0000);

/// Sets the `bits` that aarch64-cpu has no fields for because they are RES1.
const fn res1<R: RegisterLongName>(bits: u64) -> FieldValue<u64, R> {
    FieldValue::<u64, R>::new(bits, 0, bits)
}

register_bitfields! {u64,
    /// VMSAv8-64 stage-1 table descriptor (Arm ARM D8.3.1), used at levels 0 and 1.
    TABLE_DESCRIPTOR [
        VALID OFFSET(0) NUMBITS(1) [],
        TYPE OFFSET(1) NUMBITS(1) [Table = 1],
        /// Bits [47:12] of the next-level table's physical address.
        NEXT_LEVEL_TABLE_ADDR OFFSET(12) NUMBITS(36) [],
    ],
    /// VMSAv8-64 stage-1 block descriptor, 1 GiB at level 1 or 2 MiB at level 2 (Arm ARM
    /// D8.3.1; attributes D8.3.2).
    BLOCK_DESCRIPTOR [
        VALID OFFSET(0) NUMBITS(1) [],
        TYPE OFFSET(1) NUMBITS(1) [Block = 0],
        /// Index into MAIR_ELx, as `enable_el1` and `enable_el2` program it.
        ATTR_INDX OFFSET(2) NUMBITS(3) [Normal = 0, Device = 1],
        /// AP[2:1]. EL1&0 regime: 0b00 is read/write at EL1, no access at EL0. EL2 regime
        /// (one privilege level): AP[1] is RES1, so read/write is 0b01.
        AP OFFSET(6) NUMBITS(2) [El1ReadWrite = 0b00, El2ReadWrite = 0b01],
        /// Device memory ignores it (always Outer Shareable); RAM is shared with the SMMU's
        /// table walks and DMA, so Inner Shareable like every CPU.
        SH OFFSET(8) NUMBITS(2) [OuterShareable = 0b10, InnerShareable = 0b11],
        /// Access flag. Hardware AF updates are off (TCR.HA = 0): a clear AF would fault.
        AF OFFSET(10) NUMBITS(1) [],
        /// Bits [47:12] of the output address; those below the block size must be 0.
        OUTPUT_ADDR OFFSET(12) NUMBITS(36) [],
        /// EL1&0 regime: no execution at EL1. RES0 in the EL2 regime.
        PXN OFFSET(53) NUMBITS(1) [],
        /// EL1&0 regime: no execution at EL0. EL2 regime: no execution (XN).
        UXN_XN OFFSET(54) NUMBITS(1) [],
    ]
}

#[repr(C, align(4096))]
struct Table([u64; ENTRIES]);

#[repr(C)]
struct Tables {
    level0: Table,
    level1: [Table; LEVEL1_TABLES],
    /// The 2 MiB blocks of [`LEVEL2_GIB`].
    level2: Table,
}

/// The translation tables. Zero-initialised, so they live in `.bss`.
struct TablesCell(UnsafeCell<Tables>);

// SAFETY: `enable_identity_map` writes the tables once, on the boot CPU, before any other code
// runs; afterwards only the table walker reads them.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    level0: Table([0; ENTRIES]),
    level1: [Table([0; ENTRIES]), Table([0; ENTRIES])],
    level2: Table([0; ENTRIES]),
}));

unsafe extern "C" {
    // Bounds from boot/aarch64.ld.
    static __bss_start: u8;
    static __boot_stack_top: u8;
    static __stack_guard_start: u8;
    static __stack_guard_end: u8;
}

/// Builds the identity map and turns on the MMU and the caches at `el`.
///
/// # Safety
/// Call once, on the boot CPU, at exception level `el`, with the MMU and caches off (as QEMU
/// starts the kernel), before any code relies on the state of `.bss` or the stack being
/// cacheable. The map keeps every address identical, so the running code is not disturbed.
pub(super) unsafe fn enable_identity_map(el: ExceptionLevel) {
    // SAFETY: this is the only call (this function's contract), so nothing else refers to the
    // tables, and the MMU, which would read them, is off.
    let level0 = unsafe { build_tables(el) };

    // With the MMU off every store went to memory uncached, but the caches may hold lines for
    // these addresses from before the kernel started (their contents are UNKNOWN after reset):
    // the table walker and, once caches are on, the CPU would read those instead. Discard
    // them for everything written so far: `.bss` (with the tables) and the stacks. The loaded
    // image itself is the loader's to clean (QEMU writes memory directly). The stores must be
    // complete first, and the invalidation before the first table walk.
    barrier::dsb(barrier::SY);
    invalidate_data_cache((&raw const __bss_start) as u64..(&raw const __boot_stack_top) as u64);
    barrier::dsb(barrier::SY);

    // PARange and TCR.IPS/PS share their encoding. 52 bits (0b0110) would need the LPA2 table
    // format with the 4 KiB granule; the map ends at 1 TiB, so 48 bits is plenty.
    let pa_size = ID_AA64MMFR0_EL1.read(ID_AA64MMFR0_EL1::PARange).min(0b0101);
    match el {
        ExceptionLevel::El1 => enable_el1(level0, pa_size),
        ExceptionLevel::El2 => enable_el2(level0, pa_size),
    }

    // From here instructions are fetched with the MMU on. Some may sit in the instruction
    // cache from before the kernel started: discard them, as for the data.
    // SAFETY: invalidating the instruction cache only costs refetches.
    unsafe { asm!("ic iallu", options(nostack, preserves_flags)) };
    barrier::dsb(barrier::NSH);
    barrier::isb(barrier::SY);
}

/// Fills the tables for `el`'s regime and returns the address of the level-0 table.
///
/// # Safety
/// Nothing else may refer to the tables during the call, and the MMU must not be using them.
unsafe fn build_tables(el: ExceptionLevel) -> u64 {
    // SAFETY: exclusive access per this function's contract. The reference ends with the
    // call, so the barriers that follow it order every store made through it.
    let tables = unsafe { &mut *TABLES.0.get() };
    for (entry, table) in tables.level0.0.iter_mut().zip(&tables.level1) {
        *entry = table_descriptor(core::ptr::from_ref(table) as u64);
    }
    let blocks = tables
        .level1
        .iter_mut()
        .flat_map(|table| table.0.iter_mut());
    for (index, entry) in blocks.enumerate() {
        *entry = block_descriptor((index as u64) << LEVEL1_BLOCK_SHIFT, el);
    }
    let guard = stack_guard();
    for (index, entry) in tables.level2.0.iter_mut().enumerate() {
        let address = LEVEL2_GIB + ((index as u64) << LEVEL2_BLOCK_SHIFT);
        *entry = if guard.contains(&address) {
            INVALID_DESCRIPTOR
        } else {
            block_descriptor(address, el)
        };
    }
    let level2 = (&raw const tables.level2) as u64;
    tables.level1[0].0[(LEVEL2_GIB >> LEVEL1_BLOCK_SHIFT) as usize] = table_descriptor(level2);
    (&raw const tables.level0) as u64
}

/// Programs the EL1&0 regime with the tables at `level0` and turns on the MMU and caches.
fn enable_el1(level0: u64, pa_size: u64) {
    MAIR_EL1.write(
        MAIR_EL1::Attr0_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL1::Attr0_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL1::Attr1_Device::nonGathering_nonReordering_noEarlyWriteAck,
    );
    TCR_EL1.write(
        TCR_EL1::T0SZ.val(64 - VA_BITS)
            + TCR_EL1::TG0::KiB_4
            + TCR_EL1::SH0::Inner
            + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL1::EPD0::EnableTTBR0Walks
            // Nothing lives in the upper (TTBR1) half; TG1 still needs a valid value.
            + TCR_EL1::EPD1::DisableTTBR1Walks
            + TCR_EL1::TG1::KiB_4
            + TCR_EL1::IPS.val(pa_size),
    );
    TTBR0_EL1.set_baddr(level0);
    // The new MAIR/TCR/TTBR0 must be in effect before the MMU is.
    barrier::isb(barrier::SY);
    // SAFETY: invalidates this CPU's EL1&0 TLB entries, which are UNKNOWN after reset and
    // unused while the MMU is off.
    unsafe { asm!("tlbi vmalle1", options(nostack, preserves_flags)) };
    barrier::dsb(barrier::NSH);
    barrier::isb(barrier::SY);
    SCTLR_EL1.write(
        SCTLR_EL1::M::Enable
            + SCTLR_EL1::C::Cacheable
            + SCTLR_EL1::I::Cacheable
            + SCTLR_EL1::SA::Enable
            + SCTLR_EL1::SA0::Enable
            + SCTLR_EL1::A::Disable
            + SCTLR_EL1::WXN::Disable
            + SCTLR_EL1::EE::LittleEndian
            + SCTLR_EL1::E0E::LittleEndian
            + SCTLR_EL1_RES1,
    );
    barrier::isb(barrier::SY);
}

/// Programs the EL2 regime (non-VHE: `_start` cleared HCR_EL2.E2H, so one VA range, TTBR0
/// only) with the tables at `level0` and turns on the MMU and caches.
fn enable_el2(level0: u64, pa_size: u64) {
    MAIR_EL2.write(
        MAIR_EL2::Attr0_Normal_Outer::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL2::Attr0_Normal_Inner::WriteBack_NonTransient_ReadWriteAlloc
            + MAIR_EL2::Attr1_Device::nonGathering_nonReordering_noEarlyWriteAck,
    );
    TCR_EL2.write(
        TCR_EL2::T0SZ.val(64 - VA_BITS)
            + TCR_EL2::TG0::KiB_4
            + TCR_EL2::SH0::Inner
            + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
            + TCR_EL2::PS.val(pa_size)
            + TCR_EL2_RES1,
    );
    TTBR0_EL2.set_baddr(level0);
    barrier::isb(barrier::SY);
    // SAFETY: invalidates this CPU's EL2 TLB entries, UNKNOWN after reset and unused while
    // the MMU is off.
    unsafe { asm!("tlbi alle2", options(nostack, preserves_flags)) };
    barrier::dsb(barrier::NSH);
    barrier::isb(barrier::SY);
    SCTLR_EL2.write(
        SCTLR_EL2::M::Enable
            + SCTLR_EL2::C::Cacheable
            + SCTLR_EL2::I::Cacheable
            + SCTLR_EL2::SA::Enable
            + SCTLR_EL2::A::Disable
            + SCTLR_EL2::WXN::Disable
            + SCTLR_EL2::EE::Little
            + SCTLR_EL2_RES1,
    );
    barrier::isb(barrier::SY);
}

/// A descriptor with VALID clear: any access through it faults.
const INVALID_DESCRIPTOR: u64 = 0;

/// The 2 MiB below the stacks that the map leaves out.
pub(super) fn stack_guard() -> Range<u64> {
    (&raw const __stack_guard_start) as u64..(&raw const __stack_guard_end) as u64
}

fn table_descriptor(next_level_table: u64) -> u64 {
    (TABLE_DESCRIPTOR::VALID::SET
        + TABLE_DESCRIPTOR::TYPE::Table
        + TABLE_DESCRIPTOR::NEXT_LEVEL_TABLE_ADDR.val(next_level_table >> 12))
    .value
}

/// The identity-mapping block at `address` (1 GiB or 2 MiB, by the level it is stored at), in
/// the format of `el`'s regime.
fn block_descriptor(address: u64, el: ExceptionLevel) -> u64 {
    let common = BLOCK_DESCRIPTOR::VALID::SET
        + BLOCK_DESCRIPTOR::TYPE::Block
        + BLOCK_DESCRIPTOR::AF::SET
        + BLOCK_DESCRIPTOR::OUTPUT_ADDR.val(address >> 12)
        + match el {
            ExceptionLevel::El1 => BLOCK_DESCRIPTOR::AP::El1ReadWrite,
            ExceptionLevel::El2 => BLOCK_DESCRIPTOR::AP::El2ReadWrite,
        };
    let ram = RAM_WINDOW.contains(&address);
    let attributes = match (ram, el) {
        // The kernel runs from RAM: executable at its own level, never at EL0.
        (true, ExceptionLevel::El1) => {
            BLOCK_DESCRIPTOR::ATTR_INDX::Normal
                + BLOCK_DESCRIPTOR::SH::InnerShareable
                + BLOCK_DESCRIPTOR::UXN_XN::SET
        }
        (true, ExceptionLevel::El2) => {
            BLOCK_DESCRIPTOR::ATTR_INDX::Normal + BLOCK_DESCRIPTOR::SH::InnerShareable
        }
        // Execute-never: a speculative instruction fetch must not touch a device.
        (false, ExceptionLevel::El1) => {
            BLOCK_DESCRIPTOR::ATTR_INDX::Device
                + BLOCK_DESCRIPTOR::SH::OuterShareable
                + BLOCK_DESCRIPTOR::PXN::SET
                + BLOCK_DESCRIPTOR::UXN_XN::SET
        }
        (false, ExceptionLevel::El2) => {
            BLOCK_DESCRIPTOR::ATTR_INDX::Device
                + BLOCK_DESCRIPTOR::SH::OuterShareable
                + BLOCK_DESCRIPTOR::UXN_XN::SET
        }
    };
    (common + attributes).value
}

/// Invalidates (without writing back) the data cache lines covering `range`, to the point of
/// coherency.
fn invalidate_data_cache(range: Range<u64>) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects (and is not trapped at EL1/EL2).
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    // CTR_EL0.DminLine: log2 of the smallest data cache line, in 4-byte words.
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut address = range.start & !(line - 1);
    while address < range.end {
        // SAFETY: `range` holds only data this CPU wrote with the caches off, so memory is
        // up to date and discarding any cached copy loses nothing.
        unsafe { asm!("dc ivac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
}
