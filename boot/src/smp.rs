//! More than one CPU: start the secondaries the firmware lists (x86_64: ACPI MADT, INIT-SIPI-SIPI;
//! aarch64: devicetree `/cpus`, PSCI CPU_ON) and run one closure on every CPU at once.
//!
//! Secondaries only run inside [`on_every_cpu`]: each run starts them (again), they meet the boot
//! CPU at a barrier so the closures truly overlap, run the closure, leave their verdict in their
//! slot and stop (x86_64: `cli; hlt`, woken only by the next INIT; aarch64: PSCI CPU_OFF). So an
//! idle secondary costs QEMU nothing and every single-CPU test runs on the boot CPU as before.
//! [`bring_up`] is the first such run, with an empty closure: every CPU checks in or is named.
//!
//! A secondary that panics prints the panic with its id, records it as its verdict and stops; the
//! boot CPU's run then fails naming it. A secondary that does not arrive, or does not finish
//! within the run's bound, is named too. Every wait is bounded by the architecture's clock
//! ([`wait_until`]).

#[cfg(target_os = "none")]
use alloc::boxed::Box;
use alloc::string::String;
#[cfg(target_os = "none")]
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
#[cfg(target_os = "none")]
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// CPUs this code handles; QEMU's q35 and virt take more, the matrix boots 4.
pub const MAX_CPUS: usize = 16;
/// How long a started secondary has to reach Rust and check in.
pub const CHECK_IN_TIMEOUT_US: u64 = 2_000_000;
/// How long [`on_every_cpu`] waits for every CPU to arrive at the barrier and to finish.
/// Generous: under TCG four vCPU threads may share two busy host cores.
pub const RUN_TIMEOUT_US: u64 = 20_000_000;
/// Stack of each secondary CPU (no guard page: heap memory).
#[cfg(target_os = "none")]
const SECONDARY_STACK_SIZE: usize = 64 * 1024;

/// A CPU's index: 0 is the boot CPU, the others are numbered in firmware order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub usize);

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}", self.0)
    }
}

/// A CPU as the firmware names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub id: CpuId,
    /// x86_64: the local APIC id; aarch64: the MPIDR affinity fields (Aff3..Aff0).
    pub hw_id: u64,
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} {:#x})", self.id, HW_ID_NAME, self.hw_id)
    }
}

#[cfg(target_arch = "x86_64")]
const HW_ID_NAME: &str = "APIC id";
#[cfg(not(target_arch = "x86_64"))]
const HW_ID_NAME: &str = "MPIDR";

/// What went wrong on one CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuFailure {
    /// The start request (INIT-SIPI-SIPI, PSCI CPU_ON) failed.
    DidNotStart(String),
    /// Started, but never reached Rust within [`CHECK_IN_TIMEOUT_US`].
    DidNotCheckIn,
    /// Not every CPU arrived at the start barrier in time (`arrived` of `expected` did).
    BarrierTimedOut { arrived: usize, expected: usize },
    /// The closure returned an error.
    Failed(String),
    /// The closure panicked; the message.
    Panicked(String),
    /// No verdict within the run's bound (`within_us` after the boot CPU's own part): still
    /// running, or stuck.
    DidNotFinish { within_us: u64 },
}

impl fmt::Display for CpuFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DidNotStart(why) => write!(f, "did not start: {why}"),
            Self::DidNotCheckIn => write!(
                f,
                "did not check in within {} ms",
                CHECK_IN_TIMEOUT_US / 1000
            ),
            Self::BarrierTimedOut { arrived, expected } => write!(
                f,
                "waited at the start barrier: only {arrived} of {expected} CPUs arrived"
            ),
            Self::Failed(why) => write!(f, "failed: {why}"),
            Self::Panicked(why) => write!(f, "panicked (caught by the runner): {why}"),
            Self::DidNotFinish { within_us } => {
                write!(f, "did not finish within {} ms", within_us / 1000)
            }
        }
    }
}

/// Why a bring-up or a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmpError {
    /// The firmware's CPU list could not be read (MADT, devicetree).
    Discovery(String),
    /// The firmware lists more CPUs than [`MAX_CPUS`].
    TooManyCpus { listed: usize },
    /// [`on_every_cpu`] before [`bring_up`].
    NotBroughtUp,
    /// Runs are started from the boot CPU only.
    NotOnBootCpu(CpuId),
    /// These CPUs failed, each with its reason.
    Cpus(Vec<(Cpu, CpuFailure)>),
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Discovery(why) => write!(f, "SMP: cannot list the CPUs: {why}"),
            Self::TooManyCpus { listed } => {
                write!(f, "SMP: {listed} CPUs listed, at most {MAX_CPUS} supported")
            }
            Self::NotBroughtUp => f.write_str("SMP: secondaries not brought up"),
            Self::NotOnBootCpu(cpu) => write!(f, "SMP: a run was started on {cpu}"),
            Self::Cpus(failures) => {
                for (i, (cpu, failure)) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{cpu} {failure}")?;
                }
                Ok(())
            }
        }
    }
}

