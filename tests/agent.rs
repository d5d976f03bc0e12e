//! Task managers and the worker, with stub controllers and with real processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver};
use parking_lot::Mutex;
use swarmexec::agent::{AssignmentChanges, ManagerOptions, TaskManager, Worker};
use swarmexec::api::*;
use swarmexec::process::ProcessExecutor;
use swarmexec::{
    make_temporary, CancelToken, Controller, Error, Executor, StubController, StubExecutor,
};

const LONG: Duration = Duration::from_secs(20);

type Reports = Receiver<(String, TaskStatus)>;

fn task(id: &str, state: TaskState, desired: TaskState) -> Task {
    let mut task = Task {
        id: id.into(),
        desired_state: desired,
        ..Default::default()
    };
    task.status.state = state;
    task
}

fn manager(task: Task, stub: StubController) -> (TaskManager, Reports) {
    let (tx, rx) = unbounded();
    (TaskManager::new(task, Arc::new(stub), tx), rx)
}

/// The states reported until one satisfies `last`.
fn states_until(reports: &Reports, last: impl Fn(&TaskStatus) -> bool) -> Vec<TaskState> {
    let mut states = vec![];
    loop {
        let (_, status) = reports.recv_timeout(LONG).expect("a status report");
        states.push(status.state);
        if last(&status) {
            return states;
        }
    }
}

fn reached(state: TaskState) -> impl Fn(&TaskStatus) -> bool {
    move |s| s.state == state
}

/// A stub whose `wait` blocks until its token is cancelled.
fn blocking_wait() -> StubController {
    StubController::new().on_wait(|cancel| {
        cancel.wait();
        Err(cancel.err().unwrap())
    })
}

#[test]
fn a_manager_drives_a_task_from_assigned_to_completed() {
    let (manager, reports) = manager(
        task("t", TaskState::Assigned, TaskState::Running),
        StubController::new(),
    );
    use TaskState::*;
    assert_eq!(
        states_until(&reports, reached(Completed)),
        [Accepted, Preparing, Ready, Starting, Running, Completed]
    );
    assert!(
        reports.recv_timeout(Duration::from_millis(50)).is_err(),
        "nothing after"
    );
    assert_eq!(manager.task().status.state, Completed);
}

#[test]
fn an_update_raising_the_desired_state_cancels_a_blocked_step() {
    let stub = StubController::new().on_prepare(|cancel| {
        // Blocks until cancelled the first time, then succeeds.
        if cancel.wait_timeout(Duration::from_millis(100)) {
            Err(Error::Canceled)
        } else {
            Ok(())
        }
    });
    let stub = Arc::new(stub);
    let (tx, reports) = unbounded();
    let start = task("t", TaskState::Preparing, TaskState::Ready);
    let manager = TaskManager::new(start.clone(), Arc::clone(&stub) as Arc<dyn Controller>, tx);
    thread::sleep(Duration::from_millis(20)); // prepare is blocked now
    let raised = Task {
        desired_state: TaskState::Running,
        ..start
    };
    manager.update(&raised).unwrap();
    states_until(&reports, reached(TaskState::Completed));
    assert_eq!(stub.calls("update"), 1);
    assert_eq!(stub.calls("prepare"), 2, "the cancelled prepare ran again");
}

#[test]
fn updates_that_change_nothing_or_lower_the_desired_state_are_ignored() {
    let stub = Arc::new(StubController::new());
    let (tx, reports) = unbounded();
    let t = task("t", TaskState::Assigned, TaskState::Ready);
    let manager = TaskManager::new(t.clone(), Arc::clone(&stub) as Arc<dyn Controller>, tx);
    states_until(&reports, reached(TaskState::Ready));
    let mut same = t.clone();
    same.status.message = "only the status differs".into();
    manager.update(&same).unwrap();
    let lower = Task {
        desired_state: TaskState::Accepted,
        ..t.clone()
    };
    manager.update(&lower).unwrap();
    let other = Task {
        id: "other".into(),
        ..t.clone()
    };
    assert!(matches!(
        manager.update(&other),
        Err(Error::TaskUpdateRejected)
    ));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(stub.calls("update"), 0);
    assert_eq!(manager.task().desired_state, TaskState::Ready);
}

