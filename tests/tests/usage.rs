//! Metering end to end on real containerd: a warm container accrues its
//! allocation for the time it ran, a CPU-burning request shows in the CPU
//! it used, and a container at zero accrues nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rouse_client::{pb, Client};
use rouse_e2e::{eventually, push_test_image, TestCluster};

async fn total(c: &Client, ct: &str) -> pb::UsageRow {
    let mut c = c.clone();
    c.usage(pb::UsageRequest {
        namespace: "u".into(),
        container: ct.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_iter()
    .find(|r| r.container == ct)
    .unwrap_or_default()
}

/// The metered figures of a row (not its period).
fn figures(r: &pb::UsageRow) -> [u64; 8] {
    let f = |v: f64| (v * 1e6).round() as u64;
    [
        f(r.memory_gb_s_allocated),
        f(r.vcpu_s_allocated),
        f(r.memory_gb_s_used),
        f(r.cpu_s_used),
        r.requests,
        f(r.request_seconds),
        f(r.instance_s),
        f(r.suspended_s),
    ]
}

/// The ledger once it stops growing (nodes send every 10 s).
async fn settled(c: &Client, ct: &str) -> pb::UsageRow {
    let mut last = total(c, ct).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(11)).await;
        let now = total(c, ct).await;
        if figures(&now) == figures(&last) {
            return now;
        }
        last = now;
    }
    panic!("the usage of {ct} never settled: {last:?}");
}

