//! PCI configuration access, enumeration and BAR assignment for the test kernels.
//!
//! Two ways in: x86 port I/O (0xCF8/0xCFC, 256 bytes per function) and ECAM (a memory window,
//! 4 KiB per function), which `-machine virt` describes in its devicetree. On q35 the firmware
//! assigns BARs; on `virt` nothing does, so [`assign_memory_bars`] does it from the host bridge's
//! MMIO window. On x86 the ACPI MCFG table ([`ecam_windows`]) gives the ECAM window too, and
//! only through it are the extended capabilities (ATS, [`AtsCapability`]) reachable.

/// A PCI function address; its 16-bit form is the requester id an IOMMU sees. One type for
/// the whole project, from the core crate.
pub use iommu::pci::Bdf;

mod ats;
pub use ats::{extended, find_extended_capability, AtsCapability, AtsError};
mod mcfg;
pub use mcfg::{ecam_windows, EcamWindow};

/// Configuration-space offsets used here (PCI Local Bus Specification 3.0, 6.1).
pub mod offset {
    pub const VENDOR_DEVICE: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const CLASS_REVISION: u16 = 0x08;
    pub const HEADER_TYPE: u16 = 0x0c;
    pub const BAR0: u16 = 0x10;
    /// Type-1 (bridge) header: primary, secondary, subordinate bus numbers (PCI-to-PCI Bridge
    /// Architecture 1.2, 3.2).
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Type-1 header: non-prefetchable memory base and limit, 16 bits each (PCI-to-PCI Bridge
    /// Architecture 1.2, 3.2.5.8).
    pub const MEMORY_BASE_LIMIT: u16 = 0x20;
    /// Type-1 header: prefetchable memory base and limit (PCI-to-PCI Bridge 1.2, 3.2.5.9).
    pub const PREFETCHABLE_BASE_LIMIT: u16 = 0x24;
    pub const CAPABILITIES: u16 = 0x34;
}

/// The PCI Express capability's id and its device/port type field (PCIe base 7.5.3.2).
const CAP_ID_PCIE: u8 = 0x10;
const PCIE_TYPE_PCI_BRIDGE: u16 = 0x7;

/// Command register bits (PCI 3.0, 6.2.2).
pub mod command {
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
}

/// 32-bit configuration reads and writes of one segment.
pub trait ConfigAccess {
    /// Reads the aligned dword at `offset`. A function that is not there reads as all ones.
    fn read32(&self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&self, bdf: Bdf, offset: u16, value: u32);

    fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        (self.read32(bdf, offset & !3) >> ((offset & 2) * 8)) as u16
    }

    fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        let aligned = offset & !3;
        let shift = (offset & 2) * 8;
        let old = self.read32(bdf, aligned) & !(0xffff << shift);
        self.write32(bdf, aligned, old | (value as u32) << shift);
    }
}

/// ECAM: each function's configuration space is 4 KiB at `base + (bus << 20 | dev << 15 | fn << 12)`.
pub struct Ecam {
    base: usize,
    /// The first bus the window covers (devicetree `bus-range`).
    first_bus: u8,
    /// Number of buses the window covers.
    buses: u16,
}

impl Ecam {
    /// # Safety
    /// `base` must map an ECAM window of `buses` buses (1 MiB each) as device memory, starting at
    /// bus `first_bus`, for as long as this value is used.
    pub unsafe fn new(base: usize, first_bus: u8, buses: u16) -> Self {
        Self {
            base,
            first_bus,
            buses,
        }
    }

    fn addr(&self, bdf: Bdf, offset: u16) -> Option<usize> {
        let bus = bdf.bus.checked_sub(self.first_bus)? as usize;
        if bus >= self.buses as usize || offset > 0xffc {
            return None;
        }
        Some(
            self.base
                + (bus << 20 | (bdf.device as usize) << 15 | (bdf.function as usize) << 12)
                + (offset & !3) as usize,
        )
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.addr(bdf, offset) {
            // SAFETY: `addr` is inside the window `new`'s caller guaranteed is mapped.
            Some(a) => unsafe { core::ptr::read_volatile(a as *const u32) },
            None => u32::MAX,
        }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(a) = self.addr(bdf, offset) {
            // SAFETY: as in `read32`.
            unsafe { core::ptr::write_volatile(a as *mut u32, value) }
        }
    }
}

