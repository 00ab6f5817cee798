//! The unit's side of a vIOMMU: what a hypervisor's virtual VT-d for one guest needs
//! from a real unit. [`VtdViommu`] holds the nest parent (the second-stage table translating
//! the guest's physical addresses, its domain id and depth) and the guest's domain ids known
//! from the nested domains built on it; `forward_invalidations` checks and translates a
//! guest's invalidation descriptors with [`crate::guest`] and issues them.
//!
//! Nested domains from a guest's PASID entry:
//! - guest pass-through (PGTT 100) gives a domain translated by the parent alone: a second-stage
//!   PASID entry on the parent's table, tagged with the parent's domain id so that the parent's
//!   unmaps invalidate it;
//! - guest first stage (PGTT 001) needs ECAP.NEST (with FLTS and SLTS; QEMU 10 has none): a
//!   nested PASID entry (`nested_entry`, PGTT 011, 3.8) with the guest's first-stage table
//!   over the parent's second stage, tagged with a host domain id of its own: one per (vIOMMU,
//!   guest domain id), shared by the nested domains built with that guest id and given back
//!   with the last of them. Its IOTLB entries cache combined (guest IOVA to host physical)
//!   translations, so every unmap and flush of the parent also invalidates it: the unit keeps,
//!   per pinned parent, the live nested domain ids ([`NestParents::nested_of`]).
//!
//! Lifetimes: a vIOMMU pins its parent in the unit ([`NestParents`]), so a parent cannot be
//! destroyed under it; its nested domains point at its state, which lives in a frame of its
//! own, so `destroy_viommu` refuses while any exists.

use core::ptr::NonNull;

use iommu::addr::PhysAddr;
use iommu::hal::{FrameSize, Hal};
use iommu::pagetable::Format;
use iommu::unit::{DeviceId, Forwarded, GuestEntry, UnitError};

use crate::caps::{Agaw, Capability, ExtendedCapability};
use crate::descriptor::{Descriptor, IotlbScope, PasidCacheScope};
use crate::guest::{
    translate_guest_descriptor, validate_guest_pasid_entry, GuestAction, GuestConfig,
    GuestFirstStage, GuestNames, HostLimits, NestLimits,
};
use crate::pasid::{Nested, PasidEntry, SecondStage};
use crate::root_table::{Did, EntryError, SourceId};
use crate::unit::{DomainTable, Mode, VtdDomain, VtdUnit};

/// The nest parent as a vIOMMU and its nested domains see it (copied at `new_viommu`; the
/// pin keeps the table alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub root: PhysAddr,
    pub domain: Did,
    pub agaw: Agaw,
    /// Guest-physical addresses are below `2^ia_bits`.
    pub ia_bits: u32,
}

/// Guest domain ids one vIOMMU can know at once.
pub const GUEST_DOMAINS: usize = 256;

/// One guest domain id and what stands for it on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    guest: Did,
    host: Did,
    /// Nested domains built with this guest id; 0 marks a free slot.
    users: u32,
}

const FREE: Binding = Binding {
    guest: Did::new(0),
    host: Did::new(0),
    users: 0,
};

/// The guest domain ids of one vIOMMU. Changed by `new_nested` and by the destruction of a
/// nested domain, read by every forwarded descriptor: a spin lock, held for a table scan only
/// (never across a hardware wait).
pub(crate) struct Bindings {
    slots: [Binding; GUEST_DOMAINS],
}

impl Bindings {
    const fn new() -> Self {
        Self {
            slots: [FREE; GUEST_DOMAINS],
        }
    }

    fn host(&self, guest: Did) -> Option<Did> {
        self.slots
            .iter()
            .find(|b| b.users > 0 && b.guest == guest)
            .map(|b| b.host)
    }

