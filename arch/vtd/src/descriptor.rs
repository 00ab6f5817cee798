//! Invalidation descriptors (VT-d spec 6.5.2): the commands software puts in the invalidation
//! queue to flush the unit's caches. Which descriptors a range flush needs is planned in
//! `unit/invalidate.rs`.
//!
//! Each descriptor type is a typed value ([`Descriptor`]); [`Descriptor::encode`] is the one place
//! the bits are laid out. Descriptors are 128 bits in a 128-bit queue and 256 bits in a 256-bit
//! queue (IQA.DW, needed in scalable mode); the PASID-granular types exist only in 256-bit
//! queues. Field checks that QEMU 10.0 applies (reserved bits, AM ≤ MAMV, no SW together with IF
//! in a wait descriptor) are honoured by construction.

use core::fmt;

use iommu::addr::{Iova, PhysAddr};

use crate::caps::Capability;
use crate::pasid::Pasid;
use crate::root_table::{Did, SourceId};

/// The largest invalidation address mask: 2^52 pages cover the whole 64-bit space.
pub(crate) const MAX_ORDER: u8 = 52;

/// Why a descriptor cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorError {
    /// A page-selective address is not aligned to the 2^`am` pages it covers.
    MisalignedBlock { addr: Iova, am: u8 },
    /// The address mask is above what the unit supports (CAP.MAMV, or 52).
    MaskTooLarge { am: u8, max: u8 },
    /// A wait descriptor's status address is not 4-byte aligned (bits 1:0 are reserved).
    MisalignedStatus { addr: PhysAddr },
    /// A device's invalidate queue depth (ATS capability, 5 bits) above 31.
    QueueDepthOutOfRange { depth: u8 },
    /// An interrupt entry block's index is not aligned to its 2^`mask` entries.
    MisalignedEntries { index: u16, mask: u8 },
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MisalignedBlock { addr, am } => {
                write!(f, "VT-d: {addr} is not aligned to a block of 2^{am} pages")
            }
            Self::MaskTooLarge { am, max } => {
                write!(f, "VT-d: address mask {am} above the supported {max}")
            }
            Self::MisalignedStatus { addr } => {
                write!(f, "VT-d: wait status address {addr} is not 4-byte aligned")
            }
            Self::MisalignedEntries { index, mask } => {
                write!(
                    f,
                    "VT-d: interrupt entry {index} does not start a block of 2^{mask} entries"
                )
            }
            Self::QueueDepthOutOfRange { depth } => {
                write!(
                    f,
                    "VT-d: ATS invalidate queue depth {depth} does not fit in 5 bits"
                )
            }
        }
    }
}

impl core::error::Error for DescriptorError {}

/// A naturally aligned block of 2^`am` 4 KiB pages: what page-selective invalidations name
/// (ADDR and AM fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBlock {
    pub(crate) addr: Iova,
    pub(crate) am: u8,
}

impl PageBlock {
    /// The block of 2^`am` pages starting at `addr`, which must be aligned to the block size.
    pub const fn new(addr: Iova, am: u8) -> Result<Self, DescriptorError> {
        if am > MAX_ORDER {
            return Err(DescriptorError::MaskTooLarge { am, max: MAX_ORDER });
        }
        if !block_aligned(addr, am) {
            return Err(DescriptorError::MisalignedBlock { addr, am });
        }
        Ok(Self { addr, am })
    }

    /// One 4 KiB page (the low 12 bits of `addr` are dropped).
    pub const fn page(addr: Iova) -> Self {
        Self {
            addr: Iova::new(addr.as_u64() & !0xfff),
            am: 0,
        }
    }

    pub const fn addr(&self) -> Iova {
        self.addr
    }

    pub const fn am(&self) -> u8 {
        self.am
    }

    /// Bytes covered (`u64::MAX` for the whole 64-bit space, AM 52).
    pub const fn bytes(&self) -> u64 {
        match 1u64.checked_shl(12 + self.am as u32) {
            Some(b) => b,
            None => u64::MAX,
        }
    }

