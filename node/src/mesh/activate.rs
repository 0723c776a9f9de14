//! The third and fourth layers: find where a request can go, holding it
//! while there is nowhere yet.
//!
//! ```text
//!  a local ready instance with a free slot ──▶ take the slot (limit), wake it if suspended
//!  none free here, another node has ready ones ──▶ hop to that node's mesh
//!  all busy ──▶ queue (bounded; 503 past it) until a slot frees
//!  none anywhere ──▶ cold start: Scale ≥ 1 through Raft, hold until one is ready
//! ```
//!
//! [`view`] (what the state offers) and [`choose`] (where to go) are pure;
//! [`Activator::target`] is the loop around them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

use super::demand::Demand;
use super::error::MeshError;
use super::route::{least_loaded, Route};
use crate::cluster::Cluster;
use crate::local::{LocalInstances, Resumer, SlotGuard};
use crate::state::{Command, ContainerKey, InstanceState, NodeId, StateData};

/// Requests one container may queue on one node before 503.
pub const QUEUE_CAP: usize = 1000;

/// Where a container's ready instances are, seen from this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// Local routable instances: id and where they answer (their address on
    /// the node's bridge, or the node's loopback in host mode).
    pub local: Vec<(String, SocketAddr)>,
    /// Other live nodes with routable instances: node → (count, mesh address).
    pub remote: BTreeMap<NodeId, (usize, String)>,
}

impl View {
    pub fn any_ready(&self) -> bool {
        !self.local.is_empty() || !self.remote.is_empty()
    }
}

/// What the replicated state offers for `key`.
pub fn view(state: &StateData, me: NodeId, key: &ContainerKey) -> View {
    let mut v = View::default();
    for i in state.instances_of(key.namespace(), key.name()) {
        let Some(st) = state.statuses.get(&i.id) else {
            continue;
        };
        if !st.state.routable() {
            continue;
        }
        if i.node == me {
            if let Some(addr) = instance_addr(&st.ip, st.port) {
                v.local.push((i.id.clone(), addr));
            }
        } else if let Some(rec) = state.nodes.get(&i.node) {
            if !state.node_state(i.node).down {
                // Hops go to the node's hop listener (older records: its mesh).
                let hop = if rec.hop_addr.is_empty() {
                    &rec.http_addr
                } else {
                    &rec.hop_addr
                };
                v.remote.entry(i.node).or_insert((0, hop.clone())).0 += 1;
            }
        }
    }
    v
}

/// Where a local instance answers, from its status.
pub fn instance_addr(ip: &str, port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok()?;
    let ip: Ipv4Addr = if ip.is_empty() {
        Ipv4Addr::LOCALHOST
    } else {
        ip.parse().ok()?
    };
    Some(SocketAddr::from((ip, port)))
}

/// Where to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The local instance at this index of `view.local`.
    Local(usize),
    /// Another node's mesh.
    Remote { node: NodeId, addr: String },
    /// Wait: every instance is busy (`any_ready`) or there is none.
    Wait { any_ready: bool },
}

/// Picks the least-loaded local instance with a free slot; else, unless the
/// request already hopped, another node in proportion to its ready
/// instances (`roll` is a random number). `loads[i]` is the in-flight count
/// of `view.local[i]`.
pub fn choose(view: &View, loads: &[usize], limit: usize, hop: bool, roll: u32) -> Choice {
    let indexed: Vec<(usize, usize)> = loads.iter().copied().enumerate().collect();
    if let Some(ix) = least_loaded(&indexed, limit) {
        return Choice::Local(ix);
    }
    if hop || view.remote.is_empty() {
        return Choice::Wait {
            any_ready: view.any_ready(),
        };
    }
    let total: usize = view.remote.values().map(|(n, _)| n).sum();
    let mut n = roll as usize % total.max(1);
    for (node, (count, addr)) in &view.remote {
        if n < *count {
            return Choice::Remote {
                node: *node,
                addr: addr.clone(),
            };
        }
        n -= count;
    }
    Choice::Wait { any_ready: true }
}

