//! Host tests of the object model's rules over a mock unit that records what the hardware was
//! told, so each test can check both the model's answer and that a refusal changed nothing.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use core::cell::{Cell, RefCell};

use super::*;
use crate::unit::{Drained, FaultRecord, UnitError};

/// What the mock hardware has for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Blocking,
    Identity,
    Paging(u32),
}

/// A page table reduced to its mappings (iova → (len, phys)), with the engine's rules: 4 KiB
/// alignment, no overlap, no cut, nothing-mapped refused.
#[derive(Debug)]
struct MockDomain {
    tag: u32,
    maps: RefCell<BTreeMap<u64, (u64, u64)>>,
}

#[derive(Debug, Default)]
struct MockUnit {
    identity: bool,
    /// Devices the unit serves; others are `UnknownDevice`.
    serves: alloc::vec::Vec<u32>,
    attached: RefCell<BTreeMap<DeviceId, Seen>>,
    next_tag: Cell<u32>,
    /// Bytes removed by `unmap`, over all domains.
    unmapped: Cell<u64>,
    /// The next call to the unit fails with this.
    fail_next: Cell<Option<UnitError>>,
}

impl MockUnit {
    fn new(identity: bool, serves: &[u32]) -> Self {
        Self {
            identity,
            serves: serves.to_vec(),
            ..Self::default()
        }
    }

    fn injected(&self) -> core::result::Result<(), UnitError> {
        self.fail_next.take().map_or(Ok(()), Err)
    }
}

impl TranslationUnit for MockUnit {
    type Domain = MockDomain;

    type VIommu = core::convert::Infallible;
    type GuestCommand = [u64; 2];

    fn info(&self) -> crate::unit::HardwareInfo {
        unimplemented!("mock")
    }

    fn new_shared_domain(
        &self,
        _cpu: &crate::unit::CpuTable,
    ) -> core::result::Result<Self::Domain, UnitError> {
        Err(UnitError::Unsupported("shared"))
    }

    fn destroy_domain(
        &self,
        domain: Self::Domain,
    ) -> core::result::Result<(), (Self::Domain, UnitError)> {
        drop(domain);
        Ok(())
    }

    fn attach_pasid(
        &self,
        _d: DeviceId,
        _p: u32,
        _to: Attachment<'_, Self::Domain>,
    ) -> core::result::Result<(), UnitError> {
        Err(UnitError::Unsupported("pasid"))
    }

    fn flush(&self, _d: &Self::Domain, _i: Iova, _l: u64) -> core::result::Result<(), UnitError> {
        Ok(())
    }

    fn new_viommu(&self, _parent: &Self::Domain) -> core::result::Result<Self::VIommu, UnitError> {
        Err(UnitError::Unsupported("viommu"))
    }

    fn destroy_viommu(
        &self,
        v: Self::VIommu,
    ) -> core::result::Result<(), (Self::VIommu, UnitError)> {
        match v {}
    }

    fn new_nested(
        &self,
        v: &Self::VIommu,
        _g: &crate::unit::GuestEntry,
    ) -> core::result::Result<Self::Domain, UnitError> {
        match *v {}
    }

    fn forward_invalidations(
        &self,
        v: &Self::VIommu,
        _d: &dyn Fn(u32) -> Option<DeviceId>,
        _c: &[Self::GuestCommand],
    ) -> crate::unit::Forwarded {
        match *v {}
    }

    fn new_domain(
        &self,
        _stage: Stage,
        _ia_bits: u32,
    ) -> core::result::Result<MockDomain, UnitError> {
        self.injected()?;
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        Ok(MockDomain {
            tag,
            maps: RefCell::new(BTreeMap::new()),
        })
    }

    fn attach(
        &self,
        device: DeviceId,
        to: Attachment<'_, MockDomain>,
    ) -> core::result::Result<(), UnitError> {
        self.injected()?;
        if !self.serves.contains(&device.0) {
            return Err(UnitError::UnknownDevice(device));
        }
        let seen = match to {
            Attachment::Blocking => Seen::Blocking,
            Attachment::Identity if !self.identity => {
                return Err(UnitError::Unsupported("identity"))
            }
            Attachment::Identity => Seen::Identity,
            Attachment::Paging(d) => Seen::Paging(d.tag),
        };
        self.attached.borrow_mut().insert(device, seen);
        Ok(())
    }

