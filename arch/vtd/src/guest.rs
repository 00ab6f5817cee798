//! Guest data checked before the host uses it (issue 6, nesting on VT-d): the scalable-mode
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
use crate::descriptor::{
    AtsTarget, DecodeError, Descriptor, DescriptorError, Drain, IotlbScope, PasidCacheScope,
    PasidIotlbScope,
};
use crate::pasid::{EntryFields, FirstStagePaging, MemoryType, PasidEntry, Pgtt};
use crate::root_table::{DomainId, SourceId};

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
    pub guest_domain: DomainId,
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
    ParentOnly { guest_domain: DomainId },
}

impl GuestConfig {
    pub const fn guest_domain(&self) -> DomainId {
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
    fn host_domain(&self, guest: DomainId) -> Option<DomainId>;
    /// The physical source id of the guest's device `guest`, if it is one of the guest's.
    fn device(&self, guest: SourceId) -> Option<SourceId>;
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
/// device-TLB invalidation of the guest's devices (where the unit has ECAP.DT); waits
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
    let host_domain = |g: DomainId| {
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
        Descriptor::Raw(_) => return Err("descriptor type (not decoded)"),
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
    if pf.is_some() && !limits.throttling {
        return Err("PFSID (needs ECAP.DIT)");
    }
    AtsTarget::new(source, pf, target.queue_depth()).map_err(|_| "MIP (out of range)")
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
mod tests {
    use super::*;

    /// QEMU 10.0's CAP (aw-bits 48: MAMV 18, DRD, DWD, no FS5LP) and scalable-mode ECAP (SRS,
    /// no DT, no EAFS, no MTS, no NEST).
    const CAP: Capability = Capability(0x00d2_008c_222f_0606);
    const ECAP: ExtendedCapability = ExtendedCapability(0x4800_80f0_0f4a);

    fn limits() -> NestLimits {
        NestLimits {
            cap: CAP,
            ecap: ECAP,
            guest_address_bits: 39,
        }
    }

    /// A guest's first-stage entry: w0 = P | AW 2 << 2 | PGTT 001 << 6 = 0x49; w1 = DID 0x42;
    /// w2 = FSPTPTR 0x1234_5000 | WPE (bit 132 = w2 bit 4).
    const GOOD: [u64; 8] = [0x49, 0x42, 0x1234_5010, 0, 0, 0, 0, 0];

    fn with(word: usize, value: u64) -> [u64; 8] {
        let mut e = GOOD;
        e[word] = value;
        e
    }

    #[test]
    fn a_guest_first_stage_entry_is_accepted_with_its_fields() {
        assert_eq!(
            validate_guest_pasid_entry(&GOOD, &limits()),
            Ok(GuestConfig::FirstStage(GuestFirstStage {
                guest_domain: DomainId::new(0x42),
                root: PhysAddr::new(0x1234_5000),
                paging: FirstStagePaging::FourLevel,
                supervisor_requests: false,
                write_protect: true,
                extended_accessed: false,
                memory_type: None,
            }))
        );
        // SRE (w2 bit 0) with ECAP.SRS (bit 31, set in QEMU's scalable ECAP).
        let sre = validate_guest_pasid_entry(&with(2, 0x1234_5011), &limits());
        assert!(matches!(sre, Ok(GuestConfig::FirstStage(f)) if f.supervisor_requests));
        // 5-level (FSPM 01, w2 bits 3:2) where CAP.FS5LP (bit 60) is set.
        let l = NestLimits {
            cap: Capability(CAP.0 | 1 << 60),
            ..limits()
        };
        let five = validate_guest_pasid_entry(&with(2, 0x1234_5004), &l);
        assert!(
            matches!(five, Ok(GuestConfig::FirstStage(f)) if f.paging == FirstStagePaging::FiveLevel)
        );
        // The last page below 2^39.
        assert!(validate_guest_pasid_entry(&with(2, 0x7f_ffff_f000), &limits()).is_ok());
        // Guest pass-through (PGTT 100 = 0x100): the parent alone.
        assert_eq!(
            validate_guest_pasid_entry(&[0x109, 0x7, 0, 0, 0, 0, 0, 0], &limits()),
            Ok(GuestConfig::ParentOnly {
                guest_domain: DomainId::new(7)
            })
        );
    }

    #[test]
    fn guest_entry_refusals_name_the_field() {
        let l = limits();
        let refused = |e: [u64; 8]| validate_guest_pasid_entry(&e, &l).unwrap_err();
        assert_eq!(refused(with(0, 0x449)), "reserved bits 11:10");
        assert_eq!(refused(with(1, 0x42 | 1 << 16)), "reserved bits 86:80");
        assert_eq!(refused(with(2, 0x1234_5110)), "reserved bits 139:136");
        assert_eq!(refused(with(5, 1)), "reserved bits 511:192");
        assert!(refused(with(0, 0x48)).starts_with("P "));
        // PGTT 010, 011, 101 (reserved).
        assert_eq!(
            refused(with(0, 0x89)),
            "PGTT (second-stage translation is the host's)"
        );
        assert_eq!(
            refused(with(0, 0xc9)),
            "PGTT (nested translation is the host's)"
        );
        assert_eq!(refused(with(0, 0x149)), "PGTT (reserved encoding)");
        // AW 4 (bits 4:2 = 100).
        assert_eq!(refused(with(0, 0x51)), "AW (reserved encoding)");
        assert_eq!(
            refused(with(0, 0x4b)),
            "FPD (fault reporting is the host's)"
        );
        assert_eq!(
            refused(with(0, 0x69)),
            "SSEE (second-stage controls are the host's)"
        );
        assert_eq!(
            refused(with(0, 0x249)),
            "SSADE (second-stage controls are the host's)"
        );
        assert_eq!(
            refused(with(0, 0x5000 | 0x49)),
            "SSPTPTR (the second stage is the nest parent)"
        );
        assert_eq!(
            refused(with(1, 0x42 | 1 << 23)),
            "PWSNP (page-walk snooping is the host's)"
        );
        assert_eq!(
            refused(with(1, 0x42 | 1 << 24)),
            "PGSNP (snoop control is the host's)"
        );
        assert_eq!(
            refused(with(2, 0x1234_5004)),
            "FSPM (5-level paging needs CAP.FS5LP)"
        );
        assert_eq!(refused(with(2, 0x1234_5008)), "FSPM (reserved encoding)");
        assert_eq!(
            refused(with(2, 0x80_0000_0000)),
            "FSPTPTR (beyond the nest parent's guest-physical width)"
        );
        let no_srs = NestLimits {
            ecap: ExtendedCapability(ECAP.0 & !(1 << 31)),
            ..l
        };
        assert_eq!(
            validate_guest_pasid_entry(&with(2, 0x1234_5001), &no_srs),
            Err("SRE (supervisor requests need ECAP.SRS)")
        );
        assert_eq!(
            refused(with(2, 0x1234_5002)),
            "ERE (execute requests are not offered)"
        );
        assert_eq!(
            refused(with(2, 0x1234_5020)),
            "bits 134:133 (NXE/SMEP are not offered)"
        );
        assert_eq!(
            refused(with(2, 0x1234_5080)),
            "EAFE (extended-accessed flags need ECAP.EAFS)"
        );
        // EMT (93:91 = w1 bits 29:27) without EMTE; PAT (w1 bits 63:32) without ECAP.MTS.
        assert_eq!(refused(with(1, 0x42 | 3 << 27)), "EMT (set without EMTE)");
        assert_eq!(
            refused(with(1, 0x42 | 0x0007_0406 << 32)),
            "CD/EMTE/EMT/PWT/PCD/PAT (memory types need ECAP.MTS)"
        );
        let mts = NestLimits {
            ecap: ExtendedCapability(ECAP.0 | 1 << 25),
            ..l
        };
        assert!(validate_guest_pasid_entry(&with(1, 0x42 | 0x0007_0406 << 32), &mts).is_ok());
        // A pass-through entry with a first-stage pointer.
        assert_eq!(
            refused([0x109, 7, 0x5000, 0, 0, 0, 0, 0]),
            "first-stage fields (set in a pass-through entry)"
        );
    }

    /// The guest's domain id 0x42 is host domain id 0x107; its device 00:02.0 (0x10) is the
    /// host's 00:03.0 (0x18) and 00:02.1 (0x11) is 00:03.1 (0x19).
    struct Names;

    impl GuestNames for Names {
        fn host_domain(&self, guest: DomainId) -> Option<DomainId> {
            (guest.raw() == 0x42).then_some(DomainId::new(0x107))
        }

        fn device(&self, guest: SourceId) -> Option<SourceId> {
            match guest.raw() {
                0x10 => Some(SourceId::from_raw(0x18)),
                0x11 => Some(SourceId::from_raw(0x19)),
                _ => None,
            }
        }
    }

    fn host(dt: bool, dit: bool) -> HostLimits {
        let mut ecap = ECAP.0;
        if dt {
            ecap |= 1 << 2;
        }
        if dit {
            ecap |= 1 << 41;
        }
        HostLimits::for_unit(CAP, ExtendedCapability(ecap))
    }

    fn issued(raw: [u64; 4], limits: &HostLimits) -> Result<[u64; 4], &'static str> {
        match translate_guest_descriptor(&raw, limits, &Names)? {
            GuestAction::Issue(d) => d.encode().map_err(|_| "encode"),
            GuestAction::Consumed => Err("consumed"),
        }
    }

    #[test]
    fn guest_descriptors_are_translated_to_host_tags_and_devices() {
        let l = host(false, false);
        // PASID-based IOTLB, PASID-selective (G 10): type 6 | 0x20 | DID 0x42 << 16 | PASID 5
        // << 32 → the same with DID 0x107.
        assert_eq!(
            issued([0x0000_0005_0042_0026, 0, 0, 0], &l),
            Ok([0x0000_0005_0107_0026, 0, 0, 0])
        );
        // Page-selective (G 11), 2 MiB (AM 9) at 0x40_0000 with IH: the address word is kept.
        assert_eq!(
            issued([0x0000_0005_0042_0036, 0x40_0049, 0, 0], &l),
            Ok([0x0000_0005_0107_0036, 0x40_0049, 0, 0])
        );
        // IOTLB, domain-selective, guest asks for no drain: the host's DR/DW (QEMU has both,
        // bits 7 and 6) are used: 2 | 0x20 | 0xc0 | 0x107 << 16.
        assert_eq!(
            issued([0x0042_0022, 0, 0, 0], &l),
            Ok([0x0107_00e2, 0, 0, 0])
        );
        // IOTLB page-selective, one page at 0x7000.
        assert_eq!(
            issued([0x0042_0032, 0x7000, 0, 0], &l),
            Ok([0x0107_00f2, 0x7000, 0, 0])
        );
        // PASID-cache, domain-selective (G 00) and PASID-selective (G 01).
        assert_eq!(
            issued([0x0042_0007, 0, 0, 0], &l),
            Ok([0x0107_0007, 0, 0, 0])
        );
        assert_eq!(
            issued([0x0000_0009_0042_0017, 0, 0, 0], &l),
            Ok([0x0000_0009_0107_0017, 0, 0, 0])
        );
        // Device-TLB with ECAP.DT: SID 0x10 (47:32) becomes 0x18; MIP 2 (20:16) kept.
        let dt = host(true, false);
        assert_eq!(
            issued([0x0000_0010_0002_0003, 0x5000, 0, 0], &dt),
            Ok([0x0000_0018_0002_0003, 0x5000, 0, 0])
        );
        // PASID-based device-TLB: SID in 31:16, PASID 7, one page at 0x3000.
        assert_eq!(
            issued([0x0000_0007_0010_0008, 0x3000, 0, 0], &dt),
            Ok([0x0000_0007_0018_0008, 0x3000, 0, 0])
        );
        // PFSID 0x11 (bits 15:12 = 1, 63:52 = 1) → 0x19 (9 in 15:12, 1 in 63:52), with DIT.
        let dit = host(true, true);
        assert_eq!(
            issued([0x0010_0010_0000_1003, 0, 0, 0], &dit),
            Ok([0x0010_0018_0000_9003, 0, 0, 0])
        );
        // Waits are consumed, whatever their action (here SW with an address the host must
        // never write).
        assert_eq!(
            translate_guest_descriptor(&[0x1_0000_0025, 0xfee0_0000, 0, 0], &l, &Names),
            Ok(GuestAction::Consumed)
        );
        assert_eq!(
            translate_guest_descriptor(&[0x15, 0, 0, 0], &l, &Names),
            Ok(GuestAction::Consumed)
        );
    }

    #[test]
    fn guest_descriptors_outside_the_guest_are_refused_by_name() {
        let l = host(false, false);
        let dt = host(true, false);
        let refused = |raw: [u64; 4], l: &HostLimits| issued(raw, l).unwrap_err();
        assert_eq!(
            refused([0x0043_0022, 0, 0, 0], &l),
            "DID (not one of the guest's domain ids)"
        );
        assert_eq!(
            refused([0x0000_0005_0001_0026, 0, 0, 0], &l),
            "DID (not one of the guest's domain ids)"
        );
        assert_eq!(
            refused([0x0001_0007, 0, 0, 0], &l),
            "DID (not one of the guest's domain ids)"
        );
        assert_eq!(
            refused([0x12, 0, 0, 0], &l),
            "global IOTLB invalidation (host-wide)"
        );
        assert_eq!(
            refused([0x37, 0, 0, 0], &l),
            "global PASID-cache invalidation (host-wide)"
        );
        assert_eq!(
            refused([0x11, 0, 0, 0], &l),
            "context-cache invalidation (context entries are the host's)"
        );
        assert_eq!(
            refused([0x0042_0031, 0, 0, 0], &l),
            "context-cache invalidation (context entries are the host's)"
        );
        assert_eq!(
            refused([0x4, 0, 0, 0], &l),
            "interrupt-entry-cache invalidation (interrupt remapping is the host's)"
        );
        assert_eq!(
            refused([0x9, 0, 0, 0], &l),
            "descriptor type (page-request or reserved)"
        );
        // AM 19 above QEMU's MAMV 18 (a 2 GiB block at 0).
        assert_eq!(
            refused([0x0000_0005_0042_0036, 0x13, 0, 0], &l),
            "AM (above CAP.MAMV)"
        );
        assert_eq!(
            refused([0x0000_0005_0042_0036, 0x8004, 0, 0], &l),
            "ADDR (not aligned to its address mask)"
        );
        // A device that is not the guest's, with and without ECAP.DT: named as foreign first.
        assert_eq!(
            refused([0x0000_0020_0000_0003, 0x5000, 0, 0], &dt),
            "SID (not one of the guest's devices)"
        );
        assert_eq!(
            refused([0x0000_0020_0000_0003, 0x5000, 0, 0], &l),
            "SID (not one of the guest's devices)"
        );
        assert_eq!(
            refused([0x0000_0007_0020_0008, 0x3000, 0, 0], &dt),
            "SID (not one of the guest's devices)"
        );
        assert_eq!(
            refused([0x0000_0010_0000_0003, 0x5000, 0, 0], &l),
            "device-TLB invalidation (the unit has no ECAP.DT)"
        );
        assert_eq!(
            refused([0x0010_0010_0000_1003, 0, 0, 0], &dt),
            "PFSID (needs ECAP.DIT)"
        );
        assert_eq!(
            refused([0x0020_0010_0000_0003, 0, 0, 0], &host(true, true)),
            "PFSID (not one of the guest's devices)"
        );
        // Reserved: the upper half, wait PD.
        assert_eq!(refused([0x0042_0022, 0, 1, 0], &l), "bits 255:128");
        assert_eq!(
            translate_guest_descriptor(&[0x85, 0, 0, 0], &l, &Names),
            Err("wait PD (page-request drain)")
        );
    }
}
