//! aarch64 `virt` tests of the SMMUv3 back-end's discovery: the devicetree QEMU hands over
//! names the SMMU and routes PCIe requester ids to it, and the SMMU's identification registers
//! say what the machine was started with.
//!
//! The runner passes `smmu.stage=nested|1|2`: `nested` for `-machine virt` (QEMU 10's SMMU
//! there has both stages whatever `arm-smmuv3.stage` says), `1`/`2` for `-machine virt-9.0`
//! with `-global arm-smmuv3.stage=1`/`=2`.

pub(crate) mod cmdq_watch;
mod command_economy;
pub(crate) mod dma;
mod lifecycle;
pub(crate) mod msi;
mod viommu;

use core::ptr::NonNull;

use crate::dma::ModelUnmap;
use crate::platform::{devicetree, pci_config};
use crate::Machine;
use iommu::unit::Stage;
use iommu_boot::pci::{self, Bdf};
use iommu_boot::testing::{fail, Failure, Test, TestResult};
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_smmuv3::devicetree::{Devicetree, GicKind, Interrupt, PciHost, PciSpace, Smmu};
use iommu_smmuv3::idr::{
    Bbml, Features, OutputAddressSize, Stages, StallModel, StreamTableLevels, TableEndianness,
    TableFormats, TermModel,
};
use iommu_smmuv3::registers::{Readable, SmmuRegisters, GBPA};

