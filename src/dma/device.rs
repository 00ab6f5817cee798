//! One device's DMA handle: streaming mappings (single buffers and scatter-gather lists), sync
//! for device and CPU, coherent allocations, bouncing, and strict or deferred unmaps.
//!
//! Every call checks its input before it changes anything, and a refusal leaves the handle,
//! the domain and the pool as they were. The handle keeps a record of its live mappings
//! (device address → what backs it), so an unmap or sync of something never mapped, with a
//! wrong length, or a second time, is refused before it touches a neighbour's mapping. The
//! record is split in [`SHARDS`] locks by address, the IOVA caches and the flush queues are per
//! CPU: two CPUs mapping different buffers meet on no lock on the common path.

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use super::bounce::BouncePool;
use super::iova::IovaAllocator;
use super::{pages, BouncePolicy, Config, Direction, DmaAddr, DmaError, DmaHal, UnmapPolicy, PAGE};
use crate::addr::{Iova, PhysAddr};
use crate::hal::FrameSize;
use crate::iommufd::{self, DeviceHandle, DmaDomain, DomainId, Iommu, Layout, OwnerId, Target};
use crate::pagetable::{Error as PtError, Gather, Prot};
use crate::sync::Mutex;
use crate::unit::{TranslationUnit, UnitError};

/// Locks the live-mapping record is split into.
pub const SHARDS: usize = 16;

/// How a device's DMA addresses are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// IOVAs allocated in a DMA API domain and mapped through its unit.
    Paging,
    /// Physical addresses, the device attached to identity: the IOMMU translates nothing.
    Identity,
    /// Physical addresses and no IOMMU at all ([`InsecureNoIommu`](crate::iommufd::InsecureNoIommu)).
    NoIommu,
}

/// What a paging path needs from its domain's unit, without the unit's type in the handle's
/// type.
trait Remap: Sync {
    fn map(&self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<(), UnitError>;
    fn unmap(&self, iova: u64, len: u64) -> Result<(), UnitError>;
    fn unmap_deferred(&self, iova: u64, len: u64, gather: &mut Gather) -> Result<(), UnitError>;
    fn flush_deferred(&self, gather: Gather) -> Result<(), UnitError>;
    fn prune(&self, points: &[(Iova, core::ops::Range<u64>)]) -> Result<usize, UnitError>;
}

/// A DMA API domain's unit calls, straight to the unit: the handle's IOVA allocator and record
/// do what the object model's per-mapping bookkeeping does for other domains.
impl<U> Remap for DmaDomain<'_, U>
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    fn map(&self, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<(), UnitError> {
        let (iova, phys) = (Iova::new(iova), PhysAddr::new(phys));
        match self.unit.map(self.hw, iova, phys, len, prot) {
            // A format without write-only entries (x86-64 and Arm stage-1 tables): read-write
            // for a from-device buffer, as Linux does.
            Err(UnitError::PageTable(PtError::UnsupportedPermissions)) => {
                self.unit.map(self.hw, iova, phys, len, Prot::READ_WRITE)
            }
            other => other,
        }
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<(), UnitError> {
        self.unit.unmap(self.hw, Iova::new(iova), len).map(|_| ())
    }

    fn unmap_deferred(&self, iova: u64, len: u64, gather: &mut Gather) -> Result<(), UnitError> {
        self.unit
            .unmap_deferred(self.hw, Iova::new(iova), len, gather)
            .map(|_| ())
    }

    fn flush_deferred(&self, gather: Gather) -> Result<(), UnitError> {
        self.unit.flush_deferred(self.hw, gather)
    }

    fn prune(&self, points: &[(Iova, core::ops::Range<u64>)]) -> Result<usize, UnitError> {
        self.unit.prune_tables(self.hw, points)
    }
}

/// Frees the tables emptied where [`PENDING_PRUNES`](iommufd::PENDING_PRUNES) places of IOVAs
/// came back to the allocator's ranges, with one invalidation ([`IovaAllocator::prune`]). The
/// unmaps that gave them back have succeeded, so a failure is logged, not returned (the tables
/// stay linked, or, if the invalidation failed, their frames are leaked).
fn prune_if_due(remap: &dyn Remap, iovas: &IovaAllocator) {
    if !iovas.prune_due() {
        return;
    }
    let pruned = iovas.prune(|points| {
        let points: Vec<_> = points
            .iter()
            .map(|(at, free)| (Iova::new(*at), free.clone()))
            .collect();
        remap.prune(&points)
    });
    if let Some(Err(e)) = pruned {
        log::warn!("DMA API: freeing emptied tables failed: {e}");
    }
}

/// How the device's addresses are made, with what that needs.
enum Route<'a> {
    Paging {
        remap: Box<dyn Remap + 'a>,
        iovas: Box<IovaAllocator>,
    },
    Direct(Path),
}

/// A run of bounce slots: its first byte and its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    phys: u64,
    pages: usize,
}

