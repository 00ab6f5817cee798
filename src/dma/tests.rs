//! The DMA API against the object model over a table-only unit, and against host memory: a
//! "device" here reads and writes through the addresses the handle gives it (translated by the
//! domain's mappings on the paging path), so bouncing, syncs and sub-page isolation are checked
//! on real bytes.

extern crate std;

use std::cell::Cell;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::addr::{Iova, PhysAddr};
use crate::hal::host::HostHal;
use crate::hal::FrameSize;
use crate::iommufd::tests::MockUnit;
use crate::iommufd::{
    DomainId, GroupId, InsecureNoIommu, Iommu, Layout, OwnerId, Region, Reserved, Target,
};
use crate::pagetable::{Error as PtError, Prot, VmsaStage1};
use crate::unit::host::TableUnit;
use crate::unit::{DeviceId, Stage, UnitError};

const OWNER: OwnerId = OwnerId(1);
/// Stage-1 tables: their 48-bit output reaches host heap addresses.
type Io = Iommu<TableUnit<VmsaStage1>>;

fn domain_with(io: &mut Io, windows: &[Region]) -> DomainId {
    let u = io.add_unit(TableUnit::vmsa_stage1());
    let reserved = [Reserved::X86_MSI];
    let layout = Layout {
        windows,
        reserved: &reserved,
    };
    io.alloc_dma_domain(OWNER, u, Stage::First, 48, &layout)
        .unwrap()
}

fn domain(io: &mut Io) -> DomainId {
    domain_with(
        io,
        &[Region {
            start: 0x1000,
            last: (1 << 39) - 1,
        }],
    )
}

/// What `iova` of DMA domain `dom` translates to in its page table, if anything.
fn translate(io: &Io, dom: DomainId, iova: u64) -> Option<u64> {
    let d = io.dma_domain(OWNER, dom).unwrap();
    d.hw.iova_to_phys(Iova::new(iova)).ok().map(|p| p.as_u64())
}

/// Host memory the tests hand out as buffers and pools: zeroed, aligned, freed with the HAL.
fn memory(hal: &HostHal, log2: u32) -> u64 {
    let size = FrameSize::from_log2(log2).unwrap();
    hal.alloc_frame(size).unwrap().as_u64()
}

/// Two megabytes of host memory, the lower for a pool and the higher for buffers: a mask just
/// above the pool puts every buffer beyond a device's reach.
fn low_and_high(hal: &HostHal) -> (u64, u64) {
    let a = memory(hal, 20);
    let b = memory(hal, 20);
    (a.min(b), a.max(b))
}

fn pool_at(base: u64, len: u64) -> BouncePool {
    // SAFETY: host memory the test allocated for it and uses for nothing else.
    unsafe { BouncePool::new(PhysAddr::new(base), len) }.unwrap()
}

fn bytes(at: u64, len: u64) -> Vec<u8> {
    // SAFETY: host memory the test allocated (identity: address == pointer).
    unsafe { std::slice::from_raw_parts(at as *const u8, len as usize) }.to_vec()
}

fn fill(at: u64, len: u64, byte: u8) {
    // SAFETY: as in `bytes`.
    unsafe { core::ptr::write_bytes(at as *mut u8, byte, len as usize) }
}

/// Where a device access to `addr` lands: through the domain's mappings, or `addr` itself.
fn landing(io: Option<(&Io, DomainId)>, addr: u64) -> u64 {
    match io {
        Some((io, dom)) => translate(io, dom, addr).unwrap(),
        None => addr,
    }
}

/// The device reads `len` bytes at `addr`, page by page.
fn device_read(io: Option<(&Io, DomainId)>, addr: DmaAddr, len: u64) -> Vec<u8> {
    (addr.0..addr.0 + len)
        .map(|a| bytes(landing(io, a), 1)[0])
        .collect()
}

/// The device writes `byte` over `len` bytes at `addr`.
fn device_write(io: Option<(&Io, DomainId)>, addr: DmaAddr, len: u64, byte: u8) {
    for a in addr.0..addr.0 + len {
        fill(landing(io, a), 1, byte);
    }
}

