//! The ACPI table walk over fuzzed physical memory: the input is memory at `BASE`, its first
//! two bytes say where the RSDP is. Every table handed out lies inside the memory, is at least
//! a header long, and a DMAR found that way goes to the DMAR parser.
#![no_main]

use iommu::acpi::{Acpi, PhysMemory, Signature, SDT_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0xe_0000;

struct Memory<'a>(&'a [u8]);

impl PhysMemory for Memory<'_> {
    fn bytes(&self, phys: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(phys.checked_sub(BASE)?).ok()?;
        self.0.get(start..start.checked_add(len)?)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((at, mem)) = data.split_first_chunk::<2>() else {
        return;
    };
    let mem = Memory(mem);
    let rsdp = BASE + u64::from(u16::from_le_bytes(*at));
    let Ok(acpi) = Acpi::new(&mem, rsdp) else {
        return;
    };
    let whole = mem.0.as_ptr_range();
    let inside = |b: &[u8]| {
        let p = b.as_ptr_range();
        p.start >= whole.start && p.end <= whole.end
    };
    assert!(inside(acpi.root().bytes()));
    let _ = acpi.entries().count();
    for table in acpi.tables().flatten() {
        assert!(table.bytes().len() >= SDT_HEADER_LEN);
        assert!(inside(table.bytes()));
        assert!(inside(table.body()));
        let _ = (table.signature(), table.revision(), table.oem_id());
    }
    if let Ok(dmar) = acpi.find(Signature(*b"DMAR")) {
        assert_eq!(dmar.signature(), Signature(*b"DMAR"));
        if let Ok(d) = iommu_vtd::Dmar::parse(dmar.bytes()) {
            let _ = d.structures().count();
        }
    }
});
