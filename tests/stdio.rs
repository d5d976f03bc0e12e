//! Where a task's stdio goes, and captured output that is never lost silently.

mod common;

use std::fs;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{process_task, spec};
use parking_lot::Mutex;
use swarmexec::api::*;
use swarmexec::process::{ProcessController, ProcessExecutor, MISSED_BYTES};
use swarmexec::{CancelToken, Controller, LogPublisherFn};
use tempfile::TempDir;

fn fixture() -> (ProcessExecutor, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let executor = ProcessExecutor::new(dir.path().join("state")).unwrap();
    (executor, dir)
}

fn started(executor: &ProcessExecutor, spec: ProcessSpec) -> Arc<ProcessController> {
    let controller = executor
        .process_controller(&process_task("io", spec))
        .unwrap();
    let cancel = CancelToken::new();
    controller.prepare(&cancel).unwrap();
    controller.start(&cancel).unwrap();
    Arc::new(controller)
}

#[test]
fn stdio_goes_to_files_and_descriptors_and_nowhere_as_asked() {
    let (executor, dir) = fixture();
    let input = dir.path().join("input");
    fs::write(&input, "from a file\n").unwrap();
    let out_file = dir.path().join("out");
    let (read_end, write_end) = std::io::pipe().unwrap();
    let mut s = spec(&["sh", "-c", "cat; echo to stderr >&2"]);
    s.stdin = InputSource::File(input);
    s.stdout = OutputSink::File(out_file.clone());
    s.stderr = OutputSink::Fd(OwnedFd::from(write_end).into());
    let controller = started(&executor, s);
    controller.wait(&CancelToken::new()).unwrap();
    drop(controller);
    assert_eq!(fs::read_to_string(&out_file).unwrap(), "from a file\n");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut { read_end }, &mut stderr).unwrap();
    assert_eq!(stderr, "to stderr\n");

    let mut quiet = spec(&["sh", "-c", "echo nowhere; echo nowhere >&2"]);
    quiet.stdout = OutputSink::Null;
    quiet.stderr = OutputSink::Null;
    let controller = started(&executor, quiet);
    controller.wait(&CancelToken::new()).unwrap();
    let logs = collect(&controller, false, Duration::ZERO);
    assert!(logs.data.is_empty(), "nothing captured");
}

/// What a subscription received: the data in order, and the gaps it was told of.
struct Received {
    data: Vec<u8>,
    missed: Vec<u64>,
    messages: usize,
}

/// Subscribes to the controller's logs (following or not); the first message
/// makes the follower stop reading for `pause`.
fn collect(controller: &ProcessController, follow: bool, pause: Duration) -> Received {
    let received = Mutex::new(Received {
        data: Vec::new(),
        missed: Vec::new(),
        messages: 0,
    });
    let publisher = LogPublisherFn(|_: &CancelToken, m: LogMessage| {
        let mut received = received.lock();
        if received.messages == 0 {
            thread::sleep(pause);
        }
        received.messages += 1;
        received.data.extend_from_slice(&m.data);
        for (key, value) in &m.attrs {
            if key == MISSED_BYTES {
                received.missed.push(value.parse().unwrap());
            }
        }
        Ok(())
    });
    let options = LogSubscriptionOptions {
        follow,
        ..Default::default()
    };
    let logs = controller.as_logs().unwrap();
    logs.logs(&CancelToken::new(), &publisher, &options)
        .unwrap();
    received.into_inner()
}

#[test]
fn a_follower_that_keeps_up_gets_a_million_lines_in_order_in_batches() {
    let (executor, _dir) = fixture();
    let controller = started(&executor, spec(&["sh", "-c", "sleep 0.2; seq 1 1000000"]));
    let received = collect(&controller, true, Duration::ZERO);
    let expected = std::process::Command::new("seq")
        .args(["1", "1000000"])
        .output()
        .unwrap();
    assert!(received.missed.is_empty(), "{:?}", received.missed);
    assert!(
        received.data == expected.stdout,
        "the lines arrive whole and in order"
    );
    assert!(
        received.messages < 10_000,
        "{} messages for a million lines: batches, not a message a line",
        received.messages
    );
}

#[test]
fn a_follower_that_stops_reading_is_told_exactly_how_much_it_missed() {
    let (executor, _dir) = fixture();
    // 20 MB, twenty times the buffer; the follower sleeps two seconds at first.
    let script = "sleep 0.2; echo start; head -c 20000000 /dev/zero | tr '\\0' x | fold -w 99";
    let controller = started(&executor, spec(&["sh", "-c", script]));
    let received = collect(&controller, true, Duration::from_secs(2));
    // fold adds a newline after each full line of 99, none after the last part.
    let total: u64 = "start\n".len() as u64 + 20_000_000 + 20_000_000 / 99;
    let missed: u64 = received.missed.iter().sum();
    assert!(missed > 0, "a gap is reported");
    assert_eq!(
        received.data.len() as u64 + missed,
        total,
        "received and missed add up"
    );
}
