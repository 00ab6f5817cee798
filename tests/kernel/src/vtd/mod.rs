//! VT-d tests of the x86_64 test kernel: discovery (RSDP → RSDT/XSDT → DMAR → DRHD) and
//! identification (VER/CAP/ECAP decoded), checked against the QEMU machine the runner started
//! (`vtd.mode=legacy|scalable|flts vtd.aw=48|39 vtd.cm=0|1 [vtd.devtlb=0|1]` on the command
//! line).

mod ats;
mod dma;
mod hypervisor;
mod lifecycle;
mod msi;
mod viommu;

use crate::dma::ModelUnmap;
use crate::Machine;
use alloc::vec::Vec;
use iommu::acpi::{Acpi, Signature};
use iommu_boot::testing::{fail, Failure, Test, TestResult};
use iommu_boot::x86_64::{LowMemory, IDENTITY_MAP_END, LOW_MEMORY, UNCACHED_START};
use iommu_boot::{ensure, ensure_eq, println, skip};
use iommu_vtd::caps::{Agaw, AgawError, SuperPages};
use iommu_vtd::dmar::{DeviceScopeType, Dmar, Drhd};
use iommu_vtd::registers::{Readable, FRCD_HI, FSTS, GSTS};
use iommu_vtd::registers::{UnitInfo, UnitRegisters};

