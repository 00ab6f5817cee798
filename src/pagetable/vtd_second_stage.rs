//! VT-d second-stage tables (VT-d spec 3.7 "Second-Stage Translation", 9.8 "Second-Stage Paging
//! Entries"): the legacy-mode DMA remapping table and the scalable-mode second stage / nest
//! parent.
//!
//! 3, 4 or 5 levels (39-, 48- or 57-bit input) chosen from `CAP.SAGAW` and the domain's address
//! width; R/W permissions; `SNP` when the unit has snoop control; 2 MiB / 1 GiB pages per
//! `CAP.SLLPS`. There is no present bit: an entry with R = W = 0 is not present.

use super::format::Format;
use super::{Error, MemType, Prot};
use crate::hal::FrameSize;

/// Read permission (bit 0).
pub const R: u64 = 1 << 0;
/// Write permission (bit 1).
pub const W: u64 = 1 << 1;
/// Page size: this SS-PDE / SS-PDPTE maps a 2 MiB / 1 GiB page (bit 7).
pub const PS: u64 = 1 << 7;
/// Snoop: the access snoops CPU caches whatever the request says (bit 11, leaves only, needs
/// `ECAP.SC`).
pub const SNP: u64 = 1 << 11;
/// Address field, bits 51:12.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Ignored by hardware (bit 52): the engine's "entry cleaned" mark on table entries.
const SW_SYNCED: u64 = 1 << 52;

/// What the unit reports and the domain wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSecondStageConfig {
    /// `CAP.SAGAW` (bits 12:8): bit 1 = 3-level (39-bit), bit 2 = 4-level (48-bit), bit 3 =
    /// 5-level (57-bit) tables supported.
    pub sagaw: u8,
    /// `CAP.SLLPS` (bits 37:34): bit 0 = 2 MiB pages, bit 1 = 1 GiB pages.
    pub sllps: u8,
    /// The domain's input address width: IOVAs (or guest physical addresses, for a nest parent)
    /// are below `2^address_width`. At most `CAP.MGAW` + 1.
    pub address_width: u32,
    /// Output address width: the host address width from the DMAR table (`HAW` + 1).
    pub output_width: u32,
    /// `ECAP.SC`: set `SNP` in cacheable leaves so device accesses snoop regardless of the
    /// request's no-snoop attribute.
    pub snoop_control: bool,
}

/// VT-d second-stage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSecondStage {
    levels: u8,
    width: u8,
    output_width: u8,
    sllps: u8,
    snoop_control: bool,
}

impl VtdSecondStage {
    /// The smallest table depth `SAGAW` offers that covers `address_width`.
    pub fn new(cfg: VtdSecondStageConfig) -> Result<Self, Error> {
        if cfg.address_width < 21 || cfg.address_width > 57 {
            return Err(Error::UnsupportedConfig);
        }
        if cfg.output_width < 12 || cfg.output_width > 52 {
            return Err(Error::UnsupportedConfig);
        }
        // SAGAW bit n (n = 1, 2, 3) = tables of n + 2 levels covering 30 + 9n bits.
        let levels = (3u32..=5)
            .find(|&l| cfg.sagaw & (1 << (l - 2)) != 0 && 12 + 9 * l >= cfg.address_width)
            .ok_or(Error::UnsupportedConfig)?;
        Ok(Self {
            levels: levels as u8,
            width: cfg.address_width as u8,
            output_width: cfg.output_width as u8,
            sllps: cfg.sllps & 0b11,
            snoop_control: cfg.snoop_control,
        })
    }

    /// The context entry's `AW` / PASID entry's `AW` field: 1 = 3-level, 2 = 4-level, 3 = 5-level.
    pub fn aw(&self) -> u8 {
        self.levels - 2
    }

    /// The format of a table someone else built, as a context or PASID entry describes it:
    /// its `AW` field (1, 2, 3) and the unit's output width; for walking it
    /// ([`PageTable::walk_root`](super::PageTable::walk_root)), not for mapping.
    pub fn for_aw(aw: u8, output_width: u32) -> Result<Self, Error> {
        let levels = u32::from(aw) + 2;
        Self::new(VtdSecondStageConfig {
            sagaw: 1u8
                .checked_shl(u32::from(aw))
                .ok_or(Error::UnsupportedConfig)?,
            sllps: 0b11,
            address_width: 12 + 9 * levels,
            output_width,
            snoop_control: false,
        })
    }
}

// SAFETY: table entries are R|W|address (non-zero, PS clear so `is_table` holds above level 0)
// and decode back through ADDR_MASK, which excludes SW_SYNCED and the A/D bits (8, 9); leaves
// always carry R or W (check_prot) and PS above level 0; the geometry is fixed at construction.
unsafe impl Format for VtdSecondStage {
    const SW_SYNCED: u64 = SW_SYNCED;

    #[inline(always)]
    fn granule_shift(&self) -> u32 {
        12
    }

    #[inline(always)]
    fn levels(&self) -> u32 {
        u32::from(self.levels)
    }

    #[inline(always)]
    fn ia_bits(&self) -> u32 {
        u32::from(self.width)
    }

    #[inline(always)]
    fn oa_bits(&self) -> u32 {
        u32::from(self.output_width)
    }

    #[inline(always)]
    fn root_frame(&self) -> FrameSize {
        FrameSize::SIZE_4K
    }

