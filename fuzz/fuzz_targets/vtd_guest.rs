//! What a VT-d vIOMMU takes from its guest: the scalable-mode PASID entry of a nested domain
//! (`validate_guest_pasid_entry`) and the guest's invalidation descriptors
//! (`translate_guest_descriptor`, what `VtdUnit::forward_invalidations` issues, and
//! `guest_flush`, what a shadowing vIOMMU follows). Whatever the guest writes, an issued
//! descriptor names only the guest's domains (as the host's ids) and the guest's devices, is
//! never host-wide, and encodes; an accepted entry's first-stage root is guest memory.
//!
//! Input: 16 bytes XORed into QEMU 10's CAP and ECAP, 1 byte of guest address width, a
//! 64-byte PASID entry, then 32-byte descriptors.
#![no_main]

use iommu::unit::GuestFlush;
use iommu_vtd::descriptor::{Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope};
use iommu_vtd::guest::{
    guest_flush, translate_guest_descriptor, validate_guest_pasid_entry, GuestAction, GuestConfig,
    GuestNames, HostLimits, NestLimits,
};
use iommu_vtd::root_table::SourceId;
use iommu_vtd::{Capability, Did, ExtendedCapability};
use libfuzzer_sys::fuzz_target;

/// QEMU 10.0's CAP and scalable-mode ECAP (as in the guest module's tests).
const CAP: u64 = 0x00d2_008c_222f_0606;
const ECAP: u64 = 0x4800_80f0_0f4a;

/// Guest domain ids 1..=4 are the guest's, at host ids HOST_DID_BASE + guest.
const HOST_DID_BASE: u16 = 0x200;
/// Guest source ids 0..8 (00:00.0-00:00.7) are the guest's, at host bus 0x30.
const HOST_BUS: u16 = 0x30;

struct Names;

impl GuestNames for Names {
    fn host_domain(&self, guest: Did) -> Option<Did> {
        (1..=4)
            .contains(&guest.raw())
            .then(|| Did::new(HOST_DID_BASE + guest.raw()))
    }
    fn device(&self, guest: SourceId) -> Option<SourceId> {
        (guest.raw() < 8).then(|| SourceId::from_raw(HOST_BUS << 8 | guest.raw()))
    }
    /// Even functions have ATS on.
    fn ats_enabled(&self, host: SourceId) -> bool {
        host.raw() & 1 == 0
    }
}

fn host_domain(d: Did) {
    assert!(
        (HOST_DID_BASE + 1..=HOST_DID_BASE + 4).contains(&d.raw()),
        "{d:?} is not one of the guest's domains"
    );
}

fn host_device(s: SourceId) {
    assert_eq!(
        s.raw() >> 8,
        HOST_BUS,
        "{s:?} is not one of the guest's devices"
    );
}

fn words<const N: usize>(b: &[u8]) -> [u64; N] {
    let mut w = [0u64; N];
    for (w, c) in w.iter_mut().zip(b.chunks(8)) {
        let mut le = [0u8; 8];
        le[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(le);
    }
    w
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<17>() else {
        return;
    };
    let [c, e]: [u64; 2] = words(&head[..16]);
    let (cap, ecap) = (Capability(CAP ^ c), ExtendedCapability(ECAP ^ e));
    let guest_address_bits = u32::from(head[16] % 65);
    let (entry, descriptors) = rest.split_at(rest.len().min(64));

    let limits = NestLimits {
        cap,
        ecap,
        guest_address_bits,
    };
    if let Ok(GuestConfig::FirstStage(fs)) = validate_guest_pasid_entry(&words(entry), &limits) {
        if guest_address_bits < 64 {
            assert_eq!(
                fs.root.as_u64() >> guest_address_bits,
                0,
                "root beyond guest memory"
            );
        }
    }

    let host = HostLimits::for_unit(cap, ecap);
    for d in descriptors.chunks(32) {
        let raw: [u64; 4] = words(d);
        if let Ok(GuestFlush::Range { len, .. }) = guest_flush(&raw) {
            assert!(len >= 4096 && len.is_power_of_two());
        }
        let Ok(GuestAction::Issue(issued)) = translate_guest_descriptor(&raw, &host, &Names) else {
            continue;
        };
        match issued {
            Descriptor::Iotlb { scope, .. } => match scope {
                IotlbScope::Global => panic!("a guest's global IOTLB invalidation issued"),
                IotlbScope::Domain(d) | IotlbScope::Pages { domain: d, .. } => host_domain(d),
            },
            Descriptor::PasidIotlb(
                PasidIotlbScope::Pasid { domain, .. } | PasidIotlbScope::Pages { domain, .. },
            ) => host_domain(domain),
            Descriptor::PasidCache(scope) => match scope {
                PasidCacheScope::Global => panic!("a guest's global PASID-cache invalidation"),
                PasidCacheScope::Domain(d) | PasidCacheScope::Pasid { domain: d, .. } => {
                    host_domain(d)
                }
            },
            Descriptor::DeviceTlb { target, .. } | Descriptor::PasidDeviceTlb { target, .. } => {
                host_device(target.source);
                assert!(
                    Names.ats_enabled(target.source),
                    "device-TLB invalidation of {:?}, which has no ATS on",
                    target.source
                );
                if let Some(pf) = target.physical_function {
                    host_device(pf);
                }
            }
            other => panic!("{other:?} issued for a guest"),
        }
        assert!(issued.encode().is_ok(), "{issued:?} does not encode");
    }
});
