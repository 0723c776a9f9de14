//! Triggers: cron ticks claimed through Raft and delivered through the
//! mesh.
//!
//! ```text
//!  leader, every 100 ms:  plan(state, now) ─▶ ClaimTick (through Raft) ─▶ deliver
//!                                                  │ refused: claimed already
//!  deliver: POST/GET … to this node's mesh (wakes a container at zero,
//!           queues at its concurrency; private: a trigger token)
//!           retried on connection failures, 5xx and timeouts ─▶ RecordFiring
//!  a tick claimed by a node that died (or stopped leading and never
//!  answered) is delivered again by the leader, with the same event id
//! ```
//!
//! The contract: a tick is claimed at most once, whatever the leader
//! changes; each claimed tick is delivered at least once; handlers
//! deduplicate by `X-Rouse-Event-Id`.
//!
//! - [`schedule`]: parsing and the pure next-tick decision.
//! - [`plan`]: what the leader does now, from the state (pure).
//! - [`deliver`]: the HTTP request and its retries.
//! - [`nats`]: NATS JetStream subjects, one durable consumer per trigger
//!   on the leader.

pub mod deliver;
pub mod nats;
pub mod plan;
pub mod schedule;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{now_ms, Cluster, ClusterError};
use crate::keys::Keyring;
use crate::state::Command;

pub use deliver::Delivery;

/// The cron loop's longest sleep.
const TICK: Duration = Duration::from_millis(100);
pub use plan::Action;

/// Runs the trigger loops of this node: they act only while it leads.
pub async fn run(cluster: Arc<Cluster>, delivery: Arc<Delivery>) {
    tokio::spawn(nats::run(cluster.clone(), delivery.clone()));
    run_cron(cluster, delivery).await;
}

async fn run_cron(cluster: Arc<Cluster>, delivery: Arc<Delivery>) {
    // Ticks this node is delivering now: (trigger id, tick).
    let busy: Arc<parking_lot::Mutex<HashSet<(String, u64)>>> = Arc::default();
    let mut next: Option<u64> = None;
    loop {
        // Until the next tick is due, and at least every 100 ms (triggers
        // come and go, leadership moves).
        let wait = next
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
            .unwrap_or(TICK)
            .min(TICK);
        tokio::time::sleep(wait).await;
        if !cluster.is_leader() {
            next = None;
            continue;
        }
        let now = now_ms();
        let actions = {
            let sm = cluster.sm.read();
            let busy = busy.lock();
            next = plan::next_due(&sm.data, now);
            plan::plan(&sm.data, cluster.id, now, &busy)
        };
        for action in actions {
            match action {
                Action::Claim {
                    trigger,
                    tick,
                    missed,
                    deliver,
                } => {
                    let (ns, ct, name) = trigger.clone();
                    let cmd = Command::ClaimTick {
                        namespace: ns,
                        container: ct,
                        name,
                        tick_ms: tick,
                        missed,
                        deliver,
                        node: cluster.id,
                    };
                    match cluster.write(cmd).await {
                        Ok(_) if deliver => spawn(&delivery, &busy, trigger, tick, false),
                        Ok(_) => {
                            tracing::warn!(trigger = %join(&trigger), missed, "ticks passed with no leader beyond the catch-up window")
                        }
                        Err(ClusterError::Rejected(r)) => {
                            tracing::debug!(reason = %r, "tick not claimed")
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "claiming a tick");
                            break;
                        }
                    }
                }
                Action::Redeliver { trigger, tick } => spawn(&delivery, &busy, trigger, tick, true),
            }
        }
    }
}

fn join((ns, ct, name): &(String, String, String)) -> String {
    format!("{ns}/{ct}/{name}")
}

fn spawn(
    delivery: &Arc<Delivery>,
    busy: &Arc<parking_lot::Mutex<HashSet<(String, u64)>>>,
    trigger: (String, String, String),
    tick: u64,
    again: bool,
) {
    let slot = (join(&trigger), tick);
    if !busy.lock().insert(slot.clone()) {
        return;
    }
    let (delivery, busy) = (delivery.clone(), busy.clone());
    tokio::spawn(async move {
        if again {
            tracing::info!(trigger = %slot.0, tick, "delivering a tick its claimer left unanswered");
        }
        delivery.fire(&trigger, tick).await;
        busy.lock().remove(&slot);
    });
}

/// The token a trigger's deliveries to a private container carry: signed
/// by the cluster, valid while the trigger exists (checked by the mesh).
pub fn token(
    state: &crate::state::StateData,
    keys: &Keyring,
    trigger: &crate::state::Trigger,
    now_ms: u64,
) -> Option<String> {
    let (kid, private) = crate::keys::signing::current_signer(state, keys).ok()?;
    let claims = crate::tokens::Claims {
        iss: crate::tokens::ISSUER.into(),
        jti: format!("{}{}", crate::tokens::TRIGGER_JTI_PREFIX, trigger.id()),
        ns: trigger.namespace.clone(),
        ct: Some(trigger.container.clone()),
        iat: now_ms / 1000,
        exp: now_ms / 1000 + 300,
    };
    crate::tokens::sign(&private, &kid, &claims).ok()
}
