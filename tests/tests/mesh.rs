//! End-to-end: the routing mesh on real nodes and a real containerd —
//! cold start from zero, scale to zero and wake, concurrency spread over
//! instances, timeouts, cross-node serving, and no request dropped while a
//! container scales 0 → N → 0.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rouse_client::{pb, Client};
use rouse_e2e::{eventually, push_test_image, TestCluster};

const DOMAIN: &str = "rouse.localhost";

/// GET through a node's mesh; returns (status, body).
fn get(mesh: &str, host: &str, path: &str, max_secs: u64) -> (u16, String) {
    get_with(mesh, host, path, max_secs, &[])
}

/// Like [`get`], with extra request headers.
fn get_with(mesh: &str, host: &str, path: &str, max_secs: u64, headers: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-m",
            &max_secs.to_string(),
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
        ])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .arg(format!("http://{mesh}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    match code.trim().parse().unwrap_or(0) {
        // No HTTP answer: the body is curl's reason.
        0 => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        code => (code, body.to_string()),
    }
}

async fn running_tasks(cluster: &TestCluster) -> usize {
    cluster
        .tasks()
        .into_iter()
        .filter(|t| t.2 == "RUNNING")
        .count()
}

fn spec(ns: &str, name: &str, image: &str) -> pb::DeployContainerRequest {
    pb::DeployContainerRequest {
        namespace: ns.into(),
        name: name.into(),
        image: Some(image.into()),
        min_scale: Some(0),
        cpu_mvcpu: Some(100),
        memory_mb: Some(64),
        ..Default::default()
    }
}

