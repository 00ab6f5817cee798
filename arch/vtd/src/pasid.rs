//! Scalable-mode PASID structures (VT-d spec 9.5, 9.6): the PASID directory a scalable-mode
//! context entry points to, and the 512-bit PASID table entries that say how each PASID of a
//! device is translated.
//!
//! A PASID splits in two: bits 19:6 index the directory (8-byte entries, each pointing to a
//! PASID table), bits 5:0 index that table (64 entries of 64 bytes: one 4 KiB page). Each PASID
//! entry has a PASID Granular Translation Type (PGTT); one typed builder per PGTT
//! ([`FirstStage`], [`SecondStage`], [`PassThrough`], [`Nested`]) holds only the fields that type
//! uses, and its `build` checks them against the unit's CAP/ECAP before the one encoder
//! (`PasidEntry::encode_fields`) lays out the bits.

use core::fmt;

use iommu::addr::PhysAddr;

use crate::caps::{Agaw, Capability, ExtendedCapability};
use crate::root_table::{table_pointer, Did, EntryError};

/// A process address space id: 20 bits (PCIe PASID TLP prefix).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pasid(u32);

impl Pasid {
    /// The widest PASID the architecture defines.
    pub const BITS: u8 = 20;

    /// PASID 0, the usual RID_PASID: what requests without a PASID are translated as.
    pub const ZERO: Self = Self(0);

    /// `pasid` if it fits in 20 bits.
    pub const fn new(pasid: u32) -> Option<Self> {
        if pasid >> Self::BITS == 0 {
            Some(Self(pasid))
        } else {
            None
        }
    }

    /// The low 20 bits of `bits` (for decoding hardware fields that are 20 bits wide).
    pub const fn from_bits_truncated(bits: u32) -> Self {
        Self(bits & ((1 << Self::BITS) - 1))
    }

    /// `pasid` if it fits in the `width` bits a unit supports (ECAP.PSS + 1).
    pub const fn for_width(pasid: u32, width: u8) -> Result<Self, EntryError> {
        let width = if width > Self::BITS {
            Self::BITS
        } else {
            width
        };
        if pasid >> width == 0 {
            Ok(Self(pasid))
        } else {
            Err(EntryError::PasidOutOfRange { pasid, bits: width })
        }
    }

    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Index of the PASID directory entry (bits 19:6).
    pub const fn directory_index(self) -> usize {
        (self.0 >> 6) as usize
    }

    /// Index of the entry in its PASID table (bits 5:0).
    pub const fn table_index(self) -> usize {
        (self.0 & 0x3f) as usize
    }
}

impl fmt::Debug for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pasid({:#x})", self.0)
    }
}

/// Entries in one PASID table (one 4 KiB page of 64-byte entries).
pub const PASID_TABLE_ENTRIES: usize = 64;

/// The size of a PASID directory: 2^(PDTS + 7) entries of 8 bytes (9.4, PDTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidDirectorySize(u8);

impl PasidDirectorySize {
    /// One 4 KiB page: 512 entries, PASIDs below 2^15.
    pub const ONE_PAGE: Self = Self(2);

    /// The size with this PDTS value (0..=7).
    pub const fn from_pdts(pdts: u8) -> Option<Self> {
        if pdts <= 7 {
            Some(Self(pdts))
        } else {
            None
        }
    }

    /// The smallest directory that reaches every PASID of `bits` bits (at most 20).
    pub const fn covering(bits: u8) -> Self {
        let bits = if bits > Pasid::BITS {
            Pasid::BITS
        } else {
            bits
        };
        // 2^(bits - 6) entries needed, 2^(PDTS + 7) provided.
        let needed_log2 = bits.saturating_sub(6);
        Self(needed_log2.saturating_sub(7))
    }

    pub const fn pdts(self) -> u8 {
        self.0
    }

    pub const fn entries(self) -> usize {
        1 << (self.0 as usize + 7)
    }

    /// Bytes the directory takes (1 KiB to 128 KiB).
    pub const fn bytes(self) -> usize {
        self.entries() * 8
    }

    /// Whether `pasid` has a directory entry.
    pub const fn covers(self, pasid: Pasid) -> bool {
        pasid.directory_index() < self.entries()
    }
}

/// 9.5 Scalable-Mode PASID Directory Entry: present bit, FPD and the PASID table of 64 PASIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidDirEntry {
    raw: u64,
}

impl PasidDirEntry {
    pub const NOT_PRESENT: Self = Self { raw: 0 };

