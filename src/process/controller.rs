//! [`ProcessController`]: one task run as a supervised OS process.

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::select;
use parking_lot::{Mutex, MutexGuard};

use super::cgroup::Cgroups;
use super::chores::Chores;
use super::health::{HealthMonitor, HealthPlan, ProbePlanner};
use super::owner::Owner;
use super::spec::{self, Launch};
use super::supervisor::{Exit, Pipes, Process, Supervisor};
use super::sys::{self, SpawnError, SpawnPlan, SpawnStep};
use super::task_files::{self, StateClaim, StateDir};
use super::watchdog::{self, Watchdog};
use crate::api::{
    ContainerStatus, Health, HealthState, InputSource, LogContext, LogSubscriptionOptions,
    OutputSink, ProcessSpec, ResourceUsage, Runtime, Signal, SignalTarget, Task,
};
use crate::executor::DependencyStore;
use crate::{
    make_temporary, CancelToken, ContainerStatuser, Controller, ControllerLogs, Error, ExitError,
    HealthStatuser, LogPublisher, ResourceUsager,
};

/// How long `close` waits for a killed process to go before leaving it to the reaper.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs one task as an OS process; made by
/// [`ProcessExecutor::controller`](super::ProcessExecutor).
///
/// Closing a controller, or dropping it unclosed, kills a program that is still
/// running (SIGKILL to its process group) and deletes the task's files: no program
/// and no secret outlives the controller that could stop or delete it.
/// [`remove`](Controller::remove) stops the program gracefully first.
///
/// The controller's lock is held only to read or change its state, never across a
/// spawn, a look-up, a file write or a wait: a call on one thread never waits for
/// another thread's slow call on the same controller, and every blocking call
/// returns once its token is cancelled.
#[must_use = "dropping a controller kills its program"]
pub struct ProcessController {
    env: Arc<Environment>,
    /// Unique in the process: names the task's directory and cgroup, so that no
    /// two controllers for one task id ever share them.
    instance: u64,
    state: Mutex<State>,
}

/// How long after the first program the watchdog starts.
const WATCHDOG_DELAY: Duration = Duration::from_millis(50);

/// What a controller shares with its executor.
///
/// When it goes, the reaper is stopped first (it kills and reaps what still runs),
/// then the chores left are done (the tasks' cgroups removed), then the
/// executor's own cgroups, now empty, are removed and its claim on the state
/// directory let go (their `Drop`s, in field order).
pub(crate) struct Environment {
    pub(crate) supervisor: Supervisor,
    pub(crate) chores: Chores,
    /// Armed by the first program, started shortly after it, where the host
    /// allows one.
    pub(crate) watchdog: OnceLock<Option<Watchdog>>,
    pub(crate) cgroups: ExecutorCgroups,
    pub(crate) owner: Owner,
    pub(crate) state: StateDir,
    pub(crate) _claim: StateClaim,
    pub(crate) dependencies: Arc<DependencyStore>,
}

impl Environment {
    /// Has the chores thread clean up after dead owners of the state directory
    /// and the cgroup bases, if there are any: looking costs a few system calls,
    /// cleaning up (killing, waiting for cgroups to empty) may take a while.
    pub(crate) fn clean_up_after_dead_owners(&self) -> Result<(), Error> {
        let bases = self.cgroups.0.bases();
        let dead_cgroups = bases
            .iter()
            .any(|base| super::cgroup::has_dead_owners(base));
        if !dead_cgroups && !self.state.has_dead_owners() {
            return Ok(());
        }
        let state = self.state.try_clone()?;
        self.chores.run(move || {
            state.clean_dead_owners();
            bases
                .iter()
                .for_each(|base| super::cgroup::clean_dead_owners(base));
        });
        Ok(())
    }

    /// Arms the watchdog, where the executor's tasks can all be killed through one
    /// cgroup: it starts [`WATCHDOG_DELAY`] from now, unless the executor is gone
    /// by then, so that a program that lasts a moment does not pay for it.
    fn arm_watchdog(&self) -> Option<Watchdog> {
        let kill_file = self.cgroups.0.kill_file()?;
        let armed = Watchdog::arm(
            &self.supervisor,
            &kill_file,
            crate::time::after(WATCHDOG_DELAY),
        );
        armed.map_err(|e| watchdog::warn_unwatched(&e)).ok()
    }
}

