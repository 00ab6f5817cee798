//! Host tests of the descriptor encodings against the spec's layouts, decode as their inverse and its refusals, and the flush planner.

extern crate std;

use super::*;

fn iova(a: u64) -> Iova {
    Iova::new(a)
}

fn enc(d: Descriptor) -> [u64; 2] {
    let w = d.encode().unwrap();
    assert_eq!(w[2..], [0, 0], "{} uses only 128 bits", d.kind());
    [w[0], w[1]]
}

fn sid(raw: u16) -> SourceId {
    SourceId::from_raw(raw)
}

#[test]
fn context_cache_descriptors() {
    // Type 1 in bits 3:0, G in 5:4.
    // Global: 1 | 1 << 4 = 0x11.
    assert_eq!(
        enc(Descriptor::ContextCache(ContextCacheScope::Global)),
        [0x11, 0]
    );
    // Domain 0x1234: 1 | 2 << 4 | 0x1234 << 16 = 0x1234_0021.
    assert_eq!(
        enc(Descriptor::ContextCache(ContextCacheScope::Domain(
            Did::new(0x1234)
        ))),
        [0x1234_0021, 0]
    );
    // Device: DID 5 (0x5_0000), SID 00:03.0 = 0x18 in 47:32, FM 3 in 49:48, G 3 (0x30):
    // 0x0003_0018_0005_0031.
    let dev = ContextCacheScope::Device {
        domain: Did::new(5),
        source: sid(0x18),
        mask: FunctionMask::AllFunctions,
    };
    assert_eq!(
        enc(Descriptor::ContextCache(dev)),
        [0x0003_0018_0005_0031, 0]
    );
}

#[test]
fn iotlb_descriptors() {
    let drain = Drain {
        reads: true,
        writes: true,
    };
    // Global with DW (bit 6) and DR (bit 7): 2 | 0x10 | 0x40 | 0x80 = 0xd2.
    assert_eq!(
        enc(Descriptor::Iotlb {
            scope: IotlbScope::Global,
            drain
        }),
        [0xd2, 0]
    );
    // Domain 7, no drain: 2 | 0x20 | 7 << 16 = 0x7_0022.
    assert_eq!(
        enc(Descriptor::Iotlb {
            scope: IotlbScope::Domain(Did::new(7)),
            drain: Drain::default(),
        }),
        [0x7_0022, 0]
    );
    // Page-selective, DID 7, 16 pages (AM 4) at 0x1_2340_0000 (64 KiB aligned), IH:
    // w0 = 2 | 0x30 | 0x7_0000 = 0x7_0032; w1 = 0x1_2340_0000 | IH 0x40 | AM 4.
    let block = PageBlock::new(iova(0x1_2340_0000), 4).unwrap();
    let d = Descriptor::Iotlb {
        scope: IotlbScope::Pages {
            domain: Did::new(7),
            block,
            leaf_only: true,
        },
        drain: Drain::default(),
    };
    assert_eq!(enc(d), [0x7_0032, 0x1_2340_0044]);
    assert_eq!(
        PageBlock::new(iova(0x1_2340_8000), 4),
        Err(DescriptorError::MisalignedBlock {
            addr: iova(0x1_2340_8000),
            am: 4
        })
    );
    assert_eq!(
        block.check_mamv(3),
        Err(DescriptorError::MaskTooLarge { am: 4, max: 3 })
    );
    // The whole space: AM 52 at 0 only, 53 refused.
    assert_eq!(PageBlock::new(iova(0), 52).map(|b| b.bytes()), Ok(u64::MAX));
    assert!(PageBlock::new(iova(0x1000), 52).is_err());
    assert_eq!(
        PageBlock::new(iova(0), 53),
        Err(DescriptorError::MaskTooLarge { am: 53, max: 52 })
    );
    assert_eq!(block.bytes(), 0x1_0000);
    // CAP.DRD (55) and DWD (54).
    assert_eq!(
        Drain::for_unit(Capability(3 << 54)),
        Drain {
            reads: true,
            writes: true
        }
    );
}

