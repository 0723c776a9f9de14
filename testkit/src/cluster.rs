//! A cluster of node processes: bootstrap, joins with one-time tokens, the
//! admin key, clients, and waiting until members are ready.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rouse_client::Client;

use crate::process::{NodeProcess, NodeSpec};
use crate::wait::{eventually, eventually_within};

/// How nodes of a cluster are started.
#[derive(Debug, Clone)]
pub struct Template {
    /// The `rouse-node` binary.
    pub bin: PathBuf,
    /// Flags every node gets.
    pub common: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Peer traffic is plain: nodes join without a token.
    pub insecure: bool,
    /// Nodes network instances in namespaces of their own (each on a
    /// claimed subnet); otherwise `--instance-network host` (clusters that
    /// run no instances).
    pub isolated_instances: bool,
}

impl Template {
    pub fn new(bin: PathBuf, common: &[&str]) -> Self {
        let common: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        Template {
            insecure: common.iter().any(|f| f == "--insecure"),
            isolated_instances: false,
            bin,
            common,
            env: vec![("ROUSE_LOG".into(), "info,openraft=warn".into())],
        }
    }
}

/// A node's own settings, on top of the template.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Address its listeners bind (default 127.0.0.1).
    pub ip: Option<IpAddr>,
    /// Address peers use (default: its API listener).
    pub advertise: Option<String>,
    pub extra: Vec<String>,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub template: Template,
    pub nodes: BTreeMap<u64, NodeProcess>,
    /// The bootstrap node's `<data-dir>/join-token`, once handed out (the
    /// node removes the file when the token is spent).
    file_token: Option<String>,
}

