//! The unmap path in one place: unmap through the page-table engine (strict, or deferred into a
//! gather flushed later), the TLB invalidation it needs planned into commands (range commands where IDR3.RIL allows, one scope-wide command
//! beyond a limit), sent as one batch with one CMD_SYNC, and the extra flush a nest parent needs.

use core::ops::Range;
use core::sync::atomic::Ordering;

use iommu::addr::Iova;
use iommu::hal::Hal;
use iommu::pagetable::{FlushRange, Format, Gather, PageTable};
use iommu::unit::UnitError;

use super::domain::{DomainKind, SmmuDomain, NESTED_MAP, SHARED_MAP, VM_TABLE_MAP};
use super::SmmuUnit;
use crate::attributes::Granule;
use crate::command::{Command, TlbiRange};
use crate::idr::Features;
use crate::Error;

impl<H: Hal + Clone> SmmuUnit<H> {
    /// Invalidates the TLB entries of `domain` for `range` (one CMD_SYNC per batch) and waits.
    fn invalidate(
        &self,
        domain: &SmmuDomain<H>,
        range: Range<u64>,
        leaf: bool,
    ) -> Result<(), Error> {
        let scope = match &domain.kind {
            DomainKind::Stage1 { asid, vmid, .. } => InvalidationScope::Stage1 {
                vmid: vmid.load(Ordering::Relaxed),
                asid: *asid,
            },
            DomainKind::Stage2 { s2, .. } => InvalidationScope::Stage2 { vmid: s2.vmid },
            DomainKind::Nested { .. } => return Err(Error::Unsupported(NESTED_MAP)),
            // A shared domain's streams are stage-1-only: their S2VMID is 0.
            DomainKind::Shared { cd, .. } => InvalidationScope::Stage1 {
                vmid: 0,
                asid: cd.asid,
            },
        };
        let ranges = [range];
        let mut batch = self.cmdq.batch();
        for cmd in plan_invalidation(
            scope,
            &ranges,
            Self::domain_granule(domain),
            leaf,
            &self.policy,
        ) {
            batch.push(cmd)?;
        }
        // A stage-2 domain may be the parent of nested streams, whose combined stage-1+2 TLB
        // entries are tagged with its VMID but indexed by the stage-1 address: the IPA
        // invalidation above does not reach them.
        // Only where stage 1 exists (a stage-2-only SMMU has no nested streams and refuses
        // TLBI_NH_* as illegal) and a stream ever nested a stage 1 in the domain: otherwise no such
        // entries exist and one TLBI + one SYNC per range is the whole cost.
        if let DomainKind::Stage2 { s2, nest_users, .. } = &domain.kind {
            if self.features.stages.stage1() && nest_users.ever_nested() {
                batch.push(Command::TlbiNhAll { vmid: s2.vmid })?;
            }
        }
        batch.finish()?;
        // After the TLB's CMD_SYNC: the ATCs of the domain's devices with ATS.
        self.invalidate_atcs(domain, ranges[0].clone())
    }

