//! Checks a [`ProcessSpec`] and turns it into a [`Launch`]: everything needed to
//! spawn, resolved and validated up front so that `start` cannot fail on bad input.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::health::HealthPlan;
use super::sys;
use crate::api::{HealthCheck, HealthTest, InputSource, Limits, OutputSink, ProcessSpec, Rlimit};
use crate::Error;

/// The `PATH` a program gets when its spec sets none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a program has to exit after its stop signal, unless its spec says.
pub(crate) const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// A validated spec, ready to spawn.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    /// Never empty: [`launch`] refuses an empty command.
    pub(crate) argv: Vec<String>,
    /// The program's whole environment.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dir: Option<PathBuf>,
    /// The uid and gid to run as, when the spec names a user or group.
    pub(crate) credentials: Option<(u32, u32)>,
    pub(crate) stop_signal: libc::c_int,
    pub(crate) stop_grace: Duration,
    pub(crate) rlimits: Vec<Rlimit>,
    /// The task's resource limits, checked against what the host can enforce.
    pub(crate) limits: Limits,
    pub(crate) stdin: InputSource,
    pub(crate) stdout: OutputSink,
    pub(crate) stderr: OutputSink,
    /// The health check, validated.
    pub(crate) health: Option<Arc<HealthPlan>>,
}

fn invalid(problem: impl Into<String>) -> Error {
    Error::InvalidSpec(problem.into())
}

/// The longest file name Linux file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// What a task directory's name adds to the task id: a dot, the owner (16 hex
/// digits), a dot and a counter.
const TASK_DIR_SUFFIX_MAX: usize = 1 + 16 + 1 + 20;

/// Checks that `name` can be a single file or directory name inside ours.
pub(crate) fn check_file_name(what: &str, name: &str) -> Result<(), Error> {
    check_name(what, name, NAME_MAX)
}

/// Checks that a task's directory can be named after `id`.
pub(crate) fn check_task_id(id: &str) -> Result<(), Error> {
    check_name("task id", id, NAME_MAX - TASK_DIR_SUFFIX_MAX)
}

fn check_name(what: &str, name: &str, max_len: usize) -> Result<(), Error> {
    let problem = if name.is_empty() {
        "is empty".to_owned()
    } else if name.contains('\0') {
        "contains NUL".to_owned()
    } else if name.starts_with('/') {
        "is an absolute path".to_owned()
    } else if name.contains('/') {
        "contains '/'".to_owned()
    } else if name == "." || name == ".." {
        "is '.' or '..'".to_owned()
    } else if name.len() > max_len {
        format!("is {} bytes long, over the limit of {max_len}", name.len())
    } else {
        return Ok(());
    };
    Err(invalid(format!("{what} {} {problem}", shortened(name))))
}

/// `name` quoted, its middle elided when it is too long to read in a message.
fn shortened(name: &str) -> String {
    const KEEP: usize = 24;
    if name.len() <= 2 * KEEP + 3 {
        return format!("{name:?}");
    }
    let head = name.char_indices().nth(KEEP).map_or(name.len(), |(i, _)| i);
    let tail = name
        .char_indices()
        .rev()
        .nth(KEEP - 1)
        .map_or(0, |(i, _)| i);
    format!("{:?}", format!("{}...{}", &name[..head], &name[tail..]))
}

/// Sets `key` in an environment list, replacing an earlier value.
pub(crate) fn set_var(env: &mut Vec<(String, String)>, key: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_owned(), value)),
    }
}

/// Validates `spec`; `extra_env` (the `SWARMEXEC_*` variables) is added to the
/// program's environment.
pub(crate) fn launch(
    spec: &ProcessSpec,
    extra_env: Vec<(String, String)>,
) -> Result<Launch, Error> {
    let Some(argv0) = spec.command.first() else {
        return Err(invalid("command is empty"));
    };
    if argv0.is_empty() {
        return Err(invalid(
            "the program name (the command's first word) is empty",
        ));
    }
    if spec.command.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("command contains NUL"));
    }
    let env = environment(spec, extra_env)?;
    let dir = spec.dir.clone();
    if let Some(dir) = &dir {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(invalid(format!(
                    "working directory {} is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(format!(
                    "working directory {} does not exist",
                    dir.display()
                )))
            }
            Err(e) => return Err(invalid(format!("working directory {}: {e}", dir.display()))),
        }
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v);
    let program = find_program(argv0, path, dir.as_deref())?;
    let stop_signal = match &spec.stop_signal {
        None => libc::SIGTERM,
        Some(name) => sys::parse_signal(name)
            .ok_or_else(|| invalid(format!("unknown stop signal {name:?}")))?,
    };
    for limit in &spec.rlimits {
        if limit.soft > limit.hard {
            return Err(invalid(format!(
                "{:?} limit: soft {} exceeds hard {}",
                limit.resource, limit.soft, limit.hard
            )));
        }
    }
    check_references(spec)?;
    let stop_grace = spec.stop_grace_period.unwrap_or(DEFAULT_STOP_GRACE);
    crate::time::check("stop grace period", stop_grace)?;
    let health = match &spec.healthcheck {
        Some(check) => Some(Arc::new(health_plan(check, path, dir.as_deref())?)),
        None => None,
    };
    Ok(Launch {
        program,
        argv: spec.command.clone(),
        env,
        dir,
        credentials: credentials(spec.user.as_deref(), spec.group.as_deref())?,
        stop_signal,
        stop_grace,
        rlimits: spec.rlimits.clone(),
        limits: Limits::default(),
        stdin: spec.stdin.clone(),
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        health,
    })
}

/// Docker's health-check defaults.
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
const HEALTH_START_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_RETRIES: u32 = 3;

