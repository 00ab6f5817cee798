//! ATS (PCIe Address Translation Services) through the object model: a device that caches
//! translations in its own device-TLB, switched on and off in the order the hardware needs.
//!
//! The object model cannot reach a device's configuration space, so the embedder hands it an
//! [`AtsControl`] for the device's ATS capability; the model keeps it while ATS is on and uses
//! it to switch ATS off again (on [`Iommu::disable_ats`] and on release). The order:
//! - on: the unit accepts the device's translation requests ([`TranslationUnit::set_ats`]),
//!   then the device's ATS is enabled, so it never asks a unit that would refuse it;
//! - off: the device's ATS is disabled, then the unit stops accepting its translation
//!   requests and invalidates its whole device-TLB, so it holds no translation the unit no
//!   longer invalidates.
//!
//! While ATS is on, the unit follows every invalidation of the device's domain, and every
//! change of what it is attached to, with a device-TLB invalidation for it.

extern crate alloc;

use alloc::boxed::Box;

use super::{DeviceHandle, Error, Iommu, OwnerId, Result};
use crate::unit::{Ats, TranslationUnit};

/// The embedder's hand on one device's PCIe ATS capability (its ATS Control register, PCIe
/// Base 6.0, 7.8.4.2), given to [`Iommu::enable_ats`].
pub trait AtsControl {
    /// Sets the smallest translation unit to `2^unit_log2` bytes and enables ATS; the reason
    /// if the device did not take it.
    fn enable(&mut self, unit_log2: u32) -> core::result::Result<(), &'static str>;
    /// Disables ATS.
    fn disable(&mut self);
}

/// A device's switch while its ATS is on.
pub(super) type Switch = Box<dyn AtsControl + Send + Sync>;

impl<U: TranslationUnit> Iommu<U> {
    /// Records whether the firmware lets `device` use ATS (VT-d: an ATSR scope covering its
    /// root port; SMMUv3: the root complex's ATS attribute in IORT, `ats-supported` in the
    /// devicetree). Not allowed until said. Refused while ATS is on.
    pub fn allow_ats(&mut self, device: DeviceHandle, allowed: bool) -> Result<()> {
        self.device(device)?;
        if self.ats.contains_key(&device) {
            return Err(Error::AtsEnabled(device));
        }
        if allowed {
            self.ats_allowed.insert(device);
        } else {
            self.ats_allowed.remove(&device);
        }
        Ok(())
    }

    /// Turns ATS on for `device`, owned by `owner`, whose capability reports `queue_depth`
    /// (1..=32; its Invalidate Queue Depth, 0 there meaning 32): the unit first, then the
    /// device through `control` with the unit's smallest page as the smallest translation
    /// unit. Refused unless the firmware allows it ([`allow_ats`](Self::allow_ats)) and the
    /// unit offers device-TLBs; if the device does not take it the unit is set back.
    pub fn enable_ats(
        &mut self,
        device: DeviceHandle,
        owner: OwnerId,
        queue_depth: u8,
        mut control: Box<dyn AtsControl + Send + Sync>,
    ) -> Result<()> {
        let state = self.device(device)?;
        if state.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        if !self.ats_allowed.contains(&device) {
            return Err(Error::AtsNotAllowed(device));
        }
        if self.ats.contains_key(&device) {
            return Err(Error::AtsEnabled(device));
        }
        if !(1..=32).contains(&queue_depth) {
            return Err(Error::BadQueueDepth(queue_depth));
        }
        let unit = self.unit(state.unit)?;
        let info = unit.info();
        if !info.ats {
            return Err(Error::Unit(crate::unit::UnitError::Unsupported(
                "ATS (the unit has no device-TLBs)",
            )));
        }
        unit.set_ats(state.id, Some(Ats { queue_depth }))?;
        if let Err(reason) = control.enable(info.page_sizes.trailing_zeros()) {
            control.disable();
            unit.set_ats(state.id, None)?;
            return Err(Error::AtsRefusedByDevice { device, reason });
        }
        self.ats.insert(device, control);
        Ok(())
    }

