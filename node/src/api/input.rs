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
