//! Deploys a container, waits until it is ready, prints its logs and mints
//! a token for it (the same as sdk/python/examples/deploy_and_wait.py).
//!
//!     ROUSE_ENDPOINT=http://127.0.0.1:7071 ROUSE_TOKEN=$(cat .rouse-local/node1/admin-token) \
//!       cargo run -p rouse-client --example deploy_and_wait -- 127.0.0.1:5055/rouse/hello:latest

use std::time::{Duration, Instant};

use rouse_client::{pb, Client};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5055/rouse/hello:latest".into());
    let endpoint =
        std::env::var("ROUSE_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7071".into());
    let token = std::env::var("ROUSE_TOKEN").ok();
    let mut c = Client::connect(&endpoint, token.as_deref()).await?;
    match c.create_namespace("rsshop", Default::default()).await {
        Err(e) if e.code() != Some(tonic::Code::AlreadyExists) => return Err(e.into()),
        _ => {}
    }
    c.deploy_container(pb::DeployContainerRequest {
        namespace: "rsshop".into(),
        name: "web".into(),
        image: Some(image),
        min_scale: Some(1),
        max_scale: Some(2),
        memory_mb: Some(64),
        privacy: pb::Privacy::Private as i32,
        ..Default::default()
    })
    .await?;
    let t = Instant::now();
    let ready = loop {
        let ct = c.get_container("rsshop", "web", false).await?;
        let ready: Vec<pb::Instance> = ct
            .instances
            .into_iter()
            .filter(|i| i.generation == ct.generation && i.state == "ready")
            .collect();
        if !ready.is_empty() {
            break ready;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err("not ready after 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for i in &ready {
        println!("ready: {} on node {}", i.id, i.node);
    }
    let mut logs = c
        .logs(pb::LogsRequest {
            namespace: "rsshop".into(),
            name: "web".into(),
            ..Default::default()
        })
        .await?;
    while let Some(chunk) = logs.message().await? {
        print!(
            "[{}] {}",
            chunk.instance,
            String::from_utf8_lossy(&chunk.data)
        );
    }
    let t = c.create_token("rsshop", Some("web"), 3600).await?;
    println!("token id: {}", t.id);
    println!("token: {}", t.token);
    Ok(())
}