    /// Turns ATS off for `device`, owned by `owner`: the device first, then the unit (which
    /// invalidates the device's whole device-TLB). Releasing the device does this too.
    pub fn disable_ats(&mut self, device: DeviceHandle, owner: OwnerId) -> Result<()> {
        if self.device(device)?.owner != Some(owner) {
            return Err(Error::NotOwner(device));
        }
        self.switch_ats_off(device)
    }

    /// Whether ATS is on for `device`.
    pub fn ats_enabled(&self, device: DeviceHandle) -> Result<bool> {
        self.device(device)?;
        Ok(self.ats.contains_key(&device))
    }

    /// [`disable_ats`](Self::disable_ats) without the owner check. If the unit fails, the
    /// device's ATS is off but the record stays, so a retry asks the unit again.
    pub(super) fn switch_ats_off(&mut self, device: DeviceHandle) -> Result<()> {
        let state = self.device(device)?;
        let control = self
            .ats
            .get_mut(&device)
            .ok_or(Error::AtsNotEnabled(device))?;
        control.disable();
        self.unit(state.unit)?.set_ats(state.id, None)?;
        self.ats.remove(&device);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use std::sync::Mutex;

    use super::super::tests::MockUnit;
    use super::super::{GroupId, Target};
    use super::*;
    use crate::unit::{DeviceId, UnitError};

    /// What a device's ATS capability was told, in order.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Told {
        Enable(u32),
        Disable,
    }

    /// A capability that records what it is told and may refuse to enable.
    struct Cap {
        told: Arc<Mutex<Vec<Told>>>,
        refuse: Option<&'static str>,
    }

