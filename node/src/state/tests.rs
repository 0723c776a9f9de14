use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn apply(s: &mut StateData, at_ms: u64, c: Command) -> Response {
    s.apply(&Proposal::new(at_ms, c))
}

fn create_ns(s: &mut StateData, name: &str) -> Response {
    apply(
        s,
        1,
        Command::CreateNamespace {
            name: name.into(),
            env: env(&[("A", "1")]),
        },
    )
}

fn put(s: &mut StateData, ns: &str, name: &str, expected: Option<u64>) -> Response {
    apply(
        s,
        7,
        Command::PutContainer {
            namespace: ns.into(),
            name: name.into(),
            spec: ContainerSpec::with_image("img:1"),
            expected_revision: expected,
        },
    )
}

#[test]
fn create_namespace_then_duplicate_is_rejected() {
    let mut s = StateData::default();
    let r = create_ns(&mut s, "a");
    assert_eq!(
        r,
        Response {
            revision: 1,
            rejection: None
        }
    );
    let ns = &s.namespaces["a"];
    assert_eq!(
        (ns.revision, ns.created_at_ms, ns.env["A"].as_str()),
        (1, 1, "1")
    );
    let r = create_ns(&mut s, "a");
    assert!(matches!(r.rejection, Some(Rejection::AlreadyExists(_))));
    assert_eq!(s.revision, 1, "a rejected command changes nothing");
}

#[test]
fn update_namespace_checks_existence_and_revision() {
    let mut s = StateData::default();
    let r = apply(
        &mut s,
        2,
        Command::UpdateNamespace {
            name: "x".into(),
            env: env(&[]),
            expected_revision: None,
        },
    );
    assert!(matches!(r.rejection, Some(Rejection::NotFound(_))));
    create_ns(&mut s, "x");
    let r = apply(
        &mut s,
        5,
        Command::UpdateNamespace {
            name: "x".into(),
            env: env(&[("B", "2")]),
            expected_revision: Some(9),
        },
    );
    assert!(matches!(r.rejection, Some(Rejection::Conflict(_))));
    let r = apply(
        &mut s,
        5,
        Command::UpdateNamespace {
            name: "x".into(),
            env: env(&[("B", "2")]),
            expected_revision: Some(1),
        },
    );
    assert_eq!(r.rejection, None);
    let ns = &s.namespaces["x"];
    assert_eq!(ns.env, env(&[("B", "2")]));
    assert_eq!((ns.revision, ns.created_at_ms, ns.updated_at_ms), (2, 1, 5));
}

#[test]
fn delete_namespace_requires_it_empty() {
    let mut s = StateData::default();
    let r = apply(&mut s, 1, Command::DeleteNamespace { name: "n".into() });
    assert!(matches!(r.rejection, Some(Rejection::NotFound(_))));
    create_ns(&mut s, "n");
    put(&mut s, "n", "c", Some(0));
    let r = apply(&mut s, 1, Command::DeleteNamespace { name: "n".into() });
    assert!(matches!(
        r.rejection,
        Some(Rejection::FailedPrecondition(_))
    ));
    apply(
        &mut s,
        1,
        Command::DeleteContainer {
            namespace: "n".into(),
            name: "c".into(),
        },
    );
    let r = apply(&mut s, 1, Command::DeleteNamespace { name: "n".into() });
    assert_eq!(r.rejection, None);
    assert!(s.namespaces.is_empty());
}

#[test]
fn put_container_needs_namespace_and_honours_expected_revision() {
    let mut s = StateData::default();
    assert!(matches!(
        put(&mut s, "n", "c", None).rejection,
        Some(Rejection::NotFound(_))
    ));
    create_ns(&mut s, "n");
    assert_eq!(put(&mut s, "n", "c", Some(0)).rejection, None);
    let c = s.container("n", "c").cloned().unwrap();
    assert_eq!((c.revision, c.created_at_ms), (2, 7));
    assert!(matches!(
        put(&mut s, "n", "c", Some(0)).rejection,
        Some(Rejection::Conflict(_))
    ));
    assert!(matches!(
        put(&mut s, "n", "c", Some(1)).rejection,
        Some(Rejection::Conflict(_))
    ));
    assert_eq!(put(&mut s, "n", "c", Some(2)).rejection, None);
    assert_eq!(s.container("n", "c").unwrap().revision, 3);
    assert!(matches!(
        put(&mut s, "n", "d", Some(5)).rejection,
        Some(Rejection::Conflict(_))
    ));
    assert_eq!(s.containers_in("n").count(), 1);
}