/// x86 configuration mechanism #1: address to port 0xCF8, data at 0xCFC.
#[cfg(target_arch = "x86_64")]
pub struct PortIo;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl PortIo {
    fn select(bdf: Bdf, offset: u16) {
        let addr = 1u32 << 31
            | (bdf.bus as u32) << 16
            | (bdf.device as u32) << 11
            | (bdf.function as u32) << 8
            | (offset as u32 & 0xfc);
        // SAFETY: 0xCF8 is the PCI configuration address port on every PC-compatible machine;
        // writing it only selects a register.
        unsafe { x86_64::instructions::port::Port::new(0xcf8).write(addr) }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
impl ConfigAccess for PortIo {
    fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        if offset > 0xfc {
            return u32::MAX;
        }
        Self::select(bdf, offset);
        // SAFETY: 0xCFC is the configuration data port for the register selected above.
        unsafe { x86_64::instructions::port::Port::new(0xcfc).read() }
    }

    fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if offset > 0xfc {
            return;
        }
        Self::select(bdf, offset);
        // SAFETY: as in `read32`.
        unsafe { x86_64::instructions::port::Port::new(0xcfc).write(value) }
    }
}

/// A function found by [`enumerate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    /// Class code (base, sub, prog-if) in bits 31:8, revision in 7:0.
    pub class_revision: u32,
}

/// Every function present on bus `bus` (multi-function devices included).
pub fn enumerate(cfg: &impl ConfigAccess, bus: u8) -> impl Iterator<Item = Function> + '_ {
    (0..32u8).flat_map(move |dev| {
        let multi = cfg.read32(Bdf::new(bus, dev, 0), offset::HEADER_TYPE) >> 16 & 0x80 != 0;
        let functions = if multi { 8 } else { 1 };
        (0..functions).filter_map(move |f| {
            let bdf = Bdf::new(bus, dev, f);
            let id = cfg.read32(bdf, offset::VENDOR_DEVICE);
            (id & 0xffff != 0xffff).then(|| Function {
                bdf,
                vendor: id as u16,
                device: (id >> 16) as u16,
                class_revision: cfg.read32(bdf, offset::CLASS_REVISION),
            })
        })
    })
}

/// If `bdf` is a bridge (type-1 header): its secondary bus and how it treats the requester ids of
/// what is below it (a PCIe port keeps them; a PCIe-to-PCI bridge or a conventional bridge
/// takes ownership, see [`iommu::pci::Bridge`]).
pub fn bridge(cfg: &impl ConfigAccess, bdf: Bdf) -> Option<(u8, iommu::pci::Bridge)> {
    use iommu::pci::Bridge;
    if cfg.read32(bdf, offset::HEADER_TYPE) >> 16 & 0x7f != 1 {
        return None;
    }
    let secondary = (cfg.read32(bdf, offset::BUS_NUMBERS) >> 8) as u8;
    let kind = match pcie_port_type(cfg, bdf) {
        Some(PCIE_TYPE_PCI_BRIDGE) => Bridge::PcieToPci { secondary },
        Some(_) => Bridge::PciePort,
        None => Bridge::Conventional { id: bdf },
    };
    Some((secondary, kind))
}

/// The device/port type of `bdf`'s PCI Express capability, if it has one.
fn pcie_port_type(cfg: &impl ConfigAccess, bdf: Bdf) -> Option<u16> {
    let at = find_capability(cfg, bdf, CAP_ID_PCIE)?;
    Some((cfg.read32(bdf, at) >> 16) as u16 >> 4 & 0xf)
}

/// Capability ids (PCI 3.0, appendix H).
pub mod capability {
    /// Message Signalled Interrupts (PCI 3.0, 6.8.1).
    pub const MSI: u8 = 0x05;
}

/// The configuration-space offset of `bdf`'s first capability with id `id`, if its status
/// register says it has a capability list and the list holds one. The walk is bounded: at most
/// 48 entries fit in the 192 bytes after the header.
pub fn find_capability(cfg: &impl ConfigAccess, bdf: Bdf, id: u8) -> Option<u16> {
    let status = cfg.read16(bdf, offset::COMMAND + 2);
    if status & (1 << 4) == 0 {
        return None;
    }
    let mut at = cfg.read32(bdf, offset::CAPABILITIES) as u8 & !3;
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let header = cfg.read32(bdf, u16::from(at));
        if header as u8 == id {
            return Some(u16::from(at));
        }
        at = (header >> 8) as u8 & !3;
    }
    None
}

/// A function's MSI capability (PCI 3.0, 6.8.1): where it is and its layout. Arch-neutral: the
/// message address is whatever the interrupt controller (or interrupt remapper) wants written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    pub bdf: Bdf,
    /// Offset of the capability header in configuration space.
    pub offset: u16,
    /// Message Control bit 7: the address may have 64 bits (an upper-address register follows).
    pub is_64bit: bool,
    /// Message Control bit 8: per-vector mask and pending registers follow the data.
    pub per_vector_masking: bool,
    /// Message Control bits 3:1: the function asks for 2^n vectors.
    pub vectors_log2: u8,
}