impl Drop for Environment {
    /// See the type's docs for the order. The executor's cgroups that are empty
    /// already (the tasks' removed by their controllers) go while the reaper
    /// stops, each taking as long as the other.
    fn drop(&mut self) {
        let stopping = self.supervisor.stop();
        self.cgroups.0.remove_if_empty();
        if let Some(stopping) = stopping {
            stopping.wait();
        }
        self.chores.finish();
    }
}

/// The executor's cgroups, removed when it goes.
pub(crate) struct ExecutorCgroups(pub(crate) Cgroups);

impl Drop for ExecutorCgroups {
    fn drop(&mut self) {
        self.0.remove();
    }
}

struct State {
    task: Task,
    node_id: String,
    log_capacity: usize,
    phase: Phase,
    /// The name of the directory this controller created in the state
    /// directory: the only one it ever deletes.
    task_dir: Option<String>,
    /// Why the program could not be started, when it could not.
    start_failure: Option<StartFailure>,
    closed: bool,
}

/// Why a task's program could not be started, in the terms a shell (and
/// `docker run`) gives exit codes to: stable, for callers that must tell these
/// cases apart without reading messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// The program, or the interpreter its `#!` line names, does not exist (a
    /// shell's 127).
    NotFound,
    /// It exists but cannot be executed: permission denied (also for the user the
    /// task runs as, and for its working directory) or not an executable format (a
    /// shell's 126).
    CannotExecute,
}

enum Phase {
    New,
    /// `prepare` is validating the spec and writing files, without the lock.
    Preparing,
    Prepared(Arc<Launch>),
    /// `start` is spawning the program, without the lock.
    Starting,
    Started(Started),
}

/// A started program and how it was launched.
#[derive(Clone)]
struct Started {
    launch: Arc<Launch>,
    process: Arc<Process>,
    /// The health check's monitor, for a task that has one.
    health: Option<Arc<HealthMonitor>>,
}

