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
//! `-- --json` prints one JSON object per row.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use swarmexec::agent::{AssignmentChanges, Worker};
use swarmexec::api::*;
use swarmexec::process::ProcessController;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Controller, Error, Executor, StubExecutor};

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn stub_lifecycle() -> (f64, f64) {
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
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
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

/// `health_1000`: 1,000 running tasks, each probed with `/bin/true` every 2 s,
/// for 6 s. Returns the threads beyond those of the same tasks without health
/// checks (the most seen either way), and the median delay of a probe against
/// its schedule (the previous probe's end plus the interval).
fn health_1000() -> (i64, f64) {
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
    delays.sort_by(f64::total_cmp);
    let p50 = if delays.is_empty() {
        f64::NAN
    } else {
        percentile(&delays, 0.5)
    };
    (with as i64 - without as i64, p50)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let (p50, p99) = stub_lifecycle();
    let per_second = stub_10000();
    let process = process_1000();
    let (extra_threads, probe_delay) = health_1000();
    if json {
        println!("{{\"name\":\"stub_lifecycle\",\"p50_ns\":{p50:.0},\"p99_ns\":{p99:.0}}}");
        println!("{{\"name\":\"stub_10000\",\"lifecycles_per_s\":{per_second:.0}}}");
        println!(
            "{{\"name\":\"process_1000\",\"all_running_s\":{:.3},\"all_stopped_s\":{:.3},\"peak_threads\":{},\"bytes_per_task\":{:.0}}}",
            process.all_running_s, process.all_stopped_s, process.peak_threads, process.bytes_per_task
        );
        println!(
            "{{\"name\":\"health_1000\",\"extra_threads\":{extra_threads},\"probe_delay_p50_ns\":{probe_delay:.0}}}"
        );
        return;
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("| row | figure | target |");
    println!("|---|---:|---|");
    println!(
        "| stub_lifecycle p50 | {:.1} us | <= 30 us: {} |",
        p50 / 1e3,
        verdict(p50 <= 30e3)
    );
    println!("| stub_lifecycle p99 | {:.1} us | |", p99 / 1e3);
    println!(
        "| stub_10000 | {per_second:.0} lifecycles/s | >= 50,000: {} |",
        verdict(per_second >= 50_000.0)
    );
    println!(
        "| process_1000 all running | {:.3} s | <= 3 s: {} |",
        process.all_running_s,
        verdict(process.all_running_s <= 3.0)
    );
    println!(
        "| process_1000 all stopped | {:.3} s | <= 2 s: {} |",
        process.all_stopped_s,
        verdict(process.all_stopped_s <= 2.0)
    );
    println!(
        "| process_1000 peak threads | {} | <= 1,016: {} |",
        process.peak_threads,
        verdict(process.peak_threads <= 1_016)
    );
    println!(
        "| process_1000 memory per task | {:.0} B | <= 65,536: {} |",
        process.bytes_per_task,
        verdict(process.bytes_per_task <= 65_536.0)
    );
    println!(
        "| health_1000 extra threads | {extra_threads} | <= 16: {} |",
        verdict(extra_threads <= 16)
    );
    println!(
        "| health_1000 probe delay p50 | {:.1} ms | <= 25 ms: {} |",
        probe_delay / 1e6,
        verdict(probe_delay <= 25e6)
    );
}
