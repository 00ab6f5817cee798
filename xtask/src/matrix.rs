//! The QEMU machines the test kernel boots on, and what each tells the kernel to expect.
//!
//! The command line carries the machine's configuration (`vtd.mode=scalable vtd.aw=39 ...`) so
//! the kernel can check what it decodes from the emulated hardware against what QEMU was asked
//! for.

use crate::Arch;
use std::time::Duration;

pub struct Machine {
    pub name: String,
    pub arch: Arch,
    pub args: Vec<String>,
    pub cmdline: String,
    pub timeout: Duration,
    /// Self-tests only: the failure reason the verdict must give.
    pub expect_reason: String,
}

impl Machine {
    /// The QEMU trace events the boot enables (`-trace EVENT` in its arguments).
    pub fn traced(&self) -> Vec<String> {
        self.args
            .windows(2)
            .filter(|w| w[0] == "-trace")
            .map(|w| w[1].clone())
            .collect()
    }
}

/// Three `edu` devices (two domains and one device never attached), with the full 64-bit DMA
/// mask: the default masks addresses to 28 bits, silently.
const EDUS: &str =
    "-device edu,dma_mask=0xffffffffffffffff -device edu,dma_mask=0xffffffffffffffff \
                    -device edu,dma_mask=0xffffffffffffffff";

/// Two more `edu`s behind a PCIe-to-PCI bridge (under a root port): QEMU gives their DMA the
/// bridge's alias requester id (secondary bus, 00.0), as hardware does. On q35 firmware
/// (SeaBIOS) numbers the buses and assigns the BARs; on `virt` the test kernel does.
const BRIDGED_EDUS: &str = "-device pcie-root-port,id=rp1,bus=pcie.0,chassis=1 \
                            -device pcie-pci-bridge,id=br1,bus=rp1 \
                            -device edu,bus=br1,addr=1,dma_mask=0xffffffffffffffff \
                            -device edu,bus=br1,addr=2,dma_mask=0xffffffffffffffff";

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Intel VT-d on q35: mode × address width × caching mode.
fn vtd_machine(mode: &str, aw: u32, cm: bool) -> Machine {
    let sm = match mode {
        "legacy" => "",
        "scalable" => ",x-scalable-mode=on",
        _ => ",x-scalable-mode=on,x-flts=on",
    };
    let cm_s = if cm { "on" } else { "off" };
    Machine {
        name: format!("x86_64 q35 vtd-{mode} aw{aw} cm={cm_s}"),
        arch: Arch::X86_64,
        args: words(&format!(
            "-machine q35 -m 256M -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
             -device intel-iommu,intremap=off,aw-bits={aw},caching-mode={cm_s}{sm} {EDUS} \
             {BRIDGED_EDUS}"
        )),
        cmdline: format!("vtd.mode={mode} vtd.aw={aw} vtd.cm={}", cm as u8),
        timeout: BOOT_TIMEOUT,
        expect_reason: String::new(),
    }
}

/// VT-d with interrupt remapping on (`intremap=on`; under TCG QEMU needs no
/// `kernel-irqchip=split` for it, and leaves EIM off): aw-bits 48, caching mode off. The
/// kernel is told `vtd.ir=1` and runs the MSI tests on top of all the others.
fn vtd_ir_machine(mode: &str) -> Machine {
    let mut m = vtd_machine(mode, 48, false);
    for arg in m.args.iter_mut().filter(|a| a.starts_with("intel-iommu,")) {
        *arg = arg.replacen("intremap=off", "intremap=on", 1);
    }
    m.name = format!("{} intremap", m.name);
    m.cmdline = format!("{} vtd.ir=1", m.cmdline);
    m
}

/// A PCIe function with an ATS capability (QEMU adds one to a virtio-pci device with `ats=on`
/// when it sits below a PCIe port; `disable-legacy=on` makes it PCIe-only).
const ATS_DEVICE: &str = "-device pcie-root-port,id=rp2,bus=pcie.0,chassis=2 \
                          -device virtio-rng-pci,bus=rp2,ats=on,disable-legacy=on";

