//! End-to-end: who the cluster trusts. A removed node stays out whatever it
//! kept (the CA key and the old master key in its data dir); a join token
//! is spent once and an invalid one writes nothing; a node writes only its
//! own record, with addresses other nodes can dial.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use rouse_e2e::{eventually, TestCluster};
use rouse_proto::peer::raft_peer_client::RaftPeerClient;

mod common;
use common::{client_config, node_tls, ping, tls_channel};

/// The peer service of node `at`, as the holder of `(cert, key)`.
async fn as_peer(
    cluster: &TestCluster,
    at: u64,
    ca: &str,
    cert: &str,
    key: &str,
) -> tonic::transport::Channel {
    tls_channel(&cluster.listen(at), client_config(ca, Some((cert, key))))
        .await
        .unwrap()
}

/// A removed node that wipes its `tls/` dir and restarts issues itself a
/// new certificate (it still holds the CA key and the master key): no
/// member accepts it, it gets no master key, its Raft RPCs do not get
/// through, and its old master key opens nothing of what the cluster
/// holds after the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_cannot_come_back() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let mut c = cluster.client(1).await;
    eventually("a namespace with a secret", || {
        let mut c = c.clone();
        async move {
            c.create_namespace_with(rouse_client::pb::CreateNamespaceRequest {
                name: "n".into(),
                env: HashMap::new(),
                secrets: HashMap::from([("BEFORE".into(), "old".into())]),
            })
            .await
        }
    })
    .await;
    let leader = cluster.leader().await;
    let victim = if leader == 3 { 2 } else { 3 };
    let (ca, _, _) = node_tls(&cluster, victim);

    let (code, out, err) =
        cluster.cli(1, &["cluster", "remove", &victim.to_string(), "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["removed"], victim);
    assert!(
        !v["master_key_id"].as_str().unwrap().is_empty(),
        "keys rotated: {v}"
    );
    cluster.kill(victim);
    c.set_secrets("n", None, HashMap::from([("AFTER".into(), "new".into())]))
        .await
        .unwrap();

    // It wipes its certificate and comes back: it signs itself a new one.
    let tls_dir = cluster.data_dir(victim).join("tls");
    let old_cert = std::fs::read_to_string(tls_dir.join("node.crt")).unwrap();
    std::fs::remove_dir_all(&tls_dir).unwrap();
    let term_before = c.node_info().await.unwrap().term;
    cluster.restart(victim);
    let (_, cert, key) = eventually("the removed node signs itself a certificate", || {
        let d = tls_dir.clone();
        async move {
            match (
                std::fs::read_to_string(d.join("ca.crt")),
                std::fs::read_to_string(d.join("node.crt")),
                std::fs::read_to_string(d.join("node.key")),
            ) {
                (Ok(a), Ok(b), Ok(k)) => Ok((a, b, k)),
                _ => Err("no certificate yet"),
            }
        }
    })
    .await;
    assert_ne!(cert, old_cert);

    for member in cluster.node_ids().into_iter().filter(|id| *id != victim) {
        let ch = as_peer(&cluster, member, &ca, &cert, &key).await;
        let e = ping(ch.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
        assert!(e.message().contains("not issued by this cluster"), "{e}");
        let e = RaftPeerClient::new(ch)
            .fetch_master_key(rouse_proto::peer::FetchMasterKeyRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    }
    // Its elections (it still believes it is a voter) reach nobody: the
    // members refuse it (its log says so once it has stood at least once)
    // and their term does not move while it runs.
    eventually("the removed node's vote requests are refused", || {
        let log = cluster.log_text(victim);
        async move {
            if log.contains("not issued by this cluster") {
                Ok(())
            } else {
                Err("no refusal in its log yet")
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = c.node_info().await.unwrap();
    assert_eq!(info.term, term_before, "a removed node's votes got through");

    // The master key it kept opens neither the data key nor, so, any
    // secret the cluster holds now.
    let other = cluster
        .node_ids()
        .into_iter()
        .find(|id| *id != victim)
        .unwrap();
    cluster.kill(victim);
    cluster.kill(other);
    let (_, sm) = rouse_node::store::open(&cluster.data_dir(other)).unwrap();
    let data = sm.shared().read().data.clone();
    let wrapped = data.data_key.clone().expect("a data key");
    let old = rouse_node::secrets::Key::load_or_create(
        &cluster.data_dir(victim).join("master.key"),
        false,
    )
    .unwrap();
    assert!(
        old.unwrap_key(&wrapped).is_err(),
        "the old master key opened the data key"
    );
    let current = rouse_node::secrets::Key::load_or_create(
        &cluster.data_dir(other).join("master.key"),
        false,
    )
    .unwrap();
    let dk = current.unwrap_key(&wrapped).unwrap();
    let scope = rouse_node::state::Scope::of("n", None);
    let after = &data.secrets[&scope]["AFTER"];
    let plain = dk
        .open(
            &after.sealed,
            &rouse_node::secrets::aad(&scope.to_string(), "AFTER"),
        )
        .unwrap();
    assert_eq!(plain, b"new");
}

/// The bootstrap node's join token: good for one certificate. Once node 2
/// has used it, its file is gone, and neither another node nor node 2 with
/// a new key gets a certificate with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_is_spent_once() {
    let cluster = TestCluster::start(1, &[]).await;
    let token_file = cluster.data_dir(1).join("join-token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let mut cluster = cluster;
    cluster.add_node(2, Some(1), &[]).await;
    cluster.wait_voters(2).await;
    eventually("the spent token's file removed", || {
        let f = token_file.clone();
        async move {
            if f.exists() {
                Err("still there")
            } else {
                Ok(())
            }
        }
    })
    .await;
    let log = cluster.log_text(1);
    assert!(
        log.contains("removed the spent bootstrap join token"),
        "{log}"
    );

    let join = rouse_proto::peer::cluster_join_client::ClusterJoinClient::new(
        tls_channel(
            &cluster.listen(1),
            rouse_node::tls::join_client_config(&node_tls(&cluster, 1).0).unwrap(),
        )
        .await
        .unwrap(),
    );
    for node_id in [2, 7] {
        let (_, csr) = rouse_node::tls::node_request(node_id).unwrap();
        let e = join
            .clone()
            .issue_certificate(rouse_proto::peer::IssueCertificateRequest {
                join_token: token.trim().into(),
                node_id,
                csr_pem: csr,
                want_master_key: true,
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "node {node_id}: {e}"
        );
        assert!(
            e.message().contains("spent once") || e.message().contains("already used"),
            "{e}"
        );
    }
    cluster.assert_no_panics();
}

/// A well-formed join token with a wrong secret is refused without a Raft
/// write, and a source that keeps trying is slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_join_token_writes_nothing() {
    let cluster = TestCluster::start(1, &[]).await;
    let mut c = cluster.client(1).await;
    let real = std::fs::read_to_string(cluster.data_dir(1).join("join-token")).unwrap();
    // rjt_<CA fingerprint>_<id>_<secret>: keep the cluster's CA and the
    // token id, change the secret.
    let parts: Vec<&str> = real.trim().split('_').collect();
    let forged = format!(
        "{}_{}_{}_{}",
        parts[0],
        parts[1],
        parts[2],
        "0".repeat(parts[3].len())
    );
    let join = rouse_proto::peer::cluster_join_client::ClusterJoinClient::new(
        tls_channel(
            &cluster.listen(1),
            rouse_node::tls::join_client_config(&node_tls(&cluster, 1).0).unwrap(),
        )
        .await
        .unwrap(),
    );
    let before = c.node_info().await.unwrap().last_log_index;
    let mut codes = Vec::new();
    for _ in 0..12 {
        let (_, csr) = rouse_node::tls::node_request(5).unwrap();
        let e = join
            .clone()
            .issue_certificate(rouse_proto::peer::IssueCertificateRequest {
                join_token: forged.clone(),
                node_id: 5,
                csr_pem: csr,
                want_master_key: true,
            })
            .await
            .unwrap_err();
        codes.push(e.code());
    }
    let after = c.node_info().await.unwrap().last_log_index;
    assert_eq!(after, before, "refused join attempts wrote to the log");
    assert!(
        codes[..10]
            .iter()
            .all(|c| *c == tonic::Code::PermissionDenied),
        "{codes:?}"
    );
    assert_eq!(codes[11], tonic::Code::ResourceExhausted, "{codes:?}");
    // The real token was not touched.
    assert!(cluster.data_dir(1).join("join-token").exists());
    cluster.assert_no_panics();
}

/// Nodes bound on every address record addresses others can dial (hops
/// between them work), and a member may register only its own record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_hold_dialable_addresses_and_only_their_own_node() {
    let cluster =
        TestCluster::start_with_runtime_on(Some(std::net::IpAddr::from([0, 0, 0, 0])), 2, &[])
            .await;
    let mut c = cluster.client(1).await;
    for n in c.list_nodes(false).await.unwrap() {
        for a in [&n.address, &n.http_address] {
            assert!(a.starts_with("127.0.0.1:"), "node {}: {a}", n.id);
        }
    }
    // A request at the node without the instance hops to the other.
    let image = rouse_e2e::push_test_image("rouse-test/trust", "1");
    c.create_namespace("n", HashMap::new()).await.unwrap();
    let mut req = rouse_e2e::deploy("n", "web", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let inst = rouse_e2e::ready(&c, "n", "web", 1).await.remove(0);
    let other = if inst.node == 1 { 2 } else { 1 };
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "20", "-H", "Host: web.n.rouse.localhost"])
        .arg(format!(
            "http://127.0.0.1:{}/",
            cluster.node(other).http.addr().port()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from rouse"
    );

    // Node 2 forwarding a record for node 1 (taking its addresses) is refused.
    let (ca, cert, key) = node_tls(&cluster, 2);
    let leader = cluster.leader().await;
    let forged = rouse_node::state::Proposal::new(
        1,
        rouse_node::state::Command::RegisterNode {
            node: rouse_node::state::NodeRecord {
                id: 1,
                api_addr: "127.0.0.1:1".into(),
                ..Default::default()
            },
        },
    );
    let ch = as_peer(&cluster, leader, &ca, &cert, &key).await;
    let e = RaftPeerClient::new(ch)
        .forward(rouse_proto::peer::RaftMessage {
            payload: serde_json::to_vec(&forged).unwrap(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("only its own record"), "{e}");
    cluster.assert_no_panics();
}
