//! The data model: tasks, their statuses and specs, nodes, secrets, configs and logs.
//!
//! These are plain data types, the Rust counterparts of the reference protocol's
//! messages, trimmed to what an agent needs. Every type is `Clone + Debug + Default +
//! PartialEq` with public fields, so a task can be written as a struct literal with
//! `..Default::default()`. [`Secret`], [`Config`] and [`EncryptionKey`] never print
//! their payload in `Debug` output.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

pub use crate::signal::Signal;
use crate::Error;

/// Where a task is in its lifecycle.
///
/// The discriminants are the reference protocol's wire values and the order matters:
/// a task only ever moves to a greater state, and everything from
/// [`Completed`](TaskState::Completed) on is terminal for the agent.
#[repr(i32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskState {
    /// Created, not yet seen by the scheduler.
    #[default]
    New = 0,
    /// Waiting for resources.
    Pending = 64,
    /// Assigned to a node.
    Assigned = 192,
    /// Accepted by the node's agent.
    Accepted = 256,
    /// Its resources are being prepared.
    Preparing = 320,
    /// Prepared, ready to start.
    Ready = 384,
    /// Being started.
    Starting = 448,
    /// Running.
    Running = 512,
    /// Exited successfully.
    Completed = 576,
    /// Stopped on request.
    Shutdown = 640,
    /// Exited with an error, or could not be started.
    Failed = 704,
    /// Refused by the agent before it started.
    Rejected = 768,
    /// Marked for removal (a desired state; the agent bounds it by `Shutdown`).
    Remove = 800,
    /// Lost contact with its node.
    Orphaned = 832,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Completed,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    /// The name the reference protocol prints for this state, for example `"RUNNING"`.
    pub const fn name(self) -> &'static str {
        match self {
            TaskState::New => "NEW",
            TaskState::Pending => "PENDING",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Accepted => "ACCEPTED",
            TaskState::Preparing => "PREPARING",
            TaskState::Ready => "READY",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Completed => "COMPLETE",
            TaskState::Shutdown => "SHUTDOWN",
            TaskState::Failed => "FAILED",
            TaskState::Rejected => "REJECTED",
            TaskState::Remove => "REMOVE",
            TaskState::Orphaned => "ORPHANED",
        }
    }

    /// True from [`Completed`](TaskState::Completed) on: the agent will not move the
    /// task any further.
    pub const fn is_terminal(self) -> bool {
        self as i32 >= TaskState::Completed as i32
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for TaskState {
    type Err = Error;

    /// Parses a state name as [`Display`](fmt::Display) prints it, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Error> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownTaskState(s.to_owned()))
    }
}

impl TryFrom<i32> for TaskState {
    type Error = Error;

    /// Converts a wire value; any value that is not a state's discriminant is refused.
    fn try_from(value: i32) -> Result<Self, Error> {
        TaskState::ALL
            .into_iter()
            .find(|state| *state as i32 == value)
            .ok_or_else(|| Error::UnknownTaskState(value.to_string()))
    }
}

/// The observed status of a task, as reported by the agent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskStatus {
    /// When the status last changed.
    pub timestamp: Option<SystemTime>,
    /// The task's state.
    pub state: TaskState,
    /// A short human-readable word on the last transition, such as `"started"`.
    pub message: String,
    /// The error that caused the current state, if any.
    pub err: String,
    /// The runtime's view of the task (the reference's `runtime_status`).
    pub container: Option<ContainerStatus>,
    /// Ports the runtime published for the task.
    pub port_status: Option<PortStatus>,
}

/// What the runtime knows about the process or container running a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerStatus {
    /// The runtime's identifier for what runs the task.
    pub container_id: String,
    /// Its process id (0 when not running).
    pub pid: i32,
    /// Its exit code (0 while running or after a clean exit).
    pub exit_code: i32,
}

/// Ports published at the host level for a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStatus {
    /// The published ports.
    pub ports: Vec<PortConfig>,
}

/// The transport protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// How a port is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PublishMode {
    /// Through the cluster's routing mesh.
    #[default]
    Ingress,
    /// Directly on the host running the task.
    Host,
}

