use super::*;
use crate::state::{Command, ContainerSpec, InstanceState, InstanceStatus, NodeRecord, Proposal};

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

#[test]
fn instances_still_stopping_count_against_max_scale() {
    let mut s = state(&[(1, 8000, 8192), (2, 8000, 8192)]);
    deploy(&mut s, "web", 4, 100);
    let p = plan(&s, 5, Params::default(), counter());
    assert_eq!(p.add.len(), 4);
    commit(&mut s, &p);
    // Scaled down to one, three stopping; back up to four: only one more
    // until the three are gone.
    let scale = |s: &mut StateData, min: u32| {
        let mut spec = s.container("n", "web").unwrap().spec.clone();
        spec.min_scale = min;
        s.apply(&Proposal::new(
            2,
            Command::PutContainer {
                namespace: "n".into(),
                name: "web".into(),
                spec,
                expected_revision: None,
            },
        ));
    };
    scale(&mut s, 1);
    let down = plan(&s, 6, Params::default(), counter());
    assert_eq!(down.remove.len(), 3);
    commit(&mut s, &down);
    scale(&mut s, 4);
    let stopping = BTreeMap::from([(ContainerKey::new("n", "web"), 3)]);
    let up = plan_with(&s, 7, Params::default(), &stopping, counter());
    assert_eq!(up.add.len(), 0, "1 serving + 3 stopping = max-scale 4");
    let one_left = BTreeMap::from([(ContainerKey::new("n", "web"), 1)]);
    let up = plan_with(&s, 8, Params::default(), &one_left, counter());
    assert_eq!(up.add.len(), 2);
}
