//! Multi-CPU tests, both architectures: the runner boots `-smp N` with `smp=N` on the command
//! line, and every CPU must check in, know who it is, and run a closure at the same time as the
//! others. Boots without `smp=` (or `smp=1`) skip them.
//!
//! - this file: the per-CPU runner itself;
//! - `unit_churn`: every CPU maps and unmaps one domain through the unit directly;
//! - `object_model`: every CPU uses the object model's data path on one shared `Iommu`;
//! - `control_path`: attach, detach, claim and release racing maps and each other;
//! - `figures`: per-CPU operation counts on 1, 2 and 4 CPUs, lock-free against a locked unit;
//! - `queue_errors`: an illegal command among every CPU's invalidations.

mod control_path;
mod figures;
mod object_model;
mod queue_errors;
mod unit_churn;

pub use control_path::{
    a_shared_domain_is_attached_and_detached_while_cpus_map_into_it,
    owners_racing_for_one_group_keep_it_viable,
};
pub use figures::per_cpu_figures_one_two_four_cpus;
pub use object_model::{
    cpus_map_and_unmap_through_the_object_model_while_dma_runs,
    cpus_racing_on_one_range_are_decided_once,
};
pub use queue_errors::an_illegal_command_is_reported_to_its_cpu_only;
pub use unit_churn::cpus_map_and_unmap_one_domain_at_once;

use crate::dma::Rig;
use crate::Machine;
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use iommu::unit::TranslationUnit;
use iommu_boot::smp::{self, CpuFailure, CpuId, SmpError};
use iommu_boot::testing::{fail, Failure, Test, TestResult};
use iommu_boot::{ensure, ensure_eq, skip};

/// What an architecture gives the multi-CPU tests: its rig (unit and edus), and what its DMA
/// probes need announced first (the faults QEMU logs as guest errors).
pub(crate) trait Arch: 'static {
    type Unit: SharedUnit;
    fn rig(m: &Machine) -> Result<Rig<'static, Self::Unit>, Failure>;
    fn announce_faults() {}
}

/// The multi-CPU tests of architecture `A`, to run after all the others (the secondaries they
/// start stay parked afterwards; every other test runs on the boot CPU). `queue_error` is the
/// architecture's test of one bad command among every CPU's invalidations.
/// `a_cpu_that_does_not_finish_is_named` comes last: it leaves a CPU behind.
pub(crate) fn tests<A: Arch>(queue_error: Test<Machine>) -> [Test<Machine>; 9] {
    [
        Test {
            name: "every_cpu_checks_in_and_runs_concurrently",
            run: every_cpu_checks_in_and_runs_concurrently,
        },
        Test {
            name: "cpus_map_and_unmap_one_domain_at_once",
            run: |m| cpus_map_and_unmap_one_domain_at_once(m, &faulting_rig::<A>(m)?),
        },
        Test {
            name: "cpus_map_and_unmap_through_the_object_model_while_dma_runs",
            run: |m| {
                cpus_map_and_unmap_through_the_object_model_while_dma_runs(m, faulting_rig::<A>(m)?)
            },
        },
        Test {
            name: "cpus_racing_on_one_range_are_decided_once",
            run: |m| cpus_racing_on_one_range_are_decided_once(m, A::rig(m)?),
        },
        Test {
            name: "a_shared_domain_is_attached_and_detached_while_cpus_map_into_it",
            run: |m| {
                a_shared_domain_is_attached_and_detached_while_cpus_map_into_it(
                    m,
                    faulting_rig::<A>(m)?,
                )
            },
        },
        Test {
            name: "owners_racing_for_one_group_keep_it_viable",
            run: |m| owners_racing_for_one_group_keep_it_viable(m, A::rig(m)?),
        },
        Test {
            name: "per_cpu_figures_one_two_four_cpus",
            run: |m| per_cpu_figures_one_two_four_cpus(m, &A::rig(m)?),
        },
        queue_error,
        Test {
            name: "a_cpu_that_does_not_finish_is_named",
            run: a_cpu_that_does_not_finish_is_named,
        },
    ]
}

/// The rig of a test whose DMA probes fault, their faults announced.
fn faulting_rig<A: Arch>(m: &Machine) -> Result<Rig<'static, A::Unit>, Failure> {
    let rig = A::rig(m)?;
    A::announce_faults();
    Ok(rig)
}

/// How long a CPU waits for the others inside the closure (they met at the runner's barrier
/// just before, so this is generous).
pub(crate) const OVERLAP_TIMEOUT_US: u64 = 10_000_000;

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

/// A unit every CPU can use at once, with domains and vIOMMUs that can be shared with them: what
/// the tests here need of a back-end.
pub trait SharedUnit:
    TranslationUnit<Domain: Send + Sync + 'static, VIommu: Send + Sync + 'static> + Sync + 'static
{
}

impl<U> SharedUnit for U where
    U: TranslationUnit<Domain: Send + Sync + 'static, VIommu: Send + Sync + 'static>
        + Sync
        + 'static
{
}

/// An object model over the rig's unit, interrupts allowed unsafe: these tests are about DMA and
/// the data path, interrupt isolation has its own.
pub(crate) fn object_model<U: SharedUnit>(
    r: &crate::dma::Rig<'static, U>,
) -> (iommu::iommufd::Iommu<&'static U>, iommu::iommufd::UnitId) {
    let mut io = iommu::iommufd::Iommu::new();
    let u = io.add_unit(r.unit);
    io.allow_unsafe_interrupts(true);
    (io, u)
}
