//! Shadowing over the mock unit: guest VT-d second-stage tables in a simulated guest RAM, the
//! guest's invalidations followed page by page, refusals counted and reported, and random guest
//! tables never giving the device memory outside guest RAM.

extern crate std;

use core::num::NonZeroUsize;
use std::collections::BTreeMap as StdMap;
use std::sync::Mutex as StdMutex;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::iommufd::notify::tests::Recorder;
use crate::iommufd::tests::MockUnit;
use crate::iommufd::{GroupId, PENDING_PRUNES};
use crate::pagetable::vtd_second_stage::{PS, R, W};
use crate::unit::DeviceId;

const GUEST: OwnerId = OwnerId(7);
const TAG: u32 = 5;
const VID: u32 = 0x20;
/// Guest RAM: 4 MiB at guest-physical 1 MiB, backed by host pages at 2 GiB + 64 KiB.
const RAM_GPA: u64 = 0x10_0000;
const RAM_PAGES: u64 = 1024;
const HOST: u64 = 0x8001_0000;
/// The guest's table: root and one table per lower level, then data pages.
const ROOT: u64 = RAM_GPA;
const L3: u64 = RAM_GPA + 0x1000;
const L2: u64 = RAM_GPA + 0x2000;
const L1: u64 = RAM_GPA + 0x3000;
const DATA: u64 = RAM_GPA + 0x10000;

/// Host memory behind guest RAM, as the guest writes it.
#[derive(Default)]
struct Memory(StdMutex<StdMap<u64, u64>>);

impl GuestMemory for Memory {
    fn read_u64(&self, at: PhysAddr) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(&at.as_u64()).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Memory {
    /// The guest writes `v` at guest-physical `gpa` (RAM is mapped 1:1 plus an offset).
    fn guest_write(&self, gpa: u64, v: u64) {
        self.0.lock().unwrap().insert(gpa - RAM_GPA + HOST, v);
    }
}

struct Guest {
    io: Iommu<MockUnit>,
    v: ViommuId,
    shadow: DomainId,
    mem: Arc<Memory>,
    dev: DeviceHandle,
}

/// A guest whose VT-d table maps nothing yet below its three upper levels, a shadow of it, and
/// device 1 given to the guest as `VID` and attached to the shadow.
fn guest() -> Guest {
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(false, &[1]));
    io.allow_unsafe_interrupts(true);
    io.subscribe_faults(GUEST, 16);
    let dev = io.add_device(u, DeviceId(1), GroupId(1)).unwrap();
    io.claim(dev, GUEST).unwrap();
    let windows = [Region::below_bits(40)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let parent = io.alloc_nest_parent(GUEST, u, 40, &layout).unwrap();
    io.map(
        GUEST,
        parent,
        Iova::new(RAM_GPA),
        PhysAddr::new(HOST),
        RAM_PAGES * PAGE,
        Prot::READ_WRITE,
    )
    .unwrap();
    let mem = Arc::new(Memory::default());
    mem.guest_write(ROOT, L3 | R | W);
    mem.guest_write(L3, L2 | R | W);
    mem.guest_write(L2, L1 | R | W);
    let ram = [Region::new(RAM_GPA, RAM_PAGES * PAGE).unwrap()];
    let v = io
        .alloc_shadow_viommu(GUEST, parent, &ram, mem.clone())
        .unwrap();
    io.set_virtual_device(GUEST, v, dev, VID).unwrap();
    let shadow = io
        .alloc_shadow_domain(GUEST, v, Stage::Second, table())
        .unwrap();
    io.attach(dev, GUEST, Target::Domain(shadow)).unwrap();
    Guest {
        io,
        v,
        shadow,
        mem,
        dev,
    }
}

fn table() -> GuestTable {
    GuestTable {
        tag: TAG,
        root: ROOT,
        format: GuestFormat::VtdSecondStage { aw: 2 },
    }
}

fn page(iova: u64) -> [u64; 2] {
    [1 | u64::from(TAG) << 8, iova]
}

const WAIT: [u64; 2] = [0, 0];

impl Guest {
    /// What the unit would translate `iova` of the shadow to.
    fn shadow_of(&self, iova: u64) -> Option<u64> {
        let hw = self.io.domain_hw(GUEST, self.shadow).unwrap();
        let maps = hw.maps.borrow();
        maps.iter()
            .find(|(s, (l, _))| **s <= iova && iova < *s + l)
            .map(|(s, (_, p))| p + (iova - s))
    }

    /// The guest maps its IOVA `iova` (first 2 MiB) to guest-physical `gpa`.
    fn map(&self, iova: u64, gpa: u64) {
        self.mem.guest_write(L1 + (iova >> 12) * 8, gpa | R | W);
    }

