//! Spawning a program: `clone` with a shared address space, then `exec`.
//!
//! The standard library's `Command` either takes `posix_spawn` (fast, but it can
//! neither join a cgroup, nor ask for a signal when the parent dies, nor reset the
//! signals a host ignores) or `fork` with a `pre_exec` hook (it can, but copying
//! the parent's page tables costs a fifth of a spawn in a small host, and far more
//! in a big one). So, as `posix_spawn` does inside the C library, the child is
//! cloned with `CLONE_VM | CLONE_VFORK`: it runs on a stack of its own in the
//! parent's memory, while the parent is suspended until it has called `exec` (or
//! exited), and does everything a task needs in between. Where it can, it is
//! cloned straight into its v2 cgroup (see [`super::clone`] for why that matters).
//!
//! The child shares the parent's memory, so it only reads what the parent
//! prepared, calls the kernel, and never allocates, locks or unwinds. Set-id calls
//! go straight to the kernel: the C library's wrappers would signal the parent's
//! other threads, which the child believes to be its own. Every signal is blocked
//! from before the clone until the child has reset every disposition to its
//! default, so that no handler of the host runs in the child (and so that it may
//! take its terminal's foreground, which SIGTTOU would otherwise stop).
//!
//! Only stdio and the descriptors the plan passes (as 3, 4, ...) reach the
//! program: every other descriptor, whatever the host left open and not marked
//! close-on-exec, is marked so in the child (`close_range`, or one by one on
//! kernels before 5.11).

use std::ffi::{c_void, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::clone::{clone_into_cgroup, clone_vfork, IntoCgroup, Stack};
use super::{check, rlimit_of};
use crate::api::Rlimit;

/// Everything a program is started with.
pub(crate) struct SpawnPlan {
    /// The executable's path, resolved beforehand.
    pub(crate) program: CString,
    pub(crate) argv: Vec<CString>,
    /// `KEY=VALUE` entries: the whole environment.
    pub(crate) env: Vec<CString>,
    pub(crate) dir: Option<CString>,
    /// Uid and gid to switch to, with `groups` as the supplementary groups.
    pub(crate) credentials: Option<(u32, u32)>,
    pub(crate) groups: Vec<u32>,
    pub(crate) rlimits: Vec<Rlimit>,
    /// What becomes the program's stdin, stdout and stderr.
    pub(crate) stdio: [OwnedFd; 3],
    /// What becomes the program's descriptors 3, 4, ...
    pub(crate) extra_fds: Vec<OwnedFd>,
    /// Makes the program's group the foreground group of the terminal that is
    /// its stdin, if it is one.
    pub(crate) foreground: bool,
    /// The cgroups the program joins before it executes.
    pub(crate) cgroups: CgroupJoin,
    /// Whether it dies with this process, or outlives it detached.
    pub(crate) tie: Tie,
}

/// How a program's life is tied to this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tie {
    /// Killed (SIGKILL) when the spawning thread exits; leads a process group.
    DiesWithParent,
    /// In a session of its own, and no child of this process: started by a child
    /// that exits once it has executed, so that init (or the nearest subreaper)
    /// adopts it. For what must outlive this process and never be counted, or
    /// reaped, among its children.
    Detached,
}

/// The cgroups a program joins before it executes.
#[derive(Debug, Default)]
pub(crate) struct CgroupJoin {
    /// A v2 cgroup's directory: the program is cloned straight into it where the
    /// kernel allows (see [`super::clone`]), and writes itself into it elsewhere.
    pub(crate) v2: Option<OwnedFd>,
    /// Open `cgroup.procs` files of (v1) cgroups the program writes itself into.
    pub(crate) procs: Vec<OwnedFd>,
}

