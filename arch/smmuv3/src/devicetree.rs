//! The SMMUs and PCIe hosts a flattened devicetree describes, and which SMMU and stream id a
//! PCI requester id reaches through the host's `iommu-map`.
//!
//! Bindings followed: `arm,smmu-v3` (Linux `Documentation/devicetree/bindings/iommu/
//! arm,smmu-v3.yaml`), `pci-host-ecam-generic` and the PCI `iommu-map` binding (`pci-iommu.txt`).
//!
//! The `fdt` crate walks the blob, but it assumes a well-formed one (it indexes and `expect`s on
//! the structure). So [`Devicetree::new`] first checks the whole structure block the way `fdt`
//! will walk it (header bounds, tokens, name and string termination, property lengths, nesting
//! depth) and only then hands it over: a malformed blob gives a [`DtError`], never a panic.

use core::fmt;

use fdt::node::FdtNode;
use fdt::Fdt;

/// The binding's compatible string for an SMMUv3.
pub const SMMUV3_COMPATIBLE: &str = "arm,smmu-v3";
/// The compatible string of the generic ECAM PCIe host QEMU `virt` creates.
pub const PCI_HOST_ECAM_COMPATIBLE: &str = "pci-host-ecam-generic";

/// Most `ranges` windows a PCIe host may list here (QEMU has three).
pub const MAX_PCI_WINDOWS: usize = 8;
/// Most `iommu-map` entries a PCIe host may list here (QEMU has one).
pub const MAX_IOMMU_MAP_ENTRIES: usize = 16;

/// Why a devicetree, or the part of it we need, could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtError {
    /// The blob does not start with the FDT magic 0xd00dfeed.
    BadMagic(u32),
    /// The header, or the size it declares, does not fit in the bytes given.
    Truncated { declared: usize, available: usize },
    /// Only version 17 (with compatible version <= 16) blobs are understood.
    UnsupportedVersion(u32),
    /// The structure or strings block lies outside the blob.
    BlockOutOfBounds { block: &'static str },
    /// The structure block is not a well-formed tree at this offset (from its start).
    Malformed {
        offset: usize,
        problem: &'static str,
    },
    /// Nodes nest deeper than the parser supports.
    TooDeep { offset: usize },
    /// A node we need lacks a property the binding requires.
    MissingProperty {
        node: &'static str,
        property: &'static str,
    },
    /// A property's value does not have the shape the binding gives it.
    BadProperty {
        property: &'static str,
        problem: &'static str,
    },
    /// An address or size uses a number of cells we cannot represent in 64 bits.
    UnsupportedCells {
        property: &'static str,
        cells: usize,
    },
    /// Two nodes carry the same phandle (it must name one node: devicetree spec 2.3.3).
    DuplicatePhandle { phandle: u32 },
    /// A phandle names no node.
    DanglingPhandle {
        property: &'static str,
        phandle: u32,
    },
    /// More entries than this parser keeps.
    TooManyEntries { property: &'static str, max: usize },
    /// The PCIe host has no `iommu-map`: its devices are not behind an IOMMU.
    NoIommuMap,
    /// No `iommu-map` entry covers this requester id.
    RidNotMapped { rid: u16 },
    /// The `iommu-map` target is not an `arm,smmu-v3` node.
    NotAnSmmu { phandle: u32 },
    /// The SMMU's `#iommu-cells` is not 1, so `iommu-map` cannot address it.
    UnsupportedIommuCells { phandle: u32, cells: Option<u32> },
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "not a devicetree: magic {m:#x}"),
            Self::Truncated {
                declared,
                available,
            } => {
                write!(
                    f,
                    "devicetree truncated: needs {declared} bytes, {available} given"
                )
            }
            Self::UnsupportedVersion(v) => write!(f, "unsupported devicetree version {v}"),
            Self::BlockOutOfBounds { block } => write!(f, "devicetree {block} block out of bounds"),
            Self::Malformed { offset, problem } => {
                write!(
                    f,
                    "malformed devicetree structure at {offset:#x}: {problem}"
                )
            }
            Self::TooDeep { offset } => write!(f, "devicetree nodes nest too deep at {offset:#x}"),
            Self::MissingProperty { node, property } => {
                write!(f, "{node} node has no `{property}` property")
            }
            Self::BadProperty { property, problem } => write!(f, "bad `{property}`: {problem}"),
            Self::UnsupportedCells { property, cells } => {
                write!(f, "`{property}` uses {cells} cells, more than 64 bits")
            }
            Self::DuplicatePhandle { phandle } => {
                write!(f, "phandle {phandle:#x} is carried by more than one node")
            }
            Self::DanglingPhandle { property, phandle } => {
                write!(
                    f,
                    "`{property}` names phandle {phandle:#x}, which no node has"
                )
            }
            Self::TooManyEntries { property, max } => {
                write!(f, "`{property}` has more than {max} entries")
            }
            Self::NoIommuMap => f.write_str("PCIe host has no `iommu-map`"),
            Self::RidNotMapped { rid } => {
                write!(f, "requester id {rid:#06x} is in no `iommu-map` entry")
            }
            Self::NotAnSmmu { phandle } => {
                write!(f, "phandle {phandle:#x} is not an {SMMUV3_COMPATIBLE} node")
            }
            Self::UnsupportedIommuCells { phandle, cells } => {
                write!(
                    f,
                    "IOMMU {phandle:#x} has #iommu-cells {cells:?}, expected 1"
                )
            }
        }
    }
}