#[test]
fn delete_container() {
    let mut s = StateData::default();
    create_ns(&mut s, "n");
    let r = apply(
        &mut s,
        1,
        Command::DeleteContainer {
            namespace: "n".into(),
            name: "c".into(),
        },
    );
    assert!(matches!(r.rejection, Some(Rejection::NotFound(_))));
    put(&mut s, "n", "c", None);
    let r = apply(
        &mut s,
        1,
        Command::DeleteContainer {
            namespace: "n".into(),
            name: "c".into(),
        },
    );
    assert_eq!(r.rejection, None);
    assert!(s.container("n", "c").is_none());
}

#[test]
fn register_and_remove_node() {
    let mut s = StateData::default();
    let node = NodeRecord {
        id: 3,
        api_addr: "127.0.0.1:1".into(),
        zone: "z1".into(),
        cert_sha256: "c3".into(),
        ..Default::default()
    };
    apply(&mut s, 1, Command::RegisterNode { node: node.clone() });
    apply(
        &mut s,
        1,
        Command::RegisterNode {
            node: NodeRecord {
                zone: "z2".into(),
                ..node
            },
        },
    );
    assert_eq!(s.nodes[&3].zone, "z2");
    apply(&mut s, 1, Command::RemoveNode { id: 3 });
    assert!(s.nodes.is_empty());
    assert!(
        s.revoked_certs.contains("c3"),
        "a removed node's certificate is revoked"
    );
    assert_eq!(s.revision, 3);
}

