//! Health checks: probes run on a schedule, and the task's health follows them.
//!
//! No thread is spent per task or per probe. The crate's timer says when each
//! probe is due, and does nothing else: the executor's chores thread prepares it
//! (its pipes, its plan) and hears how it went; the reaper thread spawns it (in
//! the task's cgroup, as the task's user, like the task itself), reads its output
//! and reaps it; the timer also kills a probe that runs past its timeout. A result updates
//! the task's [`Health`] and schedules the next probe: every `start_interval` until
//! one passes, then every `interval`; failures during `start_period` do not count,
//! and `retries` in a row make the task unhealthy, which ends the probing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::chores::Chores;
use super::controller::Environment;
use super::supervisor::{Observer, Pipes, Process};
use super::sys::{self, SpawnError, SpawnPlan};
use crate::api::{Health, HealthProbe, HealthState};
use crate::timer::{self, Due};
use crate::Error;

/// How many probe results a task's health keeps (as Docker does).
const LOG_LENGTH: usize = 5;

/// How much of a probe's output is kept.
const OUTPUT_KEPT: usize = 4096;

/// A validated health check, ready to probe.
#[derive(Debug)]
pub(crate) struct HealthPlan {
    /// The probe's executable, resolved at `prepare`.
    pub(crate) program: PathBuf,
    pub(crate) argv: Vec<std::ffi::OsString>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) start_period: Duration,
    pub(crate) start_interval: Duration,
    pub(crate) retries: u32,
}

/// Makes the spawn plan of one probe, as the task's own (user, directory,
/// environment, cgroup); the stdio given.
pub(crate) type ProbePlanner =
    dyn Fn([std::os::fd::OwnedFd; 3]) -> Result<SpawnPlan, Error> + Send + Sync;

/// One task's health, probed on a schedule while the task runs.
pub(crate) struct HealthMonitor {
    plan: Arc<HealthPlan>,
    /// The task's program: probing stops once it has ended.
    task: Weak<Process>,
    planner: Box<ProbePlanner>,
    /// The executor's environment, whose reaper spawns the probes.
    env: Weak<Environment>,
    /// Where probes are prepared and their results recorded.
    chores: Chores,
    started: Instant,
    state: Mutex<Health>,
    stopped: AtomicBool,
    /// Held while a probe is being started, the executor held for it: `stop`
    /// waits for it, so that a stopped monitor holds nothing of the executor
    /// (whose last handle, dropped by its host, must be the one that takes it down).
    starting: Mutex<()>,
    /// Holds a message whenever the health changed since last looked at.
    changed: (Sender<()>, Receiver<()>),
    me: Weak<HealthMonitor>,
}

impl HealthMonitor {
    /// Starts probing now (the first probe runs at once).
    pub(crate) fn start(
        plan: Arc<HealthPlan>,
        task: &Arc<Process>,
        planner: Box<ProbePlanner>,
        env: &Arc<Environment>,
    ) -> Arc<HealthMonitor> {
        let monitor = Arc::new_cyclic(|me| HealthMonitor {
            plan,
            task: Arc::downgrade(task),
            planner,
            env: Arc::downgrade(env),
            chores: env.chores.clone(),
            started: Instant::now(),
            state: Mutex::new(Health::default()),
            stopped: AtomicBool::new(false),
            starting: Mutex::new(()),
            changed: crossbeam_channel::bounded(1),
            me: me.clone(),
        });
        monitor.probe();
        monitor
    }

    /// The health now.
    pub(crate) fn health(&self) -> Health {
        self.state.lock().clone()
    }

    /// Ready whenever the health may have changed.
    pub(crate) fn changed(&self) -> &Receiver<()> {
        &self.changed.1
    }

    /// Stops probing (a probe under way finishes, its result is dropped).
    /// Stops probing; returns once no probe is being started.
    pub(crate) fn stop(&self) {
        self.give_up();
        drop(self.starting.lock());
    }

