//! The command queue against a simulated SMMU consumer thread: many producers, small queues
//! (wrap, full), syncs, an injected illegal command, timeouts, and hardware misbehaviour.

// The planner takes a slice of IOVA ranges; one-range slices are the common case.
#![allow(clippy::single_range_in_vec_init)]

extern crate std;

use std::sync::atomic::AtomicBool as StdBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::vec::Vec;

use super::*;
use crate::attributes::Granule;
use crate::command::{opcode, Command};
use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};
use crate::unit::invalidate::{plan_invalidation, InvalidationPolicy, InvalidationScope};

/// A simulated SMMU consumer running on its own thread until dropped, recording what it
/// executed.
struct Consumer {
    stop: Arc<StdBool>,
    handle: Option<thread::JoinHandle<()>>,
    executed: Arc<Mutex<Vec<Command>>>,
}

impl Consumer {
    fn start(smmu: Arc<SimulatedSmmu>, mem: Arc<HeapQueueMemory<2>>) -> Self {
        let stop = Arc::new(StdBool::new(false));
        let executed = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, executed) = (stop.clone(), executed.clone());
            thread::spawn(move || {
                let mut idle = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let step = smmu.step(&*mem, |raw| {
                        let cmd = SimulatedSmmu::decode_or_illegal(raw)?;
                        if let Ok(mut log) = executed.lock() {
                            log.push(cmd);
                        }
                        Ok(())
                    });
                    if matches!(step, SimStep::Idle | SimStep::Halted) {
                        idle += 1;
                        if idle.is_multiple_of(64) {
                            thread::yield_now();
                        }
                    }
                }
            })
        };
        Self {
            stop,
            handle: Some(handle),
            executed,
        }
    }

    fn executed(&self) -> Vec<Command> {
        self.executed.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The stream ids of the CMD_CFGI_STEs executed (what `tagged` encodes), in order.
    fn executed_sids(&self) -> Vec<u32> {
        self.executed()
            .iter()
            .filter_map(|c| match c {
                Command::CfgiSte { sid, .. } => Some(*sid),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

type Queue = CommandQueue<Arc<SimulatedSmmu>, Arc<HeapQueueMemory<2>>>;

impl CmdqRegisters for Arc<SimulatedSmmu> {
    fn read_cons(&self) -> u32 {
        (**self).read_cons()
    }
    fn write_prod(&self, prod: u32) {
        (**self).write_prod(prod)
    }
    fn read_gerror(&self) -> u32 {
        (**self).read_gerror()
    }
    fn read_gerrorn(&self) -> u32 {
        (**self).read_gerrorn()
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        (**self).acknowledge_gerror(mask)
    }
}

impl QueueMemory<2> for Arc<HeapQueueMemory<2>> {
    fn log2_entries(&self) -> u8 {
        (**self).log2_entries()
    }
    unsafe fn write(&self, index: u32, entry: [u64; 2]) {
        // SAFETY: forwarded.
        unsafe { (**self).write(index, entry) }
    }
    unsafe fn read(&self, index: u32) -> [u64; 2] {
        // SAFETY: forwarded.
        unsafe { (**self).read(index) }
    }
}

fn setup(log2: u8, budget: u32) -> (Arc<Queue>, Arc<SimulatedSmmu>, Arc<HeapQueueMemory<2>>) {
    let smmu = Arc::new(SimulatedSmmu::new(log2));
    let mem = Arc::new(HeapQueueMemory::<2>::new(log2));
    let q = CommandQueue::new(smmu.clone(), mem.clone(), budget).unwrap_or_else(|e| panic!("{e}"));
    (Arc::new(q), smmu, mem)
}

/// A command naming producer `p`'s `i`th command.
fn tagged(p: u32, i: u32) -> RawCommand {
    match (Command::CfgiSte {
        sid: p << 20 | i,
        leaf: true,
    })
    .encode()
    {
        Ok(raw) => raw,
        Err(e) => panic!("{e}"),
    }
}

const BUDGET: u32 = 50_000_000;

#[test]
fn single_producer_syncs_and_wraps() {
    let (q, smmu, mem) = setup(3, BUDGET);
    let consumer = Consumer::start(smmu, mem);
    for round in 0..100u32 {
        let cmds: Vec<RawCommand> = (0..(round % 7)).map(|i| tagged(0, round * 8 + i)).collect();
        assert_eq!(q.submit_and_sync(&cmds), Ok(()));
    }
    let sids = consumer.executed_sids();
    let expected: Vec<u32> = (0..100u32)
        .flat_map(|r| (0..(r % 7)).map(move |i| r * 8 + i))
        .collect();
    assert_eq!(sids, expected);
    assert_eq!(
        consumer
            .executed()
            .iter()
            .filter(|c| matches!(c, Command::Sync { .. }))
            .count(),
        100
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "4,000 commands from 4 spinning threads: far too long under Miri; several_illegal_commands_from_several_producers runs producers concurrently there"
)]
fn many_producers_every_command_once_in_order() {
    const PRODUCERS: u32 = 4;
    const PER_PRODUCER: u32 = 1000;
    // 8 entries: the queue wraps constantly and is full most of the time.
    let (q, smmu, mem) = setup(3, BUDGET);
    let consumer = Consumer::start(smmu, mem);
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                let mut i = 0;
                while i < PER_PRODUCER {
                    // Batches of 1..=4 commands, every fourth without a sync.
                    let n = (1 + (i + p) % 4).min(PER_PRODUCER - i);
                    let cmds: Vec<RawCommand> = (i..i + n).map(|k| tagged(p, k)).collect();
                    let r = if (i / 4) % 4 == 3 {
                        q.submit(&cmds)
                    } else {
                        q.submit_and_sync(&cmds)
                    };
                    assert_eq!(r, Ok(()), "producer {p} at {i}");
                    i += n;
                }
                assert_eq!(q.sync(), Ok(()));
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok());
    }
    let executed = consumer.executed();
    let mut next = [0u32; PRODUCERS as usize];
    for c in &executed {
        if let Command::CfgiSte { sid, .. } = c {
            let (p, i) = ((sid >> 20) as usize, sid & 0xf_ffff);
            assert_eq!(
                i, next[p],
                "producer {p}: command {i} out of order or repeated"
            );
            next[p] += 1;
        }
    }
    assert_eq!(
        next, [PER_PRODUCER; PRODUCERS as usize],
        "every command executed exactly once"
    );
    assert!(executed.iter().any(|c| matches!(c, Command::Sync { .. })));
}

#[test]
fn illegal_command_is_reported_skipped_and_the_queue_recovers() {
    let (q, smmu, mem) = setup(4, BUDGET);
    let consumer = Consumer::start(smmu, mem);
    // Other producers keep the queue busy meanwhile.
    let others: Vec<_> = (1..3u32)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    assert_eq!(q.submit_and_sync(&[tagged(p, i)]), Ok(()));
                }
            })
        })
        .collect();
    // Opcode 0 is no command: the SMMU answers CERROR_ILL.
    let illegal: RawCommand = [0x0000_0042_0000_0000, 0];
    let cmds = [tagged(0, 0), illegal, tagged(0, 1)];
    match q.submit_and_sync(&cmds) {
        Err(CmdqError::Command(failure)) => {
            assert_eq!(failure.position, 1);
            assert_eq!(failure.code, CommandErrorCode::Illegal);
            assert_eq!(failure.command, illegal);
            assert!((failure.queue_index as usize) < q.capacity());
        }
        other => panic!("expected a CERROR_ILL report, got {other:?}"),
    }
    // The queue keeps working, for this producer and the others.
    assert_eq!(q.submit_and_sync(&[tagged(0, 2)]), Ok(()));
    for t in others {
        assert!(t.join().is_ok());
    }
    let executed = consumer.executed();
    let mine: Vec<u32> = executed
        .iter()
        .filter_map(|c| match c {
            Command::CfgiSte { sid, .. } if sid >> 20 == 0 => Some(*sid),
            _ => None,
        })
        .collect();
    assert_eq!(
        mine,
        [0, 1, 2],
        "the commands around the illegal one all ran"
    );
    for p in 1..3u32 {
        let n = executed
            .iter()
            .filter(|c| matches!(c, Command::CfgiSte { sid, .. } if sid >> 20 == p))
            .count();
        assert_eq!(n, 200);
    }
}

