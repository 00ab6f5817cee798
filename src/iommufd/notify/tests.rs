//! Notifiers over the mock unit: what each subject hears, exactly and only after it happened;
//! replay of the current state; attach, detach, faults and guest invalidations; refusals.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::iommufd::tests::MockUnit;
use crate::iommufd::{GroupId, Layout, Region};
use crate::unit::{DeviceId, FaultKind, FaultRecord, Stage};

const A: OwnerId = OwnerId(1);
const B: OwnerId = OwnerId(2);
/// The embedder itself (the VMM), which subscribes to units.
const VMM: OwnerId = OwnerId(9);
const PAGE: u64 = 0x1000;

/// Every event it is given, in order.
#[derive(Default)]
pub(crate) struct Recorder(spin::Mutex<Vec<Event>>);

impl Notifier for Recorder {
    fn event(&self, _seq: u64, event: &Event) {
        self.0.lock().push(*event);
    }
}

impl Recorder {
    /// The events so far (and forgets them).
    pub(crate) fn take(&self) -> Vec<Event> {
        core::mem::take(&mut *self.0.lock())
    }
}

fn recorder() -> Arc<Recorder> {
    Arc::new(Recorder::default())
}

/// A unit serving ids 1..=4, each device a group of its own; 1 and 2 owned by A, 3 by B, 4
/// unowned.
fn system() -> (Iommu<MockUnit>, UnitId, [DeviceHandle; 4]) {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(true, &[1, 2, 3, 4]));
    io.allow_unsafe_interrupts(true);
    let d = [1, 2, 3, 4].map(|id| io.add_device(u, DeviceId(id), GroupId(id)).unwrap());
    io.claim(d[0], A).unwrap();
    io.claim(d[1], A).unwrap();
    io.claim(d[2], B).unwrap();
    (io, u, d)
}

const WINDOW: [Region; 1] = [Region {
    start: 0,
    last: 0xffff_ffff,
}];

fn domain(io: &mut Iommu<MockUnit>, owner: OwnerId, u: UnitId) -> DomainId {
    let layout = Layout {
        windows: &WINDOW,
        reserved: &[],
    };
    io.alloc_domain(owner, u, Stage::Second, 48, &layout)
        .unwrap()
}

fn map(io: &Iommu<MockUnit>, owner: OwnerId, dom: DomainId, iova: u64, len: u64) -> Result<()> {
    io.map(
        owner,
        dom,
        Iova::new(iova),
        PhysAddr::new(0x8000_0000 + iova),
        len,
        Prot::READ_WRITE,
    )
}

fn mapped(domain: DomainId, iova: u64, len: u64) -> Event {
    Event::Map {
        domain,
        iova: Iova::new(iova),
        phys: PhysAddr::new(0x8000_0000 + iova),
        len,
        prot: Prot::READ_WRITE,
    }
}

fn unmapped(domain: DomainId, iova: u64, len: u64) -> Event {
    Event::Unmap {
        domain,
        iova: Iova::new(iova),
        len,
    }
}

fn attached(device: DeviceHandle, pasid: Option<u32>, target: Target) -> Event {
    Event::Attach {
        device,
        pasid,
        target,
        virtual_id: None,
    }
}

fn detached(device: DeviceHandle, pasid: Option<u32>, from: Target) -> Event {
    Event::Detach {
        device,
        pasid,
        from,
        virtual_id: None,
    }
}

