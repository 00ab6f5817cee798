//! PCI addresses and DMA aliases: which requester ids a function's DMA can reach the IOMMU with,
//! and from that, which functions the IOMMU cannot tell apart (one isolation group).
//!
//! A PCIe function's requests carry its own bus/device/function. Bridges to conventional PCI
//! take ownership of the requests they forward (PCI Express to PCI/PCI-X Bridge Specification
//! 1.0, 2.3): a PCIe-to-PCI bridge tags them with its secondary bus and device/function 0, a
//! conventional PCI-to-PCI bridge with its own id. Every function below such a bridge therefore
//! shares an id with its siblings, and the IOMMU sees them as one device. The rules are those of
//! Linux's `pci_for_each_dma_alias`.
//!
//! Not modelled: peer-to-peer DMA that never reaches the IOMMU (switch ports or multi-function
//! devices without ACS) and device-specific alias quirks. An embedder that has such devices
//! puts them in one group itself.

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// A PCI function's address: bus, device (0-31), function (0-7). Debug and Display both print
/// the usual `bb:dd.f`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl Bdf {
    /// Bus, device and function; `device` and `function` are cut to their 5 and 3 bits.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device: device & 0x1f,
            function: function & 0x7,
        }
    }

    /// The requester id (VT-d: source id): bus in bits 15:8, device in 7:3, function in 2:0.
    pub const fn requester_id(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    pub const fn from_requester_id(rid: u16) -> Self {
        Self::new((rid >> 8) as u8, (rid >> 3) as u8, rid as u8)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One bridge between a function and the root complex, as far as requester ids are concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bridge {
    /// A PCIe root or switch port: forwards requester ids unchanged.
    PciePort,
    /// A PCIe-to-PCI/PCI-X bridge whose secondary bus is `secondary`: requests from below it
    /// carry (`secondary`, 0, 0) (PCIe-to-PCI bridge spec 2.3; PCI-X requests may keep their
    /// own id, which stays in the alias list).
    PcieToPci { secondary: u8 },
    /// A conventional PCI-to-PCI bridge at `id`: requests from below it carry `id`.
    Conventional { id: Bdf },
}

/// The requester ids `function`'s DMA can arrive with at the IOMMU: its own first, then the
/// alias each bridge of `upstream` (nearest first) gives it. Program the IOMMU for all of them.
pub fn dma_aliases(function: Bdf, upstream: &[Bridge]) -> Vec<u16> {
    let mut ids = Vec::with_capacity(1 + upstream.len());
    ids.push(function.requester_id());
    for bridge in upstream {
        let alias = match *bridge {
            Bridge::PciePort => continue,
            Bridge::PcieToPci { secondary } => Bdf::new(secondary, 0, 0).requester_id(),
            Bridge::Conventional { id } => id.requester_id(),
        };
        if !ids.contains(&alias) {
            ids.push(alias);
        }
    }
    ids
}

/// Isolation groups from DMA aliases: for each function of `functions` (its address and its
/// bridges, nearest first), a group number shared by exactly the functions it shares a
/// requester id with, directly or through others. The number is the smallest requester id in
/// the group, so it is stable whatever the order of `functions`; use it as the object model's
/// `GroupId`.
pub fn alias_groups(functions: &[(Bdf, &[Bridge])]) -> Vec<u32> {
    let ids: Vec<Vec<u16>> = functions
        .iter()
        .map(|(f, up)| dma_aliases(*f, up))
        .collect();
    // Union-find over function indices, joined whenever two alias lists meet.
    let mut parent: Vec<usize> = (0..functions.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for a in 0..ids.len() {
        for b in a + 1..ids.len() {
            if ids[a].iter().any(|id| ids[b].contains(id)) {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra] = rb;
            }
        }
    }
    let roots: Vec<usize> = (0..ids.len()).map(|i| root(&mut parent, i)).collect();
    roots
        .iter()
        .map(|r| {
            let smallest = (0..ids.len())
                .filter(|j| roots[*j] == *r)
                .flat_map(|j| ids[j].iter().copied())
                .min();
            u32::from(smallest.unwrap_or(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_id_layout() {
        let b = Bdf::new(0x12, 0x1f, 7);
        assert_eq!(b.requester_id(), 0x12ff);
        assert_eq!(Bdf::from_requester_id(0x12ff), b);
        assert_eq!(Bdf::new(0, 3, 0).requester_id(), 0x18);
        assert_eq!(alloc::format!("{}", Bdf::new(0, 3, 1)), "00:03.1");
        // Out-of-range device/function bits are cut, not carried into the bus.
        assert_eq!(Bdf::new(1, 0x20, 8).requester_id(), 0x100);
    }

    const ROOT_PORT: &[Bridge] = &[Bridge::PciePort];

    #[test]
    fn pcie_functions_are_their_own_alias() {
        assert_eq!(dma_aliases(Bdf::new(2, 0, 0), ROOT_PORT), [0x200]);
        assert_eq!(dma_aliases(Bdf::new(0, 3, 0), &[]), [0x18]);
    }

    #[test]
    fn bridges_take_ownership() {
        // 00:1e.0 PCIe-to-PCI bridge with secondary bus 5; behind it 05:01.0 and 05:02.0.
        let up = [Bridge::PcieToPci { secondary: 5 }, Bridge::PciePort];
        assert_eq!(dma_aliases(Bdf::new(5, 1, 0), &up), [0x508, 0x500]);
        // A conventional bridge at 05:03.0 further down, secondary bus 6.
        let deeper = [
            Bridge::Conventional {
                id: Bdf::new(5, 3, 0),
            },
            Bridge::PcieToPci { secondary: 5 },
        ];
        assert_eq!(
            dma_aliases(Bdf::new(6, 0, 0), &deeper),
            [0x600, 0x518, 0x500]
        );
    }

    #[test]
    fn groups_join_functions_sharing_an_id() {
        let behind = [Bridge::PcieToPci { secondary: 5 }, Bridge::PciePort];
        let conventional = [Bridge::Conventional {
            id: Bdf::new(0, 4, 0),
        }];
        let functions: [(Bdf, &[Bridge]); 6] = [
            (Bdf::new(0, 3, 0), &[]),
            (Bdf::new(5, 1, 0), &behind),
            (Bdf::new(5, 2, 0), &behind),
            (Bdf::new(1, 0, 0), &conventional),
            (Bdf::new(1, 1, 0), &conventional),
            (Bdf::new(2, 0, 0), ROOT_PORT),
        ];
        let g = alias_groups(&functions);
        assert_eq!(g, [0x18, 0x500, 0x500, 0x20, 0x20, 0x200]);
        // Stable under reordering.
        let mut rev = functions;
        rev.reverse();
        let mut g2 = alias_groups(&rev);
        g2.reverse();
        assert_eq!(g2, g);
    }

    #[test]
    fn groups_are_transitive() {
        // a and b meet at bridge X's id, b and c at bridge Y's: one group of three.
        let x = Bdf::new(0, 8, 0);
        let y = Bdf::new(0, 9, 0);
        let a: &[Bridge] = &[Bridge::Conventional { id: x }];
        let b: &[Bridge] = &[
            Bridge::Conventional { id: y },
            Bridge::Conventional { id: x },
        ];
        let c: &[Bridge] = &[Bridge::Conventional { id: y }];
        let g = alias_groups(&[
            (Bdf::new(3, 0, 0), a),
            (Bdf::new(4, 0, 0), b),
            (Bdf::new(4, 1, 0), c),
        ]);
        assert!(g.iter().all(|v| *v == u32::from(x.requester_id())));
    }
}
