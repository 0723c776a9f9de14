//! Small conversions of request fields shared by the handlers.

use std::collections::{BTreeMap, HashMap};

use rouse_proto::v1 as pb;

/// Whether a read may skip the linearizable barrier.
pub(super) fn stale(r: &Option<pb::ReadOptions>) -> bool {
    r.as_ref().is_some_and(|o| o.stale)
}

/// Env vars as the state keeps them (ordered).
pub(super) fn env_map(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// How often a read-modify-write retries after a concurrent change.
pub(super) const CONFLICT_RETRIES: usize = 5;

/// A listing's scope: a namespace (or none), and a container of it (or
/// none); a container needs its namespace.
pub fn list_filter(namespace: &str, container: &str) -> Result<(), super::ApiError> {
    if !namespace.is_empty() {
        crate::state::validate::dns_label("namespace", namespace)?;
    }
    if !container.is_empty() {
        if namespace.is_empty() {
            return Err(super::ApiError::invalid(
                "namespace",
                "is required with container",
            ));
        }
        crate::state::validate::dns_label("container", container)?;
    }
    Ok(())
}
