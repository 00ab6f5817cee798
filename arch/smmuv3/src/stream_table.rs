//! The stream table (IHI 0070 5.2, 5.3): one stream table entry (STE) per StreamID saying how
//! that device's transactions are handled, in a linear table or a 2-level table whose level-2
//! parts are created when a device is attached.
//!
//! An STE is built as a typed [`StreamTableEntry`] (abort, bypass, stage 1, stage 2, nested) and
//! encoded in one place ([`StreamTableEntry::encode`]) into the eight 64-bit words the SMMU
//! reads. The SMMU reads each word single-copy atomically but the entry as a whole at any moment
//! and may cache it until a CMD_CFGI_STE + CMD_SYNC, so updates follow
//! [`crate::entry::plan_entry_update`]; the table itself is the 2-level table CD tables use too.

use core::fmt;

use iommu::addr::PhysAddr;
use iommu::hal::Hal;
use tock_registers::fields::FieldValue;

use crate::attributes::{
    bits, field, granule_from_tg0, granule_supported, place, tg0, Cacheability, Granule,
    Shareability,
};
use crate::cmdq::CmdqError;
use crate::command::Command;
use crate::entry::{
    check_addr, plan_entry_update, EntryError, EntryWords, UpdateKind, UpdatePlan, ENTRY_WORDS,
};
use crate::idr::{Features, OutputAddressSize, StreamTableLevels};
use crate::registers::{STRTAB_BASE, STRTAB_BASE_CFG};
use crate::two_level::{Level1Format, TableError, TableShape, TwoLevelTable};

/// Bytes in one STE.
pub const STE_BYTES: usize = 64;

// STE word 0.
const STE0_V: u64 = 1 << 0;
const STE0_CONFIG: (u32, u32) = (3, 1);
const STE0_S1FMT: (u32, u32) = (5, 4);
const STE0_S1CTXPTR: (u32, u32) = (51, 6);
const STE0_S1CDMAX: (u32, u32) = (63, 59);
// STE word 1.
const STE1_S1DSS: (u32, u32) = (1, 0);
const STE1_S1CIR: (u32, u32) = (3, 2);
const STE1_S1COR: (u32, u32) = (5, 4);
const STE1_S1CSH: (u32, u32) = (7, 6);
/// DRE, CONT, DCP, PPAR, MEV: fields this driver leaves 0; counted as used by any non-abort
/// entry so that a change to them is never treated as invisible.
const STE1_MISC: (u32, u32) = (19, 12);
const STE1_S2FWB: u32 = 25;
const STE1_S1STALLD: u32 = 27;
const STE1_EATS: (u32, u32) = (29, 28);
const STE1_STRW: (u32, u32) = (31, 30);
/// MemAttr, MTCFG, ALLOCCFG, SHCFG, NSCFG, PRIVCFG, INSTCFG: attribute overrides.
const STE1_ATTR_OVERRIDES: (u32, u32) = (51, 32);
const STE1_SHCFG: (u32, u32) = (45, 44);
// STE word 2.
const STE2_S2VMID: (u32, u32) = (15, 0);
const STE2_S2T0SZ: (u32, u32) = (37, 32);
const STE2_S2SL0: (u32, u32) = (39, 38);
const STE2_S2IR0: (u32, u32) = (41, 40);
const STE2_S2OR0: (u32, u32) = (43, 42);
const STE2_S2SH0: (u32, u32) = (45, 44);
const STE2_S2TG: (u32, u32) = (47, 46);
const STE2_S2PS: (u32, u32) = (50, 48);
const STE2_S2AA64: u32 = 51;
const STE2_S2AFFD: u32 = 53;
const STE2_S2PTW: u32 = 54;
const STE2_S2S: u32 = 57;
const STE2_S2R: u32 = 58;
/// S2T0SZ through S2R: the whole stage-2 control block.
const STE2_S2CONTROL: (u32, u32) = (58, 32);
// STE word 3.
const STE3_S2TTB: (u32, u32) = (51, 4);

// Level-1 stream table descriptor (5.3).
const L1STD_SPAN: (u32, u32) = (4, 0);
const L1STD_L2PTR: (u32, u32) = (51, 6);

const fn m(f: (u32, u32)) -> u64 {
    bits(f.0, f.1)
}

/// STE.Config (5.2): what happens to the stream's transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteConfig {
    /// 0b000: abort every transaction, record no event.
    Abort,
    /// 0b100: pass every transaction through untranslated.
    Bypass,
    /// 0b101: stage-1 translation through a context descriptor table.
    Stage1(Stage1),
    /// 0b110: stage-2 translation.
    Stage2(Stage2),
    /// 0b111: stage 1 then stage 2 (the CD table and stage-1 walks are themselves IPAs).
    Nested(Stage1, Stage2),
}

impl SteConfig {
    const fn encoding(&self) -> u64 {
        match self {
            Self::Abort => 0b000,
            Self::Bypass => 0b100,
            Self::Stage1(_) => 0b101,
            Self::Stage2(_) => 0b110,
            Self::Nested(..) => 0b111,
        }
    }
}

/// STE.S1Fmt: the layout of the context descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdTableFormat {
    /// 0b00: a linear array of CDs (also the only meaning when S1CDMax = 0).
    Linear,
    /// 0b01: 2-level, level-2 tables of 4 KiB (64 CDs, indexed by SSID\[5:0\]).
    TwoLevel4K,
    /// 0b10: 2-level, level-2 tables of 64 KiB (1024 CDs, indexed by SSID\[9:0\]).
    TwoLevel64K,
}

impl CdTableFormat {
    /// The S1Fmt encoding.
    pub const fn encoding(self) -> u64 {
        match self {
            Self::Linear => 0b00,
            Self::TwoLevel4K => 0b01,
            Self::TwoLevel64K => 0b10,
        }
    }
}

/// STE.S1DSS: what a transaction without a SubstreamID uses when the stream has substreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultSubstream {
    /// 0b00: terminate it (with an event).
    Terminate,
    /// 0b01: bypass stage 1.
    Bypass,
    /// 0b10: translate with CD 0 (and SubstreamID 0 is then not usable by tagged traffic).
    Substream0,
}

/// STE.EATS: whether PCIe ATS translation requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eats {
    /// 0b00: ATS requests are aborted (the default: no ATS).
    Abort,
    /// 0b01: full ATS.
    Translate,
    /// 0b10: split-stage ATS (IDR0.NS1ATS).
    SplitStage,
}

