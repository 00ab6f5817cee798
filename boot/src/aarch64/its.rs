//! A GICv3 Interrupt Translation Service (Arm IHI 0069H, "The ITS"): turns a device's MSI
//! write to GITS_TRANSLATER into an LPI of the [`GicV3`]. The ITS names the writer by its
//! DeviceID (on PCIe the requester id, through the host's `msi-map`) and the written value is
//! the EventID; per device an interrupt translation table (ITT) maps events to LPIs.
//!
//! Tables (device, collection) and the command queue come from the heap and are never freed;
//! a device's ITT is freed when it is unmapped. Commands are encoded in
//! [`crate::its_command`]; every wait for the ITS to consume them is bounded.
//!
//! Limits: the ITS is assumed coherent with the CPU's caches (the tables are programmed Inner
//! Shareable write-back, as QEMU's ITS is; one that reads back non-shareable would need cache
//! cleaning, which is not done), the device table is flat, and a stalled command queue
//! (GITS_CREADR.Stalled) is reported, not recovered.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::collections::BTreeMap;
use core::ptr::NonNull;

use aarch64_cpu::asm::barrier;
use iommu::poll::{poll_until, Timeout, DEFAULT_POLL_BUDGET};
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

use super::gicv3::{GicV3, GicV3Error};
use crate::its_command::{event_id_bits, Command, TargetRedistributor, COMMAND_BYTES};

register_bitfields! {u32,
    /// IHI 0069H, GITS_CTLR.
    pub GITS_CTLR [
        Enabled OFFSET(0) NUMBITS(1) [],
        /// The ITS has no command or translation in flight (its tables may be changed).
        Quiescent OFFSET(31) NUMBITS(1) [],
    ],
}

register_bitfields! {u64,
    /// IHI 0069H, GITS_TYPER.
    pub GITS_TYPER [
        /// Physical LPIs supported.
        Physical OFFSET(0) NUMBITS(1) [],
        /// Bytes per ITT entry, minus one.
        ITT_entry_size OFFSET(4) NUMBITS(4) [],
        /// EventID bits, minus one.
        IDbits OFFSET(8) NUMBITS(5) [],
        /// DeviceID bits, minus one.
        Devbits OFFSET(13) NUMBITS(5) [],
        /// Physical target addresses: 1 = MAPC/SYNC name a redistributor by its RD_base
        /// address, 0 = by GICR_TYPER.Processor_Number.
        PTA OFFSET(19) NUMBITS(1) [],
        /// Hardware collection count: collections held without a table.
        HCC OFFSET(24) NUMBITS(8) [],
    ],
    /// IHI 0069H, GITS_BASER<n>: one of the ITS's memory-backed tables.
    pub GITS_BASER [
        /// Pages of the table, minus one.
        Size OFFSET(0) NUMBITS(8) [],
        Page_Size OFFSET(8) NUMBITS(2) [Size4K = 0, Size16K = 1, Size64K = 2],
        Shareability OFFSET(10) NUMBITS(2) [InnerShareable = 0b01],
        /// Bits [47:12] of the table's address (4 KiB and 16 KiB pages).
        Physical_Address OFFSET(12) NUMBITS(36) [],
        /// Bytes per entry, minus one (read-only).
        Entry_Size OFFSET(48) NUMBITS(5) [],
        /// What the table holds (read-only).
        Type OFFSET(56) NUMBITS(3) [
            Unimplemented = 0,
            Devices = 1,
            VPEs = 2,
            Collections = 4
        ],
        InnerCache OFFSET(59) NUMBITS(3) [WriteBackReadWriteAllocate = 0b111],
        /// Two-level table.
        Indirect OFFSET(62) NUMBITS(1) [],
        Valid OFFSET(63) NUMBITS(1) [],
    ],
    /// IHI 0069H, GITS_CBASER: the command queue.
    pub GITS_CBASER [
        /// 4 KiB pages of the queue, minus one.
        Size OFFSET(0) NUMBITS(8) [],
        Shareability OFFSET(10) NUMBITS(2) [InnerShareable = 0b01],
        /// Bits [51:12] of the queue's address.
        Physical_Address OFFSET(12) NUMBITS(40) [],
        InnerCache OFFSET(59) NUMBITS(3) [WriteBackReadWriteAllocate = 0b111],
        Valid OFFSET(63) NUMBITS(1) [],
    ],
    /// IHI 0069H, GITS_CWRITER and GITS_CREADR: a byte offset into the queue.
    pub GITS_CQ_OFFSET [
        /// GITS_CREADR: command processing stalled on an error.
        Stalled OFFSET(0) NUMBITS(1) [],
        /// Offset of the next command, in 32-byte units.
        Offset OFFSET(5) NUMBITS(15) [],
    ],
}