    /// `Ok` if the unit accepts this mask (AM ≤ CAP.MAMV).
    pub const fn check_mamv(&self, mamv: u8) -> Result<(), DescriptorError> {
        if self.am > mamv {
            Err(DescriptorError::MaskTooLarge {
                am: self.am,
                max: mamv,
            })
        } else {
            Ok(())
        }
    }

    /// ADDR(63:12) | IH(6) | AM(5:0): the second quadword of IOTLB and PASID-IOTLB descriptors
    /// and the layout of the IVA register.
    const fn address_word(&self, leaf_only: bool) -> u64 {
        self.addr.as_u64() | (leaf_only as u64) << 6 | self.am as u64
    }
}

/// Function Mask of a device-selective context-cache invalidation: which low bits of the
/// source id's function number to ignore (so one descriptor covers several functions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionMask {
    /// Only the function named.
    None,
    /// Ignore function bit 2.
    Bit2,
    /// Ignore function bits 2:1.
    Bits2To1,
    /// Ignore function bits 2:0: every function of the device.
    AllFunctions,
}

impl FunctionMask {
    pub const fn bits(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Bit2 => 1,
            Self::Bits2To1 => 2,
            Self::AllFunctions => 3,
        }
    }
}

/// What a context-cache invalidation (6.5.2.1) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextCacheScope {
    Global,
    Domain(Did),
    /// The context entries of `source` (and the functions `mask` adds), which were tagged with
    /// `domain`.
    Device {
        domain: Did,
        source: SourceId,
        mask: FunctionMask,
    },
}

/// Whether the unit drains DMA reads/writes before an IOTLB invalidation completes (DR, DW:
/// set when CAP.DRD/CAP.DWD say the unit supports it; always from major version 2 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drain {
    pub reads: bool,
    pub writes: bool,
}

impl Drain {
    /// Drain whatever the unit can drain.
    pub const fn for_unit(cap: Capability) -> Self {
        Self {
            reads: cap.drd(),
            writes: cap.dwd(),
        }
    }
}

/// A naturally aligned block of 2^`mask` interrupt-remapping table entries starting at
/// `index`: what an index-selective interrupt entry cache invalidation names (IIDX, IM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrteBlock {
    index: u16,
    mask: u8,
}

impl IrteBlock {
    /// The largest IM the descriptor can carry is 31, the largest a unit honours its
    /// ECAP.MHMV (at most 15): checked by the caller against the unit.
    pub const fn new(index: u16, mask: u8) -> Result<Self, DescriptorError> {
        if mask > 15 {
            return Err(DescriptorError::MaskTooLarge { am: mask, max: 15 });
        }
        if (index as u32) & ((1u32 << mask) - 1) != 0 {
            return Err(DescriptorError::MisalignedEntries { index, mask });
        }
        Ok(Self { index, mask })
    }

    /// One entry.
    pub const fn entry(index: u16) -> Self {
        Self { index, mask: 0 }
    }

    pub const fn index(&self) -> u16 {
        self.index
    }

    pub const fn mask(&self) -> u8 {
        self.mask
    }
}

/// What an interrupt entry cache invalidation (6.5.2.7) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IecScope {
    /// Every cached IRTE (and the unit's cached IRTA, after SIRTP).
    Global,
    /// The entries of one block.
    Entries(IrteBlock),
}

/// What an IOTLB invalidation (6.5.2.3) covers. In scalable mode it also flushes first-stage
/// and nested mappings of the domain (all of them, even when page-selective); use
/// [`PasidIotlbScope`] for those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IotlbScope {
    Global,
    Domain(Did),
    /// The pages of `block` in `domain`. `leaf_only` (IH) tells the unit only leaf entries
    /// changed, so it may keep cached upper-level (paging-structure) entries.
    Pages {
        domain: Did,
        block: PageBlock,
        leaf_only: bool,
    },
}

