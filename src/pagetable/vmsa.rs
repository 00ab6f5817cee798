//! Arm VMSAv8-64 translation tables (Arm DDI 0487, D8.3 "Translation table descriptor
//! formats") as the SMMUv3 walks them: stage 1 (context descriptor `TTB0`) and stage 2 (STE
//! `S2TTB`), with 4K, 16K and 64K granules.
//!
//! Geometry: the input size (`T0SZ` = 64 - input bits) comes from the domain's aperture and the
//! SMMU's limits (`IDR5.VAX`, `IAS`), the output size from `IDR5.OAS`. The start level is the
//! shallowest one that covers the input; at stage 2 a first level resolving at most 4 bits is
//! replaced by up to 16 concatenated tables one level down (D8.2.2), which also satisfies the
//! rules that forbid some start levels for small physical address sizes (R_DXBSH, R_SRKBC).
//! 52-bit output addresses are supported with the 64K granule (FEAT_LPA: `OA[51:48]` in bits
//! 15:12); FEAT_LPA2 is not.

use super::format::Format;
use super::{Error, MemType, Prot};
use crate::hal::FrameSize;

/// Valid (bit 0).
pub const VALID: u64 = 1 << 0;
/// Table descriptor (levels above the last) or page descriptor (last level) (bit 1).
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// Stage 1 `AttrIndx[2:0]`, bits 4:2: index into MAIR.
pub const ATTR_INDX_SHIFT: u32 = 2;
/// Stage 2 `MemAttr[3:0]`, bits 5:2.
pub const MEMATTR_SHIFT: u32 = 2;
/// Stage 1 `AP[1]` (bit 6): unprivileged accesses allowed. Stage 2 `S2AP[0]`: read.
pub const AP1_S2AP_R: u64 = 1 << 6;
/// Stage 1 `AP[2]` (bit 7): read-only. Stage 2 `S2AP[1]`: write.
pub const AP2_S2AP_W: u64 = 1 << 7;
/// Shareability `SH[1:0]`, bits 9:8.
pub const SH_SHIFT: u32 = 8;
/// Inner shareable.
pub const SH_INNER: u64 = 0b11;
/// Outer shareable.
pub const SH_OUTER: u64 = 0b10;
/// Access flag (bit 10): preset, so no access-flag fault and no hardware update.
pub const AF: u64 = 1 << 10;
/// Not global (bit 11, stage 1): the entry is tagged with the ASID.
pub const NG: u64 = 1 << 11;
/// Stage 1 PXN (bit 53).
pub const PXN: u64 = 1 << 53;
/// Stage 1 UXN / stage 2 `XN[1]` (bit 54): not executable.
pub const UXN_XN: u64 = 1 << 54;
/// Bits 58:56 are ignored in table descriptors at both stages: "entry cleaned" mark.
const SW_SYNCED: u64 = 1 << 56;

/// The `MAIR` value the stage-1 attribute indices assume: index 0 = Normal write-back
/// read/write-allocate (0xff), 1 = Normal non-cacheable (0x44), 2 = Device-nGnRE (0x04).
/// The back-end programs it into the context descriptor.
pub const MAIR: u64 = 0x0000_0000_0004_44ff;
const ATTR_IDX_WB: u64 = 0;
const ATTR_IDX_NC: u64 = 1;
const ATTR_IDX_DEV: u64 = 2;

/// Stage 2 MemAttr values (without FWB): Normal outer/inner write-back, Normal non-cacheable,
/// Device-nGnRE.
const MEMATTR_WB: u64 = 0b1111;
const MEMATTR_NC: u64 = 0b0101;
const MEMATTR_DEV: u64 = 0b0001;

/// Translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB pages, 512 entries per table (always supported by SMMUv3 stage 1).
    Size4K,
    /// 16 KiB pages, 2048 entries per table (`IDR5.GRAN16K`).
    Size16K,
    /// 64 KiB pages, 8192 entries per table (`IDR5.GRAN64K`).
    Size64K,
}

