//! Every CPU uses the object model's data path at once, through one shared `&Iommu`: the IOVA
//! space's striped records, the lock-free table and the unit's queue together, judged by the
//! emulated IOMMU through `edu` DMA.

use super::{bring_up, SharedUnit};
use crate::dma::{DmaBuffer, Rig, IA_BITS, IOVA_A};
use crate::hal::HAL;
use crate::Machine;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{
    DeviceHandle, DomainId, Error, GroupId, Iommu, Layout, Mapping, OwnerId, Region, Target,
};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, DeviceId, TranslationUnit};
use iommu_boot::smp::{self, CpuId, MAX_CPUS};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq};

const OWNER: OwnerId = OwnerId(13);
const PAGE: u64 = 0x1000;
const SUPERPAGE: u64 = 0x20_0000;

/// Read-only memory the churn maps at other sizes than a page (the device only reads it, and
/// only where a test says so): 2 MiB aligned, so 2 MiB maps of it are superpages.
const RO_BLOCK: PhysAddr = PhysAddr::new(0x20_0000);

/// The IOVA space of the test domains: one window over the whole input range.
const WINDOW: [Region; 1] = [Region::below_bits(IA_BITS)];
const LAYOUT: Layout<'static> = Layout {
    windows: &WINDOW,
    reserved: &[],
};

/// An object model over the rig's unit with one device (the first edu) owned by [`OWNER`] and
/// attached to a paging domain where `stable` is mapped at [`IOVA_A`].
struct Owned<U: SharedUnit> {
    io: Iommu<&'static U>,
    dom: DomainId,
    dev: DeviceHandle,
    id: DeviceId,
}

