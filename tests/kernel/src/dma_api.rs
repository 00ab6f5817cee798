//! The DMA API (`iommu::dma`) driving a real device: the `edu` the runner starts at a narrow DMA
//! mask (its default 28 bits unless told otherwise; `dma.slot=N dma.mask=B` on the command
//! line), with buffers above that mask, through an IOMMU (both back-ends) and without one.
//!
//! Every test follows the machine: it reads the mask from the command line and takes its
//! buffers from the RAM above it, and skips with the reason when the machine has none.

use alloc::vec::Vec;

use crate::dma::{Rig, IA_BITS};
use crate::hal::HAL;
use crate::platform::{masked_edu, EduDevice};
use crate::Machine;
use iommu::addr::PhysAddr;
use iommu::dma::{BouncePolicy, BouncePool, Config, Direction, DmaAddr, DmaDevice, DmaError};
use iommu::iommufd::{
    DeviceHandle, DomainId, GroupId, InsecureNoIommu, Iommu, Layout, OwnerId, Region, Target,
};
use iommu::unit::{FaultKind, TranslationUnit};
use iommu_boot::memory::{self, Placement};
use iommu_boot::testing::{fail, Failure, Test, TestResult};
use iommu_boot::{ensure, ensure_eq};

const OWNER: OwnerId = OwnerId(1);
const PAGE: u64 = 4096;

/// A page of RAM for a test, given back on drop.
struct Page {
    phys: u64,
}

impl Page {
    /// A zeroed page above `limit` (from the top of RAM), or `None` when the machine has no
    /// RAM there.
    fn above(limit: u64) -> Option<Self> {
        let phys = memory::alloc(PAGE, Placement::High)?;
        // Dropped (given back) if it is too low.
        let page = Self { phys };
        (phys >= limit).then_some(page)
    }

    fn at(&self, off: u64) -> PhysAddr {
        PhysAddr::new(self.phys + off)
    }

    fn get(&self, i: u64) -> u8 {
        // SAFETY: `i` is reduced into the page, which this test owns (identity-mapped RAM);
        // volatile: the device writes behind the compiler's back.
        unsafe { ((self.phys + i % PAGE) as *const u8).read_volatile() }
    }

    fn set(&self, i: u64, v: u8) {
        // SAFETY: as in `get`.
        unsafe { ((self.phys + i % PAGE) as *mut u8).write_volatile(v) }
    }

    fn fill(&self, range: core::ops::Range<u64>, v: u8) {
        range.for_each(|i| self.set(i, v));
    }

    fn all(&self, range: core::ops::Range<u64>, v: u8) -> bool {
        range.into_iter().all(|i| self.get(i) == v)
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: allocated in `above` with this size; no mapping of it outlives the test.
        unsafe { memory::free(self.phys, PAGE) }
    }
}

/// Two pages above `limit`, or a skip saying the machine has no RAM there.
fn pages_above(limit: u64) -> Result<(Page, Page), Failure> {
    match (Page::above(limit), Page::above(limit)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Failure::Skipped(alloc::format!(
            "no RAM above {limit:#x} to put buffers in (RAM ends at {:#x})",
            memory::ram_end()
        ))),
    }
}

/// RAM for a bounce pool, given back on drop.
struct PoolMemory {
    phys: u64,
    bytes: u64,
}

impl PoolMemory {
    /// `bytes` (a power of two) of RAM ending at or below `limit`.
    fn below(bytes: u64, limit: u64) -> Result<Self, Failure> {
        let phys = memory::alloc(bytes, Placement::Below(limit)).ok_or_else(|| {
            Failure::Skipped(alloc::format!("no RAM below {limit:#x} for a bounce pool"))
        })?;
        Ok(Self { phys, bytes })
    }

    fn pool(&self) -> Result<BouncePool, Failure> {
        // SAFETY: the memory is this test's alone while the pool lives (the pool is dropped
        // before `self`), and the kernel's HAL maps all RAM linearly.
        unsafe { BouncePool::new(PhysAddr::new(self.phys), self.bytes) }.map_err(fail)
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `below` with these bytes; the pool over it is gone.
        unsafe { memory::free(self.phys, self.bytes) }
    }
}

/// edu's DMA mask when QEMU is not told otherwise.
const EDU_DEFAULT_MASK: u64 = (1 << 28) - 1;