/// Validates a health check: a probe that exists, durations above zero, at least
/// one retry; Docker's defaults for what is not set.
fn health_plan(check: &HealthCheck, path: &str, dir: Option<&Path>) -> Result<HealthPlan, Error> {
    let argv = match &check.test {
        HealthTest::Command(argv) if argv.first().is_some_and(|a| !a.is_empty()) => argv.clone(),
        HealthTest::Shell(line) if !line.trim().is_empty() => {
            vec!["sh".to_owned(), "-c".to_owned(), line.clone()]
        }
        _ => return Err(invalid("the health check's probe command is empty")),
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid("the health check's probe command contains NUL"));
    }
    let program = find_program(&argv[0], path, dir).map_err(|e| match e {
        Error::ProgramNotFound(p) => invalid(format!(
            "the health check's probe program {p:?} does not exist"
        )),
        Error::ProgramNotExecutable(p) => invalid(format!(
            "the health check's probe program {p:?} is not executable"
        )),
        other => other,
    })?;
    let duration = |name: &str, value: Option<Duration>, default: Duration| match value {
        Some(d) if d.is_zero() => Err(invalid(format!(
            "the health check's {name} must be above zero"
        ))),
        Some(d) => crate::time::check(&format!("the health check's {name}"), d).map(|()| d),
        None => Ok(default),
    };
    let start_period = check.start_period.unwrap_or(Duration::ZERO);
    crate::time::check("the health check's start period", start_period)?;
    let retries = match check.retries {
        Some(0) => return Err(invalid("the health check's retries must be at least 1")),
        Some(n) => n,
        None => HEALTH_RETRIES,
    };
    Ok(HealthPlan {
        program,
        argv,
        interval: duration("interval", check.interval, HEALTH_INTERVAL)?,
        timeout: duration("timeout", check.timeout, HEALTH_TIMEOUT)?,
        start_period,
        start_interval: duration(
            "start interval",
            check.start_interval,
            HEALTH_START_INTERVAL,
        )?,
        retries,
    })
}

/// The program's environment: the host's only when asked, then a default `PATH`,
/// then the spec's entries, then ours (later entries win).
fn environment(
    spec: &ProcessSpec,
    extra: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Error> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: String, value: String| set_var(&mut env, &key, value);
    if spec.inherit_env {
        std::env::vars().for_each(|(k, v)| set(k, v));
    } else {
        set("PATH".into(), DEFAULT_PATH.into());
    }
    for (index, entry) in spec.env.iter().enumerate() {
        // The entry is not echoed: its value may be a credential.
        let parsed = entry
            .split_once('=')
            .filter(|(key, _)| !key.is_empty() && !entry.contains('\0'));
        let Some((key, value)) = parsed else {
            return Err(invalid(format!("env entry {index} is not KEY=VALUE")));
        };
        set(key.to_owned(), value.to_owned());
    }
    extra.into_iter().for_each(|(k, v)| set(k, v));
    Ok(env)
}

/// Finds `name` as `execvp` would, but up front, so that a missing program rejects
/// the task instead of failing it at start.
fn find_program(name: &str, path: &str, dir: Option<&Path>) -> Result<PathBuf, Error> {
    if name.contains('/') {
        let candidate = match dir {
            Some(dir) if !name.starts_with('/') => dir.join(name),
            _ => PathBuf::from(name),
        };
        return match executable(&candidate) {
            Some(true) => Ok(candidate),
            Some(false) => Err(Error::ProgramNotExecutable(name.to_owned())),
            None => Err(Error::ProgramNotFound(name.to_owned())),
        };
    }
    let mut found_unexecutable = false;
    for entry in path.split(':').filter(|e| !e.is_empty()) {
        let candidate = Path::new(entry).join(name);
        match executable(&candidate) {
            Some(true) => return Ok(candidate),
            Some(false) => found_unexecutable = true,
            None => {}
        }
    }
    if found_unexecutable {
        Err(Error::ProgramNotExecutable(name.to_owned()))
    } else {
        Err(Error::ProgramNotFound(name.to_owned()))
    }
}

/// `None` when nothing is there; otherwise whether it is an executable file.
fn executable(path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    Some(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn credentials(user: Option<&str>, group: Option<&str>) -> Result<Option<(u32, u32)>, Error> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, user_gid) = match user {
        None => (sys::effective_uid(), None),
        Some(user) => match user.parse::<u32>() {
            Ok(uid) => (uid, None),
            Err(_) => match sys::user_by_name(user) {
                Ok(Some(entry)) => (entry.uid, Some(entry.gid)),
                Ok(None) => return Err(invalid(format!("unknown user {user:?}"))),
                Err(e) => return Err(invalid(format!("cannot look up user {user:?}: {e}"))),
            },
        },
    };
    let gid = match group {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match sys::lookup_group(group) {
                Ok(Some(gid)) => gid,
                Ok(None) => return Err(invalid(format!("unknown group {group:?}"))),
                Err(e) => return Err(invalid(format!("cannot look up group {group:?}: {e}"))),
            },
        },
        // A numeric uid brings no group of its own: keep it in the group of its id.
        None => user_gid.unwrap_or(uid),
    };
    if sys::effective_uid() != 0 {
        return Err(invalid("running as another user or group needs root"));
    }
    Ok(Some((uid, gid)))
}

fn check_references(spec: &ProcessSpec) -> Result<(), Error> {
    let secrets = spec.secrets.iter().map(|r| ("secret", r.target.as_str()));
    let configs = spec.configs.iter().map(|r| ("config", r.target.as_str()));
    let mut seen = HashSet::new();
    for (kind, target) in secrets.chain(configs) {
        check_file_name(&format!("{kind} target"), target)?;
        if !seen.insert((kind, target)) {
            return Err(invalid(format!("{kind} target {target:?} is used twice")));
        }
    }
    Ok(())
}