#[test]
fn a_running_task_shuts_down_through_a_desired_state_change() {
    let stub = Arc::new(blocking_wait());
    let (tx, reports) = unbounded();
    let t = task("t", TaskState::Assigned, TaskState::Running);
    let manager = TaskManager::new(t.clone(), Arc::clone(&stub) as Arc<dyn Controller>, tx);
    states_until(&reports, reached(TaskState::Running));
    thread::sleep(Duration::from_millis(20)); // wait is blocked now
    let shutdown = Task {
        desired_state: TaskState::Shutdown,
        ..t
    };
    manager.update(&shutdown).unwrap();
    states_until(&reports, reached(TaskState::Shutdown));
    assert_eq!(stub.calls("shutdown"), 1);
}

#[test]
fn close_cancels_a_blocked_wait_and_stops_the_manager() {
    let (manager, reports) = manager(
        task("t", TaskState::Assigned, TaskState::Running),
        blocking_wait(),
    );
    states_until(&reports, reached(TaskState::Running));
    let start = Instant::now();
    manager.close();
    assert!(start.elapsed() < Duration::from_secs(5));
    manager.close(); // idempotent
    assert!(manager.is_closed());
    let update = task("t", TaskState::Running, TaskState::Shutdown);
    assert!(matches!(
        manager.update(&update),
        Err(Error::TaskManagerClosed)
    ));
    assert_eq!(Error::TaskManagerClosed.to_string(), "task manager closed");
}

#[test]
fn retries_back_off_exponentially_and_start_over_after_progress() {
    let calls = Arc::new(Mutex::new(Vec::<(&str, Instant)>::new()));
    let (prepare_calls, start_calls) = (Arc::clone(&calls), Arc::clone(&calls));
    let failing = |calls: Arc<Mutex<Vec<(&'static str, Instant)>>>, name: &'static str| {
        move |_: &CancelToken| {
            let mut calls = calls.lock();
            calls.push((name, Instant::now()));
            if calls.iter().filter(|(n, _)| *n == name).count() <= 4 {
                Err(make_temporary(Error::other("not yet")))
            } else {
                Ok(())
            }
        }
    };
    let stub = StubController::new()
        .on_prepare(failing(prepare_calls, "prepare"))
        .on_start(failing(start_calls, "start"));
    let (tx, reports) = unbounded();
    let options = ManagerOptions {
        retry_start: Duration::from_millis(40),
        retry_cap: Duration::from_millis(160),
    };
    let t = task("t", TaskState::Preparing, TaskState::Running);
    let _manager = TaskManager::with_options(t, Arc::new(stub), Arc::new(tx), options);
    states_until(&reports, reached(TaskState::Completed));

    let calls = calls.lock();
    for name in ["prepare", "start"] {
        let times: Vec<Instant> = calls
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(times.len(), 5, "{name}: four failures then success");
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // Nominal 40, 80, 160, 160 ms, each drawn between half and all of it.
        for (gap, nominal) in gaps.iter().zip([40u64, 80, 160, 160]) {
            let nominal = Duration::from_millis(nominal);
            assert!(*gap >= nominal / 2, "{name}: {gaps:?}");
            assert!(
                *gap <= nominal + Duration::from_millis(150),
                "{name}: {gaps:?}"
            );
        }
    }
}

#[test]
fn a_panicking_controller_fails_its_task_and_nothing_else() {
    let (manager, reports) = manager(
        task("t", TaskState::Assigned, TaskState::Running),
        StubController::new().on_start(|_| panic!("boom in start")),
    );
    let states = states_until(&reports, |s| s.state.is_terminal());
    assert_eq!(states.last(), Some(&TaskState::Failed));
    let status = manager.task().status;
    assert_eq!(status.err, "controller panicked: boom in start");

    let (_early, reports) = self::manager(
        task("early", TaskState::Assigned, TaskState::Running),
        StubController::new().on_prepare(|_| panic!("boom in prepare")),
    );
    let states = states_until(&reports, |s| s.state.is_terminal());
    assert_eq!(states.last(), Some(&TaskState::Rejected));

    let (_fine, reports) = self::manager(
        task("fine", TaskState::Assigned, TaskState::Running),
        StubController::new(),
    );
    states_until(&reports, reached(TaskState::Completed));
}

/// What was called on each task's controller.
type Calls = Arc<Mutex<HashMap<String, Vec<&'static str>>>>;

fn count(calls: &Calls, task: &str, method: &str) -> usize {
    let calls = calls.lock();
    calls
        .get(task)
        .map_or(0, |c| c.iter().filter(|m| **m == method).count())
}

/// An executor of stub controllers that record, per task, what was called.
fn recording_executor(waits_block: bool) -> (Arc<StubExecutor>, Calls) {
    let calls = Calls::default();
    let recorded = Arc::clone(&calls);
    let executor = StubExecutor::new().on_controller(move |task| {
        let record = |method: &'static str| {
            let calls = Arc::clone(&recorded);
            let id = task.id.clone();
            move |_: &CancelToken| {
                calls.lock().entry(id.clone()).or_default().push(method);
                Ok(())
            }
        };
        let close = record("close");
        let stub = if waits_block {
            blocking_wait()
        } else {
            StubController::new()
        };
        let stub = stub
            .on_shutdown(record("shutdown"))
            .on_remove(record("remove"))
            .on_close(move || close(&CancelToken::new()));
        Ok(Box::new(stub) as Box<dyn Controller>)
    });
    (Arc::new(executor), calls)
}

