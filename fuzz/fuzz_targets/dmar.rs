//! The VT-d DMAR parser on arbitrary bytes: `Dmar::parse` either refuses the table or every
//! iterator it hands out walks it without panicking and without leaving the input.
#![no_main]

use iommu_vtd::dmar::RemappingStructure;
use iommu_vtd::Dmar;
use libfuzzer_sys::fuzz_target;

/// `part` lies inside `whole` (same allocation, in bounds).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    p.start >= w.start && p.end <= w.end
}

fuzz_target!(|data: &[u8]| {
    let Ok(dmar) = Dmar::parse(data) else {
        return;
    };
    assert!(within(data, dmar.bytes()));
    let _ = (dmar.host_address_width(), dmar.flags());
    for s in dmar.structures() {
        // Debug decodes every field, scopes and paths included.
        let _ = format!("{s:?}");
        let scopes = match s {
            RemappingStructure::Drhd(d) => Some(d.scopes()),
            RemappingStructure::Rmrr(r) => {
                let _ = (r.base(), r.limit());
                Some(r.scopes())
            }
            RemappingStructure::Atsr(a) => Some(a.scopes()),
            RemappingStructure::Satc(s) => Some(s.scopes()),
            RemappingStructure::Sidp(s) => Some(s.scopes()),
            RemappingStructure::Andd(a) => {
                assert!(within(data, a.object_name()));
                None
            }
            RemappingStructure::Unknown { bytes, .. } => {
                assert!(within(data, bytes));
                None
            }
            RemappingStructure::Rhsa(_) => None,
        };
        for scope in scopes.into_iter().flatten() {
            let path = scope.path();
            let len = path.len();
            assert_eq!(path.count(), len, "ExactSizeIterator tells the truth");
            let _ = (scope.kind(), scope.direct_bdf(), scope.start_bus());
        }
    }
    // The typed views agree with the walk.
    let drhds = dmar
        .structures()
        .filter(|s| matches!(s, RemappingStructure::Drhd(_)));
    assert_eq!(drhds.count(), dmar.drhds().count());
    assert_eq!(
        dmar.structures()
            .filter(|s| matches!(s, RemappingStructure::Rmrr(_)))
            .count(),
        dmar.rmrrs().count()
    );
});
