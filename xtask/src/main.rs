//! `cargo xtask test`, `cargo xtask demo` and `cargo xtask fuzz`: the project's commands.
//!
//! `test` runs the host tests, clippy (warnings denied), the loom models, a short run of every
//! fuzz target and Miri (with a nightly toolchain, `fuzz.rs`), then boots the test
//! kernel under every machine of the QEMU matrix and checks the runner itself catches a failing
//! assertion, a panic, a hang and a QEMU guest error. `demo` boots the demo kernel and shows its
//! output. Both first make sure the pinned toolchain has its targets (`toolchain.rs`); every
//! boot keeps its log in `target/xtask/`.

mod fuzz;
mod matrix;
mod qemu;
mod toolchain;
mod transcript;
mod verdict;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
        }
    }

    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

const USAGE: &str = "usage:
  cargo xtask test [--qemu-only|--nightly-only] [--filter TEXT] [--verbose] [--list]
      host tests, clippy, loom, packaging, fuzzing and Miri (with a nightly toolchain), then
      the QEMU matrix; --qemu-only: the matrix only; --nightly-only: fuzzing and Miri only;
      --filter: the boots whose name contains TEXT; --verbose: every test of every boot with
      what it printed; --list: print the boots and exit
  cargo xtask demo [--arch x86_64|aarch64]         boot the demo kernel (both architectures by default)
  cargo xtask fuzz [--seconds N] [TARGET]
      run every fuzz target (or TARGET: dmar, acpi, iort, devicetree, smmu_guest, vtd_guest)
      for N seconds each (60 by default); needs a nightly toolchain, installs cargo-fuzz";

/// The options of `cargo xtask test`.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestOptions {
    qemu_only: bool,
    nightly_only: bool,
    filter: String,
    verbose: bool,
    list: bool,
}

