//! VT-d first-stage tables (VT-d spec 9.7 "First-Stage Paging Entries"): the x86-64 4- and
//! 5-level paging format (Intel SDM vol. 3, 4.5), used by scalable-mode PASID entries with
//! `PGTT` = first-stage and nested.
//!
//! Bits: P, R/W, U/S, PWT/PCD, A, D, PS (2 MiB always, 1 GiB per `CAP.FS1GP`), XD. IOVAs must
//! be canonical, so a table covers the lower half only: 47 bits with 4 levels, 56 with 5.

use super::format::Format;
use super::{Error, MemType, Prot};
use crate::hal::FrameSize;

/// Present (bit 0).
pub const P: u64 = 1 << 0;
/// Writable (bit 1).
pub const RW: u64 = 1 << 1;
/// User: accessible to requests without the privileged-mode attribute (bit 2).
pub const US: u64 = 1 << 2;
/// Page-level write-through (bit 3).
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable (bit 4).
pub const PCD: u64 = 1 << 4;
/// Accessed (bit 5).
pub const A: u64 = 1 << 5;
/// Dirty (bit 6, leaves).
pub const D: u64 = 1 << 6;
/// Page size: this PDE / PDPTE maps a 2 MiB / 1 GiB page (bit 7).
pub const PS: u64 = 1 << 7;
/// Execute disable (bit 63).
pub const XD: u64 = 1 << 63;
/// Address field, bits 51:12.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Ignored in every entry (bits 62:52 are ignored by VT-d first stage): "entry cleaned" mark.
const SW_SYNCED: u64 = 1 << 52;

/// What the unit reports and the domain wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86FirstStageConfig {
    /// 5-level paging (57-bit canonical addresses); needs `CAP.FS5LP`.
    pub five_level: bool,
    /// 1 GiB pages (`CAP.FS1GP`). 2 MiB pages are always available.
    pub page_1g: bool,
    /// Output address width: the host address width from the DMAR table (`HAW` + 1).
    pub output_width: u32,
    /// Encode "not executable" with XD. Without it execute requests are never refused by the
    /// table (XD is left clear in every entry).
    pub execute_disable: bool,
    /// Set U/S so requests without the privileged-mode attribute (ordinary DMA) may use the
    /// mappings. Clear it only for a supervisor-only PASID.
    pub user: bool,
}

impl X86FirstStageConfig {
    /// 4-level, 2 MiB and 1 GiB pages, XD and U/S on, for `output_width` physical bits.
    pub const fn four_level(output_width: u32) -> Self {
        Self {
            five_level: false,
            page_1g: true,
            output_width,
            execute_disable: true,
            user: true,
        }
    }
}

/// VT-d first-stage (x86-64 paging) format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86FirstStage {
    cfg: X86FirstStageConfig,
}

impl X86FirstStage {
    /// Checks the configuration.
    pub fn new(cfg: X86FirstStageConfig) -> Result<Self, Error> {
        if cfg.output_width < 12 || cfg.output_width > 52 {
            return Err(Error::UnsupportedConfig);
        }
        Ok(Self { cfg })
    }

    /// Paging levels: 4 or 5 (the PASID entry's `FSPM` field: 0 = 4-level, 1 = 5-level).
    pub fn paging_levels(&self) -> u32 {
        if self.cfg.five_level {
            5
        } else {
            4
        }
    }
}

// SAFETY: table entries are P|RW|US|A|address (non-zero, PS clear) and decode through
// ADDR_MASK, which excludes SW_SYNCED and the A/D bits; leaves carry P, and PS above level 0;
// the geometry is fixed at construction.
unsafe impl Format for X86FirstStage {
    const SW_SYNCED: u64 = SW_SYNCED;

    #[inline(always)]
    fn granule_shift(&self) -> u32 {
        12
    }

    #[inline(always)]
    fn levels(&self) -> u32 {
        self.paging_levels()
    }

    #[inline(always)]
    fn ia_bits(&self) -> u32 {
        // The lower canonical half: 2^47 (4-level) or 2^56 (5-level).
        if self.cfg.five_level {
            56
        } else {
            47
        }
    }

    #[inline(always)]
    fn oa_bits(&self) -> u32 {
        self.cfg.output_width
    }

    #[inline(always)]
    fn root_frame(&self) -> FrameSize {
        FrameSize::SIZE_4K
    }

    #[inline(always)]
    fn leaf_ok(&self, level: u32) -> bool {
        match level {
            0 | 1 => true,
            2 => self.cfg.page_1g,
            _ => false,
        }
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        match (prot.read, prot.write) {
            (false, false) => Err(Error::NoAccess),
            // A present entry is always readable.
            (false, true) => Err(Error::UnsupportedPermissions),
            _ => Ok(()),
        }
    }

