//! [`ProcessController`]: one task run as a supervised OS process.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::spec::{self, Launch};
use super::supervisor::{Exit, Pipes, Process, Supervisor};
use super::sys;
use crate::api::{
    Config, ContainerStatus, LogContext, LogSubscriptionOptions, ProcessSpec, Runtime, Secret, Task,
};
use crate::executor::DependencyStore;
use crate::{
    CancelToken, ContainerStatuser, Controller, ControllerLogs, DependencyGetter, Error, ExitError,
    LogPublisher,
};

/// How long `close` waits for a killed process to go before leaving it to the reaper.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs one task as an OS process; made by
/// [`ProcessExecutor::controller`](super::ProcessExecutor).
///
/// Closing a controller, or dropping it unclosed, kills a program that is still
/// running (SIGKILL to its process group) and waits for it: no program outlives the
/// controller that could stop it. [`remove`](Controller::remove) stops it gracefully
/// first, and deletes the task's directory.
pub struct ProcessController {
    env: Arc<Environment>,
    state: Mutex<State>,
}

/// What a controller shares with its executor.
pub(crate) struct Environment {
    pub(crate) state_dir: PathBuf,
    pub(crate) supervisor: Supervisor,
    pub(crate) dependencies: Arc<DependencyStore>,
}

struct State {
    task: Task,
    node_id: String,
    log_capacity: usize,
    phase: Phase,
    closed: bool,
}

enum Phase {
    New,
    Prepared(Arc<Launch>),
    Started(Started),
}

/// A started program and how it was launched.
#[derive(Clone)]
struct Started {
    launch: Arc<Launch>,
    process: Arc<Process>,
}

impl ProcessController {
    pub(crate) fn new(
        env: Arc<Environment>,
        task: &Task,
        node_id: String,
        log_capacity: usize,
    ) -> Self {
        ProcessController {
            env,
            state: Mutex::new(State {
                task: task.clone(),
                node_id,
                log_capacity,
                phase: Phase::New,
                closed: false,
            }),
        }
    }

    /// The task's own directory, holding its secrets and configs.
    fn task_dir(&self, task: &Task) -> Result<PathBuf, Error> {
        spec::check_file_name("task id", &task.id)?;
        Ok(self.env.state_dir.join(&task.id))
    }

    /// The started process, if any, checking that the controller is open.
    fn started(&self) -> Result<Option<Started>, Error> {
        let state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
        Ok(match &state.phase {
            Phase::Started(started) => Some(started.clone()),
            _ => None,
        })
    }

    fn stop(
        &self,
        cancel: &CancelToken,
        Started { launch, process }: &Started,
    ) -> Result<(), Error> {
        if process.exit().is_some() {
            return Ok(());
        }
        process
            .signal_group(launch.stop_signal)
            .map_err(Error::other)?;
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

    /// Kills and forgets the process; the controller is unusable afterwards.
    fn release(&self, state: &mut State) {
        state.closed = true;
        if let Phase::Started(Started { process, .. }) = &state.phase {
            if kill(&CancelToken::new(), process, Some(CLOSE_WAIT)).is_err() {
                log::warn!(target: "swarmexec", "process {} did not die; the reaper keeps it", process.pid());
            }
            self.env.supervisor.forget(Arc::clone(process));
        }
    }
}

/// SIGKILLs the process group and waits up to `timeout` for the leader to be reaped.
fn kill(
    cancel: &CancelToken,
    process: &Process,
    timeout: Option<Duration>,
) -> Result<Option<Exit>, Error> {
    process.signal_group(libc::SIGKILL).map_err(Error::other)?;
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
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
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

    fn prepare(&self, _cancel: &CancelToken) -> Result<(), Error> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
        match state.phase {
            Phase::New => {}
            Phase::Prepared(_) => return Err(Error::TaskPrepared),
            Phase::Started(_) => return Err(Error::TaskStarted),
        }
        let task_dir = self.task_dir(&state.task)?;
        let spec = process_spec(&state.task)?;
        let mut env = vec![("SWARMEXEC_TASK_ID".to_owned(), state.task.id.clone())];
        // A task without secrets or configs gets no directory: on disk-backed state
        // directories, creating and deleting one costs as much as spawning a program.
        let has_files = !spec.secrets.is_empty() || !spec.configs.is_empty();
        if has_files {
            for (var, subdir) in [
                ("SWARMEXEC_SECRETS_DIR", "secrets"),
                ("SWARMEXEC_CONFIGS_DIR", "configs"),
            ] {
                env.push((var.to_owned(), path_string(&task_dir.join(subdir))));
            }
        }
        let launch = spec::launch(spec, env)?;
        let files = files(&state.task, &self.env.dependencies)?;
        if has_files {
            if let Err(e) = write_task_dir(&task_dir, &files, launch.credentials) {
                let _ = fs::remove_dir_all(&task_dir);
                return Err(Error::other(format!(
                    "cannot create {}: {e}",
                    task_dir.display()
                )));
            }
        }
        state.phase = Phase::Prepared(Arc::new(launch));
        Ok(())
    }

