//! End-to-end static stability: a node cut off from the majority (the other
//! two nodes stopped: their sockets stay open and nothing answers, as
//! behind a dropped link) keeps serving the container it runs from its last
//! known state, says so in its health, and refuses writes at once with a
//! clear error instead of hanging; when the link heals it converges.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rouse_client::pb;
use rouse_e2e::{deploy, eventually, http_status, push_test_image, ready, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_keeps_serving_and_refuses_writes_fast() {
    let image = push_test_image("rouse-test/stability", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let c = cluster.client(1).await;
    c.clone()
        .create_namespace("web", HashMap::new())
        .await
        .unwrap();
    c.clone()
        .deploy_container(pb::DeployContainerRequest {
            max_scale: Some(1),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            ..deploy("web", "api", &image, 1)
        })
        .await
        .unwrap();
    let inst = ready(&c, "web", "api", 1).await;
    let alone = inst[0].node;
    let mesh = cluster.http(alone);
    let host = "api.web.rouse.localhost";
    assert_eq!(http_status(&mesh, host, 5), 200);
    let mut n = cluster.client(alone).await;
    // Twice: the node cut off is the leader in one round and a follower
    // in the other, whichever it is first (a cut-off leader loses the
    // leadership to the other two, so the second round swaps the shapes).
    let mut shapes = Vec::new();
    for (round, secs) in [(1, 60), (2, 30)] {
        assert_eq!(n.node_info().await.unwrap().health, "ok");
        let leader = cluster.leader().await;
        shapes.push(leader == alone);
        cut_off_round(&mut cluster, &mut n, alone, round, secs, leader == alone).await;
    }
    assert!(
        shapes.contains(&true) && shapes.contains(&false),
        "the node was {shapes:?} leader: both shapes not covered"
    );
    assert_eq!(http_status(&mesh, host, 5), 200);
    cluster.assert_no_panics();
}

/// Cuts `alone` off from the others for `secs`: every request to its
/// container is answered, every write through it refused within 2 s, and
/// its health says degraded within 5 s; then heals and waits for
/// convergence.
async fn cut_off_round(
    cluster: &mut TestCluster,
    n: &mut rouse_client::Client,
    alone: u64,
    round: u32,
    secs: u64,
    leads: bool,
) {
    let others: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != alone)
        .collect();
    let mesh = cluster.http(alone);
    let host = "api.web.rouse.localhost";
    println!(
        "round {round}: node {alone} (leader: {leads}) is cut off from {others:?} for {secs} s"
    );
    for id in &others {
        cluster.pause(*id);
    }
    let cut = Instant::now();
    let (mut served, mut writes) = (0, 0);
    let mut degraded_after = None;
    let mut k = 0;
    while cut.elapsed() < Duration::from_secs(secs) {
        // Every request to its running container is answered.
        assert_eq!(
            http_status(&mesh, host, 5),
            200,
            "round {round}: request {served} after {:?} cut off",
            cut.elapsed()
        );
        served += 1;
        if degraded_after.is_none() {
            let h = n.node_info().await.unwrap().health;
            if h.starts_with("degraded: no quorum since") {
                degraded_after = Some(cut.elapsed());
            }
        }
        // A write through it now and then: refused within 2 s, clearly.
        if k % 10 == 0 {
            let t = Instant::now();
            let e = n
                .create_namespace(&format!("cut-{round}-{k}"), HashMap::new())
                .await
                .unwrap_err();
            let took = t.elapsed();
            assert!(took < Duration::from_secs(2), "a write took {took:?}: {e}");
            assert_eq!(e.code(), Some(tonic::Code::Unavailable), "{e}");
            assert!(
                e.to_string().contains("no quorum") || writes == 0,
                "write {k} after {:?}: {e}",
                cut.elapsed()
            );
            writes += 1;
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let degraded_after = degraded_after.expect("health never said degraded");
    let health = n.node_info().await.unwrap().health;
    println!(
        "round {round}: cut off {secs} s: {served} requests answered 200, {writes} writes refused within 2 s, \
         degraded after {degraded_after:?} ({health})"
    );
    assert!(
        degraded_after < Duration::from_secs(5),
        "{degraded_after:?}"
    );

    // Heal: the node hears from a majority again, takes writes and converges.
    for id in &others {
        cluster.resume(*id);
    }
    eventually("a write through the node once healed", || {
        let mut n = n.clone();
        async move {
            n.create_namespace(&format!("healed-{round}"), HashMap::new())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    eventually("health ok once healed", || {
        let mut n = n.clone();
        async move {
            let h = n.node_info().await.map_err(|e| e.to_string())?.health;
            if h == "ok" {
                Ok(())
            } else {
                Err(h)
            }
        }
    })
    .await;
    cluster.wait_converged().await;
}
