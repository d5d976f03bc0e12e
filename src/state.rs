//! The state machine: [`do_task`] and [`resolve`].

use std::time::SystemTime;

use crate::api::{ContainerStatus, Task, TaskState, TaskStatus};
use crate::{is_temporary, CancelToken, Controller, Error, Executor};

/// Moves `task` one step along its lifecycle, calling at most one operation of
/// `ctlr`, and returns the task's new status.
///
/// The caller reports the status and places it back on the task before the next
/// call. The result is `Ok(())` when the task advanced or reached a terminal state,
/// [`Error::TaskNoop`] when calling again will change nothing until the task is
/// updated, and [`Error::TaskRetry`] when the operation failed in a way worth retrying
/// (it was cancelled, or its error [`is_temporary`]); the status is to be reported in
/// every case. Errors of the controller are never returned: they are recorded on the
/// status, and a fatal one moves the task to [`Rejected`](TaskState::Rejected) (before
/// it started) or [`Failed`](TaskState::Failed).
///
/// The steps, with the message each sets: `New`/`Pending`/`Assigned` → `Accepted`
/// ("accepted") → `Preparing` ("preparing") → `prepare` → `Ready` ("prepared") →
/// `Starting` ("starting") → `start` → `Running` ("started") → `wait` → `Completed`
/// ("finished"). A task waits in a state that has reached its desired state, except
/// that a started operation (`Preparing`, `Starting`, `Running`) always completes.
/// A desired state of `Shutdown` or beyond calls `shutdown` and moves to `Shutdown`
/// ("shutdown") unless the task is already terminal.
///
/// ```
/// use swarmexec::api::{Task, TaskState};
/// use swarmexec::{do_task, CancelToken, Error, StubController};
///
/// let ctlr = StubController::new();
/// let cancel = CancelToken::new();
/// let mut task = Task {
///     id: "web.1".into(),
///     desired_state: TaskState::Running,
///     ..Default::default()
/// };
/// task.status.state = TaskState::Assigned;
/// loop {
///     let (status, result) = do_task(&cancel, &task, &ctlr);
///     task.status = status; // report it, then put it back
///     match result {
///         Ok(()) => continue,
///         Err(Error::TaskNoop) => break,
///         Err(e) => panic!("{e}"),
///     }
/// }
/// assert_eq!(task.status.state, TaskState::Completed);
/// assert_eq!(task.status.message, "finished");
/// assert_eq!(ctlr.calls("wait"), 1);
/// ```
pub fn do_task<C: Controller + ?Sized>(
    cancel: &CancelToken,
    task: &Task,
    ctlr: &C,
) -> (TaskStatus, Result<(), Error>) {
    let old = &task.status;
    let (outcome, failure) = match plan(task) {
        Step::Noop => (Outcome::Noop, Failure::NONE),
        Step::Advance(state, message) => (Outcome::Advance(state, message), Failure::NONE),
        Step::Call(op, state, message) => match op.call(ctlr, cancel) {
            Ok(()) => (Outcome::Advance(state, message), Failure::NONE),
            Err(err) => judge(task, err),
        },
    };

    let mut touched = !matches!(outcome, Outcome::Noop | Outcome::Cancelled);
    let (mut status, result) = match outcome {
        Outcome::Noop => (old.clone(), Err(Error::TaskNoop)),
        Outcome::Cancelled => (old.clone(), Err(Error::TaskRetry)),
        Outcome::Advance(state, message) => {
            (derive(old, state, Some(message), String::new()), Ok(()))
        }
        Outcome::Retry(err) => (derive(old, old.state, None, err), Err(Error::TaskRetry)),
        Outcome::Fatal(state, err) => (derive(old, state, None, err), Ok(())),
    };
    // A rejected task never ran: it has no runtime status to report.
    if status.state >= TaskState::Starting && status.state != TaskState::Rejected {
        touched |= collect_runtime_status(cancel, ctlr, &mut status, failure);
    }
    finish(task, &mut status, touched);
    (status, result)
}