register_structs! {
    /// The ITS control frame (ITS_base) and, 64 KiB above, the translation frame (IHI 0069H,
    /// "The GIC ITS register map").
    pub GitsRegisters {
        /// GITS_CTLR.
        (0x0000 => ctlr: ReadWrite<u32, GITS_CTLR::Register>),
        /// GITS_IIDR.
        (0x0004 => iidr: ReadOnly<u32>),
        /// GITS_TYPER.
        (0x0008 => typer: ReadOnly<u64, GITS_TYPER::Register>),
        (0x0010 => _reserved0),
        /// GITS_CBASER.
        (0x0080 => cbaser: ReadWrite<u64, GITS_CBASER::Register>),
        /// GITS_CWRITER: where software will write the next command.
        (0x0088 => cwriter: ReadWrite<u64, GITS_CQ_OFFSET::Register>),
        /// GITS_CREADR: the next command the ITS will read.
        (0x0090 => creadr: ReadOnly<u64, GITS_CQ_OFFSET::Register>),
        (0x0098 => _reserved1),
        /// GITS_BASER<n>, n = 0..8.
        (0x0100 => baser: [ReadWrite<u64, GITS_BASER::Register>; 8]),
        (0x0140 => _reserved2),
        /// GITS_TRANSLATER: the doorbell devices write their EventID to (translation frame).
        (0x1_0040 => translater: WriteOnly<u32>),
        (0x1_0044 => @END),
    }
}

/// GITS_TRANSLATER's offset from the ITS base: the MSI doorbell.
pub const TRANSLATER_OFFSET: u64 = 0x1_0040;

/// Table pages are 4 KiB here (GITS_BASER.Page_Size, written and checked).
const PAGE: usize = 4096;
/// GITS_BASER.Size holds at most 256 pages.
const MAX_TABLE_PAGES: usize = 256;
/// The command queue: one 4 KiB page, 128 commands.
const QUEUE_BYTES: usize = PAGE;
const QUEUE_ENTRIES: usize = QUEUE_BYTES / COMMAND_BYTES;
/// An ITT's address is 256-byte aligned (MAPD's ITT_addr holds bits [51:8]).
const ITT_ALIGN: usize = 256;
/// The one collection this driver uses: every LPI goes to the boot CPU.
const ICID: u16 = 0;

/// Why the ITS could not be brought up or a command not issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItsError {
    /// GITS_CTLR.Enabled is already set: the ITS was brought up before (its tables can no
    /// longer be changed).
    AlreadyEnabled,
    /// GITS_TYPER.Physical is clear.
    NoPhysicalLpis,
    /// No GITS_BASER<n> is of type Devices (or of type Collections when HCC is 0).
    MissingTable { kind: &'static str },
    /// A GITS_BASER<n> did not take the 4 KiB page size.
    PageSizeRefused { baser: usize },
    /// The DeviceID is beyond the device table.
    DeviceIdOutOfRange { device_id: u32, limit: u32 },
    /// More events than the ITS has EventID bits for.
    TooManyEvents { events: u32, max_bits: u8 },
    /// The device has no ITT ([`Its::map_device`] first).
    DeviceNotMapped(u32),
    /// The EventID is beyond the device's ITT.
    EventIdOutOfRange { device_id: u32, event_id: u32 },
    /// The ITS stopped processing commands on an error (GITS_CREADR.Stalled).
    Stalled { creadr: u64 },
    /// Tables or an ITT could not be allocated.
    OutOfMemory,
    /// The GIC refused the LPI.
    Gic(GicV3Error),
    /// The ITS did not become quiescent or did not consume its commands.
    Timeout(Timeout),
}