impl ProcessController {
    pub(crate) fn new(
        env: Arc<Environment>,
        task: &Task,
        node_id: String,
        log_capacity: usize,
    ) -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(1);
        ProcessController {
            env,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State {
                task: task.clone(),
                node_id,
                log_capacity,
                phase: Phase::New,
                task_dir: None,
                start_failure: None,
                closed: false,
            }),
        }
    }

    /// The directory holding this task's secrets and configs, while it exists: a
    /// fresh one per controller, named after the task, so that a controller for a
    /// reused task id never meets an old one's files.
    pub fn task_dir(&self) -> Option<PathBuf> {
        let name = self.state.lock().task_dir.clone()?;
        Some(self.env.state.path().join(name))
    }

    /// The task's health: `None` without a health check, or before the program
    /// was started.
    pub fn health(&self) -> Option<Health> {
        let state = self.state.lock();
        match &state.phase {
            Phase::Started(started) => started.health.as_ref().map(|h| h.health()),
            _ => None,
        }
    }

    /// Why the program could not be started, once `prepare` or `start` failed
    /// because it does not exist or cannot be executed.
    pub fn start_failure(&self) -> Option<StartFailure> {
        self.state.lock().start_failure
    }

    /// Sends `signal` to the program, or to its whole process group, as its
    /// spec's [`signal_target`](crate::api::ProcessSpec::signal_target) says,
    /// while it runs; nothing once it has ended.
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        match self.started()? {
            Some(started) => send(&started, signal).map_err(Error::other),
            None => Err(Error::other("exec: task not started")),
        }
    }

    /// Sends `signal` to the program's whole process group, while it runs,
    /// whatever its spec's signal target: for job control (SIGCONT, say).
    pub fn signal_group(&self, signal: Signal) -> Result<(), Error> {
        match self.started()? {
            Some(started) => started
                .process
                .signal_group(signal.number())
                .map_err(Error::other),
            None => Err(Error::other("exec: task not started")),
        }
    }

    /// How the program ended, once it has (as [`std::process::Child::wait`]
    /// tells it); `None` before, or when it was reaped outside swarmexec.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.started().ok()??.process.exit()?.status
    }

    /// True while the program is stopped (by SIGSTOP, SIGTSTP, SIGTTIN or
    /// SIGTTOU): for a caller that does job control.
    pub fn is_stopped(&self) -> bool {
        matches!(self.started(), Ok(Some(started)) if started.process.is_stopped())
    }

    /// What the task has used so far, or in all once it ended; `None` before it
    /// was started. See [`ResourceUsage`] for what is known where.
    pub fn usage(&self) -> Option<ResourceUsage> {
        let state = self.state.lock();
        match &state.phase {
            Phase::Started(started) => started.process.usage(),
            _ => None,
        }
    }

    /// Blocks until the program has ended (true), or `deadline` passes (false);
    /// false at once when it was never started. Unlike [`Controller::wait`] it
    /// takes no token, and so needs no timer thread: for a caller that waits a
    /// moment for a program that is likely quick before it hands a longer one to a
    /// task manager. It changes nothing; `wait` then reports how the program ended.
    pub fn ended_by(&self, deadline: Instant) -> bool {
        let Ok(Some(started)) = self.started() else {
            return false;
        };
        if started.process.exit().is_some() {
            return true;
        }
        select! {
            recv(started.process.exited()) -> _ => true,
            recv(crossbeam_channel::at(deadline)) -> _ => started.process.exit().is_some(),
        }
    }

    /// A new name for the task's cgroup, inside the executor's: `<task id>.<n>`,
    /// `n` new at each start, so that a start tried again never meets the
    /// cgroup of a failed one that the chores thread has yet to remove.
    fn cgroup_name(&self) -> String {
        static STARTS: AtomicU64 = AtomicU64::new(1);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.state.lock().task.id)
    }

    /// The task's directory name: `<task id>.<owner>.<instance>`, the owner telling
    /// an executor that starts on this state directory later whether it may clean
    /// the directory up.
    fn task_dir_name(&self, task_id: &str) -> String {
        format!("{task_id}.{}.{}", self.env.owner, self.instance)
    }

    /// The state, checking that the controller is open.
    fn open_state(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
        Ok(state)
    }

    /// The started process, if any, checking that the controller is open.
    fn started(&self) -> Result<Option<Started>, Error> {
        Ok(match &self.open_state()?.phase {
            Phase::Started(started) => Some(started.clone()),
            _ => None,
        })
    }

    fn stop(
        &self,
        cancel: &CancelToken,
        Started {
            launch, process, ..
        }: &Started,
    ) -> Result<(), Error> {
        if process.exit().is_some() {
            return Ok(());
        }
        send_to(process, launch.signal_target, launch.stop_signal).map_err(Error::other)?;
        if process
            .wait_exit(cancel, Some(launch.stop_grace))?
            .is_some()
        {
            return Ok(());
        }
        log::info!(
            target: "swarmexec",
            "process {} ignored its stop signal for {:?}: killing it",
            process.pid(),
            launch.stop_grace
        );
        kill(cancel, process, None).map(drop)
    }

    /// Waits until the program's first probe passes (`Ok`), its probes fail
    /// (stopping it, then the unhealthy error), it exits (its exit, or an error
    /// saying it ended before it was healthy), or `cancel` is done.
    fn await_health(&self, cancel: &CancelToken, started: &Started) -> Result<(), Error> {
        let Some(monitor) = &started.health else {
            return Ok(());
        };
        loop {
            match monitor.health().state {
                HealthState::Healthy => return Ok(()),
                HealthState::Unhealthy => return Err(self.stop_unhealthy(cancel, started, monitor)),
                HealthState::Starting => {}
            }
            if let Some(exit) = started.process.exit() {
                monitor.stop();
                return Err(match exit_result(exit, self.status_of(&started.process)) {
                    Ok(()) => Error::other("exited before its health check passed"),
                    Err(e) => e,
                });
            }
            select! {
                recv(monitor.changed()) -> _ => {}
                recv(started.process.exited()) -> _ => {}
                recv(cancel.done()) -> _ => return Err(cancel.err().unwrap_or(Error::Canceled)),
                recv(cancel.deadline_passed()) -> _ => return Err(Error::DeadlineExceeded),
            }
        }
    }

    /// Stops an unhealthy program as at any failure; returns the unhealthy error
    /// (or the cancellation that cut the stop short: the next call goes on).
    fn stop_unhealthy(
        &self,
        cancel: &CancelToken,
        started: &Started,
        monitor: &HealthMonitor,
    ) -> Error {
        match self.stop(cancel, started) {
            Err(e) if e.is_cancellation() => e,
            _ => monitor.unhealthy_error(),
        }
    }

    /// Validates the spec and writes the task's files, without the lock.
    fn make_launch(&self, cancel: &CancelToken, task: &Task) -> Result<Prepared, Error> {
        spec::check_task_id(&task.id)?;
        let spec = process_spec(task)?;
        let env = vec![("SWARMEXEC_TASK_ID".into(), task.id.clone().into())];
        let mut launch = spec::launch(spec, env)?;
        launch.limits = task
            .spec
            .resources
            .and_then(|r| r.limits)
            .unwrap_or_default();
        self.env.cgroups.0.check(&launch.limits)?;
        let files = task_files::referenced(task, &self.env.dependencies)?;
        check_cancel(cancel)?;
        // A task without secrets or configs gets no directory: on disk-backed state
        // directories, creating and deleting one costs as much as spawning a program.
        if spec.secrets.is_empty() && spec.configs.is_empty() {
            return Ok(Prepared {
                launch,
                task_dir: None,
            });
        }
        let name = self.task_dir_name(&task.id);
        let task_dir = self
            .env
            .state
            .write_task(&name, &files, launch.credentials)?;
        for (var, subdir) in [
            ("SWARMEXEC_SECRETS_DIR", "secrets"),
            ("SWARMEXEC_CONFIGS_DIR", "configs"),
        ] {
            let dir = task_dir.join(subdir).into_os_string();
            spec::set_var(&mut launch.env, var.as_ref(), dir);
        }
        Ok(Prepared {
            launch,
            task_dir: Some(name),
        })
    }

    /// Spawns the program and hands it to the reaper, without the lock; waits
    /// for the reaper only as long as `cancel` allows.
    fn spawn(
        &self,
        cancel: &CancelToken,
        launch: &Launch,
        log_capacity: usize,
    ) -> Result<Arc<Process>, Error> {
        let stdin = input(&launch.stdin)?;
        let (stdout, stdout_pipe) = output(&launch.stdout, 1)?;
        let (stderr, stderr_pipe) = output(&launch.stderr, 2)?;
        let mut plan = spawn_plan(launch, [stdin, stdout, stderr])?;
        let cgroup = self
            .env
            .cgroups
            .0
            .create(&self.cgroup_name(), &launch.limits)?;
        if let Some(cgroup) = &cgroup {
            match cgroup.join() {
                Ok(files) => plan.cgroups = files,
                Err(e) => {
                    cgroup.remove();
                    return Err(e);
                }
            }
        }
        let pipes = Pipes {
            stdout: stdout_pipe,
            stderr: stderr_pipe,
        };
        let process = self
            .env
            .supervisor
            .spawn(cancel, plan, pipes, log_capacity, cgroup)?;
        let process = process.map_err(|e| {
            let (error, failure) = spawn_error(launch, e);
            self.state.lock().start_failure = failure;
            error
        })?;
        // After the program, which is not kept waiting for it.
        self.env.watchdog.get_or_init(|| self.env.arm_watchdog());
        Ok(process)
    }

    /// Deletes the directory this controller created, if any; on failure it is
    /// kept on record so that `close` tries again.
    fn delete_files(&self) -> Result<(), Error> {
        let Some(task_dir) = self.state.lock().task_dir.take() else {
            return Ok(());
        };
        match self.env.state.delete_task(&task_dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.state.lock().task_dir.get_or_insert(task_dir);
                Err(e)
            }
        }
    }

    /// Deletes a directory on a path that already failed: a second failure is
    /// logged.
    fn remove_task_dir(&self, name: &str) {
        if let Err(e) = self.env.state.delete_task(name) {
            log::error!(target: "swarmexec", "{e}");
        }
    }
}

