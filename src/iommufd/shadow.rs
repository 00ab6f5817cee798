//! Shadowing vIOMMUs: a guest's IOMMU on hardware that cannot nest. The guest writes its own
//! I/O page tables in its RAM and, its vIOMMU reporting caching mode, follows every change
//! (not-present to present included) with an invalidation. Each forwarded invalidation makes
//! the model walk the guest's table over the invalidated range (reads through the nest
//! parent's mappings, bounded: guest tables are untrusted input) and bring a *shadow* paging
//! domain (guest IOVA → host physical) in step before the call returns.
//!
//! The flow:
//! 1. [`Iommu::alloc_shadow_viommu`] over a paging domain mapping guest physical to host
//!    physical (the guest's RAM), naming the guest-physical ranges that are RAM;
//! 2. [`Iommu::set_virtual_device`] as for any vIOMMU;
//! 3. when the guest points a device at a table (its context or PASID entry, its CD):
//!    [`Iommu::alloc_shadow_domain`] with the table's root, format and tag, then
//!    [`Iommu::attach`] the device to it. The shadow starts as the table is then;
//! 4. [`Iommu::invalidate`] with the guest's commands: each invalidation names a tag and a range
//!    ([`TranslationUnit::guest_flush`]); the shadow of that tag follows the table there.
//!
//! What a guest cannot do through its tables: reach memory outside its RAM (a leaf or table
//! elsewhere is skipped, counted, and reported to the owner's fault queue as a
//! [`RoutedFault`]), make the walk long (depth fixed by the format, entry reads bounded) or make
//! it panic. What caching mode means for it: a mapping the guest has not invalidated yet is not
//! in the shadow, so its device's DMA there faults.
//!
//! A shadow needs a guest that invalidates after *every* change, new mappings included. A VT-d
//! guest does when its vIOMMU reports caching mode (CAP.CM, 6.1), which the VMM must do. SMMUv3
//! has no such mode: an Arm guest's driver (Linux's among them) sends no TLBI for a new mapping,
//! so on an SMMU without nesting a shadowed guest must be one that invalidates its maps too; its
//! new mappings are otherwise never used.
//!
//! The shadow maps page by page (4 KiB), whatever the guest's page sizes: the host pages behind
//! a guest superpage need not be contiguous, and a change to one guest page never touches the
//! shadow of another, so the device never sees an unchanged page vanish for a moment.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::viommu::{Backing, Viommu};
use super::{
    DeviceHandle, DomainId, DomainKind, Error, Iommu, IovaSpace, Layout, OwnerId, Region, Result,
    RoutedFault, Target, ViommuId,
};
use crate::addr::{Iova, PhysAddr};
use crate::pagetable::untrusted::{walk_untrusted, Found, WalkError};
use crate::pagetable::vmsa::{Granule, VmsaConfig, VmsaStage1};
use crate::pagetable::vtd_second_stage::VtdSecondStage;
use crate::pagetable::x86_first_stage::{X86FirstStage, X86FirstStageConfig};
use crate::pagetable::{Format, Gather, Prot};
use crate::sync::Mutex;
use crate::unit::{
    FaultKind, FaultRecord, Forwarded, GuestFlush, Stage, TranslationUnit, UnitError,
};

/// The host-physical memory behind a guest's RAM, as the embedder reaches it (its HAL's
/// mapping of physical memory).
pub trait GuestMemory: Send + Sync {
    /// The 8 bytes at host-physical `at` (8-aligned). The model asks only for addresses its
    /// nest parent maps from a guest-physical address inside the RAM the embedder named.
    fn read_u64(&self, at: PhysAddr) -> u64;
}