#[test]
fn device_tlb_descriptors() {
    let target = AtsTarget::new(sid(0x0100), None, 0).unwrap();
    // One page: w0 = 3 | SID 0x0100 << 32; w1 = 0x5000, S = 0.
    let d = Descriptor::DeviceTlb {
        target,
        range: DeviceTlbRange::Page(iova(0x5123)),
    };
    assert_eq!(enc(d), [0x0000_0100_0000_0003, 0x5000]);
    // 16 KiB (order 2) at 0x8000: bit 12 set, bit 13 clear, S = 1 → 0x9001.
    let d = Descriptor::DeviceTlb {
        target,
        range: DeviceTlbRange::Block {
            addr: iova(0x8000),
            order: 2,
        },
    };
    assert_eq!(enc(d)[1], 0x9001);
    // 8 KiB (order 1) at 0x6000: bit 12 clear, S = 1 → 0x6001.
    let d = Descriptor::DeviceTlb {
        target,
        range: DeviceTlbRange::Block {
            addr: iova(0x6000),
            order: 1,
        },
    };
    assert_eq!(enc(d)[1], 0x6001);
    // Everything: bits 62:12 set, bit 63 clear, S = 1.
    let d = Descriptor::DeviceTlb {
        target,
        range: DeviceTlbRange::All,
    };
    assert_eq!(enc(d)[1], 0x7fff_ffff_ffff_f001);
    let whole = DeviceTlbRange::Block {
        addr: iova(0),
        order: 52,
    };
    let d = Descriptor::DeviceTlb {
        target,
        range: whole,
    };
    assert_eq!(enc(d)[1], 0x7fff_ffff_ffff_f001);
    let bad = Descriptor::DeviceTlb {
        target,
        range: DeviceTlbRange::Block {
            addr: iova(0x6000),
            order: 2,
        },
    };
    assert_eq!(
        bad.encode(),
        Err(DescriptorError::MisalignedBlock {
            addr: iova(0x6000),
            am: 2
        })
    );

    // PFSID 01:01.0 = 0x0108: low nibble 0x8 → bits 15:12 (0x8000), 0x010 → bits 63:52;
    // MIP 4 → bits 20:16 (0x4_0000): w0 = 0x0100_0100_0004_8003.
    let vf = AtsTarget::new(sid(0x0100), Some(sid(0x0108)), 4).unwrap();
    let d = Descriptor::DeviceTlb {
        target: vf,
        range: DeviceTlbRange::Page(iova(0)),
    };
    assert_eq!(enc(d)[0], 0x0100_0100_0004_8003);
    assert_eq!(
        AtsTarget::new(sid(1), None, 32),
        Err(DescriptorError::QueueDepthOutOfRange { depth: 32 })
    );
}