/// VT-d offering device-TLBs (`device-iotlb=on`: ECAP.DT and an ATSR for every root port),
/// with an ATS-capable function beside the edus. The kernel is told `vtd.devtlb=1 pci.ats=1`.
fn vtd_devtlb_machine(mode: &str) -> Machine {
    let mut m = vtd_machine(mode, 48, false);
    for arg in m.args.iter_mut().filter(|a| a.starts_with("intel-iommu,")) {
        arg.push_str(",device-iotlb=on");
    }
    m.args.extend(words(ATS_DEVICE));
    // QEMU's trace of every invalidation descriptor, which the kernel's `@expect-trace` lines
    // check its device-TLB invalidations against.
    m.args.extend(words("-trace vtd_inv_desc"));
    m.name = format!("{} devtlb", m.name);
    m.cmdline = format!("{} vtd.devtlb=1 pci.ats=1", m.cmdline);
    m
}

/// Arm SMMUv3 on `virt`: QEMU 10's `virt` has a nested-capable SMMU (the `stage` property is
/// ignored there); `virt-9.0` honours `arm-smmuv3.stage` for stage-1-only or stage-2-only SMMUs.
fn smmu_machine(stage: &str, el2: bool) -> Machine {
    let (machine, global) = match stage {
        "nested" => ("virt", String::new()),
        s => ("virt-9.0", format!("-global arm-smmuv3.stage={s}")),
    };
    let virt = if el2 { ",virtualization=on" } else { "" };
    Machine {
        name: format!(
            "aarch64 {machine} smmuv3 stage={stage}{}",
            if el2 { " el2" } else { "" }
        ),
        arch: Arch::Aarch64,
        args: words(&format!(
            "-machine {machine},iommu=smmuv3{virt} -cpu max -m 256M -semihosting {global} {EDUS} \
             {BRIDGED_EDUS}"
        )),
        cmdline: format!("smmu.stage={stage}"),
        timeout: BOOT_TIMEOUT,
        expect_reason: String::new(),
    }
}

/// Arm SMMUv3 on `virt` with a GICv3 and its ITS (`gic-version=3`; the other boots have
/// `virt`'s default GICv2): the same tests, the SMMU's wired interrupt through the GICv3
/// distributor, and edu's MSIs as LPIs through the ITS.
fn smmu_gicv3_machine(el2: bool) -> Machine {
    let mut m = smmu_machine("nested", el2);
    let virt = if el2 { ",virtualization=on" } else { "" };
    let plain = format!("virt,iommu=smmuv3{virt}");
    for arg in m.args.iter_mut().filter(|a| **a == plain) {
        *arg = format!("{plain},gic-version=3");
    }
    m.name = format!(
        "aarch64 virt smmuv3 stage=nested gicv3{}",
        if el2 { " el2" } else { "" }
    );
    m
}

/// The slot (bus 0) of the `edu` the DMA API's tests drive at a narrow mask.
const MASKED_EDU_SLOT: u32 = 16;

/// `m` with 1 GiB of RAM and one more `edu`, at its default 28-bit DMA mask (no `dma_mask`), in
/// slot 16 (`dma.slot=16 dma.mask=28`): RAM above 256 MiB exists, and the DMA API must bring
/// buffers there within the device's reach. The other tests leave that `edu` alone.
fn with_masked_edu(mut m: Machine) -> Machine {
    set_memory(&mut m, "1G");
    m.args
        .extend(words(&format!("-device edu,addr={MASKED_EDU_SLOT:#x}")));
    m.cmdline
        .push_str(&format!(" dma.slot={MASKED_EDU_SLOT} dma.mask=28"));
    m.name.push_str(" dma-api");
    m
}

/// Sets `-m`.
fn set_memory(m: &mut Machine, size: &str) {
    if let Some(i) = m.args.iter().position(|a| a == "-m") {
        if let Some(v) = m.args.get_mut(i + 1) {
            *v = size.to_string();
        }
    }
}

/// `m` with 6 GiB of RAM and `mem.high=1`: the kernel takes every table, queue and DMA
/// buffer from the top of RAM, above 4 GiB.
fn with_high_memory(mut m: Machine) -> Machine {
    set_memory(&mut m, "6G");
    m.cmdline.push_str(" mem.high=1");
    m.name.push_str(" mem=6G high");
    m
}

