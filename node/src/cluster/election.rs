//! Elections with a pre-vote round.
//!
//! openraft 0.9 has no pre-vote: a node whose election timer fires stands
//! at once and raises the term, even when its log is behind (it cannot win)
//! or when it alone lost the leader. Its vote for itself then makes the node
//! that could win wait, and a restarted, lagging node turned a one-election
//! failover into two or three. So rouse turns openraft's election timer off
//! and runs this one:
//!
//! ```text
//!  each tick: leader, or not a voter ──▶ nothing
//!   no leader heard for the election timeout + jitter
//!   (or, after a candidacy that came to nothing, for a jitter alone)
//!     ──▶ PreVote(my last log id) to every other voter
//!          granted by a majority (of each half of a joint config)
//!            ──▶ raft.trigger().elect()   (the real, term-raising vote)
//! ```
//!
//! A voter grants a pre-vote when it does not lead, has not heard from a
//! leader within the election timeout (the lease openraft itself enforces
//! on real votes, so a granted pre-vote predicts a granted vote), and the
//! candidate's log is at least as up to date as its own. A node cut off from
//! the majority, or behind it, never raises the term, so it cannot disturb
//! the cluster when it comes back.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use openraft::{LogId, ServerState};
use rand::Rng;
use rouse_proto::peer::RaftMessage;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Cluster;
use crate::raft::{decode, encode};
use crate::state::NodeId;

/// The election clock: leaders send heartbeats every `heartbeat`; voters
/// refuse other candidates for `timeout` after hearing from a leader
/// (openraft's `election_timeout_max`, its leader lease).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub timeout: Duration,
}

impl Timing {
    /// openraft's settings for this clock: its own election timer is off
    /// (this module stands instead), its lease is `timeout`.
    pub fn raft_settings(&self) -> (u64, u64, u64) {
        let hb = ms(self.heartbeat);
        let max = ms(self.timeout);
        (hb, (max / 2).max(hb + 1), max)
    }

    /// How long to wait from the last word of a leader (or of a vote)
    /// before standing: past the lease, plus a jitter so that two voters
    /// rarely stand together; after a candidacy that came to nothing (no
    /// leader to wait out), the jitter alone.
    fn wait(&self, leader_heard: bool) -> Duration {
        let t = ms(self.timeout).max(2);
        let mut rng = rand::rng();
        if leader_heard {
            Duration::from_millis(t + rng.random_range(0..t / 2))
        } else {
            Duration::from_millis(rng.random_range(t / 2..t))
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId<NodeId>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// Why not, when refused.
    pub reason: String,
}

/// What the election clock reads of Raft's state.
struct View {
    leads: bool,
    /// The vote belongs to an elected leader (not a mere candidate).
    committed: bool,
    /// When the vote last changed or a leader's message renewed it.
    touched: Option<Instant>,
}

impl Cluster {
    async fn election_view(&self) -> Option<View> {
        self.raft
            .with_raft_state(|st| View {
                leads: st.server_state == ServerState::Leader,
                committed: st.vote_ref().is_committed(),
                touched: st.vote_last_modified(),
            })
            .await
            .ok()
    }

    /// A voter's answer to a pre-vote (see the module docs).
    pub async fn answer_pre_vote(&self, req: &PreVoteRequest) -> PreVoteResponse {
        let refuse = |reason: String| PreVoteResponse {
            granted: false,
            reason,
        };
        let Some(view) = self.election_view().await else {
            return refuse("raft has stopped on this node".into());
        };
        if view.leads {
            return refuse(format!("node {} leads", self.id));
        }
        let lease = self.timing.timeout;
        if view.committed && view.touched.is_some_and(|t| t.elapsed() <= lease) {
            return refuse(format!(
                "node {} heard from its leader within the election timeout ({lease:?})",
                self.id
            ));
        }
        let mine = match self.log.last_log_id() {
            Ok(l) => l,
            Err(e) => return refuse(format!("reading the log: {e}")),
        };
        if req.last_log_id < mine {
            return refuse(format!(
                "the candidate's log ends at {:?}, node {}'s at {:?}",
                req.last_log_id, self.id, mine
            ));
        }
        PreVoteResponse {
            granted: true,
            reason: String::new(),
        }
    }

    /// Asks the other voters; true when a majority of each config (counting
    /// this node) would vote for it now.
    async fn pre_vote(
        &self,
        configs: &[BTreeSet<NodeId>],
        errors: &mut HashMap<NodeId, String>,
    ) -> bool {
        let last_log_id = match self.log.last_log_id() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "pre-vote: cannot read the log");
                return false;
            }
        };
        let req = PreVoteRequest {
            candidate: self.id,
            last_log_id,
        };
        let Ok(payload) = encode(&req) else {
            return false;
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let others: BTreeSet<NodeId> = configs
            .iter()
            .flatten()
            .copied()
            .filter(|id| *id != self.id)
            .collect();
        let patience = (self.timing.timeout / 2).max(Duration::from_millis(50));
        let asks = others.iter().map(|&id| {
            let addr = membership
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone());
            let payload = payload.clone();
            async move {
                let Some(addr) = addr else {
                    return (id, Err("no address in the membership".to_string()));
                };
                let mut client = match self.pool.client(&addr) {
                    Ok(c) => c,
                    Err(e) => return (id, Err(e.to_string())),
                };
                let mut r = tonic::Request::new(RaftMessage { payload });
                r.set_timeout(patience);
                let answer = match tokio::time::timeout(patience, client.pre_vote(r)).await {
                    Err(_) => Err("no answer".to_string()),
                    Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
                    Ok(Ok(resp)) => decode::<PreVoteResponse>(&resp.into_inner().payload)
                        .map_err(|e| e.to_string()),
                };
                (id, answer)
            }
        });
        let mut granted = BTreeSet::from([self.id]);
        for (id, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(a) if a.granted => {
                    granted.insert(id);
                    errors.remove(&id);
                }
                Ok(a) => {
                    errors.remove(&id);
                    tracing::debug!(peer = id, reason = %a.reason, "pre-vote refused");
                }
                Err(e) => {
                    // Said once per peer and error, not at every attempt.
                    if errors.get(&id) != Some(&e) {
                        tracing::warn!(peer = id, error = %e, "pre-vote: peer did not answer");
                        errors.insert(id, e);
                    }
                }
            }
        }
        configs
            .iter()
            .all(|c| c.iter().filter(|id| granted.contains(id)).count() * 2 > c.len())
    }
}

