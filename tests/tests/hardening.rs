//! End-to-end: the smaller holes of the security review. The mesh keeps a
//! private container's token to itself and says how the client came; a
//! removed node's open hop connection is refused from its next request;
//! `container logs` does not replay an instance's terminal escapes; secrets
//! and keys need not appear on a command line.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use rouse_client::pb;
use rouse_e2e::{deploy, eventually, push_test_image, ready, TestCluster};

mod common;
use common::{client_config, node_tls};

fn curl(mesh: &str, host: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Host: {host}")])
        .args(headers.iter().flat_map(|h| ["-H", *h]))
        .arg(format!("http://{mesh}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The instance of a private container sees neither the caller's token
/// (in either header) nor a client's claim to have come over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_gets_no_token_and_true_forwarding_headers() {
    let bin = rouse_e2e::bin_dir().join("upgrade-echo-server");
    let image = rouse_e2e::push_binary_image(&bin, "rouse-test/headers", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("p", HashMap::new()).await.unwrap();
    let mut req = deploy("p", "echo", &image, 1);
    req.memory_mb = Some(64);
    req.privacy = pb::Privacy::Private.into();
    c.deploy_container(req).await.unwrap();
    ready(&c, "p", "echo", 1).await;
    let t = eventually("a token", || {
        let mut c = c.clone();
        async move { c.create_token("p", Some("echo"), 600).await }
    })
    .await
    .token;
    let mesh = cluster.http(1);
    for header in ["Authorization: Bearer", "X-Auth-Token:"] {
        let auth = format!("{header} {t}");
        let (code, head) = curl(
            &mesh,
            "echo.p.rouse.localhost",
            "/headers",
            &[&auth, "X-Forwarded-Proto: https"],
        );
        assert_eq!(code, 200, "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("authorization") && !lower.contains("x-auth-token"),
            "{head}"
        );
        assert!(!head.contains(&t), "the token reached the instance: {head}");
        assert!(lower.contains("x-forwarded-proto: http\r\n"), "{head}");
        assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    }
    cluster.assert_no_panics();
}

/// A removed node's already open connection to a hop listener is refused
/// from its next request on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_open_hop_connection_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let (victim, target) = match leader {
        1 => (3, 2),
        2 => (3, 1),
        _ => (2, 1),
    };
    let (ca, cert, key) = node_tls(&cluster, victim);
    let tcp = tokio::net::TcpStream::connect(cluster.view(target).hop)
        .await
        .unwrap();
    let name =
        tokio_rustls::rustls::pki_types::ServerName::try_from("peer.rouse.internal").unwrap();
    let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config(
        &ca,
        Some((&cert, &key)),
    )));
    let mut s = conn.connect(name, tcp).await.unwrap();
    let ask = b"GET / HTTP/1.1\r\nHost: nothing.here\r\n\r\n";
    async fn answer(s: &mut (impl AsyncReadExt + Unpin)) -> String {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    s.write_all(ask).await.unwrap();
    let first = answer(&mut s).await;
    assert!(
        first.starts_with("HTTP/1.1 404"),
        "a member's hop is served: {first}"
    );
    let (code, _, err) = cluster.cli(leader, &["cluster", "remove", &victim.to_string()]);
    assert_eq!(code, 0, "{err}");
    let _ = s.write_all(ask).await;
    let second = answer(&mut s).await;
    assert!(
        second.starts_with("HTTP/1.1 403"),
        "after removal: {second}"
    );
    cluster.assert_no_panics();
}

