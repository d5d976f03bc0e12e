//! Supervised processes and the one thread that watches them all.
//!
//! # Never signalling a recycled pid
//!
//! A pid is only a name, and the kernel gives it to a new process as soon as the old
//! one is reaped. A signal sent by pid after that point can hit an unrelated process.
//! Every process here leads its own process group (its pgid is its pid), and the
//! group id is reserved for as long as the leader is an unreaped child of ours, even a
//! zombie. So [`Process`] keeps one lock over "is it reaped?": signals are sent only
//! under that lock and only while the leader is unreaped, and the reaper takes the
//! same lock to reap. No signal can overtake the reap, and none comes after it.
//!
//! When the leader exits, the reaper kills what is left of its group *before*
//! reaping it (while the group id is still reserved), as a container engine does when
//! a container's first process exits: no stray grandchildren outlive their task. A
//! grandchild that left the group (`setsid`) is beyond reach; only cgroups could
//! follow it.
//!
//! # One thread
//!
//! The reaper (`swarmexec-reap`) polls, for every process, a pidfd (readable once
//! the process has exited) and the read ends of its stdout and stderr pipes, which it
//! drains into the process's bounded [`LogBuffer`] so that a program never blocks on a
//! full pipe. Waiters wake through a channel that the reaper disconnects. On kernels
//! without pidfds (before 5.3) exits are found by asking every few milliseconds, with
//! the same locking. The library installs no SIGCHLD handler and only ever waits for
//! the pids it spawned, so a host program's own children are left to it.
//!
//! The reaper only spawns, reaps, drains pipes and wakes waiters: anything that
//! may block (removing a cgroup, freezing one to kill it) and every observer's
//! callback is handed to the executor's chores thread (see the `chores` module), so
//! that a slow cgroup never delays a spawn or a wake-up. Commands reach it through
//! a channel and an eventfd, whose writes never block.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

use super::cgroup::TaskCgroup;
use super::chores::Chores;
use super::logs::LogBuffer;
use super::orphans::Adopter;
use super::sys::{self, CgroupJoin, EventFd, SpawnError, SpawnPlan};
use crate::api::{LogStream, ResourceUsage};
use crate::{CancelToken, Error};

/// How often exits are looked for on kernels without pidfds.
const EXIT_POLL_MS: libc::c_int = 5;

/// How many reads of each pipe collect the output a program left when it exited.
const DRAIN_READS: usize = 64;

/// How long the reaper waits for the rest of a task's cgroup to die after its first
/// process exited, before it gives up on it (and logs it).
const EMPTYING_LIMIT: Duration = Duration::from_secs(10);

/// How often output held back for a lagging follower is looked at again.
const HELD_BACK_POLL_MS: libc::c_int = 2;

/// The most output taken from a pipe in one read.
const OUTPUT_READ: usize = 64 * 1024;

/// How often a cgroup being emptied is looked at.
const EMPTYING_POLL_MS: libc::c_int = 1;

/// How a supervised process ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Exit {
    /// `None` when something else reaped it (a host calling `waitpid(-1)`).
    pub(crate) status: Option<ExitStatus>,
    /// What the task used in all.
    pub(crate) usage: ResourceUsage,
    /// The kernel killed a process of the task for exceeding its memory limit.
    pub(crate) out_of_memory: bool,
}

/// One spawned program, shared by its controller and the reaper.
pub(crate) struct Process {
    pid: libc::pid_t,
    reaped: Mutex<Option<Exit>>,
    /// Dropped once the process is reaped, which wakes every receiver.
    exited_tx: Mutex<Option<Sender<()>>>,
    exited_rx: Receiver<()>,
    pub(crate) logs: LogBuffer,
    /// The task's cgroups, where the host has them: everything the program starts
    /// is in there, even what leaves its process group.
    cgroup: Option<TaskCgroup>,
    /// Told when the process ends, for one started without waiting.
    observer: Option<Arc<dyn Observer>>,
    /// Set once the task's cgroups are removed, or being removed.
    cgroup_removed: AtomicBool,
    /// Where the cgroups go if nobody removed them by the time the process is let
    /// go of (which may be on the reaper).
    chores: Chores,
}

impl Process {
    fn new(
        pid: libc::pid_t,
        log_capacity: usize,
        cgroup: Option<TaskCgroup>,
        chores: Chores,
    ) -> Self {
        let (exited_tx, exited_rx) = crossbeam_channel::bounded(0);
        Process {
            pid,
            reaped: Mutex::new(None),
            exited_tx: Mutex::new(Some(exited_tx)),
            exited_rx,
            logs: LogBuffer::new(log_capacity),
            cgroup,
            observer: None,
            cgroup_removed: AtomicBool::new(false),
            chores,
        }
    }

