//! The command line, read with `lexopt`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use swarmexec::api::{HealthCheck, HealthTest, InputSource, Limits, OutputSink, ProcessSpec};

const HELP: &str = "\
swarmexec: run programs as supervised tasks

Usage:
  swarmexec run [OPTIONS] -- PROGRAM [ARGS...]
  swarmexec describe
  swarmexec help [COMMAND]
  swarmexec --help | --version

Commands:
  run       Run PROGRAM as a task and exit with its exit code
  describe  Print this node's description and what it can enforce
  help      Print the help of a command

Run 'swarmexec help COMMAND' for a command's options.";

const RUN_HELP: &str = "\
Usage: swarmexec run [OPTIONS] -- PROGRAM [ARGS...]

Runs PROGRAM (never through a shell) as a supervised task, in a cgroup of its own
where the host allows, and exits with its exit code: 125 when swarmexec fails, 126
when PROGRAM cannot be executed, 127 when it (or its #! interpreter) is not found,
128+N when it was killed by signal N.

PROGRAM is looked up on your PATH, as a shell would (a name with a / is a path).
Its stdout and stderr are this command's own, byte for byte; its stdin is
/dev/null, or this command's stdin with -i. Its environment is PATH (yours), HOME,
USER and LOGNAME of the user it runs as, SWARMEXEC_TASK_ID, and what --env adds;
nothing else of yours is passed on. State transitions go to stderr.

SIGINT, SIGTERM and SIGHUP stop the program gracefully (stop signal, grace
period, then SIGKILL to everything it started); a second one kills it at once.
SIGQUIT, SIGUSR1, SIGUSR2 and SIGWINCH are passed on to its process group. If
swarmexec itself is killed, the program dies with it.

Options:
  -e, --env NAME=VALUE  Set an environment variable; --env NAME passes your value
                        (repeatable)
  -i, --interactive     Give the program this command's stdin
  -w, --dir PATH        Working directory
  -u, --user USER[:GROUP]
                        Run as this user and group (needs root)
  --secret NAME=FILE    Expose FILE's bytes as secret NAME (repeatable); the
                        program finds it in $SWARMEXEC_SECRETS_DIR/NAME (mode 0400)
  --config NAME=FILE    Likewise for a config, in $SWARMEXEC_CONFIGS_DIR (0444)
  -m, --memory SIZE     Memory limit, like 256m or 1g; over it the program is
                        killed (exit 137, out of memory)
  --cpus NUMBER         CPU limit, like 1.5
  --pids-limit N        Most processes (and threads) at once; -1 for no limit
  --health-cmd CMD      Health check: a shell command line, run with sh -c as the
                        program's user, in its directory and cgroup; exit 0 is
                        healthy. RUNNING then means it passed once; retries
                        failures in a row stop the program (FAILED, unhealthy)
  --health-interval DURATION
                        Between checks once healthy (default 30s)
  --health-timeout DURATION
                        A check running longer fails, and is killed (default 30s)
  --health-start-period DURATION
                        Failures do not count for this long after the start
                        (default 0s)
  --health-start-interval DURATION
                        Between checks until one passes (default 5s)
  --health-retries N    Failures in a row that make it unhealthy (default 3)
  --no-healthcheck      No health check, whatever else was given
  --stop-signal SIG     Signal asking the program to stop (default SIGTERM)
  --stop-grace DURATION Time between the stop signal and SIGKILL, like 10s,
                        1m30s or 500ms (default 10s)
  -q, --quiet           Print no state transitions (errors are still printed)
  --state-dir PATH      Where task files go (default: memory-backed, so that
                        secrets stay off disk: /run/swarmexec for root, else
                        $XDG_RUNTIME_DIR/swarmexec, or /dev/shm where those are
                        on disk; what a killed run left is removed by the next)
  -h, --help            Print this help";

const DESCRIBE_HELP: &str = "\
Usage: swarmexec describe

Prints the node description the process executor reports (hostname, operating
system, architecture, CPUs, memory) and what this host enforces: how a task's
processes are held together (cgroup v2, cgroup v1 freezer, or process group) and
which limits can be set.";

/// What the command line asks for.
pub(crate) enum Command {
    Help(&'static str),
    Version,
    Describe,
    Run(Box<RunOptions>),
}

/// Everything `swarmexec run` was given.
#[derive(Default)]
pub(crate) struct RunOptions {
    pub(crate) spec: ProcessSpec,
    pub(crate) limits: Limits,
    pub(crate) secrets: Vec<(String, PathBuf)>,
    pub(crate) configs: Vec<(String, PathBuf)>,
    pub(crate) quiet: bool,
    pub(crate) state_dir: Option<PathBuf>,
    /// The health check's flags, applied once all are read.
    pub(crate) health: HealthCheck,
    pub(crate) health_cmd: Option<String>,
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
        Some(Long("help") | Short('h')) => Ok(Command::Help(HELP)),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(command)) if command == "run" => parse_run(parser),
        Some(Value(command)) if command == "describe" => parse_describe(parser),
        Some(Value(command)) if command == "help" => parse_help(parser),
        Some(Value(command)) => Err(Usage::top(format!("unknown command {command:?}"))),
        Some(other) => Err(Usage::top(other.unexpected())),
    }
}