    fn map(
        &self,
        domain: &MockDomain,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        _prot: Prot,
    ) -> core::result::Result<(), UnitError> {
        use crate::pagetable::Error as Pt;
        self.injected()?;
        if !iova.is_aligned(4096) || !len.is_multiple_of(4096) {
            return Err(Pt::UnalignedIova.into());
        }
        let mut maps = domain.maps.borrow_mut();
        let (a, b) = (iova.as_u64(), iova.as_u64() + len);
        if maps.iter().any(|(s, (l, _))| *s < b && a < s + l) {
            return Err(Pt::AlreadyMapped.into());
        }
        maps.insert(a, (len, phys.as_u64()));
        Ok(())
    }

    fn unmap(
        &self,
        domain: &MockDomain,
        iova: Iova,
        len: u64,
    ) -> core::result::Result<u64, UnitError> {
        use crate::pagetable::Error as Pt;
        self.injected()?;
        let mut maps = domain.maps.borrow_mut();
        let (a, b) = (iova.as_u64(), iova.as_u64() + len);
        let hit: alloc::vec::Vec<(u64, u64)> = maps
            .iter()
            .filter(|(s, (l, _))| **s < b && a < **s + l)
            .map(|(s, (l, _))| (*s, *l))
            .collect();
        if hit.is_empty() {
            return Err(Pt::NothingMapped.into());
        }
        if hit.iter().any(|(s, l)| *s < a || s + l > b) {
            return Err(Pt::SplitsSuperpage.into());
        }
        for (s, _) in &hit {
            maps.remove(s);
        }
        let n: u64 = hit.iter().map(|(_, l)| l).sum();
        self.unmapped.set(self.unmapped.get() + n);
        Ok(n)
    }

    fn drain_faults(
        &self,
        _sink: &mut dyn FnMut(FaultRecord),
    ) -> core::result::Result<Drained, UnitError> {
        Ok(Drained::default())
    }
}

const A: OwnerId = OwnerId(1);
const B: OwnerId = OwnerId(2);
const MIB: u64 = 1 << 20;

fn ok<T, E: core::fmt::Debug>(r: core::result::Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

/// A snapshot of everything observable, model and mock hardware, to prove a refusal changed
/// nothing.
fn snapshot(io: &Iommu<MockUnit>) -> String {
    let mut s = String::new();
    for (i, d) in io.devices.iter().enumerate() {
        s += &format!("dev{i}:{d:?};");
    }
    for (id, d) in &io.domains {
        s += &format!(
            "{id:?}:{:?}/{:?}/{}/{:?};",
            d.unit,
            d.owner,
            d.users,
            d.hw.maps.borrow()
        );
        s += &format!("{:?};", d.space.mappings().collect::<alloc::vec::Vec<_>>());
    }
    for u in &io.units {
        s += &format!("{:?};", u.attached.borrow());
    }
    s
}

/// Checks that `f` fails with `want` and leaves everything as it was.
fn refused<T: core::fmt::Debug>(
    io: &mut Iommu<MockUnit>,
    want: Error,
    f: impl FnOnce(&mut Iommu<MockUnit>) -> Result<T>,
) {
    let before = snapshot(io);
    let got = f(io);
    assert_eq!(got.as_ref().err(), Some(&want), "got {got:?}");
    assert_eq!(snapshot(io), before, "refused call {want:?} changed state");
}

fn window() -> [Region; 2] {
    [
        Region {
            start: 0,
            last: 0xffff_ffff,
        },
        Region {
            start: 1 << 40,
            last: (1 << 40) + 0xffff_ffff,
        },
    ]
}

const MSI: Reserved = Reserved {
    region: Region {
        start: 0xfee0_0000,
        last: 0xfeef_ffff,
    },
    kind: ReservedKind::MsiDoorbell,
};

/// One unit serving devices 1..=4 (1 and 2 alias each other: group 10), with identity.
fn system() -> (Iommu<MockUnit>, UnitId, [DeviceHandle; 3]) {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(true, &[1, 2, 3, 4]));
    let d1 = ok(io.add_device(u, DeviceId(1), GroupId(10)));
    let d2 = ok(io.add_device(u, DeviceId(2), GroupId(10)));
    let d3 = ok(io.add_device(u, DeviceId(3), GroupId(11)));
    (io, u, [d1, d2, d3])
}

