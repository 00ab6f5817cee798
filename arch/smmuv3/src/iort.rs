//! ACPI IO Remapping Table (IORT, Arm DEN 0049, revision E.x): which SMMUs exist and which
//! stream id a PCI requester id or platform device id reaches them with, on ACPI machines.
//!
//! Zero-copy over the table's bytes: every field is decoded from little-endian bytes at the
//! offset the spec gives, through bounds-checked reads. Each node's fixed part and its arrays
//! (ID mappings, interrupts, ITS ids, RMR descriptors) are checked against the node's length
//! when the node is parsed, so iterating them afterwards cannot go out of bounds. A malformed
//! or truncated table gives an [`IortError`], never a panic.

use core::fmt;

/// Why an IORT could not be read or a lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IortError {
    /// Fewer bytes than the fixed IORT header (48).
    TooShort { length: usize },
    /// The signature is not "IORT".
    BadSignature([u8; 4]),
    /// The header's length is smaller than the header or larger than the bytes given.
    BadLength { declared: u32, available: usize },
    /// The bytes do not sum to zero modulo 256.
    BadChecksum { sum: u8 },
    /// A node header lies outside the table, or its length is smaller than its header.
    BadNode { offset: u32 },
    /// A node is shorter than its type's fixed fields.
    NodeTooShort {
        offset: u32,
        node_type: u8,
        length: u16,
        needed: usize,
    },
    /// An array a node points to (ID mappings, interrupts, ...) runs past the node.
    ArrayOutOfBounds { offset: u32, array: &'static str },
    /// An ID mapping's output reference points at no node.
    BadReference { offset: u32 },
    /// No root complex node has this PCI segment.
    NoRootComplex { segment: u32 },
    /// No ID mapping of the node covers this input id.
    IdNotMapped { node: u32, id: u32 },
    /// The id maps to a node that is not an SMMUv3 (an ITS group: not translated).
    NotBehindSmmuV3 { node: u32, target_type: u8 },
}

impl fmt::Display for IortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { length } => write!(f, "IORT too short: {length} bytes"),
            Self::BadSignature(s) => write!(f, "not an IORT: signature {s:?}"),
            Self::BadLength {
                declared,
                available,
            } => {
                write!(
                    f,
                    "IORT length {declared} does not fit the {available} bytes given"
                )
            }
            Self::BadChecksum { sum } => write!(f, "IORT checksum wrong: bytes sum to {sum:#x}"),
            Self::BadNode { offset } => write!(f, "IORT node at {offset:#x} is malformed"),
            Self::NodeTooShort {
                offset,
                node_type,
                length,
                needed,
            } => write!(
                f,
                "IORT node at {offset:#x} (type {node_type}) is {length} bytes, needs {needed}"
            ),
            Self::ArrayOutOfBounds { offset, array } => {
                write!(f, "IORT node at {offset:#x}: {array} run past the node")
            }
            Self::BadReference { offset } => {
                write!(f, "IORT reference to {offset:#x} names no node")
            }
            Self::NoRootComplex { segment } => {
                write!(f, "IORT has no root complex for PCI segment {segment}")
            }
            Self::IdNotMapped { node, id } => {
                write!(f, "IORT node at {node:#x} maps no id {id:#x}")
            }
            Self::NotBehindSmmuV3 { node, target_type } => write!(
                f,
                "IORT node at {node:#x} maps to a node of type {target_type}, not an SMMUv3"
            ),
        }
    }
}

impl core::error::Error for IortError {}

/// Result alias of this module.
pub type Result<T> = core::result::Result<T, IortError>;

/// Size of the IORT header: the ACPI table header (36) + node count, node offset, reserved.
pub const HEADER_LEN: usize = 48;
/// Size of the common node header.
const NODE_HEADER_LEN: usize = 16;
/// Size of one ID mapping.
const ID_MAPPING_LEN: usize = 20;

