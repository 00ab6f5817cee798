//! The kernel's serial output grouped by test, for `cargo xtask test --verbose`.
//!
//! The kernel's runner prints `test NAME ... `, then whatever the test prints, then the result
//! (`ok`, `FAILED: why`, `skipped (why)`) on the same line or a later one. Each test is shown as
//! its one-line result with what it printed below it, so a long boot stays readable.

/// One piece of a boot's serial output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A line outside any test (the banner, the summary).
    Line(String),
    /// `test NAME ... RESULT` with what the test printed in between.
    Test { line: String, output: Vec<String> },
}

/// Splits a test's text after `test NAME ... ` into what it printed and its result. A test
/// that never finished (panic, hang) has no result.
fn split_result(rest: &[&str]) -> (Vec<String>, Option<String>) {
    let mut output: Vec<String> = rest.iter().map(|l| l.to_string()).collect();
    let Some(last) = output.pop() else {
        return (output, None);
    };
    let trimmed = last.trim_end();
    let at = if let Some(i) = trimmed.rfind("FAILED: ") {
        Some(i)
    } else if let Some(i) = trimmed
        .rfind("skipped (")
        .filter(|_| trimmed.ends_with(')'))
    {
        Some(i)
    } else if trimmed == "ok" || trimmed.ends_with(" ok") {
        Some(trimmed.len() - 2)
    } else {
        None
    };
    match at {
        Some(i) => {
            let before = trimmed[..i].trim_end();
            if !before.is_empty() {
                output.push(before.to_string());
            }
            (output, Some(trimmed[i..].to_string()))
        }
        None => {
            output.push(last);
            (output, None)
        }
    }
}

pub fn entries(serial: &str) -> Vec<Entry> {
    let lines: Vec<&str> = serial.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((name, first)) = lines[i]
            .strip_prefix("test ")
            .and_then(|l| l.split_once(" ... "))
        else {
            out.push(Entry::Line(lines[i].to_string()));
            i += 1;
            continue;
        };
        // The test's text runs to the next test or the closing summary. The kernel starts the
        // same test's line again when another CPU's panic report broke it: a continuation.
        let again = format!("test {name} ... ");
        let end = (i + 1..lines.len())
            .find(|&j| {
                (lines[j].starts_with("test ") && !lines[j].starts_with(&again))
                    || is_summary(lines[j])
            })
            .unwrap_or(lines.len());
        let mut rest = vec![first];
        rest.extend(
            lines[i + 1..end]
                .iter()
                .map(|l| l.strip_prefix(again.as_str()).unwrap_or(l)),
        );
        let (output, result) = split_result(&rest);
        let output = output
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let result = result.unwrap_or_else(|| "(no result)".to_string());
        out.push(Entry::Test {
            line: format!("test {name} ... {result}"),
            output,
        });
        i = end;
    }
    out
}

fn is_summary(line: &str) -> bool {
    let w: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    matches!(w.as_slice(), [_, "passed", _, "failed", _, "skipped"])
}

/// The entries as printed: each line at `indent`, a test's output one level deeper.
pub fn render(serial: &str, indent: &str) -> String {
    let mut s = String::new();
    for e in entries(serial) {
        match e {
            Entry::Line(l) if l.trim().is_empty() => {}
            Entry::Line(l) => s.push_str(&format!("{indent}{l}\n")),
            Entry::Test { line, output } => {
                s.push_str(&format!("{indent}{line}\n"));
                for o in output {
                    s.push_str(&format!("{indent}    {o}\n"));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(line: &str, output: &[&str]) -> Entry {
        Entry::Test {
            line: line.to_string(),
            output: output.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tests_with_and_without_output() {
        let serial = "iommu test kernel: cmdline 'x'\n\
            test a ... ok\n\
            test b ... @allow-guest-error vtd_x\n@allow-guest-error y\nok\n\
            test c ... counts (0, 0)\nmore\nok\n\
            test d ... skipped (needs flts (vtd.mode=flts))\n\
            test e ... got 1 FAILED: 1 != 2\n\
            2 passed, 1 failed, 1 skipped\n";
        assert_eq!(
            entries(serial),
            [
                Entry::Line("iommu test kernel: cmdline 'x'".into()),
                test("test a ... ok", &[]),
                test(
                    "test b ... ok",
                    &["@allow-guest-error vtd_x", "@allow-guest-error y"]
                ),
                test("test c ... ok", &["counts (0, 0)", "more"]),
                test("test d ... skipped (needs flts (vtd.mode=flts))", &[]),
                test("test e ... FAILED: 1 != 2", &["got 1"]),
                Entry::Line("2 passed, 1 failed, 1 skipped".into()),
            ]
        );
    }

    #[test]
    fn unfinished_test_keeps_what_it_printed() {
        let serial = "test a ... \nPANIC: panicked at x.rs:1:1\n";
        assert_eq!(
            entries(serial),
            [test(
                "test a ... (no result)",
                &["PANIC: panicked at x.rs:1:1"]
            )]
        );
    }

    #[test]
    fn a_restarted_test_line_continues_the_test() {
        let serial = "test a ... \nPANIC: cpu 3 (MPIDR 0x3): boom\ntest a ... FAILED: cpu 3\n\
                      0 passed, 1 failed, 0 skipped\n";
        let entries = entries(serial);
        assert_eq!(
            entries[0],
            Entry::Test {
                line: "test a ... FAILED: cpu 3".into(),
                output: vec!["PANIC: cpu 3 (MPIDR 0x3): boom".into()],
            }
        );
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn render_indents_test_output_one_level_deeper() {
        let out = render(
            "test c ... n = 3\nok\n1 passed, 0 failed, 0 skipped\n",
            "  ",
        );
        assert_eq!(
            out,
            "  test c ... ok\n      n = 3\n  1 passed, 0 failed, 0 skipped\n"
        );
    }
}
