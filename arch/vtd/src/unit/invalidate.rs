//! Invalidation: the batch, the plan of a range flush (page-selective blocks or one
//! domain-selective descriptor), the nested ids of a nest parent, and the flush the page-table
//! engine calls on unmap; issued through the queue or the registers.

use core::sync::atomic::Ordering;

use iommu::addr::Iova;
use iommu::hal::Hal;
use iommu::pagetable::FlushRange;
use iommu::poll::DEFAULT_POLL_BUDGET;
use iommu::unit::{HardwareError, UnitError};

use super::{VtdDomain, VtdUnit};
use crate::caps::Capability;
use crate::descriptor::{
    ContextCacheScope, Descriptor, Drain, IotlbScope, PageBlock, PasidIotlbScope, MAX_ORDER,
};
use crate::pasid::Pasid;
use crate::qi::{InvalidationQueue, QiError, QiMmio};
use crate::register_invalidation::{invalidate_context_cache, invalidate_iotlb};
use crate::root_table::Did;

/// Past this many page-selective IOTLB descriptors, one domain-selective one is used.
pub const FLUSH_THRESHOLD: usize = 16;

impl<'u, H: Hal + Clone> VtdUnit<'u, H> {
    /// The invalidation queue, when the unit uses one (for statistics and error tests).
    pub fn queue(&self) -> Option<&InvalidationQueue<'u, QiMmio<'u>>> {
        self.qi.as_ref()
    }

    /// Invalidation descriptors issued so far (waits included) and batches: through the queue,
    /// or one "batch" per descriptor written to the registers.
    pub fn invalidations(&self) -> (u64, u64) {
        match &self.qi {
            Some(q) => q.submitted(),
            None => {
                let n = self.register_invalidations.load(Ordering::Relaxed);
                (n, n)
            }
        }
    }

    pub(crate) fn drain(&self) -> Drain {
        Drain::for_unit(self.info.cap)
    }

    /// Issues `descriptors` as one batch and waits for them: through the queue (one wait
    /// descriptor for the batch), or one register command each.
    pub(crate) fn invalidate<'d, I>(&self, descriptors: I) -> Result<(), UnitError>
    where
        I: IntoIterator<Item = &'d Descriptor>,
        I::IntoIter: ExactSizeIterator + Clone,
    {
        let iter = descriptors.into_iter().copied();
        if let Some(q) = &self.qi {
            return q.submit_and_wait(iter).map_err(qi_error);
        }
        let block = self.regs.block();
        for d in iter {
            let r = match d {
                Descriptor::ContextCache(scope) => {
                    invalidate_context_cache(block, scope, DEFAULT_POLL_BUDGET).map(|_| ())
                }
                Descriptor::Iotlb { scope, drain } => {
                    invalidate_iotlb(self.regs.iotlb(), scope, drain, DEFAULT_POLL_BUDGET)
                        .map(|_| ())
                }
                Descriptor::Wait(_) => Ok(()),
                _ => {
                    return Err(UnitError::Unsupported(
                        "descriptor needs the invalidation queue",
                    ))
                }
            };
            self.register_invalidations.fetch_add(1, Ordering::Relaxed);
            r.map_err(|e| match e {
                crate::register_invalidation::RegisterInvalidationError::Timeout(t) => {
                    UnitError::Timeout(t)
                }
                _ => UnitError::Hardware(HardwareError::RegisterInvalidation),
            })?;
        }
        Ok(())
    }