/// What `prepare` makes: the launch, and the name of the directory it wrote,
/// if any.
struct Prepared {
    launch: Launch,
    task_dir: Option<String>,
}

fn check_cancel(cancel: &CancelToken) -> Result<(), Error> {
    match cancel.err() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Kills every process of the task and waits up to `timeout` for the leader to be
/// reaped, which happens once all of them are gone.
fn kill(
    cancel: &CancelToken,
    process: &Process,
    timeout: Option<Duration>,
) -> Result<Option<Exit>, Error> {
    process.kill_all().map_err(Error::other)?;
    process.wait_exit(cancel, timeout)
}

fn process_spec(task: &Task) -> Result<&ProcessSpec, Error> {
    match &task.spec.runtime {
        Some(Runtime::Process(spec)) => Ok(spec),
        _ => Err(Error::RuntimeUnsupported),
    }
}

impl Controller for ProcessController {
    /// Takes a new definition of the task. Before `prepare` anything may change;
    /// afterwards a changed runtime spec is refused with
    /// [`Error::TaskUpdateRejected`], while other fields (such as the desired state)
    /// are taken.
    fn update(&self, _cancel: &CancelToken, task: &Task) -> Result<(), Error> {
        let mut state = self.open_state()?;
        if task.id != state.task.id {
            return Err(Error::TaskUpdateRejected);
        }
        process_spec(task)?;
        let prepared = !matches!(state.phase, Phase::New);
        if prepared && task.spec != state.task.spec {
            return Err(Error::TaskUpdateRejected);
        }
        state.task = task.clone();
        Ok(())
    }

    /// Validates the spec, looks up the user and group, and writes the task's
    /// secrets and configs. A call while another `prepare` is under way fails with
    /// a temporary error.
    fn prepare(&self, cancel: &CancelToken) -> Result<(), Error> {
        let task = {
            let mut state = self.open_state()?;
            match state.phase {
                Phase::New => {}
                Phase::Preparing => {
                    return Err(make_temporary(Error::other("exec: task being prepared")))
                }
                Phase::Prepared(_) => return Err(Error::TaskPrepared),
                Phase::Starting | Phase::Started(_) => return Err(Error::TaskStarted),
            }
            state.phase = Phase::Preparing;
            state.task.clone()
        };
        let prepared = check_cancel(cancel).and_then(|()| self.make_launch(cancel, &task));
        let mut state = self.state.lock();
        match prepared {
            Ok(prepared) if state.closed => {
                drop(state);
                if let Some(dir) = &prepared.task_dir {
                    self.remove_task_dir(dir);
                }
                Err(Error::ControllerClosed)
            }
            Ok(Prepared { launch, task_dir }) => {
                state.task_dir = task_dir;
                state.phase = Phase::Prepared(Arc::new(launch));
                Ok(())
            }
            Err(e) => {
                state.phase = Phase::New;
                state.start_failure = match &e {
                    Error::ProgramNotFound(_) => Some(StartFailure::NotFound),
                    Error::ProgramNotExecutable(_) => Some(StartFailure::CannotExecute),
                    _ => None,
                };
                Err(e)
            }
        }
    }

    /// Spawns the program. A call while another `start` is under way fails with a
    /// temporary error.
    fn start(&self, cancel: &CancelToken) -> Result<(), Error> {
        let (launch, log_capacity) = {
            let mut state = self.open_state()?;
            let launch = match &state.phase {
                Phase::New | Phase::Preparing => {
                    return Err(Error::other("exec: task not prepared"))
                }
                Phase::Prepared(launch) => Arc::clone(launch),
                Phase::Starting => {
                    return Err(make_temporary(Error::other("exec: task being started")))
                }
                Phase::Started(started) => {
                    let started = started.clone();
                    drop(state);
                    // A start cut short while waiting for health resumes that wait.
                    return match started.health.as_ref().map(|h| h.health().state) {
                        None | Some(HealthState::Healthy) => Err(Error::TaskStarted),
                        Some(_) => self.await_health(cancel, &started),
                    };
                }
            };
            state.phase = Phase::Starting;
            (launch, state.log_capacity)
        };
        let spawned = check_cancel(cancel).and_then(|()| self.spawn(cancel, &launch, log_capacity));
        let mut state = self.state.lock();
        let process = match spawned {
            Ok(process) => process,
            Err(e) => {
                if !state.closed {
                    state.phase = Phase::Prepared(launch);
                }
                return Err(e);
            }
        };
        if state.closed {
            drop(state);
            // Closed while spawning: the program must not outlive the controller.
            let _ = kill(&CancelToken::new(), &process, Some(CLOSE_WAIT));
            self.env.supervisor.forget(process);
            return Err(Error::ControllerClosed);
        }
        log::debug!(target: "swarmexec", "task {}: started process {}", state.task.id, process.pid());
        let health = launch.health.clone().map(|plan| {
            let planner = probe_planner(&launch, &plan, &process);
            HealthMonitor::start(plan, &process, planner, &self.env)
        });
        let started = Started {
            launch,
            process,
            health,
        };
        state.phase = Phase::Started(started.clone());
        drop(state);
        match &started.health {
            Some(_) => self.await_health(cancel, &started),
            None => Ok(()),
        }
    }

    /// Returns the program's exit, or the unhealthy error once it has been
    /// stopped (stop signal, grace, kill), whichever comes first.
    fn wait(&self, cancel: &CancelToken) -> Result<(), Error> {
        let Some(started) = self.started()? else {
            return Err(Error::other("exec: task not started"));
        };
        let process = &started.process;
        let never = crossbeam_channel::never();
        let health_changed = started.health.as_ref().map_or(&never, |h| h.changed());
        loop {
            if let Some(exit) = process.exit() {
                return exit_result(exit, self.status_of(process));
            }
            if let Some(monitor) = &started.health {
                if monitor.health().state == HealthState::Unhealthy {
                    return Err(self.stop_unhealthy(cancel, &started, monitor));
                }
            }
            select! {
                recv(process.exited()) -> _ => {}
                recv(health_changed) -> _ => {}
                recv(cancel.done()) -> _ => return Err(cancel.err().unwrap_or(Error::Canceled)),
                recv(cancel.deadline_passed()) -> _ => return Err(Error::DeadlineExceeded),
            }
        }
    }

    fn shutdown(&self, cancel: &CancelToken) -> Result<(), Error> {
        match self.started()? {
            Some(started) => {
                stop_probing(&started);
                self.stop(cancel, &started)
            }
            None => Ok(()),
        }
    }

    fn terminate(&self, cancel: &CancelToken) -> Result<(), Error> {
        match self.started()? {
            Some(started) => {
                stop_probing(&started);
                kill(cancel, &started.process, None).map(drop)
            }
            None => Ok(()),
        }
    }

    /// Stops the program gracefully, then deletes the task's files (secrets
    /// first) whether or not stopping succeeded. Nothing to delete is success.
    fn remove(&self, cancel: &CancelToken) -> Result<(), Error> {
        let stopped = self.shutdown(cancel);
        if matches!(stopped, Err(Error::ControllerClosed)) {
            return stopped;
        }
        let deleted = self.delete_files();
        if let Ok(Some(started)) = self.started() {
            started.process.remove_cgroup();
        }
        stopped.and(deleted)
    }

    /// Kills a program that still runs, deletes the task's files, and waits (up to
    /// five seconds, without blocking other calls) for the program to be gone.
    fn close(&self) -> Result<(), Error> {
        let (process, task_dir) = {
            let mut state = self.open_state()?;
            state.closed = true;
            let process = match &state.phase {
                Phase::Started(started) => {
                    stop_probing(started);
                    Some(Arc::clone(&started.process))
                }
                _ => None,
            };
            (process, state.task_dir.take())
        };
        // Secrets go first: they must not outlast a program that will not die.
        let deleted = task_dir
            .as_deref()
            .map_or(Ok(()), |name| self.env.state.delete_task(name));
        if let Some(process) = process {
            if kill(&CancelToken::new(), &process, Some(CLOSE_WAIT))
                .ok()
                .flatten()
                .is_none()
            {
                log::warn!(target: "swarmexec", "process {} did not die; the reaper keeps it", process.pid());
            }
            process.remove_cgroup();
            self.env.supervisor.forget(process);
        }
        deleted
    }

    fn as_container_statuser(&self) -> Option<&dyn ContainerStatuser> {
        Some(self)
    }

    fn as_logs(&self) -> Option<&dyn ControllerLogs> {
        Some(self)
    }

    fn as_resource_usager(&self) -> Option<&dyn ResourceUsager> {
        Some(self)
    }

    fn as_health_statuser(&self) -> Option<&dyn HealthStatuser> {
        Some(self)
    }
}

impl HealthStatuser for ProcessController {
    /// See [`ProcessController::health`].
    fn health(&self, _cancel: &CancelToken) -> Result<Option<Health>, Error> {
        Ok(ProcessController::health(self))
    }
}

/// Ends a task's probing: it is being stopped.
fn stop_probing(started: &Started) {
    if let Some(monitor) = &started.health {
        monitor.stop();
    }
}

impl ResourceUsager for ProcessController {
    /// See [`ProcessController::usage`].
    fn resource_usage(&self, _cancel: &CancelToken) -> Result<Option<ResourceUsage>, Error> {
        Ok(self.usage())
    }
}

impl ProcessController {
    fn status_of(&self, process: &Process) -> ContainerStatus {
        let task_id = &self.state.lock().task.id;
        ContainerStatus {
            container_id: format!("{task_id}.{}", process.pid()),
            pid: process.pid(),
            exit_code: process
                .exit()
                .and_then(|exit| exit.status)
                .map_or(0, exit_code),
        }
    }
}

impl std::fmt::Debug for ProcessController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        let pid = match &state.phase {
            Phase::Started(started) => Some(started.process.pid()),
            _ => None,
        };
        f.debug_struct("ProcessController")
            .field("task_id", &state.task.id)
            .field("pid", &pid)
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessController {
    fn drop(&mut self) {
        // Closing twice is refused, which is all an `Err` can mean here.
        let _ = self.close();
    }
}

impl ContainerStatuser for ProcessController {
    /// The process's pid and exit code; `None` before it was started.
    fn container_status(&self, _cancel: &CancelToken) -> Result<Option<ContainerStatus>, Error> {
        Ok(self
            .started()?
            .map(|started| self.status_of(&started.process)))
    }
}

impl ControllerLogs for ProcessController {
    /// Publishes captured output (nothing before the program was started, nor of a
    /// stream that is not captured): the lines held, a message each, then, when
    /// following, new output in batches (consecutive lines of a stream in one
    /// message). Nothing is lost silently: output waits a moment for a follower
    /// that lags; one that stops reading for longer gets, where the gap is, a
    /// message with no data whose [`MISSED_BYTES`](super::MISSED_BYTES) attribute
    /// says how many bytes of that stream it missed.
    fn logs(
        &self,
        cancel: &CancelToken,
        publisher: &dyn LogPublisher,
        options: &LogSubscriptionOptions,
    ) -> Result<(), Error> {
        let Some(Started { process, .. }) = self.started()? else {
            return Ok(());
        };
        let context = {
            let state = self.state.lock();
            LogContext {
                service_id: state.task.service_id.clone(),
                node_id: state.node_id.clone(),
                task_id: state.task.id.clone(),
            }
        };
        process.logs.publish(cancel, publisher, options, &context)
    }
}

/// The exit code a shell would report: the status, or 128 + the killing signal.
pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(0)
}

