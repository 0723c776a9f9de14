//! Load reports: every node sends the leader its per-container demand about
//! twice a second. The leader keeps the latest report of each node here;
//! the autoscaler sums them and the liveness check reads when each node
//! last reported (its lease).

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::state::{ContainerKey, NodeId};

/// One container's demand on one node.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerLoad {
    pub key: ContainerKey,
    /// Requests in flight or queued.
    pub in_flight: u32,
    pub last_request_ms: u64,
    /// Instances stopping on the node.
    pub draining: u32,
}

/// A node's latest report, with the time it arrived.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub at_ms: u64,
    pub loads: Vec<ContainerLoad>,
}

#[derive(Default)]
pub struct LoadBook {
    reports: Mutex<HashMap<NodeId, Report>>,
}

impl LoadBook {
    pub fn record(&self, node: NodeId, at_ms: u64, loads: Vec<ContainerLoad>) {
        self.reports.lock().insert(node, Report { at_ms, loads });
    }

    /// When each node last reported, in ms.
    pub fn last_seen(&self) -> HashMap<NodeId, u64> {
        self.reports
            .lock()
            .iter()
            .map(|(k, r)| (*k, r.at_ms))
            .collect()
    }

    /// Every node's latest report.
    pub fn reports(&self) -> HashMap<NodeId, Report> {
        self.reports.lock().clone()
    }
}

impl From<rouse_proto::peer::ContainerLoad> for ContainerLoad {
    fn from(l: rouse_proto::peer::ContainerLoad) -> Self {
        ContainerLoad {
            key: ContainerKey::new(&l.namespace, &l.name),
            in_flight: l.in_flight,
            last_request_ms: l.last_request_ms,
            draining: l.draining,
        }
    }
}

impl From<&ContainerLoad> for rouse_proto::peer::ContainerLoad {
    fn from(l: &ContainerLoad) -> Self {
        rouse_proto::peer::ContainerLoad {
            namespace: l.key.namespace().to_string(),
            name: l.key.name().to_string(),
            in_flight: l.in_flight,
            last_request_ms: l.last_request_ms,
            draining: l.draining,
        }
    }
}

/// Instances draining per container, summed over nodes' reports newer
/// than `fresh_after_ms`.
pub fn draining(
    reports: &HashMap<NodeId, Report>,
    fresh_after_ms: u64,
) -> std::collections::BTreeMap<ContainerKey, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in reports.values().filter(|r| r.at_ms >= fresh_after_ms) {
        for l in r.loads.iter().filter(|l| l.draining > 0) {
            *out.entry(l.key.clone()).or_default() += l.draining as usize;
        }
    }
    out
}
