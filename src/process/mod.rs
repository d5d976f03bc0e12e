//! A real executor: tasks run as supervised OS processes (Linux).
//!
//! [`ProcessExecutor`] runs tasks whose spec has a
//! [`Runtime::Process`] runtime, with no container
//! engine: each task's program is spawned directly (never through a shell) in a
//! process group of its own, its output is captured, and one reaper thread per
//! executor watches every program and wakes those waiting for it.
//!
//! - `prepare` validates the spec (a bad one rejects the task with an error naming
//!   the problem: among others, durations over [`MAX_DURATION`](crate::MAX_DURATION),
//!   a memory limit under [`MIN_MEMORY_LIMIT`], more processes than the kernel can
//!   have, more CPUs than the host has). For a task that references secrets or
//!   configs, it creates a directory of the controller's own in the executor's
//!   state directory (`<task id>.<owner>.<n>`, so that a controller for a reused
//!   task id never meets an old one's files; [`ProcessController::task_dir`] names
//!   it) and writes them there (secrets mode 0400, configs 0444, unless a reference
//!   sets the mode), in `secrets` and `configs` directories of mode 0700; the
//!   program finds them through `SWARMEXEC_SECRETS_DIR` and `SWARMEXEC_CONFIGS_DIR`.
//!   Everything is written as this process's user through open directories, never
//!   following a link, and handed to the task's user only once complete (see the
//!   `task_files` module): the task's user may do what it likes in its directory,
//!   and still reaches nothing outside it. (A task with neither gets no directory.)
//!   Its environment is those, `SWARMEXEC_TASK_ID`, a default `PATH` and the spec's
//!   `env`: the host's own environment, which may hold its credentials, is passed
//!   on only when the spec sets `inherit_env`.
//! - `start` spawns it with stdin from `/dev/null` and stdout and stderr into pipes,
//!   in a cgroup of its own where the host has cgroups (a cgroup that cannot be
//!   made is a temporary error naming why: a task never runs uncontained on a host
//!   that contains), waiting for the reaper only as long as its token allows.
//! - `wait` returns when it exits: `Ok` for status 0, else an
//!   [`Error::Exit`] with the code a shell would report (128 +
//!   the signal for a killed program).
//! - `shutdown` sends the stop signal to the whole group, waits out the grace
//!   period, then SIGKILLs the group; `terminate` SIGKILLs it at once.
//! - `remove` stops the program if needed and deletes the task's directory, secrets
//!   first, even when stopping failed; `close` deletes it too.
//!
//! - A spec with a [`healthcheck`](crate::api::ProcessSpec::healthcheck) makes `start`
//!   wait until a probe passes, and `start` or `wait` fail a task whose probes fail
//!   `retries` times in a row, stopping its program (see the `health` module).
//!
//! The controller's lock is never held across a blocking call (a spawn, a user
//! look-up, a file write, a wait), and every blocking call returns once its token
//! is cancelled: a slow call on one thread never holds up another. A start refused
//! for lack of resources (a process, thread, file or memory limit) is a temporary
//! error, which [`do_task`](crate::do_task) retries. A program starts with an empty
//! signal mask and every signal its host ignores back at its default, whatever the
//! host blocks or ignores.
//!
//! When a program exits, whatever is left of its process group is killed, as a
//! container engine does when a container's first process exits.
//!
//! # Threads, and where things are dropped
//!
//! Each executor has two threads: the reaper, `swarmexec-reap`, which only spawns,
//! reaps, drains output pipes and wakes waiters; and `swarmexec-chores`, which does
//! whatever may block so that the reaper never does (removing cgroups, freezing
//! one to kill it, cleaning up after dead executors, preparing health probes).
//! Both start with the executor's first use and stop when the last of it goes.
//!
//! A controller that is closed or dropped kills its program if it still runs and
//! deletes its files; an executor that goes kills anything left, removes its
//! cgroups and lets go of its state directory. Both happen on the thread that lets
//! go of the last handle: the crate's own threads (the timer, the task managers'
//! pool, the reaper) never hold the last one. No program is ever left running
//! without a supervisor.
//!
//! # Neighbours
//!
//! Executors may share a state directory and a cgroup base, from one process or
//! many, in one pid namespace or several (containers, `unshare`). Each holds an
//! `flock` for its whole life on a lock file of its own in the state directory
//! (`owners/<owner>`) and on its cgroup directories; one whose locks can be taken
//! is dead, and the next executor removes what it left (its task directories,
//! secrets first, and its cgroups, killing what runs in them), on its chores
//! thread. A live executor's tasks are never touched.
//!
//! # A guest in the host program
//!
//! No signal handler is installed and only the pids spawned here are ever waited
//! for, so a host that spawns and waits for its own children keeps working. A host
//! that ignores SIGCHLD (or sets `SA_NOCLDWAIT`), so that the kernel reaps children
//! itself, is refused at [`ProcessExecutorBuilder::build`] with an error saying
//! so. (A host that reaps *every* child with `waitpid(-1)` takes the exit statuses
//! of tasks too; those tasks then fail with "exit status lost (reaped outside
//! swarmexec)".) Signals never reach a recycled pid: see the `supervisor` module
//! for how.
//!
//! # State directory
//!
//! Secrets are written to the state directory, which should be memory-backed
//! (tmpfs, ramfs) so that they never reach a disk: [`default_state_dir`] picks
//! such a place where the host has one, and an executor on a disk-backed one logs
//! a warning once ([`ProcessExecutor::state_dir_in_memory`] says which). A state
//! directory that is a link, belongs to another user or that others may write to
//! is refused.
//!
//! ```
//! use swarmexec::api::{ProcessSpec, Runtime, Task, TaskSpec, TaskState};
//! use swarmexec::process::ProcessExecutor;
//! use swarmexec::{do_task, resolve, CancelToken, Error};
//!
//! let executor = ProcessExecutor::new(std::env::temp_dir().join("swarmexec-doc"))?;
//! let spec = ProcessSpec { command: vec!["echo".into(), "hello".into()], ..Default::default() };
//! let mut task = Task {
//!     id: "hello.1".into(),
//!     desired_state: TaskState::Running,
//!     spec: TaskSpec { runtime: Some(Runtime::Process(spec)), ..Default::default() },
//!     ..Default::default()
//! };
//! let cancel = CancelToken::new();
//! let (status, controller) = resolve(&cancel, &task, &executor);
//! task.status = status;
//! let controller = controller?;
//! while let (status, Ok(()) | Err(Error::TaskRetry)) = do_task(&cancel, &task, &*controller) {
//!     task.status = status;
//! }
//! assert_eq!(task.status.state, TaskState::Completed);
//! controller.remove(&cancel)?;
//! # Ok::<(), Error>(())
//! ```

