//! `swarmexec run`: one task on a process executor, started by the command's own
//! thread and then driven by a task manager.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use swarmexec::agent::{StatusReporter, TaskManager};
use swarmexec::api::*;
use swarmexec::process::{
    default_state_dir, login_environment, ProcessController, ProcessExecutor, StartFailure,
};
use swarmexec::{do_task, CancelToken, ConfigsProvider, Controller, Error, SecretsProvider};

use crate::args::RunOptions;
use crate::signals::{self, Request, Signals};
use crate::sys::{self, Wakeup};
use crate::{fail, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_OWN_FAILURE};

/// How often a run looks at its program's health.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// How long the command waits for a started program itself before it hands it to
/// a task manager (and takes signals): a program done by then needs neither.
const QUICK: Duration = Duration::from_millis(5);

pub(crate) fn run(options: RunOptions) -> ExitCode {
    // Before any thread allocates.
    sys::share_one_malloc_arena();
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
    let state_dir = options.state_dir.clone().unwrap_or_else(default_state_dir);
    let executor = match ProcessExecutor::new(&state_dir) {
        Ok(executor) => executor,
        Err(e) => return fail(&e),
    };
    let task = match build_task(&options, &executor) {
        Ok(task) => task,
        Err(e) => return fail(&e),
    };
    let controller = match executor.process_controller(&task) {
        Ok(controller) => Arc::new(controller),
        Err(e) => return fail(&e),
    };
    let mut run = Run {
        task,
        controller: &controller,
        quiet: options.quiet,
        started: Instant::now(),
    };
    let code = match run.start_here() {
        Some(ended) => ended,
        None => run.hand_over(&controller, &signals),
    };
    // Ended: this deletes the task's files (secrets first) and its cgroup.
    if let Err(e) = controller.remove(&CancelToken::new()) {
        eprintln!("swarmexec: removing the task: {e}");
    }
    let _ = controller.close();
    code
}

