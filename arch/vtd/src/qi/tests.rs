//! Host tests of the invalidation queue against a simulated unit: many producers, wrap, full queue, errors and recovery, timeouts.

extern crate std;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool as StdBool;
use std::vec::Vec;

use super::sim::*;
use super::*;
use crate::descriptor::{Drain, IotlbScope, PageBlock, PasidCacheScope};
use crate::root_table::Did;
use iommu::addr::Iova;

/// A descriptor that names (producer, sequence number) uniquely: page-selective IOTLB
/// invalidation of page `seq` in domain `producer`.
fn tagged(producer: u16, seq: u64) -> Descriptor {
    Descriptor::Iotlb {
        scope: IotlbScope::Pages {
            domain: Did::new(producer),
            block: PageBlock::page(Iova::new(seq << 12)),
            leaf_only: false,
        },
        drain: Drain::default(),
    }
}

fn untag(w: [u64; 4]) -> Option<(u16, u64)> {
    (w[0] & 0xf == 2).then(|| ((w[0] >> 16) as u16, w[1] >> 12))
}

/// Sets the flag when dropped, so the consumer thread stops even if a producer panics
/// (otherwise the thread scope would wait for it forever).
struct StopOnDrop<'a>(&'a StdBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Runs the simulated unit until `stop` is set; returns every executed descriptor.
fn consumer(unit: &SimUnit, mem: &SimMemory, stop: &StdBool) -> Vec<[u64; 4]> {
    let memory = mem.memory();
    let mut log = Vec::new();
    loop {
        match unit.step(&memory) {
            Step::Executed(w) => log.push(w),
            _ if stop.load(std::sync::atomic::Ordering::Acquire) => {
                // Drain what is left, then stop.
                while let Step::Executed(w) = unit.step(&memory) {
                    log.push(w);
                }
                return log;
            }
            _ => std::thread::yield_now(),
        }
    }
}

#[test]
fn sizes_and_iqa() {
    assert_eq!(QueueSize::ONE_PAGE.entries(DescriptorWidth::Bits128), 256);
    assert_eq!(QueueSize::ONE_PAGE.entries(DescriptorWidth::Bits256), 128);
    assert_eq!(
        QueueSize::new(7).map(|s| s.entries(DescriptorWidth::Bits128)),
        Some(32768)
    );
    assert_eq!(QueueSize::new(8), None);
    assert_eq!(
        DescriptorWidth::for_unit(ExtendedCapability(1 << 43)),
        DescriptorWidth::Bits256
    );
    assert_eq!(
        DescriptorWidth::for_unit(ExtendedCapability(2)),
        DescriptorWidth::Bits128
    );

    let unit = SimUnit::new(DescriptorWidth::Bits256, 128, STATUS_PHYS);
    let mem = SimMemory::new(128, DescriptorWidth::Bits256);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits256, 1000, 1));
    // Base 0x10_0000 | DW (bit 11) | QS 0.
    assert_eq!(q.iqa_value(), 0x10_0800);
    assert_eq!(q.batch_capacity(), 126);
}

#[test]
fn memory_is_checked() {
    let mem = SimMemory::new(4, DescriptorWidth::Bits128);
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let r = InvalidationQueue::with_entries(
        &unit,
        mem.memory(),
        config(DescriptorWidth::Bits128, 1, 1),
        8,
    );
    assert!(matches!(r, Err(QiError::BadMemory { .. })));
}

#[test]
fn one_batch_one_wait_and_its_encoding() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 1000, 1));
    let t = q.submit([tagged(1, 1), tagged(1, 2)]).unwrap();
    // Three slots written, the tail at slot 3 (byte offset 0x30), nothing executed yet.
    assert_eq!(unit.tail.value.load(Ordering::Relaxed), 0x30);
    let memory = mem.memory();
    assert!(matches!(unit.step(&memory), Step::Executed(_)));
    assert!(matches!(unit.step(&memory), Step::Executed(_)));
    // The wait: SW (bit 5), type 5, token 1 (lap 0 + 1) in 63:32, status word of slot 2.
    assert_eq!(
        unit.step(&memory),
        Step::Executed([0x1_0000_0025, STATUS_PHYS + 8, 0, 0])
    );
    assert_eq!(unit.step(&memory), Step::Idle);
    assert_eq!(q.wait(t), Ok(()));
    assert_eq!(q.submitted(), (3, 1));
}

