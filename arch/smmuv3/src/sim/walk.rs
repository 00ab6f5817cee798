//! What a device's DMA through the simulated SMMU reaches, or which fault it records: the
//! walk of IHI 0070 3.3 (stream table → STE → CD table → CD) and the VMSAv8-64 stage-1 and
//! stage-2 translation table walks, read from host memory (physical address == pointer).

use super::unit::{off, Regs, GBPA_ABORT};
use super::SimulatedUnit;
use crate::eventq::{Event, EventType};

/// What a transaction does (the record's RnW, InD and PnU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// A write (RnW = 0).
    pub write: bool,
    /// An instruction fetch (InD = 1).
    pub instruction: bool,
    /// Privileged (PnU = 1); DMA is unprivileged unless the device says otherwise.
    pub privileged: bool,
}

impl Access {
    /// An unprivileged data read.
    pub const READ: Self = Self {
        write: false,
        instruction: false,
        privileged: false,
    };
    /// An unprivileged data write.
    pub const WRITE: Self = Self {
        write: true,
        instruction: false,
        privileged: false,
    };
}

/// Why a transaction was terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaFault {
    /// Terminated with this event recorded (by [`SimulatedUnit::dma`]).
    Event(Event),
    /// Terminated without a record: GBPA.ABORT while the SMMU is disabled, an STE whose Config
    /// is abort, an invalid StreamID with CR2.RECINVSID clear, or a translation fault of a
    /// stage whose CD.R / STE.S2R is clear (the event it would have been).
    Silent(Option<Event>),
}

impl DmaFault {
    /// The event, recorded or not.
    pub fn event(&self) -> Option<&Event> {
        match self {
            Self::Event(e) | Self::Silent(Some(e)) => Some(e),
            Self::Silent(None) => None,
        }
    }

    /// The event type, if there is one.
    pub fn event_type(&self) -> Option<EventType> {
        self.event().map(|e| e.event)
    }
}

// Event record fields (IHI 0070 7.3).
const EVT0_SSV: u32 = 11;
const EVT1_PNU: u32 = 33;
const EVT1_IND: u32 = 34;
const EVT1_RNW: u32 = 35;
const EVT1_S2: u32 = 39;
const EVT1_CLASS: u32 = 40;
/// Record CLASS: a CD fetch, a stage-1 table walk, the input address.
const CLASS_CD: u64 = 0;
const CLASS_TT: u64 = 1;
const CLASS_IN: u64 = 2;

/// An event record under construction.
#[derive(Clone, Copy)]
struct Record {
    sid: u32,
    ssid: Option<u32>,
    iova: u64,
    access: Access,
}

impl Record {
    fn header(&self, t: EventType) -> u64 {
        let ssv = self
            .ssid
            .map_or(0, |s| 1 << EVT0_SSV | u64::from(s & 0xf_ffff) << 12);
        u64::from(t.code()) | ssv | u64::from(self.sid) << 32
    }

    /// A configuration error: type, StreamID, SubstreamID.
    fn config(&self, t: EventType) -> Event {
        Event::decode([self.header(t), 0, 0, 0])
    }

    /// A failed fetch of a structure at `addr`.
    fn fetch(&self, t: EventType, addr: u64) -> Event {
        Event::decode([self.header(t), 0, 0, addr & ((1 << 52) - 1) & !7])
    }

    /// A translation fault of `stage` (2 with the faulting `ipa`).
    fn translation(&self, t: EventType, s2_ipa: Option<u64>, class: u64) -> Event {
        let a = self.access;
        let w1 = u64::from(!a.write) << EVT1_RNW
            | u64::from(a.instruction) << EVT1_IND
            | u64::from(a.privileged) << EVT1_PNU
            | u64::from(s2_ipa.is_some()) << EVT1_S2
            | class << EVT1_CLASS;
        let w3 = s2_ipa.map_or(0, |ipa| ipa & ((1 << 52) - 1) & !0xfff);
        Event::decode([self.header(t), w1, self.iova, w3])
    }
}

/// One translation stage's table walk.
#[derive(Debug, Clone, Copy)]
struct Walk {
    ttb: u64,
    /// log2 of the granule: 12, 14 or 16.
    granule: u32,
    /// Input bits (64 - TxSZ).
    ia_bits: u32,
    /// The level the walk starts at.
    start: u32,
    /// Output address bits (IPS / S2PS, capped by the SMMU's OAS).
    oa_bits: u32,
    affd: bool,
    stage2: bool,
}

