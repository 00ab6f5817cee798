//! Context descriptors (IHI 0070 5.4): the stage-1 translation context of a stream or substream
//! (its table base, TCR-like controls, MAIR and ASID), and the CD tables an STE points to,
//! linear or 2-level with level-2 tables created on demand.
//!
//! A CD is built as a typed [`ContextDescriptor`] and encoded in one place
//! ([`ContextDescriptor::encode`]); live changes go through the same update planner as STEs
//! ([`crate::entry::plan_entry_update`]) with the CD's own used bits, followed by
//! CMD_CFGI_CD + CMD_SYNC.

use core::fmt;

use iommu::addr::PhysAddr;
use iommu::hal::Hal;

use crate::attributes::{bits, field, granule_supported, place, tg0, Granule};
use crate::cmdq::CmdqError;
use crate::entry::{
    check_addr, plan_entry_update, EntryError, EntryWords, UpdateKind, UpdatePlan, ENTRY_WORDS,
};
use crate::idr::{Features, Httu, OutputAddressSize, StallModel, TermModel};
use crate::stream_table::{CdTableFormat, Stage1, WalkAttributes};
use crate::two_level::{Level1Format, TableError, TableShape, TwoLevelTable};

/// Bytes in one CD.
pub const CD_BYTES: usize = 64;

// CD word 0.
const CD0_T0SZ: (u32, u32) = (5, 0);
const CD0_TG0: (u32, u32) = (7, 6);
const CD0_IR0: (u32, u32) = (9, 8);
const CD0_OR0: (u32, u32) = (11, 10);
const CD0_SH0: (u32, u32) = (13, 12);
const CD0_EPD0: u32 = 14;
const CD0_TT1_CONTROL: (u32, u32) = (29, 16);
const CD0_EPD1: u32 = 30;
const CD0_V: u32 = 31;
const CD0_IPS: (u32, u32) = (34, 32);
const CD0_AFFD: u32 = 35;
const CD0_WXN: u32 = 36;
const CD0_UWXN: u32 = 37;
const CD0_TBI0: u32 = 38;
const CD0_AA64: u32 = 41;
const CD0_HD: u32 = 42;
const CD0_HA: u32 = 43;
const CD0_S: u32 = 44;
const CD0_R: u32 = 45;
const CD0_A: u32 = 46;
const CD0_ASET: u32 = 47;
const CD0_ASID: (u32, u32) = (63, 48);
// CD word 1.
const CD1_NSCFG0: u32 = 0;
const CD1_HAD0: u32 = 1;
const CD1_TTB0: (u32, u32) = (51, 4);
// Word 2 is the TTB1 word, word 3 MAIR, word 4 AMAIR.
const CD_MAIR_WORD: usize = 3;

// Level-1 CD table descriptor (5.4.1): V [0], L2Ptr [51:12].
const L1CD_V: u64 = 1;
const L1CD_L2PTR: (u32, u32) = (51, 12);

const fn m(f: (u32, u32)) -> u64 {
    bits(f.0, f.1)
}