fn parse_describe(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    match parser.next().map_err(Usage::top)? {
        None => Ok(Command::Describe),
        Some(Long("help") | Short('h')) => Ok(Command::Help(DESCRIBE_HELP)),
        Some(other) => Err(Usage {
            problem: format!("describe takes no arguments: {}", other.unexpected()),
            hint: "swarmexec describe --help",
        }),
    }
}

fn parse_help(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    match parser.next().map_err(Usage::top)? {
        None => Ok(Command::Help(HELP)),
        Some(Value(command)) if command == "run" => Ok(Command::Help(RUN_HELP)),
        Some(Value(command)) if command == "describe" => Ok(Command::Help(DESCRIBE_HELP)),
        Some(Value(command)) if command == "help" => Ok(Command::Help(HELP)),
        Some(Value(command)) => Err(Usage::top(format!("unknown command {command:?}"))),
        Some(other) => Err(Usage::top(other.unexpected())),
    }
}

fn parse_run(mut parser: lexopt::Parser) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut options = RunOptions::default();
    let spec = &mut options.spec;
    // What is not captured goes to the program directly.
    spec.stdout = OutputSink::Inherit;
    spec.stderr = OutputSink::Inherit;
    spec.env.push(format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_default()
    ));
    while let Some(arg) = parser.next().map_err(Usage::run)? {
        match arg {
            Long("help") | Short('h') => return Ok(Command::Help(RUN_HELP)),
            Long("env") | Short('e') => {
                let entry = string_value(&mut parser)?;
                spec.env.extend(env_entry(entry)?);
            }
            Long("interactive") | Short('i') => spec.stdin = InputSource::Inherit,
            Long("dir") | Short('w') => spec.dir = Some(string_value(&mut parser)?.into()),
            Long("user") | Short('u') => {
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
            Long("memory") | Short('m') => {
                options.limits.memory_bytes = size(&string_value(&mut parser)?)?
            }
            Long("cpus") => options.limits.nano_cpus = cpus(&string_value(&mut parser)?)?,
            Long("pids-limit") => options.limits.pids = pids(&string_value(&mut parser)?)?,
            Long("health-cmd") => options.health_cmd = Some(string_value(&mut parser)?),
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
                let text = string_value(&mut parser)?;
                let retries = text.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Usage::run(format!(
                        "--health-retries expects a count of at least 1, got {text:?}"
                    ))
                })?;
                options.health.retries = Some(retries);
            }
            Long("no-healthcheck") => options.no_healthcheck = true,
            Long("stop-signal") => spec.stop_signal = Some(string_value(&mut parser)?),
            Long("stop-grace") => {
                spec.stop_grace_period = Some(duration_flag(&mut parser, "--stop-grace")?)
            }
            Long("quiet") | Short('q') => options.quiet = true,
            Long("state-dir") => options.state_dir = Some(string_value(&mut parser)?.into()),
            Value(program) => {
                spec.command.push(utf8(program)?);
                for arg in parser.raw_args().map_err(Usage::run)? {
                    spec.command.push(utf8(arg)?);
                }
            }
            other => return Err(Usage::run(other.unexpected())),
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

