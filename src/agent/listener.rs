//! Status listeners: every status change, delivered in order off the task managers'
//! threads, through a bounded queue that coalesces when full.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::pool::Pool;
use super::StatusReporter;
use crate::api::TaskStatus;
use crate::panic::contain_result;

/// How many statuses a listener queues before it starts coalescing.
pub const LISTENER_QUEUE: usize = 4096;

/// A subscription made by [`Worker::listen`](super::Worker::listen); dropping it,
/// or calling [`close`](Listener::close), ends it.
///
/// Statuses are delivered one at a time, in the order they were reported, on a
/// pool thread, never on a task manager's. A listener that falls behind by
/// [`LISTENER_QUEUE`] statuses is not allowed to hold anything up: from then on, until
/// it has caught up, only the newest status of each task is kept for it. It may miss
/// intermediate states of a task, but always receives that task's latest status,
/// and never an older one after a newer one.
///
/// A reporter that panics misses the status it panicked on and keeps receiving.
#[must_use = "dropping the listener ends the listening at once"]
pub struct Listener {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    reporter: Arc<dyn StatusReporter>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<(String, TaskStatus)>,
    /// The newest status of each task that came while the queue was full.
    overflow: HashMap<String, TaskStatus>,
    overflow_order: VecDeque<String>,
    delivering: bool,
    closed: bool,
}

impl Listener {
    pub(crate) fn new(reporter: Arc<dyn StatusReporter>) -> Listener {
        Listener {
            shared: Arc::new(Shared {
                reporter,
                pending: Mutex::new(Pending::default()),
            }),
        }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Stops delivery; statuses not yet delivered are dropped.
    pub fn close(&self) {
        let mut pending = self.shared.pending.lock();
        pending.closed = true;
        pending.queue.clear();
        pending.overflow.clear();
        pending.overflow_order.clear();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.shared.pending.lock();
        f.debug_struct("Listener")
            .field("queued", &(pending.queue.len() + pending.overflow.len()))
            .field("closed", &pending.closed)
            .finish()
    }
}

impl Shared {
    pub(crate) fn is_closed(&self) -> bool {
        self.pending.lock().closed
    }

    /// Queues a status for delivery; never blocks on the listener.
    pub(crate) fn push(self: &Arc<Self>, task_id: &str, status: &TaskStatus) {
        let mut pending = self.pending.lock();
        if pending.closed {
            return;
        }
        if pending.overflow.is_empty() && pending.queue.len() < LISTENER_QUEUE {
            pending
                .queue
                .push_back((task_id.to_owned(), status.clone()));
        } else if pending
            .overflow
            .insert(task_id.to_owned(), status.clone())
            .is_none()
        {
            pending.overflow_order.push_back(task_id.to_owned());
        }
        if !pending.delivering {
            pending.delivering = true;
            let me = Arc::clone(self);
            Pool::global().submit(move || me.deliver());
        }
    }

    fn next(&self) -> Option<(String, TaskStatus)> {
        let mut pending = self.pending.lock();
        let next = pending.queue.pop_front().or_else(|| {
            let id = pending.overflow_order.pop_front()?;
            let status = pending.overflow.remove(&id)?;
            Some((id, status))
        });
        if next.is_none() {
            pending.delivering = false;
        }
        next
    }

    /// Delivers until the queue is empty. A reporter that fails or panics misses
    /// that one status and keeps receiving.
    fn deliver(&self) {
        while let Some((task_id, status)) = self.next() {
            let delivered = contain_result("status listener", &task_id, || {
                self.reporter.update_task_status(&task_id, &status)
            });
            if let Err(e) = delivered {
                log::warn!(target: "swarmexec", "task {task_id}: a status listener failed: {e}");
            }
        }
    }
}
