//! Nothing a task, a bad spec or a neighbour does can hurt the host: each test
//! plays the task's user, the careless caller or the neighbouring executor, with
//! real programs. Where this host lacks what a test needs (root, cgroups, a pid
//! namespace), the test checks the fallback instead.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, process_task, spec, started, BIN};
use swarmexec::agent::ManagerOptions;
use swarmexec::api::*;
use swarmexec::process::ProcessExecutor;
use swarmexec::{is_temporary, CancelToken, Controller, Error, SecretsProvider};

/// The task's user in these tests.
const NOBODY: u32 = 65534;

fn with_secret(mut task: Task, executor: &ProcessExecutor, target: &str) -> Task {
    let secret = Secret {
        id: format!("{}-secret", task.id),
        data: b"s3cret".to_vec(),
        ..Default::default()
    };
    executor.secrets().add(vec![secret.clone()]);
    if let Some(Runtime::Process(spec)) = &mut task.spec.runtime {
        spec.secrets.push(SecretReference {
            secret_id: secret.id,
            target: target.into(),
            ..Default::default()
        });
    }
    task
}

fn as_user(mut spec: ProcessSpec, user: &str) -> ProcessSpec {
    spec.user = Some(user.into());
    spec
}

/// A child process, killed and reaped when dropped.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_task_user_swapping_its_files_for_links_never_reaches_a_file_outside() {
    if !common::is_root() {
        // Without root nothing is handed to another user: the files are ours.
        return;
    }
    let top = tempfile::tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let victim = top.path().join("victim");
    fs::write(&victim, "root's").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let victim_dir = top.path().join("victim-dir");
    fs::create_dir(&victim_dir).unwrap();
    fs::write(victim_dir.join("keep"), "root's").unwrap();
    let state = top.path().join("state");
    fs::create_dir(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let executor = ProcessExecutor::new(&state).unwrap();
    let swaps = top.path().join("swaps");
    fs::write(&swaps, "").unwrap();
    std::os::unix::fs::chown(&swaps, Some(NOBODY), Some(NOBODY)).unwrap();

    // As the task's user: every file it finds in its directories becomes a link
    // to the victim, and every secrets directory a link to the victim's; each
    // swap that worked is counted.
    let attack = format!(
        r#"
        open(my $log, ">>", "{w}") or die; $log->autoflush(1);
        while (1) {{
            for my $f (glob("{s}/*/secrets/*"), glob("{s}/*/configs/*")) {{
                next if $f =~ /\.x$/ || -l $f;
                rename($f, "$f.x") and symlink("{v}", $f) and print $log "f\n";
            }}
            for my $d (glob("{s}/*/secrets")) {{
                next if -l $d;
                rename($d, "$d.x") and symlink("{vd}", $d) and print $log "d\n";
            }}
        }}"#,
        w = swaps.display(),
        s = state.display(),
        v = victim.display(),
        vd = victim_dir.display(),
    );
    let attacker = Command::new("perl")
        .args(["-e", &attack])
        .uid(NOBODY)
        .gid(NOBODY)
        .spawn()
        .expect("perl runs");
    // Killed however the test ends: it would spin on.
    let attacker = KilledOnDrop(attacker);

    let cancel = CancelToken::new();
    for round in 0..200 {
        let task = with_secret(
            process_task(&format!("race.{round}"), as_user(spec(&["true"]), "nobody")),
            &executor,
            "token",
        );
        let controller = executor.process_controller(&task).unwrap();
        controller.prepare(&cancel).unwrap();
        let dir = controller.task_dir().unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().uid(), NOBODY, "handed over");
        // Give the attacker a moment at the files it now owns.
        thread::sleep(Duration::from_micros(200));
        controller.remove(&cancel).unwrap();
        controller.close().unwrap();
        let meta = fs::symlink_metadata(&victim).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o7777),
            (0, 0o644),
            "round {round}"
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's");
        assert!(victim_dir.join("keep").exists(), "round {round}");
        assert_eq!(fs::metadata(&victim_dir).unwrap().uid(), 0);
    }
    drop(attacker);
    common::assert_no_task_dirs(&state, "every task directory deleted");
    let swapped = fs::read_to_string(&swaps).unwrap();
    assert!(
        swapped.lines().count() >= 20,
        "the attacker swapped files only {} times in 200 rounds",
        swapped.lines().count()
    );
}

