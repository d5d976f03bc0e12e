//! The process executor with real programs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::{alive, pid_of, spec};
use parking_lot::Mutex;
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{
    do_task, resolve, CancelToken, ConfigsProvider, Controller, Error, Executor, LogPublisherFn,
    SecretsProvider,
};
use tempfile::TempDir;

struct Fixture {
    executor: ProcessExecutor,
    dir: TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    Fixture { executor, dir }
}

fn sh(script: &str) -> ProcessSpec {
    spec(&["sh", "-c", script])
}

fn task(id: &str, spec: ProcessSpec) -> Task {
    common::process_task(id, spec)
}

/// Resolves and drives the task until `do_task` has nothing more to do.
fn run(executor: &ProcessExecutor, mut task: Task) -> (Task, Box<dyn Controller>) {
    let cancel = CancelToken::new();
    let (status, controller) = resolve(&cancel, &task, executor);
    task.status = status;
    let controller = controller.expect("a controller");
    loop {
        let (status, result) = do_task(&cancel, &task, &*controller);
        task.status = status;
        match result {
            Ok(()) if task.status.state.is_terminal() => break,
            Ok(()) => continue,
            Err(Error::TaskNoop) => break,
            Err(e) => panic!("unexpected {e} in {:?}", task.status),
        }
    }
    (task, controller)
}

/// A prepared and started controller for `spec`.
fn started(executor: &ProcessExecutor, id: &str, spec: ProcessSpec) -> ProcessController {
    common::started(executor, &task(id, spec))
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

type Lines = Vec<(LogStream, String)>;

fn logs_of(controller: &dyn Controller, options: LogSubscriptionOptions) -> Lines {
    let lines = Mutex::new(Vec::new());
    let publisher = LogPublisherFn(|_: &CancelToken, m: LogMessage| {
        lines
            .lock()
            .push((m.stream, String::from_utf8_lossy(&m.data).into_owned()));
        Ok(())
    });
    let logs = controller.as_logs().unwrap();
    logs.logs(&CancelToken::new(), &publisher, &options)
        .unwrap();
    lines.into_inner()
}

#[test]
fn a_successful_program_completes() {
    let f = fixture();
    let (task, controller) = run(&f.executor, task("ok", spec(&["true"])));
    assert_eq!(task.status.state, TaskState::Completed);
    assert_eq!(task.status.message, "finished");
    let container = task.status.container.unwrap();
    assert!(container.pid > 0);
    assert_eq!(container.exit_code, 0);
    assert_eq!(container.container_id, format!("ok.{}", container.pid));
    controller.remove(&CancelToken::new()).unwrap();
    controller.close().unwrap();
}

#[test]
fn a_failing_program_fails_with_its_exit_code() {
    let f = fixture();
    let (task, _) = run(&f.executor, task("three", sh("exit 3")));
    assert_eq!(task.status.state, TaskState::Failed);
    assert_eq!(task.status.err, "exited with status 3");
    assert_eq!(task.status.container.unwrap().exit_code, 3);
    let (task, _) = run(&f.executor, self::task("false", spec(&["false"])));
    assert_eq!(task.status.container.unwrap().exit_code, 1);
}

#[test]
fn a_program_killed_by_a_signal_reports_128_plus_the_signal() {
    let f = fixture();
    let (task, _) = run(&f.executor, task("killed", sh("kill -KILL $$")));
    assert_eq!(task.status.state, TaskState::Failed);
    assert_eq!(task.status.err, "killed by signal 9 (SIGKILL)");
    assert_eq!(task.status.container.unwrap().exit_code, 137);
}

#[test]
fn shutdown_stops_a_program_with_its_stop_signal() {
    let f = fixture();
    let ready = f.dir.path().join("ready");
    let script = format!(
        "trap 'exit 0' USR1; touch {}; while true; do sleep 0.05; done",
        ready.display()
    );
    let mut s = sh(&script);
    s.stop_signal = Some(Signal::USR1);
    s.stop_grace_period = Some(Duration::from_secs(20));
    let controller = started(&f.executor, "graceful", s);
    eventually("the trap is set", || ready.exists());
    let start = Instant::now();
    controller.shutdown(&CancelToken::new()).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "stopped long before the grace period"
    );
    controller
        .wait(&CancelToken::new())
        .expect("the trap exits with 0");
}

