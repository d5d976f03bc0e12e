//! Every rule of `do_task` and `resolve`, one test each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarmexec::api::*;
use swarmexec::{
    do_task, make_temporary, resolve, CancelToken, Error, ExitError, StubController, StubExecutor,
};

fn task(state: TaskState, desired: TaskState) -> Task {
    Task {
        id: "task-1".into(),
        desired_state: desired,
        status: TaskStatus {
            state,
            message: "previous message".into(),
            err: "previous error".into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn step(t: &Task, ctlr: &StubController) -> (TaskStatus, Result<(), Error>) {
    do_task(&CancelToken::new(), t, ctlr)
}

fn assert_noop(state: TaskState, desired: TaskState) {
    let ctlr = StubController::new();
    let t = task(state, desired);
    let (status, result) = step(&t, &ctlr);
    assert!(
        matches!(result, Err(Error::TaskNoop)),
        "{state} desired {desired}: {result:?}"
    );
    assert_eq!(status, t.status, "{state} desired {desired}");
    assert_eq!(ctlr.total_calls(), 0, "{state} desired {desired}");
}

fn assert_advances(state: TaskState, desired: TaskState, to: TaskState, message: &str) {
    let ctlr = StubController::new();
    let (status, result) = step(&task(state, desired), &ctlr);
    assert!(result.is_ok(), "{state} desired {desired}: {result:?}");
    assert_eq!(status.state, to, "{state} desired {desired}");
    assert_eq!(status.message, message);
    assert_eq!(status.err, "", "a transition clears err");
    assert!(status.timestamp.is_some());
}

#[test]
fn desired_shutdown_or_beyond_calls_shutdown_unless_terminal() {
    for desired in [TaskState::Shutdown, TaskState::Remove, TaskState::Orphaned] {
        for state in TaskState::ALL {
            if state >= TaskState::Completed {
                assert_noop(state, desired);
                continue;
            }
            let ctlr = StubController::new();
            let (status, result) = step(&task(state, desired), &ctlr);
            assert!(result.is_ok());
            assert_eq!(ctlr.calls("shutdown"), 1, "{state} desired {desired}");
            assert_eq!(status.state, TaskState::Shutdown);
            assert_eq!(status.message, "shutdown");
            assert_eq!(status.err, "");
        }
    }
}

#[test]
fn a_failed_shutdown_rejects_before_starting_and_fails_after() {
    for (state, end) in [
        (TaskState::Assigned, TaskState::Rejected),
        (TaskState::Ready, TaskState::Rejected),
        (TaskState::Starting, TaskState::Failed),
        (TaskState::Running, TaskState::Failed),
    ] {
        let ctlr = StubController::new().on_shutdown(|_| Err(Error::other("stuck")));
        let (status, result) = step(&task(state, TaskState::Shutdown), &ctlr);
        assert!(result.is_ok(), "a fatal error is not returned");
        assert_eq!(status.state, end, "from {state}");
        assert_eq!(status.err, "stuck");
        assert_eq!(status.message, "previous message", "message stays");
    }
}

#[test]
fn a_state_beyond_the_desired_one_is_a_noop() {
    assert_noop(TaskState::Ready, TaskState::Accepted);
    assert_noop(TaskState::Preparing, TaskState::Accepted);
    assert_noop(TaskState::Running, TaskState::Ready);
    assert_noop(TaskState::Completed, TaskState::Running);
    assert_noop(TaskState::Failed, TaskState::Running);
}

#[test]
fn operations_under_way_proceed_past_the_desired_state() {
    let ctlr = StubController::new();
    let (status, _) = step(&task(TaskState::Preparing, TaskState::Preparing), &ctlr);
    assert_eq!(
        (status.state, status.message.as_str()),
        (TaskState::Ready, "prepared")
    );
    assert_eq!(ctlr.calls("prepare"), 1);

    let (status, _) = step(&task(TaskState::Starting, TaskState::Starting), &ctlr);
    assert_eq!(
        (status.state, status.message.as_str()),
        (TaskState::Running, "started")
    );
    assert_eq!(ctlr.calls("start"), 1);

    let (status, _) = step(&task(TaskState::Running, TaskState::Running), &ctlr);
    assert_eq!(
        (status.state, status.message.as_str()),
        (TaskState::Completed, "finished")
    );
    assert_eq!(ctlr.calls("wait"), 1);
}

#[test]
fn already_prepared_and_already_started_count_as_success() {
    let ctlr = StubController::new()
        .on_prepare(|_| Err(Error::TaskPrepared))
        .on_start(|_| Err(Error::TaskStarted));
    let (status, result) = step(&task(TaskState::Preparing, TaskState::Running), &ctlr);
    assert!(result.is_ok());
    assert_eq!((status.state, status.err.as_str()), (TaskState::Ready, ""));
    let (status, result) = step(&task(TaskState::Starting, TaskState::Running), &ctlr);
    assert!(result.is_ok());
    assert_eq!(
        (status.state, status.err.as_str()),
        (TaskState::Running, "")
    );
}

#[test]
fn pause_states_wait_for_the_desired_state() {
    assert_noop(TaskState::Assigned, TaskState::Assigned);
    assert_noop(TaskState::Accepted, TaskState::Accepted);
    assert_noop(TaskState::Ready, TaskState::Ready);
}

#[test]
fn pure_transitions() {
    for state in [TaskState::New, TaskState::Pending, TaskState::Assigned] {
        assert_advances(state, TaskState::Running, TaskState::Accepted, "accepted");
    }
    assert_advances(
        TaskState::Accepted,
        TaskState::Running,
        TaskState::Preparing,
        "preparing",
    );
    assert_advances(
        TaskState::Ready,
        TaskState::Running,
        TaskState::Starting,
        "starting",
    );
}

#[test]
fn the_full_lifecycle_calls_each_operation_once() {
    let ctlr = StubController::new();
    let cancel = CancelToken::new();
    let mut t = task(TaskState::Assigned, TaskState::Running);
    let mut states = vec![];
    loop {
        let (status, result) = do_task(&cancel, &t, &ctlr);
        t.status = status;
        match result {
            Ok(()) => states.push(t.status.state),
            Err(Error::TaskNoop) => break,
            Err(e) => panic!("{e}"),
        }
    }
    use TaskState::*;
    assert_eq!(
        states,
        [Accepted, Preparing, Ready, Starting, Running, Completed]
    );
    assert_eq!(
        ["prepare", "start", "wait"].map(|m| ctlr.calls(m)),
        [1, 1, 1]
    );
    assert_eq!(ctlr.total_calls(), 3);
}

#[test]
fn cancellation_errors_retry_and_record_nothing() {
    let errors: Vec<fn() -> Error> = vec![
        || Error::Canceled,
        || Error::DeadlineExceeded,
        || Error::other(Error::Canceled),
        || Error::other(Box::new(Error::DeadlineExceeded)),
        || make_temporary(Error::Canceled),
    ];
    for make in errors {
        let ctlr = StubController::new().on_prepare(move |_| Err(make()));
        let t = task(TaskState::Preparing, TaskState::Running);
        let (status, result) = step(&t, &ctlr);
        assert!(matches!(result, Err(Error::TaskRetry)), "{result:?}");
        assert_eq!(status, t.status, "nothing is recorded");
    }
}

#[test]
fn temporary_errors_retry_and_are_recorded() {
    let ctlr = StubController::new().on_start(|_| Err(make_temporary(Error::other("image pull"))));
    let t = task(TaskState::Starting, TaskState::Running);
    let (status, result) = step(&t, &ctlr);
    assert!(matches!(result, Err(Error::TaskRetry)));
    assert_eq!(status.state, TaskState::Starting, "state unchanged");
    assert_eq!(status.err, "image pull");
    assert_eq!(status.message, "previous message");
    assert!(status.timestamp.is_some(), "a recorded error is a change");
}

#[test]
fn fatal_errors_reject_before_starting_and_fail_from_starting_on() {
    let failing = || {
        StubController::new()
            .on_prepare(|_| Err(Error::other("bad mount")))
            .on_start(|_| Err(Error::other("bad exec")))
            .on_wait(|_| Err(Error::other("lost")))
    };
    for (state, end, err) in [
        (TaskState::Preparing, TaskState::Rejected, "bad mount"),
        (TaskState::Starting, TaskState::Failed, "bad exec"),
        (TaskState::Running, TaskState::Failed, "lost"),
    ] {
        let (status, result) = step(&task(state, TaskState::Running), &failing());
        assert!(
            result.is_ok(),
            "fatal errors end the task, they are not returned"
        );
        assert_eq!(status.state, end);
        assert_eq!(status.err, err);
        assert_eq!(status.message, "previous message");
    }
}

#[test]
fn an_exit_error_records_its_code_without_a_container_capability() {
    let ctlr = StubController::new().on_wait(|_| Err(ExitError::new(3, "exited with 3").into()));
    let mut t = task(TaskState::Running, TaskState::Running);
    t.status.container = Some(ContainerStatus {
        container_id: "c1".into(),
        pid: 42,
        exit_code: 0,
    });
    let (status, _) = step(&t, &ctlr);
    assert_eq!(status.state, TaskState::Failed);
    assert_eq!(status.err, "exited with 3");
    let container = status.container.expect("container status");
    assert_eq!(container.exit_code, 3);
    assert_eq!(
        (container.container_id.as_str(), container.pid),
        ("c1", 42),
        "kept from the previous status"
    );
}

#[test]
fn an_exit_error_without_any_previous_status_gets_a_default_one() {
    let ctlr = StubController::new().on_wait(|_| Err(ExitError::new(9, "killed").into()));
    let (status, _) = step(&task(TaskState::Running, TaskState::Running), &ctlr);
    assert_eq!(
        status.container,
        Some(ContainerStatus {
            exit_code: 9,
            ..Default::default()
        })
    );
}

#[test]
fn an_error_carrying_a_container_status_wins_over_the_capability() {
    let carried = ContainerStatus {
        container_id: "from-error".into(),
        pid: 7,
        exit_code: 0,
    };
    let error_status = carried.clone();
    let ctlr = StubController::new()
        .on_wait(move |_| {
            let exit = ExitError::new(2, "exit 2").with_container_status(error_status.clone());
            Err(Error::other(Error::from(exit)))
        })
        .on_container_status(|_| {
            Ok(Some(ContainerStatus {
                container_id: "from-capability".into(),
                ..Default::default()
            }))
        });
    let (status, _) = step(&task(TaskState::Running, TaskState::Running), &ctlr);
    assert_eq!(
        status.container,
        Some(ContainerStatus {
            exit_code: 2,
            ..carried
        })
    );
}

#[test]
fn the_capability_reports_container_and_port_status_once_starting() {
    let ports = PortStatus {
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 8080,
            ..Default::default()
        }],
    };
    let reported_ports = ports.clone();
    let ctlr = StubController::new()
        .on_container_status(|_| {
            Ok(Some(ContainerStatus {
                container_id: "c9".into(),
                pid: 99,
                exit_code: 0,
            }))
        })
        .on_port_status(move |_| Ok(Some(reported_ports.clone())));

    let (status, _) = step(&task(TaskState::Ready, TaskState::Running), &ctlr);
    assert_eq!(status.state, TaskState::Starting);
    assert_eq!(status.container.as_ref().map(|c| c.pid), Some(99));
    assert_eq!(status.port_status, Some(ports));

    let (status, _) = step(&task(TaskState::Accepted, TaskState::Running), &ctlr);
    assert_eq!(status.container, None, "not collected before Starting");
    assert_eq!(status.port_status, None);
}

#[test]
fn a_rejected_task_never_ran_and_carries_no_container_status() {
    let ctlr = StubController::new()
        .on_prepare(|_| Err(Error::other("bad spec")))
        .on_container_status(|_| {
            Ok(Some(ContainerStatus {
                container_id: "never".into(),
                ..Default::default()
            }))
        });
    let (status, _) = step(&task(TaskState::Preparing, TaskState::Running), &ctlr);
    assert_eq!(status.state, TaskState::Rejected);
    assert_eq!(status.container, None);
}

#[test]
fn a_capability_with_nothing_to_report_keeps_the_previous_container_status() {
    let ctlr = StubController::new()
        .on_container_status(|_| Err(Error::other("daemon down")))
        .on_wait(|_| Err(ExitError::new(1, "exit 1").into()));
    let mut t = task(TaskState::Running, TaskState::Running);
    t.status.container = Some(ContainerStatus {
        container_id: "old".into(),
        pid: 5,
        exit_code: 0,
    });
    let (status, _) = step(&t, &ctlr);
    assert_eq!(
        status.container,
        Some(ContainerStatus {
            container_id: "old".into(),
            pid: 5,
            exit_code: 1
        })
    );
}

#[test]
fn timestamps_change_with_the_status_and_never_move_backwards() {
    let ctlr = StubController::new();
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let mut t = task(TaskState::Ready, TaskState::Ready);
    t.status.timestamp = Some(past);
    let (status, _) = step(&t, &ctlr);
    assert_eq!(
        status.timestamp,
        Some(past),
        "an unchanged status keeps its time"
    );

    let before = SystemTime::now();
    t.desired_state = TaskState::Running;
    let (status, _) = step(&t, &ctlr);
    let stamped = status.timestamp.expect("stamped");
    assert!(stamped >= before, "a changed status is stamped now");

    let future = SystemTime::now() + Duration::from_secs(3_600);
    t.status.timestamp = Some(future);
    let (status, _) = step(&t, &ctlr);
    assert_eq!(status.state, TaskState::Starting);
    assert_eq!(status.timestamp, Some(future), "never moves backwards");
}

#[test]
fn unchanged_runtime_status_keeps_the_timestamp() {
    let container = ContainerStatus {
        container_id: "c".into(),
        pid: 1,
        exit_code: 0,
    };
    let reported = container.clone();
    let ctlr = StubController::new().on_container_status(move |_| Ok(Some(reported.clone())));
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
    let mut t = task(TaskState::Completed, TaskState::Running);
    t.status.container = Some(container);
    t.status.timestamp = Some(past);
    let (status, result) = step(&t, &ctlr);
    assert!(matches!(result, Err(Error::TaskNoop)));
    assert_eq!(status.timestamp, Some(past));
    assert_eq!(status, t.status);
}

#[test]
fn the_controller_sees_the_token_it_was_given() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let ctlr = StubController::new().on_wait(move |cancel| {
        counter.fetch_add(1, Ordering::SeqCst);
        cancel.wait(); // blocks until the test cancels
        Err(cancel.err().expect("cancelled"))
    });
    let cancel = CancelToken::new();
    let t = task(TaskState::Running, TaskState::Running);
    let result = std::thread::scope(|s| {
        let handle = s.spawn(|| do_task(&cancel, &t, &ctlr));
        while seen.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        cancel.cancel();
        handle.join().unwrap()
    });
    assert!(matches!(result.1, Err(Error::TaskRetry)));
    assert_eq!(result.0.state, TaskState::Running);
}