/// STE.STRW: the translation regime of stage 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamWorld {
    /// 0b00: Non-secure EL1 (TLB entries tagged with VMID and ASID).
    NsEl1,
    /// 0b10: EL2 (IDR0.HYP; no VMID).
    El2,
    /// 0b11: EL2 with E2H (ASID-tagged EL2 entries).
    El2E2h,
}

/// Memory attributes of a table fetch or walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkAttributes {
    /// Inner cacheability.
    pub inner: Cacheability,
    /// Outer cacheability.
    pub outer: Cacheability,
    /// Shareability.
    pub shareability: Shareability,
}

impl WalkAttributes {
    /// Write-back cacheable, inner shareable: what a coherent SMMU wants.
    pub const WRITE_BACK: Self = Self {
        inner: Cacheability::WriteBackAllocate,
        outer: Cacheability::WriteBackAllocate,
        shareability: Shareability::InnerShareable,
    };
    /// Non-cacheable: for an SMMU whose walks do not snoop CPU caches (IDR0.COHACC = 0).
    pub const NON_CACHEABLE: Self = Self {
        inner: Cacheability::NonCacheable,
        outer: Cacheability::NonCacheable,
        shareability: Shareability::OuterShareable,
    };

    /// The attributes matching the SMMU's coherency.
    pub const fn for_features(features: &Features) -> Self {
        if features.coherent {
            Self::WRITE_BACK
        } else {
            Self::NON_CACHEABLE
        }
    }
}

/// The stage-1 half of an STE: where the context descriptors are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1 {
    /// S1ContextPtr: the CD table (or the single CD when `cd_max` is 0), 64-byte aligned.
    pub cd_table: PhysAddr,
    /// S1Fmt.
    pub format: CdTableFormat,
    /// S1CDMax: log2 of the number of CDs; 0 means one CD and no substreams.
    pub cd_max: u8,
    /// S1DSS.
    pub default_substream: DefaultSubstream,
    /// S1CIR, S1COR, S1CSH: attributes of the CD fetches.
    pub cd_fetch: WalkAttributes,
    /// S1STALLD: stalls disabled (must be 0 when IDR0.STALL_MODEL is terminate-only).
    pub stall_disable: bool,
    /// STE.S2VMID of a stage-1-only stream: tags its TLB entries when the SMMU implements stage
    /// 2, so TLBI_NH_* must name the same VMID. Ignored by `Nested`, which uses stage 2's.
    pub vmid: u16,
}

impl Stage1 {
    /// A stream with one context descriptor at `cd` (S1CDMax = 0: no substreams, as QEMU
    /// requires).
    pub const fn single_cd(cd: PhysAddr) -> Self {
        Self {
            cd_table: cd,
            format: CdTableFormat::Linear,
            cd_max: 0,
            default_substream: DefaultSubstream::Substream0,
            cd_fetch: WalkAttributes::WRITE_BACK,
            stall_disable: false,
            vmid: 0,
        }
    }
}

/// The stage-2 half of an STE: the VM's translation table and its VTCR-like controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage2 {
    /// S2VMID.
    pub vmid: u16,
    /// S2TTB: the stage-2 table (16-byte aligned at least; the table's own alignment rules).
    pub table: PhysAddr,
    /// S2T0SZ: 64 minus the IPA width.
    pub t0sz: u8,
    /// S2SL0: the starting level, encoded per granule (see [`Stage2::new`]).
    pub sl0: u8,
    /// S2TG.
    pub granule: Granule,
    /// S2IR0, S2OR0, S2SH0: attributes of the table walks.
    pub walk: WalkAttributes,
    /// S2PS: the output (physical) address size.
    pub output_size: OutputAddressSize,
    /// S2AFFD: access flag faults disabled (else a descriptor with AF = 0 faults).
    pub access_flag_fault_disable: bool,
    /// S2PTW: a stage-1 walk that lands on Device memory at stage 2 faults.
    pub protected_table_walk: bool,
    /// S2R: record stage-2 faults in the event queue.
    pub record_faults: bool,
    /// S2S: stall on stage-2 faults (stall-capable SMMUs only).
    pub stall: bool,
}

impl Stage2 {
    /// A stage-2 configuration for a table at `table` whose walk starts at `start_level`
    /// (0..=3) and translates `ias_bits` of IPA with `granule` pages; faults are recorded,
    /// walks are write-back cacheable and the access flag is checked.
    pub fn new(
        vmid: u16,
        table: PhysAddr,
        ias_bits: u8,
        granule: Granule,
        start_level: u8,
        output_size: OutputAddressSize,
    ) -> Result<Self, EntryError> {
        if !(16..=52).contains(&ias_bits) {
            return Err(EntryError::Field {
                field: "S2T0SZ",
                value: u64::from(ias_bits),
            });
        }
        let Some(sl0) = s2_sl0(granule, start_level) else {
            return Err(EntryError::Field {
                field: "S2SL0",
                value: u64::from(start_level),
            });
        };
        Ok(Self {
            vmid,
            table,
            t0sz: 64 - ias_bits,
            sl0,
            granule,
            walk: WalkAttributes::WRITE_BACK,
            output_size,
            access_flag_fault_disable: false,
            protected_table_walk: false,
            record_faults: true,
            stall: false,
        })
    }
}

/// S2SL0 for a walk starting at `level` (VTCR_EL2.SL0 without FEAT_TTST): with 4K pages
/// 0b00 = level 2, 0b01 = level 1, 0b10 = level 0; with 16K and 64K pages 0b00 = level 3,
/// 0b01 = level 2, 0b10 = level 1.
pub const fn s2_sl0(granule: Granule, level: u8) -> Option<u8> {
    match (granule, level) {
        (Granule::Size4K, 0) => Some(0b10),
        (Granule::Size4K, 1) => Some(0b01),
        (Granule::Size4K, 2) => Some(0b00),
        (Granule::Size16K | Granule::Size64K, 1) => Some(0b10),
        (Granule::Size16K | Granule::Size64K, 2) => Some(0b01),
        (Granule::Size16K | Granule::Size64K, 3) => Some(0b00),
        _ => None,
    }
}

