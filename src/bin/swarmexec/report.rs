//! What a run says on stderr: a line per transition, and a final line that says
//! in plain words how the program ended; or, with `--json`, the same as one JSON
//! object a line. With `-q` only a run that did not end by itself (killed, out of
//! memory, unhealthy, stopped, never started) says so.

use std::fmt::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use swarmexec::api::{Health, HealthState, ResourceUsage, Signal, TaskState, TaskStatus};

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum How {
    /// The program exited with this status.
    Exited(i32),
    /// A signal killed it, not on our request.
    Killed(Signal),
    /// The kernel killed it for exceeding its memory limit.
    OutOfMemory,
    /// Its health check failed: stopped. What failed.
    Unhealthy(String),
    /// Stopped on request (SIGTERM), then it exited or was killed.
    Stopped(Box<How>),
    /// It never started: why.
    NotStarted(String),
    /// It ran but failed otherwise (ended before its health check passed): why.
    Failed(String),
}

/// The end of a run, for the final line.
pub(crate) struct Ending {
    pub(crate) state: TaskState,
    pub(crate) code: u8,
    pub(crate) how: How,
    pub(crate) usage: Option<ResourceUsage>,
    pub(crate) restarts: u32,
}

impl How {
    /// How the program ended: `exit` is `None` when it never started (and
    /// `Some(None)` when its status was lost); `stopped` when the run asked it to.
    pub(crate) fn of(status: &TaskStatus, exit: Option<Option<ExitStatus>>, stopped: bool) -> How {
        let err = status.err.as_str();
        let Some(exit) = exit else {
            return How::NotStarted(err.to_owned());
        };
        let code = status.container.as_ref().map_or(0, |c| c.exit_code);
        let by_itself = if err.starts_with("out of memory") {
            How::OutOfMemory
        } else if let Some(detail) = err.strip_prefix("unhealthy: ") {
            How::Unhealthy(detail.to_owned())
        } else if let Some(signal) = exit.and_then(|e| e.signal()).and_then(Signal::from_number) {
            How::Killed(signal)
        } else if status.state == TaskState::Failed && code == 0 {
            How::Failed(err.to_owned())
        } else {
            How::Exited(code)
        };
        match by_itself {
            How::Exited(_) | How::Killed(_) if stopped => How::Stopped(Box::new(by_itself)),
            how => how,
        }
    }

    /// True when the program ended by itself, as programs do.
    fn is_ordinary(&self) -> bool {
        matches!(self, How::Exited(_))
    }

    fn words(&self) -> String {
        match self {
            How::Exited(code) => format!("exited with status {code}"),
            How::Killed(signal) => format!("killed by signal {} ({signal})", signal.number()),
            How::OutOfMemory => "killed: out of memory".to_owned(),
            How::Unhealthy(detail) => format!("stopped: unhealthy, {detail}"),
            How::Stopped(then) => format!("stopped on request: {}", then.words()),
            How::NotStarted(why) => format!("not started: {why}"),
            How::Failed(why) => format!("failed: {why}"),
        }
    }

    /// Whether the words say the exit code already.
    fn says_code(&self) -> bool {
        matches!(self, How::Exited(_))
    }

    fn reason(&self) -> &'static str {
        match self {
            How::Exited(_) => "exited",
            How::Killed(_) => "killed",
            How::OutOfMemory => "out_of_memory",
            How::Unhealthy(_) => "unhealthy",
            How::Stopped(_) => "stopped",
            How::NotStarted(_) => "not_started",
            How::Failed(_) => "failed",
        }
    }
}

/// Where and how the run's lines go.
pub(crate) struct Report {
    started: Instant,
    quiet: bool,
    json: bool,
}

