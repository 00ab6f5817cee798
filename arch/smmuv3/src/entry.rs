//! The 64-byte entries the SMMU reads from memory, STEs (5.2) and CDs (5.4), as words: their
//! load and store in HAL frames, the address checks of their pointer fields, the one error type
//! of their fields, and the one entry writer both use: the plan that changes a live entry so
//! the SMMU never acts on a half-written one (hitless where a single word switches it).
//!
//! The SMMU reads each word single-copy atomically but the entry as a whole at any moment and
//! may cache it until a CMD_CFGI_STE / CMD_CFGI_CD + CMD_SYNC, so every live update follows
//! [`plan_entry_update`].

use core::fmt;
use core::ptr::NonNull;

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};

/// Words in an STE or a CD.
pub const ENTRY_WORDS: usize = 8;

/// The in-memory form of an STE or CD: eight little-endian 64-bit words (64 bytes).
pub type EntryWords = [u64; ENTRY_WORDS];

/// A value that does not fit an STE or CD field, or an SMMU that cannot do what is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryError {
    /// A field value out of range.
    Field {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// An address not aligned as its field requires.
    Misaligned {
        /// The field.
        field: &'static str,
        /// The address.
        addr: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// The SMMU lacks what the entry needs.
    Unsupported(&'static str),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field { field, value } => write!(f, "{field} = {value:#x} is out of range"),
            Self::Misaligned { field, addr, align } => {
                write!(f, "{field} = {addr:#x} is not {align:#x}-byte aligned")
            }
            Self::Unsupported(what) => write!(f, "the SMMU does not support {what}"),
        }
    }
}

impl core::error::Error for EntryError {}

pub(crate) fn check_addr(field: &'static str, addr: u64, align: u64) -> Result<u64, EntryError> {
    if addr & (align - 1) != 0 {
        return Err(EntryError::Misaligned { field, addr, align });
    }
    if addr >> 52 != 0 {
        return Err(EntryError::Field { field, value: addr });
    }
    Ok(addr)
}

/// One 64-bit store of an entry update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordWrite {
    /// Which word of the entry (0..8).
    pub word: usize,
    /// The value to store, single-copy atomically.
    pub value: u64,
    /// After this store (and the stores before it), invalidate the SMMU's cached copy
    /// (CMD_CFGI_STE / CMD_CFGI_CD) and wait for a CMD_SYNC before the next store.
    pub sync_after: bool,
}

/// How an update reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// Nothing to write.
    Unchanged,
    /// Only bits the SMMU ignores change.
    UnusedBitsOnly,
    /// Hitless: bits the SMMU ignores first, then the single word whose used bits change, then
    /// the leftovers; the SMMU sees the old entry, then the new one.
    Hitless {
        /// The word that switches the entry.
        critical: usize,
    },
    /// Breaking: the entry is made invalid (V = 0) first, so the SMMU sees the old entry,
    /// then none (transactions abort with C_BAD_STE / C_BAD_CD), then the new one.
    Breaking,
    /// The entry was written whole into a new level-2 array before the level-1 descriptor
    /// made the array reachable: the SMMU never saw an older entry, so no step was needed,
    /// only the descriptor's invalidation (Leaf = 0).
    NewLevel2,
}

/// The ordered word stores of an entry update; see [`plan_entry_update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    writes: [WordWrite; 3 * ENTRY_WORDS],
    len: usize,
    kind: UpdateKind,
}

impl UpdatePlan {
    /// The stores, in order.
    pub fn writes(&self) -> &[WordWrite] {
        &self.writes[..self.len]
    }

    /// Which kind of update this is.
    pub fn kind(&self) -> UpdateKind {
        self.kind
    }

    /// Stores every word of `values` that differs from `state` among `words`, tracking `state`;
    /// the last store of the step asks for a sync.
    fn step(
        &mut self,
        state: &mut EntryWords,
        values: &EntryWords,
        words: impl Iterator<Item = usize>,
    ) {
        let before = self.len;
        for i in words {
            if state[i] != values[i] {
                self.writes[self.len] = WordWrite {
                    word: i,
                    value: values[i],
                    sync_after: false,
                };
                self.len += 1;
                state[i] = values[i];
            }
        }
        if self.len > before {
            self.writes[self.len - 1].sync_after = true;
        }
    }
}

