//! Physical memory for the test kernels: every RAM range the firmware reports (the PVH memory
//! map on x86_64, the devicetree's `memory` node on aarch64), minus the kernel image, the
//! firmware's own data and whatever the boot map leaves out, handed out in naturally aligned
//! power-of-two blocks from the low end, the high end, or the highest place below a limit.
//!
//! The IOMMU tests take their tables, queues and DMA buffers from here (`KernelHal` in the test
//! kernel, with `mem.high=1` on the command line for the high end), so a machine with RAM above
//! 4 GiB puts all of them there.

use core::ops::Range;

use iommu::ranges::FreeRanges;

/// The most RAM ranges the boot code passes on.
pub const MAX_RANGES: usize = 16;

/// RAM ranges the firmware reported, as the boot code found them.
#[derive(Debug, Clone, Copy)]
pub struct RamMap {
    ranges: [(u64, u64); MAX_RANGES],
    len: usize,
}

impl RamMap {
    /// No RAM.
    pub const fn new() -> Self {
        Self {
            ranges: [(0, 0); MAX_RANGES],
            len: 0,
        }
    }

    /// Adds `[start, start + size)`; ranges beyond [`MAX_RANGES`] are dropped (the boot code
    /// knows no machine with that many).
    pub fn push(&mut self, start: u64, size: u64) {
        if let (Some(slot), Some(end)) = (self.ranges.get_mut(self.len), start.checked_add(size)) {
            *slot = (start, end);
            self.len += 1;
        }
    }

    /// The ranges, `start..end`.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges[..self.len].iter().map(|&(s, e)| s..e)
    }
}

impl Default for RamMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Where an allocation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The lowest address that fits.
    Low,
    /// The highest address that fits.
    High,
    /// The highest address that fits and ends at or below this limit.
    Below(u64),
}

const PAGE: u64 = 4096;

/// The allocator's state: the free physical ranges (plain data, so the host tests can drive it).
#[derive(Debug, Default)]
pub struct Ranges {
    free: FreeRanges,
    total: u64,
}

impl Ranges {
    /// The whole pages of `ram` minus every range of `exclude`.
    pub fn new(ram: impl Iterator<Item = Range<u64>>, exclude: &[Range<u64>]) -> Self {
        let mut free = FreeRanges::new();
        for range in ram {
            let start = range.start.next_multiple_of(PAGE);
            let end = range.end & !(PAGE - 1);
            if start < end {
                free.give(start, end - start);
            }
        }
        for x in exclude {
            let end = x.end.checked_next_multiple_of(PAGE).unwrap_or(u64::MAX);
            free.carve(x.start & !(PAGE - 1), end);
        }
        let total = free.free_bytes();
        Self { free, total }
    }

    /// Bytes managed (free or not) since [`new`](Self::new).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes free now.
    pub fn free_bytes(&self) -> u64 {
        self.free.free_bytes()
    }

    /// The end of the highest free range.
    pub fn highest_free_end(&self) -> Option<u64> {
        self.free.iter().last().map(|(_, e)| e)
    }

    /// A block of `size` bytes (a power of two, at least a page) aligned to its size, taken out
    /// of the free ranges.
    pub fn take(&mut self, size: u64, placement: Placement) -> Option<u64> {
        if !size.is_power_of_two() || size < PAGE {
            return None;
        }
        match placement {
            Placement::Low => self.free.take_low(size, size),
            Placement::High => self.free.take_below(size, size, u64::MAX),
            Placement::Below(limit) => self.free.take_below(size, size, limit),
        }
    }

    /// Gives `[at, at + size)` back, merged with free neighbours.
    pub fn give(&mut self, at: u64, size: u64) {
        self.free.give(at, size);
    }
}

#[cfg(target_os = "none")]
pub(crate) use frames::init;
#[cfg(target_os = "none")]
pub use frames::{alloc, free, free_bytes, ram_end, total};

#[cfg(target_os = "none")]
mod frames {
    use super::{Placement, Ranges};
    use core::ops::Range;
    use core::sync::atomic::{AtomicU64, Ordering};

    static FRAMES: spin::Mutex<Option<Ranges>> = spin::Mutex::new(None);
    /// The end of the highest RAM managed, for tests that ask whether RAM exists above a line.
    static RAM_END: AtomicU64 = AtomicU64::new(0);