/// One port of a task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortConfig {
    /// An optional name for the port.
    pub name: String,
    /// Its protocol.
    pub protocol: PortProtocol,
    /// The port inside the task.
    pub target_port: u32,
    /// The port outside, 0 when the runtime chose one.
    pub published_port: u32,
    /// How it is published.
    pub publish_mode: PublishMode,
}

/// A name and labels, shared by most objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// A human-readable name.
    pub name: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// A unit of work assigned to a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Task {
    /// The task's unique identifier.
    pub id: String,
    /// The service it belongs to.
    pub service_id: String,
    /// The node it is assigned to.
    pub node_id: String,
    /// Its slot within a replicated service.
    pub slot: u64,
    /// Its name and labels.
    pub annotations: Annotations,
    /// The state the orchestrator wants it in.
    pub desired_state: TaskState,
    /// The state it was last reported in.
    pub status: TaskStatus,
    /// What to run.
    pub spec: TaskSpec,
}

/// What a task runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskSpec {
    /// The runtime and its settings; `None` is a task no executor can run.
    pub runtime: Option<Runtime>,
    /// What the task may use (SwarmKit's `ResourceRequirements`); `None` sets no
    /// limit.
    pub resources: Option<ResourceRequirements>,
}

/// The resources a task may use and the ones reserved for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceRequirements {
    /// Hard limits, enforced by the executor; one it cannot enforce rejects the
    /// task.
    pub limits: Option<Limits>,
    /// What the orchestrator reserved for the task; informational here.
    pub reservations: Option<Resources>,
}

/// Limits on what a task may use; 0 in a field is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU time, in billionths of a CPU: 1,500,000,000 is one and a half CPUs.
    pub nano_cpus: i64,
    /// Memory, in bytes; a task that needs more is killed ("out of memory").
    pub memory_bytes: i64,
    /// How many processes (and threads) the task may have at once.
    pub pids: i64,
}

impl TaskSpec {
    /// The secrets the task's runtime references (none without a runtime).
    pub fn secret_references(&self) -> &[SecretReference] {
        match &self.runtime {
            Some(Runtime::Process(spec)) => &spec.secrets,
            Some(Runtime::Container(spec)) => &spec.secrets,
            Some(Runtime::Generic(_)) | None => &[],
        }
    }

    /// The configs the task's runtime references (none without a runtime).
    pub fn config_references(&self) -> &[ConfigReference] {
        match &self.runtime {
            Some(Runtime::Process(spec)) => &spec.configs,
            Some(Runtime::Container(spec)) => &spec.configs,
            Some(Runtime::Generic(_)) | None => &[],
        }
    }
}

/// The runtime a task asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Runtime {
    /// A program run directly as an OS process.
    Process(ProcessSpec),
    /// A container, for executors backed by a container engine.
    Container(ContainerSpec),
    /// Anything else, identified by its kind.
    Generic(GenericRuntimeSpec),
}

