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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;

use super::demand::Demand;
use super::error::MeshError;
use super::route::Route;
use crate::cluster::Cluster;
use crate::local::{LocalInstances, Resumer, SlotGuard};
use crate::state::{Command, ContainerKey, NodeId};
use crate::telemetry::ContainerMetrics;

/// Requests one container may queue on one node before 503.
pub const QUEUE_CAP: usize = 1000;

pub use super::choose::{
    choose, instance_addr, pick_remote, reserve_here, view, view_with_local, Choice, View,
};

/// Where a request goes.
pub enum Target {
    /// A local instance, with one of its slots held.
    Local {
        id: String,
        addr: SocketAddr,
        slot: SlotGuard,
    },
    /// Another node's mesh (the request hops there), where a slot is held
    /// for it under `reservation` (none: plenty of room there).
    Remote {
        node: NodeId,
        addr: String,
        reservation: Option<String>,
    },
}

/// How long a node keeps watching another node's freed slots for a
/// container after it last had a request waiting for one.
const WATCH_IDLE: Duration = Duration::from_secs(30);

pub struct Activator {
    cluster: Arc<Cluster>,
    local: Arc<LocalInstances>,
    resumer: Resumer,
    /// Serialises resumes on this node.
    resuming: AsyncMutex<()>,
    /// Per container: woken when a slot frees on another node's instance.
    remote_freed:
        parking_lot::Mutex<std::collections::HashMap<ContainerKey, Arc<tokio::sync::Notify>>>,
    /// Watches of other nodes' freed slots: (container, node) → last wanted.
    watching: Arc<
        parking_lot::Mutex<std::collections::HashMap<(ContainerKey, NodeId), tokio::time::Instant>>,
    >,
    /// Nodes whose mesh refused a connection lately: avoided until then.
    suspects: parking_lot::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>,
}

/// How long a node whose mesh refused a connection is avoided (the
/// cluster marks a dead node down after its liveness grace).
pub const SUSPECT_FOR: Duration = Duration::from_secs(5);

impl Activator {
    pub fn new(cluster: Arc<Cluster>, local: Arc<LocalInstances>, resumer: Resumer) -> Self {
        Activator {
            cluster,
            local,
            resumer,
            resuming: AsyncMutex::new(()),
            remote_freed: Default::default(),
            watching: Default::default(),
            suspects: Default::default(),
        }
    }

    /// `node`'s mesh refused a connection: route around it for a while.
    pub fn suspect(&self, node: NodeId) {
        self.suspects
            .lock()
            .insert(node, std::time::Instant::now() + SUSPECT_FOR);
    }

    /// Drops suspected nodes from a view.
    fn without_suspects(&self, mut v: View) -> View {
        let mut s = self.suspects.lock();
        let now = std::time::Instant::now();
        s.retain(|_, until| *until > now);
        if !s.is_empty() {
            v.remote.retain(|n, _| !s.contains_key(n));
        }
        v
    }

