//! Log subscriptions from the manager's log broker: each selected task's
//! captured output, with its timestamps, published until it is exhausted (or,
//! when following, until the subscription closes or the task ends).
//!
//! Each task of a subscription is read on a thread of its own (the worker's log
//! calls block); every thread holds a sender of the subscription's sink, so that
//! once all are done the network thread closes the subscription. A following
//! subscription also takes the tasks assigned while it is open, and ends when the
//! manager closes it.

use std::collections::HashMap;
use std::sync::Arc;

use swarmexec::agent::Worker;
use swarmexec::api::{self as local, LogStream, LogSubscriptionOptions, TaskState};
use swarmexec::{CancelToken, Error, LogPublisherFn};
use tokio::sync::mpsc;

use super::proto::api;
use super::tasks::{time_from_wire, time_to_wire};

/// The subscriptions in progress, by id.
pub(crate) struct Subscriptions {
    worker: Arc<Worker>,
    open: HashMap<String, Subscription>,
}

/// One subscription in progress.
struct Subscription {
    id: String,
    selector: api::LogSelector,
    options: LogSubscriptionOptions,
    cancel: CancelToken,
    /// A following subscription keeps its sink, for tasks assigned later; it
    /// is dropped (and the subscription ends) when the manager closes it.
    sink: Option<mpsc::Sender<api::LogMessage>>,
}

impl Subscription {
    fn selects(&self, task: &local::Task, node_id: &str) -> bool {
        let selector = &self.selector;
        selector.task_ids.contains(&task.id)
            || selector.service_ids.contains(&task.service_id)
            || selector.node_ids.iter().any(|n| n == node_id)
    }

    /// Publishes `task`'s logs on a thread of their own.
    fn publish(&self, worker: &Arc<Worker>, task: &local::Task, node_id: &str, sink: &Sink) {
        let (worker, sink, cancel) = (Arc::clone(worker), sink.clone(), self.cancel.clone());
        let options = self.options.clone();
        let context = api::LogContext {
            service_id: task.service_id.clone(),
            node_id: node_id.to_owned(),
            task_id: task.id.clone(),
        };
        let task_id = task.id.clone();
        let spawned = std::thread::Builder::new()
            .name("swarmexec-logs".into())
            .spawn(move || publish(&worker, &task_id, &cancel, &options, context, &sink));
        if let Err(e) = spawned {
            log::warn!(target: "swarmexec", "log subscription {}: no thread: {e}", self.id);
        }
    }
}

type Sink = mpsc::Sender<api::LogMessage>;

impl Subscriptions {
    pub(crate) fn new(worker: Arc<Worker>) -> Subscriptions {
        Subscriptions {
            worker,
            open: HashMap::new(),
        }
    }

    /// Starts publishing what `message` selects of `tasks` into `sink`.
    pub(crate) fn open(
        &mut self,
        message: api::SubscriptionMessage,
        sink: Sink,
        node_id: &str,
        tasks: Vec<local::Task>,
    ) {
        let options = options(message.options.unwrap_or_default());
        let subscription = Subscription {
            id: message.id.clone(),
            selector: message.selector.unwrap_or_default(),
            sink: options.follow.then(|| sink.clone()),
            options,
            cancel: CancelToken::new(),
        };
        for task in tasks.iter().filter(|t| subscription.selects(t, node_id)) {
            subscription.publish(&self.worker, task, node_id, &sink);
        }
        self.open
            .retain(|_, s| s.sink.is_some() && !s.cancel.is_cancelled());
        if subscription.sink.is_some() {
            self.open.insert(message.id, subscription);
        }
    }

    /// Follows `task`, newly assigned, for the subscriptions that select it.
    pub(crate) fn assigned(&self, task: &local::Task, node_id: &str) {
        for subscription in self.open.values() {
            if let Some(sink) = subscription
                .sink
                .as_ref()
                .filter(|_| subscription.selects(task, node_id))
            {
                subscription.publish(&self.worker, task, node_id, sink);
            }
        }
    }

    /// Ends the subscription `id`.
    pub(crate) fn close(&mut self, id: &str) {
        if let Some(subscription) = self.open.remove(id) {
            subscription.cancel.cancel();
        }
    }

    /// Ends every subscription.
    pub(crate) fn close_all(&mut self) {
        for (_, subscription) in self.open.drain() {
            subscription.cancel.cancel();
        }
    }
}

fn publish(
    worker: &Worker,
    task_id: &str,
    cancel: &CancelToken,
    options: &LogSubscriptionOptions,
    context: api::LogContext,
    sink: &mpsc::Sender<api::LogMessage>,
) {
    if options.follow && !started(worker, task_id, cancel) {
        return;
    }
    let publisher = LogPublisherFn(|_: &CancelToken, message: local::LogMessage| {
        let wire = api::LogMessage {
            context: Some(context.clone()),
            timestamp: message.timestamp.map(time_to_wire),
            stream: stream(message.stream) as i32,
            data: message.data,
            attrs: Vec::new(),
        };
        sink.blocking_send(wire)
            .map_err(|_| Error::other("the log broker has gone away"))
    });
    if let Err(e) = worker.subscribe_logs(task_id, cancel, &publisher, options) {
        log::debug!(target: "swarmexec", "logs of task {task_id}: {e}");
    }
}

/// Waits until the task's program has started (a task assigned while a
/// subscription follows is still being prepared); false when it never will, or
/// the subscription ended first.
fn started(worker: &Worker, task_id: &str, cancel: &CancelToken) -> bool {
    while !cancel.is_cancelled() {
        match worker.statuses().get(task_id).map(|s| s.state) {
            Some(state) if state >= TaskState::Running => return true,
            None => return false,
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    false
}

fn stream(stream: LogStream) -> api::LogStream {
    match stream {
        LogStream::Stdout => api::LogStream::Stdout,
        LogStream::Stderr => api::LogStream::Stderr,
        LogStream::Unknown => api::LogStream::Unknown,
    }
}

/// The broker's options as the worker takes them. SwarmKit's tail counts from
/// the end when negative (`--tail 5` is -5); a positive one (skip from the start)
/// is taken as everything.
fn options(options: api::LogSubscriptionOptions) -> LogSubscriptionOptions {
    let streams = options
        .streams
        .iter()
        .filter_map(|s| match api::LogStream::try_from(*s) {
            Ok(api::LogStream::Stdout) => Some(LogStream::Stdout),
            Ok(api::LogStream::Stderr) => Some(LogStream::Stderr),
            _ => None,
        });
    let since = options.since.as_ref().and_then(time_from_wire);
    LogSubscriptionOptions {
        streams: streams.collect(),
        follow: options.follow,
        tail: (options.tail < 0).then(|| options.tail.unsigned_abs()),
        since,
    }
}
