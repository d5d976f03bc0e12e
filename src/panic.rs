//! Containing panics of user code: controllers, executors, reporters, publishers.
//!
//! The library calls code it does not own on its own threads. A panic there must
//! not unwind through the library's bookkeeping (a count left raised, a manager
//! left marked as running), so every such call goes through [`contain`], which
//! turns a panic into an error the caller handles like any other failure.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::Error;

/// Runs `f`; a panic becomes an error saying that `what` panicked, and is logged
/// with the task it concerns (none when `task_id` is empty).
pub(crate) fn contain<T>(what: &str, task_id: &str, f: impl FnOnce() -> T) -> Result<T, Error> {
    // The library's state is never borrowed across `f`: whatever `f` left half done
    // belongs to the user code that panicked.
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = format!("{what} panicked: {}", panic_message(&*panic));
        if task_id.is_empty() {
            log::error!(target: "swarmexec", "{message}");
        } else {
            log::error!(target: "swarmexec", "task {task_id}: {message}");
        }
        Error::other(message)
    })
}

/// [`contain`] for calls that return a result: a panic and an error alike
/// become the error.
pub(crate) fn contain_result<T>(
    what: &str,
    task_id: &str,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    contain(what, task_id, f).and_then(|result| result)
}

/// The text a panic carries, when it carries text.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(message) = panic.downcast_ref::<&str>() {
        message
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message
    } else {
        "unknown panic"
    }
}
