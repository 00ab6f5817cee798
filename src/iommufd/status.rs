//! Status reports, and the no-IOMMU mode: DMA without any translation unit, for machines that
//! have none, under a name that says what it is and marked in every report it gives.

use core::fmt;

use super::error::{Error, Result};
use super::{Iommu, Target};
use crate::addr::{Iova, PhysAddr};
use crate::unit::TranslationUnit;

/// How far DMA is confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Every device goes through a translation unit; `identity_devices` of them were attached
    /// to identity by their owner and reach all memory.
    Enforced {
        /// Devices attached to [`Target::Identity`].
        identity_devices: usize,
    },
    /// **No DMA protection**: no translation unit is used and every device reaches all memory
    /// ([`InsecureNoIommu`]). `despite_iommu` says the embedder enabled it although real units
    /// were present.
    InsecureNoIommu {
        /// Enabled with [`InsecureNoIommu::enable_despite_iommu`].
        despite_iommu: bool,
    },
}

/// What the object model is doing, for logs and consoles. Its `Display` starts with
/// `INSECURE` whenever DMA is not confined or a device's interrupts are not remapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// How far DMA is confined.
    pub protection: Protection,
    /// Registered translation units.
    pub units: usize,
    /// Registered devices.
    pub devices: usize,
    /// Live paging domains.
    pub domains: usize,
    /// Owned devices whose unit has no interrupt remapper (allowed only by
    /// [`Iommu::allow_unsafe_interrupts`]): each can raise any interrupt of the machine.
    pub unremapped_interrupts: usize,
}

impl Status {
    /// Whether some device's DMA reaches all memory (no-IOMMU mode, or an identity attach).
    pub const fn is_insecure(&self) -> bool {
        self.unremapped_interrupts > 0
            || match self.protection {
                Protection::Enforced { identity_devices } => identity_devices > 0,
                Protection::InsecureNoIommu { .. } => true,
            }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protection {
            Protection::InsecureNoIommu { despite_iommu } => write!(
                f,
                "INSECURE: no-IOMMU mode{}, DMA is not confined",
                if despite_iommu {
                    " forced although an IOMMU is present"
                } else {
                    ""
                }
            ),
            Protection::Enforced { identity_devices } => {
                if self.is_insecure() {
                    f.write_str("INSECURE: ")?;
                    if identity_devices > 0 {
                        write!(f, "{identity_devices} device(s) in identity, ")?;
                    }
                    if self.unremapped_interrupts > 0 {
                        write!(
                            f,
                            "{} owned device(s) without interrupt remapping, ",
                            self.unremapped_interrupts
                        )?;
                    }
                    f.write_str("confined for the rest: ")?;
                } else {
                    f.write_str("DMA and interrupts confined: ")?;
                }
                write!(
                    f,
                    "{} unit(s), {} device(s), {} paging domain(s)",
                    self.units, self.devices, self.domains
                )
            }
        }
    }
}

impl<U: TranslationUnit> Iommu<U> {
    /// The current status.
    pub fn status(&self) -> Status {
        Status {
            protection: Protection::Enforced {
                identity_devices: self
                    .devices
                    .iter()
                    .filter(|d| d.target == Target::Identity)
                    .count(),
            },
            units: self.units.len(),
            devices: self.devices.len(),
            domains: self.domains.len(),
            unremapped_interrupts: self.unisolated_owned_devices(),
        }
    }
}

/// No-IOMMU mode: DMA addresses are physical addresses and nothing confines any device.
///
/// Only for machines without a translation unit, where the alternative is no DMA at all. It
/// exists only once enabled by one of its two constructors, whose names say the choice, and
/// every [`Status`] it gives says `INSECURE`.
#[derive(Debug)]
pub struct InsecureNoIommu {
    despite_iommu: bool,
}

impl InsecureNoIommu {
    /// Enables no-IOMMU mode on a machine whose firmware reported `units_found` translation
    /// units; refused ([`Error::IommuPresent`]) unless that is zero.
    pub fn enable(units_found: usize) -> Result<Self> {
        if units_found > 0 {
            return Err(Error::IommuPresent { units: units_found });
        }
        Ok(Self {
            despite_iommu: false,
        })
    }

    /// [`enable`](Self::enable) with the units registered in `iommu`.
    pub fn enable_for<U: TranslationUnit>(iommu: &Iommu<U>) -> Result<Self> {
        Self::enable(iommu.units.len())
    }

    /// Enables no-IOMMU mode although real units are present (they are then not used by this
    /// object; devices behind them must be in pass-through for their DMA to work).
    pub fn enable_despite_iommu() -> Self {
        Self {
            despite_iommu: true,
        }
    }

    /// The DMA address of `phys`: `phys` itself.
    pub fn dma_address(&self, phys: PhysAddr) -> Iova {
        Iova::new(phys.as_u64())
    }

    /// The current status: always insecure.
    pub fn status(&self) -> Status {
        Status {
            protection: Protection::InsecureNoIommu {
                despite_iommu: self.despite_iommu,
            },
            units: 0,
            devices: 0,
            domains: 0,
            unremapped_interrupts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::string::ToString;

    use super::*;

    #[test]
    fn no_iommu_is_refused_with_a_unit_unless_forced_and_always_marked() {
        assert_eq!(
            InsecureNoIommu::enable(1).err(),
            Some(Error::IommuPresent { units: 1 })
        );
        let Ok(n) = InsecureNoIommu::enable(0) else {
            panic!("no unit: allowed")
        };
        assert_eq!(
            n.dma_address(PhysAddr::new(0x1234_5000)),
            Iova::new(0x1234_5000)
        );
        assert!(n.status().is_insecure());
        assert!(n.status().to_string().starts_with("INSECURE"));
        let forced = InsecureNoIommu::enable_despite_iommu().status();
        assert_eq!(
            forced.protection,
            Protection::InsecureNoIommu {
                despite_iommu: true
            }
        );
        assert!(forced.to_string().contains("although an IOMMU is present"));
    }
}
