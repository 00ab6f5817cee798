//! Root and context entries (VT-d spec 9.1 to 9.4): what maps a PCI requester (bus, devfn) to
//! its translation.
//!
//! Legacy mode (RTADDR.TTM = 00): a root table of 256 [`RootEntry`]s indexed by bus, each
//! pointing to a context table of 256 [`ContextEntry`]s indexed by devfn, each naming a domain,
//! an address width and a second-stage table. Scalable mode (TTM = 01): each
//! [`ScalableRootEntry`] points to two context tables of 128 [`ScalableContextEntry`]s (devfn
//! 0..=127 and 128..=255), each pointing to a PASID directory (`crate::pasid`).
//!
//! Entries are typed values: constructors check what can be checked locally, [`encode`] in each
//! type is the one place that lays out the bits, and `check_against` checks what depends on the
//! unit's capabilities. Writing entries into tables, cache flushing and invalidation are the
//! attach path's job.
//!
//! [`encode`]: ContextEntry::encode

use core::fmt;

use iommu::addr::PhysAddr;

use crate::caps::{Agaw, Capability, ExtendedCapability};
use crate::dmar::Bdf;
use crate::pasid::{Pasid, PasidDirectorySize};

/// Bytes in a root table, a legacy context table, a scalable-mode context table half, a PASID
/// table: every VT-d structure table is one 4 KiB page.
pub const TABLE_BYTES: usize = 4096;

/// Table pointers are 4 KiB aligned and the pointer fields end at bit 63, but x86 physical
/// addresses stop at bit 51: anything above is a caller bug, not a table address.
const MAX_PHYS_BITS: u32 = 52;

/// Why an entry cannot be built or cannot be used on a given unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryError {
    /// A table pointer is not 4 KiB aligned (`what` names the field).
    MisalignedTable { what: &'static str, addr: PhysAddr },
    /// A table pointer lies above the 52-bit physical address space.
    AddressTooWide { what: &'static str, addr: PhysAddr },
    /// The domain id is not below the unit's domain-id count (CAP.ND).
    DomainIdOutOfRange { id: u16, supported: u32 },
    /// Domain id 0 is reserved when CAP.CM (caching mode) is set: hardware tags cached
    /// not-present entries with it (VT-d 6.2.2).
    DomainIdZeroInCachingMode,
    /// The page-table depth is not in CAP.SAGAW.
    AddressWidthUnsupported { agaw: Agaw },
    /// The entry needs a capability the unit does not report (`feature` names the CAP/ECAP
    /// field, e.g. "ECAP.PT").
    Unsupported { feature: &'static str },
    /// The PASID has more bits than the PASID directory or the unit (ECAP.PSS) covers.
    PasidOutOfRange { pasid: u32, bits: u8 },
    /// The RID_PASID falls outside the PASID directory the context entry points to.
    RidPasidOutsideDirectory { pasid: u32, entries: usize },
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MisalignedTable { what, addr } => {
                write!(f, "VT-d: {what} {addr} is not 4 KiB aligned")
            }
            Self::AddressTooWide { what, addr } => {
                write!(
                    f,
                    "VT-d: {what} {addr} is above the 52-bit physical address space"
                )
            }
            Self::DomainIdOutOfRange { id, supported } => {
                write!(
                    f,
                    "VT-d: domain id {id} out of range, the unit has {supported}"
                )
            }
            Self::DomainIdZeroInCachingMode => {
                write!(f, "VT-d: domain id 0 is reserved in caching mode")
            }
            Self::AddressWidthUnsupported { agaw } => {
                write!(f, "VT-d: page-table depth {agaw} not in CAP.SAGAW")
            }
            Self::Unsupported { feature } => {
                write!(f, "VT-d: the unit does not support {feature}")
            }
            Self::PasidOutOfRange { pasid, bits } => {
                write!(f, "VT-d: PASID {pasid:#x} does not fit in {bits} bits")
            }
            Self::RidPasidOutsideDirectory { pasid, entries } => write!(
                f,
                "VT-d: RID_PASID {pasid:#x} is outside a {entries}-entry PASID directory"
            ),
        }
    }
}

impl core::error::Error for EntryError {}

/// Checks a structure pointer: 4 KiB aligned and inside the physical address space.
pub(crate) fn table_pointer(what: &'static str, addr: PhysAddr) -> Result<u64, EntryError> {
    if !addr.is_aligned(TABLE_BYTES as u64) {
        return Err(EntryError::MisalignedTable { what, addr });
    }
    if addr.as_u64() >> MAX_PHYS_BITS != 0 {
        return Err(EntryError::AddressTooWide { what, addr });
    }
    Ok(addr.as_u64())
}

