//! The PVH boot path: QEMU `-kernel` finds the entry in an ELF note and jumps to it in 32-bit
//! protected mode; this file switches to long mode and hands over to `rt::start`.
//!
//! PVH entry state (Xen's `docs/misc/pvh.pandoc`): paging off, flat 32-bit CS/DS/ES/SS,
//! interrupts disabled, EBX = physical address of `struct hvm_start_info`, GDTR and IDTR
//! unusable, no stack.

use super::{exceptions, serial, start_info, IDENTITY_MAP_END, UNCACHED_START};
use crate::{BootInfo, ExitStatus};
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;
use x86_64::structures::paging::PageTableFlags;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note whose descriptor is the 32-bit entry's address.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const IA32_EFER: u32 = 0xc000_0080;
/// CPUID leaf 0x8000_0001, EDX bits.
const CPUID_EDX_NX: u32 = 20;
const CPUID_EDX_LM: u32 = 29;

const SIZE_2M: u64 = 2 << 20;
/// Number of 2 MiB page-directory entries in the identity map.
const PD_ENTRIES: u64 = IDENTITY_MAP_END / SIZE_2M;
/// Number of page directories (one per GiB, one PDPT entry each).
const PD_COUNT: u64 = PD_ENTRIES / 512;
/// First page-directory entry mapped cache-disabled.
const PD_FIRST_UNCACHED: u64 = UNCACHED_START / SIZE_2M;
/// First page-directory entry above 4 GiB, cached again (RAM above the PCI hole).
const PD_FIRST_HIGH: u64 = (4 << 30) / SIZE_2M;
const _: () = assert!(PD_COUNT <= 512 && PD_FIRST_UNCACHED < PD_FIRST_HIGH);
const _: () = assert!(PD_FIRST_HIGH <= PD_ENTRIES);

const TABLE_FLAGS: u64 = PageTableFlags::PRESENT.bits() | PageTableFlags::WRITABLE.bits();
const PAGE_4K_FLAGS: u64 = TABLE_FLAGS;
const PAGE_2M_FLAGS: u64 = TABLE_FLAGS | PageTableFlags::HUGE_PAGE.bits();
/// Uncached, not just write-through: device registers must see every access, in order.
const UNCACHED_FLAGS: u64 = PageTableFlags::NO_CACHE.bits() | PageTableFlags::WRITE_THROUGH.bits();
/// The NX bit as seen from 32-bit code, which writes the upper half of an entry separately.
const NX_HIGH: u64 = PageTableFlags::NO_EXECUTE.bits() >> 32;

/// Selectors of the boot GDT below; `exceptions::init` replaces it by one with the same code and
/// data selectors plus a TSS.
const BOOT_CODE_SELECTOR: u16 = 0x08;
const BOOT_DATA_SELECTOR: u16 = 0x10;

// The 32-bit half, in AT&T syntax because LLVM's Intel syntax has no spelling for a far jump with
// an immediate selector. `.bss` is zeroed first because the page tables live in it; it is also
// the only memory written before paging is on.
core::arch::global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: QEMU reads a 64-bit address for ELF64 */
    .long {xen_elfnote_phys32_entry}
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4
    .popsection

    .pushsection .text.pvh32, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cld
    mov %ebx, %ebp              /* the start info; CPUID clobbers EBX */

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb .Lno_long_mode
    mov $0x80000001, %eax
    cpuid
    bt ${cpuid_lm}, %edx
    jnc .Lno_long_mode

    /* EDI: EFER bits to set; ESI: upper half of uncached entries (NX only if the CPU has it,
       as a reserved bit would fault every access there). */
    mov ${efer_lme}, %edi
    xor %esi, %esi
    bt ${cpuid_nx}, %edx
    jnc .Lno_nx
    or ${efer_nxe}, %edi
    mov ${nx_high}, %esi
.Lno_nx:

    mov $boot_pdpt, %eax
    or ${table_flags}, %eax
    mov %eax, boot_pml4

    /* PDPT[0..pd_count] -> the page directories, one per GiB. */
    mov $boot_pd, %eax
    or ${table_flags}, %eax
    xor %ecx, %ecx
.Lfill_pdpt:
    mov %eax, boot_pdpt(,%ecx,8)
    add $4096, %eax
    inc %ecx
    cmp ${pd_count}, %ecx
    jne .Lfill_pdpt

    /* 2 MiB pages for the whole map; the gigabyte below 4 GiB uncached. EAX: the entry's low
       half, EDX: its high half (address bits 63:32, NX). */
    xor %ecx, %ecx
.Lfill_pd:
    mov %ecx, %eax
    shl $21, %eax
    or ${page_2m_flags}, %eax
    mov %ecx, %edx
    shr $11, %edx
    cmp ${pd_first_uncached}, %ecx
    jb .Lcached
    cmp ${pd_first_high}, %ecx
    jae .Lcached
    or ${uncached_flags}, %eax
    or %esi, %edx
.Lcached:
    mov %eax, boot_pd(,%ecx,8)
    mov %edx, boot_pd+4(,%ecx,8)
    inc %ecx
    cmp ${pd_entries}, %ecx
    jne .Lfill_pd

    /* The first 2 MiB in 4 KiB pages, so page 0 (null pointers) and the boot stack's guard page
       can stay unmapped. */
    mov $boot_pt0, %eax
    or ${table_flags}, %eax
    mov %eax, boot_pd
    movl $0, boot_pd+4
    mov $1, %ecx