/// An MSI message: the function writes `data` to `address` (the core's type, which an
/// interrupt remapper hands out). PCI MSI carries 16 data bits.
pub use iommu::irq::MsiMessage;

/// Why an MSI message cannot be programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiError {
    /// The function has no MSI capability.
    NoCapability(Bdf),
    /// The address has bits above 31 but the capability is 32-bit only.
    AddressNeeds64Bits { bdf: Bdf, address: u64 },
    /// The address is not dword-aligned (Message Address bits 1:0 are reserved).
    Misaligned { bdf: Bdf, address: u64 },
    /// The data has bits above 15: MSI Message Data is 16 bits wide.
    DataTooWide { bdf: Bdf, data: u32 },
}

impl core::fmt::Display for MsiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoCapability(bdf) => write!(f, "{bdf} has no MSI capability"),
            Self::AddressNeeds64Bits { bdf, address } => write!(
                f,
                "{bdf}: MSI address {address:#x} needs 64 bits, its capability has 32"
            ),
            Self::Misaligned { bdf, address } => {
                write!(f, "{bdf}: MSI address {address:#x} is not dword-aligned")
            }
            Self::DataTooWide { bdf, data } => {
                write!(f, "{bdf}: MSI data {data:#x} is wider than 16 bits")
            }
        }
    }
}

impl core::error::Error for MsiError {}

/// MSI capability registers, as offsets from the capability header (PCI 3.0, 6.8.1).
mod msi {
    pub const CONTROL: u16 = 0x02;
    pub const ADDRESS_LOW: u16 = 0x04;
    pub const ADDRESS_HIGH: u16 = 0x08;
    /// Message Data: after the upper address if the capability has one.
    pub const DATA_64: u16 = 0x0c;
    pub const DATA_32: u16 = 0x08;
    pub const CONTROL_ENABLE: u16 = 1 << 0;
    /// Multiple Message Enable, bits 6:4: how many vectors software granted (2^n).
    pub const CONTROL_MULTIPLE_ENABLE: u16 = 0b111 << 4;
    pub const CONTROL_64BIT: u16 = 1 << 7;
    pub const CONTROL_PER_VECTOR_MASKING: u16 = 1 << 8;
}

impl MsiCapability {
    /// The MSI capability of `bdf`, if it has one.
    pub fn find(cfg: &impl ConfigAccess, bdf: Bdf) -> Result<Self, MsiError> {
        let offset =
            find_capability(cfg, bdf, capability::MSI).ok_or(MsiError::NoCapability(bdf))?;
        let control = cfg.read16(bdf, offset + msi::CONTROL);
        Ok(Self {
            bdf,
            offset,
            is_64bit: control & msi::CONTROL_64BIT != 0,
            per_vector_masking: control & msi::CONTROL_PER_VECTOR_MASKING != 0,
            vectors_log2: (control >> 1 & 0b111) as u8,
        })
    }

    fn data_offset(&self) -> u16 {
        self.offset
            + if self.is_64bit {
                msi::DATA_64
            } else {
                msi::DATA_32
            }
    }

    /// Programs the message (one vector: Multiple Message Enable 0), leaving MSI enable as it
    /// was. Disable MSI around a change the function must not see half-made.
    pub fn set_message(
        &self,
        cfg: &impl ConfigAccess,
        message: MsiMessage,
    ) -> Result<(), MsiError> {
        let (bdf, address) = (self.bdf, message.address);
        if address & 3 != 0 {
            return Err(MsiError::Misaligned { bdf, address });
        }
        if address >> 32 != 0 && !self.is_64bit {
            return Err(MsiError::AddressNeeds64Bits { bdf, address });
        }
        let data = u16::try_from(message.data).map_err(|_| MsiError::DataTooWide {
            bdf,
            data: message.data,
        })?;
        cfg.write32(bdf, self.offset + msi::ADDRESS_LOW, address as u32);
        if self.is_64bit {
            cfg.write32(bdf, self.offset + msi::ADDRESS_HIGH, (address >> 32) as u32);
        }
        cfg.write16(bdf, self.data_offset(), data);
        let control = cfg.read16(bdf, self.offset + msi::CONTROL);
        cfg.write16(
            bdf,
            self.offset + msi::CONTROL,
            control & !msi::CONTROL_MULTIPLE_ENABLE,
        );
        Ok(())
    }

