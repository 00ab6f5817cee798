//! The ACPI DMA Remapping Reporting table (DMAR), which names the platform's remapping units and
//! the devices and memory they cover (VT-d spec rev. 5.10, chapter 8).
//!
//! [`Dmar::parse`] checks the whole table once (header, checksum, every remapping structure and
//! every device scope), so the zero-copy iterators it hands out afterwards cannot fail: they
//! borrow the table bytes and decode fields on the fly, byte by byte, with bounds-checked reads.
//! Malformed firmware gives a [`DmarError`], never a panic or a read outside the table.

use core::fmt;
use iommu::acpi::{checksum_ok, le, Signature, SDT_HEADER_LEN};

/// Size of the DMAR header: the ACPI header, host address width, flags, 10 reserved bytes.
pub const DMAR_HEADER_LEN: usize = SDT_HEADER_LEN + 12;
/// Size of a device scope without its path.
const SCOPE_HEADER_LEN: usize = 6;

/// Why a DMAR table was rejected. Offsets are from the start of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarError {
    /// The table is shorter than its own header or than its length field says.
    Truncated { length: usize, available: usize },
    /// The signature is not `DMAR`.
    BadSignature(Signature),
    /// The length field is smaller than the DMAR header.
    BadLength { length: u32 },
    /// The table's bytes do not sum to zero.
    BadChecksum,
    /// A remapping structure's length is below its type's fixed size (or below 4).
    StructureTooShort {
        offset: usize,
        kind: u16,
        length: u16,
    },
    /// A remapping structure runs past the end of the table.
    StructureBeyondTable { offset: usize, length: u16 },
    /// A device scope is shorter than 6 bytes.
    ScopeTooShort { offset: usize, length: u8 },
    /// A device scope runs past the end of its remapping structure.
    ScopeBeyondStructure { offset: usize, length: u8 },
    /// A device scope's path is not a whole number of 2-byte (device, function) entries.
    ScopePathOdd { offset: usize, length: u8 },
    /// A device scope of a defined type has no path entry (the spec requires at least one).
    ScopePathEmpty { offset: usize },
    /// An RMRR whose base lies above its limit.
    RmrrInverted {
        offset: usize,
        base: u64,
        limit: u64,
    },
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { length, available } => {
                write!(
                    f,
                    "DMAR: table of {length} bytes, only {available} available"
                )
            }
            Self::BadSignature(s) => write!(f, "DMAR: signature is {s}"),
            Self::BadLength { length } => write!(f, "DMAR: length {length} is below the header"),
            Self::BadChecksum => write!(f, "DMAR: bad checksum"),
            Self::StructureTooShort {
                offset,
                kind,
                length,
            } => write!(
                f,
                "DMAR: structure of type {kind} at offset {offset} is too short ({length} bytes)"
            ),
            Self::StructureBeyondTable { offset, length } => write!(
                f,
                "DMAR: structure at offset {offset} ({length} bytes) runs past the table"
            ),
            Self::ScopeTooShort { offset, length } => {
                write!(
                    f,
                    "DMAR: device scope at offset {offset} is too short ({length} bytes)"
                )
            }
            Self::ScopeBeyondStructure { offset, length } => write!(
                f,
                "DMAR: device scope at offset {offset} ({length} bytes) runs past its structure"
            ),
            Self::ScopePathOdd { offset, length } => write!(
                f,
                "DMAR: device scope at offset {offset} has length {length}, path not in pairs"
            ),
            Self::ScopePathEmpty { offset } => {
                write!(f, "DMAR: device scope at offset {offset} has an empty path")
            }
            Self::RmrrInverted {
                offset,
                base,
                limit,
            } => write!(
                f,
                "DMAR: RMRR at offset {offset} has base {base:#x} above limit {limit:#x}"
            ),
        }
    }
}

impl core::error::Error for DmarError {}

/// DMAR header flags (8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmarFlags(pub u8);

impl DmarFlags {
    /// INTR_REMAP: the platform supports interrupt remapping.
    pub const fn intr_remap(self) -> bool {
        self.0 & 1 != 0
    }

    /// X2APIC_OPT_OUT: firmware asks the OS not to enable x2APIC mode.
    pub const fn x2apic_opt_out(self) -> bool {
        self.0 & 2 != 0
    }

