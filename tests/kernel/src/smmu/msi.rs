//! MSIs as LPIs on a GICv3 with an ITS: edu's MSI (its PCI MSI capability programmed with
//! GITS_TRANSLATER and an EventID) is translated by the ITS, for the DeviceID the PCIe host's
//! `msi-map` gives edu's requester id, into the LPI mapped for that event, and taken as an IRQ.
//!
//! The edus are attached through the SMMU with a bypass STE, so the MSI write reaches the ITS
//! untranslated (QEMU's SMMUv3 has no MSI support of its own, IDR0.MSI = 0: an MSI is a DMA
//! write like any other). On GICv2 machines every test here skips.
//!
//! A write to GITS_TRANSLATER that translates to nothing (an unmapped DeviceID, a discarded
//! event) is logged by QEMU as a guest error; the tests that provoke one announce it.

use alloc::vec::Vec;

use super::dma::{preferred_stage, unit, TRANSLATION_FAILED};
use crate::dma::IA_BITS;
use crate::platform::{devicetree, edu_devices, gicv3, its, pci_config, EduDevice};
use crate::Machine;
use iommu::addr::{Iova, PhysAddr};
use iommu::iommufd::{
    Error, GroupId, Iommu, Layout, OwnerId, Region, Reserved, ReservedKind, Target,
};
use iommu::irq::{InterruptRemapper, InterruptTarget, MsiMessage, RemappedInterrupt};
use iommu::pagetable::Prot;
use iommu::poll::{poll_until, DEFAULT_POLL_BUDGET};
use iommu::unit::{Attachment, DeviceId, FaultKind, HardwareError, TranslationUnit, UnitError};
use iommu_boot::aarch64::gic;
use iommu_boot::aarch64::gicv3::FIRST_LPI;
use iommu_boot::aarch64::its::{Its, ItsError};
use iommu_boot::pci::MsiCapability;
use iommu_boot::testing::{allow_guest_error, fail, Failure, TestResult};
use iommu_boot::{ensure, ensure_eq, println};

/// What QEMU 10 logs for a GITS_TRANSLATER write from a DeviceID without a valid device table
/// entry ("...: invalid dte for 16"), and for an event whose ITE was discarded.
const UNMAPPED_DEVICE: &str = "do_process_its_cmd: invalid command attributes: invalid dte";
const DISCARDED_EVENT: &str = "do_process_its_cmd: invalid command attributes: invalid ITE";

/// The edu status bit the tests raise.
const EDU_IRQ: u32 = 1;

/// How long a test waits for an IRQ that must not come. QEMU delivers edu's MSI inside the
/// MMIO write that raises it, and the CPU takes the IRQ at the next instruction boundary after
/// the translation block, so this is generous.
const QUIET_POLLS: u32 = 200_000;

/// One edu ready for MSIs: its ITS DeviceID, its stream id, its MSI capability.
struct MsiEdu {
    edu: EduDevice,
    device_id: u32,
    stream: DeviceId,
    msi: MsiCapability,
}

/// The ITS, and the first `n` bus-0 edus attached with bypass STEs, their DeviceIDs from the
/// host's `msi-map`, each unmapped at the ITS and with MSI off.
fn rig(m: &Machine, n: usize) -> Result<(&'static Its, Vec<MsiEdu>), Failure> {
    gicv3(m)?;
    let its = its(m)?;
    let unit = unit(m)?;
    let cfg = pci_config(m)?;
    let dt = devicetree(m)?;
    let host = dt
        .pci_hosts()
        .next()
        .ok_or_else(|| fail("no PCIe host"))?
        .map_err(fail)?;
    let mut out = Vec::new();
    for edu in edu_devices(m)?.into_iter().take(n) {
        let rid = edu.bdf.requester_id();
        let (_, device_id) = dt.msi_device_id(&host, rid).map_err(fail)?;
        let (_, sid) = dt.stream_id(&host, rid).map_err(fail)?;
        let msi = MsiCapability::find(&cfg, edu.bdf).map_err(fail)?;
        msi.set_enabled(&cfg, false);
        its.unmap_device(device_id).map_err(fail)?;
        unit.attach(DeviceId(sid), Attachment::Identity)
            .map_err(fail)?;
        out.push(MsiEdu {
            edu,
            device_id,
            stream: DeviceId(sid),
            msi,
        });
    }
    ensure_eq!(out.len(), n, "needs {n} edu devices");
    Ok((its, out))
}