#[test]
fn out_of_range_durations_and_limits_are_refused_at_prepare_and_the_executor_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    let huge = Duration::from_secs(10_000_000_000_000_000_000);
    let health = |f: fn(&mut HealthCheck, Duration)| {
        let mut check = HealthCheck {
            test: HealthTest::Command(vec!["true".into()]),
            ..Default::default()
        };
        f(&mut check, huge);
        ProcessSpec {
            healthcheck: Some(check),
            ..spec(&["sleep", "30"])
        }
    };
    let mut cases: Vec<(ProcessSpec, Limits, &str)> = vec![
        (
            health(|c, d| c.timeout = Some(d)),
            Limits::default(),
            "timeout",
        ),
        (
            health(|c, d| c.interval = Some(d)),
            Limits::default(),
            "interval",
        ),
        (
            health(|c, d| c.start_period = Some(d)),
            Limits::default(),
            "start period",
        ),
        (
            health(|c, d| c.start_interval = Some(d)),
            Limits::default(),
            "start interval",
        ),
        (
            ProcessSpec {
                stop_grace_period: Some(huge),
                ..spec(&["true"])
            },
            Limits::default(),
            "stop grace period",
        ),
    ];
    for (memory, shown) in [(1, "6 MiB"), (4 << 10, "6 MiB"), (8 << 10, "6 MiB")] {
        let limits = Limits {
            memory_bytes: memory,
            ..Default::default()
        };
        cases.push((spec(&["true"]), limits, shown));
    }
    let pids = Limits {
        pids: 5_000_000,
        ..Default::default()
    };
    cases.push((spec(&["true"]), pids, "4194304"));
    for (i, (spec, limits, named)) in cases.into_iter().enumerate() {
        let mut task = process_task(&format!("bad.{i}"), spec);
        task.spec.resources = Some(ResourceRequirements {
            limits: Some(limits),
            ..Default::default()
        });
        let controller = executor.process_controller(&task).unwrap();
        match controller.prepare(&CancelToken::new()) {
            Err(Error::InvalidSpec(message)) => {
                assert!(message.contains(named), "case {i}: {message}")
            }
            other => panic!("case {i}: {other:?}"),
        }
    }
    let huge_cap = ManagerOptions {
        retry_cap: Duration::MAX,
        ..Default::default()
    };
    assert!(matches!(huge_cap.validate(), Err(Error::InvalidSpec(_))));

    // The executor keeps working.
    let controller = started(&executor, &process_task("after", spec(&["true"])));
    controller.wait(&CancelToken::new()).unwrap();
}

#[test]
fn a_manager_given_a_huge_retry_cap_still_retries_and_closes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&attempts);
    let controller = swarmexec::StubController::new().on_prepare(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Err(swarmexec::make_temporary(Error::other("not yet")))
    });
    let options = ManagerOptions {
        retry_start: Duration::from_millis(1),
        retry_cap: Duration::MAX,
    };
    let (reports, _statuses) = crossbeam_channel::unbounded::<(String, TaskStatus)>();
    let mut task = process_task("capped", spec(&["true"]));
    task.status.state = TaskState::Assigned;
    let manager = swarmexec::agent::TaskManager::with_options(
        task,
        Arc::new(controller),
        Arc::new(reports),
        options,
    );
    // Doubling from 1 ms: a few retries come quickly, none panics the timer.
    eventually("a few retries", Duration::from_secs(10), || {
        attempts.load(Ordering::SeqCst) >= 5
    });
    manager.close();
    // The crate's timer still fires deadlines.
    let token = CancelToken::new().with_timeout(Duration::from_millis(10));
    token.wait();
}

