//! Guest data checked before the host uses it (nesting on VT-d): the scalable-mode
//! PASID entry a guest wrote for one of its devices (9.6), from which a nested domain is built,
//! and the invalidation descriptors a guest queued in its virtual IOMMU (6.5.2), translated to
//! the host's domain ids and devices or refused by name.
//!
//! Pure functions over the typed views of [`crate::pasid::EntryFields`] and
//! [`Descriptor::decode`]; [`crate::viommu`] applies them to a unit.
//!
//! What a guest owns and what the host keeps: the guest chooses its first-stage table (a
//! guest-physical pointer), its paging mode, the first-stage controls the hardware has (SRE,
//! WPE, EAFE, memory types with ECAP.MTS) and its own domain ids (tags it uses in its
//! invalidations). The host keeps the translation type of the real entry (nested, or the nest
//! parent alone), the second stage and its controls (AW, SSEE, SSADE, SSPTPTR), snooping
//! (PWSNP, PGSNP), fault reporting (FPD), context entries, interrupt remapping and every tag of
//! its own.

use iommu::addr::PhysAddr;

use crate::caps::{Capability, ExtendedCapability};
use iommu::unit::GuestFlush;

use crate::descriptor::{
    AtsTarget, DecodeError, Descriptor, DescriptorError, Drain, IotlbScope, PageBlock,
    PasidCacheScope, PasidIotlbScope,
};
use crate::pasid::{EntryFields, FirstStagePaging, MemoryType, PasidEntry, Pgtt};
use crate::root_table::{Did, SourceId};

/// What the host offers a guest's PASID entries: the unit's capabilities and the input width
/// of the nest parent (the guest-physical address space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestLimits {
    pub cap: Capability,
    pub ecap: ExtendedCapability,
    /// Guest-physical addresses are below `2^guest_address_bits` (the parent's input width).
    pub guest_address_bits: u32,
}

/// A guest's first-stage configuration, checked: the fields of a nested PASID entry that come
/// from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFirstStage {
    /// The guest's own domain id for this entry: the tag its invalidations will name.
    pub guest_domain: Did,
    /// The first-stage table, a guest-physical address (translated by the nest parent).
    pub root: PhysAddr,
    pub paging: FirstStagePaging,
    /// SRE (ECAP.SRS).
    pub supervisor_requests: bool,
    /// WPE.
    pub write_protect: bool,
    /// EAFE (ECAP.EAFS).
    pub extended_accessed: bool,
    /// CD/EMTE/EMT/PWT/PCD/PAT (ECAP.MTS).
    pub memory_type: Option<MemoryType>,
}

/// What a guest's PASID entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestConfig {
    /// First-stage translation by the guest's table, nested over the parent (PGTT 001 in the
    /// guest's entry, 011 in the host's).
    FirstStage(GuestFirstStage),
    /// Guest pass-through (PGTT 100): the guest's IOVA is its physical address, so the device
    /// is translated by the nest parent alone (never host pass-through).
    ParentOnly { guest_domain: Did },
}

impl GuestConfig {
    pub const fn guest_domain(&self) -> Did {
        match self {
            Self::FirstStage(f) => f.guest_domain,
            Self::ParentOnly { guest_domain } => *guest_domain,
        }
    }
}

