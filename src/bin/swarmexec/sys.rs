//! The command's libc calls, each behind a small safe function.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

    /// A descriptor, readable while a signal of the set is pending, from which
    /// [`SignalFd::take`] takes them. The set must be blocked in every thread.
    pub(crate) fn descriptor(&self) -> io::Result<SignalFd> {
        // SAFETY: a valid sigset_t; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &self.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        Ok(SignalFd(owned(fd)?))
    }
}

/// Pending signals, to be taken one at a time.
pub(crate) struct SignalFd(OwnedFd);

impl SignalFd {
    /// A pending signal, taken; `None` when none is pending.
    pub(crate) fn take(&self) -> io::Result<Option<libc::c_int>> {
        // SAFETY: signalfd_siginfo is plain data; the kernel fills it whole.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        match n {
            n if n == size as isize => Ok(Some(info.ssi_signo as libc::c_int)),
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Ok(None),
            -1 => Err(io::Error::last_os_error()),
            _ => Err(io::Error::other("a short read from a signalfd")),
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A counter another thread bumps to wake a thread in [`poll`].
pub(crate) struct Wakeup(OwnedFd);

impl Wakeup {
    pub(crate) fn new() -> io::Result<Wakeup> {
        // SAFETY: eventfd takes integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        Ok(Wakeup(owned(fd)?))
    }

    /// Makes the descriptor readable. Cannot block: at worst (a counter near its
    /// maximum) it is readable already.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes eight bytes from a live u64.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes the descriptor unreadable until the next [`wake`](Wakeup::wake).
    pub(crate) fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads eight bytes into a live u64; fails harmlessly when not woken.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl AsFd for Wakeup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Waits until one of `fds` is readable, or `timeout` passes (`None`: no limit);
/// returns which are readable. An interrupted wait returns none.
pub(crate) fn poll<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<std::time::Duration>,
) -> io::Result<[bool; N]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: `polled` holds N valid pollfd entries.
    let n = unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, timeout) };
    match n {
        -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => Ok([false; N]),
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(polled.map(|p| p.revents != 0)),
    }
}

/// Has every thread allocate from the main heap: the command's threads mostly
/// wait, and a heap per thread costs each a 64 MiB reservation and a few system
/// calls when it first allocates, a measurable part of a short run. Only this
/// process is affected: nothing of it survives `exec`. (The GNU C library's
/// setting; other C libraries have no per-thread heaps to avoid.)
pub(crate) fn share_one_malloc_arena() {
    // SAFETY: mallopt takes two integers; at worst (an unknown parameter) it
    // returns 0 and changes nothing.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
}

/// Puts SIGCHLD back at its default, should the command's parent have left it
/// ignored: the executor refuses to supervise where the kernel would reap its
/// children itself, and the command's children are its own.
pub(crate) fn default_sigchld() -> io::Result<()> {
    // SAFETY: SIG_DFL is no handler: nothing of ours runs on the signal.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a terminal.
pub(crate) fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: isatty takes a descriptor.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// The foreground process group of the terminal `fd`.
pub(crate) fn foreground_group(fd: BorrowedFd<'_>) -> io::Result<libc::pid_t> {
    // SAFETY: tcgetpgrp takes a descriptor.
    let group = unsafe { libc::tcgetpgrp(fd.as_raw_fd()) };
    if group < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(group)
}

/// Makes `group` the foreground process group of the terminal `fd`. Allowed to
/// a background group because the command blocks SIGTTOU in every thread.
pub(crate) fn set_foreground_group(fd: BorrowedFd<'_>, group: libc::pid_t) -> io::Result<()> {
    // SAFETY: tcsetpgrp takes a descriptor and a process group id.
    if unsafe { libc::tcsetpgrp(fd.as_raw_fd(), group) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's process group.
pub(crate) fn own_group() -> libc::pid_t {
    // SAFETY: getpgrp cannot fail.
    unsafe { libc::getpgrp() }
}

/// Stops this whole process, as a job stops (SIGSTOP, which cannot be blocked);
/// returns once it is continued.
pub(crate) fn stop_self() {
    // SAFETY: kill takes two integers; the signal is ours.
    unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
}

/// The descriptors 3 to 3 + `count` - 1 this process was started with, taken
/// over; refused, naming it, when one is not open.
pub(crate) fn inherited_fds(count: u32) -> Result<Vec<OwnedFd>, String> {
    (3..3 + count as libc::c_int)
        .map(|fd| {
            // SAFETY: F_GETFD only asks whether `fd` is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(format!("--preserve-fds: descriptor {fd} is not open"));
            }
            // SAFETY: an open descriptor the command was given and nothing else
            // in it owns (the command opens nothing before taking these).
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

/// Takes ownership of a descriptor a call returned, or of its error (-1).
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// This process's effective user id.
#[cfg(feature = "node")]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}