/// The task `options` describe, its secrets and configs put into `executor`.
fn build_task(options: &RunOptions, executor: &ProcessExecutor) -> Result<Task, String> {
    let mut spec = options.spec.clone();
    // The login variables of the user it runs as, before --env, which may override.
    let login = login_environment(spec.user.as_deref()).map_err(|e| e.to_string())?;
    let login = login.into_iter().map(|(k, v)| format!("{k}={v}"));
    spec.env.splice(1..1, login);
    let read = |(name, path): &(String, PathBuf)| {
        std::fs::read(path)
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
        id: format!("run-{}", std::process::id()),
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

/// One run in progress.
struct Run<'a> {
    task: Task,
    controller: &'a ProcessController,
    quiet: bool,
    started: Instant,
}

impl Run<'_> {
    /// Takes the steps up to `RUNNING` on this thread, where none of them waits
    /// (no health check to wait for), then waits [`QUICK`] for the program to end:
    /// a short program then needs no task manager, and a longer one does not wait
    /// for the manager's thread to start. Signals stay pending meanwhile. Returns
    /// the exit code if the task ended; a step that failed (to be retried, say) is
    /// left to the manager.
    fn start_here(&mut self) -> Option<ExitCode> {
        if self.checked() {
            return None;
        }
        let cancel = CancelToken::new();
        while self.task.status.state < TaskState::Running && self.step(&cancel) {}
        let running = self.task.status.state == TaskState::Running;
        if running && self.controller.ended_by(Instant::now() + QUICK) {
            self.step(&cancel);
        }
        let ended = self.task.status.state.is_terminal();
        ended.then(|| self.finish(&self.task.status))
    }

    /// Takes one step on this thread, printing a transition to a state short of
    /// the end (the final line is [`finish`](Run::finish)'s); false when the step
    /// failed or ended the task.
    fn step(&mut self, cancel: &CancelToken) -> bool {
        let (status, result) = do_task(cancel, &self.task, self.controller);
        let changed = status.state != self.task.status.state;
        self.task.status = status;
        let ended = self.task.status.state.is_terminal();
        if changed && !ended && !self.quiet {
            eprintln!("{}", self.line(&self.task.status, None));
        }
        result.is_ok() && !ended
    }

    /// Hands the task to a task manager, and follows it until it ends.
    fn hand_over(&self, controller: &Arc<ProcessController>, signals: &Signals) -> ExitCode {
        let (reports, statuses) = match reports() {
            Ok(channel) => channel,
            Err(e) => return fail(&format!("cannot follow the task: {e}")),
        };
        let manager = TaskManager::new(
            self.task.clone(),
            Arc::clone(controller) as Arc<dyn Controller>,
            reports,
        );
        let code = self.follow(&manager, &statuses, signals);
        manager.close();
        code
    }

    /// True where the program has a health check (looked at while it runs).
    fn checked(&self) -> bool {
        matches!(&self.task.spec.runtime, Some(Runtime::Process(p)) if p.healthcheck.is_some())
    }

    /// Prints the transitions and acts on signals until the task ends; returns the
    /// command's exit code.
    fn follow(&self, manager: &TaskManager, statuses: &Statuses, signals: &Signals) -> ExitCode {
        // What `start_here` printed is not printed again.
        let mut last_state = Some(self.task.status.state);
        let mut last_health = None;
        let mut stopping = false;
        // Health is looked at a few times a second, where there is a check.
        let checked = self.checked();
        let timeout = checked.then_some(HEALTH_POLL);
        loop {
            let ready = sys::poll([statuses.wakeup.as_fd(), signals.as_fd()], timeout);
            let [reported, signalled] = match ready {
                Ok(ready) => ready,
                Err(e) => return fail(&format!("cannot wait for the task: {e}")),
            };
            if signalled {
                self.take_signals(manager, signals, &mut stopping);
            }
            if checked {
                self.report_health(&mut last_health);
            }
            if !reported {
                continue;
            }
            // Cleared before the channel is read: a report sent after the read wakes
            // the next poll.
            statuses.wakeup.clear();
            loop {
                let status = match statuses.reports.try_recv() {
                    Ok((_, status)) => status,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        return fail(&"the task manager stopped reporting")
                    }
                };
                // A health transition comes before the state it led to.
                self.report_health(&mut last_health);
                if status.state.is_terminal() {
                    return self.finish(&status);
                }
                if last_state != Some(status.state) && !self.quiet {
                    eprintln!("{}", self.line(&status, None));
                }
                last_state = Some(status.state);
            }
        }
    }

    /// Acts on every pending signal: the first stop request stops the task
    /// gracefully, the next kills it; the others go to the program.
    fn take_signals(&self, manager: &TaskManager, signals: &Signals, stopping: &mut bool) {
        loop {
            match signals.next() {
                Ok(Some(Request::Stop)) if *stopping => {
                    // A second one: no more grace.
                    if let Err(e) = self.controller.terminate(&CancelToken::new()) {
                        eprintln!("swarmexec: cannot kill the program: {e}");
                    }
                }
                Ok(Some(Request::Stop)) => {
                    *stopping = true;
                    let stop = Task {
                        desired_state: TaskState::Shutdown,
                        ..self.task.clone()
                    };
                    if let Err(e) = manager.update(&stop) {
                        eprintln!("swarmexec: cannot stop the task: {e}");
                    }
                }
                Ok(Some(Request::Forward(signal))) => {
                    // Before the program starts or after it ends there is no one to tell.
                    let _ = self.controller.signal(signal);
                }
                Ok(None) => return,
                Err(e) => {
                    eprintln!("swarmexec: cannot take a signal: {e}");
                    return;
                }
            }
        }
    }

    /// The final line (always, unless quiet; then only swarmexec's own errors) and
    /// the exit code.
    fn finish(&self, status: &TaskStatus) -> ExitCode {
        let ran = status.container.as_ref().is_some_and(|c| c.pid != 0);
        let code = match self.controller.start_failure() {
            Some(StartFailure::NotFound) => EXIT_NOT_FOUND,
            Some(StartFailure::CannotExecute) => EXIT_CANNOT_EXECUTE,
            None if ran => {
                let exit = status.container.as_ref().map_or(0, |c| c.exit_code);
                u8::try_from(exit).unwrap_or(EXIT_OWN_FAILURE)
            }
            None if status.state == TaskState::Completed => 0,
            None => EXIT_OWN_FAILURE,
        };
        if !self.quiet {
            let details = ran.then(|| (code, self.controller.usage()));
            eprintln!("{}", self.line(status, details));
        } else if !ran && !status.err.is_empty() {
            eprintln!("swarmexec: {}", status.err);
        }
        ExitCode::from(code)
    }

    /// Prints the program's health when it changed since `last`.
    fn report_health(&self, last: &mut Option<HealthState>) {
        let Some(health) = self.controller.health() else {
            return;
        };
        if *last != Some(health.state) && health.state != HealthState::Starting && !self.quiet {
            eprintln!("{}", self.health_line(&health));
        }
        *last = Some(health.state);
    }

    /// `[   1.004s] HEALTHY   health check passed`, like a transition.
    fn health_line(&self, health: &Health) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let what = match health.state {
            HealthState::Healthy => "health check passed".to_owned(),
            HealthState::Unhealthy => {
                format!("{} health checks in a row failed", health.failing_streak)
            }
            HealthState::Starting => "health check starting".to_owned(),
        };
        let state = health.state.to_string().to_uppercase();
        format!("[{elapsed:8.3}s] {state:<9} {what}")
    }

    /// `[   0.012s] RUNNING   started`; a final line adds the exit code and what
    /// the program used, and any error.
    fn line(&self, status: &TaskStatus, ended: Option<(u8, Option<ResourceUsage>)>) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut line = format!("[{elapsed:8.3}s] {:<9} {}", status.state, status.message);
        let mut details = Vec::new();
        if let Some((code, usage)) = ended {
            details.push(format!("exit {code}"));
            details.extend(usage.as_ref().and_then(describe_usage));
        }
        if !status.err.is_empty() {
            details.push(format!("error: {}", status.err));
        }
        if !details.is_empty() {
            line.push_str(&format!(" ({})", details.join("; ")));
        }
        line
    }
}

