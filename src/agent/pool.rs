//! The elastic thread pool that runs task managers.
//!
//! A task manager needs a thread only while it has a step to take, but a step may
//! block for as long as the task runs (a `wait`). So the pool reuses idle threads
//! first, starts threads freely up to a small floor, and beyond it starts more only
//! when the queue is *starved*: a monitor thread checks every millisecond whether
//! any queued job was picked up, and if none was, starts as many threads as there
//! are jobs waiting (at most [`BURST`] at a time). Quick jobs (a stub's whole
//! lifecycle) are served by a few busy threads; blocking jobs get a thread each.
//! Threads idle for [`KEEP_ALIVE`] exit.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How long an idle thread waits for work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How often the monitor looks for starvation.
const MONITOR_TICK: Duration = Duration::from_millis(1);

/// The most threads one monitor tick starts.
const BURST: usize = 64;

/// Task-manager threads run little code of their own; the stack is for controllers.
const STACK_SIZE: usize = 512 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    job_ready: Condvar,
    starving: Condvar,
    /// Threads are started freely up to this many.
    floor: usize,
}

struct State {
    queue: VecDeque<Job>,
    idle: usize,
    threads: usize,
    /// Jobs taken from the queue so far; unchanged over a tick means starvation.
    taken: u64,
    monitor_running: bool,
    /// The monitor waits for work, rather than timing a tick.
    monitor_parked: bool,
}

impl Pool {
    /// The pool every task manager of the process shares.
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            Pool::new(cores * 2)
        })
    }

    fn new(floor: usize) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                    taken: 0,
                    monitor_running: false,
                    monitor_parked: false,
                }),
                job_ready: Condvar::new(),
                starving: Condvar::new(),
                floor,
            }),
        }
    }

    /// Runs `job` on a pool thread.
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = self.shared.state.lock();
        state.queue.push_back(Box::new(job));
        if state.idle > 0 && self.shared.job_ready.notify_one() {
            return;
        }
        if state.threads < self.shared.floor {
            self.start_threads(&mut state, 1);
        } else if !state.monitor_running {
            state.monitor_running = true;
            drop(state);
            self.start_monitor();
        } else if state.monitor_parked {
            self.shared.starving.notify_one();
        }
    }

    /// Starts up to `count` threads; on failure the monitor retries at its next tick.
    fn start_threads(&self, state: &mut State, count: usize) {
        for _ in 0..count {
            let shared = Arc::clone(&self.shared);
            let started = std::thread::Builder::new()
                .name("swarmexec-task".into())
                .stack_size(STACK_SIZE)
                .spawn(move || work(&shared));
            match started {
                Ok(_) => state.threads += 1,
                Err(e) => {
                    log::error!(target: "swarmexec", "cannot start a task-manager thread: {e}");
                    return;
                }
            }
        }
    }

    fn start_monitor(&self) {
        let pool = self.clone();
        let started = std::thread::Builder::new()
            .name("swarmexec-pool".into())
            .spawn(move || pool.monitor());
        if let Err(e) = started {
            log::error!(target: "swarmexec", "cannot start the pool monitor: {e}");
            self.shared.state.lock().monitor_running = false;
        }
    }

    /// Starts threads while queued jobs are not being picked up.
    fn monitor(&self) {
        let mut state = self.shared.state.lock();
        loop {
            while state.queue.is_empty() {
                state.monitor_parked = true;
                self.shared.starving.wait(&mut state);
                state.monitor_parked = false;
            }
            let taken = state.taken;
            let tick_end = Instant::now() + MONITOR_TICK;
            while !self
                .shared
                .starving
                .wait_until(&mut state, tick_end)
                .timed_out()
            {}
            if state.taken == taken && !state.queue.is_empty() {
                let count = state.queue.len().min(BURST);
                self.start_threads(&mut state, count);
            }
        }
    }
}

fn work(shared: &Shared) {
    let mut state = shared.state.lock();
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.taken += 1;
            drop(state);
            // A job handles its own panics; this only keeps the thread for reuse.
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!(target: "swarmexec", "a task-manager job panicked");
            }
            state = shared.state.lock();
            continue;
        }
        state.idle += 1;
        let timed_out = shared
            .job_ready
            .wait_for(&mut state, KEEP_ALIVE)
            .timed_out();
        state.idle -= 1;
        if timed_out && state.queue.is_empty() {
            break;
        }
    }
    state.threads -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::Barrier;

    #[test]
    fn blocking_jobs_each_get_a_thread() {
        let pool = Pool::new(2);
        let jobs = 40;
        let barrier = Arc::new(Barrier::new(jobs + 1));
        for _ in 0..jobs {
            let barrier = Arc::clone(&barrier);
            pool.submit(move || {
                barrier.wait();
            });
        }
        // Every job blocks until all of them run at once: only enough threads let
        // this return.
        barrier.wait();
    }

    #[test]
    fn quick_jobs_are_served_by_few_threads() {
        let pool = Pool::new(2);
        let (tx, rx) = bounded(10_000);
        for i in 0..10_000 {
            let tx = tx.clone();
            pool.submit(move || tx.send(i).unwrap());
        }
        let mut got: Vec<i32> = (0..10_000).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert!(got.iter().copied().eq(0..10_000));
        let threads = pool.shared.state.lock().threads;
        assert!(threads < 200, "{threads} threads for quick jobs");
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_working() {
        let pool = Pool::new(1);
        pool.submit(|| panic!("job panic"));
        let (tx, rx) = bounded(1);
        pool.submit(move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
