//! Reads back what the SMMU was told: the commands written to its command queue between two
//! moments, from the queue's memory and its PROD register (what the SMMU itself consumes), so a
//! test counts an operation's commands without trusting the driver's own bookkeeping.

use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::platform::devicetree;
use crate::Machine;
use iommu_boot::testing::{fail, Failure};
use iommu_smmuv3::registers::{Readable, SmmuRegisters, QUEUE_BASE};

/// The command queue as of [`CommandWatch::start`].
pub(crate) struct CommandWatch {
    regs: &'static SmmuRegisters,
    /// CMDQ_PROD (index and wrap bit) when the watch started.
    start: u32,
}

impl CommandWatch {
    /// Starts watching the command queue of `virt`'s SMMU.
    pub fn start(m: &Machine) -> Result<Self, Failure> {
        let dt = devicetree(m)?;
        let (smmu, _) = super::smmu_and_host(&dt)?;
        let regs = NonNull::new(smmu.regs.base as *mut SmmuRegisters)
            .ok_or_else(|| fail("SMMU at address 0"))?;
        // SAFETY: the base comes from the devicetree's `arm,smmu-v3` node, which the boot code
        // identity-maps as Device memory for the whole run; only registers without read side
        // effects are read.
        let regs: &'static SmmuRegisters = unsafe { regs.as_ref() };
        Ok(Self {
            start: regs.cmdq_prod.get(),
            regs,
        })
    }

    /// The opcodes of the commands written to the queue since [`start`](Self::start), in
    /// order (at most one queue's worth: the watch must not outlive a full lap).
    pub fn opcodes(&self) -> Vec<u8> {
        let base = self.regs.cmdq_base.extract();
        let log2 = base.read(QUEUE_BASE::LOG2SIZE);
        let memory = base.read(QUEUE_BASE::ADDR) << 5;
        // Index bits plus the wrap bit just above them.
        let mask = (2u32 << log2) - 1;
        let now = self.regs.cmdq_prod.get();
        let count = now.wrapping_sub(self.start) & mask;
        (0..count)
            .map(|i| {
                let slot = u64::from((self.start + i) & ((1 << log2) - 1));
                // SAFETY: the queue's memory is identity-mapped heap memory of the SMMU unit,
                // alive while the unit is; slot < 2^LOG2SIZE and each command is 16 bytes.
                let word = unsafe { ((memory + slot * 16) as *const u64).read_volatile() };
                word as u8
            })
            .collect()
    }
}