/// A program run directly as an OS process, never through a shell.
///
/// Where it meets [`std::process::Command`] it takes the same types: the command
/// and the environment are bytes (`OsString`), passed to the program untouched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessSpec {
    /// The program and its arguments (argv); the program is looked up in `PATH` when it
    /// has no `/`.
    pub command: Vec<OsString>,
    /// Environment variables, name and value, in order (a later one replaces an
    /// earlier one of the same name).
    pub env: Vec<(OsString, OsString)>,
    /// The working directory; the executor's default when `None`.
    pub dir: Option<PathBuf>,
    /// The user to run as, a name or numeric id, as Docker takes it: a numeric id
    /// needs no entry in the user database (its group is then 0, as Docker has it,
    /// unless `group` says). Honoured when the host runs as root.
    pub user: Option<String>,
    /// The group to run as, a name or numeric id; the user's own group when
    /// `None`. Honoured when the host runs as root.
    pub group: Option<String>,
    /// More groups to run with (names or numeric ids), beside those the user
    /// database gives a named user, as `docker run --group-add` adds them.
    pub groups: Vec<String>,
    /// Whether the program inherits the host process's environment (off by default:
    /// it may hold the host's credentials).
    pub inherit_env: bool,
    /// Secrets to place in files for the program.
    pub secrets: Vec<SecretReference>,
    /// Configs to place in files for the program.
    pub configs: Vec<ConfigReference>,
    /// The signal that asks the program to stop; SIGTERM when `None`.
    pub stop_signal: Option<Signal>,
    /// Who the stop signal goes to (and what `ProcessController::signal` reaches).
    pub signal_target: SignalTarget,
    /// How long to wait after the stop signal before killing; 10 s when `None`.
    pub stop_grace_period: Option<Duration>,
    /// Resource limits applied to the program.
    pub rlimits: Vec<Rlimit>,
    /// Where the program's stdin comes from: `/dev/null` unless set.
    pub stdin: InputSource,
    /// Where the program's stdout goes: captured into the task's logs unless set.
    pub stdout: OutputSink,
    /// Where the program's stderr goes: captured into the task's logs unless set.
    pub stderr: OutputSink,
    /// Descriptors the program gets as 3, 4, ... in this order. Nothing else above
    /// stderr reaches it: every other descriptor of the host is closed at `exec`.
    pub extra_fds: Vec<SharedFd>,
    /// Makes the program's process group the foreground group of the terminal
    /// that is its stdin (as a shell does for a job), so that it may read the
    /// terminal and the terminal's signals (Ctrl-C, Ctrl-Z) reach it; nothing when
    /// its stdin is no terminal. Whoever takes the terminal back is the caller's
    /// business (`swarmexec run` does).
    pub foreground: bool,
    /// How to tell that the program is healthy; `None` for no check (the task is
    /// running as soon as it has started).
    pub healthcheck: Option<HealthCheck>,
}

/// Who a task's signals go to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SignalTarget {
    /// Its program's whole process group (as `dumb-init` and `tini -g` do).
    #[default]
    Group,
    /// Its program alone (as Docker and `tini` do): the program passes them on.
    Process,
}

/// A health check, with Docker's fields and defaults: `start` returns once a probe
/// passes, and `retries` failures in a row make the task unhealthy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthCheck {
    /// The probe: exit status 0 is healthy.
    pub test: HealthTest,
    /// Between probes once healthy; 30 s when `None`.
    pub interval: Option<Duration>,
    /// How long a probe may run before it is killed and counted a failure; 30 s
    /// when `None`.
    pub timeout: Option<Duration>,
    /// How long failures do not count after the start; 0 when `None`.
    pub start_period: Option<Duration>,
    /// Between probes until the first passes; 5 s when `None`.
    pub start_interval: Option<Duration>,
    /// How many failures in a row make the task unhealthy; 3 when `None`.
    pub retries: Option<u32>,
}

/// What a health probe runs, with the task's user, directory and environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthTest {
    /// A program and its arguments, run directly (Docker's `CMD`).
    Command(Vec<OsString>),
    /// A shell command line, run with `sh -c` (Docker's `CMD-SHELL`).
    Shell(OsString),
}

impl Default for HealthTest {
    fn default() -> Self {
        HealthTest::Command(Vec::new())
    }
}

/// Where a task's health stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// No probe has passed yet.
    #[default]
    Starting,
    /// The last probe passed, or fewer than `retries` have failed since.
    Healthy,
    /// `retries` probes in a row failed.
    Unhealthy,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        })
    }
}

/// One probe's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthProbe {
    /// Its exit code (128 + the signal for a killed probe; -1 when it could not
    /// start).
    pub exit_code: i32,
    /// When it started and ended.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// The end of its output (stdout and stderr), at most a few kilobytes.
    pub output: String,
}

/// A task's health, as a health-checking controller reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Where it stands.
    pub state: HealthState,
    /// Failures in a row since the last pass.
    pub failing_streak: u32,
    /// The last few probes, oldest first.
    pub log: Vec<HealthProbe>,
}

/// Where a task's stdin comes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum InputSource {
    /// `/dev/null`: the program reads end-of-file.
    #[default]
    Null,
    /// The host process's own stdin.
    Inherit,
    /// A file, opened for reading when the program starts.
    File(PathBuf),
    /// A descriptor the caller opened (a copy is given to the program).
    Fd(SharedFd),
}