    fn unmap(&self, iova: u64) {
        self.mem.guest_write(L1 + (iova >> 12) * 8, 0);
    }

    fn invalidate(&self, cmds: &[[u64; 2]]) -> Forwarded {
        self.io.invalidate(GUEST, self.v, cmds).unwrap()
    }

    fn stats(&self) -> ShadowStats {
        self.io.shadow_stats(GUEST, self.v).unwrap()
    }

    fn flushes(&self) -> u64 {
        self.io.units[0].deferred_flushes.get()
    }
}

fn all_done(n: usize) -> Forwarded {
    Forwarded {
        done: n,
        refused: None,
    }
}

#[test]
fn a_guest_mapping_reaches_the_shadow_only_after_its_invalidation() {
    let g = guest();
    g.map(0x5000, DATA);
    // Caching mode: not invalidated, not used.
    assert_eq!(g.shadow_of(0x5000), None);
    assert_eq!(g.invalidate(&[page(0x5000), WAIT]), all_done(2));
    assert_eq!(g.shadow_of(0x5000), Some(DATA - RAM_GPA + HOST));
    let s = g.stats();
    assert_eq!(
        (s.invalidations, s.mapped, s.unmapped, s.refused),
        (1, 1, 0, 0)
    );
    // Invalidating again changes nothing and issues no host invalidation.
    assert_eq!(g.invalidate(&[page(0x5000)]), all_done(1));
    assert_eq!(g.stats().mapped, 1);
    assert_eq!(g.flushes(), 0);
}

#[test]
fn a_guest_unmap_removes_the_shadow_with_one_host_invalidation_for_all_its_pages() {
    let g = guest();
    for i in 0..8 {
        g.map(0x10000 + i * PAGE, DATA + i * PAGE);
    }
    // One domain-wide invalidation shadows all eight.
    assert_eq!(g.invalidate(&[[2 | u64::from(TAG) << 8, 0]]), all_done(1));
    assert_eq!(g.stats().mapped, 8);
    for i in 0..8 {
        g.unmap(0x10000 + i * PAGE);
    }
    assert_eq!(g.invalidate(&[[3, 0], WAIT]), all_done(2));
    assert_eq!(g.shadow_of(0x10000), None);
    let s = g.stats();
    assert_eq!((s.unmapped, s.host_flushes), (8, 1));
    assert_eq!(g.flushes(), 1);
}

#[test]
fn an_invalidation_of_one_page_of_a_large_guest_page_follows_all_of_it() {
    let g = guest();
    // Guest IOVAs 2..4 MiB → guest-physical 2..4 MiB, one 2 MiB leaf.
    g.mem.guest_write(L2 + 8, 0x20_0000 | PS | R | W);
    assert_eq!(g.invalidate(&[page(0x20_5000)]), all_done(1));
    assert_eq!(g.stats().mapped, 512);
    assert_eq!(g.shadow_of(0x20_0000), Some(0x20_0000 - RAM_GPA + HOST));
    assert_eq!(g.shadow_of(0x3f_f000), Some(0x3f_f000 - RAM_GPA + HOST));
    // Gone, invalidated at another page of it: all 512 pages go, with one host invalidation.
    g.mem.guest_write(L2 + 8, 0);
    assert_eq!(g.invalidate(&[page(0x30_0000)]), all_done(1));
    assert_eq!(g.shadow_of(0x20_0000), None);
    assert_eq!((g.stats().unmapped, g.stats().host_flushes), (512, 1));
}

#[test]
fn a_guest_churning_its_iovas_has_the_emptied_host_tables_swept() {
    // The guest maps and unmaps a 2 MiB page at each of its L2 entries in turn: every unmap
    // leaves one stripe of the shadow empty, and the PENDING_PRUNES-th sweeps them all.
    let g = guest();
    let slot = |i: u64| L2 + 8 * (i + 1);
    for i in 0..PENDING_PRUNES as u64 {
        let at = (i + 1) << 21;
        g.mem.guest_write(slot(i), 0x20_0000 | PS | R | W);
        assert_eq!(g.invalidate(&[page(at)]), all_done(1));
        g.mem.guest_write(slot(i), 0);
        assert_eq!(g.invalidate(&[page(at)]), all_done(1));
        let swept = g.io.units[0].pruned.borrow().clone();
        if i + 1 < PENDING_PRUNES as u64 {
            assert!(swept.is_empty(), "round {i}: {swept:x?}");
        } else {
            // Each noted where its last page went.
            let places: Vec<u64> = (1..=PENDING_PRUNES as u64)
                .map(|k| (k << 21) + 0x1f_f000)
                .collect();
            assert_eq!(swept, [places]);
        }
    }
    let s = g.stats();
    assert_eq!(
        (s.mapped, s.unmapped, s.host_flushes),
        (512 * PENDING_PRUNES as u64, 512 * PENDING_PRUNES as u64, 8)
    );
}

#[test]
fn a_shadow_with_a_sweep_threshold_of_one_sweeps_at_each_emptied_stripe() {
    let mut g = guest();
    let shadow = g.shadow;
    g.io.set_sweep_threshold(GUEST, shadow, NonZeroUsize::MIN)
        .unwrap();
    g.mem.guest_write(L2 + 8, 0x20_0000 | PS | R | W);
    assert_eq!(g.invalidate(&[page(0x20_0000)]), all_done(1));
    g.mem.guest_write(L2 + 8, 0);
    assert_eq!(g.invalidate(&[page(0x20_0000)]), all_done(1));
    assert_eq!(*g.io.units[0].pruned.borrow(), [std::vec![0x3f_f000]]);
}

#[test]
fn a_changed_guest_mapping_moves_in_the_shadow() {
    let g = guest();
    g.map(0x5000, DATA);
    g.invalidate(&[page(0x5000)]);
    g.map(0x5000, DATA + PAGE);
    g.invalidate(&[page(0x5000)]);
    assert_eq!(g.shadow_of(0x5000), Some(DATA + PAGE - RAM_GPA + HOST));
    assert_eq!(g.stats().host_flushes, 1);
}

#[test]
fn a_guest_mapping_outside_its_ram_is_refused_and_reported_with_the_virtual_id() {
    let g = guest();
    g.map(0x6000, RAM_GPA + RAM_PAGES * PAGE); // the first page after RAM
    g.map(0x7000, DATA);
    assert_eq!(g.invalidate(&[[2 | u64::from(TAG) << 8, 0]]), all_done(1));
    assert_eq!(g.shadow_of(0x6000), None);
    assert_eq!(g.shadow_of(0x7000), Some(DATA - RAM_GPA + HOST));
    assert_eq!(g.stats().refused, 1);
    let taken = g.io.take_faults(GUEST).unwrap();
    assert_eq!(taken.faults.len(), 1);
    let f = taken.faults[0];
    assert_eq!(f.record.address, 0x6000);
    assert_eq!(f.record.reason, "guest-physical address outside guest RAM");
    assert_eq!(f.device, Some(g.dev));
    assert_eq!(f.virtual_id, Some((g.v, VID)));
}

#[test]
fn a_guest_table_outside_its_ram_is_not_read() {
    let g = guest();
    // The level-2 entry for 2 MiB..4 MiB points at host memory the guest does not own.
    g.mem.guest_write(L2 + 8, 0x4000_0000 | R | W);
    g.invalidate(&[[2 | u64::from(TAG) << 8, 0]]);
    assert_eq!(g.stats().refused, 1);
    assert_eq!(
        g.io.take_faults(GUEST).unwrap().faults[0].record.reason,
        "table outside the memory the walk may read"
    );
}

#[test]
fn commands_a_shadow_does_not_follow_stop_the_batch_by_name() {
    let g = guest();
    g.map(0x5000, DATA);
    let f = g.invalidate(&[page(0x5000), [9, 0], page(0x6000)]);
    assert_eq!(f.done, 1);
    assert_eq!(f.refused, Some(UnitError::GuestCommand("operation")));
    assert_eq!(g.shadow_of(0x5000), Some(DATA - RAM_GPA + HOST));
    // A tag without a shadow has nothing cached: accepted, nothing done.
    assert_eq!(g.invalidate(&[[2 | 99 << 8, 0]]), all_done(1));
    assert_eq!(g.stats().invalidations, 1);
}

#[test]
fn shadow_objects_refuse_what_belongs_to_the_guest_or_to_nesting() {
    let mut g = guest();
    let io = &mut g.io;
    assert_eq!(
        io.map(
            GUEST,
            g.shadow,
            Iova::new(0),
            PhysAddr::new(HOST),
            PAGE,
            Prot::READ
        ),
        Err(Error::ShadowDomain(g.shadow))
    );
    assert_eq!(
        io.unmap(GUEST, g.shadow, Iova::new(0), PAGE),
        Err(Error::ShadowDomain(g.shadow))
    );
    assert_eq!(
        io.alloc_nested_domain(GUEST, g.v, &[0; 8]),
        Err(Error::Shadowing(g.v))
    );
    assert_eq!(
        io.alloc_shadow_domain(GUEST, g.v, Stage::Second, table()),
        Err(Error::ShadowTagInUse {
            viommu: g.v,
            tag: TAG
        })
    );
    assert_eq!(
        io.shadow_stats(OwnerId(1), g.v),
        Err(Error::NotViommuOwner(g.v))
    );
    assert_eq!(
        io.destroy_viommu(GUEST, g.v),
        Err(Error::ViommuBusy {
            viommu: g.v,
            nested: 1
        })
    );
    io.attach(g.dev, GUEST, Target::Blocked).unwrap();
    io.destroy_domain(GUEST, g.shadow).unwrap();
    // The tag is free again, and the vIOMMU can go.
    let again = io
        .alloc_shadow_domain(GUEST, g.v, Stage::Second, table())
        .unwrap();
    io.destroy_domain(GUEST, again).unwrap();
    io.unset_virtual_device(GUEST, g.v, VID).unwrap();
    io.destroy_viommu(GUEST, g.v).unwrap();
}

#[test]
fn a_shadow_starts_as_the_guest_table_is() {
    let mut g = guest();
    g.map(0x5000, DATA);
    let other = GuestTable {
        tag: TAG + 1,
        ..table()
    };
    let d =
        g.io.alloc_shadow_domain(GUEST, g.v, Stage::Second, other)
            .unwrap();
    let maps = g.io.domain_hw(GUEST, d).unwrap().maps.borrow().clone();
    assert_eq!(
        maps.into_iter().collect::<Vec<_>>(),
        [(0x5000, (PAGE, DATA - RAM_GPA + HOST))]
    );
}

proptest! {
    /// Random guest words in the guest's tables (pointers into and out of RAM, garbage) and
    /// random invalidations: never a panic, and every page the shadow maps is a host page of
    /// guest RAM, as the guest's table says at the last invalidation of that page.
    #[test]
    fn random_guest_tables_never_give_the_device_memory_outside_guest_ram(
        writes in proptest::collection::vec((0u64..6, 0u64..32, any::<u64>(), 0u64..3), 1..60),
    ) {
        let g = guest();
        for (table, slot, word, kind) in writes {
            let at = RAM_GPA + table * PAGE + slot * 8;
            let target = match kind {
                0 => (RAM_GPA + (word % (RAM_PAGES + 8)) * PAGE) | ((word >> 60) & 3),
                1 => word & 0x000f_ffff_ffff_f003,
                _ => word,
            };
            g.mem.guest_write(at, target);
            let cmd = if word & 0x10 == 0 { page((word >> 20) % 64 * PAGE) } else { [3, 0] };
            let f = g.invalidate(&[cmd]);
            prop_assert!(f.refused.is_none() || matches!(f.refused, Some(UnitError::GuestCommand(_))));
        }
        let hw = g.io.domain_hw(GUEST, g.shadow).unwrap();
        for (_, (len, phys)) in hw.maps.borrow().iter() {
            prop_assert_eq!(*len, PAGE);
            prop_assert!(*phys >= HOST && *phys < HOST + RAM_PAGES * PAGE, "{phys:#x} outside guest RAM");
        }
    }
}

#[test]
fn a_shadow_domain_tells_its_subscribers_what_the_guest_changed() {
    use crate::iommufd::{Event, Replay, Subject};
    let mut g = guest();
    let heard = Arc::new(Recorder::default());
    // A page shadowed before the subscription is replayed.
    g.map(0x7000, DATA + PAGE);
    g.invalidate(&[page(0x7000)]);
    g.io.subscribe(
        GUEST,
        Subject::Domain(g.shadow),
        heard.clone(),
        Replay::Current,
    )
    .unwrap();
    g.map(0x5000, DATA);
    g.invalidate(&[page(0x5000)]);
    g.unmap(0x5000);
    g.invalidate(&[page(0x5000)]);
    let events = heard.take();
    let map = Event::Map {
        domain: g.shadow,
        iova: Iova::new(0x5000),
        phys: PhysAddr::new(DATA - RAM_GPA + HOST),
        len: PAGE,
        prot: Prot::READ_WRITE,
    };
    let unmap = Event::Unmap {
        domain: g.shadow,
        iova: Iova::new(0x5000),
        len: PAGE,
    };
    let replayed = Event::Map {
        domain: g.shadow,
        iova: Iova::new(0x7000),
        phys: PhysAddr::new(DATA + PAGE - RAM_GPA + HOST),
        len: PAGE,
        prot: Prot::READ_WRITE,
    };
    let attached = Event::Attach {
        device: g.dev,
        pasid: None,
        target: Target::Domain(g.shadow),
        // The guest's name for the device travels with it.
        virtual_id: Some((g.v, VID)),
    };
    assert_eq!(events, [replayed, attached, map, unmap]);
}
