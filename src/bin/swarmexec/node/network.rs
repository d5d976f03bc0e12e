//! The node's network thread: the only place anything async runs.
//!
//! It joins (or takes the stored identity), then keeps a session with a manager
//! as SwarmKit's agent does: the session stream (the managers to fall back on),
//! heartbeats at the period the manager asks for, the assignment stream, log
//! subscriptions, and task statuses. It talks to the synchronous rest of the node
//! over channels: [`Event`]s out, [`Request`]s in. A lost manager is replaced by
//! the next one the session listed, with back-off; statuses not yet delivered are
//! kept (the newest per task, as SwarmKit's agent keeps them) and sent on the
//! next session.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::errors::{is_removal, status};
use super::identity::{Identity, StateDir};
use super::join;
use super::proto::api::{
    self, assignments_message, dispatcher_client::DispatcherClient,
    log_broker_client::LogBrokerClient, update_task_status_request::TaskStatusUpdate,
    AssignmentsRequest, HeartbeatRequest, ListenSubscriptionsRequest, PublishLogsMessage,
    SessionRequest, UpdateTaskStatusRequest,
};
use super::tls;
use super::token::JoinToken;

/// How the node gets its identity.
pub(crate) enum Start {
    /// Joins through this manager with this token.
    Join { manager: String, token: JoinToken },
    /// Rejoins with the stored identity, through the stored managers.
    Rejoin(Identity),
}

/// What the network thread tells the node.
pub(crate) enum Event {
    /// The node has its identity: it joined, or (`rejoined`) took the stored one.
    Identified { identity: Identity, rejoined: bool },
    /// The manager's assignment: the complete set, or changes.
    Assignments(api::AssignmentsMessage),
    /// A log subscription: publish the selected tasks' logs into `sink`; every
    /// sink dropped ends it.
    Subscription {
        message: api::SubscriptionMessage,
        sink: mpsc::Sender<api::LogMessage>,
    },
    /// The manager closed the subscription with this id.
    SubscriptionClosed(String),
    /// A manager removed this node from the swarm.
    Removed,
    /// The node cannot go on (joining failed, say).
    Fatal(String),
}

/// What the node asks of the network thread.
pub(crate) enum Request {
    /// Report this status of this task.
    Status(String, api::TaskStatus),
    /// Deliver every status reported so far, then answer.
    Drain(Sender<()>),
}

/// How long the first message of a session may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one heartbeat may take.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// SwarmKit's batch limit for status updates.
const STATUS_BATCH: usize = 1024;
/// Back-off between attempts to reach a manager: doubling to the cap.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(8);
/// How often to look again whether the certificate is due for renewal, once
/// its renewal failed or the timer's cap was reached.
const RENEWAL_CHECK: Duration = Duration::from_secs(60);
/// The longest timer set, so that no deadline overflows.
const MAX_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Everything the network thread needs.
pub(crate) struct Network {
    pub(crate) start: Start,
    pub(crate) state: StateDir,
    /// Managers to try, best first (the stored list, or the one to join).
    pub(crate) managers: Vec<String>,
    pub(crate) description: api::NodeDescription,
    pub(crate) events: Sender<Event>,
}

/// Starts the network thread.
pub(crate) fn spawn(network: Network) -> std::io::Result<UnboundedSender<Request>> {
    let (requests, incoming) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("swarmexec-network".into())
        .spawn(move || runtime.block_on(network.run(incoming)))?;
    Ok(requests)
}

/// Why a session ended.
enum Ended {
    /// The manager went away, or refused: try the next one.
    Lost(String),
    /// The node was removed from the swarm.
    Removed,
    /// The node has a new certificate: connect again with it.
    Renewed,
}

/// Statuses not yet delivered: the newest of each task.
#[derive(Default)]
struct Outbox {
    statuses: HashMap<String, api::TaskStatus>,
    drains: Vec<Sender<()>>,
}

impl Outbox {
    fn add(&mut self, id: String, status: api::TaskStatus) {
        self.statuses.insert(id, status);
    }