    /// Invalidates the translations of `domain` for `range` (page-selective with address masks,
    /// or domain-selective past [`FLUSH_THRESHOLD`]), waiting for completion.
    pub(crate) fn flush_range(
        &self,
        domain: &VtdDomain<H>,
        start: Iova,
        len: u64,
        leaf_only: bool,
    ) -> Result<(), UnitError> {
        let ranges = [IovaRange::new(start, len)];
        let plan = plan_flush(
            &ranges,
            FlushLimits::for_unit(self.info.cap, FLUSH_THRESHOLD),
        );
        let mut batch = Batch::new();
        // First-stage translations are tagged with the PASID too: RID_PASID, and the one other
        // PASID the domain may be attached at (see `attach_pasid`).
        let other = self
            .ids
            .pasid_users(&self.hal, domain.id)
            .map(Pasid::from_bits_truncated);
        if domain.table.first_stage() {
            for pasid in core::iter::once(Pasid::ZERO).chain(other) {
                for d in plan.pasid_iotlb_descriptors(domain.id, pasid, leaf_only) {
                    batch.push(d);
                }
            }
        } else {
            for d in plan.iotlb_descriptors(domain.id, self.drain(), leaf_only) {
                batch.push(d);
            }
        }
        if batch.overflowed {
            // More blocks than fit in one batch: invalidate the domain (or its PASIDs) whole.
            batch = Batch::new();
            if domain.table.first_stage() {
                for pasid in core::iter::once(Pasid::ZERO).chain(other) {
                    batch.push(Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                        domain: domain.id,
                        pasid,
                    }));
                }
            } else {
                batch.push(Descriptor::Iotlb {
                    scope: IotlbScope::Domain(domain.id),
                    drain: self.drain(),
                });
            }
        }
        self.device_tlbs(&mut batch, domain.id, start.as_u64(), len)?;
        self.invalidate(batch.iter())?;
        self.flush_nested(domain.id, &plan)
    }

    /// The rest of a nest parent's flush: the nested domains built on it (`crate::viommu`)
    /// cache combined translations through its table under ids of their own, so each such id
    /// gets the parent's IOTLB invalidation too (6.5.2.3, as for the parent: page-selective
    /// on the parent's guest-physical addresses, which also drops the nested translations that
    /// went through them, or domain-selective). Never with IH: a parent leaf may map a page of
    /// a guest's first-stage table, which nested paging-structure caches point into.
    ///
    /// The ids are read under the nest-parents lock after the parent's table changed; why one
    /// added meanwhile needs nothing is at [`crate::viommu::NestParents`].
    fn flush_nested(&self, parent: Did, plan: &FlushPlan<'_>) -> Result<(), UnitError> {
        let (ids, len) = self.nest_parents.nested_of(parent);
        let mut batch = Batch::new();
        for &id in ids.iter().take(len) {
            let per_id = plan.iotlb_descriptors(id, self.drain(), false);
            if batch.len + per_id.len() > batch.items.len() && batch.len > 0 {
                self.invalidate(batch.iter())?;
                batch = Batch::new();
            }
            if per_id.len() > batch.items.len() {
                batch.push(Descriptor::Iotlb {
                    scope: IotlbScope::Domain(id),
                    drain: self.drain(),
                });
            } else {
                for d in per_id {
                    batch.push(d);
                }
            }
        }
        if batch.len > 0 {
            self.invalidate(batch.iter())?;
        }
        Ok(())
    }

    /// [`TranslationUnit::flush`]: after the embedder changed a (shared) table over
    /// `[iova, iova + len)`, rounded out to pages.
    pub(super) fn flush_domain(
        &self,
        domain: &VtdDomain<H>,
        iova: Iova,
        len: u64,
    ) -> Result<(), UnitError> {
        if len == 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::ZeroLength));
        }
        let start = iova.as_u64() & !0xfff;
        let end = iova
            .as_u64()
            .checked_add(len)
            .and_then(|e| e.checked_add(0xfff))
            .ok_or(UnitError::PageTable(iommu::pagetable::Error::WrapAround))?
            & !0xfff;
        // Entries may have been removed or narrowed anywhere in the walk: not leaf-only.
        self.flush_range(domain, Iova::new(start), end - start, false)
    }
}

/// One domain's IOTLB flush on this unit, for the page-table engine's unmap.
pub(super) struct DomainFlush<'a, 'u, H: Hal + Clone> {
    pub(super) unit: &'a VtdUnit<'u, H>,
    pub(super) domain: &'a VtdDomain<H>,
}

// SAFETY: `flush_range` returns `Ok` only after the unit reported the invalidation of the range
// complete (the batch's wait descriptor, or the register handshakes), with the paging-structure
// caches too unless `leaf_only`; a domain's table is walked by this unit only (domains are not
// shared across units).
unsafe impl<H: Hal + Clone> FlushRange for DomainFlush<'_, '_, H> {
    type Error = UnitError;

    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> Result<(), UnitError> {
        self.unit.flush_range(self.domain, iova, len, leaf_only)
    }
}

fn qi_error(e: QiError) -> UnitError {
    match e {
        QiError::Timeout { .. } | QiError::QueueFull => UnitError::Timeout(iommu::poll::Timeout {
            waiting_for: "invalidation queue",
        }),
        QiError::InvalidDescriptor { .. } => UnitError::Hardware(HardwareError::CommandRejected),
        QiError::DeviceTlbTimeout { .. } => UnitError::Hardware(HardwareError::DeviceTlbTimeout),
        QiError::OutOfMemory => UnitError::OutOfMemory,
        _ => UnitError::Hardware(HardwareError::Queue),
    }
}