pub static TESTS: &[Test<Machine>] = &[
    Test {
        name: "acpi_tables_validate_and_list_dmar",
        run: acpi_tables_validate_and_list_dmar,
    },
    Test {
        name: "acpi_dmar_names_one_drhd_at_fed90000",
        run: acpi_dmar_names_one_drhd_at_fed90000,
    },
    Test {
        name: "acpi_dmar_scope_covers_every_edu",
        run: acpi_dmar_scope_covers_every_edu,
    },
    Test {
        name: "vtd_unit_reports_version_1_0",
        run: vtd_unit_reports_version_1_0,
    },
    Test {
        name: "vtd_capabilities_match_machine",
        run: vtd_capabilities_match_machine,
    },
    Test {
        name: "vtd_extended_capabilities_match_mode",
        run: vtd_extended_capabilities_match_mode,
    },
    Test {
        name: "vtd_agaw_choice_follows_aw_bits",
        run: vtd_agaw_choice_follows_aw_bits,
    },
    Test {
        name: "vtd_unit_starts_disabled_with_no_fault_recorded",
        run: vtd_unit_starts_disabled_with_no_fault_recorded,
    },
    // DMA through the brought-up unit; they run after the discovery tests, which
    // check the unit as firmware left it.
    Test {
        name: "vtd_unit_comes_up_translating",
        run: dma::vtd_unit_comes_up_translating,
    },
    Test {
        name: "mapped_dma_lands",
        run: dma::mapped_dma_lands,
    },
    Test {
        name: "dma_api_moves_data_both_ways_below_the_mask_and_faults_after_unmap",
        run: |m| {
            crate::dma_api::dma_api_moves_data_both_ways_below_the_mask_and_faults_after_unmap(
                m,
                &dma::rig(m)?,
            )
        },
    },
    Test {
        name: "strict_sub_page_mode_keeps_the_rest_of_the_page_from_the_device",
        run: |m| {
            crate::dma_api::strict_sub_page_mode_keeps_the_rest_of_the_page_from_the_device(
                m,
                &dma::rig(m)?,
            )
        },
    },
    Test {
        name: "identity_bounces_buffers_beyond_the_mask",
        run: |m| crate::dma_api::identity_bounces_buffers_beyond_the_mask(m, &dma::rig(m)?),
    },
    Test {
        name: "faults_reach_the_owner_of_the_device",
        run: |m| crate::dma::faults_reach_the_owner_of_the_device(&dma::rig(m)?),
    },
    Test {
        name: "unmapped_dma_is_blocked_and_reported",
        run: dma::unmapped_dma_is_blocked_and_reported,
    },
    Test {
        name: "read_only_mapping_blocks_writes",
        run: dma::read_only_mapping_blocks_writes,
    },
    Test {
        name: "no_stale_translation_after_unmap",
        run: dma::no_stale_translation_after_unmap,
    },
    Test {
        name: "devices_in_different_domains_are_isolated",
        run: dma::devices_in_different_domains_are_isolated,
    },
    Test {
        name: "superpage_2m_mapping_translates",
        run: dma::superpage_2m_mapping_translates,
    },
    Test {
        name: "mapping_at_top_of_address_width",
        run: dma::mapping_at_top_of_address_width,
    },
    Test {
        name: "identity_attachment_passes_dma_through",
        run: dma::identity_attachment_passes_dma_through,
    },
    Test {
        name: "blocked_device_faults_with_its_reason",
        run: dma::blocked_device_faults_with_its_reason,
    },
    Test {
        name: "fault_storm_overflow_is_flagged_and_cleared",
        run: dma::fault_storm_overflow_is_flagged_and_cleared,
    },
    Test {
        name: "invalid_descriptor_is_reported_and_queue_recovers",
        run: dma::invalid_descriptor_is_reported_and_queue_recovers,
    },
    Test {
        name: "invalidation_descriptor_counts",
        run: dma::invalidation_descriptor_counts,
    },
    Test {
        name: "deferred_unmaps_fault_after_one_flush",
        run: dma::deferred_unmaps_fault_after_one_flush,
    },
    Test {
        name: "emptied_tables_are_reclaimed",
        run: dma::emptied_tables_are_reclaimed,
    },
    Test {
        name: "pruning_unmaps_free_the_tables_they_empty",
        run: dma::pruning_unmaps_free_the_tables_they_empty,
    },
    Test {
        name: "object_model_unmaps_free_their_tables",
        run: |m| dma::object_model_unmaps(m, ModelUnmap::Strict),
    },
    Test {
        name: "object_model_deferred_unmaps_leave_their_tables_to_a_sweep",
        run: |m| dma::object_model_unmaps(m, ModelUnmap::Deferred),
    },
    Test {
        name: "object_model_unmaps_with_a_sweep_threshold_of_one_leave_nothing_empty",
        run: |m| dma::object_model_unmaps(m, ModelUnmap::SweptAtOnce),
    },
    Test {
        name: "dma_api_frees_the_tables_its_freed_iovas_emptied",
        run: dma::dma_api_frees_the_tables_its_freed_iovas_emptied,
    },
    Test {
        name: "hardware_info_matches_machine",
        run: lifecycle::hardware_info_matches_machine,
    },
    Test {
        name: "fault_event_interrupt_is_delivered_and_drained",
        run: lifecycle::fault_event_interrupt_is_delivered_and_drained,
    },
    Test {
        name: "destroyed_domain_ids_are_reused_without_stale_iotlb",
        run: lifecycle::destroyed_domain_ids_are_reused_without_stale_iotlb,
    },
    Test {
        name: "shared_cpu_table_domain_translates_and_flushes",
        run: lifecycle::shared_cpu_table_domain_translates_and_flushes,
    },
    Test {
        name: "bridged_devices_share_an_alias_and_a_group",
        run: |m| {
            crate::alias::bridged_devices_share_an_alias_and_a_group(
                m,
                dma::unit(m)?,
                dma::stage(m),
                &|bdf| Ok(iommu::unit::DeviceId(u32::from(bdf.requester_id()))),
            )
        },
    },
    // The unit side of a vIOMMU.
    Test {
        name: "viommu_needs_scalable_mode_and_a_second_stage_parent",
        run: viommu::viommu_needs_scalable_mode_and_a_second_stage_parent,
    },
    Test {
        name: "guest_pasid_entry_is_checked_before_nesting_is_refused",
        run: viommu::guest_pasid_entry_is_checked_before_nesting_is_refused,
    },
    Test {
        name: "guest_invalidations_are_checked_translated_and_issued",
        run: viommu::guest_invalidations_are_checked_translated_and_issued,
    },
    Test {
        name: "tiny_hypervisor_through_the_object_model",
        run: hypervisor::tiny_hypervisor_through_the_object_model,
    },
    Test {
        name: "device_tlbs_follow_the_unmaps_of_an_ats_function",
        run: ats::device_tlbs_follow_the_unmaps_of_an_ats_function,
    },
    Test {
        name: "a_guest_drives_its_own_tables_through_shadowing",
        run: viommu::shadowing,
    },
    // Device MSIs through interrupt remapping (machines with intremap=on, vtd.ir=1).
    Test {
        name: "remapped_msi_arrives_at_the_vector_its_irte_names",
        run: msi::remapped_msi_arrives_at_the_vector_its_irte_names,
    },
    Test {
        name: "retargeted_entry_moves_the_next_msi",
        run: msi::retargeted_entry_moves_the_next_msi,
    },
    Test {
        name: "msi_naming_a_not_present_entry_is_blocked_and_reported",
        run: msi::msi_naming_a_not_present_entry_is_blocked_and_reported,
    },
    Test {
        name: "source_id_validation_blocks_another_device_using_the_handle",
        run: msi::source_id_validation_blocks_another_device_using_the_handle,
    },
    Test {
        name: "entry_freed_at_release_blocks_a_later_msi",
        run: msi::entry_freed_at_release_blocks_a_later_msi,
    },
    Test {
        name: "compatibility_format_msi_follows_cfis",
        run: msi::compatibility_format_msi_follows_cfis,
    },
    Test {
        name: "owned_msis_through_the_object_model",
        run: msi::owned_msis_through_the_object_model,
    },
    Test {
        name: "bridged_device_msi_is_pinned_to_its_alias",
        run: msi::bridged_device_msi_is_pinned_to_its_alias,
    },
    Test {
        name: "remapping_fault_raises_the_fault_event_interrupt",
        run: msi::remapping_fault_raises_the_fault_event_interrupt,
    },
    // Last: it leaves the third edu with an RMRR for the rest of the boot.
    Test {
        name: "rmrr_range_stays_identity_mapped_for_its_device",
        run: lifecycle::rmrr_range_stays_identity_mapped_for_its_device,
    },
    Test {
        name: "logging_follows_the_command_line",
        run: logging_follows_the_command_line,
    },
];