impl Granule {
    /// log2 of the granule.
    pub const fn shift(self) -> u32 {
        match self {
            Granule::Size4K => 12,
            Granule::Size16K => 14,
            Granule::Size64K => 16,
        }
    }

    /// The `TG0` / `S2TG` field encoding (CD, STE, TCR, VTCR): 0 = 4K, 1 = 64K, 2 = 16K.
    pub const fn tg0(self) -> u8 {
        match self {
            Granule::Size4K => 0,
            Granule::Size64K => 1,
            Granule::Size16K => 2,
        }
    }
}

/// Granule and address sizes of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmsaConfig {
    /// The granule; must be one the SMMU reports.
    pub granule: Granule,
    /// Input address bits (IOVA for stage 1, IPA for stage 2): 25..=48, or up to 52 with the
    /// 64K granule.
    pub input_bits: u32,
    /// Output address bits, one of the `PS` sizes: 32, 36, 40, 42, 44, 48, or 52 with 64K.
    pub output_bits: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    granule: Granule,
    levels: u8,
    ia: u8,
    oa: u8,
    /// log2 of the number of concatenated tables at the start level (stage 2 only).
    concat_log2: u8,
    /// The granule's shift and the output-address field, computed once: the engine asks for
    /// them at every level of every walk.
    shift: u8,
    addr_mask: u64,
    /// Bits 51:48 with FEAT_LPA (OA\[51:48\] kept in entry bits 15:12, a shift by 36 away),
    /// else 0: applied without a branch.
    lpa_mask: u64,
}

impl Geometry {
    fn new(cfg: VmsaConfig, stage2: bool) -> Result<Self, Error> {
        let g = cfg.granule.shift();
        let big = cfg.granule == Granule::Size64K;
        let (ia, oa) = (cfg.input_bits, cfg.output_bits);
        let oa_ok = matches!(oa, 32 | 36 | 40 | 42 | 44 | 48) || (big && oa == 52);
        if !oa_ok {
            return Err(Error::UnsupportedConfig);
        }
        if ia < 25 || ia > if big { 52 } else { 48 } {
            return Err(Error::UnsupportedConfig);
        }
        let stride = g - 3;
        let mut levels = (ia - g).div_ceil(stride);
        let mut concat_log2 = 0;
        if stage2 && levels > 1 {
            let top_bits = ia - (g + stride * (levels - 1));
            // Fold a thin first level into concatenated tables, unless that leaves a 4K table
            // starting at level 3, which needs FEAT_TTST.
            if top_bits <= 4 && !(g == 12 && levels == 2) {
                levels -= 1;
                concat_log2 = top_bits;
            }
        }
        if stage2 {
            // Shallowest start levels the architecture allows for the PA size (D8.2, R_SRKBC,
            // R_DXBSH); with concatenation these are reached only when really needed.
            let allowed = match (g, 4 - levels) {
                (12, 0) => oa >= 44,
                (12, 3) => false,
                (14, 0) => false,
                (14, 1) => oa >= 42,
                (16, 1) => oa >= 44,
                _ => true,
            };
            if !allowed {
                return Err(Error::UnsupportedConfig);
            }
        }
        if levels == 0 || levels > 4 {
            return Err(Error::UnsupportedConfig);
        }
        Ok(Self {
            granule: cfg.granule,
            levels: levels as u8,
            ia: ia as u8,
            oa: oa as u8,
            concat_log2: concat_log2 as u8,
            shift: g as u8,
            addr_mask: addr_field(g),
            lpa_mask: if oa == 52 { 0xf << 48 } else { 0 },
        })
    }

    #[inline(always)]
    fn g(&self) -> u32 {
        u32::from(self.shift)
    }

    #[inline(always)]
    fn encode_addr(&self, pa: u64) -> u64 {
        // FEAT_LPA, 64K granule: OA[51:48] live in bits 15:12.
        (pa & self.addr_mask) | ((pa & self.lpa_mask) >> 36)
    }

