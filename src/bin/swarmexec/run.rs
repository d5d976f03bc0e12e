//! `swarmexec run`: one task on a process executor, started again as `--restart`
//! says, its end told on stderr and in the exit code.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use swarmexec::api::*;
use swarmexec::process::{default_state_dir, login_environment, ProcessExecutor, StartFailure};
use swarmexec::{CancelToken, ConfigsProvider, Controller, SecretsProvider};

use crate::args::RunOptions;
use crate::attempt::{Attempt, Context, Outcome};
use crate::report::{Ending, How, Report};
use crate::signals::{self, Request, Signals};
use crate::sys;
use crate::terminal::Terminal;
use crate::values::RestartPolicy;
use crate::{fail, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_OWN_FAILURE};

/// Docker's restart back-off: the first delay, doubled each time up to the cap,
/// and reset once a program has run this long.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_CAP: Duration = Duration::from_secs(60);
const RESTART_RESET_AFTER: Duration = Duration::from_secs(10);

pub(crate) fn run(mut options: RunOptions) -> ExitCode {
    // Before any thread allocates.
    sys::share_one_malloc_arena();
    // Before anything opens a descriptor of its own.
    match sys::inherited_fds(options.preserve_fds) {
        Ok(fds) => options.spec.extra_fds = fds.into_iter().map(SharedFd::from).collect(),
        Err(e) => return fail(&e),
    }
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = match signals::take() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot take signals: {e}")),
    };
    if let Err(e) = sys::default_sigchld() {
        return fail(&format!(
            "cannot take SIGCHLD back from its ignored state: {e}"
        ));
    }
    let terminal = match take_terminal(&mut options) {
        Ok(terminal) => terminal,
        Err(e) => return fail(&e),
    };
    let setup = Setup::new(options).and_then(|setup| {
        // The command holds no directory: it would keep a mount busy.
        std::env::set_current_dir("/")
            .map_err(|e| format!("cannot move to /: {e}"))
            .map(|()| setup)
    });
    let setup = match setup {
        Ok(setup) => setup,
        Err(e) => return fail(&e),
    };
    let code = setup.run(&signals, terminal.as_ref());
    if let Some(terminal) = &terminal {
        terminal.take_back();
    }
    code
}

/// The terminal the program gets, with `-t`, or with `-i` when stdin is one
/// (and the command holds its foreground). `-t` without one is refused, as
/// `docker run -t` refuses it.
fn take_terminal(options: &mut RunOptions) -> Result<Option<Terminal>, String> {
    let wanted = options.tty || options.spec.stdin == InputSource::Inherit;
    let terminal = if wanted { Terminal::of_stdin() } else { None };
    if options.tty && terminal.is_none() {
        return Err("-t: the input device is not a TTY (or this run is in the background)".into());
    }
    options.spec.foreground = terminal.is_some();
    Ok(terminal)
}

/// A run, ready to start: its executor and task, and what to do around them.
struct Setup {
    executor: ProcessExecutor,
    task: Task,
    report: Report,
    restart: RestartPolicy,
    pid_file: Option<PathBuf>,
}

impl Setup {
    /// Everything made up front, relative paths resolved against the caller's
    /// working directory (the command leaves it afterwards).
    fn new(options: RunOptions) -> Result<Setup, String> {
        let cwd = std::env::current_dir().map_err(|e| format!("cannot tell where I am: {e}"))?;
        let absolute = |path: PathBuf| cwd.join(path);
        let state_dir = options
            .state_dir
            .clone()
            .map_or_else(default_state_dir, absolute);
        // PID 1 of a pid namespace inherits every orphan in it: reap them.
        let adopt = options.init || std::process::id() == 1;
        let executor = ProcessExecutor::builder(&state_dir)
            .adopt_orphans(adopt)
            .build()
            .map_err(|e| e.to_string())?;
        let task = build_task(&options, &executor, &cwd)?;
        Ok(Setup {
            executor,
            task,
            report: Report::new(options.quiet, options.json),
            restart: options.restart,
            pid_file: options.pid_file.map(absolute),
        })
    }

    /// Runs the task, and again as the restart policy says; returns the exit code.
    fn run(self, signals: &Signals, terminal: Option<&Terminal>) -> ExitCode {
        let mut cx = Context {
            executor: &self.executor,
            signals,
            report: &self.report,
            terminal,
            pid_file: self.pid_file.as_deref(),
            stopping: false,
        };
        let mut restarts = 0;
        let mut delay = RESTART_FIRST;
        loop {
            let (outcome, ending) = self.attempt(&mut cx, restarts);
            let again = !cx.stopping && self.restart.again(&outcome, restarts);
            if !again {
                self.report.finish(&ending);
                return ExitCode::from(ending.code);
            }
            if outcome.ran_for >= RESTART_RESET_AFTER {
                delay = RESTART_FIRST;
            }
            restarts += 1;
            self.report.restart(restarts, delay, &ending.how);
            // Stopped while waiting: the last end is the run's.
            if wait_out(signals, delay) {
                self.report.finish(&ending);
                return ExitCode::from(ending.code);
            }
            delay = (delay * 2).min(RESTART_CAP);
        }
    }