impl core::error::Error for DtError {}

/// Result alias of this module.
pub type Result<T> = core::result::Result<T, DtError>;

/// Which GIC architecture an interrupt controller node describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2: memory-mapped CPU interface (GICC).
    V2,
    /// GICv3/v4: system-register CPU interface, redistributors.
    V3,
}

/// An Arm GIC as the devicetree describes it (bindings `arm,gic.yaml`, `arm,gic-v3.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gic<'a> {
    /// The node's name, e.g. `intc@8000000`.
    pub name: &'a str,
    pub version: GicVersion,
    /// GICD: the distributor frame (`reg` entry 0).
    pub distributor: Region,
    /// `reg` entry 1: the GICv2 CPU interface (GICC), or the GICv3 redistributor range.
    pub cpu_interface: Region,
}

/// A physical address range from a `reg` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub base: u64,
    pub size: u64,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x}..{:#x}",
            self.base,
            self.base.saturating_add(self.size)
        )
    }
}

/// GIC interrupt types (first cell of a GIC interrupt specifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GicKind {
    /// Shared peripheral interrupt: INTID = 32 + number.
    Spi,
    /// Private peripheral interrupt: INTID = 16 + number.
    Ppi,
}

/// Trigger of a GIC interrupt (third cell, low 4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    EdgeRising,
    EdgeFalling,
    LevelHigh,
    LevelLow,
    /// Any other flag combination, kept as is.
    Other(u32),
}

/// One interrupt specifier, decoded when the interrupt parent is a GIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A GIC interrupt (`#interrupt-cells` >= 3).
    Gic {
        kind: GicKind,
        number: u32,
        trigger: Trigger,
    },
    /// An interrupt of another controller: its specifier cells (up to 4 kept).
    Other { cells: [u32; 4], len: u8 },
}

impl Interrupt {
    /// The GIC interrupt id (what the GIC CPU interface reports), if this is a GIC interrupt.
    pub fn gic_intid(&self) -> Option<u32> {
        match *self {
            Self::Gic {
                kind: GicKind::Spi,
                number,
                ..
            } => number.checked_add(32),
            Self::Gic {
                kind: GicKind::Ppi,
                number,
                ..
            } => number.checked_add(16),
            Self::Other { .. } => None,
        }
    }
}

impl fmt::Display for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gic {
                kind,
                number,
                trigger,
            } => {
                let kind = match kind {
                    GicKind::Spi => "SPI",
                    GicKind::Ppi => "PPI",
                };
                let trigger = match trigger {
                    Trigger::EdgeRising => "edge",
                    Trigger::EdgeFalling => "falling edge",
                    Trigger::LevelHigh => "level",
                    Trigger::LevelLow => "low level",
                    Trigger::Other(_) => "other",
                };
                match self.gic_intid() {
                    Some(id) => write!(f, "{kind} {number} (INTID {id}, {trigger})"),
                    None => write!(f, "{kind} {number} ({trigger})"),
                }
            }
            Self::Other { cells, len } => {
                let n = usize::from(*len).min(cells.len());
                write!(f, "{:?}", cells.get(..n).unwrap_or(&[]))
            }
        }
    }
}

/// The SMMU's wired interrupts, by their `interrupt-names` (any may be absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmmuInterrupts {
    /// "eventq": event queue not empty.
    pub eventq: Option<Interrupt>,
    /// "priq": PRI queue not empty.
    pub priq: Option<Interrupt>,
    /// "cmdq-sync": CMD_SYNC completed.
    pub cmdq_sync: Option<Interrupt>,
    /// "gerror": global error.
    pub gerror: Option<Interrupt>,
    /// "combined": one interrupt for everything (some implementations).
    pub combined: Option<Interrupt>,
}

