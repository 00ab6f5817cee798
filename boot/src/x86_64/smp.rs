//! Starting the application processors (APs) of a q35 machine: APIC ids from the ACPI MADT,
//! INIT-SIPI-SIPI through the boot CPU's local APIC, and a real-mode trampoline below 1 MiB
//! that climbs 16-bit → 32-bit protected → long mode with the boot CPU's own page tables (CR3),
//! CR4 and EFER, then calls [`ap_entry`] on the AP's stack.
//!
//! One trampoline page serves every AP, so APs are started one at a time: `crate::smp` waits for
//! each to check in (reach Rust) before it rewrites the trampoline's data for the next. A started
//! AP runs one job and stops with `cli; hlt`; the next run restarts it with INIT-SIPI-SIPI.
//!
//! Delays (10 ms after INIT, 200 µs after a SIPI; Intel SDM vol. 3, 9.4.4.1) use the TSC,
//! calibrated at discovery against the ACPI PM timer (3.579545 MHz, its port from the FADT):
//! under TCG the TSC is the host's, of unknown frequency.

use super::{exceptions, interrupts};
use crate::smp::Cpu;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use iommu::acpi::{le, Acpi, Signature};
use iommu::poll::poll_until;
use x86_64::instructions::port::PortReadOnly;
use x86_64::registers::control::{Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, EferFlags, GsBase};
use x86_64::VirtAddr;

/// Where the trampoline is copied: a page below 1 MiB (a SIPI vector names a 4 KiB page there)
/// that nothing needs once the kernel runs. QEMU's PVH loader puts the command line, the one
/// thing the kernel keeps referring to, lower (seen at 0x11c0); [`discover`] checks it is not
/// in this page.
const TRAMPOLINE_BASE: u64 = 0x8000;
/// The SIPI vector: the trampoline's page number.
const SIPI_VECTOR: u32 = (TRAMPOLINE_BASE >> 12) as u32;
const _: () = assert!(TRAMPOLINE_BASE.is_multiple_of(4096) && TRAMPOLINE_BASE < 0x10_0000);

/// xAPIC registers (Intel SDM vol. 3, table 11-1) at the default base, mapped cache-disabled.
const LAPIC_BASE: u64 = 0xfee0_0000;
const LAPIC_ID: u64 = 0x20;
const LAPIC_ICR_LOW: u64 = 0x300;
const LAPIC_ICR_HIGH: u64 = 0x310;
/// ICR fields (SDM vol. 3, 11.6.1): delivery mode INIT (101b) and start-up (110b), level
/// assert, and the delivery status bit (1 = send pending).
const ICR_INIT: u32 = 0b101 << 8;
const ICR_STARTUP: u32 = 0b110 << 8;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_SEND_PENDING: u32 = 1 << 12;

/// The FADT's signature and its PM_TMR_BLK field (ACPI 6.5, table 5.9).
const FADT: Signature = Signature(*b"FACP");
const FADT_PM_TMR_BLK: usize = 76;
/// The ACPI PM timer's frequency; 24 bits always count (32 with FADT TMR_VAL_EXT).
const PM_TIMER_HZ: u64 = 3_579_545;
const PM_TIMER_MASK: u32 = 0x00ff_ffff;
/// Calibration length: 10 ms of PM timer ticks.
const CALIBRATION_PM_TICKS: u32 = (PM_TIMER_HZ / 100) as u32;

/// TSC ticks per microsecond, from [`calibrate_tsc`]. Relaxed: written once by the boot CPU
/// before any AP starts (starting one is ordered by `crate::smp`'s fence); never changes.
static TSC_PER_US: AtomicU64 = AtomicU64::new(0);

/// The trampoline's parameters, at `iommu_boot_ap_trampoline_data` (layout shared with the
/// assembly below).
#[repr(C)]
struct TrampolineData {
    cr3: u32,
    cr4: u32,
    /// EFER bits to set (LME, NXE as on the boot CPU).
    efer: u32,
    _pad: u32,
    stack_top: u64,
    entry: u64,
    cpu: u64,
}