    /// A present entry pointing to a PASID table: P(0), FPD(1) clear, SMPTBLPTR(63:12).
    pub fn present(table: PhysAddr) -> Result<Self, EntryError> {
        let t = table_pointer("PASID table", table)?;
        Ok(Self { raw: t | 1 })
    }

    /// The same entry with FPD set: faults for the 64 PASIDs behind it are not reported.
    pub const fn with_fault_processing_disabled(self) -> Self {
        Self { raw: self.raw | 2 }
    }

    pub const fn encode(&self) -> u64 {
        self.raw
    }

    pub const fn decode(raw: u64) -> Self {
        Self { raw }
    }

    pub const fn table(&self) -> Option<PhysAddr> {
        if self.raw & 1 == 0 {
            None
        } else {
            Some(PhysAddr::new(self.raw & !0xfff))
        }
    }
}

/// PASID Granular Translation Type (PGTT, PASID entry bits 8:6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pgtt {
    /// 001: first-stage (x86-format) tables only.
    FirstStage,
    /// 010: second-stage tables only.
    SecondStage,
    /// 011: first-stage tables whose addresses go through second-stage tables.
    Nested,
    /// 100: untranslated.
    PassThrough,
}

impl Pgtt {
    const fn bits(self) -> u64 {
        match self {
            Self::FirstStage => 1,
            Self::SecondStage => 2,
            Self::Nested => 3,
            Self::PassThrough => 4,
        }
    }

    const fn from_bits(bits: u64) -> Option<Self> {
        match bits {
            1 => Some(Self::FirstStage),
            2 => Some(Self::SecondStage),
            3 => Some(Self::Nested),
            4 => Some(Self::PassThrough),
            _ => None,
        }
    }
}

/// First-stage paging mode (FLPM, bits 131:130): how deep the x86-format table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStagePaging {
    /// 4-level, 48-bit canonical addresses.
    FourLevel,
    /// 5-level, 57-bit canonical addresses; needs CAP.FS5LP.
    FiveLevel,
}

impl FirstStagePaging {
    const fn flpm(self) -> u64 {
        match self {
            Self::FourLevel => 0,
            Self::FiveLevel => 1,
        }
    }

    /// The AW a first-stage entry carries. The spec leaves AW to the second stage, but QEMU
    /// derives the canonical-address check of first-stage walks from AW (AW 0 would fault every
    /// IOVA above 1 GiB), and Linux fills it too: 48 bits for 4-level, 57 for 5-level.
    const fn agaw(self) -> Agaw {
        match self {
            Self::FourLevel => Agaw::Level4,
            Self::FiveLevel => Agaw::Level5,
        }
    }
}

/// Memory-type attributes of first-stage and nested translations (PASID entry bits 89:127),
/// used by hardware only with ECAP.MTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryType {
    /// CD: cache disable for accesses through the entry.
    pub cache_disable: bool,
    /// EMTE and EMT: an extended memory type (0..=7) overriding the page's, when `Some`.
    pub extended: Option<u8>,
    /// PWT and PCD: attributes of the first-stage root table access.
    pub write_through: bool,
    pub cache_disable_root: bool,
    /// PAT: the eight PAT entries the first-stage PAT/PCD/PWT bits select from.
    pub pat: u32,
}

/// Options every PGTT has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Common {
    /// FPD: faults through this entry are neither recorded nor reported.
    pub fault_processing_disabled: bool,
    /// PWSNP: the unit's walks of the tables behind this entry snoop CPU caches (needs
    /// ECAP.SMPWC; without it, software flushes table writes).
    pub page_walk_snoop: bool,
}

/// A first-stage-only PASID entry (PGTT 001): the device's addresses are translated by an
/// x86-format table at `root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstStage {
    pub domain: Did,
    pub root: PhysAddr,
    pub paging: FirstStagePaging,
    /// SRE: supervisor requests allowed (needs ECAP.SRS).
    pub supervisor_requests: bool,
    /// WPE: supervisor writes honour read-only pages (as CR0.WP).
    pub write_protect: bool,
    /// PGSNP: every access through the entry snoops (needs ECAP.SC).
    pub page_snoop: bool,
    pub memory_type: Option<MemoryType>,
    pub common: Common,
}