/// Where a task's stdout or stderr goes. Anything but [`Capture`](OutputSink::Capture)
/// goes to the program directly: the library copies no byte of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OutputSink {
    /// Into the task's bounded log buffer, for its logs.
    #[default]
    Capture,
    /// The host process's own stdout (for stdout) or stderr (for stderr).
    Inherit,
    /// `/dev/null`.
    Null,
    /// A file, created if missing and appended to, opened when the program starts.
    File(PathBuf),
    /// A descriptor the caller opened (a copy is given to the program).
    Fd(SharedFd),
}

/// A descriptor shared by the specs that name it; equal only to itself.
#[derive(Clone)]
pub struct SharedFd(std::sync::Arc<std::os::fd::OwnedFd>);

impl SharedFd {
    /// A copy of the descriptor, for a program to own.
    pub fn try_clone_to_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        self.0.try_clone()
    }
}

impl From<std::os::fd::OwnedFd> for SharedFd {
    fn from(fd: std::os::fd::OwnedFd) -> Self {
        SharedFd(std::sync::Arc::new(fd))
    }
}

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for SharedFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "SharedFd({})", self.0.as_raw_fd())
    }
}

/// A resource that an [`Rlimit`] bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RlimitResource {
    /// Address-space size, bytes (`RLIMIT_AS`).
    AddressSpace,
    /// Core-file size, bytes (`RLIMIT_CORE`).
    Core,
    /// CPU time, seconds (`RLIMIT_CPU`).
    Cpu,
    /// Data-segment size, bytes (`RLIMIT_DATA`).
    Data,
    /// Size of files the process may create, bytes (`RLIMIT_FSIZE`).
    FileSize,
    /// Locked memory, bytes (`RLIMIT_MEMLOCK`).
    MemLock,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    NoFile,
    /// Processes of the user (`RLIMIT_NPROC`).
    NProc,
    /// Stack size, bytes (`RLIMIT_STACK`).
    Stack,
}

/// A resource limit for a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// What is limited.
    pub resource: RlimitResource,
    /// The soft limit, which the process may raise up to `hard`.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// A container, for executors backed by a container engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// The image to run.
    pub image: String,
    /// Overrides the image's entry point.
    pub command: Vec<String>,
    /// Arguments to the entry point.
    pub args: Vec<String>,
    /// Environment entries, each `KEY=VALUE`.
    pub env: Vec<String>,
    /// The working directory inside the container.
    pub dir: Option<PathBuf>,
    /// The user inside the container.
    pub user: Option<String>,
    /// The container's hostname.
    pub hostname: String,
    /// Labels for the container.
    pub labels: BTreeMap<String, String>,
    /// Secrets exposed to the container.
    pub secrets: Vec<SecretReference>,
    /// Configs exposed to the container.
    pub configs: Vec<ConfigReference>,
    /// The signal that asks the container to stop.
    pub stop_signal: Option<String>,
    /// How long to wait after the stop signal before killing.
    pub stop_grace_period: Option<Duration>,
}

/// A runtime this crate knows nothing about, for custom executors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenericRuntimeSpec {
    /// What kind of runtime it is; executors match on it.
    pub kind: String,
    /// The runtime's own encoding of its settings.
    pub payload: Vec<u8>,
}

/// A task's reference to a secret, and where to expose it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretReference {
    /// The secret's id in the stores.
    pub secret_id: String,
    /// The secret's name, for messages.
    pub secret_name: String,
    /// The file name to expose it under, inside the task's secrets directory.
    pub target: String,
    /// The file's mode; 0o400 when `None`.
    pub mode: Option<u32>,
}

/// A task's reference to a config, and where to expose it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigReference {
    /// The config's id in the stores.
    pub config_id: String,
    /// The config's name, for messages.
    pub config_name: String,
    /// The file name to expose it under, inside the task's configs directory.
    pub target: String,
    /// The file's mode; 0o444 when `None`.
    pub mode: Option<u32>,
}

