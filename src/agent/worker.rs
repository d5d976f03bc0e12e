//! [`Worker`]: reconciles the tasks assigned to this node with running task managers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use super::listener::{self, Listener};
use super::manager::{ManagerOptions, TaskManager};
use super::pool::Pool;
use super::{StatusReporter, STUCK_CALL_WAIT};
use crate::api::{Config, LogSubscriptionOptions, Secret, Task, TaskStatus};
use crate::panic::{contain, contain_result};
use crate::state::resolved_status;
use crate::{CancelToken, Controller, Error, Executor, LogPublisher};

/// Changes to a node's assignment, for [`Worker::update`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssignmentChanges {
    /// Tasks added or updated.
    pub tasks: Vec<Task>,
    /// Ids of tasks no longer assigned.
    pub removed_tasks: Vec<String>,
    /// Secrets added or updated.
    pub secrets: Vec<Secret>,
    /// Ids of secrets no longer assigned.
    pub removed_secrets: Vec<String>,
    /// Configs added or updated.
    pub configs: Vec<Config>,
    /// Ids of configs no longer assigned.
    pub removed_configs: Vec<String>,
}

/// Runs the tasks assigned to this node: owns an [`Executor`], gives each task a
/// controller (as [`resolve`](crate::resolve) does) and a [`TaskManager`], and reports every status
/// to its listeners.
///
/// Every method may be called from any thread. Secrets and configs are stored as
/// the reference's agent stores them: [`assign`](Worker::assign) replaces the
/// executor's stores (see [`Executor::dependencies`]) with what it is given, and
/// [`update`](Worker::update) adds and removes what it names, always before the
/// tasks of the same call are started. (What a task may read of them is still
/// limited to what it references: see
/// [`DependencyStore::restrict`](crate::executor::DependencyStore::restrict).)
///
/// A task that leaves the assignment is removed in the background, best-effort as
/// in the reference: its manager is closed, then its controller is shut down,
/// removed and closed, each step tried whatever happened to the one before; a
/// failure is logged and reported to the listeners as the task's last status.
/// [`wait`](Worker::wait) waits for removals too. A task id may be assigned again at
/// once: the new task gets a new controller, and the old one's late reports are
/// dropped.
///
/// User code (the executor, controllers, listeners) never runs under a lock that
/// another task's progress needs, and a panic in it is contained: it fails the call
/// it happened in, and nothing else. [`close`](Worker::close) stops every manager
/// and closes every controller, which for the [process executor](crate::process)
/// kills the programs still running and deletes their files; it returns within a
/// few seconds even when a controller call ignores its token.
///
/// ```
/// use std::sync::Arc;
/// use swarmexec::agent::Worker;
/// use swarmexec::api::*;
/// use swarmexec::{Error, StubExecutor};
///
/// let worker = Worker::new(Arc::new(StubExecutor::new()));
/// let (reports, statuses) = std::sync::mpsc::channel::<(String, TaskStatus)>();
/// let _listener = worker.listen(reports);
/// let task = Task { id: "job.1".into(), desired_state: TaskState::Running, ..Default::default() };
/// worker.assign(vec![task], vec![], vec![])?;
/// let (id, _) = statuses.iter().find(|(_, s)| s.state == TaskState::Completed).unwrap();
/// assert_eq!(id, "job.1");
/// worker.close();
/// # Ok::<(), Error>(())
/// ```
#[must_use = "dropping the worker closes it, killing its tasks"]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    executor: Arc<dyn Executor>,
    options: ManagerOptions,
    assigned: Mutex<Assigned>,
    reports: Arc<Reports>,
    /// Notified whenever a manager closes or a removal finishes.
    settled: Condvar,
    /// Cancelled by `close`: cuts removals in progress short.
    root: CancelToken,
    /// Tells apart tasks that reuse an id.
    next_generation: AtomicU64,
}

#[derive(Default)]
struct Assigned {
    tasks: HashMap<String, Entry>,
    removing: usize,
    closed: bool,
}

struct Entry {
    task: Task,
    generation: u64,
    stage: Stage,
}

enum Stage {
    /// The executor is being asked for a controller, outside any lock.
    Resolving,
    /// No controller could be made for the task.
    Unresolved,
    Managed(Running),
}