/// What the child reads: raw pointers into memory the parent keeps alive and
/// untouched until the child has called `exec` or exited.
#[derive(Clone, Copy)]
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    dir: *const libc::c_char,
    credentials: Option<(u32, u32)>,
    groups: *const libc::gid_t,
    group_count: usize,
    rlimits: *const (super::ResourceId, libc::rlimit),
    rlimit_count: usize,
    stdio: [RawFd; 3],
    extra: *const RawFd,
    extra_count: usize,
    foreground: bool,
    /// The first descriptor that must not reach the program.
    first_closed: RawFd,
    /// Above what the one-by-one fallback to `close_range` gives up.
    fd_limit: RawFd,
    cgroups: *const RawFd,
    cgroup_count: usize,
    tie: Tie,
    /// Where a detached program's starter runs the program's child.
    detached_stack: *const Stack,
    parent: libc::pid_t,
    /// The write end of a close-on-exec pipe: the child writes its errno there
    /// when it fails.
    error_fd: RawFd,
}

/// The number of signals Linux has: 64, the bits of the kernel's signal set.
const SIGNALS: libc::c_int = 64;

/// The child's own stack: the C library's `posix_spawn` uses about as much.
const CHILD_STACK: usize = 64 * 1024;

/// The step of a spawn that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpawnStep {
    /// Preparing, cloning, or setting up the child (group, cgroups, limits, stdio).
    Setup,
    /// Entering the working directory.
    Chdir,
    /// Taking the task's user and group.
    Credentials,
    /// `exec` of the program.
    Exec,
}

impl SpawnStep {
    const ALL: [SpawnStep; 4] = [
        SpawnStep::Setup,
        SpawnStep::Chdir,
        SpawnStep::Credentials,
        SpawnStep::Exec,
    ];
}

/// A spawn that failed: at which step, and why.
#[derive(Debug)]
pub(crate) struct SpawnError {
    pub(crate) step: SpawnStep,
    pub(crate) error: io::Error,
}

impl SpawnError {
    pub(crate) fn setup(error: io::Error) -> SpawnError {
        SpawnError {
            step: SpawnStep::Setup,
            error,
        }
    }
}

/// Starts the program `plan` describes and returns its pid (a detached program's
/// starter's): an unreaped child of this process, leading a process group of its
/// own. Fails with the step that failed and its `errno` (for example `ENOENT` or
/// `EACCES` from `exec`).
pub(crate) fn spawn(plan: &SpawnPlan) -> Result<libc::pid_t, SpawnError> {
    let v1: Vec<RawFd> = plan.cgroups.procs.iter().map(AsRawFd::as_raw_fd).collect();
    let into = plan.cgroups.v2.as_ref().map(AsFd::as_fd);
    // Tried every time, never given up on: a refusal may be passing (a seccomp
    // policy, a cgroup being changed), and a failed try costs one system call.
    if let Some(dir) = into {
        if let Some(pid) = launch(plan, Some(dir), &v1)? {
            return Ok(pid);
        }
    }
    let v2_procs = into
        .map(open_procs)
        .transpose()
        .map_err(SpawnError::setup)?;
    let joins: Vec<RawFd> = v2_procs.iter().map(AsRawFd::as_raw_fd).chain(v1).collect();
    // Without `into`, launch always clones.
    launch(plan, None, &joins)?
        .ok_or_else(|| SpawnError::setup(io::Error::from_raw_os_error(libc::ENOSYS)))
}

