//! Readiness of a local instance: its port accepts a connection and, with a
//! health path, that path answers 2xx.

use std::time::Duration;

/// Resolves once 127.0.0.1:`port` accepts a connection and, with a
/// health path, once that path answers 2xx.
pub async fn wait_ready(port: u16, health_path: Option<&str>) {
    loop {
        if let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            match health_path {
                None => return,
                Some(path) => {
                    if health_ok(stream, port, path).await {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn health_ok(stream: tokio::net::TcpStream, port: u16, path: &str) -> bool {
    use http_body_util::Empty;
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io).await
    else {
        return false;
    };
    let driver = tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, format!("127.0.0.1:{port}"))
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