    /// Removes the task's cgroups on this thread, once it has ended (and unless
    /// that was done): for its controller, when it is removed or closed.
    pub(crate) fn remove_cgroup(&self) {
        if self.exit().is_none() {
            return;
        }
        if let Some(cgroup) = &self.cgroup {
            if !self.cgroup_removed.swap(true, Ordering::AcqRel) {
                cgroup.remove();
            }
        }
    }

    /// Becomes ready (disconnected) once the process has been reaped.
    pub(crate) fn exited(&self) -> &Receiver<()> {
        &self.exited_rx
    }

    /// The task's cgroups, open for another program (a health probe) to join;
    /// none without cgroups.
    pub(crate) fn cgroup_join(&self) -> Result<CgroupJoin, Error> {
        self.cgroup
            .as_ref()
            .map_or(Ok(CgroupJoin::default()), TaskCgroup::join)
    }

    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// How the process ended, once it has.
    pub(crate) fn exit(&self) -> Option<Exit> {
        *self.reaped.lock()
    }

    /// What the task has used: in all once it has ended, so far before (`None`
    /// without a cgroup to read from).
    pub(crate) fn usage(&self) -> Option<ResourceUsage> {
        match self.exit() {
            Some(exit) => Some(exit.usage),
            None => self.cgroup.as_ref().map(TaskCgroup::usage),
        }
    }

    /// Sends `signal` to the process's whole group, unless it has been reaped
    /// (then there is nothing left to signal, and its pid may belong to another).
    pub(crate) fn signal_group(&self, signal: libc::c_int) -> io::Result<()> {
        let reaped = self.reaped.lock();
        if reaped.is_some() {
            return Ok(());
        }
        kill_group(self.pid, signal)
    }