impl core::fmt::Display for ItsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AlreadyEnabled => f.write_str("the ITS is already enabled"),
            Self::NoPhysicalLpis => f.write_str("the ITS does not support physical LPIs"),
            Self::MissingTable { kind } => write!(f, "the ITS has no {kind} table"),
            Self::PageSizeRefused { baser } => {
                write!(f, "GITS_BASER{baser} refused 4 KiB pages")
            }
            Self::DeviceIdOutOfRange { device_id, limit } => write!(
                f,
                "DeviceID {device_id:#x} is beyond the device table ({limit:#x} ids)"
            ),
            Self::TooManyEvents { events, max_bits } => {
                write!(f, "{events} events need more than {max_bits} EventID bits")
            }
            Self::DeviceNotMapped(id) => write!(f, "DeviceID {id:#x} has no ITT"),
            Self::EventIdOutOfRange {
                device_id,
                event_id,
            } => write!(
                f,
                "EventID {event_id} is beyond DeviceID {device_id:#x}'s ITT"
            ),
            Self::Stalled { creadr } => {
                write!(f, "the ITS stalled on a command (GITS_CREADR {creadr:#x})")
            }
            Self::OutOfMemory => f.write_str("no memory for ITS tables"),
            Self::Gic(e) => write!(f, "{e}"),
            Self::Timeout(t) => write!(f, "ITS: {t}"),
        }
    }
}

impl core::error::Error for ItsError {}

impl From<Timeout> for ItsError {
    fn from(t: Timeout) -> Self {
        Self::Timeout(t)
    }
}

impl From<GicV3Error> for ItsError {
    fn from(e: GicV3Error) -> Self {
        Self::Gic(e)
    }
}

/// A device's interrupt translation table.
struct Itt {
    memory: NonNull<u8>,
    layout: Layout,
    event_ids: u32,
}

/// What commands change: the queue's write position and the devices' ITTs.
struct State {
    /// Index of the next queue entry to write.
    write: usize,
    devices: BTreeMap<u32, Itt>,
}

/// An enabled ITS with collection 0 mapped to the boot CPU's redistributor.
pub struct Its {
    regs: &'static GitsRegisters,
    base: u64,
    gic: &'static GicV3,
    target: TargetRedistributor,
    queue: NonNull<[u64; 4]>,
    itt_entry_bytes: usize,
    max_event_id_bits: u8,
    /// DeviceIDs below this fit the device table.
    device_ids: u32,
    state: spin::Mutex<State>,
}

// SAFETY: the registers are MMIO cells accessed volatilely; the queue and the ITTs are memory
// this value owns, written only under `state`'s lock.
unsafe impl Send for Its {}
// SAFETY: as for `Send`.
unsafe impl Sync for Its {}