fn exit_result(exit: Exit, container: ContainerStatus) -> Result<(), Error> {
    let status = match exit.status {
        Some(status) if status.success() => return Ok(()),
        Some(status) => status,
        None => {
            return Err(Error::other(
                "exit status lost: the process was reaped outside swarmexec",
            ))
        }
    };
    let code = exit_code(status);
    let ended = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::from_number(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        },
        (None, None) => format!("ended with status {code}"),
    };
    // Read from the cgroup's counter, not guessed from the signal.
    let message = if exit.out_of_memory {
        format!("out of memory: a process exceeded the task's memory limit and was killed (OOMKilled); {ended}")
    } else {
        ended
    };
    Err(ExitError::new(code, message)
        .with_container_status(container)
        .into())
}

/// The program's stdin as `source` says.
fn input(source: &InputSource) -> Result<OwnedFd, Error> {
    let opened = match source {
        InputSource::Null => File::open("/dev/null").map(OwnedFd::from),
        InputSource::Inherit => std::io::stdin().as_fd().try_clone_to_owned(),
        InputSource::File(path) => File::open(path)
            .map(OwnedFd::from)
            .map_err(|e| io::Error::new(e.kind(), format!("stdin file {}: {e}", path.display()))),
        InputSource::Fd(fd) => fd.try_clone_to_owned(),
    };
    opened.map_err(stdio_error)
}