/// The format of a guest's I/O page table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFormat {
    /// VT-d second-stage tables (SLPTPTR of a legacy context entry, SSPTPTR of a PASID entry)
    /// with `AW` 1 (3 levels), 2 (4 levels) or 3 (5 levels).
    VtdSecondStage { aw: u8 },
    /// x86-64 paging (FSPTPTR of a VT-d first-stage PASID entry).
    X86FirstStage { five_level: bool },
    /// VMSAv8-64 stage 1 (TTB0 of an SMMUv3 context descriptor, with its TG0 and T0SZ).
    VmsaStage1 { granule: Granule, input_bits: u32 },
}

/// The guest's table as its device entry names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTable {
    /// The guest's tag for it (VT-d domain id, SMMU ASID): what its invalidations name.
    pub tag: u32,
    /// The root table's guest-physical address.
    pub root: u64,
    pub format: GuestFormat,
}

/// What one shadowing vIOMMU did, from its allocation on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowStats {
    /// Guest invalidations followed (waits and tags without a shadow not counted).
    pub invalidations: u64,
    /// Guest table entries read.
    pub entries_read: u64,
    /// Shadow pages mapped and unmapped.
    pub mapped: u64,
    pub unmapped: u64,
    /// Host invalidations issued for unmapped shadow pages: one per guest invalidation that
    /// removed any, however many pages.
    pub host_flushes: u64,
    /// Guest leaves or entries refused (outside guest RAM, malformed), each reported as a fault.
    pub refused: u64,
}

/// Guest table entries one followed invalidation may read.
const READ_BUDGET: usize = 1 << 20;

/// Guest pages one followed invalidation may shadow (4 GiB).
const PAGE_BUDGET: usize = 1 << 20;

const PAGE: u64 = 4096;

/// The shadowing part of a vIOMMU.
pub(super) struct Shadowing {
    /// Guest-physical RAM, page aligned.
    ram: Vec<Region>,
    memory: Arc<dyn GuestMemory>,
    /// Guest tag → its shadow domain. Changed under `&mut Iommu` only.
    pub(super) domains: BTreeMap<u32, DomainId>,
    /// One lock for all of the vIOMMU's shadow updates: a guest's invalidations come as one
    /// stream, and it keeps a shadow's pages and the counters in step with its table.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per shadow domain: guest IOVA page → what it is mapped to, and why.
    pages: BTreeMap<DomainId, BTreeMap<u64, Page>>,
    stats: ShadowStats,
}

/// One shadow page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    host: u64,
    prot: Prot,
    /// The guest leaf it comes from (start, length): an invalidation of any address of a large
    /// guest page concerns all of it.
    leaf: (u64, u64),
}

impl Page {
    fn same_mapping(&self, other: &Page) -> bool {
        self.host == other.host && self.prot == other.prot
    }
}

/// What a walk over a range wants the shadow to be, and what it refused.
#[derive(Default)]
struct Wanted {
    pages: BTreeMap<u64, Page>,
    /// The walked range, grown to the whole of every leaf found.
    span: (u64, u64),
    /// (guest IOVA, reason), one per refused leaf or entry.
    refused: Vec<(u64, &'static str)>,
    too_many: bool,
}

impl GuestFormat {
    /// Input bits of the guest's table.
    fn input_bits(self) -> Result<u32> {
        Ok(match self {
            Self::VtdSecondStage { aw } => vtd(aw)?.ia_bits(),
            Self::X86FirstStage { five_level } => x86(five_level)?.ia_bits(),
            Self::VmsaStage1 {
                granule,
                input_bits,
            } => vmsa(granule, input_bits)?.ia_bits(),
        })
    }