/// Why a walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkFault {
    Translation,
    AddressSize,
    Access,
    Permission,
    /// The descriptor at this (stage-1 table) address could not be reached at stage 2.
    Nested(DmaFault),
}

const fn granule_log2(tg: u64) -> Option<u32> {
    // TG0 / S2TG: 0b00 4K, 0b01 64K, 0b10 16K.
    match tg {
        0 => Some(12),
        1 => Some(16),
        2 => Some(14),
        _ => None,
    }
}

const fn pa_bits(ps: u64) -> u32 {
    match ps {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        5 => 48,
        _ => 52,
    }
}

impl Walk {
    /// The address bit of the bottom of level `level`'s index.
    const fn shift(&self, level: u32) -> u32 {
        self.granule + (3 - level) * (self.granule - 3)
    }

    /// Whether a block descriptor is allowed at `level`.
    const fn block_allowed(&self, level: u32) -> bool {
        match self.granule {
            12 => level == 1 || level == 2,
            _ => level == 2,
        }
    }

    /// The stage-1 start level for the input size (VMSAv8-64 D8.2).
    fn stage1_start(granule: u32, ia_bits: u32) -> u32 {
        let stride = granule - 3;
        let levels = (ia_bits.saturating_sub(granule)).div_ceil(stride);
        4u32.saturating_sub(levels)
    }

    /// Walks `addr`: the output address and the last-level descriptor. `read` reads the
    /// descriptor at a table address as this stage names it (an IPA for a nested stage 1).
    fn run(
        &self,
        addr: u64,
        access: Access,
        read: &dyn Fn(u64) -> Result<u64, WalkFault>,
    ) -> Result<u64, WalkFault> {
        if self.ia_bits < 64 && addr >> self.ia_bits != 0 {
            return Err(WalkFault::Translation);
        }
        let oa_mask = ((1u64 << self.oa_bits.min(48)) - 1) & !((1u64 << self.granule) - 1);
        let mut table = self.ttb & ((1 << 48) - 1) & !((1u64 << self.granule) - 1);
        // A stage-2 first level may be several concatenated tables: its index takes every
        // input bit above the level.
        let mut level = self.start;
        loop {
            let shift = self.shift(level);
            let index_bits = if level == self.start {
                self.ia_bits.saturating_sub(shift)
            } else {
                self.granule - 3
            };
            let index = (addr >> shift) & ((1u64 << index_bits) - 1);
            let desc = read(table + index * 8)?;
            if desc & 1 == 0 {
                return Err(WalkFault::Translation);
            }
            let is_table_or_page = desc & 2 != 0;
            if level < 3 && is_table_or_page {
                // Bits above the OAS of a next-level table address: an address size fault.
                let next = desc & ((1 << 48) - 1) & !((1u64 << self.granule) - 1);
                if next & !oa_mask != 0 {
                    return Err(WalkFault::AddressSize);
                }
                table = next;
                level += 1;
                continue;
            }
            if level == 3 && !is_table_or_page {
                return Err(WalkFault::Translation);
            }
            if level < 3 && !self.block_allowed(level) {
                return Err(WalkFault::Translation);
            }
            let out_mask = ((1u64 << 48) - 1) & !((1u64 << shift) - 1);
            let out = desc & out_mask | addr & ((1u64 << shift) - 1);
            if desc & out_mask & !oa_mask != 0 {
                return Err(WalkFault::AddressSize);
            }
            if desc & 1 << 10 == 0 && !self.affd {
                return Err(WalkFault::Access);
            }
            self.check_permission(desc, access)?;
            return Ok(out);
        }
    }

    /// AP[2:1] (stage 1), S2AP (stage 2), and the execute-never bits.
    fn check_permission(&self, desc: u64, a: Access) -> Result<(), WalkFault> {
        let (b6, b7) = (desc >> 6 & 1 != 0, desc >> 7 & 1 != 0);
        let denied = if self.stage2 {
            // S2AP[0] (bit 6): read; S2AP[1] (bit 7): write; XN[1] (bit 54).
            (a.write && !b7) || (!a.write && !b6) || (a.instruction && desc >> 54 & 1 != 0)
        } else {
            // AP[2] (bit 7): read-only; AP[1] (bit 6): unprivileged access; UXN 54, PXN 53.
            let xn = if a.privileged { 53 } else { 54 };
            (a.write && b7) || (!a.privileged && !b6) || (a.instruction && desc >> xn & 1 != 0)
        };
        if denied {
            Err(WalkFault::Permission)
        } else {
            Ok(())
        }
    }
}

