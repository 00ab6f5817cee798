//! Judging one boot of a test kernel from what it printed, how QEMU exited and what QEMU logged.
//!
//! A boot passes only if all of these hold: QEMU exited with the kernel's success code (not killed
//! at the timeout, not the failure code a panic or exception handler uses); the kernel printed its
//! closing `N passed, N failed, N skipped` line with no failures and at least one test run; no
//! test line says FAILED; and every line of QEMU's `-d guest_errors` log is one the kernel
//! announced beforehand with `@allow-guest-error <pattern>` (a fault a test provokes on purpose).
//! A boot that enables QEMU trace events (`-trace EVENT`) gets their lines in the same log: those
//! are not guest errors, and each `@expect-trace <pattern>` the kernel printed must match one of
//! them (what the kernel did, seen from the emulator's side).

use crate::Arch;

/// Counts read from the kernel's output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed(Counts),
    Failed {
        counts: Counts,
        reasons: Vec<String>,
    },
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Passed(_))
    }

    pub fn counts(&self) -> Counts {
        match self {
            Verdict::Passed(c) | Verdict::Failed { counts: c, .. } => *c,
        }
    }
}

/// QEMU's exit code when the kernel reports success / failure.
pub fn exit_codes(arch: Arch) -> (i32, i32) {
    match arch {
        // isa-debug-exit: status = (value << 1) | 1, with values 0x10 / 0x11.
        Arch::X86_64 => (33, 35),
        // Semihosting SYS_EXIT passes the code through.
        Arch::Aarch64 => (0, 1),
    }
}

/// The `N passed, N failed, N skipped` closing line, if there is one.
fn summary_line(serial: &str) -> Option<Counts> {
    serial.lines().rev().find_map(|line| {
        let words: Vec<&str> = line
            .trim()
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .collect();
        match words.as_slice() {
            [p, "passed", f, "failed", s, "skipped"] => Some(Counts {
                passed: p.parse().ok()?,
                failed: f.parse().ok()?,
                skipped: s.parse().ok()?,
            }),
            _ => None,
        }
    })
}

pub fn judge(arch: Arch, exit_code: Option<i32>, serial: &str, guest_errors: &str) -> Verdict {
    judge_traced(arch, exit_code, serial, guest_errors, &[])
}