/// Clones the child, straight into the v2 cgroup `into` if given, the child
/// writing itself into the cgroups whose `cgroup.procs` files are open as `joins`;
/// waits until it has executed the program (or failed to). `None` when `into` was
/// given and this kernel cannot clone into a cgroup.
fn launch(
    plan: &SpawnPlan,
    into: Option<BorrowedFd<'_>>,
    joins: &[RawFd],
) -> Result<Option<libc::pid_t>, SpawnError> {
    let argv = null_terminated(&plan.argv);
    let envp = null_terminated(&plan.env);
    let rlimits: Vec<_> = plan.rlimits.iter().map(rlimit_of).collect();
    // Every descriptor the child reads from sits above those it writes (0 to 2,
    // then 3 on for the extra ones): a source at 0, 1 or 2 (a host that closed
    // its own), or among the extras' targets, would be overwritten before it is
    // read. The error pipe too, which must outlive the extras' dup2.
    let first_closed = RawFd::try_from(3 + plan.extra_fds.len())
        .map_err(|_| SpawnError::setup(io::ErrorKind::InvalidInput.into()))?;
    let lifted = |fd: &OwnedFd| above(fd, first_closed).map_err(SpawnError::setup);
    let stdio = [
        lifted(&plan.stdio[0])?,
        lifted(&plan.stdio[1])?,
        lifted(&plan.stdio[2])?,
    ];
    let extra: Vec<OwnedFd> = plan
        .extra_fds
        .iter()
        .map(lifted)
        .collect::<Result<_, _>>()?;
    let extra_raw: Vec<RawFd> = extra.iter().map(AsRawFd::as_raw_fd).collect();
    let (error_read, pipe_end) = pipe().map_err(SpawnError::setup)?;
    // The pipe's own end goes now: the read sees end-of-file once the child's
    // copy closes at exec.
    let error_write = lifted(&pipe_end)?;
    drop(pipe_end);
    let mut memory = Vec::with_capacity(CHILD_STACK);
    let stack = Stack::within(memory.spare_capacity_mut());
    let mut detached_memory = Vec::new();
    let detached_stack = (plan.tie == Tie::Detached).then(|| {
        detached_memory.reserve_exact(CHILD_STACK);
        Stack::within(detached_memory.spare_capacity_mut())
    });
    let args = ChildArgs {
        program: plan.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        dir: plan.dir.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
        credentials: plan.credentials,
        groups: plan.groups.as_ptr(),
        group_count: plan.groups.len(),
        rlimits: rlimits.as_ptr(),
        rlimit_count: rlimits.len(),
        stdio: [
            stdio[0].as_raw_fd(),
            stdio[1].as_raw_fd(),
            stdio[2].as_raw_fd(),
        ],
        extra: extra_raw.as_ptr(),
        extra_count: extra_raw.len(),
        foreground: plan.foreground,
        first_closed,
        fd_limit: open_file_limit(),
        cgroups: joins.as_ptr(),
        cgroup_count: joins.len(),
        tie: plan.tie,
        detached_stack: detached_stack
            .as_ref()
            .map_or(std::ptr::null(), |s| s as *const Stack),
        // SAFETY: getpid cannot fail and touches no memory.
        parent: unsafe { libc::getpid() },
        error_fd: error_write.as_raw_fd(),
    };
    let arg = &args as *const ChildArgs as *mut c_void;
    let blocked = block_all_signals().map_err(SpawnError::setup)?;
    // SAFETY: `child` only reads `args` and calls async-signal-safe system calls;
    // `args`, everything it points to and `stack` outlive the child's use of them,
    // because both clones suspend this thread until the child has called exec or
    // exited; sharing our memory, the child writes only to its own stack.
    let cloned = unsafe {
        match into {
            Some(dir) => clone_into_cgroup(child, arg, &stack, dir),
            None => clone_vfork(child, arg, &stack).map(IntoCgroup::Cloned),
        }
    };
    restore_signals(&blocked);
    let pid = match cloned.map_err(SpawnError::setup)? {
        IntoCgroup::Cloned(pid) => pid,
        IntoCgroup::Unsupported => return Ok(None),
    };
    drop(error_write);
    match read_failure(&error_read) {
        None => Ok(Some(pid)),
        Some(failure) => {
            // The child exited without executing: reap it here, it is ours.
            let _ = super::reap(pid);
            Err(failure)
        }
    }
}

