//! Console output on the `virt` board's PL011 UART (Arm DDI 0183, PrimeCell UART PL011 TRM).
//!
//! QEMU's `-serial stdio` carries it; baud rate and line settings mean nothing to QEMU, so only
//! the enables are programmed.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite};
use tock_registers::{register_bitfields, register_structs};

/// Physical (and, identity-mapped, virtual) address of the UART on `virt`.
const PL011_BASE: usize = 0x0900_0000;

/// How often to poll for room in the transmit FIFO before giving up: QEMU keeps it full only
/// while the host side of `-serial` is not reading, and seconds of that are worth waiting
/// out; a wedged UART must still not hang the kernel (the exit status reports the result).
const TX_FULL_POLL_LIMIT: u32 = 10_000_000;

register_bitfields! {u32,
    /// 3.3.3 UARTFR, flag register.
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
    ],
    /// 3.3.8 UARTCR, control register.
    CR [
        UARTEN OFFSET(0) NUMBITS(1) [],
        TXE OFFSET(8) NUMBITS(1) [],
        RXE OFFSET(9) NUMBITS(1) [],
    ],
}

register_structs! {
    Pl011Registers {
        /// 3.3.1 UARTDR, data register.
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01c => _reserved1),
        (0x030 => cr: ReadWrite<u32, CR::Register>),
        (0x034 => @END),
    }
}

fn registers() -> &'static Pl011Registers {
    // SAFETY: the PL011 register block is at PL011_BASE on `virt`, mapped as Device memory (or
    // reached with the MMU off); tock-registers only makes volatile accesses through it.
    unsafe { &*(PL011_BASE as *const Pl011Registers) }
}

/// Enables the UART and its transmitter. QEMU resets it with TXE and RXE set but UARTEN
/// clear, and logs every byte written then as a guest error (`-d guest_errors`).
pub(super) fn init() {
    registers()
        .cr
        .write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
}

/// Writes `bytes` to the UART, waiting (bounded) whenever the transmit FIFO is full. After one
/// wait times out the rest is written without waiting, and whatever does not fit is lost.
pub fn write_bytes(bytes: &[u8]) {
    let uart = registers();
    let mut wedged = false;
    for &byte in bytes {
        let mut polls = 0;
        while !wedged && uart.fr.is_set(FR::TXFF) {
            polls += 1;
            wedged = polls == TX_FULL_POLL_LIMIT;
            core::hint::spin_loop();
        }
        uart.dr.set(u32::from(byte));
    }
}