    #[inline(always)]
    fn decode_addr(&self, entry: u64) -> u64 {
        // Bits 15:12 moved up to 51:48, everything else the shift brings there masked off.
        (entry & self.addr_mask) | ((entry << 36) & self.lpa_mask)
    }

    #[inline(always)]
    fn leaf_ok(&self, level: u32) -> bool {
        // Blocks: 2 MiB and 1 GiB (4K), 32 MiB (16K), 512 MiB (64K).
        match level {
            0 | 1 => true,
            2 => self.granule == Granule::Size4K,
            _ => false,
        }
    }

    fn root_frame(&self) -> FrameSize {
        match FrameSize::from_log2(self.g() + u32::from(self.concat_log2)) {
            Some(s) => s,
            None => FrameSize::SIZE_64K,
        }
    }

    /// PS / IPS / S2PS encoding of the output size.
    fn ps(&self) -> u8 {
        match self.oa {
            32 => 0,
            36 => 1,
            40 => 2,
            42 => 3,
            44 => 4,
            48 => 5,
            _ => 6,
        }
    }

    #[inline(always)]
    fn table_entry(&self, table_pa: u64) -> u64 {
        VALID | TABLE_OR_PAGE | self.encode_addr(table_pa)
    }

    #[inline(always)]
    fn base_bits(&self, level: u32) -> u64 {
        if level == 0 {
            VALID | TABLE_OR_PAGE | AF
        } else {
            VALID | AF
        }
    }
}

/// The output-address field of a descriptor without FEAT_LPA: bits 47 down to the granule's
/// shift `g`.
const fn addr_field(g: u32) -> u64 {
    ((1u64 << 48) - 1) & !((1u64 << g) - 1)
}

fn shareability(mem: MemType) -> u64 {
    // Cacheable memory is shared with the CPUs' inner domain; the rest outer (ignored for
    // Device, which is always outer shareable).
    let sh = if mem == MemType::Cacheable {
        SH_INNER
    } else {
        SH_OUTER
    };
    sh << SH_SHIFT
}

macro_rules! vmsa_common {
    () => {
        /// Levels walked, and the Arm start level (`4 - levels`: 0..=3).
        pub fn start_level(&self) -> u32 {
            4 - u32::from(self.geo.levels)
        }

        /// `T0SZ` / `S2T0SZ`: 64 - input bits.
        pub fn t0sz(&self) -> u8 {
            64 - self.geo.ia
        }

        /// The granule (`TG0` / `S2TG` via [`Granule::tg0`]).
        pub fn granule(&self) -> Granule {
            self.geo.granule
        }

        /// `IPS` / `S2PS` encoding of the output size.
        pub fn ps(&self) -> u8 {
            self.geo.ps()
        }

        /// Number of tables concatenated at the start level (1 unless stage 2 folded a level).
        pub fn concatenated_tables(&self) -> u32 {
            1 << self.geo.concat_log2
        }
    };
}