/// `swarmexec run` in a pid namespace of its own, on `state`; its status.
fn run_in_new_pid_namespace(state: &Path) -> Option<std::process::ExitStatus> {
    let unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(BIN)
        .args(["run", "-q", "--state-dir"])
        .arg(state)
        .args(["--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ok()?;
    Some(unshare.status).filter(|_| !String::from_utf8_lossy(&unshare.stderr).contains("unshare"))
}

#[test]
fn runs_in_another_pid_namespace_leave_a_concurrent_run_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let secret = dir.path().join("secret");
    fs::write(&secret, "s3cret").unwrap();
    let pid_file = dir.path().join("pid");
    let mut first = Command::new(BIN)
        .args(["run", "-q", "--state-dir"])
        .arg(&state)
        .arg("--secret")
        .arg(format!("token={}", secret.display()))
        .args(["--", "sh", "-c"])
        .arg(format!("echo $$ > {}; exec sleep 30", pid_file.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the first run's program", Duration::from_secs(10), || {
        fs::read_to_string(&pid_file).is_ok_and(|p| p.ends_with('\n'))
    });
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let secrets = || -> Vec<PathBuf> {
        fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.path().join("secrets/token"))
            .filter(|p| p.exists())
            .collect()
    };
    assert_eq!(secrets().len(), 1);

    for _ in 0..3 {
        match run_in_new_pid_namespace(&state) {
            Some(status) => assert!(status.success(), "{status:?}"),
            // No pid namespaces here (no unshare, or not allowed): nothing to check.
            None => break,
        }
        // Its clean-up of "dead" owners has run by the time it exits.
        assert!(common::alive(pid), "the first run's program was killed");
        assert_eq!(secrets().len(), 1, "the first run's secret was deleted");
    }
    // And the other way round: the first run's neighbours, started after it in
    // its own namespace, leave it alone too.
    let out = Command::new(BIN)
        .args(["run", "-q", "--state-dir"])
        .arg(&state)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(common::alive(pid));

    let _ = Command::new("kill").arg(first.id().to_string()).status();
    first.wait().unwrap();
    assert!(!common::alive(pid));
    assert!(secrets().is_empty(), "the first run removed its own secret");
}

#[test]
fn a_task_that_makes_cgroups_of_its_own_leaves_nothing_and_holds_nothing_up() {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    let (Some(mount), "cgroup v2") = (common::v2_mount(), executor.containment().method) else {
        assert!(executor.containment().method != "cgroup v2");
        return;
    };
    // A nested supervisor: a cgroup inside its own, with a child in it.
    let made = dir.path().join("made");
    let script = format!(
        "cg={}$(sed -n 's/^0:://p' /proc/self/cgroup); mkdir $cg/inner || exit 1; \
         sh -c 'echo $$ > $0/cgroup.procs; exec sleep 30' $cg/inner & \
         sleep 0.2; cat $cg/inner/cgroup.procs > {}",
        mount.display(),
        made.display()
    );
    let controller = started(
        &executor,
        &process_task("nested", spec(&["sh", "-c", &script])),
    );
    controller.wait(&CancelToken::new()).unwrap();
    let inner = fs::read_to_string(&made).unwrap();
    let sleeper: i32 = inner.trim().parse().expect("a process in the inner cgroup");
    eventually(
        "the inner cgroup's process to die",
        Duration::from_secs(5),
        || !common::alive(sleeper),
    );
    controller.close().unwrap();
    let containment = executor.containment().cgroups[0].clone();
    let task_cgroups = || -> Vec<PathBuf> {
        fs::read_dir(&containment)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.path())
            .collect()
    };
    eventually("the nested cgroups to go", Duration::from_secs(5), || {
        task_cgroups().is_empty()
    });

    // The next task is not held up by the last one's cgroups.
    let cancel = CancelToken::new().with_timeout(Duration::from_secs(2));
    let next = executor
        .process_controller(&process_task("next", spec(&["true"])))
        .unwrap();
    next.prepare(&cancel).unwrap();
    next.start(&cancel).unwrap();
    next.wait(&cancel).unwrap();
    next.close().unwrap();
    eventually(
        "the next task's cgroup to go",
        Duration::from_secs(5),
        || task_cgroups().is_empty(),
    );
}