    /// The message as programmed.
    pub fn message(&self, cfg: &impl ConfigAccess) -> MsiMessage {
        let low = u64::from(cfg.read32(self.bdf, self.offset + msi::ADDRESS_LOW));
        let high = if self.is_64bit {
            u64::from(cfg.read32(self.bdf, self.offset + msi::ADDRESS_HIGH))
        } else {
            0
        };
        MsiMessage {
            address: high << 32 | low,
            data: u32::from(cfg.read16(self.bdf, self.data_offset())),
        }
    }

    /// Turns MSI on or off (Message Control bit 0). While on, the function signals with the
    /// message instead of its INTx pin.
    pub fn set_enabled(&self, cfg: &impl ConfigAccess, enabled: bool) {
        let at = self.offset + msi::CONTROL;
        let control = cfg.read16(self.bdf, at);
        let control = if enabled {
            control | msi::CONTROL_ENABLE
        } else {
            control & !msi::CONTROL_ENABLE
        };
        cfg.write16(self.bdf, at, control);
    }

    /// Whether MSI is on.
    pub fn is_enabled(&self, cfg: &impl ConfigAccess) -> bool {
        cfg.read16(self.bdf, self.offset + msi::CONTROL) & msi::CONTROL_ENABLE != 0
    }
}

/// The functions on `bus` with this vendor and device id, in bus order.
pub fn find(
    cfg: &impl ConfigAccess,
    bus: u8,
    vendor: u16,
    device: u16,
) -> impl Iterator<Item = Bdf> + '_ {
    enumerate(cfg, bus)
        .filter(move |f| f.vendor == vendor && f.device == device)
        .map(|f| f.bdf)
}

/// A memory BAR: its address as programmed and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBar {
    pub index: u8,
    pub address: u64,
    pub size: u64,
    pub is_64bit: bool,
}

/// Sizes memory BAR `index` (writing all ones and reading back the mask, PCI 3.0, 6.2.5.1) and
/// restores it. `None` for an I/O or unimplemented BAR.
pub fn memory_bar(cfg: &impl ConfigAccess, bdf: Bdf, index: u8) -> Option<MemoryBar> {
    if index > 5 {
        return None;
    }
    let off = offset::BAR0 + 4 * index as u16;
    let low = cfg.read32(bdf, off);
    if low & 1 != 0 {
        return None;
    }
    let is_64bit = low >> 1 & 3 == 2;
    if is_64bit && index == 5 {
        return None;
    }
    let high = if is_64bit {
        cfg.read32(bdf, off + 4)
    } else {
        0
    };
    let cmd = cfg.read16(bdf, offset::COMMAND);
    // Decoding must be off while the BAR holds the sizing pattern.
    cfg.write16(bdf, offset::COMMAND, cmd & !command::MEMORY_SPACE);
    cfg.write32(bdf, off, u32::MAX);
    let mut mask = (cfg.read32(bdf, off) & !0xf) as u64;
    cfg.write32(bdf, off, low);
    if is_64bit {
        cfg.write32(bdf, off + 4, u32::MAX);
        mask |= (cfg.read32(bdf, off + 4) as u64) << 32;
        cfg.write32(bdf, off + 4, high);
    } else {
        mask |= 0xffff_ffff_0000_0000;
    }
    cfg.write16(bdf, offset::COMMAND, cmd);
    if mask & 0xffff_fff0 == 0 && mask >> 32 == 0xffff_ffff {
        return None;
    }
    let size = (!mask).wrapping_add(1);
    if size == 0 {
        return None;
    }
    Some(MemoryBar {
        index,
        address: (high as u64) << 32 | (low & !0xf) as u64,
        size,
        is_64bit,
    })
}

/// A bump allocator over a host bridge's MMIO window, for BAR assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    pub next: u64,
    pub end: u64,
}

impl MmioWindow {
    /// Takes `size` bytes aligned to `size` (BAR sizes are powers of two).
    pub fn take(&mut self, size: u64) -> Option<u64> {
        self.take_aligned(size, size)
    }

    /// Takes `size` bytes at a multiple of `align` (a power of two).
    pub fn take_aligned(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let addr = self.next.checked_add(align - 1)? & !(align - 1);
        let end = addr.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            addr
        })
    }
}

