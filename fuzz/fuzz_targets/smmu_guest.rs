//! What an SMMUv3 vIOMMU takes from its guest: a vSTE (`validate_vste`) and a run of
//! command-queue entries (`viommu::forward`, which checks each with `check_command`). Whatever
//! the guest writes, nothing reaches the host's queue that names a stream not the guest's, a
//! VMID not the guest's, or a CMD_SYNC of the guest's own; an accepted vSTE is stage 1 within
//! the SMMU's limits and the parent's input range.
//!
//! Input: 3 bytes of SMMU features and limits, a 64-byte vSTE, then 16-byte commands.
#![no_main]

use iommu::unit::{DeviceId, GuestEntry};
use iommu_smmuv3::cmdq::CmdqError;
use iommu_smmuv3::command::Command;
use iommu_smmuv3::guest::{guest_flush, validate_vste, GuestSte};
use iommu_smmuv3::idr::{Features, IdRegisters, StallModel};
use iommu_smmuv3::viommu::forward;
use libfuzzer_sys::fuzz_target;

/// The guest's VMID; any other VMID in a host command is another VM's.
const VMID: u16 = 7;
/// Guest stream ids 0..4 are the guest's devices, at host stream ids HOST_SID_BASE + guest.
const GUEST_DEVICES: u32 = 4;
const HOST_SID_BASE: u32 = 0x100;

fn words<const N: usize>(b: &[u8]) -> [u64; N] {
    let mut w = [0u64; N];
    for (w, c) in w.iter_mut().zip(b.chunks(8)) {
        let mut le = [0u8; 8];
        le[..c.len()].copy_from_slice(c);
        *w = u64::from_le_bytes(le);
    }
    w
}

fuzz_target!(|data: &[u8]| {
    let Some((&[f, ias, limit], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    // QEMU 10's SMMU (S1P + S2P, ASID16, RIL), with what it lacks switched on by the input.
    let mut features = Features::decode(&IdRegisters {
        idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
        iidr: 0,
        aidr: 1,
    });
    features.ats = f & 1 != 0;
    features.cd_two_level = f & 2 != 0;
    features.range_invalidation = f & 4 != 0;
    features.ssid_bits = (f >> 3) % 21;
    if f & 0x80 != 0 {
        features.stall_model = StallModel::StallAndTerminate;
    }
    let (vste, commands) = rest.split_at(rest.len().min(64));
    let vste: GuestEntry = words(vste);
    if let Ok(GuestSte::Stage1 { s1, .. }) = validate_vste(&vste, &features, ias) {
        assert_eq!(s1.vmid, 0, "a guest vSTE names no VMID");
        assert!(s1.cd_max <= features.ssid_bits);
        assert!(ias < 64 && s1.cd_table.as_u64() < 1u64 << ias);
    }

    let cmds: Vec<[u64; 2]> = commands.chunks(16).map(words).collect();
    for &c in &cmds {
        let _ = guest_flush(c);
    }
    let devices = |sid: u32| (sid < GUEST_DEVICES).then(|| DeviceId(HOST_SID_BASE + sid));
    // Even host streams have ATS on.
    let ats_enabled = |d: DeviceId| d.0 & 1 == 0;
    let mut issued = 0;
    let outcome = forward(
        &cmds,
        VMID,
        &features,
        &devices,
        &ats_enabled,
        usize::from(limit),
        |batch: &[[u64; 2]]| {
            for &raw in batch {
                let cmd = Command::decode(raw).expect("the host re-decodes what it issues");
                assert!(
                    !matches!(cmd, Command::Sync { .. }),
                    "a guest CMD_SYNC issued: {cmd:?}"
                );
                if let Some(sid) = cmd.stream_id() {
                    assert!(
                        (HOST_SID_BASE..HOST_SID_BASE + GUEST_DEVICES).contains(&sid),
                        "{cmd:?} names a stream not the guest's"
                    );
                }
                if let Command::AtcInv { sid, .. } = cmd {
                    assert!(
                        ats_enabled(DeviceId(sid)),
                        "CMD_ATC_INV for stream {sid:#x} without ATS"
                    );
                }
                if let Some(vmid) = cmd.vmid() {
                    assert_eq!(vmid, VMID, "{cmd:?} names another VM");
                }
            }
            issued += batch.len();
            // Now and then the hardware refuses a batch: the error path must hold as well.
            if batch.len() == 3 && batch[0][0] & 0x100 != 0 {
                return Err(CmdqError::OutOfMemory);
            }
            Ok(())
        },
    );
    assert!(outcome.done <= cmds.len());
    assert!(
        issued <= cmds.len(),
        "one host command per guest command at most"
    );
    if outcome.refused.is_none() {
        assert_eq!(outcome.done, cmds.len());
    }
});