/// The memory behind a live mapping.
#[derive(Clone, Copy, Debug)]
enum Backing {
    /// A driver's buffer at `orig`, bounced to `slot` or not.
    Streaming {
        dir: Direction,
        orig: u64,
        slot: Option<Slot>,
    },
    /// A coherent allocation: a HAL frame of that size, or pool slots.
    Coherent {
        frame: Option<FrameSize>,
        slot: Option<Slot>,
    },
}

/// One live mapping.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    /// The bytes the driver mapped.
    len: u64,
    /// Where the device's accesses land: the buffer itself, a bounce slot, coherent memory.
    seen: u64,
    /// The IOVA pages that translate to it (paging path): first page and span.
    iova: Option<(u64, u64)>,
    backing: Backing,
}

impl Mapping {
    fn slot(&self) -> Option<Slot> {
        match self.backing {
            Backing::Streaming { slot, .. } | Backing::Coherent { slot, .. } => slot,
        }
    }
}

/// Live mappings whose device address falls in one shard, keyed by (address, length, a number
/// that tells apart two live mappings of one buffer on a direct path: 0, then 1, ...).
#[repr(align(128))]
struct Shard(Mutex<BTreeMap<(u64, u64, u64), Mapping>>);

/// Unmaps waiting for one invalidation, on one CPU.
#[derive(Default)]
struct FlushQueue {
    gather: Gather,
    /// IOVA ranges (first page, span) and slots to give back once the flush completed.
    retired: Vec<((u64, u64), Option<Slot>)>,
}

/// One CPU's flush queue on a cache line (pair) of its own.
#[repr(align(128))]
struct PerCpuQueue(Mutex<FlushQueue>);

/// A device's DMA handle. See the [module docs](self) and [`crate::dma`].
pub struct DmaDevice<'a, H: DmaHal> {
    hal: &'a H,
    route: Route<'a>,
    cfg: Config,
    pool: Option<&'a BouncePool>,
    shards: [Shard; SHARDS],
    queues: Vec<PerCpuQueue>,
}

impl<H: DmaHal> fmt::Debug for DmaDevice<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaDevice")
            .field("path", &self.path())
            .field("config", &self.cfg)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// A coherent allocation: memory the CPU and the device share for long (rings, descriptors),
/// zero-filled. Give it back with [`DmaDevice::free_coherent`]; dropping it leaks it.
#[derive(Debug)]
#[must_use = "coherent memory leaks unless given back with free_coherent"]
pub struct Coherent {
    virt: NonNull<u8>,
    phys: PhysAddr,
    dma: DmaAddr,
    len: u64,
}

impl Coherent {
    /// The CPU's pointer to it.
    pub fn virt(&self) -> NonNull<u8> {
        self.virt
    }

    /// Its physical address.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// The device's address for it.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }

    /// Its length as asked for.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never: a coherent allocation has at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One buffer of a scatter-gather list: the driver fills `phys` and `len`, a map fills `dma`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// The buffer.
    pub phys: PhysAddr,
    /// Its length.
    pub len: u64,
    /// The device's address for it, once mapped.
    pub dma: Option<DmaAddr>,
}

impl SgEntry {
    /// An entry not mapped yet.
    pub const fn new(phys: PhysAddr, len: u64) -> Self {
        Self {
            phys,
            len,
            dma: None,
        }
    }
}

