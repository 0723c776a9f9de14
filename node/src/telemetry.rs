//! A node's running counters and histograms: what its mesh served, how long
//! its proposals, decider passes and containerd calls took. Kept for the
//! node's lifetime in one process-wide set (like a Prometheus default
//! registry: the call sites are many and deep, the set is append-only), and
//! rendered with the state-derived figures by `mesh::metrics` on every
//! scrape.
//!
//! Names follow Prometheus conventions: base units (`_seconds`, `_bytes`),
//! counters end in `_total` (the encoder adds it), one label per dimension.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::ContainerKey;

/// The node's set.
pub static METRICS: LazyLock<Telemetry> = LazyLock::new(Telemetry::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerLabels {
    pub namespace: String,
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub namespace: String,
    pub container: String,
    /// `1xx` … `5xx`.
    pub code_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeciderLabel {
    pub decider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 0.5 ms to ~65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// One container's handles, looked up once per request.
pub struct ContainerMetrics {
    requests: [Counter; 5],
    pub duration: Histogram,
    pub upstream: Histogram,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub queued: Gauge,
    pub cold_starts: Counter,
    pub cold_start_wait: Histogram,
    pub wakes: Histogram,
}

impl ContainerMetrics {
    /// Counts one answer with `status`.
    pub fn answered(&self, status: http::StatusCode, took: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(took.as_secs_f64());
    }
}

pub struct Telemetry {
    requests: Family<ClassLabels, Counter>,
    duration: Histograms<ContainerLabels>,
    upstream: Histograms<ContainerLabels>,
    bytes_in: Family<ContainerLabels, Counter>,
    bytes_out: Family<ContainerLabels, Counter>,
    queued: Family<ContainerLabels, Gauge>,
    cold_starts: Family<ContainerLabels, Counter>,
    cold_start_wait: Histograms<ContainerLabels>,
    wakes: Histograms<ContainerLabels>,
    containers: RwLock<HashMap<ContainerKey, Arc<ContainerMetrics>>>,
    /// Raft proposals made by this node (forwarded ones included), from
    /// proposal to applied here.
    pub proposals: Histogram,
    /// A leader-only decider's pass (decide + write), by decider.
    passes: Histograms<DeciderLabel>,
    /// containerd calls by method.
    containerd: Histograms<MethodLabel>,
    /// Leader changes this node has seen.
    pub leader_changes: Counter,
    /// Snapshots this node built (serialize and store) and installed (from
    /// a leader: decode, rewrite the state machine, store).
    pub snapshot_builds: Histogram,
    pub snapshot_installs: Histogram,
    /// The last commit index this node's log store was told of.
    pub committed: AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
            upstream: Family::new_with_constructor(latency),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            queued: Family::default(),
            cold_starts: Family::default(),
            cold_start_wait: Family::new_with_constructor(latency),
            wakes: Family::new_with_constructor(latency),
            containers: RwLock::default(),
            proposals: latency(),
            passes: Family::new_with_constructor(latency),
            containerd: Family::new_with_constructor(latency),
            leader_changes: Counter::default(),
            snapshot_builds: latency(),
            snapshot_installs: latency(),
            committed: AtomicU64::new(0),
        }
    }
}

impl Telemetry {
    /// `key`'s handles (made on first use).
    pub fn container(&self, key: &ContainerKey) -> Arc<ContainerMetrics> {
        if let Some(m) = self.containers.read().get(key) {
            return m.clone();
        }
        let l = ContainerLabels {
            namespace: key.namespace().to_string(),
            container: key.name().to_string(),
        };
        let class = |c: &str| {
            self.requests.get_or_create_owned(&ClassLabels {
                namespace: l.namespace.clone(),
                container: l.container.clone(),
                code_class: c.to_string(),
            })
        };
        let m = Arc::new(ContainerMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.duration.get_or_create_owned(&l),
            upstream: self.upstream.get_or_create_owned(&l),
            bytes_in: self.bytes_in.get_or_create_owned(&l),
            bytes_out: self.bytes_out.get_or_create_owned(&l),
            queued: self.queued.get_or_create_owned(&l),
            cold_starts: self.cold_starts.get_or_create_owned(&l),
            cold_start_wait: self.cold_start_wait.get_or_create_owned(&l),
            wakes: self.wakes.get_or_create_owned(&l),
        });
        self.containers
            .write()
            .entry(key.clone())
            .or_insert(m)
            .clone()
    }

    /// Records a pass of the decider `name`.
    pub fn pass(&self, name: &str, took: Duration) {
        self.passes
            .get_or_create(&DeciderLabel {
                decider: name.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a containerd call (`path`: its gRPC method path).
    pub fn containerd_call(&self, path: &str, took: Duration) {
        let method = path.rsplit('/').next().unwrap_or(path);
        let service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .and_then(|s| s.rsplit('.').next())
            .unwrap_or("");
        self.containerd
            .get_or_create(&MethodLabel {
                method: format!("{service}.{method}"),
            })
            .observe(took.as_secs_f64());
    }

    /// Adds the running metrics to `reg` (a scrape's registry, prefix
    /// `rouse`).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "requests",
            "Requests this node's mesh answered, by container and status class",
            self.requests.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Time from a request's arrival at this node to its response head (mesh and upstream)",
            self.duration.clone(),
        );
        reg.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the instance's (or next node's) response head",
            self.upstream.clone(),
        );
        reg.register(
            "request_body_bytes",
            "Request body bytes sent on to instances or other nodes",
            self.bytes_in.clone(),
        );
        reg.register(
            "response_body_bytes",
            "Response body bytes sent back to clients",
            self.bytes_out.clone(),
        );
        reg.register(
            "mesh_requests_queued",
            "Requests waiting here for a slot of a ready instance",
            self.queued.clone(),
        );
        reg.register(
            "cold_starts",
            "Cold starts from zero this node's mesh asked for",
            self.cold_starts.clone(),
        );
        reg.register(
            "cold_start_wait_seconds",
            "Time requests waited for a container to come up from zero",
            self.cold_start_wait.clone(),
        );
        reg.register(
            "wake_duration_seconds",
            "Time to resume a suspended instance before a request went to it",
            self.wakes.clone(),
        );
        reg.register(
            "raft_proposal_duration_seconds",
            "Time from a proposal on this node to its application here",
            self.proposals.clone(),
        );
        reg.register(
            "leader_pass_duration_seconds",
            "A leader loop's pass (decide and write), by loop",
            self.passes.clone(),
        );
        reg.register(
            "containerd_call_duration_seconds",
            "containerd calls by service and method",
            self.containerd.clone(),
        );
        reg.register(
            "raft_leader_changes",
            "Leader changes this node has seen",
            self.leader_changes.clone(),
        );
        reg.register(
            "raft_snapshot_build_seconds",
            "Time to build and store a snapshot of the state",
            self.snapshot_builds.clone(),
        );
        reg.register(
            "raft_snapshot_install_seconds",
            "Time to install a snapshot sent by the leader",
            self.snapshot_installs.clone(),
        );
    }

    pub fn set_committed(&self, index: u64) {
        self.committed.fetch_max(index, Ordering::Relaxed);
    }
}

