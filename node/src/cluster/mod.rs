//! A handle on the replicated state: Raft, the applied state machine and
//! the peer pool, with replicated writes (forwarded to the leader when
//! needed), linearizable reads and membership changes.
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
//!
//! A `Cluster` holds no services: the agent, the mesh and the leader loops
//! each get a `Cluster` and only the other parts they need (see `server`).
//!
//! - [`error`]: [`ClusterError`], with a typed "never sent" flag.
//! - [`membership`]: join, remove and the member list.
//! - [`election`]: when this node stands for election (a pre-vote first).

pub mod election;
pub mod error;
pub mod membership;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use rouse_proto::peer::{RaftMessage, ReadIndexRequest};
use tonic::Code;

pub use error::{ClusterError, NOT_LEADER};
pub use membership::MemberView;

use crate::raft::{decode, encode, PeerPool, Raft};
use crate::state::{Command, NodeId, Proposal, Response};
use crate::store::{LogStore, SmShared};

/// How long a call waits for a leader, a quorum or a forwarded answer.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub struct Cluster {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub pool: PeerPool,
    /// The Raft log, read by pre-votes.
    pub log: LogStore,
    pub timing: election::Timing,
    /// Since when (ms since the epoch) this node has heard from no leader
    /// backed by a majority; 0 while it has. Kept by the election clock.
    no_quorum_since_ms: std::sync::atomic::AtomicU64,
    /// Chaos-suite sabotage: answer reads without the leader check.
    #[cfg(feature = "sabotage")]
    pub sabotage_stale_reads: bool,
}

/// What the leader answers a forwarded write with.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WriteOutcome {
    /// Log index of the entry.
    pub index: u64,
    pub response: Response,
}

impl Cluster {
    pub fn new(
        id: NodeId,
        raft: Raft,
        sm: Arc<SmShared>,
        pool: PeerPool,
        log: LogStore,
        timing: election::Timing,
    ) -> Self {
        Cluster {
            id,
            raft,
            sm,
            pool,
            log,
            timing,
            no_quorum_since_ms: Default::default(),
            #[cfg(feature = "sabotage")]
            sabotage_stale_reads: false,
        }
    }