impl Report {
    pub(crate) fn new(quiet: bool, json: bool) -> Report {
        Report {
            started: Instant::now(),
            quiet,
            json,
        }
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn line(&self, state: &str, words: &str) -> String {
        format!("[{:8.3}s] {state:<9} {words}", self.elapsed())
    }

    /// A transition to a state short of the end.
    pub(crate) fn transition(&self, status: &TaskStatus) {
        if self.quiet {
            return;
        }
        if self.json {
            let mut object = self.event("transition");
            field(&mut object, "state", &status.state.to_string());
            field(&mut object, "message", &status.message);
            if !status.err.is_empty() {
                field(&mut object, "error", &status.err);
            }
            return emit(object);
        }
        let mut line = self.line(&status.state.to_string(), &status.message);
        if !status.err.is_empty() {
            let _ = write!(line, " (error: {})", status.err);
        }
        eprintln!("{line}");
    }

    /// A change of the program's health.
    pub(crate) fn health(&self, health: &Health) {
        if self.quiet || health.state == HealthState::Starting {
            return;
        }
        let words = match health.state {
            HealthState::Healthy => "health check passed".to_owned(),
            _ => format!("{} health checks in a row failed", health.failing_streak),
        };
        if self.json {
            let mut object = self.event("health");
            field(&mut object, "health", &health.state.to_string());
            field(&mut object, "message", &words);
            return emit(object);
        }
        eprintln!(
            "{}",
            self.line(&health.state.to_string().to_uppercase(), &words)
        );
    }

    /// The program is started again, the `restarts`-th time, after `delay`.
    pub(crate) fn restart(&self, restarts: u32, delay: Duration, after: &How) {
        if self.quiet {
            return;
        }
        let delay_ms = delay.as_millis();
        if self.json {
            let mut object = self.event("restart");
            number(&mut object, "restarts", f64::from(restarts));
            number(&mut object, "delay_ms", delay_ms as f64);
            field(&mut object, "reason", after.reason());
            return emit(object);
        }
        let words = format!("{}; starting it again in {delay_ms} ms", after.words());
        eprintln!("{}", self.line("RESTART", &words));
    }

    /// The final line, which `-q` prints only for a run that did not end by
    /// itself.
    pub(crate) fn finish(&self, ending: &Ending) {
        match &ending.how {
            How::NotStarted(why) if self.quiet && !self.json => {
                return eprintln!("swarmexec: {why}");
            }
            how if self.quiet && how.is_ordinary() => return,
            _ => {}
        }
        if self.json {
            return emit(self.final_object(ending));
        }
        let mut details = Vec::new();
        if !ending.how.says_code() {
            details.push(format!("exit {}", ending.code));
        }
        details.extend(ending.usage.as_ref().and_then(describe_usage));
        if ending.restarts > 0 {
            details.push(format!("restarted {} times", ending.restarts));
        }
        let mut line = self.line(&ending.state.to_string(), &ending.how.words());
        if !details.is_empty() {
            let _ = write!(line, " ({})", details.join("; "));
        }
        eprintln!("{line}");
    }

    fn final_object(&self, ending: &Ending) -> String {
        let mut object = self.event("exit");
        field(&mut object, "state", &ending.state.to_string());
        number(&mut object, "exit_code", f64::from(ending.code));
        field(&mut object, "reason", ending.how.reason());
        field(&mut object, "message", &ending.how.words());
        boolean(&mut object, "oom_killed", ending.how == How::OutOfMemory);
        boolean(
            &mut object,
            "unhealthy",
            matches!(ending.how, How::Unhealthy(_)),
        );
        boolean(
            &mut object,
            "stopped",
            matches!(ending.how, How::Stopped(_)),
        );
        let usage = ending.usage.unwrap_or_default();
        if let Some(cpu) = usage.cpu {
            number(&mut object, "cpu_seconds", cpu.as_secs_f64());
        }
        if let Some(peak) = usage.memory_peak_bytes {
            number(&mut object, "memory_peak_bytes", peak as f64);
        }
        number(&mut object, "restarts", f64::from(ending.restarts));
        object
    }

    /// `{"time":1.234,"event":"..."`, to be closed by `emit`.
    fn event(&self, event: &str) -> String {
        let mut object = format!("{{\"time\":{:.6}", self.elapsed());
        field(&mut object, "event", event);
        object
    }
}

fn emit(mut object: String) {
    object.push('}');
    eprintln!("{object}");
}

fn field(object: &mut String, name: &str, value: &str) {
    let _ = write!(object, ",\"{name}\":\"");
    for c in value.chars() {
        match c {
            '"' => object.push_str("\\\""),
            '\\' => object.push_str("\\\\"),
            '\n' => object.push_str("\\n"),
            '\r' => object.push_str("\\r"),
            '\t' => object.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(object, "\\u{:04x}", c as u32);
            }
            c => object.push(c),
        }
    }
    object.push('"');
}