/// `container logs` shows an instance's escape sequences escaped (unless
/// `--raw`); `secret set K=-` reads the value from standard input; and the
/// CLI takes its key from `--token-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_keeps_escapes_and_secrets_off_the_terminal_and_command_line() {
    let image = push_test_image("rouse-test/escapes", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    eventually("a namespace", || {
        let mut c = c.clone();
        async move { c.create_namespace("n", HashMap::new()).await }
    })
    .await;
    let mut req = deploy("n", "web", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "n", "web", 1).await.remove(0);
    // The instance wrote escape sequences to its output (appended where
    // the node keeps what the instance writes).
    let log_file = cluster
        .data_dir(1)
        .join("logs")
        .join(format!("{}.log", inst.id));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_file)
        .unwrap();
    f.write_all(b"evil \x1b]0;pwned\x07\x1b[2J done\n").unwrap();
    let logs = eventually("the line in the logs", || {
        let (code, out, err) = cluster.cli(1, &["container", "logs", "n/web"]);
        async move {
            if code == 0 && out.contains("done") {
                Ok(out)
            } else {
                Err(format!("{out}{err}"))
            }
        }
    })
    .await;
    assert!(
        !logs.contains('\u{1b}') && !logs.contains('\u{7}'),
        "{logs:?}"
    );
    assert!(logs.contains("\\u{1b}]0;pwned"), "{logs:?}");
    let (_, raw, _) = cluster.cli(
        1,
        &[
            "container",
            "logs",
            "n/web",
            "--instance",
            &inst.id,
            "--raw",
        ],
    );
    assert!(raw.contains("\u{1b}[2J"), "--raw keeps the bytes: {raw:?}");

    // The secret's value through stdin, compared by fingerprint with the
    // same value given on the command line.
    let token_file = cluster.data_dir(1).join("admin-token");
    let mut child = std::process::Command::new(cluster.bin("rouse"))
        .args(["--endpoint", &cluster.endpoint(1)])
        .arg("--token-file")
        .arg(&token_file)
        .args(["secret", "set", "n", "FROM_STDIN=-", "-o", "json"])
        .env_remove("ROUSE_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret value\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out2, err) = cluster.cli(
        1,
        &["secret", "set", "n", "ON_LINE=s3cret value", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let fp = |json: &[u8], key: &str| {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .map(|s| s["fingerprint"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(
        fp(&out.stdout, "FROM_STDIN"),
        fp(out2.as_bytes(), "ON_LINE")
    );
    cluster.assert_no_panics();
}

/// Waits until the server closes `s` (reading and discarding what it
/// sends, never answering); how long that took, or None within `max`.
async fn closed_within(s: &mut tokio::net::TcpStream, max: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(max.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// The HTTP/2 connection preface and an empty SETTINGS frame: a client
/// that then says nothing more (and acknowledges nothing).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// Opens a tunnel through the mesh (an upgrade to the echo server) and
/// checks it carries bytes.
fn tunnel(mesh: &str, host: &str) -> std::net::TcpStream {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(mesh).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /t HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hi").unwrap();
    let mut got = [0u8; 2];
    s.read_exact(&mut got).unwrap();
    s
}

/// Connections hold no slot for ever: an idle HTTP/1 keep-alive
/// connection and a silent HTTP/2 one are closed; the API serves a capped
/// number of connections; a tunnel keeps its mesh slot until it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_upgraded_connections_hold_no_slot_for_ever() {
    use tokio::io::AsyncWriteExt;
    let bin = rouse_e2e::bin_dir().join("upgrade-echo-server");
    let image = rouse_e2e::push_binary_image(&bin, "rouse-test/tunnels", "1");
    let cluster = TestCluster::start_with_runtime(
        1,
        &[
            "--header-timeout",
            "2s",
            "--max-connections",
            "2",
            "--max-api-connections",
            "3",
        ],
    )
    .await;
    let view = cluster.view(1);
    let mesh = view.http.clone();

    // Idle after a keep-alive request.
    let mut s = tokio::net::TcpStream::connect(&mesh).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: nothing.here\r\n\r\n")
        .await
        .unwrap();
    let t = closed_within(&mut s, Duration::from_secs(15)).await;
    println!("mesh: an idle keep-alive connection closed after {t:?}");
    assert!(t.is_some(), "an idle HTTP/1 connection stayed open");
    // Silent HTTP/2, on the mesh and on the API listener.
    for addr in [&mesh, &view.listen] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        let t = closed_within(&mut s, Duration::from_secs(15)).await;
        println!("{addr}: a silent HTTP/2 client closed after {t:?}");
        assert!(
            t.is_some(),
            "{addr}: a silent HTTP/2 connection stayed open"
        );
    }

    // Three connections hold every API slot: a client waits for one.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&view.listen).await.unwrap();
        s.write_all(H2_PREFACE).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = std::time::Instant::now();
    let mut c = cluster.client(1).await;
    let took = start.elapsed();
    println!("api: a 4th client with 3 slots held got through after {took:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    drop(held);

    // Two tunnels hold both mesh slots until they close.
    c.create_namespace("ws", HashMap::new()).await.unwrap();
    let mut req = deploy("ws", "echo", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    ready(&c, "ws", "echo", 1).await;
    let host = "echo.ws.rouse.localhost";
    let t1 = tunnel(&mesh, host);
    let t2 = tunnel(&mesh, host);
    let m = mesh.clone();
    let waiting = std::thread::spawn(move || curl(&m, host, "/", &[]));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !waiting.is_finished(),
        "served while two tunnels held both slots"
    );
    drop(t1);
    let (code, body) = waiting.join().unwrap();
    assert_eq!((code, body.as_str()), (200, "plain\n"));
    drop(t2);
    cluster.assert_no_panics();
}

/// A tenant's footprint is bounded: an admin's quota refuses growth with
/// an error naming it (and a namespace key cannot lift it), an instance's
/// log goes some time after the instance, and image parts over the node's
/// limits are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_bounded() {
    let image = push_test_image("rouse-test/bounded", "1");
    let cluster = TestCluster::start_with_runtime(1, &["--log-retention", "2s"]).await;
    let mut c = cluster.client(1).await;
    eventually("a namespace", || {
        let mut c = c.clone();
        async move { c.create_namespace("acme", HashMap::new()).await }
    })
    .await;
    let (code, out, err) = cluster.cli(
        1,
        &[
            "namespace",
            "quota",
            "acme",
            "--containers",
            "1",
            "--secrets",
            "1",
            "--tokens",
            "1",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["quota"]["containers"], 1, "{v}");
    let key = c.create_api_key("acme").await.unwrap().key;
    let (code, _, err) = cluster.cli_as(
        1,
        &key,
        &["namespace", "quota", "acme", "--containers", "99"],
    );
    assert_ne!(code, 0, "a namespace key lifted its own quota");
    assert!(err.contains("admin"), "{err}");

    let mut req = deploy("acme", "one", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req.clone()).await.unwrap();
    req.name = "two".into();
    let e = c.deploy_container(req).await.unwrap_err();
    assert!(e.to_string().contains("quota containers"), "{e}");
    let (code, _, err) = cluster.cli_as(1, &key, &["secret", "set", "acme", "A=1", "B=2"]);
    assert_ne!(code, 0);
    assert!(err.contains("quota secrets"), "{err}");
    c.create_token("acme", None, 600).await.unwrap();
    let e = c.create_token("acme", None, 600).await.unwrap_err();
    assert!(e.to_string().contains("quota tokens"), "{e}");

    // The log of a deleted instance: still there at once, gone after the
    // retention.
    let inst = ready(&c, "acme", "one", 1).await.remove(0);
    let log = cluster
        .data_dir(1)
        .join("logs")
        .join(format!("{}.log", inst.id));
    assert!(log.exists());
    c.delete_container("acme", "one").await.unwrap();
    eventually("the log removed after the retention", || {
        let gone = !log.exists();
        async move {
            if gone {
                Ok(())
            } else {
                Err("still there")
            }
        }
    })
    .await;

    cluster.assert_no_panics();
    drop(cluster);

    // A layer over --max-layer-bytes (the test image has a 1 MB busybox).
    let cluster = TestCluster::start_with_runtime(1, &["--max-layer-bytes", "65536"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("big", HashMap::new()).await.unwrap();
    let mut req = deploy("big", "web", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let why = eventually("the pull refused", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("big", "web", true)
                .await
                .map_err(|e| e.to_string())?;
            ct.instances
                .iter()
                .find(|i| i.message.contains("--max-layer-bytes"))
                .map(|i| i.message.clone())
                .ok_or(format!("{:?}", ct.instances))
        }
    })
    .await;
    assert!(why.contains("layer"), "{why}");
    cluster.assert_no_panics();
}
