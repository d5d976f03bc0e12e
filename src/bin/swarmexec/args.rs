//! The command line, read with `lexopt`.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use swarmexec::api::{
    HealthCheck, HealthTest, InputSource, Limits, OutputSink, ProcessSpec, SignalTarget,
};

use crate::bench::BenchOptions;
use crate::help;
use crate::values::{self, RestartPolicy};

/// What the command line asks for.
pub(crate) enum Command {
    Help(&'static str),
    Version,
    Describe,
    Run(Box<RunOptions>),
    Bench(BenchOptions),
    /// Parsed whether or not the command was built with `node`, so that the
    /// help and the errors are the same; run only when it was.
    Node(#[cfg_attr(not(feature = "node"), allow(dead_code))] NodeOptions),
}

/// Everything `swarmexec node` was given.
#[derive(Debug)]
#[cfg_attr(not(feature = "node"), allow(dead_code))]
pub(crate) struct NodeOptions {
    /// The manager to join through, `HOST[:PORT]`.
    pub(crate) join: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) hostname: Option<String>,
    /// Engine labels, beside `swarmexec.runtime=process`.
    pub(crate) labels: Vec<(String, String)>,
    /// Who runs a task that names no user.
    pub(crate) default_user: String,
    pub(crate) allow_root: bool,
}

/// Everything `swarmexec run` was given.
#[derive(Default)]
pub(crate) struct RunOptions {
    pub(crate) spec: ProcessSpec,
    pub(crate) limits: Limits,
    pub(crate) secrets: Vec<(String, PathBuf)>,
    pub(crate) configs: Vec<(String, PathBuf)>,
    pub(crate) quiet: bool,
    pub(crate) json: bool,
    pub(crate) state_dir: Option<PathBuf>,
    /// `-t`: the program gets the terminal.
    pub(crate) tty: bool,
    /// The task's id.
    pub(crate) name: Option<String>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) restart: RestartPolicy,
    /// `--init`: adopt orphans even when not PID 1.
    pub(crate) init: bool,
    /// `--preserve-fds`: how many descriptors from 3 on go to the program.
    pub(crate) preserve_fds: u32,
    /// The health check's flags, applied once all are read.
    pub(crate) health: HealthCheck,
    pub(crate) health_cmd: Option<OsString>,
    pub(crate) no_healthcheck: bool,
}

/// A bad command line: what is wrong, and which help to point at.
pub(crate) struct Usage {
    pub(crate) problem: String,
    pub(crate) hint: &'static str,
}

impl Usage {
    fn top(problem: impl std::fmt::Display) -> Usage {
        Usage {
            problem: problem.to_string(),
            hint: "swarmexec --help",
        }
    }

    fn run(problem: impl std::fmt::Display) -> Usage {
        Usage {
            problem: problem.to_string(),
            hint: "swarmexec run --help",
        }
    }
}

pub(crate) fn parse(args: Vec<OsString>) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next().map_err(Usage::top)? {
        None => Err(Usage::top("no command given")),
        Some(Long("help") | Short('h')) => Ok(Command::Help(help::TOP)),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(command)) if command == "run" => parse_run(parser),
        Some(Value(command)) if command == "describe" => parse_describe(parser),
        Some(Value(command)) if command == "bench" => parse_bench(parser),
        Some(Value(command)) if command == "node" => parse_node(parser),
        Some(Value(command)) if command == "help" => parse_help(parser),
        Some(Value(command)) => Err(Usage::top(format!("unknown command {command:?}"))),
        Some(other) => Err(Usage::top(other.unexpected())),
    }
}

fn parse_describe(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    match parser.next().map_err(Usage::top)? {
        None => Ok(Command::Describe),
        Some(Long("help") | Short('h')) => Ok(Command::Help(help::DESCRIBE)),
        Some(other) => Err(Usage {
            problem: format!("describe takes no arguments: {}", other.unexpected()),
            hint: "swarmexec describe --help",
        }),
    }
}

fn parse_help(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    match parser.next().map_err(Usage::top)? {
        None => Ok(Command::Help(help::TOP)),
        Some(Value(command)) if command == "run" => Ok(Command::Help(help::RUN)),
        Some(Value(command)) if command == "describe" => Ok(Command::Help(help::DESCRIBE)),
        Some(Value(command)) if command == "bench" => Ok(Command::Help(help::BENCH)),
        Some(Value(command)) if command == "node" => Ok(Command::Help(help::NODE)),
        Some(Value(command)) if command == "help" => Ok(Command::Help(help::TOP)),
        Some(Value(command)) => Err(Usage::top(format!("unknown command {command:?}"))),
        Some(other) => Err(Usage::top(other.unexpected())),
    }
}