/// Node types (Table 3 of the spec).
pub mod node_type {
    pub const ITS_GROUP: u8 = 0;
    pub const NAMED_COMPONENT: u8 = 1;
    pub const ROOT_COMPLEX: u8 = 2;
    pub const SMMU_V1_V2: u8 = 3;
    pub const SMMU_V3: u8 = 4;
    pub const PMCG: u8 = 5;
    pub const RMR: u8 = 6;
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A field inside bytes whose size was checked at parse: the read cannot fail, and 0 stands in
/// if it ever did.
fn field32(b: &[u8], at: usize) -> u32 {
    le32(b, at).unwrap_or(0)
}

fn field64(b: &[u8], at: usize) -> u64 {
    le64(b, at).unwrap_or(0)
}

/// A validated IORT.
#[derive(Clone, Copy)]
pub struct Iort<'a> {
    bytes: &'a [u8],
    revision: u8,
    node_count: u32,
    node_offset: u32,
}

impl fmt::Debug for Iort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iort")
            .field("length", &self.bytes.len())
            .field("revision", &self.revision)
            .field("node_count", &self.node_count)
            .field("node_offset", &self.node_offset)
            .finish()
    }
}

impl<'a> Iort<'a> {
    /// Checks the header (signature, length, checksum) of the table in `bytes`. Bytes past the
    /// header's length are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let table = Self::parse_unchecked_sum(bytes)?;
        let sum = table.bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b));
        if sum != 0 {
            return Err(IortError::BadChecksum { sum });
        }
        Ok(table)
    }

    /// As [`Iort::parse`] without the checksum (some firmware gets it wrong; the structure is
    /// still checked).
    pub fn parse_unchecked_sum(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < HEADER_LEN {
            return Err(IortError::TooShort {
                length: bytes.len(),
            });
        }
        let signature: [u8; 4] =
            bytes
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .ok_or(IortError::TooShort {
                    length: bytes.len(),
                })?;
        if &signature != b"IORT" {
            return Err(IortError::BadSignature(signature));
        }
        let length = field32(bytes, 4);
        let table = bytes
            .get(..length as usize)
            .filter(|t| t.len() >= HEADER_LEN)
            .ok_or(IortError::BadLength {
                declared: length,
                available: bytes.len(),
            })?;
        Ok(Self {
            bytes: table,
            revision: table.get(8).copied().unwrap_or(0),
            node_count: field32(table, 36),
            node_offset: field32(table, 40),
        })
    }

    /// The table revision from the ACPI header (it grows with each issue of the IORT spec).
    pub fn revision(&self) -> u8 {
        self.revision
    }

    /// The table's bytes (its declared length).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The OEM id from the ACPI header.
    pub fn oem_id(&self) -> &'a [u8] {
        self.bytes.get(10..16).unwrap_or(&[])
    }

    /// The nodes in table order. A malformed node ends the walk with its error.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            table: *self,
            offset: self.node_offset,
            remaining: self.node_count,
            failed: false,
        }
    }

    /// The node at `offset` from the start of the table (what ID mappings reference).
    pub fn node_at(&self, offset: u32) -> Result<Node<'a>> {
        Node::parse(self.bytes, offset)
    }

    /// The root complex node of PCI segment `segment`.
    pub fn root_complex(&self, segment: u32) -> Result<Node<'a>> {
        for node in self.nodes() {
            let node = node?;
            if let NodeKind::RootComplex(rc) = node.kind {
                if rc.segment == segment {
                    return Ok(node);
                }
            }
        }
        Err(IortError::NoRootComplex { segment })
    }

    /// Follows one ID mapping of `node` for `id` and returns the target node and output id.
    pub fn map_id(&self, node: &Node<'a>, id: u32) -> Result<(Node<'a>, u32)> {
        let (mapping, out) = node
            .id_mappings()
            .filter(|m| !m.single)
            .find_map(|m| Some((m, m.map(id)?)))
            .ok_or(IortError::IdNotMapped {
                node: node.offset,
                id,
            })?;
        let target =
            self.node_at(mapping.output_reference)
                .map_err(|_| IortError::BadReference {
                    offset: mapping.output_reference,
                })?;
        Ok((target, out))
    }

    /// The SMMUv3 and stream id a PCI requester id of segment `segment` reaches.
    pub fn map_rid(&self, segment: u32, rid: u16) -> Result<SmmuTarget<'a>> {
        let rc = self.root_complex(segment)?;
        self.map_to_smmu(&rc, u32::from(rid))
    }

    /// The SMMUv3 and stream id the id `id` of `node` (a root complex or named component)
    /// reaches.
    pub fn map_to_smmu(&self, node: &Node<'a>, id: u32) -> Result<SmmuTarget<'a>> {
        let (target, stream_id) = self.map_id(node, id)?;
        match target.kind {
            NodeKind::SmmuV3(smmu) => Ok(SmmuTarget {
                node: target,
                smmu,
                stream_id,
            }),
            _ => Err(IortError::NotBehindSmmuV3 {
                node: node.offset,
                target_type: target.node_type,
            }),
        }
    }

    /// Every SMMUv3 node (malformed nodes are skipped; [`Iort::nodes`] reports them).
    pub fn smmu_v3s(&self) -> impl Iterator<Item = (Node<'a>, SmmuV3)> + 'a {
        self.nodes().filter_map(|n| match n {
            Ok(
                node @ Node {
                    kind: NodeKind::SmmuV3(smmu),
                    ..
                },
            ) => Some((node, smmu)),
            _ => None,
        })
    }
}

/// Where an id lands: the SMMUv3 node and the stream id it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuTarget<'a> {
    pub node: Node<'a>,
    pub smmu: SmmuV3,
    pub stream_id: u32,
}