/// Checks a guest's scalable-mode PASID entry field by field; every refusal names the field
/// (the text of [`UnitError::GuestEntry`](iommu::unit::UnitError::GuestEntry)).
///
/// AW is accepted in its defined encodings (0 to 3) and replaced by the parent's: a guest's
/// first-stage entry carries its own view of it, which the nested entry does not use. FSPTPTR
/// is 4 KiB aligned by layout (its low bits are other fields, checked by name); it must lie
/// below the parent's guest-physical width.
pub fn validate_guest_pasid_entry(
    entry: &[u64; 8],
    limits: &NestLimits,
) -> Result<GuestConfig, &'static str> {
    let f = PasidEntry::decode(*entry).fields();
    if let Some(reserved) = f.reserved {
        return Err(reserved);
    }
    if !f.present {
        return Err("P (a not-present entry: attach the device as blocked instead)");
    }
    let pgtt = match f.pgtt {
        Ok(p) => p,
        Err(_) => return Err("PGTT (reserved encoding)"),
    };
    match pgtt {
        Pgtt::FirstStage | Pgtt::PassThrough => {}
        Pgtt::SecondStage => return Err("PGTT (second-stage translation is the host's)"),
        Pgtt::Nested => return Err("PGTT (nested translation is the host's)"),
    }
    if f.aw > 3 {
        return Err("AW (reserved encoding)");
    }
    check_host_fields(&f)?;
    if pgtt == Pgtt::PassThrough {
        let first_stage_set = f.first_stage_root.as_u64() != 0
            || f.first_stage_paging != 0
            || f.supervisor_requests
            || f.write_protect
            || f.extended_accessed
            || f.execute_requests
            || f.execute_controls != 0
            || f.memory_type.is_some()
            || f.emt_without_emte;
        if first_stage_set {
            return Err("first-stage fields (set in a pass-through entry)");
        }
        return Ok(GuestConfig::ParentOnly {
            guest_domain: f.domain,
        });
    }
    let paging = match FirstStagePaging::from_fspm(f.first_stage_paging) {
        Some(p) => p,
        None => return Err("FSPM (reserved encoding)"),
    };
    let (cap, ecap) = (limits.cap, limits.ecap);
    if paging == FirstStagePaging::FiveLevel && !cap.fs5lp() {
        return Err("FSPM (5-level paging needs CAP.FS5LP)");
    }
    let root = f.first_stage_root;
    if limits.guest_address_bits < 64 && root.as_u64() >> limits.guest_address_bits != 0 {
        return Err("FSPTPTR (beyond the nest parent's guest-physical width)");
    }
    if f.supervisor_requests && !ecap.srs() {
        return Err("SRE (supervisor requests need ECAP.SRS)");
    }
    if f.execute_requests {
        return Err("ERE (execute requests are not offered)");
    }
    if f.execute_controls != 0 {
        return Err("bits 134:133 (NXE/SMEP are not offered)");
    }
    if f.extended_accessed && !ecap.eafs() {
        return Err("EAFE (extended-accessed flags need ECAP.EAFS)");
    }
    if f.emt_without_emte {
        return Err("EMT (set without EMTE)");
    }
    if f.memory_type.is_some() && !ecap.mts() {
        return Err("CD/EMTE/EMT/PWT/PCD/PAT (memory types need ECAP.MTS)");
    }
    Ok(GuestConfig::FirstStage(GuestFirstStage {
        guest_domain: f.domain,
        root,
        paging,
        supervisor_requests: f.supervisor_requests,
        write_protect: f.write_protect,
        extended_accessed: f.extended_accessed,
        memory_type: f.memory_type,
    }))
}

/// The fields of a PASID entry that only the host sets.
fn check_host_fields(f: &EntryFields) -> Result<(), &'static str> {
    if f.fault_processing_disabled {
        return Err("FPD (fault reporting is the host's)");
    }
    if f.second_stage_execute {
        return Err("SSEE (second-stage controls are the host's)");
    }
    if f.second_stage_access_dirty {
        return Err("SSADE (second-stage controls are the host's)");
    }
    if f.second_stage_root.as_u64() != 0 {
        return Err("SSPTPTR (the second stage is the nest parent)");
    }
    if f.page_walk_snoop {
        return Err("PWSNP (page-walk snooping is the host's)");
    }
    if f.page_snoop {
        return Err("PGSNP (snoop control is the host's)");
    }
    Ok(())
}

/// What the host may issue for a guest: the unit's limits on descriptor fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// CAP.MAMV: the largest address mask.
    pub mamv: u8,
    /// CAP.DRD/DWD: the drain the host's IOTLB descriptors ask for (the guest's DR/DW are
    /// replaced: draining is the host's policy).
    pub drain: Drain,
    /// ECAP.DT: device-TLB invalidations exist.
    pub device_tlb: bool,
    /// ECAP.DIT: PFSID is meaningful.
    pub throttling: bool,
}

impl HostLimits {
    pub const fn for_unit(cap: Capability, ecap: ExtendedCapability) -> Self {
        Self {
            mamv: cap.mamv(),
            drain: Drain::for_unit(cap),
            device_tlb: ecap.dt(),
            throttling: ecap.dit(),
        }
    }
}

