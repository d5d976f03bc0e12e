//! Transition latency of a controller, step by step: `cargo bench --bench
//! my_controller` (add `-- --json`, `--save FILE`, `--baseline FILE`).
//!
//! Put your own controller where the stub is; the process executor's lifecycle
//! of `/bin/true` runs in turn with it, round by round.

use swarmexec::api::{ProcessSpec, Runtime, Task, TaskSpec, TaskState};
use swarmexec::bench::{Bench, CountingAllocator, Output, Variant};
use swarmexec::process::ProcessExecutor;
use swarmexec::StubController;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let output = Output::from_env()?;
    let mut task = Task {
        id: "bench.1".into(),
        desired_state: TaskState::Running,
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;

    let state_dir = std::env::temp_dir().join(format!("my-bench-{}", std::process::id()));
    let executor = ProcessExecutor::new(&state_dir)?;
    let true_task = |round: usize| {
        let spec = ProcessSpec {
            command: vec!["/bin/true".into()],
            ..Default::default()
        };
        Task {
            id: format!("true.{round}"),
            spec: TaskSpec {
                runtime: Some(Runtime::Process(spec)),
                ..Default::default()
            },
            ..task.clone()
        }
    };

    let mut variants = [
        Variant::controller("stub", task.clone(), |_round| StubController::new()),
        Variant::executor("process", &executor, true_task),
    ];
    let (reports, ratios) = Bench::new().warmup(10).rounds(200).compare(&mut variants)?;
    let regressed = output.emit(&reports, &ratios)?;
    drop(variants);
    drop(executor);
    std::fs::remove_dir_all(&state_dir)?;
    if !regressed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