/// Programs `e`'s MSI to write `event_id` to the ITS doorbell, and enables it.
fn program_msi(m: &Machine, its: &Its, e: &MsiEdu, event_id: u16) -> TestResult {
    let cfg = pci_config(m)?;
    let message = MsiMessage {
        address: its.doorbell(),
        data: u32::from(event_id),
    };
    e.msi.set_message(&cfg, message).map_err(fail)?;
    ensure_eq!(
        e.msi.message(&cfg),
        message,
        "the MSI capability reads back"
    );
    e.msi.set_enabled(&cfg, true);
    ensure!(e.msi.is_enabled(&cfg), "MSI enable did not stick");
    Ok(())
}

/// Raises `e`'s interrupt with IRQs unmasked; returns how many IRQs were taken meanwhile,
/// waiting for at least one for `expect_one`, or the full quiet period otherwise.
fn raise(e: &MsiEdu, expect_one: bool) -> u32 {
    let before = gic::irqs_taken();
    gic::with_irqs_unmasked(|| {
        e.edu.edu.raise_interrupt(EDU_IRQ);
        if expect_one {
            let _ = poll_until("the LPI", DEFAULT_POLL_BUDGET, || {
                gic::irqs_taken() != before
            });
        } else {
            let _ = poll_until("nothing", QUIET_POLLS, || gic::irqs_taken() != before);
        }
    });
    e.edu.edu.acknowledge_interrupt(EDU_IRQ);
    gic::irqs_taken().wrapping_sub(before)
}

/// Leaves the edus as the other tests expect them: MSI off, unmapped at the ITS, blocked.
fn tear_down(m: &Machine, its: &Its, edus: &[MsiEdu]) -> TestResult {
    let cfg = pci_config(m)?;
    let unit = unit(m)?;
    for e in edus {
        e.msi.set_enabled(&cfg, false);
        its.unmap_device(e.device_id).map_err(fail)?;
        unit.attach(e.stream, Attachment::Blocking).map_err(fail)?;
    }
    Ok(())
}

