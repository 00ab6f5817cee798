//! The test kernel as a tiny hypervisor, through the object model
//! (`iommu::iommufd`): a guest's memory behind a stage-2 nest parent, a vIOMMU over it, and edu
//! handed to the "guest" under a virtual stream id. The guest
//! side builds its own stage-1 table and CD in guest-physical memory, installs them through a
//! vSTE, and maintains them with SMMU commands that the host checks and forwards.
//!
//! Needs an SMMU with both stages: `virt` (QEMU 10), at EL1 and at EL2; skipped on the
//! stage-only `virt-9.0` machines.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;

use super::dma::{first_edu, unit, Aligned};
use crate::hal::KernelHal;
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::iommufd::{Error, GroupId, Iommu, Layout, OwnerId, Region, Target};
use iommu::pagetable::{
    Coherency, Gather, Granule as PtGranule, PageTable, Prot, VmsaConfig, VmsaStage1,
};
use iommu::unit::{FaultKind, Stage, TranslationUnit, UnitError};
use iommu_boot::testing::{allow_guest_error, fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_smmuv3::attributes::Granule;
use iommu_smmuv3::command::Command;
use iommu_smmuv3::context_descriptor::ContextDescriptor;
use iommu_smmuv3::idr::OutputAddressSize;
use iommu_smmuv3::stream_table::{Stage1, StreamTableEntry};
use iommu_smmuv3::viommu::parent_in_use;

/// Guest RAM: 64 KiB at guest-physical 2 GiB. The last page is the guest's DMA buffer; the
/// frames below it are the guest's allocator for its stage-1 tables and CD.
const GUEST_RAM: usize = 0x1_0000;
const IPA_BASE: u64 = 0x8000_0000;
const IPA_BUFFER: u64 = IPA_BASE + GUEST_RAM as u64 - 0x1000;
/// The guest's IOVA for its buffer, its ASID, and the stream id it knows edu by.
const GUEST_IOVA: u64 = 0x4_0000;
const GUEST_ASID: u16 = 5;
const VIRTUAL_SID: u32 = 0x20;
/// Guest-physical bits the nest parent translates (and the guest's stage-1 input size).
const GUEST_BITS: u32 = 39;

/// The guest's frame allocator over its RAM: hands out guest-physical addresses (IPAs) and
/// reaches them through the host's mapping of guest RAM. Frames are never reused (a bump
/// allocator whose `free_frame` forgets), so a zeroed RAM keeps every new frame zeroed.
struct GuestHal {
    /// Host physical (== virtual) address of guest RAM.
    host: u64,
    /// Next free IPA; only the allocating CPU moves it.
    next: AtomicU64,
}

// SAFETY: frames are distinct, aligned ranges of guest RAM (zeroed at creation and never
// handed out twice); `phys_to_virt` gives the host's identity mapping of that RAM, which the
// kernel reads and writes freely; the IPAs are what the guest's stage 1 (walked through the
// nest parent) must be given.
unsafe impl Hal for GuestHal {
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        let bytes = size.bytes() as u64;
        let mut ipa = 0;
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                ipa = next.next_multiple_of(bytes);
                let end = ipa.checked_add(bytes)?;
                (end <= IPA_BUFFER).then_some(end)
            })
            .ok()?;
        Some(PhysAddr::new(ipa))
    }

    unsafe fn free_frame(&self, _frame: PhysAddr, _size: FrameSize) {}

    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        let host = phys.as_u64().wrapping_sub(IPA_BASE).wrapping_add(self.host);
        NonNull::new(host as *mut u8).unwrap_or(NonNull::dangling())
    }

    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        PhysAddr::new((virt.as_ptr() as u64).wrapping_sub(self.host) + IPA_BASE)
    }
}

/// A guest TLBI_NH_VA for its ASID at `iova`, with a VMID the host must replace.
fn guest_tlbi_va(iova: u64) -> Result<[u64; 2], Failure> {
    Command::TlbiNhVa {
        vmid: 0x77,
        asid: GUEST_ASID,
        addr: iova,
        leaf: true,
        range: None,
    }
    .encode()
    .map_err(fail)
}

fn encode(c: Command) -> Result<[u64; 2], Failure> {
    c.encode().map_err(fail)
}