/// A small fixed-capacity batch of descriptors (no allocator in this crate).
pub(crate) struct Batch {
    items: [Descriptor; FLUSH_THRESHOLD + 2],
    len: usize,
    overflowed: bool,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            items: [Descriptor::ContextCache(ContextCacheScope::Global); FLUSH_THRESHOLD + 2],
            len: 0,
            overflowed: false,
        }
    }

    pub(crate) fn push(&mut self, d: Descriptor) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = d;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    pub(crate) fn iter(&self) -> core::slice::Iter<'_, Descriptor> {
        self.items[..self.len].iter()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.items.len()
    }
}

/// An IOVA range to invalidate: `start` up to, not including, `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IovaRange {
    pub start: Iova,
    pub end: Iova,
}

impl IovaRange {
    /// `len` bytes from `start` (clamped at the top of the address space).
    pub const fn new(start: Iova, len: u64) -> Self {
        Self {
            start,
            end: Iova::new(start.as_u64().saturating_add(len)),
        }
    }

    /// First and last page number, or `None` if empty.
    const fn pages(&self) -> Option<(u64, u64)> {
        if self.end.as_u64() <= self.start.as_u64() {
            return None;
        }
        Some((self.start.as_u64() >> 12, (self.end.as_u64() - 1) >> 12))
    }
}

/// What bounds the invalidation plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushLimits {
    /// Page-selective invalidation is available (CAP.PSI).
    pub page_selective: bool,
    /// The largest address mask (CAP.MAMV).
    pub mamv: u8,
    /// Past this many page-selective descriptors, one domain-selective invalidation is cheaper.
    pub threshold: usize,
}

impl FlushLimits {
    pub const fn for_unit(cap: Capability, threshold: usize) -> Self {
        Self {
            page_selective: cap.psi(),
            mamv: if cap.mamv() > MAX_ORDER {
                MAX_ORDER
            } else {
                cap.mamv()
            },
            threshold,
        }
    }
}

/// How to invalidate a set of IOVA ranges in one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPlan<'a> {
    /// Nothing to invalidate (every range empty).
    Nothing,
    /// One domain-selective invalidation.
    Domain,
    /// Page-selective invalidations, one per block of [`FlushPlan::blocks`].
    Pages {
        ranges: &'a [IovaRange],
        mamv: u8,
        count: usize,
    },
}

/// Plans the invalidation of `ranges`: each range gets the smallest aligned power-of-two block
/// covering it; a range whose block would exceed 2^MAMV pages is tiled with 2^MAMV-page blocks.
/// If the unit has no page-selective invalidation or the blocks outnumber the threshold, the
/// plan is one domain-selective invalidation.
pub fn plan_flush(ranges: &[IovaRange], limits: FlushLimits) -> FlushPlan<'_> {
    let mut count = 0usize;
    for r in ranges {
        count = count.saturating_add(blocks_for(r, limits.mamv).len());
    }
    if count == 0 {
        FlushPlan::Nothing
    } else if !limits.page_selective || count > limits.threshold {
        FlushPlan::Domain
    } else {
        FlushPlan::Pages {
            ranges,
            mamv: limits.mamv,
            count,
        }
    }
}

impl<'a> FlushPlan<'a> {
    /// Invalidation descriptors the plan produces (not counting the wait that completes them).
    pub const fn descriptor_count(&self) -> usize {
        match *self {
            Self::Nothing => 0,
            Self::Domain => 1,
            Self::Pages { count, .. } => count,
        }
    }