#[test]
fn a_mapped_buffer_translates_below_the_mask_and_unmaps_once() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    // edu's default mask: 28 bits.
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new((1 << 28) - 1)).unwrap();
    assert_eq!(dma.path(), Path::Paging);
    let buf = PhysAddr::new(0x1_2345_6789);
    let addr = dma.map(buf, 100, Direction::ToDevice).unwrap();
    assert!(addr.0 + 100 <= 1 << 28, "{addr:?} beyond the mask");
    assert_eq!(addr.0 & 0xfff, 0x789, "the offset in the page is kept");
    assert_eq!(translate(&io, dom, addr.0), Some(buf.as_u64()));
    // A wrong length, then the right one, then again.
    assert_eq!(dma.unmap(addr, 8192), Err(DmaError::NotMapped));
    assert_eq!(dma.sync_for_cpu(addr, 101), Err(DmaError::NotMapped));
    assert_eq!(translate(&io, dom, addr.0), Some(buf.as_u64()));
    dma.unmap(addr, 100).unwrap();
    assert_eq!(dma.unmap(addr, 100), Err(DmaError::NotMapped));
    assert_eq!(translate(&io, dom, addr.0), None);
    assert_eq!(dma.live(), 0);
}

#[test]
fn tables_emptied_where_iovas_return_to_the_ranges_are_freed_every_8th_place() {
    // 2 MiB buffers (too large for the magazines: their IOVAs go straight back to the ranges)
    // at 4 KiB-aligned memory, so each fills a leaf table of its own under one 1 GiB table
    // just below the 64 GiB mask. Each unmap frees its leaf table itself (it covers it); the
    // 1 GiB table empties with the last, and the unmap that notes the 8th place frees it.
    for unmap in [UnmapPolicy::Strict, UnmapPolicy::Deferred { batch: 1 }] {
        let mut io = Iommu::new();
        let dom = domain(&mut io);
        let hal = HostHal::new();
        let cfg = Config {
            unmap,
            ..Config::new((1 << 36) - 1)
        };
        let dma = DmaDevice::paging(&io, OWNER, dom, &hal, cfg).unwrap();
        let frames = || {
            let table = &io.dma_domain(OWNER, dom).unwrap().hw;
            table.hal().live_frames() - table.cached_frames()
        };
        let root_only = frames();
        const M2: u64 = 2 << 20;
        let addrs: Vec<DmaAddr> = (0..8)
            .map(|i| {
                let buf = PhysAddr::new(0x1000_1000 + i * M2);
                dma.map(buf, M2, Direction::ToDevice).unwrap()
            })
            .collect();
        assert!(addrs.iter().all(|a| a.0 >> 30 == 63), "{addrs:x?}");
        // Root, the 512 GiB entry's table, the 1 GiB table and 8 leaf tables.
        assert_eq!(frames(), root_only + 2 + 8, "{unmap:?}");
        for (i, &a) in addrs.iter().enumerate() {
            dma.unmap(a, M2).unwrap();
            // The table of the 512 GiB entry spans the x86 MSI window, reserved: never free,
            // so it stays (a table spanning a reserved region or a window's edge does).
            let want = if i == 7 { 1 } else { 2 + 7 - i };
            assert_eq!(frames(), root_only + want, "{unmap:?}: unmap {i}");
        }
        assert_eq!(translate(&io, dom, addrs[0].0), None);
    }
}

#[test]
fn a_buffer_across_pages_maps_every_page_it_touches() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new(u64::MAX)).unwrap();
    let addr = dma
        .map(PhysAddr::new(0x10_0ff0), 0x20, Direction::Bidirectional)
        .unwrap();
    let next_page = Iova::new((addr.0 & !0xfff) + 0x1000);
    assert_eq!(translate(&io, dom, next_page.as_u64()), Some(0x10_1000));
    dma.unmap(addr, 0x20).unwrap();
}

#[test]
fn a_neighbours_mapping_survives_a_wrong_unmap() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new(u64::MAX)).unwrap();
    let a = dma
        .map(PhysAddr::new(0x20_0000), 4096, Direction::FromDevice)
        .unwrap();
    let b = dma
        .map(PhysAddr::new(0x30_0000), 4096, Direction::FromDevice)
        .unwrap();
    // Top-down: b sits just below a; an unmap of b with a's page included is refused.
    assert_eq!(b.0 + 4096, a.0);
    assert_eq!(dma.unmap(b, 8192), Err(DmaError::NotMapped));
    assert!(translate(&io, dom, a.0).is_some());
    dma.unmap(a, 4096).unwrap();
    dma.unmap(b, 4096).unwrap();
}

