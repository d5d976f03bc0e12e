//! Which executor owns a task directory or a cgroup, and whether it still lives.
//!
//! Ownership is a lock, not a pid. A pid says nothing across pid namespaces
//! (containers, `unshare -p`, bwrap, nspawn): two executors there may have the same
//! pid, and each sees the other's as dead or as someone else. So every executor
//! has a random [`Owner`] name, and holds an exclusive `flock` for its whole life
//! on one file or directory per place it keeps things: `owners/<owner>` in its
//! state directory, and its own cgroup directory `<base>/<owner>` in each
//! hierarchy. The kernel drops the lock when the process dies, however it dies;
//! an owner is dead exactly when its lock can be taken, and whoever takes it may
//! clean up (holding it, so that no two executors clean up the same place).

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::sys::fs::{try_lock, Dir, Lock};

/// The name of one executor: 16 hex digits, random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner(u64);

impl Owner {
    /// A new owner, unlike any other executor's, here or in another namespace.
    pub(crate) fn new() -> Owner {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Each RandomState is keyed from the OS's randomness: hashing a moment
        // with it makes a name no other process will make.
        let moment = (
            std::process::id(),
            SystemTime::now(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        );
        Owner(RandomState::new().hash_one(moment))
    }

    /// The owner a name written by [`Display`](fmt::Display) stands for.
    pub(crate) fn parse(name: &str) -> Option<Owner> {
        let hex = name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        hex.then(|| u64::from_str_radix(name, 16).ok().map(Owner))
            .flatten()
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A live owner's hold on one of its places; dropped, the place may be taken.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _held: std::os::fd::OwnedFd,
}

impl OwnerLock {
    /// Takes the lock on `fd`, the place `name` in `parent`, just made for this
    /// owner. Fails when another executor, taking it for a dead owner's, removed it
    /// meanwhile: the caller makes it again.
    pub(crate) fn take(parent: &Dir, name: &OsStr, fd: impl AsFd) -> io::Result<OwnerLock> {
        let fd = fd.as_fd();
        if try_lock(fd)? == Lock::Held || !parent.holds(name, fd)? {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(OwnerLock {
            _held: fd.try_clone_to_owned()?,
        })
    }
}

/// The lock of a dead owner's place, taken: while it is held, its taker alone
/// cleans up. `None` when the owner lives.
pub(crate) fn take_if_dead(fd: impl AsFd) -> io::Result<Option<OwnerLock>> {
    let fd = fd.as_fd();
    Ok(match try_lock(fd)? {
        Lock::Taken => Some(OwnerLock {
            _held: fd.try_clone_to_owned()?,
        }),
        Lock::Held => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_differ() {
        let (a, b) = (Owner::new(), Owner::new());
        assert_ne!(a, b);
        assert_eq!(Owner::parse(&a.to_string()), Some(a));
        for bad in [
            "",
            "12-34-5",
            "0123456789abcdeF",
            "0123456789abcdef0",
            "0123456789abcdeg",
        ] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_place_is_dead_once_its_lock_is_let_go() {
        let top = tempfile::tempdir().unwrap();
        let parent = Dir::open(top.path()).unwrap();
        let place = parent.make_dir(OsStr::new("place"), 0o700).unwrap();
        let held = OwnerLock::take(&parent, OsStr::new("place"), &place).unwrap();
        let other = parent.open_dir(OsStr::new("place")).unwrap();
        assert!(take_if_dead(&other).unwrap().is_none(), "alive while held");
        drop((held, place));
        assert!(take_if_dead(&other).unwrap().is_some(), "dead once let go");

        // A place removed under its maker (by a cleaner) is not taken.
        let again = parent.make_dir(OsStr::new("gone"), 0o700).unwrap();
        parent.remove(OsStr::new("gone"), true).unwrap();
        assert!(OwnerLock::take(&parent, OsStr::new("gone"), &again).is_err());
    }
}
