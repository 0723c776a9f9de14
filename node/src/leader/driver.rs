//! The loop every leader-only decider runs in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{now_ms, Cluster, ClusterError};
use crate::state::{Command, StateData};

/// When a decision is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub now_ms: u64,
    /// How long this node has led without interruption.
    pub leader_for: Duration,
}

/// A leader-only decision: from a snapshot of the state to the commands
/// that bring the cluster where it should be. `decide` does no I/O and
/// reads no clock (the time is in `tick`).
pub trait Decider: Send {
    /// Names the loop in logs.
    fn name(&self) -> &'static str;
    fn decide(&mut self, state: &StateData, tick: Tick) -> Vec<Command>;
    /// This node stopped leading: forget what the leadership learned.
    fn lost_leadership(&mut self) {}
}

/// How a loop wakes up.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// On every applied change, and at least this often.
    OnChange(Duration),
    /// On a timer.
    Every(Duration),
}

/// Runs `d` while this node lives; it decides only while the node leads.
pub async fn run(cluster: Arc<Cluster>, mut d: impl Decider, pace: Pace) {
    let mut seen = 0;
    let mut since: Option<Instant> = None;
    loop {
        match pace {
            Pace::OnChange(max) => cluster.applied_change(&mut seen, max).await,
            Pace::Every(d) => tokio::time::sleep(d).await,
        }
        if !cluster.is_leader() {
            if since.take().is_some() {
                d.lost_leadership();
            }
            continue;
        }
        let started = *since.get_or_insert_with(Instant::now);
        let pass = Instant::now();
        let commands = {
            let sm = cluster.sm.read();
            d.decide(
                &sm.data,
                Tick {
                    now_ms: now_ms(),
                    leader_for: started.elapsed(),
                },
            )
        };
        write_serially(&cluster, d.name(), commands).await;
        crate::telemetry::METRICS.pass(d.name(), pass.elapsed());
    }
}

/// Writes `commands` in order. A rejected one is skipped (the state moved
/// on; the next pass decides again); any other error ends the pass.
pub async fn write_serially(cluster: &Cluster, name: &str, commands: Vec<Command>) {
    for cmd in commands {
        match cluster.write(cmd).await {
            Ok(_) => {}
            Err(ClusterError::Rejected(r)) => {
                tracing::debug!(decider = name, reason = %r, "command refused; deciding again next pass")
            }
            Err(e) => {
                tracing::debug!(decider = name, error = %e, "not committed; trying again next pass");
                return;
            }
        }
    }
}