#[test]
fn several_illegal_commands_from_several_producers() {
    let (q, smmu, mem) = setup(3, BUDGET);
    let _consumer = Consumer::start(smmu, mem);
    let threads: Vec<_> = (0..3u32)
        .map(|p| {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..100u32 {
                    let bad = i % 5 == p;
                    let cmds = if bad {
                        std::vec![tagged(p, i), [0xff, 0]]
                    } else {
                        std::vec![tagged(p, i)]
                    };
                    match q.submit_and_sync(&cmds) {
                        Ok(()) => assert!(!bad, "producer {p}: error at {i} not reported"),
                        Err(CmdqError::Command(f)) => {
                            assert!(bad, "producer {p}: unexpected failure at {i}: {f:?}");
                            assert_eq!((f.position, f.code), (1, CommandErrorCode::Illegal));
                        }
                        Err(e) => panic!("producer {p}: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok());
    }
}

#[test]
fn batch_and_invalidation_plan() {
    let (q, smmu, mem) = setup(4, BUDGET);
    let consumer = Consumer::start(smmu, mem);
    let policy = InvalidationPolicy {
        range_invalidation: false,
        max_commands: 64,
    };
    let ranges = [0x10_0000..0x13_0000];
    let mut batch = q.batch();
    for c in plan_invalidation(
        InvalidationScope::Stage1 { vmid: 0, asid: 3 },
        &ranges,
        Granule::Size4K,
        true,
        &policy,
    ) {
        assert_eq!(batch.push(c), Ok(()));
    }
    assert_eq!(batch.finish(), Ok(()));
    let executed = consumer.executed();
    let vas = executed
        .iter()
        .filter(|c| matches!(c, Command::TlbiNhVa { asid: 3, .. }))
        .count();
    assert_eq!(vas, 0x30);
    // 48 commands in batches of at most 15 (16-entry queue) -> 4 syncs.
    assert_eq!(
        executed
            .iter()
            .filter(|c| matches!(c, Command::Sync { .. }))
            .count(),
        4
    );
    assert_eq!(q.issue(&Command::TlbiNsnhAll), Ok(()));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "spins through the whole poll budget: minutes under Miri"
)]
fn sync_times_out_without_a_consumer() {
    let (q, _smmu, _mem) = setup(2, 1000);
    assert_eq!(
        q.submit_and_sync(&[tagged(0, 0)]),
        Err(CmdqError::Timeout(Timeout {
            waiting_for: "CMD_SYNC completion"
        }))
    );
    // The queue now holds 2 of 4 entries; 3 more do not fit until the SMMU moves.
    assert_eq!(
        q.submit(&[tagged(0, 1), tagged(0, 2), tagged(0, 3)]),
        Err(CmdqError::Timeout(Timeout {
            waiting_for: "command queue space"
        }))
    );
    assert_eq!(q.submit(&[tagged(0, 1), tagged(0, 2)]), Ok(()));
}

#[test]
fn stuck_queue_resumes_when_the_smmu_does() {
    let smmu = Arc::new(SimulatedSmmu::new(2));
    let mem = Arc::new(HeapQueueMemory::<2>::new(2));
    let mut q =
        CommandQueue::new(smmu.clone(), mem.clone(), 1000).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        q.submit_and_sync(&[tagged(0, 0)]),
        Err(CmdqError::Timeout(_))
    ));
    // The SMMU comes alive: the earlier command runs and later syncs complete.
    q.set_poll_budget(BUDGET);
    let consumer = Consumer::start(smmu, mem);
    for i in 1..20 {
        assert_eq!(q.submit_and_sync(&[tagged(0, i)]), Ok(()));
    }
    let sids: Vec<u32> = consumer.executed_sids();
    assert_eq!(sids, (0..20).collect::<Vec<u32>>());
}

#[test]
fn oversized_batches_are_refused() {
    let (q, _smmu, _mem) = setup(2, 10);
    let cmds = [tagged(0, 0); 4];
    assert_eq!(
        q.submit_and_sync(&cmds),
        Err(CmdqError::BatchTooLarge {
            entries: 5,
            capacity: 4
        })
    );
    assert_eq!(q.submit(&cmds[..3]), Ok(()));
    assert!(matches!(
        q.issue(&Command::CfgiSteRange { sid: 0, range: 40 }),
        Err(CmdqError::Encode(_))
    ));
}

#[test]
fn bad_queue_sizes_are_refused() {
    let smmu = SimulatedSmmu::new(3);
    for log2 in [0u8, 20] {
        let mem = HeapQueueMemory::<2>::new(log2.min(4));
        struct Sized(HeapQueueMemory<2>, u8);
        impl QueueMemory<2> for Sized {
            fn log2_entries(&self) -> u8 {
                self.1
            }
            unsafe fn write(&self, i: u32, e: [u64; 2]) {
                // SAFETY: forwarded.
                unsafe { self.0.write(i, e) }
            }
            unsafe fn read(&self, i: u32) -> [u64; 2] {
                // SAFETY: forwarded.
                unsafe { self.0.read(i) }
            }
        }
        assert!(matches!(
            CommandQueue::new(&smmu, Sized(mem, log2), 10),
            Err(CmdqError::BadQueueSize(l)) if l == log2
        ));
    }
}

/// Registers whose CONS jumps ahead of everything submitted.
struct RunawayCons;

impl CmdqRegisters for RunawayCons {
    fn read_cons(&self) -> u32 {
        static READS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // 0 at construction, then 5 although nothing was submitted.
        if READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
            0
        } else {
            5
        }
    }
    fn write_prod(&self, _: u32) {}
    fn read_gerror(&self) -> u32 {
        0
    }
    fn read_gerrorn(&self) -> u32 {
        0
    }
    fn acknowledge_gerror(&self, _: u32) -> u32 {
        0
    }
}

