//! Nothing leaks: after 200 lifecycles no zombie, no child and no descriptor is left,
//! and dropping the executor stops its reaper thread. One test in its own binary, so
//! that no other test's processes or descriptors are counted.

use std::fs;
use std::time::{Duration, Instant};

use swarmexec::api::*;
use swarmexec::process::ProcessExecutor;
use swarmexec::{do_task, resolve, CancelToken, Error};

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Our children, as (pid, state) from /proc.
fn children() -> Vec<(i32, String)> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
            (fields.get(1) == Some(&me.as_str())).then(|| (pid, fields[0].to_string()))
        })
        .collect()
}

fn thread_names() -> Vec<String> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn lifecycle(executor: &ProcessExecutor, i: usize) {
    let script = [
        "exit 0",
        "exit 5",
        "kill -TERM $$",
        "sleep 60 & echo started",
    ][i % 4];
    let mut task = Task {
        id: format!("task-{i}"),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(ProcessSpec {
                command: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            })),
            ..Default::default()
        },
        ..Default::default()
    };
    let cancel = CancelToken::new();
    let (status, controller) = resolve(&cancel, &task, executor);
    task.status = status;
    let controller = controller.unwrap();
    while !task.status.state.is_terminal() {
        let (status, result) = do_task(&cancel, &task, &*controller);
        task.status = status;
        assert!(
            !matches!(result, Err(Error::TaskNoop)),
            "stuck in {:?}",
            task.status
        );
    }
    controller.remove(&cancel).unwrap();
    controller.close().unwrap();
}

#[test]
fn two_hundred_lifecycles_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fds_before_executor = open_fds();
    let executor = ProcessExecutor::new(dir.path()).unwrap();
    lifecycle(&executor, 0); // the first one may set up lazily created state
                             // ... and the watchdog, a moment after (a pipe held open).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let fds_before = open_fds();

    for i in 1..=200 {
        lifecycle(&executor, i);
    }

    assert_eq!(children(), vec![], "no zombie and no child is left");
    assert_eq!(open_fds(), fds_before, "no descriptor is left open");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "owners")
        .collect();
    assert!(left.is_empty(), "every task directory removed: {left:?}");
    assert!(thread_names().iter().any(|n| n == "swarmexec-reap"));

    drop(executor);
    // A joined thread may linger a moment in /proc while the kernel lets go of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ours = |n: &String| n == "swarmexec-reap" || n == "swarmexec-chores";
    while thread_names().iter().any(ours) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let left: Vec<String> = thread_names().into_iter().filter(ours).collect();
    assert!(
        left.is_empty(),
        "the reaper and chores threads stop: {left:?}"
    );
    assert_eq!(open_fds(), fds_before_executor);
}