pub static TESTS: &[Test<Machine>] = &[
    Test {
        name: "devicetree_names_smmuv3_and_pcie_iommu_map",
        run: devicetree_names_smmuv3_and_pcie_iommu_map,
    },
    Test {
        name: "edu_stream_id_follows_iommu_map",
        run: edu_stream_id_follows_iommu_map,
    },
    Test {
        name: "smmu_id_registers_match_machine",
        run: smmu_id_registers_match_machine,
    },
    Test {
        name: "smmu_starts_disabled_and_bypassing",
        run: smmu_starts_disabled_and_bypassing,
    },
    // Bring-up and DMA through the live SMMU (dma.rs). The linear stream table comes first:
    // QEMU 10 keeps treating the table as 2-level once STRTAB_BASE_CFG.FMT said so, until reset.
    Test {
        name: "linear_stream_table_translates",
        run: dma::linear_stream_table_translates,
    },
    Test {
        name: "smmu_brings_up_with_queues_and_abort_default",
        run: dma::smmu_brings_up,
    },
    Test {
        name: "s1_mapped_dma_lands",
        run: |m| dma::generic(m, Stage::First, crate::dma::mapped_dma_lands),
    },
    Test {
        name: "dma_api_moves_data_both_ways_below_the_mask_and_faults_after_unmap",
        run: |m| {
            dma::with_machine(
                m,
                crate::dma_api::dma_api_moves_data_both_ways_below_the_mask_and_faults_after_unmap,
            )
        },
    },
    Test {
        name: "strict_sub_page_mode_keeps_the_rest_of_the_page_from_the_device",
        run: |m| {
            dma::with_machine(
                m,
                crate::dma_api::strict_sub_page_mode_keeps_the_rest_of_the_page_from_the_device,
            )
        },
    },
    Test {
        name: "identity_bounces_buffers_beyond_the_mask",
        run: |m| dma::with_machine(m, crate::dma_api::identity_bounces_buffers_beyond_the_mask),
    },
    Test {
        name: "faults_reach_the_owner_of_the_device",
        run: |m| {
            let stage = dma::preferred_stage(dma::unit(m)?);
            dma::generic(m, stage, crate::dma::faults_reach_the_owner_of_the_device)
        },
    },
    Test {
        name: "s1_unmapped_dma_is_blocked_and_reported",
        run: |m| {
            dma::generic(
                m,
                Stage::First,
                crate::dma::unmapped_dma_is_blocked_and_reported,
            )
        },
    },
    Test {
        name: "s1_read_only_mapping_blocks_writes",
        run: |m| dma::generic(m, Stage::First, crate::dma::read_only_mapping_blocks_writes),
    },
    Test {
        name: "s1_no_stale_translation_after_unmap",
        run: |m| {
            dma::generic(
                m,
                Stage::First,
                crate::dma::no_stale_translation_after_unmap,
            )
        },
    },
    Test {
        name: "s1_devices_in_different_domains_are_isolated",
        run: |m| {
            dma::generic(
                m,
                Stage::First,
                crate::dma::devices_in_different_domains_are_isolated,
            )
        },
    },
    Test {
        name: "s1_deferred_unmaps_fault_after_one_flush",
        run: |m| dma::deferred_unmaps_fault_after_one_flush(m, Stage::First),
    },
    Test {
        name: "s2_deferred_unmaps_fault_after_one_flush",
        run: |m| dma::deferred_unmaps_fault_after_one_flush(m, Stage::Second),
    },
    Test {
        name: "s1_emptied_tables_are_reclaimed",
        run: |m| dma::emptied_tables_are_reclaimed(m, Stage::First),
    },
    Test {
        name: "s2_emptied_tables_are_reclaimed",
        run: |m| dma::emptied_tables_are_reclaimed(m, Stage::Second),
    },
    Test {
        name: "s1_pruning_unmaps_free_the_tables_they_empty",
        run: |m| dma::pruning_unmaps_free_the_tables_they_empty(m, Stage::First),
    },
    Test {
        name: "s2_pruning_unmaps_free_the_tables_they_empty",
        run: |m| dma::pruning_unmaps_free_the_tables_they_empty(m, Stage::Second),
    },
    Test {
        name: "s1_object_model_unmaps_free_their_tables",
        run: |m| dma::object_model_unmaps(m, Stage::First, ModelUnmap::Strict),
    },
    Test {
        name: "s2_object_model_unmaps_free_their_tables",
        run: |m| dma::object_model_unmaps(m, Stage::Second, ModelUnmap::Strict),
    },
    Test {
        name: "s1_object_model_deferred_unmaps_leave_their_tables_to_a_sweep",
        run: |m| dma::object_model_unmaps(m, Stage::First, ModelUnmap::Deferred),
    },
    Test {
        name: "s2_object_model_deferred_unmaps_leave_their_tables_to_a_sweep",
        run: |m| dma::object_model_unmaps(m, Stage::Second, ModelUnmap::Deferred),
    },
    Test {
        name: "s1_object_model_unmaps_with_a_sweep_threshold_of_one_leave_nothing_empty",
        run: |m| dma::object_model_unmaps(m, Stage::First, ModelUnmap::SweptAtOnce),
    },
    Test {
        name: "s2_object_model_unmaps_with_a_sweep_threshold_of_one_leave_nothing_empty",
        run: |m| dma::object_model_unmaps(m, Stage::Second, ModelUnmap::SweptAtOnce),
    },
    Test {
        name: "s1_dma_api_frees_the_tables_its_freed_iovas_emptied",
        run: |m| dma::dma_api_frees_the_tables_its_freed_iovas_emptied(m, Stage::First),
    },
    Test {
        name: "s2_dma_api_frees_the_tables_its_freed_iovas_emptied",
        run: |m| dma::dma_api_frees_the_tables_its_freed_iovas_emptied(m, Stage::Second),
    },
    Test {
        name: "commands_per_operation_are_the_fewest",
        run: command_economy::commands_per_operation_are_the_fewest,
    },
    Test {
        name: "s2_mapped_dma_lands",
        run: |m| dma::generic(m, Stage::Second, crate::dma::mapped_dma_lands),
    },
    Test {
        name: "s2_unmapped_dma_is_blocked_and_reported",
        run: |m| {
            dma::generic(
                m,
                Stage::Second,
                crate::dma::unmapped_dma_is_blocked_and_reported,
            )
        },
    },
    Test {
        name: "s2_read_only_mapping_blocks_writes",
        run: |m| {
            dma::generic(
                m,
                Stage::Second,
                crate::dma::read_only_mapping_blocks_writes,
            )
        },
    },
    Test {
        name: "s2_no_stale_translation_after_unmap",
        run: |m| {
            dma::generic(
                m,
                Stage::Second,
                crate::dma::no_stale_translation_after_unmap,
            )
        },
    },
    Test {
        name: "s2_devices_in_different_domains_are_isolated",
        run: |m| {
            dma::generic(
                m,
                Stage::Second,
                crate::dma::devices_in_different_domains_are_isolated,
            )
        },
    },
    Test {
        name: "two_level_stream_table_grows_on_attach",
        run: dma::two_level_stream_table_grows_on_attach,
    },
    Test {
        name: "granules_4k_16k_64k_translate",
        run: dma::granules_4k_16k_64k_translate,
    },
    Test {
        name: "block_mapping_translates",
        run: dma::block_mapping_translates,
    },
    Test {
        name: "bypass_ste_passes_physical_addresses",
        run: dma::bypass_ste_passes_physical_addresses,
    },
    Test {
        name: "abort_ste_refuses_silently",
        run: dma::abort_ste_refuses_silently,
    },
    Test {
        name: "nested_stage1_walks_go_through_stage2",
        run: dma::nested_stage1_walks_go_through_stage2,
    },
    Test {
        name: "guest_stage1_over_viommu_translates_and_invalidates",
        run: viommu::guest_stage1_over_viommu_translates_and_invalidates,
    },
    Test {
        name: "a_guest_drives_its_own_tables_through_shadowing",
        run: viommu::shadowing,
    },
    Test {
        name: "eventq_interrupt_raises_its_spi",
        run: dma::eventq_interrupt_raises_its_spi,
    },
    Test {
        name: "eventq_irq_is_taken_and_the_event_drained",
        run: dma::eventq_irq_is_taken_and_the_event_drained,
    },
    Test {
        name: "event_storm_overflows_and_recovers",
        run: dma::event_storm_overflows_and_recovers,
    },
    Test {
        name: "illegal_command_is_reported_and_queue_recovers",
        run: dma::illegal_command_is_reported_and_queue_recovers,
    },
    // The TranslationUnit methods beyond map/attach (lifecycle.rs).
    Test {
        name: "info_matches_the_machine",
        run: lifecycle::info_matches_the_machine,
    },
    Test {
        name: "destroy_refuses_used_domains_and_frees_the_rest",
        run: lifecycle::destroy_refuses_used_domains_and_frees_the_rest,
    },
    Test {
        name: "reused_tags_carry_no_stale_translation",
        run: lifecycle::reused_tags_carry_no_stale_translation,
    },
    Test {
        name: "shared_cpu_table_translates_until_flushed",
        run: lifecycle::shared_cpu_table_translates_until_flushed,
    },
    Test {
        name: "flush_of_a_paging_domain_keeps_mappings",
        run: lifecycle::flush_of_a_paging_domain_keeps_mappings,
    },
    Test {
        name: "pasid_attach_is_refused_without_substreams",
        run: lifecycle::pasid_attach_is_refused_without_substreams,
    },
    Test {
        name: "bridged_devices_share_an_alias_and_a_group",
        run: dma::bridged_devices_share_an_alias_and_a_group,
    },
    // MSIs as LPIs through the GICv3 ITS (msi.rs); skipped on GICv2 machines.
    Test {
        name: "edu_msi_becomes_the_lpi_mapped_for_it",
        run: msi::edu_msi_becomes_the_lpi_mapped_for_it,
    },
    Test {
        name: "lpi_of_one_device_cannot_be_raised_by_another",
        run: msi::lpi_of_one_device_cannot_be_raised_by_another,
    },
    Test {
        name: "discard_stops_the_lpi",
        run: msi::discard_stops_the_lpi,
    },
    Test {
        name: "msi_through_a_paging_domain_needs_the_doorbell_mapped",
        run: msi::msi_through_a_paging_domain_needs_the_doorbell_mapped,
    },
    Test {
        name: "owned_msis_through_the_object_model",
        run: msi::owned_msis_through_the_object_model,
    },
    Test {
        name: "owned_msi_in_a_paging_domain_passes_its_mapped_doorbell",
        run: msi::owned_msi_in_a_paging_domain_passes_its_mapped_doorbell,
    },
    Test {
        name: "logging_follows_the_command_line",
        run: logging_follows_the_command_line,
    },
];