/// An `arm,smmu-v3` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smmu<'a> {
    /// Node name, e.g. `smmuv3@9050000`.
    pub name: &'a str,
    /// The register frame (page 0 and page 1).
    pub regs: Region,
    pub interrupts: SmmuInterrupts,
    /// `#iommu-cells` (1 for SMMUv3: the stream id).
    pub iommu_cells: Option<u32>,
    /// The node's phandle, by which `iommu-map` entries name it.
    pub phandle: Option<u32>,
    /// `dma-coherent`: the SMMU's table and queue accesses snoop CPU caches.
    pub dma_coherent: bool,
}

/// Address space of a PCI `ranges` window (phys.hi bits 25:24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciSpace {
    Config,
    Io,
    Mmio32,
    Mmio64,
}

/// One `ranges` entry of a PCIe host: PCI addresses `pci_addr..+size` appear to the CPU at
/// `cpu_addr..+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindow {
    pub space: PciSpace,
    pub prefetchable: bool,
    pub pci_addr: u64,
    pub cpu_addr: u64,
    pub size: u64,
}

impl fmt::Display for PciWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            PciSpace::Config => "config",
            PciSpace::Io => "I/O",
            PciSpace::Mmio32 => "32-bit MMIO",
            PciSpace::Mmio64 => "64-bit MMIO",
        };
        write!(
            f,
            "{space}{} pci {:#x} -> cpu {:#x}, {:#x} bytes",
            if self.prefetchable {
                " (prefetchable)"
            } else {
                ""
            },
            self.pci_addr,
            self.cpu_addr,
            self.size
        )
    }
}

/// One `iommu-map` entry: requester ids `rid_base..rid_base+length` reach the IOMMU with
/// phandle `iommu` as stream ids `sid_base..sid_base+length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IommuMapEntry {
    pub rid_base: u32,
    pub iommu: u32,
    pub sid_base: u32,
    pub length: u32,
}

impl IommuMapEntry {
    /// The stream id of `rid` (already masked), if this entry covers it.
    pub fn map(&self, rid: u32) -> Option<u32> {
        let offset = rid.checked_sub(self.rid_base)?;
        if offset < self.length {
            self.sid_base.checked_add(offset)
        } else {
            None
        }
    }
}

/// Inclusive range of bus numbers a host bridge decodes (`bus-range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRange {
    pub start: u8,
    pub end: u8,
}

/// A `pci-host-ecam-generic` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciHost<'a> {
    /// Node name, e.g. `pcie@10000000`.
    pub name: &'a str,
    /// The ECAM configuration space.
    pub ecam: Region,
    pub bus_range: BusRange,
    /// `linux,pci-domain`, the PCI segment.
    pub domain: Option<u32>,
    pub dma_coherent: bool,
    /// `ats-supported` (PCI host binding): the root complex forwards ATS, so its functions may
    /// use it where the SMMU has IDR0.ATS.
    pub ats_supported: bool,
    /// `iommu-map-mask`: requester ids are ANDed with it before lookup.
    pub iommu_map_mask: Option<u32>,
    windows: [Option<PciWindow>; MAX_PCI_WINDOWS],
    iommu_map: [IommuMapEntry; MAX_IOMMU_MAP_ENTRIES],
    iommu_map_len: usize,
}

/// The PCI requester id of bus/device/function (bus in 15:8, device in 7:3, function in 2:0).
pub const fn requester_id(bus: u8, device: u8, function: u8) -> u16 {
    ((bus as u16) << 8) | (((device & 0x1f) as u16) << 3) | ((function & 0x7) as u16)
}

impl PciHost<'_> {
    /// The `ranges` windows, in the order the node lists them.
    pub fn windows(&self) -> impl Iterator<Item = PciWindow> + '_ {
        self.windows.iter().flatten().copied()
    }

    /// The first window of `space`.
    pub fn window(&self, space: PciSpace) -> Option<PciWindow> {
        self.windows().find(|w| w.space == space)
    }

    /// The `iommu-map` entries (empty without an `iommu-map`).
    pub fn iommu_map(&self) -> &[IommuMapEntry] {
        self.iommu_map.get(..self.iommu_map_len).unwrap_or(&[])
    }

    /// Which IOMMU (its phandle) and stream id the requester id `rid` reaches.
    pub fn map_rid(&self, rid: u16) -> Result<(u32, u32)> {
        if self.iommu_map_len == 0 {
            return Err(DtError::NoIommuMap);
        }
        let masked = u32::from(rid) & self.iommu_map_mask.unwrap_or(u32::MAX);
        self.iommu_map()
            .iter()
            .find_map(|e| Some((e.iommu, e.map(masked)?)))
            .ok_or(DtError::RidNotMapped { rid })
    }

    /// Physical address of the 4 KiB configuration space of bus/device/function in the ECAM,
    /// or `None` if the bus is outside `bus-range` or the ECAM window.
    pub fn config_address(&self, bus: u8, device: u8, function: u8) -> Option<u64> {
        if bus < self.bus_range.start || bus > self.bus_range.end || device > 31 || function > 7 {
            return None;
        }
        let offset = (u64::from(bus - self.bus_range.start) << 20)
            | (u64::from(device) << 15)
            | (u64::from(function) << 12);
        (offset < self.ecam.size).then(|| self.ecam.base + offset)
    }
}

