//! The contract between the engine and a table format: geometry plus the encoding of one entry.
//!
//! Levels are numbered from the leaf up: level 0 holds the smallest pages, level `levels() - 1`
//! is the root. (VT-d's "level 1" and Arm's "level 3" are both our level 0.) An entry is either 0
//! (empty: the engine never writes any other not-present value into a live table), a table
//! pointer, or a leaf.

use super::{Error, Prot};
use crate::hal::FrameSize;

/// An I/O page-table format. Implemented by small `Copy` types holding the geometry the hardware
/// and the domain chose; every method is meant to inline into the engine's loops (which copy the
/// format into a local where a loop stores entries: the compiler must assume an atomic store
/// may change the table's own fields, and would reload them for every entry).
///
/// # Safety
///
/// The engine turns table entries back into pointers, so an implementation must guarantee, for
/// every granule-aligned `pa` below `2^52` and every level `l` in `1..levels()`:
/// - `table_entry(pa)` is non-zero, `is_table(table_entry(pa), l)` holds, and
///   `decode_addr(table_entry(pa) | SW_SYNCED) == pa`, and `decode_addr_in::<G>` agrees with
///   `decode_addr` for `G` 0 and `granule_shift()`;
/// - if `linear_addr()`, then `encode_addr(pa + k * span) == encode_addr(pa) + k * span` for
///   every run of leaves of `span` bytes from a granule-aligned `pa` that stays below
///   `2^oa_bits()`, and adding to the address field never carries into `leaf_bits`;
/// - a leaf `leaf_bits(l', prot) | encode_addr(pa)` is non-zero and `is_table` is false for it at
///   its level `l'` (and `is_table(_, 0)` is always false);
/// - `decode_addr` ignores every bit hardware may set in an entry (accessed/dirty flags);
/// - the geometry methods return constant values, with `granule_shift()` in {12, 14, 16},
///   `levels()` in `1..=MAX_LEVELS`, and `root_frame()` large enough for the root's entries
///   (the engine checks the arithmetic when a table is created).
pub unsafe trait Format: Copy + Send + Sync {
    /// A software-available bit of table entries, ignored by the walker, that the engine sets
    /// once an installed table entry has been cleaned to memory (non-coherent walkers only).
    const SW_SYNCED: u64;

    /// log2 of the granule: the smallest page and the size of every non-root table.
    fn granule_shift(&self) -> u32;

    /// Number of levels the walker goes through.
    fn levels(&self) -> u32;

    /// Input address bits: IOVAs are below `2^ia_bits()`.
    fn ia_bits(&self) -> u32;

    /// Output address bits: physical addresses are below `2^oa_bits()`.
    fn oa_bits(&self) -> u32;

    /// The root table's frame (larger than a granule when an Arm stage-2 table starts with
    /// concatenated tables).
    fn root_frame(&self) -> FrameSize;

    /// Whether a leaf (page or superpage/block) may sit at `level`.
    fn leaf_ok(&self, level: u32) -> bool;

    /// Refuses permission sets the format cannot express.
    fn check_prot(&self, prot: Prot) -> Result<(), Error>;

    /// Every bit of a leaf at `level` except the output address.
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64;

    /// The output-address field for the granule-aligned physical address `pa`.
    fn encode_addr(&self, pa: u64) -> u64;

    /// The physical address an entry points to (table or leaf base).
    fn decode_addr(&self, entry: u64) -> u64;

    /// Whether the address field is the address itself, in place (see the contract above):
    /// the engine then writes a run of leaves by stepping one entry value instead of encoding
    /// each address. False where part of the address is stored elsewhere (VMSA FEAT_LPA).
    #[inline(always)]
    fn linear_addr(&self) -> bool {
        false
    }

    /// [`decode_addr`](Self::decode_addr) on the engine's paths compiled for one granule, whose
    /// shift `G` is then a constant (0: not known): a format whose address field depends on the
    /// granule can make it a constant mask there. Must equal `decode_addr` whenever `G` is 0 or
    /// `granule_shift()`.
    #[inline(always)]
    fn decode_addr_in<const G: u32>(&self, entry: u64) -> u64 {
        self.decode_addr(entry)
    }

    /// A table entry pointing to the table at `table_pa`.
    fn table_entry(&self, table_pa: u64) -> u64;

    /// Whether the non-zero `entry` at `level` points to a table (else it is a leaf).
    fn is_table(&self, entry: u64, level: u32) -> bool;

    /// The permissions a leaf at `level` grants, as far as the encoding tells.
    fn decode_prot(&self, entry: u64, level: u32) -> Prot;

    /// Whether the walker uses `entry` at `level` at all (present / valid), for tables someone
    /// else wrote: the engine itself only ever writes 0 as a non-present entry.
    fn is_present(&self, entry: u64, level: u32) -> bool;

    /// The (read, write) a table entry lets through to everything below it; hardware ANDs them
    /// along the walk. Formats without such limits let everything through.
    fn table_limits(&self, _entry: u64) -> (bool, bool) {
        (true, true)
    }
}
