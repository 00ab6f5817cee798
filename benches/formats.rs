//! Every table format of the engine against the `x86_64` crate's `OffsetPageTable` in the same
//! run: single map, single unmap and map+unmap pairs of one page (the format's granule), and
//! 256-page ranges mapped and unmapped in one call, in ns per page.
//!
//! ```text
//! cargo bench -p iommu --bench formats            # 3 processes × 21 interleaved rounds
//! cargo bench -p iommu --bench formats -- --test  # one short round (smoke)
//! ```
//!
//! Not criterion: eight formats times five cases would take long, and the ratios need the
//! format and the peer measured in the same moments, so each round measures every case of every
//! table once, interleaved (a round takes a few milliseconds), and the report gives the median
//! over rounds of the time and of the ratio to the peer's figure *in the same round*: this VM's
//! CPU speed drifts by up to 1.8× over seconds, which moves both sides of a round's ratio alike.
//! The whole measurement runs in three processes of its own (this program started again), and
//! the final table is the median of theirs: one process's heap addresses can make one table's
//! walks, or the peer's, up to 1.4× slower for its whole life (seen with the same binary), which
//! rounds inside that process cannot average away.

use std::hint::black_box;
use std::time::Instant;

use iommu::addr::{Iova, PhysAddr};
use iommu::hal::host::HostHal;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, FlushRange, Format, Gather, Granule, PageTable, Prot, VmsaConfig, VmsaStage1,
    VmsaStage2, VtdSecondStage, VtdSecondStageConfig, X86FirstStage, X86FirstStageConfig,
};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as X86Level4, PageTableFlags,
    PhysFrame, Size4KiB,
};
use x86_64::VirtAddr;

/// Pages each single-page case maps (then unmaps) per round, at consecutive addresses.
const PAGES: u64 = 16_384;
/// Pages of one range call, and range calls per round.
const RANGE: u64 = 256;
const RANGES: u64 = 64;
/// Where the work happens: above the first 16 GiB so no earlier mapping shares a table.
const BASE: u64 = 1 << 36;

/// ns per page for each case of one table.
#[derive(Clone, Copy, Default)]
struct Figures {
    map: f64,
    unmap: f64,
    pair: f64,
    range_map: f64,
    range_unmap: f64,
}

/// What the benchmark needs of a table: ours over any format, and the peer.
trait Table {
    fn page(&self) -> u64;
    fn map(&mut self, va: u64, len: u64);
    fn unmap(&mut self, va: u64, len: u64);

    /// One round of every case, compiled for each table type (its calls to `map` and `unmap`
    /// are direct, not through the trait object), so no table pays for dynamic dispatch.
    fn round(&mut self, pages: u64) -> Figures {
        round(self, pages)
    }
}

struct Ours<F: Format> {
    table: PageTable<F, &'static HostHal>,
}

impl<F: Format> Ours<F> {
    fn new(format: F) -> Self {
        let hal: &'static HostHal = Box::leak(Box::new(HostHal::new()));
        Self {
            table: PageTable::new(format, hal, Coherency::Coherent).expect("a table"),
        }
    }
}

impl<F: Format> Table for Ours<F> {
    fn page(&self) -> u64 {
        1 << self.table.format().granule_shift()
    }

    #[inline(always)]
    fn map(&mut self, va: u64, len: u64) {
        self.table
            .map(Iova::new(va), PhysAddr::new(va), len, Prot::READ_WRITE)
            .expect("map");
    }

    #[inline(always)]
    fn unmap(&mut self, va: u64, len: u64) {
        let mut g = Gather::new();
        self.table.unmap(Iova::new(va), len, &mut g).expect("unmap");
        // Pages inside tables that stay: nothing to free, no unsafe call.
        if let Err(g) = g.finish() {
            // SAFETY: host memory that nothing walks.
            unsafe { g.complete(self.table.hal()) };
        }
    }
}

/// The peer's frames: pre-allocated from the same host HAL.
struct Pool(Vec<u64>);

// SAFETY: every frame is a distinct, zeroed, 4K-aligned block the HAL handed out once.
unsafe impl FrameAllocator<Size4KiB> for Pool {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let f = self.0.pop()?;
        Some(PhysFrame::containing_address(x86_64::PhysAddr::new(f)))
    }
}