/// What a PASID-cache invalidation (6.5.2.2) covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidCacheScope {
    /// Every PASID entry tagged with the domain (G = 00).
    Domain(Did),
    /// One PASID of the domain (G = 01).
    Pasid { domain: Did, pasid: Pasid },
    /// Everything (G = 11).
    Global,
}

/// What a PASID-based IOTLB invalidation (6.5.2.4) covers: first-stage and nested mappings
/// of one PASID (second-stage and pass-through ones only with the PASID-selective form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidIotlbScope {
    /// All mappings of the PASID in the domain, globals excepted (G = 10).
    Pasid { domain: Did, pasid: Pasid },
    /// The pages of `block` for the PASID (G = 11).
    Pages {
        domain: Did,
        pasid: Pasid,
        block: PageBlock,
        leaf_only: bool,
    },
}

/// The range of a device-TLB invalidation, encoded with the ATS size bit S: with S = 1 the
/// lowest 0 bit of `ADDR[63:12]` tells the size (PCIe ATS, invalidate request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTlbRange {
    /// One 4 KiB page (S = 0).
    Page(Iova),
    /// 2^`order` pages (order 1..=52) starting at `addr`, aligned to that size.
    Block { addr: Iova, order: u8 },
    /// The whole address space.
    All,
}

impl DeviceTlbRange {
    /// ADDR(63:12) with the size encoding applied, and S.
    const fn encode(self) -> Result<(u64, bool), DescriptorError> {
        match self {
            Self::Page(a) => Ok((a.as_u64() & !0xfff, false)),
            Self::All => Ok((size_encoded(0, MAX_ORDER), true)),
            Self::Block { addr, order: 0 } => Ok((addr.as_u64() & !0xfff, false)),
            Self::Block { addr, order } => {
                if order > MAX_ORDER {
                    return Err(DescriptorError::MaskTooLarge {
                        am: order,
                        max: MAX_ORDER,
                    });
                }
                if !block_aligned(addr, order) {
                    return Err(DescriptorError::MisalignedBlock { addr, am: order });
                }
                Ok((size_encoded(addr.as_u64(), order), true))
            }
        }
    }
}

/// Whether `addr` starts a block of 2^`order` pages (order ≤ 52; 52 is the whole space, whose
/// only start is 0).
const fn block_aligned(addr: Iova, order: u8) -> bool {
    match 1u64.checked_shl(12 + order as u32) {
        Some(size) => addr.is_aligned(size),
        None => addr.as_u64() == 0,
    }
}

/// ADDR bits 12 .. 12 + order - 2 set to 1, bit 12 + order - 1 left 0 (the address is aligned):
/// order 1 (8 KiB) sets nothing, order 2 (16 KiB) sets bit 12, order 52 sets bits 62:12.
const fn size_encoded(addr: u64, order: u8) -> u64 {
    let ones = (1u64 << (12 + order as u32 - 1)) - 1;
    (addr | ones) & !0xfff
}

/// The device-side fields of a device-TLB invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtsTarget {
    /// The device (its requester id).
    pub source: SourceId,
    /// PFSID: the physical function of an SR-IOV virtual function. Only with ECAP.DIT; QEMU
    /// 10.0 treats the field as reserved, so leave `None` there.
    pub physical_function: Option<SourceId>,
    /// MIP: the device's Invalidate Queue Depth from its ATS capability (0 means 32).
    queue_depth: u8,
}

impl AtsTarget {
    pub const fn new(
        source: SourceId,
        physical_function: Option<SourceId>,
        queue_depth: u8,
    ) -> Result<Self, DescriptorError> {
        if queue_depth > 31 {
            return Err(DescriptorError::QueueDepthOutOfRange { depth: queue_depth });
        }
        Ok(Self {
            source,
            physical_function,
            queue_depth,
        })
    }

    /// MIP: the invalidate queue depth (0 means 32).
    pub const fn queue_depth(&self) -> u8 {
        self.queue_depth
    }

    /// PFSID split over bits 15:12 (function bits 3:0) and 63:52 (bits 15:4).
    const fn pfsid_bits(&self) -> u64 {
        match self.physical_function {
            Some(pf) => {
                let v = pf.raw() as u64;
                (v & 0xf) << 12 | (v >> 4) << 52
            }
            None => 0,
        }
    }
}

