//! `swarmexec`: run a program as a supervised task.
//!
//! `swarmexec run [OPTIONS] -- PROGRAM [ARGS...]` builds a task with a process
//! runtime, assigns it to a worker on a process executor, prints each state
//! transition to stderr, streams the program's output to its own, and exits with the
//! program's exit code (as `docker run` does: 125 when swarmexec itself fails, 126
//! when the program cannot be executed, 127 when it is not found).

#![deny(unsafe_op_in_unsafe_fn)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded, Receiver};
use swarmexec::agent::{AssignmentChanges, Worker};
use swarmexec::api::*;
use swarmexec::process::ProcessExecutor;
use swarmexec::{CancelToken, Error, Executor, LogPublisherFn};

const TASK_ID: &str = "run";

/// Exit codes of `docker run` for failures that are not the program's own.
const EXIT_OWN_FAILURE: u8 = 125;
const EXIT_NOT_EXECUTABLE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

const HELP: &str = "\
swarmexec: run programs as supervised tasks

Usage:
  swarmexec run [OPTIONS] -- PROGRAM [ARGS...]
  swarmexec describe
  swarmexec --help | --version

Commands:
  run       Run PROGRAM as a task, stream its output, exit with its exit code
  describe  Print this node's description

Run 'swarmexec COMMAND --help' for a command's options.";

const RUN_HELP: &str = "\
Usage: swarmexec run [OPTIONS] -- PROGRAM [ARGS...]

Runs PROGRAM (never through a shell) as a supervised task, prints each state
transition to stderr, streams its stdout and stderr, and exits with its exit code:
125 when swarmexec fails, 126 when PROGRAM cannot be executed, 127 when it is not
found, 128+N when it was killed by signal N. SIGINT or SIGTERM stops the program
gracefully (stop signal, grace period, then SIGKILL); a second SIGINT kills it.

Options:
  --env KEY=VALUE       Set an environment variable (repeatable)
  --dir PATH            Working directory
  --user USER[:GROUP]   Run as this user and group (needs root)
  --secret NAME=FILE    Expose FILE's bytes as secret NAME (repeatable); the
                        program finds it in $SWARMEXEC_SECRETS_DIR/NAME (mode 0400)
  --config NAME=FILE    Likewise for a config, in $SWARMEXEC_CONFIGS_DIR (0444)
  --stop-signal SIG     Signal asking the program to stop (default SIGTERM)
  --stop-grace DURATION Time between the stop signal and SIGKILL, like 10s or
                        500ms (default 10s)
  --quiet               Print no state transitions
  --state-dir PATH      Where task files go (default: a fresh directory under the
                        system's temporary directory, removed afterwards)
  --help                Print this help";

const DESCRIBE_HELP: &str = "\
Usage: swarmexec describe

Prints the node description the process executor reports: hostname, operating
system, architecture, CPUs and memory.";

fn main() -> ExitCode {
    let command = match parse(std::env::args_os().skip(1).collect()) {
        Ok(command) => command,
        Err(usage) => {
            eprintln!("swarmexec: {}", usage.problem);
            eprintln!("Try '{}'.", usage.hint);
            return ExitCode::from(EXIT_OWN_FAILURE);
        }
    };
    match command {
        Command::Help(text) => println!("{text}"),
        Command::Version => println!("swarmexec {}", env!("CARGO_PKG_VERSION")),
        Command::Describe => return describe(),
        Command::Run(options) => return run(*options),
    }
    ExitCode::SUCCESS
}

// ---- command line ------------------------------------------------------------

enum Command {
    Help(&'static str),
    Version,
    Describe,
    Run(Box<RunOptions>),
}

#[derive(Default)]
struct RunOptions {
    spec: ProcessSpec,
    secrets: Vec<(String, PathBuf)>,
    configs: Vec<(String, PathBuf)>,
    quiet: bool,
    state_dir: Option<PathBuf>,
}

/// A bad command line: what is wrong, and which help to point at.
struct Usage {
    problem: String,
    hint: &'static str,
}

impl Usage {
    /// A problem with `swarmexec run`'s arguments.
    fn in_run(problem: impl std::fmt::Display) -> Usage {
        Usage {
            problem: problem.to_string(),
            hint: "swarmexec run --help",
        }
    }
}

fn parse(args: Vec<OsString>) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let top = |problem: String| Usage {
        problem,
        hint: "swarmexec --help",
    };
    match parser.next().map_err(|e| top(e.to_string()))? {
        None => Err(top("no command given".into())),
        Some(Long("help") | Short('h')) => Ok(Command::Help(HELP)),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(command)) if command == "run" => parse_run(parser),
        Some(Value(command)) if command == "describe" => match parser.next() {
            Ok(None) => Ok(Command::Describe),
            Ok(Some(Long("help") | Short('h'))) => Ok(Command::Help(DESCRIBE_HELP)),
            Ok(Some(other)) => Err(Usage {
                problem: format!("describe takes no arguments: {}", other.unexpected()),
                hint: "swarmexec describe --help",
            }),
            Err(e) => Err(top(e.to_string())),
        },
        Some(Value(command)) => Err(top(format!("unknown command {command:?}"))),
        Some(other) => Err(top(other.unexpected().to_string())),
    }
}