fn parse_bench(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let bad = |problem: String| Usage {
        problem,
        hint: "swarmexec bench --help",
    };
    let mut options = BenchOptions {
        command: Vec::new(),
        runs: 200,
        cgroups: true,
        json: false,
    };
    while let Some(arg) = parser.next().map_err(|e| bad(e.to_string()))? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(help::BENCH)),
            Long("runs") => {
                let text = string_value(&mut parser)?;
                options.runs = text
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("--runs expects a count, got {text:?}")))?;
            }
            Long("cgroups") => options.cgroups = true,
            Long("no-cgroups") => options.cgroups = false,
            Long("json") => options.json = true,
            Value(program) => {
                options.command.push(program);
                let rest = parser.raw_args().map_err(|e| bad(e.to_string()))?;
                options.command.extend(rest);
            }
            other => return Err(bad(other.unexpected().to_string())),
        }
    }
    if options.command.is_empty() {
        return Err(bad(
            "no program given: swarmexec bench [OPTIONS] -- PROGRAM [ARGS...]".into(),
        ));
    }
    Ok(Command::Bench(options))
}

fn parse_node(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let bad = |problem: String| Usage {
        problem,
        hint: "swarmexec node --help",
    };
    let mut options = NodeOptions {
        join: None,
        token: None,
        state_dir: None,
        hostname: None,
        labels: Vec::new(),
        default_user: "nobody".into(),
        allow_root: false,
    };
    let text = |parser: &mut lexopt::Parser, flag: &str| -> Result<String, Usage> {
        let value = string_value(parser).map_err(|u| bad(u.problem))?;
        if value.is_empty() {
            return Err(bad(format!("{flag} expects a value, got an empty one")));
        }
        Ok(value)
    };
    while let Some(arg) = parser.next().map_err(|e| bad(e.to_string()))? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(help::NODE)),
            Long("join") => options.join = Some(text(&mut parser, "--join")?),
            Long("token") => options.token = Some(text(&mut parser, "--token")?),
            Long("state-dir") => options.state_dir = Some(text(&mut parser, "--state-dir")?.into()),
            Long("hostname") => options.hostname = Some(text(&mut parser, "--hostname")?),
            Long("label") => {
                let label = text(&mut parser, "--label")?;
                let (key, value) = label.split_once('=').unwrap_or((&label, ""));
                if key.is_empty() {
                    return Err(bad(format!("--label expects KEY=VALUE, got {label:?}")));
                }
                options.labels.push((key.to_owned(), value.to_owned()));
            }
            Long("default-user") => options.default_user = text(&mut parser, "--default-user")?,
            Long("allow-root") => options.allow_root = true,
            other => return Err(bad(other.unexpected().to_string())),
        }
    }
    if options.token.is_some() && options.join.is_none() {
        return Err(bad(
            "--token needs --join MANAGER: the manager to join through".into(),
        ));
    }
    Ok(Command::Node(options))
}

