//! The kernel command line: space-separated `key=value` words (QEMU `-append`).
//!
//! The runner tells a test kernel what machine it started, e.g.
//! `vtd.mode=scalable vtd.aw=39 vtd.cm=1`, so the kernel can check what it decodes from the
//! hardware against what QEMU was asked to emulate.

/// A parsed command line; lookups are linear, the line is short.
#[derive(Debug, Clone, Copy)]
pub struct Cmdline<'a>(&'a str);

impl<'a> Cmdline<'a> {
    pub fn new(line: &'a str) -> Self {
        Self(line)
    }

    /// The value of `key=value`, or `Some("")` for a bare `key`.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.0
            .split_ascii_whitespace()
            .find_map(|word| match word.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if word == key => Some(""),
                _ => None,
            })
    }

    /// The value parsed as an unsigned number (decimal or `0x` hex).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// `key=1`/`key=on`/`key=true` → true, `0`/`off`/`false` → false, absent or other → None.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "1" | "on" | "true" => Some(true),
            "0" | "off" | "false" => Some(false),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_words() {
        let c = Cmdline::new("  vtd.aw=39 vtd.cm=on flag  n=0x20 ");
        assert_eq!(c.get("vtd.aw"), Some("39"));
        assert_eq!(c.get_u64("vtd.aw"), Some(39));
        assert_eq!(c.get_u64("n"), Some(0x20));
        assert_eq!(c.get_bool("vtd.cm"), Some(true));
        assert_eq!(c.get("flag"), Some(""));
        assert_eq!(c.get("vtd"), None);
        assert_eq!(c.get("missing"), None);
        assert_eq!(c.get_u64("flag"), None);
    }
}