/// How a guest's names become the host's: its domain ids (known from the nested domains built
/// on its vIOMMU) and its devices (the vIOMMU's virtual id table).
pub trait GuestNames {
    /// The host domain id standing for the guest's `guest` domain id, if the guest has one.
    fn host_domain(&self, guest: Did) -> Option<Did>;
    /// The physical source id of the guest's device `guest`, if it is one of the guest's.
    fn device(&self, guest: SourceId) -> Option<SourceId>;
    /// Whether the host device `host` has ATS enabled: only such a device can hold
    /// translations in a device-TLB, so only its device-TLB invalidations are forwarded.
    fn ats_enabled(&self, host: SourceId) -> bool;
}

/// What to do with one accepted guest descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAction {
    /// Issue this host descriptor.
    Issue(Descriptor),
    /// A guest wait descriptor: consumed. The host waits for every descriptor it issues for the
    /// guest before the forwarding call returns, so the guest's wait condition holds then; its
    /// status write or completion interrupt is the VMM's to perform in the guest (the host never
    /// writes to an address a guest names).
    Consumed,
}

/// Checks one guest descriptor (`[u64; 4]`, a 128-bit one in the low half with the upper half
/// zero) and translates its tags and devices to the host's; refusals name the reason (the text
/// of [`UnitError::GuestCommand`](iommu::unit::UnitError::GuestCommand)).
///
/// Accepted: IOTLB (domain- and page-selective) and PASID-based IOTLB naming the guest's
/// domain ids; PASID-cache invalidation of the guest's domain ids; device-TLB and PASID-based
/// device-TLB invalidation of the guest's devices that have ATS enabled (where the unit has
/// ECAP.DT); waits
/// (consumed, see [`GuestAction::Consumed`]). Refused: context-cache, global IOTLB and
/// PASID-cache, interrupt-entry-cache, page-request and reserved types, reserved bits, unknown
/// domain ids and devices, address masks above CAP.MAMV.
///
/// PASIDs are not translated: a guest's PASID is the host's PASID for its devices (as on
/// VT-d's iommufd nesting), and an invalidation of a PASID the host did not configure only
/// costs time. Domain ids are what keeps a guest's invalidations to its own translations.
pub fn translate_guest_descriptor(
    raw: &[u64; 4],
    limits: &HostLimits,
    names: &impl GuestNames,
) -> Result<GuestAction, &'static str> {
    let d = Descriptor::decode(*raw).map_err(decode_reason)?;
    let host_domain = |g: Did| {
        names
            .host_domain(g)
            .ok_or("DID (not one of the guest's domain ids)")
    };
    let check_mask = |am: u8| {
        if am > limits.mamv {
            Err("AM (above CAP.MAMV)")
        } else {
            Ok(())
        }
    };
    let issued = match d {
        Descriptor::ContextCache(_) => {
            return Err("context-cache invalidation (context entries are the host's)")
        }
        Descriptor::Iotlb { scope, .. } => {
            let scope = match scope {
                IotlbScope::Global => return Err("global IOTLB invalidation (host-wide)"),
                IotlbScope::Domain(g) => IotlbScope::Domain(host_domain(g)?),
                IotlbScope::Pages {
                    domain,
                    block,
                    leaf_only,
                } => {
                    check_mask(block.am())?;
                    IotlbScope::Pages {
                        domain: host_domain(domain)?,
                        block,
                        leaf_only,
                    }
                }
            };
            Descriptor::Iotlb {
                scope,
                drain: limits.drain,
            }
        }
        Descriptor::PasidIotlb(scope) => Descriptor::PasidIotlb(match scope {
            PasidIotlbScope::Pasid { domain, pasid } => PasidIotlbScope::Pasid {
                domain: host_domain(domain)?,
                pasid,
            },
            PasidIotlbScope::Pages {
                domain,
                pasid,
                block,
                leaf_only,
            } => {
                check_mask(block.am())?;
                PasidIotlbScope::Pages {
                    domain: host_domain(domain)?,
                    pasid,
                    block,
                    leaf_only,
                }
            }
        }),
        Descriptor::PasidCache(scope) => Descriptor::PasidCache(match scope {
            PasidCacheScope::Global => return Err("global PASID-cache invalidation (host-wide)"),
            PasidCacheScope::Domain(g) => PasidCacheScope::Domain(host_domain(g)?),
            PasidCacheScope::Pasid { domain, pasid } => PasidCacheScope::Pasid {
                domain: host_domain(domain)?,
                pasid,
            },
        }),
        Descriptor::DeviceTlb { target, range } => Descriptor::DeviceTlb {
            target: host_target(&target, limits, names)?,
            range,
        },
        Descriptor::PasidDeviceTlb {
            target,
            pasid,
            range,
        } => Descriptor::PasidDeviceTlb {
            target: host_target(&target, limits, names)?,
            pasid,
            range,
        },
        Descriptor::Wait(_) => return Ok(GuestAction::Consumed),
        // Guests get no interrupt remapping of their own (decode never yields this type).
        Descriptor::Raw(_) | Descriptor::InterruptEntryCache(_) => {
            return Err("descriptor type (not decoded)")
        }
    };
    Ok(GuestAction::Issue(issued))
}