fn parse_run(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut options = RunOptions::default();
    // What is not captured goes to the program directly.
    options.spec.stdout = OutputSink::Inherit;
    options.spec.stderr = OutputSink::Inherit;
    options.spec.signal_target = SignalTarget::Process;
    let path = std::env::var_os("PATH").unwrap_or_default();
    options.spec.env.push(("PATH".into(), path));
    let inherited = |name: &OsStr| std::env::var_os(name);
    while let Some(arg) = parser.next().map_err(Usage::run)? {
        let options = &mut options;
        let spec = &mut options.spec;
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(help::RUN)),
            Long("env") | Short('e') => {
                let entry = parser.value().map_err(Usage::run)?;
                let entry = values::env_entry(&entry, inherited)
                    .map_err(|e| Usage::run(format!("--env {e}")))?;
                spec.env.extend(entry);
            }
            Long("env-file") => {
                let file = PathBuf::from(parser.value().map_err(Usage::run)?);
                let content = std::fs::read(&file).map_err(|e| {
                    Usage::run(format!("--env-file: cannot read {}: {e}", file.display()))
                })?;
                let entries = values::env_file(&content, inherited)
                    .map_err(|e| Usage::run(format!("--env-file {}: {e}", file.display())))?;
                spec.env.extend(entries);
            }
            Long("interactive") | Short('i') => spec.stdin = InputSource::Inherit,
            Long("tty") | Short('t') => options.tty = true,
            Long("dir") | Short('w') => spec.dir = Some(parser.value().map_err(Usage::run)?.into()),
            Long("user") | Short('u') => {
                let value = string_value(&mut parser)?;
                let (user, group) = match value.split_once(':') {
                    Some((user, group)) => (user.to_owned(), Some(group.to_owned())),
                    None => (value, None),
                };
                spec.user = Some(user);
                spec.group = group;
            }
            Long("group-add") => spec.groups.push(string_value(&mut parser)?),
            Long("name") => options.name = Some(string_value(&mut parser)?),
            Long("secret") => options.secrets.push(named_file(&mut parser, "--secret")?),
            Long("config") => options.configs.push(named_file(&mut parser, "--config")?),
            Long("memory") | Short('m') => {
                options.limits.memory_bytes = read(
                    &mut parser,
                    "--memory",
                    "a size like 256m or 1g",
                    values::size,
                )?
            }
            Long("cpus") => {
                options.limits.nano_cpus = read(
                    &mut parser,
                    "--cpus",
                    "a positive number like 1.5",
                    values::cpus,
                )?
            }
            Long("pids-limit") => {
                options.limits.pids = read(
                    &mut parser,
                    "--pids-limit",
                    "a positive count or -1",
                    values::pids,
                )?
            }
            Long("ulimit") => {
                let limit = values::ulimit(&string_value(&mut parser)?).map_err(Usage::run)?;
                spec.rlimits.retain(|r| r.resource != limit.resource);
                spec.rlimits.push(limit);
            }
            Long("health-cmd") => options.health_cmd = Some(parser.value().map_err(Usage::run)?),
            Long("health-interval") => {
                options.health.interval = Some(duration_flag(&mut parser, "--health-interval")?)
            }
            Long("health-timeout") => {
                options.health.timeout = Some(duration_flag(&mut parser, "--health-timeout")?)
            }
            Long("health-start-period") => {
                let period = duration_flag(&mut parser, "--health-start-period")?;
                options.health.start_period = Some(period)
            }
            Long("health-start-interval") => {
                let interval = duration_flag(&mut parser, "--health-start-interval")?;
                options.health.start_interval = Some(interval)
            }
            Long("health-retries") => {
                let count = |t: &str| t.parse::<u32>().ok().filter(|n| *n > 0);
                let retries = read(
                    &mut parser,
                    "--health-retries",
                    "a count of at least 1",
                    count,
                )?;
                options.health.retries = Some(retries);
            }
            Long("no-healthcheck") => options.no_healthcheck = true,
            Long("stop-signal") => {
                let signal = string_value(&mut parser)?;
                let signal = signal
                    .parse()
                    .map_err(|e| Usage::run(format!("--stop-signal: {e}")))?;
                spec.stop_signal = Some(signal);
            }
            Long("stop-grace") => {
                spec.stop_grace_period = Some(duration_flag(&mut parser, "--stop-grace")?)
            }
            Long("stop-timeout") => {
                let seconds = |t: &str| t.parse::<u64>().ok();
                let seconds = read(
                    &mut parser,
                    "--stop-timeout",
                    "a number of seconds",
                    seconds,
                )?;
                spec.stop_grace_period = Some(Duration::from_secs(seconds));
            }
            Long("signal-group") => spec.signal_target = SignalTarget::Group,
            Long("restart") => {
                let policy = "no, on-failure[:N], always or unless-stopped";
                options.restart = read(&mut parser, "--restart", policy, values::restart)?;
            }
            Long("init" | "subreaper") => options.init = true,
            Long("preserve-fds") => {
                let count = |t: &str| t.parse::<u32>().ok().filter(|n| *n < 1 << 16);
                options.preserve_fds = read(&mut parser, "--preserve-fds", "a count", count)?;
            }
            Long("pid-file") => options.pid_file = Some(parser.value().map_err(Usage::run)?.into()),
            Long("json") => options.json = true,
            Long("quiet") | Short('q') => options.quiet = true,
            Long("state-dir") => {
                options.state_dir = Some(parser.value().map_err(Usage::run)?.into())
            }
            Value(program) => {
                spec.command.push(program);
                spec.command.extend(parser.raw_args().map_err(Usage::run)?);
            }
            other => return Err(Usage::run(other.unexpected())),
        }
    }
    if options.tty {
        options.spec.stdin = InputSource::Inherit;
        if let Some(term) = std::env::var_os("TERM") {
            options.spec.env.push(("TERM".into(), term));
        }
    }
    let health_flags = options.health != HealthCheck::default();
    match (options.no_healthcheck, options.health_cmd.take()) {
        (true, _) => {}
        (false, Some(cmd)) => {
            options.health.test = HealthTest::Shell(cmd);
            options.spec.healthcheck = Some(options.health.clone());
        }
        (false, None) if health_flags => {
            return Err(Usage::run("the --health-* options need --health-cmd"))
        }
        (false, None) => {}
    }
    if options.spec.command.is_empty() {
        return Err(Usage::run(
            "no program given: swarmexec run [OPTIONS] -- PROGRAM [ARGS...]",
        ));
    }
    Ok(Command::Run(Box::new(options)))
}

/// A flag's value, read by `read` (`None` for a bad one, then said to expect
/// `expected`).
fn read<T>(
    parser: &mut lexopt::Parser,
    flag: &str,
    expected: &str,
    read: impl Fn(&str) -> Option<T>,
) -> Result<T, Usage> {
    let text = string_value(parser)?;
    read(&text).ok_or_else(|| Usage::run(format!("{flag} expects {expected}, got {text:?}")))
}

/// A duration flag's value, as [`values::duration`] reads it.
fn duration_flag(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, Usage> {
    let expected = "a duration like 10s, 1m30s or 500ms";
    read(parser, flag, expected, values::duration)
}

fn named_file(parser: &mut lexopt::Parser, flag: &str) -> Result<(String, PathBuf), Usage> {
    read(parser, flag, "NAME=FILE", values::named_file)
}

fn string_value(parser: &mut lexopt::Parser) -> Result<String, Usage> {
    parser
        .value()
        .map_err(Usage::run)?
        .into_string()
        .map_err(|a| Usage::run(format!("{a:?} is not valid UTF-8")))
}