/// Bits 63:12 of an entry word: the 4 KiB aligned pointer it holds.
const POINTER_MASK: u64 = !0xfff;

/// A requester id as the remapping unit sees it: bus in bits 15:8, device in 7:3, function in
/// 2:0 (VT-d 3.4.1, "source-id").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceId(u16);

impl SourceId {
    /// The source id of bus:device.function, or `None` if device > 31 or function > 7.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > 31 || function > 7 {
            return None;
        }
        Some(Self(
            ((bus as u16) << 8) | ((device as u16) << 3) | function as u16,
        ))
    }

    /// The source id with this 16-bit value (every value is a valid bus/devfn pair).
    pub const fn from_raw(raw: u16) -> Self {
        Self(raw)
    }

    pub const fn raw(self) -> u16 {
        self.0
    }

    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Device and function together: the index into a context table.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }

    pub const fn device(self) -> u8 {
        (self.0 >> 3) as u8 & 0x1f
    }

    pub const fn function(self) -> u8 {
        self.0 as u8 & 7
    }
}

impl From<Bdf> for SourceId {
    fn from(bdf: Bdf) -> Self {
        Self(bdf.requester_id())
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus(),
            self.device(),
            self.function()
        )
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceId({self})")
    }
}

/// A Domain-ID (DID): the tag the unit's caches (IOTLB, context and PASID caches) keep per
/// translation, and the handle invalidations select by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Did(u16);

impl Did {
    /// Any 16-bit domain id; [`Did::for_unit`] checks it against a unit.
    pub const fn new(id: u16) -> Self {
        Self(id)
    }

    /// `id` if the unit can use it: below its domain-id count (CAP.ND) and not 0 in caching
    /// mode.
    pub fn for_unit(id: u16, cap: Capability) -> Result<Self, EntryError> {
        Self(id).check_against(cap).map(|()| Self(id))
    }

    pub const fn raw(self) -> u16 {
        self.0
    }

    fn check_against(self, cap: Capability) -> Result<(), EntryError> {
        let supported = cap.domain_ids();
        if u32::from(self.0) >= supported {
            return Err(EntryError::DomainIdOutOfRange {
                id: self.0,
                supported,
            });
        }
        if self.0 == 0 && cap.caching_mode() {
            return Err(EntryError::DomainIdZeroInCachingMode);
        }
        Ok(())
    }
}

/// 9.1 Root Entry (legacy mode): present bit and the context table of one bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootEntry {
    context_table: Option<PhysAddr>,
}

impl RootEntry {
    /// No context table: every request from the bus is blocked (fault reason 1).
    pub const NOT_PRESENT: Self = Self {
        context_table: None,
    };

    /// A present entry pointing to the bus's context table.
    pub fn present(context_table: PhysAddr) -> Result<Self, EntryError> {
        table_pointer("context table", context_table)?;
        Ok(Self {
            context_table: Some(context_table),
        })
    }

    pub const fn context_table(&self) -> Option<PhysAddr> {
        self.context_table
    }

    /// The 128-bit entry, low quadword first: P in bit 0, CTP in 63:12, the upper quadword
    /// reserved (zero).
    pub const fn encode(&self) -> [u64; 2] {
        match self.context_table {
            Some(ctp) => [ctp.as_u64() | 1, 0],
            None => [0, 0],
        }
    }

    /// Reads an entry back (e.g. one firmware left); reserved bits are ignored.
    pub const fn decode(raw: [u64; 2]) -> Self {
        if raw[0] & 1 == 0 {
            return Self::NOT_PRESENT;
        }
        Self {
            context_table: Some(PhysAddr::new(raw[0] & POINTER_MASK)),
        }
    }
}

/// 9.2 Scalable-Mode Root Entry: separate context tables for devfn 0..=127 (lower) and
/// 128..=255 (upper), each with its own present bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableRootEntry {
    lower: Option<PhysAddr>,
    upper: Option<PhysAddr>,
}

impl ScalableRootEntry {
    pub const NOT_PRESENT: Self = Self {
        lower: None,
        upper: None,
    };

    pub fn new(lower: Option<PhysAddr>, upper: Option<PhysAddr>) -> Result<Self, EntryError> {
        if let Some(l) = lower {
            table_pointer("lower context table", l)?;
        }
        if let Some(u) = upper {
            table_pointer("upper context table", u)?;
        }
        Ok(Self { lower, upper })
    }

    pub const fn lower(&self) -> Option<PhysAddr> {
        self.lower
    }