/// A duration flag's value, as [`duration`] reads it.
fn duration_flag(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, Usage> {
    let text = string_value(parser)?;
    duration(&text).ok_or_else(|| {
        Usage::run(format!(
            "{flag} expects a duration like 10s, 1m30s or 500ms, got {text:?}"
        ))
    })
}

fn string_value(parser: &mut lexopt::Parser) -> Result<String, Usage> {
    utf8(parser.value().map_err(Usage::run)?)
}

fn utf8(arg: OsString) -> Result<String, Usage> {
    arg.into_string()
        .map_err(|a| Usage::run(format!("{a:?} is not valid UTF-8")))
}

/// `NAME=VALUE` as it is; `NAME` alone takes the caller's value, or sets nothing
/// when the caller has none (as `docker run -e NAME` does).
fn env_entry(entry: String) -> Result<Option<String>, Usage> {
    match entry.find('=') {
        Some(0) => Err(Usage::run(format!(
            "--env expects NAME=VALUE or NAME, got {entry:?}"
        ))),
        Some(_) => Ok(Some(entry)),
        None if entry.is_empty() => Err(Usage::run("--env expects NAME=VALUE or NAME, got \"\"")),
        None => Ok(std::env::var(&entry)
            .ok()
            .map(|value| format!("{entry}={value}"))),
    }
}

fn named_file(flag: &str, entry: String) -> Result<(String, PathBuf), Usage> {
    match entry.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(file)))
        }
        _ => Err(Usage::run(format!(
            "{flag} expects NAME=FILE, got {entry:?}"
        ))),
    }
}

/// A duration as `docker run` takes them (Go's): `0`, or numbers each with a unit
/// of `ns`, `us` (or `µs`), `ms`, `s`, `m` or `h`: `10s`, `1m30s`, `1.5s`, `500ms`.
pub(crate) fn duration(text: &str) -> Option<Duration> {
    match text {
        "0" => return Some(Duration::ZERO),
        "" => return None,
        _ => {}
    }
    let mut rest = text;
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let unit_end = rest[number_end..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |at| number_end + at);
        let number: f64 = rest[..number_end].parse().ok()?;
        let scale = match &rest[number_end..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(seconds).ok()
}

/// A size as `docker run --memory` takes them: a number of bytes, or with a
/// binary unit `b`, `k`, `m`, `g` (also `kb`, `mb`, `gb`), any case.
fn size(text: &str) -> Result<i64, Usage> {
    let bad = || {
        Usage::run(format!(
            "--memory expects a size like 256m or 1g, got {text:?}"
        ))
    };
    let lower = text.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "b" => 1.0,
        "k" | "kb" => 1024.0,
        "m" | "mb" => 1024.0 * 1024.0,
        "g" | "gb" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * scale;
    if !(1.0..9e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// `--cpus`: a positive number of CPUs, in billionths.
fn cpus(text: &str) -> Result<i64, Usage> {
    match text.parse::<f64>() {
        Ok(cpus) if cpus > 0.0 && cpus < 1e9 => Ok((cpus * 1e9).round() as i64),
        _ => Err(Usage::run(format!(
            "--cpus expects a positive number like 1.5, got {text:?}"
        ))),
    }
}

/// `--pids-limit`: a positive count, or -1 (or 0) for none.
fn pids(text: &str) -> Result<i64, Usage> {
    match text.parse::<i64>() {
        Ok(-1 | 0) => Ok(0),
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Usage::run(format!(
            "--pids-limit expects a positive count or -1, got {text:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_docker_reads_them() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("0", ms(0)),
            ("10s", ms(10_000)),
            ("1m30s", ms(90_000)),
            ("1.5s", ms(1500)),
            ("500ms", ms(500)),
            ("1h", ms(3_600_000)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(duration(text), Some(expected), "{text}");
        }
        for bad in ["", "10", "s", "1x", "-1s", "1.2.3s", "ms10"] {
            assert_eq!(duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_read_as_docker_reads_them() {
        assert_eq!(size("256m").ok(), Some(256 << 20));
        assert_eq!(size("1G").ok(), Some(1 << 30));
        assert_eq!(size("1024").ok(), Some(1024));
        assert_eq!(size("64kb").ok(), Some(64 << 10));
        for bad in ["", "m", "12x", "-1m", "0"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_pids() {
        assert_eq!(cpus("1.5").ok(), Some(1_500_000_000));
        assert!(cpus("0").is_err() && cpus("x").is_err());
        assert_eq!(pids("-1").ok(), Some(0));
        assert_eq!(pids("100").ok(), Some(100));
        assert!(pids("-2").is_err());
    }
}
