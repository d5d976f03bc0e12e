//! Faults stay contained: failing, panicking and stalling user code in the agent,
//! best-effort removal, and deep token trees.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use parking_lot::Mutex;
use swarmexec::agent::{AssignmentChanges, TaskManager, Worker};
use swarmexec::api::*;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Controller, Error, StubController, StubExecutor};

const LONG: Duration = Duration::from_secs(20);

type Reports = Receiver<(String, TaskStatus)>;

fn task(id: &str) -> Task {
    let mut task = Task {
        id: id.into(),
        desired_state: TaskState::Running,
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;
    task
}

/// A stub whose `wait` blocks until its token is cancelled.
fn blocking_wait() -> StubController {
    StubController::new().on_wait(|cancel| {
        cancel.wait();
        Err(cancel.err().unwrap())
    })
}

/// Runs `f` on a thread and fails the test unless it returns within `limit`.
fn returns_within(what: &str, limit: Duration, f: impl FnOnce() + Send + 'static) -> Duration {
    let (done_tx, done_rx) = unbounded();
    let start = Instant::now();
    thread::spawn(move || {
        f();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"));
    start.elapsed()
}

/// Waits for a report satisfying `wanted`.
fn report_where(reports: &Reports, wanted: impl Fn(&str, &TaskStatus) -> bool) -> TaskStatus {
    loop {
        let (id, status) = reports.recv_timeout(LONG).expect("a status report");
        if wanted(&id, &status) {
            return status;
        }
    }
}

/// Waits until every task in `ids` has reported `RUNNING`.
fn all_running(reports: &Reports, ids: &[&str]) {
    let mut missing: Vec<&str> = ids.to_vec();
    while !missing.is_empty() {
        let (id, status) = reports.recv_timeout(LONG).expect("a status report");
        if status.state == TaskState::Running {
            missing.retain(|m| *m != id);
        }
    }
}

type Calls = Arc<Mutex<HashMap<String, Vec<&'static str>>>>;

fn count(calls: &Calls, task: &str, method: &str) -> usize {
    let calls = calls.lock();
    let of_task = calls.get(task);
    of_task.map_or(0, |c| c.iter().filter(|m| **m == method).count())
}

/// An executor whose controllers block in `wait`, record their removal calls, and
/// fail (`"fail"`) or panic (`"panic"`) in the method named by the task's label.
fn faulty_executor() -> (Arc<StubExecutor>, Calls) {
    let calls = Calls::default();
    let recorded = Arc::clone(&calls);
    let executor = StubExecutor::new().on_controller(move |task| {
        let labels = task.annotations.labels.clone();
        let record = |method: &'static str| {
            let calls = Arc::clone(&recorded);
            let id = task.id.clone();
            let fault = labels.get(method).cloned();
            move || {
                calls.lock().entry(id.clone()).or_default().push(method);
                match fault.as_deref() {
                    Some("fail") => Err(Error::other(format!("{method} failed"))),
                    Some("panic") => panic!("{method} panicked on purpose"),
                    _ => Ok(()),
                }
            }
        };
        let (shutdown, remove, close) = (record("shutdown"), record("remove"), record("close"));
        let stub = blocking_wait()
            .on_shutdown(move |_| shutdown())
            .on_remove(move |_| remove())
            .on_close(close);
        Ok(Box::new(stub) as Box<dyn Controller>)
    });
    (Arc::new(executor), calls)
}

fn labelled(id: &str, method: &str, fault: &str) -> Task {
    let mut t = task(id);
    t.annotations.labels.insert(method.into(), fault.into());
    t
}

#[test]
fn removal_calls_remove_and_close_whatever_failed_before() {
    let (executor, calls) = faulty_executor();
    let worker = Worker::new(executor);
    let (tx, reports) = unbounded();
    let _listener = worker.listen(tx);
    let tasks = vec![
        labelled("shutdown-fails", "shutdown", "fail"),
        labelled("shutdown-panics", "shutdown", "panic"),
        labelled("remove-fails", "remove", "fail"),
        labelled("remove-panics", "remove", "panic"),
    ];
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    worker.assign(tasks, vec![], vec![]).unwrap();
    all_running(
        &reports,
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    worker.assign(vec![], vec![], vec![]).unwrap();
    returns_within("Worker::wait", LONG, {
        let worker = Arc::new(worker);
        let waiter = Arc::clone(&worker);
        move || waiter.wait()
    });
    for id in &ids {
        for method in ["shutdown", "remove", "close"] {
            assert_eq!(count(&calls, id, method), 1, "{id}: {method}");
        }
    }
    // Each failure is reported as the task's last status.
    let mut failed = HashMap::new();
    while failed.len() < ids.len() {
        let (id, status) = reports.recv_timeout(LONG).expect("a status report");
        if status.err.starts_with("removal failed: ") {
            failed.insert(id, status.err);
        }
    }
    assert!(failed["shutdown-panics"].contains("shutdown: controller panicked"));
    assert!(failed["remove-fails"].contains("remove: remove failed"));
}

#[test]
fn wait_and_close_return_after_a_panic_in_remove() {
    let (executor, calls) = faulty_executor();
    let worker = Arc::new(Worker::new(executor));
    worker
        .assign(vec![labelled("t", "remove", "panic")], vec![], vec![])
        .unwrap();
    worker.assign(vec![], vec![], vec![]).unwrap();
    let waiting = Arc::clone(&worker);
    returns_within("Worker::wait", LONG, move || waiting.wait());
    assert_eq!(
        count(&calls, "t", "close"),
        1,
        "close follows a panicking remove"
    );
    let closing = Arc::clone(&worker);
    returns_within("Worker::close", LONG, move || closing.close());
}

#[test]
fn a_panicking_reporter_neither_stops_nor_wedges_its_manager() {
    let reports = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reports);
    let reporter = move |_: &str, _: &TaskStatus| -> Result<(), Error> {
        counted.fetch_add(1, Ordering::SeqCst);
        panic!("reporter panicked on purpose")
    };
    let manager = TaskManager::new(task("t"), Arc::new(StubController::new()), reporter);
    let deadline = Instant::now() + LONG;
    while manager.task().status.state != TaskState::Completed {
        assert!(Instant::now() < deadline, "the task never completed");
        thread::sleep(Duration::from_millis(2));
    }
    assert!(
        reports.load(Ordering::SeqCst) >= 6,
        "every status was offered"
    );
    returns_within("TaskManager::close", LONG, move || drop(manager));
}

#[test]
fn a_listener_keeps_receiving_after_its_reporter_panicked_once() {
    let worker = Worker::new(Arc::new(StubExecutor::new()));
    let panicked = AtomicBool::new(false);
    let (tx, received) = unbounded::<(String, TaskState)>();
    let _listener = worker.listen(move |id: &str, status: &TaskStatus| {
        if !panicked.swap(true, Ordering::SeqCst) {
            panic!("listener panicked on purpose");
        }
        tx.send((id.to_owned(), status.state)).unwrap();
        Ok(())
    });
    worker.assign(vec![task("t")], vec![], vec![]).unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        let (_, state) = received
            .recv_deadline(deadline)
            .expect("the listener still receives");
        if state == TaskState::Completed {
            break;
        }
    }
}

#[test]
fn a_slow_executor_holds_up_no_other_task() {
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&slow_calls);
    let executor = StubExecutor::new().on_controller(move |task| {
        if task.id == "slow" {
            counted.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_secs(2));
        }
        Ok(Box::new(blocking_wait()) as Box<dyn Controller>)
    });
    let worker = Arc::new(Worker::new(Arc::new(executor)));
    let (tx, reports) = unbounded();
    let _listener = worker.listen(tx);
    worker
        .assign(vec![task("fast"), task("other")], vec![], vec![])
        .unwrap();
    all_running(&reports, &["fast", "other"]);
    let assigning = Arc::clone(&worker);
    let slow = thread::spawn(move || {
        let changes = AssignmentChanges {
            tasks: vec![task("slow")],
            ..Default::default()
        };
        assigning.update(changes).unwrap();
    });
    while slow_calls.load(Ordering::SeqCst) == 0 {
        thread::yield_now();
    }
    let start = Instant::now();
    // Logs, statuses, another assignment and another task's progress go on.
    let logs = worker.subscribe_logs("fast", &CancelToken::new(), &tx_sink(), &Default::default());
    assert!(logs.is_err(), "a stub has no logs");
    assert_eq!(worker.statuses()["fast"].state, TaskState::Running);
    let stop = Task {
        desired_state: TaskState::Shutdown,
        ..task("fast")
    };
    worker
        .update(AssignmentChanges {
            tasks: vec![stop],
            removed_tasks: vec!["other".into()],
            ..Default::default()
        })
        .unwrap();
    report_where(&reports, |i, s| {
        i == "fast" && s.state == TaskState::Shutdown
    });
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_millis(1000),
        "other tasks waited {elapsed:?} for a slow executor"
    );
    slow.join().unwrap();
    report_where(&reports, |i, s| {
        i == "slow" && s.state == TaskState::Running
    });
}