mod cgroup;
mod chores;
mod controller;
mod health;
mod logs;
mod orphans;
mod owner;
mod spec;
mod supervisor;
mod sys;
mod task_files;
mod watchdog;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once, OnceLock};

use parking_lot::Mutex;

use cgroup::Cgroups;
pub use cgroup::{Containment, MIN_MEMORY_LIMIT};
use chores::Chores;
use controller::{Environment, ExecutorCgroups};
pub use controller::{ProcessController, StartFailure};
pub use logs::MISSED_BYTES;
use owner::Owner;
use supervisor::Supervisor;
use task_files::StateDir;

use crate::api::{EncryptionKey, Node, NodeDescription, Platform, Resources, Runtime, Task};
use crate::executor::DependencyStore;
use crate::{
    CancelToken, ConfigsManager, ConfigsProvider, Controller, DependencyManager, Error, Executor,
    SecretsManager, SecretsProvider,
};

/// `HOME`, `USER` and `LOGNAME` of `user` (a name or numeric id), or of the user
/// this process runs as: what a login would set, for callers whose tasks should
/// see them (`swarmexec run` adds them; a spec gets none by default). A numeric id
/// with no entry in the user database gets `HOME=/` alone, as Docker gives it.
///
/// ```
/// let env = swarmexec::process::login_environment(None)?;
/// assert_eq!(env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["HOME", "USER", "LOGNAME"]);
/// let nobody_known = swarmexec::process::login_environment(Some("4000000"))?;
/// assert_eq!(nobody_known, [("HOME".to_owned(), "/".to_owned())]);
/// # Ok::<(), swarmexec::Error>(())
/// ```
pub fn login_environment(user: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let numeric = user.and_then(|u| u.parse::<u32>().ok());
    let found = match (user, numeric) {
        (None, _) => sys::user_by_uid(sys::effective_uid()),
        (Some(_), Some(uid)) => sys::user_by_uid(uid),
        (Some(user), None) => sys::user_by_name(user),
    };
    let described = user.map_or_else(|| "the current user".to_owned(), |u| format!("user {u:?}"));
    let found = found.map_err(|e| Error::other(format!("cannot look up {described}: {e}")))?;
    let entry = match (found, numeric) {
        (Some(entry), _) => entry,
        (None, Some(_)) => return Ok(vec![("HOME".to_owned(), "/".to_owned())]),
        (None, None) => return Err(Error::InvalidSpec(format!("unknown {described}"))),
    };
    Ok(vec![
        ("HOME".to_owned(), entry.home),
        ("USER".to_owned(), entry.name.clone()),
        ("LOGNAME".to_owned(), entry.name),
    ])
}