    #[inline(always)]
    fn leaf_ok(&self, level: u32) -> bool {
        match level {
            0 => true,
            1 => self.sllps & 1 != 0,
            2 => self.sllps & 2 != 0,
            _ => false,
        }
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        if !prot.read && !prot.write {
            return Err(Error::NoAccess);
        }
        Ok(())
    }

    #[inline(always)]
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64 {
        let mut bits = 0;
        if prot.read {
            bits |= R;
        }
        if prot.write {
            bits |= W;
        }
        if level > 0 {
            bits |= PS;
        }
        if self.snoop_control && prot.mem == MemType::Cacheable {
            bits |= SNP;
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
        // Permissions are ANDed down the walk, so tables grant both.
        R | W | (table_pa & ADDR_MASK)
    }

    #[inline(always)]
    fn is_table(&self, entry: u64, level: u32) -> bool {
        level > 0 && entry & PS == 0
    }

    fn is_present(&self, entry: u64, _level: u32) -> bool {
        // 9.8: an entry with neither R nor W is not present.
        entry & (R | W) != 0
    }

    fn table_limits(&self, entry: u64) -> (bool, bool) {
        (entry & R != 0, entry & W != 0)
    }

    fn decode_prot(&self, entry: u64, _level: u32) -> Prot {
        Prot {
            read: entry & R != 0,
            write: entry & W != 0,
            exec: false,
            mem: if entry & SNP != 0 || !self.snoop_control {
                // Without snoop control the device's request decides; report the default.
                MemType::Cacheable
            } else {
                MemType::NonCacheable
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(sagaw: u8, width: u32) -> Result<VtdSecondStage, Error> {
        VtdSecondStage::new(VtdSecondStageConfig {
            sagaw,
            sllps: 0b11,
            address_width: width,
            output_width: 46,
            snoop_control: true,
        })
    }

    #[test]
    fn levels_follow_sagaw_and_width() {
        // QEMU's intel-iommu reports SAGAW = 0b0110 (39 and 48 bits).
        assert_eq!(fmt(0b0110, 39).unwrap().levels(), 3);
        assert_eq!(fmt(0b0110, 39).unwrap().aw(), 1);
        assert_eq!(fmt(0b0110, 40).unwrap().levels(), 4);
        assert_eq!(fmt(0b0110, 48).unwrap().aw(), 2);
        // Only 4-level supported: a 39-bit domain still gets 4 levels, top table partly used.
        assert_eq!(fmt(0b0100, 39).unwrap().levels(), 4);
        assert_eq!(fmt(0b1000, 57).unwrap().aw(), 3);
        assert_eq!(fmt(0b0110, 57), Err(Error::UnsupportedConfig));
        assert_eq!(fmt(0, 39), Err(Error::UnsupportedConfig));
    }

    #[test]
    fn leaf_encoding_matches_spec() {
        let f = fmt(0b0110, 48).unwrap();
        // SS-PTE for 0x1234_5000, read/write, snooped: R | W | SNP | address.
        assert_eq!(
            f.leaf_bits(0, Prot::READ_WRITE) | f.encode_addr(0x1234_5000),
            0x0000_0000_1234_5803
        );
        // 2 MiB SS-PDE, read-only, non-cacheable: R | PS | address.
        assert_eq!(
            f.leaf_bits(1, Prot::READ.with_mem(MemType::NonCacheable)) | f.encode_addr(0x4020_0000),
            0x0000_0000_4020_0081
        );
        // 1 GiB SS-PDPTE, write-only.
        assert_eq!(
            f.leaf_bits(2, Prot::WRITE) | f.encode_addr(0x80_4000_0000),
            0x0000_0080_4000_0882
        );
        // Table entry: R | W | address, not a leaf.
        let t = f.table_entry(0xabc_d000);
        assert_eq!(t, 0xabc_d003);
        assert!(f.is_table(t, 1));
        assert_eq!(f.decode_addr(t | SW_SYNCED | (1 << 8)), 0xabc_d000);
        assert!(!f.is_table(0x0000_0000_4020_0081, 1));
    }

    #[test]
    fn permissions_round_trip() {
        let f = fmt(0b0110, 48).unwrap();
        for p in [Prot::READ, Prot::WRITE, Prot::READ_WRITE] {
            assert_eq!(f.decode_prot(f.leaf_bits(0, p), 0), p);
        }
        assert_eq!(
            f.decode_prot(f.leaf_bits(0, Prot::READ.with_mem(MemType::Device)), 0)
                .mem,
            MemType::NonCacheable
        );
        assert_eq!(f.check_prot(Prot::READ_WRITE), Ok(()));
        assert_eq!(
            f.check_prot(Prot {
                read: false,
                write: false,
                exec: true,
                mem: MemType::Cacheable
            }),
            Err(Error::NoAccess)
        );
    }

    #[test]
    fn superpages_follow_sllps() {
        let f = VtdSecondStage::new(VtdSecondStageConfig {
            sagaw: 0b0100,
            sllps: 0b01,
            address_width: 48,
            output_width: 39,
            snoop_control: false,
        })
        .unwrap();
        assert!(f.leaf_ok(0) && f.leaf_ok(1) && !f.leaf_ok(2) && !f.leaf_ok(3));
        // No snoop control: SNP is never set (it is reserved then).
        assert_eq!(f.leaf_bits(0, Prot::READ_WRITE) & SNP, 0);
    }
}
