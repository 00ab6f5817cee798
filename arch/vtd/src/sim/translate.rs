//! The simulated unit's DMA translation: from the latched root-table pointer through the root,
//! context and PASID structures to the page-table walk(s), with the checks and fault reason
//! codes of QEMU 10's `vtd_do_iommu_translate` (VT-d 3.x-6.x; reason codes 7.1.3).
//!
//! Where QEMU has no model, or orders its checks against the spec, the spec decides: a PASID
//! entry's presence is checked before its type; nested translation (PGTT 3: every first-stage
//! table address and the output go through the second stage) and five-level first-stage
//! tables (with CAP.FL5LP); the first stage's canonical check uses the table's own width (48
//! or 57 bits). Like QEMU, requests are untranslated user requests (first-stage entries need
//! U/S), and there is no execute access, no IOTLB and no context cache: every request walks
//! the tables as they are now, so a missing invalidation is not visible here.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// The fault reason codes the walk reports (7.1.3, tables 30 and 31; QEMU's `VTDFaultReason`).
pub mod reason {
    /// LRT.1/SRT.1: the root entry (or its half, in scalable mode) is not present.
    pub const ROOT_ENTRY_NOT_PRESENT: u8 = 0x01;
    /// LCT.1/SCT.1: the context entry is not present.
    pub const CONTEXT_ENTRY_NOT_PRESENT: u8 = 0x02;
    /// LCT.4: the context entry's AW or TT is not supported, or its table cannot be read.
    pub const CONTEXT_ENTRY_INVALID: u8 = 0x03;
    /// LGN.1: the address is beyond the table's width (and the unit's).
    pub const ADDRESS_BEYOND_WIDTH: u8 = 0x04;
    /// LSL.2: a write through a second-stage entry without W (not present included).
    pub const WRITE: u8 = 0x05;
    /// LSL.2: a read through a second-stage entry without R (not present included).
    pub const READ: u8 = 0x06;
    /// LSL.1: a second-stage table below the top cannot be read.
    pub const PAGING_ENTRY_INVALID: u8 = 0x07;
    /// LRT.2: the root table cannot be read.
    pub const ROOT_TABLE_INVALID: u8 = 0x08;
    /// LCT.2: the context table cannot be read.
    pub const CONTEXT_TABLE_INVALID: u8 = 0x09;
    /// LRT.3: a reserved field is set in a present root entry.
    pub const ROOT_ENTRY_RESERVED: u8 = 0x0a;
    /// LCT.3: a reserved field is set in a present context entry.
    pub const CONTEXT_ENTRY_RESERVED: u8 = 0x0b;
    /// LSL.3: a reserved field is set in a second-stage entry.
    pub const PAGING_ENTRY_RESERVED: u8 = 0x0c;
    /// LGN.4: the output is in the interrupt range (legacy mode).
    pub const INTERRUPT_ADDRESS: u8 = 0x0e;
    /// SPD.1: the PASID directory cannot be read.
    pub const PASID_DIRECTORY_ACCESS: u8 = 0x50;
    /// SPD.2: the PASID directory entry is not present.
    pub const PASID_DIRECTORY_ENTRY_NOT_PRESENT: u8 = 0x51;
    /// SPT.1: the PASID table cannot be read.
    pub const PASID_TABLE_ACCESS: u8 = 0x58;
    /// SPT.2: the PASID entry is not present.
    pub const PASID_ENTRY_NOT_PRESENT: u8 = 0x59;
    /// SPT.4: the PASID entry's PGTT or width is not supported.
    pub const PASID_ENTRY_INVALID: u8 = 0x5b;
    /// SFS.1: a first-stage table below the top cannot be read.
    pub const FIRST_STAGE_ENTRY_INVALID: u8 = 0x70;
    /// SFS.2: a first-stage entry is not present.
    pub const FIRST_STAGE_ENTRY_NOT_PRESENT: u8 = 0x71;
    /// SFS.3: a reserved field is set in a present first-stage entry.
    pub const FIRST_STAGE_ENTRY_RESERVED: u8 = 0x72;
    /// SFS.4: the first-stage table pointer cannot be read.
    pub const FIRST_STAGE_TABLE_INVALID: u8 = 0x73;
    /// SGN.5: the address is not canonical for the first-stage table.
    pub const NOT_CANONICAL: u8 = 0x80;
    /// SGN.6: a user request through a supervisor first-stage entry.
    pub const USER_TO_SUPERVISOR: u8 = 0x81;
    /// SGN.4.x: a write through a first-stage entry without R/W.
    pub const FIRST_STAGE_WRITE: u8 = 0x85;
    /// SGN.8: the output is in the interrupt range (scalable mode).
    pub const SCALABLE_INTERRUPT_ADDRESS: u8 = 0x87;