/// How much output each task keeps by default: 1 MiB.
pub const DEFAULT_LOG_CAPACITY: usize = 1 << 20;

/// Runs tasks as supervised OS processes. See the [module docs](self).
pub struct ProcessExecutor {
    env: Arc<Environment>,
    node_id: Mutex<String>,
    log_capacity: usize,
}

/// Where an executor's tasks get their cgroups.
#[derive(Clone, Debug, Default)]
enum CgroupChoice {
    #[default]
    Default,
    Parent(PathBuf),
    None,
}

/// Sets up a [`ProcessExecutor`], in the manner of [`std::thread::Builder`]:
/// nothing is touched (no directory made, no cgroup scanned, no thread started)
/// until [`build`](ProcessExecutorBuilder::build), when every option is known.
///
/// ```
/// use swarmexec::process::ProcessExecutor;
///
/// let executor = ProcessExecutor::builder(std::env::temp_dir().join("swarmexec-builder-doc"))
///     .without_cgroups()
///     .log_capacity(64 << 10)
///     .build()?;
/// assert_eq!(executor.containment().method, "process group");
/// # Ok::<(), swarmexec::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until it is built"]
pub struct ProcessExecutorBuilder {
    state_dir: PathBuf,
    cgroups: CgroupChoice,
    log_capacity: usize,
    adopt_orphans: bool,
}

impl ProcessExecutorBuilder {
    /// Puts the executor's cgroups under `parent`, a path relative to the root of
    /// each cgroup hierarchy (like `docker run --cgroup-parent`, or a unit's
    /// `Delegate=` cgroup), instead of the default (see the [module docs](self)).
    /// The parent stays the caller's: the executor removes only the cgroups it
    /// made in it (and the parent itself only if it made that too).
    pub fn cgroup_parent(mut self, parent: impl Into<PathBuf>) -> Self {
        self.cgroups = CgroupChoice::Parent(parent.into());
        self
    }

    /// Uses no cgroups: each task is held together by its process group only (a
    /// descendant that leaves it escapes), and a task with limits is rejected.
    pub fn without_cgroups(mut self) -> Self {
        self.cgroups = CgroupChoice::None;
        self
    }

    /// How many bytes of output each task keeps (its newest lines); by default
    /// [`DEFAULT_LOG_CAPACITY`].
    pub fn log_capacity(mut self, bytes: usize) -> Self {
        self.log_capacity = bytes;
        self
    }

    /// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`), so that
    /// what the tasks leave behind (a daemon's double fork, a shell's orphaned
    /// background jobs) is reparented to it, and has the executor reap every
    /// child that is not one of its tasks, as `tini -s` does. For a host with no
    /// children of its own, such as a container's init: it would reap those too.
    /// Off by default: a guest reaps nothing that is not its own.
    pub fn adopt_orphans(mut self, adopt: bool) -> Self {
        self.adopt_orphans = adopt;
        self
    }

