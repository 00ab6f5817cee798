//! The object model's data path on one and two threads: map + unmap pairs of 4 KiB through
//! `iommu::iommufd::Iommu`, over a unit whose domains are real VMSAv8-64 stage-1 tables in host
//! memory, and whose unmaps (in the end-to-end cases) invalidate through the real lock-free
//! command queue, consumed by the simulated SMMU on a thread of its own.
//!
//! `cargo bench -p iommu-smmuv3 --bench iommufd` prints operations per second and the ratios to
//! one thread; each figure is the median of five runs of about 0.4 s. Cases:
//! - one thread;
//! - (a) two threads, each on a domain of its own;
//! - (b) two threads on one domain, 1 GiB apart (different IOVA stripes, different locks);
//! - (b') two threads on one domain in the same 2 MiB stripe (one lock, shared);
//! - the foil: two threads calling through one `spin::Mutex<Iommu>`.

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{DomainId, Iommu, Layout, OwnerId, Region, UnitId};
use iommu::pagetable::{Prot, VmsaStage1};
use iommu::unit::host::TableUnit;
use iommu::unit::{Stage, UnitError};
use iommu_smmuv3::command::Command;
mod common;

use common::{Consumer, Queue};

type Unit = TableUnit<VmsaStage1>;

const OWNER: OwnerId = OwnerId(1);
const PAGE: u64 = 0x1000;
const IA_BITS: u32 = 48;

/// A unit of real page tables; with a queue, each unmap also issues CMD_TLBI_NH_VA + CMD_SYNC
/// and waits for the sync, as `SmmuUnit` does.
fn unit(queue: Option<&'static Queue>) -> Unit {
    let unit = TableUnit::vmsa_stage1();
    let Some(queue) = queue else {
        return unit;
    };
    unit.with_invalidation(move |iova, _len| {
        let tlbi = Command::TlbiNhVa {
            vmid: 0,
            asid: 1,
            addr: iova.as_u64(),
            leaf: true,
            range: None,
        };
        let raw = tlbi
            .encode()
            .map_err(|_| UnitError::Unsupported("encoding"))?;
        queue
            .submit_and_sync(&[raw])
            .map_err(|_| UnitError::Unsupported("queue"))
            .map(drop)
    })
}

/// A system of one unit with `domains` empty paging domains.
fn system(queue: Option<&'static Queue>, domains: usize) -> (Iommu<Unit>, Vec<DomainId>) {
    let mut io = Iommu::new();
    let u: UnitId = io.add_unit(unit(queue));
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let ids = (0..domains)
        .map(
            |_| match io.alloc_domain(OWNER, u, Stage::First, IA_BITS, &layout) {
                Ok(d) => d,
                Err(e) => panic!("{e}"),
            },
        )
        .collect();
    (io, ids)
}

/// How the threads reach the model.
#[derive(Clone, Copy)]
enum Access<'a> {
    Shared(&'a Iommu<Unit>),
    Locked(&'a spin::Mutex<Iommu<Unit>>),
}

impl Access<'_> {
    fn pair(self, dom: DomainId, iova: u64) {
        let go = |io: &Iommu<Unit>| {
            let at = Iova::new(iova);
            if let Err(e) = io.map(
                OWNER,
                dom,
                at,
                PhysAddr::new(0x8000_0000),
                PAGE,
                Prot::READ_WRITE,
            ) {
                panic!("map {iova:#x}: {e}");
            }
            match io.unmap(OWNER, dom, at, PAGE) {
                Ok(PAGE) => {}
                other => panic!("unmap {iova:#x}: {other:?}"),
            }
        };
        match self {
            Self::Shared(io) => go(io),
            Self::Locked(m) => go(&m.lock()),
        }
    }
}

/// Pairs per second of `threads` threads, thread `t` on domain `doms[t]` at IOVAs from
/// `bases[t]` (cycling through 16 pages), over about 0.4 s.
fn rate(access: Access<'_>, doms: &[DomainId], bases: &[u64]) -> f64 {
    let threads = doms.len();
    let mut pairs = 2000u64;
    loop {
        let barrier = Barrier::new(threads + 1);
        // The scope returns once every thread has finished: timed from the common start.
        let start = thread::scope(|s| {
            for t in 0..threads {
                let (dom, base, barrier) = (doms[t], bases[t], &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..pairs {
                        access.pair(dom, black_box(base + (i % 16) * PAGE));
                    }
                });
            }
            barrier.wait();
            Instant::now()
        });
        let t = start.elapsed().as_secs_f64();
        if t >= 0.4 || pairs >= 1 << 28 {
            return (pairs * threads as u64) as f64 / t;
        }
        pairs *= 2;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The five cases on one kind of unit; prints a table row per case.
fn cases(title: &str, queue: Option<&'static Queue>) {
    const GIB: u64 = 1 << 30;
    let (one, d1) = system(queue, 1);
    let (two, d2) = system(queue, 2);
    let (alone, dl) = system(queue, 1);
    let (locked, dl) = (spin::Mutex::new(alone), dl[0]);
    let runs = |f: &dyn Fn() -> f64| median((0..5).map(|_| f()).collect());
    let single = runs(&|| rate(Access::Shared(&one), &d1, &[GIB]));
    let rows = [
        ("one thread", single),
        (
            "(a) two threads, two domains",
            runs(&|| rate(Access::Shared(&two), &d2, &[GIB, GIB])),
        ),
        (
            "(b) two threads, one domain, 1 GiB apart",
            runs(&|| rate(Access::Shared(&one), &[d1[0], d1[0]], &[GIB, 2 * GIB])),
        ),
        (
            "(b') two threads, one domain, one 2 MiB stripe",
            runs(&|| {
                rate(
                    Access::Shared(&one),
                    &[d1[0], d1[0]],
                    &[GIB, GIB + 0x10_0000],
                )
            }),
        ),
        (
            "foil: two threads, spin::Mutex<Iommu>",
            runs(&|| rate(Access::Locked(&locked), &[dl, dl], &[GIB, 2 * GIB])),
        ),
    ];
    println!("\n{title}");
    println!("| case | pairs/s | vs one thread |");
    println!("|---|---|---|");
    for (name, r) in rows {
        println!("| {name} | {r:.0} | {:.2} |", r / single);
    }
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    cases("object model, map + unmap of 4 KiB, table only", None);
    let consumer = Consumer::start(8);
    cases(
        "object model, map + unmap of 4 KiB + TLBI + CMD_SYNC through the command queue (simulated SMMU thread)",
        Some(consumer.queue),
    );
    drop(consumer);
}
