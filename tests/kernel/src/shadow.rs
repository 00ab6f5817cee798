//! A guest's own IOMMU on a unit without nesting, through a shadowing vIOMMU
//! (`iommu::iommufd::shadow`), on either back-end: the guest writes its tables (VT-d second
//! stage, or VMSA stage 1 for an SMMU) in its RAM and invalidates as caching mode asks; the host
//! follows each invalidation into a shadow domain that edu is attached to. Needs no nesting
//! hardware: the host's tables are in whatever stage the unit has.

extern crate alloc;

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Debug;

use crate::dma::{DmaBuffer, Rig, IA_BITS, IOVA_A};
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{
    Event, GroupId, GuestFormat, GuestMemory, GuestTable, Iommu, Layout, Notifier, OwnerId, Region,
    Replay, Subject, Target,
};
use iommu::pagetable::{Format, Prot};
use iommu::unit::{Forwarded, TranslationUnit};
use iommu_boot::testing::{fail, TestResult};
use iommu_boot::{ensure, ensure_eq, println};

/// What a guest's IOMMU looks like to the guest: the format it writes its tables in (as the
/// model reads them, and as the engine encodes entries, with three levels of 4 KiB tables for
/// `IA_BITS`), its tag, and its commands.
pub struct GuestIommu<F, C> {
    pub format: GuestFormat,
    pub encoder: F,
    pub tag: u32,
    /// The virtual id the guest knows edu by.
    pub virtual_id: u32,
    /// The guest's invalidation of the page at an IOVA under `tag`, and its barrier.
    pub page: fn(u32, u64) -> C,
    pub wait: C,
}

/// Guest-physical base of the guest's RAM: six pages (three tables, two data pages, a source
/// page), each backed by a host page of its own, so nothing is contiguous by accident.
const GPA: u64 = 0x4000_0000;
const PAGES: usize = 6;
const DATA_A: usize = 3;
const DATA_B: usize = 4;
const SOURCE: usize = 5;
/// The guest's device addresses (its table: AW 1, three levels, 39 bits): edu writes to
/// `GIOVA` what it read from `GIOVA_SOURCE`.
const GIOVA: u64 = IOVA_A;
const GIOVA_SOURCE: u64 = IOVA_A + 0x2000;

/// The kernel's RAM as the model reads it: identity mapped.
struct KernelRam;

impl GuestMemory for KernelRam {
    fn read_u64(&self, at: PhysAddr) -> u64 {
        // SAFETY: the kernel maps all RAM at its physical address, and the model asks only for
        // 8-aligned addresses of the guest RAM pages below, which this test owns.
        unsafe { (at.as_u64() as *const u64).read_volatile() }
    }
}

/// A notifier that keeps what it hears.
#[derive(Default)]
struct Heard(spin::Mutex<Vec<Event>>);

impl Notifier for Heard {
    fn event(&self, _seq: u64, event: &Event) {
        self.0.lock().push(*event);
    }
}

/// The guest's view of its RAM.
struct GuestRam<F>(Vec<DmaBuffer>, F);

impl<F: Format> GuestRam<F> {
    fn page(&self, i: usize) -> &DmaBuffer {
        &self.0[i]
    }

    /// The guest writes `v` at guest-physical `gpa`.
    fn write_u64(&self, gpa: u64, v: u64) {
        let off = (gpa - GPA) as usize;
        let page = &self.0[off / 4096];
        for (i, b) in v.to_le_bytes().into_iter().enumerate() {
            page.set(off % 4096 + i, b);
        }
    }

    /// The guest's last-level entry for `giova`: `gpa` read/write, or nothing.
    fn set_leaf(&self, giova: u64, gpa: Option<u64>) {
        let entry = gpa.map_or(0, |g| {
            self.1.leaf_bits(0, Prot::READ_WRITE) | self.1.encode_addr(g)
        });
        self.write_u64(GPA + 2 * 4096 + ((giova >> 12) & 511) * 8, entry);
    }
}

