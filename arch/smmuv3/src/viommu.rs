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
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};
use iommu::unit::{DeviceId, Forwarded, GuestEntry, HardwareError, UnitError};

use crate::cmdq::{CmdqError, BATCH_CAPACITY};
use crate::command::RawCommand;
use crate::guest::{check_command, validate_vste, GuestSte, HostCommand};
use crate::idr::Features;
use crate::stream_table::{Stage2, StreamTableEntry};
use crate::unit::domain::{DomainKind, SmmuDomain};
use crate::unit::SmmuUnit;
use crate::Error;

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
    frame: PhysAddr,
    hal: H,
    /// This vIOMMU's registration with its parent, which is busy while it exists.
    parent: CountLink,
}

// SAFETY: the shared state is two counters, atomics in frames that outlive this value.
unsafe impl<H: Hal + Send> Send for SmmuViommu<H> {}
// SAFETY: as above; `&self` methods only touch the atomics.
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
        // SAFETY: the frame lives as long as `self` (freed only by `destroy_viommu`, which
        // consumes it); the HAL made it usable with atomic accesses.
        unsafe { self.nested.as_ref() }.load(Ordering::Relaxed)
    }
}

/// One registration in a counter that lives in a HAL frame: counted in when made, counted out
/// when dropped. Whoever frees the frame does so only once the count is 0 (read with Acquire),
/// so the frame outlives every link.
pub(crate) struct CountLink {
    count: NonNull<AtomicUsize>,
}

// SAFETY: points at an atomic whose frame outlives the link (see above).
unsafe impl Send for CountLink {}
// SAFETY: as above.
unsafe impl Sync for CountLink {}

impl CountLink {
    /// Counts one in at `count`.
    ///
    /// # Safety
    /// `count` is an atomic in a frame that is freed only once the count it holds is 0.
    unsafe fn new(count: NonNull<AtomicUsize>) -> Self {
        // SAFETY: per the contract. Relaxed: only the value matters; the owner that frees the
        // frame reads it with Acquire after every borrow that could make links has ended.
        unsafe { count.as_ref() }.fetch_add(1, Ordering::Relaxed);
        Self { count }
    }

    /// Another registration in the same counter.
    fn another(&self) -> Self {
        // SAFETY: `self` keeps the count above 0, so the frame is not freed.
        unsafe { Self::new(self.count) }
    }
}

impl Drop for CountLink {
    fn drop(&mut self) {
        // SAFETY: the frame is freed only once the count is 0, i.e. after this decrement.
        // Release: whatever the holder did happens before a free that sees the count drop.
        unsafe { self.count.as_ref() }.fetch_sub(1, Ordering::Release);
    }
}

/// How many vIOMMUs and nested domains use a stage-2 domain as their nest parent: a counter in
/// a HAL frame allocated by the first `new_viommu` over the domain. The domain's teardown must
/// refuse while [`in_use`](Self::in_use) and otherwise [`release`](Self::release) the frame.
pub(crate) struct NestUsers {
    /// Physical address of the counter frame, [`NestUsers::NONE`] until the first vIOMMU.
    /// Acquire/Release: publishes the zeroed frame to the CPU that loads the address.
    frame: AtomicU64,
    /// Set, never cleared, before the first STE that nests a stage 1 in the domain is
    /// installed: by the first vIOMMU and by a direct nested attach (see [`Self::ever_nested`]).
    ever: AtomicBool,
}

impl NestUsers {
    const NONE: u64 = u64::MAX;

    /// No user yet (and no frame).
    pub(crate) const fn new() -> Self {
        Self {
            frame: AtomicU64::new(Self::NONE),
            ever: AtomicBool::new(false),
        }
    }

    /// Notes that a stream is about to nest a stage 1 in the domain (before its STE is
    /// installed).
    pub(crate) fn note_nested(&self) {
        self.ever.store(true, Ordering::Release);
    }