/// [`judge`] for a boot with the QEMU trace events `traced` on: their lines in `qemu_log` are
/// trace, not guest errors, and must satisfy the kernel's `@expect-trace` lines.
pub fn judge_traced(
    arch: Arch,
    exit_code: Option<i32>,
    serial: &str,
    qemu_log: &str,
    traced: &[String],
) -> Verdict {
    let is_trace = |l: &str| {
        l.split_whitespace()
            .next()
            .is_some_and(|event| traced.iter().any(|t| t == event))
    };
    let (trace, guest_errors): (Vec<&str>, Vec<&str>) = qemu_log.lines().partition(|l| is_trace(l));
    let guest_errors = guest_errors.join("\n");
    let mut reasons = Vec::new();
    for want in serial
        .lines()
        .filter_map(|l| l.split_once("@expect-trace ").map(|(_, p)| p.trim()))
    {
        if !trace.iter().any(|t| t.contains(want)) {
            reasons.push(format!("QEMU trace has no line with '{want}'"));
        }
    }
    let (ok_code, fail_code) = exit_codes(arch);
    match exit_code {
        None => reasons.push("timed out (hang)".to_string()),
        Some(c) if c == ok_code => {}
        Some(c) if c == fail_code => reasons.push("kernel exited with failure".to_string()),
        Some(c) => reasons.push(format!("QEMU exited with unexpected status {c}")),
    }
    if let Some(p) = serial
        .lines()
        .find(|l| l.contains("PANIC:") || l.contains("EXCEPTION"))
    {
        reasons.push(format!("kernel: {}", p.trim()));
    }
    let failed_tests: Vec<&str> = serial
        .lines()
        .filter(|l| l.starts_with("test ") && l.contains("... FAILED"))
        .collect();
    for t in &failed_tests {
        reasons.push(t.trim().to_string());
    }
    let counts = match summary_line(serial) {
        Some(c) => {
            if c.passed + c.failed == 0 {
                reasons.push("no test ran".to_string());
            }
            c
        }
        None => {
            reasons.push("no summary line from the kernel".to_string());
            Counts {
                failed: failed_tests.len().max(1),
                ..Counts::default()
            }
        }
    };
    // An announcement may follow a test's "test NAME ... " prefix on the same line.
    let allowed: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.split_once("@allow-guest-error ").map(|(_, p)| p.trim()))
        .collect();
    for line in guest_errors.lines().filter(|l| !l.trim().is_empty()) {
        if !allowed.iter().any(|pat| line.contains(pat)) {
            reasons.push(format!("QEMU guest error: {}", line.trim()));
        }
    }
    if reasons.is_empty() && counts.failed == 0 {
        Verdict::Passed(counts)
    } else {
        let counts = Counts {
            failed: counts.failed.max(1),
            ..counts
        };
        Verdict::Failed { counts, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "iommu test kernel\ntest a ... ok\ntest b ... skipped (no)\n1 passed, 0 failed, 1 skipped\n";

    #[test]
    fn clean_boot_passes() {
        let v = judge(Arch::X86_64, Some(33), GOOD, "");
        assert_eq!(
            v,
            Verdict::Passed(Counts {
                passed: 1,
                failed: 0,
                skipped: 1
            })
        );
        assert!(judge(Arch::Aarch64, Some(0), GOOD, "").is_pass());
    }

    #[test]
    fn timeout_panic_failure_and_wrong_status_fail() {
        assert!(!judge(Arch::X86_64, None, GOOD, "").is_pass());
        assert!(!judge(Arch::X86_64, Some(35), GOOD, "").is_pass());
        assert!(!judge(Arch::X86_64, Some(1), GOOD, "").is_pass());
        assert!(!judge(Arch::Aarch64, Some(33), GOOD, "").is_pass());
        let panicked = "test a ... \nPANIC: panicked at x.rs:1:1\n";
        assert!(!judge(Arch::X86_64, Some(33), panicked, "").is_pass());
        let failed = "test a ... FAILED: 1 != 2\n0 passed, 1 failed, 0 skipped\n";
        let v = judge(Arch::X86_64, Some(33), failed, "");
        assert_eq!(v.counts().failed, 1);
        assert!(!v.is_pass());
    }

    #[test]
    fn missing_summary_or_no_tests_fail() {
        assert!(!judge(Arch::X86_64, Some(33), "test a ... ok\n", "").is_pass());
        assert!(!judge(
            Arch::X86_64,
            Some(33),
            "0 passed, 0 failed, 3 skipped\n",
            ""
        )
        .is_pass());
    }

    #[test]
    fn guest_errors_fail_unless_announced() {
        let log = "edu: clamping DMA 0x10000000 to 0x0\n";
        assert!(!judge(Arch::X86_64, Some(33), GOOD, log).is_pass());
        let announced = format!("test x ... @allow-guest-error clamping DMA\n{GOOD}");
        assert!(judge(Arch::X86_64, Some(33), &announced, log).is_pass());
        let other = "vtd: something else\n";
        assert!(!judge(Arch::X86_64, Some(33), &announced, other).is_pass());
    }

    #[test]
    fn trace_lines_are_not_guest_errors_and_must_meet_the_kernels_expectations() {
        let traced = ["vtd_inv_desc".to_string()];
        let log = "vtd_inv_desc invalidate desc type device high 0xab00000 low 0x10000000003\n";
        let expecting = format!("@expect-trace type device high 0xab00000\n{GOOD}");
        assert!(judge_traced(Arch::X86_64, Some(33), &expecting, log, &traced).is_pass());
        // Untraced, the same line is a guest error.
        assert!(!judge(Arch::X86_64, Some(33), GOOD, log).is_pass());
        // An expectation no trace line meets fails the boot.
        let missing = format!("@expect-trace type device high 0x1000\n{GOOD}");
        let v = judge_traced(Arch::X86_64, Some(33), &missing, log, &traced);
        assert!(!v.is_pass(), "{v:?}");
        // A guest error beside the trace still fails it.
        let both = format!("{log}vtd_err_dmar_translate: bad\n");
        assert!(!judge_traced(Arch::X86_64, Some(33), &expecting, &both, &traced).is_pass());
    }
}