impl Its {
    /// Brings up the ITS at `base` for `gic`: device and collection tables (a flat device table
    /// for at most `max_device_ids` DeviceIDs, fewer if the ITS has fewer bits or the table
    /// would pass 256 pages), the command queue, then enables it and maps collection 0 to this
    /// CPU's redistributor.
    ///
    /// # Safety
    /// `base` must be the ITS control frame (and the translation frame 64 KiB above) of `gic`'s
    /// ITS, from the devicetree, mapped as Device memory for the kernel's life, and nothing else
    /// may program this ITS meanwhile.
    pub unsafe fn new(
        base: u64,
        gic: &'static GicV3,
        max_device_ids: u32,
    ) -> Result<Self, ItsError> {
        // SAFETY: per the contract; the cells are interior-mutable and accessed volatilely.
        let regs = unsafe { &*(base as usize as *const GitsRegisters) };
        if regs.ctlr.is_set(GITS_CTLR::Enabled) {
            return Err(ItsError::AlreadyEnabled);
        }
        poll_until("the ITS to be quiescent", DEFAULT_POLL_BUDGET, || {
            regs.ctlr.is_set(GITS_CTLR::Quiescent)
        })?;
        let typer = regs.typer.extract();
        if !typer.is_set(GITS_TYPER::Physical) {
            return Err(ItsError::NoPhysicalLpis);
        }
        let itt_entry_bytes = typer.read(GITS_TYPER::ITT_entry_size) as usize + 1;
        let max_event_id_bits = typer.read(GITS_TYPER::IDbits) as u8 + 1;
        let dev_bits = typer.read(GITS_TYPER::Devbits) as u32 + 1;
        let mut device_ids = None;
        let mut collections = typer.read(GITS_TYPER::HCC) > 0;
        for (n, baser) in regs.baser.iter().enumerate() {
            let value = baser.extract();
            let entry = value.read(GITS_BASER::Entry_Size) as usize + 1;
            let wanted = match value.read_as_enum(GITS_BASER::Type) {
                Some(GITS_BASER::Type::Value::Devices) => {
                    let ids = 1u64 << dev_bits.min(32);
                    ids.min(u64::from(max_device_ids.max(1))) as usize
                }
                // One collection is all this driver maps.
                Some(GITS_BASER::Type::Value::Collections) => 1,
                _ => continue,
            };
            let pages = (wanted * entry).div_ceil(PAGE).clamp(1, MAX_TABLE_PAGES);
            let table = leak_zeroed(pages * PAGE, PAGE)?;
            baser.write(
                GITS_BASER::Valid::SET
                    + GITS_BASER::InnerCache::WriteBackReadWriteAllocate
                    + GITS_BASER::Shareability::InnerShareable
                    + GITS_BASER::Page_Size::Size4K
                    + GITS_BASER::Physical_Address.val(table as u64 >> 12)
                    + GITS_BASER::Size.val(pages as u64 - 1),
            );
            if baser.read(GITS_BASER::Page_Size) != GITS_BASER::Page_Size::Size4K.value {
                return Err(ItsError::PageSizeRefused { baser: n });
            }
            match value.read_as_enum(GITS_BASER::Type) {
                Some(GITS_BASER::Type::Value::Devices) => {
                    device_ids = Some(((pages * PAGE / entry) as u64).min(1 << 32) as u32);
                }
                _ => collections = true,
            }
        }
        let device_ids = device_ids.ok_or(ItsError::MissingTable { kind: "device" })?;
        if !collections {
            return Err(ItsError::MissingTable { kind: "collection" });
        }
        let queue = leak_zeroed(QUEUE_BYTES, 1 << 16)?;
        regs.cbaser.write(
            GITS_CBASER::Valid::SET
                + GITS_CBASER::InnerCache::WriteBackReadWriteAllocate
                + GITS_CBASER::Shareability::InnerShareable
                + GITS_CBASER::Physical_Address.val(queue as u64 >> 12)
                + GITS_CBASER::Size.val(QUEUE_BYTES as u64 / PAGE as u64 - 1),
        );
        regs.cwriter.set(0);
        // The zeroed tables and queue must be visible to the ITS before it is enabled.
        barrier::dsb(barrier::SY);
        regs.ctlr.modify(GITS_CTLR::Enabled::SET);

        let (processor, rd_base) = gic.redistributor();
        let target = if typer.is_set(GITS_TYPER::PTA) {
            TargetRedistributor::PhysicalAddress(rd_base)
        } else {
            TargetRedistributor::ProcessorNumber(processor)
        };
        let its = Self {
            regs,
            base,
            gic,
            target,
            queue: NonNull::new(queue.cast()).ok_or(ItsError::OutOfMemory)?,
            itt_entry_bytes,
            max_event_id_bits,
            device_ids,
            state: spin::Mutex::new(State {
                write: 0,
                devices: BTreeMap::new(),
            }),
        };
        its.submit(&[
            Command::Mapc {
                icid: ICID,
                target: Some(target),
            },
            Command::Sync { target },
            Command::Invall { icid: ICID },
            Command::Sync { target },
        ])?;
        Ok(its)
    }