    /// Registers a user, allocating the counter frame on first use.
    fn link<H: Hal>(&self, hal: &H) -> Result<CountLink, UnitError> {
        self.note_nested();
        let mut frame = self.frame.load(Ordering::Acquire);
        if frame == Self::NONE {
            let new = hal
                .alloc_frame(FrameSize::SIZE_4K)
                .ok_or(UnitError::OutOfMemory)?;
            match self.frame.compare_exchange(
                Self::NONE,
                new.as_u64(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => frame = new.as_u64(),
                Err(current) => {
                    // SAFETY: allocated just above and never published.
                    unsafe { hal.free_frame(new, FrameSize::SIZE_4K) };
                    frame = current;
                }
            }
        }
        let count = hal.phys_to_virt(PhysAddr::new(frame)).cast::<AtomicUsize>();
        // SAFETY: the frame is freed only by `release`, whose caller checked `in_use` (count
        // 0) while owning the domain, so not while this link can exist.
        Ok(unsafe { CountLink::new(count) })
    }

    /// Whether a stream ever nested a stage 1 in the domain: if not, no TLB entry combines a
    /// stage-1 address with its mappings, and an unmap needs no TLBI_NH_ALL.
    ///
    /// Called by an unmap after its table change. The SeqCst fence orders that change before
    /// this load: a nested stream that could have cached the old entry had its STE installed
    /// (CMD_CFGI_STE + CMD_SYNC, behind a DSB) after `note_nested`, and the SMMU read the old
    /// entry before our store; so `note_nested` precedes our store, which the fence keeps
    /// before this load, and the load sees it.
    pub(crate) fn ever_nested(&self) -> bool {
        core::sync::atomic::fence(Ordering::SeqCst);
        self.ever.load(Ordering::Acquire)
    }

    /// Whether a vIOMMU or a nested domain still uses the parent.
    pub(crate) fn in_use<H: Hal>(&self, hal: &H) -> bool {
        let frame = self.frame.load(Ordering::Acquire);
        if frame == Self::NONE {
            return false;
        }
        let count = hal.phys_to_virt(PhysAddr::new(frame)).cast::<AtomicUsize>();
        // SAFETY: the frame is live until `release`. Acquire: pairs with the users' Release
        // decrements, so none of them touches the frame after a 0 is seen.
        unsafe { count.as_ref() }.load(Ordering::Acquire) != 0
    }

    /// Gives the counter frame back.
    ///
    /// # Safety
    /// The caller owns the parent domain (no new user can register) and saw
    /// [`in_use`](Self::in_use) return false; `hal` is the HAL `link` was called with.
    pub(crate) unsafe fn release<H: Hal>(&self, hal: &H) {
        let frame = self.frame.swap(Self::NONE, Ordering::AcqRel);
        if frame != Self::NONE {
            // SAFETY: allocated by `link` with this size from `hal`; unused per the caller.
            unsafe { hal.free_frame(PhysAddr::new(frame), FrameSize::SIZE_4K) };
        }
    }
}

/// Whether `domain` is the nest parent of a vIOMMU or nested domain that still exists: the
/// check `destroy_domain` must make (refusing with [`UnitError::Busy`]) before freeing a
/// stage-2 domain's table, then releasing its counter frame.
pub fn parent_in_use<H: Hal + Clone>(unit: &SmmuUnit<H>, domain: &SmmuDomain<H>) -> bool {
    match &domain.kind {
        DomainKind::Stage2 { nest_users, .. } => nest_users.in_use(&unit.hal),
        _ => false,
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
    let DomainKind::Stage2 { s2, nest_users, .. } = &parent.kind else {
        return Err(UnitError::Unsupported(
            "a nest parent that is not a stage-2 domain",
        ));
    };
    let hal = unit.hal.clone();
    SmmuViommu::new(*s2, hal.clone(), || nest_users.link(&hal))
}

/// `TranslationUnit::destroy_viommu`: refused with [`UnitError::Busy`] while nested domains
/// built on it exist.
pub(crate) fn destroy_viommu<H: Hal>(
    viommu: SmmuViommu<H>,
) -> Result<(), (SmmuViommu<H>, UnitError)> {
    // Acquire: pairs with the Release decrement of the last nested domain's link, so no link
    // touches the frame after we free it. No link can be made meanwhile: `new_nested` borrows
    // the vIOMMU, which we own.
    // SAFETY: as in `nested_domains`.
    if unsafe { viommu.nested.as_ref() }.load(Ordering::Acquire) != 0 {
        return Err((viommu, UnitError::Busy));
    }
    // SAFETY: allocated by `SmmuViommu::new` with this size from this HAL; no nested domain
    // points at it any more (count 0, see above).
    unsafe { viommu.hal.free_frame(viommu.frame, FrameSize::SIZE_4K) };
    // Dropping `viommu.parent` counts this vIOMMU out of its parent.
    Ok(())
}

impl<H: Hal> SmmuViommu<H> {
    /// A vIOMMU over the stage 2 `s2` (registered with it by `parent`, called once the
    /// vIOMMU's own frame is there, so that a parent's first registration, which may allocate,
    /// is the last step that can fail), its counter in a frame of `hal`.
    fn new(
        s2: Stage2,
        hal: H,
        parent: impl FnOnce() -> Result<CountLink, UnitError>,
    ) -> Result<Self, UnitError> {
        let frame = hal
            .alloc_frame(FrameSize::SIZE_4K)
            .ok_or(UnitError::OutOfMemory)?;
        let parent = match parent() {
            Ok(link) => link,
            Err(e) => {
                // SAFETY: allocated just above; nothing points at it.
                unsafe { hal.free_frame(frame, FrameSize::SIZE_4K) };
                return Err(e);
            }
        };
        // The frame is zeroed: the counter starts at 0. The HAL guarantees the pointer is
        // valid, aligned and usable for atomics for as long as we hold the frame.
        let nested = hal.phys_to_virt(frame).cast::<AtomicUsize>();
        Ok(Self {
            s2,
            nested,
            frame,
            hal,
            parent,
        })
    }

    /// Registers one more nested domain, with this vIOMMU and with the parent (whose stage 2
    /// the domain's STE points at).
    fn links(&self) -> [CountLink; 2] {
        // SAFETY: the frame lives while `self` does, and `destroy_viommu` frees it only once
        // this link is dropped.
        [
            unsafe { CountLink::new(self.nested) },
            self.parent.another(),
        ]
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
    ste.check_features(features).map_err(Error::Entry)?;
    // The entry must encode (it is written only at attach, which must not fail on it then).
    ste.encode().map_err(Error::Entry)?;
    Ok(SmmuDomain {
        serial: unit.new_domain_serial(),
        kind: DomainKind::Nested {
            ste,
            vmid: viommu.s2.vmid,
            _links: viommu.links(),
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
        &|d| unit.stream_ats(d.0),
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
    ats_enabled: &dyn Fn(DeviceId) -> bool,
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
                    UnitError::Hardware(HardwareError::CommandRejected),
                ),
                other => (origin.first().copied(), Error::Command(other).into()),
            };
            Forwarded {
                done: at.unwrap_or(0),
                refused: Some(why),
            }
        })
    };
    for (i, &raw) in cmds.iter().enumerate() {
        let refused = match check_command(raw, vmid, features, devices, ats_enabled) {
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
