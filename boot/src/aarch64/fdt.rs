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
