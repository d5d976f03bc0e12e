//! CancelToken: trees, deadlines, blocking waits and `done()` in `select!`.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, select};
use swarmexec::{CancelToken, Error};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_new_token_is_live_until_cancelled() {
    let token = CancelToken::new();
    assert!(!token.is_cancelled());
    assert!(token.err().is_none());
    assert!(!token.wait_timeout(Duration::from_millis(5)));
    token.cancel();
    token.cancel(); // idempotent
    assert!(token.is_cancelled());
    assert!(matches!(token.err(), Some(Error::Canceled)));
    assert!(token.wait_timeout(LONG), "returns at once once cancelled");
    token.wait();
}

#[test]
fn clones_share_one_state() {
    let token = CancelToken::new();
    let clone = token.clone();
    clone.cancel();
    assert!(token.is_cancelled());
}

#[test]
fn cancelling_a_parent_cancels_every_descendant_but_not_the_reverse() {
    let root = CancelToken::new();
    let child = root.child();
    let grandchild = child.child();
    let sibling = root.child();
    grandchild.cancel();
    assert!(!child.is_cancelled() && !root.is_cancelled());
    child.cancel();
    assert!(!root.is_cancelled() && !sibling.is_cancelled());
    root.cancel();
    assert!(sibling.is_cancelled());
    assert!(matches!(sibling.err(), Some(Error::Canceled)));
}

#[test]
fn a_child_of_a_cancelled_token_is_born_cancelled() {
    let root = CancelToken::new();
    root.cancel();
    assert!(root.child().is_cancelled());
    assert!(root.with_timeout(LONG).is_cancelled());
}

#[test]
fn deadlines_expire_with_deadline_exceeded() {
    let root = CancelToken::new();
    let timed = root.with_timeout(Duration::from_millis(20));
    assert!(!timed.is_cancelled());
    timed.wait();
    assert!(timed.is_cancelled());
    assert!(matches!(timed.err(), Some(Error::DeadlineExceeded)));
    assert!(
        !root.is_cancelled(),
        "a child's deadline leaves the parent live"
    );
}

#[test]
fn children_inherit_the_earlier_deadline_and_its_reason() {
    let parent = CancelToken::new().with_timeout(Duration::from_millis(20));
    let child = parent.with_timeout(LONG);
    assert_eq!(child.deadline(), parent.deadline());
    child.wait();
    assert!(matches!(child.err(), Some(Error::DeadlineExceeded)));
    let later = CancelToken::new().with_deadline(Instant::now() + LONG);
    let earlier = later.with_timeout(Duration::from_millis(1));
    assert!(earlier.deadline() < later.deadline());
}

#[test]
fn a_cancel_before_the_deadline_wins() {
    let timed = CancelToken::new().with_timeout(LONG);
    timed.cancel();
    assert!(matches!(timed.err(), Some(Error::Canceled)));
}

#[test]
fn wait_timeout_gives_up_after_the_timeout() {
    let token = CancelToken::new();
    let start = Instant::now();
    assert!(!token.wait_timeout(Duration::from_millis(30)));
    assert!(start.elapsed() >= Duration::from_millis(30));
}

#[test]
fn one_cancel_wakes_every_blocked_waiter() {
    let root = CancelToken::new();
    let waiters = 16;
    let ready = Arc::new(Barrier::new(waiters + 1));
    let handles: Vec<_> = (0..waiters)
        .map(|i| {
            // Half wait on the token itself, half on a child.
            let token = if i % 2 == 0 {
                root.clone()
            } else {
                root.child()
            };
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                ready.wait();
                token.wait();
                token.err()
            })
        })
        .collect();
    ready.wait();
    root.cancel();
    for handle in handles {
        assert!(matches!(handle.join().unwrap(), Some(Error::Canceled)));
    }
}

#[test]
fn done_is_ready_in_select_once_cancelled() {
    let token = CancelToken::new();
    let done = token.done();
    select! {
        recv(done) -> _ => panic!("not cancelled yet"),
        default(Duration::from_millis(10)) => {}
    }
    let canceller = {
        let token = token.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(10));
            token.cancel();
        })
    };
    select! {
        recv(done) -> msg => assert!(msg.is_err(), "disconnected, never a message"),
        recv(after(LONG)) -> _ => panic!("cancel did not wake select"),
    }
    canceller.join().unwrap();
    // A receiver asked for after the cancel is ready too.
    assert!(token.done().recv().is_err());
}

#[test]
fn done_fires_at_the_deadline_through_the_shared_timer() {
    let timed = CancelToken::new().with_timeout(Duration::from_millis(20));
    select! {
        recv(timed.done()) -> _ => {}
        recv(after(LONG)) -> _ => panic!("deadline did not wake select"),
    }
    assert!(matches!(timed.err(), Some(Error::DeadlineExceeded)));
}

#[test]
fn an_inherited_deadline_fires_even_when_the_parent_is_dropped() {
    let child = CancelToken::new()
        .with_timeout(Duration::from_millis(20))
        .child();
    select! {
        recv(child.done()) -> _ => {}
        recv(after(LONG)) -> _ => panic!("inherited deadline did not wake select"),
    }
}
