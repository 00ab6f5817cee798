//! A table-only [`TranslationUnit`] for host tests and benchmarks (feature `host-hal`): its
//! domains are real I/O page tables in host memory
//! ([`HostHal`](crate::hal::host::HostHal)), and it has no devices, no PASIDs and no vIOMMUs.
//! An unmap completes its gather at once, after an optional invalidation hook (a benchmark's
//! simulated queue); a deferred unmap leaves it to `flush_deferred`, one hook call per gather.

extern crate std;

use core::ops::Range;
use std::boxed::Box;

use super::{
    Attachment, CpuTable, DeviceId, Drained, FaultRecord, Forwarded, GuestEntry, HardwareInfo,
    RawRegisters, Stage, TranslationUnit, UnitError,
};
use crate::addr::{Iova, PhysAddr};
use crate::hal::host::HostHal;
use crate::pagetable::{
    Coherency, FlushRange, Format, Gather, Granule, PageTable, Prot, VmsaConfig, VmsaStage1,
    VtdSecondStage, VtdSecondStageConfig,
};

/// What every table-only unit shares: 4 KiB, 2 MiB and 1 GiB leaves, coherent walks, and none
/// of the features that need devices.
const TABLE_ONLY: HardwareInfo = HardwareInfo {
    first_stage: false,
    second_stage: false,
    nesting: false,
    identity: false,
    pasid_bits: 0,
    first_stage_ia_bits: 0,
    second_stage_ia_bits: 0,
    output_bits: 0,
    page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
    coherent_walks: true,
    ats: false,
    interrupt_remapping: false,
    tags: u32::MAX,
    raw: RawRegisters::Vtd {
        version: 0,
        cap: 0,
        ecap: 0,
    },
};

/// What an unmap does between clearing the entries and freeing the tables they held: the
/// invalidation of `(iova, len)`, complete when it returns.
type Invalidate = Box<dyn Fn(Iova, u64) -> Result<(), UnitError> + Send + Sync>;

/// A unit whose domains are page tables of format `F` in host memory, each with a [`HostHal`]
/// of its own, and nothing else: attach, PASIDs, shared domains and vIOMMUs are refused.
pub struct TableUnit<F> {
    info: HardwareInfo,
    new_format: fn(u32) -> Result<F, UnitError>,
    invalidate: Option<Invalidate>,
}

impl<F> core::fmt::Debug for TableUnit<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TableUnit")
            .field("info", &self.info)
            .field("invalidates", &self.invalidate.is_some())
            .finish_non_exhaustive()
    }
}

impl TableUnit<VtdSecondStage> {
    /// VT-d second-stage tables (4-level, 4 KiB / 2 MiB / 1 GiB leaves, 46-bit output).
    pub fn vtd_second_stage() -> Self {
        Self {
            info: HardwareInfo {
                second_stage: true,
                second_stage_ia_bits: 48,
                output_bits: 46,
                raw: RawRegisters::Vtd {
                    version: 0x10,
                    cap: 0,
                    ecap: 0,
                },
                ..TABLE_ONLY
            },
            new_format: |ia_bits| {
                Ok(VtdSecondStage::new(VtdSecondStageConfig {
                    sagaw: 0b0100,
                    sllps: 0b11,
                    address_width: ia_bits,
                    output_width: 46,
                    snoop_control: true,
                })?)
            },
            invalidate: None,
        }
    }
}

impl TableUnit<VmsaStage1> {
    /// VMSAv8-64 stage-1 tables (4 KiB granule, 48-bit output), as an SMMU's CDs point at.
    pub fn vmsa_stage1() -> Self {
        Self {
            info: HardwareInfo {
                first_stage: true,
                first_stage_ia_bits: 48,
                output_bits: 48,
                raw: RawRegisters::Smmuv3 {
                    idr: [0; 6],
                    iidr: 0,
                    aidr: 0,
                },
                ..TABLE_ONLY
            },
            new_format: |ia_bits| {
                Ok(VmsaStage1::new(VmsaConfig {
                    granule: Granule::Size4K,
                    input_bits: ia_bits,
                    output_bits: 48,
                })?)
            },
            invalidate: None,
        }
    }
}

impl<F> TableUnit<F> {
    /// The same unit, calling `invalidate(iova, len)` in every unmap after the entries are
    /// cleared and before the tables they held are freed (where a real unit invalidates its
    /// IOTLB).
    pub fn with_invalidation(
        self,
        invalidate: impl Fn(Iova, u64) -> Result<(), UnitError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            invalidate: Some(Box::new(invalidate)),
            ..self
        }
    }
}

