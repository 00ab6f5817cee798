//! The control path under several CPUs, the way an embedder runs it: the `Iommu` in a
//! reader-writer lock, maps under the read side on some CPUs while others attach, detach,
//! claim and release under the write side (taken through an upgradeable read, which stops new
//! readers, so a stream of maps cannot starve it).

use super::{bring_up, SharedUnit};
use crate::dma::{DmaBuffer, Rig, IA_BITS, IOVA_A};
use crate::hal::HAL;
use crate::Machine;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{
    DeviceHandle, DomainId, Error, GroupId, Iommu, Layout, OwnerId, Region, Target,
};
use iommu::pagetable::Prot;
use iommu::unit::{Attachment, TranslationUnit};
use iommu_boot::smp::{self, CpuId};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, println};
use spin::RwLock;

const OWNER: OwnerId = OwnerId(21);
const PAGE: u64 = 0x1000;
const WINDOW: [Region; 1] = [Region::below_bits(IA_BITS)];
const LAYOUT: Layout<'static> = Layout {
    windows: &WINDOW,
    reserved: &[],
};

/// Times the boot CPU moves the second device onto the shared domain and off again.
const FLIPS: usize = 6;

/// A domain shared by two devices: the first stays attached, the boot CPU attaches and detaches
/// the second (checking with its DMA each time that it reaches the domain exactly while
/// attached) while every other CPU maps and unmaps its own pages of that domain. Afterwards the
/// domain counts one user, the first device still reaches it, and teardown returns every frame.
pub fn a_shared_domain_is_attached_and_detached_while_cpus_map_into_it<U>(
    m: &Machine,
    r: Rig<'static, U>,
) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    if r.edus.len() < 2 {
        return Err(fail("needs two edu devices"));
    }
    for e in &r.edus[..2] {
        r.unit
            .attach((r.device_id)(e), Attachment::Blocking)
            .map_err(fail)?;
    }
    let frames = HAL.live_frames();
    let stable = DmaBuffer::new(0x3c)?;
    let (mut io, u) = super::object_model(&r);
    let [a, b] = [0, 1].map(|i| (r.device_id)(&r.edus[i]));
    let da = io.add_device(u, a, GroupId(a.0)).map_err(fail)?;
    let db = io.add_device(u, b, GroupId(b.0)).map_err(fail)?;
    io.claim(da, OWNER).map_err(fail)?;
    io.claim(db, OWNER).map_err(fail)?;
    let dom = io
        .alloc_domain(OWNER, u, r.stage, IA_BITS, &LAYOUT)
        .map_err(fail)?;
    let phys = stable.phys();
    io.map(OWNER, dom, Iova::new(IOVA_A), phys, PAGE, Prot::READ_WRITE)
        .map_err(fail)?;
    io.attach(da, OWNER, Target::Domain(dom)).map_err(fail)?;

    let io = Arc::new(RwLock::new(io));
    let mut edus = r.edus;
    let edu_b = Arc::new(edus.swap_remove(1));
    let edu_a = edus.swap_remove(0);
    let unit: &'static U = r.unit;
    // Release/Acquire: the mappers stop after the flips are over.
    let flipping = Arc::new(AtomicBool::new(true));
    let maps = Arc::new(AtomicUsize::new(0));
    let (io2, edu2, flipping2, maps2) = (io.clone(), edu_b.clone(), flipping.clone(), maps.clone());
    smp::on_every_cpu(move |cpu| {
        if cpu != CpuId(0) {
            return map_while(&io2, dom, cpu, phys, &flipping2, &maps2);
        }
        let flipped = flip(&io2, unit, db, b, dom, &edu2);
        flipping2.store(false, Ordering::Release);
        flipped
    })
    .map_err(fail)?;
    let maps = maps.load(Ordering::Relaxed);
    ensure!(
        maps > 0,
        "none of {n} CPUs mapped while the device was flipped"
    );

    let mut io = Arc::try_unwrap(io)
        .map_err(|_| fail("a CPU still holds the model"))?
        .into_inner();
    ensure_eq!(
        io.domain_users(OWNER, dom).map_err(fail)?,
        1,
        "users of the domain"
    );
    edu_a.edu.dma_from_ram(IOVA_A, 0, 64).map_err(fail)?;
    edu_a.edu.dma_to_ram(0, IOVA_A + 2048, 64).map_err(fail)?;
    ensure!(
        stable.all(2048..2112, 0x3c),
        "DMA of the device that stayed"
    );
    io.release(da, OWNER).map_err(fail)?;
    io.release(db, OWNER).map_err(fail)?;
    io.unmap_all(OWNER, dom).map_err(fail)?;
    io.destroy_domain(OWNER, dom).map_err(fail)?;
    drop(io);
    ensure_eq!(HAL.live_frames(), frames, "table frames after teardown");
    Ok(())
}

