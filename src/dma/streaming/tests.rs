//! Streaming mappings against the object model over a table-only unit: the device address
//! translates to the buffer, lies below the mask, and every refusal changes nothing.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::iommufd::{Region, Reserved, ReservedKind};
use crate::unit::host::TableUnit;
use crate::unit::Stage;

const OWNER: OwnerId = OwnerId(1);

fn no_cpu() -> usize {
    0
}

fn domain(io: &mut Iommu<TableUnit<crate::pagetable::VtdSecondStage>>) -> DomainId {
    let u = io.add_unit(TableUnit::vtd_second_stage());
    let windows = [Region {
        start: 0x1000,
        last: (1 << 39) - 1,
    }];
    let reserved = [Reserved {
        region: Region {
            start: 0xfee0_0000,
            last: 0xfeef_ffff,
        },
        kind: ReservedKind::MsiDoorbell,
    }];
    io.alloc_domain(
        OWNER,
        u,
        Stage::Second,
        48,
        &Layout {
            windows: &windows,
            reserved: &reserved,
        },
    )
    .unwrap()
}

#[test]
fn a_mapped_buffer_translates_below_the_mask_and_unmaps_once() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    // edu's default mask: 28 bits.
    let dma = Streaming::new(&io, OWNER, dom, (1 << 28) - 1, 1, no_cpu).unwrap();
    let buf = PhysAddr::new(0x1_2345_6789);
    let addr = dma.map(buf, 100, Direction::ToDevice).unwrap();
    assert!(addr.0 + 100 <= 1 << 28, "{addr:?} beyond the mask");
    assert_eq!(addr.0 & 0xfff, 0x789, "the offset in the page is kept");
    assert_eq!(io.iova_to_phys(OWNER, dom, Iova::new(addr.0)).unwrap(), buf);
    // A wrong length, then the right one, then again.
    assert_eq!(dma.unmap(addr, 8192), Err(DmaError::NotMapped));
    assert_eq!(io.iova_to_phys(OWNER, dom, Iova::new(addr.0)).unwrap(), buf);
    dma.unmap(addr, 100).unwrap();
    assert_eq!(dma.unmap(addr, 100), Err(DmaError::NotMapped));
    assert!(io.iova_space(OWNER, dom).unwrap().is_empty());
}

#[test]
fn a_buffer_across_pages_maps_every_page_it_touches() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let dma = Streaming::new(&io, OWNER, dom, u64::MAX, 1, no_cpu).unwrap();
    let buf = PhysAddr::new(0x10_0ff0);
    let addr = dma.map(buf, 0x20, Direction::Bidirectional).unwrap();
    let next_page = Iova::new((addr.0 & !0xfff) + 0x1000);
    assert_eq!(
        io.iova_to_phys(OWNER, dom, next_page).unwrap(),
        PhysAddr::new(0x10_1000)
    );
    dma.unmap(addr, 0x20).unwrap();
}

#[test]
fn a_neighbours_mapping_survives_a_wrong_unmap() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    let dma = Streaming::new(&io, OWNER, dom, u64::MAX, 1, no_cpu).unwrap();
    let a = dma
        .map(PhysAddr::new(0x20_0000), 4096, Direction::FromDevice)
        .unwrap();
    let b = dma
        .map(PhysAddr::new(0x30_0000), 4096, Direction::FromDevice)
        .unwrap();
    // Top-down: b sits just below a; an unmap of b with a's page included is refused.
    assert_eq!(b.0 + 4096, a.0);
    assert_eq!(dma.unmap(b, 8192), Err(DmaError::NotMapped));
    assert!(io.iova_to_phys(OWNER, dom, Iova::new(a.0)).is_ok());
    dma.unmap(a, 4096).unwrap();
    dma.unmap(b, 4096).unwrap();
}

#[test]
fn bad_buffers_and_exhaustion_are_typed_errors_and_change_nothing() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    // A 13-bit mask: the window starts at 4 KiB, so one page fits below 8 KiB.
    let dma = Streaming::new(&io, OWNER, dom, 0x1fff, 1, no_cpu).unwrap();
    assert_eq!(
        dma.map(PhysAddr::new(0x1000), 0, Direction::ToDevice),
        Err(DmaError::ZeroLength)
    );
    assert_eq!(
        dma.map(PhysAddr::new(u64::MAX - 10), 100, Direction::ToDevice),
        Err(DmaError::WrapAround)
    );
    let one = dma
        .map(PhysAddr::new(0x5000), 4096, Direction::ToDevice)
        .unwrap();
    assert_eq!(one, DmaAddr(0x1000));
    assert_eq!(
        dma.map(PhysAddr::new(0x6000), 4096, Direction::ToDevice),
        Err(DmaError::Iova(IovaError::Exhausted))
    );
    assert_eq!(io.iova_space(OWNER, dom).unwrap().mappings().len(), 1);
    // Someone else's domain: refused by the model.
    assert!(matches!(
        Streaming::new(&io, OwnerId(2), dom, u64::MAX, 1, no_cpu),
        Err(DmaError::Model(crate::iommufd::Error::NotDomainOwner(_)))
    ));
    dma.unmap(one, 4096).unwrap();
}

#[test]
fn many_buffers_from_two_threads() {
    let mut io = Iommu::new();
    let dom = domain(&mut io);
    fn cpu() -> usize {
        THREAD_CPU.with(|c| c.get())
    }
    std::thread_local! {
        static THREAD_CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }
    let dma = Streaming::new(&io, OWNER, dom, u64::MAX, 2, cpu).unwrap();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let dma = &dma;
            s.spawn(move || {
                THREAD_CPU.with(|c| c.set(t));
                let mut live = Vec::new();
                for i in 0..2000u64 {
                    let phys = PhysAddr::new((t as u64 + 1) << 32 | i << 12);
                    let addr = dma.map(phys, 1 + i % 9000, Direction::ToDevice).unwrap();
                    live.push((addr, 1 + i % 9000));
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
    assert!(io.iova_space(OWNER, dom).unwrap().is_empty());
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
    let dom = io
        .alloc_domain(
            OWNER,
            u,
            Stage::First,
            39,
            &Layout {
                windows: &windows,
                reserved: &[],
            },
        )
        .unwrap();
    // The format itself refuses write-only.
    assert!(matches!(
        io.map(
            OWNER,
            dom,
            Iova::new(0x1000),
            PhysAddr::new(0),
            4096,
            Prot::WRITE
        ),
        Err(crate::iommufd::Error::Unit(UnitError::PageTable(
            PtError::UnsupportedPermissions
        )))
    ));
    let dma = Streaming::new(&io, OWNER, dom, u64::MAX, 1, no_cpu).unwrap();
    let addr = dma
        .map(PhysAddr::new(0x40_0000), 4096, Direction::FromDevice)
        .unwrap();
    assert_eq!(
        io.iova_to_phys(OWNER, dom, Iova::new(addr.0)).unwrap(),
        PhysAddr::new(0x40_0000)
    );
    dma.unmap(addr, 4096).unwrap();
}