impl FirstStage {
    pub const fn new(domain: Did, root: PhysAddr, paging: FirstStagePaging) -> Self {
        Self {
            domain,
            root,
            paging,
            supervisor_requests: false,
            write_protect: false,
            page_snoop: false,
            memory_type: None,
            common: Common {
                fault_processing_disabled: false,
                page_walk_snoop: false,
            },
        }
    }

    pub fn build(
        &self,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<PasidEntry, EntryError> {
        require(ecap.flts(), "ECAP.FLTS")?;
        let root = table_pointer("first-stage table", self.root)?;
        check_first_stage(
            self.paging,
            self.supervisor_requests,
            self.memory_type,
            cap,
            ecap,
        )?;
        check_common(self.domain, self.common, self.page_snoop, cap, ecap)?;
        Ok(PasidEntry::encode_fields(Fields {
            pgtt: Pgtt::FirstStage,
            domain: self.domain,
            aw: self.paging.agaw(),
            slptptr: 0,
            flptptr: root,
            flpm: self.paging.flpm(),
            sre: self.supervisor_requests,
            wpe: self.write_protect,
            pgsnp: self.page_snoop,
            slade: false,
            slee: false,
            eafe: false,
            memory_type: self.memory_type,
            common: self.common,
        }))
    }
}

/// A second-stage-only PASID entry (PGTT 010): the VT-d second-stage table format, as in a
/// legacy context entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondStage {
    pub domain: Did,
    pub agaw: Agaw,
    pub root: PhysAddr,
    /// SLADE: hardware sets accessed/dirty bits in second-stage entries (needs ECAP.SLADS).
    pub access_dirty: bool,
    /// SLEE: the X bit of second-stage entries is honoured for execute requests.
    pub execute: bool,
    /// PGSNP (needs ECAP.SC).
    pub page_snoop: bool,
    pub common: Common,
}

impl SecondStage {
    pub const fn new(domain: Did, agaw: Agaw, root: PhysAddr) -> Self {
        Self {
            domain,
            agaw,
            root,
            access_dirty: false,
            execute: false,
            page_snoop: false,
            common: Common {
                fault_processing_disabled: false,
                page_walk_snoop: false,
            },
        }
    }

    pub fn build(
        &self,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<PasidEntry, EntryError> {
        require(ecap.slts(), "ECAP.SLTS")?;
        let root = table_pointer("second-stage table", self.root)?;
        check_second_stage(self.agaw, self.access_dirty, cap, ecap)?;
        check_common(self.domain, self.common, self.page_snoop, cap, ecap)?;
        Ok(PasidEntry::encode_fields(Fields {
            pgtt: Pgtt::SecondStage,
            domain: self.domain,
            aw: self.agaw,
            slptptr: root,
            flptptr: 0,
            flpm: 0,
            sre: false,
            wpe: false,
            pgsnp: self.page_snoop,
            slade: self.access_dirty,
            slee: self.execute,
            eafe: false,
            memory_type: None,
            common: self.common,
        }))
    }
}

/// A pass-through PASID entry (PGTT 100): untranslated. AW must hold the largest width the
/// unit supports and the domain id still tags the PASID cache and IOTLB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassThrough {
    pub domain: Did,
    pub agaw: Agaw,
    pub common: Common,
}

impl PassThrough {
    pub const fn new(domain: Did, agaw: Agaw) -> Self {
        Self {
            domain,
            agaw,
            common: Common {
                fault_processing_disabled: false,
                page_walk_snoop: false,
            },
        }
    }

    pub fn build(
        &self,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<PasidEntry, EntryError> {
        require(ecap.pt(), "ECAP.PT")?;
        check_agaw(self.agaw, cap)?;
        check_common(self.domain, self.common, false, cap, ecap)?;
        Ok(PasidEntry::encode_fields(Fields {
            pgtt: Pgtt::PassThrough,
            domain: self.domain,
            aw: self.agaw,
            slptptr: 0,
            flptptr: 0,
            flpm: 0,
            sre: false,
            wpe: false,
            pgsnp: false,
            slade: false,
            slee: false,
            eafe: false,
            memory_type: None,
            common: self.common,
        }))
    }
}

/// A nested PASID entry (PGTT 011): a first-stage table (typically a guest's) whose table and
/// output addresses are translated by a second-stage table (the host's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nested {
    pub domain: Did,
    /// The first-stage table, as an address in the second stage's input space.
    pub first_stage_root: PhysAddr,
    pub paging: FirstStagePaging,
    /// The second stage's depth and table.
    pub agaw: Agaw,
    pub second_stage_root: PhysAddr,
    pub supervisor_requests: bool,
    pub write_protect: bool,
    pub access_dirty: bool,
    pub execute: bool,
    pub page_snoop: bool,
    /// EAFE: hardware sets the extended-accessed bit of first-stage entries (needs ECAP.EAFS).
    pub extended_accessed: bool,
    pub memory_type: Option<MemoryType>,
    pub common: Common,
}