/// A stream table entry as a typed value. Build it with [`abort`](Self::abort),
/// [`bypass`](Self::bypass), [`stage1`](Self::stage1), [`stage2`](Self::stage2) or
/// [`nested`](Self::nested); encode it with [`encode`](Self::encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTableEntry {
    /// STE.Config and the stage halves.
    pub config: SteConfig,
    /// STE.EATS (translating configurations only).
    pub ats: Eats,
    /// STE.STRW (configurations with stage 1 only).
    pub stream_world: StreamWorld,
    /// SHCFG = 0b01 "use incoming shareability" for non-aborting entries. Only meaningful
    /// when IDR1.ATTR_TYPES_OVR is set (else the field is ignored and left 0); set it from
    /// `features.attr_types_override`.
    pub incoming_shareability: bool,
}

impl StreamTableEntry {
    const fn with(config: SteConfig) -> Self {
        Self {
            config,
            ats: Eats::Abort,
            stream_world: StreamWorld::NsEl1,
            incoming_shareability: false,
        }
    }

    /// Abort every transaction of the stream, silently (V = 1, Config = abort).
    pub const fn abort() -> Self {
        Self::with(SteConfig::Abort)
    }

    /// Let the stream's transactions through untranslated.
    pub const fn bypass() -> Self {
        Self::with(SteConfig::Bypass)
    }

    /// Stage-1 translation through the CDs described by `s1`.
    pub const fn stage1(s1: Stage1) -> Self {
        Self::with(SteConfig::Stage1(s1))
    }

    /// Stage-2 translation with `s2`.
    pub const fn stage2(s2: Stage2) -> Self {
        Self::with(SteConfig::Stage2(s2))
    }

    /// Stage 1 (`s1`) nested in stage 2 (`s2`).
    pub const fn nested(s1: Stage1, s2: Stage2) -> Self {
        Self::with(SteConfig::Nested(s1, s2))
    }

    /// The same entry with EATS = `ats`.
    pub const fn with_ats(mut self, ats: Eats) -> Self {
        self.ats = ats;
        self
    }

    /// The same entry with STRW = `world`.
    pub const fn with_stream_world(mut self, world: StreamWorld) -> Self {
        self.stream_world = world;
        self
    }

    /// The same entry with SHCFG per IDR1.ATTR_TYPES_OVR (see the field).
    pub const fn with_incoming_shareability(mut self, on: bool) -> Self {
        self.incoming_shareability = on;
        self
    }

    /// Checks the entry against what the SMMU implements: the stages, VMID width, granules,
    /// output size, substream count, CD table format and stall model. (QEMU's additional
    /// limits, S1CDMax = 0 and no S1STALLD, are what [`Stage1::single_cd`] gives.)
    pub fn check_features(&self, f: &Features) -> Result<(), EntryError> {
        let (s1, s2) = match &self.config {
            SteConfig::Abort | SteConfig::Bypass => (None, None),
            SteConfig::Stage1(s1) => (Some(s1), None),
            SteConfig::Stage2(s2) => (None, Some(s2)),
            SteConfig::Nested(s1, s2) => (Some(s1), Some(s2)),
        };
        if let Some(s1) = s1 {
            if !f.stages.stage1() {
                return Err(EntryError::Unsupported("stage 1"));
            }
            if s1.cd_max > f.ssid_bits {
                return Err(EntryError::Field {
                    field: "S1CDMax",
                    value: u64::from(s1.cd_max),
                });
            }
            if s1.cd_max > 0 && s1.format != CdTableFormat::Linear && !f.cd_two_level {
                return Err(EntryError::Unsupported("2-level CD tables"));
            }
            if s1.stall_disable && f.stall_model == crate::idr::StallModel::TerminateOnly {
                return Err(EntryError::Unsupported(
                    "S1STALLD with the terminate-only model",
                ));
            }
            if self.stream_world != StreamWorld::NsEl1 && !f.hyp {
                return Err(EntryError::Unsupported("EL2 stream worlds"));
            }
            if s2.is_none() && f.stages.stage2() && u32::from(s1.vmid) >> f.vmid_bits != 0 {
                return Err(EntryError::Field {
                    field: "S2VMID",
                    value: u64::from(s1.vmid),
                });
            }
        }
        if let Some(s2) = s2 {
            if !f.stages.stage2() {
                return Err(EntryError::Unsupported("stage 2"));
            }
            if u32::from(s2.vmid) >> f.vmid_bits != 0 {
                return Err(EntryError::Field {
                    field: "S2VMID",
                    value: u64::from(s2.vmid),
                });
            }
            if !granule_supported(s2.granule, &f.granules) {
                return Err(EntryError::Unsupported("the stage-2 granule"));
            }
            if s2.output_size.encoding() > f.oas.encoding() {
                return Err(EntryError::Field {
                    field: "S2PS",
                    value: u64::from(s2.output_size.encoding()),
                });
            }
            if s2.stall && f.stall_model == crate::idr::StallModel::TerminateOnly {
                return Err(EntryError::Unsupported("S2S with the terminate-only model"));
            }
        }
        if self.ats != Eats::Abort && !f.ats {
            return Err(EntryError::Unsupported("ATS"));
        }
        Ok(())
    }