#[test]
fn wide_descriptors_need_a_wide_queue() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 10, 1));
    let pc = Descriptor::PasidCache(PasidCacheScope::Global);
    assert_eq!(
        q.submit([pc]),
        Err(QiError::NeedsWideDescriptors {
            kind: "PASID-cache"
        })
    );
    assert_eq!(
        q.submit([tagged(1, 1); 7]),
        Err(QiError::BatchTooLarge {
            descriptors: 7,
            capacity: 6
        })
    );
    // Nothing was reserved by the refused submissions.
    assert_eq!(unit.tail.writes.load(Ordering::Relaxed), 0);

    let unit = SimUnit::new(DescriptorWidth::Bits256, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits256);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits256, 10, 1));
    let t = q.submit([pc]).unwrap();
    let memory = mem.memory();
    assert_eq!(unit.step(&memory), Step::Executed([0x37, 0, 0, 0]));
    assert!(matches!(unit.step(&memory), Step::Executed(_)));
    assert_eq!(q.wait(t), Ok(()));
}

#[test]
fn queue_full_is_a_typed_error_and_clears_when_the_unit_moves() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 50, 8));
    // 7 usable slots: 3 + 1 and 2 + 1 fill them.
    let a = q
        .submit([tagged(1, 0), tagged(1, 1), tagged(1, 2)])
        .unwrap();
    let b = q.submit([tagged(1, 3), tagged(1, 4)]).unwrap();
    assert_eq!(q.submit([tagged(1, 5)]), Err(QiError::QueueFull));
    // Waiting without a consumer times out, and says where.
    assert_eq!(q.wait(a), Err(QiError::Timeout { position: 3 }));
    let memory = mem.memory();
    while let Step::Executed(_) = unit.step(&memory) {}
    assert_eq!(q.wait(a), Ok(()));
    assert_eq!(q.wait(b), Ok(()));
    // Wrapped around: slots 7, 0 now.
    let c = q.submit([tagged(1, 5)]).unwrap();
    while let Step::Executed(_) = unit.step(&memory) {}
    assert_eq!(q.wait(c), Ok(()));
    assert_eq!(unit.head.load(Ordering::Relaxed), 1 << 4);
}

/// Producers hammer a small ring through several wraps while the simulated unit runs:
/// every descriptor executes exactly once, every batch completes, one wait per batch.
fn many_producers(width: DescriptorWidth, producers: u16, batches: u64, per_batch: u64) {
    many_producers_on(16, width, producers, batches, per_batch);
}

