//! GICv3 ITS commands (Arm IHI 0069H, "ITS commands"): the typed values the driver in
//! `aarch64::its` queues, and their one encoding into the 32-byte command-queue entry.
//!
//! Pure and host-compiled (the driver itself only exists on the bare-metal target), so every
//! encoding is tested against words derived by hand from the spec's command layouts.

/// Bytes of one command-queue entry: four doublewords.
pub const COMMAND_BYTES: usize = 32;

/// The ITS command opcodes (DW0 bits [7:0]) used here.
mod opcode {
    pub const SYNC: u64 = 0x05;
    pub const MAPD: u64 = 0x08;
    pub const MAPC: u64 = 0x09;
    pub const MAPTI: u64 = 0x0a;
    pub const MAPI: u64 = 0x0b;
    pub const INV: u64 = 0x0c;
    pub const INVALL: u64 = 0x0d;
    pub const DISCARD: u64 = 0x0f;
}

/// The `V` (valid) bit of MAPD and MAPC, DW2 bit 63.
const VALID: u64 = 1 << 63;
/// MAPD's ITT_addr: DW2 bits [51:8] hold address bits [51:8] (the ITT is 256-byte aligned).
const ITT_ADDR_MASK: u64 = ((1 << 52) - 1) & !0xff;
/// MAPC's and SYNC's RDbase: DW2 bits [51:16].
const RDBASE_SHIFT: u32 = 16;
const RDBASE_MASK: u64 = ((1 << 52) - 1) & !0xffff;

/// Where an ITS sends the interrupts of a collection (GITS_TYPER.PTA says which form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRedistributor {
    /// PTA = 0: the redistributor's GICR_TYPER.Processor_Number.
    ProcessorNumber(u16),
    /// PTA = 1: the physical address of the redistributor's RD_base frame (64 KiB aligned).
    PhysicalAddress(u64),
}

impl TargetRedistributor {
    /// The RDbase field's contents, in place (bits [51:16] of DW2).
    const fn field(self) -> u64 {
        match self {
            Self::ProcessorNumber(n) => (n as u64) << RDBASE_SHIFT,
            Self::PhysicalAddress(a) => a & RDBASE_MASK,
        }
    }
}

/// One ITS command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// MAPD: maps `device_id` to the interrupt translation table at `itt` (256-byte aligned)
    /// with 2^`event_id_bits` entries; `itt: None` unmaps the device (V = 0).
    Mapd {
        device_id: u32,
        event_id_bits: u8,
        itt: Option<u64>,
    },
    /// MAPC: maps collection `icid` to a redistributor; `target: None` unmaps it (V = 0).
    Mapc {
        icid: u16,
        target: Option<TargetRedistributor>,
    },
    /// MAPTI: event `event_id` of `device_id` becomes physical LPI `lpi` of collection `icid`.
    Mapti {
        device_id: u32,
        event_id: u32,
        lpi: u32,
        icid: u16,
    },
    /// MAPI: as MAPTI with the LPI equal to the event id.
    Mapi {
        device_id: u32,
        event_id: u32,
        icid: u16,
    },
    /// INV: makes the ITS and redistributor re-read the LPI configuration of this event.
    Inv { device_id: u32, event_id: u32 },
    /// INVALL: as INV for every LPI of collection `icid`.
    Invall { icid: u16 },
    /// DISCARD: removes the event's mapping and clears its LPI's pending state.
    Discard { device_id: u32, event_id: u32 },
    /// SYNC: every earlier command's effects on `target` are visible once this one is consumed.
    Sync { target: TargetRedistributor },
}

/// DW0 of the commands that name a device: the opcode and DeviceID [63:32].
const fn device(opcode: u64, device_id: u32) -> u64 {
    opcode | (device_id as u64) << 32
}

impl Command {
    /// The four doublewords of the command-queue entry (little-endian in memory).
    pub const fn encode(self) -> [u64; 4] {
        match self {
            Self::Mapd {
                device_id,
                event_id_bits,
                itt,
            } => {
                // DW1 [4:0] Size: the number of EventID bits minus one.
                let size = (event_id_bits.saturating_sub(1) & 0x1f) as u64;
                let dw2 = match itt {
                    Some(addr) => VALID | (addr & ITT_ADDR_MASK),
                    None => 0,
                };
                [device(opcode::MAPD, device_id), size, dw2, 0]
            }
            Self::Mapc { icid, target } => {
                let dw2 = match target {
                    Some(t) => VALID | t.field() | icid as u64,
                    None => icid as u64,
                };
                [opcode::MAPC, 0, dw2, 0]
            }
            Self::Mapti {
                device_id,
                event_id,
                lpi,
                icid,
            } => [
                device(opcode::MAPTI, device_id),
                (lpi as u64) << 32 | event_id as u64,
                icid as u64,
                0,
            ],
            Self::Mapi {
                device_id,
                event_id,
                icid,
            } => [
                device(opcode::MAPI, device_id),
                event_id as u64,
                icid as u64,
                0,
            ],
            Self::Inv {
                device_id,
                event_id,
            } => [device(opcode::INV, device_id), event_id as u64, 0, 0],
            Self::Invall { icid } => [opcode::INVALL, 0, icid as u64, 0],
            Self::Discard {
                device_id,
                event_id,
            } => [device(opcode::DISCARD, device_id), event_id as u64, 0, 0],
            Self::Sync { target } => [opcode::SYNC, 0, target.field(), 0],
        }
    }
}

