//! What happens when the guest leaves EL1: the run loop, which serves print, report and exit
//! itself and hands hypercalls, MMIO (stage-2 data aborts decoded from the syndrome) and
//! interrupts to the hypervisor's [`Exits`]; the time budget's timer stops the guest.

use core::arch::asm;

use super::vcpu::Vcpu;
use super::vm::{timer_fired, Vm};
use super::{Exit, Outcome, HVC_EXIT, HVC_PRINT, HVC_REPORT};
use iommu_boot::testing::{fail, Failure, TestResult};

/// Vector indexes of a synchronous exception and an IRQ from a lower EL in AArch64.
const VECTOR_LOWER_SYNC: u64 = 8;
const VECTOR_LOWER_IRQ: u64 = 9;

/// ESR_EL2.EC values (Arm ARM D24.2.40).
const EC_HVC64: u64 = 0x16;
const EC_DABT_LOWER: u64 = 0x24;

/// More exits than the guest image makes (one per byte it prints): a guest looping on
/// hypercalls fails the test.
const MAX_EXITS: usize = 4096;

/// The IPA of a stage-2 abort: HPFAR_EL2.FIPA (IPA[51:12] in bits [43:4]) and the page offset
/// from FAR_EL2 (Arm ARM D24.2.49).
fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) & ((1 << 40) - 1)) << 12 | (far & 0xfff)
}

/// What a guest's exits beyond print, report and exit go to: the hypervisor's devices.
pub(crate) trait Exits {
    /// Hypercall `function` with argument `arg`.
    fn hypercall(&mut self, vm: &Vm, function: u64, arg: u64) -> TestResult {
        let _ = (vm, arg);
        Err(fail(format_args!(
            "guest called unknown hypercall {function}"
        )))
    }

    /// A physical interrupt (other than the time budget's) taken while the guest ran: true if
    /// handled.
    fn interrupt(&mut self, vm: &Vm) -> Result<bool, Failure> {
        let _ = vm;
        Ok(false)
    }

    /// A stage-2 data abort at `ipa` that the syndrome describes as `access`: true if an
    /// emulated device did the access (a read's value goes in `access.value`), false to
    /// record it as an abort.
    fn data_abort(&mut self, vm: &Vm, ipa: u64, access: &mut Mmio) -> Result<bool, Failure> {
        let _ = (vm, ipa, access);
        Ok(false)
    }
}

/// A guest without emulated devices or extra hypercalls.
pub(crate) struct NoDevices;
impl Exits for NoDevices {}

/// A load or store to emulated MMIO, decoded from ESR_EL2's data-abort syndrome (Arm ARM
/// D24.2.40, ISS for EC 0x24: ISV, SAS, SRT, WnR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mmio {
    pub write: bool,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The value written, or the value to read (zero-extended to the register).
    pub value: u64,
    /// The guest's register (31 = xzr).
    register: u8,
}

impl Mmio {
    /// Decodes the syndrome; None when it has no valid instruction syndrome (ISV = 0: a load or
    /// store pair, writeback, ...), which cannot be emulated.
    fn decode(esr: u64, vcpu: &Vcpu) -> Option<Self> {
        if esr >> 24 & 1 == 0 {
            return None;
        }
        let register = (esr >> 16 & 0x1f) as u8;
        let write = esr >> 6 & 1 == 1;
        let value = match register {
            31 => 0,
            r => vcpu.x[usize::from(r)],
        };
        Some(Self {
            write,
            size: 1 << (esr >> 22 & 3),
            value: if write { value } else { 0 },
            register,
        })
    }

    /// Completes a read: the value goes to the guest's register, masked to the access size.
    fn complete(&self, vcpu: &mut Vcpu) {
        if !self.write && self.register != 31 {
            let mask = u64::MAX >> (64 - 8 * u32::from(self.size));
            vcpu.x[usize::from(self.register)] = self.value & mask;
        }
    }
}

/// Enters the guest until it exits (HVC_EXIT), handling its hypercalls and stage-2 aborts.
pub(super) fn run_loop(
    vm: &Vm,
    vcpu: &mut Vcpu,
    exits: &mut dyn Exits,
) -> Result<Outcome, Failure> {
    let mut out = Outcome::default();
    for _ in 0..MAX_EXITS {
        // SAFETY: `Vm::run` set up stage 2 over the guest's RAM and masked interrupts; the
        // syndrome registers are read right below, before anything can trap to EL2.
        let vector = unsafe { vcpu.run() };
        let (esr, far, hpfar): (u64, u64, u64);
        // SAFETY: reading the syndrome registers has no side effect.
        unsafe {
            asm!(
                "mrs {}, esr_el2",
                "mrs {}, far_el2",
                "mrs {}, hpfar_el2",
                out(reg) esr,
                out(reg) far,
                out(reg) hpfar,
                options(nomem, nostack)
            )
        };
        let ec = esr >> 26 & 0x3f;
        if vector == VECTOR_LOWER_IRQ {
            if timer_fired() {
                out.exit = Exit::OutOfTime { pc: vcpu.pc };
                return Ok(out);
            }
            if exits.interrupt(vm)? {
                continue;
            }
        }
        if vector != VECTOR_LOWER_SYNC {
            return Err(fail(format_args!(
                "guest exit through vector {vector}, ESR {esr:#x}, ELR {:#x}",
                vcpu.pc
            )));
        }
        match ec {
            EC_HVC64 => match vcpu.x[0] {
                HVC_PRINT => out.console.push(char::from(vcpu.x[1] as u8)),
                HVC_REPORT => out.reports.push(vcpu.x[1]),
                HVC_EXIT => {
                    out.exit = Exit::Status(vcpu.x[1]);
                    return Ok(out);
                }
                f => exits.hypercall(vm, f, vcpu.x[1])?,
            },
            EC_DABT_LOWER => {
                let ipa = fault_ipa(hpfar, far);
                if let Some(mut access) = Mmio::decode(esr, vcpu) {
                    if exits.data_abort(vm, ipa, &mut access)? {
                        access.complete(vcpu);
                        vcpu.pc += 4;
                        continue;
                    }
                }
                out.aborts.push(ipa);
                // A data abort returns to the faulting instruction: skip it (A64, 4 bytes).
                vcpu.pc += 4;
            }
            _ => {
                return Err(fail(format_args!(
                    "unexpected guest exit: EC {ec:#x}, ESR {esr:#x}, FAR {far:#x}, \
                     HPFAR {hpfar:#x}, ELR {:#x}",
                    vcpu.pc
                )))
            }
        }
    }
    Err(fail(format_args!(
        "the guest did not exit within {MAX_EXITS} exits; so far {out:x?}"
    )))
}
