//! [`CancelToken`]: cancellation and deadlines for blocking calls.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::timer::{self, Due};
use crate::Error;

/// Tells a blocking call to give up: the replacement for Go's `context.Context`.
///
/// A token is live until [`cancel`](CancelToken::cancel) is called on it or on any of
/// its ancestors, or until its deadline passes. Once done it stays done, and
/// [`err`](CancelToken::err) says why. Clones share one state, so a clone handed to
/// another thread cancels (and is cancelled) with the original.
///
/// Waiting costs no thread: [`wait`](CancelToken::wait) parks on a condition variable
/// that a cancel notifies, and [`done`](CancelToken::done) hands out a channel that a
/// cancel disconnects. Deadlines of all tokens share one timer thread,
/// `swarmexec-timer`, started on first use; the checking calls
/// ([`is_cancelled`](CancelToken::is_cancelled), `wait`, `err`) read the clock
/// themselves and never depend on it.
///
/// ```
/// use std::time::Duration;
/// use swarmexec::{CancelToken, Error};
///
/// let root = CancelToken::new();
/// let call = root.with_timeout(Duration::from_secs(60));
/// let worker = std::thread::spawn({
///     let call = call.clone();
///     move || {
///         call.wait(); // a blocking operation would watch the token like this
///         call.err()
///     }
/// });
/// root.cancel(); // cancels every descendant
/// assert!(matches!(worker.join().unwrap(), Some(Error::Canceled)));
/// ```
#[derive(Clone)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Canceled,
    DeadlineExceeded,
}

impl Reason {
    fn error(self) -> Error {
        match self {
            Reason::Canceled => Error::Canceled,
            Reason::DeadlineExceeded => Error::DeadlineExceeded,
        }
    }
}

struct Inner {
    /// Mirrors `state.reason.is_some()` so that the common check takes no lock.
    cancelled: AtomicBool,
    /// The earliest of this token's and its ancestors' deadlines.
    deadline: Option<Instant>,
    state: Mutex<State>,
    woken: Condvar,
}

#[derive(Default)]
struct State {
    reason: Option<Reason>,
    /// Weak, so that a long-lived parent does not keep dropped children alive.
    children: Vec<Weak<Inner>>,
    /// Made on the first `done()`; dropping the sender wakes every receiver.
    done_tx: Option<Sender<()>>,
    done_rx: Option<Receiver<()>>,
}

impl Inner {
    fn new(deadline: Option<Instant>) -> Self {
        Inner {
            cancelled: AtomicBool::new(false),
            deadline,
            state: Mutex::new(State::default()),
            woken: Condvar::new(),
        }
    }

    fn is_cancelled(&self) -> bool {
        if self.cancelled.load(Ordering::Acquire) {
            return true;
        }
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => {
                self.cancel(Reason::DeadlineExceeded);
                true
            }
            _ => false,
        }
    }

    /// Records the first reason only, then cancels the descendants, holding one lock
    /// at a time and with a worklist instead of recursion: a tree of any depth
    /// needs no stack.
    fn cancel(&self, reason: Reason) {
        let mut pending = self.cancel_one(reason);
        while let Some(child) = pending.pop() {
            if let Some(child) = child.upgrade() {
                pending.extend(child.cancel_one(reason));
            }
        }
    }

    /// Cancels this token alone; returns its children, for the caller to cancel.
    fn cancel_one(&self, reason: Reason) -> Vec<Weak<Inner>> {
        let children = {
            let mut state = self.state.lock();
            if state.reason.is_some() {
                return Vec::new();
            }
            state.reason = Some(reason);
            state.done_tx = None;
            self.cancelled.store(true, Ordering::Release);
            std::mem::take(&mut state.children)
        };
        self.woken.notify_all();
        children
    }

    /// Blocks while live, at most until `until`; returns the guard on the final state.
    fn wait_until(&self, until: Option<Instant>) -> MutexGuard<'_, State> {
        let mut state = self.state.lock();
        while state.reason.is_none() {
            let limit = match (until, self.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(limit) = limit else {
                self.woken.wait(&mut state);
                continue;
            };
            if !self.woken.wait_until(&mut state, limit).timed_out() {
                continue;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                drop(state);
                self.cancel(Reason::DeadlineExceeded);
                state = self.state.lock();
            }
            break;
        }
        state
    }
}

impl CancelToken {
    /// A token that is live until [`cancel`](CancelToken::cancel) is called.
    pub fn new() -> Self {
        CancelToken {
            inner: Arc::new(Inner::new(None)),
        }
    }

    /// A child token: cancelled with this one, but cancelling it leaves this one live.
    pub fn child(&self) -> CancelToken {
        self.child_until(None)
    }