impl<'a, H: DmaHal> DmaDevice<'a, H> {
    /// A handle for a device attached to `owner`'s DMA API domain `domain` of `io`
    /// ([`Iommu::alloc_dma_domain`]): addresses are IOVAs allocated in the domain's windows
    /// minus its reserved regions, below the mask, and mapped straight through its unit. Every
    /// device of the domain should share this one handle (their IOVAs come from its allocator).
    pub fn paging<U>(
        io: &'a Iommu<U>,
        owner: OwnerId,
        domain: DomainId,
        hal: &'a H,
        cfg: Config,
    ) -> Result<Self, DmaError>
    where
        U: TranslationUnit + Sync,
        U::Domain: Sync,
    {
        let dom = io.dma_domain(owner, domain)?;
        let layout = Layout {
            windows: dom.windows(),
            reserved: dom.reserved(),
        };
        let iovas = Box::new(IovaAllocator::new(&layout, cfg.cpus));
        Self::with_route(
            hal,
            cfg,
            Route::Paging {
                remap: Box::new(dom),
                iovas,
            },
        )
    }

    /// A handle for `device`, which `owner` attached to identity in `io`: addresses are
    /// physical addresses. Refused unless the device is `owner`'s and attached to identity now
    /// (the handle trusts it stays so).
    pub fn identity<U: TranslationUnit>(
        io: &Iommu<U>,
        device: DeviceHandle,
        owner: OwnerId,
        hal: &'a H,
        cfg: Config,
    ) -> Result<Self, DmaError> {
        let state = io.device(device)?;
        if state.owner != Some(owner) {
            return Err(iommufd::Error::NotOwner(device).into());
        }
        if state.target != Target::Identity {
            return Err(DmaError::NotIdentity);
        }
        Self::with_route(hal, cfg, Route::Direct(Path::Identity))
    }

    /// A handle for a device on a machine without an IOMMU: addresses are physical addresses,
    /// and nothing confines the device ([`InsecureNoIommu`](iommufd::InsecureNoIommu) is the
    /// embedder's written choice of that).
    pub fn no_iommu(
        _insecure: &iommufd::InsecureNoIommu,
        hal: &'a H,
        cfg: Config,
    ) -> Result<Self, DmaError> {
        Self::with_route(hal, cfg, Route::Direct(Path::NoIommu))
    }

    fn with_route(hal: &'a H, cfg: Config, route: Route<'a>) -> Result<Self, DmaError> {
        let deferred = match cfg.unmap {
            UnmapPolicy::Strict => false,
            UnmapPolicy::Deferred { .. } if matches!(route, Route::Direct(_)) => {
                return Err(DmaError::NothingToDefer)
            }
            UnmapPolicy::Deferred { .. } => true,
        };
        if cfg.cpus == 0 {
            return Err(DmaError::UnknownCpu(0));
        }
        let queues = if deferred { cfg.cpus } else { 0 };
        Ok(Self {
            hal,
            route,
            cfg,
            pool: None,
            shards: core::array::from_fn(|_| Shard(Mutex::new(BTreeMap::new()))),
            queues: (0..queues)
                .map(|_| PerCpuQueue(Mutex::new(FlushQueue::default())))
                .collect(),
        })
    }

    /// Bounces through `pool`. On a path without an IOMMU the pool must lie below the mask.
    pub fn with_pool(mut self, pool: &'a BouncePool) -> Result<Self, DmaError> {
        if matches!(self.route, Route::Direct(_)) && pool.end() > self.cfg.limit() {
            return Err(DmaError::PoolBeyondMask);
        }
        self.pool = Some(pool);
        Ok(self)
    }

    /// How the device's addresses are made.
    pub fn path(&self) -> Path {
        match self.route {
            Route::Paging { .. } => Path::Paging,
            Route::Direct(p) => p,
        }
    }