    /// Sends `signal` to the process alone, unless it has been reaped (see
    /// [`signal_group`](Process::signal_group)).
    pub(crate) fn signal_process(&self, signal: libc::c_int) -> io::Result<()> {
        let reaped = self.reaped.lock();
        if reaped.is_some() {
            return Ok(());
        }
        match sys::kill_child(self.pid, signal) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    /// True while the process is stopped (job control), as procfs says.
    pub(crate) fn is_stopped(&self) -> bool {
        let reaped = self.reaped.lock();
        reaped.is_none() && sys::is_stopped(self.pid)
    }

    /// Kills every process of the task: its whole cgroup where it has one (so
    /// that descendants in other sessions or groups go too), and its group.
    pub(crate) fn kill_all(&self) -> io::Result<()> {
        let reaped = self.reaped.lock();
        if reaped.is_some() {
            return Ok(());
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill()?;
        }
        kill_group(self.pid, libc::SIGKILL)
    }

    /// Once the leader has exited: kills what is left of the task, at once where
    /// that is one write, else as a chore. Returns true when nothing is left, so
    /// that it can be reaped.
    fn kill_rest(self: &Arc<Self>, chores: &Chores) -> bool {
        // Often nothing is left: the group's members are in the cgroup too.
        if self.cgroup.as_ref().is_some_and(TaskCgroup::is_empty) {
            return true;
        }
        if self.cgroup.as_ref().is_some_and(|c| !c.kills_at_once()) {
            let process = Arc::clone(self);
            chores.run(move || process.kill_logged());
            return false;
        }
        self.kill_logged();
        self.is_empty()
    }

    fn kill_logged(&self) {
        if let Err(e) = self.kill_all() {
            log::warn!(target: "swarmexec", "cannot kill the rest of task process {}: {e}", self.pid);
        }
    }

    /// True once nothing of the task is left but the leader's zombie.
    fn is_empty(&self) -> bool {
        self.cgroup.as_ref().is_none_or(TaskCgroup::is_empty)
    }

    /// Reaps the leader, after reading what the task used; called once it has
    /// exited and the rest is gone. Its observer is told on the chores thread;
    /// its cgroups are removed by [`remove_cgroup`](Process::remove_cgroup), or
    /// as a chore once the process is let go of. Returns false when it was reaped
    /// already.
    fn reap(self: &Arc<Self>, chores: &Chores) -> bool {
        let mut reaped = self.reaped.lock();
        if reaped.is_some() {
            return false;
        }
        // Still under the lock and before the reap: the group id is still ours.
        if let Err(e) = kill_group(self.pid, libc::SIGKILL) {
            log::warn!(target: "swarmexec", "cannot kill the rest of process group {}: {e}", self.pid);
        }
        let (mut usage, out_of_memory) = match &self.cgroup {
            Some(cgroup) => (cgroup.totals(), cgroup.oom_kills() > 0),
            None => (ResourceUsage::default(), false),
        };
        let status = match sys::reap(self.pid) {
            Ok((status, rusage)) => {
                // What the kernel counted for the leader (and the children it
                // waited for) fills what no cgroup told.
                usage.cpu = usage.cpu.or(Some(rusage.cpu));
                usage.memory_peak_bytes = usage.memory_peak_bytes.or(Some(rusage.max_rss_bytes));
                Some(status)
            }
            Err(e) => {
                log::warn!(
                    target: "swarmexec",
                    "exit status of process {} lost (reaped outside swarmexec): {e}",
                    self.pid
                );
                None
            }
        };
        usage.processes = Some(0);
        *reaped = Some(Exit {
            status,
            usage,
            out_of_memory,
        });
        drop(reaped);
        self.exited_tx.lock().take();
        if let Some(observer) = &self.observer {
            let (observer, process) = (Arc::clone(observer), Arc::clone(self));
            chores.run(move || observer.ended(&process));
        }
        true
    }

    /// Blocks until the process has been reaped, `cancel` is done (`Err`), or
    /// `timeout` passes (`Ok(None)`).
    pub(crate) fn wait_exit(
        &self,
        cancel: &CancelToken,
        timeout: Option<Duration>,
    ) -> Result<Option<Exit>, Error> {
        if let Some(exit) = self.exit() {
            return Ok(Some(exit));
        }
        let timer = timeout.map_or_else(crossbeam_channel::never, |timeout| {
            crossbeam_channel::at(crate::time::after(timeout))
        });
        select! {
            recv(self.exited_rx) -> _ => Ok(self.exit()),
            recv(cancel.done()) -> _ => Err(cancel.err().unwrap_or(Error::Canceled)),
            recv(cancel.deadline_passed()) -> _ => Err(Error::DeadlineExceeded),
            recv(timer) -> _ => Ok(self.exit()),
        }
    }
}

impl Drop for Process {
    /// Cgroups nobody removed go as a chore: this may be the reaper.
    fn drop(&mut self) {
        if let Some(cgroup) = &self.cgroup {
            if !self.cgroup_removed.load(Ordering::Acquire) {
                self.chores.run(cgroup.removal());
            }
        }
    }
}

/// The shorter of a poll timeout (milliseconds, -1 for none) and `limit`.
fn shorter(timeout: libc::c_int, limit: Duration) -> libc::c_int {
    let limit = limit.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    if timeout < 0 {
        limit
    } else {
        timeout.min(limit)
    }
}

/// Signals a group whose leader is our unreaped child (see the module docs); a
/// group of which only the leader's zombie is left is no error.
fn kill_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    match sys::kill_group(pgid, signal) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

/// The pipes the reaper reads for a process: those of the streams it captures.
pub(crate) struct Pipes {
    pub(crate) stdout: Option<File>,
    pub(crate) stderr: Option<File>,
}

enum Command {
    /// Spawn a program, from the reaper thread (see [`Supervisor::spawn`]), and
    /// watch it.
    Spawn(Box<SpawnRequest>),
    /// Spawn a program, without waiting, once the time given has come (see
    /// [`Supervisor::spawn_at`]).
    SpawnAt(Instant, Box<SpawnRequest>),
    /// Stop reading the process's pipes: held open by a grandchild that escaped the
    /// group, they could otherwise stay with the reaper for good.
    Forget(Arc<Process>),
    /// Reap adopted orphans now (for an adopting executor whose host heard a
    /// SIGCHLD).
    ReapOrphans,
}

struct SpawnRequest {
    plan: SpawnPlan,
    pipes: Pipes,
    log_capacity: usize,
    cgroup: Option<TaskCgroup>,
    reply: Reply,
}

/// Who hears how a spawn went.
enum Reply {
    /// A caller waiting for the process, until its token is done: then the spawn
    /// is dropped, or the process killed.
    Waiting(Sender<Result<Arc<Process>, SpawnError>>, CancelToken),
    /// A caller that did not wait (a health probe): told on the chores thread.
    Observer(Arc<dyn Observer>),
}

/// Hears, on the executor's chores thread, how a process started without
/// waiting for it fares.
pub(crate) trait Observer: Send + Sync {
    /// It started.
    fn spawned(&self, process: &Arc<Process>);
    /// It could not start.
    fn failed(&self, error: SpawnError);
    /// It ended and was reaped, its output read.
    fn ended(&self, process: &Process);
}

/// The reaper thread of one executor, started by its first use; stops when
/// dropped.
pub(crate) struct Supervisor {
    exit_watch: ExitWatch,
    chores: Chores,
    /// Whether the reaper adopts orphans (see the `orphans` module).
    adopting: bool,
    reaper: Mutex<Option<ReaperHandle>>,
}

struct ReaperHandle {
    commands: Sender<Command>,
    waker: Arc<EventFd>,
    thread: JoinHandle<()>,
}

impl Supervisor {
    /// A supervisor handing its slow work to `chores`.
    pub(crate) fn new(chores: Chores) -> Self {
        Supervisor::with_exit_watch(ExitWatch::Pidfd, chores)
    }