    /// A child token that is also cancelled, with
    /// [`Error::DeadlineExceeded`], once `d` has passed.
    pub fn with_timeout(&self, d: Duration) -> CancelToken {
        // A duration too long to represent is a deadline that never comes.
        self.child_until(Instant::now().checked_add(d))
    }

    /// A child token that is also cancelled, with
    /// [`Error::DeadlineExceeded`], at `at`.
    pub fn with_deadline(&self, at: Instant) -> CancelToken {
        self.child_until(Some(at))
    }

    fn child_until(&self, own_deadline: Option<Instant>) -> CancelToken {
        let deadline = match (own_deadline, self.inner.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let child = Arc::new(Inner::new(deadline));
        let parent_reason = {
            let mut state = self.inner.state.lock();
            if state.reason.is_none() {
                // Pruning when the vector is full keeps it bounded by twice the live
                // children at amortised O(1) per child.
                if state.children.len() == state.children.capacity() {
                    state.children.retain(|c| c.strong_count() > 0);
                }
                state.children.push(Arc::downgrade(&child));
            }
            state.reason
        };
        match (parent_reason, deadline) {
            (Some(reason), _) => child.cancel(reason),
            // Even an inherited deadline gets its own entry: the parent may be dropped
            // before it expires, and nothing would then wake this token's `done()`.
            (None, Some(at)) => {
                let due: Weak<dyn Due> = Arc::downgrade(&child) as Weak<dyn Due>;
                timer::schedule(at, due)
            }
            (None, None) => {}
        }
        CancelToken { inner: child }
    }

    /// Cancels this token and all its descendants, waking every waiter. Calling it
    /// again does nothing.
    pub fn cancel(&self) {
        self.inner.cancel(Reason::Canceled);
    }

    /// True once the token is cancelled or its deadline has passed.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// `None` while live; then [`Error::Canceled`] or [`Error::DeadlineExceeded`],
    /// whichever came first (a child cancelled by its parent takes the parent's).
    pub fn err(&self) -> Option<Error> {
        if !self.inner.is_cancelled() {
            return None;
        }
        self.inner.state.lock().reason.map(Reason::error)
    }

    /// The token's deadline, the earliest of its own and its ancestors'.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Blocks until the token is cancelled or its deadline passes.
    pub fn wait(&self) {
        drop(self.inner.wait_until(None));
    }

    /// Blocks until the token is cancelled or `d` has passed; true if cancelled.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let until = Instant::now().checked_add(d);
        self.inner.wait_until(until).reason.is_some()
    }

    /// A receiver that becomes ready (disconnected) once the token is cancelled, for
    /// use in `crossbeam_channel::select!`. It never delivers a message.
    ///
    /// ```
    /// use crossbeam_channel::{never, select};
    /// let token = swarmexec::CancelToken::new();
    /// token.cancel();
    /// select! {
    ///     recv(token.done()) -> _ => {}
    ///     recv(never::<()>()) -> _ => unreachable!(),
    /// }
    /// ```
    pub fn done(&self) -> Receiver<()> {
        // A deadline that has passed is a cancel that the timer may not have made yet.
        if !self.inner.is_cancelled() && self.inner.deadline.is_some() {
            // The deadline's entry waits for the timer thread if it could not start.
            timer::ensure_running();
        }
        let mut state = self.inner.state.lock();
        if let Some(rx) = &state.done_rx {
            return rx.clone();
        }
        let (tx, rx) = crossbeam_channel::bounded(0);
        if state.reason.is_none() {
            state.done_tx = Some(tx);
        }
        state.done_rx = Some(rx.clone());
        rx
    }

    /// A channel that delivers once the token's deadline passes (never without
    /// one). Selected beside [`done`](CancelToken::done), it makes a blocking call
    /// honour its deadline by itself, even when no timer thread could be started.
    pub(crate) fn deadline_passed(&self) -> Receiver<Instant> {
        self.inner
            .deadline
            .map_or_else(crossbeam_channel::never, crossbeam_channel::at)
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .field("deadline", &self.inner.deadline)
            .finish()
    }
}

impl Due for Inner {
    fn fire(&self) {
        self.cancel(Reason::DeadlineExceeded);
    }

    fn is_stale(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_children_are_pruned_from_their_parent() {
        let root = CancelToken::new();
        let kept: Vec<_> = (0..10).map(|_| root.child()).collect();
        for _ in 0..100_000 {
            drop(root.child());
        }
        let registered = root.inner.state.lock().children.len();
        assert!(registered <= 64, "{registered} children registered");
        root.cancel();
        assert!(kept.iter().all(CancelToken::is_cancelled));
    }
}