#[test]
fn shutdown_kills_a_program_that_ignores_the_stop_signal_after_the_grace_period() {
    let f = fixture();
    let mut s = sh("trap '' TERM; sleep 30");
    s.stop_grace_period = Some(Duration::from_millis(300));
    let controller = started(&f.executor, "stubborn", s);
    let pid = pid_of(&controller);
    thread::sleep(Duration::from_millis(50)); // let the trap be set
    let start = Instant::now();
    controller.shutdown(&CancelToken::new()).unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited out the grace period: {took:?}"
    );
    assert!(!alive(pid));
    let err = controller.wait(&CancelToken::new()).unwrap_err();
    assert_eq!(err.exit_code(), Some(137));
}

#[test]
fn terminate_leaves_no_child_or_grandchild_behind() {
    let f = fixture();
    let pids = f.dir.path().join("pids");
    let script = format!(
        "sh -c 'sleep 60 & echo $! >> {p}; sleep 60' & echo $! >> {p}; sleep 60 & echo $! >> {p}; wait",
        p = pids.display()
    );
    let controller = started(&f.executor, "family", sh(&script));
    let leader = pid_of(&controller);
    eventually("three descendants", || {
        fs::read_to_string(&pids).map_or(0, |s| s.lines().count()) == 3
    });
    let descendants: Vec<i32> = fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    controller.terminate(&CancelToken::new()).unwrap();
    assert!(!alive(leader));
    for pid in descendants {
        eventually("descendant gone", || !alive(pid));
    }
}

#[test]
fn descendants_are_killed_when_the_program_exits() {
    let f = fixture();
    let pid_file = f.dir.path().join("bg");
    let script = format!("sleep 60 & echo $! > {}; exit 0", pid_file.display());
    let (task, _) = run(&f.executor, task("leaves-a-child", sh(&script)));
    assert_eq!(task.status.state, TaskState::Completed);
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("background child gone", || !alive(pid));
}

#[test]
fn a_cancelled_wait_returns_at_once_and_leaves_the_program_running() {
    let f = fixture();
    let controller = started(&f.executor, "sleeper", spec(&["sleep", "30"]));
    let cancel = CancelToken::new().with_timeout(Duration::from_millis(50));
    let start = Instant::now();
    let err = controller.wait(&cancel).unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(alive(pid_of(&controller)));

    let task = Task {
        status: TaskStatus {
            state: TaskState::Running,
            ..Default::default()
        },
        ..task("sleeper", spec(&["sleep", "30"]))
    };
    let cancelled = CancelToken::new();
    cancelled.cancel();
    let (status, result) = do_task(&cancelled, &task, &controller);
    assert!(matches!(result, Err(Error::TaskRetry)));
    assert_eq!(status.state, TaskState::Running);
    controller.terminate(&CancelToken::new()).unwrap();
}

#[test]
fn wait_races_shutdown_and_terminate_on_many_threads() {
    let f = fixture();
    for round in 0..5 {
        let mut s = spec(&["sleep", "30"]);
        s.stop_grace_period = Some(Duration::from_millis(200));
        let controller = Arc::new(started(&f.executor, &format!("race-{round}"), s));
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let controller = Arc::clone(&controller);
                thread::spawn(move || {
                    let cancel = CancelToken::new();
                    match i % 3 {
                        0 => controller.wait(&cancel).unwrap_err().exit_code(),
                        1 => controller.shutdown(&cancel).map(|_| None).unwrap(),
                        _ => controller.terminate(&cancel).map(|_| None).unwrap(),
                    }
                })
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let code = handle.join().unwrap();
            if i % 3 == 0 {
                assert!(matches!(code, Some(137 | 143)), "{code:?}");
            }
        }
    }
}

