//! [`TaskManager`]: drives one task with `do_task` until there is nothing left to do.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::pool::Pool;
use super::{StatusReporter, STUCK_CALL_WAIT};
use crate::api::{LogSubscriptionOptions, Task, TaskStatus};
use crate::panic::{contain, contain_result};
use crate::state::failed_status;
use crate::timer::{self, Due};
use crate::{do_task, CancelToken, Controller, Error, LogPublisher};

/// How a [`TaskManager`] retries.
///
/// Both delays are at most [`MAX_DURATION`](crate::MAX_DURATION) (about 292
/// years): [`validate`](ManagerOptions::validate) refuses longer ones, and a
/// manager given one anyway treats it as that maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerOptions {
    /// The delay before the first retry; each further retry doubles it.
    pub retry_start: Duration,
    /// The longest delay between retries.
    pub retry_cap: Duration,
}

impl ManagerOptions {
    /// Refuses delays over [`MAX_DURATION`](crate::MAX_DURATION), and a first
    /// delay longer than the cap, with [`Error::InvalidSpec`] naming the field.
    ///
    /// ```
    /// use std::time::Duration;
    /// use swarmexec::agent::ManagerOptions;
    ///
    /// let huge = ManagerOptions { retry_cap: Duration::MAX, ..Default::default() };
    /// assert!(huge.validate().unwrap_err().to_string().contains("retry_cap"));
    /// ManagerOptions::default().validate()?;
    /// # Ok::<(), swarmexec::Error>(())
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        crate::time::check("retry_start", self.retry_start)?;
        crate::time::check("retry_cap", self.retry_cap)?;
        if self.retry_start > self.retry_cap {
            return Err(Error::InvalidSpec(format!(
                "retry_start {:?} is longer than retry_cap {:?}",
                self.retry_start, self.retry_cap
            )));
        }
        Ok(())
    }

    /// Within the maximum, whatever was given.
    fn saturated(self) -> ManagerOptions {
        ManagerOptions {
            retry_start: self.retry_start.min(crate::MAX_DURATION),
            retry_cap: self.retry_cap.min(crate::MAX_DURATION),
        }
    }
}

impl Default for ManagerOptions {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        ManagerOptions {
            retry_start: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
        }
    }
}

/// Drives one task: calls [`do_task`] again and again, puts each status back on the
/// task and reports it, waits for an update when there is nothing to do, and backs
/// off before retrying.
///
/// A manager runs on a thread of a shared pool while it has a step to take and
/// holds no thread while it waits (for an update, or for its next retry). Each
/// controller call runs under its own child [`CancelToken`], which an update or
/// [`close`](TaskManager::close) cancels. A panic in the controller fails the task
/// (`Rejected` before it started, else `Failed`, with the panic's message) and stops
/// nothing else.
///
/// Retries back off exponentially from [`ManagerOptions::retry_start`] to
/// [`ManagerOptions::retry_cap`], each delay drawn between half and all of its
/// nominal value so that many tasks failing together do not retry together; the
/// delay starts over once a step succeeds, and an update retries at once.
///
/// ```
/// use std::sync::Arc;
/// use crossbeam_channel::unbounded;
/// use swarmexec::agent::TaskManager;
/// use swarmexec::api::{Task, TaskState, TaskStatus};
/// use swarmexec::StubController;
///
/// let (reports, statuses) = unbounded::<(String, TaskStatus)>();
/// let mut task = Task { id: "t1".into(), desired_state: TaskState::Running, ..Default::default() };
/// task.status.state = TaskState::Assigned;
/// let manager = TaskManager::new(task, Arc::new(StubController::new()), reports);
/// let last = statuses.iter().find(|(_, s)| s.state == TaskState::Completed).unwrap();
/// assert_eq!(last.1.message, "finished");
/// manager.close();
/// ```
#[must_use = "dropping a task manager closes it"]
pub struct TaskManager {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    controller: Arc<dyn Controller>,
    reporter: Arc<dyn StatusReporter>,
    options: ManagerOptions,
    /// Cancelled by `close`; every controller call runs under a child of it.
    root: CancelToken,
    state: Mutex<State>,
    stopped: Condvar,
    holders: Arc<Holders>,
    /// What the timer holds for a retry: never the manager itself.
    retry: Arc<RetryTimer>,
    me: Weak<Inner>,
}

