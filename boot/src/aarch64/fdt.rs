//! The devicetree QEMU places at the start of RAM, found before the heap exists.

use super::DTB_BASE;
pub(super) use crate::fdt::{as_str, Fdt};
use crate::fdt::{total_size, HEADER_LEN};

/// The blob QEMU placed at the start of RAM ([`DTB_BASE`]), if its magic is there.
///
/// Its size is taken from the header but bounded by the start of the kernel image, which QEMU
/// places the blob below; nothing writes that memory, so it lives as long as the kernel.
pub(super) fn dtb_at_start_of_ram() -> Option<Fdt<'static>> {
    unsafe extern "C" {
        /// First byte of the kernel image (boot/aarch64.ld).
        static __image_start: u8;
    }
    let image_start = (&raw const __image_start) as u64;
    let room = usize::try_from(image_start.checked_sub(DTB_BASE)?).ok()?;
    if room < HEADER_LEN {
        return None;
    }
    let start = DTB_BASE as *const u8;
    // SAFETY: [DTB_BASE, DTB_BASE + HEADER_LEN) is RAM below the kernel image (checked above),
    // identity-mapped, and not written by anyone.
    let header = unsafe { core::slice::from_raw_parts(start, HEADER_LEN) };
    let total = total_size(header)?;
    if total < HEADER_LEN || total > room {
        return None;
    }
    // SAFETY: as for the header: [DTB_BASE, DTB_BASE + total) lies in the same untouched RAM
    // below the kernel image, since `total <= room`.
    Fdt::new(unsafe { core::slice::from_raw_parts(start, total) })
}

/// The RAM ranges of the `/memory` node's `reg` (with the root's address and size cells;
/// QEMU's `virt` has one such node).
pub(super) fn memory(fdt: &Fdt<'_>) -> crate::memory::RamMap {
    let mut ram = crate::memory::RamMap::new();
    let cells = |name| {
        fdt.root_property(name)
            .and_then(|v| v.get(..4))
            .map_or(2, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (address_cells, size_cells) = (cells("#address-cells"), cells("#size-cells"));
    let Some(reg) = fdt.property("memory", "reg") else {
        return ram;
    };
    let number = |bytes: &[u8]| {
        bytes.chunks_exact(4).fold(0u64, |n, c| {
            n << 32 | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        })
    };
    let entry = 4 * (address_cells + size_cells);
    if (1..=4).contains(&address_cells) && (1..=4).contains(&size_cells) {
        for e in reg.chunks_exact(entry) {
            let (addr, size) = e.split_at(4 * address_cells);
            ram.push(number(addr), number(size));
        }
    }
    ram
}
