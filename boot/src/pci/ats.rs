//! PCIe extended capabilities and the Address Translation Services capability (PCIe Base 6.0,
//! 7.6 and 10.5.1): a function with ATS enabled asks the IOMMU for translations and caches them
//! in its own device-TLB (ATC), which the IOMMU must then invalidate on every unmap.
//!
//! Order matters on both ends: the IOMMU must accept translation requests from the function
//! (VT-d context entry TT = 01 / scalable DTE, SMMU STE.EATS) before ATS is enabled here, and
//! ATS is disabled here before the IOMMU stops accepting them (and its ATC invalidated), so a
//! function never holds a translation the IOMMU no longer invalidates.

use super::{Bdf, ConfigAccess};

/// Extended capability ids (PCIe Base 6.0, 7.6.3).
pub mod extended {
    /// Address Translation Services (PCIe Base 6.0, 10.5.1).
    pub const ATS: u16 = 0x000f;
}

/// The first extended capability sits right after the 256-byte conventional space.
const FIRST_EXTENDED: u16 = 0x100;

/// The configuration-space offset of `bdf`'s first extended capability with id `id`. Only
/// PCIe functions reached through ECAM have extended capabilities: elsewhere offset 0x100 reads
/// as all ones (or 0) and nothing is found. The walk is bounded by the number of dwords the
/// extended space holds, so a looping list ends.
pub fn find_extended_capability(cfg: &impl ConfigAccess, bdf: Bdf, id: u16) -> Option<u16> {
    let mut at = FIRST_EXTENDED;
    for _ in 0..(0x1000 - FIRST_EXTENDED) / 4 {
        // Header (7.6.3): id 15:0, version 19:16, next offset 31:20 (dword aligned).
        let header = cfg.read32(bdf, at);
        if header == 0 || header == u32::MAX {
            return None;
        }
        if header as u16 == id {
            return Some(at);
        }
        let next = (header >> 20) as u16 & !3;
        if next < FIRST_EXTENDED {
            return None;
        }
        at = next;
    }
    None
}

/// ATS capability register offsets and fields (PCIe Base 6.0, 7.8.4).
mod reg {
    /// ATS Capability register (16 bits).
    pub const CAPABILITY: u16 = 0x04;
    /// ATS Control register (16 bits).
    pub const CONTROL: u16 = 0x06;
    /// Capability 4:0: Invalidate Queue Depth (0 means 32).
    pub const QUEUE_DEPTH: u16 = 0x1f;
    /// Capability 5: Page Aligned Request.
    pub const PAGE_ALIGNED: u16 = 1 << 5;
    /// Control 4:0: Smallest Translation Unit, 2^(12 + STU) bytes.
    pub const STU: u16 = 0x1f;
    /// Control 15: Enable.
    pub const ENABLE: u16 = 1 << 15;
}

/// A function's ATS capability: where it is and what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtsCapability {
    pub bdf: Bdf,
    /// Offset of the capability header.
    pub offset: u16,
    /// Invalidation requests the function accepts before it must answer (1..=32): what a
    /// device-TLB invalidation descriptor's "max invalidations pending" is set from.
    pub queue_depth: u8,
    /// The function's untranslated requests are always page aligned.
    pub page_aligned: bool,
}

/// Why ATS cannot be enabled as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtsError {
    /// The smallest translation unit must be a power of two from 4 KiB to 2^43 bytes.
    BadTranslationUnit { bdf: Bdf, log2: u32 },
    /// The function did not keep the value written (Enable or STU read back differently).
    NotTaken { bdf: Bdf, control: u16 },
}

impl core::fmt::Display for AtsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadTranslationUnit { bdf, log2 } => write!(
                f,
                "{bdf}: ATS smallest translation unit 2^{log2} is not 2^12..=2^43 bytes"
            ),
            Self::NotTaken { bdf, control } => {
                write!(f, "{bdf}: ATS control reads back {control:#06x}")
            }
        }
    }
}

impl core::error::Error for AtsError {}

impl AtsCapability {
    /// The ATS capability of `bdf`, if it has one.
    pub fn find(cfg: &impl ConfigAccess, bdf: Bdf) -> Option<Self> {
        let offset = find_extended_capability(cfg, bdf, extended::ATS)?;
        let cap = cfg.read16(bdf, offset + reg::CAPABILITY);
        let depth = (cap & reg::QUEUE_DEPTH) as u8;
        Some(Self {
            bdf,
            offset,
            queue_depth: if depth == 0 { 32 } else { depth },
            page_aligned: cap & reg::PAGE_ALIGNED != 0,
        })
    }

    /// Enables ATS with a smallest translation unit of `2^unit_log2` bytes (the IOMMU's
    /// smallest page: translations are never cached at a finer grain). Call only once the
    /// IOMMU accepts the function's translation requests.
    pub fn enable(&self, cfg: &impl ConfigAccess, unit_log2: u32) -> Result<(), AtsError> {
        let stu = unit_log2
            .checked_sub(12)
            .filter(|s| *s <= u32::from(reg::STU))
            .ok_or(AtsError::BadTranslationUnit {
                bdf: self.bdf,
                log2: unit_log2,
            })? as u16;
        let at = self.offset + reg::CONTROL;
        // STU may only change while ATS is disabled (7.8.4.2): write it first, then Enable.
        cfg.write16(self.bdf, at, stu);
        cfg.write16(self.bdf, at, stu | reg::ENABLE);
        let control = cfg.read16(self.bdf, at);
        if control & (reg::ENABLE | reg::STU) != stu | reg::ENABLE {
            return Err(AtsError::NotTaken {
                bdf: self.bdf,
                control,
            });
        }
        Ok(())
    }

