//! End to end through the simulated unit (`iommu_vtd::sim`): map + unmap pairs of 4 KiB through
//! the object model, `Iommu<&VtdUnit>`, on a scalable-mode unit with an invalidation queue. Each
//! unmap writes the second-stage table, queues a page-selective IOTLB invalidation and a wait
//! descriptor, and spins until the simulator's responder thread has consumed them and written
//! the wait's status: the whole data path a hypervisor's unmap takes, with a thread playing the
//! hardware. In one run:
//! - 1 thread;
//! - 2 threads, each on its own domain (one unit, so one queue);
//! - 2 threads on one domain, 1 GiB + 2 MiB apart (stripes under different locks);
//! - the foil: the object model behind a `spin::Mutex` held around each call, 1 and 2 threads;
//! - pure arithmetic on 1 and 2 threads, with the responder running: what the machine gives two
//!   threads while the simulated hardware takes its share.
//!
//! The responder polls the registers on a thread of its own: with `n` benchmark threads,
//! `n + 1` threads want a core. On a 2-core machine one benchmark thread already fills it.
//!
//! ```text
//! cargo bench -p iommu-vtd --bench iommufd
//! ```
//!
//! Criterion reports the time per pair, all threads together (throughput: pairs per second).
//! After its report, the bench prints pairs per second of every case, each the median of five
//! rounds taken in turn so that every case sees the same noise, the ratio to one thread, and
//! the invalidation descriptors the queue carried per unmap.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use iommu::hal::host::HostHal;
use iommu::iommufd::bench::{cases_4k, load, model, summary};
use iommu_vtd::sim::{SimulatedUnit, CAP, ECAP_SCALABLE};
use iommu_vtd::{Mode, QueueSize, VtdUnit};

const G1: u64 = 0x4000_0000;
const BASE: u64 = 16 * G1;
const IA_BITS: u32 = 48;

fn main() {
    let sim = SimulatedUnit::without_log(CAP, ECAP_SCALABLE);
    let regs = sim.registers();
    let hal = HostHal::new();
    let unit = match VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE) {
        Ok(u) => u,
        Err(e) => panic!("bring-up: {e}"),
    };
    let (io, doms) = model(&unit, 2, IA_BITS);
    let (a, b) = (doms[0], doms[1]);
    let (foil, foil_doms) = model(&unit, 1, IA_BITS);
    let foil = spin::Mutex::new(foil);
    let f = foil_doms[0];
    let cases = cases_4k(&io, &foil, [a, b], f, BASE);
    for case in &cases {
        case.warm_up();
    }

    let load_before = load();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("vtd_sim_map_unmap_invalidate");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for case in &cases {
        group.bench_function(case.name, |b| b.iter_custom(|n| case.run(n)));
    }
    group.finish();
    c.final_summary();

    if std::env::args().any(|a| a == "--bench") {
        let (descriptors, batches) = unit.invalidations();
        summary(
            &cases,
            "map + unmap + IOTLB invalidation through the simulated unit's queue",
            &load_before,
        );
        let (d2, b2) = unit.invalidations();
        println!(
            "  queue: {:.2} descriptors per batch (waits included) during the summary",
            (d2 - descriptors) as f64 / (b2 - batches).max(1) as f64
        );
    }
}
