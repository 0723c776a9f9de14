//! The mesh's request path, layer by layer, with one span per request:
//!
//! ```text
//!  route (Host → container) → authorize (private: token) → activate (hold
//!  until an instance is ready, cold-starting one) → concurrency limit (a
//!  slot on a local instance, or a hop) → timeout (the container's, from
//!  arrival) → forward
//! ```
//!
//! Each layer is a module of its own; a layer's error is a [`MeshError`],
//! turned into a response in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::{Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;

use super::activate::{Activator, Target};
use super::authorize;
use super::demand::Demand;
use super::error::{MeshError, RespBody};
use super::forward::{self, Held, Upstreams, HOP, ORIGINAL_HOST, RESERVATION};
use super::route::{self, Route};
use crate::cluster::{now_ms, Cluster};
use crate::local::{LocalInstances, Resumer};
use crate::telemetry::{ContainerMetrics, METRICS};

/// The mesh's own settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub base_domain: String,
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Header carrying a request's id, generated when the client sent none.
pub const REQUEST_ID: &str = "x-request-id";

pub struct Mesh {
    pub config: MeshConfig,
    cluster: Arc<Cluster>,
    demand: Demand,
    activator: Activator,
    upstreams: Upstreams,
}

impl Mesh {
    pub fn new(
        config: MeshConfig,
        cluster: Arc<Cluster>,
        local: Arc<LocalInstances>,
        resumer: Resumer,
        upstreams: Upstreams,
    ) -> Arc<Self> {
        Arc::new(Mesh {
            activator: Activator::new(cluster.clone(), local, resumer),
            config,
            cluster,
            demand: Demand::default(),
            upstreams,
        })
    }

    /// Per-container demand on this node (what the load reporter sends).
    pub fn demand(&self) -> &Demand {
        &self.demand
    }

