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

use crate::state::{Container, Instance, NodeId, StateData};

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
pub fn plan(
    state: &StateData,
    now_ms: u64,
    params: Params,
    mut suffix: impl FnMut() -> u32,
) -> Plan {
    let mut p = Plan::default();
    let mut load: BTreeMap<NodeId, Load> = state
        .nodes
        .keys()
        .map(|id| (*id, Load::default()))
        .collect();
    let mut images_on: BTreeSet<(NodeId, String)> = BTreeSet::new();
    for i in state.instances.values() {
        if let Some(c) = state.container(&i.namespace, &i.container) {
            if let Some(l) = load.get_mut(&i.node) {
                l.cpu += u64::from(c.spec.cpu_mvcpu);
                l.mem += u64::from(c.spec.memory_mb);
            }
            if let Some(img) = &c.resolved_image {
                images_on.insert((i.node, img.clone()));
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
                            .is_some_and(|img| images_on.contains(&(n.id, img.clone())));
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
                    images_on.insert((node, img.clone()));
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
mod tests {
    use super::*;
    use crate::state::{
        Command, ContainerSpec, InstanceState, InstanceStatus, NodeRecord, Proposal,
    };

    fn state(nodes: &[(NodeId, u32, u32)]) -> StateData {
        let mut s = StateData::default();
        for (id, cpu, mem) in nodes {
            s.apply(&Proposal::new(
                0,
                Command::RegisterNode {
                    node: NodeRecord {
                        id: *id,
                        cpu_capacity_mvcpu: *cpu,
                        memory_capacity_mb: *mem,
                        ..Default::default()
                    },
                },
            ));
        }
        s.apply(&Proposal::new(
            0,
            Command::CreateNamespace {
                name: "n".into(),
                env: Default::default(),
            },
        ));
        s
    }

    fn deploy(s: &mut StateData, name: &str, min: u32, cpu: u32) {
        let mut spec = ContainerSpec::with_image("img");
        spec.min_scale = min;
        spec.max_scale = min.max(1);
        spec.cpu_mvcpu = cpu;
        spec.memory_mb = 64;
        let r = s.apply(&Proposal::new(
            0,
            Command::PutContainer {
                namespace: "n".into(),
                name: name.into(),
                spec,
                expected_revision: None,
            },
        ));
        assert_eq!(r.rejection, None);
    }

    fn commit(s: &mut StateData, p: &Plan) {
        s.apply(&Proposal::new(
            1,
            Command::PlaceInstances {
                add: p.add.clone(),
                remove: p.remove.clone(),
            },
        ));
    }

    fn counter() -> impl FnMut() -> u32 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn min_scale_is_spread_over_nodes() {
        let mut s = state(&[(1, 4000, 4096), (2, 4000, 4096), (3, 4000, 4096)]);
        deploy(&mut s, "web", 3, 500);
        let p = plan(&s, 5, Params::default(), counter());
        let nodes: Vec<NodeId> = p.add.iter().map(|i| i.node).collect();
        assert_eq!(nodes, [1, 2, 3]);
        assert_eq!(p.add[0].id, "n-web-00000001");
        commit(&mut s, &p);
        assert!(
            plan(&s, 6, Params::default(), counter()).is_empty(),
            "a satisfied state plans nothing"
        );
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let mut s = state(&[(1, 1000, 4096)]);
        deploy(&mut s, "big", 3, 400);
        let p = plan(&s, 0, Params::default(), counter());
        assert_eq!(p.add.len(), 2, "only two 400 mVCPU instances fit in 1000");
        assert_eq!(p.pending.len(), 1);
        assert!(
            p.pending[0].2.as_deref().unwrap().contains("400 mVCPU"),
            "{:?}",
            p.pending
        );
    }

    #[test]
    fn scale_down_and_generation_replacement() {
        let mut s = state(&[(1, 8000, 8192), (2, 8000, 8192)]);
        deploy(&mut s, "web", 2, 100);
        let p = plan(&s, 1, Params::default(), counter());
        commit(&mut s, &p);
        let old: Vec<String> = p.add.iter().map(|i| i.id.clone()).collect();
        // A new image: new generation; old instances stay until new ones are ready.
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.image = "img:2".into();
        s.apply(&Proposal::new(
            2,
            Command::PutContainer {
                namespace: "n".into(),
                name: "web".into(),
                spec,
                expected_revision: None,
            },
        ));
        let p2 = plan(&s, 3, Params::default(), || 100);
        assert_eq!(p2.add.len(), 2);
        assert!(p2.remove.is_empty());
        let mut n = 200;
        let p2 = plan(&s, 3, Params::default(), || {
            n += 1;
            n
        });
        commit(&mut s, &p2);
        for i in &p2.add {
            let st = InstanceStatus {
                state: InstanceState::Ready,
                ..Default::default()
            };
            s.apply(&Proposal::new(
                4,
                Command::ReportInstanceStatus {
                    id: i.id.clone(),
                    node: i.node,
                    status: st,
                },
            ));
        }
        let p3 = plan(&s, 5, Params::default(), counter());
        let mut removed = p3.remove.clone();
        removed.sort();
        let mut want = old.clone();
        want.sort();
        assert_eq!(removed, want);
        commit(&mut s, &p3);
        // Scale to one: the newest extra goes.
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.min_scale = 1;
        s.apply(&Proposal::new(
            6,
            Command::PutContainer {
                namespace: "n".into(),
                name: "web".into(),
                spec,
                expected_revision: None,
            },
        ));
        let p4 = plan(&s, 7, Params::default(), counter());
        assert_eq!(p4.remove.len(), 1);
        assert!(p4.add.is_empty());
    }

    fn zoned(nodes: &[(NodeId, &str, &str)]) -> StateData {
        let mut s = StateData::default();
        for (id, zone, region) in nodes {
            s.apply(&Proposal::new(
                0,
                Command::RegisterNode {
                    node: NodeRecord {
                        id: *id,
                        zone: zone.to_string(),
                        region: region.to_string(),
                        cpu_capacity_mvcpu: 4000,
                        memory_capacity_mb: 4096,
                        ..Default::default()
                    },
                },
            ));
        }
        s.apply(&Proposal::new(
            0,
            Command::CreateNamespace {
                name: "n".into(),
                env: Default::default(),
            },
        ));
        s
    }

    fn ready_all(s: &mut StateData, p: &Plan) {
        for i in &p.add {
            let st = InstanceStatus {
                state: InstanceState::Ready,
                ..Default::default()
            };
            s.apply(&Proposal::new(
                1,
                Command::ReportInstanceStatus {
                    id: i.id.clone(),
                    node: i.node,
                    status: st,
                },
            ));
        }
    }

    #[test]
    fn zones_first_then_nodes() {
        // Two nodes in zone a, one in zone b: three instances go a, b, a.
        let mut s = zoned(&[(1, "a", "r"), (2, "a", "r"), (3, "b", "r")]);
        deploy(&mut s, "web", 2, 100);
        let p = plan(&s, 0, Params::default(), counter());
        let zones: BTreeSet<String> = p
            .add
            .iter()
            .map(|i| s.nodes[&i.node].zone.clone())
            .collect();
        assert_eq!(
            zones.len(),
            2,
            "two instances spread over both zones: {:?}",
            p.add
        );
    }

    #[test]
    fn image_locality_breaks_ties() {
        let mut s = zoned(&[(1, "a", "r"), (2, "a", "r")]);
        deploy(&mut s, "base", 1, 100);
        let g = s.container("n", "base").unwrap().generation;
        let r = s.apply(&Proposal::new(
            0,
            Command::PinImage {
                namespace: "n".into(),
                name: "base".into(),
                generation: g,
                image: "img@sha256:1".into(),
            },
        ));
        assert_eq!(r.rejection, None);
        let p = plan(&s, 0, Params::default(), counter());
        commit(&mut s, &p);
        let base_node = p.add[0].node;
        assert_eq!(base_node, 1);
        // Load node 1 more than node 2 so only locality can pick it.
        deploy(&mut s, "heavy", 1, 2000);
        let p = plan(&s, 0, Params::default(), || 5);
        commit(&mut s, &p);
        assert_eq!(p.add[0].node, 2, "least loaded first");
        deploy(&mut s, "heavier", 1, 2500);
        let p = plan(&s, 0, Params::default(), || 6);
        commit(&mut s, &p);
        assert_eq!(p.add[0].node, 1, "only node 1 has room");
        // Another container pinned to the same image prefers that node,
        // even though it is more loaded.
        deploy(&mut s, "web", 1, 100);
        let g = s.container("n", "web").unwrap().generation;
        s.apply(&Proposal::new(
            0,
            Command::PinImage {
                namespace: "n".into(),
                name: "web".into(),
                generation: g,
                image: "img@sha256:1".into(),
            },
        ));
        let p = plan(&s, 0, Params::default(), || 77);
        assert_eq!(p.add[0].node, base_node);
    }

    #[test]
    fn region_affinity_and_pending_reason() {
        let mut s = zoned(&[(1, "a", "eu"), (2, "b", "us")]);
        let mut spec = ContainerSpec::with_image("img");
        spec.min_scale = 2;
        spec.region = Some("us".into());
        s.apply(&Proposal::new(
            0,
            Command::PutContainer {
                namespace: "n".into(),
                name: "web".into(),
                spec,
                expected_revision: None,
            },
        ));
        let p = plan(&s, 0, Params::default(), counter());
        assert!(p.add.iter().all(|i| i.node == 2), "{:?}", p.add);
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.region = Some("ap".into());
        s.apply(&Proposal::new(
            0,
            Command::PutContainer {
                namespace: "n".into(),
                name: "web".into(),
                spec,
                expected_revision: None,
            },
        ));
        let p = plan(&s, 0, Params::default(), counter());
        assert!(p.add.is_empty());
        assert_eq!(
            p.pending[0].2.as_deref(),
            Some("0 of 2 instances placed: no node in region \"ap\"")
        );
        // Once recorded, an unchanged reason is not proposed again.
        s.apply(&Proposal::new(
            0,
            Command::SetPending {
                namespace: "n".into(),
                name: "web".into(),
                reason: p.pending[0].2.clone(),
            },
        ));
        assert!(plan(&s, 0, Params::default(), counter()).pending.is_empty());
    }

    #[test]
    fn down_nodes_lose_instances_and_cordoned_get_none() {
        let mut s = zoned(&[(1, "a", "r"), (2, "b", "r"), (3, "c", "r")]);
        deploy(&mut s, "web", 3, 100);
        let p = plan(&s, 0, Params::default(), counter());
        commit(&mut s, &p);
        let on2: Vec<String> = p
            .add
            .iter()
            .filter(|i| i.node == 2)
            .map(|i| i.id.clone())
            .collect();
        s.apply(&Proposal::new(
            1,
            Command::SetNodeState {
                id: 2,
                down: Some(true),
                cordoned: None,
                draining: None,
            },
        ));
        s.apply(&Proposal::new(
            1,
            Command::SetNodeState {
                id: 3,
                down: None,
                cordoned: Some(true),
                draining: None,
            },
        ));
        let p = plan(&s, 2, Params::default(), || 9);
        assert_eq!(p.remove, on2, "the down node's instance goes at once");
        assert_eq!(p.add.len(), 1);
        assert_eq!(
            p.add[0].node, 1,
            "not on the down node nor the cordoned one"
        );
    }

    #[test]
    fn drain_moves_instances_after_replacements_are_ready() {
        let mut s = zoned(&[(1, "a", "r"), (2, "b", "r")]);
        deploy(&mut s, "web", 1, 100);
        let p = plan(&s, 0, Params::default(), counter());
        commit(&mut s, &p);
        ready_all(&mut s, &p);
        let first = p.add[0].clone();
        s.apply(&Proposal::new(
            1,
            Command::SetNodeState {
                id: first.node,
                down: None,
                cordoned: None,
                draining: Some(true),
            },
        ));
        let p = plan(&s, 2, Params::default(), || 50);
        assert_eq!(p.add.len(), 1);
        assert_ne!(p.add[0].node, first.node);
        assert!(
            p.remove.is_empty(),
            "keep serving until the replacement is ready"
        );
        commit(&mut s, &p);
        ready_all(&mut s, &p);
        let p = plan(&s, 3, Params::default(), || 51);
        assert_eq!(p.remove, vec![first.id]);
        assert!(p.add.is_empty());
    }

    #[test]
    fn overcommit_ratio_stretches_capacity() {
        let mut s = state(&[(1, 1000, 4096)]);
        deploy(&mut s, "big", 3, 400);
        assert_eq!(plan(&s, 0, Params::default(), counter()).add.len(), 2);
        assert_eq!(
            plan(&s, 0, Params { overcommit: 1.5 }, counter()).add.len(),
            3
        );
    }
}
