//! Properties of `apply` over random command sequences drawn from a small
//! world (two namespaces, two containers, three nodes, a few instance,
//! token and key ids), so that commands often hit objects that exist and
//! preconditions are exercised both ways:
//!
//! - replaying a log equals restoring a snapshot taken part-way and
//!   replaying the rest;
//! - a rejected command leaves the state (and its digest) unchanged;
//! - apply is deterministic: the same entries give the same responses and
//!   the same state.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("b".to_string())]
}

fn container() -> impl Strategy<Value = String> {
    prop_oneof![Just("x".to_string()), Just("y".to_string())]
}

fn node_id() -> impl Strategy<Value = NodeId> {
    1u64..=3
}

fn env() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[A-C]", "[0-2]", 0..3)
}

fn scope() -> impl Strategy<Value = Scope> {
    (name(), proptest::option::of(container())).prop_map(|(ns, c)| Scope::of(&ns, c.as_deref()))
}

fn envelope(seed: u8) -> crate::secrets::Envelope {
    crate::secrets::Envelope {
        nonce: vec![seed; 12],
        ciphertext: vec![seed; 20],
    }
}

fn spec() -> impl Strategy<Value = ContainerSpec> {
    (0u8..3, 0u32..3, 1u32..4, env()).prop_map(|(img, min, max, env)| ContainerSpec {
        min_scale: min,
        max_scale: max.max(min),
        env,
        ..ContainerSpec::with_image(format!("img:{img}"))
    })
}