/// Reads the 64-bit word at host address `addr`; `None` for a null or misaligned address (the
/// simulator cannot tell other bad addresses from memory: it trusts the tables it walks).
fn read64(addr: u64) -> Option<u64> {
    if addr == 0 || addr & 7 != 0 {
        return None;
    }
    // SAFETY: the driver gave the SMMU this address as part of a table in a HostHal frame
    // (physical == virtual), which it keeps allocated while the SMMU may read it.
    Some(unsafe { core::ptr::read_volatile(addr as usize as *const u64) })
}

/// An STE's stage-2 fields, when its Config enables stage 2.
struct Stage2Cfg {
    walk: Walk,
    record: bool,
}

impl SimulatedUnit {
    /// What a transaction of `stream_id` (with `substream_id`, a PASID, when given) to `iova`
    /// reaches now: the host physical address, or why it is terminated. Nothing is recorded;
    /// [`dma`](Self::dma) records the event.
    pub fn translate(
        &self,
        stream_id: u32,
        substream_id: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, DmaFault> {
        let regs = self.shared.regs;
        let rec = Record {
            sid: stream_id,
            ssid: substream_id,
            iova,
            access,
        };
        // SMMUEN = 0: GBPA says what every transaction does (IHI 0070 6.3.14).
        if regs.r32(off::CR0ACK) & 1 == 0 {
            return if regs.r32(off::GBPA) & GBPA_ABORT != 0 {
                Err(DmaFault::Silent(None))
            } else {
                Ok(iova)
            };
        }
        let ste = self.fetch_ste(regs, &rec)?;
        let id = self.config();
        let config = ste[0] >> 1 & 7;
        if ste[0] & 1 == 0 {
            return Err(DmaFault::Event(rec.config(EventType::BadSte)));
        }
        let (s1, s2) = match config {
            0b000 => return Err(DmaFault::Silent(None)),
            0b100 => (false, false),
            0b101 => (true, false),
            0b110 => (false, true),
            0b111 => (true, true),
            _ => return Err(DmaFault::Event(rec.config(EventType::BadSte))),
        };
        if (s1 && !id.stage1) || (s2 && !id.stage2) {
            return Err(DmaFault::Event(rec.config(EventType::BadSte)));
        }
        let oas = pa_bits(u64::from(id.oas));
        let s2cfg = if s2 {
            Some(self.stage2_config(&ste, oas, &rec)?)
        } else {
            None
        };
        // An IPA through stage 2 (or as is): `class` says what the access was for.
        let ipa_to_pa = |ipa: u64, class: u64, a: Access| -> Result<u64, DmaFault> {
            let Some(s2) = &s2cfg else {
                return Ok(ipa);
            };
            s2.walk
                .run(ipa, a, &|addr| read64(addr).ok_or(WalkFault::Translation))
                .map_err(|f| {
                    let t = match f {
                        WalkFault::AddressSize => EventType::AddressSize,
                        WalkFault::Access => EventType::Access,
                        WalkFault::Permission => EventType::Permission,
                        WalkFault::Translation | WalkFault::Nested(_) => EventType::Translation,
                    };
                    let e = rec.translation(t, Some(ipa), class);
                    if s2.record {
                        DmaFault::Event(e)
                    } else {
                        DmaFault::Silent(Some(e))
                    }
                })
        };
        if !s1 {
            // A SubstreamID needs stage 1 (IHI 0070 5.2, STE.Config).
            if substream_id.is_some() {
                return Err(DmaFault::Event(rec.config(EventType::BadSubstreamId)));
            }
            return ipa_to_pa(iova, CLASS_IN, access);
        }
        let Some(cd) = self.fetch_cd(&ste, &rec, &ipa_to_pa)? else {
            // S1DSS bypass: stage 1 skipped for requests without a SubstreamID.
            return ipa_to_pa(iova, CLASS_IN, access);
        };
        let (c0, ttb0) = (cd[0], cd[1]);
        if c0 >> 31 & 1 == 0 || c0 >> 41 & 1 == 0 {
            // V = 0, or AA64 = 0 (AArch32 tables are not simulated).
            return Err(DmaFault::Event(rec.config(EventType::BadCd)));
        }
        let t0sz = (c0 & 0x3f) as u32;
        let Some(granule) = granule_log2(c0 >> 6 & 3) else {
            return Err(DmaFault::Event(rec.config(EventType::BadCd)));
        };
        let record = c0 >> 45 & 1 != 0;
        let s1_fault = |t: EventType, class: u64| {
            let e = rec.translation(t, None, class);
            if record {
                DmaFault::Event(e)
            } else {
                DmaFault::Silent(Some(e))
            }
        };
        // EPD0: no walk of TTB0; TTB1 (the upper range) is not simulated: a fault either way.
        let ia_bits = 64 - t0sz.clamp(16, 48);
        if c0 >> 14 & 1 != 0 {
            return Err(s1_fault(EventType::Translation, CLASS_IN));
        }
        let walk = Walk {
            ttb: ttb0 & ((1 << 52) - 1) & !0xf,
            granule,
            ia_bits,
            start: Walk::stage1_start(granule, ia_bits),
            oa_bits: pa_bits(c0 >> 32 & 7).min(oas),
            affd: c0 >> 35 & 1 != 0,
            stage2: false,
        };
        // Stage-1 table reads go through stage 2 when nested (CLASS = TT).
        let read = |ipa: u64| -> Result<u64, WalkFault> {
            let pa = ipa_to_pa(ipa, CLASS_TT, Access::READ).map_err(WalkFault::Nested)?;
            read64(pa).ok_or(WalkFault::Translation)
        };
        let ipa = walk.run(iova, access, &read).map_err(|f| match f {
            WalkFault::Nested(fault) => fault,
            WalkFault::Translation => s1_fault(EventType::Translation, CLASS_IN),
            WalkFault::AddressSize => s1_fault(EventType::AddressSize, CLASS_IN),
            WalkFault::Access => s1_fault(EventType::Access, CLASS_IN),
            WalkFault::Permission => s1_fault(EventType::Permission, CLASS_IN),
        })?;
        ipa_to_pa(ipa, CLASS_IN, access)
    }

    /// [`translate`](Self::translate), recording the fault's event into the event queue as
    /// the SMMU would (dropped if the queue is disabled or full: EVENTQ_PROD.OVFLG).
    pub fn dma(
        &self,
        stream_id: u32,
        substream_id: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<u64, DmaFault> {
        let r = self.translate(stream_id, substream_id, iova, access);
        if let Err(DmaFault::Event(e)) = &r {
            self.shared.lock().record(self.shared.regs, e.raw);
        }
        r
    }

    /// The STE of `rec.sid` from STRTAB_BASE (linear or 2-level, IHI 0070 3.3).
    fn fetch_ste(&self, regs: Regs, rec: &Record) -> Result<[u64; 8], DmaFault> {
        let (base, cfg) = self.stream_table_registers();
        let base = base & ((1 << 52) - 1) & !0x3f;
        let log2size = cfg & 0x3f;
        let split = cfg >> 6 & 0x1f;
        let two_level = cfg >> 16 & 3 == 1;
        let sid = u64::from(rec.sid);
        let bad_sid = || {
            let e = rec.config(EventType::BadStreamId);
            // CR2.RECINVSID: record invalid StreamIDs.
            if regs.r32(off::CR2) & 2 != 0 {
                DmaFault::Event(e)
            } else {
                DmaFault::Silent(Some(e))
            }
        };
        if sid >> log2size != 0 {
            return Err(bad_sid());
        }
        let addr = if two_level {
            let l1 = base + (sid >> split) * 8;
            let desc = read64(l1).ok_or(DmaFault::Event(rec.fetch(EventType::SteFetch, l1)))?;
            let span = desc & 0x1f;
            let within = sid & ((1 << split) - 1);
            if span == 0 || within >> (span - 1) != 0 {
                return Err(bad_sid());
            }
            (desc & ((1 << 52) - 1) & !0x3f) + within * 64
        } else {
            base + sid * 64
        };
        let mut ste = [0u64; 8];
        for (i, w) in ste.iter_mut().enumerate() {
            let a = addr + 8 * i as u64;
            *w = read64(a).ok_or(DmaFault::Event(rec.fetch(EventType::SteFetch, a)))?;
        }
        Ok(ste)
    }

    /// The stage-2 walk an STE describes (words 2 and 3).
    fn stage2_config(&self, ste: &[u64; 8], oas: u32, rec: &Record) -> Result<Stage2Cfg, DmaFault> {
        let w2 = ste[2];
        let t0sz = (w2 >> 32 & 0x3f) as u32;
        let sl0 = (w2 >> 38 & 3) as u32;
        let bad = || DmaFault::Event(rec.config(EventType::BadSte));
        let granule = granule_log2(w2 >> 46 & 3).ok_or_else(bad)?;
        if w2 >> 51 & 1 == 0 || !(16..=48).contains(&t0sz) {
            // S2AA64 = 0 (AArch32 tables) is not simulated.
            return Err(bad());
        }
        let start = match (granule, sl0) {
            (12, 0) => 2,
            (12, 1) => 1,
            (12, 2) => 0,
            (_, 0) => 3,
            (_, 1) => 2,
            (_, 2) => 1,
            _ => return Err(bad()),
        };
        let walk = Walk {
            ttb: ste[3] & ((1 << 52) - 1) & !0xf,
            granule,
            ia_bits: 64 - t0sz,
            start,
            oa_bits: pa_bits(w2 >> 48 & 7).min(oas),
            affd: w2 >> 53 & 1 != 0,
            stage2: true,
        };
        // At most 16 concatenated tables at the start level.
        if walk.ia_bits > walk.shift(start) + (walk.granule - 3) + 4 {
            return Err(bad());
        }
        Ok(Stage2Cfg {
            walk,
            record: w2 >> 58 & 1 != 0,
        })
    }

    /// The CD a transaction uses (IHI 0070 5.4), or `None` when S1DSS bypasses stage 1 for it.
    fn fetch_cd(
        &self,
        ste: &[u64; 8],
        rec: &Record,
        ipa_to_pa: &dyn Fn(u64, u64, Access) -> Result<u64, DmaFault>,
    ) -> Result<Option<[u64; 8]>, DmaFault> {
        let ptr = ste[0] & ((1 << 52) - 1) & !0x3f;
        let fmt = ste[0] >> 4 & 3;
        let cdmax = (ste[0] >> 59 & 0x1f) as u32;
        let s1dss = ste[1] & 3;
        let bad_ssid = || DmaFault::Event(rec.config(EventType::BadSubstreamId));
        let index = match rec.ssid {
            None if cdmax == 0 => 0,
            None => match s1dss {
                0b00 => return Err(DmaFault::Event(rec.config(EventType::StreamDisabled))),
                0b01 => return Ok(None),
                0b10 => 0,
                _ => return Err(DmaFault::Event(rec.config(EventType::BadSte))),
            },
            Some(_) if cdmax == 0 => return Err(bad_ssid()),
            Some(s) if s >> cdmax != 0 => return Err(bad_ssid()),
            Some(0) if s1dss == 0b10 => return Err(bad_ssid()),
            Some(s) => s,
        };
        let index = u64::from(index);
        let cd_fetch = |a: u64| DmaFault::Event(rec.fetch(EventType::CdFetch, a));
        // CD table addresses are IPAs when stage 2 is on: CLASS = CD.
        let read = |ipa: u64| -> Result<u64, DmaFault> {
            let pa = ipa_to_pa(ipa, CLASS_CD, Access::READ)?;
            read64(pa).ok_or_else(|| cd_fetch(pa))
        };
        let addr = if cdmax == 0 || fmt == 0 {
            ptr + index * 64
        } else {
            let split = match fmt {
                1 => 6,
                2 => 10,
                _ => return Err(DmaFault::Event(rec.config(EventType::BadSte))),
            };
            let desc = read(ptr + (index >> split) * 8)?;
            if desc & 1 == 0 {
                return Err(bad_ssid());
            }
            (desc & ((1 << 52) - 1) & !0xfff) + (index & ((1 << split) - 1)) * 64
        };
        let mut cd = [0u64; 8];
        for (i, w) in cd.iter_mut().enumerate() {
            *w = read(addr + 8 * i as u64)?;
        }
        Ok(Some(cd))
    }
}