struct Peer {
    mapper: OffsetPageTable<'static>,
    pool: Pool,
}

impl Peer {
    fn new() -> Self {
        let hal: &'static HostHal = Box::leak(Box::new(HostHal::new()));
        let mut frames: Vec<u64> = (0..256)
            .map(|_| hal.alloc_frame(FrameSize::SIZE_4K).expect("frame").as_u64())
            .collect();
        frames.reverse();
        let l4: &'static mut X86Level4 = Box::leak(Box::new(X86Level4::new()));
        // SAFETY: with offset 0 every "physical" frame is a host pointer we own.
        let mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(0)) };
        Self {
            mapper,
            pool: Pool(frames),
        }
    }
}

impl Table for Peer {
    fn page(&self) -> u64 {
        4096
    }

    /// Page by page: the crate has no range call.
    #[inline(always)]
    fn map(&mut self, va: u64, len: u64) {
        for va in (va..va + len).step_by(4096) {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
            let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(va));
            let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
            // SAFETY: the frame is never accessed through the mapping.
            unsafe { self.mapper.map_to(page, frame, flags, &mut self.pool) }
                .expect("map")
                .ignore();
        }
    }

    #[inline(always)]
    fn unmap(&mut self, va: u64, len: u64) {
        for va in (va..va + len).step_by(4096) {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
            self.mapper.unmap(page).expect("unmap").1.ignore();
        }
    }
}

/// One round of every case on `t`; tables stay allocated between cases (as in a live domain).
fn round<T: Table + ?Sized>(t: &mut T, pages: u64) -> Figures {
    let p = t.page();
    let ns = |t0: Instant, n: u64| t0.elapsed().as_nanos() as f64 / n as f64;
    let t0 = Instant::now();
    for i in 0..pages {
        t.map(black_box(BASE + i * p), p);
    }
    let map = ns(t0, pages);
    let t0 = Instant::now();
    for i in 0..pages {
        t.unmap(black_box(BASE + i * p), p);
    }
    let unmap = ns(t0, pages);
    let t0 = Instant::now();
    // The pair goes round 64 pages: at one fixed page every entry of the walk sits at the same
    // offset modulo 4 KiB as the store just before it, a false store-to-load dependency that
    // made one side or the other 1.5× slower in some processes and not in others.
    for i in 0..pages {
        let va = BASE + (i % 64) * p;
        t.map(black_box(va), p);
        t.unmap(black_box(va), p);
    }
    let pair = ns(t0, pages);
    let ranges = (pages / 64).clamp(1, RANGES);
    let t0 = Instant::now();
    for r in 0..ranges {
        t.map(black_box(BASE + r * RANGE * p), RANGE * p);
    }
    let range_map = ns(t0, ranges * RANGE);
    let t0 = Instant::now();
    for r in 0..ranges {
        t.unmap(black_box(BASE + r * RANGE * p), RANGE * p);
    }
    let range_unmap = ns(t0, ranges * RANGE);
    Figures {
        map,
        unmap,
        pair,
        range_map,
        range_unmap,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Set in the processes that measure; the first process only starts them and sums up.
const CHILD: &str = "IOMMU_FORMATS_BENCH_CHILD";
/// Processes that measure.
const PROCESSES: usize = 3;

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    if !smoke && std::env::var_os(CHILD).is_none() {
        return across_processes();
    }
    let (rounds, pages) = if smoke { (1, 64) } else { (21, PAGES) };
    let vmsa = |granule| VmsaConfig {
        granule,
        input_bits: 48,
        output_bits: 48,
    };
    let vtd = VtdSecondStageConfig {
        sagaw: 0b100,
        sllps: 0b11,
        address_width: 48,
        output_width: 48,
        snoop_control: false,
    };
    let mut tables: Vec<(&str, Box<dyn Table>)> = vec![
        ("x86_64 crate (peer)", Box::new(Peer::new())),
        (
            "VT-d second stage",
            Box::new(Ours::new(VtdSecondStage::new(vtd).expect("format"))),
        ),
        (
            "x86-64 first stage",
            Box::new(Ours::new(
                X86FirstStage::new(X86FirstStageConfig::four_level(48)).expect("format"),
            )),
        ),
    ];
    for (name, g) in [
        ("VMSA stage 1, 4K", Granule::Size4K),
        ("VMSA stage 1, 16K", Granule::Size16K),
        ("VMSA stage 1, 64K", Granule::Size64K),
    ] {
        tables.push((
            name,
            Box::new(Ours::new(VmsaStage1::new(vmsa(g)).expect("format"))),
        ));
    }
    for (name, g) in [
        ("VMSA stage 2, 4K", Granule::Size4K),
        ("VMSA stage 2, 16K", Granule::Size16K),
        ("VMSA stage 2, 64K", Granule::Size64K),
    ] {
        tables.push((
            name,
            Box::new(Ours::new(VmsaStage2::new(vmsa(g)).expect("format"))),
        ));
    }
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); tables.len()];
    let steal = iommu::iommufd::bench::Steal::now();
    for _ in 0..rounds {
        for (i, (_, t)) in tables.iter_mut().enumerate() {
            all[i].push(t.round(pages));
        }
    }
    let med = |i: usize, f: fn(&Figures) -> f64| median(all[i].iter().map(f).collect());
    // The ratio to the peer within each round, then the median over rounds.
    let ratio = |i: usize, f: fn(&Figures) -> f64| {
        median(
            all[i]
                .iter()
                .zip(&all[0])
                .map(|(x, p)| f(x) / f(p))
                .collect(),
        )
    };
    type Case = (&'static str, fn(&Figures) -> f64);
    let cases: [Case; 5] = [
        ("map", |f| f.map),
        ("unmap", |f| f.unmap),
        ("pair", |f| f.pair),
        ("range map", |f| f.range_map),
        ("range unmap", |f| f.range_unmap),
    ];
    println!(
        "ns per page (median of {rounds} rounds; load average {}; CPU time stolen by the host \
         meanwhile {}), and the median of the rounds' ratios to the peer's 4K figure:",
        iommu::iommufd::bench::load(),
        steal.since()
    );
    print!("{:<22}", "table");
    for (c, _) in cases {
        print!(" | {c:>18}");
    }
    println!();
    for (i, (name, _)) in tables.iter().enumerate() {
        print!("{name:<22}");
        for (_, f) in cases {
            print!(" | {:>8.2} ({:>5.2}x)", med(i, f), ratio(i, f));
        }
        println!();
    }
    // For the first process: one line per cell.
    for (i, (name, _)) in tables.iter().enumerate() {
        for (c, (case, f)) in cases.iter().enumerate() {
            println!(
                "cell\t{name}\t{c}\t{case}\t{}\t{}",
                med(i, *f),
                ratio(i, *f)
            );
        }
    }
    churn(rounds, if smoke { 16 } else { CYCLES }, vtd);
}