    /// One more nested domain for `guest`, standing for `host`. A guest id already bound to
    /// another host id is refused: one guest tag must not name two host tags.
    fn bind(&mut self, guest: Did, host: Did) -> Result<(), UnitError> {
        if let Some(b) = self
            .slots
            .iter_mut()
            .find(|b| b.users > 0 && b.guest == guest)
        {
            if b.host != host {
                return Err(UnitError::GuestEntry(
                    "DID (the guest uses it for another translation)",
                ));
            }
            b.users = b.users.checked_add(1).ok_or(UnitError::OutOfIds)?;
            return Ok(());
        }
        let free = self
            .slots
            .iter_mut()
            .find(|b| b.users == 0)
            .ok_or(UnitError::OutOfIds)?;
        *free = Binding {
            guest,
            host,
            users: 1,
        };
        Ok(())
    }

    /// One nested domain of `guest` fewer; false if there was none.
    fn release(&mut self, guest: Did) -> bool {
        match self
            .slots
            .iter_mut()
            .find(|b| b.users > 0 && b.guest == guest)
        {
            Some(b) => {
                b.users -= 1;
                true
            }
            None => false,
        }
    }

    /// Nested domains built with `guest` and not destroyed.
    fn users(&self, guest: Did) -> u32 {
        self.slots
            .iter()
            .find(|b| b.users > 0 && b.guest == guest)
            .map_or(0, |b| b.users)
    }

    fn nested_domains(&self) -> u64 {
        self.slots.iter().map(|b| u64::from(b.users)).sum()
    }
}

/// A vIOMMU's state that its nested domains reach: in a HAL frame of its own, so its address
/// stays fixed while the [`VtdViommu`] handle moves.
struct Shared {
    bindings: spin::Mutex<Bindings>,
}

const _: () = assert!(core::mem::size_of::<Shared>() <= 4096);

/// A pointer to a vIOMMU's [`Shared`] state.
#[derive(Clone, Copy)]
struct SharedRef(NonNull<Shared>);

// SAFETY: `Shared` is a spin lock (Send + Sync); the pointer stays valid while any holder
// exists: the frame is freed only by `destroy_viommu`, which owns the last handle and has
// checked under the lock that no nested domain (the other holders) is left.
unsafe impl Send for SharedRef {}
// SAFETY: as above; all access goes through the lock.
unsafe impl Sync for SharedRef {}

impl SharedRef {
    fn get(&self) -> &Shared {
        // SAFETY: see the `Send` impl: valid for as long as a holder (a vIOMMU handle or one
        // of its nested domains) exists, and `self` is one.
        unsafe { self.0.as_ref() }
    }
}

/// The unit's part of one guest's vIOMMU: `TranslationUnit::VIommu` of [`VtdUnit`].
pub struct VtdViommu {
    parent: Parent,
    shared: SharedRef,
    frame: PhysAddr,
}

impl VtdViommu {
    pub fn parent(&self) -> Parent {
        self.parent
    }

    /// The host domain id standing for the guest's `guest`, while a nested domain with it
    /// exists.
    pub fn host_domain(&self, guest: Did) -> Option<Did> {
        self.shared.get().bindings.lock().host(guest)
    }

    /// Nested domains built on this vIOMMU and not destroyed.
    pub fn nested_domains(&self) -> u64 {
        self.shared.get().bindings.lock().nested_domains()
    }
}

/// The table of a nested domain: what `attach` installs.
pub struct NestedTable {
    parent: Parent,
    guest_domain: Did,
    /// The guest's first stage, nested over the parent; `None` for the parent alone (guest
    /// pass-through, tagged with the parent's domain id).
    first_stage: Option<GuestFirstStage>,
    shared: SharedRef,
}

impl NestedTable {
    /// The nest parent's table (the second stage of a nested entry, the only one of a guest
    /// pass-through).
    pub fn root(&self) -> PhysAddr {
        self.parent.root
    }

    /// The guest's domain id this domain was built with.
    pub fn guest_domain(&self) -> Did {
        self.guest_domain
    }

    /// The guest's first stage, for a domain nested over the parent.
    pub fn first_stage(&self) -> Option<&GuestFirstStage> {
        self.first_stage.as_ref()
    }

    /// The PASID entry that puts a device in this domain (tagged `domain`, the domain's id):
    /// the nested entry, or a second-stage entry on the parent's table.
    pub(crate) fn pasid_entry(
        &self,
        domain: Did,
        cap: Capability,
        ecap: ExtendedCapability,
    ) -> Result<PasidEntry, EntryError> {
        match &self.first_stage {
            Some(guest) => nested_entry(guest, &self.parent, domain, cap, ecap),
            None => SecondStage::new(domain, self.parent.agaw, self.parent.root).build(cap, ecap),
        }
    }
}

