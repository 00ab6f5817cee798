//! DMA tests written once over the core's [`TranslationUnit`] interface and run on both back-ends:
//! the `edu` device's DMA engine is the probe, the emulated IOMMU the judge.
//!
//! The runner starts the `edu` devices with `dma_mask=0xffffffffffffffff` (the default masks
//! DMA addresses to 28 bits, silently).

use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use crate::platform::EduDevice;
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, FaultKind, FaultRecord, Stage, TranslationUnit};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq};

/// Input address bits of the test domains: within every machine of the matrix (VT-d aw-bits=39).
pub const IA_BITS: u32 = 39;
/// IOVAs the tests map. What matters is only that they are in the domains' input range.
pub const IOVA_A: u64 = 0x0ab0_0000;
pub const IOVA_B: u64 = 0x0cd0_0000;

/// A 4 KiB, page-aligned DMA buffer from the identity-mapped heap (physical == virtual).
pub struct DmaBuffer {
    ptr: NonNull<u8>,
}

const PAGE: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("4 KiB page layout"),
};

impl DmaBuffer {
    pub fn new(fill: u8) -> Result<Self, iommu_boot::testing::Failure> {
        // SAFETY: PAGE has a non-zero size.
        let p = unsafe { alloc::alloc::alloc(PAGE) };
        let ptr = NonNull::new(p).ok_or_else(|| fail("out of heap for a DMA buffer"))?;
        let b = Self { ptr };
        b.fill(fill);
        Ok(b)
    }

    pub fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.ptr.as_ptr() as u64)
    }

    /// Reads byte `i` as the device left it (volatile: DMA writes behind the compiler's back).
    pub fn get(&self, i: usize) -> u8 {
        // SAFETY: i is reduced into the 4 KiB the buffer owns.
        unsafe { self.ptr.as_ptr().add(i % 4096).read_volatile() }
    }

    pub fn set(&self, i: usize, v: u8) {
        // SAFETY: as in `get`.
        unsafe { self.ptr.as_ptr().add(i % 4096).write_volatile(v) }
    }

    pub fn fill(&self, v: u8) {
        (0..4096).for_each(|i| self.set(i, v));
    }

    /// Whether bytes `range` all equal `v`.
    pub fn all(&self, range: core::ops::Range<usize>, v: u8) -> bool {
        range.into_iter().all(|i| self.get(i) == v)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with PAGE.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), PAGE) }
    }
}

/// What a test needs from the architecture: the unit, its edu devices, and how the unit names
/// each device.
pub struct Rig<'u, U: TranslationUnit> {
    pub unit: &'u U,
    pub edus: Vec<EduDevice>,
    pub device_id: fn(&EduDevice) -> DeviceId,
    /// The stage the unit's paging domains use by default on this machine.
    pub stage: Stage,
}

impl<U: TranslationUnit> Rig<'_, U> {
    fn edu(&self, i: usize) -> Result<&EduDevice, iommu_boot::testing::Failure> {
        self.edus
            .get(i)
            .ok_or_else(|| fail(alloc::format!("needs {} edu devices", i + 1)))
    }

    /// A new paging domain of the rig's stage with each `(iova, buffer, prot)` page mapped.
    pub fn domain_with(
        &self,
        pages: &[(u64, &DmaBuffer, Prot)],
    ) -> Result<U::Domain, iommu_boot::testing::Failure> {
        let domain = self.unit.new_domain(self.stage, IA_BITS).map_err(fail)?;
        for &(iova, buf, prot) in pages {
            self.unit
                .map(&domain, Iova::new(iova), buf.phys(), 4096, prot)
                .map_err(fail)?;
        }
        Ok(domain)
    }

    /// Faults recorded since the last call.
    pub fn faults(&self) -> Result<Vec<FaultRecord>, iommu_boot::testing::Failure> {
        let mut v = Vec::new();
        self.unit.drain_faults(&mut |f| v.push(f)).map_err(fail)?;
        Ok(v)
    }

    /// Fails unless a fault of `kind` by device `dev` at `iova` (page granular) was recorded.
    pub(crate) fn expect_fault(
        &self,
        dev: DeviceId,
        iova: u64,
        write: bool,
        kind: FaultKind,
    ) -> TestResult {
        let faults = self.faults()?;
        let hit = faults.iter().any(|f| {
            f.device == dev
                && f.address & !0xfff == iova & !0xfff
                && f.write == write
                && f.kind == kind
        });
        ensure!(
            hit,
            "expected a {kind:?} {} fault by {dev:?} at {iova:#x}, got {faults:?}",
            if write { "write" } else { "read" }
        );
        Ok(())
    }
}