    pub(super) fn flush_range(
        &self,
        domain: &SmmuDomain<H>,
        iova: Iova,
        len: u64,
    ) -> Result<(), UnitError> {
        if len == 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::ZeroLength));
        }
        let start = iova.as_u64();
        let end = start
            .checked_add(len)
            .ok_or(UnitError::PageTable(iommu::pagetable::Error::WrapAround))?;
        // Not leaf-only: the embedder may have removed tables as well as pages.
        self.invalidate(domain, start..end, false)?;
        Ok(())
    }

    /// A strict unmap of `domain`'s own table; with `owned`, a pruning one
    /// (`TranslationUnit::unmap_pruning`).
    pub(super) fn unmap_range(
        &self,
        domain: &SmmuDomain<H>,
        iova: Iova,
        len: u64,
        owned: Option<Range<u64>>,
    ) -> Result<u64, UnitError> {
        fn strict<F: Format, H: Hal + Clone>(
            table: &PageTable<F, H>,
            iova: Iova,
            len: u64,
            owned: Option<Range<u64>>,
            flush: &DomainFlush<'_, H>,
        ) -> Result<u64, UnitError> {
            match owned {
                None => table.unmap_flushed(iova, len, flush),
                Some(owned) => table.unmap_pruning_flushed(iova, len, owned, flush),
            }
        }
        let flush = DomainFlush { unit: self, domain };
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => strict(table, iova, len, owned, &flush),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => strict(table, iova, len, owned, &flush),
            DomainKind::Stage2 { table: None, .. } => Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
    }

    /// [`unmap_range`](Self::unmap_range) without the flush: the invalidation and the frees
    /// are gathered for [`flush_gathered`](Self::flush_gathered).
    pub(super) fn unmap_gathered(
        &self,
        domain: &SmmuDomain<H>,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => Ok(table.unmap(iova, len, gather)?),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => Ok(table.unmap(iova, len, gather)?),
            DomainKind::Stage2 { table: None, .. } => Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
    }

    /// The empty tables of `domain`'s own table on the way to `points` unlinked into `gather`
    /// (`prune_tables`).
    pub(super) fn prune_gathered(
        &self,
        domain: &SmmuDomain<H>,
        points: &[(Iova, Range<u64>)],
        gather: &mut Gather,
    ) -> Result<usize, UnitError> {
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => Ok(table.prune(points, gather)?),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => Ok(table.prune(points, gather)?),
            DomainKind::Stage2 { table: None, .. } => Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
    }

    /// The empty tables of `domain`'s own table unlinked into `gather` (`reclaim_tables`).
    pub(super) fn reclaim_gathered(
        &self,
        domain: &mut SmmuDomain<H>,
        gather: &mut Gather,
    ) -> Result<usize, UnitError> {
        match &mut domain.kind {
            DomainKind::Stage1 { table, .. } => Ok(table.reclaim(gather)?),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => Ok(table.reclaim(gather)?),
            DomainKind::Stage2 { table: None, .. } => Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
    }

    /// The flush `unmap_range` issues, once for everything `unmap_gathered` put in `gather`
    /// (a nest parent's TLBI_NH_ALL included), then the gathered frames freed.
    pub(super) fn flush_gathered(
        &self,
        domain: &SmmuDomain<H>,
        gather: Gather,
    ) -> Result<(), UnitError> {
        let flush = DomainFlush { unit: self, domain };
        match &domain.kind {
            DomainKind::Stage1 { table, .. } => table.flush_gather(gather, &flush),
            DomainKind::Stage2 {
                table: Some(table), ..
            } => table.flush_gather(gather, &flush),
            DomainKind::Stage2 { table: None, .. } => Err(VM_TABLE_MAP),
            DomainKind::Nested { .. } => Err(UnitError::Unsupported(NESTED_MAP)),
            DomainKind::Shared { .. } => Err(SHARED_MAP),
        }
    }
}

/// One domain's TLB invalidation on this SMMU, for the page-table engine's unmap.
struct DomainFlush<'a, H: Hal + Clone> {
    unit: &'a SmmuUnit<H>,
    domain: &'a SmmuDomain<H>,
}

// SAFETY: `invalidate` returns `Ok` only after the batch's CMD_SYNC completed, the TLBIs carrying
// `Leaf` = 0 (walk caches too) unless `leaf_only`; this SMMU is the only walker of the domain's
// table (domains are not shared across units).
unsafe impl<H: Hal + Clone> FlushRange for DomainFlush<'_, H> {
    type Error = UnitError;

    fn flush(&self, iova: Iova, len: u64, leaf_only: bool) -> Result<(), UnitError> {
        let start = iova.as_u64();
        self.unit
            .invalidate(self.domain, start..start.saturating_add(len), leaf_only)
            .map_err(UnitError::from)
    }
}

/// Which TLB entries an invalidation is for, and so which commands carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationScope {
    /// Stage-1 entries of one address space: TLBI_NH_VA, or TLBI_NH_ASID when wide.
    Stage1 {
        /// VMID tagging the entries (0 without stage 2).
        vmid: u16,
        /// ASID of the address space.
        asid: u16,
    },
    /// Stage-1 entries of every ASID of a VMID: TLBI_NH_VAA, or TLBI_NH_ALL when wide.
    Stage1AllAsids {
        /// VMID.
        vmid: u16,
    },
    /// EL2 (STRW = EL2) stage-1 entries: TLBI_EL2_VA, or TLBI_EL2_ASID when wide.
    El2 {
        /// ASID.
        asid: u16,
    },
    /// Stage-2 entries: TLBI_S2_IPA, or TLBI_S12_VMALL when wide. Combined (nested) entries
    /// are tagged with the VMID too: after a stage-2 change under a nested stream, follow with
    /// TLBI_NH_ALL for the VMID or use the wide command.
    Stage2 {
        /// VMID.
        vmid: u16,
    },
}