    /// The page blocks of a page-selective plan (none for the other plans).
    pub fn blocks(&self) -> PlanBlocks<'a> {
        match *self {
            Self::Pages { ranges, mamv, .. } => PlanBlocks {
                ranges,
                mamv,
                current: None,
            },
            _ => PlanBlocks {
                ranges: &[],
                mamv: 0,
                current: None,
            },
        }
    }

    /// The plan as IOTLB descriptors (legacy mode, or second-stage / pass-through PASID
    /// entries in scalable mode).
    pub fn iotlb_descriptors(
        &self,
        domain: Did,
        drain: Drain,
        leaf_only: bool,
    ) -> impl ExactSizeIterator<Item = Descriptor> + Clone + 'a {
        let domain_wide = matches!(self, Self::Domain).then_some(Descriptor::Iotlb {
            scope: IotlbScope::Domain(domain),
            drain,
        });
        PlanDescriptors {
            single: domain_wide,
            blocks: self.blocks(),
            remaining: self.descriptor_count(),
            make: move |block| Descriptor::Iotlb {
                scope: IotlbScope::Pages {
                    domain,
                    block,
                    leaf_only,
                },
                drain,
            },
        }
    }

    /// The plan as PASID-based IOTLB descriptors (first-stage and nested PASID entries).
    pub fn pasid_iotlb_descriptors(
        &self,
        domain: Did,
        pasid: Pasid,
        leaf_only: bool,
    ) -> impl ExactSizeIterator<Item = Descriptor> + Clone + 'a {
        let pasid_wide = matches!(self, Self::Domain).then_some(Descriptor::PasidIotlb(
            PasidIotlbScope::Pasid { domain, pasid },
        ));
        PlanDescriptors {
            single: pasid_wide,
            blocks: self.blocks(),
            remaining: self.descriptor_count(),
            make: move |block| {
                Descriptor::PasidIotlb(PasidIotlbScope::Pages {
                    domain,
                    pasid,
                    block,
                    leaf_only,
                })
            },
        }
    }
}

/// The blocks one range needs: a single covering block, or a tiling with 2^mamv-page blocks.
#[derive(Debug, Clone, Copy)]
struct RangeBlocks {
    next_page: u64,
    end_page: u64,
    am: u8,
}

impl RangeBlocks {
    fn len(&self) -> usize {
        if self.next_page >= self.end_page {
            return 0;
        }
        let n = (self.end_page - self.next_page) >> self.am;
        usize::try_from(n).unwrap_or(usize::MAX)
    }
}

impl Iterator for RangeBlocks {
    type Item = PageBlock;

    fn next(&mut self) -> Option<PageBlock> {
        if self.next_page >= self.end_page {
            return None;
        }
        let block = PageBlock {
            addr: Iova::new(self.next_page << 12),
            am: self.am,
        };
        self.next_page = self.next_page.saturating_add(1 << self.am);
        Some(block)
    }
}

fn blocks_for(range: &IovaRange, mamv: u8) -> RangeBlocks {
    let Some((first, last)) = range.pages() else {
        return RangeBlocks {
            next_page: 0,
            end_page: 0,
            am: 0,
        };
    };
    // The smallest aligned block holding both first and last page: its order is the number of
    // low bits in which they differ.
    let am = (64 - (first ^ last).leading_zeros()) as u8;
    let am = if am <= mamv { am } else { mamv };
    let mask = (1u64 << am) - 1;
    let start = first & !mask;
    // Pages are at most 2^52, so `last + 1` rounded up cannot overflow.
    let end = ((last | mask) + 1).min(1 << MAX_ORDER);
    RangeBlocks {
        next_page: start,
        end_page: end,
        am,
    }
}

/// The page blocks of a [`FlushPlan`], range after range.
#[derive(Debug, Clone)]
pub struct PlanBlocks<'a> {
    ranges: &'a [IovaRange],
    mamv: u8,
    current: Option<RangeBlocks>,
}

impl Iterator for PlanBlocks<'_> {
    type Item = PageBlock;

    fn next(&mut self) -> Option<PageBlock> {
        loop {
            if let Some(b) = self.current.as_mut().and_then(Iterator::next) {
                return Some(b);
            }
            let (first, rest) = self.ranges.split_first()?;
            self.ranges = rest;
            self.current = Some(blocks_for(first, self.mamv));
        }
    }
}

#[derive(Clone)]
struct PlanDescriptors<'a, F> {
    single: Option<Descriptor>,
    blocks: PlanBlocks<'a>,
    remaining: usize,
    make: F,
}

impl<F: Fn(PageBlock) -> Descriptor> Iterator for PlanDescriptors<'_, F> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        let d = match self.single.take() {
            Some(d) => Some(d),
            None => self.blocks.next().map(&self.make),
        };
        if d.is_some() {
            self.remaining = self.remaining.saturating_sub(1);
        }
        d
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<F: Fn(PageBlock) -> Descriptor> ExactSizeIterator for PlanDescriptors<'_, F> {}

#[cfg(all(test, not(loom)))]
mod tests;
