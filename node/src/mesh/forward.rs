//! The last layer: sends the request to a local instance or to another
//! node's mesh and streams the answer back, holding the request's slot and
//! demand guards until the response body ends. Upgrades (WebSocket…) are
//! spliced through.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::demand::DemandGuard;
use super::error::{MeshError, RespBody};
use super::route::HOP_BY_HOP;
use crate::local::SlotGuard;
use crate::state::Protocol;
use crate::telemetry::ContainerMetrics;
use std::sync::Arc;

/// Header a node sets when it forwards a request to another node's mesh,
/// so that node serves it from its own instances only.
pub const HOP: &str = "x-rouse-hop";
/// The client's original Host, carried across a hop.
pub const ORIGINAL_HOST: &str = "x-rouse-host";
/// On a hop: the token of the slot the receiving node holds for it.
pub const RESERVATION: &str = "x-rouse-reservation";

/// What a forwarded request holds until its response body ends.
pub struct Held {
    pub slot: Option<SlotGuard>,
    pub demand: Option<DemandGuard>,
    /// The container's metrics (bytes and upstream time).
    pub metrics: Arc<ContainerMetrics>,
}

/// A body that adds the bytes of its data frames to a counter; a response
/// body also holds the request's guards until it ends or is dropped.
pub struct Counted<B> {
    inner: B,
    bytes: prometheus_client::metrics::counter::Counter,
    _held: Option<Held>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: prometheus_client::metrics::counter::Counter) -> Self {
        Counted {
            inner,
            bytes,
            _held: None,
        }
    }

    /// A response body: counted as bytes out, holding `held`.
    fn guarded(inner: B, held: Held) -> Self {
        Counted {
            inner,
            bytes: held.metrics.bytes_out.clone(),
            _held: Some(held),
        }
    }
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled {
            if let Some(d) = f.data_ref() {
                self.bytes.inc_by(d.len() as u64);
            }
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

type Https = HttpsConnector<HttpConnector>;

/// Clients for local instances (plain) and other nodes' meshes (mutual TLS
/// unless `--insecure`).
pub struct Upstreams {
    /// To instances on this node: from whatever address reaches them (the
    /// node's address on the instance bridge).
    local: Clients,
    /// To other nodes' hop listeners: from the node's own address.
    hops: Clients,
}

struct Clients {
    http1: Client<Https, Counted<Incoming>>,
    h2: Client<Https, Counted<Incoming>>,
    /// For upgrade requests, whose body is empty.
    upgrades: Client<Https, http_body_util::Empty<Bytes>>,
}

impl Clients {
    fn new(tls: &crate::tls::Tls, source: Option<std::net::IpAddr>) -> Self {
        let conn1 = crate::tls::connector(tls, source, false);
        let conn2 = crate::tls::connector(tls, source, true);
        Clients {
            http1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(conn1.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(conn2),
            upgrades: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(conn1),
        }
    }
}

impl Upstreams {
    /// `source`: the address hops leave from (None: the kernel's choice).
    pub fn new(tls: &crate::tls::Tls, source: Option<std::net::IpAddr>) -> Self {
        Upstreams {
            local: Clients::new(tls, None),
            hops: Clients::new(tls, source),
        }
    }

    /// Sends `req` to `base` (`scheme://host:port`). `hop`: `base` is
    /// another node's mesh, which gets the hop headers.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        base: &str,
        protocol: Protocol,
        remote: SocketAddr,
        via: Via,
        held: Held,
    ) -> Result<Response<RespBody>, MeshError> {
        let hop = via.to_hop;
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| MeshError::BadPath(e.to_string()))?;
        let original_host = original_host(&req);
        *req.uri_mut() = uri;
        let upgrade = rewrite_headers(req.headers_mut(), remote, via, original_host);
        // The next node's span, or the instance's own, continues this trace.
        crate::trace::carry(&tracing::Span::current(), req.headers_mut());
        let clients = if hop { &self.hops } else { &self.local };
        if upgrade {
            return Self::tunnel(clients, req, base, held).await;
        }
        let mut req = req.map(|b| Counted::new(b, held.metrics.bytes_in.clone()));
        let sent = std::time::Instant::now();
        let result = match protocol {
            Protocol::H2c => {
                *req.version_mut() = Version::HTTP_2;
                clients.h2.request(req).await
            }
            Protocol::Http1 => {
                *req.version_mut() = Version::HTTP_11;
                clients.http1.request(req).await
            }
        };
        match result {
            Ok(resp) => {
                held.metrics.upstream.observe(sent.elapsed().as_secs_f64());
                let (mut parts, body) = resp.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(*name);
                }
                let body = Counted::guarded(body, held);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(e) if hop && e.is_connect() => {
                tracing::warn!(error = %e, upstream = base, "another node's mesh is unreachable");
                Err(MeshError::NodeUnreachable(0, e.to_string()))
            }
            Err(e) => {
                tracing::warn!(error = %e, upstream = base, "upstream request failed");
                Err(MeshError::Upstream(e.to_string()))
            }
        }
    }

    /// Passes an HTTP/1.1 upgrade through: forwards the handshake, and on
    /// 101 splices the two upgraded connections.
    async fn tunnel(
        clients: &Clients,
        mut req: Request<Incoming>,
        base: &str,
        held: Held,
    ) -> Result<Response<RespBody>, MeshError> {
        let conn_slot = req.extensions().get::<ConnSlot>().cloned();
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
        let mut resp = clients.upgrades.request(upstream_req).await.map_err(|e| {
            tracing::warn!(error = %e, upstream = base, "upgrade request failed");
            MeshError::Upstream(e.to_string())
        })?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = resp.into_parts();
            return Ok(Response::from_parts(
                parts,
                Counted::guarded(body, held).boxed(),
            ));
        }
        let upstream_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _held = (held, conn_slot);
            match tokio::try_join!(client_side, upstream_side) {
                Ok((a, b)) => {
                    let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade"),
            }
        });
        let (parts, _) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            http_body_util::Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        ))
    }
}