.Lfill_pt0:
    mov %ecx, %eax
    shl $12, %eax
    or ${page_4k_flags}, %eax
    mov %eax, boot_pt0(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jne .Lfill_pt0
    mov $__boot_stack_guard, %eax
    shr $12, %eax
    movl $0, boot_pt0(,%eax,8)

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or ${cr4_pae}, %eax
    mov %eax, %cr4
    mov ${ia32_efer}, %ecx
    rdmsr
    or %edi, %eax
    wrmsr
    mov %cr0, %eax
    or ${cr0_bits}, %eax
    mov %eax, %cr0              /* long mode active, still running 32-bit code */

    lgdt boot_gdt_pointer
    ljmp ${code_selector}, $pvh_start64

.Lno_long_mode:
    mov $.Lno_long_mode_message, %esi
    mov $0x3f8, %dx
.Lprint:
    lodsb
    test %al, %al
    jz .Lexit
    out %al, %dx
    jmp .Lprint
.Lexit:
    mov ${exit_failure}, %eax
    mov ${exit_port}, %dx
    out %eax, %dx
.Lhalt:
    hlt
    jmp .Lhalt

    .code64
pvh_start64:
    mov ${data_selector}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $__boot_stack_top, %rsp
    mov %ebp, %edi              /* zero-extends: the start info's physical address */
    xor %ebp, %ebp              /* ends the frame-pointer chain for debuggers */
    call {rust_entry}
    ud2
    .popsection

    .pushsection .rodata.pvh_gdt, "a", @progbits
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 64-bit code, DPL 0, accessed (no write-back to rodata) */
    .quad 0x00cf93000000ffff    /* data, DPL 0, accessed */
boot_gdt_end:
    .balign 8
boot_gdt_pointer:
    .word boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
.Lno_long_mode_message:
    .asciz "iommu-boot: this CPU has no long mode\n"
    .popsection

    .pushsection .bss.pvh_page_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip {pd_count} * 4096
    .global boot_pt0
boot_pt0:
    .skip 4096
    .popsection
"#,
    xen_elfnote_phys32_entry = const XEN_ELFNOTE_PHYS32_ENTRY,
    cpuid_lm = const CPUID_EDX_LM,
    cpuid_nx = const CPUID_EDX_NX,
    efer_lme = const EferFlags::LONG_MODE_ENABLE.bits(),
    efer_nxe = const EferFlags::NO_EXECUTE_ENABLE.bits(),
    nx_high = const NX_HIGH,
    table_flags = const TABLE_FLAGS,
    page_4k_flags = const PAGE_4K_FLAGS,
    page_2m_flags = const PAGE_2M_FLAGS,
    uncached_flags = const UNCACHED_FLAGS,
    pd_entries = const PD_ENTRIES,
    pd_first_uncached = const PD_FIRST_UNCACHED,
    pd_first_high = const PD_FIRST_HIGH,
    pd_count = const PD_COUNT,
    cr4_pae = const Cr4Flags::PHYSICAL_ADDRESS_EXTENSION.bits(),
    ia32_efer = const IA32_EFER,
    cr0_bits = const Cr0Flags::PAGING.bits() | Cr0Flags::WRITE_PROTECT.bits(),
    code_selector = const BOOT_CODE_SELECTOR,
    data_selector = const BOOT_DATA_SELECTOR,
    exit_failure = const super::DEBUG_EXIT_FAILURE,
    exit_port = const super::ISA_DEBUG_EXIT_PORT,
    rust_entry = sym rust_entry,
    options(att_syntax),
);

unsafe extern "C" {
    /// The page table of the first 2 MiB (above), 4 KiB pages; entry 0 is page 0.
    static mut boot_pt0: [u64; 512];
}

/// Runs `f` with page 0 mapped (read-write, as the rest of low RAM), then unmaps it again: the
/// boot map leaves it out to catch null pointers, but firmware data can live there.
///
/// # Safety
///
/// Boot CPU only, before any other CPU runs (they share these tables); `f` must not keep a
/// reference into page 0.
pub(super) unsafe fn with_page_zero<R>(f: impl FnOnce() -> R) -> R {
    let entry = (&raw mut boot_pt0).cast::<u64>();
    // SAFETY: the table is the boot map's, live for the kernel's life; only this CPU runs, so
    // nothing walks or writes it concurrently; the INVLPGs drop the old translation of page 0.
    unsafe {
        entry.write_volatile(PAGE_4K_FLAGS);
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::zero());
    }
    let r = f();
    // SAFETY: as above.
    unsafe {
        entry.write_volatile(0);
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::zero());
    }
    r
}

/// The first Rust code: runs once, on the boot stack, in long mode under the identity map,
/// with `.bss` zeroed and interrupts disabled.
///
/// # Safety
///
/// Only `pvh_start64` calls it, once, with the start info address QEMU passed in EBX.
unsafe extern "C" fn rust_entry(start_info_paddr: u64) -> ! {
    serial::init();
    exceptions::init();
    // SAFETY: QEMU puts the start info and command line below 1 MiB, outside the kernel image and
    // heap, and nothing in the kernel writes there.
    let start = match unsafe { start_info::read(start_info_paddr) } {
        Ok(start) => start,
        Err(err) => {
            crate::console::_print_unlocked(format_args!("iommu-boot: {err}\n"));
            super::exit(ExitStatus::Failure)
        }
    };
    let info = BootInfo {
        cmdline: start.cmdline,
        rsdp: start.rsdp,
        dtb: None,
        exception_level: 0,
        ram: start.ram,
    };
    crate::rt::start(&info)
}
