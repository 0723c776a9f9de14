//! Membership changes through the leader (a follower hands them over) and
//! the member list `cluster status` shows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use rouse_proto::peer::{JoinRequest, LeaveRequest, PingRequest};

use super::{Cluster, ClusterError, PATIENCE};
use crate::raft::encode;
use crate::state::{Command, NodeId, NodeRecord};

/// A member as `cluster status` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub record: Option<NodeRecord>,
    pub healthy: bool,
}

fn membership(m: &RaftMetrics<NodeId, BasicNode>) -> openraft::Membership<NodeId, BasicNode> {
    m.membership_config.membership().clone()
}

impl Cluster {
    fn membership(&self) -> openraft::Membership<NodeId, BasicNode> {
        membership(&self.raft.metrics().borrow())
    }

    /// Adds `record` as a learner, waits for it to catch up, then makes it a
    /// voter. Runs on the leader; a follower hands it to the leader.
    pub async fn join(&self, record: NodeRecord) -> Result<NodeId, ClusterError> {
        let start = Instant::now();
        while !self.is_leader() {
            match self.leader() {
                Some((lid, addr)) if lid != self.id => {
                    let mut client = self.pool.client(&addr)?;
                    let node = encode(&record)?;
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
        match self.membership().get_node(&id).cloned() {
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
                    .map_err(from_write)?;
            }
        }
        let voters: BTreeSet<NodeId> = self.membership().voter_ids().collect();
        if !voters.contains(&id) {
            tracing::info!(node = id, "promoting learner to voter");
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(from_write)?;
        }
        Ok(self.id)
    }

    /// Removes node `id` from the membership and the node table.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        if !self.is_leader() {
            let (lid, addr) = self.leader().ok_or(ClusterError::NoLeader)?;
            if lid != self.id {
                let mut client = self.pool.client(&addr)?;
                let mut req = tonic::Request::new(LeaveRequest { id });
                req.set_timeout(PATIENCE * 2);
                return client
                    .leave(req)
                    .await
                    .map(|_| ())
                    .map_err(ClusterError::Remote);
            }
        }
        let m = self.membership();
        if m.get_node(&id).is_none() {
            return Err(ClusterError::UnknownMember(id));
        }
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ClusterError::Precondition(format!(
                    "node {id} is the last voter; a cluster cannot remove it"
                )));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(from_write)?;
        }
        if self.membership().get_node(&id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(from_write)?;
        }
        self.write(Command::RemoveNode { id }).await?;
        Ok(())
    }

    /// Members with their records; each one is pinged to fill `healthy`.
    pub async fn members(&self) -> Vec<MemberView> {
        let m = self.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let records: BTreeMap<NodeId, NodeRecord> = self.sm.read().data.nodes.clone();
        let pings = m.nodes().map(|(id, node)| {
            let (id, addr) = (*id, node.addr.clone());
            async move {
                let healthy = id == self.id || self.ping(&addr).await;
                (id, addr, healthy)
            }
        });
        futures::future::join_all(pings)
            .await
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

/// A membership change's error: not the leader any more, refused, or fatal.
fn from_write(
    e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>,
) -> ClusterError {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ClusterError::NoLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => e.into(),
        RaftError::Fatal(e) => e.into(),
    }
}
