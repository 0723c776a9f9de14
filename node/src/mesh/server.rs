//! The mesh's listeners: the public one (plain HTTP from clients, and from
//! instances on the node's bridge address) and the hop one (other nodes'
//! meshes, over mutual TLS: the only connections whose hop headers are
//! believed). Both bound connections, head sizes and the time to send a
//! request head.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::stack::Mesh;
use crate::trust::PeerTrust;

/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Which listener: clients', or other nodes'.
#[derive(Clone)]
pub enum Listener {
    /// Plain HTTP from anyone; hop headers are dropped.
    Public,
    /// Other nodes' hops: mutual TLS with a cluster certificate (plain with
    /// `--insecure`), checked against the revocations.
    Hops {
        tls: crate::tls::Tls,
        trust: PeerTrust,
    },
}

/// Accepts from whichever of `listeners` has a connection first.
async fn accept_any(
    listeners: &[TcpListener],
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let pending = listeners.iter().map(|l| Box::pin(l.accept()));
    futures::future::select_all(pending).await.0
}

/// Serves `mesh` on `listeners` until the task is dropped; `slots` bounds
/// the connections served at once across all of them (one accept loop, so
/// a slot waits for the next connection on any listener, never one each).
pub async fn serve(
    mesh: Arc<Mesh>,
    listeners: Vec<TcpListener>,
    kind: Listener,
    slots: Arc<tokio::sync::Semaphore>,
) {
    if listeners.is_empty() {
        return;
    }
    let config = mesh.config.clone();
    let (acceptor, trust) = match kind {
        Listener::Public => (None, None),
        Listener::Hops { tls, trust } if tls.insecure() => (None, Some(trust)),
        Listener::Hops { tls, trust } => match tls.server_config(true) {
            Ok(c) => (Some(tokio_rustls::TlsAcceptor::from(c)), Some(trust)),
            Err(e) => {
                tracing::error!(error = %e, "mesh: no TLS for hops from other nodes");
                return;
            }
        },
    };
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = match accept_any(&listeners).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "mesh accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mesh = mesh.clone();
        let acceptor = acceptor.clone();
        let trust = trust.clone();
        let header_timeout = config.header_timeout;
        tokio::spawn(async move {
            // Held by the connection, and by any tunnel an upgrade makes
            // of it, until both are done.
            let permit = Arc::new(permit);
            let stream = match crate::tls::accept(stream, acceptor.as_ref(), header_timeout).await {
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
            // A hop listener takes only TLS (with a cluster certificate,
            // mandatory), unless peer traffic is plain.
            if acceptor.is_some() && !stream.info().tls {
                tracing::debug!(%remote, "hop listener: a plain connection refused");
                return;
            }
            let info = stream.info();
            let hops = trust.is_some();
            let slot = super::forward::ConnSlot(permit.clone());
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let mesh = mesh.clone();
                    req.extensions_mut().insert(slot.clone());
                    // Checked on every request: a node removed while its
                    // connection stays open is refused from its next request.
                    let peer = trust.as_ref().is_some_and(|t| t.check(Some(&info)).is_ok());
                    async move {
                        if hops && !peer {
                            let mut r = super::error::text(
                                http::StatusCode::FORBIDDEN,
                                "this listener serves only the cluster's members\n",
                            );
                            r.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                            return Ok::<_, Infallible>(r);
                        }
                        Ok::<_, Infallible>(mesh.handle(req, remote, peer).await)
                    }
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEADER_BYTES);
            // A connection that answers no ping within the header
            // timeout (a silent client) is closed.
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(header_timeout))
                .keep_alive_timeout(header_timeout)
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
