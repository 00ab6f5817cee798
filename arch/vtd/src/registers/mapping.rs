//! One remapping unit's registers, reached from the register base its DRHD gives, and what the
//! unit says about itself (version and capabilities).
//!
//! The only raw-pointer step is [`UnitRegisters::new`] (and [`read_unit_info`] for a one-off
//! look); after it, registers are reached through shared references to the tock-registers
//! structs, with the hardware-reported offsets of the IOTLB and fault recording registers checked
//! against the mapped size first.

use super::{FaultRecordingRegister, IotlbRegisters, RegisterBlock};
use crate::caps::{Capability, ExtendedCapability, Version};
use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;
use tock_registers::interfaces::Readable;

/// What a unit reports about itself: VER, CAP and ECAP as read at discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitInfo {
    pub version: Version,
    pub cap: Capability,
    pub ecap: ExtendedCapability,
}

impl UnitInfo {
    /// Reads VER, CAP and ECAP.
    pub fn read(regs: &RegisterBlock) -> Self {
        Self {
            version: Version::from_register(regs.ver.get()),
            cap: Capability(regs.cap.get()),
            ecap: ExtendedCapability(regs.ecap.get()),
        }
    }
}

/// Reads the version and capabilities of the unit whose registers are at `base`.
///
/// # Safety
/// `base` must map the unit's register set (at least the fixed 0xf0-byte block at
/// [`RegisterBlock`]'s offsets) as device memory, 8-byte aligned, for the duration of the call.
/// Reading VER, CAP and ECAP has no side effects, so concurrent users of the unit are not
/// disturbed.
pub unsafe fn read_unit_info(base: NonNull<RegisterBlock>) -> UnitInfo {
    // SAFETY: the caller guarantees `base` maps the register block for this call; the block is
    // only read, through the volatile accessors of its register types.
    let regs = unsafe { base.as_ref() };
    UnitInfo::read(regs)
}

/// Why a unit's registers cannot be used as mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterMapError {
    /// The register base is not 4 KiB aligned (the spec places register sets on pages).
    MisalignedBase { base: usize },
    /// A register group the hardware places at `offset` (from CAP.FRO/NFR or ECAP.IRO) ends
    /// beyond the `mapped` bytes: reaching it would touch memory outside the mapping.
    OutsideMapping {
        what: &'static str,
        end: usize,
        mapped: usize,
    },
}

impl fmt::Display for RegisterMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MisalignedBase { base } => {
                write!(f, "VT-d: register base {base:#x} is not 4 KiB aligned")
            }
            Self::OutsideMapping { what, end, mapped } => write!(
                f,
                "VT-d: {what} end at offset {end:#x}, beyond the {mapped:#x} bytes mapped"
            ),
        }
    }
}

impl core::error::Error for RegisterMapError {}

/// The registers of one remapping unit: the fixed block, the IOTLB registers and the fault
/// recording registers, located and bounds-checked once.
pub struct UnitRegisters {
    base: NonNull<u8>,
    info: UnitInfo,
}

impl UnitRegisters {
    /// Locates the registers of the unit mapped at `base`, `mapped_len` bytes long (the DRHD's
    /// register size), and checks that the groups the hardware places by offset lie inside.
    ///
    /// # Safety
    /// `base` must map `mapped_len` bytes of the unit's registers as device memory for as long
    /// as the returned value (and references obtained from it) live. Other code may use the
    /// same registers: every access is a single volatile read or write, but coordinating
    /// read-modify-write sequences between users is theirs to do.
    pub unsafe fn new(base: NonNull<u8>, mapped_len: usize) -> Result<Self, RegisterMapError> {
        let addr = base.as_ptr() as usize;
        if !addr.is_multiple_of(4096) {
            return Err(RegisterMapError::MisalignedBase { base: addr });
        }
        check_inside(
            "the fixed registers",
            size_of::<RegisterBlock>(),
            mapped_len,
        )?;
        // SAFETY: `base` maps at least the fixed block (checked above, guaranteed by the caller)
        // and is 4 KiB aligned, more than the block's 8-byte alignment.
        let info = unsafe { read_unit_info(base.cast()) };
        let iotlb_end = info.ecap.iotlb_register_offset() + size_of::<IotlbRegisters>();
        check_inside("the IOTLB registers", iotlb_end, mapped_len)?;
        let fault_end = info.cap.fault_recording_offset()
            + usize::from(info.cap.fault_recording_count()) * size_of::<FaultRecordingRegister>();
        check_inside("the fault recording registers", fault_end, mapped_len)?;
        Ok(Self { base, info })
    }

