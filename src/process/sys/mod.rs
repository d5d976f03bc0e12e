//! Every libc call of the crate, each behind a small safe function (and the one
//! system call libc has no wrapper for, in [`clone`]).
//!
//! Nothing here keeps state; the invariants that make the calls safe to *use*
//! (above all, never signalling a pid that may have been recycled) are kept by
//! [`super::supervisor::Process`], which is the only caller of [`kill_group`] and
//! [`reap`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use crate::api::{Rlimit, RlimitResource};

mod clone;
pub(crate) mod fs;
mod spawn;

pub(crate) use spawn::{pipe, spawn, CgroupJoin, SpawnError, SpawnPlan, SpawnStep, Tie};

/// Converts a `-1` return into the thread's `errno`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A wake-up that never blocks its sender: an eventfd, whose count only grows
/// until read (a full count is already a wake-up).
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes an initial count and flags, and returns a new
        // descriptor or -1.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }.into())?;
        // SAFETY: a new descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
    }

    /// Makes it readable. Never blocks: a count that cannot grow (`EAGAIN`) is
    /// readable already.
    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the eight bytes of a live u64.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Takes every wake-up so far.
    pub(crate) fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads eight bytes into a live u64; EAGAIN when there were none.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> libc::c_int {
        self.0.as_raw_fd()
    }
}

/// Why this process's children would not stay ours to reap, if they would not:
/// SIGCHLD ignored or `SA_NOCLDWAIT` set, so that the kernel reaps them itself
/// and their pids may be reused while we still think them ours.
pub(crate) fn children_auto_reaped() -> io::Result<Option<&'static str>> {
    // SAFETY: sigaction is plain data for which all-zero bytes are valid.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `action`.
    check(unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut action) }.into())?;
    Ok(if action.sa_sigaction == libc::SIG_IGN {
        Some("SIGCHLD is ignored (SIG_IGN)")
    } else if action.sa_flags & libc::SA_NOCLDWAIT != 0 {
        Some("SIGCHLD has SA_NOCLDWAIT set")
    } else {
        None
    })
}

/// How many CPUs are online.
pub(crate) fn online_cpus() -> i64 {
    // SAFETY: sysconf takes a name and touches no memory of ours.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    i64::from(cpus.max(1) as i32)
}

/// A pollable descriptor for our child `pid`, readable once it has exited.
///
/// Fails with `ENOSYS` on kernels before 5.3. The caller must not have reaped `pid`:
/// an unreaped child (even a zombie) keeps its pid, so the descriptor is for it.
pub(super) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1;
    // it touches no memory of ours.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: on success the kernel returned a new descriptor (always close-on-exec)
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sends `signal` to every process of the group `pgid`.
///
/// Only sound while the group's leader is our unreaped child: its pid, which is the
/// group id, cannot be given to another process until it is reaped.
pub(super) fn kill_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: killpg takes two integers and touches no memory of ours.
    check(unsafe { libc::killpg(pgid, signal) }.into()).map(drop)
}

/// Sends `signal` to our child `pid`, under the same condition as
/// [`kill_group`]: it is unreaped, so the pid is still its own.
pub(super) fn kill_child(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes two integers and touches no memory of ours.
    check(unsafe { libc::kill(pid, signal) }.into()).map(drop)
}

/// True while `pid` is stopped (state `T` or `t` in `/proc/<pid>/stat`).
pub(super) fn is_stopped(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("T" | "t"))
}

/// Makes this process a child subreaper: orphaned descendants become its
/// children instead of init's.
pub(super) fn become_subreaper() -> io::Result<()> {
    let one = 1 as libc::c_ulong;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, one, 0, 0, 0) }.into()).map(drop)
}

/// This process's children, from every thread's `children` file in procfs
/// (a child belongs to the thread that made it, or that adopted it).
pub(super) fn children() -> Vec<libc::pid_t> {
    let Ok(threads) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("children")).ok())
        .flat_map(|list| {
            let pids: Vec<libc::pid_t> = list
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            pids
        })
        .collect()
}

