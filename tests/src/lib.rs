//! End-to-end test clusters: the test kit's cluster of real `rouse-node`
//! processes, with what the end-to-end tests add (a containerd namespace
//! and instance ports of their own, the CLI, cleanup of instances).
#![allow(clippy::expect_used, clippy::unwrap_used)]
//!
//! Binaries come from the same target dir as the test (build them first
//! with `cargo build --bins`). Wait with [`eventually`], never a sleep.

use std::path::PathBuf;
use std::process::Command;

use rouse_client::Client;
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
    /// First host port of this cluster's instance port block (40 per node).
    ports_base: Option<u16>,
}

static PORT_BLOCK: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

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
            ports_base: None,
        }
    }

    /// Like [`Self::start`], with every node on the test containerd (in a
    /// containerd namespace of this cluster's own) and the test registry.
    pub async fn start_with_runtime(n: u64, common: &[&str]) -> Self {
        let (sock, reg) = runtime_env();
        let block = PORT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40;
        let ns = format!("rouse-test-{:08x}-{block}", std::process::id());
        let lo = 21000 + block * 200;
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
        c.ports_base = Some(lo);
        c.start_nodes(n).await;
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
        let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(base) = self.ports_base {
            // Nodes share this host: give each its own instance ports.
            let lo = base + u16::try_from(id % 5).unwrap_or(0) * 40;
            flags.push("--instance-ports".into());
            flags.push(format!("{lo}-{}", lo + 39));
        }
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        self.inner
            .add(id, join, &refs)
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
            args: Vec::new(),
            env: self.inner.template.env.clone(),
        };
        let mut p = NodeProcess::new(spec, std::net::IpAddr::from([127, 0, 0, 1]))
            .expect("stranger listeners");
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        p.start(&args).expect("start the stranger");
        p
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
        if std::thread::panicking() {
            // Keep the logs of a failed test for whoever reads the output.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let kept = dir.keep();
            eprintln!("test cluster logs kept in {}", kept.display());
        }
    }
}