/// The machine the runner says it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Legacy,
    Scalable,
    Flts,
}

struct Expected {
    mode: Mode,
    aw: u8,
    caching_mode: bool,
    /// `device-iotlb=on` (`vtd.devtlb=1`, default 0): ECAP.DT and an ATSR.
    device_tlb: bool,
}

fn expected(m: &Machine) -> Result<Expected, Failure> {
    let mode = match m.cmdline.get("vtd.mode") {
        Some("legacy") => Mode::Legacy,
        Some("scalable") => Mode::Scalable,
        Some("flts") => Mode::Flts,
        Some(other) => return Err(fail(alloc::format!("unknown vtd.mode={other}"))),
        None => skip!("the command line does not say which VT-d machine this is (vtd.mode)"),
    };
    let aw = match m.cmdline.get_u64("vtd.aw") {
        Some(aw @ (39 | 48)) => aw as u8,
        other => {
            return Err(fail(alloc::format!(
                "vtd.aw must be 39 or 48, got {other:?}"
            )))
        }
    };
    let Some(caching_mode) = m.cmdline.get_bool("vtd.cm") else {
        return Err(fail("vtd.cm must be 0 or 1"));
    };
    let device_tlb = match m.cmdline.get("vtd.devtlb") {
        None => false,
        Some(_) => m
            .cmdline
            .get_bool("vtd.devtlb")
            .ok_or_else(|| fail("vtd.devtlb must be 0 or 1"))?,
    };
    Ok(Expected {
        mode,
        aw,
        caching_mode,
        device_tlb,
    })
}