#[test]
fn map_then_unmap_are_told_exactly_and_refused_calls_tell_nothing() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    let rec = recorder();
    io.subscribe(A, Subject::Domain(dom), rec.clone(), Replay::None)
        .unwrap();

    io.map(
        A,
        dom,
        Iova::new(0x1000),
        PhysAddr::new(0x7000_0000),
        2 * PAGE,
        Prot::READ,
    )
    .unwrap();
    map(&io, A, dom, 0x8000, PAGE).unwrap();
    assert_eq!(
        rec.take(),
        [
            Event::Map {
                domain: dom,
                iova: Iova::new(0x1000),
                phys: PhysAddr::new(0x7000_0000),
                len: 2 * PAGE,
                prot: Prot::READ,
            },
            mapped(dom, 0x8000, PAGE),
        ]
    );

    // Refusals: by the unit (an unaligned IOVA: the range was claimed, the unit call failed),
    // overlapping, outside the window, a cut, nothing mapped.
    assert_eq!(
        map(&io, A, dom, 0x20800, PAGE),
        Err(Error::Unit(crate::pagetable::Error::UnalignedIova.into()))
    );
    assert_eq!(map(&io, A, dom, 0x2000, PAGE), Err(Error::AlreadyMapped));
    assert_eq!(map(&io, A, dom, 1 << 33, PAGE), Err(Error::OutsideAperture));
    assert_eq!(
        io.unmap(A, dom, Iova::new(0x2000), PAGE),
        Err(Error::WouldCut)
    );
    assert_eq!(
        io.unmap(A, dom, Iova::new(0x4000), PAGE),
        Err(Error::NothingMapped)
    );
    assert_eq!(rec.take(), [], "refused calls are not announced");

    // One unmap over both mappings: their span, holes included.
    assert_eq!(io.unmap(A, dom, Iova::new(0), 0x10000), Ok(3 * PAGE));
    assert_eq!(rec.take(), [unmapped(dom, 0x1000, 0x8000)]);
    map(&io, A, dom, 0x3000, PAGE).unwrap();
    assert_eq!(io.unmap_all(A, dom), Ok(PAGE));
    assert_eq!(
        rec.take(),
        [mapped(dom, 0x3000, PAGE), unmapped(dom, 0x3000, PAGE)]
    );
}

#[test]
fn a_unit_subscriber_hears_every_domain_and_a_domain_subscriber_only_its_own() {
    let (mut io, u, d) = system();
    let dom_a = domain(&mut io, A, u);
    let dom_b = domain(&mut io, B, u);
    let (unit, only_a) = (recorder(), recorder());
    io.subscribe(VMM, Subject::Unit(u), unit.clone(), Replay::None)
        .unwrap();
    io.subscribe(A, Subject::Domain(dom_a), only_a.clone(), Replay::None)
        .unwrap();

    map(&io, A, dom_a, 0x1000, PAGE).unwrap();
    map(&io, B, dom_b, 0x2000, PAGE).unwrap();
    io.attach(d[2], B, Target::Domain(dom_b)).unwrap();
    io.unmap_all(B, dom_b).unwrap();

    assert_eq!(only_a.take(), [mapped(dom_a, 0x1000, PAGE)]);
    assert_eq!(
        unit.take(),
        [
            mapped(dom_a, 0x1000, PAGE),
            mapped(dom_b, 0x2000, PAGE),
            attached(d[2], None, Target::Domain(dom_b)),
            unmapped(dom_b, 0x2000, PAGE),
        ]
    );
}

#[test]
fn replay_tells_the_current_mappings_in_iova_order_then_the_attachments() {
    let (mut io, u, d) = system();
    let dom = domain(&mut io, A, u);
    for iova in [0x30000, 0x10000, 0x20000] {
        map(&io, A, dom, iova, PAGE).unwrap();
    }
    io.attach(d[0], A, Target::Domain(dom)).unwrap();
    io.attach_pasid(d[1], A, 3, Target::Domain(dom)).unwrap();
    let other = domain(&mut io, A, u);
    map(&io, A, other, 0x5000, PAGE).unwrap();

    let (now, later) = (recorder(), recorder());
    io.subscribe(A, Subject::Domain(dom), later.clone(), Replay::None)
        .unwrap();
    io.subscribe(A, Subject::Domain(dom), now.clone(), Replay::Current)
        .unwrap();
    assert_eq!(later.take(), [], "only the new notifier hears the replay");
    assert_eq!(
        now.take(),
        [
            mapped(dom, 0x10000, PAGE),
            mapped(dom, 0x20000, PAGE),
            mapped(dom, 0x30000, PAGE),
            attached(d[0], None, Target::Domain(dom)),
            attached(d[1], Some(3), Target::Domain(dom)),
        ]
    );

    // Later events follow, to both.
    io.unmap(A, dom, Iova::new(0x20000), PAGE).unwrap();
    assert_eq!(now.take(), [unmapped(dom, 0x20000, PAGE)]);
    assert_eq!(later.take(), [unmapped(dom, 0x20000, PAGE)]);

    // A unit's replay: every domain of it, and its devices in identity.
    io.allow_identity(true);
    io.attach(d[2], B, Target::Identity).unwrap();
    let unit = recorder();
    io.subscribe(VMM, Subject::Unit(u), unit.clone(), Replay::Current)
        .unwrap();
    assert_eq!(
        unit.take(),
        [
            mapped(dom, 0x10000, PAGE),
            mapped(dom, 0x30000, PAGE),
            mapped(other, 0x5000, PAGE),
            attached(d[0], None, Target::Domain(dom)),
            attached(d[2], None, Target::Identity),
            attached(d[1], Some(3), Target::Domain(dom)),
        ]
    );
}

