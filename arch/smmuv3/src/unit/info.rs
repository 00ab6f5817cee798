//! What an SMMU can do, in the core's terms ([`HardwareInfo`]), from its decoded ID registers.

use iommu::unit::{HardwareInfo, RawRegisters};

use crate::idr::{Features, IdRegisters, OutputAddressSize, Stages};

/// What an SMMU with `f` (decoded from `raw`) can do, in the core's terms.
///
/// Input sizes are what [`SmmuUnit::new_domain`](iommu::unit::TranslationUnit::new_domain) builds: stage 1
/// up to 48 bits (no 52-bit VAs), stage 2 up to the output size (IPA ≤ OAS, at most 48 bits).
/// Page sizes are each supported granule's page and its level-2 and (4K only) level-1 blocks.
pub fn hardware_info(f: &Features, raw: &IdRegisters) -> HardwareInfo {
    let oas = u32::from(f.oas.bits().unwrap_or(48));
    let g = f.granules;
    let mut page_sizes = 0u64;
    if g.size_4k {
        page_sizes |= 1 << 12 | 1 << 21 | 1 << 30;
    }
    if g.size_16k {
        page_sizes |= 1 << 14 | 1 << 25;
    }
    if g.size_64k {
        page_sizes |= 1 << 16 | 1 << 29;
    }
    let (s1, s2) = (f.stages.stage1(), f.stages.stage2());
    HardwareInfo {
        first_stage: s1,
        second_stage: s2,
        nesting: f.stages == Stages::Nested,
        // A bypass STE exists on every SMMUv3.
        identity: true,
        pasid_bits: f.ssid_bits,
        first_stage_ia_bits: if s1 { 48 } else { 0 },
        second_stage_ia_bits: if s2 { oas.min(48) as u8 } else { 0 },
        output_bits: oas as u8,
        page_sizes,
        coherent_walks: f.coherent,
        ats: f.ats,
        interrupt_remapping: false,
        tags: if s2 {
            1 << f.vmid_bits.min(16)
        } else {
            1 << f.asid_bits.min(16)
        },
        raw: RawRegisters::Smmuv3 {
            idr: raw.idr,
            iidr: raw.iidr,
            aidr: raw.aidr,
        },
    }
}

/// IDR5.OAS as the STE's S2PS (the same encoding), never the reserved value.
pub(super) fn output_size(oas: OutputAddressSize) -> OutputAddressSize {
    if oas == OutputAddressSize::Reserved {
        OutputAddressSize::Bits48
    } else {
        oas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 10's `virt` SMMU as read there (docs/qemu-facts.md): both stages, COHACC, 16-bit
    /// ASIDs and VMIDs, no substreams, OAS 44 bits, 4K/16K/64K granules.
    #[test]
    fn hardware_info_of_qemu_virt() {
        let raw = IdRegisters {
            idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
            iidr: 0,
            aidr: 1,
        };
        let info = hardware_info(&Features::decode(&raw), &raw);
        assert!(info.first_stage && info.second_stage && info.nesting && info.identity);
        assert_eq!(info.pasid_bits, 0);
        assert_eq!(
            (
                info.first_stage_ia_bits,
                info.second_stage_ia_bits,
                info.output_bits
            ),
            (48, 44, 44)
        );
        let sizes = [12, 21, 30, 14, 25, 16, 29]
            .iter()
            .fold(0u64, |a, s| a | 1 << s);
        assert_eq!(info.page_sizes, sizes);
        assert!(info.coherent_walks && !info.ats);
        assert_eq!(info.tags, 1 << 16, "VMIDs (IDR0.VMID16) with stage 2");
        assert_eq!(
            info.raw,
            RawRegisters::Smmuv3 {
                idr: raw.idr,
                iidr: 0,
                aidr: 1
            }
        );
    }

    /// A stage-1-only SMMU with 8-bit ASIDs (ASID16 clear), 64K granule only, substreams and
    /// ATS: tags are ASIDs, the stage-2 fields are 0.
    #[test]
    fn hardware_info_of_a_stage1_smmu_with_substreams() {
        // IDR0: S1P [1], TTF AArch64 [3:2], ATS [10], COHACC [4]; IDR1: SSIDSIZE 20 [10:6];
        // IDR5: OAS 48 bits (5), GRAN64K [6].
        let raw = IdRegisters {
            idr: [
                1 << 1 | 2 << 2 | 1 << 4 | 1 << 10,
                20 << 6,
                0,
                0,
                0,
                5 | 1 << 6,
            ],
            iidr: 0,
            aidr: 0,
        };
        let f = Features::decode(&raw);
        let info = hardware_info(&f, &raw);
        assert!(info.first_stage && !info.second_stage && !info.nesting);
        assert_eq!(info.pasid_bits, 20);
        assert_eq!(
            (
                info.first_stage_ia_bits,
                info.second_stage_ia_bits,
                info.output_bits
            ),
            (48, 0, 48)
        );
        assert_eq!(info.page_sizes, 1 << 16 | 1 << 29);
        assert!(info.ats && info.coherent_walks);
        assert_eq!(info.tags, 1 << 8);
    }
}
