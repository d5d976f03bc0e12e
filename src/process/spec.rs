//! Checks a [`ProcessSpec`] and turns it into a [`Launch`]: everything needed to
//! spawn, resolved and validated up front so that `start` cannot fail on bad input.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::health::HealthPlan;
use super::sys;
use crate::api::{
    HealthCheck, HealthTest, InputSource, Limits, OutputSink, ProcessSpec, Rlimit, SharedFd,
    Signal, SignalTarget,
};
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
    pub(crate) argv: Vec<OsString>,
    /// The program's whole environment.
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) dir: Option<PathBuf>,
    /// The uid and gid to run as, when the spec names a user or group.
    pub(crate) credentials: Option<(u32, u32)>,
    /// The supplementary groups to run with, along with `credentials`.
    pub(crate) groups: Vec<u32>,
    pub(crate) stop_signal: Signal,
    pub(crate) signal_target: SignalTarget,
    pub(crate) stop_grace: Duration,
    pub(crate) rlimits: Vec<Rlimit>,
    /// The task's resource limits, checked against what the host can enforce.
    pub(crate) limits: Limits,
    pub(crate) stdin: InputSource,
    pub(crate) stdout: OutputSink,
    pub(crate) stderr: OutputSink,
    pub(crate) extra_fds: Vec<SharedFd>,
    pub(crate) foreground: bool,
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
pub(crate) fn set_var(env: &mut Vec<(OsString, OsString)>, key: &OsStr, value: OsString) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key.to_owned(), value)),
    }
}

