//! What firmware says about one SMMUv3, in one form whichever table said it: the devicetree's
//! `arm,smmu-v3` node ([`crate::devicetree`]) or the ACPI IORT's SMMUv3 node ([`crate::iort`]).
//!
//! Bring-up needs the register frame; the embedder's interrupt routing needs the GIC interrupt
//! ids of the wired interrupts; table attributes depend on whether the SMMU's accesses are
//! coherent. Requester id → stream id lookups stay with each table
//! ([`Devicetree::stream_id`](crate::devicetree::Devicetree::stream_id),
//! [`Iort::map_rid`](crate::iort::Iort::map_rid)).

use core::ptr::NonNull;

use crate::devicetree::Smmu;
use crate::iort::SmmuV3;
use crate::registers::SmmuRegisters;

/// One SMMUv3 as firmware describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmmuDescription {
    /// Physical address of the register frame (page 0; page 1 follows at +64 KiB).
    pub base: u64,
    /// The SMMU's table and queue accesses snoop CPU caches: the devicetree's `dma-coherent`,
    /// the IORT's COHACC override flag.
    pub coherent: bool,
    /// GIC interrupt ids (INTID, which ACPI calls GSIV) of the wired interrupts; `None` when
    /// absent (or MSI-only). Devicetree SPI `n` is INTID `n + 32`.
    pub eventq_irq: Option<u32>,
    pub priq_irq: Option<u32>,
    pub cmdq_sync_irq: Option<u32>,
    pub gerror_irq: Option<u32>,
}

impl SmmuDescription {
    /// From a devicetree `arm,smmu-v3` node. An interrupt that is not a GIC SPI/PPI counts as
    /// absent (a driver cannot route it through the GIC).
    pub fn from_devicetree(smmu: &Smmu<'_>) -> Self {
        let i = smmu.interrupts;
        let id = |irq: Option<crate::devicetree::Interrupt>| irq.and_then(|i| i.gic_intid());
        Self {
            base: smmu.regs.base,
            coherent: smmu.dma_coherent,
            eventq_irq: id(i.eventq.or(i.combined)),
            priq_irq: id(i.priq.or(i.combined)),
            cmdq_sync_irq: id(i.cmdq_sync.or(i.combined)),
            gerror_irq: id(i.gerror.or(i.combined)),
        }
    }

    /// From an IORT SMMUv3 node. A GSIV of 0 means the interrupt is not wired (DEN 0049: MSIs
    /// or none).
    pub fn from_iort(smmu: &SmmuV3) -> Self {
        let id = |gsiv: u32| (gsiv != 0).then_some(gsiv);
        Self {
            base: smmu.base,
            coherent: smmu.coherent_override,
            eventq_irq: id(smmu.event_gsiv),
            priq_irq: id(smmu.pri_gsiv),
            cmdq_sync_irq: id(smmu.sync_gsiv),
            gerror_irq: id(smmu.gerr_gsiv),
        }
    }

    /// The register frame as [`SmmuUnit::new`](crate::unit::SmmuUnit::new) takes it, where
    /// physical and virtual addresses are the same (identity-mapped MMIO); `None` for address
    /// 0 or one beyond the address space.
    pub fn identity_mapped_registers(&self) -> Option<NonNull<SmmuRegisters>> {
        NonNull::new(usize::try_from(self.base).ok()? as *mut SmmuRegisters)
    }
}

#[cfg(test)]
mod tests;
