//! The crate's one timer thread, `swarmexec-timer`, started on first use: it fires
//! token deadlines and the task managers' retry back-offs.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::{OnceLock, Weak};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

/// Something to do at a given time.
pub(crate) trait Due: Send + Sync {
    /// Runs on the timer thread when the time comes: must be quick.
    fn fire(&self);

    /// True when firing would do nothing, so that the entry can be dropped early.
    fn is_stale(&self) -> bool {
        false
    }
}

struct Entry {
    at: Instant,
    due: Weak<dyn Due>,
}

// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest entry first.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at)
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}

/// Fires `due` at `at`, unless it has been dropped by then. Weak, so that a pending
/// entry never keeps its owner alive.
///
/// Should the thread fail to start (a thread or process limit reached), the entry
/// waits in the queue and the next call tries again: a failure is never remembered.
/// Meanwhile callers check deadlines themselves where it matters.
pub(crate) fn schedule(at: Instant, due: Weak<dyn Due>) {
    let timer = timer();
    // The queue's receiver is kept by `Timer` itself: sending cannot fail.
    let _ = timer.queue.send(Entry { at, due });
    timer.ensure_running();
}

/// Starts the timer thread if it is not running; entries already queued fire once
/// it runs.
pub(crate) fn ensure_running() {
    timer().ensure_running();
}

struct Timer {
    queue: Sender<Entry>,
    requests: Receiver<Entry>,
    running: Mutex<bool>,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let (queue, requests) = crossbeam_channel::unbounded();
        Timer {
            queue,
            requests,
            running: Mutex::new(false),
        }
    })
}

impl Timer {
    fn ensure_running(&self) {
        let mut running = self.running.lock();
        if *running {
            return;
        }
        let requests = self.requests.clone();
        match std::thread::Builder::new()
            .name("swarmexec-timer".into())
            .spawn(move || run(requests))
        {
            Ok(_) => *running = true,
            Err(e) => {
                log::error!(target: "swarmexec", "cannot start the timer thread (will retry): {e}")
            }
        }
    }
}

fn run(requests: Receiver<Entry>) {
    let mut heap = BinaryHeap::<Entry>::new();
    let mut prune_above = 1024;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(due) = heap.pop().and_then(|e| e.due.upgrade()) {
                due.fire();
            }
        }
        let request = match heap.peek() {
            Some(next) => requests.recv_deadline(next.at).ok(),
            None => match requests.recv() {
                Ok(entry) => Some(entry),
                Err(_) => return,
            },
        };
        if let Some(entry) = request {
            heap.push(entry);
            // Entries whose owner went away or that became pointless would
            // otherwise sit here until their time.
            if heap.len() > prune_above {
                heap.retain(|e| e.due.upgrade().is_some_and(|d| !d.is_stale()));
                prune_above = (heap.len() * 2).max(1024);
            }
        }
    }
}
