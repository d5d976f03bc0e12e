//! The signals the command takes: every catchable one, blocked in every thread
//! and read from a signalfd by the thread that follows the task, so that no
//! handler runs, nothing async-signal-unsafe is ever needed, and no signal can
//! kill the command without its final line. Programs the executor starts get
//! every signal at its default and an empty mask whatever the command blocks.

use std::os::fd::{AsFd, BorrowedFd};

use swarmexec::api::Signal;

use crate::sys::{SignalFd, SignalSet};

/// What a signal asks of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// SIGTERM, what an orchestrator sends: stop the program gracefully; a
    /// second one kills it.
    Terminate,
    /// SIGINT: passed on, but during a stop it kills at once.
    Interrupt,
    /// SIGTSTP, SIGTTIN, SIGTTOU: passed on, and once the program stops the run
    /// stops too (see the `terminal` module).
    Suspend(Signal),
    /// SIGCONT: passed on to the program's whole group.
    Continue,
    /// SIGCHLD: a child stopped, continued or exited (an orphan, maybe).
    Child,
    /// SIGWINCH: the terminal's size changed; passed on where the program has it.
    Resize,
    /// Everything else: passed on to the program as received.
    Pass(Signal),
    /// SIGPIPE, SIGURG: the command's own, nothing to do.
    Own,
}

impl Request {
    fn of(signal: Signal) -> Request {
        match signal.number() {
            libc::SIGTERM => Request::Terminate,
            libc::SIGINT => Request::Interrupt,
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Request::Suspend(signal),
            libc::SIGCONT => Request::Continue,
            libc::SIGCHLD => Request::Child,
            libc::SIGWINCH => Request::Resize,
            libc::SIGPIPE | libc::SIGURG => Request::Own,
            _ => Request::Pass(signal),
        }
    }
}

/// Every signal a process can catch: the standard ones but SIGKILL and SIGSTOP,
/// and the real-time ones the C library leaves to programs.
fn catchable() -> Vec<libc::c_int> {
    let standard = (1..32).filter(|s| *s != libc::SIGKILL && *s != libc::SIGSTOP);
    standard.chain(Signal::rtmin()..=Signal::rtmax()).collect()
}

/// The signals the command takes, pending until taken.
pub(crate) struct Signals(SignalFd);

/// Blocks every catchable signal. Call it before any other thread starts, so that
/// every thread inherits the mask and no signal reaches a thread that would act
/// on it by default.
pub(crate) fn take() -> std::io::Result<Signals> {
    let set = SignalSet::of(&catchable());
    set.block()?;
    Ok(Signals(set.descriptor()?))
}

impl Signals {
    /// Waits for the next signal and says what it asks.
    #[cfg(feature = "node")]
    pub(crate) fn wait(&self) -> std::io::Result<Request> {
        loop {
            if let Some(request) = self.next()? {
                return Ok(request);
            }
            crate::sys::poll([self.0.as_fd()], None)?;
        }
    }

    /// What the next pending signal asks; `None` when none is pending.
    pub(crate) fn next(&self) -> std::io::Result<Option<Request>> {
        Ok(self
            .0
            .take()?
            .and_then(Signal::from_number)
            .map(Request::of))
    }
}

impl AsFd for Signals {
    /// Readable while a signal is pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
