//! The GICv3 virtual CPU interface, as the hypervisor uses it to give its guest an interrupt:
//! a physical interrupt taken at EL2 while the guest runs is acknowledged and ended there
//! (`iommu_boot::aarch64::gicv3::{acknowledge, end_of_interrupt}`), and a virtual one put in a
//! list register; the guest's own ICC_IAR1_EL1 / ICC_EOIR1_EL1 (its
//! virtual interface, as HCR_EL2.IMO routes them) take and end it.

use core::arch::asm;

/// ICH_HCR_EL2.En: the virtual CPU interface on.
const ICH_HCR_EN: u64 = 1 << 0;
/// ICH_VMCR_EL2: VENG1 (virtual Group 1 on) and VPMR = 0xff (every priority through).
const ICH_VMCR_VENG1: u64 = 1 << 1;
const ICH_VMCR_VPMR_ALL: u64 = 0xff << 24;
/// ICH_LR<n>_EL2 (IHI 0069H 12.4.6): State = pending, Group 1, priority, vINTID.
const LR_PENDING: u64 = 1 << 62;
const LR_GROUP1: u64 = 1 << 60;
const LR_PRIORITY: u64 = 0xa0 << 48;

/// Turns the virtual CPU interface on for the guest: Group 1, every priority, no list
/// register in use.
pub fn on() {
    // SAFETY: EL2 system registers of the GICv3 CPU interface (the boot code enabled the
    // system-register interface, ICC_SRE_EL2.SRE and Enable); they affect the guest's view
    // only.
    unsafe {
        asm!(
            "msr S3_4_C12_C12_0, xzr", // ICH_LR0_EL2
            "msr S3_4_C12_C11_7, {vmcr}", // ICH_VMCR_EL2
            "msr S3_4_C12_C11_0, {hcr}", // ICH_HCR_EL2
            "isb",
            vmcr = in(reg) ICH_VMCR_VENG1 | ICH_VMCR_VPMR_ALL,
            hcr = in(reg) ICH_HCR_EN,
            options(nostack),
        )
    };
}

/// Turns it off again, with its list register cleared.
pub fn off() {
    // SAFETY: as in `on`.
    unsafe {
        asm!(
            "msr S3_4_C12_C11_0, xzr", // ICH_HCR_EL2
            "msr S3_4_C12_C12_0, xzr", // ICH_LR0_EL2
            "isb",
            options(nostack),
        )
    };
}

/// Makes virtual interrupt `vintid` pending for the guest in list register 0.
pub fn inject(vintid: u32) {
    // SAFETY: as in `on`.
    unsafe {
        asm!(
            "msr S3_4_C12_C12_0, {}",
            "isb",
            in(reg) LR_PENDING | LR_GROUP1 | LR_PRIORITY | u64::from(vintid),
            options(nostack),
        )
    };
}