fn number(object: &mut String, name: &str, value: f64) {
    let _ = write!(object, ",\"{name}\":{value}");
}

fn boolean(object: &mut String, name: &str, value: bool) {
    let _ = write!(object, ",\"{name}\":{value}");
}

/// `1.2 s CPU, 35 MiB peak`, with what is known.
fn describe_usage(usage: &ResourceUsage) -> Option<String> {
    let cpu = usage.cpu.map(|cpu| match cpu {
        cpu if cpu < Duration::from_secs(1) => format!("{} ms CPU", cpu.as_millis()),
        cpu => format!("{:.1} s CPU", cpu.as_secs_f64()),
    });
    let peak = usage.memory_peak_bytes.map(|bytes| {
        let mib = bytes as f64 / (1024.0 * 1024.0);
        if mib < 10.0 {
            format!("{mib:.1} MiB peak")
        } else {
            format!("{mib:.0} MiB peak")
        }
    });
    let parts: Vec<String> = cpu.into_iter().chain(peak).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmexec::api::ContainerStatus;

    fn ended(state: TaskState, code: i32, err: &str) -> TaskStatus {
        TaskStatus {
            state,
            err: err.to_owned(),
            container: Some(ContainerStatus {
                exit_code: code,
                pid: 42,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn endings_are_told_in_plain_words() {
        let how = |s: &TaskStatus, stopped| {
            let code = s.container.as_ref().unwrap().exit_code;
            let exit = if code > 128 && s.err.contains("signal") {
                ExitStatus::from_raw(code - 128)
            } else {
                ExitStatus::from_raw(code << 8)
            };
            How::of(s, Some(Some(exit)), stopped).words()
        };
        let failed = TaskState::Failed;
        assert_eq!(
            how(&ended(failed, 3, "exited with status 3"), false),
            "exited with status 3"
        );
        let killed = ended(failed, 137, "killed by signal 9 (SIGKILL)");
        assert_eq!(how(&killed, false), "killed by signal 9 (SIGKILL)");
        let oom = ended(
            failed,
            137,
            "out of memory: ...; killed by signal 9 (SIGKILL)",
        );
        assert_eq!(how(&oom, false), "killed: out of memory");
        let sick = ended(failed, 143, "unhealthy: 3 health checks in a row failed");
        assert_eq!(
            how(&sick, false),
            "stopped: unhealthy, 3 health checks in a row failed"
        );
        let stopped = ended(TaskState::Shutdown, 143, "killed by signal 15 (SIGTERM)");
        assert_eq!(
            how(&stopped, true),
            "stopped on request: killed by signal 15 (SIGTERM)"
        );
        let early = ended(failed, 0, "exited before its health check passed");
        assert_eq!(
            how(&early, false),
            "failed: exited before its health check passed"
        );
        let never = How::of(
            &ended(TaskState::Rejected, 0, "program not found: x"),
            None,
            false,
        );
        assert_eq!(never.words(), "not started: program not found: x");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut object = String::new();
        field(&mut object, "m", "a\"b\\c\nd\u{1}");
        assert_eq!(object, ",\"m\":\"a\\\"b\\\\c\\nd\\u0001\"");
    }
}