fn instance() -> impl Strategy<Value = Instance> {
    (1u8..5, name(), container(), 0u64..30, node_id()).prop_map(|(i, ns, c, generation, node)| {
        Instance {
            id: format!("i{i}"),
            namespace: ns,
            container: c,
            generation,
            node,
            created_at_ms: 1,
        }
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (name(), env()).prop_map(|(name, env)| Command::CreateNamespace { name, env }),
        (name(), env(), proptest::option::of(0u64..20)).prop_map(|(name, env, r)| {
            Command::UpdateNamespace {
                name,
                env,
                expected_revision: r,
            }
        }),
        name().prop_map(|name| Command::DeleteNamespace { name }),
        (name(), container(), spec(), proptest::option::of(0u64..20)).prop_map(
            |(namespace, name, spec, r)| Command::PutContainer {
                namespace,
                name,
                spec,
                expected_revision: r,
            }
        ),
        (name(), container())
            .prop_map(|(namespace, name)| Command::DeleteContainer { namespace, name }),
        (node_id(), "[a-c]").prop_map(|(id, zone)| Command::RegisterNode {
            node: NodeRecord {
                id,
                zone,
                ..Default::default()
            }
        }),
        node_id().prop_map(|id| Command::RemoveNode { id }),
        (
            proptest::collection::vec(instance(), 0..3),
            proptest::collection::vec((1u8..5).prop_map(|i| format!("i{i}")), 0..2)
        )
            .prop_map(|(add, remove)| Command::PlaceInstances { add, remove }),
        ((1u8..5), node_id(), 0u8..4).prop_map(|(i, node, st)| {
            Command::ReportInstanceStatus {
                id: format!("i{i}"),
                node,
                status: InstanceStatus {
                    state: [
                        InstanceState::Starting,
                        InstanceState::Ready,
                        InstanceState::Crashed,
                        InstanceState::Suspended,
                    ][usize::from(st)],
                    cold_start: (st == 1).then_some(ColdStart {
                        total_ms: u64::from(i),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            }
        }),
        (name(), container(), 0u64..30, 0u8..2).prop_map(|(namespace, name, generation, i)| {
            Command::PinImage {
                namespace,
                name,
                generation,
                image: format!("img@sha256:{i}"),
            }
        }),
        (name(), container(), 0u32..4).prop_map(|(namespace, name, replicas)| Command::Scale {
            namespace,
            name,
            replicas,
            reason: None,
        }),
        (
            node_id(),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>())
        )
            .prop_map(|(id, down, cordoned)| Command::SetNodeState {
                id,
                down,
                cordoned,
                draining: None,
            }),
        (name(), container(), proptest::option::of("[a-b]")).prop_map(
            |(namespace, name, reason)| Command::SetPending {
                namespace,
                name,
                reason,
            }
        ),
        (0u8..2).prop_map(|s| Command::InitDataKey {
            wrapped: envelope(s)
        }),
        (scope(), "[A-B]", 0u8..3).prop_map(|(scope, k, v)| Command::SetSecrets {
            scope,
            entries: BTreeMap::from([(
                k,
                SealedSecret {
                    sealed: envelope(v),
                    fingerprint: format!("f{v}"),
                }
            )]),
        }),
        (scope(), "[A-B]").prop_map(|(scope, key)| Command::DeleteSecret { scope, key }),
        (0u8..3).prop_map(|i| Command::AddSigningKey {
            key: SigningKey {
                kid: format!("k{i}"),
                public_hex: "00".into(),
                sealed_private: envelope(i),
                created_at_ms: 1,
            }
        }),
        (0u8..3, name(), proptest::option::of(container())).prop_map(|(i, namespace, c)| {
            Command::CreateToken {
                record: TokenRecord {
                    id: format!("t{i}"),
                    namespace,
                    container: c,
                    expires_at_ms: 99,
                    created_at_ms: 1,
                    revoked: false,
                },
            }
        }),
        (0u8..3).prop_map(|i| Command::RevokeToken {
            id: format!("t{i}")
        }),
        (0u8..3, proptest::option::of(name())).prop_map(|(i, namespace)| {
            Command::CreateApiKey {
                key: ApiKey {
                    id: format!("k{i}"),
                    secret_sha256: "00".into(),
                    namespace,
                    created_at_ms: 1,
                    revoked: false,
                    last_used_at_ms: 0,
                },
            }
        }),
        (
            name(),
            proptest::option::of(0u32..3),
            proptest::option::of(0u32..3)
        )
            .prop_map(|(namespace, containers, secrets)| Command::SetQuota {
                namespace,
                quota: Quota {
                    containers,
                    secrets,
                    ..Default::default()
                },
            }),
        (0u8..3, 0u64..100).prop_map(|(i, at)| Command::TouchApiKeys {
            used: BTreeMap::from([(format!("k{i}"), at)]),
        }),
        (0u8..3).prop_map(|i| Command::RevokeApiKey {
            id: format!("k{i}")
        }),
        (0u8..2).prop_map(|i| Command::InitClusterCa {
            ca: ClusterCa {
                cert_pem: format!("ca{i}"),
                key: envelope(i),
            }
        }),
        (0u8..2, 0u64..50).prop_map(|(i, expires_ms)| Command::CreateJoinToken {
            token: JoinTokenRecord {
                id: format!("j{i}"),
                hash: "h".into(),
                created_ms: 1,
                expires_ms,
                used_by: None,
                issued: None,
            }
        }),
        (
            0u8..2,
            prop_oneof![Just("h"), Just("x")],
            node_id(),
            proptest::bool::ANY
        )
            .prop_map(|(i, hash, node, recorded)| Command::UseJoinToken {
                id: format!("j{i}"),
                hash: hash.into(),
                node,
                issued: recorded.then(|| IssuedCert {
                    cert_sha256: format!("c{node}"),
                    cert_pem: "pem".into(),
                    key_sha256: "k".into(),
                }),
            }),
    ]
}

/// A log: commands with increasing proposal times.
fn log() -> impl Strategy<Value = Vec<Proposal>> {
    proptest::collection::vec((command(), 0u64..3), 1..60).prop_map(|cmds| {
        let mut at = 0;
        cmds.into_iter()
            .map(|(c, step)| {
                at += step;
                Proposal::new(at, c)
            })
            .collect()
    })
}

fn replay(log: &[Proposal]) -> (StateData, Vec<Response>) {
    let mut s = StateData::default();
    let r = log.iter().map(|p| s.apply(p)).collect();
    (s, r)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replay_equals_snapshot_restore(log in log(), cut in 0usize..60) {
        let cut = cut.min(log.len());
        let (full, _) = replay(&log);
        let (head, _) = replay(&log[..cut]);
        // A snapshot is the state's encoding; restore and go on.
        let bytes = serde_json::to_vec(&head).unwrap();
        let mut restored: StateData = serde_json::from_slice(&bytes).unwrap();
        for p in &log[cut..] {
            restored.apply(p);
        }
        prop_assert_eq!(restored.digest(), full.digest());
        prop_assert_eq!(restored, full);
    }

    #[test]
    fn a_rejected_command_changes_nothing(log in log()) {
        let mut s = StateData::default();
        for p in &log {
            let before = s.clone();
            let digest = s.digest();
            let mut touched = Vec::new();
            let r = s.apply_tracked(p, &mut touched);
            if r.rejection.is_some() {
                prop_assert_eq!(s.digest(), digest, "{:?} was rejected but changed the state", p.command);
                prop_assert_eq!(&s, &before);
                prop_assert!(touched.is_empty(), "a rejected command reported changed keys");
                prop_assert_eq!(r.revision, before.revision);
            } else if s != before {
                prop_assert!(s.revision > before.revision, "a change must bump the revision");
            }
        }
    }

    #[test]
    fn apply_is_deterministic(log in log()) {
        let (a, ra) = replay(&log);
        let (b, rb) = replay(&log);
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a.digest(), b.digest());
        // And the log survives its own encoding (what Raft stores).
        let decoded: Vec<Proposal> = log
            .iter()
            .map(|p| serde_json::from_slice(&serde_json::to_vec(p).unwrap()).unwrap())
            .collect();
        let (c, _) = replay(&decoded);
        prop_assert_eq!(a, c);
    }
}
