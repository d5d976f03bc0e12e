//! The data model's wire values, names and redacted Debug output.

use swarmexec::api::*;
use swarmexec::Error;

const WIRE: [(TaskState, i32, &str); 14] = [
    (TaskState::New, 0, "NEW"),
    (TaskState::Pending, 64, "PENDING"),
    (TaskState::Assigned, 192, "ASSIGNED"),
    (TaskState::Accepted, 256, "ACCEPTED"),
    (TaskState::Preparing, 320, "PREPARING"),
    (TaskState::Ready, 384, "READY"),
    (TaskState::Starting, 448, "STARTING"),
    (TaskState::Running, 512, "RUNNING"),
    (TaskState::Completed, 576, "COMPLETE"),
    (TaskState::Shutdown, 640, "SHUTDOWN"),
    (TaskState::Failed, 704, "FAILED"),
    (TaskState::Rejected, 768, "REJECTED"),
    (TaskState::Remove, 800, "REMOVE"),
    (TaskState::Orphaned, 832, "ORPHANED"),
];

#[test]
fn task_states_have_the_reference_wire_values_and_names() {
    for (state, value, name) in WIRE {
        assert_eq!(state as i32, value);
        assert_eq!(state.to_string(), name);
        assert_eq!(TaskState::try_from(value).unwrap(), state);
        assert_eq!(name.parse::<TaskState>().unwrap(), state);
        assert_eq!(name.to_lowercase().parse::<TaskState>().unwrap(), state);
    }
    assert_eq!(TaskState::ALL.map(|s| s as i32), WIRE.map(|(_, v, _)| v));
    assert!(
        TaskState::ALL.windows(2).all(|w| w[0] < w[1]),
        "ordered by wire value"
    );
    assert_eq!(TaskState::default(), TaskState::New);
}

#[test]
fn unknown_states_are_refused_by_name() {
    let err = "RUNNIN".parse::<TaskState>().unwrap_err();
    assert!(matches!(err, Error::UnknownTaskState(_)));
    assert_eq!(err.to_string(), "unknown task state \"RUNNIN\"");
    assert_eq!(
        TaskState::try_from(65).unwrap_err().to_string(),
        "unknown task state \"65\""
    );
}

#[test]
fn terminal_states() {
    for state in TaskState::ALL {
        assert_eq!(
            state.is_terminal(),
            state >= TaskState::Completed,
            "{state}"
        );
    }
}

#[test]
fn debug_output_never_prints_secret_bytes() {
    let secret = Secret {
        id: "db-password".into(),
        data: b"hunter2-very-secret".to_vec(),
        ..Default::default()
    };
    let config = Config {
        id: "app-config".into(),
        data: b"token=abcdef".to_vec(),
        ..Default::default()
    };
    let key = EncryptionKey {
        subsystem: "networking".into(),
        key: b"KEYBYTES".to_vec(),
        ..Default::default()
    };
    for (debug, payload, id) in [
        (
            format!("{secret:?} {secret:#?}"),
            &secret.data,
            "db-password",
        ),
        (
            format!("{config:?} {config:#?}"),
            &config.data,
            "app-config",
        ),
        (format!("{key:?} {key:#?}"), &key.key, "networking"),
    ] {
        assert!(debug.contains(id), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let text = String::from_utf8_lossy(payload);
        assert!(!debug.contains(&*text), "{debug}");
        let numbers = format!("{payload:?}");
        assert!(!debug.contains(numbers.trim_matches(['[', ']'])), "{debug}");
    }
}

#[test]
fn specs_expose_the_references_of_their_runtime() {
    let secret = SecretReference {
        secret_id: "s".into(),
        target: "s.txt".into(),
        ..Default::default()
    };
    let config = ConfigReference {
        config_id: "c".into(),
        target: "c.txt".into(),
        ..Default::default()
    };
    let process = TaskSpec {
        runtime: Some(Runtime::Process(ProcessSpec {
            secrets: vec![secret.clone()],
            configs: vec![config.clone()],
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(process.secret_references(), std::slice::from_ref(&secret));
    assert_eq!(process.config_references(), std::slice::from_ref(&config));
    let container = TaskSpec {
        runtime: Some(Runtime::Container(ContainerSpec {
            secrets: vec![secret.clone()],
            ..Default::default()
        })),
        ..Default::default()
    };
    assert_eq!(container.secret_references(), [secret]);
    assert!(container.config_references().is_empty());
    assert!(TaskSpec::default().secret_references().is_empty());
    let generic = TaskSpec {
        runtime: Some(Runtime::Generic(GenericRuntimeSpec::default())),
        ..Default::default()
    };
    assert!(generic.config_references().is_empty());
}

#[test]
fn log_options_select_streams() {
    let all = LogSubscriptionOptions::default();
    assert!(all.wants(LogStream::Stdout) && all.wants(LogStream::Stderr));
    let stderr = LogSubscriptionOptions {
        streams: vec![LogStream::Stderr],
        ..Default::default()
    };
    assert!(!stderr.wants(LogStream::Stdout) && stderr.wants(LogStream::Stderr));
}