fn domain(io: &mut Iommu<MockUnit>, owner: OwnerId, u: UnitId) -> DomainId {
    let w = window();
    ok(io.alloc_domain(
        owner,
        u,
        Stage::Second,
        48,
        &Layout {
            windows: &w,
            reserved: &[MSI],
        },
    ))
}

fn seen(io: &Iommu<MockUnit>, u: UnitId, id: u32) -> Option<Seen> {
    ok(io.unit(u)).attached.borrow().get(&DeviceId(id)).copied()
}

#[test]
fn registration_blocks_and_checks_groups() {
    let (mut io, u, [d1, ..]) = system();
    assert_eq!(seen(&io, u, 1), Some(Seen::Blocking));
    assert_eq!(io.find_device(u, DeviceId(1)), Some(d1));
    assert_eq!(io.group_members(GroupId(10)).count(), 2);
    refused(
        &mut io,
        Error::DuplicateDevice {
            unit: u,
            id: DeviceId(1),
        },
        |io| io.add_device(u, DeviceId(1), GroupId(12)),
    );
    refused(
        &mut io,
        Error::Unit(UnitError::UnknownDevice(DeviceId(9))),
        |io| io.add_device(u, DeviceId(9), GroupId(12)),
    );
    refused(&mut io, Error::UnknownUnit(UnitId(5)), |io| {
        io.add_device(UnitId(5), DeviceId(4), GroupId(12))
    });
    let u2 = io.add_unit(MockUnit::new(false, &[4]));
    refused(&mut io, Error::GroupSpansUnits(GroupId(10)), |io| {
        io.add_device(u2, DeviceId(4), GroupId(10))
    });
    ok(io.claim(d1, A));
    refused(&mut io, Error::GroupInUse(GroupId(10)), |io| {
        io.add_device(u, DeviceId(4), GroupId(10))
    });
}

#[test]
fn ownership_is_explicit_and_one_per_group() {
    let (mut io, u, [d1, d2, d3]) = system();
    let dom = domain(&mut io, A, u);
    refused(&mut io, Error::NotOwner(d1), |io| {
        io.attach(d1, A, Target::Domain(dom))
    });
    ok(io.claim(d1, A));
    refused(
        &mut io,
        Error::AlreadyOwned {
            device: d1,
            owner: A,
        },
        |io| io.claim(d1, A),
    );
    refused(
        &mut io,
        Error::AlreadyOwned {
            device: d1,
            owner: A,
        },
        |io| io.claim(d1, B),
    );
    refused(
        &mut io,
        Error::GroupOwnedByOther {
            group: GroupId(10),
            owner: A,
        },
        |io| io.claim(d2, B),
    );
    ok(io.claim(d3, B));
    refused(&mut io, Error::NotOwner(d3), |io| io.release(d3, A));
    refused(&mut io, Error::NotDomainOwner(dom), |io| {
        io.attach(d3, B, Target::Domain(dom))
    });
    ok(io.attach(d1, A, Target::Domain(dom)));
    assert_eq!(ok(io.domain_users(A, dom)), 1);
    // Release blocks the device and drops its use of the domain.
    ok(io.release(d1, A));
    assert_eq!(seen(&io, u, 1), Some(Seen::Blocking));
    assert_eq!(ok(io.device(d1)).owner, None);
    assert_eq!(ok(io.domain_users(A, dom)), 0);
    ok(io.claim(d2, B));
}

