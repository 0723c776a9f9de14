//! Where a request can go, seen from this node: the state's view of a
//! container's ready instances (with what only this node knows of its own),
//! the local choice, and the pick among other nodes. Pure but for the
//! local slot book.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use super::route::least_loaded;
use crate::local::LocalInstances;
use crate::state::{ContainerKey, InstanceState, NodeId, Routing, StateData};

/// Where a container's ready instances are, seen from this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// Local routable instances: id and where they answer (their address on
    /// the node's bridge, or the node's loopback in host mode).
    pub local: Vec<(String, SocketAddr)>,
    /// Other live nodes with routable instances: node → (count, mesh address).
    /// With local-first routing, only those in this node's region while the
    /// region has any ready instance.
    pub remote: BTreeMap<NodeId, (usize, String)>,
    /// Those of `remote` in this node's zone (local-first routing), which a
    /// request hopping at once goes to first.
    pub near: BTreeSet<NodeId>,
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
    prefer_near(state, me, key, &mut v);
    v
}

/// Local-first routing: other regions' nodes leave `v.remote` while this
/// node's region has a ready instance (its own included), and `v.near`
/// names those in its zone.
fn prefer_near(state: &StateData, me: NodeId, key: &ContainerKey, v: &mut View) {
    let local_first = state
        .containers
        .get(key)
        .is_none_or(|c| c.spec.routing == Routing::LocalFirst);
    if let (true, Some(mine)) = (local_first, state.nodes.get(&me)) {
        let place = |n: &NodeId| {
            state
                .nodes
                .get(n)
                .map(|r| (r.zone.as_str(), r.region.as_str()))
        };
        let in_region = |n: &NodeId| place(n).is_some_and(|(_, r)| r == mine.region);
        // A region with a ready instance keeps its requests.
        if !v.local.is_empty() || v.remote.keys().any(in_region) {
            v.remote.retain(|n, _| in_region(n));
        }
        v.near = v
            .remote
            .keys()
            .filter(|n| place(n).is_some_and(|(z, r)| z == mine.zone && r == mine.region))
            .copied()
            .collect();
    }
}

/// [`view`], with what only this node knows of its own instances: those it
/// saw answering before the cluster committed their status (a cold start
/// in its last step) are in, those it is draining are out.
pub fn view_with_local(
    state: &StateData,
    me: NodeId,
    key: &ContainerKey,
    local: &LocalInstances,
) -> View {
    let mut v = view(state, me, key);
    for (id, addr) in local.answering(key) {
        let pending = state.statuses.get(&id).is_none_or(|s| {
            matches!(
                s.state,
                InstanceState::Pending | InstanceState::Pulling | InstanceState::Starting
            )
        });
        let placed_here = state.instances.get(&id).is_some_and(|i| i.node == me);
        if pending && placed_here && !v.local.iter().any(|(l, _)| *l == id) {
            v.local.push((id, addr));
        }
    }
    v.local.retain(|(id, _)| !local.is_retired(id));
    prefer_near(state, me, key, &mut v);
    v
}

/// Holds a free slot of one of this node's instances of `key` for a
/// request about to hop here: the reservation's token, or None when every
/// local instance is busy (or there is none).
pub fn reserve_here(
    state: &StateData,
    me: NodeId,
    key: &ContainerKey,
    local: &LocalInstances,
) -> Option<String> {
    let limit = state.containers.get(key)?.spec.max_concurrency as usize;
    let v = view_with_local(state, me, key, local);
    let loads: Vec<(usize, usize)> = v
        .local
        .iter()
        .enumerate()
        .map(|(ix, (id, _))| (ix, local.in_flight(id)))
        .collect();
    let ix = least_loaded(&loads, limit)?;
    let id = &v.local[ix].0;
    let slot = local.try_acquire(key, id, limit)?;
    Some(local.reserve(id, slot))
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

/// What the local instances offer a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The local instance at this index of `view.local`.
    Local(usize),
    /// Every local instance is busy (or there is none): other nodes'
    /// instances (`remote` ones, asked for a slot unless the request already
    /// hopped), else wait. `any_ready`: some instance exists anywhere.
    Elsewhere { any_ready: bool },
}

/// The least-loaded local instance with a free slot, or else elsewhere.
/// `loads[i]` is the in-flight count of `view.local[i]`.
pub fn choose(view: &View, loads: &[usize], limit: usize) -> Choice {
    let indexed: Vec<(usize, usize)> = loads.iter().copied().enumerate().collect();
    match least_loaded(&indexed, limit) {
        Some(ix) => Choice::Local(ix),
        None => Choice::Elsewhere {
            any_ready: view.any_ready(),
        },
    }
}

/// Another node, in proportion to its ready instances (`roll` random).
pub fn pick_remote(view: &View, roll: u32) -> Option<(NodeId, String)> {
    // This node's zone first, when it has any.
    let candidates: Vec<(&NodeId, &(usize, String))> = view
        .remote
        .iter()
        .filter(|(n, _)| view.near.is_empty() || view.near.contains(n))
        .collect();
    let total: usize = candidates.iter().map(|(_, (n, _))| n).sum();
    let mut n = roll as usize % total.max(1);
    for (node, (count, addr)) in candidates {
        if n < *count {
            return Some((*node, addr.clone()));
        }
        n -= count;
    }
    None
}