    /// [`walk_untrusted`] in a table of this format.
    fn walk(
        self,
        root: u64,
        start: u64,
        end: u64,
        budget: &mut usize,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        visit: &mut dyn FnMut(Found),
    ) -> core::result::Result<(), WalkError> {
        let geometry = |_| WalkError::Geometry;
        match self {
            Self::VtdSecondStage { aw } => {
                let f = vtd(aw).map_err(geometry)?;
                walk_untrusted(&f, root, start, end, budget, read, visit)
            }
            Self::X86FirstStage { five_level } => {
                let f = x86(five_level).map_err(geometry)?;
                walk_untrusted(&f, root, start, end, budget, read, visit)
            }
            Self::VmsaStage1 {
                granule,
                input_bits,
            } => {
                let f = vmsa(granule, input_bits).map_err(geometry)?;
                walk_untrusted(&f, root, start, end, budget, read, visit)
            }
        }
    }
}

fn bad_format(_: crate::pagetable::Error) -> Error {
    Error::Unit(UnitError::GuestEntry("table format (unsupported geometry)"))
}

// Output widths: the walk checks every output address against the guest's RAM itself, so the
// widest each format has lets no address through unchecked.
fn vtd(aw: u8) -> Result<VtdSecondStage> {
    VtdSecondStage::for_aw(aw, 52).map_err(bad_format)
}

fn x86(five_level: bool) -> Result<X86FirstStage> {
    X86FirstStage::new(X86FirstStageConfig {
        five_level,
        ..X86FirstStageConfig::four_level(52)
    })
    .map_err(bad_format)
}

fn vmsa(granule: Granule, input_bits: u32) -> Result<VmsaStage1> {
    VmsaStage1::new(VmsaConfig {
        granule,
        input_bits,
        output_bits: if granule == Granule::Size64K { 52 } else { 48 },
    })
    .map_err(bad_format)
}

impl Shadowing {
    /// The host page behind guest-physical `gpa` if it is guest RAM the parent maps.
    fn host_page(&self, parent: &IovaSpace, gpa: u64) -> Option<u64> {
        let page = Region::new(gpa & !(PAGE - 1), PAGE)?;
        if !self.ram.iter().any(|r| r.contains(page)) {
            return None;
        }
        parent.iova_to_phys(gpa)
    }

    /// Walks `table` over `[start, end)` and collects what the shadow should map there: every
    /// page of every guest leaf that meets the range.
    fn want(
        &self,
        parent: &IovaSpace,
        table: &GuestTable,
        start: u64,
        end: u64,
        reads: &mut u64,
    ) -> core::result::Result<Wanted, UnitError> {
        let mut wanted = Wanted {
            span: (start, end),
            ..Wanted::default()
        };
        let mut read = |gpa: u64| {
            *reads += 1;
            if !gpa.is_multiple_of(8) {
                return None;
            }
            let host = self.host_page(parent, gpa)?;
            Some(self.memory.read_u64(PhysAddr::new(host)))
        };
        let mut visit = |found: Found| match found {
            Found::Leaf(leaf) => {
                let end = leaf.iova.saturating_add(leaf.len);
                wanted.span = (wanted.span.0.min(leaf.iova), wanted.span.1.max(end));
                let mut refused = false;
                for at in (0..leaf.len).step_by(PAGE as usize) {
                    if wanted.pages.len() >= PAGE_BUDGET {
                        wanted.too_many = true;
                        return;
                    }
                    match self.host_page(parent, leaf.phys + at) {
                        Some(host) => {
                            let page = Page {
                                host: host & !(PAGE - 1),
                                prot: leaf.prot,
                                leaf: (leaf.iova, leaf.len),
                            };
                            wanted.pages.insert(leaf.iova + at, page);
                        }
                        None => refused = true,
                    }
                }
                if refused {
                    wanted
                        .refused
                        .push((leaf.iova, "guest-physical address outside guest RAM"));
                }
            }
            Found::Bad { iova, reason, .. } => wanted.refused.push((iova.max(start), reason)),
        };
        let mut budget = READ_BUDGET;
        let walked = table
            .format
            .walk(table.root, start, end, &mut budget, &mut read, &mut visit);
        match walked {
            Ok(()) if !wanted.too_many => Ok(wanted),
            Ok(()) => Err(UnitError::GuestCommand(
                "invalidation covers more guest pages than a shadow follows at once",
            )),
            Err(WalkError::Budget) => Err(UnitError::GuestCommand(
                "guest table too large to walk (entry read budget)",
            )),
            Err(_) => Err(UnitError::GuestEntry("table format (unsupported geometry)")),
        }
    }
}

impl<U: TranslationUnit> Iommu<U> {
    /// Allocates a shadowing vIOMMU for `owner` over its paging domain `parent` (guest physical
    /// → host physical; it need not be a nest parent, nor attached to anything), whose
    /// guest-physical RAM is `ram` (page-aligned ranges; guest tables and the pages they map
    /// must lie there). `memory` reads the host pages behind it.
    pub fn alloc_shadow_viommu(
        &mut self,
        owner: OwnerId,
        parent: DomainId,
        ram: &[Region],
        memory: Arc<dyn GuestMemory>,
    ) -> Result<ViommuId> {
        let dom = self.domain(parent, owner)?;
        if !matches!(dom.kind, DomainKind::Paging { .. }) {
            return Err(Error::NotPaging(parent));
        }
        if ram.is_empty()
            || ram.iter().any(|r| {
                !r.start.is_multiple_of(PAGE) || !r.last.wrapping_add(1).is_multiple_of(PAGE)
            })
        {
            return Err(Error::BadLayout(
                "guest RAM: page-aligned ranges, at least one",
            ));
        }
        let unit = dom.unit;
        if let Some(DomainKind::Paging { viommus, .. }) =
            self.domains.get_mut(&parent).map(|d| &mut d.kind)
        {
            *viommus += 1;
        }
        let shadow = Shadowing {
            ram: ram.to_vec(),
            memory,
            domains: BTreeMap::new(),
            state: Mutex::new(State::default()),
        };
        Ok(self.insert_viommu(unit, owner, parent, Backing::Shadow(shadow)))
    }