/// A stage-1 context: everything a CD holds, typed. Build it with [`ContextDescriptor::new`],
/// adjust the public fields, encode with [`ContextDescriptor::encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextDescriptor {
    /// ASID: tags the TLB entries (TLBI_NH_ASID / NH_VA name it).
    pub asid: u16,
    /// TTB0: the stage-1 table for the lower VA range (16-byte aligned at least).
    pub ttb0: PhysAddr,
    /// T0SZ: 64 minus the input address width (16..=39 on QEMU; up to 48 with IDR3.STT).
    pub t0sz: u8,
    /// TG0.
    pub granule: Granule,
    /// IR0, OR0, SH0: attributes of the table walks.
    pub walk: WalkAttributes,
    /// EPD0: no walks through TTB0 (every translation faults).
    pub epd0: bool,
    /// IPS: the output address size of stage 1.
    pub ips: OutputAddressSize,
    /// MAIR: the memory attribute indirection the table descriptors' AttrIndx selects from.
    pub mair: u64,
    /// AFFD: access flag faults disabled.
    pub access_flag_fault_disable: bool,
    /// WXN: writable implies execute-never.
    pub wxn: bool,
    /// UWXN: unprivileged-writable implies privileged execute-never.
    pub uwxn: bool,
    /// TBI0: top byte ignored for TTB0 addresses.
    pub top_byte_ignore: bool,
    /// HAD0: hierarchical attribute disables (IDR3.HAD).
    pub hierarchical_attributes_disabled: bool,
    /// HA: hardware access flag updates (IDR0.HTTU; QEMU refuses it).
    pub hw_access_flag: bool,
    /// HD: hardware dirty state updates (IDR0.HTTU; QEMU refuses it).
    pub hw_dirty: bool,
    /// S: stall on faults (stall model permitting).
    pub stall: bool,
    /// R: record faults as events (QEMU records none without it).
    pub record_faults: bool,
    /// A: abort faulting transactions (else RAZ/WI; must be set when IDR0.TERM_MODEL = 1).
    pub abort: bool,
    /// ASET = 1: the ASID belongs to a set not shared with the PEs, so broadcast TLB
    /// maintenance from the CPUs leaves it alone.
    pub private_asid_set: bool,
    /// NSCFG0: Non-secure table walks (meaningful for Secure streams only).
    pub nscfg0: bool,
}

impl ContextDescriptor {
    /// A CD translating `va_bits` of input address through the table at `ttb0` with `granule`
    /// pages, output size `ips`, attributes `mair`; walks write-back cacheable, faults recorded
    /// and aborted, no TTB1 (EPD1 = 1), AArch64, little-endian, private ASID set.
    pub fn new(
        asid: u16,
        ttb0: PhysAddr,
        va_bits: u8,
        granule: Granule,
        ips: OutputAddressSize,
        mair: u64,
    ) -> Result<Self, EntryError> {
        if !(16..=52).contains(&va_bits) {
            return Err(EntryError::Field {
                field: "T0SZ",
                value: u64::from(va_bits),
            });
        }
        Ok(Self {
            asid,
            ttb0,
            t0sz: 64 - va_bits,
            granule,
            walk: WalkAttributes::WRITE_BACK,
            epd0: false,
            ips,
            mair,
            access_flag_fault_disable: false,
            wxn: false,
            uwxn: false,
            top_byte_ignore: false,
            hierarchical_attributes_disabled: false,
            hw_access_flag: false,
            hw_dirty: false,
            stall: false,
            record_faults: true,
            abort: true,
            private_asid_set: true,
            nscfg0: false,
        })
    }