    /// The eight words of the entry. Checks field widths and alignments; leaves every field the
    /// configuration does not use at 0 (the update planner relies on that).
    pub fn encode(&self) -> Result<EntryWords, EntryError> {
        let mut w = [0u64; ENTRY_WORDS];
        w[0] = STE0_V | place(self.config.encoding(), STE0_CONFIG.0, STE0_CONFIG.1);
        let (s1, s2) = match &self.config {
            SteConfig::Abort => return Ok(w),
            SteConfig::Bypass => (None, None),
            SteConfig::Stage1(s1) => (Some(s1), None),
            SteConfig::Stage2(s2) => (None, Some(s2)),
            SteConfig::Nested(s1, s2) => (Some(s1), Some(s2)),
        };
        if self.incoming_shareability {
            w[1] |= place(0b01, STE1_SHCFG.0, STE1_SHCFG.1);
        }
        if s1.is_some() || s2.is_some() {
            let eats = match self.ats {
                Eats::Abort => 0b00,
                Eats::Translate => 0b01,
                Eats::SplitStage => 0b10,
            };
            w[1] |= place(eats, STE1_EATS.0, STE1_EATS.1);
        }
        if let Some(s1) = s1 {
            let ptr = check_addr("S1ContextPtr", s1.cd_table.as_u64(), 64)?;
            if s1.cd_max > 20 {
                return Err(EntryError::Field {
                    field: "S1CDMax",
                    value: u64::from(s1.cd_max),
                });
            }
            w[0] |= ptr
                | place(s1.format.encoding(), STE0_S1FMT.0, STE0_S1FMT.1)
                | place(u64::from(s1.cd_max), STE0_S1CDMAX.0, STE0_S1CDMAX.1);
            let dss = match s1.default_substream {
                DefaultSubstream::Terminate => 0b00,
                DefaultSubstream::Bypass => 0b01,
                DefaultSubstream::Substream0 => 0b10,
            };
            let strw = match self.stream_world {
                StreamWorld::NsEl1 => 0b00,
                StreamWorld::El2 => 0b10,
                StreamWorld::El2E2h => 0b11,
            };
            w[1] |= place(dss, STE1_S1DSS.0, STE1_S1DSS.1)
                | place(s1.cd_fetch.inner.encoding(), STE1_S1CIR.0, STE1_S1CIR.1)
                | place(s1.cd_fetch.outer.encoding(), STE1_S1COR.0, STE1_S1COR.1)
                | place(
                    s1.cd_fetch.shareability.encoding(),
                    STE1_S1CSH.0,
                    STE1_S1CSH.1,
                )
                | u64::from(s1.stall_disable) << STE1_S1STALLD
                | place(strw, STE1_STRW.0, STE1_STRW.1);
            if s2.is_none() {
                w[2] |= place(u64::from(s1.vmid), STE2_S2VMID.0, STE2_S2VMID.1);
            }
        }
        if let Some(s2) = s2 {
            let ttb = check_addr("S2TTB", s2.table.as_u64(), 16)?;
            if !(12..=48).contains(&s2.t0sz) {
                return Err(EntryError::Field {
                    field: "S2T0SZ",
                    value: u64::from(s2.t0sz),
                });
            }
            if s2.sl0 > 0b10 {
                return Err(EntryError::Field {
                    field: "S2SL0",
                    value: u64::from(s2.sl0),
                });
            }
            if s2.output_size == OutputAddressSize::Reserved {
                return Err(EntryError::Field {
                    field: "S2PS",
                    value: 7,
                });
            }
            w[2] |= place(u64::from(s2.vmid), STE2_S2VMID.0, STE2_S2VMID.1)
                | place(u64::from(s2.t0sz), STE2_S2T0SZ.0, STE2_S2T0SZ.1)
                | place(u64::from(s2.sl0), STE2_S2SL0.0, STE2_S2SL0.1)
                | place(s2.walk.inner.encoding(), STE2_S2IR0.0, STE2_S2IR0.1)
                | place(s2.walk.outer.encoding(), STE2_S2OR0.0, STE2_S2OR0.1)
                | place(s2.walk.shareability.encoding(), STE2_S2SH0.0, STE2_S2SH0.1)
                | place(tg0(s2.granule), STE2_S2TG.0, STE2_S2TG.1)
                | place(u64::from(s2.output_size.encoding()), STE2_S2PS.0, STE2_S2PS.1)
                // AArch64 tables only; little-endian walks (S2ENDI = 0).
                | 1 << STE2_S2AA64
                | u64::from(s2.access_flag_fault_disable) << STE2_S2AFFD
                | u64::from(s2.protected_table_walk) << STE2_S2PTW
                | u64::from(s2.stall) << STE2_S2S
                | u64::from(s2.record_faults) << STE2_S2R;
            w[3] = ttb;
        }
        Ok(w)
    }
}

/// Names of the STE fields (IHI 0070 5.2) this driver never sets, and of the reserved ranges
/// between fields: `(word, hi, lo, name)`, so that a refused entry names what it set.
const STE_FIELD_NAMES: &[(usize, u32, u32, &str)] = &[
    (0, 58, 52, "STE word 0 reserved bits [58:52]"),
    (1, 19, 12, "DRE/CONT/DCP/PPAR/MEV"),
    (1, 24, 20, "STE word 1 reserved bits [24:20]"),
    (1, 25, 25, "S2FWB"),
    (1, 26, 26, "S1MPAM"),
    (1, 35, 32, "MemAttr"),
    (1, 36, 36, "MTCFG"),
    (1, 40, 37, "ALLOCCFG"),
    (1, 43, 41, "STE word 1 reserved bits [43:41]"),
    (1, 47, 46, "NSCFG"),
    (1, 49, 48, "PRIVCFG"),
    (1, 51, 50, "INSTCFG"),
    (1, 63, 52, "STE word 1 reserved bits [63:52]"),
    (2, 31, 16, "STE word 2 reserved bits [31:16]"),
    (2, 52, 52, "S2ENDI"),
    (2, 55, 55, "S2HD"),
    (2, 56, 56, "S2HA"),
    (2, 63, 59, "STE word 2 bits [63:59] (S2NSW, S2NSA, ...)"),
    (3, 3, 0, "STE word 3 reserved bits [3:0]"),
    (3, 63, 52, "STE word 3 reserved bits [63:52]"),
    (4, 63, 0, "STE word 4 (PARTID, PMG, ...)"),
    (5, 63, 0, "STE word 5 (VMSPtr)"),
    (6, 63, 0, "STE word 6 (S_S2TTB)"),
    (7, 63, 0, "STE word 7"),
];

/// The name of the field holding the lowest of `stray` bits of word `word` (`stray` != 0).
fn stray_field(word: usize, stray: u64) -> &'static str {
    let bit = stray.trailing_zeros();
    let named = [
        (0, STE0_S1FMT, "S1Fmt"),
        (0, STE0_S1CTXPTR, "S1ContextPtr"),
        (0, STE0_S1CDMAX, "S1CDMax"),
        (1, STE1_S1DSS, "S1DSS"),
        (1, STE1_S1CIR, "S1CIR"),
        (1, STE1_S1COR, "S1COR"),
        (1, STE1_S1CSH, "S1CSH"),
        (1, (STE1_S1STALLD, STE1_S1STALLD), "S1STALLD"),
        (1, STE1_EATS, "EATS"),
        (1, STE1_STRW, "STRW"),
        (1, STE1_SHCFG, "SHCFG"),
        (2, STE2_S2VMID, "S2VMID"),
        (2, STE2_S2CONTROL, "S2 controls (S2T0SZ..S2R)"),
        (3, STE3_S2TTB, "S2TTB"),
    ];
    STE_FIELD_NAMES
        .iter()
        .copied()
        .chain(named.iter().map(|&(w, (hi, lo), name)| (w, hi, lo, name)))
        .find(|&(w, hi, lo, _)| w == word && (lo..=hi).contains(&bit))
        .map_or("STE reserved bits", |(.., name)| name)
}

