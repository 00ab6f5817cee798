//! What the SMMU is told per operation, read back from its command queue: an attach that needs
//! a new level-2 stream table, a one-page unmap and a batch of deferred unmaps each cost the
//! fewest commands, and the operations still do what they must (DMA lands after the attach,
//! faults after the unmap).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::cmdq_watch::CommandWatch;
use super::dma::{
    announce_faults, bring_up, copy_through, expect_fault, first_edu, preferred_stage, Aligned,
};
use crate::dma::{IA_BITS, IOVA_A};
use crate::Machine;
use iommu::addr::Iova;
use iommu::pagetable::{Gather, Prot};
use iommu::unit::{Attachment, FaultKind, Stage, TranslationUnit};
use iommu_boot::testing::{fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println};
use iommu_smmuv3::command::opcode;
use iommu_smmuv3::stream_table::StreamTableGeometry;
use iommu_smmuv3::unit::SmmuConfig;

/// Pages of the deferred batch.
const DEFERRED: u64 = 16;

/// The opcodes' names, for the failure messages and the figures.
fn names(ops: &[u8]) -> String {
    let mut s = String::new();
    for (i, &op) in ops.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let name = match op {
            opcode::CFGI_STE => "CFGI_STE",
            opcode::CFGI_STE_RANGE => "CFGI_STE_RANGE",
            opcode::CFGI_CD => "CFGI_CD",
            opcode::TLBI_NH_ASID => "TLBI_NH_ASID",
            opcode::TLBI_NH_VA => "TLBI_NH_VA",
            opcode::TLBI_NH_ALL => "TLBI_NH_ALL",
            opcode::TLBI_S12_VMALL => "TLBI_S12_VMALL",
            opcode::TLBI_S2_IPA => "TLBI_S2_IPA",
            opcode::SYNC => "SYNC",
            _ => {
                let _ = write!(s, "{op:#04x}");
                continue;
            }
        };
        s.push_str(name);
    }
    s
}

fn is_tlbi(op: u8) -> bool {
    (opcode::TLBI_NH_ALL..=opcode::TLBI_NSNH_ALL).contains(&op)
}

/// The commands `f` had the SMMU execute.
fn commands(m: &Machine, f: impl FnOnce() -> TestResult) -> Result<Vec<u8>, Failure> {
    let watch = CommandWatch::start(m)?;
    f()?;
    Ok(watch.opcodes())
}