macro_rules! vmsa_geometry {
    () => {
        const SW_SYNCED: u64 = SW_SYNCED;

        #[inline(always)]
        fn granule_shift(&self) -> u32 {
            self.geo.g()
        }

        #[inline(always)]
        fn levels(&self) -> u32 {
            u32::from(self.geo.levels)
        }

        #[inline(always)]
        fn ia_bits(&self) -> u32 {
            u32::from(self.geo.ia)
        }

        #[inline(always)]
        fn oa_bits(&self) -> u32 {
            u32::from(self.geo.oa)
        }

        #[inline(always)]
        fn root_frame(&self) -> FrameSize {
            self.geo.root_frame()
        }

        #[inline(always)]
        fn leaf_ok(&self, level: u32) -> bool {
            self.geo.leaf_ok(level)
        }

        #[inline(always)]
        fn encode_addr(&self, pa: u64) -> u64 {
            self.geo.encode_addr(pa)
        }

        #[inline(always)]
        fn linear_addr(&self) -> bool {
            // Without FEAT_LPA the address is its own field, bits 47:granule.
            self.geo.lpa_mask == 0
        }

        #[inline(always)]
        fn decode_addr(&self, entry: u64) -> u64 {
            self.geo.decode_addr(entry)
        }

        #[inline(always)]
        fn decode_addr_in<const G: u32>(&self, entry: u64) -> u64 {
            // 4K and 16K granules have no FEAT_LPA field (`Geometry::new` refuses 52-bit
            // output for them): the address is bits 47:G, a constant mask, which takes the
            // shift and OR of the LPA bits off every level's load-to-load chain of a walk.
            if G == 12 || G == 14 {
                debug_assert_eq!(G, self.geo.g());
                entry & addr_field(G)
            } else {
                self.geo.decode_addr(entry)
            }
        }

        #[inline(always)]
        fn table_entry(&self, table_pa: u64) -> u64 {
            self.geo.table_entry(table_pa)
        }

        #[inline(always)]
        fn is_table(&self, entry: u64, level: u32) -> bool {
            // At the last level bit 1 means "page"; above it, "table" (bit 0 is set in every
            // entry the engine writes).
            level > 0 && entry & TABLE_OR_PAGE != 0
        }

        #[inline(always)]
        fn is_present(&self, entry: u64, level: u32) -> bool {
            // D5.3: bit 0 marks a valid descriptor; at the last level `0b01` is reserved and
            // walks as invalid.
            entry & VALID != 0 && (level > 0 || entry & TABLE_OR_PAGE != 0)
        }
    };
}

/// Stage 1: VA → PA for a context descriptor, ASID-tagged (nG), permissions in AP, memory type
/// through [`MAIR`], execute-never in PXN/UXN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmsaStage1 {
    geo: Geometry,
}

impl VmsaStage1 {
    /// Checks the configuration and picks the start level.
    pub fn new(cfg: VmsaConfig) -> Result<Self, Error> {
        Ok(Self {
            geo: Geometry::new(cfg, false)?,
        })
    }

    /// The `MAIR` value to program with this table.
    pub const fn mair(&self) -> u64 {
        MAIR
    }

    vmsa_common!();
}

// SAFETY: table descriptors are VALID|TABLE|address (non-zero, bit 1 set) and decode back
// through the same address fields, which exclude SW_SYNCED and the AF/DBM bits; leaves carry
// VALID, with bit 1 clear above the last level; the geometry is fixed at construction.
unsafe impl Format for VmsaStage1 {
    vmsa_geometry!();

    fn table_limits(&self, entry: u64) -> (bool, bool) {
        // D5.3.1 APTable[1] (bit 62): no write access below this table.
        (true, entry & (1 << 62) == 0)
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        match (prot.read, prot.write) {
            (false, false) => Err(Error::NoAccess),
            // AP has no write-only encoding.
            (false, true) => Err(Error::UnsupportedPermissions),
            _ => Ok(()),
        }
    }

    #[inline(always)]
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64 {
        // AP[1] = 1: usable by unprivileged transactions, which is what DMA is by default.
        let mut bits = self.geo.base_bits(level) | NG | AP1_S2AP_R;
        if !prot.write {
            bits |= AP2_S2AP_W;
        }
        let idx = match prot.mem {
            MemType::Cacheable => ATTR_IDX_WB,
            MemType::NonCacheable => ATTR_IDX_NC,
            MemType::Device => ATTR_IDX_DEV,
        };
        bits |= idx << ATTR_INDX_SHIFT | shareability(prot.mem);
        if !prot.exec {
            bits |= PXN | UXN_XN;
        }
        bits
    }

    fn decode_prot(&self, entry: u64, _level: u32) -> Prot {
        Prot {
            read: true,
            write: entry & AP2_S2AP_W == 0,
            exec: entry & UXN_XN == 0,
            mem: match (entry >> ATTR_INDX_SHIFT) & 0b111 {
                ATTR_IDX_WB => MemType::Cacheable,
                ATTR_IDX_NC => MemType::NonCacheable,
                _ => MemType::Device,
            },
        }
    }
}