    /// One start of the program, to its end.
    fn attempt(&self, cx: &mut Context<'_>, restarts: u32) -> (Outcome, Ending) {
        let controller = match self.executor.process_controller(&self.task) {
            Ok(controller) => Arc::new(controller),
            Err(e) => {
                let status = TaskStatus {
                    state: TaskState::Rejected,
                    err: e.to_string(),
                    ..self.task.status.clone()
                };
                let outcome = Outcome {
                    status,
                    exit_code: None,
                    exit: None,
                    usage: None,
                    ran_for: Duration::ZERO,
                };
                let ending = self.ending(&outcome, &None, cx.stopping, restarts);
                return (outcome, ending);
            }
        };
        let outcome = Attempt::new(self.task.clone(), &controller).run(cx, &controller);
        let failure = controller.start_failure();
        // Ended: this deletes the task's files (secrets first) and its cgroup.
        if let Err(e) = controller.remove(&CancelToken::new()) {
            eprintln!("swarmexec: removing the task: {e}");
        }
        let _ = controller.close();
        let ending = self.ending(&outcome, &failure, cx.stopping, restarts);
        (outcome, ending)
    }

    /// The end of an attempt, and its exit code.
    fn ending(
        &self,
        outcome: &Outcome,
        failure: &Option<StartFailure>,
        stopped: bool,
        restarts: u32,
    ) -> Ending {
        let status = &outcome.status;
        let how = How::of(status, outcome.exit_code.map(|_| outcome.exit), stopped);
        let code = match (failure, outcome.exit_code) {
            (Some(StartFailure::NotFound), _) => EXIT_NOT_FOUND,
            (Some(StartFailure::CannotExecute), _) => EXIT_CANNOT_EXECUTE,
            // Ran, and failed although its status was 0: its health check never passed.
            (None, Some(0)) if status.state == TaskState::Failed => 1,
            (None, Some(code)) => u8::try_from(code).unwrap_or(EXIT_OWN_FAILURE),
            (None, None) if status.state == TaskState::Completed => 0,
            (None, None) => EXIT_OWN_FAILURE,
        };
        Ending {
            state: status.state,
            code,
            how,
            usage: outcome.usage,
            restarts,
        }
    }
}

impl RestartPolicy {
    /// Whether a program that ended as `outcome` is started again, after
    /// `restarts` restarts. One that never started is not.
    fn again(&self, outcome: &Outcome, restarts: u32) -> bool {
        let Some(code) = outcome.exit_code else {
            return false;
        };
        match *self {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure(limit) => code != 0 && limit.is_none_or(|n| restarts < n),
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        }
    }
}

/// Waits `delay` before a restart, taking signals meanwhile (there is no
/// program to pass them to); true when one asked to stop.
fn wait_out(signals: &Signals, delay: Duration) -> bool {
    // At most RESTART_CAP: no overflow.
    let deadline = std::time::Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        use std::os::fd::AsFd;
        let Ok([signalled]) = sys::poll([signals.as_fd()], Some(left)) else {
            return false;
        };
        if !signalled {
            continue;
        }
        loop {
            match signals.next() {
                Ok(Some(Request::Terminate | Request::Interrupt)) => return true,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The task `options` describe, its secrets and configs put into `executor`;
/// relative paths are taken from `cwd`, which is the program's working
/// directory unless `--dir` names another.
fn build_task(
    options: &RunOptions,
    executor: &ProcessExecutor,
    cwd: &Path,
) -> Result<Task, String> {
    let mut spec = options.spec.clone();
    spec.dir = Some(
        spec.dir
            .map_or_else(|| cwd.to_path_buf(), |dir| cwd.join(dir)),
    );
    // The login variables of the user it runs as, after PATH and before --env,
    // which may override them.
    let login = login_environment(spec.user.as_deref()).map_err(|e| e.to_string())?;
    let login = login
        .into_iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    spec.env.splice(1..1, login);
    let read = |(name, path): &(String, PathBuf)| {
        std::fs::read(cwd.join(path))
            .map(|data| (name.clone(), data))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    for (name, data) in options
        .secrets
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?
    {
        spec.secrets.push(SecretReference {
            secret_id: name.clone(),
            secret_name: name.clone(),
            target: name.clone(),
            mode: None,
        });
        let secret = Secret {
            id: name,
            data,
            ..Default::default()
        };
        executor.secrets().add(vec![secret]);
    }
    for (name, data) in options
        .configs
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?
    {
        spec.configs.push(ConfigReference {
            config_id: name.clone(),
            config_name: name.clone(),
            target: name.clone(),
            mode: None,
        });
        let config = Config {
            id: name,
            data,
            ..Default::default()
        };
        executor.configs().add(vec![config]);
    }
    let limits = options.limits;
    let mut task = Task {
        // Unique among the runs alive: runs may share a state directory.
        id: options
            .name
            .clone()
            .unwrap_or_else(|| format!("run-{}", std::process::id())),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(spec)),
            resources: (limits != Limits::default()).then_some(ResourceRequirements {
                limits: Some(limits),
                reservations: None,
            }),
        },
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;
    Ok(task)
}
