//! What a vIOMMU accepts from its guest (IHI 0070): the guest's stream table entry (vSTE) from
//! which a nested domain is built, and the guest's command-queue entries, checked and rewritten
//! for the host's queue. Pure functions of the SMMU's [`Features`]; the unit side is
//! [`crate::viommu`].
//!
//! The policy is the one Linux's iommufd applies to a vSMMU (arm-smmu-v3-iommufd.c): a guest
//! may ask for abort, bypass (its stage 1 off: the host's stage 2 alone) or stage 1 through its
//! own CD table; stage 2, the VMID and every attribute override stay the host's. A guest may
//! invalidate its own stage-1 TLB entries (under its VMID, which replaces whatever it wrote)
//! and the CDs and ATCs of its own devices (virtual stream ids, translated); nothing else.

use iommu::unit::{DeviceId, GuestEntry, GuestFlush, UnitError};

use crate::attributes::granule_supported;
use crate::command::{opcode, Command, DecodeError, RawCommand, TlbiRange};
use crate::entry::EntryError;
use crate::idr::{Features, StallModel};
use crate::stream_table::{CdTableFormat, Eats, Stage1, SteConfig, StreamTableEntry, StreamWorld};

/// A guest STE after validation: what the nested domain built from it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestSte {
    /// V = 0 or Config = abort: the device's DMA is refused.
    Abort,
    /// Config = bypass: the guest translates nothing; the host's stage 2 alone applies.
    Bypass,
    /// Config = stage 1: the guest's CD table (an IPA) in front of the host's stage 2.
    Stage1 {
        /// S1ContextPtr, S1Fmt, S1CDMax, S1DSS, S1CIR/S1COR/S1CSH, S1STALLD; `vmid` is 0.
        s1: Stage1,
        /// EATS: abort, or full ATS where the SMMU has it.
        ats: Eats,
    },
}

/// Bytes of the table S1ContextPtr points at (IHI 0070 5.2, 5.4): one CD when S1CDMax = 0, a
/// linear array of `2^S1CDMax` CDs, or a level-1 table of 8-byte descriptors, one per 64 or
/// 1024 CDs.
fn cd_table_bytes(s1: &Stage1) -> u64 {
    let cds = 1u64 << s1.cd_max;
    match (s1.cd_max, s1.format) {
        (0, _) | (_, CdTableFormat::Linear) => 64 * cds,
        (_, CdTableFormat::TwoLevel4K) => 8 * cds.div_ceil(64),
        (_, CdTableFormat::TwoLevel64K) => 8 * cds.div_ceil(1024),
    }
}

fn guest_field(e: EntryError) -> UnitError {
    UnitError::GuestEntry(match e {
        EntryError::Field { field, .. } | EntryError::Misaligned { field, .. } => field,
        EntryError::Unsupported(what) => what,
    })
}

/// Validates a guest's STE for a nested domain whose stage 2 translates `parent_ias_bits` of
/// IPA, on an SMMU with `features`. Refusals are [`UnitError::GuestEntry`] naming the field.
///
/// Accepted: V = 0 (treated as abort, all other bits ignored as the SMMU ignores them); V = 1
/// with Config abort, bypass or stage 1, and for stage 1 only S1ContextPtr, S1Fmt, S1CDMax,
/// S1DSS, S1CIR, S1COR, S1CSH, S1STALLD and EATS (IHI 0070 5.2), each within what the SMMU
/// implements, and the CD table inside the parent's IPA space. Every other bit must be 0: the
/// stage-2 fields, the VMID, STRW and the attribute overrides are the host's.
pub fn validate_vste(
    entry: &GuestEntry,
    features: &Features,
    parent_ias_bits: u8,
) -> Result<GuestSte, UnitError> {
    // STE.V [0] and STE.Config [3:1] (5.2): a guest asking for stage 2 is told so, not that
    // its stage-2 fields are malformed.
    if entry[0] & 1 != 0 && (entry[0] >> 1) & 0b110 == 0b110 {
        return Err(UnitError::GuestEntry("Config"));
    }
    let Some(ste) = StreamTableEntry::decode(entry).map_err(guest_field)? else {
        return Ok(GuestSte::Abort);
    };
    if ste.incoming_shareability {
        return Err(UnitError::GuestEntry("SHCFG"));
    }
    let s1 = match ste.config {
        SteConfig::Abort => return Ok(GuestSte::Abort),
        SteConfig::Bypass => return Ok(GuestSte::Bypass),
        // Stage 2 is the host's (5.2 Config 0b110 / 0b111).
        SteConfig::Stage2(_) | SteConfig::Nested(..) => {
            return Err(UnitError::GuestEntry("Config"))
        }
        SteConfig::Stage1(s1) => s1,
    };
    if s1.vmid != 0 {
        return Err(UnitError::GuestEntry("S2VMID"));
    }
    if ste.stream_world != StreamWorld::NsEl1 {
        return Err(UnitError::GuestEntry("STRW"));
    }
    // 5.2 EATS: full ATS only, and only where IDR0.ATS says the SMMU has it.
    match ste.ats {
        Eats::Abort => {}
        Eats::Translate if features.ats => {}
        Eats::Translate | Eats::SplitStage => return Err(UnitError::GuestEntry("EATS")),
    }
    // 5.2 S1CDMax: at most IDR1.SSIDSIZE bits of SubstreamID.
    if s1.cd_max > features.ssid_bits {
        return Err(UnitError::GuestEntry("S1CDMax"));
    }
    // 5.2 S1Fmt: 2-level CD tables only with IDR0.CD2L (ignored when S1CDMax = 0).
    if s1.cd_max > 0 && s1.format != CdTableFormat::Linear && !features.cd_two_level {
        return Err(UnitError::GuestEntry("S1Fmt"));
    }
    // 5.2 S1STALLD: reserved with the terminate-only stall model (C_BAD_STE otherwise).
    if s1.stall_disable && features.stall_model == StallModel::TerminateOnly {
        return Err(UnitError::GuestEntry("S1STALLD"));
    }
    // The whole CD table must be guest memory: inside what the parent's stage 2 translates.
    let end = s1.cd_table.as_u64().checked_add(cd_table_bytes(&s1));
    if parent_ias_bits >= 64 || end.is_none_or(|end| end > 1u64 << parent_ias_bits) {
        return Err(UnitError::GuestEntry("S1ContextPtr"));
    }
    Ok(GuestSte::Stage1 { s1, ats: ste.ats })
}