/// The host's device-TLB target for a guest's: its devices translated, then the unit's
/// support checked (so a foreign device is refused as foreign on any unit).
fn host_target(
    target: &AtsTarget,
    limits: &HostLimits,
    names: &impl GuestNames,
) -> Result<AtsTarget, &'static str> {
    let source = names
        .device(target.source)
        .ok_or("SID (not one of the guest's devices)")?;
    let pf = match target.physical_function {
        Some(pf) => Some(
            names
                .device(pf)
                .ok_or("PFSID (not one of the guest's devices)")?,
        ),
        None => None,
    };
    if !limits.device_tlb {
        return Err("device-TLB invalidation (the unit has no ECAP.DT)");
    }
    if !names.ats_enabled(source) {
        return Err("device-TLB invalidation (the device does not have ATS enabled)");
    }
    if pf.is_some() && !limits.throttling {
        return Err("PFSID (needs ECAP.DIT)");
    }
    AtsTarget::new(source, pf, target.queue_depth()).map_err(|_| "MIP (out of range)")
}

/// What a guest's invalidation descriptor asks a shadowing vIOMMU to follow: IOTLB and
/// PASID-based IOTLB invalidations name the guest domain id whose translations changed (caching
/// mode makes the guest send one after every change, not-present to present included, 6.1);
/// waits are barriers. Everything else is the VMM's (context and PASID caches: the guest
/// changed a context or PASID entry) or has no meaning for a shadow (device-TLBs, interrupt
/// entries), and is refused by name.
pub fn guest_flush(raw: &[u64; 4]) -> Result<GuestFlush, &'static str> {
    let tag = |d: Did| u32::from(d.raw());
    // AM 52 covers the whole 64-bit space, which no length says: the domain's every page.
    let range = |d: Did, b: PageBlock| match b.bytes() {
        u64::MAX => GuestFlush::Tag(tag(d)),
        len => GuestFlush::Range {
            tag: tag(d),
            iova: b.addr().as_u64(),
            len,
        },
    };
    Ok(match Descriptor::decode(*raw).map_err(decode_reason)? {
        Descriptor::Iotlb { scope, .. } => match scope {
            IotlbScope::Global => GuestFlush::All,
            IotlbScope::Domain(d) => GuestFlush::Tag(tag(d)),
            IotlbScope::Pages { domain, block, .. } => range(domain, block),
        },
        Descriptor::PasidIotlb(scope) => match scope {
            PasidIotlbScope::Pasid { domain, .. } => GuestFlush::Tag(tag(domain)),
            PasidIotlbScope::Pages { domain, block, .. } => range(domain, block),
        },
        Descriptor::Wait(_) => GuestFlush::Wait,
        Descriptor::ContextCache(_) | Descriptor::PasidCache(_) => {
            return Err("context/PASID-cache invalidation (the VMM follows entry changes itself)")
        }
        Descriptor::DeviceTlb { .. } | Descriptor::PasidDeviceTlb { .. } => {
            return Err("device-TLB invalidation (a shadowed device has no ATS)")
        }
        Descriptor::InterruptEntryCache(_) | Descriptor::Raw(_) => {
            return Err("descriptor type a shadow does not follow")
        }
    })
}

fn decode_reason(e: DecodeError) -> &'static str {
    match e {
        DecodeError::UnsupportedType {
            kind: "interrupt-entry-cache",
        } => "interrupt-entry-cache invalidation (interrupt remapping is the host's)",
        DecodeError::UnsupportedType { .. } => "descriptor type (page-request or reserved)",
        DecodeError::Reserved { field } => field,
        DecodeError::Field(DescriptorError::MisalignedBlock { .. }) => {
            "ADDR (not aligned to its address mask)"
        }
        DecodeError::Field(_) => "field out of range",
    }
}

#[cfg(test)]
mod tests;