/// Where QEMU's `virt` puts the SMMU (hw/arm/virt.c, VIRT_SMMU) and its PCIe ECAM with highmem.
const VIRT_SMMU_BASE: u64 = 0x905_0000;
const VIRT_HIGH_ECAM_BASE: u64 = 0x40_1000_0000;
/// QEMU's `edu` PCI ids.
const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;

/// The one SMMUv3 and the one PCIe host of `virt`.
pub(crate) fn smmu_and_host(
    dt: &Devicetree<'static>,
) -> Result<(Smmu<'static>, PciHost<'static>), Failure> {
    let mut smmus = dt.smmus();
    let smmu = smmus
        .next()
        .ok_or_else(|| fail("no arm,smmu-v3 node"))?
        .map_err(fail)?;
    ensure!(smmus.next().is_none(), "more than one SMMU on virt");
    let mut hosts = dt.pci_hosts();
    let host = hosts
        .next()
        .ok_or_else(|| fail("no pci-host-ecam-generic node"))?
        .map_err(fail)?;
    ensure!(hosts.next().is_none(), "more than one PCIe host on virt");
    Ok((smmu, host))
}

fn is_spi(irq: Option<Interrupt>) -> bool {
    matches!(
        irq,
        Some(Interrupt::Gic {
            kind: GicKind::Spi,
            ..
        })
    )
}

