//! The process executor against plain spawning: `cargo bench --bench process`.
//!
//! - `process_lifecycle`: `/bin/true` from `resolve` to `Completed` through
//!   `do_task`, then `remove` and `close`.
//! - `raw_spawn`: `Command::new("/bin/true").status()`, measured alternately with
//!   the row above in the same run, so both see the same machine.
//! - `wait_wakeup`: from the kernel reporting a program's exit (seen by the bench's
//!   own pidfd) to `wait` returning.
//!
//! `-- --json` prints one JSON object per row.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use swarmexec::api::{ProcessSpec, Runtime, Task, TaskSpec, TaskState};
use swarmexec::process::ProcessExecutor;
use swarmexec::{do_task, resolve, CancelToken, Controller};

const LIFECYCLE_ROUNDS: usize = 400;
const WAKEUP_ROUNDS: usize = 300;

fn task(id: usize, command: &[&str]) -> Task {
    Task {
        id: format!("bench-{id}"),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(ProcessSpec {
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn lifecycle(executor: &ProcessExecutor, id: usize) {
    let cancel = CancelToken::new();
    let mut task = task(id, &["/bin/true"]);
    let (status, controller) = resolve(&cancel, &task, executor);
    task.status = status;
    let controller = controller.expect("controller");
    while task.status.state != TaskState::Completed {
        let (status, result) = do_task(&cancel, &task, &*controller);
        assert!(result.is_ok(), "{:?}", status);
        task.status = status;
    }
    controller.remove(&cancel).expect("remove");
    controller.close().expect("close");
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
            .process_controller(&task(id, &["sleep", "0.02"]))
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

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let dir = std::env::temp_dir().join(format!("swarmexec-bench-{}", std::process::id()));
    let executor = ProcessExecutor::new(&dir).expect("executor");

    for i in 0..20 {
        lifecycle(&executor, i);
        raw_spawn();
    }
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for i in 0..LIFECYCLE_ROUNDS {
        let start = Instant::now();
        lifecycle(&executor, i);
        ours.push(start.elapsed().as_nanos() as f64);
        let start = Instant::now();
        raw_spawn();
        raw.push(start.elapsed().as_nanos() as f64);
    }
    let wakeups: Vec<f64> = (0..WAKEUP_ROUNDS).map(|i| wakeup(&executor, i)).collect();
    drop(executor);
    let _ = std::fs::remove_dir_all(&dir);

    let rows = [
        ("process_lifecycle", sorted(ours)),
        ("raw_spawn", sorted(raw)),
        ("wait_wakeup", sorted(wakeups)),
    ];
    let median = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map(|r| pct(&r.1, 0.5))
            .unwrap()
    };
    let ratio = median("process_lifecycle") / median("raw_spawn");
    if json {
        for (name, samples) in &rows {
            println!(
                "{{\"name\":\"{name}\",\"ns_per_op\":{:.0},\"p50_ns\":{:.0},\"p99_ns\":{:.0},\"allocs_per_op\":null}}",
                pct(samples, 0.5),
                pct(samples, 0.5),
                pct(samples, 0.99)
            );
        }
        return;
    }
    println!("| row | median | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for (name, samples) in &rows {
        let us = |ns: f64| format!("{:.1} us", ns / 1000.0);
        println!(
            "| {name} | {} | {} | {} |",
            us(pct(samples, 0.5)),
            us(pct(samples, 0.5)),
            us(pct(samples, 0.99))
        );
    }
    let wake_p99 = pct(&rows[2].1, 0.99);
    println!();
    println!(
        "process_lifecycle / raw_spawn = {ratio:.3} (target <= 1.15: {})",
        if ratio <= 1.15 { "met" } else { "MISSED" }
    );
    println!(
        "wait_wakeup p99 = {:.1} us (target <= 1000 us: {})",
        wake_p99 / 1000.0,
        if wake_p99 <= 1_000_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
