//! The node's synchronous side: the manager's assignments into a [`Worker`], the
//! worker's statuses out to the network thread, and the node's stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use parking_lot::Mutex;
use swarmexec::agent::StatusReporter;
use swarmexec::agent::{AssignmentChanges, Worker};
use swarmexec::api::{self as local, Annotations, Node, TaskState};
use swarmexec::{CancelToken, Error};
use tokio::sync::mpsc::UnboundedSender;

use super::logs::Subscriptions;
use super::network::{Event, Request};
use super::proto::api::{self, assignment, assignment_change, assignments_message};
use super::tasks::{self, UserPolicy};

/// How long the node waits for its tasks to stop beyond their grace periods.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// How long the node waits for the manager to take its last statuses.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends each status the worker reports to the network thread.
struct Reporter {
    requests: UnboundedSender<Request>,
    images: Arc<Mutex<HashMap<String, String>>>,
}

impl StatusReporter for Reporter {
    fn update_task_status(&self, task_id: &str, status: &local::TaskStatus) -> Result<(), Error> {
        log::debug!(target: "swarmexec", "task {task_id}: {}", status.state);
        let images = self.images.lock();
        let image = images.get(task_id).map(String::as_str);
        let status = tasks::status_to_wire(status, image);
        self.requests
            .send(Request::Status(task_id.to_owned(), status))
            .map_err(|_| Error::other("the network thread has stopped"))
    }
}

/// What the node knows of a task of its assignment.
struct Known {
    task: Option<local::Task>,
    /// Its grace period, for the stop.
    grace: Duration,
}

/// How the node's run ended.
pub(crate) enum Ending {
    /// A stop was asked for.
    Stopped,
    /// A manager removed the node.
    Removed,
    /// The network side failed.
    Failed(String),
}

/// The node's synchronous side.
pub(crate) struct Agent {
    worker: Arc<Worker>,
    requests: UnboundedSender<Request>,
    policy: UserPolicy,
    images: Arc<Mutex<HashMap<String, String>>>,
    known: HashMap<String, Known>,
    subscriptions: Subscriptions,
    node_id: String,
    _listener: swarmexec::agent::Listener,
}

impl Agent {
    pub(crate) fn new(
        worker: Worker,
        requests: UnboundedSender<Request>,
        policy: UserPolicy,
    ) -> Agent {
        let images = Arc::new(Mutex::new(HashMap::new()));
        let listener = worker.listen(Reporter {
            requests: requests.clone(),
            images: Arc::clone(&images),
        });
        let worker = Arc::new(worker);
        Agent {
            subscriptions: Subscriptions::new(Arc::clone(&worker)),
            worker,
            requests,
            policy,
            images,
            known: HashMap::new(),
            node_id: String::new(),
            _listener: listener,
        }
    }