/// Iterator over the nodes of an IORT.
#[derive(Debug, Clone)]
pub struct Nodes<'a> {
    table: Iort<'a>,
    offset: u32,
    remaining: u32,
    failed: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Result<Node<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        self.remaining -= 1;
        match Node::parse(self.table.bytes, self.offset) {
            Ok(node) => {
                // Node::parse checked offset + length lies inside the table.
                self.offset = self.offset.saturating_add(u32::from(node.length));
                Some(Ok(node))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl core::iter::FusedIterator for Nodes<'_> {}

/// One IORT node: the common header and the decoded type-specific part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node<'a> {
    /// Offset from the start of the table (what ID mappings reference).
    pub offset: u32,
    pub node_type: u8,
    pub length: u16,
    pub revision: u8,
    /// Identifier, unique among the table's nodes (reserved, 0, in older tables).
    pub identifier: u32,
    pub kind: NodeKind<'a>,
    /// The node's bytes (its declared length).
    bytes: &'a [u8],
    mapping_count: u32,
    mapping_offset: u32,
}

/// The type-specific part of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind<'a> {
    ItsGroup(ItsGroup<'a>),
    NamedComponent(NamedComponent<'a>),
    RootComplex(RootComplex),
    Smmu(SmmuV1V2<'a>),
    SmmuV3(SmmuV3),
    Pmcg(Pmcg),
    Rmr(Rmr<'a>),
    /// A type this parser does not know; its header and ID mappings are still available.
    Unknown,
}

impl<'a> Node<'a> {
    fn parse(table: &'a [u8], offset: u32) -> Result<Self> {
        let bad = IortError::BadNode { offset };
        let start = offset as usize;
        if start < HEADER_LEN {
            return Err(bad);
        }
        let header = table
            .get(start..start.checked_add(NODE_HEADER_LEN).ok_or(bad)?)
            .ok_or(bad)?;
        let node_type = header.first().copied().ok_or(bad)?;
        let length = le16(header, 1).ok_or(bad)?;
        if usize::from(length) < NODE_HEADER_LEN {
            return Err(bad);
        }
        let bytes = table.get(start..start + usize::from(length)).ok_or(bad)?;
        let revision = header.get(3).copied().unwrap_or(0);
        let identifier = field32(header, 4);
        let mapping_count = field32(header, 8);
        let mapping_offset = field32(header, 12);
        if mapping_count > 0 {
            let end = (mapping_count as usize)
                .checked_mul(ID_MAPPING_LEN)
                .and_then(|n| n.checked_add(mapping_offset as usize));
            if mapping_offset < NODE_HEADER_LEN as u32 || end.is_none_or(|e| e > bytes.len()) {
                return Err(IortError::ArrayOutOfBounds {
                    offset,
                    array: "ID mappings",
                });
            }
        }
        let need = |needed: usize| {
            if bytes.len() < needed {
                Err(IortError::NodeTooShort {
                    offset,
                    node_type,
                    length,
                    needed,
                })
            } else {
                Ok(())
            }
        };
        let array = |at: u32, count: u32, entry: usize, name: &'static str| {
            let end = (count as usize)
                .checked_mul(entry)
                .and_then(|n| n.checked_add(at as usize));
            if count > 0 && end.is_none_or(|e| e > bytes.len()) {
                Err(IortError::ArrayOutOfBounds {
                    offset,
                    array: name,
                })
            } else {
                Ok(())
            }
        };
        let kind = match node_type {
            node_type::ITS_GROUP => {
                need(20)?;
                let count = field32(bytes, 16);
                array(20, count, 4, "ITS identifiers")?;
                NodeKind::ItsGroup(ItsGroup { bytes, count })
            }
            node_type::NAMED_COMPONENT => {
                need(29)?;
                let name_area = bytes.get(29..).unwrap_or(&[]);
                let name_len = name_area
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_area.len());
                NodeKind::NamedComponent(NamedComponent {
                    flags: field32(bytes, 16),
                    memory: MemoryAccess::decode(field64(bytes, 20)),
                    address_size_limit: bytes.get(28).copied().unwrap_or(0),
                    name: name_area.get(..name_len).unwrap_or(&[]),
                })
            }
            node_type::ROOT_COMPLEX => {
                need(32)?;
                NodeKind::RootComplex(RootComplex {
                    memory: MemoryAccess::decode(field64(bytes, 16)),
                    ats_supported: field32(bytes, 24) & 1 != 0,
                    ats_attribute: field32(bytes, 24),
                    segment: field32(bytes, 28),
                    address_size_limit: bytes.get(32).copied(),
                    pasid_capabilities: le16(bytes, 33),
                    flags: le32(bytes, 36),
                })
            }
            node_type::SMMU_V1_V2 => {
                need(60)?;
                let global = field32(bytes, 40);
                let context_count = field32(bytes, 44);
                let context_offset = field32(bytes, 48);
                let pmu_count = field32(bytes, 52);
                let pmu_offset = field32(bytes, 56);
                array(global, 2, 8, "global interrupts")?;
                array(context_offset, context_count, 8, "context interrupts")?;
                array(pmu_offset, pmu_count, 8, "PMU interrupts")?;
                NodeKind::Smmu(SmmuV1V2 {
                    base: field64(bytes, 16),
                    span: field64(bytes, 24),
                    model: SmmuModel::from_raw(field32(bytes, 32)),
                    flags: field32(bytes, 36),
                    bytes,
                    global_offset: global,
                    context_count,
                    context_offset,
                    pmu_count,
                    pmu_offset,
                })
            }
            node_type::SMMU_V3 => {
                // Older tables end the node after SYNC GSIV; the proximity domain and the DeviceID
                // mapping index are read only when the node is long enough and flags them valid.
                need(60)?;
                let flags = field32(bytes, 24);
                NodeKind::SmmuV3(SmmuV3 {
                    base: field64(bytes, 16),
                    coherent_override: flags & 1 != 0,
                    httu_override: match (flags >> 1) & 3 {
                        0 => HttuOverride::None,
                        1 => HttuOverride::AccessFlag,
                        2 => HttuOverride::AccessFlagAndDirty,
                        _ => HttuOverride::Reserved,
                    },
                    flags,
                    vatos_base: field64(bytes, 32),
                    model: field32(bytes, 40),
                    event_gsiv: field32(bytes, 44),
                    pri_gsiv: field32(bytes, 48),
                    gerr_gsiv: field32(bytes, 52),
                    sync_gsiv: field32(bytes, 56),
                    proximity_domain: le32(bytes, 60).filter(|_| flags & (1 << 3) != 0),
                    device_id_mapping_index: le32(bytes, 64).filter(|_| flags & (1 << 4) != 0),
                })
            }
            node_type::PMCG => {
                need(32)?;
                NodeKind::Pmcg(Pmcg {
                    page0_base: field64(bytes, 16),
                    overflow_gsiv: field32(bytes, 24),
                    node_reference: field32(bytes, 28),
                    page1_base: le64(bytes, 32),
                })
            }
            node_type::RMR => {
                need(28)?;
                let count = field32(bytes, 20);
                let desc_offset = field32(bytes, 24);
                array(desc_offset, count, 20, "RMR descriptors")?;
                NodeKind::Rmr(Rmr {
                    flags: field32(bytes, 16),
                    bytes,
                    count,
                    desc_offset,
                })
            }
            _ => NodeKind::Unknown,
        };
        Ok(Self {
            offset,
            node_type,
            length,
            revision,
            identifier,
            kind,
            bytes,
            mapping_count,
            mapping_offset,
        })
    }

    /// The node's ID mappings (bounds checked at parse).
    pub fn id_mappings(&self) -> impl Iterator<Item = IdMapping> + 'a {
        let bytes = self.bytes;
        let start = self.mapping_offset as usize;
        (0..self.mapping_count as usize).map_while(move |i| {
            let at = i.checked_mul(ID_MAPPING_LEN)?.checked_add(start)?;
            let entry = bytes.get(at..at.checked_add(ID_MAPPING_LEN)?)?;
            Some(IdMapping {
                input_base: field32(entry, 0),
                id_count: field32(entry, 4),
                output_base: field32(entry, 8),
                output_reference: field32(entry, 12),
                single: field32(entry, 16) & 1 != 0,
            })
        })
    }
}

/// One ID mapping: input ids `input_base..=input_base + id_count` become
/// `output_base + (id - input_base)` at the node `output_reference`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapping {
    pub input_base: u32,
    /// The spec's "Number of IDs": the number of ids in the range minus one.
    pub id_count: u32,
    pub output_base: u32,
    /// Offset of the target node from the start of the table.
    pub output_reference: u32,
    /// Single mapping: the node's one id (e.g. an SMMU's own MSIs), input fields ignored.
    pub single: bool,
}

