//! Helpers shared by the test files: process tasks, and cgroup v1 controllers
//! (the freezer, pids) to freeze a program or exhaust a limit for real. The cgroup
//! helpers return `None` where the controller or the permission is missing, so
//! that the caller checks its fallback.

#![allow(dead_code)] // each test file uses some of these

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use swarmexec::api::{ProcessSpec, Runtime, Task, TaskSpec, TaskState};
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{CancelToken, Controller};

/// A spec running `command` directly.
pub fn spec(command: &[&str]) -> ProcessSpec {
    ProcessSpec {
        command: command.iter().map(|s| s.into()).collect(),
        ..Default::default()
    }
}

/// A task to be run with `spec`, desired running.
pub fn process_task(id: &str, spec: ProcessSpec) -> Task {
    Task {
        id: id.into(),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(spec)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A prepared and started controller for `task`.
pub fn started(executor: &ProcessExecutor, task: &Task) -> ProcessController {
    let controller = executor.process_controller(task).unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    controller.start(&cancel).unwrap();
    controller
}

/// Fails the test, saying `what`, unless `dir` holds nothing.
pub fn assert_empty(dir: &Path, what: &str) {
    let left: Vec<_> = fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "{what}: {left:?}");
}

/// Fails the test, saying `what`, unless the state directory `state` holds no
/// task directory: nothing but `owners`, where live executors keep their locks.
pub fn assert_no_task_dirs(state: &Path, what: &str) {
    let left: Vec<_> = fs::read_dir(state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "owners")
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{what}: {left:?}");
}

/// The pid of a started task's program, from its container status.
pub fn pid_of(controller: &dyn Controller) -> i32 {
    let statuser = controller.as_container_statuser().unwrap();
    let status = statuser.container_status(&CancelToken::new()).unwrap();
    status.expect("a started program").pid
}

/// True while `pid` names a process that has not died (zombies count as dead).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Where the v1 hierarchy of `controller` is mounted, from `/proc/self/mountinfo`.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split_whitespace();
        let (fstype, _source, options) = (fs.next()?, fs.next()?, fs.next()?);
        let found = fstype == "cgroup" && options.split(',').any(|o| o == controller);
        let mount_point = mount.split_whitespace().nth(4)?;
        found.then(|| PathBuf::from(mount_point))
    })
}

/// Where the v2 hierarchy is mounted, from `/proc/self/mountinfo`.
pub fn v2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mount_point = mount.split_whitespace().nth(4)?;
        fs.starts_with("cgroup2 ")
            .then(|| PathBuf::from(mount_point))
    })
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// The cgroup this process belongs to in the v1 hierarchy of `controller`.
fn own_v1_cgroup(controller: &str) -> Option<PathBuf> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

/// A cgroup made for one test in a v1 hierarchy, beside this process's own; moves
/// its processes back to this process's cgroup and removes itself when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Where this process was: processes go back there.
    home: PathBuf,
}

impl TestCgroup {
    pub fn new(controller: &str) -> Option<TestCgroup> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let home = v1_mount(controller)?.join(own_v1_cgroup(controller)?);
        let name = format!(
            "swarmexec-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = home.join(name);
        fs::create_dir(&path).ok()?;
        Some(TestCgroup { path, home })
    }

    pub fn write(&self, file: &str, value: &str) {
        fs::write(self.path.join(file), value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {file}: {e}"));
    }

    pub fn read(&self, file: &str) -> String {
        fs::read_to_string(self.path.join(file))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.path.join("freezer.state").exists() {
            let _ = fs::write(self.path.join("freezer.state"), "THAWED");
        }
        for _ in 0..100 {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = fs::write(self.home.join("cgroup.procs"), pid);
            }
            if fs::remove_dir(&self.path).is_ok() || !Path::new(&self.path).exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        eprintln!("could not remove test cgroup {}", self.path.display());
    }
}

/// A child process, killed (if still running) and reaped when dropped, so that
/// a failing test leaves nothing running.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Waits, a little at a time, until `check` holds; fails the test, saying `what`,
/// once `limit` has passed.
pub fn eventually(what: &str, limit: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The `swarmexec` command built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_swarmexec");

/// Runs `swarmexec args` to the end.
pub fn swarmexec(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("swarmexec runs")
}

/// Bytes a program wrote, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
