//! Loom model of the command queue protocol: producers and a simulated SMMU consumer on queues
//! small enough that the interleavings of reservation, ready marks, the combining publisher
//! (lock taken or request handed to its holder), full-queue waits, wrap, CMD_SYNC completion
//! and error recovery are explored (up to 3 preemptions by default); the queue slots are loom
//! cells, so a slot the SMMU reads while (or before) its producer writes it fails the model.
//!
//! Run with (about a minute on two cores, plus the loom build):
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-cmdq/loom \
//!  cargo test -p iommu-smmuv3 --lib --release cmdq::loom_model`
//! (`LOOM_MAX_PREEMPTIONS=N` overrides the bound.) Checked to fail if the space check lets a
//! producer overwrite an unconsumed slot, if the publisher publishes past a batch not yet
//! marked ready (PROD up to `reserved`), if a ready mark is stored `Relaxed` (the entries are
//! not ordered before the PROD write), or if the holder leaves the lock without taking a
//! request handed to it (a plain store instead of the compare-and-swap).

extern crate std;

use loom::sync::{Arc, Mutex};
use loom::thread;

use super::*;
use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};

/// The simulated SMMU, run by whoever polls it: every CONS read first lets the consumer take
/// one step. The SMMU thus makes progress concurrently with the other producer, in whichever
/// thread polls, while no thread ever spins without progress being possible (loom explores
/// every choice at every spin, so two threads spinning against each other never finish).
struct Regs {
    smmu: Arc<SimulatedSmmu>,
    mem: Arc<HeapQueueMemory<2>>,
    /// Refused with CERROR_ILL.
    illegal: Option<RawCommand>,
    /// What the consumer executed: CFGI_STE StreamIDs, or `u64::MAX` for a CMD_SYNC. Its lock
    /// is also held across a step: the SMMU is one consumer, whichever thread runs it.
    executed: Arc<Mutex<std::vec::Vec<u64>>>,
}

impl CmdqRegisters for Regs {
    fn read_cons(&self) -> u32 {
        let mut log = self.executed.lock().unwrap_or_else(|e| e.into_inner());
        let step = self.smmu.step(&*self.mem, |raw| {
            if Some(raw) == self.illegal {
                Err(CommandErrorCode::Illegal)
            } else {
                Ok(())
            }
        });
        if let SimStep::Consumed(raw) = step {
            log.push(if raw[0] & 0xff == 0x03 {
                raw[0] >> 32
            } else {
                u64::MAX
            });
        }
        drop(log);
        self.smmu.read_cons()
    }
    fn write_prod(&self, prod: u32) {
        self.smmu.write_prod(prod)
    }
    fn read_gerror(&self) -> u32 {
        self.smmu.read_gerror()
    }
    fn read_gerrorn(&self) -> u32 {
        self.smmu.read_gerrorn()
    }
    fn acknowledge_gerror(&self, mask: u32) -> u32 {
        self.smmu.acknowledge_gerror(mask)
    }
}

struct Mem(Arc<HeapQueueMemory<2>>);

impl QueueMemory<2> for Mem {
    fn log2_entries(&self) -> u8 {
        self.0.log2_entries()
    }
    unsafe fn write(&self, index: u32, entry: [u64; 2]) {
        // SAFETY: forwarded.
        unsafe { self.0.write(index, entry) }
    }
    unsafe fn read(&self, index: u32) -> [u64; 2] {
        // SAFETY: forwarded.
        unsafe { self.0.read(index) }
    }
}

/// CMD_CFGI_STE for StreamID `sid`.
fn cfgi(sid: u64) -> RawCommand {
    [0x03 | sid << 32, 1]
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    // Every poll of a waiting thread is a branch: allow long waits within one execution.
    builder.max_branches = builder.max_branches.max(50_000);
    builder.check(f);
}

type Executed = Arc<Mutex<std::vec::Vec<u64>>>;

fn queue(log2: u8, illegal: Option<RawCommand>) -> (Arc<CommandQueue<Regs, Mem>>, Executed) {
    let smmu = Arc::new(SimulatedSmmu::new(log2));
    let mem = Arc::new(HeapQueueMemory::<2>::new(log2));
    let executed = Arc::new(Mutex::new(std::vec::Vec::new()));
    let regs = Regs {
        smmu,
        mem: mem.clone(),
        illegal,
        executed: executed.clone(),
    };
    match CommandQueue::new(regs, Mem(mem), 1_000) {
        Ok(q) => (Arc::new(q), executed),
        Err(e) => panic!("{e}"),
    }
}