/// The boot CPU's part: [`FLIPS`] times attach `db` (its DMA must land) and detach it (its
/// DMA must fault), each change under the write side.
fn flip<U: TranslationUnit>(
    io: &RwLock<Iommu<&'static U>>,
    unit: &U,
    db: DeviceHandle,
    id: iommu::unit::DeviceId,
    dom: DomainId,
    edu: &crate::platform::EduDevice,
) -> Result<(), String> {
    for k in 0..FLIPS {
        for target in [Target::Domain(dom), Target::Blocked] {
            io.upgradeable_read()
                .upgrade()
                .attach(db, OWNER, target)
                .map_err(|e| format!("flip {k}: attach to {target:?}: {e}"))?;
            edu.edu
                .dma_from_ram(IOVA_A, 0, 64)
                .map_err(|e| format!("edu: {e}"))?;
            let mut faulted = false;
            unit.drain_faults(&mut |f| faulted |= f.device == id && f.address & !0xfff == IOVA_A)
                .map_err(|e| format!("draining faults: {e}"))?;
            if faulted != (target == Target::Blocked) {
                return Err(format!(
                    "flip {k}: on {target:?} the device's DMA {}",
                    if faulted { "faulted" } else { "landed" }
                ));
            }
        }
    }
    Ok(())
}