#[test]
fn pasid_granular_descriptors() {
    let dom = Did::new(2);
    let p = Pasid::new(0x55).unwrap();
    // PASID-cache, type 7: domain-selective G 0: 7 | 2 << 16 = 0x2_0007.
    assert_eq!(
        enc(Descriptor::PasidCache(PasidCacheScope::Domain(dom))),
        [0x2_0007, 0]
    );
    // PASID-selective G 1: 7 | 0x10 | 0x2_0000 | 0x55 << 32.
    assert_eq!(
        enc(Descriptor::PasidCache(PasidCacheScope::Pasid {
            domain: dom,
            pasid: p
        })),
        [0x0000_0055_0002_0017, 0]
    );
    // Global G 3: 7 | 0x30 = 0x37.
    assert_eq!(
        enc(Descriptor::PasidCache(PasidCacheScope::Global)),
        [0x37, 0]
    );

    // PASID-based IOTLB, type 6, DID 3, PASID 0x10: G 2 → 6 | 0x20 | 0x3_0000 | 0x10 << 32.
    let d3 = Did::new(3);
    let p10 = Pasid::new(0x10).unwrap();
    assert_eq!(
        enc(Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
            domain: d3,
            pasid: p10
        })),
        [0x0000_0010_0003_0026, 0]
    );
    // Page-selective G 3, 2 MiB (AM 9) at 0x40_0000, IH: w1 = 0x40_0000 | 0x40 | 9.
    let block = PageBlock::new(iova(0x40_0000), 9).unwrap();
    let d = Descriptor::PasidIotlb(PasidIotlbScope::Pages {
        domain: d3,
        pasid: p10,
        block,
        leaf_only: true,
    });
    assert!(d.needs_256_bit());
    assert_eq!(enc(d), [0x0000_0010_0003_0036, 0x40_0049]);

    // PASID-based device-TLB, type 8: SID 0x0100 in 31:16, PASID 0x20 in 51:32, one page
    // at 0x3000: w0 = 0x0000_0020_0100_0008, w1 = 0x3000 (G 0, S 0).
    let target = AtsTarget::new(sid(0x0100), None, 0).unwrap();
    let d = Descriptor::PasidDeviceTlb {
        target,
        pasid: Some(Pasid::new(0x20).unwrap()),
        range: DeviceTlbRange::Page(iova(0x3000)),
    };
    assert_eq!(enc(d), [0x0000_0020_0100_0008, 0x3000]);
    // All PASIDs (G bit 0), whole space: S is bit 11 here → 0x7fff_ffff_ffff_f801.
    let d = Descriptor::PasidDeviceTlb {
        target,
        pasid: None,
        range: DeviceTlbRange::All,
    };
    assert_eq!(enc(d), [0x0100_0008, 0x7fff_ffff_ffff_f801]);
    // MIP 3 lands in bits 8:4 (0x30).
    let t3 = AtsTarget::new(sid(0x0100), None, 3).unwrap();
    let d = Descriptor::PasidDeviceTlb {
        target: t3,
        pasid: None,
        range: DeviceTlbRange::All,
    };
    assert_eq!(enc(d)[0], 0x0100_0038);
}

#[test]
fn wait_descriptors() {
    // Status write (SW bit 5) with fence (FN bit 6), data 0x1234_5678 in 63:32, address in w1:
    // w0 = 5 | 0x20 | 0x40 | 0x1234_5678 << 32.
    let w = Wait::status_write(PhysAddr::new(0x1000_0040), 0x1234_5678)
        .unwrap()
        .with_fence();
    assert_eq!(
        enc(Descriptor::Wait(w)),
        [0x1234_5678_0000_0065, 0x1000_0040]
    );
    // Interrupt (IF bit 4): 5 | 0x10 = 0x15.
    assert_eq!(enc(Descriptor::Wait(Wait::interrupt())), [0x15, 0]);
    assert_eq!(
        Wait::status_write(PhysAddr::new(0x1002), 1),
        Err(DescriptorError::MisalignedStatus {
            addr: PhysAddr::new(0x1002)
        })
    );
    assert!(!Descriptor::Wait(w).needs_256_bit());
    assert_eq!(Descriptor::Raw([1, 2, 3, 4]).encode(), Ok([1, 2, 3, 4]));
}

