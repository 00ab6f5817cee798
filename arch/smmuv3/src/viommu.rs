//! The unit side of a vIOMMU on SMMUv3: one guest's VMID and stage 2 (its nest parent), the
//! nested domains built from its vSTEs, and its invalidation commands forwarded to the host's
//! queue. The checks themselves are [`crate::guest`]'s; this module turns their answers into
//! STEs and command batches.
//!
//! A nested domain's STE is the parent's stage 2 under the guest's choice (IHI 0070 5.2):
//! abort, stage 2 alone (the guest bypasses its stage 1) or stage 1 through the guest's CD table
//! (an IPA) nested in stage 2. Every guest translation is tagged with the parent's VMID, so
//! the guest's TLB invalidations carry that VMID and the parent's unmaps (TLBI_S2_IPA plus
//! TLBI_NH_ALL for that VMID, see `SmmuUnit::unmap`) reach the combined entries too.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use iommu::hal::{FrameSize, Hal};
use iommu::unit::{DeviceId, Forwarded, GuestEntry, UnitError};

use crate::cmdq::{CmdqError, BATCH_CAPACITY};
use crate::command::RawCommand;
use crate::guest::{check_command, validate_vste, GuestSte, HostCommand};
use crate::idr::Features;
use crate::smmu::{DomainKind, SmmuDomain, SmmuError, SmmuUnit};
use crate::stream_table::{Stage2, StreamTableEntry};

/// The unit's part of one guest's vIOMMU: the nest parent's stage-2 configuration (its VMID
/// tags all the guest's translations) and the count of nested domains built on it.
///
/// Give it back with [`TranslationUnit::destroy_viommu`](iommu::unit::TranslationUnit); a
/// vIOMMU that is merely dropped keeps its counter frame (leaked), because nested domains may
/// still point at it.
pub struct SmmuViommu<H: Hal> {
    s2: Stage2,
    /// How many nested domains built on this vIOMMU exist: an `AtomicUsize` at the start of a
    /// HAL frame (the crate does not allocate on its own), so that a nested domain can count
    /// itself out when it is dropped, wherever the vIOMMU value has moved meanwhile.
    nested: NonNull<AtomicUsize>,
    frame: iommu::addr::PhysAddr,
    hal: H,
}

// SAFETY: the only shared state is the counter, an atomic in a frame this value owns.
unsafe impl<H: Hal + Send> Send for SmmuViommu<H> {}
// SAFETY: as above; `&self` methods only touch the atomic.
unsafe impl<H: Hal + Sync> Sync for SmmuViommu<H> {}

impl<H: Hal> fmt::Debug for SmmuViommu<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SmmuViommu(VMID {}, stage 2 at {:?}, {} nested domains)",
            self.s2.vmid,
            self.s2.table,
            self.nested_domains()
        )
    }
}

impl<H: Hal> SmmuViommu<H> {
    /// The VMID the guest's translations and invalidations use (the nest parent's).
    pub fn vmid(&self) -> u16 {
        self.s2.vmid
    }

    /// Bits of IPA the nest parent translates: the guest's physical address space.
    pub fn ipa_bits(&self) -> u8 {
        64 - self.s2.t0sz
    }

    /// How many nested domains built on this vIOMMU exist.
    pub fn nested_domains(&self) -> usize {
        // SAFETY: the frame lives as long as `self` (freed only by `destroy`, which consumes
        // it); the HAL made it readable with atomic accesses.
        unsafe { self.nested.as_ref() }.load(Ordering::Relaxed)
    }
}

/// A nested domain's registration with its vIOMMU: counted in when built, counted out when
/// dropped (with the domain).
pub(crate) struct NestedLink {
    count: NonNull<AtomicUsize>,
}

// SAFETY: points at an atomic whose frame outlives the link (see `destroy_viommu`).
unsafe impl Send for NestedLink {}
// SAFETY: as above.
unsafe impl Sync for NestedLink {}

impl Drop for NestedLink {
    fn drop(&mut self) {
        // SAFETY: `destroy_viommu` frees the frame only once the count is 0, i.e. after every
        // link's decrement; the count was incremented when this link was made.
        // Release: whatever this domain did happens before a destroy that sees the count drop.
        unsafe { self.count.as_ref() }.fetch_sub(1, Ordering::Release);
    }
}