fn listening(worker: &Worker) -> (swarmexec::agent::Listener, Reports) {
    let (tx, rx) = unbounded();
    (worker.listen(tx), rx)
}

/// Waits until every task in `ids` has reported `state`.
fn all_reach(reports: &Reports, ids: &[String], state: TaskState) {
    let mut missing: std::collections::HashSet<&String> = ids.iter().collect();
    while !missing.is_empty() {
        let (id, status) = reports.recv_timeout(LONG).expect("a status report");
        if status.state == state {
            missing.remove(&id);
        }
    }
}

#[test]
fn removal_by_reassignment_removes_and_closes_the_controller_once() {
    let (executor, calls) = recording_executor(true);
    let worker = Worker::new(executor);
    let (_listener, reports) = listening(&worker);
    let ids = ["a".to_string(), "b".to_string()];
    let tasks = ids
        .iter()
        .map(|id| task(id, TaskState::Assigned, TaskState::Running));
    worker.assign(tasks.collect(), vec![], vec![]).unwrap();
    all_reach(&reports, &ids, TaskState::Running);

    worker
        .assign(
            vec![task("b", TaskState::Assigned, TaskState::Running)],
            vec![],
            vec![],
        )
        .unwrap();
    let deadline = Instant::now() + LONG;
    while count(&calls, "a", "close") == 0 {
        assert!(Instant::now() < deadline, "a was not removed");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        ["shutdown", "remove", "close"].map(|m| count(&calls, "a", m)),
        [1, 1, 1]
    );
    assert_eq!(count(&calls, "b", "remove"), 0);
    assert!(!worker.statuses().contains_key("a"));

    worker.close();
    assert_eq!(
        count(&calls, "b", "close"),
        1,
        "close closes every controller"
    );
    assert!(matches!(
        worker.assign(vec![], vec![], vec![]),
        Err(Error::WorkerClosed)
    ));
    worker.wait();
}

