//! Task files: the state directory, each task's directory in it, and the secrets
//! and configs written there. Nothing else in the crate writes or deletes them.
//!
//! A task's user owns its directory once the task has it, so from then on anything
//! inside may be a link it planted. Everything here goes through open directories
//! (see [`sys::fs`](super::sys::fs)): a task directory is made and filled as root,
//! each file created with `O_EXCL | O_NOFOLLOW`, given its owner and mode through
//! its descriptor, and the directories are handed to the task's user last, when
//! nothing is left to write. Deletion unlinks entries one by one through their
//! directories, so a link is removed, never followed.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::owner::{take_if_dead, Owner, OwnerLock};
use super::sys;
use super::sys::fs::{Dir, DirStatus};
use crate::api::{Config, Secret, Task};
use crate::executor::DependencyGetter;
use crate::executor::DependencyStore;
use crate::{make_temporary, Error};

/// The subdirectories of a task directory, secrets first: the order of deletion.
const SUBDIRS: [&str; 2] = ["secrets", "configs"];

/// Where each live executor holds the lock that says so, in the state directory:
/// a name without a dot, so never a task directory's.
const OWNERS: &str = "owners";

/// How deep a task's user may nest directories in its task directory and still
/// have them deleted.
const REMOVAL_DEPTH: usize = 64;

/// A file to write into the task's directory.
pub(crate) struct TaskFile {
    subdir: &'static str,
    name: String,
    mode: u32,
    payload: Payload,
}

/// Held by `Arc`, so that writing a secret never copies its bytes.
enum Payload {
    Secret(Arc<Secret>),
    Config(Arc<Config>),
}

impl Payload {
    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Secret(secret) => &secret.data,
            Payload::Config(config) => &config.data,
        }
    }
}

/// The secrets and configs the task references, read through its restricted view.
pub(crate) fn referenced(task: &Task, store: &DependencyStore) -> Result<Vec<TaskFile>, Error> {
    let view = store.restrict(task);
    let mut files = Vec::new();
    for reference in task.spec.secret_references() {
        files.push(TaskFile {
            subdir: "secrets",
            name: reference.target.clone(),
            mode: reference.mode.unwrap_or(0o400),
            payload: Payload::Secret(view.secrets().get(&reference.secret_id)?),
        });
    }
    for reference in task.spec.config_references() {
        files.push(TaskFile {
            subdir: "configs",
            name: reference.target.clone(),
            mode: reference.mode.unwrap_or(0o444),
            payload: Payload::Config(view.configs().get(&reference.config_id)?),
        });
    }
    Ok(files)
}

/// The executor's state directory, held open.
#[derive(Debug)]
pub(crate) struct StateDir {
    path: PathBuf,
    dir: Dir,
    status: DirStatus,
}

