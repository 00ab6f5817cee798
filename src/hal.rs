//! The services an embedder provides to the driver: table memory, address translation and cache
//! maintenance, through one small trait, [`Hal`].
//!
//! The crate never allocates on its own (no global allocator): every frame an I/O page table or a
//! hardware queue lives in comes from [`Hal::alloc_frame`] and goes back through
//! [`Hal::free_frame`]. With the `host-hal` feature, `host::HostHal` implements the trait over
//! the host's allocator for tests and benchmarks.

use core::fmt;
use core::ptr::NonNull;

use crate::addr::PhysAddr;

/// The size of a naturally aligned frame: a power of two of at least 4 KiB.
///
/// The page-table engine asks for its format's granule (4, 16 or 64 KiB) and, for an Arm stage-2
/// table whose first level is made of concatenated tables, for up to 16 granules at once
/// (VMSAv8-64 D8.2.2, "concatenated translation tables"). Back-ends may ask for larger frames for
/// queues and stream tables.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameSize(u8);

impl FrameSize {
    /// 4 KiB: the only table size of the x86 and VT-d formats, and Arm's 4K granule.
    pub const SIZE_4K: Self = Self(12);
    /// 16 KiB: Arm's 16K granule.
    pub const SIZE_16K: Self = Self(14);
    /// 64 KiB: Arm's 64K granule.
    pub const SIZE_64K: Self = Self(16);

    /// The frame of `1 << log2` bytes, for `log2` in 12..=30 (4 KiB to 1 GiB).
    pub const fn from_log2(log2: u32) -> Option<Self> {
        if log2 >= 12 && log2 <= 30 {
            Some(Self(log2 as u8))
        } else {
            None
        }
    }

    /// log2 of the size in bytes.
    #[inline(always)]
    pub const fn log2(self) -> u32 {
        self.0 as u32
    }

    /// The size in bytes; the frame is aligned to it.
    #[inline(always)]
    pub const fn bytes(self) -> usize {
        1 << self.0
    }
}

impl fmt::Debug for FrameSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes();
        if bytes >= 1 << 20 {
            write!(f, "FrameSize({} MiB)", bytes >> 20)
        } else {
            write!(f, "FrameSize({} KiB)", bytes >> 10)
        }
    }
}

/// What the embedder provides: frames for tables and queues, the physical/virtual correspondence
/// of those frames, and cache maintenance for IOMMUs whose table walks do not snoop CPU caches.
///
/// Calls may come from several CPUs at once (the page-table engine maps and unmaps without a
/// lock), so an implementation shared between CPUs must be `Sync` and its allocator thread-safe.
///
/// # Safety
///
/// The driver builds references to frame memory from what this trait returns, so an
/// implementation must guarantee:
/// - [`alloc_frame`](Hal::alloc_frame) returns a frame of exactly the requested size, aligned to
///   that size, zero-filled, and not in use by anything else until it is passed to
///   [`free_frame`](Hal::free_frame);
/// - for such a frame, [`phys_to_virt`](Hal::phys_to_virt) of any address inside it returns a
///   pointer through which the CPU may read and write the frame (including with 64-bit atomic
///   accesses), and [`virt_to_phys`] is its inverse;
/// - the physical address is the one the IOMMU's table walker must be given to reach the same
///   memory.
///
/// [`virt_to_phys`]: Hal::virt_to_phys
pub unsafe trait Hal {
    /// Allocates a zero-filled frame of `size` bytes aligned to `size`, or `None` when memory
    /// is exhausted (which the caller reports as a typed error, never a panic).
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr>;