/// The `cgroup.procs` file of the cgroup directory `dir`, open for writing.
fn open_procs(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: openat reads a NUL-terminated name relative to an open directory.
    let fd = check(
        unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        }
        .into(),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The child, between clone and exec; for a detached program, its starter.
extern "C" fn child(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `spawn` passed a pointer to a live ChildArgs.
    let args = unsafe { &*(arg as *const ChildArgs) };
    if !args.detached_stack.is_null() {
        // SAFETY: `spawn` made the stack for this, and keeps it alive.
        let stack = unsafe { &*args.detached_stack };
        start_detached(args, stack);
    }
    let (step, errno) = match set_up(args) {
        Ok(()) => {
            // SAFETY: the pointers are NUL-terminated strings and null-terminated
            // arrays of them, prepared by `spawn`.
            unsafe { libc::execve(args.program, args.argv, args.envp) };
            (SpawnStep::Exec, last_errno())
        }
        Err(failed) => failed,
    };
    fail(args, step, errno)
}

/// The starter of a detached program: leads a group of its own (so that the
/// reaper's group kill, when it reaps the starter, reaches nothing else), starts
/// the program's child as it was started itself, and exits once that child has
/// executed (or failed, and said so). The child runs [`child`] again, without a
/// detached stack: it is the one that sets up and executes the program.
fn start_detached(args: &ChildArgs, stack: &Stack) -> ! {
    // SAFETY: setpgid takes integers.
    if let Err(errno) = syscall_ok(unsafe { libc::setpgid(0, 0) }.into()) {
        fail(args, SpawnStep::Setup, errno);
    }
    let program = ChildArgs {
        detached_stack: std::ptr::null(),
        ..*args
    };
    // SAFETY: as for the starter's own clone: `program` and `stack` live in this
    // frame or the parent's, both of which outlive the child's use (CLONE_VFORK
    // suspends this starter until the child has executed or exited).
    let started = unsafe { clone_vfork(child, &program as *const ChildArgs as *mut c_void, stack) };
    match started {
        // The child reported any failure itself.
        // SAFETY: exits without running anything of the parent's.
        Ok(_) => unsafe { libc::_exit(0) },
        Err(e) => fail(
            args,
            SpawnStep::Setup,
            e.raw_os_error().unwrap_or(libc::EINVAL),
        ),
    }
}

/// Writes the failed step and `errno` to the error pipe and exits.
fn fail(args: &ChildArgs, step: SpawnStep, errno: libc::c_int) -> ! {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&(step as i32).to_ne_bytes());
    bytes[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes eight bytes from a live array to the error pipe, then exits
    // without running anything of the parent's (no atexit handlers, no flushing).
    unsafe {
        libc::write(args.error_fd, bytes.as_ptr() as *const c_void, bytes.len());
        libc::_exit(127)
    }
}

/// Every step before exec; the step that fails first, with its errno.
fn set_up(args: &ChildArgs) -> Result<(), (SpawnStep, libc::c_int)> {
    let at = |step| move |errno| (step, errno);
    set_up_process(args).map_err(at(SpawnStep::Setup))?;
    if let Some((uid, gid)) = args.credentials {
        set_credentials(uid, gid, args.groups, args.group_count)
            .map_err(at(SpawnStep::Credentials))?;
    }
    // As the task's user, so that the directory's permissions apply to it.
    if !args.dir.is_null() {
        // SAFETY: `dir` is a NUL-terminated string.
        let entered = unsafe { libc::chdir(args.dir) };
        syscall_ok(entered.into()).map_err(at(SpawnStep::Chdir))?;
    }
    close_the_rest(args);
    let empty: u64 = 0;
    let none = std::ptr::null_mut::<u64>();
    // SAFETY: an empty kernel signal set of 8 bytes, read by the kernel.
    let unblocked = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            none,
            8usize,
        )
    };
    syscall_ok(unblocked).map_err(at(SpawnStep::Setup))
}

