//! [`Worker`]: reconciles the tasks assigned to this node with running task managers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::listener::{self, Listener};
use super::manager::{ManagerOptions, TaskManager};
use super::pool::Pool;
use super::StatusReporter;
use crate::api::{Config, LogSubscriptionOptions, Secret, Task, TaskStatus};
use crate::{resolve, CancelToken, Controller, Error, Executor, LogPublisher};

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
/// controller (through [`resolve`]) and a [`TaskManager`], and reports every status
/// to its listeners.
///
/// Every method may be called from any thread. Secrets and configs go into the
/// executor's stores (see [`Executor::dependencies`]) before the tasks that need
/// them, and leave once no assigned task references them. A task that leaves the
/// assignment is shut down, then its controller is removed and closed, in the
/// background; [`wait`](Worker::wait) waits for that too.
///
/// [`close`](Worker::close) stops every manager and closes every controller, which
/// for the [process executor](crate::process) kills the programs still running.
///
/// ```
/// use std::sync::Arc;
/// use crossbeam_channel::unbounded;
/// use swarmexec::agent::Worker;
/// use swarmexec::api::*;
/// use swarmexec::{Error, StubExecutor};
///
/// let worker = Worker::new(Arc::new(StubExecutor::new()));
/// let (reports, statuses) = unbounded::<(String, TaskStatus)>();
/// let _listener = worker.listen(reports);
/// let task = Task { id: "job.1".into(), desired_state: TaskState::Running, ..Default::default() };
/// worker.assign(vec![task], vec![], vec![])?;
/// let (id, _) = statuses.iter().find(|(_, s)| s.state == TaskState::Completed).unwrap();
/// assert_eq!(id, "job.1");
/// worker.close();
/// # Ok::<(), Error>(())
/// ```
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
}

#[derive(Default)]
struct Assigned {
    tasks: HashMap<String, Entry>,
    /// Secrets and configs the worker put into the executor's stores.
    secrets: HashSet<String>,
    configs: HashSet<String>,
    removing: usize,
    closed: bool,
}

struct Entry {
    task: Task,
    /// `None` when no controller could be made for the task.
    run: Option<Running>,
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
    statuses: HashMap<String, TaskStatus>,
    listeners: Vec<Arc<listener::Shared>>,
}

impl StatusReporter for Reports {
    /// Records and fans out a manager's report; reports of tasks no longer
    /// assigned are dropped.
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        let mut state = self.state.lock();
        if let Some(latest) = state.statuses.get_mut(task_id) {
            latest.clone_from(status);
            state.listeners.retain(|l| !l.is_closed());
            for listener in &state.listeners {
                listener.push(task_id, status);
            }
        }
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
            }),
        }
    }

    /// The executor the worker runs tasks with.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.inner.executor
    }

    /// Makes `tasks` the complete set of tasks assigned to this node, with the
    /// secrets and configs they need: new tasks are started, known ones updated,
    /// and tasks not in the set removed.
    pub fn assign(
        &self,
        tasks: Vec<Task>,
        secrets: Vec<Secret>,
        configs: Vec<Config>,
    ) -> Result<(), Error> {
        let inner = &self.inner;
        let mut assigned = inner.assigned.lock();
        if assigned.closed {
            return Err(Error::WorkerClosed);
        }
        let removed_tasks = missing(assigned.tasks.keys(), tasks.iter().map(|t| &t.id));
        let removed_secrets = missing(assigned.secrets.iter(), secrets.iter().map(|s| &s.id));
        let removed_configs = missing(assigned.configs.iter(), configs.iter().map(|c| &c.id));
        inner.apply(
            &mut assigned,
            AssignmentChanges {
                tasks,
                removed_tasks,
                secrets,
                removed_secrets,
                configs,
                removed_configs,
            },
        );
        Ok(())
    }

    /// Applies incremental changes to the assignment.
    pub fn update(&self, changes: AssignmentChanges) -> Result<(), Error> {
        let mut assigned = self.inner.assigned.lock();
        if assigned.closed {
            return Err(Error::WorkerClosed);
        }
        self.inner.apply(&mut assigned, changes);
        Ok(())
    }

    /// Sends every status change of every task to `reporter`, starting with the
    /// current status of each task, until the returned [`Listener`] is dropped. See
    /// [`Listener`] for what happens when `reporter` is slow.
    pub fn listen(&self, reporter: impl StatusReporter + 'static) -> Listener {
        let listener = Listener::new(Arc::new(reporter));
        let shared = listener.shared();
        let mut reports = self.inner.reports.state.lock();
        for (id, status) in &reports.statuses {
            shared.push(id, status);
        }
        reports.listeners.push(shared);
        listener
    }

    /// The latest status of each assigned task.
    pub fn statuses(&self) -> HashMap<String, TaskStatus> {
        self.inner.reports.state.lock().statuses.clone()
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
                .and_then(|e| e.run.as_ref())
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

    /// Stops every task manager and closes every controller, then waits for
    /// removals in progress. Later assignments fail with [`Error::WorkerClosed`].
    /// Idempotent.
    pub fn close(&self) {
        let entries: Vec<Entry> = {
            let mut assigned = self.inner.assigned.lock();
            assigned.closed = true;
            assigned.tasks.drain().map(|(_, entry)| entry).collect()
        };
        for running in entries.iter().filter_map(|e| e.run.as_ref()) {
            running.manager.close();
        }
        for running in entries.iter().filter_map(|e| e.run.as_ref()) {
            if let Err(e) = running.controller.close() {
                log::warn!(target: "swarmexec", "closing the controller of {} failed: {e}", running.manager.task_id());
            }
        }
        self.inner.reports.state.lock().statuses.clear();
        self.inner.settled.notify_all();
        self.wait();
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
            && self
                .tasks
                .values()
                .all(|e| e.run.as_ref().is_none_or(|r| r.manager.is_closed()))
    }
}