/// Gives every memory BAR of `bdf` an address from `window`, and enables memory decoding.
/// Returns the BARs as assigned (only those that fit).
pub fn assign_memory_bars(cfg: &impl ConfigAccess, bdf: Bdf, window: &mut MmioWindow) -> Bars {
    let mut bars = Bars::default();
    let mut index = 0;
    while index < 6 {
        let Some(bar) = memory_bar(cfg, bdf, index) else {
            index += 1;
            continue;
        };
        if let Some(addr) = window.take(bar.size) {
            let off = offset::BAR0 + 4 * index as u16;
            let flags = cfg.read32(bdf, off) & 0xf;
            cfg.write32(bdf, off, addr as u32 | flags);
            if bar.is_64bit {
                cfg.write32(bdf, off + 4, (addr >> 32) as u32);
            }
            bars.push(MemoryBar {
                address: addr,
                ..bar
            });
        }
        index += if bar.is_64bit { 2 } else { 1 };
    }
    let cmd = cfg.read16(bdf, offset::COMMAND);
    cfg.write16(bdf, offset::COMMAND, cmd | command::MEMORY_SPACE);
    bars
}

/// Turns on memory decoding and bus mastering (DMA) for `bdf`.
pub fn enable_dma(cfg: &impl ConfigAccess, bdf: Bdf) {
    let cmd = cfg.read16(bdf, offset::COMMAND);
    cfg.write16(
        bdf,
        offset::COMMAND,
        cmd | command::MEMORY_SPACE | command::BUS_MASTER,
    );
}

/// A bridge's bus numbers (PCI-to-PCI Bridge Architecture 1.2, 3.2.5.3-5): the bus it sits on,
/// the bus right below it, and the highest bus below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusNumbers {
    pub primary: u8,
    pub secondary: u8,
    pub subordinate: u8,
}

/// Why [`configure_bridge`] left a bridge alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeError {
    /// The function has no type-1 (bridge) header.
    NotABridge(Bdf),
    /// Not `primary < secondary <= subordinate`.
    BadBusNumbers(BusNumbers),
    /// The memory window must be a non-zero number of MiB (the base/limit registers' granule)
    /// and fit the parent's window below 4 GiB (they hold address bits 31:20 only).
    WindowDoesNotFit { size: u64 },
}

impl core::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotABridge(bdf) => write!(f, "{bdf} is not a bridge"),
            Self::BadBusNumbers(b) => write!(
                f,
                "bus numbers {}/{}/{} are not primary < secondary <= subordinate",
                b.primary, b.secondary, b.subordinate
            ),
            Self::WindowDoesNotFit { size } => {
                write!(f, "a {size:#x}-byte bridge window does not fit")
            }
        }
    }
}

impl core::error::Error for BridgeError {}

/// The granule of a bridge's memory base and limit registers.
const BRIDGE_WINDOW_GRANULE: u64 = 1 << 20;

fn check_bridge(cfg: &impl ConfigAccess, bdf: Bdf, buses: BusNumbers) -> Result<(), BridgeError> {
    if cfg.read32(bdf, offset::HEADER_TYPE) >> 16 & 0x7f != 1 {
        return Err(BridgeError::NotABridge(bdf));
    }
    if buses.primary >= buses.secondary || buses.secondary > buses.subordinate {
        return Err(BridgeError::BadBusNumbers(buses));
    }
    Ok(())
}

/// Writes a bridge's bus numbers, keeping its secondary latency timer (the dword's top byte).
pub fn set_bus_numbers(
    cfg: &impl ConfigAccess,
    bdf: Bdf,
    buses: BusNumbers,
) -> Result<(), BridgeError> {
    check_bridge(cfg, bdf, buses)?;
    let latency = cfg.read32(bdf, offset::BUS_NUMBERS) & 0xff00_0000;
    cfg.write32(
        bdf,
        offset::BUS_NUMBERS,
        latency
            | u32::from(buses.subordinate) << 16
            | u32::from(buses.secondary) << 8
            | u32::from(buses.primary),
    );
    Ok(())
}