impl StreamTableEntry {
    /// The entry that `words` hold, for entries someone else wrote (a guest's vSTE): `None` when
    /// V = 0. The exact inverse of [`encode`](Self::encode): refuses reserved values and every
    /// bit `encode` would not set for the decoded configuration (fields this driver does not
    /// model, stage fields of a configuration without that stage), naming the field, so that
    /// `encode(decode(w)) == w` for every `w` it accepts.
    pub fn decode(words: &EntryWords) -> Result<Option<Self>, EntryError> {
        let [w0, w1, w2, w3, ..] = *words;
        if w0 & STE0_V == 0 {
            return Ok(None);
        }
        let bad = |f: &'static str, value: u64| EntryError::Field { field: f, value };
        let config = field(w0, STE0_CONFIG.0, STE0_CONFIG.1);
        let (has_s1, has_s2) = match config {
            0b000 => (false, false),
            0b100 => (false, false),
            0b101 => (true, false),
            0b110 => (false, true),
            0b111 => (true, true),
            other => return Err(bad("Config", other)),
        };
        // The bits `encode` may set for this configuration.
        let mut allowed = [0u64; ENTRY_WORDS];
        allowed[0] = STE0_V | m(STE0_CONFIG);
        if config != 0 {
            allowed[1] |= m(STE1_SHCFG);
            if has_s1 || has_s2 {
                allowed[1] |= m(STE1_EATS);
            }
            if has_s1 {
                allowed[0] |= m(STE0_S1FMT) | m(STE0_S1CTXPTR) | m(STE0_S1CDMAX);
                allowed[1] |= m(STE1_S1DSS)
                    | m(STE1_S1CIR)
                    | m(STE1_S1COR)
                    | m(STE1_S1CSH)
                    | 1 << STE1_S1STALLD
                    | m(STE1_STRW);
                allowed[2] |= m(STE2_S2VMID);
            }
            if has_s2 {
                allowed[2] |= m(STE2_S2VMID)
                    | m(STE2_S2T0SZ)
                    | m(STE2_S2SL0)
                    | m(STE2_S2IR0)
                    | m(STE2_S2OR0)
                    | m(STE2_S2SH0)
                    | m(STE2_S2TG)
                    | m(STE2_S2PS)
                    | 1 << STE2_S2AA64
                    | 1 << STE2_S2AFFD
                    | 1 << STE2_S2PTW
                    | 1 << STE2_S2S
                    | 1 << STE2_S2R;
                allowed[3] |= m(STE3_S2TTB);
            }
        }
        for (i, (&w, &ok)) in words.iter().zip(allowed.iter()).enumerate() {
            let stray = w & !ok;
            if stray != 0 {
                return Err(bad(stray_field(i, stray), stray));
            }
        }

        let shcfg = field(w1, STE1_SHCFG.0, STE1_SHCFG.1);
        if shcfg > 0b01 {
            return Err(bad("SHCFG", shcfg));
        }
        let ats = match field(w1, STE1_EATS.0, STE1_EATS.1) {
            0b00 => Eats::Abort,
            0b01 => Eats::Translate,
            0b10 => Eats::SplitStage,
            other => return Err(bad("EATS", other)),
        };
        let stream_world = match field(w1, STE1_STRW.0, STE1_STRW.1) {
            0b00 => StreamWorld::NsEl1,
            0b10 => StreamWorld::El2,
            0b11 => StreamWorld::El2E2h,
            other => return Err(bad("STRW", other)),
        };
        let s1 = if has_s1 {
            let format = match field(w0, STE0_S1FMT.0, STE0_S1FMT.1) {
                0b00 => CdTableFormat::Linear,
                0b01 => CdTableFormat::TwoLevel4K,
                0b10 => CdTableFormat::TwoLevel64K,
                other => return Err(bad("S1Fmt", other)),
            };
            let cd_max = field(w0, STE0_S1CDMAX.0, STE0_S1CDMAX.1) as u8;
            if cd_max > 20 {
                return Err(bad("S1CDMax", u64::from(cd_max)));
            }
            let default_substream = match field(w1, STE1_S1DSS.0, STE1_S1DSS.1) {
                0b00 => DefaultSubstream::Terminate,
                0b01 => DefaultSubstream::Bypass,
                0b10 => DefaultSubstream::Substream0,
                other => return Err(bad("S1DSS", other)),
            };
            let csh = field(w1, STE1_S1CSH.0, STE1_S1CSH.1);
            let shareability = Shareability::from_encoding(csh).ok_or(bad("S1CSH", csh))?;
            Some(Stage1 {
                cd_table: PhysAddr::new(w0 & m(STE0_S1CTXPTR)),
                format,
                cd_max,
                default_substream,
                cd_fetch: WalkAttributes {
                    inner: Cacheability::from_encoding(field(w1, STE1_S1CIR.0, STE1_S1CIR.1)),
                    outer: Cacheability::from_encoding(field(w1, STE1_S1COR.0, STE1_S1COR.1)),
                    shareability,
                },
                stall_disable: w1 & 1 << STE1_S1STALLD != 0,
                // A nested entry's S2VMID is stage 2's; `encode` writes a stage-1 one only alone.
                vmid: if has_s2 {
                    0
                } else {
                    field(w2, STE2_S2VMID.0, STE2_S2VMID.1) as u16
                },
            })
        } else {
            None
        };
        let s2 = if has_s2 {
            let t0sz = field(w2, STE2_S2T0SZ.0, STE2_S2T0SZ.1) as u8;
            if !(12..=48).contains(&t0sz) {
                return Err(bad("S2T0SZ", u64::from(t0sz)));
            }
            let sl0 = field(w2, STE2_S2SL0.0, STE2_S2SL0.1) as u8;
            if sl0 > 0b10 {
                return Err(bad("S2SL0", u64::from(sl0)));
            }
            let tg = field(w2, STE2_S2TG.0, STE2_S2TG.1);
            let granule = granule_from_tg0(tg).ok_or(bad("S2TG", tg))?;
            let sh = field(w2, STE2_S2SH0.0, STE2_S2SH0.1);
            let shareability = Shareability::from_encoding(sh).ok_or(bad("S2SH0", sh))?;
            let output_size = match field(w2, STE2_S2PS.0, STE2_S2PS.1) {
                0 => OutputAddressSize::Bits32,
                1 => OutputAddressSize::Bits36,
                2 => OutputAddressSize::Bits40,
                3 => OutputAddressSize::Bits42,
                4 => OutputAddressSize::Bits44,
                5 => OutputAddressSize::Bits48,
                6 => OutputAddressSize::Bits52,
                other => return Err(bad("S2PS", other)),
            };
            if w2 & 1 << STE2_S2AA64 == 0 {
                return Err(bad("S2AA64", 0));
            }
            Some(Stage2 {
                vmid: field(w2, STE2_S2VMID.0, STE2_S2VMID.1) as u16,
                table: PhysAddr::new(w3 & m(STE3_S2TTB)),
                t0sz,
                sl0,
                granule,
                walk: WalkAttributes {
                    inner: Cacheability::from_encoding(field(w2, STE2_S2IR0.0, STE2_S2IR0.1)),
                    outer: Cacheability::from_encoding(field(w2, STE2_S2OR0.0, STE2_S2OR0.1)),
                    shareability,
                },
                output_size,
                access_flag_fault_disable: w2 & 1 << STE2_S2AFFD != 0,
                protected_table_walk: w2 & 1 << STE2_S2PTW != 0,
                record_faults: w2 & 1 << STE2_S2R != 0,
                stall: w2 & 1 << STE2_S2S != 0,
            })
        } else {
            None
        };
        let config = match (config, s1, s2) {
            (0b000, ..) => SteConfig::Abort,
            (_, None, None) => SteConfig::Bypass,
            (_, Some(s1), None) => SteConfig::Stage1(s1),
            (_, None, Some(s2)) => SteConfig::Stage2(s2),
            (_, Some(s1), Some(s2)) => SteConfig::Nested(s1, s2),
        };
        Ok(Some(Self {
            config,
            ats,
            stream_world,
            incoming_shareability: shcfg == 0b01,
        }))
    }
}

