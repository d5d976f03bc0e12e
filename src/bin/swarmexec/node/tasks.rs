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

/// A wire timestamp; `None` for one out of range.
pub(crate) fn time_from_wire(t: &prost_types::Timestamp) -> Option<SystemTime> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_root: bool) -> UserPolicy {
        UserPolicy {
            default_user: "nobody".into(),
            allow_root,
        }
    }

    fn task_of(container: api::ContainerSpec) -> api::Task {
        api::Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 2,
            service_annotations: Some(api::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            desired_state: TaskState::Running as i32,
            spec: Some(api::TaskSpec {
                runtime: Some(api::task_spec::Runtime::Container(container)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn process_of(task: &api::Task, allow_root: bool) -> Result<ProcessSpec, String> {
        let task = convert(task, &policy(allow_root))?;
        match task.spec.runtime {
            Some(Runtime::Process(spec)) => Ok(spec),
            other => panic!("not a process: {other:?}"),
        }
    }

    #[test]
    fn argv_is_command_then_args_and_the_rest_maps_directly() {
        let task = task_of(api::ContainerSpec {
            image: "busybox".into(),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "echo hi".into()],
            env: vec!["A=1".into(), "B=x=y".into()],
            dir: "/tmp".into(),
            user: "daemon:adm".into(),
            groups: vec!["users".into()],
            stop_signal: "SIGINT".into(),
            stop_grace_period: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            healthcheck: Some(api::HealthConfig {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval: Some(prost_types::Duration {
                    seconds: 2,
                    nanos: 0,
                }),
                retries: 4,
                ..Default::default()
            }),
            ..Default::default()
        });
        let spec = process_of(&task, false).unwrap();
        assert_eq!(spec.command, ["sh", "-c", "echo hi"]);
        assert_eq!(
            spec.env,
            [("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(spec.dir, Some("/tmp".into()));
        assert_eq!(
            (spec.user.as_deref(), spec.group.as_deref()),
            (Some("daemon"), Some("adm"))
        );
        assert_eq!(spec.groups, ["users"]);
        assert_eq!(spec.stop_signal, Some(local::Signal::INT));
        assert_eq!(spec.stop_grace_period, Some(Duration::from_secs(3)));
        let health = spec.healthcheck.unwrap();
        assert_eq!(health.test, HealthTest::Shell("true".into()));
        assert_eq!(
            (health.interval, health.retries),
            (Some(Duration::from_secs(2)), Some(4))
        );
        assert_eq!(
            convert(&task, &policy(false)).unwrap().annotations.name,
            "web.2"
        );
    }

    #[test]
    fn a_task_without_a_user_runs_as_the_default_and_root_needs_allow_root() {
        let task = task_of(api::ContainerSpec {
            args: vec!["true".into()],
            ..Default::default()
        });
        assert_eq!(
            process_of(&task, false).unwrap().user.as_deref(),
            Some("nobody")
        );
        for root in ["root", "0", "0:0"] {
            let task = task_of(api::ContainerSpec {
                args: vec!["true".into()],
                user: root.into(),
                ..Default::default()
            });
            let error = process_of(&task, false).unwrap_err();
            assert!(error.contains("--allow-root"), "{root}: {error}");
            assert!(process_of(&task, true).is_ok(), "{root}");
        }
    }

    #[test]
    fn what_a_process_cannot_honour_is_rejected_by_name() {
        let base = || api::ContainerSpec {
            args: vec!["true".into()],
            ..Default::default()
        };
        let cases: Vec<(api::ContainerSpec, &str)> = vec![
            (
                api::ContainerSpec {
                    args: vec![],
                    ..base()
                },
                "no command: a process node has no image entrypoint",
            ),
            (
                api::ContainerSpec {
                    mounts: vec![api::Mount::default()],
                    ..base()
                },
                "Mounts",
            ),
            (
                api::ContainerSpec {
                    tty: true,
                    ..base()
                },
                "TTY",
            ),
            (
                api::ContainerSpec {
                    init: Some(true),
                    ..base()
                },
                "Init",
            ),
            (
                api::ContainerSpec {
                    privileges: Some(api::Privileges {
                        selinux_context: Some(Default::default()),
                        ..Default::default()
                    }),
                    ..base()
                },
                "Privileges",
            ),
            (
                api::ContainerSpec {
                    env: vec!["NOEQUALS".into()],
                    ..base()
                },
                "NAME=VALUE",
            ),
            (
                api::ContainerSpec {
                    stop_signal: "SIGNOPE".into(),
                    ..base()
                },
                "StopSignal",
            ),
        ];
        for (container, named) in cases {
            let error = process_of(&task_of(container), true).unwrap_err();
            assert!(error.contains(named), "{named}: {error}");
        }
        let mut networked = task_of(base());
        networked.spec.as_mut().unwrap().networks = vec![Default::default()];
        assert!(process_of(&networked, true)
            .unwrap_err()
            .contains("Networks"));
        // Docker's CLI always sends an empty DNS config: not a request.
        let dns = task_of(api::ContainerSpec {
            dns_config: Some(Default::default()),
            ..base()
        });
        assert!(process_of(&dns, true).is_ok());
    }

    #[test]
    fn file_targets_are_names_in_the_tasks_own_directory() {
        assert_eq!(file_name("secret", "db", "/run/secrets/").unwrap(), "db");
        assert_eq!(
            file_name("secret", "/run/secrets/db", "/run/secrets/").unwrap(),
            "db"
        );
        assert_eq!(file_name("config", "/app.conf", "/").unwrap(), "app.conf");
        assert!(file_name("config", "/etc/app/app.conf", "/").is_err());
    }

    #[test]
    fn a_failed_tasks_error_starts_with_its_exit_code_as_dockers_does() {
        let status = local::TaskStatus {
            state: TaskState::Failed,
            err: "out of memory (OOMKilled)".into(),
            container: Some(local::ContainerStatus {
                exit_code: 137,
                ..Default::default()
            }),
            ..Default::default()
        };
        let wire = status_to_wire(&status, Some("busybox"));
        assert_eq!(
            wire.err,
            "task: non-zero exit (137): out of memory (OOMKilled)"
        );
        assert_eq!(wire.state, TaskState::Failed as i32);
    }
}
