//! Fault routing over the mock unit: by owner, by alias, with virtual ids; bounded queues that
//! count what they lose; the default queue for everything without an owner's queue.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::iommufd::tests::MockUnit;
use crate::iommufd::{GroupId, Layout, Region, Reserved};
use crate::unit::{DeviceId, FaultKind};

const A: OwnerId = OwnerId(1);
const B: OwnerId = OwnerId(2);

fn fault(device: u32, address: u64) -> FaultRecord {
    FaultRecord {
        device: DeviceId(device),
        pasid: None,
        address,
        write: true,
        kind: FaultKind::Translation,
        code: 6,
        reason: "not present",
    }
}

fn inject(io: &Iommu<MockUnit>, u: UnitId, faults: &[FaultRecord]) {
    io.unit(u)
        .unwrap()
        .faults
        .borrow_mut()
        .extend_from_slice(faults);
}

fn addresses(t: &Taken) -> Vec<u64> {
    t.faults.iter().map(|f| f.record.address).collect()
}

/// A unit with: id 1 owned by A; id 2 owned by B with virtual id 7 in B's vIOMMU; id 3 nobody's;
/// id 4 owned by A and reaching the unit also as alias 9.
fn system() -> (Iommu<MockUnit>, UnitId, [DeviceHandle; 4], ViommuId) {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(false, &[1, 2, 3, 4, 9]));
    io.allow_unsafe_interrupts(true);
    let d = [1, 2, 3, 4].map(|id| io.add_device(u, DeviceId(id), GroupId(id)).unwrap());
    io.add_alias(d[3], DeviceId(9)).unwrap();
    io.claim(d[0], A).unwrap();
    io.claim(d[1], B).unwrap();
    io.claim(d[3], A).unwrap();
    let windows = [Region::below_bits(48)];
    let msi = [Reserved::X86_MSI];
    let layout = Layout {
        windows: &windows,
        reserved: &msi,
    };
    let parent = io.alloc_nest_parent(B, u, 48, &layout).unwrap();
    let v = io.alloc_viommu(B, parent).unwrap();
    io.set_virtual_device(B, v, d[1], 7).unwrap();
    (io, u, d, v)
}

#[test]
fn faults_go_to_their_owners_by_id_alias_and_virtual_id() {
    let (mut io, u, d, v) = system();
    io.subscribe_faults(A, 8);
    io.subscribe_faults(B, 8);
    io.subscribe_default_faults(8);
    inject(
        &io,
        u,
        &[
            fault(1, 0x1000),
            fault(9, 0x9000),
            fault(2, 0x2000),
            fault(3, 0x3000),
            fault(42, 0x4200),
        ],
    );
    let routed = io.route_faults(u).unwrap();
    assert_eq!(
        (routed.drained.records, routed.to_owners, routed.to_default),
        (5, 3, 2)
    );

    let a = io.take_faults(A).unwrap();
    assert_eq!(addresses(&a), [0x1000, 0x9000], "ordered as drained");
    assert_eq!(a.faults[1].device, Some(d[3]), "the alias names its device");
    assert_eq!(a.faults[1].owner, Some(A));
    assert_eq!(a.lost, 0);

    let b = io.take_faults(B).unwrap();
    assert_eq!(b.faults.len(), 1);
    assert_eq!(b.faults[0].device, Some(d[1]));
    assert_eq!(
        b.faults[0].virtual_id,
        Some((v, 7)),
        "the guest's name for it"
    );

    let rest = io.take_default_faults().unwrap();
    assert_eq!(addresses(&rest), [0x3000, 0x4200]);
    assert_eq!(
        (rest.faults[0].device, rest.faults[0].owner),
        (Some(d[2]), None)
    );
    assert_eq!(rest.faults[1].device, None, "an id no device has");
    assert_eq!(io.take_faults(A).unwrap(), Taken::default(), "taken once");
}

#[test]
fn a_full_queue_counts_what_it_loses_and_nothing_blocks() {
    let (mut io, u, _, _) = system();
    io.subscribe_faults(A, 2);
    let burst: Vec<FaultRecord> = (0..5).map(|i| fault(1, i << 12)).collect();
    inject(&io, u, &burst);
    io.route_faults(u).unwrap();
    let a = io.take_faults(A).unwrap();
    assert_eq!((addresses(&a), a.lost), (Vec::from([0, 0x1000]), 3));
    assert_eq!(io.take_faults(A).unwrap().lost, 0, "the count starts again");

    // A reader holding the queue: routing neither waits nor drops silently.
    let queue = &io.faults.owners[&A];
    let held = queue.ring.lock();
    queue.offer(RoutedFault {
        record: fault(1, 0x7000),
        device: None,
        owner: Some(A),
        virtual_id: None,
    });
    drop(held);
    assert_eq!(io.take_faults(A).unwrap().lost, 1);
}

#[test]
fn without_queues_faults_fall_back_and_takes_are_refused_by_name() {
    let (mut io, u, _, _) = system();
    assert_eq!(io.take_faults(A), Err(Error::NotSubscribed(Some(A))));
    assert_eq!(io.take_default_faults(), Err(Error::NotSubscribed(None)));
    // No queue at all: routed to the default, which logs it; counted there.
    inject(&io, u, &[fault(1, 0x1000)]);
    assert_eq!(io.route_faults(u).unwrap().to_default, 1);
    // An owner that leaves: its faults go to the default queue.
    io.subscribe_faults(A, 4);
    io.subscribe_default_faults(4);
    io.unsubscribe_faults(A);
    inject(&io, u, &[fault(1, 0x2000)]);
    io.route_faults(u).unwrap();
    assert_eq!(addresses(&io.take_default_faults().unwrap()), [0x2000]);
    assert_eq!(
        io.route_faults(UnitId(9)).err(),
        Some(Error::UnknownUnit(UnitId(9)))
    );
}