#[test]
fn cons_past_prod_is_an_error_not_a_hang() {
    let mem = HeapQueueMemory::<2>::new(3);
    let q = CommandQueue::new(RunawayCons, &mem, 100).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.sync(), Err(CmdqError::ConsOutOfRange { cons: 5 }));
}

/// A producer descheduled between its reservation and its ready mark holds back only the
/// batches after it: later producers return from `submit` at once (nothing of theirs reaches
/// PROD yet, and nobody waits), and when the slow one marks ready its own publish writes PROD
/// once for everything ready behind it.
#[test]
fn a_slow_producer_delays_only_later_batches_and_publishes_them_all() {
    let smmu = Arc::new(SimulatedSmmu::new(3));
    let mem = Arc::new(HeapQueueMemory::<2>::new(3));
    let mut q =
        CommandQueue::new(smmu.clone(), mem.clone(), 1000).unwrap_or_else(|e| panic!("{e}"));
    // The slow producer reserves two entries and is descheduled.
    let slow = q.reserve(2);
    assert_eq!(slow, Ok(0));
    // Two later producers submit: neither waits, neither can be published past the hole.
    assert_eq!(q.submit(&[tagged(1, 0)]), Ok(()));
    assert_eq!(q.submit(&[tagged(2, 0), tagged(2, 1)]), Ok(()));
    assert_eq!(smmu.read_cons(), 0);
    assert_eq!(q.publisher.published.load(Ordering::Relaxed), 0);
    // A CMD_SYNC behind the hole cannot complete: its wait times out, the queue stays usable.
    assert_eq!(
        q.sync(),
        Err(CmdqError::Timeout(Timeout {
            waiting_for: "CMD_SYNC completion"
        }))
    );
    // The slow producer resumes: one publish covers its batch and all four behind it.
    q.fill(0, &[tagged(0, 0)], true);
    q.mark_ready(0, 2);
    q.publish();
    assert_eq!(q.publisher.published.load(Ordering::Relaxed), 6);
    let consumer = Consumer::start(smmu, mem);
    q.set_poll_budget(BUDGET);
    assert_eq!(q.sync(), Ok(()));
    let sids: Vec<u32> = consumer.executed_sids();
    assert_eq!(sids, [0, 1 << 20, 2 << 20, 2 << 20 | 1]);
}