    fn batch(&self) -> Vec<TaskStatusUpdate> {
        let updates = self.statuses.iter().take(STATUS_BATCH);
        updates
            .map(|(id, status)| TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(status.clone()),
            })
            .collect()
    }

    /// Forgets what `sent` delivered (unless a newer status came meanwhile), and
    /// answers drains once nothing is left.
    fn delivered(&mut self, sent: &[TaskStatusUpdate]) {
        for update in sent {
            if self.statuses.get(&update.task_id) == update.status.as_ref() {
                self.statuses.remove(&update.task_id);
            }
        }
        if self.statuses.is_empty() {
            for drain in self.drains.drain(..) {
                let _ = drain.send(());
            }
        }
    }
}

/// The state of the network thread across sessions.
struct Node {
    network: Network,
    identity: Identity,
    outbox: Outbox,
    requests: UnboundedReceiver<Request>,
    /// Which manager to try next.
    next: usize,
}

impl Network {
    async fn run(self, requests: UnboundedReceiver<Request>) {
        let events = self.events.clone();
        let identity = match &self.start {
            Start::Rejoin(identity) => Ok(identity.clone()),
            Start::Join { manager, token } => match join::join(manager, token).await {
                Ok(identity) => self
                    .state
                    .store_managers(&self.managers)
                    .and_then(|()| self.state.store_identity(&identity))
                    .map(|()| identity),
                Err(e) => Err(e),
            },
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => {
                let _ = events.send(Event::Fatal(e));
                return;
            }
        };
        let rejoined = matches!(self.start, Start::Rejoin(_));
        let _ = events.send(Event::Identified {
            identity: identity.clone(),
            rejoined,
        });
        let mut node = Node {
            network: self,
            identity,
            outbox: Outbox::default(),
            requests,
            next: 0,
        };
        node.run().await;
    }
}

impl Node {
    async fn run(&mut self) {
        let mut retry = FIRST_RETRY;
        loop {
            let manager = self.manager();
            let ended = match self.connect(&manager).await {
                Ok(channel) => self.session(&manager, channel, &mut retry).await,
                Err(e) => Ended::Lost(format!("cannot reach manager {manager}: {e}")),
            };
            match ended {
                Ended::Removed => {
                    let _ = self.network.events.send(Event::Removed);
                    return;
                }
                Ended::Renewed => continue,
                Ended::Lost(why) => {
                    log::warn!(target: "swarmexec", "{why}; trying again in {retry:?}");
                    self.next += 1;
                    self.wait(retry).await;
                    retry = (retry * 2).min(RETRY_CAP);
                }
            }
        }
    }

    fn manager(&self) -> String {
        let managers = &self.network.managers;
        managers[self.next % managers.len()].clone()
    }

    async fn connect(&self, manager: &str) -> Result<Channel, String> {
        let config = tls::to_managers(&self.identity.root_ca_pem, Some(&self.identity))?;
        tls::connect(manager, config).await
    }

