//! Real rouse-node processes for a chaos run: node i listens on
//! 127.0.0.(10+i), advertises a fault proxy on the same address, and talks
//! to its peers from that address (so the proxies can tell nodes apart).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::proxy::{self, Net};

pub struct Node {
    pub id: u64,
    pub ip: IpAddr,
    /// The real listener (clients connect here, never through a proxy).
    pub api: SocketAddr,
    /// The proxy in front of it (what peers use).
    pub advertise: SocketAddr,
    /// Its routing mesh.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    pub removed: bool,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub nodes: BTreeMap<u64, Node>,
    pub net: Arc<Net>,
    pub extra: Vec<String>,
    /// containerd socket, registry and containerd namespace, for a run with
    /// a mesh workload.
    pub runtime: Option<(String, String, String)>,
}

fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(StdListener::bind((ip, 0))?.local_addr()?.port())
}

impl Cluster {
    pub fn new(dir: &Path, bin: PathBuf, extra: Vec<String>) -> Self {
        Cluster {
            dir: dir.to_path_buf(),
            bin,
            nodes: BTreeMap::new(),
            net: Net::new(),
            extra,
            runtime: None,
        }
    }

    /// Adds node `id` (bootstrapping when `join` is None) with its proxy.
    pub async fn add(&mut self, id: u64, join: Option<u64>) -> anyhow::Result<()> {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(10 + id)?));
        let api = SocketAddr::new(ip, free_port(ip)?);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let advertise = listener.local_addr()?;
        self.net.register(ip, id);
        tokio::spawn(proxy::run(self.net.clone(), listener, api, id));
        let http = SocketAddr::new(ip, free_port(ip)?);
        let node = Node {
            id,
            ip,
            api,
            advertise,
            http,
            data_dir: self.dir.join(format!("node{id}")),
            log: self.dir.join(format!("node{id}.log")),
            child: None,
            paused: false,
            removed: false,
        };
        self.nodes.insert(id, node);
        let join = match join {
            Some(j) => Some((
                self.nodes[&j].advertise.to_string(),
                self.join_token(j).await?,
            )),
            None => None,
        };
        self.spawn(id, join)?;
        Ok(())
    }

    /// A one-time join token minted through node `via` (retried while the
    /// cluster is busy with faults, for up to 60 s).
    async fn join_token(&self, via: u64) -> anyhow::Result<String> {
        let url = self.endpoint(via);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let res = async {
                let mut c = crate::connect(&url).await?;
                c.create_join_token(0).await
            }
            .await;
            match res {
                Ok(t) => return Ok(t.token),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("no join token from node {via} within 60 s: {e}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }

    fn spawn(&mut self, id: u64, join: Option<(String, String)>) -> anyhow::Result<()> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        let http = n.http;
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            n.data_dir.display().to_string(),
            "--listen".into(),
            n.api.to_string(),
            "--advertise".into(),
            n.advertise.to_string(),
            "--http".into(),
            http.to_string(),
            "--heartbeat-ms".into(),
            "100".into(),
            "--snapshot-logs".into(),
            "200".into(),
            "--log".into(),
            "info,openraft=warn".into(),
            "--master-key-file".into(),
            self.dir.join("master.key").display().to_string(),
        ];
        match &self.runtime {
            Some((sock, reg, ns)) => {
                let lo = 24000 + id * 100;
                args.extend([
                    "--containerd".into(),
                    sock.clone(),
                    "--containerd-namespace".into(),
                    ns.clone(),
                    "--insecure-registry".into(),
                    reg.clone(),
                    "--instance-ports".into(),
                    format!("{lo}-{}", lo + 99),
                    "--stop-grace".into(),
                    "1s".into(),
                ]);
            }
            None => args.extend([
                "--containerd".into(),
                self.dir.join("no-containerd.sock").display().to_string(),
            ]),
        }
        args.extend(self.extra.iter().cloned());
        if !n.data_dir.exists() {
            match join {
                None => args.push("--bootstrap".into()),
                Some((addr, token)) => {
                    args.push("--join".into());
                    args.push(addr);
                    args.push("--join-token".into());
                    args.push(token);
                }
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        let child = Command::new(self.bin.join("rouse-node"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.paused {
                signal(&n.child, "-CONT");
                n.paused = false;
            }
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill(id);
        self.spawn(id, None)
    }

    pub fn pause(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.child.is_some() && !n.paused {
                signal(&n.child, "-STOP");
                n.paused = true;
            }
        }
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.paused {
                signal(&n.child, "-CONT");
                n.paused = false;
            }
        }
    }

    /// Live (member, running) node ids.
    pub fn members(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| !n.removed)
            .map(|n| n.id)
            .collect()
    }

    /// The admin key node 1 (the bootstrap node) wrote.
    pub fn admin_token(&self) -> Option<String> {
        let p = self.nodes.get(&1)?.data_dir.join("admin-token");
        std::fs::read_to_string(p)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    pub fn endpoint(&self, id: u64) -> String {
        format!("http://{}", self.nodes[&id].api)
    }

    /// Lines of every node's log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.values() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains("panicked")) {
                out.push(format!("node {}: {l}", n.id));
            }
        }
        out
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn signal(child: &Option<Child>, sig: &str) {
    if let Some(c) = child {
        let _ = Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