/// Stage 2: IPA → PA for an STE (a nest parent's guest physical space), permissions in S2AP,
/// memory type in MemAttr, execute-never in XN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmsaStage2 {
    geo: Geometry,
}

impl VmsaStage2 {
    /// Checks the configuration and picks the start level (concatenating where needed).
    pub fn new(cfg: VmsaConfig) -> Result<Self, Error> {
        Ok(Self {
            geo: Geometry::new(cfg, true)?,
        })
    }

    /// `S2SL0` / `VTCR.SL0` encoding of the start level: 4K: level 2 = 0, 1 = 1, 0 = 2;
    /// 16K and 64K: level 3 = 0, 2 = 1, 1 = 2.
    pub fn sl0(&self) -> u8 {
        let start = self.start_level() as u8;
        match self.geo.granule {
            Granule::Size4K => 2 - start,
            Granule::Size16K | Granule::Size64K => 3 - start,
        }
    }

    vmsa_common!();
}

// SAFETY: as for stage 1: the descriptor layout of tables and of the bits the engine relies on
// (valid, bit 1, address) is the same at both stages.
unsafe impl Format for VmsaStage2 {
    vmsa_geometry!();

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        if !prot.read && !prot.write {
            return Err(Error::NoAccess);
        }
        Ok(())
    }

    #[inline(always)]
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64 {
        let mut bits = self.geo.base_bits(level);
        if prot.read {
            bits |= AP1_S2AP_R;
        }
        if prot.write {
            bits |= AP2_S2AP_W;
        }
        let attr = match prot.mem {
            MemType::Cacheable => MEMATTR_WB,
            MemType::NonCacheable => MEMATTR_NC,
            MemType::Device => MEMATTR_DEV,
        };
        bits |= attr << MEMATTR_SHIFT | shareability(prot.mem);
        if !prot.exec {
            // XN[1:0] = 0b10: not executable at any exception level (bit 53 is only
            // meaningful with FEAT_XNX).
            bits |= UXN_XN;
        }
        bits
    }

    fn decode_prot(&self, entry: u64, _level: u32) -> Prot {
        Prot {
            read: entry & AP1_S2AP_R != 0,
            write: entry & AP2_S2AP_W != 0,
            exec: entry & UXN_XN == 0,
            mem: match (entry >> MEMATTR_SHIFT) & 0b1111 {
                MEMATTR_WB => MemType::Cacheable,
                MEMATTR_NC => MemType::NonCacheable,
                _ => MemType::Device,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(granule: Granule, input_bits: u32, output_bits: u32) -> VmsaConfig {
        VmsaConfig {
            granule,
            input_bits,
            output_bits,
        }
    }

    #[test]
    fn stage1_geometry() {
        let s = VmsaStage1::new(cfg(Granule::Size4K, 48, 48)).unwrap();
        assert_eq!(
            (s.levels(), s.start_level(), s.t0sz(), s.ps()),
            (4, 0, 16, 5)
        );
        let s = VmsaStage1::new(cfg(Granule::Size4K, 39, 40)).unwrap();
        assert_eq!((s.levels(), s.start_level(), s.ps()), (3, 1, 2));
        // 16K, 48 bits: a 2-entry level 0 at stage 1.
        let s = VmsaStage1::new(cfg(Granule::Size16K, 48, 48)).unwrap();
        assert_eq!((s.levels(), s.start_level()), (4, 0));
        let s = VmsaStage1::new(cfg(Granule::Size64K, 48, 48)).unwrap();
        assert_eq!((s.levels(), s.start_level(), s.granule().tg0()), (3, 1, 1));
        assert_eq!(
            VmsaStage1::new(cfg(Granule::Size4K, 48, 52)),
            Err(Error::UnsupportedConfig)
        );
        assert_eq!(
            VmsaStage1::new(cfg(Granule::Size4K, 49, 48)),
            Err(Error::UnsupportedConfig)
        );
    }

    #[test]
    fn stage2_concatenation_follows_the_architecture() {
        // 4K, 40-bit IPA and PA: level 0 would need PA >= 44, so 2 tables at level 1 (SL0 = 1).
        let s = VmsaStage2::new(cfg(Granule::Size4K, 40, 40)).unwrap();
        assert_eq!(
            (s.start_level(), s.concatenated_tables(), s.sl0()),
            (1, 2, 1)
        );
        assert_eq!(s.root_frame(), FrameSize::from_log2(13).unwrap());
        // 4K, 42 bits: 8 tables at level 1.
        let s = VmsaStage2::new(cfg(Granule::Size4K, 42, 42)).unwrap();
        assert_eq!((s.start_level(), s.concatenated_tables()), (1, 8));
        // 4K, 48 bits: level 0, no concatenation, SL0 = 2.
        let s = VmsaStage2::new(cfg(Granule::Size4K, 48, 48)).unwrap();
        assert_eq!(
            (s.start_level(), s.concatenated_tables(), s.sl0()),
            (0, 1, 2)
        );
        // 16K, 48 bits (R_DXBSH): 2 tables at level 1, SL0 = 2.
        let s = VmsaStage2::new(cfg(Granule::Size16K, 48, 48)).unwrap();
        assert_eq!(
            (s.start_level(), s.concatenated_tables(), s.sl0()),
            (1, 2, 2)
        );
        // 16K, 40 bits: 16 tables at level 2.
        let s = VmsaStage2::new(cfg(Granule::Size16K, 40, 40)).unwrap();
        assert_eq!(
            (s.start_level(), s.concatenated_tables(), s.sl0()),
            (2, 16, 1)
        );
        assert_eq!(s.root_frame(), FrameSize::from_log2(18).unwrap());
        // 64K, 48 bits: level 1 (64 entries), SL0 = 2.
        let s = VmsaStage2::new(cfg(Granule::Size64K, 48, 48)).unwrap();
        assert_eq!(
            (s.start_level(), s.concatenated_tables(), s.sl0()),
            (1, 1, 2)
        );
        // 4K, 44-bit IPA but 40-bit PA: level 0 not allowed, too wide to concatenate.
        assert_eq!(
            VmsaStage2::new(cfg(Granule::Size4K, 44, 40)),
            Err(Error::UnsupportedConfig)
        );
    }

    #[test]
    fn stage1_descriptors_match_the_arm_arm() {
        let s = VmsaStage1::new(cfg(Granule::Size4K, 48, 48)).unwrap();
        // Page, RW, Normal WB (AttrIndx 0), inner shareable, AF, nG, AP[1], UXN|PXN:
        // 0x0060_0000_1234_5f43.
        assert_eq!(
            s.leaf_bits(0, Prot::READ_WRITE) | s.encode_addr(0x1234_5000),
            0x0060_0000_1234_5f43
        );
        // 2 MiB block, read-only, executable, Device (AttrIndx 2), outer shareable.
        assert_eq!(
            s.leaf_bits(1, Prot::READ.with_exec().with_mem(MemType::Device))
                | s.encode_addr(0x4060_0000),
            0x0000_0000_4060_0ec9
        );
        // 1 GiB block, RW, non-cacheable (AttrIndx 1).
        assert_eq!(
            s.leaf_bits(2, Prot::READ_WRITE.with_mem(MemType::NonCacheable))
                | s.encode_addr(0x80_4000_0000),
            0x0060_0080_4000_0e45
        );
        let t = s.table_entry(0x8_0000);
        assert_eq!(t, 0x8_0003);
        assert!(s.is_table(t, 1) && !s.is_table(t, 0));
        assert_eq!(s.decode_addr(t | SW_SYNCED | (1 << 51)), 0x8_0000);
        assert_eq!(
            s.check_prot(Prot::WRITE),
            Err(Error::UnsupportedPermissions)
        );
        assert_eq!(s.mair() & 0xff, 0xff);
    }

    #[test]
    fn stage2_descriptors_match_the_arm_arm() {
        let s = VmsaStage2::new(cfg(Granule::Size4K, 48, 48)).unwrap();
        // Page, S2AP = RW, MemAttr = 0b1111, inner shareable, AF, XN: 0x0040_0000_1234_57ff.
        assert_eq!(
            s.leaf_bits(0, Prot::READ_WRITE) | s.encode_addr(0x1234_5000),
            0x0040_0000_1234_57ff
        );
        // 2 MiB block, write-only, non-cacheable (0b0101), outer shareable, executable.
        assert_eq!(
            s.leaf_bits(1, Prot::WRITE.with_exec().with_mem(MemType::NonCacheable))
                | s.encode_addr(0x20_0000),
            0x0000_0000_0020_0695
        );
        for p in [
            Prot::READ,
            Prot::WRITE,
            Prot::READ_WRITE.with_exec(),
            Prot::READ.with_mem(MemType::Device),
        ] {
            assert_eq!(s.decode_prot(s.leaf_bits(0, p), 0), p);
        }
    }

    #[test]
    fn sixty_four_k_granule_with_52_bit_output() {
        let s = VmsaStage2::new(cfg(Granule::Size64K, 52, 52)).unwrap();
        assert_eq!((s.levels(), s.start_level(), s.ps()), (3, 1, 6));
        let pa = 0x000a_1234_5678_0000;
        let e = s.encode_addr(pa);
        // OA[51:48] = 0xa in bits 15:12, OA[47:16] in place.
        assert_eq!(e, 0x0000_1234_5678_a000);
        assert_eq!(s.decode_addr(e | 0x403), pa);
        // 64K: blocks at level 1 (512 MiB) only.
        assert!(s.leaf_ok(1) && !s.leaf_ok(2));
    }

    #[test]
    fn linear_address_fields_and_constant_granule_masks_agree_with_the_encoding() {
        // What the engine's fast paths assume of a format (the `Format` contract): the address
        // field steps with the address where `linear_addr` says so, and the per-granule decode
        // is the general one.
        for granule in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
            let s = VmsaStage1::new(cfg(granule, 48, 48)).unwrap();
            assert!(s.linear_addr());
            let span = 1u64 << (granule.shift() + granule.shift() - 3);
            let bits = s.leaf_bits(1, Prot::READ_WRITE);
            let first = (1u64 << 47) - 4 * span;
            for k in 0..4 {
                assert_eq!(
                    bits | s.encode_addr(first + k * span),
                    (bits | s.encode_addr(first)) + k * span
                );
            }
            let e = s.table_entry(first) | SW_SYNCED | AF;
            let by_granule = match granule.shift() {
                12 => s.decode_addr_in::<12>(e),
                14 => s.decode_addr_in::<14>(e),
                _ => s.decode_addr_in::<16>(e),
            };
            assert_eq!((by_granule, s.decode_addr_in::<0>(e)), (first, first));
        }
        // FEAT_LPA puts OA[51:48] in bits 15:12: adding to the field would carry wrongly.
        let lpa = VmsaStage2::new(cfg(Granule::Size64K, 52, 52)).unwrap();
        assert!(!lpa.linear_addr());
        let pa = 0x000a_1234_5678_0000;
        assert_eq!(lpa.decode_addr_in::<16>(lpa.encode_addr(pa)), pa);
    }

    #[test]
    fn stage1_permissions_round_trip() {
        let s = VmsaStage1::new(cfg(Granule::Size16K, 47, 44)).unwrap();
        for p in [
            Prot::READ,
            Prot::READ_WRITE.with_exec(),
            Prot::READ.with_mem(MemType::NonCacheable),
            Prot::READ_WRITE.with_mem(MemType::Device),
        ] {
            assert_eq!(s.decode_prot(s.leaf_bits(1, p), 1), p);
        }
    }
}
