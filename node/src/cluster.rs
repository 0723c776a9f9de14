//! The node's view of the cluster: replicated writes with forwarding to
//! the leader, linearizable reads, membership changes.
//!
//! ```text
//!  write(cmd) ── leader? ──yes──▶ raft.client_write ──▶ Response
//!                 │no
//!                 └──▶ peer.Forward(leader) ──▶ leader's raft.client_write
//!
//!  read_barrier ── leader? ──yes──▶ ensure_linearizable (quorum heartbeat)
//!                 │no
//!                 └──▶ peer.ReadIndex(leader) ──▶ wait until applied ≥ index
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use rouse_proto::peer::{JoinRequest, LeaveRequest, PingRequest, RaftMessage, ReadIndexRequest};
use tonic::Code;

use crate::config::NodeConfig;
use crate::raft::{decode, encode, PeerPool, Raft};
use crate::state::{Command, NodeId, NodeRecord, Proposal, Rejection, Response};
use crate::store::SmShared;

/// How long a call waits for a leader, a quorum or a forwarded answer.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Metadata key a peer sets when it refused a forwarded call because it is
/// not the leader (the call was not applied, so it is safe to retry).
pub const NOT_LEADER: &str = "x-rouse-not-leader";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader is known: the cluster is electing one or has lost its quorum")]
    NoLeader,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the leader (node {leader}) at {addr} could not be reached: {message}")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        message: String,
    },
    #[error("the leader answered: {0}")]
    Remote(tonic::Status),
    #[error("timed out after {0:?} waiting for the cluster")]
    Timeout(Duration),
    /// The write is committed, but this node is too far behind to show it.
    #[error("the change was committed at log index {0}, but this node has not applied it yet; read it again later")]
    CommittedNotApplied(u64),
    #[error("node {0} is not a member of the cluster")]
    UnknownMember(NodeId),
    #[error("{0}")]
    Precondition(String),
    #[error("raft: {0}")]
    Raft(String),
}

impl ClusterError {
    /// True for failures a caller may retry without risk of a double apply.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader
                | ClusterError::LeaderUnreachable { .. }
                | ClusterError::Timeout(_)
        )
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A member as `cluster status` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub record: Option<NodeRecord>,
    pub healthy: bool,
}

pub struct Cluster {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub pool: PeerPool,
    /// This node's peer TLS state (certificate, cluster CA).
    pub tls: crate::tls::Tls,
    pub config: NodeConfig,
    /// The node agent, once containerd is reachable.
    pub agent: std::sync::OnceLock<Arc<crate::runtime::agent::Agent>>,
    /// The routing mesh of this node.
    pub mesh: std::sync::OnceLock<Arc<crate::mesh::Mesh>>,
    /// Load reports and scaling decisions (acts only on the leader).
    pub autoscaler: Arc<crate::mesh::Autoscaler>,
    /// The master key (KEK) from `--master-key-file`, once read; replaced
    /// when the cluster rotates it.
    pub kek: std::sync::RwLock<Option<crate::secrets::Key>>,
    /// The cluster data key, with the wrapped form it was opened from.
    pub data_key: std::sync::RwLock<Option<(crate::secrets::Envelope, crate::secrets::Key)>>,
}

/// Makes "the leader at `addr` could not be reached" errors.
fn leader_unreachable(leader: NodeId, addr: &str) -> impl Fn(String) -> ClusterError + '_ {
    move |message| ClusterError::LeaderUnreachable {
        leader,
        addr: addr.to_string(),
        message,
    }
}

/// Whether a forwarded call failed before it reached the leader.
fn never_sent(status: &tonic::Status) -> bool {
    status.metadata().get(NOT_LEADER).is_some()
        || (status.code() == Code::Unavailable && status.message().contains("connect"))
}

impl Cluster {
    /// Waits until the applied index moves past `*seen` (updating it), or
    /// `max` passes. Loops that react to state changes use it.
    pub async fn applied_change(&self, seen: &mut u64, max: Duration) {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let applied = rx.borrow().last_applied.map_or(0, |l| l.index);
            if applied != *seen {
                *seen = applied;
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// The master key, read from `--master-key-file` on first use.
    pub fn kek(&self) -> Result<crate::secrets::Key, crate::secrets::SecretError> {
        if let Some(k) = self.kek.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(k.clone());
        }
        let k = crate::secrets::Key::load_or_create(&self.config.master_key_file, false)?;
        self.set_kek(k.clone());
        Ok(k)
    }

    /// Uses `k` as the master key from now on (after a rotation).
    pub fn set_kek(&self, k: crate::secrets::Key) {
        self.pool.set_secret(k.peer_credential());
        *self.kek.write().unwrap_or_else(|p| p.into_inner()) = Some(k);
    }

    /// Whether a peer call carries this cluster's credential.
    pub fn peer_authorized(&self, presented: Option<&str>) -> bool {
        let Ok(k) = self.kek() else { return false };
        let want = k.peer_credential();
        presented.is_some_and(|p| crate::secrets::constant_time_eq(p.as_bytes(), want.as_bytes()))
    }

    /// The cluster data key (unwrapped with this node's master key).
    pub fn data_key(&self) -> Result<crate::secrets::Key, ClusterError> {
        let wrapped = self.sm.read().data.data_key.clone().ok_or_else(|| {
            ClusterError::Precondition(
                "the cluster data key is not set up yet; retry in a moment".into(),
            )
        })?;
        if let Some((w, k)) = self
            .data_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            if *w == wrapped {
                return Ok(k.clone());
            }
        }
        let kek = self.kek().map_err(|e| {
            ClusterError::Precondition(format!("{e}; this node cannot seal or open secrets"))
        })?;
        let dk = kek.unwrap_key(&wrapped).map_err(|_| {
            ClusterError::Precondition(format!(
                "master_key_file: {} does not open the cluster data key (a different key than the cluster's, or the cluster rotated its keys and this node has not fetched the new one yet)",
                self.config.master_key_file.display()
            ))
        })?;
        *self.data_key.write().unwrap_or_else(|p| p.into_inner()) = Some((wrapped, dk.clone()));
        Ok(dk)
    }

