//! Cgroups: every task in one of its own, limited, measured and killed whole.
//!
//! # Hierarchies
//!
//! The mounts are read from `/proc/self/mountinfo` and this process's place in each
//! from `/proc/self/cgroup`; no path is assumed. Each concern picks a hierarchy:
//!
//! - **containment** (killing everything a task started, knowing when it is all
//!   gone, CPU time): the v2 hierarchy where there is one, even without
//!   controllers (as in systemd's hybrid layout, it still has `cgroup.kill`,
//!   `cgroup.events` and `cpu.stat`); else the v1 `freezer` hierarchy (freeze,
//!   kill every member, thaw);
//! - **memory**, **pids** and **cpu** limits: the v2 controller where the v2
//!   hierarchy has it and it can be enabled, else the v1 hierarchy of that name.
//!
//! A task joins the containment cgroup always, and a limit's cgroup only when it
//! has that limit (on a hybrid host each is a directory more to make and remove).
//!
//! # Where
//!
//! Each executor has a parent cgroup of its own, `<base>/<owner>`, in every
//! hierarchy it uses; a task's cgroup is `<task id>.<n>` inside it. The base is
//! `swarmexec` inside this process's own cgroup (a v1 hierarchy, or a v2 one
//! without controllers to enable), or at the root of a v2 hierarchy whose
//! controllers root must enable (a cgroup holding processes cannot hand controllers
//! to children); [`ProcessExecutorBuilder::cgroup_parent`](super::ProcessExecutorBuilder::cgroup_parent)
//! names another, relative to each hierarchy's root, which stays the caller's:
//! the executor removes only the cgroups it made. The owner directory is locked
//! for the executor's life (see the `owner` module), so that an executor cleans up
//! after a dead one and never touches a live one, in whatever pid namespace.
//!
//! # Off the reaper
//!
//! Removing a cgroup may wait (for the processes in it to die, for the kernel to
//! let go of it), and freezing a v1 cgroup waits for the freeze: both are chores
//! (see the `chores` module). Making a cgroup is never given up on for good: a
//! failure is an error for that task, and the next one tries again.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::owner::{take_if_dead, Owner, OwnerLock};
use super::sys::fs::Dir;
use super::sys::CgroupJoin;
use crate::api::{Limits, ResourceUsage};
use crate::Error;

/// The CFS period the v1 `cpu` controller is given with a quota (v2's default).
const CPU_PERIOD_US: i64 = 100_000;

/// How long killing waits for a frozen v1 cgroup to be frozen.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// A cgroup hierarchy: where it is mounted, and this process's cgroup in it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hierarchy {
    mount: PathBuf,
    /// This process's cgroup, relative to the mount.
    own: PathBuf,
    v2: bool,
}

/// The hierarchies mounted here, read from `/proc/self`.
#[derive(Clone, Debug, Default)]
struct Mounts {
    v2: Option<Hierarchy>,
    /// The v1 hierarchy carrying each controller we use.
    memory: Option<Hierarchy>,
    pids: Option<Hierarchy>,
    cpu: Option<Hierarchy>,
    freezer: Option<Hierarchy>,
}

impl Mounts {
    fn read() -> Mounts {
        let (Ok(mountinfo), Ok(cgroups)) = (
            read_kernel_file(Path::new("/proc/self/mountinfo")),
            read_kernel_file(Path::new("/proc/self/cgroup")),
        ) else {
            return Mounts::default();
        };
        Mounts::parse(&mountinfo, &cgroups)
    }

