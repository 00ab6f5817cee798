//! The VT-d remapping unit's register set, declared once (VT-d spec rev. 5.10, section 11.4;
//! section numbers below are that revision's).
//!
//! [`RegisterBlock`] is the fixed part at the unit's base (DRHD register base address). Two groups
//! sit at offsets the hardware reports: the IOTLB registers at `ECAP.IRO × 16`
//! ([`IotlbRegisters`]) and the fault recording registers at `CAP.FRO × 16`, `CAP.NFR + 1` of them
//! ([`FaultRecordingRegister`]); [`UnitRegisters`] finds them. Read-only registers
//! have read-only types. Fields that the spec marks RW1C (write 1 to clear) are noted per field:
//! write them with `write`, never `modify`, or other pending bits get cleared along the way.
//! The MTRR, performance-monitoring and extended-command registers are not used and not declared.

mod mapping;

pub use mapping::{read_unit_info, RegisterMapError, UnitInfo, UnitRegisters};

use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};

/// The accessor traits (`get`, `read`, `write`, `modify`, ...), re-exported so users of the
/// register structs need no direct tock-registers dependency.
pub use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

register_bitfields![u32,
    /// 11.4.1 Version Register.
    pub VER [
        /// Minor version.
        MIN OFFSET(0) NUMBITS(4) [],
        /// Major version.
        MAX OFFSET(4) NUMBITS(4) []
    ],

    /// 11.4.4.1 Global Command Register. One command at a time: software writes the current
    /// status (GSTS, with the one-shot bits SRTP, SFL, WBF and SIRTP masked out) with the one
    /// command bit changed, then waits for GSTS to follow. Reads are undefined, hence write-only.
    pub GCMD [
        /// Compatibility Format Interrupt: let compatibility-format interrupts bypass remapping.
        CFI OFFSET(23) NUMBITS(1) [],
        /// Set Interrupt Remap Table Pointer (one-shot, latches IRTA).
        SIRTP OFFSET(24) NUMBITS(1) [],
        /// Interrupt Remapping Enable.
        IRE OFFSET(25) NUMBITS(1) [],
        /// Queued Invalidation Enable.
        QIE OFFSET(26) NUMBITS(1) [],
        /// Write Buffer Flush (one-shot; only when CAP.RWBF).
        WBF OFFSET(27) NUMBITS(1) [],
        /// Enable Advanced Fault Logging (deprecated).
        EAFL OFFSET(28) NUMBITS(1) [],
        /// Set Fault Log (one-shot, deprecated).
        SFL OFFSET(29) NUMBITS(1) [],
        /// Set Root Table Pointer (one-shot, latches RTADDR).
        SRTP OFFSET(30) NUMBITS(1) [],
        /// Translation Enable.
        TE OFFSET(31) NUMBITS(1) []
    ],

    /// 11.4.4.2 Global Status Register: the state each GCMD command has reached.
    pub GSTS [
        /// Compatibility Format Interrupt Status.
        CFIS OFFSET(23) NUMBITS(1) [],
        /// Interrupt Remapping Table Pointer Status.
        IRTPS OFFSET(24) NUMBITS(1) [],
        /// Interrupt Remapping Enable Status.
        IRES OFFSET(25) NUMBITS(1) [],
        /// Queued Invalidation Enable Status.
        QIES OFFSET(26) NUMBITS(1) [],
        /// Write Buffer Flush Status (1 while a flush is in progress).
        WBFS OFFSET(27) NUMBITS(1) [],
        /// Advanced Fault Logging Status.
        AFLS OFFSET(28) NUMBITS(1) [],
        /// Fault Log Status.
        FLS OFFSET(29) NUMBITS(1) [],
        /// Root Table Pointer Status.
        RTPS OFFSET(30) NUMBITS(1) [],
        /// Translation Enable Status.
        TES OFFSET(31) NUMBITS(1) []
    ],

    /// 11.4.7.1 Fault Status Register.
    pub FSTS [
        /// Primary Fault Overflow (RW1C).
        PFO OFFSET(0) NUMBITS(1) [],
        /// Primary Pending Fault: some fault recording register has F set (read-only summary).
        PPF OFFSET(1) NUMBITS(1) [],
        /// Advanced Fault Overflow (RW1C, deprecated).
        AFO OFFSET(2) NUMBITS(1) [],
        /// Advanced Pending Fault (RW1C, deprecated).
        APF OFFSET(3) NUMBITS(1) [],
        /// Invalidation Queue Error (RW1C): IQH points at the bad descriptor.
        IQE OFFSET(4) NUMBITS(1) [],
        /// Invalidation Completion Error (RW1C): a device-TLB invalidation got a bad response.
        ICE OFFSET(5) NUMBITS(1) [],
        /// Invalidation Time-out Error (RW1C): a device-TLB invalidation timed out.
        ITE OFFSET(6) NUMBITS(1) [],
        /// Fault Record Index: the first fault recording register to look at when PPF is set.
        FRI OFFSET(8) NUMBITS(8) []
    ],

    /// 11.4.7.2 Fault Event Control Register (same layout as IECTL and PECTL).
    pub EVENT_CONTROL [
        /// Interrupt Pending: an event was not signalled because IM was set.
        IP OFFSET(30) NUMBITS(1) [],
        /// Interrupt Mask: 1 stops the MSI from being sent.
        IM OFFSET(31) NUMBITS(1) []
    ],

    /// 11.4.7.3 Fault Event Data Register (same layout as IEDATA and PEDATA).
    pub EVENT_DATA [
        /// MSI data value.
        IMD OFFSET(0) NUMBITS(16) [],
        /// Extended MSI data (when ECAP.EIM and x2APIC).
        EIMD OFFSET(16) NUMBITS(16) []
    ],

    /// 11.4.7.4 Fault Event Address Register (same layout as IEADDR and PEADDR).
    pub EVENT_ADDRESS [
        /// MSI address bits 31:2 (the address is dword aligned).
        MA OFFSET(2) NUMBITS(30) []
    ],

    /// 11.4.8.1 Protected Memory Enable Register.
    pub PMEN [
        /// Protected Region Status.
        PRS OFFSET(0) NUMBITS(1) [],
        /// Enable Protected Memory.
        EPM OFFSET(31) NUMBITS(1) []
    ],

    /// 11.4.9.4 Invalidation Completion Status Register.
    pub ICS [
        /// Invalidation Wait Descriptor Complete (RW1C): a wait descriptor with IF completed.
        IWC OFFSET(0) NUMBITS(1) []
    ],

    /// 11.4.11.4 Page Request Status Register.
    pub PRS [
        /// Pending Page Request (RW1C).
        PPR OFFSET(0) NUMBITS(1) [],
        /// Page Request Overflow (RW1C).
        PRO OFFSET(1) NUMBITS(1) []
    ]
];