/// A validated devicetree.
#[derive(Clone, Copy)]
pub struct Devicetree<'a> {
    fdt: Fdt<'a>,
}

impl fmt::Debug for Devicetree<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Devicetree")
            .field("total_size", &self.fdt.total_size())
            .finish()
    }
}

impl<'a> Devicetree<'a> {
    /// Checks `blob` and opens it. Bytes past the size the header declares are ignored.
    pub fn new(blob: &'a [u8]) -> Result<Self> {
        let blob = validate(blob)?;
        // `validate` checked all `Fdt::new` checks, so these errors cannot happen; mapped anyway.
        let fdt = Fdt::new(blob).map_err(|e| match e {
            fdt::FdtError::BadMagic => DtError::BadMagic(be32(blob, 0).unwrap_or(0)),
            _ => DtError::Truncated {
                declared: HEADER_LEN,
                available: blob.len(),
            },
        })?;
        // Lookups take the first node that carries a phandle: a repeated one would have them
        // answer for a node the reference may not mean.
        for (i, node) in fdt.all_nodes().enumerate() {
            if let Some(phandle) = phandle_of(&node) {
                if fdt
                    .all_nodes()
                    .skip(i + 1)
                    .any(|other| phandle_of(&other) == Some(phandle))
                {
                    return Err(DtError::DuplicatePhandle { phandle });
                }
            }
        }
        Ok(Self { fdt })
    }

    /// Opens the devicetree at `addr`, reading at most `max_len` bytes.
    ///
    /// # Safety
    /// `addr..addr + max_len` must be readable memory that stays valid and unchanged for `'a`.
    pub unsafe fn from_addr(addr: usize, max_len: usize) -> Result<Self> {
        if max_len < HEADER_LEN {
            return Err(DtError::Truncated {
                declared: HEADER_LEN,
                available: max_len,
            });
        }
        // SAFETY: the caller guarantees the first `max_len` (>= 40) bytes are readable.
        let header = unsafe { core::slice::from_raw_parts(addr as *const u8, HEADER_LEN) };
        let total = be32(header, 4).unwrap_or(0) as usize;
        let len = total.clamp(HEADER_LEN, max_len);
        // SAFETY: `len <= max_len`, readable and unchanging for `'a` per the caller.
        let blob = unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
        Self::new(blob)
    }

    /// Total size of the blob in bytes.
    pub fn total_size(&self) -> usize {
        self.fdt.total_size()
    }

    /// Every `arm,smmu-v3` node, in tree order.
    pub fn smmus(&self) -> impl Iterator<Item = Result<Smmu<'a>>> + '_ {
        self.fdt
            .all_nodes()
            .filter(|n| is_compatible(n, SMMUV3_COMPATIBLE))
            .map(move |n| self.smmu_from_node(n))
    }