    /// Allocates the shadow of the guest's table `table` in `owner`'s shadowing vIOMMU `id`: a
    /// paging domain of `stage` on the vIOMMU's unit, filled from the table as it is now.
    /// Attach the guest's devices that use the table to it (they need virtual ids in `id`).
    /// One shadow per guest tag.
    pub fn alloc_shadow_domain(
        &mut self,
        owner: OwnerId,
        id: ViommuId,
        stage: Stage,
        table: GuestTable,
    ) -> Result<DomainId> {
        let v = self.viommu(id, owner)?;
        let Backing::Shadow(s) = &v.backing else {
            return Err(Error::NotShadowing(id));
        };
        if s.domains.contains_key(&table.tag) {
            return Err(Error::ShadowTagInUse {
                viommu: id,
                tag: table.tag,
            });
        }
        let unit = v.unit;
        let ia_bits = table.format.input_bits()?;
        let windows = [Region::below_bits(ia_bits)];
        let layout = Layout {
            windows: &windows,
            reserved: &[],
        };
        let dom = self.alloc_paging(owner, unit, stage, ia_bits, &layout, |space| {
            DomainKind::Shadow {
                space,
                viommu: id,
                table,
            }
        })?;
        if let Some(v) = self.viommus.get_mut(&id) {
            v.nested += 1;
            if let Backing::Shadow(s) = &mut v.backing {
                s.domains.insert(table.tag, dom);
            }
        }
        if let Err(e) = self.follow_now(id, dom, 0, 1 << ia_bits) {
            // Nothing is attached to it yet: undo all of it.
            let _ = self.destroy_domain(owner, dom);
            return Err(e.into());
        }
        Ok(dom)
    }

    /// What `owner`'s shadowing vIOMMU `id` did so far.
    pub fn shadow_stats(&self, owner: OwnerId, id: ViommuId) -> Result<ShadowStats> {
        match &self.viommu(id, owner)?.backing {
            Backing::Shadow(s) => Ok(s.state.lock().stats),
            Backing::Hardware(_) => Err(Error::NotShadowing(id)),
        }
    }