    fn start(&self, _cancel: &CancelToken) -> Result<(), Error> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
        let launch = match &state.phase {
            Phase::New => return Err(Error::other("exec: task not prepared")),
            Phase::Prepared(launch) => Arc::clone(launch),
            Phase::Started(_) => return Err(Error::TaskStarted),
        };
        let mut child = command(&launch)
            .spawn()
            .map_err(|e| spawn_error(&launch, e))?;
        let pipes = (child.stdout.take(), child.stderr.take());
        let (Some(stdout), Some(stderr), Ok(process)) = (
            pipes.0,
            pipes.1,
            Process::new(child.id(), state.log_capacity),
        ) else {
            // Not expected of the standard library; if it happens, the child is
            // still ours and unreaped, so killing and reaping it here is safe.
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::other(
                "exec: the program was started without its output pipes",
            ));
        };
        let process = Arc::new(process);
        // `child` is dropped without waiting: the reaper owns the reaping from here.
        let pipes = Pipes {
            stdout: File::from(std::os::fd::OwnedFd::from(stdout)),
            stderr: File::from(std::os::fd::OwnedFd::from(stderr)),
        };
        self.env.supervisor.watch(Arc::clone(&process), pipes);
        log::debug!(target: "swarmexec", "task {}: started process {}", state.task.id, process.pid());
        state.phase = Phase::Started(Started { launch, process });
        Ok(())
    }

    fn wait(&self, cancel: &CancelToken) -> Result<(), Error> {
        let Some(Started { process, .. }) = self.started()? else {
            return Err(Error::other("exec: task not started"));
        };
        match process.wait_exit(cancel, None)? {
            Some(exit) => exit_result(exit, self.status_of(&process)),
            None => Err(Error::Canceled),
        }
    }

    fn shutdown(&self, cancel: &CancelToken) -> Result<(), Error> {
        match self.started()? {
            Some(started) => self.stop(cancel, &started),
            None => Ok(()),
        }
    }

    fn terminate(&self, cancel: &CancelToken) -> Result<(), Error> {
        match self.started()? {
            Some(started) => kill(cancel, &started.process, None).map(drop),
            None => Ok(()),
        }
    }

    fn remove(&self, cancel: &CancelToken) -> Result<(), Error> {
        self.shutdown(cancel)?;
        let task_dir = self.task_dir(&self.state.lock().task)?;
        match fs::remove_dir_all(&task_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::other(format!(
                "cannot remove {}: {e}",
                task_dir.display()
            ))),
            _ => Ok(()),
        }
    }

    fn close(&self) -> Result<(), Error> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(Error::ControllerClosed);
        }
        self.release(&mut state);
        Ok(())
    }

    fn as_container_statuser(&self) -> Option<&dyn ContainerStatuser> {
        Some(self)
    }

    fn as_logs(&self) -> Option<&dyn ControllerLogs> {
        Some(self)
    }
}