fn parse_test_args(args: &[String]) -> Result<TestOptions, String> {
    let mut o = TestOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--qemu-only" => o.qemu_only = true,
            "--nightly-only" => o.nightly_only = true,
            "--verbose" | "-v" => o.verbose = true,
            "--list" => o.list = true,
            "--filter" => o.filter = it.next().cloned().ok_or(USAGE)?,
            _ => return Err(USAGE.to_string()),
        }
    }
    if o.qemu_only && o.nightly_only {
        return Err(USAGE.to_string());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("fuzz") => fuzz_command(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    // xtask/ sits in the workspace root. `cargo run` sets CARGO_MANIFEST_DIR at run time too;
    // prefer that over the compile-time value, which is stale when a shared target directory
    // holds an xtask built from another checkout.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn step(name: &str, cmd: &mut Command) -> Result<(), String> {
    println!("==> {name}");
    let start = Instant::now();
    let status = cmd.status().map_err(|e| format!("{name}: {e}"))?;
    if !status.success() {
        return Err(format!("{name} failed ({status})"));
    }
    println!("==> {name}: ok ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the current directory, as cargo takes
/// it) or the workspace's `target/`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Where every boot leaves its log.
fn log_dir() -> PathBuf {
    target_dir().join("xtask")
}

/// Builds a kernel binary for `arch` and returns its path. On aarch64 the guest kernel
/// (tests/guest) is built first and embedded: its ELF path goes to the kernel's build script
/// in `IOMMU_TEST_GUEST`. Embedding (rather than a second QEMU `-device loader` blob) keeps
/// one file per boot and lets the hypervisor check the image like any loader would.
fn build_kernel(arch: Arch, bin: &str) -> Result<PathBuf, String> {
    let mut kernel = cargo();
    if arch == Arch::Aarch64 {
        kernel.env("IOMMU_TEST_GUEST", build_guest()?);
    }
    step(
        &format!("build {bin} for {}", arch.target()),
        kernel.args([
            "build",
            "--quiet",
            "-p",
            "iommu-test-kernel",
            "--bin",
            bin,
            "--target",
            arch.target(),
        ]),
    )?;
    Ok(target_dir().join(arch.target()).join("debug").join(bin))
}

/// Builds the aarch64 guest kernel and returns the path of its ELF.
fn build_guest() -> Result<PathBuf, String> {
    let target = Arch::Aarch64.target();
    step(
        &format!("build the guest kernel for {target}"),
        cargo().args([
            "build",
            "--quiet",
            "-p",
            "iommu-test-guest",
            "--bin",
            "guest",
            "--target",
            target,
        ]),
    )?;
    Ok(target_dir().join(target).join("debug").join("guest"))
}

fn host_checks() -> Result<(), String> {
    step(
        "host tests (cargo test --workspace)",
        cargo().args(["test", "--workspace"]),
    )?;
    step(
        "clippy, warnings denied (host)",
        cargo().args([
            "clippy",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    for arch in [Arch::X86_64, Arch::Aarch64] {
        step(
            &format!("clippy, warnings denied ({})", arch.target()),
            cargo().args([
                "clippy",
                "--quiet",
                "-p",
                "iommu-test-kernel",
                "--target",
                arch.target(),
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // The loom models of every lock-free structure (and of the IOVA space's claim protocol,
    // whose short locks hand the lock-free tables disjoint ranges). loom needs its own build (a different
    // cfg), kept in its own target directory so it does not invalidate the normal one.
    for (what, package, selector) in [
        ("page tables", "iommu", ["--test", "loom_pagetable"]),
        (
            "combining publisher lock",
            "iommu",
            ["--lib", "sync::loom_tests"],
        ),
        ("IOVA space claims", "iommu", ["--lib", "iova::loom_tests"]),
        (
            "VT-d invalidation queue",
            "iommu-vtd",
            ["--lib", "qi::loom_tests"],
        ),
        (
            "SMMUv3 command queue",
            "iommu-smmuv3",
            ["--lib", "cmdq::loom_model"],
        ),
    ] {
        step(
            &format!("loom model: {what}"),
            cargo()
                .env("RUSTFLAGS", "--cfg loom")
                .env("CARGO_TARGET_DIR", root().join("target/loom"))
                .args(["test", "--quiet", "--release", "-p", package])
                .args(selector),
        )?;
    }
    Ok(())
}

/// Packages the three driver crates as crates.io would get them, without uploading.
///
/// They depend on each other by path and version and none is on crates.io. Named together
/// with `-p`, cargo packages them in dependency order and resolves each against the ones
/// already packaged (a local registry overlay), so `iommu-vtd` finds `iommu 0.1.0`. What still
/// fails is the lock file cargo writes into each `.crate`: resolving it needs `iommu` itself
/// from crates.io, for the root package's dev-dependency on itself (its `host-hal` feature).
/// A library's lock file is never used by its dependents, so `--exclude-lockfile` leaves it
/// out. `--no-verify` skips building each package again from its `.crate`: that passes too
/// (about 15 s on a 2-core machine) but fetches the crates.io index, and the host checks have just built the
/// same sources; without it the step needs no network. `--allow-dirty` lets a work tree with
/// edits be checked.
fn package_check() -> Result<(), String> {
    step(
        "cargo package (iommu, iommu-vtd, iommu-smmuv3)",
        cargo().args([
            "package",
            "--quiet",
            "--no-verify",
            "--allow-dirty",
            "--exclude-lockfile",
            "-p",
            "iommu",
            "-p",
            "iommu-vtd",
            "-p",
            "iommu-smmuv3",
        ]),
    )
}

/// The driver crates' API documentation, built as docs.rs builds it (the host and both bare-metal
/// targets), with every rustdoc warning an error: broken links and unclosed HTML fail the run.
fn doc_check() -> Result<(), String> {
    for target in [None, Some(Arch::X86_64), Some(Arch::Aarch64)] {
        let mut cmd = cargo();
        cmd.env("RUSTDOCFLAGS", "-D warnings").args([
            "doc",
            "--quiet",
            "--no-deps",
            "-p",
            "iommu",
            "-p",
            "iommu-vtd",
            "-p",
            "iommu-smmuv3",
        ]);
        if let Some(arch) = target {
            cmd.args(["--target", arch.target()]);
        }
        step(
            &format!(
                "cargo doc, warnings denied ({})",
                target.map_or("host", Arch::target)
            ),
            &mut cmd,
        )?;
    }
    Ok(())
}

/// `--list`: the boots `test` would make, without making them.
fn list(filter: &str) {
    let show = |m: &matrix::Machine| {
        println!("{}", m.name);
        println!("    arch:    {}", m.arch.target());
        println!("    qemu:    {} {}", m.arch.qemu(), m.args.join(" "));
        println!("    append:  {}", m.cmdline);
    };
    let machines: Vec<_> = matrix::machines()
        .into_iter()
        .filter(|m| m.name.contains(filter))
        .collect();
    let self_tests: Vec<_> = matrix::self_tests()
        .into_iter()
        .filter(|m| m.name.contains(filter))
        .collect();
    println!("QEMU matrix: {} boots", machines.len());
    for m in &machines {
        show(m);
    }
    println!(
        "runner self-tests: {} boots, each must fail for the reason named",
        self_tests.len()
    );
    for s in &self_tests {
        show(s);
        println!(
            "    expect:  '{}' (timeout {}s)",
            s.expect_reason,
            s.timeout.as_secs()
        );
    }
}

fn test(args: &[String]) -> Result<(), String> {
    let TestOptions {
        qemu_only,
        nightly_only,
        filter,
        verbose,
        list: list_only,
    } = parse_test_args(args)?;
    if list_only {
        list(&filter);
        return Ok(());
    }
    if nightly_only {
        return fuzz::nightly_checks();
    }
    toolchain::ensure(&root())?;
    qemu::ensure_installed()?;
    if !qemu_only {
        host_checks()?;
        package_check()?;
        doc_check()?;
        fuzz::nightly_checks()?;
    }
    let kernels = [
        (Arch::X86_64, build_kernel(Arch::X86_64, "test-kernel")?),
        (Arch::Aarch64, build_kernel(Arch::Aarch64, "test-kernel")?),
    ];
    let kernel = |arch: Arch| {
        kernels
            .iter()
            .find(|(a, _)| *a == arch)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };

    println!("==> QEMU matrix");
    let mut total = verdict::Counts::default();
    let mut failed_boots = Vec::new();
    for m in matrix::machines()
        .iter()
        .filter(|m| m.name.contains(&filter))
    {
        let boot = qemu::boot(m, &m.name, &kernel(m.arch), false, &log_dir())?;
        let v = verdict::judge_traced(
            m.arch,
            boot.exit_code,
            &boot.serial,
            &boot.guest_errors,
            &m.traced(),
        );
        let c = v.counts();
        println!(
            "{:<44} {:>3} passed, {} failed, {} skipped  {:>5.1}s{}",
            m.name,
            c.passed,
            c.failed,
            c.skipped,
            boot.elapsed.as_secs_f64(),
            if v.is_pass() { "" } else { "  FAILED" }
        );
        if verbose {
            show_boot(&boot);
        }
        if let verdict::Verdict::Failed { reasons, .. } = &v {
            report_failure(&boot, reasons, verbose);
            failed_boots.push(m.name.clone());
        }
        total.passed += c.passed;
        total.failed += c.failed;
        total.skipped += c.skipped;
    }

    println!("==> runner self-test: each deliberate fault must fail its boot");
    for s in matrix::self_tests()
        .iter()
        .filter(|m| m.name.contains(&filter))
    {
        let boot = qemu::boot(s, &s.name, &kernel(s.arch), false, &log_dir())?;
        let v = verdict::judge(s.arch, boot.exit_code, &boot.serial, &boot.guest_errors);
        let caught = match &v {
            verdict::Verdict::Failed { reasons, .. } => {
                reasons.iter().any(|r| r.contains(&s.expect_reason))
            }
            verdict::Verdict::Passed(_) => false,
        };
        println!(
            "{:<44} {}  {:>5.1}s",
            s.name,
            if caught {
                "caught: ok".to_string()
            } else {
                format!("NOT CAUGHT as '{}': FAILED", s.expect_reason)
            },
            boot.elapsed.as_secs_f64()
        );
        if verbose {
            show_boot(&boot);
        }
        if caught {
            total.passed += 1;
        } else {
            if let verdict::Verdict::Failed { reasons, .. } = &v {
                report_failure(&boot, reasons, verbose);
            }
            total.failed += 1;
            failed_boots.push(s.name.clone());
        }
    }

    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if failed_boots.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed_boots.join(", ")))
    }
}

/// `--verbose`: each test of a boot with what it printed, and where the boot's log is.
fn show_boot(boot: &qemu::Boot) {
    print!("{}", transcript::render(&boot.serial, "    "));
    println!("    log: {}", boot.log.display());
}

/// Why a boot failed, where its log is, and the command that reruns it alone. The serial
/// output is shown here unless `--verbose` has already shown it.
fn report_failure(boot: &qemu::Boot, reasons: &[String], verbose: bool) {
    for r in reasons {
        println!("    why: {r}");
    }
    println!("    log: {}", boot.log.display());
    println!("    rerun: {}", boot.command);
    if !verbose {
        if boot.serial.is_empty() {
            println!("    serial output: none");
        } else {
            println!("    serial output:");
        }
        for l in boot.serial.lines().take(200) {
            println!("    | {l}");
        }
    }
    for l in boot.stderr.lines().take(20) {
        println!("    qemu stderr| {l}");
    }
}

fn fuzz_command(args: &[String]) -> Result<(), String> {
    let o = fuzz::parse_fuzz_args(args, USAGE)?;
    if let Some(why) = fuzz::nightly_missing() {
        return Err(format!("cannot fuzz: {why}"));
    }
    match &o.target {
        Some(t) => fuzz::fuzz(&[t.as_str()], o.seconds),
        None => fuzz::fuzz(fuzz::TARGETS, o.seconds),
    }
}

fn demo(args: &[String]) -> Result<(), String> {
    let arches = match args {
        [] => vec![Arch::X86_64, Arch::Aarch64],
        [flag, a] if flag == "--arch" => vec![Arch::parse(a).ok_or(USAGE)?],
        _ => return Err(USAGE.to_string()),
    };
    toolchain::ensure(&root())?;
    qemu::ensure_installed()?;
    for arch in arches {
        let kernel = build_kernel(arch, "demo")?;
        let m = matrix::demo_machine(arch);
        println!("==> {}: {} {}", m.name, arch.qemu(), m.args.join(" "));
        // Named apart from the matrix boot on the same machine, whose log it would replace.
        let boot = qemu::boot(&m, &format!("demo {}", m.name), &kernel, true, &log_dir())?;
        println!("==> log: {}", boot.log.display());
        if boot.exit_code != Some(verdict::exit_codes(arch).0) {
            return Err(format!(
                "demo kernel on {} did not finish cleanly (exit {:?}); log: {}; rerun: {}",
                m.name,
                boot.exit_code,
                boot.log.display(),
                boot.command
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn test_options() {
        assert_eq!(parse_test_args(&[]), Ok(TestOptions::default()));
        assert_eq!(
            parse_test_args(&args(&["--qemu-only", "--filter", "vtd-flts", "--verbose"])),
            Ok(TestOptions {
                qemu_only: true,
                nightly_only: false,
                filter: "vtd-flts".into(),
                verbose: true,
                list: false
            })
        );
        assert!(parse_test_args(&args(&["--list"])).is_ok_and(|o| o.list));
        assert!(parse_test_args(&args(&["--nightly-only"])).is_ok_and(|o| o.nightly_only));
        assert!(parse_test_args(&args(&["--nightly-only", "--qemu-only"])).is_err());
        assert!(parse_test_args(&args(&["--filter"])).is_err());
        assert!(parse_test_args(&args(&["--bogus"])).is_err());
    }
}