/// The edu a test drives through the DMA API, with the mask its handle must respect: the
/// narrow-mask edu the command line names, or else the first edu with edu's default mask
/// imposed on it (it could reach further; the handle must not use that).
fn test_edu(m: &Machine, narrow_only: bool) -> Result<(EduDevice, u64), Failure> {
    if let Some(found) = masked_edu(m)? {
        return Ok(found);
    }
    if narrow_only {
        return Err(no_masked_edu());
    }
    let edu = crate::platform::edu_devices(m)?
        .into_iter()
        .next()
        .ok_or_else(|| fail("no edu"))?;
    Ok((edu, EDU_DEFAULT_MASK))
}

/// The edu a test drives, attached to a DMA API domain of its own.
struct Attached {
    edu: EduDevice,
    mask: u64,
    device: DeviceHandle,
    dom: DomainId,
}

/// [`test_edu`], with the rig's unit, claimed by `OWNER` and attached to a new DMA API domain
/// of `io`; [`detach`] undoes it.
fn attach<'u, U: TranslationUnit>(
    m: &Machine,
    r: &Rig<'u, U>,
    io: &mut Iommu<&'u U>,
    narrow_only: bool,
) -> Result<Attached, Failure> {
    let (edu, mask) = test_edu(m, narrow_only)?;
    let dev = (r.device_id)(&edu);
    let u = io.add_unit(r.unit);
    // DMA only: no interrupt remapper is registered for these tests.
    io.allow_unsafe_interrupts(true);
    let d = io.add_device(u, dev, GroupId(dev.0)).map_err(fail)?;
    io.claim(d, OWNER).map_err(fail)?;
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let dom = io
        .alloc_dma_domain(OWNER, u, r.stage, IA_BITS, &layout)
        .map_err(fail)?;
    io.attach(d, OWNER, Target::Domain(dom)).map_err(fail)?;
    r.faults()?;
    Ok(Attached {
        edu,
        mask,
        device: d,
        dom,
    })
}

/// Releases the device (blocked again) and destroys its domain, whatever the test's outcome.
fn detach<U: TranslationUnit>(io: &mut Iommu<U>, a: &Attached, outcome: TestResult) -> TestResult {
    let released = io.release(a.device, OWNER);
    let destroyed = io.destroy_domain(OWNER, a.dom);
    outcome?;
    released.map_err(fail)?;
    destroyed.map_err(fail)
}

/// Through the IOMMU: buffers (above the edu's mask where the machine has RAM there) get device
/// addresses below the mask that keep their page offset; edu's DMA reads the one and writes the
/// other, both land, also through the driver's `copy_in` / `copy_out`; after the unmap the same
/// address faults, is reported for the edu, and a second unmap is refused. Runs on every boot:
/// with the narrow-mask edu where there is one, else with edu's default mask imposed.
pub fn dma_api_moves_data_both_ways_below_the_mask_and_faults_after_unmap<U>(
    m: &Machine,
    r: &Rig<U>,
) -> TestResult
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    let mut io = Iommu::new();
    let a = attach(m, r, &mut io, false)?;
    let outcome = moves_data(r, &io, &a);
    detach(&mut io, &a, outcome)
}

