//! `swarmexec`: run a program as a supervised task.
//!
//! `swarmexec run [OPTIONS] -- PROGRAM [ARGS...]` runs the program as a task of the
//! process executor, in a cgroup of its own where the host has them, passes its
//! stdout and stderr straight through, prints each state transition to stderr, and
//! exits with the program's exit code, as `docker run` does (125 when swarmexec
//! itself fails, 126 when the program cannot be executed, 127 when it is not found).
//!
//! The pieces: [`args`] reads the command line (the syntaxes of its values in
//! [`values`], its texts in [`help`]), [`run`] runs the task and starts it again
//! as asked, [`attempt`] follows one start of it, [`report`] says what happens,
//! [`signals`] turns the signals the command receives into requests, and
//! [`terminal`] hands the caller's terminal over (its `unsafe` calls are in
//! [`sys`]).

#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod attempt;
mod bench;
mod help;
#[cfg(feature = "node")]
mod node;
mod report;
mod run;
mod signals;
mod sys;
mod terminal;
mod values;

use std::process::ExitCode;

use args::Command;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Executor};

/// Counts allocations for `swarmexec bench`; the system allocator does the work.
#[global_allocator]
static ALLOCATOR: swarmexec::bench::CountingAllocator = swarmexec::bench::CountingAllocator;

/// `docker run`'s exit codes for failures that are not the program's own.
const EXIT_OWN_FAILURE: u8 = 125;
const EXIT_CANNOT_EXECUTE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

fn main() -> ExitCode {
    match args::parse(std::env::args_os().skip(1).collect()) {
        Ok(Command::Help(text)) => println!("{text}"),
        Ok(Command::Version) => println!("swarmexec {}", env!("CARGO_PKG_VERSION")),
        Ok(Command::Describe) => return describe(),
        Ok(Command::Run(options)) => return run::run(*options),
        Ok(Command::Bench(options)) => return bench::bench(options),
        #[cfg(feature = "node")]
        Ok(Command::Node(options)) => return node::run(options),
        #[cfg(not(feature = "node"))]
        Ok(Command::Node(_)) => {
            eprintln!("swarmexec: this swarmexec was built without `swarmexec node` (cargo feature `node`)");
            return ExitCode::from(EXIT_OWN_FAILURE);
        }
        Err(usage) => {
            eprintln!("swarmexec: {}", usage.problem);
            eprintln!("Try '{}'.", usage.hint);
            return ExitCode::from(EXIT_OWN_FAILURE);
        }
    }
    ExitCode::SUCCESS
}

/// Prints the node description and what this host enforces.
fn describe() -> ExitCode {
    let state_dir = swarmexec::process::default_state_dir();
    let described = ProcessExecutor::new(&state_dir).and_then(|e| {
        let node = e.describe(&CancelToken::new())?;
        Ok((node, e.containment(), e.state_dir_in_memory()))
    });
    let (node, containment, in_memory) = match described {
        Ok(described) => described,
        Err(e) => return fail(&e),
    };
    println!("hostname: {}", node.hostname);
    println!("os: {}", node.platform.os);
    println!("architecture: {}", node.platform.architecture);
    println!("cpus: {}", node.resources.nano_cpus as f64 / 1e9);
    println!("memory: {} bytes", node.resources.memory_bytes);
    println!("containment: {}", containment.method);
    let limits: Vec<&str> = [
        (containment.memory_limit, "memory"),
        (containment.cpu_limit, "cpus"),
        (containment.pids_limit, "pids"),
    ]
    .into_iter()
    .filter_map(|(supported, name)| supported.then_some(name))
    .collect();
    let limits = if limits.is_empty() {
        "none".to_owned()
    } else {
        limits.join(", ")
    };
    println!("limits: {limits}");
    let kept = if in_memory {
        "memory-backed: secrets stay off disk"
    } else {
        "on disk: secrets written there reach the disk"
    };
    println!("state directory: {} ({kept})", state_dir.display());
    // Each executor's cgroups are its own, under one parent per hierarchy.
    for parent in containment.cgroups.iter().filter_map(|c| c.parent()) {
        println!("cgroups under: {}", parent.display());
    }
    ExitCode::SUCCESS
}

/// Reports one of swarmexec's own failures.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("swarmexec: {e}");
    ExitCode::from(EXIT_OWN_FAILURE)
}