#[test]
fn bad_buffers_and_exhaustion_are_typed_errors_and_change_nothing() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    // A 13-bit mask: the window starts at 4 KiB, so one page fits below 8 KiB.
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new(0x1fff)).unwrap();
    let map = |phys: u64, len| dma.map(PhysAddr::new(phys), len, Direction::ToDevice);
    assert_eq!(map(0x1000, 0), Err(DmaError::ZeroLength));
    assert_eq!(map(u64::MAX - 10, 100), Err(DmaError::WrapAround));
    let one = map(0x5000, 4096).unwrap();
    assert_eq!(one, DmaAddr(0x1000));
    assert_eq!(map(0x6000, 4096), Err(DmaError::Iova(IovaError::Exhausted)));
    assert_eq!(translate(&io, dom, 0x1000), Some(0x5000));
    assert_eq!(dma.live(), 1);
    // Someone else's domain: refused by the model; the model's own map of a DMA domain too.
    assert!(matches!(
        DmaDevice::paging(&io, OwnerId(2), dom, &hal, Config::new(u64::MAX)),
        Err(DmaError::Model(crate::iommufd::Error::NotDomainOwner(_)))
    ));
    let phys = PhysAddr::new(0x9000);
    assert_eq!(
        io.map(OWNER, dom, Iova::new(0x4000), phys, 4096, Prot::READ),
        Err(crate::iommufd::Error::DmaDomain(dom))
    );
    // Deferred unmaps without an IOMMU, and no CPUs, are refused.
    let deferred = Config {
        unmap: UnmapPolicy::Deferred { batch: 8 },
        ..Config::new(u64::MAX)
    };
    let insecure = InsecureNoIommu::enable(0).unwrap();
    assert_eq!(
        DmaDevice::no_iommu(&insecure, &hal, deferred).err(),
        Some(DmaError::NothingToDefer)
    );
    let no_cpus = Config {
        cpus: 0,
        ..Config::new(u64::MAX)
    };
    assert_eq!(
        DmaDevice::no_iommu(&insecure, &hal, no_cpus).err(),
        Some(DmaError::UnknownCpu(0))
    );
    dma.unmap(one, 4096).unwrap();
}

#[test]
fn many_buffers_from_two_threads() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    std::thread_local! {
        static THREAD_CPU: Cell<usize> = const { Cell::new(0) };
    }
    fn cpu() -> usize {
        THREAD_CPU.with(|c| c.get())
    }
    let cfg = Config {
        cpus: 2,
        cpu,
        ..Config::new(u64::MAX)
    };
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, cfg).unwrap();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let dma = &dma;
            s.spawn(move || {
                THREAD_CPU.with(|c| c.set(t));
                let mut live = Vec::new();
                for i in 0..2000u64 {
                    let phys = PhysAddr::new((t as u64 + 1) << 32 | i << 12);
                    let len = 1 + i % 9000;
                    live.push((dma.map(phys, len, Direction::ToDevice).unwrap(), len));
                    if i % 2 == 1 {
                        let (a, l) = live.swap_remove(0);
                        dma.unmap(a, l).unwrap();
                    }
                }
                for (a, l) in live {
                    dma.unmap(a, l).unwrap();
                }
            });
        }
    });
    assert_eq!(dma.live(), 0);
}

/// A format without write-only entries (Arm stage 1): a from-device buffer is mapped
/// read-write instead of being refused.
#[test]
fn from_device_on_a_stage1_format_maps_read_write() {
    let mut io = Iommu::new();
    let u = io.add_unit(TableUnit::vmsa_stage1());
    let windows = [Region {
        start: 0x1000,
        last: (1 << 39) - 1,
    }];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = io
        .alloc_dma_domain(OWNER, u, Stage::First, 39, &layout)
        .unwrap();
    // The format itself refuses write-only.
    let d = io.dma_domain(OWNER, dom).unwrap();
    assert_eq!(
        crate::unit::TranslationUnit::map(
            d.unit,
            d.hw,
            Iova::new(0x1000),
            PhysAddr::new(0),
            4096,
            Prot::WRITE
        ),
        Err(UnitError::PageTable(PtError::UnsupportedPermissions))
    );
    // A plain paging domain is not the DMA API's.
    let plain = io
        .alloc_domain(OWNER, u, Stage::First, 39, &layout)
        .unwrap();
    let hal = HostHal::new();
    assert_eq!(
        DmaDevice::paging(&io, OWNER, plain, &hal, Config::new(u64::MAX)).err(),
        Some(DmaError::Model(crate::iommufd::Error::DmaDomain(plain)))
    );
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new(u64::MAX)).unwrap();
    let addr = dma
        .map(PhysAddr::new(0x40_0000), 4096, Direction::FromDevice)
        .unwrap();
    assert_eq!(translate(&io, dom, addr.0), Some(0x40_0000));
    dma.unmap(addr, 4096).unwrap();
}