/// What the unit does when it reaches a wait descriptor (6.5.2.8). QEMU 10.0 aborts if both a
/// status write and an interrupt are requested, so the two are exclusive here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitAction {
    /// SW: write `data` to the 4-byte aligned `addr`.
    StatusWrite { addr: PhysAddr, data: u32 },
    /// IF: set ICS.IWC and raise the invalidation completion event.
    Interrupt,
    /// Neither: the wait only orders (with FN) what follows after what precedes.
    Plain,
}

/// An invalidation wait descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    action: WaitAction,
    /// FN: descriptors after this one are not processed until it completes.
    pub fence: bool,
}

impl Wait {
    /// A wait that writes `data` to `addr` once every earlier descriptor has completed.
    pub const fn status_write(addr: PhysAddr, data: u32) -> Result<Self, DescriptorError> {
        if !addr.is_aligned(4) {
            return Err(DescriptorError::MisalignedStatus { addr });
        }
        Ok(Self {
            action: WaitAction::StatusWrite { addr, data },
            fence: false,
        })
    }

    /// A wait that raises the completion interrupt.
    pub const fn interrupt() -> Self {
        Self {
            action: WaitAction::Interrupt,
            fence: false,
        }
    }

    pub const fn with_fence(self) -> Self {
        Self {
            fence: true,
            ..self
        }
    }

    pub const fn action(&self) -> WaitAction {
        self.action
    }
}

/// One invalidation descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// 6.5.2.1 Context-cache invalidate (type 1).
    ContextCache(ContextCacheScope),
    /// 6.5.2.3 IOTLB invalidate (type 2).
    Iotlb { scope: IotlbScope, drain: Drain },
    /// 6.5.2.5 Device-TLB invalidate (type 3), for requests without PASID.
    DeviceTlb {
        target: AtsTarget,
        range: DeviceTlbRange,
    },
    /// 6.5.2.4 PASID-based IOTLB invalidate (type 6, 256-bit queue only).
    PasidIotlb(PasidIotlbScope),
    /// 6.5.2.2 PASID-cache invalidate (type 7, 256-bit queue only).
    PasidCache(PasidCacheScope),
    /// 6.5.2.6 PASID-based device-TLB invalidate (type 8, 256-bit queue only); `pasid: None`
    /// invalidates every PASID of the device (G = 1).
    PasidDeviceTlb {
        target: AtsTarget,
        pasid: Option<Pasid>,
        range: DeviceTlbRange,
    },
    /// 6.5.2.7 Interrupt entry cache invalidate (type 4).
    InterruptEntryCache(IecScope),
    /// 6.5.2.8 Invalidation wait (type 5).
    Wait(Wait),
    /// Written verbatim: only for tests of the queue's error path (an invalid descriptor makes
    /// the unit stop with FSTS.IQE).
    Raw([u64; 4]),
}

impl Descriptor {
    /// Whether the descriptor exists only in a 256-bit queue (IQA.DW = 1).
    pub const fn needs_256_bit(&self) -> bool {
        matches!(
            self,
            Self::PasidIotlb(_) | Self::PasidCache(_) | Self::PasidDeviceTlb { .. }
        )
    }

