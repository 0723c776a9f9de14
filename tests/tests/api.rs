//! End-to-end: the API's contract on a real node — validation errors name
//! the field, status codes, CLI output and errors, health and reflection.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use rouse_client::pb;
use rouse_e2e::{eventually, TestCluster};
use tonic::Code;

fn deploy(ns: &str, name: &str) -> pb::DeployContainerRequest {
    pb::DeployContainerRequest {
        namespace: ns.into(),
        name: name.into(),
        image: Some("registry.local/app:1".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_with_the_field_named() {
    let cluster = TestCluster::start(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("ok", HashMap::new()).await.unwrap();

    let cases: Vec<(pb::DeployContainerRequest, &str)> = vec![
        (
            pb::DeployContainerRequest {
                timeout_seconds: Some(5),
                ..deploy("ok", "a")
            },
            "timeout: 5s is below the minimum 10s",
        ),
        (
            pb::DeployContainerRequest {
                timeout_seconds: Some(901),
                ..deploy("ok", "a")
            },
            "timeout:",
        ),
        (
            pb::DeployContainerRequest {
                cpu_mvcpu: Some(50),
                ..deploy("ok", "a")
            },
            "cpu:",
        ),
        (
            pb::DeployContainerRequest {
                memory_mb: Some(70_000),
                ..deploy("ok", "a")
            },
            "memory:",
        ),
        (
            pb::DeployContainerRequest {
                max_concurrency: Some(0),
                ..deploy("ok", "a")
            },
            "max_concurrency:",
        ),
        (
            pb::DeployContainerRequest {
                max_scale: Some(51),
                ..deploy("ok", "a")
            },
            "max_scale:",
        ),
        (
            pb::DeployContainerRequest {
                min_scale: Some(4),
                max_scale: Some(3),
                ..deploy("ok", "a")
            },
            "min_scale:",
        ),
        (
            pb::DeployContainerRequest {
                image: None,
                ..deploy("ok", "a")
            },
            "image:",
        ),
        (deploy("ok", "Bad_Name"), "name:"),
        (deploy("-bad", "a"), "namespace:"),
        (
            pb::DeployContainerRequest {
                env: HashMap::from([("1X".into(), "v".into())]),
                ..deploy("ok", "a")
            },
            "env.1X:",
        ),
    ];
    for (req, want) in cases {
        let e = c.deploy_container(req).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidArgument), "{e}");
        assert!(
            e.to_string().starts_with(want),
            "got {e:?}, want prefix {want:?}"
        );
    }
    let e = c
        .create_namespace(&"x".repeat(64), HashMap::new())
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("name:"), "{e}");
    // Nothing was stored by any refused call.
    assert!(c.list_containers("", false).await.unwrap().is_empty());

    // NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION.
    let e = c
        .deploy_container(deploy("missing", "a"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");
    let e = c.create_namespace("ok", HashMap::new()).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::AlreadyExists), "{e}");
    c.deploy_container(deploy("ok", "web")).await.unwrap();
    let e = c.delete_namespace("ok").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    let e = c.get_container("ok", "nope", false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound), "{e}");

    // Deploy updates only the fields it sets.
    let got = c
        .deploy_container(pb::DeployContainerRequest {
            namespace: "ok".into(),
            name: "web".into(),
            min_scale: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (got.min_scale, got.image.as_str(), got.timeout_seconds),
        (2, "registry.local/app:1", 300)
    );
    cluster.assert_no_panics();
}

/// Every file under `dir` (recursively) that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_write_only_and_sealed_at_rest() {
    let cluster = TestCluster::start(3, &["--snapshot-logs", "20"]).await;
    let mut c = cluster.client(2).await;
    let secret = "s3cr3t-value-that-must-not-leak";
    let ns = eventually("data key ready", || {
        let mut c = c.clone();
        async move {
            c.create_namespace_with(pb::CreateNamespaceRequest {
                name: "vault".into(),
                env: HashMap::new(),
                secrets: HashMap::from([("DB_PASSWORD".into(), secret.into())]),
            })
            .await
        }
    })
    .await;
    assert_eq!(ns.secret_names, ["DB_PASSWORD"]);
    // Through the CLI, on a container, from another node.
    c.deploy_container(deploy("vault", "app")).await.unwrap();
    let (code, out, err) = cluster.cli(
        3,
        &[
            "secret",
            "set",
            "vault/app",
            &format!("API_KEY={secret}-2"),
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cluster.cli(
        1,
        &["secret", "set", "vault/app", &format!("API_KEY={secret}-3")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let listed = c.list_secrets("vault", Some("app")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].key.as_str(), listed[0].version), ("API_KEY", 2));
    assert_eq!(listed[0].value_sha256.len(), 64);
    // More writes so snapshots are taken, then look for the value everywhere.
    for i in 0..40 {
        c.create_namespace(&format!("pad-{i}"), HashMap::new())
            .await
            .unwrap();
    }
    let (_, out, _) = cluster.cli(1, &["namespace", "get", "vault", "-o", "json"]);
    let (_, out2, _) = cluster.cli(1, &["container", "get", "vault/app", "-o", "json"]);
    let (_, out3, _) = cluster.cli(1, &["secret", "list", "vault/app", "-o", "json"]);
    for text in [&out, &out2, &out3] {
        assert!(
            !text.contains(secret),
            "an API answer holds the secret: {text}"
        );
    }
    assert!(out2.contains("API_KEY"), "{out2}");
    for node in cluster.views() {
        let id = node.id;
        let hits = files_containing(&node.data_dir, secret);
        assert!(hits.is_empty(), "node {id}: {hits:?} hold the secret");
        assert!(
            !node.log_text().contains(secret),
            "node {id}'s log holds the secret"
        );
    }
    // Bad input names the field; delete works.
    let (code, _, err) = cluster.cli(1, &["secret", "set", "vault", "1BAD=x"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("rouse: values.1BAD:"), "{err}");
    let (code, _, err) = cluster.cli(1, &["secret", "set", "vault", "PORT=1"]);
    assert_ne!(code, 0);
    assert!(err.contains("PORT"), "{err}");
    c.delete_secret("vault", None, "DB_PASSWORD").await.unwrap();
    assert!(c.list_secrets("vault", None).await.unwrap().is_empty());
    let e = c
        .delete_secret("vault", None, "DB_PASSWORD")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_contract() {
    let cluster = TestCluster::start(1, &[]).await;
    let (code, out, err) = cluster.cli(1, &["cluster", "status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["leader_id"], 1);
    assert!(v["term"].as_u64().unwrap() >= 1);
    let m = &v["members"][0];
    assert_eq!(m["id"], 1);
    assert_eq!(m["role"], "voter");
    assert_eq!(m["zone"], "z1");
    assert_eq!(m["region"], "default");
    assert_eq!(m["healthy"], true);
    assert_eq!(m["address"], cluster.listen(1));

    let (code, _, err) = cluster.cli(1, &["namespace", "create", "web", "--env", "A=1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cluster.cli(
        1,
        &[
            "container",
            "deploy",
            "web/api",
            "--image",
            "reg.local/api:2",
            "--port",
            "9000",
            "--min-scale",
            "1",
            "--max-scale",
            "4",
            "--max-concurrency",
            "10",
            "--timeout",
            "2m",
            "--cpu",
            "500",
            "--memory",
            "128",
            "--privacy",
            "private",
            "--protocol",
            "h2c",
            "--env",
            "B=2",
            "--scale-to-zero-after",
            "15m",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cluster.cli(1, &["container", "get", "web/api", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["timeout_seconds"], 120);
    assert_eq!(v["scale_to_zero_after_seconds"], 900);
    assert_eq!(v["privacy"], "private");
    assert_eq!(v["protocol"], "h2c");
    assert_eq!(v["cpu_mvcpu"], 500);
    assert_eq!(v["env"]["B"], "2");
    let (code, out, _) = cluster.cli(1, &["container", "list", "web", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("name: api"), "{out}");

    // Errors: one line on stderr naming the field, non-zero exit.
    for (args, field) in [
        (
            vec!["container", "deploy", "web/api", "--timeout", "5s"],
            "timeout:",
        ),
        (
            vec!["container", "deploy", "web/api", "--timeout", "soon"],
            "timeout:",
        ),
        (
            vec!["container", "deploy", "webapi", "--image", "x"],
            "target:",
        ),
        (vec!["namespace", "create", "UPPER"], "name:"),
        (
            vec!["namespace", "create", "x", "--env", "NOEQUALS"],
            "env:",
        ),
        (vec!["secret", "set", "a/b/c", "K=V"], "scope:"),
    ] {
        let (code, out, err) = cluster.cli(1, &args);
        assert_ne!(code, 0, "{args:?} succeeded: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("rouse: {field}")),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tokio_stream::StreamExt;
    let cluster = TestCluster::start(1, &[]).await;
    let ch = tonic::transport::Endpoint::from_shared(cluster.endpoint(1))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "rouse.v1.NamespaceService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            r.into_inner().status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "rouse.v1.ClusterService",
        "rouse.v1.NamespaceService",
        "rouse.v1.ContainerService",
        "rouse.v1.SecretService",
        "rouse.v1.TokenService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
}

/// A Python grpcio client generated from `proto/` as it is works against a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_built_from_proto_works() {
    let cluster = TestCluster::start(1, &[]).await;
    let out = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpcio_client.py");
    let res = std::process::Command::new("python3")
        .arg(script)
        .arg(cluster.listen(1))
        .arg(out.path())
        .arg(cluster.admin_token())
        .output()
        .expect("python3 (deploy/install-deps.sh installs grpcio-tools)");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success() && stdout.trim() == "ok",
        "{stdout}{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_key_and_namespace_keys_stay_in_their_namespace() {
    let cluster = TestCluster::start(2, &[]).await;
    let mut admin = cluster.client(2).await;
    admin
        .create_namespace("mine", HashMap::new())
        .await
        .unwrap();
    admin
        .create_namespace("theirs", HashMap::new())
        .await
        .unwrap();
    let ep = cluster.endpoint(2);
    // No token, a malformed one, a forged one: UNAUTHENTICATED.
    let admin_token = cluster.admin_token();
    let mut forged = admin_token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for t in [None, Some("garbage"), Some(forged.as_str())] {
        let mut c = rouse_client::Client::connect(&ep, t).await.unwrap();
        let e = c.list_namespaces(false).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::Unauthenticated), "{t:?}: {e}");
        assert!(e.to_string().starts_with("authorization:"), "{e}");
    }
    let (code, _, err) = cluster.cli_as(1, "", &["namespace", "list"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("rouse: authorization:"), "{err}");
    // A namespace key manages its namespace and nothing else.
    let (code, out, err) = cluster.cli(
        1,
        &["apikey", "create", "--namespace", "mine", "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = v["key"].as_str().unwrap().to_string();
    let mut scoped = rouse_client::Client::connect(&ep, Some(&key))
        .await
        .unwrap();
    eventually("the scoped key works", || {
        let mut scoped = scoped.clone();
        async move { scoped.get_namespace("mine", false).await.map(|_| ()) }
    })
    .await;
    scoped
        .deploy_container(deploy("mine", "web"))
        .await
        .unwrap();
    let names: Vec<String> = scoped
        .list_namespaces(false)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["mine"]);
    for e in [
        scoped.get_namespace("theirs", false).await.unwrap_err(),
        scoped
            .deploy_container(deploy("theirs", "web"))
            .await
            .unwrap_err(),
        scoped
            .create_namespace("new", HashMap::new())
            .await
            .unwrap_err(),
        scoped.cluster_status().await.unwrap_err(),
        scoped.create_token("theirs", None, 60).await.unwrap_err(),
    ] {
        assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    }
    assert!(
        admin
            .list_containers("theirs", false)
            .await
            .unwrap()
            .is_empty(),
        "nothing was written to theirs"
    );
    // Revoked keys stop working.
    let id = v["id"].as_str().unwrap();
    let (code, _, err) = cluster.cli(2, &["apikey", "revoke", id]);
    assert_eq!(code, 0, "{err}");
    let e = scoped.get_namespace("mine", false).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
    // Health and reflection stay open (checked in health_and_reflection_are_served).
}

/// With `--insecure` (plain peer traffic, development only) the peer
/// service (Raft, forwarding) still answers only holders of the cluster's
/// master key; a node with another key cannot join. Nodes join without a
/// token. (With mutual TLS, see security.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_peer_service_refuses_callers_without_the_cluster_credential() {
    let mut cluster = TestCluster::new(&["--insecure"]);
    cluster.add_node(1, None, &[]).await;
    // A node with the cluster's master key joins without a token.
    let key = cluster.data_dir(1).join("master.key");
    eventually("node 1 writes its master key", || {
        let exists = key.exists();
        async move { exists.then_some(()).ok_or("no master key yet") }
    })
    .await;
    cluster
        .add_node(2, Some(1), &["--master-key-file", key.to_str().unwrap()])
        .await;
    cluster.wait_voters(2).await;
    let mut c = cluster.client(2).await;
    let s = c.cluster_status().await.unwrap();
    assert!(!s.peer_tls, "{s:?}");
    assert!(
        cluster.log_text(1).contains("INSECURE"),
        "--insecure is logged loudly"
    );
    let ch = tonic::transport::Endpoint::from_shared(cluster.endpoint(1))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut peer = rouse_proto::peer::raft_peer_client::RaftPeerClient::new(ch);
    let e = peer
        .ping(rouse_proto::peer::PingRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut req = tonic::Request::new(rouse_proto::peer::RaftMessage {
        payload: b"{}".to_vec(),
    });
    req.metadata_mut()
        .insert("x-rouse-peer", "0".repeat(64).parse().unwrap());
    let e = peer.forward(req).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // A node whose master key differs is never admitted.
    let key = cluster.dir.path().join("other.key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let join = cluster.listen(1);
    let mut intruder = cluster.stranger(
        "intruder",
        3,
        &[
            "--insecure",
            "--join",
            &join,
            "--master-key-file",
            key.to_str().unwrap(),
        ],
    );
    // It keeps trying and failing; give it a few attempts.
    assert_eq!(intruder.wait_exit(Duration::from_secs(3)).await, None);
    let text = intruder.log_text();
    let mut c = cluster.client(1).await;
    let s = c.cluster_status().await.unwrap();
    assert_eq!(s.members.len(), 2, "{s:?}");
    assert!(text.contains("not a member of this cluster"), "{text}");
}