impl Nested {
    pub const fn new(
        domain: Did,
        first_stage_root: PhysAddr,
        paging: FirstStagePaging,
        agaw: Agaw,
        second_stage_root: PhysAddr,
    ) -> Self {
        Self {
            domain,
            first_stage_root,
            paging,
            agaw,
            second_stage_root,
            supervisor_requests: false,
            write_protect: false,
            access_dirty: false,
            execute: false,
            page_snoop: false,
            extended_accessed: false,
            memory_type: None,
            common: Common {
                fault_processing_disabled: false,
                page_walk_snoop: false,
            },
        }
    }

    pub fn build(
        &self,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<PasidEntry, EntryError> {
        require(ecap.nest(), "ECAP.NEST")?;
        if self.extended_accessed {
            require(ecap.eafs(), "ECAP.EAFS")?;
        }
        require(ecap.flts(), "ECAP.FLTS")?;
        require(ecap.slts(), "ECAP.SLTS")?;
        let fl = table_pointer("first-stage table", self.first_stage_root)?;
        let sl = table_pointer("second-stage table", self.second_stage_root)?;
        check_first_stage(
            self.paging,
            self.supervisor_requests,
            self.memory_type,
            cap,
            ecap,
        )?;
        check_second_stage(self.agaw, self.access_dirty, cap, ecap)?;
        check_common(self.domain, self.common, self.page_snoop, cap, ecap)?;
        Ok(PasidEntry::encode_fields(Fields {
            pgtt: Pgtt::Nested,
            domain: self.domain,
            aw: self.agaw,
            slptptr: sl,
            flptptr: fl,
            flpm: self.paging.flpm(),
            sre: self.supervisor_requests,
            wpe: self.write_protect,
            pgsnp: self.page_snoop,
            slade: self.access_dirty,
            slee: self.execute,
            eafe: self.extended_accessed,
            memory_type: self.memory_type,
            common: self.common,
        }))
    }
}

fn require(present: bool, feature: &'static str) -> Result<(), EntryError> {
    if present {
        Ok(())
    } else {
        Err(EntryError::Unsupported { feature })
    }
}

fn check_agaw(agaw: Agaw, cap: Capability) -> Result<(), EntryError> {
    if cap.sagaw().contains(agaw) {
        Ok(())
    } else {
        Err(EntryError::AddressWidthUnsupported { agaw })
    }
}

fn check_first_stage(
    paging: FirstStagePaging,
    sre: bool,
    memory_type: Option<MemoryType>,
    cap: Capability,
    ecap: ExtendedCapability,
) -> Result<(), EntryError> {
    if paging == FirstStagePaging::FiveLevel {
        require(cap.fs5lp(), "CAP.FS5LP")?;
    }
    if sre {
        require(ecap.srs(), "ECAP.SRS")?;
    }
    if let Some(mt) = memory_type {
        require(ecap.mts(), "ECAP.MTS")?;
        if mt.extended.is_some_and(|emt| emt > 7) {
            return Err(EntryError::Unsupported {
                feature: "EMT above 7",
            });
        }
    }
    Ok(())
}

fn check_second_stage(
    agaw: Agaw,
    access_dirty: bool,
    cap: Capability,
    ecap: ExtendedCapability,
) -> Result<(), EntryError> {
    check_agaw(agaw, cap)?;
    if access_dirty {
        require(ecap.slads(), "ECAP.SLADS")?;
    }
    Ok(())
}

fn check_common(
    domain: Did,
    common: Common,
    page_snoop: bool,
    cap: Capability,
    ecap: ExtendedCapability,
) -> Result<(), EntryError> {
    Did::for_unit(domain.raw(), cap)?;
    if common.page_walk_snoop {
        require(ecap.smpwcs(), "ECAP.SMPWC")?;
    }
    if page_snoop {
        require(ecap.sc(), "ECAP.SC")?;
    }
    Ok(())
}

/// Every field of a PASID entry, filled by one PGTT builder and laid out by
/// `PasidEntry::encode_fields`.
struct Fields {
    pgtt: Pgtt,
    domain: Did,
    aw: Agaw,
    slptptr: u64,
    flptptr: u64,
    flpm: u64,
    sre: bool,
    wpe: bool,
    pgsnp: bool,
    slade: bool,
    slee: bool,
    eafe: bool,
    memory_type: Option<MemoryType>,
    common: Common,
}

/// 9.6 Scalable-Mode PASID Table Entry: 512 bits, of which quadwords 0 to 2 are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidEntry {
    raw: [u64; 8],
}