/// How addresses are invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidationPolicy {
    /// The SMMU has range invalidation (IDR3.RIL).
    pub range_invalidation: bool,
    /// Above this many commands, one ASID- or VMID-wide invalidation is cheaper.
    pub max_commands: u32,
}

impl InvalidationPolicy {
    /// Commands per invalidation before falling back to the wide one when RIL is absent (as
    /// many as fit a small batch without stalling other producers for long).
    pub const DEFAULT_MAX_COMMANDS: u32 = 32;

    /// The policy for an SMMU with `features`.
    pub const fn for_features(features: &Features) -> Self {
        Self {
            range_invalidation: features.range_invalidation,
            max_commands: Self::DEFAULT_MAX_COMMANDS,
        }
    }
}

/// The pages `[first, first + count)` of granule `log2` that `range` touches (`count` may
/// exceed u64 when the range ends at the top of the address space).
fn page_span(range: &Range<u64>, log2: u32) -> (u64, u128) {
    if range.end <= range.start {
        return (range.start, 0);
    }
    let first = range.start >> log2 << log2;
    let end = (u128::from(range.end) + (1u128 << log2) - 1) >> log2 << log2;
    (first, (end - u128::from(first)) >> log2)
}

/// The range commands for `pages` pages: each covers the low set bit of the remaining count
/// times up to 31, so a count costs about one command per 5 bits.
fn range_commands(pages: u128) -> u32 {
    let mut left = pages;
    let mut n = 0;
    while left != 0 {
        let scale = left.trailing_zeros().min(31);
        let units = (left >> scale) & 31;
        let units = if units == 0 { 31 } else { units };
        left -= units << scale;
        n += 1;
    }
    n
}

/// The TLB invalidation commands for the addresses in `ranges` (byte ranges, rounded out to
/// pages of `granule`), as an iterator so no buffer is needed. Append a CMD_SYNC (the queue's
/// `submit_and_sync` does) before relying on the invalidation.
///
/// With range invalidation each range becomes a few range commands; without it each page gets
/// one command, up to `policy.max_commands`; beyond that (or beyond `max_commands` range
/// commands) a single ASID- or VMID-wide command replaces them all. `leaf` says only leaf
/// entries changed (no table was freed), which lets the SMMU keep its walk caches. The level
/// hint TTL is left 0: a wrong hint would make the invalidation miss, and the planner does not
/// know at which level the entries were.
pub fn plan_invalidation<'a>(
    scope: InvalidationScope,
    ranges: &'a [Range<u64>],
    granule: Granule,
    leaf: bool,
    policy: &InvalidationPolicy,
) -> InvalidationPlan<'a> {
    let log2 = granule.shift();
    let commands: u128 = ranges
        .iter()
        .map(|r| {
            let (_, pages) = page_span(r, log2);
            if policy.range_invalidation {
                u128::from(range_commands(pages))
            } else {
                pages
            }
        })
        .sum();
    let state = if commands > u128::from(policy.max_commands) {
        PlanState::Wide
    } else {
        PlanState::Addresses {
            range: 0,
            next: 0,
            left: 0,
        }
    };
    InvalidationPlan {
        scope,
        ranges,
        granule,
        leaf,
        use_ranges: policy.range_invalidation,
        state,
    }
}

/// The commands of one invalidation; see [`plan_invalidation`].
#[derive(Debug, Clone)]
pub struct InvalidationPlan<'a> {
    scope: InvalidationScope,
    ranges: &'a [Range<u64>],
    granule: Granule,
    leaf: bool,
    use_ranges: bool,
    state: PlanState,
}

#[derive(Debug, Clone, Copy)]
enum PlanState {
    /// One scope-wide command, then done.
    Wide,
    /// Walking `ranges[range]`: `left` pages from `next` (0 pages: load the range).
    Addresses {
        range: usize,
        next: u64,
        left: u128,
    },
    Done,
}

