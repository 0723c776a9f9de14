//! The routing mesh: every node serves HTTP on `--http` and gets a request
//! for any container to a ready instance, starting one when there is none.
//!
//! ```text
//!  request ─▶ route (Host: NAME.NAMESPACE.BASE_DOMAIN) ─▶ timeout (container's)
//!          ─▶ local ready instance with a free slot? ──yes──▶ proxy to 127.0.0.1:port
//!                 │ no, but another node has one ──────────▶ proxy to that node's mesh
//!                 │ all busy here ─▶ wait for a slot (bounded queue; 503 when full)
//!                 │ none anywhere ─▶ activator: Scale≥1 through Raft, hold until ready
//!  in-flight + queued per container ──ReportLoad──▶ leader's autoscaler ──Scale──▶ Raft
//! ```
//!
//! - [`route`]: host parsing and slot choice (pure).
//! - [`autoscale`]: the scaling decision (pure) — the leader loop is here.

pub mod autoscale;
pub mod metrics;
pub mod route;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::cluster::{now_ms, Cluster};
use crate::state::{Command, NodeId, Protocol};

type RespBody = BoxBody<Bytes, hyper::Error>;

/// Header a node sets when it forwards a request to another node's mesh,
/// so that node serves it from its own instances only.
pub const HOP: &str = "x-rouse-hop";
/// The client's original Host, carried across a hop.
pub const ORIGINAL_HOST: &str = "x-rouse-host";
/// Requests one container may queue on one node before 503.
pub const QUEUE_CAP: usize = 1000;
/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Demand {
    in_flight: usize,
    last_request_ms: u64,
}

pub struct Mesh {
    cluster: Arc<Cluster>,
    /// Last time each local instance was handed a request.
    last_used: Mutex<HashMap<String, std::time::Instant>>,
    /// Local instances paused by the agent; resumed on the next request.
    suspended: Mutex<std::collections::HashSet<String>>,
    /// Serialises resumes per instance.
    resuming: tokio::sync::Mutex<()>,
    slots: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    demand: Mutex<HashMap<(String, String), Demand>>,
    /// Clients for local instances (plain) and other nodes' meshes (mutual
    /// TLS unless `--insecure`).
    http1: Client<HttpsConnector<HttpConnector>, Incoming>,
    h2: Client<HttpsConnector<HttpConnector>, Incoming>,
    /// For upgrade requests (WebSocket and the like), whose body is empty.
    upgrades: Client<HttpsConnector<HttpConnector>, http_body_util::Empty<Bytes>>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<RespBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(msg.into() + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Holds a request's place in its container's demand count.
struct DemandGuard {
    mesh: Arc<Mesh>,
    key: (String, String),
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        let mut d = self.mesh.demand.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = d.get_mut(&self.key) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }
}

/// Holds one of an instance's concurrency slots until the response body ends.
struct SlotGuard {
    slot: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    _demand: Option<DemandGuard>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
        self.wake.notify_waiters();
    }
}

