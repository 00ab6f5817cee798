//! The crate's one error type: each layer of the crate refuses with its own detailed error
//! (firmware table, register mapping, capability decoding, in-memory entries, descriptors, the
//! queue, register-based invalidation), and [`Error`] carries any of them, so an embedder's
//! bring-up code can use `?` across layers. The unit's [`TranslationUnit`] operations report in
//! the core's terms instead ([`iommu::unit::UnitError`]).
//!
//! [`TranslationUnit`]: iommu::unit::TranslationUnit

use core::fmt;

use crate::caps::AgawError;
use crate::descriptor::{DecodeError, DescriptorError};
use crate::dmar::DmarError;
use crate::qi::QiError;
use crate::register_invalidation::RegisterInvalidationError;
use crate::registers::RegisterMapError;
use crate::root_table::EntryError;

/// Any error of this crate's own layers; the variant names the layer, the payload says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The ACPI DMAR table was rejected.
    Dmar(DmarError),
    /// A unit's registers cannot be used as mapped.
    RegisterMap(RegisterMapError),
    /// No second-stage table depth fits (CAP.SAGAW).
    Agaw(AgawError),
    /// A root, context or PASID entry cannot be built or used on the unit.
    Entry(EntryError),
    /// An invalidation descriptor cannot be built.
    Descriptor(DescriptorError),
    /// 256 bits written by someone else (a guest) are not a valid descriptor.
    Decode(DecodeError),
    /// The invalidation queue failed.
    Qi(QiError),
    /// A register-based invalidation failed.
    RegisterInvalidation(RegisterInvalidationError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dmar(e) => e.fmt(f),
            Self::RegisterMap(e) => e.fmt(f),
            Self::Agaw(e) => e.fmt(f),
            Self::Entry(e) => e.fmt(f),
            Self::Descriptor(e) => e.fmt(f),
            Self::Decode(e) => e.fmt(f),
            Self::Qi(e) => e.fmt(f),
            Self::RegisterInvalidation(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Self::Dmar(e) => e,
            Self::RegisterMap(e) => e,
            Self::Agaw(e) => e,
            Self::Entry(e) => e,
            Self::Descriptor(e) => e,
            Self::Decode(e) => e,
            Self::Qi(e) => e,
            Self::RegisterInvalidation(e) => e,
        })
    }
}

macro_rules! from_layer {
    ($($variant:ident($payload:ty)),* $(,)?) => {
        $(impl From<$payload> for Error {
            fn from(e: $payload) -> Self {
                Self::$variant(e)
            }
        })*
    };
}

from_layer!(
    Dmar(DmarError),
    RegisterMap(RegisterMapError),
    Agaw(AgawError),
    Entry(EntryError),
    Descriptor(DescriptorError),
    Decode(DecodeError),
    Qi(QiError),
    RegisterInvalidation(RegisterInvalidationError),
);