impl PasidEntry {
    /// Blocked: requests with this PASID fault (reason 0x59, PASID entry not present).
    pub const NOT_PRESENT: Self = Self { raw: [0; 8] };

    /// Blocked and silent: not present, FPD set.
    pub const BLOCKED_SILENT: Self = Self {
        raw: [2, 0, 0, 0, 0, 0, 0, 0],
    };

    /// The one place the PASID entry is laid out (9.6):
    /// - quadword 0: P(0), FPD(1), AW(4:2), SLEE(5), PGTT(8:6), SLADE(9), SLPTPTR(63:12);
    /// - quadword 1: DID(15:0), PWSNP(23), PGSNP(24), CD(25), EMTE(26), EMT(29:27), PWT(30),
    ///   PCD(31), PAT(63:32);
    /// - quadword 2: SRE(0), FLPM(3:2), WPE(4), EAFE(7), FLPTPTR(63:12);
    /// - quadwords 3 to 7 reserved.
    fn encode_fields(f: Fields) -> Self {
        let w0 = 1
            | flag(f.common.fault_processing_disabled, 1)
            | (f.aw.encoding() as u64) << 2
            | flag(f.slee, 5)
            | f.pgtt.bits() << 6
            | flag(f.slade, 9)
            | f.slptptr;
        let mut w1 = f.domain.raw() as u64 | flag(f.common.page_walk_snoop, 23) | flag(f.pgsnp, 24);
        if let Some(mt) = f.memory_type {
            w1 |= flag(mt.cache_disable, 25)
                | match mt.extended {
                    Some(emt) => 1 << 26 | (emt as u64 & 7) << 27,
                    None => 0,
                }
                | flag(mt.write_through, 30)
                | flag(mt.cache_disable_root, 31)
                | (mt.pat as u64) << 32;
        }
        let w2 = flag(f.sre, 0) | f.flpm << 2 | flag(f.wpe, 4) | flag(f.eafe, 7) | f.flptptr;
        Self {
            raw: [w0, w1, w2, 0, 0, 0, 0, 0],
        }
    }

    /// The 512-bit entry, quadword 0 first.
    pub const fn encode(&self) -> [u64; 8] {
        self.raw
    }

    pub const fn decode(raw: [u64; 8]) -> Self {
        Self { raw }
    }

    pub const fn is_present(&self) -> bool {
        self.raw[0] & 1 != 0
    }

    /// PGTT, or `None` for a reserved encoding.
    pub const fn pgtt(&self) -> Option<Pgtt> {
        Pgtt::from_bits((self.raw[0] >> 6) & 7)
    }

    pub const fn domain_id(&self) -> Did {
        Did::new(self.raw[1] as u16)
    }

    pub const fn second_stage_root(&self) -> PhysAddr {
        PhysAddr::new(self.raw[0] & !0xfff)
    }

    pub const fn first_stage_root(&self) -> PhysAddr {
        PhysAddr::new(self.raw[2] & !0xfff)
    }
}

