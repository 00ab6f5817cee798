//! The object model's data path on two CPUs: map + unmap pairs through [`Iommu::map`] and
//! [`Iommu::unmap`] (IOVA bookkeeping under the stripe locks, then the unit's page table written
//! without a lock), with a unit whose domains are real I/O page tables in host memory (VT-d
//! second-stage format; no invalidation: `arch/vtd/benches/iommufd.rs` adds the simulated unit's
//! queue). In one run:
//! - 1 thread;
//! - 2 threads, each on its own domain (they share only the read-only object tables);
//! - 2 threads on one domain: in stripes under different locks (1 GiB + 2 MiB apart), in stripes
//!   under one lock (exactly 1 GiB apart: 512 stripes, a multiple of the 64 locks), and in one
//!   stripe (same lock and same records);
//! - the foil: the same object model behind a `spin::Mutex` held around each call, 1 and 2
//!   threads, one domain, ranges 1 GiB + 2 MiB apart;
//! - 1 thread on a domain that sweeps the tables an unmap may have emptied at every such unmap
//!   ([`Iommu::set_sweep_threshold`](iommu::iommufd::Iommu::set_sweep_threshold) 1: its table
//!   memory always that of a fresh table), against the default of a sweep every 8th place;
//! - pure arithmetic on 1 and 2 threads: what the machine gives two threads at that moment, to
//!   read the scaling against.
//!
//! 4 KiB pairs for every case, 2 MiB pairs for the main ones.
//!
//! ```text
//! cargo bench -p iommu --bench iommufd
//! ```
//!
//! Criterion reports the time per pair, all threads together (throughput: pairs per second).
//! After its report, the bench prints pairs per second of every case, each the median of five
//! rounds taken in turn so that every case sees the same noise, with the ratio to one thread.

use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use iommu::iommufd::bench::{cases_4k, lane, load, model, summary, Case, Path, OWNER, SLOTS};
use iommu::pagetable::VtdSecondStage;
use iommu::unit::host::TableUnit;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// Where 4 KiB work happens; 2 MiB work uses other gigabytes, so no leaf table is in its way.
const BASE_4K: u64 = 16 * G1;
const BASE_2M: u64 = 32 * G1;
/// Input address bits of every domain.
const IA_BITS: u32 = 48;

/// A unit whose domains are VT-d second-stage tables in host memory and nothing else: no device
/// is attached, so unmap has nothing to invalidate and completes its gather at once.
fn unit() -> TableUnit<VtdSecondStage> {
    TableUnit::vtd_second_stage()
}

fn main() {
    let (io, doms) = model(unit(), 2, IA_BITS);
    let (a, b) = (doms[0], doms[1]);
    let (foil, foil_doms) = model(unit(), 1, IA_BITS);
    let foil = spin::Mutex::new(foil);
    let f = foil_doms[0];
    let (mut swept, swept_doms) = model(unit(), 1, IA_BITS);
    if let Err(e) = swept.set_sweep_threshold(OWNER, swept_doms[0], NonZeroUsize::MIN) {
        panic!("{e}");
    }
    let lanes_4k = |second: u64| vec![lane(a, BASE_4K), lane(a, BASE_4K + second)];
    // Thread 1's 2 MiB slots start past thread 0's (SLOTS stripes), so no lock is shared.
    let far_2m = G1 + SLOTS * M2;
    let mut cases = cases_4k(&io, &foil, [a, b], f, BASE_4K);
    let case = |name, baseline, size, path, lanes| Case {
        name,
        baseline,
        size,
        path,
        lanes,
    };
    cases.extend([
        case(
            "4k/one_domain_one_lock",
            "4k/one_thread",
            K4,
            Path::Direct(&io),
            lanes_4k(G1),
        ),
        case(
            "4k/one_domain_one_stripe",
            "4k/one_thread",
            K4,
            Path::Direct(&io),
            lanes_4k(SLOTS * K4),
        ),
        case(
            "4k/swept_every_unmap",
            "4k/one_thread",
            K4,
            Path::Direct(&swept),
            vec![lane(swept_doms[0], BASE_4K)],
        ),
        case(
            "2m/one_thread",
            "2m/one_thread",
            M2,
            Path::Direct(&io),
            vec![lane(a, BASE_2M)],
        ),
        case(
            "2m/two_domains",
            "2m/one_thread",
            M2,
            Path::Direct(&io),
            vec![lane(a, BASE_2M), lane(b, BASE_2M + far_2m)],
        ),
        case(
            "2m/one_domain_other_locks",
            "2m/one_thread",
            M2,
            Path::Direct(&io),
            vec![lane(a, BASE_2M), lane(a, BASE_2M + far_2m)],
        ),
        case(
            "2m/spin_mutex/2",
            "2m/one_thread",
            M2,
            Path::Locked(&foil),
            vec![lane(f, BASE_2M), lane(f, BASE_2M + far_2m)],
        ),
    ]);
    for case in &cases {
        case.warm_up();
    }

    let load_before = load();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("iommufd_map_unmap_pair");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500));
    for case in &cases {
        group.bench_function(case.name, |b| b.iter_custom(|n| case.run(n)));
    }
    group.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        summary(&cases, "map + unmap pairs through Iommu", &load_before);
    }
}
