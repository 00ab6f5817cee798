//! The PVH start info (`struct hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`) that QEMU's
//! PVH loader hands over in EBX: where the command line, the ACPI RSDP and the memory map are.

use core::fmt;

use crate::memory::RamMap;

/// `XEN_HVM_START_MAGIC_VALUE`.
const HVM_START_MAGIC: u32 = 0x336e_c578;

/// Longest command line read; QEMU's own limit is far lower, this only bounds the NUL search.
const CMDLINE_MAX: usize = 64 * 1024;

/// The version-0 prefix of `struct hvm_start_info`; version 1 appends the memory map.
#[repr(C)]
#[derive(Clone, Copy)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
}

const _: () = assert!(core::mem::offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(core::mem::offset_of!(HvmStartInfo, rsdp_paddr) == 32);

/// What version 1 appends: the memory map (`memmap_paddr`, `memmap_entries`).
#[repr(C)]
#[derive(Clone, Copy)]
struct HvmStartInfoV1 {
    v0: HvmStartInfo,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

const _: () = assert!(core::mem::offset_of!(HvmStartInfoV1, memmap_paddr) == 40);

/// `struct hvm_memmap_table_entry`: one range of the E820-style memory map.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
const MEMMAP_RAM: u32 = 1;

/// Why the start info could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartInfoError {
    /// EBX did not point into mapped memory (the kernel was not started through PVH).
    Unmapped(u64),
    /// The structure's magic is not `XEN_HVM_START_MAGIC_VALUE`.
    BadMagic(u32),
}

impl fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmapped(paddr) => write!(f, "PVH start info at {paddr:#x} is not mapped"),
            Self::BadMagic(magic) => write!(
                f,
                "PVH start info magic is {magic:#x}, expected {HVM_START_MAGIC:#x}"
            ),
        }
    }
}

/// What the kernel learns from the start info.
pub(super) struct StartInfo {
    pub cmdline: &'static str,
    pub rsdp: Option<u64>,
    /// The RAM ranges of the memory map (none before version 1).
    pub ram: RamMap,
}

/// Whether `len` bytes at physical address `paddr` lie in the boot identity map. The boot stack's
/// guard page is not excluded: it is part of the kernel image, where QEMU puts nothing.
fn is_mapped(paddr: u64, len: u64) -> bool {
    // Page 0 is left unmapped to catch null pointers.
    paddr >= 0x1000
        && paddr
            .checked_add(len)
            .is_some_and(|end| end <= super::IDENTITY_MAP_END)
}

/// Reads the start info at physical address `paddr`.
///
/// # Safety
///
/// Runs under the boot identity map. If `paddr` is mapped, the memory there and the command line
/// it points to must not be written for the rest of the kernel's life: the returned command line
/// borrows it. QEMU places both below 1 MiB, which nothing in the kernel uses.
pub(super) unsafe fn read(paddr: u64) -> Result<StartInfo, StartInfoError> {
    if !is_mapped(paddr, size_of::<HvmStartInfo>() as u64) {
        return Err(StartInfoError::Unmapped(paddr));
    }
    // SAFETY: the range is identity-mapped RAM (checked above); the loader promises 8-byte
    // alignment but an unaligned read costs nothing and does not rely on it.
    let info = unsafe { (paddr as *const HvmStartInfo).read_unaligned() };
    if info.magic != HVM_START_MAGIC {
        return Err(StartInfoError::BadMagic(info.magic));
    }
    let mut ram = RamMap::new();
    if info.version >= 1 && is_mapped(paddr, size_of::<HvmStartInfoV1>() as u64) {
        // SAFETY: as above, for the longer version-1 structure (checked mapped).
        let v1 = unsafe { (paddr as *const HvmStartInfoV1).read_unaligned() };
        // QEMU puts the table in page 0 (0x5a8 on q35), which the boot map leaves unmapped.
        // SAFETY: the caller promises the start info's memory stays untouched; `memmap_ram`
        // reads only entries inside the identity map, page 0 mapped for the call.
        unsafe {
            super::pvh::with_page_zero(|| memmap_ram(v1.memmap_paddr, v1.memmap_entries, &mut ram))
        };
    }
    Ok(StartInfo {
        // SAFETY: the caller promises the command line stays untouched.
        cmdline: unsafe { cmdline(info.cmdline_paddr) },
        rsdp: (info.rsdp_paddr != 0).then_some(info.rsdp_paddr),
        ram,
    })
}

/// Adds the RAM entries of the `entries`-long memory map at `paddr` to `ram`.
///
/// # Safety
///
/// As for [`read`]: the table, if mapped, is not written for the kernel's life. Page 0 must be
/// mapped for the call ([`super::pvh::with_page_zero`]).
unsafe fn memmap_ram(paddr: u64, entries: u32, ram: &mut RamMap) {
    let len = u64::from(entries) * size_of::<MemmapEntry>() as u64;
    if paddr
        .checked_add(len)
        .is_none_or(|end| end > super::IDENTITY_MAP_END)
    {
        return;
    }
    let table = paddr as *const MemmapEntry;
    for i in 0..entries as usize {
        // SAFETY: entry `i` lies inside the table, which is mapped (checked above).
        let e = unsafe { table.add(i).read_unaligned() };
        if e.kind == MEMMAP_RAM {
            ram.push(e.addr, e.size);
        }
    }
}

/// The NUL-terminated command line at `paddr`; empty if absent, unterminated or not UTF-8.
///
/// # Safety
///
/// As for [`read`]: the bytes at `paddr` must stay unchanged for the kernel's life.
unsafe fn cmdline(paddr: u64) -> &'static str {
    if !is_mapped(paddr, 1) {
        return "";
    }
    let max = (super::IDENTITY_MAP_END - paddr).min(CMDLINE_MAX as u64) as usize;
    let start = paddr as *const u8;
    // Bytes are read one at a time so the search never touches memory past the terminator.
    // SAFETY: every `start + i` with `i < max` is identity-mapped (`max` stops at the map's end).
    let Some(len) = (0..max).find(|&i| unsafe { start.add(i).read() } == 0) else {
        return "";
    };
    // SAFETY: `len` bytes from `start` were just read, are mapped, and the caller promises they
    // stay unchanged, so a `'static` borrow holds.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}