/// Every timestamp in `v` (a key ending in `_ms`) must be one the log
/// carried: a clock read inside apply would put another time there.
fn timestamps_come_from_the_log(v: &serde_json::Value, allowed: &[u64], path: &str) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let here = format!("{path}.{k}");
                if k.ends_with("_ms") {
                    if let Some(t) = v.as_u64() {
                        assert!(
                            t == 0 || allowed.contains(&t),
                            "{here} = {t}: not a time any proposal carried"
                        );
                    }
                }
                timestamps_come_from_the_log(v, allowed, &here);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                timestamps_come_from_the_log(v, allowed, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

#[test]
fn apply_is_deterministic_and_digest_tracks_state() {
    let mut log = vec![
        Proposal::new(
            11,
            Command::CreateNamespace {
                name: "a".into(),
                env: env(&[]),
            },
        ),
        Proposal::new(
            12,
            Command::CreateNamespace {
                name: "a".into(),
                env: env(&[]),
            },
        ),
        Proposal::new(
            13,
            Command::PutContainer {
                namespace: "a".into(),
                name: "c".into(),
                spec: ContainerSpec::with_image("i"),
                expected_revision: None,
            },
        ),
        Proposal::new(
            14,
            Command::RegisterNode {
                node: NodeRecord {
                    id: 1,
                    ..Default::default()
                },
            },
        ),
        Proposal::new(
            15,
            Command::SetNodeState {
                id: 1,
                down: Some(true),
                cordoned: None,
                draining: None,
            },
        ),
        Proposal::new(
            16,
            Command::UpdateNamespace {
                name: "a".into(),
                env: env(&[("K", "v")]),
                expected_revision: None,
            },
        ),
    ];
    // The same entries applied at two different wall-clock moments give the
    // same state, and every time in it is a time the log carried.
    let (mut x, mut y) = (StateData::default(), StateData::default());
    let rx: Vec<_> = log.iter().map(|p| x.apply(p)).collect();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ry: Vec<_> = log.iter().map(|p| y.apply(p)).collect();
    assert_eq!(rx, ry);
    assert_eq!(x.digest(), y.digest());
    let times: Vec<u64> = log.iter().map(|p| p.at_ms).collect();
    timestamps_come_from_the_log(&serde_json::to_value(&x).unwrap(), &times, "state");
    log.push(Proposal::new(
        17,
        Command::DeleteContainer {
            namespace: "a".into(),
            name: "c".into(),
        },
    ));
    y.apply(&log[log.len() - 1]);
    assert_ne!(x.digest(), y.digest());
}

#[test]
fn proposal_encoding_is_stable() {
    let p = Proposal::new(5, Command::DeleteNamespace { name: "n".into() });
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(
        json,
        r#"{"v":5,"at_ms":5,"command":{"op":"delete_namespace","name":"n"}}"#
    );
    assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
}

#[test]
fn join_tokens_are_spent_once_and_expire() {
    let mut s = StateData::default();
    let token = JoinTokenRecord {
        id: "t1".into(),
        hash: "h".repeat(64),
        created_ms: 0,
        expires_ms: 1_000,
        used_by: None,
        issued: None,
    };
    assert!(apply(
        &mut s,
        0,
        Command::CreateJoinToken {
            token: token.clone()
        }
    )
    .rejection
    .is_none());
    // Entries written before certificates were recorded (no `issued`).
    let spend = |node, hash: &str| Command::UseJoinToken {
        id: "t1".into(),
        hash: hash.into(),
        node,
        issued: None,
    };
    let r = apply(&mut s, 10, spend(2, &"x".repeat(64)));
    assert!(
        matches!(r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains("unknown token"))
    );
    assert!(apply(&mut s, 10, spend(2, &token.hash)).rejection.is_none());
    // The same node may retry; another node may not.
    assert!(apply(&mut s, 20, spend(2, &token.hash)).rejection.is_none());
    let r = apply(&mut s, 20, spend(3, &token.hash));
    assert!(
        matches!(r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains("already used (by node 2)"))
    );
    let late = JoinTokenRecord {
        id: "t2".into(),
        ..token.clone()
    };
    apply(&mut s, 0, Command::CreateJoinToken { token: late });
    let r = apply(
        &mut s,
        1_000,
        Command::UseJoinToken {
            id: "t2".into(),
            hash: token.hash.clone(),
            node: 4,
            issued: None,
        },
    );
    assert!(matches!(r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains("expired")));
}

fn issued(node: NodeId) -> IssuedCert {
    IssuedCert {
        cert_sha256: format!("cert-of-{node}"),
        cert_pem: "PEM".into(),
        key_sha256: format!("key-of-{node}"),
    }
}

#[test]
fn a_recorded_join_is_spent_once_and_its_certificate_trusted_until_removal() {
    let mut s = StateData::default();
    let token = JoinTokenRecord {
        id: "t1".into(),
        hash: "h".repeat(64),
        created_ms: 0,
        expires_ms: 1_000,
        used_by: None,
        issued: None,
    };
    apply(
        &mut s,
        0,
        Command::CreateJoinToken {
            token: token.clone(),
        },
    );
    let spend = |node| Command::UseJoinToken {
        id: "t1".into(),
        hash: token.hash.clone(),
        node,
        issued: Some(issued(node)),
    };
    assert!(s.peer_trusted(2, "cert-of-2").is_err(), "not issued yet");
    assert!(apply(&mut s, 10, spend(2)).rejection.is_none());
    assert!(s.peer_trusted(2, "cert-of-2").is_ok());
    assert!(
        s.peer_trusted(3, "cert-of-2").is_err(),
        "issued to node 2 only"
    );
    assert!(
        s.peer_trusted(2, "self-made").is_err(),
        "a certificate the cluster did not issue"
    );
    // Spent: not even the same node gets a second certificate.
    let r = apply(&mut s, 20, spend(2));
    assert!(
        matches!(r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains("spent once"))
    );
    // Registered, then removed: every certificate it held is revoked.
    apply(
        &mut s,
        30,
        Command::RegisterNode {
            node: NodeRecord {
                id: 2,
                cert_sha256: "renewed-2".into(),
                ..Default::default()
            },
        },
    );
    assert!(s.peer_trusted(2, "renewed-2").is_ok());
    apply(&mut s, 40, Command::RemoveNode { id: 2 });
    for cert in ["cert-of-2", "renewed-2"] {
        let e = s.peer_trusted(2, cert).unwrap_err();
        assert!(e.contains("revoked"), "{e}");
    }
}

#[test]
fn nodes_cannot_register_another_nodes_address_from_version_2() {
    let rec = |id, api: &str| NodeRecord {
        id,
        api_addr: api.into(),
        http_addr: format!("{api}-http"),
        ..Default::default()
    };
    let mut s = StateData::default();
    apply(
        &mut s,
        1,
        Command::RegisterNode {
            node: rec(1, "10.0.0.1:7070"),
        },
    );
    let r = apply(
        &mut s,
        2,
        Command::RegisterNode {
            node: rec(2, "10.0.0.1:7070"),
        },
    );
    assert!(
        matches!(&r.rejection, Some(Rejection::Conflict(m)) if m.contains("api_addr") && m.contains("node 1")),
        "{r:?}"
    );
    // A node re-registering its own addresses is fine.
    assert!(apply(
        &mut s,
        3,
        Command::RegisterNode {
            node: rec(1, "10.0.0.1:7070")
        }
    )
    .rejection
    .is_none());
    // An entry committed by a version-1 node means what it meant then.
    let old = Proposal {
        v: 1,
        at_ms: 4,
        command: Command::RegisterNode {
            node: rec(2, "10.0.0.1:7070"),
        },
    };
    assert!(s.apply(&old).rejection.is_none());
}

#[test]
fn key_rotation_refuses_to_lose_a_concurrent_change() {
    let kek = crate::secrets::Key::random();
    let dk = crate::secrets::Key::random();
    let mut s = StateData::default();
    create_ns(&mut s, "ns");
    let wrapped = kek.wrap(&dk).unwrap();
    apply(
        &mut s,
        1,
        Command::InitDataKey {
            wrapped: wrapped.clone(),
        },
    );
    let sealed = |v: &str| SealedSecret {
        sealed: dk.seal(v.as_bytes(), "aad").unwrap(),
        fingerprint: dk.fingerprint(v),
    };
    let set = |v: &str| Command::SetSecrets {
        scope: Scope::namespace("ns"),
        entries: [("K".to_string(), sealed(v))].into_iter().collect(),
    };
    assert!(apply(&mut s, 2, set("one")).rejection.is_none());
    let snapshot = s.secrets.clone();
    let rotate = |from: &crate::secrets::Envelope, secrets| Command::RotateKeys {
        from: from.clone(),
        kek_id: "new".into(),
        data_key: kek.wrap(&crate::secrets::Key::random()).unwrap(),
        ca_key: None,
        secrets,
        signing_keys: Vec::new(),
    };
    // A secret set after the rotation read the state: refused.
    assert!(apply(&mut s, 3, set("two")).rejection.is_none());
    let r = apply(&mut s, 4, rotate(&wrapped, snapshot));
    assert!(matches!(r.rejection, Some(Rejection::Conflict(_))), "{r:?}");
    // A rotation from another data key: refused.
    let other = kek.wrap(&crate::secrets::Key::random()).unwrap();
    let current = s.secrets.clone();
    let r = apply(&mut s, 5, rotate(&other, current.clone()));
    assert!(matches!(r.rejection, Some(Rejection::Conflict(_))), "{r:?}");
    // Up to date: applied.
    let r = apply(&mut s, 6, rotate(&wrapped, current));
    assert!(r.rejection.is_none(), "{r:?}");
    assert_eq!(s.kek_id.as_deref(), Some("new"));
    assert_ne!(s.data_key.as_ref(), Some(&wrapped));
}

fn api_key(id: &str, namespace: Option<&str>) -> ApiKey {
    ApiKey {
        id: id.into(),
        secret_sha256: "00".into(),
        namespace: namespace.map(Into::into),
        created_at_ms: 1,
        revoked: false,
        last_used_at_ms: 0,
    }
}

#[test]
fn deleting_a_namespace_or_container_revokes_what_was_issued_for_it() {
    let mut s = StateData::default();
    create_ns(&mut s, "acme");
    create_ns(&mut s, "other");
    for (id, ns) in [("k-acme", "acme"), ("k-other", "other")] {
        apply(
            &mut s,
            2,
            Command::CreateApiKey {
                key: api_key(id, Some(ns)),
            },
        );
    }
    let put = |name: &str| Command::PutContainer {
        namespace: "acme".into(),
        name: name.into(),
        spec: ContainerSpec::with_image("img:1"),
        expected_revision: None,
    };
    apply(&mut s, 3, put("web"));
    apply(&mut s, 3, put("api"));
    for (id, ct) in [
        ("t-web", Some("web")),
        ("t-api", Some("api")),
        ("t-ns", None),
    ] {
        apply(
            &mut s,
            4,
            Command::CreateToken {
                record: TokenRecord {
                    id: id.into(),
                    namespace: "acme".into(),
                    container: ct.map(Into::into),
                    expires_at_ms: u64::MAX,
                    created_at_ms: 4,
                    revoked: false,
                },
            },
        );
    }
    apply(
        &mut s,
        5,
        Command::DeleteContainer {
            namespace: "acme".into(),
            name: "web".into(),
        },
    );
    assert!(s.tokens["t-web"].revoked, "the container's token");
    assert!(!s.tokens["t-api"].revoked && !s.tokens["t-ns"].revoked);
    apply(
        &mut s,
        6,
        Command::DeleteContainer {
            namespace: "acme".into(),
            name: "api".into(),
        },
    );
    apply(
        &mut s,
        7,
        Command::DeleteNamespace {
            name: "acme".into(),
        },
    );
    assert!(s.api_keys["k-acme"].revoked && s.tokens["t-ns"].revoked);
    assert!(!s.api_keys["k-other"].revoked, "another namespace's key");
    // Created again under the same name: the old credentials stay dead.
    create_ns(&mut s, "acme");
    assert!(s.api_keys["k-acme"].revoked);
}

#[test]
fn admin_keys_can_be_revoked_while_one_remains_and_record_their_use() {
    let mut s = StateData::default();
    apply(
        &mut s,
        1,
        Command::CreateApiKey {
            key: api_key("admin", None),
        },
    );
    let r = apply(&mut s, 2, Command::RevokeApiKey { id: "admin".into() });
    assert!(
        matches!(&r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains("last admin key")),
        "{r:?}"
    );
    apply(
        &mut s,
        3,
        Command::CreateApiKey {
            key: api_key("second", None),
        },
    );
    assert!(
        apply(&mut s, 4, Command::RevokeApiKey { id: "admin".into() })
            .rejection
            .is_none()
    );
    assert!(apply(
        &mut s,
        5,
        Command::RevokeApiKey {
            id: "second".into()
        }
    )
    .rejection
    .is_some());
    let touch = |at| Command::TouchApiKeys {
        used: BTreeMap::from([("second".to_string(), at), ("gone".to_string(), at)]),
    };
    apply(&mut s, 6, touch(120_000));
    apply(&mut s, 7, touch(60_000));
    assert_eq!(
        s.api_keys["second"].last_used_at_ms, 120_000,
        "only forward"
    );
}

#[test]
fn quotas_bound_what_a_namespace_may_grow_to() {
    let mut s = StateData::default();
    create_ns(&mut s, "acme");
    apply(
        &mut s,
        2,
        Command::SetQuota {
            namespace: "acme".into(),
            quota: Quota {
                containers: Some(2),
                max_scale: Some(6),
                secrets: Some(2),
                tokens: Some(1),
                memory_mb: Some(1024),
            },
        },
    );
    let put = |name: &str, max_scale: u32, memory_mb: u32| Command::PutContainer {
        namespace: "acme".into(),
        name: name.into(),
        spec: ContainerSpec {
            max_scale,
            memory_mb,
            ..ContainerSpec::with_image("img:1")
        },
        expected_revision: None,
    };
    let refused = |r: Response, field: &str| {
        assert!(
            matches!(&r.rejection, Some(Rejection::FailedPrecondition(m)) if m.contains(&format!("quota {field}"))),
            "{field}: {r:?}"
        );
    };
    assert!(apply(&mut s, 3, put("a", 2, 256)).rejection.is_none());
    refused(apply(&mut s, 4, put("b", 5, 64)), "max-scale");
    refused(apply(&mut s, 4, put("b", 2, 512)), "memory-mb");
    assert!(apply(&mut s, 4, put("b", 2, 128)).rejection.is_none());
    refused(apply(&mut s, 5, put("c", 1, 64)), "containers");
    // A change that does not grow passes.
    assert!(apply(&mut s, 6, put("a", 1, 256)).rejection.is_none());
    let sealed = || SealedSecret {
        sealed: crate::secrets::Key::random().seal(b"v", "aad").unwrap(),
        fingerprint: "f".into(),
    };
    let set = |scope: Scope, keys: &[&str]| Command::SetSecrets {
        scope,
        entries: keys.iter().map(|k| (k.to_string(), sealed())).collect(),
    };
    assert!(apply(&mut s, 7, set(Scope::namespace("acme"), &["A", "B"]))
        .rejection
        .is_none());
    refused(
        apply(&mut s, 8, set(Scope::of("acme", Some("a")), &["C"])),
        "secrets",
    );
    // Overwriting a secret adds nothing.
    assert!(apply(&mut s, 8, set(Scope::namespace("acme"), &["A"]))
        .rejection
        .is_none());
    let token = |id: &str, expires_at_ms| Command::CreateToken {
        record: TokenRecord {
            id: id.into(),
            namespace: "acme".into(),
            container: None,
            expires_at_ms,
            created_at_ms: 9,
            revoked: false,
        },
    };
    assert!(apply(&mut s, 9, token("t1", 100)).rejection.is_none());
    refused(apply(&mut s, 10, token("t2", 200)), "tokens");
    // An expired token no longer counts.
    assert!(apply(&mut s, 150, token("t3", 300)).rejection.is_none());
}

mod triggers {
    use super::super::*;
    use std::collections::BTreeMap;

    fn p(at: u64, c: Command) -> Proposal {
        Proposal::new(at, c)
    }

    fn world() -> StateData {
        let mut s = StateData::default();
        let r = s.apply(&p(
            0,
            Command::CreateNamespace {
                name: "n".into(),
                env: BTreeMap::new(),
            },
        ));
        assert!(r.rejection.is_none());
        let r = s.apply(&p(
            0,
            Command::PutContainer {
                namespace: "n".into(),
                name: "c".into(),
                spec: ContainerSpec::with_image("img:1"),
                expected_revision: None,
            },
        ));
        assert!(r.rejection.is_none(), "{r:?}");
        let r = s.apply(&p(
            1000,
            Command::CreateTrigger {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                spec: TriggerSpec {
                    source: TriggerSource::Cron {
                        schedule: "* * * * *".into(),
                        timezone: "UTC".into(),
                        catch_up_s: 60,
                    },
                    method: "POST".into(),
                    path: "/".into(),
                    headers: BTreeMap::new(),
                    body: String::new(),
                    max_retries: 3,
                },
            },
        ));
        assert!(r.rejection.is_none(), "{r:?}");
        s
    }

    fn claim(s: &mut StateData, tick: u64, node: NodeId) -> Option<Rejection> {
        s.apply(&p(
            tick,
            Command::ClaimTick {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                tick_ms: tick,
                missed: 0,
                deliver: true,
                node,
            },
        ))
        .rejection
    }

    #[test]
    fn a_tick_is_claimed_once_in_order_whoever_asks() {
        let mut s = world();
        assert_eq!(claim(&mut s, 60_000, 1), None);
        // Another leader, the same tick or an older one: refused.
        assert!(
            matches!(claim(&mut s, 60_000, 2), Some(Rejection::FailedPrecondition(m)) if m.contains("not after"))
        );
        assert!(claim(&mut s, 30_000, 2).is_some());
        assert_eq!(claim(&mut s, 120_000, 2), None);
        let t = &s.triggers["n/c/t"];
        assert_eq!(t.claimed, vec![60_000, 120_000]);
        assert_eq!(t.pending.len(), 2);
        // The outcome settles the tick.
        let firing = Firing {
            event_id: "t-60000".into(),
            scheduled_ms: 60_000,
            sent_ms: 60_010,
            status: "200".into(),
            ok: true,
            latency_ms: 5,
            attempts: 1,
            node: 1,
        };
        let r = s.apply(&p(
            61_000,
            Command::RecordFiring {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                firing,
            },
        ));
        assert!(r.rejection.is_none());
        let t = &s.triggers["n/c/t"];
        assert_eq!((t.fired, t.failed, t.pending.len()), (1, 0, 1));
    }

    #[test]
    fn a_disabled_trigger_claims_nothing_and_triggers_go_with_their_container() {
        let mut s = world();
        let r = s.apply(&p(
            5000,
            Command::SetTriggerEnabled {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                enabled: false,
            },
        ));
        assert!(r.rejection.is_none());
        assert!(claim(&mut s, 60_000, 1).is_some());
        let r = s.apply(&p(
            6000,
            Command::DeleteContainer {
                namespace: "n".into(),
                name: "c".into(),
            },
        ));
        assert!(r.rejection.is_none());
        assert!(s.triggers.is_empty());
        // And one cannot be made for a container that does not exist.
        let mut s = world();
        let t = s.triggers["n/c/t"].spec.clone();
        let r = s.apply(&p(
            0,
            Command::CreateTrigger {
                namespace: "n".into(),
                container: "x".into(),
                name: "t".into(),
                spec: t.clone(),
            },
        ));
        assert!(matches!(r.rejection, Some(Rejection::NotFound(_))));
        let r = s.apply(&p(
            0,
            Command::CreateTrigger {
                namespace: "n".into(),
                container: "c".into(),
                name: "t".into(),
                spec: t,
            },
        ));
        assert!(matches!(r.rejection, Some(Rejection::AlreadyExists(_))));
    }
}

mod usage {
    use super::super::*;

    fn batch(seq: u64, period: u64, ms: u64) -> Command {
        Command::RecordUsage {
            node: 1,
            seq,
            entries: vec![UsageEntry {
                namespace: "n".into(),
                container: "c".into(),
                period_ms: period,
                usage: Usage {
                    instance_ms: ms,
                    memory_mb_ms: 256 * ms,
                    ..Default::default()
                },
            }],
        }
    }

    #[test]
    fn a_batch_counts_once_and_old_minutes_fold_into_hours() {
        let mut s = StateData::default();
        let key = ContainerKey::new("n", "c");
        assert!(s
            .apply(&Proposal::new(0, batch(1, 60_000, 1000)))
            .rejection
            .is_none());
        // The same batch again (its answer was lost), and an older one.
        assert!(s
            .apply(&Proposal::new(0, batch(1, 60_000, 1000)))
            .rejection
            .is_none());
        assert!(s
            .apply(&Proposal::new(0, batch(0, 60_000, 1000)))
            .rejection
            .is_none());
        assert_eq!(s.usage[&key][&60_000].instance_ms, 1000);
        // Within the minute: added to it.
        assert!(s
            .apply(&Proposal::new(0, batch(2, 90_000, 500)))
            .rejection
            .is_none());
        assert_eq!(s.usage[&key][&60_000].instance_ms, 1500);
        assert_eq!(s.usage[&key][&60_000].memory_mb_ms, 256 * 1500);
        // A day later, the minute is folded into its hour (0).
        let later = USAGE_MINUTES_KEPT_MS + 10 * USAGE_HOUR_MS;
        assert!(s
            .apply(&Proposal::new(later, batch(3, later, 10)))
            .rejection
            .is_none());
        let ledger = &s.usage[&key];
        assert!(!ledger.contains_key(&60_000));
        assert_eq!(ledger[&0].instance_ms, 1500);
        assert_eq!(ledger.values().map(|u| u.instance_ms).sum::<u64>(), 1510);
        // 30 days on, hours fold into their day: the hour at `later`
        // (day 1, 10:00) joins day 1; day 0's hour 0 stays (it is its day).
        let much_later = USAGE_HOURS_KEPT_MS + 3 * USAGE_DAY_MS;
        assert!(s
            .apply(&Proposal::new(much_later, batch(4, much_later, 1)))
            .rejection
            .is_none());
        let ledger = &s.usage[&key];
        let day1 = USAGE_DAY_MS;
        assert!(!ledger.contains_key(&(later - later % USAGE_HOUR_MS)));
        assert_eq!(ledger[&day1].instance_ms, 10);
        assert_eq!(ledger[&0].instance_ms, 1500);
        assert_eq!(ledger.values().map(|u| u.instance_ms).sum::<u64>(), 1511);
    }
}

#[test]
fn commands_record_events_in_order_bounded() {
    let mut s = StateData::default();
    create_ns(&mut s, "a");
    put(&mut s, "a", "c", None);
    apply(
        &mut s,
        8,
        Command::RegisterNode {
            node: NodeRecord {
                id: 2,
                api_addr: "127.0.0.1:1".into(),
                ..Default::default()
            },
        },
    );
    let inst = Instance {
        id: "i1".into(),
        namespace: "a".into(),
        container: "c".into(),
        generation: s.containers[&ContainerKey::new("a", "c")].generation,
        node: 2,
        created_at_ms: 9,
    };
    apply(
        &mut s,
        9,
        Command::PlaceInstances {
            add: vec![inst],
            remove: vec![],
        },
    );
    let report = |s: &mut StateData, at, state, restarts, oom| {
        apply(
            s,
            at,
            Command::ReportInstanceStatus {
                id: "i1".into(),
                node: 2,
                status: InstanceStatus {
                    state,
                    restarts,
                    oom_killed: oom,
                    exit_code: oom.then_some(137),
                    message: if oom {
                        "OOM-killed".into()
                    } else {
                        String::new()
                    },
                    ..Default::default()
                },
            },
        )
    };
    report(&mut s, 10, InstanceState::Ready, 0, false);
    // The same state again records nothing; a crash, and a second crash
    // after a restart, each record one.
    report(&mut s, 11, InstanceState::Ready, 0, false);
    report(&mut s, 12, InstanceState::Crashed, 1, true);
    report(&mut s, 13, InstanceState::Crashed, 2, true);
    report(&mut s, 14, InstanceState::Suspended, 2, false);
    report(&mut s, 15, InstanceState::Ready, 2, false);
    apply(
        &mut s,
        16,
        Command::DeleteContainer {
            namespace: "a".into(),
            name: "c".into(),
        },
    );
    let kinds: Vec<(u64, &str, &str)> = s
        .events
        .iter()
        .map(|e| (e.seq, e.kind.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "namespace.created", ""),
            (2, "container.created", ""),
            (3, "node.joined", ""),
            (4, "instance.placed", ""),
            (5, "instance.ready", ""),
            (6, "instance.crashed", "oom"),
            (7, "instance.crashed", "oom"),
            (8, "instance.suspended", ""),
            (9, "instance.resumed", ""),
            (10, "instance.stopped", ""),
            (11, "container.deleted", ""),
        ]
    );
    let crash = s.event(6).unwrap();
    assert_eq!(
        (
            crash.at_ms,
            crash.exit_code,
            crash.node,
            crash.instance.as_str()
        ),
        (12, Some(137), 2, "i1")
    );
    // Bounded: the oldest leave first, numbers go on.
    for i in 0..EVENTS_KEPT {
        create_ns(&mut s, &format!("n{i}"));
    }
    assert_eq!(s.events.len(), EVENTS_KEPT);
    assert_eq!(s.events.front().unwrap().seq, 12);
    assert!(s.event(11).is_none());
    assert_eq!(s.event(13).unwrap().seq, 13);
    // An entry of an earlier command version records none.
    let before = s.events.len();
    let mut old = Proposal::new(20, Command::DeleteNamespace { name: "n0".into() });
    old.v = 3;
    s.apply(&old);
    assert!(s.namespaces.get("n0").is_none());
    assert_eq!(s.events.back().unwrap().kind, "namespace.created");
    assert_eq!(s.events.len(), before);
}

