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
//!
//! Waking a parked thread costs about ten microseconds, more than a task's whole
//! lifecycle with a quick controller. So a thread that runs out of work first spins
//! for up to [`SPIN`], yielding the CPU as it goes, before it parks; one thread at a
//! time, so that spinning never takes both cores of a small machine.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::timer::{self, Due};

/// How long an idle thread waits for work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How often the monitor looks for starvation.
const MONITOR_TICK: Duration = Duration::from_millis(1);

/// How long after a failed start of the monitor it is tried again.
const MONITOR_RETRY: Duration = Duration::from_millis(50);

/// The most threads one monitor tick starts.
const BURST: usize = 64;

/// How long a thread out of work looks for more before it parks.
const SPIN: Duration = Duration::from_micros(50);

/// Task-manager threads run little code of their own; the stack is for controllers.
const STACK_SIZE: usize = 512 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// For the timer to find the pool again, to retry a monitor that could not start.
    me: Weak<Shared>,
    state: Mutex<State>,
    /// The queue's length, for the spinning thread to watch without the lock.
    queued: AtomicUsize,
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
    /// A thread is spinning and will take the next job without being woken.
    spinning: bool,
    /// Threads started that have not yet looked at the queue.
    starting: usize,
}

impl Pool {
    /// The pool every task manager of the process shares.
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(super::sys::cpus() * 2))
    }

    fn new(floor: usize) -> Pool {
        Pool {
            shared: Arc::new_cyclic(|me| Shared {
                me: me.clone(),
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                    taken: 0,
                    monitor_running: false,
                    monitor_parked: false,
                    spinning: false,
                    starting: 0,
                }),
                queued: AtomicUsize::new(0),
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
        self.shared
            .queued
            .store(state.queue.len(), Ordering::Release);
        // A spinner takes one job; any more wake idle threads as usual.
        let spinner_takes_it = state.spinning && state.queue.len() == 1;
        if spinner_takes_it || state.idle > 0 && self.shared.job_ready.notify_one() {
            return;
        }
        // A thread that cannot start (a limit reached) leaves the job to the
        // monitor, which tries again at every tick.
        if state.threads < self.shared.floor && self.start_threads(&mut state, 1) > 0 {
            return;
        }
        if !state.monitor_running {
            state.monitor_running = true;
            drop(state);
            self.start_monitor();
        } else if state.monitor_parked {
            self.shared.starving.notify_one();
        }
    }

    /// Starts up to `count` threads and returns how many started; on failure the
    /// monitor retries at its next tick.
    fn start_threads(&self, state: &mut State, count: usize) -> usize {
        for started in 0..count {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("swarmexec-task".into())
                .stack_size(STACK_SIZE)
                .spawn(move || work(&shared));
            match spawned {
                Ok(_) => {
                    state.threads += 1;
                    state.starting += 1;
                }
                Err(e) => {
                    log::error!(target: "swarmexec", "cannot start a task-manager thread (will retry): {e}");
                    return started;
                }
            }
        }
        count
    }

    fn start_monitor(&self) {
        let pool = self.clone();
        let started = std::thread::Builder::new()
            .name("swarmexec-pool".into())
            .spawn(move || pool.monitor());
        if let Err(e) = started {
            log::error!(target: "swarmexec", "cannot start the pool monitor (will retry): {e}");
            self.shared.state.lock().monitor_running = false;
            // Nothing else may come to retry: the timer will, if it runs.
            let retry: Weak<dyn Due> = self.shared.me.clone();
            timer::schedule(crate::time::after(MONITOR_RETRY), retry);
        }
    }

    /// Starts threads while queued jobs are not being picked up; exits once idle
    /// for [`KEEP_ALIVE`] (the next `submit` that needs it starts it again).
    fn monitor(&self) {
        let mut state = self.shared.state.lock();
        loop {
            while state.queue.is_empty() {
                state.monitor_parked = true;
                let idle = self.shared.starving.wait_for(&mut state, KEEP_ALIVE);
                state.monitor_parked = false;
                if idle.timed_out() && state.queue.is_empty() {
                    state.monitor_running = false;
                    return;
                }
            }
            let taken = state.taken;
            let tick_end = crate::time::after(MONITOR_TICK);
            while !self
                .shared
                .starving
                .wait_until(&mut state, tick_end)
                .timed_out()
            {}
            // Threads still starting, or idle ones about to wake, will take jobs:
            // only the rest need new threads.
            let covered = state.starting + state.idle;
            let uncovered = state.queue.len().saturating_sub(covered);
            if state.taken == taken && !state.queue.is_empty() {
                // Idle threads count only if awake: make sure they are.
                self.shared.job_ready.notify_all();
                if uncovered > 0 {
                    self.start_threads(&mut state, uncovered.min(BURST));
                }
            }
        }
    }
}

impl Due for Shared {
    /// Starts the monitor that could not start, if jobs still wait for it.
    fn fire(&self) {
        let Some(shared) = self.me.upgrade() else {
            return;
        };
        let mut state = shared.state.lock();
        if state.queue.is_empty() || state.monitor_running {
            return;
        }
        state.monitor_running = true;
        drop(state);
        Pool { shared }.start_monitor();
    }
}

fn work(shared: &Shared) {
    let mut state = shared.state.lock();
    state.starting -= 1;
    let mut may_spin = true;
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.taken += 1;
            shared.queued.store(state.queue.len(), Ordering::Release);
            may_spin = true;
            drop(state);
            // A job handles its own panics; this only keeps the thread for reuse.
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                log::error!(target: "swarmexec", "a task-manager job panicked");
            }
            state = shared.state.lock();
            continue;
        }
        if may_spin && !state.spinning {
            // Under the lock, so that `submit` either sees the spinner or queues
            // before the spin starts; the spinner checks the queue when it stops.
            state.spinning = true;
            drop(state);
            spin(shared);
            state = shared.state.lock();
            state.spinning = false;
            may_spin = false;
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

/// Watches the queue for up to [`SPIN`].
fn spin(shared: &Shared) {
    let start = Instant::now();
    while shared.queued.load(Ordering::Acquire) == 0 && start.elapsed() < SPIN {
        std::thread::yield_now();
    }
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
