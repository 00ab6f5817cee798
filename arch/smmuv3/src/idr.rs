//! What an SMMU can do: SMMU_IDR0..IDR5, SMMU_IIDR and SMMU_AIDR decoded into typed values.
//!
//! The raw words are read once at discovery ([`read_id_registers`], the only hardware access of
//! identification, safe on a live SMMU); everything the driver later decides (stages, table
//! layouts, queue sizes, granules, address sizes) comes from the [`Features`] decoded here. The bit positions live in [`crate::registers`] only.

use core::fmt;
use core::ptr::NonNull;

use tock_registers::interfaces::Readable;
use tock_registers::LocalRegisterCopy;

use crate::registers::{SmmuRegisters, AIDR, IDR0, IDR1, IDR2, IDR3, IDR5, IIDR};

/// The identification registers as read from the hardware, undecoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdRegisters {
    /// SMMU_IDR0..SMMU_IDR5, in order.
    pub idr: [u32; 6],
    /// SMMU_IIDR.
    pub iidr: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
}

/// Which translation stages the SMMU implements (IDR0.S1P, IDR0.S2P).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stages {
    /// Neither: the SMMU can only bypass or abort (allowed by the spec, useless to us).
    None,
    /// Stage 1 only.
    Stage1,
    /// Stage 2 only.
    Stage2,
    /// Both stages, so nested (stage 1 then stage 2) translation too.
    Nested,
}

impl Stages {
    /// Whether stage 1 translation is supported.
    pub const fn stage1(self) -> bool {
        matches!(self, Self::Stage1 | Self::Nested)
    }

    /// Whether stage 2 translation is supported.
    pub const fn stage2(self) -> bool {
        matches!(self, Self::Stage2 | Self::Nested)
    }
}

/// Translation table formats the SMMU walks (IDR0.TTF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormats {
    /// 0b00, reserved.
    Reserved,
    /// AArch32 (LPAE) only.
    AArch32,
    /// AArch64 only.
    AArch64,
    /// AArch32 and AArch64.
    Both,
}

/// Hardware update of translation table flags (IDR0.HTTU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Httu {
    /// No hardware updates.
    None,
    /// Access flag updates.
    AccessFlag,
    /// Access flag and dirty state updates.
    AccessFlagAndDirty,
    /// 0b11, reserved.
    Reserved,
}

/// Endianness of translation table walks (IDR0.TTENDIAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableEndianness {
    /// Either, selected per context.
    Mixed,
    /// 0b01, reserved.
    Reserved,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
}

/// How faulting transactions may be held (IDR0.STALL_MODEL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StallModel {
    /// Both stall and terminate models supported.
    StallAndTerminate,
    /// Terminate only: no stalls.
    TerminateOnly,
    /// Stall forced for stage 1 faults (stall-capable streams must stall).
    StallForced,
    /// 0b11, reserved.
    Reserved,
}

/// What a terminated transaction does (IDR0.TERM_MODEL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermModel {
    /// CD.A chooses between an abort and RAZ/WI.
    AbortOrRaz,
    /// Always aborted: CD.A must be 1.
    AbortOnly,
}

/// Stream table formats (IDR0.ST_LEVEL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTableLevels {
    /// Linear stream tables only.
    Linear,
    /// Linear and 2-level stream tables.
    TwoLevel,
    /// 0b10 or 0b11, reserved.
    Reserved(u8),
}

/// Break-before-make relaxation for block/table changes (IDR3.BBML).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bbml {
    /// No relaxation: full break-before-make.
    Level0,
    /// FEAT_BBM level 1.
    Level1,
    /// FEAT_BBM level 2.
    Level2,
    /// 0b11, reserved.
    Reserved,
}

/// Output address size (IDR5.OAS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputAddressSize {
    /// 32 bits, 4 GiB.
    Bits32,
    /// 36 bits, 64 GiB.
    Bits36,
    /// 40 bits, 1 TiB.
    Bits40,
    /// 42 bits, 4 TiB.
    Bits42,
    /// 44 bits, 16 TiB.
    Bits44,
    /// 48 bits, 256 TiB.
    Bits48,
    /// 52 bits, 4 PiB.
    Bits52,
    /// 0b111, reserved.
    Reserved,
}

