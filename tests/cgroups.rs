//! Containment and limits with real programs and real cgroups. Where this host
//! gives no cgroups, each test checks the process-group fallback instead.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{alive, eventually, process_task, spec, started};
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{CancelToken, Controller, Error};
use tempfile::TempDir;

fn fixture() -> (ProcessExecutor, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    (executor, dir)
}

fn contained(executor: &ProcessExecutor) -> bool {
    executor.containment().method != "process group"
}

fn with_limits(mut task: Task, limits: Limits) -> Task {
    task.spec.resources = Some(ResourceRequirements {
        limits: Some(limits),
        ..Default::default()
    });
    task
}

/// Reads a pid a program wrote to `file`, waiting for it to appear.
fn pid_in(file: &Path) -> i32 {
    let mut pid = None;
    eventually(
        &format!("{}", file.display()),
        Duration::from_secs(10),
        || {
            pid = fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        },
    );
    pid.unwrap()
}

/// A script that leaves two processes its group cannot reach: one in a session
/// of its own, one daemonised by a double fork (and a session of its own).
fn escaping_script(dir: &Path, then: &str) -> String {
    let d = dir.display();
    format!(
        "setsid sh -c 'echo $$ > {d}/setsid; exec sleep 300' & \
         (setsid sh -c 'echo $$ > {d}/daemon; exec sleep 300' &) ; \
         while [ ! -s {d}/setsid ] || [ ! -s {d}/daemon ]; do sleep 0.01; done; {then}"
    )
}

fn kill_escapees(pids: &[i32]) {
    for pid in pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
}

#[test]
fn escaped_descendants_never_survive_any_way_of_stopping() {
    type Stop = fn(&ProcessController);
    let stops: [(&str, &str, Stop); 4] = [
        ("shutdown", "sleep 300", |c| {
            c.shutdown(&CancelToken::new()).unwrap()
        }),
        ("terminate", "sleep 300", |c| {
            c.terminate(&CancelToken::new()).unwrap()
        }),
        ("first exit", "exit 0", |c| {
            c.wait(&CancelToken::new()).unwrap()
        }),
        ("close", "sleep 300", |c| c.close().unwrap()),
    ];
    let (executor, dir) = fixture();
    for (i, (how, then, stop)) in stops.into_iter().enumerate() {
        let files = dir.path().join(format!("pids-{i}"));
        fs::create_dir(&files).unwrap();
        let script = escaping_script(&files, then);
        let controller = started(
            &executor,
            &process_task(&format!("escape-{i}"), spec(&["sh", "-c", &script])),
        );
        let escapees = [pid_in(&files.join("setsid")), pid_in(&files.join("daemon"))];
        stop(&controller);
        if contained(&executor) {
            for pid in escapees {
                assert!(!alive(pid), "{how}: process {pid} escaped its task");
            }
        } else {
            // Process groups only: what left the group is beyond reach.
            assert!(
                escapees.iter().all(|p| alive(*p)),
                "{how}: the fallback reaches no other session"
            );
            kill_escapees(&escapees);
        }
        drop(controller);
    }
}

#[test]
fn a_memory_hog_over_its_limit_is_killed_and_reported_out_of_memory() {
    let (executor, _dir) = fixture();
    let hog = spec(&["python3", "-c", "b = bytearray(256 << 20); print(len(b))"]);
    let task = with_limits(
        process_task("hog", hog),
        Limits {
            memory_bytes: 64 << 20,
            ..Default::default()
        },
    );
    if !executor.containment().memory_limit {
        let controller = executor.process_controller(&task).unwrap();
        let err = controller.prepare(&CancelToken::new()).unwrap_err();
        assert!(err.to_string().contains("memory limit needs"), "{err}");
        return;
    }
    let controller = started(&executor, &task);
    let err = controller.wait(&CancelToken::new()).unwrap_err();
    assert_eq!(err.exit_code(), Some(137), "{err}");
    assert!(err.to_string().contains("out of memory"), "{err}");
    let usage = controller.usage().unwrap();
    assert!(usage.memory_peak_bytes.unwrap() <= 64 << 20, "{usage:?}");
}