    /// The interrupt controller the SMMU's wired interrupts go to: the first Arm GIC node, with
    /// its distributor and (GICv2) CPU interface frames, the first two `reg` entries.
    pub fn gic(&self) -> Result<Gic<'a>> {
        let node = self
            .fdt
            .all_nodes()
            .find(|n| {
                compatibles(n).any(|c| GICV2_COMPATIBLE.contains(&c) || c == GICV3_COMPATIBLE)
            })
            .ok_or(DtError::MissingProperty {
                node: "interrupt controller",
                property: "compatible = arm,cortex-a15-gic / arm,gic-400 / arm,gic-v3",
            })?;
        let version = if is_compatible(&node, GICV3_COMPATIBLE) {
            GicVersion::V3
        } else {
            GicVersion::V2
        };
        let mut regs = node.raw_reg().ok_or(DtError::MissingProperty {
            node: "interrupt controller",
            property: "reg",
        })?;
        let mut next = |what: &'static str| -> Result<Region> {
            let r = regs.next().ok_or(DtError::BadProperty {
                property: "reg",
                problem: what,
            })?;
            Ok(Region {
                base: cells_to_u64(r.address, "reg")?,
                size: cells_to_u64(r.size, "reg")?,
            })
        };
        let distributor = next("no distributor frame")?;
        // GICv2: GICC; GICv3: the redistributors.
        let second = next("no CPU interface / redistributor frame")?;
        Ok(Gic {
            name: node.name,
            version,
            distributor,
            cpu_interface: second,
        })
    }

    /// Every GICv3 ITS (`arm,gic-v3-its`, a child of the GIC node), in tree order, with its
    /// register frames (control and translation, 128 KiB on QEMU `virt`).
    pub fn its_nodes(&self) -> impl Iterator<Item = Result<GicIts<'a>>> + '_ {
        self.fdt
            .all_nodes()
            .filter(|n| is_compatible(n, GIC_ITS_COMPATIBLE))
            .map(|n| {
                Ok(GicIts {
                    name: n.name,
                    regs: first_reg(&n, GIC_ITS_COMPATIBLE)?,
                    phandle: u32_property(&n, "phandle")?,
                })
            })
    }

    /// How `host` sends MSIs: its `msi-map` (with `msi-map-mask`), or its `msi-parent` (every
    /// requester id is the DeviceID), per the PCI `msi-map` binding (`pci-msi.txt`).
    pub fn msi_map(&self, host: &PciHost<'_>) -> Result<MsiMap> {
        let node = self
            .fdt
            .all_nodes()
            .find(|n| n.name == host.name && is_compatible(n, PCI_HOST_ECAM_COMPATIBLE))
            .ok_or(DtError::MissingProperty {
                node: NODE_PCI,
                property: "compatible",
            })?;
        let mut map = MsiMap {
            mask: u32_property(&node, "msi-map-mask")?,
            entries: [MsiMapEntry::default(); MAX_MSI_MAP_ENTRIES],
            len: 0,
        };
        if let Some(prop) = node.property("msi-map") {
            // (rid-base, msi-controller phandle, msi-base, length), one cell each.
            if prop.value.len() % 16 != 0 {
                return Err(DtError::BadProperty {
                    property: "msi-map",
                    problem: "length is not a whole number of (rid-base, msi-controller, \
                              msi-base, length)",
                });
            }
            for (i, entry) in prop.value.chunks_exact(16).enumerate() {
                let slot = map.entries.get_mut(i).ok_or(DtError::TooManyEntries {
                    property: "msi-map",
                    max: MAX_MSI_MAP_ENTRIES,
                })?;
                *slot = MsiMapEntry {
                    rid_base: be32(entry, 0).unwrap_or(0),
                    controller: be32(entry, 4).unwrap_or(0),
                    device_id_base: be32(entry, 8).unwrap_or(0),
                    length: be32(entry, 12).unwrap_or(0),
                };
                map.len = i + 1;
            }
        } else if let Some(parent) = u32_property(&node, "msi-parent")? {
            map.entries[0] = MsiMapEntry {
                rid_base: 0,
                controller: parent,
                device_id_base: 0,
                length: 0x1_0000,
            };
            map.len = 1;
        } else {
            return Err(DtError::MissingProperty {
                node: NODE_PCI,
                property: "msi-map or msi-parent",
            });
        }
        Ok(map)
    }

    /// The ITS and DeviceID an MSI of requester id `rid` behind `host` reaches.
    pub fn msi_device_id(&self, host: &PciHost<'_>, rid: u16) -> Result<(GicIts<'a>, u32)> {
        let (phandle, device_id) = self.msi_map(host)?.map_rid(rid)?;
        let node = self
            .fdt
            .find_phandle(phandle)
            .ok_or(DtError::DanglingPhandle {
                property: "msi-map",
                phandle,
            })?;
        if !is_compatible(&node, GIC_ITS_COMPATIBLE) {
            return Err(DtError::BadProperty {
                property: "msi-map",
                problem: "the MSI controller is not an arm,gic-v3-its node",
            });
        }
        let its = GicIts {
            name: node.name,
            regs: first_reg(&node, GIC_ITS_COMPATIBLE)?,
            phandle: Some(phandle),
        };
        Ok((its, device_id))
    }

    /// Every `pci-host-ecam-generic` node, in tree order.
    pub fn pci_hosts(&self) -> impl Iterator<Item = Result<PciHost<'a>>> + '_ {
        self.fdt
            .all_nodes()
            .filter(|n| is_compatible(n, PCI_HOST_ECAM_COMPATIBLE))
            .map(parse_pci_host)
    }

    /// The SMMU whose phandle is `phandle`.
    pub fn smmu_by_phandle(&self, phandle: u32) -> Result<Smmu<'a>> {
        let node = self
            .fdt
            .find_phandle(phandle)
            .ok_or(DtError::DanglingPhandle {
                property: "iommu-map",
                phandle,
            })?;
        if !is_compatible(&node, SMMUV3_COMPATIBLE) {
            return Err(DtError::NotAnSmmu { phandle });
        }
        self.smmu_from_node(node)
    }

    /// The SMMU and stream id a PCI requester id behind `host` reaches.
    pub fn stream_id(&self, host: &PciHost<'_>, rid: u16) -> Result<(Smmu<'a>, u32)> {
        let (phandle, sid) = host.map_rid(rid)?;
        let smmu = self.smmu_by_phandle(phandle)?;
        if smmu.iommu_cells != Some(1) {
            return Err(DtError::UnsupportedIommuCells {
                phandle,
                cells: smmu.iommu_cells,
            });
        }
        Ok((smmu, sid))
    }

    fn smmu_from_node(&self, node: FdtNode<'_, 'a>) -> Result<Smmu<'a>> {
        let regs = first_reg(&node, NODE_SMMU)?;
        Ok(Smmu {
            name: node.name,
            regs,
            interrupts: self.smmu_interrupts(&node)?,
            iommu_cells: u32_property(&node, "#iommu-cells")?,
            phandle: u32_property(&node, "phandle")?,
            dma_coherent: node.property("dma-coherent").is_some(),
        })
    }

    /// Decodes `interrupts` by `interrupt-names`. The interrupt parent is the node's own
    /// `interrupt-parent`, else the root's (where QEMU and most SoC trees put it; an
    /// intermediate node's `interrupt-parent` is not consulted).
    fn smmu_interrupts(&self, node: &FdtNode<'_, 'a>) -> Result<SmmuInterrupts> {
        let mut out = SmmuInterrupts::default();
        let Some(specs) = node.property("interrupts") else {
            return Ok(out);
        };
        let parent_phandle = match u32_property(node, "interrupt-parent")? {
            Some(p) => p,
            None => {
                let root = self.fdt.all_nodes().next();
                let inherited = match root {
                    Some(root) => u32_property(&root, "interrupt-parent")?,
                    None => None,
                };
                inherited.ok_or(DtError::MissingProperty {
                    node: NODE_SMMU,
                    property: "interrupt-parent",
                })?
            }
        };
        let parent = self
            .fdt
            .find_phandle(parent_phandle)
            .ok_or(DtError::DanglingPhandle {
                property: "interrupt-parent",
                phandle: parent_phandle,
            })?;
        let cells = u32_property(&parent, "#interrupt-cells")?.ok_or(DtError::MissingProperty {
            node: "interrupt controller",
            property: "#interrupt-cells",
        })? as usize;
        if cells == 0 || cells > 4 {
            return Err(DtError::UnsupportedCells {
                property: "#interrupt-cells",
                cells,
            });
        }
        let is_gic =
            cells >= 3 && compatibles(&parent).any(|c| c.starts_with("arm,") && c.contains("gic"));
        let spec_len = cells * 4;
        if specs.value.len() % spec_len != 0 {
            return Err(DtError::BadProperty {
                property: "interrupts",
                problem: "length is not a whole number of specifiers",
            });
        }
        let names = node
            .property("interrupt-names")
            .map(|p| p.value)
            .unwrap_or(&[]);
        let mut names = names.split(|&b| b == 0).filter(|n| !n.is_empty());
        for spec in specs.value.chunks_exact(spec_len) {
            let Some(name) = names.next() else {
                return Err(DtError::BadProperty {
                    property: "interrupt-names",
                    problem: "fewer names than interrupts",
                });
            };
            let mut c = [0u32; 4];
            for (i, slot) in c.iter_mut().enumerate().take(cells) {
                *slot = be32(spec, i * 4).unwrap_or(0);
            }
            let [kind, number, flags, _] = c;
            let kind = match kind {
                0 => Some(GicKind::Spi),
                1 => Some(GicKind::Ppi),
                // Extended SPI/PPI ranges (GICv3.1) and others: kept raw.
                _ => None,
            };
            let irq = if let (true, Some(kind)) = (is_gic, kind) {
                let trigger = match flags & 0xf {
                    1 => Trigger::EdgeRising,
                    2 => Trigger::EdgeFalling,
                    4 => Trigger::LevelHigh,
                    8 => Trigger::LevelLow,
                    _ => Trigger::Other(flags),
                };
                Interrupt::Gic {
                    kind,
                    number,
                    trigger,
                }
            } else {
                // `cells <= 4` was checked above.
                Interrupt::Other {
                    cells: c,
                    len: cells as u8,
                }
            };
            let slot = match name {
                b"eventq" => &mut out.eventq,
                b"priq" => &mut out.priq,
                b"cmdq-sync" => &mut out.cmdq_sync,
                b"gerror" => &mut out.gerror,
                b"combined" => &mut out.combined,
                // Names the binding does not define are not ours to interpret.
                _ => continue,
            };
            *slot = Some(irq);
        }
        if names.next().is_some() {
            return Err(DtError::BadProperty {
                property: "interrupt-names",
                problem: "more names than interrupts",
            });
        }
        Ok(out)
    }
}