/// A response body that releases its guards when it ends or is dropped.
struct Guarded<B> {
    inner: B,
    _guard: Option<SlotGuard>,
    _demand: Option<DemandGuard>,
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for Guarded<B> {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

enum Target {
    Local { id: String, port: u32 },
    Remote { node: NodeId, addr: String },
    None,
}

impl Mesh {
    pub fn new(cluster: Arc<Cluster>) -> Arc<Self> {
        let local = Some(cluster.config.listen.ip()).filter(|ip| !ip.is_unspecified());
        let conn1 = crate::tls::connector(&cluster.tls, local, false);
        let conn2 = crate::tls::connector(&cluster.tls, local, true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn1.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(conn2);
        let upgrades = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(conn1);
        Arc::new(Mesh {
            cluster,
            last_used: Mutex::new(HashMap::new()),
            suspended: Mutex::new(Default::default()),
            resuming: tokio::sync::Mutex::new(()),
            slots: Mutex::new(HashMap::new()),
            wake: Mutex::new(HashMap::new()),
            demand: Mutex::new(HashMap::new()),
            http1,
            h2,
            upgrades,
        })
    }

    /// Serves the mesh on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        // Bounded connections, header sizes and header read time, so slow or
        // huge clients cannot starve the node.
        let slots = Arc::new(tokio::sync::Semaphore::new(
            self.cluster.config.max_connections,
        ));
        let acceptor = if self.cluster.tls.insecure() {
            None
        } else {
            match self.cluster.tls.server_config(true) {
                Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
                Err(e) => {
                    tracing::error!(error = %e, "mesh: no TLS for hops from other nodes");
                    None
                }
            }
        };
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mesh = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // TLS here is another node's hop, with a cluster certificate
                // (mandatory); clients speak plain HTTP.
                let header_timeout = mesh.cluster.config.header_timeout;
                let stream = match crate::tls::accept(stream, acceptor.as_ref(), header_timeout)
                    .await
                {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        tracing::debug!(%remote, error = %e, "mesh connection dropped: too slow");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "mesh connection refused: TLS handshake failed");
                        return;
                    }
                };
                let peer = mesh.cluster.trusted_peer(Some(&stream.info())).is_ok();
                let svc = hyper::service::service_fn(move |req| {
                    let mesh = mesh.clone();
                    async move { Ok::<_, Infallible>(mesh.handle(req, remote, peer).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(MAX_HEADER_BYTES);
                builder
                    .http2()
                    .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
                    .max_concurrent_streams(1000);
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "mesh connection");
                }
            });
        }
    }

    fn wake_for(&self, ns: &str, name: &str) -> Arc<Notify> {
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(format!("{ns}/{name}")).or_default().clone()
    }

    fn slot(&self, id: &str) -> Arc<AtomicUsize> {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.entry(id.to_string()).or_default().clone()
    }

    /// How long a local instance has had no request (none yet: since `since`).
    pub fn idle_for(&self, id: &str, since: std::time::Instant) -> Duration {
        let last = self
            .last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(since);
        last.max(since).elapsed()
    }

    /// Marks a local instance suspended (the agent paused it).
    pub fn mark_suspended(&self, id: &str) {
        self.suspended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    pub fn is_suspended(&self, id: &str) -> bool {
        self.suspended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Thaws a suspended local instance before a request goes to it.
    async fn wake(&self, id: &str) -> Result<(), String> {
        if !self.is_suspended(id) {
            return Ok(());
        }
        let _one = self.resuming.lock().await;
        if !self.is_suspended(id) {
            return Ok(());
        }
        let agent = self
            .cluster
            .agent
            .get()
            .cloned()
            .ok_or("the node agent is not running")?;
        let t = std::time::Instant::now();
        agent.tasks.resume(id).await.map_err(|e| e.to_string())?;
        self.suspended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        tracing::info!(instance = id, took = ?t.elapsed(), "resumed suspended instance");
        agent.resumed(id);
        Ok(())
    }

    /// Requests in flight to a local instance.
    pub fn in_flight(&self, id: &str) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Waits until a (no longer routable) instance has no request in flight.
    pub async fn drain(&self, id: &str, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        while self.in_flight(id) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.suspended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Per-container demand on this node, for the autoscaler.
    pub fn load(&self) -> Vec<rouse_proto::peer::ContainerLoad> {
        let d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
        d.iter()
            .map(|((ns, name), v)| rouse_proto::peer::ContainerLoad {
                namespace: ns.clone(),
                name: name.clone(),
                in_flight: u32::try_from(v.in_flight).unwrap_or(u32::MAX),
                last_request_ms: v.last_request_ms,
            })
            .collect()
    }

    /// `peer`: the request came from another node over mutual TLS (or
    /// `--insecure`), so its hop headers are trusted.
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        peer: bool,
    ) -> Response<RespBody> {
        if !peer {
            // A client cannot pose as another node's hop.
            req.headers_mut().remove(HOP);
            req.headers_mut().remove(ORIGINAL_HOST);
        }
        let host = req
            .headers()
            .get(ORIGINAL_HOST)
            .or_else(|| req.headers().get(HOST))
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some((ns, name)) = route::parse_host(&host, &self.cluster.config.base_domain) else {
            if req.uri().path() == "/metrics" {
                let mut r = text(StatusCode::OK, metrics::render(&self.cluster, &self));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                return r;
            }
            return text(
                StatusCode::NOT_FOUND,
                format!("rouse: no container is served at host {host:?}"),
            );
        };
        let (timeout, protocol, max_conc, private) = {
            let sm = self.cluster.sm.read();
            match sm.data.container(&ns, &name) {
                Some(c) => (
                    Duration::from_secs(u64::from(c.spec.timeout_secs)),
                    c.spec.protocol,
                    c.spec.max_concurrency,
                    c.spec.privacy == crate::state::Privacy::Private,
                ),
                None => {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("rouse: no container {name} in namespace {ns}"),
                    )
                }
            }
        };
        // Checked on every node, hops included: the token travels with the
        // request, and a hop header proves nothing.
        if private {
            if let Err(e) = self.authorize(req.headers(), &ns, &name) {
                let status = match e {
                    crate::tokens::TokenError::WrongScope(_) => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                let mut r = text(status, format!("rouse: {e}"));
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"rouse\""),
                    );
                }
                return r;
            }
        }
        let key = (ns.clone(), name.clone());
        {
            let mut d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
            let e = d.entry(key.clone()).or_default();
            e.in_flight += 1;
            e.last_request_ms = now_ms();
        }
        let demand = DemandGuard {
            mesh: self.clone(),
            key,
        };
        let hop = req.headers().contains_key(HOP);
        let fut = self.clone().route(
            req,
            ns.clone(),
            name.clone(),
            hop,
            remote,
            protocol,
            max_conc as usize,
            demand,
        );
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "rouse: {ns}/{name} did not answer within its timeout of {}s",
                    timeout.as_secs()
                ),
            ),
        }
    }

    /// Checks a private container's token (X-Auth-Token or Authorization: Bearer).
    fn authorize(
        &self,
        headers: &http::HeaderMap,
        ns: &str,
        name: &str,
    ) -> Result<(), crate::tokens::TokenError> {
        use crate::tokens::TokenError;
        let token = headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| {
                headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        v.strip_prefix("Bearer ")
                            .or_else(|| v.strip_prefix("bearer "))
                    })
                    .map(str::trim)
            })
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Missing)?;
        let sm = self.cluster.sm.read();
        let keys: Vec<(String, Vec<u8>)> = sm
            .data
            .signing_keys
            .iter()
            .filter_map(|k| hex::decode(&k.public_hex).ok().map(|p| (k.kid.clone(), p)))
            .collect();
        let claims = crate::tokens::verify(token, &keys, now_ms() / 1000)?;
        let record = sm
            .data
            .tokens
            .get(&claims.jti)
            .ok_or_else(|| TokenError::Invalid("unknown token".into()))?;
        if record.revoked {
            return Err(TokenError::Revoked);
        }
        if claims.ns != ns || record.namespace != ns {
            return Err(TokenError::WrongScope(format!("namespace {}", claims.ns)));
        }
        match (&claims.ct, &record.container) {
            (None, None) => Ok(()),
            (Some(c), Some(rc)) if c == name && rc == name => Ok(()),
            (Some(c), _) => Err(TokenError::WrongScope(format!(
                "container {}/{c}",
                claims.ns
            ))),
            (None, Some(_)) => Err(TokenError::Invalid("claims and record disagree".into())),
        }
    }

    /// Where a request for `ns/name` can go now.
    fn pick(&self, ns: &str, name: &str, hop: bool, max_conc: usize) -> (Target, bool) {
        let me = self.cluster.id;
        let sm = self.cluster.sm.read();
        let mut local = Vec::new();
        let mut remote: HashMap<NodeId, usize> = HashMap::new();
        for i in sm.data.instances_of(ns, name) {
            let Some(st) = sm.data.statuses.get(&i.id) else {
                continue;
            };
            if !st.state.routable() {
                continue;
            }
            if i.node == me {
                local.push((i.id.clone(), st.port));
            } else if sm.data.nodes.contains_key(&i.node) && !sm.data.node_state(i.node).down {
                *remote.entry(i.node).or_default() += 1;
            }
        }
        let any_ready = !local.is_empty() || !remote.is_empty();
        if !local.is_empty() {
            let loads: Vec<(usize, usize)> = local
                .iter()
                .enumerate()
                .map(|(ix, (id, _))| (ix, self.slot(id).load(Ordering::Acquire)))
                .collect();
            if let Some(ix) = route::least_loaded(&loads, max_conc) {
                let (id, port) = local[ix].clone();
                return (Target::Local { id, port }, true);
            }
            if hop || remote.is_empty() {
                return (Target::None, true);
            }
        }
        if !hop && !remote.is_empty() {
            // Spread over nodes in proportion to their ready instances.
            let total: usize = remote.values().sum();
            let mut n = rand::random::<u32>() as usize % total.max(1);
            for (node, count) in &remote {
                if n < *count {
                    if let Some(rec) = sm.data.nodes.get(node) {
                        return (
                            Target::Remote {
                                node: *node,
                                addr: rec.http_addr.clone(),
                            },
                            true,
                        );
                    }
                }
                n = n.saturating_sub(*count);
            }
        }
        (Target::None, any_ready)
    }

    #[allow(clippy::too_many_arguments)]
    async fn route(
        self: Arc<Self>,
        req: Request<Incoming>,
        ns: String,
        name: String,
        hop: bool,
        remote: SocketAddr,
        protocol: Protocol,
        max_conc: usize,
        demand: DemandGuard,
    ) -> Response<RespBody> {
        let wake = self.wake_for(&ns, &name);
        let mut activated = false;
        let mut seen = 0u64;
        let mut queued = false;
        loop {
            let notified = wake.notified();
            let (target, any_ready) = self.pick(&ns, &name, hop, max_conc);
            match target {
                Target::Local { id, port } => {
                    let slot = self.slot(&id);
                    if slot.fetch_add(1, Ordering::AcqRel) >= max_conc {
                        slot.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    self.last_used
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone(), std::time::Instant::now());
                    let guard = SlotGuard {
                        slot,
                        wake: wake.clone(),
                        _demand: Some(demand),
                    };
                    if let Err(e) = self.wake(&id).await {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("rouse: could not resume instance {id}: {e}"),
                        );
                    }
                    let uri = format!("http://127.0.0.1:{port}");
                    return self
                        .forward(req, &uri, protocol, remote, false, Some(guard), None)
                        .await;
                }
                Target::Remote { node, addr } => {
                    let uri = format!("{}://{addr}", self.cluster.tls.scheme());
                    tracing::debug!(%ns, %name, node, "forwarding to another node's mesh");
                    return self
                        .forward(req, &uri, protocol, remote, true, None, Some(demand))
                        .await;
                }
                Target::None => {
                    if any_ready {
                        // Every instance here is at its concurrency limit: queue.
                        if !queued {
                            let waiting = self.demand_of(&ns, &name);
                            if waiting > QUEUE_CAP {
                                let mut r = text(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    format!(
                                        "rouse: {ns}/{name} has {QUEUE_CAP} requests queued; retry"
                                    ),
                                );
                                r.headers_mut().insert(
                                    http::header::RETRY_AFTER,
                                    HeaderValue::from_static("1"),
                                );
                                return r;
                            }
                            queued = true;
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                    } else {
                        if !activated && !hop {
                            activated = true;
                            self.activate(&ns, &name).await;
                        }
                        self.cluster
                            .applied_change(&mut seen, Duration::from_millis(100))
                            .await;
                    }
                }
            }
        }
    }

    fn demand_of(&self, ns: &str, name: &str) -> usize {
        let d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
        d.get(&(ns.to_string(), name.to_string()))
            .map_or(0, |v| v.in_flight)
    }

    /// Cold start: asks the cluster for at least one instance.
    async fn activate(&self, ns: &str, name: &str) {
        let target = {
            let sm = self.cluster.sm.read();
            sm.data
                .container(ns, name)
                .map(|c| (c.target_scale(), c.desired_scale))
        };
        if let Some((0, desired)) = target {
            tracing::info!(
                namespace = ns,
                container = name,
                "cold start: scaling from zero"
            );
            let cmd = Command::Scale {
                namespace: ns.into(),
                name: name.into(),
                replicas: desired.max(1),
            };
            if let Err(e) = self.cluster.write(cmd).await {
                tracing::debug!(error = %e, "scale from zero");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        base: &str,
        protocol: Protocol,
        remote: SocketAddr,
        hop: bool,
        guard: Option<SlotGuard>,
        demand: Option<DemandGuard>,
    ) -> Response<RespBody> {
        let original_host = req
            .headers()
            .get(ORIGINAL_HOST)
            .or_else(|| req.headers().get(HOST))
            .cloned()
            .or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri = match format!("{base}{path}").parse() {
            Ok(u) => u,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("rouse: bad request path: {e}"),
                )
            }
        };
        *req.uri_mut() = uri;
        let upgrade = is_upgrade(req.headers());
        let upgrade_header = req.headers().get(http::header::UPGRADE).cloned();
        let h = req.headers_mut();
        for name in route::HOP_BY_HOP {
            h.remove(*name);
        }
        if let (true, Some(u)) = (upgrade, upgrade_header) {
            h.insert(http::header::UPGRADE, u);
            h.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
        }
        if h.get(http::header::TE).is_some_and(|v| v != "trailers") {
            h.remove(http::header::TE);
        }
        if !hop {
            let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", remote.ip()),
                None => remote.ip().to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert(HeaderName::from_static("x-forwarded-for"), v);
            }
            if !h.contains_key("x-forwarded-proto") {
                h.insert(
                    HeaderName::from_static("x-forwarded-proto"),
                    HeaderValue::from_static("http"),
                );
            }
            if let Some(host) = &original_host {
                h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
            }
        }
        if hop {
            h.insert(HeaderName::from_static(HOP), HeaderValue::from_static("1"));
            if let Some(host) = &original_host {
                h.insert(HeaderName::from_static(ORIGINAL_HOST), host.clone());
            }
        } else {
            h.remove(HOP);
            h.remove(ORIGINAL_HOST);
            if let Some(host) = &original_host {
                h.insert(HOST, host.clone());
            }
        }
        if upgrade {
            return self.tunnel(req, base, guard, demand).await;
        }
        let result = match protocol {
            Protocol::H2c => {
                *req.version_mut() = Version::HTTP_2;
                self.h2.request(req).await
            }
            Protocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                self.http1.request(req).await
            }
        };
        match result {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                for name in route::HOP_BY_HOP {
                    parts.headers.remove(*name);
                }
                let body = Guarded {
                    inner: body,
                    _guard: guard,
                    _demand: demand,
                };
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::warn!(error = %e, upstream = base, "upstream request failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("rouse: the instance did not answer: {e}"),
                )
            }
        }
    }
}