/// Configures bridge `bdf` for what firmware would have done: its bus numbers, a
/// non-prefetchable memory window of `size` bytes (whole MiB) carved from `parent`, the
/// prefetchable window closed, and memory decoding plus bus mastering on, so that it forwards
/// MMIO down and DMA up. Returns the window for what is below it. On error nothing is written
/// and `parent` is unchanged.
pub fn configure_bridge(
    cfg: &impl ConfigAccess,
    bdf: Bdf,
    buses: BusNumbers,
    parent: &mut MmioWindow,
    size: u64,
) -> Result<MmioWindow, BridgeError> {
    check_bridge(cfg, bdf, buses)?;
    let too_big = BridgeError::WindowDoesNotFit { size };
    if size == 0 || !size.is_multiple_of(BRIDGE_WINDOW_GRANULE) {
        return Err(too_big);
    }
    let mut rest = *parent;
    let base = rest
        .take_aligned(size, BRIDGE_WINDOW_GRANULE)
        .ok_or(too_big)?;
    let end = base + size;
    if end > 1 << 32 {
        return Err(too_big);
    }
    set_bus_numbers(cfg, bdf, buses)?;
    // Base and limit hold address bits 31:20 in their bits 15:4; the limit names the last MiB.
    let base_reg = (base >> 16) as u32 & 0xfff0;
    let limit_reg = ((end - 1) >> 16) as u32 & 0xfff0;
    cfg.write32(bdf, offset::MEMORY_BASE_LIMIT, limit_reg << 16 | base_reg);
    // Base above limit closes the prefetchable window (its reset value, 0/0, opens the first
    // MiB).
    cfg.write32(bdf, offset::PREFETCHABLE_BASE_LIMIT, 0xfff0);
    let cmd = cfg.read16(bdf, offset::COMMAND);
    cfg.write16(
        bdf,
        offset::COMMAND,
        cmd | command::MEMORY_SPACE | command::BUS_MASTER,
    );
    *parent = rest;
    Ok(MmioWindow { next: base, end })
}

/// The memory BARs of one function as assigned (a function has at most six).
#[derive(Debug, Default, Clone, Copy)]
pub struct Bars {
    items: [Option<MemoryBar>; 6],
}

impl Bars {
    fn push(&mut self, bar: MemoryBar) {
        if let Some(slot) = self.items.iter_mut().find(|s| s.is_none()) {
            *slot = Some(bar);
        }
    }

    pub fn get(&self, index: u8) -> Option<MemoryBar> {
        self.items
            .iter()
            .flatten()
            .find(|b| b.index == index)
            .copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = MemoryBar> + '_ {
        self.items.iter().flatten().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// One function with a 1 MiB 32-bit BAR0 and a 16 KiB 64-bit BAR2.
    struct FakeBus {
        regs: RefCell<BTreeMap<(Bdf, u16), u32>>,
    }

    const DEV: Bdf = Bdf::new(0, 1, 0);

    impl FakeBus {
        fn new() -> Self {
            let mut regs = BTreeMap::new();
            regs.insert((DEV, 0), 0x11e8_1234);
            regs.insert((DEV, 0x10), 0);
            regs.insert((DEV, 0x18), 0x4);
            regs.insert((DEV, 0x1c), 0);
            Self {
                regs: RefCell::new(regs),
            }
        }
    }

    impl ConfigAccess for FakeBus {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            *self
                .regs
                .borrow()
                .get(&(bdf, offset))
                .unwrap_or(&if bdf == DEV { 0 } else { u32::MAX })
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            let v = match offset {
                0x10 => value & !(0x10_0000 - 1),
                0x18 => value & !(0x4000 - 1) | 0x4,
                0x14 | 0x20 | 0x24 => 0,
                _ => value,
            };
            self.regs.borrow_mut().insert((bdf, offset), v);
        }
    }

    #[test]
    fn requester_id_round_trips() {
        let b = Bdf::new(3, 0x1f, 7);
        assert_eq!(b.requester_id(), 0x03ff);
        assert_eq!(Bdf::from_requester_id(0x03ff), b);
        assert_eq!(Bdf::new(0, 1, 0).requester_id(), 8);
        assert_eq!(std::format!("{}", Bdf::new(0, 1, 0)), "00:01.0");
    }

    #[test]
    fn enumerates_and_sizes_and_assigns() {
        let bus = FakeBus::new();
        let found: std::vec::Vec<_> = find(&bus, 0, 0x1234, 0x11e8).collect();
        assert_eq!(found, [DEV]);
        assert_eq!(memory_bar(&bus, DEV, 0).map(|b| b.size), Some(0x10_0000));
        assert_eq!(
            memory_bar(&bus, DEV, 2).map(|b| (b.size, b.is_64bit)),
            Some((0x4000, true))
        );
        let mut w = MmioWindow {
            next: 0x1000_1000,
            end: 0x1100_0000,
        };
        let bars = assign_memory_bars(&bus, DEV, &mut w);
        assert_eq!(bars.get(0).map(|b| b.address), Some(0x1010_0000));
        assert_eq!(bars.get(2).map(|b| b.address), Some(0x1020_0000));
        assert_eq!(bus.read32(DEV, 0x10), 0x1010_0000);
        assert_eq!(
            bus.read16(DEV, offset::COMMAND) & command::MEMORY_SPACE,
            command::MEMORY_SPACE
        );
    }