#[test]
fn a_hundred_megabytes_of_output_neither_blocks_nor_grows_memory() {
    let dir = tempfile::tempdir().unwrap();
    let capacity = 256 * 1024;
    let executor = ProcessExecutor::new(dir.path())
        .unwrap()
        .with_log_capacity(capacity);
    let (task, controller) = run(
        &executor,
        task("flood", sh("head -c 100000000 /dev/zero; echo done >&2")),
    );
    assert_eq!(task.status.state, TaskState::Completed);
    let lines = logs_of(&*controller, LogSubscriptionOptions::default());
    let held: usize = lines.iter().map(|(_, l)| l.len()).sum();
    assert!(held <= capacity, "{held} bytes held");
    assert!(held > capacity / 2, "the newest output is kept: {held}");
    let done = (LogStream::Stderr, "done\n".to_string());
    assert!(lines.contains(&done), "the output after the flood is kept");
}

#[test]
fn logs_honour_streams_tail_and_since() {
    let f = fixture();
    let script = "echo out1; echo err1 >&2; sleep 0.2; echo out2; printf 'no newline'";
    let (task, controller) = run(&f.executor, task("talker", sh(script)));
    assert_eq!(task.status.state, TaskState::Completed);
    let all = logs_of(&*controller, LogSubscriptionOptions::default());
    let texts: Vec<&str> = all.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["out1\n", "err1\n", "out2\n", "no newline"]);
    assert_eq!(all[1].0, LogStream::Stderr);

    let stderr = LogSubscriptionOptions {
        streams: vec![LogStream::Stderr],
        ..Default::default()
    };
    assert_eq!(
        logs_of(&*controller, stderr),
        [(LogStream::Stderr, "err1\n".to_string())]
    );

    let stdout_tail = LogSubscriptionOptions {
        streams: vec![LogStream::Stdout],
        tail: Some(2),
        ..Default::default()
    };
    let tail: Vec<String> = logs_of(&*controller, stdout_tail)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(tail, ["out2\n", "no newline"]);

    let future = LogSubscriptionOptions {
        since: Some(SystemTime::now() + Duration::from_secs(60)),
        ..Default::default()
    };
    assert!(logs_of(&*controller, future).is_empty());
}

#[test]
fn following_logs_streams_until_the_program_exits() {
    let f = fixture();
    let controller = started(
        &f.executor,
        "follow",
        sh("echo a; sleep 0.3; echo b; sleep 0.3; echo c"),
    );
    let start = Instant::now();
    let follow = LogSubscriptionOptions {
        follow: true,
        ..Default::default()
    };
    let lines: Vec<String> = logs_of(&controller, follow)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["a\n", "b\n", "c\n"]);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "followed as it was written"
    );
}

#[test]
fn following_logs_stops_when_cancelled() {
    let f = fixture();
    let controller = started(&f.executor, "quiet", spec(&["sleep", "30"]));
    let cancel = CancelToken::new().with_timeout(Duration::from_millis(100));
    let publisher = LogPublisherFn(|_: &CancelToken, _: LogMessage| Ok(()));
    let follow = LogSubscriptionOptions {
        follow: true,
        ..Default::default()
    };
    let start = Instant::now();
    controller
        .as_logs()
        .unwrap()
        .logs(&cancel, &publisher, &follow)
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    controller.terminate(&CancelToken::new()).unwrap();
}

/// Runs `spec` to its end and returns the rejection message.
fn rejection(executor: &ProcessExecutor, id: &str, spec: ProcessSpec) -> String {
    let (task, _) = run(executor, task(id, spec));
    assert_eq!(task.status.state, TaskState::Rejected, "{:?}", task.status);
    task.status.err
}