    fn remote_freed(&self, key: &ContainerKey) -> Arc<tokio::sync::Notify> {
        self.remote_freed
            .lock()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Waits until `route`'s request has somewhere to go: a free slot of a
    /// local instance, or one held for it on another node (the first to
    /// free anywhere in the cluster wins). `hop`: it came from another node
    /// (holding `reservation` here, normally) and is served locally only.
    pub async fn target(
        &self,
        route: &Route,
        hop: bool,
        mut reservation: Option<String>,
        demand: &Demand,
        metrics: &ContainerMetrics,
    ) -> Result<Target, MeshError> {
        // Counts the request as queued while it waits here (dropped on
        // return, whichever way).
        struct Queued<'a>(Option<&'a ContainerMetrics>);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                if let Some(m) = self.0 {
                    m.queued.dec();
                }
            }
        }
        let mut in_queue = Queued(None);
        let mut cold_since: Option<std::time::Instant> = None;
        let freed = self.local.freed(&route.key);
        let remote_freed = self.remote_freed(&route.key);
        let (mut activated, mut queued, mut seen) = (false, false, 0u64);
        loop {
            let notified = freed.notified();
            let remote_notified = remote_freed.notified();
            let v = self.without_suspects(view_with_local(
                &self.cluster.sm.read().data,
                self.cluster.id,
                &route.key,
                &self.local,
            ));
            if let Some((id, slot)) = reservation
                .take()
                .and_then(|t| self.local.take_reserved(&t))
            {
                if let Some((_, addr)) = v.local.iter().find(|(l, _)| *l == id) {
                    self.wake(&id, metrics).await?;
                    return Ok(Target::Local {
                        id,
                        addr: *addr,
                        slot,
                    });
                }
            }
            let loads: Vec<usize> = v
                .local
                .iter()
                .map(|(id, _)| self.local.in_flight(id))
                .collect();
            let any_ready = match choose(&v, &loads, route.max_concurrency) {
                Choice::Local(ix) => {
                    let (id, addr) = v.local[ix].clone();
                    // Another request may have taken the slot meanwhile.
                    let Some(slot) = self
                        .local
                        .try_acquire(&route.key, &id, route.max_concurrency)
                    else {
                        continue;
                    };
                    self.wake(&id, metrics).await?;
                    if let Some(t) = cold_since {
                        metrics.cold_start_wait.observe(t.elapsed().as_secs_f64());
                    }
                    return Ok(Target::Local { id, addr, slot });
                }
                Choice::Elsewhere { any_ready } => any_ready,
            };
            if !hop && !v.remote.is_empty() {
                // Far from full elsewhere (what this node sends is under half
                // of the other instances' slots): hop at once. Else ask for
                // a held slot, so that no request waits at a busy node while
                // another is idle.
                let remote_slots =
                    v.remote.values().map(|(n, _)| n).sum::<usize>() * route.max_concurrency;
                if demand.of(&route.key) * 2 <= remote_slots {
                    if let Some((node, addr)) = pick_remote(&v, rand::random()) {
                        return Ok(Target::Remote {
                            node,
                            addr,
                            reservation: None,
                        });
                    }
                }
                if let Some(t) = self.reserve_elsewhere(&route.key, &v).await {
                    return Ok(t);
                }
                self.watch_elsewhere(&route.key, &v);
            }
            if any_ready {
                if !queued {
                    if demand.of(&route.key) > QUEUE_CAP {
                        return Err(MeshError::QueueFull(route.key.clone(), QUEUE_CAP));
                    }
                    queued = true;
                    metrics.queued.inc();
                    in_queue.0 = Some(metrics);
                }
                // Woken by a slot freeing here or on another node.
                tokio::select! {
                    _ = notified => {}
                    _ = remote_notified => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            } else {
                if !activated && !hop {
                    activated = true;
                    if self.scale_from_zero(&route.key).await {
                        metrics.cold_starts.inc();
                        cold_since = Some(std::time::Instant::now());
                    }
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

    /// Asks the nodes with ready instances of `key` (in a random order) to
    /// hold a slot; the first that has one gets the request.
    async fn reserve_elsewhere(&self, key: &ContainerKey, v: &View) -> Option<Target> {
        let mut nodes: Vec<(NodeId, String, String)> = {
            let sm = self.cluster.sm.read();
            v.remote
                .iter()
                .filter_map(|(n, (_, hop_addr))| {
                    let api = sm.data.nodes.get(n)?.api_addr.clone();
                    Some((*n, hop_addr.clone(), api))
                })
                .collect()
        };
        let start = rand::random::<u32>() as usize % nodes.len().max(1);
        nodes.rotate_left(start);
        for (node, hop_addr, api) in nodes {
            let Ok(mut client) = self.cluster.pool.client(&api) else {
                continue;
            };
            let mut req = tonic::Request::new(rouse_proto::peer::ReserveRequest {
                namespace: key.namespace().into(),
                name: key.name().into(),
            });
            req.set_timeout(Duration::from_millis(500));
            if let Ok(r) = client.reserve(req).await {
                let token = r.into_inner().token;
                if !token.is_empty() {
                    return Some(Target::Remote {
                        node,
                        addr: hop_addr,
                        reservation: Some(token),
                    });
                }
            }
        }
        None
    }

    /// Keeps (or starts) a watch of each node with instances of `key`: an
    /// event from one wakes this node's requests waiting for `key`.
    fn watch_elsewhere(&self, key: &ContainerKey, v: &View) {
        let now = tokio::time::Instant::now();
        let apis: Vec<(NodeId, String)> = {
            let sm = self.cluster.sm.read();
            v.remote
                .keys()
                .filter_map(|n| Some((*n, sm.data.nodes.get(n)?.api_addr.clone())))
                .collect()
        };
        for (node, api) in apis {
            let slot = (key.clone(), node);
            if self.watching.lock().insert(slot.clone(), now).is_some() {
                continue;
            }
            let (watching, notify, pool, key) = (
                self.watching.clone(),
                self.remote_freed(key),
                self.cluster.pool.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let wanted = watching.lock().get(&slot).copied();
                    if wanted.is_none_or(|t| t.elapsed() > WATCH_IDLE) {
                        watching.lock().remove(&slot);
                        return;
                    }
                    let stream = match pool.client(&api) {
                        Ok(mut c) => c
                            .watch_freed(rouse_proto::peer::WatchFreedRequest {
                                namespace: key.namespace().into(),
                                name: key.name().into(),
                            })
                            .await
                            .ok()
                            .map(tonic::Response::into_inner),
                        Err(_) => None,
                    };
                    if let Some(mut events) = stream {
                        while let Ok(Some(_)) = events.message().await {
                            notify.notify_waiters();
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            });
        }
    }

    /// Cold start: asks the cluster for at least one instance. True when
    /// the container was at zero (this request starts it).
    async fn scale_from_zero(&self, key: &ContainerKey) -> bool {
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
                reason: Some(crate::state::COLD_START_REASON.into()),
            };
            if let Err(e) = self.cluster.write(cmd).await {
                tracing::debug!(error = %e, "scale from zero");
            }
            return true;
        }
        false
    }

    /// Thaws a suspended local instance before a request goes to it.
    async fn wake(&self, id: &str, metrics: &ContainerMetrics) -> Result<(), MeshError> {
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
        metrics.wakes.observe(t.elapsed().as_secs_f64());
        tracing::info!(instance = id, took = ?t.elapsed(), "resumed suspended instance");
        Ok(())
    }
}

#[cfg(test)]
#[path = "activate_tests.rs"]
mod tests;
