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
            Err(e) if start.elapsed() > PATIENCE => panic!("{what}: still failing after {PATIENCE:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Directory holding the workspace's binaries (next to the test binary).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_path_buf();
    for b in ["rouse-node", "rouse"] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first (cargo build --bins)",
            dir.join(b).display()
        );
    }
    dir
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
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
}

impl TestCluster {
    /// An empty cluster; `common` flags go to every node.
    pub fn new(common: &[&str]) -> Self {
        TestCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: BTreeMap::new(),
            bin: bin_dir(),
            common: common.iter().map(|s| s.to_string()).collect(),
        }
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
        let mut first = args.clone();
        match join {
            None => first.push("--bootstrap".into()),
            Some(j) => {
                first.push("--join".into());
                first.push(self.nodes[&j].listen.clone());
            }
        }
        let mut node = Node { id, listen, http, data_dir, log, args, child: None };
        node.child = Some(spawn(&self.bin.join("rouse-node"), &first, &node.log));
        self.nodes.insert(id, node);
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

    pub async fn client(&self, id: u64) -> Client {
        let ep = self.nodes[&id].endpoint();
        eventually(&format!("connect to node {id}"), || Client::connect(&ep, None)).await
    }

    /// The leader's id, as seen by the first running node that knows one.
    pub async fn leader(&self) -> u64 {
        eventually("find the leader", || async {
            for n in self.nodes.values().filter(|n| n.is_running()) {
                if let Ok(mut c) = Client::connect(&n.endpoint(), None).await {
                    if let Ok(i) = c.node_info().await {
                        if i.leader_id != 0 && self.nodes.get(&i.leader_id).is_some_and(|l| l.is_running()) {
                            return Ok(i.leader_id);
                        }
                    }
                }
            }
            Err("no running node knows a live leader")
        })
        .await
    }

    /// Waits until the cluster reports `n` healthy voters.
    pub async fn wait_voters(&self, n: usize) {
        let first = *self.nodes.keys().next().expect("a node");
        let mut c = self.client(first).await;
        eventually(&format!("{n} healthy voters"), || {
            let mut c = c.clone();
            async move {
                let s = c.cluster_status().await.map_err(|e| e.to_string())?;
                let voters = s.members.iter().filter(|m| m.role == "voter" && m.healthy).count();
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
        let out = Command::new(self.bin.join("rouse"))
            .arg("--endpoint")
            .arg(self.nodes[&id].endpoint())
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
            assert!(!log.contains("panicked"), "node {} panicked; log {}:\n{log}", n.id, n.log.display());
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
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
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    Command::new(bin)
        .args(args)
        .env("ROUSE_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}