#[test]
fn secrets_and_configs_are_stored_as_assigned_whatever_references_them() {
    use swarmexec::{ConfigsProvider, SecretsProvider};
    let executor = Arc::new(StubExecutor::new());
    let worker = Worker::new(Arc::clone(&executor) as Arc<dyn Executor>);
    let secret = |id: &str| Secret {
        id: id.into(),
        data: b"x".to_vec(),
        ..Default::default()
    };
    let config = Config {
        id: "c1".into(),
        ..Default::default()
    };
    let store = executor.dependency_store();
    // A generic task references nothing: what is assigned is stored all the same.
    let mut t = task("t", TaskState::Assigned, TaskState::Running);
    t.spec.runtime = Some(Runtime::Generic(GenericRuntimeSpec::default()));
    worker
        .assign(vec![t], vec![secret("s1"), secret("s2")], vec![config])
        .unwrap();
    assert!(store.secrets().get("s1").is_ok());
    assert!(store.configs().get("c1").is_ok());

    worker
        .update(AssignmentChanges {
            removed_tasks: vec!["t".into()],
            removed_secrets: vec!["s2".into()],
            ..Default::default()
        })
        .unwrap();
    assert!(
        store.secrets().get("s1").is_ok(),
        "removing a task removes no secret"
    );
    assert!(store.secrets().get("s2").is_err(), "a removed secret goes");

    worker.assign(vec![], vec![secret("s3")], vec![]).unwrap();
    assert!(store.secrets().get("s1").is_err(), "an assignment replaces");
    assert!(store.configs().get("c1").is_err(), "an assignment replaces");
    assert!(store.secrets().get("s3").is_ok());
    worker.wait();
}

#[test]
fn a_listener_that_never_reads_blocks_nobody() {
    let worker = Worker::new(Arc::new(StubExecutor::new()));
    let (stuck_tx, stuck_rx) = bounded::<(String, TaskStatus)>(1);
    let stuck = worker.listen(stuck_tx);
    let (_listener, reports) = listening(&worker);
    let ids: Vec<String> = (0..200).map(|i| format!("t{i}")).collect();
    let tasks = ids
        .iter()
        .map(|id| task(id, TaskState::Assigned, TaskState::Running));
    worker.assign(tasks.collect(), vec![], vec![]).unwrap();
    all_reach(&reports, &ids, TaskState::Completed);
    drop(stuck_rx); // unblocks the stuck delivery, which then fails
    drop(stuck);
}

#[test]
fn a_new_listener_starts_with_the_current_status_of_each_task() {
    let worker = Worker::new(Arc::new(StubExecutor::new()));
    let (_first, reports) = listening(&worker);
    let ids = ["x".to_string(), "y".to_string()];
    let tasks = ids
        .iter()
        .map(|id| task(id, TaskState::Assigned, TaskState::Running));
    worker.assign(tasks.collect(), vec![], vec![]).unwrap();
    all_reach(&reports, &ids, TaskState::Completed);
    let (_late, late_reports) = listening(&worker);
    all_reach(&late_reports, &ids, TaskState::Completed);
}

#[test]
fn a_thousand_tasks_assigned_at_once_all_complete() {
    let worker = Worker::new(Arc::new(StubExecutor::new()));
    let (_listener, reports) = listening(&worker);
    let ids: Vec<String> = (0..1000).map(|i| format!("task-{i}")).collect();
    let tasks = ids
        .iter()
        .map(|id| task(id, TaskState::Assigned, TaskState::Running));
    worker.assign(tasks.collect(), vec![], vec![]).unwrap();
    all_reach(&reports, &ids, TaskState::Completed);
    assert_eq!(worker.statuses().len(), 1000);
    assert!(worker
        .statuses()
        .values()
        .all(|s| s.state == TaskState::Completed));
}

#[test]
fn unresolvable_tasks_are_rejected_and_reported() {
    let refusing = StubExecutor::new().on_controller(|_| Err(Error::RuntimeUnsupported));
    let worker = Worker::new(Arc::new(refusing));
    let (_listener, reports) = listening(&worker);
    worker
        .assign(
            vec![task("t", TaskState::Assigned, TaskState::Running)],
            vec![],
            vec![],
        )
        .unwrap();
    let (_, status) = reports.recv_timeout(LONG).unwrap();
    assert_eq!(status.state, TaskState::Rejected);
    assert_eq!(status.err, "exec: unsupported runtime");
}

