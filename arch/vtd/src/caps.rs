//! What a remapping unit can do: the Version, Capability and Extended Capability registers
//! decoded (VT-d spec rev. 5.10, 11.4.1 to 11.4.3).
//!
//! The newtypes keep the raw register value and decode fields on demand with `const fn` getters,
//! so a value read once at bring-up can be passed around and compared cheaply. Field names
//! follow the spec; where rev. 5.x renamed a field (SSLPS, SSTS, FSTS, SSADS) the older name that
//! QEMU and Linux use is kept and the new one is given in its doc.

use core::fmt;

const fn bit(raw: u64, n: u32) -> bool {
    (raw >> n) & 1 == 1
}

const fn field(raw: u64, shift: u32, width: u32) -> u64 {
    (raw >> shift) & ((1 << width) - 1)
}

/// 11.4.1 Version Register: the architecture version the unit implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
}

impl Version {
    /// Decodes VER_REG (MAX in bits 7:4, MIN in bits 3:0).
    pub const fn from_register(raw: u32) -> Self {
        Self {
            major: ((raw >> 4) & 0xf) as u8,
            minor: (raw & 0xf) as u8,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// An adjusted guest address width: how many levels of second-stage page table a domain uses,
/// and so how wide its I/O virtual addresses are (11.4.2, SAGAW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Agaw {
    /// 3-level table, 39-bit addresses.
    Level3,
    /// 4-level table, 48-bit addresses.
    Level4,
    /// 5-level table, 57-bit addresses.
    Level5,
}

impl Agaw {
    /// Every width the architecture defines, narrowest first.
    pub const ALL: [Agaw; 3] = [Agaw::Level3, Agaw::Level4, Agaw::Level5];

    pub const fn levels(self) -> u8 {
        match self {
            Self::Level3 => 3,
            Self::Level4 => 4,
            Self::Level5 => 5,
        }
    }

    /// The address width in bits: 12 + 9 per level.
    pub const fn width(self) -> u8 {
        12 + 9 * self.levels()
    }

    /// The encoding shared by the SAGAW bit index and the context-entry / PASID-entry AW
    /// field: 1, 2, 3 for 3, 4, 5 levels.
    pub const fn encoding(self) -> u8 {
        self.levels() - 2
    }
}

impl fmt::Display for Agaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit ({}-level)", self.width(), self.levels())
    }
}

/// The set of adjusted guest address widths a unit supports (CAP.SAGAW, bits 12:8).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sagaw(u8);

impl Sagaw {
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits & 0x1f)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, agaw: Agaw) -> bool {
        self.0 & (1 << agaw.encoding()) != 0
    }

    pub const fn is_empty(self) -> bool {
        self.0 & 0b1110 == 0
    }

    /// The supported widths, narrowest first; reserved bits are not reported.
    pub fn iter(self) -> impl Iterator<Item = Agaw> + Clone {
        Agaw::ALL.into_iter().filter(move |&a| self.contains(a))
    }
}

impl fmt::Debug for Sagaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|a| a.levels()))
            .finish()
    }
}

/// Second-stage large pages a unit supports (CAP.SLLPS, renamed SSLPS in rev. 5.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SuperPages {
    pub size_2m: bool,
    pub size_1g: bool,
}

/// Why no page-table depth fits the address width asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgawError {
    /// The unit translates at most `mgaw` address bits; `wanted` is wider.
    WiderThanMgaw { wanted: u8, mgaw: u8 },
    /// No supported page-table depth covers `wanted` bits.
    NoSupportedWidth { wanted: u8, sagaw: Sagaw },
}

impl fmt::Display for AgawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WiderThanMgaw { wanted, mgaw } => write!(
                f,
                "VT-d: {wanted}-bit I/O addresses asked for, the unit translates {mgaw} bits"
            ),
            Self::NoSupportedWidth { wanted, sagaw } => write!(
                f,
                "VT-d: no supported page-table depth (levels {sagaw:?}) covers {wanted} bits"
            ),
        }
    }
}

impl core::error::Error for AgawError {}

/// 11.4.2 Capability Register (CAP_REG).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Capability(pub u64);

