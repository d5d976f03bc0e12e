//! The signals the command takes, as requests: blocked in every thread and read
//! from a signalfd by the thread that follows the task, so that no handler runs,
//! nothing async-signal-unsafe is ever needed, and no thread waits for signals
//! alone. Programs the executor starts get every signal at its default and an
//! empty mask whatever the command blocks.

use std::os::fd::{AsFd, BorrowedFd};

use crate::sys::{SignalFd, SignalSet};

/// What a signal asks of the running task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// SIGINT, SIGTERM, SIGHUP: stop gracefully; a second one: kill at once.
    Stop,
    /// Pass the signal (named) on to the program's process group.
    Forward(&'static str),
}

/// The signals taken, and what each asks.
const TAKEN: [(libc::c_int, Request); 7] = [
    (libc::SIGINT, Request::Stop),
    (libc::SIGTERM, Request::Stop),
    (libc::SIGHUP, Request::Stop),
    (libc::SIGQUIT, Request::Forward("SIGQUIT")),
    (libc::SIGUSR1, Request::Forward("SIGUSR1")),
    (libc::SIGUSR2, Request::Forward("SIGUSR2")),
    (libc::SIGWINCH, Request::Forward("SIGWINCH")),
];

/// The signals the command takes, pending until taken.
pub(crate) struct Signals(SignalFd);

/// Blocks the signals the command takes. Call it before any other thread starts,
/// so that every thread inherits the mask and no signal reaches a thread that
/// would act on it by default.
pub(crate) fn take() -> std::io::Result<Signals> {
    let numbers: Vec<libc::c_int> = TAKEN.iter().map(|(number, _)| *number).collect();
    let set = SignalSet::of(&numbers);
    set.block()?;
    Ok(Signals(set.descriptor()?))
}

impl Signals {
    /// What the next pending signal asks; `None` when none is pending.
    pub(crate) fn next(&self) -> std::io::Result<Option<Request>> {
        while let Some(signal) = self.0.take()? {
            let request = TAKEN.iter().find(|(number, _)| *number == signal);
            if let Some((_, request)) = request {
                return Ok(Some(*request));
            }
        }
        Ok(None)
    }
}

impl AsFd for Signals {
    /// Readable while a signal is pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