    /// The eight words of the CD (V = 1).
    pub fn encode(&self) -> Result<EntryWords, EntryError> {
        let ttb0 = check_addr("TTB0", self.ttb0.as_u64(), 16)?;
        if !(12..=48).contains(&self.t0sz) {
            return Err(EntryError::Field {
                field: "T0SZ",
                value: u64::from(self.t0sz),
            });
        }
        if self.ips == OutputAddressSize::Reserved {
            return Err(EntryError::Field {
                field: "IPS",
                value: 7,
            });
        }
        let mut w = [0u64; ENTRY_WORDS];
        w[0] = place(u64::from(self.t0sz), CD0_T0SZ.0, CD0_T0SZ.1)
            | place(tg0(self.granule), CD0_TG0.0, CD0_TG0.1)
            | place(self.walk.inner.encoding(), CD0_IR0.0, CD0_IR0.1)
            | place(self.walk.outer.encoding(), CD0_OR0.0, CD0_OR0.1)
            | place(self.walk.shareability.encoding(), CD0_SH0.0, CD0_SH0.1)
            | u64::from(self.epd0) << CD0_EPD0
            // ENDI = 0 (little-endian walks); TTB1 unused: EPD1 = 1, its controls 0.
            | 1 << CD0_EPD1
            | 1 << CD0_V
            | place(u64::from(self.ips.encoding()), CD0_IPS.0, CD0_IPS.1)
            | u64::from(self.access_flag_fault_disable) << CD0_AFFD
            | u64::from(self.wxn) << CD0_WXN
            | u64::from(self.uwxn) << CD0_UWXN
            | u64::from(self.top_byte_ignore) << CD0_TBI0
            | 1 << CD0_AA64
            | u64::from(self.hw_dirty) << CD0_HD
            | u64::from(self.hw_access_flag) << CD0_HA
            | u64::from(self.stall) << CD0_S
            | u64::from(self.record_faults) << CD0_R
            | u64::from(self.abort) << CD0_A
            | u64::from(self.private_asid_set) << CD0_ASET
            | place(u64::from(self.asid), CD0_ASID.0, CD0_ASID.1);
        w[1] = ttb0
            | u64::from(self.hierarchical_attributes_disabled) << CD1_HAD0
            | u64::from(self.nscfg0) << CD1_NSCFG0;
        w[CD_MAIR_WORD] = self.mair;
        Ok(w)
    }

    /// Checks the CD against the SMMU: stage 1, ASID width, granule, IPS ≤ OAS, input size
    /// (T0SZ above 39 needs IDR3.STT), HTTU, HAD, stall and termination models.
    pub fn check_features(&self, f: &Features) -> Result<(), EntryError> {
        if !f.stages.stage1() {
            return Err(EntryError::Unsupported("stage 1"));
        }
        if u32::from(self.asid) >> f.asid_bits != 0 {
            return Err(EntryError::Field {
                field: "ASID",
                value: u64::from(self.asid),
            });
        }
        if !granule_supported(self.granule, &f.granules) {
            return Err(EntryError::Unsupported("the stage-1 granule"));
        }
        if self.ips.encoding() > f.oas.encoding() {
            return Err(EntryError::Field {
                field: "IPS",
                value: u64::from(self.ips.encoding()),
            });
        }
        if self.t0sz > 39 && !f.stt {
            return Err(EntryError::Field {
                field: "T0SZ",
                value: u64::from(self.t0sz),
            });
        }
        if self.hw_access_flag && f.httu == Httu::None {
            return Err(EntryError::Unsupported("hardware access flag updates"));
        }
        if self.hw_dirty && f.httu != Httu::AccessFlagAndDirty {
            return Err(EntryError::Unsupported("hardware dirty state updates"));
        }
        if self.hierarchical_attributes_disabled && !f.had {
            return Err(EntryError::Unsupported("hierarchical attribute disables"));
        }
        if self.stall && f.stall_model == StallModel::TerminateOnly {
            return Err(EntryError::Unsupported("stalls"));
        }
        if !self.abort && f.term_model == TermModel::AbortOnly {
            return Err(EntryError::Unsupported("RAZ/WI termination"));
        }
        Ok(())
    }
}

/// The words of an invalid CD (V = 0): transactions using it are terminated with C_BAD_CD.
pub const INVALID_CD: EntryWords = [0; ENTRY_WORDS];

/// The bits of a CD the SMMU uses (5.4): with V = 0 only V; else words 0 to 4 (controls, TTB0,
/// TTB1, MAIR, AMAIR), except that EPD0 makes the TTB0 controls and TTB0 unused and EPD1 those
/// of TTB1. Generous like [`crate::stream_table::ste_used_bits`].
pub fn cd_used_bits(cd: &EntryWords) -> EntryWords {
    let mut used = [0u64; ENTRY_WORDS];
    used[0] = 1 << CD0_V;
    if cd[0] & 1 << CD0_V == 0 {
        return used;
    }
    used[..5].fill(u64::MAX);
    if cd[0] & 1 << CD0_EPD0 != 0 {
        used[0] &= !(m(CD0_T0SZ) | m(CD0_TG0) | m(CD0_IR0) | m(CD0_OR0) | m(CD0_SH0));
        used[1] &= !m(CD1_TTB0);
    }
    if cd[0] & 1 << CD0_EPD1 != 0 {
        used[0] &= !m(CD0_TT1_CONTROL);
        used[2] = 0;
    }
    used
}