#[test]
fn a_batch_applies_each_command_on_its_own() {
    let mut s = StateData::default();
    create_ns(&mut s, "ns");
    put(&mut s, "ns", "web", None);
    let scale = |name: &str, n: u32| Command::Scale {
        namespace: "ns".into(),
        name: name.into(),
        replicas: n,
        reason: None,
    };
    // One applies, one is refused (no such container): the batch is accepted.
    let r = apply(
        &mut s,
        9,
        Command::Batch {
            commands: vec![scale("web", 3), scale("gone", 2)],
        },
    );
    assert!(r.rejection.is_none(), "{r:?}");
    assert_eq!(s.container("ns", "web").unwrap().desired_scale, 3);
    // Nothing applies, or a nested batch: refused, nothing changed.
    let before = s.digest();
    for cmd in [
        Command::Batch {
            commands: vec![scale("gone", 1)],
        },
        Command::Batch {
            commands: vec![
                scale("web", 4),
                Command::Batch {
                    commands: vec![scale("web", 5)],
                },
            ],
        },
        Command::Batch { commands: vec![] },
    ] {
        let r = apply(&mut s, 10, cmd);
        assert!(
            matches!(r.rejection, Some(Rejection::FailedPrecondition(_))),
            "{r:?}"
        );
        assert_eq!(s.digest(), before);
    }
}