    /// Disables ATS: the function stops requesting and using translations. Call before the
    /// IOMMU stops accepting its translation requests.
    pub fn disable(&self, cfg: &impl ConfigAccess) {
        let at = self.offset + reg::CONTROL;
        let control = cfg.read16(self.bdf, at);
        cfg.write16(self.bdf, at, control & !reg::ENABLE);
    }

    /// Whether ATS is enabled.
    pub fn is_enabled(&self, cfg: &impl ConfigAccess) -> bool {
        cfg.read16(self.bdf, self.offset + reg::CONTROL) & reg::ENABLE != 0
    }

    /// The smallest translation unit as programmed, log2 bytes.
    pub fn unit_log2(&self, cfg: &impl ConfigAccess) -> u32 {
        12 + u32::from(cfg.read16(self.bdf, self.offset + reg::CONTROL) & reg::STU)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    const DEV: Bdf = Bdf::new(1, 0, 0);

    /// A function's 4 KiB configuration space as plain storage; unlisted dwords read 0.
    struct Space(RefCell<BTreeMap<u16, u32>>);

    impl Space {
        fn new(dwords: &[(u16, u32)]) -> Self {
            Self(RefCell::new(dwords.iter().copied().collect()))
        }
    }

    impl ConfigAccess for Space {
        fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
            if bdf != DEV {
                return u32::MAX;
            }
            self.0.borrow().get(&offset).copied().unwrap_or(0)
        }
        fn write32(&self, _: Bdf, offset: u16, value: u32) {
            self.0.borrow_mut().insert(offset, value);
        }
    }

    /// As QEMU's virtio-pci lays it out: ATS first at 0x100, nothing after it; capability
    /// register with queue depth 0 (32) and page-aligned requests.
    fn virtio_like() -> Space {
        Space::new(&[(0x100, 0x0001_000f), (0x104, 1 << 5)])
    }

    #[test]
    fn finds_ats_through_the_extended_list() {
        // AER (id 1) at 0x100 pointing to ATS at 0x148, version 1.
        let s = Space::new(&[(0x100, 0x1481_0001), (0x148, 0x0001_000f), (0x14c, 0x0003)]);
        let ats = AtsCapability::find(&s, DEV);
        assert_eq!(
            ats,
            Some(AtsCapability {
                bdf: DEV,
                offset: 0x148,
                queue_depth: 3,
                page_aligned: false
            })
        );
        let v = AtsCapability::find(&virtio_like(), DEV);
        assert_eq!(
            v.map(|a| (a.offset, a.queue_depth, a.page_aligned)),
            Some((0x100, 32, true))
        );
    }

    #[test]
    fn absent_looping_and_unreachable_lists_find_nothing() {
        assert_eq!(AtsCapability::find(&Space::new(&[]), DEV), None);
        // Port I/O and missing functions read all ones past 0xff.
        assert_eq!(
            find_extended_capability(&virtio_like(), Bdf::new(2, 0, 0), 0xf),
            None
        );
        // A list whose next pointer points back at itself ends.
        let looped = Space::new(&[(0x100, 0x1001_0001)]);
        assert_eq!(find_extended_capability(&looped, DEV, extended::ATS), None);
        // A next pointer into the conventional space ends the list.
        let low = Space::new(&[(0x100, 0x0401_0001)]);
        assert_eq!(find_extended_capability(&low, DEV, extended::ATS), None);
    }

    #[test]
    fn enable_programs_the_translation_unit_then_enable_and_disable_clears_it() {
        let s = virtio_like();
        let ats = AtsCapability::find(&s, DEV).expect("ATS");
        assert!(!ats.is_enabled(&s));
        assert_eq!(ats.enable(&s, 12), Ok(()));
        assert!(ats.is_enabled(&s));
        assert_eq!(s.read16(DEV, 0x106), 0x8000);
        ats.disable(&s);
        assert!(!ats.is_enabled(&s));
        assert_eq!(ats.enable(&s, 16), Ok(()));
        assert_eq!((s.read16(DEV, 0x106), ats.unit_log2(&s)), (0x8004, 16));
        // The capability register beside it is untouched.
        assert_eq!(s.read16(DEV, 0x104), 1 << 5);
    }

    #[test]
    fn bad_units_and_ignored_writes_are_errors() {
        let s = virtio_like();
        let ats = AtsCapability::find(&s, DEV).expect("ATS");
        for log2 in [11, 44] {
            assert_eq!(
                ats.enable(&s, log2),
                Err(AtsError::BadTranslationUnit { bdf: DEV, log2 })
            );
        }
        assert!(!ats.is_enabled(&s));

        /// A function whose control register ignores writes.
        struct ReadOnly(Space);
        impl ConfigAccess for ReadOnly {
            fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
                self.0.read32(bdf, offset)
            }
            fn write32(&self, _: Bdf, _: u16, _: u32) {}
        }
        let r = ReadOnly(virtio_like());
        assert_eq!(
            ats.enable(&r, 12),
            Err(AtsError::NotTaken {
                bdf: DEV,
                control: 0
            })
        );
    }
}
