//! SwarmKit's tasks as the process executor runs them.
//!
//! A task's `ContainerSpec` becomes a [`ProcessSpec`]: argv is `Command` then
//! `Args`; `Env`, `Dir`, `User` and `Groups`, `StopSignal`, `StopGracePeriod`,
//! `Healthcheck` and the file targets of secrets and configs map directly;
//! `Resources.Limits` become cgroup limits. The image is never pulled or run.
//! Whatever a process cannot honour (mounts, networks, published ports,
//! privileges, an init, a terminal, ...) rejects the task with an error naming the
//! field, never ignored. Statuses go back the other way.

use std::ffi::OsString;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use swarmexec::api::{
    self as local, Annotations, ConfigReference, HealthCheck, HealthTest, Limits, ProcessSpec,
    ResourceRequirements, Runtime, SecretReference, TaskSpec, TaskState,
};

use super::proto::api;

/// Who a task may run as.
#[derive(Clone, Debug)]
pub(crate) struct UserPolicy {
    /// The user of a task that names none.
    pub(crate) default_user: String,
    /// Whether a task may run as root.
    pub(crate) allow_root: bool,
}

/// The task as the process executor runs it, or why no process can run it.
pub(crate) fn convert(task: &api::Task, policy: &UserPolicy) -> Result<local::Task, String> {
    let (spec, resources) = process_spec(task, policy)?;
    Ok(local::Task {
        id: task.id.clone(),
        service_id: task.service_id.clone(),
        node_id: task.node_id.clone(),
        slot: task.slot,
        annotations: Annotations {
            name: name(task),
            ..annotations(task.annotations.as_ref())
        },
        desired_state: state(task.desired_state),
        status: task
            .status
            .as_ref()
            .map(status_from_wire)
            .unwrap_or_default(),
        spec: TaskSpec {
            runtime: Some(Runtime::Process(spec)),
            resources,
        },
    })
}

/// The image a task names, for its status message.
pub(crate) fn image(task: &api::Task) -> Option<&str> {
    match task.spec.as_ref()?.runtime.as_ref()? {
        api::task_spec::Runtime::Container(c) if !c.image.is_empty() => Some(&c.image),
        _ => None,
    }
}

/// The state a wire value names; an unknown one is taken as `Running` would be
/// wrong, so it is the safe `Shutdown`.
pub(crate) fn state(value: i32) -> TaskState {
    TaskState::try_from(value).unwrap_or(TaskState::Shutdown)
}

/// The task's name as Docker shows it: `SERVICE.SLOT` (`SERVICE.NODE` for a
/// global service's), unless the task has a name of its own.
fn name(task: &api::Task) -> String {
    if let Some(name) = task
        .annotations
        .as_ref()
        .map(|a| &a.name)
        .filter(|n| !n.is_empty())
    {
        return name.clone();
    }
    let service = task
        .service_annotations
        .as_ref()
        .map_or("", |a| a.name.as_str());
    match task.slot {
        0 => format!("{service}.{}", task.node_id),
        slot => format!("{service}.{slot}"),
    }
}

fn annotations(annotations: Option<&api::Annotations>) -> Annotations {
    annotations
        .map(|a| Annotations {
            name: a.name.clone(),
            labels: a.labels.clone().into_iter().collect(),
        })
        .unwrap_or_default()
}

fn process_spec(
    task: &api::Task,
    policy: &UserPolicy,
) -> Result<(ProcessSpec, Option<ResourceRequirements>), String> {
    let spec = task.spec.as_ref().ok_or("the task has no spec")?;
    let container = match &spec.runtime {
        Some(api::task_spec::Runtime::Container(container)) => container,
        Some(api::task_spec::Runtime::Attachment(_)) => {
            return Err("network attachment tasks need a network: a process node has none".into())
        }
        Some(api::task_spec::Runtime::Generic(g)) => {
            return Err(format!(
                "runtime {:?} is not supported by a process node",
                g.kind
            ))
        }
        None => return Err("the task has no runtime".into()),
    };
    refuse_unsupported(task, spec, container)?;
    let (user, group) = user_and_group(&container.user, policy)?;
    let process = ProcessSpec {
        command: command(container)?,
        env: environment(&container.env)?,
        dir: (!container.dir.is_empty()).then(|| container.dir.clone().into()),
        user: Some(user),
        group,
        groups: container.groups.clone(),
        secrets: container
            .secrets
            .iter()
            .map(secret)
            .collect::<Result<_, _>>()?,
        configs: container
            .configs
            .iter()
            .map(config)
            .collect::<Result<_, _>>()?,
        stop_signal: stop_signal(&container.stop_signal)?,
        stop_grace_period: container
            .stop_grace_period
            .as_ref()
            .map(|d| duration("StopGracePeriod", d))
            .transpose()?,
        healthcheck: container
            .healthcheck
            .as_ref()
            .map(healthcheck)
            .transpose()?
            .flatten(),
        ..Default::default()
    };
    Ok((process, resources(spec, container)?))
}