#[test]
fn group_viability() {
    let (mut io, u, [d1, d2, _]) = system();
    let dom = domain(&mut io, A, u);
    let other = domain(&mut io, A, u);
    ok(io.claim(d1, A));
    // d2 unowned, hence blocked: fine.
    ok(io.attach(d1, A, Target::Domain(dom)));
    ok(io.claim(d2, A));
    io.allow_identity(true);
    // d2 owned by the same owner: same domain fine, another domain not.
    refused(
        &mut io,
        Error::GroupNotViable {
            group: GroupId(10),
            blocker: d1,
        },
        |io| io.attach(d2, A, Target::Domain(other)),
    );
    refused(
        &mut io,
        Error::GroupNotViable {
            group: GroupId(10),
            blocker: d1,
        },
        |io| io.attach(d2, A, Target::Identity),
    );
    ok(io.attach(d2, A, Target::Domain(dom)));
    assert_eq!(seen(&io, u, 2), Some(Seen::Paging(0)));
    // Moving the group: while d1 is on `dom`, d2 cannot go to `other`; blocked, it may.
    refused(
        &mut io,
        Error::GroupNotViable {
            group: GroupId(10),
            blocker: d2,
        },
        |io| io.attach(d1, A, Target::Domain(other)),
    );
    ok(io.attach(d2, A, Target::Blocked));
    ok(io.attach(d1, A, Target::Domain(other)));
    ok(io.attach(d2, A, Target::Domain(other)));
    assert_eq!(seen(&io, u, 1), Some(Seen::Paging(1)));
    assert_eq!(ok(io.domain_users(A, dom)), 0);
    assert_eq!(ok(io.domain_users(A, other)), 2);
}

#[test]
fn identity_passes_through_the_units_answer() {
    let (mut io, u, [_, _, d3]) = system();
    ok(io.claim(d3, A));
    assert!(!io.status().is_insecure());
    assert_eq!(
        InsecureNoIommu::enable_for(&io).err(),
        Some(Error::IommuPresent { units: 1 })
    );
    // Policy first: identity is forbidden until the embedder allows it.
    refused(&mut io, Error::IdentityForbidden, |io| {
        io.attach(d3, A, Target::Identity)
    });
    io.allow_identity(true);
    ok(io.attach(d3, A, Target::Identity));
    assert_eq!(seen(&io, u, 3), Some(Seen::Identity));
    // Identity reaches all memory: the status says so.
    assert_eq!(
        io.status().protection,
        Protection::Enforced {
            identity_devices: 1
        }
    );
    assert!(io.status().is_insecure());
    let u2 = io.add_unit(MockUnit::new(false, &[7]));
    let d7 = ok(io.add_device(u2, DeviceId(7), GroupId(20)));
    ok(io.claim(d7, A));
    refused(
        &mut io,
        Error::Unit(UnitError::Unsupported("identity")),
        |io| io.attach(d7, A, Target::Identity),
    );
    // A domain of the first unit cannot serve a device of the second.
    let dom = domain(&mut io, A, u);
    refused(
        &mut io,
        Error::WrongUnit {
            domain: dom,
            device: d7,
        },
        |io| io.attach(d7, A, Target::Domain(dom)),
    );
}

#[test]
fn unit_failure_changes_nothing() {
    let (mut io, u, [d1, ..]) = system();
    let dom = domain(&mut io, A, u);
    ok(io.claim(d1, A));
    ok(io.map(
        A,
        dom,
        Iova::new(0x1000),
        PhysAddr::new(0x8000),
        0x1000,
        Prot::READ_WRITE,
    ));
    let t = UnitError::Hardware("injected");
    ok(io.unit(u)).fail_next.set(Some(t));
    refused(&mut io, Error::Unit(t), |io| {
        io.attach(d1, A, Target::Domain(dom))
    });
    ok(io.unit(u)).fail_next.set(Some(t));
    refused(&mut io, Error::Unit(t), |io| {
        io.map(
            A,
            dom,
            Iova::new(0x4000),
            PhysAddr::new(0),
            0x1000,
            Prot::READ,
        )
    });
    ok(io.unit(u)).fail_next.set(Some(t));
    refused(&mut io, Error::Unit(t), |io| {
        io.unmap(A, dom, Iova::new(0), 0x10000)
    });
    ok(io.unit(u)).fail_next.set(Some(t));
    refused(&mut io, Error::Unit(t), |io| io.unmap_all(A, dom));
    ok(io.unit(u)).fail_next.set(Some(t));
    refused(&mut io, Error::Unit(t), |io| io.destroy_domain(A, dom));
    ok(io.unit(u)).fail_next.set(Some(t));
    let w = window();
    refused(&mut io, Error::Unit(t), |io| {
        io.alloc_domain(
            A,
            u,
            Stage::First,
            48,
            &Layout {
                windows: &w,
                reserved: &[],
            },
        )
    });
    // The unit's page-table refusal passes through too.
    refused(
        &mut io,
        Error::Unit(UnitError::PageTable(crate::pagetable::Error::UnalignedIova)),
        |io| {
            io.map(
                A,
                dom,
                Iova::new(0x4800),
                PhysAddr::new(0),
                0x1000,
                Prot::READ,
            )
        },
    );
}