/// Counts leader changes as this node's Raft sees them, until the node
/// stops.
pub async fn watch_leader(
    mut rx: tokio::sync::watch::Receiver<
        openraft::RaftMetrics<crate::state::NodeId, openraft::BasicNode>,
    >,
) {
    let mut leader = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now != leader && now.is_some() {
            METRICS.leader_changes.inc();
        }
        leader = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_shared_and_rendered_with_conventional_names() {
        let t = Telemetry::default();
        let key = ContainerKey::new("ns", "web");
        t.container(&key)
            .answered(http::StatusCode::OK, Duration::from_millis(3));
        t.container(&key)
            .answered(http::StatusCode::BAD_GATEWAY, Duration::from_millis(3));
        t.container(&key).bytes_out.inc_by(10);
        t.containerd_call(
            "/containerd.services.tasks.v1.Tasks/Start",
            Duration::from_millis(1),
        );
        let mut reg = Registry::with_prefix("rouse");
        t.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for want in [
            "rouse_requests_total{namespace=\"ns\",container=\"web\",code_class=\"2xx\"} 1",
            "rouse_requests_total{namespace=\"ns\",container=\"web\",code_class=\"5xx\"} 1",
            "rouse_request_duration_seconds_count{namespace=\"ns\",container=\"web\"} 2",
            "rouse_response_body_bytes_total{namespace=\"ns\",container=\"web\"} 10",
            "rouse_containerd_call_duration_seconds_count{method=\"Tasks.Start\"} 1",
        ] {
            assert!(out.contains(want), "{want} not in {out}");
        }
    }
}