/// Forks 200 times, going on when a fork is refused, then waits.
const FORK_BOMB: &str = "
import os, time
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(300)
            os._exit(0)
    except OSError:
        pass
time.sleep(300)
";

#[test]
fn a_fork_bomb_stays_within_its_pids_limit_and_is_cleaned_up() {
    let (executor, _dir) = fixture();
    let task = with_limits(
        process_task("bomb", spec(&["python3", "-c", FORK_BOMB])),
        Limits {
            pids: 50,
            ..Default::default()
        },
    );
    if !executor.containment().pids_limit {
        let err = executor
            .process_controller(&task)
            .unwrap()
            .prepare(&CancelToken::new());
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("process-count limit needs"));
        return;
    }
    let controller = started(&executor, &task);
    let mut most = 0;
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let now = controller.usage().unwrap().processes.unwrap();
        most = most.max(now);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        (40..=50).contains(&most),
        "{most} processes under a limit of 50"
    );
    controller.terminate(&CancelToken::new()).unwrap();
    assert_eq!(controller.usage().unwrap().processes, Some(0));
}

#[test]
fn a_task_limited_to_half_a_cpu_uses_half_a_cpu() {
    let (executor, _dir) = fixture();
    let task = with_limits(
        process_task("spin", spec(&["sh", "-c", "while :; do :; done"])),
        Limits {
            nano_cpus: 500_000_000,
            ..Default::default()
        },
    );
    if !executor.containment().cpu_limit {
        let err = executor
            .process_controller(&task)
            .unwrap()
            .prepare(&CancelToken::new());
        assert!(err.unwrap_err().to_string().contains("CPU limit needs"));
        return;
    }
    let controller = started(&executor, &task);
    thread::sleep(Duration::from_millis(300));
    let (start, before) = (Instant::now(), controller.usage().unwrap().cpu.unwrap());
    thread::sleep(Duration::from_secs(2));
    let used = controller.usage().unwrap().cpu.unwrap() - before;
    let share = used.as_secs_f64() / start.elapsed().as_secs_f64();
    eprintln!(
        "a task limited to 0.5 CPUs used {:.1}% of a core over 2 s",
        share * 100.0
    );
    assert!((0.40..=0.60).contains(&share), "{share}");
    controller.terminate(&CancelToken::new()).unwrap();
}

#[test]
fn usage_is_reported_for_every_task() {
    let (executor, _dir) = fixture();
    let controller = started(
        &executor,
        &process_task(
            "busy",
            spec(&[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
            ]),
        ),
    );
    controller.wait(&CancelToken::new()).unwrap();
    let usage = controller.usage().unwrap();
    assert!(usage.cpu.unwrap() > Duration::ZERO, "{usage:?}");
    assert!(usage.memory_peak_bytes.unwrap() > 0, "{usage:?}");
    assert_eq!(usage.processes, Some(0));
}

#[test]
fn limits_that_make_no_sense_are_rejected() {
    let (executor, _dir) = fixture();
    let task = with_limits(
        process_task("negative", spec(&["true"])),
        Limits {
            memory_bytes: -1,
            ..Default::default()
        },
    );
    let err = executor
        .process_controller(&task)
        .unwrap()
        .prepare(&CancelToken::new());
    assert!(matches!(err, Err(Error::InvalidSpec(m)) if m.contains("negative")));
}