#[test]
fn identity_needs_the_device_attached_to_identity_and_bounces_beyond_the_mask() {
    let mem = HostHal::new();
    let (low, high) = low_and_high(&mem);
    let mut io = Iommu::new();
    let u = io.add_unit(MockUnit::new(true, &[8]));
    let dev = io.add_device(u, DeviceId(8), GroupId(1)).unwrap();
    let hal = HostHal::new();
    let cfg = Config::new(low + (1 << 20) - 1);
    // Unowned, then blocked: refused.
    assert!(matches!(
        DmaDevice::identity(&io, dev, OWNER, &hal, cfg),
        Err(DmaError::Model(crate::iommufd::Error::NotOwner(_)))
    ));
    io.allow_unsafe_interrupts(true);
    io.claim(dev, OWNER).unwrap();
    assert_eq!(
        DmaDevice::identity(&io, dev, OWNER, &hal, cfg).err(),
        Some(DmaError::NotIdentity)
    );
    io.allow_identity(true);
    io.attach(dev, OWNER, Target::Identity).unwrap();
    let bare = DmaDevice::identity(&io, dev, OWNER, &hal, cfg).unwrap();
    assert_eq!(bare.path(), Path::Identity);
    // No pool: a buffer beyond the mask has no way round it.
    assert_eq!(
        bare.map(PhysAddr::new(high), 64, Direction::ToDevice),
        Err(DmaError::BeyondMask)
    );
    // A pool above the mask is refused; one below it bounces.
    let too_high = pool_at(high, 1 << 20);
    let bare = bare.with_pool(&too_high).map(|_| ()).err();
    assert_eq!(bare, Some(DmaError::PoolBeyondMask));
    let pool = pool_at(low, 1 << 20);
    let dma = DmaDevice::identity(&io, dev, OWNER, &hal, cfg)
        .unwrap()
        .with_pool(&pool)
        .unwrap();
    fill(high + 0x10, 200, 0x5a);
    let addr = dma
        .map(PhysAddr::new(high + 0x10), 200, Direction::Bidirectional)
        .unwrap();
    assert!(
        addr.0 + 200 <= cfg.mask + 1 && addr.0 >= low,
        "{addr:?} in the pool"
    );
    assert_eq!(addr.0 % PAGE, 0x10, "the offset in the page is kept");
    assert_eq!(device_read(None, addr, 200), vec![0x5a; 200]);
    // The device writes; the CPU sees it after a sync, not before.
    device_write(None, addr, 200, 0xc3);
    assert_eq!(bytes(high + 0x10, 200), vec![0x5a; 200]);
    dma.sync_for_cpu(addr, 200).unwrap();
    assert_eq!(bytes(high + 0x10, 200), vec![0xc3; 200]);
    // The CPU writes; the device sees it after a sync for the device.
    fill(high + 0x10, 50, 0x11);
    dma.sync_for_device(addr, 50).unwrap();
    assert_eq!(device_read(None, addr, 50), vec![0x11; 50]);
    device_write(None, addr, 200, 0x77);
    dma.unmap(addr, 200).unwrap();
    assert_eq!(
        bytes(high + 0x10, 200),
        vec![0x77; 200],
        "copied out on unmap"
    );
    // A buffer the device reaches is not bounced (a coherent device: nothing touches it).
    let near = dma.map(PhysAddr::new(0x1000), 64, Direction::ToDevice);
    assert_eq!(near, Ok(DmaAddr(0x1000)));
    dma.unmap(DmaAddr(0x1000), 64).unwrap();
    assert_eq!(pool.free_slots(), pool.slots());
}

