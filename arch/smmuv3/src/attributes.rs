//! Translation parameters that stream table entries, context descriptors and TLB invalidation
//! commands all name, each with the encodings of the fields that carry it (IHI 0070 5.2, 5.4, 4.4).
//!
//! The same granule is spelled three ways by the architecture (CD.TG0, STE.S2TG and the TLBI
//! commands' TG); the one [`Granule`] type is the core's (its page tables are built with it), and
//! one function per spelling here keeps the three encodings side by side where they can be
//! compared.

pub use iommu::pagetable::Granule;

/// CD.TG0 and STE.S2TG (the TCR_ELx.TG0 spelling): 0b00 4K, 0b01 64K, 0b10 16K.
pub const fn tg0(g: Granule) -> u64 {
    g.tg0() as u64
}

/// The inverse of [`tg0`]; 0b11 is reserved.
pub const fn granule_from_tg0(tg: u64) -> Option<Granule> {
    match tg {
        0b00 => Some(Granule::Size4K),
        0b01 => Some(Granule::Size64K),
        0b10 => Some(Granule::Size16K),
        _ => None,
    }
}

/// The TG field of the range TLBI commands (4.4.1): 0b01 4K, 0b10 16K, 0b11 64K
/// (0b00 means "not a range invalidation").
pub const fn tlbi_tg(g: Granule) -> u64 {
    match g {
        Granule::Size4K => 0b01,
        Granule::Size16K => 0b10,
        Granule::Size64K => 0b11,
    }
}

/// The inverse of [`tlbi_tg`]; 0 is "no range" and decodes to `None`.
pub const fn granule_from_tlbi_tg(tg: u64) -> Option<Granule> {
    match tg {
        0b01 => Some(Granule::Size4K),
        0b10 => Some(Granule::Size16K),
        0b11 => Some(Granule::Size64K),
        _ => None,
    }
}

/// Whether the SMMU described by `granules` (IDR5) walks tables of granule `g`.
pub const fn granule_supported(g: Granule, granules: &crate::idr::Granules) -> bool {
    match g {
        Granule::Size4K => granules.size_4k,
        Granule::Size16K => granules.size_16k,
        Granule::Size64K => granules.size_64k,
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
        assert_eq!(tg0(Granule::Size4K), 0);
        assert_eq!(tg0(Granule::Size64K), 1);
        assert_eq!(tg0(Granule::Size16K), 2);
        // TLBI TG: 4K=1, 16K=2, 64K=3 (0 = not a range).
        assert_eq!(tlbi_tg(Granule::Size4K), 1);
        assert_eq!(tlbi_tg(Granule::Size16K), 2);
        assert_eq!(tlbi_tg(Granule::Size64K), 3);
        for g in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
            assert_eq!(granule_from_tg0(tg0(g)), Some(g));
            assert_eq!(granule_from_tlbi_tg(tlbi_tg(g)), Some(g));
        }
        assert_eq!(granule_from_tg0(3), None);
        assert_eq!(granule_from_tlbi_tg(0), None);
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
