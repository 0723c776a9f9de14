//! Prometheus metrics of a node, served on a listener of their own
//! (`--metrics`, loopback by default: they name every tenant's containers),
//! at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use openraft::{BasicNode, RaftMetrics};

use crate::loads::ContainerLoad;
use crate::state::{NodeId, StateData};
use crate::telemetry::METRICS;

/// The metrics page (served on `--metrics`, not on the public mesh).
fn page(mesh: &super::stack::Mesh) -> http::Response<super::error::RespBody> {
    let body = {
        let cluster = mesh.cluster();
        let sm = cluster.sm.read();
        let raft = cluster.raft.metrics().borrow().clone();
        render(&sm.data, &raft, &mesh.loads())
    };
    // As encoded: OpenMetrics allows nothing after its closing `# EOF`.
    let mut r = http::Response::new(
        http_body_util::Full::new(bytes::Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(mesh: std::sync::Arc<super::stack::Mesh>, listener: tokio::net::TcpListener) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mesh = mesh.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            page(&mesh)
                        } else {
                            super::error::text(
                                http::StatusCode::NOT_FOUND,
                                "this listener serves only /metrics\n",
                            )
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%remote, error = %e, "metrics connection");
            }
        });
    }
}

type Labels = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Renders the metrics in the text exposition format, from the state, this
/// node's Raft metrics and its demand.
pub fn render(
    state: &StateData,
    m: &RaftMetrics<NodeId, BasicNode>,
    loads: &[ContainerLoad],
) -> String {
    let cold_last = Family::<Labels, FGauge>::default();
    let cold_median = Family::<Labels, FGauge>::default();
    let instances = Family::<Labels, Gauge>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    let scaling = Family::<Labels, Counter>::default();
    let desired = Family::<Labels, Gauge>::default();
    let firings = Family::<Labels, Counter>::default();
    let trigger_latency = Family::<Labels, FGauge>::default();
    for t in state.triggers.values() {
        for (outcome, n) in [
            ("fired", t.fired),
            ("failed", t.failed),
            ("missed", t.missed),
        ] {
            firings
                .get_or_create(&labels(&[
                    ("namespace", &t.namespace),
                    ("container", &t.container),
                    ("trigger", &t.name),
                    ("kind", t.spec.source.kind()),
                    ("outcome", outcome),
                ]))
                .inc_by(n);
        }
        if let Some(f) = t.history.last() {
            trigger_latency
                .get_or_create(&labels(&[
                    ("namespace", &t.namespace),
                    ("container", &t.container),
                    ("trigger", &t.name),
                ]))
                .set(f.latency_ms as f64 / 1000.0);
        }
    }
    {
        for c in state.containers.values() {
            for (direction, n) in [("up", c.scale_ups), ("down", c.scale_downs)] {
                scaling
                    .get_or_create(&labels(&[
                        ("namespace", &c.namespace),
                        ("container", &c.name),
                        ("direction", direction),
                    ]))
                    .inc_by(n);
            }
            desired
                .get_or_create(&labels(&[
                    ("namespace", &c.namespace),
                    ("container", &c.name),
                ]))
                .set(i64::from(c.desired_scale));
            if let Some((last, median)) = c.cold_start_summary() {
                for (phase, v) in [
                    ("placement", last.placement_ms),
                    ("pull", last.pull_ms),
                    ("create", last.create_ms),
                    ("start", last.start_ms),
                    ("ready", last.ready_ms),
                    ("total", last.total_ms),
                ] {
                    cold_last
                        .get_or_create(&labels(&[
                            ("namespace", &c.namespace),
                            ("container", &c.name),
                            ("phase", phase),
                        ]))
                        .set(v as f64 / 1000.0);
                }
                cold_median
                    .get_or_create(&labels(&[
                        ("namespace", &c.namespace),
                        ("container", &c.name),
                    ]))
                    .set(median as f64 / 1000.0);
            }
        }
        for i in state.instances.values() {
            let st = state
                .statuses
                .get(&i.id)
                .map_or("pending", |s| s.state.as_str());
            instances
                .get_or_create(&labels(&[
                    ("namespace", &i.namespace),
                    ("container", &i.container),
                    ("state", st),
                ]))
                .inc();
        }
    }
    for l in loads {
        in_flight
            .get_or_create(&labels(&[
                ("namespace", l.key.namespace()),
                ("container", l.key.name()),
            ]))
            .set(i64::from(l.in_flight));
    }
    let mut reg = Registry::with_prefix("rouse");
    let applied = m.last_applied.map_or(0, |l| l.index);
    let committed = METRICS.committed.load(Ordering::Relaxed).max(applied);
    for (name, help, v) in [
        ("raft_term", "This node's current Raft term", m.current_term),
        (
            "raft_last_log_index",
            "Last index in this node's Raft log",
            m.last_log_index.unwrap_or(0),
        ),
        (
            "raft_commit_index",
            "Last index this node knows committed",
            committed,
        ),
        (
            "raft_applied_index",
            "Last index applied to this node's state",
            applied,
        ),
        (
            "raft_apply_lag",
            "Committed entries not yet applied here",
            committed - applied,
        ),
        (
            "raft_is_leader",
            "1 while this node leads",
            u64::from(m.state == openraft::ServerState::Leader),
        ),
    ] {
        reg.register(
            name,
            help,
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
        );
    }
    METRICS.register(&mut reg);
    reg.register(
        "cold_start_last_seconds",
        "Last cold start of a container, by phase",
        cold_last,
    );
    reg.register(
        "cold_start_median_seconds",
        "Median of a container's recent cold starts",
        cold_median,
    );
    reg.register(
        "instances",
        "Instances by container and state (cluster-wide)",
        instances,
    );
    reg.register(
        "mesh_requests_in_flight",
        "Requests this node holds per container (in flight or queued)",
        in_flight,
    );
    reg.register(
        "scale_decisions",
        "Scaling decisions per container since its creation, up and down (cluster-wide)",
        scaling,
    );
    reg.register(
        "desired_scale",
        "Instances the autoscaler wants per container",
        desired,
    );
    reg.register(
        "trigger_firings",
        "Trigger deliveries per outcome since the trigger was made (fired: answered 2xx; failed: after its retries; missed: ticks past the catch-up window)",
        firings,
    );
    reg.register(
        "trigger_last_latency_seconds",
        "The last delivery's time from first attempt to answer",
        trigger_latency,
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}