    /// Forgets shadow domain `dom` (tag `tag`) of vIOMMU `id`: its destruction went through.
    pub(super) fn forget_shadow(&mut self, id: ViommuId, dom: DomainId, tag: u32) {
        if let Some(Viommu {
            backing: Backing::Shadow(s),
            ..
        }) = self.viommus.get_mut(&id)
        {
            s.domains.remove(&tag);
            s.state.lock().pages.remove(&dom);
        }
    }

    /// [`Iommu::invalidate`] on a shadowing vIOMMU: each command decoded by the unit and
    /// followed, in order; stops at the first refused one (a command the shadow does not
    /// follow, a table too large, or the host unit failing).
    pub(super) fn invalidate_shadow(
        &self,
        v: &Viommu<U::VIommu>,
        s: &Shadowing,
        cmds: &[U::GuestCommand],
    ) -> Result<Forwarded> {
        let unit = self.unit(v.unit)?;
        for (done, cmd) in cmds.iter().enumerate() {
            let followed = unit.guest_flush(cmd).and_then(|flush| {
                let (tags, start, len): (Vec<DomainId>, u64, u64) = match flush {
                    GuestFlush::Wait => return Ok(()),
                    GuestFlush::Range { tag, iova, len } => (
                        s.domains.get(&tag).copied().into_iter().collect(),
                        iova,
                        len,
                    ),
                    GuestFlush::Tag(tag) => (
                        s.domains.get(&tag).copied().into_iter().collect(),
                        0,
                        u64::MAX,
                    ),
                    GuestFlush::All => (s.domains.values().copied().collect(), 0, u64::MAX),
                };
                if tags.is_empty() {
                    return Ok(());
                }
                s.state.lock().stats.invalidations += 1;
                tags.into_iter()
                    .try_for_each(|dom| self.follow(v, s, dom, start, len))
            });
            if let Err(e) = followed {
                return Ok(Forwarded {
                    done,
                    refused: Some(e),
                });
            }
        }
        Ok(Forwarded {
            done: cmds.len(),
            refused: None,
        })
    }

    /// [`follow`](Self::follow) from a `&mut self` caller.
    fn follow_now(
        &self,
        id: ViommuId,
        dom: DomainId,
        start: u64,
        len: u64,
    ) -> core::result::Result<(), UnitError> {
        let Some(v) = self.viommus.get(&id) else {
            return Ok(());
        };
        let Backing::Shadow(s) = &v.backing else {
            return Ok(());
        };
        self.follow(v, s, dom, start, len)
    }

