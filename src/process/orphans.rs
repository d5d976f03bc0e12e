//! Adopting orphans, for an executor that stands in for init (a container's
//! command, `swarmexec run --init`): the process becomes a child subreaper
//! (`PR_SET_CHILD_SUBREAPER`; as PID 1 of a pid namespace it is one already), so
//! that whatever its tasks leave behind is reparented to it, and its reaper reaps
//! every child that is not one of its own. It never takes a task's exit status:
//! it knows its own pids. Off by default: a guest reaps nothing that is not its
//! own.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::sys;

/// How often children are looked for when nothing else said to.
const POLL: Duration = Duration::from_millis(100);

/// The reaper's share of adopting: when to look, and the looking.
#[derive(Debug)]
pub(crate) struct Adopter {
    last: Instant,
}

/// Makes this process a subreaper: its orphaned descendants become its
/// children.
pub(crate) fn become_subreaper() -> std::io::Result<()> {
    sys::become_subreaper()
}

impl Adopter {
    pub(crate) fn new() -> Adopter {
        Adopter {
            last: Instant::now(),
        }
    }

    /// The longest the reaper may sleep before it looks again.
    pub(crate) fn within(&self) -> Duration {
        POLL.saturating_sub(self.last.elapsed())
    }

    /// Reaps every child that has exited and is not among those `own` lists,
    /// when `now` (a task exited, or someone said so) or when it is time; `own`
    /// is asked only then.
    pub(crate) fn reap(&mut self, now: bool, own: impl FnOnce() -> HashSet<libc::pid_t>) {
        if !now && self.last.elapsed() < POLL {
            return;
        }
        self.last = Instant::now();
        let own = own();
        let mut reaped = 0;
        for pid in sys::children() {
            if !own.contains(&pid) && sys::reap_if_exited(pid) {
                reaped += 1;
            }
        }
        if reaped > 0 {
            log::debug!(target: "swarmexec", "reaped {reaped} adopted processes");
        }
    }
}