    /// DMA_CTRL_PLATFORM_OPT_IN: firmware protected DMA and asks the OS to keep remapping on.
    pub const fn dma_ctrl_platform_opt_in(self) -> bool {
        self.0 & 4 != 0
    }
}

/// A validated DMAR table.
#[derive(Clone, Copy)]
pub struct Dmar<'a> {
    bytes: &'a [u8],
}

impl<'a> Dmar<'a> {
    /// Validates the table in `bytes` (which may extend past it: the length field decides) and
    /// every structure and device scope in it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DmarError> {
        let available = bytes.len();
        if available < SDT_HEADER_LEN {
            return Err(DmarError::Truncated {
                length: SDT_HEADER_LEN,
                available,
            });
        }
        let signature = Signature(le::array(bytes, 0).unwrap_or_default());
        if signature != Signature::DMAR {
            return Err(DmarError::BadSignature(signature));
        }
        let length = le::u32_at(bytes, 4).unwrap_or(0);
        if (length as usize) < DMAR_HEADER_LEN {
            return Err(DmarError::BadLength { length });
        }
        let bytes = bytes.get(..length as usize).ok_or(DmarError::Truncated {
            length: length as usize,
            available,
        })?;
        if !checksum_ok(bytes) {
            return Err(DmarError::BadChecksum);
        }
        let dmar = Self { bytes };
        let mut offset = DMAR_HEADER_LEN;
        while offset < bytes.len() {
            let rest = bytes.get(offset..).unwrap_or(&[]);
            let kind = le::u16_at(rest, 0);
            let length = le::u16_at(rest, 2);
            let (Some(kind), Some(length)) = (kind, length) else {
                // Fewer than 4 bytes left: a structure header that does not fit.
                return Err(DmarError::StructureBeyondTable {
                    offset,
                    length: rest.len() as u16,
                });
            };
            if usize::from(length) < 4 || usize::from(length) < fixed_len(kind) {
                return Err(DmarError::StructureTooShort {
                    offset,
                    kind,
                    length,
                });
            }
            let Some(body) = rest.get(..usize::from(length)) else {
                return Err(DmarError::StructureBeyondTable { offset, length });
            };
            validate_structure(kind, body, offset)?;
            offset += usize::from(length);
        }
        Ok(dmar)
    }

    /// The whole table, exactly as long as its length field says.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The width of physical addresses DMA can reach on this platform (the field holds N-1).
    pub fn host_address_width(&self) -> u8 {
        le::u8_at(self.bytes, SDT_HEADER_LEN)
            .unwrap_or(0)
            .wrapping_add(1)
    }

    pub fn flags(&self) -> DmarFlags {
        DmarFlags(le::u8_at(self.bytes, SDT_HEADER_LEN + 1).unwrap_or(0))
    }

    /// Every remapping structure, in table order; unknown types appear as
    /// [`RemappingStructure::Unknown`].
    pub fn structures(&self) -> Structures<'a> {
        Structures {
            bytes: self.bytes,
            offset: DMAR_HEADER_LEN,
        }
    }

    /// The remapping hardware units.
    pub fn drhds(&self) -> impl Iterator<Item = Drhd<'a>> + Clone {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The reserved memory regions that devices keep using (RMRRs).
    pub fn rmrrs(&self) -> impl Iterator<Item = Rmrr<'a>> + Clone {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Rmrr(r) => Some(r),
            _ => None,
        })
    }

    /// The root ports with ATS capability reporting (ATSRs).
    pub fn atsrs(&self) -> impl Iterator<Item = Atsr<'a>> + Clone {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Atsr(a) => Some(a),
            _ => None,
        })
    }
}

impl fmt::Debug for Dmar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dmar")
            .field("host_address_width", &self.host_address_width())
            .field("flags", &self.flags())
            .field("structures", &DebugList(self.structures()))
            .finish()
    }
}

/// Lists an iterator's items in a `Debug` without collecting them.
struct DebugList<I>(I);

impl<I: Iterator + Clone> fmt::Debug for DebugList<I>
where
    I::Item: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.clone()).finish()
    }
}