/// The nested PASID entry (PGTT 011) for a guest's first stage over `parent`, tagged `host`.
pub(crate) fn nested_entry(
    guest: &GuestFirstStage,
    parent: &Parent,
    host: Did,
    cap: Capability,
    ecap: ExtendedCapability,
) -> Result<PasidEntry, EntryError> {
    let mut n = Nested::new(host, guest.root, guest.paging, parent.agaw, parent.root);
    n.supervisor_requests = guest.supervisor_requests;
    n.write_protect = guest.write_protect;
    n.extended_accessed = guest.extended_accessed;
    n.memory_type = guest.memory_type;
    n.build(cap, ecap)
}

/// Nest parents pinned by vIOMMUs, by domain id, and the domain ids of the nested domains
/// built on each: a parent in here cannot be destroyed, and its flushes cover its nested ids.
///
/// A spin lock over two small tables, never held across a hardware wait and taken after the
/// unit's `tables` lock (never before it): pins change in `new_viommu` / `destroy_viommu`,
/// nested ids in `new_nested` / `destroy_domain` (under `tables`), and every flush of a
/// domain reads the nested ids of that domain ([`nested_of`](Self::nested_of)).
///
/// `destroy_domain` checks the pin under `tables`; a pin taken concurrently comes from a
/// `new_viommu` that holds `&parent`, which cannot coexist with `destroy_domain(parent)`
/// taking it by value.
///
/// Why a flush may miss a nested id added meanwhile: the flush reads the list after the
/// parent's table changed (the unmap cleared its entries first). If the read does not see an
/// id, the insertion took the lock after the read released it, so the table change happens
/// before the insertion, and so before the nested domain's attach (a nested domain exists only
/// once inserted) and before any walk the unit does for that id: its IOTLB can only be filled
/// from the table as changed. An id released meanwhile is still invalidated by a flush that
/// read it: harmless, even if the id is already reused.
pub struct NestParents {
    inner: spin::Mutex<Nests>,
}

struct Nests {
    /// (parent's domain id, vIOMMUs pinning it); 0 marks a free slot.
    pins: [(Did, u32); NEST_PARENTS],
    /// (parent's domain id, a nested domain id over it).
    nested: [Option<(Did, Did)>; NESTED_IDS],
}

/// Nest parents one unit tracks at once.
pub const NEST_PARENTS: usize = 16;

/// Host domain ids of nested domains (first stage over a parent) one unit tracks at once.
pub const NESTED_IDS: usize = 64;

impl NestParents {
    pub const fn new() -> Self {
        Self {
            inner: spin::Mutex::new(Nests {
                pins: [(Did::new(0), 0); NEST_PARENTS],
                nested: [None; NESTED_IDS],
            }),
        }
    }

    fn pin(&self, parent: Did) -> Result<(), UnitError> {
        let mut inner = self.inner.lock();
        if let Some(p) = inner.pins.iter_mut().find(|p| p.1 > 0 && p.0 == parent) {
            p.1 = p.1.checked_add(1).ok_or(UnitError::OutOfIds)?;
            return Ok(());
        }
        let free = inner
            .pins
            .iter_mut()
            .find(|p| p.1 == 0)
            .ok_or(UnitError::OutOfIds)?;
        *free = (parent, 1);
        Ok(())
    }

    fn unpin(&self, parent: Did) {
        if let Some(p) = self
            .inner
            .lock()
            .pins
            .iter_mut()
            .find(|p| p.1 > 0 && p.0 == parent)
        {
            p.1 -= 1;
        }
    }

    /// Whether a vIOMMU uses `parent`: `destroy_domain` must refuse it with `Busy`.
    pub fn is_pinned(&self, parent: Did) -> bool {
        self.inner
            .lock()
            .pins
            .iter()
            .any(|p| p.1 > 0 && p.0 == parent)
    }