#[test]
fn without_an_iommu_bounce_only_keeps_the_device_in_the_pool_until_it_is_exhausted() {
    let mem = HostHal::new();
    let (low, high) = low_and_high(&mem);
    let hal = HostHal::new();
    let insecure = InsecureNoIommu::enable(0).unwrap();
    let cfg = Config {
        bounce: BouncePolicy::Always,
        ..Config::new(u64::MAX)
    };
    // Bounce-only mode needs a pool before anything maps.
    let none = DmaDevice::no_iommu(&insecure, &hal, cfg).unwrap();
    assert_eq!(
        none.map(PhysAddr::new(high), 8, Direction::ToDevice),
        Err(DmaError::BeyondMask)
    );
    let pool = pool_at(low, 4 * PAGE);
    let dma = DmaDevice::no_iommu(&insecure, &hal, cfg)
        .unwrap()
        .with_pool(&pool)
        .unwrap();
    assert_eq!(dma.path(), Path::NoIommu);
    let in_pool = |a: DmaAddr| a.0 >= low && a.0 < low + 4 * PAGE;
    let a = dma
        .map(PhysAddr::new(high), 2 * PAGE, Direction::ToDevice)
        .unwrap();
    let b = dma
        .map(PhysAddr::new(high + 0x4000), PAGE, Direction::FromDevice)
        .unwrap();
    assert!(in_pool(a) && in_pool(b), "{a:?} {b:?}");
    // One slot left: a two-page buffer is refused, nothing changes.
    assert_eq!(
        dma.map(PhysAddr::new(high + 0x8000), PAGE + 1, Direction::ToDevice),
        Err(DmaError::PoolExhausted)
    );
    assert_eq!(
        dma.map(PhysAddr::new(high), 5 * PAGE, Direction::ToDevice),
        Err(DmaError::TooLarge)
    );
    assert_eq!((dma.live(), pool.free_slots()), (2, 1));
    // A scatter-gather list that does not fit is all or nothing.
    let mut sg = [
        SgEntry::new(PhysAddr::new(high + 0x9000), 16),
        SgEntry::new(PhysAddr::new(high + 0xa000), PAGE + 16),
    ];
    assert_eq!(
        dma.map_sg(&mut sg, Direction::ToDevice),
        Err(DmaError::PoolExhausted)
    );
    assert_eq!(sg.map(|e| e.dma), [None, None]);
    assert_eq!((dma.live(), pool.free_slots()), (2, 1));
    dma.unmap(a, 2 * PAGE).unwrap();
    // Slots 0, 1 and 3 free: the larger buffer first, or the first fit splits the hole.
    sg.reverse();
    dma.map_sg(&mut sg, Direction::ToDevice).unwrap();
    assert!(sg.iter().all(|e| e.dma.is_some_and(in_pool)));
    dma.unmap_sg(&mut sg).unwrap();
    assert_eq!(dma.unmap_sg(&mut sg), Ok(()), "nothing left to unmap");
    dma.unmap(b, PAGE).unwrap();
    assert_eq!(pool.free_slots(), 4);
}

#[test]
fn strict_sub_page_mode_gives_the_device_a_page_with_nothing_else_in_it() {
    let mem = HostHal::new();
    let (low, high) = low_and_high(&mem);
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let pool = pool_at(low, 8 * PAGE);
    // Stale data of an earlier bounce in the pool, and secrets around the buffer.
    fill(low, 8 * PAGE, 0xee);
    fill(high, PAGE, 0x5e);
    fill(high + 0x100, 0x40, 0x42);
    let cfg = Config {
        bounce: BouncePolicy::SubPage,
        ..Config::new((1 << 32) - 1)
    };
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, cfg)
        .unwrap()
        .with_pool(&pool)
        .unwrap();
    let addr = dma
        .map(PhysAddr::new(high + 0x100), 0x40, Direction::ToDevice)
        .unwrap();
    let page = DmaAddr(addr.0 & !(PAGE - 1));
    let seen = device_read(Some((&io, dom)), page, PAGE);
    let mut expected = vec![0; PAGE as usize];
    expected[0x100..0x140].fill(0x42);
    assert_eq!(seen, expected, "the buffer alone, the rest zero");
    // A whole-page buffer is mapped where it is.
    let whole = dma
        .map(PhysAddr::new(high), PAGE, Direction::ToDevice)
        .unwrap();
    assert_eq!(landing(Some((&io, dom)), whole.0), high);
    dma.unmap(addr, 0x40).unwrap();
    dma.unmap(whole, PAGE).unwrap();
    assert_eq!(pool.free_slots(), 8);
}

