//! Health checks with real programs and probes.

mod common;

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{alive, pid_of, process_task, spec};
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{CancelToken, Controller, Error};
use tempfile::TempDir;

const MS: Duration = Duration::from_millis(1);

fn fixture() -> (ProcessExecutor, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    (executor, dir)
}

/// A check probing with `shell` every 50 ms.
fn check(shell: &str) -> HealthCheck {
    HealthCheck {
        test: HealthTest::Shell(shell.into()),
        interval: Some(50 * MS),
        start_interval: Some(50 * MS),
        timeout: Some(Duration::from_secs(5)),
        retries: Some(3),
        ..Default::default()
    }
}

/// `check` with failures not counting for a while.
fn patient(mut check: HealthCheck) -> HealthCheck {
    check.start_period = Some(Duration::from_secs(30));
    check
}

fn prepared(
    executor: &ProcessExecutor,
    command: &[&str],
    check: HealthCheck,
) -> Arc<ProcessController> {
    let mut s = spec(command);
    s.healthcheck = Some(check);
    let controller = executor
        .process_controller(&process_task("probed", s))
        .unwrap();
    controller.prepare(&CancelToken::new()).unwrap();
    Arc::new(controller)
}

#[test]
fn start_returns_only_once_the_probe_passes() {
    let (executor, dir) = fixture();
    let ready = dir.path().join("ready");
    let probe = patient(check(&format!("test -f {}", ready.display())));
    let controller = prepared(&executor, &["sleep", "30"], probe);
    let starting = {
        let controller = Arc::clone(&controller);
        thread::spawn(move || controller.start(&CancelToken::new()))
    };
    thread::sleep(Duration::from_millis(400));
    assert!(
        !starting.is_finished(),
        "still starting: the probe has not passed"
    );
    assert_eq!(controller.health().unwrap().state, HealthState::Starting);
    fs::write(&ready, "").unwrap();
    starting.join().unwrap().unwrap();
    let health = controller.health().unwrap();
    assert_eq!(health.state, HealthState::Healthy);
    assert_eq!(health.log.last().unwrap().exit_code, 0);
    controller.close().unwrap();
}

#[test]
fn a_probe_that_never_passes_fails_start_with_its_output() {
    let (executor, _dir) = fixture();
    let mut never = check("echo not ready yet; exit 1");
    never.start_period = Some(200 * MS);
    let controller = prepared(&executor, &["sleep", "30"], never);
    let start = Instant::now();
    let err = controller.start(&CancelToken::new()).unwrap_err();
    assert!(
        start.elapsed() >= 200 * MS,
        "failures in the start period do not count"
    );
    let message = err.to_string();
    assert!(message.contains("unhealthy"), "{message}");
    assert!(message.contains("not ready yet"), "{message}");
    assert!(!swarmexec::is_temporary(&err));
    assert!(!alive(pid_of(&*controller)), "the program is stopped");
}

#[test]
fn a_running_task_whose_probe_fails_ends_unhealthy_and_stopped() {
    let (executor, dir) = fixture();
    let healthy = dir.path().join("healthy");
    fs::write(&healthy, "").unwrap();
    let controller = prepared(
        &executor,
        &["sleep", "30"],
        check(&format!("test -f {}", healthy.display())),
    );
    controller.start(&CancelToken::new()).unwrap();
    let pid = pid_of(&*controller);
    fs::remove_file(&healthy).unwrap();
    let err = controller.wait(&CancelToken::new()).unwrap_err();
    assert!(err.to_string().contains("unhealthy"), "{err}");
    assert!(!alive(pid));
    assert_eq!(controller.health().unwrap().state, HealthState::Unhealthy);
    assert!(controller.health().unwrap().failing_streak >= 3);
}