    /// Waits `pause`, still taking requests (statuses queue up meanwhile).
    async fn wait(&mut self, pause: Duration) {
        let deadline = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                request = self.requests.recv() => match request {
                    Some(request) => self.take(request),
                    None => std::future::pending().await,
                },
            }
        }
    }

    fn take(&mut self, request: Request) {
        match request {
            Request::Status(id, status) => self.outbox.add(id, status),
            Request::Drain(done) => {
                self.outbox.drains.push(done);
                self.outbox.delivered(&[]);
            }
        }
    }

    /// One session with `manager`, until it ends.
    async fn session(&mut self, manager: &str, channel: Channel, retry: &mut Duration) -> Ended {
        let mut dispatcher = DispatcherClient::new(channel.clone());
        let (trust_root, cert_issuer_subject, cert_issuer_public_key) = self.identity.tls_info();
        let description = api::NodeDescription {
            tls_info: Some(api::NodeTlsInfo {
                trust_root,
                cert_issuer_subject,
                cert_issuer_public_key,
            }),
            ..self.network.description.clone()
        };
        let request = SessionRequest {
            description: Some(description),
            session_id: String::new(),
        };
        let opened = tokio::time::timeout(SESSION_TIMEOUT, async {
            let mut stream = dispatcher.session(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, tonic::Status>((stream, first))
        })
        .await;
        let (mut session, first) = match opened {
            Err(_) => return Ended::Lost(format!("manager {manager} opened no session in time")),
            Ok(Err(e)) if is_removal(&e) => return Ended::Removed,
            Ok(Err(e)) => return Ended::Lost(format!("manager {manager}: {}", status(&e))),
            Ok(Ok((_, None))) => {
                return Ended::Lost(format!("manager {manager} closed the session"))
            }
            Ok(Ok((stream, Some(first)))) => (stream, first),
        };
        let id = first.session_id.clone();
        self.learn(&first);
        log::info!(target: "swarmexec", "session {id} with manager {manager}");
        *retry = FIRST_RETRY;

        let assignments = dispatcher
            .assignments(AssignmentsRequest {
                session_id: id.clone(),
            })
            .await;
        let mut assignments = match assignments {
            Ok(stream) => stream.into_inner(),
            Err(e) => return self.lost(manager, &e),
        };
        // The broker sends nothing (not even headers) until there is a
        // subscription, so its stream is read by a task of its own.
        let broker = LogBrokerClient::new(channel);
        let mut background = tokio::task::JoinSet::new();
        let (subscribed, mut subscriptions) = mpsc::channel(16);
        background.spawn(listen_subscriptions(broker.clone(), subscribed));
        let mut renewal = self.renewal_deadline();
        let mut heartbeat = tokio::time::Instant::now();
        let mut sending: Option<Delivery> = None;
        let mut reference = String::new();
        loop {
            if sending.is_none() && !self.outbox.statuses.is_empty() {
                let batch = self.outbox.batch();
                let mut client = dispatcher.clone();
                let request = UpdateTaskStatusRequest {
                    session_id: id.clone(),
                    updates: batch.clone(),
                };
                sending = Some(tokio::spawn(async move {
                    let sent = client.update_task_status(request).await.map(|_| ());
                    (batch, sent)
                }));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(heartbeat) => {
                    match self.heartbeat(&mut dispatcher, &id).await {
                        Ok(period) => heartbeat = tokio::time::Instant::now() + period,
                        Err(e) => return self.lost(manager, &e),
                    }
                }
                _ = tokio::time::sleep_until(renewal) => {
                    if let Some(ended) = self.renew(manager).await {
                        return ended;
                    }
                    renewal = tokio::time::Instant::now() + RENEWAL_CHECK;
                }
                message = session.message() => match message {
                    Ok(Some(message)) => self.learn(&message),
                    Ok(None) => return Ended::Lost(format!("manager {manager} closed the session")),
                    Err(e) => return self.lost(manager, &e),
                },
                message = assignments.message() => match message {
                    Ok(Some(message)) => {
                        let gap = !reference.is_empty() && message.applies_to != reference;
                        reference = message.results_in.clone();
                        let complete = message.r#type == assignments_message::Type::Complete as i32;
                        if gap && !complete {
                            // A change was missed: start over with a complete set.
                            return Ended::Lost(format!("manager {manager} skipped an assignment"));
                        }
                        let _ = self.network.events.send(Event::Assignments(message));
                    }
                    Ok(None) => return Ended::Lost(format!("manager {manager} closed the assignments")),
                    Err(e) => return self.lost(manager, &e),
                },
                message = subscriptions.recv() => match message {
                    Some(Ok(message)) => self.subscribe(&broker, message),
                    Some(Err(e)) => return self.lost(manager, &e),
                    None => std::future::pending().await,
                },
                sent = delivery(&mut sending) => {
                    sending = None;
                    match sent {
                        Ok((batch, Ok(()))) => self.outbox.delivered(&batch),
                        Ok((_, Err(e))) => return self.lost(manager, &e),
                        Err(e) => return Ended::Lost(format!("status delivery failed: {e}")),
                    }
                }
                request = self.requests.recv() => match request {
                    Some(request) => self.take(request),
                    None => std::future::pending().await,
                },
            }
        }
    }

    fn lost(&self, manager: &str, e: &tonic::Status) -> Ended {
        if is_removal(e) {
            Ended::Removed
        } else {
            Ended::Lost(format!("manager {manager}: {}", status(e)))
        }
    }

    async fn heartbeat(
        &self,
        dispatcher: &mut DispatcherClient<Channel>,
        id: &str,
    ) -> Result<Duration, tonic::Status> {
        let request = HeartbeatRequest {
            session_id: id.to_owned(),
        };
        let response = tokio::time::timeout(HEARTBEAT_TIMEOUT, dispatcher.heartbeat(request))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("heartbeat timed out"))??;
        let period = response.into_inner().period;
        let period = period.and_then(|p| Duration::try_from(p).ok());
        Ok(period.unwrap_or(Duration::from_secs(5)))
    }

    /// Takes what a session message says: the managers to fall back on.
    fn learn(&mut self, message: &api::SessionMessage) {
        let mut managers: Vec<(i64, String)> = message
            .managers
            .iter()
            .filter_map(|m| Some((m.weight, m.peer.as_ref()?.addr.clone())))
            .filter(|(_, addr)| !addr.is_empty())
            .collect();
        if managers.is_empty() {
            return;
        }
        managers.sort_by_key(|m| std::cmp::Reverse(m.0));
        let managers: Vec<String> = managers.into_iter().map(|(_, a)| a).collect();
        if managers != self.network.managers {
            if let Err(e) = self.network.state.store_managers(&managers) {
                log::warn!(target: "swarmexec", "{e}");
            }
            self.network.managers = managers;
            self.next = 0;
        }
    }

    fn renewal_deadline(&self) -> tokio::time::Instant {
        let jitter =
            f64::from(SystemTime::now().elapsed().map_or(0, |d| d.subsec_nanos()) % 1000) / 1000.0;
        let at = self.identity.renewal_time(jitter);
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::Instant::now() + wait.min(MAX_TIMER)
    }

    /// Renews the certificate if it is time; `Some` ends the session to use it.
    async fn renew(&mut self, manager: &str) -> Option<Ended> {
        if SystemTime::now() < self.identity.renewal_time(0.0) {
            return None;
        }
        match join::renew(manager, &self.identity).await {
            Ok(identity) => match self.network.state.store_identity(&identity) {
                Ok(()) => {
                    log::info!(target: "swarmexec", "renewed the node's certificate");
                    self.identity = identity;
                    Some(Ended::Renewed)
                }
                Err(e) => {
                    log::warn!(target: "swarmexec", "cannot store the renewed certificate: {e}");
                    None
                }
            },
            Err(e) => {
                log::warn!(target: "swarmexec", "cannot renew the node's certificate: {e}");
                None
            }
        }
    }

    /// Hands a subscription to the node, and publishes what it sends.
    fn subscribe(&self, broker: &LogBrokerClient<Channel>, message: api::SubscriptionMessage) {
        if message.close {
            let _ = self
                .network
                .events
                .send(Event::SubscriptionClosed(message.id));
            return;
        }
        let (sink, published) = mpsc::channel(1024);
        let id = message.id.clone();
        let _ = self
            .network
            .events
            .send(Event::Subscription { message, sink });
        let mut broker = broker.clone();
        tokio::spawn(async move {
            let closing = PublishLogsMessage {
                subscription_id: id.clone(),
                messages: Vec::new(),
                close: true,
            };
            let messages = tokio_stream::wrappers::ReceiverStream::new(published)
                .map(move |m| PublishLogsMessage {
                    subscription_id: id.clone(),
                    messages: vec![m],
                    close: false,
                })
                .chain(tokio_stream::once(closing));
            // The broker may end the call without an answer once it has
            // what it wanted: nothing to act on.
            if let Err(e) = broker.publish_logs(messages).await {
                log::debug!(target: "swarmexec", "publishing logs: {}", status(&e));
            }
        });
    }
}