/// On a freshly brought-up unit (so no level-2 stream table covers edu's stream yet), at the
/// stage the unit prefers: attaching edu to a domain with one page mapped costs at most 3
/// commands (one CMD_CFGI_STE for the level-1 descriptor + one CMD_SYNC; with a linear table,
/// the live STE update's two CMD_CFGI_STE + CMD_SYNC pairs), and edu's DMA then lands; a
/// strict unmap of the page is exactly one TLBI and one CMD_SYNC, and edu's DMA then faults;
/// 16 deferred unmaps and their flush end in one CMD_SYNC (and one range TLBI where IDR3.RIL).
pub fn commands_per_operation_are_the_fewest(m: &mut Machine) -> TestResult {
    announce_faults();
    let unit = bring_up(m, SmmuConfig::default())?;
    let stage = preferred_stage(unit);
    let (ref edu, dev) = first_edu(m)?;
    let two_level = matches!(
        unit.stream_table_geometry(),
        StreamTableGeometry::TwoLevel { .. }
    );
    if two_level {
        ensure!(
            unit.stream_table_entry(dev.0).is_err(),
            "a level-2 table covers {dev:?} before its first attach"
        );
    }

    // One page for the attach and the strict unmap, 16 more for the deferred unmaps.
    let buf = Aligned::new(0x1000, 0)?;
    let bufs = (0..DEFERRED)
        .map(|_| Aligned::new(0x1000, 0))
        .collect::<Result<Vec<_>, _>>()?;
    let page = |i: u64| IOVA_A + 0x1000 * (i + 1);
    let domain = unit.new_domain(stage, IA_BITS).map_err(fail)?;
    unit.map(
        &domain,
        Iova::new(IOVA_A),
        buf.phys(),
        0x1000,
        Prot::READ_WRITE,
    )
    .map_err(fail)?;
    for (i, b) in bufs.iter().enumerate() {
        unit.map(
            &domain,
            Iova::new(page(i as u64)),
            b.phys(),
            0x1000,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
    }

    let outcome = (|| {
        let attach = commands(m, || {
            unit.attach(dev, Attachment::Paging(&domain)).map_err(fail)
        })?;
        if two_level {
            ensure!(
                unit.stream_table_entry(dev.0).is_ok(),
                "no level-2 table after the attach"
            );
            ensure!(
                attach.len() <= 3 && attach.last() == Some(&opcode::SYNC),
                "attach to a new level-2 table: {} (at most 3 commands, ending in a sync)",
                names(&attach)
            );
        } else {
            // A linear table's STE was reachable all along: the hitless update's two steps.
            ensure_eq!(
                attach,
                [
                    opcode::CFGI_STE,
                    opcode::SYNC,
                    opcode::CFGI_STE,
                    opcode::SYNC
                ],
                "attach in a linear table: {}",
                names(&attach)
            );
        }
        copy_through(edu, &buf, IOVA_A, 0, 0x800)?;

        let expected_tlbi = match stage {
            Stage::First => opcode::TLBI_NH_VA,
            Stage::Second => opcode::TLBI_S2_IPA,
        };
        let unmap = commands(m, || {
            let n = unit
                .unmap(&domain, Iova::new(IOVA_A), 0x1000)
                .map_err(fail)?;
            ensure_eq!(n, 0x1000, "bytes unmapped");
            Ok(())
        })?;
        ensure_eq!(
            unmap,
            [expected_tlbi, opcode::SYNC],
            "one-page unmap: {}",
            names(&unmap)
        );
        buf.set(0x100, 0x5a);
        edu.edu.dma_to_ram(0, IOVA_A + 0x100, 64).map_err(fail)?;
        ensure!(
            buf.get(0x100) == 0x5a,
            "a DMA after the unmap reached the page: stale TLB entry"
        );
        expect_fault(unit, dev, IOVA_A + 0x100, FaultKind::Translation)?;

        let mut gather = Gather::new();
        let deferred = commands(m, || {
            for i in 0..DEFERRED {
                unit.unmap_deferred(&domain, Iova::new(page(i)), 0x1000, &mut gather)
                    .map_err(fail)?;
            }
            unit.flush_deferred(&domain, core::mem::take(&mut gather))
                .map_err(fail)
        })?;
        let syncs = deferred.iter().filter(|&&o| o == opcode::SYNC).count();
        ensure_eq!(
            syncs,
            1,
            "{DEFERRED} deferred unmaps + flush: {}",
            names(&deferred)
        );
        ensure!(
            deferred.iter().all(|&o| o == opcode::SYNC || is_tlbi(o)),
            "{DEFERRED} deferred unmaps + flush: {}",
            names(&deferred)
        );
        if unit.features().range_invalidation {
            ensure_eq!(
                deferred,
                [expected_tlbi, opcode::SYNC],
                "{DEFERRED} deferred unmaps + flush with IDR3.RIL: {}",
                names(&deferred)
            );
        }

        println!(
            "figure: smmu commands, stages {:?}, {stage:?} domain, {} stream table: \
             attach to a new level-2 table = {} [{}]; one-page unmap = {} [{}]; \
             {DEFERRED} deferred unmaps + flush = {} [{}]",
            unit.features().stages,
            if two_level { "2-level" } else { "linear" },
            attach.len(),
            names(&attach),
            unmap.len(),
            names(&unmap),
            deferred.len(),
            names(&deferred),
        );
        Ok(())
    })();
    let blocked = unit.attach(dev, Attachment::Blocking);
    outcome?;
    blocked.map_err(fail)?;
    unit.destroy_domain(domain).map_err(|(_, e)| fail(e))
}