fn many_producers_on(
    entries: u32,
    width: DescriptorWidth,
    producers: u16,
    batches: u64,
    per_batch: u64,
) {
    let unit = SimUnit::new(width, u64::from(entries), STATUS_PHYS);
    let mem = SimMemory::new(entries as usize, width);
    let q = queue(&unit, &mem, config(width, 50_000_000, 64));
    let stop = StdBool::new(false);
    let log = std::thread::scope(|s| {
        let consumer = s.spawn(|| consumer(&unit, &mem, &stop));
        let _stop = StopOnDrop(&stop);
        let workers: Vec<_> = (0..producers)
            .map(|p| {
                let q = &q;
                s.spawn(move || {
                    for b in 0..batches {
                        let descs: Vec<_> = (0..per_batch)
                            .map(|i| tagged(p, b * per_batch + i))
                            .collect();
                        q.submit_and_wait(descs.iter().copied()).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        consumer.join().unwrap()
    });
    let mut seen: HashMap<(u16, u64), usize> = HashMap::new();
    let mut waits = 0;
    for w in &log {
        match untag(*w) {
            Some(tag) => *seen.entry(tag).or_default() += 1,
            None => waits += 1,
        }
    }
    let total = u64::from(producers) * batches * per_batch;
    assert_eq!(seen.len() as u64, total);
    assert!(seen.values().all(|&n| n == 1), "a descriptor ran twice");
    assert_eq!(waits as u64, u64::from(producers) * batches);
    assert_eq!(q.submitted(), (total + waits as u64, waits as u64));
    // Several laps of the ring.
    assert!(log.len() as u64 > 4 * u64::from(entries));
}

#[test]
fn batches_longer_than_the_kept_encodings() {
    // 20 descriptors: the first `ENCODED` written from the check's encoding, the rest encoded
    // again; every one must run once, in its batch.
    many_producers_on(64, DescriptorWidth::Bits128, 2, 40, ENCODED as u64 + 4);
}

#[test]
fn two_producers_128_bit() {
    many_producers(DescriptorWidth::Bits128, 2, 200, 3);
}

#[test]
fn four_producers_256_bit() {
    many_producers(DescriptorWidth::Bits256, 4, 100, 2);
}

#[test]
fn three_producers_large_batches() {
    // Batches of 7 + wait in a 16-slot ring: at most 1 batch plus part of another fit.
    many_producers(DescriptorWidth::Bits128, 3, 60, 7);
}

#[test]
fn invalid_descriptor_raises_iqe_and_the_queue_recovers() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 1000, 1));
    let memory = mem.memory();
    // Type 15 does not exist.
    let bad = Descriptor::Raw([0xf, 0, 0, 0]);
    let t = q.submit([tagged(1, 1), bad, tagged(1, 2)]).unwrap();
    let later = q.submit([tagged(2, 1)]).unwrap();
    assert!(matches!(unit.step(&memory), Step::Executed(_)));
    assert_eq!(unit.step(&memory), Step::Rejected);
    assert_eq!(unit.step(&memory), Step::Stopped);
    let tail_writes = unit.tail.writes.load(Ordering::Relaxed);
    // Recovery: the bad slot now holds the sink wait, IQE is clear, the tail rewritten.
    let r = q.recover();
    assert_eq!(
        r.invalid_descriptor,
        Some((1, QueueErrorInfo::ReservedField))
    );
    assert_eq!(unit.fsts.load(Ordering::Relaxed) & FSTS_IQE, 0);
    assert_eq!(unit.tail.writes.load(Ordering::Relaxed), tail_writes + 1);
    let mut executed = Vec::new();
    while let Step::Executed(w) = unit.step(&memory) {
        executed.push(w);
    }
    // Sink wait, the rest of the first batch, its wait, the later batch and its wait.
    assert_eq!(executed.len(), 5);
    assert_eq!(executed[0][1], STATUS_PHYS + 4 * 8);
    assert_eq!(untag(executed[1]), Some((1, 2)));
    assert_eq!(
        q.wait(t),
        Err(QiError::InvalidDescriptor {
            index: 1,
            info: QueueErrorInfo::ReservedField
        })
    );
    assert_eq!(q.wait(later), Ok(()));
    // And the queue keeps working.
    let again = q.submit([tagged(3, 1)]).unwrap();
    while let Step::Executed(_) = unit.step(&memory) {}
    assert_eq!(q.wait(again), Ok(()));
}

#[test]
fn iqe_found_by_a_waiter_while_other_producers_submit() {
    let unit = SimUnit::new(DescriptorWidth::Bits256, 16, STATUS_PHYS);
    let mem = SimMemory::new(16, DescriptorWidth::Bits256);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits256, 50_000_000, 4));
    let stop = StdBool::new(false);
    let (bad_result, log) = std::thread::scope(|s| {
        let consumer = s.spawn(|| consumer(&unit, &mem, &stop));
        let _stop = StopOnDrop(&stop);
        let q = &q;
        let good: Vec<_> = (0..3u16)
            .map(|p| {
                s.spawn(move || {
                    for i in 0..100 {
                        q.submit_and_wait([tagged(p, i)]).unwrap();
                    }
                })
            })
            .collect();
        // Reserved bit 8 of an IOTLB descriptor.
        let bad =
            s.spawn(move || q.submit_and_wait([tagged(9, 1), Descriptor::Raw([0x132, 0, 0, 0])]));
        let bad_result = bad.join().unwrap();
        for g in good {
            g.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        (bad_result, consumer.join().unwrap())
    });
    assert_eq!(
        bad_result,
        Err(QiError::InvalidDescriptor {
            index: 1,
            info: QueueErrorInfo::ReservedField
        })
    );
    let tagged_count = log.iter().filter(|w| untag(**w).is_some()).count();
    // 300 good ones and the valid first descriptor of the bad batch.
    assert_eq!(tagged_count, 301);
}

#[test]
fn self_draining_unit_is_consumed_by_its_waiters() {
    // No consumer thread: the submitters' IQH and FSTS reads run the unit, through wraps, a
    // full ring (16 slots, 3 producers) and rejected descriptors. Under Miri's weak memory
    // this found recovery reading a `published` older than the head (fixed in `head_position`).
    let width = DescriptorWidth::Bits128;
    let unit = SimUnit::new(width, 16, STATUS_PHYS);
    let mem = SimMemory::new(16, width);
    let regs = unit.self_draining(&mem);
    let q =
        match InvalidationQueue::with_entries(regs, mem.memory(), config(width, 50_000_000, 1), 16)
        {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
    std::thread::scope(|s| {
        for p in 0..3u16 {
            let q = &q;
            s.spawn(move || {
                for i in 0..300u64 {
                    let bad = i % 7 == u64::from(p);
                    // Reserved bit 8 of an IOTLB descriptor.
                    let second = if bad {
                        Descriptor::Raw([0x132, 0, 0, 0])
                    } else {
                        tagged(p, 2 * i + 1)
                    };
                    match q.submit_and_wait([tagged(p, 2 * i), second]) {
                        Ok(()) => assert!(!bad, "producer {p}: error at {i} not reported"),
                        Err(QiError::InvalidDescriptor { index: 1, .. }) if bad => {}
                        Err(e) => panic!("producer {p} at {i}: {e}"),
                    }
                }
            });
        }
    });
    // Everything submitted was consumed.
    assert_eq!(
        unit.head.load(Ordering::Acquire),
        unit.tail.value.load(Ordering::Acquire)
    );
    assert_eq!(q.submitted().1, 900);
}

#[test]
fn simulated_wait_latency_delays_completion() {
    // A wait completes no sooner than the latency after its IQT write, whoever polls, and two
    // producers' waits still all complete (through wraps of a 16-slot ring).
    let latency = std::time::Duration::from_millis(2);
    let width = DescriptorWidth::Bits128;
    let unit = SimUnit::new(width, 16, STATUS_PHYS);
    let mem = SimMemory::new(16, width);
    let regs = unit.self_draining_with_latency(&mem, latency);
    let q =
        match InvalidationQueue::with_entries(regs, mem.memory(), config(width, u32::MAX, 1), 16) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
    let began = std::time::Instant::now();
    if let Err(e) = q.submit_and_wait([tagged(0, 0)]) {
        panic!("{e}");
    }
    assert!(
        began.elapsed() >= latency,
        "completed after {:?}",
        began.elapsed()
    );
    std::thread::scope(|s| {
        for p in 0..2u16 {
            let q = &q;
            s.spawn(move || {
                for i in 0..5u64 {
                    let start = std::time::Instant::now();
                    if let Err(e) = q.submit_and_wait([tagged(p, 2 * i), tagged(p, 2 * i + 1)]) {
                        panic!("producer {p}: {e}");
                    }
                    assert!(start.elapsed() >= latency);
                }
            });
        }
    });
    assert_eq!(
        unit.head.load(Ordering::Acquire),
        unit.tail.value.load(Ordering::Acquire)
    );
}

#[test]
fn rejected_wait_is_reported_at_once() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 1000, 1));
    let memory = mem.memory();
    let t = q.submit([]).unwrap();
    // Corrupt the wait in place (reserved bit 8), as a stray write would.
    mem.descriptors[0].fetch_or(1 << 8, Ordering::Relaxed);
    assert_eq!(unit.step(&memory), Step::Rejected);
    assert_eq!(
        q.wait(t),
        Err(QiError::InvalidDescriptor {
            index: 0,
            info: QueueErrorInfo::ReservedField
        })
    );
}

