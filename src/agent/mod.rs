//! The agent runtime: task managers and a worker, on threads and channels.
//!
//! [`do_task`](crate::do_task) moves a task one step; this module keeps calling it.
//! A [`TaskManager`] drives one task: it steps until there is nothing to do, reports
//! every new status, waits for updates, backs off before retries, and cancels an
//! operation in flight when the task is updated or the manager closed. A [`Worker`]
//! owns an [`Executor`](crate::Executor) and reconciles the set of tasks assigned to
//! the node: it resolves controllers, starts, updates and removes managers, keeps the
//! executor's secrets and configs in step, and fans statuses out to listeners.
//!
//! Managers hold a thread only while they have a step to take. They share one
//! elastic pool of threads named `swarmexec-task`: idle threads are reused; beyond a
//! small floor, threads are added only when queued work is not being picked up (a
//! monitor thread, `swarmexec-pool`, looks every millisecond), so a thousand tasks
//! blocked in `wait` get a thousand threads while ten thousand quick steps share a
//! few. A thread that runs out of work spins for up to 50 us before parking (one
//! at a time), because waking a parked thread costs more than a quick task's whole
//! lifecycle. Threads idle for ten seconds exit.

mod listener;
mod manager;
mod pool;
mod sys;
mod worker;

pub use listener::{Listener, LISTENER_QUEUE};
pub use manager::{ManagerOptions, TaskManager};
pub use worker::{AssignmentChanges, Worker};

use std::time::Duration;

use crate::api::TaskStatus;
use crate::Error;

/// How long closing waits for a controller call that ignores its token before
/// leaving it to finish on its thread.
const STUCK_CALL_WAIT: Duration = Duration::from_secs(2);

/// Receives the statuses of tasks.
///
/// Implemented for closures `Fn(&str, &TaskStatus) -> Result<(), Error>` and for the
/// sending ends of channels of `(String, TaskStatus)`, crossbeam's and the standard
/// library's.
pub trait StatusReporter: Send + Sync {
    /// Takes the new status of task `task_id`.
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error>;
}

impl<F> StatusReporter for F
where
    F: Fn(&str, &TaskStatus) -> Result<(), Error> + Send + Sync,
{
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        self(task_id, status)
    }
}

/// Sends each status into the channel; fails once every receiver is gone.
impl StatusReporter for crossbeam_channel::Sender<(String, TaskStatus)> {
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        self.send((task_id.to_owned(), status.clone()))
            .map_err(|_| Error::other("status receiver has gone away"))
    }
}

/// Sends each status into the channel; fails once the receiver is gone.
impl StatusReporter for std::sync::mpsc::Sender<(String, TaskStatus)> {
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        self.send((task_id.to_owned(), status.clone()))
            .map_err(|_| Error::other("status receiver has gone away"))
    }
}
