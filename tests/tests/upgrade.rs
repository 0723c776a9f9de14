//! End-to-end rolling upgrade, the documented procedure (deploy/three-hosts):
//! for each node in turn, take it out of the load balancer, `rouse node
//! drain N`, wait until its instances run elsewhere, stop it (SIGTERM),
//! start it again from its data dir (the "new binary"), `rouse node
//! uncordon N`, put it back. Steady load through the nodes in service the
//! whole time: no request fails.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_client::pb;
use rouse_e2e::{deploy, eventually, http_status, push_test_image, ready, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_restarted_in_turn_under_load_fails_no_request() {
    let image = push_test_image("rouse-test/upgrade", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let c = cluster.client(1).await;
    c.clone()
        .create_namespace("web", HashMap::new())
        .await
        .unwrap();
    c.clone()
        .deploy_container(pb::DeployContainerRequest {
            max_scale: Some(4),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            ..deploy("web", "api", &image, 3)
        })
        .await
        .unwrap();
    ready(&c, "web", "api", 3).await;

    // The load balancer: nodes in service, and a steady client over them.
    let meshes: HashMap<u64, String> = [1, 2, 3]
        .iter()
        .map(|id| (*id, cluster.http(*id)))
        .collect();
    let serving = Arc::new(Mutex::new(BTreeSet::from([1u64, 2, 3])));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (serving, stop, ok, failed) =
            (serving.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut k = 0usize;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let nodes: Vec<u64> = serving.lock().unwrap().iter().copied().collect();
                let node = nodes[k % nodes.len()];
                k += 1;
                let code = http_status(&meshes[&node], "api.web.rouse.localhost", 10);
                if code == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    failures.push((node, code));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            failures
        })
    };

    // Two rolling passes: the second runs on what the first left.
    for n in [1u64, 2, 3, 1, 2, 3] {
        let admin = cluster.client(if n == 1 { 2 } else { 1 }).await;
        serving.lock().unwrap().remove(&n);
        admin.clone().drain(n).await.unwrap();
        eventually(&format!("node {n}'s instances moved"), || {
            let mut a = admin.clone();
            async move {
                let ct = a
                    .get_container("web", "api", true)
                    .await
                    .map_err(|e| e.to_string())?;
                let elsewhere = ct
                    .instances
                    .iter()
                    .filter(|i| i.node != n && i.state == "ready")
                    .count();
                if ct.instances.iter().all(|i| i.node != n) && elsewhere >= 3 {
                    Ok(())
                } else {
                    Err(format!("{:?}", ct.instances))
                }
            }
        })
        .await;
        cluster.inner.nodes.get_mut(&n).unwrap().terminate();
        cluster.inner.nodes.get_mut(&n).unwrap().start(&[]).unwrap();
        cluster.wait_voters(3).await;
        eventually(&format!("node {n} uncordoned"), || {
            let mut a = admin.clone();
            async move { a.uncordon(n).await.map(|_| ()).map_err(|e| e.to_string()) }
        })
        .await;
        serving.lock().unwrap().insert(n);
        println!(
            "node {n} restarted: {} answered, {} failed so far",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failures = load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("two rolling restarts of 3 nodes under load: {ok} requests answered, {failed} failed {failures:?}");
    assert!(ok > 100, "too little load to show anything: {ok}");
    assert_eq!(failed, 0, "{failures:?}");
    cluster.assert_no_panics();
}
