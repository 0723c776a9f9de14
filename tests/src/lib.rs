//! End-to-end test clusters: the test kit's cluster of real `rouse-node`
//! processes, with what the end-to-end tests add (a containerd namespace
//! and instance subnets of their own, the CLI, cleanup of instances), and
//! [`netcheck`]: what the isolation tests read of the node's network.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//!
//! Binaries come from the same target dir as the test (build them first
//! with `cargo build --bins`). Wait with [`eventually`], never a sleep.

pub mod netcheck;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use rouse_client::{pb, Client};
use rouse_testkit::cluster::{Cluster, Template};
pub use rouse_testkit::env::{registry_log_count, runtime_env, tar_test_image};
pub use rouse_testkit::{eventually, eventually_within, NodeProcess, PATIENCE};

/// Directory holding the workspace's binaries (checked to hold the node and
/// the CLI).
pub fn bin_dir() -> PathBuf {
    rouse_testkit::env::binary("rouse-node");
    rouse_testkit::env::binary("rouse");
    rouse_testkit::env::bin_dir()
}

/// Builds the busybox test image and pushes it as `repo:tag` to the test
/// registry; returns the reference.
pub fn push_test_image(repo: &str, tag: &str) -> String {
    rouse_testkit::env::push_image(repo, tag, None)
}

/// Builds an image that runs `binary` (with its libraries) as /app and
/// pushes it as `repo:tag`; returns the reference.
pub fn push_binary_image(binary: &std::path::Path, repo: &str, tag: &str) -> String {
    rouse_testkit::env::push_image(repo, tag, Some(binary))
}

/// Runs `ctr` against the test containerd in `namespace`; returns stdout.
pub fn ctr(namespace: &str, args: &[&str]) -> String {
    let (sock, _) = runtime_env();
    rouse_testkit::env::ctr(&sock, namespace, args)
}

/// What a test reads of a node: its addresses and files.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: u64,
    /// API address (HOST:PORT).
    pub listen: String,
    /// Mesh address (HOST:PORT).
    pub http: String,
    /// The mesh's hop listener, for other nodes (HOST:PORT).
    pub hop: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl NodeView {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of real `rouse-node` processes on loopback.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub inner: Cluster,
    /// containerd namespace of this cluster's instances, when it has a runtime.
    pub ctr_namespace: Option<String>,
    /// Address nodes bind their listeners on (default loopback).
    pub bind: Option<IpAddr>,
}

static CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl TestCluster {
    /// An empty cluster; `common` flags go to every node.
    pub fn new(common: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Each node keeps its master key in <data-dir>/master.key: node 1
        // creates it, joining nodes receive it with their certificate.
        let template = Template::new(bin_dir().join("rouse-node"), common);
        let inner = Cluster::new(dir.path(), template);
        TestCluster {
            dir,
            inner,
            ctr_namespace: None,
            bind: None,
        }
    }

    /// Like [`Self::start`], with every node on the test containerd (in a
    /// containerd namespace of this cluster's own) and the test registry.
    pub async fn start_with_runtime(n: u64, common: &[&str]) -> Self {
        Self::start_with_runtime_on(None, n, common).await
    }

    /// Like [`Self::start_with_runtime`], node `i + 1` in zone and region
    /// `places[i]`.
    pub async fn start_with_runtime_in(places: &[(&str, &str)], common: &[&str]) -> Self {
        let mut c = Self::with_runtime(None, common);
        for (i, (zone, region)) in places.iter().enumerate() {
            let id = i as u64 + 1;
            c.add_node(
                id,
                (id > 1).then_some(1),
                &["--zone", zone, "--region", region],
            )
            .await;
        }
        c.wait_voters(places.len()).await;
        c
    }

    /// Like [`Self::start_with_runtime`], with nodes listening on `bind`
    /// (e.g. every address, to show what instances cannot reach).
    pub async fn start_with_runtime_on(bind: Option<IpAddr>, n: u64, common: &[&str]) -> Self {
        let mut c = Self::with_runtime(bind, common);
        c.start_nodes(n).await;
        c
    }

    /// A cluster on the test containerd and registry, no node started yet.
    fn with_runtime(bind: Option<IpAddr>, common: &[&str]) -> Self {
        let (sock, reg) = runtime_env();
        let n_cluster = CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("rouse-test-{:08x}-{n_cluster}", std::process::id());
        let mut flags: Vec<String> = vec![
            "--containerd".into(),
            sock,
            "--containerd-namespace".into(),
            ns.clone(),
            "--insecure-registry".into(),
            reg,
            "--stop-grace".into(),
            "2s".into(),
        ];
        flags.extend(common.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut c = TestCluster::new(&refs);
        c.ctr_namespace = Some(ns);
        // Isolated instance networks unless the test asks for the host's.
        c.inner.template.isolated_instances = !common.contains(&"--instance-network");
        c.bind = bind;
        c
    }

    /// Starts `n` nodes: node 1 bootstraps, the others join through it,
    /// and waits until all are voters.
    pub async fn start(n: u64, common: &[&str]) -> Self {
        let mut c = TestCluster::new(common);
        c.start_nodes(n).await;
        c
    }

    async fn start_nodes(&mut self, n: u64) {
        self.add_node(1, None, &["--zone", "z1"]).await;
        for id in 2..=n {
            self.add_node(id, Some(1), &["--zone", &format!("z{id}")])
                .await;
        }
        self.wait_voters(n as usize).await;
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.inner.template.bin.with_file_name(name)
    }

    /// Starts node `id`, bootstrapping when `join` is `None`.
    pub async fn add_node(&mut self, id: u64, join: Option<u64>, extra: &[&str]) {
        let opts = rouse_testkit::cluster::NodeOptions {
            ip: self.bind,
            advertise: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        self.inner
            .prepare(id, opts)
            .unwrap_or_else(|e| panic!("binding node {id}'s listeners: {e}"));
        self.inner
            .start(id, join)
            .await
            .unwrap_or_else(|e| panic!("starting node {id}: {e:#}"));
    }

    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.inner.nodes[&id]
    }

    /// Node `id`'s addresses and files.
    pub fn view(&self, id: u64) -> NodeView {
        let n = self.node(id);
        NodeView {
            id,
            listen: n.api.addr().to_string(),
            http: n.http.addr().to_string(),
            hop: n.hop.addr().to_string(),
            data_dir: n.spec.data_dir.clone(),
            log: n.spec.log.clone(),
        }
    }

    /// Every node's view.
    pub fn views(&self) -> Vec<NodeView> {
        self.node_ids()
            .into_iter()
            .map(|id| self.view(id))
            .collect()
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.inner.nodes.keys().copied().collect()
    }

    /// The API address of node `id` (HOST:PORT).
    pub fn listen(&self, id: u64) -> String {
        self.node(id).api.addr().to_string()
    }

    /// The mesh address of node `id` (HOST:PORT).
    pub fn http(&self, id: u64) -> String {
        self.node(id).http.addr().to_string()
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.node(id).endpoint()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).spec.data_dir.clone()
    }

    pub fn log_text(&self, id: u64) -> String {
        self.node(id).log_text()
    }

    /// `ctr` in this cluster's containerd namespace.
    pub fn ctr(&self, args: &[&str]) -> String {
        ctr(
            self.ctr_namespace
                .as_deref()
                .expect("a cluster with a runtime"),
            args,
        )
    }

    /// Ids of tasks in this cluster's containerd namespace, with pid and status.
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        let (sock, _) = runtime_env();
        rouse_testkit::env::tasks(
            &sock,
            self.ctr_namespace
                .as_deref()
                .expect("a cluster with a runtime"),
        )
    }

    /// Runs `script` with `sh -c` inside instance `instance`: a process
    /// that joins its namespaces with its user, capabilities and seccomp
    /// filter (`ctr tasks exec`). Returns (exit code, stdout and stderr).
    pub fn exec_in(&self, instance: &str, script: &str) -> (i32, String) {
        static EXECS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sock, _) = runtime_env();
        let ns = self
            .ctr_namespace
            .as_deref()
            .expect("a cluster with a runtime");
        let out = Command::new("ctr")
            .args(["--address", &sock, "-n", ns, "tasks", "exec", "--exec-id"])
            .arg(format!("t{}-{n}", std::process::id()))
            .args([instance, "/bin/sh", "-c", script])
            .output()
            .expect("run ctr tasks exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Node `id`'s instance network, as its flags set it up.
    pub fn instance_net(&self, id: u64) -> netcheck::InstanceNet {
        let args = &self.node(id).spec.args;
        let subnet = args
            .iter()
            .position(|a| a == "--instance-subnet")
            .and_then(|i| args.get(i + 1))
            .expect("a node with an isolated instance network");
        netcheck::InstanceNet::new(subnet, &self.data_dir(id))
    }

    /// A fresh one-time join token, minted through node `via` with the CLI.
    pub fn join_token(&self, via: u64) -> String {
        rouse_testkit::wait::eventually_blocking(
            std::time::Duration::from_secs(30),
            &format!("a join token from node {via}"),
            || {
                let (code, out, err) = self.cli(via, &["cluster", "join-token", "-o", "json"]);
                if code != 0 {
                    return Err(err);
                }
                let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
                v["token"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "no token in the answer".to_string())
            },
        )
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        self.inner.kill(id);
    }

    /// SIGSTOPs node `id`: its sockets stay open and nothing answers, which
    /// to the other nodes is a node behind a dropped link.
    pub fn pause(&mut self, id: u64) {
        if let Some(n) = self.inner.nodes.get_mut(&id) {
            n.pause();
        }
    }

    /// SIGCONTs node `id`.
    pub fn resume(&mut self, id: u64) {
        if let Some(n) = self.inner.nodes.get_mut(&id) {
            n.resume();
        }
    }

    /// Restarts node `id` from its data dir, with no bootstrap or join flag.
    pub fn restart(&mut self, id: u64) {
        self.inner
            .restart(id)
            .unwrap_or_else(|e| panic!("restarting node {id}: {e}"));
    }

    /// The admin API key the bootstrap node (node 1) wrote.
    pub fn admin_token(&self) -> String {
        let dir = self.data_dir(1);
        rouse_testkit::wait::eventually_blocking(PATIENCE, "the admin key", || {
            rouse_testkit::cluster::admin_token_in(&dir).ok_or("not written yet")
        })
    }

    /// An admin client of node `id`.
    pub async fn client(&self, id: u64) -> Client {
        self.inner.client(id).await
    }

    /// The leader's id, as seen by the first running node that knows one.
    pub async fn leader(&self) -> u64 {
        self.inner.leader().await
    }

    /// Waits until `n` members are healthy, registered voters and a leader is known.
    pub async fn wait_voters(&self, n: usize) {
        self.inner.wait_voters(n).await;
    }

    /// Runs the `rouse` CLI against node `id`; returns (exit code, stdout, stderr).
    pub fn cli(&self, id: u64, args: &[&str]) -> (i32, String, String) {
        self.cli_as(id, &self.admin_token(), args)
    }

    /// Runs the `rouse` CLI with the given API key.
    pub fn cli_as(&self, id: u64, token: &str, args: &[&str]) -> (i32, String, String) {
        let endpoint = self.endpoint(id);
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        self.rouse(token, &all)
    }

    /// Runs the `rouse` CLI with `args` as given (no endpoint added).
    pub fn rouse(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(self.bin("rouse"))
            .env("ROUSE_TOKEN", token)
            .args(args)
            .output()
            .expect("run rouse");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts `rouse-node` as a stranger (id `id`, in a directory of its own
    /// named `name`) with `args` after its addresses; it is not one of the
    /// cluster's nodes.
    pub fn stranger(&self, name: &str, id: u64, args: &[&str]) -> NodeProcess {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("stranger dir");
        let spec = rouse_testkit::NodeSpec {
            id,
            bin: self.bin("rouse-node"),
            data_dir: dir.join("data"),
            log: dir.join("log"),
            advertise: None,
            args: vec!["--instance-network".into(), "host".into()],
            env: self.inner.template.env.clone(),
        };
        let mut p = NodeProcess::new(spec, std::net::IpAddr::from([127, 0, 0, 1]))
            .expect("stranger listeners");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        p.start(&args).expect("start the stranger");
        p
    }

    /// Waits until every node has applied the same log index to the same
    /// state digest.
    pub async fn wait_converged(&self) {
        eventually("digests converge", || async {
            let mut digests = Vec::new();
            for id in self.node_ids() {
                let mut c = self.client(id).await;
                let i = c.node_info().await.map_err(|e| e.to_string())?;
                digests.push((i.last_applied_index, i.state_digest));
            }
            if digests.iter().all(|d| d == &digests[0]) {
                Ok(())
            } else {
                Err(format!("{digests:?}"))
            }
        })
        .await;
    }

    /// Fails if any node's log shows a panic.
    pub fn assert_no_panics(&self) {
        let panics = self.inner.panics();
        assert!(panics.is_empty(), "nodes panicked: {panics:#?}");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.inner.stop_all();
        // Instances outlive their node process: remove what the test left.
        if let (Some(ns), Some((sock, _))) = (
            self.ctr_namespace.clone(),
            rouse_testkit::env::runtime_env_opt(),
        ) {
            rouse_testkit::env::ctr_cleanup(&sock, &ns);
        }
        self.inner.remove_instance_networks();
        if std::thread::panicking() {
            // Keep the logs of a failed test for whoever reads the output.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let kept = dir.keep();
            eprintln!("test cluster logs kept in {}", kept.display());
        }
    }
}

/// A deploy request for `ns/name` running `image` with `min` instances.
pub fn deploy(ns: &str, name: &str, image: &str, min: u32) -> pb::DeployContainerRequest {
    pb::DeployContainerRequest {
        namespace: ns.into(),
        name: name.into(),
        image: Some(image.into()),
        min_scale: Some(min),
        ..Default::default()
    }
}

/// The status of a GET of `/` through the mesh at `mesh` with `Host:
/// host` (0 when no answer came within `secs`).
pub fn http_status(mesh: &str, host: &str, secs: u32) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            &secs.to_string(),
        ])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{mesh}/"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

/// Waits until `ns/name` has `n` ready instances; returns them.
pub async fn ready(c: &Client, ns: &str, name: &str, n: usize) -> Vec<pb::Instance> {
    eventually(&format!("{n} ready instance(s) of {ns}/{name}"), || {
        let mut c = c.clone();
        async move {
            let ct = c
                .get_container(ns, name, true)
                .await
                .map_err(|e| e.to_string())?;
            // Ready instances of the container's current generation, once
            // they are all there is (a rollout's old ones have left).
            let r: Vec<pb::Instance> = ct
                .instances
                .iter()
                .filter(|i| i.state == "ready" && i.generation == ct.generation)
                .cloned()
                .collect();
            if r.len() == n && ct.instances.len() == n {
                Ok(r)
            } else {
                Err(format!("{:?}", ct.instances))
            }
        }
    })
    .await
}