fn owned<U: SharedUnit>(r: &Rig<'static, U>, stable: &DmaBuffer) -> Result<Owned<U>, Failure> {
    let edu = r.edus.first().ok_or_else(|| fail("needs an edu device"))?;
    let id = (r.device_id)(edu);
    let (mut io, u) = super::object_model(r);
    let dev = io.add_device(u, id, GroupId(id.0)).map_err(fail)?;
    io.claim(dev, OWNER).map_err(fail)?;
    let dom = io
        .alloc_domain(OWNER, u, r.stage, IA_BITS, &LAYOUT)
        .map_err(fail)?;
    io.map(
        OWNER,
        dom,
        Iova::new(IOVA_A),
        stable.phys(),
        PAGE,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    io.attach(dev, OWNER, Target::Domain(dom)).map_err(fail)?;
    Ok(Owned { io, dom, dev, id })
}

impl<U: SharedUnit> Owned<U> {
    /// Releases the device, empties and destroys the domain; the HAL must then hold exactly
    /// `frames` table frames again.
    fn tear_down(mut self, frames: usize) -> TestResult {
        self.io.release(self.dev, OWNER).map_err(fail)?;
        self.io.unmap_all(OWNER, self.dom).map_err(fail)?;
        self.io.destroy_domain(OWNER, self.dom).map_err(fail)?;
        drop(self.io);
        ensure_eq!(HAL.live_frames(), frames, "table frames after teardown");
        Ok(())
    }
}

/// Churn rounds of each CPU but the boot CPU: sizes cycle through 4 KiB (six of eight), 12 KiB
/// and a 2 MiB superpage; every 10th mapping is kept to the end, the others unmapped at once.
const ROUNDS: u64 = 1200;

/// CPU `c`'s part of the domain: 4 GiB from 16 GiB up, all inside 39 input bits for every
/// `c < MAX_CPUS`. Every IOVA is mapped at most once, so an unmapped one stays unmapped.
fn churn_base(cpu: usize) -> u64 {
    (1 << 34) + ((cpu as u64) << 32)
}

/// Round `i` of CPU `cpu`: what it maps (IOVA, physical address, length).
fn churn_round(cpu: usize, i: u64, page: PhysAddr) -> (u64, PhysAddr, u64) {
    let base = churn_base(cpu);
    match i % 8 {
        6 => (base + i * 0x4000, RO_BLOCK, 3 * PAGE),
        7 => (base + (1 << 30) + i / 8 * SUPERPAGE, RO_BLOCK, SUPERPAGE),
        _ => (base + i * 0x4000, page, PAGE),
    }
}

fn kept(i: u64) -> bool {
    i % 10 == 9
}

/// All CPUs but the boot CPU map and unmap, through the object model, their own ranges of ONE
/// domain (thousands of operations, 4 KiB, 12 KiB and 2 MiB) while the boot CPU keeps the
/// device doing DMA: through a page that stays mapped (it must always land) and to pages whose
/// unmap has returned on another CPU (it must always fault). At the end the domain's records
/// equal the model of what each CPU kept, the kept mappings carry DMA, and tearing down gives
/// every table frame back.
pub fn cpus_map_and_unmap_through_the_object_model_while_dma_runs<U>(
    m: &Machine,
    r: Rig<'static, U>,
) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    let edu = r.edus.first().ok_or_else(|| fail("needs an edu device"))?;
    r.unit
        .attach((r.device_id)(edu), Attachment::Blocking)
        .map_err(fail)?;
    let frames = HAL.live_frames();
    let stable = DmaBuffer::new(0x5a)?;
    let page = stable.phys();
    let Owned { io, dom, dev, id } = owned(&r, &stable)?;
    let io = Arc::new(io);
    let mut edus = r.edus;
    let edu = Arc::new(edus.remove(0));
    let unit: &'static U = r.unit;

    // Release/Acquire: a CPU publishes an IOVA only after its unmap returned.
    let unmapped = Arc::new([const { AtomicU64::new(0) }; MAX_CPUS]);
    let churned = Arc::new(AtomicUsize::new(0));
    let probes = Arc::new(AtomicUsize::new(0));
    let faulted = Arc::new(AtomicUsize::new(0));
    let (io2, edu2, unmapped2, churned2, probes2, faulted2) = (
        io.clone(),
        edu.clone(),
        unmapped.clone(),
        churned.clone(),
        probes.clone(),
        faulted.clone(),
    );
    let ran = smp::on_every_cpu(move |cpu| {
        let io = &*io2;
        if cpu != CpuId(0) {
            let done = churn(io, dom, cpu, page, &unmapped2[cpu.0]);
            churned2.fetch_add(1, Ordering::Release);
            return done;
        }
        // The boot CPU probes until every other CPU is done (and at least twice).
        let mut turn = 1;
        loop {
            let all_done = churned2.load(Ordering::Acquire) == n - 1;
            let stable_ok = edu2
                .edu
                .dma_from_ram(IOVA_A, 0, 64)
                .and_then(|()| edu2.edu.dma_to_ram(0, IOVA_A + 2048, 64));
            stable_ok.map_err(|e| format!("DMA through the stable page during churn: {e}"))?;
            let gone = unmapped2[turn].load(Ordering::Acquire);
            turn = turn % (n - 1) + 1;
            if gone != 0 {
                edu2.edu
                    .dma_to_ram(0, gone, 4)
                    .map_err(|e| format!("edu: {e}"))?;
                let mut hit = false;
                let mut seen = Vec::new();
                unit.drain_faults(&mut |f| {
                    hit |= f.device == id && f.address & !0xfff == gone;
                    seen.push(f);
                })
                .map_err(|e| format!("draining faults: {e}"))?;
                if !hit {
                    return Err(format!(
                        "DMA to {gone:#x}, unmapped by another CPU, did not fault: {seen:?}"
                    ));
                }
                faulted2.fetch_add(1, Ordering::Relaxed);
            }
            let done = probes2.fetch_add(1, Ordering::Relaxed) + 1;
            if all_done && done >= 2 {
                return Ok(());
            }
        }
    });
    ran.map_err(fail)?;
    ensure!(
        stable.all(2048..2112, 0x5a),
        "DMA through the stable page landed"
    );

    // The records equal the model: the stable page and what each CPU kept.
    let mut model: Vec<Mapping> = (1..n)
        .flat_map(|c| (0..ROUNDS).filter(|i| kept(*i)).map(move |i| (c, i)))
        .map(|(c, i)| {
            let (iova, phys, len) = churn_round(c, i, page);
            Mapping {
                iova: Region {
                    start: iova,
                    last: iova + len - 1,
                },
                phys: phys.as_u64(),
            }
        })
        .collect();
    model.push(Mapping {
        iova: Region {
            start: IOVA_A,
            last: IOVA_A + PAGE - 1,
        },
        phys: page.as_u64(),
    });
    model.sort_unstable_by_key(|m| m.iova.start);
    let recorded = io.iova_space(OWNER, dom).map_err(fail)?.mappings();
    ensure!(
        recorded == model,
        "{} mappings recorded, {} in the model",
        recorded.len(),
        model.len()
    );
    // The hardware table agrees: each CPU's last kept 4 KiB page carries DMA.
    for c in 1..n {
        let i = (0..ROUNDS)
            .rev()
            .find(|i| kept(*i) && i % 8 < 6)
            .unwrap_or(0);
        let (iova, _, _) = churn_round(c, i, page);
        edu.edu.dma_from_ram(iova, 0, 64).map_err(fail)?;
    }
    let (probes, faulted) = (
        probes.load(Ordering::Relaxed),
        faulted.load(Ordering::Relaxed),
    );
    ensure!(
        probes >= 2 && faulted >= 1,
        "the boot CPU probed {probes} times, {faulted} of them unmapped pages"
    );
    let io = Arc::try_unwrap(io).map_err(|_| fail("a CPU still holds the model"))?;
    Owned { io, dom, dev, id }.tear_down(frames)
}

