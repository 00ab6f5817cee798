//! The per-stream records of a unit: what every configured stream's STE uses, and how many STEs
//! and CDs point at each domain, so a domain in use cannot be destroyed.

extern crate alloc;

use alloc::collections::BTreeMap;

use iommu::hal::Hal;

use super::domain::DomainSerial;
use crate::context_descriptor::ContextDescriptor;
use crate::stream_table::StreamTable;
use crate::substream::SubstreamTable;
use core::mem::ManuallyDrop;

/// What a stream's STE uses, as far as domain lifetimes are concerned.
pub(super) enum StreamUse<H: Hal> {
    /// STE.Config = bypass.
    Bypass,
    /// The STE points at these domains' tables: one, or a stage-1 domain and its stage-2
    /// parent. `cd` is the CD of a single stage-1 or shared domain (what a conversion to
    /// substreams keeps as the default).
    Domains {
        ids: [Option<DomainSerial>; 2],
        cd: Option<ContextDescriptor>,
    },
    /// The stream has its own CD table: `default` is CD 0's domain (`None`: untagged requests
    /// bypass stage 1), `pasids` the domain of every other valid CD.
    Substreams {
        table: SubstreamTable<H>,
        default: Option<DomainSerial>,
        pasids: BTreeMap<u32, DomainSerial>,
    },
}

impl<H: Hal> StreamUse<H> {
    fn for_each_domain(&self, mut f: impl FnMut(DomainSerial)) {
        match self {
            Self::Bypass => {}
            Self::Domains { ids, .. } => ids.iter().flatten().for_each(|&id| f(id)),
            Self::Substreams {
                default, pasids, ..
            } => {
                default.iter().for_each(|&id| f(id));
                pasids.values().for_each(|&id| f(id));
            }
        }
    }
}

/// The stream table and the records of what uses which domain, under one lock.
pub(super) struct Streams<H: Hal> {
    /// Freed by the unit's `Drop`, once the SMMU is disabled (never by its own drop: it must
    /// not be freed while the SMMU may walk it).
    pub(super) table: ManuallyDrop<StreamTable<H>>,
    /// Streams whose STE the unit configured; any other stream is blocked or aborted.
    pub(super) uses: BTreeMap<u32, StreamUse<H>>,
    /// How many STEs and CDs point at each domain (absent: none).
    pub(super) users: BTreeMap<DomainSerial, u32>,
}

pub(super) fn retain(users: &mut BTreeMap<DomainSerial, u32>, id: DomainSerial) {
    *users.entry(id).or_insert(0) += 1;
}

pub(super) fn release(users: &mut BTreeMap<DomainSerial, u32>, id: DomainSerial) {
    if let Some(n) = users.get_mut(&id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            users.remove(&id);
        }
    }
}

impl<H: Hal> Streams<H> {
    /// Records that `sid` now uses `new`; returns what it used before, whose tables the caller
    /// frees once the STE no longer points at them.
    pub(super) fn set_use(&mut self, sid: u32, new: Option<StreamUse<H>>) -> Option<StreamUse<H>> {
        if let Some(u) = &new {
            u.for_each_domain(|id| retain(&mut self.users, id));
        }
        let old = match new {
            Some(u) => self.uses.insert(sid, u),
            None => self.uses.remove(&sid),
        };
        if let Some(u) = &old {
            u.for_each_domain(|id| release(&mut self.users, id));
        }
        old
    }
}