impl Entry {
    fn running(&self) -> Option<&Running> {
        match &self.stage {
            Stage::Managed(running) => Some(running),
            _ => None,
        }
    }

    fn into_running(self) -> Option<(String, Running)> {
        match self.stage {
            Stage::Managed(running) => Some((self.task.id, running)),
            _ => None,
        }
    }
}

struct Running {
    manager: Arc<TaskManager>,
    controller: Arc<dyn Controller>,
}

/// The latest status of each task, and where statuses go. A lock of its own, so
/// that reporting never waits for an assignment in progress.
#[derive(Default)]
struct Reports {
    state: Mutex<ReportState>,
}

#[derive(Default)]
struct ReportState {
    statuses: HashMap<String, (u64, TaskStatus)>,
    listeners: Vec<Arc<listener::Shared>>,
}

impl Reports {
    /// Starts keeping the status of a newly assigned task.
    fn insert(&self, task_id: &str, generation: u64, status: &TaskStatus) {
        let mut state = self.state.lock();
        state
            .statuses
            .insert(task_id.to_owned(), (generation, status.clone()));
    }

    /// Records and fans out a status; dropped unless the task is still assigned
    /// and is the same `generation`.
    fn record(&self, task_id: &str, generation: u64, status: &TaskStatus) {
        let mut state = self.state.lock();
        match state.statuses.get_mut(task_id) {
            Some((current, latest)) if *current == generation => latest.clone_from(status),
            _ => return,
        }
        state.fan_out(task_id, status);
    }

    /// Stops keeping the status of a task that left the assignment.
    fn forget(&self, task_id: &str, generation: u64) {
        let mut state = self.state.lock();
        if state
            .statuses
            .get(task_id)
            .is_some_and(|(g, _)| *g == generation)
        {
            state.statuses.remove(task_id);
        }
    }

    /// Tells the listeners a status that is not kept (of a removed task).
    fn announce(&self, task_id: &str, status: &TaskStatus) {
        self.state.lock().fan_out(task_id, status);
    }
}

impl ReportState {
    fn fan_out(&mut self, task_id: &str, status: &TaskStatus) {
        self.listeners.retain(|l| !l.is_closed());
        for listener in &self.listeners {
            listener.push(task_id, status);
        }
    }
}

/// What a task's manager reports to: the worker's [`Reports`], under the task's
/// generation.
struct TaskReporter {
    reports: Arc<Reports>,
    generation: u64,
}

impl StatusReporter for TaskReporter {
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        self.reports.record(task_id, self.generation, status);
        Ok(())
    }
}

impl Worker {
    /// A worker running tasks with `executor`, with the default [`ManagerOptions`].
    pub fn new(executor: Arc<dyn Executor>) -> Worker {
        Worker::with_options(executor, ManagerOptions::default())
    }

    /// A worker whose task managers use `options`.
    pub fn with_options(executor: Arc<dyn Executor>, options: ManagerOptions) -> Worker {
        Worker {
            inner: Arc::new(Inner {
                executor,
                options,
                assigned: Mutex::new(Assigned::default()),
                reports: Arc::new(Reports::default()),
                settled: Condvar::new(),
                root: CancelToken::new(),
                next_generation: AtomicU64::new(1),
            }),
        }
    }

