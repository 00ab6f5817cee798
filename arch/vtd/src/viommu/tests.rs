//! Host tests of the vIOMMU's bookkeeping (guest domain ids, nest parents) and of nesting and forwarding on a simulated unit.

use super::*;
use crate::pasid::{FirstStagePaging, Pgtt};
use iommu::unit::HardwareError;

fn did(d: u16) -> Did {
    Did::new(d)
}

#[test]
fn guest_domain_ids_are_bound_counted_and_released() {
    let mut b = Bindings::new();
    assert_eq!(b.host(did(7)), None);
    b.bind(did(7), did(0x100)).unwrap();
    b.bind(did(7), did(0x100)).unwrap();
    b.bind(did(8), did(0x100)).unwrap();
    assert_eq!(b.host(did(7)), Some(did(0x100)));
    assert_eq!(b.nested_domains(), 3);
    assert_eq!(
        (b.users(did(7)), b.users(did(8)), b.users(did(9))),
        (2, 1, 0)
    );
    // One guest tag cannot stand for two host tags; nothing changes.
    assert_eq!(
        b.bind(did(7), did(0x101)),
        Err(UnitError::GuestEntry(
            "DID (the guest uses it for another translation)"
        ))
    );
    assert_eq!(b.nested_domains(), 3);
    assert!(b.release(did(7)));
    assert_eq!(b.host(did(7)), Some(did(0x100)));
    assert!(b.release(did(7)));
    assert_eq!(b.host(did(7)), None);
    assert!(!b.release(did(7)));
    assert!(b.release(did(8)));
    assert_eq!(b.nested_domains(), 0);
    // Full: every slot used by a distinct guest id.
    for g in 0..GUEST_DOMAINS as u16 {
        b.bind(did(g), did(1)).unwrap();
    }
    assert_eq!(b.bind(did(0xffff), did(1)), Err(UnitError::OutOfIds));
    assert!(b.release(did(3)));
    assert_eq!(b.bind(did(0xffff), did(1)), Ok(()));
}

#[test]
fn nest_parents_are_pinned_per_viommu() {
    let p = NestParents::new();
    assert!(!p.is_pinned(did(5)));
    p.pin(did(5)).unwrap();
    p.pin(did(5)).unwrap();
    p.unpin(did(5));
    assert!(p.is_pinned(did(5)));
    p.unpin(did(5));
    assert!(!p.is_pinned(did(5)));
    for d in 0..NEST_PARENTS as u16 {
        p.pin(did(d + 10)).unwrap();
    }
    assert_eq!(p.pin(did(99)), Err(UnitError::OutOfIds));
    assert!(p.is_pinned(did(10)) && !p.is_pinned(did(99)));
}

#[test]
fn nested_ids_are_listed_per_parent_until_removed() {
    let p = NestParents::new();
    p.add_nested(did(5), did(0x20)).unwrap();
    p.add_nested(did(6), did(0x21)).unwrap();
    p.add_nested(did(5), did(0x22)).unwrap();
    let (ids, len) = p.nested_of(did(5));
    assert_eq!(ids[..len], [did(0x20), did(0x22)]);
    p.remove_nested(did(0x20));
    let (ids, len) = p.nested_of(did(5));
    assert_eq!(ids[..len], [did(0x22)]);
    assert_eq!(p.nested_of(did(7)).1, 0);
    for n in 0..NESTED_IDS as u16 - 2 {
        p.add_nested(did(9), did(0x100 + n)).unwrap();
    }
    assert_eq!(p.add_nested(did(9), did(0x999)), Err(UnitError::OutOfIds));
    assert_eq!(p.nested_of(did(9)).1, NESTED_IDS - 2);
}

#[test]
fn a_guest_first_stage_nests_over_the_parent() {
    // CAP: ND 6, SAGAW 3+4 levels, MGAW 48. ECAP: NEST(26), SRS(31), EAFS(34), SMTS(43),
    // SLTS(46), FLTS(47).
    let cap = Capability(6 | 0b0110 << 8 | 47 << 16);
    let ecap = ExtendedCapability(1 << 26 | 1 << 31 | 1 << 34 | 1 << 43 | 1 << 46 | 1 << 47);
    let guest = GuestFirstStage {
        guest_domain: did(0x42),
        root: PhysAddr::new(0x1234_5000),
        paging: FirstStagePaging::FourLevel,
        supervisor_requests: true,
        write_protect: true,
        extended_accessed: true,
        memory_type: None,
    };
    let parent = Parent {
        root: PhysAddr::new(0xb000),
        domain: did(2),
        agaw: Agaw::Level3,
        ia_bits: 39,
    };
    // w0: P | AW 1 << 2 (3-level parent) | PGTT 011 << 6 | SSPTPTR 0xb000 = 0xb0c5;
    // w1: host DID 0x107; w2: FSPTPTR | EAFE (0x80) | WPE (0x10) | SRE (1).
    let e = nested_entry(&guest, &parent, did(0x107), cap, ecap).unwrap();
    assert_eq!(e.encode()[..3], [0xb0c5, 0x107, 0x1234_5091]);
    assert_eq!(e.fields().pgtt, Ok(Pgtt::Nested));
    // QEMU's ECAP (no NEST): refused by the builder too.
    assert_eq!(
        nested_entry(
            &guest,
            &parent,
            did(0x107),
            cap,
            ExtendedCapability(1 << 43 | 1 << 46)
        ),
        Err(EntryError::Unsupported {
            feature: "ECAP.NEST"
        })
    );
}