#[test]
fn a_non_coherent_device_gets_cache_maintenance_and_no_coherent_memory() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let cfg = Config {
        coherent: false,
        ..Config::new(u64::MAX)
    };
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, cfg).unwrap();
    let buf = PhysAddr::new(0x7000);
    let to = dma.map(buf, 64, Direction::ToDevice).unwrap();
    let from = dma.map(buf, 64, Direction::FromDevice).unwrap();
    assert_eq!((hal.cleans(), hal.invalidations()), (2, 0));
    dma.sync_for_cpu(to, 64).unwrap();
    dma.sync_for_cpu(from, 64).unwrap();
    assert_eq!(hal.invalidations(), 1, "only where the device writes");
    dma.sync_for_device(to, 64).unwrap();
    assert_eq!(hal.cleans(), 3);
    dma.unmap(to, 64).unwrap();
    dma.unmap(from, 64).unwrap();
    assert_eq!((hal.cleans(), hal.invalidations()), (3, 2));
    assert_eq!(dma.alloc_coherent(64).err(), Some(DmaError::NotCoherent));
}

#[test]
fn coherent_memory_is_zeroed_reachable_and_freed_once() {
    let mem = HostHal::new();
    let (low, _) = low_and_high(&mem);
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, Config::new((1 << 28) - 1)).unwrap();
    let ring = dma.alloc_coherent(6000).unwrap();
    let ring_dma = ring.dma().0;
    assert_eq!(hal.live_frames(), 1);
    assert!(ring.dma().0 + 8192 <= 1 << 28 && ring.dma().0.is_multiple_of(8192));
    assert_eq!(
        landing(Some((&io, dom)), ring.dma().0),
        ring.phys().as_u64()
    );
    assert_eq!(bytes(ring.phys().as_u64(), 8192), vec![0; 8192]);
    // A streaming unmap of it is refused.
    assert_eq!(dma.unmap(ring.dma(), 8192), Err(DmaError::NotMapped));
    dma.free_coherent(ring).unwrap();
    assert_eq!((hal.live_frames(), dma.live()), (0, 0));
    assert_eq!(translate(&io, dom, ring_dma), None);

    // Without an IOMMU, memory the HAL gives beyond the mask comes from the pool instead.
    let insecure = InsecureNoIommu::enable(0).unwrap();
    let pool = pool_at(low, 4 * PAGE);
    fill(low, 4 * PAGE, 0xee);
    let cfg = Config::new(low + 4 * PAGE - 1);
    let direct = DmaDevice::no_iommu(&insecure, &hal, cfg)
        .unwrap()
        .with_pool(&pool)
        .unwrap();
    let c = direct.alloc_coherent(PAGE).unwrap();
    assert_eq!(c.dma().0, c.phys().as_u64());
    assert!(c.dma().0 + PAGE <= cfg.mask + 1, "{c:?} beyond the mask");
    assert_eq!(bytes(c.phys().as_u64(), PAGE), vec![0; PAGE as usize]);
    // Where the host heap put the HAL's frame decides which: a frame below the mask, or a slot.
    let in_pool = c.dma().0 >= low && c.dma().0 < low + 4 * PAGE;
    let expected = if in_pool { (0, 3) } else { (1, 4) };
    assert_eq!((hal.live_frames(), pool.free_slots()), expected);
    // Given to the wrong handle: refused and handed back.
    let (c, e) = dma.free_coherent(c).unwrap_err();
    assert_eq!(e, DmaError::NotMapped);
    direct.free_coherent(c).unwrap();
    assert_eq!(pool.free_slots(), 4);
}