#[test]
fn bad_specs_reject_the_task_with_a_message_naming_the_problem() {
    let f = fixture();
    let not_executable = f.dir.path().join("script.sh");
    fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let with = |edit: fn(&mut ProcessSpec)| {
        let mut s = spec(&["true"]);
        edit(&mut s);
        s
    };
    let reference = |target: &str| ProcessSpec {
        secrets: vec![SecretReference {
            secret_id: "s".into(),
            target: target.into(),
            ..Default::default()
        }],
        ..spec(&["true"])
    };
    f.executor.secrets().add(vec![Secret {
        id: "s".into(),
        data: b"x".to_vec(),
        ..Default::default()
    }]);
    let cases: Vec<(ProcessSpec, String)> = vec![
        (spec(&[]), "invalid task spec: command is empty".into()),
        (
            spec(&["no-such-program-xyz"]),
            "program not found: no-such-program-xyz".into(),
        ),
        (
            spec(&["/nonexistent/bin/tool"]),
            "program not found: /nonexistent/bin/tool".into(),
        ),
        (
            spec(&[not_executable.to_str().unwrap()]),
            format!("program is not executable: {}", not_executable.display()),
        ),
        (
            with(|s| s.dir = Some("/nonexistent-dir".into())),
            "invalid task spec: working directory /nonexistent-dir does not exist".into(),
        ),
        (
            with(|s| {
                s.env = vec![
                    ("GOOD".into(), "1".into()),
                    ("PASS=WORD".into(), "x".into()),
                ]
            }),
            "invalid task spec: env entry 1: the name is empty or holds '=' or NUL".into(),
        ),
        (
            with(|s| s.env = vec![("".into(), "x".into())]),
            "invalid task spec: env entry 0: the name is empty or holds '=' or NUL".into(),
        ),
        (
            with(|s| s.env = vec![("A".into(), "x\0y".into())]),
            "invalid task spec: env entry 0: the value holds NUL".into(),
        ),
        (
            with(|s| s.user = Some("no-such-user-xyz".into())),
            "invalid task spec: unknown user \"no-such-user-xyz\"".into(),
        ),
        (
            with(|s| s.group = Some("no-such-group-xyz".into())),
            "invalid task spec: unknown group \"no-such-group-xyz\"".into(),
        ),
        (
            with(|s| s.groups = vec!["no-such-group-xyz".into()]),
            "invalid task spec: unknown group \"no-such-group-xyz\"".into(),
        ),
        (
            ProcessSpec {
                secrets: vec![SecretReference {
                    secret_id: "missing".into(),
                    target: "m".into(),
                    ..Default::default()
                }],
                ..spec(&["true"])
            },
            "secret missing not found".into(),
        ),
        (
            ProcessSpec {
                configs: vec![ConfigReference {
                    config_id: "nocfg".into(),
                    target: "c".into(),
                    ..Default::default()
                }],
                ..spec(&["true"])
            },
            "config nocfg not found".into(),
        ),
        (
            reference(""),
            "invalid task spec: secret target \"\" is empty".into(),
        ),
        (
            reference("/etc/passwd"),
            "invalid task spec: secret target \"/etc/passwd\" is an absolute path".into(),
        ),
        (
            reference("a/b"),
            "invalid task spec: secret target \"a/b\" contains '/'".into(),
        ),
        (
            reference(".."),
            "invalid task spec: secret target \"..\" is '.' or '..'".into(),
        ),
        (
            reference("a\0b"),
            "invalid task spec: secret target \"a\\0b\" contains NUL".into(),
        ),
    ];
    for (i, (s, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            rejection(&f.executor, &format!("bad-{i}"), s),
            expected,
            "case {i}"
        );
    }
    common::assert_no_task_dirs(
        f.executor.state_dir(),
        "a rejected task leaves no directory",
    );
}