    /// A short name for error reports.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::ContextCache(_) => "context-cache",
            Self::Iotlb { .. } => "IOTLB",
            Self::DeviceTlb { .. } => "device-TLB",
            Self::PasidIotlb(_) => "PASID-based IOTLB",
            Self::PasidCache(_) => "PASID-cache",
            Self::PasidDeviceTlb { .. } => "PASID-based device-TLB",
            Self::InterruptEntryCache(_) => "interrupt-entry-cache",
            Self::Wait(_) => "wait",
            Self::Raw(_) => "raw",
        }
    }

    /// The descriptor's bits, quadword 0 first; quadwords 2 and 3 are zero except for `Raw`.
    /// In a 128-bit queue only the first two are written. This is the one place every type is
    /// laid out; the type code is bits 3:0 (bits 11:9 hold type bits 6:4, zero for all types
    /// here).
    pub const fn encode(&self) -> Result<[u64; 4], DescriptorError> {
        const fn did(d: Did) -> u64 {
            (d.raw() as u64) << 16
        }
        const fn pasid32(p: Pasid) -> u64 {
            (p.raw() as u64) << 32
        }
        let (w0, w1) = match *self {
            // w0: type 1, G(5:4) 1/2/3, DID(31:16), SID(47:32), FM(49:48).
            Self::ContextCache(scope) => match scope {
                ContextCacheScope::Global => (0x1 | 1 << 4, 0),
                ContextCacheScope::Domain(d) => (0x1 | 2 << 4 | did(d), 0),
                ContextCacheScope::Device {
                    domain,
                    source,
                    mask,
                } => (
                    0x1 | 3 << 4 | did(domain) | (source.raw() as u64) << 32 | mask.bits() << 48,
                    0,
                ),
            },
            // w0: type 2, G(5:4) 1/2/3, DW(6), DR(7), DID(31:16); w1: ADDR | IH(6) | AM(5:0).
            Self::Iotlb { scope, drain } => {
                let d = (drain.writes as u64) << 6 | (drain.reads as u64) << 7;
                match scope {
                    IotlbScope::Global => (0x2 | 1 << 4 | d, 0),
                    IotlbScope::Domain(dom) => (0x2 | 2 << 4 | d | did(dom), 0),
                    IotlbScope::Pages {
                        domain,
                        block,
                        leaf_only,
                    } => (
                        0x2 | 3 << 4 | d | did(domain),
                        block.address_word(leaf_only),
                    ),
                }
            }
            // w0: type 3, PFSID(15:12, 63:52), MIP(20:16), SID(47:32); w1: ADDR | S(0).
            Self::DeviceTlb { target, range } => {
                let (addr, s) = match range.encode() {
                    Ok(v) => v,
                    Err(e) => return Err(e),
                };
                (
                    0x3 | target.pfsid_bits()
                        | (target.queue_depth as u64) << 16
                        | (target.source.raw() as u64) << 32,
                    addr | s as u64,
                )
            }
            // w0: type 6, G(5:4) 2/3, DID(31:16), PASID(51:32); w1: ADDR | IH(6) | AM(5:0).
            Self::PasidIotlb(scope) => match scope {
                PasidIotlbScope::Pasid { domain, pasid } => {
                    (0x6 | 2 << 4 | did(domain) | pasid32(pasid), 0)
                }
                PasidIotlbScope::Pages {
                    domain,
                    pasid,
                    block,
                    leaf_only,
                } => (
                    0x6 | 3 << 4 | did(domain) | pasid32(pasid),
                    block.address_word(leaf_only),
                ),
            },
            // w0: type 7, G(5:4) 0/1/3, DID(31:16), PASID(51:32).
            Self::PasidCache(scope) => match scope {
                PasidCacheScope::Domain(d) => (0x7 | did(d), 0),
                PasidCacheScope::Pasid { domain, pasid } => {
                    (0x7 | 1 << 4 | did(domain) | pasid32(pasid), 0)
                }
                PasidCacheScope::Global => (0x7 | 3 << 4, 0),
            },
            // w0: type 8, MIP(8:4), PFSID(15:12, 63:52), SID(31:16), PASID(51:32);
            // w1: G(0), S(11), ADDR(63:12).
            Self::PasidDeviceTlb {
                target,
                pasid,
                range,
            } => {
                let (addr, s) = match range.encode() {
                    Ok(v) => v,
                    Err(e) => return Err(e),
                };
                let (p, g) = match pasid {
                    Some(p) => (pasid32(p), 0),
                    None => (0, 1),
                };
                (
                    0x8 | (target.queue_depth as u64) << 4
                        | target.pfsid_bits()
                        | (target.source.raw() as u64) << 16
                        | p,
                    addr | (s as u64) << 11 | g,
                )
            }
            // w0: type 4, G(4) 0 = global / 1 = index-selective, IM(31:27), IIDX(47:32).
            Self::InterruptEntryCache(scope) => match scope {
                IecScope::Global => (0x4, 0),
                IecScope::Entries(block) => (
                    0x4 | 1 << 4 | (block.mask as u64) << 27 | (block.index as u64) << 32,
                    0,
                ),
            },
            // w0: type 5, IF(4), SW(5), FN(6), status data(63:32); w1: status address(63:2).
            Self::Wait(w) => {
                let f = (w.fence as u64) << 6;
                match w.action {
                    WaitAction::StatusWrite { addr, data } => {
                        (0x5 | 1 << 5 | f | (data as u64) << 32, addr.as_u64())
                    }
                    WaitAction::Interrupt => (0x5 | 1 << 4 | f, 0),
                    WaitAction::Plain => (0x5 | f, 0),
                }
            }
            Self::Raw(words) => return Ok(words),
        };
        Ok([w0, w1, 0, 0])
    }
}

