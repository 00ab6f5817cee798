//! Loom model of the command queue protocol: two producers and a simulated SMMU consumer on a
//! queue too small for both submissions at once, so every interleaving of reservation,
//! publication in order, full-queue waits, wrap and CMD_SYNC completion is explored; the queue
//! slots are loom cells, so a slot written while the consumer may read it fails the model.
//!
//! Run with (under a minute on two cores):
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-smmu2 \
//!  cargo test -p iommu-smmuv3 --lib --release cmdq::loom_model`

extern crate std;

use loom::sync::Arc;
use loom::thread;

use super::*;
use crate::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};

struct Regs(Arc<SimulatedSmmu>);

impl CmdqRegisters for Regs {
    fn read_cons(&self) -> u32 {
        self.0.read_cons()
    }
    fn write_prod(&self, prod: u32) {
        self.0.write_prod(prod)
    }
    fn read_gerror(&self) -> u32 {
        self.0.read_gerror()
    }
    fn read_gerrorn(&self) -> u32 {
        self.0.read_gerrorn()
    }
    fn write_gerrorn(&self, value: u32) {
        self.0.write_gerrorn(value)
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

/// Runs the consumer until it has consumed `total` commands; returns the StreamIDs of the
/// CFGI_STE commands in execution order. `illegal` is refused with CERROR_ILL.
fn consume(smmu: &SimulatedSmmu, mem: &HeapQueueMemory<2>, total: usize, illegal: Option<RawCommand>) -> std::vec::Vec<u64> {
    let mut done = 0;
    let mut sids = std::vec::Vec::new();
    while done < total {
        let step = smmu.step(mem, |raw| {
            if Some(raw) == illegal {
                Err(CommandErrorCode::Illegal)
            } else {
                Ok(())
            }
        });
        match step {
            SimStep::Consumed(raw) => {
                done += 1;
                if raw[0] & 0xff == 0x03 {
                    sids.push(raw[0] >> 32);
                }
            }
            SimStep::Refused(..) | SimStep::Idle | SimStep::Halted => thread::yield_now(),
        }
    }
    sids
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    // Every poll of a waiting thread is a branch: allow long waits within one execution.
    builder.max_branches = builder.max_branches.max(50_000);
    builder.check(f);
}

fn queue(log2: u8) -> (Arc<CommandQueue<Regs, Mem>>, Arc<SimulatedSmmu>, Arc<HeapQueueMemory<2>>) {
    let smmu = Arc::new(SimulatedSmmu::new(log2));
    let mem = Arc::new(HeapQueueMemory::<2>::new(log2));
    match CommandQueue::new(Regs(smmu.clone()), Mem(mem.clone()), 10_000) {
        Ok(q) => (Arc::new(q), smmu, mem),
        Err(e) => panic!("{e}"),
    }
}

/// Two producers race for the slots of a 2-entry queue and publish in reservation order:
/// each gets its own slot, PROD covers both only once both are written (a slot read before
/// its write fails the model), and both CMD_SYNCs complete.
#[test]
fn two_producers_reserve_and_publish_in_order() {
    model(|| {
        let (q, smmu, mem) = queue(1);
        let producers: std::vec::Vec<_> = [1u64, 2]
            .into_iter()
            .map(|sid| {
                let q = q.clone();
                thread::spawn(move || assert_eq!(q.submit(&[cfgi(sid)]), Ok(())))
            })
            .collect();
        let mut sids = consume(&smmu, &mem, 2, None);
        for p in producers {
            assert!(p.join().is_ok());
        }
        sids.sort_unstable();
        assert_eq!(sids, [1, 2]);
    });
}

/// A second producer finds the 2-entry queue full, waits for the consumer, wraps, and both
/// producers' CMD_SYNCs complete after their commands ran exactly once.
#[test]
fn full_queue_wait_wrap_and_sync() {
    model(|| {
        let (q, smmu, mem) = queue(1);
        let p1 = {
            let q = q.clone();
            thread::spawn(move || assert_eq!(q.submit_and_sync(&[cfgi(1)]), Ok(())))
        };
        let p2 = {
            let q = q.clone();
            thread::spawn(move || assert_eq!(q.sync(), Ok(())))
        };
        let sids = consume(&smmu, &mem, 3, None);
        assert!(p1.join().is_ok());
        assert!(p2.join().is_ok());
        assert_eq!(sids, [1]);
    });
}

/// An illegal command stops the consumer; the waiting submitter recovers it (the slot is
/// rewritten while the consumer is stopped: a race would fail the model), gets CERROR_ILL for
/// exactly that command, and a concurrent producer's CMD_SYNC completes.
#[test]
fn illegal_command_is_recovered() {
    model(|| {
        let (q, smmu, mem) = queue(2);
        let bad: RawCommand = [0, 0];
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
            thread::spawn(move || assert_eq!(q.sync(), Ok(())))
        };
        // The replaced command and two CMD_SYNCs.
        let sids = consume(&smmu, &mem, 3, Some(bad));
        assert!(p1.join().is_ok());
        assert!(p2.join().is_ok());
        assert!(sids.is_empty());
    });
}
