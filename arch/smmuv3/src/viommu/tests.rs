//! Forwarding of guest commands against a recording queue, and the STEs nested domains install.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::attributes::Granule;
use crate::cmdq::{CommandErrorCode, CommandFailure};
use crate::idr::{IdRegisters, OutputAddressSize};
use crate::stream_table::{Stage1, SteConfig};
use iommu::addr::PhysAddr;

fn qemu() -> Features {
    Features::decode(&IdRegisters {
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    })
}

const VMID: u16 = 9;

fn devices(vsid: u32) -> Option<DeviceId> {
    (vsid == 0x10).then_some(DeviceId(8))
}

/// CMD_TLBI_NH_VA (0x12) for ASID 3 at `va`, guest VMID 0, and the host's version (VMID 9).
fn nh_va(va: u64) -> RawCommand {
    [0x12 | 3 << 48, va | 1]
}
fn host_nh_va(va: u64) -> RawCommand {
    [0x12 | u64::from(VMID) << 32 | 3 << 48, va | 1]
}
const SYNC: RawCommand = [0x46, 0];
/// CMD_CFGI_CD_ALL (0x06) for virtual stream `vsid`.
fn cfgi_cd_all(vsid: u64) -> RawCommand {
    [0x06 | vsid << 32, 0]
}

/// Forwards `cmds` and returns what happened and the batches submitted.
fn run(cmds: &[RawCommand], limit: usize) -> (Forwarded, Vec<Vec<RawCommand>>) {
    let mut batches = Vec::new();
    let f = forward(cmds, VMID, &qemu(), &devices, &|_| false, limit, |b| {
        batches.push(b.to_vec());
        Ok(())
    });
    (f, batches)
}

#[test]
fn all_accepted_commands_go_in_one_batch_and_syncs_are_consumed() {
    let (f, batches) = run(&[nh_va(0x1000), cfgi_cd_all(0x10), SYNC], 31);
    assert_eq!(
        f,
        Forwarded {
            done: 3,
            refused: None
        }
    );
    assert_eq!(
        batches,
        [[host_nh_va(0x1000), [0x06 | 8 << 32, 0]].to_vec()]
    );
    // Nothing to issue, nothing submitted.
    let (f, batches) = run(&[SYNC, SYNC], 31);
    assert_eq!(f.done, 2);
    assert!(batches.is_empty());
}

#[test]
fn stops_at_the_first_refused_command_after_issuing_the_ones_before() {
    // The third names virtual stream 0x11, which is not the guest's.
    let (f, batches) = run(
        &[
            nh_va(0x1000),
            nh_va(0x2000),
            cfgi_cd_all(0x11),
            nh_va(0x3000),
            SYNC,
        ],
        31,
    );
    assert_eq!(
        f,
        Forwarded {
            done: 2,
            refused: Some(UnitError::GuestCommand("stream id not the guest's"))
        }
    );
    assert_eq!(batches, [[host_nh_va(0x1000), host_nh_va(0x2000)].to_vec()]);
    // Refused first: nothing issued.
    let (f, batches) = run(&[[0x2a, 0x1000], nh_va(0x1000)], 31);
    assert_eq!(f.done, 0);
    assert!(f.refused.is_some());
    assert!(batches.is_empty());
}

#[test]
fn long_lists_are_split_into_batches() {
    let cmds: Vec<RawCommand> = (1..=5).map(|i| nh_va(i << 12)).collect();
    let (f, batches) = run(&cmds, 2);
    assert_eq!(f.done, 5);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(batches[2], [host_nh_va(5 << 12)]);
}

#[test]
fn hardware_errors_are_reported_at_the_failed_command() {
    let cmds = [nh_va(0x1000), SYNC, nh_va(0x2000), nh_va(0x3000)];
    // The SMMU refuses the batch's second command (guest command 2).
    let f = forward(&cmds, VMID, &qemu(), &devices, &|_| false, 31, |b| {
        Err(CmdqError::Command(CommandFailure {
            position: 1,
            queue_index: 0,
            code: CommandErrorCode::Illegal,
            command: b[1],
        }))
    });
    assert_eq!(f.done, 2);
    assert!(matches!(f.refused, Some(UnitError::Hardware(_))));
    // A timeout: nothing of the batch is known to be done.
    let t = iommu::poll::Timeout { waiting_for: "x" };
    let f = forward(&cmds, VMID, &qemu(), &devices, &|_| false, 31, |_| {
        Err(CmdqError::Timeout(t))
    });
    assert_eq!(
        f,
        Forwarded {
            done: 0,
            refused: Some(UnitError::Timeout(t))
        }
    );
}