#[test]
fn map_rules() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    let rw = Prot::READ_WRITE;
    ok(io.map(A, dom, Iova::new(0x10_0000), PhysAddr::new(0), 0x4000, rw));
    refused(&mut io, Error::AlreadyMapped, |io| {
        io.map(A, dom, Iova::new(0x10_3000), PhysAddr::new(0), 0x2000, rw)
    });
    refused(&mut io, Error::AlreadyMapped, |io| {
        io.map(A, dom, Iova::new(0xf_f000), PhysAddr::new(0), 0x2000, rw)
    });
    refused(
        &mut io,
        Error::ReservedRegion(ReservedKind::MsiDoorbell),
        |io| io.map(A, dom, Iova::new(0xfee0_0000), PhysAddr::new(0), 0x1000, rw),
    );
    // Between the windows, and straddling the end of the low one.
    refused(&mut io, Error::OutsideAperture, |io| {
        io.map(A, dom, Iova::new(1 << 36), PhysAddr::new(0), 0x1000, rw)
    });
    refused(&mut io, Error::OutsideAperture, |io| {
        io.map(A, dom, Iova::new(0xffff_f000), PhysAddr::new(0), 0x2000, rw)
    });
    refused(&mut io, Error::ZeroLength, |io| {
        io.map(A, dom, Iova::new(0), PhysAddr::new(0), 0, rw)
    });
    refused(&mut io, Error::WrapAround, |io| {
        io.map(A, dom, Iova::new(u64::MAX), PhysAddr::new(0), 2, rw)
    });
    refused(&mut io, Error::NotDomainOwner(dom), |io| {
        io.map(B, dom, Iova::new(0), PhysAddr::new(0), 0x1000, rw)
    });
    refused(&mut io, Error::UnknownDomain(DomainId(99)), |io| {
        io.map(A, DomainId(99), Iova::new(0), PhysAddr::new(0), 0x1000, rw)
    });
    ok(io.map(A, dom, Iova::new(1 << 40), PhysAddr::new(0), MIB, rw));
    assert_eq!(ok(io.iova_space(A, dom)).mappings().count(), 2);
}

#[test]
fn unmap_rules() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    let rw = Prot::READ_WRITE;
    assert_eq!(io.unmap_all(A, dom), Ok(0));
    refused(&mut io, Error::NothingMapped, |io| {
        io.unmap(A, dom, Iova::new(0), MIB)
    });
    ok(io.map(A, dom, Iova::new(0x1000), PhysAddr::new(0), 0x2000, rw));
    ok(io.map(A, dom, Iova::new(0x8000), PhysAddr::new(0), 0x1000, rw));
    ok(io.map(A, dom, Iova::new(0x20000), PhysAddr::new(0), 0x4000, rw));
    refused(&mut io, Error::WouldCut, |io| {
        io.unmap(A, dom, Iova::new(0x2000), 0x1000)
    });
    refused(&mut io, Error::WouldCut, |io| {
        io.unmap(A, dom, Iova::new(0), 0x21000)
    });
    refused(&mut io, Error::NothingMapped, |io| {
        io.unmap(A, dom, Iova::new(0x3000), 0x5000)
    });
    refused(&mut io, Error::ZeroLength, |io| {
        io.unmap(A, dom, Iova::new(0x1000), 0)
    });
    refused(&mut io, Error::NotDomainOwner(dom), |io| {
        io.unmap_all(B, dom)
    });
    // Two whole mappings and the holes around them: the total of both.
    assert_eq!(io.unmap(A, dom, Iova::new(0), 0x10000), Ok(0x3000));
    assert_eq!(
        io.domains[&dom]
            .hw
            .maps
            .borrow()
            .keys()
            .copied()
            .collect::<alloc::vec::Vec<_>>(),
        [0x20000]
    );
    assert_eq!(io.unmap_all(A, dom), Ok(0x4000));
    assert!(ok(io.iova_space(A, dom)).is_empty());
    assert!(io.domains[&dom].hw.maps.borrow().is_empty());
    assert_eq!(io.unmap_all(A, dom), Ok(0));
}

