//! The one bounded wait every hardware handshake goes through.
//!
//! Hardware that does not answer must give a typed error, never a hang. The core has no clock, so
//! the bound is a number of polls; each poll is a volatile register read, which on real hardware
//! and on QEMU takes far longer than the `spin_loop` hint between polls.

/// How many polls a handshake gets before it is declared dead. At roughly 100 ns or more per MMIO
/// read this is a few hundred milliseconds, far beyond what any documented handshake needs.
pub const DEFAULT_POLL_BUDGET: u32 = 4_000_000;

/// The hardware did not reach the expected state within the poll budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// What we were waiting for, for the error report.
    pub waiting_for: &'static str,
}

impl core::fmt::Display for Timeout {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "hardware did not answer: timed out waiting for {}",
            self.waiting_for
        )
    }
}

impl core::error::Error for Timeout {}

/// Polls `done` until it returns true, at most `budget` times.
pub fn poll_until(
    waiting_for: &'static str,
    budget: u32,
    mut done: impl FnMut() -> bool,
) -> Result<(), Timeout> {
    for _ in 0..budget {
        if done() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err(Timeout { waiting_for })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn succeeds_when_condition_becomes_true() {
        let mut n = 0;
        assert_eq!(
            poll_until("n to reach 3", 10, || {
                n += 1;
                n == 3
            }),
            Ok(())
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn gives_up_after_budget() {
        let mut n = 0;
        let r = poll_until("never", 5, || {
            n += 1;
            false
        });
        assert_eq!(
            r,
            Err(Timeout {
                waiting_for: "never"
            })
        );
        assert_eq!(n, 5);
    }
}