    /// Whether the fault is "qualified": not recorded when the context, PASID directory or
    /// PASID entry that served the request has FPD set (QEMU's `vtd_qualified_faults`).
    pub const fn qualified(code: u8) -> bool {
        !matches!(
            code,
            0 | ROOT_ENTRY_NOT_PRESENT
                | ROOT_TABLE_INVALID
                | CONTEXT_TABLE_INVALID
                | ROOT_ENTRY_RESERVED
                | PASID_DIRECTORY_ACCESS
                | PASID_TABLE_ACCESS
        )
    }
}

/// The kind of a simulated DMA request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A memory read.
    Read,
    /// A memory write.
    Write,
}

/// A translation fault: what the unit would record (11.4.7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The reason code (7.1.3; the constants in [`reason`]).
    pub reason: u8,
    /// The requester id, bus << 8 | devfn.
    pub source_id: u16,
    /// The PASID of a request with PASID.
    pub pasid: Option<u32>,
    /// The input address.
    pub address: u64,
    /// Read or write.
    pub access: Access,
}

impl Fault {
    /// The reason in the spec's words (as the driver's fault decoding says it).
    pub fn meaning(&self) -> &'static str {
        crate::fault_record::reason(self.reason).0
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:#x} from {:02x}:{:02x}.{}",
            self.access,
            self.address,
            self.source_id >> 8,
            (self.source_id >> 3) & 0x1f,
            self.source_id & 7
        )?;
        if let Some(p) = self.pasid {
            write!(f, " (PASID {p:#x})")?;
        }
        write!(f, ": reason {:#04x}, {}", self.reason, self.meaning())
    }
}

/// A fault before it is given the request's identity, and whether FPD was found set on the
/// way (a qualified fault is then not recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failed {
    pub reason: u8,
    pub fpd: bool,
}

/// What the walk needs of the unit: its registers as latched, and the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unit {
    pub cap: u64,
    pub ecap: u64,
    /// RTADDR as latched by the last SRTP.
    pub rtaddr: u64,
}

/// Second-stage entry bits (9.8): read, write, page size.
const SS_R: u64 = 1 << 0;
const SS_W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
/// Second-stage bits ignored by the unit (QEMU's `VTD_SS_IGN_COM`) and TM.
const SS_IGNORED: u64 = 0xbff0_0000_0000_0000;
const SS_TM: u64 = 1 << 62;
/// First-stage entry bits (9.7): present, read/write, user, accessed, dirty.
const FS_P: u64 = 1 << 0;
const FS_RW: u64 = 1 << 1;
const FS_US: u64 = 1 << 2;
const FS_A: u64 = 1 << 5;
const FS_D: u64 = 1 << 6;
/// First-stage bits 63:52 (XD and ignored).
const FS_UPPER_IGNORED: u64 = 0xfff0_0000_0000_0000;
/// The interrupt address range (3.15).
const INTERRUPT_RANGE: core::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

/// A quadword of table memory at host address `addr`; `None` where the unit could not read
/// (address 0 or misaligned: a table that was never set up).
///
/// # Safety
/// A non-zero aligned `addr` is live host memory (the contract of
/// [`SimulatedUnit::translate`](super::SimulatedUnit::translate)).
unsafe fn read(addr: u64) -> Option<u64> {
    if addr == 0 || !addr.is_multiple_of(8) {
        return None;
    }
    // SAFETY: live and aligned (the caller's contract); volatile because the driver may be
    // changing the entry on another thread, as the unit would see it.
    Some(unsafe { (addr as *const u64).read_volatile() })
}