    /// Live mappings (streaming and coherent).
    pub fn live(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Unmaps waiting in flush queues.
    pub fn pending_unmaps(&self) -> usize {
        self.queues.iter().map(|q| q.0.lock().retired.len()).sum()
    }

    fn cpu(&self) -> Result<usize, DmaError> {
        let cpu = (self.cfg.cpu)();
        if cpu < self.cfg.cpus {
            Ok(cpu)
        } else {
            Err(DmaError::UnknownCpu(cpu))
        }
    }

    fn shard(&self, addr: u64) -> &Shard {
        // Page number, folded: neighbouring mappings land in different shards.
        let page = addr / PAGE;
        &self.shards[((page ^ (page >> 4) ^ (page >> 8)) as usize) % SHARDS]
    }

    /// Maps the `len` bytes at `phys` for a transfer in direction `dir` and returns the address
    /// the device uses for `phys`. Through a paging domain the device reaches the whole pages
    /// around the buffer (bounce with [`BouncePolicy::SubPage`] to avoid that). A non-coherent
    /// device gets the buffer cleaned from the CPU caches.
    pub fn map(&self, phys: PhysAddr, len: u64, dir: Direction) -> Result<DmaAddr, DmaError> {
        let orig = phys.as_u64();
        let (_, span) = pages(orig, len)?;
        let cpu = self.cpu()?;
        let slot = if self.must_bounce(orig, len)? {
            let pool = self.pool.ok_or(DmaError::BeyondMask)?;
            let phys = pool.take((span / PAGE) as usize)?;
            let slot = Slot {
                phys,
                pages: (span / PAGE) as usize,
            };
            // Every direction is copied in, and the rest of the slot's pages zeroed: the device
            // never sees what the slot held before (another buffer's data).
            self.copy(orig, phys + orig % PAGE, len);
            self.zero(phys, orig % PAGE);
            self.zero(phys + orig % PAGE + len, span - orig % PAGE - len);
            Some(slot)
        } else {
            None
        };
        let seen = slot.map_or(orig, |s| s.phys + orig % PAGE);
        let backing = Backing::Streaming { dir, orig, slot };
        match self.expose(cpu, seen, len, prot(dir), backing) {
            Ok(addr) => {
                if !self.cfg.coherent {
                    // For every direction: a dirty line evicted later must not overwrite what
                    // the device wrote.
                    self.hal
                        .clean_for_device(self.hal.phys_to_virt(PhysAddr::new(seen)), len as usize);
                }
                Ok(addr)
            }
            Err(e) => {
                if let (Some(s), Some(pool)) = (slot, self.pool) {
                    pool.give(s.phys, s.pages);
                }
                Err(e)
            }
        }
    }

    /// Whether the buffer at `orig` goes through the pool; refused if it must and cannot.
    fn must_bounce(&self, orig: u64, len: u64) -> Result<bool, DmaError> {
        let beyond = match self.route {
            Route::Paging { .. } => false,
            Route::Direct(_) => orig + len > self.cfg.limit(),
        };
        let sub_page = !orig.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE);
        let bounce = match self.cfg.bounce {
            BouncePolicy::Never => {
                return if beyond {
                    Err(DmaError::BeyondMask)
                } else {
                    Ok(false)
                }
            }
            BouncePolicy::IfNeeded => beyond,
            BouncePolicy::SubPage => beyond || sub_page,
            BouncePolicy::Always => true,
        };
        if bounce && self.pool.is_none() {
            return Err(DmaError::BeyondMask);
        }
        Ok(bounce)
    }

    /// Makes the `len` bytes at `seen` reachable for the device (an IOVA mapping, or nothing on
    /// a direct path) and records the mapping; returns the device's address.
    fn expose(
        &self,
        cpu: usize,
        seen: u64,
        len: u64,
        prot: Prot,
        backing: Backing,
    ) -> Result<DmaAddr, DmaError> {
        let (first, span) = pages(seen, len)?;
        let (addr, iova) = match &self.route {
            Route::Direct(_) => {
                if seen + len > self.cfg.limit() {
                    return Err(DmaError::BeyondMask);
                }
                (seen, None)
            }
            Route::Paging { remap, iovas } => {
                let iova = iovas.alloc(cpu, span, self.cfg.limit())?;
                if let Err(e) = remap.map(iova, first, span, prot) {
                    iovas.free(cpu, iova, span)?;
                    return Err(e.into());
                }
                (iova + (seen - first), Some((iova, span)))
            }
        };
        self.record(
            DmaAddr(addr),
            Mapping {
                len,
                seen,
                iova,
                backing,
            },
        );
        Ok(DmaAddr(addr))
    }

