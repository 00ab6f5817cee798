//! Placeholder: tests for this back-end.
use crate::Machine;
use iommu_boot::testing::Test;

pub static TESTS: &[Test<Machine>] = &[];

pub fn demo(_m: &mut Machine) {}
