//! Multi-CPU tests, both architectures: the runner boots `-smp N` with `smp=N` on the command
//! line, and every CPU must check in, know who it is, and run a closure at the same time as the
//! others. Boots without `smp=` (or `smp=1`) skip them.

use crate::dma::{DmaBuffer, Rig, IOVA_A};
use crate::hal::HAL;
use crate::Machine;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use iommu::addr::{Iova, PhysAddr};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, TranslationUnit, UnitError};
use iommu_boot::smp::{self, CpuFailure, CpuId, SmpError};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};

/// How long a CPU waits for the others inside the closure (they met at the runner's barrier
/// just before, so this is generous).
const OVERLAP_TIMEOUT_US: u64 = 10_000_000;

/// The `smp=N` of the command line, if more than one CPU was asked for.
fn expected_cpus(m: &Machine) -> Option<usize> {
    let n = m.cmdline.get_u64("smp")?;
    usize::try_from(n).ok().filter(|&n| n > 1)
}

/// Brings up the CPUs `smp=N` announces, checking there are exactly N.
pub fn bring_up(m: &Machine) -> Result<usize, iommu_boot::testing::Failure> {
    let Some(n) = expected_cpus(m) else {
        skip!("single-CPU boot (no smp=N above 1 on the command line)")
    };
    let cpus = smp::bring_up(&m.info).map_err(fail)?;
    ensure_eq!(cpus.len(), n, "CPUs listed by the firmware vs smp=N");
    Ok(n)
}

/// Every CPU checks in, sees its own id in its per-CPU register and its hardware id where the
/// firmware said, and runs the closure while all the others do: each counts itself in, then
/// waits (bounded) until all have, which only works if they overlap.
pub fn every_cpu_checks_in_and_runs_concurrently(m: &mut Machine) -> TestResult {
    let n = bring_up(m)?;
    let cpus = smp::cpus();
    let mut hw: Vec<u64> = cpus.iter().map(|c| c.hw_id).collect();
    hw.sort_unstable();
    hw.dedup();
    ensure_eq!(hw.len(), n, "distinct hardware ids");
    ensure_eq!(smp::this_cpu(), CpuId(0), "the tests run on the boot CPU");

    // Relaxed counters: only the counts matter; the runner's barrier and verdict slots order
    // the rest.
    let inside = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new([const { AtomicUsize::new(0) }; smp::MAX_CPUS]);
    let (inside2, ran2) = (inside.clone(), ran.clone());
    smp::on_every_cpu(move |cpu| {
        if smp::this_cpu() != cpu {
            return Err(format!("per-CPU register says {}", smp::this_cpu()));
        }
        let listed = smp::cpus().get(cpu.0).map(|c| c.hw_id);
        if listed != Some(smp::this_cpu_hw_id()) {
            return Err(format!(
                "hardware id {:#x}, firmware listed {listed:x?}",
                smp::this_cpu_hw_id()
            ));
        }
        ran2[cpu.0].fetch_add(1, Ordering::Relaxed);
        inside2.fetch_add(1, Ordering::Relaxed);
        smp::wait_until("every CPU inside the closure", OVERLAP_TIMEOUT_US, || {
            inside2.load(Ordering::Relaxed) >= n
        })
        .map_err(|_| {
            format!(
                "only {} of {n} CPUs were inside the closure at once",
                inside2.load(Ordering::Relaxed)
            )
        })
    })
    .map_err(fail)?;
    for (i, count) in ran.iter().take(n).enumerate() {
        ensure_eq!(
            count.load(Ordering::Relaxed),
            1,
            "runs of the closure on cpu {i}"
        );
    }
    ensure!(
        inside.load(Ordering::Relaxed) == n,
        "{} CPUs counted in",
        inside.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A CPU that does not finish within the run's bound fails the run with its id, and only that
/// CPU; once it has finished, the next run on every CPU works (it is not restarted under its
/// feet meanwhile).
pub fn a_cpu_that_does_not_finish_is_named(m: &mut Machine) -> TestResult {
    const BOUND_US: u64 = 200_000;
    let n = bring_up(m)?;
    let last = CpuId(n - 1);
    // Release/Acquire: the late CPU's `left` store is seen after it stopped waiting.
    let release = Arc::new(AtomicBool::new(false));
    let left = Arc::new(AtomicBool::new(false));
    let (release2, left2) = (release.clone(), left.clone());
    let run = smp::on_every_cpu_within(BOUND_US, move |cpu| {
        if cpu == last {
            let _ = smp::wait_until("the test to release it", OVERLAP_TIMEOUT_US, || {
                release2.load(Ordering::Acquire)
            });
            left2.store(true, Ordering::Release);
        }
        Ok(())
    });
    release.store(true, Ordering::Release);
    match &run {
        Err(SmpError::Cpus(failures))
            if failures.len() == 1
                && failures[0].0.id == last
                && failures[0].1
                    == CpuFailure::DidNotFinish {
                        within_us: BOUND_US,
                    } => {}
        other => {
            return Err(fail(format!(
                "expected only {last} named as not finished, got {other:?}"
            )))
        }
    }
    smp::wait_until(
        "the late CPU to leave its closure",
        OVERLAP_TIMEOUT_US,
        || left.load(Ordering::Acquire),
    )
    .map_err(fail)?;
    smp::on_every_cpu(|_| Ok(())).map_err(fail)
}

/// The runner self-test `selftest=cpu-panic`: the last CPU panics inside the closure; the run
/// must fail naming it (the test then fails with the runner's verdict).
pub fn last_cpu_panics(m: &mut Machine) -> TestResult {
    let n = bring_up(m)?;
    smp::on_every_cpu(move |cpu| {
        if cpu.0 == n - 1 {
            panic!("deliberate panic on {cpu}");
        }
        Ok(())
    })
    .map_err(fail)
}

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
    U: TranslationUnit + Sync,
    U::Domain: Send + Sync + 'static,
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