    fn with_exit_watch(exit_watch: ExitWatch, chores: Chores) -> Self {
        Supervisor {
            exit_watch,
            chores,
            adopting: false,
            reaper: Mutex::new(None),
        }
    }

    /// Makes this process a subreaper, and the reaper reap every child that is
    /// not its own (see the `orphans` module).
    pub(crate) fn adopting_orphans(mut self) -> io::Result<Self> {
        super::orphans::become_subreaper()?;
        self.adopting = true;
        Ok(self)
    }

    /// Has an adopting reaper look for orphans to reap now.
    pub(crate) fn reap_orphans(&self) {
        if self.adopting && self.ensure_running().is_ok() {
            self.send(Command::ReapOrphans);
        }
    }

    /// Starts the reaper thread unless it runs. A failure (a thread limit reached)
    /// is not remembered: the next call tries again.
    pub(crate) fn ensure_running(&self) -> io::Result<()> {
        let mut reaper = self.reaper.lock();
        if reaper.is_some() {
            return Ok(());
        }
        let waker = Arc::new(EventFd::new()?);
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let mut reaper_of = Reaper::new(
            commands_rx,
            Arc::clone(&waker),
            self.exit_watch,
            self.chores.clone(),
        );
        if self.adopting {
            reaper_of.adopter = Some(Adopter::new());
        }
        let thread = std::thread::Builder::new()
            .name("swarmexec-reap".into())
            .spawn(move || reaper_of.run())?;
        *reaper = Some(ReaperHandle {
            commands: commands_tx,
            waker,
            thread,
        });
        Ok(())
    }

    /// Starts the program `plan` describes and watches it, reading its output from
    /// `pipes` into a buffer of `log_capacity` bytes.
    ///
    /// The spawn happens on the reaper thread, which lives as long as the executor
    /// or any of its controllers: a program asked to die with its parent
    /// (`PR_SET_PDEATHSIG`) is signalled when the *thread* that spawned it exits, so
    /// it must not be a pool thread that may exit when idle. The inner result is
    /// the spawn's: it fails when the reaper thread cannot be started or the spawn
    /// fails. The outer error is `cancel`'s: the caller waits only as long as its
    /// token allows, and a spawn it gave up on is dropped (or its process killed).
    pub(crate) fn spawn(
        &self,
        cancel: &CancelToken,
        plan: SpawnPlan,
        pipes: Pipes,
        log_capacity: usize,
        cgroup: Option<TaskCgroup>,
    ) -> Result<Result<Arc<Process>, SpawnError>, Error> {
        if let Err(e) = self.ensure_running() {
            if let Some(cgroup) = &cgroup {
                self.chores.run(cgroup.removal());
            }
            return Ok(Err(SpawnError::setup(e)));
        }
        let (reply, replied) = crossbeam_channel::bounded(1);
        let request = SpawnRequest {
            plan,
            pipes,
            log_capacity,
            cgroup,
            reply: Reply::Waiting(reply, cancel.clone()),
        };
        self.send(Command::Spawn(Box::new(request)));
        select! {
            recv(replied) -> spawned => Ok(spawned.unwrap_or_else(|_| {
                let stopped = io::Error::other("the reaper thread has stopped");
                Err(SpawnError::setup(stopped))
            })),
            recv(cancel.done()) -> _ => Err(cancel.err().unwrap_or(Error::Canceled)),
            recv(cancel.deadline_passed()) -> _ => Err(Error::DeadlineExceeded),
        }
    }

    /// Starts, on the reaper thread, the program `plan` describes without waiting
    /// for it (nor asking it to die with its parent): `observer` hears how it
    /// fares. A reaper that cannot start is reported as a failed spawn.
    pub(crate) fn spawn_observed(
        &self,
        plan: SpawnPlan,
        pipes: Pipes,
        log_capacity: usize,
        observer: Arc<dyn Observer>,
    ) {
        self.observed(None, plan, pipes, log_capacity, observer);
    }

    /// As [`spawn_observed`](Supervisor::spawn_observed), with no output kept, at
    /// `at`: a spawn still pending when the supervisor goes never happens. The
    /// reaper keeps the time itself, so that one later spawn costs no timer thread.
    pub(crate) fn spawn_at(&self, at: Instant, plan: SpawnPlan, observer: Arc<dyn Observer>) {
        let no_output = Pipes {
            stdout: None,
            stderr: None,
        };
        self.observed(Some(at), plan, no_output, 0, observer);
    }

