//! What the SMMU benchmarks share: a command queue whose simulated SMMU consumes it on a thread
//! of its own (the object-model bench; the queue bench, `cmdq`, has its producers drain it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use iommu_smmuv3::cmdq::CommandQueue;
use iommu_smmuv3::sim::{HeapQueueMemory, SimStep, SimulatedSmmu};

pub type Queue = CommandQueue<&'static SimulatedSmmu, &'static HeapQueueMemory<2>>;

/// A queue of `2^log2` commands, drained by the simulated SMMU's thread until dropped.
pub struct Consumer {
    pub queue: &'static Queue,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Consumer {
    pub fn start(log2: u8) -> Self {
        let smmu: &'static SimulatedSmmu = Box::leak(Box::new(SimulatedSmmu::new(log2)));
        let mem: &'static HeapQueueMemory<2> = Box::leak(Box::new(HeapQueueMemory::new(log2)));
        let queue: &'static Queue = match CommandQueue::new(smmu, mem, u32::MAX) {
            Ok(q) => Box::leak(Box::new(q)),
            Err(e) => panic!("{e}"),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for _ in 0..64 {
                    if smmu.step(mem, |_| Ok(())) != SimStep::Idle {
                        idle = false;
                    }
                }
                // An idle SMMU costs the CPUs nothing: give the core back (on a 2-core machine
                // the producers need it).
                if idle {
                    thread::yield_now();
                }
            }
        });
        Self {
            queue,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