/// The hypervisor flow on a nested-capable SMMU.
pub fn guest_stage1_over_viommu_translates_and_invalidates(m: &mut Machine) -> TestResult {
    type Unit = iommu_smmuv3::unit::SmmuUnit<&'static KernelHal>;
    let unit: &Unit = unit(m)?;
    let s = unit.features().stages;
    if !(s.stage1() && s.stage2()) {
        skip!("a vIOMMU needs an SMMU with both stages");
    }
    allow_guest_error("translation failed for iova");
    let (first, dev) = first_edu(m)?;
    let edu = &first.edu;

    // Host: the object model over the unit, edu owned by the guest.
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    // This test is about DMA; no interrupt remapper is registered, so owning a device needs
    // the explicit (insecure) opt-in.
    io.allow_unsafe_interrupts(true);
    let guest = OwnerId(1);
    let devh = io.add_device(u, dev, GroupId(dev.0)).map_err(fail)?;
    io.claim(devh, guest).map_err(fail)?;

    // Host: guest RAM, and the nest parent mapping it at IPA_BASE.
    let ram = Aligned::new(GUEST_RAM, 0)?;
    let host_buffer = ram.phys().as_u64() + (IPA_BUFFER - IPA_BASE);
    let buffer_byte = |i: usize| ram.get(GUEST_RAM - 0x1000 + i);
    let windows = [Region::below_bits(GUEST_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let parent = io
        .alloc_nest_parent(guest, u, GUEST_BITS, &layout)
        .map_err(fail)?;
    io.map(
        guest,
        parent,
        Iova::new(IPA_BASE),
        ram.phys(),
        GUEST_RAM as u64,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    // Only a nest parent can carry a vIOMMU; and the unit itself refuses a stage-1 one.
    let stage1 = io
        .alloc_domain(guest, u, Stage::First, GUEST_BITS, &layout)
        .map_err(fail)?;
    ensure_eq!(
        io.alloc_viommu(guest, stage1),
        Err(Error::NotNestParent(stage1))
    );
    ensure!(
        matches!(
            unit.new_viommu(io.domain_hw(guest, stage1).map_err(fail)?),
            Err(UnitError::Unsupported(_))
        ),
        "a vIOMMU over a stage-1 domain was accepted"
    );
    io.destroy_domain(guest, stage1).map_err(fail)?;
    let viommu = io.alloc_viommu(guest, parent).map_err(fail)?;
    let parent_hw = io.domain_hw(guest, parent).map_err(fail)?;
    ensure!(
        parent_in_use(unit, parent_hw),
        "the nest parent is not marked in use"
    );
    ensure_eq!(
        io.viommu_hw(guest, viommu).map_err(fail)?.vmid(),
        parent_hw.tag(),
        "the guest runs under the parent's VMID"
    );
    io.set_virtual_device(guest, viommu, devh, VIRTUAL_SID)
        .map_err(fail)?;
    println!(
        "  hypervisor: guest RAM ({} KiB at IPA {IPA_BASE:#x}) in a stage-2 nest parent; vIOMMU \
         under the parent's VMID gives the guest edu (stream id {:#x}) as virtual stream id {VIRTUAL_SID:#x}",
        GUEST_RAM / 1024,
        dev.0
    );

    // Guest: its stage-1 table and CD, in its own memory, addresses all IPAs.
    let ghal = GuestHal {
        host: ram.phys().as_u64(),
        next: AtomicU64::new(IPA_BASE),
    };
    let format = VmsaStage1::new(VmsaConfig {
        granule: PtGranule::Size4K,
        input_bits: GUEST_BITS,
        output_bits: 40,
    })
    .map_err(fail)?;
    let mair = format.mair();
    let gtable = PageTable::new(format, &ghal, Coherency::Coherent).map_err(fail)?;
    gtable
        .map(
            Iova::new(GUEST_IOVA),
            PhysAddr::new(IPA_BUFFER),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
    let cd_ipa = ghal
        .alloc_frame(FrameSize::SIZE_4K)
        .ok_or_else(|| fail("guest RAM full"))?;
    let cd = ContextDescriptor::new(
        GUEST_ASID,
        gtable.root(),
        GUEST_BITS as u8,
        Granule::Size4K,
        OutputAddressSize::Bits40,
        mair,
    )
    .map_err(fail)?
    .encode()
    .map_err(fail)?;
    let cd_ptr = ghal.phys_to_virt(cd_ipa).cast::<u64>();
    for (i, w) in cd.iter().enumerate() {
        // SAFETY: the CD frame is a 4 KiB frame of guest RAM the guest allocator handed out;
        // the 8 words are inside it and 8-byte aligned.
        unsafe { cd_ptr.as_ptr().add(i).write_volatile(*w) };
    }
    let vste = StreamTableEntry::stage1(Stage1::single_cd(cd_ipa))
        .encode()
        .map_err(fail)?;

    // A vSTE asking for stage 2 is refused, naming Config.
    let s2_vste = StreamTableEntry::stage2(
        iommu_smmuv3::stream_table::Stage2::new(
            1,
            PhysAddr::new(IPA_BASE),
            39,
            Granule::Size4K,
            1,
            OutputAddressSize::Bits40,
        )
        .map_err(fail)?,
    )
    .encode()
    .map_err(fail)?;
    ensure_eq!(
        io.alloc_nested_domain(guest, viommu, &s2_vste),
        Err(Error::Unit(UnitError::GuestEntry("Config")))
    );

    // Host: the nested domain from the vSTE, attached to edu (known to the guest as
    // VIRTUAL_SID).
    let nested = io.alloc_nested_domain(guest, viommu, &vste).map_err(fail)?;
    ensure_eq!(
        io.map(
            guest,
            nested,
            Iova::new(0),
            ram.phys(),
            4096,
            Prot::READ_WRITE
        ),
        Err(Error::NotPaging(nested)),
        "the host mapped into a nested domain, whose stage 1 is the guest's"
    );
    ensure!(
        matches!(
            unit.map(
                io.domain_hw(guest, nested).map_err(fail)?,
                Iova::new(0),
                ram.phys(),
                4096,
                Prot::READ_WRITE
            ),
            Err(UnitError::Unsupported(_))
        ),
        "the unit mapped into a nested domain"
    );
    io.attach(devh, guest, Target::Domain(nested))
        .map_err(fail)?;
    println!(
        "  hypervisor: the guest's own stage-1 table and CD (in its RAM) installed from its vSTE; \
         a vSTE asking for stage 2 was refused"
    );
    ensure_eq!(
        io.destroy_viommu(guest, viommu),
        Err(Error::ViommuBusy { viommu, nested: 1 })
    );
    unit.drain_faults(&mut |_| {}).map_err(fail)?;

    // edu DMA with the guest's IOVA lands in the host page behind the guest's buffer.
    (0..64).for_each(|i| ram.set(GUEST_RAM - 0x1000 + i, 0x40 + i as u8));
    let read = edu.dma_from_ram(GUEST_IOVA, 0, 64);
    let write = edu.dma_to_ram(0, GUEST_IOVA + 2048, 64);
    let landed = (0..64).all(|i| buffer_byte(2048 + i) == 0x40 + i as u8);
    println!(
        "  hypervisor: edu DMA to guest IOVA {GUEST_IOVA:#x} {} host page {host_buffer:#x}",
        if landed { "lands in" } else { "MISSED" }
    );

    // A guest batch whose second command names a stream that is not the guest's: the first
    // is issued, the rest is not.
    let refused = io.invalidate(
        guest,
        viommu,
        &[
            guest_tlbi_va(0x9_0000)?,
            encode(Command::CfgiCdAll {
                sid: VIRTUAL_SID + 1,
            })?,
            encode(Command::sync())?,
        ],
    );

    // The guest unmaps its buffer: until it forwards the TLBI, the SMMU may still use the
    // cached translation; after TLBI_NH_VA + CMD_SYNC it must not.
    let mut gather = Gather::new();
    let unmapped = gtable.unmap(Iova::new(GUEST_IOVA), 4096, &mut gather);
    // QEMU keeps the cached translation: the same page is still reachable here, which is what
    // makes the forwarded TLBI (under the host's VMID, not the 0x77 the guest wrote) matter.
    let stale = edu.dma_to_ram(0, GUEST_IOVA + 3072, 64);
    let stale_landed = (0..64).all(|i| buffer_byte(3072 + i) == 0x40 + i as u8);
    let forwarded = io.invalidate(
        guest,
        viommu,
        &[
            guest_tlbi_va(GUEST_IOVA)?,
            encode(Command::CfgiCdAll { sid: VIRTUAL_SID })?,
            encode(Command::sync())?,
        ],
    );
    // SAFETY: the guest's invalidation of the unmapped range completed (its forwarded batch
    // ended with a CMD_SYNC the host waited for); the guest allocator never reuses frames.
    unsafe { gather.complete(&ghal) };
    (2048..2048 + 64).for_each(|i| ram.set(GUEST_RAM - 0x1000 + i, 0x11));
    let after = edu.dma_to_ram(0, GUEST_IOVA + 2048, 64);
    let mut faults = Vec::new();
    unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
    println!(
        "  hypervisor: guest batch naming a foreign stream id stopped after {} command(s); \
         guest unmapped its page and forwarded TLBI_NH_VA + SYNC",
        refused.as_ref().map_or(0, |r| r.done)
    );
    if let Some(f) = faults.first() {
        println!("  hypervisor: the guest's DMA to its old IOVA faulted: {f}");
    }

    // A guest bypass vSTE: stage 2 alone, so the device's addresses are guest-physical.
    let bypass = io
        .alloc_nested_domain(
            guest,
            viommu,
            &StreamTableEntry::bypass().encode().map_err(fail)?,
        )
        .map_err(fail)?;
    io.attach(devh, guest, Target::Domain(bypass))
        .map_err(fail)?;
    let by_ipa = edu.dma_to_ram(0, IPA_BUFFER + 1024, 64);
    // A guest abort vSTE (V = 1, Config = 0): the same DMA is refused, silently.
    let abort = io
        .alloc_nested_domain(
            guest,
            viommu,
            &StreamTableEntry::abort().encode().map_err(fail)?,
        )
        .map_err(fail)?;
    io.attach(devh, guest, Target::Domain(abort))
        .map_err(fail)?;
    let aborted = edu.dma_to_ram(0, IPA_BUFFER + 512, 64);
    let aborted_untouched = (512..512 + 64).all(|i| buffer_byte(i) == 0);

    // Teardown, in the only order the model allows.
    let parent_busy = io.destroy_domain(guest, parent);
    io.attach(devh, guest, Target::Blocked).map_err(fail)?;
    for d in [nested, bypass, abort] {
        io.destroy_domain(guest, d).map_err(fail)?;
    }
    io.unset_virtual_device(guest, viommu, VIRTUAL_SID)
        .map_err(fail)?;
    io.release(devh, guest).map_err(fail)?;
    let destroyed = io.destroy_viommu(guest, viommu);
    let parent_freed = !parent_in_use(unit, io.domain_hw(guest, parent).map_err(fail)?);
    io.destroy_domain(guest, parent).map_err(fail)?;
    println!(
        "  hypervisor: guest bypass and abort vSTEs honoured; torn down: device, nested \
         domains, virtual id, vIOMMU, parent"
    );

    read.map_err(fail)?;
    write.map_err(fail)?;
    ensure!(
        landed,
        "guest-IOVA DMA did not land in host page {host_buffer:#x}"
    );
    let refused = refused.map_err(fail)?;
    ensure_eq!(
        refused.refused,
        Some(UnitError::GuestCommand("stream id not the guest's"))
    );
    ensure_eq!(
        refused.done,
        1,
        "the command before the refused one was issued"
    );
    ensure_eq!(unmapped.map_err(fail)?, 4096);
    stale.map_err(fail)?;
    ensure!(
        stale_landed,
        "no cached translation survived the guest's unmap: the TLBI test proves nothing"
    );
    let forwarded = forwarded.map_err(fail)?;
    ensure_eq!(forwarded.refused, None);
    ensure_eq!(forwarded.done, 3);
    after.map_err(fail)?;
    ensure!(
        (2048..2048 + 64).all(|i| buffer_byte(i) == 0x11),
        "DMA to the guest IOVA landed after the guest's unmap and forwarded TLBI"
    );
    let hit = faults.iter().any(|f| {
        f.device == dev && f.address & !0xfff == GUEST_IOVA && f.kind == FaultKind::Translation
    });
    ensure!(
        hit,
        "expected a translation fault by {dev:?} at {GUEST_IOVA:#x}, got {faults:?}"
    );
    by_ipa.map_err(fail)?;
    ensure!(
        (0..64).all(|i| buffer_byte(1024 + i) == 0x40 + i as u8),
        "with a bypass vSTE, DMA to a guest-physical address did not land through stage 2"
    );
    aborted.map_err(fail)?;
    ensure!(aborted_untouched, "DMA got through a guest abort vSTE");
    ensure_eq!(
        parent_busy,
        Err(Error::ParentInUse {
            domain: parent,
            viommus: 1
        })
    );
    destroyed.map_err(fail)?;
    ensure!(
        parent_freed,
        "the nest parent stayed in use after its vIOMMU went"
    );
    Ok(())
}

/// [`crate::shadow`] with a guest that writes VMSA stage-1 tables (4 KiB granule, `IA_BITS`) and
/// invalidates their pages with CMD_TLBI_NH_VA (ASID at \[63:48\], Leaf) and CMD_SYNC: the
/// guest's own SMMU on one that has no stage 2 to nest on, or where the host keeps nesting for
/// others.
pub(super) fn shadowing(m: &mut Machine) -> TestResult {
    super::dma::with_machine(m, |_, rig| {
        let encoder = VmsaStage1::new(VmsaConfig {
            granule: PtGranule::Size4K,
            input_bits: crate::dma::IA_BITS,
            output_bits: 48,
        })
        .map_err(fail)?;
        let guest = crate::shadow::GuestIommu {
            format: iommu::iommufd::GuestFormat::VmsaStage1 {
                granule: PtGranule::Size4K,
                input_bits: crate::dma::IA_BITS,
            },
            encoder,
            tag: 5,
            virtual_id: 0x10,
            page: |asid, va| [0x12 | u64::from(asid) << 48, va | 1],
            wait: [0x46, 0],
        };
        crate::shadow::a_guest_drives_its_own_tables_through_shadowing(rig, &guest)
    })
}