/// Why 256 bits written by someone else (a guest) do not decode into a [`Descriptor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A descriptor type this driver does not decode (named): interrupt-entry-cache,
    /// page-request responses, reserved types.
    UnsupportedType { kind: &'static str },
    /// A reserved field or reserved encoding is set (named).
    Reserved { field: &'static str },
    /// A field holds a value the descriptor cannot carry (an unaligned block).
    Field(DescriptorError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnsupportedType { kind } => write!(f, "VT-d: {kind} descriptors not decoded"),
            Self::Reserved { field } => write!(f, "VT-d: reserved field or encoding set: {field}"),
            Self::Field(e) => write!(f, "{e}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Reserved bits of each descriptor type (6.5.2.1-6.5.2.8), quadwords 0 and 1. Bits 11:9 are
/// the high type bits, checked through the type itself.
mod reserved {
    /// Context-cache: 8:6, 15:12, 63:50; quadword 1 all.
    pub const CC: (u64, u64) = (0xfffc_0000_0000_f1c0, !0);
    /// IOTLB: 8, 15:12, 63:32; quadword 1 bits 11:7.
    pub const IOTLB: (u64, u64) = (0xffff_ffff_0000_f100, 0xf80);
    /// Device-TLB: 8:4, 31:21, 51:48; quadword 1 bits 11:1.
    pub const DEV_TLB: (u64, u64) = (0x000f_0000_ffe0_01f0, 0xffe);
    /// Wait: 8, 31:12 (PD, bit 7, is decoded separately); quadword 1 bits 1:0.
    pub const WAIT: (u64, u64) = (0xffff_f100, 0x3);
    /// PASID-based IOTLB: 8:6, 15:12, 63:52; quadword 1 bits 11:7.
    pub const PASID_IOTLB: (u64, u64) = (0xfff0_0000_0000_f1c0, 0xf80);
    /// PASID-cache: 8:6, 15:12, 63:52; quadword 1 all.
    pub const PASID_CACHE: (u64, u64) = (0xfff0_0000_0000_f1c0, !0);
    /// PASID-based device-TLB: none in quadword 0; quadword 1 bits 10:1.
    pub const PASID_DEV_TLB: (u64, u64) = (0, 0x7fe);
}

impl Descriptor {
    /// The descriptor `words` encode (quadword 0 first; a 128-bit descriptor in the low half,
    /// the upper half zero), refusing reserved bits, reserved encodings and the types this
    /// driver does not issue. The inverse of [`encode`](Self::encode) for every type but
    /// `Raw`: `decode(d.encode()?) == Ok(d)`.
    pub fn decode(words: [u64; 4]) -> Result<Self, DecodeError> {
        let [w0, w1, w2, w3] = words;
        if w2 != 0 || w3 != 0 {
            return Err(DecodeError::Reserved {
                field: "bits 255:128",
            });
        }
        let ty = (w0 & 0xf) | ((w0 >> 9) & 0x7) << 4;
        let (rsvd, name): ((u64, u64), &'static str) = match ty {
            1 => (reserved::CC, "context-cache reserved bits"),
            2 => (reserved::IOTLB, "IOTLB reserved bits"),
            3 => (reserved::DEV_TLB, "device-TLB reserved bits"),
            5 => (reserved::WAIT, "wait reserved bits"),
            6 => (reserved::PASID_IOTLB, "PASID-based IOTLB reserved bits"),
            7 => (reserved::PASID_CACHE, "PASID-cache reserved bits"),
            8 => (
                reserved::PASID_DEV_TLB,
                "PASID-based device-TLB reserved bits",
            ),
            4 => {
                return Err(DecodeError::UnsupportedType {
                    kind: "interrupt-entry-cache",
                })
            }
            9 => {
                return Err(DecodeError::UnsupportedType {
                    kind: "page-group response",
                })
            }
            _ => {
                return Err(DecodeError::UnsupportedType {
                    kind: "reserved type",
                })
            }
        };
        if w0 & rsvd.0 != 0 || w1 & rsvd.1 != 0 {
            return Err(DecodeError::Reserved { field: name });
        }
        let g = (w0 >> 4) & 3;
        let did = Did::new((w0 >> 16) as u16);
        let pasid = Pasid::from_bits_truncated((w0 >> 32) as u32);
        // ADDR(63:12), IH(6), AM(5:0) of the IOTLB and PASID-based IOTLB descriptors.
        let block = || {
            PageBlock::new(Iova::new(w1 & !0xfff), (w1 & 0x3f) as u8).map_err(DecodeError::Field)
        };
        let leaf_only = w1 & (1 << 6) != 0;
        let no_address = |field| {
            if w1 == 0 {
                Ok(())
            } else {
                Err(DecodeError::Reserved { field })
            }
        };
        Ok(match ty {
            // 6.5.2.1: G 01 global, 10 domain, 11 device; SID(47:32), FM(49:48).
            1 => Self::ContextCache(match g {
                1 => ContextCacheScope::Global,
                2 => ContextCacheScope::Domain(did),
                3 => ContextCacheScope::Device {
                    domain: did,
                    source: SourceId::from_raw((w0 >> 32) as u16),
                    mask: match (w0 >> 48) & 3 {
                        0 => FunctionMask::None,
                        1 => FunctionMask::Bit2,
                        2 => FunctionMask::Bits2To1,
                        _ => FunctionMask::AllFunctions,
                    },
                },
                _ => {
                    return Err(DecodeError::Reserved {
                        field: "context-cache granularity 00",
                    })
                }
            }),
            // 6.5.2.3: G 01 global, 10 domain, 11 page-selective; DW(6), DR(7).
            2 => {
                let drain = Drain {
                    writes: w0 & (1 << 6) != 0,
                    reads: w0 & (1 << 7) != 0,
                };
                let scope = match g {
                    1 => {
                        no_address("IOTLB address of a global invalidation")?;
                        IotlbScope::Global
                    }
                    2 => {
                        no_address("IOTLB address of a domain invalidation")?;
                        IotlbScope::Domain(did)
                    }
                    3 => IotlbScope::Pages {
                        domain: did,
                        block: block()?,
                        leaf_only,
                    },
                    _ => {
                        return Err(DecodeError::Reserved {
                            field: "IOTLB granularity 00",
                        })
                    }
                };
                Self::Iotlb { scope, drain }
            }
            // 6.5.2.5: SID(47:32), MIP(20:16), PFSID(15:12, 63:52); S(0) and ADDR in w1.
            3 => Self::DeviceTlb {
                target: ats_target((w0 >> 32) as u16, (w0 >> 16) & 0x1f, w0)?,
                range: device_tlb_range(w1 & !0xfff, w1 & 1 != 0),
            },
            // 6.5.2.8: IF(4), SW(5), FN(6), PD(7), data(63:32); address(63:2) in w1.
            5 => {
                if w0 & (1 << 7) != 0 {
                    return Err(DecodeError::Reserved {
                        field: "wait PD (page-request drain)",
                    });
                }
                let action = match (w0 & (1 << 4) != 0, w0 & (1 << 5) != 0) {
                    (true, true) => {
                        return Err(DecodeError::Reserved {
                            field: "wait with both IF and SW",
                        })
                    }
                    (true, false) => WaitAction::Interrupt,
                    (false, true) => WaitAction::StatusWrite {
                        addr: PhysAddr::new(w1),
                        data: (w0 >> 32) as u32,
                    },
                    (false, false) => WaitAction::Plain,
                };
                if !matches!(action, WaitAction::StatusWrite { .. }) && (w0 >> 32 != 0 || w1 != 0) {
                    return Err(DecodeError::Reserved {
                        field: "wait status data/address without SW",
                    });
                }
                Self::Wait(Wait {
                    action,
                    fence: w0 & (1 << 6) != 0,
                })
            }
            // 6.5.2.4: G 10 PASID-selective, 11 page-selective within the PASID.
            6 => Self::PasidIotlb(match g {
                2 => {
                    no_address("PASID-based IOTLB address of a PASID invalidation")?;
                    PasidIotlbScope::Pasid { domain: did, pasid }
                }
                3 => PasidIotlbScope::Pages {
                    domain: did,
                    pasid,
                    block: block()?,
                    leaf_only,
                },
                _ => {
                    return Err(DecodeError::Reserved {
                        field: "PASID-based IOTLB granularity 00/01",
                    })
                }
            }),
            // 6.5.2.2: G 00 domain, 01 PASID, 11 global.
            7 => Self::PasidCache(match g {
                0 => PasidCacheScope::Domain(did),
                1 => PasidCacheScope::Pasid { domain: did, pasid },
                3 => PasidCacheScope::Global,
                _ => {
                    return Err(DecodeError::Reserved {
                        field: "PASID-cache granularity 10",
                    })
                }
            }),
            // 6.5.2.6: MIP(8:4), SID(31:16), PASID(51:32), PFSID; G(0), S(11), ADDR in w1.
            _ => {
                let all_pasids = w1 & 1 != 0;
                if all_pasids && pasid.raw() != 0 {
                    return Err(DecodeError::Reserved {
                        field: "PASID of an all-PASIDs device-TLB invalidation",
                    });
                }
                Self::PasidDeviceTlb {
                    target: ats_target((w0 >> 16) as u16, (w0 >> 4) & 0x1f, w0)?,
                    pasid: (!all_pasids).then_some(pasid),
                    range: device_tlb_range(w1 & !0xfff, w1 & (1 << 11) != 0),
                }
            }
        })
    }
}

/// The device fields of a device-TLB descriptor: PFSID 0 reads as "none" (the encoder's
/// `None`), as software that does not throttle writes it.
fn ats_target(source: u16, mip: u64, w0: u64) -> Result<AtsTarget, DecodeError> {
    let pfsid = ((w0 >> 12) & 0xf) | (w0 >> 52) << 4;
    let pf = (pfsid != 0).then_some(SourceId::from_raw(pfsid as u16));
    AtsTarget::new(SourceId::from_raw(source), pf, mip as u8).map_err(DecodeError::Field)
}

/// ADDR(63:12) with the size bit: S = 0 one page; S = 1 the lowest zero bit of ADDR says
/// the size (2^(ones + 1) pages), the whole space from 52 ones up.
fn device_tlb_range(addr: u64, s: bool) -> DeviceTlbRange {
    if !s {
        return DeviceTlbRange::Page(Iova::new(addr));
    }
    let ones = (addr >> 12).trailing_ones();
    let order = ones + 1;
    if order >= u32::from(MAX_ORDER) {
        return DeviceTlbRange::All;
    }
    let base = addr & !(((1u64 << order) - 1) << 12);
    DeviceTlbRange::Block {
        addr: Iova::new(base),
        order: order as u8,
    }
}

#[cfg(test)]
mod tests;