fn acpi(m: &Machine) -> Result<Acpi<'static, LowMemory>, Failure> {
    let Some(rsdp) = m.info.rsdp else {
        return Err(fail(
            "the boot code found no RSDP address in the PVH start info",
        ));
    };
    Acpi::new(&LOW_MEMORY, rsdp).map_err(fail)
}

fn dmar(m: &Machine) -> Result<Dmar<'static>, Failure> {
    let table = acpi(m)?.find(Signature::DMAR).map_err(fail)?;
    Dmar::parse(table.bytes()).map_err(fail)
}

/// The machine's only remapping unit.
fn the_drhd(dmar: &Dmar<'static>) -> Result<Drhd<'static>, Failure> {
    let mut drhds = dmar.drhds();
    match (drhds.next(), drhds.next()) {
        (Some(d), None) => Ok(d),
        (None, _) => Err(fail("DMAR lists no remapping unit")),
        _ => Err(fail("DMAR lists more than one remapping unit; q35 has one")),
    }
}

/// The unit's registers, after checking the DRHD points into the uncached identity map.
fn registers(drhd: &Drhd<'_>) -> Result<UnitRegisters, Failure> {
    let base = drhd.register_base();
    let size = drhd.register_size();
    ensure!(
        base >= UNCACHED_START
            && base
                .checked_add(size)
                .is_some_and(|e| e <= IDENTITY_MAP_END),
        "DRHD register base {base:#x} (+{size:#x}) is outside the uncached identity map"
    );
    let Some(ptr) = core::ptr::NonNull::new(base as *mut u8) else {
        return Err(fail("DRHD register base is 0"));
    };
    // SAFETY: [base, base + size) was just checked to lie in UNCACHED_START..IDENTITY_MAP_END,
    // which the boot code identity-maps cache-disabled for the kernel's whole life; the DRHD
    // says the unit's registers are there.
    unsafe { UnitRegisters::new(ptr, size as usize) }.map_err(fail)
}

fn unit_info(m: &Machine) -> Result<UnitInfo, Failure> {
    Ok(registers(&the_drhd(&dmar(m)?)?)?.info())
}

fn acpi_tables_validate_and_list_dmar(m: &mut Machine) -> TestResult {
    let acpi = acpi(m)?;
    // SeaBIOS gives an ACPI 1.0 RSDP (RSDT only); a 2.0+ one must lead to the XSDT.
    let want = if acpi.rsdp().revision >= 2 {
        Signature::XSDT
    } else {
        Signature::RSDT
    };
    ensure_eq!(acpi.root().signature(), want);
    let mut signatures = Vec::new();
    for table in acpi.tables() {
        signatures.push(table.map_err(fail)?.signature());
    }
    ensure!(
        signatures.contains(&Signature::DMAR),
        "no DMAR among the tables {signatures:?}"
    );
    ensure_eq!(acpi.find(Signature::DMAR).map_err(fail)?.revision(), 1);
    Ok(())
}

fn acpi_dmar_names_one_drhd_at_fed90000(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let dmar = dmar(m)?;
    let drhd = the_drhd(&dmar)?;
    ensure_eq!(drhd.register_base(), 0xfed9_0000);
    ensure_eq!(drhd.segment(), 0);
    ensure_eq!(drhd.register_size(), 4096);
    // QEMU reports its aw-bits as the host address width.
    ensure_eq!(dmar.host_address_width(), want.aw);
    ensure_eq!(dmar.rmrrs().count(), 0, "RMRRs (q35 has none)");
    // device-iotlb=on adds one ATSR for segment 0 with ALL_PORTS; else there is none.
    let atsrs: Vec<_> = dmar.atsrs().map(|a| (a.segment(), a.all_ports())).collect();
    let want_atsrs: &[(u16, bool)] = if want.device_tlb { &[(0, true)] } else { &[] };
    ensure_eq!(atsrs, want_atsrs, "ATSRs (vtd.devtlb)");
    Ok(())
}

fn acpi_dmar_scope_covers_every_edu(m: &mut Machine) -> TestResult {
    let dmar = dmar(m)?;
    let drhd = the_drhd(&dmar)?;
    let cfg = crate::platform::pci_config(m)?;
    let edus: Vec<_> = iommu_boot::pci::find(
        &cfg,
        0,
        iommu_boot::edu::VENDOR_ID,
        iommu_boot::edu::DEVICE_ID,
    )
    .collect();
    ensure!(!edus.is_empty(), "no edu device on bus 0");
    if drhd.include_pci_all() {
        return Ok(());
    }
    for edu in edus {
        let named = drhd.scopes().any(|s| {
            s.kind() == DeviceScopeType::PciEndpoint
                && s.direct_bdf().is_some_and(|b| {
                    (b.bus, b.device, b.function) == (edu.bus, edu.device, edu.function)
                })
        });
        ensure!(
            named,
            "edu at {edu} is in no device scope of the DRHD: {drhd:?}"
        );
    }
    Ok(())
}

fn vtd_unit_reports_version_1_0(m: &mut Machine) -> TestResult {
    let info = unit_info(m)?;
    ensure_eq!((info.version.major, info.version.minor), (1, 0));
    Ok(())
}

fn vtd_capabilities_match_machine(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let cap = unit_info(m)?.cap;
    let sagaw: Vec<Agaw> = cap.sagaw().iter().collect();
    match want.aw {
        48 => ensure_eq!(sagaw, [Agaw::Level3, Agaw::Level4], "SAGAW with aw-bits=48"),
        _ => ensure_eq!(sagaw, [Agaw::Level3], "SAGAW with aw-bits=39"),
    }
    ensure_eq!(cap.mgaw(), want.aw, "MGAW");
    ensure_eq!(cap.caching_mode(), want.caching_mode, "CM");
    ensure_eq!(cap.nd(), 6, "ND");
    ensure_eq!(cap.domain_ids(), 65536);
    ensure_eq!(cap.fault_recording_offset(), 0x220, "FRO");
    ensure_eq!(cap.nfr(), 0, "NFR field");
    ensure_eq!(cap.fault_recording_count(), 1);
    ensure!(cap.psi(), "PSI");
    ensure_eq!(cap.mamv(), 18, "MAMV");
    ensure_eq!(
        cap.sllps(),
        SuperPages {
            size_2m: true,
            size_1g: true
        },
        "SLLPS"
    );
    ensure!(!cap.rwbf(), "RWBF");
    ensure!(cap.dwd() && cap.drd(), "DWD/DRD");
    ensure!(!cap.plmr() && !cap.phmr(), "PLMR/PHMR");
    ensure_eq!(cap.fs1gp(), want.mode == Mode::Flts, "FS1GP");
    ensure!(!cap.pi() && !cap.fs5lp(), "PI/FS5LP");
    Ok(())
}

fn vtd_extended_capabilities_match_mode(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let dmar = dmar(m)?;
    let ecap = registers(&the_drhd(&dmar)?)?.info().ecap;
    ensure!(ecap.qi(), "QI");
    ensure!(ecap.pt(), "PT");
    ensure!(!ecap.coherent(), "C (QEMU's walks are not snooped)");
    ensure_eq!(
        ecap.dt(),
        want.device_tlb,
        "ECAP.DT follows device-iotlb= (vtd.devtlb)"
    );
    ensure_eq!(ecap.iotlb_register_offset(), 0xf0, "IRO");
    // The DMAR flag and the unit must agree on interrupt remapping.
    ensure_eq!(
        ecap.ir(),
        dmar.flags().intr_remap(),
        "ECAP.IR vs DMAR INTR_REMAP"
    );
    ensure_eq!(ecap.smts(), want.mode != Mode::Legacy, "SMTS");
    ensure_eq!(ecap.slts(), want.mode == Mode::Scalable, "SLTS");
    ensure_eq!(ecap.flts(), want.mode == Mode::Flts, "FLTS");
    // QEMU 10 reports supervisor requests only with its second-stage scalable mode.
    ensure_eq!(ecap.srs(), want.mode == Mode::Scalable, "SRS");
    ensure!(
        !ecap.pasid() && !ecap.nest() && !ecap.prs(),
        "PASID/NEST/PRS"
    );
    Ok(())
}

fn vtd_agaw_choice_follows_aw_bits(m: &mut Machine) -> TestResult {
    let want = expected(m)?;
    let cap = unit_info(m)?.cap;
    ensure_eq!(cap.agaw_for(39), Ok(Agaw::Level3));
    ensure_eq!(cap.agaw_for(32), Ok(Agaw::Level3));
    match want.aw {
        48 => {
            ensure_eq!(cap.agaw_for(48), Ok(Agaw::Level4));
            ensure_eq!(cap.max_agaw(), Ok(Agaw::Level4));
        }
        _ => {
            ensure_eq!(
                cap.agaw_for(48),
                Err(AgawError::WiderThanMgaw {
                    wanted: 48,
                    mgaw: 39
                })
            );
            ensure_eq!(cap.max_agaw(), Ok(Agaw::Level3));
        }
    }
    ensure!(
        cap.agaw_for(57).is_err(),
        "57-bit domains on a unit without 5-level tables"
    );
    Ok(())
}

fn vtd_unit_starts_disabled_with_no_fault_recorded(m: &mut Machine) -> TestResult {
    let regs = registers(&the_drhd(&dmar(m)?)?)?;
    let block = regs.block();
    // Firmware (SeaBIOS) leaves VT-d alone: no translation, no root table, no queue.
    ensure_eq!(block.gsts.get(), 0, "GSTS");
    ensure!(!block.gsts.is_set(GSTS::TES), "TES");
    ensure_eq!(block.fsts.read(FSTS::PPF), 0, "FSTS.PPF");
    ensure_eq!(block.iqh.get(), 0, "IQH");
    let Some(frcd) = regs.fault_recording(0) else {
        return Err(fail("no fault recording register 0"));
    };
    ensure_eq!(frcd.hi.read(FRCD_HI::F), 0, "FRCD0.F");
    ensure!(
        regs.fault_recording(1).is_none(),
        "a second fault recording register"
    );
    Ok(())
}

/// What a user wants to see: the tables found, the remapping units and what they can do.
pub fn demo(m: &mut Machine) {
    if let Err(e) = show(m) {
        match e {
            Failure::Failed(why) | Failure::Skipped(why) => {
                println!("VT-d discovery failed: {why}")
            }
        }
    }
    // Then the unit at work: a device attached, a DMA landing, a bad DMA blocked.
    if let Err(Failure::Failed(why) | Failure::Skipped(why)) = dma::demo(m) {
        println!("VT-d DMA demo failed: {why}");
    }
    // Then the unit under a tiny hypervisor, through the object model.
    println!("A tiny hypervisor gives edu to a guest with a vIOMMU:");
    if let Err(Failure::Failed(why) | Failure::Skipped(why)) =
        hypervisor::tiny_hypervisor_through_the_object_model(m)
    {
        println!("VT-d hypervisor demo failed: {why}");
    }
    println!("The guest's own VT-d tables, shadowed by the hypervisor (no nesting needed):");
    if let Err(Failure::Failed(why) | Failure::Skipped(why)) = viommu::shadowing(m) {
        println!("VT-d shadowing demo failed: {why}");
    }
    println!("Interrupts of an owned device, remapped through the object model:");
    if let Err(e) = msi::owned_msis_through_the_object_model(m) {
        println!("VT-d interrupt demo failed: {e}");
    }
}

fn show(m: &Machine) -> Result<(), Failure> {
    let acpi = acpi(m)?;
    let mut line = alloc::format!(
        "ACPI {} tables ({} at {:#x}):",
        if acpi.rsdp().revision >= 2 {
            "2.0+"
        } else {
            "1.0"
        },
        acpi.root().signature(),
        acpi.root().phys()
    );
    for table in acpi.tables() {
        match table {
            Ok(t) => line.push_str(&alloc::format!(" {}", t.signature())),
            Err(e) => line.push_str(&alloc::format!(" [{e}]")),
        }
    }
    println!("{line}");
    let dmar = dmar(m)?;
    println!(
        "DMAR: {}-bit host addresses, {} remapping unit(s), interrupt remapping {}",
        dmar.host_address_width(),
        dmar.drhds().count(),
        if dmar.flags().intr_remap() {
            "supported"
        } else {
            "not reported"
        }
    );
    for rmrr in dmar.rmrrs() {
        let mut line = alloc::format!(
            "  reserved memory {:#x}..={:#x}, kept identity-mapped for",
            rmrr.base(),
            rmrr.limit()
        );
        for scope in rmrr.scopes() {
            line.push_str(&alloc::format!(" {scope}"));
        }
        println!("{line}");
    }
    for atsr in dmar.atsrs() {
        let mut line = alloc::string::String::from("  ATS (device-TLBs) allowed below");
        if atsr.all_ports() {
            line.push_str(" every root port");
        }
        for scope in atsr.scopes() {
            line.push_str(&alloc::format!(" {scope}"));
        }
        println!("{line}");
    }
    let edus: Vec<_> = crate::platform::pci_config(m)
        .map(|cfg| {
            iommu_boot::pci::find(
                &cfg,
                0,
                iommu_boot::edu::VENDOR_ID,
                iommu_boot::edu::DEVICE_ID,
            )
            .map(|b| (b.bus, b.device, b.function))
            .collect()
        })
        .unwrap_or_default();
    for drhd in dmar.drhds() {
        print_drhd(&drhd, &edus);
    }
    Ok(())
}

fn print_drhd(drhd: &Drhd<'_>, edus: &[(u8, u8, u8)]) {
    let mut line = alloc::format!(
        "unit at {:#x} (segment {}) covers{}:",
        drhd.register_base(),
        drhd.segment(),
        if drhd.include_pci_all() {
            " all other PCI devices and"
        } else {
            ""
        }
    );
    for (i, scope) in drhd.scopes().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let item = match (scope.kind(), scope.direct_bdf()) {
            (DeviceScopeType::PciEndpoint, Some(b))
                if edus.contains(&(b.bus, b.device, b.function)) =>
            {
                alloc::format!(" {b} (edu)")
            }
            (DeviceScopeType::PciEndpoint, Some(b)) => alloc::format!(" {b}"),
            (DeviceScopeType::IoApic, _) => alloc::format!(" IOAPIC {}", scope.enumeration_id()),
            (DeviceScopeType::MsiCapableHpet, _) => {
                alloc::format!(" HPET {}", scope.enumeration_id())
            }
            _ => alloc::format!(" {scope}"),
        };
        line.push_str(&item);
    }
    println!("{line}");
    match registers(drhd) {
        Ok(regs) => println!("{}", regs.info()),
        Err(Failure::Failed(why) | Failure::Skipped(why)) => println!("  registers: {why}"),
    }
}

/// The driver's `log` output appears on the console exactly when the command line asks for it.
fn logging_follows_the_command_line(m: &mut Machine) -> TestResult {
    crate::logging::logging_follows_the_command_line(m, |m| dma::unit(m).map(|_| ()))
}

/// The multi-CPU tests over this back-end (see [`crate::smp`]), to run after [`TESTS`].
pub fn smp_tests() -> [Test<Machine>; 9] {
    crate::smp::tests::<Smp>(Test {
        name: "an_invalid_descriptor_is_reported_to_its_cpu_only",
        run: dma::an_invalid_descriptor_is_reported_to_its_cpu_only,
    })
}

struct Smp;

impl crate::smp::Arch for Smp {
    type Unit = dma::Unit;
    fn rig(m: &Machine) -> Result<crate::dma::Rig<'static, dma::Unit>, Failure> {
        dma::rig(m)
    }
}
