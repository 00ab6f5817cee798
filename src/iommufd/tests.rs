//! Host tests of the object model's rules over a mock unit that records what the hardware was
//! told, so each test can check both the model's answer and that a refusal changed nothing.

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use core::cell::{Cell, RefCell};

use super::*;
use crate::irq::{InterruptRemapper, InterruptTarget, MsiMessage, RemappedInterrupt};
use crate::unit::{
    CpuTable, Drained, FaultRecord, Forwarded, GuestEntry, GuestFlush, HardwareError, HardwareInfo,
    RawRegisters, UnitError, VmTable,
};

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
pub(crate) struct MockDomain {
    tag: u32,
    kind: MockKind,
    pub(crate) maps: RefCell<BTreeMap<u64, (u64, u64)>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MockKind {
    Paging,
    /// Shares the CPU table at this root.
    Shared(u64),
    /// Built on the vIOMMU with this VMID.
    Nested {
        viommu: u32,
    },
}

/// The mock's vIOMMU: its VMID (the parent's tag + 100).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MockViommu {
    vmid: u32,
}

const MOCK_PASID_BITS: u8 = 4;

/// A unit that records what it is asked (also the DMA API's tests' unit with devices).
#[derive(Debug, Default)]
pub(crate) struct MockUnit {
    identity: bool,
    /// Devices the unit serves; others are `UnknownDevice`.
    serves: alloc::vec::Vec<u32>,
    attached: RefCell<BTreeMap<DeviceId, Seen>>,
    next_tag: Cell<u32>,
    /// Bytes removed by `unmap`, over all domains.
    unmapped: Cell<u64>,
    /// The region the last `unmap_pruning` was told it owns.
    pub(crate) owned: RefCell<Option<core::ops::Range<u64>>>,
    /// The next call to the unit fails with this.
    pub(crate) fail_next: Cell<Option<UnitError>>,
    /// The call after this many more fails with this.
    fail_later: Cell<Option<(u32, UnitError)>>,
    /// (device, PASID) attachments.
    pasids: RefCell<BTreeMap<(DeviceId, u32), Seen>>,
    /// Live vIOMMUs (by VMID) and their nested domain counts.
    viommus: RefCell<BTreeMap<u32, usize>>,
    /// Guest commands issued, translated.
    issued: RefCell<alloc::vec::Vec<[u64; 2]>>,
    /// Bytes still mapped in domains when they were destroyed.
    destroyed: Cell<u64>,
    /// Bytes flushed.
    flushed: Cell<u64>,
    /// Faults the next `drain_faults` hands out.
    pub(crate) faults: RefCell<alloc::vec::Vec<FaultRecord>>,
    /// `flush_deferred` calls (invalidations of deferred unmaps).
    pub(crate) deferred_flushes: Cell<u64>,
    /// The places every `prune_tables` call was given.
    pub(crate) pruned: RefCell<alloc::vec::Vec<alloc::vec::Vec<u64>>>,
    /// Whether the unit offers device-TLBs (`info().ats`).
    ats: bool,
    /// Devices whose translation requests it accepts, and every `set_ats` it was asked.
    ats_devices: RefCell<BTreeMap<DeviceId, crate::unit::Ats>>,
    ats_log: RefCell<alloc::vec::Vec<Option<crate::unit::Ats>>>,
}

impl MockUnit {
    pub(crate) fn new(identity: bool, serves: &[u32]) -> Self {
        Self {
            identity,
            serves: serves.to_vec(),
            ..Self::default()
        }
    }

    /// The same unit, offering device-TLBs or not.
    pub(crate) fn with_ats(self, ats: bool) -> Self {
        Self { ats, ..self }
    }

    /// What the unit accepts from `device`'s ATS now.
    pub(crate) fn ats_of(&self, device: DeviceId) -> Option<crate::unit::Ats> {
        self.ats_devices.borrow().get(&device).copied()
    }

    /// Every `set_ats` the unit was asked (and did), in order.
    pub(crate) fn ats_log(&self) -> alloc::vec::Vec<Option<crate::unit::Ats>> {
        self.ats_log.borrow().clone()
    }

    fn injected(&self) -> core::result::Result<(), UnitError> {
        if let Some((calls, e)) = self.fail_later.get() {
            if calls == 0 {
                self.fail_later.set(None);
                return Err(e);
            }
            self.fail_later.set(Some((calls - 1, e)));
        }
        self.fail_next.take().map_or(Ok(()), Err)
    }

    fn mock_domain(&self, kind: MockKind) -> MockDomain {
        let tag = self.next_tag.get();
        self.next_tag.set(tag + 1);
        MockDomain {
            tag,
            kind,
            maps: RefCell::new(BTreeMap::new()),
        }
    }
}

impl TranslationUnit for MockUnit {
    type Domain = MockDomain;

    type VIommu = MockViommu;
    type GuestCommand = [u64; 2];

    fn info(&self) -> HardwareInfo {
        HardwareInfo {
            first_stage: true,
            second_stage: true,
            nesting: true,
            identity: self.identity,
            pasid_bits: MOCK_PASID_BITS,
            first_stage_ia_bits: 48,
            second_stage_ia_bits: 48,
            output_bits: 48,
            page_sizes: 1 << 12 | 1 << 21,
            coherent_walks: true,
            ats: self.ats,
            interrupt_remapping: false,
            tags: 16,
            raw: RawRegisters::Smmuv3 {
                idr: [1, 2, 3, 4, 5, 6],
                iidr: 7,
                aidr: 8,
            },
        }
    }

    fn new_shared_domain(&self, cpu: &CpuTable) -> core::result::Result<MockDomain, UnitError> {
        self.injected()?;
        Ok(self.mock_domain(MockKind::Shared(cpu.root.as_u64())))
    }

    fn new_vm_domain(&self, vm: &VmTable) -> core::result::Result<MockDomain, UnitError> {
        self.injected()?;
        Ok(self.mock_domain(MockKind::Shared(vm.root.as_u64())))
    }

