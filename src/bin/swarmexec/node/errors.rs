//! Errors in words: a whole chain of causes on one line, and gRPC statuses as
//! what they mean for the node.

use std::error::Error;

/// `error` and each of its causes, joined with `: `, repeats left out.
pub(crate) fn chain(error: &dyn Error) -> String {
    let mut words: Vec<String> = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !words.iter().any(|w| w.contains(&text)) {
            words.push(text);
        }
        cause = e.source();
    }
    words.join(": ")
}

/// What a failed call's status says, in one line.
pub(crate) fn status(status: &tonic::Status) -> String {
    let message = status.message();
    match status.source() {
        Some(source) if message.is_empty() => chain(source),
        _ if message.is_empty() => format!("{:?}", status.code()),
        _ => message.to_owned(),
    }
}

/// Whether a failed call says the node was removed from its swarm (SwarmKit's
/// managers refuse a removed node's certificate with this).
pub(crate) fn is_removal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::PermissionDenied
        && status.message().contains("removed from swarm")
}
