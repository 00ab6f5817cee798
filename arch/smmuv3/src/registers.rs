//! The SMMUv3 programming interface (Arm IHI 0070, chapter 6), declared once: every register of
//! the non-secure page 0 and page 1, with the field layouts the driver reads and writes.
//!
//! Offsets and fields come from the section cited on each register; section numbers follow
//! IHI 0070 revision G/H (older revisions number some registers differently: the register name
//! is what to search for). Access rights are in the
//! types: the identification registers and the ACK/status registers are `ReadOnly`, so writing
//! them does not compile. Nothing else in the crate names a register offset or a bit position.

use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

/// The accessor traits of the register types, so users of [`SmmuRegisters`] need no direct
/// tock-registers dependency.
pub use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};

/// Size of the register frame the spec defines: page 0 and page 1, 64 KiB each.
pub const REGISTER_FRAME_SIZE: u64 = 0x2_0000;

register_bitfields! [u32,
    /// 6.3.1 SMMU_IDR0: stages, table formats, coherency and the stream table layouts.
    pub IDR0 [
        /// Stage 2 translation supported.
        S2P OFFSET(0) NUMBITS(1) [],
        /// Stage 1 translation supported.
        S1P OFFSET(1) NUMBITS(1) [],
        /// Translation table formats: 1 AArch32 (LPAE), 2 AArch64, 3 both.
        TTF OFFSET(2) NUMBITS(2) [],
        /// Coherent access to in-memory structures, queues and tables.
        COHACC OFFSET(4) NUMBITS(1) [],
        /// Broadcast TLB maintenance.
        BTM OFFSET(5) NUMBITS(1) [],
        /// Hardware translation table update: 1 access flag, 2 access flag and dirty state.
        HTTU OFFSET(6) NUMBITS(2) [],
        /// Dormant hint (SMMU_STATUSR.DORMANT) supported.
        DORMHINT OFFSET(8) NUMBITS(1) [],
        /// Hypervisor stage 1 contexts (EL2 StreamWorld) supported.
        HYP OFFSET(9) NUMBITS(1) [],
        /// PCIe ATS supported.
        ATS OFFSET(10) NUMBITS(1) [],
        /// Split-stage (stage 1 only) ATS supported.
        NS1ATS OFFSET(11) NUMBITS(1) [],
        /// 16-bit ASIDs (else 8-bit).
        ASID16 OFFSET(12) NUMBITS(1) [],
        /// Message-signalled interrupts supported.
        MSI OFFSET(13) NUMBITS(1) [],
        /// Send-event on CMD_SYNC completion and queue changes supported.
        SEV OFFSET(14) NUMBITS(1) [],
        /// Address translation operations (SMMU_GATOS_*) supported.
        ATOS OFFSET(15) NUMBITS(1) [],
        /// PCIe PRI (page request queue) supported.
        PRI OFFSET(16) NUMBITS(1) [],
        /// VMID wildcard matching supported.
        VMW OFFSET(17) NUMBITS(1) [],
        /// 16-bit VMIDs (else 8-bit).
        VMID16 OFFSET(18) NUMBITS(1) [],
        /// 2-level context descriptor tables supported.
        CD2L OFFSET(19) NUMBITS(1) [],
        /// Virtual ATOS (SMMU_VATOS_*) supported.
        VATOS OFFSET(20) NUMBITS(1) [],
        /// Translation table endianness: 0 mixed, 2 little, 3 big.
        TTENDIAN OFFSET(21) NUMBITS(2) [],
        /// ATS "record error" (unsuccessful ATS translations recorded) supported.
        ATSRECERR OFFSET(23) NUMBITS(1) [],
        /// Stall model: 0 stall and terminate, 1 terminate only, 2 stall forced.
        STALL_MODEL OFFSET(24) NUMBITS(2) [],
        /// Terminate model: 1 means a terminated transaction is always aborted (CD.A must be 1).
        TERM_MODEL OFFSET(26) NUMBITS(1) [],
        /// Stream table levels: 0 linear only, 1 linear and 2-level.
        ST_LEVEL OFFSET(27) NUMBITS(2) [],
        /// Realm Management Extension implemented.
        RME_IMPL OFFSET(30) NUMBITS(1) []
    ],
    /// 6.3.2 SMMU_IDR1: ID widths, queue sizes, and what firmware preset.
    pub IDR1 [
        /// Bits of StreamID supported.
        SIDSIZE OFFSET(0) NUMBITS(6) [],
        /// Bits of SubstreamID supported.
        SSIDSIZE OFFSET(6) NUMBITS(5) [],
        /// log2 of the largest PRI queue.
        PRIQS OFFSET(11) NUMBITS(5) [],
        /// log2 of the largest event queue.
        EVENTQS OFFSET(16) NUMBITS(5) [],
        /// log2 of the largest command queue.
        CMDQS OFFSET(21) NUMBITS(5) [],
        /// Incoming permission attributes may be overridden (STE.INSTCFG etc.).
        ATTR_PERMS_OVR OFFSET(26) NUMBITS(1) [],
        /// Incoming memory type attributes may be overridden (STE.MTCFG etc.).
        ATTR_TYPES_OVR OFFSET(27) NUMBITS(1) [],
        /// Table and queue base addresses are relative to the SMMU base (embedded use).
        REL OFFSET(28) NUMBITS(1) [],
        /// Queue base registers are fixed by the implementation.
        QUEUES_PRESET OFFSET(29) NUMBITS(1) [],
        /// Stream table base registers are fixed by the implementation.
        TABLES_PRESET OFFSET(30) NUMBITS(1) [],
        /// Enhanced command queue interfaces implemented.
        ECMDQ OFFSET(31) NUMBITS(1) []
    ],
    /// 6.3.3 SMMU_IDR2: virtual ATOS page base.
    pub IDR2 [
        /// Offset of the VATOS page, in 64 KiB units from the SMMU base.
        BA_VATOS OFFSET(0) NUMBITS(10) []
    ],
    /// 6.3.4 SMMU_IDR3: later architecture features.
    pub IDR3 [
        /// Hierarchical attribute disables (CD.HAD0/1) supported.
        HAD OFFSET(2) NUMBITS(1) [],
        /// Page-based hardware attributes supported.
        PBHA OFFSET(3) NUMBITS(1) [],
        /// EL0/EL1 execute-never distinction at stage 2 supported.
        XNX OFFSET(4) NUMBITS(1) [],
        /// SubstreamID given with PRI responses (PRG response PASID) required.
        PPS OFFSET(5) NUMBITS(1) [],
        /// Memory partitioning and monitoring supported.
        MPAM OFFSET(7) NUMBITS(1) [],
        /// Stage 2 forced write-back (STE.S2FWB) supported.
        FWB OFFSET(8) NUMBITS(1) [],
        /// Small translation tables (TxSZ up to 48) supported.
        STT OFFSET(9) NUMBITS(1) [],
        /// Range-based TLB invalidation supported.
        RIL OFFSET(10) NUMBITS(1) [],
        /// Break-before-make relaxation level: 0, 1 or 2.
        BBML OFFSET(11) NUMBITS(2) [],
        /// E0PD (CD.E0PD0/1) supported.
        E0PD OFFSET(13) NUMBITS(1) [],
        /// STE.S2PTW / non-cacheable table walks controllable.
        PTWNNC OFFSET(14) NUMBITS(1) [],
        /// Device permission table supported.
        DPT OFFSET(15) NUMBITS(1) []
    ],
    /// 6.3.6 SMMU_IDR5: output address size, granules, stalls.
    pub IDR5 [
        /// Output address size: 0 32, 1 36, 2 40, 3 42, 4 44, 5 48, 6 52 bits.
        OAS OFFSET(0) NUMBITS(3) [],
        /// 4 KiB translation granule supported.
        GRAN4K OFFSET(4) NUMBITS(1) [],
        /// 16 KiB translation granule supported.
        GRAN16K OFFSET(5) NUMBITS(1) [],
        /// 64 KiB translation granule supported.
        GRAN64K OFFSET(6) NUMBITS(1) [],
        /// Virtual address extension: 0 48-bit VAs, 1 52-bit VAs with 64 KiB granule.
        VAX OFFSET(10) NUMBITS(2) [],
        /// Maximum number of outstanding stalled transactions.
        STALL_MAX OFFSET(16) NUMBITS(16) []
    ],
    /// 6.3.7 SMMU_IIDR: who made this SMMU.
    pub IIDR [
        /// JEP106 code of the implementer.
        IMPLEMENTER OFFSET(0) NUMBITS(12) [],
        /// Minor revision.
        REVISION OFFSET(12) NUMBITS(4) [],
        /// Major revision.
        VARIANT OFFSET(16) NUMBITS(4) [],
        /// Implementation-defined product.
        PRODUCTID OFFSET(20) NUMBITS(12) []
    ],
    /// 6.3.8 SMMU_AIDR: architecture revision.
    pub AIDR [
        /// Minor architecture revision (3.x).
        ARCHMINORREV OFFSET(0) NUMBITS(4) [],
        /// Major architecture revision (0 means SMMUv3).
        ARCHMAJORREV OFFSET(4) NUMBITS(4) []
    ],
    /// 6.3.9 SMMU_CR0 (and 6.3.10 SMMU_CR0ACK, same layout): global enables.
    pub CR0 [
        /// Translation enabled (else GBPA governs all traffic).
        SMMUEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue enabled.
        PRIQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue enabled.
        EVENTQEN OFFSET(2) NUMBITS(1) [],
        /// Command queue enabled.
        CMDQEN OFFSET(3) NUMBITS(1) [],
        /// ATS translated transactions are checked against the stream table.
        ATSCHK OFFSET(4) NUMBITS(1) [],
        /// VMID wildcard for TLB invalidation.
        VMW OFFSET(6) NUMBITS(3) []
    ],
    /// 6.3.11 SMMU_CR1: attributes of the SMMU's own table and queue accesses.
    pub CR1 [
        /// Queue accesses: inner cacheability.
        QUEUE_IC OFFSET(0) NUMBITS(2) [
            NonCacheable = 0,
            WriteBack = 1,
            WriteThrough = 2
        ],
        /// Queue accesses: outer cacheability.
        QUEUE_OC OFFSET(2) NUMBITS(2) [
            NonCacheable = 0,
            WriteBack = 1,
            WriteThrough = 2
        ],
        /// Queue accesses: shareability.
        QUEUE_SH OFFSET(4) NUMBITS(2) [
            NonShareable = 0,
            OuterShareable = 2,
            InnerShareable = 3
        ],
        /// Table walks of stream and CD tables: inner cacheability.
        TABLE_IC OFFSET(6) NUMBITS(2) [
            NonCacheable = 0,
            WriteBack = 1,
            WriteThrough = 2
        ],
        /// Table walks: outer cacheability.
        TABLE_OC OFFSET(8) NUMBITS(2) [
            NonCacheable = 0,
            WriteBack = 1,
            WriteThrough = 2
        ],
        /// Table walks: shareability.
        TABLE_SH OFFSET(10) NUMBITS(2) [
            NonShareable = 0,
            OuterShareable = 2,
            InnerShareable = 3
        ]
    ],
    /// 6.3.12 SMMU_CR2: global behaviour controls.
    pub CR2 [
        /// EL2-E2H translation regime for hypervisor streams.
        E2H OFFSET(0) NUMBITS(1) [],
        /// Record C_BAD_STREAMID for invalid incoming stream ids.
        RECINVSID OFFSET(1) NUMBITS(1) [],
        /// Private TLB maintenance: ignore broadcast TLBI.
        PTM OFFSET(2) NUMBITS(1) []
    ],
    /// 6.3.13 SMMU_STATUSR.
    pub STATUSR [
        /// The SMMU may be powered down (dormant hint).
        DORMANT OFFSET(0) NUMBITS(1) []
    ],
    /// 6.3.14 SMMU_GBPA: what happens to traffic while SMMU_CR0.SMMUEN is 0.
    pub GBPA [
        /// Memory attribute override value.
        MEMATTR OFFSET(0) NUMBITS(4) [],
        /// Memory type: 0 use incoming, 1 override with MEMATTR.
        MTCFG OFFSET(4) NUMBITS(1) [],
        /// Allocation hints override.
        ALLOCCFG OFFSET(8) NUMBITS(4) [],
        /// Shareability: 0 non, 1 use incoming, 2 outer, 3 inner.
        SHCFG OFFSET(12) NUMBITS(2) [],
        /// Privilege: 0 use incoming, 2 unprivileged, 3 privileged.
        PRIVCFG OFFSET(16) NUMBITS(2) [],
        /// Instruction/data: 0 use incoming, 2 data, 3 instruction.
        INSTCFG OFFSET(18) NUMBITS(2) [],
        /// Abort all incoming transactions (else bypass).
        ABORT OFFSET(20) NUMBITS(1) [],
        /// Write 1 with new values; reads 1 until the update has taken effect.
        UPDATE OFFSET(31) NUMBITS(1) []
    ],
    /// 6.3.16 SMMU_IRQ_CTRL (and 6.3.18 SMMU_IRQ_CTRLACK, same layout): wired/MSI enables.
    pub IRQ_CTRL [
        /// Global error interrupt enabled.
        GERROR_IRQEN OFFSET(0) NUMBITS(1) [],
        /// PRI queue interrupt enabled.
        PRIQ_IRQEN OFFSET(1) NUMBITS(1) [],
        /// Event queue interrupt enabled.
        EVENTQ_IRQEN OFFSET(2) NUMBITS(1) []
    ],
    /// 6.3.19 SMMU_GERROR (and 6.3.20 SMMU_GERRORN, same layout): an error is active while
    /// its bit differs between the two; software acknowledges by toggling GERRORN.
    pub GERROR [
        /// Command queue error: SMMU_CMDQ_CONS.ERR says which.
        CMDQ_ERR OFFSET(0) NUMBITS(1) [],
        /// Event queue write aborted.
        EVENTQ_ABT_ERR OFFSET(2) NUMBITS(1) [],
        /// PRI queue write aborted.
        PRIQ_ABT_ERR OFFSET(3) NUMBITS(1) [],
        /// CMD_SYNC MSI write aborted.
        MSI_CMDQ_ABT_ERR OFFSET(4) NUMBITS(1) [],
        /// Event queue MSI write aborted.
        MSI_EVENTQ_ABT_ERR OFFSET(5) NUMBITS(1) [],
        /// PRI queue MSI write aborted.
        MSI_PRIQ_ABT_ERR OFFSET(6) NUMBITS(1) [],
        /// GERROR MSI write aborted.
        MSI_GERROR_ABT_ERR OFFSET(7) NUMBITS(1) [],
        /// The SMMU entered service failure mode.
        SFM_ERR OFFSET(8) NUMBITS(1) []
    ],
    /// 6.3.22 SMMU_GERROR_IRQ_CFG1 / 6.3.31 EVENTQ_IRQ_CFG1 / 6.3.35 PRIQ_IRQ_CFG1: MSI payload.
    pub IRQ_CFG1 [
        /// Data written by the MSI.
        DATA OFFSET(0) NUMBITS(32) []
    ],
    /// 6.3.23 SMMU_GERROR_IRQ_CFG2 / 6.3.32 EVENTQ_IRQ_CFG2 / 6.3.36 PRIQ_IRQ_CFG2: MSI write attributes.
    pub IRQ_CFG2 [
        /// Memory attributes of the MSI write.
        MEMATTR OFFSET(0) NUMBITS(4) [],
        /// Shareability of the MSI write.
        SH OFFSET(4) NUMBITS(2) []
    ],
    /// 6.3.25 SMMU_STRTAB_BASE_CFG: stream table format and size.
    pub STRTAB_BASE_CFG [
        /// log2 of the number of STEs (linear) or the StreamID width covered (2-level).
        LOG2SIZE OFFSET(0) NUMBITS(6) [],
        /// 2-level: StreamID bits resolved by the level-2 tables (6, 8 or 10).
        SPLIT OFFSET(6) NUMBITS(5) [],
        /// 0 linear, 1 2-level.
        FMT OFFSET(16) NUMBITS(2) [
            Linear = 0,
            TwoLevel = 1
        ]
    ],
    /// 6.3.27 SMMU_CMDQ_PROD, 6.3.95 SMMU_EVENTQ_PROD, 6.3.97 SMMU_PRIQ_PROD: producer index.
    pub QUEUE_PROD [
        /// Index and, just above the queue's log2 size, the wrap bit.
        WR OFFSET(0) NUMBITS(20) [],
        /// Event/PRI queues: overflow flag, toggled by the SMMU when it drops entries.
        OVFLG OFFSET(31) NUMBITS(1) []
    ],
    /// 6.3.28 SMMU_CMDQ_CONS, 6.3.96 SMMU_EVENTQ_CONS, 6.3.98 SMMU_PRIQ_CONS: consumer index.
    pub QUEUE_CONS [
        /// Index and, just above the queue's log2 size, the wrap bit.
        RD OFFSET(0) NUMBITS(20) [],
        /// Command queue: error code of the command at RD when GERROR.CMDQ_ERR is raised.
        ERR OFFSET(24) NUMBITS(7) [
            None = 0,
            Illegal = 1,
            Abort = 2,
            AtcInvalidationSync = 3
        ],
        /// Event/PRI queues: software's acknowledgement of OVFLG.
        OVACKFLG OFFSET(31) NUMBITS(1) []
    ],
    /// 6.3.15 SMMU_AGBPA: implementation-defined attribute overrides for GBPA bypass.
    pub AGBPA [
        /// Implementation defined.
        VALUE OFFSET(0) NUMBITS(32) []
    ],
    /// 6.3.37 SMMU_GATOS_CTRL: global address translation operation control.
    pub GATOS_CTRL [
        /// Write 1 to start; reads 1 until the operation completes.
        RUN OFFSET(0) NUMBITS(1) []
    ]
];