impl OutputAddressSize {
    /// The width in bits, `None` for the reserved encoding.
    pub const fn bits(self) -> Option<u8> {
        match self {
            Self::Bits32 => Some(32),
            Self::Bits36 => Some(36),
            Self::Bits40 => Some(40),
            Self::Bits42 => Some(42),
            Self::Bits44 => Some(44),
            Self::Bits48 => Some(48),
            Self::Bits52 => Some(52),
            Self::Reserved => None,
        }
    }

    /// The IDR5.OAS / CD.IPS / STE.S2PS encoding of this size.
    pub const fn encoding(self) -> u8 {
        match self {
            Self::Bits32 => 0,
            Self::Bits36 => 1,
            Self::Bits40 => 2,
            Self::Bits42 => 3,
            Self::Bits44 => 4,
            Self::Bits48 => 5,
            Self::Bits52 => 6,
            Self::Reserved => 7,
        }
    }

    const fn from_encoding(v: u32) -> Self {
        match v {
            0 => Self::Bits32,
            1 => Self::Bits36,
            2 => Self::Bits40,
            3 => Self::Bits42,
            4 => Self::Bits44,
            5 => Self::Bits48,
            6 => Self::Bits52,
            _ => Self::Reserved,
        }
    }
}

/// Virtual address width (IDR5.VAX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualAddressSize {
    /// 48-bit input addresses.
    Bits48,
    /// 52-bit input addresses (64 KiB granule).
    Bits52,
    /// Reserved encodings.
    Reserved(u8),
}

/// Translation granules supported (IDR5.GRAN4K/16K/64K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Granules {
    /// 4 KiB pages.
    pub size_4k: bool,
    /// 16 KiB pages.
    pub size_16k: bool,
    /// 64 KiB pages.
    pub size_64k: bool,
}

/// The implementation identification (SMMU_IIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Implementation {
    /// JEP106 code of the implementer (0x43b is Arm); 0 on QEMU.
    pub implementer: u16,
    /// Minor revision.
    pub revision: u8,
    /// Major revision.
    pub variant: u8,
    /// Product identifier.
    pub product_id: u16,
}

/// Architecture version (SMMU_AIDR): SMMUv3.`minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchVersion {
    /// ArchMajorRev: 0 for SMMUv3.
    pub major: u8,
    /// ArchMinorRev: the x in SMMUv3.x.
    pub minor: u8,
}

impl fmt::Display for ArchVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ArchMajorRev 0 is version 3 of the SMMU architecture.
        write!(f, "SMMUv{}.{}", u16::from(self.major) + 3, self.minor)
    }
}

/// Everything the identification registers say, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one flag per architectural feature bit
pub struct Features {
    // SMMU_IDR0.
    /// S1P / S2P.
    pub stages: Stages,
    /// TTF.
    pub table_formats: TableFormats,
    /// COHACC: table, queue and MSI accesses are IO-coherent.
    pub coherent: bool,
    /// BTM: broadcast TLB maintenance.
    pub broadcast_tlb: bool,
    /// HTTU.
    pub httu: Httu,
    /// DORMHINT.
    pub dormant_hint: bool,
    /// HYP: EL2 stage 1 contexts.
    pub hyp: bool,
    /// ATS.
    pub ats: bool,
    /// NS1ATS: split-stage ATS.
    pub ns1ats: bool,
    /// ASID width: 8 or 16 bits (ASID16).
    pub asid_bits: u8,
    /// MSI.
    pub msi: bool,
    /// SEV.
    pub sev: bool,
    /// ATOS.
    pub atos: bool,
    /// PRI.
    pub pri: bool,
    /// VMW: VMID wildcards.
    pub vmid_wildcard: bool,
    /// VMID width: 8 or 16 bits (VMID16).
    pub vmid_bits: u8,
    /// CD2L: 2-level context descriptor tables.
    pub cd_two_level: bool,
    /// VATOS.
    pub vatos: bool,
    /// TTENDIAN.
    pub endianness: TableEndianness,
    /// ATSRECERR.
    pub ats_record_error: bool,
    /// STALL_MODEL.
    pub stall_model: StallModel,
    /// TERM_MODEL.
    pub term_model: TermModel,
    /// ST_LEVEL.
    pub stream_table: StreamTableLevels,
    /// RME_IMPL.
    pub rme: bool,