/// Guest domain id 0x42 is host 0x107; guest device 0x10 is host 0x18.
struct Names;

impl GuestNames for Names {
    fn host_domain(&self, guest: Did) -> Option<Did> {
        (guest.raw() == 0x42).then_some(did(0x107))
    }

    fn device(&self, guest: SourceId) -> Option<SourceId> {
        (guest.raw() == 0x10).then_some(SourceId::from_raw(0x18))
    }

    fn ats_enabled(&self, host: SourceId) -> bool {
        host.raw() == 0x18
    }
}

/// PASID-based IOTLB, PASID-selective, for guest domain id 0x42 and PASID `p`.
fn piotlb(p: u64) -> [u64; 4] {
    [0x6 | 2 << 4 | 0x42 << 16 | p << 32, 0, 0, 0]
}

const WAIT: [u64; 4] = [0x25, 0x1000, 0, 0];
const FOREIGN: [u64; 4] = [0x3 | 0x20 << 32, 0, 0, 0];

fn run(
    cmds: &[[u64; 4]],
    fail_batch: Option<usize>,
) -> (Forwarded, std::vec::Vec<std::vec::Vec<Descriptor>>) {
    let limits = HostLimits::for_unit(
        Capability(0x00d2_008c_222f_0606),
        ExtendedCapability(0x4800_80f0_0f4a),
    );
    let mut batches = std::vec::Vec::new();
    let f = forward(cmds, &limits, &Names, &mut |b| {
        batches.push(b.to_vec());
        if Some(batches.len() - 1) == fail_batch {
            Err(UnitError::Hardware(HardwareError::CommandRejected))
        } else {
            Ok(())
        }
    });
    (f, batches)
}

#[test]
fn forwarding_batches_translates_and_stops_at_the_first_refusal() {
    // Nothing to do: no batch at all.
    let (f, batches) = run(&[], None);
    assert_eq!(
        (f, batches.len()),
        (
            Forwarded {
                done: 0,
                refused: None
            },
            0
        )
    );
    // Waits only: consumed, nothing issued.
    assert_eq!(run(&[WAIT, WAIT], None).1.len(), 0);
    // 40 descriptors and a wait: batches of 32 and 8, host domain id in each.
    let mut cmds: std::vec::Vec<_> = (0..40).map(piotlb).collect();
    cmds.push(WAIT);
    let (f, batches) = run(&cmds, None);
    assert_eq!(
        f,
        Forwarded {
            done: 41,
            refused: None
        }
    );
    assert_eq!(
        batches
            .iter()
            .map(|b| b.len())
            .collect::<std::vec::Vec<_>>(),
        [32, 8]
    );
    assert_eq!(batches[1][7].encode().unwrap()[0], 0x0000_0027_0107_0026);
    // A foreign device at index 35: the 35 before are issued (32 + 3), it and the rest not.
    cmds[35] = FOREIGN;
    let (f, batches) = run(&cmds, None);
    assert_eq!(
        f,
        Forwarded {
            done: 35,
            refused: Some(UnitError::GuestCommand(
                "SID (not one of the guest's devices)"
            ))
        }
    );
    assert_eq!(
        batches
            .iter()
            .map(|b| b.len())
            .collect::<std::vec::Vec<_>>(),
        [32, 3]
    );
    // The hardware fails the second batch: only the first 32 count as done.
    let (f, _) = run(&cmds, Some(1));
    assert_eq!(
        f,
        Forwarded {
            done: 32,
            refused: Some(UnitError::Hardware(HardwareError::CommandRejected))
        }
    );
    // ... or the first: none.
    let (f, batches) = run(&cmds, Some(0));
    assert_eq!((f.done, batches.len()), (0, 1));
    // A refusal first: nothing issued.
    let (f, batches) = run(&[FOREIGN, piotlb(0)], None);
    assert_eq!((f.done, batches.len()), (0, 0));
}
