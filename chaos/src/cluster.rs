//! Real rouse-node processes for a chaos run, on the test kit's harness:
//! node i listens on 127.0.0.(10+i), advertises a fault proxy on the same
//! address, and talks to its peers from that address (so the proxies can
//! tell nodes apart).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rouse_testkit::cluster::{Cluster as Kit, NodeOptions, Template};

use crate::proxy::{self, Net};

pub struct Cluster {
    pub dir: PathBuf,
    pub net: Arc<Net>,
    /// containerd socket, registry and containerd namespace, for a run with
    /// a mesh workload.
    runtime: Option<(String, String, String)>,
    kit: Kit,
    extra: Vec<String>,
    removed: BTreeSet<u64>,
}

impl Cluster {
    pub fn new(dir: &Path, bin: PathBuf, extra: Vec<String>) -> Self {
        let mut template = Template::new(bin.join("rouse-node"), &[]);
        template.env.clear();
        Cluster {
            dir: dir.to_path_buf(),
            net: Net::new(),
            runtime: None,
            kit: Kit::new(dir, template),
            extra,
            removed: BTreeSet::new(),
        }
    }

    /// The flags every node gets.
    fn flags(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
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
                args.extend([
                    "--containerd".into(),
                    sock.clone(),
                    "--containerd-namespace".into(),
                    ns.clone(),
                    "--insecure-registry".into(),
                    reg.clone(),
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
        args
    }

    /// Adds node `id` (bootstrapping when `join` is None) with its proxy.
    pub async fn add(&mut self, id: u64, join: Option<u64>) -> anyhow::Result<()> {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, u8::try_from(10 + id)?));
        let flags = self.flags();
        let node = self.kit.prepare(
            id,
            NodeOptions {
                ip: Some(ip),
                advertise: None,
                extra: flags,
            },
        )?;
        let api = node.api.addr();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        node.spec.advertise = Some(listener.local_addr()?.to_string());
        self.net.register(ip, id);
        tokio::spawn(proxy::run(self.net.clone(), listener, api, id));
        self.kit.start(id, join).await
    }

    pub fn kill(&mut self, id: u64) {
        self.kit.kill(id);
    }

    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        Ok(self.kit.restart(id)?)
    }

    pub fn pause(&mut self, id: u64) {
        if let Some(n) = self.kit.nodes.get_mut(&id) {
            n.pause();
        }
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(n) = self.kit.nodes.get_mut(&id) {
            n.resume();
        }
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.kit.nodes.get(&id).is_some_and(|n| n.is_running())
    }

    pub fn is_paused(&self, id: u64) -> bool {
        self.kit.nodes.get(&id).is_some_and(|n| n.is_paused())
    }

    /// Node `id` left the membership: no longer a member of the run.
    pub fn mark_removed(&mut self, id: u64) {
        self.removed.insert(id);
    }

    /// Member node ids (not removed).
    pub fn members(&self) -> Vec<u64> {
        self.kit
            .nodes
            .keys()
            .copied()
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    /// The admin key node 1 (the bootstrap node) wrote.
    pub fn admin_token(&self) -> Option<String> {
        rouse_testkit::cluster::admin_token_in(&self.dir.join("node1"))
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.kit.endpoint(id)
    }

    /// Node `id`'s mesh address.
    pub fn http(&self, id: u64) -> Option<SocketAddr> {
        self.kit.nodes.get(&id).map(|n| n.http.addr())
    }

    /// Every node's data dir, removed nodes' included.
    pub fn all_data_dirs(&self) -> Vec<PathBuf> {
        self.kit.nodes.keys().map(|id| self.data_dir(*id)).collect()
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// Node `id`'s log so far.
    pub fn log_text(&self, id: u64) -> String {
        self.kit
            .nodes
            .get(&id)
            .map(|n| n.log_text())
            .unwrap_or_default()
    }

    /// Lines of every node's log that report a panic.
    pub fn panics(&self) -> Vec<String> {
        self.kit.panics()
    }

    pub fn stop_all(&mut self) {
        self.kit.stop_all();
    }

    /// Nodes run instances on this containerd (socket, registry,
    /// containerd namespace), each node on an instance subnet of its own.
    pub fn set_runtime(&mut self, runtime: Option<(String, String, String)>) {
        self.kit.template.isolated_instances = runtime.is_some();
        self.runtime = runtime;
    }
}

impl Drop for Cluster {
    /// Nodes stop, then their instance networks go (bridges, firewall
    /// rules, addresses); the run removes the instances themselves.
    fn drop(&mut self) {
        self.kit.stop_all();
        self.kit.remove_instance_networks();
    }
}