    pub const fn upper(&self) -> Option<PhysAddr> {
        self.upper
    }

    /// Lower quadword: LP in bit 0, LCTP in 63:12; upper quadword: UP in bit 0, UCTP in 63:12.
    pub const fn encode(&self) -> [u64; 2] {
        const fn half(p: Option<PhysAddr>) -> u64 {
            match p {
                Some(a) => a.as_u64() | 1,
                None => 0,
            }
        }
        [half(self.lower), half(self.upper)]
    }

    pub const fn decode(raw: [u64; 2]) -> Self {
        const fn half(w: u64) -> Option<PhysAddr> {
            if w & 1 == 1 {
                Some(PhysAddr::new(w & POINTER_MASK))
            } else {
                None
            }
        }
        Self {
            lower: half(raw[0]),
            upper: half(raw[1]),
        }
    }
}

/// Which scalable-mode context table and which entry in it serve `devfn` (9.2: the lower
/// table covers devfn 0..=127, the upper one 128..=255, 128 entries of 32 bytes each).
pub(crate) const fn scalable_context_slot(devfn: u8) -> (ContextHalf, usize) {
    if devfn < 128 {
        (ContextHalf::Lower, devfn as usize)
    } else {
        (ContextHalf::Upper, (devfn - 128) as usize)
    }
}

/// The two context tables a scalable-mode root entry points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextHalf {
    Lower,
    Upper,
}

/// 9.3 Context Entry, Translation Type (TT, bits 3:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslationType {
    /// 00: untranslated requests walk the second-stage table; translation requests (ATS) and
    /// translated requests are blocked.
    Untranslated,
    /// 01: as 00, and the device's ATS requests are served too (needs ECAP.DT).
    DeviceTlb,
    /// 10: untranslated requests pass through untranslated (needs ECAP.PT); SLPTPTR ignored.
    PassThrough,
}

impl TranslationType {
    const fn bits(self) -> u64 {
        match self {
            Self::Untranslated => 0,
            Self::DeviceTlb => 1,
            Self::PassThrough => 2,
        }
    }

    const fn from_bits(bits: u64) -> Option<Self> {
        match bits {
            0 => Some(Self::Untranslated),
            1 => Some(Self::DeviceTlb),
            2 => Some(Self::PassThrough),
            _ => None,
        }
    }
}

/// 9.3 Context Entry (legacy mode): one device's domain, translation type, address width and
/// second-stage table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextEntry {
    raw: [u64; 2],
}

impl ContextEntry {
    /// No translation: every request from the device is blocked and reported (fault reason 2).
    pub const NOT_PRESENT: Self = Self { raw: [0, 0] };

    /// Untranslated requests walk the `agaw`-deep second-stage table at `root`, tagged with
    /// `domain`.
    pub fn second_stage(domain: Did, agaw: Agaw, root: PhysAddr) -> Result<Self, EntryError> {
        let root = table_pointer("second-stage table", root)?;
        Ok(Self::encode_fields(
            false,
            TranslationType::Untranslated,
            root,
            agaw,
            domain,
        ))
    }

    /// As [`second_stage`](Self::second_stage), and the device may also use ATS
    /// (device-TLB); needs ECAP.DT.
    pub fn device_tlb(domain: Did, agaw: Agaw, root: PhysAddr) -> Result<Self, EntryError> {
        let root = table_pointer("second-stage table", root)?;
        Ok(Self::encode_fields(
            false,
            TranslationType::DeviceTlb,
            root,
            agaw,
            domain,
        ))
    }

    /// Requests pass through untranslated; needs ECAP.PT. The spec asks AW to hold the largest
    /// width the unit supports (QEMU checks AW against SAGAW even here), and `domain` still
    /// tags the context cache.
    pub const fn pass_through(domain: Did, agaw: Agaw) -> Self {
        Self::encode_fields(false, TranslationType::PassThrough, 0, agaw, domain)
    }

    /// The same entry with FPD (Fault Processing Disable) set: faults through it are neither
    /// recorded nor reported.
    pub const fn with_fault_processing_disabled(self) -> Self {
        Self {
            raw: [self.raw[0] | FPD, self.raw[1]],
        }
    }

    /// The same entry with TT 01 (ATS served too) if `on`, else 00, where it translates (TT
    /// 00 or 01); any other entry unchanged. Only the low quadword changes.
    pub const fn with_device_tlb(self, on: bool) -> Self {
        match self.translation_type() {
            Some(TranslationType::Untranslated | TranslationType::DeviceTlb)
                if self.is_present() =>
            {
                let tt = if on {
                    TranslationType::DeviceTlb
                } else {
                    TranslationType::Untranslated
                };
                Self {
                    raw: [(self.raw[0] & !(3 << 2)) | tt.bits() << 2, self.raw[1]],
                }
            }
            _ => self,
        }
    }

