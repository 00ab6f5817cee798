//! The crate's one error type: every failure the SMMUv3 back-end reports, each layer's own error
//! as a case, and how it folds into the core's [`UnitError`].

use core::fmt;

use iommu::unit::{DeviceId, HardwareError, UnitError};

use crate::cmdq::{CmdqError, CommandErrorCode};
use crate::command::{DecodeError, EncodeError};
use crate::context_descriptor::CdTableError;
use crate::devicetree::DtError;
use crate::entry::EntryError;
use crate::eventq::EventqError;
use crate::iort::IortError;
use crate::stream_table::StreamTableError;

/// Why anything in this crate failed: bring-up and unit operations (folded into the core's
/// [`UnitError`] at the `TranslationUnit` boundary), the tables, the queues, and the firmware
/// descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A handshake (GBPA.UPDATE, CR0ACK) did not complete.
    Timeout(iommu::poll::Timeout),
    /// The HAL had no frame for a queue or table.
    OutOfMemory,
    /// The stream table could not be built or updated.
    StreamTable(StreamTableError),
    /// A context descriptor table could not be built or updated.
    CdTable(CdTableError),
    /// An STE or CD field was out of range.
    Entry(EntryError),
    /// A command failed.
    Command(CmdqError),
    /// The SMMU lacks something the driver needs (named).
    Unsupported(&'static str),
    /// The event queue cannot be driven.
    EventQueue(EventqError),
    /// A command cannot be encoded.
    Encode(EncodeError),
    /// A command (a guest's) cannot be decoded.
    Decode(DecodeError),
    /// The devicetree does not describe the SMMU usably.
    Devicetree(DtError),
    /// The IORT does not describe the SMMU usably.
    Iort(IortError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(t) => write!(f, "{t}"),
            Self::OutOfMemory => f.write_str("out of memory for SMMU queues or tables"),
            Self::StreamTable(e) => write!(f, "stream table: {e}"),
            Self::CdTable(e) => write!(f, "context descriptor table: {e}"),
            Self::Entry(e) => write!(f, "STE/CD: {e}"),
            Self::Command(e) => write!(f, "command queue: {e}"),
            Self::Unsupported(what) => write!(f, "SMMU lacks {what}"),
            Self::EventQueue(e) => write!(f, "event queue: {e}"),
            Self::Encode(e) => write!(f, "command encoding: {e}"),
            Self::Decode(e) => write!(f, "command decoding: {e}"),
            Self::Devicetree(e) => write!(f, "devicetree: {e}"),
            Self::Iort(e) => write!(f, "IORT: {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<Error> for UnitError {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout(t) => UnitError::Timeout(t),
            Error::OutOfMemory
            | Error::Command(CmdqError::OutOfMemory)
            | Error::StreamTable(StreamTableError::OutOfMemory)
            | Error::CdTable(CdTableError::OutOfMemory) => UnitError::OutOfMemory,
            Error::StreamTable(StreamTableError::StreamIdOutOfRange { sid, .. }) => {
                UnitError::UnknownDevice(DeviceId(sid))
            }
            Error::Command(CmdqError::Timeout(t))
            | Error::StreamTable(StreamTableError::Invalidation(CmdqError::Timeout(t))) => {
                UnitError::Timeout(t)
            }
            // A table change whose invalidation failed is a queue failure, not an encoding one.
            Error::Command(c) | Error::StreamTable(StreamTableError::Invalidation(c)) => {
                UnitError::Hardware(match c {
                    CmdqError::Command(f) if f.code == CommandErrorCode::Illegal => {
                        HardwareError::CommandRejected
                    }
                    CmdqError::Command(f) if f.code == CommandErrorCode::AtcInvalidationSync => {
                        HardwareError::DeviceTlbTimeout
                    }
                    _ => HardwareError::Queue,
                })
            }
            Error::StreamTable(_) | Error::CdTable(_) | Error::Entry(_) => {
                UnitError::Hardware(HardwareError::EntryEncoding)
            }
            Error::Unsupported(what) => UnitError::Unsupported(what),
            Error::EventQueue(_) | Error::Encode(_) => UnitError::Hardware(HardwareError::Queue),
            Error::Decode(_) => UnitError::GuestCommand("a command that does not decode"),
            Error::Devicetree(_) | Error::Iort(_) => {
                UnitError::Unsupported("the firmware's description of the SMMU")
            }
        }
    }
}

impl From<iommu::poll::Timeout> for Error {
    fn from(t: iommu::poll::Timeout) -> Self {
        Self::Timeout(t)
    }
}

impl From<CmdqError> for Error {
    fn from(e: CmdqError) -> Self {
        Self::Command(e)
    }
}

impl From<StreamTableError> for Error {
    fn from(e: StreamTableError) -> Self {
        Self::StreamTable(e)
    }
}

impl From<CdTableError> for Error {
    fn from(e: CdTableError) -> Self {
        Self::CdTable(e)
    }
}

impl From<EntryError> for Error {
    fn from(e: EntryError) -> Self {
        Self::Entry(e)
    }
}

impl From<EventqError> for Error {
    fn from(e: EventqError) -> Self {
        Self::EventQueue(e)
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl From<DtError> for Error {
    fn from(e: DtError) -> Self {
        Self::Devicetree(e)
    }
}

impl From<IortError> for Error {
    fn from(e: IortError) -> Self {
        Self::Iort(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smmu_errors_fold_into_unit_errors() {
        assert_eq!(UnitError::from(Error::OutOfMemory), UnitError::OutOfMemory);
        let t = iommu::poll::Timeout { waiting_for: "x" };
        assert_eq!(UnitError::from(Error::Timeout(t)), UnitError::Timeout(t));
        assert_eq!(
            UnitError::from(Error::Command(CmdqError::Timeout(t))),
            UnitError::Timeout(t)
        );
        assert_eq!(
            UnitError::from(Error::Unsupported("stage 1")),
            UnitError::Unsupported("stage 1")
        );
        // A stream table change whose invalidation failed reports the queue, not the entry.
        let wedged = Error::StreamTable(StreamTableError::Invalidation(CmdqError::Timeout(t)));
        assert_eq!(UnitError::from(wedged), UnitError::Timeout(t));
        assert_eq!(
            UnitError::from(Error::StreamTable(StreamTableError::NoLevel2(3))),
            UnitError::Hardware(HardwareError::EntryEncoding)
        );
    }
}