/// Runs the measurement in [`PROCESSES`] processes, one after the other, shows each one's
/// table, and then the median of their figures with the range of their ratios.
fn across_processes() {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Per (table, case index, case), in the order first seen: (ns, ratio) of each process.
    type Key = (String, usize, String);
    let mut cells: Vec<(Key, Vec<(f64, f64)>)> = Vec::new();
    for p in 0..PROCESSES {
        let out = std::process::Command::new(&exe)
            .args(&args)
            .env(CHILD, "1")
            .output()
            .expect("a measuring process");
        assert!(out.status.success(), "measuring process {p} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        println!("process {}:", p + 1);
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if let ["cell", table, c, case, ns, ratio] = f[..] {
                let key = (table.to_string(), c.parse().unwrap_or(0), case.to_string());
                let v = (
                    ns.parse().unwrap_or(f64::NAN),
                    ratio.parse().unwrap_or(f64::NAN),
                );
                match cells.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, all)) => all.push(v),
                    None => cells.push((key, vec![v])),
                }
            } else {
                println!("{line}");
            }
        }
    }
    println!(
        "\nmedian of the {PROCESSES} processes: ns per page (the peer's ratio to its own figure \
         is 1), ratio to the peer, [lowest, highest ratio of a process]:"
    );
    let mut table = "";
    for ((name, _, case), v) in &cells {
        if name != table {
            print!("\n{name:<22}");
            table = name;
        }
        let ns = median(v.iter().map(|x| x.0).collect());
        let ratios: Vec<f64> = v.iter().map(|x| x.1).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        print!(
            " | {case} {ns:.2} ({:.2}x) [{lo:.2}, {hi:.2}]",
            median(ratios.clone())
        );
    }
    println!();
}

