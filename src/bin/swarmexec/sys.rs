//! The command's libc calls, each behind a small safe function.

use std::io;

/// A set of signals.
#[derive(Clone, Copy)]
pub(crate) struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub(crate) fn of(signals: &[libc::c_int]) -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t and each number is a valid signal.
        unsafe {
            libc::sigemptyset(&mut set);
            for &signal in signals {
                libc::sigaddset(&mut set, signal);
            }
        }
        SignalSet(set)
    }

    /// Blocks the set in the calling thread; threads started afterwards inherit it.
    pub(crate) fn block(&self) -> io::Result<()> {
        // SAFETY: a valid sigset_t; a null old set is allowed.
        let failed =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        match failed {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Waits for one of the (blocked) signals of the set to arrive and takes it.
    pub(crate) fn wait(&self) -> io::Result<libc::c_int> {
        let mut signal: libc::c_int = 0;
        // SAFETY: a valid sigset_t and a writable c_int.
        match unsafe { libc::sigwait(&self.0, &mut signal) } {
            0 => Ok(signal),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}