#[test]
fn attach_move_pasid_and_release_are_told_as_attach_and_detach() {
    let (mut io, u, d) = system();
    let (one, two) = (domain(&mut io, A, u), domain(&mut io, A, u));
    let (unit, of_one) = (recorder(), recorder());
    io.subscribe(VMM, Subject::Unit(u), unit.clone(), Replay::None)
        .unwrap();
    io.subscribe(A, Subject::Domain(one), of_one.clone(), Replay::None)
        .unwrap();

    io.attach(d[0], A, Target::Domain(one)).unwrap();
    io.attach(d[0], A, Target::Domain(one)).unwrap(); // no change, nothing told
    io.attach(d[0], A, Target::Domain(two)).unwrap();
    io.attach_pasid(d[0], A, 5, Target::Domain(one)).unwrap();
    // Refused (identity is forbidden): nothing told.
    assert_eq!(
        io.attach(d[1], A, Target::Identity),
        Err(Error::IdentityForbidden)
    );
    io.release(d[0], A).unwrap();

    assert_eq!(
        unit.take(),
        [
            attached(d[0], None, Target::Domain(one)),
            detached(d[0], None, Target::Domain(one)),
            attached(d[0], None, Target::Domain(two)),
            attached(d[0], Some(5), Target::Domain(one)),
            detached(d[0], Some(5), Target::Domain(one)),
            detached(d[0], None, Target::Domain(two)),
        ]
    );
    assert_eq!(
        of_one.take(),
        [
            attached(d[0], None, Target::Domain(one)),
            detached(d[0], None, Target::Domain(one)),
            attached(d[0], Some(5), Target::Domain(one)),
            detached(d[0], Some(5), Target::Domain(one)),
        ]
    );
}

#[test]
fn unsubscribe_stops_delivery_and_refusals_are_typed_and_subscribe_nothing() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    let rec = recorder();
    let id = io
        .subscribe(A, Subject::Domain(dom), rec.clone(), Replay::None)
        .unwrap();
    assert_eq!(io.unsubscribe(B, id), Err(Error::UnknownNotifier(id)));
    map(&io, A, dom, 0x1000, PAGE).unwrap();
    assert_eq!(rec.take().len(), 1, "another owner cannot end it");

    io.unsubscribe(A, id).unwrap();
    map(&io, A, dom, 0x2000, PAGE).unwrap();
    assert_eq!(rec.take(), []);
    assert_eq!(io.unsubscribe(A, id), Err(Error::UnknownNotifier(id)));

    // Another owner's domain, an unknown domain or unit: refused, nothing replayed or kept.
    let intruder = recorder();
    let refused = [
        (Subject::Domain(dom), Error::NotDomainOwner(dom)),
        (
            Subject::Domain(DomainId(77)),
            Error::UnknownDomain(DomainId(77)),
        ),
        (Subject::Unit(UnitId(5)), Error::UnknownUnit(UnitId(5))),
    ];
    for (subject, want) in refused {
        let got = io.subscribe(B, subject, intruder.clone(), Replay::Current);
        assert_eq!(got, Err(want));
    }
    assert_eq!(io.notifiers.subs.len(), 0);
    map(&io, A, dom, 0x3000, PAGE).unwrap();
    assert_eq!(intruder.take(), []);

    // A destroyed domain takes its subscriptions with it.
    let id = io
        .subscribe(A, Subject::Domain(dom), rec.clone(), Replay::None)
        .unwrap();
    io.unmap_all(A, dom).unwrap();
    io.destroy_domain(A, dom).unwrap();
    assert_eq!(io.unsubscribe(A, id), Err(Error::UnknownNotifier(id)));
    assert_eq!(
        std::format!("{}", Error::UnknownNotifier(id)),
        std::format!("caller has no subscription {id:?}")
    );
}

fn fault(device: u32, pasid: Option<u32>) -> FaultRecord {
    FaultRecord {
        device: DeviceId(device),
        pasid,
        address: 0xdead_0000,
        write: true,
        kind: FaultKind::Translation,
        code: 6,
        reason: "not present",
    }
}

