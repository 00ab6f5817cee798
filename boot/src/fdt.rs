//! Just enough of the flattened devicetree format (Devicetree Specification v0.4, chapter 5)
//! to read a property of a top-level node, such as `/chosen/bootargs` or `/psci/method`, and
//! the CPUs' `reg`, before the heap exists. Drivers parse the tree with the `fdt` crate later.
//!
//! Every offset comes from the blob and is checked: a bad blob yields `None`, never a panic or
//! a read outside the blob. Host-compiled so it is tested against QEMU's real blobs.

/// Header magic, big-endian like every integer in the blob.
const MAGIC: u32 = 0xd00d_feed;
/// `size_dt_struct` and `size_dt_strings` exist from version 17 on.
const MIN_VERSION: u32 = 17;
/// Bytes of the version-17 header.
pub const HEADER_LEN: usize = 40;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;

/// The blob's total size from its header, if the header has the devicetree magic.
pub fn total_size(header: &[u8]) -> Option<usize> {
    if be32(header, 0)? != MAGIC {
        return None;
    }
    usize::try_from(be32(header, 4)?).ok()
}

/// A devicetree blob whose header has been checked.
pub struct Fdt<'a> {
    structure: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Fdt<'a> {
    /// Checks the header of `blob` and locates its structure and strings blocks.
    pub fn new(blob: &'a [u8]) -> Option<Self> {
        if be32(blob, 0)? != MAGIC || be32(blob, 20)? < MIN_VERSION {
            return None;
        }
        let total = usize::try_from(be32(blob, 4)?).ok()?;
        let blob = blob.get(..total)?;
        let block = |offset_at: usize, size_at: usize| {
            let offset = usize::try_from(be32(blob, offset_at)?).ok()?;
            let size = usize::try_from(be32(blob, size_at)?).ok()?;
            blob.get(offset..offset.checked_add(size)?)
        };
        Some(Self {
            structure: block(8, 36)?,
            strings: block(12, 32)?,
        })
    }

    /// The value of property `name` of the node `/node` (a child of the root, named with or
    /// without a unit address: `"psci"` matches `psci` and `psci@0`).
    pub fn property(&self, node: &str, name: &str) -> Option<&'a [u8]> {
        let structure = self.structure;
        let mut offset = 0;
        // Root is depth 1, its children depth 2.
        let mut depth = 0usize;
        let mut in_node = false;
        // Each token takes at least 4 bytes, so the loop ends with the structure block.
        loop {
            let token = be32(structure, offset)?;
            offset += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let node_name = c_str(structure.get(offset..)?)?;
                    offset = align4(offset.checked_add(node_name.len() + 1)?)?;
                    depth += 1;
                    if depth == 2 && node_matches(node_name, node) {
                        in_node = true;
                    }
                }
                FDT_END_NODE => {
                    if in_node && depth == 2 {
                        return None;
                    }
                    depth = depth.checked_sub(1)?;
                }
                FDT_PROP => {
                    let (prop_name, value, next) = self.prop(offset)?;
                    offset = next;
                    if in_node && depth == 2 && prop_name == name.as_bytes() {
                        return Some(value);
                    }
                }
                FDT_NOP => {}
                // FDT_END, or a token this parser does not know: the tree is over or bad.
                _ => return None,
            }
        }
    }
}

impl<'a> Fdt<'a> {
    /// The property whose `FDT_PROP` token ends just before `offset`: its name, its value and
    /// the offset of the next token.
    fn prop(&self, offset: usize) -> Option<(&'a [u8], &'a [u8], usize)> {
        let structure = self.structure;
        let len = usize::try_from(be32(structure, offset)?).ok()?;
        let name_offset = usize::try_from(be32(structure, offset + 4)?).ok()?;
        let value_start = offset + 8;
        let value_end = value_start.checked_add(len)?;
        let value = structure.get(value_start..value_end)?;
        let name = c_str(self.strings.get(name_offset..)?)?;
        Some((name, value, align4(value_end)?))
    }

    /// The value of the root node's property `name` (`#address-cells`, ...).
    pub fn root_property(&self, name: &str) -> Option<&'a [u8]> {
        let structure = self.structure;
        // The root node's begin token and name (empty, padded to 4 bytes) come first; its own
        // properties precede its first child.
        if be32(structure, 0)? != FDT_BEGIN_NODE {
            return None;
        }
        let mut offset = align4(4 + c_str(structure.get(4..)?)?.len() + 1)?;
        loop {
            let token = be32(structure, offset)?;
            offset += 4;
            match token {
                FDT_PROP => {
                    let (prop_name, value, next) = self.prop(offset)?;
                    offset = next;
                    if prop_name == name.as_bytes() {
                        return Some(value);
                    }
                }
                FDT_NOP => {}
                // A child node or the end: the root's properties are over.
                _ => return None,
            }
        }
    }
}