impl Capability {
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// ND, bits 2:0: the domain-id field width is 4 + 2 × ND bits.
    pub const fn nd(self) -> u8 {
        field(self.0, 0, 3) as u8
    }

    /// Number of domain ids the unit supports (16 to 64 Ki). ND = 7 is reserved; it is decoded
    /// by the same rule, as Linux does.
    pub const fn domain_ids(self) -> u32 {
        1 << (4 + 2 * self.nd() as u32)
    }

    /// AFL, bit 3: advanced fault logging (deprecated; reserved in rev. 5.x).
    pub const fn afl(self) -> bool {
        bit(self.0, 3)
    }

    /// RWBF, bit 4: software must flush the write buffer (GCMD.WBF) after table updates.
    pub const fn rwbf(self) -> bool {
        bit(self.0, 4)
    }

    /// PLMR, bit 5: protected low-memory region supported.
    pub const fn plmr(self) -> bool {
        bit(self.0, 5)
    }

    /// PHMR, bit 6: protected high-memory region supported.
    pub const fn phmr(self) -> bool {
        bit(self.0, 6)
    }

    /// CM, bit 7: caching mode. Not-present and faulting entries may be cached, so making an
    /// entry present needs an invalidation too (emulated IOMMUs set it to trap every update).
    pub const fn caching_mode(self) -> bool {
        bit(self.0, 7)
    }

    /// SAGAW, bits 12:8: the supported second-stage page-table depths.
    pub const fn sagaw(self) -> Sagaw {
        Sagaw::from_bits(field(self.0, 8, 5) as u8)
    }

    /// MGAW, bits 21:16 (+1): the widest address the unit translates.
    pub const fn mgaw(self) -> u8 {
        field(self.0, 16, 6) as u8 + 1
    }

    /// ZLR, bit 22: zero-length reads to write-only pages are allowed.
    pub const fn zlr(self) -> bool {
        bit(self.0, 22)
    }

    /// FRO, bits 33:24 (× 16): byte offset of the first fault recording register.
    pub const fn fault_recording_offset(self) -> usize {
        field(self.0, 24, 10) as usize * 16
    }

    /// SLLPS (SSLPS), bits 37:34: second-stage large page sizes.
    pub const fn sllps(self) -> SuperPages {
        SuperPages {
            size_2m: bit(self.0, 34),
            size_1g: bit(self.0, 35),
        }
    }

    /// PSI, bit 39: page-selective IOTLB invalidation supported.
    pub const fn psi(self) -> bool {
        bit(self.0, 39)
    }

    /// NFR, bits 47:40, as stored: one less than the number of fault recording registers.
    pub const fn nfr(self) -> u8 {
        field(self.0, 40, 8) as u8
    }

    /// Number of fault recording registers (NFR + 1, 1 to 256).
    pub const fn fault_recording_count(self) -> u16 {
        self.nfr() as u16 + 1
    }

    /// MAMV, bits 53:48: the largest address mask for page-selective invalidation (2^MAMV
    /// pages at once). Meaningful only with PSI.
    pub const fn mamv(self) -> u8 {
        field(self.0, 48, 6) as u8
    }

    /// DWD, bit 54: write draining on IOTLB invalidation (always 1 from major version 2).
    pub const fn dwd(self) -> bool {
        bit(self.0, 54)
    }

    /// DRD, bit 55: read draining on IOTLB invalidation (always 1 from major version 2).
    pub const fn drd(self) -> bool {
        bit(self.0, 55)
    }

    /// FS1GP (FL1GP), bit 56: 1 GiB pages in first-stage tables.
    pub const fn fs1gp(self) -> bool {
        bit(self.0, 56)
    }

    /// PI, bit 59: posted interrupts.
    pub const fn pi(self) -> bool {
        bit(self.0, 59)
    }

    /// FS5LP (FL5LP), bit 60: 5-level first-stage paging.
    pub const fn fs5lp(self) -> bool {
        bit(self.0, 60)
    }

    /// ECMDS, bit 61: enhanced command interface.
    pub const fn ecmds(self) -> bool {
        bit(self.0, 61)
    }

    /// ESIRTPS, bit 62: SIRTP also invalidates the interrupt-remapping caches.
    pub const fn esirtps(self) -> bool {
        bit(self.0, 62)
    }

