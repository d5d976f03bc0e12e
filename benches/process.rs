//! The process executor against plain spawning: `cargo bench --bench process`.
//!
//! - `process_lifecycle`: `/bin/true` from `resolve` to `Completed` through
//!   `do_task`, then `remove` and `close`, on an executor without cgroups; its
//!   steps each a row (`swarmexec::bench::Variant::executor`).
//! - `contained_lifecycle`: the same in a cgroup of its own (no limits).
//! - `limited_lifecycle`: the same with memory, CPU and pids limits.
//! - `raw_spawn`: `Command::new("/bin/true").status()`, run in turn with the rows
//!   above, round by round, so that each ratio is of the same machine.
//! - `kill_tree`: from `terminate` to the terminal status of a task with 100
//!   processes, half of them in sessions of their own.
//! - `wait_wakeup`: from the kernel reporting a program's exit (seen by the bench's
//!   own pidfd) to `wait` returning.
//!
//! `-- --json` prints Bencher's metric format.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use swarmexec::api::{
    Limits, ProcessSpec, ResourceRequirements, Runtime, Task, TaskSpec, TaskState,
};
use swarmexec::bench::{time, Bench, Output, Report, Summary, Variant};
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Controller};

#[global_allocator]
static ALLOCATOR: swarmexec::bench::CountingAllocator = swarmexec::bench::CountingAllocator;

const LIFECYCLE_ROUNDS: usize = 400;
const WAKEUP_ROUNDS: usize = 300;
const KILL_ROUNDS: usize = 40;

/// Half of the tree leaves the task's process group; only a cgroup follows it.
const TREE: &str = "for i in $(seq 50); do sleep 300 & done; \
                    for i in $(seq 49); do setsid sleep 300 & done; wait";

fn task(id: usize, command: &[&str], limits: Option<Limits>) -> Task {
    Task {
        id: format!("bench-{id}"),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(ProcessSpec {
                command: command.iter().map(|s| s.into()).collect(),
                ..Default::default()
            })),
            resources: limits.map(|limits| ResourceRequirements {
                limits: Some(limits),
                ..Default::default()
            }),
        },
        ..Default::default()
    }
}

/// Nanoseconds from `terminate` to the terminal status of a 100-process task.
fn kill_tree(executor: &ProcessExecutor, id: usize) -> f64 {
    let controller = executor
        .process_controller(&task(id, &["sh", "-c", TREE], None))
        .unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    controller.start(&cancel).unwrap();
    while controller.usage().and_then(|u| u.processes) != Some(100) {
        thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    controller.terminate(&cancel).unwrap();
    assert!(controller.wait(&cancel).is_err(), "killed");
    let elapsed = start.elapsed().as_nanos() as f64;
    controller.close().unwrap();
    elapsed
}

fn raw_spawn() {
    let status = Command::new("/bin/true").status().expect("spawn");
    assert!(status.success());
}

/// A descriptor that becomes readable when `pid` exits.
fn pidfd(pid: i32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Blocks until `fd` is readable and returns when that was seen.
fn readable_at(fd: &OwnedFd) -> Instant {
    let mut poll_fd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid, writable pollfd.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, -1) };
    let now = Instant::now();
    assert_eq!(ready, 1);
    now
}

/// Nanoseconds from exit to `wait` returning, for one `sleep` that exits on its own.
fn wakeup(executor: &ProcessExecutor, id: usize) -> f64 {
    let controller = Arc::new(
        executor
            .process_controller(&task(id, &["sleep", "0.02"], None))
            .unwrap(),
    );
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    controller.start(&cancel).unwrap();
    let statuser = controller.as_container_statuser().unwrap();
    let pid = statuser.container_status(&cancel).unwrap().unwrap().pid;
    let exit_seen = pidfd(pid);
    let waiter = {
        let controller = Arc::clone(&controller);
        thread::spawn(move || {
            controller.wait(&CancelToken::new()).unwrap();
            Instant::now()
        })
    };
    let exited = readable_at(&exit_seen);
    let returned = waiter.join().unwrap();
    controller.remove(&cancel).unwrap();
    returned.saturating_duration_since(exited).as_nanos() as f64
}

/// A bound on a p99 that a row must meet.
fn p99_verdict(summary: &Summary, bound: f64) -> String {
    let met = if summary.p99 <= bound {
        "met"
    } else {
        "missed"
    };
    format!("p99 {} (<= {}: {met})", time(summary.p99), time(bound))
}

fn main() -> Result<(), swarmexec::Error> {
    let output = Output::from_env()?;
    let dir = std::env::temp_dir().join(format!("swarmexec-bench-{}", std::process::id()));
    let plain = ProcessExecutor::builder(dir.join("plain"))
        .without_cgroups()
        .build()?;
    let contained = ProcessExecutor::new(dir.join("contained"))?;
    let has_cgroups = contained.containment().method != "process group";
    let limits = Limits {
        nano_cpus: 1_000_000_000,
        memory_bytes: 256 << 20,
        pids: 100,
    };
    let c = contained.containment();
    let can_limit = c.memory_limit && c.cpu_limit && c.pids_limit;

    // Every lifecycle row runs in turn with `raw_spawn`, round by round.
    let true_task = |limits: Option<Limits>| move |i| task(i, &["/bin/true"], limits);
    let mut variants = vec![
        Variant::each("raw_spawn", raw_spawn),
        Variant::executor("process_lifecycle", &plain, true_task(None)),
    ];
    if has_cgroups {
        variants.push(Variant::executor(
            "contained_lifecycle",
            &contained,
            true_task(None),
        ));
    }
    if can_limit {
        variants.push(Variant::executor(
            "limited_lifecycle",
            &contained,
            true_task(Some(limits)),
        ));
    }
    let bench = Bench::new().warmup(20).rounds(LIFECYCLE_ROUNDS);
    let (mut reports, ratios) = bench.compare(&mut variants)?;
    drop(variants);
    let mut extra = Vec::new();
    if has_cgroups {
        let kills: Vec<f64> = (0..KILL_ROUNDS).map(|i| kill_tree(&contained, i)).collect();
        extra.push((Report::of_samples("kill_tree", kills), 50e6));
    }
    let wakeups: Vec<f64> = (0..WAKEUP_ROUNDS).map(|i| wakeup(&plain, i)).collect();
    extra.push((Report::of_samples("wait_wakeup", wakeups), 1e6));
    drop((plain, contained));
    let _ = std::fs::remove_dir_all(&dir);

    reports.extend(extra.iter().map(|(report, _)| report.clone()));
    output.emit(&reports, &ratios)?;
    if output.json {
        return Ok(());
    }
    let targets = [
        ("process_lifecycle", 1.15),
        ("contained_lifecycle", 1.25),
        ("limited_lifecycle", 2.0),
    ];
    println!();
    println!("| row | target |");
    println!("|---|---|");
    for ratio in &ratios {
        if let Some((_, target)) = targets.iter().find(|(n, _)| *n == ratio.name) {
            println!(
                "| {} | {:.3}x raw_spawn (<= {target}x: {}) |",
                ratio.name,
                ratio.median,
                ratio.at_most(*target)
            );
        }
    }
    if !has_cgroups {
        println!("| contained_lifecycle, limited_lifecycle, kill_tree | n/a (no cgroups here) |");
    }
    for (report, bound) in &extra {
        println!(
            "| {} | {} |",
            report.name,
            p99_verdict(&report.rows[0].latency, *bound)
        );
    }
    Ok(())
}