/// `1.2 s CPU, 35 MiB peak`, with what is known.
fn describe_usage(usage: &ResourceUsage) -> Option<String> {
    let cpu = usage.cpu.map(|cpu| match cpu {
        cpu if cpu < Duration::from_secs(1) => format!("{} ms CPU", cpu.as_millis()),
        cpu => format!("{:.1} s CPU", cpu.as_secs_f64()),
    });
    let peak = usage.memory_peak_bytes.map(|bytes| {
        let mib = bytes as f64 / (1024.0 * 1024.0);
        if mib < 10.0 {
            format!("{mib:.1} MiB peak")
        } else {
            format!("{mib:.0} MiB peak")
        }
    });
    let parts: Vec<String> = cpu.into_iter().chain(peak).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The task manager's reports, and the wakeup that tells the thread following the
/// task that one came.
struct Statuses {
    reports: Receiver<(String, TaskStatus)>,
    wakeup: Arc<Wakeup>,
}

/// Sends the task manager's reports and wakes the thread following the task, also
/// when the manager lets go of it (so that it learns of a manager that stopped).
struct Reporter {
    /// Taken when the reporter goes, before the last wake-up.
    reports: Option<Sender<(String, TaskStatus)>>,
    wakeup: Arc<Wakeup>,
}

fn reports() -> std::io::Result<(Reporter, Statuses)> {
    let wakeup = Arc::new(Wakeup::new()?);
    let (tx, rx) = unbounded();
    let reporter = Reporter {
        reports: Some(tx),
        wakeup: Arc::clone(&wakeup),
    };
    Ok((
        reporter,
        Statuses {
            reports: rx,
            wakeup,
        },
    ))
}

impl StatusReporter for Reporter {
    fn update_task_status(&self, task_id: &str, status: &TaskStatus) -> Result<(), Error> {
        let reports = self.reports.as_ref().ok_or(Error::Canceled)?;
        reports.update_task_status(task_id, status)?;
        self.wakeup.wake();
        Ok(())
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // Disconnected first, so that the woken thread finds the channel closed.
        self.reports.take();
        self.wakeup.wake();
    }
}
