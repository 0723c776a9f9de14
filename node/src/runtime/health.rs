//! Readiness of a local instance: its port accepts a connection and, with a
//! health path, that path answers 2xx.

use std::net::SocketAddr;
use std::time::Duration;

/// Resolves once `addr` accepts a connection and, with a health path,
/// once that path answers 2xx. Tries every few milliseconds: a cold
/// start's last phase waits here.
pub async fn wait_ready(addr: SocketAddr, health_path: Option<&str>) {
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            match health_path {
                None => return,
                Some(path) => {
                    if health_ok(stream, addr, path).await {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn health_ok(stream: tokio::net::TcpStream, addr: SocketAddr, path: &str) -> bool {
    use http_body_util::Empty;
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::new());
    let ok = match req {
        Ok(req) => matches!(
            tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await,
            Ok(Ok(resp)) if resp.status().is_success()
        ),
        Err(_) => false,
    };
    driver.abort();
    ok
}
