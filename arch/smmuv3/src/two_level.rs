//! The table the stream table (IHI 0070 3.3.1-3.3.2) and CD tables (5.4.1) both are: `2^bits`
//! 64-byte entries, either in one linear array or behind a level-1 array of 8-byte descriptors,
//! each covering a level-2 array of `2^leaf_bits` entries created on demand. [`TableShape`] is
//! the index arithmetic, [`TwoLevelTable`] the table in HAL frames with its one entry writer.
//! Each table type keeps its own limits (SPLIT values, S1Fmt leaf sizes), level-1 descriptor
//! format ([`Level1Format`]) and error type; the table is one.

use core::fmt;

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};

use crate::cmdq::CmdqError;
use crate::entry::{
    frame_for, load_word, plan_entry_update, store_word, EntryError, EntryWords, UpdateKind,
    ENTRY_WORDS,
};

/// log2 of the bytes of an STE or a CD.
pub(crate) const ENTRY_LOG2_BYTES: u32 = 6;
/// log2 of the bytes of a level-1 descriptor (stream table or CD table).
const L1_DESC_LOG2_BYTES: u32 = 3;

/// The shape of a linear or 2-level table of `2^bits` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableShape {
    /// log2 of the entries the table covers (STRTAB_BASE_CFG.LOG2SIZE, STE.S1CDMax).
    pub(crate) bits: u8,
    /// log2 of the entries of one level-2 array (SPLIT; 6 or 10 for CD tables), `None` when
    /// linear. Never above `bits` (the constructors of the table types check it).
    pub(crate) leaf_bits: Option<u8>,
}

impl TableShape {
    /// The first index the table does not cover.
    pub(crate) const fn limit(&self) -> u64 {
        1 << self.bits
    }