pub fn a_guest_drives_its_own_tables_through_shadowing<U, F>(
    r: &Rig<'static, U>,
    g: &GuestIommu<F, U::GuestCommand>,
) -> TestResult
where
    U: TranslationUnit,
    U::GuestCommand: Debug,
    F: Format + Copy,
{
    let edu = r.edus.first().ok_or_else(|| fail("needs an edu device"))?;
    let mut io = Iommu::new();
    let u = io.add_unit(r.unit);
    io.allow_unsafe_interrupts(true);
    let guest = OwnerId(1);
    io.subscribe_faults(guest, 16);
    let id = (r.device_id)(edu);
    let dev = io.add_device(u, id, GroupId(id.0)).map_err(fail)?;
    io.claim(dev, guest).map_err(fail)?;

    // Shadowing needs no nesting: the host's tables are in the stage the unit uses by default
    // (first stage on an x-flts VT-d or a stage-1-only SMMU).
    let stage = r.stage;
    // Guest RAM in a paging domain of the host (not attached: it only says where the RAM is).
    let pages = (0..PAGES).map(|_| DmaBuffer::new(0));
    let ram = GuestRam(pages.collect::<Result<_, _>>()?, g.encoder);
    let windows = [Region::below_bits(IA_BITS)];
    let layout = Layout {
        windows: &windows,
        reserved: &[],
    };
    let parent = io
        .alloc_domain(guest, u, stage, IA_BITS, &layout)
        .map_err(fail)?;
    for (i, page) in ram.0.iter().enumerate() {
        let gpa = Iova::new(GPA + 4096 * i as u64);
        io.map(guest, parent, gpa, page.phys(), 4096, Prot::READ_WRITE)
            .map_err(fail)?;
    }
    // The guest's three-level table: root, one middle table, one last-level table.
    let index = |level: u32| (GIOVA >> (12 + 9 * level)) & 511;
    ram.write_u64(GPA + index(2) * 8, g.encoder.table_entry(GPA + 4096));
    ram.write_u64(
        GPA + 4096 + index(1) * 8,
        g.encoder.table_entry(GPA + 2 * 4096),
    );

    let ram_region = [Region::new(GPA, 4096 * PAGES as u64).ok_or_else(|| fail("RAM range"))?];
    let v = io
        .alloc_shadow_viommu(guest, parent, &ram_region, Arc::new(KernelRam))
        .map_err(fail)?;
    let vid = g.virtual_id;
    io.set_virtual_device(guest, v, dev, vid).map_err(fail)?;
    let table = GuestTable {
        tag: g.tag,
        root: GPA,
        format: g.format,
    };
    let shadow = io
        .alloc_shadow_domain(guest, v, stage, table)
        .map_err(fail)?;
    io.attach(dev, guest, Target::Domain(shadow))
        .map_err(fail)?;
    // A VMM following the shadow: what it hears is checked at the end.
    let heard = Arc::new(Heard::default());
    io.subscribe(guest, Subject::Domain(shadow), heard.clone(), Replay::None)
        .map_err(fail)?;
    println!(
        "  shadow: guest RAM {PAGES} pages at guest-physical {GPA:#x}; edu {} is the guest's \
         virtual {vid:#x}, attached to the shadow of its {:?} table (tag {:#x})",
        edu.bdf, g.format, g.tag
    );
    let page = |giova| [(g.page)(g.tag, giova), g.wait];

    let outcome = (|| {
        // edu reads 64 bytes of `byte` from the guest's source page, then writes them to GIOVA.
        let dma = |byte: u8| -> TestResult {
            ram.page(SOURCE).fill(byte);
            edu.edu.dma_from_ram(GIOVA_SOURCE, 0, 64).map_err(fail)?;
            edu.edu.dma_to_ram(0, GIOVA, 64).map_err(fail)
        };
        ram.set_leaf(GIOVA_SOURCE, Some(GPA + 4096 * SOURCE as u64));
        let f = io.invalidate(guest, v, &page(GIOVA_SOURCE)).map_err(fail)?;
        ensure_eq!(
            f,
            Forwarded {
                done: 2,
                refused: None
            }
        );
        let faults_at = |io: &Iommu<_>, at: u64| -> Result<Vec<_>, _> {
            io.route_faults(u).map_err(fail)?;
            let taken = io.take_faults(guest).map_err(fail)?;
            ensure!(
                taken.faults.iter().any(|f| f.record.address & !0xfff == at
                    && f.device == Some(dev)
                    && f.virtual_id == Some((v, vid))),
                "expected a fault of edu (virtual {vid:#x}) at {at:#x}, got {:?}",
                taken.faults
            );
            Ok(taken.faults)
        };

        // Caching mode: a mapping the guest has not invalidated is not used yet.
        ram.set_leaf(GIOVA, Some(GPA + 4096 * DATA_A as u64));
        dma(0x11)?;
        ensure!(
            ram.page(DATA_A).all(0..64, 0),
            "DMA used a guest mapping before its invalidation"
        );
        faults_at(&io, GIOVA)?;
        println!("  shadow: a guest mapping not yet invalidated is not used: the DMA faulted");

        // Invalidated: the shadow follows, the DMA lands in the host page behind the data page.
        let f = io.invalidate(guest, v, &page(GIOVA)).map_err(fail)?;
        ensure_eq!(
            f,
            Forwarded {
                done: 2,
                refused: None
            }
        );
        dma(0x22)?;
        ensure!(
            ram.page(DATA_A).all(0..64, 0x22),
            "the guest's DMA did not land in its data page"
        );
        println!("  shadow: guest mapped and invalidated: edu DMA to guest IOVA {GIOVA:#x} lands in the host page behind guest-physical page {DATA_A}");

        // The guest moves the mapping: the old translation must not survive.
        ram.set_leaf(GIOVA, Some(GPA + 4096 * DATA_B as u64));
        io.invalidate(guest, v, &page(GIOVA)).map_err(fail)?;
        dma(0x33)?;
        ensure!(
            ram.page(DATA_B).all(0..64, 0x33) && ram.page(DATA_A).all(0..64, 0x22),
            "after the guest moved its mapping, DMA did not follow it"
        );

        // The guest unmaps: the next DMA faults, reported to the guest's owner.
        ram.set_leaf(GIOVA, None);
        io.invalidate(guest, v, &page(GIOVA)).map_err(fail)?;
        dma(0x44)?;
        ensure!(
            ram.page(DATA_B).all(0..64, 0x33),
            "DMA reached the page the guest unmapped"
        );
        let faults = faults_at(&io, GIOVA)?;
        if let Some(f) = faults.first() {
            println!("  shadow: guest unmapped and invalidated: the DMA faulted, reported to the owner as virtual {vid:#x}: {}", f.record);
        }

        // A mapping to guest-physical memory the guest does not have: refused and reported.
        let outside = GPA + 4096 * 64;
        ram.set_leaf(GIOVA + 4096, Some(outside));
        io.invalidate(guest, v, &page(GIOVA + 4096)).map_err(fail)?;
        let refused = io.take_faults(guest).map_err(fail)?;
        ensure!(
            refused
                .faults
                .iter()
                .any(|f| f.record.address == GIOVA + 4096
                    && f.record.reason == "guest-physical address outside guest RAM"
                    && f.virtual_id == Some((v, vid))),
            "the mapping outside guest RAM was not reported: {:?}",
            refused.faults
        );
        edu.edu.dma_to_ram(0, GIOVA + 4096, 4).map_err(fail)?;
        faults_at(&io, GIOVA + 4096)?;
        println!("  shadow: a guest mapping to guest-physical {outside:#x} (outside its RAM) refused and reported; DMA there faults");

        // The shadow's subscriber heard the three pages mapped and the two unmapped, in order,
        // and edu's faults.
        let events = core::mem::take(&mut *heard.0.lock());
        let changes: Vec<(bool, u64)> = events
            .iter()
            .filter_map(|e| match *e {
                Event::Map { iova, .. } => Some((true, iova.as_u64())),
                Event::Unmap { iova, .. } => Some((false, iova.as_u64())),
                _ => None,
            })
            .collect();
        ensure_eq!(
            changes,
            [
                (true, GIOVA_SOURCE),
                (true, GIOVA),
                (false, GIOVA),
                (true, GIOVA),
                (false, GIOVA)
            ],
            "what the shadow's subscriber heard (map?, IOVA)"
        );
        ensure!(
            events
                .iter()
                .any(|e| matches!(e, Event::Fault(f) if f.record.address & !0xfff == GIOVA)),
            "the subscriber did not hear edu's fault at {GIOVA:#x}: {events:?}"
        );
        let s = io.shadow_stats(guest, v).map_err(fail)?;
        ensure_eq!(
            (
                s.invalidations,
                s.mapped,
                s.unmapped,
                s.host_flushes,
                s.refused
            ),
            (5, 3, 2, 2, 1),
            "shadow counters (invalidations, mapped, unmapped, host flushes, refused)"
        );
        println!(
            "  shadow: {} guest invalidations: {} pages mapped, {} unmapped with {} host \
             invalidations (one per guest unmap), {} refused, {} guest entries read",
            s.invalidations, s.mapped, s.unmapped, s.host_flushes, s.refused, s.entries_read
        );
        Ok(())
    })();

    let teardown = io
        .attach(dev, guest, Target::Blocked)
        .and_then(|()| io.destroy_domain(guest, shadow))
        .and_then(|()| io.unset_virtual_device(guest, v, vid))
        .and_then(|()| io.release(dev, guest))
        .and_then(|()| io.destroy_viommu(guest, v))
        .and_then(|()| io.destroy_domain(guest, parent));
    outcome?;
    teardown.map_err(fail)
}