impl ProcessController {
    fn status_of(&self, process: &Process) -> ContainerStatus {
        let task_id = &self.state.lock().task.id;
        ContainerStatus {
            container_id: format!("{task_id}.{}", process.pid()),
            pid: process.pid(),
            exit_code: match process.exit() {
                Some(Exit::Status(status)) => exit_code(status),
                _ => 0,
            },
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
    /// Publishes captured output; nothing before the program was started.
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
fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(0)
}

fn exit_result(exit: Exit, container: ContainerStatus) -> Result<(), Error> {
    let status = match exit {
        Exit::Status(status) if status.success() => return Ok(()),
        Exit::Status(status) => status,
        Exit::Lost => {
            return Err(Error::other(
                "exit status lost: the process was reaped outside swarmexec",
            ))
        }
    };
    let code = exit_code(status);
    let message = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match sys::signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        },
        (None, None) => format!("ended with status {code}"),
    };
    Err(ExitError::new(code, message)
        .with_container_status(container)
        .into())
}

fn command(launch: &Launch) -> Command {
    let mut command = Command::new(&launch.program);
    command
        .arg0(&launch.argv[0])
        .args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &launch.dir {
        command.current_dir(dir);
    }
    if let Some((uid, gid)) = launch.credentials {
        command.uid(uid).gid(gid);
    }
    let unblock_signals = sys::thread_blocks_signals();
    if !launch.rlimits.is_empty() || unblock_signals {
        sys::set_up_child(&mut command, &launch.rlimits, unblock_signals);
    }
    command
}

fn spawn_error(launch: &Launch, e: io::Error) -> Error {
    let program = launch.argv[0].clone();
    match e.kind() {
        io::ErrorKind::NotFound => Error::ProgramNotFound(program),
        io::ErrorKind::PermissionDenied => Error::ProgramNotExecutable(program),
        _ => Error::other(format!("cannot start {program}: {e}")),
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// A file to write into the task's directory.
struct TaskFile {
    subdir: &'static str,
    name: String,
    mode: u32,
    payload: Payload,
}

/// Held by `Arc`, so that writing a secret never copies its bytes.
enum Payload {
    Secret(Arc<Secret>),
    Config(Arc<Config>),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Secret(secret) => &secret.data,
            Payload::Config(config) => &config.data,
        }
    }
}

/// The secrets and configs the task references, read through its restricted view.
fn files(task: &Task, store: &DependencyStore) -> Result<Vec<TaskFile>, Error> {
    let view = store.restrict(task);
    let mut files = Vec::new();
    for reference in task.spec.secret_references() {
        files.push(TaskFile {
            subdir: "secrets",
            name: reference.target.clone(),
            mode: reference.mode.unwrap_or(0o400),
            payload: Payload::Secret(view.secrets().get(&reference.secret_id)?),
        });
    }
    for reference in task.spec.config_references() {
        files.push(TaskFile {
            subdir: "configs",
            name: reference.target.clone(),
            mode: reference.mode.unwrap_or(0o444),
            payload: Payload::Config(view.configs().get(&reference.config_id)?),
        });
    }
    Ok(files)
}

/// Creates the task's directory with its `secrets` and `configs` subdirectories
/// (0700, owned by the task's user) and writes `files` into them.
fn write_task_dir(
    task_dir: &Path,
    files: &[TaskFile],
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let mut dirs = fs::DirBuilder::new();
    dirs.mode(0o700);
    dirs.create(task_dir)?;
    for dir in [
        task_dir.to_path_buf(),
        task_dir.join("secrets"),
        task_dir.join("configs"),
    ] {
        if dir != task_dir {
            dirs.create(&dir)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
    }
    for file in files {
        let path = task_dir.join(file.subdir).join(&file.name);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        out.write_all(file.payload.bytes())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        // Set after writing and explicitly: the mode given to open is cut by umask.
        out.set_permissions(fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}
