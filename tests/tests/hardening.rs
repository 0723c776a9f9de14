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
        assert!(!lower.contains("authorization") && !lower.contains("x-auth-token"), "{head}");
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
    let tcp = tokio::net::TcpStream::connect(cluster.view(target).hop).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("peer.rouse.internal").unwrap();
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
    assert!(first.starts_with("HTTP/1.1 404"), "a member's hop is served: {first}");
    let (code, _, err) = cluster.cli(leader, &["cluster", "remove", &victim.to_string()]);
    assert_eq!(code, 0, "{err}");
    let _ = s.write_all(ask).await;
    let second = answer(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 403"), "after removal: {second}");
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
    let log_file = cluster.data_dir(1).join("logs").join(format!("{}.log", inst.id));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log_file).unwrap();
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
    assert!(!logs.contains('\u{1b}') && !logs.contains('\u{7}'), "{logs:?}");
    assert!(logs.contains("\\u{1b}]0;pwned"), "{logs:?}");
    let (_, raw, _) = cluster.cli(1, &["container", "logs", "n/web", "--instance", &inst.id, "--raw"]);
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
    child.stdin.take().unwrap().write_all(b"s3cret value\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, out2, err) = cluster.cli(1, &["secret", "set", "n", "ON_LINE=s3cret value", "-o", "json"]);
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
    assert_eq!(fp(&out.stdout, "FROM_STDIN"), fp(out2.as_bytes(), "ON_LINE"));
    cluster.assert_no_panics();
}
