//! The frames of a bring-up under way ([`VtdUnit::new`](super::VtdUnit::new)): the root table,
//! the queue's frames and the domain-id records, given back if the bring-up fails. Once the
//! unit has seen the root's address (SRTP), they go back only after queued invalidation and
//! translation are off again (bounded waits); a unit that does not turn them off keeps them,
//! leaked rather than freed under it.

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};
use iommu::unit::UnitError;

use super::domain_ids::DomainIds;
use super::{VtdUnit, GCMD, GSTS};
use crate::registers::UnitRegisters;

pub(super) struct BringupFrames<'r, H: Hal + Clone> {
    hal: H,
    /// The unit, once it holds the root's address (set after RTADDR is written).
    pub(super) regs: Option<&'r UnitRegisters>,
    /// The root table and the queue's two frames.
    frames: [Option<(PhysAddr, FrameSize)>; 3],
    /// The domain-id records, by their directory.
    ids: Option<PhysAddr>,
}

impl<'r, H: Hal + Clone> BringupFrames<'r, H> {
    pub(super) fn new(hal: &H) -> Self {
        Self {
            hal: hal.clone(),
            regs: None,
            frames: [None; 3],
            ids: None,
        }
    }

    /// The root table's frame.
    pub(super) fn root(&mut self) -> Result<PhysAddr, UnitError> {
        let root = self
            .hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        self.frames[0] = Some((root, FrameSize::SIZE_4K));
        Ok(root)
    }

    /// Records the queue's frames, to give back if the bring-up fails.
    pub(super) fn queue(&mut self, frames: [(PhysAddr, FrameSize); 2]) {
        self.frames[1] = Some(frames[0]);
        self.frames[2] = Some(frames[1]);
    }

    /// The domain-id records.
    pub(super) fn ids(&mut self, supported: u32, first: u32) -> Result<DomainIds, UnitError> {
        let ids = DomainIds::new(&self.hal, supported, first)?;
        self.ids = Some(ids.directory());
        Ok(ids)
    }

    /// The bring-up succeeded: the unit keeps everything.
    pub(super) fn keep(mut self) {
        self.regs = None;
        self.frames = [None; 3];
        self.ids = None;
    }
}

impl<H: Hal + Clone> Drop for BringupFrames<'_, H> {
    fn drop(&mut self) {
        if let Some(regs) = self.regs {
            // The unit holds the root's (and maybe the queue's) address: it must not be able
            // to use them once they are freed.
            let off =
                VtdUnit::<H>::command(regs, GCMD::TE::SET, false, GSTS::TES, "GSTS.TES clear")
                    .and_then(|()| {
                        VtdUnit::<H>::command(
                            regs,
                            GCMD::QIE::SET,
                            false,
                            GSTS::QIES,
                            "GSTS.QIES clear",
                        )
                    });
            if let Err(e) = off {
                log::error!(
                    "VT-d: bring-up failed and the unit did not stop ({e}): its tables are leaked"
                );
                return;
            }
        }
        for (frame, size) in self.frames.iter().flatten() {
            // SAFETY: allocated for this bring-up, and nothing uses them: the unit is off (or
            // never saw them) and no `VtdUnit` was returned.
            unsafe { self.hal.free_frame(*frame, *size) };
        }
        if let Some(directory) = self.ids {
            // SAFETY: as above; `DomainIds::free` reads the record frames from the directory.
            unsafe { DomainIds::free_from(&self.hal, directory) };
        }
    }
}
