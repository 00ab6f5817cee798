//! Event records decoded from words worked out by hand from IHI 0070 7.3, and the consumer
//! against a simulated SMMU producer: wrap, overflow and its acknowledgement, drain limits.

extern crate std;

use std::string::ToString;

use super::*;
use crate::sim::{HeapQueueMemory, SimulatedSmmu};

/// F_TRANSLATION, StreamID 8, no substream, read of data, unprivileged, stage 1, CLASS = IN.
/// Word 0: type 0x10 | SID 8 << 32. Word 1: RnW 1 << 35 | CLASS 0b10 << 40. Word 2: address.
const TRANSLATION: RawEvent = [0x0000_0008_0000_0010, 0x0000_0208_0000_0000, 0x1234_5000, 0];

/// F_PERMISSION, StreamID 0x10, SSV with SubstreamID 3, stalled with STAG 0x55, write
/// (RnW = 0), instruction (InD 1 << 34), privileged (PnU 1 << 33), stage 2 (S2 1 << 39),
/// CLASS = TT (1 << 40); IPA 0x8000_1000 in word 3 [51:12] (low bits are not part of it).
const PERMISSION: RawEvent = [
    0x0000_0010_0000_3813,
    0x0000_0186_8000_0055,
    0xdead_0000,
    0x8000_1abc,
];

#[test]
fn decodes_a_translation_fault() {
    let r = Event::decode(TRANSLATION);
    assert_eq!(r.event, EventType::Translation);
    assert_eq!(r.stream_id, 8);
    assert_eq!(r.substream_id, None);
    assert_eq!(r.input_address, Some(0x1234_5000));
    assert_eq!(r.ipa, None, "stage 1 faults carry no IPA");
    assert_eq!(
        r.access,
        Some(AccessKind {
            write: false,
            instruction: false,
            privileged: false
        })
    );
    assert_eq!(r.stage, Some(FaultStage::Stage1));
    assert_eq!(r.class, Some(FaultClass::Input));
    assert_eq!(r.stall_tag, None);
    assert_eq!(r.raw, TRANSLATION);
    let text = r.to_string();
    assert!(
        text.starts_with("F_TRANSLATION (0x10: translation fault"),
        "{text}"
    );
    assert!(
        text.contains("stream 0x8 address 0x12345000 read data unprivileged stage 1 (input)"),
        "{text}"
    );
}

#[test]
fn a_record_for_a_guest_names_its_virtual_stream_and_keeps_the_rest() {
    let r = Event::decode(PERMISSION).raw_for_stream(0x20);
    // Word 0 with SID 0x20 in [63:32]; SSV, SSID and the type untouched.
    assert_eq!(
        r,
        [
            0x0000_0020_0000_3813,
            PERMISSION[1],
            PERMISSION[2],
            PERMISSION[3]
        ]
    );
    let back = Event::decode(r);
    assert_eq!(back.stream_id, 0x20);
    assert_eq!(back.substream_id, Some(3));
    assert_eq!(back.stall_tag, Some(0x55));
    assert_eq!(
        Event::decode(TRANSLATION).raw_for_stream(u32::MAX)[0],
        0xffff_ffff_0000_0010
    );
}

#[test]
fn decodes_a_stage2_permission_fault() {
    let r = Event::decode(PERMISSION);
    assert_eq!(r.event, EventType::Permission);
    assert_eq!(r.stream_id, 0x10);
    assert_eq!(r.substream_id, Some(3));
    assert_eq!(r.input_address, Some(0xdead_0000));
    assert_eq!(r.ipa, Some(0x8000_1000));
    assert_eq!(
        r.access,
        Some(AccessKind {
            write: true,
            instruction: true,
            privileged: true
        })
    );
    assert_eq!(r.stage, Some(FaultStage::Stage2));
    assert_eq!(r.class, Some(FaultClass::TranslationTable));
    assert_eq!(r.stall_tag, Some(0x55));
    assert!(r.to_string().contains("IPA 0x80001000 stalled (tag 0x55)"));
}

#[test]
fn decodes_configuration_and_fetch_events() {
    // C_BAD_STE 0x04, StreamID 0x20: nothing but the stream.
    let r = Event::decode([0x0000_0020_0000_0004, 0, 0, 0]);
    assert_eq!((r.event, r.stream_id), (EventType::BadSte, 0x20));
    assert_eq!((r.input_address, r.access, r.stage), (None, None, None));
    // F_STE_FETCH 0x03: fetch address in word 3 [51:3].
    let r = Event::decode([0x0000_0001_0000_0003, 0, 0, 0x4000_0047]);
    assert_eq!(r.fetch_address, Some(0x4000_0040));
    // F_CD_FETCH 0x09 with SSV and SubstreamID 0x1f.
    let r = Event::decode([0x0000_0001_0001_f809, 0, 0, 0x8_0000]);
    assert_eq!(
        (r.event, r.substream_id, r.fetch_address),
        (EventType::CdFetch, Some(0x1f), Some(0x8_0000))
    );
    // C_BAD_SUBSTREAMID 0x08: the SubstreamID is valid without SSV.
    let r = Event::decode([0x0000_0001_0000_5008, 0, 0, 0]);
    assert_eq!(r.substream_id, Some(5));
    // F_WALK_EABT 0x0b: the descriptor address in word 3.
    let r = Event::decode([0x0b, 0x0000_0100_0000_0000, 0x1000, 0x9_0008]);
    assert_eq!(
        (r.fetch_address, r.class, r.ipa),
        (Some(0x9_0008), Some(FaultClass::TranslationTable), None)
    );
    // F_TRANSL_FORBIDDEN 0x07: address and direction only.
    let r = Event::decode([0x07, 0x0000_0008_0000_0000, 0x7000, 0]);
    assert_eq!(
        r.access,
        Some(AccessKind {
            write: false,
            instruction: false,
            privileged: false
        })
    );
    // Unknown and implementation-defined types keep their code.
    assert_eq!(
        Event::decode([0x30, 0, 0, 0]).event,
        EventType::Unknown(0x30)
    );
    assert_eq!(
        Event::decode([0xe5, 0, 0, 0]).event,
        EventType::ImplementationDefined(0xe5)
    );
}