/// Reaps our child `pid` if it has exited (its status is dropped); true if it
/// did. For children that are no task of ours (see the `orphans` module).
pub(super) fn reap_if_exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data for which all-zero bytes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG;
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let reaped = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: waitid filled `info` (or left it zeroed under WNOHANG).
    reaped == 0 && unsafe { info.si_pid() } != 0
}

/// What the kernel counted for a reaped child (and the children it waited for).
#[derive(Clone, Copy, Debug)]
pub(super) struct Rusage {
    /// User and system CPU time.
    pub(crate) cpu: std::time::Duration,
    /// The most memory resident at once.
    pub(crate) max_rss_bytes: u64,
}

/// Reaps our child `pid`, blocking until it exits.
pub(super) fn reap(pid: libc::pid_t) -> io::Result<(ExitStatus, Rusage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid and writable for the call.
        match check(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }.into()) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let time = |t: libc::timeval| {
        std::time::Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000)
    };
    let usage = Rusage {
        cpu: time(usage.ru_utime) + time(usage.ru_stime),
        // Linux counts it in KiB.
        max_rss_bytes: usage.ru_maxrss.max(0) as u64 * 1024,
    };
    Ok((ExitStatus::from_raw(status), usage))
}

/// SIGKILLs `pid`, a member of a frozen cgroup of ours: frozen, it can neither
/// exit nor be reaped, so the pid read from the cgroup is still its own.
pub(super) fn kill_frozen(pid: libc::pid_t) {
    // SAFETY: kill takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// True once our child `pid` has exited, without reaping it: for kernels without
/// pidfds, where exits are found by asking.
pub(super) fn has_exited(pid: libc::pid_t) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data for which all-zero bytes are a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    check(unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) }.into())?;
    // SAFETY: waitid filled `info` (or left it zeroed under WNOHANG), so reading the
    // pid field reads initialised memory.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits until one of `fds` is ready or `timeout_ms` passes (-1: no limit); returns how
/// many are ready. An interrupted wait reports none.
pub(super) fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `fds`, a valid, writable slice.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    match check(ret.into()) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

/// A `pollfd` asking whether `fd` is readable.
pub(super) fn readable(fd: &impl AsRawFd) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// True when this process may create `dir`: it exists and is writable, or the
/// nearest of its ancestors that exists is.
pub(super) fn may_create_in(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else {
        return false;
    };
    let Ok(path) = CString::new(existing.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}

/// The effective user id of this process.
pub(super) fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The effective group id of this process.
pub(super) fn effective_gid() -> u32 {
    // SAFETY: getegid cannot fail and touches no memory.
    unsafe { libc::getegid() }
}

/// The groups the group database gives user `name` whose primary group is
/// `gid` (`gid` among them), as `initgroups` would set them.
pub(super) fn group_list(name: &str, gid: u32) -> io::Result<Vec<u32>> {
    let name = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut count = groups.len() as libc::c_int;
        // SAFETY: `name` is a NUL-terminated string, and `groups` has room for
        // `count` entries; the call writes at most that many, and sets `count`.
        let ret =
            unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        let count = usize::try_from(count).unwrap_or(0);
        if ret >= 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        // Too small: `count` says how many there are (grow anyway, should it not).
        if groups.len() >= 1 << 16 {
            return Err(io::Error::other("more than 65536 groups"));
        }
        let grown = count.max(groups.len() * 2).min(1 << 16);
        groups.resize(grown, 0);
    }
}

/// A user's entry in the system's user database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserEntry {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) name: String,
    pub(crate) home: String,
}

/// The user `name`, through the system's user database.
pub(crate) fn user_by_name(name: &str) -> io::Result<Option<UserEntry>> {
    let name = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    lookup(name.as_ptr(), libc::getpwnam_r, read_user)
}

/// The user with id `uid`, through the system's user database.
pub(crate) fn user_by_uid(uid: u32) -> io::Result<Option<UserEntry>> {
    lookup(uid, libc::getpwuid_r, read_user)
}

