//! The mesh listener: bounded connections, a deadline for request heads,
//! bounded head sizes, and TLS for other nodes' hops (told apart from plain
//! clients by the first byte).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::stack::Mesh;
use crate::trust::PeerTrust;

/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `mesh` on `listener` until the task is dropped.
pub async fn serve(mesh: Arc<Mesh>, listener: TcpListener, tls: crate::tls::Tls, trust: PeerTrust) {
    let config = mesh.config.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let acceptor = if tls.insecure() {
        None
    } else {
        match tls.server_config(true) {
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
        let mesh = mesh.clone();
        let acceptor = acceptor.clone();
        let trust = trust.clone();
        let header_timeout = config.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // TLS here is another node's hop, with a cluster certificate
            // (mandatory); clients speak plain HTTP.
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
            let peer = trust.check(Some(&stream.info())).is_ok();
            let svc = hyper::service::service_fn(move |req| {
                let mesh = mesh.clone();
                async move { Ok::<_, Infallible>(mesh.handle(req, remote, peer).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
