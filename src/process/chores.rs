//! The executor's chores thread, `swarmexec-chores`: the slow and blocking work
//! that must be neither on the reaper (which every spawn and every wake-up waits
//! for) nor on a caller's path.
//!
//! Removing the cgroups of a task nobody removed (depth first, waiting out
//! `EBUSY`), freezing a v1 cgroup to kill it, cleaning up after dead owners,
//! starting health probes and hearing how they went: each is a chore, run in the
//! order given. The queue is bounded; a chore that finds it full (or no thread,
//! when one cannot be started) runs on the thread that gave it, so nothing is
//! ever dropped. The thread starts with the first chore (an executor whose tasks
//! need none never starts it) and ends with the executor, after the chores left.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::panic::contain;

/// How many chores may wait.
const QUEUE: usize = 4096;

type Chore = Box<dyn FnOnce() + Send>;

/// A handle to give chores with; clones share the thread.
#[derive(Clone)]
pub(crate) struct Chores(Arc<Shared>);

struct Shared {
    /// `None` tells the thread to end, once what came before it is done.
    queue: Sender<Option<Chore>>,
    taken: Receiver<Option<Chore>>,
    thread: Mutex<Thread>,
}

#[derive(Default)]
struct Thread {
    handle: Option<JoinHandle<()>>,
    /// Set by `finish`: from then on chores run on the thread that gives them.
    finished: bool,
}

impl Chores {
    pub(crate) fn new() -> Chores {
        let (queue, taken) = crossbeam_channel::bounded(QUEUE);
        Chores(Arc::new(Shared {
            queue,
            taken,
            thread: Mutex::default(),
        }))
    }

    /// Runs `chore` soon, on the chores thread.
    pub(crate) fn run(&self, chore: impl FnOnce() + Send + 'static) {
        let chore: Chore = Box::new(chore);
        let mut thread = self.0.thread.lock();
        if thread.finished || !self.ensure_running(&mut thread) {
            drop(thread);
            return run_contained(chore);
        }
        // Sent under the lock, so that nothing is queued after `finish`'s end.
        match self.0.queue.try_send(Some(chore)) {
            Ok(()) => {}
            Err(TrySendError::Full(chore) | TrySendError::Disconnected(chore)) => {
                drop(thread);
                chore.into_iter().for_each(run_contained);
            }
        }
    }

    fn ensure_running(&self, thread: &mut Thread) -> bool {
        if thread.handle.is_some() {
            return true;
        }
        let taken = self.0.taken.clone();
        let started = std::thread::Builder::new()
            .name("swarmexec-chores".into())
            .spawn(move || {
                taken
                    .iter()
                    .map_while(|chore| chore)
                    .for_each(run_contained)
            });
        match started {
            Ok(handle) => {
                thread.handle = Some(handle);
                true
            }
            Err(e) => {
                log::warn!(target: "swarmexec", "cannot start the chores thread (will retry): {e}");
                false
            }
        }
    }

    /// Waits until the chores given so far are done and the thread has ended;
    /// later chores run on the thread that gives them. On the chores thread
    /// itself (an executor dropped by a chore) it does not wait: the thread ends
    /// after that chore.
    pub(crate) fn finish(&self) {
        let handle = {
            let mut thread = self.0.thread.lock();
            thread.finished = true;
            thread.handle.take()
        };
        let Some(handle) = handle else { return };
        // The thread takes from the queue until it gets this.
        let _ = self.0.queue.send(None);
        if handle.thread().id() != std::thread::current().id() && handle.join().is_err() {
            log::error!(target: "swarmexec", "the chores thread panicked");
        }
    }
}

/// Runs a chore; a panic (a bug, or a health observer's) is logged by `contain`.
fn run_contained(chore: Chore) {
    let _ = contain("a chore", "", chore);
}

impl std::fmt::Debug for Chores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chores")
            .field("queued", &self.0.queue.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn chores_run_in_order_off_the_caller_and_all_before_finish_returns() {
        let chores = Chores::new();
        let done = Arc::new(AtomicUsize::new(0));
        let caller = std::thread::current().id();
        for i in 0..100 {
            let done = Arc::clone(&done);
            chores.run(move || {
                assert_ne!(std::thread::current().id(), caller);
                assert_eq!(done.fetch_add(1, Ordering::SeqCst), i);
            });
        }
        chores.finish();
        assert_eq!(done.load(Ordering::SeqCst), 100);
        // Afterwards: on the caller's thread, at once.
        let later = Arc::clone(&done);
        chores.run(move || assert_eq!(later.fetch_add(1, Ordering::SeqCst), 100));
        assert_eq!(done.load(Ordering::SeqCst), 101);
    }
}
