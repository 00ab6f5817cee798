//! One SMMU instance as found at discovery: where its registers are and what it can do.
//!
//! This is the only place that touches the hardware during identification; the back-end's
//! bring-up (issue 5) starts from the [`Features`] read here.

use core::ptr::NonNull;

use tock_registers::interfaces::Readable;

use crate::idr::{Features, IdRegisters};
use crate::registers::SmmuRegisters;

/// Reads SMMU_IDR0..IDR5, SMMU_IIDR and SMMU_AIDR. These are read-only and reading them has no
/// side effect, so this is safe to do on a live SMMU at any time.
///
/// # Safety
/// `base` must point to the mapped register frame of an SMMUv3 (at least page 0, 64 KiB),
/// mapped as Device memory (or another mapping where 32-bit volatile reads reach the
/// device), and stay mapped for the duration of the call.
pub unsafe fn read_id_registers(base: NonNull<SmmuRegisters>) -> IdRegisters {
    // SAFETY: the caller guarantees `base` points to a mapped SMMUv3 register frame; the
    // registers are tock-registers cells (interior mutability, volatile access), so a shared
    // reference to the frame is sound while it stays mapped.
    let regs = unsafe { base.as_ref() };
    IdRegisters {
        idr: [
            regs.idr0.get(),
            regs.idr1.get(),
            regs.idr2.get(),
            regs.idr3.get(),
            regs.idr4.get(),
            regs.idr5.get(),
        ],
        iidr: regs.iidr.get(),
        aidr: regs.aidr.get(),
    }
}

/// Reads and decodes the identification registers of the SMMU at `base`.
///
/// # Safety
/// As for [`read_id_registers`].
pub unsafe fn read_features(base: NonNull<SmmuRegisters>) -> Features {
    // SAFETY: forwarded; the caller upholds `read_id_registers`' contract.
    Features::decode(&unsafe { read_id_registers(base) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idr::Stages;
    extern crate std;

    /// A register frame in ordinary memory stands in for the MMIO page: the values written at
    /// the spec's offsets must come back through the typed registers.
    #[test]
    fn reads_identification_registers_at_their_offsets() {
        let mut frame = std::vec![0u32; 0x2_0000 / 4];
        let words: [(usize, u32); 8] = [
            (0x00, 0x0d44_101b),
            (0x04, 0x0273_0010),
            (0x08, 0x1),
            (0x0c, 0x1414),
            (0x10, 0x4),
            (0x14, 0x74),
            (0x18, 0x43b),
            (0x1c, 0x1),
        ];
        for (offset, value) in words {
            frame[offset / 4] = value;
        }
        let base = NonNull::new(frame.as_mut_ptr().cast::<SmmuRegisters>()).expect("vec pointer");
        // SAFETY: `frame` is a live, 4-byte aligned allocation as large as the register frame,
        // not otherwise accessed while `base` is in use.
        let raw = unsafe { read_id_registers(base) };
        assert_eq!(raw.idr, [0x0d44_101b, 0x0273_0010, 0x1, 0x1414, 0x4, 0x74]);
        assert_eq!(raw.iidr, 0x43b);
        assert_eq!(raw.aidr, 0x1);
        // SAFETY: as above.
        let features = unsafe { read_features(base) };
        assert_eq!(features.stages, Stages::Nested);
        assert_eq!(features.implementation.implementer, 0x43b);
    }
}