impl IdMapping {
    /// The output id of `id`, if this (range) mapping covers it.
    pub fn map(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.input_base)?;
        if offset <= self.id_count {
            self.output_base.checked_add(offset)
        } else {
            None
        }
    }
}

/// Memory access properties of a root complex or named component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryAccess {
    /// CCA: the device's accesses are cache coherent.
    pub coherent: bool,
    /// Allocation hints (transient, write-allocate, read-allocate, override).
    pub allocation_hints: u8,
    /// Memory access flags (CPM, DACS, CANWBS).
    pub flags: u8,
}

impl MemoryAccess {
    fn decode(raw: u64) -> Self {
        let [cca0, _, _, _, ah, _, _, maf] = raw.to_le_bytes();
        Self {
            coherent: cca0 & 1 != 0,
            allocation_hints: ah,
            flags: maf,
        }
    }
}

/// ITS group node: the GIC ITSs MSIs can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItsGroup<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> ItsGroup<'a> {
    /// The GIC ITS identifiers (as in MADT GIC ITS structures).
    pub fn its_ids(&self) -> impl Iterator<Item = u32> + 'a {
        let bytes = self.bytes;
        (0..self.count as usize).map_while(move |i| le32(bytes, i.checked_mul(4)?.checked_add(20)?))
    }
}