    // SMMU_IDR1.
    /// SIDSIZE: StreamID bits.
    pub sid_bits: u8,
    /// SSIDSIZE: SubstreamID bits (0: no substreams).
    pub ssid_bits: u8,
    /// PRIQS: log2 of the maximum PRI queue entries.
    pub priq_max_log2: u8,
    /// EVENTQS: log2 of the maximum event queue entries.
    pub eventq_max_log2: u8,
    /// CMDQS: log2 of the maximum command queue entries.
    pub cmdq_max_log2: u8,
    /// ATTR_PERMS_OVR.
    pub attr_perms_override: bool,
    /// ATTR_TYPES_OVR.
    pub attr_types_override: bool,
    /// REL: base addresses are relative to the SMMU.
    pub relative_bases: bool,
    /// QUEUES_PRESET.
    pub queues_preset: bool,
    /// TABLES_PRESET.
    pub tables_preset: bool,
    /// ECMDQ.
    pub ecmdq: bool,

    // SMMU_IDR2.
    /// BA_VATOS: VATOS page offset in 64 KiB units.
    pub vatos_page: u16,

    // SMMU_IDR3.
    /// HAD: hierarchical attribute disables.
    pub had: bool,
    /// PBHA.
    pub pbha: bool,
    /// XNX: stage 2 EL0/EL1 execute-never.
    pub xnx: bool,
    /// PPS.
    pub pps: bool,
    /// MPAM.
    pub mpam: bool,
    /// FWB: stage 2 forced write-back.
    pub fwb: bool,
    /// STT: small translation tables.
    pub stt: bool,
    /// RIL: range invalidation.
    pub range_invalidation: bool,
    /// BBML.
    pub bbml: Bbml,
    /// E0PD.
    pub e0pd: bool,
    /// PTWNNC.
    pub ptwnnc: bool,
    /// DPT: device permission table.
    pub dpt: bool,

    // SMMU_IDR4.
    /// Implementation defined, kept raw.
    pub idr4: u32,

    // SMMU_IDR5.
    /// OAS.
    pub oas: OutputAddressSize,
    /// GRAN4K / GRAN16K / GRAN64K.
    pub granules: Granules,
    /// VAX.
    pub vax: VirtualAddressSize,
    /// STALL_MAX.
    pub stall_max: u16,

    /// SMMU_IIDR.
    pub implementation: Implementation,
    /// SMMU_AIDR.
    pub version: ArchVersion,
}

