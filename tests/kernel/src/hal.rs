//! The test kernels' [`Hal`]: frames from all of RAM through the boot code's frame allocator
//! (`iommu_boot::memory`), identity-mapped (physical address == virtual address) as normal
//! write-back memory; from the low end, or from the high end when the command line says
//! `mem.high=1`.
//!
//! Cache maintenance: QEMU's IOMMUs read guest memory directly (QEMU models no caches), but the
//! code still cleans where the hardware says walks are not coherent, as a driver must on real
//! hardware; on x86 with `clflush`, on aarch64 with `dc cvac` + `dsb`.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use iommu::addr::PhysAddr;
use iommu::dma::DmaHal;
use iommu::hal::{FrameSize, Hal};
use iommu_boot::memory::{self, Placement};

/// Frames from the boot frame allocator. Counts live frames so tests can check nothing leaks,
/// and remembers the lowest frame it gave so a test can check where frames came from.
#[derive(Debug)]
pub struct KernelHal {
    /// Frames handed out and not yet returned: a statistic, read after the fact (relaxed).
    live: AtomicUsize,
    /// Take frames from the high end of RAM (set once at start from `mem.high`).
    high: AtomicBool,
    /// The lowest address of any frame handed out (a statistic, relaxed).
    lowest: AtomicU64,
}

impl KernelHal {
    pub const fn new() -> Self {
        Self {
            live: AtomicUsize::new(0),
            high: AtomicBool::new(false),
            lowest: AtomicU64::new(u64::MAX),
        }
    }

    /// Frames allocated and not yet freed.
    pub fn live_frames(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// From now on, frames come from the high end of RAM (`true`) or the low end.
    pub fn prefer_high(&self, high: bool) {
        self.high.store(high, Ordering::Relaxed);
    }

    /// The lowest address of any frame handed out so far (`u64::MAX` before the first).
    pub fn lowest_frame(&self) -> u64 {
        self.lowest.load(Ordering::Relaxed)
    }
}

impl Default for KernelHal {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: frames come from the boot frame allocator, naturally aligned to their size,
// zero-filled, and not reused until freed; RAM is identity-mapped, so phys_to_virt/virt_to_phys
// are identities and the physical address is what the IOMMU walks.
unsafe impl Hal for KernelHal {
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        let placement = if self.high.load(Ordering::Relaxed) {
            Placement::High
        } else {
            Placement::Low
        };
        let at = memory::alloc(size.bytes() as u64, placement)?;
        self.live.fetch_add(1, Ordering::Relaxed);
        self.lowest.fetch_min(at, Ordering::Relaxed);
        Some(PhysAddr::new(at))
    }

    unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `frame` came from `alloc_frame` with this size, hence
        // from `memory::alloc` with these bytes, and that nothing uses it any more.
        unsafe { memory::free(frame.as_u64(), size.bytes() as u64) }
    }

    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        NonNull::new(phys.as_u64() as *mut u8).unwrap_or(NonNull::dangling())
    }

    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        PhysAddr::new(virt.as_ptr() as u64)
    }

    fn clean_to_poc(&self, virt: NonNull<u8>, len: usize) {
        by_line(virt, len, LineOp::Clean);
    }
}

// SAFETY: RAM is identity-mapped as one contiguous linear map, so `phys_to_virt` of a buffer's
// first byte reaches all of it.
unsafe impl DmaHal for KernelHal {
    fn clean_for_device(&self, virt: NonNull<u8>, len: usize) {
        by_line(virt, len, LineOp::Clean);
    }

    fn invalidate_for_cpu(&self, virt: NonNull<u8>, len: usize) {
        by_line(virt, len, LineOp::CleanInvalidate);
    }
}

/// What to do with each cache line.
#[derive(Clone, Copy)]
enum LineOp {
    /// Write back (x86 `clflush`, Arm `dc cvac`).
    Clean,
    /// Write back and discard (x86 `clflush`, Arm `dc civac`).
    CleanInvalidate,
}

/// `op` on every cache line of `len` bytes at `virt`, then a barrier that waits for them.
fn by_line(virt: NonNull<u8>, len: usize, op: LineOp) {
    const LINE: usize = 64;
    let start = virt.as_ptr() as usize & !(LINE - 1);
    let end = virt.as_ptr() as usize + len;
    for line in (start..end).step_by(LINE) {
        #[cfg(target_arch = "x86_64")]
        {
            let _ = op;
            // SAFETY: `line` is inside mapped RAM (a frame or buffer handed to the driver);
            // clflush only writes the line back and drops it.
            unsafe { core::arch::x86_64::_mm_clflush(line as *const u8) };
        }
        #[cfg(target_arch = "aarch64")]
        match op {
            // SAFETY: as above; `dc cvac` cleans one line to the point of coherency.
            LineOp::Clean => unsafe {
                core::arch::asm!("dc cvac, {}", in(reg) line, options(nostack, preserves_flags))
            },
            // SAFETY: as above; `dc civac` cleans and invalidates one line (never losing data a
            // CPU wrote, unlike `dc ivac`).
            LineOp::CleanInvalidate => unsafe {
                core::arch::asm!("dc civac, {}", in(reg) line, options(nostack, preserves_flags))
            },
        }
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a fence has no memory-safety preconditions.
    unsafe {
        core::arch::x86_64::_mm_mfence()
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier has no memory-safety preconditions.
    unsafe {
        core::arch::asm!("dsb ish", options(nostack, preserves_flags))
    };
}

/// The kernel's one HAL; shared by every unit and domain of a test.
pub static HAL: KernelHal = KernelHal::new();
