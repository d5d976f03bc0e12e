//! Property: whatever the task and whatever the controller answers, repeated
//! `do_task` never moves backwards, never panics, keeps terminal states terminal and
//! never calls the controller once terminal.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;
use swarmexec::api::{ContainerStatus, Task, TaskState};
use swarmexec::{do_task, make_temporary, CancelToken, Error, ExitError, StubController};

#[derive(Clone, Debug)]
enum Answer {
    Ok,
    AlreadyDone,
    Fatal,
    Temporary,
    Canceled,
    Deadline,
    Exit(i32),
    ExitWithStatus(i32),
}

impl Answer {
    fn error(&self, already: fn() -> Error) -> Result<(), Error> {
        match self {
            Answer::Ok => Ok(()),
            Answer::AlreadyDone => Err(already()),
            Answer::Fatal => Err(Error::other("boom")),
            Answer::Temporary => Err(make_temporary(Error::other("again"))),
            Answer::Canceled => Err(Error::Canceled),
            Answer::Deadline => Err(Error::other(Error::DeadlineExceeded)),
            Answer::Exit(code) => Err(ExitError::new(*code, format!("exit {code}")).into()),
            Answer::ExitWithStatus(code) => Err(ExitError::new(*code, "exit")
                .with_container_status(ContainerStatus {
                    container_id: "c".into(),
                    pid: 4,
                    exit_code: *code,
                })
                .into()),
        }
    }
}

fn any_state() -> impl Strategy<Value = TaskState> {
    prop::sample::select(TaskState::ALL.to_vec())
}

fn any_answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Ok),
        1 => Just(Answer::AlreadyDone),
        1 => Just(Answer::Fatal),
        2 => Just(Answer::Temporary),
        1 => Just(Answer::Canceled),
        1 => Just(Answer::Deadline),
        1 => (-3..300i32).prop_map(Answer::Exit),
        1 => (1..300i32).prop_map(Answer::ExitWithStatus),
    ]
}

fn scripted(answers: Vec<Answer>) -> StubController {
    let queue = Arc::new(Mutex::new(VecDeque::from(answers)));
    let next = move |already: fn() -> Error| {
        let queue = Arc::clone(&queue);
        move |_: &CancelToken| {
            let answer = queue.lock().pop_front().unwrap_or(Answer::Ok);
            answer.error(already)
        }
    };
    StubController::new()
        .on_prepare(next(|| Error::TaskPrepared))
        .on_start(next(|| Error::TaskStarted))
        .on_wait(next(|| Error::other("wait failed")))
        .on_shutdown(next(|| Error::other("shutdown failed")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn do_task_is_monotonic_and_terminal_states_stay_put(
        state in any_state(),
        desired in any_state(),
        answers in prop::collection::vec(any_answer(), 0..12),
        raises in prop::collection::vec(prop::option::weighted(0.2, any_state()), 1..24),
    ) {
        let ctlr = scripted(answers);
        let cancel = CancelToken::new();
        let mut task = Task { desired_state: desired, ..Default::default() };
        task.status.state = state;
        for raise in raises {
            // The orchestrator only ever raises a desired state.
            if let Some(raised) = raise.filter(|r| *r > task.desired_state) {
                task.desired_state = raised;
            }
            let before = task.status.clone();
            let calls_before = ctlr.total_calls();
            let (status, result) = do_task(&cancel, &task, &ctlr);
            prop_assert!(
                matches!(result, Ok(()) | Err(Error::TaskNoop) | Err(Error::TaskRetry)),
                "unexpected result {:?}", result
            );
            prop_assert!(status.state >= before.state, "{} -> {}", before.state, status.state);
            if before.state.is_terminal() {
                prop_assert_eq!(status.state, before.state);
                prop_assert_eq!(ctlr.total_calls(), calls_before, "called once terminal");
            }
            if matches!(result, Err(Error::TaskNoop)) {
                prop_assert_eq!(&status, &before, "a noop changes nothing");
            }
            if status.timestamp != before.timestamp {
                prop_assert!(status.timestamp > before.timestamp, "time moved backwards");
            }
            task.status = status;
        }
    }
}
