//! Running out of threads and processes, for real: this test binary moves itself
//! into a cgroup whose pids limit leaves no room for one more thread, then lifts
//! the limit. One test alone in its binary, since the limit binds the whole process.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select};
use std::sync::Arc;
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};

use swarmexec::agent::TaskManager;
use swarmexec::{do_task, is_temporary, CancelToken, Controller, Error, StubController};

/// The pids cgroup this process runs in for the test.
struct Limit(common::TestCgroup);

impl Limit {
    /// No new thread or process from now on.
    fn reach(&self) {
        let current = self.0.read("pids.current");
        self.0.write("pids.max", &current);
        let refused = thread::Builder::new().spawn(|| {});
        assert!(refused.is_err(), "the limit should refuse a thread");
    }

    fn lift(&self) {
        self.0.write("pids.max", "max");
    }
}

fn true_task(id: &str) -> Task {
    common::process_task(id, common::spec(&["/bin/true"]))
}

fn prepared(executor: &ProcessExecutor, id: &str) -> ProcessController {
    let controller = executor.process_controller(&true_task(id)).unwrap();
    controller.prepare(&CancelToken::new()).unwrap();
    controller
}

fn assert_limit_error(result: Result<(), Error>, what: &str) {
    let err = result.expect_err(what);
    assert!(is_temporary(&err), "{what}: {err} should be temporary");
    assert!(
        err.to_string().contains("process or thread limit reached"),
        "{what}: {err}"
    );
}

#[test]
fn exhaustion_is_temporary_and_nothing_remembers_it() {
    let Some(cgroup) = common::TestCgroup::new("pids") else {
        eprintln!("no pids cgroup here: checking that deadlines fire as usual instead");
        let token = CancelToken::new().with_timeout(Duration::from_millis(50));
        select! {
            recv(token.done()) -> _ => {}
            recv(after(Duration::from_secs(10))) -> _ => panic!("the deadline never fired"),
        }
        return;
    };
    cgroup.add(std::process::id());
    let limit = Limit(cgroup);

    // The first deadline of the process comes while the timer thread cannot start.
    limit.reach();
    let created = Instant::now();
    let token = CancelToken::new().with_timeout(Duration::from_secs(1));
    // Meanwhile a waiting call honours its deadline by itself.
    let short = CancelToken::new().with_timeout(Duration::from_millis(100));
    short.wait();
    assert!(matches!(short.err(), Some(Error::DeadlineExceeded)));
    assert!(!token.is_cancelled());
    // Once threads can start again, the timer starts and fires the deadline.
    limit.lift();
    let done = token.done();
    select! {
        recv(done) -> _ => {}
        recv(after(Duration::from_secs(10))) -> _ => panic!("the deadline never fired"),
    }
    assert!(created.elapsed() >= Duration::from_millis(990));

    // A task manager whose pool cannot start a thread runs once threads can start.
    limit.reach();
    let (reports, statuses) = crossbeam_channel::unbounded::<(String, TaskStatus)>();
    let mut stub_task = true_task("managed");
    stub_task.status.state = TaskState::Assigned;
    let manager = TaskManager::new(stub_task, Arc::new(StubController::new()), reports);
    thread::sleep(Duration::from_millis(200));
    assert!(
        statuses.try_recv().is_err(),
        "no thread could run the manager"
    );
    limit.lift();
    loop {
        let (_, status) = statuses
            .recv_timeout(Duration::from_secs(10))
            .expect("the manager runs once threads can start");
        if status.state == TaskState::Completed {
            break;
        }
    }
    manager.close();

    // A reaper thread that cannot start is a temporary failure, retried.
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path()).unwrap();
    let controller = prepared(&executor, "reaper");
    limit.reach();
    assert_limit_error(
        controller.start(&CancelToken::new()),
        "start without a reaper",
    );
    limit.lift();
    controller.start(&CancelToken::new()).unwrap();
    controller.wait(&CancelToken::new()).unwrap();

    // So is a spawn the process limit refuses: do_task retries it.
    let mut task = true_task("spawn");
    task.status.state = TaskState::Starting;
    let controller = prepared(&executor, "spawn");
    limit.reach();
    let (status, result) = do_task(&CancelToken::new(), &task, &controller);
    assert!(matches!(result, Err(Error::TaskRetry)), "{result:?}");
    assert_eq!(status.state, TaskState::Starting);
    assert!(
        status.err.contains("process or thread limit reached"),
        "{}",
        status.err
    );
    limit.lift();
    task.status = status;
    let (status, result) = do_task(&CancelToken::new(), &task, &controller);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(status.state, TaskState::Running);
    controller.wait(&CancelToken::new()).unwrap();
}
