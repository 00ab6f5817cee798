//! The devicetree blob checked before the `fdt` crate reads it: `fdt` 0.1.5 can panic on a
//! malformed tree, so every header field, block bound, token and name it will follow is checked
//! here first, with a typed error for the first problem.

use super::{be32, DtError, Result};

/// Nesting limit: `fdt` keeps the path in a 64-entry array (root at index 1).
pub(super) const MAX_DEPTH: usize = 63;
pub(super) const FDT_MAGIC: u32 = 0xd00d_feed;
pub(super) const HEADER_LEN: usize = 40;
pub(super) const FDT_BEGIN_NODE: u32 = 1;
pub(super) const FDT_END_NODE: u32 = 2;
pub(super) const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
pub(super) const FDT_END: u32 = 9;

/// Checks the blob is a tree `fdt` can walk without panicking, and returns it cut to the size
/// its header declares.
pub(super) fn validate(blob: &[u8]) -> Result<&[u8]> {
    let field = |i: usize| be32(blob, i * 4);
    let (Some(magic), Some(total)) = (field(0), field(1)) else {
        return Err(DtError::Truncated {
            declared: HEADER_LEN,
            available: blob.len(),
        });
    };
    if magic != FDT_MAGIC {
        return Err(DtError::BadMagic(magic));
    }
    let total = total as usize;
    if blob.len() < HEADER_LEN || total < HEADER_LEN || total > blob.len() {
        return Err(DtError::Truncated {
            declared: total.max(HEADER_LEN),
            available: blob.len(),
        });
    }
    let blob = blob.get(..total).unwrap_or(&[]);
    let header = |i: usize| field(i).unwrap_or(0) as usize;
    let (off_struct, off_strings, version, last_comp) =
        (header(2), header(3), header(5), header(6));
    let (size_strings, size_struct) = (header(8), header(9));
    if version < 17 || last_comp > 16 {
        return Err(DtError::UnsupportedVersion(version as u32));
    }
    let block = |off: usize, size: usize, name: &'static str| {
        off.checked_add(size)
            .and_then(|end| blob.get(off..end))
            .ok_or(DtError::BlockOutOfBounds { block: name })
    };
    let structs = block(off_struct, size_struct, "structure")?;
    let strings = block(off_strings, size_strings, "strings")?;
    walk_structure(structs, strings)?;
    Ok(blob)
}

/// Walks the structure block token by token, as `fdt` will.
fn walk_structure(structs: &[u8], strings: &[u8]) -> Result<()> {
    let malformed = |offset: usize, problem: &'static str| DtError::Malformed { offset, problem };
    let mut pos = 0usize;
    let mut depth = 0usize;
    let mut seen_root = false;
    // Properties may only come before a node's first child.
    let mut props_allowed = false;
    loop {
        let token = be32(structs, pos).ok_or(malformed(pos, "truncated before FDT_END"))?;
        match token {
            FDT_NOP => pos += 4,
            FDT_BEGIN_NODE => {
                if depth == 0 && seen_root {
                    return Err(malformed(pos, "second root node"));
                }
                let name_start = pos + 4;
                let name = structs.get(name_start..).unwrap_or(&[]);
                let len = name
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(malformed(pos, "unterminated node name"))?;
                core::str::from_utf8(name.get(..len).unwrap_or(&[]))
                    .map_err(|_| malformed(pos, "node name is not UTF-8"))?;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DtError::TooDeep { offset: pos });
                }
                seen_root = true;
                props_allowed = true;
                pos = name_start + align4(len + 1);
            }
            FDT_PROP => {
                if depth == 0 {
                    return Err(malformed(pos, "property outside any node"));
                }
                if !props_allowed {
                    return Err(malformed(pos, "property after a child node"));
                }
                let (Some(len), Some(name_off)) = (be32(structs, pos + 4), be32(structs, pos + 8))
                else {
                    return Err(malformed(pos, "truncated property header"));
                };
                let value_start = pos + 12;
                let value_end = value_start
                    .checked_add(len as usize)
                    .filter(|&end| end <= structs.len())
                    .ok_or(malformed(pos, "property value runs past the block"))?;
                let name = strings
                    .get(name_off as usize..)
                    .and_then(|s| s.get(..s.iter().position(|&b| b == 0)?))
                    .ok_or(malformed(pos, "property name outside the strings block"))?;
                let name = core::str::from_utf8(name)
                    .map_err(|_| malformed(pos, "property name is not UTF-8"))?;
                // `fdt` reads these with `expect` when it computes cell sizes.
                if matches!(name, "#address-cells" | "#size-cells") && len != 4 {
                    return Err(malformed(pos, "#address-cells/#size-cells is not one cell"));
                }
                pos = value_start + align4(value_end - value_start);
            }
            FDT_END_NODE => {
                if depth == 0 {
                    return Err(malformed(pos, "FDT_END_NODE without a node"));
                }
                depth -= 1;
                props_allowed = false;
                pos += 4;
            }
            FDT_END => {
                if depth != 0 || !seen_root {
                    return Err(malformed(pos, "FDT_END inside a node or before the root"));
                }
                return Ok(());
            }
            _ => return Err(malformed(pos, "unknown token")),
        }
    }
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}