    /// Stops probing, from the monitor's own calls (which may be inside a probe
    /// being started).
    fn give_up(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// The error of an unhealthy task: what failed, and the end of the last
    /// probe's output.
    pub(crate) fn unhealthy_error(&self) -> Error {
        let health = self.health();
        let last = health.log.last();
        let output = last.map_or(String::new(), |p| p.output.trim().to_owned());
        let code = last.map_or(-1, |p| p.exit_code);
        Error::other(format!(
            "unhealthy: {} health checks in a row failed (last exit code {code}; output: {output:?})",
            health.failing_streak
        ))
    }

    /// Spawns a probe, through the reaper.
    fn probe(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let ended = self.task.upgrade().is_none_or(|task| task.exit().is_some());
        if ended {
            self.give_up();
        }
        let _starting = self.starting.lock();
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(env) = self.env.upgrade() else {
            return;
        };
        let probe = Arc::new(Probe {
            monitor: me,
            start: Mutex::new(SystemTime::now()),
            timer: Mutex::new(None),
            timed_out: AtomicBool::new(false),
        });
        match probe_stdio().and_then(|(stdio, pipes)| Ok(((self.planner)(stdio)?, pipes))) {
            Ok((plan, pipes)) => env
                .supervisor
                .spawn_observed(plan, pipes, OUTPUT_KEPT, probe),
            Err(e) => probe.finish(-1, e.to_string()),
        }
    }

    /// Records a probe's result and schedules the next one.
    fn record(&self, result: HealthProbe) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        let passed = result.exit_code == 0;
        let next = {
            let mut health = self.state.lock();
            let before = health.state;
            health.log.push(result);
            if health.log.len() > LOG_LENGTH {
                health.log.remove(0);
            }
            let in_start_period = self.started.elapsed() < self.plan.start_period;
            if passed {
                health.failing_streak = 0;
                health.state = HealthState::Healthy;
            } else if !in_start_period || health.state == HealthState::Healthy {
                health.failing_streak += 1;
                if health.failing_streak >= self.plan.retries {
                    health.state = HealthState::Unhealthy;
                }
            }
            if health.state != before {
                log::info!(target: "swarmexec", "health: {before} -> {}", health.state);
            }
            match health.state {
                HealthState::Unhealthy => None,
                HealthState::Healthy => Some(self.plan.interval),
                HealthState::Starting => Some(self.plan.start_interval),
            }
        };
        let _ = self.changed.0.try_send(());
        match next {
            Some(delay) => {
                let due: Weak<dyn Due> = self.me.clone();
                timer::schedule(crate::time::after(delay), due);
            }
            // Unhealthy is the end: the task fails and is stopped.
            None => self.give_up(),
        }
    }
}

impl Due for HealthMonitor {
    /// Hands the probe to the chores thread: the timer does no I/O.
    fn fire(&self) {
        if let Some(me) = self.me.upgrade() {
            self.chores.run(move || me.probe());
        }
    }

    fn is_stale(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for HealthMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthMonitor")
            .field("health", &*self.state.lock())
            .finish_non_exhaustive()
    }
}

/// A probe's stdin (`/dev/null`) and its output, into one pipe read by the reaper.
fn probe_stdio() -> Result<([std::os::fd::OwnedFd; 3], Pipes), Error> {
    let fail = |e: std::io::Error| Error::other(format!("cannot set up a health probe: {e}"));
    let stdin = std::fs::File::open("/dev/null").map_err(fail)?;
    let (read, write) = sys::pipe().map_err(fail)?;
    let stderr = write.try_clone().map_err(fail)?;
    let pipes = Pipes {
        stdout: Some(read.into()),
        stderr: None,
    };
    Ok(([stdin.into(), write, stderr], pipes))
}

/// One probe in progress.
struct Probe {
    monitor: Arc<HealthMonitor>,
    /// When it was due; when it started, once it has.
    start: Mutex<SystemTime>,
    /// Kills the probe at its timeout; held here so that its timer entry lives.
    timer: Mutex<Option<Arc<ProbeTimeout>>>,
    timed_out: AtomicBool,
}

impl Probe {
    fn finish(&self, exit_code: i32, output: String) {
        let output = if self.timed_out.load(Ordering::Acquire) {
            format!(
                "health check timed out after {:?}; {output}",
                self.monitor.plan.timeout
            )
        } else {
            output
        };
        let exit_code = match (exit_code, self.timed_out.load(Ordering::Acquire)) {
            (0, true) => -1,
            (code, _) => code,
        };
        self.monitor.record(HealthProbe {
            exit_code,
            start: *self.start.lock(),
            end: SystemTime::now(),
            output,
        });
    }
}

impl Observer for Probe {
    fn spawned(&self, process: &Arc<Process>) {
        *self.start.lock() = SystemTime::now();
        let timeout = Arc::new(ProbeTimeout {
            process: Arc::downgrade(process),
            fired: AtomicBool::new(false),
        });
        let due: Weak<dyn Due> = Arc::downgrade(&timeout) as Weak<dyn Due>;
        timer::schedule(crate::time::after(self.monitor.plan.timeout), due);
        *self.timer.lock() = Some(timeout);
    }

    fn failed(&self, error: SpawnError) {
        self.finish(
            -1,
            format!("cannot start the health check: {}", error.error),
        );
    }

    fn ended(&self, process: &Process) {
        if let Some(timer) = self.timer.lock().take() {
            self.timed_out
                .store(timer.fired.load(Ordering::Acquire), Ordering::Release);
        }
        let code = process
            .exit()
            .and_then(|exit| exit.status)
            .map_or(-1, super::controller::exit_code);
        let output = String::from_utf8_lossy(&process.logs.tail(OUTPUT_KEPT)).into_owned();
        self.finish(code, output);
    }
}

/// Kills a probe that runs past its timeout (its whole group).
struct ProbeTimeout {
    process: Weak<Process>,
    fired: AtomicBool,
}

impl Due for ProbeTimeout {
    fn fire(&self) {
        if let Some(process) = self.process.upgrade() {
            if process.exit().is_none() {
                self.fired.store(true, Ordering::Release);
                let _ = process.signal_group(libc::SIGKILL);
            }
        }
    }
}