impl StateDir {
    /// Opens `path`, made if missing with mode 0711 (a task running as another
    /// user may pass through to its own directory but not list the others).
    /// Refused when it is a link, is not owned by this process's user, or others
    /// may write to it: whoever could would own every task's secrets.
    pub(crate) fn open(path: &Path) -> Result<StateDir, Error> {
        let fail = |e: &dyn std::fmt::Display| {
            Error::other(format!("state directory {}: {e}", path.display()))
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(path)
            .map_err(|e| fail(&e))?;
        let dir = Dir::open(path).map_err(|e| fail(&e))?;
        let status = dir.status().map_err(|e| fail(&e))?;
        let uid = sys::effective_uid();
        if status.uid != uid {
            return Err(fail(&format_args!(
                "owned by uid {}, not by this process's uid {uid}: refused",
                status.uid
            )));
        }
        if status.mode & 0o022 != 0 {
            return Err(fail(&format_args!(
                "writable by others (mode {:o}): refused",
                status.mode & 0o7777
            )));
        }
        Ok(StateDir {
            path: path.to_path_buf(),
            dir,
            status,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle to the same directory, for another thread.
    pub(crate) fn try_clone(&self) -> Result<StateDir, Error> {
        let dir = self
            .dir
            .try_clone()
            .map_err(|e| Error::other(format!("state directory {}: {e}", self.path.display())))?;
        Ok(StateDir {
            path: self.path.clone(),
            dir,
            status: self.status,
        })
    }

    /// Takes the state directory for `owner`: its lock file, held until the
    /// claim is dropped (see the `owner` module).
    pub(crate) fn claim(&self, owner: &Owner) -> Result<StateClaim, Error> {
        let path = self.path.join(OWNERS);
        let fail = |e: io::Error| file_error("cannot claim the state directory in", &path, &e);
        let name = OsString::from(owner.to_string());
        // A cleaner may take a lock file that was just made for a dead owner's and
        // remove it, and the last executor to go removes `owners`: then it is made
        // again.
        let mut tries = 0;
        loop {
            tries += 1;
            let claimed = self.make_owners().and_then(|owners| {
                let file = owners.open_file(&name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)?;
                let lock = OwnerLock::take(&owners, &name, &file)?;
                Ok(StateClaim {
                    owners,
                    name: name.clone(),
                    state: self.dir.try_clone()?,
                    _lock: lock,
                })
            });
            match claimed {
                Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => continue,
                claimed => return claimed.map_err(fail),
            }
        }
    }

    fn make_owners(&self) -> io::Result<Dir> {
        match self.dir.make_dir(OsStr::new(OWNERS), 0o700) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.dir.open_dir(OsStr::new(OWNERS))
            }
            made => made,
        }
    }

    /// True when a dead owner left something here (see
    /// [`clean_dead_owners`](StateDir::clean_dead_owners)).
    pub(crate) fn has_dead_owners(&self) -> bool {
        let Ok(owners) = self.dir.open_dir(OsStr::new(OWNERS)) else {
            return false;
        };
        let task_dirs = self.names().unwrap_or_default();
        let listed = owners.names().unwrap_or_default();
        let mut judged = HashMap::new();
        let task_owners = task_dirs
            .iter()
            .filter_map(|n| n.to_str().and_then(task_dir_owner));
        let lock_owners = listed
            .iter()
            .filter_map(|n| n.to_str().and_then(Owner::parse));
        task_owners.chain(lock_owners).any(|owner| {
            let liveness = judged.entry(owner).or_insert_with(|| judge(&owners, owner));
            !matches!(liveness, Liveness::Live)
        })
    }

    /// Deletes the task directories of dead owners (whose lock can be taken, or
    /// who have no lock file: it is made before their first directory and removed
    /// after their last), then their lock files. For the chores thread; failures
    /// are logged.
    pub(crate) fn clean_dead_owners(&self) {
        let Ok(owners) = self.dir.open_dir(OsStr::new(OWNERS)) else {
            return;
        };
        let mut judged: HashMap<Owner, Liveness> = HashMap::new();
        for name in self.names().unwrap_or_default() {
            let Some(owner) = name.to_str().and_then(task_dir_owner) else {
                continue;
            };
            let liveness = judged.entry(owner).or_insert_with(|| judge(&owners, owner));
            if matches!(liveness, Liveness::Live) {
                continue;
            }
            match self.delete_task(&name.to_string_lossy()) {
                Ok(()) => log::info!(
                    target: "swarmexec",
                    "removed {} left by an executor that died",
                    self.path.join(&name).display()
                ),
                Err(e) => log::error!(target: "swarmexec", "{e}"),
            }
        }
        for name in owners.names().unwrap_or_default() {
            let Some(owner) = name.to_str().and_then(Owner::parse) else {
                continue;
            };
            let liveness = judged.entry(owner).or_insert_with(|| judge(&owners, owner));
            if matches!(liveness, Liveness::Dead(Some(_))) {
                let _ = owners.remove(&name, false);
            }
        }
    }

    /// True when it is on a file system kept in memory, so secrets stay off disk.
    pub(crate) fn in_memory(&self) -> bool {
        self.status.in_memory
    }

    /// Makes the task directory `name` and writes `files` into it (see the module
    /// docs for how), handing it to `owner` last; returns its path. Nothing is
    /// left behind when it fails.
    pub(crate) fn write_task(
        &self,
        name: &str,
        files: &[TaskFile],
        owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, Error> {
        let path = self.path.join(name);
        let task_dir = self
            .dir
            .make_dir(OsStr::new(name), 0o700)
            .map_err(|e| file_error("cannot create", &path, &e))?;
        match fill(&task_dir, &path, files, owner) {
            Ok(()) => Ok(path),
            Err(e) => {
                if let Err(removal) = self.delete_task(name) {
                    log::error!(target: "swarmexec", "{removal}");
                }
                Err(e)
            }
        }
    }

    /// Deletes the task directory `name`, its secrets first, so that a failure
    /// part-way leaves configs behind rather than secrets. Nothing to delete is
    /// success.
    pub(crate) fn delete_task(&self, name: &str) -> Result<(), Error> {
        let path = self.path.join(name);
        let failed = |e: io::Error| file_error("cannot remove", &path, &e);
        match self.dir.open_dir(OsStr::new(name)) {
            Ok(task_dir) => {
                // The task's user can change nothing in it from now on.
                task_dir.reclaim().map_err(failed)?;
                for subdir in SUBDIRS {
                    task_dir
                        .remove_tree(OsStr::new(subdir), REMOVAL_DEPTH)
                        .map_err(failed)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // Not a directory of ours (a link in its place): removed as an entry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {}
            Err(e) => return Err(failed(e)),
        }
        self.dir
            .remove_tree(OsStr::new(name), REMOVAL_DEPTH)
            .map_err(failed)
    }

    /// The names of the entries in the state directory.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        self.dir.names()
    }
}

/// True when `dir`, or the nearest of its ancestors that exists, is on a file
/// system kept in memory (tmpfs, ramfs).
pub(crate) fn in_memory(dir: &Path) -> bool {
    dir.ancestors()
        .find(|a| a.exists())
        .and_then(|a| Dir::open(a).ok())
        .and_then(|d| d.status().ok())
        .is_some_and(|status| status.in_memory)
}

/// A live executor's claim on the state directory: its lock file
/// `owners/<owner>`, removed (then let go) when the claim is dropped, with
/// `owners` itself when no other executor has one there.
#[derive(Debug)]
pub(crate) struct StateClaim {
    owners: Dir,
    name: OsString,
    state: Dir,
    _lock: OwnerLock,
}

impl Drop for StateClaim {
    fn drop(&mut self) {
        if let Err(e) = self.owners.remove(&self.name, false) {
            log::warn!(target: "swarmexec", "cannot remove the lock file of executor {:?}: {e}", self.name);
        }
        // Fails while another executor's lock file is in it.
        let _ = self.state.remove(OsStr::new(OWNERS), true);
    }
}

/// Whether an owner lives, as its lock file in `owners` says.
enum Liveness {
    Live,
    /// Dead: its lock, taken, while its things are removed (`None`: it has no
    /// lock file).
    Dead(Option<OwnerLock>),
}

fn judge(owners: &Dir, owner: Owner) -> Liveness {
    match owners.open_file(OsStr::new(&owner.to_string()), libc::O_RDWR) {
        Ok(file) => match take_if_dead(&file) {
            Ok(Some(lock)) => Liveness::Dead(Some(lock)),
            _ => Liveness::Live,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Liveness::Dead(None),
        Err(_) => Liveness::Live,
    }
}

/// The owner a task directory's name, `<task id>.<owner>.<n>`, carries.
fn task_dir_owner(name: &str) -> Option<Owner> {
    name.rsplit('.').nth(1).and_then(Owner::parse)
}

/// Fills a new task directory (`path`, open as `task_dir`): the subdirectories
/// (0700), the files in them, then every directory handed to `owner`.
fn fill(
    task_dir: &Dir,
    path: &Path,
    files: &[TaskFile],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let mut subdirs = Vec::with_capacity(SUBDIRS.len());
    for subdir in SUBDIRS {
        let dir_path = path.join(subdir);
        let dir = task_dir
            .make_dir(OsStr::new(subdir), 0o700)
            .map_err(|e| file_error("cannot create", &dir_path, &e))?;
        for file in files.iter().filter(|f| f.subdir == subdir) {
            write_file(&dir, &dir_path.join(&file.name), file, owner)?;
        }
        subdirs.push((dir, dir_path));
    }
    // Last: until now the task's user could not even look inside.
    if let Some((uid, gid)) = owner {
        let give = |dir: &Dir, path: &Path| {
            dir.set_owner(uid, gid)
                .map_err(|e| file_error("cannot give to the task's user", path, &e))
        };
        for (dir, dir_path) in &subdirs {
            give(dir, dir_path)?;
        }
        give(task_dir, path)?;
    }
    Ok(())
}

fn write_file(
    dir: &Dir,
    path: &Path,
    file: &TaskFile,
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let name = OsStr::from_bytes(file.name.as_bytes());
    let mut out = dir
        .create_file(name)
        .map_err(|e| file_error("cannot write", path, &e))?;
    out.write_all(file.payload.bytes())
        .map_err(|e| file_error("cannot write", path, &e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
            .map_err(|e| file_error("cannot give to the task's user", path, &e))?;
    }
    // Set after writing and explicitly: the mode given to open is cut by umask,
    // and a chown clears set-id bits.
    out.set_permissions(std::fs::Permissions::from_mode(file.mode))
        .map_err(|e| file_error("cannot set the mode of", path, &e))
}

/// An error about `path`; running out of files or memory is temporary.
pub(crate) fn file_error(what: &str, path: &Path, e: &io::Error) -> Error {
    let error = Error::other(format!("{what} {}: {e}", path.display()));
    if sys::is_exhaustion(e) {
        make_temporary(error)
    } else {
        error
    }
}
