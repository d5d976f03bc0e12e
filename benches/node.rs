//! A process node against Docker's own worker, on one manager in one run:
//! `cargo bench --features node --bench node [-- --json]`.
//!
//! The manager is a `dockerd` of the bench's own (Debian's Docker, SwarmKit
//! inside), which is also Docker's worker, running a busybox image made by
//! `docker import` from Debian's `busybox-static`; `swarmexec node` joins it as
//! the process node. The same service runs on each (constrained to the manager,
//! or to process nodes), created with `-d` and its tasks polled with
//! `docker service ps`. Its program exits on SIGTERM, so that the rows compare
//! supervisors, not a container's PID 1 semantics. The rows, each round taking
//! both sides in turn:
//! - `create_1`, `create_20`: `docker service create` to every replica Running;
//! - `update_20`: a rolling `docker service update --force` of 20 replicas, to
//!   every replica replaced and Running;
//! - `rm_20`: `docker service rm` to every process of the service gone.
//!
//! Part of every row is the manager's own scheduling, the same for both.
//! `SWARMEXEC_NODE_BENCH_ROUNDS` sets the rounds (default 3).

#[path = "../tests/docker/mod.rs"]
mod docker;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use docker::{processes, wait_for, Swarm, ON_PROCESS_NODES};
use swarmexec::bench::{Output, Ratio, Report};

const PROGRAM: &str = "trap 'exit 0' TERM; while :; do sleep 0.1; done";
const IMAGE: &str = "swarmexec-bench-busybox:local";
const HOSTNAME: &str = "swarmexec-bench-node";
const LONG: Duration = Duration::from_secs(300);

/// Where a service runs.
#[derive(Clone, Copy)]
enum Side {
    Docker,
    Process,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Docker => "docker",
            Side::Process => "process",
        }
    }

    fn constraint(self) -> &'static str {
        match self {
            Side::Docker => "node.role==manager",
            Side::Process => ON_PROCESS_NODES,
        }
    }

    /// The service's processes: `$0` names the side, so that each side's are
    /// told apart in /proc (containers' processes are visible there too).
    fn argv(self) -> [&'static str; 4] {
        ["sh", "-c", PROGRAM, self.name()]
    }
}

/// Makes the image for Docker's worker: busybox, its applets as links.
fn import_busybox(swarm: &Swarm) {
    let root = swarm.dir().join("busybox-root");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("image root");
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
    }
    let tarball = swarm.dir().join("busybox.tar");
    let packed = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .expect("tar runs");
    assert!(packed.success(), "tar failed");
    swarm.ok(&["import", tarball.to_str().expect("a UTF-8 path"), IMAGE]);
}

/// The ids of a service's running tasks.
fn running_ids(swarm: &Swarm, service: &str) -> Option<HashSet<String>> {
    let out = swarm.docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.ID}}|{{.CurrentState}}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let tasks: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('|')).collect();
    tasks
        .iter()
        .all(|(_, state)| state.starts_with("Running"))
        .then(|| tasks.iter().map(|(id, _)| (*id).to_owned()).collect())
}

/// Times `act`, then polls until `done`.
fn timed(what: &str, act: impl FnOnce(), mut done: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    act();
    wait_for(what, LONG, || done().then_some(()));
    start.elapsed().as_nanos() as f64
}

/// One round of every row for `side`: nanoseconds per row.
fn round(swarm: &Swarm, side: Side, round: usize) -> [f64; 4] {
    let create = |name: &str, replicas: &str| {
        let argv = side.argv();
        swarm.ok(&[
            "service",
            "create",
            "-d",
            "--no-resolve-image",
            "--name",
            name,
            "--replicas",
            replicas,
            "--constraint",
            side.constraint(),
            IMAGE,
            argv[0],
            argv[1],
            argv[2],
            argv[3],
        ]);
    };
    let gone = || processes(&side.argv()).is_empty();
    let one = format!("{}-one-{round}", side.name());
    let create_1 = timed(
        "1 replica running",
        || create(&one, "1"),
        || swarm.all_running(&one, 1),
    );
    swarm.ok(&["service", "rm", &one]);
    wait_for("the replica gone", LONG, || gone().then_some(()));

    let many = format!("{}-many-{round}", side.name());
    let create_20 = timed(
        "20 replicas running",
        || create(&many, "20"),
        || swarm.all_running(&many, 20),
    );
    let before = running_ids(swarm, &many).expect("20 running");
    let update_20 = timed(
        "20 replicas replaced",
        || {
            swarm.ok(&["service", "update", "-d", "--force", &many]);
        },
        || running_ids(swarm, &many).is_some_and(|now| now.len() == 20 && now.is_disjoint(&before)),
    );
    let rm_20 = timed(
        "20 replicas gone",
        || {
            swarm.ok(&["service", "rm", &many]);
        },
        gone,
    );
    [create_1, create_20, update_20, rm_20]
}

fn main() -> Result<(), swarmexec::Error> {
    let output = Output::from_env()?;
    if let Some(why) = docker::cannot_run_dockerd() {
        println!("node bench skipped: {why}");
        return Ok(());
    }
    let rounds: usize = std::env::var("SWARMEXEC_NODE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(3);
    let swarm = Swarm::start();
    import_busybox(&swarm);
    let token = swarm.worker_token();
    let state = swarm.dir().join("node-state");
    let state = state.to_str().expect("a UTF-8 path");
    let log = swarm.dir().join("node.log");
    let mut node = swarm.node(
        &[
            "--join",
            "127.0.0.1",
            "--token",
            &token,
            "--state-dir",
            state,
            "--hostname",
            HOSTNAME,
        ],
        &log,
    );
    wait_for("the process node Ready", LONG, || {
        swarm.node_status(HOSTNAME).filter(|(_, s)| s == "Ready")
    });

    const ROWS: [&str; 4] = ["create_1", "create_20", "update_20", "rm_20"];
    let mut samples: [[Vec<f64>; 4]; 2] = Default::default();
    for r in 0..rounds {
        for (i, side) in [Side::Docker, Side::Process].into_iter().enumerate() {
            for (row, ns) in round(&swarm, side, r).into_iter().enumerate() {
                samples[i][row].push(ns);
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let _ = node.wait();

    let mut reports = Vec::new();
    let mut ratios = Vec::new();
    for (row, name) in ROWS.iter().enumerate() {
        let (docker, process) = (&samples[0][row], &samples[1][row]);
        let per_round: Vec<f64> = process.iter().zip(docker).map(|(p, d)| p / d).collect();
        ratios.push(Ratio::of(
            &format!("process_{name}"),
            &format!("docker_{name}"),
            &per_round,
        ));
        reports.push(Report::of_samples(format!("docker_{name}"), docker.clone()));
        reports.push(Report::of_samples(
            format!("process_{name}"),
            process.clone(),
        ));
    }
    output.emit(&reports, &ratios)?;
    if !output.json {
        println!();
        for ratio in &ratios {
            let target = if ratio.name == "process_create_20" {
                0.2
            } else {
                1.0
            };
            println!(
                "{} / {} = {:.3} ({:.1}x faster), median's 95% range {:.3} to {:.3} \
                 (target <= {target}: {})",
                ratio.name,
                ratio.against,
                ratio.median,
                1.0 / ratio.median,
                ratio.low,
                ratio.high,
                ratio.at_most(target)
            );
        }
    }
    Ok(())
}
