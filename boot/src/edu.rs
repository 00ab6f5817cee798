//! Driver for QEMU's `edu` device (vendor 0x1234, device 0x11e8): a PCI device with a DMA engine
//! that copies between its 4 KiB internal buffer and bus addresses. Through an IOMMU, those bus
//! addresses are IOVAs: this is the device every in-QEMU test uses to prove a translation.
//!
//! Register map (QEMU docs/specs/edu.rst; BAR0): 0x00 identification, 0x04 liveness (reads back
//! the inverse), 0x80 DMA source, 0x88 DMA destination, 0x90 DMA count, 0x98 DMA command
//! (bit 0 start / busy, bit 1 direction: 1 = buffer → RAM, bit 2 raise an interrupt when done).
//! A DMA completes on a 100 ms virtual-clock timer. Interrupts: 0x24 status, 0x60 raise (ORs the
//! value into the status and signals: one MSI per write while MSI is enabled, else INTx), 0x64
//! acknowledge (clears those status bits).
//!
//! [`Edu::copy_in`] and [`Edu::copy_out`] are what a driver over the DMA API looks like: a
//! buffer in, a device address out, unmapped when the transfer ends.

use core::fmt;

use iommu::addr::PhysAddr;
use iommu::dma::{Direction, DmaDevice, DmaError, DmaHal};

pub const VENDOR_ID: u16 = 0x1234;
pub const DEVICE_ID: u16 = 0x11e8;
/// Device-internal address of the DMA buffer, as the DMA registers name it.
pub const BUFFER_ADDR: u64 = 0x40000;
pub const BUFFER_SIZE: u64 = 4096;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;

const CMD_START: u64 = 1 << 0;
const CMD_TO_RAM: u64 = 1 << 1;

/// How many polls a DMA gets. A poll is an MMIO read (a trip into QEMU, about a microsecond
/// under TCG); the transfer takes 100 ms of virtual time, so this allows several seconds.
const DMA_POLL_BUDGET: u32 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EduError {
    /// The transfer does not fit in the device's 4 KiB buffer.
    OutOfBuffer,
    /// The DMA did not finish within the poll budget.
    Timeout,
    /// The identification register does not read as an `edu` device.
    NotEdu(u32),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfBuffer => write!(f, "transfer does not fit in edu's 4 KiB buffer"),
            Self::Timeout => write!(f, "edu DMA did not complete"),
            Self::NotEdu(id) => write!(f, "identification register {id:#x} is not edu's"),
        }
    }
}

/// Why a transfer through the DMA API failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EduDmaError {
    /// The DMA API refused the buffer.
    Dma(DmaError),
    /// The device did.
    Edu(EduError),
}

impl fmt::Display for EduDmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dma(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
        }
    }
}

/// One `edu` device, reached through its BAR0 mapping.
pub struct Edu {
    bar0: usize,
}

impl Edu {
    /// # Safety
    /// `bar0` must map the device's BAR0 (1 MiB) as device memory while this value is used, and
    /// bus mastering must be enabled in its command register for DMA to run.
    pub unsafe fn new(bar0: usize) -> Result<Self, EduError> {
        let edu = Self { bar0 };
        let id = edu.read32(REG_ID);
        // 0xRRrr00ed: major, minor version, then the 0xed magic.
        if id & 0xff != 0xed {
            return Err(EduError::NotEdu(id));
        }
        Ok(edu)
    }

    fn read32(&self, reg: usize) -> u32 {
        // SAFETY: `reg` is one of the register offsets above, inside BAR0 (see `new`).
        unsafe { core::ptr::read_volatile((self.bar0 + reg) as *const u32) }
    }

    fn write32(&self, reg: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { core::ptr::write_volatile((self.bar0 + reg) as *mut u32, value) }
    }

    fn read64(&self, reg: usize) -> u64 {
        // SAFETY: as in `read32`; registers from 0x80 accept 8-byte accesses.
        unsafe { core::ptr::read_volatile((self.bar0 + reg) as *const u64) }
    }

    fn write64(&self, reg: usize, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { core::ptr::write_volatile((self.bar0 + reg) as *mut u64, value) }
    }

    /// The address of BAR0 this value reaches the device through.
    pub fn bar0(&self) -> u64 {
        self.bar0 as u64
    }

    /// The identification register (0x010000ed for version 1.0).
    pub fn id(&self) -> u32 {
        self.read32(REG_ID)
    }

