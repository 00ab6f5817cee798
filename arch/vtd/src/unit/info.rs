//! What the unit reports in the core's common terms ([`TranslationUnit::info`]): stages,
//! page sizes, widths and the raw VER/CAP/ECAP, for a VMM mirroring the unit.

use iommu::hal::Hal;
use iommu::unit::{HardwareInfo, RawRegisters};

use super::{Mode, VtdUnit};
use crate::registers::Readable;

impl<H: Hal + Clone> VtdUnit<'_, H> {
    /// [`TranslationUnit::info`]: the capabilities this unit runs with, in the core's terms.
    pub(super) fn hardware_info(&self) -> HardwareInfo {
        let (cap, ecap) = (self.info.cap, self.info.ecap);
        let scalable = self.mode == Mode::Scalable;
        let first_stage = scalable && ecap.flts();
        let second_stage = !scalable || ecap.slts();
        let mut page_sizes = 1u64 << 12;
        if second_stage {
            let sp = cap.sllps();
            page_sizes |= u64::from(sp.size_2m) << 21 | u64::from(sp.size_1g) << 30;
        }
        if first_stage {
            // x86-64 paging always has 2 MiB pages; 1 GiB ones where CAP.FS1GP says so.
            page_sizes |= 1 << 21 | u64::from(cap.fs1gp()) << 30;
        }
        HardwareInfo {
            first_stage,
            second_stage,
            nesting: scalable && ecap.nest() && ecap.flts() && ecap.slts(),
            identity: ecap.pt(),
            pasid_bits: if scalable && ecap.pasid() {
                ecap.pasid_width()
            } else {
                0
            },
            first_stage_ia_bits: match (first_stage, cap.fs5lp()) {
                (false, _) => 0,
                (true, false) => 48,
                (true, true) => 57,
            },
            second_stage_ia_bits: if second_stage {
                self.max_agaw.width().min(cap.mgaw())
            } else {
                0
            },
            output_bits: self.output_width.min(64) as u8,
            page_sizes,
            coherent_walks: ecap.coherent(),
            ats: ecap.dt(),
            interrupt_remapping: ecap.ir(),
            tags: cap.domain_ids(),
            raw: RawRegisters::Vtd {
                version: self.regs.block().ver.get(),
                cap: cap.raw(),
                ecap: ecap.raw(),
            },
        }
    }
}