    fn parse(mountinfo: &str, cgroups: &str) -> Mounts {
        let mut mounts = Mounts::default();
        for line in mountinfo.lines() {
            let Some((mount, fs)) = line.split_once(" - ") else {
                continue;
            };
            let mut mount = mount.split_whitespace().skip(3);
            let (Some(root), Some(point)) = (mount.next(), mount.next()) else {
                continue;
            };
            let mut fs = fs.split_whitespace();
            let (fstype, options) = (fs.next(), fs.nth(1).unwrap_or(""));
            let own = |controller: &str| own_cgroup(cgroups, controller, root);
            let hierarchy = |own: PathBuf, v2| Hierarchy {
                mount: PathBuf::from(point),
                own,
                v2,
            };
            match fstype {
                Some("cgroup2") if mounts.v2.is_none() => {
                    mounts.v2 = own("").map(|own| hierarchy(own, true));
                }
                Some("cgroup") => {
                    for option in options.split(',') {
                        let slot = match option {
                            "memory" => &mut mounts.memory,
                            "pids" => &mut mounts.pids,
                            "cpu" => &mut mounts.cpu,
                            "freezer" => &mut mounts.freezer,
                            _ => continue,
                        };
                        if slot.is_none() {
                            *slot = own(option).map(|own| hierarchy(own, false));
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

/// This process's cgroup in the hierarchy of `controller` ("" for v2), relative
/// to a mount of that hierarchy's `mount_root`.
fn own_cgroup(cgroups: &str, controller: &str, mount_root: &str) -> Option<PathBuf> {
    let path = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })?;
    let relative = Path::new(path).strip_prefix(mount_root).ok()?;
    Some(relative.to_path_buf())
}

/// What the executor can do with cgroups on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Containment {
    /// How a task's processes are held together and killed: `"cgroup v2"`,
    /// `"cgroup v1 freezer"`, or `"process group"` where cgroups are not usable
    /// (then a descendant that leaves the group escapes).
    pub method: &'static str,
    /// Memory limits can be enforced (`memory_bytes`).
    pub memory_limit: bool,
    /// Process-count limits can be enforced (`pids`).
    pub pids_limit: bool,
    /// CPU limits can be enforced (`nano_cpus`).
    pub cpu_limit: bool,
    /// Where the executor's cgroups are, one per hierarchy it uses, containment
    /// first; those for limits are made when a task first needs them.
    pub cgroups: Vec<PathBuf>,
}

/// A parent cgroup of one executor in one hierarchy, made on first use.
#[derive(Debug)]
struct Place {
    /// `<base>/<owner>`.
    dir: PathBuf,
    v2: bool,
    /// The base is swarmexec's own (`swarmexec`, not a parent the caller gave):
    /// whichever executor goes last removes it, whoever made it.
    shared_base: bool,
    state: Mutex<PlaceState>,
}

#[derive(Debug)]
enum PlaceState {
    /// Not made yet, or making it failed (the next use tries again).
    Unmade,
    /// Made and locked; `created` are the directories above it that making it
    /// created, the nearest first (and the shared base, made or not): only those
    /// are removed with it, each only when nothing else is in it.
    Made {
        _lock: OwnerLock,
        created: Vec<PathBuf>,
    },
    /// Removed: never made again.
    Sealed,
}

impl Place {
    /// Makes the directory and takes its owner lock, unless that was done. A
    /// failure is not remembered: the next call tries again. Errors are temporary
    /// (a cgroup limit such as `cgroup.max.descendants`, another executor removing
    /// the base meanwhile), and name the cgroup.
    fn make(&self) -> Result<(), Error> {
        let mut state = self.state.lock();
        match &*state {
            PlaceState::Made { .. } => return Ok(()),
            PlaceState::Sealed => {
                return Err(Error::other(format!(
                    "cgroup {} was removed",
                    self.dir.display()
                )))
            }
            PlaceState::Unmade => {}
        }
        let fail = |e: io::Error| {
            crate::make_temporary(Error::other(format!(
                "cannot create cgroup {}: {e}",
                self.dir.display()
            )))
        };
        let (base, name) = match (self.dir.parent(), self.dir.file_name()) {
            (Some(base), Some(name)) => (base, name),
            _ => return Err(fail(io::ErrorKind::InvalidInput.into())),
        };
        // Another executor may remove the base, or take our directory for a dead
        // owner's, between our making it and locking it: try again twice.
        let mut tries = 0;
        let (lock, mut created) = loop {
            tries += 1;
            let attempt = create_missing(base).and_then(|created| {
                let base_dir = Dir::open(base)?;
                let dir = base_dir.make_dir(name, 0o755)?;
                Ok((OwnerLock::take(&base_dir, name, &dir)?, created))
            });
            match attempt {
                Ok(made) => break made,
                Err(e) if tries < 3 && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(e)),
            }
        };
        if self.shared_base && !created.iter().any(|d| d == base) {
            created.insert(0, base.to_path_buf());
        }
        *state = PlaceState::Made {
            _lock: lock,
            created,
        };
        Ok(())
    }

    /// Removes the directory (what is still in it first, killed) and the
    /// directories above it that making it created, and seals it: from now on it
    /// is never made. A directory above that is still in use (another
    /// executor's) is left. Waits while it is being made. With `only_if_empty`,
    /// does nothing (and seals nothing) unless the directory is empty already.
    fn remove(&self, only_if_empty: bool) {
        let mut state = self.state.lock();
        let removed = match &*state {
            PlaceState::Made { .. } if only_if_empty => fs::remove_dir(&self.dir),
            PlaceState::Made { .. } => remove_tree(&self.dir, self.v2),
            _ => return *state = PlaceState::Sealed,
        };
        match removed {
            Ok(()) => {}
            Err(_) if only_if_empty => return,
            Err(e) => {
                log::warn!(target: "swarmexec", "cannot remove cgroup {}: {e}", self.dir.display());
                return *state = PlaceState::Sealed;
            }
        }
        if let PlaceState::Made { created, .. } = std::mem::replace(&mut *state, PlaceState::Sealed)
        {
            for dir in created {
                if fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
    }
}

/// Makes `dir` and whatever above it is missing (mode 0755); returns those it
/// made, the deepest first.
fn create_missing(dir: &Path) -> io::Result<Vec<PathBuf>> {
    // Most often only `dir` may be missing: one call.
    match fs::create_dir(dir) {
        Ok(()) => return Ok(vec![dir.to_path_buf()]),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Vec::new()),
        Err(_) => {}
    }
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    let mut created = Vec::new();
    for dir in missing.iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => created.push(dir.to_path_buf()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    created.reverse();
    Ok(created)
}

/// An executor's cgroups: the parent it made in each hierarchy it uses.
#[derive(Debug)]
pub(crate) struct Cgroups {
    containment: Option<Arc<Place>>,
    memory: Option<Arc<Place>>,
    pids: Option<Arc<Place>>,
    cpu: Option<Arc<Place>>,
    /// The v2 containment cgroup also counts memory (its hierarchy has the
    /// memory controller, enabled for the executor's tasks).
    v2_memory: bool,
}

impl Cgroups {
    /// The executor's parent cgroups, under `parent` (relative to each
    /// hierarchy's root) or the default base. A hierarchy where they cannot be
    /// made (no permission, no such hierarchy) is not used. Nothing is made yet
    /// where nothing must be: the first task makes what it needs.
    pub(crate) fn new(owner: &Owner, parent: Option<&Path>) -> Cgroups {
        let mounts = Mounts::read();
        let v2_controllers = mounts
            .v2
            .as_ref()
            .map(|v2| v2_available_controllers(v2, parent))
            .unwrap_or_default();
        let place = |hierarchy: &Option<Hierarchy>| -> Option<Arc<Place>> {
            let hierarchy = hierarchy.as_ref()?;
            let base = base_dir(hierarchy, parent, !v2_controllers.is_empty());
            if !super::sys::may_create_in(&base) {
                log::debug!(target: "swarmexec", "no permission for cgroups under {}", base.display());
                return None;
            }
            Some(Arc::new(Place {
                dir: base.join(owner.to_string()),
                v2: hierarchy.v2,
                shared_base: parent.is_none(),
                state: Mutex::new(PlaceState::Unmade),
            }))
        };
        let v2 = place(&mounts.v2);
        // Controllers are enabled on the way down to the executor's cgroup, which
        // must be made for that (a cgroup holding processes cannot hand controllers
        // to children, hence the base at the root).
        let enabled = match &v2 {
            Some(v2) if !v2_controllers.is_empty() && v2.make().is_ok() => {
                enable_controllers(v2, &v2_controllers, &mounts);
                read_kernel_file(&v2.dir.join("cgroup.subtree_control")).unwrap_or_default()
            }
            _ => String::new(),
        };
        let v2_with = |controller: &str| {
            let has = enabled.split_whitespace().any(|c| c == controller);
            has.then(|| v2.clone()).flatten()
        };
        // Without v2, containment is the v1 freezer's, made now so that a host
        // whose freezer is not ours falls back to process groups at once.
        let containment = v2.clone().or_else(|| {
            let freezer = place(&mounts.freezer)?;
            freezer.make().is_ok().then_some(freezer)
        });
        Cgroups {
            v2_memory: v2_with("memory").is_some(),
            memory: v2_with("memory").or_else(|| place(&mounts.memory)),
            pids: v2_with("pids").or_else(|| place(&mounts.pids)),
            cpu: v2_with("cpu").or_else(|| place(&mounts.cpu)),
            containment,
        }
    }

    /// The directories where dead owners' cgroups may be left: the bases of the
    /// hierarchies this executor uses.
    pub(crate) fn bases(&self) -> Vec<PathBuf> {
        let mut bases: Vec<PathBuf> = self
            .places()
            .filter_map(|p| p.dir.parent().map(Path::to_path_buf))
            .collect();
        bases.sort();
        bases.dedup();
        bases
    }

    fn places(&self) -> impl Iterator<Item = &Arc<Place>> {
        [&self.containment, &self.memory, &self.pids, &self.cpu]
            .into_iter()
            .flatten()
    }

    /// No cgroups: tasks are held together by their process group only.
    pub(crate) fn none() -> Cgroups {
        Cgroups {
            containment: None,
            memory: None,
            pids: None,
            cpu: None,
            v2_memory: false,
        }
    }

    /// The `cgroup.kill` file that kills every task of the executor at once, where
    /// its tasks live in a v2 hierarchy that has one.
    pub(crate) fn kill_file(&self) -> Option<PathBuf> {
        let containment = self.containment.as_ref().filter(|c| c.v2)?;
        let kill = containment.dir.join("cgroup.kill");
        kill.exists().then_some(kill)
    }

    /// What is in force; makes the containment cgroup (or waits while it is
    /// being made), so that it is there to be seen.
    pub(crate) fn containment(&self) -> Containment {
        if let Some(containment) = &self.containment {
            if let Err(e) = containment.make() {
                log::debug!(target: "swarmexec", "{e}");
            }
        }
        let method = match self.containment.as_ref().map(|c| c.v2) {
            Some(true) => "cgroup v2",
            Some(false) => "cgroup v1 freezer",
            None => "process group",
        };
        let mut cgroups: Vec<PathBuf> = self.places().map(|p| p.dir.clone()).collect();
        cgroups.dedup();
        Containment {
            method,
            memory_limit: self.memory.is_some(),
            pids_limit: self.pids.is_some(),
            cpu_limit: self.cpu.is_some(),
            cgroups,
        }
    }

    /// Refuses limits out of range, and limits this host cannot enforce, naming
    /// what is missing.
    pub(crate) fn check(&self, limits: &Limits) -> Result<(), Error> {
        check_ranges(limits)?;
        let missing = [
            (limits.memory_bytes, &self.memory, "memory", "memory"),
            (limits.pids, &self.pids, "pids", "process-count"),
            (limits.nano_cpus, &self.cpu, "cpu", "CPU"),
        ];
        for (value, place, controller, what) in missing {
            match place {
                None if value > 0 => {
                    return Err(Error::InvalidSpec(format!(
                        "a {what} limit needs the cgroup \"{controller}\" controller, which this \
                         host does not offer to swarmexec (no cgroup hierarchy with it, or no \
                         permission)"
                    )))
                }
                Some(place) if value > 0 => place.make()?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the task's cgroups, named `name`, with `limits` set (checked by
    /// [`check`](Cgroups::check)); `None` where the host gives no cgroups. Where
    /// it does, a task never runs uncontained: a cgroup that cannot be made is a
    /// temporary error that says why.
    pub(crate) fn create(&self, name: &str, limits: &Limits) -> Result<Option<TaskCgroup>, Error> {
        let Some(containment) = &self.containment else {
            return Ok(None);
        };
        containment.make()?;
        let mut task = TaskCgroup {
            containment: containment.dir.join(name),
            v2: containment.v2,
            memory: self.v2_memory.then(|| (containment.dir.join(name), true)),
            pids: None,
            cpu: None,
            dirs: Vec::new(),
        };
        let made = task.make(name, self, limits);
        match made {
            Ok(()) => Ok(Some(task)),
            Err(e) => {
                task.remove();
                Err(e)
            }
        }
    }

    /// Removes the executor's parent cgroups and what it made above them (never
    /// a parent it was given); one that cannot be removed is logged. None is made
    /// afterwards.
    pub(crate) fn remove(&self) {
        self.places().for_each(|p| p.remove(false));
    }

    /// As [`remove`](Cgroups::remove), only for those already empty: the rest
    /// stay for a later `remove`.
    pub(crate) fn remove_if_empty(&self) {
        self.places().for_each(|p| p.remove(true));
    }
}

/// The smallest memory limit, as Docker has it: 6 MiB. Below it a program
/// cannot even be started.
pub const MIN_MEMORY_LIMIT: i64 = 6 << 20;

/// The smallest CPU limit, as Docker has it: a hundredth of a CPU.
const MIN_NANO_CPUS: i64 = 10_000_000;

/// The most a `pids.max` takes: the kernel's `PID_MAX_LIMIT`.
const PIDS_MAX: i64 = if cfg!(target_pointer_width = "64") {
    4 << 20
} else {
    32 << 10
};

/// Refuses negative limits, memory under [`MIN_MEMORY_LIMIT`], more processes
/// than the kernel can have and more CPUs than the host has, with the allowed
/// range.
fn check_ranges(limits: &Limits) -> Result<(), Error> {
    let invalid = |problem: String| Err(Error::InvalidSpec(problem));
    for (value, what) in [
        (limits.memory_bytes, "memory"),
        (limits.pids, "process-count"),
        (limits.nano_cpus, "CPU"),
    ] {
        if value < 0 {
            return invalid(format!("the {what} limit {value} is negative"));
        }
    }
    let memory = limits.memory_bytes;
    if memory > 0 && memory < MIN_MEMORY_LIMIT {
        return invalid(format!(
            "the memory limit {memory} bytes is under the minimum of {MIN_MEMORY_LIMIT} bytes \
             (6 MiB), as Docker has it"
        ));
    }
    if limits.pids > PIDS_MAX {
        return invalid(format!(
            "the process-count limit {} is over the kernel's maximum, {PIDS_MAX} (allowed: 1 to \
             {PIDS_MAX})",
            limits.pids
        ));
    }
    let nano = limits.nano_cpus;
    let cpus = if nano > 0 {
        super::sys::online_cpus()
    } else {
        0
    };
    if nano > 0 && (nano < MIN_NANO_CPUS || nano > cpus.saturating_mul(1_000_000_000)) {
        return invalid(format!(
            "the CPU limit {} CPUs is out of range: from 0.01 to {cpus}.00, as this host has \
             {cpus} CPUs",
            nano as f64 / 1e9
        ));
    }
    Ok(())
}

/// The directory holding owners' cgroups in `hierarchy`.
fn base_dir(hierarchy: &Hierarchy, parent: Option<&Path>, v2_needs_root: bool) -> PathBuf {
    match parent {
        Some(parent) => hierarchy
            .mount
            .join(parent.strip_prefix("/").unwrap_or(parent)),
        None if hierarchy.v2 && v2_needs_root => hierarchy.mount.join("swarmexec"),
        None => hierarchy.mount.join(&hierarchy.own).join("swarmexec"),
    }
}

/// The controllers of interest the v2 hierarchy has at its root, when this
/// process may enable them (root, or under a configured parent).
fn v2_available_controllers(v2: &Hierarchy, parent: Option<&Path>) -> Vec<&'static str> {
    let Ok(available) = read_kernel_file(&v2.mount.join("cgroup.controllers")) else {
        return Vec::new();
    };
    let root_or_parent = super::sys::effective_uid() == 0 || parent.is_some();
    ["memory", "pids", "cpu"]
        .into_iter()
        .filter(|c| root_or_parent && available.split_whitespace().any(|a| a == *c))
        .collect()
}

/// Enables `controllers` on the way from the v2 root down to the executor's
/// parent, so that task cgroups get them. A failure leaves that controller to v1.
fn enable_controllers(v2: &Place, controllers: &[&str], mounts: &Mounts) {
    let Some(hierarchy) = &mounts.v2 else { return };
    let Ok(relative) = v2.dir.strip_prefix(&hierarchy.mount) else {
        return;
    };
    for controller in controllers {
        let mut dir = hierarchy.mount.clone();
        for part in std::iter::once(None).chain(relative.components().map(Some)) {
            if let Some(part) = part {
                dir.push(part);
            }
            if has_controller_enabled(&dir, controller) {
                continue;
            }
            if let Err(e) = write(
                &dir.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            ) {
                log::debug!(target: "swarmexec", "cannot enable {controller} in {}: {e}", dir.display());
                break;
            }
        }
    }
}

/// True when children of `dir` get `controller` (v2).
fn has_controller_enabled(dir: &Path, controller: &str) -> bool {
    read_kernel_file(&dir.join("cgroup.subtree_control"))
        .is_ok_and(|enabled| enabled.split_whitespace().any(|c| c == controller))
}

/// True when a dead owner left its cgroup under `base`.
pub(crate) fn has_dead_owners(base: &Path) -> bool {
    let Ok(base_dir) = Dir::open(base) else {
        return false;
    };
    base_dir.names().unwrap_or_default().iter().any(|name| {
        name.to_str().and_then(Owner::parse).is_some()
            && base_dir
                .open_dir(name)
                .is_ok_and(|dir| matches!(take_if_dead(&dir), Ok(Some(_))))
    })
}

/// Kills what is left in the cgroups of dead owners under `base` (those whose
/// lock can be taken: see the `owner` module), and removes them. For the chores
/// thread: it may wait for processes to die.
pub(crate) fn clean_dead_owners(base: &Path) {
    let Ok(base_dir) = Dir::open(base) else {
        return;
    };
    for name in base_dir.names().unwrap_or_default() {
        if name.to_str().and_then(Owner::parse).is_none() {
            continue;
        }
        let Ok(dir) = base_dir.open_dir(&name) else {
            continue;
        };
        let Ok(Some(_lock)) = take_if_dead(&dir) else {
            continue;
        };
        let path = base.join(&name);
        let v2 = path.join("cgroup.events").exists();
        match remove_tree(&path, v2) {
            Ok(()) => log::info!(
                target: "swarmexec",
                "removed cgroup {} of a dead executor",
                path.display()
            ),
            Err(e) => {
                log::warn!(target: "swarmexec", "cannot remove cgroup {} of a dead executor: {e}", path.display())
            }
        }
    }
}

/// Removes the cgroup `dir` and every cgroup under it, depth first, killing
/// what runs in each first (so a task that made cgroups of its own, as a nested
/// supervisor does, leaves nothing). For the chores thread: it waits for the
/// killed to die, and out the kernel's `EBUSY` after the last one has.
pub(crate) fn remove_tree(dir: &Path, v2: bool) -> io::Result<()> {
    // Most often it is empty and has no cgroups inside: one call.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let cgroup = TaskCgroup::adopt(dir, v2);
    if !cgroup.is_empty() {
        let _ = cgroup.kill();
        cgroup.wait_empty(EMPTYING_WAIT);
    }
    let children = fs::read_dir(dir).map(|entries| {
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect::<Vec<_>>()
    });
    match children {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(children) => {
            for child in children {
                remove_tree(&child, v2)?;
            }
        }
    }
    remove_cgroup(dir)
}

/// How long removal waits for a cgroup's processes to die once killed.
const EMPTYING_WAIT: Duration = Duration::from_secs(2);

/// One task's cgroups.
#[derive(Debug)]
pub(crate) struct TaskCgroup {
    /// The cgroup that holds every process of the task.
    containment: PathBuf,
    v2: bool,
    /// Where its memory is counted, and whether that is v2.
    memory: Option<(PathBuf, bool)>,
    pids: Option<(PathBuf, bool)>,
    cpu: Option<(PathBuf, bool)>,
    /// Every directory made, containment first.
    dirs: Vec<PathBuf>,
}

impl TaskCgroup {
    fn make(&mut self, name: &str, cgroups: &Cgroups, limits: &Limits) -> Result<(), Error> {
        self.add_dir(&self.containment.clone())?;
        let roles = [
            (limits.memory_bytes, &cgroups.memory, Role::Memory),
            (limits.pids, &cgroups.pids, Role::Pids),
            (limits.nano_cpus, &cgroups.cpu, Role::Cpu),
        ];
        for (value, place, role) in roles {
            let (true, Some(place)) = (value > 0, place) else {
                continue;
            };
            place.make()?;
            let dir = place.dir.join(name);
            if !self.dirs.contains(&dir) {
                self.add_dir(&dir)?;
            }
            for (file, content) in role.settings(value, place.v2) {
                write(&dir.join(file), &content)
                    .map_err(|e| cgroup_error("cannot set", &dir.join(file), &e))?;
            }
            let slot = match role {
                Role::Memory => &mut self.memory,
                Role::Pids => &mut self.pids,
                Role::Cpu => &mut self.cpu,
            };
            *slot = Some((dir, place.v2));
        }
        Ok(())
    }

    fn add_dir(&mut self, dir: &Path) -> Result<(), Error> {
        fs::create_dir(dir).map_err(|e| cgroup_error("cannot create cgroup", dir, &e))?;
        self.dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// A cgroup found on disk, to kill and remove.
    fn adopt(dir: &Path, v2: bool) -> TaskCgroup {
        TaskCgroup {
            containment: dir.to_path_buf(),
            v2,
            memory: None,
            pids: None,
            cpu: None,
            dirs: vec![dir.to_path_buf()],
        }
    }

    /// The task's cgroups, open for the program to join before it executes: the
    /// containment directory where it is a v2 cgroup (which a program can be
    /// cloned into), and the `cgroup.procs` file of every other.
    pub(crate) fn join(&self) -> Result<CgroupJoin, Error> {
        let mut dirs = self.dirs.iter();
        let mut directory = OpenOptions::new();
        directory.read(true).custom_flags(libc::O_DIRECTORY);
        let v2 = if self.v2 {
            dirs.next().map(|dir| open(dir, &directory)).transpose()?
        } else {
            None
        };
        let procs = dirs
            .map(|dir| open(&dir.join("cgroup.procs"), OpenOptions::new().write(true)))
            .collect::<Result<_, _>>()?;
        Ok(CgroupJoin { v2, procs })
    }

    /// True where killing the task's cgroup is one quick write (v2's
    /// `cgroup.kill`); false where it means freezing first, which may take a
    /// while (for the chores thread, not the reaper).
    pub(crate) fn kills_at_once(&self) -> bool {
        self.v2 && self.containment.join("cgroup.kill").exists()
    }

    /// Kills every process in the task's cgroup and those below it: `cgroup.kill`
    /// on v2; on v1, freeze, SIGKILL every member, thaw (frozen, no member can
    /// fork or exit, so no pid read can be reused before the kill).
    pub(crate) fn kill(&self) -> io::Result<()> {
        if self.kills_at_once() {
            return write(&self.containment.join("cgroup.kill"), "1");
        }
        let state = self.containment.join("freezer.state");
        if !self.v2 && state.exists() {
            write(&state, "FROZEN")?;
            let deadline = crate::time::after(FREEZE_WAIT);
            while read_trimmed(&state).as_deref() != Some("FROZEN") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            let killed = self.kill_members();
            write(&state, "THAWED")?;
            return killed;
        }
        // A v2 hierarchy before cgroup.kill (kernels before 5.14): freeze there.
        let freeze = self.containment.join("cgroup.freeze");
        write(&freeze, "1")?;
        let killed = self.kill_members();
        write(&freeze, "0")?;
        killed
    }

    fn kill_members(&self) -> io::Result<()> {
        let procs = read_kernel_file(&self.containment.join("cgroup.procs"))?;
        for pid in procs
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        {
            super::sys::kill_frozen(pid);
        }
        Ok(())
    }

    /// True once no process is left in the task's cgroup (nor below it).
    pub(crate) fn is_empty(&self) -> bool {
        if self.v2 {
            if let Some(events) = read_trimmed(&self.containment.join("cgroup.events")) {
                return events.lines().any(|l| l == "populated 0");
            }
        }
        read_trimmed(&self.containment.join("cgroup.procs")).is_none_or(|p| p.is_empty())
    }

    /// Waits, a little at a time, until the cgroup is empty or `limit` passes.
    pub(crate) fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = crate::time::after(limit);
        while !self.is_empty() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// How many times the kernel killed a process of the task for exceeding its
    /// memory limit.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some((dir, v2)) = &self.memory else {
            return 0;
        };
        let file = if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let counters = read_trimmed(&dir.join(file)).unwrap_or_default();
        counter(&counters, "oom_kill").unwrap_or(0)
    }

    /// What the task has used so far. Memory is its cgroup's count where it has
    /// a memory cgroup (a limit, or a v2 hierarchy with the memory controller);
    /// elsewhere the resident memory of its processes, summed.
    pub(crate) fn usage(&self) -> ResourceUsage {
        let procs = read_trimmed(&self.containment.join("cgroup.procs"));
        let memory_bytes = match &self.memory {
            Some((dir, true)) => number(&dir.join("memory.current")),
            Some((dir, false)) => number(&dir.join("memory.usage_in_bytes")),
            None => procs.as_deref().map(resident_bytes),
        };
        ResourceUsage {
            memory_bytes,
            processes: procs.map(|procs| procs.lines().count() as u64),
            ..self.totals()
        }
    }

    /// What the task has used in all: CPU time and peak memory, where the cgroups
    /// count them (the rest of [`usage`](TaskCgroup::usage) is about now).
    pub(crate) fn totals(&self) -> ResourceUsage {
        let cpu = if self.v2 {
            let stat = read_trimmed(&self.containment.join("cpu.stat")).unwrap_or_default();
            counter(&stat, "usage_usec").map(Duration::from_micros)
        } else {
            None
        };
        let memory_peak_bytes = match &self.memory {
            Some((dir, true)) => number(&dir.join("memory.peak")),
            Some((dir, false)) => number(&dir.join("memory.max_usage_in_bytes")),
            None => None,
        };
        ResourceUsage {
            cpu,
            memory_peak_bytes,
            ..ResourceUsage::default()
        }
    }

    /// What removes the task's cgroups (empty by now, but for cgroups a task
    /// made inside its own), for the chores thread; failures are logged.
    pub(crate) fn removal(&self) -> impl FnOnce() + Send + 'static {
        let (dirs, v2) = (self.dirs.clone(), self.v2);
        move || {
            for (i, dir) in dirs.iter().enumerate().rev() {
                // Only the containment cgroup is v2 on a hybrid host.
                if let Err(e) = remove_tree(dir, v2 && i == 0) {
                    log::warn!(target: "swarmexec", "cannot remove cgroup {}: {e}", dir.display());
                }
            }
        }
    }

    /// Removes the task's cgroups now, on this thread.
    pub(crate) fn remove(&self) {
        self.removal()();
    }
}

/// The resident memory of the processes listed (one pid a line), summed from
/// `/proc/<pid>/status`; what cannot be read (a process gone) counts nothing.
fn resident_bytes(pids: &str) -> u64 {
    pids.lines()
        .filter_map(|pid| {
            read_kernel_file(&Path::new("/proc").join(pid.trim()).join("status")).ok()
        })
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .fold(0, u64::saturating_add)
}

/// Removes an empty cgroup; the kernel may need a moment after its last process
/// exits before it lets go.
fn remove_cgroup(dir: &Path) -> io::Result<()> {
    let deadline = crate::time::after(Duration::from_secs(1));
    loop {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            other => return other,
        }
    }
}

/// The settings of a limit.
#[derive(Clone, Copy)]
enum Role {
    Memory,
    Pids,
    Cpu,
}

impl Role {
    /// The files to write, and what, for a limit of `value` on v2 or v1.
    fn settings(self, value: i64, v2: bool) -> Vec<(&'static str, String)> {
        match (self, v2) {
            // No swap beyond the limit, so that the limit is the limit.
            (Role::Memory, true) => vec![
                ("memory.max", value.to_string()),
                ("memory.swap.max", "0".into()),
            ],
            (Role::Memory, false) => vec![("memory.limit_in_bytes", value.to_string())],
            (Role::Pids, _) => vec![("pids.max", value.to_string())],
            (Role::Cpu, true) => vec![("cpu.max", format!("{} {CPU_PERIOD_US}", cpu_quota(value)))],
            (Role::Cpu, false) => vec![
                ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", cpu_quota(value).to_string()),
            ],
        }
    }
}

/// The CFS quota per period for `nano_cpus`: 1.5 CPUs is 150 ms per 100 ms.
fn cpu_quota(nano_cpus: i64) -> i64 {
    // The kernel takes no quota under 1 ms.
    (nano_cpus.saturating_mul(CPU_PERIOD_US) / 1_000_000_000).max(1000)
}

/// `path` opened with `options`, for a spawn.
fn open(path: &Path, options: &OpenOptions) -> Result<OwnedFd, Error> {
    options
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| cgroup_error("cannot open", path, &e))
}

fn cgroup_error(what: &str, path: &Path, e: &io::Error) -> Error {
    let error = Error::other(format!("{what} {}: {e}", path.display()));
    if super::sys::is_exhaustion(e) {
        crate::make_temporary(error)
    } else {
        error
    }
}

fn write(path: &Path, content: &str) -> io::Result<()> {
    // One write: cgroup files take a value per write call.
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(content.as_bytes())
}

fn read_trimmed(path: &Path) -> Option<String> {
    read_kernel_file(path).ok().map(|s| s.trim().to_owned())
}

/// A file the kernel makes up as it is read (procfs, cgroupfs), which reports no
/// size: read into a buffer sized for the usual content, so that it takes one read
/// and one to see its end (the standard library would probe 32 bytes, then grow).
fn read_kernel_file(path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut text = vec![0; 8192];
    let mut len = 0;
    loop {
        if len == text.len() {
            text.resize(len * 2, 0);
        }
        match file.read(&mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    text.truncate(len);
    String::from_utf8(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn number(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// The value of `key` in a flat-keyed file such as `memory.events`.
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    const HYBRID_CGROUP: &str = "\
8:pids:/
6:freezer:/
4:memory:/process_api/e73b
1:cpu:/
0::/";

    #[test]
    fn hybrid_mounts_are_found_with_our_place_in_each() {
        let mounts = Mounts::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        let v2 = mounts.v2.unwrap();
        assert_eq!(v2.mount, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(v2.own, Path::new(""));
        let memory = mounts.memory.unwrap();
        assert_eq!(memory.mount, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(memory.own, Path::new("process_api/e73b"));
        assert!(mounts.pids.is_some() && mounts.cpu.is_some() && mounts.freezer.is_some());
    }

    #[test]
    fn a_pure_v2_host_has_one_hierarchy() {
        let mountinfo = "30 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        let mounts = Mounts::parse(mountinfo, "0::/user.slice/session-1.scope\n");
        let v2 = mounts.v2.unwrap();
        assert_eq!(v2.own, Path::new("user.slice/session-1.scope"));
        assert!(mounts.memory.is_none() && mounts.freezer.is_none());
    }

    #[test]
    fn a_container_sees_its_cgroup_as_the_mount_root() {
        let mountinfo = "30 24 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let mounts = Mounts::parse(mountinfo, "0::/docker/abc\n");
        assert_eq!(mounts.v2.unwrap().own, Path::new(""));
    }

    #[test]
    fn limits_out_of_range_are_refused_with_the_range() {
        let limits = |memory_bytes, pids, nano_cpus| Limits {
            memory_bytes,
            pids,
            nano_cpus,
        };
        let refused = |l: Limits| match check_ranges(&l) {
            Err(Error::InvalidSpec(message)) => message,
            other => panic!("{l:?}: {other:?}"),
        };
        assert!(refused(limits(1, 0, 0)).contains("minimum of 6291456 bytes"));
        assert!(refused(limits(8 << 10, 0, 0)).contains("6 MiB"));
        assert!(refused(limits(-1, 0, 0)).contains("negative"));
        assert!(refused(limits(0, 5_000_000_000, 0)).contains("kernel's maximum"));
        let cpus = crate::process::sys::online_cpus();
        let too_many = (cpus + 1) * 1_000_000_000;
        assert!(refused(limits(0, 0, too_many)).contains(&format!("to {cpus}.00")));
        assert!(refused(limits(0, 0, 1)).contains("from 0.01"));
        check_ranges(&limits(MIN_MEMORY_LIMIT, 100, 500_000_000)).unwrap();
        check_ranges(&Limits::default()).unwrap();
    }

    #[test]
    fn cpu_quotas_follow_nano_cpus() {
        assert_eq!(cpu_quota(1_500_000_000), 150_000);
        assert_eq!(cpu_quota(500_000_000), 50_000);
        assert_eq!(cpu_quota(1), 1000, "the kernel's minimum");
    }

    #[test]
    fn counters_are_read_by_name() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2";
        assert_eq!(counter(events, "oom_kill"), Some(2));
        assert_eq!(counter(events, "oom"), Some(1));
        assert_eq!(counter(events, "none"), None);
    }

    #[test]
    fn the_containment_cgroup_is_made_on_demand_and_never_after_removal() {
        let cgroups = Cgroups::new(&Owner::new(), None);
        let Some(containment) = cgroups.containment.clone() else {
            // No cgroups here (or no permission): nothing to make, and none in force.
            assert_eq!(cgroups.containment().method, "process group");
            return;
        };
        assert!(!containment.dir.exists(), "made on demand");
        assert_ne!(cgroups.containment().method, "process group");
        assert!(containment.dir.is_dir());
        let base = containment.dir.parent().unwrap().to_path_buf();
        assert!(!has_dead_owners(&base), "ours is locked");
        cgroups.remove();
        assert!(!containment.dir.exists());
        assert!(containment.make().is_err(), "sealed");
        assert!(!containment.dir.exists(), "never made after removal");
    }
}
