//! SMMUv3 commands (IHI 0070 chapter 4): typed values encoded into the 16-byte command queue
//! entry in one place, decoded back (for a vIOMMU that must read, check and rewrite a guest's
//! commands). Which invalidations an unmap needs is planned in `crate::unit::invalidate`.
//!
//! Layout shared by every command: dword 0 bits \[7:0\] are the opcode; a StreamID sits in dword 0
//! \[63:32\], a SubstreamID in \[31:12\] with SSV (bit 11) saying whether it is given, a VMID in
//! \[47:32\] and an ASID in \[63:48\]. Bit 10 (SSec) selects the Secure stream namespace and must be
//! 0 on the Non-secure queue, so this driver never sets it and the decoder refuses it. Every bit
//! a command does not define is reserved: the encoder never sets one and the decoder refuses any.

use core::fmt;

use crate::attributes::{bits, field, granule_from_tlbi_tg, place, tlbi_tg, Granule, Shareability};

/// One command as it sits in the queue: two little-endian 64-bit words.
pub type RawCommand = [u64; 2];

/// The opcodes (IHI 0070 4.1.1).
pub mod opcode {
    /// CMD_PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// CMD_PREFETCH_ADDR (architected, not modelled here).
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CMD_CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CMD_CFGI_STE_RANGE; CMD_CFGI_ALL is this opcode with Range = 31.
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CMD_CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CMD_CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// CMD_CFGI_VMS_PIDM (SMMUv3.2, not modelled here).
    pub const CFGI_VMS_PIDM: u8 = 0x07;
    /// CMD_TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// CMD_TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// CMD_TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// CMD_TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// CMD_TLBI_EL3_ALL (Secure only).
    pub const TLBI_EL3_ALL: u8 = 0x18;
    /// CMD_TLBI_EL3_VA (Secure only).
    pub const TLBI_EL3_VA: u8 = 0x1a;
    /// CMD_TLBI_EL2_ALL.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// CMD_TLBI_EL2_ASID.
    pub const TLBI_EL2_ASID: u8 = 0x21;
    /// CMD_TLBI_EL2_VA.
    pub const TLBI_EL2_VA: u8 = 0x22;
    /// CMD_TLBI_EL2_VAA.
    pub const TLBI_EL2_VAA: u8 = 0x23;
    /// CMD_TLBI_S12_VMALL.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// CMD_TLBI_S2_IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// CMD_TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// CMD_ATC_INV.
    pub const ATC_INV: u8 = 0x40;
    /// CMD_PRI_RESP.
    pub const PRI_RESP: u8 = 0x41;
    /// CMD_RESUME.
    pub const RESUME: u8 = 0x44;
    /// CMD_STALL_TERM (not modelled here).
    pub const STALL_TERM: u8 = 0x45;
    /// CMD_SYNC.
    pub const SYNC: u8 = 0x46;
}

// Field positions (hi, lo), dword 0.
const OPCODE: (u32, u32) = (7, 0);
const SSV: u32 = 11;
const SSID: (u32, u32) = (31, 12);
const SID: (u32, u32) = (63, 32);
const VMID: (u32, u32) = (47, 32);
const ASID: (u32, u32) = (63, 48);
const NUM: (u32, u32) = (16, 12);
const SCALE: (u32, u32) = (24, 20);
const ATC_GLOBAL: u32 = 9;
const RESUME_ACTION: (u32, u32) = (13, 12);
const SYNC_CS: (u32, u32) = (13, 12);
const SYNC_MSH: (u32, u32) = (23, 22);
const SYNC_MSIATTR: (u32, u32) = (27, 24);
const SYNC_MSIDATA: (u32, u32) = (63, 32);
// Field positions, dword 1.
const LEAF: u32 = 0;
const CFGI_RANGE: (u32, u32) = (4, 0);
const TTL: (u32, u32) = (9, 8);
const TG: (u32, u32) = (11, 10);
const VA: (u32, u32) = (63, 12);
const IPA: (u32, u32) = (51, 12);
const ATC_SIZE: (u32, u32) = (5, 0);
const PRI_GROUP: (u32, u32) = (8, 0);
const PRI_RESP: (u32, u32) = (13, 12);
const STAG: (u32, u32) = (15, 0);
const SYNC_MSIADDR: (u32, u32) = (51, 2);

const fn m(f: (u32, u32)) -> u64 {
    bits(f.0, f.1)
}

/// The number of the largest SubstreamID (20 bits).
pub const MAX_SSID: u32 = (1 << 20) - 1;