    /// Records `nested` as built on `parent`, before any device can be attached to it.
    fn add_nested(&self, parent: Did, nested: Did) -> Result<(), UnitError> {
        let mut inner = self.inner.lock();
        let free = inner
            .nested
            .iter_mut()
            .find(|n| n.is_none())
            .ok_or(UnitError::OutOfIds)?;
        *free = Some((parent, nested));
        Ok(())
    }

    /// Forgets `nested` (no entry points at it any more and its caches were invalidated).
    fn remove_nested(&self, nested: Did) {
        let mut inner = self.inner.lock();
        for slot in inner.nested.iter_mut() {
            if slot.is_some_and(|(_, n)| n == nested) {
                *slot = None;
            }
        }
    }

    /// The nested domain ids built on `parent` now (a copy: the flush issues its
    /// invalidations without the lock), and how many there are.
    pub fn nested_of(&self, parent: Did) -> ([Did; NESTED_IDS], usize) {
        let inner = self.inner.lock();
        let mut out = [Did::new(0); NESTED_IDS];
        let mut len = 0;
        for (p, n) in inner.nested.iter().flatten() {
            if *p == parent {
                if let Some(slot) = out.get_mut(len) {
                    *slot = *n;
                    len += 1;
                }
            }
        }
        (out, len)
    }
}

impl Default for NestParents {
    fn default() -> Self {
        Self::new()
    }
}

/// `TranslationUnit::new_viommu`: a scalable-mode unit and a second-stage parent.
pub(crate) fn new_viommu<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    parent: &VtdDomain<H>,
) -> Result<VtdViommu, UnitError> {
    if unit.mode() != Mode::Scalable {
        return Err(UnitError::Unsupported(
            "vIOMMU on a legacy-mode unit (nesting needs scalable-mode PASID entries)",
        ));
    }
    let DomainTable::Second(table) = &parent.table else {
        return Err(UnitError::Unsupported(
            "nest parent that is not a second-stage paging domain",
        ));
    };
    let agaw = crate::unit::agaw_of(table.format().aw())?;
    let parent = Parent {
        root: table.root(),
        domain: parent.id(),
        agaw,
        ia_bits: table.format().ia_bits(),
    };
    let frame = unit
        .hal
        .alloc_frame(FrameSize::SIZE_4K)
        .ok_or(UnitError::OutOfMemory)?;
    let ptr = unit.hal.phys_to_virt(frame).cast::<Shared>();
    // SAFETY: `frame` is a fresh 4 KiB frame from the HAL, owned by this vIOMMU alone, mapped
    // at `ptr` and aligned to 4 KiB; `Shared` fits in it (checked at compile time).
    unsafe {
        ptr.as_ptr().write(Shared {
            bindings: spin::Mutex::new(Bindings::new()),
        })
    };
    if let Err(e) = unit.nest_parents.pin(parent.domain) {
        // SAFETY: the frame was allocated above and nothing points at it.
        unsafe { unit.hal.free_frame(frame, FrameSize::SIZE_4K) };
        return Err(e);
    }
    Ok(VtdViommu {
        parent,
        shared: SharedRef(ptr),
        frame,
    })
}

/// `TranslationUnit::destroy_viommu`: refused with `Busy` while nested domains exist.
pub(crate) fn destroy_viommu<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    viommu: VtdViommu,
) -> Result<(), (VtdViommu, UnitError)> {
    if viommu.nested_domains() > 0 {
        return Err((viommu, UnitError::Busy));
    }
    unit.nest_parents.unpin(viommu.parent.domain);
    // SAFETY: no nested domain points at the frame (none is left, and none can be made: the
    // handle is ours by value), so this handle was its last user.
    unsafe { unit.hal.free_frame(viommu.frame, FrameSize::SIZE_4K) };
    Ok(())
}

