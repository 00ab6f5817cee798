//! Finding (or installing) QEMU >= 10.0, and booting one kernel in it with a timeout.
//!
//! Every boot leaves one log, `target/xtask/<boot name>.log`: the full QEMU command line at its
//! top (to rerun the boot alone), then the serial output, QEMU's stderr and its
//! `-d guest_errors` log.

use crate::matrix::Machine;
use std::io::Read;
use std::path::{Path, PathBuf};
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
    /// The command that ran, quoted for a POSIX shell: it reruns this boot alone.
    pub command: String,
    /// The boot's log: command, serial, stderr, guest errors.
    pub log: PathBuf,
}

/// The log file's name for a boot: letters, digits, `.`, `_` and `-` kept, runs of anything
/// else (spaces, `:`, `=`) made one `-`.
pub fn log_file_name(boot_name: &str) -> String {
    let mut name = String::new();
    for c in boot_name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    format!("{}.log", name.trim_matches('-'))
}

/// One word for a POSIX shell: as it is when it is safe, in single quotes otherwise.
pub fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.,/=:@%+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The full argument list of a boot after the binary.
fn qemu_args(args: &[String], kernel: &Path, cmdline: &str, guest_errors: &Path) -> Vec<String> {
    let mut all: Vec<String> = [
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .map(String::from)
    .into();
    all.extend(args.iter().cloned());
    all.extend([
        "-kernel".to_string(),
        kernel.display().to_string(),
        "-append".to_string(),
        cmdline.to_string(),
        "-d".to_string(),
        "guest_errors".to_string(),
        "-D".to_string(),
        guest_errors.display().to_string(),
    ]);
    all
}

/// `binary args...` for a shell, `-append`'s value always quoted (it is one argument however
/// many words it has).
pub fn command_line(binary: &str, args: &[String]) -> String {
    let mut line = shell_word(binary);
    let mut after_append = false;
    for a in args {
        line.push(' ');
        if after_append {
            line.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            line.push_str(&shell_word(a));
        }
        after_append = a == "-append";
    }
    line
}

/// An absolute form of `path` where one can be had, so that printed commands work from any
/// directory.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Boots `kernel` on machine `m` (its QEMU arguments and kernel command line), with serial on
/// stdout and guest errors logged to a file; kills QEMU after the machine's timeout. With
/// `echo`, serial output is also copied to our stdout as it comes (for the demo). `name` names
/// the boot's log in `log_dir`.
pub fn boot(
    m: &Machine,
    name: &str,
    kernel: &Path,
    echo: bool,
    log_dir: &Path,
) -> Result<Boot, String> {
    let (binary, args, cmdline, timeout) = (m.arch.qemu(), &m.args, &m.cmdline, m.timeout);
    std::fs::create_dir_all(log_dir)
        .map_err(|e| format!("cannot create {}: {e}", log_dir.display()))?;
    let log = absolute(log_dir).join(log_file_name(name));
    // QEMU writes its `-D` log itself; it is folded into the boot's log afterwards.
    let guest_errors_file = log.with_extension("guest-errors");
    let _ = std::fs::remove_file(&guest_errors_file);
    let all_args = qemu_args(args, &absolute(kernel), cmdline, &guest_errors_file);
    let command = command_line(binary, &all_args);
    // The command goes in first, so that even a run killed mid-boot leaves it behind.
    let header = format!("# {name}\n{command}\n");
    std::fs::write(&log, &header).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let mut cmd = Command::new(binary);
    cmd.args(&all_args)
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
    let guest_errors = std::fs::read_to_string(&guest_errors_file).unwrap_or_default();
    let _ = std::fs::remove_file(&guest_errors_file);
    let exit = match exit_code {
        Some(c) => format!("QEMU exited with {c}"),
        None => format!("QEMU killed at the {}s timeout", timeout.as_secs()),
    };
    let text = format!(
        "{header}# {exit} after {:.1}s\n\n== serial ==\n{serial}\n== qemu stderr ==\n{stderr}\n\
         == qemu -d guest_errors ==\n{guest_errors}",
        elapsed.as_secs_f64()
    );
    std::fs::write(&log, text).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    Ok(Boot {
        exit_code,
        serial,
        guest_errors,
        stderr,
        elapsed,
        command,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_are_filename_safe() {
        assert_eq!(
            log_file_name("x86_64 q35 vtd-legacy aw48 cm=off"),
            "x86_64-q35-vtd-legacy-aw48-cm-off.log"
        );
        assert_eq!(
            log_file_name("aarch64 self-test: deliberate guest-error"),
            "aarch64-self-test-deliberate-guest-error.log"
        );
        assert_eq!(
            log_file_name("aarch64 virt-9.0 smmuv3 stage=2/../x"),
            "aarch64-virt-9.0-smmuv3-stage-2-..-x.log"
        );
    }

    #[test]
    fn command_line_is_quoted_for_a_shell() {
        let args = qemu_args(
            &["-device".into(), "edu,dma_mask=0xff".into()],
            Path::new("/t/my kernel"),
            "vtd.mode=legacy vtd.aw=48",
            Path::new("/t/x.guest-errors"),
        );
        assert_eq!(
            command_line("qemu-system-x86_64", &args),
            "qemu-system-x86_64 -nodefaults -display none -serial stdio -no-reboot \
             -device edu,dma_mask=0xff -kernel '/t/my kernel' -append 'vtd.mode=legacy vtd.aw=48' \
             -d guest_errors -D /t/x.guest-errors"
        );
        let one = ["-append".to_string(), "smmu.stage=2".to_string()];
        assert_eq!(command_line("q", &one), "q -append 'smmu.stage=2'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
