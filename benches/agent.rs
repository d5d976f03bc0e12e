//! The agent runtime under load: `cargo bench --bench agent`.
//!
//! - `stub_lifecycle`: one task with a stub controller, from `Worker::update` to
//!   its `COMPLETE` status reaching a listener (p50/p99 over many tasks, one at a
//!   time).
//! - `stub_10000`: 10,000 stub tasks assigned at once, until every `COMPLETE` has
//!   reached a listener: lifecycles per second.
//! - `process_1000`: 1,000 `sleep 60` tasks with the process executor: time until all
//!   are `RUNNING`, then until all are `SHUTDOWN` after one desired-state change; the
//!   peak thread count and resident memory per task.
//!
//! `health_1000` runs in a fresh process of its own, so that its thread baseline
//! is taken in the same state as the row. `-- --json` prints Bencher's metric
//! format (the latency rows).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use swarmexec::agent::{AssignmentChanges, Worker};
use swarmexec::api::*;
use swarmexec::bench::{median_with_interval, time, verdict, Output, Report};
use swarmexec::process::ProcessController;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Controller, Error, Executor, StubExecutor};

#[global_allocator]
static ALLOCATOR: swarmexec::bench::CountingAllocator = swarmexec::bench::CountingAllocator;

fn task(id: String, runtime: Option<Runtime>) -> Task {
    let mut task = Task {
        id,
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime,
            ..Default::default()
        },
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;
    task
}

/// A worker whose listener sends (task id, when) for every status in `state`.
fn listened(
    executor: Arc<dyn Executor>,
    state: TaskState,
) -> (
    Worker,
    swarmexec::agent::Listener,
    Receiver<(String, Instant)>,
) {
    let worker = Worker::new(executor);
    let (tx, rx) = unbounded();
    let listener = worker.listen(move |id: &str, status: &TaskStatus| -> Result<(), Error> {
        if status.state == state {
            let _ = tx.send((id.to_owned(), Instant::now()));
        }
        Ok(())
    });
    (worker, listener, rx)
}

fn stub_lifecycle() -> Vec<f64> {
    let (worker, _listener, completed) =
        listened(Arc::new(StubExecutor::new()), TaskState::Completed);
    let mut samples = Vec::new();
    for i in 0..3_000 {
        let start = Instant::now();
        worker
            .update(AssignmentChanges {
                tasks: vec![task(format!("one-{i}"), None)],
                ..Default::default()
            })
            .unwrap();
        let (_, done) = completed.recv().unwrap();
        if i >= 200 {
            samples.push((done - start).as_nanos() as f64);
        }
    }
    samples
}

fn stub_10000() -> f64 {
    let (worker, _listener, completed) =
        listened(Arc::new(StubExecutor::new()), TaskState::Completed);
    let tasks: Vec<Task> = (0..10_000)
        .map(|i| task(format!("many-{i}"), None))
        .collect();
    let start = Instant::now();
    worker.assign(tasks, vec![], vec![]).unwrap();
    let mut last = start;
    for _ in 0..10_000 {
        last = completed.recv().unwrap().1;
    }
    10_000.0 / (last - start).as_secs_f64()
}

fn threads_and_rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:") * 1024)
}

/// Waits until `count` distinct tasks have reported; returns when the last did.
fn all_of(reports: &Receiver<(String, Instant)>, count: usize) -> Instant {
    let mut seen = HashSet::new();
    let mut last = Instant::now();
    while seen.len() < count {
        let (id, at) = reports
            .recv_timeout(Duration::from_secs(120))
            .expect("progress");
        seen.insert(id);
        last = at;
    }
    last
}

struct ProcessFigures {
    all_running_s: f64,
    all_stopped_s: f64,
    peak_threads: usize,
    bytes_per_task: f64,
}

