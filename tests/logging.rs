//! `do_task` logs state changes at debug level through `log`, and nothing else
//! when the task does not move.

use parking_lot::Mutex;
use swarmexec::api::{Task, TaskState};
use swarmexec::{do_task, CancelToken, StubController};

struct Capture(Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let entry = (
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        );
        self.0.lock().push(entry);
    }
    fn flush(&self) {}
}

static LOGGER: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn state_changes_are_logged_at_debug_level() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let ctlr = StubController::new();
    let mut task = Task {
        id: "t-9".into(),
        desired_state: TaskState::Running,
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;

    let (status, _) = do_task(&CancelToken::new(), &task, &ctlr);
    let records = std::mem::take(&mut *LOGGER.0.lock());
    assert_eq!(
        records,
        [(
            log::Level::Debug,
            "swarmexec".to_string(),
            "task t-9: ASSIGNED -> ACCEPTED (desired RUNNING)".to_string()
        )]
    );

    task.status = status;
    task.desired_state = TaskState::Accepted;
    let (_, result) = do_task(&CancelToken::new(), &task, &ctlr);
    assert!(matches!(result, Err(swarmexec::Error::TaskNoop)));
    assert!(LOGGER.0.lock().is_empty(), "a noop logs nothing");
}
