//! Address newtypes: a physical address and an I/O virtual address are different things, and the
//! type says which one a function wants.
//!
//! Both are plain 64-bit numbers with no validity rule of their own: what range is legal depends
//! on the page-table format (its input and output sizes), which checks it where it matters.

use core::fmt;

/// A physical address, as the CPU's memory system and the IOMMU's table walker see it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(u64);

/// An I/O virtual address: what a device puts on the bus and the IOMMU translates (an IOVA for a
/// stage-1 or second-stage domain, a guest physical address for a nest parent).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Iova(u64);

macro_rules! address_type {
    ($name:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("The ", $what, " `addr`.")]
            #[inline(always)]
            pub const fn new(addr: u64) -> Self {
                Self(addr)
            }

            /// The address as a number.
            #[inline(always)]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Whether the address is a multiple of `align`, which must be a power of two.
            #[inline(always)]
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & align.wrapping_sub(1) == 0
            }

            /// The address `bytes` further on, or `None` if that wraps past `u64::MAX`.
            #[inline(always)]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(a) => Some(Self(a)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl From<$name> for u64 {
            #[inline(always)]
            fn from(a: $name) -> u64 {
                a.0
            }
        }
    };
}

address_type!(PhysAddr, "physical address");
address_type!(Iova, "I/O virtual address");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_and_overflow() {
        assert!(PhysAddr::new(0x20_0000).is_aligned(0x20_0000));
        assert!(!Iova::new(0x1000).is_aligned(0x20_0000));
        assert_eq!(Iova::new(u64::MAX - 1).checked_add(2), None);
        assert_eq!(
            Iova::new(0x1000).checked_add(0x1000),
            Some(Iova::new(0x2000))
        );
    }

    #[test]
    fn debug_is_hex() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{:?}", PhysAddr::new(0x1000)), "PhysAddr(0x1000)");
        assert_eq!(format!("{}", Iova::new(0xabc000)), "0xabc000");
    }
}