fn is_upgrade(h: &http::HeaderMap) -> bool {
    h.contains_key(http::header::UPGRADE)
        && h.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

impl Mesh {
    /// Passes an HTTP/1.1 upgrade (WebSocket…) through: forwards the
    /// handshake, and on 101 splices the two upgraded connections.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        base: &str,
        guard: Option<SlotGuard>,
        demand: Option<DemandGuard>,
    ) -> Response<RespBody> {
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
        let mut resp = match self.upgrades.request(upstream_req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, upstream = base, "upgrade request failed");
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("rouse: the instance did not answer: {e}"),
                );
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            return Response::from_parts(
                parts,
                Guarded {
                    inner: body,
                    _guard: guard,
                    _demand: demand,
                }
                .boxed(),
            );
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _held = (guard, demand);
            match tokio::try_join!(client_side, upstream_side) {
                Ok((a, b)) => {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade"),
            }
        });
        let (parts, _) = resp.into_parts();
        Response::from_parts(
            parts,
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
    }
}

/// On the leader: folds nodes' load reports into windows and proposes
/// `Scale` when a container's desired scale changes.
#[derive(Default)]
pub struct Autoscaler {
    reports: Mutex<HashMap<NodeId, (u64, Vec<rouse_proto::peer::ContainerLoad>)>>,
}

