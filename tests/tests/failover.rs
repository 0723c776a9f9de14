//! End-to-end: placement over zones, a node's death (its process and its
//! containers SIGKILLed) and the replacement of its instances, cleanup
//! when it returns, and a drain while the container keeps serving.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rouse_client::{pb, Client};
use rouse_e2e::{eventually, push_test_image, TestCluster};

async fn placed(c: &Client) -> Vec<pb::Instance> {
    c.clone()
        .get_container("web", "api", true)
        .await
        .unwrap()
        .instances
}

fn get(mesh: &str, host: &str) -> u16 {
    rouse_e2e::http_status(mesh, host, 30)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_death_reschedules_and_drain_keeps_serving() {
    let image = push_test_image("rouse-test/failover", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &["--node-grace", "2s"]).await;
    let c = cluster.client(1).await;
    c.clone()
        .create_namespace("web", HashMap::new())
        .await
        .unwrap();
    c.clone()
        .deploy_container(pb::DeployContainerRequest {
            namespace: "web".into(),
            name: "api".into(),
            image: Some(image),
            min_scale: Some(3),
            max_scale: Some(3),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            ..Default::default()
        })
        .await
        .unwrap();

    // min-scale 3 on 3 nodes in 3 zones: one instance per node.
    let first = eventually("3 ready instances", || async {
        let i = placed(&c).await;
        if i.iter().filter(|i| i.state == "ready").count() == 3 {
            Ok(i)
        } else {
            Err(format!("{i:?}"))
        }
    })
    .await;
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for i in &first {
        *per_node.entry(i.node).or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([(1, 1), (2, 1), (3, 1)]),
        "{first:?}"
    );

    // SIGKILL node 3's process and its containers.
    let victim = 3u64;
    let moved: Vec<String> = first
        .iter()
        .filter(|i| i.node == victim)
        .map(|i| i.id.clone())
        .collect();
    cluster.kill(victim);
    for id in &moved {
        cluster.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }
    let t = Instant::now();
    let replaced = eventually("instance replaced on a live node", || async {
        let i = placed(&c).await;
        let live_ready = i
            .iter()
            .filter(|i| i.node != victim && i.state == "ready")
            .count();
        if live_ready == 3 {
            Ok(i)
        } else {
            Err(format!("{i:?}"))
        }
    })
    .await;
    let took = t.elapsed();
    println!("node {victim} SIGKILLed: its instance was running on a live node after {took:?}");
    assert!(took < Duration::from_secs(5), "rescheduling took {took:?}");
    assert!(replaced.iter().all(|i| !moved.contains(&i.id)));
    let nodes = c.clone().list_nodes(true).await.unwrap();
    assert_eq!(nodes.iter().find(|n| n.id == victim).unwrap().state, "down");

    // The node returns: it is up again and removes the moved-away instance.
    cluster.restart(victim);
    eventually("returned node removed its old instance", || async {
        let left = cluster.ctr(&["containers", "ls", "-q"]);
        if moved.iter().any(|id| left.contains(id.as_str())) {
            Err(left)
        } else {
            Ok(())
        }
    })
    .await;
    eventually("node back up", || async {
        let n = c
            .clone()
            .list_nodes(true)
            .await
            .map_err(|e| e.to_string())?;
        if n.iter()
            .find(|n| n.id == victim)
            .is_some_and(|n| n.state == "up")
        {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;

    // Drain node 1 while requests keep flowing through node 2's mesh.
    let mesh = cluster.http(2);
    let host = "api.web.rouse.localhost".to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, mesh, host) = (stop.clone(), mesh.clone(), host.clone());
        std::thread::spawn(move || {
            let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                *codes.entry(get(&mesh, &host)).or_default() += 1;
            }
            codes
        })
    };
    let (code, out, err) = cluster.cli(3, &["node", "drain", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    eventually("node 1 drained", || async {
        let i = placed(&c).await;
        let ready_elsewhere = i
            .iter()
            .filter(|i| i.node != 1 && i.state == "ready")
            .count();
        if i.iter().all(|i| i.node != 1) && ready_elsewhere == 3 {
            Ok(())
        } else {
            Err(format!("{i:?}"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = load.join().unwrap();
    println!("requests during the drain: {codes:?}");
    assert!(codes.keys().all(|c| *c == 200), "{codes:?}");
    let (code, out, _) = cluster.cli(1, &["node", "list", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n1 = v.as_array().unwrap().iter().find(|n| n["id"] == 1).unwrap();
    assert_eq!(
        (n1["state"].as_str(), n1["instances"].as_u64()),
        (Some("draining"), Some(0)),
        "{v}"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplaceable_instances_are_pending_with_a_reason() {
    let image = push_test_image("rouse-test/pending", "1");
    let cluster = TestCluster::start_with_runtime(1, &["--cpu-capacity", "1000"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("web", HashMap::new()).await.unwrap();
    c.deploy_container(pb::DeployContainerRequest {
        namespace: "web".into(),
        name: "api".into(),
        image: Some(image),
        min_scale: Some(2),
        cpu_mvcpu: Some(600),
        memory_mb: Some(64),
        region: Some("nowhere".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    // (Other reasons may show first, while nodes register.)
    let reason = eventually("region reason", || async {
        let ct = c
            .clone()
            .get_container("web", "api", true)
            .await
            .map_err(|e| e.to_string())?;
        if ct.pending_reason.contains("region") {
            Ok(ct.pending_reason)
        } else {
            Err(ct.pending_reason)
        }
    })
    .await;
    assert_eq!(
        reason,
        "0 of 2 instances placed: no node in region \"nowhere\""
    );
    let (code, out, _) = cluster.cli(1, &["container", "deploy", "web/api", "--region", ""]);
    assert_eq!(code, 0, "{out}");
    let reason = eventually("capacity reason", || async {
        let ct = c
            .clone()
            .get_container("web", "api", true)
            .await
            .map_err(|e| e.to_string())?;
        if ct.pending_reason.contains("mVCPU") {
            Ok(ct.pending_reason)
        } else {
            Err(ct.pending_reason)
        }
    })
    .await;
    assert_eq!(
        reason,
        "1 of 2 instances placed: no node has 600 mVCPU and 64 MB free"
    );
    let (_, out, _) = cluster.cli(1, &["container", "get", "web/api"]);
    assert!(out.contains("pending: 1 of 2 instances placed"), "{out}");
}
