//! Per-call latency of the state machine: `cargo bench --bench transition`.
//!
//! Each row times a batch of calls (`swarmexec::bench::Variant::op`), the clock's
//! own cost taken off; allocations per call are counted by the bench module's
//! allocator. The rows run in turn, round by round, so that each ratio to
//! `baseline` (which only clones a `TaskStatus` and reads the clock: what any
//! step that returns a new, stamped status must at least pay on this machine) is
//! measured on the same machine at the same time. `-- --json` prints Bencher's
//! metric format.

use std::hint::black_box;
use std::time::SystemTime;

use swarmexec::api::{Task, TaskState, TaskStatus};
use swarmexec::bench::{Bench, CountingAllocator, Output, Variant};
use swarmexec::{do_task, resolve, CancelToken, Error, StubController, StubExecutor};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A task in `state` with the status `do_task` itself would have left there.
fn task_in(state: TaskState, desired: TaskState, message: &str) -> Task {
    Task {
        id: "bench-task-1".into(),
        service_id: "bench-service".into(),
        node_id: "bench-node".into(),
        desired_state: desired,
        status: TaskStatus {
            timestamp: Some(SystemTime::now()),
            state,
            message: message.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The targets, as multiples of `baseline`.
fn target(name: &str) -> Option<f64> {
    match name {
        "noop" => Some(1.0),
        "transition" | "prepare" | "resolve" => Some(2.0),
        "lifecycle" => Some(12.0),
        _ => None,
    }
}

fn main() -> Result<(), Error> {
    let output = Output::from_env()?;
    let cancel = CancelToken::new();
    let ctlr = StubController::new();
    let executor = StubExecutor::new();
    let running = TaskState::Running;

    let paused = task_in(TaskState::Ready, TaskState::Ready, "prepared");
    let accepted = task_in(TaskState::Accepted, running, "accepted");
    let preparing = task_in(TaskState::Preparing, running, "preparing");
    let assigned = task_in(TaskState::Assigned, running, "assigned");

    // Each row must take the path it is named after.
    assert!(matches!(
        do_task(&cancel, &paused, &ctlr).1,
        Err(Error::TaskNoop)
    ));
    assert_eq!(
        do_task(&cancel, &accepted, &ctlr).0.state,
        TaskState::Preparing
    );
    assert_eq!(
        do_task(&cancel, &preparing, &ctlr).0.state,
        TaskState::Ready
    );
    assert_eq!(
        resolve(&cancel, &assigned, &executor).0.state,
        TaskState::Accepted
    );

    let mut lifecycle_task = assigned.clone();
    let mut variants = [
        Variant::op("baseline", || {
            black_box(black_box(&paused.status).clone());
            black_box(SystemTime::now());
        }),
        Variant::op("noop", || {
            let _ = black_box(do_task(&cancel, black_box(&paused), &ctlr));
        }),
        Variant::op("transition", || {
            let _ = black_box(do_task(&cancel, black_box(&accepted), &ctlr));
        }),
        Variant::op("prepare", || {
            let _ = black_box(do_task(&cancel, black_box(&preparing), &ctlr));
        }),
        Variant::op("lifecycle", || {
            lifecycle_task.status.clone_from(&assigned.status);
            while lifecycle_task.status.state != TaskState::Completed {
                let (status, _) = do_task(&cancel, &lifecycle_task, &ctlr);
                lifecycle_task.status = status;
            }
        }),
        Variant::op("resolve", || {
            let _ = black_box(resolve(&cancel, black_box(&assigned), &executor));
        }),
    ];
    let (reports, ratios) = Bench::new().warmup(5).rounds(200).compare(&mut variants)?;
    output.emit(&reports, &ratios)?;
    if !output.json {
        println!();
        println!("| row | x baseline | target |");
        println!("|---|---:|---|");
        for ratio in &ratios {
            let verdict = target(&ratio.name)
                .map_or(String::new(), |t| format!("<= {t}x: {}", ratio.at_most(t)));
            println!("| {} | {:.2} | {verdict} |", ratio.name, ratio.median);
        }
    }
    Ok(())
}
