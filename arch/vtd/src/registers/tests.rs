//! Host tests of the register block: offsets and field positions against the spec's tables.

use super::*;
use core::mem::{offset_of, size_of};

#[test]
fn offsets_match_the_spec_table() {
    // register_structs! checks the layout at compile time; these pin the offsets other
    // code and the spec refer to, so a slip in the declaration shows here by name.
    assert_eq!(offset_of!(RegisterBlock, cap), 0x08);
    assert_eq!(offset_of!(RegisterBlock, ecap), 0x10);
    assert_eq!(offset_of!(RegisterBlock, gsts), 0x1c);
    assert_eq!(offset_of!(RegisterBlock, fsts), 0x34);
    assert_eq!(offset_of!(RegisterBlock, iqa), 0x90);
    assert_eq!(offset_of!(RegisterBlock, ics), 0x9c);
    assert_eq!(offset_of!(RegisterBlock, iqercd), 0xb0);
    assert_eq!(offset_of!(RegisterBlock, irta), 0xb8);
    assert_eq!(offset_of!(RegisterBlock, prs), 0xdc);
    assert_eq!(size_of::<RegisterBlock>(), 0xf0);
    assert_eq!(size_of::<IotlbRegisters>(), 16);
    assert_eq!(size_of::<FaultRecordingRegister>(), 16);
}

#[test]
fn field_positions_match_the_spec() {
    assert_eq!(GCMD::TE.mask << GCMD::TE.shift, 1 << 31);
    assert_eq!(GCMD::QIE.shift, 26);
    assert_eq!(GSTS::RTPS.shift, 30);
    assert_eq!(FSTS::FRI.shift, 8);
    assert_eq!(RTADDR::TTM::Scalable.value, 1 << 10);
    assert_eq!(IOTLB::IIRG::Page.value, 3 << 60);
    assert_eq!(CCMD::CIRG::Global.value, 1 << 61);
    assert_eq!(FRCD_HI::FR.shift, 32);
    assert_eq!(FRCD_HI::F.shift, 63);
    assert_eq!(IQA::DW::Bits256.value, 1 << 11);
}