#[test]
fn device_tlb_timeout_drops_waits_in_flight() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 1000, 1));
    let memory = mem.memory();
    let t = q.submit([tagged(1, 1)]).unwrap();
    unit.inject_ite(0x0100);
    assert_eq!(unit.step(&memory), Step::Stopped);
    assert_eq!(
        q.wait(t),
        Err(QiError::DeviceTlbTimeout {
            source: SourceId::from_raw(0x0100)
        })
    );
    assert_eq!(unit.fsts.load(Ordering::Relaxed), 0);
    // Later batches complete.
    let later = q.submit([tagged(1, 2)]).unwrap();
    while let Step::Executed(_) = unit.step(&memory) {}
    assert_eq!(q.wait(later), Ok(()));
}

#[test]
fn completion_error_is_cleared_and_reported() {
    let unit = SimUnit::new(DescriptorWidth::Bits128, 8, STATUS_PHYS);
    let mem = SimMemory::new(8, DescriptorWidth::Bits128);
    let q = queue(&unit, &mem, config(DescriptorWidth::Bits128, 1000, 1));
    unit.iqercd.store(0x0123 << 48, Ordering::Relaxed);
    unit.fsts.store(FSTS_ICE, Ordering::Relaxed);
    let r = q.recover();
    assert_eq!(r.completion_error, Some(SourceId::from_raw(0x0123)));
    assert_eq!(unit.fsts.load(Ordering::Relaxed), 0);
    assert_eq!(q.recover(), Recovered::default());
}

#[test]
fn frames_from_the_hal() {
    use iommu::hal::host::HostHal;
    let hal = HostHal::new();
    let frames =
        QueueFrames::allocate(&hal, QueueSize::ONE_PAGE, DescriptorWidth::Bits256).unwrap();
    assert_eq!(hal.live_frames(), 2);
    {
        let memory = frames.memory();
        let status_phys = memory.status_phys.as_u64();
        let unit = SimUnit::new(DescriptorWidth::Bits256, 128, status_phys);
        let cfg = QueueConfig::for_unit(ExtendedCapability(1 << 43), QueueSize::ONE_PAGE);
        let q = InvalidationQueue::new(&unit, memory, cfg).unwrap();
        assert_eq!(q.iqa_value(), frames.ring().as_u64() | 1 << 11);
        let t = q.submit([tagged(1, 1)]).unwrap();
        let memory = frames.memory();
        while let Step::Executed(_) = unit.step(&memory) {}
        assert_eq!(q.wait(t), Ok(()));
    }
    // SAFETY: the queue and the simulated unit are gone.
    unsafe { frames.free() };
    assert_eq!(hal.live_frames(), 0);
}