/// A machine without an IOMMU (`iommu=none`): the kernel runs the DMA API's no-IOMMU tests
/// only, with an `edu` whose mask leaves RAM above its reach so buffers there must bounce.
/// x86: `edu`'s default 28-bit mask and 1 GiB. aarch64: RAM starts at 1 GiB on `virt`, so a
/// 28-bit `edu` reaches no RAM at all; a 32-bit mask and 6 GiB put RAM on both sides of it.
fn no_iommu_machine(arch: Arch) -> Machine {
    let (name, machine, mask, bits) = match arch {
        Arch::X86_64 => (
            "x86_64 q35 no-iommu",
            "-machine q35 -m 1G -device isa-debug-exit,iobase=0xf4,iosize=0x04",
            String::new(),
            28,
        ),
        Arch::Aarch64 => (
            "aarch64 virt no-iommu",
            "-machine virt -cpu max -m 6G -semihosting",
            ",dma_mask=0xffffffff".to_string(),
            32,
        ),
    };
    Machine {
        name: name.to_string(),
        arch,
        args: words(&format!(
            "{machine} -device edu,addr={MASKED_EDU_SLOT:#x}{mask}"
        )),
        cmdline: format!("iommu=none dma.slot={MASKED_EDU_SLOT} dma.mask={bits}"),
        timeout: BOOT_TIMEOUT,
        expect_reason: String::new(),
    }
}

/// CPUs of the multi-CPU boots.
const SMP_CPUS: u32 = 4;

/// `m` with `-smp N` (QEMU's TCG then runs one host thread per vCPU, MTTCG) and `smp=N` on the
/// command line: the kernel's SMP test expects exactly N CPUs; the other tests run on the boot
/// CPU as on the single-CPU boot.
fn with_smp(mut m: Machine) -> Machine {
    m.args.extend(words(&format!("-smp {SMP_CPUS}")));
    m.cmdline.push_str(&format!(" smp={SMP_CPUS}"));
    m.name.push_str(&format!(" smp={SMP_CPUS}"));
    m
}

pub fn machines() -> Vec<Machine> {
    let mut v = Vec::new();
    for mode in ["legacy", "scalable", "flts"] {
        // QEMU 10 refuses x-flts=on with aw-bits=39 ("supported value for aw-bits is: 48").
        let widths: &[u32] = if mode == "flts" { &[48] } else { &[48, 39] };
        for &aw in widths {
            for cm in [false, true] {
                let m = vtd_machine(mode, aw, cm);
                // One VT-d boot drives the DMA API's edu at its default mask.
                if (mode, aw, cm) == ("legacy", 48, false) {
                    v.push(with_masked_edu(m));
                } else {
                    v.push(m);
                }
            }
        }
    }
    for mode in ["legacy", "scalable", "flts"] {
        v.push(vtd_ir_machine(mode));
    }
    for mode in ["legacy", "scalable"] {
        v.push(vtd_devtlb_machine(mode));
    }
    v.push(with_masked_edu(smmu_machine("nested", false)));
    v.push(smmu_machine("nested", true));
    v.push(smmu_machine("1", false));
    v.push(smmu_machine("2", false));
    // A guest whose device is passed through a stage-2-only SMMU (no vSMMU for it there).
    v.push(smmu_machine("2", true));
    v.push(smmu_gicv3_machine(false));
    v.push(smmu_gicv3_machine(true));
    v.push(with_high_memory(vtd_machine("scalable", 48, false)));
    v.push(with_high_memory(smmu_machine("nested", false)));
    v.push(no_iommu_machine(Arch::X86_64));
    v.push(no_iommu_machine(Arch::Aarch64));
    v.push(with_smp(vtd_machine("legacy", 48, false)));
    v.push(with_smp(vtd_machine("scalable", 48, false)));
    v.push(with_smp(smmu_machine("nested", true)));
    v.push(with_smp(smmu_machine("2", false)));
    // One boot per architecture with the driver's `log` output on the console: the kernels'
    // `logging_follows_the_command_line` test checks it appears there and nowhere else.
    for name in [
        "x86_64 q35 vtd-scalable aw48 cm=on",
        "aarch64 virt smmuv3 stage=nested gicv3 el2",
    ] {
        if let Some(m) = v.iter_mut().find(|m| m.name == name) {
            m.name.push_str(" log=debug");
            m.cmdline.push_str(" log=debug");
        }
    }
    v
}