/// The admin key the bootstrap node wrote under `data_dir`, once it has.
pub fn admin_token_in(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("admin-token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl Cluster {
    pub fn new(dir: &Path, template: Template) -> Self {
        Cluster {
            dir: dir.to_path_buf(),
            template,
            nodes: BTreeMap::new(),
            file_token: None,
        }
    }

    /// Binds node `id`'s listeners; starts nothing (see [`Self::start`]).
    pub fn prepare(&mut self, id: u64, opts: NodeOptions) -> std::io::Result<&mut NodeProcess> {
        let mut args = self.template.common.clone();
        if self.template.isolated_instances {
            args.push("--instance-subnet".into());
            args.push(crate::network::claim_subnet());
        } else if !args.iter().any(|a| a == "--instance-network") {
            args.push("--instance-network".into());
            args.push("host".into());
        }
        args.extend(opts.extra);
        let spec = NodeSpec {
            id,
            bin: self.template.bin.clone(),
            data_dir: self.dir.join(format!("node{id}")),
            log: self.dir.join(format!("node{id}.log")),
            advertise: opts.advertise,
            args,
            env: self.template.env.clone(),
        };
        let ip = opts.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mut node = NodeProcess::new(spec, ip)?;
        if ip.is_unspecified() && node.spec.advertise.is_none() {
            // Bound on every address: peers use loopback.
            node.spec.advertise = Some(format!("127.0.0.1:{}", node.api.addr().port()));
        }
        self.nodes.insert(id, node);
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| std::io::Error::other("just inserted"))
    }

    /// Starts a prepared node for the first time: it bootstraps when
    /// `join` is `None`, else it joins through node `join` with a fresh
    /// one-time token (the bootstrap node's file the first time).
    pub async fn start(&mut self, id: u64, join: Option<u64>) -> anyhow::Result<()> {
        let first: Vec<String> = match join {
            None => vec!["--bootstrap".into()],
            Some(j) => {
                let target = self.peer_address(j)?;
                let mut f = vec!["--join".to_string(), target];
                if !self.template.insecure {
                    f.push("--join-token".into());
                    f.push(self.next_join_token(j).await?);
                }
                f
            }
        };
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow::anyhow!("node {id} is not prepared"))?;
        n.start(&first)?;
        Ok(())
    }

    /// Prepares and starts node `id` with default options plus `extra`.
    pub async fn add(&mut self, id: u64, join: Option<u64>, extra: &[&str]) -> anyhow::Result<()> {
        self.prepare(
            id,
            NodeOptions {
                extra: extra.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )?;
        self.start(id, join).await
    }

    /// The address peers reach node `id` at.
    pub fn peer_address(&self, id: u64) -> anyhow::Result<String> {
        let n = self
            .nodes
            .get(&id)
            .ok_or_else(|| anyhow::anyhow!("no node {id}"))?;
        Ok(n.spec
            .advertise
            .clone()
            .unwrap_or_else(|| n.api.addr().to_string()))
    }

    pub fn endpoint(&self, id: u64) -> String {
        self.nodes
            .get(&id)
            .map(NodeProcess::endpoint)
            .unwrap_or_default()
    }

    /// The admin API key the bootstrap node wrote (waits for it).
    pub async fn admin_token(&self) -> String {
        let dir = self.dir.join("node1");
        eventually("the bootstrap node writes its admin key", || {
            let t = admin_token_in(&dir);
            async move { t.ok_or("no admin-token yet") }
        })
        .await
    }

    /// An admin client of node `id`, once it accepts the admin key.
    pub async fn client(&self, id: u64) -> Client {
        let ep = self.endpoint(id);
        let token = self.admin_token().await;
        eventually(&format!("admin client of node {id}"), || {
            let (ep, token) = (ep.clone(), token.clone());
            async move {
                let mut c = Client::connect(&ep, Some(&token)).await?;
                c.list_namespaces(true).await?;
                Ok::<_, rouse_client::Error>(c)
            }
        })
        .await
    }

    /// A one-time join token minted through node `via`.
    pub async fn join_token(&self, via: u64) -> anyhow::Result<String> {
        let ep = self.endpoint(via);
        let token = self.admin_token().await;
        Ok(eventually_within(
            Duration::from_secs(60),
            &format!("a join token from node {via}"),
            || {
                let (ep, token) = (ep.clone(), token.clone());
                async move {
                    let mut c = Client::connect(&ep, Some(&token)).await?;
                    Ok::<_, rouse_client::Error>(c.create_join_token(0).await?.token)
                }
            },
        )
        .await)
    }

    /// The bootstrap node's first join token, once a node joined with it
    /// (spent by then).
    pub fn first_join_token(&self) -> Option<&str> {
        self.file_token.as_deref()
    }

    /// The bootstrap node's `<data-dir>/join-token` the first time (so it
    /// is exercised), then tokens minted through node `via`.
    async fn next_join_token(&mut self, via: u64) -> anyhow::Result<String> {
        if self.file_token.is_none() {
            let path = self.dir.join("node1").join("join-token");
            let t = eventually("the bootstrap node writes its join token", || {
                let t = std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
                async move { t.ok_or("no join-token yet") }
            })
            .await;
            self.file_token = Some(t.clone());
            return Ok(t);
        }
        self.join_token(via).await
    }

    /// Waits until `n` members are healthy, registered voters and a leader
    /// is known.
    pub async fn wait_voters(&self, n: usize) {
        let first = self.nodes.keys().next().copied().unwrap_or(1);
        let c = self.client(first).await;
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
    }

    /// The leader's id, as seen by the first running node that knows one.
    pub async fn leader(&self) -> u64 {
        let token = self.admin_token().await;
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

    /// Every node's panics, prefixed with the node.
    pub fn panics(&self) -> Vec<String> {
        self.nodes
            .values()
            .flat_map(|n| {
                n.panics()
                    .into_iter()
                    .map(move |l| format!("node {}: {l}", n.spec.id))
            })
            .collect()
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.kill();
        }
    }

    pub fn restart(&mut self, id: u64) -> std::io::Result<()> {
        match self.nodes.get_mut(&id) {
            Some(n) => n.restart(),
            None => Err(std::io::Error::other(format!("no node {id}"))),
        }
    }

    pub fn stop_all(&mut self) {
        for n in self.nodes.values_mut() {
            n.kill();
        }
    }

    /// Removes every node's instance network (firewall rules, bridge,
    /// addresses): once the nodes and their instances are gone.
    pub fn remove_instance_networks(&self) {
        if !self.template.isolated_instances {
            return;
        }
        for n in self.nodes.values() {
            let _ = std::process::Command::new(&n.spec.bin)
                .args(n.args())
                .arg("--remove-instance-network")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
