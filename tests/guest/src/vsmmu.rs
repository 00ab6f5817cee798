//! The guest's driver for its own SMMU, which the hypervisor emulates: a linear stream table,
//! one context descriptor, a stage-1 table built with the crate's page-table engine, a command
//! queue and an event queue, all in guest RAM at guest-physical addresses (its MMU is off, so
//! an address is its IPA). Everything is encoded with the crate's own types.
//!
//! Reported in order (through HVC_REPORT): 1 if the ID registers say stage 1 only; bytes of a
//! DMA through its stage 1 that came back wrong; 1 if a DMA after its unmap + TLBI + SYNC left
//! the page untouched; the event it then read (type, stream id, input address); 1 if a command
//! naming a stream that is not its own stopped the queue with CERROR_ILL; 1 if the queue ran on
//! from that command once it replaced it and acknowledged GERROR; the events that arrived after
//! a DMA through a stage-1 mapping to a guest-physical address outside its RAM (0: a stage-2
//! fault is the hypervisor's).

use core::ptr::NonNull;

use crate::edu::Edu;
use crate::page::{byte, ipa, set_byte, set_words, word, Page};
use iommu::addr::{Iova, PhysAddr};
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::{
    Coherency, Gather, Granule as PtGranule, PageTable, Prot, VmsaConfig, VmsaStage1,
};
use iommu_smmuv3::attributes::Granule;
use iommu_smmuv3::cmdq::{queue_base_register, CommandErrorCode};
use iommu_smmuv3::command::Command;
use iommu_smmuv3::context_descriptor::ContextDescriptor;
use iommu_smmuv3::idr::{self, Stages};
use iommu_smmuv3::registers::{Readable, SmmuRegisters, Writeable, CR0};
use iommu_smmuv3::stream_table::{Stage1, StreamTableEntry};

/// The IOVA the guest gives edu, its ASID, and the input bits of its stage 1.
const IOVA: u64 = 0x10_0000;
const ASID: u16 = 3;
const IA_BITS: u32 = 32;
/// Queue sizes: 2^5 entries each.
const QUEUE_LOG2: u8 = 5;
/// Stream table: 2^6 STEs (64 bytes each), as the vSMMU's IDR1.SIDSIZE allows.
const STRTAB_LOG2: u32 = 6;
/// How long the guest waits for its vSMMU (register reads), and for events to show up.
const POLLS: u32 = 1000;

static mut STRTAB: Page = Page::ZERO;
static mut CD: Page = Page::ZERO;
static mut CMDQ: Page = Page::ZERO;
static mut EVENTQ: Page = Page::ZERO;
/// The DMA target behind IOVA.
static mut TARGET: Page = Page::ZERO;
/// Frames for the stage-1 table.
static mut POOL: [Page; 8] = [const { Page::ZERO }; 8];
static POOL_NEXT: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// The guest's frame allocator for its stage-1 table: the pages of [`POOL`], never reused.
struct PoolHal;

// SAFETY: frames are distinct pages of POOL (zeroed .bss), handed out once; with the guest's
// MMU off a guest-physical address is the address the guest uses.
unsafe impl Hal for PoolHal {
    fn alloc_frame(&self, size: FrameSize) -> Option<PhysAddr> {
        if size != FrameSize::SIZE_4K {
            return None;
        }
        let i = POOL_NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        // SAFETY: only the address of the i-th page is taken.
        (i < 8).then(|| PhysAddr::new(unsafe { ipa(&raw mut POOL[i]) }))
    }

    unsafe fn free_frame(&self, _frame: PhysAddr, _size: FrameSize) {}

    fn phys_to_virt(&self, phys: PhysAddr) -> NonNull<u8> {
        NonNull::new(phys.as_u64() as *mut u8).unwrap_or(NonNull::dangling())
    }

    fn virt_to_phys(&self, virt: NonNull<u8>) -> PhysAddr {
        PhysAddr::new(virt.as_ptr() as u64)
    }
}

/// The command queue's producer side.
struct Cmdq<'r> {
    regs: &'r SmmuRegisters,
    prod: u32,
}