/// One CPU's churn (see [`churn_round`]); publishes each 4 KiB IOVA whose unmap returned.
fn churn<U: TranslationUnit>(
    io: &Iommu<&'static U>,
    dom: DomainId,
    cpu: CpuId,
    page: PhysAddr,
    unmapped: &AtomicU64,
) -> Result<(), String> {
    for i in 0..ROUNDS {
        let (iova, phys, len) = churn_round(cpu.0, i, page);
        let at = Iova::new(iova);
        let prot = if phys == page {
            Prot::READ_WRITE
        } else {
            Prot::READ
        };
        io.map(OWNER, dom, at, phys, len, prot)
            .map_err(|e| format!("{cpu}: map {iova:#x}+{len:#x}: {e}"))?;
        match io.iova_to_phys(OWNER, dom, Iova::new(iova + len - 1)) {
            Ok(p) if p.as_u64() == phys.as_u64() + len - 1 => {}
            other => return Err(format!("{cpu}: {iova:#x} translates to {other:?}")),
        }
        if i % 16 == 0 {
            match io.map(OWNER, dom, at, phys, len, prot) {
                Err(Error::AlreadyMapped) => {}
                other => return Err(format!("{cpu}: second map of {iova:#x}: {other:?}")),
            }
        }
        if kept(i) {
            continue;
        }
        match io.unmap(OWNER, dom, at, len) {
            Ok(n) if n == len => {}
            other => return Err(format!("{cpu}: unmap {iova:#x}+{len:#x}: {other:?}")),
        }
        if len == PAGE {
            unmapped.store(iova, Ordering::Release);
        }
    }
    Ok(())
}

/// Rounds of [`cpus_racing_on_one_range_are_decided_once`].
const RACE_ROUNDS: usize = 150;
/// Where the races happen: from 1 GiB (clear of the other tests' IOVAs), 128 KiB per round
/// (room for the shifted ranges of `MAX_CPUS` CPUs).
const RACE_BASE: u64 = 1 << 30;
const RACE_STRIDE: u64 = 0x2_0000;

/// What CPU `cpu` maps in race round `i`: the same two pages as every CPU in even rounds; in
/// odd rounds two pages shifted by one page per CPU, so neighbours overlap by one page.
fn race_range(cpu: usize, i: usize) -> Region {
    let start = RACE_BASE + i as u64 * RACE_STRIDE + if i % 2 == 1 { cpu as u64 * PAGE } else { 0 };
    Region {
        start,
        last: start + 2 * PAGE - 1,
    }
}

/// Outcome codes of one CPU's map in one round.
const WON: u8 = 1;
const LOST: u8 = 2;

