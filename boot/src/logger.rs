//! A `log` logger over the serial console for the test kernels: silent unless the kernel command
//! line asks for it with `log=error|warn|info|debug|trace`.
//!
//! The driver crates log through the `log` facade (bring-up decisions and refusals at `debug`,
//! faults and hardware errors at `warn`); a kernel calls [`init`] once, early, and what the driver
//! says then appears on serial as `[LEVEL target] message`. Nothing allocates: records are
//! formatted straight to the port.

use core::sync::atomic::{AtomicUsize, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

use crate::cmdline::Cmdline;

struct SerialLogger;

/// Records written so far (a test can check that what it enabled reached the console).
static WRITTEN: AtomicUsize = AtomicUsize::new(0);

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Relaxed: a statistic; nothing is ordered by it.
        WRITTEN.fetch_add(1, Ordering::Relaxed);
        crate::println!(
            "[{:<5} {}] {}",
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// The level `log=...` asks for: `off` when absent; an unknown word is an error naming it.
pub fn level<'a>(cmdline: &Cmdline<'a>) -> Result<LevelFilter, &'a str> {
    match cmdline.get("log") {
        None => Ok(LevelFilter::Off),
        Some(word) => word.parse().map_err(|_| word),
    }
}

/// Installs the serial logger at the level the command line asks for. A second call, or an
/// unknown level word, leaves logging off and says why on the console.
pub fn init(cmdline: &Cmdline<'_>) {
    let filter = match level(cmdline) {
        Ok(f) => f,
        Err(word) => {
            crate::println!("log: unknown level '{word}' (error, warn, info, debug, trace, off)");
            LevelFilter::Off
        }
    };
    if log::set_logger(&LOGGER).is_err() {
        crate::println!("log: a logger was already installed");
        return;
    }
    log::set_max_level(filter);
}

/// How many records the logger has written since boot.
pub fn records_written() -> usize {
    WRITTEN.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_follows_the_command_line_and_defaults_to_off() {
        assert_eq!(level(&Cmdline::new("vtd.aw=48")), Ok(LevelFilter::Off));
        assert_eq!(level(&Cmdline::new("log=debug")), Ok(LevelFilter::Debug));
        assert_eq!(level(&Cmdline::new("a=1 log=warn")), Ok(LevelFilter::Warn));
        assert_eq!(level(&Cmdline::new("log=trace")), Ok(LevelFilter::Trace));
        assert_eq!(level(&Cmdline::new("log=loud")), Err("loud"));
        assert_eq!(level(&Cmdline::new("log")), Err(""));
    }
}