#[test]
fn other_runtimes_are_unsupported() {
    let f = fixture();
    let t = Task {
        spec: TaskSpec {
            runtime: Some(Runtime::Container(ContainerSpec::default())),
            ..Default::default()
        },
        ..Default::default()
    };
    let (status, controller) = resolve(&CancelToken::new(), &t, &f.executor);
    assert!(matches!(controller, Err(Error::RuntimeUnsupported)));
    assert_eq!(status.state, TaskState::Rejected);
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn secrets_and_configs_become_files_for_the_program_and_go_with_remove() {
    let f = fixture();
    f.executor.secrets().add(vec![Secret {
        id: "db".into(),
        data: b"hunter2".to_vec(),
        ..Default::default()
    }]);
    f.executor.configs().add(vec![
        Config {
            id: "app".into(),
            data: b"port=80".to_vec(),
            ..Default::default()
        },
        Config {
            id: "extra".into(),
            data: b"x".to_vec(),
            ..Default::default()
        },
    ]);
    let s = ProcessSpec {
        secrets: vec![SecretReference { secret_id: "db".into(), target: "db-password".into(), ..Default::default() }],
        configs: vec![
            ConfigReference { config_id: "app".into(), target: "app.conf".into(), ..Default::default() },
            ConfigReference { config_id: "extra".into(), target: "extra".into(), mode: Some(0o640), ..Default::default() },
        ],
        ..sh("cat \"$SWARMEXEC_SECRETS_DIR/db-password\"; echo; cat \"$SWARMEXEC_CONFIGS_DIR/app.conf\"; echo; echo \"$SWARMEXEC_TASK_ID\"")
    };
    let controller = f
        .executor
        .process_controller(&task("with-secrets", s))
        .unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    let task_dir = controller.task_dir().unwrap();
    assert!(task_dir.starts_with(f.executor.state_dir()));
    assert_eq!(mode(&task_dir.join("secrets")), 0o700);
    assert_eq!(mode(&task_dir.join("configs")), 0o700);
    assert_eq!(mode(&task_dir.join("secrets/db-password")), 0o400);
    assert_eq!(mode(&task_dir.join("configs/app.conf")), 0o444);
    assert_eq!(mode(&task_dir.join("configs/extra")), 0o640);
    assert_eq!(
        fs::read(task_dir.join("secrets/db-password")).unwrap(),
        b"hunter2"
    );

    controller.start(&cancel).unwrap();
    controller.wait(&cancel).unwrap();
    let lines: Vec<String> = logs_of(&controller, Default::default())
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["hunter2\n", "port=80\n", "with-secrets\n"]);

    controller.remove(&cancel).unwrap();
    assert!(!task_dir.exists());
    controller.remove(&cancel).unwrap(); // idempotent
}

#[test]
fn the_program_does_not_inherit_the_host_environment_unless_asked() {
    let f = fixture();
    let mut s = spec(&["env"]);
    s.env = vec![("GREETING".into(), "hi".into())];
    let (_, controller) = run(&f.executor, task("env", s.clone()));
    let mut keys: Vec<String> = logs_of(&*controller, Default::default())
        .into_iter()
        .map(|(_, l)| l.split('=').next().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["GREETING", "PATH", "SWARMEXEC_TASK_ID"]);

    s.inherit_env = true;
    let (_, controller) = run(&f.executor, task("env-inherited", s));
    let lines = logs_of(&*controller, Default::default());
    let host_keys = std::env::vars().count();
    assert!(
        lines.len() >= host_keys,
        "{} lines for {host_keys} host variables",
        lines.len()
    );
}