    /// The executor the worker runs tasks with.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.inner.executor
    }

    /// Makes `tasks` the complete set of tasks assigned to this node, and
    /// `secrets` and `configs` the complete contents of the executor's stores: new
    /// tasks are started, known ones updated, and tasks not in the set removed.
    pub fn assign(
        &self,
        tasks: Vec<Task>,
        secrets: Vec<Secret>,
        configs: Vec<Config>,
    ) -> Result<(), Error> {
        let changes = AssignmentChanges {
            tasks,
            secrets,
            configs,
            ..Default::default()
        };
        self.inner.apply(changes, Snapshot::Full)
    }

    /// Applies incremental changes to the assignment: the tasks, secrets and
    /// configs it gives are added or updated, those it names as removed go.
    pub fn update(&self, changes: AssignmentChanges) -> Result<(), Error> {
        self.inner.apply(changes, Snapshot::Incremental)
    }

    /// Sends every status change of every task to `reporter`, starting with the
    /// current status of each task, until the returned [`Listener`] is dropped. See
    /// [`Listener`] for what happens when `reporter` is slow.
    pub fn listen(&self, reporter: impl StatusReporter + 'static) -> Listener {
        let listener = Listener::new(Arc::new(reporter));
        let shared = listener.shared();
        let mut reports = self.inner.reports.state.lock();
        for (id, (_, status)) in &reports.statuses {
            shared.push(id, status);
        }
        reports.listeners.push(shared);
        listener
    }

    /// The latest status of each assigned task.
    pub fn statuses(&self) -> HashMap<String, TaskStatus> {
        let reports = self.inner.reports.state.lock();
        let statuses = reports.statuses.iter();
        statuses
            .map(|(id, (_, status))| (id.clone(), status.clone()))
            .collect()
    }

    /// Publishes the logs of task `task_id`; see [`TaskManager::logs`].
    pub fn subscribe_logs(
        &self,
        task_id: &str,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
    ) -> Result<(), Error> {
        let manager = {
            let assigned = self.inner.assigned.lock();
            let entry = assigned.tasks.get(task_id);
            entry
                .and_then(Entry::running)
                .map(|r| Arc::clone(&r.manager))
        };
        match manager {
            Some(manager) => manager.logs(cancel, publisher, options),
            None => Err(Error::other(format!("no running task {task_id}"))),
        }
    }

    /// Blocks until every task manager has closed (after [`close`](Worker::close),
    /// or once every task was removed) and every removal has finished.
    pub fn wait(&self) {
        let mut assigned = self.inner.assigned.lock();
        while !assigned.settled() {
            self.inner.settled.wait(&mut assigned);
        }
    }

    /// Stops every task manager and closes every controller, cuts removals in
    /// progress short, and waits for all of it, a few seconds at most: a controller
    /// call that ignores its token is left to finish on its thread (and logged).
    /// Later assignments fail with [`Error::WorkerClosed`]. Idempotent.
    pub fn close(&self) {
        let inner = &self.inner;
        let entries: Vec<Entry> = {
            let mut assigned = inner.assigned.lock();
            assigned.closed = true;
            assigned.tasks.drain().map(|(_, entry)| entry).collect()
        };
        inner.root.cancel();
        let running: Vec<(String, Running)> = entries
            .into_iter()
            .filter_map(Entry::into_running)
            .collect();
        for (_, run) in &running {
            run.manager.cancel();
        }
        let deadline = crate::time::after(STUCK_CALL_WAIT);
        for (id, run) in &running {
            if !run.manager.close_until(deadline) {
                log::warn!(target: "swarmexec", "task {id}: a controller call ignores cancellation; it is left to finish on its thread");
            }
        }
        let controllers = running.into_iter().map(|(id, run)| (id, run.controller));
        close_controllers(controllers.collect());
        inner.reports.state.lock().statuses.clear();
        inner.settled.notify_all();
        let deadline = crate::time::after(STUCK_CALL_WAIT);
        let mut assigned = inner.assigned.lock();
        while assigned.removing > 0 {
            if inner
                .settled
                .wait_until(&mut assigned, deadline)
                .timed_out()
            {
                log::warn!(target: "swarmexec", "{} removals still under way; they are left to finish", assigned.removing);
                break;
            }
        }
    }
}

impl Drop for Worker {
    /// Closes the worker.
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let assigned = self.inner.assigned.lock();
        f.debug_struct("Worker")
            .field("tasks", &assigned.tasks.len())
            .field("removing", &assigned.removing)
            .field("closed", &assigned.closed)
            .finish()
    }
}

impl Assigned {
    fn settled(&self) -> bool {
        self.removing == 0
            && self.tasks.values().all(|e| match &e.stage {
                Stage::Resolving => false,
                Stage::Unresolved => true,
                Stage::Managed(running) => running.manager.is_closed(),
            })
    }
}

/// Whether an assignment is the whole set or changes to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Snapshot {
    Full,
    Incremental,
}