/// Refuses what a process cannot do, naming the field.
fn refuse_unsupported(
    task: &api::Task,
    spec: &api::TaskSpec,
    c: &api::ContainerSpec,
) -> Result<(), String> {
    let privileges = c
        .privileges
        .as_ref()
        .is_some_and(|p| p.credential_spec.is_some() || p.selinux_context.is_some());
    // Docker's CLI always sends a DNS config, empty unless asked for.
    let dns = c.dns_config.as_ref().is_some_and(|d| {
        !d.nameservers.is_empty() || !d.search.is_empty() || !d.options.is_empty()
    });
    let isolation = c.isolation != api::container_spec::Isolation::Default as i32;
    let ports = task.endpoint.as_ref().is_some_and(|e| !e.ports.is_empty());
    let unsupported = [
        (!c.mounts.is_empty(), "Mounts"),
        (
            !spec.networks.is_empty() || !task.networks.is_empty(),
            "Networks",
        ),
        (ports, "published ports (EndpointSpec.Ports)"),
        (privileges, "Privileges"),
        (c.init == Some(true), "Init"),
        (c.tty, "TTY"),
        (c.open_stdin, "OpenStdin"),
        (c.read_only, "ReadOnly"),
        (!c.hostname.is_empty(), "Hostname"),
        (!c.hosts.is_empty(), "Hosts"),
        (dns, "DNSConfig"),
        (!c.sysctls.is_empty(), "Sysctls"),
        (!c.capability_add.is_empty(), "CapabilityAdd"),
        (!c.capability_drop.is_empty(), "CapabilityDrop"),
        (!c.ulimits.is_empty(), "Ulimits"),
        (isolation, "Isolation"),
    ];
    match unsupported.iter().find(|(present, _)| *present) {
        Some((_, field)) => Err(format!(
            "{field} is not supported by a process node: a task runs as a plain process, \
             with no container around it"
        )),
        None => Ok(()),
    }
}

fn command(c: &api::ContainerSpec) -> Result<Vec<OsString>, String> {
    let argv: Vec<OsString> = c
        .command
        .iter()
        .chain(&c.args)
        .map(OsString::from)
        .collect();
    if argv.is_empty() {
        return Err("no command: a process node has no image entrypoint".into());
    }
    Ok(argv)
}

fn environment(env: &[String]) -> Result<Vec<(OsString, OsString)>, String> {
    env.iter()
        .map(|entry| match entry.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
            _ => Err(format!("Env entry {entry:?} is not NAME=VALUE")),
        })
        .collect()
}

/// Docker's `user[:group]`, with the node's policy applied.
fn user_and_group(text: &str, policy: &UserPolicy) -> Result<(String, Option<String>), String> {
    let text = if text.is_empty() {
        policy.default_user.as_str()
    } else {
        text
    };
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group.to_owned())),
        None => (text, None),
    };
    if !policy.allow_root && is_root(user) {
        return Err(format!(
            "the task would run as root (User {user:?}): this node was started without \
             --allow-root"
        ));
    }
    Ok((user.to_owned(), group))
}

/// Whether `user` (a name or a numeric id) is uid 0.
fn is_root(user: &str) -> bool {
    if let Ok(uid) = user.parse::<u32>() {
        return uid == 0;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    user == "root"
        || passwd.lines().any(|line| {
            let mut fields = line.split(':');
            fields.next() == Some(user) && fields.nth(1) == Some("0")
        })
}

/// A file target's name, in the task's own directory: a plain name, or one
/// under the directory Docker would use (`/run/secrets` for secrets, `/` for
/// configs).
fn file_name(kind: &str, name: &str, docker_dir: &str) -> Result<String, String> {
    let bare = name.strip_prefix(docker_dir).unwrap_or(name);
    if bare.is_empty() || bare.contains('/') {
        return Err(format!(
            "{kind} target {name:?}: a process node puts {kind}s in the task's own directory, \
             so a target is a file name"
        ));
    }
    Ok(bare.to_owned())
}

fn file_target<'a>(
    kind: &str,
    name: &str,
    file: Option<&'a api::FileTarget>,
) -> Result<&'a api::FileTarget, String> {
    file.ok_or_else(|| {
        format!("{kind} {name:?} has no file target: a process node takes only files")
    })
}

fn secret(reference: &api::SecretReference) -> Result<SecretReference, String> {
    use api::secret_reference::Target;
    let file = match &reference.target {
        Some(Target::File(file)) => Some(file),
        _ => None,
    };
    let file = file_target("secret", &reference.secret_name, file)?;
    Ok(SecretReference {
        secret_id: reference.secret_id.clone(),
        secret_name: reference.secret_name.clone(),
        target: file_name("secret", &file.name, "/run/secrets/")?,
        mode: Some(file.mode),
    })
}

fn config(reference: &api::ConfigReference) -> Result<ConfigReference, String> {
    use api::config_reference::Target;
    let file = match &reference.target {
        Some(Target::File(file)) => Some(file),
        _ => None,
    };
    let file = file_target("config", &reference.config_name, file)?;
    Ok(ConfigReference {
        config_id: reference.config_id.clone(),
        config_name: reference.config_name.clone(),
        target: file_name("config", &file.name, "/")?,
        mode: Some(file.mode),
    })
}

