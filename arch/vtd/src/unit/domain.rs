//! Domains: the domain type (a domain id and a table in one of the unit's formats), their
//! creation and destruction, and the unit's domain-id pool ([`domain_ids`](super::domain_ids)).

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::Hal;
use iommu::pagetable::{
    Gather, PageTable, VtdSecondStage, VtdSecondStageConfig, X86FirstStage, X86FirstStageConfig,
};
use iommu::unit::{CpuTable, Stage, UnitError};

use super::{Batch, Mode, VtdUnit};
use crate::caps::Agaw;
use crate::descriptor::{Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope};
use crate::pasid::{FirstStagePaging, Pasid};
use crate::root_table::Did;

/// A domain: its tag on this unit and its table (one of the unit's paging formats, or a CPU
/// table the embedder owns). Give it back with [`TranslationUnit::destroy_domain`](iommu::unit::TranslationUnit::destroy_domain); a domain
/// merely dropped keeps its id and table frames for the unit's life.
pub struct VtdDomain<H: Hal> {
    pub(crate) id: Did,
    pub(crate) table: DomainTable<H>,
}

pub(crate) enum DomainTable<H: Hal> {
    Second(PageTable<VtdSecondStage, H>),
    First(PageTable<X86FirstStage, H>),
    /// The embedder's x86-64 CPU table (shared virtual addressing): first-stage format, changed
    /// only by the embedder.
    Shared {
        root: PhysAddr,
        paging: FirstStagePaging,
    },
    /// Built from a guest's PASID entry over a vIOMMU's nest parent (`crate::viommu`).
    Nested(crate::viommu::NestedTable),
}

impl<H: Hal> DomainTable<H> {
    /// Whether the unit walks the table as first stage (x86-64 paging): its translations are
    /// tagged with (domain id, PASID) and need PASID-based invalidations.
    pub(crate) fn first_stage(&self) -> bool {
        !matches!(self, Self::Second(_) | Self::Nested(_))
    }
}

impl<H: Hal> VtdDomain<H> {
    pub(crate) fn from_parts(id: Did, table: DomainTable<H>) -> Self {
        Self { id, table }
    }

    /// The domain id the unit's caches tag this domain's translations with.
    pub fn id(&self) -> Did {
        self.id
    }

    pub fn stage(&self) -> Stage {
        match self.table {
            DomainTable::Second(_) | DomainTable::Nested(_) => Stage::Second,
            DomainTable::First(_) | DomainTable::Shared { .. } => Stage::First,
        }
    }

    /// The table root the context or PASID entry points at.
    pub fn root(&self) -> PhysAddr {
        match &self.table {
            DomainTable::Second(t) => t.root(),
            DomainTable::First(t) => t.root(),
            DomainTable::Shared { root, .. } => *root,
            DomainTable::Nested(n) => n.root(),
        }
    }

    /// Whether the domain translates through a CPU table the embedder owns.
    pub fn is_shared(&self) -> bool {
        matches!(self.table, DomainTable::Shared { .. })
    }

    /// The physical address `iova` translates to in this domain's own table (not for shared
    /// domains).
    pub fn translate(&self, iova: Iova) -> Result<PhysAddr, UnitError> {
        Ok(match &self.table {
            DomainTable::Second(t) => t.iova_to_phys(iova)?,
            DomainTable::First(t) => t.iova_to_phys(iova)?,
            DomainTable::Shared { .. } => return Err(UnitError::Unsupported(SHARED_TABLE)),
            DomainTable::Nested(_) => return Err(NESTED_MAP),
        })
    }
}