/// The program's stdout (`number` 1) or stderr (2) as `sink` says, and the read
/// end of its pipe when it is captured.
fn output(sink: &OutputSink, number: i32) -> Result<(OwnedFd, Option<File>), Error> {
    let opened = match sink {
        OutputSink::Capture => {
            return sys::pipe()
                .map(|(read, write)| (write, Some(File::from(read))))
                .map_err(stdio_error)
        }
        OutputSink::Inherit if number == 1 => std::io::stdout().as_fd().try_clone_to_owned(),
        OutputSink::Inherit => std::io::stderr().as_fd().try_clone_to_owned(),
        OutputSink::Null => OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from),
        OutputSink::File(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| io::Error::new(e.kind(), format!("output file {}: {e}", path.display()))),
        OutputSink::Fd(fd) => fd.try_clone_to_owned(),
    };
    opened.map(|fd| (fd, None)).map_err(stdio_error)
}

fn stdio_error(e: io::Error) -> Error {
    let error = Error::other(format!("cannot set up the program's stdio: {e}"));
    if sys::is_exhaustion(&e) {
        make_temporary(error)
    } else {
        error
    }
}

/// What the program is started with: `launch`, the given stdio and the extra
/// descriptors, in a process group of its own (its terminal's foreground, if it
/// asks), killed should the executor's process die.
fn spawn_plan(launch: &Launch, stdio: [OwnedFd; 3]) -> Result<SpawnPlan, Error> {
    let mut plan = run_plan(launch, &launch.program, &launch.argv, stdio)?;
    plan.extra_fds = launch
        .extra_fds
        .iter()
        .map(|fd| fd.try_clone_to_owned().map_err(stdio_error))
        .collect::<Result<_, _>>()?;
    plan.foreground = launch.foreground;
    Ok(plan)
}

