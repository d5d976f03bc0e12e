//! Per-call latency of the state machine: `cargo bench --bench transition`.
//!
//! Each row reports the median ns/op over several timed rounds, the p50 and p99 of
//! single timed calls (less the cost of reading the clock), and heap allocations per
//! call, counted by a global allocator. `-- --json` prints one JSON object per row.
//!
//! `baseline` only clones a `TaskStatus` and reads the clock: what any step that
//! returns a new, stamped status must at least pay on this machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use swarmexec::api::{Task, TaskState, TaskStatus};
use swarmexec::{do_task, resolve, CancelToken, Error, StubController, StubExecutor};

/// Counts allocations, then lets the system allocator do the work.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this type.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: usize = 21;
const ROUND_TIME: Duration = Duration::from_millis(25);
const SAMPLES: usize = 20_000;

struct Row {
    name: &'static str,
    ns_per_op: f64,
    p50_ns: f64,
    p99_ns: f64,
    allocs_per_op: f64,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

/// The cost of timing nothing, subtracted from single-call samples.
fn clock_overhead_ns() -> f64 {
    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed().as_nanos() as f64
        })
        .collect();
    median(&mut samples)
}

fn measure(name: &'static str, overhead: f64, mut op: impl FnMut()) -> Row {
    // Warm up and size a round to take about ROUND_TIME.
    let start = Instant::now();
    let mut warmup = 0u64;
    while start.elapsed() < ROUND_TIME {
        op();
        warmup += 1;
    }
    let per_round = warmup.max(100);

    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                op();
            }
            start.elapsed().as_nanos() as f64 / per_round as f64
        })
        .collect();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;

    let mut samples: Vec<f64> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            op();
            (start.elapsed().as_nanos() as f64 - overhead).max(0.0)
        })
        .collect();
    samples.sort_by(f64::total_cmp);

    Row {
        name,
        ns_per_op: median(&mut rounds),
        p50_ns: percentile(&samples, 0.50),
        p99_ns: percentile(&samples, 0.99),
        allocs_per_op: allocations as f64 / (ROUNDS as u64 * per_round) as f64,
    }
}

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

fn run() -> Vec<Row> {
    let overhead = clock_overhead_ns();
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

    let baseline = measure("baseline", overhead, || {
        black_box(black_box(&paused.status).clone());
        black_box(SystemTime::now());
    });
    let noop = measure("noop", overhead, || {
        let _ = black_box(do_task(&cancel, black_box(&paused), &ctlr));
    });
    let transition = measure("transition", overhead, || {
        let _ = black_box(do_task(&cancel, black_box(&accepted), &ctlr));
    });
    let prepare = measure("prepare", overhead, || {
        let _ = black_box(do_task(&cancel, black_box(&preparing), &ctlr));
    });
    let mut lifecycle_task = assigned.clone();
    let lifecycle = measure("lifecycle", overhead, || {
        lifecycle_task.status.clone_from(&assigned.status);
        while lifecycle_task.status.state != TaskState::Completed {
            let (status, result) = do_task(&cancel, &lifecycle_task, &ctlr);
            debug_assert!(result.is_ok());
            lifecycle_task.status = status;
        }
    });
    let resolved = measure("resolve", overhead, || {
        let _ = black_box(resolve(&cancel, black_box(&assigned), &executor));
    });
    vec![noop, transition, prepare, lifecycle, resolved, baseline]
}

/// The targets of the issue, as multiples of `baseline`'s median.
fn target(name: &str) -> Option<f64> {
    match name {
        "noop" => Some(1.0),
        "transition" | "prepare" | "resolve" => Some(2.0),
        "lifecycle" => Some(12.0),
        _ => None,
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rows = run();
    let baseline = rows
        .iter()
        .find(|r| r.name == "baseline")
        .map_or(f64::NAN, |r| r.ns_per_op);
    if json {
        for r in &rows {
            println!(
                "{{\"name\":\"{}\",\"ns_per_op\":{:.1},\"p50_ns\":{:.1},\"p99_ns\":{:.1},\"allocs_per_op\":{:.2}}}",
                r.name, r.ns_per_op, r.p50_ns, r.p99_ns, r.allocs_per_op
            );
        }
        return;
    }
    println!("| row | ns/op (median) | p50 ns | p99 ns | allocs/op | x baseline | target |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let ratio = r.ns_per_op / baseline;
        let verdict = match target(r.name) {
            Some(limit) if ratio <= limit => format!("<= {limit}x: met"),
            Some(limit) => format!("<= {limit}x: MISSED"),
            None => String::new(),
        };
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
            r.name, r.ns_per_op, r.p50_ns, r.p99_ns, r.allocs_per_op, ratio, verdict
        );
    }
}