    /// Makes the executor.
    ///
    /// Fails, saying why, when this process's children would not stay its own to
    /// reap (SIGCHLD ignored, or `SA_NOCLDWAIT`: the kernel would reap tasks
    /// itself, their exit statuses lost and their pids free for reuse), or the
    /// state directory cannot be made or is not safe (a link, another user's, or
    /// writable by others). A state directory on disk is used, with a warning
    /// logged once: secrets written there reach the disk.
    pub fn build(self) -> Result<ProcessExecutor, Error> {
        if let Some(why) = sys::children_auto_reaped()
            .map_err(|e| Error::other(format!("cannot read SIGCHLD's disposition: {e}")))?
        {
            return Err(Error::other(format!(
                "cannot supervise processes: {why} in this process, so the kernel reaps \
                 children itself; their exit statuses would be lost and their pids reused \
                 while swarmexec still signals them"
            )));
        }
        let state = StateDir::open(&self.state_dir)?;
        if !state.in_memory() {
            warn_on_disk(state.path());
        }
        let owner = Owner::new();
        let claim = state.claim(&owner)?;
        let cgroups = match &self.cgroups {
            CgroupChoice::Default => Cgroups::new(&owner, None),
            CgroupChoice::Parent(parent) => Cgroups::new(&owner, Some(parent)),
            CgroupChoice::None => Cgroups::none(),
        };
        let chores = Chores::new();
        let mut supervisor = Supervisor::new(chores.clone());
        if self.adopt_orphans {
            supervisor = supervisor
                .adopting_orphans()
                .map_err(|e| Error::other(format!("cannot adopt orphans: {e}")))?;
        }
        let env = Environment {
            supervisor,
            chores,
            watchdog: OnceLock::new(),
            cgroups: ExecutorCgroups(cgroups),
            owner,
            state,
            _claim: claim,
            dependencies: Arc::new(DependencyStore::new()),
        };
        env.clean_up_after_dead_owners()?;
        Ok(ProcessExecutor {
            env: Arc::new(env),
            node_id: Mutex::new(String::new()),
            log_capacity: self.log_capacity,
        })
    }
}

/// Says, once per process, that secrets will reach a disk.
fn warn_on_disk(state_dir: &Path) {
    static WARNED: Once = Once::new();
    WARNED.call_once(|| {
        log::warn!(
            target: "swarmexec",
            "state directory {} is not memory-backed (tmpfs or ramfs): task secrets written \
             there reach the disk",
            state_dir.display()
        )
    });
}

/// The state directory to use when none is given: `/run/swarmexec` for root and
/// `$XDG_RUNTIME_DIR/swarmexec` for other users, where that is memory-backed (a
/// tmpfs or ramfs, so that secrets stay off disk), else `/dev/shm/swarmexec`
/// (`/dev/shm/swarmexec-<uid>` for other users) where that is, else the first
/// (an executor on it warns that secrets reach the disk).
pub fn default_state_dir() -> PathBuf {
    let uid = sys::effective_uid();
    let mut candidates = Vec::new();
    if uid == 0 {
        candidates.push(PathBuf::from("/run/swarmexec"));
        candidates.push(PathBuf::from("/dev/shm/swarmexec"));
    } else {
        if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            candidates.push(PathBuf::from(runtime).join("swarmexec"));
        }
        candidates.push(PathBuf::from(format!("/dev/shm/swarmexec-{uid}")));
    }
    let in_memory = |dir: &PathBuf| task_files::in_memory(dir);
    candidates
        .iter()
        .find(|dir| in_memory(dir))
        .unwrap_or(&candidates[0])
        .clone()
}

