//! Arm semihosting (Arm IHI 0056 "Semihosting for AArch32 and AArch64"): the one call the
//! kernel needs, `SYS_EXIT`, which makes QEMU (started with `-semihosting`) exit with a status.

/// Operation number of `SYS_EXIT`.
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: the program ended on its own; the next word is the status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Asks the host to exit with `status`. Returns only if the host declines; without
/// `-semihosting` the trap instruction is UNDEFINED and an exception is taken instead.
pub(super) fn sys_exit(status: i32) {
    // On AArch64, SYS_EXIT takes the address of a two-word parameter block; QEMU exits with
    // the second word as its status.
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, status as u64];
    // SAFETY: `hlt #0xf000` is the AArch64 semihosting trap; the host reads the block (live
    // for the whole call) and either ends the VM or returns with x0 written.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            inlateout("x0") SYS_EXIT => _,
            in("x1") block.as_ptr(),
            options(nostack, readonly, preserves_flags),
        );
    }
}
