//! Error texts, and the chain that `is_temporary`, `exit_code` and
//! `container_status` look along.

use std::error::Error as StdError;
use std::fmt;

use swarmexec::api::ContainerStatus;
use swarmexec::{is_temporary, make_temporary, Error, ExitCoder, ExitError};

#[test]
fn sentinel_texts_match_the_reference() {
    let cases = [
        (Error::RuntimeUnsupported, "exec: unsupported runtime"),
        (Error::TaskPrepared, "exec: task already prepared"),
        (Error::TaskStarted, "exec: task already started"),
        (Error::TaskUpdateRejected, "exec: task update rejected"),
        (Error::ControllerClosed, "exec: controller closed"),
        (Error::TaskRetry, "exec: task retry"),
        (Error::TaskNoop, "exec: task noop"),
        (Error::DependencyNotReady, "dependency not ready"),
        (Error::Canceled, "context canceled"),
        (Error::DeadlineExceeded, "context deadline exceeded"),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

#[test]
fn wrappers_display_exactly_what_they_wrap() {
    assert_eq!(
        Error::from(ExitError::new(3, "exit status 3")).to_string(),
        "exit status 3"
    );
    assert_eq!(
        make_temporary(Error::TaskStarted).to_string(),
        "exec: task already started"
    );
    assert_eq!(Error::other("plain text").to_string(), "plain text");
    let io = std::io::Error::other("io went wrong");
    assert_eq!(Error::other(io).to_string(), "io went wrong");
}

#[test]
fn make_temporary_is_idempotent() {
    let once = make_temporary(Error::other("x"));
    let twice = make_temporary(make_temporary(Error::other("x")));
    assert!(matches!(&twice, Error::Temporary(inner) if matches!(**inner, Error::Other(_))));
    assert_eq!(format!("{once:?}"), format!("{twice:?}"));
}

#[test]
fn plain_errors_are_not_temporary() {
    assert!(!is_temporary(&Error::Canceled));
    assert!(!is_temporary(&Error::other("x")));
    let io = std::io::Error::other("x");
    assert!(!is_temporary(&io));
}

/// A foreign error with a source, as user code would write it.
#[derive(Debug)]
struct Wrapper<E>(E);

impl<E> fmt::Display for Wrapper<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

impl<E: StdError + 'static> StdError for Wrapper<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn temporary_is_found_through_every_kind_of_link() {
    let temp = || make_temporary(Error::other("busy"));
    // Through source() of a foreign error.
    assert!(is_temporary(&Wrapper(temp())));
    // Through a Box<Error> met via source(), which does not downcast to Error.
    assert!(is_temporary(&Wrapper(Box::new(temp()))));
    // Through the inner error of Other, boxed once or twice.
    assert!(is_temporary(&Error::other(temp())));
    assert!(is_temporary(&Error::other(Box::new(temp()))));
    // Through Other, then a foreign error's source.
    assert!(is_temporary(&Error::other(Wrapper(temp()))));
    // Two foreign links deep.
    assert!(is_temporary(&Wrapper(Wrapper(Error::other(temp())))));
}

#[test]
fn cancellation_is_found_through_the_chain() {
    assert!(Error::Canceled.is_cancellation());
    assert!(Error::other(Wrapper(Error::DeadlineExceeded)).is_cancellation());
    assert!(make_temporary(Error::Canceled).is_cancellation());
    assert!(Error::other(Box::new(Error::Canceled)).is_cancellation());
    assert!(
        !Error::other("canceled").is_cancellation(),
        "text is not enough"
    );
}

#[test]
fn exit_codes_and_container_status_are_found_through_the_chain() {
    let status = ContainerStatus {
        container_id: "c".into(),
        pid: 12,
        exit_code: 0,
    };
    let exit = || ExitError::new(137, "killed by SIGKILL").with_container_status(status.clone());
    assert_eq!(exit().exit_code(), 137);
    assert_eq!(exit().code(), 137);
    assert_eq!(exit().message(), "killed by SIGKILL");

    let nested = Error::other(Wrapper(make_temporary(exit().into())));
    assert_eq!(nested.exit_code(), Some(137));
    assert_eq!(nested.container_status(), Some(status.clone()));
    let boxed = Error::other(Wrapper(Box::new(Error::from(exit()))));
    assert_eq!(boxed.exit_code(), Some(137));

    assert_eq!(Error::Canceled.exit_code(), None);
    assert_eq!(Error::from(ExitError::new(1, "x")).container_status(), None);
}

#[test]
fn store_errors_name_the_item() {
    let refused = Error::NotAuthorized {
        kind: "secret",
        id: "s1".into(),
    };
    assert_eq!(
        refused.to_string(),
        "task not authorized to access secret s1"
    );
    let missing = Error::NotFound {
        kind: "config",
        id: "c1".into(),
    };
    assert_eq!(missing.to_string(), "config c1 not found");
}