pub fn edu_msi_becomes_the_lpi_mapped_for_it(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 1)?;
    let a = &edus[0];
    ensure_eq!(
        a.device_id,
        u32::from(a.edu.bdf.requester_id()),
        "virt's msi-map gives the requester id as DeviceID"
    );
    let lpi = FIRST_LPI + 3;
    let event_id = 5;
    let result = (|| {
        its.map_device(a.device_id, 8).map_err(fail)?;
        its.map_interrupt(a.device_id, event_id, lpi)
            .map_err(fail)?;
        program_msi(m, its, a, event_id as u16)?;
        let taken = raise(a, true);
        ensure_eq!(taken, 1, "one MSI, one LPI taken");
        ensure_eq!(
            gic::last_irq(),
            Some(lpi),
            "the handler took the LPI mapped for edu's event"
        );
        // A second MSI: the LPI was ended, so it is taken again.
        ensure_eq!(raise(a, true), 1, "the next MSI is taken too");
        ensure_eq!(gic::last_irq(), Some(lpi));
        // An EventID that is its own LPI number (the driver maps it with MAPI), in an ITT
        // remapped large enough for it.
        let same = FIRST_LPI + 20;
        its.map_device(a.device_id, same + 1).map_err(fail)?;
        its.map_interrupt(a.device_id, same, same).map_err(fail)?;
        let data = u16::try_from(same).map_err(fail)?;
        program_msi(m, its, a, data)?;
        ensure_eq!(raise(a, true), 1, "the MSI of the MAPI-mapped event");
        ensure_eq!(gic::last_irq(), Some(same));
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    result
}

pub fn lpi_of_one_device_cannot_be_raised_by_another(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 2)?;
    let (a, b) = (&edus[0], &edus[1]);
    ensure!(a.device_id != b.device_id, "two edus, two DeviceIDs");
    let lpi = FIRST_LPI + 7;
    let event_id = 0;
    let result = (|| {
        its.map_device(a.device_id, 1).map_err(fail)?;
        its.map_interrupt(a.device_id, event_id, lpi)
            .map_err(fail)?;
        program_msi(m, its, a, event_id as u16)?;
        // b writes a's EventID to the same doorbell, but the ITS knows it by its own DeviceID,
        // which has no ITT.
        program_msi(m, its, b, event_id as u16)?;
        allow_guest_error(UNMAPPED_DEVICE);
        let before = gic::last_irq();
        ensure_eq!(raise(b, false), 0, "another device's MSI raised an LPI");
        ensure_eq!(gic::last_irq(), before);
        // The mapping itself works: a's MSI is taken.
        ensure_eq!(raise(a, true), 1, "the mapped device's MSI");
        ensure_eq!(gic::last_irq(), Some(lpi));
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    result
}

pub fn discard_stops_the_lpi(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 1)?;
    let a = &edus[0];
    let lpi = FIRST_LPI + 11;
    let event_id = 1;
    let result = (|| {
        its.map_device(a.device_id, 2).map_err(fail)?;
        its.map_interrupt(a.device_id, event_id, lpi)
            .map_err(fail)?;
        program_msi(m, its, a, event_id as u16)?;
        ensure_eq!(raise(a, true), 1, "the MSI before DISCARD");
        ensure_eq!(gic::last_irq(), Some(lpi));
        its.discard(a.device_id, event_id).map_err(fail)?;
        allow_guest_error(DISCARDED_EVENT);
        ensure_eq!(raise(a, false), 0, "the MSI after DISCARD raised an LPI");
        // Mapped again, the same event raises the LPI again.
        its.map_interrupt(a.device_id, event_id, lpi)
            .map_err(fail)?;
        ensure_eq!(raise(a, true), 1, "the MSI after mapping it again");
        ensure_eq!(gic::last_irq(), Some(lpi));
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    result
}

/// QEMU sends an MSI through the IOMMU like any DMA write (its SMMUv3 has no MSI bypass): with
/// edu in a paging domain that does not map the ITS doorbell, the MSI faults at the SMMU and no
/// LPI is raised; once the doorbell page is mapped (IOVA = its physical address), the same MSI
/// is taken.
pub fn msi_through_a_paging_domain_needs_the_doorbell_mapped(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 1)?;
    let a = &edus[0];
    let unit = unit(m)?;
    let lpi = FIRST_LPI + 13;
    let event_id = 0;
    let doorbell_page = its.doorbell() & !0xfff;
    let domain = unit
        .new_domain(preferred_stage(unit), IA_BITS)
        .map_err(fail)?;
    let result = (|| {
        unit.attach(a.stream, Attachment::Paging(&domain))
            .map_err(fail)?;
        unit.drain_faults(&mut |_| {}).map_err(fail)?;
        its.map_device(a.device_id, 1).map_err(fail)?;
        its.map_interrupt(a.device_id, event_id, lpi)
            .map_err(fail)?;
        program_msi(m, its, a, event_id as u16)?;
        allow_guest_error(TRANSLATION_FAILED);
        ensure_eq!(raise(a, false), 0, "an MSI through an unmapped doorbell");
        let mut faults = Vec::new();
        unit.drain_faults(&mut |f| faults.push(f)).map_err(fail)?;
        ensure!(
            faults.iter().any(|f| f.device == a.stream
                && f.address == its.doorbell()
                && f.write
                && f.kind == FaultKind::Translation),
            "the SMMU recorded the MSI write to the doorbell: {faults:?}"
        );
        unit.map(
            &domain,
            Iova::new(doorbell_page),
            PhysAddr::new(doorbell_page),
            4096,
            Prot::READ_WRITE,
        )
        .map_err(fail)?;
        ensure_eq!(raise(a, true), 1, "the MSI through the mapped doorbell");
        ensure_eq!(gic::last_irq(), Some(lpi));
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    drop(domain);
    result
}

/// How many EventIDs each device's ITT gets when the object model first maps it.
const EVENTS_PER_DEVICE: u32 = 32;

/// The ITS as the object model's interrupt remapper for the SMMU's devices: the DeviceId the
/// model passes is the unit's (the stream id), translated to the ITS DeviceID through the
/// PCIe host's `iommu-map` and `msi-map` (both read from the devicetree by [`rig`]); the
/// target's vector is the LPI; only CPU 0's collection exists. EventIDs are handed out per
/// device, lowest free first.
struct ItsRemapper {
    its: &'static Its,
    /// (stream id, ITS DeviceID) of the devices it may serve.
    devices: Vec<(DeviceId, u32)>,
    /// Per ITS DeviceID: whether it has an ITT, and which EventIDs are in use (bit n).
    events: spin::Mutex<alloc::collections::BTreeMap<u32, u32>>,
}

impl ItsRemapper {
    /// The remapper for `edus`, boxed for [`Iommu::set_interrupt_remapper`].
    fn boxed(its: &'static Its, edus: &[MsiEdu]) -> alloc::boxed::Box<Self> {
        alloc::boxed::Box::new(Self {
            its,
            devices: edus.iter().map(|e| (e.stream, e.device_id)).collect(),
            events: spin::Mutex::new(alloc::collections::BTreeMap::new()),
        })
    }

    fn its_device(&self, device: DeviceId) -> Result<u32, UnitError> {
        self.devices
            .iter()
            .find(|(stream, _)| *stream == device)
            .map(|(_, id)| *id)
            .ok_or(UnitError::UnknownDevice(device))
    }
}

/// The ITS's refusals in the core's words.
fn its_error(e: ItsError) -> UnitError {
    match e {
        ItsError::Timeout(t) => UnitError::Timeout(t),
        ItsError::OutOfMemory => UnitError::OutOfMemory,
        ItsError::Stalled { .. } => UnitError::Hardware(HardwareError::CommandRejected),
        _ => UnitError::Unsupported("ITS refused the mapping"),
    }
}

impl InterruptRemapper for ItsRemapper {
    fn allocate(
        &self,
        device: DeviceId,
        target: InterruptTarget,
    ) -> Result<RemappedInterrupt, UnitError> {
        if target.cpu != 0 || target.vector < FIRST_LPI {
            return Err(UnitError::Unsupported("LPIs on CPU 0's collection only"));
        }
        let its_device = self.its_device(device)?;
        let mut events = self.events.lock();
        let used = match events.get(&its_device) {
            Some(used) => *used,
            None => {
                self.its
                    .map_device(its_device, EVENTS_PER_DEVICE)
                    .map_err(its_error)?;
                events.insert(its_device, 0);
                0
            }
        };
        let event = (!used).trailing_zeros();
        if event >= EVENTS_PER_DEVICE {
            return Err(UnitError::OutOfIds);
        }
        self.its
            .map_interrupt(its_device, event, target.vector)
            .map_err(its_error)?;
        events.insert(its_device, used | 1 << event);
        Ok(RemappedInterrupt {
            device,
            handle: event,
            message: MsiMessage {
                address: self.its.doorbell(),
                data: event,
            },
            target,
        })
    }

    /// DISCARD, then MAPTI with the new LPI: an MSI in between raises nothing.
    fn retarget(
        &self,
        irq: &mut RemappedInterrupt,
        target: InterruptTarget,
    ) -> Result<(), UnitError> {
        if target.cpu != 0 || target.vector < FIRST_LPI {
            return Err(UnitError::Unsupported("LPIs on CPU 0's collection only"));
        }
        let its_device = self.its_device(irq.device)?;
        self.its
            .discard(its_device, irq.handle)
            .map_err(its_error)?;
        self.its
            .map_interrupt(its_device, irq.handle, target.vector)
            .map_err(its_error)?;
        irq.target = target;
        Ok(())
    }

    fn free(&self, irq: RemappedInterrupt) -> Result<(), UnitError> {
        let its_device = self.its_device(irq.device)?;
        self.its
            .discard(its_device, irq.handle)
            .map_err(its_error)?;
        if let Some(used) = self.events.lock().get_mut(&its_device) {
            *used &= !(1 << irq.handle);
        }
        Ok(())
    }

    fn doorbell(&self) -> Option<PhysAddr> {
        Some(PhysAddr::new(self.its.doorbell() & !0xfff))
    }
}

/// The first edu's MSIs for a hypervisor's guest (`crate::hyp`): the ITS, edu ready for MSIs
/// (unmapped at the ITS, MSI off), and the ITS as the object model's remapper for it.
pub(crate) struct GuestMsi {
    its: &'static Its,
    edus: Vec<MsiEdu>,
}

impl GuestMsi {
    /// Skips on GICv2 machines (no ITS).
    pub fn new(m: &Machine) -> Result<Self, Failure> {
        let (its, edus) = rig(m, 1)?;
        Ok(Self { its, edus })
    }

    /// The ITS as the unit's interrupt remapper for edu.
    pub fn remapper(&self) -> alloc::boxed::Box<dyn InterruptRemapper + Send + Sync> {
        ItsRemapper::boxed(self.its, &self.edus)
    }

    /// The page of the ITS doorbell (GITS_TRANSLATER), which edu's MSI writes.
    pub fn doorbell_page(&self) -> PhysAddr {
        PhysAddr::new(self.its.doorbell() & !0xfff)
    }

    /// Programs edu's MSI capability with what the object model handed out.
    pub fn program(&self, m: &Machine, irq: &RemappedInterrupt) -> TestResult {
        let e = self.edus.first().ok_or_else(|| fail("no edu"))?;
        program_remapped(m, self.its, e, irq)
    }

    /// Leaves edu as the other tests expect it.
    pub fn tear_down(&self, m: &Machine) -> TestResult {
        tear_down(m, self.its, &self.edus)
    }
}

/// Programs `e`'s MSI capability with what the object model handed out.
fn program_remapped(m: &Machine, its: &Its, e: &MsiEdu, irq: &RemappedInterrupt) -> TestResult {
    ensure_eq!(irq.message.address, its.doorbell(), "the ITS doorbell");
    program_msi(m, its, e, u16::try_from(irq.message.data).map_err(fail)?)
}

/// The object model gives a device's interrupts to its owner: claiming needs the ITS
/// registered as the unit's remapper; the owner's interrupt is the LPI it asked for, moves when
/// retargeted, cannot be named by another owner nor raised by another owner's device, and is
/// discarded when the device is released.
pub fn owned_msis_through_the_object_model(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 2)?;
    let (a, b) = (&edus[0], &edus[1]);
    let (owner_a, owner_b) = (OwnerId(1), OwnerId(2));
    let first = InterruptTarget {
        vector: FIRST_LPI + 17,
        cpu: 0,
    };
    let moved = InterruptTarget {
        vector: FIRST_LPI + 18,
        cpu: 0,
    };
    let mut io = Iommu::new();
    let u = io.add_unit(unit(m)?);
    let result = (|| {
        let da = io
            .add_device(u, a.stream, GroupId(a.stream.0))
            .map_err(fail)?;
        let db = io
            .add_device(u, b.stream, GroupId(b.stream.0))
            .map_err(fail)?;
        ensure_eq!(
            io.claim(da, owner_a),
            Err(Error::InterruptsNotIsolated(u)),
            "claimed without interrupt isolation"
        );
        io.set_interrupt_remapper(u, ItsRemapper::boxed(its, &edus))
            .map_err(fail)?;
        io.claim(da, owner_a).map_err(fail)?;
        io.claim(db, owner_b).map_err(fail)?;
        // Identity (an SMMU bypass STE): the MSI reaches the ITS untranslated.
        io.allow_identity(true);
        io.attach(da, owner_a, Target::Identity).map_err(fail)?;
        io.attach(db, owner_b, Target::Identity).map_err(fail)?;

        let (irq, msg) = io.alloc_interrupt(da, owner_a, first).map_err(fail)?;
        program_remapped(m, its, a, &msg)?;
        ensure_eq!(raise(a, true), 1, "the owner's MSI");
        ensure_eq!(gic::last_irq(), Some(first.vector));
        println!(
            "  interrupts: claiming edu {} refused until the ITS is registered as the remapper; \
             its owner got {msg}: taken as LPI {}",
            a.edu.bdf, first.vector
        );
        ensure_eq!(
            io.free_interrupt(owner_b, irq),
            Err(Error::NotInterruptOwner(irq)),
            "another owner freed it"
        );
        // b, owned by someone else, writes a's message: the ITS knows b by its own DeviceID.
        program_remapped(m, its, b, &msg)?;
        allow_guest_error(UNMAPPED_DEVICE);
        ensure_eq!(raise(b, false), 0, "another owner's device raised a's LPI");
        println!(
            "  interrupts: edu {} (another owner) writing the same message raised nothing: the \
             ITS knows it by its own DeviceID",
            b.edu.bdf
        );

        let now = io.retarget_interrupt(owner_a, irq, moved).map_err(fail)?;
        ensure_eq!(
            now.message,
            msg.message,
            "retargeting keeps the device's message"
        );
        ensure_eq!(raise(a, true), 1, "the MSI after retargeting");
        ensure_eq!(gic::last_irq(), Some(moved.vector));

        // Release discards it: owned again and let through, the old message raises nothing.
        io.release(da, owner_a).map_err(fail)?;
        ensure_eq!(io.interrupts_of(da).count(), 0);
        io.claim(da, owner_a).map_err(fail)?;
        io.attach(da, owner_a, Target::Identity).map_err(fail)?;
        allow_guest_error(DISCARDED_EVENT);
        ensure_eq!(
            raise(a, false),
            0,
            "an interrupt freed at release still raised an LPI"
        );
        println!(
            "  interrupts: retargeted to LPI {}; after release its event is discarded and the \
             old message raises nothing",
            moved.vector
        );
        io.release(da, owner_a).map_err(fail)?;
        io.release(db, owner_b).map_err(fail)?;
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    result
}

/// A device in one of its owner's paging domains: the object model maps the ITS doorbell into
/// the domain's reserved MSI window (IOVA = the doorbell's physical address) when the owner
/// allocates the interrupt, so the same message passes the SMMU and raises the LPI; a domain
/// without such a window is refused by name.
pub fn owned_msi_in_a_paging_domain_passes_its_mapped_doorbell(m: &mut Machine) -> TestResult {
    let (its, edus) = rig(m, 1)?;
    let a = &edus[0];
    let owner = OwnerId(1);
    let lpi = InterruptTarget {
        vector: FIRST_LPI + 19,
        cpu: 0,
    };
    let doorbell_page = its.doorbell() & !0xfff;
    let unit = unit(m)?;
    let stage = preferred_stage(unit);
    let mut io = Iommu::new();
    let u = io.add_unit(unit);
    let result = (|| {
        let da = io
            .add_device(u, a.stream, GroupId(a.stream.0))
            .map_err(fail)?;
        io.set_interrupt_remapper(u, ItsRemapper::boxed(its, &edus))
            .map_err(fail)?;
        io.claim(da, owner).map_err(fail)?;
        let windows = [Region::below_bits(IA_BITS)];
        let msi_window = [Reserved {
            region: Region {
                start: doorbell_page,
                last: doorbell_page + 0xfff,
            },
            kind: ReservedKind::MsiDoorbell,
        }];
        let bare = io
            .alloc_domain(
                owner,
                u,
                stage,
                IA_BITS,
                &Layout {
                    windows: &windows,
                    reserved: &[],
                },
            )
            .map_err(fail)?;
        io.attach(da, owner, Target::Domain(bare)).map_err(fail)?;
        ensure_eq!(
            io.alloc_interrupt(da, owner, lpi).map(|_| ()),
            Err(Error::NoMsiWindow {
                domain: bare,
                doorbell: doorbell_page
            }),
            "an interrupt allocated in a domain with nowhere to map the doorbell"
        );
        let dom = io
            .alloc_domain(
                owner,
                u,
                stage,
                IA_BITS,
                &Layout {
                    windows: &windows,
                    reserved: &msi_window,
                },
            )
            .map_err(fail)?;
        io.attach(da, owner, Target::Domain(dom)).map_err(fail)?;
        let (_, msg) = io.alloc_interrupt(da, owner, lpi).map_err(fail)?;
        program_remapped(m, its, a, &msg)?;
        ensure_eq!(
            raise(a, true),
            1,
            "the MSI through the domain's mapped doorbell"
        );
        ensure_eq!(gic::last_irq(), Some(lpi.vector));
        io.release(da, owner).map_err(fail)?;
        io.destroy_domain(owner, dom).map_err(fail)?;
        io.destroy_domain(owner, bare).map_err(fail)?;
        Ok(())
    })();
    tear_down(m, its, &edus)?;
    result
}