#[test]
fn repeated_and_late_calls_get_the_sentinel_errors() {
    let f = fixture();
    let controller = f
        .executor
        .process_controller(&task("twice", spec(&["sleep", "30"])))
        .unwrap();
    let cancel = CancelToken::new();
    controller.shutdown(&cancel).unwrap(); // before start: nothing to do
    controller.prepare(&cancel).unwrap();
    assert!(matches!(
        controller.prepare(&cancel),
        Err(Error::TaskPrepared)
    ));
    controller.start(&cancel).unwrap();
    assert!(matches!(controller.start(&cancel), Err(Error::TaskStarted)));
    assert!(matches!(
        controller.prepare(&cancel),
        Err(Error::TaskStarted)
    ));
    let pid = pid_of(&controller);
    controller.close().unwrap();
    assert!(!alive(pid), "closing kills a running program");
    for result in [
        controller.prepare(&cancel),
        controller.start(&cancel),
        controller.wait(&cancel),
        controller.shutdown(&cancel),
        controller.terminate(&cancel),
        controller.remove(&cancel),
        controller.close(),
    ] {
        assert!(matches!(result, Err(Error::ControllerClosed)), "{result:?}");
    }
}

#[test]
fn dropping_a_controller_kills_its_program() {
    let f = fixture();
    let controller = started(&f.executor, "dropped", spec(&["sleep", "30"]));
    let pid = pid_of(&controller);
    drop(controller);
    assert!(!alive(pid));
}

#[test]
fn updates_after_prepare_may_not_change_the_spec() {
    let f = fixture();
    let original = task("upd", spec(&["true"]));
    let controller = f.executor.process_controller(&original).unwrap();
    let cancel = CancelToken::new();
    let changed = task("upd", spec(&["false"]));
    controller.update(&cancel, &changed).unwrap(); // before prepare: taken
    controller.prepare(&cancel).unwrap();
    assert!(matches!(
        controller.update(&cancel, &original),
        Err(Error::TaskUpdateRejected)
    ));
    let mut shutdown = changed.clone();
    shutdown.desired_state = TaskState::Shutdown;
    controller.update(&cancel, &shutdown).unwrap();
    assert!(matches!(
        controller.update(&cancel, &task("other", spec(&["false"]))),
        Err(Error::TaskUpdateRejected)
    ));
}

#[test]
fn describe_reports_the_host() {
    let f = fixture();
    let node = f.executor.describe(&CancelToken::new()).unwrap();
    assert_eq!(node.platform.os, "linux");
    assert_eq!(node.platform.architecture, std::env::consts::ARCH);
    assert!(node.resources.nano_cpus >= 1_000_000_000);
    assert!(node.resources.memory_bytes > 0);
    assert!(!node.hostname.is_empty());
}

#[test]
fn a_child_spawned_by_the_host_is_left_to_the_host() {
    let f = fixture();
    let mut host_child = std::process::Command::new("sh")
        .args(["-c", "sleep 0.3; exit 7"])
        .spawn()
        .unwrap();
    for i in 0..5 {
        let (task, _) = run(
            &f.executor,
            task(&format!("meanwhile-{i}"), spec(&["true"])),
        );
        assert_eq!(task.status.state, TaskState::Completed);
    }
    assert_eq!(host_child.wait().unwrap().code(), Some(7));
}

#[test]
fn a_task_id_that_is_not_a_file_name_is_rejected() {
    let f = fixture();
    let (task, _) = run(&f.executor, task("../escape", spec(&["true"])));
    assert_eq!(task.status.state, TaskState::Rejected);
    assert_eq!(
        task.status.err,
        "invalid task spec: task id \"../escape\" contains '/'"
    );
}

#[test]
fn resource_limits_apply_to_the_program() {
    let f = fixture();
    let mut s = sh("ulimit -n; ulimit -Hn");
    s.rlimits = vec![Rlimit {
        resource: RlimitResource::NoFile,
        soft: 64,
        hard: 128,
    }];
    let (task, controller) = run(&f.executor, task("limited", s));
    assert_eq!(task.status.state, TaskState::Completed);
    let lines: Vec<String> = logs_of(&*controller, Default::default())
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["64\n", "128\n"]);

    let mut inverted = spec(&["true"]);
    inverted.rlimits = vec![Rlimit {
        resource: RlimitResource::NoFile,
        soft: 10,
        hard: 5,
    }];
    assert_eq!(
        rejection(&f.executor, "inverted", inverted),
        "invalid task spec: NoFile limit: soft 10 exceeds hard 5"
    );
}

