//! `swarmexec node` against a real SwarmKit manager (Docker's, started here):
//! joining, running, logging, scaling, secrets, health, OOM, rejections,
//! stopping and rejoining, and a killed node's tasks and status. Skips, saying
//! why, only where dockerd cannot run (not root).

mod docker;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use docker::{processes, wait_for, Swarm, ON_PROCESS_NODES};

const HOSTNAME: &str = "swarmexec-test-node";
const MINUTE: Duration = Duration::from_secs(60);

fn create(swarm: &Swarm, name: &str, flags: &[&str], command: &[&str]) {
    let head = [
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        name,
    ];
    let constraint = ["--constraint", ON_PROCESS_NODES];
    swarm.ok(&[&head[..], &constraint, flags, &["busybox"], command].concat());
}

fn tasks_with(swarm: &Swarm, service: &str, wanted: &str) -> bool {
    let out = swarm.ok(&["service", "ps", "--no-trunc", service]);
    out.contains(wanted)
}

fn logs_of(swarm: &Swarm, service: &str) -> String {
    let logs = swarm.docker(&["service", "logs", "--raw", service]);
    String::from_utf8_lossy(&logs.stdout).into_owned()
}

fn signal(node: &Child, signal: &str) {
    let pid = node.id().to_string();
    let sent = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_process_node_runs_a_swarms_services() {
    if let Some(why) = docker::cannot_run_dockerd() {
        eprintln!("skipped: {why}");
        return;
    }
    let swarm = Swarm::start();
    let state = swarm.dir().join("node-state");
    let log = swarm.dir().join("node.log");
    let state_arg = state.to_str().expect("a UTF-8 path");
    let token = swarm.worker_token();
    let join = ["--join", "127.0.0.1", "--token", &token];
    let mut node = swarm.node(
        &[
            &join[..],
            &["--state-dir", state_arg, "--hostname", HOSTNAME],
        ]
        .concat(),
        &log,
    );
    let ready = |swarm: &Swarm| swarm.node_status(HOSTNAME).filter(|(_, s)| s == "Ready");
    let (node_id, _) = wait_for("the node to be Ready", MINUTE, || ready(&swarm));
    let key = std::fs::metadata(state.join("node.pem")).expect("the node's key is stored");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // Three replicas, running here, their output in the service's logs.
    let hello = ["sh", "-c", "echo hello; exec sleep 301"];
    create(&swarm, "hello", &["--replicas", "3"], &hello);
    wait_for("3 hello tasks running", MINUTE, || {
        swarm.all_running("hello", 3).then_some(())
    });
    assert!(swarm
        .running_tasks("hello")
        .iter()
        .all(|(_, n)| n == HOSTNAME));
    assert_eq!(processes(&["sleep", "301"]).len(), 3);
    wait_for("hello in the logs", MINUTE, || {
        (logs_of(&swarm, "hello").matches("hello").count() == 3).then_some(())
    });
    swarm.ok(&["service", "scale", "-d", "hello=0"]);
    wait_for("the hello processes gone", MINUTE, || {
        processes(&["sleep", "301"]).is_empty().then_some(())
    });

    // A secret, read from the task's secrets directory.
    let secret = swarm.dir().join("secret");
    std::fs::write(&secret, "open sesame").expect("secret file");
    swarm.ok(&["secret", "create", "door", secret.to_str().expect("path")]);
    let read = [
        "sh",
        "-c",
        "cat \"$SWARMEXEC_SECRETS_DIR/door\"; echo; exec sleep 302",
    ];
    create(&swarm, "reader", &["--secret", "door"], &read);
    wait_for("the secret in the logs", MINUTE, || {
        logs_of(&swarm, "reader")
            .contains("open sesame")
            .then_some(())
    });

    // A failing health check: unhealthy, replaced.
    let health = [
        "--health-cmd",
        "false",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
    ];
    create(&swarm, "sick", &health, &["sleep", "303"]);
    wait_for("the sick task failed as unhealthy", MINUTE, || {
        tasks_with(&swarm, "sick", "unhealthy").then_some(())
    });

    // A memory hog under a 16 MiB limit: out of memory, as Docker shows it.
    let hog = ["sh", "-c", "x=a; while :; do x=\"$x$x\"; done"];
    let limit = ["--limit-memory", "16m", "--restart-condition", "none"];
    create(&swarm, "hog", &limit, &hog);
    wait_for("the hog failed out of memory", MINUTE, || {
        tasks_with(&swarm, "hog", "non-zero exit (137)").then_some(())
    });
    assert!(tasks_with(&swarm, "hog", "OOMKilled"));

    // What a process cannot do is rejected, naming it.
    create(
        &swarm,
        "mounted",
        &["--mount", "type=tmpfs,target=/scratch"],
        &["true"],
    );
    create(&swarm, "imageonly", &[], &[]);
    let no_command = "no command: a process node has no image entrypoint";
    wait_for("the rejections", MINUTE, || {
        (tasks_with(&swarm, "mounted", "Mounts is not supported")
            && tasks_with(&swarm, "imageonly", no_command))
        .then_some(())
    });

    // SIGTERM: the tasks stop, the node exits 0; restarted, it is the same node.
    signal(&node, "-TERM");
    let status = wait_for("the node to exit", MINUTE, || {
        node.try_wait().expect("wait")
    });
    assert_eq!(status.code(), Some(0), "{}", log_of(&log));
    assert!(
        processes(&["sleep", "302"]).is_empty(),
        "the reader was left running"
    );
    assert!(log_of(&log).contains("stopped"), "{}", log_of(&log));
    let mut node = swarm.node(&["--state-dir", state_arg, "--hostname", HOSTNAME], &log);
    wait_for("the reader running again", 2 * MINUTE, || {
        swarm.all_running("reader", 1).then_some(())
    });
    let (again, _) = wait_for("the node Ready again", MINUTE, || ready(&swarm));
    assert_eq!(again, node_id, "the node rejoined with another identity");

    // SIGKILL: its tasks die with it, and the manager marks it down.
    signal(&node, "-KILL");
    let _ = node.wait();
    wait_for("the reader's process gone", MINUTE, || {
        processes(&["sleep", "302"]).is_empty().then_some(())
    });
    wait_for("the node Down", 2 * MINUTE, || {
        swarm
            .node_status(HOSTNAME)
            .filter(|(_, status)| status == "Down")
    });
    // What the killed node left (its cgroups, its task files) goes with the
    // next executor on its state directory, as a restarted node's would.
    let state_dir = swarmexec::process::default_state_dir();
    drop(swarmexec::process::ProcessExecutor::new(state_dir).expect("an executor"));
}

#[test]
fn joining_without_a_manager_or_a_good_token_fails_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let state = state.to_str().expect("path");
    let run = |args: &[&str]| {
        std::process::Command::new(docker::BIN)
            .arg("node")
            .args(args)
            .env("SWARMEXEC_LOG", "warn")
            .output()
            .expect("swarmexec runs")
    };
    let token = format!("SWMTKN-1-{}-{}", "1".repeat(50), "a".repeat(25));
    // Port 1 on loopback: nothing listens there.
    let out = run(&[
        "--join",
        "127.0.0.1:1",
        "--token",
        &token,
        "--state-dir",
        state,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach manager 127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = run(&[
        "--join",
        "127.0.0.1",
        "--token",
        "SWMTKN-nonsense",
        "--state-dir",
        state,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed join token"));
    let out = run(&["--state-dir", state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not joined yet"));
    let left: Vec<_> = std::fs::read_dir(state).expect("state dir").collect();
    assert!(left.is_empty(), "the failed joins left {left:?}");
    let out = run(&["--token", &token]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token needs --join"));
}

#[test]
fn help_node_says_how_to_join_and_how_to_target_process_nodes() {
    let out = std::process::Command::new(docker::BIN)
        .args(["help", "node"])
        .output()
        .expect("swarmexec runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        help.contains("swarmexec node --join MANAGER[:2377] --token SWMTKN-..."),
        "{help}"
    );
    assert!(help.contains(ON_PROCESS_NODES), "{help}");
}
