//! The process executor under faults: calls that race a stuck close, tokens in
//! `prepare` and `start`, files that go whatever failed, messages that name the
//! real problem.

mod common;

use std::fs;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{pid_of, started, TestCgroup};
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor};
use swarmexec::{is_temporary, CancelToken, Controller, Error, SecretsProvider};
use tempfile::TempDir;

fn fixture() -> (ProcessExecutor, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    (executor, dir)
}

fn task(id: &str, command: &[&str]) -> Task {
    common::process_task(id, common::spec(command))
}

fn with_secret(mut task: Task, executor: &ProcessExecutor) -> Task {
    executor.secrets().add(vec![Secret {
        id: "pw".into(),
        data: b"hunter2".to_vec(),
        ..Default::default()
    }]);
    if let Some(Runtime::Process(spec)) = &mut task.spec.runtime {
        spec.secrets.push(SecretReference {
            secret_id: "pw".into(),
            target: "pw".into(),
            ..Default::default()
        });
    }
    task
}

/// Cancels `token` and measures how long `call` then takes to return.
fn return_after_cancel(
    controller: &Arc<ProcessController>,
    call: fn(&ProcessController, &CancelToken) -> Result<(), Error>,
) -> Duration {
    let token = CancelToken::new();
    let waiting = {
        let (controller, token) = (Arc::clone(controller), token.clone());
        thread::spawn(move || {
            let result = call(&controller, &token);
            (Instant::now(), result)
        })
    };
    thread::sleep(Duration::from_millis(100));
    let cancelled = Instant::now();
    token.cancel();
    let (returned, result) = waiting.join().unwrap();
    assert!(result.is_err(), "{result:?}");
    returned.saturating_duration_since(cancelled)
}