/// What one guest command becomes on the host's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCommand {
    /// Issue this command.
    Issue(Command),
    /// Nothing to issue: a CMD_SYNC, which the host's own batch ends with anyway.
    Consumed,
}

/// Checks one guest command and rewrites it for the host's queue: the VMID of TLBI_NH_* becomes
/// `vmid` (the vIOMMU's), a virtual stream id becomes the physical one `devices` gives. Refuses
/// (a [`UnitError::GuestCommand`] naming why) malformed entries, commands the guest may not
/// issue (stage-2 and EL2/EL3 TLB maintenance, STE invalidation and prefetch, PRI and stall
/// answers) and stream ids that are not the guest's.
/// Why a guest command does not decode, in the words of a refusal.
fn decode_reason(e: DecodeError) -> &'static str {
    match e {
        DecodeError::UnknownOpcode(_) => "unknown opcode",
        DecodeError::Unsupported(opcode::TLBI_EL3_ALL | opcode::TLBI_EL3_VA) => {
            "EL3 TLB maintenance is the host's"
        }
        DecodeError::Unsupported(opcode::PREFETCH_ADDR) => "prefetch is the host's",
        DecodeError::Unsupported(opcode::STALL_TERM) => "stall answers are the host's",
        DecodeError::Unsupported(_) => "command not supported for guests",
        DecodeError::ReservedBits { .. } => "reserved bits set",
        DecodeError::ReservedValue { .. } => "reserved field value",
    }
}

/// What a guest's command asks a shadowing vIOMMU to follow (its stage-1 tables shadowed on an
/// SMMU without stage 2 to nest on): stage-1 TLB invalidations name the ASID and addresses whose
/// translations changed, CMD_SYNC is a barrier. Configuration invalidations (the guest changed
/// an STE or CD: the VMM follows those itself), ATC invalidations (a shadowed device has no ATS)
/// and everything else are refused by name.
pub fn guest_flush(raw: RawCommand) -> Result<GuestFlush, &'static str> {
    Ok(match Command::decode(raw).map_err(decode_reason)? {
        Command::TlbiNhVa {
            asid, addr, range, ..
        } => GuestFlush::Range {
            tag: u32::from(asid),
            iova: addr,
            // One address: its page (the shadow follows the whole guest leaf that holds it).
            len: range.map_or(4096, |r: TlbiRange| r.pages() << r.granule.shift()),
        },
        Command::TlbiNhAsid { asid, .. } => GuestFlush::Tag(u32::from(asid)),
        // Every ASID's: the shadows of all of them.
        Command::TlbiNhVaa { .. } | Command::TlbiNhAll { .. } => GuestFlush::All,
        Command::Sync { .. } => GuestFlush::Wait,
        Command::CfgiSte { .. }
        | Command::CfgiSteRange { .. }
        | Command::CfgiCd { .. }
        | Command::CfgiCdAll { .. }
        | Command::PrefetchConfig { .. } => {
            return Err("configuration invalidation (the VMM follows STE and CD changes itself)")
        }
        Command::AtcInv { .. } => return Err("ATC invalidation (a shadowed device has no ATS)"),
        _ => return Err("command a shadow does not follow"),
    })
}

