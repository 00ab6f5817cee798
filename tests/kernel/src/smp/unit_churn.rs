//! Every CPU maps and unmaps its own range of one domain through the unit at once: the
//! lock-free table and the invalidation / command queue under real concurrent vCPUs.

use super::{bring_up, SharedUnit};
use crate::dma::{DmaBuffer, Rig, IOVA_A};
use crate::hal::HAL;
use crate::Machine;
use alloc::format;
use alloc::sync::Arc;
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, UnitError};
use iommu_boot::smp;
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq};

/// Rounds each CPU runs in [`cpus_map_and_unmap_one_domain_at_once`]: each maps and unmaps one
/// 4 KiB page (the unmap invalidating through the unit's one lock-free queue and waiting for
/// its own completion), every 16th also a 2 MiB block.
const ROUNDS: u64 = 400;
/// The churn walks this many fresh 1 GiB regions, all CPUs in the same one at about the same
/// time: each region's first maps race to install its tables (the engine's compare-and-swap).
const REGIONS: u64 = 64;
/// The first region; CPU `c` uses the 2 MiB slot `c` of a region, and slot `c + 256` for its
/// block maps (disjoint for up to 256 CPUs).
const CHURN_BASE: u64 = 1 << 30;

/// All CPUs map and unmap, through the unit, disjoint ranges of ONE domain at once (the
/// lock-free table and the invalidation / command queue under real concurrent vCPUs); a device
/// attached to that domain throughout then still reaches its untouched page, faults on the
/// pages whose unmaps returned (no stale translation), and tearing the domain down gives every
/// table frame back.
pub fn cpus_map_and_unmap_one_domain_at_once<U>(m: &Machine, r: &Rig<'static, U>) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("needs an edu device"))?;
    let dev = (r.device_id)(edu);
    let stable = DmaBuffer::new(0x5a)?;
    // The device's own configuration (an SMMU's level-2 stream table) stays for the boot;
    // counted from here, every frame is the domain's.
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    let frames_before = HAL.live_frames();
    let domain = Arc::new(r.domain_with(&[(IOVA_A, &stable, Prot::READ_WRITE)])?);
    r.unit
        .attach(dev, Attachment::Paging(&domain))
        .map_err(fail)?;
    let unit: &'static U = r.unit;
    let shared = domain.clone();
    let page = stable.phys();
    let ran = smp::on_every_cpu(move |cpu| {
        let err = |what: &str, iova: u64, e: UnitError| format!("{cpu}: {what} {iova:#x}: {e}");
        let slot = cpu.0 as u64 * 0x20_0000;
        for i in 0..ROUNDS {
            let region = CHURN_BASE + (i % REGIONS) * (1 << 30);
            let iova = region + slot + (i / REGIONS % 8) * 0x1000;
            unit.map(&shared, Iova::new(iova), page, 0x1000, Prot::READ_WRITE)
                .map_err(|e| err("map", iova, e))?;
            match unit.unmap(&shared, Iova::new(iova), 0x1000) {
                Ok(0x1000) => {}
                Ok(other) => return Err(format!("{cpu}: unmap {iova:#x} removed {other:#x}")),
                Err(e) => return Err(err("unmap", iova, e)),
            }
            if i % 16 == 0 {
                let block = region + slot + 256 * 0x20_0000;
                unit.map(
                    &shared,
                    Iova::new(block),
                    PhysAddr::new(0x20_0000),
                    0x20_0000,
                    Prot::READ,
                )
                .map_err(|e| err("map 2M", block, e))?;
                unit.unmap(&shared, Iova::new(block), 0x20_0000)
                    .map_err(|e| err("unmap 2M", block, e))?;
            }
        }
        Ok(())
    });
    let result = (|| {
        ran.map_err(fail)?;
        // The page nobody touched still works; a page whose unmap returned faults.
        r.faults()?;
        edu.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
        edu.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
        ensure!(
            stable.all(2048..2112, 0x5a),
            "DMA through the untouched page"
        );
        let churned = CHURN_BASE + (n as u64 - 1) * 0x20_0000;
        edu.edu.dma_to_ram(0, churned, 4).map_err(fail)?;
        let faults = r.faults()?;
        ensure!(
            faults
                .iter()
                .any(|f| f.device == dev && f.address & !0xfff == churned),
            "no fault for DMA to {churned:#x}, unmapped by another CPU: {faults:?}"
        );
        Ok(())
    })();
    r.unit.attach(dev, Attachment::Blocking).map_err(fail)?;
    let domain = Arc::try_unwrap(domain).map_err(|_| fail("a CPU still holds the domain"))?;
    r.unit.destroy_domain(domain).map_err(|(_, e)| fail(e))?;
    result?;
    ensure_eq!(
        HAL.live_frames(),
        frames_before,
        "table frames after teardown"
    );
    Ok(())
}