    /// Version and capabilities as read when the registers were located.
    pub fn info(&self) -> UnitInfo {
        self.info
    }

    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The fixed register block.
    pub fn block(&self) -> &RegisterBlock {
        // SAFETY: `new` checked the block lies inside the mapping the caller vouched for, which
        // outlives `self`; alignment was checked in `new`.
        unsafe { self.base.cast::<RegisterBlock>().as_ref() }
    }

    /// The IOTLB registers at ECAP.IRO × 16.
    pub fn iotlb(&self) -> &IotlbRegisters {
        let offset = self.info.ecap.iotlb_register_offset();
        // SAFETY: `new` checked offset + 16 lies inside the mapping; the offset is a multiple of
        // 16, so the 8-byte registers stay aligned.
        unsafe { self.base.add(offset).cast::<IotlbRegisters>().as_ref() }
    }

    /// Fault recording register `index` (0 ..= CAP.NFR), or `None` past the last one.
    pub fn fault_recording(&self, index: u16) -> Option<&FaultRecordingRegister> {
        if index >= self.info.cap.fault_recording_count() {
            return None;
        }
        let offset = self.info.cap.fault_recording_offset()
            + usize::from(index) * size_of::<FaultRecordingRegister>();
        // SAFETY: `new` checked that all CAP.NFR + 1 registers lie inside the mapping, and
        // `index` is below that count; offsets are multiples of 16, keeping alignment.
        Some(unsafe {
            self.base
                .add(offset)
                .cast::<FaultRecordingRegister>()
                .as_ref()
        })
    }
}

fn check_inside(what: &'static str, end: usize, mapped: usize) -> Result<(), RegisterMapError> {
    if end > mapped {
        return Err(RegisterMapError::OutsideMapping { what, end, mapped });
    }
    Ok(())
}

/// A few readable lines on what the unit can do, for logs and the demo.
impl fmt::Display for UnitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cap, ecap) = (self.cap, self.ecap);
        let on_off = |b: bool| if b { "on" } else { "off" };
        write!(f, "VT-d {}, ", self.version)?;
        if ecap.smts() {
            write!(f, "legacy and scalable mode")?;
            if ecap.slts() {
                write!(f, ", second-stage PASID entries")?;
            }
            if ecap.flts() {
                write!(f, ", first-stage PASID entries")?;
                if cap.fs1gp() {
                    write!(f, " (1G pages)")?;
                }
            }
            if ecap.nest() {
                write!(f, ", nested")?;
            }
            if ecap.pasid() {
                write!(f, ", {}-bit PASIDs", ecap.pasid_width())?;
            }
        } else {
            write!(f, "legacy mode only")?;
        }
        writeln!(f)?;
        write!(f, "  second-stage tables:")?;
        let mut sep = " ";
        for agaw in cap.sagaw().iter() {
            write!(f, "{sep}{agaw}")?;
            sep = " or ";
        }
        let sp = cap.sllps();
        let pages = match (sp.size_2m, sp.size_1g) {
            (true, true) => "2M/1G superpages",
            (true, false) => "2M superpages",
            _ => "no superpages",
        };
        writeln!(f, ", MGAW {} bits, {pages}", cap.mgaw())?;
        write!(f, "  {} domain ids, ", cap.domain_ids())?;
        if ecap.qi() {
            write!(f, "queued invalidation")?;
        } else {
            write!(f, "register-based invalidation")?;
        }
        if cap.psi() {
            write!(f, " (page-selective up to 2^{} pages)", cap.mamv())?;
        }
        writeln!(f, ", caching mode {}", on_off(cap.caching_mode()))?;
        writeln!(
            f,
            "  pass-through {}, interrupt remapping {}, device-TLB {}, snoop control {}, \
             page walks {}, write-buffer flush {}",
            on_off(ecap.pt()),
            on_off(ecap.ir()),
            on_off(ecap.dt()),
            on_off(ecap.sc()),
            if ecap.coherent() {
                "coherent"
            } else {
                "not coherent (flush tables)"
            },
            if cap.rwbf() { "needed" } else { "not needed" },
        )?;
        let n = cap.fault_recording_count();
        write!(
            f,
            "  {n} fault recording register{} at {:#x}, IOTLB registers at {:#x}",
            if n == 1 { "" } else { "s" },
            cap.fault_recording_offset(),
            ecap.iotlb_register_offset()
        )
    }
}

#[cfg(test)]
mod tests;