/// [`plan_entry_update`] for CDs (V is bit 31 of word 0).
pub fn plan_cd_update(current: &EntryWords, target: &EntryWords) -> UpdatePlan {
    plan_entry_update(current, target, cd_used_bits, 0)
}

/// How a stream's CD table is laid out, which the STE's S1Fmt and S1CDMax describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdTableGeometry {
    /// `2^log2_cds` CDs in one array (a single CD when 0).
    Linear {
        /// S1CDMax.
        log2_cds: u8,
    },
    /// A level-1 array of descriptors, each pointing to a level-2 array of 64 (4 KiB) or 1024
    /// (64 KiB) CDs created on demand.
    TwoLevel {
        /// S1CDMax.
        log2_cds: u8,
        /// S1Fmt: [`CdTableFormat::TwoLevel4K`] or [`CdTableFormat::TwoLevel64K`].
        leaf: CdTableFormat,
    },
}

/// Why a CD table cannot be built or used as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdTableError {
    /// The geometry is not one the architecture or the SMMU allows.
    Geometry(&'static str),
    /// The SubstreamID is outside the table.
    SsidOutOfRange {
        /// The SubstreamID.
        ssid: u32,
        /// The first SubstreamID the table does not cover.
        limit: u64,
    },
    /// No level-2 table covers the SubstreamID yet.
    NoLevel2(u32),
    /// The HAL had no frame for a table.
    OutOfMemory,
    /// The CD cannot be encoded.
    Entry(EntryError),
    /// The invalidation of the SMMU's cached copy failed.
    Invalidation(CmdqError),
}

impl fmt::Display for CdTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Geometry(why) => write!(f, "invalid CD table geometry: {why}"),
            Self::SsidOutOfRange { ssid, limit } => {
                write!(
                    f,
                    "SubstreamID {ssid:#x} is outside the CD table (limit {limit:#x})"
                )
            }
            Self::NoLevel2(ssid) => write!(f, "no level-2 CD table covers SubstreamID {ssid:#x}"),
            Self::OutOfMemory => f.write_str("out of memory for a CD table"),
            Self::Entry(e) => write!(f, "bad context descriptor: {e}"),
            Self::Invalidation(e) => write!(f, "CD invalidation failed: {e}"),
        }
    }
}

impl core::error::Error for CdTableError {}

impl From<EntryError> for CdTableError {
    fn from(e: EntryError) -> Self {
        Self::Entry(e)
    }
}

/// Bits of SubstreamID a level-2 CD table of this format resolves.
const fn leaf_bits(leaf: CdTableFormat) -> u8 {
    match leaf {
        CdTableFormat::TwoLevel64K => 10,
        CdTableFormat::TwoLevel4K | CdTableFormat::Linear => 6,
    }
}

/// The largest linear table this driver builds: 1024 CDs, 64 KiB (beyond that, 2-level).
const MAX_LINEAR_LOG2: u8 = 10;

impl CdTableGeometry {
    /// One CD, no substreams: what QEMU (SSIDSIZE = 0) supports.
    pub const SINGLE: Self = Self::Linear { log2_cds: 0 };

    /// A linear table of `2^log2_cds` CDs.
    pub const fn linear(log2_cds: u8) -> Result<Self, CdTableError> {
        if log2_cds > 20 || log2_cds as u32 + 6 > 30 {
            return Err(CdTableError::Geometry(
                "linear CD table larger than one frame",
            ));
        }
        Ok(Self::Linear { log2_cds })
    }

