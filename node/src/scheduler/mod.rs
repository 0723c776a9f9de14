//! Placement: a pure function from the replicated state to a plan, which
//! the leader validates (apply re-checks every precondition) and commits
//! through Raft as one `PlaceInstances` command per pass.
//!
//! ```text
//!  for each container:  want = clamp(max(min_scale, desired_scale), max_scale)
//!    keep    = current-generation instances on up, non-draining nodes
//!    place   = want - keep, each on the best eligible node:
//!                eligible: up, not cordoned or draining, in the container's
//!                region (if set), cpu and memory fit (× overcommit)
//!                best:     fewest of its instances in the zone, then on the
//!                          node, then a node that already runs its image,
//!                          then the least allocated cpu
//!    remove  = extras; instances on down nodes at once; older generations
//!              and instances on draining nodes once `want` others are ready
//!    pending = why `place` fell short, shown by `container get`
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::state::{Container, ContainerKey, Instance, NodeId, StateData};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<Instance>,
    pub remove: Vec<String>,
    /// Containers whose pending reason changes: (namespace, name, reason).
    pub pending: Vec<(String, String, Option<String>)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Scheduler settings (the leader's).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Capacity multiplier: 1.0 never overcommits.
    pub overcommit: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { overcommit: 1.0 }
    }
}

/// An instance id: readable, unique, a valid containerd id and hostname.
pub fn instance_id(c: &Container, suffix: u32) -> String {
    let ns: String = c.namespace.chars().take(20).collect();
    let name: String = c.name.chars().take(30).collect();
    format!(
        "{}-{}-{suffix:08x}",
        ns.trim_end_matches('-'),
        name.trim_end_matches('-')
    )
}

#[derive(Default, Clone, Copy)]
struct Load {
    cpu: u64,
    mem: u64,
}

/// Computes the plan. `suffix` supplies random id suffixes (the leader's
/// RNG; tests pass a counter).
pub fn plan(state: &StateData, now_ms: u64, params: Params, suffix: impl FnMut() -> u32) -> Plan {
    plan_with(state, now_ms, params, &BTreeMap::new(), suffix)
}