/// The compatible string of a GICv3 ITS node.
pub const GIC_ITS_COMPATIBLE: &str = "arm,gic-v3-its";
/// Most `msi-map` entries a PCIe host may list here (QEMU has one).
pub const MAX_MSI_MAP_ENTRIES: usize = 16;

/// A GICv3 Interrupt Translation Service as the devicetree describes it (`arm,gic-v3-its`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicIts<'a> {
    /// The node's name, e.g. `its@8080000`.
    pub name: &'a str,
    /// ITS_base: the control frame, the translation frame 64 KiB above it.
    pub regs: Region,
    pub phandle: Option<u32>,
}

impl GicIts<'_> {
    /// The MSI doorbell: GITS_TRANSLATER, 0x40 into the translation frame.
    pub fn translater(&self) -> u64 {
        self.regs.base + 0x1_0040
    }
}

/// One `msi-map` entry: requester ids `rid_base..rid_base + length` reach the MSI controller
/// `controller` (a phandle) as DeviceIDs from `device_id_base`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMapEntry {
    pub rid_base: u32,
    pub controller: u32,
    pub device_id_base: u32,
    pub length: u32,
}

/// A PCIe host's `msi-map` (an `msi-parent` becomes one identity entry over every requester id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMap {
    /// `msi-map-mask`: requester ids are ANDed with it before lookup.
    pub mask: Option<u32>,
    entries: [MsiMapEntry; MAX_MSI_MAP_ENTRIES],
    len: usize,
}