/// Remapping structure types (8.2).
mod kind {
    pub const DRHD: u16 = 0;
    pub const RMRR: u16 = 1;
    pub const ATSR: u16 = 2;
    pub const RHSA: u16 = 3;
    pub const ANDD: u16 = 4;
    pub const SATC: u16 = 5;
    pub const SIDP: u16 = 6;
}

/// The fixed part of each structure type, before its device scopes or name; unknown types only
/// need their 4-byte header.
const fn fixed_len(kind: u16) -> usize {
    match kind {
        kind::DRHD => 16,
        kind::RMRR => 24,
        kind::ATSR | kind::ANDD | kind::SATC | kind::SIDP => 8,
        kind::RHSA => 20,
        _ => 4,
    }
}

/// Where a structure's device scopes start, for the types that have them.
const fn scopes_offset(kind: u16) -> Option<usize> {
    match kind {
        kind::DRHD | kind::RMRR | kind::ATSR | kind::SATC | kind::SIDP => Some(fixed_len(kind)),
        _ => None,
    }
}

fn validate_structure(kind: u16, body: &[u8], offset: usize) -> Result<(), DmarError> {
    if kind == kind::RMRR {
        let base = le::u64_at(body, 8).unwrap_or(0);
        let limit = le::u64_at(body, 16).unwrap_or(0);
        if base > limit {
            return Err(DmarError::RmrrInverted {
                offset,
                base,
                limit,
            });
        }
    }
    let Some(start) = scopes_offset(kind) else {
        return Ok(());
    };
    let mut at = start;
    while at < body.len() {
        let scope_offset = offset + at;
        let rest = body.get(at..).unwrap_or(&[]);
        let length = le::u8_at(rest, 1).unwrap_or(rest.len() as u8);
        if usize::from(length) < SCOPE_HEADER_LEN {
            return Err(DmarError::ScopeTooShort {
                offset: scope_offset,
                length,
            });
        }
        if usize::from(length) > rest.len() {
            return Err(DmarError::ScopeBeyondStructure {
                offset: scope_offset,
                length,
            });
        }
        if !(usize::from(length) - SCOPE_HEADER_LEN).is_multiple_of(2) {
            return Err(DmarError::ScopePathOdd {
                offset: scope_offset,
                length,
            });
        }
        // Defined types name their device (or, for HPET and ACPI devices, its source id)
        // through the path, so it has at least one hop; reserved types are skipped unread.
        let kind = DeviceScopeType::from_raw(le::u8_at(rest, 0).unwrap_or(0));
        if usize::from(length) == SCOPE_HEADER_LEN && !matches!(kind, DeviceScopeType::Reserved(_))
        {
            return Err(DmarError::ScopePathEmpty {
                offset: scope_offset,
            });
        }
        at += usize::from(length);
    }
    Ok(())
}

/// Iterator over the remapping structures of a validated table.
#[derive(Clone)]
pub struct Structures<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Structures<'a> {
    type Item = RemappingStructure<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.offset..)?;
        let kind = le::u16_at(rest, 0)?;
        let length = usize::from(le::u16_at(rest, 2)?);
        // Validated by `Dmar::parse`; checked again so a bug there ends the walk, not the kernel.
        if length < fixed_len(kind).max(4) {
            return None;
        }
        let body = rest.get(..length)?;
        self.offset += length;
        Some(RemappingStructure::decode(kind, body))
    }
}

