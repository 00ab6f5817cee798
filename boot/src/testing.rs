//! A small test runner for the in-QEMU test kernels.
//!
//! Each test is a named function; the runner prints one line per test
//! (`test NAME ... ok`, `... FAILED: why`, `... skipped (why)`) and closes with
//! `N passed, N failed, N skipped`. `cargo xtask test` reads these lines from the serial log.

use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};

/// Whether the runner protocol is in use: set by [`run`]. A kernel that tells a story instead
/// (the demo) prints no runner markers.
static UNDER_RUNNER: AtomicBool = AtomicBool::new(false);

/// Why a test did not pass.
#[derive(Debug)]
pub enum Failure {
    Failed(String),
    Skipped(String),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Failed(why) => f.write_str(why),
            Self::Skipped(why) => write!(f, "skipped ({why})"),
        }
    }
}

pub type TestResult = Result<(), Failure>;

/// One named test over a kernel-defined context `C` (the machine, its IOMMU, its devices).
pub struct Test<C> {
    pub name: &'static str,
    pub run: fn(&mut C) -> TestResult,
}

// By hand: a derive would ask `C: Copy`, which a test list never needs.
impl<C> Clone for Test<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Test<C> {}

/// Counts of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Runs the tests whose names `filter` accepts, printing a line for each and the closing summary.
pub fn run<C>(ctx: &mut C, tests: &[Test<C>], filter: impl Fn(&str) -> bool) -> Summary {
    // Relaxed: read by the same CPU that runs the tests.
    UNDER_RUNNER.store(true, Ordering::Relaxed);
    let mut s = Summary::default();
    for t in tests.iter().filter(|t| filter(t.name)) {
        crate::print!("test {} ... ", t.name);
        let reports = crate::console::reports();
        let outcome = (t.run)(ctx);
        // Another CPU's panic report broke the line: start it again, so the outcome is on a
        // `test NAME ... ` line as the runner's reader expects.
        if crate::console::reports() != reports {
            crate::print!("test {} ... ", t.name);
        }
        match outcome {
            Ok(()) => {
                s.passed += 1;
                crate::println!("ok");
            }
            Err(Failure::Failed(why)) => {
                s.failed += 1;
                crate::println!("FAILED: {why}");
            }
            Err(Failure::Skipped(why)) => {
                s.skipped += 1;
                crate::println!("skipped ({why})");
            }
        }
    }
    crate::println!(
        "{} passed, {} failed, {} skipped",
        s.passed,
        s.failed,
        s.skipped
    );
    s
}

/// Tells the runner that QEMU may log a guest error containing `pattern` from now on, because a
/// test provokes it on purpose. Any other line in QEMU's `-d guest_errors` log fails the run.
/// Outside [`run`] (the demo) there is no runner to tell, and nothing is printed.
pub fn allow_guest_error(pattern: &str) {
    if UNDER_RUNNER.load(Ordering::Relaxed) {
        crate::println!("@allow-guest-error {pattern}");
    }
}

/// Fails the test with a message (and the source location) unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::testing::Failure::Failed(alloc::format!(
                "{} ({}:{})", format_args!($($arg)+), file!(), line!()
            )));
        }
    };
}

/// Fails the test unless the two values are equal, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        $crate::ensure_eq!($left, $right, "{} == {}", stringify!($left), stringify!($right))
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::testing::Failure::Failed(alloc::format!(
                        "{}: left {:?}, right {:?} ({}:{})",
                        format_args!($($arg)+), l, r, file!(), line!()
                    )));
                }
            }
        }
    };
}

/// Ends the test as skipped, with the reason.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)+) => {
        return Err($crate::testing::Failure::Skipped(alloc::format!($($arg)+)))
    };
}

/// Turns any displayable error into a test failure: `thing().map_err(fail)?`.
pub fn fail(e: impl core::fmt::Display) -> Failure {
    Failure::Failed(alloc::format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passes(_: &mut u32) -> TestResult {
        Ok(())
    }
    fn fails(x: &mut u32) -> TestResult {
        ensure_eq!(*x, 1);
        Ok(())
    }
    fn skips(_: &mut u32) -> TestResult {
        skip!("not on this machine")
    }

    #[test]
    fn counts_outcomes_and_filters() {
        let tests = [
            Test {
                name: "a",
                run: passes,
            },
            Test {
                name: "b",
                run: fails,
            },
            Test {
                name: "c",
                run: skips,
            },
        ];
        let s = run(&mut 0, &tests, |_| true);
        assert_eq!(
            s,
            Summary {
                passed: 1,
                failed: 1,
                skipped: 1
            }
        );
        let s = run(&mut 1, &tests, |n| n != "c");
        assert_eq!(
            s,
            Summary {
                passed: 2,
                failed: 0,
                skipped: 0
            }
        );
    }
}