/// `TranslationUnit::new_nested`: the guest's entry is checked first (refusals name its
/// field), then what the unit can do with it decides.
pub(crate) fn new_nested<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    viommu: &VtdViommu,
    guest: &GuestEntry,
) -> Result<VtdDomain<H>, UnitError> {
    let info = unit.unit_info();
    let limits = NestLimits {
        cap: info.cap,
        ecap: info.ecap,
        guest_address_bits: viommu.parent.ia_bits,
    };
    let config = validate_guest_pasid_entry(guest, &limits).map_err(UnitError::GuestEntry)?;
    match config {
        GuestConfig::FirstStage(_) if !info.ecap.nest() => {
            Err(UnitError::Unsupported("nested translation (ECAP.NEST)"))
        }
        GuestConfig::FirstStage(_) if !(info.ecap.flts() && info.ecap.slts()) => Err(
            UnitError::Unsupported("nested translation (ECAP.FLTS and ECAP.SLTS)"),
        ),
        GuestConfig::FirstStage(first) => new_nested_first_stage(unit, viommu, first),
        GuestConfig::ParentOnly { guest_domain } => {
            let host = viommu.parent.domain;
            viommu
                .shared
                .get()
                .bindings
                .lock()
                .bind(guest_domain, host)?;
            Ok(VtdDomain::from_parts(
                host,
                DomainTable::Nested(NestedTable {
                    parent: viommu.parent,
                    guest_domain,
                    first_stage: None,
                    shared: viommu.shared,
                }),
            ))
        }
    }
}

/// A guest first stage nested over the parent, tagged with the host domain id standing for
/// the guest's: the one its earlier nested domains use, else a fresh one, recorded as nested
/// on the parent before the domain exists (see [`NestParents`] for why that order).
fn new_nested_first_stage<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    viommu: &VtdViommu,
    first: GuestFirstStage,
) -> Result<VtdDomain<H>, UnitError> {
    let info = unit.unit_info();
    let parent = viommu.parent;
    let guest = first.guest_domain;
    // Everything the entry needs from the unit is checked now, with the parent's id standing
    // in for the host id (same range), so a refusal allocates nothing.
    nested_entry(&first, &parent, parent.domain, info.cap, info.ecap)
        .map_err(crate::unit::entry_error)?;
    // Lock order: `tables`, then the bindings, then the nest parents (see `NestParents`).
    let _tables = unit.tables.lock();
    let mut bindings = viommu.shared.get().bindings.lock();
    let host = match bindings.host(guest) {
        // The guest's id already tags a pass-through entry, which is the parent's id: nested
        // translations need their own.
        Some(host) if host == parent.domain => {
            return Err(UnitError::GuestEntry(
                "DID (the guest uses it for another translation)",
            ))
        }
        Some(host) => {
            bindings.bind(guest, host)?;
            host
        }
        None => {
            let host = unit.ids.allocate(&unit.hal)?;
            let recorded = unit
                .nest_parents
                .add_nested(parent.domain, host)
                .and_then(|()| bindings.bind(guest, host));
            if let Err(e) = recorded {
                unit.nest_parents.remove_nested(host);
                // Never attached nor cached: the id goes back as it came.
                unit.ids.release(&unit.hal, host);
                return Err(e);
            }
            host
        }
    };
    Ok(VtdDomain::from_parts(
        host,
        DomainTable::Nested(NestedTable {
            parent,
            guest_domain: guest,
            first_stage: Some(first),
            shared: viommu.shared,
        }),
    ))
}

/// What `destroy_domain` does with a nested domain once no device is attached to it (the
/// caller holds `tables` and has checked that no entry points at the domain's id).
///
/// On the parent alone: the vIOMMU forgets one user of its guest domain id; the host domain
/// id is the parent's and stays with it. Nested over the parent: the last domain of its guest
/// id also gives the host id back, after a domain-selective PASID-cache and IOTLB invalidation
/// of it (6.5.3.3: before a domain id is reused); if that fails, nothing changes and the
/// domain is handed back.
pub(crate) fn destroy_nested<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    id: Did,
    table: NestedTable,
) -> Result<(), (NestedTable, UnitError)> {
    let bindings = &table.shared.get().bindings;
    let last = table.first_stage.is_some() && bindings.lock().users(table.guest_domain) == 1;
    if last {
        // `tables` is held: no `new_nested` can take another reference meanwhile.
        let flush = [
            Descriptor::PasidCache(PasidCacheScope::Domain(id)),
            Descriptor::Iotlb {
                scope: IotlbScope::Domain(id),
                drain: unit.drain(),
            },
        ];
        if let Err(e) = unit.invalidate(&flush) {
            return Err((table, e));
        }
        unit.nest_parents.remove_nested(id);
    }
    bindings.lock().release(table.guest_domain);
    if last {
        unit.ids.release(&unit.hal, id);
    }
    Ok(())
}