impl Autoscaler {
    pub fn report(&self, node: NodeId, loads: Vec<rouse_proto::peer::ContainerLoad>) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, (now_ms(), loads));
    }

    /// When each node last reported (its liveness lease), in ms.
    pub fn last_seen(&self) -> HashMap<NodeId, u64> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, (t, _))| (*k, *t))
            .collect()
    }

    /// Runs while this node lives; acts only while it leads.
    pub async fn run(self: Arc<Self>, cluster: Arc<Cluster>) {
        let mut windows: HashMap<(String, String), autoscale::Window> = HashMap::new();
        let mut was_leader = false;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let leader = cluster.raft.metrics().borrow().state == openraft::ServerState::Leader;
            if !leader {
                was_leader = false;
                continue;
            }
            let now = now_ms();
            if !was_leader {
                // A new leader starts with fresh windows and gives every
                // container a full idle period before scaling it to zero.
                windows.clear();
                was_leader = true;
            }
            let mut totals: HashMap<(String, String), (f64, u64)> = HashMap::new();
            {
                let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
                for (at, loads) in reports.values() {
                    if now.saturating_sub(*at) > 3_000 {
                        continue;
                    }
                    for l in loads {
                        let e = totals
                            .entry((l.namespace.clone(), l.name.clone()))
                            .or_default();
                        e.0 += f64::from(l.in_flight);
                        e.1 = e.1.max(l.last_request_ms);
                    }
                }
            }
            let containers: Vec<crate::state::Container> = cluster
                .sm
                .read()
                .data
                .containers
                .values()
                .cloned()
                .collect();
            for c in containers {
                let key = (c.namespace.clone(), c.name.clone());
                let w = windows
                    .entry(key.clone())
                    .or_insert_with(|| autoscale::Window::starting(now));
                let (conc, last) = totals.get(&key).copied().unwrap_or((0.0, 0));
                w.record(now, conc);
                w.last_request_ms = w.last_request_ms.max(last);
                let ready = cluster
                    .sm
                    .read()
                    .data
                    .instances_of(&c.namespace, &c.name)
                    .count() as u32;
                let p = autoscale::Params {
                    window_ms: u64::try_from(cluster.config.autoscale_window.as_millis())
                        .unwrap_or(u64::MAX),
                    min_scale: c.spec.min_scale,
                    max_scale: c.spec.max_scale,
                    max_concurrency: c.spec.max_concurrency,
                    scale_to_zero_after_ms: u64::from(c.spec.scale_to_zero_after_secs) * 1000,
                    current: ready.max(c.desired_scale),
                };
                let want = autoscale::desired(w, p, now);
                if want != c.desired_scale {
                    tracing::info!(namespace = %c.namespace, container = %c.name, from = c.desired_scale, to = want, "autoscaling");
                    let cmd = Command::Scale {
                        namespace: c.namespace.clone(),
                        name: c.name.clone(),
                        replicas: want,
                    };
                    if let Err(e) = cluster.write(cmd).await {
                        tracing::debug!(error = %e, "scale not committed");
                    }
                }
            }
            windows.retain(|k, _| cluster.sm.read().data.container(&k.0, &k.1).is_some());
        }
    }
}

/// Sends this node's load to the leader about every second.
pub async fn report_load(cluster: Arc<Cluster>, mesh: Arc<Mesh>, autoscaler: Arc<Autoscaler>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loads = mesh.load();
        let m = cluster.raft.metrics().borrow().clone();
        let Some(leader) = m.current_leader else {
            continue;
        };
        if leader == cluster.id {
            autoscaler.report(cluster.id, loads);
            continue;
        }
        let Some(addr) = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
        else {
            continue;
        };
        if let Ok(mut client) = cluster.pool.client(&addr) {
            let mut req = tonic::Request::new(rouse_proto::peer::LoadReport {
                node: cluster.id,
                containers: loads,
            });
            req.set_timeout(Duration::from_secs(1));
            let _ = client.report_load(req).await;
        }
    }
}