// Assembled for the kernel image but only ever run from its copy at TRAMPOLINE_BASE: every
// address it uses is computed relative to that copy. SIPI starts it in real mode at
// CS:IP = (vector << 8):0000, so DS = 0 makes the copy's absolute addresses usable.
core::arch::global_asm!(
    r#"
    .pushsection .rodata.iommu_boot_ap_trampoline, "a", @progbits
    .balign 16
    .global iommu_boot_ap_trampoline_start
iommu_boot_ap_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl {base} + (.Ltr_gdtr - iommu_boot_ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, ${base} + (.Ltr_pm32 - iommu_boot_ap_trampoline_start)

    .code32
.Ltr_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl {base} + (.Ltr_cr4 - iommu_boot_ap_trampoline_start), %eax
    movl %eax, %cr4
    movl {base} + (.Ltr_cr3 - iommu_boot_ap_trampoline_start), %eax
    movl %eax, %cr3
    movl ${ia32_efer}, %ecx
    rdmsr
    orl {base} + (.Ltr_efer - iommu_boot_ap_trampoline_start), %eax
    wrmsr
    movl %cr0, %eax
    orl ${cr0_bits}, %eax
    movl %eax, %cr0
    ljmpl $0x18, ${base} + (.Ltr_lm64 - iommu_boot_ap_trampoline_start)

    .code64
.Ltr_lm64:
    movl $0x10, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    movq {base} + (.Ltr_stack - iommu_boot_ap_trampoline_start), %rsp
    movq {base} + (.Ltr_cpu - iommu_boot_ap_trampoline_start), %rdi
    movq {base} + (.Ltr_entry - iommu_boot_ap_trampoline_start), %rax
    xorl %ebp, %ebp
    callq *%rax
    ud2

    .balign 8
.Ltr_gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    /* 0x08: flat 32-bit code, accessed */
    .quad 0x00cf93000000ffff    /* 0x10: flat data, accessed */
    .quad 0x00af9b000000ffff    /* 0x18: 64-bit code, accessed */
.Ltr_gdt_end:
.Ltr_gdtr:
    .word .Ltr_gdt_end - .Ltr_gdt - 1
    .long {base} + (.Ltr_gdt - iommu_boot_ap_trampoline_start)

    .balign 8
    .global iommu_boot_ap_trampoline_data
iommu_boot_ap_trampoline_data:
.Ltr_cr3:
    .long 0
.Ltr_cr4:
    .long 0
.Ltr_efer:
    .long 0
    .long 0
.Ltr_stack:
    .quad 0
.Ltr_entry:
    .quad 0
.Ltr_cpu:
    .quad 0
    .global iommu_boot_ap_trampoline_end
iommu_boot_ap_trampoline_end:
    .code64
    .popsection
"#,
    base = const TRAMPOLINE_BASE,
    ia32_efer = const 0xc000_0080u32,
    cr0_bits = const 0x8001_0001u32,
    options(att_syntax),
);

unsafe extern "C" {
    static iommu_boot_ap_trampoline_start: u8;
    static iommu_boot_ap_trampoline_data: u8;
    static iommu_boot_ap_trampoline_end: u8;
}

fn lapic(offset: u64) -> *mut u32 {
    (LAPIC_BASE + offset) as *mut u32
}

/// This CPU's local APIC id, from its ID register.
pub(crate) fn hw_id() -> u64 {
    // SAFETY: the xAPIC ID register at the default base, mapped cache-disabled by the boot
    // code; a 32-bit aligned read with no side effect.
    u64::from(unsafe { lapic(LAPIC_ID).read_volatile() } >> 24)
}

/// The enabled CPUs of the MADT, boot CPU first; also calibrates the TSC and installs the
/// trampoline. Called once, on the boot CPU.
pub(crate) fn discover(info: &crate::BootInfo) -> Result<Vec<u64>, String> {
    let rsdp = info.rsdp.ok_or("no RSDP in the PVH start info")?;
    let acpi = Acpi::new(&super::LOW_MEMORY, rsdp).map_err(|e| format!("{e}"))?;
    let madt = acpi
        .find(crate::madt::SIGNATURE)
        .map_err(|e| format!("{e}"))?;
    let me = hw_id();
    let mut ids = alloc::vec![me];
    let mut bad = None;
    crate::madt::for_each_local_apic(madt.bytes(), |apic| {
        if apic.enabled && u64::from(apic.apic_id) != me {
            if apic.apic_id > 0xff {
                bad = Some(apic.apic_id);
            }
            ids.push(u64::from(apic.apic_id));
        }
    })
    .map_err(|e| format!("{e}"))?;
    if let Some(id) = bad {
        return Err(format!(
            "APIC id {id:#x} needs x2APIC mode, which this code does not use"
        ));
    }
    let fadt = acpi.find(FADT).map_err(|e| format!("{e}"))?;
    let pm_port = le::u32_at(fadt.bytes(), FADT_PM_TMR_BLK)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .ok_or("the FADT names no ACPI PM timer")?;
    calibrate_tsc(pm_port)?;
    install_trampoline(info.cmdline)?;
    Ok(ids)
}

fn read_pm_timer(port: u16) -> u32 {
    // SAFETY: `port` is the ACPI PM timer the FADT names; reading it has no side effect.
    unsafe { PortReadOnly::<u32>::new(port).read() & PM_TIMER_MASK }
}

/// Measures TSC ticks over 10 ms of the ACPI PM timer.
fn calibrate_tsc(pm_port: u16) -> Result<(), String> {
    let pm_start = read_pm_timer(pm_port);
    let tsc_start = super::read_tsc();
    let mut pm_ticks = 0;
    poll_until("the ACPI PM timer to count 10 ms", 100_000_000, || {
        pm_ticks = read_pm_timer(pm_port).wrapping_sub(pm_start) & PM_TIMER_MASK;
        pm_ticks >= CALIBRATION_PM_TICKS
    })
    .map_err(|e| format!("{e} (port {pm_port:#x})"))?;
    let tsc_ticks = super::read_tsc().wrapping_sub(tsc_start);
    let us = u64::from(pm_ticks) * 1_000_000 / PM_TIMER_HZ;
    let per_us = (tsc_ticks / us.max(1)).max(1);
    TSC_PER_US.store(per_us, Ordering::Relaxed);
    Ok(())
}

/// Microseconds since the TSC started; before calibration, as if it ran at 1 GHz.
pub(crate) fn now_us() -> u64 {
    let per_us = TSC_PER_US.load(Ordering::Relaxed);
    super::read_tsc() / if per_us == 0 { 1000 } else { per_us }
}

fn trampoline_range() -> (u64, usize, usize) {
    let start = (&raw const iommu_boot_ap_trampoline_start) as u64;
    let data = (&raw const iommu_boot_ap_trampoline_data) as u64;
    let end = (&raw const iommu_boot_ap_trampoline_end) as u64;
    (start, (data - start) as usize, (end - start) as usize)
}

/// Copies the trampoline to [`TRAMPOLINE_BASE`] with the boot CPU's paging registers in its data.
fn install_trampoline(cmdline: &str) -> Result<(), String> {
    let (start, data_offset, len) = trampoline_range();
    let page = TRAMPOLINE_BASE..TRAMPOLINE_BASE + 4096;
    let cmd = cmdline.as_ptr() as u64;
    if len > 4096 || page.contains(&cmd) || page.contains(&(cmd + cmdline.len() as u64)) {
        return Err(format!(
            "the AP trampoline page {TRAMPOLINE_BASE:#x} is not free (command line at {cmd:#x})"
        ));
    }
    let (frame, _) = Cr3::read_raw();
    let cr3 = u32::try_from(frame.start_address().as_u64())
        .map_err(|_| "the boot page tables lie above 4 GiB")?;
    let efer = Efer::read() & (EferFlags::LONG_MODE_ENABLE | EferFlags::NO_EXECUTE_ENABLE);
    // SAFETY: the trampoline page is identity-mapped low RAM that nothing else uses (checked
    // against the command line above; the start info is in the option ROM area), and no AP
    // runs yet. Source and destination do not overlap: the kernel is linked at 1 MiB.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE_BASE as *mut u8, len);
        let data = (TRAMPOLINE_BASE as usize + data_offset) as *mut TrampolineData;
        (&raw mut (*data).cr3).write_volatile(cr3);
        (&raw mut (*data).cr4).write_volatile(Cr4::read_raw() as u32);
        (&raw mut (*data).efer).write_volatile(efer.bits() as u32);
    }
    Ok(())
}