    /// Returns a frame to the allocator.
    ///
    /// # Safety
    ///
    /// `frame` was returned by [`alloc_frame`](Hal::alloc_frame) of this HAL with the same
    /// `size`, has not been freed since, and neither the CPU nor any device will access it again.
    unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize);

    /// The CPU's pointer to physical address `phys` of a frame this HAL allocated.
    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8>;

    /// The physical address of the CPU pointer `virt` into a frame this HAL allocated.
    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr;

    /// Makes the CPU's writes to `len` bytes at `virt` visible to a table walker that does not
    /// snoop CPU caches, and waits until they are: on Arm `DC CVAC` over the range then `DSB`,
    /// on x86 `CLFLUSHOPT`/`CLWB` then `SFENCE`.
    ///
    /// Called only for tables built for a non-coherent walker (VT-d `ECAP.C` = 0, SMMU
    /// `IDR0.COHACC` = 0). The default does nothing, which is right for coherent walkers only.
    fn clean_to_poc(&self, virt: NonNull<u8>, len: usize) {
        let _ = (virt, len);
    }
}

// SAFETY: forwards every call to `T`, which upholds the contract.
unsafe impl<T: Hal + ?Sized> Hal for &T {
    #[inline(always)]
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        (**self).alloc_frame(size)
    }

    #[inline(always)]
    unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize) {
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { (**self).free_frame(frame, size) }
    }

    #[inline(always)]
    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        (**self).phys_to_virt(phys)
    }

    #[inline(always)]
    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        (**self).virt_to_phys(virt)
    }

    #[inline(always)]
    fn clean_to_poc(&self, virt: NonNull<u8>, len: usize) {
        (**self).clean_to_poc(virt, len)
    }
}

/// A [`Hal`] over the host's allocator, for tests and benchmarks on the build machine.
///
/// Physical address == virtual address. It counts live frames so tests can prove that every
/// table frame came back, checks that each free matches an allocation of the same size, and can
/// be told to run out of memory after a number of allocations.
#[cfg(all(feature = "host-hal", not(loom)))]
pub mod host {
    extern crate std;

    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::vec::Vec;

    use super::{FrameSize, Hal};
    use crate::addr::PhysAddr;

    /// One live frame: its size and the pointer the allocator returned.
    ///
    /// The pointer, not just its address, is kept so that every access to the frame (and its
    /// `dealloc`) can use the allocation's own provenance; see [`HostHal::phys_to_virt`].
    #[derive(Debug)]
    struct Frame {
        size: FrameSize,
        base: NonNull<u8>,
    }

    // SAFETY: `base` is only an address with provenance, never dereferenced through `Frame`; the
    // frame's memory is shared between threads under the `Hal` contract like any table memory.
    unsafe impl Send for Frame {}

    /// Host-memory frames with leak, double-free and size-mismatch detection.
    ///
    /// The counters are plain statistics read after the fact, so they use relaxed atomics; the
    /// frame map is behind a mutex because allocation is rare next to map/unmap. It is ordered
    /// by address so that Miri builds can find the frame holding any address (a range lookup).
    #[derive(Debug)]
    pub struct HostHal {
        frames: Mutex<BTreeMap<u64, Frame>>,
        live: AtomicUsize,
        allocations: AtomicUsize,
        cleans: AtomicUsize,
        invalidations: AtomicUsize,
        budget: AtomicUsize,
    }

    impl Default for HostHal {
        fn default() -> Self {
            Self::new()
        }
    }

    impl HostHal {
        /// A HAL with unlimited memory.
        pub fn new() -> Self {
            Self::with_budget(usize::MAX)
        }

        /// A HAL that fails every allocation after `allocations` successful ones.
        pub fn with_budget(allocations: usize) -> Self {
            Self {
                frames: Mutex::new(BTreeMap::new()),
                live: AtomicUsize::new(0),
                allocations: AtomicUsize::new(0),
                cleans: AtomicUsize::new(0),
                invalidations: AtomicUsize::new(0),
                budget: AtomicUsize::new(allocations),
            }
        }

        /// Allows `allocations` more successful allocations from now on.
        pub fn set_budget(&self, allocations: usize) {
            self.budget.store(allocations, Ordering::Relaxed);
        }