/// A mapping CPU's part: map and unmap its own pages under the read side until the flips end.
fn map_while<U: TranslationUnit>(
    io: &RwLock<Iommu<&'static U>>,
    dom: DomainId,
    cpu: CpuId,
    phys: PhysAddr,
    flipping: &AtomicBool,
    maps: &AtomicUsize,
) -> Result<(), String> {
    let base = (1u64 << 35) + ((cpu.0 as u64) << 30);
    let mut i = 0u64;
    while flipping.load(Ordering::Acquire) {
        let iova = Iova::new(base + (i % 4096) * PAGE);
        let io = io.read();
        io.map(OWNER, dom, iova, phys, PAGE, Prot::READ)
            .map_err(|e| format!("{cpu}: map {iova:?}: {e}"))?;
        match io.unmap(OWNER, dom, iova, PAGE) {
            Ok(PAGE) => {}
            other => return Err(format!("{cpu}: unmap {iova:?}: {other:?}")),
        }
        maps.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    Ok(())
}

/// Claim attempts of each CPU in [`owners_racing_for_one_group_keep_it_viable`].
const CLAIM_ROUNDS: usize = 300;

/// Two owners race, from every CPU, for the two devices of ONE group (each CPU works for the
/// owner of its parity and goes for the device of its round): claim, attach to its owner's
/// domain, release. After every call, under the same write lock, the group must be viable: its
/// owned members share one owner and its attached members one domain; the refusals are the
/// typed ones.
pub fn owners_racing_for_one_group_keep_it_viable<U>(m: &Machine, r: Rig<'static, U>) -> TestResult
where
    U: SharedUnit,
{
    let n = bring_up(m)?;
    if r.edus.len() < 2 {
        return Err(fail("needs two edu devices"));
    }
    let frames = HAL.live_frames();
    let (mut io, u) = super::object_model(&r);
    // The first two edus, said to alias each other: one group.
    let group = GroupId(0x7e57);
    let ids = [0, 1].map(|i| (r.device_id)(&r.edus[i]));
    let devs = [
        io.add_device(u, ids[0], group).map_err(fail)?,
        io.add_device(u, ids[1], group).map_err(fail)?,
    ];
    let owners = [OwnerId(31), OwnerId(32)];
    let doms = [
        io.alloc_domain(owners[0], u, r.stage, IA_BITS, &LAYOUT)
            .map_err(fail)?,
        io.alloc_domain(owners[1], u, r.stage, IA_BITS, &LAYOUT)
            .map_err(fail)?,
    ];
    let io = Arc::new(RwLock::new(io));
    let wins = Arc::new([const { AtomicUsize::new(0) }; 2]);
    let (io2, wins2) = (io.clone(), wins.clone());
    smp::on_every_cpu(move |cpu| {
        let k = cpu.0 % 2;
        let (owner, dom) = (owners[k], doms[k]);
        for i in 0..CLAIM_ROUNDS {
            let dev = devs[(i + cpu.0 / 2) % 2];
            let mut io = io2.upgradeable_read().upgrade();
            match io.claim(dev, owner) {
                Ok(()) => {}
                Err(Error::AlreadyOwned { .. } | Error::GroupOwnedByOther { .. }) => continue,
                Err(e) => return Err(format!("{cpu}: claim: {e}")),
            }
            viable(&io, &devs, group).map_err(|e| format!("{cpu} after claim: {e}"))?;
            drop(io);
            let mut io = io2.upgradeable_read().upgrade();
            match io.attach(dev, owner, Target::Domain(dom)) {
                Ok(()) => {
                    wins2[k].fetch_add(1, Ordering::Relaxed);
                }
                // The other member is unowned or ours on the same domain: a refusal would be a
                // rule applied wrongly.
                Err(e) => return Err(format!("{cpu}: attach of a claimed device: {e}")),
            }
            viable(&io, &devs, group).map_err(|e| format!("{cpu} after attach: {e}"))?;
            drop(io);
            let mut io = io2.upgradeable_read().upgrade();
            io.release(dev, owner)
                .map_err(|e| format!("{cpu}: release: {e}"))?;
            viable(&io, &devs, group).map_err(|e| format!("{cpu} after release: {e}"))?;
        }
        Ok(())
    })
    .map_err(fail)?;
    let wins = [0, 1].map(|k| wins[k].load(Ordering::Relaxed));
    // Which owner wins how often is the host's scheduling; that someone won is not.
    ensure!(wins[0] + wins[1] > 0, "no owner won on {n} CPUs");
    println!(
        "    group won by owner 31 {} times, by owner 32 {} times",
        wins[0], wins[1]
    );
    let mut io = Arc::try_unwrap(io)
        .map_err(|_| fail("a CPU still holds the model"))?
        .into_inner();
    for d in devs {
        ensure_eq!(
            io.device(d).map_err(fail)?.owner,
            None,
            "owner after the race"
        );
    }
    for k in 0..2 {
        io.destroy_domain(owners[k], doms[k]).map_err(fail)?;
    }
    drop(io);
    ensure_eq!(HAL.live_frames(), frames, "table frames after teardown");
    Ok(())
}

/// The group rule: owned members have one owner, attached members one target.
fn viable<U: TranslationUnit>(
    io: &Iommu<U>,
    devs: &[DeviceHandle; 2],
    group: GroupId,
) -> Result<(), String> {
    let [a, b] = devs.map(|d| io.device(d));
    let (a, b) = (
        a.map_err(|e| format!("{e}"))?,
        b.map_err(|e| format!("{e}"))?,
    );
    if a.group != group || b.group != group {
        return Err(format!("group changed: {a:?} {b:?}"));
    }
    if let (Some(x), Some(y)) = (a.owner, b.owner) {
        if x != y {
            return Err(format!("two owners in one group: {x:?} {y:?}"));
        }
    }
    let attached = |t: Target| t != Target::Blocked;
    if attached(a.target) && attached(b.target) && a.target != b.target {
        return Err(format!("members on {:?} and {:?}", a.target, b.target));
    }
    if (attached(a.target) && a.owner.is_none()) || (attached(b.target) && b.owner.is_none()) {
        return Err(format!("an unowned member is attached: {a:?} {b:?}"));
    }
    Ok(())
}