/// Sets `bits` in the first-stage entry at `addr` (the unit's A/D updates, 3.6.2), atomically
/// against the driver's own updates of the entry.
///
/// # Safety
/// As for [`read`], and `addr` was just read.
unsafe fn set_bits(addr: u64, bits: u64) {
    // SAFETY: live, aligned host memory (the caller's contract); the driver writes entries as
    // whole aligned quadwords, so an atomic view of one is sound on the host.
    let entry = unsafe { AtomicU64::from_ptr(addr as *mut u64) };
    // Relaxed: the unit's A/D writes order against nothing but the entry itself.
    entry.fetch_or(bits, Ordering::Relaxed);
}

impl Unit {
    /// CAP.MGAW + 1: the unit's address width (QEMU's `aw_bits`).
    fn aw_bits(&self) -> u32 {
        (((self.cap >> 16) & 0x3f) + 1) as u32
    }

    /// Bits above the unit's address width.
    fn above_haw(&self) -> u64 {
        !((1u64 << self.aw_bits()) - 1)
    }

    /// An address field: bits 12 up to the address width.
    fn address(&self, entry: u64) -> u64 {
        entry & !0xfff & !self.above_haw()
    }

    fn scalable(&self) -> bool {
        self.rtaddr & (1 << 10) != 0
    }

    /// CAP.SAGAW has a `levels`-level second-stage table.
    fn second_stage_levels_supported(&self, levels: u32) -> bool {
        (2..=6).contains(&levels) && (self.cap >> 8) & (1 << (levels - 2)) != 0
    }

    /// Second-stage reserved bits at `level` (QEMU's `vtd_spte_rsvd*`).
    fn ss_reserved(&self, entry: u64, level: u32) -> bool {
        let upper = !(!self.above_haw() | SS_IGNORED);
        let mask = match level {
            2 if entry & PS != 0 => 0x1f_f800 | (upper & !SS_TM),
            3 if entry & PS != 0 => 0x3fff_f800 | (upper & !SS_TM),
            1 => 0x800 | (upper & !SS_TM),
            2 | 3 => 0x800 | upper,
            4 | 5 => 0x880 | upper,
            _ => !0,
        };
        entry & mask != 0
    }

    /// First-stage reserved bits at `level` (QEMU's `vtd_fpte_rsvd*`).
    fn fs_reserved(&self, entry: u64, level: u32) -> bool {
        let upper = !(!self.above_haw() | FS_UPPER_IGNORED);
        let mask = match level {
            2 if entry & PS != 0 => 0x1f_e000 | upper,
            3 if entry & PS != 0 => 0x3fff_e000 | upper,
            1..=3 => upper,
            4 | 5 => 0x80 | upper,
            _ => !0,
        };
        entry & mask != 0
    }