/// Named component node: a platform device described in the ACPI namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedComponent<'a> {
    pub flags: u32,
    pub memory: MemoryAccess,
    /// Device memory address size limit, in bits.
    pub address_size_limit: u8,
    /// Full path of the device object, e.g. `\_SB.DEV0` (NUL removed).
    pub name: &'a [u8],
}

/// Root complex node: a PCI segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootComplex {
    pub memory: MemoryAccess,
    /// ATS attribute bit 0: the root complex supports ATS.
    pub ats_supported: bool,
    pub ats_attribute: u32,
    /// PCI segment number (as in MCFG).
    pub segment: u32,
    /// Memory address size limit in bits (absent from the oldest, shorter nodes).
    pub address_size_limit: Option<u8>,
    /// PASID capabilities (absent from older, shorter nodes).
    pub pasid_capabilities: Option<u16>,
    /// Flags (absent from older, shorter nodes).
    pub flags: Option<u32>,
}

/// SMMUv1/v2 implementation (Model field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmmuModel {
    GenericV1,
    GenericV2,
    Mmu400,
    Mmu500,
    Mmu401,
    CaviumThunderX,
    Other(u32),
}

impl SmmuModel {
    fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::GenericV1,
            1 => Self::GenericV2,
            2 => Self::Mmu400,
            3 => Self::Mmu500,
            4 => Self::Mmu401,
            5 => Self::CaviumThunderX,
            other => Self::Other(other),
        }
    }
}