    #[inline(always)]
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64 {
        // A (and D when writable) preset: the walker need not write them back into the table,
        // which matters most when it does not snoop.
        let mut bits = P | A;
        if prot.write {
            bits |= RW | D;
        }
        if self.cfg.user {
            bits |= US;
        }
        if level > 0 {
            bits |= PS;
        }
        // With the default PAT (PAT bit clear): WB, UC- (PCD) and UC (PCD | PWT).
        bits |= match prot.mem {
            MemType::Cacheable => 0,
            MemType::NonCacheable => PCD,
            MemType::Device => PCD | PWT,
        };
        if self.cfg.execute_disable && !prot.exec {
            bits |= XD;
        }
        bits
    }

    #[inline(always)]
    fn encode_addr(&self, pa: u64) -> u64 {
        pa & ADDR_MASK
    }

    #[inline(always)]
    fn linear_addr(&self) -> bool {
        // Addresses below 2^52 are their own field, bits 51:12.
        true
    }

    #[inline(always)]
    fn decode_addr(&self, entry: u64) -> u64 {
        entry & ADDR_MASK
    }

    #[inline(always)]
    fn table_entry(&self, table_pa: u64) -> u64 {
        // Rights are ANDed down the walk: tables grant everything, leaves restrict.
        let us = if self.cfg.user { US } else { 0 };
        P | RW | us | A | (table_pa & ADDR_MASK)
    }

    #[inline(always)]
    fn is_table(&self, entry: u64, level: u32) -> bool {
        level > 0 && entry & PS == 0
    }

    fn is_present(&self, entry: u64, _level: u32) -> bool {
        entry & P != 0
    }

    fn table_limits(&self, entry: u64) -> (bool, bool) {
        // R/W of every level must allow a write (Intel SDM 4.6.1).
        (true, entry & RW != 0)
    }

    fn decode_prot(&self, entry: u64, _level: u32) -> Prot {
        Prot {
            read: true,
            write: entry & RW != 0,
            exec: entry & XD == 0,
            mem: match entry & (PCD | PWT) {
                0 => MemType::Cacheable,
                PCD => MemType::NonCacheable,
                _ => MemType::Device,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt() -> X86FirstStage {
        X86FirstStage::new(X86FirstStageConfig::four_level(46)).unwrap()
    }

    #[test]
    fn geometry() {
        let f = fmt();
        assert_eq!((f.levels(), f.ia_bits()), (4, 47));
        let f5 = X86FirstStage::new(X86FirstStageConfig {
            five_level: true,
            page_1g: false,
            ..X86FirstStageConfig::four_level(52)
        })
        .unwrap();
        assert_eq!((f5.levels(), f5.ia_bits()), (5, 56));
        assert!(f5.leaf_ok(1) && !f5.leaf_ok(2));
        assert_eq!(
            X86FirstStage::new(X86FirstStageConfig::four_level(53)),
            Err(Error::UnsupportedConfig)
        );
    }

    #[test]
    fn leaf_encoding_matches_sdm() {
        let f = fmt();
        // 4 KiB PTE, read/write, WB, not executable: XD | D | A | U/S | R/W | P.
        assert_eq!(
            f.leaf_bits(0, Prot::READ_WRITE) | f.encode_addr(0x1234_5000),
            0x8000_0000_1234_5067
        );
        // 2 MiB PDE, read-only, executable, UC: PS | A | PCD | PWT | U/S | P.
        assert_eq!(
            f.leaf_bits(1, Prot::READ.with_exec().with_mem(MemType::Device))
                | f.encode_addr(0x20_0000),
            0x0000_0000_0020_00bd
        );
        // 1 GiB PDPTE, read-only, UC-: XD | PS | A | PCD | U/S | P.
        assert_eq!(
            f.leaf_bits(2, Prot::READ.with_mem(MemType::NonCacheable))
                | f.encode_addr(0x1_4000_0000),
            0x8000_0001_4000_00b5
        );
        // Table entry: A | U/S | R/W | P.
        assert_eq!(f.table_entry(0x7000), 0x7027);
        assert!(f.is_table(0x7027, 3));
        assert!(!f.is_table(0x8000_0000_1234_5067, 0));
        assert_eq!(f.decode_addr(0x7027 | SW_SYNCED | D), 0x7000);
    }

    #[test]
    fn permissions() {
        let f = fmt();
        assert_eq!(
            f.check_prot(Prot::WRITE),
            Err(Error::UnsupportedPermissions)
        );
        for p in [
            Prot::READ,
            Prot::READ_WRITE.with_exec(),
            Prot::READ.with_mem(MemType::Device),
            Prot::READ_WRITE.with_mem(MemType::NonCacheable),
        ] {
            assert_eq!(f.decode_prot(f.leaf_bits(0, p), 0), p);
        }
    }
}