/// One remapping structure of the DMAR table.
#[derive(Debug, Clone, Copy)]
pub enum RemappingStructure<'a> {
    Drhd(Drhd<'a>),
    Rmrr(Rmrr<'a>),
    Atsr(Atsr<'a>),
    Rhsa(Rhsa),
    Andd(Andd<'a>),
    Satc(Satc<'a>),
    Sidp(Sidp<'a>),
    /// A type this parser does not know (reserved today); skipped by its length.
    Unknown {
        kind: u16,
        bytes: &'a [u8],
    },
}

impl<'a> RemappingStructure<'a> {
    fn decode(kind: u16, b: &'a [u8]) -> Self {
        match kind {
            kind::DRHD => Self::Drhd(Drhd { b }),
            kind::RMRR => Self::Rmrr(Rmrr { b }),
            kind::ATSR => Self::Atsr(Atsr { b }),
            kind::RHSA => Self::Rhsa(Rhsa {
                register_base: le::u64_at(b, 8).unwrap_or(0),
                proximity_domain: le::u32_at(b, 16).unwrap_or(0),
            }),
            kind::ANDD => Self::Andd(Andd { b }),
            kind::SATC => Self::Satc(Satc { b }),
            kind::SIDP => Self::Sidp(Sidp { b }),
            _ => Self::Unknown { kind, bytes: b },
        }
    }
}

fn scopes_of(b: &[u8], kind: u16) -> DeviceScopes<'_> {
    let start = scopes_offset(kind).unwrap_or(usize::MAX);
    DeviceScopes {
        bytes: b.get(start..).unwrap_or(&[]),
    }
}

/// 8.3 DMA Remapping Hardware Unit Definition: one remapping unit and the devices it covers.
#[derive(Clone, Copy)]
pub struct Drhd<'a> {
    b: &'a [u8],
}

impl<'a> Drhd<'a> {
    pub fn flags(&self) -> u8 {
        le::u8_at(self.b, 4).unwrap_or(0)
    }

    /// INCLUDE_PCI_ALL: the unit covers every PCI device of its segment not listed under
    /// another unit; its scopes then list only IOAPICs and HPETs.
    pub fn include_pci_all(&self) -> bool {
        self.flags() & 1 != 0
    }

    /// Size of the register set in bytes: 2^N pages of 4 KiB, N in bits 3:0 of the size field.
    pub fn register_size(&self) -> u64 {
        4096 << (le::u8_at(self.b, 5).unwrap_or(0) & 0xf)
    }

    /// PCI segment (domain) the unit serves.
    pub fn segment(&self) -> u16 {
        le::u16_at(self.b, 6).unwrap_or(0)
    }

    /// Physical address of the unit's register set.
    pub fn register_base(&self) -> u64 {
        le::u64_at(self.b, 8).unwrap_or(0)
    }

    pub fn scopes(&self) -> DeviceScopes<'a> {
        scopes_of(self.b, kind::DRHD)
    }
}

impl fmt::Debug for Drhd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drhd")
            .field(
                "register_base",
                &format_args!("{:#x}", self.register_base()),
            )
            .field(
                "register_size",
                &format_args!("{:#x}", self.register_size()),
            )
            .field("segment", &self.segment())
            .field("include_pci_all", &self.include_pci_all())
            .field("scopes", &DebugList(self.scopes()))
            .finish()
    }
}

/// 8.4 Reserved Memory Region Reporting: memory some devices keep using across the OS hand-off
/// (e.g. USB legacy emulation); it must stay identity-mapped for those devices.
#[derive(Clone, Copy)]
pub struct Rmrr<'a> {
    b: &'a [u8],
}

impl<'a> Rmrr<'a> {
    pub fn segment(&self) -> u16 {
        le::u16_at(self.b, 6).unwrap_or(0)
    }

    /// First byte of the region (4 KiB aligned on correct firmware).
    pub fn base(&self) -> u64 {
        le::u64_at(self.b, 8).unwrap_or(0)
    }

    /// Last byte of the region, inclusive (ends 4 KiB aligned minus one on correct firmware).
    pub fn limit(&self) -> u64 {
        le::u64_at(self.b, 16).unwrap_or(0)
    }

    pub fn scopes(&self) -> DeviceScopes<'a> {
        scopes_of(self.b, kind::RMRR)
    }
}

impl fmt::Debug for Rmrr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rmrr")
            .field("segment", &self.segment())
            .field("base", &format_args!("{:#x}", self.base()))
            .field("limit", &format_args!("{:#x}", self.limit()))
            .field("scopes", &DebugList(self.scopes()))
            .finish()
    }
}

/// 8.5 Root Port ATS Capability Reporting: root ports whose devices may use ATS.
#[derive(Clone, Copy)]
pub struct Atsr<'a> {
    b: &'a [u8],
}

impl<'a> Atsr<'a> {
    pub fn flags(&self) -> u8 {
        le::u8_at(self.b, 4).unwrap_or(0)
    }

    /// ALL_PORTS: every root port of the segment supports ATS; the scopes are then empty.
    pub fn all_ports(&self) -> bool {
        self.flags() & 1 != 0
    }