    /// Checks the device answers: the liveness register reads back the inverse of what is written.
    pub fn is_alive(&self) -> bool {
        self.write32(REG_LIVENESS, 0x1234_5678);
        self.read32(REG_LIVENESS) == !0x1234_5678
    }

    /// Raises the device's interrupt with the status bits `bits` (non-zero): with MSI enabled,
    /// the device writes its MSI message once, through the IOMMU like any DMA.
    pub fn raise_interrupt(&self, bits: u32) {
        self.write32(REG_IRQ_RAISE, bits);
    }

    /// Clears the interrupt status bits `bits` (and lowers INTx once none is left).
    pub fn acknowledge_interrupt(&self, bits: u32) {
        self.write32(REG_IRQ_ACK, bits);
    }

    /// The interrupt status register.
    pub fn interrupt_status(&self) -> u32 {
        self.read32(REG_IRQ_STATUS)
    }

    /// Copies `len` bytes from bus address `iova` into the device buffer at `offset`, and waits.
    pub fn dma_from_ram(&self, iova: u64, offset: u64, len: u64) -> Result<(), EduError> {
        check_buffer(offset, len)?;
        self.run(iova, BUFFER_ADDR + offset, len, 0)
    }

    /// Copies `len` bytes from the device buffer at `offset` to bus address `iova`, and waits.
    pub fn dma_to_ram(&self, offset: u64, iova: u64, len: u64) -> Result<(), EduError> {
        check_buffer(offset, len)?;
        self.run(BUFFER_ADDR + offset, iova, len, CMD_TO_RAM)
    }

    /// Copies the `len` bytes at `buf` into the device buffer at `offset`, as a driver does:
    /// `dma` maps the buffer for the transfer and unmaps it after, whatever the path (IOVA,
    /// bounce slot, the buffer itself).
    pub fn copy_in<H: DmaHal>(
        &self,
        dma: &DmaDevice<'_, H>,
        buf: PhysAddr,
        offset: u64,
        len: u64,
    ) -> Result<(), EduDmaError> {
        check_buffer(offset, len).map_err(EduDmaError::Edu)?;
        let addr = dma
            .map(buf, len, Direction::ToDevice)
            .map_err(EduDmaError::Dma)?;
        let moved = self.dma_from_ram(addr.0, offset, len);
        dma.unmap(addr, len).map_err(EduDmaError::Dma)?;
        moved.map_err(EduDmaError::Edu)
    }

    /// Copies `len` bytes of the device buffer at `offset` out to `buf` through `dma`; the data
    /// is in `buf` for the CPU when this returns.
    pub fn copy_out<H: DmaHal>(
        &self,
        dma: &DmaDevice<'_, H>,
        offset: u64,
        buf: PhysAddr,
        len: u64,
    ) -> Result<(), EduDmaError> {
        check_buffer(offset, len).map_err(EduDmaError::Edu)?;
        let addr = dma
            .map(buf, len, Direction::FromDevice)
            .map_err(EduDmaError::Dma)?;
        let moved = self.dma_to_ram(offset, addr.0, len);
        dma.unmap(addr, len).map_err(EduDmaError::Dma)?;
        moved.map_err(EduDmaError::Edu)
    }

    fn run(&self, src: u64, dst: u64, len: u64, direction: u64) -> Result<(), EduError> {
        // A previous transfer that timed out may still be running; the device ignores register
        // writes until it ends.
        self.wait()?;
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, len);
        self.write64(REG_DMA_CMD, CMD_START | direction);
        self.wait()
    }

    fn wait(&self) -> Result<(), EduError> {
        for _ in 0..DMA_POLL_BUDGET {
            if self.read64(REG_DMA_CMD) & CMD_START == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(EduError::Timeout)
    }
}

fn check_buffer(offset: u64, len: u64) -> Result<(), EduError> {
    match offset.checked_add(len) {
        Some(end) if len > 0 && end <= BUFFER_SIZE => Ok(()),
        _ => Err(EduError::OutOfBuffer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_bounds() {
        assert_eq!(check_buffer(0, 4096), Ok(()));
        assert_eq!(check_buffer(4095, 1), Ok(()));
        assert_eq!(check_buffer(4095, 2), Err(EduError::OutOfBuffer));
        assert_eq!(check_buffer(0, 0), Err(EduError::OutOfBuffer));
        assert_eq!(check_buffer(u64::MAX, 2), Err(EduError::OutOfBuffer));
    }
}
