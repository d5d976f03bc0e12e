//! The watchdog: a tiny process that outlives the executor's process, to kill
//! every task if that process dies.
//!
//! `PR_SET_PDEATHSIG` kills each task's first process when the executor's process
//! dies, but not what that process started (a shell's children, daemons in other
//! sessions). So where the executor's tasks live under one v2 cgroup, it starts a
//! `sh` that waits on a pipe only the executor holds: when the executor's process
//! dies, even by SIGKILL, the kernel closes the pipe, `sh` reads end-of-file and
//! writes `cgroup.kill` of the executor's cgroup, which kills every process of
//! every task at once. When the executor goes normally it closes the pipe itself
//! (its tasks are gone by then) and the watchdog exits. It starts 50 ms after the
//! executor's first program, so that a program that lasts a moment does not pay
//! for it; a host that dies sooner leaves what its tasks started to the next
//! executor on its state directory.
//!
//! The watchdog is started detached (see [`sys::Tie::Detached`]): in a session of
//! its own and no child of the host, so that a host counting or reaping its
//! children finds none of ours but its tasks. One `sh` and nothing else, so that
//! starting it costs a running task as little as can be.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::supervisor::{Observer, Process, Supervisor};
use super::sys::{self, SpawnError, SpawnPlan, Tie};

/// What the watchdog's `sh` runs, `$0` being the `cgroup.kill` file: it reads its
/// stdin, the pipe, until end-of-file, then kills the cgroup.
const SCRIPT: &str = "read -r _; echo 1 > \"$0\"";

/// A running watchdog; dropping it lets it go.
#[derive(Debug)]
pub(crate) struct Watchdog {
    /// The pipe's write end: the watchdog acts once every copy is closed.
    _alive: OwnedFd,
}

impl Watchdog {
    /// Has `supervisor` start, at `at`, a watchdog that writes `kill_file` (a v2
    /// `cgroup.kill`) when this process dies. A failure to start then is logged.
    pub(crate) fn arm(
        supervisor: &Supervisor,
        kill_file: &Path,
        at: Instant,
    ) -> Result<Watchdog, String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot start the watchdog: {e}");
        let (read, alive) = sys::pipe().map_err(|e| fail(&e))?;
        let null = || {
            let opened = OpenOptions::new().write(true).open("/dev/null");
            opened.map(OwnedFd::from).map_err(|e| fail(&e))
        };
        let (stdout, stderr) = (null()?, null()?);
        let c = |s: &[u8]| CString::new(s).map_err(|e| fail(&e));
        let plan = SpawnPlan {
            program: c(b"/bin/sh")?,
            argv: vec![
                c(b"sh")?,
                c(b"-c")?,
                c(SCRIPT.as_bytes())?,
                c(kill_file.as_os_str().as_bytes())?,
            ],
            env: Vec::new(),
            dir: Some(c(b"/")?),
            credentials: None,
            groups: Vec::new(),
            rlimits: Vec::new(),
            stdio: [read, stdout, stderr],
            extra_fds: Vec::new(),
            foreground: false,
            cgroups: Default::default(),
            // It must outlive us: that is what it is for.
            tie: Tie::Detached,
        };
        // The plan, with our copy of the pipe's read end, is gone once spawned; the
        // reaper reaps the watchdog's starter.
        supervisor.spawn_at(at, plan, Arc::new(Unwatched));
        Ok(Watchdog { _alive: alive })
    }
}

/// Hears how the watchdog's start went: only a failure is news.
struct Unwatched;

impl Observer for Unwatched {
    fn spawned(&self, _: &Arc<Process>) {}

    fn failed(&self, error: SpawnError) {
        warn_unwatched(&format!("cannot start the watchdog: {}", error.error));
    }

    fn ended(&self, _: &Process) {}
}

/// Says that there is no watchdog, and what that means.
pub(crate) fn warn_unwatched(why: &str) {
    log::warn!(
        target: "swarmexec",
        "{why}; if this process dies, its tasks' programs die with it, but not what they started"
    );
}
