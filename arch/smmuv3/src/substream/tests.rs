//! A stream's own CD table with substreams, on an SMMU with IDR1.SSIDSIZE = 5 (QEMU 10 has 0):
//! the CDs land at their SubstreamIDs, S1DSS follows the default, and every live change is
//! invalidated with CMD_CFGI_CD through a command queue that the simulated SMMU consumes.

extern crate std;

use std::cell::RefCell;
use std::vec::Vec;

use iommu::addr::PhysAddr;
use iommu::hal::host::HostHal;

use super::*;
use crate::attributes::Granule;
use crate::cmdq::CommandQueue;
use crate::command::Command;
use crate::context_descriptor::INVALID_CD;
use crate::idr::{IdRegisters, OutputAddressSize};
use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};
use crate::stream_table::{CdTableFormat, StreamTableEntry};

/// QEMU 10's `virt` SMMU (IDR0/1/3/5 as read there), with `ssid_bits` of SubstreamID.
fn features(ssid_bits: u32) -> Features {
    features_cd2l(ssid_bits, false)
}

/// As [`features`], with IDR0.CD2L (bit 19) as given.
fn features_cd2l(ssid_bits: u32, cd2l: bool) -> Features {
    Features::decode(&IdRegisters {
        idr: [
            0x0d44_101b | u32::from(cd2l) << 19,
            0x0273_0010 | ssid_bits << 6,
            0,
            0x1414,
            0,
            0x74,
        ],
        iidr: 0,
        aidr: 1,
    })
}

fn cd(asid: u16, ttb0: u64) -> ContextDescriptor {
    ContextDescriptor::new(
        asid,
        PhysAddr::new(ttb0),
        39,
        Granule::Size4K,
        OutputAddressSize::Bits44,
        0xff,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn words(c: &ContextDescriptor) -> EntryWords {
    c.encode().unwrap_or_else(|e| panic!("{e}"))
}

const SID: u32 = 8;

#[test]
fn no_substreams_without_ssidsize() {
    let hal = HostHal::new();
    let f = features(0);
    assert_eq!(f.ssid_bits, 0);
    assert!(matches!(
        SubstreamTable::new(&hal, &f, Some(&cd(1, 0x1000))),
        Err(CdTableError::Geometry(_))
    ));
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn substream_cds_land_at_their_ssid_and_are_invalidated() {
    let hal = HostHal::new();
    let f = features(5);
    assert_eq!(f.ssid_bits, 5);
    let smmu = SimulatedSmmu::new(4);
    let mem = HeapQueueMemory::<2>::new(4);
    let q = CommandQueue::new(&smmu, &mem, 10_000).unwrap_or_else(|e| panic!("{e}"));
    let seen = RefCell::new(Vec::new());
    // CMD_CFGI_CD for the stream, then the simulated SMMU consumes the queue.
    let invalidate = |ssid: u32, leaf: bool| {
        let cmd = Command::CfgiCd {
            sid: SID,
            ssid,
            leaf,
        };
        q.submit(&[cmd.encode()?])?;
        while let SimStep::Consumed(raw) =
            smmu.step(&mem, |c| SimulatedSmmu::decode_or_illegal(c).map(|_| ()))
        {
            seen.borrow_mut().push(Command::decode(raw));
        }
        Ok(())
    };

    let d0 = cd(1, 0x10_0000);
    let mut t = SubstreamTable::new(&hal, &f, Some(&d0)).unwrap_or_else(|e| panic!("{e}"));
    // 32 CDs in one linear 2 KiB table; untagged requests use CD 0.
    let s1 = t.stage1();
    assert_eq!((s1.cd_max, s1.format), (5, CdTableFormat::Linear));
    assert_eq!(s1.default_substream, DefaultSubstream::Substream0);
    assert_eq!(t.entry(0), Ok(words(&d0)));
    assert_eq!(t.entry(31), Ok(INVALID_CD));
    assert!(
        seen.borrow().is_empty(),
        "nothing to invalidate before an STE uses it"
    );
    // The STE is legal on this SMMU and not on one without substreams.
    let ste = StreamTableEntry::stage1(s1);
    assert_eq!(ste.check_features(&f), Ok(()));
    assert!(ste.check_features(&features(0)).is_err());

    // PASID 3 gets its own CD, invalidated by SSID.
    let d3 = cd(7, 0x20_0000);
    assert!(t.set(3, Some(&d3), invalidate).is_ok());
    assert_eq!(t.entry(3), Ok(words(&d3)));
    assert_eq!(t.entry(0), Ok(words(&d0)), "CD 0 untouched");
    {
        let seen = seen.borrow();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|c| *c
                == Ok(Command::CfgiCd {
                    sid: SID,
                    ssid: 3,
                    leaf: true
                })),
            "{seen:?}"
        );
    }
    // SubstreamID 0 is the default's; 32 is beyond S1CDMax.
    assert!(matches!(
        t.set(0, Some(&d3), invalidate),
        Err(CdTableError::Geometry(_))
    ));
    assert!(matches!(
        t.set(32, Some(&d3), invalidate),
        Err(CdTableError::SsidOutOfRange { ssid: 32, .. })
    ));

    // Untagged requests bypass stage 1: S1DSS changes, then CD 0 is retired.
    seen.borrow_mut().clear();
    assert_eq!(t.set_default(None, invalidate), Ok(true));
    assert_eq!(t.stage1().default_substream, DefaultSubstream::Bypass);
    assert!(
        seen.borrow().is_empty(),
        "CD 0 still valid until the STE changed"
    );
    assert_eq!(t.retire_default_cd(invalidate), Ok(()));
    assert_eq!(t.entry(0), Ok(INVALID_CD));
    assert!(seen.borrow().iter().all(|c| matches!(
        c,
        Ok(Command::CfgiCd {
            sid: SID,
            ssid: 0,
            ..
        })
    )));
    // And back to a domain: CD 0 first, S1DSS after.
    let d9 = cd(9, 0x30_0000);
    assert_eq!(t.set_default(Some(&d9), invalidate), Ok(true));
    assert_eq!(t.entry(0), Ok(words(&d9)));
    assert_eq!(t.set_default(Some(&d0), invalidate), Ok(false));
    assert_eq!(t.entry(0), Ok(words(&d0)));

    // PASID 3 detached: its CD is invalid, so its requests are terminated (C_BAD_CD).
    assert!(t.set(3, None, invalidate).is_ok());
    assert_eq!(t.entry(3), Ok(INVALID_CD));
    // SAFETY: no SMMU saw the table.
    unsafe { t.free() };
    assert_eq!(hal.live_frames(), 0);
}

#[test]
fn wide_substream_ids_get_a_two_level_table() {
    let hal = HostHal::new();
    let f = features_cd2l(16, true);
    assert!(f.cd_two_level);
    let mut t = SubstreamTable::new(&hal, &f, None).unwrap_or_else(|e| panic!("{e}"));
    let s1 = t.stage1();
    assert_eq!(s1.cd_max, 16);
    assert_eq!(s1.format, CdTableFormat::TwoLevel64K);
    assert_eq!(s1.default_substream, DefaultSubstream::Bypass);
    let d = cd(2, 0x4000);
    assert!(t.set(0xfffe, Some(&d), |_, _| Ok(())).is_ok());
    assert_eq!(t.entry(0xfffe), Ok(words(&d)));
    // SAFETY: no SMMU saw the table.
    unsafe { t.free() };
    assert_eq!(hal.live_frames(), 0);
}