#[test]
fn register_values() {
    // CMDQ_BASE: ADDR [51:5] | LOG2SIZE [4:0] | RA bit 62.
    assert_eq!(
        queue_base_register(PhysAddr::new(0x4008_0000), 8, true),
        0x4000_0000_4008_0008
    );
    assert_eq!(
        queue_base_register(PhysAddr::new(0x4008_0000), 19, false),
        0x4008_0013
    );
    assert_eq!(
        CommandErrorCode::from_cons(0x0100_0003),
        CommandErrorCode::Illegal
    );
    assert_eq!(
        CommandErrorCode::from_cons(0x0200_0003),
        CommandErrorCode::Abort
    );
    assert_eq!(
        CommandErrorCode::from_cons(0x0300_0003),
        CommandErrorCode::AtcInvalidationSync
    );
    assert_eq!(
        CommandErrorCode::from_cons(0x7f00_0003),
        CommandErrorCode::Reserved(0x7f)
    );
    assert_eq!(
        CommandErrorCode::from_cons(0x8000_0003),
        CommandErrorCode::None
    );
}

#[test]
fn abort_and_atc_errors() {
    // CERROR_ABT: the command is replaced by a CMD_SYNC and reported; CERROR_ATC_INV_SYNC:
    // the failing CMD_SYNC is retried as is and reported.
    let (q, smmu, mem) = setup(3, BUDGET);
    let fail_next: Arc<Mutex<Option<CommandErrorCode>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(StdBool::new(false));
    let consumer = {
        let (fail_next, stop) = (fail_next.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                smmu.step(&*mem, |raw| {
                    let mut f = fail_next.lock().map_err(|_| CommandErrorCode::Illegal)?;
                    match *f {
                        Some(CommandErrorCode::Abort) if raw[0] & 0xff == 0x03 => {
                            Err(f.take().unwrap_or(CommandErrorCode::Abort))
                        }
                        Some(CommandErrorCode::AtcInvalidationSync) if raw[0] & 0xff == 0x46 => {
                            Err(f.take().unwrap_or(CommandErrorCode::AtcInvalidationSync))
                        }
                        _ => Ok(()),
                    }
                });
                thread::yield_now();
            }
        })
    };
    if let Ok(mut f) = fail_next.lock() {
        *f = Some(CommandErrorCode::Abort);
    }
    match q.submit_and_sync(&[tagged(0, 0)]) {
        Err(CmdqError::Command(f)) => {
            assert_eq!((f.position, f.code), (0, CommandErrorCode::Abort))
        }
        other => panic!("{other:?}"),
    }
    if let Ok(mut f) = fail_next.lock() {
        *f = Some(CommandErrorCode::AtcInvalidationSync);
    }
    match q.submit_and_sync(&[tagged(0, 1)]) {
        Err(CmdqError::Command(f)) => {
            assert_eq!(
                (f.position, f.code),
                (1, CommandErrorCode::AtcInvalidationSync)
            );
            assert_eq!(f.command, CMD_SYNC);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.sync(), Ok(()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(consumer.join().is_ok());
}

/// GERRORN is acknowledged bit by bit through one serialised read-modify-write: each caller
/// acknowledges only its own bits and learns whether they were active, and two CPUs
/// acknowledging different errors at once (the queue's CMDQ_ERR, the event drain's
/// EVENTQ_ABT_ERR) never undo each other. A register frame in host memory stands in for the
/// MMIO page; the "SMMU" raises errors only while no acknowledging thread runs.
#[test]
fn gerror_acknowledgements_from_two_cpus_are_not_lost() {
    let mut frame = std::vec![0u64; crate::registers::REGISTER_FRAME_SIZE as usize / 8];
    let base =
        core::ptr::NonNull::new(frame.as_mut_ptr().cast::<crate::registers::SmmuRegisters>())
            .expect("vec pointer");
    // SAFETY: `frame` is a live, 8-byte aligned allocation as large as the register frame, and
    // is only reached through `base` from here on.
    let regs = unsafe { MmioCmdqRegisters::new(base) };
    let gerror = base.as_ptr().cast::<u32>().wrapping_add(0x60 / 4);
    let cmdq = GERROR::CMDQ_ERR::SET.value;
    let abt = GERROR::EVENTQ_ABT_ERR::SET.value;
    let other = GERROR::SFM_ERR::SET.value;
    // Nothing active: nothing acknowledged, nothing written that changes a bit.
    assert_eq!(regs.acknowledge_gerror(cmdq | abt), 0);
    // An error nobody acknowledges stays active through the others' acknowledgements.
    // SAFETY: inside `frame`; no other thread runs.
    unsafe { gerror.write_volatile(gerror.read_volatile() ^ other) };
    for round in 0..500 {
        // SAFETY: as above: the SMMU raises both errors (toggles their GERROR bits).
        unsafe { gerror.write_volatile(gerror.read_volatile() ^ (cmdq | abt)) };
        thread::scope(|s| {
            let r = &regs;
            let a = s.spawn(move || r.acknowledge_gerror(cmdq));
            let b = s.spawn(move || r.acknowledge_gerror(abt));
            assert_eq!(a.join().ok(), Some(cmdq), "round {round}");
            assert_eq!(b.join().ok(), Some(abt), "round {round}");
        });
        let active = regs.read_gerror() ^ regs.read_gerrorn();
        assert_eq!(
            active, other,
            "round {round}: only the unacknowledged error is active"
        );
    }
}

#[test]
fn self_draining_smmu_is_consumed_by_its_waiters() {
    // No consumer thread: the submitters' CONS polls run the SMMU, through wraps, a full queue
    // (8 entries, 3 producers) and illegal commands.
    let smmu = SimulatedSmmu::new(3);
    let mem = HeapQueueMemory::<2>::new(3);
    let regs = smmu.self_draining(&mem, |raw| {
        SimulatedSmmu::decode_or_illegal(raw).map(|_| ())
    });
    let q = CommandQueue::new(regs, &mem, BUDGET).unwrap_or_else(|e| panic!("{e}"));
    thread::scope(|s| {
        for p in 0..3u32 {
            let q = &q;
            s.spawn(move || {
                for i in 0..300u32 {
                    let bad = i % 7 == p;
                    let cmds = if bad {
                        std::vec![tagged(p, i), [0xff, 0]]
                    } else {
                        std::vec![tagged(p, i), tagged(p, i + 1)]
                    };
                    match q.submit_and_sync(&cmds) {
                        Ok(()) => assert!(!bad, "producer {p}: error at {i} not reported"),
                        Err(CmdqError::Command(f)) => {
                            assert!(bad, "producer {p}: unexpected failure at {i}: {f:?}");
                            assert_eq!((f.position, f.code), (1, CommandErrorCode::Illegal));
                        }
                        Err(e) => panic!("producer {p}: {e}"),
                    }
                }
            });
        }
    });
    // Everything submitted was consumed.
    assert_eq!(
        q.consumed.0.load(Ordering::Acquire),
        q.reserved.0.load(Ordering::Relaxed)
    );
}

#[test]
fn simulated_sync_latency_delays_completion() {
    // A CMD_SYNC completes no sooner than the latency after its PROD write, whoever polls,
    // and two producers' syncs still all complete (through wraps of an 8-entry queue).
    let latency = std::time::Duration::from_millis(2);
    let smmu = SimulatedSmmu::new(3);
    let mem = HeapQueueMemory::<2>::new(3);
    let regs = smmu.self_draining_with_latency(&mem, |_| Ok(()), latency);
    let q = CommandQueue::new(regs, &mem, u32::MAX).unwrap_or_else(|e| panic!("{e}"));
    let began = std::time::Instant::now();
    q.submit_and_sync(&[tagged(0, 0)])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        began.elapsed() >= latency,
        "completed after {:?}",
        began.elapsed()
    );
    thread::scope(|s| {
        for p in 0..2u32 {
            let q = &q;
            s.spawn(move || {
                for i in 0..5u32 {
                    let start = std::time::Instant::now();
                    q.submit_and_sync(&[tagged(p, i), tagged(p, i + 1)])
                        .unwrap_or_else(|e| panic!("producer {p}: {e}"));
                    assert!(start.elapsed() >= latency);
                }
            });
        }
    });
    assert_eq!(
        q.consumed.0.load(Ordering::Acquire),
        q.reserved.0.load(Ordering::Relaxed)
    );
}

/// What an attach to a new level-2 stream table, a one-page unmap and a 16-page deferred
/// unmap cost in commands, issued as the unit issues them (each STE step by `submit_and_sync`,
/// an unmap's invalidation in one batch) and counted as the simulated SMMU executed them.
#[test]
fn commands_per_operation_are_the_fewest() {
    use crate::stream_table::{Stage1, StreamTable, StreamTableEntry, StreamTableGeometry};
    use iommu::addr::PhysAddr;
    use iommu::hal::host::HostHal;

    let (q, smmu, mem) = setup(8, BUDGET);
    let consumer = Consumer::start(smmu, mem);
    let opcodes = |from: usize| -> Vec<u8> {
        consumer.executed()[from..]
            .iter()
            .map(Command::opcode)
            .collect()
    };

    // Attach: the STE and its 255 blocking neighbours written before the level-1 descriptor,
    // then CMD_CFGI_STE (Leaf = 0) + CMD_SYNC.
    let hal = HostHal::new();
    let geometry = StreamTableGeometry::two_level(16, 8).unwrap_or_else(|e| panic!("{e}"));
    let mut table = StreamTable::new(&hal, geometry, true).unwrap_or_else(|e| panic!("{e}"));
    let blocking = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x4000)));
    let ste = StreamTableEntry::stage1(Stage1::single_cd(PhysAddr::new(0x8000)));
    let issue = |cmd: Command| q.submit_and_sync(&[cmd.encode()?]);
    let before = consumer.executed().len();
    assert!(table
        .install_with_neighbours(0x308, &ste, &blocking, issue)
        .is_ok());
    assert_eq!(opcodes(before), [opcode::CFGI_STE, opcode::SYNC]);
    assert_eq!(
        consumer.executed()[before],
        Command::CfgiSte {
            sid: 0x308,
            leaf: false
        }
    );
    // SAFETY: the simulated SMMU never reads the table.
    unsafe { table.free() };

    // Unmap: the page's invalidation and one sync, with range invalidation or without.
    let unmap = |pages: u64, ril: bool| -> Vec<u8> {
        let policy = InvalidationPolicy {
            range_invalidation: ril,
            max_commands: InvalidationPolicy::DEFAULT_MAX_COMMANDS,
        };
        let ranges = [0x10_0000..0x10_0000 + pages * 0x1000];
        let before = consumer.executed().len();
        let mut batch = q.batch();
        for c in plan_invalidation(
            InvalidationScope::Stage1 { vmid: 0, asid: 3 },
            &ranges,
            Granule::Size4K,
            true,
            &policy,
        ) {
            assert_eq!(batch.push(c), Ok(()));
        }
        assert_eq!(batch.finish(), Ok(()));
        opcodes(before)
    };
    for ril in [true, false] {
        assert_eq!(unmap(1, ril), [opcode::TLBI_NH_VA, opcode::SYNC]);
    }
    // 16 deferred unmaps of adjacent pages, one gathered range: one range command with RIL
    // (QEMU has it), one per page without; one sync either way.
    assert_eq!(unmap(16, true), [opcode::TLBI_NH_VA, opcode::SYNC]);
    let without = unmap(16, false);
    assert_eq!(without.len(), 17);
    assert_eq!(without.last(), Some(&opcode::SYNC));
}