pub(super) const SHARED_TABLE: &str =
    "map/unmap of a domain sharing a CPU table (the embedder changes it, then calls flush)";

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// Limits fresh domain ids to those below `limit` (at most CAP.ND's count; pass
    /// `u32::MAX` to lift it). Ids given back by [`TranslationUnit::destroy_domain`](iommu::unit::TranslationUnit::destroy_domain) are
    /// reused first whatever the limit; an embedder sharing the id space, or a test showing
    /// reuse, narrows the window.
    pub fn set_domain_id_limit(&self, limit: u32) {
        let _guard = self.tables.lock();
        self.ids.set_limit(limit);
    }

    /// The next fresh domain id: every id below it has been handed out at least once.
    pub fn domain_id_high_water(&self) -> u32 {
        let _guard = self.tables.lock();
        self.ids.high_water()
    }

    /// How many context and PASID entries point at `domain` now.
    pub fn domain_users(&self, domain: &VtdDomain<H>) -> u32 {
        let _guard = self.tables.lock();
        self.ids.users(&self.hal, domain.id)
    }

    pub(crate) fn allocate_domain_id(&self) -> Result<Did, UnitError> {
        let _guard = self.tables.lock();
        self.ids.allocate(&self.hal)
    }

    /// [`TranslationUnit::new_domain`]: a paging domain of `stage` with a fresh domain id.
    pub(super) fn new_paging_domain(
        &self,
        stage: Stage,
        ia_bits: u32,
    ) -> Result<VtdDomain<H>, UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let table = match stage {
            Stage::Second => {
                if self.mode == Mode::Scalable && !ecap.slts() {
                    return Err(UnitError::Unsupported(
                        "second-stage PASID entries (ECAP.SLTS)",
                    ));
                }
                let format = VtdSecondStage::new(VtdSecondStageConfig {
                    sagaw: cap.sagaw().bits(),
                    sllps: u8::from(cap.sllps().size_2m) | u8::from(cap.sllps().size_1g) << 1,
                    address_width: ia_bits.min(u32::from(cap.mgaw())),
                    output_width: self.output_width,
                    snoop_control: ecap.sc(),
                })?;
                DomainTable::Second(PageTable::new(format, self.hal.clone(), self.coherency)?)
            }
            Stage::First => {
                if self.mode != Mode::Scalable || !ecap.flts() {
                    return Err(UnitError::Unsupported(
                        "first-stage tables (scalable mode, ECAP.FLTS)",
                    ));
                }
                let mut cfg = X86FirstStageConfig::four_level(self.output_width);
                cfg.page_1g = cap.fs1gp();
                let format = X86FirstStage::new(cfg)?;
                DomainTable::First(PageTable::new(format, self.hal.clone(), self.coherency)?)
            }
        };
        let id = self.allocate_domain_id()?;
        Ok(VtdDomain { id, table })
    }

    /// [`TranslationUnit::new_shared_domain`]: a first-stage domain over the embedder's CPU table.
    pub(super) fn new_shared(&self, cpu: &CpuTable) -> Result<VtdDomain<H>, UnitError> {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        if self.mode != Mode::Scalable || !ecap.flts() {
            return Err(UnitError::Unsupported(
                "shared CPU tables need first-stage PASID entries (scalable mode, ECAP.FLTS)",
            ));
        }
        let paging = match cpu.ia_bits {
            48 => FirstStagePaging::FourLevel,
            57 if cap.fs5lp() => FirstStagePaging::FiveLevel,
            57 => {
                return Err(UnitError::Unsupported(
                    "5-level first-stage paging (CAP.FS5LP)",
                ))
            }
            _ => {
                return Err(UnitError::Unsupported(
                    "CPU table depth: ia_bits must be 48 (4-level) or 57 (5-level)",
                ))
            }
        };
        let root = cpu.root.as_u64();
        if !root.is_multiple_of(4096) {
            return Err(UnitError::PageTable(iommu::pagetable::Error::UnalignedPhys));
        }
        if self.output_width < 64 && root >> self.output_width != 0 {
            return Err(UnitError::PageTable(iommu::pagetable::Error::PhysBeyondOas));
        }
        let id = self.allocate_domain_id()?;
        Ok(VtdDomain {
            id,
            table: DomainTable::Shared {
                root: cpu.root,
                paging,
            },
        })
    }

    /// [`TranslationUnit::destroy_domain`](iommu::unit::TranslationUnit::destroy_domain): refused while any entry points at the domain;
    /// otherwise its id is invalidated whole, its table freed and the id given back.
    // The refused domain comes back whole for the caller to keep: a rare path, not worth a box.
    #[allow(clippy::result_large_err)]
    pub(super) fn destroy(&self, domain: VtdDomain<H>) -> Result<(), (VtdDomain<H>, UnitError)> {
        let _guard = self.tables.lock();
        if self.ids.users(&self.hal, domain.id) != 0 {
            return Err((domain, UnitError::Busy));
        }
        // A nested domain has no table of its own: its vIOMMU forgets one user of the guest's
        // id, and the last one over a guest first stage gives the host id back. (The users
        // count is per id, so this waits until no entry tagged with the id is left: for the
        // parent alone, until the parent itself is attached nowhere either.)
        let domain = match domain.table {
            DomainTable::Nested(n) => {
                let id = domain.id;
                return crate::viommu::destroy_nested(self, id, n).map_err(|(n, e)| {
                    (
                        VtdDomain {
                            id,
                            table: DomainTable::Nested(n),
                        },
                        e,
                    )
                });
            }
            table => VtdDomain { table, ..domain },
        };
        // A nest parent is in use while a vIOMMU holds it.
        if self.nest_parents.is_pinned(domain.id) {
            return Err((domain, UnitError::Busy));
        }
        // No entry points at the domain any more, and each detach invalidated what it cached;
        // the id is invalidated once more as a whole before anyone else gets it, so no cache
        // entry of this owner can serve the next one (6.5.3.3: before a domain id is reused).
        let mut batch = Batch::new();
        if self.mode == Mode::Scalable {
            batch.push(Descriptor::PasidCache(PasidCacheScope::Domain(domain.id)));
        }
        if domain.table.first_stage() {
            batch.push(Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
                domain: domain.id,
                pasid: Pasid::ZERO,
            }));
        }
        batch.push(Descriptor::Iotlb {
            scope: IotlbScope::Domain(domain.id),
            drain: self.drain(),
        });
        if let Err(e) = self.invalidate(batch.iter()) {
            return Err((domain, e));
        }
        let VtdDomain { id, table } = domain;
        let mut gather = Gather::new();
        match table {
            DomainTable::Second(t) => drop(t.destroy(&mut gather)),
            DomainTable::First(t) => drop(t.destroy(&mut gather)),
            // The CPU table is the embedder's: nothing of it is freed.
            DomainTable::Shared { .. } | DomainTable::Nested(_) => {}
        }
        // SAFETY: no context or PASID entry of this unit points at the table (the count is 0
        // under the lock, so none can be added meanwhile), every cache entry tagged with its
        // domain id (IOTLB and paging-structure caches) was invalidated above and the unit
        // reported completion; `destroy_domain` owns the domain, so no map or unmap on it can
        // run; the frames came from a clone of `self.hal`.
        unsafe { gather.complete(&self.hal) };
        self.ids.release(&self.hal, id);
        Ok(())
    }
}

/// Map and unmap of a nested domain: its tables are the guest's and the parent's.
pub(super) const NESTED_MAP: UnitError = UnitError::Unsupported(
    "map/unmap on a nested domain (the guest owns its table; map the nest parent)",
);

pub(crate) fn agaw_of(aw: u8) -> Result<Agaw, UnitError> {
    Agaw::ALL
        .into_iter()
        .find(|a| a.encoding() == aw)
        .ok_or(UnitError::Unsupported("second-stage depth"))
}
