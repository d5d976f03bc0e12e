//! Job control with the caller's terminal, as tini does it (no pseudo-terminal
//! of our own): the program's process group is made the terminal's foreground
//! group (by the program itself, before it executes: see
//! `ProcessSpec::foreground`), so that it may read the terminal and the terminal
//! driver's signals (Ctrl-C, Ctrl-\, Ctrl-Z) reach it, not the command. When the
//! program stops, the command takes the terminal back and stops itself the same
//! way, so that the caller's shell sees the job stopped; continued (`fg`), it
//! gives the terminal back to the program and continues it. At the end the
//! command's group gets the terminal back, however the program ended.

use std::os::fd::AsFd;

use crate::sys;

/// The caller's terminal, while the command's group holds its foreground.
pub(crate) struct Terminal {
    own_group: libc::pid_t,
}

impl Terminal {
    /// The terminal that is stdin, when this process's group is its foreground
    /// group (a run in the background takes no terminal).
    pub(crate) fn of_stdin() -> Option<Terminal> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let own_group = sys::own_group();
        (sys::is_terminal(fd) && sys::foreground_group(fd).ok() == Some(own_group))
            .then_some(Terminal { own_group })
    }

    /// Gives the terminal's foreground to `group`.
    pub(crate) fn give(&self, group: libc::pid_t) {
        if let Err(e) = sys::set_foreground_group(std::io::stdin().as_fd(), group) {
            eprintln!("swarmexec: cannot give the terminal to the program: {e}");
        }
    }

    /// Takes the terminal's foreground back for the command's group.
    pub(crate) fn take_back(&self) {
        self.give(self.own_group);
    }
}