/// How many EventID bits a device needs for `events` events (at least one bit: MAPD's Size
/// field cannot say zero).
pub const fn event_id_bits(events: u32) -> u8 {
    if events <= 2 {
        1
    } else {
        (32 - (events - 1).leading_zeros()) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each expected word below is assembled by hand from the command layouts of IHI 0069H's
    // "ITS commands": opcode in DW0 [7:0], DeviceID in DW0 [63:32], EventID in DW1 [31:0], pINTID in
    // DW1 [63:32], Size in DW1 [4:0], ICID in DW2 [15:0], RDbase in DW2 [51:16], ITT_addr in
    // DW2 [51:8], V in DW2 [63].

    #[test]
    fn mapd_maps_and_unmaps() {
        let map = Command::Mapd {
            device_id: 0x0008,
            event_id_bits: 5,
            itt: Some(0x4123_4500),
        };
        assert_eq!(
            map.encode(),
            [0x0000_0008_0000_0008, 0x4, 0x8000_0000_4123_4500, 0]
        );
        let unmap = Command::Mapd {
            device_id: 0xffff,
            event_id_bits: 1,
            itt: None,
        };
        assert_eq!(unmap.encode(), [0x0000_ffff_0000_0008, 0, 0, 0]);
        // Bits below 256 bytes and above bit 51 of the address are not the ITT's.
        let sloppy = Command::Mapd {
            device_id: 1,
            event_id_bits: 16,
            itt: Some(0xfff0_0000_4000_01ff),
        };
        assert_eq!(
            sloppy.encode(),
            [0x0000_0001_0000_0008, 0xf, 0x8000_0000_4000_0100, 0]
        );
    }

    #[test]
    fn mapc_names_the_redistributor_by_number_or_address() {
        let by_number = Command::Mapc {
            icid: 3,
            target: Some(TargetRedistributor::ProcessorNumber(2)),
        };
        assert_eq!(by_number.encode(), [0x9, 0, 0x8000_0000_0002_0003, 0]);
        let by_address = Command::Mapc {
            icid: 0,
            target: Some(TargetRedistributor::PhysicalAddress(0x080a_0000)),
        };
        assert_eq!(by_address.encode(), [0x9, 0, 0x8000_0000_080a_0000, 0]);
        let unmap = Command::Mapc {
            icid: 0x1234,
            target: None,
        };
        assert_eq!(unmap.encode(), [0x9, 0, 0x1234, 0]);
    }

    #[test]
    fn mapti_and_mapi() {
        let mapti = Command::Mapti {
            device_id: 0x10,
            event_id: 7,
            lpi: 8192,
            icid: 1,
        };
        assert_eq!(
            mapti.encode(),
            [0x0000_0010_0000_000a, 0x0000_2000_0000_0007, 1, 0]
        );
        let mapi = Command::Mapi {
            device_id: 0x10,
            event_id: 8200,
            icid: 0,
        };
        assert_eq!(mapi.encode(), [0x0000_0010_0000_000b, 8200, 0, 0]);
    }

    #[test]
    fn inv_invall_discard_sync() {
        assert_eq!(
            Command::Inv {
                device_id: 8,
                event_id: 0
            }
            .encode(),
            [0x0000_0008_0000_000c, 0, 0, 0]
        );
        assert_eq!(Command::Invall { icid: 5 }.encode(), [0xd, 0, 5, 0]);
        assert_eq!(
            Command::Discard {
                device_id: 0x200,
                event_id: 0xabcd
            }
            .encode(),
            [0x0000_0200_0000_000f, 0xabcd, 0, 0]
        );
        assert_eq!(
            Command::Sync {
                target: TargetRedistributor::ProcessorNumber(0)
            }
            .encode(),
            [0x5, 0, 0, 0]
        );
        assert_eq!(
            Command::Sync {
                target: TargetRedistributor::PhysicalAddress(0x080c_0000)
            }
            .encode(),
            [0x5, 0, 0x080c_0000, 0]
        );
    }

    #[test]
    fn event_id_bits_covers_the_events() {
        assert_eq!(event_id_bits(0), 1);
        assert_eq!(event_id_bits(1), 1);
        assert_eq!(event_id_bits(2), 1);
        assert_eq!(event_id_bits(3), 2);
        assert_eq!(event_id_bits(32), 5);
        assert_eq!(event_id_bits(33), 6);
        assert_eq!(event_id_bits(u32::MAX), 32);
    }
}