    fn observed(
        &self,
        at: Option<Instant>,
        plan: SpawnPlan,
        pipes: Pipes,
        log_capacity: usize,
        observer: Arc<dyn Observer>,
    ) {
        if let Err(e) = self.ensure_running() {
            observer.failed(SpawnError::setup(e));
            return;
        }
        let request = Box::new(SpawnRequest {
            plan,
            pipes,
            log_capacity,
            cgroup: None,
            reply: Reply::Observer(observer),
        });
        self.send(match at {
            Some(at) => Command::SpawnAt(at, request),
            None => Command::Spawn(request),
        });
    }

    /// Tells the reaper to drop the process's pipes.
    pub(crate) fn forget(&self, process: Arc<Process>) {
        self.send(Command::Forget(process));
    }

    fn send(&self, command: Command) {
        let mut reaper = self.reaper.lock();
        if let Some(reaper) = reaper.as_mut() {
            // The reaper runs until the sender is dropped, so this succeeds.
            let _ = reaper.commands.send(command);
            reaper.waker.wake();
        }
    }
}

impl Supervisor {
    /// Tells the reaper to stop: it kills what still runs, reaps it, removes its
    /// cgroups and exits. Nothing can be spawned afterwards. [`Stopping::wait`]
    /// waits for the reaper; meanwhile the caller may do its own share.
    pub(crate) fn stop(&self) -> Option<Stopping> {
        let ReaperHandle {
            commands,
            waker,
            thread,
        } = self.reaper.lock().take()?;
        drop(commands);
        waker.wake();
        Some(Stopping(thread))
    }
}

/// A reaper told to stop.
pub(crate) struct Stopping(JoinHandle<()>);

impl Stopping {
    /// Waits until the reaper has done all it had to and exited.
    pub(crate) fn wait(self) {
        if self.0.join().is_err() {
            log::error!(target: "swarmexec", "the reaper thread panicked");
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(stopping) = self.stop() {
            stopping.wait();
        }
    }
}

struct Watched {
    process: Arc<Process>,
    /// `None` once exited, or on kernels without pidfds.
    pidfd: Option<OwnedFd>,
    /// The leader has exited; since when the rest of its cgroup is being emptied.
    exited: Option<Instant>,
    reaped: bool,
    stdout: Option<File>,
    stderr: Option<File>,
}

impl Watched {
    fn done(&self) -> bool {
        self.reaped && self.stdout.is_none() && self.stderr.is_none()
    }

    /// Exited, with the rest of the task still dying.
    fn emptying(&self) -> bool {
        self.exited.is_some() && !self.reaped
    }
}

/// How the reaper learns of exits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ExitWatch {
    /// A pidfd per process where the kernel has them, else asking.
    Pidfd,
    /// Asking with `waitid` every [`EXIT_POLL_MS`], as on kernels without pidfds;
    /// chosen by tests to exercise that path.
    #[cfg_attr(not(test), allow(dead_code))]
    Asking,
}

struct Reaper {
    commands: Receiver<Command>,
    wake: Arc<EventFd>,
    exit_watch: ExitWatch,
    chores: Chores,
    watched: Vec<Watched>,
    /// Spawns waiting for their time, in no order (there are few).
    pending: Vec<(Instant, SpawnRequest)>,
    /// For reading output: allocated by the first read, as a reaper that only
    /// reaps (every stream inherited) needs none.
    buf: Vec<u8>,
    /// Reaps adopted orphans, when the executor adopts them.
    adopter: Option<Adopter>,
    /// Set when orphans should be looked for at once.
    reap_orphans_now: bool,
}

/// What one entry of the poll set stands for.
#[derive(Clone, Copy)]
enum Source {
    Wake,
    Exit(usize),
    Output(usize, LogStream),
}

impl Reaper {
    fn new(
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
        exit_watch: ExitWatch,
        chores: Chores,
    ) -> Self {
        Reaper {
            commands,
            wake,
            exit_watch,
            chores,
            watched: Vec::new(),
            pending: Vec::new(),
            buf: Vec::new(),
            adopter: None,
            reap_orphans_now: false,
        }
    }

