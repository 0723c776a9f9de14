//! Tests of [`super`]: what a node sees of a container's instances, and
//! where a request goes (local first, its zone, its region).

use super::*;
use crate::state::{
    Command, ContainerSpec, Instance, InstanceState, InstanceStatus, NodeRecord, Proposal,
    StateData,
};
use std::collections::BTreeSet;

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

/// Node 1 (zone a1) and 2 (zone a2) in region a, node 3 in region b;
/// instances a on 1 (ready), b on 2 (suspended), d on 3 (ready).
fn regions() -> StateData {
    let mut s = world();
    for (id, zone, region) in [(1, "a1", "a"), (2, "a2", "a"), (3, "b1", "b")] {
        let r = s.apply(&Proposal::new(
            5,
            Command::RegisterNode {
                node: NodeRecord {
                    id,
                    http_addr: format!("10.0.0.{id}:8080"),
                    zone: zone.into(),
                    region: region.into(),
                    ..Default::default()
                },
            },
        ));
        assert!(r.rejection.is_none(), "{r:?}");
    }
    s
}

fn remote(v: &View) -> Vec<NodeId> {
    v.remote.keys().copied().collect()
}

#[test]
fn local_first_keeps_a_region_s_requests_in_it_while_it_has_an_instance() {
    let mut s = regions();
    let k = ContainerKey::new("ns", "web");
    // From node 1: its own, then region a's node 2; never region b's.
    let v = view(&s, 1, &k);
    assert_eq!(v.local.len(), 1);
    assert_eq!(remote(&v), vec![2]);
    assert!(v.near.is_empty(), "node 2 is in another zone");
    // From node 3 (region b, its own instance ready): only itself.
    assert!(view(&s, 3, &k).remote.is_empty());
    // Routing "any": every node with a ready instance.
    let mut spec = s.container("ns", "web").unwrap().spec.clone();
    spec.routing = crate::state::Routing::Any;
    s.apply(&Proposal::new(
        6,
        Command::PutContainer {
            namespace: "ns".into(),
            name: "web".into(),
            spec,
            expected_revision: None,
        },
    ));
    assert_eq!(remote(&view(&s, 1, &k)), vec![2, 3]);
}

#[test]
fn local_first_fails_over_to_another_region_when_its_own_has_none() {
    let mut s = regions();
    let k = ContainerKey::new("ns", "web");
    // Region a loses its instances (a crashed, b's node down).
    s.apply(&Proposal::new(
        6,
        Command::ReportInstanceStatus {
            id: "a".into(),
            node: 1,
            status: InstanceStatus {
                state: InstanceState::Crashed,
                ..Default::default()
            },
        },
    ));
    s.apply(&Proposal::new(
        7,
        Command::SetNodeState {
            id: 2,
            down: Some(true),
            cordoned: None,
            draining: None,
        },
    ));
    let v = view(&s, 1, &k);
    assert!(v.local.is_empty());
    assert_eq!(remote(&v), vec![3], "to region b");
    assert_eq!(pick_remote(&v, 12345).map(|p| p.0), Some(3));
}

#[test]
fn a_hop_goes_to_its_own_zone_first() {
    let mut s = regions();
    // Node 2 moves to node 1's zone.
    s.apply(&Proposal::new(
        8,
        Command::RegisterNode {
            node: NodeRecord {
                id: 2,
                http_addr: "10.0.0.2:8080".into(),
                zone: "a1".into(),
                region: "a".into(),
                ..Default::default()
            },
        },
    ));
    let v = view(&s, 1, &ContainerKey::new("ns", "web"));
    assert_eq!(v.near, BTreeSet::from([2]));
    for roll in 0..20 {
        assert_eq!(pick_remote(&v, roll).map(|p| p.0), Some(2));
    }
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
    assert_eq!(
        instance_addr("", 7),
        Some("127.0.0.1:7".parse().unwrap()),
        "host mode"
    );
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
fn choose_prefers_a_free_local_slot() {
    let s = world();
    let v = view(&s, 1, &ContainerKey::new("ns", "web"));
    assert_eq!(choose(&v, &[0], 1), Choice::Local(0));
    // Local busy: elsewhere (the activator asks other nodes for a slot).
    assert_eq!(choose(&v, &[1], 1), Choice::Elsewhere { any_ready: true });
    let empty = View::default();
    assert_eq!(
        choose(&empty, &[], 1),
        Choice::Elsewhere { any_ready: false }
    );
}

#[test]
fn a_reserved_slot_is_held_for_the_hop_and_lapses() {
    let s = world();
    let local = LocalInstances::new();
    let key = ContainerKey::new("ns", "web");
    // Node 1's only ready instance is "a"; max concurrency is 80.
    let t = reserve_here(&s, 1, &key, &local).expect("a free slot");
    assert_eq!(local.in_flight("a"), 1, "held");
    let (id, slot) = local.take_reserved(&t).expect("taken once");
    assert_eq!(id, "a");
    assert!(local.take_reserved(&t).is_none(), "once");
    drop(slot);
    assert_eq!(local.in_flight("a"), 0);
    assert!(
        reserve_here(&s, 4, &key, &local).is_none(),
        "no instance on node 4"
    );
}