impl InvalidationPlan<'_> {
    /// Whether the plan replaced the per-address commands with one wide command.
    pub fn is_wide(&self) -> bool {
        matches!(self.state, PlanState::Wide)
    }

    fn wide(&self) -> Command {
        match self.scope {
            InvalidationScope::Stage1 { vmid, asid } => Command::TlbiNhAsid { vmid, asid },
            InvalidationScope::Stage1AllAsids { vmid } => Command::TlbiNhAll { vmid },
            InvalidationScope::El2 { asid } => Command::TlbiEl2Asid { asid },
            InvalidationScope::Stage2 { vmid } => Command::TlbiS12Vmall { vmid },
        }
    }

    fn at(&self, addr: u64, range: Option<TlbiRange>) -> Command {
        let leaf = self.leaf;
        match self.scope {
            InvalidationScope::Stage1 { vmid, asid } => Command::TlbiNhVa {
                vmid,
                asid,
                addr,
                leaf,
                range,
            },
            InvalidationScope::Stage1AllAsids { vmid } => Command::TlbiNhVaa {
                vmid,
                addr,
                leaf,
                range,
            },
            InvalidationScope::El2 { asid } => Command::TlbiEl2Va {
                asid,
                addr,
                leaf,
                range,
            },
            InvalidationScope::Stage2 { vmid } => Command::TlbiS2Ipa {
                vmid,
                ipa: addr,
                leaf,
                range,
            },
        }
    }
}