/// Validates `spec`; `extra_env` (the `SWARMEXEC_*` variables) is added to the
/// program's environment.
pub(crate) fn launch(
    spec: &ProcessSpec,
    extra_env: Vec<(OsString, OsString)>,
) -> Result<Launch, Error> {
    let Some(argv0) = spec.command.first() else {
        return Err(invalid("command is empty"));
    };
    if argv0.is_empty() {
        // What a shell says of an empty command name: not found.
        return Err(Error::ProgramNotFound(
            "\"\" (the program name, the command's first word, is empty)".to_owned(),
        ));
    }
    if spec.command.iter().any(|arg| has_nul(arg)) {
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
        .map_or(OsStr::new(DEFAULT_PATH), |(_, v)| v.as_os_str());
    let program = find_program(argv0, path, dir.as_deref())?;
    let stop_signal = spec.stop_signal.unwrap_or(Signal::TERM);
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
    let (credentials, groups) =
        match credentials(spec.user.as_deref(), spec.group.as_deref(), &spec.groups)? {
            Some(Credentials { uid, gid, groups }) => (Some((uid, gid)), groups),
            None => (None, Vec::new()),
        };
    Ok(Launch {
        program,
        argv: spec.command.clone(),
        env,
        dir,
        credentials,
        groups,
        stop_signal,
        signal_target: spec.signal_target,
        stop_grace,
        rlimits: spec.rlimits.clone(),
        limits: Limits::default(),
        stdin: spec.stdin.clone(),
        stdout: spec.stdout.clone(),
        stderr: spec.stderr.clone(),
        extra_fds: spec.extra_fds.clone(),
        foreground: spec.foreground,
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
fn health_plan(check: &HealthCheck, path: &OsStr, dir: Option<&Path>) -> Result<HealthPlan, Error> {
    let blank = |line: &OsStr| line.as_bytes().iter().all(u8::is_ascii_whitespace);
    let argv = match &check.test {
        HealthTest::Command(argv) if argv.first().is_some_and(|a| !a.is_empty()) => argv.clone(),
        HealthTest::Shell(line) if !blank(line) => {
            vec!["sh".into(), "-c".into(), line.clone()]
        }
        _ => return Err(invalid("the health check's probe command is empty")),
    };
    if argv.iter().any(|a| has_nul(a)) {
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
    extra: Vec<(OsString, OsString)>,
) -> Result<Vec<(OsString, OsString)>, Error> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |key: OsString, value: OsString| set_var(&mut env, &key, value);
    if spec.inherit_env {
        std::env::vars_os().for_each(|(k, v)| set(k, v));
    } else {
        set("PATH".into(), DEFAULT_PATH.into());
    }
    for (index, (key, value)) in spec.env.iter().enumerate() {
        // Neither is echoed: the value may be a credential, the name says which.
        let key_bytes = key.as_bytes();
        if key_bytes.is_empty() || key_bytes.contains(&b'=') || has_nul(key) {
            return Err(invalid(format!(
                "env entry {index}: the name is empty or holds '=' or NUL"
            )));
        }
        if has_nul(value) {
            return Err(invalid(format!("env entry {index}: the value holds NUL")));
        }
        set(key.clone(), value.clone());
    }
    extra.into_iter().for_each(|(k, v)| set(k, v));
    Ok(env)
}

fn has_nul(text: &OsStr) -> bool {
    text.as_bytes().contains(&0)
}

/// Finds `name` as `execvp` would, but up front, so that a missing program rejects
/// the task instead of failing it at start.
fn find_program(name: &OsStr, path: &OsStr, dir: Option<&Path>) -> Result<PathBuf, Error> {
    let shown = name.to_string_lossy().into_owned();
    let name_bytes = name.as_bytes();
    if name_bytes.contains(&b'/') {
        let candidate = match dir {
            Some(dir) if !name_bytes.starts_with(b"/") => dir.join(name),
            _ => PathBuf::from(name),
        };
        return match executable(&candidate) {
            Some(true) => Ok(candidate),
            Some(false) => Err(Error::ProgramNotExecutable(shown)),
            None => Err(Error::ProgramNotFound(shown)),
        };
    }
    let mut found_unexecutable = false;
    let entries = path.as_bytes().split(|b| *b == b':');
    for entry in entries.filter(|e| !e.is_empty()) {
        let candidate = Path::new(OsStr::from_bytes(entry)).join(name);
        match executable(&candidate) {
            Some(true) => return Ok(candidate),
            Some(false) => found_unexecutable = true,
            None => {}
        }
    }
    if found_unexecutable {
        Err(Error::ProgramNotExecutable(shown))
    } else {
        Err(Error::ProgramNotFound(shown))
    }
}

/// `None` when nothing is there; otherwise whether it is an executable file.
fn executable(path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    Some(meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Who a program runs as.
struct Credentials {
    uid: u32,
    gid: u32,
    /// Supplementary groups.
    groups: Vec<u32>,
}

/// The credentials `user`, `group` and `extra` name, as Docker resolves them: a
/// user by name or id (a numeric one needs no entry in the user database; then
/// its group is 0, unless `group` says), its primary group unless `group` names
/// another, the supplementary groups the group database gives a user with an
/// entry (as `initgroups` would) and `extra`. `None` when nothing is named.
fn credentials(
    user: Option<&str>,
    group: Option<&str>,
    extra: &[String],
) -> Result<Option<Credentials>, Error> {
    if user.is_none() && group.is_none() && extra.is_empty() {
        return Ok(None);
    }
    let lookup = |user: &str| -> Result<Option<sys::UserEntry>, Error> {
        let found = match user.parse::<u32>() {
            Ok(uid) => sys::user_by_uid(uid),
            Err(_) => sys::user_by_name(user),
        };
        found.map_err(|e| invalid(format!("cannot look up user {user:?}: {e}")))
    };
    let entry = match user {
        Some(user) => lookup(user)?,
        None => None,
    };
    let uid = match (user, &entry) {
        (_, Some(entry)) => entry.uid,
        (Some(user), None) => user
            .parse::<u32>()
            .map_err(|_| invalid(format!("unknown user {user:?}")))?,
        (None, None) => sys::effective_uid(),
    };
    let gid = match (group, &entry) {
        (Some(group), _) => group_id(group)?,
        (None, Some(entry)) => entry.gid,
        // A numeric uid with no entry is in group 0, as Docker has it.
        (None, None) if user.is_some() => 0,
        (None, None) => sys::effective_gid(),
    };
    let mut groups = match &entry {
        Some(entry) => sys::group_list(&entry.name, gid).map_err(|e| {
            invalid(format!(
                "cannot look up the groups of user {:?}: {e}",
                entry.name
            ))
        })?,
        None => Vec::new(),
    };
    for group in extra {
        groups.push(group_id(group)?);
    }
    groups.sort_unstable();
    groups.dedup();
    if sys::effective_uid() != 0 {
        return Err(invalid("running as another user or group needs root"));
    }
    Ok(Some(Credentials { uid, gid, groups }))
}

/// The id of the group `group`, a name or a number (which needs no entry).
fn group_id(group: &str) -> Result<u32, Error> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match sys::lookup_group(group) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(invalid(format!("unknown group {group:?}"))),
        Err(e) => Err(invalid(format!("cannot look up group {group:?}: {e}"))),
    }
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
