//! The interrupt-remapping table (VT-d spec 9.10, 11.4.10): 2^(S+1) IRTEs of 16 bytes in one
//! HAL frame, which entries are handed out, and how an entry is written so the unit never reads
//! half of one.
//!
//! Which entries are in use is a bitmap under a small spin lock, not a lock-free bitmap:
//! entries are taken and given back when a device's interrupt is set up or torn down (rare,
//! never on an interrupt path), every such change is followed by a waited-for invalidation
//! that costs far more than the lock, and a lock keeps this out of the set of lock-free
//! structures that each need their own loom model.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::Coherency;

use super::irte::Irte;

/// The most entries a table of this driver holds (the hardware allows 65536; 4096 keep the
/// in-use bitmap inside the unit at 512 bytes and the table in one 64 KiB frame).
pub const MAX_ENTRIES: u32 = 4096;

/// Bytes per IRTE.
const ENTRY_BYTES: usize = 16;

/// How many entries a table has: a power of two from 2 to [`MAX_ENTRIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSize(u32);

/// Why a table size is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSizeError {
    NotAPowerOfTwo(u32),
    OutOfRange { entries: u32, max: u32 },
}

impl core::fmt::Display for TableSizeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NotAPowerOfTwo(n) => {
                write!(
                    f,
                    "VT-d: {n} interrupt-remapping entries is not a power of two"
                )
            }
            Self::OutOfRange { entries, max } => {
                write!(
                    f,
                    "VT-d: {entries} interrupt-remapping entries outside 2..={max}"
                )
            }
        }
    }
}

impl core::error::Error for TableSizeError {}

impl TableSize {
    pub const fn new(entries: u32) -> Result<Self, TableSizeError> {
        if !entries.is_power_of_two() {
            return Err(TableSizeError::NotAPowerOfTwo(entries));
        }
        if entries < 2 || entries > MAX_ENTRIES {
            return Err(TableSizeError::OutOfRange {
                entries,
                max: MAX_ENTRIES,
            });
        }
        Ok(Self(entries))
    }

    pub const fn entries(self) -> u32 {
        self.0
    }

    /// IRTA.S: the table has 2^(S+1) entries.
    pub const fn s_field(self) -> u64 {
        (self.0.trailing_zeros() - 1) as u64
    }

    /// The HAL frame holding the table: at least 4 KiB, the unit's alignment for IRTA.
    fn frame(self) -> FrameSize {
        let bytes = (self.0 as usize * ENTRY_BYTES).max(4096);
        match FrameSize::from_log2(bytes.trailing_zeros()) {
            Some(f) => f,
            None => FrameSize::SIZE_4K,
        }
    }
}

/// The table's memory and which entries are handed out.
pub struct InterruptRemappingTable {
    base: PhysAddr,
    size: TableSize,
    /// Bit `i` set: entry `i` is handed out. Only changed under the lock.
    in_use: spin::Mutex<[u64; (MAX_ENTRIES / 64) as usize]>,
}

impl InterruptRemappingTable {
    /// A table of `size` zeroed (not present) entries from `hal`, kept for the unit's life.
    pub fn allocate<H: Hal>(hal: &H, size: TableSize, coherency: Coherency) -> Option<Self> {
        let frame = size.frame();
        let base = hal.alloc_frame(frame)?;
        if coherency == Coherency::NonCoherent {
            hal.clean_to_poc(hal.phys_to_virt(base), frame.bytes());
        }
        Some(Self {
            base,
            size,
            in_use: spin::Mutex::new([0; (MAX_ENTRIES / 64) as usize]),
        })
    }

    pub fn base(&self) -> PhysAddr {
        self.base
    }

    pub fn size(&self) -> TableSize {
        self.size
    }

    /// Takes the lowest free entry.
    pub fn claim(&self) -> Option<u16> {
        let mut in_use = self.in_use.lock();
        let words = (self.size.entries() as usize).div_ceil(64);
        for (w, bits) in in_use.iter_mut().take(words).enumerate() {
            let free = !*bits;
            if free == 0 {
                continue;
            }
            let bit = free.trailing_zeros() as usize;
            let index = w * 64 + bit;
            if index >= self.size.entries() as usize {
                return None;
            }
            *bits |= 1 << bit;
            return u16::try_from(index).ok();
        }
        None
    }