/// Descriptors issued per batch (one wait each).
const CHUNK: usize = 32;

/// The guest's names as the unit knows them.
struct Names<'a> {
    viommu: &'a VtdViommu,
    devices: &'a dyn Fn(u32) -> Option<DeviceId>,
    /// Which host devices have ATS on.
    ats_enabled: &'a dyn Fn(SourceId) -> bool,
}

impl GuestNames for Names<'_> {
    fn host_domain(&self, guest: Did) -> Option<Did> {
        self.viommu.host_domain(guest)
    }

    fn device(&self, guest: SourceId) -> Option<SourceId> {
        let DeviceId(phys) = (self.devices)(u32::from(guest.raw()))?;
        u16::try_from(phys).ok().map(SourceId::from_raw)
    }

    fn ats_enabled(&self, host: SourceId) -> bool {
        (self.ats_enabled)(host)
    }
}

/// `TranslationUnit::forward_invalidations`: each guest descriptor checked and translated
/// ([`translate_guest_descriptor`]), issued through the unit's queue in batches of up to
/// `CHUNK` with one wait each; at the first refused one, what was accepted before it is
/// issued and waited for, and the call reports it. Guest waits are consumed (see
/// [`GuestAction::Consumed`]): when this returns, everything issued has completed. If the
/// hardware fails a batch, `done` counts only the descriptors before that batch.
pub(crate) fn forward_invalidations<H: Hal + Clone>(
    unit: &VtdUnit<'_, H>,
    viommu: &VtdViommu,
    devices: &dyn Fn(u32) -> Option<DeviceId>,
    cmds: &[[u64; 4]],
) -> Forwarded {
    let info = unit.unit_info();
    if unit.queue().is_none() {
        return Forwarded {
            done: 0,
            refused: Some(UnitError::Unsupported(
                "guest invalidations without an invalidation queue",
            )),
        };
    }
    let limits = HostLimits::for_unit(info.cap, info.ecap);
    let names = Names {
        viommu,
        devices,
        ats_enabled: &|source| unit.device_ats(source).is_some(),
    };
    forward(cmds, &limits, &names, &mut |batch| unit.invalidate(batch))
}

/// The body of `forward_invalidations` over any issuer: `issue` gets each batch (never
/// empty) and returns once it completed.
fn forward(
    cmds: &[[u64; 4]],
    limits: &HostLimits,
    names: &impl GuestNames,
    issue: &mut dyn FnMut(&[Descriptor]) -> Result<(), UnitError>,
) -> Forwarded {
    let mut batch = [Descriptor::Raw([0; 4]); CHUNK];
    let mut len = 0;
    // Index of the first command whose descriptor has not completed yet.
    let mut pending_from = 0;
    let mut flush = |batch: &[Descriptor]| {
        if batch.is_empty() {
            Ok(())
        } else {
            issue(batch)
        }
    };
    for (i, raw) in cmds.iter().enumerate() {
        match translate_guest_descriptor(raw, limits, names) {
            Ok(GuestAction::Issue(d)) => {
                if len == CHUNK {
                    if let Err(e) = flush(&batch[..len]) {
                        return Forwarded {
                            done: pending_from,
                            refused: Some(e),
                        };
                    }
                    len = 0;
                    pending_from = i;
                }
                batch[len] = d;
                len += 1;
            }
            Ok(GuestAction::Consumed) => {}
            Err(reason) => {
                let (done, refused) = match flush(&batch[..len]) {
                    Ok(()) => (i, UnitError::GuestCommand(reason)),
                    Err(e) => (pending_from, e),
                };
                return Forwarded {
                    done,
                    refused: Some(refused),
                };
            }
        }
    }
    match flush(&batch[..len]) {
        Ok(()) => Forwarded {
            done: cmds.len(),
            refused: None,
        },
        Err(e) => Forwarded {
            done: pending_from,
            refused: Some(e),
        },
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
