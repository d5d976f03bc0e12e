//! The signals the command takes, as messages: blocked in every thread and taken
//! by one thread with `sigwait`, so that no handler runs and nothing
//! async-signal-unsafe is ever needed. Programs the executor starts get every
//! signal at its default and an empty mask whatever the command blocks.

use crossbeam_channel::{unbounded, Receiver};

use crate::sys::SignalSet;

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

/// Blocks the signals the command takes, then starts the thread that takes
/// them. Call it before any other thread starts, so that every thread inherits
/// the mask and no signal reaches a thread that would act on it by default.
pub(crate) fn watch() -> std::io::Result<Receiver<Request>> {
    let numbers: Vec<libc::c_int> = TAKEN.iter().map(|(number, _)| *number).collect();
    let set = SignalSet::of(&numbers);
    set.block()?;
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("swarmexec-signals".into())
        .spawn(move || loop {
            let Ok(signal) = set.wait() else { continue };
            let request = TAKEN
                .iter()
                .find(|(number, _)| *number == signal)
                .map(|(_, r)| *r);
            if let Some(request) = request {
                if tx.send(request).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}