/// The bits of an STE the SMMU uses, given its current V and Config (5.2): a bit outside this
/// set may change under a live entry without the SMMU noticing. Generous on purpose (fields this
/// driver never sets count as used for every configuration that could read them): an extra used
/// bit can only turn a hitless update into a breaking one, never the other way round.
pub fn ste_used_bits(ste: &EntryWords) -> EntryWords {
    let mut used = [0u64; ENTRY_WORDS];
    used[0] = STE0_V;
    if ste[0] & STE0_V == 0 {
        return used;
    }
    used[0] |= m(STE0_CONFIG);
    let config = field(ste[0], STE0_CONFIG.0, STE0_CONFIG.1);
    if config & 0b100 == 0 {
        // Abort: nothing else is read.
        return used;
    }
    used[1] |= m(STE1_ATTR_OVERRIDES) | m(STE1_MISC);
    if config & 0b001 != 0 {
        used[0] |= m(STE0_S1FMT) | m(STE0_S1CTXPTR) | m(STE0_S1CDMAX);
        used[1] |= m(STE1_S1DSS)
            | m(STE1_S1CIR)
            | m(STE1_S1COR)
            | m(STE1_S1CSH)
            | 1 << STE1_S1STALLD
            | m(STE1_EATS)
            | m(STE1_STRW);
        used[2] |= m(STE2_S2VMID);
    }
    if config & 0b010 != 0 {
        used[1] |= m(STE1_EATS) | 1 << STE1_S2FWB;
        used[2] |= m(STE2_S2VMID) | m(STE2_S2CONTROL);
        used[3] |= m(STE3_S2TTB);
    }
    used
}

/// [`plan_entry_update`] for STEs.
pub fn plan_ste_update(current: &EntryWords, target: &EntryWords) -> UpdatePlan {
    plan_entry_update(current, target, ste_used_bits, 0)
}

/// How the stream table is laid out (SMMU_STRTAB_BASE_CFG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTableGeometry {
    /// One array of `2^log2_entries` STEs indexed by StreamID.
    Linear {
        /// LOG2SIZE: StreamIDs at or above `2^log2_entries` are rejected (C_BAD_STREAMID).
        log2_entries: u8,
    },
    /// A level-1 array of descriptors, each pointing to `2^split` STEs created on demand.
    TwoLevel {
        /// LOG2SIZE: StreamID bits covered.
        sid_bits: u8,
        /// SPLIT: StreamID bits resolved by the level-2 tables (6, 8 or 10).
        split: u8,
    },
}

/// Why the stream table cannot be built or used as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTableError {
    /// The geometry is not one the architecture or the SMMU allows.
    Geometry(&'static str),
    /// The StreamID is outside the table.
    StreamIdOutOfRange {
        /// The StreamID.
        sid: u32,
        /// The first StreamID the table does not cover.
        limit: u64,
    },
    /// No level-2 table covers the StreamID yet ([`StreamTable::ensure_level2`] creates it).
    NoLevel2(u32),
    /// The HAL had no frame for a table.
    OutOfMemory,
    /// The entry cannot be encoded or is not supported.
    Entry(EntryError),
    /// The invalidation of the SMMU's cached copy failed.
    Invalidation(CmdqError),
}

impl fmt::Display for StreamTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Geometry(why) => write!(f, "invalid stream table geometry: {why}"),
            Self::StreamIdOutOfRange { sid, limit } => {
                write!(
                    f,
                    "StreamID {sid:#x} is outside the stream table (limit {limit:#x})"
                )
            }
            Self::NoLevel2(sid) => write!(f, "no level-2 stream table covers StreamID {sid:#x}"),
            Self::OutOfMemory => f.write_str("out of memory for a stream table"),
            Self::Entry(e) => write!(f, "bad stream table entry: {e}"),
            Self::Invalidation(e) => write!(f, "stream table invalidation failed: {e}"),
        }
    }
}

impl core::error::Error for StreamTableError {}

impl From<EntryError> for StreamTableError {
    fn from(e: EntryError) -> Self {
        Self::Entry(e)
    }
}

/// Where an STE lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteLocation {
    /// Entry `index` of the linear table.
    Linear {
        /// Index of the STE.
        index: u64,
    },
    /// Entry `l2_index` of the level-2 table of level-1 descriptor `l1_index`.
    TwoLevel {
        /// Index of the level-1 descriptor.
        l1_index: u64,
        /// Index of the STE in its level-2 table.
        l2_index: u64,
    },
}