/// The Host the client asked for (carried across a hop).
fn original_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers()
        .get(ORIGINAL_HOST)
        .or_else(|| req.headers().get(HOST))
        .cloned()
        .or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(http::header::UPGRADE)
        && h.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Rewrites a request's headers for the next hop: drops hop-by-hop headers
/// (keeping an upgrade's), adds X-Forwarded-* on the first hop, and carries
/// the original Host across a hop or restores it for the instance. Returns
/// whether the request is an upgrade. Pure.
/// A mesh connection's slot, carried by its requests so that a tunnel an
/// upgrade makes keeps it until the tunnel closes.
#[derive(Clone)]
pub struct ConnSlot(pub std::sync::Arc<tokio::sync::OwnedSemaphorePermit>);

/// Where a request came from and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct Via {
    /// It came from another node's mesh (which set the forwarding headers).
    pub from_peer: bool,
    /// It goes to another node's mesh.
    pub to_hop: bool,
}

/// Removes what a client showed to get past a private container's check:
/// the token is for the mesh, not for the instance.
pub fn strip_credentials(h: &mut HeaderMap) {
    h.remove(http::header::AUTHORIZATION);
    h.remove("x-auth-token");
}

pub fn rewrite_headers(
    h: &mut HeaderMap,
    remote: SocketAddr,
    via: Via,
    original_host: Option<HeaderValue>,
) -> bool {
    let upgrade = is_upgrade(h);
    let upgrade_header = h.get(http::header::UPGRADE).cloned();
    for name in HOP_BY_HOP {
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
    if !via.from_peer {
        // The node the client reached says who the client is and how it
        // came (plain HTTP: the mesh does not terminate TLS); the client's
        // own X-Forwarded-Proto is not believed. A node a request hops to
        // keeps what the first node said.
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", remote.ip()),
            None => remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        if let Some(host) = &original_host {
            h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        }
    }
    if via.to_hop {
        h.insert(HeaderName::from_static(HOP), HeaderValue::from_static("1"));
        if let Some(host) = &original_host {
            h.insert(HeaderName::from_static(ORIGINAL_HOST), host.clone());
        }
    } else {
        h.remove(HOP);
        h.remove(ORIGINAL_HOST);
        h.remove(RESERVATION);
        if let Some(host) = &original_host {
            h.insert(HOST, host.clone());
        }
    }
    upgrade
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn to_an_instance_the_host_is_restored_and_forwarding_headers_added() {
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("keep-alive", "5"),
            ("x-forwarded-for", "1.2.3.4"),
            (HOP, "1"),
            (ORIGINAL_HOST, "web.ns.rouse.localhost"),
        ]);
        let remote: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let host = HeaderValue::from_static("web.ns.rouse.localhost");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let direct = Via {
            from_peer: false,
            to_hop: false,
        };
        assert!(!rewrite_headers(&mut h, remote, direct, Some(host)));
        assert!(!h.contains_key("connection") && !h.contains_key("keep-alive"));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(
            h["x-forwarded-proto"], "http",
            "a client's claim is overwritten"
        );
        assert_eq!(h[HOST], "web.ns.rouse.localhost");
        assert!(!h.contains_key(HOP) && !h.contains_key(ORIGINAL_HOST));
    }

    #[test]
    fn across_a_hop_the_original_host_travels_and_upgrades_survive() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let remote: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let host = HeaderValue::from_static("web.ns.rouse.localhost");
        let out = Via {
            from_peer: false,
            to_hop: true,
        };
        assert!(rewrite_headers(&mut h, remote, out, Some(host.clone())));
        assert_eq!(h[HOP], "1");
        assert_eq!(h[ORIGINAL_HOST], "web.ns.rouse.localhost");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(
            h["x-forwarded-for"], "10.0.0.9",
            "the client, said by the first node"
        );
        // The node it hops to keeps what the first node said.
        let peer: SocketAddr = "10.0.0.2:9000".parse().unwrap();
        let arrived = Via {
            from_peer: true,
            to_hop: false,
        };
        rewrite_headers(&mut h, peer, arrived, Some(host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert!(!h.contains_key(HOP));
    }
}