    /// Starts the allocator over `ram` minus `exclude`. Called once by the boot code, after
    /// the heap exists and before `kernel_main`.
    pub(crate) fn init(ram: impl Iterator<Item = Range<u64>>, exclude: &[Range<u64>]) {
        let ranges = Ranges::new(ram, exclude);
        RAM_END.store(ranges.highest_free_end().unwrap_or(0), Ordering::Relaxed);
        *FRAMES.lock() = Some(ranges);
    }

    /// A zero-filled block of `bytes` (a power of two, at least 4 KiB), aligned to its size,
    /// at `placement`; `None` when no free block fits. Identity-mapped: its physical address
    /// is also the CPU's pointer to it.
    pub fn alloc(bytes: u64, placement: Placement) -> Option<u64> {
        let at = FRAMES.lock().as_mut()?.take(bytes, placement)?;
        // SAFETY: the block is RAM inside the boot identity map (the boot code passed only
        // mapped RAM), just taken out of the free ranges, so nothing else uses it.
        unsafe { core::ptr::write_bytes(at as *mut u8, 0, bytes as usize) };
        Some(at)
    }

    /// Gives back a block [`alloc`] returned.
    ///
    /// # Safety
    ///
    /// `at` and `bytes` are those of a block `alloc` returned and not yet freed, and nothing
    /// (CPU or device) uses it any more.
    pub unsafe fn free(at: u64, bytes: u64) {
        if let Some(r) = FRAMES.lock().as_mut() {
            r.give(at, bytes);
        }
    }

    /// Bytes managed.
    pub fn total() -> u64 {
        FRAMES.lock().as_ref().map_or(0, Ranges::total)
    }

    /// Bytes free now.
    pub fn free_bytes() -> u64 {
        FRAMES.lock().as_ref().map_or(0, Ranges::free_bytes)
    }

    /// The first address past the highest RAM the allocator manages.
    pub fn ram_end() -> u64 {
        RAM_END.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
// One-range RAM maps and exclusion lists are what these tests mean, not array lengths.
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    fn q35_6g() -> Ranges {
        // q35 with 6 GiB: 2 GiB below the PCI hole, 4 GiB above 4 GiB; the kernel at 1 MiB.
        Ranges::new(
            [0..2 * G, 4 * G..8 * G].into_iter(),
            &[0..M, M..3 * M, 64 * G..u64::MAX],
        )
    }

    #[test]
    fn ram_minus_the_exclusions_in_whole_pages() {
        let r = Ranges::new([0x1800..0x10_0800].into_iter(), &[0x8000..0x8001]);
        assert_eq!(
            r.free.iter().collect::<alloc::vec::Vec<_>>(),
            [(0x2000, 0x8000), (0x9000, 0x10_0000)]
        );
        assert_eq!(r.total(), 0x6000 + 0xf_7000);
        assert_eq!(q35_6g().highest_free_end(), Some(8 * G));
    }

    #[test]
    fn placements_take_the_low_end_the_high_end_or_below_a_limit() {
        let mut r = q35_6g();
        assert_eq!(r.take(PAGE, Placement::Low), Some(3 * M));
        assert_eq!(
            r.take(2 * M, Placement::Low),
            Some(4 * M),
            "aligned to its size"
        );
        assert_eq!(r.take(PAGE, Placement::High), Some(8 * G - PAGE));
        // The top 64 MiB block holds that page now: the one below it.
        assert_eq!(r.take(64 * M, Placement::High), Some(8 * G - 128 * M));
        assert_eq!(
            r.take(PAGE, Placement::Below(1 << 28)),
            Some((1 << 28) - PAGE)
        );
        assert_eq!(r.take(PAGE, Placement::Below(4 * G)), Some(2 * G - PAGE));
        assert_eq!(
            r.take(PAGE, Placement::Below(M)),
            None,
            "nothing below 1 MiB"
        );
        assert_eq!(r.take(3 * PAGE, Placement::Low), None, "not a power of two");
        assert_eq!(r.take(1024, Placement::Low), None, "below a page");
    }

    #[test]
    fn exhaustion_then_frees_merge_back() {
        let mut r = Ranges::new([0..16 * PAGE].into_iter(), &[]);
        let blocks: alloc::vec::Vec<u64> = (0..16)
            .map(|_| r.take(PAGE, Placement::High).unwrap())
            .collect();
        assert_eq!(r.take(PAGE, Placement::Low), None);
        assert_eq!(r.free_bytes(), 0);
        for b in blocks {
            r.give(b, PAGE);
        }
        assert_eq!(r.free.iter().count(), 1, "merged into one range");
        assert_eq!(r.take(16 * PAGE, Placement::Low), Some(0));
    }
}
