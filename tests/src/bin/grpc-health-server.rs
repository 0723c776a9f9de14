//! A tiny gRPC service for the mesh's h2c test: the standard health
//! service on 0.0.0.0:$PORT, reporting SERVING.

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("rouse.test", tonic_health::ServingStatus::Serving)
        .await;
    println!("grpc health server on {port}");
    tonic::transport::Server::builder()
        .add_service(service)
        .serve(([0, 0, 0, 0], port).into())
        .await
        .unwrap();
}