/// The invalidation of a table-only unit: the hook, if any (no hardware walks host memory).
struct HookFlush<'a>(Option<&'a (dyn Fn(Iova, u64) -> Result<(), UnitError> + Send + Sync)>);

// SAFETY: no hardware walks these tables, so nothing is cached to invalidate: "complete" holds
// as soon as the hook (a benchmark's simulated queue) returns `Ok`; its error is passed on.
unsafe impl FlushRange for HookFlush<'_> {
    type Error = UnitError;

    fn flush(&self, iova: Iova, len: u64, _leaf_only: bool) -> Result<(), UnitError> {
        match self.0 {
            Some(invalidate) => invalidate(iova, len),
            None => Ok(()),
        }
    }
}

impl<F: Format> TranslationUnit for TableUnit<F> {
    type Domain = PageTable<F, HostHal>;
    type VIommu = core::convert::Infallible;
    type GuestCommand = [u64; 2];

    fn info(&self) -> HardwareInfo {
        self.info
    }

    fn new_domain(&self, _stage: Stage, ia_bits: u32) -> Result<Self::Domain, UnitError> {
        let format = (self.new_format)(ia_bits)?;
        Ok(PageTable::new(format, HostHal::new(), Coherency::Coherent)?)
    }

    fn new_shared_domain(&self, _cpu: &CpuTable) -> Result<Self::Domain, UnitError> {
        Err(UnitError::Unsupported("shared domains"))
    }

    fn destroy_domain(&self, domain: Self::Domain) -> Result<(), (Self::Domain, UnitError)> {
        drop(domain);
        Ok(())
    }

    fn attach(&self, _: DeviceId, _: Attachment<'_, Self::Domain>) -> Result<(), UnitError> {
        Err(UnitError::Unsupported("devices"))
    }

    fn attach_pasid(
        &self,
        _: DeviceId,
        _: u32,
        _: Attachment<'_, Self::Domain>,
    ) -> Result<(), UnitError> {
        Err(UnitError::Unsupported("PASIDs"))
    }

    fn map(
        &self,
        table: &Self::Domain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), UnitError> {
        Ok(table.map(iova, phys, len, prot)?)
    }

    fn unmap(&self, table: &Self::Domain, iova: Iova, len: u64) -> Result<u64, UnitError> {
        table.unmap_flushed(iova, len, &HookFlush(self.invalidate.as_deref()))
    }

    fn unmap_pruning(
        &self,
        table: &Self::Domain,
        iova: Iova,
        len: u64,
        owned: Range<u64>,
    ) -> Result<u64, UnitError> {
        let flush = HookFlush(self.invalidate.as_deref());
        table.unmap_pruning_flushed(iova, len, owned, &flush)
    }

    fn prune_tables(
        &self,
        table: &Self::Domain,
        points: &[(Iova, Range<u64>)],
    ) -> Result<usize, UnitError> {
        let mut gather = Gather::new();
        let freed = table.prune(points, &mut gather)?;
        self.flush_deferred(table, gather)?;
        Ok(freed)
    }

    fn unmap_deferred(
        &self,
        table: &Self::Domain,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, UnitError> {
        Ok(table.unmap(iova, len, gather)?)
    }

    fn flush_deferred(&self, table: &Self::Domain, gather: Gather) -> Result<(), UnitError> {
        table.flush_gather(gather, &HookFlush(self.invalidate.as_deref()))
    }

    fn reclaim_tables(&self, table: &mut Self::Domain) -> Result<usize, UnitError> {
        table.reclaim_flushed(&HookFlush(self.invalidate.as_deref()))
    }

    fn flush(&self, _: &Self::Domain, _: Iova, _: u64) -> Result<(), UnitError> {
        Ok(())
    }

    fn drain_faults(&self, _: &mut dyn FnMut(FaultRecord)) -> Result<Drained, UnitError> {
        Ok(Drained::default())
    }

    fn new_viommu(&self, _: &Self::Domain) -> Result<Self::VIommu, UnitError> {
        Err(UnitError::Unsupported("vIOMMUs"))
    }

    fn destroy_viommu(&self, viommu: Self::VIommu) -> Result<(), (Self::VIommu, UnitError)> {
        match viommu {}
    }

    fn new_nested(&self, viommu: &Self::VIommu, _: &GuestEntry) -> Result<Self::Domain, UnitError> {
        match *viommu {}
    }

    fn forward_invalidations(
        &self,
        viommu: &Self::VIommu,
        _: &dyn Fn(u32) -> Option<DeviceId>,
        _: &[[u64; 2]],
    ) -> Forwarded {
        match *viommu {}
    }
}