/// A range TLB invalidation (IDR3.RIL): `(num + 1) << scale` pages of `granule`, starting at the
/// command's address. Encoded in dword 0 NUM \[16:12\], SCALE \[24:20\] and dword 1 TG \[11:10\],
/// TTL \[9:8\].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlbiRange {
    /// Page size of the translation table the entries come from.
    pub granule: Granule,
    /// log2 of the pages per unit, 0..=31.
    pub scale: u8,
    /// Units minus one, 0..=31.
    pub num: u8,
    /// Level of the leaf entries if known (1..=3), 0 for "any level".
    pub ttl: u8,
}

impl TlbiRange {
    /// How many pages the range covers.
    pub const fn pages(&self) -> u64 {
        (self.num as u64 + 1) << self.scale
    }
}

/// What a CMD_SYNC does when it completes (CS field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSignal {
    /// SIG_NONE: nothing; completion is seen by CONS moving past the command.
    None,
    /// SIG_IRQ: a wired interrupt, or an MSI write if `msi` is given.
    Irq {
        /// The MSI to write on completion.
        msi: Option<SyncMsi>,
    },
    /// SIG_SEV: a send-event to the PEs (IDR0.SEV).
    Sev,
}

/// The MSI a CMD_SYNC with SIG_IRQ writes (dword 0 MSH, MSIAttr, MSIData; dword 1 MSIAddress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncMsi {
    /// Physical address of the 32-bit write; 4-byte aligned, below 2^52, not 0.
    pub address: u64,
    /// The value written.
    pub data: u32,
    /// Shareability of the write.
    pub shareability: Shareability,
    /// Memory attributes of the write (MAIR-style 4-bit MemAttr).
    pub memattr: u8,
}

/// The answer to a PRI page request group (CMD_PRI_RESP.Resp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriResponse {
    /// 0b00: invalid request.
    Deny,
    /// 0b01: response failure.
    Failure,
    /// 0b10: success.
    Success,
}

/// What to do with a stalled transaction (CMD_RESUME.Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeAction {
    /// 0b00: terminate it (abort or RAZ/WI per CD.A).
    Terminate,
    /// 0b01: retry the translation.
    Retry,
    /// 0b10: abort it.
    Abort,
}