pub fn check_command(
    raw: RawCommand,
    vmid: u16,
    features: &Features,
    devices: &dyn Fn(u32) -> Option<DeviceId>,
    ats_enabled: &dyn Fn(DeviceId) -> bool,
) -> Result<HostCommand, UnitError> {
    let cmd = Command::decode(raw).map_err(|e| UnitError::GuestCommand(decode_reason(e)))?;
    let guest_sid =
        |sid: u32| devices(sid).ok_or(UnitError::GuestCommand("stream id not the guest's"));
    let ssid_fits = |ssid: u32| u64::from(ssid) >> features.ssid_bits == 0;
    let host = match cmd {
        Command::Sync { .. } => return Ok(HostCommand::Consumed),
        // 4.4.2/4.4.3 address invalidations: a range form only where IDR3.RIL has it.
        Command::TlbiNhVa { range: Some(_), .. } | Command::TlbiNhVaa { range: Some(_), .. }
            if !features.range_invalidation =>
        {
            return Err(UnitError::GuestCommand(
                "range invalidation without IDR3.RIL",
            ))
        }
        // 4.4.1 TG: a range names pages of a granule the SMMU walks (IDR5.GRAN*).
        Command::TlbiNhVa { range: Some(r), .. } | Command::TlbiNhVaa { range: Some(r), .. }
            if !granule_supported(r.granule, &features.granules) =>
        {
            return Err(UnitError::GuestCommand(
                "range TG is not a granule of the SMMU",
            ))
        }
        Command::TlbiNhAsid { asid, .. } | Command::TlbiNhVa { asid, .. }
            if u32::from(asid) >> features.asid_bits != 0 =>
        {
            return Err(UnitError::GuestCommand(
                "ASID wider than IDR0.ASID16 allows",
            ))
        }
        // 4.4.1-4.4.3: stage-1 TLB maintenance, confined to the guest's VMID.
        Command::TlbiNhAll { .. }
        | Command::TlbiNhAsid { .. }
        | Command::TlbiNhVa { .. }
        | Command::TlbiNhVaa { .. } => cmd.with_vmid(vmid),
        // A guest's "everything non-secure" is everything of its own VM (as Linux does).
        Command::TlbiNsnhAll => Command::TlbiNhAll { vmid },
        // 4.3.3/4.3.4 CD invalidation; 4.5.1 ATC invalidation: the guest's devices only.
        Command::CfgiCd { sid, ssid, .. } => {
            if !ssid_fits(ssid) {
                return Err(UnitError::GuestCommand("SubstreamID beyond IDR1.SSIDSIZE"));
            }
            cmd.with_stream_id(guest_sid(sid)?.0)
        }
        Command::CfgiCdAll { sid } => cmd.with_stream_id(guest_sid(sid)?.0),
        Command::AtcInv { sid, ssid, .. } => {
            if !features.ats {
                return Err(UnitError::GuestCommand("CMD_ATC_INV without ATS"));
            }
            if ssid.is_some_and(|s| !ssid_fits(s)) {
                return Err(UnitError::GuestCommand("SubstreamID beyond IDR1.SSIDSIZE"));
            }
            let host = guest_sid(sid)?;
            // Only a device with ATS on can hold what the guest wants invalidated.
            if !ats_enabled(host) {
                return Err(UnitError::GuestCommand(
                    "CMD_ATC_INV for a device without ATS enabled",
                ));
            }
            cmd.with_stream_id(host.0)
        }
        Command::TlbiS2Ipa { .. } | Command::TlbiS12Vmall { .. } => {
            return Err(UnitError::GuestCommand(
                "stage-2 TLB maintenance is the host's",
            ))
        }
        Command::TlbiEl2All
        | Command::TlbiEl2Asid { .. }
        | Command::TlbiEl2Va { .. }
        | Command::TlbiEl2Vaa { .. } => {
            return Err(UnitError::GuestCommand("EL2 TLB maintenance is the host's"))
        }
        Command::CfgiSte { .. } | Command::CfgiSteRange { .. } => {
            return Err(UnitError::GuestCommand(
                "STE invalidation is the host's (vSTEs change through new_nested)",
            ))
        }
        Command::PrefetchConfig { .. } => {
            return Err(UnitError::GuestCommand("prefetch is the host's"))
        }
        Command::PriResp { .. } | Command::Resume { .. } => {
            return Err(UnitError::GuestCommand(
                "PRI and stall answers are the host's",
            ))
        }
    };
    Ok(HostCommand::Issue(host))
}

#[cfg(test)]
mod tests;