fn moves_data<U>(r: &Rig<U>, io: &Iommu<&U>, a: &Attached) -> TestResult
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    let (edu, mask, dom) = (&a.edu, a.mask, a.dom);
    let dev = (r.device_id)(edu);
    let (src, dst) = pages_above(mask + 1).or_else(|_| pages_above(0))?;
    (0..64).for_each(|i| src.set(0x100 + i, 0xa0 + i as u8));
    let dma = DmaDevice::paging(io, OWNER, dom, &HAL, Config::new(mask)).map_err(fail)?;
    let from = dma
        .map(src.at(0x100), 64, Direction::ToDevice)
        .map_err(fail)?;
    let to = dma
        .map(dst.at(0x300), 64, Direction::FromDevice)
        .map_err(fail)?;
    for (addr, buf) in [(from, &src), (to, &dst)] {
        ensure!(
            addr.0 + 64 <= mask + 1,
            "{addr:x?} for the buffer at {:#x} is beyond the mask {mask:#x}",
            buf.phys
        );
    }
    ensure_eq!((from.0 % PAGE, to.0 % PAGE), (0x100, 0x300), "page offsets");
    edu.edu.dma_from_ram(from.0, 0, 64).map_err(fail)?;
    edu.edu.dma_to_ram(0, to.0, 64).map_err(fail)?;
    dma.unmap(to, 64).map_err(fail)?;
    ensure!(
        (0..64).all(|i| dst.get(0x300 + i) == 0xa0 + i as u8),
        "edu's copy through {from:x?} -> {to:x?} did not land"
    );
    // The driver's way: map, transfer, unmap in one call each way.
    dst.fill(0..PAGE, 0);
    edu.edu.copy_in(&dma, src.at(0x100), 64, 64).map_err(fail)?;
    edu.edu
        .copy_out(&dma, 64, dst.at(0x800), 64)
        .map_err(fail)?;
    ensure!(
        (0..64).all(|i| dst.get(0x800 + i) == 0xa0 + i as u8),
        "edu's copy_in / copy_out did not move the data"
    );
    dma.unmap(from, 64).map_err(fail)?;
    ensure_eq!(
        dma.unmap(from, 64),
        Err(DmaError::NotMapped),
        "a second unmap"
    );
    edu.edu.dma_from_ram(from.0, 0, 64).map_err(fail)?;
    r.expect_fault(dev, from.0, false, FaultKind::Translation)?;
    // Coherent memory: zeroed, below the mask, and edu's write (the pattern `copy_in` left at
    // offset 64 of its buffer) shows to the CPU as it is.
    let ring = dma.alloc_coherent(PAGE).map_err(fail)?;
    ensure!(
        ring.dma().0 + PAGE <= mask + 1,
        "{:x?} beyond the mask",
        ring.dma()
    );
    edu.edu
        .dma_to_ram(64, ring.dma().0 + 0x40, 64)
        .map_err(fail)?;
    let at = |i: u64| {
        // SAFETY: `i` is inside the page `alloc_coherent` gave; volatile: edu wrote it.
        unsafe { ring.virt().as_ptr().add(i as usize).read_volatile() }
    };
    let landed = (0..0x40).all(|i| at(i) == 0) && (0..64).all(|i| at(0x40 + i) == 0xa0 + i as u8);
    dma.free_coherent(ring).map_err(|(_, e)| fail(e))?;
    ensure!(
        landed,
        "edu's write to coherent memory is not what the CPU reads"
    );
    ensure_eq!(dma.live(), 0);
    Ok(())
}

/// Strict sub-page mode through the IOMMU: a 64-byte buffer in a page full of other data is
/// bounced into a page of its own. edu reading the rest of its device page gets zeros, not the
/// neighbours; edu writing there changes nothing outside the buffer; the page below it faults.
/// A full pool refuses the next buffer by name and changes nothing.
pub fn strict_sub_page_mode_keeps_the_rest_of_the_page_from_the_device<U>(
    m: &Machine,
    r: &Rig<U>,
) -> TestResult
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    let mut io = Iommu::new();
    let a = attach(m, r, &mut io, true)?;
    let outcome = sub_page(r, &io, &a);
    detach(&mut io, &a, outcome)
}