fn tx_sink() -> crossbeam_channel::Sender<LogMessage> {
    unbounded().0
}

#[test]
fn a_panicking_executor_rejects_its_task_only() {
    let executor = StubExecutor::new().on_controller(|task| {
        if task.id == "boom" {
            panic!("executor panicked on purpose");
        }
        Ok(Box::new(StubController::new()) as Box<dyn Controller>)
    });
    let worker = Worker::new(Arc::new(executor));
    let (tx, reports) = unbounded();
    let _listener = worker.listen(tx);
    worker
        .assign(vec![task("boom"), task("fine")], vec![], vec![])
        .unwrap();
    let rejected = report_where(&reports, |i, s| i == "boom" && s.state.is_terminal());
    assert_eq!(rejected.state, TaskState::Rejected);
    assert_eq!(
        rejected.err,
        "executor panicked: executor panicked on purpose"
    );
    assert_eq!(rejected.container, None, "a rejected task never ran");
    report_where(&reports, |i, s| {
        i == "fine" && s.state == TaskState::Completed
    });
}

/// A stub whose `wait` ignores its token until `release` is set.
fn ignores_its_token(release: &Arc<AtomicBool>) -> StubController {
    let released = Arc::clone(release);
    StubController::new().on_wait(move |_| {
        while !released.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
}

#[test]
fn close_returns_while_a_controller_call_ignores_its_token() {
    let release = Arc::new(AtomicBool::new(false));
    let (tx, reports) = unbounded();
    let manager = TaskManager::new(task("stuck"), Arc::new(ignores_its_token(&release)), tx);
    report_where(&reports, |_, s| s.state == TaskState::Running);
    let took = returns_within("TaskManager::close", Duration::from_secs(10), move || {
        manager.close()
    });
    assert!(
        took < Duration::from_secs(3),
        "TaskManager::close took {took:?}"
    );

    let stuck = Arc::clone(&release);
    let executor = StubExecutor::new()
        .on_controller(move |_| Ok(Box::new(ignores_its_token(&stuck)) as Box<dyn Controller>));
    let worker = Worker::new(Arc::new(executor));
    let (tx, reports) = unbounded();
    let _listener = worker.listen(tx);
    worker
        .assign(vec![task("a"), task("b")], vec![], vec![])
        .unwrap();
    all_running(&reports, &["a", "b"]);
    let took = returns_within("Worker::close", Duration::from_secs(10), move || {
        worker.close()
    });
    assert!(took < Duration::from_secs(5), "Worker::close took {took:?}");
    release.store(true, Ordering::SeqCst);
}

#[test]
fn a_task_id_removed_and_assigned_again_at_once_runs() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(ProcessExecutor::new(dir.path()).unwrap());
    let worker = Worker::new(executor);
    let (tx, reports) = unbounded();
    let _listener = worker.listen(tx);
    let secret = Secret {
        id: "token".into(),
        data: b"s3cret".to_vec(),
        ..Default::default()
    };
    let mut t = task("again");
    t.spec.runtime = Some(Runtime::Process(ProcessSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'sleep 0.3; exit 0' TERM; sleep 30 & wait".into(),
        ],
        secrets: vec![SecretReference {
            secret_id: "token".into(),
            target: "token".into(),
            ..Default::default()
        }],
        ..Default::default()
    }));
    worker
        .assign(vec![t.clone()], vec![secret.clone()], vec![])
        .unwrap();
    report_where(&reports, |_, s| s.state == TaskState::Running);
    // Removed and assigned again while the first program is still stopping.
    worker.assign(vec![], vec![secret.clone()], vec![]).unwrap();
    worker.assign(vec![t], vec![secret], vec![]).unwrap();
    let status = report_where(&reports, |_, s| s.state >= TaskState::Running);
    assert_eq!(status.state, TaskState::Running, "{status:?}");
    worker.close();
    common::assert_no_task_dirs(dir.path(), "closing the worker leaves no task files");
}

#[test]
fn cancelling_a_million_deep_chain_of_tokens_needs_no_stack() {
    let outcome = thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            let root = CancelToken::new();
            let mut chain = Vec::with_capacity(1_000_000);
            let mut last = root.clone();
            for _ in 0..1_000_000 {
                last = last.child();
                chain.push(last.clone());
            }
            root.cancel();
            let all = chain.iter().all(CancelToken::is_cancelled);
            // Dropping the chain must not recurse either.
            drop(chain);
            all
        })
        .unwrap()
        .join();
    assert!(matches!(outcome, Ok(true)), "{outcome:?}");
}