fn parse_run(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut options = RunOptions::default();
    let spec = &mut options.spec;
    while let Some(arg) = parser.next().map_err(Usage::in_run)? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(RUN_HELP)),
            Long("env") => spec
                .env
                .push(key_value("--env", string_value(&mut parser)?)?.0),
            Long("dir") => spec.dir = Some(string_value(&mut parser)?.into()),
            Long("user") => {
                let value = string_value(&mut parser)?;
                let (user, group) = match value.split_once(':') {
                    Some((user, group)) => (user.to_owned(), Some(group.to_owned())),
                    None => (value, None),
                };
                spec.user = Some(user);
                spec.group = group;
            }
            Long("secret") => options
                .secrets
                .push(named_file("--secret", string_value(&mut parser)?)?),
            Long("config") => options
                .configs
                .push(named_file("--config", string_value(&mut parser)?)?),
            Long("stop-signal") => spec.stop_signal = Some(string_value(&mut parser)?),
            Long("stop-grace") => {
                spec.stop_grace_period = Some(duration(&string_value(&mut parser)?)?)
            }
            Long("quiet") | Short('q') => options.quiet = true,
            Long("state-dir") => options.state_dir = Some(string_value(&mut parser)?.into()),
            Value(program) => {
                spec.command.push(utf8(program)?);
                for arg in parser.raw_args().map_err(Usage::in_run)? {
                    spec.command.push(utf8(arg)?);
                }
            }
            other => return Err(Usage::in_run(other.unexpected())),
        }
    }
    if options.spec.command.is_empty() {
        return Err(Usage::in_run(
            "no program given: swarmexec run [OPTIONS] -- PROGRAM [ARGS...]",
        ));
    }
    Ok(Command::Run(Box::new(options)))
}

fn string_value(parser: &mut lexopt::Parser) -> Result<String, Usage> {
    utf8(parser.value().map_err(Usage::in_run)?)
}

fn utf8(arg: OsString) -> Result<String, Usage> {
    arg.into_string()
        .map_err(|a| Usage::in_run(format!("{a:?} is not valid UTF-8")))
}

/// `KEY=VALUE`, checked, returned whole and split.
fn key_value(flag: &str, entry: String) -> Result<(String, usize), Usage> {
    match entry.find('=') {
        Some(at) if at > 0 => Ok((entry, at)),
        _ => Err(Usage::in_run(format!(
            "{flag} expects NAME=VALUE, got {entry:?}"
        ))),
    }
}

fn named_file(flag: &str, entry: String) -> Result<(String, PathBuf), Usage> {
    let (entry, at) = key_value(flag, entry)?;
    Ok((entry[..at].to_owned(), PathBuf::from(&entry[at + 1..])))
}