    fn run(mut self) {
        let mut fds = Vec::new();
        let mut sources = Vec::new();
        loop {
            fds.clear();
            sources.clear();
            fds.push(sys::readable(&*self.wake));
            sources.push(Source::Wake);
            let mut asking = false;
            let mut emptying = false;
            let mut held_back = false;
            for (i, w) in self.watched.iter().enumerate() {
                emptying |= w.emptying();
                match (&w.pidfd, w.exited) {
                    (Some(pidfd), None) => {
                        fds.push(sys::readable(pidfd));
                        sources.push(Source::Exit(i));
                    }
                    (None, None) => asking = true,
                    _ => {}
                }
                // A follower that has not read what would be dropped next holds the
                // program's output back a moment (the program then waits on its pipe).
                let has_pipes = w.stdout.is_some() || w.stderr.is_some();
                if has_pipes && !w.process.logs.accepts_output() {
                    held_back = true;
                    continue;
                }
                for (pipe, stream) in [
                    (&w.stdout, LogStream::Stdout),
                    (&w.stderr, LogStream::Stderr),
                ] {
                    if let Some(pipe) = pipe {
                        fds.push(sys::readable(pipe));
                        sources.push(Source::Output(i, stream));
                    }
                }
            }
            let timeout = match (emptying, held_back, asking) {
                (true, _, _) => EMPTYING_POLL_MS,
                (false, true, _) => HELD_BACK_POLL_MS,
                (false, false, true) => EXIT_POLL_MS,
                (false, false, false) => -1,
            };
            let timeout = self.until_pending(timeout);
            let timeout = match &self.adopter {
                Some(adopter) => shorter(timeout, adopter.within()),
                None => timeout,
            };
            if let Err(e) = sys::poll(&mut fds, timeout) {
                log::error!(target: "swarmexec", "reaper cannot poll: {e}");
                std::thread::sleep(Duration::from_millis(EXIT_POLL_MS as u64));
                continue;
            }
            for (fd, source) in fds.iter().zip(&sources) {
                if fd.revents == 0 {
                    continue;
                }
                match *source {
                    Source::Wake => {}
                    Source::Exit(i) => {
                        self.exited(i);
                        // What it leaves behind is ours now.
                        self.reap_orphans_now = true;
                    }
                    Source::Output(i, stream) => self.read_output(i, stream),
                }
            }
            if asking {
                self.ask_for_exits();
            }
            if emptying {
                self.reap_emptied();
            }
            self.spawn_pending();
            if fds[0].revents != 0 && !self.take_commands() {
                return;
            }
            self.reap_orphans();
            self.watched.retain(|w| !w.done());
        }
    }