    pub fn segment(&self) -> u16 {
        le::u16_at(self.b, 6).unwrap_or(0)
    }

    pub fn scopes(&self) -> DeviceScopes<'a> {
        scopes_of(self.b, kind::ATSR)
    }
}

impl fmt::Debug for Atsr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Atsr")
            .field("segment", &self.segment())
            .field("all_ports", &self.all_ports())
            .field("scopes", &DebugList(self.scopes()))
            .finish()
    }
}

/// 8.6 Remapping Hardware Static Affinity: the NUMA proximity domain of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhsa {
    pub register_base: u64,
    pub proximity_domain: u32,
}

/// 8.7 ACPI Name-space Device Declaration: names an ACPI device that ACPI-namespace device
/// scopes refer to by number.
#[derive(Clone, Copy)]
pub struct Andd<'a> {
    b: &'a [u8],
}

impl<'a> Andd<'a> {
    /// The number device scopes of type ACPI namespace device use as enumeration id.
    pub fn device_number(&self) -> u8 {
        le::u8_at(self.b, 7).unwrap_or(0)
    }

    /// The ACPI object name (e.g. `\_SB.PCI0.HPET`), without the terminating NUL.
    pub fn object_name(&self) -> &'a [u8] {
        let name = self.b.get(8..).unwrap_or(&[]);
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        name.get(..end).unwrap_or(&[])
    }
}

impl fmt::Debug for Andd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Andd")
            .field("device_number", &self.device_number())
            .field(
                "object_name",
                &core::str::from_utf8(self.object_name()).unwrap_or("?"),
            )
            .finish()
    }
}

/// 8.8 SoC Integrated Address Translation Cache: integrated devices with an ATC.
#[derive(Clone, Copy)]
pub struct Satc<'a> {
    b: &'a [u8],
}

impl<'a> Satc<'a> {
    pub fn flags(&self) -> u8 {
        le::u8_at(self.b, 4).unwrap_or(0)
    }

    /// ATC_REQUIRED: the devices only work with their ATC enabled.
    pub fn atc_required(&self) -> bool {
        self.flags() & 1 != 0
    }

    pub fn segment(&self) -> u16 {
        le::u16_at(self.b, 6).unwrap_or(0)
    }

    pub fn scopes(&self) -> DeviceScopes<'a> {
        scopes_of(self.b, kind::SATC)
    }
}

impl fmt::Debug for Satc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Satc")
            .field("segment", &self.segment())
            .field("atc_required", &self.atc_required())
            .field("scopes", &DebugList(self.scopes()))
            .finish()
    }
}

/// 8.9 SoC Integrated Device Property: integrated devices with properties given in the flags
/// of their device scopes.
#[derive(Clone, Copy)]
pub struct Sidp<'a> {
    b: &'a [u8],
}

impl<'a> Sidp<'a> {
    pub fn segment(&self) -> u16 {
        le::u16_at(self.b, 6).unwrap_or(0)
    }

    pub fn scopes(&self) -> DeviceScopes<'a> {
        scopes_of(self.b, kind::SIDP)
    }
}

impl fmt::Debug for Sidp<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sidp")
            .field("segment", &self.segment())
            .field("scopes", &DebugList(self.scopes()))
            .finish()
    }
}

/// What a device scope names (8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceScopeType {
    /// A PCI endpoint device.
    PciEndpoint,
    /// A PCI-PCI bridge and every device below it.
    PciSubHierarchy,
    /// An I/O APIC; the enumeration id is its APIC id.
    IoApic,
    /// An MSI-capable HPET; the enumeration id is its HPET number.
    MsiCapableHpet,
    /// An ACPI namespace device; the enumeration id is its ANDD device number.
    AcpiNamespaceDevice,
    /// A reserved type.
    Reserved(u8),
}

impl DeviceScopeType {
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::MsiCapableHpet,
            5 => Self::AcpiNamespaceDevice,
            r => Self::Reserved(r),
        }
    }
}

/// A PCI bus/device/function; its requester id is the source id a remapping unit sees.
pub use iommu::pci::Bdf;