    impl AtsControl for Cap {
        fn enable(&mut self, unit_log2: u32) -> core::result::Result<(), &'static str> {
            self.told.lock().unwrap().push(Told::Enable(unit_log2));
            self.refuse.map_or(Ok(()), Err)
        }
        fn disable(&mut self) {
            self.told.lock().unwrap().push(Told::Disable);
        }
    }

    fn cap(refuse: Option<&'static str>) -> (Switch, Arc<Mutex<Vec<Told>>>) {
        let told = Arc::new(Mutex::new(Vec::new()));
        (
            Box::new(Cap {
                told: told.clone(),
                refuse,
            }),
            told,
        )
    }

    const OWNER: OwnerId = OwnerId(7);

    fn system(ats: bool) -> (Iommu<MockUnit>, DeviceHandle) {
        let mut io = Iommu::new();
        let u = io.add_unit(MockUnit::new(false, &[0x18]).with_ats(ats));
        io.allow_unsafe_interrupts(true);
        let dev = io.add_device(u, DeviceId(0x18), GroupId(1)).unwrap();
        io.claim(dev, OWNER).unwrap();
        (io, dev)
    }

    fn unit_ats(io: &Iommu<MockUnit>) -> Option<Ats> {
        io.units[0].ats_of(DeviceId(0x18))
    }

    #[test]
    fn the_unit_accepts_before_the_device_enables_and_the_device_disables_first() {
        let (mut io, dev) = system(true);
        io.allow_ats(dev, true).unwrap();
        let (c, told) = cap(None);
        io.enable_ats(dev, OWNER, 32, c).unwrap();
        // The mock's smallest page is 4 KiB; the unit knew before the device was told.
        assert_eq!(*told.lock().unwrap(), [Told::Enable(12)]);
        assert_eq!(io.units[0].ats_log(), [Some(Ats { queue_depth: 32 })]);
        assert_eq!(unit_ats(&io), Some(Ats { queue_depth: 32 }));
        assert!(io.ats_enabled(dev).unwrap());
        // While on: the firmware scope cannot be withdrawn, and a second enable is refused.
        assert_eq!(io.allow_ats(dev, false), Err(Error::AtsEnabled(dev)));
        let (c2, told2) = cap(None);
        assert_eq!(
            io.enable_ats(dev, OWNER, 32, c2),
            Err(Error::AtsEnabled(dev))
        );
        assert!(told2.lock().unwrap().is_empty());

        assert_eq!(io.disable_ats(dev, OTHER), Err(Error::NotOwner(dev)));
        io.disable_ats(dev, OWNER).unwrap();
        assert_eq!(*told.lock().unwrap(), [Told::Enable(12), Told::Disable]);
        assert_eq!(unit_ats(&io), None);
        assert_eq!(io.disable_ats(dev, OWNER), Err(Error::AtsNotEnabled(dev)));
    }

    const OTHER: OwnerId = OwnerId(8);

    #[test]
    fn release_switches_ats_off_before_blocking() {
        let (mut io, dev) = system(true);
        io.allow_ats(dev, true).unwrap();
        let (c, told) = cap(None);
        io.enable_ats(dev, OWNER, 4, c).unwrap();
        io.release(dev, OWNER).unwrap();
        assert_eq!(*told.lock().unwrap(), [Told::Enable(12), Told::Disable]);
        assert_eq!(unit_ats(&io), None);
        assert!(!io.ats_enabled(dev).unwrap());
        assert_eq!(io.device(dev).unwrap().target, Target::Blocked);
    }

    #[test]
    fn refusals_change_nothing() {
        let (mut io, dev) = system(true);
        // Not in the firmware's scope.
        let (c, told) = cap(None);
        assert_eq!(
            io.enable_ats(dev, OWNER, 8, c),
            Err(Error::AtsNotAllowed(dev))
        );
        io.allow_ats(dev, true).unwrap();
        // Not the owner; a queue depth the capability cannot report.
        let (c, _) = cap(None);
        assert_eq!(io.enable_ats(dev, OTHER, 8, c), Err(Error::NotOwner(dev)));
        for depth in [0, 33] {
            let (c, _) = cap(None);
            assert_eq!(
                io.enable_ats(dev, OWNER, depth, c),
                Err(Error::BadQueueDepth(depth))
            );
        }
        assert!(told.lock().unwrap().is_empty());
        assert!(io.units[0].ats_log().is_empty());

        // The device does not take it: the unit is set back.
        let (c, told) = cap(Some("enable did not stick"));
        assert_eq!(
            io.enable_ats(dev, OWNER, 8, c),
            Err(Error::AtsRefusedByDevice {
                device: dev,
                reason: "enable did not stick"
            })
        );
        assert_eq!(*told.lock().unwrap(), [Told::Enable(12), Told::Disable]);
        assert_eq!(io.units[0].ats_log(), [Some(Ats { queue_depth: 8 }), None]);
        assert!(!io.ats_enabled(dev).unwrap());

        // The unit fails: the device was never told.
        let timeout = crate::poll::Timeout {
            waiting_for: "test",
        };
        io.units[0].fail_next.set(Some(UnitError::Timeout(timeout)));
        let (c, told) = cap(None);
        assert!(matches!(
            io.enable_ats(dev, OWNER, 8, c),
            Err(Error::Unit(_))
        ));
        assert!(told.lock().unwrap().is_empty());
        assert!(!io.ats_enabled(dev).unwrap());
    }

    #[test]
    fn a_unit_without_device_tlbs_refuses_by_name() {
        let (mut io, dev) = system(false);
        io.allow_ats(dev, true).unwrap();
        let (c, told) = cap(None);
        assert_eq!(
            io.enable_ats(dev, OWNER, 8, c),
            Err(Error::Unit(UnitError::Unsupported(
                "ATS (the unit has no device-TLBs)"
            )))
        );
        assert!(told.lock().unwrap().is_empty());
    }
}