    /// Since when this node has been cut off from a working majority (ms
    /// since the epoch), if it is.
    pub fn no_quorum(&self) -> Option<u64> {
        match self
            .no_quorum_since_ms
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            ms => Some(ms),
        }
    }

    pub(crate) fn set_no_quorum(&self, since_ms: Option<u64>) {
        use std::sync::atomic::Ordering;
        match since_ms {
            None => self.no_quorum_since_ms.store(0, Ordering::Relaxed),
            // The first moment counts: later ticks do not move it.
            Some(ms) => {
                let _ = self.no_quorum_since_ms.compare_exchange(
                    0,
                    ms.max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// The error for a call refused (or abandoned) for want of a quorum.
    fn no_quorum_error(&self, since_ms: u64, in_flight: bool) -> ClusterError {
        ClusterError::NoQuorum {
            node: self.id,
            since_ms,
            in_flight,
        }
    }

    /// Resolves once this node is cut off from a majority: a call to the
    /// leader in flight then is abandoned rather than left hanging.
    async fn quorum_lost(&self) -> u64 {
        loop {
            if let Some(ms) = self.no_quorum() {
                return ms;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits until the applied index moves past `*seen` (updating it), or
    /// `max` passes; true if it moved. Loops that react to state changes
    /// use it.
    pub async fn applied_change(&self, seen: &mut u64, max: Duration) -> bool {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let applied = rx.borrow().last_applied.map_or(0, |l| l.index);
            if applied != *seen {
                *seen = applied;
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                r = rx.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Waits until Raft names a different leader (or term), at most `max`:
    /// a retry after "no leader" goes out as soon as one is elected.
    async fn leader_change(&self, max: Duration) {
        let mut rx = self.raft.metrics();
        let seen = {
            let m = rx.borrow();
            (m.current_leader, m.current_term)
        };
        let _ = tokio::time::timeout(
            max,
            rx.wait_for(|m| (m.current_leader, m.current_term) != seen),
        )
        .await;
    }

    /// The leader's id and peer address, when one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Commits `cmd` through Raft, forwarding to the leader when needed,
    /// and returns once this node has applied it (so a read here sees it).
    /// A rejection by the state machine comes back as `Rejected`.
    #[tracing::instrument(
        name = "raft.proposal",
        skip_all,
        fields(node = self.id, op = <&'static str>::from(&cmd))
    )]
    pub async fn write(&self, cmd: Command) -> Result<Response, ClusterError> {
        let proposed = Instant::now();
        let out = self.write_inner(cmd).await?;
        self.raft
            .wait(Some(PATIENCE))
            .applied_index_at_least(Some(out.index), "apply own write")
            .await
            .map_err(|_| ClusterError::CommittedNotApplied(out.index))?;
        crate::telemetry::METRICS
            .proposals
            .observe(proposed.elapsed().as_secs_f64());
        match out.response.rejection {
            Some(rej) => Err(ClusterError::Rejected(rej)),
            None => Ok(out.response),
        }
    }

    async fn write_inner(&self, cmd: Command) -> Result<WriteOutcome, ClusterError> {
        let p = Proposal::new(now_ms(), cmd);
        let start = Instant::now();
        loop {
            if let Some(since) = self.no_quorum() {
                return Err(self.no_quorum_error(since, false));
            }
            let written = tokio::select! {
                r = self.raft.client_write(p.clone()) => r,
                since = self.quorum_lost() => return Err(self.no_quorum_error(since, true)),
            };
            let err = match written {
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
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(e.into())
                }
                Err(RaftError::Fatal(e)) => return Err(e.into()),
            };
            // Only a write that certainly never reached a leader is sent again.
            if !err.never_sent() || start.elapsed() > PATIENCE {
                return Err(err);
            }
            self.leader_change(Duration::from_millis(50)).await;
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        addr: &str,
        p: &Proposal,
    ) -> Result<WriteOutcome, ClusterError> {
        let mut client = self.pool.client(addr)?;
        let payload = encode(p)?;
        let mut req = tonic::Request::new(RaftMessage { payload });
        req.set_timeout(PATIENCE);
        let answer = tokio::select! {
            r = client.forward(req) => r,
            since = self.quorum_lost() => return Err(self.no_quorum_error(since, true)),
        };
        match answer {
            Ok(r) => Ok(decode(&r.into_inner().payload)?),
            Err(s) if s.code() == Code::Unavailable && !s.metadata().contains_key(NOT_LEADER) => {
                Err(ClusterError::LeaderUnreachable {
                    leader,
                    addr: addr.to_string(),
                    message: s.message().to_string(),
                    never_sent: error::status_never_sent(&s),
                })
            }
            Err(s) => Err(ClusterError::Remote(s)),
        }
    }

    /// Waits until this node's state reflects every write acknowledged
    /// before the call. Skipped for stale reads.
    pub async fn read_barrier(&self, stale: bool) -> Result<(), ClusterError> {
        #[cfg(feature = "sabotage")]
        let stale = stale || self.sabotage_stale_reads;
        if stale {
            return Ok(());
        }
        let start = Instant::now();
        loop {
            if let Some(since) = self.no_quorum() {
                return Err(self.no_quorum_error(since, false));
            }
            let checked = tokio::select! {
                r = self.raft.ensure_linearizable() => r,
                since = self.quorum_lost() => return Err(self.no_quorum_error(since, false)),
            };
            let err = match checked {
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
                Err(RaftError::Fatal(e)) => return Err(e.into()),
            };
            if start.elapsed() > PATIENCE {
                return Err(err);
            }
            self.leader_change(Duration::from_millis(50)).await;
        }
    }

    async fn remote_read_index(&self, leader: NodeId, addr: &str) -> Result<u64, ClusterError> {
        let unreachable = |s: tonic::Status| ClusterError::LeaderUnreachable {
            leader,
            addr: addr.to_string(),
            message: s.message().to_string(),
            never_sent: true,
        };
        let mut client = self.pool.client(addr)?;
        let mut req = tonic::Request::new(ReadIndexRequest {});
        req.set_timeout(Duration::from_secs(3));
        // A read index asks, it changes nothing: any failure may be retried.
        tokio::select! {
            r = client.read_index(req) => r.map(|r| r.into_inner().index).map_err(unreachable),
            since = self.quorum_lost() => Err(self.no_quorum_error(since, false)),
        }
    }
}