#[test]
fn a_cancelled_wait_returns_at_once_while_close_is_stuck_on_a_frozen_program() {
    let (executor, _dir) = fixture();
    let controller = Arc::new(started(&executor, &task("frozen", &["sleep", "30"])));
    let Some(freezer) = TestCgroup::new("freezer") else {
        // No freezer here: a close that kills at once must not hold up a wait either.
        eprintln!("no freezer cgroup: checking an unfrozen close instead");
        let waited = return_after_cancel(&controller, |c, t| c.wait(t));
        assert!(waited < Duration::from_millis(50), "{waited:?}");
        controller.close().unwrap();
        return;
    };
    let pid = pid_of(&*controller) as u32;
    freezer.add(pid);
    freezer.write("freezer.state", "FROZEN");
    while freezer.read("freezer.state") != "FROZEN" {
        thread::sleep(Duration::from_millis(1));
    }
    // A wait in progress, then a close that cannot finish while the program is frozen.
    let token = CancelToken::new();
    let waiting = {
        let (controller, token) = (Arc::clone(&controller), token.clone());
        thread::spawn(move || {
            let result = controller.wait(&token);
            (Instant::now(), result)
        })
    };
    let closing = {
        let controller = Arc::clone(&controller);
        thread::spawn(move || controller.close())
    };
    thread::sleep(Duration::from_millis(200));
    assert!(!closing.is_finished(), "close waits for the frozen program");
    let cancelled = Instant::now();
    token.cancel();
    let (returned, result) = waiting.join().unwrap();
    let waited = returned.saturating_duration_since(cancelled);
    assert!(
        waited < Duration::from_millis(50),
        "a cancelled wait took {waited:?}"
    );
    assert!(result.is_err());
    // Later calls are refused at once, not queued behind the close.
    let start = Instant::now();
    assert!(matches!(
        controller.shutdown(&CancelToken::new()),
        Err(Error::ControllerClosed)
    ));
    assert!(start.elapsed() < Duration::from_millis(50));
    freezer.write("freezer.state", "THAWED");
    closing.join().unwrap().unwrap();
    // Thawed, the program dies of the kill close sent, and is reaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::exists(format!("/proc/{pid}")).unwrap() {
        assert!(
            Instant::now() < deadline,
            "process {pid} outlived its close"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn prepare_and_start_honour_a_cancelled_token() {
    let (executor, _dir) = fixture();
    let t = with_secret(task("cancelled", &["true"]), &executor);
    let controller = executor.process_controller(&t).unwrap();
    let cancelled = CancelToken::new();
    cancelled.cancel();
    assert!(matches!(
        controller.prepare(&cancelled),
        Err(Error::Canceled)
    ));
    assert_eq!(controller.task_dir(), None, "nothing written");
    let live = CancelToken::new();
    controller.prepare(&live).unwrap();
    assert!(matches!(controller.start(&cancelled), Err(Error::Canceled)));
    controller.start(&live).unwrap();
    controller.wait(&live).unwrap();
}

#[test]
fn remove_deletes_the_files_even_when_stopping_fails() {
    let (executor, _dir) = fixture();
    let t = with_secret(
        task("stubborn", &["sh", "-c", "trap '' TERM; sleep 30"]),
        &executor,
    );
    let controller = started(&executor, &t);
    let task_dir = controller.task_dir().unwrap();
    assert!(task_dir.join("secrets/pw").exists());
    // Stopping is cut short by the token: the files go all the same.
    let cancelled = CancelToken::new();
    cancelled.cancel();
    assert!(controller.remove(&cancelled).is_err());
    assert!(!task_dir.exists(), "{task_dir:?} left behind");
    controller.close().unwrap();
}

#[test]
fn close_deletes_the_files_and_a_new_controller_for_the_same_id_gets_its_own() {
    let (executor, _dir) = fixture();
    let t = with_secret(task("reused", &["sleep", "30"]), &executor);
    let first = started(&executor, &t);
    let second = started(&executor, &t);
    let (first_dir, second_dir) = (first.task_dir().unwrap(), second.task_dir().unwrap());
    assert_ne!(first_dir, second_dir);
    first.close().unwrap();
    assert!(!first_dir.exists());
    assert!(
        second_dir.join("secrets/pw").exists(),
        "not the first one's to delete"
    );
    drop(second);
    assert!(!second_dir.exists(), "dropping closes");
    common::assert_no_task_dirs(executor.state_dir(), "closed controllers leave no files");
}

fn rejection(executor: &ProcessExecutor, t: &Task) -> Error {
    let controller = executor.process_controller(t).unwrap();
    let err = controller.prepare(&CancelToken::new()).unwrap_err();
    // Nothing was made, so there is nothing to remove.
    controller.remove(&CancelToken::new()).unwrap();
    err
}

#[test]
fn messages_name_the_real_problem() {
    let (executor, dir) = fixture();
    let file = dir.path().join("a-file");
    fs::write(&file, "").unwrap();
    let mut in_a_file = task("dir-is-file", &["true"]);
    if let Some(Runtime::Process(spec)) = &mut in_a_file.spec.runtime {
        spec.dir = Some(file.clone());
    }
    assert_eq!(
        rejection(&executor, &in_a_file).to_string(),
        format!(
            "invalid task spec: working directory {} is not a directory",
            file.display()
        )
    );
    assert_eq!(
        rejection(&executor, &task("empty-name", &[""])).to_string(),
        "program not found: \"\" (the program name, the command's first word, is empty)"
    );
    let long = "x".repeat(5000);
    let mut long_target = with_secret(task("long-target", &["true"]), &executor);
    if let Some(Runtime::Process(spec)) = &mut long_target.spec.runtime {
        spec.secrets[0].target = long.clone();
    }
    let message = rejection(&executor, &long_target).to_string();
    assert!(
        message.starts_with("invalid task spec: secret target \"xxx"),
        "{message}"
    );
    assert!(
        message.ends_with("is 5000 bytes long, over the limit of 255"),
        "{message}"
    );
    assert!(
        message.len() < 200,
        "the name is not echoed whole: {message}"
    );
    let mut long_id = task("x", &["true"]);
    long_id.id = long;
    assert!(rejection(&executor, &long_id)
        .to_string()
        .contains("task id"));
}

#[test]
fn a_write_that_fails_names_the_file() {
    let (executor, _dir) = fixture();
    let t = with_secret(task("unwritable", &["true"]), &executor);
    // A state directory that is a file makes every creation fail.
    fs::remove_dir_all(executor.state_dir()).unwrap();
    fs::write(executor.state_dir(), "").unwrap();
    let err = rejection(&executor, &t);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot create {}/unwritable.",
            executor.state_dir().display()
        )),
        "{message}"
    );
    assert!(
        !is_temporary(&err),
        "a file in the way is no passing condition"
    );
}