/// Where a request goes.
pub enum Target {
    /// A local instance, with one of its slots held.
    Local {
        id: String,
        addr: SocketAddr,
        slot: SlotGuard,
    },
    /// Another node's mesh (the request hops there).
    Remote { node: NodeId, addr: String },
}

pub struct Activator {
    cluster: Arc<Cluster>,
    local: Arc<LocalInstances>,
    resumer: Resumer,
    /// Serialises resumes on this node.
    resuming: AsyncMutex<()>,
}

impl Activator {
    pub fn new(cluster: Arc<Cluster>, local: Arc<LocalInstances>, resumer: Resumer) -> Self {
        Activator {
            cluster,
            local,
            resumer,
            resuming: AsyncMutex::new(()),
        }
    }

    /// Waits until `route`'s request has somewhere to go. `hop`: it came
    /// from another node and is served by local instances only.
    pub async fn target(
        &self,
        route: &Route,
        hop: bool,
        demand: &Demand,
    ) -> Result<Target, MeshError> {
        let freed = self.local.freed(&route.key);
        let (mut activated, mut queued, mut seen) = (false, false, 0u64);
        loop {
            let notified = freed.notified();
            let mut v = {
                let sm = self.cluster.sm.read();
                let mut v = view(&sm.data, self.cluster.id, &route.key);
                // Instances this node saw answering whose status the cluster
                // has not committed yet (a cold start in its last step).
                for (id, addr) in self.local.answering(&route.key) {
                    let pending = sm.data.statuses.get(&id).is_none_or(|s| {
                        matches!(
                            s.state,
                            InstanceState::Pending | InstanceState::Pulling | InstanceState::Starting
                        )
                    });
                    let placed_here = sm.data.instances.get(&id).is_some_and(|i| i.node == self.cluster.id);
                    if pending && placed_here && !v.local.iter().any(|(l, _)| *l == id) {
                        v.local.push((id, addr));
                    }
                }
                v
            };
            v.local.retain(|(id, _)| !self.local.is_retired(id));
            let loads: Vec<usize> = v
                .local
                .iter()
                .map(|(id, _)| self.local.in_flight(id))
                .collect();
            match choose(&v, &loads, route.max_concurrency, hop, rand::random()) {
                Choice::Local(ix) => {
                    let (id, addr) = v.local[ix].clone();
                    // Another request may have taken the slot meanwhile.
                    let Some(slot) = self
                        .local
                        .try_acquire(&route.key, &id, route.max_concurrency)
                    else {
                        continue;
                    };
                    self.wake(&id).await?;
                    return Ok(Target::Local { id, addr, slot });
                }
                Choice::Remote { node, addr } => return Ok(Target::Remote { node, addr }),
                Choice::Wait { any_ready: true } => {
                    if !queued {
                        if demand.of(&route.key) > QUEUE_CAP {
                            return Err(MeshError::QueueFull(route.key.clone(), QUEUE_CAP));
                        }
                        queued = true;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
                }
                Choice::Wait { any_ready: false } => {
                    if !activated && !hop {
                        activated = true;
                        self.scale_from_zero(&route.key).await;
                    }
                    // Woken by the cluster's next change, or by a local
                    // instance that starts answering.
                    tokio::select! {
                        _ = self.cluster.applied_change(&mut seen, Duration::from_millis(100)) => {}
                        _ = notified => {}
                    }
                }
            }
        }
    }

    /// Cold start: asks the cluster for at least one instance.
    async fn scale_from_zero(&self, key: &ContainerKey) {
        let target = self
            .cluster
            .sm
            .read()
            .data
            .containers
            .get(key)
            .map(|c| (c.target_scale(), c.desired_scale));
        if let Some((0, desired)) = target {
            tracing::info!(
                namespace = key.namespace(),
                container = key.name(),
                "cold start: scaling from zero"
            );
            let cmd = Command::Scale {
                namespace: key.namespace().into(),
                name: key.name().into(),
                replicas: desired.max(1),
                reason: Some("a request while scaled to zero".into()),
            };
            if let Err(e) = self.cluster.write(cmd).await {
                tracing::debug!(error = %e, "scale from zero");
            }
        }
    }

    /// Thaws a suspended local instance before a request goes to it.
    async fn wake(&self, id: &str) -> Result<(), MeshError> {
        if !self.local.is_suspended(id) {
            return Ok(());
        }
        let _one = self.resuming.lock().await;
        if !self.local.is_suspended(id) {
            return Ok(());
        }
        let t = std::time::Instant::now();
        crate::local::resume(&self.resumer, id)
            .await
            .map_err(|message| MeshError::Resume {
                id: id.to_string(),
                message,
            })?;
        tracing::info!(instance = id, took = ?t.elapsed(), "resumed suspended instance");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{
        Command, ContainerSpec, Instance, InstanceState, InstanceStatus, NodeRecord, Proposal,
    };

    fn world() -> StateData {
        let mut s = StateData::default();
        let mut apply = |c| {
            let r = s.apply(&Proposal::new(1, c));
            assert!(r.rejection.is_none(), "{r:?}");
        };
        apply(Command::CreateNamespace {
            name: "ns".into(),
            env: Default::default(),
        });
        apply(Command::PutContainer {
            namespace: "ns".into(),
            name: "web".into(),
            spec: ContainerSpec::with_image("i"),
            expected_revision: None,
        });
        for id in 1..=3 {
            apply(Command::RegisterNode {
                node: NodeRecord {
                    id,
                    http_addr: format!("10.0.0.{id}:8080"),
                    ..Default::default()
                },
            });
        }
        let generation = s.container("ns", "web").unwrap().generation;
        let add = [("a", 1), ("b", 2), ("c", 2), ("d", 3)]
            .iter()
            .map(|(id, node)| Instance {
                id: id.to_string(),
                namespace: "ns".into(),
                container: "web".into(),
                generation,
                node: *node,
                created_at_ms: 1,
            })
            .collect();
        s.apply(&Proposal::new(
            2,
            Command::PlaceInstances {
                add,
                remove: vec![],
            },
        ));
        for (id, node, state) in [
            ("a", 1, InstanceState::Ready),
            ("b", 2, InstanceState::Suspended),
            ("c", 2, InstanceState::Starting),
            ("d", 3, InstanceState::Ready),
        ] {
            s.apply(&Proposal::new(
                3,
                Command::ReportInstanceStatus {
                    id: id.into(),
                    node,
                    status: InstanceStatus {
                        state,
                        port: 9000,
                        ip: "10.0.0.9".into(),
                        ..Default::default()
                    },
                },
            ));
        }
        s
    }

    #[test]
    fn view_counts_routable_instances_on_live_nodes() {
        let mut s = world();
        let k = ContainerKey::new("ns", "web");
        let v = view(&s, 1, &k);
        assert_eq!(
            v.local,
            vec![("a".to_string(), "10.0.0.9:9000".parse().unwrap())]
        );
        assert_eq!(instance_addr("", 7), Some("127.0.0.1:7".parse().unwrap()), "host mode");
        assert_eq!(
            v.remote.keys().copied().collect::<Vec<_>>(),
            vec![2, 3],
            "suspended counts, starting does not"
        );
        assert_eq!(v.remote[&2].0, 1);
        s.apply(&Proposal::new(
            4,
            Command::SetNodeState {
                id: 3,
                down: Some(true),
                cordoned: None,
                draining: None,
            },
        ));
        assert!(!view(&s, 1, &k).remote.contains_key(&3), "down node");
    }

    #[test]
    fn choose_prefers_local_then_remote_then_waits() {
        let s = world();
        let v = view(&s, 1, &ContainerKey::new("ns", "web"));
        assert_eq!(choose(&v, &[0], 1, false, 0), Choice::Local(0));
        // Local busy: another node, by roll.
        assert!(matches!(
            choose(&v, &[1], 1, false, 0),
            Choice::Remote { node: 2, .. }
        ));
        assert!(matches!(
            choose(&v, &[1], 1, false, 1),
            Choice::Remote { node: 3, .. }
        ));
        // A hop never hops again.
        assert_eq!(
            choose(&v, &[1], 1, true, 0),
            Choice::Wait { any_ready: true }
        );
        let empty = View::default();
        assert_eq!(
            choose(&empty, &[], 1, false, 0),
            Choice::Wait { any_ready: false }
        );
    }
}
