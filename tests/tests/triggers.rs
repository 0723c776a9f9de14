//! Cron triggers end to end on a real 3-node cluster and real containerd:
//! ticks wake a scaled-to-zero container (public and private), each tick
//! is delivered with its event id within a second of its time, and with
//! the leader SIGKILLed twice no tick is claimed twice or lost. NATS
//! JetStream subjects (a real nats-server -js from deploy/test-env.sh):
//! every message delivered and acked after its 2xx, a refused one retried
//! then dead-lettered, and delivery moving on when the consumer's node dies.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rouse_client::{pb, Client};
use rouse_e2e::{eventually, push_test_image, TestCluster};

/// Every 2 seconds (a leading seconds field).
const EVERY_2S: &str = "*/2 * * * * *";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What the container's instances noted, from their logs on every node:
/// event id → how many times it arrived, for `trigger`.
fn received(cluster: &TestCluster, container: &str, trigger: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for id in cluster.node_ids() {
        let dir = cluster.data_dir(id).join("logs");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with(&format!("t-{container}-")) {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                let mut f = line.split_whitespace();
                if f.next() == Some("rouse-event") && f.next() == Some(trigger) {
                    if let (Some(ev), Some(how)) = (f.next(), f.next()) {
                        if how != "refused" {
                            *out.entry(ev.to_string()).or_default() += 1;
                        }
                    }
                }
            }
        }
    }
    out
}

/// Ticks of a 2-second schedule in (from, to].
fn ticks_between(from_ms: u64, to_ms: u64) -> Vec<u64> {
    let first = (from_ms / 2000 + 1) * 2000;
    (first..=to_ms).step_by(2000).collect()
}

async fn deploy(c: &mut Client, image: &str, name: &str, private: bool) {
    c.deploy_container(pb::DeployContainerRequest {
        namespace: "t".into(),
        name: name.into(),
        image: Some(image.into()),
        min_scale: Some(0),
        max_scale: Some(2),
        scale_to_zero_after_seconds: Some(10),
        privacy: if private {
            pb::Privacy::Private as i32
        } else {
            0
        },
        cpu_mvcpu: Some(100),
        memory_mb: Some(64),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn at_zero(c: &Client, ct: &str) {
    eventually(&format!("{ct} scaled to zero"), || {
        let mut c = c.clone();
        async move {
            let got = c
                .get_container("t", ct, false)
                .await
                .map_err(|e| e.to_string())?;
            if got.instances.is_empty() && got.desired_scale == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} instances, desired {}",
                    got.instances.len(),
                    got.desired_scale
                ))
            }
        }
    })
    .await;
}