#[test]
fn a_probe_that_hangs_is_killed_at_its_timeout_and_counts_as_a_failure() {
    let (executor, _dir) = fixture();
    let mut hangs = check("echo hanging; sleep 30");
    hangs.timeout = Some(100 * MS);
    hangs.retries = Some(1);
    let controller = prepared(&executor, &["sleep", "30"], hangs);
    let start = Instant::now();
    let err = controller.start(&CancelToken::new()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    let probe = controller.health().unwrap().log.pop().unwrap();
    assert_ne!(probe.exit_code, 0);
}

#[test]
fn a_long_start_is_cancelled_at_once_and_resumes_waiting() {
    let (executor, dir) = fixture();
    let ready = dir.path().join("ready");
    let probe = patient(check(&format!("test -f {}", ready.display())));
    let controller = prepared(&executor, &["sleep", "30"], probe);
    let token = CancelToken::new();
    let starting = {
        let (controller, token) = (Arc::clone(&controller), token.clone());
        thread::spawn(move || (controller.start(&token), Instant::now()))
    };
    thread::sleep(Duration::from_millis(200));
    let cancelled = Instant::now();
    token.cancel();
    let (result, returned) = starting.join().unwrap();
    assert!(matches!(result, Err(Error::Canceled)), "{result:?}");
    assert!(returned.duration_since(cancelled) < 50 * MS);
    // Started again, it waits for health again: never "already started".
    let again = {
        let controller = Arc::clone(&controller);
        thread::spawn(move || controller.start(&CancelToken::new()))
    };
    thread::sleep(Duration::from_millis(200));
    assert!(!again.is_finished());
    fs::write(&ready, "").unwrap();
    again.join().unwrap().unwrap();
}

#[test]
fn bad_health_checks_are_rejected_at_prepare() {
    let (executor, _dir) = fixture();
    let cases = [
        (
            HealthTest::Shell("  ".into()),
            None,
            "probe command is empty",
        ),
        (HealthTest::Command(vec![]), None, "probe command is empty"),
        (
            HealthTest::Command(vec!["no-such-probe".into()]),
            None,
            "does not exist",
        ),
        (
            HealthTest::Shell("true".into()),
            Some(Duration::ZERO),
            "interval must be above zero",
        ),
    ];
    for (test, interval, says) in cases {
        let mut s = spec(&["true"]);
        s.healthcheck = Some(HealthCheck {
            test,
            interval,
            ..Default::default()
        });
        let controller = executor
            .process_controller(&process_task("bad", s))
            .unwrap();
        let err = controller.prepare(&CancelToken::new()).unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[test]
fn a_shutdown_while_waiting_for_health_stops_the_task_as_usual() {
    use swarmexec::agent::TaskManager;
    let (executor, dir) = fixture();
    let never = dir.path().join("never");
    let mut s = spec(&["sleep", "30"]);
    s.healthcheck = Some(patient(check(&format!("test -f {}", never.display()))));
    let mut task = process_task("waiting", s);
    task.status.state = TaskState::Assigned;
    let controller = Arc::new(executor.process_controller(&task).unwrap());
    let (tx, reports) = crossbeam_channel::unbounded::<(String, TaskStatus)>();
    let manager = TaskManager::new(
        task.clone(),
        Arc::clone(&controller) as Arc<dyn Controller>,
        tx,
    );
    let starting = |s: &TaskStatus| s.state == TaskState::Starting;
    while !starting(&reports.recv_timeout(Duration::from_secs(10)).unwrap().1) {}
    thread::sleep(Duration::from_millis(200));
    let pid = pid_of(&*controller);
    let asked = Instant::now();
    manager
        .update(&Task {
            desired_state: TaskState::Shutdown,
            ..task
        })
        .unwrap();
    loop {
        let (_, status) = reports.recv_timeout(Duration::from_secs(10)).unwrap();
        if status.state == TaskState::Shutdown {
            break;
        }
    }
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert!(!alive(pid), "stopped as usual");
    manager.close();
}

#[test]
fn a_closed_controller_leaves_no_probe_holding_its_executor() {
    // Probes start every millisecond; whenever the last handles go, the executor
    // goes with them, on this thread: its cgroup is gone the moment they are.
    for round in 0..20 {
        let (executor, _dir) = fixture();
        let cgroups = executor.containment().cgroups;
        let mut quick = check("true");
        quick.interval = Some(MS);
        quick.start_interval = Some(MS);
        let controller = prepared(&executor, &["sleep", "30"], quick);
        controller.start(&CancelToken::new()).unwrap();
        thread::sleep(Duration::from_millis(round % 5));
        drop(controller);
        drop(executor);
        for cgroup in &cgroups {
            assert!(
                !cgroup.exists(),
                "round {round}: {} is left",
                cgroup.display()
            );
        }
    }
}
