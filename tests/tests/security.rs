//! End-to-end: private containers behind EdDSA JWTs through the mesh of
//! every node — valid tokens in either header pass; missing, tampered,
//! `alg: none`, expired and revoked tokens get 401 (revocation honoured by
//! every node within a second); tokens of another scope get 403.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rouse_client::pb;
use rouse_e2e::{eventually, push_test_image, TestCluster};

mod common;
use common::{client_config, node_tls, ping, tls_channel};

fn get(mesh: &str, host: &str, header: Option<String>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-m",
        "30",
        "-H",
        &format!("Host: {host}"),
    ]);
    if let Some(h) = header {
        cmd.args(["-H", &h]);
    }
    let out = cmd.arg(format!("http://{mesh}/")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_containers_need_a_valid_token_of_their_scope() {
    let image = push_test_image("rouse-test/private", "1");
    let cluster = TestCluster::start_with_runtime(2, &[]).await;
    let mut c = cluster.client(1).await;
    for ns in ["p", "other"] {
        c.create_namespace(ns, HashMap::new()).await.unwrap();
    }
    for (ns, name, privacy) in [
        ("p", "priv", pb::Privacy::Private),
        ("p", "priv2", pb::Privacy::Private),
        ("p", "pub", pb::Privacy::Public),
    ] {
        c.deploy_container(pb::DeployContainerRequest {
            namespace: ns.into(),
            name: name.into(),
            image: Some(image.clone()),
            min_scale: Some(1),
            cpu_mvcpu: Some(100),
            memory_mb: Some(64),
            privacy: privacy.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let token = |ns: &'static str, ct: Option<&'static str>, secs: u64| {
        let c = c.clone();
        async move {
            eventually("token", || {
                let mut c = c.clone();
                async move { c.create_token(ns, ct, secs).await }
            })
            .await
        }
    };
    let t_ns = token("p", None, 3600).await;
    let t_ct = token("p", Some("priv"), 3600).await;
    let t_ct2 = token("p", Some("priv2"), 3600).await;
    let t_other = token("other", None, 3600).await;
    let t_short = token("p", None, 1).await;
    let t_rev = token("p", None, 3600).await;
    // The CLI prints the token on its last line, and {"id","token","expires_at"} with -o json.
    let (code, out, err) = cluster.cli(
        2,
        &[
            "token",
            "create",
            "--namespace",
            "p",
            "--container",
            "priv",
            "--expires-in",
            "1h",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cli_token = v["token"].as_str().unwrap().to_string();
    assert!(v["id"].is_string() && v["expires_at"].is_u64(), "{v}");
    let (_, out, _) = cluster.cli(1, &["token", "create", "--namespace", "p"]);
    let last_line = out.trim_end().lines().last().unwrap().to_string();
    assert_eq!(last_line.split('.').count(), 3, "{out}");

    let host = "priv.p.rouse.localhost";
    let meshes: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .map(|id| cluster.http(id))
        .collect();
    let bearer = |t: &str| Some(format!("Authorization: Bearer {t}"));
    let xauth = |t: &str| Some(format!("X-Auth-Token: {t}"));
    // Wait until the instance serves.
    eventually("private container up", || async {
        match get(&meshes[0], host, xauth(&t_ns.token)) {
            200 => Ok(()),
            c => Err(c),
        }
    })
    .await;
    let tampered = {
        let mut t = t_ns.token.clone();
        let last = t.pop().unwrap();
        t.push(if last == 'A' { 'B' } else { 'A' });
        t
    };
    let payload = t_ns.token.split('.').nth(1).unwrap().to_string();
    // {"alg":"none","typ":"JWT"} — an unsigned token with a valid payload.
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    tokio::time::sleep(Duration::from_millis(1500)).await; // t_short expires
    for mesh in &meshes {
        assert_eq!(
            get(mesh, host, xauth(&t_ns.token)),
            200,
            "namespace token in X-Auth-Token via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ns.token)),
            200,
            "namespace token as Bearer via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ct.token)),
            200,
            "container token via {mesh}"
        );
        assert_eq!(
            get(mesh, host, xauth(&cli_token)),
            200,
            "CLI token via {mesh}"
        );
        assert_eq!(get(mesh, host, None), 401, "no token via {mesh}");
        assert_eq!(
            get(mesh, host, bearer("not-a-jwt")),
            401,
            "malformed via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&tampered)),
            401,
            "tampered signature via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&alg_none)),
            401,
            "alg none via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_short.token)),
            401,
            "expired via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_other.token)),
            403,
            "another namespace via {mesh}"
        );
        assert_eq!(
            get(mesh, host, bearer(&t_ct2.token)),
            403,
            "another container via {mesh}"
        );
        assert_eq!(
            get(mesh, "pub.p.rouse.localhost", None),
            200,
            "public needs no token via {mesh}"
        );
    }
    // Revocation is honoured by every node within a second.
    for mesh in &meshes {
        assert_eq!(get(mesh, host, bearer(&t_rev.token)), 200);
    }
    let (code, _, err) = cluster.cli(2, &["token", "revoke", &t_rev.id]);
    assert_eq!(code, 0, "{err}");
    let t = Instant::now();
    for mesh in &meshes {
        rouse_e2e::eventually_within(
            Duration::from_secs(1).saturating_sub(t.elapsed()),
            &format!("revocation honoured by {mesh}"),
            || {
                let code = get(mesh, host, bearer(&t_rev.token));
                async move { (code == 401).then_some(()).ok_or(code) }
            },
        )
        .await;
    }
    println!(
        "revocation honoured by every node {:?} after the revoke returned",
        t.elapsed()
    );
    // Listing shows ids and scope, never tokens.
    let (code, out, _) = cluster.cli(1, &["token", "list", "--namespace", "p", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(
        !out.contains(&t_ns.token) && out.contains(&t_ns.id),
        "{out}"
    );
    assert!(out.contains("\"revoked\": true"), "{out}");
    // Rotation: new tokens use the new key, old ones keep working.
    let (code, _, err) = cluster.cli(1, &["token", "rotate-key"]);
    assert_eq!(code, 0, "{err}");
    let fresh = token("p", None, 3600).await;
    assert_ne!(
        fresh.token.split('.').next(),
        t_ns.token.split('.').next(),
        "new key id in the header"
    );
    for mesh in &meshes {
        assert_eq!(get(mesh, host, bearer(&fresh.token)), 200);
        assert_eq!(get(mesh, host, bearer(&t_ns.token)), 200);
    }
    cluster.assert_no_panics();
}

/// Sends a GET over TLS with `config` to a mesh; returns what came back.
async fn mesh_over_tls(addr: &str, config: tokio_rustls::rustls::ClientConfig) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from("peer.rouse.internal").unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let Ok(mut s) = conn.connect(name, tcp).await else {
        return String::new();
    };
    if s.write_all(b"GET / HTTP/1.1\r\nHost: nothing.here\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A plain HTTP GET at `addr`: what came back before the connection closed.
async fn plain_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: nothing.here\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `rouse-node` as a would-be member joining through node 1 and returns
/// (exit code, log) once it exits (or is stopped after `wait`).
async fn intruder(
    cluster: &TestCluster,
    name: &str,
    extra: &[&str],
    wait: Duration,
) -> (Option<i32>, String) {
    let join = cluster.listen(1);
    let mut args = vec!["--join", join.as_str()];
    args.extend_from_slice(extra);
    let mut p = cluster.stranger(name, 9, &args);
    let code = p.wait_exit(wait).await;
    (code, p.log_text())
}

/// Peer traffic is mutual TLS under the cluster CA: the peer service and
/// the mesh's hop port refuse connections without a cluster certificate,
/// a certificate of another CA fails the handshake, a node gets its
/// certificate only with a valid, unused join token for this cluster, and a
/// removed node's certificate is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_without_a_cluster_certificate_are_refused() {
    let cluster = TestCluster::start(3, &[]).await;
    let n1 = cluster.view(1);
    let (ca, cert2, key2) = node_tls(&cluster, 2);
    assert_eq!(ca, node_tls(&cluster, 1).0, "one cluster CA");
    let mut c = cluster.client(1).await;
    assert!(c.cluster_status().await.unwrap().peer_tls);

    // A member's certificate is accepted: the checks below can fail.
    let ch = tls_channel(&n1.listen, client_config(&ca, Some((&cert2, &key2))))
        .await
        .unwrap();
    assert_eq!(ping(ch).await.unwrap(), 1);
    let answer = mesh_over_tls(&n1.hop, client_config(&ca, Some((&cert2, &key2)))).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // Plain: the API answers, the peer service does not.
    let plain = tonic::transport::Endpoint::from_shared(n1.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let e = ping(plain.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("cluster certificate"), "{e}");
    let mut forward = tonic::Request::new(rouse_proto::peer::RaftMessage {
        payload: b"{}".to_vec(),
    });
    forward
        .metadata_mut()
        .insert("x-rouse-peer", "0".repeat(64).parse().unwrap());
    let e = rouse_proto::peer::raft_peer_client::RaftPeerClient::new(plain.clone())
        .forward(forward)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");

    // The hop listener does not speak plain HTTP when peers use TLS; the
    // public mesh does.
    let answer = plain_get(&n1.hop).await;
    assert!(
        !answer.contains("HTTP/"),
        "plain HTTP on the hop port: {answer}"
    );
    let answer = plain_get(&n1.http).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // TLS without a client certificate: refused too.
    let ch = tls_channel(&n1.listen, client_config(&ca, None))
        .await
        .unwrap();
    let e = ping(ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // …and the mesh's hop port refuses the handshake.
    let answer = mesh_over_tls(&n1.hop, client_config(&ca, None)).await;
    assert!(!answer.contains("HTTP/"), "{answer}");

    // A certificate from another CA fails the handshake on both ports.
    let (other_ca, other_key) = rouse_node::tls::generate_ca().unwrap();
    let (fake_key, csr) = rouse_node::tls::node_request(9).unwrap();
    let fake = rouse_node::tls::sign_node(&other_ca, &other_key, &csr, 9).unwrap();
    let res = match tls_channel(&n1.listen, client_config(&ca, Some((&fake, &fake_key)))).await {
        Ok(ch) => ping(ch).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(res.is_err(), "a foreign certificate was accepted: {res:?}");
    let answer = mesh_over_tls(&n1.hop, client_config(&ca, Some((&fake, &fake_key)))).await;
    assert!(!answer.contains("HTTP/"), "{answer}");
    let log = n1.log_text();
    assert!(log.contains("TLS handshake failed"), "{log}");

    // Clients may reach the API over TLS too, trusting the cluster CA.
    let admin = cluster.admin_token();
    let rouse = |args: &[&str]| cluster.rouse(&admin, args);
    let ca_file = n1.data_dir.join("tls").join("ca.crt");
    let https = format!("https://{}", n1.listen);
    let (code, out, err) = rouse(&[
        "--endpoint",
        &https,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "cluster",
        "status",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("peer traffic: mutual TLS"), "{out}");
    let other_file = cluster.dir.path().join("other-ca.crt");
    std::fs::write(&other_file, &other_ca).unwrap();
    let (code, _, err) = rouse(&[
        "--endpoint",
        &https,
        "--ca-file",
        other_file.to_str().unwrap(),
        "cluster",
        "status",
    ]);
    assert_ne!(code, 0, "a server outside the given CA was trusted");
    assert!(err.contains("TLS"), "{err}");
    let (code, _, err) = rouse(&["--endpoint", &https, "cluster", "status"]);
    assert_ne!(code, 0);
    assert!(err.contains("ca_file"), "{err}");

    // Joining: no token, a forged token, another cluster's token, a spent
    // token: each node stops with the reason and is never a member.
    let fp = rouse_node::tls::fingerprint(&ca).unwrap();
    let forged = rouse_node::tls::JoinToken::new(&fp).expose();
    let foreign =
        rouse_node::tls::JoinToken::new(&rouse_node::tls::fingerprint(&other_ca).unwrap()).expose();
    // Spent by node 2; the bootstrap node removes the file once it is.
    let spent = cluster
        .inner
        .first_join_token()
        .expect("node 2 joined with the bootstrap token")
        .to_string();
    let wait = Duration::from_secs(20);
    for (name, extra, reason) in [
        ("no-token", vec![], "join_token: is required"),
        (
            "forged",
            vec!["--join-token", forged.as_str()],
            "join_token: unknown token",
        ),
        (
            "foreign",
            vec!["--join-token", foreign.as_str()],
            "belongs to a cluster whose CA fingerprint is",
        ),
        (
            "spent",
            vec!["--join-token", spent.trim()],
            "already used (by node 2)",
        ),
    ] {
        let (code, log) = intruder(&cluster, name, &extra, wait).await;
        assert!(matches!(code, Some(c) if c != 0), "{name}: {code:?}\n{log}");
        assert!(log.contains(reason), "{name}: {log}");
    }
    // A plain (--insecure) node is refused by the peer service.
    let (code, log) = intruder(
        &cluster,
        "insecure",
        &["--insecure"],
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(code, None, "{log}");
    assert!(log.contains("a cluster certificate is required"), "{log}");
    let s = c.cluster_status().await.unwrap();
    assert_eq!(s.members.len(), 3, "{s:?}");

    // A removed node's certificate is revoked: peers refuse it.
    let (_, cert3, key3) = node_tls(&cluster, 3);
    let ch = tls_channel(&n1.listen, client_config(&ca, Some((&cert3, &key3))))
        .await
        .unwrap();
    assert_eq!(
        ping(ch.clone()).await.unwrap(),
        1,
        "a member's certificate works"
    );
    let (code, _, err) = cluster.cli(1, &["cluster", "remove", "3"]);
    assert_eq!(code, 0, "{err}");
    let e = eventually("node 3's certificate refused", || {
        let ch = ch.clone();
        async move {
            match ping(ch).await {
                Err(e) => Ok(e),
                Ok(id) => Err(format!("still answered by node {id}")),
            }
        }
    })
    .await;
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("revoked"), "{e}");
    cluster.assert_no_panics();
}

/// Reads from `s` until EOF or error; returns how long that took, or `None`
/// if the connection was still open after `max`.
async fn closed_within(s: &mut tokio::net::TcpStream, max: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(max.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Slow or huge clients cannot starve a node: the mesh and the gRPC
/// listener drop clients that send nothing or no complete request head
/// within --header-timeout, the mesh serves at most --max-connections at
/// once (the rest wait), a request head over 64 KiB gets 431, and an API
/// message over 4 MiB is refused while the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_limits_hold_against_slow_and_huge_clients() {
    use tokio::io::AsyncWriteExt;
    let cluster =
        TestCluster::start(1, &["--header-timeout", "2s", "--max-connections", "3"]).await;
    let n1 = cluster.view(1);
    let mesh = n1.http.clone();
    let unknown = |m: &str| get(m, "nothing.here.rouse.localhost", None);
    assert_eq!(unknown(&mesh), 404);

    // A request head that never ends: closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&mesh).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t = closed_within(&mut slow, Duration::from_secs(10)).await;
    println!("mesh: an unfinished request head was dropped after {t:?}");
    assert!(t.is_some_and(|t| t >= Duration::from_millis(1500)), "{t:?}");
    // A client that sends nothing, on either listener.
    for addr in [&mesh, &n1.listen] {
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = closed_within(&mut idle, Duration::from_secs(10)).await;
        println!("{addr}: a silent client was dropped after {t:?}");
        assert!(
            t.is_some_and(|t| t >= Duration::from_millis(1500)),
            "{addr}: {t:?}"
        );
    }

    // Three silent connections hold every mesh slot: a fourth client is not
    // served until the header timeout frees them.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&mesh).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let m = mesh.clone();
    let waited = tokio::task::spawn_blocking(move || unknown(&m))
        .await
        .unwrap();
    let took = start.elapsed();
    println!("mesh: a 4th client with 3 slots held got {waited} after {took:?}");
    assert_eq!(waited, 404);
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    drop(held);

    // A head over 64 KiB: 431.
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    assert_eq!(get(&mesh, "nothing.here.rouse.localhost", Some(big)), 431);

    // An API message over 4 MiB is refused, and the node keeps serving.
    let mut c = cluster.client(1).await;
    let mut env = HashMap::new();
    env.insert("BIG".to_string(), "b".repeat(5 * 1024 * 1024));
    let e = c.create_namespace("huge", env).await.unwrap_err();
    println!("api: a 5 MiB message: {e}");
    assert_eq!(e.code(), Some(tonic::Code::OutOfRange), "{e}");
    c.create_namespace("small", HashMap::new()).await.unwrap();
    assert_eq!(unknown(&mesh), 404);
    cluster.assert_no_panics();
}
