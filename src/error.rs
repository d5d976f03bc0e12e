//! The crate's error type, temporary errors and exit-code errors.
//!
//! Errors are inspected by walking their chain: an error, the inner error of an
//! [`Error::Other`] or [`Error::Temporary`], and everything reachable through
//! [`source()`](std::error::Error::source). [`is_temporary`], [`Error::exit_code`],
//! [`Error::container_status`] and [`do_task`](crate::do_task)'s test for cancellation
//! all look along that chain, so wrapping an error never hides what it is.

use std::error::Error as StdError;

use crate::api::ContainerStatus;

/// Everything that can go wrong in this crate, and what controllers return.
///
/// The first variants are the reference's sentinel errors, with the same texts, so
/// a caller matches on them instead of comparing strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task asks for a runtime the executor does not support.
    #[error("exec: unsupported runtime")]
    RuntimeUnsupported,
    /// `prepare` was called on a task that is already prepared.
    #[error("exec: task already prepared")]
    TaskPrepared,
    /// The task has already been started, so the operation (such as `start`) is no
    /// longer valid. It does not mean the task is still running.
    #[error("exec: task already started")]
    TaskStarted,
    /// The controller refused an update of its task's definition.
    #[error("exec: task update rejected")]
    TaskUpdateRejected,
    /// The controller was closed.
    #[error("exec: controller closed")]
    ControllerClosed,
    /// Returned by [`do_task`](crate::do_task): the operation failed but should be
    /// retried. The returned status is still to be reported.
    #[error("exec: task retry")]
    TaskRetry,
    /// Returned by [`do_task`](crate::do_task): calling it again will not advance the
    /// task until the task is updated.
    #[error("exec: task noop")]
    TaskNoop,
    /// A secret or config the task needs has not arrived yet.
    #[error("dependency not ready")]
    DependencyNotReady,
    /// The [`CancelToken`](crate::CancelToken) was cancelled.
    #[error("context canceled")]
    Canceled,
    /// The [`CancelToken`](crate::CancelToken)'s deadline passed.
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    /// The task's program exited unsuccessfully.
    #[error("{0}")]
    Exit(ExitError),
    /// An error that is expected to go away: the operation should be retried.
    /// Made by [`make_temporary`].
    #[error(transparent)]
    Temporary(Box<Error>),
    /// Any other error, typically from a controller's runtime.
    #[error(transparent)]
    Other(Box<dyn StdError + Send + Sync>),
    /// The [`TaskManager`](crate::agent::TaskManager) was closed.
    #[error("task manager closed")]
    TaskManagerClosed,
    /// The [`Worker`](crate::agent::Worker) was closed.
    #[error("worker closed")]
    WorkerClosed,
    /// A task's spec cannot be run as written; the text names the problem.
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    /// The program a task names does not exist.
    #[error("program not found: {0}")]
    ProgramNotFound(String),
    /// The program a task names exists but cannot be executed.
    #[error("program is not executable: {0}")]
    ProgramNotExecutable(String),
    /// A string is not the name or wire value of a [`TaskState`](crate::api::TaskState).
    #[error("unknown task state {0:?}")]
    UnknownTaskState(String),
    /// A task asked for a secret or config outside the ones its spec references.
    #[error("task not authorized to access {kind} {id}")]
    NotAuthorized {
        /// `"secret"` or `"config"`.
        kind: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// A store holds no secret or config with this id.
    #[error("{kind} {id} not found")]
    NotFound {
        /// `"secret"` or `"config"`.
        kind: &'static str,
        /// The id that was asked for.
        id: String,
    },
}

impl Error {
    /// Wraps any error as [`Error::Other`].
    ///
    /// ```
    /// let err = swarmexec::Error::other("disk full");
    /// assert_eq!(err.to_string(), "disk full");
    /// ```
    pub fn other(e: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
        Error::Other(e.into())
    }

    /// The exit code of the first [`ExitError`] in this error's chain.
    pub fn exit_code(&self) -> Option<i32> {
        chain_of(self).find_map(|e| match e {
            Error::Exit(exit) => Some(exit.code),
            _ => None,
        })
    }

    /// The container status carried by the first [`ExitError`] in this error's chain
    /// that carries one.
    pub fn container_status(&self) -> Option<ContainerStatus> {
        chain_of(self).find_map(|e| match e {
            Error::Exit(exit) => exit.container_status.clone(),
            _ => None,
        })
    }

    /// True when this error is, or was caused by, [`Error::Canceled`] or
    /// [`Error::DeadlineExceeded`]: the operation was cut short, not failed.
    pub fn is_cancellation(&self) -> bool {
        chain_of(self).any(|e| matches!(e, Error::Canceled | Error::DeadlineExceeded))
    }
}

/// An unsuccessful exit of a task's program, with its code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    code: i32,
    message: String,
    container_status: Option<ContainerStatus>,
}

impl ExitError {
    /// An exit with `code`, described by `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        ExitError {
            code,
            message: message.into(),
            container_status: None,
        }
    }

    /// Attaches the status of the process or container that exited.
    pub fn with_container_status(mut self, status: ContainerStatus) -> Self {
        self.container_status = Some(status);
        self
    }

    /// The exit code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The description of the exit.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status of the process or container that exited, if attached.
    pub fn container_status(&self) -> Option<&ContainerStatus> {
        self.container_status.as_ref()
    }
}

impl From<ExitError> for Error {
    fn from(e: ExitError) -> Self {
        Error::Exit(e)
    }
}

/// Implemented by errors that carry an exit code.
pub trait ExitCoder {
    /// The exit code.
    fn exit_code(&self) -> i32;
}

impl ExitCoder for ExitError {
    fn exit_code(&self) -> i32 {
        self.code
    }
}

/// Marks `err` as temporary, so that [`do_task`](crate::do_task) retries instead of
/// failing the task. An error that is already temporary is returned as it is.
///
/// ```
/// use swarmexec::{is_temporary, make_temporary, Error};
/// let err = make_temporary(Error::other("registry unreachable"));
/// assert!(is_temporary(&err));
/// assert_eq!(err.to_string(), "registry unreachable");
/// ```
pub fn make_temporary(err: Error) -> Error {
    if is_temporary(&err) {
        err
    } else {
        Error::Temporary(Box::new(err))
    }
}

/// True when `err`, or any error along its chain, is [`Error::Temporary`].
pub fn is_temporary(err: &(dyn StdError + 'static)) -> bool {
    chain_of(err).any(|e| matches!(e, Error::Temporary(_)))
}

/// This crate's errors along the chain that starts at `err`, however they are boxed.
///
/// `Temporary` and `Other` are transparent, so their `source()` skips their inner
/// error; the walk steps into it explicitly. A `Box<Error>` met through `source()`
/// does not downcast to `Error`, so both forms are tried.
fn chain_of<'a>(err: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a Error> {
    let mut next = Some(err);
    std::iter::from_fn(move || loop {
        let current = next?;
        let ours = as_ours(current);
        next = match ours {
            Some(Error::Temporary(inner)) => Some(&**inner as &(dyn StdError + 'static)),
            Some(Error::Other(inner)) => Some(&**inner as &(dyn StdError + 'static)),
            _ => current.source(),
        };
        if ours.is_some() {
            return ours;
        }
    })
}

fn as_ours<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Error> {
    err.downcast_ref::<Error>()
        .or_else(|| err.downcast_ref::<Box<Error>>().map(|boxed| &**boxed))
}
