//! The two ways the child is cloned onto a stack of its own: `clone` (everywhere),
//! and `clone3` straight into a v2 cgroup, where the kernel and the CPU allow it.
//!
//! Why `clone3`: a process that joins a cgroup by writing to `cgroup.procs` takes
//! the kernel's cgroup-migration lock for writing, which waits for an RCU grace
//! period; unless another migration just did so, that is about 9 ms on a quiet
//! 2-CPU host, four times the rest of a short run. A process cloned with
//! `CLONE_INTO_CGROUP` starts in the cgroup and takes that lock only for reading.
//!
//! Why assembly: the C library has no `clone3` wrapper that starts a function on
//! a new stack (`clone` takes no cgroup), and the generic `syscall` wrapper would
//! return into its caller's frame on a stack that is not the caller's. So the
//! system call, and the child's call of its entry function on the new stack, are a
//! few instructions of inline assembly (x86_64 only; elsewhere the cgroup is
//! joined by writing, as before).

use std::ffi::c_void;
use std::io;
use std::mem::MaybeUninit;

/// What the child runs, on its own stack: the argument is `arg`; it must not
/// return (it calls `exec` or `_exit`).
pub(super) type Entry = extern "C" fn(*mut c_void) -> libc::c_int;

/// The child's stack: 16-byte aligned, `size` bytes from `base` up.
pub(super) struct Stack {
    base: *mut u8,
    size: usize,
}

impl Stack {
    /// The 16-byte aligned part of `memory`, which must outlive the child's use.
    /// Nothing is read from it that the child did not write: it needs no zeroing,
    /// and pages the child never touches are never faulted in.
    pub(super) fn within(memory: &mut [MaybeUninit<u8>]) -> Stack {
        let start = memory.as_mut_ptr() as usize;
        let base = (start + 15) & !15;
        let size = (memory.len().saturating_sub(base - start)) & !15;
        Stack {
            base: base as *mut u8,
            size,
        }
    }

    fn top(&self) -> *mut c_void {
        self.base.wrapping_add(self.size) as *mut c_void
    }
}

/// Clones a child that shares this process's memory and runs `entry(arg)` on
/// `stack`; this thread is suspended until the child has called `exec` or exited.
///
/// # Safety
/// `entry` may only read `arg` and make async-signal-safe system calls; `arg`, what
/// it points to and `stack` must stay valid until this returns.
pub(super) unsafe fn clone_vfork(
    entry: Entry,
    arg: *mut c_void,
    stack: &Stack,
) -> io::Result<libc::pid_t> {
    // SAFETY: the caller's contract; the flags make the child share our memory
    // and suspend this thread until the child no longer uses `stack` or `arg`.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    super::check(pid.into()).map(|pid| pid as libc::pid_t)
}

/// The result of [`clone_into_cgroup`].
pub(super) enum IntoCgroup {
    /// The child's pid: it started in the cgroup.
    Cloned(libc::pid_t),
    /// This kernel, CPU or a seccomp policy offers no `clone3` with
    /// `CLONE_INTO_CGROUP`: use [`clone_vfork`] and join by writing.
    Unsupported,
}

/// As [`clone_vfork`], the child starting in the v2 cgroup whose directory is open
/// as `cgroup`. Errors that a write to `cgroup.procs` would give too (a cgroup
/// with controllers of its own, no permission) are returned as such.
///
/// # Safety
/// As for [`clone_vfork`].
pub(super) unsafe fn clone_into_cgroup(
    entry: Entry,
    arg: *mut c_void,
    stack: &Stack,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> io::Result<IntoCgroup> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::os::fd::AsRawFd;
        let args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base as u64,
            stack_size: stack.size as u64,
            cgroup: cgroup.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: the caller's contract, as for clone_vfork; `args` is a complete
        // clone_args of the size passed.
        let ret = unsafe { clone3(&args, entry, arg) };
        match ret {
            pid if pid >= 0 => Ok(IntoCgroup::Cloned(pid as libc::pid_t)),
            // No clone3 (before 5.3, or refused by a seccomp policy), no cgroup
            // field (before 5.7), or a flag this kernel does not know.
            errno
                if [libc::ENOSYS, libc::E2BIG, libc::EINVAL, libc::EPERM]
                    .contains(&(-errno as libc::c_int)) =>
            {
                Ok(IntoCgroup::Unsupported)
            }
            errno => Err(io::Error::from_raw_os_error(-errno as libc::c_int)),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (entry, arg, stack, cgroup);
        Ok(IntoCgroup::Unsupported)
    }
}

/// `CLONE_INTO_CGROUP`: a `clone3` flag, beyond the 32 bits `clone` takes.
#[cfg(target_arch = "x86_64")]
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, with `cgroup`: 88 bytes).
#[cfg(target_arch = "x86_64")]
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(args)`: returns the child's pid or `-errno` in the parent; the child,
/// on the stack `args` gives, calls `entry(arg)` and exits with what it returns.
///
/// # Safety
/// As for [`clone_vfork`]; `args` must ask for `CLONE_VM | CLONE_VFORK` and give
/// a 16-byte aligned stack.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3(args: &CloneArgs, entry: Entry, arg: *mut c_void) -> i64 {
    let ret: i64;
    // SAFETY: the system call reads `args` only. In the parent it returns with rax
    // set and rcx and r11 clobbered, as declared. The child resumes after the
    // `syscall` with our registers but its own stack pointer (the top of the
    // stack `args` gives, 16-byte aligned), so `call` enters `entry` with the
    // alignment the ABI wants; r12 and r13 survive the system call and carry the
    // function and its argument. The child never comes back to this frame: it
    // exits (SYS_exit) if `entry` returns at all. rbp is cleared so that nothing
    // walks from the child's frames into ours.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}