/// `TranslationUnit::new_viommu`: a vIOMMU whose guest's DMA `parent` (a stage-2 domain)
/// translates. Refused on an SMMU without both stages, or for a parent that is not stage 2.
pub(crate) fn new_viommu<H: Hal + Clone>(
    unit: &SmmuUnit<H>,
    parent: &SmmuDomain<H>,
) -> Result<SmmuViommu<H>, UnitError> {
    let stages = unit.features().stages;
    if !(stages.stage1() && stages.stage2()) {
        return Err(UnitError::Unsupported(
            "nesting (the SMMU lacks stage 1 or stage 2)",
        ));
    }
    let DomainKind::Stage2 { s2, .. } = &parent.kind else {
        return Err(UnitError::Unsupported(
            "a nest parent that is not a stage-2 domain",
        ));
    };
    SmmuViommu::new(*s2, unit.hal.clone())
}

/// `TranslationUnit::destroy_viommu`: refused with [`UnitError::Busy`] while nested domains
/// built on it exist.
pub(crate) fn destroy_viommu<H: Hal>(
    viommu: SmmuViommu<H>,
) -> Result<(), (SmmuViommu<H>, UnitError)> {
    // Acquire: pairs with the Release decrement of the last `NestedLink`, so no link touches
    // the frame after we free it. No link can be made meanwhile: `new_nested` borrows the
    // vIOMMU, which we own.
    if viommu.nested_domains_acquire() != 0 {
        return Err((viommu, UnitError::Busy));
    }
    // SAFETY: allocated by `new_viommu` with this size from this HAL (a clone of it); no nested
    // domain points at it any more (count 0, see above).
    unsafe { viommu.hal.free_frame(viommu.frame, FrameSize::SIZE_4K) };
    Ok(())
}

impl<H: Hal> SmmuViommu<H> {
    /// A vIOMMU over the stage 2 `s2`, its counter in a frame of `hal`.
    fn new(s2: Stage2, hal: H) -> Result<Self, UnitError> {
        let frame = hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        // The frame is zeroed: the counter starts at 0. The HAL guarantees the pointer is
        // valid, aligned and usable for atomics for as long as we hold the frame.
        let nested = hal.phys_to_virt(frame).cast::<AtomicUsize>();
        Ok(Self {
            s2,
            nested,
            frame,
            hal,
        })
    }

    /// Counts one more nested domain in; the link counts it out when dropped.
    fn link(&self) -> NestedLink {
        // SAFETY: the frame lives while `self` does, and `self` cannot be destroyed while the
        // count this adds is non-zero. Relaxed: only the count's value matters, and it is read
        // (Acquire) by a destroy that owns the vIOMMU, which happens after this borrow ended.
        unsafe { self.nested.as_ref() }.fetch_add(1, Ordering::Relaxed);
        NestedLink { count: self.nested }
    }

    fn nested_domains_acquire(&self) -> usize {
        // SAFETY: as in `nested_domains`.
        unsafe { self.nested.as_ref() }.load(Ordering::Acquire)
    }
}

/// The STE a nested domain of `viommu` installs for the guest's choice `guest`.
pub fn nested_ste(s2: Stage2, guest: GuestSte) -> StreamTableEntry {
    match guest {
        GuestSte::Abort => StreamTableEntry::abort(),
        GuestSte::Bypass => StreamTableEntry::stage2(s2),
        GuestSte::Stage1 { s1, ats } => StreamTableEntry::nested(s1, s2).with_ats(ats),
    }
}