/// Plans the change of a live entry (STE or CD) from `current` to `target` so that the SMMU,
/// reading words at arbitrary moments and caching the entry until invalidated, only ever acts
/// on the old entry, an invalid one, or the new one: never a valid mix.
///
/// `used` gives the bits the SMMU reads for an entry; `valid_word` is the word holding V (and
/// the configuration), which is also what a breaking update clears first. The method (the one
/// Linux has used since 2024, here written from the spec's rules): first store, everywhere,
/// the target's value of every bit the current entry does not use (invisible); if then a single
/// word still has to change in bits the target uses, store it (one 64-bit store switches the
/// entry: hitless), then clear the bits the target does not use. Otherwise, clear the valid
/// word (V = 0), store the other words, then the valid word. Each step ends with an
/// invalidation + sync so the next step cannot be observed before the previous one.
pub fn plan_entry_update(
    current: &EntryWords,
    target: &EntryWords,
    used: fn(&EntryWords) -> EntryWords,
    valid_word: usize,
) -> UpdatePlan {
    let mut plan = UpdatePlan {
        writes: [WordWrite {
            word: 0,
            value: 0,
            sync_after: false,
        }; 3 * ENTRY_WORDS],
        len: 0,
        kind: UpdateKind::Unchanged,
    };
    let cur_used = used(current);
    let target_used = used(target);
    let mut unused_update = [0u64; ENTRY_WORDS];
    let mut critical = [false; ENTRY_WORDS];
    let mut n_critical = 0;
    for i in 0..ENTRY_WORDS {
        unused_update[i] = (current[i] & cur_used[i]) | (target[i] & !cur_used[i]);
        // Still wrong in a bit the target uses (or sets) after the invisible stores?
        if unused_update[i] & target_used[i] != target[i] {
            critical[i] = true;
            n_critical += 1;
        }
    }
    let mut state = *current;
    let all = || 0..ENTRY_WORDS;
    match n_critical {
        0 => {
            plan.step(&mut state, target, all());
            plan.kind = if plan.len == 0 {
                UpdateKind::Unchanged
            } else {
                UpdateKind::UnusedBitsOnly
            };
        }
        1 => {
            let c = critical.iter().position(|&x| x).unwrap_or(valid_word);
            // The critical word is stored whole in the next step.
            unused_update[c] = current[c];
            plan.step(&mut state, &unused_update, all());
            plan.step(&mut state, target, core::iter::once(c));
            plan.step(&mut state, target, all());
            plan.kind = UpdateKind::Hitless { critical: c };
        }
        _ => {
            let mut invalid = state;
            invalid[valid_word] = 0;
            plan.step(&mut state, &invalid, core::iter::once(valid_word));
            plan.step(&mut state, target, all().filter(|&i| i != valid_word));
            plan.step(&mut state, target, core::iter::once(valid_word));
            plan.kind = UpdateKind::Breaking;
        }
    }
    plan
}

/// The `index`th 64-bit word of the frame at `table`.
///
/// # Safety
/// `table` must be a frame `hal` allocated, and `index * 8` must be inside it.
unsafe fn word_ptr<H: Hal>(hal: &H, table: PhysAddr, index: u64) -> NonNull<u64> {
    // SAFETY: the caller keeps the offset inside the frame, so the result stays in the same
    // allocation; HAL frames are at least 4 KiB aligned, so every word is 8-byte aligned.
    unsafe { hal.phys_to_virt(table).cast::<u64>().add(index as usize) }
}

/// Stores `value` to word `index` of the frame at `table` with one single-copy atomic store,
/// then cleans it to the point of coherency if `clean` (a non-coherent SMMU).
///
/// # Safety
/// As for [`word_ptr`]; and no other CPU writes the word concurrently (the tables' `&mut self`).
pub(crate) unsafe fn store_word<H: Hal>(
    hal: &H,
    clean: bool,
    table: PhysAddr,
    index: u64,
    value: u64,
) {
    // SAFETY: forwarded from the caller.
    let ptr = unsafe { word_ptr(hal, table, index) };
    // SAFETY: a valid, aligned word of a frame we own. A volatile aligned 64-bit store is one
    // single-copy atomic access on AArch64 and x86-64, which the SMMU's 64-bit reads rely on.
    unsafe { ptr.as_ptr().write_volatile(value) };
    if clean {
        hal.clean_to_poc(ptr.cast(), 8);
    }
}

/// Loads word `index` of the frame at `table`.
///
/// # Safety
/// As for [`word_ptr`].
pub(crate) unsafe fn load_word<H: Hal>(hal: &H, table: PhysAddr, index: u64) -> u64 {
    // SAFETY: forwarded from the caller; the word is valid and aligned.
    unsafe { word_ptr(hal, table, index).as_ptr().read_volatile() }
}

/// The frame holding `2^log2_bytes` bytes (at least 4 KiB).
pub(crate) fn frame_for(log2_bytes: u32) -> Option<FrameSize> {
    FrameSize::from_log2(log2_bytes.max(12))
}
