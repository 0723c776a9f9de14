//! Placement: a pure function from the replicated state to a plan, which
//! the leader commits through Raft (`PlaceInstances`).
//!
//! This is the minimal placer: each container gets `min_scale` instances of
//! its current generation, spread over nodes (fewest instances of that
//! container first, then least allocated CPU), never past a node's CPU or
//! memory capacity. Instances of an older generation are removed once as
//! many of the current one are ready (or at once when none are wanted).

use std::collections::BTreeMap;

use crate::state::{Container, Instance, InstanceState, NodeId, StateData};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<Instance>,
    pub remove: Vec<String>,
    /// Containers short of instances, with the reason.
    pub pending: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// An instance id: readable, unique, a valid containerd id and hostname.
pub fn instance_id(c: &Container, suffix: u32) -> String {
    let ns: String = c.namespace.chars().take(20).collect();
    let name: String = c.name.chars().take(30).collect();
    format!("{}-{}-{suffix:08x}", ns.trim_end_matches('-'), name.trim_end_matches('-'))
}

#[derive(Default, Clone, Copy)]
struct Load {
    cpu: u64,
    mem: u64,
}

/// Computes the plan. `suffix` supplies random id suffixes (the leader's
/// RNG; tests pass a counter).
pub fn plan(state: &StateData, now_ms: u64, mut suffix: impl FnMut() -> u32) -> Plan {
    let mut p = Plan::default();
    let mut load: BTreeMap<NodeId, Load> = state.nodes.keys().map(|id| (*id, Load::default())).collect();
    for i in state.instances.values() {
        if let (Some(c), Some(l)) = (state.container(&i.namespace, &i.container), load.get_mut(&i.node)) {
            l.cpu += u64::from(c.spec.cpu_mvcpu);
            l.mem += u64::from(c.spec.memory_mb);
        }
    }
    for c in state.containers.values() {
        let mine: Vec<&Instance> = state.instances_of(&c.namespace, &c.name).collect();
        let (cur, old): (Vec<&Instance>, Vec<&Instance>) = mine.into_iter().partition(|i| i.generation == c.generation);
        let want = c.target_scale() as usize;
        let key = format!("{}/{}", c.namespace, c.name);
        if cur.len() < want {
            let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
            for i in &cur {
                *per_node.entry(i.node).or_default() += 1;
            }
            for _ in cur.len()..want {
                let pick = state
                    .nodes
                    .values()
                    .filter(|n| {
                        let l = load.get(&n.id).copied().unwrap_or_default();
                        l.cpu + u64::from(c.spec.cpu_mvcpu) <= u64::from(n.cpu_capacity_mvcpu)
                            && l.mem + u64::from(c.spec.memory_mb) <= u64::from(n.memory_capacity_mb)
                    })
                    .min_by_key(|n| {
                        let l = load.get(&n.id).copied().unwrap_or_default();
                        let frac = l.cpu * 1000 / u64::from(n.cpu_capacity_mvcpu.max(1));
                        (per_node.get(&n.id).copied().unwrap_or(0), frac, n.id)
                    })
                    .map(|n| n.id);
                let Some(node) = pick else {
                    p.pending.push((key.clone(), format!(
                        "no node has {} mVCPU and {} MB free", c.spec.cpu_mvcpu, c.spec.memory_mb
                    )));
                    break;
                };
                *per_node.entry(node).or_default() += 1;
                if let Some(l) = load.get_mut(&node) {
                    l.cpu += u64::from(c.spec.cpu_mvcpu);
                    l.mem += u64::from(c.spec.memory_mb);
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
        } else if cur.len() > want {
            let mut extra = cur.clone();
            extra.sort_by_key(|i| std::cmp::Reverse((i.created_at_ms, i.id.clone())));
            p.remove.extend(extra.into_iter().take(cur.len() - want).map(|i| i.id.clone()));
        }
        let ready = cur
            .iter()
            .filter(|i| state.statuses.get(&i.id).is_some_and(|s| s.state == InstanceState::Ready))
            .count();
        if !old.is_empty() && (ready >= want || want == 0) {
            p.remove.extend(old.iter().map(|i| i.id.clone()));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, ContainerSpec, InstanceStatus, NodeRecord, Proposal};

    fn state(nodes: &[(NodeId, u32, u32)]) -> StateData {
        let mut s = StateData::default();
        for (id, cpu, mem) in nodes {
            s.apply(&Proposal::new(0, Command::RegisterNode {
                node: NodeRecord { id: *id, cpu_capacity_mvcpu: *cpu, memory_capacity_mb: *mem, ..Default::default() },
            }));
        }
        s.apply(&Proposal::new(0, Command::CreateNamespace { name: "n".into(), env: Default::default() }));
        s
    }

    fn deploy(s: &mut StateData, name: &str, min: u32, cpu: u32) {
        let mut spec = ContainerSpec::with_image("img");
        spec.min_scale = min;
        spec.max_scale = min.max(1);
        spec.cpu_mvcpu = cpu;
        spec.memory_mb = 64;
        let r = s.apply(&Proposal::new(0, Command::PutContainer { namespace: "n".into(), name: name.into(), spec, expected_revision: None }));
        assert_eq!(r.rejection, None);
    }

    fn commit(s: &mut StateData, p: &Plan) {
        s.apply(&Proposal::new(1, Command::PlaceInstances { add: p.add.clone(), remove: p.remove.clone() }));
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
        let p = plan(&s, 5, counter());
        let nodes: Vec<NodeId> = p.add.iter().map(|i| i.node).collect();
        assert_eq!(nodes, [1, 2, 3]);
        assert_eq!(p.add[0].id, "n-web-00000001");
        commit(&mut s, &p);
        assert!(plan(&s, 6, counter()).is_empty(), "a satisfied state plans nothing");
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let mut s = state(&[(1, 1000, 4096)]);
        deploy(&mut s, "big", 3, 400);
        let p = plan(&s, 0, counter());
        assert_eq!(p.add.len(), 2, "only two 400 mVCPU instances fit in 1000");
        assert_eq!(p.pending.len(), 1);
        assert!(p.pending[0].1.contains("400 mVCPU"));
    }

    #[test]
    fn scale_down_and_generation_replacement() {
        let mut s = state(&[(1, 8000, 8192), (2, 8000, 8192)]);
        deploy(&mut s, "web", 2, 100);
        let p = plan(&s, 1, counter());
        commit(&mut s, &p);
        let old: Vec<String> = p.add.iter().map(|i| i.id.clone()).collect();
        // A new image: new generation; old instances stay until new ones are ready.
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.image = "img:2".into();
        s.apply(&Proposal::new(2, Command::PutContainer { namespace: "n".into(), name: "web".into(), spec, expected_revision: None }));
        let p2 = plan(&s, 3, || 100);
        assert_eq!(p2.add.len(), 2);
        assert!(p2.remove.is_empty());
        let mut n = 200;
        let p2 = plan(&s, 3, || { n += 1; n });
        commit(&mut s, &p2);
        for i in &p2.add {
            let st = InstanceStatus { state: InstanceState::Ready, ..Default::default() };
            s.apply(&Proposal::new(4, Command::ReportInstanceStatus { id: i.id.clone(), node: i.node, status: st }));
        }
        let p3 = plan(&s, 5, counter());
        let mut removed = p3.remove.clone();
        removed.sort();
        let mut want = old.clone();
        want.sort();
        assert_eq!(removed, want);
        commit(&mut s, &p3);
        // Scale to one: the newest extra goes.
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.min_scale = 1;
        s.apply(&Proposal::new(6, Command::PutContainer { namespace: "n".into(), name: "web".into(), spec, expected_revision: None }));
        let p4 = plan(&s, 7, counter());
        assert_eq!(p4.remove.len(), 1);
        assert!(p4.add.is_empty());
    }
}