#[test]
fn resolve_failures_depend_on_how_far_the_task_got() {
    let failing = StubExecutor::new().on_controller(|_| Err(Error::RuntimeUnsupported));
    for (state, end) in [
        (TaskState::New, TaskState::Rejected),
        (TaskState::Assigned, TaskState::Rejected),
        (TaskState::Ready, TaskState::Rejected),
        (TaskState::Starting, TaskState::Failed),
        (TaskState::Running, TaskState::Failed),
        (TaskState::Completed, TaskState::Completed),
        (TaskState::Shutdown, TaskState::Shutdown),
    ] {
        let (status, ctlr) = resolve(
            &CancelToken::new(),
            &task(state, TaskState::Running),
            &failing,
        );
        assert!(matches!(ctlr, Err(Error::RuntimeUnsupported)));
        assert_eq!(status.state, end, "from {state}");
        assert_eq!(status.message, "resolving controller failed");
        assert_eq!(status.err, "exec: unsupported runtime");
        assert!(status.timestamp.is_some());
    }
}

#[test]
fn resolve_success_accepts_a_task_not_yet_accepted() {
    let working = StubExecutor::new();
    for state in [TaskState::New, TaskState::Pending, TaskState::Assigned] {
        let (status, ctlr) = resolve(
            &CancelToken::new(),
            &task(state, TaskState::Running),
            &working,
        );
        assert!(ctlr.is_ok());
        assert_eq!(status.state, TaskState::Accepted);
        assert_eq!(status.message, "accepted");
        assert_eq!(status.err, "");
    }
    let t = task(TaskState::Running, TaskState::Running);
    let (status, ctlr) = resolve(&CancelToken::new(), &t, &working);
    assert!(ctlr.is_ok());
    assert_eq!(status, t.status, "a task already accepted keeps its status");
}
