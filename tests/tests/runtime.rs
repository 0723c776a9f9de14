//! End-to-end on a real containerd and a real registry (both private,
//! started by deploy/test-env.sh): instances run with the limits and env
//! asked for, restart when killed, disappear when deleted, share one pull,
//! report bad images clearly, and survive a rouse-node restart.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;

use rouse_client::{pb, Client};
use rouse_e2e::{deploy, eventually, push_test_image, ready, registry_log_count, TestCluster};

/// Creates namespace `name` with secrets (retried until the cluster's data
/// key is set up).
async fn namespace_with_secrets(c: &Client, name: &str, secrets: &[(&str, &str)]) {
    let secrets: HashMap<String, String> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    eventually("namespace with secrets", || {
        let mut c = c.clone();
        let secrets = secrets.clone();
        async move {
            c.create_namespace_with(pb::CreateNamespaceRequest {
                name: name.into(),
                env: HashMap::new(),
                secrets,
            })
            .await
        }
    })
    .await;
}

/// GET from an instance directly, at its address in its network namespace.
fn http_get(i: &pb::Instance, path: &str) -> String {
    assert!(!i.ip.is_empty(), "instance {} has no address: {i:?}", i.id);
    let out = std::process::Command::new("curl")
        .args([
            "-fsS",
            "--max-time",
            "5",
            &format!("http://{}:{}{path}", i.ip, i.port),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cgroup(controller: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}/rouse/{id}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_runs_with_limits_env_restarts_and_is_removed() {
    let image = push_test_image("rouse-test/limits", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace(
        "shop",
        HashMap::from([("NS_VAR".into(), "from-namespace".into())]),
    )
    .await
    .unwrap();
    let mut req = deploy("shop", "web", &image, 1);
    req.cpu_mvcpu = Some(250);
    req.memory_mb = Some(128);
    req.env = HashMap::from([("CT_VAR".into(), "from-container".into())]);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "shop", "web", 1).await.remove(0);

    // cgroup files show the limits asked for.
    assert_eq!(cgroup("cpu", &inst.id, "cpu.cfs_quota_us"), "25000");
    assert_eq!(cgroup("cpu", &inst.id, "cpu.cfs_period_us"), "100000");
    assert_eq!(
        cgroup("memory", &inst.id, "memory.limit_in_bytes"),
        (128u64 * 1024 * 1024).to_string()
    );
    // The environment: image < namespace < container, plus PORT.
    let env = http_get(&inst, "/cgi-bin/env");
    for want in [
        "NS_VAR=from-namespace",
        "CT_VAR=from-container",
        &format!("PORT={}", inst.port),
        "GREETING_FROM_IMAGE=image",
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }
    assert_eq!(http_get(&inst, "/").trim(), "hello from rouse");

    // Kill the container's process: it is restarted.
    let (_, pid, _) = cluster
        .tasks()
        .into_iter()
        .find(|t| t.0 == inst.id)
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let again = eventually("restarted after kill", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("shop", "web", true)
                .await
                .map_err(|e| e.to_string())?;
            let i = ct.instances.first().cloned().ok_or("no instance")?;
            if i.restarts >= 1 && i.state == "ready" {
                Ok(i)
            } else {
                Err(format!("{i:?}"))
            }
        }
    })
    .await;
    let (_, new_pid, status) = cluster
        .tasks()
        .into_iter()
        .find(|t| t.0 == inst.id)
        .unwrap();
    assert_ne!(new_pid, pid);
    assert_eq!(status, "RUNNING");
    assert_eq!(again.exit_code, Some(137), "{again:?}");
    assert_eq!(http_get(&again, "/").trim(), "hello from rouse");

    // Delete: task, container and snapshot are gone.
    c.delete_container("shop", "web").await.unwrap();
    eventually("instance removed from containerd", || async {
        let tasks = cluster.ctr(&["tasks", "ls", "-q"]);
        let containers = cluster.ctr(&["containers", "ls", "-q"]);
        let snaps = cluster.ctr(&["snapshots", "ls"]);
        if tasks.contains(&inst.id) || containers.contains(&inst.id) || snaps.contains(&inst.id) {
            Err(format!(
                "tasks {tasks:?} containers {containers:?} snapshots {snaps:?}"
            ))
        } else {
            Ok(())
        }
    })
    .await;
    assert!(
        cgroup("memory", &inst.id, "memory.limit_in_bytes").is_empty(),
        "cgroup left behind"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_image_pull_it_once() {
    let image = push_test_image("rouse-test/once", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    let mut req = deploy("n", "twice", &image, 2);
    req.cpu_mvcpu = Some(100);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "n", "twice", 2).await;
    assert_ne!(inst[0].ip, inst[1].ip, "each instance has its own address");
    // Every layer blob of the image was fetched from the registry once.
    let ct = c.get_container("n", "twice", true).await.unwrap();
    let manifest = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/rouse-test/once/manifests/1",
            rouse_e2e::runtime_env().1
        ))
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        let digest = l["digest"].as_str().unwrap();
        assert_eq!(
            registry_log_count(&format!("/v2/rouse-test/once/blobs/{digest}")),
            1,
            "layer {digest} fetched more than once"
        );
    }
    assert!(
        ct.resolved_image.contains("@sha256:"),
        "tag pinned to a digest: {}",
        ct.resolved_image
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_and_unreachable_registry_give_a_clear_status() {
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    let (_, reg) = rouse_e2e::runtime_env();
    c.deploy_container(deploy(
        "n",
        "missing",
        &format!("{reg}/rouse-test/no-such-image:1"),
        1,
    ))
    .await
    .unwrap();
    c.deploy_container(deploy("n", "unreachable", "127.0.0.1:1/rouse-test/x:1", 1))
        .await
        .unwrap();
    for (name, want) in [
        ("missing", "resolving the tag"),
        ("unreachable", "resolving the tag"),
    ] {
        let i = eventually(&format!("{name} reports failure"), || {
            let mut c = c.clone();
            async move {
                let ct = c
                    .get_container("n", name, true)
                    .await
                    .map_err(|e| e.to_string())?;
                let i = ct.instances.first().cloned().ok_or("no instance")?;
                if i.state == "failed" {
                    Ok(i)
                } else {
                    Err(format!("{i:?}"))
                }
            }
        })
        .await;
        assert!(i.message.contains(want), "{name}: {}", i.message);
        println!("{name}: {}", i.message);
    }
    // The node is still serving and the failed instances ran nothing.
    assert!(c.node_info().await.is_ok());
    assert!(cluster.tasks().is_empty());
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restart_adopts_running_instances() {
    let image = push_test_image("rouse-test/adopt", "1");
    let mut cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    c.deploy_container(deploy("n", "keep", &image, 1))
        .await
        .unwrap();
    let inst = ready(&c, "n", "keep", 1).await.remove(0);
    let (_, pid, _) = cluster
        .tasks()
        .into_iter()
        .find(|t| t.0 == inst.id)
        .unwrap();

    cluster.kill(1);
    // The instance keeps serving while rouse-node is down.
    assert_eq!(http_get(&inst, "/").trim(), "hello from rouse");
    cluster.restart(1);
    let c = cluster.client(1).await;
    eventually("adopted", || async {
        if cluster.log_text(1).contains("adopted running instance") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let after = ready(&c, "n", "keep", 1).await.remove(0);
    assert_eq!(after.id, inst.id);
    assert_eq!(
        (&after.ip, after.port),
        (&inst.ip, inst.port),
        "the adopted instance keeps its address"
    );
    assert_eq!(after.restarts, 0);
    let (_, pid_after, _) = cluster
        .tasks()
        .into_iter()
        .find(|t| t.0 == inst.id)
        .unwrap();
    assert_eq!(pid_after, pid, "the task was restarted instead of adopted");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_import_works_offline_and_logs_come_from_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("hello.tar");
    // A registry host that does not exist: only the import can provide it.
    let name = "offline.invalid/rouse-test/hello:1";
    rouse_e2e::tar_test_image(&tar, name);
    let cluster = TestCluster::start_with_runtime(2, &[]).await;
    let (code, out, err) =
        cluster.cli(1, &["image", "import", tar.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["images"][0], name);
    assert_eq!(
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["ok"] == true)
            .count(),
        2,
        "{v}"
    );

    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    let mut req = deploy("n", "offline", name, 2);
    req.cpu_mvcpu = Some(100);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "n", "offline", 2).await;
    let mut nodes: Vec<u64> = inst.iter().map(|i| i.node).collect();
    nodes.sort();
    assert_eq!(nodes, [1, 2], "one instance per node");

    // Logs of the instance on node 2, asked of node 1.
    let remote = inst.iter().find(|i| i.node == 2).unwrap();
    let _ = http_get(&remote, "/cgi-bin/env");
    let want = format!("rouse hello listening on {}", remote.port);
    eventually("logs relayed from node 2", || async {
        let (code, out, err) = cluster.cli(
            1,
            &["container", "logs", "n/offline", "--instance", &remote.id],
        );
        if code == 0 && out.contains(&want) {
            Ok(())
        } else {
            Err(format!("{code} {out} {err}"))
        }
    })
    .await;
    // Without --instance, every instance's lines, prefixed.
    let (code, out, _) = cluster.cli(2, &["container", "logs", "n/offline"]);
    assert_eq!(code, 0);
    for i in &inst {
        assert!(
            out.contains(&format!("[{}] rouse hello listening on {}", i.id, i.port)),
            "{out}"
        );
    }
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_path_gates_readiness() {
    let image = push_test_image("rouse-test/health", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    let mut req = deploy("n", "h", &image, 1);
    req.health_path = Some("/missing".into());
    c.deploy_container(req).await.unwrap();
    // The port accepts, but the path answers 404: starting, never ready.
    let i = eventually("task running", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("n", "h", true)
                .await
                .map_err(|e| e.to_string())?;
            let i = ct.instances.first().cloned().ok_or("none")?;
            if i.state == "starting" {
                Ok(i)
            } else {
                Err(format!("{i:?}"))
            }
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(http_get(&i, "/").trim(), "hello from rouse");
    let ct = c.get_container("n", "h", true).await.unwrap();
    assert_eq!(
        ct.instances[0].state, "starting",
        "a 404 health path must not make it ready"
    );
    // A path that answers 2xx: the new generation becomes ready.
    let (code, out, err) = cluster.cli(
        1,
        &["container", "deploy", "n/h", "--health-path", "/index.html"],
    );
    assert_eq!(code, 0, "{out}{err}");
    ready(&c, "n", "h", 1).await;
    let e = c
        .deploy_container(pb::DeployContainerRequest {
            health_path: Some("no-slash".into()),
            ..deploy("n", "h", &image, 1)
        })
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("health_path:"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_the_container_environment_only() {
    let image = push_test_image("rouse-test/secrets", "1");
    let cluster = TestCluster::start_with_runtime(1, &[]).await;
    let mut c = cluster.client(1).await;
    let secret = "sekrit-7e1f9c-in-env-only";
    namespace_with_secrets(
        &c,
        "n",
        &[("SHARED", "from-namespace"), ("TOKEN", "ns-level")],
    )
    .await;
    let mut req = deploy("n", "app", &image, 1);
    req.secrets = HashMap::from([("TOKEN".into(), secret.into())]);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "n", "app", 1).await.remove(0);
    let env = http_get(&inst, "/cgi-bin/env");
    assert!(
        env.lines().any(|l| l == format!("TOKEN={secret}")),
        "container secret wins:\n{env}"
    );
    assert!(env.lines().any(|l| l == "SHARED=from-namespace"), "{env}");
    let (_, out, _) = cluster.cli(1, &["container", "get", "n/app", "-o", "json"]);
    assert!(!out.contains(secret) && out.contains("TOKEN"), "{out}");
    let node = cluster.view(1);
    assert!(!node.log_text().contains(secret));
    let mut stack = vec![node.data_dir.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let b = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_are_garbage_collected_after_the_delay() {
    let image = push_test_image("rouse-test/gc", "1");
    let cluster = TestCluster::start_with_runtime(1, &["--image-gc-after", "4s"]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    c.deploy_container(deploy("n", "gc", &image, 1))
        .await
        .unwrap();
    ready(&c, "n", "gc", 1).await;
    let pinned = c
        .get_container("n", "gc", true)
        .await
        .unwrap()
        .resolved_image;
    assert!(cluster.ctr(&["images", "ls", "-q"]).contains(&pinned));
    // In use: kept past the delay.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(
        cluster.ctr(&["images", "ls", "-q"]).contains(&pinned),
        "an image in use was collected"
    );
    c.delete_container("n", "gc").await.unwrap();
    let t = std::time::Instant::now();
    eventually("unused image deleted", || async {
        let imgs = cluster.ctr(&["images", "ls", "-q"]);
        if imgs.contains(&pinned) {
            Err(imgs)
        } else {
            Ok(())
        }
    })
    .await;
    println!(
        "unused image deleted {:?} after its last container",
        t.elapsed()
    );
}

/// A registry that demands basic auth: without credentials the instance
/// fails with a clear status; with `--registry-auth` it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_basic_auth() {
    let auth_reg = std::env::var("ROUSE_TEST_AUTH_REGISTRY")
        .expect("deploy/test-env.sh exports ROUSE_TEST_AUTH_REGISTRY");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let st = std::process::Command::new("bash")
        .arg(script)
        .args(["push", &auth_reg, "rouse-test/authed:1"])
        .env("DEST_CREDS", "rouse:rouse-pass")
        .status()
        .unwrap();
    assert!(st.success());
    let image = format!("{auth_reg}/rouse-test/authed:1");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("registries.toml");
    std::fs::write(
        &creds,
        format!("[\"{auth_reg}\"]\nusername = \"rouse\"\npassword = \"rouse-pass\"\n"),
    )
    .unwrap();

    // Without credentials: a clear failure.
    let cluster = TestCluster::start_with_runtime(1, &["--insecure-registry", &auth_reg]).await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    c.deploy_container(deploy("n", "locked", &image, 1))
        .await
        .unwrap();
    let i = eventually("failed without credentials", || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container("n", "locked", true)
                .await
                .map_err(|e| e.to_string())?;
            let i = ct.instances.first().cloned().ok_or("none")?;
            if i.state == "failed" {
                Ok(i)
            } else {
                Err(format!("{i:?}"))
            }
        }
    })
    .await;
    println!("without credentials: {}", i.message);
    assert!(
        i.message.to_lowercase().contains("authoriz"),
        "{}",
        i.message
    );
    drop(cluster);

    // With credentials: it runs.
    let cluster = TestCluster::start_with_runtime(
        1,
        &[
            "--insecure-registry",
            &auth_reg,
            "--registry-auth",
            creds.to_str().unwrap(),
        ],
    )
    .await;
    let mut c = cluster.client(1).await;
    c.create_namespace("n", HashMap::new()).await.unwrap();
    c.deploy_container(deploy("n", "open", &image, 1))
        .await
        .unwrap();
    let inst = ready(&c, "n", "open", 1).await.remove(0);
    assert_eq!(http_get(&inst, "/").trim(), "hello from rouse");
}

/// Waits until node `id`'s master key file holds `key`; returns how long.
async fn master_key_is(cluster: &TestCluster, id: u64, key: &str) -> std::time::Duration {
    let path = cluster.data_dir(id).join("master.key");
    let start = std::time::Instant::now();
    eventually(&format!("node {id} gets the rotated master key"), || {
        let has = std::fs::read_to_string(&path).unwrap_or_default() == key;
        async move { has.then_some(()).ok_or("not yet") }
    })
    .await;
    start.elapsed()
}

/// `rouse cluster rotate-keys` replaces the master key and the data key:
/// secrets sealed before still reach containers, a node that was up
/// fetches the new master key at once and one that was down fetches it when
/// it returns, and every node starts instances with secrets afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_every_node_follows() {
    let image = push_test_image("rouse-test/rotate", "1");
    let mut cluster = TestCluster::start_with_runtime(3, &[]).await;
    let c = cluster.client(1).await;
    namespace_with_secrets(&c, "n", &[("SHARED", "sealed-before")]).await;
    let key = |cluster: &TestCluster, id: u64| {
        std::fs::read_to_string(cluster.data_dir(id).join("master.key")).unwrap()
    };
    let old = key(&cluster, 1);
    assert_eq!(
        old,
        key(&cluster, 2),
        "node 2 received the master key at join"
    );

    cluster.kill(2);
    let (code, out, err) = cluster.cli(1, &["cluster", "rotate-keys", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["secrets_resealed"].as_u64().unwrap() >= 1, "{v}");
    let new = key(&cluster, 1);
    assert_ne!(new, old, "node 1's master key file was replaced");
    let (_, status, _) = cluster.cli(1, &["cluster", "status", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["master_key_id"], v["master_key_id"], "{s}");

    // Node 3 was up: it fetches the new key from a peer at once.
    let t = master_key_is(&cluster, 3, &new).await;
    println!("node 3 (up) had the rotated master key after {t:?}");
    // Node 2 missed it: back up, it fetches the new key from a peer.
    cluster.restart(2);
    let t = master_key_is(&cluster, 2, &new).await;
    println!("node 2 (down during the rotation) had it {t:?} after its restart");
    eventually("node 2 up again", || async {
        let (_, out, _) = cluster.cli(1, &["node", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        let up = v
            .as_array()
            .map(|a| a.iter().filter(|n| n["state"] == "up").count())
            .unwrap_or(0);
        if up == 3 {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;

    // Every node opens old and new secrets with the new keys.
    let mut req = deploy("n", "app", &image, 3);
    req.secrets = HashMap::from([("OWN".into(), "sealed-after".into())]);
    c.clone().deploy_container(req).await.unwrap();
    let insts = ready(&c, "n", "app", 3).await;
    let mut nodes: Vec<u64> = insts.iter().map(|i| i.node).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec![1, 2, 3], "one instance per zone");
    for i in &insts {
        let env = http_get(&i, "/cgi-bin/env");
        assert!(
            env.lines().any(|l| l == "SHARED=sealed-before"),
            "node {}: {env}",
            i.node
        );
        assert!(
            env.lines().any(|l| l == "OWN=sealed-after"),
            "node {}: {env}",
            i.node
        );
    }
    // The re-sealed signing key still signs.
    let (code, _, err) = cluster.cli(3, &["token", "create", "--namespace", "n"]);
    assert_eq!(code, 0, "{err}");
    cluster.assert_no_panics();
}

/// `--instance-network host` (development): instances share the node's
/// network and listen on ports of the node's range, still in a user
/// namespace under the seccomp filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_mode_listens_on_node_ports() {
    let image = push_test_image("rouse-test/hostnet", "1");
    let cluster = TestCluster::start_with_runtime(
        1,
        &[
            "--instance-network",
            "host",
            "--instance-ports",
            "33000-33099",
        ],
    )
    .await;
    let log = cluster.log_text(1);
    assert!(log.contains("for development only"), "a warning: {log}");
    let mut c = cluster.client(1).await;
    c.create_namespace("h", HashMap::new()).await.unwrap();
    let mut req = deploy("h", "web", &image, 1);
    req.memory_mb = Some(64);
    c.deploy_container(req).await.unwrap();
    let inst = ready(&c, "h", "web", 1).await.remove(0);
    assert_eq!(inst.ip, "", "no address of its own: {inst:?}");
    assert!((33000..=33099).contains(&inst.port), "{inst:?}");
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{}/", inst.port))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello from rouse"
    );
    let (_, status) = cluster.exec_in(
        &inst.id,
        "grep Seccomp: /proc/self/status; cat /proc/self/uid_map",
    );
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let map: Vec<&str> = status.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(map[0], "0", "{status}");
    assert_ne!(
        map[1], "0",
        "uid 0 inside is not root on the node: {status}"
    );
    cluster.assert_no_panics();
}

/// A pull tells its progress (layers and bytes written, all of them at
/// its end), against the real registry and containerd; an image already
/// here tells nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_reports_layers_and_bytes() {
    use rouse_node::runtime::image::{Images, Limits};
    let (sock, reg) = rouse_testkit::env::runtime_env();
    let image = push_test_image("rouse-test/progress", "1");
    let ns = format!("rouse-test-progress-{}", std::process::id());
    let ctr = rouse_node::runtime::ctr::Ctr::connect(std::path::Path::new(&sock), &ns)
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let images = Images::new(
        ctr,
        &[reg],
        Default::default(),
        tmp.path().to_path_buf(),
        Limits::default(),
    );
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let watcher = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            if let Some(p) = *rx.borrow_and_update() {
                log.lock().unwrap().push(p);
            }
        }
    });
    images.ensure_with(&image, Some(&tx)).await.unwrap();
    drop(tx);
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    println!(
        "{}",
        seen.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let last = *seen.last().expect("progress");
    assert!(last.layers >= 1 && last.bytes > 0, "{last:?}");
    assert_eq!(
        (last.layers_done, last.bytes_done),
        (last.layers, last.bytes)
    );
    assert!(last.to_string().contains(" MB"), "{last}");
    let (tx, rx) = tokio::sync::watch::channel(None);
    images.ensure_with(&image, Some(&tx)).await.unwrap();
    assert_eq!(*rx.borrow(), None, "a cached image pulled again");
    rouse_testkit::env::ctr_cleanup(&sock, &ns);
}
