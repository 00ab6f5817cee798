//! The index arithmetic the stream table (IHI 0070 3.3.1-3.3.2) and CD tables (5.4.1) share:
//! `2^bits` 64-byte entries, either in one linear array or behind a level-1 array of 8-byte
//! descriptors, each covering a level-2 array of `2^leaf_bits` entries. Each table type keeps
//! its own limits (SPLIT values, S1Fmt leaf sizes) and descriptor formats; the shape is one.

/// log2 of the bytes of an STE or a CD.
pub const ENTRY_LOG2_BYTES: u32 = 6;
/// log2 of the bytes of a level-1 descriptor (stream table or CD table).
const L1_DESC_LOG2_BYTES: u32 = 3;

/// The shape of a linear or 2-level table of `2^bits` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableShape {
    /// log2 of the entries the table covers (STRTAB_BASE_CFG.LOG2SIZE, STE.S1CDMax).
    pub bits: u8,
    /// log2 of the entries of one level-2 array (SPLIT; 6 or 10 for CD tables), `None` when
    /// linear. Never above `bits` (the constructors of the table types check it).
    pub leaf_bits: Option<u8>,
}

impl TableShape {
    /// The first index the table does not cover.
    pub const fn limit(&self) -> u64 {
        1 << self.bits
    }

    /// Where entry `index` lives: the level-1 descriptor (2-level only) and the position in
    /// its array; `None` beyond the table.
    pub const fn locate(&self, index: u32) -> Option<(Option<u64>, u64)> {
        let i = index as u64;
        if i >= self.limit() {
            return None;
        }
        Some(match self.leaf_bits {
            None => (None, i),
            Some(leaf) => (Some(i >> leaf), i & ((1 << leaf) - 1)),
        })
    }

    /// log2 of the bytes of the array the base pointer names: the linear array, or level 1.
    pub const fn base_log2_bytes(&self) -> u32 {
        match self.leaf_bits {
            None => self.bits as u32 + ENTRY_LOG2_BYTES,
            Some(leaf) => (self.bits - leaf) as u32 + L1_DESC_LOG2_BYTES,
        }
    }

    /// Entries of one level-2 array (0 when linear).
    pub const fn leaf_entries(&self) -> u64 {
        match self.leaf_bits {
            None => 0,
            Some(leaf) => 1 << leaf,
        }
    }

    /// log2 of the bytes of one level-2 array (`None` when linear).
    pub const fn leaf_log2_bytes(&self) -> Option<u32> {
        match self.leaf_bits {
            None => None,
            Some(leaf) => Some(leaf as u32 + ENTRY_LOG2_BYTES),
        }
    }

    /// Level-1 descriptors (0 when linear).
    pub const fn level1_entries(&self) -> u64 {
        match self.leaf_bits {
            None => 0,
            Some(leaf) => 1 << (self.bits - leaf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_shape() {
        let s = TableShape {
            bits: 8,
            leaf_bits: None,
        };
        assert_eq!(s.limit(), 256);
        assert_eq!(s.locate(255), Some((None, 255)));
        assert_eq!(s.locate(256), None);
        // 256 entries of 64 bytes: 16 KiB.
        assert_eq!(s.base_log2_bytes(), 14);
        assert_eq!(
            (s.leaf_entries(), s.leaf_log2_bytes(), s.level1_entries()),
            (0, None, 0)
        );
    }

    #[test]
    fn two_level_shape() {
        // 16 StreamID bits, SPLIT 8: 256 level-1 descriptors (2 KiB), 256-STE leaves (16 KiB).
        let s = TableShape {
            bits: 16,
            leaf_bits: Some(8),
        };
        assert_eq!(s.locate(0x0108), Some((Some(1), 8)));
        assert_eq!(s.locate(0xffff), Some((Some(0xff), 0xff)));
        assert_eq!(s.locate(0x1_0000), None);
        assert_eq!(s.base_log2_bytes(), 11);
        assert_eq!(s.leaf_entries(), 256);
        assert_eq!(s.leaf_log2_bytes(), Some(14));
        assert_eq!(s.level1_entries(), 256);
    }
}