fn executed(e: &Executed) -> std::vec::Vec<u64> {
    e.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Two producers race for the slots of a 2-entry queue and publish through the combining
/// publisher: each gets its own slot, once both `submit`s returned PROD covers both (no request
/// handed to the lock holder is lost), the SMMU never reads a slot before it is written (loom
/// checks the cells), and both commands run, each once.
#[test]
fn two_producers_reserve_and_publish_in_order() {
    model(|| {
        let (q, done) = queue(1, None);
        let producers: std::vec::Vec<_> = [1u64, 2]
            .into_iter()
            .map(|sid| {
                let q = q.clone();
                thread::spawn(move || assert_eq!(q.submit(&[cfgi(sid)]), Ok(())))
            })
            .collect();
        for p in producers {
            assert!(p.join().is_ok());
        }
        // The joins order the publishers' stores before this load.
        assert_eq!(q.publisher.published.load(Ordering::Relaxed), 2);
        // Let the SMMU finish.
        while q.registers().read_cons() & 3 != 2 {}
        let mut sids = executed(&done);
        sids.sort_unstable();
        assert_eq!(sids, [1, 2]);
    });
}

/// Each producer submits a command and a CMD_SYNC into a 2-entry queue: the second finds it
/// full and waits for the SMMU, the queue wraps, both CMD_SYNCs complete only after their
/// command ran, and every command runs exactly once.
#[test]
fn full_queue_wait_wrap_and_sync() {
    model(|| {
        let (q, done) = queue(1, None);
        let producers: std::vec::Vec<_> = [1u64, 2]
            .into_iter()
            .map(|sid| {
                let (q, done) = (q.clone(), done.clone());
                thread::spawn(move || {
                    assert_eq!(q.submit_and_sync(&[cfgi(sid)]), Ok(()));
                    // The command ran before the CMD_SYNC completed.
                    assert!(executed(&done).contains(&sid));
                })
            })
            .collect();
        for p in producers {
            assert!(p.join().is_ok());
        }
        let e = executed(&done);
        assert_eq!(e.len(), 4);
        assert_eq!(e.iter().filter(|&&x| x == 1).count(), 1);
        assert_eq!(e.iter().filter(|&&x| x == 2).count(), 1);
    });
}

/// An illegal command stops the SMMU; a waiting submitter recovers it (rewriting the slot while
/// the SMMU is stopped: a race would fail the model) and gets CERROR_ILL for exactly that
/// command, while the other producer's command and CMD_SYNC complete normally.
#[test]
fn illegal_command_is_recovered() {
    model(|| {
        let bad: RawCommand = [0, 0];
        let (q, done) = queue(2, Some(bad));
        let p1 = {
            let q = q.clone();
            thread::spawn(move || match q.submit_and_sync(&[bad]) {
                Err(CmdqError::Command(f)) => {
                    assert_eq!((f.position, f.code), (0, CommandErrorCode::Illegal))
                }
                other => panic!("expected CERROR_ILL, got {other:?}"),
            })
        };
        let p2 = {
            let q = q.clone();
            thread::spawn(move || assert_eq!(q.submit_and_sync(&[cfgi(2)]), Ok(())))
        };
        assert!(p1.join().is_ok());
        assert!(p2.join().is_ok());
        // The replaced command ran as a CMD_SYNC: three syncs and CFGI_STE 2.
        let e = executed(&done);
        assert_eq!(e.len(), 4);
        assert_eq!(e.iter().filter(|&&x| x == 2).count(), 1);
    });
}

/// A slow producer (its reservation first, descheduled before it writes and marks it) delays
/// the batches behind it but blocks nobody: a later `submit` returns at once on this thread,
/// with no other thread to wait for, publishing nothing past the hole. Then the slow producer
/// resumes while a third submits with a CMD_SYNC, concurrently: each one's CMD_SYNC completes
/// only after its own command and every command ahead of it ran, the SMMU never reads a slot
/// before it is written, and everything runs once, in reservation order.
#[test]
fn a_slow_producer_delays_but_never_blocks_the_others() {
    model(|| {
        let (q, done) = queue(3, None);
        let slow = match q.reserve(2) {
            Ok(start) => start,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(q.submit(&[cfgi(2)]), Ok(()));
        assert_eq!(q.publisher.published.load(Ordering::Relaxed), slow);
        let resumed = {
            let (q, done) = (q.clone(), done.clone());
            thread::spawn(move || {
                q.fill(slow, &[cfgi(1)], true);
                q.mark_ready(slow, slow + 2);
                q.publish();
                assert_eq!(q.wait_consumed(slow + 2, "CMD_SYNC completion"), Ok(()));
                assert!(executed(&done).contains(&1));
            })
        };
        let fast = {
            let (q, done) = (q.clone(), done.clone());
            thread::spawn(move || {
                assert_eq!(q.submit_and_sync(&[cfgi(3)]), Ok(()));
                let e = executed(&done);
                assert!([1, 2, 3].iter().all(|sid| e.contains(sid)));
            })
        };
        assert!(resumed.join().is_ok());
        assert!(fast.join().is_ok());
        assert_eq!(executed(&done), [1, u64::MAX, 2, 3, u64::MAX]);
    });
}
