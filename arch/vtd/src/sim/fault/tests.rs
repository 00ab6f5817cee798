//! The whole unit's queue and fault status through its registers alone: a descriptor the
//! shared executor rejects stops the queue with IQE until software clears it (RW1C), as in
//! the queue's own simulator.

extern crate std;

use std::boxed::Box;

use crate::sim::{SimulatedUnit, CAP, ECAP_SCALABLE};

#[repr(C, align(4096))]
struct Ring([u64; 512]);

/// Polls `f` until it holds (the responder runs on its own thread), a few seconds at most.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed().as_secs() < 5, "never: {what}");
        std::thread::yield_now();
    }
}

#[test]
fn a_bad_descriptor_stops_the_queue_with_iqe_until_it_is_cleared() {
    let sim = SimulatedUnit::new(CAP, ECAP_SCALABLE);
    let regs = sim.regs();
    let mut ring = Box::new(Ring([0; 512]));
    let status = Box::new(0u32);
    let status_addr = &*status as *const u32 as u64;
    // A wait (SW, data 7) then a context-cache invalidation with a reserved bit (bit 6) set,
    // then a good wait (data 9), 128-bit descriptors.
    ring.0[0] = 0x25 | 7 << 32;
    ring.0[1] = status_addr;
    ring.0[2] = 0x01 | 1 << 6;
    ring.0[4] = 0x25 | 9 << 32;
    ring.0[5] = status_addr;
    let ring_addr = ring.0.as_ptr() as u64;
    regs.w64(0x90, ring_addr); // IQA: one page, 128-bit
    regs.w32(0x18, 1 << 26); // GCMD.QIE
    eventually("QIES", || regs.r32(0x1c) & (1 << 26) != 0);
    regs.w64(0x88, 3 << 4); // IQT: three descriptors

    eventually("IQE", || regs.r32(0x34) & (1 << 4) != 0);
    // SAFETY: `status` is live; the responder wrote it before it set IQE.
    assert_eq!(unsafe { (status_addr as *const u32).read_volatile() }, 7);
    assert_eq!(regs.r64(0x80), 1 << 4, "IQH left on the bad descriptor");
    assert_eq!(regs.r64(0xb0), 4, "IQERCD");

    // Software fixes the descriptor and clears IQE (RW1C): the queue resumes.
    ring.0[2] = 0x01 | 1 << 4; // global
    regs.w32(0x34, 1 << 4);
    eventually("IQH at IQT", || regs.r64(0x80) == 3 << 4);
    assert_eq!(regs.r32(0x34) & (1 << 4), 0);
    // SAFETY: as above.
    assert_eq!(unsafe { (status_addr as *const u32).read_volatile() }, 9);

    regs.w32(0x18, 0);
    eventually("QIE off", || regs.r32(0x1c) & (1 << 26) == 0);
    drop(sim);
    drop((ring, status));
}