/// Signals, process group, cgroups, parent death, limits and stdio.
fn set_up_process(args: &ChildArgs) -> Result<(), libc::c_int> {
    let zero = 0 as libc::c_long;
    // Handlers of the host must never run here, and ignored signals would be
    // inherited through exec: every signal back to its default.
    for signal in (1..=SIGNALS).filter(|s| *s != libc::SIGKILL && *s != libc::SIGSTOP) {
        set_default_disposition(signal);
    }
    if args.tie == Tie::Detached {
        // SAFETY: setsid takes nothing; the child leads no group (its starter
        // does), so it can lead a new session.
        syscall_ok(unsafe { libc::setsid() }.into())?;
    } else {
        // SAFETY: setpgid takes integers; (0, 0) makes the child lead its own group.
        syscall_ok(unsafe { libc::setpgid(0, 0) }.into())?;
    }
    for i in 0..args.cgroup_count {
        // SAFETY: `cgroups` holds `cgroup_count` descriptors.
        let fd = unsafe { *args.cgroups.add(i) };
        // "0" moves the writing process.
        // SAFETY: writes one byte from a static string to a descriptor.
        let written = unsafe { libc::write(fd, b"0".as_ptr() as *const c_void, 1) };
        syscall_ok(written as libc::c_long)?;
    }
    if args.tie == Tie::DiesWithParent {
        // SAFETY: prctl with integer arguments.
        let asked = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, zero, zero, zero) };
        syscall_ok(asked.into())?;
        // The parent may have died before the request was made.
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != args.parent {
            return Err(libc::ESRCH);
        }
    }
    for i in 0..args.rlimit_count {
        // SAFETY: `rlimits` holds `rlimit_count` entries.
        let (resource, limit) = unsafe { &*args.rlimits.add(i) };
        // SAFETY: setrlimit reads a valid rlimit.
        syscall_ok(unsafe { libc::setrlimit(*resource, limit) }.into())?;
    }
    for (target, &source) in args.stdio.iter().enumerate() {
        // SAFETY: dup2 takes integers; the source is open, and above 2.
        syscall_ok(unsafe { libc::dup2(source, target as libc::c_int) }.into())?;
    }
    for i in 0..args.extra_count {
        // SAFETY: `extra` holds `extra_count` descriptors, each above every target.
        let source = unsafe { *args.extra.add(i) };
        // SAFETY: dup2 takes integers; the copy it makes is not close-on-exec.
        syscall_ok(unsafe { libc::dup2(source, 3 + i as libc::c_int) }.into())?;
    }
    if args.foreground {
        // Allowed from a background group because SIGTTOU is blocked here; a
        // stdin that is no terminal (ENOTTY) has no foreground to take.
        // SAFETY: getpgrp and ioctl(TIOCSPGRP) take integers and a live pid_t.
        unsafe {
            let group = libc::getpgrp();
            libc::ioctl(0, libc::TIOCSPGRP, &group as *const libc::pid_t);
        }
    }
    Ok(())
}