/// Cycles of the churn case per round.
const CYCLES: u64 = 2_000;

/// A flush with no hardware behind it (host memory that nothing walks).
struct NoWalker;

// SAFETY: no IOMMU walks these tables.
unsafe impl FlushRange for NoWalker {
    type Error = iommu::pagetable::Error;
    fn flush(&self, _: Iova, _: u64, _: bool) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A 2 MiB buffer of 4 KiB pages (mapped one call per page, so no superpage) mapped and
/// unmapped over and over: ns per cycle and table frames taken from the HAL per cycle, for our
/// VT-d table unmapping the buffer in one call (its leaf table leaves the tree every cycle and
/// comes back from the table's frame cache), the same page by page (the emptied table stays
/// linked and is refilled), and the peer (page by page: it has no range call).
fn churn(rounds: usize, cycles: u64, vtd: VtdSecondStageConfig) {
    const PAGE: u64 = 4096;
    const BUF: u64 = 2 << 20;
    let map_buffer = |t: &mut dyn Table| {
        for i in 0..BUF / PAGE {
            t.map(black_box(BASE + i * PAGE), PAGE);
        }
    };
    let mut whole = Ours::new(VtdSecondStage::new(vtd).expect("format"));
    let mut paged = Ours::new(VtdSecondStage::new(vtd).expect("format"));
    let mut peer = Peer::new();
    // One cycle each first: the tables a live domain already has.
    map_buffer(&mut whole);
    let _ = whole.table.unmap_flushed(Iova::new(BASE), BUF, &NoWalker);
    map_buffer(&mut paged);
    for i in 0..BUF / PAGE {
        paged.unmap(BASE + i * PAGE, PAGE);
    }
    map_buffer(&mut peer);
    peer.unmap(BASE, BUF);
    // (ns per cycle, frames per cycle) of each case, per round.
    let mut figures: [Vec<(f64, f64)>; 3] = Default::default();
    for _ in 0..rounds {
        let before = whole.table.hal().allocations();
        let t0 = Instant::now();
        for _ in 0..cycles {
            map_buffer(&mut whole);
            let bytes = whole.table.unmap_flushed(Iova::new(BASE), BUF, &NoWalker);
            assert_eq!(bytes, Ok(BUF));
        }
        let frames = (whole.table.hal().allocations() - before) as f64;
        figures[0].push((ns_per(t0, cycles), frames / cycles as f64));

        let before = paged.table.hal().allocations();
        let t0 = Instant::now();
        for _ in 0..cycles {
            map_buffer(&mut paged);
            for i in 0..BUF / PAGE {
                paged.unmap(black_box(BASE + i * PAGE), PAGE);
            }
        }
        let frames = (paged.table.hal().allocations() - before) as f64;
        figures[1].push((ns_per(t0, cycles), frames / cycles as f64));

        let before = peer.pool.0.len();
        let t0 = Instant::now();
        for _ in 0..cycles {
            map_buffer(&mut peer);
            peer.unmap(black_box(BASE), BUF);
        }
        let frames = (before - peer.pool.0.len()) as f64;
        figures[2].push((ns_per(t0, cycles), frames / cycles as f64));
    }
    println!(
        "\n2 MiB buffer of 4 KiB pages mapped and unmapped, {cycles} cycles (median of {rounds} rounds):"
    );
    let peer_ns = median(figures[2].iter().map(|f| f.0).collect());
    for (name, f) in [
        ("VT-d, unmapped in one call", &figures[0]),
        ("VT-d, unmapped page by page", &figures[1]),
        ("x86_64 crate (peer), page by page", &figures[2]),
    ] {
        let ns = median(f.iter().map(|f| f.0).collect());
        let frames = median(f.iter().map(|f| f.1).collect());
        println!(
            "{name:<34} | {:>8.2} us per cycle ({:>5.2}x the peer) | {frames:.3} table frames from the HAL per cycle",
            ns / 1000.0,
            ns / peer_ns
        );
    }
}

fn ns_per(t0: Instant, n: u64) -> f64 {
    t0.elapsed().as_nanos() as f64 / n as f64
}
