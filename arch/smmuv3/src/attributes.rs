//! Translation parameters that stream table entries, context descriptors and TLB invalidation
//! commands all name, each with the encodings of the fields that carry it (IHI 0070 5.2, 5.4, 4.4).
//!
//! The same granule is spelled three ways by the architecture (CD.TG0, STE.S2TG and the TLBI
//! commands' TG); keeping one [`Granule`] type with one method per spelling means the three
//! encodings live side by side where they can be compared.

use core::fmt;

/// A translation granule: the page size of a translation table (IDR5.GRAN4K/16K/64K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages.
    Size4K,
    /// 16 KiB pages.
    Size16K,
    /// 64 KiB pages.
    Size64K,
}

impl Granule {
    /// log2 of the page size in bytes: 12, 14 or 16.
    pub const fn log2(self) -> u32 {
        match self {
            Self::Size4K => 12,
            Self::Size16K => 14,
            Self::Size64K => 16,
        }
    }

    /// The page size in bytes.
    pub const fn bytes(self) -> u64 {
        1 << self.log2()
    }

    /// The granule of `1 << log2` byte pages, if the architecture has one.
    pub const fn from_log2(log2: u32) -> Option<Self> {
        match log2 {
            12 => Some(Self::Size4K),
            14 => Some(Self::Size16K),
            16 => Some(Self::Size64K),
            _ => None,
        }
    }

    /// CD.TG0 and STE.S2TG (the TCR_ELx.TG0 spelling): 0b00 4K, 0b01 64K, 0b10 16K.
    pub const fn tg0_encoding(self) -> u64 {
        match self {
            Self::Size4K => 0b00,
            Self::Size64K => 0b01,
            Self::Size16K => 0b10,
        }
    }

    /// The inverse of [`tg0_encoding`](Self::tg0_encoding); 0b11 is reserved.
    pub const fn from_tg0_encoding(tg: u64) -> Option<Self> {
        match tg {
            0b00 => Some(Self::Size4K),
            0b01 => Some(Self::Size64K),
            0b10 => Some(Self::Size16K),
            _ => None,
        }
    }

    /// The TG field of the range TLBI commands (4.4.1): 0b01 4K, 0b10 16K, 0b11 64K
    /// (0b00 means "not a range invalidation").
    pub const fn tlbi_encoding(self) -> u64 {
        match self {
            Self::Size4K => 0b01,
            Self::Size16K => 0b10,
            Self::Size64K => 0b11,
        }
    }

    /// The inverse of [`tlbi_encoding`](Self::tlbi_encoding); 0 is "no range" and decodes to `None`.
    pub const fn from_tlbi_encoding(tg: u64) -> Option<Self> {
        match tg {
            0b01 => Some(Self::Size4K),
            0b10 => Some(Self::Size16K),
            0b11 => Some(Self::Size64K),
            _ => None,
        }
    }

    /// Whether the SMMU described by `granules` (IDR5) walks tables of this granule.
    pub const fn supported_by(self, granules: &crate::idr::Granules) -> bool {
        match self {
            Self::Size4K => granules.size_4k,
            Self::Size16K => granules.size_16k,
            Self::Size64K => granules.size_64k,
        }
    }
}

impl fmt::Display for Granule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Size4K => "4K",
            Self::Size16K => "16K",
            Self::Size64K => "64K",
        })
    }
}

/// Cacheability of a table walk or table fetch (CD.IR0/OR0, STE.S2IR0/S2OR0, STE.S1CIR/S1COR):
/// the TCR IRGN/ORGN encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cacheability {
    /// 0b00: Normal, non-cacheable.
    NonCacheable,
    /// 0b01: write-back, read-allocate, write-allocate.
    WriteBackAllocate,
    /// 0b10: write-through, read-allocate, no write-allocate.
    WriteThrough,
    /// 0b11: write-back, read-allocate, no write-allocate.
    WriteBackNoWriteAllocate,
}