/// A command, typed. [`Command::encode`] is the only place that knows the bit layout, and
/// [`Command::decode`] its exact inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CMD_PREFETCH_CONFIG: hint to fetch the configuration of a stream (and substream).
    PrefetchConfig {
        /// StreamID.
        sid: u32,
        /// SubstreamID, if the prefetch is for one.
        ssid: Option<u32>,
    },
    /// CMD_CFGI_STE: invalidate cached copies of one STE (and, unless `leaf`, the L1 descriptor).
    CfgiSte {
        /// StreamID.
        sid: u32,
        /// Only the STE itself, not the level-1 stream table descriptor covering it.
        leaf: bool,
    },
    /// CMD_CFGI_STE_RANGE: invalidate `2^(range+1)` STEs from `sid` rounded down to that size;
    /// `range` = 31 is CMD_CFGI_ALL (see [`Command::cfgi_all`]).
    CfgiSteRange {
        /// A StreamID inside the range.
        sid: u32,
        /// log2 of the number of STEs, minus one (0..=31).
        range: u8,
    },
    /// CMD_CFGI_CD: invalidate one context descriptor of a stream.
    CfgiCd {
        /// StreamID.
        sid: u32,
        /// SubstreamID of the CD.
        ssid: u32,
        /// Only the CD itself, not the level-1 CD table descriptor.
        leaf: bool,
    },
    /// CMD_CFGI_CD_ALL: invalidate every CD of a stream.
    CfgiCdAll {
        /// StreamID.
        sid: u32,
    },
    /// CMD_TLBI_NH_ALL: every stage-1 (non-hyp) entry tagged with `vmid`.
    TlbiNhAll {
        /// VMID (0 when the SMMU has no stage 2).
        vmid: u16,
    },
    /// CMD_TLBI_NH_ASID: every stage-1 entry of one address space.
    TlbiNhAsid {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_NH_VA: stage-1 entries of one address space for one address or range.
    TlbiNhVa {
        /// VMID.
        vmid: u16,
        /// ASID.
        asid: u16,
        /// Page-aligned virtual address.
        addr: u64,
        /// Only leaf entries changed.
        leaf: bool,
        /// A range invalidation (IDR3.RIL), or `None` for the single address.
        range: Option<TlbiRange>,
    },
    /// CMD_TLBI_NH_VAA: as `TlbiNhVa` for every ASID.
    TlbiNhVaa {
        /// VMID.
        vmid: u16,
        /// Page-aligned virtual address.
        addr: u64,
        /// Only leaf entries changed.
        leaf: bool,
        /// A range invalidation, or `None`.
        range: Option<TlbiRange>,
    },
    /// CMD_TLBI_EL2_ALL: every EL2 stage-1 entry.
    TlbiEl2All,
    /// CMD_TLBI_EL2_ASID: EL2 entries of one ASID.
    TlbiEl2Asid {
        /// ASID.
        asid: u16,
    },
    /// CMD_TLBI_EL2_VA: EL2 entries of one ASID for an address or range.
    TlbiEl2Va {
        /// ASID.
        asid: u16,
        /// Page-aligned virtual address.
        addr: u64,
        /// Only leaf entries changed.
        leaf: bool,
        /// A range invalidation, or `None`.
        range: Option<TlbiRange>,
    },
    /// CMD_TLBI_EL2_VAA: EL2 entries of every ASID for an address or range.
    TlbiEl2Vaa {
        /// Page-aligned virtual address.
        addr: u64,
        /// Only leaf entries changed.
        leaf: bool,
        /// A range invalidation, or `None`.
        range: Option<TlbiRange>,
    },
    /// CMD_TLBI_S12_VMALL: every stage-1 and stage-2 entry of a VMID.
    TlbiS12Vmall {
        /// VMID.
        vmid: u16,
    },
    /// CMD_TLBI_S2_IPA: stage-2 entries of a VMID for one IPA or range.
    TlbiS2Ipa {
        /// VMID.
        vmid: u16,
        /// Page-aligned intermediate physical address, below 2^52.
        ipa: u64,
        /// Only leaf entries changed.
        leaf: bool,
        /// A range invalidation, or `None`.
        range: Option<TlbiRange>,
    },
    /// CMD_TLBI_NSNH_ALL: every non-secure, non-hyp entry.
    TlbiNsnhAll,
    /// CMD_ATC_INV: invalidate a PCIe device's address translation cache (ATS).
    AtcInv {
        /// StreamID of the device.
        sid: u32,
        /// PASID, if the invalidation is for one.
        ssid: Option<u32>,
        /// Address, aligned to the span.
        addr: u64,
        /// The span is `4 KiB << size`; 52 means everything.
        size: u8,
        /// Global: every PASID.
        global: bool,
    },
    /// CMD_PRI_RESP: answer a PCIe page request group.
    PriResp {
        /// StreamID.
        sid: u32,
        /// PASID, if the request had one.
        ssid: Option<u32>,
        /// Page request group index (9 bits).
        group: u16,
        /// The answer.
        response: PriResponse,
    },
    /// CMD_RESUME: resume or terminate a stalled transaction.
    Resume {
        /// StreamID.
        sid: u32,
        /// The stall tag from the event.
        stag: u16,
        /// What to do.
        action: ResumeAction,
    },
    /// CMD_SYNC: completes when every earlier command has.
    Sync {
        /// Completion signal.
        signal: SyncSignal,
    },
}