// Field widths are at most 16 bits except where stated, so the narrowing casts below are exact.
#[allow(clippy::cast_possible_truncation)]
impl Features {
    /// Decodes the raw identification registers. Every encoding decodes: reserved values are
    /// kept as `Reserved` variants for the driver to refuse, never a panic.
    pub fn decode(raw: &IdRegisters) -> Self {
        let [idr0, idr1, idr2, idr3, idr4, idr5] = raw.idr;
        let idr0 = LocalRegisterCopy::<u32, IDR0::Register>::new(idr0);
        let idr1 = LocalRegisterCopy::<u32, IDR1::Register>::new(idr1);
        let idr2 = LocalRegisterCopy::<u32, IDR2::Register>::new(idr2);
        let idr3 = LocalRegisterCopy::<u32, IDR3::Register>::new(idr3);
        let idr5 = LocalRegisterCopy::<u32, IDR5::Register>::new(idr5);
        let iidr = LocalRegisterCopy::<u32, IIDR::Register>::new(raw.iidr);
        let aidr = LocalRegisterCopy::<u32, AIDR::Register>::new(raw.aidr);

        let stages = match (idr0.is_set(IDR0::S1P), idr0.is_set(IDR0::S2P)) {
            (false, false) => Stages::None,
            (true, false) => Stages::Stage1,
            (false, true) => Stages::Stage2,
            (true, true) => Stages::Nested,
        };
        let table_formats = match idr0.read(IDR0::TTF) {
            1 => TableFormats::AArch32,
            2 => TableFormats::AArch64,
            3 => TableFormats::Both,
            _ => TableFormats::Reserved,
        };
        let httu = match idr0.read(IDR0::HTTU) {
            0 => Httu::None,
            1 => Httu::AccessFlag,
            2 => Httu::AccessFlagAndDirty,
            _ => Httu::Reserved,
        };
        let endianness = match idr0.read(IDR0::TTENDIAN) {
            0 => TableEndianness::Mixed,
            2 => TableEndianness::Little,
            3 => TableEndianness::Big,
            _ => TableEndianness::Reserved,
        };
        let stall_model = match idr0.read(IDR0::STALL_MODEL) {
            0 => StallModel::StallAndTerminate,
            1 => StallModel::TerminateOnly,
            2 => StallModel::StallForced,
            _ => StallModel::Reserved,
        };
        let term_model = if idr0.is_set(IDR0::TERM_MODEL) {
            TermModel::AbortOnly
        } else {
            TermModel::AbortOrRaz
        };
        let stream_table = match idr0.read(IDR0::ST_LEVEL) {
            0 => StreamTableLevels::Linear,
            1 => StreamTableLevels::TwoLevel,
            other => StreamTableLevels::Reserved(other as u8),
        };
        let bbml = match idr3.read(IDR3::BBML) {
            0 => Bbml::Level0,
            1 => Bbml::Level1,
            2 => Bbml::Level2,
            _ => Bbml::Reserved,
        };
        let vax = match idr5.read(IDR5::VAX) {
            0 => VirtualAddressSize::Bits48,
            1 => VirtualAddressSize::Bits52,
            other => VirtualAddressSize::Reserved(other as u8),
        };

        Self {
            stages,
            table_formats,
            coherent: idr0.is_set(IDR0::COHACC),
            broadcast_tlb: idr0.is_set(IDR0::BTM),
            httu,
            dormant_hint: idr0.is_set(IDR0::DORMHINT),
            hyp: idr0.is_set(IDR0::HYP),
            ats: idr0.is_set(IDR0::ATS),
            ns1ats: idr0.is_set(IDR0::NS1ATS),
            asid_bits: if idr0.is_set(IDR0::ASID16) { 16 } else { 8 },
            msi: idr0.is_set(IDR0::MSI),
            sev: idr0.is_set(IDR0::SEV),
            atos: idr0.is_set(IDR0::ATOS),
            pri: idr0.is_set(IDR0::PRI),
            vmid_wildcard: idr0.is_set(IDR0::VMW),
            vmid_bits: if idr0.is_set(IDR0::VMID16) { 16 } else { 8 },
            cd_two_level: idr0.is_set(IDR0::CD2L),
            vatos: idr0.is_set(IDR0::VATOS),
            endianness,
            ats_record_error: idr0.is_set(IDR0::ATSRECERR),
            stall_model,
            term_model,
            stream_table,
            rme: idr0.is_set(IDR0::RME_IMPL),

            sid_bits: idr1.read(IDR1::SIDSIZE) as u8,
            ssid_bits: idr1.read(IDR1::SSIDSIZE) as u8,
            priq_max_log2: idr1.read(IDR1::PRIQS) as u8,
            eventq_max_log2: idr1.read(IDR1::EVENTQS) as u8,
            cmdq_max_log2: idr1.read(IDR1::CMDQS) as u8,
            attr_perms_override: idr1.is_set(IDR1::ATTR_PERMS_OVR),
            attr_types_override: idr1.is_set(IDR1::ATTR_TYPES_OVR),
            relative_bases: idr1.is_set(IDR1::REL),
            queues_preset: idr1.is_set(IDR1::QUEUES_PRESET),
            tables_preset: idr1.is_set(IDR1::TABLES_PRESET),
            ecmdq: idr1.is_set(IDR1::ECMDQ),

            vatos_page: idr2.read(IDR2::BA_VATOS) as u16,

            had: idr3.is_set(IDR3::HAD),
            pbha: idr3.is_set(IDR3::PBHA),
            xnx: idr3.is_set(IDR3::XNX),
            pps: idr3.is_set(IDR3::PPS),
            mpam: idr3.is_set(IDR3::MPAM),
            fwb: idr3.is_set(IDR3::FWB),
            stt: idr3.is_set(IDR3::STT),
            range_invalidation: idr3.is_set(IDR3::RIL),
            bbml,
            e0pd: idr3.is_set(IDR3::E0PD),
            ptwnnc: idr3.is_set(IDR3::PTWNNC),
            dpt: idr3.is_set(IDR3::DPT),

            idr4,

            oas: OutputAddressSize::from_encoding(idr5.read(IDR5::OAS)),
            granules: Granules {
                size_4k: idr5.is_set(IDR5::GRAN4K),
                size_16k: idr5.is_set(IDR5::GRAN16K),
                size_64k: idr5.is_set(IDR5::GRAN64K),
            },
            vax,
            stall_max: idr5.read(IDR5::STALL_MAX) as u16,

            implementation: Implementation {
                implementer: iidr.read(IIDR::IMPLEMENTER) as u16,
                revision: iidr.read(IIDR::REVISION) as u8,
                variant: iidr.read(IIDR::VARIANT) as u8,
                product_id: iidr.read(IIDR::PRODUCTID) as u16,
            },
            version: ArchVersion {
                major: aidr.read(AIDR::ARCHMAJORREV) as u8,
                minor: aidr.read(AIDR::ARCHMINORREV) as u8,
            },
        }
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "no translation stage",
            Self::Stage1 => "stage 1 only",
            Self::Stage2 => "stage 2 only",
            Self::Nested => "stage 1 + stage 2 (nested)",
        })
    }
}

