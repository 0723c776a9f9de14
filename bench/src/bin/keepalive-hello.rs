//! The mesh benchmark's backend: an HTTP/1.1 server on 0.0.0.0:$PORT that
//! keeps connections alive and answers every request at once with
//! `hello from rouse`, so a proxy benchmark measures the proxy, not the
//! backend's connection handling. A trigger's delivery (`X-Rouse-Event-Id`)
//! is noted on standard output with the time it arrived (Unix µs), for the
//! trigger benchmark.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    println!("rouse hello listening on {port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let hello = service_fn(|req: Request<hyper::body::Incoming>| async move {
                if let Some(id) = req
                    .headers()
                    .get("x-rouse-event-id")
                    .and_then(|v| v.to_str().ok())
                {
                    let ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros());
                    let trigger = req
                        .headers()
                        .get("x-rouse-trigger")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    println!("event {trigger} {id} {ms}");
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"hello from rouse\n",
                ))))
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), hello)
                .await;
        });
    }
}