impl MsiMap {
    pub fn entries(&self) -> &[MsiMapEntry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Which MSI controller (its phandle) and DeviceID the requester id `rid` reaches.
    pub fn map_rid(&self, rid: u16) -> Result<(u32, u32)> {
        let masked = u32::from(rid) & self.mask.unwrap_or(u32::MAX);
        self.entries()
            .iter()
            .find_map(|e| {
                let offset = masked.checked_sub(e.rid_base)?;
                (offset < e.length).then(|| (e.controller, e.device_id_base.wrapping_add(offset)))
            })
            .ok_or(DtError::RidNotMapped { rid })
    }
}

/// Compatible strings of GICv2 nodes (QEMU's `virt` says `arm,cortex-a15-gic`).
const GICV2_COMPATIBLE: &[&str] = &["arm,cortex-a15-gic", "arm,gic-400", "arm,cortex-a9-gic"];
const GICV3_COMPATIBLE: &str = "arm,gic-v3";

const NODE_SMMU: &str = SMMUV3_COMPATIBLE;
const NODE_PCI: &str = PCI_HOST_ECAM_COMPATIBLE;

fn parse_pci_host<'a>(node: FdtNode<'_, 'a>) -> Result<PciHost<'a>> {
    let ecam = first_reg(&node, NODE_PCI)?;
    let parent_address_cells = node
        .raw_reg()
        .and_then(|mut r| r.next())
        .map(|r| r.address.len() / 4)
        .ok_or(DtError::MissingProperty {
            node: NODE_PCI,
            property: "reg",
        })?;
    let cells = node.cell_sizes();
    if cells.address_cells != 3 {
        return Err(DtError::BadProperty {
            property: "#address-cells",
            problem: "a PCI host's children have 3 address cells",
        });
    }
    if cells.size_cells == 0 || cells.size_cells > 2 {
        return Err(DtError::UnsupportedCells {
            property: "#size-cells",
            cells: cells.size_cells,
        });
    }
    if parent_address_cells == 0 || parent_address_cells > 2 {
        return Err(DtError::UnsupportedCells {
            property: "ranges",
            cells: parent_address_cells,
        });
    }

    let bus_range = match node.property("bus-range") {
        None => BusRange { start: 0, end: 255 },
        Some(p) => {
            let (start, end) = (be32(p.value, 0), be32(p.value, 4));
            match (start, end, p.value.len()) {
                (Some(s), Some(e), 8) if s <= e && e <= 255 => BusRange {
                    start: s as u8,
                    end: e as u8,
                },
                _ => {
                    return Err(DtError::BadProperty {
                        property: "bus-range",
                        problem: "expected two cells, start <= end <= 255",
                    })
                }
            }
        }
    };

    let mut windows = [None; MAX_PCI_WINDOWS];
    if let Some(ranges) = node.property("ranges") {
        let entry_cells = 3 + parent_address_cells + cells.size_cells;
        let entry_len = entry_cells * 4;
        if ranges.value.len() % entry_len != 0 {
            return Err(DtError::BadProperty {
                property: "ranges",
                problem: "length is not a whole number of entries",
            });
        }
        for (i, entry) in ranges.value.chunks_exact(entry_len).enumerate() {
            let slot = windows.get_mut(i).ok_or(DtError::TooManyEntries {
                property: "ranges",
                max: MAX_PCI_WINDOWS,
            })?;
            let hi = be32(entry, 0).unwrap_or(0);
            let space = match (hi >> 24) & 3 {
                0 => PciSpace::Config,
                1 => PciSpace::Io,
                2 => PciSpace::Mmio32,
                _ => PciSpace::Mmio64,
            };
            let pci_addr = cells_to_u64(entry.get(4..12).unwrap_or(&[]), "ranges")?;
            let cpu_end = 12 + parent_address_cells * 4;
            let cpu_addr = cells_to_u64(entry.get(12..cpu_end).unwrap_or(&[]), "ranges")?;
            let size = cells_to_u64(entry.get(cpu_end..).unwrap_or(&[]), "ranges")?;
            *slot = Some(PciWindow {
                space,
                prefetchable: hi & (1 << 30) != 0,
                pci_addr,
                cpu_addr,
                size,
            });
        }
    }

    let mut iommu_map = [IommuMapEntry::default(); MAX_IOMMU_MAP_ENTRIES];
    let mut iommu_map_len = 0;
    if let Some(map) = node.property("iommu-map") {
        // (rid-base, iommu phandle, iommu-base, length): iommu-base is one cell by the binding.
        if map.value.len() % 16 != 0 {
            return Err(DtError::BadProperty {
                property: "iommu-map",
                problem: "length is not a whole number of (rid-base, iommu, sid-base, length)",
            });
        }
        for (i, entry) in map.value.chunks_exact(16).enumerate() {
            let slot = iommu_map.get_mut(i).ok_or(DtError::TooManyEntries {
                property: "iommu-map",
                max: MAX_IOMMU_MAP_ENTRIES,
            })?;
            *slot = IommuMapEntry {
                rid_base: be32(entry, 0).unwrap_or(0),
                iommu: be32(entry, 4).unwrap_or(0),
                sid_base: be32(entry, 8).unwrap_or(0),
                length: be32(entry, 12).unwrap_or(0),
            };
            iommu_map_len = i + 1;
        }
    }

    Ok(PciHost {
        name: node.name,
        ecam,
        bus_range,
        domain: u32_property(&node, "linux,pci-domain")?,
        dma_coherent: node.property("dma-coherent").is_some(),
        ats_supported: node.property("ats-supported").is_some(),
        iommu_map_mask: u32_property(&node, "iommu-map-mask")?,
        windows,
        iommu_map,
        iommu_map_len,
    })
}

/// The strings of a node's `compatible` property.
fn compatibles<'a>(node: &FdtNode<'_, 'a>) -> impl Iterator<Item = &'a str> {
    let value = node.property("compatible").map(|p| p.value).unwrap_or(&[]);
    value
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| core::str::from_utf8(s).ok())
}