/// The largest table or level-2 array the HAL can give as one frame (FrameSize's 1 GiB).
const MAX_FRAME_LOG2: u32 = 30;

impl StreamTableGeometry {
    /// A linear table of `2^log2_entries` STEs (one frame of `64 << log2_entries` bytes).
    pub const fn linear(log2_entries: u8) -> Result<Self, StreamTableError> {
        if log2_entries as u32 + 6 > MAX_FRAME_LOG2 || log2_entries > 32 {
            return Err(StreamTableError::Geometry(
                "linear table larger than one frame",
            ));
        }
        Ok(Self::Linear { log2_entries })
    }

    /// A 2-level table covering `sid_bits` StreamID bits with level-2 tables of `2^split` STEs.
    pub const fn two_level(sid_bits: u8, split: u8) -> Result<Self, StreamTableError> {
        if !matches!(split, 6 | 8 | 10) {
            return Err(StreamTableError::Geometry("SPLIT must be 6, 8 or 10"));
        }
        if sid_bits > 32 || sid_bits < split {
            return Err(StreamTableError::Geometry(
                "StreamID bits must be in SPLIT..=32",
            ));
        }
        if (sid_bits - split) as u32 + 3 > MAX_FRAME_LOG2 {
            return Err(StreamTableError::Geometry(
                "level-1 table larger than one frame",
            ));
        }
        Ok(Self::TwoLevel { sid_bits, split })
    }

    /// What the driver uses by default: 2-level with 256-STE level-2 tables (one per PCI bus)
    /// when the SMMU supports it and has more StreamID bits than that, else linear over all
    /// StreamID bits.
    pub fn for_features(f: &Features) -> Result<Self, StreamTableError> {
        const SPLIT: u8 = 8;
        match f.stream_table {
            StreamTableLevels::TwoLevel if f.sid_bits > SPLIT => Self::two_level(f.sid_bits, SPLIT),
            StreamTableLevels::Linear | StreamTableLevels::TwoLevel => Self::linear(f.sid_bits),
            StreamTableLevels::Reserved(_) => Err(StreamTableError::Geometry("reserved ST_LEVEL")),
        }
    }

    /// Checks the geometry against the SMMU: LOG2SIZE ≤ IDR1.SIDSIZE, and 2-level tables only
    /// with IDR0.ST_LEVEL = 2-level.
    pub fn check_features(&self, f: &Features) -> Result<(), StreamTableError> {
        if self.log2_size() > f.sid_bits {
            return Err(StreamTableError::Geometry(
                "more StreamID bits than IDR1.SIDSIZE",
            ));
        }
        if matches!(self, Self::TwoLevel { .. }) && f.stream_table != StreamTableLevels::TwoLevel {
            return Err(StreamTableError::Geometry(
                "2-level stream tables not supported",
            ));
        }
        Ok(())
    }

    /// The table's shape, shared with CD tables.
    pub(crate) const fn shape(&self) -> TableShape {
        match *self {
            Self::Linear { log2_entries } => TableShape {
                bits: log2_entries,
                leaf_bits: None,
            },
            Self::TwoLevel { sid_bits, split } => TableShape {
                bits: sid_bits,
                leaf_bits: Some(split),
            },
        }
    }

    /// STRTAB_BASE_CFG.LOG2SIZE.
    pub const fn log2_size(&self) -> u8 {
        match *self {
            Self::Linear { log2_entries } => log2_entries,
            Self::TwoLevel { sid_bits, .. } => sid_bits,
        }
    }

    /// The first StreamID the table does not cover.
    pub const fn sid_limit(&self) -> u64 {
        1 << self.log2_size()
    }

    /// The SMMU_STRTAB_BASE_CFG value for this geometry.
    pub fn base_cfg(&self) -> u32 {
        let value: FieldValue<u32, STRTAB_BASE_CFG::Register> = match *self {
            Self::Linear { log2_entries } => {
                STRTAB_BASE_CFG::LOG2SIZE.val(u32::from(log2_entries))
                    + STRTAB_BASE_CFG::FMT::Linear
            }
            Self::TwoLevel { sid_bits, split } => {
                STRTAB_BASE_CFG::LOG2SIZE.val(u32::from(sid_bits))
                    + STRTAB_BASE_CFG::SPLIT.val(u32::from(split))
                    + STRTAB_BASE_CFG::FMT::TwoLevel
            }
        };
        value.value
    }

    /// Level-2 table size: `2^split` STEs (2-level only).
    pub const fn level2_entries(&self) -> u64 {
        self.shape().leaf_entries()
    }

    /// Where the STE of `sid` lives.
    pub const fn locate(&self, sid: u32) -> Result<SteLocation, StreamTableError> {
        match self.shape().locate(sid) {
            None => Err(StreamTableError::StreamIdOutOfRange {
                sid,
                limit: self.sid_limit(),
            }),
            Some((None, index)) => Ok(SteLocation::Linear { index }),
            Some((Some(l1_index), l2_index)) => Ok(SteLocation::TwoLevel { l1_index, l2_index }),
        }
    }
}

/// A level-1 stream table descriptor (5.3): Span \[4:0\], L2Ptr \[51:6\].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L1Descriptor {
    /// The level-2 table.
    pub l2: PhysAddr,
    /// log2 of its STEs plus one (0 = invalid, no level-2 table).
    pub span: u8,
}

impl L1Descriptor {
    /// The descriptor of a level-2 table of `2^split` STEs at `l2`.
    pub fn new(l2: PhysAddr, split: u8) -> Result<Self, EntryError> {
        check_addr("L2Ptr", l2.as_u64(), (STE_BYTES as u64) << split)?;
        Ok(Self {
            l2,
            span: split + 1,
        })
    }

    /// Its 64-bit encoding.
    pub const fn encode(&self) -> u64 {
        place(self.span as u64, L1STD_SPAN.0, L1STD_SPAN.1) | (self.l2.as_u64() & m(L1STD_L2PTR))
    }

    /// Decodes a descriptor; `None` when Span is 0 (no level-2 table).
    pub const fn decode(raw: u64) -> Option<Self> {
        let span = field(raw, L1STD_SPAN.0, L1STD_SPAN.1) as u8;
        if span == 0 {
            None
        } else {
            Some(Self {
                l2: PhysAddr::new(raw & m(L1STD_L2PTR)),
                span,
            })
        }
    }
}