    /// The physical address devices write their EventID to (GITS_TRANSLATER): the MSI
    /// address to program, and the doorbell an IOMMU domain must map for MSIs to pass.
    pub fn doorbell(&self) -> u64 {
        self.base + TRANSLATER_OFFSET
    }

    /// DeviceIDs below this fit the device table.
    pub fn device_ids(&self) -> u32 {
        self.device_ids
    }

    /// Gives `device_id` an ITT for EventIDs `0..event_ids` (MAPD), replacing any it had (its
    /// events are then unmapped).
    pub fn map_device(&self, device_id: u32, event_ids: u32) -> Result<(), ItsError> {
        self.check_device(device_id)?;
        let bits = event_id_bits(event_ids);
        if bits > self.max_event_id_bits {
            return Err(ItsError::TooManyEvents {
                events: event_ids,
                max_bits: self.max_event_id_bits,
            });
        }
        let entries = 1usize << bits;
        let layout =
            Layout::from_size_align((entries * self.itt_entry_bytes).max(ITT_ALIGN), ITT_ALIGN)
                .map_err(|_| ItsError::OutOfMemory)?;
        // SAFETY: the layout has a non-zero size.
        let memory = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(ItsError::OutOfMemory)?;
        let itt = Itt {
            memory,
            layout,
            event_ids: entries as u32,
        };
        let mut state = self.state.lock();
        let map = Command::Mapd {
            device_id,
            event_id_bits: bits,
            itt: Some(memory.as_ptr() as u64),
        };
        let sync = Command::Sync {
            target: self.target,
        };
        // A mapped device is unmapped first rather than remapped in place: the result of MAPD
        // over a valid entry is not the driver's to guess.
        let result = if state.devices.contains_key(&device_id) {
            let unmap = Command::Mapd {
                device_id,
                event_id_bits: 1,
                itt: None,
            };
            self.submit_locked(&mut state, &[unmap, sync, map, sync])
        } else {
            self.submit_locked(&mut state, &[map, sync])
        };
        // On an error the ITS may hold the new ITT's address: it is leaked (`Itt` frees nothing
        // when dropped), never freed under the ITS.
        result?;
        if let Some(old) = state.devices.insert(device_id, itt) {
            free_itt(old);
        }
        Ok(())
    }

    /// Unmaps `device_id` (MAPD with V = 0): its MSIs translate to nothing, and its ITT is
    /// freed.
    pub fn unmap_device(&self, device_id: u32) -> Result<(), ItsError> {
        self.check_device(device_id)?;
        let mut state = self.state.lock();
        self.submit_locked(
            &mut state,
            &[
                Command::Mapd {
                    device_id,
                    event_id_bits: 1,
                    itt: None,
                },
                Command::Sync {
                    target: self.target,
                },
            ],
        )?;
        if let Some(old) = state.devices.remove(&device_id) {
            free_itt(old);
        }
        Ok(())
    }

    /// Makes event `event_id` of `device_id` raise LPI `lpi` on this CPU: the LPI is enabled in
    /// the GIC's configuration table, mapped (MAPTI, or MAPI when the LPI equals the EventID)
    /// and its configuration re-read (INV).
    pub fn map_interrupt(&self, device_id: u32, event_id: u32, lpi: u32) -> Result<(), ItsError> {
        self.check_device(device_id)?;
        let mut state = self.state.lock();
        let itt = state
            .devices
            .get(&device_id)
            .ok_or(ItsError::DeviceNotMapped(device_id))?;
        if event_id >= itt.event_ids {
            return Err(ItsError::EventIdOutOfRange {
                device_id,
                event_id,
            });
        }
        self.gic.configure_lpi(lpi, true)?;
        let map = if lpi == event_id {
            Command::Mapi {
                device_id,
                event_id,
                icid: ICID,
            }
        } else {
            Command::Mapti {
                device_id,
                event_id,
                lpi,
                icid: ICID,
            }
        };
        self.submit_locked(
            &mut state,
            &[
                map,
                Command::Inv {
                    device_id,
                    event_id,
                },
                Command::Sync {
                    target: self.target,
                },
            ],
        )
    }