register_bitfields! [u64,
    /// 6.3.21 SMMU_GERROR_IRQ_CFG0 / 6.3.30 EVENTQ_IRQ_CFG0 / 6.3.34 PRIQ_IRQ_CFG0: MSI target address.
    pub IRQ_CFG0 [
        /// Physical address of the MSI write, bits [51:2].
        ADDR OFFSET(2) NUMBITS(50) []
    ],
    /// 6.3.24 SMMU_STRTAB_BASE: stream table base.
    pub STRTAB_BASE [
        /// Physical address bits [51:6] of the stream table.
        ADDR OFFSET(6) NUMBITS(46) [],
        /// Read-allocate hint for table walks.
        RA OFFSET(62) NUMBITS(1) []
    ],
    /// 6.3.26 SMMU_CMDQ_BASE, 6.3.29 SMMU_EVENTQ_BASE, 6.3.33 SMMU_PRIQ_BASE: queue base.
    pub QUEUE_BASE [
        /// log2 of the number of entries.
        LOG2SIZE OFFSET(0) NUMBITS(5) [],
        /// Physical address bits [51:5] of the queue.
        ADDR OFFSET(5) NUMBITS(47) [],
        /// Read-allocate (command queue) / write-allocate (event, PRI queues) hint.
        ALLOCATE OFFSET(62) NUMBITS(1) []
    ],
    /// 6.3.38 SMMU_GATOS_SID: stream of a global ATOS request.
    pub GATOS_SID [
        /// StreamID.
        STREAMID OFFSET(0) NUMBITS(32) [],
        /// SubstreamID.
        SUBSTREAMID OFFSET(32) NUMBITS(20) [],
        /// SubstreamID valid.
        SSID_VALID OFFSET(52) NUMBITS(1) []
    ]
];