/// The stream table of one SMMU in HAL frames: the linear table, or the level-1 table and the
/// level-2 tables created by [`ensure_level2`](Self::ensure_level2).
///
/// Updates take `&mut self`: the embedder serialises attach/detach per SMMU. Frames are not
/// freed on drop (the SMMU may still walk them); [`StreamTable::free`] returns them once it
/// cannot.
pub struct StreamTable<H: Hal> {
    table: TwoLevelTable<H>,
    geometry: StreamTableGeometry,
}

impl<H: Hal> fmt::Debug for StreamTable<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTable")
            .field("geometry", &self.geometry)
            .field("base", &self.table.base())
            .finish_non_exhaustive()
    }
}

/// Level-1 stream table descriptors ([`L1Descriptor`]).
static STE_LEVEL1: Level1Format = Level1Format {
    encode: |l2, split| Ok(L1Descriptor::new(l2, split)?.encode()),
    decode: |raw| L1Descriptor::decode(raw).map(|d| d.l2),
};

impl From<TableError> for StreamTableError {
    fn from(e: TableError) -> Self {
        match e {
            TableError::Geometry(why) => Self::Geometry(why),
            TableError::OutOfRange { index, limit } => {
                Self::StreamIdOutOfRange { sid: index, limit }
            }
            TableError::NoLevel2(sid) => Self::NoLevel2(sid),
            TableError::OutOfMemory => Self::OutOfMemory,
            TableError::Entry(e) => Self::Entry(e),
            TableError::Invalidation(e) => Self::Invalidation(e),
        }
    }
}

impl<H: Hal> StreamTable<H> {
    /// Allocates the table. Every STE of a linear table starts as abort (V = 1, Config =
    /// abort), so unconfigured streams are blocked; in a 2-level table every level-1
    /// descriptor starts invalid, so their streams are blocked too (with C_BAD_STREAMID).
    /// `coherent` is IDR0.COHACC: without it every store is cleaned to the point of coherency.
    pub fn new(
        hal: H,
        geometry: StreamTableGeometry,
        coherent: bool,
    ) -> Result<Self, StreamTableError> {
        let abort = StreamTableEntry::abort().encode()?;
        let table = TwoLevelTable::new(hal, geometry.shape(), coherent, &STE_LEVEL1, abort)?;
        Ok(Self { table, geometry })
    }

    /// The geometry.
    pub fn geometry(&self) -> StreamTableGeometry {
        self.geometry
    }

    /// The SMMU_STRTAB_BASE value: the table's address, with the read-allocate hint.
    pub fn base_register(&self) -> u64 {
        (STRTAB_BASE::ADDR.val(self.table.base().as_u64() >> 6) + STRTAB_BASE::RA::SET).value
    }

    /// The SMMU_STRTAB_BASE_CFG value.
    pub fn base_cfg_register(&self) -> u32 {
        self.geometry.base_cfg()
    }

    /// Makes sure a level-2 table covers `sid` (2-level tables; a no-op for linear ones).
    /// A new level-2 table has every STE at abort and is fully written before the level-1
    /// descriptor that makes it reachable. Returns whether one was installed; the caller then
    /// issues CMD_CFGI_STE (leaf = false) + CMD_SYNC for `sid` before relying on the SMMU to
    /// have dropped a cached invalid descriptor (invalid descriptors are not normally cached,
    /// so QEMU and Linux do without).
    pub fn ensure_level2(&mut self, sid: u32) -> Result<bool, StreamTableError> {
        Ok(self.table.ensure_level2(sid)?)
    }

    /// The current eight words of the STE of `sid`.
    pub fn entry(&self, sid: u32) -> Result<EntryWords, StreamTableError> {
        Ok(self.table.entry(sid)?)
    }

    /// Installs `ste` for `sid` on a live SMMU by the [`plan_ste_update`] stores, calling
    /// `invalidate` with the CMD_CFGI_STE to issue (followed by a CMD_SYNC, and waited for)
    /// after each step. Where no level-2 table covers `sid` yet, one is created with `ste` in
    /// place and every other STE at abort: see
    /// [`install_with_neighbours`](Self::install_with_neighbours). Returns the kind of update
    /// that was made.
    pub fn install(
        &mut self,
        sid: u32,
        ste: &StreamTableEntry,
        invalidate: impl FnMut(Command) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, StreamTableError> {
        self.install_with_neighbours(sid, ste, &StreamTableEntry::abort(), invalidate)
    }

    /// [`install`](Self::install), where a level-2 table created for `sid` has every other STE
    /// at `neighbours` (a unit's blocking STE, so their streams fault in the reporting way).
    /// The new table is written whole before its level-1 descriptor: while the descriptor was
    /// invalid (Span = 0, IHI 0070 5.3) it named no level-2 table, so the SMMU cannot have
    /// fetched or cached any STE of the new one (QEMU answers such a StreamID with
    /// C_BAD_STREAMID and caches nothing) and none needs a CMD_CFGI_STE. Only the descriptor
    /// does: CMD_CFGI_STE with Leaf = 0 (4.3.1: the STE and the level-1 descriptor locating
    /// it), in case the SMMU kept the invalid one. The cost is one CMD_CFGI_STE and one
    /// CMD_SYNC ([`UpdateKind::NewLevel2`]) instead of an update plan per STE.
    pub fn install_with_neighbours(
        &mut self,
        sid: u32,
        ste: &StreamTableEntry,
        neighbours: &StreamTableEntry,
        mut invalidate: impl FnMut(Command) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, StreamTableError> {
        let target = ste.encode()?;
        let neighbours = neighbours.encode()?;
        let kind =
            self.table
                .write_with_neighbours(sid, &target, &neighbours, ste_used_bits, |leaf| {
                    invalidate(Command::CfgiSte { sid, leaf })
                })?;
        Ok(kind)
    }

    /// Returns every frame of the table to the HAL.
    ///
    /// # Safety
    /// The SMMU must no longer use the table: SMMU_CR0.SMMUEN is 0 (acknowledged), or
    /// SMMU_STRTAB_BASE points elsewhere and a CMD_CFGI_ALL + CMD_SYNC has completed.
    pub unsafe fn free(self) {
        // SAFETY: per this function's contract.
        unsafe { self.table.free() }
    }
}

#[cfg(test)]
pub(crate) mod tests;
