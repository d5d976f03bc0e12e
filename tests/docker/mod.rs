//! A real SwarmKit manager for the swarm tests and the node bench: a `dockerd`
//! of its own (own data root, exec root and socket, no iptables, no bridge),
//! made a swarm manager on 127.0.0.1, and `swarmexec node` workers joined to it.
//! Dropping the [`Swarm`] removes its services, stops the daemon and deletes its
//! files, so that nothing is left running.

#![allow(dead_code)] // the test and the bench use different parts

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `swarmexec` command under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_swarmexec");

/// The engine-label constraint that puts a service on process nodes.
pub const ON_PROCESS_NODES: &str = "engine.labels.swarmexec.runtime==process";

/// Debian's client, which matches Debian's daemon, before any other `docker`.
fn docker_client() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Why this host cannot run a manager, if it cannot.
pub fn cannot_run_dockerd() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Some("dockerd needs root".into());
    }
    None
}

/// A manager of a one-manager swarm.
pub struct Swarm {
    dir: PathBuf,
    daemon: Option<Child>,
    host: String,
}

/// Waits until `check` gives a value, at most `limit`; panics saying `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        // Fine enough to time the manager by (a docker call takes tens of ms).
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Swarm {
    /// Starts a daemon and makes it a swarm manager. Panics (the host is root,
    /// so it must work) with the daemon's log when it cannot.
    pub fn start() -> Swarm {
        let dir = std::env::temp_dir().join(format!("swarmexec-dockerd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a directory for dockerd");
        let socket = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log")).expect("dockerd's log");
        let daemon = Command::new("dockerd")
            .args(["--iptables=false", "--bridge=none", "--ip-masq=false"])
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd (install docker.io): {e}"));
        let swarm = Swarm {
            host: format!("unix://{}", socket.display()),
            dir,
            daemon: Some(daemon),
        };
        let started = Instant::now() + Duration::from_secs(60);
        while !swarm.docker(&["info"]).status.success() {
            if Instant::now() > started {
                panic!("dockerd did not start:\n{}", swarm.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        swarm.ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        swarm
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// A directory of this swarm's, deleted with it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `docker args` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(docker_client())
            .args(args)
            .env("DOCKER_HOST", &self.host)
            .stdin(Stdio::null())
            .output()
            .expect("docker runs")
    }

    /// Runs `docker args`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The worker join token.
    pub fn worker_token(&self) -> String {
        self.ok(&["swarm", "join-token", "-q", "worker"])
            .trim()
            .to_owned()
    }

    /// The current states of a service's tasks that should be running, as
    /// `docker service ps` prints them (`Running 2 seconds ago`), with their nodes.
    pub fn running_tasks(&self, service: &str) -> Vec<(String, String)> {
        let out = self.docker(&[
            "service",
            "ps",
            service,
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}|{{.Node}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(state, node)| (state.to_owned(), node.to_owned()))
            .collect()
    }

    /// Whether `count` tasks of `service` are running.
    pub fn all_running(&self, service: &str, count: usize) -> bool {
        let tasks = self.running_tasks(service);
        tasks.len() == count && tasks.iter().all(|(state, _)| state.starts_with("Running"))
    }

    /// Starts `swarmexec node` with `args`, its stderr into `log`.
    pub fn node(&self, args: &[&str], log: &Path) -> Child {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("the node's log");
        Command::new(BIN)
            .arg("node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("swarmexec node starts")
    }

    /// `(id, status)` of the node named `hostname`, as `docker node ls` shows it.
    pub fn node_status(&self, hostname: &str) -> Option<(String, String)> {
        let out = self.docker(&[
            "node",
            "ls",
            "--format",
            "{{.ID}}|{{.Hostname}}|{{.Status}}",
        ]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut fields = l.split('|');
            let (id, host, status) = (fields.next()?, fields.next()?, fields.next()?);
            (host == hostname).then(|| (id.to_owned(), status.to_owned()))
        })
    }
}

/// Pids of the processes whose command line is exactly `argv`.
pub fn processes(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // A zombie is dead (PID 1 here reaps lazily).
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if cmdline == wanted && !zombie {
            found.push(pid);
        }
    }
    found
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let services = self.docker(&["service", "ls", "-q"]);
        let services = String::from_utf8_lossy(&services.stdout).into_owned();
        let ids: Vec<&str> = services.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = self.docker(&[&["service", "rm"][..], &ids].concat());
        }
        // Containers go before the daemon does.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let running = self.docker(&["ps", "-q"]);
            if running.stdout.iter().all(u8::is_ascii_whitespace) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.docker(&["swarm", "leave", "--force"]);
        if let Some(mut daemon) = self.daemon.take() {
            let pid = daemon.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