/// Asks `executor` for a controller for `task`, and returns the status that result
/// gives the task, to be reported whether or not a controller was made.
///
/// A failure is recorded with message "resolving controller failed" and the error's
/// text, and makes the task [`Rejected`](TaskState::Rejected) before it started or
/// [`Failed`](TaskState::Failed) while starting or running; a terminal state is kept.
/// A success moves a task that had not been accepted to
/// [`Accepted`](TaskState::Accepted) ("accepted"). `cancel` is accepted for symmetry
/// with [`do_task`]: asking for a controller does not block.
///
/// ```
/// use swarmexec::api::{Task, TaskState};
/// use swarmexec::{resolve, CancelToken, StubExecutor};
///
/// let mut task = Task { desired_state: TaskState::Running, ..Default::default() };
/// task.status.state = TaskState::Assigned;
/// let (status, controller) = resolve(&CancelToken::new(), &task, &StubExecutor::new());
/// assert!(controller.is_ok());
/// assert_eq!(status.state, TaskState::Accepted);
/// ```
pub fn resolve<E: Executor + ?Sized>(
    _cancel: &CancelToken,
    task: &Task,
    executor: &E,
) -> (TaskStatus, Result<Box<dyn Controller>, Error>) {
    let controller = executor.controller(task);
    (resolved_status(task, &controller), controller)
}

/// The status [`resolve`] gives `task` for the executor's answer `controller`:
/// for callers that ask the executor themselves (the worker, which contains its
/// panics).
pub(crate) fn resolved_status(
    task: &Task,
    controller: &Result<Box<dyn Controller>, Error>,
) -> TaskStatus {
    let old = &task.status;
    let mut status = match controller {
        Err(err) => {
            let state = match old.state {
                s if s < TaskState::Starting => TaskState::Rejected,
                s if s <= TaskState::Running => TaskState::Failed,
                s => s,
            };
            let message = Some("resolving controller failed");
            derive(old, state, message, err.to_string())
        }
        Ok(_) if old.state < TaskState::Accepted => {
            derive(old, TaskState::Accepted, Some("accepted"), String::new())
        }
        Ok(_) => old.clone(),
    };
    let touched = controller.is_err() || status.state != old.state;
    finish(task, &mut status, touched);
    status
}

/// The status of a task that failed outside any controller error (for example a
/// controller that panicked): `Rejected` before it started, else `Failed`, with `err`.
/// A terminal state is kept.
pub(crate) fn failed_status(task: &Task, err: String) -> TaskStatus {
    let old = &task.status;
    let state = match old.state {
        s if s.is_terminal() => s,
        s if s < TaskState::Starting => TaskState::Rejected,
        _ => TaskState::Failed,
    };
    let mut status = derive(old, state, None, err);
    finish(task, &mut status, true);
    status
}