    /// Applies queued commands; false once every sender is gone.
    fn take_commands(&mut self) -> bool {
        // One read takes the wake-ups of every command sent so far.
        self.wake.clear();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Spawn(request)) => self.spawn(*request),
                Ok(Command::SpawnAt(at, request)) => self.pending.push((at, *request)),
                Ok(Command::ReapOrphans) => self.reap_orphans_now = true,
                Ok(Command::Forget(process)) => {
                    for w in self
                        .watched
                        .iter_mut()
                        .filter(|w| Arc::ptr_eq(&w.process, &process))
                    {
                        w.stdout = None;
                        w.stderr = None;
                    }
                }
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.shut_down();
                    return false;
                }
            }
        }
    }

    fn spawn(&mut self, request: SpawnRequest) {
        let SpawnRequest {
            plan,
            pipes,
            log_capacity,
            cgroup,
            reply,
        } = request;
        let spawned = match &reply {
            // The caller gave up: nobody would own the program.
            Reply::Waiting(_, cancel) if cancel.is_cancelled() => Err(SpawnError::setup(
                io::Error::from(io::ErrorKind::Interrupted),
            )),
            _ => sys::spawn(&plan),
        };
        drop(plan);
        if spawned.is_err() {
            if let Some(cgroup) = &cgroup {
                self.chores.run(cgroup.removal());
            }
        }
        let observer = match &reply {
            Reply::Observer(observer) => Some(Arc::clone(observer)),
            Reply::Waiting(..) => None,
        };
        let spawned = spawned.map(|pid| {
            let mut process = Process::new(pid, log_capacity, cgroup, self.chores.clone());
            process.observer = observer;
            let process = Arc::new(process);
            self.watch(Arc::clone(&process), pipes);
            process
        });
        match (reply, spawned) {
            (Reply::Waiting(reply, _), spawned) => {
                // A caller that gave up meanwhile owns nothing: the program is
                // killed, and reaped as any other.
                if let Err(unwanted) = reply.send(spawned) {
                    if let Ok(process) = unwanted.into_inner() {
                        process.kill_logged();
                    }
                }
            }
            (Reply::Observer(observer), Ok(process)) => {
                self.chores.run(move || observer.spawned(&process));
            }
            (Reply::Observer(observer), Err(e)) => self.chores.run(move || observer.failed(e)),
        }
    }

    /// `timeout` (milliseconds, -1 for none), shortened to the next pending spawn.
    fn until_pending(&self, timeout: libc::c_int) -> libc::c_int {
        let Some(next) = self.pending.iter().map(|(at, _)| *at).min() else {
            return timeout;
        };
        // Rounded up: poll would otherwise wake just before the time, to no end.
        let wait = next.saturating_duration_since(Instant::now());
        let wait = wait
            .as_micros()
            .div_ceil(1000)
            .min(libc::c_int::MAX as u128) as libc::c_int;
        if timeout < 0 {
            wait
        } else {
            timeout.min(wait)
        }
    }

    /// Reaps the orphans adopted, when adopting, now or when it is time.
    fn reap_orphans(&mut self) {
        let Some(adopter) = &mut self.adopter else {
            return;
        };
        let watched = &self.watched;
        let own = || -> HashSet<libc::pid_t> {
            let running = watched.iter().filter(|w| !w.reaped);
            running.map(|w| w.process.pid()).collect()
        };
        adopter.reap(std::mem::take(&mut self.reap_orphans_now), own);
    }

    /// Spawns the pending requests whose time has come.
    fn spawn_pending(&mut self) {
        let now = Instant::now();
        while let Some(i) = self.pending.iter().position(|(at, _)| *at <= now) {
            let (_, request) = self.pending.swap_remove(i);
            self.spawn(request);
        }
    }

    fn watch(&mut self, process: Arc<Process>, pipes: Pipes) {
        let pidfd = match self.exit_watch {
            ExitWatch::Asking => None,
            ExitWatch::Pidfd => match sys::pidfd_open(process.pid()) {
                Ok(fd) => Some(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
                Err(e) => {
                    log::warn!(target: "swarmexec", "no pidfd for process {}: {e}", process.pid());
                    None
                }
            },
        };
        self.watched.push(Watched {
            process,
            pidfd,
            exited: None,
            reaped: false,
            stdout: pipes.stdout,
            stderr: pipes.stderr,
        });
    }

    fn ask_for_exits(&mut self) {
        for i in 0..self.watched.len() {
            let w = &self.watched[i];
            if w.pidfd.is_none()
                && w.exited.is_none()
                && sys::has_exited(w.process.pid()).unwrap_or(true)
            {
                self.exited(i);
            }
        }
    }

    /// The leader exited: the rest of the task is killed, and the leader reaped
    /// once nothing of it is left (see [`reap_emptied`](Reaper::reap_emptied)).
    fn exited(&mut self, i: usize) {
        let w = &mut self.watched[i];
        w.exited = Some(Instant::now());
        w.pidfd = None;
        // Take what the program wrote before it went before waking its waiters, so
        // that whoever saw it exit finds all of its output.
        self.drain(i);
        let w = &mut self.watched[i];
        w.process.logs.finish();
        if w.process.kill_rest(&self.chores) {
            w.reaped = true;
            w.process.reap(&self.chores);
        }
    }

    /// Reaps the leaders whose cgroup has emptied: the task ends only once all of
    /// it is gone. One that will not empty is given up on after a while.
    fn reap_emptied(&mut self) {
        for w in self.watched.iter_mut().filter(|w| w.emptying()) {
            let waited = w.exited.map_or(Duration::ZERO, |at| at.elapsed());
            if !w.process.is_empty() {
                if waited < EMPTYING_LIMIT {
                    continue;
                }
                log::error!(
                    target: "swarmexec",
                    "processes of task process {} did not die within {EMPTYING_LIMIT:?}; its cgroup is left",
                    w.process.pid()
                );
            }
            w.reaped = true;
            w.process.reap(&self.chores);
        }
    }

    /// Reads whatever is ready on the process's pipes now, without blocking, and
    /// at most [`DRAIN_READS`] times per pipe: a grandchild that escaped the group
    /// may keep writing.
    fn drain(&mut self, i: usize) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            for _ in 0..DRAIN_READS {
                let w = &self.watched[i];
                let Some(pipe) = (if stream == LogStream::Stdout {
                    &w.stdout
                } else {
                    &w.stderr
                }) else {
                    break;
                };
                let mut probe = [sys::readable(pipe)];
                if !matches!(sys::poll(&mut probe, 0), Ok(1)) {
                    break;
                }
                self.read_output(i, stream);
            }
        }
    }

    /// One read from a pipe that poll found ready (so it cannot block); EOF or an
    /// error closes it.
    fn read_output(&mut self, i: usize, stream: LogStream) {
        let w = &mut self.watched[i];
        let pipe = if stream == LogStream::Stdout {
            &mut w.stdout
        } else {
            &mut w.stderr
        };
        let Some(file) = pipe else { return };
        if self.buf.is_empty() {
            self.buf = vec![0; OUTPUT_READ];
        }
        let limit = w.process.logs.read_limit(self.buf.len());
        match file.read(&mut self.buf[..limit]) {
            Ok(n) if n > 0 => w.process.logs.append(stream, &self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => {
                *pipe = None;
                // Output that came after the exit (from the group's last members)
                // may have left an unterminated line.
                if w.exited.is_some() {
                    w.process.logs.finish();
                }
            }
        }
    }

    /// The executor and every controller are gone. Each controller terminated its
    /// own process when dropped; anything still running is killed here, so that no
    /// process is left without a reaper.
    fn shut_down(&mut self) {
        for w in &self.watched {
            if !w.reaped {
                let _ = w.process.kill_all();
                if let Some(cgroup) = &w.process.cgroup {
                    cgroup.wait_empty(Duration::from_secs(2));
                }
                w.process.reap(&self.chores);
            }
        }
        self.watched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    /// `sh -c script`, with `stdout` and `stderr`.
    fn plan(script: &str, stdout: OwnedFd, stderr: OwnedFd) -> SpawnPlan {
        let stdin = File::open("/dev/null").unwrap();
        let c = |s: &str| CString::new(s).unwrap();
        SpawnPlan {
            program: c("/bin/sh"),
            argv: vec![c("sh"), c("-c"), c(script)],
            env: vec![],
            dir: None,
            credentials: None,
            groups: vec![],
            rlimits: vec![],
            stdio: [stdin.into(), stdout, stderr],
            extra_fds: vec![],
            foreground: false,
            cgroups: Default::default(),
            tie: sys::Tie::DiesWithParent,
        }
    }

    fn spawn(script: &str, supervisor: &Supervisor) -> Arc<Process> {
        let (stdout, stdout_w) = sys::pipe().unwrap();
        let (stderr, stderr_w) = sys::pipe().unwrap();
        let plan = plan(script, stdout_w, stderr_w);
        let pipes = Pipes {
            stdout: Some(stdout.into()),
            stderr: Some(stderr.into()),
        };
        let cancel = CancelToken::new();
        supervisor
            .spawn(&cancel, plan, pipes, 1 << 16, None)
            .unwrap()
            .unwrap()
    }

    fn code(exit: Option<Exit>) -> Option<i32> {
        exit?.status?.code()
    }

    #[test]
    fn without_pidfds_exits_are_found_by_asking() {
        let supervisor = Supervisor::with_exit_watch(ExitWatch::Asking, Chores::new());
        let cancel = CancelToken::new();
        let quick = spawn("echo out; exit 4", &supervisor);
        assert_eq!(code(quick.wait_exit(&cancel, None).unwrap()), Some(4));

        let sleeper = spawn("sleep 30", &supervisor);
        sleeper.signal_group(libc::SIGTERM).unwrap();
        match sleeper
            .wait_exit(&cancel, Some(Duration::from_secs(10)))
            .unwrap()
        {
            Some(Exit {
                status: Some(status),
                ..
            }) => {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(libc::SIGTERM));
            }
            other => panic!("{other:?}"),
        }
        // Signalling after the reap is a no-op, never a signal to a reused pid.
        sleeper.signal_group(libc::SIGKILL).unwrap();
    }

    /// Tells a channel when the process it observes started.
    struct Started(Sender<Instant>);

    impl Observer for Started {
        fn spawned(&self, _: &Arc<Process>) {
            let _ = self.0.send(Instant::now());
        }
        fn failed(&self, error: SpawnError) {
            panic!("{:?}", error.error);
        }
        fn ended(&self, _: &Process) {}
    }

    #[test]
    fn a_spawn_at_a_time_waits_for_it_and_never_happens_once_the_supervisor_is_gone() {
        let null = || OwnedFd::from(File::create("/dev/null").unwrap());
        let (started, starts) = crossbeam_channel::unbounded();
        let observer = Arc::new(Started(started));
        let chores = Chores::new();
        let supervisor = Supervisor::new(chores.clone());
        let at = Instant::now() + Duration::from_millis(100);
        supervisor.spawn_at(at, plan("exit 0", null(), null()), observer.clone());
        let spawned = starts.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(spawned >= at, "spawned {:?} early", at - spawned);

        let later = Instant::now() + Duration::from_secs(60);
        supervisor.spawn_at(later, plan("exit 0", null(), null()), observer.clone());
        drop(supervisor);
        // Once the chores told of the first are done, the pending request, and
        // its descriptors, went with the reaper.
        chores.finish();
        assert_eq!(Arc::strong_count(&observer), 1);
        assert!(starts.try_recv().is_err());
    }
}
