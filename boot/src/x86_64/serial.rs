//! COM1, the 16550 UART QEMU connects to `-serial stdio`: the console of the x86_64 kernels.

use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;

// 16550 register offsets from the base port.
const THR: u16 = 0; // transmit holding register (DLL while LCR.DLAB is set)
const IER: u16 = 1; // interrupt enable (DLM while LCR.DLAB is set)
const FCR: u16 = 2; // FIFO control
const LCR: u16 = 3; // line control
const MCR: u16 = 4; // modem control
const LSR: u16 = 5; // line status

const LCR_DLAB: u8 = 1 << 7;
const LCR_8N1: u8 = 0b11;
const FCR_ENABLE_AND_CLEAR: u8 = 0b111;
const MCR_DTR_RTS: u8 = 0b11;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// 115200 baud from the UART's 1.8432 MHz / 16 clock.
const DIVISOR_115200: u8 = 1;

/// How many status reads to wait for room in the transmitter before writing anyway. QEMU's
/// UART is ready at once unless the host side is blocked; a bound keeps a stuck console from
/// hanging the kernel (the runner's timeout would otherwise be the only way out).
const THR_EMPTY_POLLS: u32 = 100_000;

fn port(offset: u16) -> Port<u8> {
    Port::new(COM1 + offset)
}

/// Programs COM1 for 115200 8N1 with FIFOs, interrupts off. Called once by the boot code;
/// [`write_bytes`] works before it too, as QEMU's UART starts usable.
pub(super) fn init() {
    // SAFETY: ports 0x3f8..0x3ff belong to COM1, which only this module drives; programming it
    // touches no memory.
    unsafe {
        port(IER).write(0);
        port(LCR).write(LCR_DLAB);
        port(THR).write(DIVISOR_115200);
        port(IER).write(0);
        port(LCR).write(LCR_8N1);
        port(FCR).write(FCR_ENABLE_AND_CLEAR);
        port(MCR).write(MCR_DTR_RTS);
    }
}

/// Writes `bytes` to COM1 as they are. "\n" is not turned into "\r\n": QEMU's stdio backend
/// keeps the terminal's output processing on, and the runner reads clean lines.
pub fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        write_byte(byte);
    }
}

fn write_byte(byte: u8) {
    let mut lsr = port(LSR);
    let mut thr = port(THR);
    for _ in 0..THR_EMPTY_POLLS {
        // SAFETY: reading COM1's line status register has no side effect on memory.
        if unsafe { lsr.read() } & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: COM1's transmit register; LCR.DLAB is clear after `init` (and at reset).
    unsafe { thr.write(byte) };
}