    /// Serves one request. `peer`: it came from another node over mutual
    /// TLS (or `--insecure`), so its hop headers are believed.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        peer: bool,
    ) -> Response<RespBody> {
        if !peer {
            // A client cannot pose as another node's hop.
            req.headers_mut().remove(HOP);
            req.headers_mut().remove(ORIGINAL_HOST);
            req.headers_mut().remove(RESERVATION);
        }
        let id = request_id(req.headers_mut());
        let host = host_of(&req);
        let span = tracing::info_span!(
            "mesh.request",
            id = %id,
            host = %host,
            node = self.cluster.id,
            status = tracing::field::Empty,
        );
        crate::trace::continue_from(&span, req.headers());
        let arrived = std::time::Instant::now();
        async {
            let (resp, metrics) = self.serve(req, &host, remote).await;
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "answered by the mesh");
                    e.into_response()
                }
            };
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            if let Some(m) = metrics {
                m.answered(resp.status(), arrived.elapsed());
            }
            tracing::Span::current().record("status", resp.status().as_u16());
            resp
        }
        .instrument(span)
        .await
    }

    /// Routes and passes the request; with the container's metrics once
    /// it is known (a request for no container counts nowhere).
    async fn serve(
        &self,
        req: Request<Incoming>,
        host: &str,
        remote: SocketAddr,
    ) -> (
        Result<Response<RespBody>, MeshError>,
        Option<Arc<ContainerMetrics>>,
    ) {
        let route = match self.route(host).await {
            Ok(r) => r,
            Err(e) => return (Err(e), None),
        };
        let metrics = METRICS.container(&route.key);
        if let Err(e) = self.authorize(&req, &route) {
            return (Err(e), Some(metrics));
        }
        let demand = self.demand.enter(&route.key);
        let hop = req.headers().contains_key(HOP);
        let timeout = route.timeout;
        let key = route.key.clone();
        let passed = tokio::time::timeout(
            timeout,
            self.pass(req, route, hop, remote, demand, metrics.clone()),
        )
        .await;
        let resp = match passed {
            Ok(r) => r,
            Err(_) => Err(MeshError::Timeout(key, timeout.as_secs())),
        };
        (resp, Some(metrics))
    }

    /// Finds the request's container.
    async fn route(&self, host: &str) -> Result<Route, MeshError> {
        let resolve = || {
            let sm = self.cluster.sm.read();
            route::resolve(&sm.data, &self.config.base_domain, host)
        };
        let route = match resolve() {
            // This node may not have applied a deploy the client has seen
            // committed through another node: catch up once, then decide.
            Err(MeshError::UnknownContainer(_)) => {
                let _ = tokio::time::timeout(CATCH_UP, self.cluster.read_barrier(false)).await;
                resolve()?
            }
            other => other?,
        };
        Ok(route)
    }

    /// A private container's request must show a token for it.
    fn authorize(&self, req: &Request<Incoming>, route: &Route) -> Result<(), MeshError> {
        if !route.private {
            return Ok(());
        }
        let sm = self.cluster.sm.read();
        authorize::authorize(
            authorize::bearer(req.headers()),
            &sm.data,
            &route.key,
            now_ms() / 1000,
        )
        .map_err(MeshError::from)
    }

    /// Activate, take a slot (or hop), forward.
    async fn pass(
        &self,
        mut req: Request<Incoming>,
        route: Route,
        hop: bool,
        remote: SocketAddr,
        demand: super::demand::DemandGuard,
        metrics: Arc<ContainerMetrics>,
    ) -> Result<Response<RespBody>, MeshError> {
        let reservation = req
            .headers()
            .get(RESERVATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match self
            .activator
            .target(&route, hop, reservation, &self.demand, &metrics)
            .await?
        {
            Target::Local { id, addr, slot } => {
                tracing::debug!(instance = %id, "to a local instance");
                let held = Held {
                    slot: Some(slot),
                    demand: Some(demand),
                    metrics,
                };
                let base = format!("http://{addr}");
                if route.private {
                    forward::strip_credentials(req.headers_mut());
                }
                let via = forward::Via {
                    from_peer: hop,
                    to_hop: false,
                };
                self.upstreams
                    .forward(req, &base, route.protocol, remote, via, held)
                    .await
            }
            Target::Remote {
                node,
                addr,
                reservation,
            } => {
                if let Some(Ok(v)) = reservation.map(|r| http::HeaderValue::from_str(&r)) {
                    req.headers_mut().insert(RESERVATION, v);
                }
                tracing::debug!(node, "to another node's mesh");
                let base = format!("{}://{addr}", self.cluster.pool.scheme());
                let held = Held {
                    slot: None,
                    demand: Some(demand),
                    metrics,
                };
                let via = forward::Via {
                    from_peer: hop,
                    to_hop: true,
                };
                match self
                    .upstreams
                    .forward(req, &base, route.protocol, remote, via, held)
                    .await
                {
                    Err(MeshError::NodeUnreachable(_, why)) => {
                        // Nothing was sent: avoid that node for a while.
                        self.activator.suspect(node);
                        Err(MeshError::NodeUnreachable(node, why))
                    }
                    other => other,
                }
            }
        }
    }

    /// The cluster this mesh serves.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// What this node holds per container now (in flight or queued).
    pub fn loads(&self) -> Vec<crate::loads::ContainerLoad> {
        self.demand.loads()
    }
}

/// How long a request for a container this node does not know waits for
/// the node to catch up with the leader before 404.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// The Host a request names (across a hop, the client's original one).
fn host_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(ORIGINAL_HOST)
        .or_else(|| req.headers().get(HOST))
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// The request's id: the client's `X-Request-Id` when it sent a sane one,
/// else a new one, set on the request so the instance sees it.
fn request_id(h: &mut http::HeaderMap) -> String {
    let given = h
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string);
    let id = given.unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_or_made() {
        let mut h = http::HeaderMap::new();
        let made = request_id(&mut h);
        assert_eq!(made.len(), 32);
        assert_eq!(h[REQUEST_ID], made.as_str());
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(request_id(&mut h), "abc-1");
    }
}