    /// A 2-level table of `2^log2_cds` CDs with `leaf` level-2 tables.
    pub const fn two_level(log2_cds: u8, leaf: CdTableFormat) -> Result<Self, CdTableError> {
        if matches!(leaf, CdTableFormat::Linear) {
            return Err(CdTableError::Geometry(
                "a 2-level CD table needs 4K or 64K leaves",
            ));
        }
        if log2_cds > 20 || log2_cds < leaf_bits(leaf) {
            return Err(CdTableError::Geometry(
                "S1CDMax must cover at least one level-2 table",
            ));
        }
        Ok(Self::TwoLevel { log2_cds, leaf })
    }

    /// The table for streams using `ssid_bits` of SubstreamID on an SMMU with `f`: linear up
    /// to 1024 CDs or without IDR0.CD2L, else 2-level with 64 KiB leaves.
    pub fn for_ssid_bits(ssid_bits: u8, f: &Features) -> Result<Self, CdTableError> {
        if ssid_bits > f.ssid_bits {
            return Err(CdTableError::Geometry(
                "more SubstreamID bits than IDR1.SSIDSIZE",
            ));
        }
        if ssid_bits <= MAX_LINEAR_LOG2 || !f.cd_two_level {
            Self::linear(ssid_bits)
        } else {
            Self::two_level(ssid_bits, CdTableFormat::TwoLevel64K)
        }
    }

    /// S1CDMax.
    pub const fn log2_cds(&self) -> u8 {
        match *self {
            Self::Linear { log2_cds } | Self::TwoLevel { log2_cds, .. } => log2_cds,
        }
    }

    /// S1Fmt.
    pub const fn format(&self) -> CdTableFormat {
        match *self {
            Self::Linear { .. } => CdTableFormat::Linear,
            Self::TwoLevel { leaf, .. } => leaf,
        }
    }

    /// The table's shape, shared with the stream table.
    pub(crate) const fn shape(&self) -> TableShape {
        match *self {
            Self::Linear { log2_cds } => TableShape {
                bits: log2_cds,
                leaf_bits: None,
            },
            Self::TwoLevel { log2_cds, leaf } => TableShape {
                bits: log2_cds,
                leaf_bits: Some(leaf_bits(leaf)),
            },
        }
    }

    /// The first SubstreamID the table does not cover.
    pub const fn ssid_limit(&self) -> u64 {
        self.shape().limit()
    }

    /// log2 of the bytes of the table S1ContextPtr points to (for tests of the geometry).
    #[cfg(test)]
    const fn base_log2_bytes(&self) -> u32 {
        self.shape().base_log2_bytes()
    }

    /// Where the CD of `ssid` lives: (level-1 index, index in the table). The table itself
    /// locates entries through its shape; this is for tests of the geometry.
    #[cfg(test)]
    const fn locate(&self, ssid: u32) -> Result<(Option<u64>, u64), CdTableError> {
        match self.shape().locate(ssid) {
            Some(at) => Ok(at),
            None => Err(CdTableError::SsidOutOfRange {
                ssid,
                limit: self.ssid_limit(),
            }),
        }
    }
}

/// A level-1 CD table descriptor: V [0], L2Ptr [51:12].
const fn l1cd(l2: PhysAddr) -> u64 {
    (l2.as_u64() & m(L1CD_L2PTR)) | L1CD_V
}

const fn l1cd_decode(raw: u64) -> Option<PhysAddr> {
    if raw & L1CD_V == 0 {
        None
    } else {
        Some(PhysAddr::new(
            field(raw, L1CD_L2PTR.0, L1CD_L2PTR.1) << L1CD_L2PTR.1,
        ))
    }
}

/// Level-1 CD table descriptors.
static CD_LEVEL1: Level1Format = Level1Format {
    encode: |l2, _| Ok(l1cd(l2)),
    decode: l1cd_decode,
};

