//! The toolchain check that runs before anything is built: the toolchain `rust-toolchain.toml`
//! pins must have its bare-metal targets and components.
//!
//! rustup installs a pinned toolchain's targets and components only when it installs the
//! toolchain itself. A machine that already had the same version without the targets failed
//! the first kernel build with "can't find crate for `core`". So the xtask asks rustup what the
//! toolchain has, adds what is missing, and where rustup is absent or refuses, stops with the
//! exact command to run. The decisions (parsing the file, comparing rustup's lists, building
//! the commands) are pure functions, tested without touching the machine's toolchain.

use std::path::Path;
use std::process::Command;

/// What `rust-toolchain.toml` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pinned {
    pub channel: String,
    pub targets: Vec<String>,
    pub components: Vec<String>,
}

/// Reads `channel`, `targets` and `components` of the `[toolchain]` table. A tiny parser for
/// the few forms such a file uses (strings, arrays of strings, possibly over several lines,
/// `#` comments) keeps the xtask free of dependencies; anything else is reported, not guessed.
pub fn parse(text: &str) -> Result<Pinned, String> {
    let mut pinned = Pinned::default();
    let mut in_toolchain = false;
    let mut lines = text.lines().map(strip_comment);
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            in_toolchain = line == "[toolchain]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("rust-toolchain.toml: cannot read line '{line}'"));
        };
        let key = key.trim();
        if !in_toolchain || !matches!(key, "channel" | "targets" | "components") {
            continue;
        }
        let mut value = value.trim().to_string();
        // An array may go on over several lines until its closing bracket.
        if value.starts_with('[') {
            while !value.ends_with(']') {
                let Some(more) = lines.next() else {
                    return Err(format!("rust-toolchain.toml: unclosed array for '{key}'"));
                };
                value.push(' ');
                value.push_str(more.trim());
            }
        }
        match key {
            "channel" => pinned.channel = string(&value, key)?,
            "targets" => pinned.targets = array(&value, key)?,
            _ => pinned.components = array(&value, key)?,
        }
    }
    if pinned.channel.is_empty() {
        return Err("rust-toolchain.toml names no channel in [toolchain]".to_string());
    }
    Ok(pinned)
}

/// The line without a `#` comment (none of the values this parser reads contains `#`).
fn strip_comment(line: &str) -> &str {
    line.split_once('#').map_or(line, |(before, _)| before)
}

/// A basic or literal TOML string.
fn string(value: &str, key: &str) -> Result<String, String> {
    let v = value.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(quote).and_then(|s| s.strip_suffix(quote)) {
            if !inner.contains(quote) && !inner.contains('\\') {
                return Ok(inner.to_string());
            }
        }
    }
    Err(format!(
        "rust-toolchain.toml: '{key}' is not a plain string: {v}"
    ))
}

/// An array of plain strings, trailing comma allowed.
fn array(value: &str, key: &str) -> Result<Vec<String>, String> {
    let inner = value
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("rust-toolchain.toml: '{key}' is not an array: {value}"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| string(s, key))
        .collect()
}

/// The wanted targets that `rustup target list --installed` does not list.
pub fn missing_targets(wanted: &[String], installed_targets: &str) -> Vec<String> {
    wanted
        .iter()
        .filter(|w| !installed_targets.lines().any(|l| l.trim() == w.as_str()))
        .cloned()
        .collect()
}

/// The wanted components that `rustup component list --installed` does not list. rustup names
/// an installed component with its target (`clippy-x86_64-unknown-linux-gnu`) or without one
/// (`rust-src`); the target must be an installed one, so that `rust-docs` is not taken for
/// present because of `rust-docs-json-...`.
pub fn missing_components(
    wanted: &[String],
    installed_components: &str,
    installed_targets: &str,
) -> Vec<String> {
    let targets: Vec<&str> = installed_targets.lines().map(str::trim).collect();
    let present = |name: &str| {
        installed_components.lines().map(str::trim).any(|l| {
            l == name
                || l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|target| targets.contains(&target))
        })
    };
    wanted
        .iter()
        .filter(|w| !present(w.as_str()))
        .cloned()
        .collect()
}

/// The rustup commands (program and arguments) that add what is missing, in order.
pub fn fix_commands(channel: &str, targets: &[String], components: &[String]) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for (kind, names) in [("target", targets), ("component", components)] {
        if !names.is_empty() {
            let mut c: Vec<String> = ["rustup", kind, "add", "--toolchain", channel]
                .map(String::from)
                .into();
            c.extend(names.iter().cloned());
            cmds.push(c);
        }
    }
    cmds
}

/// The whole toolchain install, for a machine where listing the toolchain fails (rustup
/// absent, or the toolchain not installed at all).
pub fn install_command(p: &Pinned) -> Vec<String> {
    let mut c: Vec<String> = [
        "rustup",
        "toolchain",
        "install",
        &p.channel,
        "--profile",
        "minimal",
    ]
    .map(String::from)
    .into();
    if !p.components.is_empty() {
        c.extend(["--component".to_string(), p.components.join(",")]);
    }
    if !p.targets.is_empty() {
        c.extend(["--target".to_string(), p.targets.join(",")]);
    }
    c
}

pub fn show(cmd: &[String]) -> String {
    cmd.join(" ")
}

