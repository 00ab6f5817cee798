//! PSCI (Arm DEN 0022, Power State Coordination Interface): `SYSTEM_OFF`, the way out of QEMU
//! when semihosting is unavailable (QEMU then exits with status 0, whatever the kernel meant),
//! and `CPU_ON` / `CPU_OFF` for the secondary CPUs (`super::smp`).

use super::{fdt, ExceptionLevel};

/// SMC32 function id of `SYSTEM_OFF`.
const SYSTEM_OFF: u64 = 0x8400_0008;
/// SMC64 function id of `CPU_ON` (target MPIDR, entry point, context id).
const CPU_ON: u64 = 0xc400_0003;
/// SMC32 function id of `CPU_OFF`.
const CPU_OFF: u64 = 0x8400_0002;
/// SMC64 function id of `AFFINITY_INFO` (target MPIDR, lowest affinity level).
const AFFINITY_INFO: u64 = 0xc400_0004;

/// The instruction that reaches the PSCI implementation (the devicetree's `/psci` `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conduit {
    Hvc,
    Smc,
}

/// The conduit the devicetree names. Without a devicetree, QEMU `virt`'s own rule: `hvc` for a
/// kernel at EL1, `smc` for one at EL2 (where `hvc` would trap to the kernel itself).
pub(super) fn conduit(el: ExceptionLevel) -> Conduit {
    let method = fdt::dtb_at_start_of_ram()
        .and_then(|fdt| fdt.property("psci", "method"))
        .and_then(fdt::as_str);
    match method {
        Some("smc") => Conduit::Smc,
        Some("hvc") => Conduit::Hvc,
        _ => match el {
            ExceptionLevel::El1 => Conduit::Hvc,
            ExceptionLevel::El2 => Conduit::Smc,
        },
    }
}

/// Powers the machine off. Returns only if the PSCI implementation refuses.
pub(super) fn system_off(conduit: Conduit) {
    // SAFETY: SYSTEM_OFF takes no arguments and does not return on success; on failure the
    // implementation may have clobbered any caller-saved register, as `clobber_abi` declares.
    unsafe {
        match conduit {
            Conduit::Hvc => core::arch::asm!(
                "hvc #0",
                inlateout("x0") SYSTEM_OFF => _,
                options(nostack),
                clobber_abi("C"),
            ),
            Conduit::Smc => core::arch::asm!(
                "smc #0",
                inlateout("x0") SYSTEM_OFF => _,
                options(nostack),
                clobber_abi("C"),
            ),
        }
    }
}

/// One PSCI call with up to three arguments; returns x0.
fn call(conduit: Conduit, function: u64, args: [u64; 3]) -> i64 {
    let ret: u64;
    // SAFETY: a PSCI call through the conduit the firmware names; the implementation may clobber
    // any caller-saved register, as `clobber_abi` declares, and touches no memory of ours.
    unsafe {
        match conduit {
            Conduit::Hvc => core::arch::asm!(
                "hvc #0",
                inlateout("x0") function => ret,
                in("x1") args[0], in("x2") args[1], in("x3") args[2],
                options(nostack),
                clobber_abi("C"),
            ),
            Conduit::Smc => core::arch::asm!(
                "smc #0",
                inlateout("x0") function => ret,
                in("x1") args[0], in("x2") args[1], in("x3") args[2],
                options(nostack),
                clobber_abi("C"),
            ),
        }
    }
    ret as i64
}

/// Powers on the CPU with MPIDR affinity `target` at `entry` (a physical address: the MMU is
/// off there), with `context` in its x0. 0 on success, else a PSCI error code.
pub(super) fn cpu_on(conduit: Conduit, target: u64, entry: u64, context: u64) -> i64 {
    call(conduit, CPU_ON, [target, entry, context])
}

/// `AFFINITY_INFO` of the CPU with MPIDR affinity `target`: [`AFFINITY_OFF`] once it is off,
/// 0 while on, 2 while powering on, or a PSCI error code.
pub(super) fn affinity_info(conduit: Conduit, target: u64) -> i64 {
    call(conduit, AFFINITY_INFO, [target, 0, 0])
}

/// `AFFINITY_INFO`'s answer for a CPU that is off.
pub(super) const AFFINITY_OFF: i64 = 1;

/// Powers this CPU off. Returns only if the implementation refuses.
pub(super) fn cpu_off(conduit: Conduit) {
    let _ = call(conduit, CPU_OFF, [0; 3]);
}

/// CPU_ON's answers for a CPU that is on, or being powered on.
pub(super) const ALREADY_ON: i64 = -4;
pub(super) const ON_PENDING: i64 = -5;

/// The name of a PSCI return code (DEN 0022, table "Return error codes").
pub(super) fn error_name(code: i64) -> &'static str {
    match code {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        -4 => "ALREADY_ON",
        -5 => "ON_PENDING",
        -6 => "INTERNAL_FAILURE",
        -7 => "NOT_PRESENT",
        -8 => "DISABLED",
        -9 => "INVALID_ADDRESS",
        _ => "unknown",
    }
}