    fn destroy_domain(
        &self,
        domain: MockDomain,
    ) -> core::result::Result<(), (MockDomain, UnitError)> {
        if let Err(e) = self.injected() {
            return Err((domain, e));
        }
        let seen = Seen::Paging(domain.tag);
        let in_use = self.attached.borrow().values().any(|s| *s == seen)
            || self.pasids.borrow().values().any(|s| *s == seen);
        if in_use {
            return Err((domain, UnitError::Busy));
        }
        if let MockKind::Nested { viommu } = domain.kind {
            let mut v = self.viommus.borrow_mut();
            if let Some(n) = v.get_mut(&viommu) {
                *n -= 1;
            }
        }
        let bytes: u64 = domain.maps.borrow().values().map(|(l, _)| l).sum();
        self.destroyed.set(self.destroyed.get() + bytes);
        Ok(())
    }

    fn attach_pasid(
        &self,
        device: DeviceId,
        pasid: u32,
        to: Attachment<'_, MockDomain>,
    ) -> core::result::Result<(), UnitError> {
        self.injected()?;
        if !self.serves.contains(&device.0) {
            return Err(UnitError::UnknownDevice(device));
        }
        if pasid >> MOCK_PASID_BITS != 0 {
            return Err(UnitError::Unsupported("PASID beyond the unit's width"));
        }
        match to {
            Attachment::Paging(d) => {
                self.pasids
                    .borrow_mut()
                    .insert((device, pasid), Seen::Paging(d.tag));
            }
            Attachment::Blocking => {
                self.pasids.borrow_mut().remove(&(device, pasid));
            }
            Attachment::Identity => return Err(UnitError::Unsupported("identity PASID")),
        }
        Ok(())
    }

    fn flush(&self, _d: &MockDomain, _i: Iova, len: u64) -> core::result::Result<(), UnitError> {
        self.injected()?;
        self.flushed.set(self.flushed.get() + len);
        Ok(())
    }

    fn new_viommu(&self, parent: &MockDomain) -> core::result::Result<MockViommu, UnitError> {
        self.injected()?;
        let vmid = parent.tag + 100;
        self.viommus.borrow_mut().insert(vmid, 0);
        Ok(MockViommu { vmid })
    }

    fn destroy_viommu(
        &self,
        viommu: MockViommu,
    ) -> core::result::Result<(), (MockViommu, UnitError)> {
        if let Err(e) = self.injected() {
            return Err((viommu, e));
        }
        let nested = self.viommus.borrow().get(&viommu.vmid).copied();
        match nested {
            Some(0) => {
                self.viommus.borrow_mut().remove(&viommu.vmid);
                Ok(())
            }
            _ => Err((viommu, UnitError::Busy)),
        }
    }

    /// The mock's guest entry: word 0 bit 0 valid, every bit of word 7 reserved.
    fn new_nested(
        &self,
        viommu: &MockViommu,
        guest: &GuestEntry,
    ) -> core::result::Result<MockDomain, UnitError> {
        self.injected()?;
        if guest[0] & 1 == 0 {
            return Err(UnitError::GuestEntry("V"));
        }
        if guest[7] != 0 {
            return Err(UnitError::GuestEntry("reserved word 7"));
        }
        if let Some(n) = self.viommus.borrow_mut().get_mut(&viommu.vmid) {
            *n += 1;
        }
        Ok(self.mock_domain(MockKind::Nested {
            viommu: viommu.vmid,
        }))
    }

    /// The mock's guest commands: word 0 = opcode (1: invalidate the device whose virtual id is
    /// word 1; 2: invalidate the guest's tag), everything else refused.
    fn forward_invalidations(
        &self,
        viommu: &MockViommu,
        devices: &dyn Fn(u32) -> Option<DeviceId>,
        cmds: &[[u64; 2]],
    ) -> Forwarded {
        for (done, cmd) in cmds.iter().enumerate() {
            let issued = match cmd[0] {
                1 => match u32::try_from(cmd[1]).ok().and_then(devices) {
                    Some(dev) => [1, u64::from(dev.0)],
                    None => {
                        return Forwarded {
                            done,
                            refused: Some(UnitError::GuestCommand("not the guest's device")),
                        }
                    }
                },
                2 => [2, u64::from(viommu.vmid)],
                _ => {
                    return Forwarded {
                        done,
                        refused: Some(UnitError::GuestCommand("opcode")),
                    }
                }
            };
            self.issued.borrow_mut().push(issued);
        }
        Forwarded {
            done: cmds.len(),
            refused: None,
        }
    }

