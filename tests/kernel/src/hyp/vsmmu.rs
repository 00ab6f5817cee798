//! The guest's own SMMU: a virtual SMMUv3 the hypervisor emulates over the object model's
//! vIOMMU. Its registers are an unmapped IPA range, so every access is a stage-2 data abort
//! that [`VSmmu`] serves ([`Exits::data_abort`]). The guest's stream table, context
//! descriptors, page tables and queues live in its RAM:
//! - a CMD_CFGI_STE for the guest's stream re-reads its STE, which becomes a nested domain of
//!   the vIOMMU (guest stage 1 over the VM's stage 2) that the device is attached to;
//! - every other command goes through the vIOMMU ([`Iommu::invalidate`]): virtual stream ids
//!   translated and checked, the VMID forced; a command it refuses stops the queue with
//!   CERROR_ILL in CMDQ_CONS and GERROR.CMDQ_ERR, as a real SMMU does;
//! - stage-1 faults of the guest's device are copied into the guest's event queue with its
//!   virtual stream id when the guest reads EVENTQ_PROD; stage-2 faults stay with the
//!   hypervisor.
//!
//! What the guest is told (ID registers) comes from the real SMMU's, narrowed to what the
//! emulation offers: stage 1 only, a linear stream table, no MSIs, ATS, PRI or stalls beyond
//! the real unit's.

use alloc::vec::Vec;
use core::mem::offset_of;

use super::{Exits, Mmio, Vm};
use crate::smmu::dma::Unit;
use iommu::iommufd::{DeviceHandle, DomainId, Iommu, OwnerId, Target, UnitId, ViommuId};
use iommu::unit::{RawRegisters, UnitError};
use iommu_boot::testing::{fail, Failure};
use iommu_smmuv3::command::opcode;
use iommu_smmuv3::eventq::{Event, FaultStage};
use iommu_smmuv3::registers::SmmuRegisters;

/// The size of the register frame the guest sees (pages 0 and 1).
pub const VSMMU_SIZE: u64 = 0x2_0000;
/// The stream ids the guest's stream table covers (IDR1.SIDSIZE).
const SID_BITS: u32 = 6;
/// The largest queues the guest may ask for (IDR1.CMDQS, EVENTQS): 32 entries.
const QUEUE_LOG2_MAX: u32 = 5;

/// IDR0 fields kept from the real SMMU (IHI 0070 6.3.1): S1P, TTF, COHACC, ASID16, TTENDIAN,
/// STALL_MODEL, TERM_MODEL. Everything else reads as absent (S2P, ST_LEVEL = linear, MSI, ATS,
/// PRI, HYP, VMID16, BTM, HTTU, ...).
const IDR0_KEPT: u32 = 1 << 1 | 3 << 2 | 1 << 4 | 1 << 12 | 3 << 21 | 3 << 24 | 1 << 26;
/// IDR0.S1P.
const IDR0_S1P: u32 = 1 << 1;
/// IDR5.OAS (the guest's output addresses are IPAs).
const IDR5_OAS: u32 = 0x7;
/// CR0.CMDQEN and CR0.EVENTQEN.
const CR0_EVENTQEN: u32 = 1 << 2;
const CR0_CMDQEN: u32 = 1 << 3;
/// GERROR.CMDQ_ERR.
const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// CMDQ_CONS.ERR values (IHI 0070 6.3.28): CERROR_ILL, CERROR_ABT.
const CERROR_ILL: u32 = 1;
const CERROR_ABT: u32 = 2;
const CONS_ERR_SHIFT: u32 = 24;
/// EVENTQ_PROD.OVFLG.
const PROD_OVFLG: u32 = 1 << 31;
/// STE word 0 bit V.
const STE_V: u64 = 1;