    /// A bridge's type-1 header as plain storage (every register writable).
    struct FakeBridge {
        regs: RefCell<BTreeMap<u16, u32>>,
    }

    const BRIDGE: Bdf = Bdf::new(0, 4, 0);

    impl FakeBridge {
        fn new(header_type: u32) -> Self {
            let mut regs = BTreeMap::new();
            regs.insert(offset::HEADER_TYPE, header_type << 16);
            regs.insert(offset::BUS_NUMBERS, 0x2000_0000);
            regs.insert(offset::COMMAND, 0x0010_0000);
            Self {
                regs: RefCell::new(regs),
            }
        }
        fn snapshot(&self) -> BTreeMap<u16, u32> {
            self.regs.borrow().clone()
        }
    }

    impl ConfigAccess for FakeBridge {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            if bdf != BRIDGE {
                return u32::MAX;
            }
            *self.regs.borrow().get(&offset).unwrap_or(&0)
        }
        fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
            assert_eq!(bdf, BRIDGE);
            self.regs.borrow_mut().insert(offset, value);
        }
    }

    #[test]
    fn bridge_gets_bus_numbers_window_and_bus_mastering() {
        let br = FakeBridge::new(0x81);
        let mut parent = MmioWindow {
            next: 0x1010_0000,
            end: 0x1800_0000,
        };
        let buses = BusNumbers {
            primary: 0,
            secondary: 1,
            subordinate: 2,
        };
        let below = configure_bridge(&br, BRIDGE, buses, &mut parent, 0x40_0000).unwrap();
        assert_eq!((below.next, below.end), (0x1010_0000, 0x1050_0000));
        assert_eq!(parent.next, 0x1050_0000);
        // Latency timer kept; subordinate 2, secondary 1, primary 0.
        assert_eq!(br.read32(BRIDGE, 0x18), 0x2002_0100);
        // Limit 0x104 (last MiB 0x104xxxxx) in bits 31:20, base 0x101 in bits 15:4.
        assert_eq!(br.read32(BRIDGE, 0x20), 0x1040_1010);
        assert_eq!(br.read32(BRIDGE, 0x24), 0x0000_fff0);
        // Status kept, memory space and bus master set.
        assert_eq!(br.read32(BRIDGE, 0x04), 0x0010_0006);
        // A second bridge carves the next part.
        let below = configure_bridge(&br, BRIDGE, buses, &mut parent, 0x10_0000).unwrap();
        assert_eq!((below.next, below.end), (0x1050_0000, 0x1060_0000));
    }

    #[test]
    fn bridge_refusals_leave_everything_unchanged() {
        let ok = BusNumbers {
            primary: 1,
            secondary: 2,
            subordinate: 2,
        };
        let parent = MmioWindow {
            next: 0xffe0_0000,
            end: 0x1_0010_0000,
        };
        let endpoint = FakeBridge::new(0);
        let mut w = parent;
        assert_eq!(
            configure_bridge(&endpoint, BRIDGE, ok, &mut w, 1 << 20),
            Err(BridgeError::NotABridge(BRIDGE))
        );
        let br = FakeBridge::new(1);
        let before = br.snapshot();
        for (buses, size) in [
            (BusNumbers { primary: 2, ..ok }, 1 << 20),
            (
                BusNumbers {
                    subordinate: 1,
                    ..ok
                },
                1 << 20,
            ),
            (ok, 0),
            (ok, 0x18_0000),
            // Fits the parent but crosses 4 GiB.
            (ok, 0x30_0000),
            // Larger than the parent.
            (ok, 0x100_0000),
        ] {
            let r = configure_bridge(&br, BRIDGE, buses, &mut w, size);
            assert!(r.is_err(), "{buses:?} {size:#x}: {r:?}");
            assert_eq!(br.snapshot(), before);
            assert_eq!((w.next, w.end), (parent.next, parent.end));
        }
        // The last MiB below 4 GiB is fine.
        let below = configure_bridge(&br, BRIDGE, ok, &mut w, 0x20_0000).unwrap();
        assert_eq!((below.next, below.end), (0xffe0_0000, 0x1_0000_0000));
        assert_eq!(br.read32(BRIDGE, 0x20), 0xfff0_ffe0);
    }

    /// A function with a capability list: a PCIe capability at 0x40, then MSI at 0x50 with
    /// the control bits given (read-only bits as QEMU keeps them; everything else writable).
    struct FakeMsi {
        regs: RefCell<BTreeMap<u16, u32>>,
    }

    impl FakeMsi {
        fn new(control: u16) -> Self {
            let mut regs = BTreeMap::new();
            regs.insert(offset::COMMAND, 0x0010_0000);
            regs.insert(offset::CAPABILITIES, 0x40);
            regs.insert(0x40, 0x0002_5010);
            regs.insert(0x50, u32::from(control) << 16 | 0x0005);
            Self {
                regs: RefCell::new(regs),
            }
        }
        fn reg(&self, offset: u16) -> u32 {
            self.read32(DEV, offset)
        }
    }

    impl ConfigAccess for FakeMsi {
        fn read32(&self, _bdf: Bdf, offset: u16) -> u32 {
            *self.regs.borrow().get(&offset).unwrap_or(&0)
        }
        fn write32(&self, _bdf: Bdf, offset: u16, value: u32) {
            let value = if offset == 0x50 {
                // Id, next pointer and the capability bits of Message Control are read-only.
                let old = self.reg(0x50);
                old & 0x01ff_ffff & !(0x71 << 16) | value & (0x71 << 16)
            } else {
                value
            };
            self.regs.borrow_mut().insert(offset, value);
        }
    }

    #[test]
    fn msi_capability_is_found_past_other_capabilities() {
        // 64-bit, one vector requested (edu's).
        let f = FakeMsi::new(0x0080);
        assert_eq!(find_capability(&f, DEV, 0x10), Some(0x40));
        assert_eq!(find_capability(&f, DEV, capability::MSI), Some(0x50));
        assert_eq!(find_capability(&f, DEV, 0x11), None);
        let cap = MsiCapability::find(&f, DEV).unwrap();
        assert_eq!(
            cap,
            MsiCapability {
                bdf: DEV,
                offset: 0x50,
                is_64bit: true,
                per_vector_masking: false,
                vectors_log2: 0,
            }
        );
        let four = MsiCapability::find(&FakeMsi::new(0x0104), DEV).unwrap();
        assert!(four.per_vector_masking && !four.is_64bit);
        assert_eq!(four.vectors_log2, 2);
        // No capability list at all.
        let bus = FakeBus::new();
        assert_eq!(
            MsiCapability::find(&bus, DEV),
            Err(MsiError::NoCapability(DEV))
        );
    }

    #[test]
    fn msi_64bit_message_lands_in_address_upper_and_data() {
        let f = FakeMsi::new(0x0080);
        let cap = MsiCapability::find(&f, DEV).unwrap();
        let message = MsiMessage {
            address: 0x1_0809_0040,
            data: 0x1234,
        };
        cap.set_message(&f, message).unwrap();
        assert_eq!(f.reg(0x54), 0x0809_0040);
        assert_eq!(f.reg(0x58), 0x1);
        assert_eq!(f.reg(0x5c) & 0xffff, 0x1234);
        assert_eq!(cap.message(&f), message);
        assert!(!cap.is_enabled(&f));
        cap.set_enabled(&f, true);
        assert!(cap.is_enabled(&f));
        assert_eq!(f.reg(0x50), 0x0081_0005, "enable set, capability bits kept");
        cap.set_enabled(&f, false);
        assert_eq!(f.reg(0x50), 0x0080_0005);
    }

    #[test]
    fn msi_32bit_capability_takes_data_at_8_and_refuses_high_addresses() {
        let f = FakeMsi::new(0x0000);
        let cap = MsiCapability::find(&f, DEV).unwrap();
        let message = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        cap.set_message(&f, message).unwrap();
        assert_eq!(f.reg(0x54), 0xfee0_0000);
        assert_eq!(f.reg(0x58) & 0xffff, 0x41);
        assert_eq!(cap.message(&f), message);
        let high = MsiMessage {
            address: 0x1_0000_0000,
            data: 0,
        };
        assert_eq!(
            cap.set_message(&f, high),
            Err(MsiError::AddressNeeds64Bits {
                bdf: DEV,
                address: 0x1_0000_0000
            })
        );
        assert_eq!(
            cap.set_message(
                &f,
                MsiMessage {
                    address: 0xfee0_0002,
                    data: 0
                }
            ),
            Err(MsiError::Misaligned {
                bdf: DEV,
                address: 0xfee0_0002
            })
        );
        assert_eq!(cap.message(&f), message, "refusals write nothing");
    }

    #[test]
    fn window_refuses_what_does_not_fit() {
        let mut w = MmioWindow {
            next: 0x1000,
            end: 0x4000,
        };
        assert_eq!(w.take(0x2000), Some(0x2000));
        assert_eq!(w.take(0x1000), None);
        let mut w = MmioWindow {
            next: u64::MAX - 10,
            end: u64::MAX,
        };
        assert_eq!(w.take(0x1000), None);
    }
}
