//! Test doubles: [`StubController`], a controller whose behaviour tests choose, and
//! [`StubExecutor`], which hands such controllers out.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::api::{ContainerStatus, EncryptionKey, Node, NodeDescription, PortStatus, Task};
use crate::executor::DependencyStore;
use crate::{
    CancelToken, ContainerStatuser, Controller, DependencyManager, Error, Executor, PortStatuser,
};

type TaskFn = Box<dyn Fn(&CancelToken, &Task) -> Result<(), Error> + Send + Sync>;
type OpFn = Box<dyn Fn(&CancelToken) -> Result<(), Error> + Send + Sync>;
type CloseFn = Box<dyn Fn() -> Result<(), Error> + Send + Sync>;
type ContainerFn =
    Box<dyn Fn(&CancelToken) -> Result<Option<ContainerStatus>, Error> + Send + Sync>;
type PortFn = Box<dyn Fn(&CancelToken) -> Result<Option<PortStatus>, Error> + Send + Sync>;

/// The names [`StubController::calls`] counts, indexed by [`Method`].
const METHODS: [&str; 8] = [
    "prepare",
    "start",
    "wait",
    "shutdown",
    "terminate",
    "remove",
    "update",
    "close",
];

/// Indexes the call counters; the first [`OPERATIONS`] also index the closures of the
/// methods that take only a token.
#[derive(Clone, Copy)]
enum Method {
    Prepare,
    Start,
    Wait,
    Shutdown,
    Terminate,
    Remove,
    Update,
    Close,
}

const OPERATIONS: usize = 6;

/// A [`Controller`] for tests: each method runs the closure set for it, or returns
/// `Ok(())`, and every call is counted.
///
/// The container-status and port-status capabilities exist only once a closure is
/// set for them, so a stub can stand for controllers with or without them.
///
/// ```
/// use swarmexec::{CancelToken, Controller, Error, StubController};
/// let stub = StubController::new().on_start(|_| Err(Error::other("no such image")));
/// let cancel = CancelToken::new();
/// assert!(stub.prepare(&cancel).is_ok());
/// assert_eq!(stub.start(&cancel).unwrap_err().to_string(), "no such image");
/// assert_eq!((stub.calls("prepare"), stub.calls("start")), (1, 1));
/// ```
#[derive(Default)]
pub struct StubController {
    update_fn: Option<TaskFn>,
    op_fns: [Option<OpFn>; OPERATIONS],
    close_fn: Option<CloseFn>,
    container_status_fn: Option<ContainerFn>,
    port_status_fn: Option<PortFn>,
    counts: [AtomicUsize; 8],
}

impl StubController {
    /// A stub whose every method returns `Ok(())`.
    pub fn new() -> Self {
        StubController::default()
    }

    /// Sets what `update` does.
    pub fn on_update(
        mut self,
        f: impl Fn(&CancelToken, &Task) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.update_fn = Some(Box::new(f));
        self
    }

    /// Sets what `prepare` does.
    pub fn on_prepare(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Prepare, f)
    }

    /// Sets what `start` does.
    pub fn on_start(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Start, f)
    }

    /// Sets what `wait` does.
    pub fn on_wait(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Wait, f)
    }

    /// Sets what `shutdown` does.
    pub fn on_shutdown(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Shutdown, f)
    }

    /// Sets what `terminate` does.
    pub fn on_terminate(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Terminate, f)
    }

    /// Sets what `remove` does.
    pub fn on_remove(
        self,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.on(Method::Remove, f)
    }

    /// Sets what `close` does.
    pub fn on_close(mut self, f: impl Fn() -> Result<(), Error> + Send + Sync + 'static) -> Self {
        self.close_fn = Some(Box::new(f));
        self
    }

    /// Gives the stub the container-status capability, answered by `f`.
    pub fn on_container_status(
        mut self,
        f: impl Fn(&CancelToken) -> Result<Option<ContainerStatus>, Error> + Send + Sync + 'static,
    ) -> Self {
        self.container_status_fn = Some(Box::new(f));
        self
    }

    /// Gives the stub the port-status capability, answered by `f`.
    pub fn on_port_status(
        mut self,
        f: impl Fn(&CancelToken) -> Result<Option<PortStatus>, Error> + Send + Sync + 'static,
    ) -> Self {
        self.port_status_fn = Some(Box::new(f));
        self
    }

    /// How often `method` was called: one of "update" "prepare" "start" "wait"
    /// "shutdown" "terminate" "remove" "close"; 0 for any other name.
    pub fn calls(&self, method: &str) -> usize {
        METHODS
            .iter()
            .position(|name| *name == method)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// How many calls were made to the eight `Controller` methods together.
    pub fn total_calls(&self) -> usize {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn on(
        mut self,
        method: Method,
        f: impl Fn(&CancelToken) -> Result<(), Error> + Send + Sync + 'static,
    ) -> Self {
        self.op_fns[method as usize] = Some(Box::new(f));
        self
    }

    fn count(&self, method: Method) {
        self.counts[method as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn run(&self, method: Method, cancel: &CancelToken) -> Result<(), Error> {
        self.count(method);
        match &self.op_fns[method as usize] {
            Some(f) => f(cancel),
            None => Ok(()),
        }
    }
}

impl Controller for StubController {
    fn update(&self, cancel: &CancelToken, task: &Task) -> Result<(), Error> {
        self.count(Method::Update);
        self.update_fn.as_ref().map_or(Ok(()), |f| f(cancel, task))
    }

    fn prepare(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Prepare, cancel)
    }

    fn start(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Start, cancel)
    }

    fn wait(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Wait, cancel)
    }

    fn shutdown(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Shutdown, cancel)
    }

    fn terminate(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Terminate, cancel)
    }

    fn remove(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.run(Method::Remove, cancel)
    }

    fn close(&self) -> Result<(), Error> {
        self.count(Method::Close);
        self.close_fn.as_ref().map_or(Ok(()), |f| f())
    }

    fn as_container_statuser(&self) -> Option<&dyn ContainerStatuser> {
        self.container_status_fn.as_ref().map(|_| self as _)
    }

    fn as_port_statuser(&self) -> Option<&dyn PortStatuser> {
        self.port_status_fn.as_ref().map(|_| self as _)
    }
}