#[test]
fn routed_faults_reach_the_unit_and_the_domain_the_request_went_through() {
    let (mut io, u, d) = system();
    let (dom, elsewhere) = (domain(&mut io, A, u), domain(&mut io, A, u));
    io.attach(d[0], A, Target::Domain(dom)).unwrap();
    io.attach_pasid(d[1], A, 2, Target::Domain(elsewhere))
        .unwrap();
    let (unit, of_dom, of_elsewhere) = (recorder(), recorder(), recorder());
    io.subscribe(VMM, Subject::Unit(u), unit.clone(), Replay::None)
        .unwrap();
    io.subscribe(A, Subject::Domain(dom), of_dom.clone(), Replay::None)
        .unwrap();
    io.subscribe(
        A,
        Subject::Domain(elsewhere),
        of_elsewhere.clone(),
        Replay::None,
    )
    .unwrap();

    io.unit(u).unwrap().faults.borrow_mut().extend_from_slice(&[
        fault(1, None),
        fault(2, Some(2)),
        fault(4, None),
    ]);
    io.route_faults(u).unwrap();

    let told = unit.take();
    let who: Vec<Option<DeviceHandle>> = told
        .iter()
        .map(|e| match e {
            Event::Fault(f) => f.device,
            _ => None,
        })
        .collect();
    assert_eq!(who, [Some(d[0]), Some(d[1]), Some(d[3])]);
    assert!(matches!(told[0], Event::Fault(f) if f.owner == Some(A) && f.record == fault(1, None)));
    assert!(matches!(of_dom.take().as_slice(), [Event::Fault(f)] if f.device == Some(d[0])));
    assert!(
        matches!(of_elsewhere.take().as_slice(), [Event::Fault(f)] if f.device == Some(d[1])),
        "a PASID's fault goes to the PASID's domain"
    );
}

#[test]
fn faults_reach_notifiers_after_the_drain_and_what_does_not_fit_is_told_lost() {
    let (mut io, u, d) = system();
    let told = recorder();
    io.subscribe(VMM, Subject::Unit(u), told.clone(), Replay::None)
        .unwrap();
    let extra = 3;
    let n = FAULT_QUEUE + extra;
    io.unit(u)
        .unwrap()
        .faults
        .borrow_mut()
        .extend((0..n).map(|_| fault(1, None)));
    let routed = io.route_faults(u).unwrap();
    assert_eq!(routed.drained.records, n);
    let events = told.take();
    assert_eq!(events.len(), FAULT_QUEUE + 1);
    assert!(events[..FAULT_QUEUE]
        .iter()
        .all(|e| matches!(e, Event::Fault(f) if f.device == Some(d[0]))));
    assert_eq!(
        events[FAULT_QUEUE],
        Event::FaultsLost {
            count: extra as u64
        }
    );
    // Told once: the next routing starts from an empty queue and nothing lost.
    io.unit(u).unwrap().faults.borrow_mut().push(fault(1, None));
    io.route_faults(u).unwrap();
    assert!(matches!(told.take().as_slice(), [Event::Fault(_)]));
}

#[test]
fn guest_invalidations_reach_the_unit_and_the_nest_parent() {
    let (mut io, u, d) = system();
    let layout = Layout {
        windows: &WINDOW,
        reserved: &[],
    };
    let parent = io.alloc_nest_parent(A, u, 48, &layout).unwrap();
    let unrelated = domain(&mut io, A, u);
    let v = io.alloc_viommu(A, parent).unwrap();
    io.set_virtual_device(A, v, d[0], 0x30).unwrap();
    let (unit, of_parent, of_unrelated) = (recorder(), recorder(), recorder());
    io.subscribe(VMM, Subject::Unit(u), unit.clone(), Replay::None)
        .unwrap();
    io.subscribe(A, Subject::Domain(parent), of_parent.clone(), Replay::None)
        .unwrap();
    io.subscribe(
        A,
        Subject::Domain(unrelated),
        of_unrelated.clone(),
        Replay::None,
    )
    .unwrap();

    io.invalidate(A, v, &[[2, 0], [1, 0x30]]).unwrap();
    // The second command names a device that is not the guest's: refused, the rest not issued.
    io.invalidate(A, v, &[[2, 0], [1, 0x99], [2, 0]]).unwrap();
    let want = [
        Event::GuestInvalidation {
            viommu: v,
            commands: 2,
            done: 2,
            refused: false,
        },
        Event::GuestInvalidation {
            viommu: v,
            commands: 3,
            done: 1,
            refused: true,
        },
    ];
    assert_eq!(unit.take(), want);
    assert_eq!(of_parent.take(), want);
    assert_eq!(of_unrelated.take(), []);
    // A refused call (not the vIOMMU's owner) tells nothing.
    assert_eq!(
        io.invalidate(B, v, &[[2, 0]]).err(),
        Some(Error::NotViommuOwner(v))
    );
    assert_eq!(unit.take(), []);
}