/// All CPUs race, round by round (they meet before each round), to map overlapping ranges of
/// one domain, then to unmap a round's whole range. Every map either wins or is refused with
/// `AlreadyMapped`; the winners are disjoint and every loser overlaps a winner (in even rounds,
/// where all ask for the same range: exactly one wins); the records translate each page to its
/// winner; exactly one unmap of a round succeeds, removing every winner, and the others find
/// nothing mapped.
pub fn cpus_racing_on_one_range_are_decided_once<U>(m: &Machine, r: Rig<'static, U>) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    let frames = HAL.live_frames();
    let (mut io, u) = super::object_model(&r);
    let dom = io
        .alloc_domain(OWNER, u, r.stage, IA_BITS, &LAYOUT)
        .map_err(fail)?;
    let io = Arc::new(io);
    let phys = |cpu: usize| PhysAddr::new(RO_BLOCK.as_u64() + cpu as u64 * 0x2000);

    // Relaxed outcome slots: read after the run, whose end orders them.
    let outcome = Arc::new(
        (0..RACE_ROUNDS * n)
            .map(|_| AtomicU8::new(0))
            .collect::<Vec<_>>(),
    );
    let removed = Arc::new(
        (0..RACE_ROUNDS)
            .map(|_| AtomicU64::new(0))
            .collect::<Vec<_>>(),
    );
    let (io2, outcome2) = (io.clone(), outcome.clone());
    let meet = Arc::new(Rendezvous::new(n));
    let meet2 = meet.clone();
    smp::on_every_cpu(move |cpu| {
        let c = cpu.0;
        for i in 0..RACE_ROUNDS {
            meet2.wait(cpu)?;
            let want = race_range(c, i);
            let code = match io2.map(
                OWNER,
                dom,
                Iova::new(want.start),
                phys(c),
                2 * PAGE,
                Prot::READ,
            ) {
                Ok(()) => WON,
                Err(Error::AlreadyMapped) => LOST,
                Err(e) => return Err(format!("{cpu}: map {want:x?}: {e}")),
            };
            outcome2[i * n + c].store(code, Ordering::Relaxed);
        }
        Ok(())
    })
    .map_err(fail)?;

    for i in 0..RACE_ROUNDS {
        let ranges: Vec<(Region, bool)> = (0..n)
            .map(|c| {
                (
                    race_range(c, i),
                    outcome[i * n + c].load(Ordering::Relaxed) == WON,
                )
            })
            .collect();
        let winners: Vec<(usize, Region)> = ranges
            .iter()
            .enumerate()
            .filter(|(_, (_, won))| *won)
            .map(|(c, (r, _))| (c, *r))
            .collect();
        ensure!(!winners.is_empty(), "round {i}: nobody won");
        if i % 2 == 0 {
            ensure_eq!(winners.len(), 1, "winners of round {i} (one range for all)");
        }
        for (a, ra) in &winners {
            for (b, rb) in &winners {
                ensure!(
                    a == b || !ra.overlaps(*rb),
                    "round {i}: cpus {a} and {b} both won"
                );
            }
            for p in [ra.start, ra.last] {
                let got = io.iova_to_phys(OWNER, dom, Iova::new(p)).map_err(fail)?;
                ensure_eq!(
                    got.as_u64(),
                    phys(*a).as_u64() + (p - ra.start),
                    "round {i} page {p:#x}"
                );
            }
        }
        for (c, (rc, won)) in ranges.iter().enumerate() {
            ensure!(
                *won || winners.iter().any(|(_, w)| w.overlaps(*rc)),
                "round {i}: cpu {c} lost to nobody"
            );
        }
    }

    // Everybody unmaps each round's whole range: one succeeds.
    let (io2, removed2) = (io.clone(), removed.clone());
    let meet2 = meet.clone();
    smp::on_every_cpu(move |cpu| {
        for i in 0..RACE_ROUNDS {
            meet2.wait(cpu)?;
            let start = RACE_BASE + i as u64 * RACE_STRIDE;
            match io2.unmap(OWNER, dom, Iova::new(start), RACE_STRIDE) {
                Ok(bytes) => {
                    removed2[i].fetch_add(1, Ordering::Relaxed);
                    // The bytes are recorded by the only successful unmap.
                    removed2[i].fetch_add(bytes << 8, Ordering::Relaxed);
                }
                Err(Error::NothingMapped) => {}
                Err(e) => return Err(format!("{cpu}: unmap round {i}: {e}")),
            }
        }
        Ok(())
    })
    .map_err(fail)?;
    for i in 0..RACE_ROUNDS {
        let won = (0..n)
            .filter(|c| outcome[i * n + c].load(Ordering::Relaxed) == WON)
            .count() as u64;
        let got = removed[i].load(Ordering::Relaxed);
        ensure_eq!(got & 0xff, 1, "successful unmaps in round {i}");
        ensure_eq!(got >> 8, won * 2 * PAGE, "bytes unmapped in round {i}");
    }
    let mut io = Arc::try_unwrap(io).map_err(|_| fail("a CPU still holds the model"))?;
    ensure!(
        io.iova_space(OWNER, dom).map_err(fail)?.is_empty(),
        "records left"
    );
    io.destroy_domain(OWNER, dom).map_err(fail)?;
    drop(io);
    ensure_eq!(HAL.live_frames(), frames, "table frames after teardown");
    Ok(())
}

/// A reusable meeting point: each CPU waits (bounded) until all `n` have arrived for the same
/// round, so every round starts with all CPUs at once.
struct Rendezvous {
    n: usize,
    /// Arrivals so far, over all rounds (round `k` is complete at `(k + 1) * n`). Relaxed
    /// would do for the count; AcqRel orders each CPU's previous round before the next.
    arrived: AtomicUsize,
    /// Rounds each CPU has entered.
    rounds: [AtomicUsize; MAX_CPUS],
}

impl Rendezvous {
    fn new(n: usize) -> Self {
        Self {
            n,
            arrived: AtomicUsize::new(0),
            rounds: [const { AtomicUsize::new(0) }; MAX_CPUS],
        }
    }

    fn wait(&self, cpu: CpuId) -> Result<(), String> {
        let round = self.rounds[cpu.0].fetch_add(1, Ordering::Relaxed);
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let goal = (round + 1) * self.n;
        smp::wait_until(
            "every CPU at the rendezvous",
            super::OVERLAP_TIMEOUT_US,
            || self.arrived.load(Ordering::Acquire) >= goal,
        )
        .map_err(|_| format!("{cpu}: the others did not reach round {round}"))
    }
}