        /// Frames allocated and not yet freed.
        pub fn live_frames(&self) -> usize {
            self.live.load(Ordering::Relaxed)
        }

        /// Successful allocations so far.
        pub fn allocations(&self) -> usize {
            self.allocations.load(Ordering::Relaxed)
        }

        /// Runs `op` with the N-th frame allocation failing, N = 0, 1, 2, ... (at most 64),
        /// until it succeeds, and returns what it returned: an allocation-failure sweep. Each
        /// failure must be one `out_of_memory` accepts and leave the live frames as they were
        /// or, with `keeps_tables` (an operation that links tables its retry reuses), not
        /// fewer. Panics (it is a test's helper) naming `what` otherwise.
        pub fn sweep<T, E: core::fmt::Debug>(
            &self,
            what: &str,
            keeps_tables: bool,
            out_of_memory: impl Fn(&E) -> bool,
            mut op: impl FnMut() -> Result<T, E>,
        ) -> T {
            for n in 0..64 {
                let before = self.live_frames();
                self.set_budget(n);
                let r = op();
                self.set_budget(usize::MAX);
                let e = match r {
                    Ok(t) => return t,
                    Err(e) => e,
                };
                assert!(
                    out_of_memory(&e),
                    "{what}: allocation {n} failing gave {e:?}"
                );
                if keeps_tables {
                    assert!(
                        self.live_frames() >= before,
                        "{what}: allocation {n} failing ({e:?}) freed frames in use"
                    );
                } else {
                    assert_eq!(
                        self.live_frames(),
                        before,
                        "{what}: allocation {n} failing ({e:?}) leaked frames"
                    );
                }
            }
            panic!("{what}: never succeeds");
        }

        /// Calls to [`Hal::clean_to_poc`] and `DmaHal::clean_for_device` so far.
        pub fn cleans(&self) -> usize {
            self.cleans.load(Ordering::Relaxed)
        }

        /// Calls to `DmaHal::invalidate_for_cpu` so far.
        pub fn invalidations(&self) -> usize {
            self.invalidations.load(Ordering::Relaxed)
        }

        fn layout(size: FrameSize) -> Layout {
            // A power of two between 4 KiB and 1 GiB is always a valid size and alignment.
            match Layout::from_size_align(size.bytes(), size.bytes()) {
                Ok(l) => l,
                Err(_) => unreachable!("FrameSize is a power of two below 2^31"),
            }
        }

        /// The address of `p` as its "physical address". Natively an `as` cast, which exposes
        /// the provenance for `phys_to_virt`'s cast back; under Miri only the address, so that
        /// nothing can reach a frame except through the pointer `phys_to_virt` derives.
        #[inline(always)]
        fn address(p: NonNull<u8>) -> u64 {
            #[cfg(not(miri))]
            return p.as_ptr() as u64;
            #[cfg(miri)]
            return p.as_ptr().addr() as u64;
        }