impl ProcessExecutor {
    /// An executor with every default, keeping its tasks' directories under
    /// `state_dir`: [`ProcessExecutor::builder`]`(state_dir).build()`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<ProcessExecutor, Error> {
        ProcessExecutor::builder(state_dir).build()
    }

    /// A builder for an executor keeping its tasks' directories under
    /// `state_dir`, which is made if missing with mode 0711 (a task running as
    /// another user may pass through to its own directory, mode 0700 and owned by
    /// that user, but not list the others).
    pub fn builder(state_dir: impl Into<PathBuf>) -> ProcessExecutorBuilder {
        ProcessExecutorBuilder {
            state_dir: state_dir.into(),
            cgroups: CgroupChoice::Default,
            log_capacity: DEFAULT_LOG_CAPACITY,
            adopt_orphans: false,
        }
    }

    /// For an executor that adopts orphans (see
    /// [`ProcessExecutorBuilder::adopt_orphans`]): reap those that have exited
    /// now, rather than within the tenth of a second in which the reaper looks
    /// anyway. A host that takes SIGCHLD (as `swarmexec run` does) calls it
    /// then. Nothing otherwise.
    pub fn reap_orphans(&self) {
        self.env.supervisor.reap_orphans();
    }

    /// True when the state directory is memory-backed (tmpfs or ramfs), so that
    /// the secrets written there stay off disk.
    pub fn state_dir_in_memory(&self) -> bool {
        self.env.state.in_memory()
    }

    /// Which containment and which limits this host supports for the executor's
    /// tasks.
    pub fn containment(&self) -> Containment {
        self.env.cgroups.0.containment()
    }

    /// Sets how many bytes of output each task keeps (its newest lines), for
    /// controllers made from now on (also [`ProcessExecutorBuilder::log_capacity`]).
    pub fn with_log_capacity(mut self, bytes: usize) -> Self {
        self.log_capacity = bytes;
        self
    }

    /// The directory holding the tasks' directories.
    pub fn state_dir(&self) -> &Path {
        self.env.state.path()
    }

    /// The executor's secrets and configs.
    pub fn dependency_store(&self) -> &DependencyStore {
        &self.env.dependencies
    }

    /// A controller for `task`, with its concrete type.
    pub fn process_controller(&self, task: &Task) -> Result<ProcessController, Error> {
        match &task.spec.runtime {
            Some(Runtime::Process(_)) => Ok(ProcessController::new(
                Arc::clone(&self.env),
                task,
                self.node_id.lock().clone(),
                self.log_capacity,
            )),
            _ => Err(Error::RuntimeUnsupported),
        }
    }
}

impl std::fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExecutor")
            .field("state_dir", &self.env.state.path())
            .field("log_capacity", &self.log_capacity)
            .finish_non_exhaustive()
    }
}

impl Executor for ProcessExecutor {
    /// The host's name, OS, architecture, CPUs and memory.
    fn describe(&self, _cancel: &CancelToken) -> Result<NodeDescription, Error> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(NodeDescription {
            hostname: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_default(),
            platform: Platform {
                architecture: std::env::consts::ARCH.to_owned(),
                os: std::env::consts::OS.to_owned(),
            },
            resources: Resources {
                nano_cpus: cpus as i64 * 1_000_000_000,
                memory_bytes: total_memory().unwrap_or(0),
            },
            ..Default::default()
        })
    }

    /// Remembers the node's id, which log messages carry.
    fn configure(&self, _cancel: &CancelToken, node: &Node) -> Result<(), Error> {
        node.id.clone_into(&mut self.node_id.lock());
        Ok(())
    }

    fn controller(&self, task: &Task) -> Result<Box<dyn Controller>, Error> {
        Ok(Box::new(self.process_controller(task)?))
    }

    /// Accepted and ignored: processes use the host's network as it is.
    fn set_network_bootstrap_keys(&self, _keys: &[EncryptionKey]) -> Result<(), Error> {
        Ok(())
    }

    fn dependencies(&self) -> Option<&dyn DependencyManager> {
        Some(self)
    }
}

impl SecretsProvider for ProcessExecutor {
    fn secrets(&self) -> &dyn SecretsManager {
        self.env.dependencies.secrets()
    }
}

impl ConfigsProvider for ProcessExecutor {
    fn configs(&self) -> &dyn ConfigsManager {
        self.env.dependencies.configs()
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    Some(fs::read_to_string(path).ok()?.trim().to_owned())
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn total_memory() -> Option<i64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