#[test]
fn deferred_unmaps_keep_their_iovas_until_the_flush() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let hal = HostHal::new();
    let cfg = Config {
        unmap: UnmapPolicy::Deferred { batch: 4 },
        ..Config::new(u64::MAX)
    };
    let dma = DmaDevice::paging(&io, OWNER, dom, &hal, cfg).unwrap();
    let map = |i: u64| {
        dma.map(PhysAddr::new(i << 12), PAGE, Direction::ToDevice)
            .unwrap()
    };
    let first: Vec<DmaAddr> = (0..3).map(map).collect();
    for &a in &first {
        dma.unmap(a, PAGE).unwrap();
        // Unmapped at once in the table: the next DMA would miss (after the invalidation).
        assert_eq!(translate(&io, dom, a.0), None);
    }
    assert_eq!(dma.pending_unmaps(), 3);
    // Their IOVAs are not handed out again before the flush.
    let again: Vec<DmaAddr> = (3..6).map(map).collect();
    assert!(
        again.iter().all(|a| !first.contains(a)),
        "{first:?} {again:?}"
    );
    // The fourth unmap fills the batch and flushes it.
    dma.unmap(again[0], PAGE).unwrap();
    assert_eq!(dma.pending_unmaps(), 0);
    dma.unmap(again[1], PAGE).unwrap();
    assert_eq!(dma.pending_unmaps(), 1);
    dma.flush().unwrap();
    assert_eq!(dma.pending_unmaps(), 0);
    dma.unmap(again[2], PAGE).unwrap();
    drop(dma);
    assert!(again.iter().all(|a| translate(&io, dom, a.0).is_none()));
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    /// Map buffer slot `slot` at `offset` for `len` bytes.
    Map {
        slot: usize,
        offset: u64,
        len: u64,
        dir: u8,
    },
    /// The device writes `byte` over the live mapping `pick` (modulo the live count).
    DeviceWrites { pick: usize, byte: u8 },
    /// The CPU writes `byte` over the buffer of live mapping `pick`, then syncs for the device.
    CpuWrites { pick: usize, byte: u8 },
    /// Sync for the CPU.
    SyncCpu { pick: usize },
    /// Unmap.
    Unmap { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..SLOTS, 0..PAGE, 1..3 * PAGE, 0..3u8).prop_map(|(slot, offset, len, dir)| Op::Map {
            slot,
            offset,
            len,
            dir
        }),
        (any::<usize>(), 1..=255u8).prop_map(|(pick, byte)| Op::DeviceWrites { pick, byte }),
        (any::<usize>(), 1..=255u8).prop_map(|(pick, byte)| Op::CpuWrites { pick, byte }),
        any::<usize>().prop_map(|pick| Op::SyncCpu { pick }),
        any::<usize>().prop_map(|pick| Op::Unmap { pick }),
    ]
}

/// Buffer slots of 16 KiB in the high megabyte: one live mapping per slot at a time.
const SLOTS: usize = 16;

/// One live mapping as the model knows it.
#[derive(Debug)]
struct Live {
    slot: usize,
    buf: u64,
    len: u64,
    dir: Direction,
    addr: DmaAddr,
    /// What the CPU must read after the next sync or unmap (the device wrote it).
    device_wrote: Option<u8>,
}

fn direction(d: u8) -> Direction {
    [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ][d as usize % 3]
}