#[test]
fn decode_inverts_encode_for_every_type() {
    let target = AtsTarget::new(sid(0x0100), None, 3).unwrap();
    let vf = AtsTarget::new(sid(0x0100), Some(sid(0x0108)), 4).unwrap();
    let p = Pasid::new(0x55).unwrap();
    let dom = Did::new(0x1234);
    let block = PageBlock::new(iova(0x40_0000), 9).unwrap();
    let all = [
        Descriptor::ContextCache(ContextCacheScope::Global),
        Descriptor::ContextCache(ContextCacheScope::Domain(dom)),
        Descriptor::ContextCache(ContextCacheScope::Device {
            domain: dom,
            source: sid(0x18),
            mask: FunctionMask::Bits2To1,
        }),
        Descriptor::Iotlb {
            scope: IotlbScope::Global,
            drain: Drain {
                reads: true,
                writes: false,
            },
        },
        Descriptor::Iotlb {
            scope: IotlbScope::Domain(dom),
            drain: Drain::default(),
        },
        Descriptor::Iotlb {
            scope: IotlbScope::Pages {
                domain: dom,
                block,
                leaf_only: true,
            },
            drain: Drain {
                reads: true,
                writes: true,
            },
        },
        Descriptor::DeviceTlb {
            target: vf,
            range: DeviceTlbRange::Page(iova(0x5000)),
        },
        Descriptor::DeviceTlb {
            target,
            range: DeviceTlbRange::Block {
                addr: iova(0x8000),
                order: 2,
            },
        },
        Descriptor::DeviceTlb {
            target,
            range: DeviceTlbRange::Block {
                addr: iova(0x6000),
                order: 1,
            },
        },
        Descriptor::DeviceTlb {
            target,
            range: DeviceTlbRange::All,
        },
        Descriptor::PasidIotlb(PasidIotlbScope::Pasid {
            domain: dom,
            pasid: p,
        }),
        Descriptor::PasidIotlb(PasidIotlbScope::Pages {
            domain: dom,
            pasid: p,
            block,
            leaf_only: false,
        }),
        Descriptor::PasidCache(PasidCacheScope::Domain(dom)),
        Descriptor::PasidCache(PasidCacheScope::Pasid {
            domain: dom,
            pasid: p,
        }),
        Descriptor::PasidCache(PasidCacheScope::Global),
        Descriptor::PasidDeviceTlb {
            target: vf,
            pasid: Some(p),
            range: DeviceTlbRange::Page(iova(0x3000)),
        },
        Descriptor::PasidDeviceTlb {
            target,
            pasid: None,
            range: DeviceTlbRange::All,
        },
        Descriptor::Wait(
            Wait::status_write(PhysAddr::new(0x1000_0040), 0x1234_5678)
                .unwrap()
                .with_fence(),
        ),
        Descriptor::Wait(Wait::interrupt()),
        Descriptor::Wait(Wait {
            action: WaitAction::Plain,
            fence: true,
        }),
    ];
    for d in all {
        assert_eq!(Descriptor::decode(d.encode().unwrap()), Ok(d), "{d:?}");
    }
    // A plain fence: 5 | FN (0x40).
    assert_eq!(
        Descriptor::Wait(Wait {
            action: WaitAction::Plain,
            fence: true
        })
        .encode(),
        Ok([0x45, 0, 0, 0])
    );
}