    /// The one place the legacy context entry is laid out (9.3): low quadword P(0), FPD(1),
    /// TT(3:2), SLPTPTR(63:12); high quadword AW(2:0), DID(23:8).
    const fn encode_fields(
        fpd: bool,
        tt: TranslationType,
        slptptr: u64,
        agaw: Agaw,
        domain: Did,
    ) -> Self {
        let lo = PRESENT | if fpd { FPD } else { 0 } | (tt.bits() << 2) | (slptptr & POINTER_MASK);
        let hi = agaw.encoding() as u64 | ((domain.raw() as u64) << 8);
        Self { raw: [lo, hi] }
    }

    /// The 128-bit entry, low quadword first.
    pub const fn encode(&self) -> [u64; 2] {
        self.raw
    }

    /// An entry as read from a table (e.g. one firmware left).
    pub const fn decode(raw: [u64; 2]) -> Self {
        Self { raw }
    }

    pub const fn is_present(&self) -> bool {
        self.raw[0] & PRESENT != 0
    }

    pub const fn fault_processing_disabled(&self) -> bool {
        self.raw[0] & FPD != 0
    }

    /// TT, or `None` for the reserved encoding 11.
    pub const fn translation_type(&self) -> Option<TranslationType> {
        TranslationType::from_bits((self.raw[0] >> 2) & 3)
    }

    pub const fn second_stage_root(&self) -> PhysAddr {
        PhysAddr::new(self.raw[0] & POINTER_MASK)
    }

    /// The AW field as stored (1, 2, 3 for 3-, 4-, 5-level tables).
    pub const fn address_width(&self) -> u8 {
        (self.raw[1] & 7) as u8
    }

    pub const fn domain_id(&self) -> Did {
        Did::new((self.raw[1] >> 8) as u16)
    }

    /// Checks a present entry against what the unit supports: AW in SAGAW, the domain id in
    /// range (and not 0 in caching mode), device-TLB only with ECAP.DT, pass-through only with
    /// ECAP.PT.
    pub fn check_against(
        &self,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<(), EntryError> {
        if !self.is_present() {
            return Ok(());
        }
        let agaw = match self.address_width() {
            1 => Agaw::Level3,
            2 => Agaw::Level4,
            3 => Agaw::Level5,
            _ => {
                return Err(EntryError::Unsupported {
                    feature: "context-entry AW",
                })
            }
        };
        if !cap.sagaw().contains(agaw) {
            return Err(EntryError::AddressWidthUnsupported { agaw });
        }
        self.domain_id().check_against(cap)?;
        match self.translation_type() {
            Some(TranslationType::Untranslated) => Ok(()),
            Some(TranslationType::DeviceTlb) if ecap.dt() => Ok(()),
            Some(TranslationType::DeviceTlb) => Err(EntryError::Unsupported { feature: "ECAP.DT" }),
            Some(TranslationType::PassThrough) if ecap.pt() => Ok(()),
            Some(TranslationType::PassThrough) => {
                Err(EntryError::Unsupported { feature: "ECAP.PT" })
            }
            None => Err(EntryError::Unsupported {
                feature: "context-entry TT 11",
            }),
        }
    }
}

const PRESENT: u64 = 1 << 0;
const FPD: u64 = 1 << 1;

/// The fields of a scalable-mode context entry (9.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableContext {
    /// The device's PASID directory.
    pub pasid_directory: PhysAddr,
    /// How many entries that directory has (PDTS).
    pub directory_size: PasidDirectorySize,
    /// The PASID that requests without a PASID are translated as (RID_PASID).
    pub rid_pasid: Pasid,
    /// DTE: the device may use ATS (device-TLB); needs ECAP.DT.
    pub device_tlb: bool,
    /// PASIDE: requests carrying a PASID are allowed; without it only RID_PASID is used.
    pub pasid_enable: bool,
    /// PRE: page requests (PRI) are allowed; needs ECAP.PRS.
    pub page_requests: bool,
    /// FPD: faults through this entry are neither recorded nor reported.
    pub fault_processing_disabled: bool,
}

impl ScalableContext {
    /// A context for requests without PASID only: RID_PASID `rid_pasid`, no ATS, no PRI,
    /// faults reported.
    pub const fn new(
        pasid_directory: PhysAddr,
        directory_size: PasidDirectorySize,
        rid_pasid: Pasid,
    ) -> Self {
        Self {
            pasid_directory,
            directory_size,
            rid_pasid,
            device_tlb: false,
            pasid_enable: false,
            page_requests: false,
            fault_processing_disabled: false,
        }
    }
}