register_structs! {
    /// The SMMUv3 non-secure register frame (6.2.1 page 0, 6.2.2 page 1): page 0 at the SMMU base, page 1
    /// (event and PRI queue indexes) at base + 64 KiB. Used through a pointer to the mapped
    /// MMIO frame, never by value.
    pub SmmuRegisters {
        /// 6.3.1 SMMU_IDR0.
        (0x0000 => pub idr0: ReadOnly<u32, IDR0::Register>),
        /// 6.3.2 SMMU_IDR1.
        (0x0004 => pub idr1: ReadOnly<u32, IDR1::Register>),
        /// 6.3.3 SMMU_IDR2.
        (0x0008 => pub idr2: ReadOnly<u32, IDR2::Register>),
        /// 6.3.4 SMMU_IDR3.
        (0x000c => pub idr3: ReadOnly<u32, IDR3::Register>),
        /// 6.3.5 SMMU_IDR4 (implementation defined).
        (0x0010 => pub idr4: ReadOnly<u32>),
        /// 6.3.6 SMMU_IDR5.
        (0x0014 => pub idr5: ReadOnly<u32, IDR5::Register>),
        /// 6.3.7 SMMU_IIDR.
        (0x0018 => pub iidr: ReadOnly<u32, IIDR::Register>),
        /// 6.3.8 SMMU_AIDR.
        (0x001c => pub aidr: ReadOnly<u32, AIDR::Register>),
        /// 6.3.9 SMMU_CR0.
        (0x0020 => pub cr0: ReadWrite<u32, CR0::Register>),
        /// 6.3.10 SMMU_CR0ACK.
        (0x0024 => pub cr0ack: ReadOnly<u32, CR0::Register>),
        /// 6.3.11 SMMU_CR1.
        (0x0028 => pub cr1: ReadWrite<u32, CR1::Register>),
        /// 6.3.12 SMMU_CR2.
        (0x002c => pub cr2: ReadWrite<u32, CR2::Register>),
        (0x0030 => _reserved0),
        /// 6.3.13 SMMU_STATUSR.
        (0x0040 => pub statusr: ReadOnly<u32, STATUSR::Register>),
        /// 6.3.14 SMMU_GBPA.
        (0x0044 => pub gbpa: ReadWrite<u32, GBPA::Register>),
        /// 6.3.15 SMMU_AGBPA.
        (0x0048 => pub agbpa: ReadWrite<u32, AGBPA::Register>),
        (0x004c => _reserved1),
        /// 6.3.16 SMMU_IRQ_CTRL.
        (0x0050 => pub irq_ctrl: ReadWrite<u32, IRQ_CTRL::Register>),
        /// 6.3.18 SMMU_IRQ_CTRLACK.
        (0x0054 => pub irq_ctrlack: ReadOnly<u32, IRQ_CTRL::Register>),
        (0x0058 => _reserved2),
        /// 6.3.19 SMMU_GERROR.
        (0x0060 => pub gerror: ReadOnly<u32, GERROR::Register>),
        /// 6.3.20 SMMU_GERRORN.
        (0x0064 => pub gerrorn: ReadWrite<u32, GERROR::Register>),
        /// 6.3.21 SMMU_GERROR_IRQ_CFG0.
        (0x0068 => pub gerror_irq_cfg0: ReadWrite<u64, IRQ_CFG0::Register>),
        /// 6.3.22 SMMU_GERROR_IRQ_CFG1.
        (0x0070 => pub gerror_irq_cfg1: ReadWrite<u32, IRQ_CFG1::Register>),
        /// 6.3.23 SMMU_GERROR_IRQ_CFG2.
        (0x0074 => pub gerror_irq_cfg2: ReadWrite<u32, IRQ_CFG2::Register>),
        (0x0078 => _reserved3),
        /// 6.3.24 SMMU_STRTAB_BASE.
        (0x0080 => pub strtab_base: ReadWrite<u64, STRTAB_BASE::Register>),
        /// 6.3.25 SMMU_STRTAB_BASE_CFG.
        (0x0088 => pub strtab_base_cfg: ReadWrite<u32, STRTAB_BASE_CFG::Register>),
        (0x008c => _reserved4),
        /// 6.3.26 SMMU_CMDQ_BASE.
        (0x0090 => pub cmdq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        /// 6.3.27 SMMU_CMDQ_PROD.
        (0x0098 => pub cmdq_prod: ReadWrite<u32, QUEUE_PROD::Register>),
        /// 6.3.28 SMMU_CMDQ_CONS.
        (0x009c => pub cmdq_cons: ReadWrite<u32, QUEUE_CONS::Register>),
        /// 6.3.29 SMMU_EVENTQ_BASE.
        (0x00a0 => pub eventq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x00a8 => _reserved5),
        /// 6.3.30 SMMU_EVENTQ_IRQ_CFG0.
        (0x00b0 => pub eventq_irq_cfg0: ReadWrite<u64, IRQ_CFG0::Register>),
        /// 6.3.31 SMMU_EVENTQ_IRQ_CFG1.
        (0x00b8 => pub eventq_irq_cfg1: ReadWrite<u32, IRQ_CFG1::Register>),
        /// 6.3.32 SMMU_EVENTQ_IRQ_CFG2.
        (0x00bc => pub eventq_irq_cfg2: ReadWrite<u32, IRQ_CFG2::Register>),
        /// 6.3.33 SMMU_PRIQ_BASE.
        (0x00c0 => pub priq_base: ReadWrite<u64, QUEUE_BASE::Register>),
        (0x00c8 => _reserved6),
        /// 6.3.34 SMMU_PRIQ_IRQ_CFG0.
        (0x00d0 => pub priq_irq_cfg0: ReadWrite<u64, IRQ_CFG0::Register>),
        /// 6.3.35 SMMU_PRIQ_IRQ_CFG1.
        (0x00d8 => pub priq_irq_cfg1: ReadWrite<u32, IRQ_CFG1::Register>),
        /// 6.3.36 SMMU_PRIQ_IRQ_CFG2.
        (0x00dc => pub priq_irq_cfg2: ReadWrite<u32, IRQ_CFG2::Register>),
        /// 6.3.37 SMMU_GATOS_CTRL.
        (0x00e0 => pub gatos_ctrl: ReadWrite<u32, GATOS_CTRL::Register>),
        (0x00e4 => _reserved7),
        /// 6.3.38 SMMU_GATOS_SID.
        (0x00e8 => pub gatos_sid: ReadWrite<u64, GATOS_SID::Register>),
        /// 6.3.39 SMMU_GATOS_ADDR.
        (0x00f0 => pub gatos_addr: ReadWrite<u64>),
        /// 6.3.40 SMMU_GATOS_PAR.
        (0x00f8 => pub gatos_par: ReadOnly<u64>),
        (0x0100 => _reserved_page0),
        /// 6.3.95 SMMU_EVENTQ_PROD (page 1).
        (0x100a8 => pub eventq_prod: ReadWrite<u32, QUEUE_PROD::Register>),
        /// 6.3.96 SMMU_EVENTQ_CONS (page 1).
        (0x100ac => pub eventq_cons: ReadWrite<u32, QUEUE_CONS::Register>),
        (0x100b0 => _reserved8),
        /// 6.3.97 SMMU_PRIQ_PROD (page 1).
        (0x100c8 => pub priq_prod: ReadWrite<u32, QUEUE_PROD::Register>),
        /// 6.3.98 SMMU_PRIQ_CONS (page 1).
        (0x100cc => pub priq_cons: ReadWrite<u32, QUEUE_CONS::Register>),
        (0x100d0 => _reserved_page1),
        (0x20000 => @END),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// The offsets the rest of the driver relies on, against the spec's page 0/1 register maps
    /// (register_structs! checks the declared layout; this checks the declaration).
    #[test]
    fn offsets_match_the_spec_register_map() {
        assert_eq!(offset_of!(SmmuRegisters, idr0), 0x00);
        assert_eq!(offset_of!(SmmuRegisters, idr5), 0x14);
        assert_eq!(offset_of!(SmmuRegisters, aidr), 0x1c);
        assert_eq!(offset_of!(SmmuRegisters, cr0ack), 0x24);
        assert_eq!(offset_of!(SmmuRegisters, gbpa), 0x44);
        assert_eq!(offset_of!(SmmuRegisters, gerrorn), 0x64);
        assert_eq!(offset_of!(SmmuRegisters, strtab_base), 0x80);
        assert_eq!(offset_of!(SmmuRegisters, strtab_base_cfg), 0x88);
        assert_eq!(offset_of!(SmmuRegisters, cmdq_base), 0x90);
        assert_eq!(offset_of!(SmmuRegisters, cmdq_prod), 0x98);
        assert_eq!(offset_of!(SmmuRegisters, cmdq_cons), 0x9c);
        assert_eq!(offset_of!(SmmuRegisters, eventq_base), 0xa0);
        assert_eq!(offset_of!(SmmuRegisters, eventq_irq_cfg0), 0xb0);
        assert_eq!(offset_of!(SmmuRegisters, priq_base), 0xc0);
        assert_eq!(offset_of!(SmmuRegisters, eventq_prod), 0x1_00a8);
        assert_eq!(offset_of!(SmmuRegisters, eventq_cons), 0x1_00ac);
        assert_eq!(offset_of!(SmmuRegisters, priq_prod), 0x1_00c8);
        assert_eq!(offset_of!(SmmuRegisters, priq_cons), 0x1_00cc);
        assert_eq!(size_of::<SmmuRegisters>() as u64, REGISTER_FRAME_SIZE);
    }
}