    /// The translation of `iova` for (`sid`, `pasid`).
    ///
    /// # Safety
    /// Every table reachable from `rtaddr` is live host memory.
    pub(super) unsafe fn translate(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, Failed> {
        let (bus, devfn) = (u64::from(sid >> 8), sid & 0xff);
        let scalable = self.scalable();
        let no_fpd = |reason| Failed { reason, fpd: false };

        // Root entry.
        let root = self.address(self.rtaddr);
        // SAFETY: the tables the walk reaches are live (the caller's contract).
        let re = unsafe { [read(root + 16 * bus), read(root + 16 * bus + 8)] };
        let [Some(re_lo), Some(re_hi)] = re else {
            return Err(no_fpd(reason::ROOT_TABLE_INVALID));
        };
        let upper_half = scalable && devfn > 0x7f;
        let half = if upper_half { re_hi } else { re_lo };
        if half & 1 == 0 {
            return Err(no_fpd(reason::ROOT_ENTRY_NOT_PRESENT));
        }
        let re_reserved = 0xffe | self.above_haw();
        // Legacy: the high quadword is all reserved; scalable: the upper half's pointer.
        let hi_reserved = if scalable { re_reserved } else { !0 };
        if re_lo & re_reserved != 0 || re_hi & hi_reserved != 0 {
            return Err(no_fpd(reason::ROOT_ENTRY_RESERVED));
        }

        // Context entry.
        let (size, index) = if scalable {
            (32, u64::from(devfn & 0x7f))
        } else {
            (16, u64::from(devfn))
        };
        let ce_addr = self.address(half) + size * index;
        let mut ce = [0u64; 4];
        for (i, w) in ce.iter_mut().enumerate().take(size as usize / 8) {
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            *w = unsafe { read(ce_addr + 8 * i as u64) }
                .ok_or(no_fpd(reason::CONTEXT_TABLE_INVALID))?;
        }
        if ce[0] & 1 == 0 {
            return Err(no_fpd(reason::CONTEXT_ENTRY_NOT_PRESENT));
        }
        let mut fpd = ce[0] & 2 != 0;
        let fail = |reason, fpd| Failed { reason, fpd };
        if !scalable {
            if ce[1] & 0xffff_ffff_ff00_0080 != 0 || ce[0] & (0xff0 | self.above_haw()) != 0 {
                return Err(fail(reason::CONTEXT_ENTRY_RESERVED, fpd));
            }
            let levels = 2 + (ce[1] & 7) as u32;
            if !self.second_stage_levels_supported(levels) {
                return Err(fail(reason::CONTEXT_ENTRY_INVALID, fpd));
            }
            let supported = match (ce[0] >> 2) & 3 {
                0 => true,
                1 => self.ecap & (1 << 2) != 0, // ECAP.DT
                2 => self.ecap & (1 << 6) != 0, // ECAP.PT
                _ => false,
            };
            if !supported {
                return Err(fail(reason::CONTEXT_ENTRY_INVALID, fpd));
            }
            // QEMU has no requests with PASID in legacy mode: the PASID is not looked at.
            if (ce[0] >> 2) & 3 == 2 {
                return Ok(iova);
            }
            let agaw = 30 + 9 * (ce[1] & 7) as u32;
            let table = self.address(ce[0]);
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            let out = unsafe { self.second_stage(table, levels, agaw, iova, access, true) }
                .map_err(|reason| fail(reason, fpd))?;
            return self
                .outside_interrupt_range(out.0, out.1, false)
                .map_err(|reason| fail(reason, fpd));
        }

        // Scalable mode.
        if ce[0] & (0x1e0 | self.above_haw()) != 0
            || ce[1] & 0xffff_ffff_ffe0_0000 != 0
            || ce[2] != 0
            || ce[3] != 0
        {
            return Err(fail(reason::CONTEXT_ENTRY_RESERVED, fpd));
        }
        let directory = ce[0] & !0xfff;
        let rid_pasid = (ce[1] & 0xf_ffff) as u32;
        // As QEMU: a context entry is valid only with a valid RID_PASID entry, whatever the
        // request's PASID.
        // SAFETY: the tables the walk reaches are live (the caller's contract).
        unsafe { self.pasid_entry(directory, rid_pasid) }
            .map_err(|(reason, _)| fail(reason, fpd))?;
        let pasid_value = pasid.unwrap_or(rid_pasid);
        // SAFETY: the tables the walk reaches are live (the caller's contract).
        let pe = match unsafe { self.pasid_entry(directory, pasid_value) } {
            Ok(pe) => {
                fpd |= pe[0] & 2 != 0;
                pe
            }
            Err((reason, entry_fpd)) => return Err(fail(reason, fpd || entry_fpd)),
        };
        let pgtt = (pe[0] >> 6) & 7;
        let ss_levels = 2 + ((pe[0] >> 2) & 7) as u32;
        let ss_agaw = 30 + 9 * ((pe[0] >> 2) & 7) as u32;
        let ss_root = self.address(pe[0]);
        let out = match pgtt {
            // Pass-through.
            4 => {
                if pasid.is_some() && INTERRUPT_RANGE.contains(&iova) {
                    return Err(fail(reason::SCALABLE_INTERRUPT_ADDRESS, fpd));
                }
                return Ok(iova);
            }
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            2 => unsafe { self.second_stage(ss_root, ss_levels, ss_agaw, iova, access, true) },
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            1 => unsafe { self.first_stage(&pe, None, iova, access) },
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            3 => unsafe {
                self.first_stage(&pe, Some((ss_root, ss_levels, ss_agaw)), iova, access)
            },
            _ => Err(reason::PASID_ENTRY_INVALID),
        }
        .map_err(|reason| fail(reason, fpd))?;
        self.outside_interrupt_range(out.0, out.1, true)
            .map_err(|reason| fail(reason, fpd))
    }

    /// The output, unless its page overlaps the interrupt range (LGN.4 / SGN.8).
    fn outside_interrupt_range(&self, out: u64, page: u64, scalable: bool) -> Result<u64, u8> {
        let base = out & !(page - 1);
        if base <= *INTERRUPT_RANGE.end() && base + page > *INTERRUPT_RANGE.start() {
            return Err(if scalable {
                reason::SCALABLE_INTERRUPT_ADDRESS
            } else {
                reason::INTERRUPT_ADDRESS
            });
        }
        Ok(out)
    }

    /// The PASID entry of `pasid` under `directory`, checked as QEMU does, or the reason and
    /// whether FPD was set where the walk stopped.
    ///
    /// # Safety
    /// As [`translate`](Self::translate).
    unsafe fn pasid_entry(&self, directory: u64, pasid: u32) -> Result<[u64; 8], (u8, bool)> {
        // SAFETY: the tables the walk reaches are live (the caller's contract).
        let pde = unsafe { read(directory + 8 * u64::from(pasid >> 6)) }
            .ok_or((reason::PASID_DIRECTORY_ACCESS, false))?;
        let dir_fpd = pde & 2 != 0;
        if pde & 1 == 0 {
            return Err((reason::PASID_DIRECTORY_ENTRY_NOT_PRESENT, dir_fpd));
        }
        let at = (pde & !0xfff) + 64 * u64::from(pasid & 0x3f);
        let mut pe = [0u64; 8];
        for (i, w) in pe.iter_mut().enumerate() {
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            *w = unsafe { read(at + 8 * i as u64) }.ok_or((reason::PASID_TABLE_ACCESS, dir_fpd))?;
        }
        let fpd = dir_fpd || pe[0] & 2 != 0;
        // Presence first, as the spec orders the checks (QEMU checks the type first, so that
        // a cleared entry, PGTT 0, reads as invalid, 0x5b, and never as not present).
        if pe[0] & 1 == 0 {
            return Err((reason::PASID_ENTRY_NOT_PRESENT, fpd));
        }
        let supported = match (pe[0] >> 6) & 7 {
            1 => self.ecap & (1 << 47) != 0 && self.first_stage_levels(&pe).is_some(), // FLTS
            2 => {
                self.ecap & (1 << 46) != 0 // SLTS
                    && self.second_stage_levels_supported(2 + ((pe[0] >> 2) & 7) as u32)
            }
            3 => {
                self.ecap & (1 << 26) != 0 // NEST
                    && self.first_stage_levels(&pe).is_some()
                    && self.second_stage_levels_supported(2 + ((pe[0] >> 2) & 7) as u32)
            }
            4 => self.ecap & (1 << 6) != 0, // PT
            _ => false,
        };
        if !supported {
            return Err((reason::PASID_ENTRY_INVALID, fpd));
        }
        Ok(pe)
    }

    /// The first-stage table's levels (PASID entry FSPM: 4, or 5 with CAP.FL5LP).
    fn first_stage_levels(&self, pe: &[u64; 8]) -> Option<u32> {
        match (pe[2] >> 2) & 3 {
            0 => Some(4),
            1 if self.cap & (1 << 60) != 0 => Some(5),
            _ => None,
        }
    }

    /// A second-stage walk (QEMU's `vtd_iova_to_slpte`): the output and the page size.
    /// `top_is_context`: a top table that cannot be read is the context (or PASID) entry's
    /// fault, not the table's.
    ///
    /// # Safety
    /// As [`translate`](Self::translate).
    unsafe fn second_stage(
        &self,
        root: u64,
        levels: u32,
        agaw: u32,
        iova: u64,
        access: Access,
        top_is_context: bool,
    ) -> Result<(u64, u64), u8> {
        let width = agaw.min(self.aw_bits());
        if width < 64 && iova >> width != 0 {
            return Err(reason::ADDRESS_BEYOND_WIDTH);
        }
        let need = match access {
            Access::Read => SS_R,
            Access::Write => SS_W,
        };
        let mut table = root;
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (level - 1);
            let index = (iova >> shift) & 0x1ff;
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            let Some(pte) = (unsafe { read(table + 8 * index) }) else {
                return Err(if level == levels && top_is_context {
                    reason::CONTEXT_ENTRY_INVALID
                } else {
                    reason::PAGING_ENTRY_INVALID
                });
            };
            if pte & need == 0 {
                return Err(match access {
                    Access::Read => reason::READ,
                    Access::Write => reason::WRITE,
                });
            }
            if self.ss_reserved(pte, level) {
                return Err(reason::PAGING_ENTRY_RESERVED);
            }
            if level == 1 || pte & PS != 0 {
                let page = 1u64 << shift;
                return Ok((
                    (self.address(pte) & !(page - 1)) | (iova & (page - 1)),
                    page,
                ));
            }
            table = self.address(pte);
            level -= 1;
        }
    }

