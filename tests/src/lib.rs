//! Helpers for end-to-end tests on real `rouse-node` processes.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//!
//! Each test gets its own temp dir and free loopback ports. Binaries come
//! from the same target dir as the test (build them first with
//! `cargo build --bins`). Use [`eventually`] rather than sleeps.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rouse_client::Client;

/// How long [`eventually`] keeps trying.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Retries `f` until it returns `Ok`, or panics after [`PATIENCE`] with the
/// last error.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > PATIENCE => {
                panic!("{what}: still failing after {PATIENCE:?}: {e:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Directory holding the workspace's binaries (next to the test binary).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["rouse-node", "rouse"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first (cargo build --bins)",
            dir.join(b).display()
        );
    }
    dir
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768+), so that no outgoing connection takes it while a node that
/// owns it restarts.
pub fn free_port() -> u16 {
    const LO: u16 = 30_000;
    const SPAN: u16 = 2_700;
    let seed = u16::try_from(std::process::id() % u32::from(SPAN)).unwrap_or(0);
    for _ in 0..SPAN {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = LO + (seed.wrapping_add(n)) % SPAN;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

pub struct Node {
    pub id: u64,
    pub listen: String,
    pub http: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A cluster of real `rouse-node` processes on loopback.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    bin: PathBuf,
    common: Vec<String>,
    /// containerd namespace of this cluster's instances, when it has a runtime.
    pub ctr_namespace: Option<String>,
    /// First host port of this cluster's instance port block (40 per node).
    ports_base: Option<u16>,
    /// Whether the bootstrap node's `<data-dir>/join-token` was handed out.
    file_token_used: bool,
}

/// The private containerd socket and registry that `deploy/test-env.sh`
/// starts for the tests.
pub fn runtime_env() -> (String, String) {
    let sock = std::env::var("ROUSE_TEST_CONTAINERD").unwrap_or_default();
    let reg = std::env::var("ROUSE_TEST_REGISTRY").unwrap_or_default();
    assert!(
        !sock.is_empty() && !reg.is_empty(),
        "ROUSE_TEST_CONTAINERD and ROUSE_TEST_REGISTRY are unset: run the tests with deploy/test.sh, \
         which starts a private containerd and registry"
    );
    (sock, reg)
}

static PORT_BLOCK: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Builds the busybox test image and pushes it as `repo:tag` to the test
/// registry; returns the reference.
pub fn push_test_image(repo: &str, tag: &str) -> String {
    let (_, reg) = runtime_env();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let st = Command::new("bash")
        .arg(script)
        .args(["push", &reg, &format!("{repo}:{tag}")])
        .status()
        .expect("build image");
    assert!(st.success(), "building the test image failed");
    format!("{reg}/{repo}:{tag}")
}

/// Builds an image that runs `binary` (with its libraries) as /app and
/// pushes it as `repo:tag`; returns the reference.
pub fn push_binary_image(binary: &Path, repo: &str, tag: &str) -> String {
    let (_, reg) = runtime_env();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let st = Command::new("bash")
        .arg(script)
        .args(["push", &reg, &format!("{repo}:{tag}")])
        .env("APP_BINARY", binary)
        .status()
        .expect("build image");
    assert!(st.success(), "building the binary image failed");
    format!("{reg}/{repo}:{tag}")
}

/// Writes the busybox test image as an OCI-layout tarball named `name`.
pub fn tar_test_image(path: &Path, name: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/images/build-hello.sh"
    );
    let st = Command::new("bash")
        .arg(script)
        .args(["tar", &path.display().to_string(), name])
        .status()
        .expect("build image");
    assert!(st.success(), "building the test image tarball failed");
}

/// Runs `ctr` against the test containerd in `namespace`; returns stdout.
pub fn ctr(namespace: &str, args: &[&str]) -> String {
    let (sock, _) = runtime_env();
    let out = Command::new("ctr")
        .args(["--address", &sock, "-n", namespace])
        .args(args)
        .output()
        .expect("run ctr");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry's access-log lines that mention `needle`.
pub fn registry_log_count(needle: &str) -> usize {
    let base = std::env::var("ROUSE_TEST_BASE").unwrap_or_else(|_| "/tmp/rouse-test-env".into());
    let log = std::fs::read_to_string(format!("{base}/registry/log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("\"GET ") && l.contains(needle))
        .count()
}

impl TestCluster {
    /// An empty cluster; `common` flags go to every node.
    pub fn new(common: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Each node keeps its master key in <data-dir>/master.key: node 1
        // creates it, joining nodes receive it with their certificate.
        let common: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        TestCluster {
            dir,
            nodes: BTreeMap::new(),
            bin: bin_dir(),
            common,
            ctr_namespace: None,
            ports_base: None,
            file_token_used: false,
        }
    }

    /// Like [`Self::start`], with every node on the test containerd (in a
    /// containerd namespace of this cluster's own) and the test registry.
    pub async fn start_with_runtime(n: u64, common: &[&str]) -> Self {
        let (sock, reg) = runtime_env();
        let ns = format!(
            "rouse-test-{:08x}",
            std::process::id() ^ u32::from(free_port()) << 8
        );
        let block = PORT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40;
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
        c.add_node(1, None, &["--zone", "z1"]);
        for id in 2..=n {
            c.add_node(id, Some(1), &["--zone", &format!("z{id}")]);
        }
        c.wait_voters(n as usize).await;
        c
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
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.parse().ok()?,
                    f.next()?.to_string(),
                ))
            })
            .collect()
    }

    /// Starts `n` nodes: node 1 bootstraps, the others join through it,
    /// and waits until all are voters.
    pub async fn start(n: u64, common: &[&str]) -> Self {
        let mut c = TestCluster::new(common);
        c.add_node(1, None, &["--zone", "z1"]);
        for id in 2..=n {
            c.add_node(id, Some(1), &["--zone", &format!("z{id}")]);
        }
        c.wait_voters(n as usize).await;
        c
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Starts node `id`, bootstrapping when `join` is `None`.
    pub fn add_node(&mut self, id: u64, join: Option<u64>, extra: &[&str]) {
        let listen = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let data_dir = self.dir.path().join(format!("node{id}"));
        let log = self.dir.path().join(format!("node{id}.log"));
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--http".into(),
            http.clone(),
        ];
        args.extend(self.common.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(base) = self.ports_base {
            // Nodes share this host: give each its own instance ports.
            let lo = base + u16::try_from(id % 5).unwrap_or(0) * 40;
            args.push("--instance-ports".into());
            args.push(format!("{lo}-{}", lo + 39));
        }
        let mut first = args.clone();
        match join {
            None => first.push("--bootstrap".into()),
            Some(j) => {
                first.push("--join".into());
                first.push(self.nodes[&j].listen.clone());
                if !self.common.iter().any(|f| f == "--insecure") {
                    first.push("--join-token".into());
                    first.push(self.next_join_token(j));
                }
            }
        }
        let mut node = Node {
            id,
            listen,
            http,
            data_dir,
            log,
            args,
            child: None,
        };
        node.child = Some(spawn(&self.bin.join("rouse-node"), &first, &node.log));
        self.nodes.insert(id, node);
    }

    /// The bootstrap node's `<data-dir>/join-token` the first time (so it
    /// is exercised), then tokens minted through node `via`.
    fn next_join_token(&mut self, via: u64) -> String {
        if !self.file_token_used {
            let path = self.nodes[&1].data_dir.join("join-token");
            let start = Instant::now();
            loop {
                if let Ok(t) = std::fs::read_to_string(&path) {
                    if !t.trim().is_empty() {
                        self.file_token_used = true;
                        return t.trim().to_string();
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "node 1 wrote no {}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.join_token(via)
    }

    /// A fresh one-time join token, minted through node `via`.
    pub fn join_token(&self, via: u64) -> String {
        let start = Instant::now();
        loop {
            let (code, out, err) = self.cli(via, &["cluster", "join-token", "-o", "json"]);
            if code == 0 {
                let v: serde_json::Value = serde_json::from_str(&out).expect("join-token json");
                return v["token"].as_str().expect("token").to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no join token from node {via} within 30 s: {err}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts node `id` from its data dir, with no bootstrap or join flag.
    pub fn restart(&mut self, id: u64) {
        self.kill(id);
        let bin = self.bin.join("rouse-node");
        let n = self.nodes.get_mut(&id).expect("known node");
        n.child = Some(spawn(&bin, &n.args, &n.log));
    }

    /// The admin API key the bootstrap node (node 1) wrote.
    pub fn admin_token(&self) -> String {
        let path = self.nodes[&1].data_dir.join("admin-token");
        let start = Instant::now();
        loop {
            if let Ok(t) = std::fs::read_to_string(&path) {
                if !t.trim().is_empty() {
                    return t.trim().to_string();
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An admin client of node `id`.
    pub async fn client(&self, id: u64) -> Client {
        let ep = self.nodes[&id].endpoint();
        let token = self.admin_token();
        let c = eventually(&format!("connect to node {id}"), || {
            Client::connect(&ep, Some(&token))
        })
        .await;
        // The admin key is usable once its registration is applied here.
        eventually(&format!("admin key accepted by node {id}"), || {
            let mut c = c.clone();
            async move { c.list_namespaces(true).await.map(|_| ()) }
        })
        .await;
        c
    }

    /// The leader's id, as seen by the first running node that knows one.
    pub async fn leader(&self) -> u64 {
        let token = self.admin_token();
        eventually("find the leader", || async {
            for n in self.nodes.values().filter(|n| n.is_running()) {
                if let Ok(mut c) = Client::connect(&n.endpoint(), Some(&token)).await {
                    if let Ok(i) = c.node_info().await {
                        if i.leader_id != 0
                            && self.nodes.get(&i.leader_id).is_some_and(|l| l.is_running())
                        {
                            return Ok(i.leader_id);
                        }
                    }
                }
            }
            Err("no running node knows a live leader")
        })
        .await
    }

    /// Waits until `n` members are healthy, registered voters and a leader is known.
    pub async fn wait_voters(&self, n: usize) {
        let first = *self.nodes.keys().next().expect("a node");
        let mut c = self.client(first).await;
        eventually(&format!("{n} healthy voters"), || {
            let mut c = c.clone();
            async move {
                let s = c.cluster_status().await.map_err(|e| e.to_string())?;
                // Registered too: a node's record (zone…) follows its
                // membership, after it has its certificate.
                let voters = s
                    .members
                    .iter()
                    .filter(|m| m.role == "voter" && m.healthy && !m.zone.is_empty())
                    .count();
                if voters == n && s.leader_id != 0 {
                    Ok(())
                } else {
                    Err(format!("{voters} healthy voters, leader {}", s.leader_id))
                }
            }
        })
        .await;
        let _ = c.node_info().await;
    }

    /// Runs the `rouse` CLI against node `id`; returns (exit code, stdout, stderr).
    pub fn cli(&self, id: u64, args: &[&str]) -> (i32, String, String) {
        self.cli_as(id, &self.admin_token(), args)
    }

    /// Runs the `rouse` CLI with the given API key.
    pub fn cli_as(&self, id: u64, token: &str, args: &[&str]) -> (i32, String, String) {
        let endpoint = self.nodes[&id].endpoint();
        let mut all = vec!["--endpoint", endpoint.as_str()];
        all.extend_from_slice(args);
        self.rouse(token, &all)
    }

    /// Runs the `rouse` CLI with `args` as given (no endpoint added).
    pub fn rouse(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(self.bin.join("rouse"))
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

    /// Fails if any node's log shows a panic.
    pub fn assert_no_panics(&self) {
        for n in self.nodes.values() {
            let log = n.log_text();
            assert!(
                !log.contains("panicked"),
                "node {} panicked; log {}:\n{log}",
                n.id,
                n.log.display()
            );
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        // Instances outlive their node process: remove what the test left.
        if let Some(ns) = self.ctr_namespace.clone() {
            for (id, _, _) in self.tasks() {
                ctr(&ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
            }
            std::thread::sleep(Duration::from_millis(300));
            for (id, _, _) in self.tasks() {
                ctr(&ns, &["tasks", "rm", "-f", &id]);
            }
            for line in ctr(&ns, &["containers", "ls", "-q"]).lines() {
                ctr(&ns, &["containers", "rm", line.trim()]);
            }
        }
        if std::thread::panicking() {
            // Keep the logs of a failed test for whoever reads the output.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let kept = dir.keep();
            eprintln!("test cluster logs kept in {}", kept.display());
        }
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    Command::new(bin)
        .args(args)
        .env("ROUSE_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}
