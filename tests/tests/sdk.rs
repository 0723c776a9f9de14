//! The SDK examples against a live cluster: the Python package (installed
//! with pip from sdk/python, its stubs generated from proto/ as it builds)
//! deploys a private container, waits for it, reads its logs and mints a
//! token that then opens the container through the mesh; the Rust example
//! does the same.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use rouse_e2e::{push_test_image, TestCluster};

/// Checks an example's output: ready, the instance's log, a working token.
fn check(cluster: &TestCluster, out: &std::process::Output, host: &str) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ready: "), "{text}");
    assert!(
        text.contains("rouse hello listening on"),
        "no log line: {text}"
    );
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("a token line");
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let status = |auth: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "20"])
            .args(["-H", &format!("Host: {host}")]);
        if let Some(t) = auth {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let o = cmd
            .arg(format!("http://{}/", cluster.http(1)))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(
        status(None),
        "401",
        "a private container answered without a token"
    );
    assert_eq!(
        status(Some(token)),
        "200",
        "the minted token did not open it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_rust_sdks_deploy_wait_read_logs_and_mint_a_token() {
    let image = push_test_image("rouse-test/sdk", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let site = tempfile::tempdir().unwrap();
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-build-isolation",
            "--no-deps",
            "--target",
        ])
        .arg(site.path())
        .arg(root.join("sdk/python"))
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "{}",
        String::from_utf8_lossy(&pip.stderr)
    );
    let endpoint = cluster.endpoint(1);
    let out = Command::new("python3")
        .arg(root.join("sdk/python/examples/deploy_and_wait.py"))
        .arg(&image)
        .env("PYTHONPATH", site.path())
        .env("ROUSE_ENDPOINT", endpoint.trim_start_matches("http://"))
        .env("ROUSE_TOKEN", cluster.admin_token())
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    check(&cluster, &out, "web.pyshop.rouse.localhost");
    // A bad call: the SDK raises RouseError naming the field.
    let bad = Command::new("python3")
        .args(["-c", "import os,sys\nfrom rouse import Client, RouseError\nc=Client(os.environ['E'], token=os.environ['T'])\ntry:\n    c.deploy('pyshop','web',timeout_seconds=5)\nexcept RouseError as e:\n    print(e.code.name, e.message)\n"])
        .env("PYTHONPATH", site.path())
        .env("E", endpoint.trim_start_matches("http://"))
        .env("T", cluster.admin_token())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bad.stdout);
    assert!(
        said.starts_with("INVALID_ARGUMENT") && said.contains("timeout"),
        "{said}"
    );

    // The Rust example (built with the client's tests).
    let example = rouse_e2e::bin_dir().join("examples/deploy_and_wait");
    assert!(
        example.exists(),
        "build it: cargo build -p rouse-client --examples"
    );
    let out = Command::new(example)
        .arg(&image)
        .env("ROUSE_ENDPOINT", &endpoint)
        .env("ROUSE_TOKEN", cluster.admin_token())
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    check(&cluster, &out, "web.rsshop.rouse.localhost");
    cluster.assert_no_panics();
}

/// `rouse version` shows both releases and levels; against a node of
/// another API level (an older node, played here by a minimal server
/// answering NodeInfo only) it fails with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rouse_version_shows_both_and_refuses_another_api_level() {
    use rouse_proto::v1 as pb;
    use rouse_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
    use tonic::{Request, Response, Status};

    let cluster = TestCluster::start(1, &[]).await;
    let (code, out, err) = cluster.cli(1, &["version", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["client"]["api_level"], v["server"]["api_level"], "{v}");
    assert_eq!(v["client"]["version"], v["server"]["version"], "{v}");

    struct Old;
    #[tonic::async_trait]
    impl ClusterService for Old {
        async fn status(
            &self,
            _: Request<pb::ClusterStatusRequest>,
        ) -> Result<Response<pb::ClusterStatus>, Status> {
            Err(Status::unimplemented("old"))
        }
        async fn remove_node(
            &self,
            _: Request<pb::RemoveNodeRequest>,
        ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
            Err(Status::unimplemented("old"))
        }
        async fn node_info(
            &self,
            _: Request<pb::NodeInfoRequest>,
        ) -> Result<Response<pb::NodeInfoResponse>, Status> {
            // A node from before API levels: no version, level 0.
            Ok(Response::new(pb::NodeInfoResponse {
                id: 9,
                ..Default::default()
            }))
        }
        async fn create_join_token(
            &self,
            _: Request<pb::CreateJoinTokenRequest>,
        ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
            Err(Status::unimplemented("old"))
        }
        async fn rotate_keys(
            &self,
            _: Request<pb::RotateKeysRequest>,
        ) -> Result<Response<pb::RotateKeysResponse>, Status> {
            Err(Status::unimplemented("old"))
        }
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServiceServer::new(Old))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let (code, out, err) = cluster.rouse(
        "unused",
        &["--endpoint", &format!("http://{addr}"), "version"],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("API level 0"), "{out}");
    assert!(
        err.contains("version: the node speaks API level 0"),
        "{err}"
    );
}