impl Inner {
    fn apply(self: &Arc<Self>, assigned: &mut Assigned, changes: AssignmentChanges) {
        let AssignmentChanges {
            tasks,
            removed_tasks,
            secrets,
            removed_secrets,
            configs,
            removed_configs,
        } = changes;
        let stores = self.executor.dependencies();
        if let Some(stores) = stores {
            assigned
                .secrets
                .extend(secrets.iter().map(|s| s.id.clone()));
            assigned
                .configs
                .extend(configs.iter().map(|c| c.id.clone()));
            stores.secrets().add(secrets);
            stores.configs().add(configs);
        }
        for task in tasks {
            match assigned.tasks.get_mut(&task.id) {
                Some(entry) => self.update_task(entry, task),
                None => {
                    let entry = self.start_task(task);
                    assigned.tasks.insert(entry.task.id.clone(), entry);
                }
            }
        }
        for id in removed_tasks {
            if let Some(entry) = assigned.tasks.remove(&id) {
                self.remove_task(assigned, entry);
            }
        }
        if let Some(stores) = stores {
            let (secrets, configs) = unreferenced(assigned, removed_secrets, removed_configs);
            stores.secrets().remove(&secrets);
            stores.configs().remove(&configs);
        }
    }

    fn start_task(self: &Arc<Self>, mut task: Task) -> Entry {
        let (status, controller) = resolve(&CancelToken::new(), &task, &*self.executor);
        self.reports
            .state
            .lock()
            .statuses
            .insert(task.id.clone(), task.status.clone());
        if status != task.status {
            let _ = self.reports.update_task_status(&task.id, &status);
        }
        task.status = status;
        let run = controller.ok().map(|controller| {
            let controller: Arc<dyn Controller> = Arc::from(controller);
            let reporter: Arc<dyn StatusReporter> =
                Arc::clone(&self.reports) as Arc<dyn StatusReporter>;
            let manager = TaskManager::with_options(
                task.clone(),
                Arc::clone(&controller),
                reporter,
                self.options,
            );
            Running {
                manager: Arc::new(manager),
                controller,
            }
        });
        Entry { task, run }
    }

    fn update_task(&self, entry: &mut Entry, task: Task) {
        if let Some(running) = &entry.run {
            if let Err(e) = running.manager.update(&task) {
                log::warn!(target: "swarmexec", "task {}: update refused: {e}", task.id);
            }
        }
        let status = std::mem::take(&mut entry.task.status);
        entry.task = Task { status, ..task };
    }

    /// Shuts the task down, then removes and closes its controller, on a pool
    /// thread.
    fn remove_task(self: &Arc<Self>, assigned: &mut Assigned, entry: Entry) {
        self.reports.state.lock().statuses.remove(&entry.task.id);
        let Some(running) = entry.run else { return };
        assigned.removing += 1;
        let me = Arc::clone(self);
        Pool::global().submit(move || {
            running.manager.close();
            let cancel = CancelToken::new();
            let controller = &running.controller;
            let outcome = controller
                .shutdown(&cancel)
                .and_then(|()| controller.remove(&cancel))
                .and_then(|()| controller.close());
            if let Err(e) = outcome {
                log::warn!(target: "swarmexec", "removing task {} failed: {e}", entry.task.id);
            }
            me.assigned.lock().removing -= 1;
            me.settled.notify_all();
        });
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

/// Of the secrets and configs the worker stored, those no assigned task
/// references any more, plus those explicitly removed; forgets them.
fn unreferenced(
    assigned: &mut Assigned,
    removed_secrets: Vec<String>,
    removed_configs: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let mut used_secrets = HashSet::new();
    let mut used_configs = HashSet::new();
    for entry in assigned.tasks.values() {
        used_secrets.extend(
            entry
                .task
                .spec
                .secret_references()
                .iter()
                .map(|r| r.secret_id.as_str()),
        );
        used_configs.extend(
            entry
                .task
                .spec
                .config_references()
                .iter()
                .map(|r| r.config_id.as_str()),
        );
    }
    let mut secrets: Vec<String> = assigned
        .secrets
        .iter()
        .filter(|id| !used_secrets.contains(id.as_str()))
        .cloned()
        .collect();
    let mut configs: Vec<String> = assigned
        .configs
        .iter()
        .filter(|id| !used_configs.contains(id.as_str()))
        .cloned()
        .collect();
    secrets.extend(removed_secrets);
    configs.extend(removed_configs);
    for id in &secrets {
        assigned.secrets.remove(id);
    }
    for id in &configs {
        assigned.configs.remove(id);
    }
    (secrets, configs)
}