#[test]
fn a_start_waits_for_a_busy_reaper_only_as_long_as_its_token_allows() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(ProcessExecutor::new(dir.path().join("state")).unwrap());
    let containment = executor.containment();
    if containment.method != "cgroup v2" {
        return;
    }
    // Programs cloned into a frozen cgroup start frozen: the reaper, suspended
    // until the first one executes, is busy until the cgroup thaws.
    let freeze = containment.cgroups[0].join("cgroup.freeze");
    fs::write(&freeze, "1").unwrap();
    let first = executor
        .process_controller(&process_task("frozen", spec(&["true"])))
        .unwrap();
    first.prepare(&CancelToken::new()).unwrap();
    let first = Arc::new(first);
    let starting = {
        let first = Arc::clone(&first);
        thread::spawn(move || first.start(&CancelToken::new()))
    };
    thread::sleep(Duration::from_millis(100));

    let second = executor
        .process_controller(&process_task("impatient", spec(&["true"])))
        .unwrap();
    second.prepare(&CancelToken::new()).unwrap();
    let began = Instant::now();
    let result = second.start(&CancelToken::new().with_timeout(Duration::from_millis(50)));
    let took = began.elapsed();
    fs::write(&freeze, "0").unwrap();
    assert!(matches!(result, Err(Error::DeadlineExceeded)), "{result:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");

    starting.join().unwrap().unwrap();
    first.wait(&CancelToken::new()).unwrap();
    // The abandoned start started nothing; a new one does.
    assert_eq!(second.usage(), None);
    second.start(&CancelToken::new()).unwrap();
    second.wait(&CancelToken::new()).unwrap();
}

/// A cgroup parent of the test's own, in the v2 hierarchy, relative to its root.
struct GivenParent {
    path: PathBuf,
    relative: PathBuf,
}

impl GivenParent {
    fn new(name: &str) -> Option<GivenParent> {
        let mount = common::v2_mount()?;
        let relative = PathBuf::from(format!("{name}-{}", std::process::id()));
        let path = mount.join(&relative);
        fs::create_dir(&path).ok()?;
        Some(GivenParent { path, relative })
    }
}

impl Drop for GivenParent {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}

#[test]
fn a_refused_cgroup_is_tried_again_and_a_given_parent_survives_the_executor() {
    let Some(parent) = GivenParent::new("swarmexec-given") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::builder(dir.path().join("state"))
        .cgroup_parent(&parent.relative)
        .build()
        .unwrap();
    // The host refuses new cgroups for a while (a descendant limit reached).
    fs::write(parent.path.join("cgroup.max.descendants"), "0").unwrap();
    let controller = executor
        .process_controller(&process_task("refused", spec(&["true"])))
        .unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    let refused = controller.start(&cancel).unwrap_err();
    assert!(is_temporary(&refused), "{refused}");
    assert!(
        refused.to_string().contains("cannot create cgroup"),
        "{refused}"
    );
    assert_eq!(controller.usage(), None, "nothing ran uncontained");

    fs::write(parent.path.join("cgroup.max.descendants"), "max").unwrap();
    controller.start(&cancel).unwrap();
    let pid = common::pid_of(&controller);
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    controller.wait(&cancel).unwrap();
    assert!(
        cgroup.is_empty() || cgroup.contains(parent.relative.to_str().unwrap()),
        "{cgroup}"
    );
    drop((controller, executor));
    assert!(parent.path.is_dir(), "the given parent is the caller's");
    let left: Vec<_> = fs::read_dir(&parent.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_unlimited_task_reports_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    let controller = started(
        &executor,
        &process_task("unlimited", spec(&["sleep", "30"])),
    );
    let usage = controller.usage().unwrap();
    if executor.containment().method == "process group" {
        assert_eq!(usage.memory_bytes, None, "nothing to count with");
    } else {
        assert!(usage.memory_bytes.unwrap_or(0) > 0, "{usage:?}");
    }
    controller.terminate(&CancelToken::new()).unwrap();
}

#[test]
fn an_unsafe_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let refused = ProcessExecutor::new(&open).unwrap_err().to_string();
    assert!(refused.contains("writable by others"), "{refused}");

    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    assert!(
        ProcessExecutor::new(&link).is_err(),
        "a link is not followed"
    );

    if common::is_root() {
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        let refused = ProcessExecutor::new(&theirs).unwrap_err().to_string();
        assert!(refused.contains("owned by uid 65534"), "{refused}");
    }
}

