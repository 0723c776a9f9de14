//! End-to-end region-aware routing: with instances in two regions, a
//! region's requests stay in it while it has a ready instance, and go to
//! the other region when it has none.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rouse_client::pb;
use rouse_e2e::{deploy, eventually, http_status, push_test_image, TestCluster};

/// Requests node `id`'s mesh answered for web/api (hops to it included).
fn answered(cluster: &TestCluster, id: u64) -> u64 {
    let addr = cluster.node(id).metrics.addr();
    let out = std::process::Command::new("curl")
        .args(["-s", &format!("http://{addr}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rouse_requests_total{") && l.contains("container=\"api\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_stay_in_their_region_and_fail_over_when_it_has_none() {
    let image = push_test_image("rouse-test/regions", "1");
    // Node 1 takes requests in region a and runs nothing (cordoned); node
    // 2 runs region a's instance, node 3 region b's.
    let cluster =
        TestCluster::start_with_runtime_in(&[("a1", "a"), ("a2", "a"), ("b1", "b")], &[]).await;
    let mut c = cluster.client(1).await;
    c.cordon(1).await.unwrap();
    c.create_namespace("web", HashMap::new()).await.unwrap();
    c.deploy_container(pb::DeployContainerRequest {
        max_scale: Some(2),
        cpu_mvcpu: Some(100),
        memory_mb: Some(64),
        ..deploy("web", "api", &image, 2)
    })
    .await
    .unwrap();
    let ready = rouse_e2e::ready(&c, "web", "api", 2).await;
    let mut nodes: Vec<u64> = ready.iter().map(|i| i.node).collect();
    nodes.sort();
    assert_eq!(nodes, vec![2, 3], "{ready:?}");
    assert_eq!(
        c.get_container("web", "api", false).await.unwrap().routing,
        "local-first"
    );
    let mesh = cluster.http(1);
    let host = "api.web.rouse.localhost";

    // Three rounds of 40: none crosses to region b.
    for round in 0..3 {
        let before = answered(&cluster, 3);
        for k in 0..40 {
            assert_eq!(
                http_status(&mesh, host, 10),
                200,
                "round {round}, request {k}"
            );
        }
        let crossed = answered(&cluster, 3) - before;
        println!("round {round}: 40 requests from region a, {crossed} crossed to region b");
        assert_eq!(crossed, 0, "round {round}");
    }

    // Region a's instance dies (its task killed): requests go to region b.
    let a_instance = ready.iter().find(|i| i.node == 2).unwrap().id.clone();
    let before = answered(&cluster, 3);
    cluster.ctr(&["tasks", "kill", "-s", "SIGKILL", &a_instance]);
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while start.elapsed() < Duration::from_secs(6) {
        if http_status(&mesh, host, 10) == 200 {
            ok += 1
        } else {
            failed += 1
        }
    }
    let crossed = answered(&cluster, 3) - before;
    println!(
        "region a's instance killed: {ok} answered, {failed} failed in 6 s; {crossed} served by region b"
    );
    assert!(crossed > 0, "nothing failed over to region b");
    // Region a's instance comes back (restarted): requests stay home again.
    eventually("region a's instance ready again", || {
        let mut c = c.clone();
        let id = a_instance.clone();
        async move {
            let ct = c
                .get_container("web", "api", true)
                .await
                .map_err(|e| e.to_string())?;
            // Restarted in place, or replaced on the same node.
            ct.instances
                .iter()
                .any(|i| i.node == 2 && i.state == "ready" && (i.restarts > 0 || i.id != id))
                .then_some(())
                .ok_or(format!("{:?}", ct.instances))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = answered(&cluster, 3);
    for _ in 0..40 {
        assert_eq!(http_status(&mesh, host, 10), 200);
    }
    assert_eq!(
        answered(&cluster, 3) - before,
        0,
        "after region a recovered"
    );
    cluster.assert_no_panics();
}