/// An interrupt of an SMMUv1/v2 node: GSIV and flags (bit 0: edge-triggered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gsiv {
    pub gsiv: u32,
    pub flags: u32,
}

/// SMMUv1/v2 node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuV1V2<'a> {
    pub base: u64,
    pub span: u64,
    pub model: SmmuModel,
    pub flags: u32,
    bytes: &'a [u8],
    global_offset: u32,
    context_count: u32,
    context_offset: u32,
    pmu_count: u32,
    pmu_offset: u32,
}

impl<'a> SmmuV1V2<'a> {
    fn gsivs(&self, at: u32, count: u32) -> impl Iterator<Item = Gsiv> + 'a {
        let bytes = self.bytes;
        (0..count as usize).map_while(move |i| {
            let o = i.checked_mul(8)?.checked_add(at as usize)?;
            Some(Gsiv {
                gsiv: le32(bytes, o)?,
                flags: le32(bytes, o.checked_add(4)?)?,
            })
        })
    }

    /// SMMU_NSgIrpt and SMMU_NSgCfgIrpt.
    pub fn global_interrupts(&self) -> impl Iterator<Item = Gsiv> + 'a {
        self.gsivs(self.global_offset, 2)
    }

    /// One interrupt per context bank.
    pub fn context_interrupts(&self) -> impl Iterator<Item = Gsiv> + 'a {
        self.gsivs(self.context_offset, self.context_count)
    }

    /// PMU interrupts.
    pub fn pmu_interrupts(&self) -> impl Iterator<Item = Gsiv> + 'a {
        self.gsivs(self.pmu_offset, self.pmu_count)
    }
}

/// HTTU override of an SMMUv3 node (flags bits 2:1): what firmware says overrides IDR0.HTTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttuOverride {
    None,
    AccessFlag,
    AccessFlagAndDirty,
    Reserved,
}

/// SMMUv3 node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuV3 {
    /// Base address of the register frame (page 0).
    pub base: u64,
    /// Flags bit 0: the SMMU is coherent whatever IDR0.COHACC says.
    pub coherent_override: bool,
    pub httu_override: HttuOverride,
    /// The raw flags (bit 3 proximity domain valid, bit 4 DeviceID mapping index valid).
    pub flags: u32,
    /// VATOS page base (0 if none).
    pub vatos_base: u64,
    /// 0 generic; 1 HiSilicon Hi161x; 2 Cavium CN99xx (quirks).
    pub model: u32,
    /// Event queue interrupt (0: none or MSI).
    pub event_gsiv: u32,
    pub pri_gsiv: u32,
    pub gerr_gsiv: u32,
    pub sync_gsiv: u32,
    /// NUMA proximity domain, when flagged valid.
    pub proximity_domain: Option<u32>,
    /// Index of the ID mapping giving the SMMU's own MSI DeviceID, when flagged valid.
    pub device_id_mapping_index: Option<u32>,
}

/// Performance monitoring counter group node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pmcg {
    pub page0_base: u64,
    pub overflow_gsiv: u32,
    /// The node (SMMU or root complex) whose events this PMCG counts.
    pub node_reference: u32,
    /// Page 1 base (absent from the oldest, shorter nodes).
    pub page1_base: Option<u64>,
}

/// Reserved memory range node: memory the device keeps accessing across OS handover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rmr<'a> {
    /// Bit 0: remapping permitted; bit 1: privileged access; bits 9:2: access attributes.
    pub flags: u32,
    bytes: &'a [u8],
    count: u32,
    desc_offset: u32,
}

/// One reserved range of an RMR node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmrRange {
    pub base: u64,
    pub length: u64,
}

impl<'a> Rmr<'a> {
    /// The reserved ranges (bounds checked at parse).
    pub fn ranges(&self) -> impl Iterator<Item = RmrRange> + 'a {
        let bytes = self.bytes;
        let start = self.desc_offset as usize;
        (0..self.count as usize).map_while(move |i| {
            let at = i.checked_mul(20)?.checked_add(start)?;
            Some(RmrRange {
                base: le64(bytes, at)?,
                length: le64(bytes, at.checked_add(8)?)?,
            })
        })
    }
}

#[cfg(test)]
mod tests;