register_bitfields![u64,
    /// 11.4.2 Capability Register (decoded by `crate::caps::Capability`).
    pub CAP [
        /// All 64 bits; the meaning of each field is in `crate::caps`.
        RAW OFFSET(0) NUMBITS(64) []
    ],

    /// 11.4.3 Extended Capability Register (decoded by `crate::caps::ExtendedCapability`).
    pub ECAP [
        /// All 64 bits; the meaning of each field is in `crate::caps`.
        RAW OFFSET(0) NUMBITS(64) []
    ],

    /// 11.4.5 Root Table Address Register.
    pub RTADDR [
        /// Translation Table Mode.
        TTM OFFSET(10) NUMBITS(2) [
            /// Legacy mode: root and context entries of 128 bits.
            Legacy = 0,
            /// Scalable mode: scalable-mode root and context entries, PASID tables.
            Scalable = 1,
            /// Abort DMA mode (when ECAP.ADMS): every request is blocked.
            AbortDma = 3
        ],
        /// Root table address, bits 63:12 (4 KiB aligned).
        RTA OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.6.1 Context Command Register (register-based context-cache invalidation).
    pub CCMD [
        /// Domain-ID for domain- and device-selective invalidation.
        DID OFFSET(0) NUMBITS(16) [],
        /// Source-ID for device-selective invalidation.
        SID OFFSET(16) NUMBITS(16) [],
        /// Function Mask: low bits of SID to ignore (0..=3 bits).
        FM OFFSET(32) NUMBITS(2) [],
        /// Context Actual Invalidation Granularity (what the hardware did).
        CAIG OFFSET(59) NUMBITS(2) [],
        /// Context Invalidation Request Granularity.
        CIRG OFFSET(61) NUMBITS(2) [
            Global = 1,
            Domain = 2,
            Device = 3
        ],
        /// Invalidate Context-Cache: set to start, hardware clears it when done.
        ICC OFFSET(63) NUMBITS(1) []
    ],

    /// Advanced Fault Log Register (VT-d rev. 2.x 10.4.15; offset 0x58 is reserved from rev. 3).
    pub AFLOG [
        /// Fault Log Size: 2^FLS × 4 KiB.
        FLS OFFSET(9) NUMBITS(3) [],
        /// Fault Log Address, bits 63:12.
        FLA OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.9.1 Invalidation Queue Head Register.
    pub IQH [
        /// Queue Head: index of the next descriptor the hardware fetches (128-bit units).
        QH OFFSET(4) NUMBITS(15) []
    ],

    /// 11.4.9.2 Invalidation Queue Tail Register.
    pub IQT [
        /// Queue Tail: index of the next descriptor software writes (128-bit units; with
        /// 256-bit descriptors bit 4 must be 0).
        QT OFFSET(4) NUMBITS(15) []
    ],

    /// 11.4.9.3 Invalidation Queue Address Register.
    pub IQA [
        /// Queue Size: 2^QS × 4 KiB.
        QS OFFSET(0) NUMBITS(3) [],
        /// Descriptor Width: 0 = 128-bit, 1 = 256-bit (needed in scalable mode).
        DW OFFSET(11) NUMBITS(1) [
            Bits128 = 0,
            Bits256 = 1
        ],
        /// Invalidation Queue base address, bits 63:12.
        IQA OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.9.9 Invalidation Queue Error Record Register.
    pub IQERCD [
        /// Invalidation Queue Error Info: why the descriptor at IQH was rejected.
        IQEI OFFSET(0) NUMBITS(4) [],
        /// Invalidation Time-out Error Source-ID.
        ITESID OFFSET(32) NUMBITS(16) [],
        /// Invalidation Completion Error Source-ID.
        ICESID OFFSET(48) NUMBITS(16) []
    ],

    /// 11.4.10 Interrupt Remapping Table Address Register.
    pub IRTA [
        /// Size: 2^(S+1) entries.
        S OFFSET(0) NUMBITS(4) [],
        /// Extended Interrupt Mode Enable (x2APIC format).
        EIME OFFSET(11) NUMBITS(1) [],
        /// Interrupt Remapping Table address, bits 63:12.
        IRTA OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.11.1/2 Page Request Queue Head and Tail Registers.
    pub PQ_INDEX [
        /// Index of a 256-bit page request descriptor.
        INDEX OFFSET(5) NUMBITS(14) []
    ],

    /// 11.4.11.3 Page Request Queue Address Register.
    pub PQA [
        /// Page Queue Size: 2^PQS × 4 KiB.
        PQS OFFSET(0) NUMBITS(3) [],
        /// Page Request Queue base address, bits 63:12.
        PQA OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.6.4 Invalidate Address Register (register-based page-selective IOTLB invalidation).
    pub IVA [
        /// Address Mask: invalidate 2^AM pages around ADDR (at most CAP.MAMV).
        AM OFFSET(0) NUMBITS(6) [],
        /// Invalidation Hint: 1 = only leaf entries changed, paging-structure caches may stay.
        IH OFFSET(6) NUMBITS(1) [],
        /// Page address, bits 63:12.
        ADDR OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.6.3 IOTLB Invalidate Register.
    pub IOTLB [
        /// Domain-ID for domain- and page-selective invalidation.
        DID OFFSET(32) NUMBITS(16) [],
        /// Drain Writes (when CAP.DWD).
        DW OFFSET(48) NUMBITS(1) [],
        /// Drain Reads (when CAP.DRD).
        DR OFFSET(49) NUMBITS(1) [],
        /// IOTLB Actual Invalidation Granularity (what the hardware did; 0 = request refused).
        IAIG OFFSET(57) NUMBITS(2) [],
        /// IOTLB Invalidation Request Granularity.
        IIRG OFFSET(60) NUMBITS(2) [
            Global = 1,
            Domain = 2,
            Page = 3
        ],
        /// Invalidate IOTLB: set to start, hardware clears it when done.
        IVT OFFSET(63) NUMBITS(1) []
    ],

    /// 11.4.7.6 Fault Recording Registers, low 64 bits.
    pub FRCD_LO [
        /// Fault Info: the page address of the faulting request, bits 63:12.
        FI OFFSET(12) NUMBITS(52) []
    ],

    /// 11.4.7.6 Fault Recording Registers, high 64 bits (register bits 127:64).
    pub FRCD_HI [
        /// Source Identifier: bus, device and function of the faulting requester.
        SID OFFSET(0) NUMBITS(16) [],
        /// Type bit 2 (with T1: write, read, page request, atomic).
        T2 OFFSET(28) NUMBITS(1) [],
        /// Privilege Mode Requested (supervisor) when PP is set.
        PRIV OFFSET(29) NUMBITS(1) [],
        /// Execute Permission Requested when PP is set.
        EXE OFFSET(30) NUMBITS(1) [],
        /// PASID Present: the faulting request carried a PASID.
        PP OFFSET(31) NUMBITS(1) [],
        /// Fault Reason code.
        FR OFFSET(32) NUMBITS(8) [],
        /// PASID Value when PP is set.
        PV OFFSET(40) NUMBITS(20) [],
        /// Address Type of the faulting request.
        AT OFFSET(60) NUMBITS(2) [],
        /// Type bit 1: 0 = write, 1 = read (for a non-page request).
        T1 OFFSET(62) NUMBITS(1) [],
        /// Fault (RW1C): this record holds a fault; clear it to free the register.
        F OFFSET(63) NUMBITS(1) []
    ]
];

register_structs! {
    /// The fixed registers at the unit's register base address (the offset table of VT-d
    /// 11.4). The IOTLB and fault recording registers follow at hardware-reported offsets and
    /// have their own structs.
    pub RegisterBlock {
        /// 11.4.1 Version Register.
        (0x000 => pub ver: ReadOnly<u32, VER::Register>),
        (0x004 => _reserved0),
        /// 11.4.2 Capability Register.
        (0x008 => pub cap: ReadOnly<u64, CAP::Register>),
        /// 11.4.3 Extended Capability Register.
        (0x010 => pub ecap: ReadOnly<u64, ECAP::Register>),
        /// 11.4.4.1 Global Command Register.
        (0x018 => pub gcmd: WriteOnly<u32, GCMD::Register>),
        /// 11.4.4.2 Global Status Register.
        (0x01c => pub gsts: ReadOnly<u32, GSTS::Register>),
        /// 11.4.5 Root Table Address Register.
        (0x020 => pub rtaddr: ReadWrite<u64, RTADDR::Register>),
        /// 11.4.6.1 Context Command Register.
        (0x028 => pub ccmd: ReadWrite<u64, CCMD::Register>),
        (0x030 => _reserved1),
        /// 11.4.7.1 Fault Status Register.
        (0x034 => pub fsts: ReadWrite<u32, FSTS::Register>),
        /// 11.4.7.2 Fault Event Control Register.
        (0x038 => pub fectl: ReadWrite<u32, EVENT_CONTROL::Register>),
        /// 11.4.7.3 Fault Event Data Register.
        (0x03c => pub fedata: ReadWrite<u32, EVENT_DATA::Register>),
        /// 11.4.7.4 Fault Event Address Register.
        (0x040 => pub feaddr: ReadWrite<u32, EVENT_ADDRESS::Register>),
        /// 11.4.7.5 Fault Event Upper Address Register.
        (0x044 => pub feuaddr: ReadWrite<u32>),
        (0x048 => _reserved2),
        /// Advanced Fault Log Register (rev. 2.x only; reserved since).
        (0x058 => pub aflog: ReadWrite<u64, AFLOG::Register>),
        (0x060 => _reserved3),
        /// 11.4.8.1 Protected Memory Enable Register.
        (0x064 => pub pmen: ReadWrite<u32, PMEN::Register>),
        /// 11.4.8.2 Protected Low-Memory Base Register.
        (0x068 => pub plmbase: ReadWrite<u32>),
        /// 11.4.8.3 Protected Low-Memory Limit Register.
        (0x06c => pub plmlimit: ReadWrite<u32>),
        /// 11.4.8.4 Protected High-Memory Base Register.
        (0x070 => pub phmbase: ReadWrite<u64>),
        /// 11.4.8.5 Protected High-Memory Limit Register.
        (0x078 => pub phmlimit: ReadWrite<u64>),
        /// 11.4.9.1 Invalidation Queue Head Register.
        (0x080 => pub iqh: ReadOnly<u64, IQH::Register>),
        /// 11.4.9.2 Invalidation Queue Tail Register.
        (0x088 => pub iqt: ReadWrite<u64, IQT::Register>),
        /// 11.4.9.3 Invalidation Queue Address Register.
        (0x090 => pub iqa: ReadWrite<u64, IQA::Register>),
        (0x098 => _reserved4),
        /// 11.4.9.4 Invalidation Completion Status Register.
        (0x09c => pub ics: ReadWrite<u32, ICS::Register>),
        /// 11.4.9.5 Invalidation Event Control Register.
        (0x0a0 => pub iectl: ReadWrite<u32, EVENT_CONTROL::Register>),
        /// 11.4.9.6 Invalidation Event Data Register.
        (0x0a4 => pub iedata: ReadWrite<u32, EVENT_DATA::Register>),
        /// 11.4.9.7 Invalidation Event Address Register.
        (0x0a8 => pub ieaddr: ReadWrite<u32, EVENT_ADDRESS::Register>),
        /// 11.4.9.8 Invalidation Event Upper Address Register.
        (0x0ac => pub ieuaddr: ReadWrite<u32>),
        /// 11.4.9.9 Invalidation Queue Error Record Register.
        (0x0b0 => pub iqercd: ReadOnly<u64, IQERCD::Register>),
        /// 11.4.10 Interrupt Remapping Table Address Register.
        (0x0b8 => pub irta: ReadWrite<u64, IRTA::Register>),
        /// 11.4.11.1 Page Request Queue Head Register.
        (0x0c0 => pub pqh: ReadWrite<u64, PQ_INDEX::Register>),
        /// 11.4.11.2 Page Request Queue Tail Register.
        (0x0c8 => pub pqt: ReadWrite<u64, PQ_INDEX::Register>),
        /// 11.4.11.3 Page Request Queue Address Register.
        (0x0d0 => pub pqa: ReadWrite<u64, PQA::Register>),
        (0x0d8 => _reserved5),
        /// 11.4.11.4 Page Request Status Register.
        (0x0dc => pub prs: ReadWrite<u32, PRS::Register>),
        /// 11.4.11.5 Page Request Event Control Register.
        (0x0e0 => pub pectl: ReadWrite<u32, EVENT_CONTROL::Register>),
        /// 11.4.11.6 Page Request Event Data Register.
        (0x0e4 => pub pedata: ReadWrite<u32, EVENT_DATA::Register>),
        /// 11.4.11.7 Page Request Event Address Register.
        (0x0e8 => pub peaddr: ReadWrite<u32, EVENT_ADDRESS::Register>),
        /// 11.4.11.8 Page Request Event Upper Address Register.
        (0x0ec => pub peuaddr: ReadWrite<u32>),
        // The block ends where QEMU puts the IOTLB registers (ECAP.IRO = 0xf); on other
        // hardware the range from here to IRO holds registers this driver does not use.
        (0x0f0 => @END),
    },

    /// 11.4.6.2 IOTLB Registers, at `ECAP.IRO × 16` from the register base.
    pub IotlbRegisters {
        /// 11.4.6.4 Invalidate Address Register.
        (0x00 => pub iva: WriteOnly<u64, IVA::Register>),
        /// 11.4.6.3 IOTLB Invalidate Register.
        (0x08 => pub iotlb: ReadWrite<u64, IOTLB::Register>),
        (0x10 => @END),
    },

    /// 11.4.7.6 one Fault Recording Register (128 bits), the first at `CAP.FRO × 16` from the
    /// register base, `CAP.NFR + 1` of them 16 bytes apart. Read `hi` first: F says whether the
    /// record is valid, and clearing F (write 1) releases the record to the hardware.
    pub FaultRecordingRegister {
        /// Bits 63:0: the faulting page address.
        (0x00 => pub lo: ReadOnly<u64, FRCD_LO::Register>),
        /// Bits 127:64: F, type, reason, PASID, source id.
        (0x08 => pub hi: ReadWrite<u64, FRCD_HI::Register>),
        (0x10 => @END),
    }
}

#[cfg(test)]
mod tests;