    /// Copies `len` bytes from physical `from` to physical `to` (a buffer and its slot).
    fn copy(&self, from: u64, to: u64, len: u64) {
        let src = self.hal.phys_to_virt(PhysAddr::new(from));
        let dst = self.hal.phys_to_virt(PhysAddr::new(to));
        // SAFETY: `DmaHal`'s contract: both pointers reach `len` bytes of their ranges (a live
        // buffer the driver handed in, a slot this handle took from its pool); slots never
        // overlap a driver buffer (the pool's memory is its own).
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr(), len as usize) }
    }

    /// Zeroes `len` bytes of the pool at physical `at`.
    fn zero(&self, at: u64, len: u64) {
        if len > 0 {
            // SAFETY: `DmaHal`'s contract covers the pool's memory; the caller's slot holds it.
            unsafe { self.ptr(at).as_ptr().write_bytes(0, len as usize) }
        }
    }

    /// The live mapping at `addr` of at least `len` bytes, taken out of the record (`take`) or
    /// copied (`!take`, for a sync of its first `len` bytes).
    fn find(&self, addr: DmaAddr, len: u64, take: bool) -> Result<Mapping, DmaError> {
        let mut shard = self.shard(addr.0).0.lock();
        let key = shard
            .range((addr.0, 0, 0)..=(addr.0, u64::MAX, u64::MAX))
            .find(|((_, l, _), _)| if take { *l == len } else { *l >= len })
            .map(|(k, _)| *k)
            .ok_or(DmaError::NotMapped)?;
        if take {
            shard.remove(&key).ok_or(DmaError::NotMapped)
        } else {
            shard.get(&key).copied().ok_or(DmaError::NotMapped)
        }
    }

    /// Puts `m` in the record under `addr` (also a mapping taken out by a refused call).
    fn record(&self, addr: DmaAddr, m: Mapping) {
        let mut shard = self.shard(addr.0).0.lock();
        let same = (addr.0, m.len, 0)..=(addr.0, m.len, u64::MAX);
        let n = shard
            .range(same)
            .next_back()
            .map_or(0, |((_, _, n), _)| n + 1);
        shard.insert((addr.0, m.len, n), m);
    }

    /// Makes the first `len` bytes of the mapping at `addr` (as [`map`](Self::map) returned it)
    /// current for the device, before it reads them again: copied into the bounce slot, cleaned
    /// from the CPU caches for a non-coherent device.
    pub fn sync_for_device(&self, addr: DmaAddr, len: u64) -> Result<(), DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        let m = self.find(addr, len, false)?;
        if let Backing::Streaming { dir, orig, slot } = m.backing {
            if slot.is_some() && dir.device_reads() {
                self.copy(orig, m.seen, len);
            }
        }
        if !self.cfg.coherent {
            self.hal.clean_for_device(self.ptr(m.seen), len as usize);
        }
        Ok(())
    }

    /// Makes the first `len` bytes of the mapping at `addr` current for the CPU, after the
    /// device wrote them: invalidated in the CPU caches for a non-coherent device, copied out
    /// of the bounce slot.
    pub fn sync_for_cpu(&self, addr: DmaAddr, len: u64) -> Result<(), DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength);
        }
        let m = self.find(addr, len, false)?;
        self.to_cpu(&m, len);
        Ok(())
    }

    fn ptr(&self, phys: u64) -> NonNull<u8> {
        self.hal.phys_to_virt(PhysAddr::new(phys))
    }

    fn to_cpu(&self, m: &Mapping, len: u64) {
        let Backing::Streaming { dir, orig, slot } = m.backing else {
            return;
        };
        if !dir.device_writes() {
            return;
        }
        if !self.cfg.coherent {
            self.hal.invalidate_for_cpu(self.ptr(m.seen), len as usize);
        }
        if slot.is_some() {
            self.copy(m.seen, orig, len);
        }
    }

    /// Unmaps the buffer `map` returned `addr` for, with the same `len`. The buffer's data is
    /// current for the CPU when this returns. Strict: the device cannot reach it any more.
    /// Deferred: see [`UnmapPolicy::Deferred`]; an error of the flush this unmap set off comes
    /// back here with the buffer unmapped, and the IOVAs of that flush are never reused.
    pub fn unmap(&self, addr: DmaAddr, len: u64) -> Result<(), DmaError> {
        pages(addr.0, len)?;
        let cpu = self.cpu()?;
        let m = self.find(addr, len, true)?;
        if matches!(m.backing, Backing::Coherent { .. }) {
            self.record(addr, m);
            return Err(DmaError::NotMapped);
        }
        self.to_cpu(&m, len);
        self.release(cpu, addr, m, self.cfg.unmap)
    }

    /// Takes the mapping `m` (out of the record) away from the device and gives back what
    /// backed it; on a refusal `m` goes back in the record.
    fn release(
        &self,
        cpu: usize,
        addr: DmaAddr,
        m: Mapping,
        policy: UnmapPolicy,
    ) -> Result<(), DmaError> {
        let Route::Paging { remap, iovas } = &self.route else {
            self.give_back(&m);
            return Ok(());
        };
        let Some((iova, span)) = m.iova else {
            self.give_back(&m);
            return Ok(());
        };
        match policy {
            UnmapPolicy::Strict => {
                if let Err(e) = remap.unmap(iova, span) {
                    self.record(addr, m);
                    return Err(e.into());
                }
                iovas.free(cpu, iova, span)?;
                self.give_back(&m);
                prune_if_due(remap.as_ref(), iovas);
                Ok(())
            }
            UnmapPolicy::Deferred { batch } => {
                let Some(queue) = self.queues.get(cpu) else {
                    self.record(addr, m);
                    return Err(DmaError::UnknownCpu(cpu));
                };
                let mut q = queue.0.lock();
                if let Err(e) = remap.unmap_deferred(iova, span, &mut q.gather) {
                    drop(q);
                    self.record(addr, m);
                    return Err(e.into());
                }
                q.retired.push(((iova, span), m.slot()));
                if q.retired.len() >= batch.max(1) {
                    return self.flush_queue(cpu, &mut q);
                }
                Ok(())
            }
        }
    }

    /// What backed a mapping other than its IOVA: bounce slots, coherent frames.
    fn give_back(&self, m: &Mapping) {
        if let (Some(s), Some(pool)) = (m.slot(), self.pool) {
            pool.give(s.phys, s.pages);
        }
        if let Backing::Coherent {
            frame: Some(size), ..
        } = m.backing
        {
            // SAFETY: the frame came from this HAL's `alloc_frame` with this size
            // (`alloc_coherent`), its mapping is gone (a strict unmap, or a direct path), and
            // the caller gave up its `Coherent`, the only CPU handle to it.
            unsafe { self.hal.free_frame(PhysAddr::new(m.seen), size) }
        }
    }

    /// One invalidation for everything in `q`, then its IOVAs and slots are free again.
    fn flush_queue(&self, cpu: usize, q: &mut FlushQueue) -> Result<(), DmaError> {
        let Route::Paging { remap, iovas } = &self.route else {
            return Ok(());
        };
        if q.retired.is_empty() {
            return Ok(());
        }
        let gather = core::mem::take(&mut q.gather);
        if let Err(e) = remap.flush_deferred(gather) {
            // The device may still reach them: never reused.
            q.retired.clear();
            return Err(e.into());
        }
        for ((iova, span), slot) in q.retired.drain(..) {
            iovas.free(cpu, iova, span)?;
            if let (Some(s), Some(pool)) = (slot, self.pool) {
                pool.give(s.phys, s.pages);
            }
        }
        prune_if_due(remap.as_ref(), iovas);
        Ok(())
    }

    /// Flushes every CPU's queue of deferred unmaps: when this returns, the device reaches no
    /// buffer unmapped before it. Call it from a timer to bound the window of
    /// [`UnmapPolicy::Deferred`]. The first error is returned, after every queue was tried.
    pub fn flush(&self) -> Result<(), DmaError> {
        let mut result = Ok(());
        for (cpu, queue) in self.queues.iter().enumerate() {
            let r = self.flush_queue(cpu, &mut queue.0.lock());
            result = result.and(r);
        }
        result
    }

    /// Maps every entry of `list` for direction `dir`, filling in its `dma`; all or nothing: on a
    /// refusal the entries mapped so far are unmapped again and the error is returned.
    pub fn map_sg(&self, list: &mut [SgEntry], dir: Direction) -> Result<(), DmaError> {
        for i in 0..list.len() {
            match self.map(list[i].phys, list[i].len, dir) {
                Ok(addr) => list[i].dma = Some(addr),
                Err(e) => {
                    for done in &mut list[..i] {
                        if let Some(addr) = done.dma.take() {
                            // Just mapped by this call: its unmap is refused only by a unit
                            // error, and the entry stays mapped and reported then.
                            if self.unmap(addr, done.len).is_err() {
                                done.dma = Some(addr);
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Unmaps every mapped entry of `list` (clearing its `dma`). Entries are checked first: if
    /// one names no live mapping, nothing is unmapped.
    pub fn unmap_sg(&self, list: &mut [SgEntry]) -> Result<(), DmaError> {
        for e in list.iter() {
            if let Some(addr) = e.dma {
                self.find(addr, e.len, false)?;
            }
        }
        for e in list.iter_mut() {
            if let Some(addr) = e.dma {
                self.unmap(addr, e.len)?;
                e.dma = None;
            }
        }
        Ok(())
    }

    /// Zero-filled memory of at least `len` bytes (whole pages, naturally aligned up to the HAL's
    /// frame sizes) that the CPU and the device share, mapped read-write for the device. Only
    /// for coherent devices.
    pub fn alloc_coherent(&self, len: u64) -> Result<Coherent, DmaError> {
        if !self.cfg.coherent {
            return Err(DmaError::NotCoherent);
        }
        let size = super::iova::allocation_size(len)?;
        let cpu = self.cpu()?;
        let (seen, backing) = self.coherent_memory(size)?;
        match self.expose(cpu, seen, size, Prot::READ_WRITE, backing) {
            Ok(dma) => Ok(Coherent {
                virt: self.ptr(seen),
                phys: PhysAddr::new(seen),
                dma,
                len,
            }),
            Err(e) => {
                self.give_back(&Mapping {
                    len: size,
                    seen,
                    iova: None,
                    backing,
                });
                Err(e)
            }
        }
    }

    /// Memory for a coherent allocation of `size` bytes: a HAL frame, or pool slots where the
    /// device cannot reach the frame (direct paths) or bounce-only mode keeps it to the pool.
    fn coherent_memory(&self, size: u64) -> Result<(u64, Backing), DmaError> {
        let direct = matches!(self.route, Route::Direct(_));
        if !(direct && self.cfg.bounce == BouncePolicy::Always) {
            let frame = FrameSize::from_log2(size.trailing_zeros()).ok_or(DmaError::TooLarge)?;
            let phys = self.hal.alloc_frame(frame).ok_or(DmaError::OutOfMemory)?;
            if !direct || phys.as_u64() + size <= self.cfg.limit() {
                let backing = Backing::Coherent {
                    frame: Some(frame),
                    slot: None,
                };
                return Ok((phys.as_u64(), backing));
            }
            // SAFETY: just allocated with this size, never handed to anyone.
            unsafe { self.hal.free_frame(phys, frame) };
        }
        let pool = self.pool.ok_or(DmaError::BeyondMask)?;
        let pages = (size / PAGE) as usize;
        let phys = pool.take(pages)?;
        self.zero(phys, size);
        let backing = Backing::Coherent {
            frame: None,
            slot: Some(Slot { phys, pages }),
        };
        Ok((phys, backing))
    }

    /// Gives back a coherent allocation: unmapped (strictly, whatever the handle's unmap
    /// policy: the memory is reused at once) and freed. Refused, and handed back, if it is not
    /// this handle's.
    pub fn free_coherent(&self, c: Coherent) -> Result<(), (Coherent, DmaError)> {
        let cpu = match self.cpu() {
            Ok(cpu) => cpu,
            Err(e) => return Err((c, e)),
        };
        let size = match super::iova::allocation_size(c.len) {
            Ok(s) => s,
            Err(e) => return Err((c, e.into())),
        };
        let m = match self.find(c.dma, size, true) {
            Ok(m) if matches!(m.backing, Backing::Coherent { .. }) && m.seen == c.phys.as_u64() => {
                m
            }
            Ok(m) => {
                self.record(c.dma, m);
                return Err((c, DmaError::NotMapped));
            }
            Err(e) => return Err((c, e)),
        };
        match self.release(cpu, c.dma, m, UnmapPolicy::Strict) {
            Ok(()) => Ok(()),
            Err(e) => Err((c, e)),
        }
    }
}

impl<H: DmaHal> Drop for DmaDevice<'_, H> {
    /// Flushes the deferred unmaps, so nothing stays reachable through stale translations.
    /// Live mappings stay mapped (the device may still be using them); their IOVAs and slots
    /// are not reused.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!("DMA handle dropped, flushing its deferred unmaps failed: {e}");
        }
    }
}

/// What the device may do with a buffer mapped for `dir`.
fn prot(dir: Direction) -> Prot {
    match dir {
        Direction::ToDevice => Prot::READ,
        Direction::FromDevice => Prot::WRITE,
        Direction::Bidirectional => Prot::READ_WRITE,
    }
}