#[test]
fn automatic_iova_avoids_reserved_and_mappings() {
    let (mut io, u, _) = system();
    let w = [Region {
        start: 0xfe00_0000,
        last: 0xfeff_ffff,
    }];
    let dom = ok(io.alloc_domain(
        A,
        u,
        Stage::Second,
        32,
        &Layout {
            windows: &w,
            reserved: &[MSI],
        },
    ));
    let rw = Prot::READ_WRITE;
    let a = ok(io.map_anywhere(A, dom, PhysAddr::new(0), 0x3000, rw));
    assert_eq!(a, Iova::new(0xfe00_0000));
    let b = ok(io.map_anywhere(A, dom, PhysAddr::new(0), 0x1000, rw));
    // Aligned to 4 KiB only: right after `a`.
    assert_eq!(b, Iova::new(0xfe00_3000));
    // 8 MiB, aligned to 8 MiB: 0xfe00_0000 is taken, 0xfe80_0000 would hold the doorbell.
    refused(&mut io, Error::NoSpace, |io| {
        io.map_anywhere(A, dom, PhysAddr::new(0), 8 * MIB, rw)
    });
    let c = ok(io.map_anywhere(A, dom, PhysAddr::new(0), MIB, rw));
    assert_eq!(c, Iova::new(0xfe10_0000));
    let d = ok(io.map_anywhere(A, dom, PhysAddr::new(0), 4 * MIB, rw));
    assert_eq!(d, Iova::new(0xfe40_0000));
    let e = ok(io.map_anywhere(A, dom, PhysAddr::new(0), 4 * MIB, rw));
    assert_eq!(e, Iova::new(0xfe80_0000));
    // The last 4 MiB of the window holds the doorbell.
    refused(&mut io, Error::NoSpace, |io| {
        io.map_anywhere(A, dom, PhysAddr::new(0), 4 * MIB, rw)
    });
    for m in ok(io.iova_space(A, dom)).mappings() {
        assert!(!m.iova.overlaps(MSI.region));
    }
}

#[test]
fn attached_domain_is_busy() {
    let (mut io, u, [d1, ..]) = system();
    let dom = domain(&mut io, A, u);
    ok(io.claim(d1, A));
    ok(io.attach(d1, A, Target::Domain(dom)));
    ok(io.map(
        A,
        dom,
        Iova::new(0x1000),
        PhysAddr::new(0),
        0x1000,
        Prot::READ,
    ));
    refused(
        &mut io,
        Error::Busy {
            domain: dom,
            users: 1,
        },
        |io| io.destroy_domain(A, dom),
    );
    refused(&mut io, Error::NotDomainOwner(dom), |io| {
        io.destroy_domain(B, dom)
    });
    ok(io.attach(d1, A, Target::Blocked));
    ok(io.destroy_domain(A, dom));
    // Destruction emptied the table through the unit first.
    assert_eq!(ok(io.unit(u)).unmapped.get(), 0x1000);
    refused(&mut io, Error::UnknownDomain(dom), |io| {
        io.destroy_domain(A, dom)
    });
    refused(&mut io, Error::UnknownDomain(dom), |io| {
        io.attach(d1, A, Target::Domain(dom))
    });
    // Ids are not reused.
    assert_ne!(domain(&mut io, A, u), dom);
}

#[test]
fn bad_layout_and_nesting_are_refused() {
    let (mut io, u, _) = system();
    refused(&mut io, Error::BadLayout("no usable window"), |io| {
        io.alloc_domain(
            A,
            u,
            Stage::Second,
            48,
            &Layout {
                windows: &[],
                reserved: &[],
            },
        )
    });
    let w = [Region {
        start: 0,
        last: (1 << 40) - 1,
    }];
    refused(
        &mut io,
        Error::BadLayout("window beyond the input address size"),
        |io| {
            io.alloc_domain(
                A,
                u,
                Stage::Second,
                39,
                &Layout {
                    windows: &w,
                    reserved: &[],
                },
            )
        },
    );
    let dom = domain(&mut io, A, u);
    refused(&mut io, Error::Unsupported("nesting: not yet"), |io| {
        io.alloc_nested_domain(A, dom)
    });
}