    /// This node's own record, as it registers itself.
    pub fn own_record(&self) -> NodeRecord {
        NodeRecord {
            id: self.id,
            api_addr: self.config.advertise.clone(),
            http_addr: self.config.http.to_string(),
            zone: self.config.zone.clone(),
            region: self.config.region.clone(),
            cpu_capacity_mvcpu: self.config.cpu_capacity_mvcpu,
            memory_capacity_mb: self.config.memory_capacity_mb,
            cert_sha256: self.tls.own_fingerprint().unwrap_or_default(),
        }
    }

    /// Whether a peer connection may be trusted: it showed a cluster
    /// certificate that was not revoked (or `--insecure`).
    pub fn trusted_peer(&self, info: Option<&crate::tls::ConnInfo>) -> Result<(), String> {
        if self.tls.insecure() {
            return Ok(());
        }
        match info.and_then(|i| i.peer.as_ref()) {
            None => Err(
                "a cluster certificate is required (mutual TLS); this connection presented none"
                    .into(),
            ),
            Some(p) if self.sm.read().data.revoked_certs.contains(&p.cert_sha256) => Err(format!(
                "the certificate of node {} was revoked when it was removed from the cluster",
                p.node
            )),
            Some(_) => Ok(()),
        }
    }

    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Commits `cmd` through Raft, forwarding to the leader when needed,
    /// and returns once this node has applied it (so a read here sees it).
    /// A rejection by the state machine comes back as `Rejected`.
    pub async fn write(&self, cmd: Command) -> Result<Response, ClusterError> {
        let out = self.write_inner(cmd).await?;
        self.raft
            .wait(Some(PATIENCE))
            .applied_index_at_least(Some(out.index), "apply own write")
            .await
            .map_err(|_| ClusterError::CommittedNotApplied(out.index))?;
        into_result(out.response)
    }

    async fn write_inner(&self, cmd: Command) -> Result<WriteOutcome, ClusterError> {
        let p = Proposal::new(now_ms(), cmd);
        let start = Instant::now();
        loop {
            let err = match self.raft.client_write(p.clone()).await {
                Ok(r) => {
                    return Ok(WriteOutcome {
                        index: r.log_id.index,
                        response: r.data,
                    })
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(id), Some(node)) if id != self.id => {
                            match self.forward(id, &node.addr, &p).await {
                                Ok(r) => return Ok(r),
                                Err(e) => e,
                            }
                        }
                        _ => ClusterError::NoLeader,
                    }
                }
                Err(RaftError::APIError(e)) => return Err(ClusterError::Raft(e.to_string())),
                Err(RaftError::Fatal(e)) => return Err(ClusterError::Raft(e.to_string())),
            };
            let retry = match &err {
                ClusterError::NoLeader => true,
                ClusterError::Remote(s) => never_sent(s),
                ClusterError::LeaderUnreachable { message, .. } => message.contains("connect"),
                _ => false,
            };
            if !retry || start.elapsed() > PATIENCE {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        p: &Proposal,
    ) -> Result<WriteOutcome, ClusterError> {
        let unreachable = leader_unreachable(leader, addr);
        let mut client = self
            .pool
            .client(addr)
            .map_err(|e| unreachable(e.to_string()))?;
        let payload = encode(p).map_err(|e| ClusterError::Raft(e.to_string()))?;
        let mut req = tonic::Request::new(RaftMessage { payload });
        req.set_timeout(PATIENCE);
        match client.forward(req).await {
            Ok(r) => decode(&r.into_inner().payload).map_err(|e| ClusterError::Raft(e.to_string())),
            Err(s) if s.code() == Code::Unavailable && !s.metadata().contains_key(NOT_LEADER) => {
                Err(unreachable(s.message().to_string()))
            }
            Err(s) => Err(ClusterError::Remote(s)),
        }
    }

