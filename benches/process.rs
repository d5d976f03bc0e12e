//! The process executor against plain spawning: `cargo bench --bench process`.
//!
//! - `process_lifecycle`: `/bin/true` from `resolve` to `Completed` through
//!   `do_task`, then `remove` and `close`, on an executor without cgroups.
//! - `contained_lifecycle`: the same in a cgroup of its own (no limits).
//! - `limited_lifecycle`: the same with memory, CPU and pids limits.
//! - `raw_spawn`: `Command::new("/bin/true").status()`, measured alternately with
//!   the rows above in the same run, so all see the same machine.
//! - `kill_tree`: from `terminate` to the terminal status of a task with 100
//!   processes, half of them in sessions of their own.
//! - `wait_wakeup`: from the kernel reporting a program's exit (seen by the bench's
//!   own pidfd) to `wait` returning.
//!
//! `-- --json` prints one JSON object per row.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use swarmexec::api::{
    Limits, ProcessSpec, ResourceRequirements, Runtime, Task, TaskSpec, TaskState,
};
use swarmexec::process::ProcessExecutor;
use swarmexec::{do_task, resolve, CancelToken, Controller};

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

fn lifecycle(executor: &ProcessExecutor, id: usize, limits: Option<Limits>) {
    let cancel = CancelToken::new();
    let mut task = task(id, &["/bin/true"], limits);
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

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A row: its samples, and its target as a ratio to `raw_spawn`'s median or a p99
/// bound in nanoseconds.
struct Row {
    name: &'static str,
    samples: Vec<f64>,
    target: Target,
}

enum Target {
    None,
    RatioToRaw(f64),
    P99Ns(f64),
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let dir = std::env::temp_dir().join(format!("swarmexec-bench-{}", std::process::id()));
    let plain = ProcessExecutor::builder(dir.join("plain"))
        .without_cgroups()
        .build()
        .expect("executor");
    let contained = ProcessExecutor::new(dir.join("contained")).expect("executor");
    let has_cgroups = contained.containment().method != "process group";
    let limits = Limits {
        nano_cpus: 1_000_000_000,
        memory_bytes: 256 << 20,
        pids: 100,
    };
    let can_limit = contained.containment().memory_limit
        && contained.containment().cpu_limit
        && contained.containment().pids_limit;

    for i in 0..20 {
        lifecycle(&plain, i, None);
        raw_spawn();
    }
    let (mut ours, mut boxed, mut limited, mut raw) = (vec![], vec![], vec![], vec![]);
    let timed = |samples: &mut Vec<f64>, run: &dyn Fn()| {
        let start = Instant::now();
        run();
        samples.push(start.elapsed().as_nanos() as f64);
    };
    for i in 0..LIFECYCLE_ROUNDS {
        timed(&mut ours, &|| lifecycle(&plain, i, None));
        if has_cgroups {
            timed(&mut boxed, &|| lifecycle(&contained, i, None));
        }
        if can_limit {
            timed(&mut limited, &|| lifecycle(&contained, i, Some(limits)));
        }
        timed(&mut raw, &raw_spawn);
    }
    let kills: Vec<f64> = if has_cgroups {
        (0..KILL_ROUNDS).map(|i| kill_tree(&contained, i)).collect()
    } else {
        vec![]
    };
    let wakeups: Vec<f64> = (0..WAKEUP_ROUNDS).map(|i| wakeup(&plain, i)).collect();
    drop((plain, contained));
    let _ = std::fs::remove_dir_all(&dir);

    let rows = [
        Row {
            name: "process_lifecycle",
            samples: sorted(ours),
            target: Target::RatioToRaw(1.15),
        },
        Row {
            name: "contained_lifecycle",
            samples: sorted(boxed),
            target: Target::RatioToRaw(1.25),
        },
        Row {
            name: "limited_lifecycle",
            samples: sorted(limited),
            target: Target::RatioToRaw(2.0),
        },
        Row {
            name: "raw_spawn",
            samples: sorted(raw),
            target: Target::None,
        },
        Row {
            name: "kill_tree",
            samples: sorted(kills),
            target: Target::P99Ns(50e6),
        },
        Row {
            name: "wait_wakeup",
            samples: sorted(wakeups),
            target: Target::P99Ns(1e6),
        },
    ];
    let raw_median = pct(&rows[3].samples, 0.5);
    if json {
        for row in rows.iter().filter(|r| !r.samples.is_empty()) {
            println!(
                "{{\"name\":\"{}\",\"ns_per_op\":{:.0},\"p50_ns\":{:.0},\"p99_ns\":{:.0},\"allocs_per_op\":null}}",
                row.name,
                pct(&row.samples, 0.5),
                pct(&row.samples, 0.5),
                pct(&row.samples, 0.99)
            );
        }
        return;
    }
    println!("| row | median | p50 | p99 | target |");
    println!("|---|---:|---:|---:|---|");
    for row in &rows {
        if row.samples.is_empty() {
            println!("| {} | n/a (no cgroups here) | | | |", row.name);
            continue;
        }
        let us = |ns: f64| format!("{:.1} us", ns / 1000.0);
        let (median, p99) = (pct(&row.samples, 0.5), pct(&row.samples, 0.99));
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let target = match row.target {
            Target::None => String::new(),
            Target::RatioToRaw(most) => {
                let ratio = median / raw_median;
                format!(
                    "{ratio:.3}x raw_spawn (<= {most}x: {})",
                    verdict(ratio <= most)
                )
            }
            Target::P99Ns(most) => format!("p99 <= {}: {}", us(most), verdict(p99 <= most)),
        };
        println!(
            "| {} | {} | {} | {} | {target} |",
            row.name,
            us(median),
            us(median),
            us(p99)
        );
    }
}