fn stop_signal(text: &str) -> Result<Option<local::Signal>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e: swarmexec::Error| format!("StopSignal: {e}"))
}

/// A wire duration, refusing a negative or out-of-range one.
fn duration(field: &str, d: &prost_types::Duration) -> Result<Duration, String> {
    let seconds = u64::try_from(d.seconds).ok();
    let nanos = u32::try_from(d.nanos).ok().filter(|n| *n < 1_000_000_000);
    match (seconds, nanos) {
        (Some(s), Some(n)) => Ok(Duration::new(s, n)),
        _ => Err(format!("{field} is negative or out of range")),
    }
}

/// The health check, `None` for `NONE` or none; zero durations are Docker's
/// defaults.
fn healthcheck(h: &api::HealthConfig) -> Result<Option<HealthCheck>, String> {
    let test = match h.test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => {
            HealthTest::Command(rest.iter().map(OsString::from).collect())
        }
        Some((kind, [line])) if kind == "CMD-SHELL" => HealthTest::Shell(line.into()),
        Some((kind, _)) => {
            return Err(format!(
                "Healthcheck test {kind:?} with these arguments is not CMD ARGS..., \
                 CMD-SHELL LINE or NONE"
            ))
        }
    };
    let optional = |field: &str, d: &Option<prost_types::Duration>| {
        d.as_ref()
            .map(|d| duration(field, d))
            .transpose()
            .map(|d| d.filter(|d| !d.is_zero()))
    };
    let retries = u32::try_from(h.retries).map_err(|_| "Healthcheck retries is negative")?;
    Ok(Some(HealthCheck {
        test,
        interval: optional("Healthcheck interval", &h.interval)?,
        timeout: optional("Healthcheck timeout", &h.timeout)?,
        start_period: optional("Healthcheck start period", &h.start_period)?,
        retries: (retries > 0).then_some(retries),
        ..Default::default()
    }))
}

fn resources(
    spec: &api::TaskSpec,
    c: &api::ContainerSpec,
) -> Result<Option<ResourceRequirements>, String> {
    let limits = spec.resources.as_ref().and_then(|r| r.limits.as_ref());
    let wanted = Limits {
        nano_cpus: limits.map_or(0, |l| l.nano_cpus),
        memory_bytes: limits.map_or(0, |l| l.memory_bytes),
        pids: c.pids_limit,
    };
    if limits.is_some_and(|l| !l.generic.is_empty()) {
        return Err(
            "generic resources (Limits.Generic) are not supported by a process node".into(),
        );
    }
    if wanted.nano_cpus < 0 || wanted.memory_bytes < 0 || wanted.pids < 0 {
        return Err("Resources.Limits has a negative limit".into());
    }
    if wanted == Limits::default() {
        return Ok(None);
    }
    Ok(Some(ResourceRequirements {
        limits: Some(wanted),
        reservations: None,
    }))
}

fn time_from_wire(t: &prost_types::Timestamp) -> Option<SystemTime> {
    let seconds = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

pub(crate) fn time_to_wire(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: since.subsec_nanos() as i32,
    }
}

fn status_from_wire(s: &api::TaskStatus) -> local::TaskStatus {
    local::TaskStatus {
        timestamp: s.timestamp.as_ref().and_then(time_from_wire),
        state: state(s.state),
        message: s.message.clone(),
        err: s.err.clone(),
        ..Default::default()
    }
}

/// A status as the manager takes it; `image` goes in the message.
pub(crate) fn status_to_wire(s: &local::TaskStatus, image: Option<&str>) -> api::TaskStatus {
    let message = match image {
        Some(image) if s.state <= TaskState::Running => {
            format!("{} (image {image} not run: a process node)", s.message)
        }
        _ => s.message.clone(),
    };
    // Docker's worker says a failed task's exit code first.
    let exit_code = s.container.as_ref().map_or(0, |c| c.exit_code);
    let err = match s.state {
        TaskState::Failed if exit_code != 0 => {
            format!("task: non-zero exit ({exit_code}): {}", s.err)
        }
        _ => s.err.clone(),
    };
    api::TaskStatus {
        timestamp: Some(time_to_wire(s.timestamp.unwrap_or_else(SystemTime::now))),
        state: s.state as i32,
        message,
        err,
        runtime_status: s.container.as_ref().map(|c| {
            api::task_status::RuntimeStatus::Container(api::ContainerStatus {
                container_id: c.container_id.clone(),
                pid: c.pid,
                exit_code: c.exit_code,
            })
        }),
        ..Default::default()
    }
}

/// The status that rejects a task.
pub(crate) fn rejection(why: &str) -> local::TaskStatus {
    local::TaskStatus {
        timestamp: Some(SystemTime::now()),
        state: TaskState::Rejected,
        message: "rejected".into(),
        err: why.to_owned(),
        ..Default::default()
    }
}