    /// Waits until this node's state reflects every write acknowledged
    /// before the call. Skipped for stale reads.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ClusterError> {
        if stale || self.config.sabotage_stale_reads {
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let err = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    match (f.leader_id, f.leader_node) {
                        (Some(id), Some(node)) if id != self.id => {
                            match self.remote_read_index(id, &node.addr).await {
                                Ok(index) => {
                                    let left = PATIENCE.saturating_sub(start.elapsed());
                                    return self
                                        .raft
                                        .wait(Some(left))
                                        .applied_index_at_least(Some(index), "linearizable read")
                                        .await
                                        .map(|_| ())
                                        .map_err(|_| ClusterError::Timeout(PATIENCE));
                                }
                                Err(e) => e,
                            }
                        }
                        _ => ClusterError::NoLeader,
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    ClusterError::NoLeader
                }
                Err(e) => return Err(ClusterError::Raft(e.to_string())),
            };
            if start.elapsed() > PATIENCE {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remote_read_index(&self, leader: NodeId, addr: &str) -> Result<u64, ClusterError> {
        let unreachable = leader_unreachable(leader, addr);
        let mut client = self
            .pool
            .client(addr)
            .map_err(|e| unreachable(e.to_string()))?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(Duration::from_secs(3));
        match client.read_index(req).await {
            Ok(r) => Ok(r.into_inner().index),
            Err(s) => Err(unreachable(s.message().to_string())),
        }
    }

    /// Adds `record` as a learner, waits for it to catch up, then makes it a
    /// voter. Runs on the leader; a follower hands it to the leader.
    pub async fn join(&self, record: NodeRecord) -> Result<NodeId, ClusterError> {
        let start = Instant::now();
        loop {
            let is_leader = self.raft.metrics().borrow().state == ServerState::Leader;
            if is_leader {
                break;
            }
            match self.leader() {
                Some((lid, addr)) if lid != self.id => {
                    let mut client = self
                        .pool
                        .client(&addr)
                        .map_err(|e| ClusterError::Raft(e.to_string()))?;
                    let node = encode(&record).map_err(|e| ClusterError::Raft(e.to_string()))?;
                    let mut req = tonic::Request::new(JoinRequest {
                        id: record.id,
                        node,
                    });
                    req.set_timeout(Duration::from_secs(120));
                    return client
                        .join(req)
                        .await
                        .map(|r| r.into_inner().leader_id)
                        .map_err(ClusterError::Remote);
                }
                _ if start.elapsed() > PATIENCE => return Err(ClusterError::NoLeader),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let id = record.id;
        let addr = record.api_addr.clone();
        self.write(Command::RegisterNode { node: record }).await?;
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let known = membership.get_node(&id).cloned();
        match known {
            Some(n) if n.addr != addr => {
                return Err(ClusterError::Precondition(format!(
                    "node id {id} is already a member at {}; remove it first or pick another --id",
                    n.addr
                )))
            }
            Some(_) => {}
            None => {
                tracing::info!(node = id, %addr, "adding learner");
                self.raft
                    .add_learner(id, BasicNode { addr }, true)
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
            }
        }
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !voters.contains(&id) {
            tracing::info!(node = id, "promoting learner to voter");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        Ok(self.id)
    }

    /// Removes node `id` from the membership and the node table.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        let is_leader = self.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            let (lid, addr) = self.leader().ok_or(ClusterError::NoLeader)?;
            if lid != self.id {
                let mut client = self
                    .pool
                    .client(&addr)
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
                let mut req = tonic::Request::new(LeaveRequest { id });
                req.set_timeout(PATIENCE * 2);
                return client
                    .leave(req)
                    .await
                    .map(|_| ())
                    .map_err(ClusterError::Remote);
            }
        }
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::UnknownMember(id));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::Precondition(format!(
                    "node {id} is the last voter; a cluster cannot remove it"
                )));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        let still = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some();
        if still {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| ClusterError::Raft(e.to_string()))?;
        }
        self.write(Command::RemoveNode { id }).await?;
        Ok(())
    }

    /// Members with their records; each one is pinged to fill `healthy`.
    pub async fn members(&self) -> Vec<MemberView> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let records: BTreeMap<NodeId, NodeRecord> = self.sm.read().data.nodes.clone();
        let pings = membership.nodes().map(|(id, node)| {
            let (id, addr) = (*id, node.addr.clone());
            async move {
                let healthy = id == self.id || self.ping(&addr).await;
                (id, addr, healthy)
            }
        });
        let results = futures::future::join_all(pings).await;
        results
            .into_iter()
            .map(|(id, address, healthy)| MemberView {
                id,
                address,
                voter: voters.contains(&id),
                record: records.get(&id).cloned(),
                healthy,
            })
            .collect()
    }

    async fn ping(&self, addr: &str) -> bool {
        let Ok(mut client) = self.pool.client(addr) else {
            return false;
        };
        let mut req = tonic::Request::new(PingRequest {});
        req.set_timeout(Duration::from_millis(700));
        tokio::time::timeout(Duration::from_millis(800), client.ping(req))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// What the leader answers a forwarded write with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WriteOutcome {
    /// Log index of the entry.
    pub index: u64,
    pub response: Response,
}

fn into_result(r: Response) -> Result<Response, ClusterError> {
    match r.rejection {
        Some(rej) => Err(ClusterError::Rejected(rej)),
        None => Ok(r),
    }
}