/// One hop of a device scope path: a device and function on the bus reached so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathEntry {
    pub device: u8,
    pub function: u8,
}

/// 8.3.1 Device Scope: a device (or hierarchy) named by its start bus and the path of
/// (device, function) hops through bridges from there.
#[derive(Clone, Copy)]
pub struct DeviceScope<'a> {
    b: &'a [u8],
}

impl<'a> DeviceScope<'a> {
    pub fn kind(&self) -> DeviceScopeType {
        DeviceScopeType::from_raw(le::u8_at(self.b, 0).unwrap_or(0))
    }

    /// Flags (defined for scopes inside SIDP structures; reserved elsewhere).
    pub fn flags(&self) -> u8 {
        le::u8_at(self.b, 2).unwrap_or(0)
    }

    /// IOAPIC id, HPET number or ANDD device number, by scope type.
    pub fn enumeration_id(&self) -> u8 {
        le::u8_at(self.b, 4).unwrap_or(0)
    }

    pub fn start_bus(&self) -> u8 {
        le::u8_at(self.b, 5).unwrap_or(0)
    }

    /// The hops from the start bus; more than one means bridges whose secondary bus numbers
    /// must be read from PCI configuration space to find the device.
    pub fn path(&self) -> impl ExactSizeIterator<Item = PathEntry> + Clone + 'a {
        let path = self.b.get(SCOPE_HEADER_LEN..).unwrap_or(&[]);
        path.chunks_exact(2).map(|p| PathEntry {
            device: p.first().copied().unwrap_or(0),
            function: p.get(1).copied().unwrap_or(0),
        })
    }

    /// The device's bus/device/function when the path is a single hop, i.e. the device sits on
    /// the start bus (every device of QEMU's q35 root bus); `None` if bridges are in between.
    /// For HPET and ACPI namespace scopes this is the source id the platform assigned them.
    pub fn direct_bdf(&self) -> Option<Bdf> {
        let mut path = self.path();
        match (path.next(), path.next()) {
            (Some(p), None) => Some(Bdf {
                bus: self.start_bus(),
                device: p.device,
                function: p.function,
            }),
            _ => None,
        }
    }
}

impl fmt::Debug for DeviceScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DeviceScope");
        d.field("kind", &self.kind())
            .field("enumeration_id", &self.enumeration_id())
            .field("start_bus", &self.start_bus())
            .field("path", &DebugList(self.path()));
        if self.flags() != 0 {
            d.field("flags", &self.flags());
        }
        d.finish()
    }
}

/// In a person's words: `00:1f.0`, `bridge 00:04.0 and every device below it`, `IOAPIC 0`;
/// a path through bridges is written hop by hop from its start bus (`00:1c.0/00.0`).
impl fmt::Display for DeviceScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.enumeration_id();
        let write_path = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            write!(f, "{:02x}:", self.start_bus())?;
            for (i, hop) in self.path().enumerate() {
                let sep = if i == 0 { "" } else { "/" };
                write!(f, "{sep}{:02x}.{:x}", hop.device, hop.function)?;
            }
            Ok(())
        };
        match self.kind() {
            DeviceScopeType::PciEndpoint => write_path(f),
            DeviceScopeType::PciSubHierarchy => {
                f.write_str("bridge ")?;
                write_path(f)?;
                f.write_str(" and every device below it")
            }
            DeviceScopeType::IoApic => write!(f, "IOAPIC {id}"),
            DeviceScopeType::MsiCapableHpet => write!(f, "HPET {id}"),
            DeviceScopeType::AcpiNamespaceDevice => write!(f, "ACPI device {id}"),
            DeviceScopeType::Reserved(kind) => write!(f, "reserved scope type {kind}"),
        }
    }
}

/// Iterator over the device scopes of one structure.
#[derive(Clone)]
pub struct DeviceScopes<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let length = usize::from(le::u8_at(self.bytes, 1)?);
        // Validated by `Dmar::parse`; checked again so a bug there ends the walk, not the kernel.
        if length < SCOPE_HEADER_LEN {
            return None;
        }
        let b = self.bytes.get(..length)?;
        self.bytes = self.bytes.get(length..).unwrap_or(&[]);
        Some(DeviceScope { b })
    }
}

#[cfg(test)]
mod tests;