/// Since when (ms since the epoch) this node has been cut off from a
/// majority, if it has for two election timeouts: a leader whose followers
/// have not acknowledged it, or a node that has heard from no leader.
fn cut_off_since(
    cluster: &Cluster,
    view: &View,
    configs: &[BTreeSet<NodeId>],
    started: Instant,
    led_since: Option<Instant>,
) -> Option<u64> {
    let patience = cluster.timing.timeout * 2;
    let now = super::now_ms();
    if view.leads {
        // The age of the majority's latest answers, in the worst config;
        // no answer counts as older than this leadership (answers from a
        // past one are not a sign of trouble now).
        let led_for = led_since.map_or(Duration::ZERO, |t| t.elapsed());
        let age = configs
            .iter()
            .map(|c| {
                let mut ages: Vec<Duration> = c
                    .iter()
                    .map(|id| {
                        if *id == cluster.id {
                            Duration::ZERO
                        } else {
                            cluster
                                .pool
                                .since_answer(*id)
                                .unwrap_or(Duration::MAX)
                                .min(led_for)
                        }
                    })
                    .collect();
                ages.sort();
                ages.get(c.len() / 2).copied().unwrap_or(Duration::ZERO)
            })
            .max()
            .unwrap_or(Duration::ZERO);
        return (age > patience).then(|| now.saturating_sub(ms(age.min(patience * 2))));
    }
    // Never heard of a vote: counted from this node's start.
    let quiet = view.touched.unwrap_or(started).elapsed();
    if view.committed && quiet <= patience {
        return None;
    }
    (quiet > patience).then(|| now.saturating_sub(ms(quiet)))
}

/// The election clock of one node; ends when Raft stops.
pub async fn run(cluster: std::sync::Arc<Cluster>) {
    let timing = cluster.timing;
    let tick = (timing.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let started = Instant::now();
    // The vote time the current deadline counts from, and the deadline.
    let mut base: Option<Instant> = None;
    let mut deadline = started + timing.wait(true);
    let mut errors = HashMap::new();
    let mut led_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let Some(view) = cluster.election_view().await else {
            return;
        };
        let configs = cluster
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_joint_config()
            .clone();
        if view.leads {
            led_since.get_or_insert_with(Instant::now);
        } else {
            led_since = None;
        }
        cluster.set_no_quorum(cut_off_since(&cluster, &view, &configs, started, led_since));
        let voter = configs.iter().any(|c| c.contains(&cluster.id));
        if view.leads || !voter {
            base = None;
            continue;
        }
        let touched = view.touched.unwrap_or(started);
        if base != Some(touched) {
            base = Some(touched);
            deadline = touched + timing.wait(view.committed);
        }
        let now = Instant::now();
        // The only voter has no one to wait for or to ask.
        let alone = configs.iter().all(|c| c.len() == 1);
        if now < deadline && !alone {
            continue;
        }
        // If this attempt comes to nothing, the next one after a jitter.
        deadline = now + timing.wait(false);
        if cluster.pre_vote(&configs, &mut errors).await {
            tracing::info!(
                node = cluster.id,
                "pre-vote granted by a majority; standing for election"
            );
            if cluster.raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}