    fn new_domain(
        &self,
        _stage: Stage,
        _ia_bits: u32,
    ) -> core::result::Result<MockDomain, UnitError> {
        self.injected()?;
        Ok(self.mock_domain(MockKind::Paging))
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

    fn unmap_pruning(
        &self,
        domain: &MockDomain,
        iova: Iova,
        len: u64,
        owned: core::ops::Range<u64>,
    ) -> core::result::Result<u64, UnitError> {
        *self.owned.borrow_mut() = Some(owned);
        self.unmap(domain, iova, len)
    }

    /// The mock keeps no tables: nothing to free, the places recorded.
    fn prune_tables(
        &self,
        _domain: &MockDomain,
        points: &[(Iova, core::ops::Range<u64>)],
    ) -> core::result::Result<usize, UnitError> {
        self.injected()?;
        let places = points.iter().map(|(at, _)| at.as_u64()).collect();
        self.pruned.borrow_mut().push(places);
        Ok(0)
    }

    /// Like `unmap`: the mock caches nothing, so the gather stays empty.
    fn unmap_deferred(
        &self,
        domain: &MockDomain,
        iova: Iova,
        len: u64,
        _gather: &mut Gather,
    ) -> core::result::Result<u64, UnitError> {
        self.unmap(domain, iova, len)
    }

    fn flush_deferred(
        &self,
        _domain: &MockDomain,
        _gather: Gather,
    ) -> core::result::Result<(), UnitError> {
        self.injected()?;
        self.deferred_flushes.set(self.deferred_flushes.get() + 1);
        Ok(())
    }

    /// The host unit's encoding (see `unit::host`): `[op | tag << 8, iova]`.
    fn guest_flush(&self, cmd: &[u64; 2]) -> core::result::Result<GuestFlush, UnitError> {
        let tag = (cmd[0] >> 8) as u32;
        Ok(match cmd[0] & 0xff {
            0 => GuestFlush::Wait,
            1 => GuestFlush::Range {
                tag,
                iova: cmd[1],
                len: 4096,
            },
            2 => GuestFlush::Tag(tag),
            3 => GuestFlush::All,
            _ => return Err(UnitError::GuestCommand("operation")),
        })
    }

    fn set_ats(
        &self,
        device: DeviceId,
        ats: Option<crate::unit::Ats>,
    ) -> core::result::Result<(), UnitError> {
        self.injected()?;
        if !self.serves.contains(&device.0) {
            return Err(UnitError::UnknownDevice(device));
        }
        match ats {
            Some(a) => self.ats_devices.borrow_mut().insert(device, a),
            None => self.ats_devices.borrow_mut().remove(&device),
        };
        self.ats_log.borrow_mut().push(ats);
        Ok(())
    }

    fn drain_faults(
        &self,
        sink: &mut dyn FnMut(FaultRecord),
    ) -> core::result::Result<Drained, UnitError> {
        let faults = core::mem::take(&mut *self.faults.borrow_mut());
        let records = faults.len();
        faults.into_iter().for_each(sink);
        Ok(Drained {
            records,
            overflow: false,
        })
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
        if let Ok(space) = d.space(*id) {
            s += &format!("{:?};", space.mappings());
        }
        if let DomainKind::Paging { viommus, .. } = d.kind {
            s += &format!("viommus {viommus};");
        }
    }
    for (id, v) in &io.viommus {
        let hw = match &v.backing {
            viommu::Backing::Hardware(hw) => format!("{hw:?}"),
            viommu::Backing::Shadow(s) => format!("shadows {:?}", s.domains),
        };
        s += &format!("{id:?}:{:?}/{hw}/{:?}/{};", v.owner, v.devices, v.nested);
    }
    s += &format!("{:?};{};", io.pasids, io.interrupts.snapshot());
    for u in &io.units {
        s += &format!(
            "{:?};{:?};{:?};{:?};{}",
            u.attached.borrow(),
            u.pasids.borrow(),
            u.viommus.borrow(),
            u.issued.borrow(),
            u.flushed.get()
        );
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

const MSI: Reserved = Reserved::X86_MSI;

/// An interrupt remapper's hardware as the tests see it: live entries by handle, each with the
/// requester id it is pinned to and its target; `fail` makes the next call fail.
#[derive(Default, Debug)]
struct IrqTable {
    entries: BTreeMap<u32, (DeviceId, InterruptTarget)>,
    next: u32,
    fail: bool,
    /// Where MSIs are DMA writes (an ITS): the doorbell page.
    doorbell: Option<u64>,
}

/// A remapper over a shared [`IrqTable`], so a test keeps a handle to what it boxed.
struct MockRemapper(std::sync::Arc<spin::Mutex<IrqTable>>);

impl MockRemapper {
    fn failing(table: &spin::Mutex<IrqTable>) -> core::result::Result<(), UnitError> {
        if core::mem::take(&mut table.lock().fail) {
            return Err(UnitError::Hardware(HardwareError::Queue));
        }
        Ok(())
    }
}

impl InterruptRemapper for MockRemapper {
    fn allocate(
        &self,
        device: DeviceId,
        target: InterruptTarget,
    ) -> core::result::Result<RemappedInterrupt, UnitError> {
        Self::failing(&self.0)?;
        let mut t = self.0.lock();
        let handle = t.next;
        t.next += 1;
        t.entries.insert(handle, (device, target));
        Ok(RemappedInterrupt {
            device,
            handle,
            message: MsiMessage {
                address: 0xfee0_0010 | u64::from(handle) << 5,
                data: 0,
            },
            target,
        })
    }

    fn retarget(
        &self,
        irq: &mut RemappedInterrupt,
        target: InterruptTarget,
    ) -> core::result::Result<(), UnitError> {
        Self::failing(&self.0)?;
        let mut t = self.0.lock();
        let entry = t
            .entries
            .get_mut(&irq.handle)
            .ok_or(UnitError::UnknownDevice(irq.device))?;
        entry.1 = target;
        irq.target = target;
        Ok(())
    }

    fn free(&self, irq: RemappedInterrupt) -> core::result::Result<(), UnitError> {
        Self::failing(&self.0)?;
        self.0.lock().entries.remove(&irq.handle);
        Ok(())
    }

    fn doorbell(&self) -> Option<PhysAddr> {
        self.0.lock().doorbell.map(PhysAddr::new)
    }
}

/// Registers a mock remapper for `u` and returns its table.
fn remapped<V: TranslationUnit>(
    io: &mut Iommu<V>,
    u: UnitId,
) -> std::sync::Arc<spin::Mutex<IrqTable>> {
    let table = std::sync::Arc::new(spin::Mutex::new(IrqTable::default()));
    ok(io.set_interrupt_remapper(u, Box::new(MockRemapper(table.clone()))));
    table
}

/// One unit serving devices 1..=4 (1 and 2 alias each other: group 10), with identity and an
/// interrupt remapper.
fn system() -> (Iommu<MockUnit>, UnitId, [DeviceHandle; 3]) {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(true, &[1, 2, 3, 4]));
    remapped(&mut io, u);
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
    remapped(&mut io, u2);
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
    let t = UnitError::Hardware(HardwareError::Queue);
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
    assert_eq!(ok(io.iova_space(A, dom)).mappings().len(), 2);
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
fn a_sweep_threshold_of_one_sweeps_where_each_unmap_empties_a_stripe() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    let w = window();
    let layout = Layout {
        windows: &w,
        reserved: &[MSI],
    };
    let dma = ok(io.alloc_dma_domain(A, u, Stage::Second, 48, &layout));
    let one = NonZeroUsize::MIN;
    refused(&mut io, Error::UnknownDomain(DomainId(99)), |io| {
        io.set_sweep_threshold(A, DomainId(99), one)
    });
    refused(&mut io, Error::NotDomainOwner(dom), |io| {
        io.set_sweep_threshold(B, dom, one)
    });
    refused(&mut io, Error::DmaDomain(dma), |io| {
        io.set_sweep_threshold(A, dma, one)
    });
    let cpu = CpuTable {
        root: PhysAddr::new(0x8000),
        ia_bits: 48,
        asid: 1,
        mair: 0xff,
    };
    let sva = ok(io.alloc_shared_domain(A, u, &cpu));
    refused(&mut io, Error::NotPaging(sva), |io| {
        io.set_sweep_threshold(A, sva, one)
    });
    let swept = |io: &Iommu<MockUnit>| ok(io.unit(u)).pruned.borrow().clone();
    let map = |io: &Iommu<MockUnit>, at: u64| {
        ok(io.map(
            A,
            dom,
            Iova::new(at),
            PhysAddr::new(0),
            0x1000,
            Prot::READ_WRITE,
        ));
    };

    // By default the first emptied stripe waits for seven more.
    map(&io, 0x1000);
    ok(io.unmap(A, dom, Iova::new(0x1000), 0x1000));
    assert!(swept(&io).is_empty());

    // With 1, the place already noted is due: the next unmap sweeps it, and each stripe an
    // unmap empties is swept by that unmap.
    ok(io.set_sweep_threshold(A, dom, one));
    map(&io, 0x40_0000);
    map(&io, 0x40_1000);
    ok(io.unmap(A, dom, Iova::new(0x40_0000), 0x1000));
    assert_eq!(
        swept(&io),
        [alloc::vec![0x1000]],
        "its stripe still holds a page"
    );
    ok(io.unmap(A, dom, Iova::new(0x40_1000), 0x1000));
    assert_eq!(swept(&io), [alloc::vec![0x1000], alloc::vec![0x40_1000]]);

    // Back to the default: noted again, not swept.
    let default = NonZeroUsize::new(PENDING_PRUNES).expect("not zero");
    ok(io.set_sweep_threshold(A, dom, default));
    map(&io, 0x1000);
    ok(io.unmap(A, dom, Iova::new(0x1000), 0x1000));
    assert_eq!(swept(&io).len(), 2);
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
    // The unit refusing the teardown leaves the domain as it was.
    ok(io.unit(u)).fail_next.set(Some(UnitError::Busy));
    refused(&mut io, Error::Unit(UnitError::Busy), |io| {
        io.destroy_domain(A, dom)
    });
    ok(io.destroy_domain(A, dom));
    // The unit dropped the table with its mapping.
    assert_eq!(ok(io.unit(u)).destroyed.get(), 0x1000);
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
fn bad_layouts_are_refused() {
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
}

#[test]
fn hardware_info_comes_from_the_unit() {
    let (io, u, _) = system();
    let info = ok(io.hardware_info(u));
    assert_eq!(info.pasid_bits, MOCK_PASID_BITS);
    assert!(matches!(info.raw, RawRegisters::Smmuv3 { iidr: 7, .. }));
    let mut other: Iommu<MockUnit> = Iommu::new();
    assert_eq!(other.hardware_info(u).err(), Some(Error::UnknownUnit(u)));
    other.add_unit(MockUnit::new(false, &[]));
    assert!(!ok(other.hardware_info(u)).identity);
}

fn nest_parent(io: &mut Iommu<MockUnit>, owner: OwnerId, u: UnitId) -> DomainId {
    let w = window();
    ok(io.alloc_nest_parent(
        owner,
        u,
        48,
        &Layout {
            windows: &w,
            reserved: &[MSI],
        },
    ))
}

const GOOD_GUEST: GuestEntry = [1, 0, 0, 0, 0, 0, 0, 0];

/// The tiny-hypervisor flow over the mock: parent, vIOMMU, virtual id, nested domain, attach,
/// guest invalidations; every refusal on the way leaves everything as it was.
#[test]
fn viommu_and_nesting_rules() {
    let (mut io, u, [d1, _d2, d3]) = system();
    let plain = domain(&mut io, A, u);
    refused(&mut io, Error::NotNestParent(plain), |io| {
        io.alloc_viommu(A, plain)
    });
    let parent = nest_parent(&mut io, A, u);
    refused(&mut io, Error::NotDomainOwner(parent), |io| {
        io.alloc_viommu(B, parent)
    });
    ok(io.unit(u)).fail_next.set(Some(UnitError::OutOfIds));
    refused(&mut io, Error::Unit(UnitError::OutOfIds), |io| {
        io.alloc_viommu(A, parent)
    });
    let v = ok(io.alloc_viommu(A, parent));
    assert_eq!(ok(io.viommu_parent(A, v)), parent);
    let parent_tag = ok(io.domain_hw(A, parent)).tag;
    assert_eq!(ok(io.viommu_hw(A, v)).vmid, parent_tag + 100);
    assert_eq!(io.viommu_hw(B, v).err(), Some(Error::NotViommuOwner(v)));
    assert_eq!(
        io.domain_hw(B, parent).err(),
        Some(Error::NotDomainOwner(parent))
    );
    refused(&mut io, Error::NotViommuOwner(v), |io| {
        io.viommu_parent(B, v)
    });

    // Virtual ids: only owned devices, one id per device, one device per id.
    refused(&mut io, Error::NotOwner(d3), |io| {
        io.set_virtual_device(A, v, d3, 0x30)
    });
    ok(io.claim(d3, A));
    ok(io.claim(d1, B));
    refused(&mut io, Error::NotViommuOwner(v), |io| {
        io.set_virtual_device(B, v, d1, 0x10)
    });
    ok(io.set_virtual_device(A, v, d3, 0x30));
    refused(
        &mut io,
        Error::DeviceInViommu {
            device: d3,
            viommu: v,
        },
        |io| io.set_virtual_device(A, v, d3, 0x31),
    );
    refused(
        &mut io,
        Error::VirtualIdInUse {
            viommu: v,
            virtual_id: 0x30,
        },
        |io| io.set_virtual_device(A, v, d3, 0x30),
    );
    assert_eq!(ok(io.virtual_device(A, v, 0x30)), d3);
    refused(
        &mut io,
        Error::UnknownVirtualId {
            viommu: v,
            virtual_id: 0x31,
        },
        |io| io.virtual_device(A, v, 0x31),
    );

    // Guest data the unit refuses changes nothing.
    let mut bad = GOOD_GUEST;
    bad[7] = 1;
    refused(
        &mut io,
        Error::Unit(UnitError::GuestEntry("reserved word 7")),
        |io| io.alloc_nested_domain(A, v, &bad),
    );
    let nested = ok(io.alloc_nested_domain(A, v, &GOOD_GUEST));
    refused(&mut io, Error::NotPaging(nested), |io| {
        io.map(
            A,
            nested,
            Iova::new(0),
            PhysAddr::new(0),
            0x1000,
            Prot::READ,
        )
    });
    refused(&mut io, Error::NotPaging(nested), |io| {
        io.unmap_all(A, nested)
    });

    // A nested domain only for devices the guest can name.
    let other = ok(io.add_device(u, DeviceId(4), GroupId(12)));
    ok(io.claim(other, A));
    refused(
        &mut io,
        Error::NotInViommu {
            device: other,
            viommu: v,
        },
        |io| io.attach(other, A, Target::Domain(nested)),
    );
    ok(io.attach(d3, A, Target::Domain(nested)));
    assert!(matches!(seen(&io, u, 3), Some(Seen::Paging(_))));

    // Guest invalidations: virtual ids translated, the first bad command stops the rest.
    let f = ok(io.invalidate(A, v, &[[2, 0], [1, 0x30]]));
    assert_eq!((f.done, f.refused), (2, None));
    let vmid = ok(io.unit(u)).viommus.borrow().keys().next().copied();
    assert_eq!(
        ok(io.unit(u)).issued.borrow().as_slice(),
        &[[2, u64::from(vmid.unwrap_or(0))], [1, 3]]
    );
    let before = ok(io.unit(u)).issued.borrow().len();
    let f = ok(io.invalidate(A, v, &[[1, 0x30], [1, 0x10], [2, 0]]));
    assert_eq!(
        (f.done, f.refused),
        (1, Some(UnitError::GuestCommand("not the guest's device")))
    );
    assert_eq!(ok(io.unit(u)).issued.borrow().len(), before + 1);
    assert_eq!(
        io.invalidate(B, v, &[[2, 0]]).err(),
        Some(Error::NotViommuOwner(v))
    );

    // Lifetimes: nothing in use can go away.
    refused(
        &mut io,
        Error::ParentInUse {
            domain: parent,
            viommus: 1,
        },
        |io| io.destroy_domain(A, parent),
    );
    refused(
        &mut io,
        Error::ViommuBusy {
            viommu: v,
            nested: 1,
        },
        |io| io.destroy_viommu(A, v),
    );
    refused(
        &mut io,
        Error::Busy {
            domain: nested,
            users: 1,
        },
        |io| io.unset_virtual_device(A, v, 0x30),
    );
    refused(
        &mut io,
        Error::DeviceInViommu {
            device: d3,
            viommu: v,
        },
        |io| io.release(d3, A),
    );
    // Torn down in order, everything goes.
    ok(io.attach(d3, A, Target::Blocked));
    ok(io.destroy_domain(A, nested));
    // A virtual id still set holds the vIOMMU (as an iommufd vDEVICE does).
    refused(
        &mut io,
        Error::ViommuHasDevices {
            viommu: v,
            devices: 1,
        },
        |io| io.destroy_viommu(A, v),
    );
    ok(io.unset_virtual_device(A, v, 0x30));
    ok(io.release(d3, A));
    ok(io.destroy_viommu(A, v));
    ok(io.destroy_domain(A, parent));
    assert!(ok(io.unit(u)).viommus.borrow().is_empty());
    refused(&mut io, Error::UnknownViommu(v), |io| {
        io.destroy_viommu(A, v)
    });
}

#[test]
fn pasid_attach_rules() {
    let (mut io, u, [d1, _d2, d3]) = system();
    let dom = domain(&mut io, A, u);
    refused(&mut io, Error::NotOwner(d3), |io| {
        io.attach_pasid(d3, A, 1, Target::Domain(dom))
    });
    ok(io.claim(d1, A));
    ok(io.claim(d3, A));
    // d1 aliases d2: its PASID traffic cannot be told apart.
    refused(&mut io, Error::GroupNotSingleton(GroupId(10)), |io| {
        io.attach_pasid(d1, A, 1, Target::Domain(dom))
    });
    refused(
        &mut io,
        Error::Unsupported("identity for one PASID"),
        |io| io.attach_pasid(d3, A, 1, Target::Identity),
    );
    refused(
        &mut io,
        Error::Unit(UnitError::Unsupported("PASID beyond the unit's width")),
        |io| io.attach_pasid(d3, A, 1 << MOCK_PASID_BITS, Target::Domain(dom)),
    );
    let other = domain(&mut io, B, u);
    refused(&mut io, Error::NotDomainOwner(other), |io| {
        io.attach_pasid(d3, A, 1, Target::Domain(other))
    });
    ok(io.attach_pasid(d3, A, 1, Target::Domain(dom)));
    ok(io.attach_pasid(d3, A, 2, Target::Domain(dom)));
    // The device's requests without PASID stay blocked.
    assert_eq!(seen(&io, u, 3), Some(Seen::Blocking));
    assert_eq!(ok(io.domain_users(A, dom)), 2);
    assert_eq!(io.pasids_of(d3).collect::<alloc::vec::Vec<_>>(), [1, 2]);
    refused(
        &mut io,
        Error::Busy {
            domain: dom,
            users: 2,
        },
        |io| io.destroy_domain(A, dom),
    );
    ok(io.attach_pasid(d3, A, 1, Target::Blocked));
    assert_eq!(ok(io.domain_users(A, dom)), 1);
    // Release blocks the remaining PASIDs too.
    ok(io.release(d3, A));
    assert!(ok(io.unit(u)).pasids.borrow().is_empty());
    assert_eq!(io.pasids_of(d3).count(), 0);
    ok(io.destroy_domain(A, dom));
}

#[test]
fn shared_cpu_table_domain() {
    let (mut io, u, [_, _, d3]) = system();
    let cpu = CpuTable {
        root: PhysAddr::new(0x8000),
        ia_bits: 48,
        asid: 1,
        mair: 0xff,
    };
    ok(io.unit(u)).fail_next.set(Some(UnitError::OutOfMemory));
    refused(&mut io, Error::Unit(UnitError::OutOfMemory), |io| {
        io.alloc_shared_domain(A, u, &cpu)
    });
    let sva = ok(io.alloc_shared_domain(A, u, &cpu));
    refused(&mut io, Error::NotPaging(sva), |io| {
        io.map_anywhere(A, sva, PhysAddr::new(0), 0x1000, Prot::READ)
    });
    refused(&mut io, Error::NotPaging(sva), |io| {
        io.iova_space(A, sva).map(|_| ())
    });
    refused(&mut io, Error::ZeroLength, |io| {
        io.flush(A, sva, Iova::new(0), 0)
    });
    refused(&mut io, Error::WrapAround, |io| {
        io.flush(A, sva, Iova::new(u64::MAX - 0xfff), 0x2000)
    });
    refused(&mut io, Error::NotDomainOwner(sva), |io| {
        io.flush(B, sva, Iova::new(0), 0x1000)
    });
    ok(io.flush(A, sva, Iova::new(0x4000), 0x2000));
    assert_eq!(ok(io.unit(u)).flushed.get(), 0x2000);
    ok(io.claim(d3, A));
    ok(io.attach_pasid(d3, A, 5, Target::Domain(sva)));
    ok(io.release(d3, A));
    ok(io.destroy_domain(A, sva));
}

#[test]
fn a_vm_table_domain_is_flushed_not_mapped_and_parents_a_viommu() {
    let (mut io, u, [_, _, d3]) = system();
    let vm = VmTable {
        root: PhysAddr::new(0x9000),
        ia_bits: 40,
        vmid: 7,
    };
    ok(io.unit(u)).fail_next.set(Some(UnitError::OutOfMemory));
    refused(&mut io, Error::Unit(UnitError::OutOfMemory), |io| {
        io.alloc_vm_domain(A, u, &vm)
    });
    let s2 = ok(io.alloc_vm_domain(A, u, &vm));
    refused(&mut io, Error::NotPaging(s2), |io| {
        io.map(
            A,
            s2,
            Iova::new(0x4000),
            PhysAddr::new(0),
            0x1000,
            Prot::READ,
        )
    });
    refused(&mut io, Error::NotPaging(s2), |io| {
        io.unmap(A, s2, Iova::new(0x4000), 0x1000).map(|_| ())
    });
    ok(io.flush(A, s2, Iova::new(0x4000), 0x1000));
    assert_eq!(ok(io.unit(u)).flushed.get(), 0x1000);
    // A nest parent: a vIOMMU builds on it and holds it until destroyed.
    refused(&mut io, Error::NotDomainOwner(s2), |io| {
        io.alloc_viommu(B, s2).map(|_| ())
    });
    let v = ok(io.alloc_viommu(A, s2));
    refused(
        &mut io,
        Error::ParentInUse {
            domain: s2,
            viommus: 1,
        },
        |io| io.destroy_domain(A, s2),
    );
    ok(io.claim(d3, A));
    ok(io.attach(d3, A, Target::Domain(s2)));
    ok(io.destroy_viommu(A, v));
    refused(
        &mut io,
        Error::Busy {
            domain: s2,
            users: 1,
        },
        |io| io.destroy_domain(A, s2),
    );
    ok(io.release(d3, A));
    ok(io.destroy_domain(A, s2));
}

#[test]
fn a_borrowed_unit_serves_the_model() {
    let unit = MockUnit::new(false, &[7]);
    let mut io: Iommu<&MockUnit> = Iommu::new();
    let u = io.add_unit(&unit);
    remapped(&mut io, u);
    let d = ok(io.add_device(u, DeviceId(7), GroupId(7)));
    assert_eq!(
        unit.attached.borrow().get(&DeviceId(7)),
        Some(&Seen::Blocking)
    );
    ok(io.claim(d, A));
    let w = window();
    let layout = Layout {
        windows: &w,
        reserved: &[],
    };
    let dom = ok(io.alloc_domain(A, u, Stage::Second, 48, &layout));
    ok(io.attach(d, A, Target::Domain(dom)));
    assert!(matches!(
        unit.attached.borrow().get(&DeviceId(7)),
        Some(Seen::Paging(_))
    ));
}

#[test]
fn aliases_follow_their_group() {
    let (mut io, u, [d1, d2, d3]) = system();
    // 1 and 2 sit behind one bridge whose id is 9; 3 is elsewhere.
    const BRIDGE: DeviceId = DeviceId(9);
    let serves = [1, 2, 3, 4, 9, 0x300];
    io.units[u.0].serves = serves.to_vec();
    ok(io.add_alias(d1, BRIDGE));
    ok(io.add_alias(d2, BRIDGE));
    assert_eq!(seen(&io, u, 9), Some(Seen::Blocking));
    assert_eq!(ok(io.device_ids(d1)), [DeviceId(1), BRIDGE]);
    refused(
        &mut io,
        Error::DuplicateDevice {
            unit: u,
            id: BRIDGE,
        },
        |io| io.add_alias(d1, BRIDGE),
    );
    refused(
        &mut io,
        Error::AliasCrossesGroups {
            id: BRIDGE,
            group: GroupId(10),
        },
        |io| io.add_alias(d3, BRIDGE),
    );
    refused(
        &mut io,
        Error::AliasCrossesGroups {
            id: DeviceId(1),
            group: GroupId(10),
        },
        |io| io.add_alias(d3, DeviceId(1)),
    );
    refused(
        &mut io,
        Error::AliasCrossesGroups {
            id: BRIDGE,
            group: GroupId(10),
        },
        |io| io.add_device(u, BRIDGE, GroupId(13)),
    );

    ok(io.claim(d1, A));
    ok(io.claim(d2, A));
    refused(&mut io, Error::GroupInUse(GroupId(10)), |io| {
        io.add_alias(d1, DeviceId(4))
    });
    let dom = domain(&mut io, A, u);
    // The unit refusing the alias leaves the own id as it was too.
    ok(io.unit(u))
        .fail_later
        .set(Some((1, UnitError::Hardware(HardwareError::Queue))));
    refused(
        &mut io,
        Error::Unit(UnitError::Hardware(HardwareError::Queue)),
        |io| io.attach(d1, A, Target::Domain(dom)),
    );
    ok(io.attach(d1, A, Target::Domain(dom)));
    let tag = match seen(&io, u, 1) {
        Some(Seen::Paging(t)) => t,
        other => panic!("d1 not attached: {other:?}"),
    };
    assert_eq!(seen(&io, u, 9), Some(Seen::Paging(tag)));
    ok(io.attach(d2, A, Target::Domain(dom)));
    // d1 leaves: the bridge id still carries d2's DMA, so it stays on the domain.
    ok(io.attach(d1, A, Target::Blocked));
    assert_eq!(seen(&io, u, 1), Some(Seen::Blocking));
    assert_eq!(seen(&io, u, 9), Some(Seen::Paging(tag)));
    ok(io.release(d2, A));
    assert_eq!(seen(&io, u, 2), Some(Seen::Blocking));
    assert_eq!(seen(&io, u, 9), Some(Seen::Blocking));
    // No PASIDs through a bridge.
    refused(&mut io, Error::GroupNotSingleton(GroupId(10)), |io| {
        io.attach_pasid(d1, A, 1, Target::Domain(dom))
    });
    let lone = ok(io.add_device(u, DeviceId(4), GroupId(14)));
    ok(io.add_alias(lone, DeviceId(3 << 8)));
    ok(io.claim(lone, A));
    refused(
        &mut io,
        Error::Unsupported("PASID for a device with DMA aliases"),
        |io| io.attach_pasid(lone, A, 1, Target::Domain(dom)),
    );
}

/// The records this thread logged, for tests of what the object model says through `log`.
mod captured_log {
    use core::cell::RefCell;
    use std::string::{String, ToString};
    use std::vec::Vec;

    struct Capture;

    std::thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let line = std::format!("{} {}", record.level(), record.args());
            LINES.with(|l| l.borrow_mut().push(line));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture;

    /// Installs the capturing logger (once per test process) and empties this thread's lines.
    pub fn start() {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Debug);
        LINES.with(|l| l.borrow_mut().clear());
    }

    pub fn lines() -> Vec<String> {
        LINES.with(|l| l.borrow().iter().map(ToString::to_string).collect())
    }
}

#[test]
fn control_path_decisions_are_logged_at_debug() {
    let (mut io, u, [d1, _, d3]) = system();
    let dom = domain(&mut io, A, u);
    captured_log::start();
    assert!(io.attach(d1, A, Target::Domain(dom)).is_err());
    ok(io.claim(d1, A));
    ok(io.attach(d1, A, Target::Domain(dom)));
    assert!(io.release(d3, A).is_err());
    let lines = captured_log::lines();
    let expect = [
        "DEBUG attach: DeviceHandle(0) of OwnerId(1) to Domain(",
        "DEBUG claim: DeviceHandle(0) by OwnerId(1)",
        "DEBUG attach: DeviceHandle(0) of OwnerId(1) now on Domain(",
        "DEBUG release: DeviceHandle(2) by OwnerId(1) refused: ",
    ];
    assert_eq!(lines.len(), expect.len(), "{lines:?}");
    for (line, start) in lines.iter().zip(expect) {
        assert!(
            line.starts_with(start),
            "{line:?} should start with {start:?}"
        );
    }
    assert!(lines[0].contains("refused"), "{lines:?}");
}

const CPU0_VECTOR_40: InterruptTarget = InterruptTarget {
    vector: 0x40,
    cpu: 0,
};
const CPU1_VECTOR_41: InterruptTarget = InterruptTarget {
    vector: 0x41,
    cpu: 1,
};

#[test]
fn devices_without_interrupt_isolation_are_owned_only_by_explicit_opt_in() {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(false, &[7, 8]));
    let d = ok(io.add_device(u, DeviceId(7), GroupId(7)));
    let e = ok(io.add_device(u, DeviceId(8), GroupId(8)));
    assert_eq!(io.interrupts_isolated(u), Ok(false));
    refused(&mut io, Error::InterruptsNotIsolated(u), |io| {
        io.claim(d, A)
    });
    // Nothing to allocate from, even for an owner.
    io.allow_unsafe_interrupts(true);
    ok(io.claim(d, A));
    refused(&mut io, Error::NoInterruptRemapper(u), |io| {
        io.alloc_interrupt(d, A, CPU0_VECTOR_40)
    });
    let status = io.status();
    assert!(status.is_insecure());
    assert_eq!(status.unremapped_interrupts, 1);
    assert!(
        format!("{status}").starts_with("INSECURE: 1 owned device(s) without interrupt remapping"),
        "{status}"
    );
    // Forbidding again keeps the owned device but refuses new owners.
    io.allow_unsafe_interrupts(false);
    refused(&mut io, Error::InterruptsNotIsolated(u), |io| {
        io.claim(e, B)
    });
    ok(io.release(d, A));
    assert!(!io.status().is_insecure());
    // A remapper makes the unit's devices ownable, and the status secure with owners.
    let table = remapped(&mut io, u);
    assert_eq!(io.interrupts_isolated(u), Ok(true));
    ok(io.claim(e, B));
    assert!(!io.status().is_insecure(), "{}", io.status());
    refused(&mut io, Error::RemapperPresent(u), |io| {
        io.set_interrupt_remapper(u, Box::new(MockRemapper(table.clone())))
    });
    let unknown = UnitId(9);
    assert_eq!(
        io.interrupts_isolated(unknown),
        Err(Error::UnknownUnit(unknown))
    );
}

#[test]
fn interrupts_belong_to_the_device_owner_and_go_at_release() {
    let (mut io, _, [d1, d2, d3]) = system();
    refused(&mut io, Error::NotOwner(d3), |io| {
        io.alloc_interrupt(d3, A, CPU0_VECTOR_40)
    });
    ok(io.claim(d3, A));
    let (irq, msg) = ok(io.alloc_interrupt(d3, A, CPU0_VECTOR_40));
    assert_eq!(msg.device, DeviceId(3), "pinned to the device's own id");
    assert_eq!(msg.target, CPU0_VECTOR_40);
    assert_eq!(io.interrupts_of(d3).collect::<alloc::vec::Vec<_>>(), [irq]);
    // Nobody else can name it.
    refused(&mut io, Error::NotInterruptOwner(irq), |io| {
        io.retarget_interrupt(B, irq, CPU1_VECTOR_41)
    });
    refused(&mut io, Error::NotInterruptOwner(irq), |io| {
        io.free_interrupt(B, irq)
    });
    let moved = ok(io.retarget_interrupt(A, irq, CPU1_VECTOR_41));
    assert_eq!((moved.handle, moved.target), (msg.handle, CPU1_VECTOR_41));
    // Release tears it down; the id is gone for good.
    ok(io.release(d3, A));
    assert_eq!(io.interrupts_of(d3).count(), 0);
    refused(&mut io, Error::UnknownInterrupt(irq), |io| {
        io.free_interrupt(A, irq)
    });

    // A device behind a bridge: pinned to the alias the unit sees its requests with.
    ok(io.add_alias(d1, DeviceId(4)));
    ok(io.add_alias(d2, DeviceId(4)));
    ok(io.claim(d1, B));
    let (_, behind) = ok(io.alloc_interrupt(d1, B, CPU0_VECTOR_40));
    assert_eq!(behind.device, DeviceId(4));
}

#[test]
fn a_failing_remapper_changes_nothing() {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(false, &[7]));
    let table = remapped(&mut io, u);
    let d = ok(io.add_device(u, DeviceId(7), GroupId(7)));
    ok(io.claim(d, A));
    let hw = |t: &std::sync::Arc<spin::Mutex<IrqTable>>| format!("{:?}", t.lock().entries);
    table.lock().fail = true;
    let before = hw(&table);
    refused(
        &mut io,
        Error::Unit(UnitError::Hardware(HardwareError::Queue)),
        |io| io.alloc_interrupt(d, A, CPU0_VECTOR_40),
    );
    assert_eq!(hw(&table), before);
    let (irq, _) = ok(io.alloc_interrupt(d, A, CPU0_VECTOR_40));
    let before = hw(&table);
    table.lock().fail = true;
    refused(
        &mut io,
        Error::Unit(UnitError::Hardware(HardwareError::Queue)),
        |io| io.retarget_interrupt(A, irq, CPU1_VECTOR_41),
    );
    assert_eq!(hw(&table), before);
    // A release whose teardown fails keeps the device owned with its interrupt.
    table.lock().fail = true;
    assert!(io.release(d, A).is_err());
    assert_eq!(io.device(d).map(|s| s.owner), Ok(Some(A)));
    assert_eq!(io.interrupts_of(d).count(), 1);
    ok(io.release(d, A));
    assert!(table.lock().entries.is_empty(), "released: no entry left");
}