    /// Gives entry `index` back; `false` if it was not handed out.
    pub fn release(&self, index: u16) -> bool {
        let mut in_use = self.in_use.lock();
        let (w, bit) = (usize::from(index) / 64, usize::from(index) % 64);
        match in_use.get_mut(w) {
            Some(bits) if *bits & (1 << bit) != 0 && u32::from(index) < self.size.entries() => {
                *bits &= !(1 << bit);
                true
            }
            _ => false,
        }
    }

    /// Whether entry `index` is handed out.
    pub fn is_claimed(&self, index: u16) -> bool {
        let in_use = self.in_use.lock();
        let (w, bit) = (usize::from(index) / 64, usize::from(index) % 64);
        u32::from(index) < self.size.entries()
            && in_use.get(w).is_some_and(|bits| bits & (1 << bit) != 0)
    }

    fn word<H: Hal>(&self, hal: &H, index: u16, half: usize) -> Option<&AtomicU64> {
        if u32::from(index) >= self.size.entries() {
            return None;
        }
        let p: NonNull<u8> = hal.phys_to_virt(self.base);
        // SAFETY: the table is a frame of at least entries × 16 bytes this table allocated
        // from `hal` and never frees; `index` < entries (checked above) and `half` < 2, so the
        // word is inside the frame and 8-byte aligned; the HAL allows 64-bit atomic access.
        Some(unsafe {
            &*p.as_ptr()
                .cast::<AtomicU64>()
                .add(2 * usize::from(index) + half % 2)
        })
    }

    /// The two words of entry `index` as the unit would read them now.
    pub fn read<H: Hal>(&self, hal: &H, index: u16) -> Option<[u64; 2]> {
        Some([
            self.word(hal, index, 0)?.load(Ordering::Acquire),
            self.word(hal, index, 1)?.load(Ordering::Acquire),
        ])
    }

    /// Writes entry `index` so the unit sees the old entry or the new one, never a mix: the
    /// low word (present bit, vector, destination) is one 64-bit store; when the high word
    /// (source validation) changes under a present entry, the entry is made not-present first.
    /// The caller invalidates the interrupt entry cache afterwards.
    pub fn write<H: Hal>(&self, hal: &H, coherency: Coherency, index: u16, entry: &Irte) -> bool {
        let (Some(lo), Some(hi)) = (self.word(hal, index, 0), self.word(hal, index, 1)) else {
            return false;
        };
        let [new_lo, new_hi] = entry.encode();
        if hi.load(Ordering::Relaxed) != new_hi {
            // Release: orders the not-present store before the new high word.
            lo.store(0, Ordering::Release);
            hi.store(new_hi, Ordering::Release);
        }
        // Release: the high word is visible before an entry whose present bit names it.
        lo.store(new_lo, Ordering::Release);
        if coherency == Coherency::NonCoherent {
            let p = hal.phys_to_virt(PhysAddr::new(
                self.base.as_u64() + (usize::from(index) * ENTRY_BYTES) as u64,
            ));
            hal.clean_to_poc(p, ENTRY_BYTES);
        }
        true
    }

    /// Makes entry `index` not present (the whole low word cleared: no stale vector either).
    pub fn clear<H: Hal>(&self, hal: &H, coherency: Coherency, index: u16) -> bool {
        let Some(lo) = self.word(hal, index, 0) else {
            return false;
        };
        lo.store(0, Ordering::Release);
        if coherency == Coherency::NonCoherent {
            let p = hal.phys_to_virt(PhysAddr::new(
                self.base.as_u64() + (usize::from(index) * ENTRY_BYTES) as u64,
            ));
            hal.clean_to_poc(p, 8);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_with_their_s_field() {
        assert_eq!(TableSize::new(2).map(|s| s.s_field()), Ok(0));
        assert_eq!(TableSize::new(256).map(|s| s.s_field()), Ok(7));
        assert_eq!(TableSize::new(4096).map(|s| s.s_field()), Ok(11));
        assert_eq!(TableSize::new(3), Err(TableSizeError::NotAPowerOfTwo(3)));
        assert_eq!(TableSize::new(0), Err(TableSizeError::NotAPowerOfTwo(0)));
        assert!(matches!(
            TableSize::new(1),
            Err(TableSizeError::OutOfRange { .. })
        ));
        assert!(matches!(
            TableSize::new(8192),
            Err(TableSizeError::OutOfRange { .. })
        ));
        assert_eq!(TableSize::new(2).map(|s| s.frame().bytes()), Ok(4096));
        assert_eq!(TableSize::new(4096).map(|s| s.frame().bytes()), Ok(65536));
    }
}