/// `rustup <args>`'s stdout, or why it could not be had.
fn rustup(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "rustup not found".to_string(),
            _ => format!("rustup: {e}"),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rustup {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Checks the pinned toolchain of the workspace at `root`, adding missing targets and
/// components with rustup; stops with the command to run where that cannot be done.
pub fn ensure(root: &Path) -> Result<(), String> {
    let file = root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let pinned = parse(&text)?;
    let ch = pinned.channel.as_str();
    let listed = rustup(&["target", "list", "--installed", "--toolchain", ch]).and_then(|t| {
        rustup(&["component", "list", "--installed", "--toolchain", ch]).map(|c| (t, c))
    });
    let (targets, components) = match listed {
        Ok(lists) => lists,
        Err(e) => {
            return Err(format!(
                "cannot check toolchain {ch} ({e}). Run: {}",
                show(&install_command(&pinned))
            ))
        }
    };
    let fixes = fix_commands(
        ch,
        &missing_targets(&pinned.targets, &targets),
        &missing_components(&pinned.components, &components, &targets),
    );
    for fix in &fixes {
        println!(
            "==> toolchain {ch} lacks what rust-toolchain.toml pins: {}",
            show(fix)
        );
        let status = Command::new(&fix[0]).args(&fix[1..]).status();
        if !matches!(status, Ok(s) if s.success()) {
            let all: Vec<String> = fixes.iter().map(|f| show(f)).collect();
            return Err(format!(
                "could not add to toolchain {ch}. Run: {}",
                all.join(" && ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// What rustup 1.29 lists for this project's toolchain with everything installed.
    const TARGETS_ALL: &str =
        "aarch64-unknown-none\nx86_64-unknown-linux-gnu\nx86_64-unknown-none\n";
    const COMPONENTS_ALL: &str =
        "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
        rust-std-aarch64-unknown-none\nrust-std-x86_64-unknown-linux-gnu\n\
        rust-std-x86_64-unknown-none\nrustc-x86_64-unknown-linux-gnu\n\
        rustfmt-x86_64-unknown-linux-gnu\n";
    /// The same version installed earlier without the project's file: host only, no clippy.
    const TARGETS_HOST_ONLY: &str = "x86_64-unknown-linux-gnu\n";
    const COMPONENTS_HOST_ONLY: &str = "cargo-x86_64-unknown-linux-gnu\n\
        rust-std-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n\
        rustfmt-x86_64-unknown-linux-gnu\n";

    #[test]
    fn parses_the_projects_file() {
        let p = parse(include_str!("../../rust-toolchain.toml")).expect("parses");
        assert_eq!(p.channel, "1.95.0");
        assert_eq!(
            p.targets,
            names(&["x86_64-unknown-none", "aarch64-unknown-none"])
        );
        assert_eq!(p.components, names(&["rustfmt", "clippy"]));
    }

    #[test]
    fn parses_multiline_arrays_comments_and_literal_strings() {
        let text = "# pinned\n[toolchain]\nchannel = '1.95.0' # MSRV\ntargets = [\n  \"a-b-c\", # one\n  'd-e-f',\n]\nprofile = \"minimal\"\n";
        let p = parse(text).expect("parses");
        assert_eq!(p.channel, "1.95.0");
        assert_eq!(p.targets, names(&["a-b-c", "d-e-f"]));
        assert!(p.components.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(parse("[toolchain]\nprofile = \"minimal\"\n").is_err());
        assert!(parse("[toolchain]\nchannel = stable\n").is_err());
        assert!(parse("[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"a\"\n").is_err());
        // Keys of other tables are not the toolchain's.
        assert!(parse("[other]\nchannel = \"x\"\n").is_err());
    }

    #[test]
    fn full_toolchain_needs_nothing() {
        let p = parse(include_str!("../../rust-toolchain.toml")).expect("parses");
        assert!(missing_targets(&p.targets, TARGETS_ALL).is_empty());
        assert!(missing_components(&p.components, COMPONENTS_ALL, TARGETS_ALL).is_empty());
        assert!(fix_commands(&p.channel, &[], &[]).is_empty());
    }

    #[test]
    fn toolchain_without_the_targets_gets_them_added() {
        let p = parse(include_str!("../../rust-toolchain.toml")).expect("parses");
        let t = missing_targets(&p.targets, TARGETS_HOST_ONLY);
        let c = missing_components(&p.components, COMPONENTS_HOST_ONLY, TARGETS_HOST_ONLY);
        assert_eq!(t, names(&["x86_64-unknown-none", "aarch64-unknown-none"]));
        assert_eq!(c, names(&["clippy"]));
        let cmds: Vec<String> = fix_commands(&p.channel, &t, &c)
            .iter()
            .map(|c| show(c))
            .collect();
        assert_eq!(
            cmds,
            [
                "rustup target add --toolchain 1.95.0 x86_64-unknown-none aarch64-unknown-none",
                "rustup component add --toolchain 1.95.0 clippy",
            ]
        );
    }

    #[test]
    fn components_match_by_name_and_installed_target_only() {
        let targets = "x86_64-unknown-linux-gnu\n";
        let listed = "rust-docs-json-x86_64-unknown-linux-gnu\nrust-src\n";
        assert_eq!(
            missing_components(&names(&["rust-docs", "rust-src"]), listed, targets),
            names(&["rust-docs"])
        );
    }

    #[test]
    fn install_command_names_everything() {
        let p = parse(include_str!("../../rust-toolchain.toml")).expect("parses");
        assert_eq!(
            show(&install_command(&p)),
            "rustup toolchain install 1.95.0 --profile minimal --component rustfmt,clippy \
             --target x86_64-unknown-none,aarch64-unknown-none"
        );
    }
}
