//! One start of the program: the steps up to `RUNNING` on the command's own
//! thread, then, unless it ended at once, a task manager, followed until the task
//! ends while the signals the command receives are acted on.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use swarmexec::agent::{StatusReporter, TaskManager};
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{do_task, CancelToken, Controller, Error};

use crate::report::Report;
use crate::signals::{Request, Signals};
use crate::sys::{self, Wakeup};
use crate::terminal::Terminal;

/// How often a run looks at its program's health.
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// How long the command waits for a started program itself before it hands it to
/// a task manager (and takes signals): a program done by then needs neither.
const QUICK: Duration = Duration::from_millis(5);

/// What the run around an attempt shares with it.
pub(crate) struct Context<'a> {
    pub(crate) executor: &'a ProcessExecutor,
    pub(crate) signals: &'a Signals,
    pub(crate) report: &'a Report,
    /// The caller's terminal, where the program takes its foreground.
    pub(crate) terminal: Option<&'a Terminal>,
    /// `--pid-file`: where the program's pid goes while it runs.
    pub(crate) pid_file: Option<&'a Path>,
    /// Set once a stop was asked for (SIGTERM): the attempt stops its program,
    /// and no other is made.
    pub(crate) stopping: bool,
}

/// How an attempt ended.
pub(crate) struct Outcome {
    pub(crate) status: TaskStatus,
    /// The program's exit code, when it ran.
    pub(crate) exit_code: Option<i32>,
    /// How it ended, when it ran and ended.
    pub(crate) exit: Option<std::process::ExitStatus>,
    pub(crate) usage: Option<ResourceUsage>,
    /// How long the program ran.
    pub(crate) ran_for: Duration,
}

/// One attempt in progress.
pub(crate) struct Attempt<'a> {
    task: Task,
    controller: &'a ProcessController,
    started: Instant,
    /// A stop signal was passed on: once the program stops, so does the run.
    suspend_passed: bool,
    /// The pid file written, removed when the attempt ends.
    pid_written: Option<PathBuf>,
}

impl<'a> Attempt<'a> {
    pub(crate) fn new(task: Task, controller: &'a ProcessController) -> Self {
        Attempt {
            task,
            controller,
            started: Instant::now(),
            suspend_passed: false,
            pid_written: None,
        }
    }

    /// Runs the program until it ends.
    pub(crate) fn run(
        mut self,
        cx: &mut Context<'_>,
        controller: &Arc<ProcessController>,
    ) -> Outcome {
        let status = match self.start_here(cx) {
            Some(status) => status,
            None => self.hand_over(cx, controller),
        };
        if let Some(file) = self.pid_written.take() {
            let _ = std::fs::remove_file(file);
        }
        let ran = status.container.as_ref().filter(|c| c.pid != 0);
        Outcome {
            exit_code: ran.map(|c| c.exit_code),
            exit: self.controller.exit_status(),
            usage: ran.and(self.controller.usage()),
            ran_for: self.started.elapsed(),
            status,
        }
    }

    /// Takes the steps up to `RUNNING` on this thread, where none of them waits
    /// (no health check to wait for), then waits [`QUICK`] for the program to end:
    /// a short program then needs no task manager, and a longer one does not wait
    /// for the manager's thread to start. Signals stay pending meanwhile. Returns
    /// the final status if the task ended; a step that failed (to be retried, say)
    /// is left to the manager.
    fn start_here(&mut self, cx: &Context<'_>) -> Option<TaskStatus> {
        if self.checked() {
            return None;
        }
        let cancel = CancelToken::new();
        while self.task.status.state < TaskState::Running && self.step(&cancel, cx) {}
        let running = self.task.status.state == TaskState::Running;
        if running && self.controller.ended_by(Instant::now() + QUICK) {
            self.step(&cancel, cx);
        }
        self.task
            .status
            .state
            .is_terminal()
            .then(|| self.task.status.clone())
    }

    /// Takes one step on this thread, reporting a transition to a state short of
    /// the end; false when the step failed or ended the task.
    fn step(&mut self, cancel: &CancelToken, cx: &Context<'_>) -> bool {
        let (status, result) = do_task(cancel, &self.task, self.controller);
        let changed = status.state != self.task.status.state;
        self.task.status = status;
        let ended = self.task.status.state.is_terminal();
        if changed && !ended {
            cx.report.transition(&self.task.status);
        }
        self.write_pid(cx);
        result.is_ok() && !ended
    }

    /// Writes the program's pid to the pid file, once it has one.
    fn write_pid(&mut self, cx: &Context<'_>) {
        let Some(file) = cx.pid_file.filter(|_| self.pid_written.is_none()) else {
            return;
        };
        let Some(group) = self.program_group() else {
            return;
        };
        match std::fs::write(file, format!("{group}\n")) {
            Ok(()) => self.pid_written = Some(file.to_path_buf()),
            Err(e) => {
                eprintln!(
                    "swarmexec: cannot write the pid file {}: {e}",
                    file.display()
                );
                // Said once: not tried again.
                self.pid_written = Some(PathBuf::new());
            }
        }
    }

    /// Hands the task to a task manager, and follows it until it ends.
    fn hand_over(
        &mut self,
        cx: &mut Context<'_>,
        controller: &Arc<ProcessController>,
    ) -> TaskStatus {
        let (reports, statuses) = match reports() {
            Ok(channel) => channel,
            Err(e) => return self.own_failure(&format!("cannot follow the task: {e}")),
        };
        let manager = TaskManager::new(
            self.task.clone(),
            Arc::clone(controller) as Arc<dyn Controller>,
            reports,
        );
        let status = self.follow(cx, &manager, &statuses);
        manager.close();
        status
    }