impl Iterator for InvalidationPlan<'_> {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        loop {
            match self.state {
                PlanState::Done => return None,
                PlanState::Wide => {
                    self.state = PlanState::Done;
                    return Some(self.wide());
                }
                PlanState::Addresses { range, next, left } => {
                    if left == 0 {
                        let Some(r) = self.ranges.get(range) else {
                            self.state = PlanState::Done;
                            return None;
                        };
                        let (first, pages) = page_span(r, self.granule.shift());
                        self.state = PlanState::Addresses {
                            range: range + 1,
                            next: first,
                            left: pages,
                        };
                        continue;
                    }
                    let log2 = self.granule.shift();
                    let (cmd, pages) = if self.use_ranges {
                        let scale = left.trailing_zeros().min(31);
                        let units = (left >> scale) & 31;
                        let units = if units == 0 { 31 } else { units };
                        let r = TlbiRange {
                            granule: self.granule,
                            scale: scale as u8,
                            num: (units - 1) as u8,
                            ttl: 0,
                        };
                        (self.at(next, Some(r)), units << scale)
                    } else {
                        (self.at(next, None), 1)
                    };
                    // Wrapping: the last chunk of a range ending at the top of the address space.
                    let advance = (pages << log2) as u64;
                    self.state = PlanState::Addresses {
                        range,
                        next: next.wrapping_add(advance),
                        left: left - pages,
                    };
                    return Some(cmd);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    // The planner takes a slice of IOVA ranges; one-range slices are the common case.
    #![allow(clippy::single_range_in_vec_init)]

    use std::vec::Vec;

    use super::*;
    use crate::command::TlbiRange;

    fn collect(plan: InvalidationPlan<'_>) -> Vec<Command> {
        plan.collect()
    }

    #[test]
    fn per_page_invalidation_without_ril() {
        let policy = InvalidationPolicy {
            range_invalidation: false,
            max_commands: 8,
        };
        let scope = InvalidationScope::Stage1 { vmid: 1, asid: 2 };
        // 0x1800..0x3001 touches pages 0x1000, 0x2000 and 0x3000.
        let cmds = collect(plan_invalidation(
            scope,
            &[0x1800..0x3001],
            Granule::Size4K,
            true,
            &policy,
        ));
        let addrs: Vec<u64> = cmds
            .iter()
            .map(|c| match c {
                Command::TlbiNhVa {
                    vmid: 1,
                    asid: 2,
                    addr,
                    leaf: true,
                    range: None,
                } => *addr,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(addrs, [0x1000, 0x2000, 0x3000]);
        // Two ranges, 64K granule, stage 2.
        let cmds = collect(plan_invalidation(
            InvalidationScope::Stage2 { vmid: 9 },
            &[0..0x2_0000, 0x10_0000..0x10_0001],
            Granule::Size64K,
            false,
            &policy,
        ));
        assert_eq!(
            cmds,
            [
                Command::TlbiS2Ipa {
                    vmid: 9,
                    ipa: 0,
                    leaf: false,
                    range: None
                },
                Command::TlbiS2Ipa {
                    vmid: 9,
                    ipa: 0x1_0000,
                    leaf: false,
                    range: None
                },
                Command::TlbiS2Ipa {
                    vmid: 9,
                    ipa: 0x10_0000,
                    leaf: false,
                    range: None
                },
            ]
        );
        // Empty ranges give nothing.
        assert!(collect(plan_invalidation(
            scope,
            &[5..5],
            Granule::Size4K,
            true,
            &policy
        ))
        .is_empty());
    }

    #[test]
    fn too_many_pages_become_one_wide_command() {
        let policy = InvalidationPolicy {
            range_invalidation: false,
            max_commands: 8,
        };
        let cases = [
            (
                InvalidationScope::Stage1 { vmid: 1, asid: 2 },
                Command::TlbiNhAsid { vmid: 1, asid: 2 },
            ),
            (
                InvalidationScope::Stage1AllAsids { vmid: 1 },
                Command::TlbiNhAll { vmid: 1 },
            ),
            (
                InvalidationScope::El2 { asid: 4 },
                Command::TlbiEl2Asid { asid: 4 },
            ),
            (
                InvalidationScope::Stage2 { vmid: 3 },
                Command::TlbiS12Vmall { vmid: 3 },
            ),
        ];
        for (scope, wide) in cases {
            let plan = plan_invalidation(scope, &[0..9 * 4096], Granule::Size4K, true, &policy);
            assert!(plan.is_wide());
            assert_eq!(collect(plan), [wide]);
            // Exactly at the limit: per page.
            let plan = plan_invalidation(scope, &[0..8 * 4096], Granule::Size4K, true, &policy);
            assert!(!plan.is_wide());
            assert_eq!(plan.count(), 8);
        }
    }

    #[test]
    fn range_invalidation_covers_exactly_the_pages() {
        let policy = InvalidationPolicy {
            range_invalidation: true,
            max_commands: 32,
        };
        let scope = InvalidationScope::Stage1 { vmid: 0, asid: 5 };
        // 1 + 2 + ... pages: each command covers (num+1) << scale pages from its address, and the
        // commands tile the range without gap or overlap.
        for pages in [1u64, 2, 3, 31, 32, 33, 63, 100, 4096, 0x1234_5678] {
            for granule in [Granule::Size4K, Granule::Size16K, Granule::Size64K] {
                let start = 7 << granule.shift();
                let len = pages << granule.shift();
                let cmds = collect(plan_invalidation(
                    scope,
                    &[start..start + len],
                    granule,
                    true,
                    &policy,
                ));
                let mut next = start;
                for c in &cmds {
                    let Command::TlbiNhVa {
                        vmid: 0,
                        asid: 5,
                        addr,
                        leaf: true,
                        range: Some(r),
                    } = *c
                    else {
                        panic!("unexpected {c:?}");
                    };
                    assert_eq!(addr, next);
                    assert_eq!(r.granule, granule);
                    assert_eq!(r.ttl, 0);
                    assert!(r.scale <= 31 && r.num <= 31);
                    assert!(c.encode().is_ok());
                    next += r.pages() << granule.shift();
                }
                assert_eq!(next, start + len, "{pages} pages of {granule:?}");
                assert!(
                    cmds.len() as u32 <= 7,
                    "{pages} pages took {} commands",
                    cmds.len()
                );
            }
        }
    }

    #[test]
    fn range_invalidation_of_one_page() {
        let policy = InvalidationPolicy {
            range_invalidation: true,
            max_commands: 32,
        };
        let cmds = collect(plan_invalidation(
            InvalidationScope::Stage2 { vmid: 2 },
            &[0x5000..0x5001],
            Granule::Size4K,
            true,
            &policy,
        ));
        let r = TlbiRange {
            granule: Granule::Size4K,
            scale: 0,
            num: 0,
            ttl: 0,
        };
        assert_eq!(
            cmds,
            [Command::TlbiS2Ipa {
                vmid: 2,
                ipa: 0x5000,
                leaf: true,
                range: Some(r)
            }]
        );
    }
}