/// Runs `ops` against a handle of configuration `setup` (0: paging, strict sub-page bouncing;
/// 1: paging, deferred unmaps; 2: identity, bounce beyond the mask; 3: no IOMMU, bounce-only).
fn run_model(setup: u8, ops: &[Op]) -> Result<(), TestCaseError> {
    let mem = HostHal::new();
    let (low, high) = low_and_high(&mem);
    let mut io: Io = Iommu::new();
    let dom = domain(&mut io);
    let mut mock = Iommu::new();
    let u = mock.add_unit(MockUnit::new(true, &[3]));
    let dev = mock.add_device(u, DeviceId(3), GroupId(3)).unwrap();
    mock.allow_unsafe_interrupts(true);
    mock.claim(dev, OWNER).unwrap();
    mock.allow_identity(true);
    mock.attach(dev, OWNER, Target::Identity).unwrap();
    let insecure = InsecureNoIommu::enable(0).unwrap();
    let hal = HostHal::new();
    let pool = pool_at(low, 1 << 20);
    let mask = low + (1 << 20) - 1;
    let cfg = |bounce, unmap| Config {
        bounce,
        unmap,
        ..Config::new(mask)
    };
    let strict = UnmapPolicy::Strict;
    let dma = match setup {
        0 => DmaDevice::paging(&io, OWNER, dom, &hal, cfg(BouncePolicy::SubPage, strict)),
        1 => DmaDevice::paging(
            &io,
            OWNER,
            dom,
            &hal,
            cfg(BouncePolicy::IfNeeded, UnmapPolicy::Deferred { batch: 3 }),
        ),
        2 => DmaDevice::identity(&mock, dev, OWNER, &hal, cfg(BouncePolicy::IfNeeded, strict)),
        _ => DmaDevice::no_iommu(&insecure, &hal, cfg(BouncePolicy::Always, strict)),
    }
    .unwrap()
    .with_pool(&pool)
    .unwrap();
    let through = |a: DmaAddr| landing((setup <= 1).then_some((&io, dom)), a.0);
    let mut live: Vec<Live> = Vec::new();
    for op in ops {
        match *op {
            Op::Map {
                slot,
                offset,
                len,
                dir,
            } => {
                if live.iter().any(|l| l.slot == slot) {
                    continue;
                }
                let buf = high + slot as u64 * 4 * PAGE + offset;
                fill(buf, len, slot as u8 + 1);
                let dir = direction(dir);
                let addr = dma.map(PhysAddr::new(buf), len, dir).unwrap();
                prop_assert!(addr.0 + len <= mask + 1, "{addr:?} beyond the mask");
                if dir.device_reads() {
                    let seen: Vec<u8> = (0..len)
                        .map(|i| bytes(through(DmaAddr(addr.0 + i)), 1)[0])
                        .collect();
                    prop_assert_eq!(seen, vec![slot as u8 + 1; len as usize]);
                }
                live.push(Live {
                    slot,
                    buf,
                    len,
                    dir,
                    addr,
                    device_wrote: None,
                });
            }
            Op::DeviceWrites { pick, byte } if !live.is_empty() => {
                let l = live.len();
                let m = &mut live[pick % l];
                if m.dir.device_writes() {
                    for i in 0..m.len {
                        fill(through(DmaAddr(m.addr.0 + i)), 1, byte);
                    }
                    m.device_wrote = Some(byte);
                }
            }
            Op::CpuWrites { pick, byte } if !live.is_empty() => {
                let l = live.len();
                let m = &mut live[pick % l];
                if m.dir == Direction::ToDevice {
                    fill(m.buf, m.len, byte);
                    dma.sync_for_device(m.addr, m.len).unwrap();
                    let seen: Vec<u8> = (0..m.len)
                        .map(|i| bytes(through(DmaAddr(m.addr.0 + i)), 1)[0])
                        .collect();
                    prop_assert_eq!(seen, vec![byte; m.len as usize]);
                }
            }
            Op::SyncCpu { pick } if !live.is_empty() => {
                let l = live.len();
                let m = &mut live[pick % l];
                dma.sync_for_cpu(m.addr, m.len).unwrap();
                if let Some(b) = m.device_wrote.take() {
                    prop_assert_eq!(bytes(m.buf, m.len), vec![b; m.len as usize]);
                }
            }
            Op::Unmap { pick } if !live.is_empty() => {
                let l = live.len();
                let m = live.swap_remove(pick % l);
                dma.unmap(m.addr, m.len).unwrap();
                prop_assert_eq!(dma.unmap(m.addr, m.len), Err(DmaError::NotMapped));
                if let Some(b) = m.device_wrote {
                    prop_assert_eq!(bytes(m.buf, m.len), vec![b; m.len as usize]);
                }
            }
            _ => {}
        }
        // No device address handed out twice while live: the pages behind them are disjoint.
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .map(|l| {
                let (first, span) = pages(l.addr.0, l.len).unwrap();
                (first, first + span)
            })
            .collect();
        spans.sort();
        prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:?}");
        prop_assert_eq!(dma.live(), live.len());
    }
    for m in live.drain(..) {
        dma.unmap(m.addr, m.len).unwrap();
    }
    dma.flush().unwrap();
    prop_assert_eq!(pool.free_slots(), pool.slots(), "every slot back");
    prop_assert_eq!(hal.live_frames(), 0);
    Ok(())
}

proptest! {
    #[test]
    fn map_sync_unmap_sequences_match_the_model(
        setup in 0..4u8,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run_model(setup, &ops)?;
    }
}
