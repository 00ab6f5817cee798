//! Host tests of the domain-id pool: reuse, last freed first, and the limit.

use super::*;
use iommu::hal::host::HostHal;

#[test]
fn ids_are_reused_last_freed_first_and_the_limit_holds() {
    let hal = HostHal::new();
    let ids = DomainIds::new(&hal, 65536, 1).unwrap();
    let a = ids.allocate(&hal).unwrap();
    let b = ids.allocate(&hal).unwrap();
    assert_eq!((a.raw(), b.raw()), (1, 2));
    ids.release(&hal, a);
    ids.release(&hal, b);
    assert_eq!(ids.allocate(&hal).unwrap(), b);
    assert_eq!(ids.allocate(&hal).unwrap(), a);
    ids.set_limit(4);
    assert_eq!(ids.allocate(&hal).unwrap().raw(), 3);
    assert_eq!(ids.allocate(&hal), Err(UnitError::OutOfIds));
    assert_eq!(ids.high_water(), 4);
    // Ids far apart live in different record frames.
    ids.set_limit(65536);
    ids.attach(&hal, a, 0);
    ids.attach(&hal, a, 5);
    assert_eq!(ids.users(&hal, a), 2);
    assert_eq!(ids.pasid_users(&hal, a), Some(5));
    ids.detach(&hal, a, 5);
    assert_eq!(ids.pasid_users(&hal, a), None);
    ids.detach(&hal, a, 0);
    ids.detach(&hal, a, 0);
    assert_eq!(ids.users(&hal, a), 0, "a count never goes below zero");
    // The HAL out of memory: no id is consumed.
    let small = DomainIds::new(&hal, 65536, 255).unwrap();
    assert_eq!(small.allocate(&hal).unwrap().raw(), 255);
    hal.set_budget(0);
    assert_eq!(small.allocate(&hal), Err(UnitError::OutOfMemory));
    assert_eq!(small.high_water(), 256);
}
