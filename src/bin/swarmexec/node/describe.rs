//! The node as the managers see it: the executor's description, with the
//! engine and labels that let services target process nodes.

use std::collections::BTreeMap;

use swarmexec::api::NodeDescription;

use super::proto::api;

/// The engine label every process node has.
pub(crate) const RUNTIME_LABEL: (&str, &str) = ("swarmexec.runtime", "process");

/// The description to open sessions with.
pub(crate) fn description(
    local: &NodeDescription,
    hostname: Option<&str>,
    labels: &[(String, String)],
) -> api::NodeDescription {
    let mut engine_labels: BTreeMap<String, String> = local.engine_labels.clone();
    engine_labels.insert(RUNTIME_LABEL.0.into(), RUNTIME_LABEL.1.into());
    engine_labels.extend(labels.iter().cloned());
    api::NodeDescription {
        hostname: hostname.unwrap_or(&local.hostname).to_owned(),
        platform: Some(api::Platform {
            architecture: local.platform.architecture.clone(),
            os: local.platform.os.clone(),
        }),
        resources: Some(api::Resources {
            nano_cpus: local.resources.nano_cpus,
            memory_bytes: local.resources.memory_bytes,
            generic: Vec::new(),
        }),
        engine: Some(api::EngineDescription {
            engine_version: format!("swarmexec {}", env!("CARGO_PKG_VERSION")),
            labels: engine_labels.into_iter().collect(),
            plugins: Vec::new(),
        }),
        ..Default::default()
    }
}
