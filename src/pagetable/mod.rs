//! Per-domain I/O page tables: one lock-free engine ([`PageTable`]) over small format types that
//! say how an entry is encoded (VT-d second stage, VT-d first stage = x86-64 paging, Arm VMSAv8-64
//! stage 1 and stage 2).
//!
//! # Operations
//!
//! - [`PageTable::map`] maps `[iova, iova + len)` to `[phys, phys + len)` with the largest pages
//!   that the alignment of both addresses, the remaining length and the format allow. A slot that
//!   already holds a table (left behind by earlier small mappings) is filled with smaller pages
//!   inside that table rather than replaced. Mapping over anything already mapped fails with
//!   [`Error::AlreadyMapped`] and changes nothing.
//! - [`PageTable::unmap`] removes every mapping inside `[iova, iova + len)`, returns how many bytes
//!   it removed and records in a [`Gather`] what the back-end must invalidate. **Rule: an unmap
//!   never cuts a mapping.** If a leaf (superpage or page) straddles either end of the range the
//!   unmap fails with [`Error::SplitsSuperpage`] and changes nothing; there is no splitting. A
//!   range with no mapping at all fails with [`Error::NothingMapped`].
//! - [`PageTable::iova_to_phys`] and [`PageTable::walk`] read the table without changing it.
//!
//! Every refused call returns one typed [`Error`] and leaves the mappings unchanged. The one case
//! with a visible side effect is [`Error::OutOfMemory`]: leaves written before the allocation
//! failed are removed again, but intermediate tables installed on the way stay (empty) until
//! [`PageTable::reclaim`], an unmap covering them, or [`PageTable::destroy`].
//!
//! # Table memory and invalidation
//!
//! Table frames come from the embedder's [`Hal`](crate::hal::Hal). Tables leave the tree in two
//! ways, both through a [`Gather`], which chains their frames through their first entry (no
//! allocation):
//! - an unmap that covers a table's whole span unlinks it at once (no other operation can be in
//!   that span);
//! - [`PageTable::unmap_pruning`] also unlinks the tables the unmap leaves empty on the way to
//!   the range's two ends, where the caller vouches that no other operation touches their span
//!   (it passes a region it owns, such as the free space around the range that an object model
//!   holding every mapping's record can keep others out of): then the tree after every unmap is
//!   exactly what a fresh map of the remaining leaves would build. This is what the object
//!   model's unmap does;
//! - [`PageTable::reclaim`] (`&mut self`: no operation runs) unlinks every table that unmaps left
//!   empty, bottom up, for callers that unmap without knowing such a region. A plain unmap under
//!   `&self` does not free the table it empties: another CPU may be on its way through it, and
//!   making that safe without the caller's word would cost every operation a fence.
//!
//! The frames are freed only after the IOTLB and paging-structure-cache invalidation of the
//! gathered range has completed: by [`PageTable::flush_gather`] (and `unmap_flushed`,
//! `reclaim_flushed`), which keep up to [`CACHED_FRAMES`] of them for the table's next tables so
//! that a buffer mapped and unmapped over and over does not allocate, or by the caller's
//! [`Gather::complete`]. A gather dropped without completion leaks its frames rather than free
//! them while a walker may still read them.
//!
//! # Concurrency
//!
//! `map`, `unmap`, `iova_to_phys` and `walk` take `&self` and may run at the same time on several
//! CPUs, without any lock, **provided no two running operations touch overlapping IOVA ranges**
//! (`[iova, iova + len)`, or the one address translated). The caller's own synchronization orders
//! operations on overlapping ranges (a DMA API does this naturally: a buffer is unmapped only
//! after its map returned). Breaking the rule cannot corrupt memory by itself (every entry access
//! is atomic and no frame is freed outside [`Gather::complete`], which is `unsafe` and whose
//! contract includes the rule) but gives unspecified mappings.
//!
//! How the engine shares tables between disjoint ranges:
//! - **Intermediate tables** are created zero-filled and installed with a compare-and-swap of the
//!   empty parent entry (release on success, so the zeroed contents are visible before the
//!   pointer to any CPU that acquires it, and to the hardware walker, which reads memory in the
//!   order a release store orders it). The loser of a race frees its fresh table at once (it was
//!   never published) and continues in the winner's table.
//! - **Leaf entries** are stored with release and read with acquire wherever the value may be
//!   followed into a table (a slot wholly inside the caller's range is only checked for
//!   emptiness, relaxed: no one else writes it); each entry is one aligned 64-bit store, so a
//!   walker sees either the old or the new entry, never a torn one.
//! - **Freeing** cannot race a walker: a table is unlinked only by an unmap whose range covers
//!   the table's whole span, so no concurrent operation (all disjoint) can be inside it, by a
//!   pruning unmap whose owned region covers it (the caller's word), or by `reclaim` under
//!   `&mut self`; hardware that cached the old parent entry may still read it
//!   until the invalidation completes, which is why the frame is freed (or cached) only after it.
//! - **The frame cache** is [`CACHED_FRAMES`] independent slots: a frame goes in by
//!   compare-and-swap from 0 (release) and out by swap to 0 (acquire), so no two CPUs take the
//!   same frame and no ABA can arise; the taker zeroes it before the release that links it.
//! - **Non-coherent walkers** (VT-d `ECAP.C` = 0, SMMU `IDR0.COHACC` = 0): every entry written is
//!   cleaned to the point of coherency before the operation returns; a new table is cleaned
//!   before it is linked. A CPU that descends through a table entry another CPU has just
//!   installed, but not yet cleaned, cleans it too (a software bit in the entry records that the
//!   installer's clean finished), so no map returns while a walker could still miss its path.
//!
//! The root table lives as long as the [`PageTable`]; the domain that owns it must outlive every
//! hardware context that points at it, and gives it back through [`PageTable::destroy`].

