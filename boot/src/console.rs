//! `print!` / `println!` over the machine's serial port (COM1 on x86_64, PL011 on aarch64).
//!
//! One lock serialises whole formatted writes so lines from different code paths (and CPUs) do
//! not interleave; panic reports take it only if it comes free (`_print_panic`). On the host
//! (unit tests) output goes nowhere.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

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

/// Reports written by [`_print_panic`] so far: the test runner checks whether one (from another
/// CPU) landed inside a test's line and starts the line again.
static REPORTS: AtomicUsize = AtomicUsize::new(0);

/// How many panic or exception reports were printed so far.
pub fn reports() -> usize {
    REPORTS.load(Ordering::Relaxed)
}

/// Tries that [`_print_panic`] gives the console lock before writing without it.
const PANIC_LOCK_TRIES: u32 = 1_000_000;

/// For panic and exception reports, on any CPU: takes the console lock if it comes free within
/// a bounded number of tries (another CPU finishing its line), else writes without it. It may
/// never come free: the reporting CPU itself may hold it (a panic inside a `print!`), or a
/// stopped CPU may. Interleaved bytes are better than a report that never appears.
#[doc(hidden)]
pub fn _print_panic(args: fmt::Arguments) {
    // Relaxed: a count only, read by the test runner on the boot CPU.
    REPORTS.fetch_add(1, Ordering::Relaxed);
    let mut guard = None;
    for _ in 0..PANIC_LOCK_TRIES {
        if let Some(g) = LOCK.try_lock() {
            guard = Some(g);
            break;
        }
        core::hint::spin_loop();
    }
    let _ = Serial.write_fmt(args);
    drop(guard);
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