#[test]
fn a_doorbell_remapper_gets_its_page_mapped_in_the_msi_window() {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(false, &[7]));
    let table = remapped(&mut io, u);
    let page = 0xfee0_0000;
    table.lock().doorbell = Some(page);
    let d = ok(io.add_device(u, DeviceId(7), GroupId(7)));
    ok(io.claim(d, A));
    let with_window = domain(&mut io, A, u);
    let w = window();
    let without = ok(io.alloc_domain(
        A,
        u,
        Stage::Second,
        48,
        &Layout {
            windows: &w,
            reserved: &[],
        },
    ));
    let maps =
        |io: &Iommu<MockUnit>, dom: DomainId| io.domains[&dom].hw.maps.borrow().get(&page).copied();

    // In a domain without an MSI window the doorbell has nowhere to go.
    ok(io.attach(d, A, Target::Domain(without)));
    refused(
        &mut io,
        Error::NoMsiWindow {
            domain: without,
            doorbell: page,
        },
        |io| io.alloc_interrupt(d, A, CPU0_VECTOR_40),
    );
    // A remapper failure after the doorbell was mapped takes the mapping back.
    ok(io.attach(d, A, Target::Domain(with_window)));
    table.lock().fail = true;
    refused(
        &mut io,
        Error::Unit(UnitError::Hardware(HardwareError::Queue)),
        |io| io.alloc_interrupt(d, A, CPU0_VECTOR_40),
    );
    assert_eq!(maps(&io, with_window), None);
    // Allocated: the doorbell page is mapped at IOVA = its physical address, once.
    let (irq, _) = ok(io.alloc_interrupt(d, A, CPU0_VECTOR_40));
    assert_eq!(maps(&io, with_window), Some((0x1000, page)));
    ok(io.alloc_interrupt(d, A, CPU1_VECTOR_41));
    // The owner cannot map over it: it lies in a reserved region.
    refused(
        &mut io,
        Error::ReservedRegion(ReservedKind::MsiDoorbell),
        |io| {
            io.map(
                A,
                with_window,
                Iova::new(page),
                PhysAddr::new(0x1000_0000),
                0x1000,
                Prot::READ_WRITE,
            )
        },
    );
    // A device with interrupts moves only to a domain that can carry them.
    refused(
        &mut io,
        Error::NoMsiWindow {
            domain: without,
            doorbell: page,
        },
        |io| io.attach(d, A, Target::Domain(without)),
    );
    let second = domain(&mut io, A, u);
    ok(io.attach(d, A, Target::Domain(second)));
    assert_eq!(maps(&io, second), Some((0x1000, page)));
    ok(io.free_interrupt(A, irq));
    ok(io.release(d, A));
}