/// `TranslationUnit::new_nested`: validates the guest's vSTE ([`validate_vste`]) and returns
/// the domain that `attach` installs (see [`nested_ste`]), counted in `viommu`.
pub(crate) fn new_nested<H: Hal + Clone>(
    unit: &SmmuUnit<H>,
    viommu: &SmmuViommu<H>,
    guest: &GuestEntry,
) -> Result<SmmuDomain<H>, UnitError> {
    let features = unit.features();
    let ste = nested_ste(
        viommu.s2,
        validate_vste(guest, features, viommu.ipa_bits())?,
    );
    ste.check_features(features).map_err(SmmuError::Entry)?;
    // The entry must encode (it is written only at attach, which must not fail on it then).
    ste.encode().map_err(SmmuError::Entry)?;
    Ok(SmmuDomain {
        kind: DomainKind::Nested {
            ste,
            vmid: viommu.s2.vmid,
            _link: viommu.link(),
        },
    })
}

/// `TranslationUnit::forward_invalidations` over the unit's command queue.
pub(crate) fn forward_invalidations<H: Hal + Clone>(
    unit: &SmmuUnit<H>,
    viommu: &SmmuViommu<H>,
    devices: &dyn Fn(u32) -> Option<DeviceId>,
    cmds: &[RawCommand],
) -> Forwarded {
    let queue = unit.command_queue();
    let limit = BATCH_CAPACITY
        .min(queue.capacity().saturating_sub(1))
        .max(1);
    forward(
        cmds,
        viommu.vmid(),
        unit.features(),
        devices,
        limit,
        |batch| queue.submit_and_sync(batch),
    )
}

/// Checks and translates `cmds` ([`check_command`]) in order and hands the translated ones to
/// `submit` (which issues them with one CMD_SYNC and waits) in batches of at most `limit`;
/// stops at the first refused command, after submitting the ones before it. A guest CMD_SYNC
/// is counted as done and issues nothing of its own: the batch's CMD_SYNC completes it.
///
/// A batch the hardware fails is reported as refused at its first command (at the failed
/// command itself for a command error); the guest cannot know more of what completed.
pub fn forward(
    cmds: &[RawCommand],
    vmid: u16,
    features: &Features,
    devices: &dyn Fn(u32) -> Option<DeviceId>,
    limit: usize,
    mut submit: impl FnMut(&[RawCommand]) -> Result<(), CmdqError>,
) -> Forwarded {
    let limit = limit.clamp(1, BATCH_CAPACITY);
    let mut batch = [[0u64; 2]; BATCH_CAPACITY];
    // For each batched command, the index of the guest command it came from.
    let mut origin = [0usize; BATCH_CAPACITY];
    let mut len = 0;
    let mut flush = |batch: &[RawCommand], origin: &[usize]| -> Result<(), Forwarded> {
        if batch.is_empty() {
            return Ok(());
        }
        submit(batch).map_err(|e| {
            let (at, why) = match e {
                CmdqError::Command(f) => (
                    // The failed command, or (the batch's CMD_SYNC failed) the last one.
                    origin.get(f.position).or(origin.last()).copied(),
                    UnitError::Hardware("the SMMU refused a forwarded guest command"),
                ),
                other => (origin.first().copied(), SmmuError::Command(other).into()),
            };
            Forwarded {
                done: at.unwrap_or(0),
                refused: Some(why),
            }
        })
    };
    for (i, &raw) in cmds.iter().enumerate() {
        let refused = match check_command(raw, vmid, features, devices) {
            Ok(HostCommand::Consumed) => continue,
            Ok(HostCommand::Issue(cmd)) => match cmd.encode() {
                Ok(encoded) => {
                    if len == limit {
                        if let Err(f) = flush(&batch[..len], &origin[..len]) {
                            return f;
                        }
                        len = 0;
                    }
                    batch[len] = encoded;
                    origin[len] = i;
                    len += 1;
                    continue;
                }
                // Unreachable for a command `decode` accepted (its inverse); refused anyway.
                Err(_) => UnitError::GuestCommand("cannot be re-encoded"),
            },
            Err(e) => e,
        };
        return match flush(&batch[..len], &origin[..len]) {
            Err(f) => f,
            Ok(()) => Forwarded {
                done: i,
                refused: Some(refused),
            },
        };
    }
    match flush(&batch[..len], &origin[..len]) {
        Err(f) => f,
        Ok(()) => Forwarded {
            done: cmds.len(),
            refused: None,
        },
    }
}

// The tests use the core's host HAL, which the loom build leaves out.
#[cfg(all(test, not(loom)))]
mod tests;