/// Marks every descriptor from `first_closed` on close-on-exec, so that none
/// reaches the program: with one `close_range` where the kernel has it (5.11),
/// else one by one up to the open-file limit.
fn close_the_rest(args: &ChildArgs) {
    let (first, all) = (args.first_closed as libc::c_uint, libc::c_uint::MAX);
    // SAFETY: close_range takes integers; CLOEXEC closes nothing now.
    let marked =
        unsafe { libc::syscall(libc::SYS_close_range, first, all, libc::CLOSE_RANGE_CLOEXEC) };
    if marked == 0 {
        return;
    }
    for fd in args.first_closed..args.fd_limit {
        // SAFETY: fcntl with integers; a descriptor that is not open fails EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Sets the supplementary groups (`count` of them at `groups`), then takes `gid`
/// and `uid`, with raw system calls (see the module docs for why not the C
/// library's wrappers).
fn set_credentials(
    uid: u32,
    gid: u32,
    groups: *const libc::gid_t,
    count: usize,
) -> Result<(), libc::c_int> {
    // SAFETY: setgroups reads `count` gids from `groups`, which the parent keeps
    // alive; the set-id calls take integers.
    unsafe {
        syscall_ok(libc::syscall(libc::SYS_setgroups, count, groups))?;
        syscall_ok(libc::syscall(libc::SYS_setgid, gid as libc::c_long))?;
        syscall_ok(libc::syscall(libc::SYS_setuid, uid as libc::c_long))
    }
}

/// Sets `signal`'s disposition to `SIG_DFL` with the raw system call: the C
/// library's wrapper refuses the two real-time signals it keeps for itself, and
/// its `posix_spawn` leaves those ignored in every child of a threaded program.
/// The kernel's `struct sigaction` is at most four words on every architecture,
/// and all zeros means `SIG_DFL`, no flags, an empty mask.
fn set_default_disposition(signal: libc::c_int) {
    let default = [0u64; 4];
    let old = std::ptr::null_mut::<u64>();
    // SAFETY: reads a zeroed structure of the kernel's size at most; the last
    // argument is the kernel's signal-set size. Failure (a signal that cannot be
    // changed) leaves the disposition as it is, which is all we can do.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            default.as_ptr(),
            old,
            8usize,
        )
    };
}

fn syscall_ok(ret: libc::c_long) -> Result<(), libc::c_int> {
    if ret == -1 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

fn last_errno() -> libc::c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL)
}

/// Pointers to `strings` followed by a null pointer, as exec wants them.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    let pointers = strings.iter().map(|s| s.as_ptr());
    pointers.chain(std::iter::once(std::ptr::null())).collect()
}

/// A copy of `fd` numbered `floor` or above, close-on-exec.
fn above(fd: &OwnedFd, floor: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor numbered `floor` or above.
    let copy = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) }.into())?;
    // SAFETY: the new descriptor is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

/// The soft open-file limit, at most 65536: where the one-by-one fallback of
/// [`close_the_rest`] stops.
fn open_file_limit() -> RawFd {
    // SAFETY: rlimit is plain data; getrlimit writes it whole or fails.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    RawFd::try_from(limit.rlim_cur.min(65536)).unwrap_or(65536)
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What a failed child wrote, or `None` once the pipe closed empty (exec
/// succeeded and closed the child's end).
fn read_failure(pipe: &OwnedFd) -> Option<SpawnError> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: reads at most eight bytes into a live array.
        let n = unsafe { libc::read(pipe.as_raw_fd(), bytes.as_mut_ptr() as *mut c_void, 8) };
        match n {
            8 => break,
            -1 if last_errno() == libc::EINTR => continue,
            _ => return None,
        }
    }
    let word =
        |at: usize| i32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let step = SpawnStep::ALL
        .into_iter()
        .find(|s| *s as i32 == word(0))
        .unwrap_or(SpawnStep::Setup);
    Some(SpawnError {
        step,
        error: io::Error::from_raw_os_error(word(4)),
    })
}

/// Blocks every signal in this thread (the C library's internal ones too, hence the
/// raw call); returns the mask to restore.
fn block_all_signals() -> io::Result<u64> {
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: kernel signal sets of 8 bytes, read from `all` and written to `old`.
    check(unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    })?;
    Ok(old)
}