/// Register offsets, from the crate's own register map.
const IDR0: u64 = offset_of!(SmmuRegisters, idr0) as u64;
const IDR5: u64 = offset_of!(SmmuRegisters, idr5) as u64;
const AIDR: u64 = offset_of!(SmmuRegisters, aidr) as u64;
const CR0: u64 = offset_of!(SmmuRegisters, cr0) as u64;
const CR0ACK: u64 = offset_of!(SmmuRegisters, cr0ack) as u64;
const CR1: u64 = offset_of!(SmmuRegisters, cr1) as u64;
const CR2: u64 = offset_of!(SmmuRegisters, cr2) as u64;
const GBPA: u64 = offset_of!(SmmuRegisters, gbpa) as u64;
const IRQ_CTRL: u64 = offset_of!(SmmuRegisters, irq_ctrl) as u64;
const IRQ_CTRLACK: u64 = offset_of!(SmmuRegisters, irq_ctrlack) as u64;
const GERROR: u64 = offset_of!(SmmuRegisters, gerror) as u64;
const GERRORN: u64 = offset_of!(SmmuRegisters, gerrorn) as u64;
const STRTAB_BASE: u64 = offset_of!(SmmuRegisters, strtab_base) as u64;
const STRTAB_BASE_CFG: u64 = offset_of!(SmmuRegisters, strtab_base_cfg) as u64;
const CMDQ_BASE: u64 = offset_of!(SmmuRegisters, cmdq_base) as u64;
const CMDQ_PROD: u64 = offset_of!(SmmuRegisters, cmdq_prod) as u64;
const CMDQ_CONS: u64 = offset_of!(SmmuRegisters, cmdq_cons) as u64;
const EVENTQ_BASE: u64 = offset_of!(SmmuRegisters, eventq_base) as u64;
const EVENTQ_PROD: u64 = offset_of!(SmmuRegisters, eventq_prod) as u64;
const EVENTQ_CONS: u64 = offset_of!(SmmuRegisters, eventq_cons) as u64;

/// A queue of `2^log2` entries of `size` bytes at IPA `base`, from a *_BASE register value.
#[derive(Clone, Copy, Debug)]
struct Ring {
    base: u64,
    log2: u32,
    size: u64,
}

impl Ring {
    fn from_register(value: u64, size: u64) -> Self {
        Self {
            // ADDR, bits [51:5].
            base: value & ((1 << 52) - 1) & !0x1f,
            log2: ((value & 0x1f) as u32).min(QUEUE_LOG2_MAX),
            size,
        }
    }

    /// Index and wrap bit of a PROD or CONS value.
    fn position(&self, value: u32) -> u32 {
        value & ((2 << self.log2) - 1)
    }

    fn next(&self, position: u32) -> u32 {
        (position + 1) & ((2 << self.log2) - 1)
    }

    /// The IPA of the entry at `position`.
    fn entry(&self, position: u32) -> u64 {
        self.base + u64::from(position & ((1 << self.log2) - 1)) * self.size
    }

    fn is_full(&self, prod: u32, cons: u32) -> bool {
        prod ^ cons == 1 << self.log2
    }
}

/// What the vSMMU did, for the test to check.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Guest STEs installed as nested domains (and STEs that cleared V: the device blocked).
    pub stes: u32,
    /// Guest commands forwarded through the vIOMMU and completed.
    pub forwarded: u32,
    /// Guest commands refused, with the vIOMMU's reason.
    pub refused: Vec<UnitError>,
    /// Events written into the guest's event queue.
    pub events: u32,
    /// Stage-2 faults of the guest's device: the hypervisor's, not shown to the guest.
    pub stage2_faults: u32,
}

/// Whose vSMMU it is: the guest (an owner in the object model), its vIOMMU, and its one
/// device with its physical and virtual stream ids.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Guest {
    pub owner: OwnerId,
    pub viommu: ViommuId,
    pub device: DeviceHandle,
    pub stream: u32,
    pub vsid: u32,
}

/// The emulated SMMU of one guest with one device.
pub(crate) struct VSmmu<'a> {
    /// The IPA of its register frame.
    base: u64,
    io: &'a mut Iommu<&'static Unit>,
    unit: &'static Unit,
    owner: OwnerId,
    viommu: ViommuId,
    device: DeviceHandle,
    /// The device's physical stream id and its virtual one.
    stream: u32,
    vsid: u32,
    /// The nested domain the device is attached to, from the guest's last valid STE.
    nested: Option<DomainId>,
    idr: [u32; 6],
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    eventq_base: u64,
    eventq_prod: u32,
    eventq_cons: u32,
    pub activity: Activity,
}