fn within(got: f64, want: f64, pct: f64) -> bool {
    (got - want).abs() <= want * pct / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_use_and_idle_are_metered() {
    let image = push_test_image("rouse-test/usage", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("u", HashMap::new()).await.unwrap();
    let deploy = |name: &str, min: u32| pb::DeployContainerRequest {
        namespace: "u".into(),
        name: name.into(),
        image: Some(image.clone()),
        min_scale: Some(min),
        max_scale: Some(1),
        memory_mb: Some(256),
        cpu_mvcpu: Some(500),
        scale_to_zero_after_seconds: Some(10),
        ..Default::default()
    };
    // A container at zero, to watch accrue nothing.
    c.deploy_container(deploy("idle", 0)).await.unwrap();
    c.deploy_container(deploy("warm", 1)).await.unwrap();
    let ready = eventually("warm is ready", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("u", "warm", false)
                .await
                .map_err(|e| e.to_string())?;
            if ct.instances.iter().any(|i| i.state == "ready") {
                Ok(Instant::now())
            } else {
                Err("not ready".to_string())
            }
        }
    })
    .await;
    // A request that burns CPU for 2 s under a 500 mVCPU limit.
    let mesh = cluster.http(1);
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "30", "-H", "Host: warm.u.rouse.localhost"])
        .arg(format!("http://{mesh}/cgi-bin/spin?2"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("spun"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(ready.elapsed())).await;
    // Deleted: its instance leaves at once; its usage stays in the ledger.
    c.delete_container("u", "warm").await.unwrap();
    let lived = ready.elapsed().as_secs_f64();
    let u = settled(&c, "warm").await;
    println!(
        "warm: observed ready for {lived:.1} s; ledger: instance {:.1} s, {:.3} GB-s and {:.3} vCPU-s allocated (0.25 × and 0.5 × {lived:.1} s: {:.3}, {:.3}), {:.3} GB-s and {:.3} CPU-s used, {} requests, {:.1} request-s",
        u.instance_s, u.memory_gb_s_allocated, u.vcpu_s_allocated, 0.25 * lived, 0.5 * lived,
        u.memory_gb_s_used, u.cpu_s_used, u.requests, u.request_seconds
    );
    assert!(
        within(u.instance_s, lived, 5.0),
        "instance {} s vs {lived} s",
        u.instance_s
    );
    assert!(within(u.memory_gb_s_allocated, 0.25 * lived, 5.0), "{u:?}");
    assert!(within(u.vcpu_s_allocated, 0.5 * lived, 5.0), "{u:?}");
    // 2 s at most half a vCPU: about 1 CPU-second (plus the idle server).
    assert!(
        u.cpu_s_used > 0.6 && u.cpu_s_used < 1.6,
        "cpu used {} s",
        u.cpu_s_used
    );
    assert!(
        u.memory_gb_s_used > 0.0 && u.memory_gb_s_used < u.memory_gb_s_allocated,
        "{u:?}"
    );
    // Busy time is sampled every 500 ms: the 2 s request shows as 1.5–2.5 s.
    assert!(u.requests >= 1 && u.request_seconds >= 1.0, "{u:?}");

    // The idle container: at zero all along (past its warm start), nothing
    // accrues over 20 s.
    eventually("idle at zero", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("u", "idle", false)
                .await
                .map_err(|e| e.to_string())?;
            if ct.instances.is_empty() && ct.desired_scale == 0 {
                Ok(())
            } else {
                Err("not at zero".to_string())
            }
        }
    })
    .await;
    let before = settled(&c, "idle").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = total(&c, "idle").await;
    assert_eq!(
        figures(&before),
        figures(&after),
        "a container at zero accrued usage: {before:?} then {after:?}"
    );
    // The namespace total covers both; the CLI speaks the JSON contract.
    let (code, out, err) = cluster.cli(1, &["usage", "u", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    let ns_total = rows
        .iter()
        .find(|r| r["container"].is_null())
        .expect("a namespace total");
    for k in [
        "namespace",
        "container",
        "period_start",
        "period_end",
        "memory_gb_s_allocated",
        "vcpu_s_allocated",
        "memory_gb_s_used",
        "cpu_s_used",
        "requests",
        "request_s",
        "instance_s",
        "suspended_s",
    ] {
        assert!(ns_total.get(k).is_some(), "no {k} in {ns_total}");
    }
    assert!(ns_total["instance_s"].as_f64().unwrap() >= u.instance_s);
    let (code, _, err) = cluster.cli(1, &["usage", "u", "--by", "week"]);
    assert_ne!(code, 0);
    assert!(err.contains("by"), "{err}");
    cluster.assert_no_panics();
}

/// Instances' lifetimes as the test sees their tasks run in containerd:
/// id → (first seen running, last seen running).
type Lifetimes = HashMap<String, (Instant, Instant)>;

/// Polls the cluster's tasks every 250 ms for `d`.
async fn watch(cluster: &TestCluster, d: Duration, seen: &mut Lifetimes) {
    let until = Instant::now() + d;
    loop {
        let now = Instant::now();
        for (id, _, status) in cluster.tasks() {
            if status == "RUNNING" {
                seen.entry(id).or_insert((now, now)).1 = now;
            }
        }
        if now >= until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGKILL the node running the instance and the leader (another node
/// when they are one) mid-period, bring them back: the ledger holds the
/// instance's whole observed lifetime, neither losing the killed node's
/// unsent usage and downtime nor counting a re-sent batch twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_killing_the_instances_node_and_the_leader() {
    let image = push_test_image("rouse-test/usage", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let c = cluster.client(1).await;
    {
        let mut c = c.clone();
        c.create_namespace("u", HashMap::new()).await.unwrap();
        c.deploy_container(pb::DeployContainerRequest {
            namespace: "u".into(),
            name: "keep".into(),
            image: Some(image.clone()),
            min_scale: Some(1),
            max_scale: Some(1),
            memory_mb: Some(256),
            cpu_mvcpu: Some(500),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let inst = rouse_e2e::ready(&c, "u", "keep", 1).await.remove(0);
    let mut seen = Lifetimes::new();
    watch(&cluster, Duration::from_secs(14), &mut seen).await;
    let leader = cluster.leader().await;
    let mut victims = vec![inst.node];
    victims.push(if leader != inst.node {
        leader
    } else {
        cluster
            .node_ids()
            .into_iter()
            .find(|n| *n != inst.node)
            .unwrap()
    });
    let survivor = cluster
        .node_ids()
        .into_iter()
        .find(|n| !victims.contains(n))
        .unwrap();
    println!(
        "instance {} on node {}; leader {leader}; killing {victims:?}",
        inst.id, inst.node
    );
    for v in &victims {
        cluster.kill(*v);
    }
    watch(&cluster, Duration::from_secs(6), &mut seen).await;
    for v in &victims {
        cluster.restart(*v);
    }
    cluster.wait_voters(3).await;
    watch(&cluster, Duration::from_secs(14), &mut seen).await;
    let mut c = cluster.client(survivor).await;
    c.delete_container("u", "keep").await.unwrap();
    // Billed until its deletion (its stopping time is not).
    let deleted = Instant::now();
    let observed: f64 = seen
        .iter()
        .filter(|(id, _)| id.starts_with("u-keep-"))
        .map(|(_, (a, b))| ((*b).min(deleted) - *a).as_secs_f64())
        .sum();
    let u = settled(&c, "keep").await;
    println!(
        "observed running {observed:.1} s ({seen:?}); ledger: instance {:.1} s, {:.3} GB-s and {:.3} vCPU-s allocated",
        u.instance_s, u.memory_gb_s_allocated, u.vcpu_s_allocated
    );
    // Observed from readiness (the first poll after it) to the deletion;
    // the ledger samples every 500 ms (the last poll before the deletion
    // may be 250 ms early). A lost batch or the downtime would be 6 s or
    // more short, a doubled batch 10 s or so over.
    assert!(
        u.instance_s > observed - 1.5 && u.instance_s < observed + 1.0,
        "ledger {} s vs observed {observed} s",
        u.instance_s
    );
    assert!(
        within(u.memory_gb_s_allocated, 0.25 * u.instance_s, 1.0),
        "{u:?}"
    );
    cluster.assert_no_panics();
}