/// Every field of a PASID entry as read (9.6): the view used to check entries someone else
/// wrote (a guest's, for nesting) before any of their values is used. The one place besides
/// `PasidEntry::encode_fields` that knows the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryFields {
    /// P, bit 0.
    pub present: bool,
    /// FPD, bit 1.
    pub fault_processing_disabled: bool,
    /// AW, bits 4:2, as stored.
    pub aw: u8,
    /// SSEE (SLEE), bit 5.
    pub second_stage_execute: bool,
    /// PGTT, bits 8:6: `Err(bits)` for a reserved encoding.
    pub pgtt: Result<Pgtt, u8>,
    /// SSADE (SLADE), bit 9.
    pub second_stage_access_dirty: bool,
    /// SSPTPTR (SLPTPTR), bits 63:12.
    pub second_stage_root: PhysAddr,
    /// DID, bits 79:64.
    pub domain: Did,
    /// PWSNP, bit 87.
    pub page_walk_snoop: bool,
    /// PGSNP, bit 88.
    pub page_snoop: bool,
    /// CD (89), EMTE (90), EMT (93:91), PWT (94), PCD (95), PAT (127:96): `None` when all are
    /// zero.
    pub memory_type: Option<MemoryType>,
    /// EMT set while EMTE is clear (a value [`MemoryType`] cannot hold).
    pub emt_without_emte: bool,
    /// SRE, bit 128.
    pub supervisor_requests: bool,
    /// ERE, bit 129 (execute requests; deprecated with ECAP.ERS).
    pub execute_requests: bool,
    /// FSPM (FLPM), bits 131:130, as stored.
    pub first_stage_paging: u8,
    /// WPE, bit 132.
    pub write_protect: bool,
    /// Bits 134:133 (NXE and SMEP in revision 3 of the specification), as stored.
    pub execute_controls: u8,
    /// EAFE, bit 135.
    pub extended_accessed: bool,
    /// FSPTPTR (FLPTPTR), bits 191:140.
    pub first_stage_root: PhysAddr,
    /// The first reserved field found set, named: bits 75:74 (quadword 0 bits 11:10), 86:80,
    /// 139:136, 511:192.
    pub reserved: Option<&'static str>,
}

impl PasidEntry {
    /// The entry's fields, decoded; see [`EntryFields`].
    pub const fn fields(&self) -> EntryFields {
        let [w0, w1, w2, ..] = self.raw;
        let reserved = if w0 & 0xc00 != 0 {
            Some("reserved bits 11:10")
        } else if w1 & 0x7f_0000 != 0 {
            Some("reserved bits 86:80")
        } else if w2 & 0xf00 != 0 {
            Some("reserved bits 139:136")
        } else if self.raw[3] | self.raw[4] | self.raw[5] | self.raw[6] | self.raw[7] != 0 {
            Some("reserved bits 511:192")
        } else {
            None
        };
        let pgtt_bits = ((w0 >> 6) & 7) as u8;
        let emte = w1 & (1 << 26) != 0;
        let emt = ((w1 >> 27) & 7) as u8;
        let mt_bits = w1 & 0xffff_ffff_fe00_0000;
        let memory_type = if mt_bits == 0 {
            None
        } else {
            Some(MemoryType {
                cache_disable: w1 & (1 << 25) != 0,
                extended: if emte { Some(emt) } else { None },
                write_through: w1 & (1 << 30) != 0,
                cache_disable_root: w1 & (1 << 31) != 0,
                pat: (w1 >> 32) as u32,
            })
        };
        EntryFields {
            present: w0 & 1 != 0,
            fault_processing_disabled: w0 & 2 != 0,
            aw: ((w0 >> 2) & 7) as u8,
            second_stage_execute: w0 & (1 << 5) != 0,
            pgtt: match Pgtt::from_bits(pgtt_bits as u64) {
                Some(p) => Ok(p),
                None => Err(pgtt_bits),
            },
            second_stage_access_dirty: w0 & (1 << 9) != 0,
            second_stage_root: PhysAddr::new(w0 & !0xfff),
            domain: Did::new(w1 as u16),
            page_walk_snoop: w1 & (1 << 23) != 0,
            page_snoop: w1 & (1 << 24) != 0,
            memory_type,
            emt_without_emte: !emte && emt != 0,
            supervisor_requests: w2 & 1 != 0,
            execute_requests: w2 & 2 != 0,
            first_stage_paging: ((w2 >> 2) & 3) as u8,
            write_protect: w2 & (1 << 4) != 0,
            execute_controls: ((w2 >> 5) & 3) as u8,
            extended_accessed: w2 & (1 << 7) != 0,
            first_stage_root: PhysAddr::new(w2 & !0xfff),
            reserved,
        }
    }
}

impl FirstStagePaging {
    /// The mode FSPM (bits 131:130) encodes: 00 4-level, 01 5-level, 1x reserved.
    pub const fn from_fspm(fspm: u8) -> Option<Self> {
        match fspm {
            0 => Some(Self::FourLevel),
            1 => Some(Self::FiveLevel),
            _ => None,
        }
    }

    /// The input address width of the first-stage table: 48 or 57 bits.
    pub const fn input_bits(self) -> u32 {
        match self {
            Self::FourLevel => 48,
            Self::FiveLevel => 57,
        }
    }
}

const fn flag(on: bool, bit: u32) -> u64 {
    (on as u64) << bit
}

#[cfg(test)]
mod tests;
