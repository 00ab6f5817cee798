//! Host tests of bring-up that need no simulated unit.

use super::*;
use iommu::hal::host::HostHal;
use std::boxed::Box;

/// A register page in host memory with QEMU's VER/CAP/ECAP: nothing answers a command.
#[repr(C, align(4096))]
struct Page([u64; 512]);

#[test]
fn a_unit_that_does_not_answer_gives_a_typed_timeout() {
    let mut page = Box::new(Page([0; 512]));
    page.0[0] = 0x10;
    page.0[1] = 0x00d2_008c_222f_0606;
    page.0[2] = 0x0000_0000_00f0_0f4a;
    let base = NonNull::from(Box::leak(page)).cast::<u8>();
    // SAFETY: `base` is a live, aligned 4 KiB page, freed below after the last use.
    let regs = unsafe { UnitRegisters::new(base, 4096) }.unwrap();
    let hal = HostHal::new();
    let r = VtdUnit::new(&regs, &hal, Mode::Legacy, 48, QueueSize::ONE_PAGE);
    assert_eq!(
        r.err(),
        Some(UnitError::Timeout(iommu::poll::Timeout {
            waiting_for: "GSTS.RTPS"
        }))
    );
    // The unit holds the root's address, but translation and the queue are off (GSTS reads
    // them clear): every frame went back.
    assert_eq!(hal.live_frames(), 0);
    // Scalable mode without ECAP.SMTS is refused before any register is touched.
    let r = VtdUnit::new(&regs, &hal, Mode::Scalable, 48, QueueSize::ONE_PAGE);
    assert!(matches!(r.err(), Some(UnitError::Unsupported(_))));
    // SAFETY: `base` came from `Box::leak` of a `Page` and is freed once.
    drop(unsafe { Box::from_raw(base.cast::<Page>().as_ptr()) });
}