impl From<TableError> for CdTableError {
    fn from(e: TableError) -> Self {
        match e {
            TableError::Geometry(why) => Self::Geometry(why),
            TableError::OutOfRange { index, limit } => Self::SsidOutOfRange { ssid: index, limit },
            TableError::NoLevel2(ssid) => Self::NoLevel2(ssid),
            TableError::OutOfMemory => Self::OutOfMemory,
            TableError::Entry(e) => Self::Entry(e),
            TableError::Invalidation(e) => Self::Invalidation(e),
        }
    }
}

/// The CD table of one stream (or of several streams attached alike) in HAL frames.
///
/// Updates take `&mut self`. Frames are not freed on drop; [`CdTable::free`] returns them once
/// no STE points at the table.
pub struct CdTable<H: Hal> {
    table: TwoLevelTable<H>,
    geometry: CdTableGeometry,
}

impl<H: Hal> fmt::Debug for CdTable<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CdTable")
            .field("geometry", &self.geometry)
            .field("base", &self.table.base())
            .finish_non_exhaustive()
    }
}

impl<H: Hal> CdTable<H> {
    /// Allocates the table with every CD invalid. `coherent` is IDR0.COHACC.
    pub fn new(hal: H, geometry: CdTableGeometry, coherent: bool) -> Result<Self, CdTableError> {
        let table = TwoLevelTable::new(hal, geometry.shape(), coherent, &CD_LEVEL1, INVALID_CD)?;
        Ok(Self { table, geometry })
    }

    /// The geometry.
    pub fn geometry(&self) -> CdTableGeometry {
        self.geometry
    }

    /// The stage-1 half of an STE pointing at this table (S1ContextPtr, S1Fmt, S1CDMax), with
    /// the default attributes of [`Stage1::single_cd`]; adjust `vmid` and the rest as needed.
    pub fn stage1(&self) -> Stage1 {
        let mut s1 = Stage1::single_cd(self.table.base());
        s1.format = self.geometry.format();
        s1.cd_max = self.geometry.log2_cds();
        s1
    }

    /// Makes sure a level-2 table covers `ssid`; returns whether one was installed (then
    /// CMD_CFGI_CD with leaf = false is due for the streams using the table).
    pub fn ensure_level2(&mut self, ssid: u32) -> Result<bool, CdTableError> {
        Ok(self.table.ensure_level2(ssid)?)
    }

    /// The current eight words of the CD of `ssid`.
    pub fn entry(&self, ssid: u32) -> Result<EntryWords, CdTableError> {
        Ok(self.table.entry(ssid)?)
    }

    /// Installs `cd` for `ssid` (or makes it invalid with `None`) on a live SMMU, following
    /// [`plan_cd_update`]; after each step `invalidate(ssid, leaf)` must issue CMD_CFGI_CD for
    /// every stream using this table, then a CMD_SYNC, and wait for it.
    pub fn install(
        &mut self,
        ssid: u32,
        cd: Option<&ContextDescriptor>,
        mut invalidate: impl FnMut(u32, bool) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, CdTableError> {
        let target = match cd {
            Some(cd) => cd.encode()?,
            None => INVALID_CD,
        };
        if cd.is_none() && self.table.lacks_level2(ssid) {
            // Nothing to clear.
            return Ok(UpdateKind::Unchanged);
        }
        let kind = self
            .table
            .write(ssid, &target, cd_used_bits, |leaf| invalidate(ssid, leaf))?;
        Ok(kind)
    }

    /// Returns every frame of the table to the HAL.
    ///
    /// # Safety
    /// No STE the SMMU may still use points at this table (the STEs were changed and a
    /// CMD_CFGI_STE + CMD_SYNC completed for each), or the SMMU is disabled.
    pub unsafe fn free(self) {
        // SAFETY: per this function's contract.
        unsafe { self.table.free() }
    }
}

#[cfg(test)]
mod tests;