async fn cron(c: &mut Client, container: &str, name: &str) -> pb::Trigger {
    c.create_trigger(pb::CreateTriggerRequest {
        namespace: "t".into(),
        container: container.into(),
        name: name.into(),
        cron: EVERY_2S.into(),
        path: "/cgi-bin/record".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Disables the trigger and waits until its claimed ticks are answered.
async fn settle(c: &Client, container: &str, name: &str) -> (pb::Trigger, u64) {
    let mut c = c.clone();
    let t = c
        .set_trigger_enabled("t", container, name, false)
        .await
        .unwrap();
    let disabled_at = now_ms();
    let _ = t;
    let t = eventually(
        &format!("{container}/{name}: every claimed tick answered"),
        || {
            let mut c = c.clone();
            async move {
                let t = c
                    .get_trigger("t", container, name)
                    .await
                    .map_err(|e| e.to_string())?;
                if t.pending == 0 {
                    Ok(t)
                } else {
                    Err(format!("{} pending", t.pending))
                }
            }
        },
    )
    .await;
    (t, disabled_at)
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get((v.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_wake_a_container_at_zero_once_each() {
    let image = push_test_image("rouse-test/triggers", "1");
    let cluster = TestCluster::start_with_runtime(3, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("t", HashMap::new()).await.unwrap();
    deploy(&mut c, &image, "pub", false).await;
    deploy(&mut c, &image, "priv", true).await;
    // A new container is kept warm for its scale-to-zero time: wait until
    // both are at zero, so that the first tick has to wake them.
    for ct in ["pub", "priv"] {
        at_zero(&c, ct).await;
    }
    // Bad input names the field and the rule.
    let e = c
        .create_trigger(pb::CreateTriggerRequest {
            namespace: "t".into(),
            container: "pub".into(),
            name: "bad".into(),
            cron: "*/2 * * *".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("schedule") && e.to_string().contains("fields"),
        "{e}"
    );

    let created = now_ms();
    let a = cron(&mut c, "pub", "tick").await;
    let b = cron(&mut c, "priv", "tick").await;
    assert_eq!(
        (a.kind.as_str(), a.enabled, b.schedule.as_str()),
        ("cron", true, EVERY_2S)
    );
    assert!(
        a.next_fire_at_ms > created && a.next_fire_at_ms <= created + 2000,
        "{a:?}"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    for ct in ["pub", "priv"] {
        let (t, disabled_at) = settle(&c, ct, "tick").await;
        let expected = ticks_between(created, disabled_at).len() as u64;
        let got = received(&cluster, ct, "tick");
        let delays: Vec<u64> = t
            .history
            .iter()
            .map(|f| f.sent_ms.saturating_sub(f.scheduled_ms))
            .collect();
        let answers: Vec<u64> = t.history.iter().map(|f| f.latency_ms).collect();
        println!(
            "{ct}: {expected} ticks in the window, {} distinct event ids received, fired {} failed {} missed {}; fire delay p50 {} ms p99 {} ms; answered in p50 {} ms, max {} ms (the first includes the cold start)",
            got.len(), t.fired, t.failed, t.missed,
            { let mut d = delays.clone(); d.sort_unstable(); d[d.len() / 2] }, p99(delays.clone()),
            { let mut d = answers.clone(); d.sort_unstable(); d[d.len() / 2] }, answers.iter().max().unwrap(),
        );
        assert!(
            expected.abs_diff(got.len() as u64) <= 1,
            "{ct}: {expected} ticks, received {got:?}"
        );
        assert_eq!(
            t.fired,
            got.len() as u64,
            "{ct}: every delivered tick answered 200: {t:?}"
        );
        assert_eq!((t.failed, t.missed), (0, 0), "{ct}: {t:?}");
        assert!(
            got.values().all(|n| *n == 1),
            "{ct}: a tick delivered twice: {got:?}"
        );
        assert!(
            p99(delays) < 1000,
            "{ct}: fired more than 1 s late: {:?}",
            t.history
        );
        assert!(
            t.history.iter().all(|f| f.ok && f.status == "200"),
            "{ct}: {:?}",
            t.history
        );
        // The first tick found it at zero and woke it.
        let woke = c.get_container("t", ct, false).await.unwrap();
        let cs = woke.cold_start.unwrap_or_default();
        assert!(
            cs.last_at_ms > created,
            "{ct}: no cold start after the trigger was made: {cs:?}"
        );
    }
    // `rouse trigger get -o json` keeps its contract.
    let (code, out, err) = cluster.cli(1, &["trigger", "get", "t/pub/tick", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "name",
        "container",
        "kind",
        "schedule",
        "enabled",
        "fired",
        "failed",
        "missed",
        "last_fired_at",
        "next_fire_at",
        "last_status",
        "history",
    ] {
        assert!(v.get(k).is_some(), "no {k} in {v}");
    }
    assert_eq!(
        (
            v["kind"].as_str(),
            v["enabled"].as_bool(),
            v["last_status"].as_str()
        ),
        (Some("cron"), Some(false), Some("200"))
    );
    let (code, out, _) = cluster.cli(1, &["trigger", "list", "t", "-o", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Prometheus counts the deliveries.
    let metrics = cluster.node(1).metrics.addr().to_string();
    let page = std::process::Command::new("curl")
        .args(["-s", &format!("http://{metrics}/metrics")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    let fired = page
        .lines()
        .find(|l| {
            l.starts_with("rouse_trigger_firings_total{")
                && l.contains("container=\"pub\"")
                && l.contains("outcome=\"fired\"")
        })
        .unwrap_or_else(|| panic!("no fired counter for pub in {page}"));
    assert!(
        fired.ends_with(&format!(" {}", v["fired"])),
        "{fired} vs {v}"
    );
    // Deleting the container deletes its triggers.
    c.delete_container("t", "pub").await.unwrap();
    assert!(c.get_trigger("t", "pub", "tick").await.is_err());
    assert_eq!(c.list_triggers("t", "").await.unwrap().len(), 1);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tick_is_claimed_twice_or_lost_when_the_leader_dies_twice() {
    let image = push_test_image("rouse-test/triggers", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("t", HashMap::new()).await.unwrap();
    deploy(&mut c, &image, "kill", false).await;
    at_zero(&c, "kill").await;
    let created = now_ms();
    cron(&mut c, "kill", "tick").await;
    let start = Instant::now();
    let mut killed = Vec::new();
    for at in [8u64, 18] {
        tokio::time::sleep(Duration::from_secs(at).saturating_sub(start.elapsed())).await;
        let leader = cluster.leader().await;
        cluster.kill(leader);
        let t = Instant::now();
        let next = cluster.leader().await;
        println!(
            "killed leader {leader} at {:?}; node {next} leads after {:?}",
            start.elapsed(),
            t.elapsed()
        );
        cluster.restart(leader);
        killed.push(leader);
    }
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(start.elapsed())).await;
    let survivor = cluster.leader().await;
    let c = cluster.client(survivor).await;
    let (t, disabled_at) = settle(&c, "kill", "tick").await;
    let expected = ticks_between(created, disabled_at);
    let got = received(&cluster, "kill", "tick");
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    let ids: Vec<String> = expected.iter().map(|ms| format!("tick-{ms}")).collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !got.contains_key(*id)).collect();
    println!(
        "leaders killed: {killed:?}; {} ticks in the window, {} distinct received, {duplicates} duplicate deliveries (retried after a lost answer), missing {missing:?}; fired {} failed {} missed {}",
        expected.len(), got.len(), t.fired, t.failed, t.missed
    );
    // The last tick in the window may have been claimed just after the
    // disable: at most the edge ticks may be absent.
    let inner: Vec<&String> = missing
        .iter()
        .copied()
        .filter(|id| *id != ids.first().unwrap() && *id != ids.last().unwrap())
        .collect();
    assert!(inner.is_empty(), "ticks lost: {inner:?} (received {got:?})");
    assert_eq!(
        t.missed, 0,
        "no leaderless window was longer than the catch-up"
    );
    assert!(
        got.keys().all(|id| ids.contains(id)),
        "an event outside the window: {got:?}"
    );
    assert_eq!(t.failed, 0, "{:?}", t.history);
    cluster.assert_no_panics();
}

// ----------------------------------------------------------------- NATS

use async_nats::jetstream;
use futures::StreamExt;

fn nats_url() -> String {
    std::env::var("ROUSE_TEST_NATS")
        .expect("ROUSE_TEST_NATS: eval \"$(bash deploy/test-env.sh start)\"")
}

/// A stream of this test's own, `prefix.>`.
async fn nats_stream(prefix: &str) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(prefix).await;
    js.create_stream(jetstream::stream::Config {
        name: prefix.to_string(),
        subjects: vec![format!("{prefix}.in")],
        ..Default::default()
    })
    .await
    .unwrap();
    (client, js)
}

async fn deploy_queue_worker(c: &mut Client, image: &str, name: &str) {
    c.deploy_container(pb::DeployContainerRequest {
        namespace: "t".into(),
        name: name.into(),
        image: Some(image.into()),
        min_scale: Some(0),
        max_scale: Some(2),
        max_concurrency: Some(4),
        timeout_seconds: Some(10),
        scale_to_zero_after_seconds: Some(10),
        cpu_mvcpu: Some(1000),
        memory_mb: Some(64),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn nats_trigger(c: &mut Client, container: &str, prefix: &str, dead_letter: bool) {
    c.create_trigger(pb::CreateTriggerRequest {
        namespace: "t".into(),
        container: container.into(),
        name: "orders".into(),
        nats_subject: format!("{prefix}.in"),
        nats_url: nats_url(),
        nats_stream: prefix.into(),
        dead_letter: if dead_letter {
            format!("{prefix}-dead")
        } else {
            String::new()
        },
        path: "/cgi-bin/maybe".into(),
        max_retries: Some(2),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Waits until the container received every sequence in `seqs`.
async fn wait_received(
    cluster: &TestCluster,
    container: &str,
    seqs: std::ops::RangeInclusive<u64>,
    within: Duration,
) -> BTreeMap<String, usize> {
    let t = Instant::now();
    loop {
        let got = received(cluster, container, "orders");
        let missing = seqs
            .clone()
            .filter(|s| !got.contains_key(&s.to_string()))
            .count();
        if missing == 0 {
            return got;
        }
        assert!(
            t.elapsed() < within,
            "{missing} messages of {seqs:?} never reached {container}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_messages_are_delivered_acked_retried_and_dead_lettered() {
    let prefix = format!("T{}A", std::process::id());
    let (client, js) = nats_stream(&prefix).await;
    let mut dead = client.subscribe(format!("{prefix}-dead")).await.unwrap();
    let image = push_test_image("rouse-test/triggers", "1");
    let cluster = TestCluster::start_with_runtime(3, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("t", HashMap::new()).await.unwrap();
    deploy_queue_worker(&mut c, &image, "q").await;
    nats_trigger(&mut c, "q", &prefix, true).await;
    let t0 = Instant::now();
    for i in 1..=1000u64 {
        let mut h = async_nats::HeaderMap::new();
        h.insert("k", format!("v{i}").as_str());
        js.publish_with_headers(format!("{prefix}.in"), h, format!("m-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    js.publish(format!("{prefix}.in"), "please fail".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let got = wait_received(&cluster, "q", 1..=1000, Duration::from_secs(180)).await;
    println!(
        "1,000 messages delivered in {:?}; {} duplicate deliveries",
        t0.elapsed(),
        got.values().map(|n| n - 1).sum::<usize>()
    );
    assert!(
        !got.contains_key("1001"),
        "the refused message was counted as received"
    );
    // The refused one: retried, then on the dead-letter subject.
    let dl = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("a dead letter within 60 s")
        .unwrap();
    assert_eq!(dl.payload.as_ref(), b"please fail");
    let h = dl.headers.clone().unwrap();
    assert_eq!(h.get("Rouse-Event-Id").map(|v| v.as_str()), Some("1001"));
    assert_eq!(h.get("Rouse-Status").map(|v| v.as_str()), Some("500"));
    assert_eq!(
        h.get("Nats-Original-Subject").map(|v| v.to_string()),
        Some(format!("{prefix}.in"))
    );
    // Every message acked: nothing pending on the consumer.
    let stream = js.get_stream(&prefix).await.unwrap();
    let name = "rouse-t-q-orders".to_string();
    eventually("the consumer has nothing pending or unacked", || {
        let stream = stream.clone();
        let name = name.clone();
        async move {
            let mut consumer: jetstream::consumer::PullConsumer = stream
                .get_consumer(&name)
                .await
                .map_err(|e| e.to_string())?;
            let info = consumer.info().await.map_err(|e| e.to_string())?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{} pending, {} unacked",
                    info.num_pending, info.num_ack_pending
                ))
            }
        }
    })
    .await;
    let t = eventually("the trigger counted 1,000 answered and 1 failed", || {
        let mut c = c.clone();
        async move {
            let t = c
                .get_trigger("t", "q", "orders")
                .await
                .map_err(|e| e.to_string())?;
            if t.fired >= 1000 && t.failed == 1 {
                Ok(t)
            } else {
                Err(format!("fired {} failed {}", t.fired, t.failed))
            }
        }
    })
    .await;
    assert_eq!(t.kind, "nats");
    let last_fail = t.history.iter().find(|f| !f.ok);
    if let Some(f) = last_fail {
        assert_eq!((f.event_id.as_str(), f.attempts), ("1001", 3), "{f:?}");
    }
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_delivery_moves_when_the_consumer_node_dies() {
    let prefix = format!("T{}K", std::process::id());
    let (_client, js) = nats_stream(&prefix).await;
    let image = push_test_image("rouse-test/triggers", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("t", HashMap::new()).await.unwrap();
    deploy_queue_worker(&mut c, &image, "k").await;
    nats_trigger(&mut c, "k", &prefix, false).await;
    // 300 messages at about 50 a second; the consumer's node (the leader)
    // is SIGKILLed after the first 100.
    let publisher = {
        let js = js.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 1..=300u64 {
                js.publish(format!("{prefix}.in"), format!("m-{i}").into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_received(&cluster, "k", 1..=100, Duration::from_secs(60)).await;
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let next = cluster.leader().await;
    println!("killed node {leader} (the consumer's); node {next} leads");
    publisher.await.unwrap();
    let got = wait_received(&cluster, "k", 1..=300, Duration::from_secs(120)).await;
    cluster.restart(leader);
    let duplicates: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "300 of 300 messages delivered after the consumer moved; {} duplicate deliveries (same event id): {duplicates:?}",
        got.values().map(|n| n - 1).sum::<usize>()
    );
    assert!(
        got.keys()
            .all(|k| k.parse::<u64>().is_ok_and(|s| (1..=300).contains(&s))),
        "{got:?}"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_come_from_a_secret() {
    // A nats-server of this test's own that wants a user and password.
    let port = rouse_testkit::listener::pick_port(std::net::IpAddr::from([127, 0, 0, 1])).unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new("nats-server")
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--user",
            "rouse",
            "--pass",
            "s3cret",
            "-sd",
        ])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server");
    let url = format!("nats://127.0.0.1:{port}");
    let client = eventually("the authenticated nats-server answers", || {
        let url = url.clone();
        async move {
            async_nats::ConnectOptions::with_user_and_password("rouse".into(), "s3cret".into())
                .connect(url)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "AUTH".into(),
        subjects: vec!["auth.in".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let image = push_test_image("rouse-test/triggers", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("t", HashMap::new()).await.unwrap();
    deploy_queue_worker(&mut c, &image, "cred").await;
    let mut req = pb::CreateTriggerRequest {
        namespace: "t".into(),
        container: "cred".into(),
        name: "orders".into(),
        nats_subject: "auth.in".into(),
        nats_url: url.clone(),
        nats_credentials: "NATS_CREDS".into(),
        path: "/cgi-bin/maybe".into(),
        ..Default::default()
    };
    // Named but not set: refused, naming the field.
    let e = c.create_trigger(req.clone()).await.unwrap_err();
    assert!(
        e.to_string().contains("nats_credentials") && e.to_string().contains("NATS_CREDS"),
        "{e}"
    );
    c.set_secrets(
        "t",
        Some("cred"),
        HashMap::from([("NATS_CREDS".to_string(), "rouse:s3cret".to_string())]),
    )
    .await
    .unwrap();
    req.name = "orders".into();
    let t = c.create_trigger(req).await.unwrap();
    assert_eq!(
        t.nats_credentials, "NATS_CREDS",
        "the secret's name, never its value"
    );
    for i in 1..=5u64 {
        js.publish("auth.in", format!("m-{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_received(&cluster, "cred", 1..=5, Duration::from_secs(60)).await;
    let (_, out, _) = cluster.cli(1, &["trigger", "get", "t/cred/orders", "-o", "json"]);
    assert!(!out.contains("s3cret"), "{out}");
    let _ = server.kill();
    let _ = server.wait();
    cluster.assert_no_panics();
}
