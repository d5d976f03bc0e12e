//! The watchdog: a tiny process that outlives the executor's process, to kill
//! every task if that process dies.
//!
//! `PR_SET_PDEATHSIG` kills each task's first process when the executor's process
//! dies, but not what that process started (a shell's children, daemons in other
//! sessions). So where the executor's tasks live under one v2 cgroup, it starts a
//! `sh` that waits on a pipe only the executor holds: when the executor's process
//! dies, even by SIGKILL, the kernel closes the pipe, `sh` reads end-of-file and
//! writes `cgroup.kill` of the executor's cgroup, which kills every process of
//! every task at once. When the executor goes normally it kills the watchdog (its
//! tasks are gone already) and reaps it.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::sys::{self, SpawnPlan};

/// What the watchdog runs: wait for end-of-file on stdin, then kill the cgroup.
const SCRIPT: &str = "read -r _; echo 1 > \"$0\"";

/// A running watchdog; killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Watchdog {
    pid: libc::pid_t,
    /// The pipe's write end: the watchdog acts once every copy is closed.
    _alive: OwnedFd,
}

impl Watchdog {
    /// Starts a watchdog that writes `kill_file` (a v2 `cgroup.kill`) when this
    /// process dies.
    pub(crate) fn start(kill_file: &Path) -> Result<Watchdog, String> {
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
            rlimits: Vec::new(),
            stdio: [read, stdout, stderr],
            cgroups: Vec::new(),
            // It must outlive us: that is what it is for.
            die_with_parent: false,
        };
        // The plan, with our copy of the pipe's read end, is dropped on return.
        let pid = sys::spawn(&plan).map_err(|e| fail(&e.error))?;
        Ok(Watchdog { pid, _alive: alive })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Our unreaped child: its pid cannot have been given to another process.
        sys::kill_pinned(self.pid);
        if let Err(e) = sys::reap(self.pid) {
            log::warn!(target: "swarmexec", "cannot reap the watchdog {}: {e}", self.pid);
        }
    }
}