    /// Where entry `index` lives: the level-1 descriptor (2-level only) and the position in
    /// its array; `None` beyond the table.
    pub(crate) const fn locate(&self, index: u32) -> Option<(Option<u64>, u64)> {
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
    pub(crate) const fn base_log2_bytes(&self) -> u32 {
        match self.leaf_bits {
            None => self.bits as u32 + ENTRY_LOG2_BYTES,
            Some(leaf) => (self.bits - leaf) as u32 + L1_DESC_LOG2_BYTES,
        }
    }

    /// Entries of one level-2 array (0 when linear).
    pub(crate) const fn leaf_entries(&self) -> u64 {
        match self.leaf_bits {
            None => 0,
            Some(leaf) => 1 << leaf,
        }
    }

    /// log2 of the bytes of one level-2 array (`None` when linear).
    pub(crate) const fn leaf_log2_bytes(&self) -> Option<u32> {
        match self.leaf_bits {
            None => None,
            Some(leaf) => Some(leaf as u32 + ENTRY_LOG2_BYTES),
        }
    }

    /// Level-1 descriptors (0 when linear).
    pub(crate) const fn level1_entries(&self) -> u64 {
        match self.leaf_bits {
            None => 0,
            Some(leaf) => 1 << (self.bits - leaf),
        }
    }
}

/// How one table type spells its level-1 descriptors.
pub(crate) struct Level1Format {
    /// The descriptor of a level-2 array at `l2` of `2^leaf_bits` entries.
    pub(crate) encode: fn(PhysAddr, u8) -> Result<u64, EntryError>,
    /// The level-2 array a descriptor points at; `None` when it is invalid.
    pub(crate) decode: fn(u64) -> Option<PhysAddr>,
}

/// Why a table operation failed; each table type turns it into its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableError {
    /// The geometry is not one the HAL can give frames for.
    Geometry(&'static str),
    /// The index is outside the table.
    OutOfRange {
        /// The index (StreamID or SubstreamID).
        index: u32,
        /// The first index the table does not cover.
        limit: u64,
    },
    /// No level-2 array covers the index yet.
    NoLevel2(u32),
    /// The HAL had no frame.
    OutOfMemory,
    /// The entry or a descriptor cannot be encoded.
    Entry(EntryError),
    /// The invalidation of the SMMU's cached copy failed.
    Invalidation(CmdqError),
}

impl From<EntryError> for TableError {
    fn from(e: EntryError) -> Self {
        Self::Entry(e)
    }
}

/// A linear or 2-level table of 64-byte entries in HAL frames: the linear array, or the level-1
/// array and the level-2 arrays created by [`ensure_level2`](Self::ensure_level2).
///
/// Updates take `&mut self`: the owner serialises them. Frames are not freed on drop (the SMMU
/// may still walk them); [`free`](Self::free) returns them once it cannot.
pub(crate) struct TwoLevelTable<H: Hal> {
    hal: H,
    shape: TableShape,
    base: PhysAddr,
    base_frame: FrameSize,
    /// Clean written words to the point of coherency (IDR0.COHACC = 0).
    clean: bool,
    level1: &'static Level1Format,
    /// What every entry of a new array holds (an aborting STE; an invalid, all-zero CD).
    fill: EntryWords,
}

impl<H: Hal> fmt::Debug for TwoLevelTable<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoLevelTable")
            .field("shape", &self.shape)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<H: Hal> TwoLevelTable<H> {
    /// Allocates the base array; a linear table has every entry at `fill`, a 2-level one every
    /// level-1 descriptor invalid (a fresh frame is zero). `coherent` is IDR0.COHACC: without it
    /// every store is cleaned to the point of coherency.
    pub(crate) fn new(
        hal: H,
        shape: TableShape,
        coherent: bool,
        level1: &'static Level1Format,
        fill: EntryWords,
    ) -> Result<Self, TableError> {
        let base_frame =
            frame_for(shape.base_log2_bytes()).ok_or(TableError::Geometry("table size"))?;
        let base = hal.alloc_frame(base_frame).ok_or(TableError::OutOfMemory)?;
        let table = Self {
            hal,
            shape,
            base,
            base_frame,
            clean: !coherent,
            level1,
            fill,
        };
        if shape.leaf_bits.is_none() {
            table.fill_entries(base, shape.limit(), &fill);
        }
        Ok(table)
    }

    /// The address of the base array (STRTAB_BASE, S1ContextPtr).
    pub(crate) fn base(&self) -> PhysAddr {
        self.base
    }

    fn leaf_frame(&self) -> Option<FrameSize> {
        frame_for(self.shape.leaf_log2_bytes()?)
    }

    /// Bytes of the frame at `table`: the base array or a level-2 array.
    fn frame_bytes(&self, table: PhysAddr) -> u64 {
        if table == self.base {
            self.base_frame.bytes() as u64
        } else {
            self.leaf_frame().map_or(0, |f| f.bytes() as u64)
        }
    }

    fn store(&self, table: PhysAddr, index: u64, value: u64) {
        if (index + 1) * 8 > self.frame_bytes(table) {
            return;
        }
        // SAFETY: `table` is the base frame or a level-2 frame this table allocated (callers
        // take it from `self.base` or a descriptor we wrote), the index was just checked, and
        // `&mut self` (or construction) excludes other CPU writers.
        unsafe { store_word(&self.hal, self.clean, table, index, value) }
    }

    /// Word `index` of the array at `table` (0 outside it).
    pub(crate) fn load(&self, table: PhysAddr, index: u64) -> u64 {
        if (index + 1) * 8 > self.frame_bytes(table) {
            return 0;
        }
        // SAFETY: as for `store`.
        unsafe { load_word(&self.hal, table, index) }
    }

    /// Writes `fill` into the `entries` entries of the fresh (zeroed) array at `table`: only
    /// non-zero words are stored.
    fn fill_entries(&self, table: PhysAddr, entries: u64, fill: &EntryWords) {
        for e in 0..entries {
            for (w, value) in fill.iter().enumerate() {
                if *value != 0 {
                    self.store(table, e * ENTRY_WORDS as u64 + w as u64, *value);
                }
            }
        }
    }

    /// The array holding entry `index` and the index of its first word.
    fn words_at(&self, index: u32) -> Result<(PhysAddr, u64), TableError> {
        match self.locate(index)? {
            (None, i) => Ok((self.base, i * ENTRY_WORDS as u64)),
            (Some(l1), i) => match (self.level1.decode)(self.load(self.base, l1)) {
                Some(l2) => Ok((l2, i * ENTRY_WORDS as u64)),
                None => Err(TableError::NoLevel2(index)),
            },
        }
    }

    fn locate(&self, index: u32) -> Result<(Option<u64>, u64), TableError> {
        self.shape.locate(index).ok_or(TableError::OutOfRange {
            index,
            limit: self.shape.limit(),
        })
    }

    /// Whether entry `index` has no level-2 array yet (2-level tables).
    pub(crate) fn lacks_level2(&self, index: u32) -> bool {
        matches!(self.words_at(index), Err(TableError::NoLevel2(_)))
    }

    /// Makes sure a level-2 array covers `index` (a no-op for linear tables). A new array has
    /// every entry at `fill` and is fully written before the level-1 descriptor that makes it
    /// reachable. Returns whether one was installed; the caller then invalidates (leaf =
    /// false) before relying on the SMMU to have dropped a cached invalid descriptor (invalid
    /// descriptors are not normally cached, so QEMU and Linux do without).
    pub(crate) fn ensure_level2(&mut self, index: u32) -> Result<bool, TableError> {
        let fill = self.fill;
        self.ensure_level2_with(index, &fill, None)
    }

    /// [`ensure_level2`](Self::ensure_level2) with the entries of a new array at `others`, and
    /// entry `index` at `entry` when given. Every entry is in place before the level-1
    /// descriptor store that makes the array reachable.
    fn ensure_level2_with(
        &mut self,
        index: u32,
        others: &EntryWords,
        entry: Option<&EntryWords>,
    ) -> Result<bool, TableError> {
        let (Some(l1), position) = self.locate(index)? else {
            return Ok(false);
        };
        if (self.level1.decode)(self.load(self.base, l1)).is_some() {
            return Ok(false);
        }
        let (Some(leaf_bits), Some(frame)) = (self.shape.leaf_bits, self.leaf_frame()) else {
            return Err(TableError::Geometry("table size"));
        };
        let l2 = self.hal.alloc_frame(frame).ok_or(TableError::OutOfMemory)?;
        let desc = match (self.level1.encode)(l2, leaf_bits) {
            Ok(desc) => desc,
            Err(e) => {
                // SAFETY: just allocated with this size; nothing points at it.
                unsafe { self.hal.free_frame(l2, frame) };
                return Err(e.into());
            }
        };
        if *others == [0; ENTRY_WORDS] {
            // A fresh frame is zero already: clean it (non-coherent SMMU) so the SMMU cannot
            // read stale lines.
            if self.clean {
                self.hal
                    .clean_to_poc(self.hal.phys_to_virt(l2), frame.bytes());
            }
        } else {
            self.fill_entries(l2, self.shape.leaf_entries(), others);
        }
        if let Some(entry) = entry {
            let first = position * ENTRY_WORDS as u64;
            for (w, value) in entry.iter().enumerate() {
                if *value != others[w] {
                    self.store(l2, first + w as u64, *value);
                }
            }
        }
        // The level-2 entries must be visible before the descriptor: the same barrier a queue
        // publication uses orders the normal-memory stores for the SMMU's reads.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.store(self.base, l1, desc);
        Ok(true)
    }

    /// The current eight words of entry `index`.
    pub(crate) fn entry(&self, index: u32) -> Result<EntryWords, TableError> {
        let (table, first) = self.words_at(index)?;
        let mut words = [0u64; ENTRY_WORDS];
        for (i, w) in words.iter_mut().enumerate() {
            *w = self.load(table, first + i as u64);
        }
        Ok(words)
    }

    /// The one entry writer: changes live entry `index` to `target` by the stores of
    /// [`plan_entry_update`] with the table type's `used` bits, calling `invalidate(leaf)` after
    /// each step, which must invalidate the SMMU's cached copy (CMD_CFGI_STE / CMD_CFGI_CD) and
    /// wait for a CMD_SYNC. Where no level-2 array covers `index` yet, see
    /// [`write_with_neighbours`](Self::write_with_neighbours) (here the neighbours get `fill`).
    /// Returns the kind of update that was made.
    pub(crate) fn write(
        &mut self,
        index: u32,
        target: &EntryWords,
        used: fn(&EntryWords) -> EntryWords,
        invalidate: impl FnMut(bool) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, TableError> {
        let fill = self.fill;
        self.write_with_neighbours(index, target, &fill, used, invalidate)
    }

    /// [`write`](Self::write), where a level-2 array created for `index` gets `target` at
    /// `index` and `neighbours` in every other entry, all stored before the level-1 descriptor
    /// that makes the array reachable. The SMMU cannot have fetched, let alone cached, an entry
    /// of an array no descriptor pointed at, so none of them needs an invalidation; only the
    /// descriptor does (`invalidate(false)`: CMD_CFGI_STE / CMD_CFGI_CD with Leaf = 0), in case
    /// the SMMU kept the invalid one. That is the whole cost: one invalidation and one sync.
    pub(crate) fn write_with_neighbours(
        &mut self,
        index: u32,
        target: &EntryWords,
        neighbours: &EntryWords,
        used: fn(&EntryWords) -> EntryWords,
        mut invalidate: impl FnMut(bool) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, TableError> {
        if self.ensure_level2_with(index, neighbours, Some(target))? {
            invalidate(false).map_err(TableError::Invalidation)?;
            return Ok(UpdateKind::NewLevel2);
        }
        let (table, first) = self.words_at(index)?;
        let current = self.entry(index)?;
        let plan = plan_entry_update(&current, target, used, 0);
        for write in plan.writes() {
            self.store(table, first + write.word as u64, write.value);
            if write.sync_after {
                invalidate(true).map_err(TableError::Invalidation)?;
            }
        }
        Ok(plan.kind())
    }

    /// Returns every frame of the table to the HAL.
    ///
    /// # Safety
    /// The SMMU must no longer use the table (what that takes is the table type's to say).
    pub(crate) unsafe fn free(self) {
        if let Some(frame) = self.leaf_frame() {
            for l1 in 0..self.shape.level1_entries() {
                if let Some(l2) = (self.level1.decode)(self.load(self.base, l1)) {
                    // SAFETY: installed by `ensure_level2` from `alloc_frame(frame)`; unused
                    // per the caller.
                    unsafe { self.hal.free_frame(l2, frame) };
                }
            }
        }
        // SAFETY: allocated in `new` with this size; unused per the caller.
        unsafe { self.hal.free_frame(self.base, self.base_frame) };
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