impl core::error::Error for SmpError {}

/// The closure of a run.
#[cfg(target_os = "none")]
type Job = Arc<dyn Fn(CpuId) -> Result<(), String> + Send + Sync>;

/// One CPU's part of the run protocol.
#[cfg(target_os = "none")]
struct Slot {
    /// The run this CPU last entered (its `epoch`), stored by the CPU itself on entry. Release:
    /// orders nothing the boot CPU reads; the boot CPU only waits for the value.
    entered: AtomicU64,
    /// The run whose verdict `verdict` holds. Release after writing `verdict`, Acquire by the
    /// boot CPU before reading it.
    done: AtomicU64,
    verdict: spin::Mutex<Result<(), CpuFailure>>,
    /// Top of this CPU's stack (0 for the boot CPU, which keeps the boot stack).
    stack_top: AtomicUsize,
}

#[cfg(target_os = "none")]
impl Slot {
    const fn new() -> Self {
        Self {
            entered: AtomicU64::new(0),
            done: AtomicU64::new(0),
            verdict: spin::Mutex::new(Ok(())),
            stack_top: AtomicUsize::new(0),
        }
    }
}

#[cfg(target_os = "none")]
static SLOTS: [Slot; MAX_CPUS] = [const { Slot::new() }; MAX_CPUS];
/// The CPUs found by [`bring_up`], boot CPU first.
static CPUS: spin::Once<Vec<Cpu>> = spin::Once::new();
/// The current run, counted from 1. Written by the boot CPU before it starts the secondaries
/// (the start request is made after a SeqCst fence); read by each secondary on entry.
#[cfg(target_os = "none")]
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// CPUs that arrived at the current run's barrier. AcqRel: a CPU that sees the count complete
/// also sees everything the others did before arriving.
#[cfg(target_os = "none")]
static ARRIVED: AtomicUsize = AtomicUsize::new(0);
/// CPUs the current run's barrier waits for: all of them, less those the boot CPU failed to
/// start or that did not check in (it lowers the count before it arrives itself, so no CPU can
/// pass the barrier before the count is final). Acquire/Release like ARRIVED.
#[cfg(target_os = "none")]
static EXPECTED: AtomicUsize = AtomicUsize::new(0);
/// The current run's closure, `None` between runs. Secondaries clone the `Arc`, so a CPU that
/// outlives its run (timed out) keeps the closure alive.
#[cfg(target_os = "none")]
static JOB: spin::Mutex<Option<Job>> = spin::Mutex::new(None);

/// The CPUs [`bring_up`] found, boot CPU first; empty before.
pub fn cpus() -> &'static [Cpu] {
    CPUS.get().map_or(&[], Vec::as_slice)
}

/// The outcome of the first [`bring_up`], which later calls return.
#[cfg(target_os = "none")]
static BRING_UP: spin::Once<Result<(), SmpError>> = spin::Once::new();

/// Lists the CPUs from the firmware and starts each secondary once: every CPU must check in and
/// pass the barrier. Idempotent: later calls return the first call's outcome without starting
/// anything.
#[cfg(target_os = "none")]
pub fn bring_up(info: &crate::BootInfo) -> Result<&'static [Cpu], SmpError> {
    BRING_UP.call_once(|| first_bring_up(info)).clone()?;
    Ok(cpus())
}

#[cfg(target_os = "none")]
fn first_bring_up(info: &crate::BootInfo) -> Result<(), SmpError> {
    let hw_ids = arch::discover(info).map_err(SmpError::Discovery)?;
    if hw_ids.len() > MAX_CPUS {
        return Err(SmpError::TooManyCpus {
            listed: hw_ids.len(),
        });
    }
    let cpus: Vec<Cpu> = hw_ids
        .iter()
        .enumerate()
        .map(|(i, &hw_id)| Cpu {
            id: CpuId(i),
            hw_id,
        })
        .collect();
    for (slot, _) in SLOTS.iter().zip(&cpus).skip(1) {
        let stack = Box::leak(alloc::vec![0u128; SECONDARY_STACK_SIZE / 16].into_boxed_slice());
        let top = stack.as_ptr_range().end as usize;
        // Relaxed: read by the arch start code of this same CPU.
        slot.stack_top.store(top, Ordering::Relaxed);
    }
    arch::set_this_cpu(0);
    CPUS.call_once(|| cpus);
    on_every_cpu(|_| Ok(()))
}