/// Run by `a_host_that_ignores_sigchld_is_told_at_new` in a child process whose
/// SIGCHLD is ignored (inherited through exec).
#[test]
#[ignore = "run by a_host_that_ignores_sigchld_is_told_at_new"]
fn with_sigchld_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let refused = ProcessExecutor::new(dir.path()).unwrap_err().to_string();
    assert!(refused.contains("SIGCHLD is ignored"), "{refused}");
}

#[test]
fn a_host_that_ignores_sigchld_is_told_at_new() {
    let me = std::env::current_exe().unwrap();
    let out = Command::new("perl")
        .args(["-e", "$SIG{CHLD} = 'IGNORE'; exec @ARGV or die"])
        .arg(&me)
        .args(["--exact", "with_sigchld_ignored", "--ignored"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 passed"), "{stdout}");
}

/// Records, when dropped, the name of the thread that dropped it.
struct DropRecorder(Arc<parking_lot::Mutex<Vec<String>>>);

impl Drop for DropRecorder {
    fn drop(&mut self) {
        let name = thread::current().name().unwrap_or("unnamed").to_owned();
        self.0.lock().push(name);
    }
}

#[test]
fn no_controller_is_dropped_on_a_timer_or_pool_thread() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let drops = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let options = ManagerOptions {
        retry_start: Duration::from_micros(100),
        retry_cap: Duration::from_millis(2),
    };
    let hosts: Vec<_> = (0..4)
        .map(|host| {
            let drops = Arc::clone(&drops);
            thread::spawn(move || {
                for i in 0..2500 {
                    let recorder = DropRecorder(Arc::clone(&drops));
                    let failures = AtomicUsize::new(0);
                    // Retried through the timer a few times, then done.
                    let controller = swarmexec::StubController::new().on_prepare(move |_| {
                        let _held = &recorder;
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            Err(swarmexec::make_temporary(Error::other("again")))
                        } else {
                            Ok(())
                        }
                    });
                    let (reports, _statuses) =
                        crossbeam_channel::unbounded::<(String, TaskStatus)>();
                    let mut task = process_task(&format!("stress.{host}.{i}"), spec(&["true"]));
                    task.status.state = TaskState::Assigned;
                    let manager = swarmexec::agent::TaskManager::with_options(
                        task,
                        Arc::new(controller),
                        Arc::new(reports),
                        options,
                    );
                    // Closed at any point of its retries.
                    thread::sleep(Duration::from_micros((i % 7) as u64 * 150));
                    drop(manager);
                }
            })
        })
        .collect();
    for host in hosts {
        host.join().unwrap();
    }
    let drops = drops.lock();
    assert_eq!(drops.len(), 10_000);
    let stray: Vec<&String> = drops
        .iter()
        .filter(|name| name.starts_with("swarmexec-"))
        .collect();
    assert!(
        stray.is_empty(),
        "{} dropped on {:?}",
        stray.len(),
        stray.first()
    );
}