    /// Removes the mapping of event `event_id` of `device_id` (DISCARD, then SYNC): once this
    /// returns, the device's MSI with this EventID raises nothing, and a pending LPI from it is
    /// cleared.
    pub fn discard(&self, device_id: u32, event_id: u32) -> Result<(), ItsError> {
        self.check_device(device_id)?;
        let mut state = self.state.lock();
        self.submit_locked(
            &mut state,
            &[
                Command::Discard {
                    device_id,
                    event_id,
                },
                Command::Sync {
                    target: self.target,
                },
            ],
        )
    }

    fn check_device(&self, device_id: u32) -> Result<(), ItsError> {
        if device_id >= self.device_ids {
            return Err(ItsError::DeviceIdOutOfRange {
                device_id,
                limit: self.device_ids,
            });
        }
        Ok(())
    }

    fn submit(&self, commands: &[Command]) -> Result<(), ItsError> {
        let mut state = self.state.lock();
        self.submit_locked(&mut state, commands)
    }

    /// Writes `commands` to the queue, publishes them (GITS_CWRITER) and waits until the ITS
    /// has read them all (GITS_CREADR), or reports that it stalled.
    fn submit_locked(&self, state: &mut State, commands: &[Command]) -> Result<(), ItsError> {
        for command in commands {
            let next = (state.write + 1) % QUEUE_ENTRIES;
            // Full when the next write would reach the ITS's read position.
            poll_until("room in the ITS command queue", DEFAULT_POLL_BUDGET, || {
                self.read_index() != next
            })?;
            // SAFETY: `state.write < QUEUE_ENTRIES` entries of the queue this value owns; the
            // ITS does not read this entry (it is at or past GITS_CWRITER).
            unsafe {
                self.queue
                    .add(state.write)
                    .write_volatile(command.encode().map(u64::to_le))
            };
            state.write = next;
        }
        // The commands must be visible to the ITS before it is told about them.
        barrier::dsb(barrier::SY);
        self.regs
            .cwriter
            .write(GITS_CQ_OFFSET::Offset.val(state.write as u64));
        let write = state.write;
        let mut stalled = false;
        poll_until(
            "the ITS to consume its commands",
            DEFAULT_POLL_BUDGET,
            || {
                let creadr = self.regs.creadr.extract();
                stalled = creadr.is_set(GITS_CQ_OFFSET::Stalled);
                stalled || creadr.read(GITS_CQ_OFFSET::Offset) as usize == write
            },
        )?;
        if stalled {
            return Err(ItsError::Stalled {
                creadr: self.regs.creadr.get(),
            });
        }
        Ok(())
    }

    fn read_index(&self) -> usize {
        self.regs.creadr.read(GITS_CQ_OFFSET::Offset) as usize
    }
}

fn free_itt(itt: Itt) {
    // SAFETY: allocated in `map_device` with this layout; the ITS no longer refers to it (the
    // device was remapped or unmapped, and the SYNC after it completed).
    unsafe { dealloc(itt.memory.as_ptr(), itt.layout) }
}

/// Zeroed memory from the heap that is never freed, at a physical address (the heap is
/// identity-mapped).
fn leak_zeroed(size: usize, align: usize) -> Result<*mut u8, ItsError> {
    let layout = Layout::from_size_align(size, align).map_err(|_| ItsError::OutOfMemory)?;
    // SAFETY: every caller asks for at least one page.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        Err(ItsError::OutOfMemory)
    } else {
        Ok(p)
    }
}
