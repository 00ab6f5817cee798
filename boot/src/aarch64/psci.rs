//! PSCI (Arm DEN 0022, Power State Coordination Interface) `SYSTEM_OFF`: the way out of QEMU
//! when semihosting is unavailable. QEMU then exits with status 0, whatever the kernel meant.

use super::{fdt, ExceptionLevel};

/// SMC32 function id of `SYSTEM_OFF`.
const SYSTEM_OFF: u64 = 0x8400_0008;

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