/// Stands in for a payload that `Debug` must not print.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Sensitive data distributed to the tasks that reference it.
///
/// `Debug` never prints `data`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    /// The secret's unique identifier.
    pub id: String,
    /// Its name and labels.
    pub annotations: Annotations,
    /// The secret bytes.
    pub data: Vec<u8>,
    /// Whether the cluster made it for its own use.
    pub internal: bool,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("annotations", &self.annotations)
            .field("data", &Redacted)
            .field("internal", &self.internal)
            .finish()
    }
}

/// Configuration data distributed to the tasks that reference it.
///
/// `Debug` never prints `data`: configs often hold credentials too.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The config's unique identifier.
    pub id: String,
    /// Its name and labels.
    pub annotations: Annotations,
    /// The config bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("id", &self.id)
            .field("annotations", &self.annotations)
            .field("data", &Redacted)
            .finish()
    }
}

/// A symmetric key the managers hand to executors (for example for network
/// encryption). `Debug` never prints `key`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncryptionKey {
    /// The subsystem the key is for.
    pub subsystem: String,
    /// The algorithm it is used with.
    pub algorithm: String,
    /// The key bytes.
    pub key: Vec<u8>,
    /// Orders keys: a greater time is a newer key.
    pub lamport_time: u64,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("subsystem", &self.subsystem)
            .field("algorithm", &self.algorithm)
            .field("key", &Redacted)
            .field("lamport_time", &self.lamport_time)
            .finish()
    }
}

/// A node of the cluster, as the managers see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// The node's unique identifier.
    pub id: String,
    /// Its name and labels.
    pub annotations: Annotations,
    /// What the node reported about itself.
    pub description: Option<NodeDescription>,
}

/// What an executor reports about the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeDescription {
    /// The host's name.
    pub hostname: String,
    /// Its operating system and architecture.
    pub platform: Platform,
    /// Its capacity.
    pub resources: Resources,
    /// Labels of the executor's engine.
    pub engine_labels: BTreeMap<String, String>,
}

/// An operating system and architecture, as Rust names them (`"linux"`, `"x86_64"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// The CPU architecture.
    pub architecture: String,
    /// The operating system.
    pub os: String,
}

/// A node's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPUs, in billionths of a CPU.
    pub nano_cpus: i64,
    /// Memory, in bytes.
    pub memory_bytes: i64,
}

/// What a task has used, as far as the host can tell; `None` where it cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    /// CPU time, user and system, of every process of the task.
    pub cpu: Option<Duration>,
    /// Memory in use now (none once the task has ended).
    pub memory_bytes: Option<u64>,
    /// The most memory in use at once so far.
    pub memory_peak_bytes: Option<u64>,
    /// Processes running now.
    pub processes: Option<u64>,
}

/// Which output stream a log message came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// Not known.
    #[default]
    Unknown,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Which task a log message belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogContext {
    /// The task's service.
    pub service_id: String,
    /// The node that ran it.
    pub node_id: String,
    /// The task.
    pub task_id: String,
}

/// One chunk of a task's output, usually a line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogMessage {
    /// Which task it came from.
    pub context: LogContext,
    /// When it was written.
    pub timestamp: Option<SystemTime>,
    /// Which stream it was written to.
    pub stream: LogStream,
    /// The bytes, which need not be UTF-8.
    pub data: Vec<u8>,
    /// Extra key/value attributes.
    pub attrs: Vec<(String, String)>,
}

/// What a log subscription asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSubscriptionOptions {
    /// The streams wanted; empty means all.
    pub streams: Vec<LogStream>,
    /// Keep publishing new output until the task exits or the subscription is
    /// cancelled.
    pub follow: bool,
    /// Only the last N messages already written; all when `None`.
    pub tail: Option<u64>,
    /// Only messages written at or after this time.
    pub since: Option<SystemTime>,
}

impl LogSubscriptionOptions {
    /// Whether a message from `stream` is wanted.
    pub fn wants(&self, stream: LogStream) -> bool {
        self.streams.is_empty() || self.streams.contains(&stream)
    }
}