/// A status batch being delivered: the batch and how its call went.
type Delivery = tokio::task::JoinHandle<(Vec<TaskStatusUpdate>, Result<(), tonic::Status>)>;

/// How the delivery in progress ended; never, when none is.
async fn delivery(
    sending: &mut Option<Delivery>,
) -> Result<(Vec<TaskStatusUpdate>, Result<(), tonic::Status>), tokio::task::JoinError> {
    match sending {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Passes the broker's subscriptions on, and how the stream ended; a manager
/// without a log broker is logged and left alone.
async fn listen_subscriptions(
    mut broker: LogBrokerClient<Channel>,
    subscriptions: mpsc::Sender<Result<api::SubscriptionMessage, tonic::Status>>,
) {
    let mut stream = match broker
        .listen_subscriptions(ListenSubscriptionsRequest {})
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(e) if e.code() == tonic::Code::Unimplemented => {
            log::warn!(target: "swarmexec", "the manager takes no log subscriptions");
            return;
        }
        Err(e) => {
            let _ = subscriptions.send(Err(e)).await;
            return;
        }
    };
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(tonic::Status::unavailable(
                "the log broker closed its stream",
            )),
            Err(e) => Err(e),
        };
        let failed = message.is_err();
        if subscriptions.send(message).await.is_err() || failed {
            return;
        }
    }
}
