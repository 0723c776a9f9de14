//! The mesh workload: requests to a min-scale 2 container through every
//! node's mesh while nodes fail, counting every answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rouse_client::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOST: &str = "web.mesh.rouse.localhost";

/// Builds the test image, deploys `mesh/web` with min-scale 2 and waits
/// until both instances are ready.
pub async fn deploy(endpoint: &str, registry: &str) -> anyhow::Result<()> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let tag = format!("{}", std::process::id());
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(["push", registry, &format!("rouse-chaos/web:{tag}")])
        .status()?;
    anyhow::ensure!(st.success(), "building the mesh workload's image failed");
    let mut c = crate::connect(endpoint).await?;
    c.create_namespace("mesh", Default::default()).await?;
    c.deploy_container(pb::DeployContainerRequest {
        namespace: "mesh".into(),
        name: "web".into(),
        image: Some(format!("{registry}/rouse-chaos/web:{tag}")),
        min_scale: Some(2),
        max_scale: Some(2),
        cpu_mvcpu: Some(100),
        memory_mb: Some(64),
        timeout_seconds: Some(10),
        ..Default::default()
    })
    .await?;
    let t = Instant::now();
    loop {
        let ct = c.get_container("mesh", "web", false).await?;
        if ct.instances.iter().filter(|i| i.state == "ready").count() >= 2 {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "mesh workload not ready: {:?}",
            ct.instances
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn undeploy(endpoint: &str) {
    if let Ok(mut c) = crate::connect(endpoint).await {
        let _ = c.delete_container("mesh", "web").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// One GET through a node's mesh; the status, or None for no answer.
pub async fn get(addr: SocketAddr) -> Option<u16> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        head.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(12), fut)
        .await
        .ok()
        .flatten()
}

/// Fires requests at random nodes' meshes until `until`.
pub async fn client(
    seed: u64,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    until: Instant,
    counts: Arc<Mutex<BTreeMap<String, usize>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(0xC0FFEE));
    while Instant::now() < until {
        let a = {
            let v = addrs.lock().unwrap_or_else(|p| p.into_inner());
            if v.is_empty() {
                None
            } else {
                Some(v[rng.random_range(0..v.len())])
            }
        };
        let Some(a) = a else { break };
        let key = match get(a).await {
            Some(code) => code.to_string(),
            None => "error".to_string(),
        };
        *counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }
}

/// Kills whatever instances a run left in its containerd namespace.
pub fn remove_leftovers(sock: &str, ns: &str) {
    let ctr = |args: &[&str]| {
        std::process::Command::new("ctr")
            .args(["--address", sock, "-n", ns])
            .args(args)
            .output()
    };
    let ids = |what: &str| -> Vec<String> {
        ctr(&[what, "ls", "-q"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for t in ids("tasks") {
        let _ = ctr(&["tasks", "kill", "-s", "SIGKILL", &t]);
    }
    std::thread::sleep(Duration::from_millis(500));
    for t in ids("tasks") {
        let _ = ctr(&["tasks", "rm", "-f", &t]);
    }
    for c in ids("containers") {
        let _ = ctr(&["containers", "rm", &c]);
    }
}