fn is_compatible(node: &FdtNode<'_, '_>, with: &str) -> bool {
    compatibles(node).any(|c| c == with)
}

/// A node's phandle as `Fdt::find_phandle` reads it: the first `phandle` property's first cell.
fn phandle_of(node: &FdtNode<'_, '_>) -> Option<u32> {
    node.properties()
        .find(|p| p.name == "phandle")
        .and_then(|p| be32(p.value, 0))
}

/// A one-cell property, `None` if absent.
fn u32_property(node: &FdtNode<'_, '_>, name: &'static str) -> Result<Option<u32>> {
    match node.property(name) {
        None => Ok(None),
        Some(p) if p.value.len() == 4 => Ok(be32(p.value, 0)),
        Some(_) => Err(DtError::BadProperty {
            property: name,
            problem: "expected one cell",
        }),
    }
}

/// The first `reg` entry, in the parent's address and size cells.
fn first_reg(node: &FdtNode<'_, '_>, kind: &'static str) -> Result<Region> {
    let reg = node
        .raw_reg()
        .and_then(|mut r| r.next())
        .ok_or(DtError::MissingProperty {
            node: kind,
            property: "reg",
        })?;
    let base = cells_to_u64(reg.address, "reg")?;
    let size = cells_to_u64(reg.size, "reg")?;
    if size == 0 {
        return Err(DtError::BadProperty {
            property: "reg",
            problem: "zero size",
        });
    }
    Ok(Region { base, size })
}

/// One or two big-endian cells as a number.
fn cells_to_u64(bytes: &[u8], property: &'static str) -> Result<u64> {
    match bytes.len() {
        4 => Ok(u64::from(be32(bytes, 0).unwrap_or(0))),
        8 => {
            let hi = u64::from(be32(bytes, 0).unwrap_or(0));
            let lo = u64::from(be32(bytes, 4).unwrap_or(0));
            Ok(hi << 32 | lo)
        }
        n => Err(DtError::UnsupportedCells {
            property,
            cells: n / 4,
        }),
    }
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

mod validate;

use validate::{validate, HEADER_LEN};

#[cfg(test)]
mod tests;
