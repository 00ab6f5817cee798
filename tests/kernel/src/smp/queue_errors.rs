//! Every CPU submits invalidations to the unit's one queue at once, each waiting for its own
//! completion, while one CPU submits an illegal command: that CPU, and only that CPU, gets the
//! error; every other batch completes. Written once; each back-end gives its good and bad
//! submissions.

use super::bring_up;
use crate::Machine;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};
use iommu_boot::ensure_eq;
use iommu_boot::smp;
use iommu_boot::testing::{fail, TestResult};

/// Batches each CPU submits (each with its own wait).
const BATCHES: usize = 300;

/// Runs the race. `good` submits one valid batch and waits for it; `bad` submits a batch with an
/// illegal command in it and returns `Ok` exactly if the submitter got that command's error.
pub fn an_illegal_command_is_reported_to_its_cpu_only(
    m: &Machine,
    good: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    bad: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> TestResult {
    let n = bring_up(m)?;
    let culprit = n - 1;
    let done = Arc::new(AtomicUsize::new(0));
    let done2 = done.clone();
    smp::on_every_cpu(move |cpu| {
        for i in 0..BATCHES {
            if cpu.0 == culprit && i == BATCHES / 2 {
                bad().map_err(|e| format!("{cpu}: the illegal batch: {e}"))?;
            }
            good().map_err(|e| format!("{cpu}: batch {i}: {e}"))?;
            done2.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })
    .map_err(fail)?;
    ensure_eq!(
        done.load(Ordering::Relaxed),
        n * BATCHES,
        "batches completed"
    );
    Ok(())
}
