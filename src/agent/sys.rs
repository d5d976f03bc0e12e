//! The agent's one libc call, behind a small safe function.

/// How many CPUs this process may run on: its affinity mask, which is cheap to
/// read (the standard library's `available_parallelism` also reads cgroup quotas,
/// which costs a short-lived host more than the whole answer is worth here).
#[cfg(target_os = "linux")]
pub(super) fn cpus() -> usize {
    // SAFETY: cpu_set_t is plain data for which all-zero bytes are a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let read =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if read != 0 {
        return 1;
    }
    // SAFETY: `set` was filled in by sched_getaffinity.
    let count = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(count).unwrap_or(1).max(1)
}

/// How many CPUs this process may run on.
#[cfg(not(target_os = "linux"))]
pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