/// Deferred unmaps over a real table: nothing is told until the invalidation of the flush
/// completed, then one `Flushed` over the hull.
#[cfg(all(feature = "host-hal", not(loom)))]
#[test]
fn deferred_unmaps_are_told_once_their_flush_completed() {
    use crate::pagetable::Gather;
    use crate::unit::host::TableUnit;

    let mut io = Iommu::new();
    let u = io.add_unit(TableUnit::vtd_second_stage());
    let layout = Layout {
        windows: &WINDOW,
        reserved: &[],
    };
    let dom = io.alloc_domain(A, u, Stage::Second, 48, &layout).unwrap();
    for iova in [0x1000, 0x5000, 0x9000] {
        io.map(
            A,
            dom,
            Iova::new(iova),
            PhysAddr::new(iova),
            PAGE,
            Prot::READ_WRITE,
        )
        .unwrap();
    }
    let rec = recorder();
    io.subscribe(A, Subject::Domain(dom), rec.clone(), Replay::None)
        .unwrap();
    let mut gather = Gather::new();
    io.unmap_deferred(A, dom, Iova::new(0x1000), PAGE, &mut gather)
        .unwrap();
    io.unmap_deferred(A, dom, Iova::new(0x9000), PAGE, &mut gather)
        .unwrap();
    assert_eq!(rec.take(), [], "not before the invalidation");
    io.flush_deferred(A, dom, gather).unwrap();
    assert_eq!(
        rec.take(),
        [Event::Flushed {
            domain: dom,
            iova: Iova::new(0x1000),
            len: 0x9000,
        }]
    );
}

/// Two CPUs racing to map and unmap one page: whatever wins, the numbers of what is told put
/// the page's events in the order they took effect (mapped, unmapped, mapped, ...), and no
/// number is given twice.
#[cfg(all(feature = "host-hal", not(loom)))]
#[test]
fn racing_operations_on_one_range_are_numbered_in_the_order_they_took_effect() {
    use crate::unit::host::TableUnit;

    #[derive(Default)]
    struct Numbered(std::sync::Mutex<Vec<(u64, Event)>>);
    impl Notifier for Numbered {
        fn event(&self, seq: u64, event: &Event) {
            if let Ok(mut v) = self.0.lock() {
                v.push((seq, *event));
            }
        }
    }

    let mut io = Iommu::new();
    let u = io.add_unit(TableUnit::vtd_second_stage());
    let windows = [Region::below_bits(48)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = io.alloc_domain(A, u, Stage::Second, 48, &layout).unwrap();
    let heard = Arc::new(Numbered::default());
    io.subscribe(A, Subject::Domain(dom), heard.clone(), Replay::None)
        .unwrap();
    let page = Iova::new(1 << 30);
    std::thread::scope(|s| {
        for _ in 0..2 {
            let io = &io;
            s.spawn(move || {
                for _ in 0..20_000 {
                    // Either may lose either race: only what succeeded is told.
                    let _ = io.map(A, dom, page, PhysAddr::new(1 << 30), 4096, Prot::READ);
                    let _ = io.unmap(A, dom, page, 4096);
                }
            });
        }
    });
    let mut events = heard.0.lock().unwrap().clone();
    events.sort_by_key(|(seq, _)| *seq);
    assert!(
        events.windows(2).all(|w| w[0].0 < w[1].0),
        "a number told twice"
    );
    assert!(events.len() >= 2);
    for (i, (_, e)) in events.iter().enumerate() {
        let mapped = matches!(e, Event::Map { .. });
        assert_eq!(mapped, i % 2 == 0, "event {i} out of order: {events:?}");
    }
}