#[test]
fn every_event_type_round_trips_its_code() {
    for code in 0..=255u8 {
        let t = EventType::from_code(code);
        assert_eq!(t.code(), code);
        assert!(!t.name().is_empty() && !t.meaning().is_empty());
    }
    let named = [
        (0x01, "F_UUT"),
        (0x02, "C_BAD_STREAMID"),
        (0x03, "F_STE_FETCH"),
        (0x04, "C_BAD_STE"),
        (0x05, "F_BAD_ATS_TREQ"),
        (0x06, "F_STREAM_DISABLED"),
        (0x07, "F_TRANSL_FORBIDDEN"),
        (0x08, "C_BAD_SUBSTREAMID"),
        (0x09, "F_CD_FETCH"),
        (0x0a, "C_BAD_CD"),
        (0x0b, "F_WALK_EABT"),
        (0x10, "F_TRANSLATION"),
        (0x11, "F_ADDR_SIZE"),
        (0x12, "F_ACCESS"),
        (0x13, "F_PERMISSION"),
        (0x20, "F_TLB_CONFLICT"),
        (0x21, "F_CFG_CONFLICT"),
        (0x24, "E_PAGE_REQUEST"),
        (0x25, "F_VMS_FETCH"),
    ];
    for (code, name) in named {
        assert_eq!(EventType::from_code(code).name(), name);
    }
}

fn event(i: u64) -> RawEvent {
    [0x10 | i << 32, 0x0000_0208_0000_0000, i << 12, 0]
}

#[test]
fn consumes_in_order_across_wraps() {
    let smmu = SimulatedSmmu::with_event_queue(3, 3);
    let mem = HeapQueueMemory::<4>::new(3);
    let mut q = EventQueue::new(&smmu, &mem).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.pop(), None);
    let mut next = 0u64;
    for round in 0..10u64 {
        for k in 0..(round % 8 + 1) {
            assert!(smmu.record_event(&mem, event(next + k)));
        }
        let mut seen = 0;
        while let Some(raw) = q.pop() {
            assert_eq!(Event::decode(raw).stream_id as u64, next + seen);
            seen += 1;
        }
        assert_eq!(seen, round % 8 + 1);
        next += seen;
    }
    assert!(!q.take_overflow());
    // CONS follows PROD, wrap bit included.
    assert_eq!(EventqRegisters::read_cons(&smmu), smmu.read_prod());
}

#[test]
fn overflow_is_reported_once_and_acknowledged() {
    let smmu = SimulatedSmmu::with_event_queue(3, 2);
    let mem = HeapQueueMemory::<4>::new(2);
    let mut q = EventQueue::new(&smmu, &mem).unwrap_or_else(|e| panic!("{e}"));
    // An event storm: 4 fit, 6 are dropped with one OVFLG toggle.
    let written = (0..10)
        .filter(|&i| smmu.record_event(&mem, event(i)))
        .count();
    assert_eq!(written, 4);
    assert_eq!(smmu.read_prod() >> 31, 1);
    let mut seen = std::vec::Vec::new();
    let report = q.drain(100, |r| seen.push(r.stream_id));
    assert_eq!(
        report,
        DrainReport {
            events: 4,
            overflowed: true
        }
    );
    assert_eq!(seen, [0, 1, 2, 3]);
    // Acknowledged: CONS.OVACKFLG = PROD.OVFLG.
    assert_eq!(EventqRegisters::read_cons(&smmu) >> 31, 1);
    // Later events are reported, without a new overflow...
    assert!(smmu.record_event(&mem, event(20)));
    let report = q.drain(100, |r| assert_eq!(r.stream_id, 20));
    assert_eq!(
        report,
        DrainReport {
            events: 1,
            overflowed: false
        }
    );
    // ...until the next storm, which toggles OVFLG back.
    for i in 0..6 {
        smmu.record_event(&mem, event(30 + i));
    }
    assert_eq!(smmu.read_prod() >> 31, 0);
    assert_eq!(
        q.drain(100, |_| {}),
        DrainReport {
            events: 4,
            overflowed: true
        }
    );
    assert_eq!(EventqRegisters::read_cons(&smmu) >> 31, 0);
}

#[test]
fn drain_stops_at_its_limit() {
    let smmu = SimulatedSmmu::with_event_queue(3, 3);
    let mem = HeapQueueMemory::<4>::new(3);
    let mut q = EventQueue::new(&smmu, &mem).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..6 {
        assert!(smmu.record_event(&mem, event(i)));
    }
    assert_eq!(q.drain(4, |_| {}).events, 4);
    assert_eq!(q.drain(4, |_| {}).events, 2);
    assert_eq!(q.drain(4, |_| {}).events, 0);
}

#[test]
fn bad_sizes_are_refused() {
    let smmu = SimulatedSmmu::with_event_queue(3, 3);
    let mem = HeapQueueMemory::<4>::new(0);
    assert_eq!(
        EventQueue::new(&smmu, &mem).err(),
        Some(EventqError::BadQueueSize(0))
    );
}
