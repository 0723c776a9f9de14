//! What only the leader does, each as a loop that takes a snapshot of the
//! state, calls a pure decider, and writes the commands it returns one
//! after the other (the plan-apply shape: apply re-checks every
//! precondition, so a stale plan is refused, never half-applied).
//!
//! ```text
//!  every pass (on an applied change, or a timer):
//!    leader? ──no──▶ forget what this leadership learned
//!       │yes
//!    snapshot ─▶ decide(state, tick) ─▶ Vec<Command> ─▶ write, one at a time
//! ```
//!
//! - [`driver`]: the loop and the [`driver::Decider`] trait.
//! - [`placement`]: the scheduler's plan as commands.
//! - [`liveness`]: nodes up and down by their load-report lease.
//! - [`autoscale`]: desired scale from demand (stable and panic windows).
//! - [`bootstrap`]: the cluster data key, first signing key and the CA.

pub mod autoscale;
pub mod bootstrap;
pub mod driver;
pub mod liveness;
pub mod placement;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::keys::Keyring;
use crate::loads::LoadBook;
use crate::state::NodeId;
use driver::Pace;

/// What the leader loops take from the node's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: NodeId,
    pub insecure: bool,
    pub overcommit: f64,
    pub placement_batch: usize,
    pub node_grace: Duration,
    pub autoscale_window: Duration,
}

/// Starts the leader-only loops: each decides only while this node leads.
pub fn spawn(
    cluster: &Arc<Cluster>,
    s: Settings,
    keys: &Arc<Keyring>,
    loads: &Arc<LoadBook>,
) -> Vec<JoinHandle<()>> {
    let window_ms = u64::try_from(s.autoscale_window.as_millis()).unwrap_or(u64::MAX);
    vec![
        tokio::spawn(driver::run(
            cluster.clone(),
            bootstrap::Bootstrap {
                keys: keys.clone(),
                insecure: s.insecure,
            },
            Pace::OnChange(Duration::from_millis(500)),
        )),
        // Plan on every applied change, and at least twice a second.
        tokio::spawn(driver::run(
            cluster.clone(),
            placement::Placement {
                params: crate::scheduler::Params {
                    overcommit: s.overcommit,
                },
                batch: s.placement_batch,
                book: loads.clone(),
            },
            Pace::OnChange(Duration::from_millis(500)),
        )),
        tokio::spawn(driver::run(
            cluster.clone(),
            liveness::Liveness {
                me: s.me,
                grace: s.node_grace,
                book: loads.clone(),
            },
            Pace::Every(Duration::from_millis(250)),
        )),
        tokio::spawn(driver::run(
            cluster.clone(),
            autoscale::Autoscaler {
                window_ms,
                book: loads.clone(),
                windows: Default::default(),
            },
            Pace::Every(Duration::from_secs(1)),
        )),
    ]
}