/// [`plan`], knowing how many instances of each container are still
/// draining on nodes after leaving the state (a scale-down): they count
/// against max-scale, which is a ceiling on instances serving, starting or
/// stopping — except during a rollout to a new generation, when the old
/// ones drain beside up to max-scale new ones.
pub fn plan_with(
    state: &StateData,
    now_ms: u64,
    params: Params,
    draining: &BTreeMap<ContainerKey, usize>,
    mut suffix: impl FnMut() -> u32,
) -> Plan {
    let mut p = Plan::default();
    let mut load: BTreeMap<NodeId, Load> = state
        .nodes
        .keys()
        .map(|id| (*id, Load::default()))
        .collect();
    let mut images_on: BTreeSet<(NodeId, &str)> = BTreeSet::new();
    // Through the containers (each instance once, by the index): an
    // instance whose container is gone holds nothing.
    for c in state.containers.values() {
        for i in state.instances_of(&c.namespace, &c.name) {
            if let Some(l) = load.get_mut(&i.node) {
                l.cpu += u64::from(c.spec.cpu_mvcpu);
                l.mem += u64::from(c.spec.memory_mb);
            }
            if let Some(img) = &c.resolved_image {
                images_on.insert((i.node, img.as_str()));
            }
        }
    }
    let cap = |v: u32| (f64::from(v) * params.overcommit) as u64;
    for c in state.containers.values() {
        let mine: Vec<&Instance> = state.instances_of(&c.namespace, &c.name).collect();
        let want = c.target_scale() as usize;
        let up =
            |i: &&Instance| state.nodes.contains_key(&i.node) && !state.node_state(i.node).down;
        // Instances on down nodes serve nothing: replace them now.
        p.remove
            .extend(mine.iter().filter(|i| !up(i)).map(|i| i.id.clone()));
        let live: Vec<&Instance> = mine.iter().copied().filter(up).collect();
        let (keep, leaving): (Vec<&Instance>, Vec<&Instance>) = live
            .iter()
            .copied()
            .partition(|i| i.generation == c.generation && !state.node_state(i.node).draining);
        let rolling = live.iter().any(|i| i.generation != c.generation);
        let want = if rolling {
            want
        } else {
            let stopping = draining
                .get(&ContainerKey::new(&c.namespace, &c.name))
                .copied()
                .unwrap_or(0);
            want.min(
                (c.spec.max_scale as usize)
                    .saturating_sub(stopping)
                    .max(keep.len()),
            )
        };
        let mut reason = None;
        if keep.len() < want {
            let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
            let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
            for i in &keep {
                *per_node.entry(i.node).or_default() += 1;
                if let Some(n) = state.nodes.get(&i.node) {
                    *per_zone.entry(n.zone.clone()).or_default() += 1;
                }
            }
            for _ in keep.len()..want {
                let mut why = Vec::new();
                let eligible: Vec<_> = state
                    .nodes
                    .values()
                    .filter(|n| {
                        let st = state.node_state(n.id);
                        if !st.schedulable() {
                            return false;
                        }
                        if let Some(r) = &c.spec.region {
                            if &n.region != r {
                                return false;
                            }
                        }
                        let l = load.get(&n.id).copied().unwrap_or_default();
                        let fits = l.cpu + u64::from(c.spec.cpu_mvcpu) <= cap(n.cpu_capacity_mvcpu)
                            && l.mem + u64::from(c.spec.memory_mb) <= cap(n.memory_capacity_mb);
                        if !fits {
                            why.push(n.id);
                        }
                        fits
                    })
                    .collect();
                let pick = eligible
                    .iter()
                    .min_by_key(|n| {
                        let l = load.get(&n.id).copied().unwrap_or_default();
                        let frac = l.cpu * 1000 / u64::from(n.cpu_capacity_mvcpu.max(1));
                        let has_image = c
                            .resolved_image
                            .as_ref()
                            .is_some_and(|img| images_on.contains(&(n.id, img.as_str())));
                        (
                            per_zone.get(&n.zone).copied().unwrap_or(0),
                            per_node.get(&n.id).copied().unwrap_or(0),
                            !has_image,
                            frac,
                            n.id,
                        )
                    })
                    .map(|n| (n.id, n.zone.clone()));
                let Some((node, zone)) = pick else {
                    let placed = keep.len()
                        + p.add
                            .iter()
                            .filter(|a| a.namespace == c.namespace && a.container == c.name)
                            .count();
                    let mut r = format!("{placed} of {want} instances placed: ");
                    let schedulable = state
                        .nodes
                        .values()
                        .filter(|n| state.node_state(n.id).schedulable())
                        .count();
                    if schedulable == 0 {
                        r.push_str("no node is up and schedulable");
                    } else if let Some(region) = c
                        .spec
                        .region
                        .as_ref()
                        .filter(|r| !state.nodes.values().any(|n| &&n.region == r))
                    {
                        r.push_str(&format!("no node in region {region:?}"));
                    } else {
                        r.push_str(&format!(
                            "no node has {} mVCPU and {} MB free{}",
                            c.spec.cpu_mvcpu,
                            c.spec.memory_mb,
                            c.spec
                                .region
                                .as_ref()
                                .map(|r| format!(" in region {r:?}"))
                                .unwrap_or_default()
                        ));
                    }
                    reason = Some(r);
                    break;
                };
                *per_node.entry(node).or_default() += 1;
                *per_zone.entry(zone).or_default() += 1;
                if let Some(l) = load.get_mut(&node) {
                    l.cpu += u64::from(c.spec.cpu_mvcpu);
                    l.mem += u64::from(c.spec.memory_mb);
                }
                if let Some(img) = &c.resolved_image {
                    images_on.insert((node, img.as_str()));
                }
                p.add.push(Instance {
                    id: instance_id(c, suffix()),
                    namespace: c.namespace.clone(),
                    container: c.name.clone(),
                    generation: c.generation,
                    node,
                    created_at_ms: now_ms,
                });
            }
        } else if keep.len() > want {
            let mut extra = keep.clone();
            extra.sort_by_key(|i| std::cmp::Reverse((i.created_at_ms, i.id.clone())));
            p.remove.extend(
                extra
                    .into_iter()
                    .take(keep.len() - want)
                    .map(|i| i.id.clone()),
            );
        }
        let ready = keep
            .iter()
            .filter(|i| {
                state
                    .statuses
                    .get(&i.id)
                    .is_some_and(|s| s.state.routable())
            })
            .count();
        if !leaving.is_empty() && (ready >= want || want == 0) {
            p.remove.extend(leaving.iter().map(|i| i.id.clone()));
        }
        if reason != c.pending_reason {
            p.pending
                .push((c.namespace.clone(), c.name.clone(), reason));
        }
    }
    p
}

#[cfg(test)]
mod tests;