/// What a health probe is started with: the task's user, directory and
/// environment, in its cgroup.
fn probe_planner(
    launch: &Arc<Launch>,
    plan: &HealthPlan,
    process: &Arc<Process>,
) -> Box<ProbePlanner> {
    let launch = Arc::clone(launch);
    let (program, argv) = (plan.program.clone(), plan.argv.clone());
    let task = Arc::downgrade(process);
    Box::new(move |stdio| {
        let task = task
            .upgrade()
            .ok_or_else(|| Error::other("the task has ended"))?;
        let mut plan = run_plan(&launch, &program, &argv, stdio)?;
        plan.cgroups = task.cgroup_join()?;
        Ok(plan)
    })
}

/// `program` with `argv`, as `launch` starts its program, with only stdio.
fn run_plan(
    launch: &Launch,
    program: &Path,
    argv: &[OsString],
    stdio: [OwnedFd; 3],
) -> Result<SpawnPlan, Error> {
    let c_string = |what: &str, bytes: &[u8]| {
        CString::new(bytes).map_err(|_| Error::InvalidSpec(format!("{what} contains NUL")))
    };
    let dir = match &launch.dir {
        Some(path) => Some(c_string("working directory", path.as_os_str().as_bytes())?),
        None => None,
    };
    let entry = |(key, value): &(OsString, OsString)| {
        let mut bytes = Vec::with_capacity(key.len() + 1 + value.len());
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(value.as_bytes());
        c_string("environment", &bytes)
    };
    Ok(SpawnPlan {
        program: c_string("program path", program.as_os_str().as_bytes())?,
        argv: argv
            .iter()
            .map(|arg| c_string("command", arg.as_bytes()))
            .collect::<Result<_, _>>()?,
        env: launch.env.iter().map(entry).collect::<Result<_, _>>()?,
        dir,
        credentials: launch.credentials,
        groups: launch.groups.clone(),
        rlimits: launch.rlimits.clone(),
        stdio,
        extra_fds: Vec::new(),
        foreground: false,
        cgroups: Default::default(),
        tie: sys::Tie::DiesWithParent,
    })
}

