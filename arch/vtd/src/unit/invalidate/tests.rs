//! Host tests of the batch and of the flush planner: blocks per range, the MAMV limit, the
//! threshold for a domain-selective flush, descriptor counts.

extern crate std;
use std::vec::Vec;

use super::*;
use iommu::addr::Iova;

use crate::caps::Agaw;
use crate::unit::agaw_of;

fn iova(a: u64) -> Iova {
    Iova::new(a)
}

#[test]
fn a_batch_keeps_what_fits() {
    let mut b = Batch::new();
    for _ in 0..FLUSH_THRESHOLD + 3 {
        b.push(Descriptor::ContextCache(ContextCacheScope::Global));
    }
    assert_eq!(b.iter().len(), FLUSH_THRESHOLD + 2);
    assert!(b.overflowed);
    assert_eq!(agaw_of(2), Ok(Agaw::Level4));
    assert!(agaw_of(7).is_err());
}

fn limits(mamv: u8, threshold: usize) -> FlushLimits {
    FlushLimits {
        page_selective: true,
        mamv,
        threshold,
    }
}

fn blocks(plan: &FlushPlan<'_>) -> Vec<(u64, u8)> {
    plan.blocks().map(|b| (b.addr().as_u64(), b.am())).collect()
}

#[test]
fn mask_covers_each_range_with_one_aligned_block() {
    // One page: pages 1..=1 differ in no bit → AM 0.
    let r = [IovaRange::new(iova(0x1000), 0x1000)];
    let plan = plan_flush(&r, limits(18, 64));
    assert_eq!(blocks(&plan), [(0x1000, 0)]);
    // Pages 3 and 4 differ in bits 2:0 → the 8-page block at 0 (AM 3).
    let r = [IovaRange::new(iova(0x3000), 0x2000)];
    assert_eq!(blocks(&plan_flush(&r, limits(18, 64))), [(0, 3)]);
    // A 2 MiB aligned range: AM 9.
    let r = [IovaRange::new(iova(0x20_0000), 0x20_0000)];
    assert_eq!(blocks(&plan_flush(&r, limits(18, 64))), [(0x20_0000, 9)]);
    // An unaligned byte range inside one page still names that page.
    let r = [IovaRange::new(iova(0x5123), 8)];
    assert_eq!(blocks(&plan_flush(&r, limits(18, 64))), [(0x5000, 0)]);
}

#[test]
fn mask_is_limited_by_mamv() {
    // 16 pages with MAMV 2: four 4-page blocks.
    let r = [IovaRange::new(iova(0), 0x10000)];
    let plan = plan_flush(&r, limits(2, 64));
    assert_eq!(plan.descriptor_count(), 4);
    assert_eq!(
        blocks(&plan),
        [(0, 2), (0x4000, 2), (0x8000, 2), (0xc000, 2)]
    );
    // Pages 3..=5 with MAMV 1: covering block would be AM 3; tiles of 2 pages from page 2.
    let r = [IovaRange::new(iova(0x3000), 0x3000)];
    assert_eq!(
        blocks(&plan_flush(&r, limits(1, 64))),
        [(0x2000, 1), (0x4000, 1)]
    );
}

#[test]
fn threshold_and_capabilities_pick_domain_selective() {
    let r = [IovaRange::new(iova(0), 0x10000)];
    assert_eq!(plan_flush(&r, limits(2, 3)), FlushPlan::Domain);
    assert_eq!(plan_flush(&r, limits(2, 4)).descriptor_count(), 4);
    let no_psi = FlushLimits {
        page_selective: false,
        mamv: 18,
        threshold: 64,
    };
    assert_eq!(plan_flush(&r, no_psi), FlushPlan::Domain);
    assert_eq!(
        plan_flush(&[IovaRange::new(iova(0x1000), 0)], limits(18, 64)),
        FlushPlan::Nothing
    );
    assert_eq!(plan_flush(&[], limits(18, 64)).descriptor_count(), 0);
    // QEMU: PSI (bit 39), MAMV 18 (bits 53:48).
    let qemu = FlushLimits::for_unit(Capability(1 << 39 | 18 << 48), 32);
    assert_eq!(
        qemu,
        FlushLimits {
            page_selective: true,
            mamv: 18,
            threshold: 32
        }
    );
}

#[test]
fn plan_descriptors_and_counts() {
    // Three scattered single pages and one 4-page run: 4 descriptors, then one wait per
    // batch in the queue.
    let r = [
        IovaRange::new(iova(0x1000), 0x1000),
        IovaRange::new(iova(0x10_0000), 0x1000),
        IovaRange::new(iova(0x20_0000), 0x4000),
        IovaRange::new(iova(0x7000), 0x800),
    ];
    let plan = plan_flush(&r, limits(18, 8));
    let dom = Did::new(4);
    let descs: Vec<_> = plan
        .iotlb_descriptors(dom, Drain::default(), false)
        .collect();
    assert_eq!(
        plan.iotlb_descriptors(dom, Drain::default(), false).len(),
        4
    );
    assert_eq!(descs.len(), 4);
    assert_eq!(
        descs[2],
        Descriptor::Iotlb {
            scope: IotlbScope::Pages {
                domain: dom,
                block: PageBlock::new(iova(0x20_0000), 2).unwrap(),
                leaf_only: false,
            },
            drain: Drain::default(),
        }
    );
    // Over the threshold: one domain-selective descriptor.
    let plan = plan_flush(&r, limits(18, 3));
    let descs: Vec<_> = plan
        .iotlb_descriptors(dom, Drain::default(), false)
        .collect();
    assert_eq!(
        descs,
        [Descriptor::Iotlb {
            scope: IotlbScope::Domain(dom),
            drain: Drain::default()
        }]
    );
    let p = Pasid::new(9).unwrap();
    let descs: Vec<_> = plan.pasid_iotlb_descriptors(dom, p, true).collect();
    assert_eq!(
        descs,
        [Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
            domain: dom,
            pasid: p
        })]
    );
}