/// Runs `f` on every CPU at once (the boot CPU included, after all met at a barrier) and
/// collects each CPU's verdict; fails naming every CPU that failed, panicked, did not start,
/// or did not finish within [`RUN_TIMEOUT_US`]. Call it on the boot CPU after [`bring_up`].
#[cfg(target_os = "none")]
pub fn on_every_cpu(
    f: impl Fn(CpuId) -> Result<(), String> + Send + Sync + 'static,
) -> Result<(), SmpError> {
    on_every_cpu_within(RUN_TIMEOUT_US, f)
}

/// [`on_every_cpu`], waiting at most `timeout_us` for the CPUs to finish once the boot CPU's
/// own closure returned. A CPU that does not finish keeps its clone of the closure and is not
/// restarted by a later run until it has (that run names it as not started meanwhile).
#[cfg(target_os = "none")]
pub fn on_every_cpu_within(
    timeout_us: u64,
    f: impl Fn(CpuId) -> Result<(), String> + Send + Sync + 'static,
) -> Result<(), SmpError> {
    let cpus = CPUS.get().ok_or(SmpError::NotBroughtUp)?;
    let me = this_cpu();
    if me != CpuId(0) {
        return Err(SmpError::NotOnBootCpu(me));
    }
    // Relaxed: only the boot CPU writes EPOCH and ARRIVED; the fence below publishes them.
    let epoch = EPOCH.load(Ordering::Relaxed) + 1;
    EPOCH.store(epoch, Ordering::Relaxed);
    ARRIVED.store(0, Ordering::Relaxed);
    EXPECTED.store(cpus.len(), Ordering::Relaxed);
    *JOB.lock() = Some(Arc::new(f));
    // The start request (an ICR write, an HVC/SMC) is not itself a release: make the epoch, the
    // barrier reset and the job visible before any secondary can run.
    core::sync::atomic::fence(Ordering::SeqCst);

    let mut failures = Vec::new();
    let mut started = Vec::new();
    for &cpu in cpus.iter().skip(1) {
        let slot = &SLOTS[cpu.id.0];
        // A CPU still in an earlier run's job (it did not finish in time) is not started again:
        // INIT would kill it wherever it is, maybe holding a lock; CPU_ON would be refused.
        let idle = wait_until("a late CPU to finish", CHECK_IN_TIMEOUT_US, || {
            slot.done.load(Ordering::Acquire) == slot.entered.load(Ordering::Relaxed)
        });
        if idle.is_err() {
            let run = slot.entered.load(Ordering::Relaxed);
            failures.push((
                cpu,
                CpuFailure::DidNotStart(alloc::format!("still running the job of run {run}")),
            ));
            EXPECTED.fetch_sub(1, Ordering::Release);
            continue;
        }
        if let Err(why) = arch::start(cpu, slot.stack_top.load(Ordering::Relaxed)) {
            failures.push((cpu, CpuFailure::DidNotStart(why)));
            EXPECTED.fetch_sub(1, Ordering::Release);
            continue;
        }
        // x86_64 starts one AP at a time through the one trampoline, so wait for each.
        match wait_until("a secondary to check in", CHECK_IN_TIMEOUT_US, || {
            slot.entered.load(Ordering::Relaxed) == epoch
        }) {
            Ok(()) => started.push(cpu),
            Err(_) => {
                failures.push((cpu, CpuFailure::DidNotCheckIn));
                EXPECTED.fetch_sub(1, Ordering::Release);
            }
        }
    }

    let job = JOB.lock().clone();
    let mine = run_on_this_cpu(CpuId(0), job);
    if let Err(failure) = mine {
        failures.push((cpus[0], failure));
    }
    let _ = wait_until("every CPU to finish", timeout_us, || {
        started
            .iter()
            .all(|c| SLOTS[c.id.0].done.load(Ordering::Acquire) == epoch)
    });
    for cpu in started {
        let slot = &SLOTS[cpu.id.0];
        if slot.done.load(Ordering::Acquire) != epoch {
            failures.push((
                cpu,
                CpuFailure::DidNotFinish {
                    within_us: timeout_us,
                },
            ));
        } else if let Err(failure) = slot.verdict.lock().clone() {
            failures.push((cpu, failure));
        }
    }
    *JOB.lock() = None;
    if failures.is_empty() {
        Ok(())
    } else {
        failures.sort_by_key(|(cpu, _)| cpu.id);
        Err(SmpError::Cpus(failures))
    }
}