/// Boots that must fail: each plants one kind of fault (`selftest=...` in the kernel) and names
/// the reason the verdict has to give. If the runner ever stops catching one, the run fails.
pub fn self_tests() -> Vec<Machine> {
    let mut v = Vec::new();
    for (base, arch) in [
        (vtd_machine("legacy", 48, false), "x86_64"),
        (smmu_machine("nested", false), "aarch64"),
    ] {
        for (kind, reason, timeout) in [
            ("fail", "FAILED", BOOT_TIMEOUT),
            ("panic", "PANIC", BOOT_TIMEOUT),
            ("hang", "timed out", Duration::from_secs(5)),
            ("guest-error", "QEMU guest error", BOOT_TIMEOUT),
        ] {
            // The guest error comes from a fourth edu with the default 28-bit DMA mask, which
            // QEMU clamps and logs.
            let mut args = base.args.clone();
            args.extend(words("-device edu"));
            v.push(Machine {
                name: format!("{arch} self-test: deliberate {kind}"),
                arch: base.arch,
                args,
                cmdline: format!("{} selftest={kind}", base.cmdline),
                timeout,
                expect_reason: reason.to_string(),
            });
        }
        // A secondary CPU panics inside `on_every_cpu`: the run must fail, and the failure
        // must be the runner's own verdict naming that CPU, not just the printed panic.
        let smp = with_smp(base);
        v.push(Machine {
            name: format!("{arch} self-test: deliberate cpu-panic"),
            arch: smp.arch,
            args: smp.args,
            cmdline: format!("{} selftest=cpu-panic", smp.cmdline),
            timeout: BOOT_TIMEOUT,
            expect_reason: format!(
                "FAILED: cpu {last} ({} {last:#x}) panicked (caught by the runner)",
                if arch == "x86_64" { "APIC id" } else { "MPIDR" },
                last = SMP_CPUS - 1
            ),
        });
    }
    v
}

pub fn demo_machine(arch: Arch) -> Machine {
    match arch {
        // With interrupt remapping, so the demo shows MSIs given to a device's owner.
        Arch::X86_64 => vtd_ir_machine("scalable"),
        // At EL2, as a hypervisor runs, with a GICv3 ITS for MSIs.
        Arch::Aarch64 => smmu_gicv3_machine(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smp_boots_say_how_many_cpus_on_both_sides() {
        let smp: Vec<Machine> = machines()
            .into_iter()
            .filter(|m| m.name.contains("smp="))
            .collect();
        assert_eq!(smp.len(), 4);
        for m in smp {
            assert!(m.cmdline.contains("smp=4"), "{}", m.name);
            assert!(
                m.args.windows(2).any(|w| w[0] == "-smp" && w[1] == "4"),
                "{}",
                m.name
            );
        }
    }

    #[test]
    fn device_tlb_boots_tell_the_kernel_and_offer_an_ats_function() {
        let devtlb: Vec<Machine> = machines()
            .into_iter()
            .filter(|m| m.args.iter().any(|a| a.contains("device-iotlb=on")))
            .collect();
        assert_eq!(devtlb.len(), 2);
        for m in devtlb {
            assert!(m.cmdline.contains("vtd.devtlb=1 pci.ats=1"), "{}", m.name);
            assert!(m.args.iter().any(|a| a.contains("ats=on")), "{}", m.name);
            assert_eq!(m.traced(), ["vtd_inv_desc"], "{}", m.name);
        }
    }

    #[test]
    fn one_boot_per_architecture_logs_at_debug() {
        let logged: Vec<Arch> = machines()
            .iter()
            .filter(|m| m.cmdline.contains("log=debug") && m.name.ends_with("log=debug"))
            .map(|m| m.arch)
            .collect();
        assert_eq!(logged, [Arch::X86_64, Arch::Aarch64]);
    }
}