impl Cmdq<'_> {
    fn wrap_mask() -> u32 {
        (2 << QUEUE_LOG2) - 1
    }

    /// Writes `cmds` at PROD and publishes them.
    fn submit(&mut self, cmds: &[Command]) -> Result<(), ()> {
        for c in cmds {
            let words = c.encode().map_err(|_| ())?;
            let slot = (self.prod & ((1 << QUEUE_LOG2) - 1)) as usize;
            set_words(&raw mut CMDQ, slot * 2, &words);
            self.prod = (self.prod + 1) & Self::wrap_mask();
        }
        self.regs.cmdq_prod.set(self.prod);
        Ok(())
    }

    /// Waits until the vSMMU consumed everything (Ok) or stopped on an error (Err(CONS)).
    fn wait(&self) -> Result<(), Option<u32>> {
        for _ in 0..POLLS {
            if (self.regs.gerror.get() ^ self.regs.gerrorn.get()) & 1 != 0 {
                return Err(Some(self.regs.cmdq_cons.get()));
            }
            if self.regs.cmdq_cons.get() & Self::wrap_mask() == self.prod {
                return Ok(());
            }
        }
        Err(None)
    }
}

/// Runs the tests on the vSMMU at `base`, edu being stream `vsid` behind it; `outside` is a
/// guest-physical address outside its RAM.
pub fn tests(
    edu: &Edu,
    base: u64,
    vsid: u32,
    outside: u64,
    report: &dyn Fn(u64),
) -> Result<(), ()> {
    let regs_ptr = NonNull::new(base as *mut SmmuRegisters).ok_or(())?;
    // SAFETY: the hypervisor emulates an SMMUv3 register frame at `base` for the whole run;
    // its accesses trap, so no memory is behind the reference.
    let regs = unsafe { regs_ptr.as_ref() };
    // SAFETY: as above.
    let features = unsafe { idr::read_features(regs_ptr) };
    report(u64::from(features.stages == Stages::Stage1));

    // Before its SMMU translates, edu reaches guest-physical addresses (the VM's stage 2):
    // load edu's buffer with the pattern from TARGET, then clear TARGET.
    let target = &raw mut TARGET;
    for i in 0..64 {
        set_byte(target, i, crate::guest::dma_pattern(i));
    }
    edu.dma_from_ram(ipa(target), 0, 64).map_err(|_| ())?;
    for i in 0..64 {
        set_byte(target, i, 0);
    }

    // Tables and queues, then the SMMU on.
    let strtab = &raw mut STRTAB;
    let cd_page = &raw mut CD;
    let cmdq = &raw mut CMDQ;
    let eventq = &raw mut EVENTQ;
    regs.strtab_base.set(ipa(strtab));
    regs.strtab_base_cfg.set(STRTAB_LOG2);
    regs.cmdq_base.set(queue_base_register(
        PhysAddr::new(ipa(cmdq)),
        QUEUE_LOG2,
        true,
    ));
    regs.cmdq_prod.set(0);
    regs.cmdq_cons.set(0);
    regs.eventq_base.set(queue_base_register(
        PhysAddr::new(ipa(eventq)),
        QUEUE_LOG2,
        true,
    ));
    regs.eventq_prod.set(0);
    regs.eventq_cons.set(0);
    regs.cr0
        .write(CR0::SMMUEN::SET + CR0::CMDQEN::SET + CR0::EVENTQEN::SET);
    if regs.cr0ack.get() != regs.cr0.get() {
        return Err(());
    }
    let mut q = Cmdq { regs, prod: 0 };

    // Its stage 1: IOVA -> TARGET.
    let format = VmsaStage1::new(VmsaConfig {
        granule: PtGranule::Size4K,
        input_bits: IA_BITS,
        output_bits: features.oas.bits().map_or(40, u32::from),
    })
    .map_err(|_| ())?;
    let mair = format.mair();
    let table = PageTable::new(format, PoolHal, Coherency::Coherent).map_err(|_| ())?;
    table
        .map(
            Iova::new(IOVA),
            PhysAddr::new(ipa(target)),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(|_| ())?;
    let cd = ContextDescriptor::new(
        ASID,
        table.root(),
        IA_BITS as u8,
        Granule::Size4K,
        features.oas,
        mair,
    )
    .and_then(|cd| cd.encode())
    .map_err(|_| ())?;
    set_words(cd_page, 0, &cd);
    let ste = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(ipa(cd_page))))
        .encode()
        .map_err(|_| ())?;
    set_words(strtab, vsid as usize * 8, &ste);
    q.submit(&[
        Command::CfgiSte {
            sid: vsid,
            leaf: true,
        },
        Command::sync(),
    ])?;
    q.wait().map_err(|_| ())?;

    // DMA through its stage 1: edu's buffer still holds the passthrough test's pattern.
    edu.dma_to_ram(0, IOVA, 64).map_err(|_| ())?;
    let wrong = (0..64)
        .filter(|&i| byte(target, i) != crate::guest::dma_pattern(i))
        .count();
    report(wrong as u64);

    // Unmap, TLBI + SYNC, and the next DMA faults.
    let mut gather = Gather::new();
    table
        .unmap(Iova::new(IOVA), 4096, &mut gather)
        .map_err(|_| ())?;
    q.submit(&[
        Command::TlbiNhVa {
            vmid: 0,
            asid: ASID,
            addr: IOVA,
            leaf: true,
            range: None,
        },
        Command::sync(),
    ])?;
    q.wait().map_err(|_| ())?;
    // SAFETY: the TLBI and its SYNC completed; PoolHal never reuses frames anyway.
    unsafe { gather.complete(&PoolHal) };
    for i in 0..64 {
        set_byte(target, i, 0);
    }
    edu.dma_to_ram(0, IOVA, 64).map_err(|_| ())?;
    report(u64::from((0..64).all(|i| byte(target, i) == 0)));

    // The fault, in its event queue with its own stream id.
    let mut prod = 0;
    for _ in 0..POLLS {
        prod = regs.eventq_prod.get() & ((2 << QUEUE_LOG2) - 1);
        if prod != 0 {
            break;
        }
    }
    if prod == 0 {
        return Err(());
    }
    let w0 = word(eventq, 0);
    let w2 = word(eventq, 2);
    report(w0 & 0xff);
    report(w0 >> 32);
    report(w2);
    regs.eventq_cons.set(prod);

    // A command naming a stream that is not its own stops the queue with CERROR_ILL.
    let cons = q.prod;
    q.submit(&[Command::CfgiCdAll { sid: vsid + 1 }, Command::sync()])?;
    let stopped = match q.wait() {
        Err(Some(cons)) => cons,
        _ => return Err(()),
    };
    report(u64::from(
        CommandErrorCode::from_cons(stopped) == CommandErrorCode::Illegal,
    ));
    {
        // Replace the refused command with a CMD_SYNC, acknowledge, and the queue runs on.
        let at = (stopped & ((1 << QUEUE_LOG2) - 1)) as usize;
        let sync = Command::sync().encode().map_err(|_| ())?;
        set_words(cmdq, at * 2, &sync);
        regs.gerrorn.set(regs.gerror.get());
        report(u64::from(
            q.wait().is_ok() && (at as u32) == (cons & ((1 << QUEUE_LOG2) - 1)),
        ));
    }

    // Its stage 1 pointing outside its RAM: the DMA faults at stage 2, which is the
    // hypervisor's business; nothing new arrives in its event queue.
    table
        .map(
            Iova::new(IOVA),
            PhysAddr::new(outside),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(|_| ())?;
    edu.dma_to_ram(0, IOVA, 64).map_err(|_| ())?;
    let mut new_events = 0;
    for _ in 0..POLLS {
        let now = regs.eventq_prod.get() & ((2 << QUEUE_LOG2) - 1);
        new_events = now.wrapping_sub(prod) & ((2 << QUEUE_LOG2) - 1);
        if new_events != 0 {
            break;
        }
    }
    report(u64::from(new_events));
    Ok(())
}