/// `10s`, `500ms`, `1.5m` or `2h`.
fn duration(text: &str) -> Result<Duration, Usage> {
    let bad = || {
        Usage::in_run(format!(
            "--stop-grace expects a duration like 10s or 500ms, got {text:?}"
        ))
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

// ---- describe ----------------------------------------------------------------

fn describe() -> ExitCode {
    let state_dir = std::env::temp_dir().join(format!("swarmexec-describe-{}", std::process::id()));
    let described = ProcessExecutor::new(&state_dir).and_then(|e| e.describe(&CancelToken::new()));
    let _ = std::fs::remove_dir_all(&state_dir);
    match described {
        Ok(node) => {
            println!("hostname: {}", node.hostname);
            println!("os: {}", node.platform.os);
            println!("architecture: {}", node.platform.architecture);
            println!("cpus: {}", node.resources.nano_cpus as f64 / 1e9);
            println!("memory: {} bytes", node.resources.memory_bytes);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("swarmexec: {e}");
    ExitCode::from(EXIT_OWN_FAILURE)
}

// ---- run ---------------------------------------------------------------------

/// A state directory that is removed afterwards when swarmexec made it.
struct StateDir {
    path: PathBuf,
    owned: bool,
}

impl StateDir {
    fn new(given: Option<PathBuf>) -> StateDir {
        match given {
            Some(path) => StateDir { path, owned: false },
            None => {
                let unique = format!(
                    "swarmexec-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                );
                StateDir {
                    path: std::env::temp_dir().join(unique),
                    owned: true,
                }
            }
        }
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn run(options: RunOptions) -> ExitCode {
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals = match signals::watch() {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot watch signals: {e}")),
    };
    let state_dir = StateDir::new(options.state_dir.clone());
    let executor = match ProcessExecutor::new(&state_dir.path) {
        Ok(executor) => executor,
        Err(e) => return fail(&e),
    };
    let (task, secrets, configs) =
        match build_task(options.spec, &options.secrets, &options.configs) {
            Ok(built) => built,
            Err(e) => return fail(&e),
        };
    let worker = Worker::new(Arc::new(executor));
    let (reports, statuses) = unbounded();
    let _listener = worker.listen(reports);
    if let Err(e) = worker.assign(vec![task.clone()], secrets, configs) {
        return fail(&e);
    }
    let code = supervise(&worker, task, &statuses, &signals, options.quiet);
    // Removing the task deletes its files; after a second SIGINT the worker is
    // closed already and the directory goes by hand.
    let removal = AssignmentChanges {
        removed_tasks: vec![TASK_ID.into()],
        ..Default::default()
    };
    if worker.update(removal).is_ok() {
        worker.wait();
    }
    worker.close();
    let _ = std::fs::remove_dir_all(state_dir.path.join(TASK_ID));
    code
}

type Dependencies = (Task, Vec<Secret>, Vec<Config>);

fn build_task(
    mut spec: ProcessSpec,
    secret_files: &[(String, PathBuf)],
    config_files: &[(String, PathBuf)],
) -> Result<Dependencies, String> {
    let read = |(name, path): &(String, PathBuf)| {
        std::fs::read(path)
            .map(|data| (name.clone(), data))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let mut secrets = Vec::new();
    for (name, data) in secret_files
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?
    {
        spec.secrets.push(SecretReference {
            secret_id: name.clone(),
            secret_name: name.clone(),
            target: name.clone(),
            mode: None,
        });
        secrets.push(Secret {
            id: name,
            data,
            ..Default::default()
        });
    }
    let mut configs = Vec::new();
    for (name, data) in config_files
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()?
    {
        spec.configs.push(ConfigReference {
            config_id: name.clone(),
            config_name: name.clone(),
            target: name.clone(),
            mode: None,
        });
        configs.push(Config {
            id: name,
            data,
            ..Default::default()
        });
    }
    let mut task = Task {
        id: TASK_ID.into(),
        desired_state: TaskState::Running,
        spec: TaskSpec {
            runtime: Some(Runtime::Process(spec)),
            ..Default::default()
        },
        ..Default::default()
    };
    task.status.state = TaskState::Assigned;
    Ok((task, secrets, configs))
}

/// Follows the task until it ends, relaying signals; returns the exit code.
fn supervise(
    worker: &Worker,
    task: Task,
    statuses: &Receiver<(String, TaskStatus)>,
    signals: &Receiver<libc::c_int>,
    quiet: bool,
) -> ExitCode {
    let started = Instant::now();
    let mut last_state = None;
    let mut stopping = false;
    thread::scope(|scope| {
        let mut output = None;
        loop {
            select! {
                recv(statuses) -> report => {
                    let Ok((_, status)) = report else { return fail(&"the worker stopped reporting") };
                    if last_state != Some(status.state) && !quiet {
                        transition(started, &status);
                    }
                    last_state = Some(status.state);
                    if status.state >= TaskState::Running && output.is_none() {
                        output = Some(scope.spawn(|| stream_output(worker)));
                    }
                    if status.state.is_terminal() {
                        if let Some(output) = output.take() {
                            let _ = output.join();
                        }
                        return exit_code(&status);
                    }
                }
                recv(signals) -> signal => {
                    if stopping && signal == Ok(libc::SIGINT) {
                        // Closing the worker kills the program at once.
                        worker.close();
                        return ExitCode::from(128 + libc::SIGKILL as u8);
                    }
                    stopping = true;
                    let stop = Task { desired_state: TaskState::Shutdown, ..task.clone() };
                    let changes = AssignmentChanges { tasks: vec![stop], ..Default::default() };
                    if let Err(e) = worker.update(changes) {
                        return fail(&e);
                    }
                }
            }
        }
    })
}

fn transition(started: Instant, status: &TaskStatus) {
    let elapsed = started.elapsed().as_secs_f64();
    let mut line = format!("[{elapsed:8.3}s] {:<9} {}", status.state, status.message);
    if !status.err.is_empty() {
        line.push_str(&format!(" (error: {})", status.err));
    }
    eprintln!("{line}");
}

/// Copies the program's output to ours until it exits.
fn stream_output(worker: &Worker) {
    let publisher = LogPublisherFn(|_: &CancelToken, message: LogMessage| {
        let written = match message.stream {
            LogStream::Stderr => std::io::stderr().lock().write_all(&message.data),
            _ => {
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(&message.data)
                    .and_then(|()| stdout.flush())
            }
        };
        written.map_err(Error::other)
    });
    let follow = LogSubscriptionOptions {
        follow: true,
        ..Default::default()
    };
    if let Err(e) = worker.subscribe_logs(TASK_ID, &CancelToken::new(), &publisher, &follow) {
        eprintln!("swarmexec: output lost: {e}");
    }
}

/// The program's exit code, or what went wrong before it ran.
fn exit_code(status: &TaskStatus) -> ExitCode {
    let code = status.container.as_ref().map_or(0, |c| c.exit_code);
    match status.state {
        TaskState::Rejected if status.err.starts_with("program not found") => {
            ExitCode::from(EXIT_NOT_FOUND)
        }
        TaskState::Rejected if status.err.starts_with("program is not executable") => {
            ExitCode::from(EXIT_NOT_EXECUTABLE)
        }
        TaskState::Rejected => ExitCode::from(EXIT_OWN_FAILURE),
        TaskState::Failed if code == 0 => ExitCode::from(EXIT_OWN_FAILURE),
        _ => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_OWN_FAILURE)),
    }
}

// ---- signals -----------------------------------------------------------------

/// SIGINT and SIGTERM as messages: blocked in every thread and taken by one thread
/// with `sigwait`, so no handler runs and nothing async-signal-unsafe is needed.
/// Programs started by the executor do not inherit the blocked mask: the standard
/// library clears it when spawning.
mod signals {
    use crossbeam_channel::{unbounded, Receiver};

    fn set() -> libc::sigset_t {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t, and SIGINT and SIGTERM are valid signals.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
        }
        set
    }

    pub(super) fn watch() -> std::io::Result<Receiver<libc::c_int>> {
        let set = set();
        // SAFETY: `set` is a valid sigset_t; a null old set is allowed.
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if blocked != 0 {
            return Err(std::io::Error::from_raw_os_error(blocked));
        }
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("swarmexec-signals".into())
            .spawn(move || loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` is a valid sigset_t and `signal` a writable c_int.
                if unsafe { libc::sigwait(&set, &mut signal) } == 0 && tx.send(signal).is_err() {
                    return;
                }
            })?;
        Ok(rx)
    }
}