fn restore_signals(mask: &u64) {
    // SAFETY: a kernel signal set of 8 bytes, read by the kernel.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            mask as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;

    /// A new v2 cgroup directory of this test's own, where the host has a v2
    /// hierarchy we may write to.
    fn test_cgroup(name: &str) -> Option<PathBuf> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mountinfo.lines().find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            fs.starts_with("cgroup2 ").then(|| PathBuf::from(point))
        })?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|line| line.strip_prefix("0::"))?;
        let dir = mount
            .join(own.trim_start_matches('/'))
            .join(format!("{name}-{}", std::process::id()));
        fs::create_dir(&dir).ok().map(|()| dir)
    }

    /// Runs `cat /proc/self/cgroup`, joined to the cgroups as `launch` is told;
    /// returns what it printed, or None when cloning into a cgroup is unsupported.
    fn own_cgroups(into: Option<BorrowedFd<'_>>, joins: &[RawFd]) -> Option<String> {
        let (mut output, write) = pipe().map(|(r, w)| (File::from(r), w)).unwrap();
        let null = || OwnedFd::from(File::open("/dev/null").unwrap());
        let plan = SpawnPlan {
            program: c"/bin/cat".into(),
            argv: vec![c"cat".into(), c"/proc/self/cgroup".into()],
            env: vec![],
            dir: None,
            credentials: None,
            groups: vec![],
            rlimits: vec![],
            stdio: [null(), write, null()],
            extra_fds: vec![],
            foreground: false,
            cgroups: CgroupJoin::default(),
            tie: Tie::DiesWithParent,
        };
        let pid = launch(&plan, into, joins).unwrap()?;
        drop(plan);
        let mut printed = String::new();
        output.read_to_string(&mut printed).unwrap();
        assert!(super::super::reap(pid).unwrap().0.success());
        Some(printed)
    }

    fn linux_at_least(major: u32, minor: u32) -> bool {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        (numbers.next().unwrap(), numbers.next().unwrap_or(0)) >= (major, minor)
    }

    #[test]
    fn a_program_starts_in_its_cgroup_cloned_into_it_or_writing_itself_in() {
        let Some(dir) = test_cgroup("swarmexec-spawn-test") else {
            // No v2 hierarchy of ours: a program joins none and still starts.
            assert!(own_cgroups(None, &[]).unwrap().contains("0::"));
            return;
        };
        let name = format!("/{}\n", dir.file_name().unwrap().to_str().unwrap());
        let cgroup = OwnedFd::from(File::open(&dir).unwrap());
        let cloned = own_cgroups(Some(cgroup.as_fd()), &[]);
        let procs = open_procs(cgroup.as_fd()).unwrap();
        let written = own_cgroups(None, &[procs.as_raw_fd()]);
        fs::remove_dir(&dir).unwrap();
        match cloned {
            Some(cloned) => assert!(cloned.contains(&name), "{cloned}"),
            // Cloning into a cgroup needs x86_64 and Linux 5.7.
            None => assert!(!cfg!(target_arch = "x86_64") || !linux_at_least(5, 7)),
        }
        let written = written.unwrap();
        assert!(written.contains(&name), "{written}");
    }

    #[test]
    fn a_detached_program_leads_its_own_session_and_is_no_child_of_ours() {
        let (input, stdin) = pipe().unwrap();
        let (mut output, stdout) = pipe().map(|(r, w)| (File::from(r), w)).unwrap();
        let stderr = OwnedFd::from(File::create("/dev/null").unwrap());
        // Says its pid, then waits for its stdin to close.
        let plan = SpawnPlan {
            program: c"/bin/sh".into(),
            argv: vec![c"sh".into(), c"-c".into(), c"echo $$; exec cat".into()],
            env: vec![],
            dir: None,
            credentials: None,
            groups: vec![],
            rlimits: vec![],
            stdio: [input, stdout, stderr],
            extra_fds: vec![],
            foreground: false,
            cgroups: CgroupJoin::default(),
            tie: Tie::Detached,
        };
        let starter = spawn(&plan).unwrap();
        drop(plan);
        // The starter is ours, and gone once the program has executed.
        assert!(super::super::reap(starter).unwrap().0.success());
        let mut pid = [0u8; 16];
        let n = output.read(&mut pid).unwrap();
        let pid = std::str::from_utf8(&pid[..n]).unwrap().trim().to_owned();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        drop(stdin);
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let (parent, session) = (fields[1], fields[3]);
        assert_ne!(parent, std::process::id().to_string(), "{stat}");
        assert_ne!(parent, starter.to_string(), "{stat}");
        assert_eq!(session, pid, "{stat}");
    }
}