fn devicetree_names_smmuv3_and_pcie_iommu_map(m: &mut Machine) -> TestResult {
    let dt = devicetree(m)?;
    let (smmu, host) = smmu_and_host(&dt)?;
    ensure_eq!(smmu.regs.base, VIRT_SMMU_BASE);
    ensure_eq!(smmu.regs.size, iommu_smmuv3::registers::REGISTER_FRAME_SIZE);
    ensure_eq!(smmu.iommu_cells, Some(1));
    ensure!(smmu.dma_coherent, "virt's SMMU is dma-coherent");
    let irqs = smmu.interrupts;
    ensure!(
        is_spi(irqs.eventq) && is_spi(irqs.priq) && is_spi(irqs.cmdq_sync) && is_spi(irqs.gerror),
        "eventq, priq, cmdq-sync and gerror are wired SPIs: {irqs:?}"
    );

    ensure_eq!(host.ecam.base, VIRT_HIGH_ECAM_BASE);
    ensure_eq!(host.ecam.size, 0x1000_0000);
    ensure_eq!((host.bus_range.start, host.bus_range.end), (0, 255));
    ensure!(
        host.window(PciSpace::Mmio32).is_some(),
        "a 32-bit MMIO window"
    );
    ensure!(host.window(PciSpace::Io).is_some(), "an I/O window");
    let map = host.iommu_map();
    ensure_eq!(map.len(), 1);
    let entry = map.first().copied().unwrap_or_default();
    ensure_eq!(Some(entry.iommu), smmu.phandle, "iommu-map names the SMMU");
    ensure_eq!(
        (entry.rid_base, entry.sid_base, entry.length),
        (0, 0, 0x1_0000)
    );
    Ok(())
}

fn edu_stream_id_follows_iommu_map(m: &mut Machine) -> TestResult {
    let dt = devicetree(m)?;
    let (smmu, host) = smmu_and_host(&dt)?;
    let ecam = pci_config(m)?;
    let edus: alloc::vec::Vec<Bdf> = pci::find(&ecam, 0, EDU_VENDOR, EDU_DEVICE).collect();
    let Some(&edu) = edus.first() else {
        skip!("no edu device (start QEMU with -device edu)")
    };
    // With -nodefaults the first edu is 00:01.0.
    ensure_eq!(edu, Bdf::new(0, 1, 0));
    for bdf in edus {
        let rid = bdf.requester_id();
        let (target, sid) = dt.stream_id(&host, rid).map_err(fail)?;
        ensure_eq!(target.regs.base, smmu.regs.base, "{bdf} is behind the SMMU");
        ensure_eq!(
            sid,
            u32::from(rid),
            "virt maps requester ids 1:1 to stream ids"
        );
    }
    Ok(())
}

/// What `smmu.stage` on the command line says the SMMU was started with.
fn expected_stages(m: &Machine) -> Result<Stages, Failure> {
    match m.cmdline.get("smmu.stage") {
        Some("nested") => Ok(Stages::Nested),
        Some("1") => Ok(Stages::Stage1),
        Some("2") => Ok(Stages::Stage2),
        Some(other) => Err(fail(alloc::format!(
            "smmu.stage={other}: expected nested, 1 or 2"
        ))),
        None => skip!("no smmu.stage= on the command line"),
    }
}

fn read_features(smmu: &Smmu<'_>) -> Result<Features, Failure> {
    let base = NonNull::new(smmu.regs.base as *mut SmmuRegisters)
        .ok_or_else(|| fail("SMMU at address 0"))?;
    // SAFETY: the base comes from the devicetree's `arm,smmu-v3` node and lies in the first
    // TiB, which the boot code identity-maps as Device memory for the whole run.
    Ok(unsafe { iommu_smmuv3::idr::read_features(base) })
}