#[test]
fn decode_refuses_reserved_bits_types_and_encodings() {
    let r = |field| Err(DecodeError::Reserved { field });
    // Upper half of a 256-bit slot.
    assert_eq!(Descriptor::decode([0x11, 0, 1, 0]), r("bits 255:128"));
    // Types: 4 = IEC, 9 = page-group response, 0 and 0xf reserved; bits 11:9 extend the
    // type (0x201 = type 0x21).
    let unsupported = |kind| Err(DecodeError::UnsupportedType { kind });
    assert_eq!(
        Descriptor::decode([0x4, 0, 0, 0]),
        unsupported("interrupt-entry-cache")
    );
    assert_eq!(
        Descriptor::decode([0x9, 0, 0, 0]),
        unsupported("page-group response")
    );
    assert_eq!(
        Descriptor::decode([0x0, 0, 0, 0]),
        unsupported("reserved type")
    );
    assert_eq!(
        Descriptor::decode([0xf, 0, 0, 0]),
        unsupported("reserved type")
    );
    assert_eq!(
        Descriptor::decode([0x211, 0, 0, 0]),
        unsupported("reserved type")
    );
    // Context-cache: bit 6 reserved; granularity 00 reserved; quadword 1 reserved.
    assert_eq!(
        Descriptor::decode([0x51, 0, 0, 0]),
        r("context-cache reserved bits")
    );
    assert_eq!(
        Descriptor::decode([0x01, 0, 0, 0]),
        r("context-cache granularity 00")
    );
    assert_eq!(
        Descriptor::decode([0x11, 1, 0, 0]),
        r("context-cache reserved bits")
    );
    // IOTLB: bit 32 reserved; bits 11:7 of the address word; an address with a domain
    // invalidation; a page block not aligned to its mask (AM 4 at 0x8000).
    assert_eq!(
        Descriptor::decode([0x1_0000_0022, 0, 0, 0]),
        r("IOTLB reserved bits")
    );
    assert_eq!(
        Descriptor::decode([0x32, 0x80, 0, 0]),
        r("IOTLB reserved bits")
    );
    assert_eq!(
        Descriptor::decode([0x22, 0x1000, 0, 0]),
        r("IOTLB address of a domain invalidation")
    );
    assert_eq!(
        Descriptor::decode([0x32, 0x8004, 0, 0]),
        Err(DecodeError::Field(DescriptorError::MisalignedBlock {
            addr: iova(0x8000),
            am: 4
        }))
    );
    assert_eq!(
        Descriptor::decode([0x02, 0, 0, 0]),
        r("IOTLB granularity 00")
    );
    // Wait: PD (bit 7), IF with SW, data without SW, misaligned status address (bit 1).
    assert_eq!(
        Descriptor::decode([0x85, 0, 0, 0]),
        r("wait PD (page-request drain)")
    );
    assert_eq!(
        Descriptor::decode([0x35, 0x1000, 0, 0]),
        r("wait with both IF and SW")
    );
    assert_eq!(
        Descriptor::decode([0x1_0000_0015, 0, 0, 0]),
        r("wait status data/address without SW")
    );
    assert_eq!(
        Descriptor::decode([0x25, 0x1002, 0, 0]),
        r("wait reserved bits")
    );
    // PASID-based IOTLB: G 00 and 01 reserved, bit 52 reserved.
    assert_eq!(
        Descriptor::decode([0x16, 0, 0, 0]),
        r("PASID-based IOTLB granularity 00/01")
    );
    assert_eq!(
        Descriptor::decode([0x0010_0000_0000_0026, 0, 0, 0]),
        r("PASID-based IOTLB reserved bits")
    );
    // PASID-cache: G 10 reserved.
    assert_eq!(
        Descriptor::decode([0x27, 0, 0, 0]),
        r("PASID-cache granularity 10")
    );
    // PASID-based device-TLB: bit 1 of the address word; a PASID with G = 1.
    assert_eq!(
        Descriptor::decode([0x8, 0x2, 0, 0]),
        r("PASID-based device-TLB reserved bits")
    );
    assert_eq!(
        Descriptor::decode([0x0000_0001_0000_0008, 0x1, 0, 0]),
        r("PASID of an all-PASIDs device-TLB invalidation")
    );
    // Device-TLB: bits 31:21 reserved.
    assert_eq!(
        Descriptor::decode([0x0020_0003, 0, 0, 0]),
        r("device-TLB reserved bits")
    );
}

#[test]
fn interrupt_entry_cache_descriptors() {
    // Global: type 4, G (bit 4) clear.
    assert_eq!(
        enc(Descriptor::InterruptEntryCache(IecScope::Global)),
        [0x4, 0]
    );
    // Index-selective, one entry: G set, IM 0, IIDX 0x123 in 47:32.
    assert_eq!(
        enc(Descriptor::InterruptEntryCache(IecScope::Entries(
            IrteBlock::entry(0x123)
        ))),
        [0x0000_0123_0000_0014, 0]
    );
    // 2^3 entries from 0x40: IM 3 in 31:27 (0x1800_0000).
    let block = IrteBlock::new(0x40, 3).unwrap();
    assert_eq!(
        enc(Descriptor::InterruptEntryCache(IecScope::Entries(block))),
        [0x0000_0040_1800_0014, 0]
    );
    assert_eq!(
        IrteBlock::new(0x41, 3),
        Err(DescriptorError::MisalignedEntries {
            index: 0x41,
            mask: 3
        })
    );
    assert!(matches!(
        IrteBlock::new(0, 16),
        Err(DescriptorError::MaskTooLarge { .. })
    ));
    assert!(!Descriptor::InterruptEntryCache(IecScope::Global).needs_256_bit());
}