fn sub_page<U>(r: &Rig<U>, io: &Iommu<&U>, a: &Attached) -> TestResult
where
    U: TranslationUnit + Sync,
    U::Domain: Sync,
{
    let (edu, mask, dom) = (&a.edu, a.mask, a.dom);
    let dev = (r.device_id)(edu);
    let (page, _) = pages_above(0)?;
    page.fill(0..PAGE, 0x5e);
    page.fill(0x100..0x140, 0x42);
    let memory = PoolMemory::below(4 * PAGE, u64::MAX)?;
    let pool = memory.pool()?;
    let cfg = Config {
        bounce: BouncePolicy::SubPage,
        ..Config::new(mask)
    };
    let dma = DmaDevice::paging(io, OWNER, dom, &HAL, cfg)
        .map_err(fail)?
        .with_pool(&pool)
        .map_err(fail)?;
    let addr = dma
        .map(page.at(0x100), 64, Direction::Bidirectional)
        .map_err(fail)?;
    let device_page = addr.0 & !(PAGE - 1);
    ensure_eq!(addr.0 - device_page, 0x100, "the buffer's page offset");
    // The buffer itself reaches the device.
    edu.edu.dma_from_ram(addr.0, 0, 64).map_err(fail)?;
    edu.edu
        .dma_to_ram(0, device_page + 0x800, 64)
        .map_err(fail)?;
    edu.edu
        .dma_from_ram(device_page + 0x800, 64, 64)
        .map_err(fail)?;
    // The rest of the device page: zeros, not the neighbours' 0x5e; edu copies them over the
    // buffer, which the CPU then sees as zeros.
    edu.edu
        .dma_from_ram(device_page + 0xc00, 0, 64)
        .map_err(fail)?;
    edu.edu.dma_to_ram(0, addr.0, 64).map_err(fail)?;
    dma.unmap(addr, 64).map_err(fail)?;
    ensure!(
        page.all(0x100..0x140, 0),
        "edu read other data than zeros next to the buffer"
    );
    ensure!(
        page.all(0..0x100, 0x5e) && page.all(0x140..PAGE, 0x5e),
        "DMA reached the rest of the original page"
    );
    // The page below the bounce page is nobody's: it faults. (Not the page above: IOVAs come
    // top-down, and above the top page edu's mask wraps the address round to 0.)
    let addr = dma
        .map(page.at(0x100), 64, Direction::ToDevice)
        .map_err(fail)?;
    let beyond = (addr.0 & !(PAGE - 1)) - PAGE;
    edu.edu.dma_from_ram(beyond, 0, 64).map_err(fail)?;
    r.expect_fault(dev, beyond, false, FaultKind::Translation)?;
    // Four slots: three more buffers fill the pool, the next is refused.
    let mut held: Vec<DmaAddr> = Vec::new();
    for i in 0..3 {
        held.push(
            dma.map(page.at(0x200 + i * 64), 64, Direction::ToDevice)
                .map_err(fail)?,
        );
    }
    ensure_eq!(
        dma.map(page.at(0x400), 64, Direction::ToDevice),
        Err(DmaError::PoolExhausted)
    );
    ensure_eq!((dma.live(), pool.free_slots()), (4, 0));
    for a in held.into_iter().chain([addr]) {
        dma.unmap(a, 64).map_err(fail)?;
    }
    ensure_eq!(pool.free_slots(), pool.slots());
    Ok(())
}

/// Through an identity attach: the device's addresses are physical, so a buffer above the
/// mask goes through a pool below it, and edu's DMA moves the data both ways; a buffer the
/// device reaches is handed over where it is.
pub fn identity_bounces_buffers_beyond_the_mask<U: TranslationUnit>(
    m: &Machine,
    r: &Rig<U>,
) -> TestResult {
    let (edu, mask) = test_edu(m, true)?;
    if !r.unit.info().identity {
        return Err(Failure::Skipped("the unit has no identity mode".into()));
    }
    let memory = PoolMemory::below(4 * PAGE, mask + 1)?;
    let pool = memory.pool()?;
    let (src, dst) = pages_above(mask + 1)?;
    (0..64).for_each(|i| src.set(i, 0x70 + i as u8));
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    io.allow_unsafe_interrupts(true);
    io.allow_identity(true);
    let dev = (r.device_id)(&edu);
    let d = io.add_device(u, dev, GroupId(dev.0)).map_err(fail)?;
    io.claim(d, OWNER).map_err(fail)?;
    let outcome = (|| {
        ensure_eq!(
            DmaDevice::identity(&io, d, OWNER, &HAL, Config::new(mask)).err(),
            Some(DmaError::NotIdentity),
            "a blocked device"
        );
        io.attach(d, OWNER, Target::Identity).map_err(fail)?;
        let dma = DmaDevice::identity(&io, d, OWNER, &HAL, Config::new(mask))
            .map_err(fail)?
            .with_pool(&pool)
            .map_err(fail)?;
        edu.edu.copy_in(&dma, src.at(0), 0, 64).map_err(fail)?;
        edu.edu.copy_out(&dma, 0, dst.at(0x400), 64).map_err(fail)?;
        ensure!(
            (0..64).all(|i| dst.get(0x400 + i) == 0x70 + i as u8),
            "edu's copy through the pool did not land"
        );
        // A buffer inside the device's reach (in the pool's memory, unused) is not bounced.
        let near = dma
            .map(pool.base(), 64, Direction::ToDevice)
            .map_err(fail)?;
        ensure_eq!(near.0, pool.base().as_u64());
        dma.unmap(near, 64).map_err(fail)?;
        ensure_eq!(pool.free_slots(), pool.slots());
        Ok(())
    })();
    let released = io.release(d, OWNER);
    outcome?;
    released.map_err(fail)
}

fn no_masked_edu() -> Failure {
    Failure::Skipped("no edu at a narrow mask on this machine (dma.slot)".into())
}