/// How many pool jobs and timer firings hold the manager. [`TaskManager::close`]
/// waits until none does: a caller that then drops its last handle (and maybe
/// exits the process) drops the controller, and what the controller holds, on its
/// own thread, never on a pool or timer thread that is just letting go. Each
/// holder lets go of the manager before it is released.
#[derive(Default)]
struct Holders {
    count: Mutex<Holding>,
    released: Condvar,
}

#[derive(Default)]
struct Holding {
    count: usize,
    /// Set by `close`: the timer may no longer take hold.
    closed: bool,
}

impl Holders {
    fn hold(&self) {
        self.count.lock().count += 1;
    }

    /// Upgrades `manager` and holds it, unless the manager is closed or gone:
    /// for the timer, which holds only a weak reference.
    fn hold_weak(&self, manager: &Weak<Inner>) -> Option<Arc<Inner>> {
        let mut holding = self.count.lock();
        if holding.closed {
            return None;
        }
        let manager = manager.upgrade()?;
        holding.count += 1;
        Some(manager)
    }

    fn release(&self) {
        let mut holding = self.count.lock();
        holding.count -= 1;
        if holding.count == 0 {
            self.released.notify_all();
        }
    }

    fn close(&self) {
        self.count.lock().closed = true;
    }

    /// Waits until no job holds the manager, or `deadline`; false on the latter.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut holding = self.count.lock();
        while holding.count > 0 {
            if self.released.wait_until(&mut holding, deadline).timed_out() {
                return holding.count == 0;
            }
        }
        true
    }
}

/// A manager's retry, as the timer holds it: weakly, and taken hold of through
/// [`Holders`], so that the timer never drops a manager (see `Holders`).
struct RetryTimer {
    manager: Weak<Inner>,
    holders: Arc<Holders>,
}

impl Due for RetryTimer {
    /// Runs the retry, unless the manager moved on (an update, a later retry) or
    /// closed meanwhile.
    fn fire(&self) {
        let Some(manager) = self.holders.hold_weak(&self.manager) else {
            return;
        };
        manager.retry_due();
        drop(manager);
        self.holders.release();
    }

    fn is_stale(&self) -> bool {
        self.manager.strong_count() == 0
    }
}

struct State {
    task: Task,
    /// A new definition to hand to `Controller::update` before the next step.
    update: Option<Task>,
    /// The thread running the manager's steps, while one is.
    runner: Option<ThreadId>,
    /// Set while running or queued to run.
    scheduled: bool,
    /// Something changed while a step was under way: step again.
    again: bool,
    in_flight: Option<CancelToken>,
    /// The nominal delay of the last retry; `None` once a step succeeded.
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    closed: bool,
}

impl TaskManager {
    /// Starts managing `task` with `controller`, reporting every new status to
    /// `reporter`, with the default [`ManagerOptions`].
    pub fn new(
        task: Task,
        controller: Arc<dyn Controller>,
        reporter: impl StatusReporter + 'static,
    ) -> TaskManager {
        TaskManager::with_options(
            task,
            controller,
            Arc::new(reporter),
            ManagerOptions::default(),
        )
    }

    /// Starts managing `task`, with `options` (see [`ManagerOptions::validate`]
    /// for the delays it takes).
    pub fn with_options(
        task: Task,
        controller: Arc<dyn Controller>,
        reporter: Arc<dyn StatusReporter>,
        options: ManagerOptions,
    ) -> TaskManager {
        let holders: Arc<Holders> = Arc::default();
        let inner = Arc::new_cyclic(|me| Inner {
            id: task.id.clone(),
            controller,
            reporter,
            options: options.saturated(),
            root: CancelToken::new(),
            state: Mutex::new(State {
                task,
                update: None,
                runner: None,
                scheduled: false,
                again: false,
                in_flight: None,
                backoff: None,
                retry_at: None,
                closed: false,
            }),
            stopped: Condvar::new(),
            retry: Arc::new(RetryTimer {
                manager: me.clone(),
                holders: Arc::clone(&holders),
            }),
            holders,
            me: me.clone(),
        });
        inner.schedule(&mut inner.state.lock());
        TaskManager { inner }
    }