    /// Runs until a stop is asked for on `stops`, or the network side ends it.
    pub(crate) fn run(&mut self, events: &Receiver<Event>, stops: &Receiver<()>) -> Ending {
        loop {
            crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(Event::Identified { identity, rejoined }) => {
                        self.identified(&identity.node_id, rejoined)
                    }
                    Ok(Event::Assignments(message)) => self.assign(message),
                    Ok(Event::Subscription { message, sink }) => {
                        self.subscriptions.open(message, sink, &self.node_id, self.tasks())
                    }
                    Ok(Event::SubscriptionClosed(id)) => self.subscriptions.close(&id),
                    Ok(Event::Removed) => return Ending::Removed,
                    Ok(Event::Fatal(why)) => return Ending::Failed(why),
                    Err(_) => return Ending::Failed("the network thread has stopped".into()),
                },
                recv(stops) -> _ => return Ending::Stopped,
            }
        }
    }

    fn identified(&mut self, node_id: &str, rejoined: bool) {
        node_id.clone_into(&mut self.node_id);
        let how = if rejoined { "rejoined" } else { "joined" };
        eprintln!("swarmexec node: {how} as node {node_id}");
        let node = Node {
            id: node_id.to_owned(),
            annotations: Annotations::default(),
            description: None,
        };
        if let Err(e) = self.worker.executor().configure(&CancelToken::new(), &node) {
            log::warn!(target: "swarmexec", "configuring the executor: {e}");
        }
    }

    fn tasks(&self) -> Vec<local::Task> {
        self.known.values().filter_map(|k| k.task.clone()).collect()
    }

    fn assign(&mut self, message: api::AssignmentsMessage) {
        let complete = message.r#type == assignments_message::Type::Complete as i32;
        log::debug!(target: "swarmexec", "assignment: {} changes{}", message.changes.len(), if complete { " (complete)" } else { "" });
        let mut changes = AssignmentChanges::default();
        let known_before: std::collections::HashSet<String> = self.known.keys().cloned().collect();
        for change in message.changes {
            let remove = change.action == assignment_change::AssignmentAction::Remove as i32;
            let item = change.assignment.and_then(|a| a.item);
            match (item, remove) {
                (Some(assignment::Item::Task(task)), false) => {
                    if let Some(task) = self.take_task(&task) {
                        changes.tasks.push(task);
                    }
                }
                (Some(assignment::Item::Task(task)), true) => {
                    self.forget(&task.id);
                    changes.removed_tasks.push(task.id);
                }
                (Some(assignment::Item::Secret(secret)), false) => {
                    changes.secrets.push(secret_of(secret))
                }
                (Some(assignment::Item::Secret(secret)), true) => {
                    changes.removed_secrets.push(secret.id)
                }
                (Some(assignment::Item::Config(config)), false) => {
                    changes.configs.push(config_of(config))
                }
                (Some(assignment::Item::Config(config)), true) => {
                    changes.removed_configs.push(config.id)
                }
                (None, _) => {}
            }
        }
        let new: Vec<local::Task> = changes
            .tasks
            .iter()
            .filter(|t| !known_before.contains(&t.id))
            .cloned()
            .collect();
        let applied = if complete {
            let assigned: std::collections::HashSet<&str> =
                changes.tasks.iter().map(|t| t.id.as_str()).collect();
            let gone: Vec<String> = self
                .known
                .iter()
                .filter(|(id, k)| k.task.is_some() && !assigned.contains(id.as_str()))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                self.forget(&id);
            }
            self.worker
                .assign(changes.tasks, changes.secrets, changes.configs)
        } else {
            self.worker.update(changes)
        };
        if let Err(e) = applied {
            log::warn!(target: "swarmexec", "applying the assignment: {e}");
        }
        for task in &new {
            self.subscriptions.assigned(task, &self.node_id);
        }
    }

    /// The task to give the worker, or `None` when it is rejected (reported here).
    fn take_task(&mut self, task: &api::Task) -> Option<local::Task> {
        if let Some(image) = tasks::image(task) {
            self.images.lock().insert(task.id.clone(), image.to_owned());
        }
        match tasks::convert(task, &self.policy) {
            Ok(local) => {
                let grace = match &local.spec.runtime {
                    Some(local::Runtime::Process(p)) => p.stop_grace_period,
                    _ => None,
                };
                self.known.insert(
                    task.id.clone(),
                    Known {
                        task: Some(local.clone()),
                        grace: grace.unwrap_or(Duration::from_secs(10)),
                    },
                );
                Some(local)
            }
            Err(why) => {
                let reported = task
                    .status
                    .as_ref()
                    .map_or(TaskState::New, |s| tasks::state(s.state));
                if reported < TaskState::Rejected && !self.known.contains_key(&task.id) {
                    log::info!(target: "swarmexec", "task {}: rejected: {why}", task.id);
                    let status = tasks::status_to_wire(&tasks::rejection(&why), None);
                    let _ = self.requests.send(Request::Status(task.id.clone(), status));
                }
                self.known.insert(
                    task.id.clone(),
                    Known {
                        task: None,
                        grace: Duration::ZERO,
                    },
                );
                None
            }
        }
    }

    fn forget(&mut self, id: &str) {
        self.known.remove(id);
        self.images.lock().remove(id);
    }

    /// Stops every task gracefully (each with its stop signal and grace period),
    /// waits for them, and has the network thread deliver their statuses.
    /// `stops` cuts the wait short: the tasks are then killed.
    pub(crate) fn stop(&mut self, stops: &Receiver<()>) -> Vec<(String, local::TaskStatus)> {
        let statuses = self.worker.statuses();
        let active = |task: &local::Task| {
            statuses
                .get(&task.id)
                .is_some_and(|s| !s.state.is_terminal())
        };
        let running: Vec<local::Task> = self
            .tasks()
            .into_iter()
            .filter(active)
            .map(|mut task| {
                task.desired_state = TaskState::Shutdown;
                task
            })
            .collect();
        let grace = self
            .known
            .values()
            .map(|k| k.grace)
            .max()
            .unwrap_or_default();
        let ids: Vec<String> = running.iter().map(|t| t.id.clone()).collect();
        let changes = AssignmentChanges {
            tasks: running,
            ..Default::default()
        };
        if let Err(e) = self.worker.update(changes) {
            log::warn!(target: "swarmexec", "stopping the tasks: {e}");
        }
        let deadline = Instant::now() + grace + STOP_MARGIN;
        let ended = |statuses: &HashMap<String, local::TaskStatus>| {
            ids.iter()
                .all(|id| statuses.get(id).is_none_or(|s| s.state.is_terminal()))
        };
        while !ended(&self.worker.statuses()) && Instant::now() < deadline {
            if stops.recv_timeout(Duration::from_millis(20)).is_ok() {
                break;
            }
        }
        let statuses = self.worker.statuses();
        self.subscriptions.close_all();
        self.worker.close();
        let (done, drained) = crossbeam_channel::bounded(1);
        // A node not yet identified has no session to deliver to.
        if !self.node_id.is_empty() && self.requests.send(Request::Drain(done)).is_ok() {
            let _ = drained.recv_timeout(DRAIN_TIMEOUT);
        }
        let mut last: Vec<(String, local::TaskStatus)> = ids
            .into_iter()
            .filter_map(|id| statuses.get(&id).cloned().map(|s| (id, s)))
            .collect();
        last.sort_by(|a, b| a.0.cmp(&b.0));
        last
    }

    /// The worker's task names, for the report.
    pub(crate) fn name_of(&self, id: &str) -> String {
        let task = self.known.get(id).and_then(|k| k.task.as_ref());
        match task {
            Some(task) if !task.annotations.name.is_empty() => task.annotations.name.clone(),
            _ => id.to_owned(),
        }
    }
}

fn secret_of(secret: api::Secret) -> local::Secret {
    let spec = secret.spec.unwrap_or_default();
    local::Secret {
        id: secret.id,
        annotations: annotations_of(spec.annotations),
        data: spec.data,
        internal: secret.internal,
    }
}

fn config_of(config: api::Config) -> local::Config {
    let spec = config.spec.unwrap_or_default();
    local::Config {
        id: config.id,
        annotations: annotations_of(spec.annotations),
        data: spec.data,
    }
}

fn annotations_of(annotations: Option<api::Annotations>) -> Annotations {
    let annotations = annotations.unwrap_or_default();
    Annotations {
        name: annotations.name,
        labels: annotations.labels.into_iter().collect(),
    }
}