impl Fdt<'_> {
    /// Calls `found` with the `reg` of every `/cpus/cpu@N` node, in tree order: on Arm the
    /// CPU's MPIDR affinity fields (Aff3 in bits 39:32 with two address cells), what PSCI
    /// CPU_ON names a CPU by. `None` if the tree is malformed or has no `/cpus`.
    pub fn for_each_cpu_reg(&self, mut found: impl FnMut(u64)) -> Option<()> {
        let cells = self
            .property("cpus", "#address-cells")
            .and_then(|v| be32(v, 0))
            .unwrap_or(1);
        let structure = self.structure;
        let mut offset = 0;
        let mut depth = 0usize;
        // Set while inside `/cpus` (depth 2) and inside one of its `cpu@` children (depth 3).
        let mut in_cpus = false;
        let mut in_cpu = false;
        let mut seen_cpus = false;
        loop {
            let token = be32(structure, offset)?;
            offset += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let node_name = c_str(structure.get(offset..)?)?;
                    offset = align4(offset.checked_add(node_name.len() + 1)?)?;
                    depth += 1;
                    if depth == 2 && node_matches(node_name, "cpus") {
                        in_cpus = true;
                        seen_cpus = true;
                    }
                    in_cpu = in_cpus && depth == 3 && node_name.starts_with(b"cpu@");
                }
                FDT_END_NODE => {
                    if depth == 2 && in_cpus {
                        return Some(());
                    }
                    in_cpu = false;
                    depth = depth.checked_sub(1)?;
                }
                FDT_PROP => {
                    let (prop_name, value, next) = self.prop(offset)?;
                    offset = next;
                    if in_cpu && prop_name == b"reg" {
                        let reg = match cells {
                            1 => u64::from(be32(value, 0)?),
                            2 => (u64::from(be32(value, 0)?) << 32) | u64::from(be32(value, 4)?),
                            _ => return None,
                        };
                        found(reg);
                    }
                }
                FDT_NOP => {}
                _ => return seen_cpus.then_some(()),
            }
        }
    }
}

/// A string property's value as text: the bytes before the first NUL, if they are UTF-8.
pub fn as_str(value: &[u8]) -> Option<&str> {
    let text = value.split(|&b| b == 0).next().unwrap_or(&[]);
    core::str::from_utf8(text).ok()
}

fn node_matches(node_name: &[u8], wanted: &str) -> bool {
    match node_name.strip_prefix(wanted.as_bytes()) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b'@'),
        None => false,
    }
}

/// The bytes of `bytes` before its first NUL, or `None` if it has none.
fn c_str(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.iter().position(|&b| b == 0)?;
    bytes.get(..end)
}

fn align4(offset: usize) -> Option<usize> {
    Some(offset.checked_add(3)? & !3)
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes(word.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRT: &[u8] = include_bytes!("../../arch/smmuv3/tests/data/qemu10-virt-smmuv3-edu.dtb");

    #[test]
    fn reads_top_level_properties_of_a_qemu_blob() {
        let fdt = Fdt::new(VIRT).expect("valid blob");
        assert_eq!(fdt.property("psci", "method").and_then(as_str), Some("hvc"));
        assert!(fdt.property("chosen", "no-such-property").is_none());
        assert!(fdt.property("no-such-node", "method").is_none());
    }

    #[test]
    fn lists_the_cpus_of_a_qemu_blob() {
        let fdt = Fdt::new(VIRT).expect("valid blob");
        let mut regs = std::vec::Vec::new();
        assert_eq!(fdt.for_each_cpu_reg(|r| regs.push(r)), Some(()));
        assert_eq!(regs, [0]);
    }

    #[test]
    fn reads_the_root_cells_and_the_memory_node_of_a_qemu_blob() {
        let fdt = Fdt::new(VIRT).unwrap();
        assert_eq!(fdt.root_property("#address-cells"), Some(&[0, 0, 0, 2][..]));
        assert_eq!(fdt.root_property("#size-cells"), Some(&[0, 0, 0, 2][..]));
        assert_eq!(fdt.root_property("no-such-property"), None);
        let reg = fdt.property("memory", "reg").unwrap();
        assert_eq!(&reg[..8], &[0, 0, 0, 0, 0x40, 0, 0, 0], "RAM at 1 GiB");
    }

    #[test]
    fn damaged_blobs_give_none_not_panics() {
        assert!(Fdt::new(&VIRT[..39]).is_none());
        let mut bad = VIRT.to_vec();
        bad[0] ^= 1;
        assert!(Fdt::new(&bad).is_none());
        // Every truncation and a byte flip at many offsets: never a panic.
        for len in (0..VIRT.len().min(4096)).step_by(7) {
            if let Some(f) = Fdt::new(&VIRT[..len]) {
                let _ = f.property("chosen", "bootargs");
            }
        }
        for i in (0..VIRT.len().min(8192)).step_by(13) {
            let mut b = VIRT.to_vec();
            b[i] ^= 0xa5;
            if let Some(f) = Fdt::new(&b) {
                let _ = f.property("psci", "method");
            }
        }
    }
}
