//! `swarmexec bench`: what supervision costs a program on this host, step by
//! step: its lifecycles on the process executor (resolve, prepare, spawn, run,
//! wait, removal), timed with the library's bench harness.

use std::ffi::OsString;
use std::process::ExitCode;

use swarmexec::api::{OutputSink, ProcessSpec, Runtime, Task, TaskSpec, TaskState};
use swarmexec::bench::{Bench, Output, Variant};
use swarmexec::process::ProcessExecutor;

use crate::fail;

/// What `swarmexec bench` was given.
pub(crate) struct BenchOptions {
    pub(crate) command: Vec<OsString>,
    pub(crate) runs: usize,
    pub(crate) cgroups: bool,
    pub(crate) json: bool,
}

pub(crate) fn bench(options: BenchOptions) -> ExitCode {
    let state_dir = std::env::temp_dir().join(format!("swarmexec-bench-{}", std::process::id()));
    let builder = ProcessExecutor::builder(&state_dir);
    let built = if options.cgroups {
        builder.build()
    } else {
        builder.without_cgroups().build()
    };
    let executor = match built {
        Ok(executor) => executor,
        Err(e) => return fail(&e),
    };
    let spec = ProcessSpec {
        command: options.command.clone(),
        // The program's output is not the bench's.
        stdout: OutputSink::Null,
        stderr: OutputSink::Null,
        env: vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())],
        ..Default::default()
    };
    let task = |round: usize| {
        let mut task = Task {
            id: format!("bench.{round}"),
            desired_state: TaskState::Running,
            spec: TaskSpec {
                runtime: Some(Runtime::Process(spec.clone())),
                ..Default::default()
            },
            ..Default::default()
        };
        task.status.state = TaskState::Assigned;
        task
    };
    let name = format!(
        "{} ({})",
        options.command[0].to_string_lossy(),
        executor.containment().method
    );
    let warmup = (options.runs / 10).clamp(1, 20);
    let bench = Bench::new().warmup(warmup).rounds(options.runs);
    let report = match bench.run(Variant::executor(name, &executor, task)) {
        Ok(report) => report,
        Err(e) => return fail(&format!("the program's lifecycle failed: {e}")),
    };
    let output = Output {
        json: options.json,
        ..Output::default()
    };
    let emitted = output.emit(&[report], &[]);
    drop(executor);
    let _ = std::fs::remove_dir_all(&state_dir);
    match emitted {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}
