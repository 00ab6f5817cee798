//! A stream's own context-descriptor table, for a stream with substreams (PASIDs, IHI 0070
//! 3.4.2 and 5.2 S1DSS): the CD at SubstreamID `n` is a copy of the CD of the domain attached at
//! PASID `n`; requests without a SubstreamID use CD 0 (STE.S1DSS = Substream0) or bypass stage 1
//! (S1DSS = Bypass).
//!
//! A domain's CD is copied rather than pointed at: a CD table is indexed by SubstreamID, so one
//! domain's single-CD table cannot serve SSID `n`. The copy holds the domain's ASID, table and
//! attributes, so the TLB entries it makes carry the domain's ASID and an unmap's TLBI_NH_VA
//! reaches every substream that uses the domain.

use core::fmt;

use iommu::hal::Hal;

use crate::cmdq::CmdqError;
use crate::context_descriptor::{CdTable, CdTableError, CdTableGeometry, ContextDescriptor};
use crate::entry::{EntryWords, UpdateKind};
use crate::idr::Features;
use crate::stream_table::{DefaultSubstream, Stage1};

/// A stream's CD table with substreams, and what its requests without a SubstreamID use.
pub struct SubstreamTable<H: Hal> {
    cds: CdTable<H>,
    /// STE.S1DSS: `Substream0` (CD 0 translates untagged requests) or `Bypass`.
    default: DefaultSubstream,
}

impl<H: Hal> fmt::Debug for SubstreamTable<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubstreamTable")
            .field("cds", &self.cds)
            .field("default", &self.default)
            .finish()
    }
}

impl<H: Hal> SubstreamTable<H> {
    /// A table covering every SubstreamID the SMMU has (IDR1.SSIDSIZE), with `default` as CD 0
    /// (untagged requests translate through it) or, with `None`, untagged requests bypassing
    /// stage 1. Nothing points at the table yet, so nothing is invalidated.
    pub fn new(
        hal: H,
        features: &Features,
        default: Option<&ContextDescriptor>,
    ) -> Result<Self, CdTableError> {
        if features.ssid_bits == 0 {
            return Err(CdTableError::Geometry("no substreams (IDR1.SSIDSIZE = 0)"));
        }
        let geometry = CdTableGeometry::for_ssid_bits(features.ssid_bits, features)?;
        let mut cds = CdTable::new(hal, geometry, features.coherent)?;
        let default = match default {
            Some(cd) => {
                cds.install(0, Some(cd), |_, _| Ok(()))?;
                DefaultSubstream::Substream0
            }
            None => DefaultSubstream::Bypass,
        };
        Ok(Self { cds, default })
    }

    /// The stage-1 half of the STE pointing at this table (S1ContextPtr, S1Fmt, S1CDMax, S1DSS).
    pub fn stage1(&self) -> Stage1 {
        let mut s1 = self.cds.stage1();
        s1.default_substream = self.default;
        s1
    }

    /// What untagged requests use (STE.S1DSS).
    pub fn default_substream(&self) -> DefaultSubstream {
        self.default
    }

    /// The eight words of the CD at `ssid`.
    pub fn entry(&self, ssid: u32) -> Result<EntryWords, CdTableError> {
        self.cds.entry(ssid)
    }

    /// Points SubstreamID `ssid` (not 0: that is the default substream, see
    /// [`set_default`](Self::set_default)) at `cd`, or makes it invalid (requests with it are
    /// then terminated and reported as C_BAD_CD) with `None`. `invalidate(ssid, leaf)` must issue
    /// CMD_CFGI_CD for this stream and a CMD_SYNC, and wait.
    pub fn set(
        &mut self,
        ssid: u32,
        cd: Option<&ContextDescriptor>,
        invalidate: impl FnMut(u32, bool) -> Result<(), CmdqError>,
    ) -> Result<UpdateKind, CdTableError> {
        if ssid == 0 {
            return Err(CdTableError::Geometry(
                "SubstreamID 0 is the default substream",
            ));
        }
        self.cds.install(ssid, cd, invalidate)
    }

    /// Makes untagged requests translate through `cd` (CD 0, S1DSS = Substream0) or, with
    /// `None`, bypass stage 1. Returns whether S1DSS changed: the caller must then rewrite the
    /// STE from [`stage1`](Self::stage1), and after that, for `None`, call
    /// [`retire_default_cd`](Self::retire_default_cd). CD 0 is written before S1DSS starts
    /// using it.
    pub fn set_default(
        &mut self,
        cd: Option<&ContextDescriptor>,
        invalidate: impl FnMut(u32, bool) -> Result<(), CmdqError>,
    ) -> Result<bool, CdTableError> {
        let target = match cd {
            Some(cd) => {
                self.cds.install(0, Some(cd), invalidate)?;
                DefaultSubstream::Substream0
            }
            None => DefaultSubstream::Bypass,
        };
        let changed = target != self.default;
        self.default = target;
        Ok(changed)
    }

    /// Invalidates CD 0 once the STE says untagged requests bypass stage 1: requests tagged
    /// with SubstreamID 0 would otherwise still reach the old default domain.
    pub fn retire_default_cd(
        &mut self,
        invalidate: impl FnMut(u32, bool) -> Result<(), CmdqError>,
    ) -> Result<(), CdTableError> {
        if self.default == DefaultSubstream::Bypass {
            self.cds.install(0, None, invalidate)?;
        }
        Ok(())
    }

    /// Returns the table's frames to the HAL.
    ///
    /// # Safety
    /// As for [`CdTable::free`]: no STE the SMMU may still use points at the table.
    pub unsafe fn free(self) {
        // SAFETY: forwarded from the caller.
        unsafe { self.cds.free() }
    }
}

// Host memory through the core's host HAL, which loom builds leave out.
#[cfg(all(test, not(loom)))]
mod tests;