impl ContainerStatuser for StubController {
    fn container_status(&self, cancel: &CancelToken) -> Result<Option<ContainerStatus>, Error> {
        self.container_status_fn
            .as_ref()
            .map_or(Ok(None), |f| f(cancel))
    }
}

impl PortStatuser for StubController {
    fn port_status(&self, cancel: &CancelToken) -> Result<Option<PortStatus>, Error> {
        self.port_status_fn.as_ref().map_or(Ok(None), |f| f(cancel))
    }
}

impl fmt::Debug for StubController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut calls = f.debug_map();
        for (name, count) in METHODS.iter().zip(&self.counts) {
            calls.entry(name, &count.load(Ordering::Relaxed));
        }
        calls.finish()
    }
}

type ControllerFn = Box<dyn Fn(&Task) -> Result<Box<dyn Controller>, Error> + Send + Sync>;

/// An [`Executor`] for tests: hands out a [`StubController`] for every task, or
/// what the closure set with [`on_controller`](StubExecutor::on_controller) makes,
/// and keeps secrets and configs in a [`DependencyStore`].
///
/// ```
/// use swarmexec::api::Task;
/// use swarmexec::{resolve, CancelToken, Error, StubExecutor};
/// let refusing = StubExecutor::new().on_controller(|_| Err(Error::RuntimeUnsupported));
/// let (status, controller) = resolve(&CancelToken::new(), &Task::default(), &refusing);
/// assert!(controller.is_err());
/// assert_eq!(status.err, "exec: unsupported runtime");
/// ```
pub struct StubExecutor {
    controller_fn: Option<ControllerFn>,
    description: NodeDescription,
    dependencies: DependencyStore,
}

impl StubExecutor {
    /// An executor handing out a fresh [`StubController`] for every task.
    pub fn new() -> Self {
        StubExecutor {
            controller_fn: None,
            description: NodeDescription::default(),
            dependencies: DependencyStore::new(),
        }
    }

    /// Sets how controllers are made.
    pub fn on_controller(
        mut self,
        f: impl Fn(&Task) -> Result<Box<dyn Controller>, Error> + Send + Sync + 'static,
    ) -> Self {
        self.controller_fn = Some(Box::new(f));
        self
    }

    /// Sets what `describe` returns.
    pub fn with_description(mut self, description: NodeDescription) -> Self {
        self.description = description;
        self
    }

    /// The executor's secrets and configs.
    pub fn dependency_store(&self) -> &DependencyStore {
        &self.dependencies
    }
}

impl Default for StubExecutor {
    fn default() -> Self {
        StubExecutor::new()
    }
}

impl Executor for StubExecutor {
    fn describe(&self, _cancel: &CancelToken) -> Result<NodeDescription, Error> {
        Ok(self.description.clone())
    }

    fn configure(&self, _cancel: &CancelToken, _node: &Node) -> Result<(), Error> {
        Ok(())
    }

    fn controller(&self, task: &Task) -> Result<Box<dyn Controller>, Error> {
        match &self.controller_fn {
            Some(f) => f(task),
            None => Ok(Box::new(StubController::new())),
        }
    }

    fn set_network_bootstrap_keys(&self, _keys: &[EncryptionKey]) -> Result<(), Error> {
        Ok(())
    }

    fn dependencies(&self) -> Option<&dyn DependencyManager> {
        Some(&self.dependencies)
    }
}

impl fmt::Debug for StubExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StubExecutor")
            .field("dependencies", &self.dependencies)
            .finish_non_exhaustive()
    }
}
