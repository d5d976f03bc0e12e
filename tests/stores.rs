//! The in-memory secrets and configs stores and their per-task views.

use std::sync::Arc;
use std::thread;

use swarmexec::api::*;
use swarmexec::executor::DependencyStore;
use swarmexec::{ConfigsProvider, DependencyGetter, DependencyManager, Error, SecretsProvider};

fn secret(id: &str, data: &str) -> Secret {
    Secret {
        id: id.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn config(id: &str, data: &str) -> Config {
    Config {
        id: id.into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn task_referencing(secrets: &[&str], configs: &[&str]) -> Task {
    let spec = ProcessSpec {
        secrets: secrets
            .iter()
            .map(|id| SecretReference {
                secret_id: id.to_string(),
                ..Default::default()
            })
            .collect(),
        configs: configs
            .iter()
            .map(|id| ConfigReference {
                config_id: id.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    Task {
        spec: TaskSpec {
            runtime: Some(Runtime::Process(spec)),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn add_get_remove_reset() {
    let store = DependencyStore::new();
    store
        .secrets()
        .add(vec![secret("a", "1"), secret("b", "2")]);
    store.configs().add(vec![config("c", "3")]);
    assert_eq!(store.secrets().get("a").unwrap().data, b"1");
    store.secrets().add(vec![secret("a", "replaced")]);
    assert_eq!(store.secrets().get("a").unwrap().data, b"replaced");
    store
        .secrets()
        .remove(&["a".to_string(), "unknown".to_string()]);
    let missing = store.secrets().get("a").unwrap_err();
    assert!(matches!(missing, Error::NotFound { kind: "secret", .. }));
    assert_eq!(missing.to_string(), "secret a not found");
    store.secrets().reset();
    assert!(store.secrets().get("b").is_err());
    assert_eq!(
        store.configs().get("c").unwrap().data,
        b"3",
        "configs are separate"
    );
    store.configs().reset();
    assert_eq!(
        store.configs().get("c").unwrap_err().to_string(),
        "config c not found"
    );
}

#[test]
fn a_task_view_reads_only_what_the_task_references() {
    let store = DependencyStore::new();
    store.secrets().add(vec![
        secret("mine", "ok"),
        secret("theirs", "top-secret-bytes"),
    ]);
    store
        .configs()
        .add(vec![config("cfg-mine", "x"), config("cfg-theirs", "y")]);
    let view = store.restrict(&task_referencing(&["mine"], &["cfg-mine"]));

    assert_eq!(view.secrets().get("mine").unwrap().data, b"ok");
    assert_eq!(view.configs().get("cfg-mine").unwrap().data, b"x");

    let refused = view.secrets().get("theirs").unwrap_err();
    assert_eq!(
        refused.to_string(),
        "task not authorized to access secret theirs"
    );
    let debug = format!("{refused:?}");
    assert!(!debug.contains("top-secret"), "{debug}");
    assert_eq!(
        view.configs().get("cfg-theirs").unwrap_err().to_string(),
        "task not authorized to access config cfg-theirs"
    );
    // A refusal is the same whether or not the store holds the item.
    assert_eq!(
        view.secrets().get("nonexistent").unwrap_err().to_string(),
        "task not authorized to access secret nonexistent"
    );
}

#[test]
fn a_view_sees_later_changes_to_the_store() {
    let store = DependencyStore::new();
    let view = store.restrict(&task_referencing(&["late"], &[]));
    assert!(matches!(
        view.secrets().get("late"),
        Err(Error::NotFound { .. })
    ));
    store.secrets().add(vec![secret("late", "arrived")]);
    assert_eq!(view.secrets().get("late").unwrap().data, b"arrived");
}

#[test]
fn a_task_without_a_runtime_can_read_nothing() {
    let store = DependencyStore::new();
    store.secrets().add(vec![secret("a", "1")]);
    let view = store.restrict(&Task::default());
    assert!(matches!(
        view.secrets().get("a"),
        Err(Error::NotAuthorized { .. })
    ));
}

#[test]
fn debug_output_of_the_stores_lists_ids_only() {
    let store = DependencyStore::new();
    store
        .secrets()
        .add(vec![secret("visible-id", "invisible-bytes")]);
    let debug = format!(
        "{store:?} {:?}",
        store.restrict(&task_referencing(&["visible-id"], &[]))
    );
    assert!(debug.contains("visible-id"), "{debug}");
    assert!(!debug.contains("invisible"), "{debug}");
}

fn manage(manager: &dyn DependencyManager) {
    manager.secrets().add(vec![secret("via-trait", "v")]);
}

#[test]
fn stores_are_shared_between_threads() {
    let store = Arc::new(DependencyStore::new());
    manage(&*store);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for i in 0..500 {
                    let id = format!("{w}-{i}");
                    store.secrets().add(vec![secret(&id, "x")]);
                    assert!(store.secrets().get(&id).is_ok());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(store.secrets().get("3-499").is_ok());
    assert!(store.secrets().get("via-trait").is_ok());
}