fn smmu_id_registers_match_machine(m: &mut Machine) -> TestResult {
    let stages = expected_stages(m)?;
    let dt = devicetree(m)?;
    let (smmu, _) = smmu_and_host(&dt)?;
    let f = read_features(&smmu)?;

    ensure_eq!(f.stages, stages, "S1P/S2P against smmu.stage");
    // QEMU advertises XNX exactly when stage 2 is there.
    ensure_eq!(f.xnx, stages.stage2());
    ensure_eq!(f.table_formats, TableFormats::AArch64);
    ensure!(f.coherent, "COHACC");
    ensure_eq!(f.asid_bits, 16);
    ensure_eq!(f.vmid_bits, 16);
    ensure_eq!(f.stream_table, StreamTableLevels::TwoLevel);
    ensure_eq!(f.endianness, TableEndianness::Little);
    ensure_eq!(f.stall_model, StallModel::TerminateOnly);
    ensure_eq!(f.term_model, TermModel::AbortOnly);
    // QEMU 10's SMMU has no ATS option; `smmu.ats=1` would say a machine offers it.
    ensure_eq!(
        f.ats,
        m.cmdline.get_bool("smmu.ats").unwrap_or(false),
        "IDR0.ATS (smmu.ats)"
    );
    ensure!(!f.pri && !f.msi && !f.broadcast_tlb, "no PRI, MSI or BTM");
    ensure_eq!(f.httu, iommu_smmuv3::idr::Httu::None);
    ensure_eq!(f.sid_bits, 16);
    ensure_eq!(f.ssid_bits, 0);
    ensure_eq!((f.cmdq_max_log2, f.eventq_max_log2), (19, 19));
    ensure_eq!(f.oas, OutputAddressSize::Bits44);
    ensure!(
        f.granules.size_4k && f.granules.size_16k && f.granules.size_64k,
        "4K/16K/64K"
    );
    ensure!(f.range_invalidation, "RIL");
    ensure!(f.had, "HAD");
    ensure_eq!(f.bbml, Bbml::Level2);
    ensure_eq!((f.version.major, f.version.minor), (0, 1), "SMMUv3.1");
    Ok(())
}

fn smmu_starts_disabled_and_bypassing(m: &mut Machine) -> TestResult {
    let dt = devicetree(m)?;
    let (smmu, _) = smmu_and_host(&dt)?;
    let regs = NonNull::new(smmu.regs.base as *mut SmmuRegisters)
        .ok_or_else(|| fail("SMMU at address 0"))?;
    // SAFETY: as in `read_features`; these reads have no side effects.
    let regs = unsafe { regs.as_ref() };
    ensure_eq!(regs.cr0.get(), 0, "SMMUEN and the queues are off at reset");
    ensure_eq!(regs.cr0ack.get(), 0);
    // Why the back-end must set GBPA.ABORT before anything else: QEMU resets it to bypass.
    ensure!(
        !regs.gbpa.is_set(GBPA::ABORT),
        "GBPA lets traffic bypass while disabled"
    );
    Ok(())
}

