//! The [`Controller`] trait, its optional capabilities and log publishing.

use crate::api::{
    ContainerStatus, Health, LogMessage, LogSubscriptionOptions, PortStatus, ResourceUsage, Task,
};
use crate::{CancelToken, Error};

/// Controls the execution of one task.
///
/// [`do_task`](crate::do_task) calls these methods to move the task along its
/// lifecycle; they block and should return [`Error::Canceled`] or
/// [`Error::DeadlineExceeded`] promptly once `cancel` is done. Implementations are
/// shared between threads: `wait` may run while another thread calls `shutdown` or
/// `terminate`.
pub trait Controller: Send + Sync {
    /// Replaces the task definition the controller works from. Returns
    /// [`Error::TaskUpdateRejected`] when the new definition changes something that
    /// cannot change; ignored once the task has exited.
    fn update(&self, cancel: &CancelToken, task: &Task) -> Result<(), Error>;

    /// Creates every resource the task needs, so that `start` can run at once.
    /// Returns [`Error::TaskPrepared`] when already prepared.
    fn prepare(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Starts the task and returns once it has started. Returns
    /// [`Error::TaskStarted`] when it was started before.
    fn start(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Blocks until the task has exited. `Ok` for a successful exit; an
    /// [`Error::Exit`] carrying the exit code for an unsuccessful one.
    fn wait(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Asks the task to exit gracefully, and returns once it has.
    fn shutdown(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Stops the task at once.
    fn terminate(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Releases every resource the controller allocated for the task.
    fn remove(&self, cancel: &CancelToken) -> Result<(), Error>;

    /// Releases the controller's own ephemeral resources. Later calls to any method
    /// may return [`Error::ControllerClosed`].
    fn close(&self) -> Result<(), Error>;

    /// The container-status capability, when the controller has it.
    fn as_container_statuser(&self) -> Option<&dyn ContainerStatuser> {
        None
    }

    /// The port-status capability, when the controller has it.
    fn as_port_statuser(&self) -> Option<&dyn PortStatuser> {
        None
    }

    /// The logs capability, when the controller has it.
    fn as_logs(&self) -> Option<&dyn ControllerLogs> {
        None
    }

    /// The resource-usage capability, when the controller has it.
    fn as_resource_usager(&self) -> Option<&dyn ResourceUsager> {
        None
    }

    /// The health-status capability, when the controller has it.
    fn as_health_statuser(&self) -> Option<&dyn HealthStatuser> {
        None
    }
}

/// Reports the status of what runs a task.
pub trait ContainerStatuser {
    /// The current status; `None` when there is nothing to report (for example before
    /// the task was started).
    fn container_status(&self, cancel: &CancelToken) -> Result<Option<ContainerStatus>, Error>;
}

/// Reports what a task has used: CPU time, memory, processes.
pub trait ResourceUsager {
    /// What the task has used so far, or in all once it has ended; `None` before
    /// it was started.
    fn resource_usage(&self, cancel: &CancelToken) -> Result<Option<ResourceUsage>, Error>;
}

/// Reports a task's health, in the style of [`ContainerStatuser`].
pub trait HealthStatuser {
    /// The task's health; `None` when it has no health check (or was not started).
    fn health(&self, cancel: &CancelToken) -> Result<Option<Health>, Error>;
}

/// Reports the ports a controller manages at the host level.
pub trait PortStatuser {
    /// The published ports; `None` when there are none to report.
    fn port_status(&self, cancel: &CancelToken) -> Result<Option<PortStatus>, Error>;
}

/// Makes a task's logs available.
pub trait ControllerLogs {
    /// Publishes the task's log messages selected by `options` to `publisher`, until
    /// they are exhausted (or, when following, until the task exits), `cancel` is done,
    /// or publishing fails.
    fn logs(
        &self,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
    ) -> Result<(), Error>;
}

/// Receives log messages.
pub trait LogPublisher: Send + Sync {
    /// Delivers one message; an error ends the subscription.
    fn publish(&self, cancel: &CancelToken, message: LogMessage) -> Result<(), Error>;
}

/// A [`LogPublisher`] made from a closure.
///
/// ```
/// use swarmexec::{api::LogMessage, CancelToken, LogPublisher, LogPublisherFn};
/// let publisher = LogPublisherFn(|_: &CancelToken, m: LogMessage| {
///     assert_eq!(m.data, b"hello");
///     Ok(())
/// });
/// let message = LogMessage { data: b"hello".to_vec(), ..Default::default() };
/// publisher.publish(&CancelToken::new(), message).unwrap();
/// ```
pub struct LogPublisherFn<F>(pub F);

impl<F> std::fmt::Debug for LogPublisherFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogPublisherFn")
    }
}

impl<F> LogPublisher for LogPublisherFn<F>
where
    F: Fn(&CancelToken, LogMessage) -> Result<(), Error> + Send + Sync,
{
    fn publish(&self, cancel: &CancelToken, message: LogMessage) -> Result<(), Error> {
        (self.0)(cancel, message)
    }
}

/// Forwards each message into a channel; fails once every receiver is gone.
impl LogPublisher for crossbeam_channel::Sender<LogMessage> {
    fn publish(&self, _cancel: &CancelToken, message: LogMessage) -> Result<(), Error> {
        self.send(message)
            .map_err(|_| Error::other("log subscriber has gone away"))
    }
}

/// Hands out log publishers for subscriptions.
pub trait LogPublisherProvider: Send + Sync {
    /// A publisher for `subscription_id`, and the function to call once publishing
    /// is over.
    #[allow(clippy::type_complexity)]
    fn publisher(
        &self,
        cancel: &CancelToken,
        subscription_id: &str,
    ) -> Result<(Box<dyn LogPublisher>, Box<dyn FnOnce() + Send>), Error>;
}
