//! Loads the guest image: the PT_LOAD segments of an AArch64 ELF64 into the guest's RAM. The
//! image is input like any other: every segment and the entry must lie inside the RAM.

use super::vm::GuestRam;
use super::GUEST_RAM_IPA;
use iommu_boot::testing::{fail, Failure};

/// ELF64 header and program header fields the loader reads (System V gABI, "ELF Header" and
/// "Program Header"), little-endian.
const EM_AARCH64: u16 = 183;
const PT_LOAD: u32 = 1;

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Copies the PT_LOAD segments of `elf` into the guest's RAM (at their physical addresses,
/// which are IPAs) and returns the entry point and the end of the highest segment. Every
/// segment must lie inside the guest's RAM: the image is input, checked like any.
pub(super) fn load_elf(elf: &[u8], ram: &GuestRam) -> Result<(u64, u64), Failure> {
    let bad = || fail("the guest image is not an AArch64 ELF64 the loader can place");
    if elf.get(0..4) != Some(b"\x7fELF".as_slice())
        || elf.get(4) != Some(&2)
        || elf.get(5) != Some(&1)
        || le_u16(elf, 18) != Some(EM_AARCH64)
    {
        return Err(bad());
    }
    let entry = le_u64(elf, 24).ok_or_else(bad)?;
    let phoff = le_u64(elf, 32).ok_or_else(bad)? as usize;
    let phentsize = usize::from(le_u16(elf, 54).ok_or_else(bad)?);
    let phnum = usize::from(le_u16(elf, 56).ok_or_else(bad)?);
    let mut end = GUEST_RAM_IPA;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if le_u32(elf, ph) != Some(PT_LOAD) {
            continue;
        }
        let offset = le_u64(elf, ph + 8).ok_or_else(bad)? as usize;
        let paddr = le_u64(elf, ph + 24).ok_or_else(bad)?;
        let filesz = le_u64(elf, ph + 32).ok_or_else(bad)?;
        let memsz = le_u64(elf, ph + 40).ok_or_else(bad)?;
        let seg_end = paddr.checked_add(memsz).ok_or_else(bad)?;
        if paddr < GUEST_RAM_IPA || seg_end > GUEST_RAM_IPA + ram.size() || filesz > memsz {
            return Err(fail(format_args!(
                "guest segment {paddr:#x}..{seg_end:#x} is outside its RAM"
            )));
        }
        let bytes = elf.get(offset..offset + filesz as usize).ok_or_else(bad)?;
        // The rest of the segment up to memsz is .bss, already zero (the RAM starts zeroed).
        ram.copy_in(paddr - GUEST_RAM_IPA, bytes)?;
        end = end.max(seg_end);
    }
    if !(GUEST_RAM_IPA..end).contains(&entry) {
        return Err(fail(format_args!(
            "guest entry {entry:#x} is outside its image"
        )));
    }
    Ok((entry, end))
}