    /// A first-stage walk (QEMU's `vtd_iova_to_flpte`), its table addresses and output put
    /// through the second stage `nested` (root, levels, AGAW) if given: the output and the
    /// page size.
    ///
    /// # Safety
    /// As [`translate`](Self::translate).
    unsafe fn first_stage(
        &self,
        pe: &[u64; 8],
        nested: Option<(u64, u32, u32)>,
        iova: u64,
        access: Access,
    ) -> Result<(u64, u64), u8> {
        let Some(levels) = self.first_stage_levels(pe) else {
            return Err(reason::PASID_ENTRY_INVALID);
        };
        // Canonical for the table's width: bits above it copies of its top bit.
        let width = 12 + 9 * levels;
        let upper = iova >> (width - 1);
        if upper != 0 && upper != u64::MAX >> (width - 1) {
            return Err(reason::NOT_CANONICAL);
        }
        // A guest-physical address of the first stage to host memory.
        let host = |gpa: u64, access: Access| -> Result<u64, u8> {
            match nested {
                None => Ok(gpa),
                // SAFETY: the caller's contract covers the second-stage tables too.
                Some((root, levels, agaw)) => {
                    unsafe { self.second_stage(root, levels, agaw, gpa, access, false) }
                        .map(|(out, _)| out)
                }
            }
        };
        let mut table = host(self.address(pe[2]), Access::Read)?;
        let mut level = levels;
        loop {
            let shift = 12 + 9 * (level - 1);
            let at = table + 8 * ((iova >> shift) & 0x1ff);
            // SAFETY: the tables the walk reaches are live (the caller's contract).
            let Some(pte) = (unsafe { read(at) }) else {
                return Err(if level == levels {
                    reason::FIRST_STAGE_TABLE_INVALID
                } else {
                    reason::FIRST_STAGE_ENTRY_INVALID
                });
            };
            if pte & FS_P == 0 {
                return Err(reason::FIRST_STAGE_ENTRY_NOT_PRESENT);
            }
            if pte & FS_US == 0 {
                return Err(reason::USER_TO_SUPERVISOR);
            }
            if access == Access::Write && pte & FS_RW == 0 {
                return Err(reason::FIRST_STAGE_WRITE);
            }
            if self.fs_reserved(pte, level) {
                return Err(reason::FIRST_STAGE_ENTRY_RESERVED);
            }
            let leaf = level == 1 || pte & PS != 0;
            let flags = if leaf && access == Access::Write {
                FS_A | FS_D
            } else {
                FS_A
            };
            if pte & flags != flags {
                // SAFETY: `at` was just read.
                unsafe { set_bits(at, flags) };
            }
            if leaf {
                let page = 1u64 << shift;
                let gpa = (self.address(pte) & !(page - 1)) | (iova & (page - 1));
                return Ok((host(gpa, access)?, page));
            }
            table = host(self.address(pte), Access::Read)?;
            level -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
