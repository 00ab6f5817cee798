//! `print!` / `println!` over the machine's serial port (COM1 on x86_64, PL011 on aarch64).
//!
//! One lock serialises whole formatted writes so lines from different code paths do not
//! interleave. On the host (unit tests) output goes nowhere.

use core::fmt::{self, Write};

static LOCK: spin::Mutex<()> = spin::Mutex::new(());

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

fn write_bytes(bytes: &[u8]) {
    #[cfg(all(target_os = "none", target_arch = "x86_64"))]
    crate::x86_64::serial::write_bytes(bytes);
    #[cfg(all(target_os = "none", target_arch = "aarch64"))]
    crate::aarch64::serial::write_bytes(bytes);
    #[cfg(not(target_os = "none"))]
    let _ = bytes;
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let _guard = LOCK.lock();
    // Serial writes cannot fail.
    let _ = Serial.write_fmt(args);
}

/// Writes without taking the console lock: for the panic handler, which may run while the lock
/// is held by the code that panicked.
#[doc(hidden)]
pub fn _print_unlocked(args: fmt::Arguments) {
    let _ = Serial.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::console::_print(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::console::_print(format_args!("{}\n", format_args!($($arg)*))));
}