    /// ESRTPS, bit 63: SRTP also invalidates all DMA-remapping caches.
    pub const fn esrtps(self) -> bool {
        bit(self.0, 63)
    }

    /// The page-table depth for a domain that must reach `width`-bit I/O addresses: the
    /// shallowest supported depth that covers `width`, which must not exceed MGAW (addresses
    /// above MGAW are blocked whatever the tables say).
    pub fn agaw_for(self, width: u8) -> Result<Agaw, AgawError> {
        let mgaw = self.mgaw();
        if width > mgaw {
            return Err(AgawError::WiderThanMgaw {
                wanted: width,
                mgaw,
            });
        }
        let sagaw = self.sagaw();
        sagaw
            .iter()
            .find(|a| a.width() >= width)
            .ok_or(AgawError::NoSupportedWidth {
                wanted: width,
                sagaw,
            })
    }

    /// The depth that reaches the whole MGAW, the natural choice when no narrower space is
    /// asked for.
    pub fn max_agaw(self) -> Result<Agaw, AgawError> {
        self.agaw_for(self.mgaw())
    }
}

impl fmt::Debug for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capability")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("domain_ids", &self.domain_ids())
            .field("sagaw", &self.sagaw())
            .field("mgaw", &self.mgaw())
            .field("caching_mode", &self.caching_mode())
            .field("rwbf", &self.rwbf())
            .field("plmr", &self.plmr())
            .field("phmr", &self.phmr())
            .field("zlr", &self.zlr())
            .field("sllps", &self.sllps())
            .field("psi", &self.psi())
            .field("mamv", &self.mamv())
            .field(
                "fault_recording_offset",
                &format_args!("{:#x}", self.fault_recording_offset()),
            )
            .field("fault_recording_count", &self.fault_recording_count())
            .field("dwd", &self.dwd())
            .field("drd", &self.drd())
            .field("fs1gp", &self.fs1gp())
            .field("fs5lp", &self.fs5lp())
            .field("pi", &self.pi())
            .field("ecmds", &self.ecmds())
            .field("esrtps", &self.esrtps())
            .field("esirtps", &self.esirtps())
            .finish()
    }
}

/// 11.4.3 Extended Capability Register (ECAP_REG).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExtendedCapability(pub u64);

impl ExtendedCapability {
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// C, bit 0: page walks of root, context, PASID and legacy second-stage tables snoop CPU
    /// caches. When clear, software flushes cache lines after writing those tables.
    pub const fn coherent(self) -> bool {
        bit(self.0, 0)
    }

    /// QI, bit 1: queued invalidation.
    pub const fn qi(self) -> bool {
        bit(self.0, 1)
    }

    /// DT, bit 2: device-TLBs (ATS).
    pub const fn dt(self) -> bool {
        bit(self.0, 2)
    }

    /// IR, bit 3: interrupt remapping.
    pub const fn ir(self) -> bool {
        bit(self.0, 3)
    }

    /// EIM, bit 4: extended (x2APIC, 32-bit destination) interrupt mode.
    pub const fn eim(self) -> bool {
        bit(self.0, 4)
    }

    /// PT, bit 6: pass-through translation type.
    pub const fn pt(self) -> bool {
        bit(self.0, 6)
    }

    /// SC, bit 7: snoop control (SNP in second-stage entries, PGSNP in PASID entries).
    pub const fn sc(self) -> bool {
        bit(self.0, 7)
    }

    /// IRO, bits 17:8 (× 16): byte offset of the IOTLB registers (IVA; IOTLB_REG at +8).
    pub const fn iotlb_register_offset(self) -> usize {
        field(self.0, 8, 10) as usize * 16
    }

    /// MHMV, bits 23:20: the largest interrupt-entry-cache invalidation mask.
    pub const fn mhmv(self) -> u8 {
        field(self.0, 20, 4) as u8
    }

    /// MTS, bit 25: memory type support.
    pub const fn mts(self) -> bool {
        bit(self.0, 25)
    }

    /// NEST, bit 26: nested (first-stage over second-stage) translation.
    pub const fn nest(self) -> bool {
        bit(self.0, 26)
    }

    /// PRS, bit 29: page requests.
    pub const fn prs(self) -> bool {
        bit(self.0, 29)
    }