/// What `cargo xtask demo --arch aarch64` shows: the SMMU, the PCIe host and its routing, and
/// what the SMMU can do.
pub fn demo(m: &mut Machine) {
    let dt = match devicetree(m) {
        Ok(dt) => dt,
        Err(Failure::Failed(why) | Failure::Skipped(why)) => {
            return println!("no devicetree: {why}")
        }
    };
    for smmu in dt.smmus() {
        match smmu {
            Ok(s) => {
                println!("SMMUv3 {} at {} ({} bytes)", s.name, s.regs, s.regs.size);
                let i = s.interrupts;
                let show = |irq: Option<Interrupt>| match irq {
                    Some(irq) => alloc::format!("{irq}"),
                    None => alloc::string::String::from("-"),
                };
                println!(
                    "  interrupts: eventq {}, gerror {}, cmdq-sync {}, priq {}",
                    show(i.eventq),
                    show(i.gerror),
                    show(i.cmdq_sync),
                    show(i.priq)
                );
                match read_features(&s) {
                    Ok(f) => {
                        for line in alloc::format!("{f}").lines() {
                            println!("  {line}");
                        }
                    }
                    Err(e) => println!("  cannot read its ID registers: {e}"),
                }
            }
            Err(e) => println!("SMMUv3 node unusable: {e}"),
        }
    }
    for host in dt.pci_hosts() {
        match host {
            Ok(h) => {
                println!(
                    "PCIe host {}: ECAM {} buses {}-{}",
                    h.name, h.ecam, h.bus_range.start, h.bus_range.end
                );
                for w in h.windows() {
                    println!("  window {w}");
                }
                for e in h.iommu_map() {
                    let target = dt
                        .smmu_by_phandle(e.iommu)
                        .map(|s| s.name)
                        .unwrap_or("an unknown IOMMU");
                    println!(
                        "  iommu-map: requester ids {:#06x}..{:#x} -> {} stream ids from {:#x}",
                        e.rid_base,
                        u64::from(e.rid_base) + u64::from(e.length),
                        target,
                        e.sid_base
                    );
                }
                let edu = Bdf::new(0, 1, 0);
                match dt.stream_id(&h, edu.requester_id()) {
                    Ok((s, sid)) => println!("  {edu} (edu) -> {} stream id {sid}", s.name),
                    Err(e) => println!("  {edu}: {e}"),
                }
            }
            Err(e) => println!("PCIe host node unusable: {e}"),
        }
    }
    if let Err(Failure::Failed(why) | Failure::Skipped(why)) = dma::demo(m) {
        println!("SMMU DMA demo failed: {why}");
    }
    if m.info.exception_level == 2 {
        println!("A hypervisor at EL2 runs a real guest at EL1 and passes edu through to it:");
        if let Err(Failure::Failed(why) | Failure::Skipped(why)) =
            crate::hyp::passthrough::a_guest_drives_its_passed_through_edu_with_guest_physical_dma(
                m,
            )
        {
            println!("guest passthrough demo failed: {why}");
        }
        println!("The guest drives edu through its own SMMU, which the hypervisor emulates:");
        if let Err(Failure::Failed(why) | Failure::Skipped(why)) =
            crate::hyp::passthrough::a_guest_drives_edu_through_its_own_vsmmu(m)
        {
            println!("guest vSMMU demo failed: {why}");
        }
        println!("edu's MSI reaches the guest as a virtual interrupt:");
        match crate::hyp::passthrough::a_guest_takes_edus_msi_as_a_virtual_interrupt(m) {
            Ok(()) => {}
            Err(Failure::Skipped(why)) => println!("  (skipped: {why})"),
            Err(Failure::Failed(why)) => println!("guest interrupt demo failed: {why}"),
        }
    } else {
        println!(
            "A tiny hypervisor gives edu to a guest with a vIOMMU (the kernel plays the guest: \
             boot at EL2, -machine virt,virtualization=on, for a real one):"
        );
        if let Err(Failure::Failed(why) | Failure::Skipped(why)) =
            viommu::guest_stage1_over_viommu_translates_and_invalidates(m)
        {
            println!("SMMU hypervisor demo failed: {why}");
        }
    }
    println!("Interrupts of an owned device, through the SMMU to the GICv3 ITS:");
    if let Err(e) = msi::owned_msis_through_the_object_model(m) {
        println!("SMMU interrupt demo failed: {e}");
    }
}

/// The driver's `log` output appears on the console exactly when the command line asks for it.
fn logging_follows_the_command_line(m: &mut Machine) -> TestResult {
    crate::logging::logging_follows_the_command_line(m, |m| dma::unit(m).map(|_| ()))
}

/// The multi-CPU tests over this back-end (see [`crate::smp`]), to run after [`TESTS`] and
/// the guest's tests.
pub fn smp_tests() -> [Test<Machine>; 9] {
    crate::smp::tests::<Smp>(Test {
        name: "an_illegal_command_is_reported_to_its_cpu_only",
        run: dma::an_illegal_command_is_reported_to_its_cpu_only,
    })
}

struct Smp;

impl crate::smp::Arch for Smp {
    type Unit = dma::Unit;
    fn rig(m: &Machine) -> Result<crate::dma::Rig<'static, dma::Unit>, Failure> {
        dma::default_rig(m)
    }
    fn announce_faults() {
        dma::announce_faults();
    }
}