/// A `swarmexec run` command started as a child we can SIGKILL.
fn run_command(state: &Path, secret: &Path, script: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_swarmexec"))
        .arg("run")
        .arg("-q")
        .arg("--state-dir")
        .arg(state)
        .arg("--secret")
        .arg(format!("token={}", secret.display()))
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_killed_host_leaves_nothing_once_the_next_executor_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let secret = dir.path().join("secret");
    fs::write(&secret, "s3cret").unwrap();
    let files = dir.path().join("pids");
    fs::create_dir(&files).unwrap();
    let d = files.display();
    let script = escaping_script(&files, &format!("echo $$ > {d}/leader; exec sleep 301"));
    // Where the watchdog can act, everything goes with the host, not only its program.
    let watchdog = {
        let probe = ProcessExecutor::new(dir.path().join("probe")).unwrap();
        probe.containment().method == "cgroup v2"
    };
    let mut host = run_command(&state, &secret, &script);
    let escapees = [pid_in(&files.join("setsid")), pid_in(&files.join("daemon"))];
    let leader = pid_in(&files.join("leader"));
    let host_cgroups = executor_cgroups_of(leader);
    let secret_files = || -> usize {
        walk(&state)
            .into_iter()
            .filter(|p| p.ends_with("secrets/token"))
            .count()
    };
    assert_eq!(secret_files(), 1);

    // The watchdog starts a moment after the first program.
    thread::sleep(Duration::from_millis(200));
    host.kill().unwrap();
    host.wait().unwrap();
    // The task's program dies with its supervisor, within a second.
    eventually(
        "the task's program to die with its host",
        Duration::from_secs(1),
        || !alive(leader),
    );
    if watchdog {
        eventually("all it started to die too", Duration::from_secs(1), || {
            escapees.iter().all(|pid| !alive(*pid))
        });
    }

    let executor = ProcessExecutor::new(&state).unwrap();
    // Cleaning up after a dead owner is a chore of the next executor's: soon,
    // off the caller's path.
    eventually(
        "the dead host's secrets to go",
        Duration::from_secs(5),
        || secret_files() == 0,
    );
    if contained(&executor) {
        eventually(
            "what the dead host's task started to die",
            Duration::from_secs(5),
            || escapees.iter().all(|pid| !alive(*pid)),
        );
        eventually(
            "the dead host's cgroups to go",
            Duration::from_secs(5),
            || host_cgroups.iter().all(|c| !c.exists()),
        );
    } else {
        kill_escapees(&escapees);
    }
}

/// The directories holding the cgroups of the executor whose task runs `pid`:
/// the parents of the task's cgroups, in each hierarchy.
fn executor_cgroups_of(pid: i32) -> Vec<PathBuf> {
    let Ok(cgroups) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    cgroups
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            path.contains("/swarmexec/").then_some(())?;
            let mount = mountinfo.lines().find_map(|m| {
                let (mount, fs) = m.split_once(" - ")?;
                let point = mount.split_whitespace().nth(4)?;
                let options = fs.split_whitespace().nth(2)?;
                let v2 = fs.starts_with("cgroup2 ") && controllers.is_empty();
                let v1 = fs.starts_with("cgroup ")
                    && !controllers.is_empty()
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c));
                (v1 || v2).then(|| PathBuf::from(point))
            })?;
            let task = mount.join(path.trim_start_matches('/'));
            task.parent().map(Path::to_path_buf)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        }
        found.push(path);
    }
    found
}

#[test]
fn the_executor_says_what_it_enforces() {
    let (executor, _dir) = fixture();
    let containment = executor.containment();
    if contained(&executor) {
        assert!(containment.cgroups[0].exists(), "{containment:?}");
    } else {
        assert!(containment.cgroups.is_empty());
        assert!(!containment.memory_limit && !containment.pids_limit && !containment.cpu_limit);
    }
    let cgroups = containment.cgroups.clone();
    drop(executor);
    assert!(
        cgroups.iter().all(|c| !c.exists()),
        "the executor's cgroups go with it"
    );
}

#[test]
fn an_executor_dropped_with_its_last_controller_while_a_task_runs_leaves_nothing() {
    // Its cgroups go while its reaper stops; the one the task still held goes once
    // the reaper has killed the task.
    for round in 0..5 {
        let (executor, _dir) = fixture();
        let containment = executor.containment();
        let controller = started(
            &executor,
            &process_task(&format!("late.{round}"), spec(&["sleep", "30"])),
        );
        let pid = common::pid_of(&controller);
        drop(executor);
        drop(controller);
        assert!(
            !alive(pid),
            "round {round}: the program outlived its executor"
        );
        for cgroup in &containment.cgroups {
            assert!(
                !cgroup.exists(),
                "round {round}: {} is left",
                cgroup.display()
            );
        }
    }
}
