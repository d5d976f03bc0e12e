//! `swarmexec node`: a SwarmKit worker whose tasks are supervised processes.
//!
//! The node joins a swarm as a worker (see [`join`]), keeps its identity in its
//! state directory ([`identity`]), and runs the tasks the managers assign to it
//! with the process executor and a [`Worker`](swarmexec::agent::Worker)
//! ([`agent`]), each task's `ContainerSpec` mapped to a process ([`tasks`]). All
//! network code (gRPC over mutual TLS, [`tls`]) runs on one thread ([`network`]);
//! the rest is synchronous. SIGTERM or SIGINT stops the tasks gracefully, reports
//! them and exits 0; a second one kills them.

mod agent;
mod describe;
mod errors;
mod identity;
mod join;
mod logger;
mod logs;
mod network;
mod proto;
mod tasks;
mod tls;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use swarmexec::agent::Worker;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Executor};

use crate::args::NodeOptions;
use crate::signals::{self, Request as SignalRequest};
use agent::{Agent, Ending};
use identity::StateDir;
use network::{Network, Start};
use tasks::UserPolicy;
use token::JoinToken;

/// SwarmKit's port for managers.
const MANAGER_PORT: u16 = 2377;

/// Runs the node until it is stopped or removed.
pub(crate) fn run(options: NodeOptions) -> ExitCode {
    match node(options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("swarmexec node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn node(options: NodeOptions) -> Result<ExitCode, String> {
    logger::install();
    // Before any thread starts, so that every thread has them blocked.
    let signals = signals::take().map_err(|e| format!("cannot take signals: {e}"))?;
    let state_path = options.state_dir.clone().unwrap_or_else(default_state_dir);
    let state = StateDir::open(&state_path)?;
    let (start, managers) = start(&options, &state)?;
    let executor = ProcessExecutor::builder(swarmexec::process::default_state_dir())
        .build()
        .map_err(|e| e.to_string())?;
    let local = executor
        .describe(&CancelToken::new())
        .map_err(|e| e.to_string())?;
    let description = describe::description(&local, options.hostname.as_deref(), &options.labels);
    let worker = Worker::new(Arc::new(executor));
    let (events, incoming) = crossbeam_channel::unbounded();
    let requests = network::spawn(Network {
        start,
        state,
        managers,
        description,
        events,
    })
    .map_err(|e| format!("cannot start the network thread: {e}"))?;
    let stops = watch_signals(signals)?;
    let policy = UserPolicy {
        default_user: options.default_user.clone(),
        allow_root: options.allow_root,
    };
    let mut agent = Agent::new(worker, requests, policy);
    match agent.run(&incoming, &stops) {
        Ending::Stopped => {
            eprintln!("swarmexec node: stopping its tasks");
            let last = agent.stop(&stops);
            for (id, status) in &last {
                eprintln!(
                    "swarmexec node: task {}: {}",
                    agent.name_of(id),
                    words(status)
                );
            }
            eprintln!("swarmexec node: stopped ({} tasks)", last.len());
            Ok(ExitCode::SUCCESS)
        }
        Ending::Removed => {
            agent.stop(&stops);
            let forgot = StateDir::open(&state_path).and_then(|s| s.forget_identity());
            let forgot = match forgot {
                Ok(()) => "forgot its identity: join again with --join and --token".to_owned(),
                Err(e) => format!("could not delete its identity: {e}"),
            };
            Err(format!(
                "this node was removed from the swarm by a manager (docker node rm); \
                 it stopped its tasks and {forgot}"
            ))
        }
        Ending::Failed(why) => {
            agent.stop(&stops);
            Err(why)
        }
    }
}

/// A status in words, for the final report.
fn words(status: &swarmexec::api::TaskStatus) -> String {
    match status.err.as_str() {
        "" => format!(
            "{} ({})",
            status.state.name().to_lowercase(),
            status.message
        ),
        err => format!("{}: {err}", status.state.name().to_lowercase()),
    }
}

/// How to get the node's identity: the stored one, or a join.
fn start(options: &NodeOptions, state: &StateDir) -> Result<(Start, Vec<String>), String> {
    let joining = options.join.as_deref().map(manager_address);
    if let Some(identity) = state.identity()? {
        let mut managers = state.managers()?;
        if let Some(address) = joining {
            managers.retain(|m| *m != address);
            managers.insert(0, address);
        }
        if managers.is_empty() {
            return Err(format!(
                "{} holds an identity but no manager to reach: give --join MANAGER",
                state.path().display()
            ));
        }
        if options.token.is_some() {
            log::info!(target: "swarmexec", "already joined as node {}: --token is not needed", identity.node_id);
        }
        return Ok((Start::Rejoin(identity), managers));
    }
    match (joining, options.token.as_deref()) {
        (Some(manager), Some(token)) => {
            let token = JoinToken::parse(token)?;
            Ok((
                Start::Join {
                    manager: manager.clone(),
                    token,
                },
                vec![manager],
            ))
        }
        _ => Err(format!(
            "not joined yet ({} holds no identity): give --join MANAGER and --token SWMTKN-...",
            state.path().display()
        )),
    }
}

/// `MANAGER[:PORT]` with the port made explicit.
fn manager_address(text: &str) -> String {
    let bracketed = text.starts_with('[');
    let has_port = match text.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok()
                && (!host.contains(':') || (bracketed && host.ends_with(']')))
        }
        None => false,
    };
    match (has_port, text.contains(':') && !bracketed) {
        (true, _) => text.to_owned(),
        (false, true) => format!("[{text}]:{MANAGER_PORT}"),
        (false, false) => format!("{text}:{MANAGER_PORT}"),
    }
}

/// Where the node keeps its identity when `--state-dir` is not given.
fn default_state_dir() -> PathBuf {
    if crate::sys::effective_uid() == 0 {
        return PathBuf::from("/var/lib/swarmexec/node");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("swarmexec/node")
}

/// A thread turning SIGTERM and SIGINT into stops; the rest are the node's own.
fn watch_signals(signals: signals::Signals) -> Result<crossbeam_channel::Receiver<()>, String> {
    let (stop, stops) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("swarmexec-signals".into())
        .spawn(move || loop {
            match signals.wait() {
                Ok(SignalRequest::Terminate | SignalRequest::Interrupt) => {
                    if stop.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!(target: "swarmexec", "reading signals: {e}");
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(stops)
}

#[cfg(test)]
mod tests {
    use super::manager_address;

    #[test]
    fn a_manager_address_gets_swarmkits_port_when_it_has_none() {
        for (given, address) in [
            ("10.0.0.1", "10.0.0.1:2377"),
            ("10.0.0.1:4000", "10.0.0.1:4000"),
            ("manager", "manager:2377"),
            ("::1", "[::1]:2377"),
            ("[::1]", "[::1]:2377"),
            ("[::1]:4000", "[::1]:4000"),
        ] {
            assert_eq!(manager_address(given), address, "{given}");
        }
    }
}