/// Where the model follows iommufd: the unmap-all idiom on an empty domain, and a domain wider
/// than the unit refused rather than narrowed (so `map_anywhere` never picks an address the
/// unit's table cannot hold).
#[test]
fn unmap_all_idiom_and_input_width_follow_iommufd() {
    let (mut io, u, _) = system();
    let dom = domain(&mut io, A, u);
    assert_eq!(io.unmap(A, dom, Iova::new(0), u64::MAX), Ok(0));
    ok(io.map(
        A,
        dom,
        Iova::new(0x1000),
        PhysAddr::new(0x1000),
        0x2000,
        Prot::READ,
    ));
    assert_eq!(io.unmap(A, dom, Iova::new(0), u64::MAX), Ok(0x2000));
    assert_eq!(
        io.iova_to_phys(A, dom, Iova::new(0x1000)),
        Err(Error::NothingMapped)
    );
    // Any other range with nothing in it is still refused.
    refused(&mut io, Error::NothingMapped, |io| {
        io.unmap(A, dom, Iova::new(0), 0x1000)
    });

    let top = [Region {
        start: (1 << 48) - 0x1000,
        last: u64::MAX,
    }];
    let layout = Layout {
        windows: &top,
        reserved: &[],
    };
    refused(
        &mut io,
        Error::InputBitsBeyondUnit { asked: 64, max: 48 },
        |io| io.alloc_domain(A, u, Stage::Second, 64, &layout),
    );
    refused(
        &mut io,
        Error::InputBitsBeyondUnit { asked: 49, max: 48 },
        |io| io.alloc_domain(A, u, Stage::First, 49, &layout),
    );
    // At the unit's width, the top window's last page is where map_anywhere goes.
    let top = [Region {
        start: (1 << 48) - 0x1000,
        last: (1 << 48) - 1,
    }];
    let d = ok(io.alloc_domain(
        A,
        u,
        Stage::Second,
        48,
        &Layout {
            windows: &top,
            reserved: &[],
        },
    ));
    assert_eq!(
        io.map_anywhere(A, d, PhysAddr::new(0x5000), 0x1000, Prot::READ),
        Ok(Iova::new((1 << 48) - 0x1000))
    );
}