fn read_user(user: &libc::passwd) -> UserEntry {
    // SAFETY: the C library filled in the entry with NUL-terminated strings (or
    // null pointers) that live in the lookup's buffer for the duration of this read.
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            return String::new();
        }
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    UserEntry {
        uid: user.pw_uid,
        gid: user.pw_gid,
        name: text(user.pw_name),
        home: text(user.pw_dir),
    }
}

/// The gid of the group `name`, through the system's group database.
pub(super) fn lookup_group(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    lookup(name.as_ptr(), libc::getgrnam_r, |group: &libc::group| {
        group.gr_gid
    })
}

/// The shape of `getpwnam_r`, `getpwuid_r` and `getgrnam_r`, by key type.
type GetBy<K, E> =
    unsafe extern "C" fn(K, *mut E, *mut libc::c_char, libc::size_t, *mut *mut E) -> libc::c_int;

/// Looks `key` up with a reentrant `get*_r` function, growing its buffer while it
/// reports `ERANGE`, and reads the answer with `read`. A key that is a pointer must
/// point to a NUL-terminated string for the duration of the call.
fn lookup<K: Copy, E, T>(
    key: K,
    get: GetBy<K, E>,
    read: impl Fn(&E) -> T,
) -> io::Result<Option<T>> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        let mut entry = std::mem::MaybeUninit::<E>::uninit();
        let mut found: *mut E = std::ptr::null_mut();
        // SAFETY: the key is a number or a live NUL-terminated string (callers'
        // CStrings), `entry` and `found` are writable, and `buf` is writable for
        // its length; `get` writes nothing else.
        let ret = unsafe {
            get(
                key,
                entry.as_mut_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match ret {
            0 if found.is_null() => return Ok(None),
            // SAFETY: a zero return with a non-null result means `entry` was filled
            // in, its strings pointing into `buf`, which outlives this read.
            0 => return Ok(Some(read(unsafe { entry.assume_init_ref() }))),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The type `setrlimit` takes a resource as: the C libraries differ.
#[cfg(target_env = "gnu")]
pub(super) type ResourceId = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(super) type ResourceId = libc::c_int;

fn resource_id(resource: RlimitResource) -> ResourceId {
    match resource {
        RlimitResource::AddressSpace => libc::RLIMIT_AS,
        RlimitResource::Core => libc::RLIMIT_CORE,
        RlimitResource::Cpu => libc::RLIMIT_CPU,
        RlimitResource::Data => libc::RLIMIT_DATA,
        RlimitResource::FileSize => libc::RLIMIT_FSIZE,
        RlimitResource::MemLock => libc::RLIMIT_MEMLOCK,
        RlimitResource::NoFile => libc::RLIMIT_NOFILE,
        RlimitResource::NProc => libc::RLIMIT_NPROC,
        RlimitResource::Stack => libc::RLIMIT_STACK,
    }
}

/// The resource number and limits of `limit`, as `setrlimit` takes them; a
/// value beyond what `rlim_t` holds (32 bits on some targets) is no limit.
fn rlimit_of(limit: &Rlimit) -> (ResourceId, libc::rlimit) {
    let value = |v: u64| libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY);
    let value = libc::rlimit {
        rlim_cur: value(limit.soft),
        rlim_max: value(limit.hard),
    };
    (resource_id(limit.resource), value)
}

/// True for the errors that mean a limit was reached (processes or threads, open
/// files, memory): conditions that pass, worth retrying.
pub(super) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

/// An exhaustion error with the limit it reached named; others as they are.
pub(super) fn describe_exhaustion(e: &io::Error) -> String {
    let limit = match e.raw_os_error() {
        Some(libc::EAGAIN) => "process or thread limit reached",
        Some(libc::EMFILE) => "this process's open-file limit reached",
        Some(libc::ENFILE) => "the system's open-file limit reached",
        Some(libc::ENOMEM) => "out of memory",
        _ => return e.to_string(),
    };
    format!("{limit} ({e})")
}