/// The error of a failed spawn, named after its real cause, and what it means for
/// a caller that maps failures to exit codes.
fn spawn_error(launch: &Launch, failure: SpawnError) -> (Error, Option<StartFailure>) {
    let program = &launch.argv[0].to_string_lossy();
    let SpawnError { step, error: e } = failure;
    if sys::is_exhaustion(&e) {
        let limit = sys::describe_exhaustion(&e);
        return (
            make_temporary(Error::other(format!("cannot start {program}: {limit}"))),
            None,
        );
    }
    let denied = e.kind() == io::ErrorKind::PermissionDenied;
    let user = launch
        .credentials
        .map_or_else(String::new, |(uid, _)| format!(" (as uid {uid})"));
    match step {
        SpawnStep::Exec if e.kind() == io::ErrorKind::NotFound && launch.program.exists() => (
            Error::ProgramNotFound(format!("{program}: the interpreter its #! line names")),
            Some(StartFailure::NotFound),
        ),
        SpawnStep::Exec if e.kind() == io::ErrorKind::NotFound => (
            Error::ProgramNotFound(program.to_string()),
            Some(StartFailure::NotFound),
        ),
        SpawnStep::Exec if denied || e.raw_os_error() == Some(libc::ENOEXEC) => (
            Error::ProgramNotExecutable(format!("{program}{user}: {e}")),
            Some(StartFailure::CannotExecute),
        ),
        SpawnStep::Chdir => {
            let dir = launch.dir.as_deref().unwrap_or(Path::new("."));
            let failure = denied.then_some(StartFailure::CannotExecute);
            let error = Error::other(format!(
                "cannot enter the working directory {}{user}: {e}",
                dir.display()
            ));
            (error, failure)
        }
        _ => (Error::other(format!("cannot start {program}: {e}")), None),
    }
}

/// Sends `signal` to the started program, as its launch says.
fn send(started: &Started, signal: Signal) -> io::Result<()> {
    send_to(&started.process, started.launch.signal_target, signal)
}

fn send_to(process: &Process, target: SignalTarget, signal: Signal) -> io::Result<()> {
    match target {
        SignalTarget::Group => process.signal_group(signal.number()),
        SignalTarget::Process => process.signal_process(signal.number()),
    }
}
