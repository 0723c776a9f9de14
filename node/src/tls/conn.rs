//! Connections on listeners that speak both plain and TLS (told apart by
//! the first byte), what a handler may know of them, and the HTTP
//! connectors peer traffic uses.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::material::Tls;
use super::pki::node_of;
use crate::state::NodeId;

/// A connection accepted on a listener that speaks both plain and TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a handler may know of its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub tls: bool,
    /// The verified cluster certificate the other side showed.
    pub peer: Option<PeerCert>,
}

/// A verified peer certificate: the node it names, and its SHA-256.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub node: NodeId,
    pub cert_sha256: String,
}

impl Io {
    pub fn info(&self) -> ConnInfo {
        match self {
            Io::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                tls: false,
                peer: None,
            },
            Io::Tls(s) => {
                let (tcp, conn) = s.get_ref();
                ConnInfo {
                    remote: tcp.peer_addr().ok(),
                    tls: true,
                    peer: conn
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| {
                            Some(PeerCert {
                                node: node_of(c)?,
                                cert_sha256: hex::encode(Sha256::digest(c.as_ref())),
                            })
                        }),
                }
            }
        }
    }
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A connection that holds one of its listener's slots until it is dropped.
pub struct Limited<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> T::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Tells TLS from plain by the first byte, and completes a TLS handshake.
/// `acceptor` is `None` when TLS is off (`--insecure`): everything is plain.
/// A client that sends nothing, or no finished handshake, within `timeout`
/// is dropped.
pub async fn accept(
    stream: TcpStream,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> io::Result<Io> {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(timeout, stream.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data before the timeout"))??;
    let Some(acceptor) = acceptor else {
        return Ok(Io::Plain(stream));
    };
    if n == 1 && first[0] == TLS_HANDSHAKE {
        let s = tokio::time::timeout(timeout, acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
        Ok(Io::Tls(Box::new(s)))
    } else {
        Ok(Io::Plain(stream))
    }
}

/// Accepts connections on `listener` and yields them once told apart (and
/// handshaken), for tonic's `serve_with_incoming`. A connection that fails
/// its handshake is logged and dropped; it never reaches a handler.
pub fn incoming(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
    max_connections: usize,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Limited<Io>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            // At most `max_connections` at once, handshaking or served:
            // the rest wait in the kernel's backlog.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match accept(stream, acceptor.as_ref(), timeout).await {
                    Ok(io) => {
                        let _ = tx.send(Ok(Limited { io, _slot: permit })).await;
                    }
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        tracing::debug!(%remote, error = %e, "connection dropped: too slow")
                    }
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "peer connection refused: TLS handshake failed")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An HTTP connector for peer traffic: `https://` URLs get mTLS with the
/// cluster's certificates, `http://` stays plain (local instances,
/// `--insecure`).
pub fn connector(
    tls: &Tls,
    local: Option<std::net::IpAddr>,
    http2: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    https_connector(tls.client_config(), local, http2)
}

/// An HTTP connector that speaks TLS with `config` to `https://` URLs.
pub fn https_connector(
    config: rustls::ClientConfig,
    local: Option<std::net::IpAddr>,
    http2: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(3)));
    http.set_local_address(local);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    if http2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.enable_http1().wrap_connector(http)
    }
}