    /// The id of the managed task.
    pub fn task_id(&self) -> &str {
        &self.inner.id
    }

    /// The task as the manager last saw it, with its latest status.
    pub fn task(&self) -> Task {
        self.inner.state.lock().task.clone()
    }

    /// Hands the manager a new definition of its task.
    ///
    /// Ignored when nothing but the status differs, or when it lowers the desired
    /// state. Otherwise the operation in flight is cancelled, and the controller's
    /// `update` is called with the new definition before the next step. Fails with
    /// [`Error::TaskManagerClosed`] after [`close`](TaskManager::close), and with
    /// [`Error::TaskUpdateRejected`] for another task.
    pub fn update(&self, task: &Task) -> Result<(), Error> {
        let inner = &self.inner;
        let mut state = inner.state.lock();
        if state.closed {
            return Err(Error::TaskManagerClosed);
        }
        if task.id != inner.id {
            return Err(Error::TaskUpdateRejected);
        }
        if task.desired_state < state.task.desired_state || same_definition(task, &state.task) {
            return Ok(());
        }
        let mut next = task.clone();
        next.status = state.task.status.clone();
        state.task = next.clone();
        state.update = Some(next);
        if let Some(in_flight) = &state.in_flight {
            in_flight.cancel();
        }
        state.retry_at = None;
        inner.schedule(&mut state);
        Ok(())
    }

    /// Forwards a log subscription to the controller's logs capability; a panic of
    /// the controller or of `publisher` fails the subscription.
    pub fn logs(
        &self,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
    ) -> Result<(), Error> {
        match self.inner.controller.as_logs() {
            Some(logs) => contain_result("log subscription", &self.inner.id, || {
                logs.logs(cancel, publisher, options)
            }),
            None => Err(Error::other(format!(
                "task {}: the controller has no logs",
                self.inner.id
            ))),
        }
    }

    /// Cancels the operation in flight and stops the manager, returning once its
    /// step has returned. A controller call that ignores its token is waited for
    /// two seconds at most, then left to finish on its thread (and logged).
    /// Idempotent; the controller itself is left open.
    pub fn close(&self) {
        if !self.close_until(crate::time::after(STUCK_CALL_WAIT)) {
            log::warn!(
                target: "swarmexec",
                "task {}: a controller call ignores cancellation; it is left to finish on its thread",
                self.inner.id
            );
        }
    }

    /// Closes without waiting for the step in flight.
    pub(crate) fn cancel(&self) {
        let inner = &self.inner;
        inner.holders.close();
        let mut state = inner.state.lock();
        if !state.closed {
            state.closed = true;
            state.retry_at = None;
            inner.root.cancel();
        }
    }

    /// Closes, then waits until `deadline` for the step in flight; false if it
    /// is still running then.
    pub(crate) fn close_until(&self, deadline: Instant) -> bool {
        self.cancel();
        let inner = &self.inner;
        let mut state = inner.state.lock();
        // Called from a reporter on the manager's own thread, waiting would be for
        // ourselves.
        let current = std::thread::current().id();
        if state.runner == Some(current) {
            return true;
        }
        while state.scheduled {
            if inner.stopped.wait_until(&mut state, deadline).timed_out() {
                return !state.scheduled;
            }
        }
        drop(state);
        inner.holders.wait_until(deadline)
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }
}

impl Drop for TaskManager {
    /// Closes the manager, unless it was closed already.
    fn drop(&mut self) {
        if !self.is_closed() {
            self.close();
        }
    }
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("TaskManager")
            .field("task_id", &self.inner.id)
            .field("state", &state.task.status.state)
            .field("closed", &state.closed)
            .finish()
    }
}

/// Equal but for the status.
fn same_definition(a: &Task, b: &Task) -> bool {
    let Task {
        id,
        service_id,
        node_id,
        slot,
        annotations,
        desired_state,
        status: _,
        spec,
    } = a;
    *id == b.id
        && *service_id == b.service_id
        && *node_id == b.node_id
        && *slot == b.slot
        && *annotations == b.annotations
        && *desired_state == b.desired_state
        && *spec == b.spec
}