/// Barrier, then the closure.
#[cfg(target_os = "none")]
fn run_on_this_cpu(cpu: CpuId, job: Option<Job>) -> Result<(), CpuFailure> {
    ARRIVED.fetch_add(1, Ordering::AcqRel);
    wait_until("every CPU at the barrier", RUN_TIMEOUT_US, || {
        ARRIVED.load(Ordering::Acquire) >= EXPECTED.load(Ordering::Acquire)
    })
    .map_err(|_| CpuFailure::BarrierTimedOut {
        arrived: ARRIVED.load(Ordering::Acquire),
        expected: EXPECTED.load(Ordering::Acquire),
    })?;
    match job {
        Some(f) => f(cpu).map_err(CpuFailure::Failed),
        None => Ok(()),
    }
}

/// What a secondary runs once its architecture code has set it up (stack, vectors, MMU, per-CPU
/// register): check in, run the current job, record the verdict. The caller then stops the CPU.
#[cfg(target_os = "none")]
pub(crate) fn secondary_main(index: usize) {
    let Some(slot) = SLOTS.get(index) else {
        return;
    };
    let epoch = EPOCH.load(Ordering::Acquire);
    slot.entered.store(epoch, Ordering::Release);
    let job = JOB.lock().clone();
    let verdict = run_on_this_cpu(CpuId(index), job);
    record(slot, epoch, verdict);
}

#[cfg(target_os = "none")]
fn record(slot: &Slot, epoch: u64, verdict: Result<(), CpuFailure>) {
    *slot.verdict.lock() = verdict;
    slot.done.store(epoch, Ordering::Release);
}

/// The panic handler's part on a secondary: print the panic with the CPU's name, make it the
/// CPU's verdict for the run it is in, stop the CPU. Formatting the message allocates: a panic
/// inside the allocator would hang this CPU here, and the boot CPU then names it as not finished.
#[cfg(target_os = "none")]
pub(crate) fn secondary_panicked(cpu: CpuId, info: &core::panic::PanicInfo) -> ! {
    let name = cpus()
        .get(cpu.0)
        .copied()
        .unwrap_or(Cpu { id: cpu, hw_id: 0 });
    crate::console::_print_panic(format_args!("\nPANIC: {name}: {info}\n"));
    if let Some(slot) = SLOTS.get(cpu.0) {
        let epoch = slot.entered.load(Ordering::Relaxed);
        let message = match info.location() {
            Some(at) => alloc::format!("{} at {at}", info.message()),
            None => alloc::format!("{}", info.message()),
        };
        record(slot, epoch, Err(CpuFailure::Panicked(message)));
    }
    arch::stop_this_cpu()
}

/// The CPU this code runs on: read from a per-CPU register (x86_64: GS base; aarch64:
/// TPIDR_ELx) that the boot code sets. CPU 0 before [`bring_up`].
#[cfg(target_os = "none")]
pub fn this_cpu() -> CpuId {
    if CPUS.get().is_none() {
        return CpuId(0);
    }
    CpuId(arch::this_cpu())
}

/// The hardware id of the CPU this code runs on, read from the hardware itself (the local APIC
/// ID register; MPIDR_EL1's affinity fields): lets a test check [`this_cpu`] against it.
#[cfg(target_os = "none")]
pub fn this_cpu_hw_id() -> u64 {
    arch::hw_id()
}

/// Microseconds from the architecture's clock (x86_64: the TSC calibrated against the ACPI PM
/// timer at [`bring_up`]; aarch64: the generic timer).
#[cfg(target_os = "none")]
pub fn now_us() -> u64 {
    arch::now_us()
}

/// Waits until `done()` holds, at most `timeout_us` microseconds.
#[cfg(target_os = "none")]
pub fn wait_until(
    waiting_for: &'static str,
    timeout_us: u64,
    mut done: impl FnMut() -> bool,
) -> Result<(), iommu::poll::Timeout> {
    let start = arch::now_us();
    loop {
        if done() {
            return Ok(());
        }
        if arch::now_us().saturating_sub(start) > timeout_us {
            return Err(iommu::poll::Timeout { waiting_for });
        }
        core::hint::spin_loop();
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
use crate::aarch64::smp as arch;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
use crate::x86_64::smp as arch;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn errors_name_every_failed_cpu() {
        let cpu = |i: usize| Cpu {
            id: CpuId(i),
            hw_id: i as u64,
        };
        let e = SmpError::Cpus(alloc::vec![
            (cpu(1), CpuFailure::DidNotCheckIn),
            (cpu(3), CpuFailure::Panicked("boom".to_string())),
        ]);
        let text = e.to_string();
        assert!(text.starts_with("cpu 1 ("), "{text}");
        assert!(text.contains("did not check in"), "{text}");
        assert!(
            text.contains("cpu 3 (") && text.contains("panicked (caught by the runner): boom"),
            "{text}"
        );
    }
}