#[test]
fn nested_domains_install_abort_stage2_or_nested_entries() {
    let s2 = match Stage2::new(
        9,
        PhysAddr::new(0x4010_0000),
        40,
        Granule::Size4K,
        1,
        OutputAddressSize::Bits44,
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(nested_ste(s2, GuestSte::Abort), StreamTableEntry::abort());
    assert_eq!(
        nested_ste(s2, GuestSte::Bypass),
        StreamTableEntry::stage2(s2)
    );
    let s1 = Stage1::single_cd(PhysAddr::new(0x8000_0000));
    let ste = nested_ste(
        s2,
        GuestSte::Stage1 {
            s1,
            ats: crate::stream_table::Eats::Abort,
        },
    );
    assert_eq!(ste.config, SteConfig::Nested(s1, s2));
    // The encoded entry: Config 0b111, the guest's CD pointer, the parent's VMID and table.
    let w = match ste.encode() {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(w[0] & 0xf, 0xf);
    assert_eq!(w[0] & 0x000f_ffff_ffff_ffc0, 0x8000_0000);
    assert_eq!(w[2] & 0xffff, 9);
    assert_eq!(w[3], 0x4010_0000);
}

#[test]
fn a_viommu_is_busy_while_nested_domains_exist_and_gives_its_frame_back() {
    let hal = iommu::hal::host::HostHal::new();
    let s2 = match Stage2::new(
        3,
        PhysAddr::new(0x4010_0000),
        40,
        Granule::Size4K,
        1,
        OutputAddressSize::Bits44,
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let parent = NestUsers::new();
    let Ok(link) = parent.link(&&hal) else {
        panic!("no frame")
    };
    let Ok(v) = SmmuViommu::new(s2, &hal, || Ok(link)) else {
        panic!("no frame")
    };
    assert_eq!((v.vmid(), v.ipa_bits(), hal.live_frames()), (3, 40, 2));
    let (a, b) = (v.links(), v.links());
    assert_eq!(v.nested_domains(), 2);
    let Err((v, UnitError::Busy)) = destroy_viommu(v) else {
        panic!("destroyed with two nested domains")
    };
    drop(a);
    let Err((v, UnitError::Busy)) = destroy_viommu(v) else {
        panic!("destroyed with one nested domain")
    };
    // Dropped on another thread: the count is shared through the frame, not the value.
    std::thread::spawn(move || drop(b)).join().ok();
    assert_eq!(v.nested_domains(), 0);
    assert!(destroy_viommu(v).is_ok());
    assert!(!parent.in_use(&&hal));
    // SAFETY: no user is left and nothing else can register.
    unsafe { parent.release(&&hal) };
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn a_parent_is_in_use_while_a_viommu_or_nested_domain_of_it_exists() {
    let hal = iommu::hal::host::HostHal::new();
    let users = NestUsers::new();
    assert!(!users.in_use(&&hal));
    let Ok(link) = users.link(&&hal) else {
        panic!("no frame")
    };
    let s2 = match Stage2::new(
        3,
        PhysAddr::new(0x4010_0000),
        40,
        Granule::Size4K,
        1,
        OutputAddressSize::Bits44,
    ) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    let Ok(v) = SmmuViommu::new(s2, &hal, || Ok(link)) else {
        panic!("no frame")
    };
    assert_eq!(hal.live_frames(), 2);
    assert!(users.in_use(&&hal));
    // A nested domain holds both the vIOMMU and the parent.
    let nested = v.links();
    let Err((v, UnitError::Busy)) = destroy_viommu(v) else {
        panic!("destroyed with a nested domain")
    };
    drop(nested);
    assert!(destroy_viommu(v).is_ok());
    assert!(!users.in_use(&&hal));
    // SAFETY: no user is left and nothing else can register.
    unsafe { users.release(&&hal) };
    assert_eq!(hal.live_frames(), 0);
}