#[test]
fn a_numeric_stop_signal_is_accepted() {
    let f = fixture();
    let mut s = spec(&["sleep", "30"]);
    s.stop_signal = Some("9".parse().unwrap());
    let controller = started(&f.executor, "numeric-signal", s);
    controller.shutdown(&CancelToken::new()).unwrap();
    let err = controller.wait(&CancelToken::new()).unwrap_err();
    assert_eq!(err.to_string(), "killed by signal 9 (SIGKILL)");
}

/// Runs only where the tests run as root, as they do in CI.
#[test]
fn as_root_a_task_runs_as_its_user_and_owns_its_secrets() {
    if fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_none_or(|l| l.split_whitespace().nth(2) != Some("0"))
    {
        eprintln!("not root: running as another user cannot be tested");
        return;
    }
    let f = fixture();
    // The test's own temporary directory is 0700; the state directory is 0711.
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(mode(f.executor.state_dir()), 0o711);
    f.executor.secrets().add(vec![Secret {
        id: "token".into(),
        data: b"t0k3n".to_vec(),
        ..Default::default()
    }]);
    let mut s = sh("id -u; id -g; cat \"$SWARMEXEC_SECRETS_DIR/token\"");
    s.user = Some("nobody".into());
    s.group = Some("65534".into());
    s.secrets = vec![SecretReference {
        secret_id: "token".into(),
        target: "token".into(),
        ..Default::default()
    }];
    let controller = f
        .executor
        .process_controller(&task("as-nobody", s))
        .unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    let secret = controller.task_dir().unwrap().join("secrets/token");
    let meta = fs::metadata(&secret).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    controller.start(&cancel).unwrap();
    controller.wait(&cancel).unwrap();
    let lines: Vec<String> = logs_of(&controller, Default::default())
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines, ["65534\n", "65534\n", "t0k3n"]);
    controller.remove(&cancel).unwrap();
}

#[test]
fn a_program_started_from_a_thread_that_blocks_signals_can_still_be_stopped() {
    let f = fixture();
    let mut s = spec(&["sleep", "30"]);
    s.stop_grace_period = Some(Duration::from_secs(20));
    let controller = thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a zeroed sigset_t is valid and initialised by sigemptyset;
                // blocking SIGTERM affects only this short-lived thread.
                unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTERM);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                started(&f.executor, "masked", s)
            })
            .join()
            .unwrap()
    });
    let start = Instant::now();
    controller.shutdown(&CancelToken::new()).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "SIGTERM reached the program"
    );
    let err = controller.wait(&CancelToken::new()).unwrap_err();
    assert_eq!(err.exit_code(), Some(143));
}

#[test]
fn ended_by_waits_until_the_program_ends_or_the_deadline_passes() {
    let f = fixture();
    let never_started = f
        .executor
        .process_controller(&task("ended-by-0", sh("true")))
        .unwrap();
    assert!(!never_started.ended_by(Instant::now() + Duration::from_millis(10)));

    let controller = started(&f.executor, "ended-by-1", sh("sleep 0.3"));
    let asked = Instant::now();
    assert!(!controller.ended_by(asked + Duration::from_millis(20)));
    assert!(asked.elapsed() >= Duration::from_millis(20));
    assert!(controller.ended_by(Instant::now() + Duration::from_secs(10)));
    // It changed nothing: `wait` reports how the program ended.
    controller.wait(&CancelToken::new()).unwrap();
    assert!(controller.ended_by(Instant::now()));
    controller.close().unwrap();
}