    /// A final status for a failure of the command's own.
    fn own_failure(&self, message: &str) -> TaskStatus {
        TaskStatus {
            state: TaskState::Failed,
            err: message.to_owned(),
            ..self.task.status.clone()
        }
    }

    /// True where the program has a health check (looked at while it runs).
    fn checked(&self) -> bool {
        matches!(&self.task.spec.runtime, Some(Runtime::Process(p)) if p.healthcheck.is_some())
    }

    /// Reports the transitions and acts on signals until the task ends; returns
    /// its final status.
    fn follow(
        &mut self,
        cx: &mut Context<'_>,
        manager: &TaskManager,
        statuses: &Statuses,
    ) -> TaskStatus {
        // What `start_here` reported is not reported again.
        let mut last_state = Some(self.task.status.state);
        let mut last_health = None;
        if cx.stopping {
            self.stop(manager);
        }
        // Health is looked at a few times a second, where there is a check.
        let checked = self.checked();
        let timeout = checked.then_some(HEALTH_POLL);
        loop {
            let ready = sys::poll([statuses.wakeup.as_fd(), cx.signals.as_fd()], timeout);
            let [reported, signalled] = match ready {
                Ok(ready) => ready,
                Err(e) => return self.own_failure(&format!("cannot wait for the task: {e}")),
            };
            if signalled {
                self.take_signals(cx, manager);
            }
            if checked {
                self.report_health(cx, &mut last_health);
            }
            self.write_pid(cx);
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
                        return self.own_failure("the task manager stopped reporting")
                    }
                };
                // A health transition comes before the state it led to.
                self.report_health(cx, &mut last_health);
                if status.state.is_terminal() {
                    return status;
                }
                if last_state != Some(status.state) {
                    cx.report.transition(&status);
                }
                last_state = Some(status.state);
            }
        }
    }

    /// Asks the manager to stop the task gracefully.
    fn stop(&self, manager: &TaskManager) {
        let stop = Task {
            desired_state: TaskState::Shutdown,
            ..self.task.clone()
        };
        if let Err(e) = manager.update(&stop) {
            eprintln!("swarmexec: cannot stop the task: {e}");
        }
    }

    /// Acts on every pending signal (see the `signals` module for what each asks).
    fn take_signals(&mut self, cx: &mut Context<'_>, manager: &TaskManager) {
        loop {
            let request = match cx.signals.next() {
                Ok(Some(request)) => request,
                Ok(None) => return,
                Err(e) => return eprintln!("swarmexec: cannot take a signal: {e}"),
            };
            match request {
                Request::Terminate | Request::Interrupt if cx.stopping => self.kill(),
                Request::Terminate => {
                    cx.stopping = true;
                    self.stop(manager);
                }
                Request::Interrupt => self.pass(Signal::INT),
                Request::Suspend(signal) => {
                    self.suspend_passed = true;
                    self.pass(signal);
                }
                Request::Continue => self.resume(cx.terminal),
                Request::Child => {
                    cx.executor.reap_orphans();
                    self.follow_job(cx.terminal);
                }
                // Without a terminal of its own the program has no size to know.
                Request::Resize if cx.terminal.is_some() => self.pass(Signal::WINCH),
                Request::Resize | Request::Own => {}
                Request::Pass(signal) => self.pass(signal),
            }
        }
    }

    /// Passes `signal` on to the program (or its group, with `--signal-group`).
    fn pass(&self, signal: Signal) {
        // Before the program starts or after it ends there is no one to tell.
        let _ = self.controller.signal(signal);
    }

    fn kill(&self) {
        if let Err(e) = self.controller.terminate(&CancelToken::new()) {
            eprintln!("swarmexec: cannot kill the program: {e}");
        }
    }

    /// A child changed state: when the program stopped (from the terminal, or a
    /// stop signal passed on), the run stops too, and goes on when continued.
    fn follow_job(&mut self, terminal: Option<&Terminal>) {
        if !self.controller.is_stopped() || (terminal.is_none() && !self.suspend_passed) {
            return;
        }
        self.suspend_passed = false;
        if let Some(terminal) = terminal {
            terminal.take_back();
        }
        sys::stop_self();
        self.resume(terminal);
    }

    /// Continued: the program gets the terminal back, and is continued.
    fn resume(&self, terminal: Option<&Terminal>) {
        if let (Some(terminal), Some(group)) = (terminal, self.program_group()) {
            terminal.give(group);
        }
        let _ = self.controller.signal_group(Signal::CONT);
    }

    /// The program's process group (its pid, as it leads it), while it runs.
    fn program_group(&self) -> Option<libc::pid_t> {
        if self.controller.ended_by(Instant::now()) {
            return None;
        }
        let statuser = self.controller.as_container_statuser()?;
        let status = statuser.container_status(&CancelToken::new()).ok()??;
        Some(status.pid).filter(|pid| *pid > 0)
    }

    /// Reports the program's health when it changed since `last`.
    fn report_health(&self, cx: &Context<'_>, last: &mut Option<HealthState>) {
        let Some(health) = self.controller.health() else {
            return;
        };
        if *last != Some(health.state) {
            cx.report.health(&health);
        }
        *last = Some(health.state);
    }
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