/// Waits until the local APIC has sent the last IPI.
fn wait_icr_idle() -> Result<(), String> {
    poll_until("the local APIC to send an IPI", 1_000_000, || {
        // SAFETY: reading the ICR of the boot CPU's enabled-or-not local APIC has no side effect.
        unsafe { lapic(LAPIC_ICR_LOW).read_volatile() & ICR_SEND_PENDING == 0 }
    })
    .map_err(|e| format!("{e}"))
}

fn send_ipi(apic_id: u32, command: u32) -> Result<(), String> {
    wait_icr_idle()?;
    // SAFETY: the ICR of this CPU's local APIC; the destination is written first because the
    // write of the low half sends the IPI. INIT and start-up IPIs only affect the target AP.
    unsafe {
        lapic(LAPIC_ICR_HIGH).write_volatile(apic_id << 24);
        lapic(LAPIC_ICR_LOW).write_volatile(command);
    }
    wait_icr_idle()
}

fn delay_us(us: u64) {
    let start = now_us();
    while now_us().saturating_sub(start) < us {
        core::hint::spin_loop();
    }
}

/// Starts `cpu` at [`ap_entry`] on the stack ending at `stack_top`: the trampoline's data, then
/// INIT, 10 ms, SIPI, 200 µs, SIPI (a SIPI reaches only a CPU waiting for one, so the second is
/// harmless when the first worked).
pub(crate) fn start(cpu: Cpu, stack_top: usize) -> Result<(), String> {
    let apic_id = u32::try_from(cpu.hw_id).map_err(|_| "APIC id out of range")?;
    let (_, data_offset, _) = trampoline_range();
    // SAFETY: the trampoline data in its page (installed by `discover`); no AP is in the
    // trampoline now: the previous one checked in from Rust before this call.
    unsafe {
        let data = (TRAMPOLINE_BASE as usize + data_offset) as *mut TrampolineData;
        (&raw mut (*data).stack_top).write_volatile(stack_top as u64);
        (&raw mut (*data).entry).write_volatile(ap_entry as *const () as u64);
        (&raw mut (*data).cpu).write_volatile(cpu.id.0 as u64);
    }
    // The data must be in memory before the AP can read it: the SIPI write below is to
    // uncached MMIO, which x86 orders after earlier stores; the fence keeps the compiler honest.
    core::sync::atomic::fence(Ordering::SeqCst);
    send_ipi(apic_id, ICR_INIT | ICR_LEVEL_ASSERT)?;
    delay_us(10_000);
    for _ in 0..2 {
        send_ipi(apic_id, ICR_STARTUP | ICR_LEVEL_ASSERT | SIPI_VECTOR)?;
        delay_us(200);
    }
    Ok(())
}

/// Where the trampoline lands, in long mode on the AP's stack with interrupts disabled.
extern "C" fn ap_entry(cpu: u64) -> ! {
    let index = cpu as usize;
    exceptions::init_ap(index);
    set_this_cpu(index);
    let _ = interrupts::enable_local_apic();
    crate::smp::secondary_main(index);
    stop_this_cpu()
}

/// The CPU index in GS base, where [`this_cpu`] reads it.
pub(crate) fn set_this_cpu(index: usize) {
    GsBase::write(VirtAddr::new(index as u64));
}

/// This CPU's index, from `IA32_GS_BASE`.
pub(crate) fn this_cpu() -> usize {
    GsBase::read().as_u64() as usize
}

/// Halts this CPU for good: only INIT (the next run's start) or an NMI wakes it.
pub(crate) fn stop_this_cpu() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