fn process_task(id: &str, command: &[&str]) -> Task {
    let mut t = task(id, TaskState::Assigned, TaskState::Running);
    t.spec.runtime = Some(Runtime::Process(ProcessSpec {
        command: command.iter().map(|s| s.into()).collect(),
        stop_grace_period: Some(Duration::from_secs(5)),
        ..Default::default()
    }));
    t
}

#[test]
fn with_the_process_executor_tasks_complete_and_shut_down() {
    let dir = tempfile::tempdir().unwrap();
    let executor = Arc::new(ProcessExecutor::new(dir.path()).unwrap());
    let worker = Worker::new(executor);
    let (_listener, reports) = listening(&worker);
    let done = process_task("done", &["true"]);
    let sleeper = process_task("sleeper", &["sleep", "30"]);
    worker
        .assign(vec![done.clone(), sleeper.clone()], vec![], vec![])
        .unwrap();
    let mut seen = Vec::new();
    while !(seen.contains(&("done".to_string(), TaskState::Completed))
        && seen.contains(&("sleeper".to_string(), TaskState::Running)))
    {
        let (id, status) = reports.recv_timeout(LONG).expect("a status report");
        seen.push((id, status.state));
    }

    let start = Instant::now();
    let stop = Task {
        desired_state: TaskState::Shutdown,
        ..sleeper
    };
    worker
        .update(AssignmentChanges {
            tasks: vec![stop],
            ..Default::default()
        })
        .unwrap();
    all_reach(&reports, &["sleeper".to_string()], TaskState::Shutdown);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "SIGTERM stops sleep at once"
    );

    let (log_tx, log_rx) = unbounded::<LogMessage>();
    worker
        .subscribe_logs("sleeper", &CancelToken::new(), &log_tx, &Default::default())
        .unwrap();
    assert!(log_rx.try_recv().is_err(), "sleep writes nothing");
    worker.close();
}

#[test]
fn reporters_can_be_closures() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let reporter = move |_: &str, _: &TaskStatus| -> Result<(), Error> {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    };
    let manager = TaskManager::new(
        task("t", TaskState::Assigned, TaskState::Ready),
        Arc::new(StubController::new()),
        reporter,
    );
    let deadline = Instant::now() + LONG;
    while seen.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    manager.close();
}

/// A controller with nothing to do, which records the thread that let go of it.
struct DropWitness(Arc<Mutex<Option<thread::ThreadId>>>);

impl Controller for DropWitness {
    fn update(&self, _: &CancelToken, _: &Task) -> Result<(), Error> {
        Ok(())
    }
    fn prepare(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn start(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn wait(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn shutdown(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn terminate(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn remove(&self, _: &CancelToken) -> Result<(), Error> {
        Ok(())
    }
    fn close(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Drop for DropWitness {
    fn drop(&mut self) {
        *self.0.lock() = Some(thread::current().id());
    }
}

#[test]
fn once_closed_a_manager_holds_nothing_of_its_controller_on_its_thread() {
    // What a controller holds (a process executor's cgroups, say) then goes with
    // the caller's last handle, on the caller's thread: never on a pool thread
    // that a process exiting right after `close` would cut short.
    for i in 0..300 {
        let dropped_on = Arc::new(Mutex::new(None));
        let (tx, reports) = unbounded();
        let running = task(
            &format!("witness.{i}"),
            TaskState::Assigned,
            TaskState::Running,
        );
        let manager = TaskManager::new(running, Arc::new(DropWitness(dropped_on.clone())), tx);
        states_until(&reports, reached(TaskState::Completed));
        manager.close();
        drop(manager);
        assert_eq!(
            *dropped_on.lock(),
            Some(thread::current().id()),
            "round {i}"
        );
    }
}