/// edu copies 64 bytes from RAM through `iova` into its buffer, then back out to RAM at
/// `iova + 2048`.
fn round_trip(edu: &EduDevice, iova: u64) -> TestResult {
    edu.edu.dma_from_ram(iova, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, iova + 2048, 64).map_err(fail)
}

/// edu reads 64 bytes through `at` (mapped to a page filled with `fill`) and writes them
/// through IOVA_A into the second half of `kept`: the DMA through `at` landed if they arrive.
fn dma_through_lands(edu: &EduDevice, at: u64, kept: &DmaBuffer, fill: u8) -> TestResult {
    kept.fill(0);
    edu.edu.dma_from_ram(at, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    ensure!(
        (2048..2048 + 64).all(|j| kept.get(j) == fill),
        "DMA through {at:#x} did not land"
    );
    Ok(())
}

/// A round trip through `kept`, mapped at IOVA_A, still lands (`after` says after what).
fn kept_page_lands(edu: &EduDevice, kept: &DmaBuffer, after: &str) -> TestResult {
    kept.fill(0);
    (0..64).for_each(|i| kept.set(i, 0x40 + i as u8));
    round_trip(edu, IOVA_A)?;
    ensure!(
        (0..64).all(|i| kept.get(2048 + i) == 0x40 + i as u8),
        "DMA through the kept page did not land after {after}"
    );
    Ok(())
}

/// 1. A mapped IOVA: DMA reads and writes land in the right physical page.
pub fn mapped_dma_lands<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let buf = DmaBuffer::new(0)?;
    (0..64).for_each(|i| buf.set(i, 0xa0 + i as u8));
    let domain = r.domain_with(&[(IOVA_A, &buf, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    round_trip(edu, IOVA_A)?;
    let landed = (0..64).all(|i| buf.get(2048 + i) == 0xa0 + i as u8);
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    ensure!(
        landed,
        "DMA through IOVA {IOVA_A:#x} did not land in page {:#x}",
        buf.phys().as_u64()
    );
    let faults = r.faults()?;
    ensure!(faults.is_empty(), "unexpected faults: {faults:?}");
    Ok(())
}

/// 2. An unmapped IOVA: blocked, memory untouched, the fault names the device, address, reason.
pub fn unmapped_dma_is_blocked_and_reported<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let mapped = DmaBuffer::new(0)?;
    // The IOVA is this page's own physical address: if translation were off, the write would
    // land here.
    let target = DmaBuffer::new(0x55)?;
    let iova = target.phys().as_u64();
    let domain = r.domain_with(&[(IOVA_A, &mapped, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    r.faults()?;
    edu.edu.dma_to_ram(0, iova, 64).map_err(fail)?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    ensure!(
        target.all(0..4096, 0x55),
        "a DMA write to an unmapped IOVA reached memory"
    );
    ensure!(
        mapped.all(0..4096, 0),
        "a DMA write to an unmapped IOVA reached the mapped page"
    );
    r.expect_fault(dev, iova, true, FaultKind::Translation)
}

/// 3. A read-only mapping: DMA reads work, DMA writes fault and change nothing.
pub fn read_only_mapping_blocks_writes<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let src = DmaBuffer::new(0x3c)?;
    let ro = DmaBuffer::new(0x77)?;
    let domain = r.domain_with(&[(IOVA_A, &src, Prot::READ), (IOVA_B, &ro, Prot::READ)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    r.faults()?;
    let read = edu.edu.dma_from_ram(IOVA_A, 0, 64);
    let read_faults = r.faults()?;
    let write = edu.edu.dma_to_ram(0, IOVA_B, 64);
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    read.map_err(fail)?;
    write.map_err(fail)?;
    ensure!(
        read_faults.is_empty(),
        "a read of a read-only page faulted: {read_faults:?}"
    );
    ensure!(
        ro.all(0..4096, 0x77),
        "a DMA write reached a read-only page"
    );
    r.expect_fault(dev, IOVA_B, true, FaultKind::Permission)
}

/// 4. Unmap, then DMA to the old IOVA: blocked. Catches a missing or wrong IOTLB invalidation,
///    since the first DMA left the translation cached.
pub fn no_stale_translation_after_unmap<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let buf = DmaBuffer::new(0x11)?;
    let domain = r.domain_with(&[(IOVA_A, &buf, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    round_trip(edu, IOVA_A)?;
    let unmapped = r
        .unit
        .unmap(&domain, Iova::new(IOVA_A), 4096)
        .map_err(fail)?;
    ensure_eq!(unmapped, 4096);
    buf.fill(0x22);
    r.faults()?;
    edu.edu.dma_to_ram(0, IOVA_A, 64).map_err(fail)?;
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    ensure!(
        buf.all(0..4096, 0x22),
        "DMA after unmap reached the old page: stale IOTLB entry"
    );
    r.expect_fault(dev, IOVA_A, true, FaultKind::Translation)
}

/// 5. Two devices in two domains with the same IOVA: each reaches only its own page; a third
///    device never attached is blocked.
pub fn devices_in_different_domains_are_isolated<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    let (e0, e1, e2) = (r.edu(0)?, r.edu(1)?, r.edu(2)?);
    let (d0, d1, d2) = ((r.device_id)(e0), (r.device_id)(e1), (r.device_id)(e2));
    let (b0, b1) = (DmaBuffer::new(0)?, DmaBuffer::new(0)?);
    let dom0 = r.domain_with(&[(IOVA_A, &b0, Prot::READ_WRITE)])?;
    let dom1 = r.domain_with(&[(IOVA_A, &b1, Prot::READ_WRITE)])?;
    r.unit.attach(d0, Attachment::Paging(&dom0)).map_err(fail)?;
    r.unit.attach(d1, Attachment::Paging(&dom1)).map_err(fail)?;
    r.faults()?;
    // Each device writes its own pattern into its buffer at offset 0.
    b0.fill(0xd0);
    e0.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    b1.fill(0xd1);
    e1.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    b0.fill(0);
    b1.fill(0);
    e0.edu.dma_to_ram(0, IOVA_A, 64).map_err(fail)?;
    e1.edu.dma_to_ram(0, IOVA_A, 64).map_err(fail)?;
    // The never-attached device tries the same IOVA and its own physical page.
    let victim = DmaBuffer::new(0x99)?;
    e2.edu
        .dma_to_ram(0, victim.phys().as_u64(), 64)
        .map_err(fail)?;
    r.unit.attach(d0, Attachment::Blocking).map_err(fail)?;
    r.unit.attach(d1, Attachment::Blocking).map_err(fail)?;
    ensure!(b0.all(0..64, 0xd0), "device 0 did not reach its own page");
    ensure!(
        b1.all(0..64, 0xd1),
        "device 1 did not reach its own page (or reached device 0's)"
    );
    ensure!(
        victim.all(0..4096, 0x99),
        "a never-attached device's DMA reached memory"
    );
    let faults = r.faults()?;
    ensure!(
        faults.iter().any(|f| f.device == d2) && faults.iter().all(|f| f.device == d2),
        "expected faults from the unattached device {d2:?} only, got {faults:?}"
    );
    Ok(())
}

/// Invalidation commands and completion waits (VT-d wait descriptors, SMMU `CMD_SYNC`s) the
/// unit issued while a closure ran, as the back-end counts them.
pub type InvalidationCounter<'a> =
    &'a dyn Fn(&mut dyn FnMut() -> TestResult) -> Result<(u64, u64), iommu_boot::testing::Failure>;

/// Deferred unmaps (`TranslationUnit::unmap_deferred` + one `flush_deferred`): edu's DMA to 16
/// mapped pages lands; the 16 pages are unmapped into one gather and flushed once, which costs
/// exactly one invalidation command and one wait (strict unmaps of the same pages: 16 of each);
/// afterwards DMA to each page faults, is reported, and reaches nothing (the first DMAs left the
/// translations cached, so a missing or partial flush lets a write through).
pub fn deferred_unmaps_fault_after_one_flush<U: TranslationUnit>(
    r: &Rig<U>,
    count: InvalidationCounter<'_>,
) -> TestResult {
    use iommu::pagetable::Gather;
    const PAGES: u64 = 16;
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let bufs = (0..PAGES)
        .map(|_| DmaBuffer::new(0))
        .collect::<Result<Vec<_>, _>>()?;
    let source = DmaBuffer::new(0)?;
    (0..64).for_each(|i| source.set(i, 0x40 + i as u8));
    let iova = |i: u64| IOVA_A + 0x1000 + i * 4096;
    let mut pages = alloc::vec![(IOVA_A, &source, Prot::READ)];
    pages.extend((0..PAGES).map(|i| (iova(i), &bufs[i as usize], Prot::READ_WRITE)));
    let domain = r.domain_with(&pages)?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    let outcome = (|| {
        r.faults()?;
        edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
        for (i, b) in bufs.iter().enumerate() {
            edu.edu.dma_to_ram(0, iova(i as u64), 64).map_err(fail)?;
            ensure!(
                (0..64).all(|j| b.get(j) == 0x40 + j as u8),
                "DMA to page {i} at {:#x} did not land",
                iova(i as u64)
            );
        }

        let mut gather = Gather::new();
        let mut unmapped = 0;
        let deferred = count(&mut || {
            for i in 0..PAGES {
                unmapped += r
                    .unit
                    .unmap_deferred(&domain, Iova::new(iova(i)), 4096, &mut gather)
                    .map_err(fail)?;
            }
            r.unit
                .flush_deferred(&domain, core::mem::take(&mut gather))
                .map_err(fail)
        })?;
        ensure_eq!(unmapped, PAGES * 4096, "bytes unmapped");

        for (i, b) in bufs.iter().enumerate() {
            b.fill(0x22);
            edu.edu.dma_to_ram(0, iova(i as u64), 64).map_err(fail)?;
            ensure!(
                b.all(0..4096, 0x22),
                "DMA after the deferred unmap and flush reached page {i}: stale translation"
            );
            r.expect_fault(dev, iova(i as u64), true, FaultKind::Translation)?;
        }

        // The same pages, strict: an invalidation and a wait per unmap.
        for (i, b) in bufs.iter().enumerate() {
            r.unit
                .map(
                    &domain,
                    Iova::new(iova(i as u64)),
                    b.phys(),
                    4096,
                    Prot::READ_WRITE,
                )
                .map_err(fail)?;
        }
        let strict = count(&mut || {
            for i in 0..PAGES {
                r.unit
                    .unmap(&domain, Iova::new(iova(i)), 4096)
                    .map_err(fail)?;
            }
            Ok(())
        })?;
        iommu_boot::println!(
            "invalidations / waits: {PAGES} deferred unmaps + one flush {deferred:?}, \
             {PAGES} strict unmaps {strict:?}"
        );
        ensure_eq!(deferred, (1, 1), "deferred: one invalidation and one wait");
        ensure_eq!(
            strict,
            (PAGES, PAGES),
            "strict: one invalidation and one wait each"
        );
        Ok(())
    })();
    let blocked = r.unit.attach(dev, Attachment::Blocking);
    outcome?;
    blocked.map_err(fail)?;
    r.unit.destroy_domain(domain).map_err(|(_, e)| fail(e))
}

/// Tables that unmaps left empty (`TranslationUnit::reclaim_tables`): a 4 KiB page is mapped at
/// 16 IOVAs 2 MiB apart in turn, edu's DMA through each lands (the walk is cached) and each is
/// unmapped, leaving its leaf table empty in place. The reclaim frees exactly those 16 tables
/// with one invalidation and one wait, keeps 8 frames for the domain's next tables and gives the
/// rest back; afterwards edu's DMA through the kept page still lands and DMA to each of the 16
/// IOVAs faults and reaches nothing (no walk through a freed table survives). A second reclaim
/// finds nothing and asks nothing of the hardware.
pub fn emptied_tables_are_reclaimed<U: TranslationUnit>(
    r: &Rig<U>,
    count: InvalidationCounter<'_>,
) -> TestResult {
    use crate::hal::HAL;
    use iommu::pagetable::CACHED_FRAMES;
    const ROUNDS: u64 = 16;
    /// Away from IOVA_A's and IOVA_B's 2 MiB regions, in the same 1 GiB table.
    const CHURN: u64 = 0x1000_0000;
    let iova = |i: u64| CHURN + i * (2 << 20);
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let (kept, churned) = (DmaBuffer::new(0)?, DmaBuffer::new(0x33)?);
    (0..64).for_each(|i| kept.set(i, 0x40 + i as u8));
    let mut domain = r.domain_with(&[(IOVA_A, &kept, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    let outcome = (|| {
        r.faults()?;
        let frames = HAL.live_frames();
        for i in 0..ROUNDS {
            r.unit
                .map(
                    &domain,
                    Iova::new(iova(i)),
                    churned.phys(),
                    4096,
                    Prot::READ,
                )
                .map_err(fail)?;
            dma_through_lands(edu, iova(i), &kept, 0x33)?;
            r.unit
                .unmap(&domain, Iova::new(iova(i)), 4096)
                .map_err(fail)?;
        }
        ensure_eq!(
            HAL.live_frames() - frames,
            ROUNDS as usize,
            "each unmap left its leaf table in place"
        );

        let mut freed = 0;
        let cost = count(&mut || {
            freed = r.unit.reclaim_tables(&mut domain).map_err(fail)?;
            Ok(())
        })?;
        iommu_boot::println!("reclaim: {freed} tables, invalidations / waits {cost:?}");
        ensure_eq!(freed, ROUNDS as usize, "tables freed");
        ensure_eq!(cost, (1, 1), "one invalidation and one wait");
        ensure_eq!(
            HAL.live_frames() - frames,
            CACHED_FRAMES.min(ROUNDS as usize),
            "frames kept for the domain's next tables, the rest given back"
        );

        kept_page_lands(edu, &kept, "the reclaim")?;
        for i in 0..ROUNDS {
            edu.edu.dma_from_ram(iova(i), 0, 64).map_err(fail)?;
            r.expect_fault(dev, iova(i), false, FaultKind::Translation)?;
        }
        let again = count(&mut || {
            ensure_eq!(r.unit.reclaim_tables(&mut domain).map_err(fail)?, 0);
            Ok(())
        })?;
        ensure_eq!(again, (0, 0), "nothing to free: nothing asked");
        Ok(())
    })();
    let blocked = r.unit.attach(dev, Attachment::Blocking);
    outcome?;
    blocked.map_err(fail)?;
    r.unit.destroy_domain(domain).map_err(|(_, e)| fail(e))
}

/// Pruning unmaps (`TranslationUnit::unmap_pruning`, what the object model's unmap uses): a
/// 4 KiB page is mapped at 16 IOVAs 2 MiB apart in turn, edu's DMA through each lands (the walk
/// is cached), and each is unmapped owning its 2 MiB region, which frees the leaf table with the
/// page: each unmap costs what a strict one does (one invalidation, walk caches included, and
/// one wait), and after the first round every leaf table comes from the domain's frame cache, so
/// the domain holds no more frames than before the churn plus that one cached frame. Afterwards
/// DMA to each IOVA faults and reaches nothing, edu's DMA through the kept page still lands, and
/// a reclaim finds nothing left to free.
pub fn pruning_unmaps_free_the_tables_they_empty<U: TranslationUnit>(
    r: &Rig<U>,
    count: InvalidationCounter<'_>,
) -> TestResult {
    use crate::hal::HAL;
    const ROUNDS: u64 = 16;
    const REGION: u64 = 2 << 20;
    /// Away from IOVA_A's and IOVA_B's 2 MiB regions, in the same 1 GiB table.
    const CHURN: u64 = 0x1000_0000;
    let iova = |i: u64| CHURN + i * REGION;
    let edu = r.edu(0)?;
    let dev = (r.device_id)(edu);
    let (kept, churned) = (DmaBuffer::new(0)?, DmaBuffer::new(0x5a)?);
    let mut domain = r.domain_with(&[(IOVA_A, &kept, Prot::READ_WRITE)])?;
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    let outcome = (|| {
        r.faults()?;
        let frames = HAL.live_frames();
        for i in 0..ROUNDS {
            let at = iova(i);
            r.unit
                .map(&domain, Iova::new(at), churned.phys(), 4096, Prot::READ)
                .map_err(fail)?;
            dma_through_lands(edu, at, &kept, 0x5a)?;
            let cost = count(&mut || {
                let owned = at..at + REGION;
                let bytes = r.unit.unmap_pruning(&domain, Iova::new(at), 4096, owned);
                ensure_eq!(bytes.map_err(fail)?, 4096);
                Ok(())
            })?;
            ensure_eq!(cost, (1, 1), "round {i}: one invalidation and one wait");
            ensure_eq!(
                HAL.live_frames() - frames,
                1,
                "round {i}: the leaf table freed into the domain's cache"
            );
        }
        iommu_boot::println!(
            "{ROUNDS} pruning unmaps: the domain's frames +1 (its cache), each 1 invalidation / 1 wait"
        );
        for i in 0..ROUNDS {
            edu.edu.dma_from_ram(iova(i), 0, 64).map_err(fail)?;
            r.expect_fault(dev, iova(i), false, FaultKind::Translation)?;
        }
        kept_page_lands(edu, &kept, "the churn")?;
        ensure_eq!(
            r.unit.reclaim_tables(&mut domain).map_err(fail)?,
            0,
            "nothing left to reclaim"
        );
        Ok(())
    })();
    let blocked = r.unit.attach(dev, Attachment::Blocking);
    outcome?;
    blocked.map_err(fail)?;
    r.unit.destroy_domain(domain).map_err(|(_, e)| fail(e))
}

/// The kind of domain [`model_with_domain`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DomainOf {
    /// A paging domain (`Iommu::alloc_domain`).
    Paging,
    /// A DMA API domain (`Iommu::alloc_dma_domain`).
    DmaApi,
}

/// An object model over the rig's unit, with `edu` claimed by `owner` (blocked) and a new
/// domain of `kind` over the whole input range, not attached yet.
fn model_with_domain<'u, U: TranslationUnit>(
    r: &Rig<'u, U>,
    edu: &EduDevice,
    owner: iommu::iommufd::OwnerId,
    kind: DomainOf,
) -> Result<
    (
        iommu::iommufd::Iommu<&'u U>,
        iommu::iommufd::DeviceHandle,
        iommu::iommufd::DomainId,
    ),
    iommu_boot::testing::Failure,
> {
    use iommu::iommufd::{GroupId, Iommu, Layout, Region};
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    io.allow_unsafe_interrupts(true);
    let dev = io
        .add_device(u, (r.device_id)(edu), GroupId(0))
        .map_err(fail)?;
    io.claim(dev, owner).map_err(fail)?;
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = match kind {
        DomainOf::Paging => io.alloc_domain(owner, u, r.stage, IA_BITS, &layout),
        DomainOf::DmaApi => io.alloc_dma_domain(owner, u, r.stage, IA_BITS, &layout),
    }
    .map_err(fail)?;
    Ok((io, dev, dom))
}

/// edu's DMA to each of `freed` faults, and a reclaim of `owner`'s domain `dom` finds no empty
/// table left.
fn faults_and_nothing_left<U: TranslationUnit>(
    r: &Rig<'_, U>,
    io: &mut iommu::iommufd::Iommu<&U>,
    owner: iommu::iommufd::OwnerId,
    dom: iommu::iommufd::DomainId,
    edu: &EduDevice,
    freed: impl IntoIterator<Item = u64>,
) -> TestResult {
    for at in freed {
        edu.edu.dma_from_ram(at, 0, 64).map_err(fail)?;
        r.expect_fault((r.device_id)(edu), at, false, FaultKind::Translation)?;
    }
    ensure_eq!(
        io.reclaim_tables(owner, dom).map_err(fail)?,
        0,
        "nothing left empty"
    );
    Ok(())
}

/// How [`object_model_unmaps_free_their_tables`] unmaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelUnmap {
    /// `Iommu::unmap`.
    Strict,
    /// `Iommu::unmap_deferred`, each flushed at once (`flush_deferred`).
    Deferred,
    /// `Iommu::unmap` on a domain whose sweep threshold is 1 (`Iommu::set_sweep_threshold`).
    SweptAtOnce,
}

/// The object model's unmaps free their tables: edu's domain keeps a page at IOVA_A; a page is
/// mapped and unmapped in turn at 8 (`PENDING_PRUNES`) IOVAs 2 MiB apart in an otherwise empty
/// 1 GiB region, edu's DMA through each landing.
/// - `Strict` (`Iommu::unmap`): each unmap frees its leaf table with the page's own invalidation
///   and wait; the 8th also sweeps the emptied 1 GiB table (one more invalidation and wait).
/// - `Deferred` (`Iommu::unmap_deferred`, then `flush_deferred`): the unmaps invalidate nothing
///   and leave their leaf tables, but the 8th sweeps them all with the 1 GiB table (one wait,
///   one or two invalidation commands for the hull of the 8 paths); each flush costs one
///   invalidation and wait.
/// - `SweptAtOnce` (`Iommu::unmap`, sweep threshold 1): each unmap frees its leaf table with its
///   own invalidation and wait, then sweeps the emptied 1 GiB table (one more of each), so
///   after every unmap nothing is left empty (a reclaim finds nothing).
///
/// Afterwards DMA to each IOVA faults, DMA through the kept page lands, and a reclaim finds
/// nothing left to free.
pub fn object_model_unmaps_free_their_tables<U: TranslationUnit>(
    r: &Rig<U>,
    count: InvalidationCounter<'_>,
    how: ModelUnmap,
) -> TestResult {
    use iommu::iommufd::{OwnerId, Target, PENDING_PRUNES};
    use iommu::pagetable::Gather;
    const A: OwnerId = OwnerId(1);
    /// A 1 GiB region of its own, away from IOVA_A's.
    const CHURN: u64 = 4 << 30;
    let iova = |i: u64| CHURN + i * (2 << 20);
    let edu = r.edu(0)?;
    let (mut io, dev, dom) = model_with_domain(r, edu, A, DomainOf::Paging)?;
    if how == ModelUnmap::SweptAtOnce {
        io.set_sweep_threshold(A, dom, core::num::NonZeroUsize::MIN)
            .map_err(fail)?;
    }
    let (kept, churned) = (DmaBuffer::new(0)?, DmaBuffer::new(0x6c)?);
    let outcome = (|| {
        io.map(
            A,
            dom,
            Iova::new(IOVA_A),
            kept.phys(),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
        io.attach(dev, A, Target::Domain(dom)).map_err(fail)?;
        r.faults()?;
        for i in 0..PENDING_PRUNES as u64 {
            let at = Iova::new(iova(i));
            io.map(A, dom, at, churned.phys(), 4096, Prot::READ)
                .map_err(fail)?;
            dma_through_lands(edu, iova(i), &kept, 0x6c)?;
            let sweep = u64::from(i + 1 == PENDING_PRUNES as u64);
            match how {
                ModelUnmap::Strict | ModelUnmap::SweptAtOnce => {
                    // With a threshold of 1 every unmap sweeps, and leaves nothing empty.
                    let at_once = how == ModelUnmap::SweptAtOnce;
                    let sweep = if at_once { 1 } else { sweep };
                    let cost = count(&mut || {
                        ensure_eq!(io.unmap(A, dom, at, 4096).map_err(fail)?, 4096);
                        Ok(())
                    })?;
                    ensure_eq!(
                        cost,
                        (1 + sweep, 1 + sweep),
                        "unmap {i} (and its sweep): invalidations / waits"
                    );
                    if at_once {
                        ensure_eq!(
                            io.reclaim_tables(A, dom).map_err(fail)?,
                            0,
                            "unmap {i}: nothing left empty"
                        );
                    }
                }
                ModelUnmap::Deferred => {
                    let mut g = Gather::new();
                    let cost = count(&mut || {
                        let bytes = io.unmap_deferred(A, dom, at, 4096, &mut g);
                        ensure_eq!(bytes.map_err(fail)?, 4096);
                        Ok(())
                    })?;
                    // The sweep's one wait; its invalidation covers the 8 paths' hull (7 stripes
                    // and a page), which may take two range commands (SMMUv3 with RIL).
                    let (invalidations, waits) = cost;
                    ensure_eq!(waits, sweep, "deferred unmap {i}: the sweep's wait alone");
                    ensure!(
                        (sweep..=2 * sweep).contains(&invalidations),
                        "deferred unmap {i}: {invalidations} invalidations, the sweep's alone"
                    );
                    let cost = count(&mut || {
                        io.flush_deferred(A, dom, core::mem::take(&mut g))
                            .map_err(fail)
                    })?;
                    ensure_eq!(cost, (1, 1), "flush {i}: invalidations / waits");
                }
            }
        }
        match how {
            ModelUnmap::Strict => iommu_boot::println!(
                "{PENDING_PRUNES} unmaps through the object model: 1 invalidation / 1 wait each, \
                 the last one's sweep 1 / 1 more"
            ),
            ModelUnmap::Deferred => iommu_boot::println!(
                "{PENDING_PRUNES} deferred unmaps through the object model: nothing but the last \
                 one's sweep (1 wait); each flush 1 invalidation / 1 wait"
            ),
            ModelUnmap::SweptAtOnce => iommu_boot::println!(
                "{PENDING_PRUNES} unmaps through the object model, sweep threshold 1: 2 \
                 invalidations / 2 waits each (the unmap and its sweep), nothing left empty"
            ),
        }
        kept_page_lands(edu, &kept, "the sweep")?;
        faults_and_nothing_left(
            r,
            &mut io,
            A,
            dom,
            edu,
            (0..PENDING_PRUNES as u64).map(iova),
        )
    })();
    let released = io.release(dev, A);
    let destroyed = io.destroy_domain(A, dom);
    outcome?;
    released.map_err(fail)?;
    destroyed.map_err(fail)
}

/// The DMA API frees the tables its freed IOVAs emptied (`DmaDevice` over a DMA API domain):
/// 8 (`PENDING_PRUNES`) buffers of 2 MiB (too large for the handle's IOVA caches) get IOVAs in 8
/// blocks below 4 GiB, each in a leaf table of its own (the memory sits a page off 2 MiB, so no
/// block entries), and edu's DMA through each translates (no fault). Each strict unmap frees
/// its leaf table with its own invalidation and wait; the 8th IOVA back in the allocator's
/// ranges makes the handle free the tables above them (one more wait, one or two invalidation
/// commands for the places' hull). Afterwards DMA to each faults and a reclaim finds nothing
/// left to free.
pub fn dma_api_frees_the_tables_its_freed_iovas_emptied<U>(
    r: &Rig<U>,
    count: InvalidationCounter<'_>,
) -> TestResult
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    use iommu::dma::{Config, Direction, DmaDevice};
    use iommu::iommufd::{OwnerId, Target, PENDING_PRUNES};
    use iommu_boot::memory::{self, Placement};
    const A: OwnerId = OwnerId(1);
    const M2: u64 = 2 << 20;
    let edu = r.edu(0)?;
    let ram = memory::alloc(2 * M2, Placement::High).ok_or_else(|| {
        iommu_boot::testing::Failure::Skipped("no 4 MiB of RAM for a 2 MiB buffer".into())
    })?;
    let buffer = PhysAddr::new(ram + 4096);
    let (mut io, dev, dom) = model_with_domain(r, edu, A, DomainOf::DmaApi)?;
    let outcome = (|| {
        io.attach(dev, A, Target::Domain(dom)).map_err(fail)?;
        r.faults()?;
        let dma = DmaDevice::paging(&io, A, dom, &crate::hal::HAL, Config::new(u32::MAX.into()))
            .map_err(fail)?;
        let mut addrs = Vec::new();
        for _ in 0..PENDING_PRUNES {
            let at = dma.map(buffer, M2, Direction::ToDevice).map_err(fail)?;
            edu.edu.dma_from_ram(at.0, 0, 64).map_err(fail)?;
            let faults = r.faults()?;
            ensure!(
                faults.is_empty(),
                "DMA through {at:x?} faulted: {faults:x?}"
            );
            addrs.push(at);
        }
        for (i, &at) in addrs.iter().enumerate() {
            let (invalidations, waits) = count(&mut || dma.unmap(at, M2).map_err(fail))?;
            let prune = u64::from(i + 1 == PENDING_PRUNES);
            ensure_eq!(waits, 1 + prune, "unmap {i}: waits");
            ensure!(
                (1 + prune..=1 + 2 * prune).contains(&invalidations),
                "unmap {i}: {invalidations} invalidations"
            );
        }
        iommu_boot::println!(
            "{PENDING_PRUNES} DMA API unmaps of 2 MiB: 1 invalidation / 1 wait each, the last \
             one's prune 1 wait more"
        );
        drop(dma);
        faults_and_nothing_left(r, &mut io, A, dom, edu, addrs.iter().map(|a| a.0))
    })();
    let released = io.release(dev, A);
    let destroyed = io.destroy_domain(A, dom);
    if released.is_ok() {
        // SAFETY: allocated above with this size; the device is blocked again, so no DMA
        // reaches it (else it stays allocated).
        unsafe { memory::free(ram, 2 * M2) };
    }
    outcome?;
    released.map_err(fail)?;
    destroyed.map_err(fail)
}

/// Faults routed to owners (`Iommu::route_faults`): edu 0 is owner A's, attached to an empty
/// paging domain; edu 1 is owner B's, blocked; edu 2 is nobody's. Each DMAs to an address
/// nothing maps; each fault lands in its owner's queue with the device's handle, and edu 2's in
/// the default queue.
pub fn faults_reach_the_owner_of_the_device<U: TranslationUnit>(r: &Rig<U>) -> TestResult {
    use iommu::iommufd::{GroupId, Iommu, Layout, OwnerId, Region, Target};
    const A: OwnerId = OwnerId(1);
    const B: OwnerId = OwnerId(2);
    let edus = [r.edu(0)?, r.edu(1)?, r.edu(2)?];
    let ids = edus.map(|e| (r.device_id)(e));
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    io.allow_unsafe_interrupts(true);
    let mut d = Vec::new();
    for id in ids {
        d.push(io.add_device(u, id, GroupId(id.0)).map_err(fail)?);
    }
    io.claim(d[0], A).map_err(fail)?;
    io.claim(d[1], B).map_err(fail)?;
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = io
        .alloc_domain(A, u, r.stage, IA_BITS, &layout)
        .map_err(fail)?;
    io.attach(d[0], A, Target::Domain(dom)).map_err(fail)?;
    io.subscribe_faults(A, 16);
    io.subscribe_faults(B, 16);
    io.subscribe_default_faults(16);
    r.faults()?;
    let outcome = (|| {
        // One DMA, one routing at a time: QEMU's VT-d has a single fault-recording register,
        // so a second source's fault before the drain would be an overflow.
        for (owner, i) in [(Some(A), 0), (Some(B), 1), (None, 2)] {
            edus[i]
                .edu
                .dma_to_ram(0, IOVA_A + ((i as u64) << 12), 4)
                .map_err(fail)?;
            io.route_faults(u).map_err(fail)?;
            let taken = match owner {
                Some(o) => io.take_faults(o),
                None => io.take_default_faults(),
            }
            .map_err(fail)?;
            let want = IOVA_A + ((i as u64) << 12);
            ensure!(
                !taken.faults.is_empty()
                    && taken.faults.iter().all(|f| f.device == Some(d[i])
                        && f.owner == owner
                        && f.record.address & !0xfff == want),
                "{owner:?}'s queue: expected edu {i}'s faults at {want:#x}, got {:?}",
                taken.faults
            );
            ensure_eq!(taken.lost, 0, "faults lost");
        }
        Ok(())
    })();
    let released = io.release(d[0], A).and(io.release(d[1], B));
    let destroyed = io.destroy_domain(A, dom);
    outcome?;
    released.map_err(fail)?;
    destroyed.map_err(fail)
}