    /// ERS, bit 30: execute requests (planned for deprecation).
    pub const fn ers(self) -> bool {
        bit(self.0, 30)
    }

    /// SRS, bit 31: supervisor requests.
    pub const fn srs(self) -> bool {
        bit(self.0, 31)
    }

    /// NWFS, bit 33: no-write flag in device-TLB translation requests.
    pub const fn nwfs(self) -> bool {
        bit(self.0, 33)
    }

    /// EAFS, bit 34: extended-accessed flag in first-stage entries.
    pub const fn eafs(self) -> bool {
        bit(self.0, 34)
    }

    /// PSS, bits 39:35, as stored: one less than the PASID width.
    pub const fn pss(self) -> u8 {
        field(self.0, 35, 5) as u8
    }

    /// The supported PASID width in bits (PSS + 1); meaningful only with SMTS and PASID.
    pub const fn pasid_width(self) -> u8 {
        self.pss() + 1
    }

    /// PASID, bit 40: requests with PASID.
    pub const fn pasid(self) -> bool {
        bit(self.0, 40)
    }

    /// DIT, bit 41: device-TLB invalidation throttling.
    pub const fn dit(self) -> bool {
        bit(self.0, 41)
    }

    /// PDS, bit 42: page-request drain in invalidation wait descriptors.
    pub const fn pds(self) -> bool {
        bit(self.0, 42)
    }

    /// SMTS, bit 43: scalable-mode translation (scalable root/context entries, PASID tables).
    pub const fn smts(self) -> bool {
        bit(self.0, 43)
    }

    /// VCS, bit 44: virtual command interface (emulated IOMMUs only).
    pub const fn vcs(self) -> bool {
        bit(self.0, 44)
    }

    /// SLADS (SSADS), bit 45: accessed/dirty bits in second-stage entries.
    pub const fn slads(self) -> bool {
        bit(self.0, 45)
    }

    /// SLTS (SSTS), bit 46: second-stage translation in scalable-mode PASID entries.
    pub const fn slts(self) -> bool {
        bit(self.0, 46)
    }

    /// FLTS (FSTS), bit 47: first-stage translation in scalable-mode PASID entries.
    pub const fn flts(self) -> bool {
        bit(self.0, 47)
    }

    /// SMPWCS, bit 48: page walks through PASID entries may snoop (per the entry's PWSNP).
    pub const fn smpwcs(self) -> bool {
        bit(self.0, 48)
    }

    /// RPS, bit 49: the RID_PASID field of scalable-mode context entries.
    pub const fn rps(self) -> bool {
        bit(self.0, 49)
    }

    /// PMS, bit 51: performance monitoring.
    pub const fn pms(self) -> bool {
        bit(self.0, 51)
    }

    /// ADMS, bit 52: abort-DMA mode (RTADDR.TTM = 11b).
    pub const fn adms(self) -> bool {
        bit(self.0, 52)
    }
}

impl fmt::Debug for ExtendedCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtendedCapability")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("coherent", &self.coherent())
            .field("qi", &self.qi())
            .field("dt", &self.dt())
            .field("ir", &self.ir())
            .field("eim", &self.eim())
            .field("pt", &self.pt())
            .field("sc", &self.sc())
            .field(
                "iotlb_register_offset",
                &format_args!("{:#x}", self.iotlb_register_offset()),
            )
            .field("mhmv", &self.mhmv())
            .field("mts", &self.mts())
            .field("nest", &self.nest())
            .field("prs", &self.prs())
            .field("ers", &self.ers())
            .field("srs", &self.srs())
            .field("nwfs", &self.nwfs())
            .field("eafs", &self.eafs())
            .field("pasid", &self.pasid())
            .field("pasid_width", &self.pasid_width())
            .field("dit", &self.dit())
            .field("pds", &self.pds())
            .field("smts", &self.smts())
            .field("vcs", &self.vcs())
            .field("slads", &self.slads())
            .field("slts", &self.slts())
            .field("flts", &self.flts())
            .field("smpwcs", &self.smpwcs())
            .field("rps", &self.rps())
            .field("pms", &self.pms())
            .field("adms", &self.adms())
            .finish()
    }
}

#[cfg(test)]
mod tests;