/// What the task's state and desired state call for.
enum Step {
    Noop,
    /// A transition that needs no controller call.
    Advance(TaskState, &'static str),
    /// A controller call, then on success a transition.
    Call(Operation, TaskState, &'static str),
}

#[derive(Clone, Copy)]
enum Operation {
    Prepare,
    Start,
    Wait,
    Shutdown,
}

impl Operation {
    /// Calls the controller; an "already done" answer to a repeated prepare or
    /// start counts as success.
    fn call<C: Controller + ?Sized>(self, ctlr: &C, cancel: &CancelToken) -> Result<(), Error> {
        match self {
            Operation::Prepare => match ctlr.prepare(cancel) {
                Err(Error::TaskPrepared) => Ok(()),
                other => other,
            },
            Operation::Start => match ctlr.start(cancel) {
                Err(Error::TaskStarted) => Ok(()),
                other => other,
            },
            Operation::Wait => ctlr.wait(cancel),
            Operation::Shutdown => ctlr.shutdown(cancel),
        }
    }
}

fn plan(task: &Task) -> Step {
    use TaskState::*;
    let state = task.status.state;
    let desired = task.desired_state;
    // The agent bounds every desired state from Shutdown on (Remove included) by
    // Shutdown.
    if desired >= Shutdown {
        return if state >= Completed {
            Step::Noop
        } else {
            Step::Call(Operation::Shutdown, Shutdown, "shutdown")
        };
    }
    if state > desired {
        return Step::Noop;
    }
    // An operation under way completes even past the desired state.
    match state {
        Preparing => return Step::Call(Operation::Prepare, Ready, "prepared"),
        Starting => return Step::Call(Operation::Start, Running, "started"),
        Running => return Step::Call(Operation::Wait, Completed, "finished"),
        _ => {}
    }
    if state >= desired {
        return Step::Noop;
    }
    match state {
        New | Pending | Assigned => Step::Advance(Accepted, "accepted"),
        Accepted => Step::Advance(Preparing, "preparing"),
        Ready => Step::Advance(Starting, "starting"),
        _ => Step::Noop,
    }
}

enum Outcome {
    Noop,
    Advance(TaskState, &'static str),
    /// The operation was cut short by the token: retry, record nothing.
    Cancelled,
    /// A temporary error, recorded; retry.
    Retry(String),
    /// A fatal error, recorded; the task ends in the given state.
    Fatal(TaskState, String),
}

/// What a failed controller call tells about the runtime.
struct Failure {
    container: Option<ContainerStatus>,
    exit_code: i32,
}

impl Failure {
    const NONE: Failure = Failure {
        container: None,
        exit_code: 0,
    };
}

fn judge(task: &Task, err: Error) -> (Outcome, Failure) {
    let failure = Failure {
        container: err.container_status(),
        exit_code: err.exit_code().unwrap_or(0),
    };
    let outcome = if err.is_cancellation() {
        Outcome::Cancelled
    } else if is_temporary(&err) {
        Outcome::Retry(err.to_string())
    } else {
        let state = if task.status.state < TaskState::Starting {
            TaskState::Rejected
        } else {
            TaskState::Failed
        };
        log::warn!(target: "swarmexec", "task {}: fatal error: {err}", task.id);
        Outcome::Fatal(state, err.to_string())
    };
    (outcome, failure)
}

/// A copy of `old` in `state`, with `err`, and with `message` when one is given;
/// built field by field so that text about to be replaced is never copied.
fn derive(old: &TaskStatus, state: TaskState, message: Option<&str>, err: String) -> TaskStatus {
    TaskStatus {
        timestamp: old.timestamp,
        state,
        message: message.map_or_else(|| old.message.clone(), str::to_owned),
        err,
        container: old.container.clone(),
        port_status: old.port_status.clone(),
    }
}

/// Records what the runtime reports about a started task: the container status
/// (from the failure, else the controller's capability, else the previous one), the
/// failure's non-zero exit code, and the port status. Returns whether anything was
/// written.
fn collect_runtime_status<C: Controller + ?Sized>(
    cancel: &CancelToken,
    ctlr: &C,
    status: &mut TaskStatus,
    failure: Failure,
) -> bool {
    let mut touched = false;
    let container = match (failure.container, ctlr.as_container_statuser()) {
        (Some(reported), _) => Some(reported),
        (None, Some(statuser)) => Some(
            statuser
                .container_status(cancel)
                .unwrap_or_else(|e| {
                    log_unavailable("container status", &e);
                    None
                })
                .unwrap_or_else(|| status.container.take().unwrap_or_default()),
        ),
        // Unlike the reference, an exit code is kept even without the capability.
        (None, None) if failure.exit_code != 0 => Some(status.container.take().unwrap_or_default()),
        (None, None) => None,
    };
    if let Some(mut container) = container {
        if failure.exit_code != 0 {
            container.exit_code = failure.exit_code;
        }
        status.container = Some(container);
        touched = true;
    }
    if let Some(statuser) = ctlr.as_port_statuser() {
        match statuser.port_status(cancel) {
            Ok(ports) => {
                status.port_status = ports;
                touched = true;
            }
            Err(e) => log_unavailable("port status", &e),
        }
    }
    touched
}

fn log_unavailable(what: &str, err: &Error) {
    if !err.is_cancellation() {
        log::warn!(target: "swarmexec", "{what} unavailable: {err}");
    }
}

/// Stamps a changed status and logs a state change. Comparing statuses costs more
/// than the rest of a step, so it is done only when something was `touched`.
fn finish(task: &Task, status: &mut TaskStatus, touched: bool) {
    let old = &task.status;
    if touched && differs_ignoring_time(old, status) {
        let now = SystemTime::now();
        status.timestamp = Some(match old.timestamp {
            Some(previous) if previous > now => previous,
            _ => now,
        });
    }
    if status.state != old.state {
        log::debug!(
            target: "swarmexec",
            "task {}: {} -> {} (desired {})",
            task.id, old.state, status.state, task.desired_state
        );
    }
}

fn differs_ignoring_time(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.state != b.state
        || a.message != b.message
        || a.err != b.err
        || a.container != b.container
        || a.port_status != b.port_status
}