/// The machine has no IOMMU, as its command line says (`iommu=none`): the firmware describes
/// none, and no-IOMMU mode can be enabled only because of that.
pub fn the_firmware_describes_no_iommu(m: &mut Machine) -> TestResult {
    let units = crate::platform::iommus_described(m)?;
    ensure_eq!(units, 0, "IOMMUs described by the firmware");
    InsecureNoIommu::enable(units).map_err(fail)?;
    ensure!(
        InsecureNoIommu::enable(1).is_err(),
        "no-IOMMU mode with a unit present"
    );
    Ok(())
}

/// Without an IOMMU, the same driver code: buffers beyond the edu's mask are bounced through a
/// pool below it, edu's DMA moves data both ways; bounce-only mode keeps every address in the
/// pool; a full pool and a buffer with no way round the mask are refused by name.
pub fn edu_moves_data_through_bounce_buffers_without_an_iommu(m: &mut Machine) -> TestResult {
    let (edu, mask) = masked_edu(m)?.ok_or_else(no_masked_edu)?;
    let insecure = InsecureNoIommu::enable(crate::platform::iommus_described(m)?).map_err(fail)?;
    let (src, dst) = pages_above(mask + 1)?;
    (0..64).for_each(|i| src.set(0x100 + i, 0x30 + i as u8));
    let memory = PoolMemory::below(4 * PAGE, mask + 1)?;
    let pool = memory.pool()?;
    // No pool: no way round the mask.
    let bare = DmaDevice::no_iommu(&insecure, &HAL, Config::new(mask)).map_err(fail)?;
    ensure_eq!(
        bare.map(src.at(0x100), 64, Direction::ToDevice),
        Err(DmaError::BeyondMask)
    );
    for bounce in [BouncePolicy::IfNeeded, BouncePolicy::Always] {
        let cfg = Config {
            bounce,
            ..Config::new(mask)
        };
        let dma = DmaDevice::no_iommu(&insecure, &HAL, cfg)
            .map_err(fail)?
            .with_pool(&pool)
            .map_err(fail)?;
        dst.fill(0..PAGE, 0);
        let from = dma
            .map(src.at(0x100), 64, Direction::ToDevice)
            .map_err(fail)?;
        let to = dma
            .map(dst.at(0x300), 64, Direction::FromDevice)
            .map_err(fail)?;
        let in_pool = |a: DmaAddr| a.0 >= pool.base().as_u64() && a.0 + 64 <= pool.end();
        ensure!(
            in_pool(from) && in_pool(to),
            "{from:x?} {to:x?} outside the pool"
        );
        // The same driver code as through an IOMMU.
        edu.edu.copy_in(&dma, src.at(0x100), 64, 64).map_err(fail)?;
        edu.edu
            .copy_out(&dma, 64, dst.at(0xc00), 64)
            .map_err(fail)?;
        ensure!(
            (0..64).all(|i| dst.get(0xc00 + i) == 0x30 + i as u8),
            "{bounce:?}: edu's copy_in / copy_out did not move the data"
        );
        dst.fill(0xc00..0xc40, 0);
        edu.edu.dma_from_ram(from.0, 0, 64).map_err(fail)?;
        edu.edu.dma_to_ram(0, to.0, 64).map_err(fail)?;
        ensure!(
            dst.all(0..PAGE, 0),
            "edu's write reached the buffer before the unmap"
        );
        dma.unmap(to, 64).map_err(fail)?;
        ensure!(
            (0..64).all(|i| dst.get(0x300 + i) == 0x30 + i as u8),
            "{bounce:?}: edu's copy did not come back out of the pool"
        );
        // The pool's other three slots, then one too many.
        let mut held = Vec::new();
        for i in 0..3 {
            held.push(
                dma.map(dst.at(i * 64), 64, Direction::ToDevice)
                    .map_err(fail)?,
            );
        }
        ensure_eq!(
            dma.map(dst.at(0x800), 64, Direction::ToDevice),
            Err(DmaError::PoolExhausted)
        );
        ensure_eq!(dma.live(), 4);
        for a in held.into_iter().chain([from]) {
            dma.unmap(a, 64).map_err(fail)?;
        }
        ensure_eq!(pool.free_slots(), pool.slots());
    }
    Ok(())
}

/// The tests of a machine without an IOMMU (`iommu=none`).
pub const NO_IOMMU_TESTS: &[Test<Machine>] = &[
    Test {
        name: "the_firmware_describes_no_iommu",
        run: the_firmware_describes_no_iommu,
    },
    Test {
        name: "edu_moves_data_through_bounce_buffers_without_an_iommu",
        run: edu_moves_data_through_bounce_buffers_without_an_iommu,
    },
];
