//! Directories reached by descriptor, never by a path a task could change.
//!
//! A task's user owns its task directory, so anything inside may be swapped for
//! a symbolic link at any moment. A call by path (`chown`, `open`, `remove_dir_all`)
//! resolves that path again each time and follows what it finds; a call relative
//! to an open directory (`openat`, `mkdirat`, `unlinkat` with `O_NOFOLLOW`) acts on
//! the entry itself, and `fchown`/`fchmod` on a descriptor act on the file that was
//! opened, whatever the name points to by then.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::check;

/// An open directory.
#[derive(Debug)]
pub(crate) struct Dir(OwnedFd);

/// What a directory's owner, mode and file system are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirStatus {
    pub(crate) uid: u32,
    pub(crate) mode: u32,
    /// True on a file system that keeps its files in memory (tmpfs, ramfs).
    pub(crate) in_memory: bool,
}

const OPEN_DIR: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd.into())?;
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

impl Dir {
    /// Opens the directory at `path`; its last component must not be a link.
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        let path = c_name(path.as_os_str())?;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        owned(unsafe { libc::open(path.as_ptr(), OPEN_DIR) }).map(Dir)
    }

    /// Opens the directory `name` inside this one, never through a link.
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let name = c_name(name)?;
        // SAFETY: a NUL-terminated name relative to an open directory.
        owned(unsafe { libc::openat(self.raw(), name.as_ptr(), OPEN_DIR) }).map(Dir)
    }

    /// Makes the directory `name` (with `mode`, less the umask) and opens it.
    pub(crate) fn make_dir(&self, name: &OsStr, mode: u32) -> io::Result<Dir> {
        let c = c_name(name)?;
        // SAFETY: a NUL-terminated name relative to an open directory.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }.into())?;
        self.open_dir(name)
    }

    /// Creates the file `name`, which must not exist (a link in its place is
    /// refused, not followed), open for writing, with mode 0600.
    pub(crate) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        self.open_file(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
    }

    /// Opens the file `name` with `flags` (mode 0600 if it creates it), never
    /// through a link.
    pub(crate) fn open_file(&self, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
        let name = c_name(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated name relative to an open directory; the mode is
        // read only with O_CREAT.
        let fd = unsafe { libc::openat(self.raw(), name.as_ptr(), flags, 0o600 as libc::c_uint) };
        owned(fd).map(File::from)
    }

    /// The names in the directory, but `.` and `..`.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        // fdopendir takes the descriptor over, and the listing starts where its
        // offset is: a fresh open of the same directory has its own.
        let own = owned(
            // SAFETY: "." relative to an open directory: the directory itself.
            unsafe { libc::openat(self.raw(), c".".as_ptr(), OPEN_DIR) },
        )?;
        // SAFETY: a valid directory descriptor, which the stream owns from now on.
        let stream = unsafe { libc::fdopendir(own.as_raw_fd()) };
        if stream.is_null() {
            return Err(io::Error::last_os_error());
        }
        std::mem::forget(own);
        let mut names = Vec::new();
        let listed = loop {
            // SAFETY: errno is this thread's; readdir reports its errors only there.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: `stream` is a live directory stream used by this thread only.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let e = io::Error::last_os_error();
                break if e.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // SAFETY: readdir returned an entry whose name is NUL-terminated and
            // valid until the next readdir on this stream.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        };
        // SAFETY: closes the stream (and its descriptor) once; it is not used again.
        unsafe { libc::closedir(stream) };
        listed.map(|()| names)
    }

    /// Removes the entry `name`: a directory (which must be empty) when `dir`,
    /// else a file or link (the link itself, never its target).
    pub(crate) fn remove(&self, name: &OsStr, dir: bool) -> io::Result<()> {
        let name = c_name(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: a NUL-terminated name relative to an open directory.
        check(unsafe { libc::unlinkat(self.raw(), name.as_ptr(), flags) }.into()).map(drop)
    }

    /// Removes `name` and, if it is a directory, everything in it, depth first,
    /// never following a link: a link is removed as an entry. Nothing missing is
    /// no error. Nesting deeper than `depth` levels is refused (each level holds a
    /// descriptor).
    pub(crate) fn remove_tree(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        match self.remove(name, false) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
            Err(e) => return Err(e),
        }
        let inner = match self.open_dir(name) {
            Ok(inner) => inner,
            // Swapped for something else since: remove that instead.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return self.remove(name, false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if depth == 0 {
            return Err(io::Error::other("directories nested too deep to remove"));
        }
        // Taken back first: whoever owned it can add nothing to it from now on,
        // so that the listing below is all there is.
        inner.reclaim()?;
        for entry in inner.names()? {
            inner.remove_tree(&entry, depth - 1)?;
        }
        match self.remove(name, true) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// True while the entry `name` is the file open as `fd` (not a link, nor
    /// another file made in its place since).
    pub(crate) fn holds(&self, name: &OsStr, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let c = c_name(name)?;
        // SAFETY: stat is plain data for which all-zero bytes are valid.
        let (mut entry, mut open): (libc::stat, libc::stat) = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated name relative to an open directory, and a
        // writable stat.
        let found = unsafe {
            libc::fstatat(
                self.raw(),
                c.as_ptr(),
                &mut entry,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(found.into()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            other => other?,
        };
        // SAFETY: a writable stat.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut open) }.into())?;
        Ok(entry.st_dev == open.st_dev && entry.st_ino == open.st_ino)
    }

    /// Another descriptor of the same open directory.
    pub(crate) fn try_clone(&self) -> io::Result<Dir> {
        self.0.try_clone().map(Dir)
    }

    /// Takes the directory for this process's user, mode 0700: whoever owned it
    /// can no longer add to it, or rename what is in it.
    pub(crate) fn reclaim(&self) -> io::Result<()> {
        // SAFETY: geteuid and getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        self.set_owner(uid, gid)?;
        // SAFETY: fchmod takes a descriptor and a mode.
        check(unsafe { libc::fchmod(self.raw(), 0o700) }.into()).map(drop)
    }

    /// Gives the directory to `uid` and `gid`.
    pub(crate) fn set_owner(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::fchown(&self.0, Some(uid), Some(gid))
    }

    /// Its owner, mode and file system.
    pub(crate) fn status(&self) -> io::Result<DirStatus> {
        // SAFETY: stat and statfs are plain data for which all-zero bytes are valid.
        let (mut stat, mut fs): (libc::stat, libc::statfs) = unsafe { std::mem::zeroed() };
        // SAFETY: both structures are writable for the calls.
        check(unsafe { libc::fstat(self.raw(), &mut stat) }.into())?;
        // SAFETY: as above.
        check(unsafe { libc::fstatfs(self.raw(), &mut fs) }.into())?;
        // The kernel's magic numbers, as statfs(2) lists them.
        const TMPFS: u32 = 0x0102_1994;
        const RAMFS: u32 = 0x8584_58f6;
        // Its type differs between targets; the magic numbers are 32 bits.
        let fs_type = fs.f_type as u32;
        Ok(DirStatus {
            uid: stat.st_uid,
            mode: stat.st_mode,
            in_memory: fs_type == TMPFS || fs_type == RAMFS,
        })
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// How [`try_lock`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Taken: it is held until every descriptor of that open file is closed.
    Taken,
    /// Someone else holds it.
    Held,
}

/// Takes an exclusive `flock` on `fd` (a file or directory) without waiting.
/// Locks belong to the open file, so they hold across processes, pid namespaces
/// and containers that share the file.
pub(crate) fn try_lock(fd: BorrowedFd<'_>) -> io::Result<Lock> {
    loop {
        // SAFETY: flock takes a descriptor and flags.
        match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }.into()) {
            Ok(_) => return Ok(Lock::Taken),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(Lock::Held),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn trees_are_removed_without_following_links() {
        let top = tempfile::tempdir().unwrap();
        let outside = top.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let root = Dir::open(top.path()).unwrap();
        let tree = root.make_dir(OsStr::new("tree"), 0o700).unwrap();
        let deeper = tree.make_dir(OsStr::new("a"), 0o700).unwrap();
        deeper.create_file(OsStr::new("f")).unwrap();
        std::os::unix::fs::symlink(&outside, top.path().join("tree/a/link")).unwrap();
        std::os::unix::fs::symlink(&outside, top.path().join("tree/dirlink")).unwrap();
        assert!(
            tree.create_file(OsStr::new("dirlink")).is_err(),
            "a link is never written through"
        );
        assert_eq!(tree.names().unwrap().len(), 2);

        assert!(root.remove_tree(OsStr::new("tree"), 1).is_err(), "too deep");
        root.remove_tree(OsStr::new("tree"), 8).unwrap();
        assert!(!top.path().join("tree").exists());
        assert!(outside.join("keep").exists());
        root.remove_tree(OsStr::new("tree"), 8).unwrap();
        let status = root.status().unwrap();
        assert_eq!(status.uid, std::fs::metadata(top.path()).unwrap().uid());
    }

    #[test]
    fn a_lock_is_held_against_every_other_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = Dir::open(dir.path()).unwrap();
        let second = Dir::open(dir.path()).unwrap();
        assert_eq!(try_lock(first.as_fd()).unwrap(), Lock::Taken);
        assert_eq!(try_lock(second.as_fd()).unwrap(), Lock::Held);
        drop(first);
        assert_eq!(try_lock(second.as_fd()).unwrap(), Lock::Taken);
    }
}