/// A command value that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// A field's value does not fit its width.
    TooWide {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// An address is not aligned as the field requires.
    Misaligned {
        /// The field.
        field: &'static str,
        /// The value given.
        value: u64,
        /// The required alignment in bytes.
        align: u64,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooWide { field, value } => {
                write!(f, "{field} = {value:#x} does not fit its field")
            }
            Self::Misaligned {
                field,
                value,
                align,
            } => {
                write!(f, "{field} = {value:#x} is not {align:#x}-byte aligned")
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why a queue entry is not a command this driver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The opcode is not an SMMUv3 command (the SMMU answers CERROR_ILL).
    UnknownOpcode(u8),
    /// An architected command this driver does not model (PREFETCH_ADDR, CFGI_VMS_PIDM,
    /// TLBI_EL3_*, STALL_TERM): refused rather than passed on unchecked.
    Unsupported(u8),
    /// Bits the command does not define are set (the SMMU may answer CERROR_ILL).
    ReservedBits {
        /// Opcode of the command.
        opcode: u8,
        /// Which dword (0 or 1).
        dword: u8,
        /// The offending bits.
        bits: u64,
    },
    /// A defined field holds a reserved value.
    ReservedValue {
        /// Opcode of the command.
        opcode: u8,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownOpcode(op) => write!(f, "unknown command opcode {op:#04x}"),
            Self::Unsupported(op) => write!(f, "command opcode {op:#04x} is not supported"),
            Self::ReservedBits {
                opcode,
                dword,
                bits,
            } => {
                write!(
                    f,
                    "command {opcode:#04x}: reserved bits {bits:#x} set in dword {dword}"
                )
            }
            Self::ReservedValue {
                opcode,
                field,
                value,
            } => {
                write!(
                    f,
                    "command {opcode:#04x}: reserved value {value:#x} in {field}"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {}

fn check_width(field: &'static str, value: u64, width: u32) -> Result<u64, EncodeError> {
    if value >> width == 0 {
        Ok(value)
    } else {
        Err(EncodeError::TooWide { field, value })
    }
}

fn check_aligned(field: &'static str, value: u64, align: u64) -> Result<u64, EncodeError> {
    if value & (align - 1) == 0 {
        Ok(value)
    } else {
        Err(EncodeError::Misaligned {
            field,
            value,
            align,
        })
    }
}

fn encode_ssid(ssid: Option<u32>) -> Result<u64, EncodeError> {
    match ssid {
        None => Ok(0),
        Some(s) => {
            check_width("SubstreamID", u64::from(s), 20)?;
            Ok(1 << SSV | place(u64::from(s), SSID.0, SSID.1))
        }
    }
}

/// dword 0 NUM/SCALE and dword 1 TG/TTL of an address invalidation.
fn encode_range(range: &Option<TlbiRange>) -> Result<(u64, u64), EncodeError> {
    match range {
        None => Ok((0, 0)),
        Some(r) => {
            check_width("SCALE", u64::from(r.scale), 5)?;
            check_width("NUM", u64::from(r.num), 5)?;
            check_width("TTL", u64::from(r.ttl), 2)?;
            Ok((
                place(u64::from(r.num), NUM.0, NUM.1) | place(u64::from(r.scale), SCALE.0, SCALE.1),
                place(tlbi_tg(r.granule), TG.0, TG.1) | place(u64::from(r.ttl), TTL.0, TTL.1),
            ))
        }
    }
}

fn encode_va(addr: u64, leaf: bool, range: &Option<TlbiRange>) -> Result<(u64, u64), EncodeError> {
    check_aligned("address", addr, 1 << 12)?;
    let (r0, r1) = encode_range(range)?;
    Ok((r0, r1 | addr | u64::from(leaf) << LEAF))
}

fn encode_ipa(ipa: u64, leaf: bool, range: &Option<TlbiRange>) -> Result<(u64, u64), EncodeError> {
    check_aligned("IPA", ipa, 1 << 12)?;
    check_width("IPA", ipa, 52)?;
    let (r0, r1) = encode_range(range)?;
    Ok((r0, r1 | ipa | u64::from(leaf) << LEAF))
}

impl Command {
    /// CMD_CFGI_ALL: every cached STE (CMD_CFGI_STE_RANGE with Range = 31).
    pub const fn cfgi_all() -> Self {
        Self::CfgiSteRange { sid: 0, range: 31 }
    }

    /// A CMD_SYNC that signals nothing: completion is polled on CONS.
    pub const fn sync() -> Self {
        Self::Sync {
            signal: SyncSignal::None,
        }
    }

    /// The opcode of this command.
    pub const fn opcode(&self) -> u8 {
        match self {
            Self::PrefetchConfig { .. } => opcode::PREFETCH_CONFIG,
            Self::CfgiSte { .. } => opcode::CFGI_STE,
            Self::CfgiSteRange { .. } => opcode::CFGI_STE_RANGE,
            Self::CfgiCd { .. } => opcode::CFGI_CD,
            Self::CfgiCdAll { .. } => opcode::CFGI_CD_ALL,
            Self::TlbiNhAll { .. } => opcode::TLBI_NH_ALL,
            Self::TlbiNhAsid { .. } => opcode::TLBI_NH_ASID,
            Self::TlbiNhVa { .. } => opcode::TLBI_NH_VA,
            Self::TlbiNhVaa { .. } => opcode::TLBI_NH_VAA,
            Self::TlbiEl2All => opcode::TLBI_EL2_ALL,
            Self::TlbiEl2Asid { .. } => opcode::TLBI_EL2_ASID,
            Self::TlbiEl2Va { .. } => opcode::TLBI_EL2_VA,
            Self::TlbiEl2Vaa { .. } => opcode::TLBI_EL2_VAA,
            Self::TlbiS12Vmall { .. } => opcode::TLBI_S12_VMALL,
            Self::TlbiS2Ipa { .. } => opcode::TLBI_S2_IPA,
            Self::TlbiNsnhAll => opcode::TLBI_NSNH_ALL,
            Self::AtcInv { .. } => opcode::ATC_INV,
            Self::PriResp { .. } => opcode::PRI_RESP,
            Self::Resume { .. } => opcode::RESUME,
            Self::Sync { .. } => opcode::SYNC,
        }
    }

    /// The StreamID the command names, if it names one.
    pub const fn stream_id(&self) -> Option<u32> {
        match *self {
            Self::PrefetchConfig { sid, .. }
            | Self::CfgiSte { sid, .. }
            | Self::CfgiSteRange { sid, .. }
            | Self::CfgiCd { sid, .. }
            | Self::CfgiCdAll { sid }
            | Self::AtcInv { sid, .. }
            | Self::PriResp { sid, .. }
            | Self::Resume { sid, .. } => Some(sid),
            _ => None,
        }
    }

    /// The same command for StreamID `new` (a vIOMMU maps guest to host stream ids); commands
    /// without a StreamID are returned unchanged.
    pub const fn with_stream_id(mut self, new: u32) -> Self {
        match &mut self {
            Self::PrefetchConfig { sid, .. }
            | Self::CfgiSte { sid, .. }
            | Self::CfgiSteRange { sid, .. }
            | Self::CfgiCd { sid, .. }
            | Self::CfgiCdAll { sid }
            | Self::AtcInv { sid, .. }
            | Self::PriResp { sid, .. }
            | Self::Resume { sid, .. } => *sid = new,
            _ => {}
        }
        self
    }

    /// The VMID the command names, if it names one.
    pub const fn vmid(&self) -> Option<u16> {
        match *self {
            Self::TlbiNhAll { vmid }
            | Self::TlbiNhAsid { vmid, .. }
            | Self::TlbiNhVa { vmid, .. }
            | Self::TlbiNhVaa { vmid, .. }
            | Self::TlbiS12Vmall { vmid }
            | Self::TlbiS2Ipa { vmid, .. } => Some(vmid),
            _ => None,
        }
    }

    /// The same command for VMID `new` (a vIOMMU confines a guest's invalidations to its VM).
    pub const fn with_vmid(mut self, new: u16) -> Self {
        match &mut self {
            Self::TlbiNhAll { vmid }
            | Self::TlbiNhAsid { vmid, .. }
            | Self::TlbiNhVa { vmid, .. }
            | Self::TlbiNhVaa { vmid, .. }
            | Self::TlbiS12Vmall { vmid }
            | Self::TlbiS2Ipa { vmid, .. } => *vmid = new,
            _ => {}
        }
        self
    }

    /// The queue entry for this command, after checking every field fits.
    pub fn encode(&self) -> Result<RawCommand, EncodeError> {
        let op = u64::from(self.opcode());
        let sid = |s: u32| place(u64::from(s), SID.0, SID.1);
        let vmid = |v: u16| place(u64::from(v), VMID.0, VMID.1);
        let asid = |a: u16| place(u64::from(a), ASID.0, ASID.1);
        let (w0, w1) = match *self {
            Self::PrefetchConfig { sid: s, ssid } => (sid(s) | encode_ssid(ssid)?, 0),
            Self::CfgiSte { sid: s, leaf } => (sid(s), u64::from(leaf) << LEAF),
            Self::CfgiSteRange { sid: s, range } => {
                check_width("Range", u64::from(range), 5)?;
                (sid(s), place(u64::from(range), CFGI_RANGE.0, CFGI_RANGE.1))
            }
            Self::CfgiCd { sid: s, ssid, leaf } => {
                check_width("SubstreamID", u64::from(ssid), 20)?;
                (
                    sid(s) | place(u64::from(ssid), SSID.0, SSID.1),
                    u64::from(leaf) << LEAF,
                )
            }
            Self::CfgiCdAll { sid: s } => (sid(s), 0),
            Self::TlbiNhAll { vmid: v } | Self::TlbiS12Vmall { vmid: v } => (vmid(v), 0),
            Self::TlbiNhAsid { vmid: v, asid: a } => (vmid(v) | asid(a), 0),
            Self::TlbiNhVa {
                vmid: v,
                asid: a,
                addr,
                leaf,
                range,
            } => {
                let (r0, r1) = encode_va(addr, leaf, &range)?;
                (vmid(v) | asid(a) | r0, r1)
            }
            Self::TlbiNhVaa {
                vmid: v,
                addr,
                leaf,
                range,
            } => {
                let (r0, r1) = encode_va(addr, leaf, &range)?;
                (vmid(v) | r0, r1)
            }
            Self::TlbiEl2All | Self::TlbiNsnhAll => (0, 0),
            Self::TlbiEl2Asid { asid: a } => (asid(a), 0),
            Self::TlbiEl2Va {
                asid: a,
                addr,
                leaf,
                range,
            } => {
                let (r0, r1) = encode_va(addr, leaf, &range)?;
                (asid(a) | r0, r1)
            }
            Self::TlbiEl2Vaa { addr, leaf, range } => encode_va(addr, leaf, &range)?,
            Self::TlbiS2Ipa {
                vmid: v,
                ipa,
                leaf,
                range,
            } => {
                let (r0, r1) = encode_ipa(ipa, leaf, &range)?;
                (vmid(v) | r0, r1)
            }
            Self::AtcInv {
                sid: s,
                ssid,
                addr,
                size,
                global,
            } => {
                if size > 52 {
                    return Err(EncodeError::TooWide {
                        field: "Size",
                        value: u64::from(size),
                    });
                }
                if size < 52 {
                    check_aligned("address", addr, 1 << (12 + u32::from(size)))?;
                } else {
                    check_aligned("address", addr, 1 << 12)?;
                }
                (
                    sid(s) | encode_ssid(ssid)? | u64::from(global) << ATC_GLOBAL,
                    addr | place(u64::from(size), ATC_SIZE.0, ATC_SIZE.1),
                )
            }
            Self::PriResp {
                sid: s,
                ssid,
                group,
                response,
            } => {
                check_width("PRGIndex", u64::from(group), 9)?;
                let resp = match response {
                    PriResponse::Deny => 0b00,
                    PriResponse::Failure => 0b01,
                    PriResponse::Success => 0b10,
                };
                (
                    sid(s) | encode_ssid(ssid)?,
                    place(u64::from(group), PRI_GROUP.0, PRI_GROUP.1)
                        | place(resp, PRI_RESP.0, PRI_RESP.1),
                )
            }
            Self::Resume {
                sid: s,
                stag,
                action,
            } => {
                let a = match action {
                    ResumeAction::Terminate => 0b00,
                    ResumeAction::Retry => 0b01,
                    ResumeAction::Abort => 0b10,
                };
                (
                    sid(s) | place(a, RESUME_ACTION.0, RESUME_ACTION.1),
                    place(u64::from(stag), STAG.0, STAG.1),
                )
            }
            Self::Sync { signal } => match signal {
                SyncSignal::None => (place(0b00, SYNC_CS.0, SYNC_CS.1), 0),
                SyncSignal::Sev => (place(0b10, SYNC_CS.0, SYNC_CS.1), 0),
                SyncSignal::Irq { msi: None } => (place(0b01, SYNC_CS.0, SYNC_CS.1), 0),
                SyncSignal::Irq { msi: Some(msi) } => {
                    if msi.address == 0 {
                        return Err(EncodeError::TooWide {
                            field: "MSIAddress",
                            value: 0,
                        });
                    }
                    check_aligned("MSIAddress", msi.address, 4)?;
                    check_width("MSIAddress", msi.address, 52)?;
                    check_width("MSIAttr", u64::from(msi.memattr), 4)?;
                    (
                        place(0b01, SYNC_CS.0, SYNC_CS.1)
                            | place(msi.shareability.encoding(), SYNC_MSH.0, SYNC_MSH.1)
                            | place(u64::from(msi.memattr), SYNC_MSIATTR.0, SYNC_MSIATTR.1)
                            | place(u64::from(msi.data), SYNC_MSIDATA.0, SYNC_MSIDATA.1),
                        msi.address,
                    )
                }
            },
        };
        Ok([w0 | op, w1])
    }

    /// The command in a queue entry. Refuses unknown opcodes, architected commands this driver
    /// does not model, set reserved bits (including SSec) and reserved field values, so that
    /// `decode(raw)?.encode() == Ok(raw)` for every entry it accepts, except that a CMD_SYNC
    /// that writes no MSI (CS is not SIG_IRQ, or MSIAddress is 0) drops its MSI fields: the
    /// SMMU ignores them, and Linux sets MSH and MSIAttr on every CMD_SYNC.
    pub fn decode(raw: RawCommand) -> Result<Self, DecodeError> {
        let [w0, w1] = raw;
        let op = field(w0, OPCODE.0, OPCODE.1) as u8;
        // Defined bits of each dword, opcode included.
        let ssid_bits = 1 << SSV | m(SSID);
        let range0 = m(NUM) | m(SCALE);
        let va1 = 1 << LEAF | m(TTL) | m(TG) | m(VA);
        let ipa1 = 1 << LEAF | m(TTL) | m(TG) | m(IPA);
        let (defined0, defined1) = match op {
            opcode::PREFETCH_CONFIG => (m(SID) | ssid_bits, 0),
            opcode::CFGI_STE => (m(SID), 1 << LEAF),
            opcode::CFGI_STE_RANGE => (m(SID), m(CFGI_RANGE)),
            opcode::CFGI_CD => (m(SID) | m(SSID), 1 << LEAF),
            opcode::CFGI_CD_ALL => (m(SID), 0),
            opcode::TLBI_NH_ALL | opcode::TLBI_S12_VMALL => (m(VMID), 0),
            opcode::TLBI_NH_ASID => (m(VMID) | m(ASID), 0),
            opcode::TLBI_NH_VA => (m(VMID) | m(ASID) | range0, va1),
            opcode::TLBI_NH_VAA => (m(VMID) | range0, va1),
            opcode::TLBI_EL2_ALL | opcode::TLBI_NSNH_ALL => (0, 0),
            opcode::TLBI_EL2_ASID => (m(ASID), 0),
            opcode::TLBI_EL2_VA => (m(ASID) | range0, va1),
            opcode::TLBI_EL2_VAA => (range0, va1),
            opcode::TLBI_S2_IPA => (m(VMID) | range0, ipa1),
            opcode::ATC_INV => (m(SID) | ssid_bits | 1 << ATC_GLOBAL, m(ATC_SIZE) | m(VA)),
            opcode::PRI_RESP => (m(SID) | ssid_bits, m(PRI_GROUP) | m(PRI_RESP)),
            opcode::RESUME => (m(SID) | m(RESUME_ACTION), m(STAG)),
            opcode::SYNC => (
                m(SYNC_CS) | m(SYNC_MSH) | m(SYNC_MSIATTR) | m(SYNC_MSIDATA),
                m(SYNC_MSIADDR),
            ),
            opcode::PREFETCH_ADDR
            | opcode::CFGI_VMS_PIDM
            | opcode::TLBI_EL3_ALL
            | opcode::TLBI_EL3_VA
            | opcode::STALL_TERM => return Err(DecodeError::Unsupported(op)),
            _ => return Err(DecodeError::UnknownOpcode(op)),
        };
        let reserved0 = w0 & !(defined0 | m(OPCODE));
        if reserved0 != 0 {
            return Err(DecodeError::ReservedBits {
                opcode: op,
                dword: 0,
                bits: reserved0,
            });
        }
        let reserved1 = w1 & !defined1;
        if reserved1 != 0 {
            return Err(DecodeError::ReservedBits {
                opcode: op,
                dword: 1,
                bits: reserved1,
            });
        }

        let sid = field(w0, SID.0, SID.1) as u32;
        let vmid = field(w0, VMID.0, VMID.1) as u16;
        let asid = field(w0, ASID.0, ASID.1) as u16;
        let leaf = w1 & 1 << LEAF != 0;
        let ssid = || -> Result<Option<u32>, DecodeError> {
            let value = field(w0, SSID.0, SSID.1) as u32;
            if w0 & 1 << SSV != 0 {
                Ok(Some(value))
            } else if value != 0 {
                // A SubstreamID without SSV means nothing: refuse rather than drop it.
                Err(DecodeError::ReservedBits {
                    opcode: op,
                    dword: 0,
                    bits: w0 & m(SSID),
                })
            } else {
                Ok(None)
            }
        };
        let range = || -> Result<Option<TlbiRange>, DecodeError> {
            let tg = field(w1, TG.0, TG.1);
            match granule_from_tlbi_tg(tg) {
                Some(granule) => Ok(Some(TlbiRange {
                    granule,
                    scale: field(w0, SCALE.0, SCALE.1) as u8,
                    num: field(w0, NUM.0, NUM.1) as u8,
                    ttl: field(w1, TTL.0, TTL.1) as u8,
                })),
                None => {
                    // TG = 0: not a range; NUM, SCALE and TTL have no meaning.
                    let stray0 = w0 & (m(NUM) | m(SCALE));
                    if stray0 != 0 {
                        return Err(DecodeError::ReservedBits {
                            opcode: op,
                            dword: 0,
                            bits: stray0,
                        });
                    }
                    let stray1 = w1 & m(TTL);
                    if stray1 != 0 {
                        return Err(DecodeError::ReservedBits {
                            opcode: op,
                            dword: 1,
                            bits: stray1,
                        });
                    }
                    Ok(None)
                }
            }
        };
        let va = w1 & m(VA);

        Ok(match op {
            opcode::PREFETCH_CONFIG => Self::PrefetchConfig { sid, ssid: ssid()? },
            opcode::CFGI_STE => Self::CfgiSte { sid, leaf },
            opcode::CFGI_STE_RANGE => Self::CfgiSteRange {
                sid,
                range: field(w1, CFGI_RANGE.0, CFGI_RANGE.1) as u8,
            },
            opcode::CFGI_CD => Self::CfgiCd {
                sid,
                ssid: field(w0, SSID.0, SSID.1) as u32,
                leaf,
            },
            opcode::CFGI_CD_ALL => Self::CfgiCdAll { sid },
            opcode::TLBI_NH_ALL => Self::TlbiNhAll { vmid },
            opcode::TLBI_S12_VMALL => Self::TlbiS12Vmall { vmid },
            opcode::TLBI_NH_ASID => Self::TlbiNhAsid { vmid, asid },
            opcode::TLBI_NH_VA => Self::TlbiNhVa {
                vmid,
                asid,
                addr: va,
                leaf,
                range: range()?,
            },
            opcode::TLBI_NH_VAA => Self::TlbiNhVaa {
                vmid,
                addr: va,
                leaf,
                range: range()?,
            },
            opcode::TLBI_EL2_ALL => Self::TlbiEl2All,
            opcode::TLBI_NSNH_ALL => Self::TlbiNsnhAll,
            opcode::TLBI_EL2_ASID => Self::TlbiEl2Asid { asid },
            opcode::TLBI_EL2_VA => Self::TlbiEl2Va {
                asid,
                addr: va,
                leaf,
                range: range()?,
            },
            opcode::TLBI_EL2_VAA => Self::TlbiEl2Vaa {
                addr: va,
                leaf,
                range: range()?,
            },
            opcode::TLBI_S2_IPA => Self::TlbiS2Ipa {
                vmid,
                ipa: w1 & m(IPA),
                leaf,
                range: range()?,
            },
            opcode::ATC_INV => {
                let size = field(w1, ATC_SIZE.0, ATC_SIZE.1);
                if size > 52 {
                    return Err(DecodeError::ReservedValue {
                        opcode: op,
                        field: "Size",
                        value: size,
                    });
                }
                if size < 52 && va & ((1u64 << (12 + size)) - 1) != 0 {
                    // The address must be aligned to the span it names.
                    return Err(DecodeError::ReservedValue {
                        opcode: op,
                        field: "Address",
                        value: va,
                    });
                }
                Self::AtcInv {
                    sid,
                    ssid: ssid()?,
                    addr: va,
                    size: size as u8,
                    global: w0 & 1 << ATC_GLOBAL != 0,
                }
            }
            opcode::PRI_RESP => {
                let response = match field(w1, PRI_RESP.0, PRI_RESP.1) {
                    0b00 => PriResponse::Deny,
                    0b01 => PriResponse::Failure,
                    0b10 => PriResponse::Success,
                    value => {
                        return Err(DecodeError::ReservedValue {
                            opcode: op,
                            field: "Resp",
                            value,
                        })
                    }
                };
                Self::PriResp {
                    sid,
                    ssid: ssid()?,
                    group: field(w1, PRI_GROUP.0, PRI_GROUP.1) as u16,
                    response,
                }
            }
            opcode::RESUME => {
                let action = match field(w0, RESUME_ACTION.0, RESUME_ACTION.1) {
                    0b00 => ResumeAction::Terminate,
                    0b01 => ResumeAction::Retry,
                    0b10 => ResumeAction::Abort,
                    value => {
                        return Err(DecodeError::ReservedValue {
                            opcode: op,
                            field: "Action",
                            value,
                        })
                    }
                };
                Self::Resume {
                    sid,
                    stag: field(w1, STAG.0, STAG.1) as u16,
                    action,
                }
            }
            opcode::SYNC => {
                let signal = match field(w0, SYNC_CS.0, SYNC_CS.1) {
                    0b00 => SyncSignal::None,
                    0b10 => SyncSignal::Sev,
                    0b01 => {
                        let address = w1 & m(SYNC_MSIADDR);
                        if address == 0 {
                            SyncSignal::Irq { msi: None }
                        } else {
                            let sh = field(w0, SYNC_MSH.0, SYNC_MSH.1);
                            let Some(shareability) = Shareability::from_encoding(sh) else {
                                return Err(DecodeError::ReservedValue {
                                    opcode: op,
                                    field: "MSH",
                                    value: sh,
                                });
                            };
                            SyncSignal::Irq {
                                msi: Some(SyncMsi {
                                    address,
                                    data: field(w0, SYNC_MSIDATA.0, SYNC_MSIDATA.1) as u32,
                                    shareability,
                                    memattr: field(w0, SYNC_MSIATTR.0, SYNC_MSIATTR.1) as u8,
                                }),
                            }
                        }
                    }
                    value => {
                        return Err(DecodeError::ReservedValue {
                            opcode: op,
                            field: "CS",
                            value,
                        })
                    }
                };
                Self::Sync { signal }
            }
            // Every other opcode returned above.
            _ => return Err(DecodeError::UnknownOpcode(op)),
        })
    }
}

#[cfg(test)]
mod tests;