impl Inner {
    /// Applies an assignment without holding the state lock across user code:
    /// new tasks are registered under the lock, their controllers resolved outside
    /// it, then attached, so that a slow executor holds up no other call.
    fn apply(
        self: &Arc<Self>,
        changes: AssignmentChanges,
        snapshot: Snapshot,
    ) -> Result<(), Error> {
        let AssignmentChanges {
            tasks,
            removed_tasks,
            secrets,
            removed_secrets,
            configs,
            removed_configs,
        } = changes;
        if self.assigned.lock().closed {
            return Err(Error::WorkerClosed);
        }
        if let Some(stores) = self.executor.dependencies() {
            let stored = contain("the executor's dependency stores", "", || {
                if snapshot == Snapshot::Full {
                    stores.secrets().reset();
                    stores.configs().reset();
                } else {
                    stores.secrets().remove(&removed_secrets);
                    stores.configs().remove(&removed_configs);
                }
                stores.secrets().add(secrets);
                stores.configs().add(configs);
            });
            if let Err(e) = stored {
                log::error!(target: "swarmexec", "secrets and configs may be out of date: {e}");
            }
        }
        let (new_tasks, removed) = {
            let mut assigned = self.assigned.lock();
            if assigned.closed {
                return Err(Error::WorkerClosed);
            }
            let removed_ids = match snapshot {
                Snapshot::Full => missing(assigned.tasks.keys(), tasks.iter().map(|t| &t.id)),
                Snapshot::Incremental => removed_tasks,
            };
            let new_tasks = self.register(&mut assigned, tasks);
            let removed: Vec<Entry> = removed_ids
                .iter()
                .filter_map(|id| assigned.tasks.remove(id))
                .collect();
            // Counted now, under the lock that took them out, so that `wait` never
            // sees a task gone but its removal not yet begun.
            assigned.removing += removed.iter().filter(|e| e.running().is_some()).count();
            (new_tasks, removed)
        };
        for (task, generation) in new_tasks {
            self.resolve_and_attach(task, generation);
        }
        for entry in removed {
            self.dismantle(entry);
        }
        Ok(())
    }

    /// Updates the known tasks; registers the new ones as resolving and returns
    /// them with their generation.
    fn register(&self, assigned: &mut Assigned, tasks: Vec<Task>) -> Vec<(Task, u64)> {
        let mut new_tasks = Vec::new();
        for task in tasks {
            if let Some(entry) = assigned.tasks.get_mut(&task.id) {
                update_task(entry, task);
                continue;
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            self.reports.insert(&task.id, generation, &task.status);
            let entry = Entry {
                task: task.clone(),
                generation,
                stage: Stage::Resolving,
            };
            assigned.tasks.insert(task.id.clone(), entry);
            new_tasks.push((task, generation));
        }
        new_tasks
    }

    /// Asks the executor for the task's controller, then gives it a manager,
    /// unless the task was removed (or the worker closed) meanwhile.
    fn resolve_and_attach(self: &Arc<Self>, task: Task, generation: u64) {
        let controller = contain_result("executor", &task.id, || self.executor.controller(&task));
        let status = resolved_status(&task, &controller);
        if status != task.status {
            self.reports.record(&task.id, generation, &status);
        }
        let mut assigned = self.assigned.lock();
        let entry = assigned
            .tasks
            .get_mut(&task.id)
            .filter(|e| e.generation == generation);
        let Some(entry) = entry else {
            drop(assigned);
            if let Ok(controller) = controller {
                // Removed while resolving: the controller was never used.
                close_controllers(vec![(task.id, Arc::from(controller))]);
            }
            return;
        };
        // The definition may have been updated while resolving; the status is ours.
        entry.task.status = status;
        let Ok(controller) = controller else {
            entry.stage = Stage::Unresolved;
            return;
        };
        let controller: Arc<dyn Controller> = Arc::from(controller);
        let reporter = TaskReporter {
            reports: Arc::clone(&self.reports),
            generation,
        };
        let manager = TaskManager::with_options(
            entry.task.clone(),
            Arc::clone(&controller),
            Arc::new(reporter),
            self.options,
        );
        entry.stage = Stage::Managed(Running {
            manager: Arc::new(manager),
            controller,
        });
    }

    /// Forgets a task that left the assignment and, when it has a controller,
    /// removes it on a pool thread; `apply` has counted that removal.
    fn dismantle(self: &Arc<Self>, entry: Entry) {
        self.reports.forget(&entry.task.id, entry.generation);
        let Some((task_id, running)) = entry.into_running() else {
            return;
        };
        let removal = Removal {
            worker: Arc::clone(self),
        };
        let cancel = self.root.child();
        Pool::global().submit(move || removal.run(&task_id, &running, &cancel));
    }
}

/// One removal in progress; counted until dropped, so that even a panic cannot
/// leave `Worker::wait` waiting for it.
struct Removal {
    worker: Arc<Inner>,
}

impl Removal {
    /// Closes the manager, then shuts down, removes and closes the controller, each
    /// step tried whatever happened to the one before, as the reference's agent
    /// does.
    fn run(&self, task_id: &str, running: &Running, cancel: &CancelToken) {
        running.manager.close();
        let controller = &*running.controller;
        let mut failures = Vec::new();
        for step in RemovalStep::ALL {
            let call = || match step {
                RemovalStep::Shutdown => controller.shutdown(cancel),
                RemovalStep::Remove => controller.remove(cancel),
                RemovalStep::Close => controller.close(),
            };
            if let Err(e) = contain_result("controller", task_id, call) {
                log::warn!(target: "swarmexec", "task {task_id}: {step} failed during its removal: {e}");
                failures.push(format!("{step}: {e}"));
            }
        }
        if !failures.is_empty() {
            let mut status = running.manager.task().status;
            status.err = format!("removal failed: {}", failures.join("; "));
            status.timestamp = Some(SystemTime::now().max(status.timestamp.unwrap_or(UNIX_EPOCH)));
            self.worker.reports.announce(task_id, &status);
        }
    }
}

/// The controller calls of a removal, in order.
#[derive(Clone, Copy)]
enum RemovalStep {
    Shutdown,
    Remove,
    Close,
}

impl RemovalStep {
    const ALL: [RemovalStep; 3] = [
        RemovalStep::Shutdown,
        RemovalStep::Remove,
        RemovalStep::Close,
    ];
}

impl std::fmt::Display for RemovalStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemovalStep::Shutdown => "shutdown",
            RemovalStep::Remove => "remove",
            RemovalStep::Close => "close",
        })
    }
}

