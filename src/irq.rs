//! Interrupt isolation: the one interface behind which an interrupt remapper hands a device the
//! message it may send, pinned to that device.
//!
//! Without it a device given to a guest can write any MSI address and data and so raise any
//! interrupt of the host or of another guest: DMA isolation alone is not safe device
//! assignment. Two kinds of hardware implement [`InterruptRemapper`]:
//! - VT-d interrupt remapping (`iommu_vtd::VtdUnit` with IR enabled): the device writes a
//!   remappable-format MSI naming an interrupt-remapping table entry (IRTE), and the unit checks
//!   the requester id against the entry's source-id fields before delivering its vector.
//! - An Arm GICv3 ITS (the embedder's driver): the device's MSI is a DMA write of an event id to
//!   the ITS doorbell, and the ITS looks the event up in the translation table of the writer's
//!   DeviceID (its requester id), so a device can only raise what was mapped for it. The write
//!   goes through the SMMU like any DMA: a paging domain must map the doorbell page
//!   ([`InterruptRemapper::doorbell`]) for MSIs to pass.

use core::fmt;

use crate::addr::PhysAddr;
use crate::unit::{DeviceId, UnitError};

/// Where an interrupt is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptTarget {
    /// The x86 vector (32..=255), or the Arm LPI INTID (8192 and up).
    pub vector: u32,
    /// The CPU: its x86 APIC id, or the Arm ITS collection that names a redistributor.
    pub cpu: u32,
}

/// The MSI a device must be programmed with: the address and data it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// One remapped interrupt of one device, as the remapper handed it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemappedInterrupt {
    /// The requester id the remapper pinned the interrupt to: the one the hardware sees, so a
    /// DMA alias (a bridge's id) for a device behind a PCIe-to-PCI bridge.
    pub device: DeviceId,
    /// The remapper's own name for it: the IRTE index on VT-d, the event id on an ITS.
    pub handle: u32,
    /// What the device writes to raise it.
    pub message: MsiMessage,
    /// Where it is delivered now.
    pub target: InterruptTarget,
}

impl fmt::Display for RemappedInterrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupt {} of device {:#x} -> vector {:#x} on CPU {} (MSI {:#x} <- {:#x})",
            self.handle,
            self.device.0,
            self.target.vector,
            self.target.cpu,
            self.message.address,
            self.message.data
        )
    }
}

/// Hardware that delivers a device's MSIs only as they were set up for that device.
///
/// Every method leaves the remapper unchanged when it returns an error. After
/// [`retarget`](Self::retarget) or [`free`](Self::free) returns `Ok`, no MSI is delivered as the
/// old entry said (the remapper's caches were invalidated and the invalidation completed).
pub trait InterruptRemapper {
    /// Sets up an interrupt that only `device` (the requester id the remapper will see) can
    /// raise, delivered to `target`.
    fn allocate(
        &self,
        device: DeviceId,
        target: InterruptTarget,
    ) -> Result<RemappedInterrupt, UnitError>;

    /// Delivers `irq` to `target` from now on.
    fn retarget(
        &self,
        irq: &mut RemappedInterrupt,
        target: InterruptTarget,
    ) -> Result<(), UnitError>;

    /// Tears `irq` down: an MSI naming it afterwards is blocked (and reported where the hardware
    /// reports such faults).
    fn free(&self, irq: RemappedInterrupt) -> Result<(), UnitError>;

    /// The page devices write their MSIs to when that write is translated by the IOMMU (an ITS
    /// doorbell: a paging domain must map it for MSIs to pass); `None` where MSIs are not DMA
    /// (VT-d: the interrupt range 0xfee0_0000..0xfeef_ffff is never translated).
    fn doorbell(&self) -> Option<PhysAddr>;
}

/// A borrowed remapper is a remapper: the VT-d unit an embedder keeps in a static can be both
/// the object model's translation unit and its interrupt remapper.
impl<R: InterruptRemapper + ?Sized> InterruptRemapper for &R {
    fn allocate(
        &self,
        device: DeviceId,
        target: InterruptTarget,
    ) -> Result<RemappedInterrupt, UnitError> {
        (**self).allocate(device, target)
    }

    fn retarget(
        &self,
        irq: &mut RemappedInterrupt,
        target: InterruptTarget,
    ) -> Result<(), UnitError> {
        (**self).retarget(irq, target)
    }

    fn free(&self, irq: RemappedInterrupt) -> Result<(), UnitError> {
        (**self).free(irq)
    }

    fn doorbell(&self) -> Option<PhysAddr> {
        (**self).doorbell()
    }
}