fn process_1000() -> ProcessFigures {
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("swarmexec-agent-bench-{}", std::process::id()));
    let executor = Arc::new(ProcessExecutor::new(&dir).unwrap());
    let worker = Worker::new(executor);
    let (running_tx, running) = unbounded();
    let (stopped_tx, stopped) = unbounded();
    let _listener = worker.listen(move |id: &str, status: &TaskStatus| -> Result<(), Error> {
        let target = match status.state {
            TaskState::Running => &running_tx,
            TaskState::Shutdown => &stopped_tx,
            _ => return Ok(()),
        };
        let _ = target.send((id.to_owned(), Instant::now()));
        Ok(())
    });

    let peak = Arc::new(AtomicUsize::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
        thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(threads_and_rss().0, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let runtime = |id: usize| {
        let spec = ProcessSpec {
            command: vec!["sleep".into(), "60".into()],
            ..Default::default()
        };
        task(format!("sleep-{id}"), Some(Runtime::Process(spec)))
    };
    let tasks: Vec<Task> = (0..1_000).map(runtime).collect();
    let (_, rss_before) = threads_and_rss();
    let start = Instant::now();
    worker.assign(tasks.clone(), vec![], vec![]).unwrap();
    let all_running = all_of(&running, 1_000) - start;
    let (_, rss_running) = threads_and_rss();

    let stops: Vec<Task> = tasks
        .into_iter()
        .map(|t| Task {
            desired_state: TaskState::Shutdown,
            ..t
        })
        .collect();
    let start = Instant::now();
    worker.assign(stops, vec![], vec![]).unwrap();
    let all_stopped = all_of(&stopped, 1_000) - start;

    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    worker.close();
    let _ = std::fs::remove_dir_all(&dir);
    ProcessFigures {
        all_running_s: all_running.as_secs_f64(),
        all_stopped_s: all_stopped.as_secs_f64(),
        peak_threads: peak.load(Ordering::Relaxed),
        bytes_per_task: rss_running.saturating_sub(rss_before) as f64 / 1_000.0,
    }
}

/// 1,000 processes need about 3,000 descriptors (a pidfd and two pipes each).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// What `health_1000` found, in a process of its own.
struct HealthFigures {
    /// The most threads with 1,000 tasks and no health checks.
    baseline_threads: usize,
    /// The most with the same tasks probed.
    probed_threads: usize,
    /// How late each probe was against its schedule, in nanoseconds.
    delays: Vec<f64>,
}

/// `health_1000`, run in a fresh process (this bench, asked with
/// `--health-only`), so that its baseline is taken in the same state as the row:
/// no pool threads left over from the rows before.
fn health_1000_fresh() -> HealthFigures {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--health-only")
        .output()
        .expect("the bench runs itself");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let mut count = || lines.next().and_then(|l| l.parse().ok()).expect("a count");
    let (baseline_threads, probed_threads) = (count(), count());
    let delays = lines.filter_map(|l| l.parse().ok()).collect();
    HealthFigures {
        baseline_threads,
        probed_threads,
        delays,
    }
}

/// `health_1000`: 1,000 running tasks, each probed with `/bin/true` every 2 s,
/// for 6 s. Finds the most threads with the same tasks unprobed (for 2 s) and
/// probed, and how late each probe was against its schedule (the previous
/// probe's end plus the interval).
fn health_1000() -> HealthFigures {
    raise_fd_limit();
    let dir = std::env::temp_dir().join(format!("swarmexec-health-bench-{}", std::process::id()));
    let executor = ProcessExecutor::new(&dir).unwrap();
    let interval = Duration::from_secs(2);
    let start_all = |checked: bool| -> Vec<ProcessController> {
        (0..1_000)
            .map(|i| {
                let spec = ProcessSpec {
                    command: vec!["sleep".into(), "60".into()],
                    healthcheck: checked.then(|| HealthCheck {
                        test: HealthTest::Command(vec!["/bin/true".into()]),
                        interval: Some(interval),
                        start_interval: Some(interval),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let task = task(format!("probed-{i}"), Some(Runtime::Process(spec)));
                let controller = executor.process_controller(&task).unwrap();
                controller.prepare(&CancelToken::new()).unwrap();
                controller.start(&CancelToken::new()).unwrap();
                controller
            })
            .collect()
    };
    let most_threads = |seconds: u64| {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut most = 0;
        while Instant::now() < end {
            most = most.max(threads_and_rss().0);
            thread::sleep(Duration::from_millis(10));
        }
        most
    };
    let plain = start_all(false);
    let without = most_threads(2);
    drop(plain);
    let probed = start_all(true);
    let with = most_threads(6);
    let mut delays = Vec::new();
    for controller in &probed {
        let log = controller.health().map(|h| h.log).unwrap_or_default();
        for pair in log.windows(2) {
            let due = pair[0].end + interval;
            let late = pair[1].start.duration_since(due).unwrap_or_default();
            delays.push(late.as_nanos() as f64);
        }
    }
    drop(probed);
    drop(executor);
    let _ = std::fs::remove_dir_all(&dir);
    HealthFigures {
        baseline_threads: without,
        probed_threads: with,
        delays,
    }
}

fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--health-only") {
        let health = health_1000();
        println!("{}\n{}", health.baseline_threads, health.probed_threads);
        health.delays.iter().for_each(|d| println!("{d}"));
        return Ok(());
    }
    let output = Output::from_env()?;
    let lifecycles = stub_lifecycle();
    let per_second = stub_10000();
    let process = process_1000();
    let health = health_1000_fresh();
    let reports = [
        Report::of_samples("stub_lifecycle", lifecycles),
        Report::of_samples("health_1000_probe_delay", health.delays.clone()),
    ];
    output.emit(&reports, &[])?;
    if output.json {
        return Ok(());
    }
    let met = |ok: bool| if ok { "met" } else { "missed" };
    let (p50, low, high) = median_with_interval(&reports[0].rows[0].samples);
    let (delay, delay_low, delay_high) = median_with_interval(&health.delays);
    let extra_threads = health.probed_threads as i64 - health.baseline_threads as i64;
    println!();
    println!("| row | figure | target |");
    println!("|---|---:|---|");
    println!(
        "| stub_lifecycle p50 | {} (median's 95% range {} to {}) | <= 30 us: {} |",
        time(p50),
        time(low),
        time(high),
        verdict(low, high, 30e3)
    );
    println!(
        "| stub_10000 | {per_second:.0} lifecycles/s | >= 50,000: {} |",
        met(per_second >= 50_000.0)
    );
    println!(
        "| process_1000 all running | {:.3} s | <= 3 s: {} |",
        process.all_running_s,
        met(process.all_running_s <= 3.0)
    );
    println!(
        "| process_1000 all stopped | {:.3} s | <= 2 s: {} |",
        process.all_stopped_s,
        met(process.all_stopped_s <= 2.0)
    );
    println!(
        "| process_1000 peak threads | {} | <= 1,016: {} |",
        process.peak_threads,
        met(process.peak_threads <= 1_016)
    );
    println!(
        "| process_1000 memory per task | {:.0} B | <= 65,536: {} |",
        process.bytes_per_task,
        met(process.bytes_per_task <= 65_536.0)
    );
    println!(
        "| health_1000 extra threads | {extra_threads} ({} probed against {} unprobed, in a fresh process) | <= 16: {} |",
        health.probed_threads,
        health.baseline_threads,
        met(extra_threads <= 16)
    );
    println!(
        "| health_1000 probe delay p50 | {} (median's 95% range {} to {}) | <= 25 ms: {} |",
        time(delay),
        time(delay_low),
        time(delay_high),
        verdict(delay_low, delay_high, 25e6)
    );
    Ok(())
}