impl Drop for Removal {
    fn drop(&mut self) {
        self.worker.assigned.lock().removing -= 1;
        self.worker.settled.notify_all();
    }
}

/// Takes a new definition of a known task, keeping the status the worker holds.
fn update_task(entry: &mut Entry, task: Task) {
    if let Some(running) = entry.running() {
        if let Err(e) = running.manager.update(&task) {
            log::warn!(target: "swarmexec", "task {}: update refused: {e}", task.id);
        }
    }
    let status = std::mem::take(&mut entry.task.status);
    entry.task = Task { status, ..task };
}

/// How many pool jobs close a worker's controllers: a close stuck on one
/// controller holds up only the others of its share.
const CLOSING_JOBS: usize = 8;

/// Closes controllers on a few pool threads, each taking a share in turn, and waits
/// for them a few seconds at most; a failure or panic is logged.
fn close_controllers(controllers: Vec<(String, Arc<dyn Controller>)>) {
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let share = controllers.len().div_ceil(CLOSING_JOBS).max(1);
    let mut jobs = 0;
    let mut rest = controllers;
    while !rest.is_empty() {
        let mine: Vec<_> = rest.drain(..share.min(rest.len())).collect();
        let done = done_tx.clone();
        jobs += 1;
        Pool::global().submit(move || {
            for (task_id, controller) in mine {
                if let Err(e) = contain_result("controller", &task_id, || controller.close()) {
                    log::warn!(target: "swarmexec", "task {task_id}: closing its controller failed: {e}");
                }
            }
            let _ = done.send(());
        });
    }
    let deadline = crate::time::after(STUCK_CALL_WAIT);
    for _ in 0..jobs {
        if done_rx.recv_deadline(deadline).is_err() {
            log::warn!(target: "swarmexec", "controllers still closing; they are left to finish");
            return;
        }
    }
}

/// The ids in `known` that are not in `kept`.
fn missing<'a>(
    known: impl Iterator<Item = &'a String>,
    kept: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let kept: HashSet<&String> = kept.collect();
    known.filter(|id| !kept.contains(id)).cloned().collect()
}
