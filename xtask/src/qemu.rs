//! Finding (or installing) QEMU >= 10.0, and booting one kernel in it with a timeout.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest QEMU that emulates what the tests need: VT-d `x-flts` and SMMUv3 stage 2 / nested.
const MIN_VERSION: (u32, u32) = (10, 0);
const BINARIES: [&str; 2] = ["qemu-system-x86_64", "qemu-system-aarch64"];
const INSTALL_HINT: &str = "echo 'deb http://deb.debian.org/debian bookworm-backports main' \
    > /etc/apt/sources.list.d/bookworm-backports.list && apt-get update && \
    apt-get install -y -t bookworm-backports qemu-system-x86 qemu-system-arm";

/// `(major, minor)` from `qemu-system-* --version`, or None if it does not run.
fn version(binary: &str) -> Option<(u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

fn missing() -> Vec<String> {
    BINARIES
        .iter()
        .filter_map(|b| match version(b) {
            Some(v) if v >= MIN_VERSION => None,
            Some((a, b2)) => Some(format!("{b} is {a}.{b2}, older than 10.0 (Debian bookworm's own QEMU is 7.2: no VT-d x-flts, no SMMUv3 stage 2 / nested)")),
            None => Some(format!("{b} not found")),
        })
        .collect()
}

/// Makes sure QEMU >= 10.0 is there for both architectures: installs it with apt where we are
/// root on Debian, and otherwise stops with the command to run.
pub fn ensure_installed() -> Result<(), String> {
    let problems = missing();
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("xtask: {p}");
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    if !is_root || !Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "QEMU >= 10.0 is needed. On Debian bookworm, as root: {INSTALL_HINT}"
        ));
    }
    eprintln!("xtask: installing QEMU with apt (Debian {codename})");
    let mut suite: Option<String> = None;
    if codename == "bookworm" {
        let list = "/etc/apt/sources.list.d/bookworm-backports.list";
        if !Path::new(list).exists() {
            std::fs::write(
                list,
                "deb http://deb.debian.org/debian bookworm-backports main\n",
            )
            .map_err(|e| format!("cannot write {list}: {e}"))?;
        }
        suite = Some("bookworm-backports".into());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq"]);
    if let Some(s) = &suite {
        install.args(["-t", s]);
    }
    run(install.args(["qemu-system-x86", "qemu-system-arm"]))?;
    let problems = missing();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "after installing: {}. Run: {INSTALL_HINT}",
            problems.join("; ")
        ))
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// What one boot produced.
pub struct Boot {
    /// QEMU's exit code; None if it was killed at the timeout.
    pub exit_code: Option<i32>,
    /// Everything the kernel wrote to its serial port.
    pub serial: String,
    /// QEMU's `-d guest_errors` log: the emulator saying the guest programmed it wrongly.
    pub guest_errors: String,
    /// QEMU's own stderr (warnings such as DMA faults it reports).
    pub stderr: String,
    pub elapsed: Duration,
}

/// Boots `kernel` in `binary` with `args`, the debug-exit / semihosting device, serial on stdout
/// and guest errors logged to a file; kills QEMU after `timeout`. With `echo`, serial output is
/// also copied to our stdout as it comes (for the demo).
pub fn boot(
    binary: &str,
    args: &[String],
    kernel: &Path,
    cmdline: &str,
    timeout: Duration,
    echo: bool,
) -> Result<Boot, String> {
    let log = std::env::temp_dir().join(format!(
        "iommu-qemu-{}-{}.log",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(binary);
    cmd.args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .args(args)
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", cmdline, "-d", "guest_errors", "-D"])
    .arg(&log)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {binary}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            if echo {
                use std::io::Write;
                let _ = std::io::stdout().write_all(&buf[..n]);
                let _ = std::io::stdout().flush();
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let err_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        all
    });
    let exit_code = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break status.code(),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let elapsed = start.elapsed();
    let serial = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let guest_errors = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    Ok(Boot {
        exit_code,
        serial,
        guest_errors,
        stderr,
        elapsed,
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