        /// Under Miri: the pointer to `phys` derived from the allocation of the frame holding
        /// it, or `None` if no live frame does.
        #[cfg(miri)]
        fn frame_pointer(&self, phys: PhysAddr) -> Option<NonNull<u8>> {
            let frames = self.lock();
            let (&start, frame) = frames.range(..=phys.as_u64()).next_back()?;
            let offset = usize::try_from(phys.as_u64() - start).ok()?;
            if offset >= frame.size.bytes() {
                return None;
            }
            // SAFETY: `offset` is inside the frame's allocation (checked just above).
            Some(unsafe { frame.base.add(offset) })
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Frame>> {
            // A test that panicked while holding the lock must not hide later reports.
            self.frames.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    // SAFETY: frames come from `alloc_zeroed` with size == alignment, are owned by the map until
    // freed, and the identity mapping makes `phys_to_virt`/`virt_to_phys` exact inverses.
    unsafe impl Hal for HostHal {
        fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
            let granted = self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
            if granted.is_err() {
                return None;
            }
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { alloc_zeroed(Self::layout(size)) };
            let base = NonNull::new(ptr)?;
            let phys = Self::address(base);
            self.lock().insert(phys, Frame { size, base });
            self.live.fetch_add(1, Ordering::Relaxed);
            self.allocations.fetch_add(1, Ordering::Relaxed);
            Some(PhysAddr::new(phys))
        }

        unsafe fn free_frame(&self, frame: PhysAddr, size: FrameSize) {
            let base = match self.lock().remove(&frame.as_u64()) {
                Some(f) if f.size == size => f.base,
                Some(f) => panic!(
                    "HostHal: {frame:?} allocated as {:?}, freed as {size:?}",
                    f.size
                ),
                None => panic!("HostHal: double free or foreign frame {frame:?}"),
            };
            self.live.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: the frame was allocated with this layout and is no longer used (caller).
            unsafe { dealloc(base.as_ptr(), Self::layout(size)) }
        }

        /// The frame's pointer, with the provenance of its allocation.
        ///
        /// Natively this is the integer-to-pointer cast of the identity mapping: `alloc_frame`
        /// and `virt_to_phys` expose every pointer they turn into an address (an `as` cast
        /// does), so the cast is sound, and it costs nothing in the benchmarks. Under Miri the
        /// cast would leave every table access with a guessed provenance (Miri warns that it
        /// may then miss pointer bugs, and cannot tell one frame's pointer from a neighbour's).
        /// So there the address is looked up in the frame map and the pointer derived from the
        /// allocation's own: an access past the frame is then out of bounds for Miri, and an
        /// access to a freed frame is a use after free. `with_exposed_provenance` would not
        /// check that much: it picks any exposed allocation the address falls in.
        #[inline(always)]
        fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
            #[cfg(miri)]
            if let Some(p) = self.frame_pointer(phys) {
                return p;
            }
            // Not a frame of ours under Miri (a test's own DMA buffer, whose address the test
            // exposed): the identity mapping as natively.
            match NonNull::new(phys.as_u64() as *mut u8) {
                Some(p) => p,
                None => panic!("HostHal: no frame at physical address 0"),
            }
        }

        #[inline(always)]
        fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
            PhysAddr::new(Self::address(virt))
        }

        fn clean_to_poc(&self, _virt: NonNull<u8>, _len: usize) {
            self.cleans.fetch_add(1, Ordering::Relaxed);
        }
    }

    // SAFETY: host memory is identity-mapped: a buffer's pointer is its physical address, so
    // `phys_to_virt` of its first byte reaches all of it.
    unsafe impl crate::dma::DmaHal for HostHal {
        fn clean_for_device(&self, _virt: NonNull<u8>, _len: usize) {
            self.cleans.fetch_add(1, Ordering::Relaxed);
        }

        fn invalidate_for_cpu(&self, _virt: NonNull<u8>, _len: usize) {
            self.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Drop for HostHal {
        /// Returns whatever is still allocated (frames a test deliberately leaked): nothing
        /// walks host memory once the HAL itself is gone.
        fn drop(&mut self) {
            let frames: Vec<Frame> = core::mem::take(&mut *self.lock()).into_values().collect();
            for Frame { size, base } in frames {
                // SAFETY: allocated by `alloc_frame` with this layout; nobody holds it any more
                // because the HAL, which every table borrows, is being dropped.
                unsafe { dealloc(base.as_ptr(), Self::layout(size)) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(FrameSize::SIZE_4K.bytes(), 4096);
        assert_eq!(FrameSize::SIZE_16K.bytes(), 16384);
        assert_eq!(FrameSize::SIZE_64K.bytes(), 65536);
        assert_eq!(FrameSize::from_log2(11), None);
        assert_eq!(FrameSize::from_log2(31), None);
        assert_eq!(FrameSize::from_log2(16), Some(FrameSize::SIZE_64K));
    }
}