async fn instances(c: &Client, ns: &str, name: &str) -> Vec<pb::Instance> {
    c.clone()
        .get_container(ns, name, true)
        .await
        .unwrap()
        .instances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_scale_to_zero_wake_timeout_and_unknown_host() {
    let image = push_test_image("rouse-test/mesh", "1");
    let cluster = TestCluster::start_with_runtime(1, &["--autoscale-window", "4s"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("web", HashMap::new()).await.unwrap();
    let mut req = spec("web", "hello", &image);
    req.scale_to_zero_after_seconds = Some(10);
    req.timeout_seconds = Some(10);
    c.deploy_container(req).await.unwrap();
    let mesh = cluster.http(1);
    let host = format!("hello.web.{DOMAIN}");
    assert_eq!(
        running_tasks(&cluster).await,
        0,
        "min-scale 0 starts nothing"
    );

    // Cold start: the first request is held until an instance is ready.
    let t = Instant::now();
    let (code, body) = get(&mesh, &host, "/", 30);
    assert_eq!((code, body.trim()), (200, "hello from rouse"));
    println!(
        "cold start (image pulled on demand) answered in {:?}",
        t.elapsed()
    );

    // The cold start is measured, by phase, in `container get` and metrics.
    let cs = eventually("cold start recorded", || async {
        let (code, out, err) = cluster.cli(1, &["container", "get", "web/hello", "-o", "json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("{code} {e} {err}"))?;
        if v["cold_start"]["samples"].as_u64().unwrap_or(0) >= 1 {
            Ok(v["cold_start"].clone())
        } else {
            Err(out)
        }
    })
    .await;
    println!("cold start phases: {cs}");
    let total = cs["last_total_ms"].as_u64().unwrap();
    let phases: u64 = [
        "last_placement_ms",
        "last_pull_ms",
        "last_create_ms",
        "last_start_ms",
        "last_ready_ms",
    ]
    .iter()
    .map(|k| cs[*k].as_u64().unwrap())
    .sum();
    assert_eq!(total, phases);
    assert!(total > 0);
    // Metrics name every tenant's containers: not on the public mesh, on
    // the node's own (loopback) metrics listener.
    let (code, page) = get(&mesh, "127.0.0.1", "/metrics", 5);
    assert_eq!(code, 404, "{page}");
    assert!(!page.contains("rouse_"), "{page}");
    let metrics_addr = cluster.node(1).metrics.addr().to_string();
    let (code, metrics) = get(&metrics_addr, "127.0.0.1", "/metrics", 5);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("rouse_cold_start_last_seconds{") && metrics.contains("phase=\"pull\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("rouse_cold_start_median_seconds{"),
        "{metrics}"
    );

    // A request longer than the timeout gets 504.
    let t = Instant::now();
    let (code, body) = get(&mesh, &host, "/cgi-bin/slow?20", 30);
    assert_eq!(code, 504, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "504 after {:?}",
        t.elapsed()
    );

    // Unknown hosts get a short 404.
    let (code, body) = get(&mesh, &format!("nope.web.{DOMAIN}"), "/", 5);
    assert_eq!(code, 404);
    assert!(body.contains("no container"), "{body}");
    let (code, _) = get(&mesh, "example.com", "/", 5);
    assert_eq!(code, 404);

    // After scale-to-zero-after with no traffic: no running task.
    let t = Instant::now();
    eventually("scaled to zero", || async {
        let n = running_tasks(&cluster).await;
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} tasks running"))
        }
    })
    .await;
    println!(
        "scaled to zero {:?} after the last request",
        t.elapsed() + Duration::from_secs(10)
    );
    assert!(instances(&c, "web", "hello").await.is_empty());

    // The next request wakes it.
    let t = Instant::now();
    let (code, body) = get(&mesh, &host, "/", 30);
    assert_eq!((code, body.trim()), (200, "hello from rouse"));
    println!(
        "wake from zero (image cached) answered in {:?}",
        t.elapsed()
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_at_concurrency_one_spreads_over_instances_and_crosses_nodes() {
    let image = push_test_image("rouse-test/burst", "1");
    let cluster = TestCluster::start_with_runtime(2, &["--autoscale-window", "4s"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("web", HashMap::new()).await.unwrap();
    let mut req = spec("web", "slow", &image);
    req.max_concurrency = Some(1);
    req.max_scale = Some(4);
    req.min_scale = Some(1);
    c.deploy_container(req).await.unwrap();
    eventually("one ready instance", || async {
        let i = instances(&c, "web", "slow").await;
        if i.iter().any(|i| i.state == "ready") {
            Ok(i)
        } else {
            Err(format!("{i:?}"))
        }
    })
    .await;
    // Requests at the node without the instance are served by the other's.
    let inst = instances(&c, "web", "slow").await;
    let other = if inst[0].node == 1 { 2 } else { 1 };
    let host = format!("slow.web.{DOMAIN}");
    let (code, body) = get(&cluster.http(other), &host, "/", 10);
    assert_eq!((code, body.trim()), (200, "hello from rouse"), "cross-node");
    // A client posing as another node's hop (the header that says "serve
    // from your own instances only") is not believed: hops come over mTLS.
    let (code, body) = get_with(
        &cluster.http(other),
        &host,
        "/",
        10,
        &[
            "x-rouse-hop: 1",
            "x-rouse-host: nothing.else.rouse.localhost",
        ],
    );
    assert_eq!(
        (code, body.trim()),
        (200, "hello from rouse"),
        "posing as a hop"
    );

    // A burst of slow requests, one at a time per instance: all succeed,
    // spread over several instances.
    let meshes: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.http(id))
        .collect();
    let mut handles = Vec::new();
    for i in 0..6 {
        let mesh = meshes[i % meshes.len()].clone();
        let host = host.clone();
        handles.push(std::thread::spawn(move || {
            get(&mesh, &host, "/cgi-bin/slow?3", 60)
        }));
    }
    let mut served_by = HashSet::new();
    for h in handles {
        let (code, body) = h.join().unwrap();
        assert_eq!(code, 200, "{body}");
        served_by.insert(body.trim().rsplit(' ').next().unwrap().to_string());
    }
    println!(
        "6 concurrent slow requests served by {} instances: {served_by:?}",
        served_by.len()
    );
    assert!(served_by.len() >= 2, "served by {served_by:?}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_dropped_while_scaling_zero_to_n_to_zero() {
    let image = push_test_image("rouse-test/nodrop", "1");
    let cluster = TestCluster::start_with_runtime(2, &["--autoscale-window", "4s"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("web", HashMap::new()).await.unwrap();
    let mut req = spec("web", "steady", &image);
    req.max_concurrency = Some(2);
    req.max_scale = Some(4);
    req.scale_to_zero_after_seconds = Some(10);
    c.deploy_container(req).await.unwrap();
    let host = format!("steady.web.{DOMAIN}");
    let meshes: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.http(id))
        .collect();

    // Phases of (clients, seconds, path): cold start, burst, trickle.
    let phases = [(1usize, 4u64, "/"), (8, 12, "/cgi-bin/slow?1"), (1, 8, "/")];
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    let mut max_instances = 0;
    for (clients, secs, path) in phases {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        for k in 0..clients {
            let mesh = meshes[k % meshes.len()].clone();
            let host = host.clone();
            handles.push(std::thread::spawn(move || {
                let mut codes = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    let (code, body) = get(&mesh, &host, path, 60);
                    if code != 200 {
                        eprintln!("{code} after {:?} via {mesh}: {}", t.elapsed(), body.trim());
                    }
                    codes.push(code);
                }
                codes
            }));
        }
        while handles.iter().any(|h| !h.is_finished()) {
            max_instances = max_instances.max(instances(&c, "web", "steady").await.len());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for h in handles {
            for code in h.join().unwrap() {
                *counts.entry(code).or_default() += 1;
            }
        }
    }
    let total: usize = counts.values().sum();
    println!("{total} requests while scaling 0 → {max_instances} → …: {counts:?}");
    assert!(max_instances >= 2, "never scaled out: {max_instances}");
    // Every answer is a 200: at most 8 clients can never fill a queue of
    // 1,000, so a 503 (or any other status) is a dropped request.
    assert!(counts.keys().all(|c| *c == 200), "{counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) > 20);
    // And back to zero once traffic stops.
    eventually("back to zero", || async {
        let n = instances(&c, "web", "steady").await.len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} instances"))
        }
    })
    .await;
    cluster.assert_no_panics();
}

/// A gRPC service deployed with `--protocol h2c`, called through the mesh
/// by a tonic client (HTTP/2 end to end, trailers included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_through_the_mesh() {
    let bin = rouse_e2e::bin_dir().join("grpc-health-server");
    assert!(
        bin.exists(),
        "{} missing: cargo build --bins",
        bin.display()
    );
    let image = rouse_e2e::push_binary_image(&bin, "rouse-test/grpc", "1");
    let cluster = TestCluster::start_with_runtime(2, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("rpc", HashMap::new()).await.unwrap();
    let mut req = spec("rpc", "health", &image);
    req.protocol = pb::Protocol::H2c.into();
    c.deploy_container(req).await.unwrap();
    // Through each node's mesh (one of them forwards to the other), from zero.
    for node in [1u64, 2] {
        let mesh = cluster.http(node);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{mesh}"))
            .unwrap()
            .origin(format!("http://health.rpc.{DOMAIN}").parse().unwrap())
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: "rouse.test".into(),
            })
            .await
            .unwrap_or_else(|s| panic!("via node {node}: {s}"));
        assert_eq!(
            r.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        // A gRPC error status (in trailers) passes through too.
        let e = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "via node {node}: {e}");
    }
    cluster.assert_no_panics();
}

/// An idle instance is suspended (paused, memory kept) and the next
/// request wakes it in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_instance_wakes_on_request() {
    let image = push_test_image("rouse-test/suspend", "1");
    let cluster = TestCluster::start_with_runtime(1, &["--suspend-after", "2s"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("web", HashMap::new()).await.unwrap();
    let mut req = spec("web", "nap", &image);
    req.min_scale = Some(1);
    c.deploy_container(req).await.unwrap();
    let mesh = cluster.http(1);
    let host = format!("nap.web.{DOMAIN}");
    assert_eq!(get(&mesh, &host, "/", 30).0, 200);
    let inst = eventually("suspended", || async {
        let i = instances(&c, "web", "nap").await;
        let paused = cluster.tasks().iter().any(|t| t.2 == "PAUSED");
        match i.first() {
            Some(i) if i.state == "suspended" && paused => Ok(i.clone()),
            other => Err(format!("{other:?} paused={paused}")),
        }
    })
    .await;
    let t = Instant::now();
    let (code, body) = get(&mesh, &host, "/", 10);
    let took = t.elapsed();
    assert_eq!((code, body.trim()), (200, "hello from rouse"));
    println!("wake from suspended answered in {took:?}");
    assert!(took < Duration::from_secs(2), "wake took {took:?}");
    let (_, _, status) = cluster
        .tasks()
        .into_iter()
        .find(|t| t.0 == inst.id)
        .unwrap();
    assert_eq!(status, "RUNNING");
    eventually("ready again", || async {
        let i = instances(&c, "web", "nap").await;
        if i.first()
            .is_some_and(|i| i.state == "ready" || i.state == "suspended")
        {
            Ok(())
        } else {
            Err(format!("{i:?}"))
        }
    })
    .await;
    assert_eq!(
        instances(&c, "web", "nap").await[0].restarts,
        0,
        "woken, not restarted"
    );
    cluster.assert_no_panics();
}

/// Upgrades (the WebSocket handshake) pass through the mesh, and the
/// upgraded connection carries bytes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_passes_through() {
    use std::io::{Read, Write};
    let bin = rouse_e2e::bin_dir().join("upgrade-echo-server");
    let image = rouse_e2e::push_binary_image(&bin, "rouse-test/upgrade", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("ws", HashMap::new()).await.unwrap();
    c.deploy_container(spec("ws", "echo", &image))
        .await
        .unwrap();
    let mesh = cluster.http(1);
    let host = format!("echo.ws.{DOMAIN}");
    assert_eq!(get(&mesh, &host, "/", 30), (200, "plain\n".to_string()));
    let mut s = std::net::TcpStream::connect(&mesh).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "connection closed during handshake: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for msg in ["ping", "a longer message through the tunnel"] {
        s.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), msg);
    }
    cluster.assert_no_panics();
}