/// 9.4 Scalable-Mode Context Entry (256 bits): a device's PASID directory and how requests
/// without PASID are mapped into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalableContextEntry {
    raw: [u64; 4],
}

impl ScalableContextEntry {
    /// Every request from the device is blocked and reported.
    pub const NOT_PRESENT: Self = Self { raw: [0; 4] };

    /// A present entry; the RID_PASID must fall inside the directory.
    pub fn new(ctx: ScalableContext) -> Result<Self, EntryError> {
        let dir = table_pointer("PASID directory", ctx.pasid_directory)?;
        if !ctx.directory_size.covers(ctx.rid_pasid) {
            return Err(EntryError::RidPasidOutsideDirectory {
                pasid: ctx.rid_pasid.raw(),
                entries: ctx.directory_size.entries(),
            });
        }
        // The one place the entry is laid out: quadword 0 P(0), FPD(1), DTE(2), PASIDE(3),
        // PRE(4), PDTS(11:9), PASIDDIRPTR(63:12); quadword 1 RID_PASID(19:0), RID_PRIV(20)
        // left 0 (requests without PASID are user requests); quadwords 2 and 3 reserved.
        let w0 = PRESENT
            | bit(ctx.fault_processing_disabled, 1)
            | bit(ctx.device_tlb, 2)
            | bit(ctx.pasid_enable, 3)
            | bit(ctx.page_requests, 4)
            | (ctx.directory_size.pdts() as u64) << 9
            | dir;
        let w1 = ctx.rid_pasid.raw() as u64;
        Ok(Self {
            raw: [w0, w1, 0, 0],
        })
    }

    /// The 256-bit entry, quadword 0 first.
    pub const fn encode(&self) -> [u64; 4] {
        self.raw
    }

    pub const fn decode(raw: [u64; 4]) -> Self {
        Self { raw }
    }

    pub const fn is_present(&self) -> bool {
        self.raw[0] & PRESENT != 0
    }

    pub const fn pasid_directory(&self) -> PhysAddr {
        PhysAddr::new(self.raw[0] & POINTER_MASK)
    }

    /// The decoded fields, or `None` for a not-present entry.
    pub const fn fields(&self) -> Option<ScalableContext> {
        if !self.is_present() {
            return None;
        }
        let w0 = self.raw[0];
        let size = match PasidDirectorySize::from_pdts(((w0 >> 9) & 7) as u8) {
            Some(s) => s,
            None => return None,
        };
        Some(ScalableContext {
            pasid_directory: PhysAddr::new(w0 & POINTER_MASK),
            directory_size: size,
            rid_pasid: Pasid::from_bits_truncated(self.raw[1] as u32),
            device_tlb: w0 & (1 << 2) != 0,
            pasid_enable: w0 & (1 << 3) != 0,
            page_requests: w0 & (1 << 4) != 0,
            fault_processing_disabled: w0 & FPD != 0,
        })
    }

    /// Checks a present entry against the unit: DTE needs ECAP.DT, PRE needs ECAP.PRS,
    /// PASIDE needs ECAP.PASID, a RID_PASID other than 0 needs ECAP.RPS, and the unit must be
    /// scalable-mode capable (ECAP.SMTS).
    pub fn check_against(&self, ecap: ExtendedCapability) -> Result<(), EntryError> {
        let Some(ctx) = self.fields() else {
            return Ok(());
        };
        if !ecap.smts() {
            return Err(EntryError::Unsupported {
                feature: "ECAP.SMTS",
            });
        }
        if ctx.device_tlb && !ecap.dt() {
            return Err(EntryError::Unsupported { feature: "ECAP.DT" });
        }
        if ctx.page_requests && !ecap.prs() {
            return Err(EntryError::Unsupported {
                feature: "ECAP.PRS",
            });
        }
        if ctx.pasid_enable && !ecap.pasid() {
            return Err(EntryError::Unsupported {
                feature: "ECAP.PASID",
            });
        }
        // Without ECAP.RPS the field is reserved and hardware uses PASID 0 (QEMU 10.0 has no
        // RPS, so RID_PASID must stay 0 there).
        if ctx.rid_pasid.raw() != 0 && !ecap.rps() {
            return Err(EntryError::Unsupported {
                feature: "ECAP.RPS",
            });
        }
        Ok(())
    }
}

const fn bit(on: bool, n: u32) -> u64 {
    (on as u64) << n
}

#[cfg(test)]
mod tests;