mod format;
mod gather;
mod table;
#[cfg(all(test, feature = "host-hal", not(loom)))]
mod tests;
pub mod untrusted;
pub mod vmsa;
pub mod vtd_second_stage;
pub mod x86_first_stage;

use core::fmt;

pub use format::Format;
pub use gather::{FlushRange, Gather};
pub use table::{Coherency, EntryKind, PageTable, Walk, WalkStep, CACHED_FRAMES, MAX_LEVELS};
pub use vmsa::{Granule, VmsaConfig, VmsaStage1, VmsaStage2};
pub use vtd_second_stage::{VtdSecondStage, VtdSecondStageConfig};
pub use x86_first_stage::{X86FirstStage, X86FirstStageConfig};

/// How the device's accesses through a mapping are cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemType {
    /// Normal write-back cacheable memory, coherent with the CPUs (the usual DMA buffer).
    Cacheable,
    /// Normal memory, not cached (a buffer the CPU maps uncached as well).
    NonCacheable,
    /// Device memory (MMIO of another device, for peer-to-peer DMA or an MSI doorbell).
    Device,
}

/// What a mapping allows: read, write, execute (for formats that control it) and a memory type.
///
/// A format that cannot express a combination exactly refuses it with
/// [`Error::UnsupportedPermissions`] rather than granting more (write-only on x86 paging and Arm
/// stage 1). Formats without an execute control (VT-d second stage) ignore `exec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prot {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
    /// The device may fetch instructions (PASID execute requests, Arm instruction fetches).
    pub exec: bool,
    /// Memory type of the mapped memory.
    pub mem: MemType,
}

impl Prot {
    /// Read-only, cacheable, not executable.
    pub const READ: Self = Self::new(true, false);
    /// Write-only, cacheable, not executable (VT-d second stage and Arm stage 2 only).
    pub const WRITE: Self = Self::new(false, true);
    /// Read-write, cacheable, not executable.
    pub const READ_WRITE: Self = Self::new(true, true);

    const fn new(read: bool, write: bool) -> Self {
        Self {
            read,
            write,
            exec: false,
            mem: MemType::Cacheable,
        }
    }

    /// The same permissions, executable.
    pub const fn with_exec(self) -> Self {
        Self { exec: true, ..self }
    }

    /// The same permissions with memory type `mem`.
    pub const fn with_mem(self, mem: MemType) -> Self {
        Self { mem, ..self }
    }
}

/// Why a page-table operation was refused. Every refused operation leaves the mappings as they
/// were (see [`Error::OutOfMemory`] for the one visible side effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// `len` is zero.
    ZeroLength,
    /// `iova` is not a multiple of the format's granule (its smallest page).
    UnalignedIova,
    /// `phys` is not a multiple of the format's granule.
    UnalignedPhys,
    /// `len` is not a multiple of the format's granule.
    UnalignedLength,
    /// `iova + len` or `phys + len` does not fit in 64 bits.
    WrapAround,
    /// The range reaches beyond the table's input address space (`2^ia_bits`, from the domain's
    /// aperture and the hardware's limits).
    BeyondAperture,
    /// The physical range reaches beyond the output address size (VT-d HAW, SMMU OAS).
    PhysBeyondOas,
    /// Neither read nor write was asked for: such an entry would be not-present.
    NoAccess,
    /// The format cannot express these permissions without granting more (write-only on x86
    /// paging or Arm stage 1).
    UnsupportedPermissions,
    /// Part of the range is already mapped; nothing was changed.
    AlreadyMapped,
    /// Nothing is mapped in the range (and no empty table was there to reclaim).
    NothingMapped,
    /// The unmap range starts or ends inside a mapping (usually a superpage); mappings are never
    /// split, so nothing was changed.
    SplitsSuperpage,
    /// The HAL had no frame for a needed table. Leaves already written were removed again;
    /// intermediate tables installed on the way stay, empty, until an unmap covers them or
    /// [`PageTable::reclaim`] runs.
    OutOfMemory,
    /// The format cannot be built from this configuration (address width not in `SAGAW`, granule
    /// or sizes the architecture does not allow, ...).
    UnsupportedConfig,
    /// The gather passed to an unmap or a flush already holds the unmaps of another table: a
    /// gather belongs to the one table that filled it (its frames to that table's HAL, its range
    /// to that table's walkers). Nothing was changed.
    ForeignGather,
    /// The region passed to [`PageTable::unmap_pruning`] or [`PageTable::prune`] as the
    /// caller's own does not contain the unmap range or the point. Nothing was changed.
    OwnedTooSmall,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::ZeroLength => "zero length",
            Error::UnalignedIova => "IOVA not aligned to the granule",
            Error::UnalignedPhys => "physical address not aligned to the granule",
            Error::UnalignedLength => "length not a multiple of the granule",
            Error::WrapAround => "address range wraps around",
            Error::BeyondAperture => "range beyond the table's input address space",
            Error::PhysBeyondOas => "physical range beyond the output address size",
            Error::NoAccess => "mapping grants neither read nor write",
            Error::UnsupportedPermissions => "format cannot express these permissions",
            Error::AlreadyMapped => "range overlaps an existing mapping",
            Error::NothingMapped => "nothing mapped in range",
            Error::SplitsSuperpage => "unmap range would split a mapping",
            Error::OutOfMemory => "out of page-table memory",
            Error::UnsupportedConfig => "unsupported page-table configuration",
            Error::ForeignGather => "gather holds the unmaps of another table",
            Error::OwnedTooSmall => "owned region does not contain the unmap range",
        };
        f.write_str(s)
    }
}

impl core::error::Error for Error {}

/// Result of a page-table operation.
pub type Result<T> = core::result::Result<T, Error>;