/// What to do after a step.
enum Next {
    Step,
    Park,
    Retry,
}

impl Inner {
    /// Queues the manager on the pool unless it is queued or running already, in
    /// which case it steps again when its step returns.
    fn schedule(&self, state: &mut MutexGuard<'_, State>) {
        if state.scheduled {
            state.again = true;
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        state.scheduled = true;
        let holders = Arc::clone(&self.holders);
        holders.hold();
        Pool::global().submit(move || {
            me.run();
            drop(me);
            holders.release();
        });
    }

    fn run(&self) {
        let mut state = self.state.lock();
        state.runner = Some(std::thread::current().id());
        loop {
            if state.closed {
                break;
            }
            let cancel = self.root.child();
            state.in_flight = Some(cancel.clone());
            state.again = false;
            let task = state.task.clone();
            let update = state.update.take();
            drop(state);

            let (status, result) = self.step(&cancel, &task, update);
            let changed = status != task.status;
            state = self.state.lock();
            state.in_flight = None;
            if changed {
                // Stored before it is reported: whoever hears of it finds it here.
                state.task.status.clone_from(&status);
                drop(state);
                self.report(&status);
                state = self.state.lock();
            }
            let next = match result {
                Ok(()) => {
                    state.backoff = None;
                    Next::Step
                }
                _ if state.again || state.update.is_some() => Next::Step,
                Err(Error::TaskRetry) => Next::Retry,
                Err(_) => Next::Park,
            };
            match next {
                Next::Step => continue,
                Next::Park => break,
                Next::Retry => {
                    self.arm_retry(&mut state);
                    break;
                }
            }
        }
        state.scheduled = false;
        state.runner = None;
        drop(state);
        self.stopped.notify_all();
    }

    /// One step: the pending update, then `do_task`, with panics turned into a
    /// failed task.
    fn step(
        &self,
        cancel: &CancelToken,
        task: &Task,
        update: Option<Task>,
    ) -> (TaskStatus, Result<(), Error>) {
        let attempt = contain("controller", &self.id, || {
            if let Some(update) = &update {
                if let Err(e) = self.controller.update(cancel, update) {
                    log::warn!(target: "swarmexec", "task {}: controller refused the update: {e}", self.id);
                }
            }
            do_task(cancel, task, &*self.controller)
        });
        attempt.unwrap_or_else(|panic| (failed_status(task, panic.to_string()), Ok(())))
    }

    /// Reports a status; a reporter that fails or panics is logged, and the
    /// manager goes on.
    fn report(&self, status: &TaskStatus) {
        let reported = contain_result("status reporter", &self.id, || {
            self.reporter.update_task_status(&self.id, status)
        });
        if let Err(e) = reported {
            log::warn!(target: "swarmexec", "task {}: reporting its status failed: {e}", self.id);
        }
    }

    fn arm_retry(&self, state: &mut State) {
        let nominal = match state.backoff {
            None => self.options.retry_start,
            Some(previous) => previous.saturating_mul(2).min(self.options.retry_cap),
        };
        state.backoff = Some(nominal);
        let at = crate::time::after(jitter(nominal));
        state.retry_at = Some(at);
        let retry = Arc::downgrade(&self.retry);
        timer::schedule(at, retry);
    }

    /// A retry's time came: runs it unless the manager moved on (an update, a
    /// later retry) or closed meanwhile.
    fn retry_due(&self) {
        let mut state = self.state.lock();
        if state.closed || state.retry_at.is_none_or(|at| at > Instant::now()) {
            return;
        }
        state.retry_at = None;
        self.schedule(&mut state);
    }
}

/// A delay between half and all of `nominal`.
fn jitter(nominal: Duration) -> Duration {
    // Each RandomState is freshly keyed: a source of randomness without a crate.
    let random = RandomState::new().hash_one(Instant::now());
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    nominal.mul_f64(0.5 + fraction / 2.0).min(nominal)
}