impl<'a> VSmmu<'a> {
    /// A disabled vSMMU at IPA `base` for the guest `owner`'s device `guest.device`, which
    /// the guest knows as virtual stream `guest.vsid` of vIOMMU `guest.viommu` on `unit`.
    /// `ipa_bits`: the guest's physical address size, its stage 1's output size.
    pub fn new(
        base: u64,
        io: &'a mut Iommu<&'static Unit>,
        unit: (UnitId, &'static Unit),
        guest: Guest,
        ipa_bits: u32,
    ) -> Result<Self, Failure> {
        let RawRegisters::Smmuv3 { idr: real, .. } = io.hardware_info(unit.0).map_err(fail)?.raw
        else {
            return Err(fail("the unit under the vIOMMU is not an SMMUv3"));
        };
        if real[0] & IDR0_S1P == 0 {
            return Err(fail("a vSMMU with stage 1 needs a real SMMU with stage 1"));
        }
        let queue_bits = |real: u32, at: u32| (real >> at & 0x1f).min(QUEUE_LOG2_MAX) << at;
        let oas = match ipa_bits {
            0..=32 => 0,
            33..=36 => 1,
            37..=40 => 2,
            41..=42 => 3,
            43..=44 => 4,
            _ => 5,
        };
        let idr = [
            real[0] & IDR0_KEPT,
            // SIDSIZE, no substreams or PRI queue, the queue sizes capped.
            SID_BITS | queue_bits(real[1], 16) | queue_bits(real[1], 21),
            0,
            0,
            0,
            real[5] & !IDR5_OAS | oas.min(real[5] & IDR5_OAS),
        ];
        Ok(Self {
            base,
            io,
            unit: unit.1,
            owner: guest.owner,
            viommu: guest.viommu,
            device: guest.device,
            stream: guest.stream,
            vsid: guest.vsid,
            nested: None,
            idr,
            cr0: 0,
            cr1: 0,
            cr2: 0,
            gbpa: 0,
            irq_ctrl: 0,
            gerror: 0,
            gerrorn: 0,
            strtab_base: 0,
            strtab_cfg: 0,
            cmdq_base: 0,
            cmdq_prod: 0,
            cmdq_cons: 0,
            eventq_base: 0,
            eventq_prod: 0,
            eventq_cons: 0,
            activity: Activity::default(),
        })
    }

    /// The nested domain the guest's STE made, if any (to destroy after the run).
    pub fn nested(&self) -> Option<DomainId> {
        self.nested
    }

    fn read(&mut self, vm: &Vm, offset: u64) -> u64 {
        match offset {
            o if (IDR0..=IDR5).contains(&o) && o % 4 == 0 => {
                u64::from(self.idr[((o - IDR0) / 4) as usize])
            }
            // SMMUv3.1.
            AIDR => 1,
            CR0 | CR0ACK => u64::from(self.cr0),
            CR1 => u64::from(self.cr1),
            CR2 => u64::from(self.cr2),
            GBPA => u64::from(self.gbpa),
            IRQ_CTRL | IRQ_CTRLACK => u64::from(self.irq_ctrl),
            GERROR => u64::from(self.gerror),
            GERRORN => u64::from(self.gerrorn),
            STRTAB_BASE => self.strtab_base,
            STRTAB_BASE_CFG => u64::from(self.strtab_cfg),
            CMDQ_BASE => self.cmdq_base,
            CMDQ_PROD => u64::from(self.cmdq_prod),
            CMDQ_CONS => u64::from(self.cmdq_cons),
            EVENTQ_BASE => self.eventq_base,
            EVENTQ_PROD => {
                self.forward_events(vm);
                u64::from(self.eventq_prod)
            }
            EVENTQ_CONS => u64::from(self.eventq_cons),
            // The rest reads as zero, like registers of features it does not have.
            _ => 0,
        }
    }

    fn write(&mut self, vm: &Vm, offset: u64, v: u64) -> Result<(), Failure> {
        let v32 = v as u32;
        match offset {
            CR0 => self.cr0 = v32,
            CR1 => self.cr1 = v32,
            CR2 => self.cr2 = v32,
            // GBPA.Update completes at once.
            GBPA => self.gbpa = v32 & !(1 << 31),
            IRQ_CTRL => self.irq_ctrl = v32,
            GERRORN => {
                self.gerrorn = v32;
                self.process_commands(vm)?;
            }
            STRTAB_BASE => self.strtab_base = v,
            STRTAB_BASE_CFG => self.strtab_cfg = v32,
            CMDQ_BASE => self.cmdq_base = v,
            CMDQ_PROD => {
                self.cmdq_prod = v32;
                self.process_commands(vm)?;
            }
            // Software sets CONS only while the queue is off.
            CMDQ_CONS if self.cr0 & CR0_CMDQEN == 0 => self.cmdq_cons = v32,
            EVENTQ_BASE => self.eventq_base = v,
            EVENTQ_PROD if self.cr0 & CR0_EVENTQEN == 0 => self.eventq_prod = v32,
            EVENTQ_CONS => self.eventq_cons = v32,
            // Writes to anything else are ignored.
            _ => {}
        }
        Ok(())
    }

    /// Consumes the guest's commands from CONS to PROD: STE invalidations rebuild the
    /// device's nested domain, the rest go to the vIOMMU in batches up to each CMD_SYNC. A
    /// refused command stops the queue (CERROR_ILL) until the guest acknowledges GERROR.
    fn process_commands(&mut self, vm: &Vm) -> Result<(), Failure> {
        if self.cr0 & CR0_CMDQEN == 0 || (self.gerror ^ self.gerrorn) & GERROR_CMDQ_ERR != 0 {
            return Ok(());
        }
        let ring = Ring::from_register(self.cmdq_base, 16);
        let prod = ring.position(self.cmdq_prod);
        let mut at = ring.position(self.cmdq_cons);
        let mut batch: Vec<[u64; 2]> = Vec::new();
        while at != prod {
            let ipa = ring.entry(at);
            let (Some(w0), Some(w1)) = (vm.guest_u64(ipa), vm.guest_u64(ipa + 8)) else {
                // The commands before it go first; if one of them stops the queue, that is
                // the error the guest sees.
                if self.flush_batch(&ring, &mut batch)? {
                    self.command_error(CERROR_ABT);
                }
                return Ok(());
            };
            match w0 as u8 {
                opcode::CFGI_STE | opcode::CFGI_STE_RANGE => {
                    if !self.flush_batch(&ring, &mut batch)? {
                        return Ok(());
                    }
                    if self.names_our_stream(w0, w1) {
                        self.reload_ste(vm)?;
                    }
                    self.cmdq_cons = ring.next(self.cmdq_cons);
                }
                op => {
                    batch.push([w0, w1]);
                    if op == opcode::SYNC && !self.flush_batch(&ring, &mut batch)? {
                        return Ok(());
                    }
                }
            }
            at = ring.next(at);
        }
        self.flush_batch(&ring, &mut batch)?;
        Ok(())
    }

    /// Forwards `batch` (the commands from CONS on) through the vIOMMU and advances CONS past
    /// what completed; false if a command was refused (the queue stopped there).
    fn flush_batch(&mut self, ring: &Ring, batch: &mut Vec<[u64; 2]>) -> Result<bool, Failure> {
        if batch.is_empty() {
            return Ok(true);
        }
        let forwarded = self
            .io
            .invalidate(self.owner, self.viommu, batch)
            .map_err(fail)?;
        for _ in 0..forwarded.done {
            self.cmdq_cons = ring.next(self.cmdq_cons);
        }
        self.activity.forwarded += forwarded.done as u32;
        batch.clear();
        match forwarded.refused {
            None => Ok(true),
            Some(why) => {
                self.activity.refused.push(why);
                self.command_error(CERROR_ILL);
                Ok(false)
            }
        }
    }

    /// Stops the queue at CONS with `code`, as GERROR.CMDQ_ERR tells the guest.
    fn command_error(&mut self, code: u32) {
        self.cmdq_cons = self.cmdq_cons & !(0x7f << CONS_ERR_SHIFT) | code << CONS_ERR_SHIFT;
        self.gerror ^= GERROR_CMDQ_ERR;
    }

    /// Whether an STE invalidation covers the guest's stream.
    fn names_our_stream(&self, w0: u64, w1: u64) -> bool {
        let sid = w0 >> 32;
        match w0 as u8 {
            opcode::CFGI_STE => sid == u64::from(self.vsid),
            // RANGE: 2^(Range + 1) stream ids from SID rounded down to that size (Range 31:
            // CMD_CFGI_ALL).
            opcode::CFGI_STE_RANGE => {
                let span = 2u64 << (w1 & 0x1f);
                sid & !(span - 1) <= u64::from(self.vsid)
                    && u64::from(self.vsid) < (sid & !(span - 1)) + span
            }
            _ => true,
        }
    }

    /// Reads the guest's STE for its stream and makes the device follow it: a valid STE
    /// becomes a nested domain of the vIOMMU (the vIOMMU checks it), an invalid one blocks the
    /// device. An STE the vIOMMU refuses blocks the device too.
    fn reload_ste(&mut self, vm: &Vm) -> Result<(), Failure> {
        let base = self.strtab_base & ((1 << 52) - 1) & !0x3f;
        let log2size = self.strtab_cfg & 0x3f;
        if self.vsid >> log2size.min(SID_BITS) != 0 {
            return self.block();
        }
        let mut ste = [0u64; 8];
        for (i, w) in ste.iter_mut().enumerate() {
            let ipa = base + u64::from(self.vsid) * 64 + i as u64 * 8;
            *w = vm.guest_u64(ipa).ok_or_else(|| {
                fail(format_args!(
                    "the guest's STE at {ipa:#x} is outside its RAM"
                ))
            })?;
        }
        if ste[0] & STE_V == 0 {
            return self.block();
        }
        let nested = match self.io.alloc_nested_domain(self.owner, self.viommu, &ste) {
            Ok(d) => d,
            Err(e) => {
                self.activity.refused.push(match e {
                    iommu::iommufd::Error::Unit(u) => u,
                    _ => UnitError::GuestEntry("the vIOMMU refused the STE"),
                });
                return self.block();
            }
        };
        self.io
            .attach(self.device, self.owner, Target::Domain(nested))
            .map_err(fail)?;
        self.activity.stes += 1;
        if let Some(old) = self.nested.replace(nested) {
            self.io.destroy_domain(self.owner, old).map_err(fail)?;
        }
        Ok(())
    }

    /// Blocks the device and drops its nested domain.
    fn block(&mut self) -> Result<(), Failure> {
        self.io
            .attach(self.device, self.owner, Target::Blocked)
            .map_err(fail)?;
        self.activity.stes += 1;
        if let Some(old) = self.nested.take() {
            self.io.destroy_domain(self.owner, old).map_err(fail)?;
        }
        Ok(())
    }

    /// Drains the real event queue: the guest's device's stage-1 faults go into the guest's
    /// event queue under its virtual stream id (or set OVFLG when it is full); its stage-2
    /// faults are the hypervisor's.
    fn forward_events(&mut self, vm: &Vm) {
        let mut ours = Vec::new();
        let stream = self.stream;
        let _ = self.unit.drain_events(&mut |e: &Event| {
            if e.stream_id == stream {
                ours.push(*e);
            }
        });
        let ring = Ring::from_register(self.eventq_base, 32);
        for e in ours {
            if e.stage == Some(FaultStage::Stage2) {
                self.activity.stage2_faults += 1;
                continue;
            }
            if self.cr0 & CR0_EVENTQEN == 0 {
                continue;
            }
            let prod = ring.position(self.eventq_prod);
            if ring.is_full(prod, ring.position(self.eventq_cons)) {
                self.eventq_prod ^= PROD_OVFLG;
                continue;
            }
            let at = ring.entry(prod);
            let written = e
                .raw_for_stream(self.vsid)
                .iter()
                .enumerate()
                .all(|(i, w)| vm.set_guest_u64(at + 8 * i as u64, *w));
            if written {
                self.eventq_prod = self.eventq_prod & PROD_OVFLG | ring.next(prod);
                self.activity.events += 1;
            }
        }
    }
}

impl Exits for VSmmu<'_> {
    fn data_abort(&mut self, vm: &Vm, ipa: u64, access: &mut Mmio) -> Result<bool, Failure> {
        let Some(offset) = ipa.checked_sub(self.base).filter(|o| *o < VSMMU_SIZE) else {
            return Ok(false);
        };
        // 32-bit registers take 32-bit accesses; 64-bit ones 64-bit accesses or 32-bit
        // accesses to either half, which merge into the register.
        let is_64 = |o: u64| matches!(o, STRTAB_BASE | CMDQ_BASE | EVENTQ_BASE);
        let (register, shift) = match offset {
            o if access.size == 4 && is_64(o.wrapping_sub(4)) => (o - 4, 32),
            o => (o, 0),
        };
        if access.write {
            let value = if access.size == 4 && is_64(register) {
                let mask = 0xffff_ffffu64 << shift;
                self.read(vm, register) & !mask | (access.value & 0xffff_ffff) << shift
            } else {
                access.value
            };
            self.write(vm, register, value)?;
        } else {
            access.value = self.read(vm, register) >> shift;
        }
        Ok(true)
    }
}
