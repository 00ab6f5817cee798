//! Where the test kernels' memory comes from: the RAM the firmware reported, with the frames of
//! every table and queue from its high end when the command line says `mem.high=1`.

use crate::hal::HAL;
use crate::Machine;
use iommu::hal::{FrameSize, Hal};
use iommu_boot::ensure;
use iommu_boot::memory;
use iommu_boot::testing::{fail, Failure, Test, TestResult};

const G4: u64 = 4 << 30;

/// The frame allocator manages the RAM the firmware reported; with `mem.high=1` on a machine
/// with RAM above 4 GiB, every frame the driver was given so far (root/stream tables, queues,
/// page tables of the tests before this one) and a new one lie above 4 GiB, and so does a
/// block taken from the top of RAM (where the DMA tests take their buffers).
pub fn frames_come_from_where_the_command_line_says(m: &mut Machine) -> TestResult {
    let end = memory::ram_end();
    let total = memory::total();
    ensure!(
        total > 0 && end > 0,
        "no RAM managed ({total} bytes up to {end:#x})"
    );
    let frame = HAL
        .alloc_frame(FrameSize::SIZE_4K)
        .ok_or_else(|| fail("no frame"))?;
    // SAFETY: just allocated, never used.
    unsafe { HAL.free_frame(frame, FrameSize::SIZE_4K) };
    if m.cmdline.get_bool("mem.high") != Some(true) {
        ensure!(frame.as_u64() < end, "{frame:?} outside RAM");
        return Err(Failure::Skipped(
            "frames from the low end (no mem.high=1)".into(),
        ));
    }
    if end <= G4 {
        return Err(Failure::Skipped(alloc::format!(
            "no RAM above 4 GiB (RAM ends at {end:#x})"
        )));
    }
    ensure!(frame.as_u64() >= G4, "a new frame at {frame:?}");
    ensure!(
        HAL.lowest_frame() >= G4,
        "a frame at {:#x} was handed out below 4 GiB",
        HAL.lowest_frame()
    );
    let top = memory::alloc(2 << 20, memory::Placement::High).ok_or_else(|| fail("no 2 MiB"))?;
    // SAFETY: just allocated, never used.
    unsafe { memory::free(top, 2 << 20) };
    ensure!(
        top >= G4 && top + (2 << 20) <= end,
        "a 2 MiB block from the top at {top:#x}"
    );
    Ok(())
}

pub const TESTS: &[Test<Machine>] = &[Test {
    name: "frames_come_from_where_the_command_line_says",
    run: frames_come_from_where_the_command_line_says,
}];
