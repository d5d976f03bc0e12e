//! Drive tasks through their lifecycle from blocking Rust code.
//!
//! `swarmexec` is the task-execution core of an orchestration agent, modelled on the
//! `agent/exec` package of Docker SwarmKit, for programs without an async runtime:
//! every call blocks, cancellation is a [`CancelToken`], and concurrency is threads
//! and `crossbeam-channel`.
//!
//! # The pieces
//!
//! - [`api`] holds the data: a [`Task`](api::Task) has a desired state, set by whoever
//!   orchestrates, and a [`TaskStatus`](api::TaskStatus) whose
//!   [`TaskState`](api::TaskState) the agent advances: `NEW`, `PENDING`, `ASSIGNED`,
//!   `ACCEPTED`, `PREPARING`, `READY`, `STARTING`, `RUNNING`, then one of the terminal
//!   `COMPLETE`, `SHUTDOWN`, `FAILED` or `REJECTED`.
//! - A [`Controller`] runs one task: `prepare`, `start`, `wait`, `shutdown`,
//!   `terminate`, `remove`, `close`, plus optional capabilities (container status,
//!   port status, logs) reached through `as_*` methods.
//! - An [`Executor`] hands out controllers; [`resolve`] asks it for one and says what
//!   the answer means for the task's status.
//! - [`do_task`] is the state machine: it moves a task exactly one step, calling at
//!   most one controller method, and returns the new status. Call it again with the
//!   status placed back on the task until it returns [`Error::TaskNoop`].
//! - [`Error`] carries the reference's sentinel errors; [`make_temporary`] marks an
//!   error as worth retrying and [`ExitError`] carries a program's exit code.
//! - Secrets and configs reach controllers through the dependency traits
//!   ([`DependencyManager`], [`DependencyGetter`]) and the stores in [`executor`],
//!   whose per-task view serves only what the task's spec references.
//! - [`StubController`] is a controller for tests whose every method is a closure;
//!   [`StubExecutor`] hands them out.
//! - [`process::ProcessExecutor`] (Linux) runs tasks as supervised OS processes.
//! - [`agent::Worker`] and [`agent::TaskManager`] keep calling `do_task` for every
//!   task assigned to the node, on a shared pool of threads, and report statuses.
//! - [`bench`](mod@bench) times a controller's lifecycle, step by step.
//!
//! # Driving a task
//!
//! ```
//! use swarmexec::api::{Task, TaskState};
//! use swarmexec::{do_task, make_temporary, CancelToken, Error, StubController};
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! // A controller whose first start fails with a temporary error.
//! let failed_once = AtomicBool::new(false);
//! let ctlr = StubController::new().on_start(move |_| {
//!     if failed_once.swap(true, Ordering::SeqCst) {
//!         Ok(())
//!     } else {
//!         Err(make_temporary(Error::other("port busy")))
//!     }
//! });
//!
//! let cancel = CancelToken::new();
//! let mut task = Task { id: "api.1".into(), desired_state: TaskState::Running, ..Default::default() };
//! let mut seen = vec![];
//! loop {
//!     let (status, result) = do_task(&cancel, &task, &ctlr);
//!     seen.push((status.state, status.err.clone()));
//!     task.status = status;
//!     match result {
//!         Ok(()) | Err(Error::TaskRetry) => continue, // an agent would back off on retry
//!         Err(Error::TaskNoop) => break,              // wait for the task to be updated
//!         Err(e) => unreachable!("do_task returns only noop or retry: {e}"),
//!     }
//! }
//! assert_eq!(task.status.state, TaskState::Completed);
//! assert!(seen.contains(&(TaskState::Starting, "port busy".to_string())));
//! ```
//!
//! # Cancellation
//!
//! Every blocking call takes a [`CancelToken`]. Cancelling a token cancels its
//! children; [`CancelToken::with_timeout`] adds a deadline. A controller that
//! returns [`Error::Canceled`] or [`Error::DeadlineExceeded`] makes [`do_task`]
//! return [`Error::TaskRetry`] without recording an error on the task.
//!
//! # Benchmarking your controller
//!
//! [`bench::Bench`] drives any [`Controller`] (or the tasks of any [`Executor`])
//! through [`do_task`] from `ASSIGNED` to a terminal state, round after round, and
//! reports each transition's latency (count, median, p90, p99, p99.9, maximum;
//! the clock's cost taken off) and, in a binary that installs
//! [`bench::CountingAllocator`], its allocations. Variants run in turn, so that
//! ratios are measured in one run, each with its spread and a verdict that says
//! when the spread does not allow one:
//!
//! ```
//! use swarmexec::api::{Task, TaskState};
//! use swarmexec::bench::{Bench, Variant};
//! use swarmexec::StubController;
//!
//! let mut task = Task { id: "t".into(), desired_state: TaskState::Running, ..Default::default() };
//! task.status.state = TaskState::Assigned;
//! let report = Bench::new().warmup(5).rounds(50)
//!     .run(Variant::controller("stub", task, |_round| StubController::new()))?;
//! let running = report.row("running").unwrap();
//! assert_eq!(running.latency.count, 50);
//! assert_eq!(running.allocations, None, "no counting allocator in this program");
//! # Ok::<(), swarmexec::Error>(())
//! ```
//!
//! See the [module](mod@bench) for a complete bench binary, Bencher's metric format
//! and baselines.
//!
//! # Being a guest
//!
//! The crate never prints (it logs through the `log` crate, target `swarmexec`),
//! installs no signal handlers, never waits for a child it did not spawn, and names
//! every thread it starts: `swarmexec-timer` (deadlines and retries; it does no
//! I/O), `swarmexec-reap` and `swarmexec-chores` (two per process executor: one
//! spawns and reaps, the other does what may block), `swarmexec-task` and
//! `swarmexec-pool` (the task managers' pool). What a controller or an executor
//! holds is let go on the thread that drops its last handle, never on one of
//! these. Besides its tasks' programs (and their health probes), a process
//! executor whose tasks live in a v2 cgroup starts one helper process, a
//! watchdog `sh` in a session of its own that kills those cgroups should the host
//! die; it is no child of the host, and exits when the executor goes.
//!
//! Every duration the crate takes from outside (a timeout, an interval, a grace
//! period, a retry delay) is at most [`MAX_DURATION`], about 292 years, as
//! SwarmKit's own durations are; longer ones are refused when checked, and no
//! deadline computed from one can overflow.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod agent;
pub mod api;
pub mod bench;
mod cancel;
mod controller;
mod error;
pub mod executor;
mod panic;
#[cfg(target_os = "linux")]
pub mod process;
mod signal;
mod state;
mod stub;
mod time;
mod timer;

pub use cancel::CancelToken;
pub use controller::{
    ContainerStatuser, Controller, ControllerLogs, HealthStatuser, LogPublisher, LogPublisherFn,
    LogPublisherProvider, PortStatuser, ResourceUsager,
};
pub use error::{is_temporary, make_temporary, Error, ExitCoder, ExitError};
pub use executor::{
    ConfigGetter, ConfigsManager, ConfigsProvider, DependencyGetter, DependencyManager, Executor,
    SecretGetter, SecretsManager, SecretsProvider,
};
pub use state::{do_task, resolve};
pub use stub::{StubController, StubExecutor};
pub use time::MAX_DURATION;