    /// Brings shadow domain `dom` in step with its guest table over `[start, start + len)`:
    /// pages that changed or vanished are unmapped first (one host invalidation for all of
    /// them, waited for), then new pages mapped. Refused guest leaves are skipped, counted and
    /// reported to the owner.
    fn follow(
        &self,
        v: &Viommu<U::VIommu>,
        s: &Shadowing,
        dom: DomainId,
        start: u64,
        len: u64,
    ) -> core::result::Result<(), UnitError> {
        let (Some(d), Some(parent)) = (self.domains.get(&dom), self.domains.get(&v.parent)) else {
            return Ok(());
        };
        let (DomainKind::Shadow { space, table, .. }, Ok(parent)) =
            (&d.kind, parent.space(v.parent))
        else {
            return Ok(());
        };
        let unit = self
            .unit(d.unit)
            .map_err(|_| UnitError::Unsupported("unit gone"))?;
        let limit = 1u64
            << table
                .format
                .input_bits()
                .map_err(|_| UnitError::GuestEntry("table format"))?;
        let start = start & !(PAGE - 1);
        let end = start.saturating_add(len).min(limit);
        if start >= end {
            return Ok(());
        }
        let mut state = s.state.lock();
        let State { pages, stats } = &mut *state;
        let have = pages.entry(dom).or_default();
        // Grown to the whole of the guest leaves the shadow has there.
        let (start, end) = have
            .range(start..end)
            .fold((start, end), |(lo, hi), (_, p)| {
                (lo.min(p.leaf.0), hi.max(p.leaf.0.saturating_add(p.leaf.1)))
            });
        let mut reads = 0;
        let wanted = s.want(parent, table, start, end, &mut reads);
        stats.entries_read += reads;
        let wanted = wanted?;
        let (start, end) = wanted.span;

        // Pages whose shadow must go: gone from the table, or changed.
        let stale: Vec<u64> = have
            .range(start..end)
            .filter(|(iova, now)| !wanted.pages.get(iova).is_some_and(|p| p.same_mapping(now)))
            .map(|(iova, _)| *iova)
            .collect();
        if !stale.is_empty() {
            let mut gather = Gather::new();
            for iova in &stale {
                let (span, _) = space.begin_unmap(*iova, PAGE).map_err(model_error)?;
                let removed = unit.unmap_deferred(&d.hw, Iova::new(*iova), PAGE, &mut gather);
                space.end_unmap(span, removed.is_ok());
                removed?;
                have.remove(iova);
                stats.unmapped += 1;
            }
            unit.flush_deferred(&d.hw, gather)?;
            stats.host_flushes += 1;
            // The tables the unmaps emptied, once enough places wait (a guest that churns its
            // IOVAs pins no host table memory).
            self.sweep_if_due(d, space);
            // Told once the invalidation completed, as every unmap (under the vIOMMU's lock,
            // so in order with this shadow's other changes).
            for iova in stale {
                if let Some(page) = Region::new(iova, PAGE) {
                    self.notify_unmap(d.unit, dom, page);
                }
            }
        }

        for (&iova, &page) in &wanted.pages {
            if let Some(now) = have.get_mut(&iova) {
                // The same mapping, maybe now from another guest leaf.
                now.leaf = page.leaf;
                continue;
            }
            let Page { host, prot, .. } = page;
            let range = space
                .begin_map(iova, PAGE, host, prot)
                .map_err(model_error)?;
            let made = unit.map(&d.hw, Iova::new(iova), PhysAddr::new(host), PAGE, prot);
            if made.is_ok() {
                self.notify_map(d.unit, dom, range, PhysAddr::new(host), prot);
            }
            space.end_map(range, made.is_ok());
            made?;
            have.insert(iova, page);
            stats.mapped += 1;
        }

        stats.refused += wanted.refused.len() as u64;
        drop(state);
        for (iova, reason) in wanted.refused {
            self.report_refused(v, dom, iova, reason);
        }
        self.notify_queued_faults();
        Ok(())
    }

    /// A refused guest mapping, as a fault of the first device attached to the shadow (with
    /// its virtual id) in its owner's queue. With no device attached there is nobody to name:
    /// the refusal is only counted.
    fn report_refused(
        &self,
        v: &Viommu<U::VIommu>,
        dom: DomainId,
        iova: u64,
        reason: &'static str,
    ) {
        let Some((index, d)) = self
            .devices
            .iter()
            .enumerate()
            .find(|(_, d)| d.target == Target::Domain(dom))
        else {
            return;
        };
        let device = DeviceHandle(index);
        let virtual_id = self.virtual_id_of(device);
        self.deliver_fault(
            v.unit,
            RoutedFault {
                record: FaultRecord {
                    device: d.id,
                    pasid: None,
                    address: iova,
                    write: false,
                    kind: FaultKind::Translation,
                    code: 0,
                    reason,
                },
                device: Some(device),
                owner: Some(v.owner),
                virtual_id,
            },
        );
    }
}

/// The shadow's own claims cannot meet another mapper (the model's map and unmap refuse shadow
/// domains); a refusal here means its record and the space disagree.
fn model_error(e: Error) -> UnitError {
    log::error!("shadow: its record and its IOVA space disagree: {e}");
    UnitError::Unsupported("shadow record out of step with its IOVA space")
}

#[cfg(all(test, not(loom)))]
mod tests;