impl fmt::Display for StreamTableLevels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear => f.write_str("linear"),
            Self::TwoLevel => f.write_str("linear and 2-level"),
            Self::Reserved(v) => write!(f, "reserved ST_LEVEL {v}"),
        }
    }
}

impl fmt::Display for OutputAddressSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bits() {
            Some(bits) => write!(f, "{bits} bits"),
            None => f.write_str("reserved OAS"),
        }
    }
}

impl fmt::Display for Granules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for (present, name) in [
            (self.size_4k, "4K"),
            (self.size_16k, "16K"),
            (self.size_64k, "64K"),
        ] {
            if present {
                write!(f, "{sep}{name}")?;
                sep = "/";
            }
        }
        if sep.is_empty() {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// A few readable lines: what a person deciding how to use this SMMU wants to know first.
impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formats = match self.table_formats {
            TableFormats::AArch32 => "AArch32",
            TableFormats::AArch64 => "AArch64",
            TableFormats::Both => "AArch32+AArch64",
            TableFormats::Reserved => "reserved",
        };
        writeln!(
            f,
            "{}, {}, {} tables, {}",
            self.version,
            self.stages,
            formats,
            if self.coherent {
                "coherent"
            } else {
                "non-coherent"
            }
        )?;
        writeln!(
            f,
            "stream table {}, {} SID bits, {} SSID bits, ASID {} bits, VMID {} bits",
            self.stream_table, self.sid_bits, self.ssid_bits, self.asid_bits, self.vmid_bits
        )?;
        write!(
            f,
            "queues up to 2^{} commands, 2^{} events",
            self.cmdq_max_log2, self.eventq_max_log2
        )?;
        if self.pri {
            write!(f, ", 2^{} page requests", self.priq_max_log2)?;
        }
        writeln!(f, "; OAS {}, granules {}", self.oas, self.granules)?;
        write!(f, "features:")?;
        let flags = [
            (self.range_invalidation, "RIL"),
            (self.had, "HAD"),
            (self.xnx, "XNX"),
            (self.fwb, "FWB"),
            (self.stt, "STT"),
            (self.ats, "ATS"),
            (self.pri, "PRI"),
            (self.msi, "MSI"),
            (self.sev, "SEV"),
            (self.broadcast_tlb, "BTM"),
            (self.hyp, "HYP"),
            (self.atos, "ATOS"),
            (self.cd_two_level, "CD2L"),
            (self.httu != Httu::None, "HTTU"),
            (self.stall_model != StallModel::TerminateOnly, "stalls"),
        ];
        let mut any = false;
        for (present, name) in flags {
            if present {
                write!(f, " {name}")?;
                any = true;
            }
        }
        match self.bbml {
            Bbml::Level0 => {}
            Bbml::Level1 => write!(f, " BBML1")?,
            Bbml::Level2 => write!(f, " BBML2")?,
            Bbml::Reserved => write!(f, " BBML?")?,
        }
        if !any && self.bbml == Bbml::Level0 {
            f.write_str(" none")?;
        }
        Ok(())
    }
}

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

    /// IDR3 QEMU 10 reports for an SMMU with stage 2 (`virt`, and `stage=2`/`nested` on older
    /// machines): HAD, XNX, RIL, BBML2. Stage-1-only hardware lacks XNX (0x1404).
    const QEMU_IDR3_S2: u32 = 0x1414;
    const QEMU_IDR3_S1: u32 = 0x1404;
    /// IDR1/IDR5/AIDR are the same for every stage option.
    const QEMU_IDR1: u32 = 0x0273_0010;
    const QEMU_IDR5: u32 = 0x74;
    const QEMU_AIDR: u32 = 0x1;

    fn qemu(idr0: u32, idr3: u32) -> Features {
        Features::decode(&IdRegisters {
            idr: [idr0, QEMU_IDR1, 0, idr3, 0, QEMU_IDR5],
            iidr: 0,
            aidr: QEMU_AIDR,
        })
    }

    /// What every QEMU 10 SMMU reports apart from the stages (checked field by field).
    fn assert_common_qemu_fields(f: &Features) {
        assert_eq!(f.table_formats, TableFormats::AArch64);
        assert!(f.coherent);
        assert!(!f.broadcast_tlb);
        assert_eq!(f.httu, Httu::None);
        assert!(!f.dormant_hint);
        assert!(!f.hyp);
        assert!(!f.ats);
        assert!(!f.ns1ats);
        assert_eq!(f.asid_bits, 16);
        assert!(!f.msi);
        assert!(!f.sev);
        assert!(!f.atos);
        assert!(!f.pri);
        assert!(!f.vmid_wildcard);
        assert_eq!(f.vmid_bits, 16);
        assert!(!f.cd_two_level);
        assert!(!f.vatos);
        assert_eq!(f.endianness, TableEndianness::Little);
        assert!(!f.ats_record_error);
        assert_eq!(f.stall_model, StallModel::TerminateOnly);
        assert_eq!(f.term_model, TermModel::AbortOnly);
        assert_eq!(f.stream_table, StreamTableLevels::TwoLevel);
        assert!(!f.rme);

        assert_eq!(f.sid_bits, 16);
        assert_eq!(f.ssid_bits, 0);
        assert_eq!(f.priq_max_log2, 0);
        assert_eq!(f.eventq_max_log2, 19);
        assert_eq!(f.cmdq_max_log2, 19);
        assert!(!f.attr_perms_override);
        assert!(!f.attr_types_override);
        assert!(!f.relative_bases);
        assert!(!f.queues_preset);
        assert!(!f.tables_preset);
        assert!(!f.ecmdq);

        assert_eq!(f.vatos_page, 0);

        assert!(f.had);
        assert!(!f.pbha);
        assert!(!f.pps);
        assert!(!f.mpam);
        assert!(!f.fwb);
        assert!(!f.stt);
        assert!(f.range_invalidation);
        assert_eq!(f.bbml, Bbml::Level2);
        assert!(!f.e0pd);
        assert!(!f.ptwnnc);
        assert!(!f.dpt);

        assert_eq!(f.idr4, 0);
        assert_eq!(f.oas, OutputAddressSize::Bits44);
        assert_eq!(f.oas.bits(), Some(44));
        assert_eq!(
            f.granules,
            Granules {
                size_4k: true,
                size_16k: true,
                size_64k: true
            }
        );
        assert_eq!(f.vax, VirtualAddressSize::Bits48);
        assert_eq!(f.stall_max, 0);

        assert_eq!(f.implementation, Implementation::default());
        assert_eq!(f.version, ArchVersion { major: 0, minor: 1 });
    }

    #[test]
    fn decodes_qemu10_virt_nested_capable_smmu() {
        // Read from QEMU 10.0.2, `-machine virt,iommu=smmuv3` (the stage option is ignored).
        let f = qemu(0x0d44_101b, QEMU_IDR3_S2);
        assert_eq!(f.stages, Stages::Nested);
        assert!(f.stages.stage1() && f.stages.stage2());
        assert!(f.xnx);
        assert_common_qemu_fields(&f);
    }

    #[test]
    fn decodes_qemu10_virt_9_0_stage1_smmu() {
        // `-machine virt-9.0,iommu=smmuv3 -global arm-smmuv3.stage=1` (also the 9.0 default).
        let f = qemu(0x0d44_101a, QEMU_IDR3_S1);
        assert_eq!(f.stages, Stages::Stage1);
        assert!(f.stages.stage1() && !f.stages.stage2());
        assert!(!f.xnx);
        assert_common_qemu_fields(&f);
    }

    #[test]
    fn decodes_qemu10_virt_9_0_stage2_smmu() {
        // `-machine virt-9.0,iommu=smmuv3 -global arm-smmuv3.stage=2`.
        let f = qemu(0x0d44_1019, QEMU_IDR3_S2);
        assert_eq!(f.stages, Stages::Stage2);
        assert!(!f.stages.stage1() && f.stages.stage2());
        assert!(f.xnx);
        assert_common_qemu_fields(&f);
    }

    #[test]
    fn decodes_every_field_at_its_extreme() {
        let f = Features::decode(&IdRegisters {
            idr: [
                u32::MAX,
                u32::MAX,
                u32::MAX,
                u32::MAX,
                0xdead_beef,
                u32::MAX,
            ],
            iidr: u32::MAX,
            aidr: u32::MAX,
        });
        assert_eq!(f.stages, Stages::Nested);
        assert_eq!(f.table_formats, TableFormats::Both);
        assert_eq!(f.httu, Httu::Reserved);
        assert_eq!(f.endianness, TableEndianness::Big);
        assert_eq!(f.stall_model, StallModel::Reserved);
        assert_eq!(f.stream_table, StreamTableLevels::Reserved(3));
        assert_eq!(f.sid_bits, 63);
        assert_eq!(f.ssid_bits, 31);
        assert_eq!(f.cmdq_max_log2, 31);
        assert_eq!(f.vatos_page, 0x3ff);
        assert_eq!(f.bbml, Bbml::Reserved);
        assert_eq!(f.idr4, 0xdead_beef);
        assert_eq!(f.oas, OutputAddressSize::Reserved);
        assert_eq!(f.oas.bits(), None);
        assert_eq!(f.vax, VirtualAddressSize::Reserved(3));
        assert_eq!(f.stall_max, 0xffff);
        assert_eq!(
            f.implementation,
            Implementation {
                implementer: 0xfff,
                revision: 0xf,
                variant: 0xf,
                product_id: 0xfff
            }
        );
        assert_eq!(
            f.version,
            ArchVersion {
                major: 0xf,
                minor: 0xf
            }
        );

        let zero = Features::decode(&IdRegisters::default());
        assert_eq!(zero.stages, Stages::None);
        assert_eq!(zero.table_formats, TableFormats::Reserved);
        assert_eq!(zero.asid_bits, 8);
        assert_eq!(zero.vmid_bits, 8);
        assert_eq!(zero.stream_table, StreamTableLevels::Linear);
        assert_eq!(zero.oas, OutputAddressSize::Bits32);
        assert_eq!(zero.granules, Granules::default());
    }

    #[test]
    fn oas_encodings_round_trip() {
        for (enc, bits) in [
            (0, 32),
            (1, 36),
            (2, 40),
            (3, 42),
            (4, 44),
            (5, 48),
            (6, 52),
        ] {
            let oas = OutputAddressSize::from_encoding(enc);
            assert_eq!(oas.bits(), Some(bits));
            assert_eq!(u32::from(oas.encoding()), enc);
        }
    }

    #[test]
    fn display_is_readable() {
        extern crate std;
        use std::string::ToString;
        let s = qemu(0x0d44_101b, QEMU_IDR3_S2).to_string();
        assert!(s.starts_with("SMMUv3.1, stage 1 + stage 2 (nested), AArch64 tables, coherent"));
        assert!(s.contains("stream table linear and 2-level, 16 SID bits"));
        assert!(
            s.contains("queues up to 2^19 commands, 2^19 events; OAS 44 bits, granules 4K/16K/64K")
        );
        assert!(s.contains("features: RIL HAD XNX BBML2"));
    }

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