impl Cacheability {
    /// The 2-bit field value.
    pub const fn encoding(self) -> u64 {
        match self {
            Self::NonCacheable => 0b00,
            Self::WriteBackAllocate => 0b01,
            Self::WriteThrough => 0b10,
            Self::WriteBackNoWriteAllocate => 0b11,
        }
    }

    /// The inverse of [`encoding`](Self::encoding), for the low two bits of `v`.
    pub const fn from_encoding(v: u64) -> Self {
        match v & 0b11 {
            0b00 => Self::NonCacheable,
            0b01 => Self::WriteBackAllocate,
            0b10 => Self::WriteThrough,
            _ => Self::WriteBackNoWriteAllocate,
        }
    }
}

/// Shareability of a table walk or an access (CD.SH0, STE.S2SH0, STE.S1CSH, CMD_SYNC.MSH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shareability {
    /// 0b00: non-shareable.
    NonShareable,
    /// 0b10: outer shareable.
    OuterShareable,
    /// 0b11: inner shareable.
    InnerShareable,
}

impl Shareability {
    /// The 2-bit field value (0b01 is reserved and never produced).
    pub const fn encoding(self) -> u64 {
        match self {
            Self::NonShareable => 0b00,
            Self::OuterShareable => 0b10,
            Self::InnerShareable => 0b11,
        }
    }

    /// The inverse of [`encoding`](Self::encoding); `None` for the reserved 0b01.
    pub const fn from_encoding(v: u64) -> Option<Self> {
        match v {
            0b00 => Some(Self::NonShareable),
            0b10 => Some(Self::OuterShareable),
            0b11 => Some(Self::InnerShareable),
            _ => None,
        }
    }
}

/// Extracts the field `hi:lo` (inclusive) of `word`.
#[inline(always)]
pub(crate) const fn field(word: u64, hi: u32, lo: u32) -> u64 {
    (word >> lo) & mask(hi - lo + 1)
}

/// A mask of the low `bits` bits (`bits` ≤ 64).
#[inline(always)]
pub(crate) const fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// The mask of bits `hi:lo` (inclusive) in place.
#[inline(always)]
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    mask(hi - lo + 1) << lo
}

/// `value` placed at bits `hi:lo`; the caller has checked it fits.
#[inline(always)]
pub(crate) const fn place(value: u64, hi: u32, lo: u32) -> u64 {
    (value & mask(hi - lo + 1)) << lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granule_encodings_match_the_three_spellings() {
        // TCR_ELx.TG0 as used by CD.TG0 and STE.S2TG: 4K=0, 64K=1, 16K=2.
        assert_eq!(Granule::Size4K.tg0_encoding(), 0);
        assert_eq!(Granule::Size64K.tg0_encoding(), 1);
        assert_eq!(Granule::Size16K.tg0_encoding(), 2);
        // TLBI TG: 4K=1, 16K=2, 64K=3 (0 = not a range).
        assert_eq!(Granule::Size4K.tlbi_encoding(), 1);
        assert_eq!(Granule::Size16K.tlbi_encoding(), 2);
        assert_eq!(Granule::Size64K.tlbi_encoding(), 3);
        for g in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
            assert_eq!(Granule::from_tg0_encoding(g.tg0_encoding()), Some(g));
            assert_eq!(Granule::from_tlbi_encoding(g.tlbi_encoding()), Some(g));
            assert_eq!(Granule::from_log2(g.log2()), Some(g));
        }
        assert_eq!(Granule::from_tg0_encoding(3), None);
        assert_eq!(Granule::from_tlbi_encoding(0), None);
    }

    #[test]
    fn field_helpers() {
        assert_eq!(bits(3, 1), 0b1110);
        assert_eq!(bits(63, 0), u64::MAX);
        assert_eq!(place(0b101, 3, 1), 0b1010);
        assert_eq!(field(0xabcd_0000, 31, 16), 0xabcd);
        assert_eq!(Shareability::from_encoding(1), None);
        assert_eq!(
            Cacheability::from_encoding(0b11),
            Cacheability::WriteBackNoWriteAllocate
        );
    }
}
